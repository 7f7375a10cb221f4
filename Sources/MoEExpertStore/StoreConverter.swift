import Foundation
import MoECheckpoint
import MoEModel
import MoESystem
import MoETensor

/// `moestream convert`: a Hugging Face directory → an expert store, streaming.
///
/// Memory stays bounded by one expert extent, one write buffer and one row, whatever the source's size: source
/// pages are released after each tensor, written data is synced and dropped from the page cache.
/// Work is done in units (the resident file, then one file per MoE layer), each written as `NAME.partial`,
/// synced, and renamed into place with a checksum sidecar; a re-run after a kill skips finished units and
/// redoes the rest, ending byte-identical to an uninterrupted run. manifest.json is written last, so a store
/// without one is never accepted.
public struct StoreConverter {
    public enum ExpertsOption: String, CaseIterable, Sendable { case int4, int8, bf16, source }
    /// What the resident matrices become: bf16, int8 with an fp32 scale per 32 values of a row (the Linear weights
    /// of attention, the dense layers and the shared experts; embeddings, routers and kv_b stay bf16), both (the
    /// default: bf16 in resident.safetensors, what runs multiply unless asked otherwise, and those matrices again in
    /// int8 in the companion resident-int8.safetensors, for `--resident-weights int8`), or kept as the source has them.
    public enum ResidentOption: String, CaseIterable, Sendable {
        case bf16, int8, source
        case bf16AndInt8 = "bf16+int8"
    }

    public struct Progress: Sendable {
        public var bytesDone: Int
        public var bytesTotal: Int
        public var unit: String
    }

    public var source: String
    public var output: String
    public var experts: ExpertsOption = .int4
    public var resident: ResidentOption = .bf16AndInt8
    /// Size of each write (a multiple of 4096).
    public var chunkBytes: Int = 64 << 20
    public var onProgress: (Progress) -> Void = { _ in }
    public var log: (String) -> Void = { _ in }

    public init(source: String, output: String) {
        self.source = source
        self.output = output
    }

    static let stateFileName = ".convert-state.json"

    public func run() throws(StoreError) {
        if source.hasSuffix(".gguf") { return try runGGUF() }
        let src = try ConversionSource(path: source)
        let plan = try Plan(src, experts: experts, resident: resident)
        let companion = resident == .bf16AndInt8 ? try Plan.int8Companion(src, layout: plan.layout) : nil
        let fingerprint = try plan.fingerprint(src) + (companion.map { "int8 companion \($0.residentFileBytes) \($0.residentTensors.count)\n" } ?? "")
        if try prepareOutput(fingerprint: fingerprint) { return }

        var progress = Progress(bytesDone: 0, bytesTotal: plan.totalBytes + (companion?.residentFileBytes ?? 0), unit: "")
        let residentSums = try residentUnit(plan, progress: &progress) { t, emit throws(StoreError) in try plan.produce(t, src, emit) }
        let companionSums = try companion.map { c throws(StoreError) in
            try residentUnit(c, file: StoreManifest.residentInt8FileName, progress: &progress) { t, emit throws(StoreError) in
                try c.produce(t, src, emit)
            }
        }
        var expertFiles: [ExpertFile] = []
        for layer in src.config.moeLayers {
            let (rel, sums) = try expertUnit(plan, layer: layer, experts: src.config.numRoutedExperts, progress: &progress) { e, extent throws(StoreError) in
                let base = "model.layers.\(layer).mlp.experts.\(e)"
                for (proj, m) in [("gate_proj", plan.layout.gate), ("up_proj", plan.layout.up), ("down_proj", plan.layout.down)] {
                    let name = base + "." + proj
                    let matrix = try src.matrix(name, rows: m.rows, cols: m.cols)
                    try ExpertTranscoder.encode(matrix, as: plan.layout, into: extent, at: m, tensor: src.name(name, ".weight"))
                    src.release(name)
                }
            }
            expertFiles.append(ExpertFile(layer: layer, path: rel, experts: src.config.numRoutedExperts, checksums: sums))
        }
        try finish(plan, kind: src.kind.name, residentSums: residentSums, expertFiles: expertFiles, carried: try writeCarriedFiles(src),
                   layers: src.config.moeLayers, companion: companion.map { ($0, companionSums ?? [:]) })
    }

