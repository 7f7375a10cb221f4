import Foundation
import MoECheckpoint
import MoESystem
import MoETensor

extension StoreConverter {
    /// Everything decided before a byte is written: the expert layout, the resident tensors with their output
    /// dtypes and offsets, and the total size. Deterministic for a given source and options.
    struct Plan {
        struct ResidentTensor {
            enum Producer {
                /// Copy the source tensor's bytes unchanged.
                case copy(source: String)
                /// Widen each row of the matrix `base` (any encoding) to fp32 and round it to bf16.
                case bf16(base: String, rows: Int, cols: Int)
                /// Widen each row of `base` to fp32 and quantise it to int8 per 32 values (`GroupQuantization.quantizeInt8`,
                /// fp32 scales): the values (`scales` false) or the scales; `interleaved`: in `Int8Interleaved`'s layout
                /// (blocks of 8 rows, values offset by 128, stored as U8), else row-major I8.
                case int8(base: String, rows: Int, cols: Int, scales: Bool, interleaved: Bool)
                /// A GGUF source: the tensor's bytes unchanged (`decoded` false) or decoded to fp32 (`GGUFConversion`).
                case gguf(name: String, decoded: Bool)
            }
            let name: String
            let dtype: DType
            let shape: [Int]
            let bytes: Int
            let producer: Producer
            var offset = 0
        }

        let layout: ExpertLayout
        var residentTensors: [ResidentTensor]
        let residentHeader: [UInt8]
        let residentFileBytes: Int
        let expertFileBytes: Int
        let totalBytes: Int

        init(_ src: ConversionSource, experts: ExpertsOption, resident: ResidentOption) throws(StoreError) {
            let c = src.config
            guard !c.moeLayers.isEmpty else {
                throw .unsupportedSource(file: src.configPath, reason: "the model has no MoE layers: nothing to stream")
            }
            self.init(layout: try Self.expertLayout(src, experts), residentTensors: try Self.residentTensors(src, resident),
                      experts: c.numRoutedExperts, moeLayers: c.moeLayers.count)
        }

