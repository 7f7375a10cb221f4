import Testing
@testable import MoETensor

/// Every C kernel against its generic Swift twin and a float64 product, on every instruction set this CPU runs
/// (AVX-512 only where present: these tests say so when it is not), at sizes with row, token and column tails.
@Suite struct KernelTests {
    static let fast = KernelISA.allCases.filter { $0 != .generic && $0.isSupported }

    /// The exact value of every weight (dequantised in float64 from the stored bytes).
    func exact(_ m: WeightMatrix, _ r: Int, _ c: Int) -> Double { Double(m.element(r, c)) }

    /// `y [tokens, rows]` is Σ_c W[r, c]·x̃[t, c] of the two-part values within float rounding (float64 reference).
    func expectExactProduct(_ m: WeightMatrix, _ q: Q16Activations, _ y: FloatBuffer) {
        for t in 0..<q.tokens {
            for r in 0..<m.rows {
                var sum = 0.0, magnitude = 0.0
                for c in 0..<m.cols {
                    let p = Double(m.element(r, c)) * Double(q.value(t, c))
                    sum += p
                    magnitude += abs(p)
                }
                #expect(abs(Double(y.pointer[t * m.rows + r]) - sum) <= 1e-6 * magnitude + 1e-30, "row \(r) token \(t)")
            }
        }
    }

    /// `rows` rounded up to what `kind` takes (the interleaved layouts' blocks of 8).
    static func rows(_ rows: Int, _ kind: KernelBenchmark.Kind) -> Int { kind == .int4x8 || kind == .int8x8 ? (rows + 7) / 8 * 8 : rows }

