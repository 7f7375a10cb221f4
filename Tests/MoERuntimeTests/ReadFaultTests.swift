import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoESystem
import MoETestSupport
import Testing
@testable import MoERuntime

let ioUringWorks = Capabilities.ioUringProbe() == 0 && RingSetupOverride.errno == nil

/// Lines the cache logs, collected for the tests.
final class LogLines: @unchecked Sendable {  // `lines` is guarded by `lock`
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ line: String) {
        lock.lock()
        list.append(line)
        lock.unlock()
    }
    var lines: [String] {
        lock.lock()
        defer { lock.unlock() }
        return list
    }
}

/// The I/O fault matrix: every injected fault either heals (retried, or the node moves to pread) with logits
/// bit-identical to reading every expert straight from the store, or fails exactly the one request that needed the
/// expert, with an error naming layer, expert, file and offset, while the next request is served.
@Suite(.serialized) struct ReadFaultTests {
    let store = try! ExpertStore(path: sharedStorePath)
    let prompt = try! Reference.load("kimi_k2").prompt
    var extent: Int { store.manifest.experts.layout.extentBytes }

    func cached(_ faults: FaultPlan, engine: ReadEngine = .uring, slots: Int = 13,
                log: LogLines = LogLines()) throws -> (KimiModel, ExpertCache) {
        var c = CacheConfiguration(totalBudget: slots * extent, topology: .detect())
        c.engine = engine
        c.ioDepth = 8
        c.faults = faults
        c.drainLimit = .milliseconds(300)
        c.log = { log.add($0) }
        return try store.loadModel(cache: c)
    }

    var reference: [Float] { get throws { try runSequence(try store.loadModel(), prompt, steps: 4) } }

    @Test(arguments: [FaultPlan.Fault.error(EIO), .shortRead, .corrupt], [ReadEngine.uring, .pread])
    func transientFaultsAreRetried(fault: FaultPlan.Fault, engine: ReadEngine) throws {
        // Two reads fail once each (or one read twice): within the three attempts, so nothing reaches the model.
        let (model, cache) = try cached(FaultPlan([.init(fault, after: 3, times: 2)]), engine: engine)
        #expect(try runSequence(model, prompt, steps: 4) == (try reference))
        let s = cache.statistics()
        #expect(s.readRetries == 2 && s.failedReads == 0, "\(s.readRetries) retries, \(s.failedReads) failed")
        cache.shutdown()
    }

    @Test func persistentFaultFailsOneRequestByNameAndTheNextIsServed() throws {
        let routing = try store.loadModel().forward(prompt, cache: try store.loadModel().makeCache()).routing
        let victim = routing[1][0].experts[0]
        let (file, offset) = store.location(layer: 1, expert: victim)!
        let ordinal = store.manifest.experts.files.firstIndex { $0.path == file.path }!
        // Every attempt of that one expert fails; the rule is spent after three.
        let (model, cache) = try cached(FaultPlan([.init(.error(EIO), times: 3, file: ordinal, offset: offset)]))
        #expect { try model.forward(prompt, cache: model.makeCache()) } throws: { e in
            let d = (e as? ModelError)?.description ?? "\(e)"
            return d.contains("layer 1 expert \(victim)") && d.contains("Input/output error") && d.contains(file.path)
                && d.contains("offset \(offset)") && d.contains("3 attempts")
        }
        #expect(cache.statistics().failedReads == 1 && cache.statistics().readRetries == 2)
        // The engine goes on: the same prompt again reads the expert afresh and gives the reference.
        #expect(try runSequence(model, prompt, steps: 4) == (try reference))
        cache.shutdown()
    }

    @Test func lateCompletionForAReusedSlotIsIgnored() throws {
        // 8 slots for 8 experts a token: every slot is read again for another expert, so the duplicate lands.
        let (model, cache) = try cached(FaultPlan([.init(.lateDuplicate)]), slots: 8)
        #expect(try runSequence(model, prompt, steps: 4) == (try reference))
        let s = cache.statistics()
        // A bare slot index as the tag would take the duplicate for the new read (and then ignore the new read's
        // own completion, or take it for a retry's): the one completion ignored must be the duplicate.
        let injected = (cache.workers[0].reader as! FaultyReader).duplicatesDelivered
        cache.table.lock.lock()
        let ignored = cache.table.staleTags
        cache.table.lock.unlock()
        #expect(injected.count == 1 && ignored == injected, "delivered \(injected), ignored \(ignored)")
        #expect(s.staleCompletions == 1 && s.readRetries == 0, "\(s.staleCompletions) stale, \(s.readRetries) retries")
        cache.shutdown()
    }

    @Test(.enabled(if: ioUringWorks, "io_uring is unavailable here"))
    func refusedSubmissionsAreOfferedAgain() throws {
        // The kernel refuses the first submissions (EAGAIN, EBUSY): the reads start later; no fallback.
        let log = LogLines()
        let (model, cache) = try cached(FaultPlan(ringSubmitResults: [-EAGAIN, -EAGAIN, -EBUSY, -EAGAIN]), log: log)
        #expect(try runSequence(model, prompt, steps: 4) == (try reference))
        #expect(cache.statistics().engine == "io_uring" && cache.statistics().readerFailures == 0 && log.lines.isEmpty)
        cache.shutdown()
    }

    @Test(.enabled(if: ioUringWorks, "io_uring is unavailable here"),
          arguments: [FaultPlan(ringSubmitResults: [-EIO]), FaultPlan([.init(.submitError(EIO), after: 5)])])
    func brokenRingDrainsAndFallsBackToPread(plan: FaultPlan) throws {
        // A real ring refusing a batch outright, or a batch that fails after its first reads started.
        let log = LogLines()
        let (model, cache) = try cached(plan, log: log)
        #expect(try runSequence(model, prompt, steps: 4) == (try reference))
        let s = cache.statistics()
        #expect(s.engine == "pread" && s.readerFailures == 1 && s.retiredSlots == 0)
        #expect(log.lines.count == 1 && log.lines[0].contains("io_uring reads failed on node 0")
                && log.lines[0].contains("pread thread pool from now on"), "\(log.lines)")
        cache.shutdown()
    }

    @Test(.enabled(if: ioUringWorks, "io_uring is unavailable here"))
    func readThatNeverReturnsRetiresItsSlot() throws {
        // The first read hangs; the second read's submission fails: the hung read cannot be drained, so its slot
        // is retired (the kernel could still write into it) and the request that waited for it fails by name.
        let log = LogLines()
        let (model, cache) = try cached(FaultPlan([.init(.neverCompletes), .init(.submitError(EIO), after: 1)]), log: log)
        #expect { try model.forward(prompt, cache: model.makeCache()) } throws: { e in
            "\(e)".contains("in flight when the io_uring reader of node 0 failed")
        }
        let s = cache.statistics()
        #expect(s.retiredSlots == 1 && s.readerFailures == 1 && s.engine == "pread")
        #expect(log.lines.count == 1 && log.lines[0].contains("1 slots retired"), "\(log.lines)")
        #expect(try runSequence(model, prompt, steps: 4) == (try reference))
        cache.shutdown()
    }
}

