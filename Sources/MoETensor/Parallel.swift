import Synchronization

/// Runs `body(chunk)` for `chunks` chunks across the kernel pool and returns when all are done.
///
/// Every output element is written by exactly one chunk with a fixed summation order, so results do not depend
/// on how many threads ran or in which order: the model's bit-exactness rests on this.
@inline(__always)
public func parallelFor(_ chunks: Int, _ body: (Int) -> Void) {
    KernelPool.current.run(chunks, body)
}

/// How many threads compute kernels use (`--threads`); all online cores by default.
public enum Parallelism {
    public static var threads: Int { KernelPool.current.width }

    /// Marks the calling thread as a worker of a compute pool (one expert per worker): kernels it runs stay on
    /// it instead of fanning out again, so pinned workers keep their work on their node.
    public static func markPoolThread() {
        pthread_setspecific(poolKey, UnsafeRawPointer(bitPattern: 1))
    }

    public static var isPoolThread: Bool { pthread_getspecific(poolKey) != nil }

    static let poolKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
}

/// Persistent worker threads that split one job at a time into chunks: the rows of a large matrix, the heads
/// of attention. The calling thread works too, so `width` threads compute.
///
/// Nothing is allocated per job: the body is passed by address, chunks are claimed from one atomic word that
/// also carries the job's generation (a late worker can never claim a chunk of a job that has moved on), and
/// idle workers spin for a few tens of microseconds (a forward pass launches jobs back to back) before they
/// sleep on a condition variable, so a waiting pool does not steal cores from the expert workers.
/// Sendable: job state is in atomics and `runLock` serialises jobs; `wake` is used under `sleepLock`; `threads` is
/// touched only by init and `shutdown`.
public final class KernelPool: @unchecked Sendable {
    /// The pool the model's kernels use; replaced by `configure` at start-up.
    nonisolated(unsafe) public private(set) static var shared = KernelPool(threads: ProcessInfoCores.active, pin: nil)

    /// Replaces the shared pool: `threads` computing threads (the caller included); `pin(i)` runs first on
    /// worker `i` (1 ..< threads), e.g. to bind it to a NUMA node's CPUs. Call before any model runs.
    public static func configure(threads: Int, pin: (@Sendable (Int) -> Void)?) {
        let old = shared
        shared = KernelPool(threads: max(1, threads), pin: pin)
        old.shutdown()
    }

    /// The pool kernels called on this thread use: the one `using` installed here, else `shared`.
    public static var current: KernelPool {
        guard let p = pthread_getspecific(overrideKey) else { return shared }
        return Unmanaged<KernelPool>.fromOpaque(p).takeUnretainedValue()
    }

    /// Runs `body` with the kernels it calls on this thread split over `pool` instead of the shared pool: a test
    /// can compare thread counts without replacing the pool other tests are using.
    public static func using<T>(_ pool: KernelPool, _ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(overrideKey)
        pthread_setspecific(overrideKey, Unmanaged.passUnretained(pool).toOpaque())
        defer { pthread_setspecific(overrideKey, previous) }
        return try withExtendedLifetime(pool) { try body() }
    }

    private static let overrideKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// A pool that is not the shared one (tests; `using`). Stop it with `shutdown()`.
    public static func make(threads: Int) -> KernelPool { KernelPool(threads: threads, pin: nil) }

    public let width: Int
    /// generation << 32 | next chunk
    private let claim = Atomic<UInt64>(0)
    private let finished = Atomic<Int>(0)
    private let generation = Atomic<UInt32>(0)
    private let stopping = Atomic<Bool>(false)
    /// The current job's body (address of a non-escaping closure) and chunk count, valid while it runs.
    private let bodyAddress = Atomic<UInt>(0)
    private let chunkCount = Atomic<Int>(0)
    private let runLock = PthreadMutex()
    private let sleepLock = PthreadMutex()
    private var wake = pthread_cond_t()
    private var threads: [pthread_t] = []
    private let pin: (@Sendable (Int) -> Void)?

