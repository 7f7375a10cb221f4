import MoECheckpoint
import MoEExpertStore
import MoEModel

extension ExpertStore {
    /// The model with its routed experts served by an expert cache with `configuration`.
    public func loadModel(cache configuration: CacheConfiguration) throws(StoreError) -> (model: KimiModel, cache: ExpertCache) {
        for (i, budget) in configuration.budgets.enumerated() where budget < manifest.experts.layout.extentBytes {
            throw .badManifest(file: path, reason: "the cache budget of node \(configuration.topology.nodes[i].id) "
                + "(\(budget) bytes) cannot hold one expert (\(manifest.experts.layout.extentBytes) bytes)")
        }
        let weights = try residentWeights()
        let cache = try ExpertCache(store: self, configuration: configuration, resident: weights)
        return (KimiModel(config: config, weights: weights, experts: cache), cache)
    }
}

/// A GGUF model run directly (no conversion): its resident tensors loaded into memory, its routed experts read
/// from the file into an expert cache, each expert's gate, up and down slices as aligned supersets
/// (`GGUFExpertReads`). The file carries no checksums; where a sums file lies beside it (`GGUFSums`, written by
/// `moestream verify FILE --write-sums`), the tensors kept in memory are checked against it at load and every
/// expert read as the cache reads it, as for a store; else nothing is verified.
public enum GGUFDirect {
    public static func load(path: String, cache configuration: CacheConfiguration) throws -> (model: KimiModel, cache: ExpertCache) {
        let gguf = try GGUFCheckpoint(path: path)
        let config = try ModelConfig.fromGGUF(gguf)
        let undecodable = gguf.undecodable()
        guard undecodable.isEmpty else { throw CheckpointError.unsupportedTypes(file: gguf.path, types: undecodable) }
        let sums = try GGUFSums.load(for: gguf, config)
        if let sums, let problem = sums.tensorProblems(gguf).first { throw StoreError.unsupportedSource(file: sums.path, reason: "does not match the GGUF: \(problem)") }
        let reads = try GGUFExpertReads.make(gguf, config, checksums: sums?.experts)
        for (i, budget) in configuration.budgets.enumerated() where budget < reads.slotBytes {
            throw StoreError.badManifest(file: path, reason: "the cache budget of node \(configuration.topology.nodes[i].id) "
                + "(\(budget) bytes) cannot hold one expert (\(reads.slotBytes) bytes)")
        }
        let weights = try CheckpointWeights(checkpoint: GGUFTensors(gguf: gguf, config: config, copy: true), config: config).resident()
        let cache = try ExpertCache(config: config, reads: reads, configuration: configuration, resident: weights)
        return (KimiModel(config: config, weights: weights, experts: cache), cache)
    }
}

extension CacheConfiguration {
    /// Loud warnings for budgets that will work but badly: a node that cannot hold its share of one layer's
    /// chosen experts reloads experts within a single token.
    public func warnings(extentBytes: Int, expertsPerToken: Int) -> [String] {
        var out: [String] = []
        let share = (expertsPerToken + topology.nodes.count - 1) / topology.nodes.count
        for (i, budget) in budgets.enumerated() where budget / extentBytes < share {
            out.append("cache budget of node \(topology.nodes[i].id) holds \(budget / extentBytes) experts, fewer than its share "
                + "(\(share)) of one layer's \(expertsPerToken) chosen experts: every token will re-read experts")
        }
        return out
    }
}
