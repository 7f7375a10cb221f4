import CMoEKernels

/// A Linear layer's weight `W [rows = out, cols = in]` in its stored encoding, read by kernels that widen to
/// fp32 as they go. No fp32 copy of a weight matrix is ever made.
/// Sendable: a read-only view (every field is a `let`, kernels only read the bytes); whoever makes one keeps the bytes
/// it points at unchanged while it is in use.
public struct WeightMatrix: @unchecked Sendable {
    public enum Encoding: @unchecked Sendable {  // the pointers are read-only scales, kept alive by the matrix's `owners`
        case f32
        case bf16
        case f16
        /// Block FP8 (Kimi K2 Instruct, DeepSeek-V3): `W[i,j] = e4m3(q[i,j]) · scale[i/blockRows, j/blockCols]`.
        /// `scales` is `[ceil(rows/blockRows), ceil(cols/blockCols)]` fp32, row-major. (The checkpoint calls it
        /// `weight_scale_inv`, but it is multiplied.)
        case fp8Block(scales: UnsafePointer<Float>, blockRows: Int, blockCols: Int)
        /// Symmetric int4, one scale per 32 consecutive values of a row: `W = (nibble − 8) · scale`.
        /// `data` is `[rows, cols/2]` bytes; within each group of 32, byte j holds element j in its low nibble and
        /// element j + 16 in its high nibble (GGUF Q4_0's order, so one 16-byte load unpacks a whole group).
        /// `scales` is `[rows, cols/32]` of `scaleType`.
        case int4g32(scales: UnsafeRawPointer, scaleType: ScaleType)
        /// The same values with rows interleaved by 8 (`Int4Interleaved`: four columns of eight rows per 32
        /// bytes), the layout the int8 dot-product tiles read; rows a multiple of 8. Routed experts in a store.
        case int4g32x8(scales: UnsafeRawPointer, scaleType: ScaleType)
        /// Symmetric int8, one scale per 32 values: `W = q · scale`; `data` is `[rows, cols]` Int8.
        case int8g32(scales: UnsafeRawPointer, scaleType: ScaleType)
        /// The same values with rows interleaved by 8 and offset by 128 (`Int8Interleaved`: four columns of eight
        /// rows per 32 bytes), the layout the two-part int8 tiles read; rows a multiple of 8. A store's resident
        /// matrices under `convert --resident int8`.
        case int8g32x8(scales: UnsafeRawPointer, scaleType: ScaleType)
        /// A GGML block type as a GGUF file stores it (`GGMLType`): each row is `cols / blockSize` blocks, rows
        /// back to back. Multiplied by decoding a row exactly (`GGMLDequantize`, bit-exact to gguf-py) and taking
        /// fp32 dot products with it.
        case ggml(GGMLType)
    }

    /// How group scales are stored: bf16 (Kimi K2 Thinking's own) or fp32.
    public enum ScaleType: String, Sendable, Codable {
        case bf16 = "BF16"
        case f32 = "F32"

        public var byteSize: Int { self == .bf16 ? 2 : 4 }
    }

    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    public let encoding: Encoding
    /// Keep the weight bytes (and scales) alive.
    let owners: [AnyObject]

    public init(rows: Int, cols: Int, data: UnsafeRawPointer, encoding: Encoding, owners: [AnyObject]) {
        self.rows = rows
        self.cols = cols
        self.data = data
        self.encoding = encoding
        self.owners = owners
    }

    /// Bytes the weight occupies as stored (without scales).
    public var storedByteCount: Int {
        switch encoding {
        case .f32: rows * cols * 4
        case .bf16, .f16: rows * cols * 2
        case .fp8Block: rows * cols
        case .int4g32, .int4g32x8: rows * cols / 2
        case .int8g32, .int8g32x8: rows * cols
        case .ggml(let type): rows * (type.rowBytes(elements: cols) ?? 0)
        }
    }

    /// Scale `g` of row `r` for the group-32 encodings.
    @inline(__always)
    static func groupScale(_ scales: UnsafeRawPointer, _ type: ScaleType, _ index: Int) -> Float {
        switch type {
        case .bf16: bf16ToFloat(scales.load(fromByteOffset: 2 * index, as: UInt16.self))
        case .f32: scales.load(fromByteOffset: 4 * index, as: Float.self)
        }
    }

