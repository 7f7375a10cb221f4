#ifndef CMOEKERNELS_H
#define CMOEKERNELS_H
/// The innermost products of MoEStream: a stored weight matrix times fp32 activations, with fp32 accumulation.
///
/// C because Swift cannot compile one function for AVX2 and another for AVX-512 in one binary and pick at run
/// time: its SIMD types compile for the build's baseline (SSE2 on x86-64), which `moestream bench kernels` shows
/// several times slower. Everything around these loops (tiling over threads, the generic twins, which kernel
/// runs) is Swift.
///
/// Every kernel computes, for rows r in [r0, r1) and tokens t in [0, T):
///     y[t·rows + r] = Σ_c W[r, c] · x[t·cols + c]
/// and gives each (r, t) the same sequence of operations whatever the tile it falls in, so a token's result
/// does not depend on how many other tokens share the call or on how rows are split across threads.
#include <stdint.h>

typedef struct {
    /// int4: [rows, cols/2] bytes, groups of 32 in Q4_0 order (byte j: element j low nibble, j+16 high nibble),
    /// value = (nibble − 8) · scale. int8: [rows, cols] Int8, value = q · scale. bf16: [rows, cols] bf16.
    /// f32: [rows, cols] fp32.
    const void *data;
    /// Group scales [rows, cols/32] (int4, int8), bf16 when `scales_bf16`, else fp32; unused for bf16.
    const void *scales;
    int64_t rows;
    int64_t cols;
    int32_t scales_bf16;
} moe_matrix;

/// Activations quantised per 32 values for `--expert-activations q8`: x[t, c] ≈ q[t, c] · d[t, c/32], with
/// sums[t, g] = Σ q over group g (for the int4 nibbles' offset of 8).
typedef struct {
    const int8_t *q;       // [T, cols]
    const float *d;        // [T, cols/32]
    const int32_t *sums;   // [T, cols/32]
    const int16_t *sums16; // [T, cols/16]: Σ q over each 16 values (the GGML types' 16-wide sub-blocks)
    /// The same activations quantised per 256 (llama.cpp's Q8_K, for the K-quant kernels) when cols is a multiple
    /// of 256: x[t, c] ≈ q256[t, c] · d256[t, c/256], sums256 = Σ q256 per 16 values; else NULL.
    const int8_t *q256;    // [T, cols]
    const float *d256;     // [T, cols/256]
    const int16_t *sums256; // [T, cols/16]
} moe_q8_acts;

typedef void (*moe_gemm_fn)(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);

/// 1 when the CPU (and OS) run this build's AVX2+FMA+F16C kernels / AVX-512 F+BW+VL kernels.
int moe_cpu_has_avx2(void);
int moe_cpu_has_avx512(void);
/// 1 when the AVX kernels were compiled in (x86-64).
int moe_kernels_compiled_x86(void);

