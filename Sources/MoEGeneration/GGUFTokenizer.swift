import MoECheckpoint
import MoETokenizer

extension Tokenizer {
    /// The tokenizer a GGUF file carries in its `tokenizer.ggml.*` metadata (see `init(ggufTokens:…)`).
    public convenience init(gguf: GGUFCheckpoint) throws {
        guard let v = try gguf.vocabulary() else {
            throw TokenizerError(file: gguf.path, reason: "no tokenizer.ggml.tokens: the file carries no vocabulary")
        }
        try self.init(ggufTokens: v.tokens, types: v.types, model: v.model, pre: v.pre, bosID: v.bosID, eosID: v.eosID,
                      source: gguf.path)
    }

    /// The tokenizer of a model path: a GGUF file's own, or `tiktoken.model` (+ `tokenizer_config.json`) in a
    /// checkpoint directory or store.
    public static func load(model path: String) throws -> Tokenizer {
        if path.hasSuffix(".gguf") { return try Tokenizer(gguf: try GGUFCheckpoint(path: path)) }
        return try Tokenizer(directory: path)
    }
}
