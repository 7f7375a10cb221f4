import Foundation
import Hummingbird
import HummingbirdCore
import MoEGeneration
import MoERuntime
import MoETokenizer
import NIOCore

/// Settings of `moestream serve`.
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// When set, /v1/* requires `Authorization: Bearer <key>`.
    public var apiKey: String?
    /// The id /v1/models lists and responses carry.
    public var modelName = "kimi-k2"
    /// Positions one request may use (prompt + generated); a longer prompt is refused with 400.
    public var contextLimit = 8192
    /// The largest `max_tokens` accepted, and the default when a request gives none.
    public var maxTokensLimit = 4096
    public var defaultMaxTokens = 1024
    /// Largest request body accepted (413 beyond).
    public var maxBodyBytes = 4 << 20
    /// Requests allowed to wait for the engine (503 beyond).
    public var maxQueue = 64
    /// Seconds a connection may sit with no request in progress (silent, half-open, or sending a header byte by
    /// byte) before it is closed.
    public var idleTimeoutSeconds = 30
    /// Connections held open at once; more wait in the listen backlog until one closes.
    public var maxConnections = 256
    public var sampling = SamplingParameters()

    public init() {}
}

/// The OpenAI-compatible HTTP API over one engine: /v1/chat/completions and /v1/completions (whole or SSE),
/// /v1/models, /health, /metrics (Prometheus text).
public final class OpenAIServer: Sendable {
    public let configuration: ServerConfiguration
    let engine: Engine
    let tokenizer: Tokenizer
    let format: any ChatFormat
    let stop: Set<Int>
    let cache: ExpertCache?
    let started = Date()
    /// Bytes of the tokenizer's longest token (for refusing oversized prompts untokenized).
    let maxTokenBytes: Int

    public init(configuration: ServerConfiguration, engine: Engine, tokenizer: Tokenizer, format: any ChatFormat,
                stop: Set<Int>, cache: ExpertCache?) {
        self.configuration = configuration
        self.engine = engine
        self.tokenizer = tokenizer
        self.format = format
        self.stop = stop
        self.cache = cache
        maxTokenBytes = tokenizer.maxTokenBytes
    }

