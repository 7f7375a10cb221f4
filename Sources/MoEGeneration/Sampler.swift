import Foundation
import MoETensor

/// How the next token is chosen. Defaults follow Kimi's advice (temperature 0.6); every filter is off unless set.
public struct SamplingParameters: Sendable, Equatable, Codable {
    /// 0: greedy (argmax).
    public var temperature: Float = 0.6
    /// Keep the smallest set of tokens whose probability sums to at least this (1: off).
    public var topP: Float = 1
    /// Keep the k most likely tokens (0: off).
    public var topK: Int = 0
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    public var minP: Float = 0
    /// > 1 makes tokens already in the context less likely (CTRL's rule: divide positive logits, multiply negative).
    public var repetitionPenalty: Float = 1
    /// How many recent tokens the repetition penalty looks at.
    public var repetitionWindow: Int = 256
    /// Fixes the random stream (nil: seeded from the clock).
    public var seed: UInt64? = nil

    public init() {}

    public static let greedy: SamplingParameters = {
        var p = SamplingParameters()
        p.temperature = 0
        return p
    }()

    /// Why parameters cannot be used, or nil.
    public var problem: String? {
        if !(temperature >= 0) { return "temperature must be ≥ 0" }
        if !(topP > 0 && topP <= 1) { return "top-p must be in (0, 1]" }
        if topK < 0 { return "top-k must be ≥ 0" }
        if !(minP >= 0 && minP < 1) { return "min-p must be in [0, 1)" }
        if !(repetitionPenalty > 0) { return "repetition penalty must be > 0" }
        return nil
    }
}

/// Picks tokens from logits: repetition penalty, temperature, top-k, top-p, min-p, then a draw.
public struct Sampler {
    public let parameters: SamplingParameters
    var rng: Xoshiro256
    // Reused scratch (grown once to the vocabulary).
    var order: [Int] = []
    var probs: [Float] = []

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        rng = Xoshiro256(seed: parameters.seed ?? UInt64(UInt64(DispatchTime.now().uptimeNanoseconds) ^ 0x9E37_79B9_7F4A_7C15))
    }

    public mutating func sample(_ logitsIn: ArraySlice<Float>, previous: [Int]) -> Int {
        var logits = Array(logitsIn)
        let p = parameters
        if p.repetitionPenalty != 1 {
            var seen = Set<Int>()
            for t in previous.suffix(p.repetitionWindow) where seen.insert(t).inserted && t < logits.count {
                logits[t] = logits[t] > 0 ? logits[t] / p.repetitionPenalty : logits[t] * p.repetitionPenalty
            }
        }
        if p.temperature == 0 { return Self.argmax(logits) }
        let V = logits.count
        if order.count != V { order = Array(0..<V); probs = Array(repeating: 0, count: V) }
        for i in 0..<V { order[i] = i }
        order.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        var keep = V
        if p.topK > 0 { keep = min(keep, p.topK) }
        // Softmax over the kept tokens, in descending order.
        let m = logits[order[0]]
        var sum: Float = 0
        for i in 0..<keep {
            probs[i] = exp((logits[order[i]] - m) / p.temperature)
            sum += probs[i]
        }
        for i in 0..<keep { probs[i] /= sum }
        if p.topP < 1 {
            var acc: Float = 0
            for i in 0..<keep {
                acc += probs[i]
                if acc >= p.topP { keep = i + 1; break }
            }
        }
        if p.minP > 0 {
            let floor = probs[0] * p.minP
            var k = 1
            while k < keep && probs[k] >= floor { k += 1 }
            keep = k
        }
        var total: Float = 0
        for i in 0..<keep { total += probs[i] }
        var r = Float(rng.nextUnit()) * total
        for i in 0..<keep {
            r -= probs[i]
            if r <= 0 { return order[i] }
        }
        return order[keep - 1]
    }

    static func argmax(_ v: [Float]) -> Int {
        var best = 0
        for i in 1..<v.count where v[i] > v[best] { best = i }
        return best
    }
}

/// xoshiro256** seeded by SplitMix64: small, fast, and reproducible across platforms.
struct Xoshiro256 {
    var s: (UInt64, UInt64, UInt64, UInt64)

    init(seed: UInt64) {
        var g = SplitMix(seed: seed)
        s = (g.next(), g.next(), g.next(), g.next())
    }

    mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in [0, 1).
    mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}
