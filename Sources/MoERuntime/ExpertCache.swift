import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoESystem
import MoETensor

/// The expert cache: a fixed pool of extent-sized slots per NUMA node, filled from the store by one I/O thread
/// per node (io_uring or pread), verified by a checksum pool per node, evicted by a policy, served to the model
/// through `ExpertProviding`.
///
/// Slots are allocated once, on their node, and registered with the node's ring; the token path allocates
/// nothing. The state of every slot, the queues and the statistics live in a `SlotTable`, which owns the one lock;
/// this type builds the table, the readers and the threads, and takes them down (`shutdown`). The model gets the
/// same bytes whatever the budget, policy, prefetch or engine, and its MoE sum does not depend on delivery order:
/// output is bit-identical.
public final class ExpertCache: ExpertProviding, @unchecked Sendable {  // `workers`, `checksumPools`, `pools` change only in `shutdown`, under `shutdownLock`
    public let configuration: CacheConfiguration
    /// Where the experts are and how a slot holds one (a store's extents, or a GGUF's slices).
    let reads: ExpertReads
    let files: ReadFiles
    /// Slot memory, one block per node (the table's slots point into it).
    let memory: [NodeMemory]
    let table: SlotTable
    let topK: Int
    let residentForPrefetch: ResidentWeights?
    let modelConfig: ModelConfig
    /// Serialises requests (the table's per-request tables are shared).
    private let requestLock = NSLock()
    private let shutdownLock = NSLock()
    private(set) var workers: [NodeWorker] = []
    private var checksumPools: [ChecksumPool] = []
    private var pools: ComputePools?
    /// Set when io_uring could not be set up and the cache reads with pread from the start.
    private let setupFallback: String?
    private let setupEngine: String

    /// The engine's fallback line: io_uring refused at setup, or a node's reader that failed since.
    public var fallbackMessage: String? { table.currentFallback ?? setupFallback }
    public var engineName: String { table.currentEngine }

    /// Records requests and router predictions when set (`--trace`).
    public var recorder: RoutingTraceRecorder? {
        get { table.recorder }
        set {
            table.recorder = newValue
            if newValue != nil && table.prefetcher == nil && !table.isStopped { table.setPrefetcher(makePrefetcher(.off)) }
        }
    }

    func makePrefetcher(_ mode: PrefetchMode) -> Prefetcher {
        Prefetcher(table: table, mode: mode, depth: configuration.prefetchDepth, resident: residentForPrefetch, config: modelConfig)
    }

    /// The trace header for this store and configuration.
    public var traceHeader: RoutingTrace.Header {
        RoutingTrace.Header(moeLayers: table.moeLayers, experts: table.expertsPerLayer, topK: topK, extentBytes: table.extent,
                            prefetchDepth: configuration.prefetchDepth)
    }

    /// - Parameter resident: the model's resident weights, for the router prefetcher (routers and norms of
    ///   later layers); nil disables router speculation.
    public convenience init(store: ExpertStore, configuration: CacheConfiguration, resident: ResidentWeights? = nil) throws(StoreError) {
        try self.init(config: store.config, reads: store.expertReads, configuration: configuration, resident: resident)
    }

    /// A cache over the experts `reads` describes (a store's, or a GGUF's read directly: `GGUFExpertReads`).
    public init(config: ModelConfig, reads: ExpertReads, configuration requested: CacheConfiguration,
                resident: ResidentWeights? = nil) throws(StoreError) {
        var configuration = requested
        // Every part of an expert goes to the reader in one batch.
        configuration.ioDepth = max(configuration.ioDepth, reads.maxSegments)
        self.configuration = configuration
        residentForPrefetch = resident
        modelConfig = config
        self.reads = reads
        let extent = reads.slotBytes
        topK = config.expertsPerToken
        do { files = try ReadFiles(paths: reads.paths, direct: configuration.directIO) } catch { throw .system(error) }

        var counts: [Int] = [], mem: [NodeMemory] = []
        for (i, node) in configuration.topology.nodes.enumerated() {
            let slots = max(0, configuration.budgets[i] / extent)
            guard slots > 0 else {
                throw .badManifest(file: reads.label, reason: "the cache budget of node \(node.id) (\(configuration.budgets[i]) bytes) "
                    + "cannot hold one expert (\(extent) bytes)")
            }
            counts.append(slots)
            do { mem.append(try NodeMemory(bytes: slots * extent, node: node.id, topology: configuration.topology)) } catch {
                throw .system(error)
            }
        }
        memory = mem

        // One reader per node, its slot memory registered in pieces of at most 1 GiB (the kernel's limit per buffer).
        var readers: [any BlockReader] = []
        var fallback: String? = nil
        for i in configuration.topology.nodes.indices {
            let region = UnsafeMutableRawBufferPointer(start: mem[i].pointer, count: counts[i] * extent)
            let piece = max((1 << 30) / extent * extent, extent)
            let regions = stride(from: 0, to: region.count, by: piece).map {
                UnsafeMutableRawBufferPointer(rebasing: region[$0..<min($0 + piece, region.count)])
            }
            let made = makeBlockReader(configuration.engine, files: files, depth: configuration.ioDepth, registeredRegions: regions)
            if let f = made.fallback { fallback = f }
            var reader = made.reader
            if let ring = reader as? URingReader { ring.injectedSubmitResults = configuration.faults.ringSubmitResults }
            if !configuration.faults.rules.isEmpty { reader = FaultyReader(reader, plan: configuration.faults) }
            readers.append(reader)
        }
        setupFallback = fallback
        setupEngine = readers.first?.engine ?? ""

        let sumThreads = configuration.topology.nodes.map { configuration.checksumThreads ?? ChecksumPool.threads(cpus: $0.cpus.count) }
        var stats = CacheStatistics(layers: config.moeLayers.map { CacheStatistics.Layer(layer: $0, experts: config.numRoutedExperts) },
                                    nodes: configuration.topology.nodes.enumerated().map { i, n in
                                        CacheStatistics.Node(node: n.id, slots: counts[i], occupied: 0,
                                                             budgetBytes: counts[i] * extent, bytesRead: 0, bound: mem[i].bound)
                                    })
        stats.policy = configuration.policy.rawValue
        stats.prefetch = configuration.prefetch.rawValue
        stats.prefetchDepth = configuration.prefetchDepth
        stats.ioDepth = configuration.ioDepth
        stats.extentBytes = extent
        stats.direct = files.direct
        stats.engine = setupEngine
        stats.readAttempts = configuration.readAttempts
        stats.checksumThreads = sumThreads.first ?? 0

        let table = SlotTable(reads: reads, expertsPerLayer: config.numRoutedExperts, moeLayers: config.moeLayers,
                              layers: config.numLayers, placement: Placement(topology: configuration.topology),
                              nodeSlots: counts, slotBase: mem.map { $0.pointer },
                              policy: configuration.policy, readAttempts: configuration.readAttempts, ioDepth: configuration.ioDepth,
                              engine: setupEngine, stats: stats, log: configuration.log)
        self.table = table
        for (i, node) in configuration.topology.nodes.enumerated() {
            let cpus = configuration.topology.isReal ? node.cpus : []
            checksumPools.append(ChecksumPool(threads: sumThreads[i], cpus: cpus, name: "moe-sum\(i)") { tag, ok in
                table.verified(tag: tag, ok: ok)
            })
            workers.append(NodeWorker(table: table, files: files, node: i, reader: readers[i], cpus: cpus,
                                      drainLimit: configuration.drainLimit))
        }
        table.checksumPools = checksumPools
        if configuration.prefetch != .off { table.setPrefetcher(makePrefetcher(configuration.prefetch)) }
        pools = ComputePools(table: table, topology: configuration.topology, threads: configuration.computeThreads) { [self] j in
            runJob(j)
        }
        workers.forEach { $0.start() }
    }

