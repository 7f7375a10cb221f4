import ArgumentParser
import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoERuntime
import MoETensor
import MoESystem

/// What a store converted from a GGUF holds, from the file's tensor types alone (`plan` on a .gguf).
enum GGUFPlan {
    /// The resident tensors as `convert` keeps them: their own bytes, kv_b widened to fp32 (from attn_k_b/attn_v_b).
    static func residentBytes(_ g: GGUFCheckpoint, _ c: ModelConfig) -> Int {
        var total = 0
        for t in g.tensors where !t.name.hasSuffix("_exps.weight") && !t.name.hasSuffix("attn_v_b.weight") {
            if t.name.hasSuffix("attn_k_b.weight") || t.name.hasSuffix("attn_kv_b.weight") {
                total += c.numHeads * (c.qkNopeHeadDim + c.vHeadDim) * c.kvLoraRank * 4
            } else {
                total += t.range.count
            }
        }
        return total
    }

    /// One expert's extent: each matrix sized for its largest type across the MoE layers.
    static func extentBytes(_ g: GGUFCheckpoint, _ c: ModelConfig) throws -> Int {
        let types = try StoreConverter.expertTypes(g, c)
        let cols = [c.hiddenSize, c.hiddenSize, c.moeIntermediateSize]
        let widest = (0..<3).map { i in
            c.moeLayers.map { types[$0]![i] }.max { ($0.rowBytes(elements: cols[i]) ?? 0) < ($1.rowBytes(elements: cols[i]) ?? 0) }!
        }
        return ExpertLayout(ggml: widest, hidden: c.hiddenSize, intermediate: c.moeIntermediateSize).extentBytes
    }
}

