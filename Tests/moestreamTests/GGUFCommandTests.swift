import Foundation
import MoETestSupport
import Testing

/// The commands on a GGUF file (Tests/Fixtures/gguf, written by llama.cpp's tools): `inspect` shows its types,
/// `generate` gives transformers' greedy tokens, `tokenize` uses the file's own vocabulary, and the expert cache
/// is refused by name until GGUF experts stream.
@Suite struct GGUFCommandTests {
    let file = Fixtures.root + "/gguf/kimi_k2_q2_k.gguf"

    @Test func inspectGenerateTokenize() throws {
        let (s1, inspect, e1) = try moestream(["inspect", file])
        #expect(s1 == 0, "\(e1)")
        for needle in ["GGUF v3", "Q2_K", "Q3_K", "Q4_0", "Q6_K", "routed experts", "8 experts", "kimi-k2"] {
            #expect(inspect.contains(needle), "inspect lacks \(needle):\n\(inspect)")
        }
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.root + "/gguf/kimi_k2_q2_k.reference.json"))) as! [String: Any]
        let prompt = (ref["prompt"] as! [Int]).map(String.init).joined(separator: ",")
        let generated = ref["generated"] as! [Int]
        let (s2, out, e2) = try moestream(["generate", file, "--tokens", prompt, "--max-tokens", "\(generated.count)"])
        #expect(s2 == 0, "\(e2)")
        #expect(out.trimmingCharacters(in: .whitespacesAndNewlines) == generated.map(String.init).joined(separator: ","), "\(out)")
        let (s3, ids, _) = try moestream(["tokenize", file, "Hello <|im_end|>"])
        let (_, same, _) = try moestream(["tokenize", Fixtures.root + "/tokenizer", "Hello <|im_end|>"])
        #expect(s3 == 0 && ids == same && ids.hasSuffix(",1026\n"))
        let (s4, _, e4) = try moestream(["generate", file, "--tokens", "1,2", "--cache", "1M"])
        #expect(s4 != 0 && e4.contains("GGUF") && e4.contains("convert"), "\(e4)")
    }
}
