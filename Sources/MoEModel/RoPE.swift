import Foundation
import MoECheckpoint

/// Rotary embedding of MLA's shared positional part (`qk_rope_head_dim` values per head), with YaRN.
///
/// Computed exactly as transformers' `_compute_yarn_parameters` does, in fp32 where it uses fp32:
///   inv_i = θ^(−2i/d);  γ_i = clamp((i − low)/(high − low), 0, 1) with low/high from beta_fast/beta_slow;
///   inv_i' = inv_i/factor · γ_i + inv_i · (1 − γ_i);  cos/sin are multiplied by the attention factor.
public struct RoPE: Sendable {
    /// [d/2] inverse frequencies.
    public let inverseFrequencies: [Float]
    /// Multiplier on cos and sin (YaRN's attention factor; 1 for plain RoPE and for Kimi K2).
    public let attentionFactor: Float
    /// Whether pairs are adjacent (2i, 2i+1) as DeepSeek stores them, or the two halves (i, i + d/2).
    public let interleaved: Bool
    public let dimension: Int

    public init(config: ModelConfig) {
        let d = config.qkRopeHeadDim
        let r = config.rope
        dimension = d
        interleaved = config.ropeInterleave
        let half = d / 2
        let posFreqs: [Float] = (0..<half).map { i in Float(pow(Double(r.theta), Double(Float(2 * i) / Float(d)))) }
        switch r.kind {
        case .plain:
            inverseFrequencies = posFreqs.map { 1 / $0 }
            attentionFactor = 1
        case .yarn:
            func correctionDim(_ rotations: Double) -> Double {
                Double(d) * log(Double(r.originalMaxPositionEmbeddings) / (rotations * 2 * .pi)) / (2 * log(r.theta))
            }
            var low = correctionDim(r.betaFast), high = correctionDim(r.betaSlow)
            if r.truncate { (low, high) = (floor(low), ceil(high)) }
            low = max(low, 0)
            high = min(high, Double(d - 1))
            if low == high { high += 0.001 }
            let factor = Float(r.factor)
            inverseFrequencies = (0..<half).map { i in
                let ramp = min(max((Float(i) - Float(low)) / Float(high - low), 0), 1)
                let extrapolation = 1 - ramp
                let interpolated = 1 / (factor * posFreqs[i])
                let extrapolated = 1 / posFreqs[i]
                return interpolated * (1 - extrapolation) + extrapolated * extrapolation
            }
            if let a = r.attentionFactor {
                attentionFactor = Float(a)
            } else if let m = r.mscale, let mAll = r.mscaleAllDim, m != 0, mAll != 0 {
                attentionFactor = Float(Self.yarnMscale(r.factor, m) / Self.yarnMscale(r.factor, mAll))
            } else {
                attentionFactor = Float(Self.yarnMscale(r.factor, 1))
            }
        }
    }

    /// YaRN's magnitude correction `0.1 · m · ln(s) + 1` (1 when s ≤ 1).
    public static func yarnMscale(_ scale: Double, _ m: Double) -> Double {
        scale <= 1 ? 1 : 0.1 * m * log(scale) + 1
    }

    /// The attention softmax scale: `qk_head_dim^−½`, times `mscale(factor, mscale_all_dim)²` under YaRN.
    public static func softmaxScale(config: ModelConfig) -> Float {
        var scale = 1 / Double(config.qkHeadDim).squareRoot()
        if config.rope.kind == .yarn, let mAll = config.rope.mscaleAllDim, mAll != 0 {
            let m = yarnMscale(config.rope.factor, mAll)
            scale *= m * m
        }
        return Float(scale)
    }

    /// Fills `cos`/`sin` [d/2] for `position`.
    public func angles(position: Int, cos c: UnsafeMutablePointer<Float>, sin s: UnsafeMutablePointer<Float>) {
        for i in 0..<(dimension / 2) {
            let a = Float(position) * inverseFrequencies[i]
            c[i] = Foundation.cos(a) * attentionFactor
            s[i] = Foundation.sin(a) * attentionFactor
        }
    }

    /// Rotates `x [d]` in place. The output is laid out as transformers leaves it: the first halves of the pairs,
    /// then the second halves (for interleaved input this is a permutation that q and k share, so q·k is unchanged).
    public func rotate(_ x: UnsafeMutablePointer<Float>, cos c: UnsafePointer<Float>, sin s: UnsafePointer<Float>) {
        let half = dimension / 2
        withUnsafeTemporaryAllocation(of: Float.self, capacity: dimension) { tmp in
            for i in 0..<half {
                let (x1, x2) = interleaved ? (x[2 * i], x[2 * i + 1]) : (x[i], x[i + half])
                tmp[i] = x1 * c[i] - x2 * s[i]
                tmp[i + half] = x2 * c[i] + x1 * s[i]
            }
            for i in 0..<dimension { x[i] = tmp[i] }
        }
    }
}
