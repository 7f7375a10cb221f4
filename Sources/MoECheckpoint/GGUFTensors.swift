import MoETensor

/// A GGUF model's tensors under their transformers names, so the model's loader reads a GGUF as it reads a
/// safetensors checkpoint: matrices stay in their GGML types over the mapped file (`WeightMatrix.Encoding.ggml`,
/// F32/F16/BF16 as themselves), everything else is decoded to fp32 (`GGMLDequantize`, bit-exact to gguf-py).
///
/// llama.cpp's `convert_hf_to_gguf.py` renames every tensor (`blk.3.attn_q_a.weight`), stacks each layer's routed
/// experts into one [experts, rows, cols] tensor per projection (`ffn_gate_exps`), and since mid-2025 splits MLA's
/// `kv_b_proj` into `attn_k_b` (per head, transposed: [heads, kv_lora, nope]) and `attn_v_b` ([heads, v, kv_lora]);
/// older files keep `attn_kv_b`. Both forms are read; the split one is put back together row for row.
public final class GGUFTensors: TensorSource, @unchecked Sendable {  // immutable after init
    public let gguf: GGUFCheckpoint
    public let config: ModelConfig
    /// Matrices copied into memory the process owns rather than viewed in the mapping, so a file truncated or
    /// rewritten under a running model can neither raise SIGBUS nor change its weights (as a store's resident file
    /// is copied); used when the experts stream from the file and only the resident set is loaded.
    public let copy: Bool

    public init(gguf: GGUFCheckpoint, config: ModelConfig, copy: Bool = false) {
        self.gguf = gguf
        self.config = config
        self.copy = copy
    }

    public var directory: String { gguf.path }

    /// What a transformers name is made from in the file.
    enum Origin: Equatable {
        case tensor(String)
        /// Expert `index` of a stacked [experts, rows, cols] tensor.
        case expert(String, index: Int)
        /// kv_b_proj from the split pair.
        case splitKVB(kB: String, vB: String)
    }

    public static let layerNames: [String: String] = [
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_a_proj.weight": "attn_q_a.weight",
        "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
        "self_attn.q_b_proj.weight": "attn_q_b.weight",
        "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
        "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "mlp.gate.weight": "ffn_gate_inp.weight",
        "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
        "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
        "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
        "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    ]

    /// The GGUF origin of a transformers tensor name, or nil when the name has no counterpart.
    func origin(_ name: String) -> Origin? {
        switch name {
        case "model.embed_tokens.weight": return .tensor("token_embd.weight")
        case "model.norm.weight": return .tensor("output_norm.weight")
        case "lm_head.weight": return .tensor("output.weight")
        default: break
        }
        let parts = name.split(separator: ".", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]) else { return nil }
        let rest = parts[3], blk = "blk.\(l)."
        if let mapped = Self.layerNames[rest] { return .tensor(blk + mapped) }
        if rest == "self_attn.kv_b_proj.weight" {
            if gguf.contains(blk + "attn_kv_b.weight") { return .tensor(blk + "attn_kv_b.weight") }
            return .splitKVB(kB: blk + "attn_k_b.weight", vB: blk + "attn_v_b.weight")
        }
        // mlp.experts.E.gate_proj.weight
        let e = rest.split(separator: ".").map(String.init)
        if e.count == 5, e[0] == "mlp", e[1] == "experts", let index = Int(e[2]), e[4] == "weight",
           let proj = ["gate_proj": "gate", "up_proj": "up", "down_proj": "down"][e[3]] {
            return .expert(blk + "ffn_\(proj)_exps.weight", index: index)
        }
        return nil
    }

    public func contains(_ name: String) -> Bool {
        switch origin(name) {
        case .tensor(let t): return gguf.contains(t)
        case .expert(let t, let index): return gguf.info(t).map { index >= 0 && index < ($0.tensor.ne.count == 3 ? $0.tensor.ne[2] : 0) } ?? false
        case .splitKVB(let k, let v): return gguf.contains(k) && gguf.contains(v)
        case nil: return false
        }
    }

    public func path(of name: String) -> String {
        switch origin(name) {
        case .tensor(let t), .expert(let t, _), .splitKVB(let t, _): return gguf.info(t)?.file.path ?? gguf.path
        case nil: return gguf.path
        }
    }

