// bf16 weights × activations split into two bf16 parts on AVX512-BF16's `vdpbf16ps` (Zen 4, Zen 5, Cooper Lake and
// later Xeons), for the resident matrices under `--resident-activations bf16x2` where the CPU has no AMX.
//
// The arithmetic is the AMX kernel's (kernels_amx.c): each activation is split as x = hi + lo + ε with
// hi = bf16(x), lo = bf16(x − hi), |ε| ≤ 2⁻¹⁷|x|, and both parts are multiplied by the bf16 weights; a product of
// two bf16 values is exact in fp32, the sums are fp32. `vdpbf16ps acc, w, x` adds to each of 16 fp32 lanes the
// products of one pair of adjacent columns (the odd column's first, then the even one's, each step rounded to
// nearest even, denormals flushed). So a weight row's 32 consecutive bf16 values are the instruction's operand as
// they lie in memory: nothing is repacked. Only the activations are packed, once per product, by
// `moe_pack_bf16x2_rows`:
//   token t: 2·cols values at t·2·cols; chunk k (columns 32k..32k+31): 32 hi values at 64k, then 32 lo values.
//
// Why: without AMX the resident matrices multiply fp32 activations with 16-lane FMAs after widening every weight
// (two extra instructions per 16 weights on the FMA ports); `vdpbf16ps` does 32 bf16 products per instruction at
// the FMA's rate, so the two parts cost one FMA's worth per pair of products and no widening.
//
// Per (row, token): one 16-lane accumulator, fed chunk by chunk in column order, hi then lo, then the fixed
// horizontal sum (`hsum16`). Every tile shape, row block and column span does exactly that, so a token's result
// depends neither on the tokens beside it nor on how rows are split: decode reproduces a prompt pass bit for bit.
#include "CMoEKernels.h"

#if defined(__x86_64__)
#include "common.h"

#define TB __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

int moe_cpu_has_avx512_bf16(void) {
    __builtin_cpu_init();
    return moe_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}

/// 16 fp32 values rounded to bf16, to nearest even (NaN kept quiet): the AMX packer's `bf16_round`, 16 at a time.
TB INLINE __m256i bf16_round16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

/// bf16 values (in the low 16 bits of 16 lanes) back to fp32.
TB INLINE __m512 bf16_widen16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

TB void moe_pack_bf16x2_rows(const float *x, int64_t T, int64_t cols, int64_t t0, int64_t t1, uint16_t *out) {
    const int64_t K = cols / 32;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t k = 0; k < K; k++) {
            uint16_t *o = out + t * 2 * cols + 64 * k;
            for (int h = 0; h < 2; h++) {
                const __m512 v = _mm512_loadu_ps(x + t * cols + 32 * k + 16 * h);
                const __m256i hi = bf16_round16(v);
                const __m256i lo = bf16_round16(_mm512_sub_ps(v, bf16_widen16(hi)));
                _mm256_storeu_si256((__m256i *)(o + 16 * h), hi);
                _mm256_storeu_si256((__m256i *)(o + 32 + 16 * h), lo);
            }
        }
}

/// Chunks of 32 columns (64 bytes of a row) a streaming tile prefetches ahead.
enum { DP_PREFETCH = 32 };

/// Rows r..r+NR−1 × tokens t..t+NT−1 over chunks [k0, k1), accumulators from and back to `park` ([NR][NT]);
/// with `pf`, each row's weights are prefetched `DP_PREFETCH` chunks ahead (a prefetch past the matrix is harmless).
TB INLINE void dp_tile(const uint16_t *w, int64_t cols, const uint16_t *x, int64_t k0, int64_t k1, __m512 *park,
                       const int NR, const int NT, const int pf) {
    __m512 acc[4][4];
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++) acc[i][j] = park[4 * i + j];
    for (int64_t k = k0; k < k1; k++) {
        if (pf)
            for (int i = 0; i < NR; i++) _mm_prefetch((const char *)(w + i * cols + 32 * (k + DP_PREFETCH)), _MM_HINT_T0);
        __m512bh wv[4];
        for (int i = 0; i < NR; i++) wv[i] = (__m512bh)_mm512_loadu_si512(w + i * cols + 32 * k);
        for (int j = 0; j < NT; j++) {
            const uint16_t *xj = x + j * 2 * cols + 64 * k;
            const __m512bh hi = (__m512bh)_mm512_loadu_si512(xj), lo = (__m512bh)_mm512_loadu_si512(xj + 32);
            for (int i = 0; i < NR; i++) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], hi);
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], lo);
            }
        }
    }
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++) park[4 * i + j] = acc[i][j];
}

#define DP_ROWS(NT)                                                                                              \
    switch (nr) {                                                                                                \
    case 1: dp_tile(w, cols, xt, k0, k1, park, 1, NT, pf); break;                                                \
    case 2: dp_tile(w, cols, xt, k0, k1, park, 2, NT, pf); break;                                                \
    case 3: dp_tile(w, cols, xt, k0, k1, park, 3, NT, pf); break;                                                \
    default: dp_tile(w, cols, xt, k0, k1, park, 4, NT, pf); break;                                               \
    }

