// int4 weights interleaved by 8 rows (`int4g32x8`, what `moestream convert` writes for routed experts), laid out
// so that one 32-byte load holds 4 consecutive columns of 8 rows: the shape of an int32 lane per row that
// `maddubs` and `vpdpbusd` fill. Layout (G = cols/32 groups per row, rows a multiple of 8):
//   block b (rows 8b..8b+7), group g: 128 bytes at (b·G + g)·128, four 32-byte units u = 0..3;
//   byte 4i + j of unit u (row 8b + i, j = 0..3): low nibble  = nibble of column 32g + 8u + j,
//                                                   high nibble = nibble of column 32g + 8u + 4 + j;
//   scales: [(b·G + g)·8 + i], value = (nibble − 8) · scale.
//
// Two products, each with the same operations per (row, token) in every tile and on every ISA, so AVX2, AVX-512
// and the Swift twins agree bit for bit:
//   q8 activations (the default for routed experts): per group the exact integer Σ nibble·q − 8·Σq (int32, one
//     lane per row), then f = fma(float(sum), scale·d, f). No horizontal sums: a row's result is its lane.
//   fp32 activations (`--exact`): four partial sums per row (one per column mod 4), each
//     a_j = fma((nibble − 8)·scale, x, a_j) over the row's columns in layout order (group, unit, low then high),
//     then (a0 + a1) + (a2 + a3). (nibble − 8)·scale is exact for bf16 scales.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "x8_common.h"

/// The 128 bytes of group g of row block b.
INLINE const uint8_t *x8_group(const moe_matrix *m, int64_t b, int64_t g) {
    return (const uint8_t *)m->data + (b * (m->cols / 32) + g) * 128;
}

/// How far ahead, in groups, the VNNI tiles prefetch each row block's bytes: 16 groups (2 KB), as the int8 tiles do
/// (kernels_i8x8.c): an expert's product for a decode step streams its matrices once.
enum { X8_PREFETCH_GROUPS = 16 };

/// Prefetches group g + X8_PREFETCH_GROUPS of row block b (nothing past the row's end).
INLINE void x8_prefetch(const moe_matrix *m, int64_t b, int64_t g) {
    if (g + X8_PREFETCH_GROUPS >= m->cols / 32) return;
    const char *p = (const char *)x8_group(m, b, g + X8_PREFETCH_GROUPS);
    _mm_prefetch(p, _MM_HINT_T0);
    _mm_prefetch(p + 64, _MM_HINT_T0);
}

/// Rows per cache block when tokens come in several tiles: ~1 MB of weights (reused from L2 by every tile of
/// tokens; with 256 KB blocks 64 tokens ran at 160 GOP/s instead of 220-240 on the AVX-512 Xeon), a multiple of 16.
INLINE int64_t x8_row_block(const moe_matrix *m) {
    int64_t n = (1024 << 10) / (m->cols / 2 + m->cols / 32 * (m->scales_bf16 ? 2 : 4));
    n -= n % 16;
    return n < 16 ? 16 : n;
}

/// `X8_LOOP_RB` with the int4 layout's cache blocks.
#define X8_LOOP(NT, STEP, ROWTILE, TAIL8) X8_LOOP_RB(x8_row_block(m), NT, STEP, ROWTILE, TAIL8)

// ---- int4 × q8 activations, AVX2: maddubs (nibble × q, pairs in int16), eight per group summed in int16 (at
// most 8 · 2 · 15 · 127 = 30480), then madd with ones into one int32 lane per row.

/// Rows 8b..8b+7 × tokens t..t+NT−1.
T2 INLINE void q8_avx2_tile(const moe_matrix *m, int64_t b, const moe_q8_acts *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 f[4];
    for (int j = 0; j < NT; j++) f[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = x8_group(m, b, g);
        __m256i p[4];
        for (int j = 0; j < NT; j++) p[j] = _mm256_setzero_si256();
        for (int u = 0; u < 4; u++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 32 * u));
            const __m256i lo = _mm256_and_si256(raw, mask), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            for (int j = 0; j < NT; j++) {
                const int8_t *q = x->q + (t + j) * cols + 32 * g + 8 * u;
                p[j] = _mm256_add_epi16(p[j], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(four(q))));
                p[j] = _mm256_add_epi16(p[j], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(four(q + 4))));
            }
        }
        const __m256 ws = x8_scales(m, b, g);
        for (int j = 0; j < NT; j++) {
            const int64_t k = (t + j) * G + g;
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(p[j], ones), _mm256_set1_epi32(-8 * x->sums[k]));
            f[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(ws, _mm256_set1_ps(x->d[k])), f[j]);
        }
    }
    for (int j = 0; j < NT; j++) _mm256_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);
}

