// int4 weights × int8-quantised activations (the opt-in `--expert-activations q8`): llama.cpp's Q4_0 × Q8_0
// arithmetic. Per group of 32 the products are exact integers (maddubs: unsigned nibble × signed byte, pairs
// summed in int16, then in int32); the group's sum, less 8·Σq_x for the nibbles' offset, is scaled by
// w_scale · x_scale in fp32.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))

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

/// One row, four tokens: the nibbles are unpacked once per group for the four (the loops over j unroll, the
/// accumulators stay in registers).
TARGET static inline void row_4(const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t, float *y) {
    const int64_t groups = m->cols / 32, cols = m->cols;
    __m256 acc[4];
    float c[4];
    for (int j = 0; j < 4; j++) { acc[j] = _mm256_setzero_ps(); c[j] = 0; }
    const int8_t *q = x->q + t * cols;
    const float *d = x->d + t * groups;
    const int32_t *s = x->sums + t * groups;
    for (int64_t g = 0; g < groups; g++) {
        const __m256i w = nibbles32(m, r, g);
        const float ws = group_scale(m, r * groups + g);
        for (int j = 0; j < 4; j++) {
            const float k = ws * d[j * groups + g];
            acc[j] = _mm256_fmadd_ps(group_dot(w, q + j * cols + 32 * g), _mm256_set1_ps(k), acc[j]);
            c[j] = __builtin_fmaf(k, (float)s[j * groups + g], c[j]);
        }
    }
    for (int j = 0; j < 4; j++) y[(t + j) * m->rows + r] = hsum8(acc[j]) - 8 * c[j];
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
    y[t * m->rows + r] = hsum8(acc) - 8 * c;
}

TARGET void moe_gemm_q4_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {
    FOR_ROW_BLOCKS(T, r0, r1, q4_row_bytes(m), b0, b1) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            for (int64_t r = b0; r < b1; r++) row_4(m, r, x, t, y);
        for (; t < T; t++)
            for (int64_t r = b0; r < b1; r++) row_1(m, r, x, t, y);
    }
}

// ---- AVX-512 VNNI: two groups per instruction (vpdpbusd: 64 nibble × int8 products summed by fours into 16
// int32 lanes, lanes 0-7 group g and 8-15 group g + 1), the scale pair broadcast to the two halves. An odd
// last group takes the 256-bit form. Same operations for a token alone as in a block of four.
#define TARGETV __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/// The 64 nibbles of groups g and g + 1 of row `r` as unsigned bytes in element order.
TARGETV static inline __m512i nibbles64(const moe_matrix *m, int64_t r, int64_t g) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)((const uint8_t *)m->data + r * (m->cols / 2) + 16 * g));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, mask)),
                                         _mm256_and_si256(_mm256_srli_epi16(b, 4), mask), 1);  // lo g, lo g+1, hi g, hi g+1
    return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));                              // lo g, hi g, lo g+1, hi g+1
}

/// acc += (Σ nibble·q per lane) · [k0 ×8 | k1 ×8] for groups g, g + 1 of one token; c += k0·Σq_g + k1·Σq_g+1.
#define VNNI_PAIR(w, q, d, s, g, ws0, ws1, acc, c)                                                               \
    do {                                                                                                         \
        const float k0_ = (ws0) * (d)[g], k1_ = (ws1) * (d)[(g) + 1];                                            \
        const __m512i p_ = _mm512_dpbusd_epi32(_mm512_setzero_si512(), (w), _mm512_loadu_si512((q) + 32 * (g))); \
        const __m512 k_ = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(k0_)),            \
                                                              _mm256_castps_pd(_mm256_set1_ps(k1_)), 1));        \
        (acc) = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_), k_, (acc));                                              \
        (c) = __builtin_fmaf(k0_, (float)(s)[g], (c));                                                           \
        (c) = __builtin_fmaf(k1_, (float)(s)[(g) + 1], (c));                                                     \
    } while (0)

/// The last group when the count is odd: 256-bit dpbusd into the low half.
#define VNNI_LAST(wl, q, d, s, g, ws, acc, c)                                                                    \
    do {                                                                                                         \
        const float k_ = (ws) * (d)[g];                                                                          \
        const __m256i p_ = _mm256_dpbusd_epi32(_mm256_setzero_si256(), (wl), _mm256_loadu_si256((const __m256i *)((q) + 32 * (g)))); \
        (acc) = _mm512_fmadd_ps(_mm512_castps256_ps512(_mm256_cvtepi32_ps(p_)),                                  \
                                _mm512_castps256_ps512(_mm256_set1_ps(k_)), (acc));                              \
        (c) = __builtin_fmaf(k_, (float)(s)[g], (c));                                                            \
    } while (0)

TARGETV static inline void vnni_row_4(const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t, float *y) {
    const int64_t groups = m->cols / 32, cols = m->cols, pairs = groups & ~(int64_t)1;
    __m512 acc[4];
    float c[4];
    for (int j = 0; j < 4; j++) { acc[j] = _mm512_setzero_ps(); c[j] = 0; }
    const int8_t *q = x->q + t * cols;
    const float *d = x->d + t * groups;
    const int32_t *s = x->sums + t * groups;
    for (int64_t g = 0; g < pairs; g += 2) {
        const __m512i w = nibbles64(m, r, g);
        const float ws0 = group_scale(m, r * groups + g), ws1 = group_scale(m, r * groups + g + 1);
        for (int j = 0; j < 4; j++)
            VNNI_PAIR(w, q + j * cols, d + j * groups, s + j * groups, g, ws0, ws1, acc[j], c[j]);
    }
    if (pairs < groups) {
        const __m256i wl = nibbles32(m, r, pairs);
        const float ws = group_scale(m, r * groups + pairs);
        for (int j = 0; j < 4; j++) VNNI_LAST(wl, q + j * cols, d + j * groups, s + j * groups, pairs, ws, acc[j], c[j]);
    }
    for (int j = 0; j < 4; j++) y[(t + j) * m->rows + r] = hsum16(acc[j]) - 8 * c[j];
}

TARGETV static inline void vnni_row_1(const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t, float *y) {
    const int64_t groups = m->cols / 32, pairs = groups & ~(int64_t)1;
    __m512 a = _mm512_setzero_ps();
    float c = 0;
    const int8_t *q = x->q + t * m->cols;
    const float *d = x->d + t * groups;
    const int32_t *s = x->sums + t * groups;
    for (int64_t g = 0; g < pairs; g += 2) {
        const __m512i w = nibbles64(m, r, g);
        VNNI_PAIR(w, q, d, s, g, group_scale(m, r * groups + g), group_scale(m, r * groups + g + 1), a, c);
    }
    if (pairs < groups) VNNI_LAST(nibbles32(m, r, pairs), q, d, s, pairs, group_scale(m, r * groups + pairs), a, c);
    y[t * m->rows + r] = hsum16(a) - 8 * c;
}

TARGETV void moe_gemm_q4_q8_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                                       float *y) {
    FOR_ROW_BLOCKS(T, r0, r1, q4_row_bytes(m), b0, b1) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            for (int64_t r = b0; r < b1; r++) vnni_row_4(m, r, x, t, y);
        for (; t < T; t++)
            for (int64_t r = b0; r < b1; r++) vnni_row_1(m, r, x, t, y);
    }
}

int moe_cpu_has_avx512vnni(void) {
    __builtin_cpu_init();
    return moe_cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
}

#else
int moe_cpu_has_avx512vnni(void) { return 0; }
void moe_gemm_q4_q8_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {}
void moe_gemm_q4_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y) {}
#endif
