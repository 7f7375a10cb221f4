// GGML block rows × Q8 activations: the body of kernels_ggml_q8.c, compiled once per instruction set.
//
// The including file defines:
//   TARGET            the function attribute of the instruction set
//   SUFFIX            the exported name's suffix (moe_gemm_ggml_q8_SUFFIX)
//   DOT_ONES(u, q)    8 int32 lanes, lane i = Σ u·q over bytes 4i…4i+3 (u unsigned ≤ 128, q signed int8)
//   PAIR_T, MAKE_PAIR, PAIR_ABS, GROUP_PAIR, GROUP_PAIR_SIGNED, IACC, IZERO, IREDUCE: the K-quant form's pairs of groups
//
// Every block type is brought to one form per group of 32 weights:
//     w[l] = D · s(l) · u[l] − Dm · m(l)         u unsigned bytes, s and m integers per 16 values (a, b)
// so that, with x[l] ≈ q[l] · dx and S_a, S_b the sums of q over the group's two halves,
//     Σ w·x ≈ dx · D · Σ_lanes P  −  dx · Dm · (m_a·S_a + m_b·S_b)
//     P lane i = s(l) · Σ_{l in bytes 4i…4i+3} u[l]·q[l]       (integer, exact)
//
// The legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: blocks of 32, s = 1) take activations quantised per 32, so dx is
// per group and each group meets the floats. Q8_0's and IQ4_NL's signed weights take llama.cpp's sign trick
// (|w| × q·sign(w)) and have no offset. Their groups go in chunks of 8 (fewer at a row's end). Per (row, token):
//     k = D ⊙ dx                                         8 lanes, one per group of the chunk
//     for each group i: acc = fma(float(P_i), k[i], acc)   (all 8 lanes of P_i)
//     acc = fnmadd(dx, Dm ⊙ float(madd(m, S)), acc)     lane i: group i's offset, m and S as 16 int16 pairs
// The K-quants and the i-quants with a kernel take activations quantised per 256 and sum a whole super-block in
// int32 first and keep one float per (row, token) (their section below). Either way the same operations run on every
// instruction set (their integers are equal), and in `WeightMatrix.gemmQ8`'s Swift twin, so all agree bit for bit.

#define QCAT_(a, b) a##b
#define QCAT(a, b) QCAT_(a, b)
#define QFN(name) QCAT(name, SUFFIX)
#define AI __attribute__((always_inline))

/// Where the activations of up to four tokens are, quantised per 32 (legacy types) or per 256 (K-quants): token
/// j's q at q + j·cols, its `blocks` scales at d + j·blocks, its 16-value sums at s16 + j·cols/16.
typedef struct {
    const int8_t *q;
    const float *d;
    const int16_t *s16;
    int64_t cols;
    int64_t blocks;
} QFN(acts);

/// The dx of groups g0…g0 + n − 1 of token j, zero past n.
TARGET static inline AI __m256 QFN(dx8)(const QFN(acts) *a, int j, int64_t g0, int n) {
    const float *d = a->d + j * a->blocks + g0;
    if (n == 8) return _mm256_loadu_ps(d);
    float v[8] = {0};
    for (int i = 0; i < n; i++) v[i] = d[i];
    return _mm256_loadu_ps(v);
}

/// Starts a chunk: k[j] = D ⊙ dx for each token.
TARGET static inline AI void QFN(chunk_begin)(const QFN(acts) *a, int64_t g0, int n, const float *D, __m256 *k, const int nt) {
    const __m256 Dv = _mm256_loadu_ps(D);
    for (int j = 0; j < nt; j++) k[j] = _mm256_mul_ps(Dv, QFN(dx8)(a, j, g0, n));
}

/// Ends a chunk: each group's offset, acc −= dx ⊙ Dm ⊙ (m_a·S_a + m_b·S_b).
TARGET static inline AI void QFN(chunk_end)(const QFN(acts) *a, int64_t g0, int n, const float *Dm, const int16_t *m16,
                                            __m256 *acc, const int nt) {
    const __m256 Dmv = _mm256_loadu_ps(Dm);
    const __m256i mv = _mm256_loadu_si256((const __m256i *)m16);
    for (int j = 0; j < nt; j++) {
        const int16_t *s = a->s16 + j * (a->cols / 16) + 2 * g0;
        __m256i S;
        if (n == 8) {
            S = _mm256_loadu_si256((const __m256i *)s);
        } else {
            int16_t v[16] = {0};
            for (int i = 0; i < 2 * n; i++) v[i] = s[i];
            S = _mm256_loadu_si256((const __m256i *)v);
        }
        const __m256 offset = _mm256_mul_ps(Dmv, _mm256_cvtepi32_ps(_mm256_madd_epi16(mv, S)));
        acc[j] = _mm256_fnmadd_ps(QFN(dx8)(a, j, g0, n), offset, acc[j]);
    }
}

/// Group i of the chunk at g0: acc += float(P) · k[i], P = DOT_ONES(u, q).
TARGET static inline AI void QFN(group_ones)(const QFN(acts) *a, int64_t g0, int i, __m256i u, const __m256 *k,
                                             __m256 *acc, const int nt) {
    const __m256i lane = _mm256_set1_epi32(i);
    for (int j = 0; j < nt; j++) {
        const __m256i P = DOT_ONES(u, _mm256_loadu_si256((const __m256i *)(a->q + j * a->cols + 32 * (g0 + i))));
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(P), _mm256_permutevar8x32_ps(k[j], lane), acc[j]);
    }
}

/// Group i with 16-value integer scales s_a, s_b: P = madd(maddubs(u, q), [s_a ×8 | s_b ×8]).
TARGET static inline AI void QFN(group_scaled)(const QFN(acts) *a, int64_t g0, int i, __m256i u, int16_t sa, int16_t sb,
                                               const __m256 *k, __m256 *acc, const int nt) {
    const __m256i sv = _mm256_set_m128i(_mm_set1_epi16(sb), _mm_set1_epi16(sa)), lane = _mm256_set1_epi32(i);
    for (int j = 0; j < nt; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(a->q + j * a->cols + 32 * (g0 + i)));
        const __m256i P = _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), sv);
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(P), _mm256_permutevar8x32_ps(k[j], lane), acc[j]);
    }
}