        /// Lays out the resident file (header, then the tensors) and sizes the whole store.
        init(layout: ExpertLayout, residentTensors tensors: [ResidentTensor], experts: Int, moeLayers: Int,
             metadata: [String: String] = [:]) {
            self.layout = layout
            residentTensors = tensors
            // Data order: widest elements first, so every tensor is aligned to its element size.
            residentTensors.sort { ($0.dtype.byteSize, $1.name) > ($1.dtype.byteSize, $0.name) }
            var offset = 0
            var header: [String: Any] = [:]
            for i in residentTensors.indices {
                residentTensors[i].offset = offset
                let t = residentTensors[i]
                header[t.name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.bytes]] as [String: Any]
                offset += t.bytes
            }
            header["__metadata__"] = ["format": "pt", "producer": "moestream convert"].merging(metadata) { a, _ in a }
            var json = Array((try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])) ?? Data())
            // Pad the header with spaces so the data starts on a 4096-byte boundary.
            let padded = roundUp(8 + json.count, 4096) - 8
            json += [UInt8](repeating: UInt8(ascii: " "), count: padded - json.count)
            residentHeader = withUnsafeBytes(of: UInt64(json.count).littleEndian, Array.init) + json
            for i in residentTensors.indices { residentTensors[i].offset += residentHeader.count }
            residentFileBytes = residentHeader.count + offset
            expertFileBytes = layout.extentBytes * experts
            totalBytes = residentFileBytes + expertFileBytes * moeLayers
        }

        static func expertLayout(_ src: ConversionSource, _ option: ExpertsOption) throws(StoreError) -> ExpertLayout {
            let c = src.config
            let probeBase = "model.layers.\(c.moeLayers[0]).mlp.experts.0.gate_proj"
            let probe = try src.matrix(probeBase, rows: c.moeIntermediateSize, cols: c.hiddenSize)
            let encoding: ExpertEncoding
            var scaleType: WeightMatrix.ScaleType? = nil
            var block: (Int, Int)? = nil
            switch (option, probe.encoding) {
            case (.int4, .int4g32(_, let t)), (.source, .int4g32(_, let t)), (.int4, .int4g32x8(_, let t)),
                 (.source, .int4g32x8(_, let t)):
                encoding = .int4; scaleType = t
            case (.int4, _): encoding = .int4; scaleType = .bf16
            case (.int8, _): encoding = .int8; scaleType = .f32
            case (.bf16, _), (.source, .bf16): encoding = .bf16
            case (.source, .f16): encoding = .f16
            case (.source, .f32): encoding = .f32
            case (.source, .fp8Block(_, let r, let cc)): encoding = .fp8; block = (r, cc)
            case (.source, .int8g32), (.source, .int8g32x8): encoding = .int8; scaleType = .f32
            case (.source, .ggml(let t)):
                throw .unsupportedSource(file: src.configPath, reason: "experts in GGML \(t) are converted from the GGUF file itself")
            }
            if encoding == .int4 || encoding == .int8 {
                for (what, n) in [("hidden_size", c.hiddenSize), ("moe_intermediate_size", c.moeIntermediateSize)] where n % 32 != 0 {
                    throw .unsupportedSource(file: src.configPath, reason: "\(what) \(n) is not a multiple of 32, as group-32 \(encoding.rawValue) needs")
                }
            }
            return ExpertLayout(encoding: encoding, scaleType: scaleType, blockRows: block?.0, blockCols: block?.1,
                                hidden: c.hiddenSize, intermediate: c.moeIntermediateSize)
        }

        /// The int8 companion of a `--resident bf16+int8` store (resident-int8.safetensors): the int8 matrices (and
        /// their scales) that `--resident int8` would write, and nothing else; the bf16 file holds everything.
        static func int8Companion(_ src: ConversionSource, layout: ExpertLayout) throws(StoreError) -> Plan {
            let int8 = try residentTensors(src, .int8).filter { if case .int8 = $0.producer { true } else { false } }
            return Plan(layout: layout, residentTensors: int8, experts: 0, moeLayers: 0, metadata: ["companion": "int8"])
        }

        /// Every source tensor that is not a routed expert, with what it becomes in the store (`bf16+int8`: as
        /// `bf16`, the companion being `int8Companion`).
        static func residentTensors(_ src: ConversionSource, _ option: ResidentOption) throws(StoreError) -> [ResidentTensor] {
            let c = src.config
            var out: [ResidentTensor] = []
            for full in src.checkpoint.tensorNames {
                guard full.hasPrefix(c.tensorPrefix) else { continue }
                let name = String(full.dropFirst(c.tensorPrefix.count))
                if ConversionSource.isRoutedExpert(name) || name.hasSuffix("rotary_emb.inv_freq") { continue }
                if let l = ConversionSource.layerIndex(name), l >= c.numLayers { continue }  // multi-token-prediction layers
                guard let (_, entry) = src.checkpoint.entry(full) else { continue }
                let isMatrix = entry.shape.count == 2
                if name.hasSuffix(".weight_scale_inv") || name.hasSuffix(".weight_scale") || name.hasSuffix(".weight_shape") {
                    // Scales travel with their weight: kept beside an FP8 weight kept as is, folded in otherwise.
                    if option == .source && name.hasSuffix(".weight_scale_inv") {
                        out.append(.init(name: name, dtype: entry.dtype, shape: entry.shape, bytes: entry.range.count, producer: .copy(source: full)))
                    }
                    continue
                }
                if option == .int8, let (base, rows, cols) = Self.int8Candidate(name, entry) {
                    // Laid out for the two-part int8 tiles where the rows come in blocks of 8 (every K2 matrix).
                    let interleaved = Int8Interleaved.fits(rows: rows, cols: cols)
                    out.append(.init(name: base + ".weight", dtype: interleaved ? .u8 : .i8, shape: [rows, cols], bytes: rows * cols,
                                     producer: .int8(base: base, rows: rows, cols: cols, scales: false, interleaved: interleaved)))
                    out.append(.init(name: base + ".weight_scale", dtype: .f32, shape: [rows, cols / 32], bytes: rows * cols / 32 * 4,
                                     producer: .int8(base: base, rows: rows, cols: cols, scales: true, interleaved: interleaved)))
                    continue
                }
                if name.hasSuffix(".weight_packed") {
                    let base = String(name.dropLast(".weight_packed".count))
                    let shape = [entry.shape[0], entry.shape[1] * 8]
                    out.append(.init(name: base + ".weight", dtype: .bf16, shape: shape, bytes: shape[0] * shape[1] * 2,
                                     producer: .bf16(base: base, rows: shape[0], cols: shape[1])))
                    continue
                }
                let keep = option == .source || !isMatrix || entry.dtype == .bf16 || !entry.dtype.isFloatingPoint
                if keep {
                    out.append(.init(name: name, dtype: entry.dtype, shape: entry.shape, bytes: entry.range.count, producer: .copy(source: full)))
                } else {
                    let base = String(name.dropLast(".weight".count))
                    guard name.hasSuffix(".weight") else {
                        throw .unsupportedSource(file: src.checkpoint.path(of: full), reason: "'\(full)': cannot convert a \(entry.dtype.rawValue) matrix that is not a Linear weight")
                    }
                    out.append(.init(name: name, dtype: .bf16, shape: entry.shape, bytes: entry.shape[0] * entry.shape[1] * 2,
                                     producer: .bf16(base: base, rows: entry.shape[0], cols: entry.shape[1])))
                }
            }
            return out
        }

        /// A Linear weight `--resident int8` quantises: a matrix (`.weight`, or INT4's `.weight_packed`) whose rows are
        /// whole groups of 32, except the embeddings (one row read per token), the routers (their scores pick the
        /// experts) and kv_b (attention reads it by rows and transposed, which the int8 kernels do not do).
        static func int8Candidate(_ name: String, _ entry: SafetensorsFile.Entry) -> (base: String, rows: Int, cols: Int)? {
            int8Candidate(name, dtype: entry.dtype, shape: entry.shape)
        }

        static func int8Candidate(_ name: String, dtype: DType, shape: [Int]) -> (base: String, rows: Int, cols: Int)? {
            guard shape.count == 2, dtype.isFloatingPoint || dtype == .i8 || name.hasSuffix(".weight_packed") else { return nil }
            let packed = name.hasSuffix(".weight_packed")
            guard packed || name.hasSuffix(".weight") else { return nil }
            let base = String(name.dropLast(packed ? ".weight_packed".count : ".weight".count))
            let (rows, cols) = (shape[0], shape[1] * (packed ? 8 : 1))
            guard cols % 32 == 0, !base.hasSuffix("embed_tokens"), !base.hasSuffix(".mlp.gate"), !base.hasSuffix("kv_b_proj") else {
                return nil
            }
            return (base, rows, cols)
        }

        /// Streams the bytes of resident tensor `t` to `emit`, in pieces of at most 16 MB, releasing source pages.
        func produce(_ t: ResidentTensor, _ src: ConversionSource,
                     _ emit: (UnsafeRawPointer, Int) throws -> Void) throws(StoreError) {
            switch t.producer {
            case .gguf:
                preconditionFailure("GGUF tensors are produced by GGUFConversion")
            case .copy(let name):
                let tensor: Tensor
                do { tensor = try src.checkpoint.tensor(name) } catch { throw .checkpoint(error) }
                let piece = 16 << 20
                var done = 0
                while done < tensor.byteCount {
                    let n = min(piece, tensor.byteCount - done)
                    try wrap { try emit(tensor.data + done, n) }
                    src.checkpoint.release(name, bytes: done..<(done + n))
                    done += n
                }
            case .bf16(let base, let rows, let cols):
                let m = try src.matrix(base, rows: rows, cols: cols)
                let row = FloatBuffer(count: cols)
                let out = UnsafeMutablePointer<UInt16>.allocate(capacity: cols)
                defer { out.deallocate() }
                for r in 0..<rows {
                    m.copyRow(r, into: row.pointer)
                    for i in 0..<cols { out[i] = floatToBF16(row.pointer[i]) }
                    try wrap { try emit(UnsafeRawPointer(out), cols * 2) }
                }
                src.release(base)
            case .int8(let base, let rows, let cols, let wantScales, let interleaved):
                // A block of 8 rows at a time when interleaved (the layout's unit), else one row.
                let m = try src.matrix(base, rows: rows, cols: cols)
                let step = interleaved ? Int8Interleaved.blockRows : 1, groups = cols / 32
                let row = FloatBuffer(count: cols)
                let values = UnsafeMutablePointer<Int8>.allocate(capacity: step * cols)
                let scales = UnsafeMutableRawPointer.allocate(byteCount: step * groups * 4, alignment: 4)
                let block = UnsafeMutablePointer<UInt8>.allocate(capacity: step * cols)
                let blockScales = UnsafeMutableRawPointer.allocate(byteCount: step * groups * 4, alignment: 4)
                defer { values.deallocate(); scales.deallocate(); block.deallocate(); blockScales.deallocate() }
                for r0 in stride(from: 0, to: rows, by: step) {
                    for i in 0..<step {
                        m.copyRow(r0 + i, into: row.pointer)
                        try ExpertTranscoder.refuseNonFinite(row.pointer, row: r0 + i, cols: cols, tensor: base + ".weight")
                        GroupQuantization.quantizeInt8(row: row.pointer, cols: cols, scaleType: .f32, values: values + i * cols,
                                                       scales: scales + i * groups * 4)
                    }
                    var out = (values: UnsafeRawPointer(values), scales: UnsafeRawPointer(scales))
                    if interleaved {
                        Int8Interleaved.interleaveBlock(cols: cols, values: values, scales: scales, scaleBytes: 4, into: block,
                                                        scales: blockScales)
                        out = (UnsafeRawPointer(block), UnsafeRawPointer(blockScales))
                    }
                    try wrap { try emit(wantScales ? out.scales : out.values, step * (wantScales ? groups * 4 : cols)) }
                }
                src.release(base)
            }
        }

        /// The manifest's tensor table.
        func residentTable(checksums: [String: String]) -> [String: MoEExpertStore.ResidentTensor] {
            Dictionary(uniqueKeysWithValues: residentTensors.map {
                ($0.name, MoEExpertStore.ResidentTensor(dtype: $0.dtype.rawValue, shape: $0.shape, offset: $0.offset,
                                                         bytes: $0.bytes, xxh64: checksums[$0.name] ?? ""))
            })
        }

        /// Identifies this conversion (source files, their sizes, the options, the layout): a resumed run must
        /// match it exactly.
        func fingerprint(_ src: ConversionSource) throws(StoreError) -> String {
            var parts = ["format \(StoreManifest.currentVersion)", "source \((src.path as NSString).standardizingPath)"]
            for f in src.checkpoint.files {
                let size = (try? FileSystem.regularFileSize(f.path)) ?? -1
                parts.append("\((f.path as NSString).lastPathComponent) \(size)")
            }
            parts.append("layout \(layout.encoding.rawValue) \(layout.scaleType?.rawValue ?? "-") \(layout.extentBytes)")
            parts.append("resident \(residentFileBytes) \(residentTensors.count)")
            if let config = FileManager.default.contents(atPath: src.configPath) {
                parts.append("config \(config.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) })")
            }
            return parts.joined(separator: "\n") + "\n"
        }
    }
}

