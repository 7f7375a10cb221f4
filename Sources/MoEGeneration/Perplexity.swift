import Foundation
import MoEModel

/// Perplexity of a token sequence: exp(mean negative log-likelihood of each next token), over non-overlapping
/// windows of `window` predictions, each window scored from a fresh context (the usual sliding-free setup of
/// `llama-perplexity` and of Tools/train_demo_model.py, whose numbers this reproduces).
public struct PerplexityResult: Sendable {
    public var perplexity: Double
    public var tokens: Int
    public var windows: Int
    public var seconds: Double
}

public func perplexity(model: KimiModel, ids: [Int], window: Int = 256,
                       progress: (Int, Int) -> Void = { _, _ in }) throws -> PerplexityResult {
    precondition(window >= 1)
    let start = ContinuousClock.now
    var nll = 0.0
    var count = 0
    var windows = 0
    var s = 0
    while s + 1 < ids.count {
        let chunk = Array(ids[s..<min(ids.count, s + window + 1)])
        guard chunk.count >= 2 else { break }
        let inputs = Array(chunk.dropLast())
        let r = try model.forward(inputs, cache: model.makeCache(limit: inputs.count), logits: .all)
        for i in 0..<inputs.count {
            let row = r.row(i)
            // log-softmax in double: the sum over a large vocabulary would lose digits in fp32.
            var m = -Double.infinity
            for v in row { m = max(m, Double(v)) }
            var z = 0.0
            for v in row { z += exp(Double(v) - m) }
            nll -= Double(row[row.startIndex + chunk[i + 1]]) - m - log(z)
        }
        count += inputs.count
        windows += 1
        progress(count, ids.count - 1)
        s += window
    }
    return PerplexityResult(perplexity: exp(nll / Double(max(1, count))), tokens: count, windows: windows,
                            seconds: (ContinuousClock.now - start).seconds)
}

/// The same text scored twice, window by window: with a fast arithmetic and with the exact one. What the
/// arithmetic policy is gated on (docs/performance.md): perplexity of each, the mean and largest KL divergence
/// KL(exact ‖ fast) of the next-token distributions, and how often the argmax agrees where the exact model is
/// decided (its top-2 logit margin above `margin`).
public struct ArithmeticComparison: Sendable {
    public var exact: PerplexityResult
    public var fast: PerplexityResult
    /// Mean and largest KL(exact ‖ fast) over every scored position, in nats.
    public var meanKL: Double
    public var maxKL: Double
    /// Positions where the exact top-2 margin exceeds `margin`, and those of them where the argmax agrees.
    public var decided: Int
    public var agreeing: Int
    public var margin: Double
    /// The largest absolute logit difference.
    public var maxLogitDifference: Double

    /// Fast perplexity relative to exact, minus one (0.003 = 0.3% higher).
    public var perplexityChange: Double { fast.perplexity / exact.perplexity - 1 }
}

/// Scores `ids` in windows as `perplexity` does, once with `useExact()` in force and once with `useFast()`;
/// both are called before each pass (they switch process-wide kernel settings, so nothing else may run meanwhile).
/// `exactModel` (default: `model`) runs the exact passes: the same experts over other resident weights (a store's
/// bf16 matrices, when `model` multiplies its int8 companion).
public func compareArithmetic(model: KimiModel, exactModel: KimiModel? = nil, ids: [Int], window: Int = 256, margin: Double = 0.1,
                              useExact: () -> Void, useFast: () -> Void,
                              progress: (Int, Int) -> Void = { _, _ in }) throws -> ArithmeticComparison {
    precondition(window >= 1)
    var nll = (exact: 0.0, fast: 0.0)
    var seconds = (exact: 0.0, fast: 0.0)
    var count = 0, windows = 0, decided = 0, agreeing = 0
    var klSum = 0.0, klMax = 0.0, maxDiff = 0.0
    var s = 0
    /// log-softmax of one row, in double: the sum over a large vocabulary would lose digits in fp32.
    func logSoftmax(_ row: ArraySlice<Float>, into out: inout [Double]) {
        var m = -Double.infinity
        for v in row { m = max(m, Double(v)) }
        var z = 0.0
        for v in row { z += exp(Double(v) - m) }
        let lz = m + log(z)
        out.removeAll(keepingCapacity: true)
        for v in row { out.append(Double(v) - lz) }
    }
    var pe: [Double] = [], pf: [Double] = []
    while s + 1 < ids.count {
        let chunk = Array(ids[s..<min(ids.count, s + window + 1)])
        guard chunk.count >= 2 else { break }
        let inputs = Array(chunk.dropLast())
        useExact()
        var t0 = ContinuousClock.now
        let exact = exactModel ?? model
        let re = try exact.forward(inputs, cache: exact.makeCache(limit: inputs.count), logits: .all)
        seconds.exact += (ContinuousClock.now - t0).seconds
        useFast()
        t0 = ContinuousClock.now
        let rf = try model.forward(inputs, cache: model.makeCache(limit: inputs.count), logits: .all)
        seconds.fast += (ContinuousClock.now - t0).seconds
        for i in 0..<inputs.count {
            let e = re.row(i), f = rf.row(i)
            logSoftmax(e, into: &pe)
            logSoftmax(f, into: &pf)
            let next = chunk[i + 1]
            nll.exact -= pe[next]
            nll.fast -= pf[next]
            var kl = 0.0
            for v in pe.indices { kl += exp(pe[v]) * (pe[v] - pf[v]) }
            klSum += kl
            klMax = max(klMax, kl)
            // Top two of the exact row, argmax of the fast one.
            var best = 0, second = -1, fastBest = 0
            for v in pe.indices {
                if pe[v] > pe[best] { second = best; best = v } else if v != best && (second < 0 || pe[v] > pe[second]) { second = v }
                if pf[v] > pf[fastBest] { fastBest = v }
                maxDiff = max(maxDiff, abs(Double(e[e.startIndex + v]) - Double(f[f.startIndex + v])))
            }
            if second >= 0 && pe[best] - pe[second] > margin {
                decided += 1
                if fastBest == best { agreeing += 1 }
            }
        }
        count += inputs.count
        windows += 1
        progress(count, ids.count - 1)
        s += window
    }
    func result(_ n: Double, _ t: Double) -> PerplexityResult {
        PerplexityResult(perplexity: exp(n / Double(max(1, count))), tokens: count, windows: windows, seconds: t)
    }
    return ArithmeticComparison(exact: result(nll.exact, seconds.exact), fast: result(nll.fast, seconds.fast),
                                meanKL: klSum / Double(max(1, count)), maxKL: klMax, decided: decided, agreeing: agreeing,
                                margin: margin, maxLogitDifference: maxDiff)
}
