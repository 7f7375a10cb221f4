import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The fallback when io_uring is unavailable: `depth` worker threads, each doing blocking `pread`s.
public final class PReadReader: BlockReader, @unchecked Sendable {
    public let engine = "pread"
    public let depth: Int
    public var inFlight: Int { lock.lock(); defer { lock.unlock() }; return pending.count + running + done.count }
    private let files: ReadFiles
    private let lock = NSCondition()
    private var pending: [ReadRequest] = []
    private var done: [ReadCompletion] = []
    private var running = 0
    private var stopping = false
    private var threads: [Thread] = []

    public init(files: ReadFiles, depth: Int) {
        self.files = files
        self.depth = max(1, min(depth, 64))
        for i in 0..<self.depth {
            let t = Thread { [unowned self] in self.work() }
            t.name = "moe-pread\(i)"
            threads.append(t)
            t.start()
        }
    }

    deinit {
        lock.lock()
        stopping = true
        lock.broadcast()
        lock.unlock()
    }

    private func work() {
        while true {
            lock.lock()
            while pending.isEmpty && !stopping { lock.wait() }
            if stopping { lock.unlock(); return }
            let r = pending.removeFirst()
            running += 1
            lock.unlock()
            var done = 0
            var result = 0
            while done < r.length {
                let n = pread(files.descriptors[r.file], r.buffer + done, r.length - done, off_t(r.offset + done))
                if n < 0 {
                    if lastErrno() == EINTR { continue }
                    result = -Int(lastErrno())
                    break
                }
                if n == 0 { break }
                done += n
            }
            if result == 0 { result = done }
            lock.lock()
            running -= 1
            self.done.append(ReadCompletion(tag: r.tag, result: result))
            lock.broadcast()
            lock.unlock()
        }
    }

    public func submit(_ requests: [ReadRequest]) throws(SystemError) {
        lock.lock()
        pending.append(contentsOf: requests)
        lock.broadcast()
        lock.unlock()
    }

    public func complete(waitNanoseconds: Int64, into out: inout [ReadCompletion]) throws(SystemError) {
        lock.lock()
        defer { lock.unlock() }
        if done.isEmpty && (pending.count + running) > 0 && waitNanoseconds != 0 {
            if waitNanoseconds < 0 {
                while done.isEmpty { lock.wait() }
            } else {
                _ = lock.wait(until: Date(timeIntervalSinceNow: Double(waitNanoseconds) / 1e9))
            }
        }
        out.append(contentsOf: done)
        done.removeAll(keepingCapacity: true)
    }
}
