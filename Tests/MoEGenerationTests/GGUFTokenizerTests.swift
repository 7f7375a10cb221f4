import Foundation
import Testing
import MoECheckpoint
import MoETestSupport
import MoETokenizer
@testable import MoEGeneration

/// The tokenizer read from a GGUF's metadata (written by llama.cpp's convert_hf_to_gguf.py from the tokenizer
/// fixture's tiktoken.model) gives tiktoken's ids on the tokenizer corpus, and the same ids and specials as the
/// tiktoken files themselves.
@Suite struct GGUFTokenizerTests {
    struct Corpus: Decodable {
        struct Segment: Decodable { let text: String; let ids: [Int]; let ordinary: [Int] }
        struct Whole: Decodable { let text: String; let ids: [Int] }
        let segments: [Segment]
        let whole: Whole
    }

    @Test func idsEqualTiktokens() throws {
        let fromGGUF = try Tokenizer.load(model: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf")
        let fromFiles = try Tokenizer(directory: Fixtures.root + "/tokenizer")
        let corpus = try JSONDecoder().decode(Corpus.self, from: Data(contentsOf: URL(fileURLWithPath: Fixtures.root + "/tokenizer/corpus.json")))
        #expect(corpus.segments.count > 10)
        for s in corpus.segments {
            #expect(fromGGUF.encode(s.text, allowSpecial: true) == s.ids, "\(s.text.prefix(40))")
            #expect(fromGGUF.encode(s.text, allowSpecial: false) == s.ordinary, "\(s.text.prefix(40))")
            #expect(fromGGUF.decode(s.ids) == fromFiles.decode(s.ids))
        }
        #expect(fromGGUF.encode(corpus.whole.text) == corpus.whole.ids)
        #expect(fromGGUF.specialIDs == fromFiles.specialIDs)
        #expect(fromGGUF.bpe.tokens == fromFiles.bpe.tokens)
        #expect(fromGGUF.bosID == 1024 && fromGGUF.eosID == 1025)
        #expect(fromGGUF.specialIDs["<|im_end|>"] == 1026)
    }

    @Test func badVocabulariesAreRefusedByName() {
        func refusal(_ tokens: [String], _ types: [Int], pre: String? = "kimi-k2", model: String? = "gpt2") -> String {
            do { _ = try Tokenizer(ggufTokens: tokens, types: types, model: model, pre: pre, bosID: nil, eosID: nil, source: "f.gguf"); return "accepted" }
            catch { return "\(error)" }
        }
        // All 256 bytes in GPT-2's alphabet, then a merge and a special.
        let bytes = (0..<256).map { b in String(Tokenizer.gpt2ByteDecoder.first { $0.value == UInt8(b) }!.key) }
        let types = [Int](repeating: 1, count: 256)
        #expect(refusal(bytes + ["ĠĠ", "[EOS]"], types + [1, 3]) == "accepted")
        #expect(refusal(bytes, types, pre: "llama-bpe").contains("tokenizer.ggml.pre"))
        #expect(refusal(bytes, types, model: "llama").contains("tokenizer.ggml.model"))
        #expect(refusal(bytes + ["日"], types + [1]).contains("token 256"))
        #expect(refusal(bytes + ["[EOS]", "ab"], types + [3, 1]).contains("token 257"))
        #expect(refusal(bytes + ["a"], types + [1]).contains("same bytes"))
        #expect(refusal(Array(bytes.dropFirst()), Array(types.dropFirst())).contains("byte 0"))
        #expect(refusal(bytes, types + [1]).contains("token_type"))
        #expect(refusal(bytes + ["x"], types + [9]).contains("type 9"))
    }
}