/// Q8_0's group i: signed weights w, P = DOT_ONES(|w|, q·sign(w)) = Σ w·q.
TARGET static inline AI void QFN(group_signed)(const QFN(acts) *a, int64_t g0, int i, __m256i w, const __m256 *k,
                                               __m256 *acc, const int nt) {
    const __m256i u = _mm256_sign_epi8(w, w), lane = _mm256_set1_epi32(i);
    for (int j = 0; j < nt; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(a->q + j * a->cols + 32 * (g0 + i)));
        const __m256i P = DOT_ONES(u, _mm256_sign_epi8(q, w));
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(P), _mm256_permutevar8x32_ps(k[j], lane), acc[j]);
    }
}

// ---- one row of each type: `row` its bytes, the groups numbered from 0 -------------------------------------

/// The legacy types (blocks of 32, `size` bytes): chunks of up to 8 blocks; BLOCK(p, i) runs block p as group i,
/// after D[i], Dm[i], m16[2i…2i+1] are set by COEFFS(p, i).
#define LEGACY_ROW(size, COEFFS, BLOCK, OFFSET)                                                                  \
    for (int64_t g0 = 0; g0 < a->blocks; g0 += 8) {                                                                  \
        const int n = a->blocks - g0 < 8 ? (int)(a->blocks - g0) : 8;                                                \
        float D[8] = {0}, Dm[8] = {0};                                                                           \
        int16_t m16[16] = {0};                                                                                   \
        __m256 k[4];                                                                                             \
        for (int i = 0; i < n; i++) { const uint8_t *p = row + (size) * (g0 + i); COEFFS(p, i); }               \
        QFN(chunk_begin)(a, g0, n, D, k, nt);                                                                    \
        for (int i = 0; i < n; i++) { const uint8_t *p = row + (size) * (g0 + i); BLOCK(p, i); }                \
        if (OFFSET) QFN(chunk_end)(a, g0, n, Dm, m16, acc, nt);                                                  \
    }

#define SYM_COEFFS(p, i, off) (D[i] = Dm[i] = ggml_half(p), m16[2 * (i)] = m16[2 * (i) + 1] = (off))
#define MIN_COEFFS(p, i) (D[i] = ggml_half(p), Dm[i] = -ggml_half((p) + 2), m16[2 * (i)] = m16[2 * (i) + 1] = 1)

TARGET static inline AI void QFN(row_q4_0)(const uint8_t *row, const QFN(acts) *a, __m256 *acc, const int nt) {
#define C(p, i) SYM_COEFFS(p, i, 8)
#define B(p, i) QFN(group_ones)(a, g0, i, nibbles_32((p) + 2), k, acc, nt)
    LEGACY_ROW(18, C, B, 1)
#undef C
#undef B
}

TARGET static inline AI void QFN(row_q4_1)(const uint8_t *row, const QFN(acts) *a, __m256 *acc, const int nt) {
#define B(p, i) QFN(group_ones)(a, g0, i, nibbles_32((p) + 4), k, acc, nt)
    LEGACY_ROW(20, MIN_COEFFS, B, 1)
#undef B
}

TARGET static inline AI void QFN(row_q5_0)(const uint8_t *row, const QFN(acts) *a, __m256 *acc, const int nt) {
#define C(p, i) SYM_COEFFS(p, i, 16)
#define B(p, i) QFN(group_ones)(a, g0, i, _mm256_or_si256(nibbles_32((p) + 6), _mm256_and_si256(bits_32((p) + 2), _mm256_set1_epi8(0x10))), k, acc, nt)
    LEGACY_ROW(22, C, B, 1)
#undef C
#undef B
}

TARGET static inline AI void QFN(row_q5_1)(const uint8_t *row, const QFN(acts) *a, __m256 *acc, const int nt) {
#define B(p, i) QFN(group_ones)(a, g0, i, _mm256_or_si256(nibbles_32((p) + 8), _mm256_and_si256(bits_32((p) + 4), _mm256_set1_epi8(0x10))), k, acc, nt)
    LEGACY_ROW(24, MIN_COEFFS, B, 1)
#undef B
}

TARGET static inline AI void QFN(row_q8_0)(const uint8_t *row, const QFN(acts) *a, __m256 *acc, const int nt) {
#define C(p, i) (D[i] = ggml_half(p))
#define B(p, i) QFN(group_signed)(a, g0, i, _mm256_loadu_si256((const __m256i *)((p) + 2)), k, acc, nt)
    LEGACY_ROW(34, C, B, 0)
#undef C
#undef B
}

/// IQ4_NL { d, qs[16] }: Q4_0's nibbles through the IQ4_NL table, signed values (Q8_0's sign trick), times d.
TARGET static inline AI void QFN(row_iq4_NL)(const uint8_t *row, const QFN(acts) *a, __m256 *acc, const int nt) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
#define C(p, i) (D[i] = ggml_half(p))
#define B(p, i) QFN(group_signed)(a, g0, i, _mm256_shuffle_epi8(table, nibbles_32((p) + 2)), k, acc, nt)
    LEGACY_ROW(18, C, B, 0)
#undef C
#undef B
}

// ---- K-quants: super-blocks of 256 against activations quantised per 256 (llama.cpp's Q8_K) ------------------
//
// Per super-block b and token, with x ≈ q · dx_b and the weights' 16-value integer scales s and offsets m:
//     I = Σ_l s(l) · u[l] · q[l]          O = Σ_halves m · S      (int32, exact; S: sums of q per 16 values)
// and then one float accumulator per (row, token):
//     types with minimums (Q2_K, Q4_K, Q5_K):  acc = fma(float(I), d·dx_b, acc);  acc = fma(−float(O), Dm·dx_b, acc)
//     the others (offsets that only make u unsigned, Dm = d):  acc = fma(float(I − O), d·dx_b, acc)
// so the float work is two scalar steps per super-block, and any way of finding the integers (lanes of maddubs
// here, AMX tiles in kernels_ggml_amx.c) gives the same bits. The 32-wide types (Q4_K, Q5_K) give both halves of a
// group its scale. A super-block is decoded once (`kblock`: groups in pairs, PAIR_T) and multiplied by every
// token of a call: GROUP_PAIR(I, u, s, q) adds a pair of groups (q: their 64 activations) to the integer
// accumulator I (IACC): two 256-bit steps on AVX2, one 512-bit step on AVX-512 (IREDUCE folds its halves): the
// same integers either way.

/// A decoded super-block: its 8 groups' values u and 16-bit scale vectors s ([s_a ×8 | s_b ×8]) in pairs, the
/// offsets' integers per 16 values, and the two float scales. A signed type (`ggml_is_signed_k`) keeps u = |w| and
/// the signed values w, whose signs go onto the activations.
typedef struct {
    PAIR_T u[4], s[4], w[4];
    int16_t m16[16];
    float d, Dm;
} QFN(kblock);

