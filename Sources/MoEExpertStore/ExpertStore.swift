import Foundation
import MoECheckpoint
import MoEModel
import MoESystem
import MoETensor

/// An opened expert store: manifest checked, config read, resident tensors mapped and checksummed, expert files
/// present with the right sizes. Loading never accepts a store without its manifest.
public final class ExpertStore: @unchecked Sendable {
    public let path: String
    public let manifest: StoreManifest
    public let config: ModelConfig
    /// resident.safetensors, opened like any checkpoint.
    public let resident: Checkpoint

    /// Whether `path` looks like a store (a directory with manifest.json, or an interrupted conversion).
    public static func isStore(_ path: String) -> Bool {
        FileSystem.exists(path + "/" + StoreManifest.fileName) || FileSystem.exists(path + "/" + StoreConverter.stateFileName)
    }

    /// Opens `path`. With `verifyResident`, every resident tensor is checksummed (seconds for Kimi K2's
    /// 23 GB; the forward pass then never computes with damaged resident weights).
    public init(path: String, verifyResident: Bool = true) throws(StoreError) {
        self.path = path
        let manifestPath = path + "/" + StoreManifest.fileName
        guard let data = FileManager.default.contents(atPath: manifestPath) else { throw .incomplete(store: path) }
        manifest = try StoreManifest.decode(data, file: manifestPath)
        for f in manifest.files where f.name == "config.json" {
            try Self.checkCarried(f, in: path)
        }
        do { config = try ModelConfig.load(path: path + "/config.json") } catch { throw .checkpoint(error) }
        let residentPath = path + "/" + manifest.resident.file
        do { resident = try Checkpoint(path: residentPath) } catch { throw .checkpoint(error) }
        try checkResidentTable(residentPath)
        if verifyResident { try verifyResidentChecksums() }
        try checkExpertFiles()
    }

    static func checkCarried(_ f: CarriedFile, in dir: String) throws(StoreError) {
        let p = dir + "/" + f.name
        guard let data = FileManager.default.contents(atPath: p), data.count == f.bytes,
              data.withUnsafeBytes({ XXHash64.hex(XXHash64.hash($0)) }) == f.xxh64 else { throw .fileChecksum(file: p) }
    }

    /// The safetensors header and the manifest must agree on every tensor.
    private func checkResidentTable(_ file: String) throws(StoreError) {
        guard resident.tensorNames.count == manifest.resident.tensors.count else {
            throw .badManifest(file: file, reason: "holds \(resident.tensorNames.count) tensors, the manifest lists \(manifest.resident.tensors.count)")
        }
        for (name, t) in manifest.resident.tensors {
            guard let (_, e) = resident.entry(name) else { throw .checkpoint(.missingTensor(tensor: name, searched: file)) }
            guard e.dtype.rawValue == t.dtype, e.shape == t.shape, e.range == t.offset..<(t.offset + t.bytes) else {
                throw .badManifest(file: file, reason: "tensor '\(name)' differs between the file header and the manifest")
            }
        }
    }

    /// Checksums every resident tensor against the manifest.
    public func verifyResidentChecksums() throws(StoreError) {
        let file = path + "/" + manifest.resident.file
        for (name, t) in manifest.resident.tensors.sorted(by: { $0.key < $1.key }) {
            let tensor: Tensor
            do { tensor = try resident.tensor(name) } catch { throw .checkpoint(error) }
            guard XXHash64.hex(XXHash64.hash(tensor.data, count: tensor.byteCount)) == t.xxh64 else {
                throw .tensorChecksum(tensor: name, file: file)
            }
        }
    }

    /// Each MoE layer has its file with `experts × extentBytes` bytes.
    private func checkExpertFiles() throws(StoreError) {
        let layout = manifest.experts.layout
        guard manifest.experts.files.map(\.layer) == config.moeLayers else {
            throw .badManifest(file: path + "/" + StoreManifest.fileName, reason: "expert files do not cover the MoE layers \(config.moeLayers)")
        }
        guard layout.extentBytes % layout.alignment == 0,
              layout == ExpertLayout(encoding: layout.encoding, scaleType: layout.scaleType, blockRows: layout.blockRows,
                                     blockCols: layout.blockCols, hidden: config.hiddenSize,
                                     intermediate: config.moeIntermediateSize, alignment: layout.alignment) else {
            throw .badManifest(file: path + "/" + StoreManifest.fileName, reason: "expert layout does not fit the model's shapes")
        }
        for f in manifest.experts.files {
            let p = path + "/" + f.path
            guard f.experts == config.numRoutedExperts else {
                throw .badManifest(file: p, reason: "holds \(f.experts) experts; the model has \(config.numRoutedExperts) per layer")
            }
            guard f.checksums.count == f.experts else {
                throw .badManifest(file: p, reason: "lists \(f.checksums.count) checksums for \(f.experts) experts")
            }
            let expected = f.experts * layout.extentBytes
            let actual = (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? nil
            guard let actual else { throw .system(SystemError(call: "stat", path: p, errno: ENOENT)) }
            guard actual == expected else {
                throw .wrongFileSize(file: p, expected: expected, actual: actual,
                                     firstMissingExpert: actual < expected ? actual / layout.extentBytes : nil)
            }
        }
    }

    /// The model: resident weights from resident.safetensors, routed experts read from the expert files.
    public func loadModel() throws(StoreError) -> KimiModel {
        KimiModel(config: config, weights: try residentWeights(), experts: try StoreExperts(store: self))
    }

    /// Everything but the routed experts, shape-checked, as views into resident.safetensors.
    public func residentWeights() throws(StoreError) -> ResidentWeights {
        do { return try CheckpointWeights(checkpoint: resident, config: config).resident() } catch { throw .checkpoint(error) }
    }

    /// Where expert `e` of `layer` lives: its file and byte offset.
    public func location(layer: Int, expert e: Int) -> (file: ExpertFile, offset: Int)? {
        guard let f = manifest.experts.files.first(where: { $0.layer == layer }), e >= 0, e < f.experts else { return nil }
        return (f, e * manifest.experts.layout.extentBytes)
    }
}
