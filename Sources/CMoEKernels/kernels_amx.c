// bf16 weights × activations split into two bf16 parts on AMX tiles (Intel Sapphire Rapids and later: AMX-TILE +
// AMX-BF16), for the resident matrices under `--resident-activations bf16x2`.
//
// One `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 fp32 tile: 8,192 multiply-adds;
// its measured peak was 6-14 times the core's fp32 FMA peak on the development Xeon (`moestream bench kernels`
// prints both; the AMX figure varied from process to process there).
// The weights are bf16 already (Kimi K2's resident matrices are), so only the activations need care: each is split
// as x = hi + lo + ε with hi = bf16(x), lo = bf16(x − hi), |ε| ≤ 2⁻¹⁷|x| (16 significant bits where fp32 has 24),
// and both parts are multiplied (products of bf16 values are exact in fp32; the sums are fp32). One part alone
// (plain bf16 activations, error 2⁻⁹|x|) moved the long-context fixture's argmax at 3 of 387 decided positions;
// two keep every one, at twice the instructions.
//
// The weights are the left tile as they lie (16 rows of 32 consecutive bf16 values, row stride = the matrix's), so
// nothing is repacked; the activations are the right tile, packed once per product by `moe_pack_bf16_amx` in the
// pair-interleaved order the instruction reads:
//   token block b (tokens 16b..16b+15), chunk k (columns 32k..32k+31), part h (0: hi, 1: lo):
//   512 values at ((b·K + k)·2 + h)·512, K = cols/32; value 32p + 2t + e = part h of x[16b + t, 32k + 2p + e]
//   (zero for tokens past T).
// Every output element is one fp32 accumulator fed chunk by chunk in column order, hi then lo, by the same
// instruction, so a token's result depends neither on the tokens beside it nor on how rows are split: decode
// reproduces a prompt pass bit for bit, as with the fp32 kernels.
#include "CMoEKernels.h"

#if defined(__x86_64__) && defined(__linux__)
#include "common.h"
#include "amx_common.h"

#define TA __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

int moe_cpu_has_amx_bf16(void) {
    static int state = -1;
    return amx_ready(&state, 22, moe_cpu_has_avx512());
}

/// Round to nearest even, as `vcvtneps2bf16` does (NaN kept quiet).
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

void moe_pack_bf16_amx(const float *x, int64_t T, int64_t cols, int64_t b0, int64_t b1, uint16_t *out) {
    const int64_t K = cols / 32;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t k = 0; k < K; k++) {
            uint16_t *hi = out + (b * K + k) * 1024, *lo = hi + 512;
            for (int t = 0; t < 16; t++) {
                const int64_t token = 16 * b + t;
                for (int c = 0; c < 32; c++) {
                    const int64_t i = 32 * (c / 2) + 2 * t + (c & 1);
                    if (token < T) {
                        const float v = x[token * cols + 32 * k + c];
                        hi[i] = bf16_round(v);
                        lo[i] = bf16_round(v - bf16_value(hi[i]));
                    } else {
                        hi[i] = lo[i] = 0;
                    }
                }
            }
        }
}

/// Tile registers: C00 C01 C10 C11 (rows i × token blocks j), A0 A1 (two 16-row weight blocks), B0 B1.
enum { C00 = 0, C01 = 1, C10 = 2, C11 = 3, A0 = 4, A1 = 5, B0 = 6, B1 = 7 };

/// Cache blocking: rows in blocks of RB, tokens in super-blocks of SB blocks of 16, columns in spans of KS chunks of
/// 32. A span's weights (RB rows, 128 KB) and activations (SB·16 tokens, both parts, 128 KB) stay in L2 while every
/// tile of the block passes over them; the tiles' partial sums wait in `part` (RB/16 · SB tiles of 1 KB) between
/// spans. Chosen by a sweep on the AMX Xeon (timings there are bimodal from process to process): for 2048 × 7168
/// × 256 tokens, unblocked ran at ~60 G useful multiply-adds/s, (64, 8, 32) at 80-85, (64, 2, 32) at 150-200.
enum { RB = 64, SB = 2, KS = 32 };

/// Writes the 16 × 16 fp32 tile `buf` (rows r.., tokens 16b..) into y [T, rows], tokens past T dropped.
static inline void scatter(const float *buf, int64_t r, int64_t b, int64_t T, int64_t rows, float *y) {
    for (int t = 0; t < 16 && 16 * b + t < T; t++)
        for (int i = 0; i < 16; i++) y[(16 * b + t) * rows + r + i] = buf[16 * i + t];
}

/// The partial sums of the tile at rows r.. (of the block starting at c0) and token block b (of the super-block
/// starting at s0).
#define PART(r, b) (part + ((((r) - c0) / 16) * SB + ((b) - s0)) * 256)

