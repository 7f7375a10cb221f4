import CMoEKernels

/// The instruction set the matrix kernels run with: the best the CPU has unless `--kernels` (or
/// `MOESTREAM_KERNELS`) says otherwise. `generic` is the Swift twin every C kernel is tested against; it is what
/// runs on CPUs without AVX2 and on arm64 (where LLVM compiles Swift's SIMD types to NEON).
public enum KernelISA: String, CaseIterable, Sendable, Codable {
    case generic
    case avx2
    case avx512

    /// Whether this CPU (and this build) can run it.
    public var isSupported: Bool {
        switch self {
        case .generic: true
        case .avx2: moe_kernels_compiled_x86() != 0 && moe_cpu_has_avx2() != 0
        case .avx512: moe_kernels_compiled_x86() != 0 && moe_cpu_has_avx512() != 0
        }
    }

    /// The fastest supported.
    /// The names of the kernel sets this CPU runs (tests pick their arguments from it).
    public static var supportedNames: [String] { allCases.filter(\.isSupported).map(\.rawValue) }

    public static let best: KernelISA = [.avx512, .avx2].first { $0.isSupported } ?? .generic
}

public enum Kernels {
    /// The kernels in use. Set once at start-up (before any model runs); tests switch it to compare twins.
    nonisolated(unsafe) public static var isa: KernelISA = {
        if let name = getenv("MOESTREAM_KERNELS").map({ String(cString: $0) }), let isa = KernelISA(rawValue: name),
           isa.isSupported {
            return isa
        }
        return .best
    }()

    /// Refuses an ISA this CPU cannot run (it would die of SIGILL, not with an error).
    public static func select(_ isa: KernelISA) throws(KernelError) {
        guard isa.isSupported else { throw KernelError.unsupported(isa) }
        Kernels.isa = isa
    }

    /// The C kernel for `encoding` under `isa`, or nil where the Swift twin runs (generic ISA, f32/f16/fp8).
    @inline(__always)
    static func gemm(_ encoding: WeightMatrix.Encoding, _ isa: KernelISA) -> moe_gemm_fn? {
        guard isa != .generic else { return nil }
        let avx2 = isa == .avx2
        switch encoding {
        case .int4g32: return avx2 ? moe_gemm_q4_avx2 : moe_gemm_q4_avx512
        case .int8g32: return avx2 ? moe_gemm_q8_avx2 : moe_gemm_q8_avx512
        case .bf16: return avx2 ? moe_gemm_bf16_avx2_blocked : moe_gemm_bf16_avx512_blocked
        case .int4g32x8: return avx2 ? moe_gemm_q4x8_avx2 : moe_gemm_q4x8_avx512
        case .int8g32x8: return avx2 ? moe_gemm_i8x8_avx2 : moe_gemm_i8x8_avx512
        case .f32: return avx2 ? moe_gemm_f32_avx2 : moe_gemm_f32_avx512
        case .f16: return avx2 ? moe_gemm_f16_avx2 : moe_gemm_f16_avx512
        case .fp8Block, .ggml: return nil
        }
    }
}

extension Kernels {
    /// The weighted-row-sum kernel (`WeightMatrix.accumulateRows`) for `encoding` under `isa`: f32 and bf16 on
    /// AVX2 and AVX-512; nil where the Swift chain runs.
    @inline(__always)
    static func rows(_ encoding: WeightMatrix.Encoding, _ isa: KernelISA) -> moe_rows_fn? {
        switch (isa, encoding) {
        case (.avx2, .f32): moe_rows_f32_avx2
        case (.avx2, .bf16): moe_rows_bf16_avx2
        case (.avx512, .f32): moe_rows_f32_avx512
        case (.avx512, .bf16): moe_rows_bf16_avx512
        case (.avx2, .f16): moe_rows_f16_avx2
        case (.avx512, .f16): moe_rows_f16_avx512
        default: nil
        }
    }
}

public enum KernelError: Error, CustomStringConvertible, Equatable {
    case unsupported(KernelISA)

    public var description: String {
        switch self {
        case .unsupported(let isa):
            "this CPU cannot run the \(isa.rawValue) kernels (supported: "
                + KernelISA.allCases.filter(\.isSupported).map(\.rawValue).joined(separator: ", ") + ")"
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
