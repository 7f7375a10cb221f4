import Foundation
import MoEExpertStore
import MoEModel
import MoESystem

/// The expert cache's shared state and the one lock that guards it: which expert each slot holds and in what
/// state, who pins it, which reads are queued or in flight, the eviction policies, the statistics, and the
/// request being served with its compute jobs. Every thread that touches the cache — the model's request, the
/// node I/O workers, the checksum pools, the compute workers, the prefetcher — goes through the methods below,
/// each of which takes the lock (or says "lock held" when a caller already holds it); none reaches into the
/// fields.
///
/// A slot is `empty`, `loading` (queued or being read), `verifying` (read; a checksum pool is hashing it) or
/// `ready`; `failed` when its read or checksum failed `readAttempts` times in a row; `lost` when its read was in
/// flight on a reader that broke (the kernel may still write into it, so it is never used again). Slots the model
/// is computing with are pinned and never evicted; loading and verifying slots are never evicted either, so a
/// slot's bytes change only while no one may read them.
final class SlotTable: @unchecked Sendable {  // every `var` is guarded by `lock`; the `let`s are fixed at init
    enum SlotState: UInt8 { case empty, loading, verifying, ready, failed, lost }

    // Geometry, fixed at init.
    /// Bytes of one slot.
    let extent: Int
    /// Where each expert's bytes are, and how a slot holds them (one read per part).
    let reads: ExpertReads
    let expertsPerLayer: Int
    /// layer → index among MoE layers (or -1), and back.
    let moeOrdinal: [Int]
    let moeLayers: [Int]
    let placement: Placement
    /// Per MoE layer and expert, nil when the source has none (a GGUF read directly).
    let checksums: [[UInt64]]?
    let filePaths: [String]
    /// Slots: global ids, node n owns [nodeStart[n], nodeStart[n] + nodeSlots[n]), at `slotBase[n]` in memory.
    let nodeStart: [Int]
    let nodeSlots: [Int]
    let slotBase: [UnsafeMutableRawPointer]
    let readAttempts: Int
    let ioDepth: Int
    let log: @Sendable (String) -> Void

    let lock = NSCondition()
    private(set) var stopping = false

    // Slots.
    private(set) var slotKey: [Int32]            // expert key (ordinal · experts + e) or -1
    private var slotState: [SlotState]
    private var slotPins: [Int32]
    private var slotFromPrefetch: [Bool]
    private var slotUsed: [Bool]                 // used since loaded
    private var slotTarget: [Int]                // for prefetches: the position it is for (stale after it)
    private var slotError: [String?]
    /// Bumped for every read of the slot; a read's tag carries it (`readTag`).
    private var slotGeneration: [UInt32]
    /// Reads of the current expert that failed in a row.
    private var slotAttempts: [UInt8]
    /// Parts of the slot's current read not yet back, and the first thing wrong with those that are.
    private var slotPending: [UInt8]
    private var slotFault: [String?]
    private var slotOf: [Int32]                  // key → slot or -1
    private var policies: [any EvictionPolicy]
    private let candidates: [UnsafeMutableBufferPointer<Int32>]  // per node scratch for victim search

    // Reads.
    private var demandQueue: [[Int32]]
    private var prefetchQueue: [[Int32]]
    /// Per node: predicted experts (key, the position they are for) that did not fit the read queue when the
    /// router predicted them — a prompt's next layer wants hundreds, the queue takes `ioDepth`. The node's I/O
    /// worker starts them as the queue drains and slots become evictable (`topUpPrefetches`), so the next layer's
    /// reads keep the drive busy while this layer's last experts and the next attention compute. From `backlogHead`.
    private var backlog: [[(key: Int32, target: Int)]]
    private var backlogHead: [Int]
    /// Experts the current request still needs a slot for: while any wait, the backlog waits (a demand miss must
    /// not find its slot taken by a read ahead, nor evict one).
    private var demandWaitingForSlot = 0
    /// Per node: reads its worker's reader holds (accepted, not yet returned).
    private var readsInFlight: [Int]
    private var inFlightTotal = 0
    private var busySince: ContinuousClock.Instant?
    /// Where finished reads are verified, one pool per node; set once, before any read starts.
    var checksumPools: [ChecksumPool] = []
    /// The last few tags of ignored completions (for the tests of late completions).
    private(set) var staleTags: [UInt64] = []

