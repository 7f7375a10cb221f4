import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoESystem
import MoETestSupport
import Testing
@testable import MoERuntime

/// `convert` of a GGUF: the experts' blocks land in the store bit for bit, `verify` covers them, and the model run
/// from the store through a cache of any size gives exactly the logits of the model run from the GGUF itself (and
/// so stays within 1e-4 of transformers, `GGUFReferenceTests`).
@Suite(.serialized) struct GGUFStoreTests {
    @Test(arguments: ["kimi_k2_q4_k_m", "kimi_k2_q2_k", "kimi_k2_iq2_m"])
    func convertedStoreRunsBitForBitLikeTheFile(name: String) throws {
        let file = Fixtures.root + "/gguf/\(name).gguf"
        let out = Fixtures.scratchDirectory("gguf-store") + "/store"
        var converter = StoreConverter(source: file, output: out)
        converter.experts = .source
        converter.resident = .source
        try converter.run()
        #expect(StoreVerifier(path: out).run().ok)
        let store = try ExpertStore(path: out)
        #expect(store.manifest.experts.layout.encoding == .ggml)
        #expect(store.manifest.source.kind == "gguf")

        // Every expert's three slices, byte for byte.
        let gguf = try GGUFCheckpoint(path: file)
        let layout = store.manifest.experts.layout
        let extents = try Data(contentsOf: URL(fileURLWithPath: out + "/experts/layer-001.bin"))
        for e in 0..<8 {
            for (proj, m) in [("gate", layout.gate), ("up", layout.up), ("down", layout.down)] {
                let (f, info) = try #require(gguf.info("blk.1.ffn_\(proj)_exps.weight"))
                let per = info.range.count / 8
                let expected = Data(f.bytes(of: info)[(e * per)..<((e + 1) * per)])
                let start = e * layout.extentBytes + m.offset
                #expect(extents[start..<(start + per)] == expected, "expert \(e) \(proj)")
                #expect(m.ggmlType == info.type.description)
            }
        }

        let prompt = [1024, 709, 470, 919, 40, 105, 310, 696, 541, 116, 404, 115]
        let reference = try runSequence(try KimiModel.load(gguf: file), prompt, steps: 6)
        #expect(try runSequence(try store.loadModel(), prompt, steps: 6) == reference)
        for slots in [2, 3, 8] {
            var c = CacheConfiguration(totalBudget: slots * layout.extentBytes, topology: .detect())
            c.ioDepth = 4
            let (model, cache) = try store.loadModel(cache: c)
            #expect(try runSequence(model, prompt, steps: 6) == reference, "\(name), \(slots) slots")
            cache.shutdown()
        }
    }

    /// A layer whose experts use other types than the layout's (llama.cpp's Q4_K_M gives some layers' down
    /// projections Q6_K): the layer names its types, each matrix's space fits the largest, and the manifest check
    /// refuses types that do not fit or cannot run.
    @Test func perLayerTypesAreCheckedAgainstTheirSpace() throws {
        let out = Fixtures.scratchDirectory("gguf-store") + "/store"
        var converter = StoreConverter(source: Fixtures.root + "/gguf/kimi_k2_q4_k_m.gguf", output: out)
        converter.experts = .source
        converter.resident = .source
        try converter.run()
        var m = try StoreManifest.load(out + "/" + StoreManifest.fileName)
        #expect(m.experts.layout.ggmlTypes == [.q4_K, .q4_K, .q6_K])
        #expect(m.experts.files[0].ggmlTypes == nil)
        func refusal(_ types: [String]?) throws -> String {
            var copy = m
            copy.experts.files[0].ggmlTypes = types
            do { _ = try StoreManifest.decode(try copy.encoded(), file: "manifest.json"); return "accepted" } catch { return "\(error)" }
        }
        #expect(try refusal(["Q4_K", "Q4_K", "Q4_K"]) == "accepted", "a smaller down type fits Q6_K's space")
        #expect(try refusal(["Q4_K", "Q4_K", "Q8_0"]).contains("does not fit"))
        #expect(try refusal(["Q4_K", "MXFP4", "Q6_K"]).contains("cannot run yet"))
        #expect(try refusal(["Q4_K", "Q4_K"]).contains("three known types"))
        #expect(try refusal(["Q4_K", "Q4_K", "Q9_X"]).contains("three known types"))

        // Both expert readers take the layer's types: with down claimed as Q4_K, Q6_K's bytes read as Q4_K blocks
        // give non-finite values (their "scales" are quant bytes), which the model refuses, through the plain
        // reader and through a two-slot cache alike; honestly typed, the same store runs.
        let prompt = [1024, 709, 470, 919, 40]
        _ = try runSequence(try ExpertStore(path: out).loadModel(), prompt, steps: 3)
        m.experts.files[0].ggmlTypes = ["Q4_K", "Q4_K", "Q4_K"]
        try m.encoded().write(to: URL(fileURLWithPath: out + "/" + StoreManifest.fileName))
        let store = try ExpertStore(path: out)
        #expect(throws: (any Error).self) { try runSequence(try store.loadModel(), prompt, steps: 3) }
        var c = CacheConfiguration(totalBudget: 2 * store.manifest.experts.layout.extentBytes, topology: .detect())
        c.ioDepth = 4
        let (model, cache) = try store.loadModel(cache: c)
        #expect(throws: (any Error).self) { try runSequence(model, prompt, steps: 3) }
        cache.shutdown()
    }

