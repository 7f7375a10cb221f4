// See include/CMoEShims.h for why each shim exists.
#define _GNU_SOURCE
#include <liburing.h>
#include <numa.h>
#include "CMoEShims.h"

int cmoe_uring_probe(unsigned entries) {
    struct io_uring ring;
    int rc = io_uring_queue_init(entries, &ring, 0);
    if (rc < 0) return rc;
    io_uring_queue_exit(&ring);
    return 0;
}

int cmoe_numa_node_count(void) {
    if (numa_available() < 0) return 0;
    return numa_num_configured_nodes();
}
