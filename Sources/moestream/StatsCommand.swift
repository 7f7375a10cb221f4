import ArgumentParser
import Foundation
import MoERuntime

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay a routing trace: hit rates of LRU, LFU, the prefetchers and Belady's optimum at a cache budget.",
        discussion: "Record a trace with `moestream generate STORE ... --trace FILE`.")

    @Argument(help: "A routing trace (from --trace).")
    var trace: String

    @Option(help: ArgumentHelp("Cache budget to replay, e.g. 96G, 512M, or a share of all experts such as 25%.", valueName: "size"))
    var cache: String = "25%"

    @Flag(help: "Also replay a sweep of budgets (5% to 100% of all experts).")
    var sweep = false

    func run() throws {
        let t: RoutingTrace
        do { t = try RoutingTrace.load(path: trace) } catch { throw CLIError("\(error)") }
        let all = t.header.moeLayers.count * t.header.experts
        func slots(_ spec: String) throws -> Int {
            if spec.hasSuffix("%"), let p = Double(spec.dropLast()), p > 0 { return max(1, Int((Double(all) * p / 100).rounded())) }
            guard let bytes = parseSize(spec) else { throw CLIError("--cache '\(spec)' is neither a size nor a percentage") }
            return max(1, bytes / t.header.extentBytes)
        }
        let requests = t.events.reduce(0) { if case .request(_, _, let e) = $1 { return $0 + e.count }; return $0 }
        let steps = Set(t.events.map { if case .request(let s, _, _) = $0 { return s }; return -1 }).count - 1
        print("trace: \(requests) expert requests over \(steps) forward passes; \(t.header.moeLayers.count) MoE layers × "
            + "\(t.header.experts) experts (top-\(t.header.topK)), \(humanBytes(t.header.extentBytes)) each")
        let n = try slots(cache)
        print(String(format: "budget: %d experts = %@ (%.1f%% of all %d)", n, humanBytes(n * t.header.extentBytes),
                     100 * Double(n) / Double(all), all))
        print("")
        print("policy                         hit rate   precision   recall   wasted")
        for r in Self.replay(t, slots: n) {
            let p = r.precision.map { String(format: "%8.1f%%", $0 * 100) } ?? "        -"
            let c = r.recall.map { String(format: "%7.1f%%", $0 * 100) } ?? "       -"
            print(r.name.padding(toLength: 30, withPad: " ", startingAt: 0) + String(format: " %7.1f%%", r.hitRate * 100)
                + "  \(p)  \(c)  " + (r.prefetchesIssued > 0 ? String(format: "%6d", r.wastedPrefetches) : "     -"))
        }
        if sweep {
            print("")
            print("budget    experts      lru      lfu   lru+router   lru+both   belady")
            for pct in [5, 10, 15, 25, 35, 50, 75, 100] {
                let k = max(1, all * pct / 100)
                let sim = CacheSimulator(trace: t, slots: k)
                let cols = [sim.run(policy: .lru), sim.run(policy: .lfu), sim.run(policy: .lru, prefetch: .router),
                            sim.run(policy: .lru, prefetch: .both), sim.belady()]
                print(String(format: "%5d%%  %9d", pct, k) + cols.map { String(format: "  %6.1f%%", $0.hitRate * 100) }.joined(separator: " "))
            }
        }
    }

    static func replay(_ t: RoutingTrace, slots: Int) -> [CacheSimulator.Result] {
        let sim = CacheSimulator(trace: t, slots: slots)
        return [sim.run(policy: .lru), sim.run(policy: .lfu), sim.run(policy: .lru, prefetch: .router),
                sim.run(policy: .lru, prefetch: .stats), sim.run(policy: .lru, prefetch: .both), sim.belady()]
    }
}
