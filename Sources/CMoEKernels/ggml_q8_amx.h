// K-quant (and i-quant) rows × Q8 activations on AMX-INT8 tiles (Intel Sapphire Rapids and later): many tokens at once, the
// prompt pass's shape. Included by kernels_ggml_q8.c after its AVX-512 instance, whose decoders (`kblock`) it uses.
//
// A tile product `tdpbusd`/`tdpbssd` multiplies 16 rows × 64 bytes by 64 × 16 tokens of int8 into 16 × 16 int32:
// 16,384 multiply-adds, with no per-row scales inside. The K-quants scale every 16 or 32 values by an integer
// s, and u·s does not fit a byte, so each weight row becomes a few tile rows ("terms") whose bytes do:
//     u·s = Σ_j digit_j(s)·u · 2^shift_j,  digit_j(s)·u a byte
// plus one row of the minimums m (per 16 values) where the type has them, whose product with the activations is
// Σ m·S. Per type (v = u − offset, signed, where the offset only made u unsigned):
//     Q2_K  u·s (≤ 45), m                                    unsigned   8 weight rows a tile
//     Q3_K  v·(−s) (−128…124), result negated                signed    16
//     Q4_K  u·(s & 15), u·(s >> 4) ≪ 4, m                    unsigned   5
//     Q5_K  u·(s & 7), u·(s >> 3) ≪ 3, m                     unsigned   5
//     Q6_K  v·(s & 3), v·(s>>2 & 3) ≪ 2, v·(s>>4 & 3) ≪ 4, v·(s >> 6) ≪ 6   signed   4
//     IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS  u·d_j(s) · 3^j (base-3 digits of 2s' + 1 ≤ 31; u = ±v + 64 ≤ 126), s · (−64)
//                                                             unsigned   3
//     IQ1_S, IQ1_M  u·(s & 7), u·(s >> 3) ≪ 3 (u = 8v ± 1 + 16 ≤ 25), s · (−16)   unsigned   5
//     IQ3_S  u·(s & 7), u·(s >> 3) ≪ 3 (u = ±v + 16 ≤ 31, s ≤ 31), s · (−16)    unsigned   5
//     TQ1_0, TQ2_0  u (0…2, s = 1), s · (−1)                 unsigned   8
// IQ4_NL and IQ4_XS (signed table values up to 127, scales −32…31) have no form here: they stay on the row kernels.
// The i-quants' last row, the scales themselves, takes back the offset that made their values unsigned.
// After the four tile products of a super-block (256 columns) the int32 rows are combined into I and O, the exact
// integers of ggml_q8_body.h's K-quant form, and one float per (row, token) takes the same two fused steps, with
// the 16 tokens in the lanes. So the tiles give the row kernels' bits exactly, and a token's result is the same
// alone, in a batch, or here.
//
// Blocking: tokens in spans whose packed activations (`span` × cols bytes, ≤ 768 KB) stay in L2; per span, rows in
// groups of one tile (5 weight rows for Q4_K); per group and super-block the weights are decoded once into four A
// tiles (one per 64 columns) and multiplied by every token block of the span. A tile product's latency is several
// times its issue interval, so four (or three) accumulator tiles take turns: two row groups × two token blocks, or
// three row groups × one block when the span has one (an expert's few tokens).

#define TAMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

#include <stdlib.h>
#include "amx_common.h"

int moe_cpu_has_amx_int8(void) {
    static int state = -1;
    return amx_ready(&state, 25, moe_cpu_has_avx512vnni());
}

/// How a type's super-block becomes tile rows (see the top of this file).
typedef struct {
    int digits;       // terms of u·s
    int shift[4];     // each term's weight, 2^shift (binary digits)
    int mins;         // a row of minimums follows the terms
    int is_signed;    // v = u − offset, tdpbssd
    int offset;
    int negate;       // the one term is v·(−s)
    int base3;        // the digits are base 3 (weights 1, 3, 9, 27), not shift[]
    int srow;         // a row of the scales s follows, weight −offset (the i-quants' u = ±v + offset)
} amx_form;

/// Tile rows per weight row.
static inline __attribute__((always_inline)) int amx_rows(const amx_form *f) { return f->digits + f->mins + f->srow; }

