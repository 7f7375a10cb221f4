import Foundation
import Testing
import MoECheckpoint
import MoETensor
import MoETestSupport
@testable import MoEModel

/// Delivers experts in reverse order, as a cache that serves hits first might.
final class ReversedExperts: ExpertProviding, @unchecked Sendable {
    let inner: any ExpertProviding
    var requests: [(layer: Int, experts: [Int])] = []
    init(_ inner: any ExpertProviding) { self.inner = inner }
    func withExperts(layer: Int, _ experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        requests.append((layer, experts))
        for e in experts.reversed() { try inner.withExperts(layer: layer, [e], body) }
    }
}

/// Refuses one expert, as a store with a damaged extent must.
final class FailingExperts: ExpertProviding, @unchecked Sendable {
    let inner: any ExpertProviding
    let bad: (layer: Int, expert: Int)
    init(_ inner: any ExpertProviding, bad: (Int, Int)) { self.inner = inner; self.bad = bad }
    func withExperts(layer: Int, _ experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        for e in experts {
            if layer == bad.layer && e == bad.expert {
                throw ModelError.expertUnavailable(layer: layer, expert: e, reason: "checksum mismatch")
            }
            try inner.withExperts(layer: layer, [e], body)
        }
    }
}

@Suite struct ModelBehaviourTests {
    func load(_ name: String) throws -> (KimiModel, CheckpointWeights) {
        let path = Fixtures.model(name)
        let config = try ModelConfig.load(path: path)
        let source = CheckpointWeights(checkpoint: try Checkpoint(path: path), config: config)
        return (KimiModel(config: config, weights: try source.resident(), experts: try CheckpointExperts(source)), source)
    }

    @Test func expertDeliveryOrderCannotChangeABit() throws {
        let ref = try Reference.load("kimi_k2")
        let (model, source) = try load("kimi_k2")
        let reversed = ReversedExperts(try CheckpointExperts(source))
        let other = KimiModel(config: model.config, weights: model.weights, experts: reversed)
        let a = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        let b = try other.forward(ref.prompt, cache: other.makeCache(), logits: .all)
        #expect(a.logits == b.logits)
        // A prefill batch asks for each chosen expert once per layer, for all its tokens together.
        #expect(reversed.requests.map(\.layer) == [1, 2])
        for r in reversed.requests {
            #expect(r.experts == r.experts.sorted() && Set(r.experts).count == r.experts.count)
            let chosen = Set(a.routing[r.layer].flatMap(\.experts))
            #expect(Set(r.experts) == chosen)
        }
    }

    /// A prompt in chunks of 16 tokens (the smallest) gives the one-pass logits bit for bit, asks for every chosen
    /// expert once per layer (in several windows of ascending ids, each delivered in reverse), and holds less
    /// scratch. 600 tokens × 8 choices over 32 experts: some expert has more users than a window's 128 slots, so
    /// the path that adds such an expert's results straight to the sums runs too.
    @Test func chunkedPrefillEqualsOnePassAndAsksForEachExpertOnce() throws {
        let (model, source) = try load("kimi_k2")
        var rng = SplitMix(seed: 9)
        let prompt = (0..<600).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
        let whole = try model.forward(prompt, cache: model.makeCache(), logits: .all)
        let recorder = ReversedExperts(try CheckpointExperts(source))
        let chunked = KimiModel(config: model.config, weights: model.weights, experts: recorder)
        chunked.prefillChunk = .max
        #expect(chunked.prefillChunk == KimiModel.maxPrefillChunk, "at most 2²⁰")
        chunked.prefillChunk = 1
        #expect(chunked.prefillChunk == 16, "at least 16")
        let c = try chunked.forward(prompt, cache: chunked.makeCache(), logits: .all)
        #expect(c.logits == whole.logits)
        for l in [1, 2] {
            let windows = recorder.requests.filter { $0.layer == l }
            let asked = windows.flatMap(\.experts)
            #expect(asked == asked.sorted() && Set(asked).count == asked.count)
            #expect(Set(asked) == Set(whole.routing[l].flatMap(\.experts)))
            #expect(windows.count > 1, "layer \(l): several windows")
            let users = whole.routing[l].flatMap(\.experts).reduce(into: [Int: Int]()) { $0[$1, default: 0] += 1 }
            #expect(users.values.max()! > 16 * model.config.expertsPerToken, "layer \(l): an expert beyond a window")
        }
        // Decode after a chunked prompt continues as after a whole one.
        let cacheA = model.makeCache(), cacheB = chunked.makeCache()
        _ = try model.forward(prompt, cache: cacheA)
        _ = try chunked.forward(prompt, cache: cacheB)
        #expect(try model.forward([7], cache: cacheA).logits == chunked.forward([7], cache: cacheB).logits)
        // The workspace, sized at each pass's start by the largest before it: the prompt's, held in chunks.
        #expect(chunked.workspaceBytes < model.workspaceBytes, "\(chunked.workspaceBytes) vs \(model.workspaceBytes)")
    }

