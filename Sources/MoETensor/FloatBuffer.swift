/// An owned, zero-initialised fp32 array with a stable address: activations and scratch of the forward pass.
///
/// A class rather than `[Float]` so kernels get a plain pointer without nested `withUnsafe…` closures and
/// without exclusivity checks in the hot loops.
/// Sendable: `pointer` and `count` never change; the floats have no lock (parallel kernels write disjoint rows, and
/// `parallelFor` returns only when all of them are done).
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { pointer.deallocate() }

    /// Start of row `i` when the buffer holds rows of `width` values.
    @inline(__always) public func row(_ i: Int, width: Int) -> UnsafeMutablePointer<Float> { pointer + i * width }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    public func zero() { pointer.update(repeating: 0, count: count) }
}
