/// Dot products of an fp32 activation vector with one stored weight row, widening inside the loop.
/// Two SIMD8 accumulators, then a fixed-order reduction: deterministic for a given length.

@inline(__always)
func dotF32(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
    var j = 0
    let wr = UnsafeRawPointer(w), xr = UnsafeRawPointer(x)
    while j + 16 <= n {
        a0 += wr.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self)
            * xr.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self)
        a1 += wr.loadUnaligned(fromByteOffset: 4 * (j + 8), as: SIMD8<Float>.self)
            * xr.loadUnaligned(fromByteOffset: 4 * (j + 8), as: SIMD8<Float>.self)
        j += 16
    }
    var s = (a0 + a1).sum()
    while j < n { s += w[j] * x[j]; j += 1 }
    return s
}

@inline(__always)
func widenBF16(_ v: SIMD8<UInt16>) -> SIMD8<Float> {
    unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: v) &<< 16, to: SIMD8<Float>.self)
}

@inline(__always)
func dotBF16(_ w: UnsafePointer<UInt16>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
    var j = 0
    let wr = UnsafeRawPointer(w), xr = UnsafeRawPointer(x)
    while j + 16 <= n {
        a0 += widenBF16(wr.loadUnaligned(fromByteOffset: 2 * j, as: SIMD8<UInt16>.self))
            * xr.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self)
        a1 += widenBF16(wr.loadUnaligned(fromByteOffset: 2 * (j + 8), as: SIMD8<UInt16>.self))
            * xr.loadUnaligned(fromByteOffset: 4 * (j + 8), as: SIMD8<Float>.self)
        j += 16
    }
    var s = (a0 + a1).sum()
    while j < n { s += bf16ToFloat(w[j]) * x[j]; j += 1 }
    return s
}

@inline(__always)
func dotF16(_ w: UnsafePointer<UInt16>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var s0: Float = 0, s1: Float = 0
    var j = 0
    while j + 2 <= n {
        s0 += f16ToFloat(w[j]) * x[j]
        s1 += f16ToFloat(w[j + 1]) * x[j + 1]
        j += 2
    }
    if j < n { s0 += f16ToFloat(w[j]) * x[j] }
    return s0 + s1
}

/// e4m3 weights through the 256-entry table.
@inline(__always)
func dotE4M3(_ w: UnsafePointer<UInt8>, _ x: UnsafePointer<Float>, _ n: Int, _ table: UnsafePointer<Float>) -> Float {
    var s0: Float = 0, s1: Float = 0
    var j = 0
    while j + 2 <= n {
        s0 += table[Int(w[j])] * x[j]
        s1 += table[Int(w[j + 1])] * x[j + 1]
        j += 2
    }
    if j < n { s0 += table[Int(w[j])] * x[j] }
    return s0 + s1
}

/// Σ over `groups` groups of 32: scale(g) · Σ_j (nibble_j − 8) · x_j, nibbles in Q4_0 order (see `int4g32`).
@inline(__always)
func dotInt4G32(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, groups: Int, scale: (Int) -> Float) -> Float {
    let xr = UnsafeRawPointer(x)
    let eight = SIMD16<Int32>(repeating: 8)
    var total: Float = 0
    for g in 0..<groups {
        let b = SIMD16<Int32>(truncatingIfNeeded: w.loadUnaligned(fromByteOffset: 16 * g, as: SIMD16<UInt8>.self))
        let lo = SIMD16<Float>((b & 0xF) &- eight)
        let hi = SIMD16<Float>((b &>> 4) &- eight)
        let x0 = xr.loadUnaligned(fromByteOffset: 128 * g, as: SIMD16<Float>.self)
        let x1 = xr.loadUnaligned(fromByteOffset: 128 * g + 64, as: SIMD16<Float>.self)
        total += (lo * x0 + hi * x1).sum() * scale(g)
    }
    return total
}

/// Σ over `groups` groups of 32: scale(g) · Σ_j q_j · x_j.
@inline(__always)
func dotInt8G32(_ w: UnsafePointer<Int8>, _ x: UnsafePointer<Float>, groups: Int, scale: (Int) -> Float) -> Float {
    let wr = UnsafeRawPointer(w), xr = UnsafeRawPointer(x)
    var total: Float = 0
    for g in 0..<groups {
        let q0 = SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: wr.loadUnaligned(fromByteOffset: 32 * g, as: SIMD16<Int8>.self)))
        let q1 = SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: wr.loadUnaligned(fromByteOffset: 32 * g + 16, as: SIMD16<Int8>.self)))
        let x0 = xr.loadUnaligned(fromByteOffset: 128 * g, as: SIMD16<Float>.self)
        let x1 = xr.loadUnaligned(fromByteOffset: 128 * g + 64, as: SIMD16<Float>.self)
        total += (q0 * x0 + q1 * x1).sum() * scale(g)
    }
    return total
}
