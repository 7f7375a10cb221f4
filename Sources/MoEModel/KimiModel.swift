import Foundation
import MoECheckpoint
import MoETensor

/// Which positions of a forward pass need logits.
public enum LogitsRequest: Sendable {
    /// Every position (`moestream logits`, perplexity).
    case all
    /// Only the last position (generation).
    case last
}

/// The result of one forward pass.
public struct ForwardResult: Sendable {
    /// [rows, vocab], row-major: one row per requested position.
    public let logits: [Float]
    public let rows: Int
    public let vocabSize: Int
    /// Routing of every token at every MoE layer: `routing[layer][token]`, empty for dense layers.
    public let routing: [[Routing]]

    public func row(_ i: Int) -> ArraySlice<Float> { logits[(i * vocabSize)..<((i + 1) * vocabSize)] }
}

/// What a forward pass reuses from the last one: the activation `Workspace` and the list of chosen experts handed
/// to the expert provider (an array kept with its capacity).
final class ForwardScratch {
    let workspace: Workspace
    var experts: [Int] = []

    init(bytes: Int = 1 << 20) { workspace = Workspace(bytes: bytes) }
}

/// Kimi K2 / DeepSeek-V3: embeddings → layers (MLA, dense MLP or MoE) → final norm → lm_head.
///
/// `h = x + Attn(RMSNorm(x))`, `out = h + FFN(RMSNorm(h))`. Math in fp32; weights stay in their stored
/// encoding. Routed experts come only through `experts`; the model never reads a file.
/// Sendable: every field but `activations` is a `let`; `activations` is read and written under `settingsLock`; the
/// shared `scratch` is used only by the pass holding `scratchLock` (`workspaceBytes` takes it too).
public final class KimiModel: @unchecked Sendable {
    public let config: ModelConfig
    public let weights: ResidentWeights
    public let experts: any ExpertProviding
    let attention: [LatentAttention]
    let router: NoAuxRouter
    /// Activations and bookkeeping of a forward pass, kept from pass to pass so decoding allocates none.
    private let scratch = ForwardScratch()
    /// Held by the pass using `scratch`; a pass that finds it held (another thread's, on the same model) takes
    /// scratch of its own.
    private let scratchLock = NSLock()
    /// How routed experts multiply (`expertActivations`), read once at the start of each pass.
    private var activations = ExpertActivations.fp32
    /// How resident matrices multiply (`residentActivations`), read once at the start of each pass.
    private var resident = ResidentActivations.fp32
    /// `prefillChunk`, read once at the start of each pass.
    private var chunk = 512
    /// `kvPrecision`, read when a cache is made.
    private var kvStorage = KVPrecision.f32
    /// `prefillWindow`, read once at the start of each forward.
    private var window = 32_768
    private let settingsLock = NSLock()

    /// How this model's routed experts multiply: fp32 activations (exact, the library's default, what every
    /// reference test uses) or q8 (int8 dot products; the command line's default). Applies from the next pass.
    public var expertActivations: ExpertActivations {
        get { settingsLock.lock(); defer { settingsLock.unlock() }; return activations }
        set { settingsLock.lock(); activations = newValue; settingsLock.unlock() }
    }

    /// How this model's resident bf16 matrices multiply: fp32 activations (exact, the library's default) or split
    /// into two bf16 parts on AMX tiles (`ResidentActivations`; the command line's default where the CPU has AMX).
    /// Where AMX is not available `.bf16x2` multiplies as `.fp32` does. Applies from the next pass.
    public var residentActivations: ResidentActivations {
        get { settingsLock.lock(); defer { settingsLock.unlock() }; return resident }
        set { settingsLock.lock(); resident = newValue; settingsLock.unlock() }
    }

    /// Tokens a pass's per-token stages take at a time (attention, dense and shared MLPs, routed experts' inputs
    /// and slots): a prompt of any length runs with scratch sized by this, not by its length, beside the residual
    /// stream and an MoE layer's output (2 · T · hidden floats) and the KV cache. Every routed expert is still asked
    /// for once per layer, and results do not depend on it (bit for bit). Default 512; kept within 16 ... 2²⁰.
    public var prefillChunk: Int {
        get { settingsLock.lock(); defer { settingsLock.unlock() }; return chunk }
        set { settingsLock.lock(); chunk = min(max(16, newValue), Self.maxPrefillChunk); settingsLock.unlock() }
    }

