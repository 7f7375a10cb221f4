// The core's arithmetic peak, measured: register-only loops of the instructions the kernels are built from, with
// enough independent chains to hide their latency. `moestream bench kernels` prints each kernel's share of these.
// Nothing here touches memory, so the figure is the arithmetic limit of one core at the clock it runs now.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define CHAINS 12

// `iterations` rounds of STEP over CHAINS independent accumulators of type T (made by INIT(i)), kept in registers
// (the empty asm with constraint C stops the compiler from folding rounds together).
#define PEAK_LOOP(T, C, INIT, STEP)                                                                              \
    T acc[CHAINS];                                                                                               \
    for (int i = 0; i < CHAINS; i++) acc[i] = INIT(i);                                                           \
    for (int64_t n = 0; n < iterations; n++) {                                                                   \
        for (int i = 0; i < CHAINS; i++) acc[i] = STEP(acc[i]);                                                  \
        __asm__ volatile("" : C(acc[0]), C(acc[1]), C(acc[2]), C(acc[3]), C(acc[4]), C(acc[5]), C(acc[6]),       \
                         C(acc[7]), C(acc[8]), C(acc[9]), C(acc[10]), C(acc[11]));                               \
    }

// fp32 FMA chains: acc = acc·a + b with a just under 1, then the chains summed (SUM: the vector's sum as a double).
// SET1 and FMADD name the ISA's broadcast and fused multiply-add where it is instantiated.
#define PEAK_FMA(NAME, TARGET, T, C, ADD, SUM)                                                                   \
    __attribute__((target(TARGET))) double NAME(int64_t iterations) {                                            \
        const T a = SET1(0.999999f), b = SET1(1e-7f);                                                            \
        PEAK_LOOP(T, C, PEAK_FMA_INIT, PEAK_FMA_STEP)                                                            \
        T s = acc[0];                                                                                            \
        for (int i = 1; i < CHAINS; i++) s = ADD(s, acc[i]);                                                     \
        return SUM(s);                                                                                           \
    }
#define PEAK_FMA_INIT(i) SET1((float)(i) * 1e-3f)
#define PEAK_FMA_STEP(v) FMADD((v), a, b)

__attribute__((target("avx2"))) static inline double sum8(__m256 v) {
    float out[8];
    _mm256_storeu_ps(out, v);
    return out[0];
}

#define SET1 _mm256_set1_ps
#define FMADD _mm256_fmadd_ps
PEAK_FMA(moe_peak_fma_avx2, "avx2,fma", __m256, "+x", _mm256_add_ps, sum8)
#undef SET1
#undef FMADD
#define SET1 _mm512_set1_ps
#define FMADD _mm512_fmadd_ps
PEAK_FMA(moe_peak_fma_avx512, "avx512f", __m512, "+v", _mm512_add_ps, _mm512_reduce_add_ps)
#undef SET1
#undef FMADD

// int8 dot products on AVX2 at their cheapest: maddubs (u8 × s8, pairs summed to s16) accumulated with paddw,
// 32 multiply-adds per two instructions. (The interleaved q8 tiles do this, with a madd to s32 per eight.) The
// maddubs takes the chain as its unsigned operand: with constant operands the compiler hoists it out of the loop
// and the loop measures paddw alone (what this probe did until 2026-12-01: ~450 GOP/s on the Xeon, 1.5–2× the
// real figure).
__attribute__((target("avx2")))
double moe_peak_dot8_avx2(int64_t iterations) {
    const __m256i s = _mm256_set1_epi8(-2);
#define INIT(i) _mm256_set1_epi32(i)
#define STEP(v) _mm256_add_epi16((v), _mm256_maddubs_epi16((v), s))
    PEAK_LOOP(__m256i, "+x", INIT, STEP)
#undef INIT
#undef STEP
    __m256i t = acc[0];
    for (int i = 1; i < CHAINS; i++) t = _mm256_add_epi32(t, acc[i]);
    return (double)_mm256_extract_epi32(t, 0);
}

// AVX-512 VNNI: vpdpbusd, 64 multiply-adds per instruction.
__attribute__((target("avx512f,avx512vnni")))
double moe_peak_dot8_avx512vnni(int64_t iterations) {
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-2);
#define INIT(i) _mm512_set1_epi32(i)
#define STEP(v) _mm512_dpbusd_epi32((v), u, s)
    PEAK_LOOP(__m512i, "+v", INIT, STEP)
#undef INIT
#undef STEP
    return (double)_mm512_reduce_add_epi32(acc[0]);
}

#else
double moe_peak_fma_avx2(int64_t iterations) { (void)iterations; return 0; }
double moe_peak_fma_avx512(int64_t iterations) { (void)iterations; return 0; }
double moe_peak_dot8_avx2(int64_t iterations) { (void)iterations; return 0; }
double moe_peak_dot8_avx512vnni(int64_t iterations) { (void)iterations; return 0; }
#endif
