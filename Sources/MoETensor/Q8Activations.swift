import CMoEKernels

/// How routed experts multiply: with the activations in fp32 (exact to float rounding: `--exact`), or quantised
/// to int8 per 32 values (per 256 for K-quant GGML experts) and multiplied with integer dot products (llama.cpp's
/// Q4_0 × Q8_0 and Q*_K × Q8_K arithmetic) — into gate and up only (`q8-gate-up`), or into down as well (`q8`, as llama.cpp does,
/// and the default for GGML experts; down's input, silu(gate)·up, has the outliers that int8 rounds worst). Int4
/// experts and GGML experts of every block type (legacy, K-quants, i-quants, ternary: `GGMLType.hasQ8Kernel`) take
/// the q8 paths; float ones run fp32 whatever the setting. `q8-gate-up-q16-down` (the command line's default for
/// int4 experts, within the quality gate of docs/performance.md) is q8-gate-up with down's input in two int8 parts
/// (`Q16Activations`, error a 65,000th of a group's largest value) on the integer tiles, for interleaved int4
/// experts (other encodings take down in fp32 under it). A model's setting
/// (`KimiModel.expertActivations`).
public enum ExpertActivations: String, CaseIterable, Sendable {
    case fp32
    case q8GateUp = "q8-gate-up"
    case q8GateUpQ16Down = "q8-gate-up-q16-down"
    case q8
}

/// Which forms of the activations a product needs: per 32 values (int4 experts, the legacy GGML types, IQ4_NL)
/// or per 256 (the GGML types in super-blocks: `WeightMatrix.q8Forms`).
public struct Q8Forms: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let per32 = Q8Forms(rawValue: 1)
    public static let per256 = Q8Forms(rawValue: 2)
    public static let all: Q8Forms = [.per32, .per256]
}

/// `tokens` rows of `cols` activations quantised per group of 32: `x ≈ q · d` with d = max|x|/127 and
/// q = round(x/d), plus Σq per group and per half group (16 values: the GGML types' sub-blocks). When cols is a
/// multiple of 256, also quantised per 256 (llama.cpp's Q8_K, what the K-quant kernels take: one scale a
/// super-block, so their float work is per 256 values): `q256`, `d256` and Σq256 per 16 values. Only the `forms`
/// asked for are computed (the other's memory is left as it was); the products check theirs is there. A block
/// with a NaN or an infinity gets d = NaN and q = 0, so the products give NaN, as fp32 would. A view over memory
/// the caller owns (`floatsNeeded` sizes it).
public struct Q8Activations {
    public let q: UnsafeMutablePointer<Int8>      // [tokens, cols]
    public let d: UnsafeMutablePointer<Float>     // [tokens, cols/32]
    public let sums: UnsafeMutablePointer<Int32>  // [tokens, cols/32]
    public let sums16: UnsafeMutablePointer<Int16>  // [tokens, cols/16]
    /// Per 256, when cols is a multiple of 256.
    public let q256: UnsafeMutablePointer<Int8>?       // [tokens, cols]
    public let d256: UnsafeMutablePointer<Float>?      // [tokens, cols/256]
    public let sums256: UnsafeMutablePointer<Int16>?   // [tokens, cols/16]
    public let tokens: Int
    public let cols: Int
    /// The forms computed (per 256 only where cols is a multiple of 256).
    public let forms: Q8Forms

    /// Floats of memory `init(memory:)` takes for `tokens × cols`: q (1 byte a value), d and sums (4 bytes a
    /// group), sums16 (2 bytes a half group), and the per-256 form (q256, d256, sums256).
    public static func floatsNeeded(tokens: Int, cols: Int) -> Int {
        tokens * cols / 4 + 3 * tokens * cols / 32 + tokens * cols / 4 + tokens * cols / 256 + tokens * cols / 32
    }

