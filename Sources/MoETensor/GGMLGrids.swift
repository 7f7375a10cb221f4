/// The i-quants' codebooks as fp32 tables, decoded once from gguf-py's packed form (`GGMLGridsData.swift`, made by
/// Tools/make_ggml_grids.py) exactly as gguf-py's `init_grid` decodes them.
public enum GGMLGrids {
    /// Row-major [rows, columns] values of a codebook, in memory that lives as long as the process (the decoders
    /// index it in their innermost loops).
    struct Grid: @unchecked Sendable {  // written once at init, read-only after
        let values: UnsafeMutablePointer<Float>
        let columns: Int
    }

    /// `ksigns` as a pointer for the same reason (written once here, read-only after).
    nonisolated(unsafe) static let signs: UnsafeMutablePointer<UInt8> = {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: ksigns.count)
        p.initialize(from: ksigns, count: ksigns.count)
        return p
    }()

    /// gguf-py's `init_grid`: hex digits → bytes; each byte holds `8 / bits` elements (bits = ⌈log2(map count)⌉),
    /// element k in bits k·(8 / elements)…; each element indexes `map`.
    static func decode(_ hex: String, map: [Float], shape: (rows: Int, columns: Int)) -> Grid {
        let digits = hex.utf8.compactMap { c -> UInt8? in
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var bits = 0
        while (1 << bits) < map.count { bits += 1 }
        let perByte = 8 / bits, step = 8 / perByte, mask = UInt8((1 << bits) - 1)
        var values: [Float] = []
        values.reserveCapacity(shape.rows * shape.columns)
        for i in stride(from: 0, to: digits.count - 1, by: 2) {
            let byte = digits[i] << 4 | digits[i + 1]
            for k in 0..<perByte { values.append(map[Int((byte >> UInt8(k * step)) & mask)]) }
        }
        precondition(values.count == shape.rows * shape.columns, "codebook size")
        let p = UnsafeMutablePointer<Float>.allocate(capacity: values.count)
        p.initialize(from: values, count: values.count)
        return Grid(values: p, columns: shape.columns)
    }

    static let iq2xxs = decode(iq2_xxsHex, map: iq2_xxsMap, shape: iq2_xxsShape)
    static let iq2xs = decode(iq2_xsHex, map: iq2_xsMap, shape: iq2_xsShape)
    static let iq2s = decode(iq2_sHex, map: iq2_sMap, shape: iq2_sShape)
    static let iq3xxs = decode(iq3_xxsHex, map: iq3_xxsMap, shape: iq3_xxsShape)
    static let iq3s = decode(iq3_sHex, map: iq3_sMap, shape: iq3_sShape)
    static let iq1s = decode(iq1_sHex, map: iq1_sMap, shape: iq1_sShape)
}

/// The i-quant and ternary decoders, bit-exact to gguf-py (the same fp32 operations in the same order as its numpy
/// code: the block scale times the sub-block factor, then times the codebook value, then the sign).
extension GGMLDequantize {
    /// Sign of value j of a group of 8 whose pattern index is `index` (`ksigns`): −1 where the bit is set.
    @inline(__always) static func sign(_ signs: UnsafeMutablePointer<UInt8>, _ index: Int, _ j: Int) -> Float {
        (signs[index] >> UInt8(j)) & 1 == 0 ? 1 : -1
    }

    /// IQ4_NL { d, qs[16] }: Q4_0's nibble order, each nibble a value of the non-linear table.
    static func iq4_NL(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for i in 0..<32 { y[i] = d * Float(GGMLGrids.iq4nlValues[nibble(p + 2, i)]) }
    }

    /// IQ4_XS { d, scales_h: u16, scales_l[4], qs[128] }: 8 groups of 32, 6-bit scales (−32); group ib's values are
    /// the low nibbles of qs[16·ib…] then the high ones, through the IQ4_NL table.
    static func iq4_XS(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let high = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        for ib in 0..<8 {
            let low = (byte(p, 4 + ib / 2) >> UInt8(4 * (ib % 2))) & 0x0F
            let h = UInt8((high >> UInt16(2 * ib)) & 3)
            let dl = d * Float(Int(low | h << 4) - 32)
            for i in 0..<32 {
                let q = (byte(p, 8 + 16 * ib + (i & 15)) >> UInt8(4 * (i >> 4))) & 0x0F
                y[32 * ib + i] = dl * Float(GGMLGrids.iq4nlValues[Int(q)])
            }
        }
    }

