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
    @Test(arguments: ["kimi_k2_q4_k_m", "kimi_k2_q2_k"])
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
        #expect(try refusal(["Q4_K", "IQ2_XXS", "Q6_K"]).contains("cannot run yet"))
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

    @Test func nonPassThroughOptionsAreRefused() throws {
        var converter = StoreConverter(source: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf", output: Fixtures.scratchDirectory("gguf-store") + "/s")
        converter.experts = .int4
        do { try converter.run(); Issue.record("converted with --experts int4") } catch {
            #expect("\(error)".contains("--experts source"))
        }
    }
}
