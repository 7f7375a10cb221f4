// AVX2 + FMA kernels (Haswell and later, Zen). 8 fp32 lanes.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define VEC __m256
#define VZERO() _mm256_setzero_ps()
#define VSET1(s) _mm256_set1_ps(s)

/// 16 signed bytes → elements 0-7 and 8-15 as fp32.
TARGET static inline void widen16(__m128i q, __m256 *w) {
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
}

// Per group of 32 (w0..w3: elements 0-7, 8-15, 16-23, 24-31 as fp32; s the group's scale):
//   p = w0·x0;  p += w1·x1;  p += w2·x2;  p += w3·x3;  acc += p · s        (all fused multiply-adds)
#define STEP(m, r, g, x, acc)                                                                                    \
    do {                                                                                                         \
        const float *xp_ = (x) + 32 * g_;                                                                        \
        __m256 p_ = _mm256_mul_ps(w_[0], _mm256_loadu_ps(xp_));                                                  \
        p_ = _mm256_fmadd_ps(w_[1], _mm256_loadu_ps(xp_ + 8), p_);                                               \
        p_ = _mm256_fmadd_ps(w_[2], _mm256_loadu_ps(xp_ + 16), p_);                                              \
        p_ = _mm256_fmadd_ps(w_[3], _mm256_loadu_ps(xp_ + 24), p_);                                              \
        (acc) = _mm256_fmadd_ps(p_, s_, (acc));                                                                  \
    } while (0)
#define GROUPS(m) ((m)->cols / 32)
#define FINISH(m, r, x, acc) hsum8(acc)

// ---- int4, group 32 ----
#define LOADROW(m, r, g)                                                                                         \
    GROUP_HEAD(m, r, g, 4)                                                                                       \
    {                                                                                                            \
        __m128i lo_, hi_;                                                                                        \
        int4_unpack(m, r, g_, &lo_, &hi_);                                                                       \
        widen16(lo_, w_);                                                                                        \
        widen16(hi_, w_ + 2);                                                                                    \
    }
#define PREFIX q4
#define KERNEL moe_gemm_q4_avx2
#include "tiles.h"

// ---- int8, group 32 ----
#define LOADROW(m, r, g)                                                                                         \
    GROUP_HEAD(m, r, g, 4)                                                                                       \
    {                                                                                                            \
        const int8_t *q_ = (const int8_t *)(m)->data + (r) * (m)->cols + 32 * g_;                                \
        widen16(_mm_loadu_si128((const __m128i *)q_), w_);                                                       \
        widen16(_mm_loadu_si128((const __m128i *)(q_ + 16)), w_ + 2);                                            \
    }
#define PREFIX q8
#define KERNEL moe_gemm_q8_avx2
#include "tiles.h"
#undef STEP
#undef GROUPS
#undef FINISH

// ---- dense encodings, bf16 and f32 (attention's cached latent rows): acc += w·x per 8 values, then the
// encoding's scalar tail for cols % 8. Each sets ELEM (its stored type), LOADW (8 weights at a pointer as fp32)
// and TAIL (`bf16_tail`, `f32_tail`).
TARGET static inline __attribute__((always_inline)) __m256 bf16_load8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#define GROUPS(m) ((m)->cols / 8)
#define DENSE_LOADROW(m, r, g)                                                                                   \
    const int64_t g_ = (g);                                                                                      \
    const __m256 w8_ = LOADW((const ELEM *)(m)->data + (r) * (m)->cols + 8 * g_);
#define STEP(m, r, g, x, acc) (acc) = _mm256_fmadd_ps(w8_, _mm256_loadu_ps((x) + 8 * g_), (acc))
#define FINISH(m, r, x, acc) TAIL(m, r, x, (m)->cols & ~(int64_t)7, hsum8(acc))

#define ELEM uint16_t
#define LOADW bf16_load8
#define TAIL bf16_tail
#define LOADROW(m, r, g) DENSE_LOADROW(m, r, g)
#define PREFIX bf
#define KERNEL moe_gemm_bf16_avx2
#include "tiles.h"