T2 void moe_gemm_q4x8_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {
#define TILE(b, t, n) BY_COUNT4(q8_avx2_tile, n, m, b, x, t, y)
    X8_LOOP(4, 8, TILE, TILE)
#undef TILE
}

// ---- int4 × q8 activations, AVX-512 VNNI: vpdpbusd, 16 rows (two blocks) per vector, up to 8 tokens.

/// Rows 8b..8b+15 × tokens t..t+NT−1.
T5V INLINE void q8_vnni_tile16(const moe_matrix *m, int64_t b, const moe_q8_acts *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m512i mask = _mm512_set1_epi8(0x0F);
    __m512 f[8];
    for (int j = 0; j < NT; j++) f[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        x8_prefetch(m, b, g);
        x8_prefetch(m, b + 1, g);
        const uint8_t *wa = x8_group(m, b, g), *wb = x8_group(m, b + 1, g);
        __m512i acc[8];
        for (int j = 0; j < NT; j++) acc[j] = _mm512_set1_epi32(-8 * x->sums[(t + j) * G + g]);
        for (int u = 0; u < 4; u++) {
            const __m512i raw = x8_join16(wa + 32 * u, wb + 32 * u);
            const __m512i lo = _mm512_and_si512(raw, mask), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
            for (int j = 0; j < NT; j++) {
                const int8_t *q = x->q + (t + j) * cols + 32 * g + 8 * u;
                acc[j] = _mm512_dpbusd_epi32(acc[j], lo, _mm512_set1_epi32(four(q)));
                acc[j] = _mm512_dpbusd_epi32(acc[j], hi, _mm512_set1_epi32(four(q + 4)));
            }
        }
        const __m512 ws = x8_scales16(m, b, g);
        for (int j = 0; j < NT; j++)
            f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j]), _mm512_mul_ps(ws, _mm512_set1_ps(x->d[(t + j) * G + g])), f[j]);
    }
    for (int j = 0; j < NT; j++) _mm512_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);
}

/// Rows 8b..8b+7 (an odd last block) × tokens t..t+NT−1: the 256-bit form, the same operations per lane.
T5V INLINE void q8_vnni_tile8(const moe_matrix *m, int64_t b, const moe_q8_acts *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256 f[8];
    for (int j = 0; j < NT; j++) f[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = x8_group(m, b, g);
        __m256i acc[8];
        for (int j = 0; j < NT; j++) acc[j] = _mm256_set1_epi32(-8 * x->sums[(t + j) * G + g]);
        for (int u = 0; u < 4; u++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 32 * u));
            const __m256i lo = _mm256_and_si256(raw, mask), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            for (int j = 0; j < NT; j++) {
                const int8_t *q = x->q + (t + j) * cols + 32 * g + 8 * u;
                acc[j] = _mm256_dpbusd_epi32(acc[j], lo, _mm256_set1_epi32(four(q)));
                acc[j] = _mm256_dpbusd_epi32(acc[j], hi, _mm256_set1_epi32(four(q + 4)));
            }
        }
        const __m256 ws = x8_scales(m, b, g);
        for (int j = 0; j < NT; j++)
            f[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), _mm256_mul_ps(ws, _mm256_set1_ps(x->d[(t + j) * G + g])), f[j]);
    }
    for (int j = 0; j < NT; j++) _mm256_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);
}

T5V void moe_gemm_q4x8_q8_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                                     float *y) {
#define TILE16(b, t, n) BY_COUNT8(q8_vnni_tile16, n, m, b, x, t, y)
#define TILE8(b, t, n) BY_COUNT8(q8_vnni_tile8, n, m, b, x, t, y)
    X8_LOOP(8, 16, TILE16, TILE8)
#undef TILE16
#undef TILE8
}