/// The ring's own handling of a kernel that will not take entries.
@Suite(.enabled(if: ioUringWorks, "io_uring is unavailable here")) struct RingSubmitTests {
    func reader(_ results: [Int32], memory: UnsafeMutableRawBufferPointer) throws -> (URingReader, String) {
        let path = Fixtures.scratchDirectory("eagain") + "/data.bin"
        var bytes = [UInt8](repeating: 0, count: 4096 * 8)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i / 4096 &+ i) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let r = try URingReader(files: try ReadFiles(paths: [path]), depth: 4, regions: [memory])
        r.injectedSubmitResults = results
        return (r, path)
    }

    func requests(_ memory: UnsafeMutableRawBufferPointer) -> [ReadRequest] {
        (0..<4).map { ReadRequest(file: 0, offset: $0 * 4096, length: 4096, buffer: memory.baseAddress! + $0 * 4096, tag: UInt64($0)) }
    }

    @Test func eagainLeavesReadsQueuedAndStartsThemLater() throws {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
        defer { memory.deallocate() }
        let (r, _) = try reader([-EAGAIN, -EAGAIN, -EAGAIN], memory: memory)
        try r.submit(requests(memory))
        #expect(r.inFlight == 4)
        var done: [ReadCompletion] = []
        var calls = 0
        while r.inFlight > 0 && calls < 1000 {
            try r.complete(waitNanoseconds: 1_000_000, into: &done)
            calls += 1
        }
        #expect(Set(done.map(\.tag)) == [0, 1, 2, 3] && done.allSatisfy { $0.result == 4096 })
        for b in 0..<4 { #expect(memory[b * 4096 + 1] == UInt8(truncatingIfNeeded: b + 1)) }
    }

    @Test func kernelThatNeverTakesEntriesBreaksTheRingAndNothingStarts() throws {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
        defer { memory.deallocate() }
        let (r, _) = try reader(Array(repeating: -EAGAIN, count: 1_000_000), memory: memory)
        r.stallLimit = .milliseconds(100)
        try r.submit(requests(memory))
        var done: [ReadCompletion] = []
        let start = ContinuousClock.now
        let error = #expect(throws: SystemError.self) {
            while true { try r.complete(waitNanoseconds: -1, into: &done) }
        }
        #expect(error?.errno == EAGAIN && ContinuousClock.now - start < .seconds(5))
        // Every read is handed back as never started; nothing is left to wait for.
        #expect(Set(r.abandon()) == [0, 1, 2, 3] && r.inFlight == 0 && done.isEmpty)
    }
}
