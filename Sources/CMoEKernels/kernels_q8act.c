// int4 weights × int8-quantised activations (the opt-in `--expert-activations q8`): llama.cpp's Q4_0 × Q8_0
// arithmetic. Per group of 32 the products are exact integers (maddubs: unsigned nibble × signed byte, pairs
// summed in int16, then in int32); the group's sum, less 8·Σq_x for the nibbles' offset, is scaled by
// w_scale · x_scale in fp32.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))

TARGET static inline float hsum8q(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// The 32 nibbles of int4 group `g` of row `r` as unsigned bytes in element order (0-15 low, 16-31 high).
TARGET static inline __m256i nibbles32(const moe_matrix *m, int64_t r, int64_t g) {
    const __m128i b = _mm_loadu_si128((const __m128i *)((const uint8_t *)m->data + r * (m->cols / 2) + 16 * g));
    const __m128i mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
}

/// Σ nibble·q over one group: 8 int32 lanes as fp32.
TARGET static inline __m256 group_dot(__m256i w, const int8_t *q) {
    const __m256i p16 = _mm256_maddubs_epi16(w, _mm256_loadu_si256((const __m256i *)q));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/// One row, four tokens: the nibbles are unpacked once per group for the four.
TARGET static inline void row_4(const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t, float *y) {
    const int64_t groups = m->cols / 32, cols = m->cols;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    float c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    const int8_t *q = x->q + t * cols;
    const float *d = x->d + t * groups;
    const int32_t *s = x->sums + t * groups;
    for (int64_t g = 0; g < groups; g++) {
        const __m256i w = nibbles32(m, r, g);
        const float ws = group_scale(m, r * groups + g);
        float k;
        k = ws * d[g];              acc0 = _mm256_fmadd_ps(group_dot(w, q + 32 * g), _mm256_set1_ps(k), acc0);
        c0 = __builtin_fmaf(k, (float)s[g], c0);
        k = ws * d[groups + g];     acc1 = _mm256_fmadd_ps(group_dot(w, q + cols + 32 * g), _mm256_set1_ps(k), acc1);
        c1 = __builtin_fmaf(k, (float)s[groups + g], c1);
        k = ws * d[2 * groups + g]; acc2 = _mm256_fmadd_ps(group_dot(w, q + 2 * cols + 32 * g), _mm256_set1_ps(k), acc2);
        c2 = __builtin_fmaf(k, (float)s[2 * groups + g], c2);
        k = ws * d[3 * groups + g]; acc3 = _mm256_fmadd_ps(group_dot(w, q + 3 * cols + 32 * g), _mm256_set1_ps(k), acc3);
        c3 = __builtin_fmaf(k, (float)s[3 * groups + g], c3);
    }
    const int64_t R = m->rows;
    y[t * R + r] = hsum8q(acc0) - 8 * c0;
    y[(t + 1) * R + r] = hsum8q(acc1) - 8 * c1;
    y[(t + 2) * R + r] = hsum8q(acc2) - 8 * c2;
    y[(t + 3) * R + r] = hsum8q(acc3) - 8 * c3;
}

/// One row, one token: the same operations per token as `row_4`.
TARGET static inline void row_1(const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t, float *y) {
    const int64_t groups = m->cols / 32;
    __m256 acc = _mm256_setzero_ps();
    float c = 0;
    const int8_t *q = x->q + t * m->cols;
    const float *d = x->d + t * groups;
    const int32_t *s = x->sums + t * groups;
    for (int64_t g = 0; g < groups; g++) {
        const float k = group_scale(m, r * groups + g) * d[g];
        acc = _mm256_fmadd_ps(group_dot(nibbles32(m, r, g), q + 32 * g), _mm256_set1_ps(k), acc);
        c = __builtin_fmaf(k, (float)s[g], c);
    }
    y[t * m->rows + r] = hsum8q(acc) - 8 * c;
}

TARGET void moe_gemm_q4_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {
    const int64_t block = T > 4 ? row_block(q4_row_bytes(m)) : r1 - r0;
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
        const int64_t b1 = b0 + block < r1 ? b0 + block : r1;
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            for (int64_t r = b0; r < b1; r++) row_4(m, r, x, t, y);
        for (; t < T; t++)
            for (int64_t r = b0; r < b1; r++) row_1(m, r, x, t, y);
    }
}

#else
void moe_gemm_q4_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {}
#endif