    init(threads: Int, pin: (@Sendable (Int) -> Void)?) {
        width = max(1, threads)
        self.pin = pin
        pthread_cond_init(&wake, nil)
        for i in 1..<width {
            let context = Unmanaged.passRetained(WorkerContext(pool: self, index: i)).toOpaque()
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { raw in
                let context = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
                context.pool.work(index: context.index)
                return nil
            }, context)
            precondition(rc == 0, "pthread_create failed: \(rc)")
            self.threads.append(thread)
        }
    }

    private final class WorkerContext {
        let pool: KernelPool
        let index: Int
        init(pool: KernelPool, index: Int) { self.pool = pool; self.index = index }
    }

    /// Stops and joins the workers (the pool must be idle).
    public func shutdown() {
        stopping.store(true, ordering: .releasing)
        sleepLock.lock()
        pthread_cond_broadcast(&wake)
        sleepLock.unlock()
        for t in threads { pthread_join(t, nil) }
        threads = []
    }

    /// Runs `body(k)` for k in 0 ..< chunks on the pool; serially on a thread that is itself a worker of a pool,
    /// or when one thread would do.
    public func run(_ chunks: Int, _ body: (Int) -> Void) {
        if chunks <= 1 || width == 1 || Parallelism.isPoolThread || pthread_getspecific(Self.workerKey) != nil {
            for k in 0..<chunks { body(k) }
            return
        }
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { address in
                runLock.lock()
                // While the job runs, kernels the body calls on this thread run serially (as on the workers).
                pthread_setspecific(Self.workerKey, UnsafeRawPointer(bitPattern: 1))
                defer {
                    pthread_setspecific(Self.workerKey, nil)
                    runLock.unlock()
                }
                let g = generation.load(ordering: .relaxed) &+ 1
                bodyAddress.store(UInt(bitPattern: address), ordering: .relaxed)
                chunkCount.store(chunks, ordering: .relaxed)
                finished.store(0, ordering: .relaxed)
                claim.store(UInt64(g) << 32, ordering: .releasing)
                generation.store(g, ordering: .releasing)
                sleepLock.lock()
                pthread_cond_broadcast(&wake)
                sleepLock.unlock()
                work(generation: g)
                while finished.load(ordering: .acquiring) < chunks { spinPause() }
            }
        }
    }

    /// Claims and runs chunks of job `g` until none are left.
    private func work(generation g: UInt32) {
        let chunks = chunkCount.load(ordering: .acquiring)
        var v = claim.load(ordering: .acquiring)
        while UInt32(truncatingIfNeeded: v >> 32) == g && Int(v & 0xFFFF_FFFF) < chunks {
            let (exchanged, original) = claim.compareExchange(expected: v, desired: v + 1, ordering: .acquiringAndReleasing)
            if exchanged {
                // The body's address is loaded only after the claim succeeded (an atomic load the optimiser cannot
                // hoist): loaded before, the closure behind it could be read while the caller writes the next job's
                // closure into the same stack slot (harmless, never called, but a data race TSan reported).
                let body = UnsafePointer<(Int) -> Void>(bitPattern: bodyAddress.load(ordering: .acquiring))!
                body.pointee(Int(v & 0xFFFF_FFFF))
                finished.add(1, ordering: .releasing)
                v = v + 1
            } else {
                v = original
            }
        }
    }

    private func work(index: Int) {
        pthread_setspecific(Self.workerKey, UnsafeRawPointer(bitPattern: 1))
        pin?(index)
        var seen = generation.load(ordering: .acquiring)
        while true {
            // Spin ~50 µs for the next job, then sleep.
            var spins = 0
            var g = generation.load(ordering: .acquiring)
            while g == seen && spins < 20_000 && !stopping.load(ordering: .relaxed) {
                spinPause()
                spins += 1
                g = generation.load(ordering: .acquiring)
            }
            if g == seen {
                sleepLock.lock()
                while generation.load(ordering: .acquiring) == seen && !stopping.load(ordering: .acquiring) {
                    pthread_cond_wait(&wake, sleepLock.pointer)
                }
                sleepLock.unlock()
                g = generation.load(ordering: .acquiring)
            }
            if stopping.load(ordering: .acquiring) { return }
            seen = g
            // The job may be stale (finished while this thread slept): then its claim word has moved on and
            // `work(generation:)` claims nothing. Its body address is only dereferenced after a claim succeeds,
            // which proves the job is still running.
            work(generation: g)
        }
    }

    static let workerKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
}

@inline(__always)
private func spinPause() {
    #if arch(x86_64) || arch(i386)
    // No PAUSE intrinsic in Swift; a relaxed load loop is fine for tens of microseconds.
    #endif
}

/// A pthread mutex at a stable address.
final class PthreadMutex: @unchecked Sendable {  // `pointer` never changes, and a pthread mutex is made to be shared
    let pointer: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        pointer = .allocate(capacity: 1)
        pthread_mutex_init(pointer, nil)
    }
    deinit {
        pthread_mutex_destroy(pointer)
        pointer.deallocate()
    }
    func lock() { pthread_mutex_lock(pointer) }
    func unlock() { pthread_mutex_unlock(pointer) }
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
