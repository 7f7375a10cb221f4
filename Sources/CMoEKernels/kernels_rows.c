// Weighted sums of matrix rows, for a block of tokens: y[t, c] += Σ_j a[t, j] · W[j, c] (the transposed product
// Wᵀa). Attention needs two: W_kᵀ · q_nope (a head's key rows of kv_b, bf16) and the context Σ_j p_j · c_j over
// the cached latent rows (fp32, f16 or bf16, as `--kv-cache` stores them). Each y[t, c] is one chain y = fma(a[t, j], W[j, c], y) over j ascending, whatever
// the tile, the token count or the ISA, so a token's result does not depend on its neighbours (the Swift twin,
// `WeightMatrix.accumulateRows`, does the same chain).
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define T2 __attribute__((target("avx2,fma,f16c")))
#define T5 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

T2 INLINE __m256 load8_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
T2 INLINE __m256 load8_bf16(const void *w, int64_t i) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
}
T5 INLINE __m512 load16_f32(const void *w, int64_t i) { return _mm512_loadu_ps((const float *)w + i); }
T5 INLINE __m512 load16_bf16(const void *w, int64_t i) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))), 16));
}
T2 INLINE __m256 load8_f16(const void *w, int64_t i) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))); }
T5 INLINE __m512 load16_f16(const void *w, int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
}
INLINE float elem_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }
INLINE float elem_f16(const void *w, int64_t i) { return f16_value(((const uint16_t *)w)[i]); }
INLINE float elem_bf16(const void *w, int64_t i) { return bf16_value(((const uint16_t *)w)[i]); }

// NAME: tiles of V vectors of L lanes (V·L columns, weights read by LOAD) × NT tokens, their sums in registers
// while j walks the rows; tokens left over one at a time, columns left over by ELEM in scalar fmas.
#define ROWS_KERNEL(NAME, TARGET, VEC, L, V, NT, LOAD, ELEM, VLOADY, VSTOREY, VSET1, VFMA)                       \
    TARGET void NAME(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride,   \
                     int64_t T, float *y, int64_t y_stride) {                                                    \
        const int64_t vc = cols - cols % ((V) * (L));                                                            \
        for (int64_t c = 0; c < vc; c += (V) * (L)) {                                                            \
            int64_t t = 0;                                                                                       \
            for (; t + (NT) <= T; t += (NT)) {                                                                   \
                VEC acc[NT][V];                                                                                  \
                for (int k = 0; k < (NT); k++)                                                                   \
                    for (int v = 0; v < (V); v++) acc[k][v] = VLOADY(y + (t + k) * y_stride + c + v * (L));      \
                for (int64_t j = 0; j < n; j++) {                                                                \
                    VEC wv[V];                                                                                   \
                    for (int v = 0; v < (V); v++) wv[v] = LOAD(w, j * stride + c + v * (L));                     \
                    for (int k = 0; k < (NT); k++) {                                                             \
                        const VEC s = VSET1(a[(t + k) * a_stride + j]);                                          \
                        for (int v = 0; v < (V); v++) acc[k][v] = VFMA(s, wv[v], acc[k][v]);                     \
                    }                                                                                            \
                }                                                                                                \
                for (int k = 0; k < (NT); k++)                                                                   \
                    for (int v = 0; v < (V); v++) VSTOREY(y + (t + k) * y_stride + c + v * (L), acc[k][v]);      \
            }                                                                                                    \
            for (; t < T; t++) {                                                                                 \
                VEC acc[V];                                                                                      \
                for (int v = 0; v < (V); v++) acc[v] = VLOADY(y + t * y_stride + c + v * (L));                   \
                for (int64_t j = 0; j < n; j++) {                                                                \
                    const VEC s = VSET1(a[t * a_stride + j]);                                                    \
                    for (int v = 0; v < (V); v++) acc[v] = VFMA(s, LOAD(w, j * stride + c + v * (L)), acc[v]);   \
                }                                                                                                \
                for (int v = 0; v < (V); v++) VSTOREY(y + t * y_stride + c + v * (L), acc[v]);                  \
            }                                                                                                    \
        }                                                                                                        \
        for (int64_t t = 0; t < T; t++)                                                                          \
            for (int64_t c = vc; c < cols; c++) {                                                                \
                float s = y[t * y_stride + c];                                                                   \
                for (int64_t j = 0; j < n; j++) s = __builtin_fmaf(a[t * a_stride + j], ELEM(w, j * stride + c), s); \
                y[t * y_stride + c] = s;                                                                         \
            }                                                                                                    \
    }

ROWS_KERNEL(moe_rows_f32_avx2, T2, __m256, 8, 2, 4, load8_f32, elem_f32, _mm256_loadu_ps, _mm256_storeu_ps,
            _mm256_set1_ps, _mm256_fmadd_ps)
ROWS_KERNEL(moe_rows_bf16_avx2, T2, __m256, 8, 2, 4, load8_bf16, elem_bf16, _mm256_loadu_ps, _mm256_storeu_ps,
            _mm256_set1_ps, _mm256_fmadd_ps)
ROWS_KERNEL(moe_rows_f32_avx512, T5, __m512, 16, 4, 4, load16_f32, elem_f32, _mm512_loadu_ps, _mm512_storeu_ps,
            _mm512_set1_ps, _mm512_fmadd_ps)
ROWS_KERNEL(moe_rows_bf16_avx512, T5, __m512, 16, 4, 4, load16_bf16, elem_bf16, _mm512_loadu_ps, _mm512_storeu_ps,
            _mm512_set1_ps, _mm512_fmadd_ps)
ROWS_KERNEL(moe_rows_f16_avx2, T2, __m256, 8, 2, 4, load8_f16, elem_f16, _mm256_loadu_ps, _mm256_storeu_ps,
            _mm256_set1_ps, _mm256_fmadd_ps)
ROWS_KERNEL(moe_rows_f16_avx512, T5, __m512, 16, 4, 4, load16_f16, elem_f16, _mm512_loadu_ps, _mm512_storeu_ps,
            _mm512_set1_ps, _mm512_fmadd_ps)

/// Halves to fp32, exactly (F16C, 8 at a time; the tail through `f16_value`).
T2 void moe_widen_f16_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = f16_value(src[i]);
}

#else
void moe_widen_f16_avx2(const uint16_t *src, float *dst, int64_t n) {}
void moe_rows_f32_avx2(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride) {}
void moe_rows_bf16_avx2(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride) {}
void moe_rows_f32_avx512(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride) {}
void moe_rows_bf16_avx512(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride) {}
void moe_rows_f16_avx2(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride) {}
void moe_rows_f16_avx512(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride) {}
#endif
