import Foundation
import MoETensor

/// How routed experts are encoded in a store.
public enum ExpertEncoding: String, Codable, Sendable, CaseIterable {
    /// Symmetric int4, one scale per 32 values (Kimi K2 Thinking's values, repacked in Q4_0 nibble order).
    case int4
    /// Symmetric int8, one fp32 scale per 32 values.
    case int8
    case bf16
    case f16
    case f32
    /// e4m3 with fp32 scales per 128×128 block (Kimi K2 Instruct's, passed through).
    case fp8
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

    static func sizes(_ e: ExpertEncoding, _ s: WeightMatrix.ScaleType?, _ br: Int?, _ bc: Int?, rows: Int, cols: Int) -> (Int, Int?) {
        switch e {
        case .int4: return (rows * cols / 2, rows * (cols / 32) * (s ?? .bf16).byteSize)
        case .int8: return (rows * cols, rows * (cols / 32) * (s ?? .f32).byteSize)
        case .bf16, .f16: return (rows * cols * 2, nil)
        case .f32: return (rows * cols * 4, nil)
        case .fp8:
            let (r, c) = (br ?? 128, bc ?? 128)
            return (rows * cols, ((rows + r - 1) / r) * ((cols + c - 1) / c) * 4)
        }
    }

    /// The three matrices of an expert whose extent starts at `base`.
    public func weights(at base: UnsafeRawPointer, owner: AnyObject) -> (gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        func matrix(_ m: MatrixLayout) -> WeightMatrix {
            let data = base + m.offset
            let scales = m.scaleOffset.map { base + $0 }
            let enc: WeightMatrix.Encoding
            switch encoding {
            case .int4: enc = .int4g32(scales: scales!, scaleType: scaleType ?? .bf16)
            case .int8: enc = .int8g32(scales: scales!, scaleType: scaleType ?? .f32)
            case .bf16: enc = .bf16
            case .f16: enc = .f16
            case .f32: enc = .f32
            case .fp8:
                enc = .fp8Block(scales: scales!.assumingMemoryBound(to: Float.self), blockRows: blockRows ?? 128,
                                blockCols: blockCols ?? 128)
            }
            return WeightMatrix(rows: m.rows, cols: m.cols, data: data, encoding: enc, owners: [owner])
        }
        return (matrix(gate), matrix(up), matrix(down))
    }
}

@inline(__always) func roundUp(_ n: Int, _ a: Int) -> Int { (n + a - 1) / a * a }

/// One MoE layer's expert file.
public struct ExpertFile: Codable, Sendable, Equatable {
    public var layer: Int
    /// Relative to the store directory: `experts/layer-001.bin`.
    public var path: String
    public var experts: Int
    /// xxHash64 of each expert's whole extent (padding included), 16 hex digits.
    public var checksums: [String]
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
    public static let currentVersion = 1
    public static let fileName = "manifest.json"
    public static let residentFileName = "resident.safetensors"

    public var format: String
    public var version: Int
    /// What the store was made from and how (for people and for resuming).
    public var source: SourceInfo
    public var resident: ResidentSection
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

    /// Parses and checks format, version and self-checksum.
    public static func decode(_ data: Data, file: String) throws(StoreError) -> StoreManifest {
        let m: StoreManifest
        do { m = try JSONDecoder().decode(StoreManifest.self, from: data) } catch {
            throw .badManifest(file: file, reason: "cannot be decoded: \(error)")
        }
        guard m.format == formatName else { throw .badManifest(file: file, reason: "format '\(m.format)' is not \(formatName)") }
        guard m.version == currentVersion else {
            throw .badManifest(file: file, reason: "version \(m.version); this build reads version \(currentVersion)")
        }
        var unsigned = m
        unsigned.checksum = ""
        let expected = (try? encoder().encode(unsigned)).map { $0.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) } }
        guard expected == m.checksum else {
            throw .badManifest(file: file, reason: "self-checksum mismatch: the manifest was edited or damaged")
        }
        return m
    }
}