// ---- int4 × two-part int8 activations (the routed experts' down projection by default): x ≈ (q1 + q2/256)·d,
// q1 the q8 form, q2 = round(256·(x − q1·d)/d) clamped to ±127 (`x2`: q2 and Σq2 per group). Per group the exact
// integer A = ((Σ nibble·q1 − 8·Σq1) << 8) + Σ nibble·q2 − 8·Σq2 (|A| < 2²⁴: exact in fp32), then
// f = fma(float(A), scale·(d/256), f). AVX2 sums each part in int16 as the q8 tile does (|q2| ≤ 127).

/// AVX2: rows 8b..8b+7 × tokens t..t+NT−1.
T2 INLINE void q16_avx2_tile(const moe_matrix *m, int64_t b, const moe_q8_acts *x, const moe_q8_acts *x2, int64_t t,
                             float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 f[4];
    for (int j = 0; j < NT; j++) f[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = x8_group(m, b, g);
        __m256i p1[4], p2[4];
        for (int j = 0; j < NT; j++) p1[j] = p2[j] = _mm256_setzero_si256();
        for (int u = 0; u < 4; u++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 32 * u));
            const __m256i lo = _mm256_and_si256(raw, mask), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            for (int j = 0; j < NT; j++) {
                const int64_t at = (t + j) * cols + 32 * g + 8 * u;
                p1[j] = _mm256_add_epi16(p1[j], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(four(x->q + at))));
                p1[j] = _mm256_add_epi16(p1[j], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(four(x->q + at + 4))));
                p2[j] = _mm256_add_epi16(p2[j], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(four(x2->q + at))));
                p2[j] = _mm256_add_epi16(p2[j], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(four(x2->q + at + 4))));
            }
        }
        const __m256 ws = x8_scales(m, b, g);
        for (int j = 0; j < NT; j++) {
            const int64_t k = (t + j) * G + g;
            const __m256i s1 = _mm256_add_epi32(_mm256_madd_epi16(p1[j], ones), _mm256_set1_epi32(-8 * x->sums[k]));
            const __m256i s2 = _mm256_add_epi32(_mm256_madd_epi16(p2[j], ones), _mm256_set1_epi32(-8 * x2->sums[k]));
            const __m256i a = _mm256_add_epi32(_mm256_slli_epi32(s1, 8), s2);
            f[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(ws, _mm256_set1_ps(x->d[k] * 0x1p-8f)), f[j]);
        }
    }
    for (int j = 0; j < NT; j++) _mm256_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);
}

T2 void moe_gemm_q4x8_q16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                               int64_t T, float *y) {
#define TILE(b, t, n) BY_COUNT4(q16_avx2_tile, n, m, b, x, x2, t, y)
    X8_LOOP(4, 8, TILE, TILE)
#undef TILE
}

