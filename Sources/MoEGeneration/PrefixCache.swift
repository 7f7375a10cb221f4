import Foundation
import MoEModel

/// The KV caches of recent sequences, kept so that a request which resends a conversation (a long system prompt,
/// tool declarations, every earlier turn, then a little more) starts from the longest prefix of its token ids
/// already computed instead of prefilling it all again: llama-server's prompt cache, across sequences.
///
/// A cache's positions depend only on the tokens before them (causal attention, and kernels that give every token
/// the same operations whatever its neighbours), so continuing a cached prefix computes bit for bit what a cold
/// start computes.
///
/// Entries are idle sequences: one is checked out while its request runs (the running sequence's own cache is not
/// counted against the budget) and checked in again with everything the request added. The budget counts
/// allocated bytes; the least recently used entries go first.
/// Sendable: every member is guarded by `lock` (the engine's worker checks out and in; /metrics reads statistics).
public final class PrefixCache: @unchecked Sendable {
    public struct Statistics: Sendable {
        public var entries = 0
        /// Positions held over all entries.
        public var positions = 0
        public var bytes = 0
        public var budgetBytes = 0
        public var evictions = 0
    }

    private struct Entry {
        var tokens: [Int]  // the ids whose positions `kv` holds: tokens.count == kv.count
        let kv: KVCache
        var lastUse: UInt64
    }

    public let budgetBytes: Int
    private let lock = NSLock()
    private var entries: [Entry] = []
    private var clock: UInt64 = 0
    private var evictions = 0

    /// `budgetBytes` 0 keeps nothing: every request starts cold.
    public init(budgetBytes: Int) {
        self.budgetBytes = max(0, budgetBytes)
    }

    /// The cache to run `prompt` on and how many of its leading tokens that cache already holds: the longest
    /// common prefix with a kept sequence, at most `prompt.count − 1` (the last prompt token always runs, for the
    /// logits of the first answer token). An entry used whole is taken out of the pool (the request extends it);
    /// one that continues differently stays, and the request gets a copy of the shared prefix. Without a match,
    /// a fresh cache from `makeCache`.
    public func checkout(prompt: [Int], makeCache: () -> KVCache) -> (cache: KVCache, reused: Int) {
        lock.lock()
        defer { lock.unlock() }
        var best = -1, bestLength = 0
        for (i, e) in entries.enumerated() {
            let n = Self.commonPrefix(e.tokens, prompt)
            if n > bestLength || (n == bestLength && n > 0 && e.lastUse > entries[best].lastUse) {
                best = i
                bestLength = n
            }
        }
        let reused = min(bestLength, prompt.count - 1)
        guard best >= 0, reused > 0 else { return (makeCache(), 0) }
        clock += 1
        if reused == entries[best].tokens.count {
            return (entries.remove(at: best).kv, reused)
        }
        entries[best].lastUse = clock
        return (entries[best].kv.copy(prefix: reused), reused)
    }

    /// Keeps `cache`, which holds the positions of `tokens` (its first `cache.count`), as the most recently used
    /// entry; drops entries it makes redundant (a prefix of it) and then the least recently used while the
    /// budget is exceeded. A cache larger than the whole budget is not kept.
    public func checkin(tokens: [Int], cache: KVCache) {
        precondition(tokens.count == cache.count, "an entry's tokens are the positions its cache holds")
        guard !tokens.isEmpty, budgetBytes > 0 else { return }
        cache.shrinkToFit()
        guard cache.allocatedBytes <= budgetBytes else { return }
        lock.lock()
        defer { lock.unlock() }
        entries.removeAll { $0.tokens.count <= tokens.count && Self.commonPrefix($0.tokens, tokens) == $0.tokens.count }
        clock += 1
        entries.append(Entry(tokens: tokens, kv: cache, lastUse: clock))
        var bytes = entries.reduce(0) { $0 + $1.kv.allocatedBytes }
        while bytes > budgetBytes, let oldest = entries.indices.min(by: { entries[$0].lastUse < entries[$1].lastUse }) {
            bytes -= entries[oldest].kv.allocatedBytes
            entries.remove(at: oldest)
            evictions += 1
        }
    }

    public var statistics: Statistics {
        lock.lock()
        defer { lock.unlock() }
        return Statistics(entries: entries.count, positions: entries.reduce(0) { $0 + $1.tokens.count },
                          bytes: entries.reduce(0) { $0 + $1.kv.allocatedBytes }, budgetBytes: budgetBytes, evictions: evictions)
    }

    static func commonPrefix(_ a: [Int], _ b: [Int]) -> Int {
        var n = 0
        let m = min(a.count, b.count)
        while n < m && a[n] == b[n] { n += 1 }
        return n
    }
}