    func check(_ kind: KernelBenchmark.Kind, rows: Int, cols: Int, tokens: Int, isa: KernelISA) {
        let rows = Self.rows(rows, kind)
        let m = KernelBenchmark.randomMatrix(kind, rows: rows, cols: cols, seed: UInt64(rows * 31 + cols))
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: UInt64(tokens))
        let fast = FloatBuffer(count: tokens * rows), twin = FloatBuffer(count: tokens * rows)
        m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: fast.pointer, isa: isa)
        m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: twin.pointer, isa: .generic)
        for t in 0..<tokens {
            for r in 0..<rows {
                var s = 0.0, magnitude = 0.0
                for c in 0..<cols {
                    let p = exact(m, r, c) * Double(x.pointer[t * cols + c])
                    s += p
                    magnitude += abs(p)
                }
                // fp32 accumulation of `cols` products: a few ulps of the magnitude per step at most.
                let bound = 1e-6 * magnitude * Double(cols).squareRoot() + 1e-30
                let f = Double(fast.pointer[t * rows + r]), g = Double(twin.pointer[t * rows + r])
                #expect(abs(f - s) <= bound, "\(kind) \(isa) row \(r) token \(t): \(f) vs exact \(s)")
                #expect(abs(g - s) <= bound, "\(kind) generic row \(r) token \(t): \(g) vs exact \(s)")
            }
        }
    }

    @Test(arguments: KernelBenchmark.Kind.allCases)
    func kernelsMatchTheirGenericTwinAndTheExactProduct(kind: KernelBenchmark.Kind) {
        #expect(KernelISA.generic.isSupported)
        if !KernelISA.avx512.isSupported { print("note: this CPU has no AVX-512; its kernels are compiled but not run here") }
        for isa in [KernelISA.generic] + Self.fast {
            for tokens in [1, 2, 3, 4, 5, 9] {
                check(kind, rows: 37, cols: kind.grouped ? 1024 : 1031, tokens: tokens, isa: isa)
            }
            check(kind, rows: 4, cols: 32, tokens: 1, isa: isa)
        }
    }

    /// A token's result does not depend on the other tokens of the call or on how rows are split: the tiles
    /// give each (row, token) the same operations. The second shape is large enough that more than four tokens
    /// walk the rows in several cache blocks (`row_block`: 24 bf16 rows of 4103, 108 int4 rows of 4096; 448 rows
    /// of the interleaved int4, 60 bf16 rows in the blocked bf16 tiles, whose columns also go in spans of 1024).
    @Test(arguments: KernelBenchmark.Kind.allCases, [false, true])
    func resultsDoNotDependOnTilesOrSplits(kind: KernelBenchmark.Kind, large: Bool) {
        var (rows, cols, tokens) = large ? (263, kind.grouped ? 4096 : 4103, 9) : (23, kind.grouped ? 512 : 517, 7)
        rows = Self.rows(rows, kind)
        if large && kind == .int4x8 { rows = 520 }  // more than one of the interleaved kernels' ~1 MB row blocks (448 rows)
        if large && kind == .int8x8 { rows = 264 }  // the interleaved int8 kernels' ~1 MB row blocks: 240 rows of 4096
        let splits = kind == .int4x8 || kind == .int8x8 ? [8, 16, rows - 8] : [1, 5, rows - 1]
        let m = KernelBenchmark.randomMatrix(kind, rows: rows, cols: cols, seed: 5)
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: 6)
        for isa in KernelISA.allCases where isa.isSupported {
            let whole = FloatBuffer(count: tokens * rows)
            m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: whole.pointer, isa: isa)
            let single = FloatBuffer(count: rows)
            for t in 0..<tokens {
                for split in splits {
                    m.gemm(rows: 0..<split, x.pointer + t * cols, tokens: 1, into: single.pointer, isa: isa)
                    m.gemm(rows: split..<rows, x.pointer + t * cols, tokens: 1, into: single.pointer, isa: isa)
                    for r in 0..<rows {
                        #expect(single.pointer[r] == whole.pointer[t * rows + r], "\(kind) \(isa) token \(t) row \(r) split \(split)")
                    }
                }
            }
            // apply() splits rows across the pool; bit-identical to one call.
            let pooled = FloatBuffer(count: tokens * rows)
            let saved = Kernels.isa
            if isa == saved {
                m.apply(x.pointer, tokens: tokens, into: pooled.pointer)
                #expect(pooled.array == whole.array, "\(kind) \(isa) through the pool")
            }
        }
    }

    /// The blocked bf16 kernels take a long prompt in passes of `bf_pass_tokens` tokens (32 at 32,771 columns):
    /// 37 tokens are a full pass and a second one of a tile and a token left over, each token's result the same as
    /// alone.
    @Test func passesOverALongPromptChangeNoResult() {
        let (rows, cols, tokens) = (13, 32771, 37)
        let m = KernelBenchmark.randomMatrix(.bf16, rows: rows, cols: cols, seed: 7)
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: 8)
        for isa in KernelISA.allCases where isa.isSupported {
            let whole = FloatBuffer(count: tokens * rows)
            m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: whole.pointer, isa: isa)
            let single = FloatBuffer(count: rows)
            for t in [0, 31, 32, 35, 36] {
                m.gemm(rows: 0..<rows, x.pointer + t * cols, tokens: 1, into: single.pointer, isa: isa)
                for r in 0..<rows {
                    #expect(single.pointer[r] == whole.pointer[t * rows + r], "\(isa) token \(t) row \(r)")
                }
            }
        }
    }

    @Test func unsupportedInstructionSetsAreRefusedByName() {
        for isa in KernelISA.allCases where !isa.isSupported {
            #expect(throws: KernelError.unsupported(isa)) { try Kernels.select(isa) }
            #expect(KernelError.unsupported(isa).description.contains(isa.rawValue))
        }
        #expect(KernelISA.best.isSupported)
    }

    /// int4 weights × Q8 activations: the AVX2 kernel and the generic twin give Σ_c W[r, c]·(q·d)[t, c] (float64
    /// of the quantised values) within float rounding; a token's result is the same alone or in a block of four;
    /// and the quantisation itself is within half a step of each value. 33 groups: the AVX-512 kernel's odd last
    /// group.
    @Test(arguments: [KernelBenchmark.Kind.int4, .int4x8], [1024, 1056])
    func q8ActivationKernelsMatchTheExactProductOfTheQuantisedValues(kind: KernelBenchmark.Kind, cols: Int) {
        let (rows, tokens) = (Self.rows(37, kind), 9)
        let m = KernelBenchmark.randomMatrix(kind, rows: rows, cols: cols, seed: 3)
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: 4)
        let memory = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: tokens, cols: cols))
        let q = Q8Activations(x.pointer, tokens: tokens, cols: cols, memory: memory.pointer)
        var worst: Float = 0
        for i in 0..<(tokens * cols) { worst = max(worst, abs(q.value(i / cols, i % cols) - x.pointer[i]) / q.d[i / 32]) }
        #expect(worst <= 0.5001)
        for isa in [KernelISA.generic] + Self.fast where isa != .avx512 || KernelISA.avx2.isSupported {
            let y = FloatBuffer(count: tokens * rows)
            m.gemmQ8(rows: 0..<rows, q, into: y.pointer, isa: isa)
            for t in 0..<tokens {
                for r in 0..<rows {
                    var sum = 0.0, magnitude = 0.0
                    for c in 0..<cols {
                        let p = exact(m, r, c) * Double(q.value(t, c))
                        sum += p
                        magnitude += abs(p)
                    }
                    let got = Double(y.pointer[t * rows + r])
                    #expect(abs(got - sum) <= 1e-6 * magnitude + 1e-30, "\(isa) row \(r) token \(t): \(got) vs \(sum)")
                }
            }
            // Alone: the same value bit for bit.
            let single = FloatBuffer(count: rows)
            let one = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: 1, cols: cols))
            for t in [0, 5, 8] {
                let qt = Q8Activations(x.pointer + t * cols, tokens: 1, cols: cols, memory: one.pointer)
                m.gemmQ8(rows: 0..<rows, qt, into: single.pointer, isa: isa)
                for r in 0..<rows { #expect(single.pointer[r] == y.pointer[t * rows + r], "\(isa) token \(t) row \(r)") }
            }
        }
    }
}

