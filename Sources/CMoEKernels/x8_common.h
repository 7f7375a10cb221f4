// What the kernels of the two row-interleaved layouts share (kernels_x8.c: int4, kernels_i8x8.c: int8): target
// attributes, the rows' scales of a group, a broadcastable word of four int8 activations, the loops that walk
// row blocks and token tiles with constant tile sizes, and the fp32 tiles' reduction of four partial sums. Internal to CMoEKernels.
#ifndef CMOEKERNELS_X8_COMMON_H
#define CMOEKERNELS_X8_COMMON_H
#include "common.h"

#define T2 __attribute__((target("avx2,fma,f16c")))
#define T5 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define T5V __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/// The 8 scales of group g of row block b as fp32 (both interleaved layouts index them alike).
T2 INLINE __m256 x8_scales(const moe_matrix *m, int64_t b, int64_t g) {
    const int64_t i = (b * (m->cols / 32) + g) * 8;
    if (m->scales_bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)m->scales + i))), 16));
    return _mm256_loadu_ps((const float *)m->scales + i);
}

/// Four int8 activations as one int32 (to broadcast).
INLINE int32_t four(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/// Calls TILE(…, n, …) with n a constant 1…MAX (so each instantiation keeps its accumulators in registers).
#define BY_COUNT8(TILE, n, ...)                                                                                  \
    switch (n) {                                                                                                 \
    case 1: TILE(__VA_ARGS__, 1); break;                                                                         \
    case 2: TILE(__VA_ARGS__, 2); break;                                                                         \
    case 3: TILE(__VA_ARGS__, 3); break;                                                                         \
    case 4: TILE(__VA_ARGS__, 4); break;                                                                         \
    case 5: TILE(__VA_ARGS__, 5); break;                                                                         \
    case 6: TILE(__VA_ARGS__, 6); break;                                                                         \
    case 7: TILE(__VA_ARGS__, 7); break;                                                                         \
    default: TILE(__VA_ARGS__, 8); break;                                                                        \
    }
#define BY_COUNT4(TILE, n, ...)                                                                                  \
    switch (n) {                                                                                                 \
    case 1: TILE(__VA_ARGS__, 1); break;                                                                         \
    case 2: TILE(__VA_ARGS__, 2); break;                                                                         \
    case 3: TILE(__VA_ARGS__, 3); break;                                                                         \
    default: TILE(__VA_ARGS__, 4); break;                                                                        \
    }

/// Walks rows [r0, r1) in cache blocks of RB rows (every row at once when T ≤ NT) and tokens in tiles of up to NT: ROWTILE(b, t, n) for each tile of
/// STEP rows starting at row block b (STEP 16 where TAIL8 covers an odd last block of 8).
#define X8_LOOP_RB(RB, NT, STEP, ROWTILE, TAIL8)                                                                        \
    const int64_t rb_ = T > (NT) ? (RB) : r1 - r0;                                                    \
    for (int64_t c0 = r0; c0 < r1; c0 += rb_) {                                                                  \
        const int64_t c1 = c0 + rb_ < r1 ? c0 + rb_ : r1;                                                        \
        for (int64_t t = 0; t < T; t += (NT)) {                                                                  \
            const int64_t n = T - t < (NT) ? T - t : (NT);                                                       \
            int64_t r = c0;                                                                                      \
            for (; r + (STEP) <= c1; r += (STEP)) ROWTILE(r / 8, t, n);                                          \
            for (; r < c1; r += 8) TAIL8(r / 8, t, n);                                                           \
        }                                                                                                        \
    }

/// Unit bytes of two row blocks (32 at `lo`: rows 8b..8b+7, 32 at `hi`: the next 8) as one vector of 16 rows.
T5 INLINE __m512i x8_join16(const uint8_t *lo, const uint8_t *hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                              _mm256_loadu_si256((const __m256i *)hi), 1);
}

/// The 16 scales of group g of row blocks b and b + 1 as fp32.
T5 INLINE __m512 x8_scales16(const moe_matrix *m, int64_t b, int64_t g) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(x8_scales(m, b, g))),
                                               _mm256_castps_pd(x8_scales(m, b + 1, g)), 1));
}

/// The end of a group in the two-part VNNI tiles (PFX `_mm256` or `_mm512`, VI/VF its vectors): per token the
/// exact integer A = (a1 << 8) + a2, then f = fma(float(A), scale·(d/256), f) with the rows' scales WS.
#define Q16_FINISH_GROUP(PFX, VI, VF, WS)                                                                            {                                                                                                                    const VF ws_ = (WS);                                                                                             for (int j = 0; j < NT; j++) {                                                                                       const VI a_ = PFX##_add_epi32(PFX##_slli_epi32(a1[j], 8), a2[j]);                                                f[j] = PFX##_fmadd_ps(PFX##_cvtepi32_ps(a_), PFX##_mul_ps(ws_, PFX##_set1_ps(x->d[(t + j) * G + g] * 0x1p-8f)), f[j]);         }                                                                                                            }

/// Four partial sums per row reduced as (a0 + a1) + (a2 + a3), in each 128-bit lane (lane 0 of each holds it).
#define REDUCE4_256(v) ({ __m256 v_ = (v); v_ = _mm256_add_ps(v_, _mm256_permute_ps(v_, 0xB1)); _mm256_add_ps(v_, _mm256_permute_ps(v_, 0x4E)); })
#define REDUCE4_512(v) ({ __m512 v_ = (v); v_ = _mm512_add_ps(v_, _mm512_permute_ps(v_, 0xB1)); _mm512_add_ps(v_, _mm512_permute_ps(v_, 0x4E)); })

/// An fp32 tile's two accumulators of one token, each two rows' four partial sums (AVX2: rows 4h..4h+3), reduced
/// and stored at `yr` (row 4h's result).
T2 INLINE void x8_store4_avx2(__m256 a, __m256 b, float *yr) {
    float out[16];
    _mm256_storeu_ps(out, REDUCE4_256(a));
    _mm256_storeu_ps(out + 8, REDUCE4_256(b));
    yr[0] = out[0], yr[1] = out[4], yr[2] = out[8], yr[3] = out[12];
}

/// The same for AVX-512: each accumulator four rows' four partial sums, eight rows stored at `yr`.
T5 INLINE void x8_store8_avx512(__m512 a, __m512 b, float *yr) {
    float out[32];
    _mm512_storeu_ps(out, REDUCE4_512(a));
    _mm512_storeu_ps(out + 16, REDUCE4_512(b));
    for (int i = 0; i < 8; i++) yr[i] = out[4 * i];
}

#endif
