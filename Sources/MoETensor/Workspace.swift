import Glibc

/// The activations and scratch of one forward pass, handed out from one slab that is kept from pass to pass.
///
/// A pass takes what it needs with `floats`/`ints` (zeroed, 64-byte aligned) and `reset` returns everything at
/// the start of the next pass; `mark`/`release` return what a stage took (a layer's buffers) so the next stage
/// reuses the memory. The slab grows to the largest amount a pass held at once (a pass that outgrows it takes
/// overflow chunks, and the next `reset` replaces them and the slab by one slab of that high-water size), so once
/// a prompt has sized it, decoding allocates nothing. Not thread-safe: one pass at a time (`KimiModel` holds it
/// under a lock).
public final class Workspace: @unchecked Sendable {  // no lock: one pass at a time uses it, on the pass's own thread
    private var slab: UnsafeMutableRawPointer
    private var capacity: Int
    private var used = 0
    /// Chunks taken when the slab ran out during this pass, live ones only; replaced by a larger slab at `reset`.
    private var overflow: [(pointer: UnsafeMutableRawPointer, bytes: Int)] = []
    private var overflowBytes = 0
    /// The most this pass has held at once (slab part plus live overflow).
    private var highWater = 0
    /// How this pass's resident matrices multiply (`KimiModel.residentActivations`, set at the start of a pass).
    public var residentActivations = ResidentActivations.fp32

    /// What has been taken so far in this pass.
    public struct Mark: Sendable {
        let used: Int
        let chunks: Int
    }

    public init(bytes: Int = 1 << 20) {
        capacity = max(bytes, 64)
        slab = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit {
        slab.deallocate()
        overflow.forEach { $0.pointer.deallocate() }
    }

    /// Bytes the slab holds (what a pass of the largest size so far needs).
    public var bytes: Int { capacity }

    /// Starts a pass: everything handed out before is free again.
    public func reset() {
        overflow.forEach { $0.pointer.deallocate() }
        overflow.removeAll(keepingCapacity: true)
        overflowBytes = 0
        if highWater > capacity {
            slab.deallocate()
            capacity = highWater
            slab = .allocate(byteCount: capacity, alignment: 64)
        }
        used = 0
        highWater = 0
    }

    public func mark() -> Mark { Mark(used: used, chunks: overflow.count) }

    /// Returns everything taken since `mark` (its memory is handed out again by the next `floats`/`ints`).
    public func release(to mark: Mark) {
        while overflow.count > mark.chunks {
            let chunk = overflow.removeLast()
            chunk.pointer.deallocate()
            overflowBytes -= chunk.bytes
        }
        used = min(used, mark.used)
    }

    /// `count` zeroed floats, valid until the next `reset`.
    public func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
        take(max(count, 1) * MemoryLayout<Float>.stride).bindMemory(to: Float.self, capacity: max(count, 1))
    }

    /// `count` zeroed UInt16s (bf16 values), valid until the next `reset`.
    public func halves(_ count: Int) -> UnsafeMutablePointer<UInt16> {
        take(max(count, 1) * MemoryLayout<UInt16>.stride).bindMemory(to: UInt16.self, capacity: max(count, 1))
    }

    /// `count` zeroed Ints, valid until the next `reset`.
    public func ints(_ count: Int) -> UnsafeMutablePointer<Int> {
        take(max(count, 1) * MemoryLayout<Int>.stride).bindMemory(to: Int.self, capacity: max(count, 1))
    }

    private func take(_ byteCount: Int) -> UnsafeMutableRawPointer {
        let size = (byteCount + 63) & ~63
        let p: UnsafeMutableRawPointer
        if used + size <= capacity {
            p = slab + used
            used += size
        } else {
            p = .allocate(byteCount: size, alignment: 64)
            overflow.append((p, size))
            overflowBytes += size
        }
        highWater = max(highWater, used + overflowBytes)
        memset(p, 0, size)
        return p
    }
}

/// Scratch memory private to the calling thread and kept between calls: a parallel job's temporary arrays
/// (attention's scores for a block of queries, an expert's inputs and outputs) without an allocation per job
/// once the thread has seen the largest size. What `floats` returns is valid until the thread's next call for the
/// same `slot`: a caller's arrays (`.caller`) and a kernel's own (`.kernel`: GGML rows decoded for a product the
/// caller's arrays feed) never share memory.
public enum ThreadScratch {
    public enum Slot: Int { case caller = 0, kernel = 1 }

    /// `count` floats (not zeroed) owned by this thread.
    public static func floats(_ count: Int, slot: Slot = .caller) -> UnsafeMutablePointer<Float> {
        let key = keys[slot.rawValue]
        let box: Box
        if let raw = pthread_getspecific(key) {
            box = Unmanaged<Box>.fromOpaque(raw).takeUnretainedValue()
        } else {
            box = Box()
            pthread_setspecific(key, Unmanaged.passRetained(box).toOpaque())
        }
        if box.capacity < count {
            box.pointer.deallocate()
            box.capacity = max(count, 2 * box.capacity)
            box.pointer = .allocate(capacity: box.capacity)
        }
        return box.pointer
    }

    private final class Box {
        var pointer = UnsafeMutablePointer<Float>.allocate(capacity: 1024)
        var capacity = 1024
        deinit { pointer.deallocate() }
    }

    private static let keys: [pthread_key_t] = (0..<2).map { _ in
        var key = pthread_key_t()
        pthread_key_create(&key) { raw in if let raw { Unmanaged<Box>.fromOpaque(raw).release() } }
        return key
    }
}
