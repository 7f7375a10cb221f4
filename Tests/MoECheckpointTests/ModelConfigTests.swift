import Foundation
import Testing
import MoETestSupport
@testable import MoECheckpoint

@Suite struct ModelConfigTests {
    func parse(_ json: String) throws(CheckpointError) -> ModelConfig {
        try ModelConfig.parse(Data(json.utf8), file: "config.json")
    }

    /// Kimi K2 Instruct's config.json, as released (rope_scaling + rope_theta, model_type kimi_k2).
    static let kimiK2Release = """
    {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "vocab_size": 163840,
     "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
     "num_attention_heads": 64, "num_key_value_heads": 64, "n_shared_experts": 1, "n_routed_experts": 384,
     "routed_scaling_factor": 2.827, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
     "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1,
     "num_experts_per_tok": 8, "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": true,
     "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-06,
     "rope_theta": 50000.0, "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0,
     "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
     "tie_word_embeddings": false, "bos_token_id": 163584, "eos_token_id": 163585,
     "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
     "weight_block_size": [128, 128]}}
    """

    @Test func kimiK2Release() throws {
        let c = try parse(Self.kimiK2Release)
        #expect(c.modelType == "kimi_k2")
        #expect(c.numLayers == 61 && c.moeLayers.count == 60 && !c.isMoE(layer: 0) && c.isMoE(layer: 1))
        #expect(c.numRoutedExperts == 384 && c.expertsPerToken == 8 && c.nGroup == 1)
        #expect(c.rope == RopeConfig(kind: .yarn, theta: 50000, factor: 32, originalMaxPositionEmbeddings: 4096,
                                     betaFast: 1, betaSlow: 1, mscale: 1, mscaleAllDim: 1))
        #expect(c.quantization == .fp8Block(blockRows: 128, blockCols: 128))
        #expect(c.eosTokenIds == [163585] && c.bosTokenId == 163584)
        #expect(c.tensorPrefix == "")
    }

    @Test func kimiK25TextConfigWithPrefix() throws {
        let inner = Self.kimiK2Release.replacingOccurrences(of: "\"kimi_k2\"", with: "\"kimi_k2\"")
        let wrapped = """
        {"model_type": "kimi_k25", "architectures": ["KimiK25ForConditionalGeneration"],
         "text_config": \(inner), "vision_config": {"hidden_size": 1152}}
        """
        let c = try parse(wrapped)
        #expect(c.tensorPrefix == "language_model.")
        #expect(c.hiddenSize == 7168 && c.numRoutedExperts == 384)
    }

    @Test func transformers5RopeParameters() throws {
        let c = try ModelConfig.load(path: Fixtures.model("deepseek_v3"))
        #expect(c.rope.kind == .yarn && c.rope.theta == 10000 && c.rope.factor == 40)
        #expect(c.rope.mscale == 0.8 && c.rope.mscaleAllDim == 1)
        #expect(c.nGroup == 4 && c.topkGroup == 2)
    }

    @Test func fixtureConfigs() throws {
        let k = try ModelConfig.load(path: Fixtures.model("kimi_k2"))
        #expect(k.modelType == "kimi_k2" && k.rope.kind == .yarn && k.rope.factor == 32 && k.rope.theta == 50000)
        let o = try ModelConfig.load(path: Fixtures.model("odd_dense2"))
        #expect(o.qLoraRank == nil && o.firstKDenseReplace == 2 && o.moeLayers == [2])
        #expect(o.rope.kind == .plain && !o.ropeInterleave && !o.normTopkProb)
    }

    @Test func brokenJSON() {
        #expect { try parse("{\"hidden_size\": 64,") } throws: { e in
            guard let e = e as? CheckpointError, case .badConfig(let file, _, let why) = e else { return false }
            return file == "config.json" && why.contains("JSON")
        }
    }

    @Test func missingAndMistypedKeysAreNamed() {
        let noHidden = Self.kimiK2Release.replacingOccurrences(of: "\"hidden_size\": 7168,", with: "")
        #expect { try parse(noHidden) } throws: { e in
            guard let e = e as? CheckpointError, case .badConfig(_, "hidden_size", let why) = e else { return false }
            return why == "missing"
        }
        let stringLayers = Self.kimiK2Release.replacingOccurrences(of: "\"num_hidden_layers\": 61", with: "\"num_hidden_layers\": \"61\"")
        #expect { try parse(stringLayers) } throws: { e in
            guard let e = e as? CheckpointError, case .badConfig(_, "num_hidden_layers", _) = e else { return false }
            return true
        }
        let badRope = Self.kimiK2Release.replacingOccurrences(of: "\"factor\": 32.0", with: "\"factor\": \"x\"")
        #expect { try parse(badRope) } throws: { e in
            guard let e = e as? CheckpointError, case .badConfig(_, "rope_scaling.factor", _) = e else { return false }
            return true
        }
    }

    @Test func unsupportedValuesAreRefused() {
        for (from, to, key) in [("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act"),
                                ("\"scoring_func\": \"sigmoid\"", "\"scoring_func\": \"softmax\"", "scoring_func"),
                                ("\"n_group\": 1,", "\"n_group\": 5,", "n_group"),
                                ("\"num_experts_per_tok\": 8", "\"num_experts_per_tok\": 400", "num_experts_per_tok")] {
            #expect { try parse(Self.kimiK2Release.replacingOccurrences(of: from, with: to)) } throws: { e in
                guard let e = e as? CheckpointError, case .badConfig(_, let k, _) = e else { return false }
                return k == key
            }
        }
    }

    @Test func missingConfigFile() {
        let dir = Fixtures.scratchDirectory("noconfig")
        #expect { try ModelConfig.load(path: dir) } throws: { e in
            (e as? CheckpointError)?.description.contains(dir + "/config.json") ?? false
        }
    }

    /// Values that passed the old checks and then allocated until abort, trapped, or gave NaN logits: each is
    /// refused naming its key (`num_hidden_layers` 2^32, `rope_theta` 0, absurd `mscale`, ...).
    @Test(arguments: [
        ("\"num_hidden_layers\": 61", "\"num_hidden_layers\": 4294967296", "num_hidden_layers"),
        ("\"vocab_size\": 163840", "\"vocab_size\": 1099511627776", "vocab_size"),
        ("\"n_routed_experts\": 384", "\"n_routed_experts\": 1048576", "n_routed_experts"),
        ("\"rope_theta\": 50000.0", "\"rope_theta\": 0", "rope_theta"),
        ("\"rope_theta\": 50000.0", "\"rope_theta\": -5", "rope_theta"),
        ("\"mscale\": 1.0,", "\"mscale\": 1e30,", "rope_scaling.mscale"),
        ("\"factor\": 32.0", "\"factor\": 1e300", "rope_scaling.factor"),
        ("\"beta_fast\": 1.0", "\"beta_fast\": -1e308", "rope_scaling.beta_fast"),
        ("\"routed_scaling_factor\": 2.827", "\"routed_scaling_factor\": 1e38", "routed_scaling_factor"),
        ("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0", "rms_norm_eps"),
        ("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 1e-300", "rms_norm_eps"),
        ("\"eos_token_id\": 163585", "\"eos_token_id\": 163840", "eos_token_id"),
        ("\"max_position_embeddings\": 131072", "\"max_position_embeddings\": -1", "max_position_embeddings"),
        ("\"weight_block_size\": [128, 128]", "\"weight_block_size\": [128, 4294967296]", "quantization_config.weight_block_size"),
    ])
    func hostileValuesAreRefusedByName(original: String, hostile: String, key: String) throws {
        #expect(Self.kimiK2Release.contains(original))
        let json = Self.kimiK2Release.replacingOccurrences(of: original, with: hostile)
        #expect { try parse(json) } throws: { e in
            guard case .badConfig(_, let k, _) = e as! CheckpointError else { return false }
            return k == key
        }
    }
}
