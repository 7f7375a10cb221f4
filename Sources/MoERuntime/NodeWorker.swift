import Foundation
import MoESystem

/// The I/O thread of one NUMA node: owns the node's ring (or pread pool), takes demand reads before prefetches,
/// drops prefetches the model has already passed, submits in batches up to the queue depth, and hands each
/// finished read back to the cache (whose checksum pool verifies it and marks the slot ready). It never hashes.
///
/// Every read is tagged with its slot and the slot's generation (bumped for each read), so a completion that
/// arrives late, after its slot was read again for another expert, is recognised and ignored.
///
/// When the reader fails (a submission or a wait the kernel refuses for good), the worker stops using it:
/// reads that never reached the kernel are queued again, those in flight are drained, a slot whose read could
/// not be drained is retired (the kernel may still write into it), and the node goes on with a pread pool,
/// saying so in one line.
final class NodeWorker: @unchecked Sendable {  // `reader`, `thread`: owned by the worker's thread; `inFlightHint`: the cache's lock
    /// Strong: the thread keeps the cache alive until `shutdown()` stops it (never a dangling reference).
    let cache: ExpertCache
    let node: Int
    private(set) var reader: any BlockReader
    let cpus: [Int]
    /// The reader's reads in flight, as of its owner's last call (guarded by the cache's lock).
    var inFlightHint = 0
    private var thread: JoinableThread?

    init(cache: ExpertCache, node: Int, reader: any BlockReader, cpus: [Int]) {
        self.cache = cache
        self.node = node
        self.reader = reader
        self.cpus = cpus
    }

    func start() {
        let name = "moe-io\(node)"
        thread = JoinableThread { [self] in
            ThreadAffinity.nameCurrentThread(name)
            run()
        }
    }

    /// Waits for the thread to exit (and let go of this worker), then drops it.
    func join() {
        thread?.join()
        thread = nil
    }

    private func run() {
        if !cpus.isEmpty { ThreadAffinity.pinCurrentThread(to: cpus) }
        var batch: [ReadRequest] = []
        var completions: [ReadCompletion] = []
        batch.reserveCapacity(reader.depth)
        completions.reserveCapacity(reader.depth)
        let c = cache
        while true {
            c.lock.lock()
            while !c.stopping && c.demandQueue[node].isEmpty && c.prefetchQueue[node].isEmpty && inFlightHint == 0 {
                c.lock.wait()
            }
            if c.stopping && inFlightHint == 0 {
                c.lock.unlock()
                return
            }
            batch.removeAll(keepingCapacity: true)
            let room = reader.depth - inFlightHint
            while batch.count < room {
                let s: Int
                if !c.demandQueue[node].isEmpty {
                    s = Int(c.demandQueue[node].removeFirst())
                } else if !c.prefetchQueue[node].isEmpty {
                    s = Int(c.prefetchQueue[node].removeFirst())
                    if c.slotTarget[s] < c.position && c.slotPins[s] == 0 {
                        c.evict(s)  // stale: the model has passed the layer it was for
                        c.lock.broadcast()  // a request may be waiting for a free slot on this node
                        continue
                    }
                } else {
                    break
                }
                let k = Int(c.slotKey[s])
                let ordinal = k / c.expertsPerLayer, e = k % c.expertsPerLayer
                c.slotGeneration[s] &+= 1
                batch.append(ReadRequest(file: ordinal, offset: e * c.extent, length: c.extent, buffer: c.buffer(s),
                                         tag: c.readTag(s)))
            }
            inFlightHint += batch.count
            if !batch.isEmpty { c.readsStarted(batch.count) }
            c.lock.unlock()

            completions.removeAll(keepingCapacity: true)
            do throws(SystemError) {
                if !batch.isEmpty { try reader.submit(batch) }
                try reader.complete(waitNanoseconds: 200_000, into: &completions)
            } catch {
                recover(from: error, completions: &completions)
                continue
            }
            deliver(completions)
        }
    }

    /// Hands finished reads to the cache and updates the in-flight count.
    private func deliver(_ completions: [ReadCompletion]) {
        let c = cache
        for r in completions { c.completed(tag: r.tag, result: r.result) }
        c.lock.lock()
        let finished = inFlightHint - reader.inFlight
        inFlightHint = reader.inFlight
        if finished > 0 { c.readsFinished(finished) }
        c.lock.unlock()
    }

    /// The reader failed: give back what never started, drain what did, retire slots whose reads could not be
    /// drained, and go on with a pread pool.
    private func recover(from error: SystemError, completions: inout [ReadCompletion]) {
        let c = cache
        let never = reader.abandon()
        let drainedBefore = completions.count
        let deadline = ContinuousClock.now + c.configuration.drainLimit
        var stuck = false
        while reader.inFlight > 0 && ContinuousClock.now < deadline {
            do throws(SystemError) { try reader.complete(waitNanoseconds: 100_000_000, into: &completions) } catch {
                stuck = true
                break
            }
        }
        let drained = completions.count - drainedBefore
        for r in completions { c.completed(tag: r.tag, result: r.result) }
        let lost = stuck || reader.inFlight > 0
            ? c.loadingTags(node: node, excluding: Set(never)) : []
        let old = reader.engine
        reader = PReadReader(files: c.files, depth: reader.depth)
        c.lock.lock()
        let finished = inFlightHint
        inFlightHint = 0
        c.readsFinished(finished)
        c.lock.unlock()
        var line = "\(old) reads failed on node \(node) (\(error)): \(drained) reads drained, \(never.count) queued again"
        if !lost.isEmpty { line += ", \(lost.count) slots retired (their reads never came back)" }
        // Reported before the waiting requests hear of it, so whoever sees the failure also sees the new engine.
        c.readerReplaced(node: node, engine: reader.engine, message: line + "; reading experts with a pread thread pool from now on")
        c.readsAbandoned(never)
        c.readsLost(lost, reason: "its read was in flight when the \(old) reader of node \(node) failed (\(error))")
    }
}
