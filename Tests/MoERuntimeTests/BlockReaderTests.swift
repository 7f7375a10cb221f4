import Foundation
import MoESystem
import MoETestSupport
import Testing

/// Both read engines return exactly the file's bytes, with O_DIRECT into aligned buffers.
@Suite struct BlockReaderTests {
    @Test(arguments: [ReadEngine.uring, .pread])
    func readsExactBytes(engine: ReadEngine) throws {
        let dir = Fixtures.scratchDirectory("blocks")
        let block = 8192
        var bytes = [UInt8](repeating: 0, count: block * 16)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 7) }
        let path = dir + "/data.bin"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let files = try ReadFiles(paths: [path])
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: block * 6, alignment: 4096)
        defer { memory.deallocate() }
        let (reader, fallback) = makeBlockReader(engine, files: files, depth: 4, registeredRegions: [memory])
        if engine == .uring && fallback == nil { #expect(reader.engine == "io_uring") }
        let order = [15, 3, 0, 9, 7, 12]
        var done: [ReadCompletion] = []
        for batch in [Array(order[0..<4]), Array(order[4...])] {
            try reader.submit(batch.map { b in
                let slot = order.firstIndex(of: b)!
                return ReadRequest(file: 0, offset: b * block, length: block, buffer: memory.baseAddress! + slot * block, tag: UInt64(b))
            })
            while reader.inFlight > 0 { try reader.complete(waitNanoseconds: -1, into: &done) }
        }
        #expect(Set(done.map(\.tag)) == Set(order.map(UInt64.init)))
        #expect(done.allSatisfy { $0.result == block })
        for (slot, b) in order.enumerated() {
            #expect(Array(memory[(slot * block)..<((slot + 1) * block)]) == Array(bytes[(b * block)..<((b + 1) * block)]), "block \(b)")
        }
    }

    @Test func readPastTheEndReportsAShortRead() throws {
        let dir = Fixtures.scratchDirectory("short")
        let path = dir + "/data.bin"
        FileManager.default.createFile(atPath: path, contents: Data(repeating: 7, count: 4096))
        let files = try ReadFiles(paths: [path])
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { memory.deallocate() }
        for engine in [ReadEngine.uring, .pread] {
            let (reader, _) = makeBlockReader(engine, files: files, depth: 2, registeredRegions: [memory])
            try reader.submit([ReadRequest(file: 0, offset: 0, length: 8192, buffer: memory.baseAddress!, tag: 1)])
            var done: [ReadCompletion] = []
            while reader.inFlight > 0 { try reader.complete(waitNanoseconds: -1, into: &done) }
            #expect(done.first?.result == 4096, "\(engine)")
        }
    }
}

/// When the kernel refuses io_uring, generation still works, through pread, and says so once.
@Suite struct FallbackTests {
    @Test(arguments: [("1", "disabled"), ("38", "no io_uring")])
    func refusedRingFallsBackToPreadWithOneLine(errno: String, words: String) throws {
        let store = Fixtures.scratchDirectory("fallback") + "/store"
        #expect(try runProcess(Fixtures.executable, ["convert", Fixtures.model("kimi_k2"), "-o", store, "--quiet"]).status == 0)
        let r = try runProcess(Fixtures.executable, ["generate", store, "--tokens", "1,2,3", "--max-tokens", "4", "--cache", "50%"],
                               environment: ["MOESTREAM_FAKE_URING_ERRNO": errno])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stderr.split(separator: "\n").filter { $0.contains("io_uring unavailable") }
        #expect(lines.count == 1 && lines[0].contains(words) && lines[0].contains("pread"), "\(r.stderr)")
        #expect(r.stderr.contains("pread reads"), "the statistics name the engine actually used")
    }
}
