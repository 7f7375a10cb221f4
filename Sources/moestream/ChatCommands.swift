import ArgumentParser
import Foundation
import MoECheckpoint
import MoEGeneration
import MoEModel
import MoERuntime
import MoETokenizer

/// Sampling flags shared by `run`, `chat` (and the server's defaults).
struct SamplingOptions: ParsableArguments {
    @Option(help: "Sampling temperature (0: greedy). Kimi recommends 0.6.")
    var temperature: Float = 0.6

    @Option(help: "Nucleus sampling: keep the most likely tokens up to this total probability (1: off).")
    var topP: Float = 1

    @Option(help: "Keep only the k most likely tokens (0: off).")
    var topK: Int = 0

    @Option(help: "Drop tokens less likely than this fraction of the most likely (0: off).")
    var minP: Float = 0

    @Option(help: "Penalise tokens already in the context (1: off).")
    var repeatPenalty: Float = 1

    @Option(help: "Random seed, for reproducible sampling.")
    var seed: UInt64?

    @Option(help: "Most tokens to generate per answer.")
    var maxTokens: Int = 512

    var parameters: SamplingParameters {
        var p = SamplingParameters()
        p.temperature = temperature
        p.topP = topP
        p.topK = topK
        p.minP = minP
        p.repetitionPenalty = repeatPenalty
        p.seed = seed
        return p
    }

    func validate() throws {
        if let problem = parameters.problem { throw ValidationError(problem) }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
    }
}

/// How the prompt is laid out, shared by `run`, `chat` and `serve`.
struct ChatOptions: ParsableArguments {
    @Flag(help: "A thinking model (Kimi K2 Thinking): <think>…</think> comes before the answer.")
    var thinking = false

    func setup(_ path: String, _ config: ModelConfig) throws -> ChatSetup {
        try ChatSetup(path: path, config: config, thinking: thinking)
    }
}

/// The tokenizer and chat format that go with a model directory or store.
struct ChatSetup {
    let tokenizer: Tokenizer
    let format: any ChatFormat
    let stop: Set<Int>

