import Foundation
import MoESystem

/// `moestream verify`: reads every byte a store holds and checks it against the manifest. Reports every
/// problem found (not only the first), each naming its file and its tensor or layer and expert.
public struct StoreVerifier {
    public struct Report: Sendable {
        public var problems: [String] = []
        public var expertsChecked = 0
        public var tensorsChecked = 0
        public var bytesChecked = 0
        public var ok: Bool { problems.isEmpty }
    }

    public let path: String

    public init(path: String) { self.path = path }

    public func run(progress: (Int) -> Void = { _ in }) -> Report {
        var report = Report()
        let manifestPath = path + "/" + StoreManifest.fileName
        guard FileSystem.exists(manifestPath) else {
            report.problems.append(StoreError.incomplete(store: path).description)
            return report
        }
        let manifest: StoreManifest
        do { manifest = try StoreManifest.load(manifestPath) } catch {
            report.problems.append(error.description)
            return report
        }
        for f in manifest.files {
            do { try ExpertStore.checkCarried(f, in: path) } catch { report.problems.append(error.description) }
        }
        // Resident tensors and the int8 companion's, straight from the files (not through the checkpoint parser,
        // which could refuse a whole file on one bad header entry).
        for section in [manifest.resident] + (manifest.residentInt8.map { [$0] } ?? []) {
            let residentPath = path + "/" + section.file
            if let file = try? File(path: residentPath, mode: .read), let size = try? file.size() {
                if size != section.bytes {
                    report.problems.append("\(residentPath): \(size) bytes, the manifest says \(section.bytes)")
                }
                // The resident header must be one the engine would load (the manifest's table checked against it).
                do { _ = try ExpertStore.checkResidentHeader(residentPath, section: section) } catch {
                    report.problems.append(error.description)
                }
                for (name, t) in section.tensors.sorted(by: { $0.key < $1.key }) {
                    // Validated non-negative and overflow-free by the manifest; checked against the real file before
                    // anything is allocated for it.
                    guard t.bytes <= size - min(size, t.offset), t.offset <= size else {
                        report.problems.append("\(residentPath): tensor '\(name)': bytes \(t.offset)..<\(t.offset + t.bytes) lie past the end of the file (\(size) bytes)")
                        continue
                    }
                    let buf = UnsafeMutableRawPointer.allocate(byteCount: max(t.bytes, 1), alignment: 64)
                    defer { buf.deallocate() }
                    do {
                        try file.read(into: buf, count: t.bytes, at: t.offset)
                        if XXHash64.hex(XXHash64.hash(buf, count: t.bytes)) != t.xxh64 {
                            report.problems.append(StoreError.tensorChecksum(tensor: name, file: residentPath).description)
                        }
                    } catch { report.problems.append("\(residentPath): tensor '\(name)': \(error)") }
                    report.tensorsChecked += 1
                    report.bytesChecked += t.bytes
                }
            } else {
                report.problems.append("\(residentPath): cannot be opened")
            }
        }
        let extent = manifest.experts.layout.extentBytes
        var buffer: UnsafeMutableRawPointer? = nil
        defer { buffer?.deallocate() }
        for f in manifest.experts.files {
            let p = path + "/" + f.path
            let file: File
            do { file = try File(path: p, mode: .read) } catch { report.problems.append("\(p): cannot be opened: \(error)"); continue }
            let size = (try? file.size()) ?? 0
            // The extent buffer is allocated only once a file on disk really holds an extent's bytes: a manifest
            // cannot make verify allocate more than the store occupies.
            if buffer == nil && size >= extent { buffer = .allocate(byteCount: extent, alignment: 4096) }
            if size != f.experts * extent {
                report.problems.append(StoreError.wrongFileSize(file: p, expected: f.experts * extent, actual: size,
                                                                firstMissingExpert: size < f.experts * extent ? size / extent : nil).description)
            }
            for e in 0..<min(f.experts, f.checksums.count) {
                let offset = e * extent
                if offset + extent > size {
                    report.problems.append("layer \(f.layer) expert \(e): missing from \(p) (the file ends at \(size))")
                    continue
                }
                guard let buf = buffer else { continue }
                do {
                    try file.read(into: buf, count: extent, at: offset)
                    if XXHash64.hex(XXHash64.hash(buf, count: extent)) != f.checksums[e] {
                        report.problems.append(StoreError.expertChecksum(layer: f.layer, expert: e, file: p, offset: offset).description)
                    }
                } catch { report.problems.append("layer \(f.layer) expert \(e): \(error)") }
                report.expertsChecked += 1
                report.bytesChecked += extent
                progress(report.bytesChecked)
            }
            file.dropCache()
        }
        return report
    }
}
