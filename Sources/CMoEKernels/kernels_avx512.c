// AVX-512 F/BW/VL kernels (Skylake-SP and later, Zen 4). 16 fp32 lanes: one int4/int8 group is two vectors.
#include "CMoEKernels.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define VEC __m512
#define VZERO() _mm512_setzero_ps()

/// Fixed tree: 16 → 8 → 4 → 2 → 1.
TARGET static inline float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float group_scale(const moe_matrix *m, int64_t index) {
    if (m->scales_bf16) {
        uint32_t u = (uint32_t)((const uint16_t *)m->scales)[index] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return ((const float *)m->scales)[index];
}

// Per group of 32 (w0, w1: elements 0-15, 16-31 as fp32): p = w0·x0; p += w1·x1; acc += p · s
#define GROUP_FMA(x, acc)                                                                                        \
    do {                                                                                                         \
        const float *xp_ = (x) + 32 * g_;                                                                        \
        __m512 p_ = _mm512_mul_ps(w_[0], _mm512_loadu_ps(xp_));                                                  \
        p_ = _mm512_fmadd_ps(w_[1], _mm512_loadu_ps(xp_ + 16), p_);                                              \
        (acc) = _mm512_fmadd_ps(p_, s_, (acc));                                                                  \
    } while (0)

#define GROUPS(m) ((m)->cols / 32)
#define FINISH(m, r, x, acc) hsum16(acc)
#define STEP(m, r, g, x, acc) GROUP_FMA(x, acc)

#define LOADROW(m, r, g)                                                                                         \
    __m512 w_[2];                                                                                                \
    const int64_t g_ = (g);                                                                                      \
    const __m512 s_ = _mm512_set1_ps(group_scale(m, (r) * GROUPS(m) + g));                                       \
    {                                                                                                            \
        const __m128i b_ = _mm_loadu_si128((const __m128i *)((const uint8_t *)(m)->data + (r) * ((m)->cols / 2) + 16 * g)); \
        const __m128i lo_ = _mm_sub_epi8(_mm_and_si128(b_, _mm_set1_epi8(0x0F)), _mm_set1_epi8(8));              \
        const __m128i hi_ = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b_, 4), _mm_set1_epi8(0x0F)), _mm_set1_epi8(8)); \
        w_[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo_));                                                   \
        w_[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi_));                                                   \
    }
#define KERNEL moe_gemm_q4_avx512
#define tile_4_1 q4_tile_4_1
#define tile_1_1 q4_tile_1_1
#define tile_2_4 q4_tile_2_4
#define tile_1_4 q4_tile_1_4
#define tile_2_2 q4_tile_2_2
#define tile_1_2 q4_tile_1_2
#include "tiles.h"
#undef tile_4_1
#undef tile_1_1
#undef tile_2_4
#undef tile_1_4
#undef tile_2_2
#undef tile_1_2
#undef LOADROW

#define LOADROW(m, r, g)                                                                                         \
    __m512 w_[2];                                                                                                \
    const int64_t g_ = (g);                                                                                      \
    const __m512 s_ = _mm512_set1_ps(group_scale(m, (r) * GROUPS(m) + g));                                       \
    {                                                                                                            \
        const int8_t *q_ = (const int8_t *)(m)->data + (r) * (m)->cols + 32 * g;                                 \
        w_[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q_)));                  \
        w_[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q_ + 16))));           \
    }
#define KERNEL moe_gemm_q8_avx512
#define tile_4_1 q8_tile_4_1
#define tile_1_1 q8_tile_1_1
#define tile_2_4 q8_tile_2_4
#define tile_1_4 q8_tile_1_4
#define tile_2_2 q8_tile_2_2
#define tile_1_2 q8_tile_1_2
#include "tiles.h"
#undef tile_4_1
#undef tile_1_1
#undef tile_2_4
#undef tile_1_4
#undef tile_2_2
#undef tile_1_2
#undef LOADROW
#undef STEP
#undef GROUPS
#undef FINISH

TARGET static inline float bf16_finish(const moe_matrix *m, int64_t r, const float *x, __m512 acc) {
    float s = hsum16(acc);
    const uint16_t *w = (const uint16_t *)m->data + r * m->cols;
    for (int64_t c = m->cols & ~(int64_t)15; c < m->cols; c++) {
        uint32_t u = (uint32_t)w[c] << 16;
        float f;
        memcpy(&f, &u, 4);
        s = __builtin_fmaf(f, x[c], s);
    }
    return s;
}
#define GROUPS(m) ((m)->cols / 16)
#define LOADROW(m, r, g)                                                                                         \
    const int64_t g_ = (g);                                                                                      \
    const __m512 w16_ = _mm512_castsi512_ps(_mm512_slli_epi32(                                                   \
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(m)->data + (r) * (m)->cols + 16 * g))), 16));
#define STEP(m, r, g, x, acc) (acc) = _mm512_fmadd_ps(w16_, _mm512_loadu_ps((x) + 16 * g_), (acc))
#define FINISH(m, r, x, acc) bf16_finish(m, r, x, acc)
#define KERNEL moe_gemm_bf16_avx512
#define tile_4_1 bf_tile_4_1
#define tile_1_1 bf_tile_1_1
#define tile_2_4 bf_tile_2_4
#define tile_1_4 bf_tile_1_4
#define tile_2_2 bf_tile_2_2
#define tile_1_2 bf_tile_1_2
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
#endif
