import Foundation
import MoECheckpoint
import MoEModel
import MoETensor

/// Decides what to read before the model asks. Two signals:
/// - **router** (speculative routing): right after layer l's attention, the routers of the next `depth` MoE
///   layers are applied to the residual stream (through each layer's own post-attention norm): the experts they
///   would choose are read ahead.
/// - **stats**: decayed per-layer expert frequencies and layer-to-layer co-activation counts learned online;
///   after layer l's experts are known, the experts that most often followed them in layer l+1 are read ahead.
/// Candidates go to the cache best first; the cache bounds them by free slots and reads in flight, demand
/// misses overtake them, and the I/O thread drops those the model has already passed.
final class Prefetcher: @unchecked Sendable {
    unowned let cache: ExpertCache
    let mode: PrefetchMode
    let depth: Int
    let config: ModelConfig
    let router: NoAuxRouter
    /// Post-attention norm and router of each MoE layer (by ordinal), for speculation.
    let routers: [(norm: [Float], weights: MoEWeights)]
    /// [ordinal][expert]: decayed activation counts.
    var frequency: [[Float]]
    /// [ordinal][previous · E + next]: how often `next` in layer ordinal+1 followed `previous` in ordinal.
    var coactivation: [[Float]]
    var previous: (ordinal: Int, experts: [Int])? = nil
    let decay: Float = 0.995
    // Scratch for speculation, grown to the largest batch seen.
    var normed = FloatBuffer(count: 0)
    var scores = FloatBuffer(count: 0)
    var scratchTokens = 0

    init(cache: ExpertCache, mode: PrefetchMode, depth: Int, resident: ResidentWeights?, config: ModelConfig) {
        self.cache = cache
        self.mode = mode
        self.depth = max(1, depth)
        self.config = config
        router = NoAuxRouter(config: config)
        var r: [(norm: [Float], weights: MoEWeights)] = []
        if let resident {
            for l in config.moeLayers {
                if case .moe(let m) = resident.layers[l].feedForward { r.append((resident.layers[l].postAttentionNorm, m)) }
            }
        }
        routers = r.count == config.moeLayers.count ? r : []
        let E = config.numRoutedExperts
        frequency = config.moeLayers.map { _ in Array(repeating: 0, count: E) }
        coactivation = (mode == .stats || mode == .both) ? config.moeLayers.map { _ in Array(repeating: 0, count: E * E) } : []
    }

    /// Speculative routing for the MoE layers after `layer` (outside the cache lock: this is compute).
    func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens T: Int) {
        guard mode == .router || mode == .both, !routers.isEmpty else { return }
        let targets = config.moeLayers.enumerated().filter { $0.element > layer }.prefix(depth)
        guard !targets.isEmpty else { return }
        let H = config.hiddenSize, E = config.numRoutedExperts
        if T > scratchTokens {
            normed = FloatBuffer(count: T * H)
            scores = FloatBuffer(count: T * E)
            scratchTokens = T
        }
        var plans: [(ordinal: Int, experts: [Int], target: Int)] = []
        for (ordinal, targetLayer) in targets {
            let (norm, moe) = routers[ordinal]
            for t in 0..<T {
                VectorOps.rmsNorm(hidden + t * H, weight: norm, eps: config.rmsNormEps, count: H, into: normed.row(t, width: H))
            }
            moe.router.apply(normed.pointer, tokens: T, into: scores.pointer)
            for i in 0..<(T * E) { scores.pointer[i] = VectorOps.sigmoid(scores.pointer[i]) }
            var chosen = Set<Int>()
            for t in 0..<T { chosen.formUnion(router.route(scores: scores.row(t, width: E), bias: moe.correctionBias).experts) }
            plans.append((ordinal, chosen.sorted(), targetLayer))
        }
        cache.lock.lock()
        let step = cache.step + (layer < cache.lastLayer ? 1 : 0)
        for p in plans {
            _ = cache.prefetch(ordinal: p.ordinal, experts: p.experts, target: step * cache.moeOrdinal.count + p.target)
        }
        cache.lock.unlock()
    }

    /// Learns from the experts layer `ordinal` asked for and, in stats mode, prefetches the likely next ones.
    /// Called with the cache lock held.
    func observe(ordinal: Int, experts: [Int]) {
        let E = config.numRoutedExperts
        for e in 0..<E { frequency[ordinal][e] *= decay }
        for e in experts { frequency[ordinal][e] += 1 }
        guard !coactivation.isEmpty else { return }
        // Co-activation only from single-token requests: a prefill batch's union says nothing about pairs.
        if experts.count <= config.expertsPerToken {
            if let p = previous, p.ordinal == ordinal - 1 {
                for a in p.experts { for b in experts { coactivation[p.ordinal][a * E + b] += 1 } }
            }
            previous = (ordinal, experts)
        } else {
            previous = nil
        }
        guard ordinal + 1 < config.moeLayers.count, experts.count <= config.expertsPerToken else { return }
        var score = [Float](repeating: 0, count: E)
        for a in experts { for b in 0..<E { score[b] += coactivation[ordinal][a * E + b] } }
        let freq = frequency[ordinal + 1]
        let total = max(1, freq.reduce(0, +))
        for b in 0..<E { score[b] += 0.5 * Float(experts.count) * freq[b] / total }
        let ranked = (0..<E).sorted { score[$0] > score[$1] }.prefix(config.expertsPerToken).filter { score[$0] > 0 }
        _ = cache.prefetch(ordinal: ordinal + 1, experts: Array(ranked),
                           target: cache.step * cache.moeOrdinal.count + config.moeLayers[ordinal + 1])
    }
}
