import ArgumentParser
import Foundation
import MoEGeneration
import MoEModel
import MoETensor
import MoETokenizer

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Perplexity of a text file: how well the model (and its quantization) predicts held-out text.")

    @OptionGroup var model: ModelOptions

    @Option(help: "The text file to score.")
    var file: String

    @Option(help: "Predictions per window; each window starts from a fresh context.")
    var window = 256

    @Option(help: "Score at most this many tokens (0: all).")
    var maxTokens = 0

    @Flag(help: "Score the text twice, with the arithmetic chosen here and with the exact one (fp32 activations for experts and resident matrices), and print both perplexities, the mean KL divergence between their next-token distributions and the argmax agreement.")
    var compareExact = false

    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions
    @OptionGroup(title: "Statistics") var statsOptions: StatsOptions

    func run() throws {
        guard window >= 1 else { throw CLIError("--window must be at least 1") }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw CLIError("\(file): cannot be read as UTF-8 text") }
        let loaded = try LoadedModel.load(model, cacheOptions, statsOptions)
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer.load(model: model.model) } catch { throw CLIError("\(error)") }
        var ids = tokenizer.encode(text, allowSpecial: false)
        if maxTokens > 0 { ids = Array(ids.prefix(maxTokens + 1)) }
        guard ids.count >= 2 else { throw CLIError("\(file): fewer than two tokens") }
        if compareExact {
            try compare(loaded, ids)
            try loaded.finish(statsOptions)
            return
        }
        let r: PerplexityResult
        do {
            r = try perplexity(model: loaded.model, ids: ids, window: window) { done, total in
                FileHandle.standardError.write("\r\(done)/\(total) tokens".data(using: .utf8)!)
            }
        } catch let e as ModelError { throw CLIError(e.description) }
        FileHandle.standardError.write("\n".data(using: .utf8)!)
        print(String(format: "perplexity %.4f over %d tokens (%d windows of %d) in %.1f s (%.0f tokens/s)", r.perplexity, r.tokens,
                     r.windows, window, r.seconds, Double(r.tokens) / max(r.seconds, 1e-9)))
        try loaded.finish(statsOptions)
    }

    /// `--compare-exact`: the gate of the arithmetic policy (docs/performance.md).
    func compare(_ loaded: LoadedModel, _ ids: [Int]) throws {
        let model = loaded.model, fast = model.expertActivations, fastResident = model.residentActivations, fastKV = model.kvPrecision
        // Exact multiplies a store's bf16 resident matrices: a second model over them shares the experts and cache.
        let exactModel = try loaded.exactWeights.map { KimiModel(config: model.config, weights: try $0(), experts: model.experts) } ?? model
        exactModel.expertActivations = .fp32
        exactModel.residentActivations = .fp32
        exactModel.kvPrecision = .f32
        let c: ArithmeticComparison
        do {
            c = try compareArithmetic(model: model, exactModel: exactModel, ids: ids, window: window,
                                      useExact: { exactModel.expertActivations = .fp32; exactModel.residentActivations = .fp32; exactModel.kvPrecision = .f32 },
                                      useFast: { model.expertActivations = fast; model.residentActivations = fastResident; model.kvPrecision = fastKV }) { done, total in
                FileHandle.standardError.write("\r\(done)/\(total) tokens".data(using: .utf8)!)
            }
        } catch let e as ModelError { throw CLIError(e.description) }
        model.expertActivations = fast
        model.residentActivations = fastResident
        model.kvPrecision = fastKV
        FileHandle.standardError.write("\n".data(using: .utf8)!)
        print(String(format: "exact: fp32 activations and KV cache\(loaded.exactWeights == nil ? "" : ", bf16 resident weights")    perplexity %.4f over %d tokens in %.1f s", c.exact.perplexity,
                     c.exact.tokens, c.exact.seconds))
        let label = "experts \(fast.rawValue), resident \(fastResident.described(int8: model.weights.hasInterleavedInt8)) activations, resident weights \(loaded.residentWeights), KV cache \(fastKV.rawValue)"
        print(String(format: "this run: %@    perplexity %.4f in %.1f s (%.2f× exact's speed)", label,
                     c.fast.perplexity, c.fast.seconds, c.exact.seconds / max(c.fast.seconds, 1e-9)))
        print(String(format: "perplexity change %+.3f%%; KL(exact ‖ this run) mean %.5f nats, max %.5f; largest logit difference %.4f",
                     c.perplexityChange * 100, c.meanKL, c.maxKL, c.maxLogitDifference))
        print(String(format: "argmax agrees at %d of %d positions where exact's top-2 margin exceeds %.2f (%.2f%%)", c.agreeing, c.decided,
                     c.margin, 100 * Double(c.agreeing) / Double(max(1, c.decided))))
    }
}
