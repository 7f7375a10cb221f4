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
// Decode streams each weight once: 2 KB (128 groups of 8 bf16) ahead, one 64-byte line every 4 groups.
#define PREFETCH_EVERY 4
#define PREFETCH_ROW(m, r, g) _mm_prefetch((const char *)((const uint16_t *)(m)->data + (r) * (m)->cols + 8 * ((g) + 128)), _MM_HINT_T0)
#include "tiles.h"
#undef PREFETCH_ROW
#undef PREFETCH_EVERY

// ---- bf16 for four or more tokens: a 3-row × 4-token tile with each activation vector loaded once for the
// three rows (the generic tile reloads it per row), blocked for the caches as on AVX-512 (kernels_avx512.c): rows
// in ~512 KB blocks, columns in spans of 1024 whose activations stay in L1, the 12 accumulators parked between
// spans. Same per-(row, token) operations as the tiles above.
TARGET static inline __attribute__((always_inline)) void bf16_tile_3x4_span(const moe_matrix *m, int64_t r, const float *x,
                                                                        int64_t t, int64_t g0, int64_t g1, __m256 *park) {
    const int64_t cols = m->cols;
    const uint16_t *w = (const uint16_t *)m->data + r * cols;
    const float *xt = x + t * cols;
    __m256 acc[3][4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = park[4 * i + j];
    for (int64_t g = g0; g < g1; g++) {
        __m256 v[3];
        for (int i = 0; i < 3; i++) v[i] = bf16_load8(w + i * cols + 8 * g);
        for (int j = 0; j < 4; j++) {
            const __m256 xv = _mm256_loadu_ps(xt + j * cols + 8 * g);
            for (int i = 0; i < 3; i++) acc[i][j] = _mm256_fmadd_ps(v[i], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) park[4 * i + j] = acc[i][j];
}

/// Blocks of four tokens through the 3 × 4 tile (rows left over in a block through the generic 1 × 4 tile), the
/// tokens left over as `moe_gemm_bf16_avx2` does them.
TARGET void moe_gemm_bf16_avx2_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
    SPANNED_BF16_BODY(3, 8, 128, __m256, _mm256_setzero_ps, bf16_tile_3x4_span, moe_gemm_bf16_avx2)
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

// ---- f16 (a KV cache stored in half precision): F16C widens 8 halves at a time.
TARGET static inline __attribute__((always_inline)) __m256 f16_load8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
#undef ELEM
#undef LOADW
#undef TAIL
#define ELEM uint16_t
#define LOADW f16_load8
#define TAIL f16_tail
#define LOADROW(m, r, g) DENSE_LOADROW(m, r, g)
#define PREFIX f16
#define KERNEL moe_gemm_f16_avx2
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
void moe_gemm_f16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {}
#endif
