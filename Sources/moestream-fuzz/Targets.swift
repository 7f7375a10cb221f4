import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoERuntime
import MoETokenizer

/// One kind of file the engine reads from outside, with the directory it sits in and what the engine does with
/// it. A case replaces one file of a seed directory with mutated bytes and runs the engine's own entry points
/// over the directory: each must either refuse with an error or succeed with finite results.
struct FileKind: Sendable {
    let name: String
    /// The seed directory this kind mutates (a checkpoint, a store, a tokenizer, traces).
    let seed: Seed
    /// Files of the seed directory (relative paths) a case may mutate.
    let targets: @Sendable (Seeds) -> [String]
    let style: MutationStyle
    /// After mutation: whether to put a fresh self-checksum on a manifest, so mutations reach past it.
    let resign: Bool

    enum Seed: String, Sendable { case checkpoint, store, tokenizer, traces, gguf }

    static let all: [FileKind] = [
        FileKind(name: "shard", seed: .checkpoint, targets: { s in s.files(.checkpoint).filter { $0.hasSuffix(".safetensors") } },
                 style: .safetensors, resign: false),
        FileKind(name: "config", seed: .checkpoint, targets: { _ in ["config.json"] }, style: .text, resign: false),
        FileKind(name: "index", seed: .checkpoint, targets: { _ in [Checkpoint.indexFileName] }, style: .text, resign: false),
        FileKind(name: "manifest", seed: .store, targets: { _ in [StoreManifest.fileName] }, style: .text, resign: true),
        FileKind(name: "extents", seed: .store, targets: { s in s.files(.store).filter { $0.hasPrefix("experts/") } },
                 style: .binary, resign: false),
        FileKind(name: "resident", seed: .store, targets: { _ in [StoreManifest.residentFileName] }, style: .safetensors,
                 resign: false),
        FileKind(name: "resident-int8", seed: .store, targets: { _ in [StoreManifest.residentInt8FileName] }, style: .safetensors,
                 resign: false),
        FileKind(name: "tiktoken", seed: .tokenizer, targets: { _ in ["tiktoken.model"] }, style: .text, resign: false),
        FileKind(name: "tokenizer-config", seed: .tokenizer, targets: { _ in ["tokenizer_config.json"] }, style: .text,
                 resign: false),
        FileKind(name: "trace", seed: .traces, targets: { s in s.files(.traces) }, style: .text, resign: false),
        FileKind(name: "gguf", seed: .gguf, targets: { s in s.files(.gguf).filter { $0.hasSuffix(".gguf") } }, style: .binary,
                 resign: false),
        FileKind(name: "gguf-sums", seed: .gguf, targets: { s in s.files(.gguf).filter { $0.hasSuffix(GGUFSums.suffix) } },
                 style: .text, resign: false),
    ]

    static func named(_ name: String) -> FileKind? { all.first { $0.name == name } }
}

/// The seed directories, built once per run from the committed fixtures: the sharded BF16 fixture checkpoint,
/// a store converted from it, the tokenizer fixture and the committed routing traces.
struct Seeds {
    let root: String

    func directory(_ s: FileKind.Seed) -> String { root + "/" + s.rawValue }

    /// Regular files under the seed directory, relative, sorted.
    func files(_ s: FileKind.Seed) -> [String] {
        let dir = directory(s)
        let all = (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String]) ?? []
        return all.filter { p in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: dir + "/" + p, isDirectory: &isDir) && !isDir.boolValue
        }.sorted()
    }

    /// Copies the fixtures and converts the store (skipped when `root` already holds them).
    static func prepare(root: String, fixtures: String) throws -> Seeds {
        let s = Seeds(root: root)
        let fm = FileManager.default
        if fm.fileExists(atPath: root + "/ready-4") { return s }  // 2: the gguf seed joined; 3: its sums files; 4: the int8 companion
        try? fm.removeItem(atPath: root)
        try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        try fm.copyItem(atPath: fixtures + "/models/kimi_k2", toPath: s.directory(.checkpoint))
        try? fm.removeItem(atPath: s.directory(.checkpoint) + "/reference.json")  // not read by the engine
        try fm.createDirectory(atPath: s.directory(.tokenizer), withIntermediateDirectories: true)
        for f in ["tiktoken.model", "tokenizer_config.json"] {
            try fm.copyItem(atPath: fixtures + "/tokenizer/" + f, toPath: s.directory(.tokenizer) + "/" + f)
        }
        try fm.createDirectory(atPath: s.directory(.traces), withIntermediateDirectories: true)
        for f in ["kimi_k2.trace", "deepseek_v3.trace"] {
            try fm.copyItem(atPath: fixtures + "/traces/" + f, toPath: s.directory(.traces) + "/" + f)
        }
        try fm.createDirectory(atPath: s.directory(.gguf), withIntermediateDirectories: true)
        for f in try fm.contentsOfDirectory(atPath: fixtures + "/gguf").filter({ $0.hasSuffix(".gguf") }).sorted() {
            try fm.copyItem(atPath: fixtures + "/gguf/" + f, toPath: s.directory(.gguf) + "/" + f)
            // The model files' sums (`verify --write-sums`), for the gguf-sums kind.
            let g = try GGUFCheckpoint(path: s.directory(.gguf) + "/" + f)
            guard g.metadata["general.architecture"]?.string == "deepseek2" else { continue }
            try GGUFSums.compute(g, try ModelConfig.fromGGUF(g)).write(for: g)
        }
        // Converted from inside `root` with relative paths: the manifest records its source path, and a seed that
        // depended on --work would make the same seed and case number mutate different bytes.
        let previous = fm.currentDirectoryPath
        fm.changeCurrentDirectoryPath(root)
        defer { fm.changeCurrentDirectoryPath(previous) }
        try StoreConverter(source: FileKind.Seed.checkpoint.rawValue, output: FileKind.Seed.store.rawValue).run()
        fm.createFile(atPath: root + "/ready-4", contents: Data())
        return s
    }
}