    /// What the KV caches `makeCache` makes store their rows in: fp32 (exact, the library's default, what every
    /// reference test uses), f16 (the command line's default) or bf16 (both half the bytes per position). A cache
    /// keeps the precision it was made with.
    public var kvPrecision: KVPrecision {
        get { settingsLock.lock(); defer { settingsLock.unlock() }; return kvStorage }
        set { settingsLock.lock(); kvStorage = newValue; settingsLock.unlock() }
    }

    /// Bytes one position of a cache from `makeCache` takes, over all layers.
    public var kvBytesPerToken: Int {
        KVCache.bytesPerToken(layers: config.numLayers, latentDim: config.kvLoraRank, ropeDim: config.qkRopeHeadDim, precision: kvPrecision)
    }

    /// Prompt tokens one pass takes through all the layers (`--prefill-window`): a longer prompt runs as consecutive
    /// passes of this many tokens, each continuing the cache the previous one wrote, so the residual stream and an
    /// MoE layer's output (2 · window · hidden floats: 1.9 GB at Kimi K2's hidden size and the default 32,768)
    /// are bounded by it, not by the prompt. Each routed expert is read once per layer per window (a prompt within
    /// one window reads it once per layer); results do not depend on it (bit for bit). Kept within 16 ... 2²⁰.
    public var prefillWindow: Int {
        get { settingsLock.lock(); defer { settingsLock.unlock() }; return window }
        set { settingsLock.lock(); window = min(max(16, newValue), Self.maxPrefillChunk); settingsLock.unlock() }
    }

    /// The largest `prefillChunk` (chunk · experts per token · hidden must not overflow a buffer's size).
    public static let maxPrefillChunk = 1 << 20

    /// Bytes the forward-pass workspace holds: the largest pass so far (steady while decoding).
    public var workspaceBytes: Int {
        scratchLock.lock()
        defer { scratchLock.unlock() }
        return scratch.workspace.bytes
    }

    public init(config: ModelConfig, weights: ResidentWeights, experts: any ExpertProviding) {
        self.config = config
        self.weights = weights
        self.experts = experts
        let rope = RoPE(config: config)
        let scale = RoPE.softmaxScale(config: config)
        attention = weights.layers.enumerated().map { l, w in
            LatentAttention(config: config, weights: w.attention, rope: rope, scale: scale, layer: l)
        }
        router = NoAuxRouter(config: config)
    }

    /// Loads a Hugging Face checkpoint directory, with experts served from the mapped checkpoint.
    public static func load(checkpoint path: String) throws(CheckpointError) -> KimiModel {
        let config = try ModelConfig.load(path: path)
        let source = CheckpointWeights(checkpoint: try Checkpoint(path: path), config: config)
        return KimiModel(config: config, weights: try source.resident(), experts: try CheckpointExperts(source))
    }

    /// Loads a GGUF model (llama.cpp's `deepseek2`; any part of a split set) from the mapped file, matrices in
    /// their GGML types and every expert resident (`GGUFTensors`): for checking, and for models that fit in RAM.
    public static func load(gguf path: String) throws(CheckpointError) -> KimiModel {
        let gguf = try GGUFCheckpoint(path: path)
        let config = try ModelConfig.fromGGUF(gguf)
        let undecodable = gguf.undecodable()
        guard undecodable.isEmpty else { throw .unsupportedTypes(file: gguf.path, types: undecodable) }
        let source = CheckpointWeights(checkpoint: GGUFTensors(gguf: gguf, config: config), config: config)
        return KimiModel(config: config, weights: try source.resident(), experts: try CheckpointExperts(source))
    }

    /// A fresh latent KV cache for one sequence in `kvPrecision`, bounded by `max_position_embeddings` (or `limit`).
    public func makeCache(limit: Int? = nil) -> KVCache {
        KVCache(layers: config.numLayers, latentDim: config.kvLoraRank, ropeDim: config.qkRopeHeadDim,
                limit: min(limit ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings), precision: kvPrecision)
    }

