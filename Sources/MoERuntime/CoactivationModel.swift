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
    var previous: (ordinal: Int, experts: [Int])? = nil
    let decay: Float = 0.995

    init(layers: Int, experts: Int, topK: Int) {
        self.layers = layers
        self.experts = experts
        self.topK = topK
        frequency = Array(repeating: Array(repeating: 0, count: experts), count: layers)
        coactivation = Array(repeating: Array(repeating: 0, count: experts * experts), count: layers)
    }

    /// Learns from one request of layer `ordinal`. Pairs are learned only from single-token requests: a prefill
    /// batch's union says nothing about which expert followed which.
    mutating func observe(ordinal: Int, experts chosen: [Int]) {
        for e in 0..<experts { frequency[ordinal][e] *= decay }
        for e in chosen { frequency[ordinal][e] += 1 }
        if chosen.count <= topK {
            if let p = previous, p.ordinal == ordinal - 1 {
                for a in p.experts { for b in chosen { coactivation[p.ordinal][a * experts + b] += 1 } }
            }
            previous = (ordinal, chosen)
        } else {
            previous = nil
        }
    }

    /// The `topK` experts of layer `ordinal + 1` most likely to follow `chosen` in layer `ordinal`, best first
    /// (co-activation counts, then the next layer's frequency as a tie-breaker and prior).
    func predictNext(ordinal: Int, after chosen: [Int]) -> [Int] {
        guard ordinal + 1 < layers, chosen.count <= topK else { return [] }
        var score = [Float](repeating: 0, count: experts)
        for a in chosen { for b in 0..<experts { score[b] += coactivation[ordinal][a * experts + b] } }
        let freq = frequency[ordinal + 1]
        let total = max(1, freq.reduce(0, +))
        for b in 0..<experts { score[b] += 0.5 * Float(chosen.count) * freq[b] / total }
        return Array((0..<experts).sorted { score[$0] > score[$1] }.prefix(topK).filter { score[$0] > 0 })
    }
}