    /// A prompt longer than `prefillWindow` runs as passes of that many tokens through all the layers: the same
    /// logits, routing and cache as one pass, a workspace sized by the window, no routing records when not asked
    /// for, and a cancellation in a later window leaves the cache as it was.
    @Test func windowedPrefillEqualsOnePass() throws {
        let (model, source) = try load("kimi_k2")
        var rng = SplitMix(seed: 4)
        let prompt = (0..<300).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
        let wholeCache = model.makeCache()
        let whole = try model.forward(prompt, cache: wholeCache, logits: .all)
        let windowed = KimiModel(config: model.config, weights: model.weights, experts: try CheckpointExperts(source))
        windowed.prefillChunk = 16
        windowed.prefillWindow = 1
        #expect(windowed.prefillWindow == 16, "at least 16")
        windowed.prefillWindow = 64
        let cache = windowed.makeCache()
        let w = try windowed.forward(prompt, cache: cache, logits: .all)
        #expect(w.logits == whole.logits && w.rows == prompt.count)
        #expect(w.routing == whole.routing)
        #expect(cache.count == prompt.count)
        #expect(try windowed.forward([7], cache: cache).logits == model.forward([7], cache: wholeCache).logits)
        let last = try windowed.forward(prompt, cache: windowed.makeCache(), logits: .last, keepRouting: false)
        #expect(Array(last.row(0)) == Array(whole.row(prompt.count - 1)) && last.routing.allSatisfy(\.isEmpty))
        #expect(windowed.workspaceBytes < model.workspaceBytes, "\(windowed.workspaceBytes) vs \(model.workspaceBytes)")
        // Cancelled in the third window (layer checks: 3 per window of this 3-layer model): nothing is kept.
        let kept = windowed.makeCache()
        _ = try windowed.forward([5, 6, 7], cache: kept)
        var asked = 0
        #expect(throws: ModelError.self) {
            try windowed.forward(prompt, cache: kept, cancelled: { asked += 1; return asked > 2 * model.config.numLayers })
        }
        #expect(kept.count == 3 && asked == 2 * model.config.numLayers + 1)
    }

    @Test func routingHasTopKDistinctExpertsAndScaledWeights() throws {
        let ref = try Reference.load("kimi_k2")
        let (model, _) = try load("kimi_k2")
        let r = try model.forward(ref.prompt, cache: model.makeCache(), logits: .last)
        for layer in model.config.moeLayers {
            for routing in r.routing[layer] {
                #expect(routing.experts.count == 8 && Set(routing.experts).count == 8)
                // norm_topk_prob: the weights sum to routed_scaling_factor.
                #expect(abs(routing.weights.reduce(0, +) - model.config.routedScalingFactor) < 1e-4)
            }
        }
    }

    @Test func groupLimitedRoutingKeepsOnlyTheBestGroups() throws {
        var config = try ModelConfig.load(path: Fixtures.model("deepseek_v3"))  // 16 experts, 4 groups, keep 2, top 4
        config.normTopkProb = true
        let router = NoAuxRouter(config: config)
        // Group 0 holds the single best expert but a poor second; groups 1 and 3 have the best pairs.
        var scores = [Float](repeating: 0.1, count: 16)
        scores[0] = 0.99; scores[1] = 0.0
        scores[4] = 0.8; scores[5] = 0.8
        scores[12] = 0.7; scores[13] = 0.75
        scores[8] = 0.5
        let bias = [Float](repeating: 0, count: 16)
        let r = scores.withUnsafeBufferPointer { router.route(scores: $0.baseAddress!, bias: bias) }
        // group sums: g0 0.99+0.1=1.09, g1 1.6, g2 0.6, g3 1.45 → groups 1 and 3
        #expect(r.experts == [4, 5, 12, 13])
        // The bias decides the choice but not the weights.
        var biased = bias
        biased[14] = 1.0
        let r2 = scores.withUnsafeBufferPointer { router.route(scores: $0.baseAddress!, bias: biased) }
        #expect(r2.experts == [4, 5, 13, 14])
        let expected = [0.8, 0.8, 0.75, 0.1].map { Float($0) / Float(2.45) * config.routedScalingFactor }
        #expect(maxAbsDiff(r2.weights, expected) < 1e-6)
    }

    @Test func yarnScalesOfKimiK2() throws {
        // Softmax scale 192^-½ · (0.1·ln(factor) + 1)²: factor 32 → 0.130861, 64 → 0.144680.
        var c = try ModelConfig.parse(Data(ModelConfigFixture.kimi.utf8), file: "config.json")
        #expect(abs(RoPE.softmaxScale(config: c) - 0.130861) < 1e-6)
        c.rope.factor = 64
        #expect(abs(RoPE.softmaxScale(config: c) - 0.144680) < 1e-6)
        let rope = RoPE(config: c)
        #expect(rope.attentionFactor == 1)  // mscale == mscale_all_dim
        // beta_fast = beta_slow = 1 puts low = floor(corr(1)) and high = ceil(corr(1)) one apart: the first
        // dimensions keep their frequencies, the last are divided by the factor.
        #expect(rope.inverseFrequencies.first == 1)
        let last = Float(1 / pow(50000.0, 62.0 / 64.0)) / 64
        #expect(abs(rope.inverseFrequencies.last! - last) / last < 1e-5)
    }

    @Test func badTokensAndFullContextAreErrors() throws {
        let (model, _) = try load("odd_dense2")
        #expect { try model.forward([199], cache: model.makeCache()) } throws: { e in
            if case .tokenOutOfRange(199, 199) = e as! ModelError { return true }
            return false
        }
        #expect { try model.forward([], cache: model.makeCache()) } throws: { e in
            if case .emptyInput = e as! ModelError { return true }
            return false
        }
        let cache = model.makeCache(limit: 4)
        _ = try model.forward([1, 2, 3], cache: cache)
        #expect { try model.forward([4, 5], cache: cache) } throws: { e in
            if case .contextFull(4, 4) = e as! ModelError { return true }
            return false
        }
        #expect(cache.count == 3, "a refused pass leaves the cache as it was")
    }

    @Test func expertFailureStopsTheForwardPassWithItsName() throws {
        let (model, source) = try load("kimi_k2")
        let ref = try Reference.load("kimi_k2")
        let first = try model.forward(ref.prompt, cache: model.makeCache(), logits: .last)
        let victim = first.routing[2][0].experts[0]
        let failing = KimiModel(config: model.config, weights: model.weights,
                                experts: FailingExperts(try CheckpointExperts(source), bad: (2, victim)))
        #expect { try failing.forward(ref.prompt, cache: failing.makeCache()) } throws: { e in
            (e as! ModelError).description.contains("layer 2 expert \(victim)")
        }
    }

    @Test func missingExpertTensorFailsAtLoad() throws {
        let copy = Fixtures.copyOfModel("deepseek_v3")
        let ckpt = try Checkpoint(path: copy)
        let victim = "model.layers.2.mlp.experts.7.gate_proj.weight"
        let items = try ckpt.tensorNames.filter { $0 != victim }.map { name in
            let t = try ckpt.tensor(name)
            return SafetensorsWriter.Item(name: name, dtype: t.dtype.rawValue, shape: t.shape,
                                          bytes: Array(UnsafeRawBufferPointer(start: t.data, count: t.byteCount)))
        }
        SafetensorsWriter().write(items, to: copy + "/model.safetensors.tmp")
        try FileManager.default.removeItem(atPath: copy + "/model.safetensors")
        try FileManager.default.moveItem(atPath: copy + "/model.safetensors.tmp", toPath: copy + "/model.safetensors")
        #expect { try KimiModel.load(checkpoint: copy) } throws: { e in
            guard case .missingTensor(let t, _) = e as! CheckpointError else { return false }
            return t == victim
        }
    }

    @Test func wrongShapeFailsAtLoadNamingTheTensor() throws {
        let copy = Fixtures.copyOfModel("odd_dense2")
        let path = copy + "/config.json"
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        json["kv_lora_rank"] = 21
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        #expect { try KimiModel.load(checkpoint: copy) } throws: { e in
            guard case .wrongShape(let file, let t, let expected, let actual) = e as! CheckpointError else { return false }
            return file.hasSuffix("model.safetensors") && t.contains("self_attn.kv_a_proj_with_mqa")
                && expected == [27, 50] && actual == [26, 50]
        }
    }
}

