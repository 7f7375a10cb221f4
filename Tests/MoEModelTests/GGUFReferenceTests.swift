import Foundation
import Testing
import MoECheckpoint
import MoETestSupport
import MoETensor
@testable import MoEModel

/// GGUF files written by llama.cpp's own tools (Tools/make_gguf_fixtures.py: `convert_hf_to_gguf.py`, then
/// `llama_model_quantize` to Q4_K_M, Q2_K and, with a uniform importance matrix, IQ2_M: IQ2_S, IQ3_S, IQ4_NL), run straight from the file, against transformers run on the same
/// file's weights as gguf-py dequantises them.
@Suite struct GGUFReferenceTests {
    static let files = ["kimi_k2_q4_k_m", "kimi_k2_q2_k", "kimi_k2_iq2_m"]
    static let tolerance: Float = 1e-4

    struct GGUFReference {
        let prompt: [Int]
        let prefill: [[Float]]
        let generated: [Int]
        let generatedLogits: [[Float]]
        let types: [String: Int]

        init(_ name: String) throws {
            let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.root + "/gguf/\(name).reference.json"))
            let j = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            func rows(_ key: String) -> [[Float]] { (j[key] as! [[NSNumber]]).map { $0.map(\.floatValue) } }
            prompt = j["prompt"] as! [Int]
            prefill = rows("prefill_logits")
            generated = j["generated"] as! [Int]
            generatedLogits = rows("generated_logits")
            types = j["tensor_type_counts"] as! [String: Int]
        }
    }

    @Test(arguments: files)
    func configComesFromTheMetadata(file: String) throws {
        let g = try GGUFCheckpoint(path: Fixtures.root + "/gguf/\(file).gguf")
        let c = try ModelConfig.fromGGUF(g)
        #expect(c.modelType == "kimi_k2" && c.hiddenSize == 256 && c.numLayers == 2 && c.firstKDenseReplace == 1)
        #expect(c.numRoutedExperts == 8 && c.expertsPerToken == 2 && c.numSharedExperts == 1 && c.moeIntermediateSize == 256)
        #expect(c.qLoraRank == 64 && c.kvLoraRank == 64 && c.qkNopeHeadDim == 32 && c.qkRopeHeadDim == 16 && c.vHeadDim == 32)
        #expect(c.routedScalingFactor == 2.827 && c.normTopkProb && c.vocabSize == 1280 && !c.tieWordEmbeddings)
        #expect(c.rope.kind == .yarn && c.rope.factor == 32 && c.rope.betaFast == 1 && c.rope.betaSlow == 1)
        #expect(abs((c.rope.mscaleAllDim ?? 0) - 1) < 1e-6 && c.rope.originalMaxPositionEmbeddings == 4096 && c.rope.theta == 50000)
        #expect(c.bosTokenId == 1024 && c.eosTokenIds == [1025])
        // The file really mixes block types (llama.cpp's quantiser falls back to legacy types for short rows).
        let ref = try GGUFReference(file)
        let types = Dictionary(grouping: g.tensors, by: { $0.type.description }).mapValues(\.count)
        #expect(types == ref.types)
        #expect(types.keys.count >= 5)
    }

    /// Prefill and decode through the cache, in fp32 (the library's default, `--exact`), within 1e-4 of
    /// transformers at every position, and the same greedy tokens.
    @Test(arguments: files)
    func logitsMatchTransformersOnTheDequantisedWeights(file: String) throws {
        let ref = try GGUFReference(file)
        let model = try KimiModel.load(gguf: Fixtures.root + "/gguf/\(file).gguf")
        let result = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        var worst: Float = 0
        for (i, expected) in ref.prefill.enumerated() { worst = max(worst, maxAbsDiff(result.row(i), expected)) }
        #expect(worst <= Self.tolerance, "\(file): prefill max |Δ| \(worst)")
        let cache = model.makeCache()
        var stepWorst: Float = 0
        let sequence = ref.prompt + ref.generated.dropLast()
        let expected = ref.prefill.dropLast() + ref.generatedLogits
        for (i, token) in sequence.enumerated() {
            stepWorst = max(stepWorst, maxAbsDiff(try model.forward([token], cache: cache).row(0), expected[i]))
        }
        #expect(stepWorst <= Self.tolerance, "\(file): decode max |Δ| \(stepWorst)")
        #expect(try model.greedy(prompt: ref.prompt, maxTokens: ref.generated.count) == ref.generated)
    }

    /// The command line's default for GGUF files: q8 experts and q8 resident products (integer kernels over the
    /// blocks; GGMLQ8KernelTests shows every kernel set and the Swift twin agree bit for bit). The logits are not
    /// exact's (the integer path runs) and stay near transformers' at every position whose experts are exact's
    /// (within 3% of the largest logit; a router's choice is discrete: where two experts nearly tie, quantised attention inputs can pick the other
    /// one, and that position's logits move by the expert's difference; most keep exact's choice); a token's
    /// logits are the same alone as in the prompt's batch.
    @Test(arguments: files)
    func q8ArithmeticStaysNearTheReference(file: String) throws {
        let ref = try GGUFReference(file)
        let model = try KimiModel.load(gguf: Fixtures.root + "/gguf/\(file).gguf")
        let exact = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        model.expertActivations = .q8
        model.residentActivations = .q8
        let result = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        var worst: Float = 0, fromExact: Float = 0, sameExperts = 0
        for (i, expected) in ref.prefill.enumerated() {
            fromExact = max(fromExact, maxAbsDiff(result.row(i), exact.row(i)))
            guard result.routing.indices.allSatisfy({ result.routing[$0].isEmpty || result.routing[$0][i].experts == exact.routing[$0][i].experts }) else { continue }
            sameExperts += 1
            worst = max(worst, maxAbsDiff(result.row(i), expected))
        }
        #expect(fromExact > 0, "\(file): q8 gave exact's logits: the integer path did not run")
        #expect(2 * sameExperts > ref.prefill.count, "\(file): \(sameExperts) of \(ref.prefill.count) positions kept exact's experts")
        // Measured 0.096 (Q4_K_M) and 0.076 (Q2_K) with logits up to 5: the int8 activations' error through both
        // layers of a random model; the kernels' own precision is GGMLQ8KernelTests'.
        #expect(worst <= 0.15, "\(file): q8 max |Δ| \(worst) from transformers where the experts are exact's")
        let first = try model.forward([ref.prompt[0]], cache: model.makeCache(), logits: .all)
        #expect(first.row(0) == result.row(0), "\(file): the first token alone differs from the batch's")
    }

    @Test func gatingOtherThanSigmoidIsRefusedByKey() throws {
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("deepseek2")), ("deepseek2.block_count", .u32(2)),
                      ("deepseek2.embedding_length", .u32(64)), ("deepseek2.attention.head_count", .u32(4)),
                      ("deepseek2.expert_count", .u32(8)), ("deepseek2.expert_used_count", .u32(2)),
                      ("deepseek2.rope.dimension_count", .u32(8)), ("deepseek2.attention.kv_lora_rank", .u32(32)),
                      ("deepseek2.attention.key_length", .u32(24)), ("deepseek2.attention.value_length", .u32(16))]
        let dir = Fixtures.scratchDirectory("gguf-config")
        func refusal(_ edit: (inout GGUFWriter) -> Void) throws -> String {
            var copy = w
            edit(&copy)
            copy.write(to: dir + "/m.gguf")
            do { _ = try ModelConfig.fromGGUF(try GGUFCheckpoint(path: dir + "/m.gguf")); return "accepted" } catch { return "\(error)" }
        }
        #expect(try refusal { _ in }.contains("deepseek2.expert_gating_func"))
        #expect(try refusal { $0.metadata.append(("deepseek2.expert_gating_func", .u32(1))) }.contains("deepseek2.expert_gating_func"))
        let sigmoid: (inout GGUFWriter) -> Void = { $0.metadata.append(("deepseek2.expert_gating_func", .u32(2))) }
        // Valid apart from what each case plants: every refusal names the GGUF key.
        #expect(try refusal { sigmoid(&$0); $0.metadata.append(("deepseek2.vocab_size", .u32(1000))) } .contains("accepted") == false)
        #expect(try refusal { sigmoid(&$0); $0.metadata.append(("deepseek2.vocab_size", .u32(1000)))
            $0.metadata.append(("deepseek2.expert_feed_forward_length", .u32(32))); $0.metadata.append(("deepseek2.feed_forward_length", .u32(64)))
            $0.metadata.append(("deepseek2.leading_dense_block_count", .u32(1))) } == "accepted")
        #expect(try refusal { sigmoid(&$0); $0.metadata.append(("deepseek2.vocab_size", .u32(1000)))
            $0.metadata.append(("deepseek2.expert_feed_forward_length", .u32(32))); $0.metadata.append(("deepseek2.feed_forward_length", .u32(64)))
            $0.metadata.append(("deepseek2.expert_used_count", .u32(9))) }.contains("deepseek2.expert_used_count"))
        #expect(try refusal { sigmoid(&$0); $0.metadata.append(("deepseek2.vocab_size", .string("big"))) }.contains("deepseek2.vocab_size"))
        #expect(try refusal { sigmoid(&$0); $0.metadata[0] = ("general.architecture", .string("llama")) }.contains("general.architecture"))
        #expect(try refusal { sigmoid(&$0); $0.metadata.removeAll { $0.0 == "deepseek2.attention.kv_lora_rank" } }.contains("deepseek2.attention.kv_lora_rank"))
    }
}
