import Foundation
import MoESystem
import MoETensor

/// Where prefetch candidates come from (`--prefetch`).
public enum PrefetchMode: String, Sendable, CaseIterable {
    case off
    /// Speculative routing: later layers' routers applied to the current hidden state.
    case router
    /// Router statistics gathered online: decayed per-layer frequencies and layer-to-layer co-activation.
    case stats
    /// Both, router predictions ranked first.
    case both
}

/// Everything the expert cache needs to know that is not in the store.
public struct CacheConfiguration: Sendable {
    /// Bytes of expert slots per node, in the order of `topology.nodes`.
    public var budgets: [Int]
    public var policy: PolicyKind = .lru
    public var engine: ReadEngine = .uring
    /// Reads in flight per node.
    public var ioDepth: Int = 32
    public var prefetch: PrefetchMode = .off
    /// How many MoE layers ahead the router prefetcher looks.
    public var prefetchDepth: Int = 1
    public var topology: NumaTopology
    /// Open expert files with O_DIRECT (when the filesystem allows it).
    public var directIO: Bool = true
    /// Compute threads computing experts, split over the nodes in proportion to their CPUs (at least one each).
    public var computeThreads: Int = ProcessInfoCores.active
    /// Reads of one expert that may fail in a row (I/O error, short read, checksum mismatch) before the request
    /// waiting for it fails; the next request for that expert tries again.
    public var readAttempts: Int = 3
    /// Threads per node that verify finished reads; nil: one per eight CPUs of the node, 1…4.
    public var checksumThreads: Int? = nil
    /// How long a node whose reader failed waits for the reads it had started before retiring their slots.
    public var drainLimit: Duration = .seconds(5)
    /// Faults to inject into the reads (tests only; empty: none).
    public var faults = FaultPlan()
    /// Where the cache says, once, that a node's reader failed and what replaced it.
    public var log: @Sendable (String) -> Void = { line in
        FileHandle.standardError.write(Data(("moestream: " + line + "\n").utf8))
    }

    public init(budgets: [Int], topology: NumaTopology) {
        self.budgets = budgets
        self.topology = topology
    }

    /// One budget split evenly over the topology's nodes.
    public init(totalBudget: Int, topology: NumaTopology) {
        let n = topology.nodes.count
        self.init(budgets: (0..<n).map { totalBudget / n + ($0 < totalBudget % n ? 1 : 0) }, topology: topology)
    }
}
