/// The interleaved int8 layout of a store's resident matrices under `convert --resident int8`
/// (`WeightMatrix.Encoding.int8g32x8`): rows in blocks of 8, and within a block and a group of 32 columns, eight
/// 32-byte units whose bytes `4i + j` hold row i's column `4u + j` as w + 128. One 32-byte load then gives four
/// consecutive columns of eight rows, a row per int32 lane — what `vpdpbusd` multiplies (its first operand is
/// unsigned, hence the offset, which each group takes back as −128·Σq) — so the two-part int8 tiles keep one
/// integer sum per row in a register (kernels_i8x8.c), as the routed experts' int4 tiles do. Scales are indexed
/// as in `Int4Interleaved`. `moestream convert` writes it, so nothing is repacked at load.
public enum Int8Interleaved {
    /// Rows per block.
    public static let blockRows = 8

    /// Whether a `rows × cols` matrix can take the layout.
    public static func fits(rows: Int, cols: Int) -> Bool { rows > 0 && rows % blockRows == 0 && cols > 0 && cols % 32 == 0 }

    /// Byte offset of element (r, c).
    @inline(__always)
    public static func offset(_ r: Int, _ c: Int, cols: Int) -> Int {
        let g = c / 32, within = c % 32
        return ((r / 8) * (cols / 32) + g) * 256 + 32 * (within / 4) + 4 * (r % 8) + within % 4
    }

    /// Index of the scale of group g of row r (`Int4Interleaved.scaleIndex`).
    @inline(__always)
    public static func scaleIndex(_ r: Int, group g: Int, cols: Int) -> Int { Int4Interleaved.scaleIndex(r, group: g, cols: cols) }

    /// Writes one block of 8 rows: `values [8, cols]` (row-major int8) and `scales [8, cols/32]` (`scaleBytes`
    /// each, row-major) into the block's `8 · cols` bytes at `outData` and its scales at `outScales`, in the
    /// layout's order (the block's bytes and scales are contiguous, so a converter emits blocks one after another).
    public static func interleaveBlock(cols: Int, values: UnsafePointer<Int8>, scales: UnsafeRawPointer, scaleBytes: Int,
                                       into outData: UnsafeMutablePointer<UInt8>, scales outScales: UnsafeMutableRawPointer) {
        precondition(cols % 32 == 0)
        let groups = cols / 32
        for i in 0..<8 {
            for c in 0..<cols {
                outData[offset(i, c, cols: cols)] = UInt8(bitPattern: values[i * cols + c]) &+ 128
            }
            for g in 0..<groups {
                (outScales + scaleIndex(i, group: g, cols: cols) * scaleBytes)
                    .copyMemory(from: scales + (i * groups + g) * scaleBytes, byteCount: scaleBytes)
            }
        }
    }

    /// A whole row-major int8 matrix (`data [rows, cols]`, `scales [rows, cols/32]`) in the layout.
    public static func interleave(rows: Int, cols: Int, data: UnsafeRawPointer, scales: UnsafeRawPointer, scaleBytes: Int,
                                  into outData: UnsafeMutableRawPointer, scales outScales: UnsafeMutableRawPointer) {
        precondition(fits(rows: rows, cols: cols))
        let groups = cols / 32
        for b in 0..<(rows / 8) {
            interleaveBlock(cols: cols, values: data.assumingMemoryBound(to: Int8.self) + 8 * b * cols,
                            scales: scales + 8 * b * groups * scaleBytes, scaleBytes: scaleBytes,
                            into: outData.assumingMemoryBound(to: UInt8.self) + 8 * b * cols,
                            scales: outScales + 8 * b * groups * scaleBytes)
        }
    }
}

extension WeightMatrix {
    /// The generic twin of the interleaved int8 fp32 kernels, bit for bit: four partial sums per row (one per
    /// column mod 4), `a_j = fma(Float(byte − 128)·scale, x, a_j)` over the columns in layout order (group, unit),
    /// then (a0 + a1) + (a2 + a3).
    @inline(__always)
    func dotInterleavedInt8(row r: Int, _ x: UnsafePointer<Float>, scales: UnsafeRawPointer, type: ScaleType) -> Float {
        let groups = cols / 32
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        var a: (Float, Float, Float, Float) = (0, 0, 0, 0)
        for g in 0..<groups {
            let s = Self.groupScale(scales, type, Int8Interleaved.scaleIndex(r, group: g, cols: cols))
            let unit0 = Int8Interleaved.offset(r, 32 * g, cols: cols)
            for u in 0..<8 {
                let w = bytes + unit0 + 32 * u, xs = x + 32 * g + 4 * u
                @inline(__always) func step(_ acc: inout Float, _ j: Int) {
                    acc = acc.addingProduct(Float(Int(w[j]) - 128) * s, xs[j])
                }
                step(&a.0, 0); step(&a.1, 1); step(&a.2, 2); step(&a.3, 3)
            }
        }
        return (a.0 + a.1) + (a.2 + a.3)
    }

    /// The generic twin of the interleaved int8 two-part kernels, bit for bit: per group the exact integer
    /// ((Σ byte·q1 − 128·Σq1) << 8) + Σ byte·q2 − 128·Σq2, then `f = fma(Float(it), scale · (d/256), f)`.
    @inline(__always)
    func dotInterleavedInt8Q16(row r: Int, token t: Int, _ x: Q16Activations, scales: UnsafeRawPointer, type: ScaleType) -> Float {
        let groups = cols / 32
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        var f: Float = 0
        for g in 0..<groups {
            let unit0 = Int8Interleaved.offset(r, 32 * g, cols: cols)
            let q1 = x.first.q + t * cols + 32 * g, q2 = x.q2 + t * cols + 32 * g
            var s1 = -128 * x.first.sums[t * groups + g], s2 = -128 * x.sums2[t * groups + g]
            for u in 0..<8 {
                let w = bytes + unit0 + 32 * u
                for j in 0..<4 {
                    s1 += Int32(w[j]) * Int32(q1[4 * u + j])
                    s2 += Int32(w[j]) * Int32(q2[4 * u + j])
                }
            }
            let k = Self.groupScale(scales, type, Int8Interleaved.scaleIndex(r, group: g, cols: cols)) * (x.first.d[t * groups + g] * 0x1p-8)
            f = f.addingProduct(Float((s1 << 8) + s2), k)
        }
        return f
    }
}
