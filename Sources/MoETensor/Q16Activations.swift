import CMoEKernels

/// `tokens` rows of `cols` activations in two int8 parts per group of 32, for the routed experts' down projection
/// (`ExpertActivations.q8GateUpQ16Down`): x ≈ (q1 + q2/256) · d, with q1 and d the q8 form (`Q8Activations`:
/// d = max|x|/127, q1 = round(x/d)) and q2 = round(256 · (x − q1·d) / d) clamped to ±127. The error is at most
/// d/512 (d/256 where q2 is clamped), about a 65,000th of the group's largest value: what q8 alone rounds to
/// (d/2), divided by 256. Down's input, silu(gate)·up, has the outliers that q8 rounds worst (the gate refuses
/// q8 there); two parts keep its small values, and the integer tiles still multiply them (`gemmQ16`: two
/// `vpdpbusd` per four columns where q8 takes one). A view over memory the caller owns (`floatsNeeded` sizes it).
public struct Q16Activations {
    /// q1, d and Σq1 per group (the per-32 form only).
    public let first: Q8Activations
    public let q2: UnsafeMutablePointer<Int8>      // [tokens, cols]
    public let sums2: UnsafeMutablePointer<Int32>  // [tokens, cols/32]: Σ q2 per group
    public var tokens: Int { first.tokens }
    public var cols: Int { first.cols }

    /// Floats of memory `init(memory:)` takes for `tokens × cols`.
    public static func floatsNeeded(tokens: Int, cols: Int) -> Int {
        Q8Activations.floatsNeeded(tokens: tokens, cols: cols) + tokens * cols / 4 + tokens * cols / 32
    }

    /// Quantises `x [tokens, cols]` (cols a multiple of 32) into `memory` (`floatsNeeded` floats). A group whose
    /// d is not a positive finite number (all zeros; a NaN or an infinity, where d is NaN) gets q2 = 0.
    public init(_ x: UnsafePointer<Float>, tokens: Int, cols: Int, memory: UnsafeMutablePointer<Float>) {
        first = Q8Activations(x, tokens: tokens, cols: cols, memory: memory, forms: .per32)
        let groups = tokens * cols / 32
        let after = memory + Q8Activations.floatsNeeded(tokens: tokens, cols: cols)
        sums2 = UnsafeMutableRawPointer(after).bindMemory(to: Int32.self, capacity: groups)
        q2 = UnsafeMutableRawPointer(after + groups).bindMemory(to: Int8.self, capacity: tokens * cols)
        for b in 0..<groups {
            let d = first.d[b], v = x + 32 * b, q1 = first.q + 32 * b, out = q2 + 32 * b
            guard d > 0 && d.isFinite else {
                out.initialize(repeating: 0, count: 32)
                sums2[b] = 0
                continue
            }
            var sum: Int32 = 0
            for i in 0..<32 {
                let r = v[i].addingProduct(-Float(q1[i]), d)  // x − q1·d, rounded once
                let n = Int8(max(-127, min(127, (r / d * 256).rounded(.toNearestOrEven))))
                out[i] = n
                sum += Int32(n)
            }
            sums2[b] = sum
        }
    }

    /// The value of element `c` of token `t` as the products see it.
    public func value(_ t: Int, _ c: Int) -> Float {
        let i = t * cols + c
        return (Float(first.q[i]) + Float(q2[i]) * 0x1p-8) * first.d[i / 32]
    }
}

extension WeightMatrix {
    /// Whether `gemmQ16` multiplies this matrix: int4 interleaved by 8 rows (a store's routed experts), or int8
    /// interleaved by 8 (its resident matrices under `convert --resident int8`).
    public var takesQ16: Bool {
        switch encoding {
        case .int4g32x8, .int8g32x8: true
        default: false
        }
    }

    /// `y[t, r] = Σ_c W[r, c] · x̃[t, c]` with x̃ the two-part activations; rows split over the kernel pool.
    public func applyQ16(_ x: Q16Activations, into y: UnsafeMutablePointer<Float>) {
        splitRows { gemmQ16(rows: $0, x, into: y) }
    }

    /// `applyQ16` for output rows `rows` (whole blocks of the layout) on the calling thread: the VNNI kernel where
    /// `.avx512` runs with VNNI, else the AVX2 one; with `.generic` the twin. All three give the same bits: per
    /// group the exact integer ((Σ n·q1 − o·Σq1) << 8) + Σ n·q2 − o·Σq2 (n the stored nibble or byte, o its offset:
    /// 8 for int4, 128 for int8), then f = fma(Float(it), scale · (d/256), f).
    public func gemmQ16(rows range: Range<Int>, _ x: Q16Activations, into y: UnsafeMutablePointer<Float>,
                        isa: KernelISA = Kernels.isa) {
        let scales: UnsafeRawPointer, type: ScaleType, int8: Bool
        switch encoding {
        case .int4g32x8(let s, let t): (scales, type, int8) = (s, t, false)
        case .int8g32x8(let s, let t): (scales, type, int8) = (s, t, true)
        default: preconditionFailure("two-part activations are for the interleaved layouts")
        }
        precondition(x.cols == cols && range.lowerBound % rowTile == 0 && range.upperBound % rowTile == 0)
        guard !range.isEmpty else { return }
        if isa != .generic {
            var m = moe_matrix(data: data, scales: scales, rows: Int64(rows), cols: Int64(cols), scales_bf16: type == .bf16 ? 1 : 0)
            var first = x.first.c
            var second = moe_q8_acts(q: x.q2, d: x.first.d, sums: x.sums2, sums16: nil, q256: nil, d256: nil, sums256: nil)
            let vnni = isa == .avx512 && Self.hasVNNI
            let kernel = int8 ? (vnni ? moe_gemm_i8x8_q16_avx512vnni : moe_gemm_i8x8_q16_avx2)
                              : (vnni ? moe_gemm_q4x8_q16_avx512vnni : moe_gemm_q4x8_q16_avx2)
            kernel(&m, Int64(range.lowerBound), Int64(range.upperBound), &first, &second, Int64(x.tokens), y)
            return
        }
        if int8 {
            for r in range {
                for t in 0..<x.tokens { y[t * rows + r] = dotInterleavedInt8Q16(row: r, token: t, x, scales: scales, type: type) }
            }
            return
        }
        let groups = cols / 32
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        for r in range {
            for t in 0..<x.tokens {
                var f: Float = 0
                for g in 0..<groups {
                    let unit0 = Int4Interleaved.position(r, 32 * g, cols: cols).offset
                    let q1 = x.first.q + t * cols + 32 * g, q2 = x.q2 + t * cols + 32 * g
                    var s1 = -8 * x.first.sums[t * groups + g], s2 = -8 * x.sums2[t * groups + g]
                    for u in 0..<4 {
                        let w = bytes + unit0 + 32 * u
                        for j in 0..<4 {
                            let lo = Int32(w[j] & 0x0F), hi = Int32(w[j] >> 4)
                            s1 += lo * Int32(q1[8 * u + j]) + hi * Int32(q1[8 * u + 4 + j])
                            s2 += lo * Int32(q2[8 * u + j]) + hi * Int32(q2[8 * u + 4 + j])
                        }
                    }
                    let k = Self.groupScale(scales, type, Int4Interleaved.scaleIndex(r, group: g, cols: cols)) * (x.first.d[t * groups + g] * 0x1p-8)
                    f = f.addingProduct(Float((s1 << 8) + s2), k)
                }
                y[t * rows + r] = f
            }
        }
    }
}
