import Foundation
import MoECheckpoint
import MoEModel
import MoETensor
import MoETestSupport
import Testing
@testable import MoEExpertStore

/// Converts a fixture into a fresh store directory and opens it.
func convert(_ name: String, experts: StoreConverter.ExpertsOption = .source, resident: StoreConverter.ResidentOption = .source,
             chunk: Int = 64 << 20) throws -> String {
    let out = Fixtures.scratchDirectory("store-\(name)") + "/store"
    var c = StoreConverter(source: Fixtures.model(name), output: out)
    c.experts = experts
    c.resident = resident
    c.chunkBytes = chunk
    try c.run()
    return out
}

/// Stores made from every source format give transformers' logits and greedy tokens.
@Suite struct StoreReferenceTests {
    @Test(arguments: Fixtures.allModels)
    func storeMatchesTransformers(model name: String) throws {
        let ref = try Reference.load(name)
        // Exact options: every weight keeps its source values (INT4 sources already are int4 + bf16).
        let store = try convert(name, experts: name == "kimi_k2_int4" ? .int4 : .source,
                                resident: name == "kimi_k2_int4" ? .bf16 : .source)
        let model = try ExpertStore(path: store).loadModel()
        let r = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        for (i, expected) in ref.prefillLogits.enumerated() {
            #expect(maxAbsDiff(r.row(i), expected) <= 1e-4, "\(name) position \(i)")
        }
        #expect(try model.greedy(prompt: ref.prompt, maxTokens: ref.generated.count) == ref.generated)
        #expect((model.experts as! StoreExperts).reads > 0, "experts came from the expert files")
    }

    /// 512 positions instead of the fixtures' 12: where YaRN's interpolated rope frequencies, the softmax over
    /// hundreds of latent keys and the KV cache at depth matter. transformers' logits at positions 0, 63, ..., 511
    /// (Tools/compare_long_context.py --write-reference); the prompt runs in one pass, and again as 500 tokens
    /// followed by 12 decode steps through the cache.
    @Test func longPromptMatchesTransformers() throws {
        struct Long: Decodable { let prompt: [Int]; let positions: [Int]; let logits: [[Float]] }
        let url = URL(fileURLWithPath: Fixtures.root + "/long-context/kimi_k2_int4.json")
        let ref = try JSONDecoder().decode(Long.self, from: Data(contentsOf: url))
        #expect(ref.prompt.count == 512 && ref.positions.last == 511)
        let model = try ExpertStore(path: try convert("kimi_k2_int4", experts: .int4, resident: .bf16)).loadModel()
        let whole = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        for (p, expected) in zip(ref.positions, ref.logits) {
            #expect(maxAbsDiff(whole.row(p), expected) <= 1e-4, "position \(p)")
        }
        let cache = model.makeCache()
        _ = try model.forward(Array(ref.prompt[..<500]), cache: cache, logits: .last)
        var last = whole
        for t in ref.prompt[500...] { last = try model.forward([t], cache: cache, logits: .last) }
        #expect(maxAbsDiff(last.row(0), ref.logits.last!) <= 1e-4, "position 511 by decode")

        // The default arithmetic's gate (docs/performance.md): with int8 activations into the experts' gate and up and
        // two-part int8 into down, (where the CPU has AMX or AVX512-BF16) the resident matrices' activations in two bf16
        // parts, and an f16 KV cache, the argmax is exact's at every one of the 512 positions where exact's top-2
        // margin exceeds 0.1.
        func gate(_ name: String) throws -> ForwardResult { try Self.argmaxGate(name, model, ref.prompt, exact: whole) }
        model.expertActivations = .q8GateUp
        _ = try gate("q8-gate-up")
        model.expertActivations = .q8GateUpQ16Down
        _ = try gate("q8-gate-up-q16-down")
        model.residentActivations = .bf16x2
        _ = try gate(ResidentActivations.bf16x2Kernel().map { "q8-gate-up-q16-down with bf16x2 resident products (\($0.rawValue))" } ?? "q8-gate-up-q16-down (no bf16x2 kernel here)")
        model.kvPrecision = .f16
        let fast = try gate("the command line's default, with an f16 KV cache")
        // Decode through the cache reproduces the whole pass bit for bit in the fast arithmetic too.
        let fastCache = model.makeCache()
        _ = try model.forward(Array(ref.prompt[..<500]), cache: fastCache, logits: .last)
        for t in ref.prompt[500...] { last = try model.forward([t], cache: fastCache, logits: .last) }
        #expect(Array(last.row(0)) == Array(fast.row(511)), "position 511 by decode, fast arithmetic")
    }

