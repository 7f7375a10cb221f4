import Foundation
import MoEModel
import MoETensor
import MoETestSupport
import MoETokenizer
import Testing

/// Runs `moestream` and returns (status, stdout, stderr).
func moestream(_ args: [String], stdin: String? = nil) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: Fixtures.executable)
    p.arguments = args
    let out = Pipe(), err = Pipe(), input = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = input
    try p.run()
    if let stdin { input.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
    try input.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

@Suite struct CommandTests {
    let model = Fixtures.model("kimi_k2_chat")

    @Test func tokenizeRoundTrips() throws {
        let (s1, ids, _) = try moestream(["tokenize", model, "Hello 世界 <|im_end|>"])
        #expect(s1 == 0)
        let tokenizer = try Tokenizer(directory: model)
        #expect(ids.trimmingCharacters(in: .whitespacesAndNewlines) == tokenizer.encode("Hello 世界 <|im_end|>").map(String.init).joined(separator: ","))
        let (s2, text, _) = try moestream(["tokenize", model, "--decode", ids.trimmingCharacters(in: .whitespacesAndNewlines)])
        #expect(s2 == 0 && text == "Hello 世界 <|im_end|>\n")
    }

    @Test func runAtTemperatureZeroPrintsTheGreedyAnswer() throws {
        let (status, out, err) = try moestream(["run", model, "-p", "Hi there", "--temperature", "0", "--max-tokens", "10"])
        #expect(status == 0, "\(err)")
        let tokenizer = try Tokenizer(directory: model)
        let m = try KimiModel.load(checkpoint: model)
        let prompt = tokenizer.encode(KimiChatFormat().render([ChatMessage(role: .user, content: "Hi there")], tools: nil, addGenerationPrompt: true))
        let greedy = try m.greedy(prompt: prompt, maxTokens: 10)
        #expect(out == tokenizer.decode(greedy.filter { !tokenizer.isSpecial($0) }) + "\n")
        #expect(err.contains("generated at"))
    }

    @Test func chatKeepsHistoryAndResets() throws {
        let script = "Hello\nAnd again\n/reset\nHello\n/exit\n"
        let (status, out, err) = try moestream(["chat", model, "--temperature", "0", "--max-tokens", "5", "--no-stats"], stdin: script)
        #expect(status == 0, "\(err)")
        let answers = out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // After /reset, "Hello" starts a fresh conversation: the same greedy answer as the first turn.
        #expect(answers.count >= 3 && answers[0] == answers[2], "\(answers)")
        #expect(err.contains("(conversation reset)"))
    }

    /// Contexts and KV cache settings are checked before anything runs: beyond the model's context, --exact with a
    /// rounded KV cache, a budget that is not a size. `inspect` and `plan` show the KV cache's bytes per position.
    @Test func contextAndKVCacheFlagsAreChecked() throws {
        let m = try KimiModel.load(checkpoint: model)
        let limit = m.config.maxPositionEmbeddings
        let (s1, _, e1) = try moestream(["serve", model, "--context", "\(limit + 1)", "--port", "1"])
        #expect(s1 != 0 && e1.contains("beyond the model's context of \(limit)"), "\(e1)")
        let (s2, _, e2) = try moestream(["plan", model, "--context", "\(limit + 1)", "--ram", "8G", "--disk-bw", "3G"])
        #expect(s2 != 0 && e2.contains("the model's context is 1 ... \(limit)"), "\(e2)")
        let (s3, _, e3) = try moestream(["run", model, "-p", "x", "--exact", "--kv-cache", "bf16"])
        #expect(s3 != 0 && e3.contains("--exact keeps an fp32 KV cache"), "\(e3)")
        let (s4, _, e4) = try moestream(["serve", model, "--kv-budget", "lots", "--port", "1"])
        #expect(s4 != 0 && e4.contains("--kv-budget 'lots'"), "\(e4)")
        let (s7, _, e7) = try moestream(["serve", model, "--parallel", "0", "--port", "1"])
        #expect(s7 != 0 && e7.contains("--parallel must be between 1 and 256"), "\(e7)")
        let perF16 = m.config.numLayers * (m.config.kvLoraRank + m.config.qkRopeHeadDim) * 2
        let (s5, out5, _) = try moestream(["inspect", model])
        #expect(s5 == 0 && out5.contains("KV cache         \(perF16) B per position (--kv-cache f16, the default; f32 \(2 * perF16) B, bf16 \(perF16) B)"), "\(out5)")
        let (s6, out6, _) = try moestream(["plan", model, "--context", "4096", "--ram", "8G", "--disk-bw", "3G", "--kv-cache", "f32"])
        #expect(s6 == 0 && out6.contains("KV cache         f32: \(2 * perF16) B per position"), "\(out6)")
    }

    /// `--kv-cache` reaches the model: run's greedy answer with a bf16 cache is the library's with a bf16 cache.
    @Test func kvCacheFlagReachesTheModel() throws {
        let (status, out, err) = try moestream(["run", model, "-p", "Hi there", "--temperature", "0", "--max-tokens", "10", "--kv-cache", "bf16"])
        #expect(status == 0, "\(err)")
        let tokenizer = try Tokenizer(directory: model)
        let m = try KimiModel.load(checkpoint: model)
        m.expertActivations = .q8GateUpQ16Down
        m.residentActivations = ResidentActivations.bf16x2Kernel() != nil ? .bf16x2 : .fp32
        m.kvPrecision = .bf16
        let prompt = tokenizer.encode(KimiChatFormat().render([ChatMessage(role: .user, content: "Hi there")], tools: nil, addGenerationPrompt: true))
        let greedy = try m.greedy(prompt: prompt, maxTokens: 10)
        #expect(out == tokenizer.decode(greedy.filter { !tokenizer.isSpecial($0) }) + "\n")
    }

    @Test func badSamplingFlagsAreRefused() throws {
        let (status, _, err) = try moestream(["run", model, "-p", "x", "--top-p", "0"])
        #expect(status != 0 && err.contains("top-p"))
    }

    /// `bench memory` prints a rate for one thread and for --threads, and refuses sizes and counts it cannot use by name.
    @Test func benchMemoryPrintsARatePerThreadCount() throws {
        let (status, out, err) = try moestream(["bench", "memory", "--threads", "2", "--megabytes", "16", "--rounds", "2"])
        #expect(status == 0, "\(err)")
        let rates = out.split(separator: "\n").filter { $0.hasSuffix("GB/s") }
        #expect(rates.count == 2 && rates[0].hasPrefix("1 thread:") && rates[1].hasPrefix("2 threads:"), "\(out)")
        for (args, name) in [(["--megabytes", "0"], "--megabytes"), (["--megabytes", "999999999"], "--megabytes"),
                             (["--threads", "0"], "--threads"), (["--rounds", "0"], "--rounds")] {
            let (bad, _, why) = try moestream(["bench", "memory"] + args)
            #expect(bad != 0 && why.contains(name), "\(args): \(why)")
        }
    }

    /// Loading and dropping a store's model with its expert cache 20 times returns every descriptor, thread and
    /// (within 5%) byte: the cache's workers no longer keep it alive after `shutdown()`. In its own process, so
    /// other suites' files and threads do not count. Before: 12 → 69 open files and RSS +27% over 20 cycles.
    @Test func loadingAndDroppingReturnsFilesThreadsAndMemory() throws {
        let store = Fixtures.scratchDirectory("lifecycle") + "/store"
        let (c, _, cerr) = try moestream(["convert", Fixtures.model("kimi_k2"), "-o", store, "--quiet"])
        #expect(c == 0, "\(cerr)")
        let (status, out, err) = try moestream(["bench", "lifecycle", store, "--cycles", "20", "--cache", "50%",
                                                "--prefetch", "both"])
        #expect(status == 0, "\(err)")
        let rows = out.split(separator: "\n").map { line in line.split(separator: " ").compactMap { Double($0) } }
        // "after cycle N: F open files, T threads, RSS X MB (...)" → [F, T, X] (N is followed by ':')
        guard rows.count == 2, rows[0].count >= 3, rows[1].count >= 3 else { Issue.record("unexpected output: \(out)"); return }
        #expect(rows[1][0] == rows[0][0], "open files: \(out)")
        #expect(rows[1][1] == rows[0][1], "threads: \(out)")
        #expect(rows[1][2] <= rows[0][2] * 1.05, "RSS: \(out)")
    }
}