void moe_gemm_q4_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_bf16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
/// bf16 with a 3 × 4 register tile for four tokens or more (what `Kernels` uses for bf16 on AVX2).
void moe_gemm_bf16_avx2_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
/// int4 weights × Q8 activations: y[t·rows + r] = Σ_g w_scale·x_scale·(Σ nibble·q − 8·Σq), AVX2 (maddubs).
void moe_gemm_q4_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y);
/// The same with AVX-512 VNNI (vpdpbusd, two groups per instruction), where `moe_cpu_has_avx512vnni`.
void moe_gemm_q4_q8_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y);
int moe_cpu_has_avx512vnni(void);
/// `x [count]` quantised to int8 in blocks of `block` values (a multiple of 16): d = max|x|/127, q = round(x/d)
/// half away from zero, Σq per 16 values into sums16; a block with a NaN or an infinity gets d = NaN and q = 0
/// (quantise_q8.c; the same bytes as `Q8Activations.quantise`'s Swift twin). AVX2.
void moe_quantise_q8_avx2(const float *x, int64_t count, int32_t block, int8_t *q, float *d, int16_t *sums16);
/// GGML block types (their numbers in GGUF) that `moe_gemm_ggml_q8_*` multiply.
enum {
    MOE_GGML_Q4_0 = 2, MOE_GGML_Q4_1 = 3, MOE_GGML_Q5_0 = 6, MOE_GGML_Q5_1 = 7, MOE_GGML_Q8_0 = 8,
    MOE_GGML_Q2_K = 10, MOE_GGML_Q3_K = 11, MOE_GGML_Q4_K = 12, MOE_GGML_Q5_K = 13, MOE_GGML_Q6_K = 14,
    MOE_GGML_IQ2_XXS = 16, MOE_GGML_IQ2_XS = 17, MOE_GGML_IQ3_XXS = 18, MOE_GGML_IQ1_S = 19, MOE_GGML_IQ4_NL = 20,
    MOE_GGML_IQ3_S = 21, MOE_GGML_IQ2_S = 22, MOE_GGML_IQ4_XS = 23, MOE_GGML_IQ1_M = 29, MOE_GGML_TQ1_0 = 34,
    MOE_GGML_TQ2_0 = 35,
};
/// Rows [r0, r1) of a matrix of GGML `type` blocks (`data` the rows back to back; `scales` the codebook an
/// i-quant needs, as bytes: IQ2_XXS's 256, IQ2_XS's 512 or IQ2_S's 1024 rows of 8 values, or IQ3_XXS's 256 or
/// IQ3_S's 512 rows of 4, then the 128 sign patterns; IQ1_S's and IQ1_M's 2048 rows as 8·v + 16; else unused) × Q8
/// activations (kernels_ggml_q8.c: the form every type is brought to). AVX2 (maddubs) and AVX-512 VNNI (vpdpbusd);
/// the two and the Swift twin agree bit for bit.
void moe_gemm_ggml_q8_avx2(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                           float *y);
void moe_gemm_ggml_q8_avx512vnni(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x,
                                 int64_t T, float *y);
/// The K-quants (Q2_K…Q6_K, `moe_ggml_amx_supports`) on AMX-INT8 tiles (ggml_q8_amx.h), for many tokens: the same
/// bits as the kernels above. `moe_cpu_has_amx_int8` is 1 when the CPU has AMX-TILE and AMX-INT8 and Linux granted
/// the tile state. Returns 0, writing nothing, when its scratch memory could not be had.
int moe_cpu_has_amx_int8(void);
int moe_ggml_amx_supports(int32_t type);
int moe_gemm_ggml_q8_amx(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T,
                         float *y);
/// Register-only loops of `iterations` rounds over 12 independent chains (peak.c): the core's arithmetic peak.
/// Per round: fma_avx2 12·8 FMAs, fma_avx512 12·16 FMAs, dot8_avx2 12·32 int8 multiply-adds (maddubs + paddw),
/// dot8_avx512vnni 12·64 (vpdpbusd). Call only where the CPU has the ISA. The result only defeats dead-code removal.
double moe_peak_fma_avx2(int64_t iterations);
double moe_peak_fma_avx512(int64_t iterations);
double moe_peak_dot8_avx2(int64_t iterations);
double moe_peak_dot8_avx512vnni(int64_t iterations);
/// int4 interleaved by 8 rows (`int4g32x8`; layout in kernels_x8.c): rows [r0, r1) must start and end on multiples
/// of 8. × Q8 activations with maddubs (AVX2) or vpdpbusd (AVX-512 VNNI), and × fp32 activations; the four agree
/// bit for bit with each other and with their Swift twins (`WeightMatrix.gemm`, `gemmQ8`).
void moe_gemm_q4x8_q8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y);
void moe_gemm_q4x8_q8_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, int64_t T, float *y);
/// The same weights × two-part int8 activations x ≈ (q1 + q2/256)·d (`x`: q1, d, Σq1; `x2`: q2, Σq2; kernels_x8.c).
void moe_gemm_q4x8_q16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                            int64_t T, float *y);
void moe_gemm_q4x8_q16_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                                  int64_t T, float *y);
void moe_gemm_q4x8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_q4x8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
/// int8 weights interleaved by 8 rows and offset by 128 (`int8g32x8`, kernels_i8x8.c: a store's resident matrices
/// under `convert --resident int8`) × two-part int8 activations (`x`: q1, d, Σq1; `x2`: q2, Σq2): AVX-512 VNNI and
/// AVX2 (madd); then × fp32 activations (`--exact`). Rows [r0, r1) in whole blocks of 8.
void moe_gemm_i8x8_q16_avx512vnni(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                                  int64_t T, float *y);
void moe_gemm_i8x8_q16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x, const moe_q8_acts *x2,
                            int64_t T, float *y);
