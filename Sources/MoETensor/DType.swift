/// Element types a checkpoint may store, named as safetensors names them.
public enum DType: String, Sendable, CaseIterable, Codable {
    case f64 = "F64"
    case f32 = "F32"
    case bf16 = "BF16"
    case f16 = "F16"
    /// OCP e4m3fn: bias 7, no infinities, 0x7F and 0xFF are NaN, largest finite 448.
    case f8e4m3 = "F8_E4M3"
    case i64 = "I64"
    case i32 = "I32"
    case i16 = "I16"
    case i8 = "I8"
    case u8 = "U8"
    case bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64: 8
        case .f32, .i32: 4
        case .bf16, .f16, .i16: 2
        case .f8e4m3, .i8, .u8, .bool: 1
        }
    }

    /// Whether the model's kernels can read this type as weights (the integer types carry packed or index data).
    public var isFloatingPoint: Bool {
        switch self {
        case .f64, .f32, .bf16, .f16, .f8e4m3: true
        default: false
        }
    }
}
