// GGML block rows (the types K-quant GGUF files use) × Q8 activations: integer dot products straight from the
// blocks, no fp32 decode. The body (ggml_q8_body.h) is compiled twice: AVX2 (maddubs) and AVX-512 VNNI
// (vpdpbusd); their integer products are equal, so the two agree bit for bit with each other and with the Swift
// twin (`WeightMatrix.gemmQ8`). Where the CPU has AMX-INT8, many tokens of the K-quants go on tiles instead
// (ggml_q8_amx.h), with the same bits. The block layouts are gguf-py's (GGMLDequantize.swift lists them).
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define T2 __attribute__((target("avx2,fma,f16c")))

/// Bytes of a row of `cols` values of `type` (cols a whole number of blocks: the caller checked).
static inline int64_t ggml_row_bytes(int32_t type, int64_t cols) {
    switch (type) {
    case MOE_GGML_Q4_0: return cols / 32 * 18;
    case MOE_GGML_Q4_1: return cols / 32 * 20;
    case MOE_GGML_Q5_0: return cols / 32 * 22;
    case MOE_GGML_Q5_1: return cols / 32 * 24;
    case MOE_GGML_Q8_0: return cols / 32 * 34;
    case MOE_GGML_Q2_K: return cols / 256 * 84;
    case MOE_GGML_Q3_K: return cols / 256 * 110;
    case MOE_GGML_Q4_K: return cols / 256 * 144;
    case MOE_GGML_Q5_K: return cols / 256 * 176;
    case MOE_GGML_Q6_K: return cols / 256 * 210;
    case MOE_GGML_IQ2_XXS: return cols / 256 * 66;
    case MOE_GGML_IQ2_XS: return cols / 256 * 74;
    case MOE_GGML_IQ1_S: return cols / 256 * 50;
    case MOE_GGML_IQ3_XXS: return cols / 256 * 98;
    case MOE_GGML_IQ4_NL: return cols / 32 * 18;
    case MOE_GGML_IQ4_XS: return cols / 256 * 136;
    case MOE_GGML_IQ3_S: return cols / 256 * 110;
    case MOE_GGML_IQ2_S: return cols / 256 * 82;
    case MOE_GGML_IQ1_M: return cols / 256 * 56;
    case MOE_GGML_TQ1_0: return cols / 256 * 54;
    case MOE_GGML_TQ2_0: return cols / 256 * 66;
    default: return 0;
    }
}

/// Tokens a span of the many-token K-quant loop takes (their accumulators parked on the stack: 2 KB).
enum { KQ_SPAN = 64 };

/// Whether `type` takes the K-quant form (super-blocks of 256, activations per 256): the K-quants, the i-quants
/// but IQ4_NL, and the ternary types.
static inline int ggml_is_k_quant(int32_t type) {
    switch (type) {
    case MOE_GGML_Q2_K: case MOE_GGML_Q3_K: case MOE_GGML_Q4_K: case MOE_GGML_Q5_K: case MOE_GGML_Q6_K:
    case MOE_GGML_IQ2_XXS: case MOE_GGML_IQ2_XS: case MOE_GGML_IQ2_S: case MOE_GGML_IQ3_XXS: case MOE_GGML_IQ3_S:
    case MOE_GGML_IQ1_S: case MOE_GGML_IQ1_M: case MOE_GGML_IQ4_XS: case MOE_GGML_TQ1_0: case MOE_GGML_TQ2_0: return 1;
    default: return 0;
    }
}

/// Whether a K-form type's values are signed bytes w (IQ4_XS: the IQ4_NL table, −127…113), multiplied as
/// |w| · (q · sign w), not unsigned bytes u with an offset: w + 128 would not fit maddubs's unsigned operand
/// (≤ 128 keeps its pairs from saturating).
static inline int ggml_is_signed_k(int32_t type) { return type == MOE_GGML_IQ4_XS; }

/// IQ4_NL's and IQ4_XS's 16 values (ggml's kvalues_iq4nl), what a 4-bit index stands for.
static const int8_t iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/// Whether `type`'s offsets are minimums with their own float (Q2_K, Q4_K, Q5_K), not a bias that makes the
/// values unsigned (see the K-quant section of ggml_q8_body.h).
static inline int ggml_has_mins(int32_t type) {
    return type == MOE_GGML_Q2_K || type == MOE_GGML_Q4_K || type == MOE_GGML_Q5_K;
}

/// The little-endian fp16 at p, exactly.
static inline float ggml_half(const uint8_t *p) { return f16_value((uint16_t)(p[0] | p[1] << 8)); }

/// 16 bytes of nibbles as 32 values: low nibbles are values 0-15, high nibbles 16-31.
T2 static inline __m256i nibbles_32(const uint8_t *p) {
    const __m128i b = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
}

