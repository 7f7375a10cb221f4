#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An open file descriptor with the calls the store needs, each throwing a `SystemError` that names the path.
/// Closed when the object goes away.
public final class File: @unchecked Sendable {  // immutable after init; `pread`/`pwrite` carry their own offset, so no lock is needed
    public let path: String
    public let descriptor: Int32

    public enum Mode: Sendable {
        case read
        /// Create or truncate, write only.
        case createTruncate
        /// Open for reading and writing, create if missing, keep contents.
        case readWriteCreate
    }

    public init(path: String, mode: Mode) throws(SystemError) {
        self.path = path
        let flags: Int32
        switch mode {
        case .read: flags = O_RDONLY
        case .createTruncate: flags = O_WRONLY | O_CREAT | O_TRUNC
        case .readWriteCreate: flags = O_RDWR | O_CREAT
        }
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; it has no effect on
        // regular files, and anything else is refused below.
        let fd = open(path, flags | O_CLOEXEC | (mode == .read ? O_NONBLOCK : 0), 0o644)
        guard fd >= 0 else { throw SystemError(call: "open", path: path, errno: lastErrno()) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = lastErrno()
            close(fd)
            throw SystemError(call: "fstat", path: path, errno: e)
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw SystemError(call: "open (not a regular file)", path: path, errno: EINVAL)
        }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Current size in bytes (`fstat`).
    public func size() throws(SystemError) -> Int {
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { throw SystemError(call: "fstat", path: path, errno: lastErrno()) }
        return Int(st.st_size)
    }

    /// Reads exactly `count` bytes at `offset` (`pread`, retried on EINTR and short reads). A read past the end
    /// of the file throws EIO-like `SystemError` with errno 0 ("short read").
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws(SystemError) {
        var done = 0
        while done < count {
            let n = pread(descriptor, buffer + done, count - done, off_t(offset + done))
            if n < 0 {
                if lastErrno() == EINTR { continue }
                throw SystemError(call: "pread", path: path, errno: lastErrno())
            }
            if n == 0 { throw SystemError(call: "pread (short read at \(offset + done))", path: path, errno: EIO) }
            done += n
        }
    }

    /// Writes exactly `count` bytes at `offset` (`pwrite`, retried on EINTR and short writes).
    public func write(_ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws(SystemError) {
        var done = 0
        while done < count {
            let n = pwrite(descriptor, buffer + done, count - done, off_t(offset + done))
            if n < 0 {
                if lastErrno() == EINTR { continue }
                throw SystemError(call: "pwrite", path: path, errno: lastErrno())
            }
            done += n
        }
        Failpoint.didWrite()
    }

    /// Data and size on stable storage (`fdatasync`).
    public func sync() throws(SystemError) {
        guard fdatasync(descriptor) == 0 else { throw SystemError(call: "fdatasync", path: path, errno: lastErrno()) }
    }

    /// Tells the kernel the range will not be needed again, so written or read pages leave the page cache
    /// (`posix_fadvise(DONTNEED)`): a 600 GB conversion must not fill RAM with cache.
    public func dropCache(offset: Int = 0, count: Int = 0) {
        _ = posix_fadvise(descriptor, off_t(offset), off_t(count), Int32(POSIX_FADV_DONTNEED))
    }

    public func truncate(to size: Int) throws(SystemError) {
        guard ftruncate(descriptor, off_t(size)) == 0 else { throw SystemError(call: "ftruncate", path: path, errno: lastErrno()) }
    }
}

/// Filesystem operations by path.
public enum FileSystem {
    /// The whole of a small file (a config, an index, a manifest, a tokenizer file), read through `File` so a
    /// FIFO or device is refused instead of blocking or streaming forever, and refused past `limit` bytes before
    /// anything is allocated.
    public static func contents(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
        let file = try File(path: path, mode: .read)
        let size = try file.size()
        guard size <= limit else {
            throw SystemError(call: "read (\(size) bytes, more than the \(limit) this file may have)", path: path, errno: EFBIG)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 16)
        defer { buffer.deallocate() }
        try file.read(into: buffer.baseAddress!, count: size, at: 0)
        return Array(buffer.prefix(size))
    }

    /// Size of the regular file at `path`, following symbolic links (a store may link its expert files to other
    /// drives); anything but a regular file is refused.
    public static func regularFileSize(_ path: String) throws(SystemError) -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else { throw SystemError(call: "stat", path: path, errno: lastErrno()) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw SystemError(call: "stat (not a regular file)", path: path, errno: EINVAL) }
        return Int(st.st_size)
    }

    /// Atomically replaces `to` with `from` (`rename`).
    public static func rename(_ from: String, _ to: String) throws(SystemError) {
        guard Glibc.rename(from, to) == 0 else { throw SystemError(call: "rename", path: "\(from) → \(to)", errno: lastErrno()) }
    }

    /// Makes the directory's entries (renames) durable (`fsync` on the directory).
    public static func syncDirectory(_ path: String) throws(SystemError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError(call: "open", path: path, errno: lastErrno()) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw SystemError(call: "fsync", path: path, errno: lastErrno()) }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func remove(_ path: String) { unlink(path) }

    public static func makeDirectory(_ path: String) throws(SystemError) {
        if mkdir(path, 0o755) != 0 && lastErrno() != EEXIST {
            throw SystemError(call: "mkdir", path: path, errno: lastErrno())
        }
    }
}

/// A test hook: with `MOESTREAM_KILL_AFTER_WRITES=N` in the environment the process kills itself with SIGKILL
/// right after its N-th file write, so tests can interrupt a conversion at exact points. Off otherwise.
public enum Failpoint {
    nonisolated(unsafe) static var writes = 0
    static let killAfter: Int? = getenv("MOESTREAM_KILL_AFTER_WRITES").flatMap { Int(String(cString: $0)) }

    static func didWrite() {
        guard let limit = killAfter else { return }
        writes += 1
        if writes >= limit { kill(getpid(), SIGKILL) }
    }
}