/// `7G` → 7e9, `3500M` → 3.5e9: drive rates are quoted in decimal units.
func parseRate(_ s: String) -> Double? {
    let t = s.uppercased().replacingOccurrences(of: "B/S", with: "").replacingOccurrences(of: "B", with: "")
    guard let last = t.last else { return nil }
    let units: [Character: Double] = ["K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12]
    if let u = units[last], let v = Double(t.dropLast()), v > 0 { return v * u }
    return Double(t).flatMap { $0 > 0 ? $0 : nil }
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Will the model run on this machine, and how fast? Resident set, KV cache, cache budget per node, expected decode rate.")

    @Argument(help: "An expert store, a checkpoint directory, or a GGUF file (any part of a split one).")
    var model: String

    @Option(help: ArgumentHelp("RAM to plan for (default: this machine's available memory).", valueName: "size"))
    var ram: String?

    @Option(help: ArgumentHelp("Drive read bandwidth, decimal units per second: 7G = 7 GB/s (default: measured on the store for 3 s, else 3G).", valueName: "rate"))
    var diskBw: String?

    @Option(help: ArgumentHelp("A routing trace: its hit rate at the planned budget replaces the uniform-routing estimate.", valueName: "file"))
    var trace: String?

    @Option(help: "Context length to reserve KV cache for (at most the model's).")
    var context: Int = 8192

    @Option(help: ArgumentHelp("KV cache precision to plan for (as `--kv-cache` of run, generate and serve).", valueName: "f16|bf16|f32"))
    var kvCache: KVPrecision = CacheOptions.defaultKV

    @Option(help: ArgumentHelp("Plan for N NUMA nodes (default: this machine's).", valueName: "N"))
    var numaNodes: Int?

    @Option(help: ArgumentHelp("Resident weights to plan for (as `--resident-weights` of run, generate and serve): a store's bf16 matrices (the default) or its int8 companion, where it has one.", valueName: "bf16|int8"))
    var residentWeights: ResidentForm = .bf16

    func run() throws {
        let config: ModelConfig
        var residentBytes: Int
        var choices = ""
        let extent: Int
        var store: ExpertStore?
        do {
            if model.hasSuffix(".gguf") {
                // What `convert` makes of it: resident tensors in their types (kv_b in fp32), experts passed through.
                // Run directly (what `run` on the file does): a slot holds an expert's three slices as aligned
                // supersets; a converted store's extent is a little smaller.
                let g = try GGUFCheckpoint(path: model)
                config = try ModelConfig.fromGGUF(g)
                residentBytes = GGUFPlan.residentBytes(g, config)
                extent = try GGUFExpertReads.make(g, config).slotBytes
                choices = " in the GGUF's types; experts read straight from the file (a store made by `convert`: "
                    + "\(humanBytes(try GGUFPlan.extentBytes(g, config))) per expert)"
            } else if ExpertStore.isStore(model) {
                let s = try ExpertStore(path: model, verifyResident: false)
                store = s
                config = s.config
                residentBytes = s.manifest.residentBytes(int8: residentWeights == .int8)
                extent = s.manifest.experts.layout.extentBytes
            } else {
                config = try ModelConfig.load(path: model)
                let inv = WeightInventory(checkpoint: try Checkpoint(path: model), prefix: config.tensorPrefix)
                residentBytes = inv.residentBytes
                // What `convert` makes by default: int4 group-32 experts with bf16 scales.
                extent = ExpertLayout(encoding: .int4, scaleType: .bf16, hidden: config.hiddenSize,
                                      intermediate: config.moeIntermediateSize).extentBytes
            }
        } catch let e as StoreError { throw CLIError(e.description) } catch let e as CheckpointError { throw CLIError(e.description) }
        if model.hasSuffix(".gguf") {
        } else if let store, store.manifest.source.kind == "gguf" {
            choices = " in the GGUF's types"
        } else if let store {
            var list: [(name: String, dtype: DType, shape: [Int], bytes: Int)] = []
            for (name, t) in store.manifest.resident.tensors {
                if let d = DType(rawValue: t.dtype) { list.append((name: name, dtype: d, shape: t.shape, bytes: t.bytes)) }
            }
            choices = residentChoices(list) + companionNote(store)
        } else {
            do { choices = residentChoices(try Checkpoint(path: model), prefix: config.tensorPrefix) } catch {
                throw CLIError(error.description)
            }
        }

        let topology = numaNodes.map { NumaTopology.fake(nodes: $0) } ?? .detect()
        let ramBytes = try ram.map { guard let v = parseSize($0) else { throw CLIError("--ram '\($0)' is not a size") }; return v } ?? availableMemory()
        let experts = config.moeLayers.count * config.numRoutedExperts
        let allExperts = experts * extent
        guard (1...config.maxPositionEmbeddings).contains(context) else {
            throw CLIError("--context \(context): the model's context is 1 ... \(config.maxPositionEmbeddings) tokens (max_position_embeddings)")
        }
        let kvPerToken = KVCache.bytesPerToken(layers: config.numLayers, latentDim: config.kvLoraRank, ropeDim: config.qkRopeHeadDim,
                                               precision: kvCache)
        let kv = kvPerToken * context
        let headroom = max(2 << 30, ramBytes / 20)
        let budget = max(0, min(allExperts, ramBytes - residentBytes - kv - headroom))
        let slots = budget / extent
        let share = Double(slots) / Double(experts)

        print("model            \(config.modelType): \(config.numLayers) layers, \(config.moeLayers.count) MoE × \(config.numRoutedExperts) experts, top-\(config.expertsPerToken)")
        print("RAM              \(humanBytes(ramBytes))\(ram == nil ? " available now" : "")")
        let int8Planned = residentWeights == .int8 && store?.manifest.residentInt8 != nil
        print("resident set     \(humanBytes(residentBytes))\(int8Planned ? " with the int8 companion (--resident-weights int8)" : "") (attention, dense layers, shared experts, routers, embeddings)"
              + choices)
        print("KV cache         \(kvCache.rawValue): \(humanBytes(kvPerToken)) per position, \(humanBytes(kv)) for \(context) tokens")
        print("headroom         \(humanBytes(headroom))")
        print("routed experts   \(experts) × \(humanBytes(extent)) = \(humanBytes(allExperts)) on NVMe")
        if budget <= 0 {
            print("cache budget     none: the resident set and KV cache do not leave room for experts. It will not run well.")
            throw ExitCode(1)
        }
        print(String(format: "cache budget     %@ = %d experts (%.1f%% of all)", humanBytes(budget), slots, share * 100))
        for (i, n) in topology.nodes.enumerated() {
            let b = CacheConfiguration(totalBudget: budget, topology: topology).budgets[i]
            print("  node \(n.id)         \(humanBytes(b)) (\(b / extent) experts)")
        }
        if slots < config.expertsPerToken {
            print("WARNING: the budget cannot hold one layer's \(config.expertsPerToken) chosen experts")
        }

        var hitRate = share
        var hitSource = "uniform routing (hit rate = share cached; real routing is skewed and does better)"
        if let trace {
            let t: RoutingTrace
            do { t = try RoutingTrace.load(path: trace) } catch { throw CLIError("\(error)") }
            let scaled = max(1, Int((share * Double(t.header.moeLayers.count * t.header.experts)).rounded()))
            let best = Stats.replay(t, slots: scaled).filter { !$0.name.hasPrefix("belady") }.max { $0.hitRate < $1.hitRate }!
            hitRate = best.hitRate
            hitSource = "trace \(trace) replayed at the same share of its experts: \(best.name)"
        }
        var bw: Double
        var bwSource: String
        if let diskBw {
            guard let v = parseRate(diskBw) else { throw CLIError("--disk-bw '\(diskBw)' is not a rate such as 7G or 3500M") }
            bw = v
            bwSource = "given"
        } else if let store, let f = store.manifest.experts.files.first {
            var bench = IOBenchmark(path: model + "/" + f.path, extentBytes: extent, extents: f.experts)
            bench.seconds = 3
            bw = try bench.run().gbps * 1e9
            bwSource = "measured: 3 s of random extent reads from \(f.path)"
        } else {
            bw = 3e9
            bwSource = "assumed (give --disk-bw)"
        }
        let missesPerToken = Double(config.expertsPerToken * config.moeLayers.count) * (1 - hitRate)
        let bytesPerToken = missesPerToken * Double(extent)
        print(String(format: "hit rate         %.1f%% (%@)", hitRate * 100, hitSource))
        print(String(format: "read bandwidth   %.2f GB/s (%@)", bw / 1e9, bwSource))
        print(String(format: "per token        %.0f expert misses = %@ to read", missesPerToken, humanBytes(Int(bytesPerToken))))
        if bytesPerToken > 0 {
            print(String(format: "decode rate      ≤ %.2f tokens/s from the drive alone (compute not included)", bw / bytesPerToken))
        } else {
            print("decode rate      every expert fits: bound by compute, not the drive")
        }
    }
}
