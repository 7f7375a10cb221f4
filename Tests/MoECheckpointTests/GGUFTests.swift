import Foundation
import MoETensor
import Testing
import MoETestSupport
@testable import MoECheckpoint

/// The GGUF reader against a file gguf-py wrote, the block decoders against gguf-py's dequantisation bit for bit,
/// and planted damage: each must be refused with an error that names the file and the tensor or key.
@Suite struct GGUFTests {
    let dir = Fixtures.scratchDirectory("gguf")
    static let quantBlocks = Fixtures.root + "/gguf/quant-blocks.gguf"

    /// Every decodable type's random and edge-case blocks (Tools/make_gguf_quant_fixture.py) decode to exactly
    /// gguf-py's floats; NaN where gguf-py has NaN.
    @Test func everyDecodableTypeMatchesGGUFPyBitForBit() throws {
        let gguf = try GGUFCheckpoint(path: Self.quantBlocks)
        #expect(gguf.metadata["general.architecture"]?.string == "moestream-quant-test")
        let decodable = GGMLType.allCases.filter(\.canDequantize).filter { $0 != .f32 }
        for type in decodable {
            let raw = try #require(gguf.info("q.\(type)"), "the fixture has no blocks of \(type)")
            #expect(raw.tensor.type == type)
            let decoded = try gguf.floats("q.\(type)").floats()
            let expected = try gguf.floats("x.\(type)").floats()
            #expect(decoded.count == expected.count && decoded.count == raw.tensor.elements)
            var mismatches = 0
            for (a, b) in zip(decoded, expected) where !(a.bitPattern == b.bitPattern || (a.isNaN && b.isNaN)) {
                if mismatches < 3 { Issue.record("\(type): \(a) (\(a.bitPattern)) vs gguf-py \(b) (\(b.bitPattern))") }
                mismatches += 1
            }
            #expect(mismatches == 0, "\(type): \(mismatches) values differ from gguf-py")
        }
        // The quant tensors' shapes are torch-ordered: [rows, values per row].
        let q4k = try #require(gguf.info("q.Q4_K")).tensor
        #expect(q4k.ne == [256, 24] && q4k.shape == [24, 256])
    }

