import Foundation
import MoEExpertStore
import MoEModel
import MoETensor
import MoETestSupport
import Testing

/// The committed demo model (Demo/kimi-demo/int4) against torch: perplexity within 1% and the same greedy
/// continuations, through a store and an expert cache holding a quarter of the experts.
@Suite(.serialized) struct DemoModelTests {
    static let release = URL(fileURLWithPath: Fixtures.root).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Demo/kimi-demo/int4").path

    struct Reference: Decodable {
        struct Score: Decodable { let perplexity: Double; let tokens: Int }
        struct Greedy: Decodable { let prompt: [Int]; let tokens: [Int]; let margins: [Double] }
        let by_tokens: [String: Score]
        let greedy: [String: Greedy]
    }

    static let store: String = {
        let out = Fixtures.scratchDirectory("demo") + "/store"
        let (status, _, err) = try! moestream(["convert", release, "-o", out, "--quiet"])
        precondition(status == 0, err)
        return out
    }()

    func reference() throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: Self.release + "/perplexity.json")))
    }

    @Test func perplexityAgreesWithTorchWithinOnePercent() throws {
        let ref = try reference().by_tokens["512"]!
        let (status, out, err) = try moestream(["perplexity", Self.store, "--file", Self.release + "/heldout.txt", "--max-tokens", "512",
                                                "--cache", "25%", "--no-stats", "--exact"])
        #expect(status == 0, "\(err)")
        let ours = Double(out.split(separator: " ")[1])!
        #expect(out.contains("over \(ref.tokens) tokens"), "\(out)")
        #expect(abs(ours / ref.perplexity - 1) < 0.01, "moestream \(ours) vs torch \(ref.perplexity)")
    }

    /// A prompt of four times the demo model's original YaRN context (16,384 tokens for 4,096), in exact arithmetic,
    /// against transformers' logits at positions before, at and far beyond that context
    /// (Tools/demo_long_context.py). The prompt goes in windows of 2,048 tokens (`prefillWindow`, with chunks of 512),
    /// so the workspace is what one window needs: a model that ran a single window holds as much.
    @Test func fourTimesTheOriginalContextMatchesTransformers() throws {
        struct Long: Decodable { let original_context: Int; let prompt: [Int]; let positions: [Int]; let logits: [[Float]] }
        let url = URL(fileURLWithPath: Fixtures.root + "/long-context/demo_4x.json")
        let ref = try JSONDecoder().decode(Long.self, from: Data(contentsOf: url))
        #expect(ref.prompt.count == 4 * ref.original_context && ref.positions.last == ref.prompt.count - 1)
        let store = try ExpertStore(path: Self.store)
        let model = try store.loadModel()
        #expect(model.config.rope.originalMaxPositionEmbeddings == ref.original_context)
        model.prefillWindow = ref.original_context / 2
        let cache = model.makeCache()
        var done = 0
        for (p, expected) in zip(ref.positions, ref.logits) {
            // Up to and including p, continuing the cache: the logits of p.
            let r = try model.forward(Array(ref.prompt[done...p]), cache: cache, logits: .last, keepRouting: false)
            done = p + 1
            #expect(maxAbsDiff(r.row(0), expected) <= 1e-4, "position \(p) of \(ref.prompt.count)")
        }
        let short = try store.loadModel()
        short.prefillWindow = model.prefillWindow
        for _ in 0..<2 {  // the workspace takes its size at a pass's start from the largest pass before
            _ = try short.forward(Array(ref.prompt[..<model.prefillWindow]), cache: short.makeCache(), keepRouting: false)
        }
        #expect(model.workspaceBytes == short.workspaceBytes, "scratch for 16,384 tokens \(model.workspaceBytes) B, for one window \(short.workspaceBytes) B")
    }

    /// `perplexity --compare-exact` scores the held-out text with the default arithmetic (q8 activations) and with
    /// the exact one in one run: two different arithmetics (KL above zero, some logit moved), and close (the
    /// gate's numbers). `--exact` cannot be combined with another choice.
    @Test func compareExactPrintsTheGate() throws {
        let (status, out, err) = try moestream(["perplexity", Self.store, "--file", Self.release + "/heldout.txt", "--max-tokens", "128",
                                                "--window", "64", "--cache", "25%", "--no-stats", "--compare-exact"])
        #expect(status == 0, "\(err)")
        func number(after word: String) -> Double? {
            guard let r = out.range(of: word) else { return nil }
            return Double(out[r.upperBound...].prefix { "0123456789.+-e".contains($0) })
        }
        let kl = number(after: "mean "), change = number(after: "perplexity change "), diff = number(after: "logit difference ")
        #expect(out.contains("over 128 tokens") && out.contains("experts q8-gate-up-q16-down, resident "), "\(out)")
        #expect((kl ?? 0) > 0 && (kl ?? 1) < 0.01 && (diff ?? 0) > 0 && abs(change ?? 1) < 1, "\(out)")
        let (refused, _, why) = try moestream(["generate", Self.store, "--tokens", "1,2", "--exact", "--expert-activations", "q8"])
        #expect(refused != 0 && why.contains("--exact"), "\(why)")
        let (refusedToo, _, whyToo) = try moestream(["generate", Self.store, "--tokens", "1,2", "--exact", "--resident-activations", "bf16x2"])
        #expect(refusedToo != 0 && whyToo.contains("--exact"), "\(whyToo)")
        // AMX tiles need the avx512 kernels: with avx2 (or on a CPU without AMX) asking for them is refused by name.
        let kernels = KernelISA.avx2.isSupported ? "avx2" : "generic"
        let (noTiles, _, whyNot) = try moestream(["generate", Self.store, "--tokens", "1,2", "--kernels", kernels, "--resident-activations", "bf16x2"])
        #expect(noTiles != 0 && whyNot.contains("AMX") && whyNot.contains("AVX512-BF16") && whyNot.contains(kernels), "\(whyNot)")
        for chunk in ["8", "9223372036854775807"] {
            let (status, _, why) = try moestream(["generate", Self.store, "--tokens", "1,2", "--prefill-chunk", chunk])
            #expect(status != 0 && why.contains("--prefill-chunk"), "\(why)")
        }
    }

    /// `--resident-weights int8` on the demo store (convert's default writes the companion): `perplexity
    /// --compare-exact` scores the int8 matrices against exact arithmetic over the bf16 ones (its KL is larger than
    /// the default's: the weights' rounding), the statistics and `plan` say which form, and `--exact` refuses it.
    @Test func residentWeightsInt8IsComparedWithTheBF16Reference() throws {
        let args = ["perplexity", Self.store, "--file", Self.release + "/heldout.txt", "--max-tokens", "128", "--window", "64",
                    "--cache", "25%", "--compare-exact"]
        let (s1, bf16, e1) = try moestream(args)
        let (s2, int8, e2) = try moestream(args + ["--resident-weights", "int8"])
        #expect(s1 == 0 && s2 == 0, "\(e1)\n\(e2)")
        func kl(_ out: String) -> Double? {
            guard let r = out.range(of: "mean ") else { return nil }
            return Double(out[r.upperBound...].prefix { "0123456789.+-e".contains($0) })
        }
        #expect(int8.contains("exact: fp32 activations and KV cache, bf16 resident weights") && !bf16.contains("bf16 resident weights"), "\(int8)")
        #expect(int8.contains("resident weights int8 (resident-int8.safetensors)") && e2.contains("resident weights int8 (resident-int8.safetensors)"), "\(e2)")
        #expect(e1.contains("resident weights bf16 (int8 too: --resident-weights int8)"), "\(e1)")
        #expect((kl(int8) ?? 0) > (kl(bf16) ?? 1) && (kl(int8) ?? 1) < 0.01, "int8 \(kl(int8) ?? -1), bf16 \(kl(bf16) ?? -1)")
        let (p1, plan1, _) = try moestream(["plan", Self.store, "--ram", "8G", "--disk-bw", "3G"])
        let (p2, plan2, _) = try moestream(["plan", Self.store, "--ram", "8G", "--disk-bw", "3G", "--resident-weights", "int8"])
        #expect(p1 == 0 && p2 == 0 && plan2.contains("with the int8 companion") && !plan1.contains("with the int8 companion"), "\(plan2)")
        #expect(plan1.contains("this store's int8 companion"), "\(plan1)")
        let (refused, _, why) = try moestream(["generate", Self.store, "--tokens", "1,2", "--exact", "--resident-weights", "int8"])
        #expect(refused != 0 && why.contains("--exact") && why.contains("--resident-weights int8"), "\(why)")
    }

    /// With every matrix kernel this CPU runs: the generic Swift twins and the fastest (AVX2 or AVX-512). A
    /// kernel set the CPU lacks is not run (the arguments list only the supported ones, so the run shows fewer
    /// cases); that the CLI refuses it by name is `unsupportedKernelsAreRefusedByName`.
    @Test(arguments: ["generic", "avx2", "avx512"].filter(KernelISA.supportedNames.contains))
    func greedyContinuationsMatchTorch(kernels: String) throws {
        for (name, g) in try reference().greedy {
            let decisive = g.margins.firstIndex { $0 < 1e-3 } ?? g.tokens.count
            guard decisive > 0 else { continue }
            let (status, out, err) = try moestream(["generate", Self.store, "--tokens", g.prompt.map(String.init).joined(separator: ","),
                                                    "--max-tokens", "\(decisive)", "--ignore-eos", "--cache", "25%", "--no-stats",
                                                    "--kernels", kernels, "--exact"])
            #expect(status == 0, "\(err)")
            let ids = out.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").map { Int($0)! }
            #expect(ids == Array(g.tokens.prefix(decisive)), "\(name) with \(kernels) kernels")
        }
    }

    /// The default arithmetic (q8-gate-up-q16-down: int8 activations and dot products into the routed experts' gate and
    /// up, two-part int8 into down; bf16x2 resident products where AMX or AVX512-BF16 runs them; an f16 KV cache) and llama.cpp's (q8: into down as well) keep torch's greedy tokens wherever torch's margin between the best
    /// two logits exceeds 0.1, with every kernel set.
    @Test(arguments: ["generic", "avx2", "avx512"].filter(KernelISA.supportedNames.contains))
    func q8ExpertActivationsKeepDecisiveGreedyTokens(kernels: String) throws {
        for mode in [nil, "q8"] {
            var compared = 0
            for (name, g) in try reference().greedy {
                let decisive = g.margins.firstIndex { $0 < 0.1 } ?? g.tokens.count
                guard decisive > 0 else { continue }
                let (status, out, err) = try moestream(["generate", Self.store, "--tokens", g.prompt.map(String.init).joined(separator: ","),
                                                        "--max-tokens", "\(decisive)", "--ignore-eos", "--cache", "25%",
                                                        "--kernels", kernels] + (mode.map { ["--expert-activations", $0] } ?? []))
                #expect(status == 0, "\(err)")
                // The resident matrices' default: the store's bf16 ones (its int8 companion unused), bf16x2 only with
                // the avx512 kernels on a CPU with AMX or AVX512-BF16.
                let resident = kernels == "avx512" ? ResidentActivations.bf16x2Kernel(isa: .avx512).map { "bf16x2 (\($0.rawValue))" } ?? "fp32" : "fp32"
                #expect(err.contains("expert activations \(mode ?? "q8-gate-up-q16-down"), resident activations \(resident), resident weights bf16 (int8 too: --resident-weights int8), KV cache f16, prefill chunk 512, window 32768\n"),
                        "the statistics report the arithmetic: \(err)")
                let ids = out.split(separator: "\n").last.map { $0.split(separator: ",").compactMap { Int($0) } } ?? []
                #expect(ids == Array(g.tokens.prefix(decisive)), "\(name) with \(mode ?? "default") activations, \(kernels) kernels")
                compared += decisive
            }
            #expect(compared >= 10)
        }
    }

    /// Kernel sets this CPU lacks are refused by name before anything runs (skipped where the CPU has them all).
    @Test(.enabled(if: KernelISA.supportedNames.count < 3, "this CPU runs every kernel set"))
    func unsupportedKernelsAreRefusedByName() throws {
        for kernels in ["avx2", "avx512"] where !KernelISA.supportedNames.contains(kernels) {
            let (status, _, err) = try moestream(["generate", Self.store, "--tokens", "1,2", "--max-tokens", "1", "--kernels", kernels])
            #expect(status != 0 && err.contains("this CPU cannot run the \(kernels) kernels"), "\(err)")
        }
    }
}
