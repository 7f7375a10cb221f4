import Foundation

/// What the expert cache did, per MoE layer and in total. A value: take a snapshot with
/// `ExpertCache.statistics()`.
///
/// Every expert the model asks for is counted once as exactly one of:
/// - **demand hit**: already in the cache, put there by an earlier demand load;
/// - **prefetch hit**: in the cache, put there by the prefetcher, and this is its first use since;
/// - **late prefetch**: the prefetcher had started reading it but it had not arrived: the model waited;
/// - **miss**: not in the cache and not on its way: read on demand, the model waited.
/// A **wasted prefetch** is an expert the prefetcher loaded that was evicted without ever being used.
public struct CacheStatistics: Codable, Sendable, Equatable {
    public struct Layer: Codable, Sendable, Equatable {
        public var layer: Int
        public var demandHits = 0
        public var prefetchHits = 0
        public var latePrefetches = 0
        public var misses = 0
        public var wastedPrefetches = 0
        public var prefetchesIssued = 0
        /// Seconds the model waited for this layer's experts (misses and late prefetches).
        public var stallSeconds = 0.0
        public var lateStallSeconds = 0.0
        public var bytesRead = 0
        /// How often each expert was asked for.
        public var activations: [Int]

        public init(layer: Int, experts: Int) {
            self.layer = layer
            activations = Array(repeating: 0, count: experts)
        }

        public var requests: Int { demandHits + prefetchHits + latePrefetches + misses }
        public var hits: Int { demandHits + prefetchHits }
        public var hitRate: Double { requests == 0 ? 0 : Double(hits) / Double(requests) }
    }

    public struct Node: Codable, Sendable, Equatable {
        public var node: Int
        public var slots: Int
        public var occupied: Int
        public var budgetBytes: Int
        public var bytesRead: Int
        /// True when the memory is bound to this node (numa_alloc_onnode), false on one-node or fake topologies.
        public var bound: Bool
        public var occupancy: Double { slots == 0 ? 0 : Double(occupied) / Double(slots) }
    }

    public var layers: [Layer]
    public var nodes: [Node]
    /// Tokens the model ran (prompt and generated).
    public var tokens = 0
    /// The matrix kernels and compute threads the run used (`--kernels`, `--threads`).
    public var kernels = ""
    /// `--expert-activations`: fp32 or q8.
    public var expertActivations = "fp32"
    /// `--resident-activations`: fp32, q8, or bf16x2 with its kernel (`bf16x2 (amx)`, `bf16x2 (vdpbf16ps)`).
    public var residentActivations = "fp32"
    /// `--resident-weights`: which resident matrices the run multiplied (a store's int8 companion, its bf16 ones,
    /// or the only form it has).
    public var residentWeights = "as stored"
    /// `--kv-cache`: what the KV cache stores its rows in (f32 or bf16).
    public var kvCache = "f32"
    /// `--prefill-chunk`: prompt tokens a pass's per-token stages take at a time.
    public var prefillChunk = 0
    /// `--prefill-window`: prompt tokens one pass takes through all the layers.
    public var prefillWindow = 0
    public var threads = 0
    /// Experts read by `--preload` before the first request (not counted as requests or misses).
    public var preloadedExperts = 0
    /// Seconds at least one read was in flight on some node: bytes read over this is the read bandwidth.
    public var readBusySeconds = 0.0
    public var engine = ""
    public var policy = ""
    public var prefetch = ""
    public var prefetchDepth = 0
    public var ioDepth = 0
    public var extentBytes = 0
    public var direct = false
    /// Reads repeated after an I/O error, a short read or a checksum mismatch.
    public var readRetries = 0
    /// Reads that failed `readAttempts` times in a row (each failed the request waiting for it).
    public var failedReads = 0
    /// Completions for a slot's earlier read, arriving after the slot was read again (ignored).
    public var staleCompletions = 0
    /// Times a node's reader failed and was replaced by a pread pool.
    public var readerFailures = 0
    /// Slots retired because their read was in flight on a failed ring and never came back.
    public var retiredSlots = 0
    public var readAttempts = 0
    public var checksumThreads = 0

