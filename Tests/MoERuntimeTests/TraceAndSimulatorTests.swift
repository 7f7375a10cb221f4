import Foundation
import MoETestSupport
import Testing
@testable import MoERuntime

@Suite struct TraceAndSimulatorTests {
    func trace(_ requests: [[Int]], experts: Int = 8) -> RoutingTrace {
        RoutingTrace(header: .init(moeLayers: [1], experts: experts, topK: 2, extentBytes: 4096, prefetchDepth: 1),
                     events: requests.enumerated().map { .request(step: $0, layer: 1, experts: $1) })
    }

    /// The textbook sequence 1 2 3 4 1 2 5 1 2 3 4 5 with 3 slots: LRU hits 2 times, Belady (MIN) 5 times.
    @Test func lruAndBeladyOnTheClassicSequence() {
        let t = trace([1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5].map { [$0] })
        let sim = CacheSimulator(trace: t, slots: 3)
        #expect(sim.run(policy: .lru).hits == 2)
        #expect(sim.belady().hits == 5)
        #expect(sim.belady().requests == 12)
    }

    @Test func beladyBoundsDemandPoliciesAndGrowsWithBudget() throws {
        let t = try RoutingTrace.load(path: Fixtures.root + "/traces/kimi_k2.trace")
        var previous = -1.0
        for slots in [2, 5, 8, 16, 24, 40, 64] {
            let sim = CacheSimulator(trace: t, slots: slots)
            let best = sim.belady().hitRate
            #expect(best >= sim.run(policy: .lru).hitRate && best >= sim.run(policy: .lfu).hitRate, "slots \(slots)")
            #expect(best >= previous)
            previous = best
        }
    }

    @Test func prefetchPrecisionAndRecallAreCounted() throws {
        // Predictions that are always right: every request was predicted, so every request is a prefetch hit.
        var events: [RoutingTrace.Event] = []
        for (s, e) in [[0, 1], [2, 3], [4, 5], [6, 7]].enumerated() {
            events.append(.prediction(step: s, after: 0, predicted: [1: e]))
            events.append(.request(step: s, layer: 1, experts: e))
        }
        let t = RoutingTrace(header: .init(moeLayers: [1], experts: 8, topK: 2, extentBytes: 4096, prefetchDepth: 1), events: events)
        let r = CacheSimulator(trace: t, slots: 4).run(policy: .lru, prefetch: .router)
        #expect(r.hits == 8 && r.prefetchHits == 8 && r.prefetchesIssued == 8)
        #expect(r.precision == 1 && r.recall == 1)
    }

    @Test func traceRoundTripsAndBadLinesAreNamed() throws {
        let t = try RoutingTrace.load(path: Fixtures.root + "/traces/kimi_k2.trace")
        let dir = Fixtures.scratchDirectory("trace")
        try t.encoded().write(toFile: dir + "/t", atomically: true, encoding: .utf8)
        #expect(try RoutingTrace.load(path: dir + "/t") == t)
        var lines = t.encoded().split(separator: "\n").map(String.init)
        lines[3] = "{\"s\": 1, \"l\": 7, \"e\": [1]}"
        try lines.joined(separator: "\n").write(toFile: dir + "/bad", atomically: true, encoding: .utf8)
        #expect { try RoutingTrace.load(path: dir + "/bad") } throws: { e in
            let te = e as! TraceError
            return te.line == 4 && te.file == dir + "/bad"
        }
    }
}