    /// IQ2_XXS { d, qs: 8 × (u32 grid bytes, u32 signs·scale) }: 8 groups of 32 = 4 codebook rows of 8; the second
    /// word holds four 7-bit sign patterns and a 4-bit scale (top); db = d · (0.5 + s) · 0.25.
    static func iq2_XXS(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let ks = GGMLGrids.signs
        let grid = GGMLGrids.iq2xxs
        for ib in 0..<8 {
            let aux = p.loadUnaligned(fromByteOffset: 2 + 8 * ib + 4, as: UInt32.self)
            let db = d * (0.5 + Float(aux >> 28)) * 0.25
            for l in 0..<4 {
                let row = Int(byte(p, 2 + 8 * ib + l)), signs = Int((aux >> UInt32(7 * l)) & 127)
                for j in 0..<8 { y[32 * ib + 8 * l + j] = db * grid.values[row * 8 + j] * sign(ks, signs, j) }
            }
        }
    }

    /// IQ2_XS { d, qs: 32 × u16 (9-bit row, 7-bit signs), scales[8] }: 16 groups of 16 values, a nibble each.
    static func iq2_XS(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let ks = GGMLGrids.signs
        let grid = GGMLGrids.iq2xs
        for g in 0..<16 {
            let s = (byte(p, 66 + g / 2) >> UInt8(4 * (g % 2))) & 0x0F
            let db = d * (0.5 + Float(s)) * 0.25
            for k in 0..<2 {
                let q = p.loadUnaligned(fromByteOffset: 2 + 2 * (2 * g + k), as: UInt16.self)
                let row = Int(q & 511), signs = Int(q >> 9)
                for j in 0..<8 { y[16 * g + 8 * k + j] = db * grid.values[row * 8 + j] * sign(ks, signs, j) }
            }
        }
    }

    /// IQ2_S { d, qs[32], signs[32], qh[8], scales[8] }: 32 rows of 8 (10-bit index: qs and two bits of qh), one
    /// sign byte per row; 16 groups of 16 values, a nibble scale each.
    static func iq2_S(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let grid = GGMLGrids.iq2s
        for g in 0..<16 {
            let s = (byte(p, 74 + g / 2) >> UInt8(4 * (g % 2))) & 0x0F
            let db = d * (0.5 + Float(s)) * 0.25
            for k in 0..<2 {
                let i = 2 * g + k
                let row = Int(byte(p, 2 + i)) | Int((byte(p, 66 + i / 4) >> UInt8(2 * (i % 4))) & 3) << 8
                let signs = byte(p, 34 + i)
                for j in 0..<8 {
                    let sg: Float = (signs >> UInt8(j)) & 1 == 0 ? 1 : -1
                    y[8 * i + j] = db * grid.values[row * 8 + j] * sg
                }
            }
        }
    }

    /// IQ3_XXS { d, qs[64], 8 × u32 (signs·scale) }: 64 codebook rows of 4; group ib's word holds four 7-bit sign
    /// patterns (each for 8 values) and a 4-bit scale; db = d · (0.5 + s) · 0.5.
    static func iq3_XXS(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let ks = GGMLGrids.signs
        let grid = GGMLGrids.iq3xxs
        for ib in 0..<8 {
            let aux = p.loadUnaligned(fromByteOffset: 66 + 4 * ib, as: UInt32.self)
            let db = d * (0.5 + Float(aux >> 28)) * 0.5
            for l in 0..<4 {
                let signs = Int((aux >> UInt32(7 * l)) & 127)
                for j in 0..<8 {
                    let v = 32 * ib + 8 * l + j
                    let row = Int(byte(p, 2 + v / 4))
                    y[v] = db * grid.values[row * 4 + (v % 4)] * sign(ks, signs, j)
                }
            }
        }
    }

