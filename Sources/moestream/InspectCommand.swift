import ArgumentParser
import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoETensor

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model's configuration, its bytes by role, and what stays resident or goes to NVMe.")

    @OptionGroup var model: ModelOptions

    func run() throws {
        if model.isGGUF { return try inspectGGUF(model.model) }
        let config: ModelConfig
        let checkpoint: Checkpoint
        var store: ExpertStore?
        do {
            if model.isStore {
                store = try ExpertStore(path: model.model, verifyResident: false)
                config = store!.config
                checkpoint = store!.resident
            } else {
                config = try ModelConfig.load(path: model.model)
                checkpoint = try Checkpoint(path: model.model)
            }
        } catch let e as StoreError { throw CLIError(e.description) } catch let e as CheckpointError { throw CLIError(e.description) }
        let c = config
        print("model          \(model.model)")
        printConfiguration(c)
        if let q = c.quantization { print("quantization   \(q)") }
        print("tensors        \(checkpoint.tensorNames.count) in \(checkpoint.files.count) file(s)")

        var inv = WeightInventory(checkpoint: checkpoint, prefix: c.tensorPrefix)
        if let store {
            let layout = store.manifest.experts.layout
            let files = store.manifest.experts.files
            inv.add(.routedExperts, bytes: files.count * c.numRoutedExperts * layout.extentBytes, tensors: 0)
            print("store          format v\(store.manifest.version), experts \(layout.encoding.rawValue)"
                + (layout.scaleType.map { " (group-32 \($0.rawValue) scales)" } ?? "")
                + (layout.ggmlTypes.map { " (gate \($0[0]), up \($0[1]), down \($0[2]) at most)" } ?? "")
                + ", one \(humanBytes(layout.extentBytes)) extent each (\(layout.alignment)-byte aligned), \(files.count) expert files")
            print("source         \(store.manifest.source.path) (\(store.manifest.source.kind))")
        }
        print("")
        print("role                    tensors        bytes   where")
        for role in WeightInventory.Role.allCases {
            guard let b = inv.bytes[role] else { continue }
            let name = role.rawValue.padding(toLength: 22, withPad: " ", startingAt: 0)
            let count = String(inv.tensors[role] ?? 0).leftPad(8)
            print("\(name)  \(count)  \(humanBytes(b).leftPad(11))   \(role.isResident ? "RAM" : "NVMe")")
        }
        print("")
        let fromGGUF = store?.manifest.source.kind == "gguf"  // its resident tensors keep their GGML types
        print("resident (RAM)   \(humanBytes(inv.residentBytes))" + (fromGGUF ? " in the GGUF's types" : residentChoices(checkpoint, prefix: c.tensorPrefix) + companionNote(store)))
        print("streamed (NVMe)  \(humanBytes(inv.streamedBytes)) in \(c.moeLayers.count * c.numRoutedExperts) experts"
            + (c.moeLayers.isEmpty ? "" : ", \(humanBytes(inv.streamedBytes / max(1, c.moeLayers.count * c.numRoutedExperts))) each"))
        print(kvCacheLine(c))
    }
}

/// The configuration lines `inspect` prints for every kind of model.
func printConfiguration(_ c: ModelConfig) {
    print("model_type     \(c.modelType)\(c.tensorPrefix.isEmpty ? "" : " (tensors under '\(c.tensorPrefix)')")")
    print("layers         \(c.numLayers) (dense: \(c.numLayers - c.moeLayers.count), MoE: \(c.moeLayers.count))")
    print("hidden         \(c.hiddenSize), intermediate \(c.intermediateSize), expert intermediate \(c.moeIntermediateSize)")
    print("attention      MLA, \(c.numHeads) heads, q_lora \(c.qLoraRank.map(String.init) ?? "none"), kv_lora \(c.kvLoraRank), "
        + "nope \(c.qkNopeHeadDim) + rope \(c.qkRopeHeadDim), v \(c.vHeadDim)")
    print("experts        \(c.numRoutedExperts) routed (top-\(c.expertsPerToken), \(c.nGroup) groups, keep \(c.topkGroup)), "
        + "\(c.numSharedExperts) shared, scaling \(c.routedScalingFactor)")
    let rope = c.rope.kind == .yarn
        ? "yarn θ=\(c.rope.theta) factor \(c.rope.factor) original \(c.rope.originalMaxPositionEmbeddings)"
        : "θ=\(c.rope.theta)"
    print("rope           \(rope), context \(c.maxPositionEmbeddings)")
    print("vocabulary     \(c.vocabSize)")
}