    /// Direct mode: the experts stream from the GGUF itself (three aligned supersets per expert, no checksums) and
    /// the logits equal the file's in-memory run bit for bit, whatever the budget, prefetch or engine.
    @Test(arguments: ["kimi_k2_q4_k_m", "kimi_k2_q2_k", "kimi_k2_iq2_m"])
    func directModeRunsBitForBitLikeTheFile(name: String) throws {
        let file = Fixtures.root + "/gguf/\(name).gguf"
        let prompt = [1024, 709, 470, 919, 40, 105, 310, 696, 541, 116, 404, 115]
        let reference = try runSequence(try KimiModel.load(gguf: file), prompt, steps: 6)
        let gguf = try GGUFCheckpoint(path: file)
        let reads = try GGUFExpertReads.make(gguf, try ModelConfig.fromGGUF(gguf))
        #expect(reads.checksums == nil && reads.maxSegments == 3 && reads.slotBytes % 4096 == 0)
        // Every expert's three supersets hold its slices where the matrices will look for them.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        for e in 0..<8 {
            for (i, proj) in ["gate", "up", "down"].enumerated() {
                let g = reads.segment(ordinal: 0, expert: e, i)
                let (_, info) = try #require(gguf.info("blk.1.ffn_\(proj)_exps.weight"))
                let per = info.range.count / 8
                #expect(g.offset % 4096 == 0 && g.offset + g.lead == info.range.lowerBound + e * per)
                #expect(g.lead + per <= g.expected && g.slotOffset + g.length <= reads.slotBytes && g.length % 4096 == 0)
                #expect(g.offset + g.length == (g.offset + g.lead + per + 4095) / 4096 * 4096)
                #expect(g.offset + g.expected == min(bytes.count, g.offset + g.length))
            }
        }
        for (slots, prefetch, engine) in [(1, PrefetchMode.off, ReadEngine.uring), (2, .both, .uring), (3, .router, .pread), (8, .both, .uring)] {
            var c = CacheConfiguration(totalBudget: slots * reads.slotBytes, topology: .detect())
            c.ioDepth = 4
            c.prefetch = prefetch
            c.engine = engine
            let (model, cache) = try GGUFDirect.load(path: file, cache: c)
            #expect(try runSequence(model, prompt, steps: 6) == reference, "\(name): \(slots) slots, \(prefetch), \(engine)")
            let st = cache.statistics()
            #expect(st.total.misses > 0 && st.readRetries == 0)
            cache.shutdown()
        }
    }

    /// A fault in one of an expert's three reads: the expert is read again once all three are back, and the logits
    /// do not change; a ring that breaks mid-read moves the node to pread with the same logits.
    @Test func directModeFaultsHeal() throws {
        let file = Fixtures.root + "/gguf/kimi_k2_q4_k_m.gguf"
        let prompt = [1024, 709, 470, 919, 40]
        let reference = try runSequence(try KimiModel.load(gguf: file), prompt, steps: 4)
        let gguf = try GGUFCheckpoint(path: file)
        let reads = try GGUFExpertReads.make(gguf, try ModelConfig.fromGGUF(gguf))
        let down = reads.segment(ordinal: 0, expert: 3, 2)
        for plan in [FaultPlan([.init(.error(EIO), after: 1, times: 2)]), FaultPlan([.init(.shortRead, times: 1, file: down.file, offset: down.offset)]),
                     FaultPlan([.init(.corrupt, times: 1)])] {
            var c = CacheConfiguration(totalBudget: 2 * reads.slotBytes, topology: .detect())
            c.ioDepth = 6
            c.faults = plan
            let (model, cache) = try GGUFDirect.load(path: file, cache: c)
            let logits = try runSequence(model, prompt, steps: 4)
            let st = cache.statistics()
            cache.shutdown()
            if case .corrupt = plan.rules[0].fault {
                // Nothing to check a GGUF's bytes against: a flipped byte goes through (direct mode says so).
                #expect(st.readRetries == 0)
                continue
            }
            #expect(logits == reference, "\(plan.rules[0].fault)")
            #expect(st.readRetries >= 1 && st.failedReads == 0, "\(st.readRetries) retries")
        }
        var c = CacheConfiguration(totalBudget: 2 * reads.slotBytes, topology: .detect())
        c.ioDepth = 6
        c.faults.ringSubmitResults = [0, -EIO]
        c.drainLimit = .milliseconds(300)
        let (model, cache) = try GGUFDirect.load(path: file, cache: c)
        #expect(try runSequence(model, prompt, steps: 4) == reference)
        #expect(cache.statistics().readerFailures == 1 && cache.engineName == "pread")
        cache.shutdown()
    }

    /// A GGUF whose last tensor is a stacked expert tensor and whose size is not a multiple of 4096 (a part of a
    /// split download can end so): the last expert's superset runs past the end of the file, is asked for in whole
    /// blocks (as O_DIRECT wants) and comes back short, up to the end; the logits still equal the file's in memory.
    @Test func anExpertThatEndsTheFileIsReadUpToTheEnd() throws {
        let source = try GGUFCheckpoint(path: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf")
        var w = GGUFWriter()
        w.alignment = source.files[0].alignment
        w.metadata = source.files[0].keys.map { ($0, Self.raw(source.metadata[$0]!)) }
        let last = "blk.1.ffn_down_exps.weight"
        for t in source.tensors.filter({ $0.name != last }) + source.tensors.filter({ $0.name == last }) {
            let f = source.info(t.name)!.file
            w.tensors.append(.init(name: t.name, type: t.type.rawValue, ne: t.ne.map(UInt64.init), data: Array(f.bytes(of: t))))
        }
        let path = Fixtures.scratchDirectory("gguf-eof") + "/model.gguf"
        w.write(to: path)
        let gguf = try GGUFCheckpoint(path: path)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        #expect(gguf.info(last)!.tensor.range.upperBound == size && size % 4096 != 0)
        let reads = try GGUFExpertReads.make(gguf, try ModelConfig.fromGGUF(gguf))
        let end = reads.segment(ordinal: 0, expert: 7, 2)
        #expect(end.expected < end.length && end.offset + end.expected == size)

        let prompt = [1024, 709, 470, 919, 40, 105, 310, 696]
        let reference = try runSequence(try KimiModel.load(gguf: path), prompt, steps: 4)
        for engine in [ReadEngine.uring, .pread] {
            var c = CacheConfiguration(totalBudget: 8 * reads.slotBytes, topology: .detect())
            c.engine = engine
            let (model, cache) = try GGUFDirect.load(path: path, cache: c)
            #expect(try runSequence(model, prompt, steps: 4) == reference, "\(engine)")
            let st = cache.statistics()
            #expect(st.readRetries == 0 && st.failedReads == 0 && st.total.misses > 0, "\(engine)")
            cache.shutdown()
        }
    }

    /// A metadata value back in GGUF's encoding (type code and bytes).
    static func raw(_ v: GGUFValue) -> GGUFWriter.Value {
        func bytes<T>(_ x: T) -> [UInt8] { withUnsafeBytes(of: x) { Array($0) } }
        func encode(_ v: GGUFValue) -> (UInt32, [UInt8]) {
            switch v {
            case .uint8(let x): return (0, [x])
            case .int8(let x): return (1, bytes(x))
            case .uint16(let x): return (2, bytes(x))
            case .int16(let x): return (3, bytes(x))
            case .uint32(let x): return (4, bytes(x))
            case .int32(let x): return (5, bytes(x))
            case .float32(let x): return (6, bytes(x.bitPattern))
            case .bool(let x): return (7, [x ? 1 : 0])
            case .string(let x): return (8, bytes(UInt64(x.utf8.count)) + Array(x.utf8))
            case .uint64(let x): return (10, bytes(x))
            case .int64(let x): return (11, bytes(x))
            case .float64(let x): return (12, bytes(x.bitPattern))
            case .array(let a):
                let items = a.map(encode)
                let type = items.first?.0 ?? 8
                return (9, bytes(type) + bytes(UInt64(a.count)) + items.flatMap(\.1))
            }
        }
        let (type, data) = encode(v)
        return .raw(type: type, bytes: data)
    }

    @Test func nonPassThroughOptionsAreRefused() throws {
        var converter = StoreConverter(source: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf", output: Fixtures.scratchDirectory("gguf-store") + "/s")
        converter.experts = .int4
        do { try converter.run(); Issue.record("converted with --experts int4") } catch {
            #expect("\(error)".contains("--experts source"))
        }
    }
}
