import CMoEKernels

/// Scalar conversions from the stored float formats to fp32. All kernels widen to fp32 before any arithmetic.

/// bfloat16 is the upper half of an IEEE fp32: widening is a shift, exact.
@inline(__always) public func bf16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// fp32 → bfloat16 with round-to-nearest-even, as torch's `.to(torch.bfloat16)` rounds. NaN stays NaN.
@inline(__always) public func floatToBF16(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
    let rounding = ((u >> 16) & 1) &+ 0x7FFF
    return UInt16(truncatingIfNeeded: (u &+ rounding) >> 16)
}

/// IEEE half → fp32, exact for every half value including subnormals, infinities and NaN.
@inline(__always) public func f16ToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = Int((h >> 10) & 0x1F)
    let mantissa = UInt32(h & 0x3FF)
    switch exponent {
    case 0:
        // Zero or subnormal: mantissa · 2^-24, exact in fp32.
        let magnitude = Float(mantissa) * 0x1p-24
        return sign != 0 ? -magnitude : magnitude
    case 31:
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    default:
        return Float(bitPattern: sign | UInt32(exponent - 15 + 127) << 23 | (mantissa << 13))
    }
}

/// e4m3fn → fp32: normal `2^(e-7)·(1+m/8)`, subnormal `2^-6·m/8`, 0x7F/0xFF NaN. Exact.
@inline(__always) public func e4m3ToFloat(_ b: UInt8) -> Float {
    E4M3Table.values[Int(b)]
}

/// All 256 e4m3fn values, computed once: the FP8 kernels look every weight up here.
public enum E4M3Table {
    public static let values: [Float] = (0..<256).map { decode(UInt8($0)) }

    static func decode(_ b: UInt8) -> Float {
        let negative = b & 0x80 != 0
        let exponent = Int((b >> 3) & 0xF)
        let mantissa = Float(b & 0x7)
        let magnitude: Float
        if exponent == 0xF && b & 0x7 == 0x7 {
            magnitude = .nan
        } else if exponent == 0 {
            magnitude = 0x1p-6 * mantissa / 8
        } else {
            magnitude = Float(sign: .plus, exponent: exponent - 7, significand: 1 + mantissa / 8)
        }
        return negative ? -magnitude : magnitude
    }
}

/// `count` stored halves (f16) or bfloat16s (`bf16`) widened to fp32, exactly: F16C where the CPU has it (the
/// avx2 kernels' requirement), the scalar conversions otherwise.
public func widen16(_ src: UnsafeRawPointer, bf16: Bool, into dst: UnsafeMutablePointer<Float>, count: Int) {
    let s = src.assumingMemoryBound(to: UInt16.self)
    if bf16 {
        for i in 0..<count { dst[i] = Float(bitPattern: UInt32(s[i]) << 16) }
    } else if KernelISA.avx2.isSupported {
        moe_widen_f16_avx2(s, dst, Int64(count))
    } else {
        for i in 0..<count { dst[i] = f16ToFloat(s[i]) }
    }
}
