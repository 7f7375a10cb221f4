// What every instruction set's kernel file shares: scale and bf16 widening, the int4 nibble unpacking (SSE2,
// the x86-64 baseline), the scalar bf16 tail, and the head of a group step. Internal to CMoEKernels.
#ifndef CMOEKERNELS_COMMON_H
#define CMOEKERNELS_COMMON_H
#include "CMoEKernels.h"
#include <string.h>
#include <immintrin.h>

static inline float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/// IEEE half → fp32, exactly (normal, subnormal, zero, infinity, NaN); what `vcvtph2ps` computes, for the
/// scalar tails of the f16 kernels.
static inline float f16_value(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    float f;
    if (exp == 0) {
        f = (float)mant * 0x1p-24f;  // zero or subnormal: exact in fp32
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

static inline float f16_tail(const moe_matrix *m, int64_t r, const float *x, int64_t from, float s) {
    const uint16_t *w = (const uint16_t *)m->data + r * m->cols;
    for (int64_t c = from; c < m->cols; c++) s = __builtin_fmaf(f16_value(w[c]), x[c], s);
    return s;
}

/// Horizontal sums in a fixed tree (8 → 4 → 2 → 1; 16 → 8 → …), the same in every kernel of an ISA.
__attribute__((target("avx2,fma,f16c"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // i + (i+4)
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                          // (0+2), (1+3)
    s = _mm_add_ss(s, _mm_movehdup_ps(s));                                           // (0+2) + (1+3)
    return _mm_cvtss_f32(s);
}
/// The sum of 8 int32 lanes (exact: the order does not matter).
__attribute__((target("avx2,fma,f16c"))) static inline int32_t hsum8_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))) static inline float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return hsum8(a);
}

/// Scale `index` of a group-32 matrix (bf16 or fp32).
static inline float group_scale(const moe_matrix *m, int64_t index) {
    return m->scales_bf16 ? bf16_value(((const uint16_t *)m->scales)[index]) : ((const float *)m->scales)[index];
}

/// The 16 bytes of int4 group `g` of row `r` as signed values: `lo` = elements 0-15, `hi` = elements 16-31.
static inline void int4_unpack(const moe_matrix *m, int64_t r, int64_t g, __m128i *lo, __m128i *hi) {
    const __m128i b = _mm_loadu_si128((const __m128i *)((const uint8_t *)m->data + r * (m->cols / 2) + 16 * g));
    *lo = _mm_sub_epi8(_mm_and_si128(b, _mm_set1_epi8(0x0F)), _mm_set1_epi8(8));
    *hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F)), _mm_set1_epi8(8));
}

/// `s + Σ w[c]·x[c]` for c in [from, cols) of bf16 row `r`, one fused multiply-add at a time.
static inline float bf16_tail(const moe_matrix *m, int64_t r, const float *x, int64_t from, float s) {
    const uint16_t *w = (const uint16_t *)m->data + r * m->cols;
    for (int64_t c = from; c < m->cols; c++) s = __builtin_fmaf(bf16_value(w[c]), x[c], s);
    return s;
}

/// Rows per cache block when many tokens pass over a matrix: about 256 KB of weights (half of a 512 KB L2 at
/// least), a multiple of 12 so every tile height (1, 2, 3, 4) fits it evenly. Every token block then reuses the
/// block from L2, instead of the whole matrix streaming from memory once per four tokens (which made bf16
/// prefill memory-bound: a 2048 × 7168 bf16 matrix is 29 MB).
static inline int64_t row_block(int64_t row_bytes) {
    int64_t n = (256 << 10) / (row_bytes > 0 ? row_bytes : 1);
    n -= n % 12;
    return n < 12 ? 12 : n;
}

/// Loops over rows [r0, r1) as blocks [b0, b1): cache blocks of `row_block(row_bytes)` rows when more than four
/// tokens pass (every token then goes over a block before the next), one block otherwise.
#define FOR_ROW_BLOCKS(T, r0, r1, row_bytes, b0, b1)                                                             \
    for (int64_t blk_ = (T) > 4 ? row_block(row_bytes) : (r1) - (r0), b0 = (r0), b1 = 0;                         \
         b0 < (r1) && ((b1 = b0 + blk_ < (r1) ? b0 + blk_ : (r1)), 1); b0 += blk_)

/// Tokens per pass of a blocked kernel over a long prompt: passes whose fp32 (or two-part bf16) activations,
/// 4·cols bytes a token, stay near 4 MB, a multiple of four and at least 16. Without passes a 512-token prompt
/// streamed all its activations (14.7 MB at cols 7168) past every row block of ~512 KB of weights; one thread,
/// Zen 5, C harness, 512 tokens, GFLOP/s before → after: AVX2 bf16 2048 × 7168 83 → 95, 7168 × 18432 60 → 92,
/// 7168 × 8192 78 → 102; the bf16x2 tile (kernels_bf16dp.c) 128 → 161–169, 73 → 132–149, 115 → 166–176.
static inline int64_t bf_pass_tokens(int64_t cols) {
    int64_t n = (4 << 20) / (4 * (cols > 0 ? cols : 1));
    return n < 16 ? 16 : n - n % 4;
}

