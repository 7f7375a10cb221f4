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