    /// Stops the I/O threads (after their reads in flight finish), the checksum pools and the compute workers,
    /// and lets go of them: the compute workers hold the cache strongly while they run (a thread must never see
    /// it freed), so until this is called the cache, its slot memory, rings, descriptors and threads stay.
    /// Afterwards nothing refers back to the cache and dropping the model frees all of it (`moestream bench
    /// lifecycle` measures this). The cache serves nothing afterwards; calling it again does nothing.
    public func shutdown() {
        shutdownLock.lock()
        defer { shutdownLock.unlock() }
        guard !table.isStopped else { return }
        table.stop()
        workers.forEach { $0.join() }
        checksumPools.forEach { $0.join() }  // after the workers: they queue checks until their last read is in
        pools?.join()
        // The threads are gone: break the cycles (compute worker → cache, pool → table) so everything goes with the cache.
        workers = []
        checksumPools = []
        table.checksumPools = []
        pools = nil
    }

    public var totalSlots: Int { table.totalSlots }

    // MARK: - ExpertProviding

    public func withExperts(layer: Int, _ experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        precondition(table.moeOrdinal[layer] >= 0, "layer \(layer) has no routed experts")
        // One request at a time: the table's job table and pending list are reused by every request.
        requestLock.lock()
        defer { requestLock.unlock() }
        try withoutActuallyEscaping(body) { body in try table.serve(layer: layer, experts, body) }
    }

    /// Computes job `j` (on a compute worker of the slot's node), then unpins its slot.
    private func runJob(_ j: Int) {
        let (e, s, skip) = table.startJob(j)
        let error = skip ? nil : compute(expert: e, slot: s)
        table.finishJob(j, slot: s, error: error)
    }

    /// Calls the request's body for one expert. A separate, non-inlined function so the worker's reference to
    /// the body is gone before the request is told the job is done (the request's `withoutActuallyEscaping`
    /// checks that nothing still holds its closure).
    @inline(never)
    private func compute(expert e: Int, slot s: Int) -> Error? {
        guard let (body, layer) = table.requestBody() else { return nil }
        do { try body(e, reads.weights(UnsafeRawPointer(table.buffer(s)), layer, e, self)) } catch { return error }
        return nil
    }

    public func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens: Int) {
        table.prefetcher?.hint(afterAttentionOf: layer, hidden: hidden, tokens: tokens)  // nil after `shutdown`
    }

    public func forwardDidFinish(tokens: Int) { table.forwardDidFinish(tokens: tokens) }

    /// Fills the cache before the first request (`--preload`): every expert of every MoE layer, layer by layer,
    /// while slots last, read and verified as a demand read is. The statistics then start from zero (the count
    /// of preloaded experts kept), so hit rates describe the run, not the warm-up. Returns the experts loaded.
    @discardableResult
    public func preload() throws -> Int {
        var loaded = 0
        let perLayer = table.expertsPerLayer, slots = table.totalSlots
        let batch = max(1, min(perLayer, slots / 2))
        outer: for layer in table.moeLayers {
            var first = 0
            while first < perLayer {
                let count = min(batch, perLayer - first, slots - loaded)
                guard count > 0 else { break outer }
                try withExperts(layer: layer, Array(first..<(first + count))) { _, _ in }
                loaded += count
                first += count
            }
        }
        table.preloadFinished(experts: loaded)
        return loaded
    }

    /// A snapshot of the statistics.
    public func statistics() -> CacheStatistics { table.statistics() }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