extension KernelTests {
    /// The interleaved layout holds the int4 matrix's values (every element), and its kernels agree bit for bit
    /// across instruction sets and with the Swift twins, for fp32 and for q8 activations, with 1…19 tokens (every
    /// token-tile width, several tiles) and rows in one block of 8 past a multiple of 16 (AVX-512's 8-row tail).
    @Test func interleavedKernelsAgreeBitForBitEverywhere() {
        let (rows, cols) = (40, 1056)
        let plain = KernelBenchmark.randomMatrix(.int4, rows: rows, cols: cols, seed: 9)
        let m = KernelBenchmark.randomMatrix(.int4x8, rows: rows, cols: cols, seed: 9)
        for r in 0..<rows { for c in 0..<cols { #expect(m.element(r, c) == plain.element(r, c), "row \(r) col \(c)") } }
        for tokens in [1, 3, 8, 19] {
            let x = KernelBenchmark.randomActivations(tokens * cols, seed: UInt64(tokens))
            let memory = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: tokens, cols: cols))
            let q = Q8Activations(x.pointer, tokens: tokens, cols: cols, memory: memory.pointer)
            let exactTwin = FloatBuffer(count: tokens * rows), q8Twin = FloatBuffer(count: tokens * rows)
            m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: exactTwin.pointer, isa: .generic)
            m.gemmQ8(rows: 0..<rows, q, into: q8Twin.pointer, isa: .generic)
            for isa in Self.fast {
                let y = FloatBuffer(count: tokens * rows), yq = FloatBuffer(count: tokens * rows)
                m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: y.pointer, isa: isa)
                m.gemmQ8(rows: 0..<rows, q, into: yq.pointer, isa: isa)
                #expect(y.array == exactTwin.array, "fp32 \(isa) \(tokens) tokens")
                #expect(yq.array == q8Twin.array, "q8 \(isa) \(tokens) tokens")
            }
            if KernelISA.avx512.isSupported && KernelISA.avx2.isSupported {
                // The AVX2 maddubs kernel on an AVX-512 machine too (it is what AVX2-only CPUs run).
                let yq = FloatBuffer(count: tokens * rows)
                m.gemmQ8(rows: 0..<rows, q, into: yq.pointer, isa: .avx2)
                #expect(yq.array == q8Twin.array)
            }
        }
    }
}

