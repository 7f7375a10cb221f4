import MoETensor

/// What the KV cache stores its rows in. fp32 is what transformers computes with; f16 and bf16 halve the bytes per
/// position (each value rounded to nearest even once, when its row is written, and read back exactly by the
/// matrix kernels). f16 keeps 11 significant bits where bf16 keeps 8: the cached values (a normed latent and a
/// roped key) are far inside f16's range, so f16 is the more precise of the two (docs/performance.md).
public enum KVPrecision: String, Sendable, CaseIterable {
    case f32
    case f16
    case bf16

    /// Bytes of one stored value.
    public var bytes: Int { self == .f32 ? 4 : 2 }

    /// How the matrix kernels read rows stored this way.
    var encoding: WeightMatrix.Encoding {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        }
    }
}

/// MLA's latent cache: per layer and position, only the normed latent `c` [kv_lora] and the roped shared key
/// `k_pe` [rope] (DeepSeek's "absorbed" form; keys and values are never materialised per head).
///
/// One row `c | k_pe` [kv_lora + rope] per position, so a layer's rows are a matrix [positions, kv_lora + rope]
/// (fp32, f16 or bf16: `precision`) that a block of queries multiplies in one kernel call. A row is rounded once, when
/// it is written, and a whole-prompt pass writes a chunk's rows before it reads them, so decode through the cache
/// computes exactly what a whole-prompt pass computes in either precision.
/// Sendable: no lock; one sequence's cache is used by one forward pass at a time, whose kernel threads only read it.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let latentDim: Int
    public let ropeDim: Int
    public let precision: KVPrecision
    /// Hard limit (max_position_embeddings, or what the caller asked for).
    public let limit: Int
    public private(set) var count = 0
    private(set) var capacity: Int
    /// Values per position: latentDim + ropeDim.
    public var width: Int { latentDim + ropeDim }
    /// Bytes of one layer's row.
    private var rowBytes: Int { width * precision.bytes }
    /// [layer][capacity · width] values of `precision`: row p = c_p | k_pe_p.
    private var storage: [UnsafeMutableRawPointer]

    public init(layers: Int, latentDim: Int, ropeDim: Int, limit: Int, precision: KVPrecision = .f32, initialCapacity: Int = 256) {
        self.layers = layers
        self.latentDim = latentDim
        self.ropeDim = ropeDim
        self.precision = precision
        self.limit = limit
        let capacity = max(1, min(initialCapacity, limit))
        self.capacity = capacity
        let rowBytes = (latentDim + ropeDim) * precision.bytes
        storage = (0..<layers).map { _ in .allocate(byteCount: capacity * rowBytes, alignment: 64) }
    }

    deinit {
        storage.forEach { $0.deallocate() }
    }

    /// Bytes one cached position takes over all layers.
    public var bytesPerToken: Int { layers * rowBytes }

    /// Bytes one position takes at Kimi K2's (or any model's) sizes in `precision`.
    public static func bytesPerToken(layers: Int, latentDim: Int, ropeDim: Int, precision: KVPrecision) -> Int {
        layers * (latentDim + ropeDim) * precision.bytes
    }

    /// Bytes the cache holds allocated (capacity, not only the positions written): what keeping it costs.
    public var allocatedBytes: Int { capacity * bytesPerToken }

    /// Moves every layer to room for `newCapacity` positions, keeping the rows written.
    private func reallocate(_ newCapacity: Int) {
        for l in 0..<layers {
            let a = UnsafeMutableRawPointer.allocate(byteCount: newCapacity * rowBytes, alignment: 64)
            a.copyMemory(from: storage[l], byteCount: count * rowBytes)
            storage[l].deallocate()
            storage[l] = a
        }
        capacity = newCapacity
    }

    /// Makes room for `n` more positions (doubling), before a forward pass writes them.
    func reserve(_ n: Int) {
        let needed = count + n
        guard needed > capacity else { return }
        var newCapacity = capacity
        while newCapacity < needed { newCapacity *= 2 }
        reallocate(min(max(newCapacity, needed), limit))
    }

    /// `layer`'s rows [positions, width] up to `length` as a matrix for the kernels (valid up to the rows written).
    @inline(__always) func matrix(_ layer: Int, length: Int) -> WeightMatrix {
        WeightMatrix(rows: length, cols: width, data: UnsafeRawPointer(storage[layer]),
                     encoding: precision.encoding, owners: [])
    }

    /// `layer`'s first `length` rows as fp32 into `out [length, width]`, split across the kernel pool: a prompt's
    /// attention widens a half-precision cache once per layer and multiplies with the f32 kernels, whose operations
    /// per (row, token) are the f16/bf16 kernels' on the same (exactly widened) values: the same bits as decode,
    /// which reads the stored rows directly.
    func widen(_ layer: Int, length: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(precision != .f32 && length <= capacity)
        let w = width, base = UnsafeRawPointer(storage[layer]), bf16 = precision == .bf16
        let rowsPerJob = max(1, 16_384 / w)
        parallelFor((length + rowsPerJob - 1) / rowsPerJob) { job in
            let r0 = job * rowsPerJob, n = min(rowsPerJob, length - r0)
            widen16(base + r0 * w * 2, bf16: bf16, into: out + r0 * w, count: n * w)
        }
    }

    /// Writes `row` [width] (c | roped k_pe, fp32) as `position`'s row of `layer`, rounded to `precision`.
    @inline(__always) func store(_ layer: Int, _ position: Int, row: UnsafePointer<Float>) {
        let w = width
        switch precision {
        case .f32:
            (storage[layer] + position * rowBytes).assumingMemoryBound(to: Float.self).update(from: row, count: w)
        case .f16:
            let out = (storage[layer] + position * rowBytes).assumingMemoryBound(to: UInt16.self)
            for i in 0..<w { out[i] = Float16(row[i]).bitPattern }
        case .bf16:
            let out = (storage[layer] + position * rowBytes).assumingMemoryBound(to: UInt16.self)
            for i in 0..<w { out[i] = floatToBF16(row[i]) }
        }
    }

    /// Value `i` of `position`'s row in `layer`, widened to fp32 (tests).
    public func value(_ layer: Int, _ position: Int, _ i: Int) -> Float {
        precondition(layer >= 0 && layer < layers && position >= 0 && position < count && i >= 0 && i < width)
        let p = storage[layer] + position * rowBytes
        switch precision {
        case .f32: return p.load(fromByteOffset: 4 * i, as: Float.self)
        case .f16: return f16ToFloat(p.load(fromByteOffset: 2 * i, as: UInt16.self))
        case .bf16: return bf16ToFloat(p.load(fromByteOffset: 2 * i, as: UInt16.self))
        }
    }

    /// Marks `n` positions, written by the forward pass, as part of the sequence.
    func commit(_ n: Int) { count += n }

    /// A new cache holding this one's first `n` positions (a shared prefix to continue differently), with room
    /// for `n` and this one's limit.
    public func copy(prefix n: Int) -> KVCache {
        precondition(n >= 0 && n <= count, "a prefix of the positions written")
        let c = KVCache(layers: layers, latentDim: latentDim, ropeDim: ropeDim, limit: limit, precision: precision,
                        initialCapacity: max(1, n))
        for l in 0..<layers { c.storage[l].copyMemory(from: storage[l], byteCount: n * rowBytes) }
        c.count = n
        return c
    }

    /// Gives back the room beyond the positions written (up to doubling's slack), before the cache is kept idle.
    public func shrinkToFit() {
        let target = max(1, count)
        guard capacity > target + target / 8 else { return }
        reallocate(target)
    }

    /// Forgets everything (a new conversation).
    public func reset() { count = 0 }

    /// Drops positions past `n` (to reuse a shared prefix).
    public func truncate(to n: Int) { count = min(count, max(0, n)) }
}
