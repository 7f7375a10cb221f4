// The tiling shared by every ISA's kernels: rows × tokens tiles whose accumulators stay in registers.
//
// An ISA file defines, before including this:
//   VEC                      its vector type
//   TARGET                   the function attribute that enables it
//   VZERO()                  a zero vector
//   LOADROW(m, r, g)         declares what STEP needs of group g of row r (its weights, widened)
//   STEP(m, r, g, x, acc)    acc += that group times the activations x
//   FINISH(m, r, x, acc)     the row's scalar result (horizontal sum, then any scalar tail)
//   GROUPS(m)                groups per row
//   PREFIX                   names this encoding's tiles (PREFIX_tile_R_T); PREFIX_row_bytes gives a row's bytes
//   KERNEL                   the exported name
//   PREFETCH_ROW(m, r, g)    optional: prefetches row r's weights some groups past g; a one-token tile (decode,
//                            which reads each weight once) calls it every PREFETCH_EVERY groups
// Each (row, token) pair sees the same operations in the same order in every tile shape.
// KERNEL, PREFIX and LOADROW are undefined at the end, ready for the next encoding.
#define TILE_CAT_(a, b) a##b
#define TILE_CAT(a, b) TILE_CAT_(a, b)
#define TILE_NAME(R, TT) TILE_CAT(PREFIX, _tile_##R##_##TT)

#ifdef PREFETCH_ROW
#define TILE_PREFETCH(R, TT, m, r, g)                                                                            \
    if ((TT) == 1 && (g) % (PREFETCH_EVERY) == 0)                                                                \
        for (int i_ = 0; i_ < (R); i_++) PREFETCH_ROW(m, (r) + i_, g)
#else
#define TILE_PREFETCH(R, TT, m, r, g) (void)0
#endif

#define TILE(R, TT)                                                                                              \
    TARGET static inline __attribute__((always_inline)) void TILE_NAME(R, TT)(                                   \
        const moe_matrix *m, int64_t r, const float *x, int64_t t, float *y) {                                   \
        VEC acc[R][TT];                                                                                          \
        for (int i = 0; i < R; i++)                                                                              \
            for (int j = 0; j < TT; j++) acc[i][j] = VZERO();                                                    \
        const int64_t groups = GROUPS(m);                                                                        \
        for (int64_t g = 0; g < groups; g++) {                                                                   \
            TILE_PREFETCH(R, TT, m, r, g);                                                                       \
            for (int i = 0; i < R; i++) {                                                                        \
                LOADROW(m, r + i, g);                                                                            \
                for (int j = 0; j < TT; j++) STEP(m, r + i, g, x + (t + j) * m->cols, acc[i][j]);                \
            }                                                                                                    \
        }                                                                                                        \
        for (int i = 0; i < R; i++)                                                                              \
            for (int j = 0; j < TT; j++)                                                                         \
                y[(t + j) * m->rows + r + i] = FINISH(m, r + i, x + (t + j) * m->cols, acc[i][j]);               \
    }

TILE(4, 1)
TILE(1, 1)
TILE(2, 4)
TILE(1, 4)
TILE(2, 2)
TILE(1, 2)

#define ROWS(R, TT, b0, b1)                                                                                      \
    {                                                                                                            \
        int64_t r = b0;                                                                                          \
        for (; r + R <= b1; r += R) TILE_NAME(R, TT)(m, r, x, t, y);                                             \
        for (; r < b1; r++) TILE_NAME(1, TT)(m, r, x, t, y);                                                     \
    }

/// Rows in cache-sized blocks when more than four tokens pass (see `row_block`), every token over a block
/// before the next; one block for a single token block.
TARGET void KERNEL(const moe_matrix *m, int64_t r0, int64_t r1, const float *x, int64_t T, float *y) {
    FOR_ROW_BLOCKS(T, r0, r1, TILE_CAT(PREFIX, _row_bytes)(m), b0, b1) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) ROWS(2, 4, b0, b1)
        for (; t + 2 <= T; t += 2) ROWS(2, 2, b0, b1)
        for (; t < T; t++) ROWS(4, 1, b0, b1)
    }
}

#undef KERNEL
#undef PREFIX
#undef LOADROW
#undef TILE_PREFETCH
