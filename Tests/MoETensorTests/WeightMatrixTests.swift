import Testing
@testable import MoETensor

/// Kernels against a plain dequantize-then-multiply, for every encoding, at sizes with remainders.
@Suite struct WeightMatrixTests {
    struct LCG {
        var state: UInt64
        mutating func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 2001 - 1000) / 1000
        }
    }

    /// Builds a matrix in `encoding` from random values; returns it and its exact dequantized fp32 values.
    func makeMatrix(rows: Int, cols: Int, encoding: String, seed: UInt64) -> (WeightMatrix, [Float]) {
        var rng = LCG(state: seed)
        let values = (0..<(rows * cols)).map { _ in rng.next() }
        switch encoding {
        case "f32":
            let b = AlignedBuffer(byteCount: rows * cols * 4)
            let p = b.pointer.assumingMemoryBound(to: Float.self)
            for i in values.indices { p[i] = values[i] }
            return (WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(b.pointer), encoding: .f32, owners: [b]), values)
        case "bf16", "f16":
            let b = AlignedBuffer(byteCount: rows * cols * 2)
            let p = b.pointer.assumingMemoryBound(to: UInt16.self)
            var exact: [Float] = []
            for i in values.indices {
                if encoding == "bf16" {
                    p[i] = floatToBF16(values[i])
                    exact.append(bf16ToFloat(p[i]))
                } else {
                    let h = Float16(values[i])
                    p[i] = h.bitPattern
                    exact.append(Float(h))
                }
            }
            return (WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(b.pointer),
                                 encoding: encoding == "bf16" ? .bf16 : .f16, owners: [b]), exact)
        default:  // fp8 with 128×128 blocks: the edge blocks are partial here
            let br = 128, bc = 128
            let sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc
            let b = AlignedBuffer(byteCount: rows * cols)
            let s = AlignedBuffer(byteCount: sr * sc * 4)
            let q = b.pointer.assumingMemoryBound(to: UInt8.self)
            let sp = s.pointer.assumingMemoryBound(to: Float.self)
            for i in 0..<(sr * sc) { sp[i] = 0.5 + Float(i % 7) * 0.25 }
            var exact: [Float] = []
            for i in 0..<(rows * cols) {
                var byte = UInt8(truncatingIfNeeded: Int(values[i] * 1000) & 0xFF)
                if byte & 0x7F == 0x7F { byte = 0 }  // keep NaNs out
                q[i] = byte
                exact.append(e4m3ToFloat(byte) * sp[(i / cols / br) * sc + (i % cols) / bc])
            }
            return (WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(b.pointer),
                                 encoding: .fp8Block(scales: UnsafePointer(sp), blockRows: br, blockCols: bc), owners: [b, s]), exact)
        }
    }

    @Test(arguments: ["f32", "bf16", "f16", "fp8"])
    func applyMatchesDequantizedProduct(encoding: String) {
        let (rows, cols, tokens) = (131, 300, 3)
        let (w, exact) = makeMatrix(rows: rows, cols: cols, encoding: encoding, seed: 7)
        var rng = LCG(state: 99)
        let x = FloatBuffer((0..<(tokens * cols)).map { _ in rng.next() })
        let y = FloatBuffer(count: tokens * rows)
        w.apply(x.pointer, tokens: tokens, into: y.pointer)
        var worst: Double = 0
        for t in 0..<tokens {
            for r in 0..<rows {
                var s: Double = 0
                for c in 0..<cols { s += Double(exact[r * cols + c]) * Double(x.pointer[t * cols + c]) }
                worst = max(worst, abs(s - Double(y.pointer[t * rows + r])))
            }
        }
        let scale: Double = encoding == "fp8" ? 100 : 1  // fp8 values reach hundreds
        #expect(worst < 1e-4 * scale, "max error \(worst)")
    }

    @Test(arguments: ["f32", "bf16", "f16", "fp8"])
    func accumulateRowsIsTheTransposedProduct(encoding: String) {
        let (rows, cols) = (140, 37)
        let (w, exact) = makeMatrix(rows: rows, cols: cols, encoding: encoding, seed: 3)
        let first = 130, count = 10  // crosses the FP8 block boundary at row 128
        var rng = LCG(state: 5)
        // 7 tokens with strided weights and outputs, into the first 35 columns of rows 40 wide, starting from y's
        // own values; every kernel set gives the same bits (one fma chain per element), alone or in a block.
        let (tokens, aStride, yStride, columns) = (7, count + 3, 40, 35)
        let x = FloatBuffer((0..<(tokens * aStride)).map { _ in rng.next() })
        let start = FloatBuffer((0..<(tokens * yStride)).map { _ in rng.next() })
        var results: [[Float]] = []
        for isa in KernelISA.allCases where isa.isSupported {
            let y = FloatBuffer(start.array)
            w.accumulateRows(from: first, count: count, weights: x.pointer, stride: aStride, tokens: tokens, into: y.pointer,
                             stride: yStride, columns: columns, isa: isa)
            for t in 0..<tokens {
                for c in 0..<yStride {
                    var s = Double(start.pointer[t * yStride + c])
                    if c < columns {
                        for i in 0..<count { s += Double(x.pointer[t * aStride + i]) * Double(exact[(first + i) * cols + c]) }
                    }
                    #expect(abs(s - Double(y.pointer[t * yStride + c])) < 1e-3, "\(isa) token \(t) column \(c)")
                }
            }
            let alone = FloatBuffer(Array(start.array[(5 * yStride)..<(6 * yStride)]))
            w.accumulateRows(from: first, count: count, weights: x.pointer + 5 * aStride, stride: aStride, tokens: 1,
                             into: alone.pointer, stride: yStride, columns: columns, isa: isa)
            #expect(alone.array == Array(y.array[(5 * yStride)..<(6 * yStride)]), "\(isa): token 5 alone")
            results.append(y.array)
        }
        #expect(results.allSatisfy { $0 == results[0] }, "every kernel set, bit for bit")
    }

    @Test(arguments: ["f32", "bf16", "f16", "fp8"])
    func copyRowDequantizesExactly(encoding: String) {
        let (w, exact) = makeMatrix(rows: 130, cols: 129, encoding: encoding, seed: 11)
        let out = FloatBuffer(count: 129)
        w.copyRow(129, into: out.pointer)
        #expect(out.array == Array(exact[(129 * 129)..<(130 * 129)]))
    }

    @Test(arguments: ["bf16", "f16", "f32"])
    func resultsDoNotDependOnThreadCount(encoding: String) {
        // Each output is one sequential dot product: the parallel split cannot change a bit. The matrix runs on
        // pools of 1, 2, 3 and 5 threads (different row splits), each installed for this thread only.
        let (w, _) = makeMatrix(rows: 1031, cols: 512, encoding: encoding, seed: 1)
        var rng = LCG(state: 2)
        let x = FloatBuffer((0..<(5 * 512)).map { _ in rng.next() })
        var outputs: [[Float]] = []
        for threads in [1, 2, 3, 5] {
            let pool = KernelPool.make(threads: threads)
            defer { pool.shutdown() }
            for tokens in [1, 5] {
                let y = FloatBuffer(count: tokens * 1031)
                KernelPool.using(pool) {
                    #expect(Parallelism.threads == threads)
                    w.apply(x.pointer, tokens: tokens, into: y.pointer)
                }
                outputs.append(Array(UnsafeBufferPointer(start: y.pointer, count: tokens * 1031)))
            }
        }
        for (i, o) in outputs.enumerated() { #expect(o == outputs[i % 2], "\(encoding): run \(i)") }
        // And row by row on the calling thread.
        let one = FloatBuffer(count: 1)
        for r in stride(from: 0, to: 1031, by: 97) {
            w.gemm(rows: r..<(r + 1), x.pointer + 512, tokens: 1, into: one.pointer - r)
            #expect(outputs[1][1031 + r] == one.pointer[0])
        }
    }
}