    // The request being served, and its compute jobs (tables allocated once: the token path allocates nothing).
    private let pendingExpert: UnsafeMutablePointer<Int32>
    private let pendingSlot: UnsafeMutablePointer<Int32>
    private var pendingCount = 0
    private let jobExpert: UnsafeMutablePointer<Int32>
    private let jobSlot: UnsafeMutablePointer<Int32>
    private var jobCount = 0
    private var jobsPending = 0
    private var jobError: Error? = nil
    private var currentBody: ((Int, ExpertWeights) throws -> Void)? = nil
    /// Per node: a ring of job indices waiting for a compute worker.
    private let jobRing: [UnsafeMutablePointer<Int32>]
    private var jobHead: [Int]
    private var jobQueued: [Int]

    // Clocks and what the cache reports.
    private var tick: UInt64 = 0
    /// step · layers + layer of the request being served: prefetches for earlier positions are stale.
    private var position = 0
    private var step = 0
    private var lastLayer = Int.max
    private var stats: CacheStatistics
    private var fallbackMessage: String?
    private var engineName: String
    /// Set once at init (and by `recorder`'s setter), cleared by `stop`.
    private var prefetcherStorage: Prefetcher?
    private var recorderStorage: RoutingTraceRecorder?

    init(reads: ExpertReads, expertsPerLayer: Int, moeLayers: [Int], layers: Int, placement: Placement,
         nodeSlots: [Int], slotBase: [UnsafeMutableRawPointer], policy: PolicyKind, readAttempts: Int,
         ioDepth: Int, engine: String, stats: CacheStatistics, log: @escaping @Sendable (String) -> Void) {
        self.reads = reads
        extent = reads.slotBytes
        checksums = reads.checksums
        filePaths = reads.paths
        self.expertsPerLayer = expertsPerLayer
        self.moeLayers = moeLayers
        var ordinal = Array(repeating: -1, count: layers)
        for (i, l) in moeLayers.enumerated() { ordinal[l] = i }
        moeOrdinal = ordinal
        self.placement = placement
        self.nodeSlots = nodeSlots
        var start: [Int] = [], total = 0
        for n in nodeSlots {
            start.append(total)
            total += n
        }
        nodeStart = start
        precondition(total < 1 << 24, "a read's tag holds the slot in 24 bits")
        self.slotBase = slotBase
        self.readAttempts = readAttempts
        self.ioDepth = ioDepth
        self.log = log
        engineName = engine
        self.stats = stats
        slotKey = Array(repeating: -1, count: total)
        slotState = Array(repeating: .empty, count: total)
        slotPins = Array(repeating: 0, count: total)
        slotFromPrefetch = Array(repeating: false, count: total)
        slotUsed = Array(repeating: false, count: total)
        slotTarget = Array(repeating: 0, count: total)
        slotError = Array(repeating: nil, count: total)
        slotGeneration = Array(repeating: 0, count: total)
        slotAttempts = Array(repeating: 0, count: total)
        slotPending = Array(repeating: 0, count: total)
        slotFault = Array(repeating: nil, count: total)
        slotOf = Array(repeating: -1, count: moeLayers.count * expertsPerLayer)
        policies = nodeSlots.map { policy.make(slots: $0) }
        candidates = nodeSlots.map { UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(1, $0)) }
        demandQueue = nodeSlots.map { _ in [] }
        prefetchQueue = nodeSlots.map { _ in [] }
        backlog = nodeSlots.map { _ in [] }
        backlogHead = nodeSlots.map { _ in 0 }
        for i in demandQueue.indices {
            demandQueue[i].reserveCapacity(expertsPerLayer)
            prefetchQueue[i].reserveCapacity(expertsPerLayer)
            backlog[i].reserveCapacity(expertsPerLayer)
        }
        readsInFlight = nodeSlots.map { _ in 0 }
        pendingExpert = .allocate(capacity: expertsPerLayer)
        pendingSlot = .allocate(capacity: expertsPerLayer)
        jobExpert = .allocate(capacity: expertsPerLayer)
        jobSlot = .allocate(capacity: expertsPerLayer)
        jobRing = nodeSlots.map { _ in .allocate(capacity: max(1, expertsPerLayer)) }
        jobHead = nodeSlots.map { _ in 0 }
        jobQueued = nodeSlots.map { _ in 0 }
    }

    deinit {
        candidates.forEach { $0.deallocate() }
        jobRing.forEach { $0.deallocate() }
        [pendingExpert, pendingSlot, jobExpert, jobSlot].forEach { $0.deallocate() }
    }

    var totalSlots: Int { slotKey.count }

    @inline(__always) func key(_ ordinal: Int, _ e: Int) -> Int { ordinal * expertsPerLayer + e }
    @inline(__always) func node(ofKey k: Int) -> Int {
        placement.nodeIndex(layer: moeLayers[k / expertsPerLayer], expert: k % expertsPerLayer)
    }
    @inline(__always) func node(ofSlot s: Int) -> Int {
        var n = 0
        while n + 1 < nodeStart.count && s >= nodeStart[n + 1] { n += 1 }
        return n
    }

    /// Slot memory of `s`.
    @inline(__always) func buffer(_ s: Int) -> UnsafeMutableRawPointer {
        let n = node(ofSlot: s)
        return slotBase[n] + (s - nodeStart[n]) * extent
    }

    // MARK: - Life

    /// Tells every thread waiting on the table to finish: workers drain their reads in flight and exit.
    func stop() {
        lock.lock()
        stopping = true
        prefetcherStorage = nil
        lock.broadcast()
        lock.unlock()
    }

    var currentFallback: String? {
        lock.lock()
        defer { lock.unlock() }
        return fallbackMessage
    }

    var currentEngine: String {
        lock.lock()
        defer { lock.unlock() }
        return engineName
    }

    var isStopped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    var prefetcher: Prefetcher? {
        lock.lock()
        defer { lock.unlock() }
        return prefetcherStorage
    }

    func setPrefetcher(_ p: Prefetcher?) {
        lock.lock()
        prefetcherStorage = p
        lock.unlock()
    }

    var recorder: RoutingTraceRecorder? {
        get {
            lock.lock()
            defer { lock.unlock() }
            return recorderStorage
        }
        set {
            lock.lock()
            recorderStorage = newValue
            lock.unlock()
        }
    }

    // MARK: - Slot management (lock held)

    /// An evictable slot on `node`: empty first, else the policy's choice among unpinned ready (or failed) slots.
    /// `protectPrefetched`: do not evict prefetched experts not used yet (a prefetch must not undo another).
    private func victim(node n: Int, protectPrefetched: Bool) -> Int? {
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
    private func evict(_ s: Int) {
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
    private func assign(_ s: Int, key k: Int, prefetch: Bool, target: Int) {
        evict(s)
        slotKey[s] = Int32(k)
        slotOf[k] = Int32(s)
        slotState[s] = .loading
        slotFromPrefetch[s] = prefetch
        slotUsed[s] = false
        slotTarget[s] = target
        slotAttempts[s] = 0
        slotPending[s] = 0
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
    private func promote(_ s: Int) {
        let n = node(ofSlot: s)
        if let i = prefetchQueue[n].firstIndex(of: Int32(s)) {
            prefetchQueue[n].remove(at: i)
            demandQueue[n].append(Int32(s))
            lock.broadcast()
        }
    }

    // MARK: - Reads (called by a node's I/O worker)

    /// The tag of part `part` of the slot's current read: generation << 32 | part << 24 | slot, so every part carries
    /// the read's generation.
    @inline(__always) private func readTag(_ s: Int, part: Int = 0) -> UInt64 {
        UInt64(slotGeneration[s]) << 32 | UInt64(part) << 24 | UInt64(UInt32(s))
    }

    /// The slot a tag names, if the tag is of the slot's current read and the slot is in `state`.
    private func current(_ tag: UInt64, _ state: SlotState) -> Int? {
        let s = Int(tag & 0xFF_FFFF)
        guard s < totalSlots, slotGeneration[s] == UInt32(tag >> 32), slotState[s] == state else { return nil }
        return s
    }

    /// Where the slot's expert lives on disk, for error messages.
    private func location(ofSlot s: Int) -> (ordinal: Int, expert: Int, text: String) {
        let k = Int(slotKey[s])
        let ordinal = k / expertsPerLayer, e = k % expertsPerLayer
        let first = reads.segment(ordinal: ordinal, expert: e, 0)
        return (ordinal, e, "\(filePaths[first.file]) at offset \(first.offset)")
    }

    /// Waits until node `n` has reads to start or reads in flight, then fills `batch` with up to `depth` minus
    /// those in flight: demand reads first, then prefetches (dropping those the model has already passed). Each
    /// read gets a new generation in its tag. Returns false when the cache stops and nothing is in flight.
    func takeReads(node n: Int, depth: Int, into batch: inout [ReadRequest]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        while true {
            if !stopping { topUpPrefetches(node: n) }
            if stopping || !demandQueue[n].isEmpty || !prefetchQueue[n].isEmpty || readsInFlight[n] > 0 { break }
            lock.wait()
        }
        if stopping && readsInFlight[n] == 0 { return false }
        batch.removeAll(keepingCapacity: true)
        let room = depth - readsInFlight[n]
        while batch.count < room {
            let s: Int
            let fromDemand = !demandQueue[n].isEmpty
            if fromDemand {
                s = Int(demandQueue[n].removeFirst())
            } else if !prefetchQueue[n].isEmpty {
                s = Int(prefetchQueue[n].removeFirst())
                if slotTarget[s] < position && slotPins[s] == 0 {
                    evict(s)  // stale: the model has passed the layer it was for
                    lock.broadcast()  // a request may be waiting for a free slot on this node
                    continue
                }
            } else {
                break
            }
            let k = Int(slotKey[s])
            let ordinal = k / expertsPerLayer, e = k % expertsPerLayer
            let parts = reads.parts[ordinal].count
            if batch.count + parts > room {
                // Not all of this expert's parts fit in this batch: it goes first next time.
                if fromDemand { demandQueue[n].insert(Int32(s), at: 0) } else { prefetchQueue[n].insert(Int32(s), at: 0) }
                break
            }
            slotGeneration[s] &+= 1
            slotPending[s] = UInt8(parts)
            slotFault[s] = nil
            for i in 0..<parts {
                let g = reads.segment(ordinal: ordinal, expert: e, i)
                batch.append(ReadRequest(file: g.file, offset: g.offset, length: g.length, buffer: buffer(s) + g.slotOffset,
                                         tag: readTag(s, part: i)))
            }
        }
        readsInFlight[n] += batch.count
        if !batch.isEmpty {
            if inFlightTotal == 0 { busySince = .now }
            inFlightTotal += batch.count
        }
        return true
    }

    /// Finished reads of node `n`, whose reader now holds `inFlight` reads: a full read goes to the node's
    /// checksum pool; anything else is retried or fails. A completion for an earlier read of the slot is counted
    /// and ignored.
    func delivered(node n: Int, _ completions: [ReadCompletion], inFlight: Int) {
        lock.lock()
        defer { lock.unlock() }
        for r in completions { completed(tag: r.tag, result: r.result) }
        readsFinished(readsInFlight[n] - inFlight)
        readsInFlight[n] = inFlight
    }

    private func readsFinished(_ count: Int) {
        guard count > 0 else { return }
        inFlightTotal -= count
        if inFlightTotal == 0, let since = busySince {
            stats.readBusySeconds += (ContinuousClock.now - since).seconds
            busySince = nil
        }
    }

    /// One finished read. Lock held.
    private func completed(tag: UInt64, result: Int) {
        guard let s = current(tag, .loading) else {
            stats.staleCompletions += 1
            if staleTags.count < 16 { staleTags.append(tag) }
            return
        }
        let k = Int(slotKey[s])
        let ordinal = k / expertsPerLayer, e = k % expertsPerLayer
        let g = reads.segment(ordinal: ordinal, expert: e, Int((tag >> 24) & 0xFF))
        if result > 0 {
            stats.layers[ordinal].bytesRead += result
            stats.nodes[node(ofSlot: s)].bytesRead += result
        }
        if result != g.expected && slotFault[s] == nil {
            let at = "\(filePaths[g.file]) at offset \(g.offset)"
            slotFault[s] = result < 0 ? "read failed: \(String(cString: strerror(Int32(-result)))) in \(at)"
                : "short read (\(result) of \(g.expected) bytes) in \(at)"
        }
        // The expert is read when all its parts are back; a fault in any is handled then (no part of it is still
        // being written into the slot when it is read again).
        slotPending[s] -= 1
        guard slotPending[s] == 0 else { return }
        if let fault = slotFault[s] {
            readFailed(s, fault)
            return
        }
        guard let checksums else {
            slotState[s] = .ready
            lock.broadcast()
            return
        }
        slotState[s] = .verifying
        // The expert's own bytes, part by part (a GGUF's supersets hold its neighbours' edges and padding too).
        let parts = (0..<reads.parts[ordinal].count).map { i -> UnsafeRawBufferPointer in
            let g = reads.segment(ordinal: ordinal, expert: e, i)
            return UnsafeRawBufferPointer(start: buffer(s) + g.slotOffset + g.lead, count: reads.parts[ordinal][i].stride)
        }
        checksumPools[node(ofSlot: s)].enqueue(tag: tag, parts: parts, expected: checksums[ordinal][e])
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
        if attempts < readAttempts {
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

    /// Node `n`'s reader failed and was replaced by `engine` (it holds nothing yet). `never`: reads the failed reader
    /// accepted but never started, queued again; `lostUnlessDrained`: whether reads still in flight on it are lost
    /// (their slots are retired for good: the kernel may still write into them; requests waiting for them fail with
    /// `reason`, and their experts are read again elsewhere). Says so once, with `message`, and returns how many
    /// slots were retired.
    @discardableResult
    func readerReplaced(node n: Int, engine: String, never: [UInt64], lostUnlessDrained lost: Bool, reason: String,
                        message: (Int) -> String) -> Int {
        lock.lock()
        // Per slot, its parts that never reached the kernel. A slot with a part that did and is not back may still be
        // written into: it is lost. One whose outstanding parts all never started is read again.
        var neverParts: [Int: Int] = [:]
        for t in never { if let s = current(t, .loading) { neverParts[s, default: 0] += 1 } }
        var retired = 0
        if lost {
            for s in nodeStart[n]..<(nodeStart[n] + nodeSlots[n]) where slotState[s] == .loading && Int(slotPending[s]) > (neverParts[s] ?? 0)
                && !demandQueue[n].contains(Int32(s)) && !prefetchQueue[n].contains(Int32(s)) {
                let k = Int(slotKey[s])
                if k >= 0 {
                    slotOf[k] = -1
                    stats.nodes[n].occupied -= 1
                }
                slotKey[s] = -1
                slotState[s] = .lost
                slotError[s] = reason
                stats.retiredSlots += 1
                retired += 1
            }
        }
        for s in neverParts.keys.sorted() where slotState[s] == .loading {
            slotPending[s] = 0
            demandQueue[n].append(Int32(s))
        }
        readsFinished(readsInFlight[n])
        readsInFlight[n] = 0
        let line = message(retired)
        fallbackMessage = line
        engineName = engine
        stats.engine = engine
        stats.readerFailures += 1
        // Said before the waiters wake: whoever sees a request fail for this sees why (one line, once).
        log(line)
        lock.broadcast()
        lock.unlock()
        return retired
    }

    // MARK: - Compute jobs (called by compute workers)

    /// Queues job `j` on node `n`. Lock held.
    private func enqueueJob(_ j: Int, node n: Int) {
        precondition(jobQueued[n] < expertsPerLayer, "more jobs than one request can have")
        jobRing[n][(jobHead[n] + jobQueued[n]) % expertsPerLayer] = Int32(j)
        jobQueued[n] += 1
        lock.broadcast()
    }

    /// Waits for a job for node `n`'s compute workers; nil when the cache stops.
    func nextJob(node n: Int) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        while jobQueued[n] == 0 && !stopping { lock.wait() }
        guard jobQueued[n] > 0 else { return nil }
        let j = Int(jobRing[n][jobHead[n]])
        jobHead[n] = (jobHead[n] + 1) % expertsPerLayer
        jobQueued[n] -= 1
        return j
    }

    /// Job `j`'s expert and slot, and whether to skip it (another job of the request already failed).
    func startJob(_ j: Int) -> (expert: Int, slot: Int, skip: Bool) {
        lock.lock()
        defer { lock.unlock() }
        return (Int(jobExpert[j]), Int(jobSlot[j]), jobError != nil)
    }

    /// The body of the request being served (nil once it has returned) and its layer.
    func requestBody() -> (body: (Int, ExpertWeights) throws -> Void, layer: Int)? {
        lock.lock()
        defer { lock.unlock() }
        return currentBody.map { ($0, lastLayer) }
    }

    /// Job `j` is done: unpins its slot and tells the request.
    func finishJob(_ j: Int, slot s: Int, error: Error?) {
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

    // MARK: - Requests (the model's thread; one at a time)

    /// Serves one request: pins what is cached, reads what is not, hands each expert to a compute worker of its
    /// node as soon as its bytes are ready (while other reads are still in flight), and returns when every
    /// expert has been computed. The caller serialises requests (their tables here are shared).
    func serve(layer: Int, _ experts: [Int], _ body: @escaping (Int, ExpertWeights) throws -> Void) throws {
        let ordinal = moeOrdinal[layer]
        precondition(experts.count <= expertsPerLayer && zip(experts, experts.dropFirst()).allSatisfy { $0 < $1 },
                     "experts must be distinct and ascending")
        lock.lock()
        if stopping {
            lock.unlock()
            throw ModelError.expertUnavailable(layer: layer, expert: experts.first ?? -1, reason: "the expert cache was shut down")
        }
        if layer <= lastLayer { step += 1 }
        lastLayer = layer
        position = step * moeOrdinal.count + layer
        recorderStorage?.record(.request(step: step, layer: layer, experts: experts))
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
                slotPending[s] = 0
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
                        enqueueJob(jobCount, node: node(ofSlot: s))
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
                demandWaitingForSlot = 0
                for j in 0..<pendingCount where pendingSlot[j] < 0 { demandWaitingForSlot += 1 }
            }
            let ending = failure != nil || jobError != nil
            if jobsPending == 0 && (pendingCount == 0 || ending) { break }
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
        demandWaitingForSlot = 0
        currentBody = nil
        let thrown = jobError
        jobError = nil
        if failure == nil && thrown == nil { prefetcherStorage?.observe(ordinal: ordinal, experts: experts) }
        lock.broadcast()
        lock.unlock()
        if let failure { throw failure }
        if let thrown { throw thrown }
    }

    // MARK: - Prefetches (called by the prefetcher)

    /// Asks for `experts` of MoE layer `ordinal` to be read ahead, best first, within what the node can take
    /// without evicting anything pinned or prefetched-but-unused; returns how many reads were queued. Lock held
    /// (the prefetcher's `observe` runs inside `serve`; its `hint` goes through `predicted`).
    /// `keepTheRest`: what does not fit now is appended to the node's backlog (`predicted` clears the older
    /// predictions' first), to be started as room appears.
    func prefetchLocked(ordinal: Int, experts: UnsafeBufferPointer<Int32>, stepsAhead: Int = 0, layer: Int,
                        keepTheRest: Bool = false) -> Int {
        guard !stopping else { return 0 }
        let target = (step + stepsAhead) * moeOrdinal.count + layer
        var queued = 0
        for e in experts {
            let k = key(ordinal, Int(e))
            guard slotOf[k] < 0 else { continue }
            let n = node(ofKey: k)
            guard demandQueue[n].count + prefetchQueue[n].count + readsInFlight[n] < ioDepth,
                  let v = victim(node: n, protectPrefetched: true) else {
                if keepTheRest { backlog[n].append((Int32(k), target)) }
                continue
            }
            assign(v, key: k, prefetch: true, target: target)
            queued += 1
        }
        return queued
    }

    /// Starts node `n`'s backlogged predictions while its read queue has room and a slot can be taken without
    /// evicting anything pinned or read ahead and unused, dropping those the model has passed or already has. Not
    /// while the current request waits for slots. Lock held (the node's I/O worker, before it waits).
    private func topUpPrefetches(node n: Int) {
        guard demandWaitingForSlot == 0 else { return }
        while backlogHead[n] < backlog[n].count, demandQueue[n].count + prefetchQueue[n].count + readsInFlight[n] < ioDepth {
            let (k, target) = backlog[n][backlogHead[n]]
            if target < position || slotOf[Int(k)] >= 0 {
                backlogHead[n] += 1
                continue
            }
            guard let v = victim(node: n, protectPrefetched: true) else { break }
            assign(v, key: Int(k), prefetch: true, target: target)
            backlogHead[n] += 1
        }
        if backlogHead[n] == backlog[n].count {
            backlog[n].removeAll(keepingCapacity: true)
            backlogHead[n] = 0
        }
    }

    /// The router's predictions made right after `layer`'s attention: `lists` holds, for each of `targets`, its
    /// predicted experts (`counts[i]` of them, rows `stride` apart). Records them when tracing and, when
    /// `prefetch`, queues their reads; `keepTheRest` (a prompt's) backlogs those that do not fit yet.
    func predicted(afterAttentionOf layer: Int, targets: [(ordinal: Int, layer: Int)], lists: UnsafePointer<Int32>,
                   stride: Int, counts: [Int], prefetch: Bool, keepTheRest: Bool = false) {
        lock.lock()
        defer { lock.unlock() }
        // The first hint of a forward pass comes before its first expert request moves `step` on.
        let ahead = layer <= lastLayer ? 1 : 0  // the same test `serve` uses
        if let recorder = recorderStorage {
            var predicted: [Int: [Int]] = [:]
            for (i, target) in targets.enumerated() {
                predicted[target.layer] = (0..<counts[i]).map { Int(lists[i * stride + $0]) }.sorted()
            }
            recorder.record(.prediction(step: step + ahead, after: layer, predicted: predicted))
        }
        guard prefetch else { return }
        // Newer predictions replace what is left of older ones.
        for n in backlog.indices {
            backlog[n].removeAll(keepingCapacity: true)
            backlogHead[n] = 0
        }
        for (i, target) in targets.enumerated() {
            _ = prefetchLocked(ordinal: target.ordinal, experts: UnsafeBufferPointer(start: lists + i * stride, count: counts[i]),
                               stepsAhead: ahead, layer: target.layer, keepTheRest: keepTheRest)
        }
    }

    // MARK: - Statistics

    func forwardDidFinish(tokens: Int) {
        lock.lock()
        stats.tokens += tokens
        lock.unlock()
    }

    /// After `--preload`: the statistics start from zero, keeping the count of preloaded experts.
    func preloadFinished(experts loaded: Int) {
        lock.lock()
        stats.layers = stats.layers.map { CacheStatistics.Layer(layer: $0.layer, experts: $0.activations.count) }
        for i in stats.nodes.indices { stats.nodes[i].bytesRead = 0 }
        stats.readBusySeconds = 0
        if inFlightTotal > 0 { busySince = .now }  // reads still in flight count from now
        stats.preloadedExperts = loaded
        lock.unlock()
    }

    /// A snapshot of the statistics.
    func statistics() -> CacheStatistics {
        lock.lock()
        defer { lock.unlock() }
        var s = stats
        if let since = busySince { s.readBusySeconds += (ContinuousClock.now - since).seconds }
        return s
    }

    /// The slot holding each expert key, for tests of placement. Lock taken.
    func slotKeys() -> [Int32] {
        lock.lock()
        defer { lock.unlock() }
        return slotKey
    }
}
