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
        precondition(cached >= 0 && cached < prompt.count && (cached == 0 || cache.count == cached),
                     "the cache holds exactly the prompt's first `cached` tokens, and one prompt token at least is left to run")
        var sampler = Sampler(sampling)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var tokens: [Int] = []
        var text = ""
        var visible = ""
        var history = prompt
        let t0 = ContinuousClock.now
        var reason = GenerationResult.StopReason.maxTokens
        var result: ForwardResult
        do { result = try model.forward(Array(prompt[cached...]), cache: cache, logits: .last, keepRouting: false,
                                        cancelled: cancel?.isCancelled) } catch ModelError.cancelled {
            return GenerationResult(tokens: [], text: "", visibleText: "", promptTokens: prompt.count, cachedPromptTokens: cached,
                                    stopReason: .cancelled, prefillSeconds: (ContinuousClock.now - t0).seconds, decodeSeconds: 0)
        }
        let t1 = ContinuousClock.now
        var quiet = false
        func emit(_ piece: String) -> Bool { quiet || piece.isEmpty || onText(piece) }
        while tokens.count < maxTokens {
            let next = sampler.sample(result.row(0), previous: history)
            tokens.append(next)
            history.append(next)
            if stop.contains(next) {
                reason = .stopToken
                break
            }
            if tokenizer.isSpecial(next) {
                let held = decoder.flush()
                text += held + tokenizer.decode([next])
                if !quiet { visible += held }
                if !emit(held) {
                    reason = .cancelled
                    break
                }
                if quietAfter.contains(next) { quiet = true }
            } else {
                let piece = decoder.append(next)
                text += piece
                if !quiet { visible += piece }
                if !emit(piece) {
                    reason = .cancelled
                    break
                }
            }
            guard tokens.count < maxTokens else { break }
            if let cancel, cancel.isCancelled() {
                reason = .cancelled
                break
            }
            result = try model.forward([next], cache: cache, logits: .last, keepRouting: false)
        }
        let rest = decoder.flush()
        if !rest.isEmpty {
            text += rest
            if !quiet && reason != .cancelled {
                visible += rest
                _ = onText(rest)
            }
        }
        let t2 = ContinuousClock.now
        return GenerationResult(tokens: tokens, text: text, visibleText: visible, promptTokens: prompt.count, cachedPromptTokens: cached,
                                stopReason: reason,
                                prefillSeconds: (t1 - t0).seconds, decodeSeconds: (t2 - t1).seconds)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
