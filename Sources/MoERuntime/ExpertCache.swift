import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoESystem
import MoETensor

/// The expert cache: a fixed pool of extent-sized slots per NUMA node, filled from the store by one I/O thread
/// per node (io_uring or pread), evicted by a policy, served to the model through `ExpertProviding`.
///
/// Slots are allocated once, on their node, and registered with the node's ring; the token path allocates
/// nothing. A slot is `empty`, `loading` (queued or being read), `verifying` (read; its checksum pool is
/// hashing it) or `ready`; `failed` when its read or checksum failed `readAttempts` times in a row, `lost` when
/// its read was in flight on a ring that broke (the kernel may still write into it, so it is never used again).
/// Slots the model is computing with are pinned and never evicted. The model gets the same bytes whatever the budget,
/// policy, prefetch or engine, and its MoE sum does not depend on delivery order: output is bit-identical.
public final class ExpertCache: ExpertProviding, @unchecked Sendable {
    enum SlotState: UInt8 { case empty, loading, verifying, ready, failed, lost }

    public let configuration: CacheConfiguration
    let layout: ExpertLayout
    let extent: Int
    let expertsPerLayer: Int
    let topK: Int
    /// layer → index among MoE layers (or -1), and back.
    let moeOrdinal: [Int]
    let moeLayers: [Int]
    let placement: Placement
    let checksums: [[UInt64]]
    let filePaths: [String]
    let files: ReadFiles

    // Slots: global ids, node n owns [nodeStart[n], nodeStart[n] + nodeSlots[n]).
    let nodeStart: [Int]
    let nodeSlots: [Int]
    let memory: [NodeMemory]
    var slotKey: [Int32]            // expert key (ordinal · experts + e) or -1
    var slotState: [SlotState]
    var slotPins: [Int32]
    var slotFromPrefetch: [Bool]
    var slotUsed: [Bool]             // used since loaded
    var slotTarget: [Int]            // for prefetches: the position it is for (stale after it)
    var slotError: [String?]
    /// Bumped for every read of the slot; a read's tag carries it (`readTag`).
    var slotGeneration: [UInt32]
    /// Reads of the current expert that failed in a row.
    var slotAttempts: [UInt8]
    var slotOf: [Int32]              // key → slot or -1
    var policies: [any EvictionPolicy]
    var candidates: [UnsafeMutableBufferPointer<Int32>]  // per node scratch for victim search

    let lock = NSCondition()
    /// Serialises requests (their per-request tables below are shared).
    let requestLock = NSLock()
    // Per-request tables, allocated once: the token path allocates nothing.
    let pendingExpert: UnsafeMutablePointer<Int32>
    let pendingSlot: UnsafeMutablePointer<Int32>
    var pendingCount = 0
    let jobExpert: UnsafeMutablePointer<Int32>
    let jobSlot: UnsafeMutablePointer<Int32>
    var jobCount = 0
    var jobsPending = 0
    var jobError: Error? = nil
    var currentBody: ((Int, ExpertWeights) throws -> Void)? = nil
    var pools: ComputePools!
    var demandQueue: [[Int32]]
    var prefetchQueue: [[Int32]]
    var workers: [NodeWorker] = []
    var checksumPools: [ChecksumPool] = []
    /// The last few tags of ignored completions (for the tests of late completions).
    var staleTags: [UInt64] = []
    var stopping = false
    var tick: UInt64 = 0
    /// step · layers + layer of the request being served: prefetches for earlier positions are stale.
    var position = 0
    var step = 0
    var lastLayer = Int.max
    var stats: CacheStatistics
    var inFlightTotal = 0
    var busySince: ContinuousClock.Instant?
    /// Set when the I/O engine fell back from io_uring.
    public private(set) var fallbackMessage: String?
    public private(set) var engineName = ""
    var prefetcher: Prefetcher? = nil
    /// Records requests and router predictions when set (`--trace`).
    public var recorder: RoutingTraceRecorder? {
        didSet { if recorder != nil && prefetcher == nil { prefetcher = makePrefetcher(.off) } }
    }
    let residentForPrefetch: ResidentWeights?
    let modelConfig: ModelConfig

