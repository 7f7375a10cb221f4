import MoECheckpoint
import MoETensor

/// Builds the model's weights from a Hugging Face checkpoint (or a GGUF seen through transformers names,
/// `GGUFTensors`): finds each tensor by its transformers name, checks its shape against the configuration, and
/// wraps it, zero-copy, in the encoding it is stored in.
public struct CheckpointWeights {
    public let checkpoint: any TensorSource
    public let config: ModelConfig
    /// Whether a U8 Linear weight with `weight_scale` is int8 in `Int8Interleaved`'s layout: true only for a store's
    /// resident.safetensors (what `convert --resident int8` writes); elsewhere U8 weights are refused.
    public let interleavedInt8: Bool

    public init(checkpoint: any TensorSource, config: ModelConfig, interleavedInt8: Bool = false) {
        self.checkpoint = checkpoint
        self.config = config
        self.interleavedInt8 = interleavedInt8
    }

    /// Full tensor name for `base` ("model.layers.3.self_attn.kv_b_proj") plus a suffix.
    func name(_ base: String, _ suffix: String) -> String { config.tensorPrefix + base + suffix }

    /// The Linear weight `base.weight` as `[rows, cols]`, in F32, BF16, F16, block FP8 with `weight_scale_inv`, or
    /// I8 with `weight_scale` [rows, cols/32] (F32 or BF16: a store converted with `--resident int8`), or in a store
    /// (`interleavedInt8`) U8 with `weight_scale`: int8 interleaved by 8 rows (`Int8Interleaved`, scales in its order).
    public func matrix(_ base: String, rows: Int, cols: Int) throws(CheckpointError) -> WeightMatrix {
        let weightName = name(base, ".weight")
        if let m = try checkpoint.matrix(weightName, rows: rows, cols: cols) { return m }
        guard checkpoint.contains(weightName) else {
            if checkpoint.contains(name(base, ".weight_packed")) {
                throw .wrongDType(file: checkpoint.path(of: name(base, ".weight_packed")), tensor: name(base, ".weight_packed"),
                                  expected: "BF16/F32/F16/F8_E4M3 (convert INT4 pack-quantized sources to a store)",
                                  actual: "I32 packed int4")
            }
            throw .missingTensor(tensor: weightName, searched: checkpoint.directory)
        }
        let t = try checkpoint.tensor(weightName, shape: [rows, cols])
        switch t.dtype {
        case .f32: return WeightMatrix(rows: rows, cols: cols, data: t.data, encoding: .f32, owners: [t.owner])
        case .bf16: return WeightMatrix(rows: rows, cols: cols, data: t.data, encoding: .bf16, owners: [t.owner])
        case .f16: return WeightMatrix(rows: rows, cols: cols, data: t.data, encoding: .f16, owners: [t.owner])
        case .f8e4m3:
            var (br, bc) = (128, 128)
            if case .fp8Block(let r, let c) = config.quantization { (br, bc) = (r, c) }
            let scaleName = name(base, ".weight_scale_inv")
            guard checkpoint.contains(scaleName) else {
                throw .missingTensor(tensor: scaleName, searched: checkpoint.path(of: weightName) + " (FP8 weight without its block scales)")
            }
            let shape = [(rows + br - 1) / br, (cols + bc - 1) / bc]
            let s = try checkpoint.tensor(scaleName, shape: shape)
            guard s.dtype.isFloatingPoint, s.dtype != .f8e4m3 else {
                throw .wrongDType(file: checkpoint.path(of: scaleName), tensor: scaleName, expected: "F32", actual: s.dtype.rawValue)
            }
            let scales = AlignedBuffer(byteCount: shape[0] * shape[1] * 4)
            let sp = scales.pointer.assumingMemoryBound(to: Float.self)
            for i in 0..<(shape[0] * shape[1]) { sp[i] = s.float(at: i) }
            return WeightMatrix(rows: rows, cols: cols, data: t.data,
                                encoding: .fp8Block(scales: UnsafePointer(sp), blockRows: br, blockCols: bc),
                                owners: [t.owner, scales])
        case .i8, .u8 where interleavedInt8:
            let interleaved = t.dtype == .u8
            let scaleName = name(base, ".weight_scale")
            guard cols % 32 == 0, checkpoint.contains(scaleName) else {
                throw .missingTensor(tensor: scaleName, searched: checkpoint.path(of: weightName)
                                     + " (an \(t.dtype.rawValue) weight needs its scales per 32 values, and columns in groups of 32)")
            }
            guard !interleaved || Int8Interleaved.fits(rows: rows, cols: cols) else {
                throw .wrongDType(file: checkpoint.path(of: weightName), tensor: weightName,
                                  expected: "I8 (U8 holds int8 interleaved by 8 rows, and this matrix has \(rows) rows)", actual: "U8")
            }
            let s = try checkpoint.tensor(scaleName, shape: [rows, cols / 32])
            guard s.dtype == .f32 || s.dtype == .bf16 else {
                throw .wrongDType(file: checkpoint.path(of: scaleName), tensor: scaleName, expected: "F32 or BF16", actual: s.dtype.rawValue)
            }
            let scales = UnsafeRawPointer(s.data), type: WeightMatrix.ScaleType = s.dtype == .f32 ? .f32 : .bf16
            return WeightMatrix(rows: rows, cols: cols, data: t.data,
                                encoding: interleaved ? .int8g32x8(scales: scales, scaleType: type) : .int8g32(scales: scales, scaleType: type),
                                owners: [t.owner, s.owner])
        default:
            throw .wrongDType(file: checkpoint.path(of: weightName), tensor: weightName,
                              expected: "F32, BF16, F16, F8_E4M3 or I8" + (interleavedInt8 ? " (or U8: interleaved int8)" : ""),
                              actual: t.dtype.rawValue)
        }
    }

