import Foundation
import MoEModel
import MoETestSupport
import MoETensor
import MoETokenizer
import Testing
@testable import MoEGeneration

@Suite struct SamplerTests {
    let logits: [Float] = [0.1, 2.0, -1.0, 1.9, 0.5, 1.95]

    @Test func greedyIsArgmax() {
        var s = Sampler(.greedy)
        #expect(s.sample(logits[...], previous: []) == 1)
    }

    @Test func filtersThatLeaveOneTokenAreGreedy() {
        var p = SamplingParameters()
        p.temperature = 1
        p.seed = 7
        for configure in [{ (q: inout SamplingParameters) in q.topK = 1 }, { $0.topP = 0.01 }, { $0.minP = 0.99 }] {
            var q = p
            configure(&q)
            var s = Sampler(q)
            for _ in 0..<50 { #expect(s.sample(logits[...], previous: []) == 1) }
        }
    }

    @Test func seedReproducesAndTemperatureSpreads() {
        var p = SamplingParameters()
        p.temperature = 1
        p.seed = 42
        var a = Sampler(p), b = Sampler(p)
        let x = (0..<200).map { _ in a.sample(logits[...], previous: []) }
        let y = (0..<200).map { _ in b.sample(logits[...], previous: []) }
        #expect(x == y)
        #expect(Set(x).count >= 4, "temperature 1 should reach several tokens")
        p.topK = 3
        var c = Sampler(p)
        #expect(Set((0..<200).map { _ in c.sample(logits[...], previous: []) }).isSubset(of: [1, 3, 5]))
    }

    @Test func frequenciesFollowTheSoftmax() {
        var p = SamplingParameters()
        p.temperature = 1
        p.seed = 1
        var s = Sampler(p)
        let two: [Float] = [0, log(3)]  // probabilities 1/4 and 3/4
        let n = 20_000
        let ones = (0..<n).filter { _ in s.sample(two[...], previous: []) == 1 }.count
        #expect(abs(Double(ones) / Double(n) - 0.75) < 0.02)
    }

    @Test func repetitionPenaltyAvoidsRepeats() {
        var p = SamplingParameters.greedy
        p.repetitionPenalty = 1.5
        var s = Sampler(p)
        // 2.0 / 1.5 = 1.33 drops below 1.95 (token 5): the repeated token 1 loses.
        #expect(s.sample(logits[...], previous: [1]) == 5)
    }

    @Test func badParametersAreNamed() {
        var p = SamplingParameters()
        p.topP = 0
        #expect(p.problem?.contains("top-p") == true)
        p = SamplingParameters()
        p.temperature = -1
        #expect(p.problem?.contains("temperature") == true)
    }
}

@Suite struct GeneratorTests {
    let model = try! KimiModel.load(checkpoint: Fixtures.model("kimi_k2_chat"))
    let tokenizer = try! Tokenizer(directory: Fixtures.model("kimi_k2_chat"))

    @Test func greedyGenerationIsTheModelsGreedyTokens() throws {
        let prompt = tokenizer.encode(KimiChatFormat().render([ChatMessage(role: .user, content: "Hi")], tools: nil, addGenerationPrompt: true))
        let expected = try model.greedy(prompt: prompt, maxTokens: 12)
        var streamed = ""
        let r = try Generator(model: model, tokenizer: tokenizer).generate(
            prompt: prompt, cache: model.makeCache(), sampling: .greedy, maxTokens: 12, stop: []) { streamed += $0; return true }
        #expect(r.tokens == expected)
        #expect(r.stopReason == .maxTokens)
        #expect(r.text == tokenizer.decode(expected))
        // Streamed text is the output without special tokens.
        #expect(streamed == tokenizer.decode(expected.filter { !tokenizer.isSpecial($0) }))
    }