    func makePrefetcher(_ mode: PrefetchMode) -> Prefetcher {
        Prefetcher(cache: self, mode: mode, depth: configuration.prefetchDepth, resident: residentForPrefetch, config: modelConfig)
    }

    /// The trace header for this store and configuration.
    public var traceHeader: RoutingTrace.Header {
        RoutingTrace.Header(moeLayers: moeLayers, experts: expertsPerLayer, topK: topK, extentBytes: extent,
                            prefetchDepth: configuration.prefetchDepth)
    }

    /// - Parameter resident: the model's resident weights, for the router prefetcher (routers and norms of
    ///   later layers); nil disables router speculation.
    public init(store: ExpertStore, configuration: CacheConfiguration, resident: ResidentWeights? = nil) throws(StoreError) {
        self.configuration = configuration
        let config = store.config
        residentForPrefetch = resident
        modelConfig = config
        let layout = store.manifest.experts.layout
        let extent = layout.extentBytes
        self.layout = layout
        self.extent = extent
        expertsPerLayer = config.numRoutedExperts
        topK = config.expertsPerToken
        moeLayers = config.moeLayers
        var ordinal = Array(repeating: -1, count: config.numLayers)
        for (i, l) in moeLayers.enumerated() { ordinal[l] = i }
        moeOrdinal = ordinal
        placement = Placement(topology: configuration.topology)
        checksums = store.manifest.experts.files.map { $0.checksums.map { UInt64($0, radix: 16) ?? 0 } }
        filePaths = store.manifest.experts.files.map { store.path + "/" + $0.path }
        do { files = try ReadFiles(paths: filePaths, direct: configuration.directIO) } catch { throw .system(error) }

        var start: [Int] = [], counts: [Int] = [], mem: [NodeMemory] = []
        var total = 0
        for (i, node) in configuration.topology.nodes.enumerated() {
            let slots = max(0, configuration.budgets[i] / extent)
            guard slots > 0 else {
                throw .badManifest(file: store.path, reason: "the cache budget of node \(node.id) (\(configuration.budgets[i]) bytes) "
                    + "cannot hold one expert (\(extent) bytes)")
            }
            start.append(total)
            counts.append(slots)
            do { mem.append(try NodeMemory(bytes: slots * extent, node: node.id, topology: configuration.topology)) } catch {
                throw .system(error)
            }
            total += slots
        }
        nodeStart = start
        nodeSlots = counts
        memory = mem
        slotKey = Array(repeating: -1, count: total)
        slotState = Array(repeating: .empty, count: total)
        slotPins = Array(repeating: 0, count: total)
        slotFromPrefetch = Array(repeating: false, count: total)
        slotUsed = Array(repeating: false, count: total)
        slotTarget = Array(repeating: 0, count: total)
        slotError = Array(repeating: nil, count: total)
        slotGeneration = Array(repeating: 0, count: total)
        slotAttempts = Array(repeating: 0, count: total)
        slotOf = Array(repeating: -1, count: moeLayers.count * expertsPerLayer)
        pendingExpert = .allocate(capacity: expertsPerLayer)
        pendingSlot = .allocate(capacity: expertsPerLayer)
        jobExpert = .allocate(capacity: expertsPerLayer)
        jobSlot = .allocate(capacity: expertsPerLayer)
        policies = counts.map { configuration.policy.make(slots: $0) }
        candidates = counts.map { UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(1, $0)) }
        demandQueue = counts.map { _ in [] }
        prefetchQueue = counts.map { _ in [] }
        for i in demandQueue.indices {
            demandQueue[i].reserveCapacity(expertsPerLayer)
            prefetchQueue[i].reserveCapacity(expertsPerLayer)
        }
        stats = CacheStatistics(layers: moeLayers.map { CacheStatistics.Layer(layer: $0, experts: config.numRoutedExperts) },
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

        for i in configuration.topology.nodes.indices {
            let region = UnsafeMutableRawBufferPointer(start: mem[i].pointer, count: counts[i] * extent)
            // Register the slot memory in pieces of at most 1 GiB (the kernel's limit per buffer).
            let piece = (1 << 30) / extent * extent
            let regions = counts[i] == 0 ? [] : stride(from: 0, to: region.count, by: max(piece, extent)).map {
                UnsafeMutableRawBufferPointer(rebasing: region[$0..<min($0 + max(piece, extent), region.count)])
            }
            let made = makeBlockReader(configuration.engine, files: files, depth: configuration.ioDepth, registeredRegions: regions)
            if let f = made.fallback { fallbackMessage = f }
            engineName = made.reader.engine
            var reader = made.reader
            if let ring = reader as? URingReader { ring.injectedSubmitResults = configuration.faults.ringSubmitResults }
            if !configuration.faults.rules.isEmpty { reader = FaultyReader(reader, plan: configuration.faults) }
            let cpus = configuration.topology.isReal ? configuration.topology.nodes[i].cpus : []
            workers.append(NodeWorker(cache: self, node: i, reader: reader, cpus: cpus))
            let threads = configuration.checksumThreads ?? ChecksumPool.threads(cpus: configuration.topology.nodes[i].cpus.count)
            checksumPools.append(ChecksumPool(threads: threads, cpus: cpus, name: "moe-sum\(i)") { [self] tag, ok in
                verified(tag: tag, ok: ok)
            })
        }
        stats.checksumThreads = checksumPools.isEmpty ? 0
            : configuration.checksumThreads ?? ChecksumPool.threads(cpus: configuration.topology.nodes[0].cpus.count)
        stats.readAttempts = configuration.readAttempts
        stats.engine = engineName
        if configuration.prefetch != .off { prefetcher = makePrefetcher(configuration.prefetch) }
        pools = ComputePools(cache: self, topology: configuration.topology, threads: configuration.computeThreads,
                             capacity: expertsPerLayer)
        workers.forEach { $0.start() }
    }

