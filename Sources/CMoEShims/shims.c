// See include/CMoEShims.h for why each shim exists.
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <malloc.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/uio.h>
#include "CMoEShims.h"

struct cmoe_ring { struct io_uring ring; };

int cmoe_uring_probe(unsigned entries) {
    struct io_uring ring;
    int rc = io_uring_queue_init(entries, &ring, 0);
    if (rc < 0) return rc;
    io_uring_queue_exit(&ring);
    return 0;
}

cmoe_ring *cmoe_ring_create(unsigned entries, int *error) {
    cmoe_ring *r = calloc(1, sizeof(cmoe_ring));
    if (!r) { *error = -ENOMEM; return NULL; }
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) { free(r); *error = rc; return NULL; }
    *error = 0;
    return r;
}

void cmoe_ring_destroy(cmoe_ring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int cmoe_ring_register_buffers(cmoe_ring *r, void *const *bases, const size_t *lengths, unsigned count) {
    struct iovec *iov = calloc(count, sizeof(struct iovec));
    if (!iov) return -ENOMEM;
    for (unsigned i = 0; i < count; i++) { iov[i].iov_base = bases[i]; iov[i].iov_len = lengths[i]; }
    int rc = io_uring_register_buffers(&r->ring, iov, count);
    free(iov);
    return rc;
}

int cmoe_ring_register_files(cmoe_ring *r, const int *fds, unsigned count) {
    return io_uring_register_files(&r->ring, fds, count);
}

int cmoe_ring_queue_read(cmoe_ring *r, int fd, int fixed_file, void *buffer, unsigned length, uint64_t offset,
                         int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    if (buffer_index >= 0) io_uring_prep_read_fixed(sqe, fd, buffer, length, offset, buffer_index);
    else io_uring_prep_read(sqe, fd, buffer, length, offset);
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cmoe_ring_submit(cmoe_ring *r) { return io_uring_submit(&r->ring); }

int cmoe_ring_complete(cmoe_ring *r, int64_t wait_ns, uint64_t *user_data, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    int rc;
    if (wait_ns == 0) {
        rc = io_uring_peek_cqe(&r->ring, &cqe);
        if (rc == -EAGAIN) return 0;
    } else if (wait_ns < 0) {
        rc = io_uring_wait_cqe(&r->ring, &cqe);
    } else {
        struct __kernel_timespec ts = { .tv_sec = wait_ns / 1000000000, .tv_nsec = wait_ns % 1000000000 };
        rc = io_uring_wait_cqe_timeout(&r->ring, &cqe, &ts);
        if (rc == -ETIME) return 0;
    }
    if (rc == -EINTR) return 0;
    if (rc < 0) return rc;
    if (!cqe) return 0;
    *user_data = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    return 1;
}

int cmoe_numa_node_count(void) {
    if (numa_available() < 0) return 0;
    return numa_num_configured_nodes();
}

int cmoe_numa_max_node(void) {
    if (numa_available() < 0) return -1;
    return numa_max_node();
}

int cmoe_numa_node_memory(int node, int64_t *total, int64_t *free_bytes) {
    if (numa_available() < 0) return -1;
    long long f = 0;
    long long t = numa_node_size64(node, &f);
    if (t < 0) return -1;
    *total = t;
    *free_bytes = f;
    return 0;
}

int cmoe_numa_node_cpus(int node, int *cpus, int capacity) {
    if (numa_available() < 0) return -1;
    struct bitmask *mask = numa_allocate_cpumask();
    if (!mask) return -1;
    if (numa_node_to_cpus(node, mask) < 0) { numa_free_cpumask(mask); return -1; }
    int n = 0;
    for (unsigned i = 0; i < mask->size; i++) {
        if (numa_bitmask_isbitset(mask, i)) {
            if (n < capacity) cpus[n] = (int)i;
            n++;
        }
    }
    numa_free_cpumask(mask);
    return n;
}

void *cmoe_numa_alloc_onnode(size_t size, int node) {
    if (numa_available() < 0) return NULL;
    return numa_alloc_onnode(size, node);
}

void cmoe_numa_free(void *p, size_t size) { numa_free(p, size); }

#include <fcntl.h>
int cmoe_o_direct(void) { return O_DIRECT; }

int cmoe_pin_current_thread(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) CPU_SET(cpus[i], &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

void cmoe_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

int cmoe_malloc_fix_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }
