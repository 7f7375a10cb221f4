import MoESystem

/// Appends bytes to a new file through one aligned buffer, written out in large `pwrite`s of `chunkBytes`.
/// Finishing syncs the data and drops it from the page cache, so converting a 600 GB model keeps neither the
/// data nor its cache in RAM.
final class StreamWriter {
    let file: File
    private let buffer: UnsafeMutableRawPointer
    private let chunkBytes: Int
    private var filled = 0
    /// Bytes already written to the file.
    private(set) var flushed = 0
    /// Called after each write with the bytes it wrote.
    var onWrite: (Int) -> Void = { _ in }

    init(path: String, chunkBytes: Int) throws(SystemError) {
        file = try File(path: path, mode: .createTruncate)
        self.chunkBytes = max(4096, chunkBytes / 4096 * 4096)
        buffer = .allocate(byteCount: self.chunkBytes, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    var position: Int { flushed + filled }

    func append(_ bytes: UnsafeRawPointer, count: Int) throws(SystemError) {
        var done = 0
        while done < count {
            let n = min(count - done, chunkBytes - filled)
            (buffer + filled).copyMemory(from: bytes + done, byteCount: n)
            filled += n
            done += n
            if filled == chunkBytes { try flush() }
        }
    }

    func appendZeros(_ count: Int) throws(SystemError) {
        var left = count
        while left > 0 {
            let n = min(left, chunkBytes - filled)
            (buffer + filled).initializeMemory(as: UInt8.self, repeating: 0, count: n)
            filled += n
            left -= n
            if filled == chunkBytes { try flush() }
        }
    }

    private func flush() throws(SystemError) {
        guard filled > 0 else { return }
        try file.write(buffer, count: filled, at: flushed)
        flushed += filled
        onWrite(filled)
        filled = 0
        // Keep dirty pages bounded: start writeback of what we wrote, and let it leave the cache.
        if flushed % (1 << 30) < chunkBytes { try file.sync(); file.dropCache() }
    }

    /// Writes what is left, makes it durable and drops it from the page cache.
    func finish() throws(SystemError) {
        try flush()
        try file.sync()
        file.dropCache()
    }
}