    /// The default arithmetic's gate on the long-context fixture: `model`'s current arithmetic keeps `exact`'s argmax
    /// at every position where exact's top-2 margin exceeds 0.1 (more than 300 of the 512), and moves the logits.
    static func argmaxGate(_ name: String, _ model: KimiModel, _ prompt: [Int], exact whole: ForwardResult) throws -> ForwardResult {
        let fast = try model.forward(prompt, cache: model.makeCache(), logits: .all)
        var decided = 0, agreeing = 0
        for p in 0..<prompt.count {
            let row = whole.row(p), top = argmax(row)
            let second = row.indices.filter { $0 != row.startIndex + top }.map { row[$0] }.max()!
            guard row[row.startIndex + top] - second > 0.1 else { continue }
            decided += 1
            if argmax(fast.row(p)) == top { agreeing += 1 } else { Issue.record("\(name) changes the argmax at position \(p): margin \(row[row.startIndex + top] - second), it moved the logits by up to \(maxAbsDiff(fast.row(p), Array(row)))") }
        }
        #expect(decided > 300 && agreeing == decided, "\(name): \(agreeing) of \(decided); max over positions \((0..<prompt.count).map { maxAbsDiff(fast.row($0), Array(whole.row($0))) }.max()!)")
        #expect(maxAbsDiff(fast.row(prompt.count - 1), whole.row(prompt.count - 1)) > 0, "\(name) ran (its rounding moves the logits)")
        return fast
    }

    /// `convert --resident int8` on the long-context fixture: the command line's default arithmetic for such a store
    /// (two-part int8 into the int8 resident matrices, the experts' q8-gate-up-q16-down, an f16 KV cache) passes the
    /// same argmax gate against exact arithmetic on the same int8 weights, and decode reproduces the prompt pass.
    @Test func residentInt8PassesTheLongContextGate() throws {
        struct Long: Decodable { let prompt: [Int] }
        let ref = try JSONDecoder().decode(Long.self, from: Data(contentsOf: URL(fileURLWithPath: Fixtures.root + "/long-context/kimi_k2_int4.json")))
        let model = try ExpertStore(path: try convert("kimi_k2_int4", experts: .int4, resident: .int8)).loadModel()
        #expect(model.weights.hasInterleavedInt8)
        let whole = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        (model.expertActivations, model.residentActivations, model.kvPrecision) = (.q8GateUpQ16Down, .q8, .f16)
        let fast = try Self.argmaxGate("two-part int8 resident products", model, ref.prompt, exact: whole)
        let cache = model.makeCache()
        _ = try model.forward(Array(ref.prompt[..<500]), cache: cache, logits: .last)
        var last = fast
        for t in ref.prompt[500...] { last = try model.forward([t], cache: cache, logits: .last) }
        #expect(Array(last.row(0)) == Array(fast.row(511)), "position 511 by decode")
    }

    /// Why the int8 companion is opt-in (`--resident-weights int8`): on the long-context fixture, against exact
    /// arithmetic over the bf16 matrices (the reference's own weights), int8 weights move the argmax at a few
    /// positions where exact's top-2 margin exceeds 0.1 (measured: 4 of 387 with two-part int8 activations, 5 with
    /// fp32 ones: the weights, not the activations), which the default arithmetic must never do (`argmaxGate`).
    @Test func int8CompanionKeepsMostDecisiveArgmaxesAgainstBF16Exact() throws {
        struct Long: Decodable { let prompt: [Int] }
        let ref = try JSONDecoder().decode(Long.self, from: Data(contentsOf: URL(fileURLWithPath: Fixtures.root + "/long-context/kimi_k2_int4.json")))
        let path = try convert("kimi_k2_int4", experts: .int4, resident: .bf16AndInt8)
        let exact = try ExpertStore(path: path).loadModel()
        #expect(!exact.weights.hasInterleavedInt8)
        let whole = try exact.forward(ref.prompt, cache: exact.makeCache(), logits: .all)
        let model = try ExpertStore(path: path, residentInt8: true).loadModel()
        #expect(model.weights.hasInterleavedInt8)
        (model.expertActivations, model.residentActivations, model.kvPrecision) = (.q8GateUpQ16Down, .q8, .f16)
        let fast = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        var decided = 0, agreeing = 0
        for p in 0..<ref.prompt.count {
            let row = Array(whole.row(p)), top = argmax(row[...])
            guard row[top] - row.indices.filter { $0 != top }.map { row[$0] }.max()! > 0.1 else { continue }
            decided += 1
            if argmax(fast.row(p)) == top { agreeing += 1 }
        }
        #expect(decided > 300 && Double(agreeing) >= 0.98 * Double(decided), "\(agreeing) of \(decided)")
    }

