// Activations → int8 per block (`Q8Activations.quantise`): d = max|x|/127, q = round(x/d) half away from zero,
// Σq per 16 values. The same fp32 operations as the Swift twin in the same order (a division, a reciprocal, one
// multiply per value, then the rounding), so both give the same bytes. x86 has no rounding instruction for half
// away from zero and Swift's baseline target none for truncation, so the twin pays a libm call per value; here
// it is t = trunc(p) and t ± 1 where |p − t| ≥ 0.5 (p − t is exact).
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))

/// 8 values p rounded half away from zero, as int32.
TARGET static inline __m256i round_away(__m256 p) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 far = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(p, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 step = _mm256_and_ps(far, _mm256_or_ps(_mm256_and_ps(p, sign), _mm256_set1_ps(1.0f)));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

TARGET void moe_quantise_q8_avx2(const float *x, int64_t count, int32_t block, int8_t *q, float *d, int16_t *sums16) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < count / block; b++) {
        const float *v = x + b * block;
        __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int i = 0; i < block; i += 8) {
            const __m256 a = _mm256_loadu_ps(v + i);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, a));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        int16_t *s = sums16 + b * (block / 16);
        int8_t *out = q + b * block;
        if (_mm256_movemask_ps(nan) != 0 || amax > 3.4028234663852886e38f) {  // NaN or ±inf: d NaN, q 0
            d[b] = __builtin_nanf("");
            memset(out, 0, (size_t)block);
            for (int i = 0; i < block / 16; i++) s[i] = 0;
            continue;
        }
        const float scale = amax / 127;
        const float inverse = scale > 0 ? 1 / scale : 0;
        const __m256 iv = _mm256_set1_ps(inverse);
        for (int i = 0; i < block; i += 16) {
            const __m256i lo = round_away(_mm256_mul_ps(_mm256_loadu_ps(v + i), iv));
            const __m256i hi = round_away(_mm256_mul_ps(_mm256_loadu_ps(v + i + 8), iv));
            // int32 → int16 (packs interleaves the 128-bit lanes; the permute puts them back in order) → int8.
            const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
            _mm_storeu_si128((__m128i *)(out + i), _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
            s[i / 16] = (int16_t)hsum8_i32(_mm256_madd_epi16(w, _mm256_set1_epi16(1)));
        }
        d[b] = scale;
    }
}

#else
void moe_quantise_q8_avx2(const float *x, int64_t count, int32_t block, int8_t *q, float *d, int16_t *sums16) {}
#endif
