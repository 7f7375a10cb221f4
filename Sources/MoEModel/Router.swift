import MoECheckpoint
import MoETensor

/// The experts one token goes to and the weight of each.
public struct Routing: Sendable, Equatable {
    /// Chosen expert ids, ascending.
    public var experts: [Int]
    /// Weight of each chosen expert, same order.
    public var weights: [Float]
}

/// DeepSeek-V3's noaux_tc router, as transformers computes it:
///   s = σ(x·W_gᵀ) in fp32;  choice = s + e_score_correction_bias (the bias only chooses);
///   with n_group > 1 keep the topk_group groups whose two best choices sum highest, mask the rest;
///   take the top-k by choice; weights = s at those ids, / (Σ + 1e-20) when norm_topk_prob, × routed_scaling_factor.
public struct NoAuxRouter: Sendable {
    public let config: ModelConfig

    public init(config: ModelConfig) { self.config = config }

    /// Routes one token from its router scores `scores [n_routed]` (already σ-ed) and the correction bias.
    public func route(scores: UnsafePointer<Float>, bias: [Float]) -> Routing {
        let n = config.numRoutedExperts, k = config.expertsPerToken
        var choice = (0..<n).map { scores[$0] + bias[$0] }
        if config.nGroup > 1 {
            let size = n / config.nGroup
            let groupScores: [Float] = (0..<config.nGroup).map { g in
                let top2 = choice[(g * size)..<((g + 1) * size)].sorted(by: >).prefix(2)
                return top2.reduce(0, +)
            }
            let keep = Set(Self.topIndices(groupScores, config.topkGroup))
            for g in 0..<config.nGroup where !keep.contains(g) {
                for e in (g * size)..<((g + 1) * size) { choice[e] = -.infinity }
            }
        }
        let chosen = Self.topIndices(choice, k).sorted()
        var weights = chosen.map { scores[$0] }
        if config.normTopkProb {
            let denominator = weights.reduce(0, +) + 1e-20
            weights = weights.map { $0 / denominator }
        }
        weights = weights.map { $0 * config.routedScalingFactor }
        return Routing(experts: chosen, weights: weights)
    }

    /// Indices of the `k` largest values; ties go to the lower index.
    static func topIndices(_ values: [Float], _ k: Int) -> [Int] {
        values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }.prefix(k).map { $0 }
    }
}