    /// Kimi K2 Thinking's INT4 values, decoded here straight from the compressed-tensors tensors by the
    /// documented formula, are exactly the values the store's int4 extents hold.
    @Test func int4StoreHoldsTheSourceValuesBitForBit() throws {
        let store = try ExpertStore(path: try convert("kimi_k2_int4", experts: .int4, resident: .bf16))
        #expect(store.manifest.experts.layout.encoding == .int4 && store.manifest.experts.layout.scaleType == .bf16)
        let source = try Checkpoint(path: Fixtures.model("kimi_k2_int4"))
        let layout = store.manifest.experts.layout
        let extent = UnsafeMutableRawPointer.allocate(byteCount: layout.extentBytes, alignment: 4096)
        defer { extent.deallocate() }
        var compared = 0
        for f in store.manifest.experts.files {
            let file = FileHandle(forReadingAtPath: store.path + "/" + f.path)!
            for e in 0..<f.experts {
                let data = try file.read(upToCount: layout.extentBytes)!
                data.withUnsafeBytes { extent.copyMemory(from: $0.baseAddress!, byteCount: layout.extentBytes) }
                let m = layout.weights(at: UnsafeRawPointer(extent), owner: store)
                for (proj, w) in [("gate_proj", m.gate), ("up_proj", m.up), ("down_proj", m.down)] {
                    let base = "model.layers.\(f.layer).mlp.experts.\(e).\(proj)"
                    let packed = try source.tensor(base + ".weight_packed"), scale = try source.tensor(base + ".weight_scale")
                    for r in 0..<w.rows {
                        for c in 0..<w.cols {
                            let word = UInt32(bitPattern: Int32(truncatingIfNeeded: packed.int(at: r * w.cols / 8 + c / 8)))
                            let q = Int((word >> UInt32(4 * (c % 8))) & 0xF) - 8
                            let expected = Float(q) * scale.float(at: r * w.cols / 32 + c / 32)
                            if w.element(r, c).bitPattern != expected.bitPattern {
                                Issue.record("\(base)[\(r), \(c)]: \(w.element(r, c)) != \(expected)")
                                return
                            }
                            compared += 1
                        }
                    }
                }
            }
        }
        #expect(compared == 2 * 32 * 3 * 64 * 32)
    }

    @Test func conversionToInt4AndInt8RunsAndStaysClose() throws {
        let ref = try Reference.load("kimi_k2")
        for option in [StoreConverter.ExpertsOption.int4, .int8] {
            let model = try ExpertStore(path: try convert("kimi_k2", experts: option, resident: .bf16)).loadModel()
            let r = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
            let d = maxAbsDiff(r.logits, ref.prefillLogits.flatMap { $0 })
            // Quantization changes the values: int8 stays near the reference, int4 further off but not noise.
            #expect(d < (option == .int8 ? 0.05 : 1.5), "\(option): max |Δ| \(d)")
            #expect(d > 0, "\(option) quantized nothing")
        }
    }

