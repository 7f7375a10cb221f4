#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call: which call, on what path, and the errno it left.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The C function that failed, as in `open` or `mmap`.
    public let call: String
    /// The file the call was about, when there is one.
    public let path: String?
    public let errno: Int32

    public init(call: String, path: String?, errno: Int32) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        if let path { return "\(call)(\(path)): \(reason) (errno \(errno))" }
        return "\(call): \(reason) (errno \(errno))"
    }
}

/// The errno of the calling thread, read right after a failed call.
@inline(__always) func lastErrno() -> Int32 {
    #if canImport(Glibc)
    return Glibc.errno
    #else
    return Darwin.errno
    #endif
}
