import Foundation
import MoEModel
import MoETestSupport
import MoETensor
import MoETokenizer
import Testing
@testable import MoEGeneration

/// Several sequences decoded together: one pass per step over one token of each, each sequence's results bit for
/// bit its results alone.
@Suite(.serialized) struct BatchedDecodeTests {
    let model = try! KimiModel.load(checkpoint: Fixtures.model("kimi_k2_chat"))
    let tokenizer = try! Tokenizer(directory: Fixtures.model("kimi_k2_chat"))

    /// Three sequences of different lengths, stepped together for six tokens, against each stepped alone, in every
    /// arithmetic this CPU runs and with each KV cache precision.
    @Test func aBatchedStepEqualsEachSequenceAlone() throws {
        let prompts = ["Hello there", "A much longer prompt about foxes, dogs and the weather in Paris today.", "x"].map {
            tokenizer.encode($0)
        }
        var settings: [(ExpertActivations, ResidentActivations, KVPrecision)] = [(.fp32, .fp32, .f32), (.q8GateUp, .fp32, .f16),
                                                                                (.fp32, .fp32, .bf16), (.q8GateUpQ16Down, .fp32, .f16)]
        if ResidentActivations.bf16x2Kernel(isa: Kernels.isa) != nil { settings.append((.q8GateUpQ16Down, .bf16x2, .f16)) }
        defer { model.expertActivations = .fp32; model.residentActivations = .fp32; model.kvPrecision = .f32 }
        for (experts, resident, kv) in settings {
            model.expertActivations = experts
            model.residentActivations = resident
            model.kvPrecision = kv
            let together = prompts.map { _ in model.makeCache() }, alone = prompts.map { _ in model.makeCache() }
            var next: [Int] = []
            for (i, p) in prompts.enumerated() {
                let a = try model.forward(p, cache: together[i])
                _ = try model.forward(p, cache: alone[i])
                next.append(argmax(a.row(0)))
            }
            for step in 0..<6 {
                let b = try model.forward(batch: next, caches: together)
                #expect(b.rows == prompts.count)
                for i in prompts.indices {
                    let single = try model.forward([next[i]], cache: alone[i])
                    #expect(Array(b.row(i)) == Array(single.row(0)), "sequence \(i), step \(step), \(experts.rawValue)/\(resident.rawValue)/\(kv.rawValue)")
                    #expect(together[i].count == alone[i].count)
                }
                next = prompts.indices.map { argmax(b.row($0)) }
            }
        }
    }

    @Test func aFullSequenceFailsTheStepBeforeItRuns() throws {
        let full = model.makeCache(limit: 3), other = model.makeCache()
        _ = try model.forward([1, 2, 3], cache: full)
        _ = try model.forward([4], cache: other)
        #expect(throws: ModelError.self) { try model.forward(batch: [5, 6], caches: [other, full]) }
        #expect(other.count == 1 && full.count == 3)
    }
}

/// The engine steps concurrent requests together: each answer equals the request alone, a request cancelled in
/// the middle leaves without disturbing the others, and more requests than places all finish, first come first
/// served.
@Suite(.serialized) struct EngineBatchingTests {
    let model = try! KimiModel.load(checkpoint: Fixtures.model("kimi_k2_chat"))
    let tokenizer = try! Tokenizer(directory: Fixtures.model("kimi_k2_chat"))

    func request(_ text: String, seed: UInt64, maxTokens: Int = 8) -> Engine.Request {
        var p = SamplingParameters()
        p.temperature = 0.9
        p.seed = seed
        return Engine.Request(prompt: tokenizer.encode(text), sampling: p, maxTokens: maxTokens, stop: [])
    }

    /// Submits every request at once and collects each one's result (nil when it ended without one) and text.
    /// Awaits the streams (no blocking wait: the tests' tasks share the cooperative pool with the streams').
    func runTogether(_ engine: Engine, _ requests: [Engine.Request],
                     cancelAfterText: Int? = nil) async throws -> [(result: GenerationResult?, text: String)] {
        let submitted = try requests.map { try engine.submit($0) }
        return await withTaskGroup(of: (Int, GenerationResult?, String).self) { group in
            for (i, s) in submitted.enumerated() {
                group.addTask {
                    var pieces = 0, text = ""
                    var result: GenerationResult?
                    for await event in s.events {
                        switch event {
                        case .text(let t):
                            text += t
                            pieces += 1
                            if i == 0, let n = cancelAfterText, pieces == n { s.cancellation.cancel() }
                        case .done(let r): result = r
                        case .failed: break
                        }
                    }
                    return (i, result, text)
                }
            }
            var out = [(result: GenerationResult?, text: String)](repeating: (nil, ""), count: requests.count)
            for await (i, r, t) in group { out[i] = (r, t) }
            return out
        }
    }

    @Test func concurrentRequestsAnswerAsAloneAndGoTogether() async throws {
        let requests = [request("Hello there", seed: 1), request("Tell me about foxes and dogs in Paris.", seed: 2, maxTokens: 12),
                        request("x", seed: 3, maxTokens: 5), request("Another one", seed: 4)]
        let alone = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 8, contextLimit: 256)
        defer { alone.shutdown() }
        var expected: [(result: GenerationResult?, text: String)] = []
        for r in requests { expected.append(try await runTogether(alone, [r])[0]) }
        #expect(alone.counterSnapshot.stepSequences == alone.counterSnapshot.steps, "parallel 1: one sequence per step")
        let engine = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 8, contextLimit: 256, parallel: 3)
        defer { engine.shutdown() }
        let got = try await runTogether(engine, requests)
        for i in requests.indices {
            #expect(got[i].result?.tokens == expected[i].result?.tokens && got[i].text == expected[i].text, "request \(i)")
            #expect(got[i].result?.tokens.count == requests[i].maxTokens)
        }
        let c = engine.counterSnapshot
        #expect(c.completed == 4 && c.running == 0 && c.queued == 0)
        #expect(c.stepSequences > c.steps, "some steps carried several sequences: \(c.stepSequences) over \(c.steps) steps")
        #expect(c.stepSequences <= 3 * c.steps, "never more than `parallel` at once")
    }

    @Test func aCancelledRequestLeavesTheOthersUndisturbed() async throws {
        // The first asks for far more tokens than it gets: it is still running when its client cancels, however
        // slowly the client's task is scheduled.
        let requests = [request("Cancel me after a while", seed: 5, maxTokens: 3000), request("Keep going", seed: 6, maxTokens: 20),
                        request("Me too", seed: 7, maxTokens: 20)]
        let alone = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 8, contextLimit: 256)
        defer { alone.shutdown() }
        var expected: [(result: GenerationResult?, text: String)] = []
        for r in requests.dropFirst() { expected.append(try await runTogether(alone, [r])[0]) }
        let engine = Engine(generator: Generator(model: model, tokenizer: tokenizer), maxQueue: 8, contextLimit: 4096, parallel: 3)
        defer { engine.shutdown() }
        let got = try await runTogether(engine, requests, cancelAfterText: 3)
        #expect(got[0].result == nil, "the cancelled request gets no result")
        #expect(got[1].result?.tokens == expected[0].result?.tokens && got[2].result?.tokens == expected[1].result?.tokens)
        let c = engine.counterSnapshot
        #expect(c.cancelled == 1 && c.completed == 2 && c.running == 0)
    }
}