    /// `--resident int8`: the Linear weights of attention, the dense MLP and the shared experts become I8 with F32
    /// scales per 32 values (embeddings, routers and kv_b stay bf16); the store verifies, runs close to transformers
    /// (int8 weights: not bit-exact, not noise either) and is smaller.
    @Test func residentInt8RunsAndStaysClose() throws {
        let ref = try Reference.load("kimi_k2")
        let path = try convert("kimi_k2", experts: .int4, resident: .int8)
        let store = try ExpertStore(path: path)
        let tensors = store.manifest.resident.tensors
        for (name, t) in tensors where name.hasSuffix(".weight") {
            let int8 = ["q_a_proj", "kv_a_proj_with_mqa", "o_proj", "shared_experts", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
                .contains { name.contains($0) } && t.shape.count == 2 && t.shape[1] % 32 == 0
            // Interleaved by 8 rows (U8, offset by 128) where the rows allow it, row-major I8 where not.
            let interleaved = t.shape.count == 2 && t.shape[0] % 8 == 0
            #expect(t.dtype == (int8 ? (interleaved ? "U8" : "I8") : "BF16") || !name.contains("proj"), "\(name): \(t.dtype)")
            if t.dtype == "I8" || t.dtype == "U8" { #expect(tensors[String(name.dropLast(".weight".count)) + ".weight_scale"]?.dtype == "F32") }
        }
        #expect(tensors.values.contains { $0.dtype == "U8" })
        for kept in ["embed_tokens.weight", "layers.1.mlp.gate.weight", "layers.1.self_attn.kv_b_proj.weight"] {
            #expect(tensors.first { $0.key.hasSuffix(kept) }?.value.dtype == "BF16", "\(kept)")
        }
        #expect(StoreVerifier(path: path).run().ok)
        let bf16 = try ExpertStore(path: try convert("kimi_k2", experts: .int4, resident: .bf16))
        #expect(store.manifest.resident.bytes < bf16.manifest.resident.bytes)
        // What `inspect` and `plan` forecast for each choice, from the bf16 store's tensors: the files' sizes less
        // their headers (the safetensors header is padded to 4 KB).
        let listed = bf16.manifest.resident.tensors.map { (name: $0.key, dtype: DType(rawValue: $0.value.dtype)!, shape: $0.value.shape,
                                                            bytes: $0.value.bytes) }
        for (option, actual) in [(StoreConverter.ResidentOption.int8, store), (.bf16, bf16)] {
            let forecast = StoreConverter.residentBytes(listed, as: option), header = actual.manifest.resident.bytes - forecast
            #expect(header > 0 && header <= 1 << 16, "\(option): forecast \(forecast), file \(actual.manifest.resident.bytes)")
        }
        let model = try store.loadModel()
        let r = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        let bf16Model = try bf16.loadModel()
        let reference = try bf16Model.forward(ref.prompt, cache: bf16Model.makeCache(), logits: .all)
        let d = maxAbsDiff(r.logits, reference.logits)
        #expect(d > 0 && d < 0.2, "max |Δ| \(d) from the bf16-resident store")  // measured 0.058
        // The U8 tensors load as interleaved int8; with any setting but fp32 they multiply two-part int8 activations,
        // close to the exact product of the same int8 weights (a different path: not bit-identical).
        guard case .int8g32x8 = model.weights.layers[0].attention.kvA.encoding else {
            Issue.record("kv_a did not load as interleaved int8: \(model.weights.layers[0].attention.kvA.encoding)")
            return
        }
        model.residentActivations = .q8
        let twoPart = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        let e = maxAbsDiff(twoPart.logits, r.logits)
        #expect(e > 0 && e < 0.02, "two-part int8 activations: max |Δ| \(e) from fp32's")
    }

    /// `--resident bf16+int8` (convert's default) writes resident.safetensors as `--resident bf16` does and a
    /// companion holding exactly `--resident int8`'s int8 matrices; opened with the companion, the model computes
    /// bit for bit what the int8 store's does, opened without it what the bf16 store's does, and the bf16 twins the
    /// companion replaces are neither read nor reachable.
    @Test func bf16AndInt8StoreHoldsBothFormsAndLoadsEither() throws {
        let ref = try Reference.load("kimi_k2")
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16AndInt8)
        let int8Store = try ExpertStore(path: try convert("kimi_k2", experts: .int4, resident: .int8))
        let bf16Store = try ExpertStore(path: try convert("kimi_k2", experts: .int4, resident: .bf16))
        let both = try ExpertStore(path: path)
        let companion = try #require(both.manifest.residentInt8)
        #expect(both.manifest.version == 4 && companion.file == StoreManifest.residentInt8FileName)
        #expect(both.manifest.resident.tensors.mapValues(\.xxh64) == bf16Store.manifest.resident.tensors.mapValues(\.xxh64))
        let int8Only = int8Store.manifest.resident.tensors.filter { $0.value.dtype == "U8" || $0.key.hasSuffix(".weight_scale") }
        #expect(!int8Only.isEmpty && companion.tensors.mapValues(\.xxh64) == int8Only.mapValues(\.xxh64))
        #expect(both.residentInt8 == nil && both.residentBytesInMemory == both.manifest.resident.bytes)
        #expect(StoreVerifier(path: path).run().ok)

        let withInt8 = try ExpertStore(path: path, residentInt8: true)
        let replaced = companion.tensors.keys.filter { !$0.hasSuffix(".weight_scale") }
        #expect(!replaced.isEmpty && replaced.allSatisfy { withInt8.resident.isSkipped($0) })
        #expect(!withInt8.resident.isSkipped("model.embed_tokens.weight") && !withInt8.resident.isSkipped(replaced.sorted()[0] + "_scale"))
        #expect { _ = try withInt8.resident.tensor(replaced.sorted()[0]) } throws: { e in
            "\(e)".contains(replaced.sorted()[0]) && "\(e)".contains("int8 companion")
        }
        let replacedBytes = replaced.reduce(0) { $0 + both.manifest.resident.tensors[$1]!.bytes }
        #expect(withInt8.residentBytesInMemory == both.manifest.resident.bytes - replacedBytes + companion.bytes)
        #expect(withInt8.residentBytesInMemory < both.manifest.resident.bytes)

        for (activations, kv) in [(ResidentActivations.fp32, KVPrecision.f32), (.q8, .f16)] {
            func logits(_ store: ExpertStore) throws -> [Float] {
                let m = try store.loadModel()
                (m.residentActivations, m.kvPrecision) = (activations, kv)
                return try m.forward(ref.prompt, cache: m.makeCache(), logits: .all).logits
            }
            #expect(try logits(withInt8) == logits(int8Store), "with the companion = the int8 store (\(activations))")
            #expect(try logits(both) == logits(bf16Store), "without it = the bf16 store (\(activations))")
        }
        // A store opened with the companion asked for but without one computes with what it has.
        #expect(try ExpertStore(path: bf16Store.path, residentInt8: true).residentInt8 == nil)
    }