/// The tile at `w` (nr ≤ 4 rows) × `xt` (nt ≤ 4 tokens), with nr and nt made constants.
TB static void dp_tile_n(const uint16_t *w, int64_t cols, const uint16_t *xt, int64_t k0, int64_t k1, __m512 *park,
                         int nr, int nt, int pf) {
    switch (nt) {
    case 1: DP_ROWS(1) break;
    case 2: DP_ROWS(2) break;
    case 3: DP_ROWS(3) break;
    default: DP_ROWS(4) break;
    }
}

/// Tokens in passes whose two-part activations (4·cols bytes a token) stay near 4 MB; within a pass, rows
/// [r0, r1) in blocks whose weights stay in L2 (~512 KB, reused by every group of four tokens), tokens four
/// at a time, columns in spans of 1024 (four tokens' two parts, 16 KB, stay in L1 while every tile of the row
/// block passes); each tile's accumulators parked between spans. Without the passes a 512-token prompt streamed
/// all its activations (14.7 MB at cols 7168) past every row block: one thread, Zen 5, C harness, 512 tokens,
/// before → after (GFLOP/s): 2048 × 7168 128 → 161–169, the dense layer's down 7168 × 18432 73 → 132–149, its
/// gate/up 18432 × 7168 127 → 170–178, o_proj 7168 × 8192 115 → 166–176. With at most four tokens (decode) the weights
/// are read once, so nothing is worth keeping in L2: each tile streams its four rows whole, prefetching ahead
/// (four sequential streams the prefetcher follows, instead of 2 KB pieces of 128 rows; a C harness over 235 MB of
/// matrices, two threads: 30.6–34.3 GB/s before, 32.6–46.2 after). The order of every sum is unchanged.
TB void moe_gemm_bf16x2_dp(const moe_matrix *m, int64_t r0, int64_t r1, const uint16_t *x, int64_t T, float *y) {
    enum { MAX_TILES = 32 };
    const int64_t cols = m->cols, K = cols / 32, SPAN = T <= 4 ? K : 32;
    const int pf = T <= 4;
    const uint16_t *wbase = (const uint16_t *)m->data;
    int64_t rb = T > 4 ? (512 << 10) / (2 * cols) : r1 - r0;
    rb = rb < 4 ? 4 : rb > 4 * MAX_TILES ? 4 * MAX_TILES : rb - rb % 4;
    int64_t pass = (4 << 20) / (4 * cols);  // tokens per pass: a multiple of four, at least 16
    pass = pass < 16 ? 16 : pass - pass % 4;
    __m512 park[MAX_TILES][16];
    for (int64_t p0 = 0; p0 < T; p0 += pass) {
      const int64_t p1 = p0 + pass < T ? p0 + pass : T;
      for (int64_t b0 = r0; b0 < r1; b0 += rb) {
        const int64_t b1 = b0 + rb < r1 ? b0 + rb : r1, tiles = (b1 - b0 + 3) / 4;
        for (int64_t t = p0; t < p1; t += 4) {
            const int nt = p1 - t < 4 ? (int)(p1 - t) : 4;
            const uint16_t *xt = x + t * 2 * cols;
            for (int64_t i = 0; i < tiles; i++)
                for (int j = 0; j < 16; j++) park[i][j] = _mm512_setzero_ps();
            for (int64_t k0 = 0; k0 < K; k0 += SPAN) {
                const int64_t k1 = k0 + SPAN < K ? k0 + SPAN : K;
                for (int64_t i = 0; i < tiles; i++) {
                    const int64_t r = b0 + 4 * i;
                    const int nr = b1 - r < 4 ? (int)(b1 - r) : 4;
                    dp_tile_n(wbase + r * cols, cols, xt, k0, k1, park[i], nr, nt, pf);
                }
            }
            for (int64_t i = 0; i < tiles; i++) {
                const int64_t r = b0 + 4 * i;
                const int nr = b1 - r < 4 ? (int)(b1 - r) : 4;
                for (int a = 0; a < nr; a++)
                    for (int j = 0; j < nt; j++) y[(t + j) * m->rows + r + a] = hsum16(park[i][4 * a + j]);
            }
        }
      }
    }
}

/// `vdpbf16ps` on 12 independent chains: one core's bf16 peak (GFLOP/s = iterations · 12 · 32 · 2 / seconds).
TB double moe_peak_dpbf16_avx512(int64_t iterations) {
    __m512 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f81);
    for (int64_t n = 0; n < iterations; n++) {
        __asm__ volatile("" : "+v"(a), "+v"(b));
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, acc[i]);
    return (double)_mm512_reduce_add_ps(s);
}

#else
int moe_cpu_has_avx512_bf16(void) { return 0; }
void moe_pack_bf16x2_rows(const float *x, int64_t T, int64_t cols, int64_t t0, int64_t t1, uint16_t *out) {}
void moe_gemm_bf16x2_dp(const moe_matrix *m, int64_t r0, int64_t r1, const uint16_t *x, int64_t T, float *y) {}
double moe_peak_dpbf16_avx512(int64_t iterations) { return 0; }
#endif
