import Foundation
import MoESystem

/// Kimi K2's tokenizer: tiktoken-format BPE ranks, Kimi's pre-tokenizer, and special tokens from
/// tokenizer_config.json (ids after the ranks; unnamed ones are `<|reserved_token_{id}|>`).
public final class Tokenizer: @unchecked Sendable {  // immutable after init: every stored property is a `let` of a value type
    public let bpe: BytePairEncoder
    /// Special token text → id, and back.
    public let specialIDs: [String: Int]
    public let specialNames: [Int: String]
    public let bosID: Int?
    public let eosID: Int?
    /// Specials, longest first, for finding them in text.
    private let specialsByLength: [(text: [Unicode.Scalar], id: Int)]

    /// Kimi splits input into pieces of at most this many characters before the pattern runs…
    static let maxChunk = 400_000
    /// …and runs of whitespace or of non-whitespace longer than this into shorter ones.
    static let maxRun = 25_000

    /// Special ids may follow the ranks by at most this much (Kimi K2 has 256 specials).
    static let maxSpecials = 1 << 20

    public var vocabularySize: Int { bpe.tokens.count + specialIDs.count }

    /// Loads `tiktoken.model` and (if present) `tokenizer_config.json` from `directory`. Without a config, the
    /// 256 ids after the ranks are reserved specials with Kimi's names at Kimi's offsets.
    public convenience init(directory: String) throws(TokenizerError) {
        let bpe = try BytePairEncoder(tiktokenFile: directory + "/tiktoken.model")
        let n = bpe.tokens.count
        var specials: [String: Int] = [:]
        var names: [Int: String] = [:]
        let configPath = directory + "/tokenizer_config.json"
        var bos: String? = nil, eos: String? = nil
        if FileSystem.exists(configPath) {
            let data: [UInt8]
            do { data = try FileSystem.contents(configPath, limit: 64 << 20) } catch {
                throw TokenizerError(file: configPath, reason: "cannot be read: \(error)")
            }
            guard let json = (try? JSONSerialization.jsonObject(with: Data(data))) as? [String: Any] else {
                throw TokenizerError(file: configPath, reason: "not a JSON object")
            }
            if let added = json["added_tokens_decoder"] as? [String: Any] {
                for (key, value) in added {
                    guard let id = Int(key), let entry = value as? [String: Any], let content = entry["content"] as? String else {
                        throw TokenizerError(file: configPath, reason: "added_tokens_decoder entry '\(key)' is malformed")
                    }
                    guard id >= n else {
                        throw TokenizerError(file: configPath, reason: "special token \(content) has id \(id) inside the BPE ranks (0..<\(n))")
                    }
                    guard id - n < Self.maxSpecials else {
                        throw TokenizerError(file: configPath, reason: "special token \(content) has id \(id), more than \(Self.maxSpecials) past the ranks")
                    }
                    guard !content.isEmpty else { throw TokenizerError(file: configPath, reason: "special token \(id) has empty text") }
                    if let other = specials[content], other != id {
                        throw TokenizerError(file: configPath, reason: "special token \(content) has two ids, \(other) and \(id)")
                    }
                    if let other = names[id], other != content {
                        throw TokenizerError(file: configPath, reason: "special id \(id) is given twice, as \(other) and \(content)")
                    }
                    specials[content] = id
                    names[id] = content
                }
            }
            bos = Self.tokenName(json["bos_token"])
            eos = Self.tokenName(json["eos_token"])
        }
        if specials.isEmpty {
            for i in 0..<256 { specials[KimiSpecials.names[i] ?? "<|reserved_token_\(n + i)|>"] = n + i }
        }
        self.init(bpe: bpe, specials: specials, bos: bos, eos: eos)
    }

    init(bpe: BytePairEncoder, specials: [String: Int], bos: String?, eos: String?) {
        self.bpe = bpe
        specialIDs = specials
        specialNames = Dictionary(uniqueKeysWithValues: specials.map { ($1, $0) })
        bosID = specials[bos ?? "[BOS]"]
        eosID = specials[eos ?? "[EOS]"]
        specialsByLength = specials.map { (Array($0.key.unicodeScalars), $0.value) }.sorted { $0.text.count > $1.text.count }
    }

    static func tokenName(_ v: Any?) -> String? {
        if let s = v as? String { return s }
        return (v as? [String: Any])?["content"] as? String
    }

    /// Token ids of `text`. With `allowSpecial`, special-token text (`<|im_end|>`) becomes its id; otherwise it
    /// is encoded as ordinary text.
    public func encode(_ text: String, allowSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        for chunk in Self.chunks(text) {
            if allowSpecial {
                var rest = Substring(chunk)
                while let (range, id) = firstSpecial(in: rest) {
                    encodeOrdinary(rest[rest.startIndex..<range.lowerBound], into: &out)
                    out.append(id)
                    rest = rest[range.upperBound...]
                }
                encodeOrdinary(rest, into: &out)
            } else {
                encodeOrdinary(Substring(chunk), into: &out)
            }
        }
        return out
    }

