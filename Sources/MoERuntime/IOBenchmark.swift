import Foundation
import MoEExpertStore
import MoESystem
import MoETensor

/// Reads whole expert extents at random from one expert file as fast as the engine can, `depth` at a time:
/// the number to hold against fio on the same file, block size and depth.
public struct IOBenchmark {
    public struct Result: Sendable {
        public var bytes: Int
        public var seconds: Double
        public var reads: Int
        public var engine: String
        public var direct: Bool
        public var gbps: Double { seconds > 0 ? Double(bytes) / seconds / 1e9 : 0 }
    }

    public let path: String
    public let extentBytes: Int
    public let extents: Int
    public var depth = 32
    public var engine: ReadEngine = .uring
    public var seconds = 10.0
    /// Also checksum every extent as the cache does (to show what verification costs).
    public var checksums: [UInt64]? = nil

    public init(path: String, extentBytes: Int, extents: Int) {
        self.path = path
        self.extentBytes = extentBytes
        self.extents = extents
    }

    public func run() throws -> Result {
        let files = try ReadFiles(paths: [path])
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: depth * extentBytes, alignment: 4096)
        defer { memory.deallocate() }
        memset(memory.baseAddress!, 0, memory.count)
        let (reader, fallback) = makeBlockReader(engine, files: files, depth: depth, registeredRegions: [memory])
        if let fallback { FileHandle.standardError.write((fallback + "\n").data(using: .utf8)!) }
        var rng = SplitMix(seed: 42)
        var offsetOf = [Int](repeating: 0, count: depth)
        func request(_ slot: Int) -> ReadRequest {
            let e = Int(rng.next() % UInt64(extents))
            offsetOf[slot] = e
            return ReadRequest(file: 0, offset: e * extentBytes, length: extentBytes,
                               buffer: memory.baseAddress! + slot * extentBytes, tag: UInt64(slot))
        }
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        try reader.submit((0..<depth).map(request))
        var bytes = 0, reads = 0
        var done: [ReadCompletion] = []
        var stop = false
        while reader.inFlight > 0 {
            done.removeAll(keepingCapacity: true)
            try reader.complete(waitNanoseconds: -1, into: &done)
            var again: [ReadRequest] = []
            for c in done {
                guard c.result == extentBytes else {
                    throw SystemError(call: "read (result \(c.result))", path: path, errno: c.result < 0 ? Int32(-c.result) : EIO)
                }
                if let sums = checksums {
                    let slot = Int(c.tag)
                    guard XXHashCheck.matches(memory.baseAddress! + slot * extentBytes, extentBytes, sums[offsetOf[slot]]) else {
                        throw SystemError(call: "checksum of extent \(offsetOf[slot])", path: path, errno: EIO)
                    }
                }
                bytes += c.result
                reads += 1
                if !stop && ContinuousClock.now >= deadline { stop = true }
                if !stop { again.append(request(Int(c.tag))) }
            }
            if !again.isEmpty { try reader.submit(again) }
        }
        let elapsed = ContinuousClock.now - start
        return Result(bytes: bytes, seconds: elapsed.seconds, reads: reads, engine: reader.engine, direct: files.direct)
    }
}

enum XXHashCheck {
    static func matches(_ p: UnsafeRawPointer, _ n: Int, _ expected: UInt64) -> Bool { XXHash64.hash(p, count: n) == expected }
}