/// The 16-bit scale vector of a group: s_a for values 0-15, s_b for 16-31.
TARGET static inline AI __m256i QFN(scales16)(int16_t sa, int16_t sb) {
    return _mm256_set_m128i(_mm_set1_epi16(sb), _mm_set1_epi16(sa));
}

/// A decoder either stores each pair of groups in `k` (emit 0: the block is multiplied later by many tokens) or
/// multiplies it at once into the integer accumulators I of `nt` tokens of `a` (emit 1: few tokens; nothing of
/// the values goes through memory). Either way k gets the offsets and float scales.
#define KQ_EMIT_PARAMS const QFN(acts) *a, int64_t b, IACC *I, const int nt, const int emit
#define PUT(idx, U, S)                                                                                           \
    do {                                                                                                         \
        const PAIR_T u_ = (U), s_ = (S);                                                                         \
        if (emit) {                                                                                              \
            for (int t_ = 0; t_ < nt; t_++) GROUP_PAIR(I[t_], u_, s_, a->q + t_ * a->cols + 256 * b + 64 * (idx)); \
        } else {                                                                                                 \
            k->u[idx] = u_;                                                                                      \
            k->s[idx] = s_;                                                                                      \
        }                                                                                                        \
    } while (0)
/// PUT for signed values W (u = |W|).
#define PUT_SIGNED(idx, W, S)                                                                                    \
    do {                                                                                                         \
        const PAIR_T w_ = (W), s_ = (S), u_ = PAIR_ABS(w_);                                                      \
        if (emit) {                                                                                              \
            for (int t_ = 0; t_ < nt; t_++)                                                                      \
                GROUP_PAIR_SIGNED(I[t_], u_, w_, s_, a->q + t_ * a->cols + 256 * b + 64 * (idx));                \
        } else {                                                                                                 \
            k->u[idx] = u_;                                                                                      \
            k->w[idx] = w_;                                                                                      \
            k->s[idx] = s_;                                                                                      \
        }                                                                                                        \
    } while (0)

/// Q2_K { scales[16], qs[64], d, dmin }: group 4h + j is bits 2j of qs[32h + l]; its halves' scale bytes are
/// 8h + 2j and 8h + 2j + 1 (low nibble × d, high nibble × dmin).
TARGET static inline AI void QFN(decode_q2_K)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS) {
    const __m256i three = _mm256_set1_epi8(3);
    for (int i = 0; i < 16; i++) k->m16[i] = p[i] >> 4;
    for (int h = 0; h < 2; h++) {
        const __m256i qs = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * h));
        for (int j = 0; j < 4; j += 2) {
            const uint8_t *sc = p + 8 * h + 2 * j;
            PUT(2 * h + j / 2,
                MAKE_PAIR(_mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three), _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j + 2), three)),
                MAKE_PAIR(QFN(scales16)(sc[0] & 15, sc[1] & 15), QFN(scales16)(sc[2] & 15, sc[3] & 15)));
        }
    }
    k->d = ggml_half(p + 80);
    k->Dm = ggml_half(p + 82);
}

/// Q3_K { hmask[32], qs[64], scales[12], d }: group 4h + s is bits 2s of qs[32h + l] plus 4 where bit 4h + s of
/// hmask[l] is set, less 4; 6-bit scales less 32.
TARGET static inline AI __m256i QFN(q3_K_u)(__m256i qs, __m256i hm, int h, int s) {
    const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * h + s)));
    const __m256i high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), _mm256_set1_epi8(4));
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 2 * s), _mm256_set1_epi8(3)), high);
}

TARGET static inline AI void QFN(decode_q3_K)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS) {
    int16_t sc[16];
    q3_K_scales(p + 96, sc);
    for (int i = 0; i < 16; i++) k->m16[i] = (int16_t)(4 * sc[i]);
    const __m256i hm = _mm256_loadu_si256((const __m256i *)p);
    for (int h = 0; h < 2; h++) {
        const __m256i qs = _mm256_loadu_si256((const __m256i *)(p + 32 + 32 * h));
        for (int s = 0; s < 4; s += 2) {
            const int16_t *g = sc + 8 * h + 2 * s;
            PUT(2 * h + s / 2, MAKE_PAIR(QFN(q3_K_u)(qs, hm, h, s), QFN(q3_K_u)(qs, hm, h, s + 1)),
                MAKE_PAIR(QFN(scales16)(g[0], g[1]), QFN(scales16)(g[2], g[3])));
        }
    }
    k->d = k->Dm = ggml_half(p + 108);
}

/// Q4_K { d, dmin, scales[12], qs[128] } and Q5_K { …, qh[32], qs[128] }: group 2c + s is nibble s of
/// qs[32c + l] (with bit 2c + s of qh[l] as the fifth); 6-bit scale and minimum per group.
TARGET static inline AI void QFN(decode_kq)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS, const int five) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), sixteen = _mm256_set1_epi8(0x10);
    const uint8_t *qs = p + (five ? 48 : 16);
    uint8_t sc[8], mn[8];
    k4_scales(p + 4, sc, mn);
    for (int i = 0; i < 8; i++) k->m16[2 * i] = k->m16[2 * i + 1] = mn[i];
    const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        const __m256i bytes = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(bytes, low4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
        if (five) {
            const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * c))), b1 = _mm256_set1_epi8((char)(1 << (2 * c + 1)));
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), sixteen));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), sixteen));
        }
        PUT(c, MAKE_PAIR(lo, hi), MAKE_PAIR(_mm256_set1_epi16(sc[2 * c]), _mm256_set1_epi16(sc[2 * c + 1])));
    }
    k->d = ggml_half(p);
    k->Dm = ggml_half(p + 2);
}

/// Q6_K { ql[128], qh[64], scales[16]: i8, d }: group 4h + s is nibble s/2 of ql[64h + 32(s%2) + l] with bits 2s
/// of qh[32h + l] as the high pair, less 32.
TARGET static inline AI void QFN(decode_q6_K)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    const int8_t *sc = (const int8_t *)(p + 192);
    for (int i = 0; i < 16; i++) k->m16[i] = (int16_t)(32 * sc[i]);
    for (int h = 0; h < 2; h++) {
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(p + 64 * h)), ql1 = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32));
        __m256i u[4];
        for (int s = 0; s < 4; s++) {
            const __m256i low = _mm256_and_si256(_mm256_srli_epi16(s & 1 ? ql1 : ql0, 4 * (s >> 1)), low4);
            u[s] = _mm256_or_si256(low, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * s), three), 4));
        }
        const int8_t *g = sc + 8 * h;
        PUT(2 * h, MAKE_PAIR(u[0], u[1]), MAKE_PAIR(QFN(scales16)(g[0], g[1]), QFN(scales16)(g[2], g[3])));
        PUT(2 * h + 1, MAKE_PAIR(u[2], u[3]), MAKE_PAIR(QFN(scales16)(g[4], g[5]), QFN(scales16)(g[6], g[7])));
    }
    k->d = k->Dm = ggml_half(p + 208);
}