    deinit {
        candidates.forEach { $0.deallocate() }
        [pendingExpert, pendingSlot, jobExpert, jobSlot].forEach { $0.deallocate() }
    }

    /// Stops the I/O threads (after their reads in flight finish) and the compute workers, and lets go of them:
    /// the workers hold the cache strongly while they run (a thread must never see it freed), so until this is
    /// called the cache, its slot memory, rings, descriptors and threads stay. Afterwards nothing refers back to
    /// the cache and dropping the model frees all of it (`moestream bench lifecycle` measures this). The cache
    /// serves nothing afterwards; calling it again does nothing.
    public func shutdown() {
        lock.lock()
        if stopping {
            lock.unlock()
            return
        }
        stopping = true
        lock.broadcast()
        lock.unlock()
        workers.forEach { $0.join() }
        checksumPools.forEach { $0.join() }  // after the workers: they queue checks until their last read is in
        pools?.join()
        // The threads are gone: break the cycles (worker → cache → worker) so the rings and memory go with the cache.
        lock.lock()
        workers = []
        checksumPools = []
        pools = nil
        prefetcher = nil
        lock.unlock()
    }

    public var totalSlots: Int { slotKey.count }

    @inline(__always) func key(_ ordinal: Int, _ e: Int) -> Int { ordinal * expertsPerLayer + e }
    @inline(__always) func node(ofKey k: Int) -> Int {
        placement.nodeIndex(layer: moeLayers[k / expertsPerLayer], expert: k % expertsPerLayer)
    }
    @inline(__always) func node(ofSlot s: Int) -> Int {
        var n = 0
        while n + 1 < nodeStart.count && s >= nodeStart[n + 1] { n += 1 }
        return n
    }

    // MARK: - Slot management (lock held)

    /// An evictable slot on `node`: empty first, else the policy's choice among unpinned ready (or failed) slots.
    /// `protectPrefetched`: do not evict prefetched experts not used yet (a prefetch must not undo another).
    func victim(node n: Int, protectPrefetched: Bool) -> Int? {
        let start = nodeStart[n], count = nodeSlots[n]
        var c = 0
        for s in start..<(start + count) {
            switch slotState[s] {
            case .empty: return s
            case .loading, .verifying, .lost: continue
            case .ready, .failed:
                if slotPins[s] > 0 { continue }
                if protectPrefetched && slotFromPrefetch[s] && !slotUsed[s] { continue }
                candidates[n][c] = Int32(s - start)
                c += 1
            }
        }
        guard let local = policies[n].victim(among: UnsafeBufferPointer(rebasing: candidates[n][0..<c]), now: tick) else { return nil }
        return start + local
    }