    /// Quantises `x [tokens, cols]` (cols a multiple of 32) into `memory` (`floatsNeeded` floats), in the `forms`
    /// asked for (`WeightMatrix.q8Forms` of the matrices it will meet).
    public init(_ x: UnsafePointer<Float>, tokens: Int, cols: Int, memory: UnsafeMutablePointer<Float>, forms: Q8Forms = .all) {
        precondition(cols % 32 == 0)
        let groups = tokens * cols / 32
        self.tokens = tokens
        self.cols = cols
        self.forms = cols % 256 == 0 ? forms : forms.subtracting(.per256)
        d = memory
        sums = UnsafeMutableRawPointer(memory + groups).bindMemory(to: Int32.self, capacity: groups)
        sums16 = UnsafeMutableRawPointer(memory + 2 * groups).bindMemory(to: Int16.self, capacity: 2 * groups)
        q = UnsafeMutableRawPointer(memory + 3 * groups).bindMemory(to: Int8.self, capacity: tokens * cols)
        if forms.contains(.per32) {
            Self.quantise(x, count: tokens * cols, block: 32, q: q, d: d, sums16: sums16)
            for g in 0..<groups { sums[g] = Int32(sums16[2 * g]) + Int32(sums16[2 * g + 1]) }
        }
        if cols % 256 == 0 && forms.contains(.per256) {
            let after = memory + 3 * groups + tokens * cols / 4, blocks = tokens * cols / 256
            let d256 = after, sums256 = UnsafeMutableRawPointer(after + blocks).bindMemory(to: Int16.self, capacity: 2 * groups)
            let q256 = UnsafeMutableRawPointer(after + blocks + groups).bindMemory(to: Int8.self, capacity: tokens * cols)
            Self.quantise(x, count: tokens * cols, block: 256, q: q256, d: d256, sums16: sums256)
            (self.q256, self.d256, self.sums256) = (q256, d256, sums256)
        } else {
            (q256, d256, sums256) = (nil, nil, nil)
        }
    }

    /// `x [count]` in blocks of `block` values: d = max|x|/127 per block, q = round(x/d) (half away from zero),
    /// and Σq per 16 values; a block with a NaN or an infinity: d = NaN, q = 0. The C kernel (quantise_q8.c,
    /// where the CPU has AVX2 and the kernels are not the generic ones) or its Swift twin, which give the same
    /// bytes: `Kernels.isa` chooses, or `isa`.
    static func quantise(_ x: UnsafePointer<Float>, count: Int, block: Int, q: UnsafeMutablePointer<Int8>,
                         d: UnsafeMutablePointer<Float>, sums16: UnsafeMutablePointer<Int16>, isa: KernelISA = Kernels.isa) {
        if isa != .generic {
            moe_quantise_q8_avx2(x, Int64(count), Int32(block), q, d, sums16)
            return
        }
        for b in 0..<(count / block) {
            let v = x + block * b
            var amax: Float = 0, finite = true
            for i in 0..<block {
                amax = max(amax, abs(v[i]))
                finite = finite && !v[i].isNaN
            }
            guard finite && amax.isFinite else {
                d[b] = .nan
                (q + block * b).initialize(repeating: 0, count: block)
                (sums16 + block / 16 * b).initialize(repeating: 0, count: block / 16)
                continue
            }
            let scale = amax / 127
            let inverse: Float = scale > 0 ? 1 / scale : 0
            for h in 0..<(block / 16) {
                var sum: Int16 = 0
                for i in (16 * h)..<(16 * h + 16) {
                    let n = Int8((v[i] * inverse).rounded(.toNearestOrAwayFromZero))
                    q[block * b + i] = n
                    sum += Int16(n)
                }
                sums16[block / 16 * b + h] = sum
            }
            d[b] = scale
        }
    }

    /// The value of element `c` of token `t` as the products see it (`q · d`).
    public func value(_ t: Int, _ c: Int) -> Float { Float(q[t * cols + c]) * d[(t * cols + c) / 32] }

