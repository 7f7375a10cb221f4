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

/// One piece of a rendered prompt: the template's own special tokens, kept apart from text so that nothing a
/// client wrote (content, names, ids, tool declarations, reasoning) can ever become a special token.
public enum PromptPiece: Sendable, Equatable {
    /// A special token of the template (`<|im_end|>`), inserted by id.
    case special(String)
    /// Text, encoded with every special token spelled in it as plain text.
    case text(String)
}

/// A chat template, hard-coded (no Jinja engine) and pinned by golden strings in the tests.
public protocol ChatFormat: Sendable {
    /// The prompt for `messages` as template specials and text, ending with the assistant's turn header when
    /// `addGenerationPrompt`. `tools` is the tool declaration JSON (an array), or nil.
    func pieces(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> [PromptPiece]
    /// Token texts that end the assistant's turn.
    var stopTexts: [String] { get }
    /// Splits what the assistant generated into reasoning, visible content and tool calls.
    func parse(_ generated: String) -> ChatMessage
}

extension ChatFormat {
    /// The prompt as one string (specials spelled out): what the golden tests compare.
    public func render(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> String {
        pieces(messages, tools: tools, addGenerationPrompt: addGenerationPrompt).map {
            switch $0 { case .special(let s), .text(let s): s }
        }.joined()
    }
}

/// Builds a prompt from template specials and text, merging adjacent text so it tokenizes exactly as the
/// joined string would.
struct PieceWriter {
    var pieces: [PromptPiece] = []

    mutating func special(_ s: String) { pieces.append(.special(s)) }

    mutating func text(_ s: String) {
        guard !s.isEmpty else { return }
        if case .text(let previous)? = pieces.last { pieces[pieces.count - 1] = .text(previous + s) } else { pieces.append(.text(s)) }
    }
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

    public func pieces(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> [PromptPiece] {
        var w = PieceWriter()
        func header(_ role: String, _ name: String) {
            w.special(role)
            w.text(name)
            w.special("<|im_middle|>")
        }
        if let tools {
            header("<|im_system|>", "tool_declare")
            w.text(tools)
            w.special("<|im_end|>")
        }
        if messages.first?.role != .system {
            header("<|im_system|>", "system")
            w.text(Self.defaultSystemPrompt)
            w.special("<|im_end|>")
        }
        for m in messages {
            let name = m.name ?? m.role.rawValue
            switch m.role {
            case .user: header("<|im_user|>", name)
            case .assistant: header("<|im_assistant|>", name)
            case .system, .tool: header("<|im_system|>", name)
            }
            switch m.role {
            case .assistant:
                if thinking { w.text("<think>\(m.reasoning ?? "")</think>") }
                w.text(m.content)
                if !m.toolCalls.isEmpty {
                    w.special("<|tool_calls_section_begin|>")
                    for c in m.toolCalls {
                        w.special("<|tool_call_begin|>")
                        w.text(c.id)
                        w.special("<|tool_call_argument_begin|>")
                        w.text(c.arguments)
                        w.special("<|tool_call_end|>")
                    }
                    w.special("<|tool_calls_section_end|>")
                }
            case .tool:
                w.text("## Return of \(m.toolCallID ?? "")\n\(m.content)")
            default:
                w.text(m.content)
            }
            w.special("<|im_end|>")
        }
        if addGenerationPrompt { header("<|im_assistant|>", "assistant") }
        return w.pieces
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

    public func pieces(_ messages: [ChatMessage], tools: String?, addGenerationPrompt: Bool) -> [PromptPiece] {
        var w = PieceWriter()
        w.special("<｜begin▁of▁sentence｜>")
        for m in messages where m.role == .system { w.text(m.content) }
        for m in messages {
            switch m.role {
            case .system: continue
            case .user:
                w.special("<｜User｜>")
                w.text(m.content)
            case .assistant:
                w.special("<｜Assistant｜>")
                w.text(m.content)
                w.special("<｜end▁of▁sentence｜>")
            case .tool:
                for s in ["<｜tool▁outputs▁begin｜>", "<｜tool▁output▁begin｜>"] { w.special(s) }
                w.text(m.content)
                for s in ["<｜tool▁output▁end｜>", "<｜tool▁outputs▁end｜>"] { w.special(s) }
            }
        }
        if addGenerationPrompt { w.special("<｜Assistant｜>") }
        return w.pieces
    }

    public func parse(_ generated: String) -> ChatMessage {
        var text = generated
        for stop in stopTexts where text.hasSuffix(stop) { text.removeLast(stop.count) }
        return ChatMessage(role: .assistant, content: text)
    }
}
