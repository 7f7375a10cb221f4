import Foundation
import MoESystem
import MoETensor

/// Compute threads per NUMA node, pinned to the node's CPUs: the cache hands each ready expert to a worker
/// of the node whose memory holds it, so the weights are read from local memory. Each worker computes one
/// expert at a time on its own thread (kernels do not fan out again inside a worker).
///
/// Work items are indices into the cache's job table; the queues are fixed rings, so dispatching allocates
/// nothing. All waiting uses the cache's one lock and condition.
final class ComputePools: @unchecked Sendable {
    /// Strong: the workers keep the cache alive until `shutdown()` stops them.
    let cache: ExpertCache
    /// Per node: ring of job indices.
    private let rings: [UnsafeMutablePointer<Int32>]
    private var heads: [Int]
    private var counts: [Int]
    private let capacity: Int
    private var threads: [JoinableThread] = []
    let threadsPerNode: [Int]

    init(cache: ExpertCache, topology: NumaTopology, threads total: Int, capacity: Int) {
        self.cache = cache
        self.capacity = max(1, capacity)
        let nodes = topology.nodes.count
        let cpus = topology.nodes.map { max(1, $0.cpus.count) }
        let all = cpus.reduce(0, +)
        threadsPerNode = cpus.map { max(1, total * $0 / all) }
        rings = (0..<nodes).map { _ in .allocate(capacity: max(1, capacity)) }
        heads = Array(repeating: 0, count: nodes)
        counts = Array(repeating: 0, count: nodes)
        for (n, count) in threadsPerNode.enumerated() {
            let pin = topology.isReal ? topology.nodes[n].cpus : []
            for i in 0..<count {
                let name = "moe-c\(n)-\(i)"  // Linux thread names hold 15 characters
                threads.append(JoinableThread { [self] in
                    ThreadAffinity.nameCurrentThread(name)
                    pthread_setspecific(Self.nodeKey, UnsafeRawPointer(bitPattern: n + 1))
                    if !pin.isEmpty { ThreadAffinity.pinCurrentThread(to: pin) }
                    Parallelism.markPoolThread()
                    work(node: n)
                })
            }
        }
    }

    deinit { rings.forEach { $0.deallocate() } }

    /// The node of the compute worker running the calling thread, or nil on any other thread.
    static var currentNode: Int? {
        let v = Int(bitPattern: pthread_getspecific(nodeKey))
        return v == 0 ? nil : v - 1
    }

    nonisolated(unsafe) static let nodeKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Queues job `j` on `node`. Cache lock held.
    func enqueue(_ j: Int, node: Int) {
        precondition(counts[node] < capacity, "more jobs than one request can have")
        rings[node][(heads[node] + counts[node]) % capacity] = Int32(j)
        counts[node] += 1
        cache.lock.broadcast()
    }

    private func work(node n: Int) {
        let c = cache
        while true {
            c.lock.lock()
            while counts[n] == 0 && !c.stopping { c.lock.wait() }
            if counts[n] == 0 && c.stopping {
                c.lock.unlock()
                return
            }
            let j = Int(rings[n][heads[n]])
            heads[n] = (heads[n] + 1) % capacity
            counts[n] -= 1
            c.lock.unlock()
            c.runJob(j)
        }
    }

    /// Waits for every worker to exit (after `cache.stopping` is set and broadcast).
    /// Waits for every worker to exit (after `cache.stopping` is set and broadcast) and let go of this pool.
    func join() {
        threads.forEach { $0.join() }
        threads = []
    }
}