    /// Unit 1, resident.safetensors (and with `--resident bf16+int8` unit 2, its int8 companion): kept when a
    /// finished one is there (a resumed conversion), else written with each tensor's bytes as `produce` emits them.
    /// Returns the tensors' checksums.
    func residentUnit(_ plan: Plan, file: String = StoreManifest.residentFileName, progress: inout Progress,
                      produce: (Plan.ResidentTensor, (UnsafeRawPointer, Int) throws -> Void) throws(StoreError) -> Void)
        throws(StoreError) -> [String: String] {
        let path = output + "/" + file
        if let done: [String: String] = try readSidecar(path) {
            progress.bytesDone += plan.residentFileBytes
            log("\(file): already written, skipped")
            return done
        }
        progress.unit = file
        return try writeResident(plan, to: path, progress: &progress, report: { onProgress($0) }, produce: produce)
    }

    /// Units 2…: MoE layer `layer`'s expert file, kept when finished, else written extent by extent (`fill`).
    /// Returns its path in the store and the extents' checksums.
    func expertUnit(_ plan: Plan, layer: Int, experts: Int, progress: inout Progress,
                    fill: (Int, UnsafeMutableRawPointer) throws(StoreError) -> Void) throws(StoreError) -> (String, [String]) {
        try wrap { try FileSystem.makeDirectory(output + "/experts") }
        let rel = String(format: "experts/layer-%03d.bin", layer)
        if let done: [String] = try readSidecar(output + "/" + rel) {
            progress.bytesDone += plan.expertFileBytes
            log("\(rel): already written, skipped")
            return (rel, done)
        }
        progress.unit = rel
        return (rel, try writeExperts(plan, experts: experts, to: output + "/" + rel, progress: &progress, report: { onProgress($0) }, fill: fill))
    }

    /// The manifest, last (its presence means the store is complete), then the clean-up of sidecars and state.
    func finish(_ plan: Plan, kind: String, residentSums: [String: String], expertFiles: [ExpertFile], carried: [CarriedFile],
                layers: [Int], companion: (plan: Plan, sums: [String: String])? = nil) throws(StoreError) {
        var manifest = StoreManifest(
            format: StoreManifest.formatName, version: StoreManifest.currentVersion,
            source: .init(path: source, kind: kind, expertsOption: experts.rawValue, residentOption: resident.rawValue),
            resident: .init(file: StoreManifest.residentFileName, bytes: plan.residentFileBytes,
                            tensors: plan.residentTable(checksums: residentSums)),
            residentInt8: companion.map {
                .init(file: StoreManifest.residentInt8FileName, bytes: $0.plan.residentFileBytes,
                      tensors: $0.plan.residentTable(checksums: $0.sums))
            },
            experts: .init(layout: plan.layout, files: expertFiles), files: carried, checksum: "")
        manifest.source.path = (source as NSString).standardizingPath
        let data: Data
        do { data = try manifest.encoded() } catch { throw .badManifest(file: output, reason: "cannot encode: \(error)") }
        try writeAtomically(data, to: output + "/" + StoreManifest.fileName)
        cleanUp(layers: layers)
        log("store complete: \(output)")
    }

    // MARK: - Output directory and resuming

