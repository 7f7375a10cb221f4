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

    /// The activation quantiser: the C kernel (quantise_q8.c) gives the Swift twin's bytes, per 32 and per 256, on
    /// random values, on values that land exactly on a half step (2.5 → 3, −0.5 → −1: away from zero), at tiny and
    /// huge scales, and on blocks with a NaN or an infinity (d NaN, q 0); the twin rounds as `roundf` does.
    @Test func activationQuantiserCAndTwinAgree() {
        guard KernelISA.avx2.isSupported else { return }
        let count = 4096
        let x = KernelBenchmark.randomActivations(count, seed: 77)
        for i in 256..<512 { x.pointer[i] = Float(i % 255) - 127 + (i % 2 == 0 ? 0.5 : 0) }  // amax 127: scale 1, halves exact
        x.pointer[256] = 127
        for i in 512..<768 { x.pointer[i] *= 1e-30 }
        for i in 768..<1024 { x.pointer[i] *= 1e30 }
        x.pointer[1030] = .nan
        x.pointer[1300] = .infinity
        x.pointer[2000] = -.infinity
        for block in [32, 256] {
            var results: [([Int8], [Float], [Int16])] = []
            for isa in [KernelISA.generic, .avx2] {
                let q = UnsafeMutablePointer<Int8>.allocate(capacity: count), d = UnsafeMutablePointer<Float>.allocate(capacity: count / block)
                let s = UnsafeMutablePointer<Int16>.allocate(capacity: count / 16)
                defer { q.deallocate(); d.deallocate(); s.deallocate() }
                Q8Activations.quantise(x.pointer, count: count, block: block, q: q, d: d, sums16: s, isa: isa)
                results.append((Array(UnsafeBufferPointer(start: q, count: count)), Array(UnsafeBufferPointer(start: d, count: count / block)),
                                Array(UnsafeBufferPointer(start: s, count: count / 16))))
            }
            let (twin, c) = (results[0], results[1])
            #expect(twin.0 == c.0 && twin.2 == c.2, "block \(block)")
            #expect(zip(twin.1, c.1).allSatisfy { $0.bitPattern == $1.bitPattern || ($0.isNaN && $1.isNaN) }, "block \(block)")
            for i in 0..<count where twin.1[i / block].isFinite {
                let p = x.pointer[i] * (twin.1[i / block] > 0 ? 1 / twin.1[i / block] : 0)
                #expect(Int(twin.0[i]) == Int(p.rounded(.toNearestOrAwayFromZero)), "value \(i)")
            }
            for i in [1030, 1300, 2000] {
                #expect(twin.1[i / block].isNaN && twin.0[(i / block * block)..<(i / block * block + block)].allSatisfy { $0 == 0 })
            }
            // Scale 1 in these blocks (max |x| = 127): −123.5 → −124, −121.5 → −122, and per 256, 18.5 → 19.
            #expect(twin.0[256] == 127 && twin.0[258] == -124 && twin.0[260] == -122)
            if block == 256 { #expect(twin.0[400] == 19) }
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