    /// A small vector (norm weight, bias) widened to fp32.
    public func vector(_ fullBase: String, count: Int) throws(CheckpointError) -> [Float] {
        let n = config.tensorPrefix + fullBase
        let t = try checkpoint.tensor(n, shape: [count])
        guard t.dtype.isFloatingPoint else {
            throw .wrongDType(file: checkpoint.path(of: n), tensor: n, expected: "a float type", actual: t.dtype.rawValue)
        }
        return t.floats()
    }

    func mlp(_ base: String, inter: Int) throws(CheckpointError) -> MLPWeights {
        let h = config.hiddenSize
        return MLPWeights(gate: try matrix(base + ".gate_proj", rows: inter, cols: h),
                          up: try matrix(base + ".up_proj", rows: inter, cols: h),
                          down: try matrix(base + ".down_proj", rows: h, cols: inter))
    }

    /// Every resident weight, shape-checked. Routed experts are not touched here.
    public func resident() throws(CheckpointError) -> ResidentWeights {
        let c = config
        var layers: [LayerWeights] = []
        for l in 0..<c.numLayers {
            let p = "model.layers.\(l)"
            let query: AttentionWeights.Query
            if let qr = c.qLoraRank {
                query = .lowRank(a: try matrix(p + ".self_attn.q_a_proj", rows: qr, cols: c.hiddenSize),
                                 norm: try vector(p + ".self_attn.q_a_layernorm.weight", count: qr),
                                 b: try matrix(p + ".self_attn.q_b_proj", rows: c.numHeads * c.qkHeadDim, cols: qr))
            } else {
                query = .full(try matrix(p + ".self_attn.q_proj", rows: c.numHeads * c.qkHeadDim, cols: c.hiddenSize))
            }
            let attention = AttentionWeights(
                query: query,
                kvA: try matrix(p + ".self_attn.kv_a_proj_with_mqa", rows: c.kvLoraRank + c.qkRopeHeadDim, cols: c.hiddenSize),
                kvANorm: try vector(p + ".self_attn.kv_a_layernorm.weight", count: c.kvLoraRank),
                kvB: try matrix(p + ".self_attn.kv_b_proj", rows: c.numHeads * (c.qkNopeHeadDim + c.vHeadDim), cols: c.kvLoraRank),
                output: try matrix(p + ".self_attn.o_proj", rows: c.hiddenSize, cols: c.numHeads * c.vHeadDim))
            let ffn: LayerWeights.FeedForward
            if c.isMoE(layer: l) {
                let shared = c.numSharedExperts > 0
                    ? try mlp(p + ".mlp.shared_experts", inter: c.moeIntermediateSize * c.numSharedExperts) : nil
                ffn = .moe(MoEWeights(router: try matrix(p + ".mlp.gate", rows: c.numRoutedExperts, cols: c.hiddenSize),
                                      correctionBias: try correctionBias(layer: l), shared: shared))
            } else {
                ffn = .dense(try mlp(p + ".mlp", inter: c.intermediateSize))
            }
            layers.append(LayerWeights(
                inputNorm: try vector(p + ".input_layernorm.weight", count: c.hiddenSize),
                attention: attention,
                postAttentionNorm: try vector(p + ".post_attention_layernorm.weight", count: c.hiddenSize),
                feedForward: ffn))
        }
        let embedding = try matrix("model.embed_tokens", rows: c.vocabSize, cols: c.hiddenSize)
        let lmHead = c.tieWordEmbeddings && !checkpoint.contains(name("lm_head", ".weight"))
            ? embedding : try matrix("lm_head", rows: c.vocabSize, cols: c.hiddenSize)
        return ResidentWeights(embedding: embedding, layers: layers,
                               finalNorm: try vector("model.norm.weight", count: c.hiddenSize), lmHead: lmHead)
    }

    /// The noaux_tc correction bias; checkpoints without one (older DeepSeek) route by scores alone.
    func correctionBias(layer l: Int) throws(CheckpointError) -> [Float] {
        let base = "model.layers.\(l).mlp.gate.e_score_correction_bias"
        guard checkpoint.contains(config.tensorPrefix + base) else {
            return [Float](repeating: 0, count: config.numRoutedExperts)
        }
        return try vector(base, count: config.numRoutedExperts)
    }

    /// Routed expert `e` of layer `l`.
    public func expert(layer l: Int, _ e: Int) throws(CheckpointError) -> ExpertWeights {
        let m = try mlp("model.layers.\(l).mlp.experts.\(e)", inter: config.moeIntermediateSize)
        return ExpertWeights(gate: m.gate, up: m.up, down: m.down)
    }
}

/// Routed experts served straight from the memory-mapped checkpoint. Every expert is resolved and shape-checked
/// at load, so a missing or malformed expert is an error before the first token, not in the middle of one.
/// Sendable: immutable after init (`experts` is a `let` table of views into the read-only checkpoint).
public final class CheckpointExperts: ExpertProviding, @unchecked Sendable {
    /// [layer][expert]; empty for dense layers.
    private let experts: [[ExpertWeights]]

    public init(_ weights: CheckpointWeights) throws(CheckpointError) {
        var table: [[ExpertWeights]] = []
        for l in 0..<weights.config.numLayers {
            var row: [ExpertWeights] = []
            if weights.config.isMoE(layer: l) {
                for e in 0..<weights.config.numRoutedExperts { row.append(try weights.expert(layer: l, e)) }
            }
            table.append(row)
        }
        experts = table
    }

    public func withExperts(layer: Int, _ ids: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        for e in ids { try body(e, experts[layer][e]) }
    }
}
