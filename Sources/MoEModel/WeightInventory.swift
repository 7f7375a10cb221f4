import MoECheckpoint

/// What a checkpoint's bytes are, by the role each tensor plays, and so what stays in RAM and what goes to NVMe.
public struct WeightInventory: Sendable {
    public enum Role: String, CaseIterable, Sendable {
        case attention = "attention"
        case dense = "dense MLP"
        case sharedExperts = "shared experts"
        case routedExperts = "routed experts"
        case embeddings = "embeddings + lm_head"
        case routers = "routers"
        case norms = "norms"
        case other = "other"

        /// Routed experts stream from NVMe; everything else is resident.
        public var isResident: Bool { self != .routedExperts }
    }

    public private(set) var bytes: [Role: Int] = [:]
    public private(set) var tensors: [Role: Int] = [:]
    public private(set) var tensorCount = 0

    /// The role of a tensor from its name (prefix such as `language_model.` already removed).
    public static func role(of name: String) -> Role {
        if name.contains(".mlp.experts.") { return .routedExperts }
        if name.contains(".mlp.shared_experts.") { return .sharedExperts }
        if name.contains(".mlp.gate.") { return .routers }
        if name.contains(".self_attn.") && !name.hasSuffix("layernorm.weight") { return .attention }
        if name.contains(".mlp.") { return .dense }
        if name.hasPrefix("model.embed_tokens") || name.hasPrefix("lm_head") { return .embeddings }
        if name.contains("norm") { return .norms }
        return .other
    }

    public init(checkpoint: Checkpoint, prefix: String) {
        for name in checkpoint.tensorNames {
            guard let (_, entry) = checkpoint.entry(name) else { continue }
            let stripped = name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : name
            let role = Self.role(of: stripped)
            bytes[role, default: 0] += entry.range.count
            tensors[role, default: 0] += 1
            tensorCount += 1
        }
    }

    /// Adds bytes held outside the checkpoint (a store's expert files).
    public mutating func add(_ role: Role, bytes b: Int, tensors t: Int) {
        bytes[role, default: 0] += b
        tensors[role, default: 0] += t
    }

    public var residentBytes: Int { bytes.filter { $0.key.isResident }.values.reduce(0, +) }
    public var streamedBytes: Int { bytes[.routedExperts] ?? 0 }
    public var totalBytes: Int { bytes.values.reduce(0, +) }
}
