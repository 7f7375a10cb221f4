import Foundation
import MoETensor
import Testing
import MoETestSupport
@testable import MoECheckpoint

/// Each planted defect must give an error that names the file and the tensor.
@Suite struct SafetensorsTests {
    let dir = Fixtures.scratchDirectory("safetensors")

    func write(_ items: [SafetensorsWriter.Item], _ name: String = "model.safetensors") -> String {
        let path = dir + "/" + name
        SafetensorsWriter().write(items, to: path)
        return path
    }

    @Test func readsEveryDTypeZeroCopy() throws {
        let items: [SafetensorsWriter.Item] = [
            .f32("a", [2, 2], [1, -2, 3.5, 0]),
            .bf16("b", [3], [1, 2, -0.5]),
            .init(name: "c", dtype: "F16", shape: [1], bytes: [0x00, 0x3C]),
            .init(name: "d", dtype: "F8_E4M3", shape: [2], bytes: [0x38, 0x7E]),
            .init(name: "e", dtype: "I32", shape: [1], bytes: [0xFF, 0xFF, 0xFF, 0xFF]),
            .init(name: "f", dtype: "I8", shape: [1], bytes: [0x80]),
            .init(name: "g", dtype: "U8", shape: [2], bytes: [7, 200]),
        ]
        let f = try SafetensorsFile(path: write(items))
        #expect(try f.tensor("a").floats() == [1, -2, 3.5, 0])
        #expect(try f.tensor("b").floats() == [1, 2, -0.5])
        #expect(try f.tensor("c").floats() == [1])
        #expect(try f.tensor("d").floats() == [1, 448])
        #expect(try f.tensor("e").int(at: 0) == -1)
        #expect(try f.tensor("f").int(at: 0) == -128)
        #expect(try f.tensor("g").int(at: 1) == 200)
        #expect(try f.tensor("a").owner === f.file, "an aligned tensor is a view into the mapping, not a copy")
    }

    @Test func misalignedTensorIsCopiedAligned() throws {
        // A 1-byte tensor before an F32 one leaves the F32 data at an odd address.
        let f = try SafetensorsFile(path: write([
            .init(name: "a", dtype: "U8", shape: [1], bytes: [9]), .f32("b", [2], [1.5, -2]),
        ]))
        let b = try f.tensor("b")
        #expect(Int(bitPattern: b.data) % 4 == 0)
        #expect(b.floats() == [1.5, -2])
    }

    func expectError(_ path: String, _ check: (CheckpointError) -> Bool) {
        do {
            _ = try SafetensorsFile(path: path)
            Issue.record("\(path) opened without error")
        } catch {
            #expect(check(error), "unexpected error: \(error)")
            #expect(error.description.contains(path), "error does not name the file: \(error)")
        }
    }

    @Test func truncatedFileNamesTheTensor() throws {
        let path = write([.f32("first", [4], [1, 2, 3, 4]), .f32("last", [4], [5, 6, 7, 8])])
        let handle = FileHandle(forWritingAtPath: path)!
        try handle.truncate(atOffset: UInt64(try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int - 3))
        try handle.close()
        expectError(path) {
            if case .truncated(_, "last", _, _) = $0 { return true }
            return false
        }
    }

    @Test func offsetsOutsideTheDataAreRejected() {
        let path = write([.init(name: "w", dtype: "F32", shape: [2], bytes: [UInt8](repeating: 0, count: 8), offsets: (4096, 4104))])
        expectError(path) {
            if case .truncated(_, "w", _, _) = $0 { return true }
            return false
        }
    }

    @Test func shapeThatDisagreesWithByteLength() {
        let path = write([.init(name: "w", dtype: "BF16", shape: [3, 3], bytes: [UInt8](repeating: 0, count: 16))])
        expectError(path) {
            if case .badTensor(_, "w", let why) = $0 { return why.contains("[3, 3]") }
            return false
        }
    }

    @Test func overlappingTensors() {
        let path = write([
            .init(name: "a", dtype: "F32", shape: [2], bytes: [UInt8](repeating: 0, count: 8), offsets: (0, 8)),
            .init(name: "b", dtype: "F32", shape: [2], bytes: [UInt8](repeating: 0, count: 8), offsets: (4, 12)),
        ])
        expectError(path) {
            if case .badTensor(_, let t, let why) = $0 { return ["a", "b"].contains(t) && why.contains("overlap") }
            return false
        }
    }

