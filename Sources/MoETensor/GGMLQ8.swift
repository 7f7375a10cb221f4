import CMoEKernels

extension GGMLType {
    /// Whether `WeightMatrix.gemmQ8` multiplies this type with integer dot products (kernels_ggml_q8.c): the
    /// legacy and K-quant types, every i-quant and the ternary types. The others (float, MXFP4) take the exact fp32
    /// path only.
    public var hasQ8Kernel: Bool {
        switch self {
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K: true
        case .iq2_XXS, .iq2_XS, .iq2_S, .iq3_XXS, .iq3_S, .iq1_S, .iq1_M, .iq4_NL, .iq4_XS, .tq1_0, .tq2_0: true
        default: false
        }
    }

    /// Whether a resident matrix of this type (attention, dense and shared MLPs, output head) takes int8
    /// activations under `--resident-activations q8`: every type with an integer kernel but the ternary ones. A
    /// TQ1_0/TQ2_0 GGUF of the demo model measured mean KL 0.0109 nats against `--exact` with its resident
    /// matrices on q8 (over the 0.01 bar), 0.0013 with them fp32 (experts q8 either way): docs/performance.md.
    public var quantisesResidentInputs: Bool { hasQ8Kernel && self != .tq1_0 && self != .tq2_0 }

    /// Whether the row kernels of this type run the AVX2 body (maddubs, 256-bit) even where AVX-512 VNNI is there:
    /// the legacy types and IQ4_NL (whose 256-bit `vpdpbusd` lost to maddubs) and the i-quants whose decoding is
    /// most shuffles (IQ1_S, IQ1_M, IQ2_XS, IQ2_S, IQ3_S; perhaps the AVX-512 body's lane inserts that build its
    /// 512-bit pairs compete with those shuffles for a port: not profiled). `bench kernels --tokens 1,3 --repeats 5` on the AMX Xeon, ms AVX2 vs AVX-512 at 1 and 3 tokens:
    /// Q4_0 1.92/2.07 vs 2.03/3.22, Q4_1 1.79/2.42 vs 3.08/3.67, Q8_0 3.23/3.82 vs 3.17/4.24, IQ4_NL 2.25/3.30 vs
    /// 3.08/3.99, IQ1_S 3.45/4.64 vs 5.27/6.14, IQ3_S 4.43/5.50 vs 5.64/6.08; the K-quants, IQ2_XXS, IQ3_XXS, IQ4_XS
    /// and the TQ types are faster on AVX-512 (Q6_K 1.83/3.45 vs 1.42/2.79). Both bodies give the same bits.
    public var prefersAVX2Rows: Bool {
        switch self {
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .iq4_NL, .iq1_S, .iq1_M, .iq2_XS, .iq2_S, .iq3_S: true
        default: false
        }
    }

    /// Whether this CPU multiplies the type on AMX-INT8 tiles (`gemmGGMLQ8`'s prompt path): Q2_K…Q6_K, the i-quants
    /// but IQ4_NL and IQ4_XS, and the ternary types, where the CPU has AMX-INT8 and Linux granted the tile state.
    public var hasAMXKernel: Bool { Self.amxInt8 && moe_ggml_amx_supports(Int32(rawValue)) != 0 }
    static let amxInt8 = moe_cpu_has_amx_int8() != 0

    /// Whether the type's offsets are minimums with their own float scale (Q2_K, Q4_K, Q5_K), not a bias that only
    /// makes the integer kernels' values unsigned.
    var hasMinimums: Bool { self == .q2_K || self == .q4_K || self == .q5_K }

    /// The codebook bytes the type's integer kernel reads (`moe_matrix.scales`), or nil.
    var q8Table: UnsafeRawPointer? {
        switch self {
        case .iq2_XXS: UnsafeRawPointer(GGMLGrids.iq2xxsBytes)
        case .iq2_XS: UnsafeRawPointer(GGMLGrids.iq2xsBytes)
        case .iq2_S: UnsafeRawPointer(GGMLGrids.iq2sBytes)
        case .iq1_S, .iq1_M: UnsafeRawPointer(GGMLGrids.iq1sBytes)
        case .iq3_XXS: UnsafeRawPointer(GGMLGrids.iq3xxsBytes)
        case .iq3_S: UnsafeRawPointer(GGMLGrids.iq3sBytes)
        default: nil
        }
    }
}

