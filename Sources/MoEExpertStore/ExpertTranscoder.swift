import MoESystem
import MoETensor

/// Writes one source matrix into an expert extent in the store's encoding: values passed through when source
/// and target agree (INT4 → int4 with its rows interleaved by 8, FP8 → fp8, BF16 → bf16: no re-quantizing), row by
/// row otherwise.
enum ExpertTranscoder {
    static func encode(_ src: WeightMatrix, as layout: ExpertLayout, into extent: UnsafeMutableRawPointer,
                       at m: MatrixLayout, tensor: String) throws(StoreError) {
        let data = extent + m.offset
        let scales = m.scaleOffset.map { extent + $0 }
        switch (layout.encoding, src.encoding) {
        case (.int4, .int4g32(let s, let type)) where type == layout.scaleType:
            // The same nibbles and scales, rows interleaved by 8 for the kernels.
            Int4Interleaved.interleave(rows: m.rows, cols: m.cols, data: src.data, scales: s, scaleBytes: type.byteSize,
                                       into: data, scales: scales!)
        case (.int4, _):
            // Quantised row by row (row-major, Q4_0 order), then interleaved.
            let type = layout.scaleType ?? .bf16
            let rowMajor = UnsafeMutableRawPointer.allocate(byteCount: m.bytes + m.scaleBytes!, alignment: 64)
            defer { rowMajor.deallocate() }
            let row = FloatBuffer(count: src.cols)
            for r in 0..<src.rows {
                src.copyRow(r, into: row.pointer)
                try refuseNonFinite(row.pointer, row: r, cols: src.cols, tensor: tensor)
                GroupQuantization.quantizeInt4(row: row.pointer, cols: src.cols, scaleType: type,
                                               packed: rowMajor.assumingMemoryBound(to: UInt8.self) + r * src.cols / 2,
                                               scales: rowMajor + m.bytes + r * (src.cols / 32) * type.byteSize)
            }
            Int4Interleaved.interleave(rows: m.rows, cols: m.cols, data: rowMajor, scales: rowMajor + m.bytes,
                                       scaleBytes: type.byteSize, into: data, scales: scales!)
        case (.fp8, .fp8Block(let s, let br, let bc)) where br == layout.blockRows && bc == layout.blockCols:
            data.copyMemory(from: src.data, byteCount: m.bytes)
            scales!.copyMemory(from: UnsafeRawPointer(s), byteCount: m.scaleBytes!)
        case (.bf16, .bf16), (.f16, .f16), (.f32, .f32):
            data.copyMemory(from: src.data, byteCount: m.bytes)
        case (.fp8, _):
            throw .unsupportedSource(file: tensor, reason: "fp8 experts can only be passed through from a block-FP8 source with the same blocks")
        case (.ggml, .ggml), (.ggml, .f32), (.ggml, .f16), (.ggml, .bf16):
            // A GGUF's blocks, bit for bit (the layer's type may be smaller than the space the layout gives it).
            precondition(src.storedByteCount <= m.bytes, "\(tensor): \(src.storedByteCount) bytes in a space of \(m.bytes)")
            data.copyMemory(from: src.data, byteCount: src.storedByteCount)
        case (.ggml, _):
            throw .unsupportedSource(file: tensor, reason: "ggml experts are passed through from a GGUF file only")
        default:
            let row = FloatBuffer(count: src.cols)
            for r in 0..<src.rows {
                src.copyRow(r, into: row.pointer)
                if layout.encoding == .int8 { try refuseNonFinite(row.pointer, row: r, cols: src.cols, tensor: tensor) }
                encodeRow(row.pointer, r, layout, data, scales, cols: src.cols)
            }
        }
    }

    /// Throws if row `r` of `tensor` holds a NaN or an infinity, which a group scale cannot represent. (Rows passed
    /// through, or widened to bf16/f16/f32, keep such values: the model's non-finite-logits check names them.)
    static func refuseNonFinite(_ w: UnsafePointer<Float>, row r: Int, cols: Int, tensor: String) throws(StoreError) {
        if let c = GroupQuantization.firstNonFinite(w, count: cols) {
            throw .nonFiniteWeight(tensor: tensor, row: r, column: c, value: w[c])
        }
    }

    /// fp32 row `r` into the target encoding (round-to-nearest-even for bf16/f16; group quantization for int).
    static func encodeRow(_ w: UnsafePointer<Float>, _ r: Int, _ layout: ExpertLayout, _ data: UnsafeMutableRawPointer,
                          _ scales: UnsafeMutableRawPointer?, cols: Int) {
        switch layout.encoding {
        case .bf16:
            let out = data.assumingMemoryBound(to: UInt16.self) + r * cols
            for c in 0..<cols { out[c] = floatToBF16(w[c]) }
        case .f16:
            let out = data.assumingMemoryBound(to: UInt16.self) + r * cols
            for c in 0..<cols { out[c] = Float16(w[c]).bitPattern }
        case .f32:
            (data.assumingMemoryBound(to: Float.self) + r * cols).update(from: w, count: cols)
        case .int4:
            preconditionFailure("int4 experts are interleaved by `encode`")
        case .int8:
            let type = layout.scaleType ?? .f32
            GroupQuantization.quantizeInt8(row: w, cols: cols, scaleType: type, values: data.assumingMemoryBound(to: Int8.self) + r * cols,
                                           scales: scales! + r * (cols / 32) * type.byteSize)
        case .fp8, .ggml:
            preconditionFailure("\(layout.encoding) is pass-through only")
        }
    }
}
