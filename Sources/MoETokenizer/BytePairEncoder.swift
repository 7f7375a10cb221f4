import Foundation
import MoESystem

/// tiktoken's byte-pair encoding over one pre-tokenized piece: start from single bytes and repeatedly merge the
/// adjacent pair whose concatenation has the lowest rank (the leftmost on ties) until no pair is a token.
public struct BytePairEncoder: Sendable {
    /// Token bytes → rank (the token id).
    let ranks: [Data: Int]
    /// Rank → token bytes.
    public let tokens: [Data]

    /// Kimi K2's tiktoken.model is 2.4 MB.
    static let maxFileBytes = 256 << 20

    /// Reads `tiktoken.model`: one `base64(bytes) rank` per line; ranks must be 0..<n, each once.
    public init(tiktokenFile path: String) throws(TokenizerError) {
        let raw: [UInt8]
        do { raw = try FileSystem.contents(path, limit: Self.maxFileBytes) } catch {
            throw TokenizerError(file: path, reason: "cannot be read: \(error)")
        }
        guard let text = String(validating: raw, as: UTF8.self) else { throw TokenizerError(file: path, reason: "is not UTF-8 text") }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
        var ranks: [Data: Int] = [:]
        // n lines hold ranks 0..<n, each once: a rank ≥ n is refused before it sizes anything.
        var tokens = [Data?](repeating: nil, count: lines.count)
        for (n, line) in lines.enumerated() {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let bytes = Data(base64Encoded: String(parts[0])), !bytes.isEmpty, let rank = Int(parts[1]),
                  rank >= 0 else {
                throw TokenizerError(file: path, reason: "line \(n + 1) is not 'base64 rank'")
            }
            guard rank < lines.count else {
                throw TokenizerError(file: path, reason: "line \(n + 1): rank \(rank) is not below the \(lines.count) tokens listed")
            }
            guard ranks[bytes] == nil else { throw TokenizerError(file: path, reason: "line \(n + 1): token listed twice") }
            ranks[bytes] = rank
            guard tokens[rank] == nil else { throw TokenizerError(file: path, reason: "line \(n + 1): rank \(rank) used twice") }
            tokens[rank] = bytes
        }
        if let missing = tokens.firstIndex(where: { $0 == nil }) {
            throw TokenizerError(file: path, reason: "rank \(missing) is missing (ranks must be 0..<\(tokens.count))")
        }
        for b in 0..<256 where ranks[Data([UInt8(b)])] == nil {
            throw TokenizerError(file: path, reason: "byte \(b) has no token: a byte-level vocabulary needs all 256")
        }
        self.ranks = ranks
        self.tokens = tokens.map { $0! }
    }

    /// Ranks given directly: `tokens[rank]` is that token's bytes (a GGUF vocabulary, decoded). The same rules as
    /// a tiktoken file: no token twice, none empty, every single byte a token. `source` names where they came from.
    public init(tokens: [Data], source: String) throws(TokenizerError) {
        var ranks: [Data: Int] = [:]
        ranks.reserveCapacity(tokens.count)
        for (rank, bytes) in tokens.enumerated() {
            guard !bytes.isEmpty else { throw TokenizerError(file: source, reason: "token \(rank) is empty") }
            guard ranks.updateValue(rank, forKey: bytes) == nil else {
                throw TokenizerError(file: source, reason: "token \(rank) has the same bytes as token \(ranks[bytes]!)")
            }
        }
        for b in 0..<256 where ranks[Data([UInt8(b)])] == nil {
            throw TokenizerError(file: source, reason: "byte \(b) has no token: a byte-level vocabulary needs all 256")
        }
        self.ranks = ranks
        self.tokens = tokens
    }

    /// Appends the ids of `piece` (UTF-8 bytes) to `out`.
    ///
    /// tiktoken's rule — merge the adjacent pair of lowest rank, the leftmost on ties, until none is a token —
    /// run in O(n log n): parts form a linked list over the piece, candidate pairs wait in a min-heap ordered by
    /// (rank, start), and a popped pair whose parts have changed since it was pushed is skipped. Starts only
    /// ever grow left to right, so the heap's order is tiktoken's order. (The scan-all-pairs loop took a minute
    /// on a 3.9 MB piece of one repeated character; this takes milliseconds.)
    public func encode(_ piece: [UInt8], into out: inout [Int]) {
        if let r = ranks[Data(piece)] {
            out.append(r)
            return
        }
        let n = piece.count
        guard n > 1 else {
            if n == 1 { out.append(ranks[Data(piece)]!) }
            return
        }
        // Part i spans piece[i..<next[i]]; prev/next link the live parts (n marks the end, -1 the start).
        var next = Array(1...n)
        var prev = Array(-1..<(n - 1))
        var alive = [Bool](repeating: true, count: n)
        var heap = PairHeap()
        func push(_ i: Int) {
            let j = next[i]
            guard j < n, let r = ranks[Data(piece[i..<next[j]])] else { return }
            heap.push(rank: r, start: i, end: next[j])
        }
        for i in 0..<(n - 1) { push(i) }
        while let (_, i, end) = heap.pop() {
            // Stale: part i was merged away, or its pair no longer ends where it did when pushed.
            guard alive[i], next[i] < n, next[next[i]] == end else { continue }
            let j = next[i]
            alive[j] = false
            next[i] = next[j]
            if next[j] < n { prev[next[j]] = i }
            if prev[i] >= 0 { push(prev[i]) }
            push(i)
        }
        var i = 0
        while i < n {
            out.append(ranks[Data(piece[i..<next[i]])]!)  // every surviving part is a token (single bytes checked at load)
            i = next[i]
        }
    }
}

/// A binary min-heap of candidate merges ordered by (rank, start).
struct PairHeap {
    private var items: [(rank: Int, start: Int, end: Int)] = []

    private static func less(_ a: (rank: Int, start: Int, end: Int), _ b: (rank: Int, start: Int, end: Int)) -> Bool {
        a.rank != b.rank ? a.rank < b.rank : a.start < b.start
    }

    mutating func push(rank: Int, start: Int, end: Int) {
        items.append((rank, start, end))
        var c = items.count - 1
        while c > 0 {
            let p = (c - 1) / 2
            guard Self.less(items[c], items[p]) else { break }
            items.swapAt(c, p)
            c = p
        }
    }

    mutating func pop() -> (Int, Int, Int)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var p = 0
            while true {
                let l = 2 * p + 1, r = l + 1
                var m = p
                if l < items.count && Self.less(items[l], items[m]) { m = l }
                if r < items.count && Self.less(items[r], items[m]) { m = r }
                guard m != p else { break }
                items.swapAt(p, m)
                p = m
            }
        }
        return (top.rank, top.start, top.end)
    }
}