extension KernelTests {
    /// The interleaved int8 layout (`convert --resident int8`) holds the row-major matrix's values, and its kernels
    /// agree bit for bit across instruction sets (AVX2's madd tile on an AVX-512 machine too) and with the Swift
    /// twins, for fp32 and for two-part int8 activations, with 1…19 tokens and rows in an odd block of 8; the
    /// two-part product is Σ_c W[r, c]·x̃[t, c] (float64 of the two-part values) within float rounding; a token's
    /// result is the same alone.
    @Test func interleavedInt8KernelsAgreeBitForBitAndMatchTheExactProduct() {
        let (rows, cols) = (40, 1056)
        let plain = KernelBenchmark.randomMatrix(.int8, rows: rows, cols: cols, seed: 21)
        let m = KernelBenchmark.randomMatrix(.int8x8, rows: rows, cols: cols, seed: 21)
        #expect(m.takesQ16 && m.rowTile == 8)
        for r in 0..<rows { for c in 0..<cols { #expect(m.element(r, c) == plain.element(r, c), "row \(r) col \(c)") } }
        let isas = Self.fast + (KernelISA.avx512.isSupported && KernelISA.avx2.isSupported ? [.avx2] : [])
        for tokens in [1, 3, 8, 19] {
            let x = KernelBenchmark.randomActivations(tokens * cols, seed: UInt64(60 + tokens))
            x.pointer[300] = 3e3  // an outlier in its group
            let memory = FloatBuffer(count: Q16Activations.floatsNeeded(tokens: tokens, cols: cols))
            let q = Q16Activations(x.pointer, tokens: tokens, cols: cols, memory: memory.pointer)
            let exactTwin = FloatBuffer(count: tokens * rows), twin = FloatBuffer(count: tokens * rows)
            m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: exactTwin.pointer, isa: .generic)
            m.gemmQ16(rows: 0..<rows, q, into: twin.pointer, isa: .generic)
            expectExactProduct(m, q, twin)
            for isa in isas {
                let y = FloatBuffer(count: tokens * rows), yq = FloatBuffer(count: tokens * rows)
                m.gemm(rows: 0..<rows, x.pointer, tokens: tokens, into: y.pointer, isa: isa)
                m.gemmQ16(rows: 0..<rows, q, into: yq.pointer, isa: isa)
                #expect(y.array == exactTwin.array, "fp32 \(isa) \(tokens) tokens")
                #expect(yq.array == twin.array, "two-part \(isa) \(tokens) tokens")
                let one = FloatBuffer(count: Q16Activations.floatsNeeded(tokens: 1, cols: cols)), single = FloatBuffer(count: rows)
                let last = tokens - 1
                m.gemmQ16(rows: 0..<rows, Q16Activations(x.pointer + last * cols, tokens: 1, cols: cols, memory: one.pointer),
                          into: single.pointer, isa: isa)
                for r in 0..<rows { #expect(single.pointer[r] == yq.pointer[last * rows + r], "\(isa) token \(last) alone, row \(r)") }
            }
        }
    }

    /// Two-part int8 activations (`q8-gate-up-q16-down`'s down): the values are within d/256 of x (d/512 but where
    /// q2 is clamped) and nearer x than q8's alone; AVX2, AVX-512 VNNI and the Swift twin agree bit for bit with
    /// 1…19 tokens and rows in an odd block of 8; they give Σ_c W[r, c]·x̃[t, c] (float64 of the two-part values)
    /// within float rounding; a token's result is the same alone; a group of zeros or with a NaN is handled.
    @Test func twoPartActivationKernelsAgreeAndMatchTheExactProduct() {
        let (rows, cols) = (40, 1056)
        let m = KernelBenchmark.randomMatrix(.int4x8, rows: rows, cols: cols, seed: 19)
        #expect(m.takesQ16 && !KernelBenchmark.randomMatrix(.int4, rows: rows, cols: cols, seed: 19).takesQ16)
        for tokens in [1, 3, 8, 19] {
            let x = KernelBenchmark.randomActivations(tokens * cols, seed: UInt64(40 + tokens))
            for c in 64..<96 { x.pointer[c] = 0 }  // token 0's third group: all zeros
            x.pointer[200] = 1e4  // an outlier in its group
            let memory = FloatBuffer(count: Q16Activations.floatsNeeded(tokens: tokens, cols: cols))
            let q = Q16Activations(x.pointer, tokens: tokens, cols: cols, memory: memory.pointer)
            var worst: Float = 0, improved = 0
            for i in 0..<(tokens * cols) {
                let d = q.first.d[i / 32]
                guard d > 0 else { #expect(q.value(i / cols, i % cols) == 0 && x.pointer[i] == 0); continue }
                worst = max(worst, abs(q.value(i / cols, i % cols) - x.pointer[i]) / d)
                if abs(q.value(i / cols, i % cols) - x.pointer[i]) < abs(q.first.value(i / cols, i % cols) - x.pointer[i]) { improved += 1 }
            }
            #expect(worst <= 1.0 / 256 + 1e-6, "\(tokens) tokens: \(worst)")
            #expect(improved > tokens * cols / 2)
            let twin = FloatBuffer(count: tokens * rows)
            m.gemmQ16(rows: 0..<rows, q, into: twin.pointer, isa: .generic)
            expectExactProduct(m, q, twin)
            for isa in Self.fast + (KernelISA.avx512.isSupported && KernelISA.avx2.isSupported ? [.avx2] : []) {
                let y = FloatBuffer(count: tokens * rows)
                m.gemmQ16(rows: 0..<rows, q, into: y.pointer, isa: isa)
                #expect(y.array == twin.array, "\(isa) \(tokens) tokens")
                let one = FloatBuffer(count: Q16Activations.floatsNeeded(tokens: 1, cols: cols)), single = FloatBuffer(count: rows)
                let last = tokens - 1
                m.gemmQ16(rows: 0..<rows, Q16Activations(x.pointer + last * cols, tokens: 1, cols: cols, memory: one.pointer),
                          into: single.pointer, isa: isa)
                for r in 0..<rows { #expect(single.pointer[r] == y.pointer[last * rows + r], "\(isa) token \(last) alone, row \(r)") }
            }
        }
        // A NaN in a group: d is NaN, both parts 0, and the product is NaN, as fp32's would be.
        let x = KernelBenchmark.randomActivations(cols, seed: 7)
        x.pointer[33] = .nan
        let memory = FloatBuffer(count: Q16Activations.floatsNeeded(tokens: 1, cols: cols))
        let q = Q16Activations(x.pointer, tokens: 1, cols: cols, memory: memory.pointer)
        #expect((32..<64).allSatisfy { q.q2[$0] == 0 } && q.sums2[1] == 0)
        let y = FloatBuffer(count: rows)
        m.gemmQ16(rows: 0..<rows, q, into: y.pointer)
        #expect(y.array.allSatisfy { $0.isNaN })
    }
}

/// The kernel pool: every chunk exactly once, callers from several threads, nested calls, replacement.
@Suite(.serialized) struct KernelPoolTests {
    final class Counts: @unchecked Sendable {
        let p = UnsafeMutablePointer<Int>.allocate(capacity: 4096)
        init() { p.initialize(repeating: 0, count: 4096) }
        deinit { p.deallocate() }
    }

    @Test func everyChunkRunsExactlyOnce() {
        let pool = KernelPool(threads: 3, pin: nil)
        defer { pool.shutdown() }
        for n in [0, 1, 2, 7, 100, 4096] {
            let c = Counts()
            for _ in 0..<20 { pool.run(n) { k in c.p[k] += 1 } }
            for k in 0..<n { #expect(c.p[k] == 20, "chunk \(k) of \(n)") }
        }
    }

    @Test func concurrentCallersAndNestedCallsAreSafe() async {
        let pool = KernelPool(threads: 2, pin: nil)
        defer { pool.shutdown() }
        let results = Counts()
        await withTaskGroup(of: Void.self) { group in
            for caller in 0..<4 {
                group.addTask {
                    for _ in 0..<50 {
                        let c = Counts()
                        pool.run(64) { k in
                            // A kernel inside a chunk runs on the same thread (no deadlock, every inner chunk once).
                            pool.run(4) { i in c.p[k * 4 + i] += 1 }
                        }
                        if (0..<256).allSatisfy({ c.p[$0] == 1 }) { results.p[caller] += 1 }
                    }
                }
            }
        }
        for caller in 0..<4 { #expect(results.p[caller] == 50) }
    }

    /// A pool with a pin hook, installed for this thread only (the shared pool other suites use is untouched).
    @Test func pinnedPoolRunsItsHookAndServesThisThread() {
        let before = KernelPool.shared
        let pinned = Counts()
        let pool = KernelPool(threads: 3, pin: { i in pinned.p[i] = 1 })
        let c = Counts()
        KernelPool.using(pool) {
            #expect(Parallelism.threads == 3)
            parallelFor(30) { k in c.p[k] += 1 }
        }
        pool.shutdown()  // joins the workers: each has run its hook
        #expect((0..<30).allSatisfy { c.p[$0] == 1 })
        #expect(KernelPool.shared === before && KernelPool.current === before)
        #expect(pinned.p[1] == 1 && pinned.p[2] == 1, "every worker ran the pin hook")
    }
}

/// The peaks `bench kernels` divides by: measured for every ISA this CPU runs, finite, and in the order the
/// instructions dictate (an int8 dot instruction does four times an fp32 FMA's multiply-adds per lane width).
@Suite struct PeakTests {
    @Test func peaksAreMeasuredForEverySupportedISA() {
        #expect(KernelBenchmark.peak(.generic) == nil)
        for isa in [KernelISA.avx2, .avx512] where isa.isSupported {
            guard let p = KernelBenchmark.peak(isa) else {
                Issue.record("no peak for \(isa)")
                continue
            }
            #expect(p.fp32.isFinite && p.fp32 > 1, "\(isa): \(p.fp32) GFLOP/s")
            if let int8 = p.int8 { #expect(int8.isFinite && int8 > p.fp32, "\(isa): int8 \(int8) vs fp32 \(p.fp32)") }
        }
    }
}