    /// Empties slot `s`, counting a wasted prefetch if it never served the model.
    func evict(_ s: Int) {
        let k = Int(slotKey[s])
        if k >= 0 {
            if slotFromPrefetch[s] && !slotUsed[s] && slotState[s] == .ready { stats.layers[k / expertsPerLayer].wastedPrefetches += 1 }
            slotOf[k] = -1
            stats.nodes[node(ofSlot: s)].occupied -= 1
        }
        slotKey[s] = -1
        slotState[s] = .empty
        slotError[s] = nil
    }

    /// Puts expert `k` in slot `s` and queues its read.
    func assign(_ s: Int, key k: Int, prefetch: Bool, target: Int) {
        evict(s)
        slotKey[s] = Int32(k)
        slotOf[k] = Int32(s)
        slotState[s] = .loading
        slotFromPrefetch[s] = prefetch
        slotUsed[s] = false
        slotTarget[s] = target
        slotAttempts[s] = 0
        let n = node(ofSlot: s)
        stats.nodes[n].occupied += 1
        policies[n].filled(s - nodeStart[n], now: tick)
        if prefetch {
            prefetchQueue[n].append(Int32(s))
            stats.layers[k / expertsPerLayer].prefetchesIssued += 1
        } else {
            demandQueue[n].append(Int32(s))
        }
        lock.broadcast()
    }

    /// Moves a queued prefetch of slot `s` to the front: the model needs it now.
    func promote(_ s: Int) {
        let n = node(ofSlot: s)
        if let i = prefetchQueue[n].firstIndex(of: Int32(s)) {
            prefetchQueue[n].remove(at: i)
            demandQueue[n].append(Int32(s))
            lock.broadcast()
        }
    }

    /// Slot memory of `s`.
    @inline(__always) func buffer(_ s: Int) -> UnsafeMutableRawPointer {
        let n = node(ofSlot: s)
        return memory[n].pointer + (s - nodeStart[n]) * extent
    }

    // MARK: - I/O completions (called by node workers)

    /// The tag of the slot's current read: generation in the high 32 bits, slot in the low.
    @inline(__always) func readTag(_ s: Int) -> UInt64 { UInt64(slotGeneration[s]) << 32 | UInt64(UInt32(s)) }

    /// The slot a tag names, if the tag is of the slot's current read and the slot is in `state`.
    private func current(_ tag: UInt64, _ state: SlotState) -> Int? {
        let s = Int(tag & 0xFFFF_FFFF)
        guard s < totalSlots, slotGeneration[s] == UInt32(tag >> 32), slotState[s] == state else { return nil }
        return s
    }

    /// Where the slot's expert lives on disk, for error messages.
    private func location(ofSlot s: Int) -> (ordinal: Int, expert: Int, text: String) {
        let k = Int(slotKey[s])
        let ordinal = k / expertsPerLayer, e = k % expertsPerLayer
        return (ordinal, e, "\(filePaths[ordinal]) at offset \(e * extent)")
    }

    /// A finished read (called by the node's worker): a full read goes to the node's checksum pool, anything
    /// else is retried or fails. A completion for an earlier read of the slot is counted and ignored.
    func completed(tag: UInt64, result: Int) {
        lock.lock()
        defer { lock.unlock() }
        guard let s = current(tag, .loading) else {
            stats.staleCompletions += 1
            if staleTags.count < 16 { staleTags.append(tag) }
            return
        }
        let (ordinal, e, at) = location(ofSlot: s)
        if result > 0 {
            stats.layers[ordinal].bytesRead += result
            stats.nodes[node(ofSlot: s)].bytesRead += result
        }
        guard result == extent else {
            readFailed(s, result < 0 ? "read failed: \(String(cString: strerror(Int32(-result)))) in \(at)"
                       : "short read (\(result) of \(extent) bytes) in \(at)")
            return
        }
        slotState[s] = .verifying
        checksumPools[node(ofSlot: s)].enqueue(tag: tag, bytes: buffer(s), count: extent, expected: checksums[ordinal][e])
    }

