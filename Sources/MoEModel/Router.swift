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
/// Ties go to the lower index.
public struct NoAuxRouter: Sendable {
    public let config: ModelConfig

    public init(config: ModelConfig) { self.config = config }

    /// Routes one token from its router scores `scores [n_routed]` (already σ-ed) and the correction bias.
    public func route(scores: UnsafePointer<Float>, bias: [Float]) -> Routing {
        let n = config.numRoutedExperts, k = config.expertsPerToken
        var experts = [Int32](repeating: 0, count: k), weights = [Float](repeating: 0, count: k)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: n + config.nGroup) { scratch in
            route(scores: scores, bias: bias, scratch: scratch.baseAddress!, experts: &experts, weights: &weights)
        }
        return Routing(experts: experts.map(Int.init), weights: weights)
    }

    /// The same, allocation-free: `scratch` holds `n_routed + n_group` floats; `experts` and `weights` hold
    /// `num_experts_per_tok` values (experts ascending). The prefetcher calls this on the token path.
    public func route(scores: UnsafePointer<Float>, bias: [Float], scratch: UnsafeMutablePointer<Float>,
                      experts: UnsafeMutablePointer<Int32>, weights: UnsafeMutablePointer<Float>) {
        let n = config.numRoutedExperts, k = config.expertsPerToken
        let choice = scratch
        bias.withUnsafeBufferPointer { b in for e in 0..<n { choice[e] = scores[e] + b[e] } }
        if config.nGroup > 1 {
            let groups = config.nGroup, size = n / groups
            let groupScore = scratch + n
            for g in 0..<groups {
                var best = -Float.infinity, second = -Float.infinity
                for e in (g * size)..<((g + 1) * size) {
                    let v = choice[e]
                    if v > best { second = best; best = v } else if v > second { second = v }
                }
                groupScore[g] = best + second
            }
            // Keep the topk_group best groups: mask the others (pick the best remaining group each round).
            for _ in 0..<config.topkGroup {
                var best = -1
                for g in 0..<groups where groupScore[g] != .infinity && (best < 0 || groupScore[g] > groupScore[best]) { best = g }
                if best >= 0 { groupScore[best] = .infinity }  // kept
            }
            for g in 0..<groups where groupScore[g] != .infinity {
                for e in (g * size)..<((g + 1) * size) { choice[e] = -.infinity }
            }
        }
        // Top-k by choice: k passes of "largest remaining, lower index on ties".
        for slot in 0..<k {
            var best = -1
            for e in 0..<n where choice[e] != -Float.greatestFiniteMagnitude {
                if best < 0 || choice[e] > choice[best] { best = e }
            }
            experts[slot] = Int32(best)
            choice[best] = -Float.greatestFiniteMagnitude  // taken
        }
        // Ascending ids (insertion sort of k values).
        for i in 1..<max(1, k) {
            var j = i
            while j > 0 && experts[j - 1] > experts[j] { experts.swapAt(j - 1, j); j -= 1 }
        }
        var sum: Float = 0
        for i in 0..<k { weights[i] = scores[Int(experts[i])]; sum += weights[i] }
        let denominator = config.normTopkProb ? sum + 1e-20 : 1
        for i in 0..<k { weights[i] = (config.normTopkProb ? weights[i] / denominator : weights[i]) * config.routedScalingFactor }
    }
}

extension UnsafeMutablePointer where Pointee == Int32 {
    @inline(__always) func swapAt(_ a: Int, _ b: Int) { let t = self[a]; self[a] = self[b]; self[b] = t }
}
