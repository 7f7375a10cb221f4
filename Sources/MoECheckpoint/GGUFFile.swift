import Foundation
import MoESystem
import MoETensor

/// One metadata value of a GGUF file (`gguf_type`): the thirteen scalar and string types, and arrays of them.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    /// The value as an integer, when it is one of the integer types and fits `Int`.
    public var int: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): Int(v)
        default: nil
        }
    }

    /// The value as a number: integers and floats (the writers are not consistent about which they use).
    public var double: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: int.map(Double.init)
        }
    }

    public var bool: Bool? { if case .bool(let v) = self { v } else { nil } }
    public var string: String? { if case .string(let v) = self { v } else { nil } }
    public var array: [GGUFValue]? { if case .array(let v) = self { v } else { nil } }

    /// A short rendering for `inspect`: arrays show their length and first elements.
    public var summary: String {
        switch self {
        case .string(let s): return s.count > 80 ? "\"\(s.prefix(77))…\" (\(s.utf8.count) bytes)" : "\"\(s)\""
        case .array(let a):
            let head = a.prefix(3).map(\.summary).joined(separator: ", ")
            return "[\(head)\(a.count > 3 ? ", …" : "")] (\(a.count) values)"
        case .bool(let b): return "\(b)"
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        default: return int.map(String.init) ?? "?"
        }
    }
}

/// One `.gguf` file (format version 2 or 3, little-endian), memory-mapped, its header fully validated at open.
///
/// Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64; the metadata (key string, type u32,
/// value); the tensor infos (name, n_dims u32 ≤ 4, n_dims × u64 extents `ne` — fastest-varying first —, type u32,
/// offset u64 from the start of the data); padding to `general.alignment` (default 32); the data. Strings are a u64
/// length and that many UTF-8 bytes.
///
/// These are downloaded files of hundreds of GB, so nothing in them is trusted: every length and count is compared
/// with the bytes left before it sizes a loop or an allocation, every extent product is overflow-checked, each
/// tensor's bytes must be a whole number of its type's blocks, aligned, inside the data and disjoint from every
/// other tensor's. A failure names the file and the tensor or key.
public final class GGUFFile: @unchecked Sendable {  // immutable after init: `let` fields over a read-only `MappedFile`
    public struct TensorInfo: Sendable, Equatable {
        public let name: String
        public let type: GGMLType
        /// Extents as GGML orders them: `ne[0]` is the row length (the fastest-varying index).
        public let ne: [Int]
        /// Byte range inside the file.
        public let range: Range<Int>
        /// Extents as torch and safetensors order them: `ne` reversed ([rows, row length] for a matrix).
        public var shape: [Int] { ne.reversed() }
        public var elements: Int { ne.reduce(1, *) }
    }

    public let path: String
    public let version: Int
    /// Metadata in file order (`keys`) and by key.
    public let keys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order and by name.
    public let tensors: [TensorInfo]
    public let tensorIndex: [String: Int]
    public let alignment: Int
    /// Where the tensor data starts (the end of the header, padded to `alignment`).
    public let dataOffset: Int
    let file: MappedFile

    static let magic: UInt32 = 0x4655_4747  // "GGUF" read little-endian
    /// Longest string we accept (a chat template is a few KB; a token a few bytes).
    static let maxStringBytes = 64 << 20
    static let maxDims = 4

    public init(path: String) throws(CheckpointError) {
        self.path = path
        do { file = try MappedFile(path: path) } catch { throw .system(error) }
        var r = Reader(bytes: file.bytes(0..<file.count), file: path)
        guard try r.u32("magic") == Self.magic else {
            throw .malformedGGUF(file: path, reason: "not a GGUF file (the first 4 bytes are not 'GGUF')")
        }
        let version = Int(try r.u32("version"))
        guard version == 2 || version == 3 else {
            throw .malformedGGUF(file: path, reason: "format version \(version); this build reads GGUF versions 2 and 3")
        }
        self.version = version
        let tensorCount = try r.count("tensor count", minBytesEach: 8 + 4 + 4 + 8)
        let kvCount = try r.count("metadata count", minBytesEach: 8 + 4 + 1)

        var keys: [String] = []
        var metadata: [String: GGUFValue] = [:]
        for _ in 0..<kvCount {
            let key = try r.string("a metadata key")
            let value = try r.value(key: key, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw .malformedGGUF(file: path, reason: "metadata key '\(key)' appears twice")
            }
            keys.append(key)
        }
        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let n = a.int, n > 0, n <= 1 << 30, n & (n - 1) == 0 else {
                throw .badConfig(file: path, key: "general.alignment", reason: "\(a.summary) is not a power of two up to 2^30")
            }
            alignment = n
        }