/// Four codebook rows of 8 bytes (`tab`'s rows `rows`) as 32 values.
TARGET static inline AI __m256i QFN(rows_32)(const uint8_t *tab, const uint32_t *rows) {
    uint64_t r[4];
    for (int l = 0; l < 4; l++) memcpy(&r[l], tab + 8 * rows[l], 8);
    return _mm256_set_epi64x((long long)r[3], (long long)r[2], (long long)r[1], (long long)r[0]);
}

/// 32 codebook values w, each negated where its bit of `neg` is set, plus `offset`.
TARGET static inline AI __m256i QFN(signed_plus)(__m256i w, uint32_t neg, char offset) {
    return _mm256_add_epi8(_mm256_sign_epi8(w, _mm256_or_si256(bits_32v(neg), _mm256_set1_epi8(1))), _mm256_set1_epi8(offset));
}

/// The 32 values of four codebook rows, each negated where its bit of `neg` is set, plus 64.
TARGET static inline AI __m256i QFN(iq2_u)(const uint8_t *tab, const uint32_t *rows, uint32_t neg) {
    return QFN(signed_plus)(QFN(rows_32)(tab, rows), neg, 64);
}

/// The i-quants whose groups have one scale each (IQ2_XXS, IQ3_XXS, IQ3_S, IQ1_S): GROUP(p, g, tab, &scale) gives group
/// g's unsigned bytes and its integer scale; each half's offset is `offset` · scale, the float d · `dscale`.
typedef __m256i (*QFN(group_fn))(const uint8_t *p, int g, const uint8_t *tab, int16_t *scale);

TARGET static inline AI void QFN(decode_groups)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS, const uint8_t *tab,
                                                QFN(group_fn) group, int16_t offset, float dscale) {
    for (int pr = 0; pr < 4; pr++) {
        __m256i u[2];
        int16_t sc[2];
        for (int h = 0; h < 2; h++) {
            const int g = 2 * pr + h;
            u[h] = group(p, g, tab, &sc[h]);
            k->m16[2 * g] = k->m16[2 * g + 1] = (int16_t)(offset * sc[h]);
        }
        PUT(pr, MAKE_PAIR(u[0], u[1]), MAKE_PAIR(_mm256_set1_epi16(sc[0]), _mm256_set1_epi16(sc[1])));
    }
    k->d = k->Dm = ggml_half(p) * dscale;
}

/// IQ2_XXS { d, 8 × (u32 four codebook rows, u32 four 7-bit sign patterns and a 4-bit scale s) }: group g is
/// four rows of 8 values (8, 25 or 43), each value negated where its sign bit is set, times d·(2s + 1)/8. As
/// unsigned bytes: u = ±value + 64, the offset m = 64·(2s + 1) per half, the scale 2s + 1. `tab`: the codebook's
/// bytes, then the sign patterns (`ksigns`).
TARGET static inline AI __m256i QFN(iq2_XXS_group)(const uint8_t *p, int g, const uint8_t *tab, int16_t *scale) {
    const uint8_t *ksigns = tab + 256 * 8;
    uint32_t packed, signs, rows[4], neg = 0;
    memcpy(&packed, p + 2 + 8 * g, 4);
    memcpy(&signs, p + 2 + 8 * g + 4, 4);
    for (int l = 0; l < 4; l++) {
        rows[l] = (packed >> (8 * l)) & 255;
        neg |= (uint32_t)ksigns[(signs >> (7 * l)) & 127] << (8 * l);
    }
    *scale = (int16_t)(2 * (signs >> 28) + 1);
    return QFN(iq2_u)(tab, rows, neg);
}

/// IQ2_XS { d, qs: 32 × u16 (9-bit codebook row, 7-bit sign pattern), scales[8] }: group g is entries 4g…4g + 3,
/// its halves scaled by d·(2s + 1)/8 with s the nibbles 2g and 2g + 1 of `scales`; as unsigned bytes as IQ2_XXS.
TARGET static inline AI void QFN(decode_iq2_XS)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS, const uint8_t *tab) {
    const uint8_t *ksigns = tab + 512 * 8;
    for (int pr = 0; pr < 4; pr++) {
        __m256i u[2];
        int16_t sa[2], sb[2];
        for (int h = 0; h < 2; h++) {
            const int g = 2 * pr + h;
            uint32_t rows[4], neg = 0;
            for (int l = 0; l < 4; l++) {
                const uint16_t e = (uint16_t)(p[2 + 8 * g + 2 * l] | p[2 + 8 * g + 2 * l + 1] << 8);
                rows[l] = e & 511;
                neg |= (uint32_t)ksigns[e >> 9] << (8 * l);
            }
            u[h] = QFN(iq2_u)(tab, rows, neg);
            sa[h] = (int16_t)(2 * (p[66 + g] & 15) + 1);
            sb[h] = (int16_t)(2 * (p[66 + g] >> 4) + 1);
            k->m16[2 * g] = (int16_t)(64 * sa[h]);
            k->m16[2 * g + 1] = (int16_t)(64 * sb[h]);
        }
        PUT(pr, MAKE_PAIR(u[0], u[1]), MAKE_PAIR(QFN(scales16)(sa[0], sb[0]), QFN(scales16)(sa[1], sb[1])));
    }
    k->d = k->Dm = ggml_half(p) * 0.125f;
}

/// IQ3_XXS { d, qs[64] codebook rows of 4, 8 × u32 (four 7-bit sign patterns, 4-bit scale s) }: group g is rows
/// qs[8g…8g + 7] (values 4…62), each value negated where its sign bit is set, times d·(2s + 1)/4. As unsigned bytes
/// u = ±v + 64 (2…126), the offset m = 64·(2s + 1), the scale 2s + 1, the float d/4.
TARGET static inline AI __m256i QFN(iq3_XXS_group)(const uint8_t *p, int g, const uint8_t *tab, int16_t *scale) {
    const uint8_t *ksigns = tab + 256 * 4;
    uint32_t r[8], aux, neg = 0;
    for (int l = 0; l < 8; l++) memcpy(&r[l], tab + 4 * p[2 + 8 * g + l], 4);
    memcpy(&aux, p + 66 + 4 * g, 4);
    for (int l = 0; l < 4; l++) neg |= (uint32_t)ksigns[(aux >> (7 * l)) & 127] << (8 * l);
    *scale = (int16_t)(2 * (aux >> 28) + 1);
    return QFN(signed_plus)(_mm256_setr_epi32((int)r[0], (int)r[1], (int)r[2], (int)r[3], (int)r[4], (int)r[5], (int)r[6], (int)r[7]), neg, 64);
}

