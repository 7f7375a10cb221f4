/// GGML block formats → fp32, bit-exact to gguf-py's `gguf.quants.dequantize` (and so to ggml-quants.c's
/// `dequantize_row_*`): every value is computed with the same fp32 operations in the same order — the block scale
/// times the sub-block scale rounded first, then times the quant, then minus the rounded minimum; no fused
/// multiply-adds (Swift does not contract `a * b - c`).
///
/// Block layouts (ggml-common.h; fp16 fields little-endian, `QK_K` = 256):
/// - Q4_0  { d: f16, qs[16] }            y = d · (q − 8),   q = low nibbles (values 0…15) then high (16…31)
/// - Q4_1  { d, m: f16, qs[16] }         y = d · q + m
/// - Q5_0  { d: f16, qh[4], qs[16] }     5th bit of value i is bit i of qh;  y = d · (q − 16)
/// - Q5_1  { d, m: f16, qh[4], qs[16] }  y = d · q + m
/// - Q8_0  { d: f16, qs[32]: i8 }        y = d · q
/// - Q2_K  { scales[16], qs[64], d, dmin }            16 groups of 16; scale nibble low = ×d, high = ×dmin
/// - Q3_K  { hmask[32], qs[64], scales[12], d }       16 groups of 16, 6-bit signed scales (−32)
/// - Q4_K  { d, dmin, scales[12], qs[128] }           8 groups of 32, 6-bit scale and minimum each
/// - Q5_K  { d, dmin, scales[12], qh[32], qs[128] }   as Q4_K with a 5th bit
/// - Q6_K  { ql[128], qh[64], scales[16]: i8, d }     16 groups of 16, q − 32
/// - the i-quants (IQ4_NL, IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) and ternary TQ1_0, TQ2_0:
///   GGMLGrids.swift, with the codebooks gguf-py uses
public enum GGMLDequantize {
    /// Decodes `count` values of `type` (a whole number of blocks) from `src` into `dst`.
    /// The caller has checked `type.canDequantize`, the block count and the bytes (`GGMLType.rowBytes`).
    public static func values(_ type: GGMLType, from src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(type.canDequantize && count % type.blockSize == 0, "GGML \(type): \(count) values is not whole blocks")
        let blocks = count / type.blockSize
        let size = type.typeSize
        for b in 0..<blocks {
            let block = src + b * size
            let out = dst + b * type.blockSize
            switch type {
            case .f32: out.pointee = block.loadUnaligned(as: Float.self)
            case .f16: out.pointee = f16ToFloat(block.loadUnaligned(as: UInt16.self))
            case .bf16: out.pointee = bf16ToFloat(block.loadUnaligned(as: UInt16.self))
            case .q4_0: q4_0(block, out)
            case .q4_1: q4_1(block, out)
            case .q5_0: q5_0(block, out)
            case .q5_1: q5_1(block, out)
            case .q8_0: q8_0(block, out)
            case .q2_K: q2_K(block, out)
            case .q3_K: q3_K(block, out)
            case .q4_K: q4_K(block, out)
            case .q5_K: q5_K(block, out)
            case .q6_K: q6_K(block, out)
            case .iq4_NL: iq4_NL(block, out)
            case .iq4_XS: iq4_XS(block, out)
            case .iq2_XXS: iq2_XXS(block, out)
            case .iq2_XS: iq2_XS(block, out)
            case .iq2_S: iq2_S(block, out)
            case .iq3_XXS: iq3_XXS(block, out)
            case .iq3_S: iq3_S(block, out)
            case .iq1_S: iq1_S(block, out)
            case .iq1_M: iq1_M(block, out)
            case .tq1_0: tq1_0(block, out)
            case .tq2_0: tq2_0(block, out)
            default: preconditionFailure("GGML \(type) has no decoder")
            }
        }
    }

    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        f16ToFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inline(__always) static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 {
        p.load(fromByteOffset: offset, as: UInt8.self)
    }

