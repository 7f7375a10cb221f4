import Foundation
import MoESystem

/// Rotary position embedding settings, normalised from either spelling config.json uses:
/// releases (`rope_theta` + `rope_scaling`) or transformers 5 (`rope_parameters`).
public struct RopeConfig: Sendable, Equatable {
    public enum Kind: String, Sendable { case plain = "default", yarn }
    public var kind: Kind
    public var theta: Double
    /// YaRN fields; ignored for `.plain`.
    public var factor: Double = 1
    public var originalMaxPositionEmbeddings: Int = 4096
    public var betaFast: Double = 32
    public var betaSlow: Double = 1
    public var mscale: Double? = nil
    public var mscaleAllDim: Double? = nil
    public var attentionFactor: Double? = nil
    public var truncate: Bool = true
}

/// Block FP8 or compressed-tensors settings from `quantization_config`, when the checkpoint has them.
public enum QuantizationConfig: Sendable, Equatable {
    /// `quant_method: fp8`, `weight_block_size: [rows, cols]`.
    case fp8Block(blockRows: Int, blockCols: Int)
    /// `quant_method: compressed-tensors`, `format: pack-quantized`; ignored module patterns kept as written.
    case packQuantized(numBits: Int, groupSize: Int, symmetric: Bool, ignore: [String])
}

/// The model's shape, read from config.json (`kimi_k2`, `kimi_k25` with `text_config`, `deepseek_v3`).
///
/// Every value the forward pass uses comes from here; nothing is assumed from Kimi K2's published numbers.
public struct ModelConfig: Sendable, Equatable {
    public var modelType: String
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var moeIntermediateSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numSharedExperts: Int
    public var numRoutedExperts: Int
    public var expertsPerToken: Int
    public var nGroup: Int
    public var topkGroup: Int
    public var routedScalingFactor: Float
    public var normTopkProb: Bool
    public var firstKDenseReplace: Int
    public var moeLayerFreq: Int
    /// nil: queries come straight from `q_proj` (DeepSeek-V2-Lite style) instead of the q LoRA pair.
    public var qLoraRank: Int?
    public var kvLoraRank: Int
    public var qkNopeHeadDim: Int
    public var qkRopeHeadDim: Int
    public var vHeadDim: Int
    public var maxPositionEmbeddings: Int
    public var rmsNormEps: Float
    public var rope: RopeConfig
    /// DeepSeek rotates adjacent pairs (2i, 2i+1); false means rotate_half over the two halves.
    public var ropeInterleave: Bool
    public var tieWordEmbeddings: Bool
    public var bosTokenId: Int?
    public var eosTokenIds: [Int]
    /// Prefix of every tensor name: "" or K2.5's "language_model.".
    public var tensorPrefix: String
    public var quantization: QuantizationConfig?

    public var qkHeadDim: Int { qkNopeHeadDim + qkRopeHeadDim }

    /// Whether layer `l` has routed experts (DeepSeek's rule: past the dense layers, every `moe_layer_freq`-th).
    public func isMoE(layer l: Int) -> Bool {
        numRoutedExperts > 0 && l >= firstKDenseReplace && l % moeLayerFreq == 0
    }

    public var moeLayers: [Int] { (0..<numLayers).filter { isMoE(layer: $0) } }

    /// Real configs are a few KB.
    static let maxConfigBytes = 16 << 20

    /// Reads and validates `config.json` in `directory` (or the file itself when `path` is a file).
    public static func load(path: String) throws(CheckpointError) -> ModelConfig {
        var isDir: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            ? (path as NSString).appendingPathComponent("config.json") : path
        let data: [UInt8]
        do { data = try FileSystem.contents(file, limit: maxConfigBytes) } catch { throw .system(error) }
        return try parse(Data(data), file: file)
    }

