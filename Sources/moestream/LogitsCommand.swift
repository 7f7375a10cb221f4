import ArgumentParser
import Foundation
import MoEModel

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the logits of every position of a token sequence (one prefill pass).")

    @OptionGroup var model: ModelOptions

    @Option(help: "Token ids, comma separated: 1,17,42.")
    var tokens: TokenList

    @Flag(help: "Print {\"logits\": [[...], ...]} with every value, one row per position.")
    var json = false

    @Flag(help: "Run the prompt one token at a time through the KV cache instead of one pass.")
    var decode = false

    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions
    @OptionGroup(title: "Statistics") var statsOptions: StatsOptions

    func run() throws {
        let loaded = try LoadedModel.load(model, cacheOptions, statsOptions)
        let m = loaded.model
        let cache = m.makeCache()
        var rows: [ArraySlice<Float>] = []
        let started = ContinuousClock.now
        do {
            if decode {
                for t in tokens.ids {
                    let r = try m.forward([t], cache: cache, logits: .last)
                    rows.append(r.row(0))
                }
            } else {
                let r = try m.forward(tokens.ids, cache: cache, logits: .all)
                rows = (0..<r.rows).map { r.row($0) }
            }
        } catch let e as ModelError { throw CLIError(e.description) }
        let elapsed = ContinuousClock.now - started
        if json {
            var out = "{\"logits\": ["
            out += rows.map { "[" + $0.map { "\($0)" }.joined(separator: ", ") + "]" }.joined(separator: ", ")
            out += "]}"
            print(out)
        } else {
            for (i, row) in rows.enumerated() {
                let top = row.indices.sorted { row[$0] > row[$1] }.prefix(5)
                let shown = top.map { "\($0 - row.startIndex):\(String(format: "%.4f", row[$0]))" }.joined(separator: "  ")
                print("position \(i) token \(tokens.ids[i])  top-5  \(shown)")
            }
            FileHandle.standardError.write("forward: \(tokens.ids.count) tokens in \(elapsed)\n".data(using: .utf8)!)
        }
        try loaded.finish(statsOptions)
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Greedy generation from token ids; prints the new ids.")

    @OptionGroup var model: ModelOptions

    @Option(help: "Prompt token ids, comma separated.")
    var tokens: TokenList

    @Option(help: "How many tokens to generate.")
    var maxTokens = 32

    @Flag(help: "Keep going past the model's end-of-sequence token.")
    var ignoreEos = false

    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions
    @OptionGroup(title: "Statistics") var statsOptions: StatsOptions

    func run() throws {
        let loaded = try LoadedModel.load(model, cacheOptions, statsOptions)
        let m = loaded.model
        let stop = ignoreEos ? [] : Set(m.config.eosTokenIds)
        let started = ContinuousClock.now
        var firstToken: ContinuousClock.Instant? = nil
        let ids: [Int]
        do {
            ids = try m.greedy(prompt: tokens.ids, maxTokens: maxTokens, stop: stop) { _ in
                if firstToken == nil { firstToken = .now }
            }
        } catch let e as ModelError {
            throw CLIError(e.description)
        }
        let ended = ContinuousClock.now
        print(ids.map(String.init).joined(separator: ","))
        // The prompt's pass ends with the first token; every later token is one decode step.
        let prefill: Double = ((firstToken ?? ended) - started).seconds
        let decode: Double = (ended - (firstToken ?? ended)).seconds
        let steps = max(0, ids.count - 1)
        let prefillRate: Double = prefill > 0 ? Double(tokens.ids.count) / prefill : 0
        let decodeRate: Double = decode > 0 ? Double(steps) / decode : 0
        let line = String(format: "prefill %d tokens in %.3f s (%.2f tokens/s); ", tokens.ids.count, prefill, prefillRate)
            + String(format: "decode %d tokens in %.3f s (%.2f tokens/s)", steps, decode, decodeRate)
        printError(line)
        try loaded.finish(statsOptions)
    }
}