    /// Returns true when the store is already complete for this source and these options.
    func prepareOutput(fingerprint: String) throws(StoreError) -> Bool {
        let manifestPath = output + "/" + StoreManifest.fileName
        let statePath = output + "/" + Self.stateFileName
        if FileSystem.exists(manifestPath) {
            let data = FileManager.default.contents(atPath: manifestPath) ?? Data()
            let m = try StoreManifest.decode(data, file: manifestPath)
            guard m.source.expertsOption == experts.rawValue, m.source.residentOption == resident.rawValue,
                  m.source.path == (source as NSString).standardizingPath else {
                throw .outputInUse(path: output, reason: "already a complete store made from \(m.source.path) with --experts "
                    + "\(m.source.expertsOption) --resident \(m.source.residentOption); choose another output directory")
            }
            // A kill between the manifest and the clean-up leaves sidecars and the state file: remove them.
            cleanUp(layers: (try? ModelConfig.load(path: output + "/config.json"))?.moeLayers ?? [])
            log("\(output): already a complete store")
            return true
        }
        if FileSystem.exists(statePath) {
            let state = (try? String(contentsOfFile: statePath, encoding: .utf8)) ?? ""
            guard state == fingerprint else {
                throw .outputInUse(path: output, reason: "holds an interrupted conversion of another source or with other options; "
                    + "remove it or choose another output directory")
            }
            log("resuming the interrupted conversion in \(output)")
            return false
        }
        if let contents = try? FileManager.default.contentsOfDirectory(atPath: output) {
            // Only a state file that was being written when a kill came: this conversion never started.
            guard contents.allSatisfy({ $0 == Self.stateFileName + ".partial" }) else {
                throw .outputInUse(path: output, reason: "exists and is not empty")
            }
        }
        do { try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true) } catch {
            let code = (error as NSError).userInfo[NSUnderlyingErrorKey].flatMap { ($0 as? NSError)?.code } ?? Int(EIO)
            throw .system(SystemError(call: "mkdir (\(error.localizedDescription))", path: output, errno: Int32(code)))
        }
        try writeAtomically(Data(fingerprint.utf8), to: statePath)
        return false
    }

    /// The sidecar of a finished unit, or nil when the unit must be (re)done.
    func readSidecar<T: Decodable>(_ unitPath: String) throws(StoreError) -> T? {
        guard FileSystem.exists(unitPath), let data = FileManager.default.contents(atPath: unitPath + ".sums.json") else { return nil }
        return try? JSONDecoder().decode(T.self, from: data)
    }

    /// Finishes a unit: sidecar first, then the data file renamed into place (its presence means "done").
    func finishUnit<T: Encodable>(_ partial: String, _ final: String, sums: T) throws(StoreError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data: Data
        do { data = try encoder.encode(sums) } catch { throw .badManifest(file: final, reason: "\(error)") }
        try writeAtomically(data, to: final + ".sums.json")
        try wrap { try FileSystem.rename(partial, final) }
        try wrap { try FileSystem.syncDirectory((final as NSString).deletingLastPathComponent) }
    }

    func writeAtomically(_ data: Data, to path: String) throws(StoreError) {
        let tmp = path + ".partial"
        try wrap {
            let f = try File(path: tmp, mode: .createTruncate)
            try data.withUnsafeBytes { b in
                if let base = b.baseAddress { try f.write(base, count: b.count, at: 0) }
            }
            try f.sync()
            try FileSystem.rename(tmp, path)
            try FileSystem.syncDirectory((path as NSString).deletingLastPathComponent)
        }
    }

    func cleanUp(layers: [Int]) {
        FileSystem.remove(output + "/" + StoreManifest.residentFileName + ".sums.json")
        FileSystem.remove(output + "/" + StoreManifest.residentInt8FileName + ".sums.json")
        for layer in layers {
            FileSystem.remove(output + "/" + String(format: "experts/layer-%03d.bin", layer) + ".sums.json")
        }
        FileSystem.remove(output + "/" + Self.stateFileName)
    }

    // MARK: - Resident file

    /// Writes resident.safetensors: the plan's header, then each tensor's bytes as `produce` emits them.
    func writeResident(_ plan: Plan, to path: String, progress: inout Progress, report: @escaping (Progress) -> Void,
                       produce: (Plan.ResidentTensor, (UnsafeRawPointer, Int) throws -> Void) throws(StoreError) -> Void)
        throws(StoreError) -> [String: String] {
        let partial = path + ".partial"
        var sums: [String: String] = [:]
        try wrap {
            let w = try StreamWriter(path: partial, chunkBytes: chunkBytes)
            var done = progress
            w.onWrite = { n in done.bytesDone += n; report(done) }
            let header = plan.residentHeader
            try header.withUnsafeBytes { try w.append($0.baseAddress!, count: $0.count) }
            for t in plan.residentTensors {
                var hasher = XXHash64.Streaming()
                try produce(t) { p, n in
                    hasher.update(p, count: n)
                    try w.append(p, count: n)
                }
                sums[t.name] = XXHash64.hex(hasher.finish())
            }
            try w.finish()
            progress.bytesDone = done.bytesDone
        }
        try finishUnit(partial, path, sums: sums)
        return sums
    }

    // MARK: - Expert files

    /// Writes one layer's expert file: `experts` extents, each zeroed and then filled by `fill(expert, extent)`.
    func writeExperts(_ plan: Plan, experts: Int, to path: String, progress: inout Progress, report: @escaping (Progress) -> Void,
                      fill: (Int, UnsafeMutableRawPointer) throws(StoreError) -> Void) throws(StoreError) -> [String] {
        let partial = path + ".partial"
        let layout = plan.layout
        let extent = UnsafeMutableRawPointer.allocate(byteCount: layout.extentBytes, alignment: 4096)
        defer { extent.deallocate() }
        var sums: [String] = []
        var done = progress
        let writer: StreamWriter
        do { writer = try StreamWriter(path: partial, chunkBytes: chunkBytes) } catch { throw .system(error) }
        writer.onWrite = { n in done.bytesDone += n; report(done) }
        for e in 0..<experts {
            extent.initializeMemory(as: UInt8.self, repeating: 0, count: layout.extentBytes)
            try fill(e, extent)
            sums.append(XXHash64.hex(XXHash64.hash(extent, count: layout.extentBytes)))
            try wrap { try writer.append(extent, count: layout.extentBytes) }
        }
        try wrap { try writer.finish() }
        progress.bytesDone = done.bytesDone
        try finishUnit(partial, path, sums: sums)
        return sums
    }

    // MARK: - Carried files

    static let carriedNames = ["tiktoken.model", "tokenizer_config.json", "generation_config.json",
                               "special_tokens_map.json", "chat_template.jinja", "tokenization_kimi.py"]

    private func writeCarriedFiles(_ src: ConversionSource) throws(StoreError) -> [CarriedFile] {
        var out: [CarriedFile] = []
        let configData: Data
        do {
            configData = try JSONSerialization.data(withJSONObject: src.storeConfig, options: [.sortedKeys, .prettyPrinted])
        } catch { throw .badManifest(file: "config.json", reason: "\(error)") }
        try writeAtomically(configData, to: output + "/config.json")
        out.append(CarriedFile(name: "config.json", bytes: configData.count,
                               xxh64: configData.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) }))
        for name in Self.carriedNames {
            let from = (source as NSString).appendingPathComponent(name)
            guard let data = FileManager.default.contents(atPath: from) else { continue }
            try writeAtomically(data, to: output + "/" + name)
            out.append(CarriedFile(name: name, bytes: data.count, xxh64: data.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0)) }))
        }
        return out
    }
}

/// Runs a block of system calls, turning their `SystemError` into a `StoreError`.
@inline(__always) func wrap<T>(_ body: () throws -> T) throws(StoreError) -> T {
    do { return try body() } catch let e as StoreError { throw e } catch let e as SystemError { throw .system(e) } catch {
        throw .system(SystemError(call: "\(error)", path: nil, errno: 5))
    }
}