    /// Runs `tokens` at the positions after what `cache` holds (a whole prompt in one pass, or one decode token)
    /// and appends them to the cache. `cancelled` is asked between layers: when it says yes the pass stops with
    /// `ModelError.cancelled` and the cache keeps what it held before (a long prefill stops within one layer
    /// of a client going away).
    /// `keepRouting` false returns no routing records (a long prompt's would take ~200 bytes per token and layer);
    /// a prompt longer than `prefillWindow` runs as consecutive passes of that many tokens (see there).
    public func forward(_ tokens: [Int], cache: KVCache, logits request: LogitsRequest = .last, keepRouting: Bool = true,
                        cancelled: (() -> Bool)? = nil) throws -> ForwardResult {
        let T = tokens.count, V = config.vocabSize
        guard T > 0 else { throw ModelError.emptyInput }
        for t in tokens where t < 0 || t >= V { throw ModelError.tokenOutOfRange(token: t, vocabSize: V) }
        let start = cache.count
        guard start + T <= cache.limit else { throw ModelError.contextFull(position: start + T - 1, limit: cache.limit) }
        let W = prefillWindow
        guard T > W else {
            return try pass(tokens[...], caches: [cache], oneSequence: true, logits: request, keepRouting: keepRouting,
                            cancelled: cancelled)
        }
        // Windows of W tokens, each a whole pass continuing the cache: what a reused prefix computes, bit for bit.
        var logits: [Float] = [], rows = 0
        var routing: [[Routing]] = keepRouting ? Array(repeating: [], count: config.numLayers) : []
        do {
            for w0 in stride(from: 0, to: T, by: W) {
                let last = w0 + W >= T
                let r = try pass(tokens[w0..<min(T, w0 + W)], caches: [cache], oneSequence: true,
                                 logits: request == .all || last ? request : nil, keepRouting: keepRouting, cancelled: cancelled)
                logits += r.logits
                rows += r.rows
                for l in routing.indices { routing[l] += r.routing[l] }
            }
        } catch {
            cache.truncate(to: start)  // the cache keeps what it held before, as after a single pass that fails
            throw error
        }
        return ForwardResult(logits: logits, rows: rows, vocabSize: V, routing: routing)
    }

    /// One decode step of several sequences at once: `tokens[b]` is the next token of the sequence in `caches[b]`
    /// (distinct caches), run at that cache's next position and appended to it. One pass over all of them: every
    /// resident matrix and every chosen routed expert is read once for the step, whichever sequences chose it, and
    /// each token's operations are the ones it gets alone (the kernels' guarantee; attention reads only its own
    /// sequence), so each sequence's logits are bit for bit those of `forward([token], cache:)`. Returns one logits
    /// row per sequence; no routing records. A sequence whose cache is full fails the step before anything runs.
    public func forward(batch tokens: [Int], caches: [KVCache]) throws -> ForwardResult {
        let V = config.vocabSize
        precondition(tokens.count == caches.count, "one token per sequence")
        precondition(Set(caches.map(ObjectIdentifier.init)).count == caches.count, "distinct sequences")
        guard !tokens.isEmpty else { throw ModelError.emptyInput }
        for t in tokens where t < 0 || t >= V { throw ModelError.tokenOutOfRange(token: t, vocabSize: V) }
        for c in caches where c.count + 1 > c.limit { throw ModelError.contextFull(position: c.count, limit: c.limit) }
        return try pass(tokens[...], caches: caches, oneSequence: false, logits: .all, keepRouting: false, cancelled: nil)
    }

