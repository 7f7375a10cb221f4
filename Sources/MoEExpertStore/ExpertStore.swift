import Foundation
import MoECheckpoint
import MoEModel
import MoESystem
import MoETensor

/// An opened expert store: manifest checked, config read, resident tensors mapped and checksummed, expert files
/// present with the right sizes. Loading never accepts a store without its manifest.
public final class ExpertStore: @unchecked Sendable {  // immutable after init: every stored property is a `let`
    public let path: String
    public let manifest: StoreManifest
    public let config: ModelConfig
    /// resident.safetensors, opened like any checkpoint (less the matrices the int8 companion replaces, when open).
    public let resident: Checkpoint
    /// The int8 companion (resident-int8.safetensors), when it was asked for and the store has one.
    public let residentInt8: Checkpoint?

    /// Whether `path` looks like a store (a directory with manifest.json, or an interrupted conversion).
    public static func isStore(_ path: String) -> Bool {
        FileSystem.exists(path + "/" + StoreManifest.fileName) || FileSystem.exists(path + "/" + StoreConverter.stateFileName)
    }

    /// Opens `path`. With `verifyResident` (a store opened to compute with), resident.safetensors is read into
    /// memory the process owns and every resident tensor is checksummed there (seconds for Kimi K2's 23 GB): the
    /// forward pass then never computes with damaged resident weights, and a resident file truncated or rewritten
    /// while the engine runs cannot reach them (a mapping would raise SIGBUS or change under the model). Without
    /// it (inspect, plan, bench) the file is only mapped for its header.
    ///
    /// With `residentInt8` and a store that has the int8 companion (`StoreManifest.residentInt8`), the companion is
    /// opened the same way and its matrices replace their bf16 twins, whose bytes are then not read at all: the
    /// resident memory is the companion's plus what it does not replace (`residentBytesInMemory`).
    public init(path: String, verifyResident: Bool = true, residentInt8 wantInt8: Bool = false) throws(StoreError) {
        self.path = path
        let manifestPath = path + "/" + StoreManifest.fileName
        guard FileSystem.exists(manifestPath) else { throw .incomplete(store: path) }
        manifest = try StoreManifest.load(manifestPath)
        for f in manifest.files where f.name == "config.json" {
            try Self.checkCarried(f, in: path)
        }
        do { config = try ModelConfig.load(path: path + "/config.json") } catch { throw .checkpoint(error) }
        var replaced: Set<String> = []
        if wantInt8, let section = manifest.residentInt8 {
            let file = path + "/" + section.file
            let companion: Checkpoint
            do { companion = try Checkpoint(path: file, copy: verifyResident) } catch { throw .checkpoint(error) }
            try Self.checkResidentTable(companion, file, section: section)
            residentInt8 = companion
            let kept = manifest.resident.tensors
            replaced = Set(section.tensors.keys.filter { kept[$0] != nil })
        } else {
            residentInt8 = nil
        }
        let residentPath = path + "/" + manifest.resident.file
        do { resident = try Checkpoint(path: residentPath, copy: verifyResident, skipping: verifyResident ? replaced : []) } catch {
            throw .checkpoint(error)
        }
        try Self.checkResidentTable(resident, residentPath, section: manifest.resident)
        if verifyResident { try verifyResidentChecksums() }
        try checkExpertFiles()
    }

    static func checkCarried(_ f: CarriedFile, in dir: String) throws(StoreError) {
        let p = dir + "/" + f.name
        guard f.bytes >= 0, let data = try? FileSystem.contents(p, limit: f.bytes), data.count == f.bytes,
              data.withUnsafeBytes({ XXHash64.hex(XXHash64.hash($0)) }) == f.xxh64 else { throw .fileChecksum(file: p) }
    }

    /// Parses the resident file's header (mapped, nothing read but the header) and checks it against the manifest.
    static func checkResidentHeader(_ file: String, section: StoreManifest.ResidentSection) throws(StoreError) {
        let resident: Checkpoint
        do { resident = try Checkpoint(path: file) } catch { throw .checkpoint(error) }
        try checkResidentTable(resident, file, section: section)
    }