/// The body of a bf16 kernel whose R-row × 4-token tile is blocked for the caches in both dimensions (see
/// kernels_avx512.c): tokens in passes of `bf_pass_tokens`; within a pass, rows in blocks of ~512 KB of weights
/// (up to 16 tiles), columns in spans of SPAN groups of W values, each tile's 4·R accumulators (type VEC) parked
/// between spans. SPAN_TILE(m, r, x, t, g0, g1, park) runs a tile over groups [g0, g1); rows left over in a block
/// go through `bf_tile_1_4`, tokens left over and calls with fewer than four tokens through FALLBACK. Every
/// (row, token) gets the same operations whichever way it goes, so the passes change no result. Needs the
/// kernel's parameters m, r0, r1, x, T, y, and FINISH.
#define SPANNED_BF16_BODY(R, W, SPAN, VEC, VZERO, SPAN_TILE, FALLBACK)                                          \
    enum { MAX_TILES_ = 16 };                                                                                    \
    if (T < 4) {                                                                                                 \
        FALLBACK(m, r0, r1, x, T, y);                                                                            \
        return;                                                                                                  \
    }                                                                                                            \
    const int64_t groups_ = m->cols / (W), pass_ = bf_pass_tokens(m->cols);                                     \
    int64_t rb_ = (512 << 10) / bf_row_bytes(m);                                                                 \
    rb_ = rb_ < (R) ? (R) : rb_ > (R) * MAX_TILES_ ? (R) * MAX_TILES_ : rb_ - rb_ % (R);                         \
    VEC park_[MAX_TILES_][4 * (R)];                                                                              \
    const float *const xall_ = x;                                                                                \
    float *const yall_ = y;                                                                                      \
    const int64_t tall_ = T;                                                                                     \
    for (int64_t p0_ = 0; p0_ < tall_; p0_ += pass_) {                                                           \
        /* The pass's tokens, as if they were the whole call. */                                                 \
        const float *const x = xall_ + p0_ * m->cols;                                                            \
        float *const y = yall_ + p0_ * m->rows;                                                                  \
        const int64_t T = tall_ - p0_ < pass_ ? tall_ - p0_ : pass_;                                             \
        for (int64_t b0 = r0; b0 < r1; b0 += rb_) {                                                              \
            const int64_t b1 = b0 + rb_ < r1 ? b0 + rb_ : r1, tiles = (b1 - b0) / (R), full = b0 + (R) * tiles;  \
            int64_t t = 0;                                                                                       \
            for (; t + 4 <= T; t += 4) {                                                                         \
                for (int64_t k = 0; k < tiles; k++)                                                              \
                    for (int i = 0; i < 4 * (R); i++) park_[k][i] = VZERO();                                     \
                for (int64_t g0 = 0; g0 < groups_; g0 += (SPAN)) {                                               \
                    const int64_t g1 = g0 + (SPAN) < groups_ ? g0 + (SPAN) : groups_;                            \
                    for (int64_t k = 0; k < tiles; k++) SPAN_TILE(m, b0 + (R) * k, x, t, g0, g1, park_[k]);      \
                }                                                                                                \
                for (int64_t k = 0; k < tiles; k++)                                                              \
                    for (int i = 0; i < (R); i++)                                                                \
                        for (int j = 0; j < 4; j++)                                                              \
                            y[(t + j) * m->rows + b0 + (R) * k + i] =                                            \
                                FINISH(m, b0 + (R) * k + i, x + (t + j) * m->cols, park_[k][4 * i + j]);         \
                for (int64_t r = full; r < b1; r++) bf_tile_1_4(m, r, x, t, y);                                  \
            }                                                                                                    \
            if (t < T) FALLBACK(m, b0, b1, x + t * m->cols, T - t, y + t * m->rows);                             \
        }                                                                                                        \
    }

/// Bytes of one row: int4/int8 values plus their group scales, or bf16 values.
static inline int64_t q4_row_bytes(const moe_matrix *m) { return m->cols / 2 + m->cols / 32 * (m->scales_bf16 ? 2 : 4); }
static inline int64_t q8_row_bytes(const moe_matrix *m) { return m->cols + m->cols / 32 * (m->scales_bf16 ? 2 : 4); }
static inline int64_t bf_row_bytes(const moe_matrix *m) { return 2 * m->cols; }
static inline int64_t f32_row_bytes(const moe_matrix *m) { return 4 * m->cols; }
static inline int64_t f16_row_bytes(const moe_matrix *m) { return 2 * m->cols; }

/// `s + Σ w[c]·x[c]` for c in [from, cols) of fp32 row `r`, one fused multiply-add at a time.
static inline float f32_tail(const moe_matrix *m, int64_t r, const float *x, int64_t from, float s) {
    const float *w = (const float *)m->data + r * m->cols;
    for (int64_t c = from; c < m->cols; c++) s = __builtin_fmaf(w[c], x[c], s);
    return s;
}

/// Starts a group step of row `r`: `w_` (NW vectors, filled by the caller), `g_`, and the broadcast scale `s_`.
/// Needs VEC, VSET1 and GROUPS from the ISA file.
#define GROUP_HEAD(m, r, g, NW)                                                                                  \
    VEC w_[NW];                                                                                                  \
    const int64_t g_ = (g);                                                                                      \
    const VEC s_ = VSET1(group_scale(m, (r) * GROUPS(m) + g_));

#endif
