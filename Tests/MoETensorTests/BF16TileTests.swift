import Testing
@testable import MoETensor

/// The bf16x2 kernels (`--resident-activations bf16x2`: AMX tiles, AVX512-BF16's `vdpbf16ps`) against a float64
/// product of the split activations, and the guarantees the fp32 kernels give: a token's result is the same alone
/// or among others, however rows are split. Each kernel the CPU runs is tested (a Xeon with AMX has AVX512-BF16
/// too); where it runs neither, the tests say so and check only the packing.
@Suite struct BF16TileTests {
    /// The two bf16 parts of x, rounded to nearest even, as the packing splits it.
    static func split(_ f: Float) -> (hi: UInt16, lo: UInt16) {
        let hi = floatToBF16(f)
        return (hi, floatToBF16(f - bf16ToFloat(hi)))
    }

    @Test func packingRoundsToNearestEvenInTheTilesOrder() {
        let (tokens, cols) = (19, 64)  // two token blocks (the second padded), two chunks
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: 3)
        x.pointer[5] = Float(bitPattern: 0x3F80_8000)  // a tie: rounds to the even 0x3F80
        x.pointer[6] = Float(bitPattern: 0x3F81_8000)  // a tie: rounds up to the even 0x3F82
        let memory = UnsafeMutablePointer<UInt16>.allocate(capacity: BF16Tiles.valuesNeeded(tokens: tokens, cols: cols))
        defer { memory.deallocate() }
        let tiles = BF16Tiles(x.pointer, tokens: tokens, cols: cols, memory: memory, kernel: .amx)
        #expect(BF16Tiles.valuesNeeded(tokens: tokens, cols: cols) == 2 * 32 * cols)
        for b in 0..<2 {
            for k in 0..<2 {
                for h in 0..<2 {
                    for p in 0..<16 {
                        for t in 0..<16 {
                            for e in 0..<2 {
                                let v = tiles.values[((b * 2 + k) * 2 + h) * 512 + 32 * p + 2 * t + e]
                                let token = 16 * b + t, c = 32 * k + 2 * p + e
                                let parts: (hi: UInt16, lo: UInt16) = token < tokens ? Self.split(x.pointer[token * cols + c]) : (0, 0)
                                #expect(v == (h == 0 ? parts.hi : parts.lo), "block \(b) chunk \(k) part \(h) pair \(p) token \(t) element \(e)")
                            }
                        }
                    }
                }
            }
        }
        // Token 0's columns 5 (pair 2, second element) and 6 (pair 3, first): the ties went to even, and the lo
        // parts hold what hi dropped exactly.
        #expect(tiles.values[32 * 2 + 1] == 0x3F80 && bf16ToFloat(tiles.values[512 + 32 * 2 + 1]) == Float(bitPattern: 0x3F80_8000) - 1)
        #expect(tiles.values[32 * 3] == 0x3F82)
        // Sixteen significant bits: hi + lo is within 2⁻¹⁷ of every activation.
        for i in 0..<(tokens * cols) {
            let (hi, lo) = Self.split(x.pointer[i])
            #expect(abs(bf16ToFloat(hi) + bf16ToFloat(lo) - x.pointer[i]) <= abs(x.pointer[i]) * 0x1p-17)
        }
    }

    /// `vdpbf16ps`'s order: each token's row of chunks of 32 columns, hi then lo, rounded as the AMX order is
    /// (the packer is SIMD here, scalar there); a NaN stays NaN.
    @Test func rowPackingSplitsAsTheTilesDo() {
        guard ResidentActivations.hasAVX512BF16 else {
            print("note: no AVX512-BF16 here; the vdpbf16ps packing is compiled but not run")
            return
        }
        let (tokens, cols) = (19, 96)
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: 4)
        x.pointer[5] = Float(bitPattern: 0x3F80_8000)
        x.pointer[6] = Float(bitPattern: 0x3F81_8000)
        x.pointer[7] = .nan
        x.pointer[8] = -Float.infinity
        x.pointer[9] = Float(bitPattern: 0x0000_0003)  // a denormal
        let memory = UnsafeMutablePointer<UInt16>.allocate(capacity: BF16Tiles.valuesNeeded(tokens: tokens, cols: cols))
        defer { memory.deallocate() }
        let rows = BF16Tiles(x.pointer, tokens: tokens, cols: cols, memory: memory, kernel: .vdpbf16ps)
        for t in 0..<tokens {
            for c in 0..<cols {
                let (hi, lo) = Self.split(x.pointer[t * cols + c])
                let at = t * 2 * cols + 64 * (c / 32) + c % 32
                if x.pointer[t * cols + c].isNaN {
                    #expect(bf16ToFloat(rows.values[at]).isNaN)
                } else {
                    #expect(rows.values[at] == hi && rows.values[at + 32] == lo, "token \(t) column \(c)")
                }
            }
        }
        #expect(rows.values[5] == 0x3F80 && rows.values[6] == 0x3F82)
    }

    @Test(arguments: [(48, 1024, 1), (48, 1024, 9), (80, 2048, 37), (16, 32, 16)])
    func tilesMatchTheExactProductOfTheRoundedValues(shape: (Int, Int, Int)) {
        let (rows, cols, tokens) = shape
        for kernel in Self.kernelsThatRun() {
        let m = KernelBenchmark.randomMatrix(.bf16, rows: rows, cols: cols, seed: UInt64(rows + cols))
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: UInt64(tokens))
        let memory = UnsafeMutablePointer<UInt16>.allocate(capacity: BF16Tiles.valuesNeeded(tokens: tokens, cols: cols))
        defer { memory.deallocate() }
        let y = FloatBuffer(count: tokens * rows)
        m.applyBF16(BF16Tiles(x.pointer, tokens: tokens, cols: cols, memory: memory, kernel: kernel), into: y.pointer)
        for t in 0..<tokens {
            for r in 0..<rows {
                var s = 0.0, magnitude = 0.0
                for c in 0..<cols {
                    let (hi, lo) = Self.split(x.pointer[t * cols + c])
                    let p = Double(m.element(r, c)) * (Double(bf16ToFloat(hi)) + Double(bf16ToFloat(lo)))
                    s += p
                    magnitude += abs(p)
                }
                // Products of bf16 values are exact in fp32; the sums are fp32.
                let bound = 1e-6 * magnitude * Double(cols).squareRoot() + 1e-30
                #expect(abs(Double(y.pointer[t * rows + r]) - s) <= bound, "\(kernel): row \(r) token \(t): \(y.pointer[t * rows + r]) vs \(s)")
            }
        }
        }
    }

    /// 300 rows would not split into tiles; 336 rows × 8192 columns × 150 tokens crosses the kernel's row blocks
    /// (64; `vdpbf16ps`: 32), token super-blocks (2 blocks of 16), column spans (32 chunks of 32) and the
    /// `vdpbf16ps` kernel's passes over the tokens (128 at 8192 columns: `bf_pass_tokens`).
    @Test func aTokensResultDependsNeitherOnItsNeighboursNorOnTheRowSplit() {
        for kernel in Self.kernelsThatRun() {
        let (rows, cols, tokens) = (336, 8192, 150)
        let m = KernelBenchmark.randomMatrix(.bf16, rows: rows, cols: cols, seed: 11)
        #expect(m.takesBF16Tiles)
        #expect(!KernelBenchmark.randomMatrix(.bf16, rows: 300, cols: cols, seed: 11).takesBF16Tiles)
        let x = KernelBenchmark.randomActivations(tokens * cols, seed: 12)
        let memory = UnsafeMutablePointer<UInt16>.allocate(capacity: BF16Tiles.valuesNeeded(tokens: tokens, cols: cols))
        defer { memory.deallocate() }
        let whole = FloatBuffer(count: tokens * rows)
        m.gemmBF16(rows: 0..<rows, BF16Tiles(x.pointer, tokens: tokens, cols: cols, memory: memory, kernel: kernel), into: whole.pointer)
        let pooled = FloatBuffer(count: tokens * rows)
        m.applyBF16(BF16Tiles(x.pointer, tokens: tokens, cols: cols, memory: memory, kernel: kernel), into: pooled.pointer)
        #expect(pooled.array == whole.array, "\(kernel): through the pool")
        let single = FloatBuffer(count: rows)
        for t in [0, 15, 16, 77, 127, 128, 149] {
            let one = BF16Tiles(x.pointer + t * cols, tokens: 1, cols: cols, memory: memory, kernel: kernel)
            for split in [16, 64, 320] {
                m.gemmBF16(rows: 0..<split, one, into: single.pointer)
                m.gemmBF16(rows: split..<rows, one, into: single.pointer)
                for r in 0..<rows {
                    #expect(single.pointer[r] == whole.pointer[t * rows + r], "\(kernel): token \(t) row \(r) split \(split)")
                }
            }
        }
        }
    }

    /// (`Kernels.isa` is not switched here: tests run in parallel, and the model tests compare passes bit for bit.)
    @Test func kernelsOtherThanAVX512NeverTakeTheTiles() {
        #expect(!ResidentActivations.amxAvailable(isa: .avx2))
        #expect(!ResidentActivations.amxAvailable(isa: .generic))
        #expect(ResidentActivations.bf16x2Kernel(isa: .avx2) == nil && ResidentActivations.bf16x2Kernel(isa: .generic) == nil)
        #expect(KernelBenchmark.randomMatrix(.bf16, rows: 32, cols: 64, seed: 1).takesBF16Tiles == (ResidentActivations.bf16x2Kernel() != nil))
        // AMX first where it runs: it is the faster of the two.
        #expect(ResidentActivations.bf16x2Kernel(isa: .avx512) == (ResidentActivations.amxAvailable(isa: .avx512) ? .amx
            : ResidentActivations.hasAVX512BF16 && KernelISA.avx512.isSupported ? .vdpbf16ps : nil))
    }

    /// The bf16x2 kernels that run here with the kernels in use; says which do not.
    static func kernelsThatRun() -> [BF16x2Kernel] {
        var kernels: [BF16x2Kernel] = []
        if ResidentActivations.amxAvailable() { kernels.append(.amx) } else {
            print("note: no AMX-BF16 here (or no grant of the tile state, or kernels other than avx512); the AMX kernel is compiled but not run")
        }
        if ResidentActivations.hasAVX512BF16 && Kernels.isa == .avx512 { kernels.append(.vdpbf16ps) } else {
            print("note: no AVX512-BF16 here (or kernels other than avx512); the vdpbf16ps kernel is compiled but not run")
        }
        return kernels
    }
}