extension GGMLGrids {
    /// IQ2_XXS's, IQ2_XS's and IQ2_S's codebooks (rows of 8 values: 8, 25 or 43), IQ3_XXS's (rows of 4: 4…62) and
    /// IQ3_S's (rows of 4: 1…15) as bytes, then `ksigns`: what their integer kernels read. Live as long as the process.
    nonisolated(unsafe) static let iq2xxsBytes = bytes(iq2xxs, rows: 256)
    nonisolated(unsafe) static let iq2xsBytes = bytes(iq2xs, rows: 512)
    nonisolated(unsafe) static let iq2sBytes = bytes(iq2s, rows: 1024)
    nonisolated(unsafe) static let iq3xxsBytes = bytes(iq3xxs, rows: 256)
    nonisolated(unsafe) static let iq3sBytes = bytes(iq3s, rows: 512)

    /// IQ1_S's (and IQ1_M's) codebook (2048 rows of 8 values in {−1, 0, 1}) as bytes 8·v + 16.
    nonisolated(unsafe) static let iq1sBytes: UnsafeMutablePointer<UInt8> = {
        let count = 2048 * 8, p = UnsafeMutablePointer<UInt8>.allocate(capacity: count)
        for i in 0..<count { p[i] = UInt8(8 * Int(iq1s.values[i]) + 16) }
        return p
    }()

    static func bytes(_ grid: Grid, rows: Int) -> UnsafeMutablePointer<UInt8> {
        let count = rows * grid.columns, p = UnsafeMutablePointer<UInt8>.allocate(capacity: count + ksigns.count)
        for i in 0..<count { p[i] = UInt8(grid.values[i]) }
        (p + count).initialize(from: ksigns, count: ksigns.count)
        return p
    }
}

/// One group of 32 weights of a GGML row in the form the integer kernels multiply (ggml_q8_body.h):
/// w[l] = D · s(l) · u[l] − Dm · m(l), with s and m integers per half group (a: values 0-15, b: 16-31). `signed`
/// (Q8_0, IQ4_NL): u holds the signed weights themselves, and there is no offset; IQ4_XS's u are signed too, with
/// no offset. For the K-quants D and Dm are the
/// super-block's (every group of it has the same).
struct GGMLQ8Group {
    var sa: Int32 = 1, sb: Int32 = 1
    var D: Float = 0, Dm: Float = 0
    var ma: Int32 = 0, mb: Int32 = 0
    var signed = false

    typealias G = GGMLDequantize

