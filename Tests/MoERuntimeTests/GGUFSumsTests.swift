import Foundation
import Testing
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoESystem
import MoETestSupport
@testable import MoERuntime

/// A GGUF's sums file (`moestream verify FILE --write-sums`, `GGUFSums`): it checks the file, direct mode checks what
/// it loads and every expert it reads against it (a damaged read is read again; a damaged file is refused naming
/// the layer and expert), and a sums file that does not describe the file is refused naming itself.
@Suite(.serialized) struct GGUFSumsTests {
    let prompt = [1024, 709, 470, 919, 40, 105, 310, 696]

    /// A copy of the Q2_K fixture in a scratch directory (the sums file lies beside it).
    func copy(_ tag: String) throws -> String {
        let path = Fixtures.scratchDirectory("gguf-sums-\(tag)") + "/model.gguf"
        try FileManager.default.copyItem(atPath: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf", toPath: path)
        return path
    }

    func writeSums(_ path: String) throws -> (GGUFCheckpoint, ModelConfig) {
        let gguf = try GGUFCheckpoint(path: path)
        let c = try ModelConfig.fromGGUF(gguf)
        try GGUFSums.compute(gguf, c).write(for: gguf)
        return (gguf, c)
    }

    /// Flips one byte of expert `e`'s rows of `proj` in MoE layer `layer`.
    func damage(_ path: String, layer: Int, expert e: Int, proj: String) throws {
        let gguf = try GGUFCheckpoint(path: path)
        let (_, info) = try #require(gguf.info("blk.\(layer).ffn_\(proj)_exps.weight"))
        let at = info.range.lowerBound + e * (info.range.count / 8) + 5
        let h = try #require(FileHandle(forUpdatingAtPath: path))
        try h.seek(toOffset: UInt64(at))
        let old = h.readData(ofLength: 1)[0]
        try h.seek(toOffset: UInt64(at))
        h.write(Data([old ^ 0x41]))
        try h.close()
    }

    @Test func sumsCheckTheFileAndDirectModeReadsBitForBit() throws {
        let path = try copy("ok")
        let (gguf, c) = try writeSums(path)
        let sums = try #require(try GGUFSums.load(for: gguf, c))
        #expect(sums.experts.count == c.moeLayers.count && sums.experts.allSatisfy { $0.count == 8 })
        let expertProblems = try sums.expertProblems(gguf, c)
        #expect(sums.tensorProblems(gguf).isEmpty && expertProblems.isEmpty)
        // Direct mode with the sums: the same logits as the file in memory, every read checked; a corrupted read
        // is now caught and read again (without sums it went through: GGUFStoreTests.directModeFaultsHeal).
        let reference = try runSequence(try KimiModel.load(gguf: path), prompt, steps: 4)
        let reads = try GGUFExpertReads.make(gguf, c, checksums: sums.experts)
        for plan in [FaultPlan(), FaultPlan([.init(.corrupt, times: 1)])] {
            var config = CacheConfiguration(totalBudget: 2 * reads.slotBytes, topology: .detect())
            config.faults = plan
            let (model, cache) = try GGUFDirect.load(path: path, cache: config)
            #expect(try runSequence(model, prompt, steps: 4) == reference)
            let st = cache.statistics()
            cache.shutdown()
            #expect(st.total.misses > 0 && st.failedReads == 0)
            #expect(plan.rules.isEmpty ? st.readRetries == 0 : st.readRetries >= 1, "\(st.readRetries) retries")
        }
    }

    /// A Hugging Face cache's layout: the snapshot's .gguf is a symbolic link to a blob. Direct mode reads it with
    /// the blob's size (not the link's), and its sums lie beside the link.
    @Test func aLinkedGGUFRunsAndIsSummed() throws {
        let root = Fixtures.scratchDirectory("gguf-hf-cache")
        try FileManager.default.createDirectory(atPath: root + "/blobs", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/snapshots/abc", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf", toPath: root + "/blobs/4f2a")
        let path = root + "/snapshots/abc/model.gguf"
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "../../blobs/4f2a")
        let reference = try runSequence(try KimiModel.load(gguf: Fixtures.root + "/gguf/kimi_k2_q2_k.gguf"), prompt, steps: 4)
        let (gguf, c) = try writeSums(path)
        #expect(FileManager.default.fileExists(atPath: path + ".xxh64.json"))
        let sums = try #require(try GGUFSums.load(for: gguf, c))
        let reads = try GGUFExpertReads.make(gguf, c, checksums: sums.experts)
        #expect(reads.fileSizes == [1_319_680])
        let (model, cache) = try GGUFDirect.load(path: path, cache: CacheConfiguration(totalBudget: 2 * reads.slotBytes, topology: .detect()))
        #expect(try runSequence(model, prompt, steps: 4) == reference)
        #expect(cache.statistics().failedReads == 0)
        cache.shutdown()
    }

