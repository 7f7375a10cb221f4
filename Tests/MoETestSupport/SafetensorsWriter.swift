import Foundation
import MoETensor

/// Writes safetensors files byte by byte, so tests can build checkpoints and plant exactly the damage they
/// want (a header that lies, bytes cut off, overlapping tensors).
public struct SafetensorsWriter {
    public struct Item {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var bytes: [UInt8]
        /// Overrides the computed `data_offsets` (to plant bad offsets).
        public var offsets: (Int, Int)?

        public init(name: String, dtype: String, shape: [Int], bytes: [UInt8], offsets: (Int, Int)? = nil) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.bytes = bytes
            self.offsets = offsets
        }

        /// An F32 tensor from values.
        public static func f32(_ name: String, _ shape: [Int], _ values: [Float]) -> Item {
            Item(name: name, dtype: "F32", shape: shape, bytes: values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) })
        }

        /// A BF16 tensor from values (rounded to nearest even).
        public static func bf16(_ name: String, _ shape: [Int], _ values: [Float]) -> Item {
            Item(name: name, dtype: "BF16", shape: shape, bytes: values.flatMap { withUnsafeBytes(of: floatToBF16($0).littleEndian, Array.init) })
        }
    }

    public init() {}

    /// The file's bytes: length, JSON header (space-padded to 8 bytes as safetensors does), data.
    public func encode(_ items: [Item], metadata: [String: String]? = nil) -> [UInt8] {
        var header: [String: Any] = [:]
        var data: [UInt8] = []
        for item in items {
            let begin = data.count
            data += item.bytes
            let (b, e) = item.offsets ?? (begin, data.count)
            header[item.name] = ["dtype": item.dtype, "shape": item.shape, "data_offsets": [b, e]] as [String: Any]
        }
        if let metadata { header["__metadata__"] = metadata }
        var json = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = withUnsafeBytes(of: UInt64(json.count).littleEndian, Array.init)
        out += json
        out += data
        return out
    }

    public func write(_ items: [Item], to path: String, metadata: [String: String]? = nil) {
        FileManager.default.createFile(atPath: path, contents: Data(encode(items, metadata: metadata)))
    }
}