/// The VNNI tile body in the width of PFX (`_mm256`: 8 rows, `_mm512`: 16): VI/VF its integer and float vectors,
/// AND its bitwise and, RAW(u) unit u's 32 bytes of every row block, SCALES the rows' scales as VF, PREFETCH the
/// group's prefetch of the rows' blocks. As the q8 tile: each unit's nibbles
/// are unpacked once and go to every token's two accumulators, joined per group as A = (acc1 << 8) + acc2, then
/// f = fma(float(A), scale·(d/256), f); the rows' results are stored at row 8b.
#define Q16_VNNI_TILE(PFX, VI, VF, AND, RAW, SCALES, PREFETCH)                                                        \
    const int64_t G = m->cols / 32, cols = m->cols;                                                              \
    const VI mask = PFX##_set1_epi8(0x0F);                                                                       \
    VF f[8];                                                                                                     \
    for (int j = 0; j < NT; j++) f[j] = PFX##_setzero_ps();                                                      \
    for (int64_t g = 0; g < G; g++) {                                                                            \
        PREFETCH;                                                                                                \
        VI a1[8], a2[8];                                                                                         \
        for (int j = 0; j < NT; j++) {                                                                           \
            a1[j] = PFX##_set1_epi32(-8 * x->sums[(t + j) * G + g]);                                             \
            a2[j] = PFX##_set1_epi32(-8 * x2->sums[(t + j) * G + g]);                                            \
        }                                                                                                        \
        for (int u = 0; u < 4; u++) {                                                                            \
            const VI raw = RAW(u);                                                                               \
            const VI lo = AND(raw, mask), hi = AND(PFX##_srli_epi16(raw, 4), mask);                                \
            for (int j = 0; j < NT; j++) {                                                                       \
                const int64_t at = (t + j) * cols + 32 * g + 8 * u;                                              \
                a1[j] = PFX##_dpbusd_epi32(a1[j], lo, PFX##_set1_epi32(four(x->q + at)));                        \
                a1[j] = PFX##_dpbusd_epi32(a1[j], hi, PFX##_set1_epi32(four(x->q + at + 4)));                    \
                a2[j] = PFX##_dpbusd_epi32(a2[j], lo, PFX##_set1_epi32(four(x2->q + at)));                       \
                a2[j] = PFX##_dpbusd_epi32(a2[j], hi, PFX##_set1_epi32(four(x2->q + at + 4)));                   \
            }                                                                                                    \
        }                                                                                                        \
        Q16_FINISH_GROUP(PFX, VI, VF, SCALES)                                                                    \
    }                                                                                                            \
    for (int j = 0; j < NT; j++) PFX##_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);

/// AVX-512 VNNI: rows 8b..8b+15 (two blocks) × tokens t..t+NT−1 (NT ≤ 4).
T5V INLINE void q16_vnni_tile16(const moe_matrix *m, int64_t b, const moe_q8_acts *x, const moe_q8_acts *x2, int64_t t,
                                float *y, const int NT) {
#define RAW16(u) x8_join16(x8_group(m, b, g) + 32 * (u), x8_group(m, b + 1, g) + 32 * (u))
#define SCALES16 x8_scales16(m, b, g)
    Q16_VNNI_TILE(_mm512, __m512i, __m512, _mm512_and_si512, RAW16, SCALES16, (x8_prefetch(m, b, g), x8_prefetch(m, b + 1, g)))
#undef RAW16
#undef SCALES16
}

/// Rows 8b..8b+7 (an odd last block): the 256-bit form, the same operations per lane.
T5V INLINE void q16_vnni_tile8(const moe_matrix *m, int64_t b, const moe_q8_acts *x, const moe_q8_acts *x2, int64_t t,
                               float *y, const int NT) {
#define RAW8(u) _mm256_loadu_si256((const __m256i *)(x8_group(m, b, g) + 32 * (u)))
    Q16_VNNI_TILE(_mm256, __m256i, __m256, _mm256_and_si256, RAW8, x8_scales(m, b, g), x8_prefetch(m, b, g))
#undef RAW8
}

T5V void moe_gemm_q4x8_q16_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x,
                                      const moe_q8_acts *x2, int64_t T, float *y) {
// Four tokens a tile, not eight: with eight, 2·8 integer and 8 float accumulators leave the registers short
// (11 tokens 1.22 → 1.05 ms, 256 tokens 214 → 265 GOP/s on a Zen 5).
#define TILE16(b, t, n) BY_COUNT4(q16_vnni_tile16, n, m, b, x, x2, t, y)
#define TILE8(b, t, n) BY_COUNT4(q16_vnni_tile8, n, m, b, x, x2, t, y)
    X8_LOOP(4, 16, TILE16, TILE8)
#undef TILE16
#undef TILE8
}

// ---- int4 × fp32 activations (`--exact`).