        struct Pending { let name: String; let type: GGMLType; let ne: [Int]; let offset: UInt64 }
        var pending: [Pending] = []
        var tensorIndex: [String: Int] = [:]
        for i in 0..<tensorCount {
            let name = try r.string("the name of tensor \(i)")
            let dims = Int(try r.u32("n_dims of tensor '\(name)'"))
            guard (1...Self.maxDims).contains(dims) else {
                throw .badTensor(file: path, tensor: name, reason: "\(dims) dimensions (GGUF allows 1…\(Self.maxDims))")
            }
            var ne: [Int] = []
            for _ in 0..<dims {
                let n = try r.u64("an extent of tensor '\(name)'")
                guard n <= UInt64(Int32.max) else {
                    throw .badTensor(file: path, tensor: name, reason: "extent \(n) is out of range")
                }
                ne.append(Int(n))
            }
            let rawType = try r.u32("the type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw .badTensor(file: path, tensor: name, reason: "unknown GGML type \(rawType)")
            }
            let offset = try r.u64("the offset of tensor '\(name)'")
            guard tensorIndex.updateValue(pending.count, forKey: name) == nil else {
                throw .badTensor(file: path, tensor: name, reason: "appears twice in the tensor list")
            }
            pending.append(Pending(name: name, type: type, ne: ne, offset: offset))
        }
        // The data starts at the next multiple of the alignment.
        let headerEnd = r.offset
        let (padded, overflow) = headerEnd.addingReportingOverflow(alignment - 1)
        guard !overflow, padded / alignment * alignment <= file.count else {
            throw .malformedGGUF(file: path, reason: "the header (\(headerEnd) bytes, aligned to \(alignment)) leaves no room for data")
        }
        let dataOffset = padded / alignment * alignment
        let dataBytes = file.count - dataOffset

        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(pending.count)
        for t in pending {
            guard let rowBytes = t.type.rowBytes(elements: t.ne[0]) else {
                throw .badTensor(file: path, tensor: t.name, reason:
                    "rows of \(t.ne[0]) values are not whole \(t.type) blocks of \(t.type.blockSize)")
            }
            var bytes = rowBytes
            for n in t.ne.dropFirst() {
                let (p, o) = bytes.multipliedReportingOverflow(by: n)
                guard !o else { throw .badTensor(file: path, tensor: t.name, reason: "extents \(t.ne) overflow") }
                bytes = p
            }
            guard t.offset % UInt64(alignment) == 0 else {
                throw .badTensor(file: path, tensor: t.name, reason: "offset \(t.offset) is not a multiple of the alignment \(alignment)")
            }
            // Compare with the room left; never add file numbers before they are known small.
            guard t.offset <= UInt64(dataBytes), bytes <= dataBytes - Int(t.offset) else {
                let (end, o1) = dataOffset.addingReportingOverflow(Int(clamping: t.offset))
                let (needed, o2) = end.addingReportingOverflow(bytes)
                throw .truncated(file: path, tensor: t.name, needed: o1 || o2 ? Int.max : needed, actual: file.count)
            }
            let start = dataOffset + Int(t.offset)
            tensors.append(TensorInfo(name: t.name, type: t.type, ne: t.ne, range: start..<(start + bytes)))
        }
        let sorted = tensors.filter { !$0.range.isEmpty }.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.range.lowerBound < a.range.upperBound {
            throw .badTensor(file: path, tensor: b.name, reason: "its bytes overlap tensor '\(a.name)'")
        }
        self.keys = keys
        self.metadata = metadata
        self.alignment = alignment
        self.dataOffset = dataOffset
        self.tensors = tensors
        self.tensorIndex = tensorIndex
    }

    public subscript(tensor name: String) -> TensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// The raw bytes of `info` (one of this file's tensors), valid while the file lives.
    public func bytes(of info: TensorInfo) -> UnsafeRawBufferPointer { file.bytes(info.range) }

    /// Drops `info`'s pages from this process once a streaming reader is done with it.
    public func release(_ info: TensorInfo) { file.release(info.range) }

    /// A little-endian cursor over the header whose every read is checked against the bytes left.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        let file: String
        var offset = 0

        var remaining: Int { bytes.count - offset }

        mutating func take(_ n: Int, _ what: @autoclosure () -> String) throws(CheckpointError) -> UnsafeRawPointer {
            guard n >= 0, n <= remaining, let base = bytes.baseAddress else {
                throw .malformedGGUF(file: file, reason: "\(what()) runs past the end of the file (\(bytes.count) bytes) at offset \(offset)")
            }
            defer { offset += n }
            return base + offset
        }

        mutating func u8(_ what: @autoclosure () -> String) throws(CheckpointError) -> UInt8 {
            try take(1, what()).load(as: UInt8.self)
        }
        mutating func u16(_ what: @autoclosure () -> String) throws(CheckpointError) -> UInt16 {
            UInt16(littleEndian: try take(2, what()).loadUnaligned(as: UInt16.self))
        }
        mutating func u32(_ what: @autoclosure () -> String) throws(CheckpointError) -> UInt32 {
            UInt32(littleEndian: try take(4, what()).loadUnaligned(as: UInt32.self))
        }
        mutating func u64(_ what: @autoclosure () -> String) throws(CheckpointError) -> UInt64 {
            UInt64(littleEndian: try take(8, what()).loadUnaligned(as: UInt64.self))
        }

        /// A u64 count of items, each at least `minBytesEach` long: refused when that many cannot fit in what is left.
        mutating func count(_ what: String, minBytesEach: Int) throws(CheckpointError) -> Int {
            let n = try u64(what)
            guard n <= UInt64(remaining / minBytesEach) else {
                throw .malformedGGUF(file: file, reason: "\(what) \(n) cannot fit in the \(remaining) bytes left")
            }
            return Int(n)
        }

        mutating func string(_ what: @autoclosure () -> String) throws(CheckpointError) -> String {
            let n = try u64(what())
            guard n <= UInt64(min(remaining, GGUFFile.maxStringBytes)) else {
                throw .malformedGGUF(file: file, reason: "\(what()): a string of \(n) bytes at offset \(offset - 8) runs past the end of the file or the \(GGUFFile.maxStringBytes >> 20) MB limit")
            }
            let p = try take(Int(n), what())
            return String(decoding: UnsafeRawBufferPointer(start: p, count: Int(n)), as: UTF8.self)
        }

        /// One value of the metadata entry `key`; arrays hold scalars or strings (llama.cpp does not nest them).
        mutating func value(key: String, depth: Int) throws(CheckpointError) -> GGUFValue {
            let type = try u32("the type of metadata '\(key)'")
            return try value(type: type, key: key, depth: depth)
        }

        mutating func value(type: UInt32, key: String, depth: Int) throws(CheckpointError) -> GGUFValue {
            let what = "metadata '\(key)'"
            switch type {
            case 0: return .uint8(try u8(what))
            case 1: return .int8(Int8(bitPattern: try u8(what)))
            case 2: return .uint16(try u16(what))
            case 3: return .int16(Int16(bitPattern: try u16(what)))
            case 4: return .uint32(try u32(what))
            case 5: return .int32(Int32(bitPattern: try u32(what)))
            case 6: return .float32(Float(bitPattern: try u32(what)))
            case 7:
                let b = try u8(what)
                guard b <= 1 else { throw .badConfig(file: file, key: key, reason: "boolean byte \(b) is neither 0 nor 1") }
                return .bool(b == 1)
            case 8: return .string(try string(what))
            case 9:
                guard depth == 0 else { throw .badConfig(file: file, key: key, reason: "arrays of arrays are not supported") }
                let elementType = try u32("the element type of \(what)")
                let minBytes: Int
                switch elementType {
                case 0, 1, 7: minBytes = 1
                case 2, 3: minBytes = 2
                case 4, 5, 6: minBytes = 4
                case 8, 10, 11, 12: minBytes = 8
                case 9: throw .badConfig(file: file, key: key, reason: "arrays of arrays are not supported")
                default: throw .badConfig(file: file, key: key, reason: "unknown array element type \(elementType)")
                }
                let n = try count("the length of \(what)", minBytesEach: minBytes)
                var values: [GGUFValue] = []
                values.reserveCapacity(n)
                for _ in 0..<n { values.append(try value(type: elementType, key: key, depth: depth + 1)) }
                return .array(values)
            case 10: return .uint64(try u64(what))
            case 11: return .int64(Int64(bitPattern: try u64(what)))
            case 12: return .float64(Double(bitPattern: try u64(what)))
            default: throw .badConfig(file: file, key: key, reason: "unknown value type \(type)")
            }
        }
    }
}
