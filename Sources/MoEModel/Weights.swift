import MoETensor

/// A SwiGLU MLP: the dense layers' FFN, the shared experts, and (shape-wise) each routed expert.
public struct MLPWeights: Sendable {
    public let gate: WeightMatrix  // [inter, hidden]
    public let up: WeightMatrix    // [inter, hidden]
    public let down: WeightMatrix  // [hidden, inter]
}

/// Multi-head latent attention of one layer.
public struct AttentionWeights: Sendable {
    public enum Query: Sendable {
        /// `q = q_b(RMSNorm(q_a(x)))` (Kimi K2, DeepSeek-V3)
        case lowRank(a: WeightMatrix, norm: [Float], b: WeightMatrix)  // a [q_lora, hidden], b [heads·192, q_lora]
        /// `q = q_proj(x)`
        case full(WeightMatrix)  // [heads·192, hidden]
    }
    public let query: Query
    public let kvA: WeightMatrix      // [kv_lora + rope, hidden]
    public let kvANorm: [Float]       // [kv_lora]
    public let kvB: WeightMatrix      // [heads·(nope + v), kv_lora]
    public let output: WeightMatrix   // [hidden, heads·v]
}

/// The router of an MoE layer and its always-on shared experts. Routed experts come from an `ExpertProviding`.
public struct MoEWeights: Sendable {
    public let router: WeightMatrix          // [n_routed, hidden], applied in fp32
    public let correctionBias: [Float]       // [n_routed]: only for choosing, never for weighting
    public let shared: MLPWeights?
}

public struct LayerWeights: Sendable {
    public enum FeedForward: Sendable {
        case dense(MLPWeights)
        case moe(MoEWeights)
    }
    public let inputNorm: [Float]           // [hidden]
    public let attention: AttentionWeights
    public let postAttentionNorm: [Float]   // [hidden]
    public let feedForward: FeedForward
}

/// Everything that stays resident: embeddings, attention, dense layers, routers, shared experts, norms, lm_head.
public struct ResidentWeights: Sendable {
    public let embedding: WeightMatrix  // [vocab, hidden]
    public let layers: [LayerWeights]
    public let finalNorm: [Float]       // [hidden]
    public let lmHead: WeightMatrix     // [vocab, hidden]

    /// Whether the resident matrices are int8 laid out for the two-part tiles (a store converted with
    /// `--resident int8`): lm_head and kv_a are, whenever the store's are.
    public var hasInterleavedInt8: Bool { lmHead.takesQ16 || layers.contains { $0.attention.kvA.takesQ16 } }
}