    /// A damaged companion is refused by name when it is used and found by `verify`; a run that does not use it
    /// (`--exact`) is unaffected.
    @Test func damagedInt8CompanionIsRefusedWhereUsed() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16AndInt8)
        let file = path + "/" + StoreManifest.residentInt8FileName
        let m = try ExpertStore(path: path).manifest
        let (name, t) = try #require(m.residentInt8?.tensors.first { $0.key.hasSuffix("kv_a_proj_with_mqa.weight") })
        let h = try #require(FileHandle(forUpdatingAtPath: file))
        try h.seek(toOffset: UInt64(t.offset + t.bytes / 2))
        let byte = try #require(try h.read(upToCount: 1)).first!
        try h.seek(toOffset: UInt64(t.offset + t.bytes / 2))
        try h.write(contentsOf: Data([byte ^ 0x10]))
        try h.close()
        #expect { try ExpertStore(path: path, residentInt8: true) } throws: { e in
            guard case .tensorChecksum(let tensor, let f) = e as! StoreError else { return false }
            return tensor == name && f == file
        }
        _ = try ExpertStore(path: path).loadModel()
        let report = StoreVerifier(path: path).run()
        #expect(report.problems.count == 1 && report.problems[0].contains(name) && report.problems[0].contains(file))
    }

    @Test func oddSizesRefuseGroupQuantizationClearly() throws {
        #expect { try convert("odd_dense2", experts: .int4) } throws: { e in
            (e as! StoreError).description.contains("hidden_size 50 is not a multiple of 32")
        }
    }
}

/// Interrupted conversions resume and end byte-identical; damage is found and named.
@Suite(.serialized) struct StoreIntegrityTests {
    @Test func killedConversionsResumeByteIdentical() throws {
        let exe = Fixtures.executable
        let reference = Fixtures.scratchDirectory("reference") + "/store"
        let args = ["convert", Fixtures.model("kimi_k2"), "--experts", "int4", "--write-chunk", "4096", "--quiet"]
        #expect(try runProcess(exe, args + ["-o", reference]).status == 0)
        let expected = directoryContents(reference)
        #expect(expected.keys.contains("manifest.json") && expected.keys.contains(StoreManifest.residentInt8FileName)
                && expected.count == 7)