    /// A checksum pool's verdict on a slot's bytes.
    func verified(tag: UInt64, ok: Bool) {
        lock.lock()
        defer { lock.unlock() }
        guard let s = current(tag, .verifying) else {
            stats.staleCompletions += 1
            return
        }
        if ok {
            slotState[s] = .ready
            lock.broadcast()
        } else {
            readFailed(s, "checksum mismatch in \(location(ofSlot: s).text)")
        }
    }

    /// A read of slot `s` failed: read it again, or after `readAttempts` failures in a row mark it failed (the
    /// requests waiting for it then fail with `why`; a later request tries again). Lock held.
    private func readFailed(_ s: Int, _ why: String) {
        let attempts = Int(slotAttempts[s]) + 1
        if attempts < configuration.readAttempts {
            slotAttempts[s] = UInt8(min(attempts, 255))
            stats.readRetries += 1
            slotState[s] = .loading
            demandQueue[node(ofSlot: s)].append(Int32(s))
        } else {
            stats.failedReads += 1
            slotState[s] = .failed
            slotError[s] = attempts > 1 ? "\(why) (\(attempts) attempts)" : why
        }
        lock.broadcast()
    }

    /// Tags of the node's reads that are in flight (loading and not queued), other than `excluding`.
    func loadingTags(node n: Int, excluding: Set<UInt64>) -> [UInt64] {
        lock.lock()
        defer { lock.unlock() }
        return (nodeStart[n]..<(nodeStart[n] + nodeSlots[n])).filter {
            slotState[$0] == .loading && !demandQueue[n].contains(Int32($0)) && !prefetchQueue[n].contains(Int32($0))
        }.map(readTag).filter { !excluding.contains($0) }
    }

    /// Reads a failed reader accepted but never started: queue them again (on the reader that replaces it).
    func readsAbandoned(_ tags: [UInt64]) {
        lock.lock()
        defer { lock.unlock() }
        for t in tags {
            guard let s = current(t, .loading) else { continue }
            demandQueue[node(ofSlot: s)].append(Int32(s))
        }
        lock.broadcast()
    }

    /// Reads a failed reader started and never returned: their slots are retired for good (the kernel may still
    /// write into them); requests waiting for them fail with `reason`, and their experts are read again elsewhere.
    func readsLost(_ tags: [UInt64], reason: String) {
        lock.lock()
        defer { lock.unlock() }
        for t in tags {
            guard let s = current(t, .loading) else { continue }
            let k = Int(slotKey[s])
            if k >= 0 {
                slotOf[k] = -1
                stats.nodes[node(ofSlot: s)].occupied -= 1
            }
            slotKey[s] = -1
            slotState[s] = .lost
            slotError[s] = reason
            stats.retiredSlots += 1
        }
        lock.broadcast()
    }

    /// A node's worker replaced its failed reader: say so once, and report the engine now in use.
    func readerReplaced(node: Int, engine: String, message: String) {
        lock.lock()
        fallbackMessage = message
        engineName = engine
        stats.engine = engine
        stats.readerFailures += 1
        lock.unlock()
        configuration.log(message)
    }

    func readsStarted(_ n: Int) {
        if inFlightTotal == 0 { busySince = .now }
        inFlightTotal += n
    }

    func readsFinished(_ n: Int) {
        inFlightTotal -= n
        if inFlightTotal == 0, let since = busySince {
            stats.readBusySeconds += (ContinuousClock.now - since).seconds
            busySince = nil
        }
    }

    // MARK: - ExpertProviding

    public func withExperts(layer: Int, _ experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        precondition(moeOrdinal[layer] >= 0, "layer \(layer) has no routed experts")
        lock.lock()
        let stopped = stopping
        lock.unlock()
        if stopped { throw ModelError.expertUnavailable(layer: layer, expert: experts.first ?? -1, reason: "the expert cache was shut down") }
        // One request at a time: its job table and pending list are reused by every request.
        requestLock.lock()
        defer { requestLock.unlock() }
        try withoutActuallyEscaping(body) { body in try serve(layer: layer, experts, body) }
    }

