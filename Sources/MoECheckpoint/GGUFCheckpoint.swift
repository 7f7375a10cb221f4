import Foundation
import MoESystem
import MoETensor

/// A GGUF model: one `.gguf` file, or the parts of a split one (`NAME-00001-of-00005.gguf` …, as llama.cpp's
/// `gguf-split` and Unsloth's uploads name them), opened together.
///
/// Any part's path opens the whole set. The first part carries the model's metadata; every part carries
/// `split.no` (0-based), `split.count`, and the first `split.tensors.count`. Each part must be where its name says,
/// agree on the count, and no tensor may be in two parts.
public final class GGUFCheckpoint: @unchecked Sendable {  // immutable after init: `let` fields over read-only `GGUFFile`s
    public let files: [GGUFFile]
    /// Tensor name → (part, index in that part's `tensors`).
    private let location: [String: (file: Int, index: Int)]

    public var path: String { files[0].path }
    /// The model's metadata: the first part's.
    public var metadata: [String: GGUFValue] { files[0].metadata }
    public var tensorNames: [String] { location.keys.sorted() }
    /// Every tensor, in part order then file order.
    public var tensors: [GGUFFile.TensorInfo] { files.flatMap(\.tensors) }
    public var totalBytes: Int { files.reduce(0) { $0 + $1.tensors.reduce(0) { $0 + $1.range.count } } }

    public init(path: String) throws(CheckpointError) {
        let first = try GGUFFile(path: Self.partPaths(for: path, count: 1).first ?? path)
        let count = first.metadata["split.count"]?.int ?? 1
        guard (1...99_999).contains(count) else {
            throw .badConfig(file: first.path, key: "split.count", reason: "\(first.metadata["split.count"]!.summary) is not 1…99999")
        }
        var files = [first]
        if count > 1 {
            let paths = Self.partPaths(for: path, count: count)
            guard paths.count == count else {
                throw .badConfig(file: first.path, key: "split.count", reason:
                    "says \(count) parts, but the file name does not end in -00001-of-\(String(format: "%05d", count)).gguf")
            }
            for p in paths.dropFirst() { files.append(try GGUFFile(path: p)) }
        }
        var location: [String: (file: Int, index: Int)] = [:]
        for (i, f) in files.enumerated() {
            if count > 1 {
                guard f.metadata["split.no"]?.int == i else {
                    throw .badConfig(file: f.path, key: "split.no", reason: "is \(f.metadata["split.no"]?.summary ?? "missing"), expected \(i)")
                }
                guard f.metadata["split.count"]?.int == count else {
                    throw .badConfig(file: f.path, key: "split.count", reason: "is \(f.metadata["split.count"]?.summary ?? "missing"), the first part says \(count)")
                }
            }
            for (j, t) in f.tensors.enumerated() {
                if let other = location[t.name] {
                    throw .badTensor(file: f.path, tensor: t.name, reason: "also present in \(files[other.file].path)")
                }
                location[t.name] = (i, j)
            }
        }
        if let declared = first.metadata["split.tensors.count"], count > 1 {
            guard declared.int == location.count else {
                throw .badConfig(file: first.path, key: "split.tensors.count", reason: "says \(declared.summary), the parts hold \(location.count)")
            }
        }
        self.files = files
        self.location = location
    }

    /// The paths of a split set's parts, from any part's path (`…-00003-of-00005.gguf`), or `[path]` when the name
    /// has no part suffix. `count` is used when the name does not say it (it always does; kept for checking).
    public static func partPaths(for path: String, count: Int) -> [String] {
        guard path.hasSuffix(".gguf") else { return [path] }
        let stem = String(path.dropLast(5))
        // "-NNNNN-of-NNNNN" is 15 characters.
        guard stem.count > 15 else { return [path] }
        let suffix = stem.suffix(15)
        let parts = suffix.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[2] == "of", parts[1].count == 5, parts[3].count == 5,
              let n = Int(parts[3]), Int(parts[1]) != nil, n >= 1 else { return [path] }
        let prefix = stem.dropLast(15)
        return (1...n).map { "\(prefix)-\(String(format: "%05d", $0))-of-\(String(format: "%05d", n)).gguf" }
    }

    public func contains(_ name: String) -> Bool { location[name] != nil }

    /// The `tokenizer.ggml.*` metadata as plain values (nil when the file has no token list).
    public struct Vocabulary: Sendable {
        public let tokens: [String]
        /// llama.cpp's token types (1 normal, 3 control, 5 unused …); all 1 when the file has none.
        public let types: [Int]
        public let model: String?
        public let pre: String?
        public let bosID: Int?
        public let eosID: Int?
    }

    public func vocabulary() throws(CheckpointError) -> Vocabulary? {
        let m = metadata
        guard let list = m["tokenizer.ggml.tokens"]?.array else { return nil }
        var tokens: [String] = []
        tokens.reserveCapacity(list.count)
        for (i, t) in list.enumerated() {
            guard let s = t.string else { throw .badConfig(file: path, key: "tokenizer.ggml.tokens", reason: "entry \(i) is not a string") }
            tokens.append(s)
        }
        var types = [Int](repeating: 1, count: tokens.count)
        if let raw = m["tokenizer.ggml.token_type"]?.array {
            types = []
            for (i, t) in raw.enumerated() {
                guard let n = t.int else { throw .badConfig(file: path, key: "tokenizer.ggml.token_type", reason: "entry \(i) is not an integer") }
                types.append(n)
            }
        }
        return Vocabulary(tokens: tokens, types: types, model: m["tokenizer.ggml.model"]?.string, pre: m["tokenizer.ggml.pre"]?.string,
                          bosID: m["tokenizer.ggml.bos_token_id"]?.int, eosID: m["tokenizer.ggml.eos_token_id"]?.int)
    }

    /// `name`'s info and the part that holds it.
    public func info(_ name: String) -> (file: GGUFFile, tensor: GGUFFile.TensorInfo)? {
        guard let (f, i) = location[name] else { return nil }
        return (files[f], files[f].tensors[i])
    }

    /// Tensors whose type this build cannot decode, by type name (for a refusal that names them).
    public func undecodable(among names: [String]? = nil) -> [String: [String]] {
        var byType: [String: [String]] = [:]
        for name in names ?? tensorNames {
            guard let (_, t) = info(name), !t.type.canDequantize else { continue }
            byType[t.type.description, default: []].append(name)
        }
        return byType
    }

    /// `name` decoded to fp32, checked to have `shape` (torch order: `ne` reversed). Rows are decoded with
    /// `GGMLDequantize`, bit-exact to gguf-py.
    public func floats(_ name: String, shape: [Int]? = nil) throws(CheckpointError) -> Tensor {
        guard let (file, t) = info(name) else { throw .missingTensor(tensor: name, searched: path) }
        if let shape, t.shape != shape {
            throw .wrongShape(file: file.path, tensor: name, expected: shape, actual: t.shape)
        }
        guard t.type.canDequantize else { throw .unsupportedTypes(file: file.path, types: [t.type.description: [name]]) }
        let count = t.elements
        let out = AlignedBuffer(byteCount: count * 4)
        let bytes = file.bytes(of: t)
        if count > 0, let base = bytes.baseAddress {
            GGMLDequantize.values(t.type, from: base, count: count, into: out.pointer.bindMemory(to: Float.self, capacity: count))
        }
        return Tensor(name: name, dtype: .f32, shape: t.shape, data: UnsafeRawPointer(out.pointer), byteCount: count * 4, owner: out)
    }
}
