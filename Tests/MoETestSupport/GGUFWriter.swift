import Foundation

/// Writes GGUF files byte by byte for tests that plant damage (wrong counts, offsets, types) where gguf-py's own
/// writer would refuse to. Layout as in `GGUFFile`: header, metadata, tensor infos, padding, data.
public struct GGUFWriter {
    public enum Value {
        case u32(UInt32), i32(Int32), u16(UInt16), f32(Float), u64(UInt64), bool(Bool), string(String)
        case strings([String]), i32s([Int32])
        /// A value of an arbitrary type code and raw bytes (for planting unknown types).
        case raw(type: UInt32, bytes: [UInt8])
    }

    public struct Tensor {
        public var name: String
        public var type: UInt32
        public var ne: [UInt64]
        public var data: [UInt8]
        /// nil: placed after the previous tensor at the alignment; otherwise written as given.
        public var offset: UInt64?
        public init(name: String, type: UInt32, ne: [UInt64], data: [UInt8], offset: UInt64? = nil) {
            (self.name, self.type, self.ne, self.data, self.offset) = (name, type, ne, data, offset)
        }
    }

    public var magic: [UInt8] = Array("GGUF".utf8)
    public var version: UInt32 = 3
    public var metadata: [(String, Value)] = []
    public var tensors: [Tensor] = []
    public var alignment = 32
    /// Overrides of the counts written in the header (to plant impossible ones).
    public var tensorCount: UInt64?
    public var metadataCount: UInt64?

    public init() {}

    public func encode() -> [UInt8] {
        var out: [UInt8] = magic
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
        u32(version)
        u64(tensorCount ?? UInt64(tensors.count))
        u64(metadataCount ?? UInt64(metadata.count))
        for (key, value) in metadata {
            string(key)
            switch value {
            case .u32(let v): u32(4); u32(v)
            case .i32(let v): u32(5); u32(UInt32(bitPattern: v))
            case .u16(let v): u32(2); withUnsafeBytes(of: v.littleEndian) { out += $0 }
            case .f32(let v): u32(6); u32(v.bitPattern)
            case .u64(let v): u32(10); u64(v)
            case .bool(let v): u32(7); out.append(v ? 1 : 0)
            case .string(let s): u32(8); string(s)
            case .strings(let a): u32(9); u32(8); u64(UInt64(a.count)); a.forEach(string)
            case .i32s(let a): u32(9); u32(5); u64(UInt64(a.count)); a.forEach { u32(UInt32(bitPattern: $0)) }
            case .raw(let type, let bytes): u32(type); out += bytes
            }
        }
        var next: UInt64 = 0
        var placed: [(UInt64, [UInt8])] = []
        for t in tensors {
            string(t.name)
            u32(UInt32(t.ne.count))
            t.ne.forEach(u64)
            u32(t.type)
            let offset = t.offset ?? next
            u64(offset)
            placed.append((offset, t.data))
            let end = offset &+ UInt64(t.data.count)
            next = (end &+ UInt64(alignment) - 1) / UInt64(alignment) * UInt64(alignment)
        }
        while out.count % alignment != 0 { out.append(0) }
        let dataStart = out.count
        for (offset, data) in placed where offset < 1 << 32 {  // a planted huge offset has no bytes to place
            let at = dataStart + Int(offset)
            if out.count < at + data.count { out += [UInt8](repeating: 0, count: at + data.count - out.count) }
            out.replaceSubrange(at..<(at + data.count), with: data)
        }
        return out
    }

    public func write(to path: String) {
        FileManager.default.createFile(atPath: path, contents: Data(encode()))
    }
}
