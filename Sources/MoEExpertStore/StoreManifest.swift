import Foundation
import MoESystem
import MoETensor

/// How routed experts are encoded in a store.
public enum ExpertEncoding: String, Codable, Sendable, CaseIterable {
    /// Symmetric int4, one scale per 32 values (Kimi K2 Thinking's values), rows interleaved by 8
    /// (`Int4Interleaved`: the layout the int8 dot-product tiles read, so nothing is repacked when an expert loads).
    case int4
    /// Symmetric int8, one fp32 scale per 32 values.
    case int8
    case bf16
    case f16
    case f32
    /// e4m3 with fp32 scales per 128×128 block (Kimi K2 Instruct's, passed through).
    case fp8
    /// GGML blocks as a GGUF file holds them (`GGMLType`, passed through bit for bit): each matrix's type is in
    /// its `MatrixLayout.ggmlType`, and a layer whose experts use other types (llama.cpp gives some layers' down
    /// projections more bits) names them in its `ExpertFile.ggmlTypes`; each matrix's space fits its largest.
    case ggml
}

/// Where one matrix of an expert (gate, up or down) sits inside the expert's extent.
public struct MatrixLayout: Codable, Sendable, Equatable {
    public var rows: Int
    public var cols: Int
    /// Byte offset of the weights inside the extent, and their length.
    public var offset: Int
    public var bytes: Int
    /// Scales (group-32 or FP8 block), when the encoding has them.
    public var scaleOffset: Int?
    public var scaleBytes: Int?
    /// For `ggml` experts: the GGML type (`Q4_K`) whose rows size this matrix's space.
    public var ggmlType: String?
}

/// The layout every expert extent shares: the store computes an expert's place as
/// `file experts/layer-LLL.bin, offset expert × extentBytes`.
public struct ExpertLayout: Codable, Sendable, Equatable {
    public var encoding: ExpertEncoding
    /// Scale type for int4/int8 (`BF16` or `F32`); nil otherwise.
    public var scaleType: WeightMatrix.ScaleType?
    /// FP8 block shape, for `fp8`.
    public var blockRows: Int?
    public var blockCols: Int?
    /// Rows per interleaved block: 8 for `int4` (`Int4Interleaved`), nil otherwise.
    public var rowInterleave: Int?
    public var gate: MatrixLayout
    public var up: MatrixLayout
    public var down: MatrixLayout
    /// Every extent is this long: the matrices, padded to a multiple of `alignment`.
    public var extentBytes: Int
    /// 4096: extents start on O_DIRECT boundaries and are whole multiples of them.
    public var alignment: Int

    /// Sub-arrays inside an extent start on 64-byte boundaries (a cache line, and enough for any SIMD load).
    static let innerAlignment = 64

    public init(encoding: ExpertEncoding, scaleType: WeightMatrix.ScaleType?, blockRows: Int? = nil,
                blockCols: Int? = nil, hidden: Int, intermediate: Int, alignment: Int = 4096) {
        self.encoding = encoding
        self.scaleType = scaleType
        self.blockRows = blockRows
        self.blockCols = blockCols
        self.rowInterleave = encoding == .int4 ? Int4Interleaved.blockRows : nil
        self.alignment = alignment
        var cursor = 0
        func place(rows: Int, cols: Int) -> MatrixLayout {
            let (dataBytes, scaleBytes) = Self.sizes(encoding, scaleType, blockRows, blockCols, rows: rows, cols: cols)
            var m = MatrixLayout(rows: rows, cols: cols, offset: cursor, bytes: dataBytes)
            cursor = roundUp(cursor + dataBytes, Self.innerAlignment)
            if let scaleBytes {
                m.scaleOffset = cursor
                m.scaleBytes = scaleBytes
                cursor = roundUp(cursor + scaleBytes, Self.innerAlignment)
            }
            return m
        }
        gate = place(rows: intermediate, cols: hidden)
        up = place(rows: intermediate, cols: hidden)
        down = place(rows: hidden, cols: intermediate)
        extentBytes = roundUp(cursor, alignment)
    }

