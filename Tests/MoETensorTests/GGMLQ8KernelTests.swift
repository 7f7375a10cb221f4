import Testing
@testable import MoETensor

/// GGML block rows × Q8 activations (kernels_ggml_q8.c and its Swift twin), for every type with an integer kernel.
@Suite struct GGMLQ8KernelTests {
    static let types = GGMLType.allCases.filter(\.hasQ8Kernel)
    static let fast = KernelISA.allCases.filter { $0 != .generic && $0.isSupported }

    /// The twin gives Σ_c W[r, c]·(q·d)[t, c] with W decoded exactly (gguf-py's values) within float rounding, so
    /// the integer form of each type is its weights (the K-quants against the activations quantised per 256); the AVX2 and AVX-512 kernels equal the twin bit for bit with
    /// 1…70 tokens (tiles of four, singles, the cache-blocked loop, and the K-quants' spans of 64 tokens); a token alone gets what it gets among
    /// others. Random bytes cover every quant and sub-scale value (Q6_K's −128, Q8_0's −128, Q3_K's −32); six
    /// blocks of 32 (a chunk of 8 groups cut short) or two of 256 a row; some block scales negative.
    /// Also 1,280 rows of one block with 7 tokens: several of the kernels' cache blocks of rows. Where the CPU has
    /// AMX-INT8, the tiles (K-quants and i-quants) give the twin's bits too (every token count, rows that cut a tile's group).
    @Test(arguments: types, [(13, 2), (1280, 1)])
    func integerKernelsComputeTheQuantisedProductAndAgreeBitForBit(type: GGMLType, shape: (rows: Int, blocks: Int)) {
        let cols = shape.blocks * (type.blockSize == 256 ? 256 : 96), rows = shape.rows
        let m = KernelBenchmark.randomGGML(type, rows: rows, cols: cols, seed: 11)
        negateSomeScales(m, type)
        // 300 tokens: more than one span of the AMX kernel's packed tokens (256 at most).
        for tokens in rows > 100 ? [7] : [1, 3, 4, 9, 70] + (type.hasAMXKernel ? [300] : []) {
            let x = KernelBenchmark.randomActivations(tokens * cols, seed: UInt64(20 + tokens))
            let memory = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: tokens, cols: cols))
            let q = Q8Activations(x.pointer, tokens: tokens, cols: cols, memory: memory.pointer)
            let twin = FloatBuffer(count: tokens * rows)
            m.gemmQ8(rows: 0..<rows, q, into: twin.pointer, isa: .generic)
            let w = FloatBuffer(count: cols)
            for r in 0..<rows {
                m.copyRow(r, into: w.pointer)
                for t in 0..<tokens {
                    var sum = 0.0, magnitude = 0.0
                    for c in 0..<cols {
                        let p = Double(w.pointer[c]) * Double(type.blockSize == 256 ? q.value256(t, c) : q.value(t, c))
                        sum += p
                        magnitude += abs(p)
                    }
                    let got = Double(twin.pointer[t * rows + r])
                    #expect(abs(got - sum) <= 2e-6 * magnitude, "\(type) row \(r) token \(t): \(got) vs \(sum)")
                }
            }
            for isa in Self.fast {
                let y = FloatBuffer(count: tokens * rows)
                m.gemmQ8(rows: 0..<rows, q, into: y.pointer, isa: isa)
                #expect(y.array == twin.array, "\(type) \(isa) \(tokens) tokens")
                // Rows split as the kernel pool splits them.
                let split = FloatBuffer(count: tokens * rows)
                m.gemmQ8(rows: 0..<4, q, into: split.pointer, isa: isa)
                m.gemmQ8(rows: 4..<rows, q, into: split.pointer, isa: isa)
                #expect(split.array == twin.array, "\(type) \(isa) split rows")
            }
            // Both row bodies whichever the type prefers (`prefersAVX2Rows`), where the CPU has them.
            for (isa, vnni) in [(KernelISA.avx2, false), (.avx512, true), (.avx512, false)] where isa.isSupported && (!vnni || WeightMatrix.hasVNNI) {
                if case .ggml = m.encoding {
                    let y = FloatBuffer(count: tokens * rows)
                    m.gemmGGMLQ8(type, rows: 0..<rows, q, into: y.pointer, isa: isa, tiles: false, vnni: vnni)
                    #expect(y.array == twin.array, "\(type) \(isa) vnni \(vnni) \(tokens) tokens")
                }
            }
            // The AMX tiles (where the CPU has them) for every token count, split at rows that cut their groups.
            if type.hasAMXKernel, case .ggml = m.encoding {
                for (lower, upper) in [(0, rows), (0, 3), (3, rows)] {
                    let y = FloatBuffer(count: tokens * rows)
                    m.gemmGGMLQ8(type, rows: lower..<upper, q, into: y.pointer, isa: .avx512, tiles: true)
                    var differ = 0
                    for t in 0..<tokens { for r in lower..<upper where y.pointer[t * rows + r] != twin.pointer[t * rows + r] { differ += 1 } }
                    #expect(differ == 0, "\(type) AMX, \(tokens) tokens, rows \(lower)..<\(upper)")
                }
            }
            if tokens > 1 {
                let one = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: 1, cols: cols)), single = FloatBuffer(count: rows)
                for t in [0, tokens - 1] {
                    let qt = Q8Activations(x.pointer + t * cols, tokens: 1, cols: cols, memory: one.pointer)
                    for isa in [KernelISA.generic] + Self.fast {
                        m.gemmQ8(rows: 0..<rows, qt, into: single.pointer, isa: isa)
                        for r in 0..<rows { #expect(single.pointer[r] == twin.pointer[t * rows + r], "\(type) \(isa) token \(t) alone") }
                    }
                }
            }
        }
    }

    /// Flips the sign bit of the first fp16 field of every third block (negative d; Q4_1's and Q5_1's minimum is
    /// the second field and stays).
    func negateSomeScales(_ m: WeightMatrix, _ type: GGMLType) {
        let field: Int
        switch type {
        case .q2_K: field = 80
        case .q3_K: field = 108
        case .q6_K: field = 208
        case .tq1_0: field = 52
        case .tq2_0: field = 64
        case .iq1_M: field = 54  // d's top nibble is word 3's: its sign bit is byte 55's top bit
        default: field = 0
        }
        let bytes = UnsafeMutableRawPointer(mutating: m.data)
        for b in stride(from: 0, to: m.rows * m.cols / type.blockSize, by: 3) {
            let at = b * type.typeSize + field + 1
            bytes.storeBytes(of: bytes.load(fromByteOffset: at, as: UInt8.self) ^ 0x80, toByteOffset: at, as: UInt8.self)
        }
    }
}
