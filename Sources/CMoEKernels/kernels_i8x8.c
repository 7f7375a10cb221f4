// int8 weights interleaved by 8 rows (`int8g32x8`: a store's resident matrices under `convert --resident int8`),
// laid out so that one 32-byte load holds 4 consecutive columns of 8 rows, an int32 lane per row, as the int4
// layout of kernels_x8.c. Layout (G = cols/32 groups per row, rows a multiple of 8):
//   block b (rows 8b..8b+7), group g: 256 bytes at (b·G + g)·256, eight 32-byte units u = 0..7;
//   byte 4i + j of unit u (row 8b + i, j = 0..3) = w + 128 for the weight w ∈ [−127, 127] of column 32g + 4u + j;
//   scales: [(b·G + g)·8 + i], value = (byte − 128) · scale.
// Stored offset by 128 so the bytes are what `vpdpbusd` takes unsigned: the offset comes back per group as
// −128·Σq, as the int4 layout's 8 does.
//
// Two products, each with the same operations per (row, token) in every tile and on every ISA, so AVX2, AVX-512
// and the Swift twins agree bit for bit:
//   two-part int8 activations (the resident matrices' default: x ≈ (q1 + q2/256)·d, `Q16Activations`): per group
//     the exact integer A = ((Σ byte·q1 − 128·Σq1) << 8) + Σ byte·q2 − 128·Σq2 (|A| < 2²⁷), then
//     f = fma(float(A), scale·(d/256), f) — float(A) rounded to nearest, as every twin converts it.
//   fp32 activations (`--exact`): four partial sums per row (one per column mod 4),
//     a_j = fma(float(byte − 128)·scale, x, a_j) over the row's columns in layout order (group, unit), then
//     (a0 + a1) + (a2 + a3).
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "x8_common.h"

/// The 256 bytes of group g of row block b.
INLINE const uint8_t *i8x8_group(const moe_matrix *m, int64_t b, int64_t g) {
    return (const uint8_t *)m->data + (b * (m->cols / 32) + g) * 256;
}

/// How far ahead, in groups, the two-part tiles prefetch each row block's bytes: 16 groups (4 KB). A few tokens'
/// product streams the whole matrix once; the hardware prefetcher alone left one thread at 60-80% of a core's read
/// bandwidth (C harness, 7168 × 7168, one token, Zen 5: 2.3-3.1 ms against a plain read loop's 1.78 ms); 16 groups
/// ahead gave 1.6-2.2 ms, 11 tokens 1.88 → 1.61-1.77 ms, 256 tokens unchanged. In the model (K2 slice, int8 store, 2
/// threads) an 8-token prompt went from 30.8-34.4 to 37.5-41.1 tokens/s in three alternating pairs; decode, where two
/// threads share the memory's bandwidth, did not move beyond the noise (19.5-22.0 tokens/s either way).
enum { I8X8_PREFETCH_GROUPS = 16 };

/// Prefetches group g + I8X8_PREFETCH_GROUPS of row block b (nothing past the row's end).
INLINE void i8x8_prefetch(const moe_matrix *m, int64_t b, int64_t g) {
    if (g + I8X8_PREFETCH_GROUPS >= m->cols / 32) return;
    const char *p = (const char *)i8x8_group(m, b, g + I8X8_PREFETCH_GROUPS);
    for (int k = 0; k < 256; k += 64) _mm_prefetch(p + k, _MM_HINT_T0);
}

/// Rows per cache block when tokens come in several tiles: ~1 MB of weights, a multiple of 16 (as kernels_x8.c).
INLINE int64_t i8x8_row_block(const moe_matrix *m) {
    int64_t n = (1024 << 10) / (m->cols + m->cols / 32 * (m->scales_bf16 ? 2 : 4));
    n -= n % 16;
    return n < 16 ? 16 : n;
}

// ---- × two-part int8 activations, AVX-512 VNNI: 16 rows (two blocks) per vector, up to 4 tokens (as the int4
// two-part tile: with more, the 2·NT integer and NT float accumulators leave the registers short).

/// Rows 8b..8b+15 (PFX _mm512) or 8b..8b+7 (_mm256) × tokens t..t+NT−1; RAW(u) unit u's bytes of the rows,
/// PREFETCH the group's prefetch of the rows' blocks.
#define I8_Q16_VNNI_TILE(PFX, VI, VF, RAW, SCALES, PREFETCH)                                                     \
    const int64_t G = m->cols / 32, cols = m->cols;                                                              \
    VF f[4];                                                                                                     \
    for (int j = 0; j < NT; j++) f[j] = PFX##_setzero_ps();                                                      \
    for (int64_t g = 0; g < G; g++) {                                                                            \
        VI a1[4], a2[4];                                                                                         \
        for (int j = 0; j < NT; j++) {                                                                           \
            a1[j] = PFX##_set1_epi32(-128 * x->sums[(t + j) * G + g]);                                           \
            a2[j] = PFX##_set1_epi32(-128 * x2->sums[(t + j) * G + g]);                                          \
        }                                                                                                        \
        PREFETCH;                                                                                                \
        for (int u = 0; u < 8; u++) {                                                                            \
            const VI w = RAW(u);                                                                                 \
            for (int j = 0; j < NT; j++) {                                                                       \
                const int64_t at = (t + j) * cols + 32 * g + 4 * u;                                             \
                a1[j] = PFX##_dpbusd_epi32(a1[j], w, PFX##_set1_epi32(four(x->q + at)));                         \
                a2[j] = PFX##_dpbusd_epi32(a2[j], w, PFX##_set1_epi32(four(x2->q + at)));                        \
            }                                                                                                    \
        }                                                                                                        \
        Q16_FINISH_GROUP(PFX, VI, VF, SCALES)                                                                    \
    }                                                                                                            \
    for (int j = 0; j < NT; j++) PFX##_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);