    /// A `ggml` layout: each matrix's space holds `rows` rows of its type (`types`: gate, up, down; the largest each
    /// matrix has in any layer).
    public init(ggml types: [GGMLType], hidden: Int, intermediate: Int, alignment: Int = 4096) {
        precondition(types.count == 3)
        encoding = .ggml
        scaleType = nil
        rowInterleave = nil
        self.alignment = alignment
        var cursor = 0
        func place(_ type: GGMLType, rows: Int, cols: Int) -> MatrixLayout {
            let bytes = rows * (type.rowBytes(elements: cols) ?? 0)
            var m = MatrixLayout(rows: rows, cols: cols, offset: cursor, bytes: bytes)
            m.ggmlType = type.description
            cursor = roundUp(cursor + bytes, Self.innerAlignment)
            return m
        }
        gate = place(types[0], rows: intermediate, cols: hidden)
        up = place(types[1], rows: intermediate, cols: hidden)
        down = place(types[2], rows: hidden, cols: intermediate)
        extentBytes = roundUp(cursor, alignment)
    }

    /// The GGML types of a `ggml` layout's matrices (gate, up, down), or nil for other encodings.
    public var ggmlTypes: [GGMLType]? {
        guard encoding == .ggml else { return nil }
        let types = [gate, up, down].compactMap { $0.ggmlType.flatMap(GGMLType.init(named:)) }
        return types.count == 3 ? types : nil
    }

    static func sizes(_ e: ExpertEncoding, _ s: WeightMatrix.ScaleType?, _ br: Int?, _ bc: Int?, rows: Int, cols: Int) -> (Int, Int?) {
        switch e {
        case .int4: return (rows * cols / 2, rows * (cols / 32) * (s ?? .bf16).byteSize)
        case .int8: return (rows * cols, rows * (cols / 32) * (s ?? .f32).byteSize)
        case .bf16, .f16: return (rows * cols * 2, nil)
        case .f32: return (rows * cols * 4, nil)
        case .fp8:
            let (r, c) = (br ?? 128, bc ?? 128)
            return (rows * cols, ((rows + r - 1) / r) * ((cols + c - 1) / c) * 4)
        case .ggml:
            preconditionFailure("ggml sizes come from each matrix's type")
        }
    }

    /// The three matrices of an expert whose extent starts at `base`; `types` are its layer's GGML types for a
    /// `ggml` layout (the layout's own when nil).
    public func weights(at base: UnsafeRawPointer, owner: AnyObject, types: [GGMLType]? = nil)
        -> (gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        let ggml = types ?? ggmlTypes
        func matrix(_ m: MatrixLayout, _ index: Int) -> WeightMatrix {
            let data = base + m.offset
            let scales = m.scaleOffset.map { base + $0 }
            let enc: WeightMatrix.Encoding
            switch encoding {
            case .int4: enc = .int4g32x8(scales: scales!, scaleType: scaleType ?? .bf16)
            case .int8: enc = .int8g32(scales: scales!, scaleType: scaleType ?? .f32)
            case .bf16: enc = .bf16
            case .f16: enc = .f16
            case .f32: enc = .f32
            case .fp8:
                enc = .fp8Block(scales: scales!.assumingMemoryBound(to: Float.self), blockRows: blockRows ?? 128,
                                blockCols: blockCols ?? 128)
            case .ggml: enc = .ggml(ggml![index])
            }
            return WeightMatrix(rows: m.rows, cols: m.cols, data: data, encoding: enc, owners: [owner])
        }
        return (matrix(gate, 0), matrix(up, 1), matrix(down, 2))
    }
}

@inline(__always) func roundUp(_ n: Int, _ a: Int) -> Int { (n + a - 1) / a * a }

func zip3<A, B, C>(_ a: [A], _ b: [B], _ c: [C]) -> [(A, B, C)] {
    zip(a, zip(b, c)).map { ($0, $1.0, $1.1) }
}

/// One MoE layer's expert file.
public struct ExpertFile: Codable, Sendable, Equatable {
    public var layer: Int
    /// Relative to the store directory: `experts/layer-001.bin`.
    public var path: String
    public var experts: Int
    /// xxHash64 of each expert's whole extent (padding included), 16 hex digits.
    public var checksums: [String]
    /// For `ggml` experts: this layer's GGML types of gate, up and down, when they differ from the layout's.
    public var ggmlTypes: [String]?

    /// This layer's GGML types (nil for other encodings).
    public func ggmlTypes(_ layout: ExpertLayout) -> [GGMLType]? {
        guard let names = ggmlTypes else { return layout.ggmlTypes }
        let types = names.compactMap(GGMLType.init(named:))
        return types.count == 3 ? types : nil
    }
}