    /// A GGML matrix multiplies as its decoded rows do: `gemm` over several tokens gives each token exactly what
    /// `dot` gives it alone, and both are the fp64 product of the decoded weights to fp32 rounding.
    @Test func ggmlMatricesMultiplyTheirDecodedRows() throws {
        let gguf = try GGUFCheckpoint(path: Self.quantBlocks)
        for type in [GGMLType.q4_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq2_XXS, .iq4_XS, .iq1_M, .tq1_0] {
            let (file, info) = try #require(gguf.info("q.\(type)"))
            let (rows, cols) = (info.ne[1], info.ne[0])
            let m = WeightMatrix(rows: rows, cols: cols, data: file.bytes(of: info).baseAddress!, encoding: .ggml(type), owners: [gguf])
            let w = try gguf.floats("x.\(type)").floats()
            let tokens = 5
            var rng = SplitMix(seed: 7)
            let x = (0..<(tokens * cols)).map { _ in Float(rng.unit() * 2 - 1) }
            var y = [Float](repeating: 0, count: tokens * rows)
            // Rows whose decoded weights are all finite (the fixture plants inf and NaN scales in a few blocks).
            let finite = (0..<rows).filter { r in w[(r * cols)..<((r + 1) * cols)].allSatisfy(\.isFinite) }
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                m.gemm(rows: 0..<rows, xp.baseAddress!, tokens: tokens, into: yp.baseAddress!)
            } }
            for r in finite {
                for t in 0..<tokens {
                    let alone = x.withUnsafeBufferPointer { m.dot(row: r, $0.baseAddress! + t * cols) }
                    #expect(alone.bitPattern == y[t * rows + r].bitPattern, "\(type) row \(r) token \(t)")
                    let exact = (0..<cols).reduce(0.0) { $0 + Double(w[r * cols + $1]) * Double(x[t * cols + $1]) }
                    let scale = (0..<cols).reduce(0.0) { $0 + abs(Double(w[r * cols + $1]) * Double(x[t * cols + $1])) }
                    #expect(abs(Double(alone) - exact) <= 1e-5 * max(scale, 1e-30), "\(type) row \(r): \(alone) vs \(exact)")
                }
                #expect(m.element(r, cols - 1).bitPattern == w[r * cols + cols - 1].bitPattern)
            }
            #expect(finite.count >= rows / 2, "\(type): only \(finite.count) finite rows")
        }
    }

    func write(_ w: GGUFWriter, _ name: String = "model.gguf") -> String {
        let path = dir + "/" + name
        w.write(to: path)
        return path
    }

    /// `file`: the part the error must name, when it is not the path opened (a split set's other parts).
    func expectError(_ path: String, naming: String? = nil, file: String? = nil, _ check: (CheckpointError) -> Bool) {
        do {
            _ = try GGUFCheckpoint(path: path)
            Issue.record("\(path) opened without error")
        } catch {
            #expect(check(error), "unexpected error: \(error)")
            #expect(error.description.contains(file ?? path), "error does not name the file: \(error)")
            if let naming { #expect(error.description.contains(naming), "error does not name '\(naming)': \(error)") }
        }
    }

    /// A valid two-tensor file, the base every planted defect starts from.
    func valid() -> GGUFWriter {
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("deepseek2")), ("deepseek2.block_count", .u32(2)),
                      ("tokenizer.ggml.tokens", .strings(["a", "b", "ü"]))]
        w.tensors = [.init(name: "q8", type: 8, ne: [32, 2], data: [UInt8](repeating: 0x3C, count: 68)),
                     .init(name: "f32", type: 0, ne: [3], data: [0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64])]
        return w
    }

    @Test func readsAHandWrittenFile() throws {
        let g = try GGUFCheckpoint(path: write(valid()))
        #expect(g.metadata["deepseek2.block_count"]?.int == 2)
        #expect(g.metadata["tokenizer.ggml.tokens"]?.array?.compactMap(\.string) == ["a", "b", "ü"])
        #expect(try g.floats("f32", shape: [3]).floats() == [1, 2, 3])
        let q8 = try #require(g.info("q8")).tensor
        #expect(q8.type == .q8_0 && q8.shape == [2, 32] && q8.range.count == 68)
        #expect(q8.range.lowerBound % 32 == 0)
        #expect(throws: CheckpointError.self) { try g.floats("f32", shape: [1, 3]) }
    }

    @Test func plantedDefectsAreRefusedByName() throws {
        var w = valid(); w.magic = Array("GGML".utf8)
        expectError(write(w)) { if case .malformedGGUF(_, let why) = $0 { return why.contains("not a GGUF") }; return false }

        w = valid(); w.version = 1
        expectError(write(w)) { if case .malformedGGUF(_, let why) = $0 { return why.contains("version 1") }; return false }

        w = valid(); w.tensorCount = 1 << 60
        expectError(write(w)) { if case .malformedGGUF(_, let why) = $0 { return why.contains("tensor count") }; return false }

        w = valid(); w.metadataCount = UInt64.max
        expectError(write(w)) { if case .malformedGGUF(_, let why) = $0 { return why.contains("metadata count") }; return false }

        // A string whose length runs past the file: named by its key.
        w = valid(); w.metadata.append(("general.name", .raw(type: 8, bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0] + Array("abc".utf8))))
        expectError(write(w), naming: "general.name") { if case .malformedGGUF = $0 { return true }; return false }

        // An array as long as the address space.
        w = valid(); w.metadata.append(("tokenizer.ggml.merges", .raw(type: 9, bytes: [8, 0, 0, 0] + [UInt8](repeating: 0xFF, count: 8))))
        expectError(write(w), naming: "tokenizer.ggml.merges") { if case .malformedGGUF = $0 { return true }; return false }

        w = valid(); w.metadata.append(("x.nested", .raw(type: 9, bytes: [9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])))
        expectError(write(w), naming: "x.nested") { if case .badConfig(_, "x.nested", _) = $0 { return true }; return false }

        w = valid(); w.metadata.append(("x.bool", .raw(type: 7, bytes: [2])))
        expectError(write(w), naming: "x.bool") { if case .badConfig(_, "x.bool", _) = $0 { return true }; return false }

        w = valid(); w.metadata.append(("x.type", .raw(type: 13, bytes: [])))
        expectError(write(w), naming: "x.type") { if case .badConfig(_, "x.type", _) = $0 { return true }; return false }

        w = valid(); w.metadata.append(("deepseek2.block_count", .u32(3)))
        expectError(write(w), naming: "deepseek2.block_count") { if case .malformedGGUF = $0 { return true }; return false }

        w = valid(); w.metadata.append(("general.alignment", .u32(24)))
        expectError(write(w), naming: "general.alignment") { if case .badConfig(_, "general.alignment", _) = $0 { return true }; return false }

        w = valid(); w.tensors[0].type = 77
        expectError(write(w), naming: "q8") { if case .badTensor(_, "q8", let why) = $0 { return why.contains("type 77") }; return false }

        // 48 values is not a whole number of Q8_0's 32-value blocks.
        w = valid(); w.tensors[0].ne = [48, 2]
        expectError(write(w), naming: "q8") { if case .badTensor(_, "q8", let why) = $0 { return why.contains("blocks") }; return false }

        w = valid(); w.tensors[1].ne = [3, 1, 1, 1, 1]
        expectError(write(w), naming: "f32") { if case .badTensor(_, "f32", _) = $0 { return true }; return false }

        w = valid(); w.tensors[1].ne = [1 << 31]
        expectError(write(w), naming: "f32") { if case .badTensor(_, "f32", _) = $0 { return true }; return false }

        // Extents whose product overflows 64 bits.
        w = valid(); w.tensors[1].ne = [0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF]
        expectError(write(w), naming: "f32") { if case .badTensor(_, "f32", let why) = $0 { return why.contains("overflow") }; return false }

        w = valid(); w.tensors[1].offset = 100
        expectError(write(w), naming: "f32") { if case .badTensor(_, "f32", let why) = $0 { return why.contains("alignment") }; return false }

        w = valid(); w.tensors[1].offset = UInt64.max - 31
        expectError(write(w), naming: "f32") { if case .truncated(_, "f32", _, _) = $0 { return true }; return false }

        w = valid(); w.tensors[1].offset = 32  // inside q8's 68 bytes
        expectError(write(w), naming: "f32") { if case .badTensor(_, "f32", let why) = $0 { return why.contains("overlap") }; return false }

        w = valid(); w.tensors[1].name = "q8"
        expectError(write(w), naming: "q8") { if case .badTensor(_, "q8", let why) = $0 { return why.contains("twice") }; return false }

        // Truncated: the last tensor's bytes are cut off.
        let full = valid().encode()
        let cut = dir + "/cut.gguf"
        FileManager.default.createFile(atPath: cut, contents: Data(full.dropLast(6)))
        expectError(cut, naming: "f32") { if case .truncated(_, "f32", _, _) = $0 { return true }; return false }

        // Every prefix of the header is refused without a crash.
        let headerEnd = full.count - 12 - 68 - 28
        for n in stride(from: 0, to: headerEnd, by: 7) {
            let p = dir + "/prefix.gguf"
            FileManager.default.createFile(atPath: p, contents: Data(full.prefix(n)))
            #expect(throws: CheckpointError.self) { try GGUFCheckpoint(path: p) }
        }
    }

    @Test func splitFilesOpenFromAnyPart() throws {
        func part(_ no: Int, of count: Int, _ tensors: [GGUFWriter.Tensor], total: Int32? = nil) -> GGUFWriter {
            var w = GGUFWriter()
            w.metadata = [("split.no", .u16(UInt16(no))), ("split.count", .u16(UInt16(count)))]
            if let total { w.metadata.append(("split.tensors.count", .i32(total))) }
            if no == 0 { w.metadata.insert(("general.architecture", .string("deepseek2")), at: 0) }
            w.tensors = tensors
            return w
        }
        let a = GGUFWriter.Tensor(name: "a", type: 0, ne: [2], data: [0, 0, 128, 63, 0, 0, 0, 64])
        let b = GGUFWriter.Tensor(name: "b", type: 0, ne: [1], data: [0, 0, 64, 64])
        let c = GGUFWriter.Tensor(name: "c", type: 30, ne: [2], data: [0x80, 0x3F, 0x00, 0xC0])
        _ = write(part(0, of: 3, [a], total: 3), "m-00001-of-00003.gguf")
        _ = write(part(1, of: 3, [b]), "m-00002-of-00003.gguf")
        let third = write(part(2, of: 3, [c]), "m-00003-of-00003.gguf")
        let g = try GGUFCheckpoint(path: third)
        #expect(g.files.count == 3 && g.path.hasSuffix("m-00001-of-00003.gguf"))
        #expect(g.metadata["general.architecture"]?.string == "deepseek2")
        #expect(try g.floats("a").floats() == [1, 2])
        #expect(try g.floats("b").floats() == [3])
        #expect(try g.floats("c").floats() == [1, -2])

        // A part that says it is another part, a missing part, a tensor in two parts, a wrong total.
        _ = write(part(2, of: 3, [b]), "m-00002-of-00003.gguf")
        expectError(third, naming: "split.no", file: "m-00002-of-00003.gguf") { if case .badConfig(_, "split.no", _) = $0 { return true }; return false }
        _ = write(part(1, of: 3, [a]), "m-00002-of-00003.gguf")
        expectError(third, naming: "'a'", file: "m-00002-of-00003.gguf") { if case .badTensor(_, "a", _) = $0 { return true }; return false }
        _ = write(part(1, of: 3, [b]), "m-00002-of-00003.gguf")
        _ = write(part(0, of: 3, [a], total: 4), "m-00001-of-00003.gguf")
        expectError(third, naming: "split.tensors.count", file: "m-00001-of-00003.gguf") { if case .badConfig(_, "split.tensors.count", _) = $0 { return true }; return false }
        try FileManager.default.removeItem(atPath: dir + "/m-00002-of-00003.gguf")
        do { _ = try GGUFCheckpoint(path: third); Issue.record("opened with a part missing") } catch {
            #expect(error.description.contains("m-00002-of-00003.gguf"), "\(error)")
        }
        #expect(GGUFCheckpoint.partPaths(for: "/x/K2-UD-Q2_K_XL-00002-of-00008.gguf", count: 1).count == 8)
        #expect(GGUFCheckpoint.partPaths(for: "/x/model.gguf", count: 1) == ["/x/model.gguf"])
    }

    @Test func unsupportedTypesAreNamedWithTheirTensors() throws {
        var w = valid()
        w.tensors.append(.init(name: "blk.1.ffn_down_exps.weight", type: 39, ne: [256, 1], data: [UInt8](repeating: 0, count: 136)))
        let g = try GGUFCheckpoint(path: write(w))
        #expect(g.undecodable() == ["MXFP4": ["blk.1.ffn_down_exps.weight"]])
        do { _ = try g.floats("blk.1.ffn_down_exps.weight"); Issue.record("decoded MXFP4") } catch {
            #expect(error.description.contains("MXFP4") && error.description.contains("blk.1.ffn_down_exps.weight"), "\(error)")
        }
    }
}