extension StoreConverter {
    /// The resident bytes a store would hold with `option` (bf16 or int8), from the resident tensors' names, dtypes
    /// and shapes as a checkpoint or a store lists them (routed experts excluded by the caller): what `inspect` and
    /// `plan` print for each choice. Vectors keep their bytes; an int8 weight's scales are counted with it.
    public static func residentBytes(_ tensors: [(name: String, dtype: DType, shape: [Int], bytes: Int)],
                                     as option: ResidentOption) -> Int {
        var total = 0
        for t in tensors {
            if t.name.hasSuffix(".weight_scale") || t.name.hasSuffix(".weight_shape") || t.name.hasSuffix(".weight_scale_inv") {
                continue  // counted with their weight below
            }
            if option == .int8, let (_, rows, cols) = Plan.int8Candidate(t.name, dtype: t.dtype, shape: t.shape) {
                total += rows * cols + rows * (cols / 32) * 4
            } else if t.shape.count == 2 && (t.dtype.isFloatingPoint || t.dtype == .i8 || t.name.hasSuffix(".weight_packed")) {
                total += t.shape[0] * t.shape[1] * (t.name.hasSuffix(".weight_packed") ? 8 : 1) * 2
            } else {
                total += t.bytes
            }
        }
        return total
    }
}
