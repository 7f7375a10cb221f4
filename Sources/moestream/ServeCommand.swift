import ArgumentParser
import Foundation
import MoEGeneration
import MoEServer
import MoETensor
import MoETokenizer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve an OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics.")

    @OptionGroup var model: ModelOptions

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on.")
    var port = 8080

    @Option(help: "Require `Authorization: Bearer KEY` on /v1/*. Visible in `ps`: prefer --api-key-file or MOESTREAM_API_KEY.")
    var apiKey: String?

    @Option(help: ArgumentHelp("Read the API key from the first line of this file.", valueName: "file"))
    var apiKeyFile: String?

    @Option(help: "Model id reported by /v1/models and in responses.")
    var modelName = "kimi-k2"

    @Option(help: "Positions per request (prompt + answer), at most the model's context; longer prompts get a 400 (default: 8192, or the model's context if shorter).")
    var context: Int?

    @Option(help: "Largest max_tokens a request may ask for.")
    var maxTokensLimit = 4096

    @Option(help: ArgumentHelp("Bytes of recent conversations' KV caches kept so a request that resends one starts from its longest computed prefix, e.g. 8G; 0 turns reuse off (default: a twentieth of available RAM, at least 1G: half the headroom the expert cache's default leaves; available RAM respects a memory cgroup's limit).", valueName: "size"))
    var kvBudget: String?

    @Option(help: "Requests decoded together at most: one forward per step over a token of each, each chosen expert read once per step for all of them; each answer is the one it gets alone. 1: one request at a time.")
    var parallel = 4

    @Option(help: "Requests that may wait for the engine; more get a 503.")
    var queue = 64

    @Option(help: ArgumentHelp("Close a connection with no request in progress after this many seconds (silent, half-open or slow headers).", valueName: "seconds"))
    var idleTimeout = 30

    @Option(help: "Connections open at once; further ones wait in the listen backlog.")
    var maxConnections = 256

    @OptionGroup(title: "Chat format") var chat: ChatOptions

    @OptionGroup(title: "Default sampling (requests override)") var sampling: SamplingOptions
    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions

    /// --api-key, else the first line of --api-key-file, else $MOESTREAM_API_KEY; an empty key is refused.
    func resolvedKey() throws -> String? {
        var key = apiKey
        if key == nil, let file = apiKeyFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw CLIError("--api-key-file \(file): cannot be read") }
            key = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        }
        if key == nil { key = ProcessInfo.processInfo.environment["MOESTREAM_API_KEY"] }
        if let k = key, k.trimmingCharacters(in: .whitespaces).isEmpty { throw CLIError("the API key is empty") }
        return key
    }

    /// --kv-budget, else max(1 GiB, MemAvailable / 20), measured before the model loads.
    static func kvBudget(_ flag: String?, available: Int) throws -> Int {
        guard let flag else { return max(1 << 30, available / 20) }
        guard let bytes = parseSize(flag) else { throw CLIError("--kv-budget '\(flag)' is not a size such as 8G or 512M") }
        return bytes
    }

    /// --context, refused beyond the model's context (max_position_embeddings: positions past it have no trained
    /// rope scaling); by default 8192 or the model's context if shorter.
    static func contextLimit(_ flag: Int?, model: Int) throws -> Int {
        guard let flag else { return min(8192, model) }
        guard flag >= 2 else { throw CLIError("--context \(flag): a request needs at least 2 positions (a prompt token and an answer)") }
        guard flag <= model else {
            throw CLIError("--context \(flag) is beyond the model's context of \(model) positions (max_position_embeddings in config.json)")
        }
        return flag
    }

    func run() async throws {
        guard (1...256).contains(parallel) else { throw CLIError("--parallel must be between 1 and 256") }
        let kvBudget = try Self.kvBudget(kvBudget, available: availableMemory())
        let loaded = try LoadedModel.load(model, cacheOptions)
        let setup = try chat.setup(model.model, loaded.model.config)
        var config = ServerConfiguration()
        config.host = host
        config.port = port
        config.apiKey = try resolvedKey()
        config.modelName = modelName
        config.contextLimit = try Self.contextLimit(context, model: loaded.model.config.maxPositionEmbeddings)
        config.maxTokensLimit = maxTokensLimit
        config.defaultMaxTokens = min(sampling.maxTokens, maxTokensLimit)
        config.maxQueue = queue
        guard idleTimeout >= 1, maxConnections >= 1 else { throw CLIError("--idle-timeout and --max-connections must be at least 1") }
        config.idleTimeoutSeconds = idleTimeout
        config.maxConnections = maxConnections
        config.sampling = sampling.parameters
        let engine = Engine(generator: Generator(model: loaded.model, tokenizer: setup.tokenizer), maxQueue: queue,
                            contextLimit: config.contextLimit, prefixBudget: kvBudget, parallel: parallel)
        let perToken = loaded.model.kvBytesPerToken
        let server = OpenAIServer(configuration: config, engine: engine, tokenizer: setup.tokenizer, format: setup.format,
                                  stop: setup.stop, cache: loaded.cache)
        printError("serving \(model.model) as '\(modelName)' on http://\(host):\(port) (context \(config.contextLimit), \(parallel) in parallel, queue \(queue), "
            + "idle timeout \(idleTimeout) s, \(maxConnections) connections"
            + (config.apiKey == nil ? ", no API key: cross-origin and foreign-Host requests refused)" : ", API key required)")
            + "; KV cache \(loaded.model.kvPrecision.rawValue), \(humanBytes(perToken)) per position, prefix cache \(humanBytes(kvBudget)) (\(kvBudget / perToken) positions)"
            + "; kernels \(Kernels.isa.rawValue), expert activations \(loaded.model.expertActivations.rawValue), resident activations \(loaded.model.residentActivations.described(int8: loaded.model.weights.hasInterleavedInt8)), resident weights \(loaded.residentWeights), prefill chunk \(loaded.model.prefillChunk), window \(loaded.model.prefillWindow)")
        if config.apiKey == nil && !OpenAIServer.isLoopbackName(host) {
            printError("""
                WARNING: listening on \(host) without an API key: anyone who can reach this port can use the model.
                WARNING: set one with --api-key-file FILE or MOESTREAM_API_KEY, or listen on 127.0.0.1.
                """)
        }
        try await server.run()
        engine.shutdown()
        loaded.cache?.shutdown()
    }
}