    /// Group `g` (of 32 values, counted from the row's start) of `row`, its values into `u [32]`.
    init(_ type: GGMLType, row: UnsafeRawPointer, group g: Int, u: UnsafeMutablePointer<Int32>) {
        let nibble = { (qs: UnsafeRawPointer, i: Int) in Int32(G.nibble(qs, i)) }
        switch type {
        case .q4_0:
            let p = row + 18 * g
            self.D = G.half(p, 0); Dm = self.D; (ma, mb) = (8, 8)
            for i in 0..<32 { u[i] = nibble(p + 2, i) }
        case .q4_1:
            let p = row + 20 * g
            self.D = G.half(p, 0); Dm = -G.half(p, 2); (ma, mb) = (1, 1)
            for i in 0..<32 { u[i] = nibble(p + 4, i) }
        case .q5_0, .q5_1:
            let one = type == .q5_1
            let p = row + (one ? 24 : 22) * g, qh = p.loadUnaligned(fromByteOffset: one ? 4 : 2, as: UInt32.self)
            self.D = G.half(p, 0)
            if one { Dm = -G.half(p, 2); (ma, mb) = (1, 1) } else { Dm = self.D; (ma, mb) = (16, 16) }
            for i in 0..<32 { u[i] = nibble(p + (one ? 8 : 6), i) | Int32((qh >> UInt32(i)) & 1) << 4 }
        case .q8_0:
            let p = row + 34 * g
            self.D = G.half(p, 0); signed = true
            for i in 0..<32 { u[i] = Int32(Int8(bitPattern: G.byte(p, 2 + i))) }
        case .q2_K:
            let p = row + 84 * (g / 8), h = (g % 8) / 4, j = g % 4
            let s0 = G.byte(p, 8 * h + 2 * j), s1 = G.byte(p, 8 * h + 2 * j + 1)
            (sa, sb, ma, mb) = (Int32(s0 & 15), Int32(s1 & 15), Int32(s0 >> 4), Int32(s1 >> 4))
            self.D = G.half(p, 80); Dm = G.half(p, 82)
            for l in 0..<32 { u[l] = Int32((G.byte(p, 16 + 32 * h + l) >> UInt8(2 * j)) & 3) }
        case .q3_K:
            let p = row + 110 * (g / 8), h = (g % 8) / 4, s = g % 4
            func scale(_ i: Int) -> Int32 {
                let low = (G.byte(p, 96 + i % 8) >> UInt8(4 * (i / 8))) & 0x0F
                let high = (G.byte(p, 104 + i % 4) >> UInt8(2 * (i / 4))) & 3
                return Int32(low | high << 4) - 32
            }
            (sa, sb) = (scale(8 * h + 2 * s), scale(8 * h + 2 * s + 1))
            (ma, mb) = (4 * sa, 4 * sb)
            self.D = G.half(p, 108); Dm = self.D
            for l in 0..<32 {
                let low = (G.byte(p, 32 + 32 * h + l) >> UInt8(2 * s)) & 3, bit = (G.byte(p, l) >> UInt8(4 * h + s)) & 1
                u[l] = Int32(low) + 4 * Int32(bit)
            }
        case .q4_K, .q5_K:
            let five = type == .q5_K
            let p = row + (five ? 176 : 144) * (g / 8), j = g % 8
            let (sc, m) = G.scaleMin(p + 4, j)
            self.D = G.half(p, 0); Dm = G.half(p, 2); (sa, sb, ma, mb) = (Int32(sc), Int32(sc), Int32(m), Int32(m))
            for l in 0..<32 {
                var q = (G.byte(p, (five ? 48 : 16) + 32 * (j / 2) + l) >> UInt8(4 * (j % 2))) & 0x0F
                if five { q |= ((G.byte(p, 16 + l) >> UInt8(j)) & 1) << 4 }
                u[l] = Int32(q)
            }
        case .q6_K:
            let p = row + 210 * (g / 8), h = (g % 8) / 4, s = g % 4
            (sa, sb) = (Int32(Int8(bitPattern: G.byte(p, 192 + 8 * h + 2 * s))), Int32(Int8(bitPattern: G.byte(p, 193 + 8 * h + 2 * s))))
            (ma, mb) = (32 * sa, 32 * sb)
            self.D = G.half(p, 208); Dm = self.D
            for l in 0..<32 {
                let low = (G.byte(p, 64 * h + 32 * (s % 2) + l) >> UInt8(4 * (s / 2))) & 0x0F
                let high = (G.byte(p, 128 + 32 * h + l) >> UInt8(2 * s)) & 3
                u[l] = Int32(low | high << 4)
            }
        case .iq2_XXS:
            let p = row + 66 * (g / 8), i = g % 8
            let rows = p.loadUnaligned(fromByteOffset: 2 + 8 * i, as: UInt32.self)
            let signs = p.loadUnaligned(fromByteOffset: 6 + 8 * i, as: UInt32.self)
            let s = Int32(2 * (signs >> 28) + 1)
            (sa, sb, ma, mb) = (s, s, 64 * s, 64 * s)
            self.D = G.half(p, 0) * 0.125; Dm = self.D
            for l in 0..<4 {
                let r = Int((rows >> UInt32(8 * l)) & 255), pattern = GGMLGrids.signs[Int((signs >> UInt32(7 * l)) & 127)]
                for j in 0..<8 {
                    let v = Int32(GGMLGrids.iq2xxs.values[8 * r + j])
                    u[8 * l + j] = ((pattern >> UInt8(j)) & 1 == 1 ? -v : v) + 64
                }
            }
        case .iq2_XS:
            let p = row + 74 * (g / 8), i = g % 8, scales = G.byte(p, 66 + i)
            (sa, sb) = (2 * Int32(scales & 15) + 1, 2 * Int32(scales >> 4) + 1)
            (ma, mb) = (64 * sa, 64 * sb)
            self.D = G.half(p, 0) * 0.125; Dm = self.D
            for l in 0..<4 {
                let e = p.loadUnaligned(fromByteOffset: 2 + 8 * i + 2 * l, as: UInt16.self)
                let r = Int(e & 511), pattern = GGMLGrids.signs[Int(e >> 9)]
                for j in 0..<8 {
                    let v = Int32(GGMLGrids.iq2xs.values[8 * r + j])
                    u[8 * l + j] = ((pattern >> UInt8(j)) & 1 == 1 ? -v : v) + 64
                }
            }
        case .iq3_XXS:
            let p = row + 98 * (g / 8), i = g % 8
            let aux = p.loadUnaligned(fromByteOffset: 66 + 4 * i, as: UInt32.self)
            let s = Int32(2 * (aux >> 28) + 1)
            (sa, sb, ma, mb) = (s, s, 64 * s, 64 * s)
            self.D = G.half(p, 0) * 0.25; Dm = self.D
            for l in 0..<4 {
                let pattern = GGMLGrids.signs[Int((aux >> UInt32(7 * l)) & 127)]
                for j in 0..<8 {
                    let v = 8 * l + j, r = Int(G.byte(p, 2 + 8 * i + v / 4))
                    let w = Int32(GGMLGrids.iq3xxs.values[4 * r + v % 4])
                    u[v] = ((pattern >> UInt8(j)) & 1 == 1 ? -w : w) + 64
                }
            }
        case .iq1_S:
            let p = row + 50 * (g / 8), i = g % 8
            let qh = p.loadUnaligned(fromByteOffset: 34 + 2 * i, as: UInt16.self)
            let s = 2 * Int32((qh >> 12) & 7) + 1, delta: Int32 = qh & 0x8000 == 0 ? 1 : -1
            (sa, sb, ma, mb) = (s, s, 16 * s, 16 * s)
            self.D = G.half(p, 0) * 0.125; Dm = self.D
            for l in 0..<4 {
                let r = Int(G.byte(p, 2 + 4 * i + l)) | Int((qh >> UInt16(3 * l)) & 7) << 8
                for j in 0..<8 { u[8 * l + j] = 8 * Int32(GGMLGrids.iq1s.values[8 * r + j]) + delta + 16 }
            }
        case .iq4_NL:
            let p = row + 18 * g
            self.D = G.half(p, 0); signed = true
            for i in 0..<32 { u[i] = Int32(GGMLGrids.iq4nlValues[G.nibble(p + 2, i)]) }
        case .iq4_XS:
            let p = row + 136 * (g / 8), i = g % 8, high = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
            let s = (Int32((G.byte(p, 4 + i / 2) >> UInt8(4 * (i % 2))) & 15) | (Int32((high >> UInt16(2 * i)) & 3) << 4)) - 32
            (sa, sb) = (s, s)
            self.D = G.half(p, 0); Dm = self.D
            for l in 0..<32 { u[l] = Int32(GGMLGrids.iq4nlValues[G.nibble(p + 8 + 16 * i, l)]) }
        case .iq3_S:
            let p = row + 110 * (g / 8), i = g % 8
            let s = 2 * Int32((G.byte(p, 106 + i / 2) >> UInt8(4 * (i % 2))) & 15) + 1
            (sa, sb, ma, mb) = (s, s, 16 * s, 16 * s)
            self.D = G.half(p, 0); Dm = self.D
            for v in 0..<32 {
                let r = Int(G.byte(p, 2 + 8 * i + v / 4)) | Int((G.byte(p, 66 + i) >> UInt8(v / 4)) & 1) << 8
                let w = Int32(GGMLGrids.iq3s.values[4 * r + v % 4])
                u[v] = ((G.byte(p, 74 + 4 * i + v / 8) >> UInt8(v % 8)) & 1 == 1 ? -w : w) + 16
            }
        case .iq2_S:
            let p = row + 82 * (g / 8), i = g % 8, scales = G.byte(p, 74 + i)
            (sa, sb) = (2 * Int32(scales & 15) + 1, 2 * Int32(scales >> 4) + 1)
            (ma, mb) = (64 * sa, 64 * sb)
            self.D = G.half(p, 0) * 0.125; Dm = self.D
            for l in 0..<4 {
                let r = Int(G.byte(p, 2 + 4 * i + l)) | Int((G.byte(p, 66 + i) >> UInt8(2 * l)) & 3) << 8
                let signs = G.byte(p, 34 + 4 * i + l)
                for j in 0..<8 {
                    let v = Int32(GGMLGrids.iq2s.values[8 * r + j])
                    u[8 * l + j] = ((signs >> UInt8(j)) & 1 == 1 ? -v : v) + 64
                }
            }
        case .iq1_M:
            let p = row + 56 * (g / 8), i = g % 8
            let words = (0..<4).map { p.loadUnaligned(fromByteOffset: 48 + 2 * $0, as: UInt16.self) }
            let dBits = words[0] >> 12 | (words[1] >> 8) & 0x00F0 | (words[2] >> 4) & 0x0F00 | words[3] & 0xF000
            let scale = { (k: Int) in 2 * Int32((words[k / 4] >> UInt16(3 * (k % 4))) & 7) + 1 }
            (sa, sb) = (scale(2 * i), scale(2 * i + 1))
            (ma, mb) = (16 * sa, 16 * sb)
            self.D = f16ToFloat(dBits) * 0.125; Dm = self.D
            for l in 0..<4 {
                let ri = 4 * i + l, nib = G.byte(p, 32 + ri / 2) >> UInt8(4 * (ri % 2))
                let r = Int(G.byte(p, ri)) | Int(nib & 7) << 8, delta: Int32 = nib & 8 == 0 ? 1 : -1
                for j in 0..<8 { u[8 * l + j] = 8 * Int32(GGMLGrids.iq1s.values[8 * r + j]) + delta + 16 }
            }
        case .tq1_0:
            let p = row + 54 * (g / 8), pow3: [UInt8] = [1, 3, 9, 27, 81]
            (ma, mb) = (1, 1)
            self.D = G.half(p, 52); Dm = self.D
            for l in 0..<32 {
                let v = 32 * (g % 8) + l
                let (byte, k) = v < 160 ? (v % 32, v / 32) : v < 240 ? (32 + (v - 160) % 16, (v - 160) / 16) : (48 + (v - 240) % 4, (v - 240) / 4)
                u[l] = Int32((UInt16(G.byte(p, byte) &* pow3[k]) * 3) >> 8)
            }
        case .tq2_0:
            let p = row + 66 * (g / 8), h = (g % 8) / 4, k = g % 4
            (ma, mb) = (1, 1)
            self.D = G.half(p, 64); Dm = self.D
            for l in 0..<32 { u[l] = Int32((G.byte(p, 32 * h + l) >> UInt8(2 * k)) & 3) }
        default:
            preconditionFailure("GGML \(type) has no integer kernel")
        }
    }
}