T5V INLINE void i8_q16_vnni_tile16(const moe_matrix *m, int64_t b, const moe_q8_acts *x, const moe_q8_acts *x2, int64_t t,
                                   float *y, const int NT) {
#define RAW16(u) x8_join16(i8x8_group(m, b, g) + 32 * (u), i8x8_group(m, b + 1, g) + 32 * (u))
#define SCALES16 x8_scales16(m, b, g)
    I8_Q16_VNNI_TILE(_mm512, __m512i, __m512, RAW16, SCALES16, (i8x8_prefetch(m, b, g), i8x8_prefetch(m, b + 1, g)))
#undef RAW16
#undef SCALES16
}

T5V INLINE void i8_q16_vnni_tile8(const moe_matrix *m, int64_t b, const moe_q8_acts *x, const moe_q8_acts *x2, int64_t t,
                                  float *y, const int NT) {
#define RAW8(u) _mm256_loadu_si256((const __m256i *)(i8x8_group(m, b, g) + 32 * (u)))
    I8_Q16_VNNI_TILE(_mm256, __m256i, __m256, RAW8, x8_scales(m, b, g), i8x8_prefetch(m, b, g))
#undef RAW8
}

T5V void moe_gemm_i8x8_q16_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x,
                                      const moe_q8_acts *x2, int64_t T, float *y) {
#define TILE16(b, t, n) BY_COUNT4(i8_q16_vnni_tile16, n, m, b, x, x2, t, y)
#define TILE8(b, t, n) BY_COUNT4(i8_q16_vnni_tile8, n, m, b, x, x2, t, y)
    X8_LOOP_RB(i8x8_row_block(m), 4, 16, TILE16, TILE8)
#undef TILE16
#undef TILE8
}

// ---- × two-part int8 activations, AVX2. `maddubs` would saturate (2 · 255 · 127 > 32767), so the bytes are
// widened to int16 and `madd` sums pairs into int32: a row's four columns land in two lanes, joined per group
// by `hadd` (rows 0-3 from the low half, 4-7 from the high one) and put back in row order. Two tokens a tile:
// 2 halves · 2 parts · NT accumulators must fit 16 registers.

/// Rows 8b..8b+7 × tokens t..t+NT−1.
T2 INLINE void i8_q16_avx2_tile(const moe_matrix *m, int64_t b, const moe_q8_acts *x, const moe_q8_acts *x2, int64_t t,
                                float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    __m256 f[2];
    for (int j = 0; j < NT; j++) f[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *wg = i8x8_group(m, b, g);
        __m256i lo1[2], hi1[2], lo2[2], hi2[2];
        for (int j = 0; j < NT; j++) lo1[j] = hi1[j] = lo2[j] = hi2[j] = _mm256_setzero_si256();
        for (int u = 0; u < 8; u++) {
            const __m128i *p = (const __m128i *)(wg + 32 * u);
            const __m256i wl = _mm256_cvtepu8_epi16(_mm_loadu_si128(p)), wh = _mm256_cvtepu8_epi16(_mm_loadu_si128(p + 1));
            for (int j = 0; j < NT; j++) {
                const int64_t at = (t + j) * cols + 32 * g + 4 * u;
                const __m256i q1 = _mm256_cvtepi8_epi16(_mm_set1_epi32(four(x->q + at)));
                const __m256i q2 = _mm256_cvtepi8_epi16(_mm_set1_epi32(four(x2->q + at)));
                lo1[j] = _mm256_add_epi32(lo1[j], _mm256_madd_epi16(wl, q1));
                hi1[j] = _mm256_add_epi32(hi1[j], _mm256_madd_epi16(wh, q1));
                lo2[j] = _mm256_add_epi32(lo2[j], _mm256_madd_epi16(wl, q2));
                hi2[j] = _mm256_add_epi32(hi2[j], _mm256_madd_epi16(wh, q2));
            }
        }
        const __m256 ws = x8_scales(m, b, g);
        for (int j = 0; j < NT; j++) {
            const int64_t k = (t + j) * G + g;
            const __m256i s1 = _mm256_add_epi32(_mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo1[j], hi1[j]), order),
                                                _mm256_set1_epi32(-128 * x->sums[k]));
            const __m256i s2 = _mm256_add_epi32(_mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo2[j], hi2[j]), order),
                                                _mm256_set1_epi32(-128 * x2->sums[k]));
            const __m256i a = _mm256_add_epi32(_mm256_slli_epi32(s1, 8), s2);
            f[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(ws, _mm256_set1_ps(x->d[k] * 0x1p-8f)), f[j]);
        }
    }
    for (int j = 0; j < NT; j++) _mm256_storeu_ps(y + (t + j) * m->rows + 8 * b, f[j]);
}