    @Test func stopsAtAStopTokenAndWhenTold() throws {
        let prompt = tokenizer.encode("Hello")
        let greedy = try model.greedy(prompt: prompt, maxTokens: 6)
        let g = Generator(model: model, tokenizer: tokenizer)
        let r = try g.generate(prompt: prompt, cache: model.makeCache(), sampling: .greedy, maxTokens: 50, stop: [greedy[3]])
        #expect(r.stopReason == .stopToken && r.tokens == Array(greedy.prefix(4)))
        var calls = 0
        let c = try g.generate(prompt: prompt, cache: model.makeCache(), sampling: .greedy, maxTokens: 50, stop: []) { _ in
            calls += 1
            return calls < 2
        }
        #expect(c.stopReason == .cancelled && c.tokens.count < 50)
    }

    /// Cancellation is asked between the prompt's layers and before every token, even when nothing is streamed
    /// (a tool-call section, a held stop text): a prefill stops within a layer, and the KV cache keeps only what
    /// it held. Fails when only emitted text is checked (the old behaviour: the callback below never says stop).
    @Test func cancellationIsCheckedInPrefillAndPerToken() throws {
        let prompt = tokenizer.encode("Hello there, how are you")
        let g = Generator(model: model, tokenizer: tokenizer)
        var asked = 0
        let cache = model.makeCache()
        let r = try g.generate(prompt: prompt, cache: cache, sampling: .greedy, maxTokens: 50, stop: [],
                               cancel: CancelCheck { asked += 1; return asked > 1 }) { _ in true }
        #expect(r.stopReason == .cancelled && r.tokens.isEmpty && cache.count == 0 && asked == 2)
        var checks = 0
        let layers = model.config.numLayers
        let d = try g.generate(prompt: prompt, cache: model.makeCache(), sampling: .greedy, maxTokens: 50, stop: [],
                               cancel: CancelCheck { checks += 1; return checks > layers + 3 }) { _ in true }
        #expect(d.stopReason == .cancelled && d.tokens.count == 4)
    }
}

/// The queue's places are taken before a request is prepared (its prompt tokenised): a full queue refuses first,
/// and a place taken and dropped unused is given back.
@Suite struct EngineAdmissionTests {
    @Test func admissionsCountAgainstTheQueueAndAreGivenBack() throws {
        let model = try KimiModel.load(checkpoint: Fixtures.model("kimi_k2_chat"))
        let tokenizer = try Tokenizer(directory: Fixtures.model("kimi_k2_chat"))
        let engine = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 2, contextLimit: 64)
        defer { engine.shutdown() }
        var places = [try engine.admit(), try engine.admit()]
        #expect(throws: Engine.SubmitError.self) { try engine.admit() }
        #expect(engine.counterSnapshot.rejected == 1)
        places.removeLast()  // dropped unused (a prompt that turned out too long): the place is free again
        places.append(try engine.admit())
        // A place used for a request: the request runs and the place is not given back twice.
        let (events, _) = engine.submit(Engine.Request(prompt: tokenizer.encode("Hi"), sampling: .greedy, maxTokens: 2, stop: []),
                                        admission: places.removeFirst())
        let done = DispatchSemaphore(value: 0)
        Task {
            for await _ in events {}
            done.signal()
        }
        done.wait()
        places.removeAll()
        let again = [try engine.admit(), try engine.admit()]
        #expect(throws: Engine.SubmitError.self) { try engine.admit() }
        #expect(again.count == 2 && engine.counterSnapshot.completed == 1)
    }
}

/// The gate of the arithmetic policy: the same text scored with both arithmetics, compared position by position.
/// (The demo model's gate, q8 against exact, is `DemoModelTests.compareExactPrintsTheGate`.)
@Suite(.serialized) struct ArithmeticComparisonTests {
    let model = try! KimiModel.load(checkpoint: Fixtures.model("kimi_k2_chat"))
    let ids = Array((0..<97).map { ($0 * 7919) % 1000 + 3 })

    @Test func sameArithmeticIsIdentical() throws {
        let c = try compareArithmetic(model: model, ids: ids, window: 32, useExact: { model.expertActivations = .fp32 },
                                      useFast: { model.expertActivations = .fp32 })
        #expect(c.meanKL == 0 && c.maxLogitDifference == 0 && c.exact.perplexity == c.fast.perplexity)
        #expect(c.exact.tokens == 96 && c.exact.windows == 3 && c.agreeing == c.decided && c.decided > 0)
    }
}
