/// Chooses which cached expert to evict. Policies see slot indices only; the cache tells them when a slot is
/// filled, used and emptied, and asks for a victim among the slots it may evict.
public protocol EvictionPolicy: Sendable {
    var name: String { get }
    /// A slot now holds a new expert (loaded on demand or by the prefetcher).
    mutating func filled(_ slot: Int, now: UInt64)
    /// The model used the expert in `slot`.
    mutating func used(_ slot: Int, now: UInt64)
    /// The best slot to evict among `candidates` (all evictable), or nil when there are none.
    func victim(among candidates: UnsafeBufferPointer<Int32>, now: UInt64) -> Int?
}

/// Which policy a user asks for with `--policy`.
public enum PolicyKind: String, Sendable, CaseIterable {
    /// Least recently used: evict the expert whose last use is oldest.
    case lru
    /// Frequency-aware: evict the expert with the lowest exponentially decayed use count (half-life in uses of
    /// the whole cache), ties broken by age. Keeps the hot 10% of experts that take most hits through bursts of
    /// one-off experts that would flush an LRU cache.
    case lfu

    public func make(slots: Int) -> any EvictionPolicy {
        switch self {
        case .lru: LRUPolicy(slots: slots)
        case .lfu: DecayedFrequencyPolicy(slots: slots)
        }
    }
}

public struct LRUPolicy: EvictionPolicy {
    public let name = "lru"
    var lastUse: [UInt64]

    public init(slots: Int) { lastUse = Array(repeating: 0, count: slots) }

    public mutating func filled(_ slot: Int, now: UInt64) { lastUse[slot] = now }
    public mutating func used(_ slot: Int, now: UInt64) { lastUse[slot] = now }

    public func victim(among candidates: UnsafeBufferPointer<Int32>, now: UInt64) -> Int? {
        var best: Int? = nil
        for c in candidates {
            let s = Int(c)
            if best == nil || lastUse[s] < lastUse[best!] { best = s }
        }
        return best
    }
}

/// Least-frequently-used with exponential decay, so yesterday's hot experts eventually cool down.
public struct DecayedFrequencyPolicy: EvictionPolicy {
    public let name = "lfu"
    var score: [Double]
    var stamp: [UInt64]
    var lastUse: [UInt64]
    /// Score halves every `halfLife` ticks (a tick is one expert use anywhere in the cache).
    let halfLife: Double

    public init(slots: Int, halfLife: Double? = nil) {
        score = Array(repeating: 0, count: slots)
        stamp = Array(repeating: 0, count: slots)
        lastUse = Array(repeating: 0, count: slots)
        self.halfLife = halfLife ?? Double(max(64, slots * 4))
    }

    func decayed(_ s: Int, _ now: UInt64) -> Double {
        score[s] * exp2(-Double(now &- stamp[s]) / halfLife)
    }

    public mutating func filled(_ slot: Int, now: UInt64) {
        score[slot] = 0
        stamp[slot] = now
        lastUse[slot] = now
    }

    public mutating func used(_ slot: Int, now: UInt64) {
        score[slot] = decayed(slot, now) + 1
        stamp[slot] = now
        lastUse[slot] = now
    }

    public func victim(among candidates: UnsafeBufferPointer<Int32>, now: UInt64) -> Int? {
        var best: Int? = nil
        var bestScore = Double.infinity
        for c in candidates {
            let s = Int(c)
            let v = decayed(s, now)
            if v < bestScore || (v == bestScore && lastUse[s] < lastUse[best!]) {
                best = s
                bestScore = v
            }
        }
        return best
    }
}

#if canImport(Glibc)
import Glibc
#endif