static inline __attribute__((always_inline)) int amx_form_of(int32_t type, amx_form *f) {
    switch (type) {
    case MOE_GGML_Q2_K: *f = (amx_form){1, {0}, 1, 0, 0, 0}; return 1;
    case MOE_GGML_Q3_K: *f = (amx_form){1, {0}, 0, 1, 4, 1}; return 1;
    case MOE_GGML_Q4_K: *f = (amx_form){2, {0, 4}, 1, 0, 0, 0}; return 1;
    case MOE_GGML_Q5_K: *f = (amx_form){2, {0, 3}, 1, 0, 0, 0}; return 1;
    case MOE_GGML_Q6_K: *f = (amx_form){4, {0, 2, 4, 6}, 0, 1, 32, 0}; return 1;
    case MOE_GGML_IQ2_XXS:
    case MOE_GGML_IQ2_XS:
    case MOE_GGML_IQ3_XXS: *f = (amx_form){4, {0}, 0, 0, 64, 0, 1, 1}; return 1;
    case MOE_GGML_IQ2_S: *f = (amx_form){4, {0}, 0, 0, 64, 0, 1, 1}; return 1;
    case MOE_GGML_IQ1_S:
    case MOE_GGML_IQ1_M:
    case MOE_GGML_IQ3_S: *f = (amx_form){2, {0, 3}, 0, 0, 16, 0, 0, 1}; return 1;
    case MOE_GGML_TQ1_0:
    case MOE_GGML_TQ2_0: *f = (amx_form){1, {0}, 0, 0, 1, 0, 0, 1}; return 1;
    default: return 0;
    }
}

int moe_ggml_amx_supports(int32_t type) {
    amx_form f;
    return amx_form_of(type, &f);
}

/// Digit j of the 16-bit scale lanes s (term j of the form).
TAMX static inline AI __m512i amx_digit(const amx_form *f, int j, __m512i s) {
    if (f->negate) return _mm512_sub_epi16(_mm512_setzero_si512(), s);
    if (f->base3) {  // ⌊x/3⌋ = (171·x) ≫ 9 for 0 ≤ x < 200
        __m512i q = s;
        for (int i = 0; i < j; i++) q = _mm512_srli_epi16(_mm512_mullo_epi16(q, _mm512_set1_epi16(171)), 9);
        if (j == f->digits - 1) return q;
        const __m512i next = _mm512_srli_epi16(_mm512_mullo_epi16(q, _mm512_set1_epi16(171)), 9);
        return _mm512_sub_epi16(q, _mm512_mullo_epi16(next, _mm512_set1_epi16(3)));
    }
    const __m512i shifted = _mm512_sra_epi16(s, _mm_cvtsi32_si128(f->shift[j]));
    if (j == f->digits - 1) return shifted;  // the top digit keeps the sign (Q6_K: −2…1)
    return _mm512_and_si512(shifted, _mm512_set1_epi16((short)((1 << (f->shift[j + 1] - f->shift[j])) - 1)));
}

/// Bytes v times the 16-bit lanes `dig` (each lane covers two bytes), the products being bytes themselves. Unsigned,
/// one 16-bit multiply does both bytes: the low byte's product is below 256, so nothing carries into the high one
/// (which is also how a signed v = u − offset times a digit ≥ 0 is made: u·dig − offset·dig, both carry-free).
TAMX static inline AI __m512i amx_times(__m512i v, __m512i dig, int is_signed) {
    if (!is_signed) return _mm512_mullo_epi16(v, dig);
    // Signed, any digit: each byte sign-extended to 16 bits, multiplied, and its low byte kept.
    const __m512i even = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8), odd = _mm512_srai_epi16(v, 8);
    const __m512i pe = _mm512_mullo_epi16(even, dig), po = _mm512_mullo_epi16(odd, dig);
    return _mm512_or_si512(_mm512_and_si512(pe, _mm512_set1_epi16(0xFF)), _mm512_slli_epi16(po, 8));
}

