import CMoEShims
#if canImport(Glibc)
import Glibc
#endif

/// Reads through an io_uring: registered files, and fixed reads into registered buffers when the destination
/// lies inside one (registration pins the pages once instead of on every read). Batched: `submit` queues all
/// its requests and enters the kernel once.
public final class URingReader: BlockReader {
    public let engine = "io_uring"
    public let depth: Int
    public private(set) var inFlight = 0
    /// Whether destination buffers are registered (false when the kernel refused, e.g. RLIMIT_MEMLOCK).
    public let fixedBuffers: Bool
    private let ring: OpaquePointer
    private let files: ReadFiles
    private let regions: [UnsafeMutableRawBufferPointer]

    public init(files: ReadFiles, depth: Int, regions: [UnsafeMutableRawBufferPointer]) throws(SystemError) {
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
        let bases: [UnsafeMutableRawPointer?] = regions.map { $0.baseAddress }
        let lengths = regions.map { $0.count }
        let registered = !regions.isEmpty && bases.allSatisfy({ $0 != nil }) && bases.withUnsafeBufferPointer { b in
            lengths.withUnsafeBufferPointer { l in
                cmoe_ring_register_buffers(ring, b.baseAddress, l.baseAddress, UInt32(regions.count)) == 0
            }
        }
        fixedBuffers = registered
        self.regions = registered ? regions : []
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
        guard !requests.isEmpty else { return }
        precondition(inFlight + requests.count <= depth, "more reads than the queue depth")
        for r in requests {
            let rc = cmoe_ring_queue_read(ring, Int32(r.file), 1, r.buffer, UInt32(r.length), UInt64(r.offset),
                                          region(of: r.buffer, r.length), r.tag)
            guard rc == 0 else { throw SystemError(call: "io_uring_get_sqe", path: nil, errno: -rc) }
        }
        var left = requests.count
        while left > 0 {
            let n = cmoe_ring_submit(ring)
            if n == -EINTR || n == -EAGAIN { continue }
            guard n >= 0 else { throw SystemError(call: "io_uring_submit", path: nil, errno: -n) }
            left -= Int(n)
            if n == 0 { break }
        }
        inFlight += requests.count
    }

    public func complete(waitNanoseconds: Int64, into out: inout [ReadCompletion]) throws(SystemError) {
        var tag: UInt64 = 0
        var result: Int32 = 0
        var wait = waitNanoseconds
        while inFlight > 0 {
            let rc = cmoe_ring_complete(ring, wait, &tag, &result)
            guard rc >= 0 else { throw SystemError(call: "io_uring_wait_cqe", path: nil, errno: -rc) }
            if rc == 0 { return }
            inFlight -= 1
            out.append(ReadCompletion(tag: tag, result: Int(result)))
            wait = 0  // after the first, take only what is already there
        }
    }
}
