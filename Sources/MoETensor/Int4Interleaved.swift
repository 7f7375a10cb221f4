/// The interleaved int4 layout routed experts are stored in (`WeightMatrix.Encoding.int4g32x8`): rows in blocks
/// of 8, and within a block and a group of 32 columns, four 32-byte units whose bytes `4i + j` hold row i's
/// columns `8u + j` (low nibble) and `8u + 4 + j` (high nibble). One 32-byte load then gives four consecutive
/// columns of eight rows, a row per int32 lane: what `vpdpbusd` and `maddubs` multiply, so the q8 tiles keep one
/// integer sum per row in a register and convert it to fp32 once per group (kernels_x8.c). `moestream convert`
/// writes it, so nothing is repacked when an expert is read.
public enum Int4Interleaved {
    /// Rows per block.
    public static let blockRows = 8

    /// Whether a `rows × cols` matrix can take the layout.
    public static func fits(rows: Int, cols: Int) -> Bool { rows > 0 && rows % blockRows == 0 && cols > 0 && cols % 32 == 0 }

    /// Byte offset of element (r, c), and whether it is the high nibble.
    @inline(__always)
    public static func position(_ r: Int, _ c: Int, cols: Int) -> (offset: Int, high: Bool) {
        let g = c / 32, within = c % 32, u = within / 8, j = within % 4
        return (((r / 8) * (cols / 32) + g) * 128 + 32 * u + 4 * (r % 8) + j, within % 8 >= 4)
    }

    /// Index of the scale of group g of row r.
    @inline(__always)
    public static func scaleIndex(_ r: Int, group g: Int, cols: Int) -> Int { ((r / 8) * (cols / 32) + g) * 8 + r % 8 }

    /// Rewrites an int4 matrix in row-major Q4_0 order (`data [rows, cols/2]`, `scales [rows, cols/32]` of
    /// `scaleBytes` each) into the interleaved layout at `outData` / `outScales` (the same sizes).
    public static func interleave(rows: Int, cols: Int, data: UnsafeRawPointer, scales: UnsafeRawPointer, scaleBytes: Int,
                                  into outData: UnsafeMutableRawPointer, scales outScales: UnsafeMutableRawPointer) {
        precondition(fits(rows: rows, cols: cols))
        let groups = cols / 32
        let src = data.assumingMemoryBound(to: UInt8.self), dst = outData.assumingMemoryBound(to: UInt8.self)
        for r in 0..<rows {
            for g in 0..<groups {
                let group = src + r * (cols / 2) + 16 * g  // byte k: element k low, k + 16 high
                for c in stride(from: 0, to: 32, by: 8) {
                    // Columns c..c+3 go to the low nibbles, c+4..c+7 to the high ones.
                    let (offset, _) = position(r, 32 * g + c, cols: cols)
                    for j in 0..<4 {
                        dst[offset + j] = nibble(group, c + j) | nibble(group, c + 4 + j) << 4
                    }
                }
                (outScales + scaleIndex(r, group: g, cols: cols) * scaleBytes)
                    .copyMemory(from: scales + (r * groups + g) * scaleBytes, byteCount: scaleBytes)
            }
        }
    }

    /// Nibble of element `k` (0..<32) of a Q4_0-order group.
    @inline(__always)
    static func nibble(_ group: UnsafePointer<UInt8>, _ k: Int) -> UInt8 { k < 16 ? group[k] & 0x0F : group[k - 16] >> 4 }
}

extension WeightMatrix {
    /// The generic twin of the interleaved fp32 kernels, bit for bit: four partial sums per row (one per column
    /// mod 4), `a_j = fma((nibble − 8)·scale, x, a_j)` over the columns in layout order, then (a0 + a1) + (a2 + a3).
    @inline(__always)
    func dotInterleaved(row r: Int, _ x: UnsafePointer<Float>, scales: UnsafeRawPointer, type: ScaleType) -> Float {
        let groups = cols / 32
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        var a: (Float, Float, Float, Float) = (0, 0, 0, 0)
        for g in 0..<groups {
            let s = Self.groupScale(scales, type, Int4Interleaved.scaleIndex(r, group: g, cols: cols))
            let unit0 = Int4Interleaved.position(r, 32 * g, cols: cols).offset
            for u in 0..<4 {
                let w = bytes + unit0 + 32 * u, xs = x + 32 * g + 8 * u
                @inline(__always) func step(_ acc: inout Float, _ j: Int) {
                    acc = acc.addingProduct(Float(Int(w[j] & 0x0F) - 8) * s, xs[j])
                    acc = acc.addingProduct(Float(Int(w[j] >> 4) - 8) * s, xs[j + 4])
                }
                step(&a.0, 0); step(&a.1, 1); step(&a.2, 2); step(&a.3, 3)
            }
        }
        return (a.0 + a.1) + (a.2 + a.3)
    }

    /// The generic twin of the interleaved q8 kernels, bit for bit: per group the exact integer
    /// Σ nibble·q − 8·Σq, then `f = fma(Float(sum), scale · d, f)`.
    @inline(__always)
    func dotInterleavedQ8(row r: Int, token t: Int, _ x: Q8Activations, scales: UnsafeRawPointer, type: ScaleType) -> Float {
        let groups = cols / 32
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        var f: Float = 0
        for g in 0..<groups {
            let unit0 = Int4Interleaved.position(r, 32 * g, cols: cols).offset
            let q = x.q + t * cols + 32 * g
            var sum = -8 * x.sums[t * groups + g]
            for u in 0..<4 {
                let w = bytes + unit0 + 32 * u
                for j in 0..<4 {
                    sum += Int32(w[j] & 0x0F) * Int32(q[8 * u + j]) + Int32(w[j] >> 4) * Int32(q[8 * u + 4 + j])
                }
            }
            let k = Self.groupScale(scales, type, Int4Interleaved.scaleIndex(r, group: g, cols: cols)) * x.d[t * groups + g]
            f = f.addingProduct(Float(sum), k)
        }
        return f
    }
}
