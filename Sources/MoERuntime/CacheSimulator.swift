/// Replays a routing trace against a cache of `slots` experts, without reading anything: hit rates of the
/// eviction policies, of the prefetchers, and of Belady's optimal (clairvoyant) eviction at the same budget.
public struct CacheSimulator {
    public struct Result: Sendable, Equatable {
        public var name: String
        public var requests = 0
        public var hits = 0
        public var prefetchHits = 0
        public var prefetchesIssued = 0
        public var wastedPrefetches = 0
        public var hitRate: Double { requests == 0 ? 0 : Double(hits) / Double(requests) }
        /// Prefetched experts that were used, over prefetches issued.
        public var precision: Double? { prefetchesIssued == 0 ? nil : Double(prefetchHits) / Double(prefetchesIssued) }
        /// Requests served by a prefetch, over those a plain cache would have missed (prefetch hits + misses).
        public var recall: Double? {
            prefetchesIssued == 0 ? nil : Double(prefetchHits) / Double(max(1, prefetchHits + requests - hits))
        }
    }

    public let trace: RoutingTrace
    public let slots: Int
    let ordinal: [Int: Int]

    public init(trace: RoutingTrace, slots: Int) {
        self.trace = trace
        self.slots = max(1, slots)
        ordinal = Dictionary(uniqueKeysWithValues: trace.header.moeLayers.enumerated().map { ($1, $0) })
    }

    @inline(__always) func key(_ layer: Int, _ e: Int) -> Int { ordinal[layer]! * trace.header.experts + e }

    /// A policy-driven cache, optionally with a prefetcher (router predictions from the trace, and/or the
    /// co-activation model learned while replaying).
    public func run(policy: PolicyKind, prefetch: PrefetchMode = .off) -> Result {
        let mode = prefetch
        var r = Result(name: policy.rawValue + (mode == .off ? "" : " + \(mode.rawValue) prefetch"))
        var p = policy.make(slots: slots)
        var slotKey = [Int](repeating: -1, count: slots)
        var slotOf: [Int: Int] = [:]
        var prefetched = [Bool](repeating: false, count: slots)
        var tick: UInt64 = 0
        var learned = CoactivationModel(layers: trace.header.moeLayers.count, experts: trace.header.experts, topK: trace.header.topK)
        var pinned = Set<Int>()
        var candidates = [Int32](repeating: 0, count: slots)

        func victim(protectPrefetched: Bool) -> Int? {
            if let empty = slotKey.firstIndex(of: -1) { return empty }
            var n = 0
            for s in 0..<slots where !pinned.contains(s) && !(protectPrefetched && prefetched[s]) {
                candidates[n] = Int32(s)
                n += 1
            }
            return candidates.withUnsafeBufferPointer { p.victim(among: UnsafeBufferPointer(rebasing: $0[0..<n]), now: tick) }
        }
        func place(_ k: Int, in s: Int, byPrefetch: Bool) {
            if slotKey[s] >= 0 {
                slotOf[slotKey[s]] = nil
                if prefetched[s] { r.wastedPrefetches += 1 }
            }
            slotKey[s] = k
            slotOf[k] = s
            prefetched[s] = byPrefetch
            p.filled(s, now: tick)
        }
        func readAhead(_ layer: Int, _ experts: [Int]) {
            for e in experts {
                let k = key(layer, e)
                guard slotOf[k] == nil, let v = victim(protectPrefetched: true) else { continue }
                place(k, in: v, byPrefetch: true)
                r.prefetchesIssued += 1
            }
        }

        for event in trace.events {
            switch event {
            case .prediction(_, _, let predicted):
                guard mode == .router || mode == .both else { continue }
                for (layer, experts) in predicted.sorted(by: { $0.key < $1.key }) { readAhead(layer, experts) }
            case .request(_, let layer, let experts):
                pinned.removeAll(keepingCapacity: true)
                let protect = experts.count <= slots
                for e in experts {
                    let k = key(layer, e)
                    r.requests += 1
                    tick &+= 1
                    if let s = slotOf[k] {
                        r.hits += 1
                        if prefetched[s] { r.prefetchHits += 1; prefetched[s] = false }
                        p.used(s, now: tick)
                        if protect { pinned.insert(s) }
                    } else if let v = victim(protectPrefetched: false) {
                        place(k, in: v, byPrefetch: false)
                        p.used(v, now: tick)
                        if protect { pinned.insert(v) }
                    }
                }
                pinned.removeAll(keepingCapacity: true)
                if mode == .stats || mode == .both {
                    let o = ordinal[layer]!
                    learned.observe(ordinal: o, experts: experts)
                    let next = learned.predictNext(ordinal: o, after: experts)
                    if !next.isEmpty { readAhead(trace.header.moeLayers[o + 1], next) }
                }
            }
        }
        return r
    }

    /// Belady's MIN: on a miss with the cache full, evict the expert whose next request is farthest away (or
    /// never comes). No policy that does not know the future can do better at this budget.
    public func belady() -> Result {
        var r = Result(name: "belady (optimal)")
        // Flatten the requests and find, for each access, when its expert is next asked for.
        var accesses: [(key: Int, request: Int)] = []
        var requests = 0
        for event in trace.events {
            guard case .request(_, let layer, let experts) = event else { continue }
            for e in experts { accesses.append((key(layer, e), requests)) }
            requests += 1
        }
        var nextUse = [Int](repeating: Int.max, count: accesses.count)
        var last: [Int: Int] = [:]
        for i in stride(from: accesses.count - 1, through: 0, by: -1) {
            nextUse[i] = last[accesses[i].key] ?? Int.max
            last[accesses[i].key] = i
        }
        var resident: [Int: Int] = [:]  // key → its next use
        for (i, a) in accesses.enumerated() {
            r.requests += 1
            if resident[a.key] == nil && resident.count >= slots {
                // Evict the expert needed farthest in the future. No pinning constraint: the cache computes a
                // request's experts as they arrive, so this is the true optimum for demand caching.
                var victim: (key: Int, next: Int)? = nil
                for (k, next) in resident where victim == nil || next > victim!.next { victim = (k, next) }
                if let victim { resident[victim.key] = nil }
            } else if resident[a.key] != nil {
                r.hits += 1
            }
            resident[a.key] = nextUse[i]
        }
        return r
    }
}
