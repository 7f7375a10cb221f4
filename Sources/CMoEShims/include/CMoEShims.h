// CMoEShims: the thin C layer between Swift and liburing / libnuma.
//
// Every function here exists because Swift cannot reach the thing directly: liburing's API is mostly
// static inline functions and macros, and <liburing.h> must be included after _GNU_SOURCE or Swift's Glibc
// module clashes over fd_set. Names carry the `cmoe_` prefix; no liburing or libnuma type crosses into Swift.
#ifndef CMOE_SHIMS_H
#define CMOE_SHIMS_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Tries to set up (and at once tear down) an io_uring with `entries` entries.
/// Returns 0 when io_uring works here, or a negative errno (-ENOSYS: kernel without io_uring, -EPERM:
/// disabled by `kernel.io_uring_disabled` or a seccomp filter). Why a shim: io_uring_queue_init takes a
/// struct io_uring that Swift should never see.
int cmoe_uring_probe(unsigned entries);

/// Number of configured NUMA nodes, or 0 when libnuma reports NUMA unavailable (numa_available() < 0).
/// Why a shim: numa_available must be called before any other libnuma function, which is easy to forget.
int cmoe_numa_node_count(void);

#ifdef __cplusplus
}
#endif
#endif
