/// MLA's latent cache: per layer and position, only the normed latent `c` [kv_lora] and the roped shared key
/// `k_pe` [rope] (DeepSeek's "absorbed" form; keys and values are never materialised per head).
///
/// One row `c | k_pe` [kv_lora + rope] per position, so a layer's rows are an fp32 matrix [positions, kv_lora +
/// rope] that a block of queries multiplies in one kernel call. Kept in fp32 so decode through the cache computes
/// exactly what a whole-prompt pass computes.
/// Sendable: no lock; one sequence's cache is used by one forward pass at a time, whose kernel threads only read it.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let latentDim: Int
    public let ropeDim: Int
    /// Hard limit (max_position_embeddings, or what the caller asked for).
    public let limit: Int
    public private(set) var count = 0
    private(set) var capacity: Int
    /// Floats per position: latentDim + ropeDim.
    public var width: Int { latentDim + ropeDim }
    /// [layer][capacity · width]: row p = c_p | k_pe_p.
    private var storage: [UnsafeMutablePointer<Float>]

    public init(layers: Int, latentDim: Int, ropeDim: Int, limit: Int, initialCapacity: Int = 256) {
        self.layers = layers
        self.latentDim = latentDim
        self.ropeDim = ropeDim
        self.limit = limit
        capacity = max(1, min(initialCapacity, limit))
        storage = (0..<layers).map { _ in .allocate(capacity: max(1, min(initialCapacity, limit)) * (latentDim + ropeDim)) }
    }

    deinit {
        storage.forEach { $0.deallocate() }
    }

    /// Bytes one cached position takes over all layers.
    public var bytesPerToken: Int { layers * (latentDim + ropeDim) * MemoryLayout<Float>.size }

    /// Makes room for `n` more positions (doubling), before a forward pass writes them.
    func reserve(_ n: Int) {
        let needed = count + n
        guard needed > capacity else { return }
        var newCapacity = capacity
        while newCapacity < needed { newCapacity *= 2 }
        newCapacity = min(max(newCapacity, needed), limit)
        for l in 0..<layers {
            let a = UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * width)
            a.update(from: storage[l], count: count * width)
            storage[l].deallocate()
            storage[l] = a
        }
        capacity = newCapacity
    }

    /// `layer`'s rows [capacity, width], valid up to the positions written.
    @inline(__always) func rows(_ layer: Int) -> UnsafeMutablePointer<Float> { storage[layer] }

    /// `c` of `position` in `layer` [latentDim].
    @inline(__always) func latent(_ layer: Int, _ position: Int) -> UnsafeMutablePointer<Float> {
        storage[layer] + position * width
    }

    /// Roped `k_pe` of `position` in `layer` [ropeDim].
    @inline(__always) func ropeKey(_ layer: Int, _ position: Int) -> UnsafeMutablePointer<Float> {
        storage[layer] + position * width + latentDim
    }

    /// Marks `n` positions, written by the forward pass, as part of the sequence.
    func commit(_ n: Int) { count += n }

    /// Bytes the cache holds allocated (capacity, not only the positions written): what keeping it costs.
    public var allocatedBytes: Int { capacity * bytesPerToken }

    /// A new cache holding this one's first `n` positions (a shared prefix to continue differently), with room
    /// for `n` and this one's limit.
    public func copy(prefix n: Int) -> KVCache {
        precondition(n >= 0 && n <= count, "a prefix of the positions written")
        let c = KVCache(layers: layers, latentDim: latentDim, ropeDim: ropeDim, limit: limit, initialCapacity: max(1, n))
        for l in 0..<layers { c.storage[l].update(from: storage[l], count: n * width) }
        c.count = n
        return c
    }

    /// Gives back the room beyond the positions written (up to doubling's slack), before the cache is kept idle.
    public func shrinkToFit() {
        let target = max(1, count)
        guard capacity > target + target / 8 else { return }
        for l in 0..<layers {
            let a = UnsafeMutablePointer<Float>.allocate(capacity: target * width)
            a.update(from: storage[l], count: count * width)
            storage[l].deallocate()
            storage[l] = a
        }
        capacity = target
    }

    /// Forgets everything (a new conversation).
    public func reset() { count = 0 }

    /// Drops positions past `n` (to reuse a shared prefix).
    public func truncate(to n: Int) { count = min(count, max(0, n)) }
}