    /// Serves one request: pins what is cached, reads what is not, hands each expert to a compute worker of its
    /// node as soon as its bytes are ready (while other reads are still in flight), and returns when every
    /// expert has been computed. Only one request runs at a time (`requestLock`).
    private func serve(layer: Int, _ experts: [Int], _ body: @escaping (Int, ExpertWeights) throws -> Void) throws {
        let ordinal = moeOrdinal[layer]
        precondition(experts.count <= expertsPerLayer && zip(experts, experts.dropFirst()).allSatisfy { $0 < $1 },
                     "experts must be distinct and ascending")
        lock.lock()
        if layer <= lastLayer { step += 1 }
        lastLayer = layer
        position = step * moeOrdinal.count + layer
        recorder?.record(.request(step: step, layer: layer, experts: experts))
        currentBody = body
        jobError = nil
        jobsPending = 0
        jobCount = 0
        pendingCount = 0

        // Classify every expert once (statistics) and pin those already cached or on their way.
        for e in experts {
            stats.layers[ordinal].activations[e] += 1
            let k = key(ordinal, e)
            let s = Int(slotOf[k])
            pendingExpert[pendingCount] = Int32(e)
            pendingSlot[pendingCount] = Int32(s)
            pendingCount += 1
            guard s >= 0 else {
                stats.layers[ordinal].misses += 1
                continue
            }
            slotPins[s] += 1
            switch slotState[s] {
            case .ready:
                if slotFromPrefetch[s] && !slotUsed[s] { stats.layers[ordinal].prefetchHits += 1 } else { stats.layers[ordinal].demandHits += 1 }
            case .loading, .verifying:
                if slotFromPrefetch[s] {
                    stats.layers[ordinal].latePrefetches += 1
                    promote(s)
                } else {
                    stats.layers[ordinal].misses += 1
                }
            case .failed, .empty, .lost:
                // A read that failed for an earlier request: try again (the error may have been transient).
                stats.layers[ordinal].misses += 1
                slotState[s] = .loading
                slotAttempts[s] = 0
                slotFromPrefetch[s] = false
                demandQueue[node(ofSlot: s)].append(Int32(s))
                lock.broadcast()
            }
        }

        var failure: ModelError? = nil
        while true {
            if failure == nil && jobError == nil {
                var i = 0
                while i < pendingCount {
                    let e = Int(pendingExpert[i])
                    var s = Int(pendingSlot[i])
                    if s < 0 {
                        // Not cached: take a slot (retried later when every slot of the node is pinned).
                        let k = key(ordinal, e)
                        guard let v = victim(node: node(ofKey: k), protectPrefetched: false) else { i += 1; continue }
                        assign(v, key: k, prefetch: false, target: position)
                        slotPins[v] += 1
                        pendingSlot[i] = Int32(v)
                        s = v
                    }
                    switch slotState[s] {
                    case .ready:
                        jobExpert[jobCount] = Int32(e)
                        jobSlot[jobCount] = Int32(s)
                        pools!.enqueue(jobCount, node: node(ofSlot: s))
                        jobCount += 1
                        jobsPending += 1
                    case .failed, .lost:
                        failure = .expertUnavailable(layer: layer, expert: e, reason: slotError[s] ?? "read failed")
                        slotPins[s] -= 1
                    default:
                        i += 1
                        continue
                    }
                    pendingCount -= 1  // swap-remove
                    pendingExpert[i] = pendingExpert[pendingCount]
                    pendingSlot[i] = pendingSlot[pendingCount]
                    if failure != nil { break }
                }
            }
            let stopping = failure != nil || jobError != nil
            if jobsPending == 0 && (pendingCount == 0 || stopping) { break }
            // Waiting with nothing to compute is the model stalling on the drive (on a late prefetch, if one of
            // the experts it waits for was started by the prefetcher).
            let start = jobsPending == 0 ? ContinuousClock.now : nil
            var late = false
            if start != nil {
                for i in 0..<pendingCount where pendingSlot[i] >= 0 && slotFromPrefetch[Int(pendingSlot[i])] { late = true }
            }
            lock.wait()
            if let start {
                let waited = (ContinuousClock.now - start).seconds
                stats.layers[ordinal].stallSeconds += waited
                if late { stats.layers[ordinal].lateStallSeconds += waited }
            }
        }
        for i in 0..<pendingCount where pendingSlot[i] >= 0 {
            let s = Int(pendingSlot[i])
            if slotPins[s] > 0 { slotPins[s] -= 1 }
        }
        pendingCount = 0
        currentBody = nil
        let thrown = jobError
        jobError = nil
        if failure == nil && thrown == nil { prefetcher?.observe(ordinal: ordinal, experts: experts) }
        lock.broadcast()
        lock.unlock()
        if let failure { throw failure }
        if let thrown { throw thrown }
    }