extension WeightMatrix {
    /// The form of Q8 activations this matrix's `gemmQ8` takes: per 256 for GGML types in super-blocks, else per 32.
    public var q8Forms: Q8Forms {
        if case .ggml(let type) = encoding, type.blockSize == 256 { return .per256 }
        return .per32
    }

    /// `gemmQ8` for GGML rows: the C kernel of `isa` (VNNI on AVX-512 where the CPU has it), or the Swift twin,
    /// which does what ggml_q8_body.h does per (row, token) — the same integers, the same fused multiply-adds in
    /// the same order — so they agree bit for bit.
    ///
    /// `tiles` (nil: from `amxMinTokens`) puts the types with `hasAMXKernel` on AMX-INT8 tiles (ggml_q8_amx.h),
    /// with the same bits. `vnni` (nil: unless the type `prefersAVX2Rows`) runs the AVX-512 VNNI body where `isa`
    /// is avx512 and the CPU has it.
    func gemmGGMLQ8(_ type: GGMLType, rows range: Range<Int>, _ x: Q8Activations, into y: UnsafeMutablePointer<Float>,
                    isa: KernelISA, tiles: Bool? = nil, vnni: Bool? = nil) {
        precondition(type.hasQ8Kernel && cols % type.blockSize == 0 && x.forms.isSuperset(of: q8Forms))
        if isa != .generic {
            var m = moe_matrix(data: data, scales: type.q8Table, rows: Int64(rows), cols: Int64(cols), scales_bf16: 0)
            var acts = x.c
            if isa == .avx512, type.hasAMXKernel, tiles ?? (x.tokens >= Self.amxMinTokens(type)),
               moe_gemm_ggml_q8_amx(Int32(type.rawValue), &m, Int64(range.lowerBound), Int64(range.upperBound), &acts,
                                    Int64(x.tokens), y) != 0 {
                return
            }
            let useVNNI = isa == .avx512 && Self.hasVNNI && (vnni ?? !type.prefersAVX2Rows)
            let kernel = useVNNI ? moe_gemm_ggml_q8_avx512vnni : moe_gemm_ggml_q8_avx2
            kernel(Int32(type.rawValue), &m, Int64(range.lowerBound), Int64(range.upperBound), &acts, Int64(x.tokens), y)
            return
        }
        let rowBytes = storedByteCount / rows, groups = cols / 32
        let u = UnsafeMutablePointer<Int32>.allocate(capacity: 32), acc = UnsafeMutablePointer<Float>.allocate(capacity: 8)
        defer { u.deallocate(); acc.deallocate() }
        if type.blockSize == 256 { return kQuantTwin(type, rows: range, x, into: y, u: u) }
        for r in range {
            let row = data + r * rowBytes
            for t in 0..<x.tokens {
                acc.initialize(repeating: 0, count: 8)
                let dx = x.d + t * groups, S = x.sums16 + t * 2 * groups
                // Chunks of 8 groups (fewer at the end): each group's products into all 8 lanes, then lane i takes
                // group i's offset.
                for g0 in stride(from: 0, to: groups, by: 8) {
                    let n = min(8, groups - g0)
                    for i in 0..<n {
                        let g = g0 + i, f = GGMLQ8Group(type, row: row, group: g, u: u), q = x.q + t * cols + 32 * g
                        let k = f.D * dx[g]
                        for lane in 0..<8 {
                            var p: Int32 = 0
                            for l in (4 * lane)..<(4 * lane + 4) { p += u[l] * Int32(q[l]) }
                            acc[lane] = acc[lane].addingProduct(Float(p * (lane < 4 ? f.sa : f.sb)), k)
                        }
                    }
                    for i in 0..<n {
                        let g = g0 + i, f = GGMLQ8Group(type, row: row, group: g, u: u)
                        guard !f.signed else { continue }
                        let offset = f.ma * Int32(S[2 * g]) + f.mb * Int32(S[2 * g + 1])
                        acc[i] = acc[i].addingProduct(-dx[g], f.Dm * Float(offset))
                    }
                }
                // hsum8's tree: lanes i and i + 4, then (0 + 2) + (1 + 3).
                let s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7]
                y[t * rows + r] = (s0 + s2) + (s1 + s3)
            }
        }
    }

    /// Tokens from which a product goes on AMX tiles by default. Below it the row kernels are faster: the tiles
    /// decode a super-block once per call, which a few tokens do not repay, and the i-quants' codebooks cost more
    /// to decode. `bench kernels` on the AMX Xeon, 2048 × 7168: Q4_K at 4 tokens 2.3 ms rows vs 3.4 tiles, at 6
    /// tokens 5.4 vs 4.8, at 8 tokens 5.4 vs 2.2; TQ2_0 at 4 tokens 1.5 vs 1.0; IQ1_M and IQ3_S at 8 tokens 6.7 vs
    /// 5.5 and 8.1 vs 7.8, at 6 about even; IQ2_XXS at 11 tokens 6.8 vs 8.4, at 16 tokens 8.8 vs 6.4.
    static func amxMinTokens(_ type: GGMLType) -> Int {
        switch type {
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .tq1_0, .tq2_0: 5
        case .iq1_M, .iq3_S: 8
        default: 16
        }
    }

    /// The Swift twin of the K-quant kernels (ggml_q8_body.h's super-block form): per super-block the exact
    /// integers I = Σ s·u·q and O = Σ m·S, then one float per (row, token) takes the fused steps with the token's
    /// per-256 scale: two where the type has minimums, else one with I − O (its offsets only made u unsigned).
    private func kQuantTwin(_ type: GGMLType, rows range: Range<Int>, _ x: Q8Activations, into y: UnsafeMutablePointer<Float>,
                            u: UnsafeMutablePointer<Int32>) {
        let rowBytes = storedByteCount / rows, blocks = cols / 256, mins = type.hasMinimums
        guard let q256 = x.q256, let d256 = x.d256, let sums = x.sums256 else { preconditionFailure("K-quants take activations per 256") }
        for r in range {
            let row = data + r * rowBytes
            for t in 0..<x.tokens {
                var acc: Float = 0
                for b in 0..<blocks {
                    var I: Int32 = 0, O: Int32 = 0
                    var D: Float = 0, Dm: Float = 0
                    let S = sums + (t * blocks + b) * 16
                    for i in 0..<8 {
                        let g = 8 * b + i, f = GGMLQ8Group(type, row: row, group: g, u: u), q = q256 + t * cols + 32 * g
                        for l in 0..<32 { I += u[l] * Int32(q[l]) * (l < 16 ? f.sa : f.sb) }
                        O += f.ma * Int32(S[2 * i]) + f.mb * Int32(S[2 * i + 1])
                        (D, Dm) = (f.D, f.Dm)
                    }
                    let dx = d256[t * blocks + b]
                    if mins {
                        acc = acc.addingProduct(Float(I), D * dx)
                        acc = acc.addingProduct(-Float(O), Dm * dx)
                    } else {
                        acc = acc.addingProduct(Float(I - O), D * dx)
                    }
                }
                y[t * rows + r] = acc
            }
        }
    }
}