/// IQ1_S { d, qs[32], qh: 8 × u16 }: group g is four rows of 8 values in {−1, 0, 1} (row: qs[4g + l] and bits 3l of
/// qh[g] as the high three of 11), plus δ = ±1/8 (bit 15 of qh[g]: −), times d·(2s + 1), s = bits 12-14. As
/// unsigned bytes u = 8·v ± 1 + 16 (`tab` holds 8·v + 16), the offset m = 16·(2s + 1) per half, the scale 2s + 1,
/// the float d/8.
TARGET static inline AI __m256i QFN(iq1_S_group)(const uint8_t *p, int g, const uint8_t *tab, int16_t *scale) {
    const uint32_t qh = (uint32_t)(p[34 + 2 * g] | p[35 + 2 * g] << 8);
    uint32_t rows[4];
    for (int l = 0; l < 4; l++) rows[l] = p[2 + 4 * g + l] | ((qh >> (3 * l)) & 7) << 8;
    *scale = (int16_t)(2 * ((qh >> 12) & 7) + 1);
    return _mm256_add_epi8(QFN(rows_32)(tab, rows), _mm256_set1_epi8(qh & 0x8000 ? -1 : 1));
}

/// IQ3_S { d, qs[64], qh[8], signs[32], scales[4] }: group g is codebook rows qs[8g + l] with bit l of qh[g] as the
/// ninth index bit (values 1…15), each value negated where its bit of signs[4g…4g + 3] is set, times d·(2s + 1),
/// s the nibble g of `scales`. As unsigned bytes u = ±v + 16 (1…31), the offset m = 16·(2s + 1), the float d.
TARGET static inline AI __m256i QFN(iq3_S_group)(const uint8_t *p, int g, const uint8_t *tab, int16_t *scale) {
    uint32_t r[8], neg;
    const uint32_t qh = p[66 + g];
    for (int l = 0; l < 8; l++) memcpy(&r[l], tab + 4 * (p[2 + 8 * g + l] | ((qh >> l) & 1) << 8), 4);
    memcpy(&neg, p + 74 + 4 * g, 4);
    *scale = (int16_t)(2 * ((p[106 + g / 2] >> (4 * (g % 2))) & 15) + 1);
    return QFN(signed_plus)(_mm256_setr_epi32((int)r[0], (int)r[1], (int)r[2], (int)r[3], (int)r[4], (int)r[5], (int)r[6], (int)r[7]), neg, 16);
}

/// IQ2_S { d, qs[32], signs[32], qh[8], scales[8] }: group g is four codebook rows of 8 (row qs[4g + l] with bits 2l
/// of qh[g] as the high two of 10), each value negated where its bit of signs[4g…4g + 3] is set; its halves scaled
/// by d·(2s + 1)/8 with s the nibbles of scales[g]. As unsigned bytes as IQ2_XXS.
TARGET static inline AI void QFN(decode_iq2_S)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS, const uint8_t *tab) {
    for (int pr = 0; pr < 4; pr++) {
        __m256i u[2];
        int16_t sa[2], sb[2];
        for (int h = 0; h < 2; h++) {
            const int g = 2 * pr + h;
            uint32_t rows[4], neg;
            for (int l = 0; l < 4; l++) rows[l] = p[2 + 4 * g + l] | ((p[66 + g] >> (2 * l)) & 3) << 8;
            memcpy(&neg, p + 34 + 4 * g, 4);
            u[h] = QFN(iq2_u)(tab, rows, neg);
            sa[h] = (int16_t)(2 * (p[74 + g] & 15) + 1);
            sb[h] = (int16_t)(2 * (p[74 + g] >> 4) + 1);
            k->m16[2 * g] = (int16_t)(64 * sa[h]);
            k->m16[2 * g + 1] = (int16_t)(64 * sb[h]);
        }
        PUT(pr, MAKE_PAIR(u[0], u[1]), MAKE_PAIR(QFN(scales16)(sa[0], sb[0]), QFN(scales16)(sa[1], sb[1])));
    }
    k->d = k->Dm = ggml_half(p) * 0.125f;
}

/// IQ1_M { qs[32], qh[16], scales: 4 × u16 }: row i (8 values in {−1, 0, 1}) is qs[i] with the low three bits of
/// nibble i % 2 of qh[i / 2] as the high three of 11, plus δ = ±1/8 (the nibble's bit 3: −); 16 three-bit scales
/// s, one per 16 values (word k / 4, bits 3·(k % 4)); the fp16 d is the words' top nibbles. As unsigned bytes
/// u = 8·v ± 1 + 16 (`tab` holds 8·v + 16), the offset m = 16·(2s + 1), the scale 2s + 1, the float d/8 — IQ1_S's
/// form with δ per row.
TARGET static inline AI void QFN(decode_iq1_M)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS, const uint8_t *tab) {
    uint16_t sw[4];
    memcpy(sw, p + 48, 8);
    const uint16_t dbits = (uint16_t)((sw[0] >> 12) | ((sw[1] >> 8) & 0x00F0) | ((sw[2] >> 4) & 0x0F00) | (sw[3] & 0xF000));
    for (int pr = 0; pr < 4; pr++) {
        __m256i u[2];
        int16_t sa[2], sb[2];
        for (int h = 0; h < 2; h++) {
            const int g = 2 * pr + h;
            uint64_t r[4];
            for (int l = 0; l < 4; l++) {
                const int i = 4 * g + l;
                const uint32_t nib = (uint32_t)(p[32 + i / 2] >> (4 * (i % 2)));
                memcpy(&r[l], tab + 8 * (p[i] | (nib & 7) << 8), 8);
                // ±1 in every byte: no byte of 8·v + 16 (8…24) carries or borrows.
                r[l] = nib & 8 ? r[l] - 0x0101010101010101ULL : r[l] + 0x0101010101010101ULL;
            }
            u[h] = _mm256_set_epi64x((long long)r[3], (long long)r[2], (long long)r[1], (long long)r[0]);
            sa[h] = (int16_t)(2 * ((sw[g / 2] >> (3 * (2 * g % 4))) & 7) + 1);
            sb[h] = (int16_t)(2 * ((sw[g / 2] >> (3 * ((2 * g + 1) % 4))) & 7) + 1);
            k->m16[2 * g] = (int16_t)(16 * sa[h]);
            k->m16[2 * g + 1] = (int16_t)(16 * sb[h]);
        }
        PUT(pr, MAKE_PAIR(u[0], u[1]), MAKE_PAIR(QFN(scales16)(sa[0], sb[0]), QFN(scales16)(sa[1], sb[1])));
    }
    k->d = k->Dm = f16_value(dbits) * 0.125f;
}

