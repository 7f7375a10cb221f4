import ArgumentParser
import Foundation
import MoECheckpoint
import MoEExpertStore
import MoEModel
import MoERuntime
import MoETensor

/// Where the model comes from: an expert store (made by `moestream convert`), a Hugging Face checkpoint
/// directory (config.json + safetensors), told apart by the store's manifest, or a GGUF file (by its name).
struct ModelOptions: ParsableArguments {
    @Argument(help: "An expert store, a checkpoint directory (config.json and safetensors shards), or a GGUF file (any part of a split one).")
    var model: String

    var isStore: Bool { ExpertStore.isStore(model) }
    var isGGUF: Bool { model.hasSuffix(".gguf") }
}

/// What to write besides the output: statistics, heatmap, routing trace.
struct StatsOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Write the cache statistics as JSON.", valueName: "file"))
    var statsJson: String?

    @Option(help: ArgumentHelp("Draw expert activations per layer as SVG.", valueName: "file.svg"))
    var heatmap: String?

    @Option(help: ArgumentHelp("Record the routing (requests and router predictions) for `moestream stats`.", valueName: "file"))
    var trace: String?

    @Flag(help: "Do not print the statistics table.")
    var noStats = false
}

/// A loaded model and, for a store, its expert cache.
struct LoadedModel {
    let model: KimiModel
    let cache: ExpertCache?
    /// Which resident matrices the run multiplies, for the statistics (`describeResidentWeights`).
    var residentWeights = "as stored"
    /// The store's bf16 resident weights, when the run multiplies its int8 companion instead: what
    /// `perplexity --compare-exact` compares with.
    var exactWeights: (() throws -> ResidentWeights)? = nil

    static func load(_ options: ModelOptions, _ cacheOptions: CacheOptions, _ stats: StatsOptions? = nil) throws -> LoadedModel {
        do {
            try cacheOptions.startKernels()
            if options.isGGUF { return try loadGGUF(options, cacheOptions, stats) }
            guard options.isStore else {
                if cacheOptions.cache != nil || cacheOptions.cacheNode != nil || stats?.trace != nil {
                    throw CLIError("\(options.model) is a checkpoint directory: the expert cache and traces need a store "
                        + "(make one with `moestream convert \(options.model) -o STORE`)")
                }
                let model = try KimiModel.load(checkpoint: options.model)
                model.expertActivations = cacheOptions.activations(ggmlExperts: false)
                model.residentActivations = cacheOptions.resident(ggml: false)
                model.prefillChunk = cacheOptions.prefillChunk
                model.kvPrecision = cacheOptions.kv
                model.prefillWindow = cacheOptions.prefillWindow
                return LoadedModel(model: model, cache: nil)
            }
            let store = try ExpertStore(path: options.model, residentInt8: cacheOptions.wantsResidentInt8)
            let (config, notes) = try cacheOptions.configuration(for: store)
            notes.forEach { printError($0) }
            let (model, cache) = try store.loadModel(cache: config)
            var loaded = try finishLoading(model, cache, cacheOptions, stats, ggmlExperts: store.manifest.experts.layout.encoding == .ggml)
            loaded.residentWeights = describeResidentWeights(store)
            if store.residentInt8 != nil {
                let path = options.model
                loaded.exactWeights = { try ExpertStore(path: path, residentInt8: false).residentWeights() }
            }
            return loaded
        } catch let e as StoreError { throw CLIError(e.description) } catch let e as CheckpointError {
            throw CLIError(e.description)
        }
    }

    /// A GGUF run directly: its resident tensors in memory, its experts streamed from the file through the cache.
    static func loadGGUF(_ options: ModelOptions, _ cacheOptions: CacheOptions, _ stats: StatsOptions?) throws -> LoadedModel {
        let gguf = try GGUFCheckpoint(path: options.model)
        let c = try ModelConfig.fromGGUF(gguf)
        let reads = try GGUFExpertReads.make(gguf, c)
        let (config, notes) = try cacheOptions.configuration(resident: GGUFPlan.residentBytes(gguf, c),
                                                             experts: reads.slotBytes * c.moeLayers.count * c.numRoutedExperts,
                                                             extent: reads.slotBytes, expertsPerToken: c.expertsPerToken)
        notes.forEach { printError($0) }
        if FileManager.default.fileExists(atPath: GGUFSums.path(for: gguf)) {
            printError("\(gguf.path): checking the tensors in memory and every expert read against \(GGUFSums.path(for: gguf))")
        } else {
            printError("\(gguf.path): a GGUF carries no checksums, so expert reads are not verified (`moestream verify \(gguf.path) --write-sums` records them; `moestream convert` makes a checksummed store)")
        }
        let (model, cache) = try GGUFDirect.load(path: options.model, cache: config)
        return try finishLoading(model, cache, cacheOptions, stats, ggmlExperts: true)
    }