    /// Ids of a rendered prompt: each template special by its id, and every text piece with specials spelled in
    /// it encoded as plain text (so no field a client wrote can forge a turn, whatever its Unicode). A special the
    /// vocabulary lacks (another model's template) is encoded as the text it is.
    public func encode(_ pieces: [PromptPiece]) -> [Int] {
        var out: [Int] = []
        var pending = ""
        func flush() {
            if !pending.isEmpty { out += encode(pending, allowSpecial: false) }
            pending = ""
        }
        for piece in pieces {
            switch piece {
            case .special(let s):
                if let id = specialIDs[s] {
                    flush()
                    out.append(id)
                } else {
                    pending += s
                }
            case .text(let s): pending += s
            }
        }
        flush()
        return out
    }

    /// Bytes of the longest token: a text of more than `limit × maxTokenBytes` bytes has more than `limit` tokens,
    /// which lets a server refuse an oversized prompt before tokenizing it.
    public var maxTokenBytes: Int { max(1, bpe.tokens.lazy.map(\.count).max() ?? 1) }

    func encodeOrdinary(_ text: Substring, into out: inout [Int]) {
        guard !text.isEmpty else { return }
        for piece in KimiPreTokenizer.split(String(text)) { bpe.encode(Array(piece.utf8), into: &out) }
    }

    /// The leftmost special token in `text` (the longest when several start there).
    func firstSpecial(in text: Substring) -> (Range<Substring.Index>, Int)? {
        guard text.contains("<") || text.contains("[") else { return nil }
        let scalars = text.unicodeScalars
        var i = scalars.startIndex
        while i != scalars.endIndex {
            let c = scalars[i]
            if c == "<" || c == "[" {
                for (special, id) in specialsByLength where special.first == c {
                    var j = i
                    var k = 0
                    while k < special.count && j != scalars.endIndex && scalars[j] == special[k] { j = scalars.index(after: j); k += 1 }
                    if k == special.count { return (i..<j, id) }
                }
            }
            i = scalars.index(after: i)
        }
        return nil
    }

    /// Kimi's input splitting: pieces of ≤ 400,000 characters, and no run of whitespace or non-whitespace
    /// longer than 25,000 characters (such runs are cut, so the pattern never sees them whole).
    static func chunks(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        guard scalars.count > maxRun else { return [text] }
        var out: [String] = []
        var i = 0
        while i < scalars.count {
            let chunkEnd = min(scalars.count, i + maxChunk)
            var start = i, runStart = i
            var runIsSpace = scalars[i].properties.isWhitespace
            var j = i
            while j < chunkEnd {
                let isSpace = scalars[j].properties.isWhitespace
                if isSpace != runIsSpace {
                    runIsSpace = isSpace
                    runStart = j
                } else if j - runStart >= maxRun {
                    out.append(String(String.UnicodeScalarView(scalars[start..<j])))
                    start = j
                    runStart = j
                }
                j += 1
            }
            out.append(String(String.UnicodeScalarView(scalars[start..<chunkEnd])))
            i = chunkEnd
        }
        return out
    }

    /// The bytes of `ids` (special tokens as their text).
    public func decodeBytes(_ ids: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids { out += bytes(of: id) }
        return out
    }

    public func bytes(of id: Int) -> [UInt8] {
        if id >= 0 && id < bpe.tokens.count { return Array(bpe.tokens[id]) }
        if let s = specialNames[id] { return Array(s.utf8) }
        return []
    }

    /// Text of `ids`; invalid UTF-8 (a character cut in half) becomes U+FFFD, as Python's errors="replace".
    public func decode(_ ids: [Int]) -> String { String(decoding: decodeBytes(ids), as: UTF8.self) }

    public func isSpecial(_ id: Int) -> Bool { specialNames[id] != nil }
}

/// Kimi K2's named special tokens by offset from the first special id (163584 in Kimi K2).
public enum KimiSpecials {
    public static let names: [Int: String] = [
        0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
        6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
        11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
        14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>",
    ]
}

/// Turns a stream of ids into text without ever cutting a UTF-8 character: bytes of an incomplete character
/// are held until the token that completes it arrives.
public struct StreamingDecoder {
    let tokenizer: Tokenizer
    var pending: [UInt8] = []

    public init(tokenizer: Tokenizer) { self.tokenizer = tokenizer }

    /// The text that `id` completes (possibly empty).
    public mutating func append(_ id: Int) -> String {
        pending += tokenizer.bytes(of: id)
        let complete = Self.completePrefixLength(pending)
        guard complete > 0 else { return "" }
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Whatever is still held (at the end of a stream), with U+FFFD for a cut character.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return pending.isEmpty ? "" : String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix of `b` that does not end inside a multi-byte character.
    static func completePrefixLength(_ b: [UInt8]) -> Int {
        var i = b.count - 1
        var back = 0
        while i >= 0 && back < 4 {
            let byte = b[i]
            if byte & 0xC0 != 0x80 {  // a lead byte or ASCII
                let need = byte < 0x80 ? 1 : byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1
                return back + 1 >= need ? b.count : i
            }
            i -= 1
            back += 1
        }
        return b.count  // only continuation bytes: not valid UTF-8 anyway, let it through as replacement
    }
}