/// AVX2: rows 8b + 4h .. 8b + 4h + 3 (h = 0, 1) × tokens t..t+NT−1; a vector holds two rows' four partial sums.
T2 INLINE void f32_avx2_tile(const moe_matrix *m, int64_t b, int h, const float *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    const __m256i pick0 = _mm256_setr_epi32(4 * h, 4 * h, 4 * h, 4 * h, 4 * h + 1, 4 * h + 1, 4 * h + 1, 4 * h + 1);
    const __m256i pick1 = _mm256_add_epi32(pick0, _mm256_set1_epi32(2));
    __m256 acc[4][2];
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = x8_group(m, b, g) + 16 * h;
        const __m256 ws = x8_scales(m, b, g);
        const __m256 s0 = _mm256_permutevar8x32_ps(ws, pick0), s1 = _mm256_permutevar8x32_ps(ws, pick1);
        for (int u = 0; u < 4; u++) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(w + 32 * u));
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, mask), eight);
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), eight);
            const __m256 l0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), s0);
            const __m256 l1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), s1);
            const __m256 h0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), s0);
            const __m256 h1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), s1);
            for (int j = 0; j < NT; j++) {
                const float *xp = x + (t + j) * cols + 32 * g + 8 * u;
                const __m256 xl = _mm256_broadcast_ps((const __m128 *)xp), xh = _mm256_broadcast_ps((const __m128 *)(xp + 4));
                acc[j][0] = _mm256_fmadd_ps(l0, xl, acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(l1, xl, acc[j][1]);
                acc[j][0] = _mm256_fmadd_ps(h0, xh, acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(h1, xh, acc[j][1]);
            }
        }
    }
    for (int j = 0; j < NT; j++) x8_store4_avx2(acc[j][0], acc[j][1], y + (t + j) * m->rows + 8 * b + 4 * h);
}

T2 void moe_gemm_q4x8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
#define TILE(b, t, n)                                                                                            \
    do {                                                                                                         \
        BY_COUNT4(f32_avx2_tile, n, m, b, 0, x, t, y)                                                            \
        BY_COUNT4(f32_avx2_tile, n, m, b, 1, x, t, y)                                                            \
    } while (0)
    X8_LOOP(4, 8, TILE, TILE)
#undef TILE
}

/// AVX-512: rows 8b..8b+7 × tokens t..t+NT−1; a vector holds four rows' four partial sums.
T5 INLINE void f32_avx512_tile(const moe_matrix *m, int64_t b, const float *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m256i mask = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    const __m512i pickA = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i pickB = _mm512_add_epi32(pickA, _mm512_set1_epi32(4));
    __m512 acc[8][2];
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = x8_group(m, b, g);
        const __m512 ws = _mm512_castps256_ps512(x8_scales(m, b, g));
        const __m512 sA = _mm512_permutexvar_ps(pickA, ws), sB = _mm512_permutexvar_ps(pickB, ws);
        for (int u = 0; u < 4; u++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 32 * u));
            const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(raw, mask), eight);
            const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(raw, 4), mask), eight);
            const __m512 lA = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(lo))), sA);
            const __m512 lB = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(lo, 1))), sB);
            const __m512 hA = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(hi))), sA);
            const __m512 hB = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(hi, 1))), sB);
            for (int j = 0; j < NT; j++) {
                const float *xp = x + (t + j) * cols + 32 * g + 8 * u;
                const __m512 xl = _mm512_broadcast_f32x4(_mm_loadu_ps(xp)), xh = _mm512_broadcast_f32x4(_mm_loadu_ps(xp + 4));
                acc[j][0] = _mm512_fmadd_ps(lA, xl, acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(lB, xl, acc[j][1]);
                acc[j][0] = _mm512_fmadd_ps(hA, xh, acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(hB, xh, acc[j][1]);
            }
        }
    }
    for (int j = 0; j < NT; j++) x8_store8_avx512(acc[j][0], acc[j][1], y + (t + j) * m->rows + 8 * b);
}

T5 void moe_gemm_q4x8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
#define TILE(b, t, n) BY_COUNT8(f32_avx512_tile, n, m, b, x, t, y)
    X8_LOOP(8, 8, TILE, TILE)
#undef TILE
}

#else
void moe_gemm_q4x8_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {}
void moe_gemm_q4x8_q8_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {}
void moe_gemm_q4x8_q16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                            int64_t T, float *y) {}
void moe_gemm_q4x8_q16_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                                  int64_t T, float *y) {}
void moe_gemm_q4x8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_q4x8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
#endif