    @Test func unknownDTypeAndReversedOffsets() {
        expectError(write([.init(name: "q", dtype: "F4", shape: [2], bytes: [0])], "a.safetensors")) {
            if case .badTensor(_, "q", let why) = $0 { return why.contains("F4") }
            return false
        }
        expectError(write([.init(name: "r", dtype: "U8", shape: [0], bytes: [], offsets: (8, 4))], "b.safetensors")) {
            if case .badTensor(_, "r", _) = $0 { return true }
            return false
        }
    }

    @Test func malformedHeaders() throws {
        let tooShort = dir + "/short.safetensors"
        FileManager.default.createFile(atPath: tooShort, contents: Data([1, 2, 3]))
        expectError(tooShort) { if case .malformedHeader = $0 { return true }; return false }

        let hugeLength = dir + "/huge.safetensors"
        FileManager.default.createFile(atPath: hugeLength, contents: Data(withUnsafeBytes(of: UInt64(1 << 40).littleEndian, Array.init) + [0x7B, 0x7D]))
        expectError(hugeLength) { if case .malformedHeader = $0 { return true }; return false }

        let notJSON = dir + "/notjson.safetensors"
        let text = Array("{not json".utf8)
        FileManager.default.createFile(atPath: notJSON, contents: Data(withUnsafeBytes(of: UInt64(text.count).littleEndian, Array.init) + text))
        expectError(notJSON) { if case .malformedHeader(_, let why) = $0 { return why.contains("JSON") }; return false }
    }

    @Test func missingTensorNamesFileAndTensor() throws {
        let f = try SafetensorsFile(path: write([.f32("present", [1], [1])]))
        do {
            _ = try f.tensor("absent")
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("absent") && error.description.contains(f.path))
        }
    }
}

@Suite struct CheckpointTests {
    @Test func shardedIndexOpensEveryShard() throws {
        let ckpt = try Checkpoint(path: Fixtures.model("kimi_k2"))
        #expect(ckpt.files.count == 7)
        #expect(ckpt.contains("model.layers.2.mlp.experts.31.down_proj.weight"))
        #expect(ckpt.contains("model.layers.1.mlp.gate.e_score_correction_bias"))
        #expect(try ckpt.tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == .f32)
        #expect(try ckpt.tensor("model.embed_tokens.weight").dtype == .bf16)
    }

    @Test func singleFileAndFilePath() throws {
        let dir = try Checkpoint(path: Fixtures.model("deepseek_v3"))
        let file = try Checkpoint(path: Fixtures.model("deepseek_v3") + "/model.safetensors")
        #expect(dir.tensorNames == file.tensorNames)
    }

    @Test func indexPointingAtTheWrongShard() throws {
        let copy = Fixtures.copyOfModel("kimi_k2")
        let indexPath = copy + "/" + Checkpoint.indexFileName
        var index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: indexPath))) as! [String: Any]
        var map = index["weight_map"] as! [String: String]
        let victim = "model.layers.2.mlp.experts.5.up_proj.weight"
        let wrongShard = Set(map.values).sorted().first { $0 != map[victim] }!
        map[victim] = wrongShard
        index["weight_map"] = map
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: indexPath))
        do {
            _ = try Checkpoint(path: copy)
            Issue.record("no error")
        } catch {
            #expect(error.description.contains(victim) && error.description.contains(wrongShard), "\(error)")
        }
    }

    @Test func truncatedShardInADirectory() throws {
        let copy = Fixtures.copyOfModel("kimi_k2")
        let shard = copy + "/model-00004-of-00007.safetensors"
        let size = try FileManager.default.attributesOfItem(atPath: shard)[.size] as! Int
        let h = FileHandle(forWritingAtPath: shard)!
        try h.truncate(atOffset: UInt64(size / 2))
        try h.close()
        do {
            _ = try Checkpoint(path: copy)
            Issue.record("no error")
        } catch {
            guard case .truncated(let file, let tensor, _, _) = error else { Issue.record("\(error)"); return }
            #expect(file == shard)
            #expect(tensor.hasPrefix("model.layers."))
        }
    }

    @Test func missingShardFile() throws {
        let copy = Fixtures.copyOfModel("kimi_k2")
        try FileManager.default.removeItem(atPath: copy + "/model-00003-of-00007.safetensors")
        #expect(throws: CheckpointError.self) { try Checkpoint(path: copy) }
        do { _ = try Checkpoint(path: copy) } catch {
            #expect(error.description.contains("model-00003-of-00007.safetensors"))
        }
    }
}