/// A resident tensor's place in resident.safetensors and its checksum.
public struct ResidentTensor: Codable, Sendable, Equatable {
    public var dtype: String
    public var shape: [Int]
    /// Absolute byte range in the file.
    public var offset: Int
    public var bytes: Int
    public var xxh64: String
}

/// A file carried along unchanged (config.json, tokenizer files, generation_config.json).
public struct CarriedFile: Codable, Sendable, Equatable {
    public var name: String
    public var bytes: Int
    public var xxh64: String
}

/// manifest.json: everything needed to find and check every byte of a store. Written last, renamed into place.
public struct StoreManifest: Codable, Sendable, Equatable {
    public static let formatName = "moestream-expert-store"
    /// 2: int4 experts interleaved by 8 rows (`rowInterleave`). Version 1 stores held them row-major.
    /// 3: resident matrices under `--resident int8` interleaved by 8 rows (U8, `Int8Interleaved`). Version 2 stores
    /// held them row-major (I8), which this build still reads (`readableVersions`); a version 2 build refuses the
    /// new ones by their version.
    /// 4: an optional int8 companion of the resident file (`residentInt8`, written by `--resident bf16+int8`,
    /// convert's default). Versions 2 and 3 have none and are read as they are.
    public static let currentVersion = 4
    /// Versions this build reads: 2 differs from 3 only in how `--resident int8` matrices lie, 4 from 3 only by the
    /// optional companion; all are read.
    public static let readableVersions = 2...4
    public static let fileName = "manifest.json"
    public static let residentFileName = "resident.safetensors"
    public static let residentInt8FileName = "resident-int8.safetensors"

    public var format: String
    public var version: Int
    /// What the store was made from and how (for people and for resuming).
    public var source: SourceInfo
    public var resident: ResidentSection
    /// The int8 companion: the resident matrices that have an int8 form, in `Int8Interleaved`'s layout (U8) with
    /// fp32 scales, replacing their bf16 twins in resident.safetensors under `--resident-weights int8`. Nil when the
    /// store has none (`--resident bf16`, `int8`, `source`, a GGUF's, or an older store).
    public var residentInt8: ResidentSection?
    public var experts: ExpertSection
    /// config.json first, then whatever tokenizer files the source had.
    public var files: [CarriedFile]
    /// xxHash64 of this manifest encoded with `checksum` empty: an edited manifest is refused.
    public var checksum: String

    public struct SourceInfo: Codable, Sendable, Equatable {
        public var path: String
        /// `dense`, `fp8` or `int4`.
        public var kind: String
        public var expertsOption: String
        public var residentOption: String
    }

    public struct ResidentSection: Codable, Sendable, Equatable {
        public var file: String
        public var bytes: Int
        public var tensors: [String: ResidentTensor]
    }

    public struct ExpertSection: Codable, Sendable, Equatable {
        public var layout: ExpertLayout
        public var files: [ExpertFile]
    }

