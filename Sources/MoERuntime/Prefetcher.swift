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
    /// Router statistics (stats mode).
    var learned: CoactivationModel
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
        learned = CoactivationModel(layers: (mode == .stats || mode == .both) ? config.moeLayers.count : 0,
                                    experts: config.numRoutedExperts, topK: config.expertsPerToken)
    }

    /// Speculative routing for the MoE layers after `layer` (outside the cache lock: this is compute).
    func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens T: Int) {
        let prefetching = mode == .router || mode == .both
        guard prefetching || cache.recorder != nil, !routers.isEmpty else { return }
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
        // The first hint of a forward pass comes before its first expert request moves `step` on.
        let step = cache.step + (layer < cache.lastLayer ? 1 : 0)
        cache.recorder?.record(.prediction(step: step, after: layer,
                                           predicted: Dictionary(uniqueKeysWithValues: plans.map { ($0.target, $0.experts) })))
        if prefetching {
            for p in plans {
                _ = cache.prefetch(ordinal: p.ordinal, experts: p.experts, target: step * cache.moeOrdinal.count + p.target)
            }
        }
        cache.lock.unlock()
    }

    /// Learns from the experts layer `ordinal` asked for and, in stats mode, prefetches the likely next ones.
    /// Called with the cache lock held.
    func observe(ordinal: Int, experts: [Int]) {
        guard mode == .stats || mode == .both else { return }
        learned.observe(ordinal: ordinal, experts: experts)
        let next = learned.predictNext(ordinal: ordinal, after: experts)
        guard !next.isEmpty else { return }
        _ = cache.prefetch(ordinal: ordinal + 1, experts: next,
                           target: cache.step * cache.moeOrdinal.count + config.moeLayers[ordinal + 1])
    }
}
