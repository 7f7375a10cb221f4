import Foundation
import MoESystem

/// The I/O thread of one NUMA node: owns the node's ring (or pread pool), takes demand reads before prefetches,
/// drops prefetches the model has already passed, submits in batches up to the queue depth, and hands each
/// finished read back to the cache (which verifies its checksum and marks the slot ready).
final class NodeWorker: @unchecked Sendable {
    /// Strong: the thread keeps the cache alive until `shutdown()` stops it (never a dangling reference).
    let cache: ExpertCache
    let node: Int
    let reader: any BlockReader
    let cpus: [Int]
    /// Reads submitted and not yet completed (guarded by the cache's lock).
    var inFlightHint = 0
    /// Set when a submission failed: the reader is not used again and reads fail with this error.
    private var broken: SystemError?
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
        var slots: [Int] = []
        var completions: [ReadCompletion] = []
        batch.reserveCapacity(reader.depth)
        slots.reserveCapacity(reader.depth)
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
            slots.removeAll(keepingCapacity: true)
            let room = reader.depth - inFlightHint
            while slots.count < room, !c.demandQueue[node].isEmpty {
                slots.append(Int(c.demandQueue[node].removeFirst()))
            }
            while slots.count < room, !c.prefetchQueue[node].isEmpty {
                let s = Int(c.prefetchQueue[node].removeFirst())
                if c.slotTarget[s] < c.position && c.slotPins[s] == 0 {
                    c.evict(s)  // stale: the model has passed the layer it was for
                    c.lock.broadcast()  // a request may be waiting for a free slot on this node
                    continue
                }
                slots.append(s)
            }
            for s in slots {
                let k = Int(c.slotKey[s])
                let ordinal = k / c.expertsPerLayer, e = k % c.expertsPerLayer
                batch.append(ReadRequest(file: ordinal, offset: e * c.extent, length: c.extent, buffer: c.buffer(s), tag: UInt64(s)))
            }
            inFlightHint += batch.count
            if !batch.isEmpty { c.readsStarted(batch.count) }
            c.lock.unlock()

            completions.removeAll(keepingCapacity: true)
            if !batch.isEmpty {
                if let broken {
                    for r in batch { completions.append(ReadCompletion(tag: r.tag, result: -Int(broken.errno))) }
                } else {
                    do { try reader.submit(batch) } catch {
                        // Entries may sit half-submitted in the ring: never submit on it again, fail every read.
                        broken = error
                        for r in batch { completions.append(ReadCompletion(tag: r.tag, result: -Int(error.errno))) }
                    }
                }
            }
            if completions.isEmpty {
                do { try reader.complete(waitNanoseconds: 200_000, into: &completions) } catch {
                    // A broken ring: fail every read in flight rather than hang the model.
                    c.lock.lock()
                    let stuck = (0..<c.totalSlots).filter { c.slotState[$0] == .loading && !c.demandQueue[node].contains(Int32($0))
                        && !c.prefetchQueue[node].contains(Int32($0)) && c.node(ofSlot: $0) == node }
                    c.lock.unlock()
                    for s in stuck { completions.append(ReadCompletion(tag: UInt64(s), result: -Int(error.errno))) }
                }
            }
            for r in completions { c.completed(slot: Int(r.tag), result: r.result) }
            if !completions.isEmpty {
                c.lock.lock()
                inFlightHint -= completions.count
                c.readsFinished(completions.count)
                c.lock.unlock()
            }
        }
    }
}