/// IQ4_XS { d, scales_h: u16, scales_l[4], qs[128] }: group g is the low then the high nibbles of qs[16g…] through
/// the IQ4_NL table, times d·(s − 32), s six bits (nibble g % 2 of scales_l[g / 2], bits 2g of scales_h). Signed
/// values w (PUT_SIGNED), the scale s − 32, no offset, the float d.
TARGET static inline AI void QFN(decode_iq4_XS)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
    const uint32_t high = (uint32_t)(p[2] | p[3] << 8);
    for (int i = 0; i < 16; i++) k->m16[i] = 0;
    for (int pr = 0; pr < 4; pr++) {
        __m256i w[2];
        int16_t s[2];
        for (int h = 0; h < 2; h++) {
            const int g = 2 * pr + h;
            s[h] = (int16_t)((((p[4 + g / 2] >> (4 * (g % 2))) & 15) | ((high >> (2 * g)) & 3) << 4) - 32);
            w[h] = _mm256_shuffle_epi8(table, nibbles_32(p + 8 + 16 * g));
        }
        PUT_SIGNED(pr, MAKE_PAIR(w[0], w[1]), MAKE_PAIR(_mm256_set1_epi16(s[0]), _mm256_set1_epi16(s[1])));
    }
    k->d = k->Dm = ggml_half(p);
}

/// TQ2_0 { qs[64], d }: group 4h + j is bits 2j of qs[32h + l] (0…2), less 1, times d: scale 1, offset 1.
TARGET static inline AI void QFN(decode_tq2_0)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS) {
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi16(1);
    for (int i = 0; i < 16; i++) k->m16[i] = 1;
    for (int h = 0; h < 2; h++) {
        const __m256i qs = _mm256_loadu_si256((const __m256i *)(p + 32 * h));
        for (int j = 0; j < 4; j += 2)
            PUT(2 * h + j / 2,
                MAKE_PAIR(_mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three), _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j + 2), three)),
                MAKE_PAIR(one, one));
    }
    k->d = k->Dm = ggml_half(p + 64);
}

/// The base-3 digit of bytes m·… : ⌊3m / 256⌋ = (m ≥ 86) + (m ≥ 171), unsigned.
TARGET static inline AI __m256i QFN(trit)(__m256i m) {
    const __m256i ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, _mm256_set1_epi8((char)86)), m);
    const __m256i ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, _mm256_set1_epi8((char)171)), m);
    return _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge86), ge171);
}

/// TQ1_0 { qs[48], qh[4], d }: digit k of byte b is ⌊3·(b·3^k mod 256) / 256⌋ (0…2), less 1, times d. Values
/// 32k + l are digit k of qs[l] (groups 0-4), 160 + 16k + l digit k of qs[32 + l], 240 + 4k + l digit k of qh[l].
/// Scale 1, offset 1; b·3^k mod 256 is byte additions that wrap.
TARGET static inline AI void QFN(decode_tq1_0)(const uint8_t *p, QFN(kblock) *k, KQ_EMIT_PARAMS) {
    const __m256i one = _mm256_set1_epi16(1);
    for (int i = 0; i < 16; i++) k->m16[i] = 1;
    __m256i d[5], e[5], m = _mm256_loadu_si256((const __m256i *)p);
    __m256i n = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + 32)));
    for (int j = 0; j < 5; j++) {
        d[j] = QFN(trit)(m);
        e[j] = QFN(trit)(n);
        m = _mm256_add_epi8(_mm256_add_epi8(m, m), m);
        n = _mm256_add_epi8(_mm256_add_epi8(n, n), n);
    }
    uint8_t last[16];
    for (int j = 0; j < 4; j++) {
        for (int l = 0; l < 4; l++) {
            const uint8_t b = (uint8_t)(p[48 + l] * (j == 0 ? 1 : j == 1 ? 3 : j == 2 ? 9 : 27));
            last[4 * j + l] = (uint8_t)((b * 3) >> 8);
        }
    }
    const __m256i g7 = _mm256_inserti128_si256(e[4], _mm_loadu_si128((const __m128i *)last), 1);
    PUT(0, MAKE_PAIR(d[0], d[1]), MAKE_PAIR(one, one));
    PUT(1, MAKE_PAIR(d[2], d[3]), MAKE_PAIR(one, one));
    PUT(2, MAKE_PAIR(d[4], _mm256_permute2x128_si256(e[0], e[1], 0x20)), MAKE_PAIR(one, one));
    PUT(3, MAKE_PAIR(_mm256_permute2x128_si256(e[2], e[3], 0x20), g7), MAKE_PAIR(one, one));
    k->d = k->Dm = ggml_half(p + 52);
}

