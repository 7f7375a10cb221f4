import Foundation
import MoECheckpoint
import MoESystem

/// Checksums for a GGUF run directly, kept beside it (`FILE.gguf.xxh64.json`, FILE the first part of a split set):
/// a GGUF carries none, so `moestream verify FILE.gguf --write-sums` reads it once and records xxHash64 of every
/// tensor that stays in memory and of every routed expert, and direct mode then checks what it loads and reads
/// against them, as it does a store's manifest.
///
/// An expert's sum is xxHash64 over its gate, up and down rows of the stacked `ffn_*_exps` tensors, in that order,
/// as one stream (`ExpertReads.checksums`: the bytes of its parts in order). The sums describe the file as it was
/// when they were written: they find a later change or a bad read, not a download that was damaged before.
///
/// ```json
/// {"format": "moestream-gguf-sums", "version": 1,
///  "files": [{"name": "K2-00001-of-00008.gguf", "bytes": 49759200256}, …],
///  "tensors": {"token_embd.weight": "9ae16a3b2f90404f", …},
///  "experts": [{"layer": 1, "sums": ["…", … one per expert]}, …]}
/// ```
public struct GGUFSums: Codable, Sendable, Equatable {
    public struct FileEntry: Codable, Sendable, Equatable {
        public var name: String
        public var bytes: Int
    }

    public struct LayerSums: Codable, Sendable, Equatable {
        public var layer: Int
        public var sums: [String]
    }

    public static let formatName = "moestream-gguf-sums"
    public static let currentVersion = 1

    public var format = GGUFSums.formatName
    public var version = GGUFSums.currentVersion
    public var files: [FileEntry]
    /// Every tensor but the stacked experts, by name.
    public var tensors: [String: String]
    /// Per MoE layer in order, one sum per routed expert.
    public var experts: [LayerSums]

    /// Where the sums of `gguf` live: beside its first part, with this suffix.
    public static func path(for gguf: GGUFCheckpoint) -> String { gguf.path + suffix }
    public static let suffix = ".xxh64.json"

    /// Whether `name` is one of the stacked routed-expert tensors (summed per expert, not whole).
    static func isExpertStack(_ name: String) -> Bool {
        name.hasPrefix("blk.") && (name.hasSuffix(".ffn_gate_exps.weight") || name.hasSuffix(".ffn_up_exps.weight")
                                    || name.hasSuffix(".ffn_down_exps.weight"))
    }

    /// Reads every byte of `gguf`'s tensors and sums them; `progress(bytes)` after each expert and tensor. The
    /// mapping's pages are released as it goes, so a file larger than memory can be summed.
    public static func compute(_ gguf: GGUFCheckpoint, _ c: ModelConfig, progress: (Int) -> Void = { _ in }) throws(StoreError) -> GGUFSums {
        let sizes = try fileSizes(gguf)
        var done = 0
        var tensors: [String: String] = [:]
        for file in gguf.files {
            for t in file.tensors where !isExpertStack(t.name) {
                let bytes = file.bytes(of: t)
                tensors[t.name] = XXHash64.hex(bytes.baseAddress.map { XXHash64.hash($0, count: bytes.count) } ?? XXHash64.hash([]))
                file.release(t)
                done += t.range.count
                progress(done)
            }
        }
        var experts: [LayerSums] = []
        for l in c.moeLayers {
            let stacks = try expertStacks(gguf, c, layer: l)
            var sums: [String] = []
            sums.reserveCapacity(c.numRoutedExperts)
            for e in 0..<c.numRoutedExperts {
                sums.append(XXHash64.hex(expertSum(stacks, expert: e)))
                done += stacks.reduce(0) { $0 + $1.stride }
                progress(done)
            }
            for s in stacks { s.file.release(s.info) }
            experts.append(LayerSums(layer: l, sums: sums))
        }
        return GGUFSums(files: zip(gguf.files, sizes).map { FileEntry(name: ($0.0.path as NSString).lastPathComponent, bytes: $0.1) },
                        tensors: tensors, experts: experts)
    }