enum ModelConfigFixture {
    static let kimi = """
    {"model_type": "kimi_k2", "vocab_size": 163840, "hidden_size": 7168, "intermediate_size": 18432,
     "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 64, "n_shared_experts": 1,
     "n_routed_experts": 384, "routed_scaling_factor": 2.827, "kv_lora_rank": 512, "q_lora_rank": 1536,
     "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "n_group": 1, "topk_group": 1,
     "num_experts_per_tok": 8, "first_k_dense_replace": 1, "max_position_embeddings": 131072,
     "rope_theta": 50000.0, "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"}}
    """
}

/// The fused expert (gate, up and SiLU per chunk of rows, then down) computes what the three products and the
/// gating pass compute one after another, bit for bit, in fp32 and with q8 activations; on 1 and 7 tokens.
@Suite struct FusedExpertTests {
    @Test(arguments: [1, 7])
    func fusedEqualsTheProductsOneAfterAnother(tokens T: Int) {
        let (H, inter) = (2048, 1024)  // gate and up split into several chunks of rows across the pool
        let gate = KernelBenchmark.randomMatrix(.int4, rows: inter, cols: H, seed: 11)
        let up = KernelBenchmark.randomMatrix(.int4, rows: inter, cols: H, seed: 12)
        let down = KernelBenchmark.randomMatrix(.int4, rows: H, cols: inter, seed: 13)
        let x = KernelBenchmark.randomActivations(T * H, seed: 14)

        let g = FloatBuffer(count: T * inter), u = FloatBuffer(count: T * inter), expected = FloatBuffer(count: T * H)
        gate.apply(x.pointer, tokens: T, into: g.pointer)
        up.apply(x.pointer, tokens: T, into: u.pointer)
        for i in 0..<(T * inter) { g.pointer[i] = VectorOps.silu(g.pointer[i]) * u.pointer[i] }
        down.apply(g.pointer, tokens: T, into: expected.pointer)
        let scratch = FloatBuffer(count: 2 * T * inter), fused = FloatBuffer(count: T * H)
        swiGLU(gate: gate, up: up, down: down, x.pointer, tokens: T, scratch: scratch.pointer, into: fused.pointer)
        #expect(fused.array == expected.array)

        let q = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: T, cols: H))
        let xq = Q8Activations(x.pointer, tokens: T, cols: H, memory: q.pointer)
        gate.applyQ8(xq, into: g.pointer)
        up.applyQ8(xq, into: u.pointer)
        for i in 0..<(T * inter) { g.pointer[i] = VectorOps.silu(g.pointer[i]) * u.pointer[i] }
        down.applyQ8(Q8Activations(g.pointer, tokens: T, cols: inter, memory: q.pointer), into: expected.pointer)
        let scratchQ8 = FloatBuffer(count: 2 * T * inter + Q8Activations.floatsNeeded(tokens: T, cols: H))
        swiGLUQ8(gate: gate, up: up, down: down, x.pointer, tokens: T, scratch: scratchQ8.pointer, into: fused.pointer)
        #expect(fused.array == expected.array)
    }
}

