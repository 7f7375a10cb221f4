import Foundation
import MoEExpertStore
import MoESystem

/// Threads that check finished reads against their xxHash64, so the I/O thread only submits and reaps: hashing
/// a 24.8 MB extent takes milliseconds, and an I/O thread that hashed would leave the drive idle meanwhile.
/// One pool per NUMA node, pinned to the node's CPUs (the extent is in the node's memory). `done(tag, ok)` is
/// called on a pool thread for every job, in no particular order.
final class ChecksumPool: @unchecked Sendable {  // `jobs`, `head` and `stopping` are guarded by `lock`
    /// The bytes of one expert: its parts in order (a store's one extent; a GGUF's gate, up and down rows), hashed
    /// as one stream.
    struct Job {
        var tag: UInt64
        var parts: [UnsafeRawBufferPointer]
        var expected: UInt64
    }

    private let lock = NSCondition()
    private var jobs: [Job] = []
    private var head = 0
    private var stopping = false
    private var threads: [JoinableThread] = []
    private let done: (UInt64, Bool) -> Void

    /// Threads a node with `cpus` CPUs gets: xxHash64 runs at several GB/s a core, so one thread per eight CPUs
    /// (at least one, at most four) keeps up with the node's drives.
    static func threads(cpus: Int) -> Int { max(1, min(4, cpus / 8)) }

    init(threads count: Int, cpus: [Int], name: String, done: @escaping (UInt64, Bool) -> Void) {
        self.done = done
        jobs.reserveCapacity(64)
        for i in 0..<max(1, count) {
            let label = "\(name)-\(i)"
            threads.append(JoinableThread { [self] in
                ThreadAffinity.nameCurrentThread(label)
                if !cpus.isEmpty { ThreadAffinity.pinCurrentThread(to: cpus) }
                work()
            })
        }
    }

    /// Queues one check. The bytes must stay untouched until `done` is called for `tag`.
    func enqueue(tag: UInt64, bytes: UnsafeRawPointer, count: Int, expected: UInt64) {
        enqueue(tag: tag, parts: [UnsafeRawBufferPointer(start: bytes, count: count)], expected: expected)
    }

    /// Queues one check of `parts` hashed in order as one stream.
    func enqueue(tag: UInt64, parts: [UnsafeRawBufferPointer], expected: UInt64) {
        lock.lock()
        jobs.append(Job(tag: tag, parts: parts, expected: expected))
        lock.signal()
        lock.unlock()
    }

    private func work() {
        while true {
            lock.lock()
            while head == jobs.count && !stopping { lock.wait() }
            if head == jobs.count {
                lock.unlock()
                return
            }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            }
            lock.unlock()
            done(job.tag, Self.hash(job.parts) == job.expected)
        }
    }

    /// xxHash64 of `parts` in order, as one stream (one part: the plain hash, which is the same number).
    static func hash(_ parts: [UnsafeRawBufferPointer]) -> UInt64 {
        if parts.count == 1, let p = parts[0].baseAddress { return XXHash64.hash(p, count: parts[0].count) }
        var h = XXHash64.Streaming()
        for part in parts { if let p = part.baseAddress { h.update(p, count: part.count) } }
        return h.finish()
    }

    /// Finishes the queued checks, then stops the threads and waits for them (they let go of `done`).
    func join() {
        lock.lock()
        stopping = true
        lock.broadcast()
        lock.unlock()
        threads.forEach { $0.join() }
        threads = []
    }
}