void moe_gemm_i8x8_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_i8x8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
/// Weighted sums of rows (kernels_rows.c): y[t·y_stride + c] = fma chain over j < n of a[t·a_stride + j] ·
/// W[j·stride + c], c < cols, for T tokens; W fp32, bf16 or f16 (`stride` in elements). The same chain per (t, c)
/// whatever the tile, the token count or the ISA.
typedef void (*moe_rows_fn)(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride,
                            int64_t T, float *y, int64_t y_stride);
void moe_rows_f32_avx2(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride);
void moe_rows_bf16_avx2(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride);
void moe_rows_f32_avx512(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride);
void moe_rows_bf16_avx512(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride);
void moe_rows_f16_avx2(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride);
void moe_rows_f16_avx512(const void *w, int64_t stride, int64_t n, int64_t cols, const float *a, int64_t a_stride, int64_t T, float *y, int64_t y_stride);
/// fp32 rows (the attention's latent keys: scores of a block of queries).
void moe_gemm_f32_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
/// `n` IEEE halves to fp32, exactly (F16C; where `moe_cpu_has_avx2`).
void moe_widen_f16_avx2(const uint16_t *src, float *dst, int64_t n);
/// IEEE half rows (a KV cache under `--kv-cache f16`), widened by F16C.
void moe_gemm_f16_avx2(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_f16_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_q4_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_q8_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_bf16_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
void moe_gemm_f32_avx512(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);
/// bf16 with a 4 × 4 register tile for four tokens or more (what `Kernels` uses for bf16 on AVX-512).
void moe_gemm_bf16_avx512_blocked(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y);

/// bf16 weights × activations split into two bf16 parts on AMX tiles (kernels_amx.c), for
/// `--resident-activations bf16x2`. `moe_cpu_has_amx_bf16` is 1 when the CPU has AMX-TILE and AMX-BF16 and Linux
/// granted this process the tile state (it asks once). `moe_pack_bf16_amx` splits token blocks [b0, b1) of
/// x [T, cols] (cols a multiple of 32) into the tiles' order (2 · ceil(T/16) · 16 · cols values in all);
/// `moe_gemm_bf16_amx` multiplies bf16 rows [r0, r1) (multiples of 16) by them. `moe_peak_amx_bf16` is the
/// instruction's peak loop (4 · 8,192 multiply-adds per round).
int moe_cpu_has_amx_bf16(void);
void moe_pack_bf16_amx(const float *x, int64_t T, int64_t cols, int64_t b0, int64_t b1, uint16_t *out);
void moe_gemm_bf16_amx(const moe_matrix *m, int64_t r0, int64_t r1, const uint16_t *xt, int64_t T, float *y);
double moe_peak_amx_bf16(int64_t iterations);

/// The same arithmetic on AVX512-BF16's `vdpbf16ps`, for CPUs with it and no AMX (kernels_bf16dp.c).
/// `moe_pack_bf16x2_rows` splits tokens [t0, t1) of x [T, cols] (cols a multiple of 32) into per-token rows of
/// chunks, 32 hi then 32 lo values (2 · T · cols values in all); `moe_gemm_bf16x2_dp` multiplies bf16 rows
/// [r0, r1) by them; `moe_peak_dpbf16_avx512` is the instruction's peak loop (12 · 32 multiply-adds per round).
int moe_cpu_has_avx512_bf16(void);
void moe_pack_bf16x2_rows(const float *x, int64_t T, int64_t cols, int64_t t0, int64_t t1, uint16_t *out);
void moe_gemm_bf16x2_dp(const moe_matrix *m, int64_t r0, int64_t r1, const uint16_t *x, int64_t T, float *y);
double moe_peak_dpbf16_avx512(int64_t iterations);

#endif
