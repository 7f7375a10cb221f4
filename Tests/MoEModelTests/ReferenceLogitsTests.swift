import Foundation
import Testing
import MoECheckpoint
import MoETestSupport
@testable import MoEModel

/// The forward pass against transformers' own outputs for the three fixture models (Tools/make_fixtures.py).
@Suite struct ReferenceLogitsTests {
    static let tolerance: Float = 1e-4

    @Test(arguments: Fixtures.modelNames)
    func prefillMatchesTransformers(model name: String) throws {
        let ref = try Reference.load(name)
        let model = try KimiModel.load(checkpoint: Fixtures.model(name))
        let result = try model.forward(ref.prompt, cache: model.makeCache(), logits: .all)
        #expect(result.rows == ref.prompt.count)
        for (i, expected) in ref.prefillLogits.enumerated() {
            let d = maxAbsDiff(result.row(i), expected)
            #expect(d <= Self.tolerance, "\(name) position \(i): max |Δ| \(d)")
        }
    }

    /// Prompt and transformers' greedy tokens fed one at a time through the latent cache: every step's logits
    /// must match the prefill logits (prompt part) and the logits `generate` chose from (generated part).
    @Test(arguments: Fixtures.modelNames)
    func decodeThroughCacheMatchesTransformers(model name: String) throws {
        let ref = try Reference.load(name)
        let model = try KimiModel.load(checkpoint: Fixtures.model(name))
        let cache = model.makeCache()
        let sequence = ref.prompt + ref.generated.dropLast()
        let expected = ref.prefillLogits.dropLast() + ref.generatedLogits
        var worst: Float = 0
        for (i, token) in sequence.enumerated() {
            let r = try model.forward([token], cache: cache, logits: .last)
            worst = max(worst, maxAbsDiff(r.row(0), expected[i]))
        }
        #expect(cache.count == sequence.count)
        #expect(worst <= Self.tolerance, "\(name): max |Δ| over \(sequence.count) decode steps \(worst)")
    }

    @Test(arguments: Fixtures.modelNames)
    func greedyContinuationIsIdentical(model name: String) throws {
        let ref = try Reference.load(name)
        #expect(ref.generated.count >= 32)
        let model = try KimiModel.load(checkpoint: Fixtures.model(name))
        let tokens = try model.greedy(prompt: ref.prompt, maxTokens: ref.generated.count)
        #expect(tokens == ref.generated)
    }

    /// A sequence attended in query blocks (three of 16 and a remainder of 4) gives every position the logits
    /// that decoding it one token at a time through the cache gives, bit for bit.
    @Test func blockedPassEqualsTokenByTokenBitForBit() throws {
        let ref = try Reference.load("kimi_k2")
        let model = try KimiModel.load(checkpoint: Fixtures.model("kimi_k2"))
        let tokens = ref.prompt + ref.generated
        #expect(tokens.count == 52)
        let whole = try model.forward(tokens, cache: model.makeCache(), logits: .all)
        let cache = model.makeCache()
        for (i, t) in tokens.enumerated() {
            let step = try model.forward([t], cache: cache, logits: .last)
            #expect(Array(step.row(0)) == Array(whole.row(i)), "position \(i)")
        }
    }

    /// Decoding takes its activations from the workspace the prompt sized: it does not grow token after token.
    @Test func decodeReusesThePromptsWorkspace() throws {
        let ref = try Reference.load("kimi_k2")
        let model = try KimiModel.load(checkpoint: Fixtures.model("kimi_k2"))
        let cache = model.makeCache()
        _ = try model.forward(ref.prompt, cache: cache, logits: .last)
        _ = try model.forward([ref.generated[0]], cache: cache, logits: .last)
        let sized = model.workspaceBytes
        for t in ref.generated.dropFirst() { _ = try model.forward([t], cache: cache, logits: .last) }
        #expect(model.workspaceBytes == sized)
    }

    /// Decode after a prefill continues the same sequence: prefill(a) then decode(b) equals prefill(a + b).
    @Test func prefillThenDecodeEqualsOnePass() throws {
        let ref = try Reference.load("kimi_k2")
        let model = try KimiModel.load(checkpoint: Fixtures.model("kimi_k2"))
        let cache = model.makeCache()
        _ = try model.forward(Array(ref.prompt.prefix(7)), cache: cache, logits: .last)
        let rest = try model.forward(Array(ref.prompt.dropFirst(7)), cache: cache, logits: .all)
        for i in 0..<rest.rows {
            #expect(maxAbsDiff(rest.row(i), ref.prefillLogits[7 + i]) <= Self.tolerance)
        }
    }
}
