import Foundation
import MoETestSupport
import Testing
@testable import MoETokenizer

struct Corpus: Decodable {
    struct Segment: Decodable {
        let text: String
        let ids: [Int]
        let ordinary: [Int]
        let pieces: [String]
    }
    struct Whole: Decodable {
        let text: String
        let ids: [Int]
    }
    let ranks: Int
    let segments: [Segment]
    let whole: Whole

    static func load() throws -> Corpus {
        try JSONDecoder().decode(Corpus.self, from: Data(contentsOf: URL(fileURLWithPath: Fixtures.root + "/tokenizer/corpus.json")))
    }
}

/// Against the `tiktoken` library with the same ranks and Kimi's pattern (Tools/make_tokenizer_fixture.py).
@Suite struct TokenizerTests {
    let tokenizer = try! Tokenizer(directory: Fixtures.root + "/tokenizer")
    let corpus = try! Corpus.load()

    @Test func preTokenizerSplitsAsTheKimiPattern() {
        for s in corpus.segments {
            #expect(KimiPreTokenizer.split(s.text).map(String.init) == s.pieces, "\(s.text.debugDescription)")
        }
    }

    @Test func idsEqualTiktoken() {
        for s in corpus.segments {
            #expect(tokenizer.encode(s.text) == s.ids, "\(s.text.debugDescription)")
            #expect(tokenizer.encode(s.text, allowSpecial: false) == s.ordinary, "ordinary: \(s.text.debugDescription)")
        }
        #expect(tokenizer.encode(corpus.whole.text) == corpus.whole.ids)
    }

    @Test func decodeInvertsEncode() {
        for s in corpus.segments { #expect(tokenizer.decode(tokenizer.encode(s.text)) == s.text) }
        #expect(tokenizer.decode(tokenizer.encode(corpus.whole.text)) == corpus.whole.text)
    }

    @Test func streamingDecodeNeverCutsACharacter() {
        // Byte-level tokens split emoji and CJK characters; streamed pieces must each be whole characters.
        let ids = tokenizer.encode(corpus.whole.text)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var text = ""
        var pieces = 0
        for id in ids {
            let piece = decoder.append(id)
            #expect(!piece.contains("\u{FFFD}"), "a character was cut at id \(id)")
            text += piece
            pieces += piece.isEmpty ? 0 : 1
        }
        text += decoder.flush()
        #expect(text == corpus.whole.text)
        #expect(pieces < ids.count, "no token was held back: the corpus should split some characters")
    }

    @Test func specialTokensFollowKimi() {
        let n = corpus.ranks
        #expect(tokenizer.specialIDs["[BOS]"] == n && tokenizer.specialIDs["<|im_end|>"] == n + 2)
        #expect(tokenizer.specialIDs["<|im_middle|>"] == n + 17 && tokenizer.specialIDs["<|reserved_token_\(n + 5)|>"] == n + 5)
        #expect(tokenizer.bosID == n && tokenizer.eosID == n + 1)
        #expect(tokenizer.vocabularySize == n + 256)
        #expect(tokenizer.decode([n + 3, 72]) == "<|im_user|>H")
    }

    @Test func longRunsAreCutAsKimiDoes() {
        let text = "a" + String(repeating: " ", count: 30_000) + "b"
        let chunks = Tokenizer.chunks(text)
        #expect(chunks.count == 2 && chunks.joined() == text)
        #expect(chunks.allSatisfy { $0.unicodeScalars.count <= Tokenizer.maxRun + 1 })
    }

    @Test func brokenVocabularyNamesFileAndLine() throws {
        let dir = Fixtures.scratchDirectory("tok")
        var lines = try String(contentsOfFile: Fixtures.root + "/tokenizer/tiktoken.model", encoding: .utf8).split(separator: "\n")
        lines[7] = "not-base64!! seven"
        try lines.joined(separator: "\n").write(toFile: dir + "/tiktoken.model", atomically: true, encoding: .utf8)
        #expect { try Tokenizer(directory: dir) } throws: { e in
            let t = e as! TokenizerError
            return t.file == dir + "/tiktoken.model" && t.reason.contains("line 8")
        }
    }
}