/// Super-block b of a K-quant row, decoded (`PUT`).
TARGET static inline AI void QFN(decode_k)(int32_t type, const uint8_t *row, QFN(kblock) *k, KQ_EMIT_PARAMS,
                                           const uint8_t *tab) {
    switch (type) {
    case MOE_GGML_IQ2_XXS: QFN(decode_groups)(row + 66 * b, k, a, b, I, nt, emit, tab, QFN(iq2_XXS_group), 64, 0.125f); break;
    case MOE_GGML_IQ2_XS: QFN(decode_iq2_XS)(row + 74 * b, k, a, b, I, nt, emit, tab); break;
    case MOE_GGML_IQ1_S: QFN(decode_groups)(row + 50 * b, k, a, b, I, nt, emit, tab, QFN(iq1_S_group), 16, 0.125f); break;
    case MOE_GGML_IQ3_XXS: QFN(decode_groups)(row + 98 * b, k, a, b, I, nt, emit, tab, QFN(iq3_XXS_group), 64, 0.25f); break;
    case MOE_GGML_IQ3_S: QFN(decode_groups)(row + 110 * b, k, a, b, I, nt, emit, tab, QFN(iq3_S_group), 16, 1.0f); break;
    case MOE_GGML_IQ2_S: QFN(decode_iq2_S)(row + 82 * b, k, a, b, I, nt, emit, tab); break;
    case MOE_GGML_IQ1_M: QFN(decode_iq1_M)(row + 56 * b, k, a, b, I, nt, emit, tab); break;
    case MOE_GGML_IQ4_XS: QFN(decode_iq4_XS)(row + 136 * b, k, a, b, I, nt, emit); break;
    case MOE_GGML_TQ1_0: QFN(decode_tq1_0)(row + 54 * b, k, a, b, I, nt, emit); break;
    case MOE_GGML_TQ2_0: QFN(decode_tq2_0)(row + 66 * b, k, a, b, I, nt, emit); break;
    case MOE_GGML_Q2_K: QFN(decode_q2_K)(row + 84 * b, k, a, b, I, nt, emit); break;
    case MOE_GGML_Q3_K: QFN(decode_q3_K)(row + 110 * b, k, a, b, I, nt, emit); break;
    case MOE_GGML_Q4_K: QFN(decode_kq)(row + 144 * b, k, a, b, I, nt, emit, 0); break;
    case MOE_GGML_Q5_K: QFN(decode_kq)(row + 176 * b, k, a, b, I, nt, emit, 1); break;
    default: QFN(decode_q6_K)(row + 210 * b, k, a, b, I, nt, emit); break;
    }
}

/// The float steps of super-block b for tokens 0…nt − 1 of `a`, their integer products I done: each token's
/// integers are summed whole (exact), so the float work is two scalar fused steps per super-block, in the same
/// order however the integers were found (`moe_gemm_ggml_q8_amx` finds them on tiles).
TARGET static inline AI void QFN(kq_end)(const QFN(kblock) *k, const QFN(acts) *a, int64_t b, const IACC *I, float *acc,
                                         const int nt, const int mins) {
    const __m256i mv = _mm256_loadu_si256((const __m256i *)k->m16);
    for (int j = 0; j < nt; j++) {
        const float dx = a->d[j * a->blocks + b];
        const __m256i S = _mm256_loadu_si256((const __m256i *)(a->s16 + j * (a->cols / 16) + 16 * b));
        const int32_t i = hsum8_i32(IREDUCE(I[j])), o = hsum8_i32(_mm256_madd_epi16(mv, S));
        if (mins) {
            acc[j] = __builtin_fmaf((float)i, k->d * dx, acc[j]);
            acc[j] = __builtin_fmaf(-(float)o, k->Dm * dx, acc[j]);
        } else {
            acc[j] = __builtin_fmaf((float)(i - o), k->d * dx, acc[j]);
        }
    }
}

/// A stored super-block b times tokens 0…nt − 1 of `a` (`sgn`: its values are signed, `ggml_is_signed_k`).
TARGET static inline AI void QFN(kq_block)(const QFN(kblock) *k, const QFN(acts) *a, int64_t b, float *acc, const int nt,
                                           const int mins, const int sgn) {
    IACC I[4];
    for (int j = 0; j < nt; j++) I[j] = IZERO();
    for (int p = 0; p < 4; p++)
        for (int j = 0; j < nt; j++) {
            if (sgn) GROUP_PAIR_SIGNED(I[j], k->u[p], k->w[p], k->s[p], a->q + j * a->cols + 256 * b + 64 * p);
            else GROUP_PAIR(I[j], k->u[p], k->s[p], a->q + j * a->cols + 256 * b + 64 * p);
        }
    QFN(kq_end)(k, a, b, I, acc, nt, mins);
}

/// The K-quant activations of tokens t… of `x` for a row of `cols`.
static inline QFN(acts) QFN(kacts_at)(const moe_q8_acts *x, int64_t cols, int64_t t) {
    const int64_t SB = cols / 256;
    return (QFN(acts)){x->q256 + t * cols, x->d256 + t * SB, x->sums256 + t * 16 * SB, cols, SB};
}

/// K-quant row r for tokens t…t + nt − 1 (nt ≤ 4) into y: each super-block decoded, then multiplied. `type` is a
/// constant in each instance (`row_k`), so the decoded block stays in registers.
TARGET static inline AI void QFN(row_k_of)(const int32_t type, const moe_matrix *m, int64_t r, const moe_q8_acts *x,
                                           int64_t t, float *y, const int nt) {
    const QFN(acts) a = QFN(kacts_at)(x, m->cols, t);
    const uint8_t *row = (const uint8_t *)m->data + r * ggml_row_bytes(type, m->cols);
    float acc[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < a.blocks; b++) {
        QFN(kblock) k;
        IACC I[4];
        for (int j = 0; j < nt; j++) I[j] = IZERO();
        QFN(decode_k)(type, row, &k, &a, b, I, nt, 1, (const uint8_t *)m->scales);
        QFN(kq_end)(&k, &a, b, I, acc, nt, ggml_has_mins(type));
    }
    for (int j = 0; j < nt; j++) y[(t + j) * m->rows + r] = acc[j];
}

