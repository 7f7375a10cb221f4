#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file in memory, read-only: either mapped (`mmap(PROT_READ, MAP_PRIVATE)`) or copied into anonymous
/// memory at open.
///
/// Mapped: checkpoint tensors are views into the mapping, nothing is copied at load, and the kernel pages weights
/// in as they are first touched — but the bytes stay the file's: a file truncated while mapped raises SIGBUS on
/// the next touch, and a file rewritten in place changes the weights under the model. Copied (`copy: true`):
/// the bytes are read once into memory the process owns, so nothing done to the file afterwards reaches them;
/// the cost is one sequential read at load (which a checksummed load does anyway) and no sharing with the page
/// cache (the copied range is dropped from it). Views must not outlive the object, which is why every view holds
/// a strong reference to its `MappedFile`.
public final class MappedFile: @unchecked Sendable {  // immutable after init, over PROT_READ bytes; `release` is a plain `madvise`
    public let path: String
    /// Length of the file in bytes at the time it was opened.
    public let count: Int
    /// Start of the bytes; `nil` only for an empty file.
    public let base: UnsafeRawPointer?
    /// Whether the bytes are a private copy (then `release` keeps them: they cannot be read again).
    public let isCopy: Bool

    /// Opens `path` and maps it, or with `copy` reads it into anonymous memory. Throws a `SystemError` naming the
    /// path when open, fstat, mmap or a read fail, when the path is not a regular file, or when the file changes
    /// size while it is copied.
    ///
    /// With `copy`, the byte ranges in `skipping` are left out: the pages wholly inside one are never read nor
    /// touched (so they take no memory) and are made inaccessible, so a stray read faults instead of seeing zeros.
    /// Bytes of a skipped range that share a page with kept bytes are read like the rest.
    public init(path: String, copy: Bool = false, skipping: [Range<Int>] = []) throws(SystemError) {
        self.path = path
        isCopy = copy
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)  // a FIFO must not block the open
        guard fd >= 0 else { throw SystemError(call: "open", path: path, errno: lastErrno()) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError(call: "fstat", path: path, errno: lastErrno()) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw SystemError(call: "mmap (not a regular file)", path: path, errno: EINVAL) }
        count = Int(st.st_size)
        if count == 0 {
            base = nil
            return
        }
        if copy {
            base = UnsafeRawPointer(try Self.copy(fd: fd, count: count, path: path, skipping: Self.holes(skipping, count: count)))
            return
        }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw SystemError(call: "mmap", path: path, errno: lastErrno()) }
        base = UnsafeRawPointer(p)
    }

    /// Reads `count` bytes of `fd` (but the page-aligned `holes`) into fresh anonymous memory (huge pages where the
    /// kernel gives them), drops them from the page cache, checks the file did not change size meanwhile, and makes
    /// the copy read-only (the holes inaccessible).
    private static func copy(fd: Int32, count: Int, path: String, skipping holes: [Range<Int>]) throws(SystemError)
        -> UnsafeMutableRawPointer {
        guard let p = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw SystemError(call: "mmap (copy of \(count) bytes)", path: path, errno: lastErrno())
        }
        _ = madvise(p, count, MADV_HUGEPAGE)
        let chunk = 64 << 20
        var done = 0, hole = 0
        while done < count {
            if hole < holes.count, done >= holes[hole].lowerBound {
                done = max(done, holes[hole].upperBound)
                hole += 1
                continue
            }
            let end = hole < holes.count ? min(count, holes[hole].lowerBound) : count
            let n = pread(fd, p + done, min(chunk, end - done), off_t(done))
            if n < 0 && lastErrno() == EINTR { continue }
            guard n > 0 else {
                let e = n < 0 ? lastErrno() : EIO
                munmap(p, count)
                throw SystemError(call: n < 0 ? "pread" : "pread (the file shrank to \(done) bytes while it was read)", path: path, errno: e)
            }
            _ = posix_fadvise(fd, off_t(done), off_t(n), Int32(POSIX_FADV_DONTNEED))
            done += n
        }
        var st = stat()
        guard fstat(fd, &st) == 0, Int(st.st_size) == count else {
            munmap(p, count)
            throw SystemError(call: "read (the file changed size while it was read)", path: path, errno: EIO)
        }
        mprotect(p, count, PROT_READ)
        for h in holes { mprotect(p + h.lowerBound, h.count, PROT_NONE) }
        return p
    }

    /// The page-aligned interiors of `ranges` (clipped to `count`), sorted and merged: what a copy can leave out.
    static func holes(_ ranges: [Range<Int>], count: Int) -> [Range<Int>] {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let inner = ranges.compactMap { r -> Range<Int>? in
            let lo = (max(0, r.lowerBound) + page - 1) / page * page, hi = min(count, r.upperBound) / page * page
            return lo < hi ? lo..<hi : nil
        }.sorted { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = []
        for r in inner {
            if let last = merged.last, r.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        return merged
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }

    /// Lets the kernel drop the pages of `range` from this process (`madvise(MADV_DONTNEED)`; the mapping is
    /// private and read-only, so they are re-read from the file if touched again). A streaming converter calls
    /// this after each tensor so its resident memory stays bounded however large the source is.
    public func release(_ range: Range<Int>) {
        guard let base, !range.isEmpty, !isCopy else { return }
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