/// Super-block b of weight rows r…r + nr − 1 as four A tiles (`a`: chunk c's tile at c·1024, tile row
/// i·amx_rows + j), their float scales into d and Dm. Unused tile rows are zero.
TAMX static inline AI void amx_decode(int32_t type, const amx_form *f, const moe_matrix *m, int64_t r, int nr, int64_t b,
                            uint8_t *a, float *d, float *Dm) {
    const int per = amx_rows(f);
    const int64_t rb = ggml_row_bytes(type, m->cols);
    const __m512i lane = _mm512_set_epi64(0x0303030303030303LL, 0x0303030303030303LL, 0x0202020202020202LL,
                                          0x0202020202020202LL, 0x0101010101010101LL, 0x0101010101010101LL, 0, 0);
    for (int i = 0; i < nr; i++) {
        kblockavx512vnni k;
        const uint8_t *p = (const uint8_t *)m->data + (r + i) * rb;
        decode_kavx512vnni(type, p, &k, NULL, b, NULL, 0, 0, (const uint8_t *)m->scales);
        d[i] = k.d;
        Dm[i] = k.Dm;
        __m512i mins = _mm512_setzero_si512();
        if (f->mins) {  // the 16 minimums as bytes, in every 128-bit lane
            const __m128i lo = _mm_loadu_si128((const __m128i *)k.m16), hi = _mm_loadu_si128((const __m128i *)(k.m16 + 8));
            mins = _mm512_broadcast_i32x4(_mm_packus_epi16(lo, hi));
        }
        for (int c = 0; c < 4; c++) {
            uint8_t *tile = a + 1024 * c + 64 * per * i;
            const __m512i v = f->is_signed ? _mm512_sub_epi8(k.u[c], _mm512_set1_epi8((char)f->offset)) : k.u[c];
            for (int j = 0; j < f->digits; j++) {
                const __m512i dig = amx_digit(f, j, k.s[c]);
                __m512i term;
                if (f->is_signed && !f->negate && j < f->digits - 1)  // digit ≥ 0 (Q6_K's lower three): u·dig − off·dig
                    term = _mm512_sub_epi8(_mm512_mullo_epi16(k.u[c], dig), _mm512_mullo_epi16(dig, _mm512_set1_epi16((short)(257 * f->offset))));
                else
                    term = amx_times(v, dig, f->is_signed);
                _mm512_storeu_si512(tile + 64 * j, term);
            }
            if (f->mins)  // lane L of chunk c is half 4c + L
                _mm512_storeu_si512(tile + 64 * f->digits,
                                    _mm512_shuffle_epi8(mins, _mm512_add_epi8(lane, _mm512_set1_epi8((char)(4 * c)))));
            if (f->srow)  // each 16-bit lane's scale in both its bytes
                _mm512_storeu_si512(tile + 64 * f->digits, _mm512_mullo_epi16(k.s[c], _mm512_set1_epi16(257)));
        }
    }
    for (int row = per * nr; row < 16; row++)
        for (int c = 0; c < 4; c++) _mm512_storeu_si512(a + 1024 * c + 64 * row, _mm512_setzero_si512());
}

/// Tokens t0…t0 + n − 1 of `x` as NB blocks of B tiles: token block tb, super-block b, chunk c at
/// ((tb·SB + b)·4 + c)·1024, row k4 = 16 tokens × bytes 4·k4…4·k4 + 3 of the chunk; their scales
/// dx[(tb·SB + b)·16 + t]. Tokens past n are zero.
static void amx_pack(const moe_q8_acts *x, int64_t cols, int64_t t0, int64_t n, int64_t NB, uint8_t *bp, float *dx) {
    const int64_t SB = cols / 256, units = cols / 4;
    for (int64_t tb = 0; tb < NB; tb++)
        for (int t = 0; t < 16; t++) {
            const int64_t token = 16 * tb + t;
            uint8_t *base = bp + tb * SB * 4096 + 4 * t;
            if (token < n) {
                const int8_t *q = x->q256 + (t0 + token) * cols;
                for (int64_t k = 0; k < units; k++) memcpy(base + (k / 16) * 1024 + (k % 16) * 64, q + 4 * k, 4);
                for (int64_t b = 0; b < SB; b++) dx[(tb * SB + b) * 16 + t] = x->d256[(t0 + token) * SB + b];
            } else {
                for (int64_t k = 0; k < units; k++) memset(base + (k / 16) * 1024 + (k % 16) * 64, 0, 4);
                for (int64_t b = 0; b < SB; b++) dx[(tb * SB + b) * 16 + t] = 0;
            }
        }
}