    /// `y[r] = Σ_c W[r, c] · x[c]` for output rows `rowRange`, one token.
    @inline(__always)
    public func dot(row r: Int, _ x: UnsafePointer<Float>) -> Float {
        switch encoding {
        case .f32:
            return dotF32(data.assumingMemoryBound(to: Float.self) + r * cols, x, cols)
        case .bf16:
            return dotBF16(data.assumingMemoryBound(to: UInt16.self) + r * cols, x, cols)
        case .f16:
            return dotF16(data.assumingMemoryBound(to: UInt16.self) + r * cols, x, cols)
        case .fp8Block(let scales, let blockRows, let blockCols):
            let scaleCols = (cols + blockCols - 1) / blockCols
            let scaleRow = scales + (r / blockRows) * scaleCols
            let w = data.assumingMemoryBound(to: UInt8.self) + r * cols
            return E4M3Table.values.withUnsafeBufferPointer { table in
                var s: Float = 0
                var b = 0
                var c = 0
                while c < cols {
                    let n = min(blockCols, cols - c)
                    s += dotE4M3(w + c, x + c, n, table.baseAddress!) * scaleRow[b]
                    c += n
                    b += 1
                }
                return s
            }
        case .int4g32(let scales, let type):
            let groups = cols / 32
            return dotInt4G32(data + r * cols / 2, x, groups: groups) { Self.groupScale(scales, type, r * groups + $0) }
        case .int4g32x8(let scales, let type):
            return dotInterleaved(row: r, x, scales: scales, type: type)
        case .int8g32x8(let scales, let type):
            return dotInterleavedInt8(row: r, x, scales: scales, type: type)
        case .int8g32(let scales, let type):
            let groups = cols / 32
            return dotInt8G32(data.assumingMemoryBound(to: Int8.self) + r * cols, x, groups: groups) {
                Self.groupScale(scales, type, r * groups + $0)
            }
        case .ggml(let type):
            // One token through the same path as a batch, so the two agree bit for bit.
            var y: Float = 0
            gemmGGML(type, rows: r..<(r + 1), x, tokens: 1, into: &y, outputRows: 1, isa: Kernels.isa)
            return y
        }
    }

    /// `gemm` for GGML rows, `y [tokens, outputRows]` indexed from the range's first row when `outputRows` is 1
    /// (a single row), from 0 otherwise. Rows are decoded exactly (`GGMLDequantize`) into this thread's kernel
    /// scratch, 16 at a time; then the fp32 kernel of `isa` multiplies them, which gives each (row, token) the same
    /// operations whatever the tile (tiles.h), so a token's result is the same alone or among others. The generic
    /// ISA takes `dotF32` of each decoded row instead.
    func gemmGGML(_ type: GGMLType, rows range: Range<Int>, _ x: UnsafePointer<Float>, tokens: Int, into y: UnsafeMutablePointer<Float>,
                  outputRows: Int? = nil, isa: KernelISA) {
        let rowBytes = storedByteCount / rows
        let ldy = outputRows ?? rows, base = outputRows == nil ? 0 : range.lowerBound
        let chunk = 16
        let scratch = ThreadScratch.floats(chunk * cols + chunk * tokens, slot: .kernel)
        let out = scratch + chunk * cols
        let kernel = isa == .generic ? nil : Kernels.gemm(.f32, isa)
        var r0 = range.lowerBound
        while r0 < range.upperBound {
            let n = min(chunk, range.upperBound - r0)
            for i in 0..<n { GGMLDequantize.values(type, from: data + (r0 + i) * rowBytes, count: cols, into: scratch + i * cols) }
            if let kernel {
                var m = moe_matrix(data: UnsafeRawPointer(scratch), scales: nil, rows: Int64(n), cols: Int64(cols), scales_bf16: 0)
                kernel(&m, 0, Int64(n), x, Int64(tokens), out)
                for t in 0..<tokens { for i in 0..<n { y[t * ldy + r0 + i - base] = out[t * n + i] } }
            } else {
                for i in 0..<n { for t in 0..<tokens { y[t * ldy + r0 + i - base] = dotF32(scratch + i * cols, x + t * cols, cols) } }
            }
            r0 += n
        }
    }
    /// `y[t, r] = Σ_c W[r, c] · x[t, c]` for `tokens` rows of `x [tokens, cols]` into `y [tokens, rows]`.
    ///
    /// Rows are split across the kernel pool's workers (on a worker of a pool already, the caller does it all);
    /// each worker runs `gemm` on its rows, which reads each weight once for all tokens.
    public func apply(_ x: UnsafePointer<Float>, tokens: Int, into y: UnsafeMutablePointer<Float>) {
        splitRows { gemm(rows: $0, x, tokens: tokens, into: y) }
    }

