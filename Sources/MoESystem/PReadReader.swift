import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The fallback when io_uring is unavailable: `depth` worker threads, each doing blocking `pread`s.
public final class PReadReader: BlockReader, @unchecked Sendable {  // all `let`s; what changes is in `queue`, under its `lock`
    public let engine = "pread"
    public let depth: Int
    public var inFlight: Int { queue.inFlight }
    private let queue: Queue

    /// What the workers share: they hold this (not the reader), so the reader can go away and tell them to stop.
    final class Queue: @unchecked Sendable {  // `pending`, `done`, `running` and `stopping` are guarded by `lock`
        let files: ReadFiles
        let lock = NSCondition()
        var pending: [ReadRequest] = []
        var done: [ReadCompletion] = []
        var running = 0
        var stopping = false

        init(files: ReadFiles) { self.files = files }

        var inFlight: Int {
            lock.lock()
            defer { lock.unlock() }
            return pending.count + running + done.count
        }

        func work() {
            while true {
                lock.lock()
                while pending.isEmpty && !stopping { lock.wait() }
                if stopping {
                    lock.unlock()
                    return
                }
                let r = pending.removeFirst()
                running += 1
                lock.unlock()
                var got = 0
                var result = 0
                while got < r.length {
                    let n = pread(files.descriptors[r.file], r.buffer + got, r.length - got, off_t(r.offset + got))
                    if n < 0 {
                        if lastErrno() == EINTR { continue }
                        result = -Int(lastErrno())
                        break
                    }
                    if n == 0 { break }
                    got += n
                }
                if result == 0 { result = got }
                lock.lock()
                running -= 1
                done.append(ReadCompletion(tag: r.tag, result: result))
                lock.broadcast()
                lock.unlock()
            }
        }
    }

    public init(files: ReadFiles, depth: Int) {
        self.depth = max(1, min(depth, 64))
        queue = Queue(files: files)
        for i in 0..<self.depth {
            let q = queue
            let t = Thread { q.work() }
            t.name = "moe-pread\(i)"
            t.start()
        }
    }

    deinit {
        queue.lock.lock()
        queue.stopping = true
        queue.lock.broadcast()
        queue.lock.unlock()
    }

    public func submit(_ requests: [ReadRequest]) throws(SystemError) {
        queue.lock.lock()
        queue.pending.append(contentsOf: requests)
        queue.lock.broadcast()
        queue.lock.unlock()
    }

    public func abandon() -> [UInt64] {
        queue.lock.lock()
        defer { queue.lock.unlock() }
        let tags = queue.pending.map(\.tag)
        queue.pending.removeAll()
        return tags
    }

    public func complete(waitNanoseconds: Int64, into out: inout [ReadCompletion]) throws(SystemError) {
        let q = queue
        q.lock.lock()
        defer { q.lock.unlock() }
        if q.done.isEmpty && (q.pending.count + q.running) > 0 && waitNanoseconds != 0 {
            if waitNanoseconds < 0 {
                while q.done.isEmpty { q.lock.wait() }
            } else {
                _ = q.lock.wait(until: Date(timeIntervalSinceNow: Double(waitNanoseconds) / 1e9))
            }
        }
        out.append(contentsOf: q.done)
        q.done.removeAll(keepingCapacity: true)
    }
}
