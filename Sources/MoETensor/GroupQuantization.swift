/// Packing and quantizing rows into the group-32 encodings the kernels read (`WeightMatrix.Encoding.int4g32`,
/// `.int8g32`). The layouts are defined here and only here.
public enum GroupQuantization {
    public static let groupSize = 32

    /// Repacks one row of compressed-tensors pack-quantized int4 (`weight_packed` I32 words: element 8k+i in
    /// bits 4i..4i+3 of word k, stored as q + 8) into Q4_0 order (byte j of each 32-group: element j low,
    /// element j + 16 high). The nibbles are moved, never changed: the values are bit-for-bit the source's.
    public static func repackCompressedTensorsInt4(words: UnsafePointer<UInt32>, cols: Int, into out: UnsafeMutablePointer<UInt8>) {
        @inline(__always) func nibble(_ c: Int) -> UInt8 { UInt8(truncatingIfNeeded: (words[c >> 3] >> UInt32(4 * (c & 7))) & 0xF) }
        for g in 0..<(cols / groupSize) {
            let base = g * groupSize
            for j in 0..<16 { out[g * 16 + j] = nibble(base + j) | (nibble(base + j + 16) << 4) }
        }
    }

    /// Quantizes one row to symmetric int4 with one scale per 32: scale = amax / 7 rounded to `scaleType`,
    /// q = clamp(round(w / scale), −8, 7), stored as the nibble q + 8 in Q4_0 order. Total over every Float: a
    /// non-finite value (which a converter refuses first: `firstNonFinite`) or a scale too small to invert cannot
    /// trap here (`level`).
    public static func quantizeInt4(row w: UnsafePointer<Float>, cols: Int, scaleType: WeightMatrix.ScaleType,
                                    packed out: UnsafeMutablePointer<UInt8>, scales: UnsafeMutableRawPointer) {
        for g in 0..<(cols / groupSize) {
            let scale = storeScale(amax: groupAmax(w + g * groupSize) / 7, scaleType, scales, g)
            let inv: Float = scale == 0 ? 0 : 1 / scale
            @inline(__always) func q(_ j: Int) -> UInt8 { UInt8(level(w[g * groupSize + j] * inv, 8) + 8) }
            for j in 0..<16 { out[g * 16 + j] = q(j) | (q(j + 16) << 4) }
        }
    }

    /// Quantizes one row to symmetric int8 with one scale per 32: scale = amax / 127, q = round(w / scale) (total
    /// over every Float, as `quantizeInt4`).
    public static func quantizeInt8(row w: UnsafePointer<Float>, cols: Int, scaleType: WeightMatrix.ScaleType,
                                    values out: UnsafeMutablePointer<Int8>, scales: UnsafeMutableRawPointer) {
        for g in 0..<(cols / groupSize) {
            let scale = storeScale(amax: groupAmax(w + g * groupSize) / 127, scaleType, scales, g)
            let inv: Float = scale == 0 ? 0 : 1 / scale
            for j in 0..<groupSize { out[g * groupSize + j] = Int8(level(w[g * groupSize + j] * inv, 127)) }
        }
    }

    /// round(v) clamped to [−low, low − 1] for int4 (`low` 8) or [−127, 127] for int8 (`low` 127); NaN (0 · ∞, where
    /// a scale too small to invert meets a zero) is 0. The same value as before for every finite v.
    @inline(__always) static func level(_ v: Float, _ low: Float) -> Float {
        v.isNaN ? 0 : min(max(v.rounded(.toNearestOrEven), -low), low == 8 ? 7 : low)
    }

    /// The index of the first NaN or infinity of `w[0 ..< count]`, if any: what no group scale can represent.
    public static func firstNonFinite(_ w: UnsafePointer<Float>, count: Int) -> Int? {
        for i in 0..<count where !w[i].isFinite { return i }
        return nil
    }

    @inline(__always) static func groupAmax(_ w: UnsafePointer<Float>) -> Float {
        var m: Float = 0
        for j in 0..<groupSize { m = max(m, abs(w[j])) }
        return m
    }

    /// Stores `amax`-derived scale `g` in `type` and returns the value as stored (what dequantization will use).
    @inline(__always) static func storeScale(amax scale: Float, _ type: WeightMatrix.ScaleType,
                                             _ scales: UnsafeMutableRawPointer, _ g: Int) -> Float {
        switch type {
        case .bf16:
            let bits = floatToBF16(scale)
            scales.storeBytes(of: bits, toByteOffset: 2 * g, as: UInt16.self)
            return bf16ToFloat(bits)
        case .f32:
            scales.storeBytes(of: scale, toByteOffset: 4 * g, as: Float.self)
            return scale
        }
    }
}
