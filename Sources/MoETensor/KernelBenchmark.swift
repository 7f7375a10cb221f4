import CMoEKernels

/// Random matrices in every kernel encoding, and the timing of one `gemm` over them: what
/// `moestream bench kernels` prints and what the parity tests feed the kernels.
public enum KernelBenchmark {
    public enum Kind: String, CaseIterable, Sendable {
        case int4 = "int4-g32"
        /// int4 interleaved by 8 rows (`Int4Interleaved`), as stores hold routed experts.
        case int4x8 = "int4-x8"
        case int8 = "int8-g32"
        /// int8 interleaved by 8 rows (`Int8Interleaved`), as stores hold resident matrices under `--resident int8`.
        case int8x8 = "int8-x8"
        case bf16
        /// IEEE half: the KV cache's rows under `--kv-cache f16`.
        case f16
        case f32

        /// int4/int8 come in groups of 32 columns; bf16, f16 and f32 take any width (a scalar tail).
        public var grouped: Bool { self != .bf16 && self != .f16 && self != .f32 }
    }

    /// A `rows × cols` matrix of `kind` with random values (a fixed seed), scales bf16. `int4x8` holds the same
    /// values as `int4` with the same seed, `int8x8` as `int8` (rows a multiple of 8).
    public static func randomMatrix(_ kind: Kind, rows: Int, cols: Int, seed: UInt64 = 1) -> WeightMatrix {
        var rng = SplitMix(seed: seed)
        let groups = cols / 32
        switch kind {
        case .int4x8:
            let m = randomMatrix(.int4, rows: rows, cols: cols, seed: seed)
            guard case .int4g32(let scales, _) = m.encoding else { fatalError() }
            let data = AlignedBuffer(byteCount: rows * cols / 2), out = AlignedBuffer(byteCount: rows * groups * 2)
            Int4Interleaved.interleave(rows: rows, cols: cols, data: m.data, scales: scales, scaleBytes: 2,
                                       into: data.pointer, scales: out.pointer)
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer),
                                encoding: .int4g32x8(scales: UnsafeRawPointer(out.pointer), scaleType: .bf16), owners: [data, out])
        case .int8x8:
            let m = randomMatrix(.int8, rows: rows, cols: cols, seed: seed)
            guard case .int8g32(let scales, _) = m.encoding else { fatalError() }
            let data = AlignedBuffer(byteCount: rows * cols), out = AlignedBuffer(byteCount: rows * groups * 2)
            Int8Interleaved.interleave(rows: rows, cols: cols, data: m.data, scales: scales, scaleBytes: 2,
                                       into: data.pointer, scales: out.pointer)
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer),
                                encoding: .int8g32x8(scales: UnsafeRawPointer(out.pointer), scaleType: .bf16), owners: [data, out])
        case .int4, .int8:
            precondition(cols % 32 == 0)
            let bytes = kind == .int4 ? rows * cols / 2 : rows * cols
            let data = AlignedBuffer(byteCount: bytes), scales = AlignedBuffer(byteCount: rows * groups * 2)
            for i in 0..<bytes { data.pointer.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
            for i in 0..<(rows * groups) {
                let s = Float(0.002 + 0.014 * rng.unit())
                scales.pointer.storeBytes(of: floatToBF16(s), toByteOffset: 2 * i, as: UInt16.self)
            }
            let encoding: WeightMatrix.Encoding = kind == .int4
                ? .int4g32(scales: UnsafeRawPointer(scales.pointer), scaleType: .bf16)
                : .int8g32(scales: UnsafeRawPointer(scales.pointer), scaleType: .bf16)
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer), encoding: encoding, owners: [data, scales])
        case .bf16:
            let data = AlignedBuffer(byteCount: rows * cols * 2)
            for i in 0..<(rows * cols) {
                data.pointer.storeBytes(of: floatToBF16(Float(rng.normal() * 0.02)), toByteOffset: 2 * i, as: UInt16.self)
            }
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer), encoding: .bf16, owners: [data])
        case .f16:
            let data = AlignedBuffer(byteCount: rows * cols * 2)
            for i in 0..<(rows * cols) {
                data.pointer.storeBytes(of: Float16(Float(rng.normal())).bitPattern, toByteOffset: 2 * i, as: UInt16.self)
            }
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer), encoding: .f16, owners: [data])
        case .f32:
            let data = AlignedBuffer(byteCount: rows * cols * 4)
            for i in 0..<(rows * cols) {
                data.pointer.storeBytes(of: Float(rng.normal()), toByteOffset: 4 * i, as: Float.self)
            }
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer), encoding: .f32, owners: [data])
        }
    }

    /// A `rows × cols` matrix of GGML `type` with random quant bytes and every fp16 scale field set to a small
    /// normal value (for timing: the decoder's work does not depend on the values).
    public static func randomGGML(_ type: GGMLType, rows: Int, cols: Int, seed: UInt64 = 3) -> WeightMatrix {
        let rowBytes = type.rowBytes(elements: cols)!
        let data = AlignedBuffer(byteCount: rows * rowBytes)
        var rng = SplitMix(seed: seed)
        for i in 0..<(rows * rowBytes) { data.pointer.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        let fields: [Int]
        switch type {
        case .q4_0, .q5_0, .q8_0, .iq4_NL, .iq4_XS, .iq2_XXS, .iq2_XS, .iq2_S, .iq3_XXS, .iq3_S, .iq1_S: fields = [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: fields = [0, 2]
        case .q2_K: fields = [80, 82]
        case .q3_K: fields = [108]
        case .q6_K: fields = [208]
        case .tq1_0: fields = [52]
        case .tq2_0: fields = [64]
        default: fields = []
        }
        for b in 0..<(rows * rowBytes / type.typeSize) {
            for f in fields {
                data.pointer.storeBytes(of: Float16(Float(0.001 + 0.01 * rng.unit())).bitPattern, toByteOffset: b * type.typeSize + f, as: UInt16.self)
            }
            if type == .iq1_M {  // its d is the top nibbles of the four scale words
                let d = Float16(Float(0.001 + 0.01 * rng.unit())).bitPattern, at = b * type.typeSize + 48
                for w in 0..<4 {
                    let word = data.pointer.loadUnaligned(fromByteOffset: at + 2 * w, as: UInt16.self) & 0x0FFF
                    data.pointer.storeBytes(of: word | ((d >> UInt16(4 * w)) & 15) << 12, toByteOffset: at + 2 * w, as: UInt16.self)
                }
            }
        }
        return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer), encoding: .ggml(type), owners: [data])
    }

    /// `count` random activations in [-1, 1).
    public static func randomActivations(_ count: Int, seed: UInt64 = 2) -> FloatBuffer {
        var rng = SplitMix(seed: seed)
        let b = FloatBuffer(count: count)
        for i in 0..<count { b.pointer[i] = Float(rng.unit() * 2 - 1) }
        return b
    }

    /// Seconds for one single-threaded `gemmQ8` of all rows of an int4 or GGML matrix over already-quantised activations
    /// (the best of `repeats`), and the result.
    /// `tiles` (GGML types with an AMX kernel): on AMX tiles or not; nil lets `gemmQ8` choose.
    public static func timeQ8(_ m: WeightMatrix, _ x: FloatBuffer, tokens: Int, isa: KernelISA, repeats: Int,
                              tiles: Bool? = nil) -> (Double, FloatBuffer) {
        let memory = FloatBuffer(count: Q8Activations.floatsNeeded(tokens: tokens, cols: m.cols))
        let q = Q8Activations(x.pointer, tokens: tokens, cols: m.cols, memory: memory.pointer)
        let y = FloatBuffer(count: tokens * m.rows)
        let seconds = best(of: repeats) {
            if case .ggml(let type) = m.encoding, let tiles {
                m.gemmGGMLQ8(type, rows: 0..<m.rows, q, into: y.pointer, isa: isa, tiles: tiles)
            } else {
                m.gemmQ8(rows: 0..<m.rows, q, into: y.pointer, isa: isa)
            }
        }
        return (seconds, y)
    }

    /// The shortest of `repeats` timings of `body`.
    static func best(of repeats: Int, _ body: () -> Void) -> Double {
        var best = Double.infinity
        for _ in 0..<max(1, repeats) {
            let start = monotonicSeconds()
            body()
            best = min(best, monotonicSeconds() - start)
        }
        return best
    }

    /// Seconds for one single-threaded `gemmQ16` of all rows (interleaved int4) over two-part activations quantised
    /// once beforehand (best of `repeats`), and the result.
    public static func timeQ16(_ m: WeightMatrix, _ x: FloatBuffer, tokens: Int, isa: KernelISA, repeats: Int) -> (Double, FloatBuffer) {
        let memory = FloatBuffer(count: Q16Activations.floatsNeeded(tokens: tokens, cols: m.cols))
        let q = Q16Activations(x.pointer, tokens: tokens, cols: m.cols, memory: memory.pointer)
        let y = FloatBuffer(count: tokens * m.rows)
        return (best(of: repeats) { m.gemmQ16(rows: 0..<m.rows, q, into: y.pointer, isa: isa) }, y)
    }

    /// Seconds for one single-threaded `gemm` of all rows over `tokens` tokens (the best of `repeats`).
    /// One core's measured arithmetic peak with `isa`'s instructions (register-only loops, `peak.c`), best of three:
    /// fp32 GFLOP/s (an FMA is 2) and int8 GOP/s (a multiply-add is 2; on AVX-512 only with VNNI). Nil for the
    /// generic twins, which have no fixed instruction mix.
    public static func peak(_ isa: KernelISA) -> (fp32: Double, int8: Double?)? {
        guard isa != .generic, isa.isSupported else { return nil }
        func rate(_ opsPerRound: Double, _ f: @convention(c) (Int64) -> Double) -> Double { peakRate(opsPerRound, f) }
        switch isa {
        case .avx2: return (rate(12 * 8 * 2, moe_peak_fma_avx2), rate(12 * 32 * 2, moe_peak_dot8_avx2))
        case .avx512: return (rate(12 * 16 * 2, moe_peak_fma_avx512),
                              WeightMatrix.hasVNNI ? rate(12 * 64 * 2, moe_peak_dot8_avx512vnni) : nil)
        case .generic: return nil
        }
    }

    /// One core's `tdpbf16ps` peak in GFLOP/s (a multiply-add is 2), best of three; nil where the AMX kernel does not
    /// run (no AMX, or kernels other than avx512).
    public static func amxPeak() -> Double? {
        guard ResidentActivations.amxAvailable() else { return nil }
        return peakRate(4 * 8192 * 2, rounds: 2_000_000, moe_peak_amx_bf16)
    }

    /// One core's `vdpbf16ps` peak in GFLOP/s (a bf16 multiply-add is 2), best of three; nil without AVX512-BF16
    /// or with kernels other than avx512.
    public static func dpbf16Peak() -> Double? {
        guard ResidentActivations.hasAVX512BF16, Kernels.isa == .avx512 else { return nil }
        return peakRate(12 * 32 * 2, moe_peak_dpbf16_avx512)
    }

    /// A register-only peak loop's rate in G operations/s: `opsPerRound` · `rounds` over its best of three runs.
    static func peakRate(_ opsPerRound: Double, rounds: Int64 = 20_000_000, _ f: @convention(c) (Int64) -> Double) -> Double {
        opsPerRound * Double(rounds) / best(of: 3) { _ = f(rounds) } / 1e9
    }

    /// One thread, for the single-threaded timings.
    static let single = KernelPool.make(threads: 1)

    /// Seconds for one single-threaded bf16x2 product (on `kernel`) of all rows of a bf16 matrix, the activations
    /// packed in the timing (as every product packs them; best of `repeats`), and the result.
    public static func timeBF16(_ m: WeightMatrix, _ x: FloatBuffer, tokens: Int, repeats: Int, kernel: BF16x2Kernel) -> (Double, FloatBuffer) {
        let memory = UnsafeMutablePointer<UInt16>.allocate(capacity: BF16Tiles.valuesNeeded(tokens: tokens, cols: m.cols))
        defer { memory.deallocate() }
        let y = FloatBuffer(count: tokens * m.rows)
        var best = Double.infinity
        for _ in 0..<max(1, repeats) {
            let start = monotonicSeconds()
            let tiles = KernelPool.using(single) { BF16Tiles(x.pointer, tokens: tokens, cols: m.cols, memory: memory, kernel: kernel) }
            m.gemmBF16(rows: 0..<m.rows, tiles, into: y.pointer)
            best = min(best, monotonicSeconds() - start)
        }
        return (best, y)
    }

    public static func time(_ m: WeightMatrix, tokens: Int, isa: KernelISA, repeats: Int) -> Double {
        let x = randomActivations(tokens * m.cols), y = FloatBuffer(count: tokens * m.rows)
        var best = Double.infinity
        for _ in 0..<max(1, repeats) {
            let start = monotonicSeconds()
            m.gemm(rows: 0..<m.rows, x.pointer, tokens: tokens, into: y.pointer, isa: isa)
            best = min(best, monotonicSeconds() - start)
        }
        return best
    }
}

public func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}


#if canImport(Glibc)
import Glibc
#endif