/// The tile C (16 rows × 16 tokens, int32) of super-block b into the accumulators of its weight rows, token block tb:
/// acc[i][16·tb…] (stride `stride` floats per row).
TAMX static inline AI void amx_combine(const amx_form *f, const int32_t *C, int nr, const float *d, const float *Dm,
                                    const float *dxp, float *acc, int64_t stride, int64_t tb) {
    const int per = amx_rows(f);
    const __m512 dx = _mm512_loadu_ps(dxp);
    for (int i = 0; i < nr; i++) {
        const int32_t *row = C + 16 * per * i;
        __m512i I = _mm512_loadu_si512(row);
        for (int j = 1, w = 3; j < f->digits; j++, w *= 3) {
            const __m512i C = _mm512_loadu_si512(row + 16 * j);
            I = _mm512_add_epi32(I, f->base3 ? _mm512_mullo_epi32(C, _mm512_set1_epi32(w))
                                             : _mm512_sll_epi32(C, _mm_cvtsi32_si128(f->shift[j])));
        }
        if (f->negate) I = _mm512_sub_epi32(_mm512_setzero_si512(), I);
        if (f->srow) I = _mm512_sub_epi32(I, _mm512_mullo_epi32(_mm512_loadu_si512(row + 16 * f->digits), _mm512_set1_epi32(f->offset)));
        float *a = acc + i * stride + 16 * tb;
        __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(_mm512_set1_ps(d[i]), dx), _mm512_loadu_ps(a));
        if (f->mins) {
            const __m512i O = _mm512_loadu_si512(row + 16 * f->digits);
            v = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(O), _mm512_mul_ps(_mm512_set1_ps(Dm[i]), dx), v);
        }
        _mm512_storeu_ps(a, v);
    }
}

/// Packed activations and accumulators for one call, per thread, kept between calls (a prompt pass calls this
/// for every matrix; a fresh allocation each time would fault its pages in again).
static __thread uint8_t *amx_scratch;
static __thread size_t amx_scratch_bytes;

static void *amx_buffer(size_t bytes) {
    if (bytes > amx_scratch_bytes) {
        free(amx_scratch);
        amx_scratch = aligned_alloc(64, (bytes + 63) / 64 * 64);
        amx_scratch_bytes = amx_scratch ? bytes : 0;
    }
    return amx_scratch;
}

/// The tile products of one super-block b, chunk c (A tiles: decoded rows in `a`, 4 KB per row group; B tiles: the
/// packed token blocks tb…). Tiles: (2, 2) two row groups × two token blocks, A 0-1, B 2-3, C 4-7; (3, 1) three row
/// groups × one token block, A 0-2, B 3, C 4-6. Four (three) accumulator tiles take turns, so the products do not
/// wait on each other's latency.
#define AMX_B(n, c) (bp + (((tb + (n)) * SB + b) * 4 + (c)) * 1024)
#define AMX_22(DP, c)                                                                                                do {                                                                                                                 _tile_loadd(0, a + 1024 * (c), 64);                                                                              _tile_loadd(1, a + 4096 + 1024 * (c), 64);                                                                       _tile_loadd(2, AMX_B(0, c), 64);                                                                                 _tile_loadd(3, AMX_B(1, c), 64);                                                                                 DP(4, 0, 2);                                                                                                     DP(5, 0, 3);                                                                                                     DP(6, 1, 2);                                                                                                     DP(7, 1, 3);                                                                                                 } while (0)
#define AMX_31(DP, c)                                                                                                do {                                                                                                                 _tile_loadd(3, AMX_B(0, c), 64);                                                                                 _tile_loadd(0, a + 1024 * (c), 64);                                                                              DP(4, 0, 3);                                                                                                     _tile_loadd(1, a + 4096 + 1024 * (c), 64);                                                                       DP(5, 1, 3);                                                                                                     _tile_loadd(2, a + 8192 + 1024 * (c), 64);                                                                       DP(6, 2, 3);                                                                                                 } while (0)
#define AMX_RUN(STEP, DP)                                                                                            do {                                                                                                                 STEP(DP, 0);                                                                                                     STEP(DP, 1);                                                                                                     STEP(DP, 2);                                                                                                     STEP(DP, 3);                                                                                                 } while (0)