    /// Computes job `j` (on a compute worker of the slot's node), then unpins its slot.
    func runJob(_ j: Int) {
        lock.lock()
        let e = Int(jobExpert[j]), s = Int(jobSlot[j])
        let skip = jobError != nil
        lock.unlock()
        let error = skip ? nil : compute(expert: e, slot: s)
        lock.lock()
        if let error, jobError == nil { jobError = error }
        slotPins[s] -= 1
        slotUsed[s] = true
        tick &+= 1
        let n = node(ofSlot: s)
        policies[n].used(s - nodeStart[n], now: tick)
        jobsPending -= 1
        lock.broadcast()
        lock.unlock()
    }

    /// Calls the request's body for one expert. A separate, non-inlined function so the worker's reference to
    /// the body is gone before the request is told the job is done (the request's `withoutActuallyEscaping`
    /// checks that nothing still holds its closure).
    @inline(never)
    private func compute(expert e: Int, slot s: Int) -> Error? {
        lock.lock()
        let body = currentBody
        lock.unlock()
        guard let body else { return nil }
        let m = layout.weights(at: UnsafeRawPointer(buffer(s)), owner: self)
        do { try body(e, ExpertWeights(gate: m.gate, up: m.up, down: m.down)) } catch { return error }
        return nil
    }

    public func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens: Int) {
        lock.lock()
        let p = prefetcher  // read under the lock: `shutdown` clears it
        lock.unlock()
        p?.hint(afterAttentionOf: layer, hidden: hidden, tokens: tokens)
    }

    public func forwardDidFinish(tokens: Int) {
        lock.lock()
        stats.tokens += tokens
        lock.unlock()
    }

    /// Asks for `keys` to be read ahead, best first, within what the node can take without evicting anything
    /// pinned or prefetched-but-unused; returns how many reads were queued. Called by the prefetcher.
    func prefetch(ordinal: Int, experts: UnsafeBufferPointer<Int32>, target: Int) -> Int {
        guard !stopping else { return 0 }
        var queued = 0
        for e in experts {
            let k = key(ordinal, Int(e))
            guard slotOf[k] < 0 else { continue }
            let n = node(ofKey: k)
            guard demandQueue[n].count + prefetchQueue[n].count + workers[n].inFlightHint < configuration.ioDepth,
                  let v = victim(node: n, protectPrefetched: true) else { continue }
            assign(v, key: k, prefetch: true, target: target)
            queued += 1
        }
        return queued
    }

    /// Fills the cache before the first request (`--preload`): every expert of every MoE layer, layer by layer,
    /// while slots last, read and verified as a demand read is. The statistics then start from zero (the count
    /// of preloaded experts kept), so hit rates describe the run, not the warm-up. Returns the experts loaded.
    @discardableResult
    public func preload() throws -> Int {
        var loaded = 0
        let batch = max(1, min(expertsPerLayer, totalSlots / 2))
        outer: for layer in moeLayers {
            var first = 0
            while first < expertsPerLayer {
                let count = min(batch, expertsPerLayer - first, totalSlots - loaded)
                guard count > 0 else { break outer }
                try withExperts(layer: layer, Array(first..<(first + count))) { _, _ in }
                loaded += count
                first += count
            }
        }
        lock.lock()
        stats.layers = stats.layers.map { CacheStatistics.Layer(layer: $0.layer, experts: $0.activations.count) }
        for i in stats.nodes.indices { stats.nodes[i].bytesRead = 0 }
        stats.readBusySeconds = 0
        if inFlightTotal > 0 { busySince = .now }  // reads still in flight count from now
        stats.preloadedExperts = loaded
        lock.unlock()
        return loaded
    }

    /// A snapshot of the statistics.
    public func statistics() -> CacheStatistics {
        lock.lock()
        defer { lock.unlock() }
        var s = stats
        if let since = busySince { s.readBusySeconds += (ContinuousClock.now - since).seconds }
        return s
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
