import CMoEKernels

/// How the resident bf16 matrices (attention projections, the dense MLP, shared experts, the output head) multiply:
/// with fp32 activations (exact to float rounding: `--exact`, the library's default) or with each activation split
/// into two bf16 parts, x ≈ hi + lo with 16 significant bits, on AMX tiles (`tdpbf16ps`, kernels_amx.c) or with
/// AVX512-BF16 (`vdpbf16ps`, kernels_bf16dp.c): every product exact in fp32, sums in fp32. That is the command
/// line's default where the CPU has either (`bf16x2Kernel`). Routers and the
/// attention's own products stay fp32 either way: a router's choice is discrete. `q8` is for GGUF models, whose
/// resident matrices are GGML blocks: those of the block types but TQ1_0/TQ2_0 (`GGMLType.quantisesResidentInputs`)
/// multiply activations quantised to int8 per 32 or 256 values (`Q8Activations`, llama.cpp's arithmetic for these
/// files), bf16 ones take bf16x2 where it runs, the rest fp32. A model's setting (`KimiModel.residentActivations`).
public enum ResidentActivations: String, CaseIterable, Sendable {
    case fp32
    case bf16x2
    case q8

    /// Whether this CPU, with the kernels `isa`, multiplies on AMX tiles (AVX-512 kernels, AMX-BF16, and Linux's
    /// grant of the tile state). `--kernels avx2` turns them off, as it stands for a CPU without AVX-512.
    public static func amxAvailable(isa: KernelISA = Kernels.isa) -> Bool { isa == .avx512 && hasAMX }

    /// The kernel that multiplies bf16x2 here with the kernels `isa`: AMX tiles where they run, else AVX512-BF16's
    /// `vdpbf16ps` (Zen 4, Zen 5); nil without either (then bf16x2 is refused and fp32 is the default).
    public static func bf16x2Kernel(isa: KernelISA = Kernels.isa) -> BF16x2Kernel? {
        guard isa == .avx512 else { return nil }
        return hasAMX ? .amx : hasAVX512BF16 ? .vdpbf16ps : nil
    }

    /// The setting as the statistics report it: bf16x2 with the kernel that runs it here, and what int8 resident
    /// matrices (`convert --resident int8`, `int8`) multiply with: two int8 parts under any setting but fp32.
    public func described(int8: Bool = false) -> String {
        if int8 && self != .fp32 { return "two-part int8 (int8 matrices)" }
        return self == .bf16x2 ? "bf16x2 (\(Self.bf16x2Kernel()?.rawValue ?? "no kernel here: fp32"))" : rawValue
    }

    static let hasAMX = moe_cpu_has_amx_bf16() != 0
    public static let hasAVX512BF16 = moe_cpu_has_avx512_bf16() != 0
}

/// The two kernels of bf16x2. They do the same arithmetic (products of bf16 values exact in fp32, fp32 sums) and
/// differ in the order of the sums, so each keeps its own guarantees (a token's result alone or in a batch) and a
/// run uses one of them throughout.
public enum BF16x2Kernel: String, Sendable {
    /// `tdpbf16ps` on AMX tiles (kernels_amx.c).
    case amx
    /// `vdpbf16ps`, 16 lanes per row and token (kernels_bf16dp.c).
    case vdpbf16ps
}

/// `tokens` rows of `cols` activations split into two bf16 parts (hi = bf16(x), lo = bf16(x − hi), to nearest
/// even) in the order the kernel reads them. AMX tiles (kernels_amx.c): token blocks of 16 (the last padded with
/// zeros), chunks of 32 columns, hi then lo, pairs of columns interleaved per token. `vdpbf16ps` (kernels_bf16dp.c):
/// each token's row of chunks of 32 columns, hi then lo. A view over memory the caller owns (`valuesNeeded` sizes
/// it for either); packed in parallel over the kernel pool.
public struct BF16Tiles {
    public let values: UnsafeMutablePointer<UInt16>
    public let tokens: Int
    public let cols: Int
    /// Whose order the values are in (and so which kernel multiplies them).
    public let kernel: BF16x2Kernel

