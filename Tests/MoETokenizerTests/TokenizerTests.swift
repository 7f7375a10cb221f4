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

/// Tokenizer files from outside: sizes and ids are checked before they size anything.
@Suite struct HostileTokenizerFileTests {
    func directory(tiktoken: String? = nil, config: String? = nil) throws -> String {
        let dir = Fixtures.scratchDirectory("tok")
        let src = Fixtures.root + "/tokenizer/"
        try (tiktoken.map { Data($0.utf8) } ?? Data(contentsOf: URL(fileURLWithPath: src + "tiktoken.model")))
            .write(to: URL(fileURLWithPath: dir + "/tiktoken.model"))
        try (config.map { Data($0.utf8) } ?? Data(contentsOf: URL(fileURLWithPath: src + "tokenizer_config.json")))
            .write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
        return dir
    }

    /// A rank far past the number of tokens (the old loader grew its table to the rank and died).
    @Test func hugeRankIsRefused() throws {
        let ranks = try String(contentsOfFile: Fixtures.root + "/tokenizer/tiktoken.model", encoding: .utf8)
        let dir = try directory(tiktoken: ranks + "QUJDREVGR0g= 4611686018427387903\n")
        #expect { try Tokenizer(directory: dir) } throws: { ($0 as! TokenizerError).reason.contains("4611686018427387903") }
    }

    /// One special id under two spellings of its key (the old loader trapped building the id → text table).
    @Test func specialIdGivenTwiceIsRefused() throws {
        let config = #"{"added_tokens_decoder": {"1024": {"content": "[BOS]"}, "01024": {"content": "<|forged|>"}}}"#
        let dir = try directory(config: config)
        #expect { try Tokenizer(directory: dir) } throws: { ($0 as! TokenizerError).reason.contains("1024") }
    }

    /// The merge loop runs in O(n log n): a piece of 200,000 identical bytes and one of 200,000 distinct-ish
    /// bytes encode to the ids the quadratic reference loop gives on a prefix, and decode back to the input.
    @Test func longPiecesEncodeLikeTheReferenceLoop() throws {
        let t = try Tokenizer(directory: Fixtures.root + "/tokenizer")
        for piece in [[UInt8](repeating: UInt8(ascii: "a"), count: 2000), (0..<2000).map { UInt8(truncatingIfNeeded: $0 * 7 % 97 + 32) }] {
            var fast: [Int] = []
            t.bpe.encode(piece, into: &fast)
            #expect(fast == referenceMerge(t.bpe, piece))
        }
        let long = [UInt8](repeating: UInt8(ascii: "a"), count: 200_000)
        var ids: [Int] = []
        t.bpe.encode(long, into: &ids)
        #expect(t.decodeBytes(ids) == long)
    }

    /// tiktoken's own loop: scan every pair, merge the lowest rank (leftmost on ties), repeat.
    func referenceMerge(_ bpe: BytePairEncoder, _ piece: [UInt8]) -> [Int] {
        var parts = piece.map { [$0] }
        while parts.count > 1 {
            var best: (rank: Int, at: Int)? = nil
            for i in 0..<(parts.count - 1) {
                if let r = bpe.ranks[Data(parts[i] + parts[i + 1])], best == nil || r < best!.rank { best = (r, i) }
            }
            guard let b = best else { break }
            parts[b.at] += parts[b.at + 1]
            parts.remove(at: b.at + 1)
        }
        return parts.map { bpe.ranks[Data($0)]! }
    }
}