    /// IQ3_S { d, qs[64], qh[8], signs[32], scales[4] }: 64 rows of 4 (9-bit index: qs and a bit of qh), a sign bit
    /// per value; 8 groups of 32, db = d · (1 + 2·s).
    static func iq3_S(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let grid = GGMLGrids.iq3s
        for g in 0..<8 {
            let s = (byte(p, 106 + g / 2) >> UInt8(4 * (g % 2))) & 0x0F
            let db = d * Float(1 + 2 * Int(s))
            for v in (32 * g)..<(32 * g + 32) {
                let i = v / 4
                let row = Int(byte(p, 2 + i)) | Int((byte(p, 66 + i / 8) >> UInt8(i % 8)) & 1) << 8
                let sg: Float = (byte(p, 74 + v / 8) >> UInt8(v % 8)) & 1 == 0 ? 1 : -1
                y[v] = db * grid.values[row * 4 + (v % 4)] * sg
            }
        }
    }

    /// IQ1_S { d, qs[32], qh: 8 × u16 }: 32 rows of 8 values in {−1, 0, 1} (11-bit index: qs and 3 bits of qh);
    /// group ib's qh word also holds a 3-bit scale and the sign of δ = 0.125: y = d·(2s + 1) · (grid ± δ).
    static func iq1_S(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let grid = GGMLGrids.iq1s
        for ib in 0..<8 {
            let qh = p.loadUnaligned(fromByteOffset: 34 + 2 * ib, as: UInt16.self)
            let dl = d * Float(2 * Int((qh >> 12) & 7) + 1)
            let delta: Float = qh & 0x8000 == 0 ? 0.125 : -0.125
            for l in 0..<4 {
                let row = Int(byte(p, 2 + 4 * ib + l)) | Int((qh >> UInt16(3 * l)) & 7) << 8
                for j in 0..<8 { y[32 * ib + 8 * l + j] = dl * (grid.values[row * 8 + j] + delta) }
            }
        }
    }

    /// IQ1_M { qs[32], qh[16], scales: 4 × u16 }: the fp16 d is the four words' top nibbles; 16 three-bit scales
    /// (groups of 16 values); each qh byte gives two rows 3 index bits and a δ sign each.
    static func iq1_M(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let grid = GGMLGrids.iq1s
        var words = [UInt16](repeating: 0, count: 4)
        for w in 0..<4 { words[w] = p.loadUnaligned(fromByteOffset: 48 + 2 * w, as: UInt16.self) }
        let dBits = (words[0] & 0xF000) >> 12 | (words[1] & 0xF000) >> 8 | (words[2] & 0xF000) >> 4 | (words[3] & 0xF000)
        let d = f16ToFloat(dBits)
        for i in 0..<32 {
            let scale = Int((words[(i / 2) / 4] >> UInt16(3 * ((i / 2) % 4))) & 7)
            let dl = d * Float(2 * scale + 1)
            let h = byte(p, 32 + i / 2) >> UInt8(4 * (i % 2))
            let row = Int(byte(p, i)) | Int(h & 7) << 8
            let delta: Float = h & 0x08 == 0 ? 0.125 : -0.125
            for j in 0..<8 { y[8 * i + j] = dl * (grid.values[row * 8 + j] + delta) }
        }
    }

    /// TQ1_0 { qs[48], qh[4], d }: five ternary digits per byte (base 3, most significant first, scaled by 256/243):
    /// digit k of byte b is ((b·3^k mod 256) · 3) >> 8; bytes 0…31 give 160 values, 32…47 give 80, qh's 4 give 16.
    static func tq1_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 52)
        let pow3: [UInt8] = [1, 3, 9, 27, 81]
        func digit(_ b: UInt8, _ k: Int) -> Float { Float(Int((UInt16(b &* pow3[k]) * 3) >> 8) - 1) }
        for k in 0..<5 { for l in 0..<32 { y[32 * k + l] = d * digit(byte(p, l), k) } }
        for k in 0..<5 { for l in 0..<16 { y[160 + 16 * k + l] = d * digit(byte(p, 32 + l), k) } }
        for k in 0..<4 { for l in 0..<4 { y[240 + 4 * k + l] = d * digit(byte(p, 48 + l), k) } }
    }

    /// TQ2_0 { qs[64], d }: value 128·h + 32·k + l is bits 2k…2k+1 of qs[32·h + l], minus 1.
    static func tq2_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 64)
        for v in 0..<256 {
            let (h, k, l) = (v >> 7, (v >> 5) & 3, v & 31)
            y[v] = d * Float(Int((byte(p, 32 * h + l) >> UInt8(2 * k)) & 3) - 1)
        }
    }
}