    /// The same in the per-256 form (K-quant products).
    public func value256(_ t: Int, _ c: Int) -> Float { Float(q256![t * cols + c]) * d256![(t * cols + c) / 256] }
}

extension WeightMatrix {
    /// `y[t, r] = Σ_c W[r, c] · x̃[t, c]` with x̃ the quantised activations, for int4 weights; rows split over
    /// the kernel pool as `apply` does.
    public func applyQ8(_ x: Q8Activations, into y: UnsafeMutablePointer<Float>) {
        splitRows { gemmQ8(rows: $0, x, into: y) }
    }

    /// Whether the AVX-512 q8 kernel (VNNI) runs here; without VNNI, AVX-512 machines use the AVX2 one.
    static let hasVNNI = moe_cpu_has_avx512vnni() != 0

    /// `applyQ8` for output rows `rows` on the calling thread: with `.avx512` the VNNI kernel where the CPU has
    /// it, else the AVX2 kernel; with `.generic` the twin: per group, the exact integer Σ nibble·q less 8·Σq,
    /// scaled by w_scale · d.
    public func gemmQ8(rows range: Range<Int>, _ x: Q8Activations, into y: UnsafeMutablePointer<Float>,
                       isa: KernelISA = Kernels.isa) {
        precondition(x.cols == cols && x.forms.isSuperset(of: q8Forms))
        guard !range.isEmpty else { return }
        if case .ggml(let type) = encoding { return gemmGGMLQ8(type, rows: range, x, into: y, isa: isa) }
        let scales: UnsafeRawPointer, type: ScaleType, interleaved: Bool
        switch encoding {
        case .int4g32x8(let s, let t):
            precondition(range.lowerBound % rowTile == 0 && range.upperBound % rowTile == 0,
                         "the interleaved layout is multiplied in whole blocks of \(rowTile) rows")
            (scales, type, interleaved) = (s, t, true)
        case .int4g32(let s, let t): (scales, type, interleaved) = (s, t, false)
        default: preconditionFailure("Q8 activations are for int4 and GGML weights")
        }
        if isa != .generic {
            var m = moe_matrix(data: data, scales: scales, rows: Int64(rows), cols: Int64(cols),
                               scales_bf16: type == .bf16 ? 1 : 0)
            var acts = x.c
            let vnni = isa == .avx512 && Self.hasVNNI
            let kernel = interleaved ? (vnni ? moe_gemm_q4x8_q8_avx512vnni : moe_gemm_q4x8_q8_avx2)
                                     : (vnni ? moe_gemm_q4_q8_avx512vnni : moe_gemm_q4_q8_avx2)
            kernel(&m, Int64(range.lowerBound), Int64(range.upperBound), &acts, Int64(x.tokens), y)
            return
        }
        if interleaved {
            for r in range {
                for t in 0..<x.tokens { y[t * rows + r] = dotInterleavedQ8(row: r, token: t, x, scales: scales, type: type) }
            }
            return
        }
        let groups = cols / 32
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        for r in range {
            for t in 0..<x.tokens {
                var acc: Float = 0, correction: Float = 0
                for g in 0..<groups {
                    let packed = bytes + r * (cols / 2) + 16 * g, q = x.q + t * cols + 32 * g
                    var dot: Int32 = 0
                    for j in 0..<16 {
                        dot += Int32(packed[j] & 0x0F) * Int32(q[j]) + Int32(packed[j] >> 4) * Int32(q[j + 16])
                    }
                    let k = Self.groupScale(scales, type, r * groups + g) * x.d[t * groups + g]
                    acc = k * Float(dot) + acc
                    correction = k * Float(x.sums[t * groups + g]) + correction
                }
                y[t * rows + r] = acc - 8 * correction
            }
        }
    }
}

extension Q8Activations {
    /// The view the C kernels take.
    var c: moe_q8_acts {
        moe_q8_acts(q: q, d: d, sums: sums, sums16: sums16, q256: q256, d256: d256, sums256: sums256)
    }
}