    /// Runs `body` on row ranges across the kernel pool: chunks of at least ~64 KB of weights (and whole tiles:
    /// 4 rows, the interleaved layout's blocks of 8, or `tile` (a power of two) when given), a few per worker so
    /// none idles.
    @inline(__always)
    public func splitRows(tile: Int? = nil, _ body: (Range<Int>) -> Void) {
        let tile = tile ?? rowTile
        let minimumRows = max(tile, (65_536 / max(1, storedByteCount / max(rows, 1))) & ~(tile - 1))
        let pool = KernelPool.current
        let workers = pool.width
        let chunks = max(1, min(workers * 4, rows / minimumRows))
        let size = ((rows + chunks - 1) / chunks + tile - 1) & ~(tile - 1)
        let count = (rows + size - 1) / size
        pool.run(count) { k in body((k * size)..<min(rows, (k + 1) * size)) }
    }

    /// Rows a split must keep together: the interleaved layouts' blocks of 8, else 4.
    @inline(__always)
    var rowTile: Int {
        switch encoding {
        case .int4g32x8: Int4Interleaved.blockRows
        case .int8g32x8: Int8Interleaved.blockRows
        default: 4
        }
    }

    /// `apply` for output rows `rows` only, on the calling thread: the kernel of `Kernels.isa` for this
    /// encoding, or the generic Swift twin.
    @inline(__always)
    public func gemm(rows range: Range<Int>, _ x: UnsafePointer<Float>, tokens: Int, into y: UnsafeMutablePointer<Float>,
                     isa: KernelISA = Kernels.isa) {
        guard !range.isEmpty else { return }
        precondition(rowTile == 4 || (range.lowerBound % rowTile == 0 && (range.upperBound % rowTile == 0 || range.upperBound == rows)),
                     "the interleaved layout is multiplied in whole blocks of \(rowTile) rows")
        if case .ggml(let type) = encoding { return gemmGGML(type, rows: range, x, tokens: tokens, into: y, isa: isa) }
        if let kernel = Kernels.gemm(encoding, isa) {
            var m = moe_matrix(data: data, scales: nil, rows: Int64(rows), cols: Int64(cols), scales_bf16: 0)
            switch encoding {
            case .int4g32(let scales, let type), .int8g32(let scales, let type), .int4g32x8(let scales, let type),
                 .int8g32x8(let scales, let type):
                m.scales = scales
                m.scales_bf16 = type == .bf16 ? 1 : 0
            default: break
            }
            kernel(&m, Int64(range.lowerBound), Int64(range.upperBound), x, Int64(tokens), y)
            return
        }
        for r in range {
            for t in 0..<tokens { y[t * rows + r] = dot(row: r, x + t * cols) }
        }
    }

    /// Rows `range` as a matrix of their own, for the dense encodings (bf16, f16, f32: a row is `cols` values at
    /// a fixed stride); nil for the others. Attention multiplies one head's slice of kv_b with it.
    public func rows(_ range: Range<Int>) -> WeightMatrix? {
        let width: Int
        switch encoding {
        case .f32: width = 4
        case .bf16, .f16: width = 2
        default: return nil
        }
        precondition(range.lowerBound >= 0 && range.upperBound <= rows)
        return WeightMatrix(rows: range.count, cols: cols, data: data + range.lowerBound * cols * width, encoding: encoding,
                            owners: owners)
    }

