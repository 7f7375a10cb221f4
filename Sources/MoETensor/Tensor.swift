/// A named, typed, shaped view of bytes that something else owns: usually a memory-mapped checkpoint.
///
/// Holding a `Tensor` keeps its owner (and so the mapping) alive. Shapes are in PyTorch order: a Linear
/// weight is `[out, in]`, row-major, so row `r` holds the weights of output `r`.
/// Sendable: every field is a `let`; the bytes are a read-only mapping or a buffer filled before the view was made,
/// and `owner` is only retained.
public struct Tensor: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// What keeps `data` valid: a mapped file or an owned buffer.
    public let owner: AnyObject

    public init(name: String, dtype: DType, shape: [Int], data: UnsafeRawPointer, byteCount: Int, owner: AnyObject) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
        self.byteCount = byteCount
        self.owner = owner
    }

    public var elementCount: Int { shape.reduce(1, *) }

    /// The same bytes under another name and shape of the same element count.
    public func reshaped(name: String, _ shape: [Int]) -> Tensor {
        precondition(shape.reduce(1, *) == elementCount, "reshape of \(self.shape) to \(shape)")
        return Tensor(name: name, dtype: dtype, shape: shape, data: data, byteCount: byteCount, owner: owner)
    }

    /// An fp32 tensor owning a copy of `values`.
    public static func f32(name: String, shape: [Int], values: [Float]) -> Tensor {
        let buffer = AlignedBuffer(byteCount: values.count * 4)
        values.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return Tensor(name: name, dtype: .f32, shape: shape, data: UnsafeRawPointer(buffer.pointer), byteCount: values.count * 4,
                      owner: buffer)
    }

    /// Element `i` (flat, row-major) widened to fp32. For scalars, small vectors and tests, not for kernels.
    public func float(at i: Int) -> Float {
        switch dtype {
        case .f32: return data.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
        case .f64: return Float(data.loadUnaligned(fromByteOffset: 8 * i, as: Double.self))
        case .bf16: return bf16ToFloat(data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        case .f16: return f16ToFloat(data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        case .f8e4m3: return e4m3ToFloat(data.load(fromByteOffset: i, as: UInt8.self))
        case .i64: return Float(data.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
        case .i32: return Float(data.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))
        case .i16: return Float(data.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))
        case .i8: return Float(data.load(fromByteOffset: i, as: Int8.self))
        case .u8, .bool: return Float(data.load(fromByteOffset: i, as: UInt8.self))
        }
    }

    /// The whole tensor widened to fp32. Only for small tensors (norm weights, biases): the model never copies
    /// a weight matrix this way.
    public func floats() -> [Float] {
        (0..<elementCount).map { float(at: $0) }
    }

    /// Element `i` as an integer, for index and shape tensors.
    public func int(at i: Int) -> Int64 {
        switch dtype {
        case .i64: return data.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)
        case .i32: return Int64(data.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))
        case .i16: return Int64(data.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))
        case .i8: return Int64(data.load(fromByteOffset: i, as: Int8.self))
        case .u8, .bool: return Int64(data.load(fromByteOffset: i, as: UInt8.self))
        default: return Int64(float(at: i))
        }
    }
}

/// Heap memory with a fixed alignment that a `Tensor` can name as its owner (for tensors built in memory).
/// Sendable: `pointer` and `count` never change; the bytes have no lock, so they are written only while one owner
/// holds the buffer and are shared read-only after.
public final class AlignedBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int

    public init(byteCount: Int, alignment: Int = 64) {
        count = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: alignment)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
    }

    deinit { pointer.deallocate() }
}