/// Rows r..r+16·NR−1 × token blocks b..b+NB−1 (NR, NB ∈ {1, 2}) over chunks [k0, k1): the accumulators start
/// at zero on the first span, else from `part`; they go back to `part`, or into y after the last span.
#define AMX_TILE(NR, NB)                                                                                         \
    do {                                                                                                         \
        if (k0 == 0) {                                                                                           \
            _tile_zero(C00);                                                                                     \
            if (NB > 1) _tile_zero(C01);                                                                         \
            if (NR > 1) _tile_zero(C10);                                                                         \
            if (NR > 1 && NB > 1) _tile_zero(C11);                                                               \
        } else {                                                                                                 \
            _tile_loadd(C00, PART(r, b), 64);                                                                    \
            if (NB > 1) _tile_loadd(C01, PART(r, b + 1), 64);                                                    \
            if (NR > 1) _tile_loadd(C10, PART(r + 16, b), 64);                                                   \
            if (NR > 1 && NB > 1) _tile_loadd(C11, PART(r + 16, b + 1), 64);                                     \
        }                                                                                                        \
        const uint16_t *wa = w + r * cols, *wb = wa + 16 * cols;                                                 \
        const uint16_t *xa = xt + b * K * 1024, *xb = xa + K * 1024;                                             \
        for (int64_t k = k0; k < k1; k++) {                                                                      \
            _tile_loadd(A0, wa + 32 * k, stride);                                                                \
            if (NR > 1) _tile_loadd(A1, wb + 32 * k, stride);                                                    \
            for (int h = 0; h < 2; h++) {                                                                        \
                _tile_loadd(B0, xa + 512 * (2 * k + h), 64);                                                     \
                _tile_dpbf16ps(C00, A0, B0);                                                                     \
                if (NB > 1) {                                                                                    \
                    _tile_loadd(B1, xb + 512 * (2 * k + h), 64);                                                 \
                    _tile_dpbf16ps(C01, A0, B1);                                                                 \
                }                                                                                                \
                if (NR > 1) {                                                                                    \
                    _tile_dpbf16ps(C10, A1, B0);                                                                 \
                    if (NB > 1) _tile_dpbf16ps(C11, A1, B1);                                                     \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        if (k1 < K) {                                                                                            \
            _tile_stored(C00, PART(r, b), 64);                                                                   \
            if (NB > 1) _tile_stored(C01, PART(r, b + 1), 64);                                                   \
            if (NR > 1) _tile_stored(C10, PART(r + 16, b), 64);                                                  \
            if (NR > 1 && NB > 1) _tile_stored(C11, PART(r + 16, b + 1), 64);                                    \
        } else {                                                                                                 \
            _tile_stored(C00, buf, 64);                                                                          \
            scatter(buf, r, b, T, m->rows, y);                                                                   \
            if (NB > 1) {                                                                                        \
                _tile_stored(C01, buf, 64);                                                                      \
                scatter(buf, r, b + 1, T, m->rows, y);                                                           \
            }                                                                                                    \
            if (NR > 1) {                                                                                        \
                _tile_stored(C10, buf, 64);                                                                      \
                scatter(buf, r + 16, b, T, m->rows, y);                                                          \
            }                                                                                                    \
            if (NR > 1 && NB > 1) {                                                                              \
                _tile_stored(C11, buf, 64);                                                                      \
                scatter(buf, r + 16, b + 1, T, m->rows, y);                                                      \
            }                                                                                                    \
        }                                                                                                        \
    } while (0)

/// Rows [r0, r1) (multiples of 16) × T tokens packed by `moe_pack_bf16_amx`: within each block of rows, token
/// super-block and column span, pairs of 16-row tiles × pairs of token blocks (four accumulator tiles).
TA void moe_gemm_bf16_amx(const moe_matrix *m, int64_t r0, int64_t r1, const uint16_t *xt, int64_t T, float *y) {
    amx_configure_16x64();
    const int64_t cols = m->cols, K = cols / 32, stride = 2 * cols, blocks = (T + 15) / 16;
    const uint16_t *w = (const uint16_t *)m->data;
    float buf[256] __attribute__((aligned(64)));
    float part[(RB / 16) * SB * 256] __attribute__((aligned(64)));  // 8 KB
    for (int64_t c0 = r0; c0 < r1; c0 += RB) {
        const int64_t c1 = c0 + RB < r1 ? c0 + RB : r1;
        for (int64_t s0 = 0; s0 < blocks; s0 += SB) {
            const int64_t s1 = s0 + SB < blocks ? s0 + SB : blocks;
            for (int64_t k0 = 0; k0 < K; k0 += KS) {
                const int64_t k1 = k0 + KS < K ? k0 + KS : K;
                for (int64_t b = s0; b < s1; b += 2) {
                    const int two = b + 1 < s1;
                    int64_t r = c0;
                    for (; r + 32 <= c1; r += 32) {
                        if (two) AMX_TILE(2, 2);
                        else AMX_TILE(2, 1);
                    }
                    for (; r < c1; r += 16) {
                        if (two) AMX_TILE(1, 2);
                        else AMX_TILE(1, 1);
                    }
                }
            }
        }
    }
    _tile_release();
}

/// Peak of `tdpbf16ps` (four independent accumulator tiles), for `moestream bench kernels`.
TA double moe_peak_amx_bf16(int64_t iterations) {
    amx_configure_16x64();
    uint16_t a[512] __attribute__((aligned(64)));
    float c[256] __attribute__((aligned(64)));
    for (int i = 0; i < 512; i++) a[i] = 0x3f80;
    _tile_zero(C00), _tile_zero(C01), _tile_zero(C10), _tile_zero(C11);
    _tile_loadd(A0, a, 64), _tile_loadd(A1, a, 64), _tile_loadd(B0, a, 64), _tile_loadd(B1, a, 64);
    for (int64_t i = 0; i < iterations; i++) {
        _tile_dpbf16ps(C00, A0, B0);
        _tile_dpbf16ps(C01, A0, B1);
        _tile_dpbf16ps(C10, A1, B0);
        _tile_dpbf16ps(C11, A1, B1);
    }
    _tile_stored(C00, c, 64);
    _tile_release();
    return c[0];
}

#else
int moe_cpu_has_amx_bf16(void) { return 0; }
void moe_pack_bf16_amx(const float *x, int64_t T, int64_t cols, int64_t b0, int64_t b1, uint16_t *out) {}
void moe_gemm_bf16_amx(const moe_matrix *m, int64_t r0, int64_t r1, const uint16_t *xt, int64_t T, float *y) {}
double moe_peak_amx_bf16(int64_t iterations) { return 0; }
#endif
