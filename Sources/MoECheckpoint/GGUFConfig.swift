import Foundation

/// The model's shape from a GGUF file's metadata: llama.cpp's `deepseek2` architecture, as its
/// `convert_hf_to_gguf.py` writes Kimi K2 and DeepSeek-V3 (`deepseek2.*` keys), mapped onto `ModelConfig` and
/// checked by the same rules as a config.json. An error names the GGUF key.
extension ModelConfig {
    /// GGUF key (without the `deepseek2.` prefix) → the config.json key it stands for, for error messages.
    static let ggufKeys: [String: String] = [
        "vocab_size": "vocab_size", "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
        "expert_feed_forward_length": "moe_intermediate_size", "block_count": "num_hidden_layers",
        "attention.head_count": "num_attention_heads", "expert_shared_count": "n_shared_experts",
        "expert_count": "n_routed_experts", "expert_used_count": "num_experts_per_tok",
        "expert_group_count": "n_group", "expert_group_used_count": "topk_group",
        "expert_weights_scale": "routed_scaling_factor", "leading_dense_block_count": "first_k_dense_replace",
        "attention.q_lora_rank": "q_lora_rank", "attention.kv_lora_rank": "kv_lora_rank",
        "rope.dimension_count": "qk_rope_head_dim", "attention.key_length_mla": "qk_nope_head_dim",
        "attention.value_length_mla": "v_head_dim", "context_length": "max_position_embeddings",
        "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
        "rope.scaling.factor": "rope_scaling.factor", "rope.scaling.yarn_beta_fast": "rope_scaling.beta_fast",
        "rope.scaling.yarn_beta_slow": "rope_scaling.beta_slow",
        "rope.scaling.yarn_log_multiplier": "rope_scaling.mscale_all_dim",
        "rope.scaling.original_context_length": "rope_scaling.original_max_position_embeddings",
    ]

