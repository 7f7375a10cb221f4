import CMoEShims
#if canImport(Glibc)
import Glibc
#endif

/// One read: `length` bytes at `offset` of file `file` (an index into the reader's files) into `buffer`.
public struct ReadRequest: Sendable {
    public var file: Int
    public var offset: Int
    public var length: Int
    public nonisolated(unsafe) var buffer: UnsafeMutableRawPointer
    /// Returned with the completion.
    public var tag: UInt64

    public init(file: Int, offset: Int, length: Int, buffer: UnsafeMutableRawPointer, tag: UInt64) {
        self.file = file
        self.offset = offset
        self.length = length
        self.buffer = buffer
        self.tag = tag
    }
}

/// A finished read: bytes read (== length) or a negative errno.
public struct ReadCompletion: Sendable {
    public var tag: UInt64
    public var result: Int

    public init(tag: UInt64, result: Int) {
        self.tag = tag
        self.result = result
    }
}

/// Reads file blocks asynchronously. Owned by one thread (the node's ring owner): not thread-safe.
///
/// A reader either works or is broken. A transient refusal by the kernel (EAGAIN, EBUSY) is not an error: the
/// reads stay accepted and start on a later `submit` or `complete`. When `submit` or `complete` throws, the
/// reader is broken: the owner calls `abandon()` once, drains what is still in flight through `complete`, and
/// replaces the reader.
public protocol BlockReader: AnyObject {
    /// "io_uring" or "pread".
    var engine: String { get }
    /// Reads accepted by `submit` and not yet returned by `complete` (started or not), and the most allowed.
    var inFlight: Int { get }
    var depth: Int { get }
    /// Accepts `requests` (at most `depth − inFlight` of them) and starts what the kernel takes now.
    func submit(_ requests: [ReadRequest]) throws(SystemError)
    /// Returns finished reads; waits up to `waitNanoseconds` for the first (negative: until one finishes).
    func complete(waitNanoseconds: Int64, into out: inout [ReadCompletion]) throws(SystemError)
    /// After a throw: starts nothing more, and returns the tags of accepted reads that never reached the kernel
    /// (they will never complete and their buffers are untouched). Reads that did reach it are still in
    /// `inFlight` and still come back through `complete`.
    func abandon() -> [UInt64]
}

/// Which engine to read with.
public enum ReadEngine: String, Sendable, CaseIterable {
    case uring
    case pread
}

/// Files opened for expert reads: O_DIRECT when the filesystem allows it (so the page cache does not hold a
/// second copy of what the expert cache holds), buffered otherwise.
public final class ReadFiles: @unchecked Sendable {  // immutable after init: the descriptors are only read by `pread`s
    public let paths: [String]
    public let descriptors: [Int32]
    /// Whether every file is open with O_DIRECT.
    public let direct: Bool

    public init(paths: [String], direct wantDirect: Bool = true) throws(SystemError) {
        var fds: [Int32] = []
        var direct = wantDirect
        for p in paths {
            var fd: Int32 = -1
            if direct {
                fd = open(p, O_RDONLY | O_CLOEXEC | cmoe_o_direct())
                if fd < 0 && lastErrno() == EINVAL { direct = false }  // tmpfs and friends: no O_DIRECT
            }
            if fd < 0 { fd = open(p, O_RDONLY | O_CLOEXEC) }
            guard fd >= 0 else {
                let e = lastErrno()
                fds.forEach { close($0) }
                throw SystemError(call: "open", path: p, errno: e)
            }
            fds.append(fd)
        }
        if !direct {
            // Some files may have been opened with O_DIRECT before one refused: reopen them all buffered.
            fds.forEach { close($0) }
            fds = []
            for p in paths {
                let fd = open(p, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw SystemError(call: "open", path: p, errno: lastErrno()) }
                fds.append(fd)
            }
        }
        self.paths = paths
        descriptors = fds
        self.direct = direct
    }

    deinit { descriptors.forEach { close($0) } }
}

/// Makes a reader of the asked kind, falling back from io_uring to pread when the kernel refuses a ring
/// (ENOSYS, EPERM, `kernel.io_uring_disabled`). `fallback` carries the one line to log when that happened.
public func makeBlockReader(_ engine: ReadEngine, files: ReadFiles, depth: Int,
                            registeredRegions: [UnsafeMutableRawBufferPointer]) -> (reader: any BlockReader, fallback: String?) {
    if engine == .uring {
        do throws(SystemError) {
            if let e = RingSetupOverride.errno { throw SystemError(call: "io_uring_queue_init", path: nil, errno: e) }
            return (try URingReader(files: files, depth: depth, regions: registeredRegions), nil)
        } catch {
            let why = error.errno == ENOSYS ? "the kernel has no io_uring"
                : error.errno == EPERM ? "io_uring is disabled here (kernel.io_uring_disabled or a seccomp filter)"
                : "io_uring setup failed: \(error)"
            return (PReadReader(files: files, depth: depth), "io_uring unavailable (\(why)); reading experts with a pread thread pool")
        }
    }
    return (PReadReader(files: files, depth: depth), nil)
}

/// For tests of the fallback: with `MOESTREAM_FAKE_URING_ERRNO=1` (EPERM) or `=38` (ENOSYS) in the environment,
/// ring setup fails as if the kernel had refused, without touching the machine's io_uring settings.
public enum RingSetupOverride {
    public static let errno: Int32? = getenv("MOESTREAM_FAKE_URING_ERRNO").flatMap { Int32(String(cString: $0)) }
}
