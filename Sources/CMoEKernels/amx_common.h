// What the two AMX kernel files share (kernels_amx.c: bf16; ggml_q8_amx.h: int8): whether this process may use the
// tiles, and the one tile configuration both load. Internal to CMoEKernels; x86-64 Linux only.
#ifndef CMOEKERNELS_AMX_COMMON_H
#define CMOEKERNELS_AMX_COMMON_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/// Whether the CPU has AMX-TILE and the AMX kind at CPUID.(7,0):EDX bit `kind_bit` (22: BF16, 25: INT8), and Linux
/// granted this process the tile state. Linux hands it out on request (ARCH_REQ_XCOMP_PERM for
/// XFEATURE_XTILEDATA), for the whole process; without the grant the first tile instruction dies of SIGILL.
static inline int amx_tiles_granted(int kind_bit) {
    uint32_t a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const int tile = (d >> 24) & 1, kind = (d >> kind_bit) & 1;
    return tile && kind && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

/// `amx_tiles_granted(kind_bit)` and `prerequisite`, asked once for the process (`*state` is −1 until then).
static inline int amx_ready(int *state, int kind_bit, int prerequisite) {
    if (*state < 0) *state = prerequisite && amx_tiles_granted(kind_bit) ? 1 : 0;
    return *state;
}

/// Loads the configuration every AMX kernel here uses: eight tiles of 16 rows × 64 bytes (palette 1).
__attribute__((target("amx-tile"))) static inline void amx_configure_16x64(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
}
#endif