    public static func fromGGUF(_ g: GGUFCheckpoint) throws(CheckpointError) -> ModelConfig {
        let m = g.metadata
        let file = g.path
        guard let arch = m["general.architecture"]?.string else {
            throw .badConfig(file: file, key: "general.architecture", reason: "missing")
        }
        guard arch == "deepseek2" else {
            throw .badConfig(file: file, key: "general.architecture", reason:
                "'\(arch)' is not supported (deepseek2: Kimi K2, DeepSeek-V3 as llama.cpp converts them)")
        }
        let a = arch + "."
        func value(_ key: String) -> GGUFValue? { m[a + key] }
        func int(_ key: String) throws(CheckpointError) -> Int? {
            guard let v = value(key) else { return nil }
            guard let n = v.int else { throw .badConfig(file: file, key: a + key, reason: "\(v.summary) is not an integer") }
            return n
        }
        func required(_ key: String) throws(CheckpointError) -> Int {
            guard let n = try int(key) else { throw .badConfig(file: file, key: a + key, reason: "missing") }
            return n
        }
        func double(_ key: String) throws(CheckpointError) -> Double? {
            guard let v = value(key) else { return nil }
            guard let d = v.double else { throw .badConfig(file: file, key: a + key, reason: "\(v.summary) is not a number") }
            return d
        }

        // Routing: K2 and V3 score experts with a sigmoid. A file without the key is DeepSeek V2's softmax.
        let gating = try int("expert_gating_func")
        let experts = try int("expert_count") ?? 0
        if experts > 0 && gating != 2 {
            throw .badConfig(file: file, key: a + "expert_gating_func", reason: gating == nil
                ? "missing, which llama.cpp reads as softmax routing (DeepSeek V2); this build runs sigmoid routing (2)"
                : "\(gating!) is not supported (only 2, sigmoid)")
        }
        let rope = try required("rope.dimension_count")
        // MLA files (llama.cpp since mid-2025) give the per-head sizes in the *_mla keys and the latent sizes in
        // key_length/value_length; older files give the per-head sizes there.
        let keyLengthMLA = try int("attention.key_length_mla"), valueLengthMLA = try int("attention.value_length_mla")
        var keyLength = keyLengthMLA ?? 0, valueLength = valueLengthMLA ?? 0
        if keyLengthMLA == nil { keyLength = try required("attention.key_length") }
        if valueLengthMLA == nil { valueLength = try required("attention.value_length") }
        let vocab = try int("vocab_size") ?? m["tokenizer.ggml.tokens"]?.array?.count
            ?? g.info("token_embd.weight")?.tensor.ne.last ?? 0
        var ropeConfig = RopeConfig(kind: .plain, theta: try double("rope.freq_base") ?? 10000)
        if let type = value("rope.scaling.type") {
            switch type.string {
            case "yarn":
                let logMul = try double("rope.scaling.yarn_log_multiplier")
                ropeConfig = RopeConfig(
                    kind: .yarn, theta: ropeConfig.theta, factor: try double("rope.scaling.factor") ?? 1,
                    originalMaxPositionEmbeddings: try int("rope.scaling.original_context_length") ?? 4096,
                    betaFast: try double("rope.scaling.yarn_beta_fast") ?? 32,
                    betaSlow: try double("rope.scaling.yarn_beta_slow") ?? 1,
                    // llama.cpp writes 0.1 · mscale_all_dim here and applies it as both YaRN mscales; Kimi K2 and
                    // DeepSeek-V3 have mscale = mscale_all_dim.
                    mscale: logMul.map { $0 / 0.1 }, mscaleAllDim: logMul.map { $0 / 0.1 })
            case "none", "linear" where (try double("rope.scaling.factor") ?? 1) == 1:
                break
            default:
                throw .badConfig(file: file, key: a + "rope.scaling.type", reason: "\(type.summary) is not supported (yarn or none)")
            }
        }
        let tied = !g.contains("output.weight")
        var eos: [Int] = []
        if let e = m["tokenizer.ggml.eos_token_id"]?.int { eos.append(e) }
        var c = ModelConfig(
            modelType: m["tokenizer.ggml.pre"]?.string == "kimi-k2" ? "kimi_k2" : "deepseek_v3",
            vocabSize: vocab,
            hiddenSize: try required("embedding_length"),
            intermediateSize: try int("feed_forward_length") ?? 0,
            moeIntermediateSize: try int("expert_feed_forward_length") ?? 0,
            numLayers: try required("block_count"),
            numHeads: try required("attention.head_count"),
            numSharedExperts: try int("expert_shared_count") ?? 0,
            numRoutedExperts: experts,
            expertsPerToken: try int("expert_used_count") ?? 0,
            nGroup: try int("expert_group_count") ?? 1,
            topkGroup: try int("expert_group_used_count") ?? 1,
            routedScalingFactor: Float(try double("expert_weights_scale") ?? 1),
            normTopkProb: value("expert_weights_norm")?.bool ?? false,
            firstKDenseReplace: try int("leading_dense_block_count") ?? 0,
            moeLayerFreq: 1,
            qLoraRank: try int("attention.q_lora_rank"),
            kvLoraRank: try required("attention.kv_lora_rank"),
            qkNopeHeadDim: keyLength - rope,
            qkRopeHeadDim: rope,
            vHeadDim: valueLength,
            maxPositionEmbeddings: try int("context_length") ?? 4096,
            rmsNormEps: Float(try double("attention.layer_norm_rms_epsilon") ?? 1e-6),
            rope: ropeConfig,
            ropeInterleave: true,
            tieWordEmbeddings: tied,
            bosTokenId: m["tokenizer.ggml.bos_token_id"]?.int,
            eosTokenIds: eos,
            tensorPrefix: "",
            quantization: nil)
        do throws(CheckpointError) { try c.validate(file: file) } catch {
            // Name the GGUF key the value came from.
            guard case .badConfig(let f, let key, let reason) = error else { throw error }
            let ggufKey = ggufKeys.first { $0.value == key }.map { a + $0.key }
                ?? (key == "eos_token_id" || key == "bos_token_id" ? "tokenizer.ggml." + key : key)
            throw .badConfig(file: f, key: ggufKey, reason: reason)
        }
        if c.numRoutedExperts == 0 { c.expertsPerToken = 0 }
        return c
    }
}
