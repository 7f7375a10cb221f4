// What every instruction set's kernel file shares: scale and bf16 widening, the int4 nibble unpacking (SSE2,
// the x86-64 baseline), the scalar bf16 tail, and the head of a group step. Internal to CMoEKernels.
#ifndef CMOEKERNELS_COMMON_H
#define CMOEKERNELS_COMMON_H
#include "CMoEKernels.h"
#include <string.h>
#include <immintrin.h>

static inline float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/// Scale `index` of a group-32 matrix (bf16 or fp32).
static inline float group_scale(const moe_matrix *m, int64_t index) {
    return m->scales_bf16 ? bf16_value(((const uint16_t *)m->scales)[index]) : ((const float *)m->scales)[index];
}

/// The 16 bytes of int4 group `g` of row `r` as signed values: `lo` = elements 0-15, `hi` = elements 16-31.
static inline void int4_unpack(const moe_matrix *m, int64_t r, int64_t g, __m128i *lo, __m128i *hi) {
    const __m128i b = _mm_loadu_si128((const __m128i *)((const uint8_t *)m->data + r * (m->cols / 2) + 16 * g));
    *lo = _mm_sub_epi8(_mm_and_si128(b, _mm_set1_epi8(0x0F)), _mm_set1_epi8(8));
    *hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F)), _mm_set1_epi8(8));
}

/// `s + Σ w[c]·x[c]` for c in [from, cols) of bf16 row `r`, one fused multiply-add at a time.
static inline float bf16_tail(const moe_matrix *m, int64_t r, const float *x, int64_t from, float s) {
    const uint16_t *w = (const uint16_t *)m->data + r * m->cols;
    for (int64_t c = from; c < m->cols; c++) s = __builtin_fmaf(bf16_value(w[c]), x[c], s);
    return s;
}

/// Starts a group step of row `r`: `w_` (NW vectors, filled by the caller), `g_`, and the broadcast scale `s_`.
/// Needs VEC, VSET1 and GROUPS from the ISA file.
#define GROUP_HEAD(m, r, g, NW)                                                                                  \
    VEC w_[NW];                                                                                                  \
    const int64_t g_ = (g);                                                                                      \
    const VEC s_ = VSET1(group_scale(m, (r) * GROUPS(m) + g_));

#endif