#define BY_COUNT2(TILE, n, ...)                                                                                  \
    switch (n) {                                                                                                 \
    case 1: TILE(__VA_ARGS__, 1); break;                                                                         \
    default: TILE(__VA_ARGS__, 2); break;                                                                        \
    }

T2 void moe_gemm_i8x8_q16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                               int64_t T, float *y) {
#define TILE(b, t, n) BY_COUNT2(i8_q16_avx2_tile, n, m, b, x, x2, t, y)
    X8_LOOP_RB(i8x8_row_block(m), 2, 8, TILE, TILE)
#undef TILE
}

// ---- × fp32 activations (`--exact`).

/// AVX2: rows 8b + 4h .. 8b + 4h + 3 (h = 0, 1) × tokens t..t+NT−1; a vector holds two rows' four partial sums.
T2 INLINE void i8_f32_avx2_tile(const moe_matrix *m, int64_t b, int h, const float *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m256i off = _mm256_set1_epi32(128);
    const __m256i pick0 = _mm256_setr_epi32(4 * h, 4 * h, 4 * h, 4 * h, 4 * h + 1, 4 * h + 1, 4 * h + 1, 4 * h + 1);
    const __m256i pick1 = _mm256_add_epi32(pick0, _mm256_set1_epi32(2));
    __m256 acc[4][2];
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = i8x8_group(m, b, g) + 16 * h;
        const __m256 ws = x8_scales(m, b, g);
        const __m256 s0 = _mm256_permutevar8x32_ps(ws, pick0), s1 = _mm256_permutevar8x32_ps(ws, pick1);
        for (int u = 0; u < 8; u++) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(w + 32 * u));
            const __m256 l0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(raw), off)), s0);
            const __m256 l1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(raw, 8)), off)), s1);
            for (int j = 0; j < NT; j++) {
                const __m256 xb = _mm256_broadcast_ps((const __m128 *)(x + (t + j) * cols + 32 * g + 4 * u));
                acc[j][0] = _mm256_fmadd_ps(l0, xb, acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(l1, xb, acc[j][1]);
            }
        }
    }
    for (int j = 0; j < NT; j++) x8_store4_avx2(acc[j][0], acc[j][1], y + (t + j) * m->rows + 8 * b + 4 * h);
}

T2 void moe_gemm_i8x8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
#define TILE(b, t, n)                                                                                            \
    do {                                                                                                         \
        BY_COUNT4(i8_f32_avx2_tile, n, m, b, 0, x, t, y)                                                         \
        BY_COUNT4(i8_f32_avx2_tile, n, m, b, 1, x, t, y)                                                         \
    } while (0)
    X8_LOOP_RB(i8x8_row_block(m), 4, 8, TILE, TILE)
#undef TILE
}

/// AVX-512: rows 8b..8b+7 × tokens t..t+NT−1; a vector holds four rows' four partial sums.
T5 INLINE void i8_f32_avx512_tile(const moe_matrix *m, int64_t b, const float *x, int64_t t, float *y, const int NT) {
    const int64_t G = m->cols / 32, cols = m->cols;
    const __m512i off = _mm512_set1_epi32(128);
    const __m512i pickA = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i pickB = _mm512_add_epi32(pickA, _mm512_set1_epi32(4));
    __m512 acc[8][2];
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *w = i8x8_group(m, b, g);
        const __m512 ws = _mm512_castps256_ps512(x8_scales(m, b, g));
        const __m512 sA = _mm512_permutexvar_ps(pickA, ws), sB = _mm512_permutexvar_ps(pickB, ws);
        for (int u = 0; u < 8; u++) {
            const __m128i *p = (const __m128i *)(w + 32 * u);
            const __m512 lA = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(p)), off)), sA);
            const __m512 lB = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(p + 1)), off)), sB);
            for (int j = 0; j < NT; j++) {
                const __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(x + (t + j) * cols + 32 * g + 4 * u));
                acc[j][0] = _mm512_fmadd_ps(lA, xb, acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(lB, xb, acc[j][1]);
            }
        }
    }
    for (int j = 0; j < NT; j++) x8_store8_avx512(acc[j][0], acc[j][1], y + (t + j) * m->rows + 8 * b);
}

T5 void moe_gemm_i8x8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
#define TILE(b, t, n) BY_COUNT8(i8_f32_avx512_tile, n, m, b, x, t, y)
    X8_LOOP_RB(i8x8_row_block(m), 8, 8, TILE, TILE)
#undef TILE
}

#else
void moe_gemm_i8x8_q16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                            int64_t T, float *y) {}
void moe_gemm_i8x8_q16_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                                  int64_t T, float *y) {}
void moe_gemm_i8x8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_i8x8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
#endif
