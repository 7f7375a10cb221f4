// CMoEShims: the thin C layer between Swift and liburing / libnuma / pthread affinity.
//
// Every function here exists because Swift cannot reach the thing directly: liburing's API is mostly
// static inline functions and macros over a struct Swift should never see; <liburing.h> must be included after
// _GNU_SOURCE or Swift's Glibc module clashes over fd_set; cpu_set_t is manipulated only through macros.
// Names carry the `cmoe_` prefix; no liburing or libnuma type crosses into Swift (rings are opaque pointers).
#ifndef CMOE_SHIMS_H
#define CMOE_SHIMS_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Tries to set up (and at once tear down) an io_uring with `entries` entries.
/// Returns 0 when io_uring works here, or a negative errno (-ENOSYS: kernel without io_uring, -EPERM:
/// disabled by `kernel.io_uring_disabled` or a seccomp filter).
int cmoe_uring_probe(unsigned entries);

/// An io_uring, opaque to Swift.
typedef struct cmoe_ring cmoe_ring;

/// Creates a ring with `entries` submission entries. On failure returns NULL and sets *error to a negative errno.
/// Why a shim: io_uring_queue_init fills a struct io_uring that Swift must not lay out itself.
cmoe_ring *cmoe_ring_create(unsigned entries, int *error);
void cmoe_ring_destroy(cmoe_ring *ring);

/// Registers `count` buffers (base, length pairs) for fixed reads; 0 or a negative errno.
int cmoe_ring_register_buffers(cmoe_ring *ring, void *const *bases, const size_t *lengths, unsigned count);
/// Registers `count` file descriptors for fixed-file reads; 0 or a negative errno.
int cmoe_ring_register_files(cmoe_ring *ring, const int *fds, unsigned count);

/// Queues one read (not yet submitted). `buffer_index` < 0: plain read into `buffer`; otherwise a fixed read
/// from registered buffer `buffer_index`. `fixed_file`: `fd` is an index into the registered files.
/// Returns 0, or -EBUSY when the submission queue is full.
/// Why a shim: io_uring_get_sqe and io_uring_prep_read(_fixed) are static inline.
int cmoe_ring_queue_read(cmoe_ring *ring, int fd, int fixed_file, void *buffer, unsigned length, uint64_t offset,
                         int buffer_index, uint64_t user_data);

/// Submits everything queued; returns the number submitted or a negative errno.
int cmoe_ring_submit(cmoe_ring *ring);

/// Takes one completion. `wait_ns` < 0: block until one arrives; 0: do not wait; > 0: wait at most that long.
/// Returns 1 and fills user_data/result when one was taken, 0 when none arrived in time, or a negative errno.
/// Why a shim: io_uring_peek_cqe / io_uring_cqe_seen are static inline and the cqe layout is the kernel's.
int cmoe_ring_complete(cmoe_ring *ring, int64_t wait_ns, uint64_t *user_data, int32_t *result);

/// Number of configured NUMA nodes, or 0 when libnuma reports NUMA unavailable (numa_available() < 0).
/// Why a shim: numa_available must be called before any other libnuma function.
int cmoe_numa_node_count(void);
/// Highest node number (nodes may be sparse), or -1 without NUMA.
int cmoe_numa_max_node(void);
/// Total and free bytes of `node`; 0 or -1.
int cmoe_numa_node_memory(int node, int64_t *total, int64_t *free_bytes);
/// Writes up to `capacity` CPU ids of `node` into `cpus`; returns how many the node has, or -1.
/// Why a shim: struct bitmask and its accessors.
int cmoe_numa_node_cpus(int node, int *cpus, int capacity);
/// Memory on `node` (numa_alloc_onnode; page aligned), or NULL. Free with cmoe_numa_free.
void *cmoe_numa_alloc_onnode(size_t size, int node);
void cmoe_numa_free(void *p, size_t size);

/// The O_DIRECT open flag (only visible to C with _GNU_SOURCE, and its value differs between architectures).
int cmoe_o_direct(void);

/// Pins the calling thread to the given CPUs; 0 or an errno. Why a shim: CPU_ZERO/CPU_SET are macros.
int cmoe_pin_current_thread(const int *cpus, int count);

/// Names the calling thread (15 characters at most), as ps and top show it. Why a shim: pthread_setname_np is
/// a GNU extension that Swift's Glibc module does not export.
void cmoe_set_thread_name(const char *name);

/// Fixes glibc's mmap threshold at `bytes` (no dynamic raising after large frees). Returns 1 on success.
/// Why a shim: mallopt and M_MMAP_THRESHOLD live in <malloc.h>, which Swift's Glibc module does not import.
int cmoe_malloc_fix_mmap_threshold(int bytes);

#ifdef __cplusplus
}
#endif
#endif
