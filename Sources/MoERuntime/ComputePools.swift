import Foundation
import MoESystem
import MoETensor

/// Compute threads per NUMA node, pinned to the node's CPUs: the cache hands each ready expert to a worker
/// of the node whose memory holds it, so the weights are read from local memory. Each worker computes one
/// expert at a time on its own thread (kernels do not fan out again inside a worker). The jobs themselves wait
/// in the slot table (under its lock); this type only owns the threads.
final class ComputePools: @unchecked Sendable {  // `threads` is touched only by init and `join` (the cache's shutdown)
    private var threads: [JoinableThread] = []
    let threadsPerNode: [Int]

    /// `run(j)` computes job `j`; the workers hold it (and what it captures) until `join`.
    init(table: SlotTable, topology: NumaTopology, threads total: Int, run: @escaping (Int) -> Void) {
        let cpus = topology.nodes.map { max(1, $0.cpus.count) }
        let all = cpus.reduce(0, +)
        threadsPerNode = cpus.map { max(1, total * $0 / all) }
        for (n, count) in threadsPerNode.enumerated() {
            let pin = topology.isReal ? topology.nodes[n].cpus : []
            for i in 0..<count {
                let name = "moe-c\(n)-\(i)"  // Linux thread names hold 15 characters
                threads.append(JoinableThread {
                    ThreadAffinity.nameCurrentThread(name)
                    pthread_setspecific(Self.nodeKey, UnsafeRawPointer(bitPattern: n + 1))
                    if !pin.isEmpty { ThreadAffinity.pinCurrentThread(to: pin) }
                    Parallelism.markPoolThread()
                    while let j = table.nextJob(node: n) { run(j) }
                })
            }
        }
    }

    /// The node of the compute worker running the calling thread, or nil on any other thread.
    static var currentNode: Int? {
        let v = Int(bitPattern: pthread_getspecific(nodeKey))
        return v == 0 ? nil : v - 1
    }

    static let nodeKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Waits for every worker to exit (after the table was told to stop) and let go of what it held.
    func join() {
        threads.forEach { $0.join() }
        threads = []
    }
}