extension ModelBehaviourTests {
    /// A U8 Linear weight is int8 interleaved by 8 rows only where a store's resident file is read
    /// (`interleavedInt8`), and only with its scales and in whole blocks of 8 rows; otherwise it is refused with
    /// an error that names the tensor, before anything reads its bytes.
    @Test func u8WeightsAreInterleavedInt8OnlyWhereAStoreSaysSo() throws {
        let config = try ModelConfig.load(path: Fixtures.model("kimi_k2"))
        let dir = Fixtures.scratchDirectory("u8-weights")
        let name = config.tensorPrefix + "x.weight"
        func source(rows: Int, scales: Bool) throws -> Checkpoint {
            var items = [SafetensorsWriter.Item(name: name, dtype: "U8", shape: [rows, 32],
                                                bytes: (0..<(rows * 32)).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) })]
            if scales { items.append(.f32(config.tensorPrefix + "x.weight_scale", [rows, 1], Array(repeating: 0.5, count: rows))) }
            let path = dir + "/rows\(rows)-\(scales).safetensors"
            SafetensorsWriter().write(items, to: path)
            return try Checkpoint(path: path)
        }
        let good = try source(rows: 16, scales: true)
        let m = try CheckpointWeights(checkpoint: good, config: config, interleavedInt8: true).matrix("x", rows: 16, cols: 32)
        guard case .int8g32x8 = m.encoding else {
            Issue.record("a store's U8 weight loaded as \(m.encoding)")
            return
        }
        #expect(m.element(0, 0) == -63.5 && m.element(0, 4) == 48.5)  // bytes 0 and 32 (unit 1): 1 and 225, less 128, × 0.5
        func refused(_ source: Checkpoint, rows: Int, store: Bool) -> Bool {
            do {
                _ = try CheckpointWeights(checkpoint: source, config: config, interleavedInt8: store).matrix("x", rows: rows, cols: 32)
                return false
            } catch { return "\(error)".contains("x.weight") }
        }
        #expect(refused(good, rows: 16, store: false), "a U8 weight outside a store")
        #expect(refused(try source(rows: 12, scales: true), rows: 12, store: true), "12 rows: not whole blocks of 8")
        #expect(refused(try source(rows: 16, scales: false), rows: 16, store: true), "no weight_scale")
    }
}