    /// Value i < 16 is the low nibble of qs[i], value i ≥ 16 the high nibble of qs[i − 16].
    @inline(__always) static func nibble(_ qs: UnsafeRawPointer, _ i: Int) -> Int {
        Int((byte(qs, i & 15) >> UInt8((i >> 4) * 4)) & 0x0F)
    }

    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for i in 0..<32 { y[i] = d * Float(nibble(p + 2, i) - 8) }
    }

    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        for i in 0..<32 { y[i] = d * Float(nibble(p + 4, i)) + m }
    }

    static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
        for i in 0..<32 {
            let q = nibble(p + 6, i) | Int((qh >> UInt32(i)) & 1) << 4
            y[i] = d * Float(q - 16)
        }
    }

    static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        for i in 0..<32 {
            let q = nibble(p + 8, i) | Int((qh >> UInt32(i)) & 1) << 4
            y[i] = d * Float(q) + m
        }
    }

    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for i in 0..<32 { y[i] = Float(Int8(bitPattern: byte(p, 2 + i))) * d }
    }

    /// Value v = 128·h + 32·j + l is bits 2j…2j+1 of qs[32·h + l]; group v / 16 = 8h + 2j + l / 16 scales it.
    static func q2_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 80), dmin = half(p, 82)
        let qs = p.assumingMemoryBound(to: UInt8.self) + 16
        for h in 0..<2 {
            for j in 0..<4 {
                for half in 0..<2 {
                    let sc = byte(p, 8 * h + 2 * j + half)
                    let dl = d * Float(sc & 0x0F), ml = dmin * Float(sc >> 4)
                    let q = qs + 32 * h + 16 * half, out = y + 128 * h + 32 * j + 16 * half
                    for i in 0..<16 { out[i] = dl * Float((q[i] >> UInt8(2 * j)) & 3) - ml }
                }
            }
        }
    }

    /// Scales: 16 six-bit values, low nibbles in bytes 0…7 (value i: byte i % 8, nibble i / 8), high pairs in
    /// bytes 8…11 (value i: byte 8 + i % 4, bits 2·(i / 4)); minus 32. Value v = 128·h + 32·s + l is bits 2s…2s+1 of
    /// qs[32·h + l], less 4 unless bit 4h + s of hmask[l] is set; group v / 16 = 8h + 2s + l / 16.
    static func q3_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 108)
        let scales = p + 96
        let hmask = p.assumingMemoryBound(to: UInt8.self), qs = hmask + 32
        for h in 0..<2 {
            for s in 0..<4 {
                for half in 0..<2 {
                    let g = 8 * h + 2 * s + half
                    let low = (byte(scales, g % 8) >> UInt8(4 * (g / 8))) & 0x0F
                    let high = (byte(scales, 8 + g % 4) >> UInt8(2 * (g / 4))) & 0x03
                    let dl = d * Float(Int(Int8(bitPattern: low | high << 4)) - 32)
                    let out = y + 128 * h + 32 * s + 16 * half
                    for i in 0..<16 {
                        let l = 16 * half + i
                        let qLow = Int((qs[32 * h + l] >> UInt8(2 * s)) & 3)
                        let bit = Int((hmask[l] >> UInt8(4 * h + s)) & 1)
                        out[i] = dl * Float(qLow - ((bit ^ 1) << 2))
                    }
                }
            }
        }
    }

    /// K-quants' 12 scale bytes: 8 six-bit scales and 8 six-bit minimums (ggml's `get_scale_min_k4`).
    @inline(__always) static func scaleMin(_ s: UnsafeRawPointer, _ j: Int) -> (scale: UInt8, min: UInt8) {
        if j < 4 { return (byte(s, j) & 63, byte(s, j + 4) & 63) }
        return ((byte(s, j + 4) & 0x0F) | ((byte(s, j - 4) >> 6) << 4),
                (byte(s, j + 4) >> 4) | ((byte(s, j) >> 6) << 4))
    }

    /// Group j = 2c + s of 32 values is nibble s of qs[32·c + l] (qs at byte `qsOffset`); Q5_K's 5th bit of group
    /// j's value l is bit j of qh[l] (qh at byte `qhOffset`).
    @inline(__always)
    static func kQuant(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, qsOffset: Int, qhOffset: Int?) {
        let d = half(p, 0), dmin = half(p, 2)
        for j in 0..<8 {
            let (sc, m) = scaleMin(p + 4, j)
            let dj = d * Float(sc), mj = dmin * Float(m)
            let (c, s) = (j >> 1, j & 1)
            for l in 0..<32 {
                var q = (byte(p, qsOffset + 32 * c + l) >> UInt8(4 * s)) & 0x0F
                if let qhOffset { q |= ((byte(p, qhOffset + l) >> UInt8(j)) & 1) << 4 }
                y[32 * j + l] = dj * Float(q) - mj
            }
        }
    }

    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { kQuant(p, y, qsOffset: 16, qhOffset: nil) }

    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { kQuant(p, y, qsOffset: 48, qhOffset: 16) }

    /// Value v = 128·h + 32·s + l: low nibble s / 2 of ql[64·h + 32·(s % 2) + l], high pair s of qh[32·h + l],
    /// minus 32; group v / 16 = 8h + 2s + l / 16 scales it.
    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 208)
        let ql = p.assumingMemoryBound(to: UInt8.self), qh = ql + 128
        for h in 0..<2 {
            for s in 0..<4 {
                for half in 0..<2 {
                    let dl = d * Float(Int8(bitPattern: byte(p, 192 + 8 * h + 2 * s + half)))
                    let out = y + 128 * h + 32 * s + 16 * half
                    for i in 0..<16 {
                        let l = 16 * half + i
                        let low = (ql[64 * h + 32 * (s % 2) + l] >> UInt8(4 * (s / 2))) & 0x0F
                        let high = (qh[32 * h + l] >> UInt8(2 * s)) & 0x03
                        out[i] = dl * Float(Int(low | high << 4) - 32)
                    }
                }
            }
        }
    }
}
