import Foundation
import MoECheckpoint
import MoEModel
import MoESystem
import MoETestSupport
import Testing
@testable import MoEExpertStore

/// Stores and files that are hostile rather than merely damaged: files that change while the engine runs, paths
/// that are FIFOs, manifests signed by someone else with values chosen to overflow.
@Suite struct HostileStoreTests {
    /// The resident file is read into memory at load: truncating it, or rewriting it in place, while the model
    /// is in use neither crashes the process (a mapping would raise SIGBUS on the next page touched) nor changes
    /// the output. Fails with a mapped resident file: the truncation kills the test process, the rewrite changes
    /// the logits.
    @Test func residentFileChangedWhileInUseNeverReachesTheModel() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        let model = try ExpertStore(path: path).loadModel()
        let prompt = [3, 17, 42, 7]
        let before = try model.forward(prompt, cache: model.makeCache(), logits: .all).logits
        let residentPath = path + "/" + StoreManifest.residentFileName
        let size = try FileSystem.regularFileSize(residentPath)
        // Rewritten in place with other bytes (a `cp` of another file over it), then cut to a few bytes.
        let h = FileHandle(forUpdatingAtPath: residentPath)!
        try h.seek(toOffset: 4096)
        h.write(Data(repeating: 0x7F, count: size - 8192))
        try h.truncate(atOffset: 100)
        try h.close()
        let after = try model.forward(prompt, cache: model.makeCache(), logits: .all).logits
        #expect(after == before)
        // Opening it again sees the damage and names the file.
        #expect(throws: StoreError.self) { try ExpertStore(path: path) }
    }

    /// A FIFO where a file should be: every loader refuses it at once instead of waiting for a writer forever.
    /// Fails (hangs) when files are opened without O_NONBLOCK or read without checking they are regular.
    @Test func fifosAreRefusedNotWaitedOn() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        for victim in ["experts/layer-001.bin", "config.json", StoreManifest.residentFileName, StoreManifest.fileName] {
            let copy = Fixtures.scratchDirectory("fifo") + "/store"
            try FileManager.default.copyItem(atPath: path, toPath: copy)
            try FileManager.default.removeItem(atPath: copy + "/" + victim)
            #expect(mkfifo(copy + "/" + victim, 0o644) == 0)
            let report = StoreVerifier(path: copy).run()
            #expect(!report.ok, "\(victim)")
            #expect(report.problems.contains { $0.contains(victim) }, "\(victim): \(report.problems)")
            #expect(throws: StoreError.self) { try ExpertStore(path: copy) }
        }
    }

    /// Expert files may be symbolic links (layers spread over drives): sizes are read through the link.
    @Test func symlinkedExpertFilesAreFollowed() throws {
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16)
        let elsewhere = Fixtures.scratchDirectory("drive2") + "/layer-001.bin"
        try FileManager.default.moveItem(atPath: path + "/experts/layer-001.bin", toPath: elsewhere)
        try FileManager.default.createSymbolicLink(atPath: path + "/experts/layer-001.bin", withDestinationPath: elsewhere)
        #expect(StoreVerifier(path: path).run().ok)
        let model = try ExpertStore(path: path).loadModel()
        _ = try model.forward([1, 2, 3], cache: model.makeCache())
    }

    /// Manifests signed again after their numbers were made hostile: each is refused by name, never trapped on.
    @Test(arguments: ["alignment", "extentBytes", "experts with", "leaves the store", "resident tensor", "rowInterleave",
                      "do not fit its", "blocks of 8", "convert the checkpoint again", "replaces nothing", "companion is the resident file"])
    func hostileManifestIsRefusedByName(expected: String) throws {
        func edit(_ m: inout StoreManifest) {
            switch expected {
            case "alignment": m.experts.layout.alignment = 0
            case "extentBytes": m.experts.layout.extentBytes = 1 << 62
            case "experts with": m.experts.files[0].experts = -1
            case "leaves the store": m.experts.files[0].path = "../../etc/passwd"
            case "rowInterleave": m.experts.layout.rowInterleave = nil
            case "do not fit its": m.experts.layout.down.rows *= 2  // the kernels would read past the matrix
            case "blocks of 8": m.experts.layout.gate.rows -= 4
            case "convert the checkpoint again": m.version = 1    // a store from before the interleaved layout
            case "replaces nothing":  // a companion matrix with no bf16 twin would be added, not swapped in
                let key = m.residentInt8!.tensors.keys.sorted().first { !$0.hasSuffix(".weight_scale") }!
                m.residentInt8!.tensors["model.layers.0.self_attn.extra.weight"] = m.residentInt8!.tensors.removeValue(forKey: key)
            case "companion is the resident file": m.residentInt8!.file = m.resident.file
            default: m.resident.tensors[m.resident.tensors.keys.sorted()[0]]!.bytes = Int.max - 3
            }
        }
        let path = try convert("kimi_k2", experts: .int4, resident: .bf16AndInt8)
        let manifestPath = path + "/" + StoreManifest.fileName
        var m = try JSONDecoder().decode(StoreManifest.self, from: Data(contentsOf: URL(fileURLWithPath: manifestPath)))
        edit(&m)
        try m.encoded().write(to: URL(fileURLWithPath: manifestPath))
        #expect { try ExpertStore(path: path) } throws: { e in
            guard case .badManifest(let f, let why) = e as! StoreError else { return false }
            return f == manifestPath && why.contains(expected)
        }
        let report = StoreVerifier(path: path).run()
        #expect(report.problems.count == 1 && report.problems[0].contains(expected))
    }
}
