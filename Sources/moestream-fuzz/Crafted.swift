import Foundation
import MoEExpertStore

/// Hand-made hostile inputs, one for each class of bug a mutation fuzzer found in the engine before its loaders
/// were hardened (see issue "Hours-long runs…"): `moestream-fuzz craft --out DIR` writes them in the regression
/// layout (KIND/TARGET--NAME), built from the same seeds, and Tests/Fixtures/fuzz/regressions keeps the result.
func craftedInputs(_ seeds: Seeds) throws -> [(kind: String, target: String, name: String, bytes: [UInt8])] {
    var out: [(String, String, String, [UInt8])] = []
    func read(_ s: FileKind.Seed, _ rel: String) -> [UInt8] {
        Array(FileManager.default.contents(atPath: seeds.directory(s) + "/" + rel) ?? Data())
    }
    func json(_ bytes: [UInt8]) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(bytes)) as! [String: Any]
    }
    func bytes(_ object: Any) throws -> [UInt8] { Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) }

    // Safetensors: offsets near 2^63 whose sum with the data start wraps; a length prefix ≥ 2^63.
    let shardName = "model-00001-of-00007.safetensors"
    let shard = read(.checkpoint, shardName)
    func withHeader(_ edit: (inout [String: Any]) -> Void) throws -> [UInt8] {
        let n = shard[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        var header = try json(Array(shard[8..<(8 + n)]))
        edit(&header)
        let h = try bytes(header)
        return (0..<8).map { UInt8(truncatingIfNeeded: h.count >> (8 * $0)) } + h + Array(shard[(8 + n)...])
    }
    out.append(("shard", shardName, "offsets-near-2p63", try withHeader { h in
        h["lm_head.weight"] = ["dtype": "BF16", "shape": [4_611_686_018_427_387_500], "data_offsets": [0, 9_223_372_036_854_775_000]]
    }))
    out.append(("shard", shardName, "shape-product-overflows", try withHeader { h in
        h["lm_head.weight"] = ["dtype": "BF16", "shape": [4_294_967_296, 4_294_967_296, 4], "data_offsets": [0, 32768]]
    }))
    var longLength = shard
    for i in 0..<8 { longLength[i] = 0xFF }
    out.append(("shard", shardName, "header-length-2p64-1", longLength))

    // config.json: sizes that would allocate until abort, values that pass the old checks and give NaN.
    let config = try json(read(.checkpoint, "config.json"))
    for (name, key, value) in [("layers-2p32", "num_hidden_layers", 4_294_967_296 as Any), ("vocab-2p40", "vocab_size", 1 << 40),
                               ("hidden-negative", "hidden_size", -64), ("rope-theta-zero", "rope_theta", 0),
                               ("routed-scaling-1e38", "routed_scaling_factor", 1e38), ("rms-eps-zero", "rms_norm_eps", 0),
                               ("experts-per-token-2p62", "num_experts_per_tok", 1 << 62)] as [(String, String, Any)] {
        var c = config
        c[key] = value
        out.append(("config", "config.json", name, try bytes(c)))
    }
    if var scaling = config["rope_scaling"] as? [String: Any] {
        for (name, key, value) in [("yarn-mscale-1e30", "mscale", 1e30), ("yarn-factor-negative", "factor", -4.0),
                                   ("yarn-beta-fast-1e308", "beta_fast", 1e308)] {
            var c = config
            scaling[key] = value
            c["rope_scaling"] = scaling
            out.append(("config", "config.json", name, try bytes(c)))
        }
    }

    // Store manifest, signed again so the values reach the checks behind the self-checksum.
    let manifest = try JSONDecoder().decode(StoreManifest.self, from: Data(read(.store, StoreManifest.fileName)))
    func signed(_ edit: (inout StoreManifest) -> Void) throws -> [UInt8] {
        var m = manifest
        edit(&m)
        return Array(try m.encoded())
    }
    out.append(("manifest", StoreManifest.fileName, "alignment-zero", try signed { $0.experts.layout.alignment = 0 }))
    out.append(("manifest", StoreManifest.fileName, "extent-bytes-2p62", try signed { $0.experts.layout.extentBytes = 1 << 62 }))
    out.append(("manifest", StoreManifest.fileName, "resident-tensor-bytes-2p62", try signed { m in
        let k = m.resident.tensors.keys.sorted()[0]
        m.resident.tensors[k]!.bytes = 1 << 62
    }))
    out.append(("manifest", StoreManifest.fileName, "expert-count-negative", try signed { $0.experts.files[0].experts = -1 }))
    out.append(("manifest", StoreManifest.fileName, "expert-path-escapes", try signed { $0.experts.files[0].path = "../../../etc/passwd" }))
    out.append(("manifest", StoreManifest.fileName, "carried-bytes-negative", try signed { $0.files[0].bytes = -5 }))
    // Format 2's interleaved int4: shapes the kernels would read past, a missing interleave, a version-1 store.
    out.append(("manifest", StoreManifest.fileName, "down-rows-doubled", try signed { $0.experts.layout.down.rows *= 2 }))
    out.append(("manifest", StoreManifest.fileName, "gate-rows-not-blocks-of-8", try signed { $0.experts.layout.gate.rows -= 4 }))
    out.append(("manifest", StoreManifest.fileName, "row-interleave-missing", try signed { $0.experts.layout.rowInterleave = nil }))
    out.append(("manifest", StoreManifest.fileName, "scale-offset-missing", try signed { $0.experts.layout.up.scaleOffset = nil }))
    out.append(("manifest", StoreManifest.fileName, "version-1", try signed { $0.version = 1 }))

    // Expert and resident files cut short.
    let layer = read(.store, "experts/layer-001.bin")
    out.append(("extents", "experts/layer-001.bin", "truncated-half", Array(layer.prefix(layer.count / 2))))
    let resident = read(.store, StoreManifest.residentFileName)
    out.append(("resident", StoreManifest.residentFileName, "truncated-half", Array(resident.prefix(resident.count / 2))))

    // Tokenizer files: a rank near 2^62 (the old loader sized its table by it); a special id spelled twice.
    var tiktoken = read(.tokenizer, "tiktoken.model")
    tiktoken += Array("QUJDREVGR0g= 4611686018427387903\n".utf8)
    out.append(("tiktoken", "tiktoken.model", "rank-2p62", tiktoken))
    var tokConfig = try json(read(.tokenizer, "tokenizer_config.json"))
    var added = tokConfig["added_tokens_decoder"] as! [String: Any]
    let firstKey = added.keys.sorted()[0]
    added["0" + firstKey] = ["content": "<|forged|>", "special": true]
    tokConfig["added_tokens_decoder"] = added
    out.append(("tokenizer-config", "tokenizer_config.json", "special-id-twice", try bytes(tokConfig)))

    // GGUF: header counts and lengths near 2^64, a tensor offset that wraps, extents that overflow, an unknown type.
    let gguf = read(.gguf, "quant-blocks.gguf")
    func patched(_ at: Int, _ value: UInt64, bytes n: Int = 8) -> [UInt8] {
        var g = gguf
        for i in 0..<n { g[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        return g
    }
    out.append(("gguf", "quant-blocks.gguf", "version-1", patched(4, 1, bytes: 4)))
    out.append(("gguf", "quant-blocks.gguf", "tensor-count-2p60", patched(8, 1 << 60)))
    out.append(("gguf", "quant-blocks.gguf", "metadata-count-2p64-1", patched(16, .max)))
    out.append(("gguf", "quant-blocks.gguf", "first-key-length-2p64-1", patched(24, .max)))
    out.append(("gguf", "quant-blocks.gguf", "truncated-header", Array(gguf.prefix(200))))
    out.append(("gguf", "quant-blocks.gguf", "truncated-data", Array(gguf.prefix(gguf.count - 100))))
    // The tensor info of "q.Q4_K": its name, then n_dims u32, ne u64 × n_dims, type u32, offset u64.
    let name = Array("q.Q4_K".utf8)
    if let at = (0...(gguf.count - name.count)).first(where: { Array(gguf[$0..<($0 + name.count)]) == name }) {
        let dims = at + name.count, ne0 = dims + 4
        let type = ne0 + 8 * 2, offset = type + 4
        out.append(("gguf", "quant-blocks.gguf", "offset-near-2p64", patched(offset, UInt64.max - 255)))
        out.append(("gguf", "quant-blocks.gguf", "ne1-2p31", patched(ne0 + 8, 1 << 31)))
        out.append(("gguf", "quant-blocks.gguf", "ne0-not-whole-blocks", patched(ne0, 300)))
        out.append(("gguf", "quant-blocks.gguf", "n-dims-5", patched(dims, 5, bytes: 4)))
        out.append(("gguf", "quant-blocks.gguf", "type-99", patched(type, 99, bytes: 4)))
        out.append(("gguf", "quant-blocks.gguf", "type-IQ2_XXS", patched(type, 16, bytes: 4)))
    }

    // GGUF sums files: numbers past any count, hex that overflows, deep nesting, a layer list as long as the file
    // allows, a sums file that claims every byte of the model is fine when it is not (a valid file's sums on
    // another file's bytes).
    let sumsTarget = "kimi_k2_q2_k.gguf" + GGUFSums.suffix
    let sums = try json(read(.gguf, sumsTarget))
    func sumsEdited(_ edit: (inout [String: Any]) -> Void) throws -> [UInt8] {
        var s = sums
        edit(&s)
        return try bytes(s)
    }
    out.append(("gguf-sums", sumsTarget, "file-bytes-2p63", try sumsEdited { s in
        var files = s["files"] as! [[String: Any]]
        files[0]["bytes"] = Int.max
        s["files"] = files
    }))
    out.append(("gguf-sums", sumsTarget, "layer-2p62-and-negative", try sumsEdited { s in
        var experts = s["experts"] as! [[String: Any]]
        experts[0]["layer"] = 1 << 62
        experts.append(["layer": -1, "sums": []])
        s["experts"] = experts
    }))
    out.append(("gguf-sums", sumsTarget, "hex-17-digits", try sumsEdited { s in
        var experts = s["experts"] as! [[String: Any]]
        var list = experts[0]["sums"] as! [String]
        list[0] = "fffffffffffffffff"
        experts[0]["sums"] = list
        s["experts"] = experts
    }))
    out.append(("gguf-sums", sumsTarget, "nested-100000", Array(String(repeating: "[", count: 100_000).utf8)))
    out.append(("gguf-sums", sumsTarget, "sums-of-another-file", read(.gguf, "kimi_k2_q4_k_m.gguf" + GGUFSums.suffix)))

    // Routing traces: counts that overran tables or divided by zero.
    let trace = read(.traces, "kimi_k2.trace")
    let lines = trace.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
    let body = Array(lines.dropFirst().joined(separator: [UInt8(ascii: "\n")]))
    for (name, header) in [
        ("experts-zero", #"{"experts":0,"extent_bytes":4096,"format":"moestream-trace","moe_layers":[1,2],"prefetch_depth":1,"top_k":8,"version":1}"#),
        ("experts-2p40", #"{"experts":1099511627776,"extent_bytes":4096,"format":"moestream-trace","moe_layers":[1,2],"prefetch_depth":1,"top_k":8,"version":1}"#),
        ("extent-bytes-zero", #"{"experts":32,"extent_bytes":0,"format":"moestream-trace","moe_layers":[1,2],"prefetch_depth":1,"top_k":8,"version":1}"#),
        ("layers-twice", #"{"experts":32,"extent_bytes":4096,"format":"moestream-trace","moe_layers":[1,1],"prefetch_depth":1,"top_k":8,"version":1}"#),
        ("top-k-negative", #"{"experts":32,"extent_bytes":4096,"format":"moestream-trace","moe_layers":[1,2],"prefetch_depth":1,"top_k":-8,"version":1}"#),
    ] {
        out.append(("trace", "kimi_k2.trace", name, Array(header.utf8) + [UInt8(ascii: "\n")] + body))
    }
    out.append(("trace", "kimi_k2.trace", "prediction-expert-out-of-range",
                Array(lines[0]) + Array("\n{\"after\":1,\"p\":{\"2\":[99999]},\"s\":1}\n".utf8)))
    return out
}
