import Dispatch

/// Runs `body(chunk)` for `chunks` chunks across the machine's cores and returns when all are done.
///
/// Every output element is written by exactly one chunk with a fixed summation order, so results do not depend
/// on how many threads ran or in which order: the model's bit-exactness rests on this.
@inline(__always)
public func parallelFor(_ chunks: Int, _ body: (Int) -> Void) {
    let workers = min(chunks, Parallelism.threads)
    if workers <= 1 || Parallelism.isPoolThread {
        for c in 0..<chunks { body(c) }
        return
    }
    // The body only touches memory that its chunk owns; Dispatch cannot see that, hence the unchecked box.
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var c = w
            while c < chunks {
                box.value(c)
                c += workers
            }
        }
    }
}

/// How many threads compute kernels use (`--threads`); all online cores by default.
public enum Parallelism {
    nonisolated(unsafe) public static var threads: Int = ProcessInfoCores.active

    /// Marks the calling thread as a worker of a compute pool (one expert per worker): kernels it runs stay on
    /// it instead of fanning out again, so pinned workers keep their work on their node.
    public static func markPoolThread() {
        pthread_setspecific(poolKey, UnsafeRawPointer(bitPattern: 1))
    }

    public static var isPoolThread: Bool { pthread_getspecific(poolKey) != nil }

    nonisolated(unsafe) static let poolKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
}

/// Carries a value across a concurrency boundary the compiler cannot check.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Splits `count` items into ranges of at least `minimum` items, a few per core so cores stay busy.
public func chunkRanges(count: Int, minimum: Int) -> [Range<Int>] {
    guard count > 0 else { return [] }
    let cores = max(1, ProcessInfoCores.active)
    let target = max(1, min(cores * 4, count / max(1, minimum)))
    let size = (count + target - 1) / target
    return stride(from: 0, to: count, by: size).map { $0..<min($0 + size, count) }
}

/// Active processor count without Foundation.
public enum ProcessInfoCores {
    public static let active: Int = {
        #if canImport(Glibc)
        return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        return 1
        #endif
    }()
}

#if canImport(Glibc)
import Glibc
#endif