    /// One of an expert layer's stacked tensors: the part that holds it and each expert's bytes.
    struct Stack {
        let file: GGUFFile
        let info: GGUFFile.TensorInfo
        let stride: Int
    }

    /// Layer `l`'s gate, up and down stacks (the reader checked them: every expert the same whole number of bytes).
    static func expertStacks(_ gguf: GGUFCheckpoint, _ c: ModelConfig, layer l: Int) throws(StoreError) -> [Stack] {
        try ["gate", "up", "down"].map { (proj: String) throws(StoreError) -> Stack in
            let name = "blk.\(l).ffn_\(proj)_exps.weight"
            guard let (file, info) = gguf.info(name), c.numRoutedExperts > 0, info.range.count % c.numRoutedExperts == 0 else {
                throw .unsupportedSource(file: gguf.path, reason: "tensor '\(name)' is missing or not \(c.numRoutedExperts) experts of equal size")
            }
            return Stack(file: file, info: info, stride: info.range.count / c.numRoutedExperts)
        }
    }

    /// xxHash64 over expert `e`'s gate, up and down bytes in order.
    static func expertSum(_ stacks: [Stack], expert e: Int) -> UInt64 {
        var h = XXHash64.Streaming()
        for s in stacks {
            let all = s.file.bytes(of: s.info)
            if let base = all.baseAddress { h.update(base + e * s.stride, count: s.stride) }
        }
        return h.finish()
    }

    /// The parts' sizes, following symbolic links (a Hugging Face cache's snapshot holds links to its blobs).
    static func fileSizes(_ gguf: GGUFCheckpoint) throws(StoreError) -> [Int] {
        var sizes: [Int] = []
        for f in gguf.files {
            do { sizes.append(try FileSystem.regularFileSize(f.path)) } catch { throw .system(error) }
        }
        return sizes
    }

    /// Writes the sums beside `gguf` (through a temporary file and a rename, so a reader never sees half of it).
    public func write(for gguf: GGUFCheckpoint) throws(StoreError) {
        let target = Self.path(for: gguf), temporary = target + ".partial"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do { try encoder.encode(self).write(to: URL(fileURLWithPath: temporary)) } catch {
            throw .unsupportedSource(file: temporary, reason: "cannot be written: \(error.localizedDescription)")
        }
        do { try FileSystem.rename(temporary, target) } catch { throw .system(error) }
    }

    /// The sums checked against the file they describe, as numbers. Nil where there is no sums file.
    public struct Checked: Sendable {
        /// Per MoE layer in order, per expert (`ExpertReads.checksums`).
        public let experts: [[UInt64]]
        public let tensors: [String: UInt64]
        public let path: String
    }

