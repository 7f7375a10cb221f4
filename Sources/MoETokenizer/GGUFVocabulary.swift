import Foundation

/// Kimi K2's tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, as llama.cpp's `convert_hf_to_gguf.py`
/// writes it for `tokenizer.ggml.pre = kimi-k2`: `model` gpt2, `tokens` (id → text), `token_type`, `merges`,
/// `bos_token_id`, `eos_token_id`.
///
/// Token texts are GPT-2's byte-level spelling: every byte is one printable character (`bytes_to_unicode`: bytes
/// 33…126, 161…172 and 174…255 stand for themselves, the other 68 are U+0100 onward, in order). The BPE tokens
/// are ids 0..<n in rank order (the converter writes `vocab[text] = rank`), so their bytes are tiktoken's ranks and
/// merging by rank gives tiktoken's ids; the merges list is implied by the ranks and not needed. Control tokens
/// (type 3) follow them and are the specials; unused ids (type 5, `[PAD…]`) are left out.
extension Tokenizer {
    /// GGUF token types (llama.cpp's `llama_token_type`).
    public enum GGUFTokenType: Int { case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6 }

    public convenience init(ggufTokens tokens: [String], types: [Int], model: String?, pre: String?, bosID: Int?, eosID: Int?,
                            source: String) throws(TokenizerError) {
        guard model == "gpt2" else {
            throw TokenizerError(file: source, reason: "tokenizer.ggml.model is \(model.map { "'\($0)'" } ?? "missing"); Kimi K2's is gpt2")
        }
        guard pre == "kimi-k2" else {
            throw TokenizerError(file: source, reason: "tokenizer.ggml.pre is \(pre.map { "'\($0)'" } ?? "missing"); this build splits text as kimi-k2")
        }
        guard types.count == tokens.count else {
            throw TokenizerError(file: source, reason: "tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
        }
        let decoder = Self.gpt2ByteDecoder
        var bpeTokens: [Data] = []
        var specials: [String: Int] = [:]
        for (id, (text, type)) in zip(tokens, types).enumerated() {
            switch GGUFTokenType(rawValue: type) {
            case .normal, .byte:
                guard specials.isEmpty else {
                    throw TokenizerError(file: source, reason: "token \(id) is ordinary text after the control tokens began; ranks must come first")
                }
                var bytes = Data()
                for scalar in text.unicodeScalars {
                    guard let b = decoder[scalar] else {
                        throw TokenizerError(file: source, reason: "token \(id) has character U+\(String(scalar.value, radix: 16, uppercase: true)), outside GPT-2's byte alphabet")
                    }
                    bytes.append(b)
                }
                bpeTokens.append(bytes)
            case .control, .userDefined:
                guard !text.isEmpty else { throw TokenizerError(file: source, reason: "special token \(id) has empty text") }
                if let other = specials.updateValue(id, forKey: text) {
                    throw TokenizerError(file: source, reason: "special token \(text) has two ids, \(other) and \(id)")
                }
            case .unused, .unknown:
                continue
            case nil:
                throw TokenizerError(file: source, reason: "token \(id) has type \(type) (1…6 are defined)")
            }
        }
        let bpe = try BytePairEncoder(tokens: bpeTokens, source: source)
        let names = Dictionary(uniqueKeysWithValues: specials.map { ($1, $0) })
        func name(_ id: Int?, _ key: String) throws(TokenizerError) -> String? {
            guard let id else { return nil }
            guard let n = names[id] else { throw TokenizerError(file: source, reason: "\(key) \(id) is not a control token") }
            return n
        }
        self.init(bpe: bpe, specials: specials, bos: try name(bosID, "tokenizer.ggml.bos_token_id"),
                  eos: try name(eosID, "tokenizer.ggml.eos_token_id"))
    }

    /// This vocabulary as the files `init(directory:)` reads: `tiktoken.model` (base64 bytes and rank per line) and
    /// `tokenizer_config.json` (the specials by id, BOS and EOS), so a store converted from a GGUF carries them.
    public func files() -> [(name: String, data: Data)] {
        var lines = ""
        for (rank, bytes) in bpe.tokens.enumerated() { lines += bytes.base64EncodedString() + " \(rank)\n" }
        var added: [String: Any] = [:]
        for (text, id) in specialIDs { added[String(id)] = ["content": text, "special": true] }
        var config: [String: Any] = ["added_tokens_decoder": added]
        if let b = bosID, let name = specialNames[b] { config["bos_token"] = name }
        if let e = eosID, let name = specialNames[e] { config["eos_token"] = name }
        let json = (try? JSONSerialization.data(withJSONObject: config, options: [.sortedKeys, .prettyPrinted])) ?? Data()
        return [("tiktoken.model", Data(lines.utf8)), ("tokenizer_config.json", json)]
    }

    /// GPT-2's `bytes_to_unicode`, inverted: character → byte.
    public static let gpt2ByteDecoder: [Unicode.Scalar: UInt8] = {
        var map: [Unicode.Scalar: UInt8] = [:]
        var extra: UInt32 = 256
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            let scalar = Unicode.Scalar(printable ? UInt32(b) : { defer { extra += 1 }; return extra }())!
            map[scalar] = UInt8(b)
        }
        return map
    }()
}