/// The 32 bits of `bits` as 32 bytes: 0xFF where bit i is set.
T2 static inline __m256i bits_32v(uint32_t bits) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

/// The 32 bits at p (little-endian) as 32 bytes: 0xFF where bit i is set.
T2 static inline __m256i bits_32(const uint8_t *p) {
    uint32_t bits;
    memcpy(&bits, p, 4);
    return bits_32v(bits);
}

/// Q3_K's 16 six-bit scales less 32: low nibbles in bytes 0-7 (value i: byte i % 8, nibble i / 8), high pairs in
/// bytes 8-11 (value i: byte 8 + i % 4, bits 2·(i / 4)).
static inline void q3_K_scales(const uint8_t *s, int16_t *out) {
    for (int i = 0; i < 16; i++)
        out[i] = (int16_t)((((s[i % 8] >> (4 * (i / 8))) & 0x0F) | (((s[8 + i % 4] >> (2 * (i / 4))) & 3) << 4)) - 32);
}

/// Q4_K/Q5_K's 12 scale bytes: 8 six-bit scales and 8 six-bit minimums (ggml's get_scale_min_k4).
static inline void k4_scales(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (uint8_t)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        mn[j] = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

#define TARGET T2
#define SUFFIX avx2
#define DOT_ONES(u, q) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (q)), _mm256_set1_epi16(1))
#define IACC __m256i
#define IZERO() _mm256_setzero_si256()
#define IREDUCE(v) (v)
typedef struct { __m256i lo, hi; } pair_avx2;
#define PAIR_T pair_avx2
#define MAKE_PAIR(a, b) ((pair_avx2){(a), (b)})
#define PAIR_ABS(p) ((pair_avx2){_mm256_abs_epi8((p).lo), _mm256_abs_epi8((p).hi)})
#define GROUP_PAIR_SIGNED(I, u, w, s, q)                                                                         \
    do {                                                                                                         \
        const int8_t *q_ = (q);                                                                                  \
        (I) = _mm256_add_epi32((I), _mm256_madd_epi16(_mm256_maddubs_epi16((u).lo, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q_), (w).lo)), (s).lo)); \
        (I) = _mm256_add_epi32((I), _mm256_madd_epi16(_mm256_maddubs_epi16((u).hi, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q_ + 32)), (w).hi)), (s).hi)); \
    } while (0)
#define GROUP_PAIR(I, u, s, q)                                                                                   \
    do {                                                                                                         \
        const int8_t *q_ = (q);                                                                                  \
        (I) = _mm256_add_epi32((I), _mm256_madd_epi16(_mm256_maddubs_epi16((u).lo, _mm256_loadu_si256((const __m256i *)q_)), (s).lo)); \
        (I) = _mm256_add_epi32((I), _mm256_madd_epi16(_mm256_maddubs_epi16((u).hi, _mm256_loadu_si256((const __m256i *)(q_ + 32))), (s).hi)); \
    } while (0)
#include "ggml_q8_body.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define SUFFIX avx512vnni
#define DOT_ONES(u, q) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (q))
#define IACC __m512i
#define IZERO() _mm512_setzero_si512()
#define IREDUCE(v) _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64((v), 1))
#define PAIR_T __m512i
#define MAKE_PAIR(a, b) _mm512_inserti64x4(_mm512_castsi256_si512(a), (b), 1)
#define GROUP_PAIR(I, u, s, q) (I) = _mm512_add_epi32((I), _mm512_madd_epi16(_mm512_maddubs_epi16((u), _mm512_loadu_si512((q))), (s)))
#define PAIR_ABS(p) _mm512_abs_epi8(p)
// AVX-512 has no vpsignb: q is negated under w's sign mask (w is never 0, and q never −128).
#define GROUP_PAIR_SIGNED(I, u, w, s, q)                                                                         \
    do {                                                                                                         \
        const __m512i q_ = _mm512_loadu_si512((q));                                                              \
        const __m512i qs_ = _mm512_mask_sub_epi8(q_, _mm512_movepi8_mask(w), _mm512_setzero_si512(), q_);        \
        (I) = _mm512_add_epi32((I), _mm512_madd_epi16(_mm512_maddubs_epi16((u), qs_), (s)));                     \
    } while (0)
#include "ggml_q8_body.h"

#include "ggml_q8_amx.h"

#else
void moe_gemm_ggml_q8_avx2(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                           float *y) {}
void moe_gemm_ggml_q8_avx512vnni(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x,
                                 int64_t T, float *y) {}
int moe_cpu_has_amx_int8(void) { return 0; }
int moe_ggml_amx_supports(int32_t type) { return 0; }
int moe_gemm_ggml_q8_amx(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                         float *y) { return 0; }
#endif
