import Foundation
import MoESystem
import MoETensor

/// A Hugging Face checkpoint directory: config.json plus one or many safetensors shards.
///
/// With `model.safetensors.index.json` the index decides which shard holds each tensor, and every shard it names
/// must exist and hold the tensors it is said to hold. Without an index, every `*.safetensors` file in the
/// directory is opened and their tensor names must not collide. A path to a single `.safetensors` file works too.
public final class Checkpoint: @unchecked Sendable {  // immutable after init: `let` fields over read-only `SafetensorsFile`s
    public let directory: String
    public let files: [SafetensorsFile]
    /// Tensor name → index into `files`.
    private let location: [String: Int]

    public static let indexFileName = "model.safetensors.index.json"
    /// Kimi K2's index is ~10 MB (every expert's tensors are listed).
    static let maxIndexBytes = 512 << 20

    /// Opens the checkpoint at `path`, its shards mapped, or with `copy` read into memory (a store's resident file,
    /// less the tensors named in `skipping`: `SafetensorsFile.init(path:copy:skipping:)`).
    public init(path: String, copy: Bool = false, skipping: Set<String> = []) throws(CheckpointError) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw .system(.init(call: "open", path: path, errno: ENOENT))
        }
        if !isDir.boolValue {
            directory = (path as NSString).deletingLastPathComponent
            let file = try SafetensorsFile(path: path, copy: copy, skipping: skipping)
            files = [file]
            location = Dictionary(uniqueKeysWithValues: file.entries.keys.map { ($0, 0) })
            return
        }
        directory = path
        let indexPath = (path as NSString).appendingPathComponent(Self.indexFileName)
        if FileManager.default.fileExists(atPath: indexPath) {
            (files, location) = try Self.openIndexed(directory: path, indexPath: indexPath)
        } else {
            (files, location) = try Self.openAll(directory: path)
        }
    }

    private static func openIndexed(directory: String, indexPath: String) throws(CheckpointError)
        -> ([SafetensorsFile], [String: Int]) {
        let data: [UInt8]
        do { data = try FileSystem.contents(indexPath, limit: maxIndexBytes) } catch { throw .system(error) }
        guard let json = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any] else {
            throw .badIndex(file: indexPath, reason: "not a JSON object")
        }
        guard let map = json["weight_map"] as? [String: String] else {
            throw .badIndex(file: indexPath, reason: "no weight_map of tensor name → shard file")
        }
        var files: [SafetensorsFile] = []
        var fileIndex: [String: Int] = [:]
        var location: [String: Int] = [:]
        for shard in Set(map.values).sorted() {
            guard !shard.contains("/") else { throw .badIndex(file: indexPath, reason: "shard name '\(shard)' is not a plain file name") }
            let file = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(shard))
            fileIndex[shard] = files.count
            files.append(file)
        }
        for (tensor, shard) in map {
            let i = fileIndex[shard]!
            guard files[i].entries[tensor] != nil else {
                throw .missingTensor(tensor: tensor, searched: files[i].path + " (where \(Self.indexFileName) puts it)")
            }
            location[tensor] = i
        }
        return (files, location)
    }

    private static func openAll(directory: String) throws(CheckpointError) -> ([SafetensorsFile], [String: Int]) {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw .system(.init(call: "opendir", path: directory, errno: EIO))
        }
        let shards = names.filter { $0.hasSuffix(".safetensors") }.sorted()
        guard !shards.isEmpty else {
            throw .missingTensor(tensor: "*", searched: "\(directory) (no .safetensors files and no \(indexFileName))")
        }
        var files: [SafetensorsFile] = []
        var location: [String: Int] = [:]
        for shard in shards {
            let file = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(shard))
            for tensor in file.entries.keys {
                if let other = location[tensor] {
                    throw .badTensor(file: file.path, tensor: tensor, reason: "also present in \(files[other].path)")
                }
                location[tensor] = files.count
            }
            files.append(file)
        }
        return (files, location)
    }

    public var tensorNames: [String] { location.keys.sorted() }

    public func contains(_ name: String) -> Bool { location[name] != nil }

    /// Whether `name`'s bytes were left out of a copy (`init(path:copy:skipping:)`).
    public func isSkipped(_ name: String) -> Bool { location[name].map { files[$0].skipped.contains(name) } ?? false }

    /// The header entry of `name` and the file that holds it.
    public func entry(_ name: String) -> (file: SafetensorsFile, entry: SafetensorsFile.Entry)? {
        guard let i = location[name] else { return nil }
        return (files[i], files[i].entries[name]!)
    }

    public func tensor(_ name: String) throws(CheckpointError) -> Tensor {
        guard let i = location[name] else { throw .missingTensor(tensor: name, searched: directory) }
        return try files[i].tensor(name)
    }

    /// `name`, checked to have `shape`.
    public func tensor(_ name: String, shape: [Int]) throws(CheckpointError) -> Tensor {
        let t = try tensor(name)
        guard t.shape == shape else {
            throw .wrongShape(file: entry(name)!.file.path, tensor: name, expected: shape, actual: t.shape)
        }
        return t
    }

    /// Drops the pages of `name` from this process once a streaming reader is done with it.
    public func release(_ name: String, bytes: Range<Int>? = nil) {
        if let i = location[name] { files[i].release(name, bytes: bytes) }
    }

    /// The path of the file that holds `name`, for error messages.
    public func path(of name: String) -> String { entry(name)?.file.path ?? directory }

    /// A matrix a store converted from a GGUF keeps in its GGML type: `U8 [rows, row bytes]`, the type named in the
    /// file's metadata under `ggml:NAME` (`TensorSource.matrix`); nil for every other tensor.
    public func matrix(_ name: String, rows: Int, cols: Int) throws(CheckpointError) -> WeightMatrix? {
        guard let (file, entry) = entry(name), let typeName = file.metadata["ggml:" + name] else { return nil }
        guard let type = GGMLType(named: typeName), type.canDequantize, let rowBytes = type.rowBytes(elements: cols) else {
            throw .badTensor(file: file.path, tensor: name, reason: "GGML type '\(typeName)' cannot hold rows of \(cols) values")
        }
        guard entry.dtype == .u8, entry.shape == [rows, rowBytes] else {
            throw .wrongShape(file: file.path, tensor: name, expected: [rows, rowBytes], actual: entry.shape)
        }
        let t = try file.tensor(name)
        return WeightMatrix(rows: rows, cols: cols, data: t.data, encoding: .ggml(type), owners: [t.owner])
    }
}
