import CMoEShims
#if canImport(Glibc)
import Glibc
#endif

/// Reads through an io_uring: registered files, and fixed reads into registered buffers when the destination
/// lies inside one (registration pins the pages once instead of on every read). Batched: `submit` queues all
/// its requests and enters the kernel once.
///
/// Reads are *queued* (their entries are in the submission ring) until the kernel takes them, then *started*.
/// When the kernel refuses to take entries for a moment (EAGAIN: no memory for the request; EBUSY: the
/// completion ring is full until we reap), the entries stay queued and the next `submit` or `complete` offers
/// them again, backing off instead of spinning; if nothing can be started for `stallLimit`, the ring counts as
/// broken. Only started reads are waited for.
public final class URingReader: BlockReader {
    public let engine = "io_uring"
    public let depth: Int
    /// Queued and started reads.
    public var inFlight: Int { queued.count + started }
    /// Whether destination buffers are registered (false when the kernel refused, e.g. RLIMIT_MEMLOCK).
    public let fixedBuffers: Bool
    /// How long queued reads may wait for the kernel to take them, with nothing in flight, before the ring
    /// counts as broken.
    public var stallLimit: Duration = .seconds(2)
    /// Results to return from the next `io_uring_submit` calls instead of entering the kernel (a fault injector's
    /// negative errnos, for tests): the entries stay queued exactly as when the kernel refuses them.
    public var injectedSubmitResults: [Int32] = []
    private let ring: OpaquePointer
    private let files: ReadFiles
    private let regions: [UnsafeMutableRawBufferPointer]
    /// Tags of entries in the submission ring the kernel has not taken, oldest first.
    private var queued: [UInt64] = []
    private var queuedHead = 0
    private var started = 0
    private var broken = false
    private var stalledSince: ContinuousClock.Instant?

    /// - Parameter prefaultThreads: threads that commit `regions`' pages before they are registered.
    public init(files: ReadFiles, depth: Int, regions: [UnsafeMutableRawBufferPointer],
                prefaultThreads: Int = Prefault.defaultThreads) throws(SystemError) {
        var error: Int32 = 0
        guard let ring = cmoe_ring_create(UInt32(max(1, depth)), &error) else {
            throw SystemError(call: "io_uring_queue_init", path: nil, errno: -error)
        }
        self.ring = ring
        self.depth = max(1, depth)
        self.files = files
        let rc = files.descriptors.withUnsafeBufferPointer { cmoe_ring_register_files(ring, $0.baseAddress, UInt32($0.count)) }
        guard rc == 0 else {
            cmoe_ring_destroy(ring)
            throw SystemError(call: "io_uring_register_files", path: files.paths.first, errno: -rc)
        }
        // Registration pins every page, faulting in the absent ones on this thread alone: commit them first with
        // every core (`Prefault`), a 19 GB cache's start-up being otherwise one thread clearing 19 GB.
        if !regions.isEmpty { Prefault.populate(regions, threads: prefaultThreads) }
        let bases: [UnsafeMutableRawPointer?] = regions.map { $0.baseAddress }
        let lengths = regions.map { $0.count }
        let registered = !regions.isEmpty && bases.allSatisfy({ $0 != nil }) && bases.withUnsafeBufferPointer { b in
            lengths.withUnsafeBufferPointer { l in
                cmoe_ring_register_buffers(ring, b.baseAddress, l.baseAddress, UInt32(regions.count)) == 0
            }
        }
        fixedBuffers = registered
        self.regions = registered ? regions : []
        queued.reserveCapacity(self.depth)
    }

    deinit { cmoe_ring_destroy(ring) }

    /// Index of the registered region holding `[p, p + n)`, or -1.
    private func region(of p: UnsafeMutableRawPointer, _ n: Int) -> Int32 {
        for (i, r) in regions.enumerated() {
            guard let base = r.baseAddress else { continue }
            if p >= base && p + n <= base + r.count { return Int32(i) }
        }
        return -1
    }

    public func submit(_ requests: [ReadRequest]) throws(SystemError) {
        guard !broken else { throw SystemError(call: "io_uring_submit (ring already failed)", path: nil, errno: EBADFD) }
        guard !requests.isEmpty else { return }
        precondition(inFlight + requests.count <= depth, "more reads than the queue depth")
        for r in requests {
            let rc = cmoe_ring_queue_read(ring, Int32(r.file), 1, r.buffer, UInt32(r.length), UInt64(r.offset),
                                          region(of: r.buffer, r.length), r.tag)
            guard rc == 0 else {
                broken = true
                throw SystemError(call: "io_uring_get_sqe", path: nil, errno: -rc)
            }
            queued.append(r.tag)
        }
        try offer()
    }

    /// Offers the queued entries to the kernel once; counts what it took as started.
    private func offer() throws(SystemError) {
        while queuedHead < queued.count {
            let n = injectedSubmitResults.isEmpty ? cmoe_ring_submit(ring) : injectedSubmitResults.removeFirst()
            if n == -EINTR { continue }
            if n == -EAGAIN || n == -EBUSY || n == 0 {
                if stalledSince == nil { stalledSince = .now }
                return
            }
            guard n > 0 else {
                broken = true
                throw SystemError(call: "io_uring_submit", path: nil, errno: -n)
            }
            let taken = min(Int(n), queued.count - queuedHead)
            queuedHead += taken
            started += taken
            stalledSince = nil
        }
        queued.removeAll(keepingCapacity: true)
        queuedHead = 0
    }

    public func complete(waitNanoseconds: Int64, into out: inout [ReadCompletion]) throws(SystemError) {
        if !broken && queuedHead < queued.count {
            try offer()
            if started == 0, queuedHead < queued.count, let since = stalledSince {
                // Nothing in flight to wait for and the kernel takes nothing: back off, and give up after a while.
                guard ContinuousClock.now - since < stallLimit else {
                    broken = true
                    throw SystemError(call: "io_uring_submit (no read could start for \(stallLimit))", path: nil, errno: EAGAIN)
                }
                if waitNanoseconds != 0 { usleep(UInt32(waitNanoseconds < 0 ? 1000 : min(waitNanoseconds / 1000, 1000))) }
                return
            }
        }
        var tag: UInt64 = 0
        var result: Int32 = 0
        var wait = waitNanoseconds
        while started > 0 {
            let rc = cmoe_ring_complete(ring, wait, &tag, &result)
            guard rc >= 0 else {
                broken = true
                throw SystemError(call: "io_uring_wait_cqe", path: nil, errno: -rc)
            }
            if rc == 0 { return }
            started -= 1
            out.append(ReadCompletion(tag: tag, result: Int(result)))
            wait = 0  // after the first, take only what is already there
        }
    }

    public func abandon() -> [UInt64] {
        broken = true
        // The kernel consumes entries only when asked to submit, and this ring is never asked again: the queued
        // entries are dropped with the ring.
        let never = Array(queued[queuedHead...])
        queued.removeAll()
        queuedHead = 0
        return never
    }
}