    /// UInt16 values `init(memory:)` fills for `tokens × cols` (the AMX order's, which pads tokens; the other takes
    /// 2 · tokens · cols).
    public static func valuesNeeded(tokens: Int, cols: Int) -> Int { 2 * ((tokens + 15) / 16) * 16 * cols }

    /// Packs `x [tokens, cols]` (cols a multiple of 32) into `memory` (`valuesNeeded` values) for `kernel` (the
    /// machine's by default).
    public init(_ x: UnsafePointer<Float>, tokens: Int, cols: Int, memory: UnsafeMutablePointer<UInt16>,
                kernel: BF16x2Kernel? = ResidentActivations.bf16x2Kernel()) {
        precondition(cols % 32 == 0 && tokens > 0)
        self.values = memory
        self.tokens = tokens
        self.cols = cols
        self.kernel = kernel ?? .amx
        let blocks = (tokens + 15) / 16
        switch self.kernel {
        case .amx:
            KernelPool.current.run(blocks) { b in moe_pack_bf16_amx(x, Int64(tokens), Int64(cols), Int64(b), Int64(b + 1), memory) }
        case .vdpbf16ps:
            KernelPool.current.run(blocks) { b in
                moe_pack_bf16x2_rows(x, Int64(tokens), Int64(cols), Int64(16 * b), Int64(min(tokens, 16 * b + 16)), memory)
            }
        }
    }
}

extension WeightMatrix {
    /// Rows the AMX tiles take at a time.
    public static let amxTileRows = 16

    /// Whether `applyBF16` can take this matrix here: bf16 weights, rows a multiple of 16, columns of 32, and a
    /// bf16x2 kernel (`ResidentActivations.bf16x2Kernel`). (The `vdpbf16ps` kernel takes any rows; the rule is
    /// the AMX tiles', kept for both so that a model multiplies the same matrices on either.)
    public var takesBF16Tiles: Bool {
        guard case .bf16 = encoding else { return false }
        return rows % Self.amxTileRows == 0 && cols % 32 == 0 && ResidentActivations.bf16x2Kernel() != nil
    }

    /// `y[t, r] = Σ_c W[r, c] · (hi + lo)[t, c]` with `x`'s kernel, rows split over the kernel pool in whole tiles.
    public func applyBF16(_ x: BF16Tiles, into y: UnsafeMutablePointer<Float>) {
        splitRows(tile: Self.amxTileRows) { gemmBF16(rows: $0, x, into: y) }
    }

    /// `applyBF16` for output rows `range` (multiples of 16) on the calling thread.
    public func gemmBF16(rows range: Range<Int>, _ x: BF16Tiles, into y: UnsafeMutablePointer<Float>) {
        guard case .bf16 = encoding else { preconditionFailure("bf16x2 multiplies bf16 weights") }
        precondition(rows % Self.amxTileRows == 0 && cols % 32 == 0 && x.cols == cols)
        precondition(range.lowerBound % Self.amxTileRows == 0 && range.upperBound % Self.amxTileRows == 0,
                     "bf16x2 multiplies whole blocks of \(Self.amxTileRows) rows")
        guard !range.isEmpty else { return }
        var m = moe_matrix(data: data, scales: nil, rows: Int64(rows), cols: Int64(cols), scales_bf16: 0)
        switch x.kernel {
        case .amx:
            precondition(ResidentActivations.hasAMX, "AMX tiles asked for where they do not run")
            moe_gemm_bf16_amx(&m, Int64(range.lowerBound), Int64(range.upperBound), x.values, Int64(x.tokens), y)
        case .vdpbf16ps:
            precondition(ResidentActivations.hasAVX512BF16, "vdpbf16ps asked for on a CPU without AVX512-BF16")
            moe_gemm_bf16x2_dp(&m, Int64(range.lowerBound), Int64(range.upperBound), x.values, Int64(x.tokens), y)
        }
    }
}