TARGET static inline AI void QFN(row_k)(int32_t type, const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t,
                                        float *y, const int nt) {
    switch (type) {
    case MOE_GGML_Q2_K: QFN(row_k_of)(MOE_GGML_Q2_K, m, r, x, t, y, nt); break;
    case MOE_GGML_Q3_K: QFN(row_k_of)(MOE_GGML_Q3_K, m, r, x, t, y, nt); break;
    case MOE_GGML_Q4_K: QFN(row_k_of)(MOE_GGML_Q4_K, m, r, x, t, y, nt); break;
    case MOE_GGML_Q5_K: QFN(row_k_of)(MOE_GGML_Q5_K, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ2_XXS: QFN(row_k_of)(MOE_GGML_IQ2_XXS, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ2_XS: QFN(row_k_of)(MOE_GGML_IQ2_XS, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ1_S: QFN(row_k_of)(MOE_GGML_IQ1_S, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ3_XXS: QFN(row_k_of)(MOE_GGML_IQ3_XXS, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ3_S: QFN(row_k_of)(MOE_GGML_IQ3_S, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ2_S: QFN(row_k_of)(MOE_GGML_IQ2_S, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ1_M: QFN(row_k_of)(MOE_GGML_IQ1_M, m, r, x, t, y, nt); break;
    case MOE_GGML_IQ4_XS: QFN(row_k_of)(MOE_GGML_IQ4_XS, m, r, x, t, y, nt); break;
    case MOE_GGML_TQ1_0: QFN(row_k_of)(MOE_GGML_TQ1_0, m, r, x, t, y, nt); break;
    case MOE_GGML_TQ2_0: QFN(row_k_of)(MOE_GGML_TQ2_0, m, r, x, t, y, nt); break;
    default: QFN(row_k_of)(MOE_GGML_Q6_K, m, r, x, t, y, nt); break;
    }
}

/// Many tokens (more than 4): rows [b0, b1) for tokens in spans of up to KQ_SPAN, each super-block decoded once per
/// span and multiplied by the span's tokens four at a time (their accumulators parked between super-blocks). Each
/// token's accumulator takes the same steps in the same order as in `row_k`.
TARGET static void QFN(rows_k_many)(int32_t type, const moe_matrix *m, int64_t b0, int64_t b1, const moe_q8_acts *x,
                                    int64_t T, float *y) {
    float park[KQ_SPAN];
    const int64_t SB = m->cols / 256;
    const int mins = ggml_has_mins(type), sgn = ggml_is_signed_k(type);
    for (int64_t t0 = 0; t0 < T; t0 += KQ_SPAN) {
        const int64_t n = T - t0 < KQ_SPAN ? T - t0 : KQ_SPAN;
        for (int64_t r = b0; r < b1; r++) {
            const uint8_t *row = (const uint8_t *)m->data + r * ggml_row_bytes(type, m->cols);
            for (int64_t j = 0; j < n; j++) park[j] = 0;
            for (int64_t b = 0; b < SB; b++) {
                QFN(kblock) k;
                QFN(decode_k)(type, row, &k, NULL, b, NULL, 0, 0, (const uint8_t *)m->scales);
                int64_t j = 0;
                for (; j + 4 <= n; j += 4) {
                    const QFN(acts) a = QFN(kacts_at)(x, m->cols, t0 + j);
                    QFN(kq_block)(&k, &a, b, park + j, 4, mins, sgn);
                }
                const QFN(acts) a = QFN(kacts_at)(x, m->cols, t0 + j);
                switch (n - j) {  // the last one to three tokens together
                case 3: QFN(kq_block)(&k, &a, b, park + j, 3, mins, sgn); break;
                case 2: QFN(kq_block)(&k, &a, b, park + j, 2, mins, sgn); break;
                case 1: QFN(kq_block)(&k, &a, b, park + j, 1, mins, sgn); break;
                default: break;
                }
            }
            for (int64_t j = 0; j < n; j++) y[(t0 + j) * m->rows + r] = park[j];
        }
    }
}

/// Row r of `m` for tokens t…t + nt − 1 (nt ≤ 4).
TARGET static inline AI void QFN(row)(int32_t type, const moe_matrix *m, int64_t r, const moe_q8_acts *x, int64_t t,
                                      float *y, const int nt) {
    if (ggml_is_k_quant(type)) {
        QFN(row_k)(type, m, r, x, t, y, nt);
        return;
    }
    const int64_t G32 = m->cols / 32;
    const QFN(acts) a = {x->q + t * m->cols, x->d + t * G32, x->sums16 + t * 2 * G32, m->cols, G32};
    const uint8_t *row = (const uint8_t *)m->data + r * ggml_row_bytes(type, m->cols);
    __m256 acc[4];
    for (int j = 0; j < nt; j++) acc[j] = _mm256_setzero_ps();
    switch (type) {
    case MOE_GGML_Q4_0: QFN(row_q4_0)(row, &a, acc, nt); break;
    case MOE_GGML_Q4_1: QFN(row_q4_1)(row, &a, acc, nt); break;
    case MOE_GGML_Q5_0: QFN(row_q5_0)(row, &a, acc, nt); break;
    case MOE_GGML_Q5_1: QFN(row_q5_1)(row, &a, acc, nt); break;
    case MOE_GGML_IQ4_NL: QFN(row_iq4_NL)(row, &a, acc, nt); break;
    default: QFN(row_q8_0)(row, &a, acc, nt); break;
    }
    for (int j = 0; j < nt; j++) y[(t + j) * m->rows + r] = hsum8(acc[j]);
}

TARGET static void QFN(rows_4)(int32_t type, const moe_matrix *m, int64_t b0, int64_t b1, const moe_q8_acts *x, int64_t t, float *y) {
    for (int64_t r = b0; r < b1; r++) QFN(row)(type, m, r, x, t, y, 4);
}

TARGET static void QFN(rows_1)(int32_t type, const moe_matrix *m, int64_t b0, int64_t b1, const moe_q8_acts *x, int64_t t, float *y) {
    for (int64_t r = b0; r < b1; r++) QFN(row)(type, m, r, x, t, y, 1);
}

TARGET static void QFN(rows_2)(int32_t type, const moe_matrix *m, int64_t b0, int64_t b1, const moe_q8_acts *x, int64_t t, float *y) {
    for (int64_t r = b0; r < b1; r++) QFN(row)(type, m, r, x, t, y, 2);
}

TARGET static void QFN(rows_3)(int32_t type, const moe_matrix *m, int64_t b0, int64_t b1, const moe_q8_acts *x, int64_t t, float *y) {
    for (int64_t r = b0; r < b1; r++) QFN(row)(type, m, r, x, t, y, 3);
}

TARGET void QFN(moe_gemm_ggml_q8_)(int32_t type, const moe_matrix *m, int64_t r0, int64_t r1, const moe_q8_acts *x,
                                   int64_t T, float *y) {
    if (T > 4 && ggml_is_k_quant(type)) {
        QFN(rows_k_many)(type, m, r0, r1, x, T, y);
        return;
    }
    FOR_ROW_BLOCKS(T, r0, r1, ggml_row_bytes(type, m->cols), b0, b1) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) QFN(rows_4)(type, m, b0, b1, x, t, y);
        switch (T - t) {  // the last one to three tokens together (batched decode)
        case 3: QFN(rows_3)(type, m, b0, b1, x, t, y); break;
        case 2: QFN(rows_2)(type, m, b0, b1, x, t, y); break;
        case 1: QFN(rows_1)(type, m, b0, b1, x, t, y); break;
        default: break;
        }
    }
}

#undef QFN
#undef TARGET
#undef SUFFIX
#undef DOT_ONES
#undef IACC
#undef IZERO
#undef IREDUCE
#undef GROUP_PAIR
#undef PAIR_T
#undef MAKE_PAIR
#undef LEGACY_ROW
#undef SYM_COEFFS
#undef MIN_COEFFS
#undef PUT
#undef PUT_SIGNED
#undef PAIR_ABS
#undef GROUP_PAIR_SIGNED
#undef KQ_EMIT_PARAMS
