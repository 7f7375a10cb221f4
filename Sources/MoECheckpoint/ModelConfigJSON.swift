import Foundation

extension ModelConfig {
    /// The config.json object that `parse` reads back as this configuration (a store converted from a GGUF carries
    /// it, so the store loads like any other). Floats go through Double exactly, so the round trip is exact.
    public func configJSON() -> [String: Any] {
        var j: [String: Any] = [
            "model_type": modelType, "architectures": ["DeepseekV3ForCausalLM"],
            "vocab_size": vocabSize, "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
            "moe_intermediate_size": moeIntermediateSize, "num_hidden_layers": numLayers,
            "num_attention_heads": numHeads, "num_key_value_heads": numHeads,
            "n_shared_experts": numSharedExperts, "n_routed_experts": numRoutedExperts,
            "num_experts_per_tok": expertsPerToken, "n_group": nGroup, "topk_group": topkGroup,
            "routed_scaling_factor": Double(routedScalingFactor), "norm_topk_prob": normTopkProb,
            "first_k_dense_replace": firstKDenseReplace, "moe_layer_freq": moeLayerFreq,
            "kv_lora_rank": kvLoraRank, "qk_nope_head_dim": qkNopeHeadDim, "qk_rope_head_dim": qkRopeHeadDim,
            "v_head_dim": vHeadDim, "max_position_embeddings": maxPositionEmbeddings,
            "rms_norm_eps": Double(rmsNormEps), "rope_theta": rope.theta, "rope_interleave": ropeInterleave,
            "tie_word_embeddings": tieWordEmbeddings, "hidden_act": "silu", "scoring_func": "sigmoid",
            "topk_method": "noaux_tc", "eos_token_id": eosTokenIds,
        ]
        j["q_lora_rank"] = qLoraRank.map { $0 as Any } ?? NSNull()
        if let b = bosTokenId { j["bos_token_id"] = b }
        if rope.kind == .yarn {
            var s: [String: Any] = ["type": "yarn", "factor": rope.factor,
                                    "original_max_position_embeddings": rope.originalMaxPositionEmbeddings,
                                    "beta_fast": rope.betaFast, "beta_slow": rope.betaSlow, "truncate": rope.truncate]
            if let m = rope.mscale { s["mscale"] = m }
            if let m = rope.mscaleAllDim { s["mscale_all_dim"] = m }
            if let a = rope.attentionFactor { s["attention_factor"] = a }
            j["rope_scaling"] = s
        }
        return j
    }
}