    /// One pass of `tokens` through every layer: consecutive positions of `caches[0]` (`oneSequence`), or token t
    /// at the next position of `caches[t]`. `request` nil computes no logits (a window before the last).
    private func pass(_ tokens: ArraySlice<Int>, caches: [KVCache], oneSequence: Bool, logits request: LogitsRequest?,
                      keepRouting: Bool, cancelled: (() -> Bool)?) throws -> ForwardResult {
        let T = tokens.count, H = config.hiddenSize, V = config.vocabSize
        let cache = caches[0]
        let start = oneSequence ? cache.count : 0
        if oneSequence { cache.reserve(T) } else { caches.forEach { $0.reserve(1) } }

        let shared = scratchLock.try()
        defer { if shared { scratchLock.unlock() } }
        let scratch = shared ? self.scratch : ForwardScratch(bytes: 0)
        let ws = scratch.workspace
        ws.reset()
        let activations = expertActivations, C = prefillChunk
        ws.residentActivations = residentActivations
        let x = ws.floats(T * H)      // [T, H] residual stream
        let delta = ws.floats(T * H)  // [T, H] an MoE layer's output (complete for a token only after every expert)
        for (t, token) in tokens.enumerated() { weights.embedding.copyRow(token, into: x + t * H) }

        /// `x[c0 ..< c0 + n] += f(RMSNorm(x[c0 ..< c0 + n]))` for chunks of C tokens, `f` writing into its last
        /// argument: a stage whose tokens do not see each other's residual (attention sees earlier tokens through
        /// the cache, which a chunk writes before the next one reads it), so adding a chunk's output before the next
        /// chunk runs is the same arithmetic as adding the whole prompt's after.
        func residualChunks(norm: [Float], _ f: (UnsafePointer<Float>, Int, Int, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
            for c0 in stride(from: 0, to: T, by: C) {
                let n = min(C, T - c0), chunkStart = ws.mark()
                let normed = ws.floats(n * H), out = ws.floats(n * H)  // [n, H] each
                for t in 0..<n {
                    VectorOps.rmsNorm(x + (c0 + t) * H, weight: norm, eps: config.rmsNormEps, count: H, into: normed + t * H)
                }
                try f(normed, c0, n, out)
                let xs = x + c0 * H
                for i in 0..<(n * H) { xs[i] += out[i] }
                ws.release(to: chunkStart)
            }
        }

        var routing: [[Routing]] = []
        for (l, layer) in weights.layers.enumerated() {
            if let cancelled, cancelled() { throw ModelError.cancelled(layer: l) }
            let layerStart = ws.mark()  // a layer's buffers are the next layer's
            defer { ws.release(to: layerStart) }
            residualChunks(norm: layer.inputNorm) { normed, c0, n, out in
                if oneSequence {
                    attention[l](normed, tokens: n, start: start + c0, cache: cache, workspace: ws, into: out)
                } else {
                    attention[l](normed, caches: Array(caches[c0..<(c0 + n)]), workspace: ws, into: out)
                }
            }
            experts.hint(afterAttentionOf: l, hidden: x, tokens: T)

            switch layer.feedForward {
            case .dense(let mlp):
                residualChunks(norm: layer.postAttentionNorm) { normed, _, n, out in mlp(normed, tokens: n, workspace: ws, into: out) }
                routing.append([])
            case .moe(let moe):
                let moeLayer = MoELayer(config: config, weights: moe, router: router, layer: l, activations: activations,
                                        chunk: C)
                let chosen = try moeLayer(x, norm: layer.postAttentionNorm, tokens: T, experts: experts, scratch: scratch,
                                          into: delta)
                routing.append(keepRouting ? chosen : [])
                for i in 0..<(T * H) { x[i] += delta[i] }
            }
        }
        if oneSequence { cache.commit(T) } else { caches.forEach { $0.commit(1) } }
        experts.forwardDidFinish(tokens: T)

        guard let request else { return ForwardResult(logits: [], rows: 0, vocabSize: V, routing: keepRouting ? routing : []) }
        let first = request == .all ? 0 : T - 1
        let rows = T - first
        let normed = ws.floats(rows * H)  // [rows, H]
        for t in first..<T {
            VectorOps.rmsNorm(x + t * H, weight: weights.finalNorm, eps: config.rmsNormEps, count: H,
                              into: normed + (t - first) * H)
        }
        // The logits are the caller's: the one activation array a pass allocates.
        let logits = [Float](unsafeUninitializedCapacity: rows * V) { buffer, count in
            weights.lmHead.apply(normed, tokens: rows, into: buffer.baseAddress!, workspace: ws)  // [rows, V]
            count = rows * V
        }
        if let bad = logits.firstIndex(where: { !$0.isFinite }) { throw ModelError.nonFiniteLogits(position: oneSequence ? start + first + bad / V : caches[bad / V].count - 1) }
        return ForwardResult(logits: logits, rows: rows, vocabSize: V, routing: routing)
    }

    /// Greedy decoding: the prompt in one pass, then one token at a time through the cache. Stops after
    /// `maxTokens` or at a token in `stop`. `onToken` sees each new token as it is chosen.
    public func greedy(prompt: [Int], maxTokens: Int, stop: Set<Int> = [], cache: KVCache? = nil,
                       onToken: (Int) -> Void = { _ in }) throws -> [Int] {
        let cache = cache ?? makeCache()
        var out: [Int] = []
        guard maxTokens > 0 else { return out }
        var result = try forward(prompt, cache: cache, logits: .last)
        while true {
            let next = argmax(result.row(0))
            out.append(next)
            onToken(next)
            if out.count >= maxTokens || stop.contains(next) { break }
            result = try forward([next], cache: cache, logits: .last)
        }
        return out
    }
}

/// Index of the largest value; the first one on ties (as torch.argmax).
public func argmax(_ values: ArraySlice<Float>) -> Int {
    var best = values.startIndex
    for i in values.indices where values[i] > values[best] { best = i }
    return best - values.startIndex
}
