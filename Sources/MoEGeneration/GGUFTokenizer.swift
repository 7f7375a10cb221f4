import MoECheckpoint
import MoETokenizer

extension Tokenizer {
    /// The tokenizer a GGUF file carries in its `tokenizer.ggml.*` metadata (see `init(ggufTokens:…)`).
    public convenience init(gguf: GGUFCheckpoint) throws(TokenizerError) {
        let m = gguf.metadata
        guard let tokens = m["tokenizer.ggml.tokens"]?.array else {
            throw TokenizerError(file: gguf.path, reason: "no tokenizer.ggml.tokens: the file carries no vocabulary")
        }
        var texts: [String] = []
        texts.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() {
            guard let s = t.string else { throw TokenizerError(file: gguf.path, reason: "tokenizer.ggml.tokens[\(i)] is not a string") }
            texts.append(s)
        }
        // A file without token types treats every token as ordinary text.
        let types = m["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 0 } ?? Array(repeating: 1, count: texts.count)
        try self.init(ggufTokens: texts, types: types, model: m["tokenizer.ggml.model"]?.string,
                      pre: m["tokenizer.ggml.pre"]?.string, bosID: m["tokenizer.ggml.bos_token_id"]?.int,
                      eosID: m["tokenizer.ggml.eos_token_id"]?.int, source: gguf.path)
    }

    /// The tokenizer of a model path: a GGUF file's own, or `tiktoken.model` (+ `tokenizer_config.json`) in a
    /// checkpoint directory or store.
    public static func load(model path: String) throws -> Tokenizer {
        if path.hasSuffix(".gguf") { return try Tokenizer(gguf: try GGUFCheckpoint(path: path)) }
        return try Tokenizer(directory: path)
    }
}
