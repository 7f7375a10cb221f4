import Foundation
import MoEModel
import MoETokenizer

/// What one generation produced, with its timings.
public struct GenerationResult: Sendable {
    public enum StopReason: String, Sendable { case stopToken = "stop", maxTokens = "length", cancelled }
    public var tokens: [Int]
    /// Everything generated as text, special tokens included (what a chat format parses for tool calls).
    public var text: String
    /// What was shown: the text without special tokens (what `onText` received).
    public var visibleText: String
    public var promptTokens: Int
    /// Leading prompt tokens whose positions the cache already held (a reused prefix): not computed again.
    public var cachedPromptTokens = 0
    public var stopReason: StopReason
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(max(0, tokens.count - 1)) / decodeSeconds : 0 }
    /// Prompt tokens computed per second (a reused prefix is not computed).
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens - cachedPromptTokens) / prefillSeconds : 0 }
}

/// Asked between the prompt's layers and before every token: true stops the generation. (A struct, not a bare
/// closure, so a trailing closure still means `onText`.)
public struct CancelCheck {
    public let isCancelled: () -> Bool
    public init(_ isCancelled: @escaping () -> Bool) { self.isCancelled = isCancelled }
}

/// Runs the model on a prompt and samples until a stop token, the token limit, or the caller says stop.
public struct Generator {
    public let model: KimiModel
    public let tokenizer: Tokenizer

    public init(model: KimiModel, tokenizer: Tokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Generates after `prompt` (token ids), continuing the sequence in `cache` (which may hold earlier turns).
    /// `cached`: how many leading tokens of `prompt` the cache holds (a reused prefix: then `cache.count`); only
    /// the rest is run, and the sampler still sees the whole prompt, so the answer is the one a cold start gives.
    /// With `cached` 0 the prompt continues whatever the cache holds.
    /// `onText` receives each piece of visible text as soon as it is whole (never half a UTF-8 character;
    /// special tokens such as tool-call markers are not shown) and returns false to stop (a client that went
    /// away). The result's `text` is the raw output, special tokens included, for the chat format to parse.
    /// Once a token of `quietAfter` is generated (say `<|tool_calls_section_begin|>`), the rest is not streamed
    /// (the caller parses it from `text` instead).
    /// `cancel` is asked between the prompt's layers and before every token, streamed or not (a tool-call
    /// section is not streamed, a stop text may hold text back): a request whose client left stops at once.
    public func generate(prompt: [Int], cached: Int = 0, cache: KVCache, sampling: SamplingParameters, maxTokens: Int, stop: Set<Int>,
                         quietAfter: Set<Int> = [], cancel: CancelCheck? = nil,
                         onText: (String) -> Bool = { _ in true }) throws -> GenerationResult {
        let g = Generation(self, prompt: prompt, cached: cached, cache: cache, sampling: sampling, maxTokens: maxTokens, stop: stop,
                           quietAfter: quietAfter)
        guard try g.prefill(cancel: cancel, onText: onText) else { return g.finish(onText: onText) }
        while true {
            if let cancel, cancel.isCancelled() { return g.finish(cancelled: true, onText: onText) }
            let r = try model.forward([g.next], cache: cache, logits: .last, keepRouting: false)
            guard g.accept(r.row(0), onText: onText) else { return g.finish(onText: onText) }
        }
    }
}

/// One request's generation, stepped from outside: the prompt (`prefill`), then a token per step (`accept` of the
/// logits that step computed for `next`), then `finish`. `Generator.generate` steps one alone; the server's
/// engine steps several together, one batched forward per step (`KimiModel.forward(batch:caches:)`), and each
/// gets exactly what it would alone: the same logits, the same sampler stream.
/// Not Sendable: owned by one thread at a time.
public final class Generation {
    public let generator: Generator
    public let prompt: [Int]
    public let cached: Int
    public let cache: KVCache
    let maxTokens: Int
    let stop: Set<Int>
    let quietAfter: Set<Int>
    var sampler: Sampler
    var decoder: StreamingDecoder
    public private(set) var tokens: [Int] = []
    var text = ""
    var visible = ""
    var history: [Int]
    var quiet = false
    var reason = GenerationResult.StopReason.maxTokens
    let started = ContinuousClock.now
    var prefilled: ContinuousClock.Instant?
    /// The token the next step feeds (the last one sampled), while the generation wants more.
    public private(set) var next = 0

