#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory (`mmap(PROT_READ, MAP_PRIVATE)`).
///
/// Checkpoint tensors are views into this mapping: nothing is copied at load, and the kernel pages weights in
/// as they are first touched. The mapping lives as long as the object; views must not outlive it, which is why
/// every view holds a strong reference to its `MappedFile`.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    /// Length of the file in bytes at the time it was mapped.
    public let count: Int
    /// Start of the mapping; `nil` only for an empty file.
    public let base: UnsafeRawPointer?

    /// Opens and maps `path`. Throws a `SystemError` naming the path when open, fstat or mmap fail.
    public init(path: String) throws(SystemError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError(call: "open", path: path, errno: lastErrno()) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError(call: "fstat", path: path, errno: lastErrno()) }
        count = Int(st.st_size)
        if count == 0 {
            base = nil
            return
        }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw SystemError(call: "mmap", path: path, errno: lastErrno()) }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }

    /// Lets the kernel drop the pages of `range` from this process (`madvise(MADV_DONTNEED)`; the mapping is
    /// private and read-only, so they are re-read from the file if touched again). A streaming converter calls
    /// this after each tensor so its resident memory stays bounded however large the source is.
    public func release(_ range: Range<Int>) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = range.lowerBound / page * page
        let end = min(count, range.upperBound)
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED)
    }

    /// The bytes `range` of the file. The caller has checked the range against `count`.
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "range outside the mapping")
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }
}