/// What a case came to.
enum Outcome: String {
    /// The engine refused the input with an error (the expected end of most mutations).
    case refused
    /// The engine accepted it and every result was finite.
    case accepted
    /// Accepted, but with non-finite logits: a value that should have been refused was not.
    case nonFinite = "non-finite"
}

/// Runs the engine over `dir` as `kind` would be used.
func exercise(_ kind: FileKind, directory dir: String) -> (Outcome, String) {
    do {
        switch kind.seed {
        case .checkpoint:
            let model = try KimiModel.load(checkpoint: dir)
            if let bad = try nonFinite(model) { return (.nonFinite, bad) }
            // The converter reads the same download through its own path.
            let out = dir + ".store"
            defer { try? FileManager.default.removeItem(atPath: out) }
            try StoreConverter(source: dir, output: out).run()
            return (.accepted, "")
        case .store:
            let report = StoreVerifier(path: dir).run()
            let store = try ExpertStore(path: dir)
            let model = try store.loadModel()
            if let bad = try nonFinite(model) { return (.nonFinite, bad) }
            // The same store with its int8 companion in place of the bf16 matrices (`--resident-weights int8`).
            if let bad = try nonFinite(try ExpertStore(path: dir, residentInt8: true).loadModel()) { return (.nonFinite, "int8 companion: \(bad)") }
            return (.accepted, report.ok ? "" : "verify: \(report.problems.count) problems")
        case .tokenizer:
            let t = try Tokenizer(directory: dir)
            let text = "def f(x):\n    return x + 1  # <|im_end|> [EOS] naïve 漢字 🙂"
            let ids = t.encode(text, allowSpecial: true) + t.encode(text, allowSpecial: false)
            _ = t.decode(ids)
            return (.accepted, "")
        case .traces:
            for f in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() {
                let trace = try RoutingTrace.load(path: dir + "/" + f)
                let sim = CacheSimulator(trace: trace, slots: 16)
                _ = sim.run(policy: .lru, prefetch: .both)
                _ = sim.run(policy: .lfu)
                _ = sim.belady()
            }
            return (.accepted, "")
        case .gguf where kind.name == "gguf-sums":
            // Each model file's sums loaded (checked against the file), then the file checked against them, then
            // run directly through a two-expert cache that checks every read against them.
            for f in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() where f.hasSuffix(".gguf") {
                let g = try GGUFCheckpoint(path: dir + "/" + f)
                guard g.metadata["general.architecture"]?.string == "deepseek2" else { continue }
                let c = try ModelConfig.fromGGUF(g)
                guard let sums = try GGUFSums.load(for: g, c) else { continue }
                let problems = sums.tensorProblems(g) + (try sums.expertProblems(g, c))
                guard problems.isEmpty else { throw FuzzRefusal(problems[0]) }
                let reads = try GGUFExpertReads.make(g, c, checksums: sums.experts)
                let (model, cache) = try GGUFDirect.load(path: dir + "/" + f, cache: CacheConfiguration(totalBudget: 2 * reads.slotBytes, topology: .detect()))
                defer { cache.shutdown() }
                if let bad = try nonFinite(model) { return (.nonFinite, "\(f) direct: \(bad)") }
            }
            return (.accepted, "")
        case .gguf:
            // Open every file and decode every tensor this build can decode (NaN weights are data, not a fault
            // of the reader: the quant fixture plants them on purpose).
            // A model file is also run (finite logits), exactly and with the integer kernels (the command line's
            // default for GGUF), and converted to a store.
            for f in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() where f.hasSuffix(".gguf") {
                let g = try GGUFCheckpoint(path: dir + "/" + f)
                for t in g.tensors where t.type.canDequantize { _ = try g.floats(t.name) }
                guard g.metadata["general.architecture"]?.string == "deepseek2" else { continue }
                let model = try KimiModel.load(gguf: dir + "/" + f)
                if let bad = try nonFinite(model) { return (.nonFinite, "\(f): \(bad)") }
                model.expertActivations = .q8
                model.residentActivations = .q8
                if let bad = try nonFinite(model) { return (.nonFinite, "\(f) with q8 activations: \(bad)") }
                let out = dir + ".store"
                defer { try? FileManager.default.removeItem(atPath: out) }
                var converter = StoreConverter(source: dir + "/" + f, output: out)
                converter.experts = .source
                converter.resident = .source
                try converter.run()
                if let bad = try nonFinite(try ExpertStore(path: out).loadModel()) { return (.nonFinite, "\(f) converted: \(bad)") }
            }
            return (.accepted, "")
        }
    } catch {
        return (.refused, "\(error)")
    }
}

/// A problem the engine reports without throwing (a checker's list), as a refusal.
struct FuzzRefusal: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A short prompt through `model`; a description of the first non-finite logit, if any. 16 tokens: enough for the
/// many-token paths (the K-quants' and i-quants' AMX tiles where the CPU has them, the row kernels' spans).
func nonFinite(_ model: KimiModel) throws -> String? {
    let tokens = Array(1...16).map { $0 % max(1, model.config.vocabSize) }
    let r = try model.forward(tokens, cache: model.makeCache(), logits: .all)
    if let i = r.logits.firstIndex(where: { !$0.isFinite }) { return "logit \(i) is \(r.logits[i])" }
    return nil
}