    public init(_ generator: Generator, prompt: [Int], cached: Int = 0, cache: KVCache, sampling: SamplingParameters, maxTokens: Int,
                stop: Set<Int>, quietAfter: Set<Int> = []) {
        precondition(cached >= 0 && cached < prompt.count && (cached == 0 || cache.count == cached),
                     "the cache holds exactly the prompt's first `cached` tokens, and one prompt token at least is left to run")
        self.generator = generator
        self.prompt = prompt
        self.cached = cached
        self.cache = cache
        self.maxTokens = maxTokens
        self.stop = stop
        self.quietAfter = quietAfter
        sampler = Sampler(sampling)
        decoder = StreamingDecoder(tokenizer: generator.tokenizer)
        history = prompt
    }

    /// Runs the prompt (its uncached part) and takes its first token. False when the generation is over already
    /// (cancelled in the prompt, a stop token first, `maxTokens` 0 or 1, a client gone): then `finish`.
    public func prefill(cancel: CancelCheck? = nil, onText: (String) -> Bool) throws -> Bool {
        let result: ForwardResult
        do {
            result = try generator.model.forward(Array(prompt[cached...]), cache: cache, logits: .last, keepRouting: false,
                                                 cancelled: cancel?.isCancelled)
        } catch ModelError.cancelled {
            reason = .cancelled
            return false
        }
        prefilled = ContinuousClock.now
        guard tokens.count < maxTokens else { return false }
        return accept(result.row(0), onText: onText)
    }

    /// Samples a token from `logits` (the last step's, for `next`), streams its text, and says whether the
    /// generation wants another step (then `next` is the token to feed).
    public func accept(_ logits: ArraySlice<Float>, onText: (String) -> Bool) -> Bool {
        let tokenizer = generator.tokenizer
        func emit(_ piece: String) -> Bool { quiet || piece.isEmpty || onText(piece) }
        let token = sampler.sample(logits, previous: history)
        tokens.append(token)
        history.append(token)
        if stop.contains(token) {
            reason = .stopToken
            return false
        }
        if tokenizer.isSpecial(token) {
            let held = decoder.flush()
            text += held + tokenizer.decode([token])
            if !quiet { visible += held }
            if !emit(held) {
                reason = .cancelled
                return false
            }
            if quietAfter.contains(token) { quiet = true }
        } else {
            let piece = decoder.append(token)
            text += piece
            if !quiet { visible += piece }
            if !emit(piece) {
                reason = .cancelled
                return false
            }
        }
        next = token
        return tokens.count < maxTokens
    }

    /// Ends the generation (`cancelled`: stopped from outside between steps) and returns what it produced. The
    /// cache holds the prompt and every generated token fed back: all but the last sampled.
    public func finish(cancelled: Bool = false, onText: (String) -> Bool = { _ in true }) -> GenerationResult {
        if cancelled { reason = .cancelled }
        let rest = decoder.flush()
        if !rest.isEmpty {
            text += rest
            if !quiet && reason != .cancelled {
                visible += rest
                _ = onText(rest)
            }
        }
        let now = ContinuousClock.now
        let t1 = prefilled ?? now
        return GenerationResult(tokens: tokens, text: text, visibleText: visible, promptTokens: prompt.count, cachedPromptTokens: cached,
                                stopReason: reason, prefillSeconds: (t1 - started).seconds, decodeSeconds: (now - t1).seconds)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