    /// The model settings, the fallback line, `--preload` and `--trace`, for a model with an expert cache;
    /// `ggmlExperts`: its experts are GGML blocks (a GGUF, or a store converted from one), whose default arithmetic
    /// differs (`CacheOptions.activations`, `resident(ggml:)`: resident GGML matrices take q8 where there are any).
    static func finishLoading(_ model: KimiModel, _ cache: ExpertCache, _ cacheOptions: CacheOptions, _ stats: StatsOptions?,
                              ggmlExperts: Bool) throws -> LoadedModel {
        do {
            model.expertActivations = cacheOptions.activations(ggmlExperts: ggmlExperts)
            model.residentActivations = cacheOptions.resident(ggml: ggmlExperts)
            model.prefillChunk = cacheOptions.prefillChunk
            model.kvPrecision = cacheOptions.kv
            model.prefillWindow = cacheOptions.prefillWindow
            if let f = cache.fallbackMessage { printError(f) }
            if cacheOptions.preload {
                let started = ContinuousClock.now
                let n = try cache.preload()
                let seconds: Double = (ContinuousClock.now - started).seconds
                printError("preloaded \(n) experts in " + String(format: "%.1f", seconds) + " s")
            }
            if stats?.trace != nil { cache.recorder = RoutingTraceRecorder(header: cache.traceHeader) }
            return LoadedModel(model: model, cache: cache)
        } catch let e as StoreError { throw CLIError(e.description) } catch let e as CheckpointError {
            throw CLIError(e.description)
        }
    }

    /// What a store's resident matrices are in this run: its int8 companion, its bf16 file (the companion unused or
    /// absent), or the one form its `--resident` choice wrote.
    static func describeResidentWeights(_ store: ExpertStore) -> String {
        if store.residentInt8 != nil { return "int8 (\(StoreManifest.residentInt8FileName))" }
        if store.manifest.residentInt8 != nil { return "bf16 (int8 too: --resident-weights int8)" }
        let option = store.manifest.source.residentOption
        return option == StoreConverter.ResidentOption.bf16.rawValue && store.manifest.version < 4
            ? "bf16 (a store without the int8 companion: convert it again for one)" : "as converted (--resident \(option))"
    }

    /// Prints the statistics table (stderr) and writes the files `stats` asks for.
    func finish(_ stats: StatsOptions, extra: [String] = []) throws {
        guard let cache else { return }
        var s = cache.statistics()
        s.kernels = Kernels.isa.rawValue
        s.expertActivations = model.expertActivations.rawValue
        s.residentActivations = model.residentActivations.described(int8: model.weights.hasInterleavedInt8)
        s.residentWeights = residentWeights
        s.prefillChunk = model.prefillChunk
        s.kvCache = model.kvPrecision.rawValue
        s.prefillWindow = model.prefillWindow
        s.threads = Parallelism.threads
        cache.shutdown()
        if !stats.noStats {
            var lines = [s.report()]
            lines += extra
            lines.append("threads \(Parallelism.threads), kernels \(Kernels.isa.rawValue), expert activations \(model.expertActivations.rawValue), resident activations \(model.residentActivations.described(int8: model.weights.hasInterleavedInt8)), resident weights \(residentWeights), KV cache \(model.kvPrecision.rawValue), prefill chunk \(model.prefillChunk), window \(model.prefillWindow)")
            printError(lines.joined(separator: "\n"))
        }
        if let path = stats.statsJson { try s.json().write(to: URL(fileURLWithPath: path)) }
        if let path = stats.heatmap { try Heatmap.svg(s).write(toFile: path, atomically: true, encoding: .utf8) }
        if let path = stats.trace, let r = cache.recorder { try r.write(to: path) }
    }
}

/// An error the CLI prints as one line and exits non-zero.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

func printError(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }
