import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoESystem
import MoETestSupport
import Testing
@testable import MoERuntime

/// A converted int4 store of the Kimi-shaped fixture, made once for all cache tests.
let sharedStorePath: String = {
    let out = Fixtures.scratchDirectory("cache-store") + "/store"
    var c = StoreConverter(source: Fixtures.model("kimi_k2"), output: out)
    try! c.run()
    return out
}()

/// Logits of the prompt (one pass) and of 10 greedy decode steps.
func runSequence(_ model: KimiModel, _ prompt: [Int], steps: Int = 10) throws -> [Float] {
    let cache = model.makeCache()
    var out = try model.forward(prompt, cache: cache, logits: .all).logits
    var next = argmax(out[(out.count - model.config.vocabSize)...])
    for _ in 0..<steps {
        let r = try model.forward([next], cache: cache, logits: .last)
        out += r.logits
        next = argmax(r.row(0))
    }
    return out
}

@Suite(.serialized) struct ExpertCacheTests {
    let store = try! ExpertStore(path: sharedStorePath)
    let prompt = try! Reference.load("kimi_k2").prompt
    var extent: Int { store.manifest.experts.layout.extentBytes }

    func cached(slots: Int, policy: PolicyKind = .lru, prefetch: PrefetchMode = .off, engine: ReadEngine = .uring,
                topology: NumaTopology = .detect(), depth: Int = 2) throws -> (KimiModel, ExpertCache) {
        var c = CacheConfiguration(totalBudget: slots * extent, topology: topology)
        c.policy = policy
        c.prefetch = prefetch
        c.engine = engine
        c.prefetchDepth = depth
        c.ioDepth = 8
        return try store.loadModel(cache: c)
    }

    /// The whole point: from one layer's top-k (8 slots) to every expert (64), for each policy, prefetch mode
    /// and engine, the logits are bit-identical to reading every expert straight from the store.
    @Test func everyBudgetPolicyPrefetchAndEngineIsBitIdentical() throws {
        let reference = try runSequence(try store.loadModel(), prompt)
        var runs = 0
        for slots in [8, 13, 32, 64] {
            for policy in PolicyKind.allCases {
                for prefetch in PrefetchMode.allCases {
                    for engine in [ReadEngine.uring, .pread] where slots == 13 || engine == .uring {
                        let (model, cache) = try cached(slots: slots, policy: policy, prefetch: prefetch, engine: engine)
                        let logits = try runSequence(model, prompt)
                        #expect(logits == reference, "slots \(slots) \(policy) prefetch \(prefetch) \(engine)")
                        let s = cache.statistics()
                        #expect(s.total.requests == s.layers.reduce(0) { $0 + $1.activations.reduce(0, +) })
                        cache.shutdown()
                        runs += 1
                    }
                }
            }
        }
        #expect(runs == 40)
    }

    @Test func statisticsAddUp() throws {
        let (model, cache) = try cached(slots: 64)  // everything fits
        _ = try runSequence(model, prompt, steps: 0)
        let first = cache.statistics()
        // Cold cache: every distinct expert of the prompt is one miss, read once.
        for l in first.layers {
            let distinct = l.activations.filter { $0 > 0 }.count
            #expect(l.misses == distinct && l.demandHits == 0)
            #expect(l.bytesRead == distinct * extent)
        }
        _ = try runSequence(model, prompt, steps: 0)
        let second = cache.statistics()
        // The same prompt again: all hits, nothing read.
        #expect(second.total.misses == first.total.misses)
        #expect(second.total.demandHits == first.total.requests)
        #expect(second.total.bytesRead == first.total.bytesRead)
        #expect(second.tokens == 2 * prompt.count)
        #expect(second.readGBps > 0)
        cache.shutdown()
    }

    @Test func routerPrefetchHitsAndIsCounted() throws {
        let (model, cache) = try cached(slots: 64, prefetch: .router, depth: 1)
        _ = try runSequence(model, prompt, steps: 12)
        let s = cache.statistics()
        #expect(s.total.prefetchesIssued > 0)
        #expect(s.total.prefetchHits + s.total.latePrefetches > 0, "speculation never covered a miss")
        #expect(s.total.prefetchHits + s.total.latePrefetches <= s.total.prefetchesIssued)
        cache.shutdown()
    }

    /// A prompt's predictions for the next layer are not cut to the read queue: with one read in flight at a time,
    /// the predicted experts the queue cannot take wait in the backlog and are read as it drains (a decode step's
    /// are dropped, as all were before), and a prompt run through such a cache keeps the uncached model's logits.
    @Test func aPromptsPredictionsAreAllReadAheadWhateverTheQueueDepth() throws {
        var c = CacheConfiguration(totalBudget: 40 * extent, topology: .detect())
        c.prefetch = .router
        c.prefetchDepth = 1
        c.ioDepth = 1
        let predicted = (0..<20).map(Int32.init)
        for keep in [true, false] {
            let (_, cache) = try store.loadModel(cache: c)
            predicted.withUnsafeBufferPointer {
                cache.table.predicted(afterAttentionOf: 1, targets: [(ordinal: 1, layer: 2)], lists: $0.baseAddress!,
                                      stride: 32, counts: [20], prefetch: true, keepTheRest: keep)
            }
            let deadline = ContinuousClock.now + (keep ? .seconds(20) : .milliseconds(300))
            while cache.statistics().layers[1].prefetchesIssued < 20 && ContinuousClock.now < deadline { usleep(1000) }
            usleep(20_000)
            #expect(cache.statistics().layers[1].prefetchesIssued == (keep ? 20 : 1), "backlog \(keep)")
            cache.shutdown()
        }
        let longPrompt = prompt + prompt  // 24 tokens: a prompt pass (`Prefetcher.backlogMinTokens`)
        #expect(longPrompt.count >= Prefetcher.backlogMinTokens)
        let reference = try runSequence(try store.loadModel(), longPrompt, steps: 2)
        let (model, cache) = try store.loadModel(cache: c)
        #expect(try runSequence(model, longPrompt, steps: 2) == reference)
        cache.shutdown()
    }

    /// An injected two-node machine: the budget is split, experts are placed by (expert + layer) mod 2,
    /// each node reads and holds only its own experts.
    @Test func twoNodeTopologySplitsBudgetAndPlacement() throws {
        let topology = NumaTopology.fake(nodes: 2)
        let (model, cache) = try cached(slots: 40, topology: topology)
        #expect(cache.table.nodeSlots == [20, 20])
        _ = try runSequence(model, prompt, steps: 4)
        let s = cache.statistics()
        #expect(s.nodes.map(\.node) == [0, 1])
        #expect(s.nodes.allSatisfy { $0.bytesRead > 0 && $0.occupied > 0 && $0.slots == 20 })
        #expect(s.nodes[0].bytesRead + s.nodes[1].bytesRead == s.total.bytesRead)
        let keys = cache.table.slotKeys()
        for slot in 0..<cache.totalSlots where keys[slot] >= 0 {
            let k = Int(keys[slot])
            let layer = cache.table.moeLayers[k / cache.table.expertsPerLayer], e = k % cache.table.expertsPerLayer
            #expect(cache.table.node(ofSlot: slot) == (e + layer) % 2, "expert \(e) of layer \(layer) on the wrong node")
        }
        // Each expert is computed by a compute worker of the node that caches it.
        let seen = NSLock()
        var computedOn: [Int: Int] = [:]
        try cache.withExperts(layer: 2, Array(0..<12)) { e, _ in
            seen.lock()
            computedOn[e] = ComputePools.currentNode ?? -1
            seen.unlock()
        }
        #expect(computedOn.count == 12)
        for (e, node) in computedOn { #expect(node == (e + 2) % 2, "expert \(e) computed on node \(node)") }
        cache.shutdown()
    }

    /// Two models share one cache from two threads: requests interleave, results stay bit-identical.
    @Test func concurrentModelsShareOneCache() throws {
        let reference = try runSequence(try store.loadModel(), prompt)
        let (model, cache) = try cached(slots: 12, prefetch: .both)
        let twin = KimiModel(config: model.config, weights: model.weights, experts: cache)
        final class Outputs: @unchecked Sendable {
            let lock = NSLock()
            var values: [[Float]] = []
        }
        let outputs = Outputs()
        let group = DispatchGroup()
        let prompt = self.prompt
        for m in [model, twin] {
            group.enter()
            Thread {
                let r = try? runSequence(m, prompt)
                outputs.lock.lock()
                outputs.values.append(r ?? [])
                outputs.lock.unlock()
                group.leave()
            }.start()
        }
        group.wait()
        #expect(outputs.values.count == 2 && outputs.values.allSatisfy { $0 == reference })
        cache.shutdown()
    }

    @Test func damagedExpertIsNeverComputedThroughTheCache() throws {
        let copy = Fixtures.scratchDirectory("damaged") + "/store"
        try FileManager.default.copyItem(atPath: sharedStorePath, toPath: copy)
        let damaged = try ExpertStore(path: copy)
        let first = try damaged.loadModel().forward(prompt, cache: try damaged.loadModel().makeCache())
        let victim = first.routing[1][0].experts[0]
        let (file, offset) = damaged.location(layer: 1, expert: victim)!
        let h = FileHandle(forUpdatingAtPath: copy + "/" + file.path)!
        try h.seek(toOffset: UInt64(offset + 17))
        h.write(Data([0x5A]))
        try h.close()
        var c = CacheConfiguration(totalBudget: 16 * extent, topology: .detect())
        c.prefetch = .both
        let (model, cache) = try damaged.loadModel(cache: c)
        #expect { try model.forward(prompt, cache: model.makeCache()) } throws: { e in
            let d = (e as! ModelError).description
            return d.contains("layer 1 expert \(victim)") && d.contains("checksum mismatch")
        }
        cache.shutdown()
    }

    @Test func budgetsTooSmallAreRefusedOrWarned() throws {
        var c = CacheConfiguration(totalBudget: extent - 1, topology: .detect())
        #expect(throws: StoreError.self) { try store.loadModel(cache: c) }
        c = CacheConfiguration(totalBudget: 4 * extent, topology: .detect())
        let warnings = c.warnings(extentBytes: extent, expertsPerToken: 8)
        #expect(warnings.count == 1 && warnings[0].contains("holds 4 experts"))
        // Still correct, just slow: 4 slots for 8 experts a token.
        let (model, cache) = try store.loadModel(cache: c)
        #expect(try runSequence(model, prompt, steps: 2) == (try runSequence(try store.loadModel(), prompt, steps: 2)))
        cache.shutdown()
    }
}
