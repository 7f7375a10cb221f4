import Foundation
import MoEModel
import MoETestSupport
import MoETensor
import MoETokenizer
import Testing
@testable import MoEGeneration

/// Prefix reuse: a request that resends a conversation starts from the longest prefix kept, and computes bit for bit
/// what a cold start computes.
@Suite(.serialized) struct PrefixCacheTests {
    let model = try! KimiModel.load(checkpoint: Fixtures.model("kimi_k2_chat"))
    let tokenizer = try! Tokenizer(directory: Fixtures.model("kimi_k2_chat"))

    /// Ids of a text, for prompts.
    func ids(_ text: String) -> [Int] { tokenizer.encode(text) }

    /// Continuing a kept prefix gives the logits of a whole-prompt pass, bit for bit, wherever the prefix ends
    /// (inside and across prefill chunks), in every arithmetic this CPU runs.
    @Test func continuingAPrefixEqualsTheWholePrompt() throws {
        let prompt = Array(ids(String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 6)).prefix(70))
        var settings: [(ExpertActivations, ResidentActivations, KVPrecision)] = [(.fp32, .fp32, .f32), (.q8GateUp, .fp32, .f16),
                                                                                (.fp32, .fp32, .bf16)]
        if ResidentActivations.bf16x2Kernel(isa: Kernels.isa) != nil { settings.append((.q8GateUpQ16Down, .bf16x2, .f16)) }
        let savedChunk = model.prefillChunk
        defer {
            model.prefillChunk = savedChunk
            model.expertActivations = .fp32
            model.residentActivations = .fp32
            model.kvPrecision = .f32
        }
        model.prefillChunk = 16
        for (experts, resident, kv) in settings {
            model.expertActivations = experts
            model.residentActivations = resident
            model.kvPrecision = kv
            let cold = try model.forward(prompt, cache: model.makeCache(), logits: .all)
            let whole = model.makeCache()
            _ = try model.forward(prompt, cache: whole, logits: .last)
            for cut in [1, 15, 16, 17, 40, 69] {
                let kept = whole.copy(prefix: cut)
                #expect(kept.count == cut)
                let warm = try model.forward(Array(prompt[cut...]), cache: kept, logits: .all)
                let coldTail = Array(cold.logits[(cut * cold.vocabSize)...])
                #expect(warm.logits == coldTail, "prefix \(cut), \(experts.rawValue) / \(resident.rawValue) / KV \(kv.rawValue)")
                if cut == 69 {  // one token after the prefix: decode, which reads a half-precision cache directly
                    #expect(kept.precision == kv && warm.rows == 1)
                }
            }
        }
    }

    /// Runs one request through the engine and returns its result (awaiting the stream: no blocking wait on the
    /// cooperative pool the stream's task needs).
    func run(_ engine: Engine, _ prompt: [Int], sampling: SamplingParameters, maxTokens: Int = 6) async throws -> GenerationResult {
        let (events, _) = try engine.submit(Engine.Request(prompt: prompt, sampling: sampling, maxTokens: maxTokens, stop: []))
        var result: GenerationResult?
        for await event in events { if case .done(let r) = event { result = r } }
        return try #require(result)
    }

    var sampling: SamplingParameters {
        var p = SamplingParameters()
        p.temperature = 0.8
        p.seed = 11
        p.repetitionPenalty = 1.3  // the sampler looks at the whole prompt, reused part included
        return p
    }

    /// The same request cold, warm, and warm again after an unrelated request: the same answer, with the reused
    /// tokens reported; a budget of 0 keeps nothing.
    @Test func aRepeatedRequestReusesItsPrefixAndAnswersTheSame() async throws {
        let engine = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 4, contextLimit: 256,
                            prefixBudget: 64 << 20)
        defer { engine.shutdown() }
        let prompt = ids("You are a helpful assistant. Tell me about foxes and dogs.")
        let cold = try await run(engine, prompt, sampling: sampling)
        #expect(cold.cachedPromptTokens == 0)
        let warm = try await run(engine, prompt, sampling: sampling)
        #expect(warm.tokens == cold.tokens && warm.cachedPromptTokens == prompt.count - 1)
        let other = try await run(engine, ids("Something else entirely, about cats."), sampling: sampling)
        #expect(other.cachedPromptTokens == 0)
        let again = try await run(engine, prompt, sampling: sampling)
        #expect(again.tokens == cold.tokens && again.cachedPromptTokens == prompt.count - 1)
        // A shared system prompt, a different question: the common prefix is reused, the answer is the cold one.
        let sibling = ids("You are a helpful assistant. Tell me about cats instead.")
        let shared = PrefixCache.commonPrefix(prompt, sibling)
        let siblingWarm = try await run(engine, sibling, sampling: sampling)
        #expect(shared > 3 && siblingWarm.cachedPromptTokens == shared)
        let c = engine.counterSnapshot
        #expect(c.promptTokensReused == 2 * (prompt.count - 1) + shared)
        #expect(c.promptTokensReused + c.promptTokensComputed == c.promptTokens)
        let coldEngine = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 4, contextLimit: 256)
        defer { coldEngine.shutdown() }
        let siblingCold = try await run(coldEngine, sibling, sampling: sampling)
        #expect(siblingCold.tokens == siblingWarm.tokens && siblingCold.cachedPromptTokens == 0)
        #expect(try await run(coldEngine, prompt, sampling: sampling).cachedPromptTokens == 0)
    }

    /// Ten turns of one conversation, each resending everything before it: every turn after the first reuses all
    /// the previous turn's positions and answers exactly as a cold start of that turn does.
    @Test func aTenTurnConversationEqualsEachTurnCold() async throws {
        let engine = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 4, contextLimit: 512,
                            prefixBudget: 64 << 20)
        defer { engine.shutdown() }
        let generator = Generator(model: model, tokenizer: tokenizer)
        var conversation = ids("<system> Be brief. </system>")
        var kept = 0  // positions the previous turn left in the cache
        for turn in 0..<10 {
            conversation += ids(" Question \(turn): what comes after \(turn * 7)?")
            let warm = try await run(engine, conversation, sampling: sampling, maxTokens: 5)
            let cold = try generator.generate(prompt: conversation, cache: model.makeCache(), sampling: sampling, maxTokens: 5, stop: [])
            #expect(warm.tokens == cold.tokens, "turn \(turn)")
            #expect(warm.cachedPromptTokens == kept, "turn \(turn)")
            conversation += warm.tokens
            kept = conversation.count - 1  // the last answer token was sampled, never fed back
        }
        let p = engine.prefixCache.statistics
        #expect(p.entries == 1 && p.positions == kept && p.bytes <= p.budgetBytes)  // each turn's entry replaced the last
    }

    /// The budget holds: the least recently used sequences go, and one larger than the whole budget is not kept.
    @Test func theBudgetEvictsLeastRecentlyUsed() throws {
        let perPosition = model.makeCache(limit: 1).bytesPerToken
        let pool = PrefixCache(budgetBytes: 100 * perPosition)
        func filled(_ tokens: [Int]) throws -> KVCache {
            let kv = model.makeCache()
            _ = try model.forward(tokens, cache: kv)
            return kv
        }
        let a = Array(1...40), b = Array(101...140), c = Array(201...240)
        pool.checkin(tokens: a, cache: try filled(a))
        pool.checkin(tokens: b, cache: try filled(b))
        #expect(pool.statistics.entries == 2 && pool.statistics.positions == 80)
        #expect(pool.checkout(prompt: a + [7]) { model.makeCache() }.reused == 40)  // a is taken out, whole
        pool.checkin(tokens: a, cache: try filled(a))  // a is now the most recent: b goes when c arrives
        pool.checkin(tokens: c, cache: try filled(c))
        #expect(pool.statistics.entries == 2 && pool.statistics.evictions == 1)
        #expect(pool.checkout(prompt: b) { model.makeCache() }.reused == 0)
        let big = Array(1...120)
        pool.checkin(tokens: big, cache: try filled(big))
        #expect(pool.statistics.positions == 80, "a sequence beyond the budget is not kept")
        #expect(PrefixCache(budgetBytes: 0).checkout(prompt: a) { model.makeCache() }.reused == 0)
    }
}
