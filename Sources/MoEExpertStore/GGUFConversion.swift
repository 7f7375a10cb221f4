import Foundation
import MoECheckpoint
import MoESystem
import MoETensor
import MoETokenizer

/// `moestream convert MODEL.gguf -o STORE`: a GGUF file (or split set) → an expert store, its quantised bytes passed
/// through bit for bit.
///
/// - Routed experts: each expert's gate, up and down slices of the stacked `ffn_*_exps` tensors are copied into its
///   extent unchanged (`ExpertEncoding.ggml`). llama.cpp gives some layers' down projections more bits (Q4_K_M
///   keeps Q6_K in about a third of the layers), so each matrix's space fits the largest type it has in any layer,
///   and a layer with other types names them (`ExpertFile.ggmlTypes`).
/// - Resident tensors: kept in their type under their transformers names (a GGML-typed matrix as `U8 [rows, row
///   bytes]` with its type in the file's metadata, `ggml:NAME`); MLA's split `attn_k_b`/`attn_v_b` become `kv_b_proj`
///   in fp32 (attention reads it by head), as does a quantised vector.
/// - config.json from the GGUF's metadata (`ModelConfig.fromGGUF`) and, for a kimi-k2 vocabulary, `tiktoken.model` and
///   `tokenizer_config.json`, so the store runs like any other.
///
/// Where a sums file lies beside the GGUF (`GGUFSums`, `moestream verify X.gguf --write-sums`), what is converted is
/// checked against it first: the resident tensors before anything is written, each expert as it is copied. A file
/// damaged since its sums were written is refused, naming the tensor or the layer and expert, instead of being
/// checksummed into the store as if it were right.
///
/// Units, resuming, sidecars and the manifest-last rule are the safetensors converter's.
extension StoreConverter {
    func runGGUF() throws(StoreError) {
        let gguf: GGUFCheckpoint, config: ModelConfig
        do {
            gguf = try GGUFCheckpoint(path: source)
            config = try ModelConfig.fromGGUF(gguf)
        } catch { throw .checkpoint(error) }
        guard experts == .source, resident == .source else {
            throw .unsupportedSource(file: source, reason: "a GGUF's blocks pass through as they are: convert it with "
                + "--experts source --resident source (the defaults for a .gguf), not --experts \(experts.rawValue) --resident \(resident.rawValue)")
        }
        let undecodable = gguf.undecodable()
        guard undecodable.isEmpty else { throw .checkpoint(.unsupportedTypes(file: gguf.path, types: undecodable)) }
        guard !config.moeLayers.isEmpty else {
            throw .unsupportedSource(file: gguf.path, reason: "the model has no MoE layers: nothing to stream")
        }
        let tensors = GGUFTensors(gguf: gguf, config: config)
        let layerTypes = try Self.expertTypes(gguf, config)
        let sums = try GGUFSums.load(for: gguf, config)
        if let sums {
            log("checking the GGUF against \(sums.path)")
            if let problem = sums.tensorProblems(gguf).first { throw .unsupportedSource(file: sums.path, reason: "does not match the GGUF: \(problem)") }
        }
        let shapes = [(config.moeIntermediateSize, config.hiddenSize), (config.moeIntermediateSize, config.hiddenSize),
                      (config.hiddenSize, config.moeIntermediateSize)]
        // Each matrix's space fits the type with the longest rows it has in any layer.
        let widest = (0..<3).map { i in
            config.moeLayers.map { layerTypes[$0]![i] }.max { ($0.rowBytes(elements: shapes[i].1) ?? 0) < ($1.rowBytes(elements: shapes[i].1) ?? 0) }!
        }
        let layout = ExpertLayout(ggml: widest, hidden: config.hiddenSize, intermediate: config.moeIntermediateSize)
        let (residentList, metadata) = try Self.residentTensors(gguf, config)
        let plan = Plan(layout: layout, residentTensors: residentList, experts: config.numRoutedExperts,
                        moeLayers: config.moeLayers.count, metadata: metadata)
        if try prepareOutput(fingerprint: Self.fingerprint(gguf, plan)) { return }

        var progress = Progress(bytesDone: 0, bytesTotal: plan.totalBytes, unit: "")
        let residentSums = try residentUnit(plan, progress: &progress) { t, emit throws(StoreError) in
            try Self.produce(t, gguf, tensors, emit)
        }
        var expertFiles: [ExpertFile] = []
        for (k, layer) in config.moeLayers.enumerated() {
            let slices = ["gate", "up", "down"].map { gguf.info("blk.\(layer).ffn_\($0)_exps.weight")! }
            let (rel, extentSums) = try expertUnit(plan, layer: layer, experts: config.numRoutedExperts, progress: &progress) { e, extent throws(StoreError) in
                // Expert e's rows of each stacked tensor, bit for bit (and, with a sums file, checked as copied).
                var h = XXHash64.Streaming()
                for ((file, info), m) in zip(slices, [layout.gate, layout.up, layout.down]) {
                    let per = info.range.count / config.numRoutedExperts
                    (extent + m.offset).copyMemory(from: file.bytes(of: info).baseAddress! + e * per, byteCount: per)
                    if sums != nil { h.update(extent + m.offset, count: per) }
                }
                if let sums, h.finish() != sums.experts[k][e] {
                    let (file, info) = slices[0]
                    throw .expertChecksum(layer: layer, expert: e, file: file.path,
                                          offset: info.range.lowerBound + e * (info.range.count / config.numRoutedExperts))
                }
            }
            for (file, info) in slices { file.release(info) }
            let types = layerTypes[layer]!
            expertFiles.append(ExpertFile(layer: layer, path: rel, experts: config.numRoutedExperts, checksums: extentSums,
                                          ggmlTypes: types == widest ? nil : types.map(\.description)))
        }

        var carried: [CarriedFile] = []
        var files: [(name: String, data: Data)] = []
        do { files.append(("config.json", try JSONSerialization.data(withJSONObject: config.configJSON(), options: [.sortedKeys, .prettyPrinted]))) }
        catch { throw .badManifest(file: "config.json", reason: "\(error)") }
        do {
            if let v = try gguf.vocabulary() {
                let t = try Tokenizer(ggufTokens: v.tokens, types: v.types, model: v.model, pre: v.pre, bosID: v.bosID,
                                      eosID: v.eosID, source: gguf.path)
                files += t.files()
            }
        } catch {
            log("no tokenizer files: \(error) (the store runs from token ids)")
        }
        for (name, data) in files {
            try writeAtomically(data, to: output + "/" + name)
            carried.append(CarriedFile(name: name, bytes: data.count, xxh64: data.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) }))
        }
        try finish(plan, kind: "gguf", residentSums: residentSums, expertFiles: expertFiles, carried: carried, layers: config.moeLayers)
    }

    /// Each MoE layer's expert types (gate, up, down), every stacked tensor checked against the configuration.
    public static func expertTypes(_ gguf: GGUFCheckpoint, _ c: ModelConfig) throws(StoreError) -> [Int: [GGMLType]] {
        var out: [Int: [GGMLType]] = [:]
        for l in c.moeLayers {
            var types: [GGMLType] = []
            for (proj, rows, cols) in [("gate", c.moeIntermediateSize, c.hiddenSize), ("up", c.moeIntermediateSize, c.hiddenSize),
                                       ("down", c.hiddenSize, c.moeIntermediateSize)] {
                let name = "blk.\(l).ffn_\(proj)_exps.weight"
                guard let (file, info) = gguf.info(name) else { throw .checkpoint(.missingTensor(tensor: name, searched: gguf.path)) }
                guard info.shape == [c.numRoutedExperts, rows, cols] else {
                    throw .checkpoint(.wrongShape(file: file.path, tensor: name, expected: [c.numRoutedExperts, rows, cols], actual: info.shape))
                }
                types.append(info.type)
            }
            out[l] = types
        }
        return out
    }

    /// GGUF tensor name → transformers name (the inverse of `GGUFTensors.origin`), for the resident tensors.
    static func transformersName(_ gguf: String) -> String? {
        switch gguf {
        case "token_embd.weight": return "model.embed_tokens.weight"
        case "output_norm.weight": return "model.norm.weight"
        case "output.weight": return "lm_head.weight"
        default: break
        }
        let parts = gguf.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blk", let l = Int(parts[1]) else { return nil }
        let p = "model.layers.\(l)."
        if parts[2] == "attn_k_b.weight" || parts[2] == "attn_kv_b.weight" { return p + "self_attn.kv_b_proj.weight" }
        return GGUFTensors.layerNames.first { $0.value == parts[2] }.map { p + $0.key }
    }

    /// The resident tensors and the metadata that types the GGML ones.
    static func residentTensors(_ gguf: GGUFCheckpoint, _ c: ModelConfig) throws(StoreError)
        -> ([Plan.ResidentTensor], [String: String]) {
        var out: [Plan.ResidentTensor] = []
        var metadata: [String: String] = [:]
        for t in gguf.tensors where !t.name.hasSuffix("_exps.weight") && !t.name.hasSuffix("attn_v_b.weight") {
            if t.name.hasPrefix("blk."), let l = Int(t.name.split(separator: ".")[1]), l >= c.numLayers { continue }  // MTP layers
            guard let name = transformersName(t.name) else {
                throw .unsupportedSource(file: gguf.info(t.name)!.file.path, reason: "tensor '\(t.name)' has no place in the deepseek2 model")
            }
            if name.hasSuffix("kv_b_proj.weight") {
                let shape = [c.numHeads * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank]
                out.append(.init(name: name, dtype: .f32, shape: shape, bytes: shape[0] * shape[1] * 4,
                                 producer: .gguf(name: name, decoded: true)))
                continue
            }
            switch t.type {
            case .f32: out.append(.init(name: name, dtype: .f32, shape: t.shape, bytes: t.range.count, producer: .gguf(name: t.name, decoded: false)))
            case .f16: out.append(.init(name: name, dtype: .f16, shape: t.shape, bytes: t.range.count, producer: .gguf(name: t.name, decoded: false)))
            case .bf16: out.append(.init(name: name, dtype: .bf16, shape: t.shape, bytes: t.range.count, producer: .gguf(name: t.name, decoded: false)))
            default:
                if t.ne.count == 2 {
                    let rowBytes = t.range.count / t.ne[1]
                    out.append(.init(name: name, dtype: .u8, shape: [t.ne[1], rowBytes], bytes: t.range.count,
                                     producer: .gguf(name: t.name, decoded: false)))
                    metadata["ggml:" + name] = t.type.description
                } else {
                    out.append(.init(name: name, dtype: .f32, shape: t.shape, bytes: t.elements * 4, producer: .gguf(name: name, decoded: true)))
                }
            }
        }
        return (out, metadata)
    }

    /// Streams resident tensor `t`: the GGUF's bytes in pieces of at most 16 MB, or its fp32 decoding.
    static func produce(_ t: Plan.ResidentTensor, _ gguf: GGUFCheckpoint, _ tensors: GGUFTensors,
                        _ emit: (UnsafeRawPointer, Int) throws -> Void) throws(StoreError) {
        guard case .gguf(let name, let decoded) = t.producer else { preconditionFailure("not a GGUF tensor") }
        if decoded {
            let tensor: Tensor
            do { tensor = try tensors.tensor(name, shape: t.shape) } catch { throw .checkpoint(error) }
            try wrap { try emit(tensor.data, tensor.byteCount) }
            return
        }
        let (file, info) = gguf.info(name)!
        let bytes = file.bytes(of: info)
        var done = 0
        while done < bytes.count {
            let n = min(16 << 20, bytes.count - done)
            try wrap { try emit(bytes.baseAddress! + done, n) }
            done += n
        }
        file.release(info)
    }

    /// Identifies this conversion: the parts and their sizes, the layout, the resident file.
    static func fingerprint(_ gguf: GGUFCheckpoint, _ plan: Plan) -> String {
        var parts = ["format \(StoreManifest.currentVersion)", "source \((gguf.path as NSString).standardizingPath)"]
        for f in gguf.files {
            let size = (try? FileSystem.regularFileSize(f.path)) ?? -1
            parts.append("\((f.path as NSString).lastPathComponent) \(size)")
        }
        parts.append("layout ggml \(plan.layout.ggmlTypes?.map(\.description).joined(separator: ",") ?? "-") \(plan.layout.extentBytes)")
        parts.append("resident \(plan.residentFileBytes) \(plan.residentTensors.count)")
        return parts.joined(separator: "\n") + "\n"
    }
}