    public static func parse(_ data: Data, file: String) throws(CheckpointError) -> ModelConfig {
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw .badConfig(file: file, key: "(document)", reason: "not valid JSON")
        }
        guard var top = json as? [String: Any] else {
            throw .badConfig(file: file, key: "(document)", reason: "not a JSON object")
        }
        var prefix = ""
        if let text = top["text_config"] as? [String: Any] {
            // K2.5 and later: a multimodal wrapper; the language model's keys sit in text_config and its
            // tensors under `language_model.`. Quantization stays at the top level.
            let quantization = top["quantization_config"]
            top = text
            if top["quantization_config"] == nil, let quantization { top["quantization_config"] = quantization }
            prefix = "language_model."
        }
        let r = JSONFields(dict: top, file: file)
        let modelType = try r.string("model_type", default: "deepseek_v3")
        if let act = try r.optionalString("hidden_act"), act != "silu" {
            throw .badConfig(file: file, key: "hidden_act", reason: "'\(act)' is not supported (only silu)")
        }
        if let scoring = try r.optionalString("scoring_func"), scoring != "sigmoid" {
            throw .badConfig(file: file, key: "scoring_func", reason: "'\(scoring)' is not supported (only sigmoid)")
        }
        if let method = try r.optionalString("topk_method"), method != "noaux_tc" {
            throw .badConfig(file: file, key: "topk_method", reason: "'\(method)' is not supported (only noaux_tc)")
        }
        var c = ModelConfig(
            modelType: modelType,
            vocabSize: try r.int("vocab_size"),
            hiddenSize: try r.int("hidden_size"),
            intermediateSize: try r.int("intermediate_size"),
            moeIntermediateSize: try r.int("moe_intermediate_size"),
            numLayers: try r.int("num_hidden_layers"),
            numHeads: try r.int("num_attention_heads"),
            numSharedExperts: try r.int("n_shared_experts", default: 0),
            numRoutedExperts: try r.int("n_routed_experts", default: 0),
            expertsPerToken: try r.int("num_experts_per_tok", default: 0),
            nGroup: try r.int("n_group", default: 1),
            topkGroup: try r.int("topk_group", default: 1),
            routedScalingFactor: Float(try r.double("routed_scaling_factor", default: 1)),
            normTopkProb: try r.bool("norm_topk_prob", default: true),
            firstKDenseReplace: try r.int("first_k_dense_replace", default: 0),
            moeLayerFreq: try r.int("moe_layer_freq", default: 1),
            qLoraRank: try r.optionalInt("q_lora_rank"),
            kvLoraRank: try r.int("kv_lora_rank"),
            qkNopeHeadDim: try r.int("qk_nope_head_dim"),
            qkRopeHeadDim: try r.int("qk_rope_head_dim"),
            vHeadDim: try r.int("v_head_dim"),
            maxPositionEmbeddings: try r.int("max_position_embeddings", default: 4096),
            rmsNormEps: Float(try r.double("rms_norm_eps", default: 1e-6)),
            rope: try parseRope(r),
            ropeInterleave: try r.bool("rope_interleave", default: true),
            tieWordEmbeddings: try r.bool("tie_word_embeddings", default: false),
            bosTokenId: try r.optionalInt("bos_token_id"),
            eosTokenIds: try r.intOrList("eos_token_id"),
            tensorPrefix: prefix,
            quantization: try parseQuantization(r)
        )
        try c.validate(file: file)
        if c.numRoutedExperts == 0 { c.expertsPerToken = 0 }
        return c
    }

    private static func parseRope(_ r: JSONFields) throws(CheckpointError) -> RopeConfig {
        if let params = try r.optionalObject("rope_parameters") {
            // transformers 5: everything, theta included, in one dict.
            let p = r.nested(params, at: "rope_parameters")
            let outer = try r.double("rope_theta", default: 10000)
            let theta = try p.double("rope_theta", default: outer)
            let type = try p.firstString("rope_type", "type") ?? "default"
            return try rope(type: type, theta: theta, p, maxPositions: try r.int("max_position_embeddings", default: 4096))
        }
        let theta = try r.double("rope_theta", default: 10000)
        guard let scaling = try r.optionalObject("rope_scaling") else { return RopeConfig(kind: .plain, theta: theta) }
        let s = r.nested(scaling, at: "rope_scaling")
        let type = try s.firstString("type", "rope_type") ?? "default"
        return try rope(type: type, theta: theta, s, maxPositions: try r.int("max_position_embeddings", default: 4096))
    }

    private static func rope(type: String, theta: Double, _ s: JSONFields, maxPositions: Int) throws(CheckpointError) -> RopeConfig {
        switch type {
        case "default", "none":
            return RopeConfig(kind: .plain, theta: theta)
        case "yarn":
            let original = try s.int("original_max_position_embeddings", default: maxPositions)
            let factor = try s.optionalDouble("factor") ?? Double(maxPositions) / Double(original)
            return RopeConfig(
                kind: .yarn, theta: theta, factor: factor, originalMaxPositionEmbeddings: original,
                betaFast: try s.optionalDouble("beta_fast") ?? 32, betaSlow: try s.optionalDouble("beta_slow") ?? 1,
                mscale: try s.optionalDouble("mscale"), mscaleAllDim: try s.optionalDouble("mscale_all_dim"),
                attentionFactor: try s.optionalDouble("attention_factor"), truncate: try s.bool("truncate", default: true))
        default:
            throw .badConfig(file: s.file, key: s.path("type"), reason: "rope type '\(type)' is not supported (default or yarn)")
        }
    }

    private static func parseQuantization(_ r: JSONFields) throws(CheckpointError) -> QuantizationConfig? {
        guard let q = try r.optionalObject("quantization_config") else { return nil }
        let f = r.nested(q, at: "quantization_config")
        let method = try f.string("quant_method")
        switch method {
        case "fp8":
            if let fmt = try f.optionalString("fmt"), fmt != "e4m3" {
                throw .badConfig(file: r.file, key: f.path("fmt"), reason: "'\(fmt)' is not supported (only e4m3)")
            }
            let block = try f.intOrList("weight_block_size")
            guard block.count == 2, block.allSatisfy({ $0 > 0 && $0 <= 1 << 16 }) else {
                throw .badConfig(file: r.file, key: f.path("weight_block_size"), reason: "expected [rows, cols]")
            }
            return .fp8Block(blockRows: block[0], blockCols: block[1])
        case "compressed-tensors":
            let format = try f.string("format")
            guard format == "pack-quantized" else {
                throw .badConfig(file: r.file, key: f.path("format"), reason: "'\(format)' is not supported (pack-quantized)")
            }
            guard let groups = try f.optionalObject("config_groups"), let first = groups.values.first as? [String: Any],
                  let weights = first["weights"] as? [String: Any] else {
                throw .badConfig(file: r.file, key: f.path("config_groups"), reason: "no weights scheme")
            }
            let w = f.nested(weights, at: "config_groups.*.weights")
            let bits = try w.int("num_bits"), group = try w.int("group_size")
            guard [4, 8].contains(bits) else { throw .badConfig(file: r.file, key: w.path("num_bits"), reason: "\(bits) is not 4 or 8") }
            guard group > 0, group <= 1 << 16 else {
                throw .badConfig(file: r.file, key: w.path("group_size"), reason: "\(group) is outside 1...65536")
            }
            return .packQuantized(numBits: bits, groupSize: group,
                                  symmetric: try w.bool("symmetric", default: true),
                                  ignore: (f.dict["ignore"] as? [String]) ?? [])
        default:
            throw .badConfig(file: r.file, key: f.path("quant_method"), reason: "'\(method)' is not supported (fp8, compressed-tensors)")
        }
    }

    func validate(file: String) throws(CheckpointError) {
        func fail(_ key: String, _ why: String) -> CheckpointError { .badConfig(file: file, key: key, reason: why) }
        for (key, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("num_hidden_layers", numLayers),
                         ("num_attention_heads", numHeads), ("kv_lora_rank", kvLoraRank),
                         ("qk_rope_head_dim", qkRopeHeadDim), ("v_head_dim", vHeadDim),
                         ("moe_layer_freq", moeLayerFreq), ("n_group", nGroup)] where v <= 0 {
            throw fail(key, "must be positive, is \(v)")
        }
        if qkRopeHeadDim % 2 != 0 { throw fail("qk_rope_head_dim", "must be even, is \(qkRopeHeadDim)") }
        if let q = qLoraRank, q <= 0 { throw fail("q_lora_rank", "must be positive or null, is \(q)") }
        if numRoutedExperts > 0 {
            if expertsPerToken <= 0 || expertsPerToken > numRoutedExperts {
                throw fail("num_experts_per_tok", "\(expertsPerToken) is not in 1...\(numRoutedExperts)")
            }
            if numRoutedExperts % nGroup != 0 { throw fail("n_group", "\(nGroup) does not divide n_routed_experts \(numRoutedExperts)") }
            if topkGroup < 1 || topkGroup > nGroup { throw fail("topk_group", "\(topkGroup) is not in 1...\(nGroup)") }
            if expertsPerToken > topkGroup * (numRoutedExperts / nGroup) {
                throw fail("num_experts_per_tok", "\(expertsPerToken) exceeds the experts in \(topkGroup) groups")
            }
            if nGroup > 1 && numRoutedExperts / nGroup < 2 { throw fail("n_group", "groups need at least two experts each") }
            if moeIntermediateSize <= 0 { throw fail("moe_intermediate_size", "must be positive") }
        }
        if rope.kind == .yarn && !(rope.factor > 0) { throw fail("rope_scaling.factor", "must be positive") }
        try checkLimits(fail)
    }

    /// Upper limits far beyond any real model (Kimi K2: hidden 7168, 61 layers, 384 experts, vocab 163840), so a
    /// damaged or hostile config is refused before its sizes multiply into allocations, and floating-point values
    /// that would turn the forward pass into NaN or infinity are refused by name.
    private func checkLimits(_ fail: (String, String) -> CheckpointError) throws(CheckpointError) {
        let limits: [(String, Int, ClosedRange<Int>)] = [
            ("vocab_size", vocabSize, 1...(1 << 24)), ("hidden_size", hiddenSize, 1...(1 << 18)),
            ("intermediate_size", intermediateSize, 0...(1 << 20)), ("moe_intermediate_size", moeIntermediateSize, 0...(1 << 20)),
            ("num_hidden_layers", numLayers, 1...4096), ("num_attention_heads", numHeads, 1...4096),
            ("n_shared_experts", numSharedExperts, 0...64), ("n_routed_experts", numRoutedExperts, 0...(1 << 16)),
            ("num_experts_per_tok", expertsPerToken, 0...(1 << 16)), ("n_group", nGroup, 1...(1 << 16)),
            ("topk_group", topkGroup, 0...(1 << 16)), ("first_k_dense_replace", firstKDenseReplace, 0...numLayers),
            ("moe_layer_freq", moeLayerFreq, 1...4096), ("kv_lora_rank", kvLoraRank, 1...(1 << 16)),
            ("qk_nope_head_dim", qkNopeHeadDim, 0...(1 << 12)), ("qk_rope_head_dim", qkRopeHeadDim, 2...(1 << 12)),
            ("v_head_dim", vHeadDim, 1...(1 << 12)), ("max_position_embeddings", maxPositionEmbeddings, 1...(1 << 24)),
        ]
        for (key, value, range) in limits where !range.contains(value) {
            throw fail(key, "\(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        if let q = qLoraRank, q > 1 << 18 { throw fail("q_lora_rank", "\(q) is outside 1...\(1 << 18)") }
        if numRoutedExperts > 0 && intermediateSize == 0 && firstKDenseReplace > 0 {
            throw fail("intermediate_size", "must be positive when there are dense layers")
        }
        if numRoutedExperts == 0 && intermediateSize == 0 { throw fail("intermediate_size", "must be positive") }
        for id in eosTokenIds + (bosTokenId.map { [$0] } ?? []) where id < 0 || id >= vocabSize {
            throw fail(bosTokenId == id ? "bos_token_id" : "eos_token_id", "\(id) is not a token id (0..<\(vocabSize))")
        }
        if !(routedScalingFactor.isFinite && routedScalingFactor > 0 && routedScalingFactor <= 1000) {
            throw fail("routed_scaling_factor", "\(routedScalingFactor) is not in (0, 1000]")
        }
        if !(rmsNormEps.isNormal && rmsNormEps > 0 && rmsNormEps <= 1) {
            throw fail("rms_norm_eps", "\(rmsNormEps) is not a positive normal number ≤ 1")
        }
        if !(rope.theta.isFinite && rope.theta >= 1 && rope.theta <= 1e12) {
            throw fail("rope_theta", "\(rope.theta) is not in [1, 1e12]")
        }
        guard rope.kind == .yarn else { return }
        let yarn: [(String, Double?, ClosedRange<Double>)] = [
            ("factor", rope.factor, 1...1024), ("beta_fast", rope.betaFast, 0...1e6), ("beta_slow", rope.betaSlow, 0...1e6),
            ("mscale", rope.mscale, 0...100), ("mscale_all_dim", rope.mscaleAllDim, 0...100),
            ("attention_factor", rope.attentionFactor, 1e-3...1e3),
        ]
        for (key, value, range) in yarn {
            if let value, !(value.isFinite && range.contains(value)) {
                throw fail("rope_scaling." + key, "\(value) is not in [\(range.lowerBound), \(range.upperBound)]")
            }
        }
        if !(1...(1 << 24)).contains(rope.originalMaxPositionEmbeddings) {
            throw fail("rope_scaling.original_max_position_embeddings", "\(rope.originalMaxPositionEmbeddings) is outside 1...\(1 << 24)")
        }
    }
}

/// Typed access to a JSON object that turns every missing or mistyped key into `badConfig` naming it.
struct JSONFields {
    let dict: [String: Any]
    let file: String
    let prefix: String

    init(dict: [String: Any], file: String, prefix: String = "") {
        self.dict = dict
        self.file = file
        self.prefix = prefix
    }

    func nested(_ d: [String: Any], at key: String) -> JSONFields {
        JSONFields(dict: d, file: file, prefix: path(key) + ".")
    }

    func path(_ key: String) -> String { prefix + key }

    private func number(_ key: String) throws(CheckpointError) -> NSNumber? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        guard let n = v as? NSNumber else {
            throw .badConfig(file: file, key: path(key), reason: "expected a number, found \(type(of: v)) \(v)")
        }
        return n
    }

    func optionalInt(_ key: String) throws(CheckpointError) -> Int? {
        guard let n = try number(key) else { return nil }
        guard n.doubleValue == Double(n.intValue) else {
            throw .badConfig(file: file, key: path(key), reason: "expected an integer, found \(n)")
        }
        return n.intValue
    }

    func int(_ key: String) throws(CheckpointError) -> Int {
        guard let v = try optionalInt(key) else { throw .badConfig(file: file, key: path(key), reason: "missing") }
        return v
    }

    func int(_ key: String, default d: Int) throws(CheckpointError) -> Int { try optionalInt(key) ?? d }

    func optionalDouble(_ key: String) throws(CheckpointError) -> Double? { try number(key)?.doubleValue }

    func double(_ key: String, default d: Double) throws(CheckpointError) -> Double { try optionalDouble(key) ?? d }

    func bool(_ key: String, default d: Bool) throws(CheckpointError) -> Bool {
        guard let v = dict[key], !(v is NSNull) else { return d }
        guard let b = v as? Bool else { throw .badConfig(file: file, key: path(key), reason: "expected true or false, found \(v)") }
        return b
    }

    func optionalString(_ key: String) throws(CheckpointError) -> String? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        guard let s = v as? String else { throw .badConfig(file: file, key: path(key), reason: "expected a string, found \(v)") }
        return s
    }

    /// The first of `keys` present, as a string.
    func firstString(_ keys: String...) throws(CheckpointError) -> String? {
        for key in keys { if let s = try optionalString(key) { return s } }
        return nil
    }

    func string(_ key: String) throws(CheckpointError) -> String {
        guard let s = try optionalString(key) else { throw .badConfig(file: file, key: path(key), reason: "missing") }
        return s
    }

    func string(_ key: String, default d: String) throws(CheckpointError) -> String { try optionalString(key) ?? d }

    func optionalObject(_ key: String) throws(CheckpointError) -> [String: Any]? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        guard let o = v as? [String: Any] else { throw .badConfig(file: file, key: path(key), reason: "expected an object") }
        return o
    }

    /// An integer or a list of integers (eos_token_id may be either); absent gives [].
    func intOrList(_ key: String) throws(CheckpointError) -> [Int] {
        guard let v = dict[key], !(v is NSNull) else { return [] }
        if let list = v as? [Any] {
            var out: [Int] = []
            for item in list {
                guard let n = item as? NSNumber, n.doubleValue == Double(n.intValue) else {
                    throw .badConfig(file: file, key: path(key), reason: "expected integers, found \(item)")
                }
                out.append(n.intValue)
            }
            return out
        }
        return [try int(key)]
    }
}
