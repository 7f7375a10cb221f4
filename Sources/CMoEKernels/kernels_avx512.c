// AVX-512 F/BW/VL kernels (Skylake-SP and later, Zen 4). 16 fp32 lanes: one int4/int8 group is two vectors.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define VEC __m512
#define VZERO() _mm512_setzero_ps()
#define VSET1(s) _mm512_set1_ps(s)

/// 16 signed bytes → 16 fp32 lanes.
#define WIDEN16(q) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))

// Per group of 32 (w0, w1: elements 0-15, 16-31 as fp32): p = w0·x0; p += w1·x1; acc += p · s
#define STEP(m, r, g, x, acc)                                                                                    \
    do {                                                                                                         \
        const float *xp_ = (x) + 32 * g_;                                                                        \
        __m512 p_ = _mm512_mul_ps(w_[0], _mm512_loadu_ps(xp_));                                                  \
        p_ = _mm512_fmadd_ps(w_[1], _mm512_loadu_ps(xp_ + 16), p_);                                              \
        (acc) = _mm512_fmadd_ps(p_, s_, (acc));                                                                  \
    } while (0)
#define GROUPS(m) ((m)->cols / 32)
#define FINISH(m, r, x, acc) hsum16(acc)

// ---- int4, group 32 ----
#define LOADROW(m, r, g)                                                                                         \
    GROUP_HEAD(m, r, g, 2)                                                                                       \
    {                                                                                                            \
        __m128i lo_, hi_;                                                                                        \
        int4_unpack(m, r, g_, &lo_, &hi_);                                                                       \
        w_[0] = WIDEN16(lo_);                                                                                    \
        w_[1] = WIDEN16(hi_);                                                                                    \
    }
#define PREFIX q4
#define KERNEL moe_gemm_q4_avx512
#include "tiles.h"

// ---- int8, group 32 ----
#define LOADROW(m, r, g)                                                                                         \
    GROUP_HEAD(m, r, g, 2)                                                                                       \
    {                                                                                                            \
        const int8_t *q_ = (const int8_t *)(m)->data + (r) * (m)->cols + 32 * g_;                                \
        w_[0] = WIDEN16(_mm_loadu_si128((const __m128i *)q_));                                                   \
        w_[1] = WIDEN16(_mm_loadu_si128((const __m128i *)(q_ + 16)));                                            \
    }
#define PREFIX q8
#define KERNEL moe_gemm_q8_avx512
#include "tiles.h"
#undef STEP
#undef GROUPS
#undef FINISH

// ---- dense encodings, bf16 and f32 (attention's cached latent rows): acc += w·x per 16 values, then the
// encoding's scalar tail for cols % 16. Each sets ELEM (its stored type), LOADW (16 weights at a pointer as fp32)
// and TAIL (`bf16_tail`, `f32_tail`).
TARGET static inline __attribute__((always_inline)) __m512 bf16_load16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#define GROUPS(m) ((m)->cols / 16)
#define DENSE_LOADROW(m, r, g)                                                                                   \
    const int64_t g_ = (g);                                                                                      \
    const __m512 w16_ = LOADW((const ELEM *)(m)->data + (r) * (m)->cols + 16 * g_);
#define STEP(m, r, g, x, acc) (acc) = _mm512_fmadd_ps(w16_, _mm512_loadu_ps((x) + 16 * g_), (acc))
#define FINISH(m, r, x, acc) TAIL(m, r, x, (m)->cols & ~(int64_t)15, hsum16(acc))

#define ELEM uint16_t
#define LOADW bf16_load16
#define TAIL bf16_tail
#define LOADROW(m, r, g) DENSE_LOADROW(m, r, g)
#define PREFIX bf
#define KERNEL moe_gemm_bf16_avx512
// Decode streams each weight once: 2 KB (64 groups of 16 bf16) ahead, one 64-byte line every 2 groups.
#define PREFETCH_EVERY 2
#define PREFETCH_ROW(m, r, g) _mm_prefetch((const char *)((const uint16_t *)(m)->data + (r) * (m)->cols + 16 * ((g) + 64)), _MM_HINT_T0)
#include "tiles.h"
#undef PREFETCH_ROW
#undef PREFETCH_EVERY

// ---- bf16 for four or more tokens: a 4-row × 4-token tile, each weight vector widened once for four tokens and
// each activation vector loaded once for four rows (16 of the 32 zmm registers accumulate). Same per-(row, token)
// operations as the tiles above: acc += w·x per 16 values, the fixed horizontal sum, the scalar tail.
//
// Blocked for the caches in both dimensions: rows in blocks whose weights fit in L2 (reused by every block of
// four tokens), columns in spans of 1024 (four tokens' activations, 16 KB, stay in L1 while every tile of the row
// block passes over them). Between spans a tile's 16 accumulators are parked in `park`, unchanged, so the
// operations per (row, token) are those of the unblocked tile. Without the column spans the activations streamed
// from L2 once per tile and the tile ran at ~40% of the FMA peak.

/// The 4 × 4 tile at rows r.., tokens t.. over groups [g0, g1) of 16 columns, accumulators from and back to `park`.
TARGET static inline __attribute__((always_inline)) void bf16_tile_4x4_span(const moe_matrix *m, int64_t r, const float *x,
                                                                        int64_t t, int64_t g0, int64_t g1, __m512 *park) {
    const int64_t cols = m->cols;
    const uint16_t *w = (const uint16_t *)m->data + r * cols;
    const float *xt = x + t * cols;
    __m512 acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = park[4 * i + j];
    for (int64_t g = g0; g < g1; g++) {
        __m512 v[4];
        for (int i = 0; i < 4; i++) v[i] = bf16_load16(w + i * cols + 16 * g);
        for (int j = 0; j < 4; j++) {
            const __m512 xv = _mm512_loadu_ps(xt + j * cols + 16 * g);
            for (int i = 0; i < 4; i++) acc[i][j] = _mm512_fmadd_ps(v[i], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) park[4 * i + j] = acc[i][j];
}

/// Blocks of four tokens through the 4 × 4 tile (rows left over in a block through the generic 1 × 4 tile), the
/// tokens left over as `moe_gemm_bf16_avx512` does them; spans of 1024 columns.
TARGET void moe_gemm_bf16_avx512_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T,
                                         float *y) {
    SPANNED_BF16_BODY(4, 16, 64, __m512, _mm512_setzero_ps, bf16_tile_4x4_span, moe_gemm_bf16_avx512)
}

#undef ELEM
#undef LOADW
#undef TAIL
#define ELEM float
#define LOADW _mm512_loadu_ps
#define TAIL f32_tail
#define LOADROW(m, r, g) DENSE_LOADROW(m, r, g)
#define PREFIX f32
#define KERNEL moe_gemm_f32_avx512
#include "tiles.h"

// ---- f16 (a KV cache stored in half precision): 16 halves widened at a time.
TARGET static inline __attribute__((always_inline)) __m512 f16_load16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
#undef ELEM
#undef LOADW
#undef TAIL
#define ELEM uint16_t
#define LOADW f16_load16
#define TAIL f16_tail
#define LOADROW(m, r, g) DENSE_LOADROW(m, r, g)
#define PREFIX f16
#define KERNEL moe_gemm_f16_avx512
#include "tiles.h"

int moe_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && moe_cpu_has_avx2();
}

#else
int moe_cpu_has_avx512(void) { return 0; }
void moe_gemm_q4_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_q8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_bf16_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_bf16_avx512_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_f32_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_f16_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
#endif