/// Rows [r0, r1) of a K-quant matrix (`moe_ggml_amx_supports(type)`, cols a multiple of 256) × T tokens quantised
/// per 256 into y [T, rows]. Returns 0 (nothing written) where the scratch memory could not be had.
TAMX static inline AI int amx_gemm_of(const int32_t type, const moe_matrix *m, int64_t r0, int64_t r1,
                                      const moe_q8_acts *x, int64_t T, float *y) {
    amx_form f;
    amx_form_of(type, &f);
    const int per = amx_rows(&f), R = 16 / per;
    const int64_t cols = m->cols, SB = cols / 256;
    int64_t span = (768 * 1024 / cols) / 32 * 32;
    span = span < 32 ? 32 : span > 256 ? 256 : span;
    if (span > (T + 15) / 16 * 16) span = (T + 15) / 16 * 16;
    const int64_t NBmax = (span / 16 + 1) / 2 * 2;  // token blocks, padded to pairs
    const size_t packed = (size_t)(NBmax * 16 * cols), dxs = (size_t)(NBmax * SB * 16) * 4,
                 accs = (size_t)(3 * R * NBmax * 16) * 4;
    // After the packed tokens: two slots of decoded A tiles (3 row groups each), three of their float scales (d
    // then Dm, 48 each), two of stored C tiles.
    uint8_t *bp = amx_buffer(packed + dxs + accs + 2 * 3 * 4096 + 3 * 96 * 4 + 2 * 4096 + 64);
    if (!bp) return 0;
    float *dxp = (float *)(bp + packed), *acc = (float *)(bp + packed + dxs);
    uint8_t *a = bp + packed + dxs + accs;
    float *scales = (float *)(a + 2 * 3 * 4096);
    int32_t *cbuf = (int32_t *)(scales + 3 * 96);
    const int64_t stride = NBmax * 16;

    amx_configure_16x64();
    for (int64_t t0 = 0; t0 < T; t0 += span) {
        const int64_t n = T - t0 < span ? T - t0 : span, NB = (n + 15) / 16;
        const int G = NB == 1 ? 3 : 2;             // row groups at a time
        const int64_t NBp = NB == 1 ? 1 : (NB + 1) / 2 * 2;
        amx_pack(x, cols, t0, n, NBp, bp, dxp);
        for (int64_t r = r0; r < r1; r += G * R) {
            int nr[3];
            for (int g = 0; g < G; g++) {
                const int64_t left = r1 - (r + g * R);
                nr[g] = left <= 0 ? 0 : left < R ? (int)left : R;
            }
            memset(acc, 0, (size_t)(G * R * stride) * 4);
            // Super-block b's weights are decoded while b − 1 multiplies, and a tile group's results are combined
            // while the next group multiplies: the tile loads then read stores made long before, and the vector
            // loads tile stores made long before (neither waits on the other unit).
#define DECODE(b)                                                                                                \
    for (int g = 0; g < G; g++)                                                                                  \
        amx_decode(type, &f, m, r + g * R, nr[g], (b), a + ((b) & 1) * 3 * 4096 + 4096 * g,                        \
                   scales + ((b) % 3) * 96 + 16 * g, scales + ((b) % 3) * 96 + 48 + 16 * g)
            DECODE(0);
            int pending = 0, cs = 0;
            int64_t pb = 0, ptb = 0;
            const int32_t *pc = cbuf;  // the pending group's stored tiles
#define FINISH()                                                                                                 \
    do {                                                                                                         \
        const float *ds_ = scales + (pb % 3) * 96;                                                               \
        const int32_t *c_ = pc;                                                                                  \
        if (G == 3) {                                                                                            \
            for (int g = 0; g < 3; g++)                                                                          \
                amx_combine(&f, c_ + 256 * g, nr[g], ds_ + 16 * g, ds_ + 48 + 16 * g, dxp + pb * 16,             \
                            acc + g * R * stride, stride, 0);                                                    \
        } else {                                                                                                 \
            for (int g = 0; g < 2; g++)                                                                          \
                for (int j = 0; j < 2; j++)                                                                      \
                    amx_combine(&f, c_ + 256 * (2 * g + j), nr[g], ds_ + 16 * g, ds_ + 48 + 16 * g,              \
                                dxp + ((ptb + j) * SB + pb) * 16, acc + g * R * stride, stride, ptb + j);        \
        }                                                                                                        \
    } while (0)
            for (int64_t b = 0; b < SB; b++) {
                const uint8_t *a_ = a + (b & 1) * 3 * 4096;
                // Per tile group: its products; the next super-block's decoding (once per super-block); the group
                // before's combining; only then this group's stores, by when its products are done.
                for (int64_t tb = 0; tb < NBp; tb += (G == 3 ? 1 : 2)) {
                    int32_t *c = cbuf + cs * 1024;
                    {
                        const uint8_t *a = a_;
                        if (G == 3) {
                            _tile_zero(4), _tile_zero(5), _tile_zero(6);
                            if (f.is_signed) AMX_RUN(AMX_31, _tile_dpbssd);
                            else AMX_RUN(AMX_31, _tile_dpbusd);
                        } else {
                            _tile_zero(4), _tile_zero(5), _tile_zero(6), _tile_zero(7);
                            if (f.is_signed) AMX_RUN(AMX_22, _tile_dpbssd);
                            else AMX_RUN(AMX_22, _tile_dpbusd);
                        }
                    }
                    if (tb == 0 && b + 1 < SB) DECODE(b + 1);
                    if (pending) FINISH();
                    if (G == 3) {
                        _tile_stored(4, c, 64), _tile_stored(5, c + 256, 64), _tile_stored(6, c + 512, 64);
                    } else {
                        _tile_stored(4, c, 64), _tile_stored(5, c + 256, 64);
                        _tile_stored(6, c + 512, 64), _tile_stored(7, c + 768, 64);
                    }
                    pending = 1, pc = c, pb = b, ptb = tb;
                    cs ^= 1;
                }
            }
            FINISH();
#undef DECODE
#undef FINISH
            for (int g = 0; g < G; g++)
                for (int i = 0; i < nr[g]; i++)
                    for (int64_t t = 0; t < n; t++) y[(t0 + t) * m->rows + r + g * R + i] = acc[(g * R + i) * stride + t];
        }
    }
    _tile_release();
    return 1;
}

