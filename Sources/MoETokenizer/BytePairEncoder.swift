import Foundation

/// tiktoken's byte-pair encoding over one pre-tokenized piece: start from single bytes and repeatedly merge the
/// adjacent pair whose concatenation has the lowest rank (the leftmost on ties) until no pair is a token.
public struct BytePairEncoder: Sendable {
    /// Token bytes → rank (the token id).
    let ranks: [Data: Int]
    /// Rank → token bytes.
    public let tokens: [Data]

    /// Reads `tiktoken.model`: one `base64(bytes) rank` per line; ranks must be 0..<n, each once.
    public init(tiktokenFile path: String) throws(TokenizerError) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw TokenizerError(file: path, reason: "cannot be read")
        }
        var ranks: [Data: Int] = [:]
        var tokens: [Data?] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let bytes = Data(base64Encoded: String(parts[0])), let rank = Int(parts[1]), rank >= 0 else {
                throw TokenizerError(file: path, reason: "line \(n + 1) is not 'base64 rank'")
            }
            guard ranks[bytes] == nil else { throw TokenizerError(file: path, reason: "line \(n + 1): token listed twice") }
            ranks[bytes] = rank
            if rank >= tokens.count { tokens.append(contentsOf: Array(repeating: nil, count: rank - tokens.count + 1)) }
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

    /// Appends the ids of `piece` (UTF-8 bytes) to `out`.
    public func encode(_ piece: [UInt8], into out: inout [Int]) {
        if let r = ranks[Data(piece)] {
            out.append(r)
            return
        }
        // parts[i] = start of part i; a part spans to the next start.
        var starts = Array(0...piece.count)
        func rank(_ i: Int) -> Int? {
            guard i + 2 < starts.count else { return nil }
            return ranks[Data(piece[starts[i]..<starts[i + 2]])]
        }
        var pairRanks = (0..<(starts.count - 1)).map { rank($0) }
        while true {
            var best = -1
            for i in 0..<(pairRanks.count) {
                if let r = pairRanks[i], best < 0 || r < pairRanks[best]! { best = i }
            }
            guard best >= 0 else { break }
            starts.remove(at: best + 1)
            pairRanks.remove(at: best + 1 < pairRanks.count ? best + 1 : best)
            if best < pairRanks.count { pairRanks[best] = rank(best) }
            if best > 0 { pairRanks[best - 1] = rank(best - 1) }
        }
        for i in 0..<(starts.count - 1) {
            out.append(ranks[Data(piece[starts[i]..<starts[i + 1]])]!)  // single bytes always have a rank (checked at load)
        }
    }
}
