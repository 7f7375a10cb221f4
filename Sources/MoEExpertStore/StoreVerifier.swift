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
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            report.problems.append(StoreError.incomplete(store: path).description)
            return report
        }
        let manifest: StoreManifest
        do { manifest = try StoreManifest.decode(data, file: manifestPath) } catch {
            report.problems.append(error.description)
            return report
        }
        for f in manifest.files {
            do { try ExpertStore.checkCarried(f, in: path) } catch { report.problems.append(error.description) }
        }
        // Resident tensors, straight from the file (not through the checkpoint parser, which could refuse the
        // whole file on one bad header entry).
        let residentPath = path + "/" + manifest.resident.file
        if let file = try? File(path: residentPath, mode: .read) {
            for (name, t) in manifest.resident.tensors.sorted(by: { $0.key < $1.key }) {
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
        let extent = manifest.experts.layout.extentBytes
        let buf = UnsafeMutableRawPointer.allocate(byteCount: extent, alignment: 4096)
        defer { buf.deallocate() }
        for f in manifest.experts.files {
            let p = path + "/" + f.path
            guard let file = try? File(path: p, mode: .read) else { report.problems.append("\(p): cannot be opened"); continue }
            let size = (try? file.size()) ?? 0
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
