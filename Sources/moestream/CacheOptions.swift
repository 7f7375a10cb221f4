import ArgumentParser
import Foundation
import MoEExpertStore
import MoEModel
import MoERuntime
import MoESystem
import MoETensor

extension PolicyKind: ExpressibleByArgument {}
extension PrefetchMode: ExpressibleByArgument {}
extension ReadEngine: ExpressibleByArgument {}
extension KernelISA: ExpressibleByArgument {}
extension ExpertActivations: ExpressibleByArgument {}
extension ResidentActivations: ExpressibleByArgument {}
extension KVPrecision: ExpressibleByArgument {}

/// `--resident-weights`: which form of a store's resident matrices a run multiplies, where the store has both.
enum ResidentForm: String, CaseIterable, ExpressibleByArgument { case int8, bf16 }

/// The expert cache and compute flags, shared by every command that runs the model from a store.
struct CacheOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Expert cache budget, e.g. 96G, 512M, or 25% of all experts (default: available RAM, within a memory cgroup's limit, less the resident set and headroom).",
                               valueName: "size"))
    var cache: String?

    @Option(help: ArgumentHelp("Budget per NUMA node, e.g. 0=48G,1=48G (overrides --cache).", valueName: "node=size,..."))
    var cacheNode: String?

    @Option(help: "Eviction policy: lru, or lfu (decayed frequency).")
    var policy: PolicyKind = .lru

    @Option(help: "Prefetch: off, router (speculative routing), stats (learned co-activation), both.")
    var prefetch: PrefetchMode = .both

    @Option(help: "How many MoE layers ahead the router prefetcher looks.")
    var prefetchDepth: Int = 1

    @Option(help: "Expert reads in flight per NUMA node.")
    var ioDepth: Int = 32

    @Option(help: "Read engine: uring (io_uring, falls back to pread when unavailable) or pread.")
    var ioEngine: ReadEngine = .uring

    @Option(help: "Compute threads (default: every online core).")
    var threads: Int = ProcessInfoCores.active

    @Flag(help: "Read experts into the cache before the first request, while the budget lasts (warm start).")
    var preload = false

    @Option(help: ArgumentHelp("Matrix kernels: avx512, avx2 or generic (default: the best this CPU runs).", valueName: "isa"))
    var kernels: KernelISA = Kernels.isa

    @Option(help: ArgumentHelp("Routed experts' activations (int4 experts, and GGML experts of the block types): q8-gate-up quantises gate's and up's inputs to int8 (per 32 values; per 256 for GGML experts in super-blocks: K-quants, i-quants but IQ4_NL, ternary) and multiplies with int8 dot products, down stays fp32; q8-gate-up-q16-down (the default for int4) also gives down's input (a store's experts; fp32 for a checkpoint's) in two int8 parts (16 bits) to the integer tiles; q8 (the default for GGML experts) quantises down's input too, as llama.cpp does; fp32 is exact. Quality and speed of each: docs/performance.md.", valueName: "q8-gate-up|q8-gate-up-q16-down|q8|fp32"))
    var expertActivations: ExpertActivations?

    @Option(help: ArgumentHelp("Resident matrices' activations (attention projections, dense and shared MLPs, output head): bf16x2 splits each into two bf16 parts (16 significant bits) and multiplies bf16 matrices on AMX tiles or with AVX512-BF16's vdpbf16ps, the default where the CPU has either and the avx512 kernels run; q8, the default for a GGUF's, quantises to int8 for GGML matrices of the legacy types and IQ4_NL (per 32 values) and of the K-quants and i-quants (per 256, as llama.cpp does), but not the ternary TQ1_0/TQ2_0 (fp32), bf16 ones as bf16x2 where it runs; fp32, the default elsewhere, is exact. A store converted with --resident int8 multiplies its int8 matrices with the activations in two int8 parts under bf16x2 and q8 (fp32 where bf16x2 does not run, the faster there). Quality and speed: docs/performance.md.", valueName: "bf16x2|q8|fp32"))
    var residentActivations: ResidentActivations?

    @Option(help: ArgumentHelp("Resident matrices' weights in a store that has both forms (convert's default, --resident bf16+int8): bf16, the default, multiplies the bf16 matrices (as --exact does); int8 multiplies the int8 companion instead (an fp32 scale per 32 values): about 55% of their memory and faster prefill and decode, but lossy beyond the default's bar (docs/performance.md gives both). A store with one form (--resident bf16, int8 or source, a GGUF's, or one converted before the companion) uses it whatever this says.", valueName: "bf16|int8"))
    var residentWeights: ResidentForm?

    /// Whether a store's int8 companion replaces its bf16 resident matrices: only when asked for (never under
    /// `--exact`); int8 weights move the long-context fixture's argmax where exact's margin exceeds 0.1, which the
    /// default arithmetic must not (docs/performance.md).
    var wantsResidentInt8: Bool { !exact && residentWeights == .int8 }

    @Option(help: ArgumentHelp("What the KV cache stores per layer and position (MLA's latent and roped key): f16, the default, rounds each value once when it is written and takes half f32's bytes; bf16 takes as few and is coarser; f32 is exact. Bytes per position: `moestream inspect`; quality: docs/performance.md.", valueName: "f16|bf16|f32"))
    var kvCache: KVPrecision?

    @Flag(help: "Exact arithmetic: fp32 activations everywhere, an fp32 KV cache and a store's bf16 resident matrices, as transformers computes (within 1e-4 of its logits); the same as --expert-activations fp32 --resident-activations fp32 --kv-cache f32 --resident-weights bf16.")
    var exact = false

    /// What the KV cache stores: `--exact` or `--kv-cache`, else the default.
    var kv: KVPrecision { exact ? .f32 : kvCache ?? Self.defaultKV }

    /// The KV cache's default precision (docs/performance.md gives the measurements behind it).
    static let defaultKV = KVPrecision.f16

    /// What the routed experts multiply with: `--exact` or `--expert-activations`, else the default for their
    /// encoding: q8-gate-up-q16-down for int4, q8 for GGML blocks (the measurements behind both: docs/performance.md).
    func activations(ggmlExperts: Bool) -> ExpertActivations {
        exact ? .fp32 : expertActivations ?? (ggmlExperts ? .q8 : .q8GateUpQ16Down)
    }

    /// What the resident matrices multiply with: `--exact` or `--resident-activations`, else q8 for a GGUF's
    /// (GGML blocks), bf16x2 where AMX or AVX512-BF16 runs it, fp32 elsewhere (the measurements: docs/performance.md).
    /// The int8 matrices of a store converted with `--resident int8` take two int8 parts under any setting but
    /// fp32; where bf16x2 does not run the default stays fp32 for them too: on AVX2 the two-part tile (`madd`) is
    /// slower than the fp32 one.
    func resident(ggml: Bool) -> ResidentActivations {
        exact ? .fp32 : residentActivations ?? (ggml ? .q8 : ResidentActivations.bf16x2Kernel(isa: kernels) != nil ? .bf16x2 : .fp32)
    }

    @Option(help: ArgumentHelp("Prompt tokens a forward pass's per-token stages take at a time: attention, dense and shared MLPs, routed experts' inputs and results. Bounds a long prompt's scratch memory (about 0.4 MB per chunk token at Kimi K2's sizes, beside 57 KB per prompt token for the residual stream and an MoE layer's output); every routed expert is still read once per layer, and results do not change.", valueName: "tokens"))
    var prefillChunk: Int = 512

    @Option(help: ArgumentHelp("Prompt tokens one pass takes through all the layers: a longer prompt runs as consecutive passes, so its residual stream (2 · window · hidden floats: 57 KB per token at Kimi K2's sizes) is bounded by this, not by the prompt; each routed expert is read once per layer per window. Results do not change.", valueName: "tokens"))
    var prefillWindow: Int = 32_768

    @Option(help: ArgumentHelp("Pretend the machine has N NUMA nodes (testing placement and per-node budgets).", visibility: .hidden))
    var numaNodes: Int?

    func validate() throws {
        guard prefetchDepth >= 1 else { throw ValidationError("--prefetch-depth must be at least 1") }
        guard (1...4096).contains(ioDepth) else { throw ValidationError("--io-depth must be in 1...4096") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard (16...KimiModel.maxPrefillChunk).contains(prefillChunk) else {
            throw ValidationError("--prefill-chunk must be between 16 and \(KimiModel.maxPrefillChunk) tokens")
        }
        guard (16...KimiModel.maxPrefillChunk).contains(prefillWindow) else {
            throw ValidationError("--prefill-window must be between 16 and \(KimiModel.maxPrefillChunk) tokens")
        }
        guard kernels.isSupported else { throw ValidationError(KernelError.unsupported(kernels).description) }
        if exact, let a = expertActivations, a != .fp32 {
            throw ValidationError("--exact multiplies with fp32 activations; it cannot be combined with --expert-activations \(a.rawValue)")
        }
        if exact, kvCache == .bf16 {
            throw ValidationError("--exact keeps an fp32 KV cache; it cannot be combined with --kv-cache bf16")
        }
        if exact, residentWeights == .int8 {
            throw ValidationError("--exact multiplies a store's bf16 resident matrices; it cannot be combined with --resident-weights int8")
        }
        if exact, residentActivations == .q8 {
            throw ValidationError("--exact multiplies with fp32 activations; it cannot be combined with --resident-activations q8")
        }
        if residentActivations == .bf16x2 {
            if exact { throw ValidationError("--exact multiplies with fp32 activations; it cannot be combined with --resident-activations bf16x2") }
            guard ResidentActivations.bf16x2Kernel(isa: kernels) != nil else {
                throw ValidationError("--resident-activations bf16x2 multiplies on AMX tiles or with AVX512-BF16: this CPU "
                    + (kernels == .avx512 ? "has neither (or Linux did not grant the tile state)" : "runs the \(kernels.rawValue) kernels, not avx512"))
            }
        }
        if let cache, parseSize(cache) == nil && parsePercent(cache) == nil {
            throw ValidationError("--cache '\(cache)' is not a size such as 96G or 512M, nor a share such as 25%")
        }
    }

    /// Fixes the allocator's thresholds (freed models go back to the system) and starts the kernel pool: `--threads` threads (the caller and threads − 1 workers), each worker pinned
    /// to the CPUs of a NUMA node, spread over the nodes in turn; and selects `--kernels`.
    func startKernels() throws {
        Allocator.returnLargeBlocksWhenFreed()
        try Kernels.select(kernels)
        let topology = self.topology
        let nodes: [[Int]] = topology.isReal ? topology.nodes.map { $0.cpus }.filter { !$0.isEmpty } : []
        var pin: (@Sendable (Int) -> Void)? = nil
        if !nodes.isEmpty {
            pin = { i in
                _ = ThreadAffinity.pinCurrentThread(to: nodes[i % nodes.count])
                ThreadAffinity.nameCurrentThread("moe-k\(i)")
            }
        }
        KernelPool.configure(threads: threads, pin: pin)
    }

    var topology: NumaTopology { numaNodes.map { NumaTopology.fake(nodes: $0) } ?? .detect() }

    /// The cache configuration for `store`, and the lines to tell the user about it.
    func configuration(for store: ExpertStore) throws -> (CacheConfiguration, [String]) {
        let experts = store.manifest.experts.files.count * store.config.numRoutedExperts * store.manifest.experts.layout.extentBytes
        return try configuration(resident: store.residentBytesInMemory, experts: experts,
                                 extent: store.manifest.experts.layout.extentBytes, expertsPerToken: store.config.expertsPerToken)
    }

    /// The cache configuration for a model whose resident set is `resident` bytes and whose experts take `experts`
    /// bytes in slots of `extent`.
    func configuration(resident: Int, experts: Int, extent: Int, expertsPerToken: Int) throws -> (CacheConfiguration, [String]) {
        let topology = self.topology
        var notes: [String] = []
        var config: CacheConfiguration
        if let cacheNode {
            var budgets = Array(repeating: 0, count: topology.nodes.count)
            for part in cacheNode.split(separator: ",") {
                let kv = part.split(separator: "=")
                guard kv.count == 2, let node = Int(kv[0]), let bytes = parseSize(String(kv[1])),
                      let i = topology.nodes.firstIndex(where: { $0.id == node }) else {
                    throw CLIError("--cache-node '\(part)': expected NODE=SIZE with a node of this machine "
                        + "(\(topology.nodes.map { String($0.id) }.joined(separator: ", ")))")
                }
                budgets[i] = bytes
            }
            config = CacheConfiguration(budgets: budgets, topology: topology)
        } else if let cache {
            let bytes = parsePercent(cache).map { Int((Double(experts) * $0 / 100).rounded()) } ?? parseSize(cache)!
            config = CacheConfiguration(totalBudget: bytes, topology: topology)
        } else {
            let available = availableMemory()
            let headroom = max(2 << 30, available / 10)
            let budget = max(0, min(experts, available - resident - headroom))
            config = CacheConfiguration(totalBudget: budget, topology: topology)
            notes.append("cache budget \(humanBytes(budget)) (available \(humanBytes(available)) − resident \(humanBytes(resident)) "
                + "− headroom \(humanBytes(headroom)); all experts: \(humanBytes(experts)))")
        }
        config.policy = policy
        config.prefetch = prefetch
        config.prefetchDepth = prefetchDepth
        config.ioDepth = ioDepth
        config.engine = ioEngine
        config.computeThreads = threads
        for w in config.warnings(extentBytes: extent, expertsPerToken: expertsPerToken) {
            notes.append("WARNING: " + w)
        }
        return (config, notes)
    }
}

/// `96G`, `512M`, `1.5T`, `4096` (bytes), `2GiB`: powers of 1024.
func parseSize(_ s: String) -> Int? {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
    guard let last = t.last else { return nil }
    let units: [Character: Double] = ["K": 1024, "M": 1_048_576, "G": 1_073_741_824, "T": 1_099_511_627_776]
    // Below 2^62 bytes: a size sums with others later, and Int(Double) traps beyond Int's range.
    if let u = units[last], let v = Double(t.dropLast()), v >= 0, v * u < 0x1p62 { return Int(v * u) }
    if let v = Int(t), v >= 0, v < 1 << 62 { return v }
    return nil
}

/// `25%` → 25.
func parsePercent(_ s: String) -> Double? {
    guard s.hasSuffix("%"), let v = Double(s.dropLast()), v > 0, v <= 100 else { return nil }
    return v
}

/// What this process may still allocate: MemAvailable, or less where its memory cgroup's limit leaves less
/// (`AvailableMemory`).
func availableMemory() -> Int { AvailableMemory.bytes() }