    /// The safetensors header and the manifest's section for that file must agree on every tensor.
    static func checkResidentTable(_ resident: Checkpoint, _ file: String, section: StoreManifest.ResidentSection) throws(StoreError) {
        guard resident.tensorNames.count == section.tensors.count else {
            throw .badManifest(file: file, reason: "holds \(resident.tensorNames.count) tensors, the manifest lists \(section.tensors.count)")
        }
        for (name, t) in section.tensors {
            guard let (_, e) = resident.entry(name) else { throw .checkpoint(.missingTensor(tensor: name, searched: file)) }
            guard e.dtype.rawValue == t.dtype, e.shape == t.shape, e.range == t.offset..<(t.offset + t.bytes) else {
                throw .badManifest(file: file, reason: "tensor '\(name)' differs between the file header and the manifest")
            }
        }
    }

    /// Checksums every resident tensor in use against the manifest (those the int8 companion replaced were not read).
    public func verifyResidentChecksums() throws(StoreError) {
        var files = [(resident, manifest.resident)]
        if let residentInt8, let section = manifest.residentInt8 { files.append((residentInt8, section)) }
        for (checkpoint, section) in files {
            let file = path + "/" + section.file
            for (name, t) in section.tensors.sorted(by: { $0.key < $1.key }) where !checkpoint.isSkipped(name) {
                let tensor: Tensor
                do { tensor = try checkpoint.tensor(name) } catch { throw .checkpoint(error) }
                guard XXHash64.hex(XXHash64.hash(tensor.data, count: tensor.byteCount)) == t.xxh64 else {
                    throw .tensorChecksum(tensor: name, file: file)
                }
            }
        }
    }

    /// The bytes of resident weights this store holds in memory when open as it is: the resident file, less what
    /// the int8 companion replaces, plus the companion.
    public var residentBytesInMemory: Int { manifest.residentBytes(int8: residentInt8 != nil) }

    /// Each MoE layer has its file with `experts × extentBytes` bytes.
    private func checkExpertFiles() throws(StoreError) {
        let layout = manifest.experts.layout
        guard manifest.experts.files.map(\.layer) == config.moeLayers else {
            throw .badManifest(file: path + "/" + StoreManifest.fileName, reason: "expert files do not cover the MoE layers \(config.moeLayers)")
        }
        let expected = layout.encoding == .ggml
            ? layout.ggmlTypes.map { ExpertLayout(ggml: $0, hidden: config.hiddenSize, intermediate: config.moeIntermediateSize,
                                                  alignment: layout.alignment) }
            : ExpertLayout(encoding: layout.encoding, scaleType: layout.scaleType, blockRows: layout.blockRows,
                           blockCols: layout.blockCols, hidden: config.hiddenSize,
                           intermediate: config.moeIntermediateSize, alignment: layout.alignment)
        guard layout.extentBytes % layout.alignment == 0, layout == expected else {
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
            let actual: Int
            do { actual = try FileSystem.regularFileSize(p) } catch { throw .system(error) }
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

    /// Everything but the routed experts, shape-checked, as views into resident.safetensors (and its int8
    /// companion, whose matrices come first, when open).
    public func residentWeights() throws(StoreError) -> ResidentWeights {
        let source: any TensorSource = residentInt8.map { ResidentOverlay(top: $0, base: resident) } ?? resident
        do { return try CheckpointWeights(checkpoint: source, config: config, interleavedInt8: true).resident() } catch { throw .checkpoint(error) }
    }

    /// Where expert `e` of `layer` lives: its file and byte offset.
    public func location(layer: Int, expert e: Int) -> (file: ExpertFile, offset: Int)? {
        guard let f = manifest.experts.files.first(where: { $0.layer == layer }), e >= 0, e < f.experts else { return nil }
        return (f, e * manifest.experts.layout.extentBytes)
    }
}

/// The int8 companion over the resident file: a tensor comes from `top` when it holds one of that name, else from
/// `base` (whose replaced matrices were left unread).
final class ResidentOverlay: TensorSource {  // immutable: two read-only checkpoints
    let top: Checkpoint
    let base: Checkpoint

    init(top: Checkpoint, base: Checkpoint) {
        self.top = top
        self.base = base
    }

    var directory: String { base.directory }
    func contains(_ name: String) -> Bool { top.contains(name) || base.contains(name) }
    func tensor(_ name: String, shape: [Int]) throws(CheckpointError) -> Tensor {
        try (top.contains(name) ? top : base).tensor(name, shape: shape)
    }
    func path(of name: String) -> String { top.contains(name) ? top.path(of: name) : base.path(of: name) }
}