    public func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("health") { _, _ in Self.json(200, ["status": "ok"]) }
        router.get("metrics") { [self] _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: metrics())))
        }
        router.get("v1/models") { [self] request, _ in
            if let denied = authorize(request) { return denied }
            return Self.json(200, ["object": "list", "data": [["id": configuration.modelName, "object": "model",
                                                                "created": Int(started.timeIntervalSince1970), "owned_by": "moestream"]]])
        }
        router.post("v1/chat/completions") { [self] request, _ in try await complete(request, chat: true) }
        router.post("v1/completions") { [self] request, _ in try await complete(request, chat: false) }
        return router
    }

    /// Runs until SIGINT/SIGTERM. A port that cannot be had is an error that names the address and why.
    public func run() async throws {
        let app = Application(router: makeRouter(),
                              server: .http1(configuration: .init(idleTimeout: .seconds(Int64(configuration.idleTimeoutSeconds)))),
                              configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "moestream",
                                                   availableConnectionsDelegate: MaximumAvailableConnections(configuration.maxConnections)))
        do {
            try await app.runService()
        } catch let error as IOError where error.errnoCode == EADDRINUSE || error.errnoCode == EACCES || error.errnoCode == EADDRNOTAVAIL {
            throw ListenError(host: configuration.host, port: configuration.port, errno: error.errnoCode)
        }
    }

    /// The server could not listen where it was told to.
    public struct ListenError: Error, CustomStringConvertible {
        public let host: String, port: Int, errno: Int32
        public var description: String {
            let why = errno == EADDRINUSE ? "the port is in use (another server, or a connection's local end): pick another with --port"
                : errno == EACCES ? "permission denied (ports below 1024 need privileges): pick another with --port"
                : "no interface of this machine has that address: check --host"
            return "cannot listen on \(host):\(port): \(why)"
        }
    }

    func authorize(_ request: Request) -> Response? {
        guard let key = configuration.apiKey else { return checkOrigin(request) }
        if request.headers[.authorization] == "Bearer \(key)" { return nil }
        return Self.error(APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)", type: "authentication_error",
                                   code: "invalid_api_key"))
    }

    /// Without a key, the server trusts whoever can reach it — so a web page in the user's browser must not be
    /// able to: a request whose `Origin` is not this machine (a cross-site fetch) is refused, and on a loopback
    /// address so is one whose `Host` is not a loopback name (DNS rebinding: evil.example resolving to 127.0.0.1).
    func checkOrigin(_ request: Request) -> Response? {
        if let origin = request.headers[.origin] {
            // scheme://host[:port]; "null" (a sandboxed or file: page) has no host and is foreign too.
            let authority = origin.split(separator: "/", omittingEmptySubsequences: true).dropFirst().first.map(String.init) ?? ""
            if !Self.isLoopbackName(Self.hostPart(of: authority)) {
                return Self.error(APIError(403, "cross-origin request from \(origin) refused (start the server with an API key to allow it)",
                                           type: "permission_error", code: "foreign_origin"))
            }
        }
        if Self.isLoopbackName(configuration.host), let hostHeader = request.head.authority,
           !Self.isLoopbackName(Self.hostPart(of: hostHeader)) {
            return Self.error(APIError(403, "Host '\(hostHeader)' is not this machine's loopback name (DNS rebinding?); "
                + "start the server with an API key to allow it", type: "permission_error", code: "foreign_host"))
        }
        return nil
    }

    /// `host`, `host:port`, `[v6]:port` → the host.
    static func hostPart(of s: String) -> String {
        if s.hasPrefix("["), let end = s.firstIndex(of: "]") { return String(s[s.index(after: s.startIndex)..<end]) }
        return String(s.split(separator: ":", maxSplits: 1).first ?? "")
    }

    /// localhost, 127.0.0.0/8, ::1.
    public static func isLoopbackName(_ host: String) -> Bool {
        let h = host.lowercased()
        // 127.x.y.z as a dotted quad only: "127.evil.example" is a DNS name an attacker controls.
        let quad = h.split(separator: ".", omittingEmptySubsequences: false)
        let isLoopbackQuad = quad.count == 4 && quad[0] == "127" && quad.allSatisfy { UInt8($0) != nil }
        return h == "localhost" || h.hasSuffix(".localhost") || h == "::1" || isLoopbackQuad
    }

    // MARK: - Completions

    func complete(_ request: Request, chat: Bool) async throws -> Response {
        if let denied = authorize(request) { return denied }
        var request = request
        let body: ByteBuffer
        do { body = try await request.collectBody(upTo: configuration.maxBodyBytes) } catch {
            return Self.error(APIError(413, "the request body is larger than \(configuration.maxBodyBytes) bytes", code: "request_too_large"))
        }
        let parsed: ParsedRequest
        do {
            parsed = try ParsedRequest(json: Data(buffer: body), chat: chat, defaults: configuration.sampling,
                                       defaultMaxTokens: configuration.defaultMaxTokens, maxTokensLimit: configuration.maxTokensLimit)
        } catch { return Self.error(error) }
        // A place in the queue first: a full queue refuses before the prompt costs any tokenising.
        let admission: Engine.Admission
        do { admission = try engine.admit() } catch {
            return Self.error(APIError(503, "the server is busy (\(engine.maxQueue) requests waiting); try again", type: "server_error",
                                       code: "queue_full"))
        }
        // Special tokens come only from the template, by id: every field a client wrote (content, names, ids,
        // tool declarations, reasoning, a raw prompt) is encoded with specials spelled in it as plain text, so
        // none can forge a turn boundary, whatever its Unicode.
        let pieces: [PromptPiece] = chat ? format.pieces(parsed.messages, tools: parsed.tools, addGenerationPrompt: true)
            : [.text(parsed.prompt!)]
        // A prompt with more bytes than the context's tokens can cover is refused before it is tokenized.
        let promptBytes = pieces.reduce(0) { n, p in switch p { case .special(let s), .text(let s): n + s.utf8.count } }
        guard promptBytes <= configuration.contextLimit * maxTokenBytes else {
            return Self.error(APIError(400, "the prompt has \(promptBytes) bytes, more than this server's context of "
                + "\(configuration.contextLimit) tokens can hold", param: chat ? "messages" : "prompt", code: "context_length_exceeded"))
        }
        let ids = tokenizer.encode(pieces)
        guard !ids.isEmpty else { return Self.error(APIError(400, "the prompt is empty", param: "prompt")) }
        guard ids.count < configuration.contextLimit else {
            return Self.error(APIError(400, "the prompt has \(ids.count) tokens; this server's context is \(configuration.contextLimit)",
                                       param: chat ? "messages" : "prompt", code: "context_length_exceeded"))
        }
        let maxTokens = min(parsed.maxTokens, configuration.contextLimit - ids.count)
        let quiet = Set(["<|tool_calls_section_begin|>"].compactMap { tokenizer.specialIDs[$0] })
        let submitted = engine.submit(Engine.Request(prompt: ids, sampling: parsed.sampling, maxTokens: maxTokens, stop: stop,
                                                     stopTexts: parsed.stopTexts, quietAfter: chat ? quiet : []),
                                      admission: admission)
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(24)
        let created = Int(Date().timeIntervalSince1970)
        let model = configuration.modelName
        if parsed.stream {
            return stream(submitted, id: id, created: created, model: model, chat: chat, includeUsage: parsed.includeUsage)
        }
        var result: GenerationResult?
        var failedMessage: String?
        // A whole (non-streamed) answer: if the handler's task is cancelled (the client went away), so is the
        // generation, instead of running on to max_tokens for nobody.
        await withTaskCancellationHandler {
            for await event in submitted.events {
                switch event {
                case .text: continue
                case .done(let r): result = r
                case .failed(let message): failedMessage = message
                }
            }
        } onCancel: { submitted.cancellation.cancel() }
        if let failedMessage { return Self.error(APIError(500, "generation failed: \(failedMessage)", type: "server_error")) }
        guard let result else { return Self.error(APIError(500, "generation ended without a result", type: "server_error")) }
        let usage = Self.usage(result)
        if chat {
            let reply = format.parse(result.text)
            // Visible text only: special tokens (tool-call markers, reserved ids) are never content.
            let content = reply.toolCalls.isEmpty && reply.reasoning == nil ? result.visibleText : reply.content
            var message: [String: Any] = ["role": "assistant", "content": content]
            if let r = reply.reasoning { message["reasoning_content"] = r }
            if !reply.toolCalls.isEmpty { message["tool_calls"] = reply.toolCalls.map(Self.toolCallJSON) }
            let finish = !reply.toolCalls.isEmpty ? "tool_calls" : Self.finishReason(result)
            return Self.json(200, ["id": id, "object": "chat.completion", "created": created, "model": model,
                                   "choices": [["index": 0, "message": message, "finish_reason": finish]], "usage": usage])
        }
        return Self.json(200, ["id": id, "object": "text_completion", "created": created, "model": model,
                               "choices": [["index": 0, "text": result.visibleText, "finish_reason": Self.finishReason(result)]],
                               "usage": usage])
    }

    /// Server-sent events: one chunk per piece of text, then the finish chunk (with tool calls, if any), usage
    /// when asked, and `data: [DONE]`. A client that goes away cancels its generation.
    func stream(_ submitted: (events: AsyncStream<Engine.Event>, cancellation: Engine.Cancellation), id: String, created: Int,
                model: String, chat: Bool, includeUsage: Bool) -> Response {
        let format = self.format
        let body = ResponseBody { writer in
            func send(_ object: [String: Any]) async throws {
                let data = try JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
                try await writer.write(ByteBuffer(string: "data: " + String(decoding: data, as: UTF8.self) + "\n\n"))
            }
            func chunk(_ delta: [String: Any], finish: String?) -> [String: Any] {
                if chat {
                    return ["id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [["index": 0, "delta": delta, "finish_reason": finish as Any? ?? NSNull()]]]
                }
                return ["id": id, "object": "text_completion", "created": created, "model": model,
                        "choices": [["index": 0, "text": delta["content"] ?? "", "finish_reason": finish as Any? ?? NSNull()]]]
            }
            do {
                if chat { try await send(chunk(["role": "assistant", "content": ""], finish: nil)) }
                for await event in submitted.events {
                    switch event {
                    case .text(let piece):
                        try await send(chunk(["content": piece], finish: nil))
                    case .done(let result):
                        var finish = Self.finishReason(result)
                        if chat {
                            let reply = format.parse(result.text)
                            if !reply.toolCalls.isEmpty {
                                finish = "tool_calls"
                                let calls = reply.toolCalls.enumerated().map { i, c -> [String: Any] in
                                    var j = Self.toolCallJSON(c)
                                    j["index"] = i
                                    return j
                                }
                                try await send(chunk(["tool_calls": calls], finish: nil))
                            }
                        }
                        try await send(chunk([:], finish: finish))
                        if includeUsage {
                            try await send(["id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created,
                                            "model": model, "choices": [],
                                            "usage": Self.usage(result)])
                        }
                    case .failed(let message):
                        try await send(["error": ["message": "generation failed: \(message)", "type": "server_error"]])
                    }
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                submitted.cancellation.cancel()  // the client went away: stop generating for it
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    /// OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts the prompt's leading tokens taken from
    /// the prefix cache instead of computed.
    static func usage(_ r: GenerationResult) -> [String: Any] {
        ["prompt_tokens": r.promptTokens, "completion_tokens": r.tokens.count, "total_tokens": r.promptTokens + r.tokens.count,
         "prompt_tokens_details": ["cached_tokens": r.cachedPromptTokens]]
    }

    static func finishReason(_ r: GenerationResult) -> String {
        switch r.stopReason {
        case .stopToken, .cancelled: "stop"
        case .maxTokens: "length"
        }
    }

    static func toolCallJSON(_ c: ToolCall) -> [String: Any] {
        ["id": c.id, "type": "function", "function": ["name": c.name, "arguments": c.arguments]]
    }

    static func json(_ status: Int, _ object: [String: Any]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
        return Response(status: .init(code: status), headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func error(_ e: APIError) -> Response { json(e.status, e.body) }

    // MARK: - Metrics

    /// Prometheus text exposition: requests, tokens, queue, and the expert cache per layer and per node.
    func metrics() -> String {
        let c = engine.counterSnapshot
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Double)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, v) in samples { out += "\(name)\(labels.isEmpty ? "" : "{\(labels)}") \(Self.number(v))\n" }
        }
        metric("moestream_requests_total", "counter", "Generation requests accepted.", [("", Double(c.requests))])
        metric("moestream_requests_finished_total", "counter", "Requests that ended, by outcome.",
               [("outcome=\"completed\"", Double(c.completed)), ("outcome=\"cancelled\"", Double(c.cancelled)),
                ("outcome=\"failed\"", Double(c.failed)), ("outcome=\"rejected\"", Double(c.rejected))])
        metric("moestream_requests_queued", "gauge", "Requests waiting for the engine.", [("", Double(c.queued))])
        metric("moestream_requests_running", "gauge", "Requests being generated.", [("", Double(c.running))])
        metric("moestream_tokens_total", "counter", "Tokens processed.",
               [("kind=\"prompt\"", Double(c.promptTokens)), ("kind=\"generated\"", Double(c.generatedTokens))])
        metric("moestream_decode_steps_total", "counter", "Decode steps: one forward over a token of each request decoded together.",
               [("", Double(c.steps))])
        metric("moestream_decode_step_sequences_total", "counter", "Requests those steps carried (over steps: how many went together).",
               [("", Double(c.stepSequences))])
        metric("moestream_prompt_tokens_total", "counter", "Prompt tokens, by whether the prefix cache held them or they were computed.",
               [("source=\"reused\"", Double(c.promptTokensReused)), ("source=\"computed\"", Double(c.promptTokensComputed))])
        let p = engine.prefixCache.statistics
        metric("moestream_prefix_cache_entries", "gauge", "Idle sequences whose KV caches are kept for prefix reuse.", [("", Double(p.entries))])
        metric("moestream_prefix_cache_positions", "gauge", "Positions those KV caches hold.", [("", Double(p.positions))])
        metric("moestream_prefix_cache_bytes", "gauge", "Bytes those KV caches take.", [("", Double(p.bytes))])
        metric("moestream_prefix_cache_budget_bytes", "gauge", "The prefix cache's budget (--kv-budget).", [("", Double(p.budgetBytes))])
        metric("moestream_prefix_cache_evictions_total", "counter", "Kept sequences dropped to stay within the budget.",
               [("", Double(p.evictions))])
        metric("moestream_generation_seconds_total", "counter", "Seconds spent generating.",
               [("phase=\"prefill\"", c.prefillSeconds), ("phase=\"decode\"", c.decodeSeconds)])
        if let cache {
            let s = cache.statistics()
            var kinds: [(String, Double)] = []
            for l in s.layers {
                for (kind, v) in [("demand_hit", l.demandHits), ("prefetch_hit", l.prefetchHits), ("late_prefetch", l.latePrefetches),
                                  ("miss", l.misses)] {
                    kinds.append(("layer=\"\(l.layer)\",kind=\"\(kind)\"", Double(v)))
                }
            }
            metric("moestream_expert_requests_total", "counter", "Experts the model asked for, by layer and outcome.", kinds)
            metric("moestream_expert_wasted_prefetches_total", "counter", "Prefetched experts evicted unused.",
                   s.layers.map { ("layer=\"\($0.layer)\"", Double($0.wastedPrefetches)) })
            metric("moestream_expert_bytes_read_total", "counter", "Bytes read from the expert store.",
                   s.layers.map { ("layer=\"\($0.layer)\"", Double($0.bytesRead)) })
            metric("moestream_expert_stall_seconds_total", "counter", "Seconds the model waited for expert reads.",
                   s.layers.map { ("layer=\"\($0.layer)\"", $0.stallSeconds) })
            metric("moestream_cache_slots", "gauge", "Expert slots per NUMA node.", s.nodes.map { ("node=\"\($0.node)\"", Double($0.slots)) })
            metric("moestream_cache_slots_occupied", "gauge", "Expert slots holding an expert, per NUMA node.",
                   s.nodes.map { ("node=\"\($0.node)\"", Double($0.occupied)) })
            metric("moestream_cache_budget_bytes", "gauge", "Expert cache budget per NUMA node.",
                   s.nodes.map { ("node=\"\($0.node)\"", Double($0.budgetBytes)) })
        }
        return out
    }

    static func number(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v) }
}