/// One instance per type, so that its form is constants in the decoder and the combining loop.
TAMX int moe_gemm_ggml_q8_amx(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                              float *y) {
    if (T <= 0) return 0;
    switch (type) {
    case MOE_GGML_Q2_K: return amx_gemm_of(MOE_GGML_Q2_K, m, r0, r1, x, T, y);
    case MOE_GGML_Q3_K: return amx_gemm_of(MOE_GGML_Q3_K, m, r0, r1, x, T, y);
    case MOE_GGML_Q4_K: return amx_gemm_of(MOE_GGML_Q4_K, m, r0, r1, x, T, y);
    case MOE_GGML_Q5_K: return amx_gemm_of(MOE_GGML_Q5_K, m, r0, r1, x, T, y);
    case MOE_GGML_Q6_K: return amx_gemm_of(MOE_GGML_Q6_K, m, r0, r1, x, T, y);
    case MOE_GGML_IQ2_XXS: return amx_gemm_of(MOE_GGML_IQ2_XXS, m, r0, r1, x, T, y);
    case MOE_GGML_IQ2_XS: return amx_gemm_of(MOE_GGML_IQ2_XS, m, r0, r1, x, T, y);
    case MOE_GGML_IQ3_XXS: return amx_gemm_of(MOE_GGML_IQ3_XXS, m, r0, r1, x, T, y);
    case MOE_GGML_IQ1_S: return amx_gemm_of(MOE_GGML_IQ1_S, m, r0, r1, x, T, y);
    case MOE_GGML_IQ2_S: return amx_gemm_of(MOE_GGML_IQ2_S, m, r0, r1, x, T, y);
    case MOE_GGML_IQ3_S: return amx_gemm_of(MOE_GGML_IQ3_S, m, r0, r1, x, T, y);
    case MOE_GGML_IQ1_M: return amx_gemm_of(MOE_GGML_IQ1_M, m, r0, r1, x, T, y);
    case MOE_GGML_TQ1_0: return amx_gemm_of(MOE_GGML_TQ1_0, m, r0, r1, x, T, y);
    case MOE_GGML_TQ2_0: return amx_gemm_of(MOE_GGML_TQ2_0, m, r0, r1, x, T, y);
    default: return 0;
    }
}

#undef AMX_B
#undef AMX_22
#undef AMX_31
#undef AMX_RUN
