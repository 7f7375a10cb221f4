import ArgumentParser
import Foundation
import MoEGeneration
import MoEModel
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

    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions
    @OptionGroup(title: "Statistics") var statsOptions: StatsOptions

    func run() throws {
        guard window >= 1 else { throw CLIError("--window must be at least 1") }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw CLIError("\(file): cannot be read as UTF-8 text") }
        let loaded = try LoadedModel.load(model, cacheOptions, statsOptions)
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(directory: model.model) } catch { throw CLIError("\(error)") }
        var ids = tokenizer.encode(text, allowSpecial: false)
        if maxTokens > 0 { ids = Array(ids.prefix(maxTokens + 1)) }
        guard ids.count >= 2 else { throw CLIError("\(file): fewer than two tokens") }
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
}