    /// Matrices as the file stores them, zero-copy: one tensor, or one expert's slice of a stacked tensor. kv_b is
    /// left to `tensor` (attention slices it by head, which needs a dense encoding).
    public func matrix(_ name: String, rows: Int, cols: Int) throws(CheckpointError) -> WeightMatrix? {
        guard let origin = origin(name), contains(name) else { return nil }
        let (t, index): (String, Int?)
        switch origin {
        case .tensor(let n): (t, index) = (n, nil)
        case .expert(let n, let i): (t, index) = (n, i)
        case .splitKVB: return nil
        }
        if name.hasSuffix("kv_b_proj.weight") { return nil }
        let (file, info) = gguf.info(t)!
        let expected = index == nil ? [rows, cols] : [info.ne.count == 3 ? info.ne[2] : -1, rows, cols]
        guard info.shape == expected else { throw .wrongShape(file: file.path, tensor: t, expected: expected, actual: info.shape) }
        guard info.type.canDequantize else { throw .unsupportedTypes(file: file.path, types: [info.type.description: [t]]) }
        let bytes = file.bytes(of: info)
        let per = info.range.count / (index == nil ? 1 : info.ne[2])
        var data = UnsafeRawPointer(bytes.baseAddress!) + (index ?? 0) * per
        var owner: AnyObject = gguf
        if copy {
            let buffer = AlignedBuffer(byteCount: per)
            buffer.pointer.copyMemory(from: data, byteCount: per)
            file.release(info)
            (data, owner) = (UnsafeRawPointer(buffer.pointer), buffer)
        }
        let encoding: WeightMatrix.Encoding
        switch info.type {
        case .f32: encoding = .f32
        case .f16: encoding = .f16
        case .bf16: encoding = .bf16
        default: encoding = .ggml(info.type)
        }
        return WeightMatrix(rows: rows, cols: cols, data: data, encoding: encoding, owners: [owner])
    }

    public func tensor(_ name: String, shape: [Int]) throws(CheckpointError) -> Tensor {
        guard let origin = origin(name), contains(name) else {
            throw .missingTensor(tensor: name, searched: gguf.path + " (as its GGUF name)")
        }
        switch origin {
        case .tensor(let t):
            // A vector may be stored [n] or [1, n]; matrices must match exactly.
            let info = gguf.info(t)!.tensor
            if shape.count == 1, info.elements == shape[0] { return try gguf.floats(t).reshaped(name: name, shape) }
            return try gguf.floats(t, shape: shape).reshaped(name: name, shape)
        case .expert(let t, let index):
            let (file, info) = gguf.info(t)!
            let one = Array(info.shape.dropFirst())
            guard one == shape else { throw .wrongShape(file: file.path, tensor: t, expected: [info.ne[2]] + shape, actual: info.shape) }
            guard info.type.canDequantize else { throw .unsupportedTypes(file: file.path, types: [info.type.description: [t]]) }
            let bytes = file.bytes(of: info)
            let per = info.range.count / info.ne[2], count = shape.reduce(1, *)
            let out = AlignedBuffer(byteCount: count * 4)
            GGMLDequantize.values(info.type, from: bytes.baseAddress! + index * per, count: count,
                                  into: out.pointer.bindMemory(to: Float.self, capacity: count))
            return Tensor(name: name, dtype: .f32, shape: shape, data: UnsafeRawPointer(out.pointer), byteCount: count * 4, owner: out)
        case .splitKVB(let kName, let vName):
            // kv_b rows, per head h: nope rows of K (column j of k_b[h]) then v rows of V (row i of v_b[h]).
            let c = config
            let (H, nope, v, r) = (c.numHeads, c.qkNopeHeadDim, c.vHeadDim, c.kvLoraRank)
            guard shape == [H * (nope + v), r] else {
                throw .wrongShape(file: path(of: name), tensor: name, expected: [H * (nope + v), r], actual: shape)
            }
            let kb = try gguf.floats(kName, shape: [H, r, nope]).floats()
            let vb = try gguf.floats(vName, shape: [H, v, r]).floats()
            var out = [Float](repeating: 0, count: H * (nope + v) * r)
            for h in 0..<H {
                let base = h * (nope + v) * r
                for i in 0..<nope { for j in 0..<r { out[base + i * r + j] = kb[(h * r + j) * nope + i] } }
                for i in 0..<v { for j in 0..<r { out[base + (nope + i) * r + j] = vb[(h * v + i) * r + j] } }
            }
            return Tensor.f32(name: name, shape: shape, values: out)
        }
    }
}
