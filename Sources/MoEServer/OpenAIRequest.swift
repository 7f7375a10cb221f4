import Foundation
import MoEGeneration
import MoETokenizer

/// A request error answered with a 4xx status and OpenAI's error body.
public struct APIError: Error, Sendable {
    public let status: Int
    public let message: String
    public let type: String
    public let param: String?
    public let code: String?

    public init(_ status: Int, _ message: String, type: String = "invalid_request_error", param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var body: [String: Any] {
        ["error": ["message": message, "type": type, "param": param as Any? ?? NSNull(), "code": code as Any? ?? NSNull()]]
    }
}

/// The parts of an OpenAI chat or completion request the engine uses, validated.
struct ParsedRequest {
    var messages: [ChatMessage] = []
    /// /v1/completions: the raw prompt.
    var prompt: String?
    var tools: String?
    var stream = false
    var includeUsage = false
    var maxTokens: Int
    var sampling = SamplingParameters()
    var stopTexts: [String] = []

    /// Parses a JSON body; every problem is a 400 naming the field.
    init(json data: Data, chat: Bool, defaults: SamplingParameters, defaultMaxTokens: Int, maxTokensLimit: Int) throws(APIError) {
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw APIError(400, "the request body is not a JSON object")
        }
        sampling = defaults
        maxTokens = defaultMaxTokens
        if chat {
            guard let list = obj["messages"] as? [[String: Any]], !list.isEmpty else {
                throw APIError(400, "'messages' must be a non-empty array of messages", param: "messages")
            }
            for (i, m) in list.enumerated() { messages.append(try Self.message(m, index: i)) }
            if let t = obj["tools"] {
                guard t is [Any], let d = try? JSONSerialization.data(withJSONObject: t, options: [.sortedKeys, .withoutEscapingSlashes]) else {
                    throw APIError(400, "'tools' must be an array", param: "tools")
                }
                tools = String(decoding: d, as: UTF8.self)
            }
        } else {
            if let p = obj["prompt"] as? String { prompt = p } else if let p = obj["prompt"] as? [String], p.count == 1 { prompt = p[0] } else {
                throw APIError(400, "'prompt' must be a string", param: "prompt")
            }
        }
        stream = obj["stream"] as? Bool ?? false
        includeUsage = ((obj["stream_options"] as? [String: Any])?["include_usage"] as? Bool) ?? false
        if let m = obj["max_completion_tokens"] ?? obj["max_tokens"], !(m is NSNull) {
            guard let v = m as? Int, v >= 1 else { throw APIError(400, "'max_tokens' must be a positive integer", param: "max_tokens") }
            guard v <= maxTokensLimit else {
                throw APIError(400, "'max_tokens' is \(v); this server allows at most \(maxTokensLimit)", param: "max_tokens")
            }
            maxTokens = v
        }
        func number(_ key: String) throws(APIError) -> Double? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, type(of: v) != Bool.self else { throw APIError(400, "'\(key)' must be a number", param: key) }
            return n.doubleValue
        }
        if let v = try number("temperature") { sampling.temperature = Float(v) }
        if let v = try number("top_p") { sampling.topP = Float(v) }
        if let v = try number("top_k") {
            guard let k = Int(exactly: v.rounded()), k >= 0, k <= 1 << 24 else { throw APIError(400, "'top_k' must be a small non-negative integer", param: "top_k") }
            sampling.topK = k
        }
        if let v = try number("min_p") { sampling.minP = Float(v) }
        if let v = try number("repetition_penalty") { sampling.repetitionPenalty = Float(v) }
        if let v = try number("seed") {
            guard v >= 0, v < 1.8e19, let s = UInt64(exactly: v.rounded()) else { throw APIError(400, "'seed' must be a non-negative integer", param: "seed") }
            sampling.seed = s
        }
        if let problem = sampling.problem { throw APIError(400, problem) }
        if let s = obj["stop"] {
            if let one = s as? String { stopTexts = [one] } else if let many = s as? [String], many.count <= 4 { stopTexts = many } else if !(s is NSNull) {
                throw APIError(400, "'stop' must be a string or up to 4 strings", param: "stop")
            }
            stopTexts.removeAll { $0.isEmpty }  // an empty stop text would end every answer at once
        }
    }

    static func message(_ m: [String: Any], index i: Int) throws(APIError) -> ChatMessage {
        guard let r = m["role"] as? String, let role = ChatMessage.Role(rawValue: r == "developer" ? "system" : r) else {
            throw APIError(400, "messages[\(i)].role must be system, user, assistant or tool", param: "messages[\(i)].role")
        }
        var content = ""
        if let s = m["content"] as? String {
            content = s
        } else if let parts = m["content"] as? [[String: Any]] {
            for p in parts {
                guard p["type"] as? String == "text", let t = p["text"] as? String else {
                    throw APIError(400, "messages[\(i)].content: only text parts are supported", param: "messages[\(i)].content")
                }
                content += t
            }
        } else if m["content"] != nil && !(m["content"] is NSNull) {
            throw APIError(400, "messages[\(i)].content must be a string or text parts", param: "messages[\(i)].content")
        }
        var calls: [ToolCall] = []
        if let list = m["tool_calls"] as? [[String: Any]] {
            for (j, c) in list.enumerated() {
                guard let f = c["function"] as? [String: Any], let name = f["name"] as? String else {
                    throw APIError(400, "messages[\(i)].tool_calls[\(j)] needs function.name", param: "messages[\(i)].tool_calls")
                }
                let args: String
                if let s = f["arguments"] as? String { args = s } else if let o = f["arguments"],
                   let d = try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]) {
                    args = String(decoding: d, as: UTF8.self)
                } else { args = "{}" }
                calls.append(ToolCall(id: c["id"] as? String ?? "functions.\(name):\(j)", name: name, arguments: args))
            }
        }
        return ChatMessage(role: role, content: content, name: m["name"] as? String, toolCalls: calls,
                           toolCallID: m["tool_call_id"] as? String, reasoning: m["reasoning_content"] as? String)
    }
}
