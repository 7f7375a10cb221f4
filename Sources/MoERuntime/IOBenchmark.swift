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

    /// Checksum threads for the verified run (as the cache gives one node with this machine's CPUs).
    public var checksumThreads = ChecksumPool.threads(cpus: ProcessInfoCores.active)

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
        // Verification as the cache does it: the I/O loop hands each finished extent to a checksum pool and
        // reads into that buffer again only once it is checked, submitting other reads meanwhile.
        let verdicts = Verdicts()
        let pool = checksums == nil ? nil : ChecksumPool(threads: checksumThreads, cpus: [], name: "moe-sumb") { tag, ok in
            verdicts.add(tag, ok)
        }
        defer { pool?.join() }
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        try reader.submit((0..<depth).map(request))
        var bytes = 0, reads = 0, checking = 0
        var done: [ReadCompletion] = []
        var checked: [(UInt64, Bool)] = []
        var stop = false
        while reader.inFlight > 0 || checking > 0 {
            done.removeAll(keepingCapacity: true)
            try reader.complete(waitNanoseconds: checking > 0 ? 100_000 : -1, into: &done)
            var again: [ReadRequest] = []
            for c in done {
                guard c.result == extentBytes else {
                    throw SystemError(call: "read (result \(c.result))", path: path, errno: c.result < 0 ? Int32(-c.result) : EIO)
                }
                bytes += c.result
                reads += 1
                if let pool, let sums = checksums {
                    let slot = Int(c.tag)
                    pool.enqueue(tag: c.tag, bytes: memory.baseAddress! + slot * extentBytes, count: extentBytes,
                                 expected: sums[offsetOf[slot]])
                    checking += 1
                    continue
                }
                if !stop && ContinuousClock.now >= deadline { stop = true }
                if !stop { again.append(request(Int(c.tag))) }
            }
            verdicts.take(into: &checked)
            for (tag, ok) in checked {
                guard ok else { throw SystemError(call: "checksum of extent \(offsetOf[Int(tag)])", path: path, errno: EIO) }
                checking -= 1
                if !stop && ContinuousClock.now >= deadline { stop = true }
                if !stop { again.append(request(Int(tag))) }
            }
            if !again.isEmpty { try reader.submit(again) }
        }
        let elapsed = ContinuousClock.now - start
        return Result(bytes: bytes, seconds: elapsed.seconds, reads: reads, engine: reader.engine, direct: files.direct)
    }
}

/// Verdicts handed from the checksum pool's threads to the benchmark's I/O loop.
private final class Verdicts: @unchecked Sendable {  // `list` is guarded by `lock`
    private let lock = NSLock()
    private var list: [(UInt64, Bool)] = []

    func add(_ tag: UInt64, _ ok: Bool) {
        lock.lock()
        list.append((tag, ok))
        lock.unlock()
    }

    func take(into out: inout [(UInt64, Bool)]) {
        out.removeAll(keepingCapacity: true)
        lock.lock()
        swap(&out, &list)
        lock.unlock()
    }
}