    init(path: String, config: ModelConfig, thinking: Bool) throws {
        do { tokenizer = try Tokenizer.load(model: path) } catch {
            throw CLIError("\(error) (a model needs tiktoken.model beside config.json for text input)")
        }
        guard tokenizer.vocabularySize <= config.vocabSize else {
            throw CLIError("\(path): the tokenizer has \(tokenizer.vocabularySize) ids but the model only \(config.vocabSize)")
        }
        format = config.modelType == "deepseek_v3" ? DeepSeekV3ChatFormat() : KimiChatFormat(thinking: thinking)
        var stop = Set(config.eosTokenIds)
        for text in format.stopTexts { if let id = tokenizer.specialIDs[text] { stop.insert(id) } }
        self.stop = stop
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text (or, with --decode, the text of ids).")

    @Argument(help: "A store, a checkpoint directory, any directory with tiktoken.model, or a GGUF file.")
    var model: String

    @Argument(help: "The text to encode, or the ids to decode (1,2,3).")
    var input: String

    @Flag(help: "Decode ids into text.")
    var decode = false

    @Flag(help: "Treat special-token text (<|im_end|>) as ordinary text.")
    var noSpecial = false

    func run() throws {
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer.load(model: model) } catch { throw CLIError("\(error)") }
        if decode {
            guard let ids = TokenList(argument: input)?.ids else { throw CLIError("'\(input)' is not a list of ids") }
            print(tokenizer.decode(ids))
        } else {
            print(tokenizer.encode(input, allowSpecial: !noSpecial).map(String.init).joined(separator: ","))
        }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Answer one prompt, streaming the text.")

    @OptionGroup var model: ModelOptions

    @Option(name: .shortAndLong, help: "The prompt.")
    var prompt: String

    @Option(help: "System prompt (default: the model's own).")
    var system: String?

    @Flag(help: "Feed the prompt as is, without the chat format.")
    var raw = false

    @OptionGroup(title: "Chat format") var chat: ChatOptions

    @OptionGroup(title: "Sampling") var sampling: SamplingOptions
    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions
    @OptionGroup(title: "Statistics") var statsOptions: StatsOptions

    func run() throws {
        let loaded = try LoadedModel.load(model, cacheOptions, statsOptions)
        let setup = try chat.setup(model.model, loaded.model.config)
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: .system, content: system)) }
        messages.append(ChatMessage(role: .user, content: prompt))
        // --raw: the text as typed, specials included (a local user's own prompt); otherwise the template's
        // specials by id and the message as plain text.
        let ids = raw ? setup.tokenizer.encode(prompt)
            : setup.tokenizer.encode(setup.format.pieces(messages, tools: nil, addGenerationPrompt: true))
        let generator = Generator(model: loaded.model, tokenizer: setup.tokenizer)
        let result: GenerationResult
        do {
            result = try generator.generate(prompt: ids, cache: loaded.model.makeCache(), sampling: sampling.parameters,
                                            maxTokens: sampling.maxTokens, stop: setup.stop) { piece in
                writeOut(piece)
                return true
            }
        } catch let e as ModelError { throw CLIError(e.description) }
        writeOut("\n")
        try loaded.finish(statsOptions, extra: [Self.summary(result, loaded.cache)])
        if loaded.cache == nil && !statsOptions.noStats { printError(Self.summary(result, nil)) }
    }

    static func summary(_ r: GenerationResult, _ cache: ExpertCache?) -> String {
        let reused = r.cachedPromptTokens > 0 ? " (\(r.cachedPromptTokens) reused from the cache)" : ""
        var line = String(format: "%d prompt tokens%@ at %.1f tokens/s, %d generated at %.1f tokens/s (%@)", r.promptTokens,
                          reused, r.prefillTokensPerSecond, r.tokens.count, r.decodeTokensPerSecond, r.stopReason.rawValue)
        if let cache { line += String(format: ", expert hit rate %.1f%%", cache.statistics().total.hitRate * 100) }
        return line
    }
}

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Talk with the model. /reset starts over, /exit (or end of input) leaves.")

    @OptionGroup var model: ModelOptions

    @Option(help: "System prompt (default: the model's own).")
    var system: String?

    @OptionGroup(title: "Chat format") var chat: ChatOptions

    @OptionGroup(title: "Sampling") var sampling: SamplingOptions
    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions
    @OptionGroup(title: "Statistics") var statsOptions: StatsOptions

    func run() throws {
        let loaded = try LoadedModel.load(model, cacheOptions, statsOptions)
        let setup = try chat.setup(model.model, loaded.model.config)
        let generator = Generator(model: loaded.model, tokenizer: setup.tokenizer)
        var messages: [ChatMessage] = system.map { [ChatMessage(role: .system, content: $0)] } ?? []
        let kv = loaded.model.makeCache()
        var fed: [Int] = []  // what the KV cache holds
        printError("chat with \(model.model): /reset starts over, /exit leaves")
        while true {
            FileHandle.standardError.write("> ".data(using: .utf8)!)
            guard let line = readLine() else { break }
            let input = line.trimmingCharacters(in: .whitespaces)
            if input.isEmpty { continue }
            if input == "/exit" || input == "/quit" { break }
            if input == "/reset" {
                messages = system.map { [ChatMessage(role: .system, content: $0)] } ?? []
                kv.reset()
                fed = []
                printError("(conversation reset)")
                continue
            }
            messages.append(ChatMessage(role: .user, content: input))
            let all = setup.tokenizer.encode(setup.format.pieces(messages, tools: nil, addGenerationPrompt: true))
            // Reuse the cached prefix of the conversation; feed only what is new.
            var common = 0
            while common < min(all.count, fed.count) && all[common] == fed[common] { common += 1 }
            if common == all.count { common -= 1 }
            kv.truncate(to: common)
            let result: GenerationResult
            do {
                result = try generator.generate(prompt: all, cached: common, cache: kv, sampling: sampling.parameters,
                                                maxTokens: sampling.maxTokens, stop: setup.stop) { piece in
                    writeOut(piece)
                    return true
                }
            } catch let e as ModelError { throw CLIError(e.description) }
            writeOut("\n")
            // The cache holds the prompt and every generated token but the last (sampled, never fed back).
            fed = all + result.tokens.dropLast()
            let reply = setup.format.parse(result.text)
            messages.append(ChatMessage(role: .assistant, content: reply.content, reasoning: reply.reasoning))
            if !statsOptions.noStats { printError(Run.summary(result, loaded.cache)) }
        }
        try loaded.finish(statsOptions)
    }
}

/// Streamed text goes straight to stdout, unbuffered, so it appears token by token and in order.
func writeOut(_ s: String) { FileHandle.standardOutput.write(s.data(using: .utf8)!) }