/// `inspect` of a GGUF file: its configuration, its tensors by GGML type, and which stay resident and which are
/// the routed experts a store would stream; types this build cannot run are named with their tensors.
func inspectGGUF(_ path: String) throws {
    let g: GGUFCheckpoint
    let c: ModelConfig
    do {
        g = try GGUFCheckpoint(path: path)
        c = try ModelConfig.fromGGUF(g)
    } catch { throw CLIError("\(error)") }
    print("model          \(path)")
    print("format         GGUF v\(g.files[0].version), \(g.files.count) part(s), alignment \(g.files[0].alignment), "
        + "\(humanBytes(g.totalBytes)) of tensors; "
        + (FileManager.default.fileExists(atPath: GGUFSums.path(for: g))
            ? "checksums in \(GGUFSums.path(for: g)) (checked when run)"
            : "no checksums (GGUF files carry none; `moestream verify \(path) --write-sums` records them)"))
    if let name = g.metadata["general.name"]?.string { print("name           \(name)") }
    printConfiguration(c)
    if let pre = g.metadata["tokenizer.ggml.pre"]?.string {
        print("tokenizer      \(g.metadata["tokenizer.ggml.model"]?.string ?? "?") / \(pre), "
            + "\(g.metadata["tokenizer.ggml.tokens"]?.array?.count ?? 0) tokens")
    }
    let tensors = g.tensors
    let isExpert = { (t: GGUFFile.TensorInfo) in t.name.hasSuffix("_exps.weight") }
    print("")
    print("type       tensors        bytes   bits/weight   resident       routed experts")
    let byType = Dictionary(grouping: tensors, by: \.type)
    for type in byType.keys.sorted(by: { $0.rawValue < $1.rawValue }) {
        let ts = byType[type]!
        let resident = ts.filter { !isExpert($0) }.reduce(0) { $0 + $1.range.count }
        let experts = ts.filter(isExpert).reduce(0) { $0 + $1.range.count }
        let bpw = String(format: "%.4g", type.bitsPerWeight)
        var line = type.description.padding(toLength: 8, withPad: " ", startingAt: 0)
        line += String(ts.count).leftPad(9) + humanBytes(resident + experts).leftPad(13) + bpw.leftPad(14)
        line += humanBytes(resident).leftPad(11) + humanBytes(experts).leftPad(21)
        print(line + (type.canDequantize ? "" : "   (cannot run yet)"))
    }
    let residentBytes = tensors.filter { !isExpert($0) }.reduce(0) { $0 + $1.range.count }
    let expertBytes = tensors.filter(isExpert).reduce(0) { $0 + $1.range.count }
    let count = c.moeLayers.count * c.numRoutedExperts
    print("")
    print("resident (RAM)   \(humanBytes(residentBytes)) as stored")
    print("routed experts   \(humanBytes(expertBytes)) in \(count) experts" + (count > 0 ? ", \(humanBytes(expertBytes / count)) each" : ""))
    print(kvCacheLine(c))
    let missing = g.undecodable()
    if !missing.isEmpty { print("cannot run yet  " + CheckpointError.unsupportedTypes(file: path, types: missing).description) }
}

/// "KV cache  X per position (--kv-cache f16, the default; f32 Y, bf16 Z), W at the full context of N": what a
/// sequence's latent cache costs in each precision (`inspect`, `plan`).
func kvCacheLine(_ c: ModelConfig) -> String {
    func perToken(_ p: KVPrecision) -> Int {
        KVCache.bytesPerToken(layers: c.numLayers, latentDim: c.kvLoraRank, ropeDim: c.qkRopeHeadDim, precision: p)
    }
    let d = CacheOptions.defaultKV
    let others = KVPrecision.allCases.filter { $0 != d }.map { "\($0.rawValue) \(humanBytes(perToken($0)))" }.joined(separator: ", ")
    return "KV cache         \(humanBytes(perToken(d))) per position (--kv-cache \(d.rawValue), the default; \(others)), "
        + "\(humanBytes(perToken(d) * c.maxPositionEmbeddings)) at the full context of \(c.maxPositionEmbeddings)"
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

/// "; convert --resident bf16: X, int8: Y": the resident bytes of each `--resident` choice, from the resident
/// tensors of a checkpoint or a store's resident file.
func residentChoices(_ checkpoint: Checkpoint, prefix: String) -> String {
    var tensors: [(name: String, dtype: DType, shape: [Int], bytes: Int)] = []
    for name in checkpoint.tensorNames {
        guard let (_, e) = checkpoint.entry(name) else { continue }
        let stripped = name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : name
        guard WeightInventory.role(of: stripped).isResident else { continue }
        tensors.append((stripped, e.dtype, e.shape, e.range.count))
    }
    return residentChoices(tensors)
}

/// "; this store's int8 companion: X (Y in memory with --resident-weights int8)", or nothing for a store without one.
func companionNote(_ store: ExpertStore?) -> String {
    guard let m = store?.manifest, let c = m.residentInt8 else { return "" }
    return "; this store's int8 companion: \(humanBytes(c.bytes)) (\(humanBytes(m.residentBytes(int8: true))) in memory with --resident-weights int8)"
}

func residentChoices(_ tensors: [(name: String, dtype: DType, shape: [Int], bytes: Int)]) -> String {
    let bf16 = StoreConverter.residentBytes(tensors, as: .bf16), int8 = StoreConverter.residentBytes(tensors, as: .int8)
    return "; with convert --resident bf16: \(humanBytes(bf16)), int8: \(humanBytes(int8))"
}