    public var total: Layer {
        var t = Layer(layer: -1, experts: 0)
        for l in layers {
            t.demandHits += l.demandHits
            t.prefetchHits += l.prefetchHits
            t.latePrefetches += l.latePrefetches
            t.misses += l.misses
            t.wastedPrefetches += l.wastedPrefetches
            t.prefetchesIssued += l.prefetchesIssued
            t.stallSeconds += l.stallSeconds
            t.lateStallSeconds += l.lateStallSeconds
            t.bytesRead += l.bytesRead
        }
        return t
    }

    public var readGBps: Double { readBusySeconds > 0 ? Double(total.bytesRead) / readBusySeconds / 1e9 : 0 }
    public var stallPerToken: Double { tokens > 0 ? total.stallSeconds / Double(tokens) : 0 }

    /// The human-readable table printed after `generate`.
    public func report() -> String {
        var out: [String] = []
        let t = total
        func pct(_ a: Int, _ b: Int) -> String { b == 0 ? "  -  " : String(format: "%5.1f%%", 100 * Double(a) / Double(b)) }
        out.append(String(format: "expert cache: %@ policy, %@ reads (%@, depth %d), prefetch %@ (depth %d)", policy, engine,
                          direct ? "O_DIRECT" : "buffered", ioDepth, prefetch, prefetchDepth))
        out.append("layer  requests   hit%  demand  prefetch  late  miss  wasted   stall ms    read MB")
        for l in layers {
            out.append(String(format: "%5d  %8d  %@  %6d  %8d  %4d  %4d  %6d  %9.1f  %9.1f", l.layer, l.requests, pct(l.hits, l.requests),
                              l.demandHits, l.prefetchHits, l.latePrefetches, l.misses, l.wastedPrefetches,
                              l.stallSeconds * 1e3, Double(l.bytesRead) / 1e6))
        }
        out.append(String(format: "  all  %8d  %@  %6d  %8d  %4d  %4d  %6d  %9.1f  %9.1f", t.requests, pct(t.hits, t.requests),
                          t.demandHits, t.prefetchHits, t.latePrefetches, t.misses, t.wastedPrefetches,
                          t.stallSeconds * 1e3, Double(t.bytesRead) / 1e6))
        if readRetries + failedReads + staleCompletions + readerFailures + retiredSlots > 0 {
            out.append("read faults: \(readRetries) retried, \(failedReads) failed after \(readAttempts) attempts, "
                       + "\(staleCompletions) stale completions ignored, \(readerFailures) reader failures, \(retiredSlots) slots retired")
        }
        if preloadedExperts > 0 { out.append("preloaded \(preloadedExperts) experts before the first request") }
        if t.prefetchesIssued > 0 {
            let used = t.prefetchHits + t.latePrefetches
            out.append(String(format: "prefetch: %d issued, %d used (precision %@), covered %@ of would-be misses",
                              t.prefetchesIssued, used, pct(used, t.prefetchesIssued), pct(used, used + t.misses)))
        }
        out.append(String(format: "read %.1f MB at %.2f GB/s; stall %.1f ms per token over %d tokens", Double(t.bytesRead) / 1e6,
                          readGBps, stallPerToken * 1e3, tokens))
        for n in nodes {
            out.append(String(format: "node %d: %d/%d slots (%.0f%%), budget %.1f MB%@, read %.1f MB", n.node, n.occupied, n.slots,
                              n.occupancy * 100, Double(n.budgetBytes) / 1e6, n.bound ? " (bound)" : "", Double(n.bytesRead) / 1e6))
        }
        return out.joined(separator: "\n")
    }

    public func json() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try e.encode(self)
    }
}