    /// Loads the sums beside `gguf`, if there are any, and checks that they describe this file: the same parts of
    /// the same sizes, a sum for every tensor in memory and every routed expert of every MoE layer, each 16 hex
    /// digits. A sums file that fails any of these is refused with what is wrong (it is input like any other).
    public static func load(for gguf: GGUFCheckpoint, _ c: ModelConfig) throws(StoreError) -> Checked? {
        let path = path(for: gguf)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        func bad(_ reason: String) -> StoreError { .badSums(file: path, reason: reason) }
        // 64 MB: about 40 bytes per sum, ~23,000 experts and ~1,100 tensors for Kimi K2 need under 2 MB.
        let bytes: [UInt8]
        do { bytes = try FileSystem.contents(path, limit: 64 << 20) } catch { throw .system(error) }
        let sums: GGUFSums
        do { sums = try JSONDecoder().decode(GGUFSums.self, from: Data(bytes)) } catch {
            throw bad("not a GGUF sums file (\(error))")
        }
        guard sums.format == formatName else { throw bad("format '\(sums.format)', expected '\(formatName)'") }
        guard sums.version == currentVersion else {
            throw bad("version \(sums.version), this build reads \(currentVersion) (write new ones with `moestream verify \(gguf.path) --write-sums`)")
        }
        let actual = try fileSizes(gguf)
        guard sums.files.count == gguf.files.count else {
            throw bad("describes \(sums.files.count) file(s), the GGUF has \(gguf.files.count)")
        }
        for (i, (entry, file)) in zip(sums.files, gguf.files).enumerated() {
            let name = (file.path as NSString).lastPathComponent
            guard entry.name == name, entry.bytes == actual[i] else {
                throw bad("file \(i + 1) is '\(entry.name)' of \(entry.bytes) bytes, but \(file.path) has \(actual[i]): the sums are not this file's")
            }
        }
        func number(_ hex: String, _ what: String) throws(StoreError) -> UInt64 {
            guard hex.utf8.count == 16, let v = UInt64(hex, radix: 16) else { throw bad("\(what): '\(hex.prefix(40))' is not 16 hex digits") }
            return v
        }
        var tensors: [String: UInt64] = [:]
        for name in gguf.tensorNames where !isExpertStack(name) {
            guard let hex = sums.tensors[name] else { throw bad("no sum for tensor '\(name)'") }
            tensors[name] = try number(hex, "tensor '\(name)'")
        }
        guard sums.tensors.count == tensors.count else {
            throw bad("\(sums.tensors.count - tensors.count) sum(s) for tensors the GGUF does not hold")
        }
        guard sums.experts.map(\.layer) == c.moeLayers else {
            throw bad("expert layers \(sums.experts.map(\.layer).prefix(8)), the model's MoE layers are \(c.moeLayers.first ?? 0)…\(c.moeLayers.last ?? 0)")
        }
        var experts: [[UInt64]] = []
        for layer in sums.experts {
            guard layer.sums.count == c.numRoutedExperts else {
                throw bad("layer \(layer.layer): \(layer.sums.count) expert sums, the model has \(c.numRoutedExperts) experts")
            }
            var row: [UInt64] = []
            row.reserveCapacity(layer.sums.count)
            for (e, hex) in layer.sums.enumerated() { row.append(try number(hex, "layer \(layer.layer) expert \(e)")) }
            experts.append(row)
        }
        return Checked(experts: experts, tensors: tensors, path: path)
    }
}

extension GGUFSums.Checked {
    /// Problems with `gguf`'s in-memory tensors against these sums (each read through the mapping and released),
    /// each naming its tensor and file.
    public func tensorProblems(_ gguf: GGUFCheckpoint, progress: (Int) -> Void = { _ in }) -> [String] {
        var problems: [String] = []
        var done = 0
        for file in gguf.files {
            for t in file.tensors where !GGUFSums.isExpertStack(t.name) {
                let bytes = file.bytes(of: t)
                let h = bytes.baseAddress.map { XXHash64.hash($0, count: bytes.count) } ?? XXHash64.hash([])
                if h != tensors[t.name] { problems.append(StoreError.tensorChecksum(tensor: t.name, file: file.path).description) }
                file.release(t)
                done += t.range.count
                progress(done)
            }
        }
        return problems
    }

    /// Problems with `gguf`'s routed experts against these sums, each naming its layer, expert and file.
    public func expertProblems(_ gguf: GGUFCheckpoint, _ c: ModelConfig, progress: (Int) -> Void = { _ in }) throws(StoreError) -> [String] {
        var problems: [String] = []
        var done = 0
        for (k, l) in c.moeLayers.enumerated() {
            let stacks = try GGUFSums.expertStacks(gguf, c, layer: l)
            for e in 0..<c.numRoutedExperts {
                if GGUFSums.expertSum(stacks, expert: e) != experts[k][e] {
                    let gate = stacks[0]
                    problems.append(StoreError.expertChecksum(layer: l, expert: e, file: gate.file.path,
                                                              offset: gate.info.range.lowerBound + e * gate.stride).description)
                }
                done += stacks.reduce(0) { $0 + $1.stride }
                progress(done)
            }
            for s in stacks { s.file.release(s.info) }
        }
        return problems
    }
}
