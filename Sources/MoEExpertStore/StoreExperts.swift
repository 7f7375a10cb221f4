import Foundation
import MoEModel
import MoESystem
import MoETensor

/// Routed experts read from a store with plain synchronous `pread`s, one extent per request, each checked
/// against its checksum before the model may use it. (The cache and io_uring prefetcher replace this reader's
/// role on the token path; it stays as the simplest correct provider.)
/// Sendable: `layout`, `files` and `buffer` are fixed at init; the bytes at `buffer` and the counters are used only
/// under `lock`.
public final class StoreExperts: ExpertProviding, @unchecked Sendable {
    let layout: ExpertLayout
    /// Open file, checksums and (for `ggml` experts) GGML types per layer (index = layer; nil for dense layers).
    private let files: [(file: File, checksums: [UInt64], path: String, types: [GGMLType]?)?]
    private let buffer: UnsafeMutableRawPointer
    private let lock = NSLock()
    private var bytesReadSoFar = 0
    private var readsSoFar = 0
    /// What has been read so far.
    public var bytesRead: Int { lock.lock(); defer { lock.unlock() }; return bytesReadSoFar }
    public var reads: Int { lock.lock(); defer { lock.unlock() }; return readsSoFar }

    public init(store: ExpertStore) throws(StoreError) {
        layout = store.manifest.experts.layout
        var files: [(File, [UInt64], String, [GGMLType]?)?] = Array(repeating: nil, count: store.config.numLayers)
        for f in store.manifest.experts.files {
            let path = store.path + "/" + f.path
            let handle: File
            do { handle = try File(path: path, mode: .read) } catch { throw .system(error) }
            files[f.layer] = (handle, f.checksums.map { UInt64($0, radix: 16) ?? 0 }, path, f.ggmlTypes(layout))
        }
        self.files = files
        buffer = .allocate(byteCount: layout.extentBytes, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    public func withExperts(layer: Int, _ experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        lock.lock()
        defer { lock.unlock() }
        guard layer >= 0, layer < files.count, let entry = files[layer] else {
            throw ModelError.expertUnavailable(layer: layer, expert: experts.first ?? -1, reason: "no expert file for this layer")
        }
        for e in experts {
            let offset = e * layout.extentBytes
            do { try entry.file.read(into: buffer, count: layout.extentBytes, at: offset) } catch {
                throw ModelError.expertUnavailable(layer: layer, expert: e, reason: "\(error)")
            }
            bytesReadSoFar += layout.extentBytes
            readsSoFar += 1
            guard XXHash64.hash(buffer, count: layout.extentBytes) == entry.checksums[e] else {
                throw ModelError.expertUnavailable(layer: layer, expert: e,
                                                   reason: "checksum mismatch in \(entry.path) at offset \(offset)")
            }
            let m = layout.weights(at: UnsafeRawPointer(buffer), owner: self, types: entry.types)
            try body(e, ExpertWeights(gate: m.gate, up: m.up, down: m.down))
        }
    }
}
