import Foundation
import MoECheckpoint
import MoETestSupport
import Testing

/// The commands on a GGUF file (Tests/Fixtures/gguf, written by llama.cpp's tools): `inspect` shows its types,
/// `generate` streams its experts from the file through the cache (direct mode) and gives transformers' greedy
/// tokens, `tokenize` uses the file's own vocabulary.
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
        for cache in ["100%", "200K"] {
            let (s2, out, e2) = try moestream(["generate", file, "--tokens", prompt, "--max-tokens", "\(generated.count)", "--cache", cache])
            #expect(s2 == 0, "\(e2)")
            #expect(out.trimmingCharacters(in: .whitespacesAndNewlines) == generated.map(String.init).joined(separator: ","), "\(out)")
            #expect(e2.contains("no checksums") && e2.contains("expert cache:"), "\(e2)")
        }
        let (s3, ids, _) = try moestream(["tokenize", file, "Hello <|im_end|>"])
        let (_, same, _) = try moestream(["tokenize", Fixtures.root + "/tokenizer", "Hello <|im_end|>"])
        #expect(s3 == 0 && ids == same && ids.hasSuffix(",1026\n"))
        let (s4, _, e4) = try moestream(["generate", file, "--tokens", "1,2", "--cache", "10K"])
        #expect(s4 != 0 && e4.contains("cannot hold one expert"), "\(e4)")
    }

    /// `verify FILE.gguf`: refused without a sums file; `--write-sums` writes one; then `verify` checks the file,
    /// `inspect` and `generate` say they use it, and a damaged byte is found by layer and expert.
    @Test func verifyWritesAndChecksSums() throws {
        let copy = Fixtures.scratchDirectory("gguf-verify") + "/model.gguf"
        try FileManager.default.copyItem(atPath: file, toPath: copy)
        let (s0, _, e0) = try moestream(["verify", copy])
        #expect(s0 != 0 && e0.contains("no sums file") && e0.contains("--write-sums"), "\(e0)")
        let (s1, out1, e1) = try moestream(["verify", copy, "--write-sums"])
        #expect(s1 == 0 && out1.contains("wrote \(copy).xxh64.json") && out1.contains("8 experts"), "\(out1)\(e1)")
        let (s2, out2, _) = try moestream(["verify", copy])
        #expect(s2 == 0 && out2.contains("OK"), "\(out2)")
        let (_, inspect, _) = try moestream(["inspect", copy])
        #expect(inspect.contains("checksums in \(copy).xxh64.json"), "\(inspect)")
        let (s3, _, e3) = try moestream(["generate", copy, "--tokens", "1,2,3", "--max-tokens", "2", "--cache", "100%"])
        #expect(s3 == 0 && e3.contains("every expert read against"), "\(e3)")
        let h = try #require(FileHandle(forUpdatingAtPath: copy))
        let (_, info) = try #require(try GGUFCheckpoint(path: copy).info("blk.1.ffn_down_exps.weight"))
        try h.seek(toOffset: UInt64(info.range.lowerBound + 7 * info.range.count / 8 + 100))
        h.write(Data([0xEE, 0xEE]))
        try h.close()
        let (s4, out4, _) = try moestream(["verify", copy])
        #expect(s4 != 0 && out4.contains("DAMAGED  layer 1 expert 7") && out4.contains("1 problem(s)"), "\(out4)")
        let (s5, _, e5) = try moestream(["verify", Fixtures.scratchDirectory("gguf-verify-store"), "--write-sums"])
        #expect(s5 != 0 && e5.contains("--write-sums is for a GGUF"), "\(e5)")
    }

    /// `convert` passes the file through; the store streams its experts through a two-expert cache and answers as
    /// the file does; `plan` forecasts the store's sizes from the file alone.
    @Test func convertPlanAndRunTheStore() throws {
        let store = Fixtures.scratchDirectory("gguf-cli") + "/store"
        let (s1, _, e1) = try moestream(["convert", file, "-o", store, "--quiet"])
        #expect(s1 == 0, "\(e1)")
        let (s2, verify, _) = try moestream(["verify", store])
        #expect(s2 == 0 && verify.contains("OK"))
        let prompt = "1024,709,470,919,40"
        let (_, fromFile, _) = try moestream(["generate", file, "--tokens", prompt, "--max-tokens", "6"])
        let (s3, fromStore, e3) = try moestream(["generate", store, "--tokens", prompt, "--max-tokens", "6", "--cache", "300K"])
        #expect(s3 == 0 && fromStore == fromFile && !fromFile.isEmpty, "\(e3)")
        #expect(e3.contains("expert cache:") && e3.contains("/4 slots"), "\(e3)")  // Q2_K: four 64 KB extents in 300 KB
        let (_, planFile, _) = try moestream(["plan", file, "--ram", "8G", "--disk-bw", "3G"])
        let (_, planStore, _) = try moestream(["plan", store, "--ram", "8G", "--disk-bw", "3G"])
        // The store's extent, as the store's plan prints it, is what the file's plan forecasts for `convert`.
        let line = try #require(planStore.split(separator: "\n").first { $0.hasPrefix("routed experts") })
        let extent = try #require(line.split(separator: "×").last?.split(separator: "=").first).trimmingCharacters(in: .whitespaces)
        #expect(planFile.contains("a store made by `convert`: \(extent) per expert"), "\(planFile)\n\(planStore)")
        #expect(planFile.contains("in the GGUF's types") && planStore.contains("in the GGUF's types"))
    }
}