    /// The resident bytes a run holds in memory: the resident file's, or with `int8` (and a companion) the
    /// companion's plus what it does not replace.
    public func residentBytes(int8: Bool) -> Int {
        guard int8, let c = residentInt8 else { return resident.bytes }
        return resident.bytes - c.tensors.keys.reduce(0) { $0 + (resident.tensors[$1]?.bytes ?? 0) } + c.bytes
    }

    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return e
    }

    /// The manifest's bytes, with its self-checksum filled in.
    public func encoded() throws -> Data {
        var m = self
        m.checksum = ""
        let unsigned = try Self.encoder().encode(m)
        m.checksum = unsigned.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) }
        return try Self.encoder().encode(m)
    }

    /// Kimi K2's manifest is a few MB (23,040 expert checksums).
    static let maxBytes = 512 << 20

    /// Reads `path` (a regular file of at most `maxBytes`) and decodes it.
    public static func load(_ path: String) throws(StoreError) -> StoreManifest {
        let data: [UInt8]
        do { data = try FileSystem.contents(path, limit: maxBytes) } catch { throw .system(error) }
        return try decode(Data(data), file: path)
    }

    /// Parses and checks format, version and self-checksum.
    public static func decode(_ data: Data, file: String) throws(StoreError) -> StoreManifest {
        let m: StoreManifest
        do { m = try JSONDecoder().decode(StoreManifest.self, from: data) } catch {
            throw .badManifest(file: file, reason: "cannot be decoded: \(error)")
        }
        guard m.format == formatName else { throw .badManifest(file: file, reason: "format '\(m.format)' is not \(formatName)") }
        guard readableVersions.contains(m.version) else {
            throw .badManifest(file: file, reason: "store format version \(m.version); this build reads version \(currentVersion)"
                                   + (m.version < currentVersion
                                      ? " (its experts are laid out for older kernels): convert the checkpoint again with `moestream convert CHECKPOINT -o STORE`"
                                      : ": it was written by a newer moestream"))
        }
        var unsigned = m
        unsigned.checksum = ""
        let expected = (try? encoder().encode(unsigned)).map { $0.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) } }
        guard expected == m.checksum else {
            throw .badManifest(file: file, reason: "self-checksum mismatch: the manifest was edited or damaged")
        }
        try m.validate(file: file)
        return m
    }

    /// Every number that will size a read, an allocation or a loop, checked against sane limits with overflow-safe
    /// arithmetic, and every path checked to stay inside the store. A self-checksum proves only that the manifest
    /// is what some writer wrote, not that the writer was ours.
    func validate(file: String) throws(StoreError) {
        func fail(_ why: String) -> StoreError { .badManifest(file: file, reason: why) }
        let l = experts.layout
        guard l.alignment >= 512, l.alignment <= 1 << 24, l.alignment & (l.alignment - 1) == 0 else {
            throw fail("alignment \(l.alignment) is not a power of two in 512...16M")
        }
        guard l.extentBytes > 0, l.extentBytes <= Self.maxExtentBytes, l.extentBytes % l.alignment == 0 else {
            throw fail("extentBytes \(l.extentBytes) is not a positive multiple of the alignment up to \(Self.maxExtentBytes)")
        }
        for (name, m) in [("gate", l.gate), ("up", l.up), ("down", l.down)] {
            let parts = [(m.offset, m.bytes)] + (m.scaleOffset.map { [($0, m.scaleBytes ?? -1)] } ?? [])
            guard m.rows > 0, m.cols > 0, m.rows <= 1 << 20, m.cols <= 1 << 20,
                  parts.allSatisfy({ $0.0 >= 0 && $0.1 >= 0 && $0.1 <= l.extentBytes - $0.0 }) else {
                throw fail("the \(name) matrix's shape or byte ranges do not fit in an extent of \(l.extentBytes) bytes")
            }
        }
        if let r = l.blockRows, !(1...(1 << 16)).contains(r) { throw fail("blockRows \(r) is outside 1...65536") }
        if let c = l.blockCols, !(1...(1 << 16)).contains(c) { throw fail("blockCols \(c) is outside 1...65536") }
        // int4 is interleaved by 8 rows: every matrix must fill whole blocks and groups, or the kernels read past it.
        guard l.rowInterleave == (l.encoding == .int4 ? Int4Interleaved.blockRows : nil) else {
            throw fail("rowInterleave \(l.rowInterleave.map(String.init) ?? "none") does not match \(l.encoding.rawValue) experts")
        }
        if l.encoding == .int4 || l.encoding == .int8 {
            for (name, m) in [("gate", l.gate), ("up", l.up), ("down", l.down)]
            where m.cols % 32 != 0 || (l.encoding == .int4 && m.rows % Int4Interleaved.blockRows != 0) {
                throw fail("the \(name) matrix is \(m.rows) × \(m.cols): \(l.encoding.rawValue) experts need columns in groups of 32"
                           + (l.encoding == .int4 ? " and rows in blocks of 8" : ""))
            }
        }
        if l.encoding == .ggml {
            // Every layer's types: known, decodable, whole blocks per row, and fitting the space of the matrix.
            guard l.ggmlTypes != nil else { throw fail("ggml experts need a known GGML type for gate, up and down") }
            for f in experts.files {
                guard let types = f.ggmlTypes(l), f.ggmlTypes == nil || f.ggmlTypes!.count == 3 else {
                    throw fail("layer \(f.layer): GGML types \(f.ggmlTypes ?? []) are not three known types")
                }
                for (name, m, type) in zip3(["gate", "up", "down"], [l.gate, l.up, l.down], types) {
                    guard type.canDequantize, let rowBytes = type.rowBytes(elements: m.cols),
                          m.scaleOffset == nil, rowBytes.multipliedReportingOverflow(by: m.rows).overflow == false,
                          rowBytes * m.rows <= m.bytes else {
                        throw fail("layer \(f.layer): the \(name) matrix (\(m.rows) × \(m.cols)) in \(type) does not fit its \(m.bytes) bytes"
                                   + (type.canDequantize ? "" : " (\(type) cannot run yet)"))
                    }
                }
            }
        }
        // The kernels read rows × cols of the encoding: the byte counts must be exactly that, scales where it has them.
        for (name, m) in [("gate", l.gate), ("up", l.up), ("down", l.down)] where l.encoding != .ggml {
            let (data, scales) = ExpertLayout.sizes(l.encoding, l.scaleType, l.blockRows, l.blockCols, rows: m.rows, cols: m.cols)
            guard m.bytes == data, m.scaleBytes == scales, (m.scaleOffset == nil) == (scales == nil) else {
                throw fail("the \(name) matrix's \(m.bytes) bytes and \(m.scaleBytes ?? 0) scale bytes do not fit its \(m.rows) × \(m.cols) shape")
            }
        }
        var layers = Set<Int>()
        for f in experts.files {
            guard (0..<4096).contains(f.layer), layers.insert(f.layer).inserted else {
                throw fail("expert file layer \(f.layer) is outside 0..<4096 or listed twice")
            }
            guard Self.isInside(f.path) else { throw fail("expert file path '\(f.path)' leaves the store") }
            guard (0...(1 << 16)).contains(f.experts), f.checksums.count == f.experts else {
                throw fail("layer \(f.layer): \(f.experts) experts with \(f.checksums.count) checksums")
            }
            guard f.experts.multipliedReportingOverflow(by: l.extentBytes).overflow == false else {
                throw fail("layer \(f.layer): \(f.experts) experts of \(l.extentBytes) bytes overflow a file offset")
            }
            if let bad = f.checksums.firstIndex(where: { !Self.isChecksum($0) }) {
                throw fail("layer \(f.layer) expert \(bad): checksum '\(f.checksums[bad].prefix(32))' is not 16 hex digits")
            }
        }
        for section in [resident] + (residentInt8.map { [$0] } ?? []) {
            guard Self.isInside(section.file), section.bytes >= 0 else { throw fail("resident file '\(section.file)' is not a file in the store") }
            for (name, t) in section.tensors {
                guard t.offset >= 0, t.bytes >= 0, t.bytes <= Int.max - t.offset, t.shape.count <= 8, t.shape.allSatisfy({ $0 >= 0 }),
                      Self.isChecksum(t.xxh64) else {
                    throw fail("\(section.file): resident tensor '\(name)': offset \(t.offset), \(t.bytes) bytes, shape \(t.shape) or checksum is invalid")
                }
            }
        }
        if let c = residentInt8 {
            guard c.file != resident.file else { throw fail("the int8 companion is the resident file itself") }
            for name in c.tensors.keys where !name.hasSuffix(".weight_scale") {
                guard resident.tensors[name] != nil else {
                    throw fail("\(c.file): tensor '\(name)' replaces nothing in \(resident.file)")
                }
            }
        }
        for f in files {
            guard Self.isInside(f.name), !f.name.contains("/"), f.bytes >= 0, f.bytes <= 1 << 30, Self.isChecksum(f.xxh64) else {
                throw fail("carried file '\(f.name)' has a bad name, size or checksum")
            }
        }
    }

    /// An extent holds one expert's three matrices: Kimi K2's are ~22 MB at int4, 88 MB at bf16.
    static let maxExtentBytes = 4 << 30

    /// A relative path that stays inside the store: no leading '/', no '..' component, not empty.
    static func isInside(_ path: String) -> Bool {
        !path.isEmpty && !path.hasPrefix("/") && !path.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == ".." || $0.isEmpty }
    }

    static func isChecksum(_ s: String) -> Bool { s.utf8.count == 16 && s.utf8.allSatisfy { $0 < 128 && UInt8($0).isHexDigit } }
}

extension UInt8 {
    var isHexDigit: Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(self)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(self)
    }
}