    /// Row `r` widened to fp32 into `out [cols]`: an embedding lookup.
    public func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        switch encoding {
        case .f32:
            out.update(from: data.assumingMemoryBound(to: Float.self) + r * cols, count: cols)
        case .bf16:
            let w = data.assumingMemoryBound(to: UInt16.self) + r * cols
            for c in 0..<cols { out[c] = bf16ToFloat(w[c]) }
        case .f16:
            let w = data.assumingMemoryBound(to: UInt16.self) + r * cols
            for c in 0..<cols { out[c] = f16ToFloat(w[c]) }
        case .fp8Block(let scales, let blockRows, let blockCols):
            let scaleCols = (cols + blockCols - 1) / blockCols
            let w = data.assumingMemoryBound(to: UInt8.self) + r * cols
            for c in 0..<cols { out[c] = e4m3ToFloat(w[c]) * scales[(r / blockRows) * scaleCols + c / blockCols] }
        case .int4g32, .int8g32, .int4g32x8, .int8g32x8:
            for c in 0..<cols { out[c] = element(r, c) }
        case .ggml(let type):
            GGMLDequantize.values(type, from: data + r * (storedByteCount / rows), count: cols, into: out)
        }
    }

    /// One weight, dequantized: for tests, embeddings and the rarely used transposed product.
    @inline(__always)
    public func element(_ r: Int, _ c: Int) -> Float {
        switch encoding {
        case .f32: return data.assumingMemoryBound(to: Float.self)[r * cols + c]
        case .bf16: return bf16ToFloat(data.assumingMemoryBound(to: UInt16.self)[r * cols + c])
        case .f16: return f16ToFloat(data.assumingMemoryBound(to: UInt16.self)[r * cols + c])
        case .fp8Block(let scales, let blockRows, let blockCols):
            let scaleCols = (cols + blockCols - 1) / blockCols
            return e4m3ToFloat(data.load(fromByteOffset: r * cols + c, as: UInt8.self))
                * scales[(r / blockRows) * scaleCols + c / blockCols]
        case .int4g32(let scales, let type):
            let g = c / 32, j = c % 32
            let byte = data.load(fromByteOffset: r * cols / 2 + g * 16 + (j & 15), as: UInt8.self)
            let nibble = j < 16 ? byte & 0xF : byte >> 4
            return Float(Int(nibble) - 8) * Self.groupScale(scales, type, r * (cols / 32) + g)
        case .int4g32x8(let scales, let type):
            let (offset, high) = Int4Interleaved.position(r, c, cols: cols)
            let byte = data.load(fromByteOffset: offset, as: UInt8.self)
            return Float(Int(high ? byte >> 4 : byte & 0xF) - 8)
                * Self.groupScale(scales, type, Int4Interleaved.scaleIndex(r, group: c / 32, cols: cols))
        case .int8g32(let scales, let type):
            return Float(data.load(fromByteOffset: r * cols + c, as: Int8.self))
                * Self.groupScale(scales, type, r * (cols / 32) + c / 32)
        case .int8g32x8(let scales, let type):
            return Float(Int(data.load(fromByteOffset: Int8Interleaved.offset(r, c, cols: cols), as: UInt8.self)) - 128)
                * Self.groupScale(scales, type, Int8Interleaved.scaleIndex(r, group: c / 32, cols: cols))
        case .ggml(let type):
            // The block that holds (r, c), decoded whole.
            let block = c / type.blockSize
            return withUnsafeTemporaryAllocation(of: Float.self, capacity: type.blockSize) { out in
                GGMLDequantize.values(type, from: data + r * (storedByteCount / rows) + block * type.typeSize,
                                      count: type.blockSize, into: out.baseAddress!)
                return out[c % type.blockSize]
            }
        }
    }
}

extension WeightMatrix {
    /// `y[t·yStride + c] += Σ_i a[t·aStride + i] · W[firstRow + i, c]` for `tokens` tokens and the first `columns`
    /// columns: the transposed product `Wᵀa` over a block of rows. MLA's absorbed attention folds kv_b's key rows
    /// into the queries with it (bf16), and sums the cached latent rows weighted by the attention (f32). Each
    /// y[t, c] is one chain `y = fma(a[t, i], W[i, c], y)` over i ascending: the C kernels for f32 and bf16 with
    /// `isa`, the same chain in Swift otherwise, so a token's result does not depend on the tokens beside it.
    public func accumulateRows(from firstRow: Int, count: Int, weights a: UnsafePointer<Float>, stride aStride: Int,
                               tokens: Int, into y: UnsafeMutablePointer<Float>, stride yStride: Int,
                               columns: Int? = nil, isa: KernelISA = Kernels.isa) {
        let width = columns ?? cols
        precondition(firstRow >= 0 && count >= 0 && firstRow + count <= rows && width <= cols)
        guard count > 0, tokens > 0, width > 0 else { return }
        if let kernel = Kernels.rows(encoding, isa) {
            let bytes = encoding.isBF16 || encoding.isF16 ? 2 : 4
            kernel(data + firstRow * cols * bytes, Int64(cols), Int64(count), Int64(width), a, Int64(aStride), Int64(tokens),
                   y, Int64(yStride))
            return
        }
        for t in 0..<tokens {
            for c in 0..<width {
                var s = y[t * yStride + c]
                for i in 0..<count { s = s.addingProduct(a[t * aStride + i], element(firstRow + i, c)) }
                y[t * yStride + c] = s
            }
        }
    }
}

extension WeightMatrix.Encoding {
    var isBF16: Bool {
        if case .bf16 = self { return true }
        return false
    }

    var isF16: Bool {
        if case .f16 = self { return true }
        return false
    }
}
