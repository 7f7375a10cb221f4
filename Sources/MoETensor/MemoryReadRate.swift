import Foundation

/// The machine's memory read rate, measured: the ceiling of every pass that streams weights once (decode reads
/// each resident matrix and each chosen expert once per token, so tokens/s ≤ this rate ÷ bytes per token).
///
/// Each thread sums its own contiguous part of one buffer with wide loads and several independent accumulators
/// (no arithmetic to wait on); the parts are first written by the threads that read them, so on a NUMA machine
/// each thread reads its own node's memory, as the kernels' row splits do. The sum is returned so no load can be
/// dropped, and the tests check it.
public enum MemoryReadRate {
    /// Bytes summed per step: four 64-byte vectors.
    public static let step = 256

    public struct Result: Sendable {
        /// The best of the rounds, in bytes per second.
        public let bytesPerSecond: Double
        /// Σ of the buffer's UInt64 words (wrapping): every round's, which must agree.
        public let checksum: UInt64
        /// Threads that read.
        public let threads: Int
    }

    /// Reads `bytes` (rounded down to `threads · step`) `rounds` times with `threads` threads; the buffer's word i
    /// holds i. Returns the best round's rate.
    public static func measure(bytes: Int, threads: Int, rounds: Int) -> Result {
        let threads = max(1, threads), rounds = max(1, rounds)
        let part = max(step, bytes / threads / step * step)  // bytes per thread
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: part * threads, alignment: 4096)
        defer { buffer.deallocate() }
        nonisolated(unsafe) let base = buffer
        let sums = UnsafeMutablePointer<UInt64>.allocate(capacity: threads)
        defer { sums.deallocate() }
        nonisolated(unsafe) let partSums = sums

        /// Runs `body(thread)` on `threads` threads at once and returns the seconds from the start of the first to
        /// the end of the last.
        func onEveryThread(_ body: @escaping @Sendable (Int) -> Void) -> Double {
            let group = DispatchGroup()
            let start = DispatchTime.now().uptimeNanoseconds
            for t in 0..<threads {
                group.enter()
                let thread = Thread { body(t); group.leave() }
                thread.name = "moe-read-rate"
                thread.start()
            }
            group.wait()
            return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        }

        _ = onEveryThread { t in  // first touch by the reading thread
            let words = (base + t * part).bindMemory(to: UInt64.self, capacity: part / 8)
            let first = UInt64(t * part / 8)
            for i in 0..<(part / 8) { words[i] = first &+ UInt64(i) }
        }
        var best = Double.infinity, checksum: UInt64 = 0
        for round in 0..<rounds {
            let seconds = onEveryThread { t in partSums[t] = sum(UnsafeRawPointer(base + t * part), count: part) }
            var total: UInt64 = 0
            for t in 0..<threads { total &+= sums[t] }
            precondition(round == 0 || total == checksum, "the memory read probe summed different values in two rounds")
            checksum = total
            best = min(best, seconds)
        }
        return Result(bytesPerSecond: Double(part * threads) / best, checksum: checksum, threads: threads)
    }

    /// Σ of the UInt64 words of `count` bytes at `p` (`count` a multiple of `step`, `p` 64-byte aligned), wrapping.
    @inline(never)
    public static func sum(_ p: UnsafeRawPointer, count: Int) -> UInt64 {
        var a = SIMD8<UInt64>(), b = SIMD8<UInt64>(), c = SIMD8<UInt64>(), d = SIMD8<UInt64>()
        var offset = 0
        while offset < count {
            a &+= p.load(fromByteOffset: offset, as: SIMD8<UInt64>.self)
            b &+= p.load(fromByteOffset: offset + 64, as: SIMD8<UInt64>.self)
            c &+= p.load(fromByteOffset: offset + 128, as: SIMD8<UInt64>.self)
            d &+= p.load(fromByteOffset: offset + 192, as: SIMD8<UInt64>.self)
            offset += step
        }
        return ((a &+ b) &+ (c &+ d)).wrappedSum()
    }
}
