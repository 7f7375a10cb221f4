/// MLA's latent cache: per layer and position, only the normed latent `c` [kv_lora] and the roped shared key
/// `k_pe` [rope] (DeepSeek's "absorbed" form; keys and values are never materialised per head).
///
/// Kept in fp32 so decode through the cache computes exactly what a whole-prompt pass computes.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let latentDim: Int
    public let ropeDim: Int
    /// Hard limit (max_position_embeddings, or what the caller asked for).
    public let limit: Int
    public private(set) var count = 0
    private(set) var capacity: Int
    /// [layer][capacity · latentDim]
    private var latent: [UnsafeMutablePointer<Float>]
    /// [layer][capacity · ropeDim]
    private var ropeKeys: [UnsafeMutablePointer<Float>]

    public init(layers: Int, latentDim: Int, ropeDim: Int, limit: Int, initialCapacity: Int = 256) {
        self.layers = layers
        self.latentDim = latentDim
        self.ropeDim = ropeDim
        self.limit = limit
        capacity = max(1, min(initialCapacity, limit))
        latent = (0..<layers).map { _ in .allocate(capacity: max(1, min(initialCapacity, limit)) * latentDim) }
        ropeKeys = (0..<layers).map { _ in .allocate(capacity: max(1, min(initialCapacity, limit)) * ropeDim) }
    }

    deinit {
        latent.forEach { $0.deallocate() }
        ropeKeys.forEach { $0.deallocate() }
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
            let a = UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * latentDim)
            a.update(from: latent[l], count: count * latentDim)
            latent[l].deallocate()
            latent[l] = a
            let b = UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * ropeDim)
            b.update(from: ropeKeys[l], count: count * ropeDim)
            ropeKeys[l].deallocate()
            ropeKeys[l] = b
        }
        capacity = newCapacity
    }

    /// `c` of `position` in `layer` [latentDim].
    @inline(__always) func latent(_ layer: Int, _ position: Int) -> UnsafeMutablePointer<Float> {
        latent[layer] + position * latentDim
    }

    /// Roped `k_pe` of `position` in `layer` [ropeDim].
    @inline(__always) func ropeKey(_ layer: Int, _ position: Int) -> UnsafeMutablePointer<Float> {
        ropeKeys[layer] + position * ropeDim
    }

    /// Marks `n` positions, written by the forward pass, as part of the sequence.
    func commit(_ n: Int) { count += n }

    /// Forgets everything (a new conversation).
    public func reset() { count = 0 }

    /// Drops positions past `n` (to reuse a shared prefix).
    public func truncate(to n: Int) { count = min(count, max(0, n)) }
}
