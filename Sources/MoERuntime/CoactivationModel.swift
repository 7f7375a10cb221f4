/// Router statistics learned online: per-layer decayed expert frequencies and counts of which experts of the
/// next MoE layer followed which of this one. Used by the prefetcher and by the trace simulator alike.
struct CoactivationModel {
    let layers: Int
    let experts: Int
    let topK: Int
    /// [ordinal][expert]
    var frequency: [[Float]]
    /// [ordinal][previous · E + next]: transitions from layer ordinal to ordinal + 1.
    var coactivation: [[Float]]
    /// The previous single-token request: its layer and experts (`previousCount` of them).
    var previousOrdinal = -1
    var previous: [Int]
    var previousCount = 0
    /// Scores of the next layer's experts, reused by every prediction.
    var score: [Float]
    let decay: Float = 0.995

    init(layers: Int, experts: Int, topK: Int) {
        self.layers = layers
        self.experts = experts
        self.topK = topK
        frequency = Array(repeating: Array(repeating: 0, count: experts), count: layers)
        coactivation = Array(repeating: Array(repeating: 0, count: experts * experts), count: layers)
        previous = Array(repeating: 0, count: max(1, topK))
        score = Array(repeating: 0, count: experts)
    }

    /// Learns from one request of layer `ordinal`. Pairs are learned only from single-token requests: a prefill
    /// batch's union says nothing about which expert followed which.
    mutating func observe(ordinal: Int, experts chosen: [Int]) {
        for e in 0..<experts { frequency[ordinal][e] *= decay }
        for e in chosen { frequency[ordinal][e] += 1 }
        guard chosen.count <= topK else {
            previousOrdinal = -1
            return
        }
        if previousOrdinal == ordinal - 1 && previousOrdinal >= 0 {
            for a in previous[0..<previousCount] { for b in chosen { coactivation[previousOrdinal][a * experts + b] += 1 } }
        }
        previousOrdinal = ordinal
        previousCount = chosen.count
        for (i, e) in chosen.enumerated() { previous[i] = e }
    }

    /// Writes the (at most `topK`) experts of layer `ordinal + 1` most likely to follow `chosen` in layer
    /// `ordinal` into `out`, best first (co-activation counts, then the next layer's frequency as a prior);
    /// returns how many.
    mutating func predictNext(ordinal: Int, after chosen: [Int], into out: UnsafeMutablePointer<Int32>) -> Int {
        guard ordinal + 1 < layers, chosen.count <= topK else { return 0 }
        var total: Float = 0
        for b in 0..<experts { total += frequency[ordinal + 1][b] }
        total = max(1, total)
        for b in 0..<experts { score[b] = 0.5 * Float(chosen.count) * frequency[ordinal + 1][b] / total }
        for a in chosen { for b in 0..<experts { score[b] += coactivation[ordinal][a * experts + b] } }
        var n = 0
        for _ in 0..<topK {
            var best = -1
            for b in 0..<experts where score[b] > 0 && (best < 0 || score[b] > score[best]) { best = b }
            guard best >= 0 else { break }
            out[n] = Int32(best)
            n += 1
            score[best] = 0
        }
        return n
    }

    /// The prediction as an array (the simulator's convenience).
    mutating func predictNext(ordinal: Int, after chosen: [Int]) -> [Int] {
        var buffer = [Int32](repeating: 0, count: max(1, topK))
        let n = buffer.withUnsafeMutableBufferPointer { predictNext(ordinal: ordinal, after: chosen, into: $0.baseAddress!) }
        return buffer.prefix(n).map(Int.init)
    }
}
