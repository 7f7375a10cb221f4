/// The tensor types a GGUF file can hold (ggml's `enum ggml_type`, the numbers are the file's), with their block
/// geometry: a row of `n` values is `n / blockSize` blocks of `typeSize` bytes.
///
/// Every type llama.cpp defines is named here so a file that uses one we cannot run is refused *by name*; only
/// `canDequantize` types can be read (`GGMLDequantize`).
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_XXS = 16, iq2_XS = 17, iq3_XXS = 18, iq1_S = 19, iq4_NL = 20, iq3_S = 21, iq2_S = 22, iq4_XS = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_M = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39, nvfp4 = 40, q1_0 = 41

    /// llama.cpp's spelling (`Q4_K`, `IQ2_XXS`, `BF16`), as its tools print it.
    public var description: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q5_0: "Q5_0"
        case .q5_1: "Q5_1"
        case .q8_0: "Q8_0"
        case .q8_1: "Q8_1"
        case .q2_K: "Q2_K"
        case .q3_K: "Q3_K"
        case .q4_K: "Q4_K"
        case .q5_K: "Q5_K"
        case .q6_K: "Q6_K"
        case .q8_K: "Q8_K"
        case .iq2_XXS: "IQ2_XXS"
        case .iq2_XS: "IQ2_XS"
        case .iq3_XXS: "IQ3_XXS"
        case .iq1_S: "IQ1_S"
        case .iq4_NL: "IQ4_NL"
        case .iq3_S: "IQ3_S"
        case .iq2_S: "IQ2_S"
        case .iq4_XS: "IQ4_XS"
        case .i8: "I8"
        case .i16: "I16"
        case .i32: "I32"
        case .i64: "I64"
        case .f64: "F64"
        case .iq1_M: "IQ1_M"
        case .bf16: "BF16"
        case .tq1_0: "TQ1_0"
        case .tq2_0: "TQ2_0"
        case .mxfp4: "MXFP4"
        case .nvfp4: "NVFP4"
        case .q1_0: "Q1_0"
        }
    }

    /// The type llama.cpp spells `name` (`Q4_K`).
    public init?(named name: String) {
        guard let t = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = t
    }

    /// Values per block (256 = `QK_K` for the K- and most i-quants).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_NL, .mxfp4: 32
        case .nvfp4: 64
        case .q1_0: 128
        default: 256
        }
    }

    /// Bytes per block (ggml-common.h's `block_*` sizes; gguf-py's `GGML_QUANT_SIZES`).
    public var typeSize: Int {
        let qk = 256
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .f64, .i64: return 8
        case .i8: return 1
        case .q4_0: return 2 + 16
        case .q4_1: return 2 + 2 + 16
        case .q5_0: return 2 + 4 + 16
        case .q5_1: return 2 + 2 + 4 + 16
        case .q8_0: return 2 + 32
        case .q8_1: return 4 + 4 + 32
        case .q2_K: return 2 + 2 + qk / 16 + qk / 4
        case .q3_K: return 2 + qk / 4 + qk / 8 + 12
        case .q4_K: return 2 + 2 + qk / 2 + 12
        case .q5_K: return 2 + 2 + qk / 2 + qk / 8 + 12
        case .q6_K: return 2 + qk / 2 + qk / 4 + qk / 16
        case .q8_K: return 4 + qk + qk / 8
        case .iq2_XXS: return 2 + qk / 4
        case .iq2_XS: return 2 + qk / 4 + qk / 32
        case .iq3_XXS: return 2 + qk / 4 + qk / 8
        case .iq1_S: return 2 + qk / 8 + qk / 16
        case .iq4_NL: return 2 + 16
        case .iq3_S: return 2 + qk / 4 + qk / 8 + qk / 32 + 4
        case .iq2_S: return 2 + qk / 4 + qk / 16
        case .iq4_XS: return 2 + 2 + qk / 2 + qk / 64
        case .iq1_M: return qk / 8 + qk / 16 + qk / 32
        case .tq1_0: return 2 + 4 * 13
        case .tq2_0: return 2 + 64
        case .mxfp4: return 1 + 16
        case .nvfp4: return 4 + 32
        case .q1_0: return 2 + 16
        }
    }

    /// Whether `GGMLDequantize` decodes this type (bit-exact to gguf-py's `gguf.quants.dequantize`).
    public var canDequantize: Bool {
        switch self {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K: true
        case .iq4_NL, .iq4_XS, .iq2_XXS, .iq2_XS, .iq2_S, .iq3_XXS, .iq3_S, .iq1_S, .iq1_M, .tq1_0, .tq2_0: true
        default: false
        }
    }

    /// Bits per weight, blocks' scales included (Q4_K: 4.5).
    public var bitsPerWeight: Double { Double(typeSize * 8) / Double(blockSize) }

    /// Bytes of a row of `elements` values, or nil when `elements` is not a whole number of blocks.
    public func rowBytes(elements: Int) -> Int? {
        guard elements >= 0, elements % blockSize == 0 else { return nil }
        let (bytes, overflow) = (elements / blockSize).multipliedReportingOverflow(by: typeSize)
        return overflow ? nil : bytes
    }
}