    @Test func aDamagedExpertIsFoundAndNeverComputed() throws {
        let path = try copy("damaged")
        let (_, c) = try writeSums(path)
        try damage(path, layer: 1, expert: 5, proj: "up")
        let gguf = try GGUFCheckpoint(path: path)
        let sums = try #require(try GGUFSums.load(for: gguf, c))
        let problems = try sums.expertProblems(gguf, c)
        #expect(problems.count == 1 && problems[0].contains("layer 1 expert 5") && problems[0].contains(path), "\(problems)")
        #expect(sums.tensorProblems(gguf).isEmpty)
        // Direct mode reads expert 5 when a token chooses it, and refuses it (after its retries) naming it.
        var config = CacheConfiguration(totalBudget: 8 * (try GGUFExpertReads.make(gguf, c)).slotBytes, topology: .detect())
        config.prefetch = .off
        let (model, cache) = try GGUFDirect.load(path: path, cache: config)
        defer { cache.shutdown() }
        var failed = false
        for start in 0..<64 where !failed {
            do { _ = try model.forward(Array(0..<8).map { (start * 8 + $0) % 1024 }, cache: model.makeCache()) } catch {
                let d = "\(error)"
                #expect(d.contains("layer 1 expert 5") && d.contains("checksum mismatch"), "\(d)")
                failed = true
            }
        }
        #expect(failed, "no prompt chose layer 1's expert 5")
    }

    /// `convert` checks what it copies against the sums: an intact file converts (and its store verifies); a file
    /// damaged since its sums were written is refused, naming the layer and expert, before a manifest is written.
    @Test func convertChecksTheGGUFAgainstItsSums() throws {
        let path = try copy("convert")
        _ = try writeSums(path)
        func convert(_ out: String) throws {
            var converter = StoreConverter(source: path, output: out)
            converter.experts = .source
            converter.resident = .source
            try converter.run()
        }
        let good = Fixtures.scratchDirectory("gguf-sums-store") + "/store"
        try convert(good)
        #expect(StoreVerifier(path: good).run().ok)
        try damage(path, layer: 1, expert: 2, proj: "down")
        let bad = Fixtures.scratchDirectory("gguf-sums-store") + "/store"
        #expect { try convert(bad) } throws: { e in
            let d = "\(e)"
            return d.contains("layer 1 expert 2") && d.contains("checksum mismatch")
        }
        #expect(!FileManager.default.fileExists(atPath: bad + "/" + StoreManifest.fileName))
    }

    @Test func aDamagedResidentTensorIsRefusedAtLoad() throws {
        let path = try copy("resident")
        let (gguf, c) = try writeSums(path)
        let (_, info) = try #require(gguf.info("blk.0.attn_kv_a_mqa.weight"))
        let h = try #require(FileHandle(forUpdatingAtPath: path))
        try h.seek(toOffset: UInt64(info.range.lowerBound + 3))
        h.write(Data([0x7F, 0x7F]))
        try h.close()
        let damaged = try GGUFCheckpoint(path: path)
        let sums = try #require(try GGUFSums.load(for: damaged, c))
        #expect(sums.tensorProblems(damaged) == [StoreError.tensorChecksum(tensor: "blk.0.attn_kv_a_mqa.weight", file: path).description])
        #expect { try GGUFDirect.load(path: path, cache: CacheConfiguration(totalBudget: 64 << 20, topology: .detect())) } throws: { e in
            "\(e)".contains("blk.0.attn_kv_a_mqa.weight") && "\(e)".contains(GGUFSums.path(for: damaged))
        }
    }

    /// Each way a sums file can fail to describe the GGUF is refused, naming the sums file and what is wrong.
    @Test func sumsThatDoNotDescribeTheFileAreRefused() throws {
        let path = try copy("hostile")
        let (gguf, c) = try writeSums(path)
        let sidecar = GGUFSums.path(for: gguf)
        let good = try JSONDecoder().decode(GGUFSums.self, from: Data(contentsOf: URL(fileURLWithPath: sidecar)))
        var cases: [(String, (inout GGUFSums) -> Void)] = [
            ("format", { $0.format = "something-else" }),
            ("version 2", { $0.version = 2 }),
            ("bytes", { $0.files[0].bytes += 1 }),
            ("describes 2 file(s)", { $0.files.append($0.files[0]) }),
            ("expert sums", { $0.experts[0].sums.removeLast() }),
            ("not 16 hex digits", { $0.experts[0].sums[3] = "xyz" }),
            ("not 16 hex digits", { $0.experts[0].sums[3] = "1234567890abcdef0" }),
            ("no sum for tensor", { $0.tensors.removeValue(forKey: "output.weight") }),
            ("the GGUF does not hold", { $0.tensors["blk.99.bogus"] = "0000000000000000" }),
            ("expert layers", { $0.experts.append($0.experts[0]) }),
        ]
        cases.append(("not a GGUF sums file", { _ in }))
        for (i, (reason, change)) in cases.enumerated() {
            if i == cases.count - 1 {
                try Data("{\"format\": 3".utf8).write(to: URL(fileURLWithPath: sidecar))
            } else {
                var s = good
                change(&s)
                try JSONEncoder().encode(s).write(to: URL(fileURLWithPath: sidecar))
            }
            #expect { _ = try GGUFSums.load(for: gguf, c) } throws: { e in
                let d = "\(e)"
                return d.contains(sidecar) && d.contains(reason)
            }
        }
    }
}
