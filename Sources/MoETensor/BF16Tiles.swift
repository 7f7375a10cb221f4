import CMoEKernels

/// How the resident bf16 matrices (attention projections, the dense MLP, shared experts, the output head) multiply:
/// with fp32 activations (exact to float rounding: `--exact`, the library's default) or on AMX tiles with each
/// activation split into two bf16 parts, x ≈ hi + lo with 16 significant bits (`tdpbf16ps`: every product exact in
/// fp32, sums in fp32; kernels_amx.c), the command line's default where the CPU has AMX-BF16. Routers and the
/// attention's own products stay fp32 either way: a router's choice is discrete. `q8` is for GGUF models, whose
/// resident matrices are GGML blocks: those of the block types but TQ1_0/TQ2_0 (`GGMLType.quantisesResidentInputs`)
/// multiply activations quantised to int8 per 32 or 256 values (`Q8Activations`, llama.cpp's arithmetic for these
/// files), bf16 ones take bf16x2 where AMX runs, the rest fp32. A model's setting (`KimiModel.residentActivations`).
public enum ResidentActivations: String, CaseIterable, Sendable {
    case fp32
    case bf16x2
    case q8

    /// Whether this CPU, with the kernels `isa`, multiplies on AMX tiles (AVX-512 kernels, AMX-BF16, and Linux's
    /// grant of the tile state). `--kernels avx2` turns them off, as it stands for a CPU without AVX-512.
    public static func amxAvailable(isa: KernelISA = Kernels.isa) -> Bool { isa == .avx512 && hasAMX }

    static let hasAMX = moe_cpu_has_amx_bf16() != 0
}

/// `tokens` rows of `cols` activations split into two bf16 parts (hi = bf16(x), lo = bf16(x − hi), to nearest
/// even) in the order AMX tiles read them (kernels_amx.c): token blocks of 16 (the last padded with zeros), chunks of
/// 32 columns, hi then lo, pairs of columns interleaved per token. A view over memory the caller owns
/// (`valuesNeeded` sizes it); packed in parallel over the kernel pool.
public struct BF16Tiles {
    public let values: UnsafeMutablePointer<UInt16>
    public let tokens: Int
    public let cols: Int

    /// UInt16 values `init(memory:)` fills for `tokens × cols`.
    public static func valuesNeeded(tokens: Int, cols: Int) -> Int { 2 * ((tokens + 15) / 16) * 16 * cols }

    /// Packs `x [tokens, cols]` (cols a multiple of 32) into `memory` (`valuesNeeded` values).
    public init(_ x: UnsafePointer<Float>, tokens: Int, cols: Int, memory: UnsafeMutablePointer<UInt16>) {
        precondition(cols % 32 == 0 && tokens > 0)
        self.values = memory
        self.tokens = tokens
        self.cols = cols
        let blocks = (tokens + 15) / 16
        KernelPool.current.run(blocks) { b in moe_pack_bf16_amx(x, Int64(tokens), Int64(cols), Int64(b), Int64(b + 1), memory) }
    }
}

extension WeightMatrix {
    /// Rows the AMX tiles take at a time.
    public static let amxTileRows = 16

    /// Whether `applyBF16` can take this matrix here: bf16 weights, rows a multiple of 16, columns of 32, and AMX.
    public var takesBF16Tiles: Bool {
        guard case .bf16 = encoding else { return false }
        return rows % Self.amxTileRows == 0 && cols % 32 == 0 && ResidentActivations.amxAvailable()
    }

    /// `y[t, r] = Σ_c W[r, c] · (hi + lo)[t, c]` on AMX tiles, rows split over the kernel pool in whole tiles.
    public func applyBF16(_ x: BF16Tiles, into y: UnsafeMutablePointer<Float>) {
        splitRows(tile: Self.amxTileRows) { gemmBF16(rows: $0, x, into: y) }
    }

    /// `applyBF16` for output rows `range` (multiples of 16) on the calling thread.
    public func gemmBF16(rows range: Range<Int>, _ x: BF16Tiles, into y: UnsafeMutablePointer<Float>) {
        precondition(takesBF16Tiles && x.cols == cols)
        precondition(range.lowerBound % Self.amxTileRows == 0 && range.upperBound % Self.amxTileRows == 0,
                     "AMX tiles multiply whole blocks of \(Self.amxTileRows) rows")
        guard !range.isEmpty else { return }
        var m = moe_matrix(data: data, scales: nil, rows: Int64(rows), cols: Int64(cols), scales_bf16: 0)
        moe_gemm_bf16_amx(&m, Int64(range.lowerBound), Int64(range.upperBound), x.values, Int64(x.tokens), y)
    }
}