        var killed = 0
        // An uninterrupted run makes 163 writes here (4 KB chunks; resident.safetensors, its int8 companion, the
        // expert files, the carried files), the last is the manifest's.
        for points in [[1], [2], [40], [66], [67], [80], [93], [100], [132], [158], [162], [163], [20, 60]] {
            let out = Fixtures.scratchDirectory("killed") + "/store"
            for point in points {
                let r = try runProcess(exe, args + ["-o", out], environment: ["MOESTREAM_KILL_AFTER_WRITES": "\(point)"])
                if r.status == -9 {
                    killed += 1
                    #expect(!FileManager.default.fileExists(atPath: out + "/manifest.json"),
                            "a killed conversion left a manifest (kill after write \(point))")
                }
            }
            let resumed = try runProcess(exe, args + ["-o", out])
            #expect(resumed.status == 0, "resume after kill at \(points): \(resumed.stderr)")
            #expect(directoryContents(out) == expected, "store after kill at \(points) differs from an uninterrupted run")
        }
        #expect(killed == 14, "only \(killed) of 14 runs were actually killed")
    }

    /// A NaN or an infinity in a matrix the conversion quantises (int4 experts, int8 resident matrices) is refused
    /// by tensor, row and column: no scale represents it (a fuzzed shard with one crashed the int4 quantiser).
    @Test(arguments: [("model.layers.1.mlp.experts.1.up_proj.weight", Float.nan, StoreConverter.ExpertsOption.int4),
                      ("model.layers.2.mlp.experts.3.down_proj.weight", -Float.infinity, .int4),
                      ("model.layers.0.self_attn.o_proj.weight", Float.infinity, .source)])
    func nonFiniteWeightsAreRefusedWhereTheyWouldBeQuantised(tensor: String, value: Float,
                                                             experts: StoreConverter.ExpertsOption) throws {
        let source = Fixtures.copyOfModel("kimi_k2")
        let element = 37  // row 37 / cols, column 37 % cols of the [rows, cols] matrix
        try plant(value, in: tensor, element: element, of: source)
        var c = StoreConverter(source: source, output: Fixtures.scratchDirectory("nonfinite") + "/store")
        c.experts = experts
        c.resident = experts == .source ? .int8 : .bf16
        let cols = try SafetensorsFile(path: source + "/" + shard(of: tensor, in: source)).entries[tensor]!.shape[1]
        #expect { try c.run() } throws: { e in
            let text = (e as! StoreError).description
            return text.contains("tensor '\(tensor)'") && text.contains("row \(element / cols), column \(element % cols)")
                && text.contains("not a finite number")
        }
        // Where nothing is quantised (bf16 experts and resident matrices passed through) the same checkpoint
        // converts: the value is kept as the source has it, for the model's non-finite-logits check to meet.
        var kept = StoreConverter(source: source, output: Fixtures.scratchDirectory("nonfinite-kept") + "/store")
        kept.experts = .source
        kept.resident = .bf16
        try kept.run()
    }

    /// The shard of the sharded fixture `dir` that holds `tensor`.
    func shard(of tensor: String, in dir: String) throws -> String {
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors.index.json")))
        return try #require(((index as? [String: Any])?["weight_map"] as? [String: String])?[tensor])
    }

    /// Writes `value` (as BF16) over element `element` of BF16 tensor `tensor` in the sharded checkpoint at `dir`.
    func plant(_ value: Float, in tensor: String, element: Int, of dir: String) throws {
        let path = dir + "/" + (try shard(of: tensor, in: dir))
        let entry = try #require(try SafetensorsFile(path: path).entries[tensor])
        #expect(entry.dtype == .bf16)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let at = entry.range.lowerBound + 2 * element
        let bits = floatToBF16(value)
        bytes[at] = UInt8(bits & 0xFF)
        bytes[at + 1] = UInt8(bits >> 8)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    @Test func halfWrittenStoreIsRefused() throws {
        let out = Fixtures.scratchDirectory("half") + "/store"
        _ = try runProcess(Fixtures.executable, ["convert", Fixtures.model("kimi_k2"), "-o", out, "--quiet"],
                           environment: ["MOESTREAM_KILL_AFTER_WRITES": "3"])
        #expect { try ExpertStore(path: out) } throws: { e in
            guard case .incomplete = e as! StoreError else { return false }
            return true
        }
        // Resuming with other options would mix two conversions: refused, naming the directory.
        var other = StoreConverter(source: Fixtures.model("kimi_k2"), output: out)
        other.experts = .bf16
        #expect { try other.run() } throws: { e in
            guard case .outputInUse(let p, _) = e as! StoreError else { return false }
            return p == out
        }
    }

    @Test func flippedByteInAnExpertIsNamedAndNeverComputed() throws {
        let ref = try Reference.load("kimi_k2")
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        // Damage the first expert that the prompt's first token sends to layer 2.
        let clean = try ExpertStore(path: path).loadModel()
        let victim = try clean.forward(ref.prompt, cache: clean.makeCache()).routing[2][0].experts[0]
        let store = try ExpertStore(path: path)
        let (file, offset) = store.location(layer: 2, expert: victim)!
        let dataPath = path + "/" + file.path
        let h = FileHandle(forUpdatingAtPath: dataPath)!
        try h.seek(toOffset: UInt64(offset + 100))
        var byte = try h.read(upToCount: 1)![0]
        byte ^= 0x10
        try h.seek(toOffset: UInt64(offset + 100))
        h.write(Data([byte]))
        try h.close()

        let report = StoreVerifier(path: path).run()
        #expect(report.problems == ["layer 2 expert \(victim): checksum mismatch in \(dataPath) at offset \(offset)"])

        let model = try ExpertStore(path: path).loadModel()
        #expect { try model.forward(ref.prompt, cache: model.makeCache()) } throws: { e in
            let d = (e as! ModelError).description
            return d.contains("layer 2 expert \(victim)") && d.contains(dataPath)
        }
    }

    @Test func truncatedExpertFileIsNamedAtLoadAndByVerify() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        let store = try ExpertStore(path: path)
        let extent = store.manifest.experts.layout.extentBytes
        let dataPath = path + "/experts/layer-001.bin"
        let h = FileHandle(forWritingAtPath: dataPath)!
        try h.truncate(atOffset: UInt64(extent * 30 + 100))
        try h.close()
        #expect { try ExpertStore(path: path) } throws: { e in
            guard case .wrongFileSize(let f, _, _, let first) = e as! StoreError else { return false }
            return f == dataPath && first == 30
        }
        let report = StoreVerifier(path: path).run()
        #expect(report.problems.contains { $0.contains(dataPath) && $0.contains("expert 30") })
        #expect(report.problems.contains { $0.hasPrefix("layer 1 expert 31: missing from \(dataPath)") })
    }

    @Test func editedManifestIsRefused() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        let manifestPath = path + "/manifest.json"
        var text = try String(contentsOfFile: manifestPath, encoding: .utf8)
        let store = try ExpertStore(path: path)
        let sum = store.manifest.experts.files[0].checksums[5]
        text = text.replacingOccurrences(of: sum, with: String(sum.reversed()))
        try text.write(toFile: manifestPath, atomically: true, encoding: .utf8)
        #expect { try ExpertStore(path: path) } throws: { e in
            guard case .badManifest(let f, let why) = e as! StoreError else { return false }
            return f == manifestPath && why.contains("edited")
        }
        #expect(StoreVerifier(path: path).run().problems.first?.contains(manifestPath) == true)
    }

    @Test func damagedResidentTensorIsNamedAtLoad() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        let store = try ExpertStore(path: path)
        let name = "model.layers.1.self_attn.kv_b_proj.weight"
        let t = store.manifest.resident.tensors[name]!
        let h = FileHandle(forUpdatingAtPath: path + "/resident.safetensors")!
        try h.seek(toOffset: UInt64(t.offset + 3))
        h.write(Data([0xAB]))
        try h.close()
        #expect { try ExpertStore(path: path) } throws: { e in
            guard case .tensorChecksum(let tensor, _) = e as! StoreError else { return false }
            return tensor == name
        }
        #expect(StoreVerifier(path: path).run().problems.contains { $0.contains(name) })
    }

    @Test func completeStoreIsLeftAloneOnRerun() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        let before = directoryContents(path)
        var again = StoreConverter(source: Fixtures.model("kimi_k2"), output: path)
        again.experts = .int4
        again.resident = .bf16
        try again.run()
        #expect(directoryContents(path) == before)
    }
}
