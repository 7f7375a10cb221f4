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
///
/// Every buffer is allocated up front (grown only when a larger prefill batch arrives, up to `chunk` tokens: a
/// longer prompt is speculated on in chunks): the decode path allocates nothing.
///
/// Concurrency (why `@unchecked Sendable` is true): two forward passes may share one cache. The speculation
/// scratch (`normed`, `scores`, `route*`, `chosen`, `lists`, `listCounts`) belongs to `hint`, which holds
/// `hintLock` from start to end (it computes outside the table lock, then takes it to queue reads: the order is
/// always hintLock → the slot table's lock). The statistics (`learned`, `statsExperts`) belong to `observe`,
/// which runs only inside the table's `serve`, lock held. Nothing else is mutable.
final class Prefetcher: @unchecked Sendable {
    /// Unowned: the table owns this prefetcher.
    unowned let table: SlotTable
    let mode: PrefetchMode
    let depth: Int
    let config: ModelConfig
    let router: NoAuxRouter
    /// Post-attention norm and router of each MoE layer (by ordinal), for speculation.
    let routers: [(norm: [Float], weights: MoEWeights)]
    /// For each layer: the (ordinal, layer) of the next `depth` MoE layers after it.
    let targets: [[(ordinal: Int, layer: Int)]]
    /// Router statistics (stats mode).
    var learned: CoactivationModel
    // Scratch.
    /// Tokens speculated on at a time.
    static let chunk = 512
    /// Passes of at least this many tokens (prompts) keep every predicted expert that the read queue cannot take
    /// yet in the cache's backlog, read as room appears, so the next layer's reads overlap this layer's compute.
    /// Shorter ones (decode) drop them: their predictions are few and less sure (on the K2 slice under the cap 28%
    /// of decode's were used), and reading them late took the drive from the demand reads (decode −8%).
    static let backlogMinTokens = 16
    var normed = FloatBuffer(count: 0)      // [min(T, chunk), H]
    var scores = FloatBuffer(count: 0)      // [min(T, chunk), E]
    var scratchTokens = 0
    let routeScratch: UnsafeMutablePointer<Float>   // [E + n_group]
    let routeExperts: UnsafeMutablePointer<Int32>   // [k]
    let routeWeights: UnsafeMutablePointer<Float>   // [k]
    /// Per target: which experts are predicted (bitmap) and the list of them.
    let chosen: UnsafeMutablePointer<Bool>          // [depth, E]
    let lists: UnsafeMutablePointer<Int32>          // [depth, E]
    var listCounts: [Int]
    /// Serialises `hint` (its scratch is one per prefetcher).
    let hintLock = NSLock()
    /// `observe`'s predictions (table lock held), apart from `hint`'s buffers.
    let statsExperts: UnsafeMutablePointer<Int32>   // [k]

    init(table: SlotTable, mode: PrefetchMode, depth: Int, resident: ResidentWeights?, config: ModelConfig) {
        self.table = table
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
        targets = (0..<config.numLayers).map { l in
            Array(config.moeLayers.enumerated().filter { $0.element > l }.prefix(max(1, depth)).map { (ordinal: $0.offset, layer: $0.element) })
        }
        let E = config.numRoutedExperts
        learned = CoactivationModel(layers: (mode == .stats || mode == .both) ? config.moeLayers.count : 0,
                                    experts: E, topK: config.expertsPerToken)
        routeScratch = .allocate(capacity: E + config.nGroup)
        routeExperts = .allocate(capacity: max(1, config.expertsPerToken))
        routeWeights = .allocate(capacity: max(1, config.expertsPerToken))
        chosen = .allocate(capacity: self.depth * E)
        lists = .allocate(capacity: self.depth * E)
        listCounts = Array(repeating: 0, count: self.depth)
        statsExperts = .allocate(capacity: max(1, config.expertsPerToken))
    }

    deinit {
        routeScratch.deallocate()
        routeExperts.deallocate()
        routeWeights.deallocate()
        chosen.deallocate()
        lists.deallocate()
        statsExperts.deallocate()
    }

    /// Speculative routing for the MoE layers after `layer` (outside the table lock: this is compute).
    func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens T: Int) {
        let prefetching = mode == .router || mode == .both
        guard prefetching || table.recorder != nil, !routers.isEmpty, !targets[layer].isEmpty else { return }
        hintLock.lock()
        defer { hintLock.unlock() }
        let H = config.hiddenSize, E = config.numRoutedExperts, k = config.expertsPerToken
        // A long prompt goes through in chunks, so the scratch stays at `Self.chunk` tokens.
        let C = min(T, Self.chunk)
        if C > scratchTokens {
            normed = FloatBuffer(count: C * H)
            scores = FloatBuffer(count: C * E)
            scratchTokens = C
        }
        for (i, target) in targets[layer].enumerated() {
            let (norm, moe) = routers[target.ordinal]
            let mark = chosen + i * E, list = lists + i * E
            mark.initialize(repeating: false, count: E)
            listCounts[i] = 0
            for c0 in stride(from: 0, to: T, by: C) {
                let n = min(C, T - c0)
                for t in 0..<n {
                    VectorOps.rmsNorm(hidden + (c0 + t) * H, weight: norm, eps: config.rmsNormEps, count: H,
                                      into: normed.row(t, width: H))
                }
                moe.router.apply(normed.pointer, tokens: n, into: scores.pointer)
                for j in 0..<(n * E) { scores.pointer[j] = VectorOps.sigmoid(scores.pointer[j]) }
                for t in 0..<n {
                    router.route(scores: scores.row(t, width: E), bias: moe.correctionBias, scratch: routeScratch,
                                 experts: routeExperts, weights: routeWeights)
                    for j in 0..<k where !mark[Int(routeExperts[j])] {
                        mark[Int(routeExperts[j])] = true
                        list[listCounts[i]] = routeExperts[j]
                        listCounts[i] += 1
                    }
                }
            }
        }
        table.predicted(afterAttentionOf: layer, targets: targets[layer], lists: lists, stride: E, counts: listCounts,
                        prefetch: prefetching, keepTheRest: T >= Self.backlogMinTokens)
    }

    /// Learns from the experts layer `ordinal` asked for and, in stats mode, prefetches the likely next ones.
    /// Called inside the slot table's `serve`, lock held.
    func observe(ordinal: Int, experts: [Int]) {
        guard mode == .stats || mode == .both else { return }
        learned.observe(ordinal: ordinal, experts: experts)
        let n = learned.predictNext(ordinal: ordinal, after: experts, into: statsExperts)
        guard n > 0 else { return }
        _ = table.prefetchLocked(ordinal: ordinal + 1, experts: UnsafeBufferPointer(start: statsExperts, count: n),
                                 layer: config.moeLayers[ordinal + 1])
    }
}