// ---- bf16 for four or more tokens: a 3-row × 4-token tile with each activation vector loaded once for the
// three rows (the generic tile reloads it per row). Same per-(row, token) operations as the tiles above.
TARGET static void bf16_tile_3x4(const moe_matrix *m, int64_t r, const float *x, int64_t t, float *y) {
    const int64_t cols = m->cols, groups = cols / 8;
    const uint16_t *w0 = (const uint16_t *)m->data + r * cols, *w1 = w0 + cols, *w2 = w1 + cols;
    const float *x0 = x + t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
           a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    for (int64_t g = 0; g < groups; g++) {
        const __m256 v0 = bf16_load8(w0 + 8 * g), v1 = bf16_load8(w1 + 8 * g), v2 = bf16_load8(w2 + 8 * g);
        __m256 xv = _mm256_loadu_ps(x0 + 8 * g);
        a00 = _mm256_fmadd_ps(v0, xv, a00); a10 = _mm256_fmadd_ps(v1, xv, a10); a20 = _mm256_fmadd_ps(v2, xv, a20);
        xv = _mm256_loadu_ps(x1 + 8 * g);
        a01 = _mm256_fmadd_ps(v0, xv, a01); a11 = _mm256_fmadd_ps(v1, xv, a11); a21 = _mm256_fmadd_ps(v2, xv, a21);
        xv = _mm256_loadu_ps(x2 + 8 * g);
        a02 = _mm256_fmadd_ps(v0, xv, a02); a12 = _mm256_fmadd_ps(v1, xv, a12); a22 = _mm256_fmadd_ps(v2, xv, a22);
        xv = _mm256_loadu_ps(x3 + 8 * g);
        a03 = _mm256_fmadd_ps(v0, xv, a03); a13 = _mm256_fmadd_ps(v1, xv, a13); a23 = _mm256_fmadd_ps(v2, xv, a23);
    }
    const int64_t R = m->rows;
    y[t * R + r] = FINISH(m, r, x0, a00);           y[(t + 1) * R + r] = FINISH(m, r, x1, a01);
    y[(t + 2) * R + r] = FINISH(m, r, x2, a02);     y[(t + 3) * R + r] = FINISH(m, r, x3, a03);
    y[t * R + r + 1] = FINISH(m, r + 1, x0, a10);   y[(t + 1) * R + r + 1] = FINISH(m, r + 1, x1, a11);
    y[(t + 2) * R + r + 1] = FINISH(m, r + 1, x2, a12); y[(t + 3) * R + r + 1] = FINISH(m, r + 1, x3, a13);
    y[t * R + r + 2] = FINISH(m, r + 2, x0, a20);   y[(t + 1) * R + r + 2] = FINISH(m, r + 2, x1, a21);
    y[(t + 2) * R + r + 2] = FINISH(m, r + 2, x2, a22); y[(t + 3) * R + r + 2] = FINISH(m, r + 2, x3, a23);
}

/// Blocks of four tokens through the 3 × 4 tile (remaining rows through the generic 1 × 4 tile), the rest as
/// `moe_gemm_bf16_avx2` does; rows in cache blocks as the generic kernel takes them.
TARGET void moe_gemm_bf16_avx2_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
    BLOCKED_BF16_BODY(3, bf16_tile_3x4, moe_gemm_bf16_avx2)
}

#undef ELEM
#undef LOADW
#undef TAIL
#define ELEM float
#define LOADW _mm256_loadu_ps
#define TAIL f32_tail
#define LOADROW(m, r, g) DENSE_LOADROW(m, r, g)
#define PREFIX f32
#define KERNEL moe_gemm_f32_avx2
#include "tiles.h"

int moe_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

int moe_kernels_compiled_x86(void) { return 1; }

#else  // not x86-64: the Swift generic twins run (and compile to NEON on arm64).
int moe_cpu_has_avx2(void) { return 0; }
int moe_kernels_compiled_x86(void) { return 0; }
void moe_gemm_q4_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_bf16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_bf16_avx2_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
void moe_gemm_f32_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
#endif
