import Foundation

/// One message of a conversation, in the OpenAI shape the server receives.
public struct ChatMessage: Sendable, Equatable {
    public enum Role: String, Sendable, Codable { case system, user, assistant, tool }
    public var role: Role
    public var content: String
    /// Overrides the role name in Kimi's header (`<|im_user|>{name}<|im_middle|>`).
    public var name: String?
    /// Assistant messages: the tools it called.
    public var toolCalls: [ToolCall]
    /// Tool results: which call this answers (`functions.get_weather:0`).
    public var toolCallID: String?
    /// Thinking models: what the assistant thought before answering.
    public var reasoning: String?

    public init(role: Role, content: String, name: String? = nil, toolCalls: [ToolCall] = [], toolCallID: String? = nil,
                reasoning: String? = nil) {
        self.role = role
        self.content = content
        self.name = name
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
        self.reasoning = reasoning
    }
}

public struct ToolCall: Sendable, Equatable, Codable {
    /// Kimi's id: `functions.{name}:{index}`.
    public var id: String
    public var name: String
    /// JSON text of the arguments, as the model wrote it.
    public var arguments: String

    public init(id: String, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }
}

/// A chat template, hard-coded (no Jinja engine) and pinned by golden strings in the tests.
public protocol ChatFormat: Sendable {
    /// The prompt text for `messages`, ending with the assistant's turn header when `addGenerationPrompt`.
    /// `tools` is the tool declaration JSON (an array), or nil.
    func render(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> String
    /// Token texts that end the assistant's turn.
    var stopTexts: [String] { get }
    /// Splits what the assistant generated into reasoning, visible content and tool calls.
    func parse(_ generated: String) -> ChatMessage
}

/// Kimi K2's chat format: `<|im_{role}|>{role or name}<|im_middle|>{content}<|im_end|>` per turn, no newlines
/// between turns, a default system prompt when there is none, tools declared first as
/// `<|im_system|>tool_declare<|im_middle|>{json}<|im_end|>`, calls and results in Kimi's tool sections.
public struct KimiChatFormat: ChatFormat {
    public static let defaultSystemPrompt = "You are Kimi, an AI assistant created by Moonshot AI."
    /// Thinking models (K2 Thinking) put `<think>…</think>` before the answer; earlier turns keep it empty.
    public var thinking: Bool

    public init(thinking: Bool = false) { self.thinking = thinking }

    public var stopTexts: [String] { ["<|im_end|>", "[EOS]"] }

    public func render(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> String {
        var out = ""
        if let tools { out += "<|im_system|>tool_declare<|im_middle|>\(tools)<|im_end|>" }
        if messages.first?.role != .system {
            out += "<|im_system|>system<|im_middle|>\(Self.defaultSystemPrompt)<|im_end|>"
        }
        for m in messages {
            let name = m.name ?? m.role.rawValue
            switch m.role {
            case .user: out += "<|im_user|>\(name)<|im_middle|>"
            case .assistant: out += "<|im_assistant|>\(name)<|im_middle|>"
            case .system, .tool: out += "<|im_system|>\(name)<|im_middle|>"
            }
            switch m.role {
            case .assistant:
                if thinking { out += "<think>\(m.reasoning ?? "")</think>" }
                out += m.content
                if !m.toolCalls.isEmpty {
                    out += "<|tool_calls_section_begin|>"
                    for c in m.toolCalls {
                        out += "<|tool_call_begin|>\(c.id)<|tool_call_argument_begin|>\(c.arguments)<|tool_call_end|>"
                    }
                    out += "<|tool_calls_section_end|>"
                }
            case .tool:
                out += "## Return of \(m.toolCallID ?? "")\n\(m.content)"
            default:
                out += m.content
            }
            out += "<|im_end|>"
        }
        if addGenerationPrompt { out += "<|im_assistant|>assistant<|im_middle|>" }
        return out
    }

    public func parse(_ generated: String) -> ChatMessage {
        var text = generated
        for stop in stopTexts where text.hasSuffix(stop) { text.removeLast(stop.count) }
        var reasoning: String? = nil
        if text.hasPrefix("<think>"), let end = text.range(of: "</think>") {
            reasoning = String(text[text.index(text.startIndex, offsetBy: 7)..<end.lowerBound])
            text = String(text[end.upperBound...])
        }
        var calls: [ToolCall] = []
        if let begin = text.range(of: "<|tool_calls_section_begin|>") {
            let section = text[begin.upperBound...]
            let body = section.range(of: "<|tool_calls_section_end|>").map { section[..<$0.lowerBound] } ?? section
            for chunk in body.components(separatedBy: "<|tool_call_begin|>").dropFirst() {
                guard let arg = chunk.range(of: "<|tool_call_argument_begin|>") else { continue }
                let id = String(chunk[..<arg.lowerBound]).trimmingCharacters(in: .whitespaces)
                let rest = chunk[arg.upperBound...]
                let arguments = rest.range(of: "<|tool_call_end|>").map { String(rest[..<$0.lowerBound]) } ?? String(rest)
                // functions.{name}:{index}
                var name = id.hasPrefix("functions.") ? String(id.dropFirst("functions.".count)) : id
                if let colon = name.lastIndex(of: ":") { name = String(name[..<colon]) }
                calls.append(ToolCall(id: id, name: name, arguments: arguments))
            }
            text = String(text[..<begin.lowerBound])
        }
        return ChatMessage(role: .assistant, content: text, toolCalls: calls, reasoning: reasoning)
    }
}

/// DeepSeek-V3's chat format: `<｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>`.
public struct DeepSeekV3ChatFormat: ChatFormat {
    public init() {}

    public var stopTexts: [String] { ["<｜end▁of▁sentence｜>"] }

    public func render(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> String {
        var out = "<｜begin▁of▁sentence｜>"
        for m in messages where m.role == .system { out += m.content }
        for m in messages {
            switch m.role {
            case .system: continue
            case .user: out += "<｜User｜>\(m.content)"
            case .assistant: out += "<｜Assistant｜>\(m.content)<｜end▁of▁sentence｜>"
            case .tool: out += "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>\(m.content)<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
            }
        }
        if addGenerationPrompt { out += "<｜Assistant｜>" }
        return out
    }

    public func parse(_ generated: String) -> ChatMessage {
        var text = generated
        for stop in stopTexts where text.hasSuffix(stop) { text.removeLast(stop.count) }
        return ChatMessage(role: .assistant, content: text)
    }
}
