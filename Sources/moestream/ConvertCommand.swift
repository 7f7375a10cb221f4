import ArgumentParser
import Foundation
import MoECheckpoint
import MoEExpertStore

extension StoreConverter.ExpertsOption: ExpressibleByArgument {}
extension StoreConverter.ResidentOption: ExpressibleByArgument {}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a Hugging Face checkpoint (BF16, block FP8 or INT4 pack-quantized) or a GGUF file into an expert store.",
        discussion: """
        Streams: memory stays bounded whatever the source's size. Interrupted conversions resume when run again \
        with the same arguments and end byte-identical to an uninterrupted run. A GGUF (any part of a split one) \
        keeps its blocks bit for bit: its experts and resident tensors pass through in their GGML types.
        """)

    @Argument(help: "The source: a directory with config.json, safetensors shards (and index) and tokenizer files, or a .gguf file.")
    var source: String

    @Option(name: .shortAndLong, help: "The store directory to create (or to finish, after an interruption).")
    var output: String

    @Option(help: "Routed expert encoding: int4 (group-32 scales; INT4 sources pass through unchanged), int8, bf16, or source (as stored). Default: int4, source for a GGUF.")
    var experts: StoreConverter.ExpertsOption?

    @Option(help: "Resident weights: bf16+int8, the default, writes them in bf16 (resident.safetensors: what runs multiply, --exact included) and the attention, dense and shared-expert matrices again in int8 with an fp32 scale per 32 values (resident-int8.safetensors: what a run multiplies with --resident-weights int8, about 55% of their bf16 bytes in memory, faster and lossy, see docs/performance.md); bf16 or int8 write one form only (a smaller store; with int8 alone neither the default nor --exact reproduces the reference); source keeps them as stored. Embeddings, routers and kv_b stay bf16, vectors (norms, biases) as stored. Default: bf16+int8, source for a GGUF.")
    var resident: StoreConverter.ResidentOption?

    @Option(help: ArgumentHelp("Bytes per write, a multiple of 4096.", visibility: .hidden))
    var writeChunk: Int = 64 << 20

    @Flag(help: "No progress line.")
    var quiet = false

    func run() throws {
        var converter = StoreConverter(source: source, output: output)
        let gguf = source.hasSuffix(".gguf")
        converter.experts = experts ?? (gguf ? .source : .int4)
        converter.resident = resident ?? (gguf ? .source : .bf16AndInt8)
        converter.chunkBytes = writeChunk
        let started = ContinuousClock.now
        var lastPrint = ContinuousClock.now - .seconds(10)
        var firstDone: Int?
        converter.log = { message in
            if !quiet { FileHandle.standardError.write(("\r\u{1B}[K" + message + "\n").data(using: .utf8)!) }
        }
        converter.onProgress = { p in
            guard !quiet else { return }
            let now = ContinuousClock.now
            guard now - lastPrint >= .milliseconds(500) || p.bytesDone == p.bytesTotal else { return }
            lastPrint = now
            let base = firstDone ?? p.bytesDone
            if firstDone == nil { firstDone = p.bytesDone }
            let seconds = max(1e-3, (now - started).seconds)
            let rate = Double(p.bytesDone - base) / seconds
            let left = rate > 0 ? Double(p.bytesTotal - p.bytesDone) / rate : 0
            let line = String(format: "\r%@  %@ / %@  %.0f MB/s  %@ left   ", p.unit, humanBytes(p.bytesDone), humanBytes(p.bytesTotal),
                              rate / 1e6, formatDuration(left))
            FileHandle.standardError.write(line.data(using: .utf8)!)
        }
        do { try converter.run() } catch { throw CLIError(error.description) }
        let seconds = (ContinuousClock.now - started).seconds
        if !quiet { FileHandle.standardError.write(String(format: "\ndone in %.1f s\n", seconds).data(using: .utf8)!) }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every checksum of an expert store, or of a GGUF against the sums file beside it.",
        discussion: "A GGUF carries no checksums: `--write-sums` reads it once and writes xxHash64 of every tensor kept in memory and of every routed expert to FILE.gguf.xxh64.json (FILE: the first part of a split set), which `verify` then checks and direct mode (`run`, `generate`, `serve`… on the .gguf) uses to check what it loads and every expert it reads. The sums record the file as it is when written.")

    @Argument(help: "The store directory, or a .gguf (any part of a split set).")
    var store: String

    @Flag(help: "GGUF only: read the file and write its sums file (replacing an older one) instead of checking.")
    var writeSums = false

    func run() throws {
        if store.hasSuffix(".gguf") { return try runGGUF() }
        if writeSums { throw CLIError("--write-sums is for a GGUF; a store's checksums are in its manifest") }
        let started = ContinuousClock.now
        let report = StoreVerifier(path: store).run()
        let seconds = (ContinuousClock.now - started).seconds
        for p in report.problems { print("DAMAGED  \(p)") }
        print("\(report.tensorsChecked) resident tensors, \(report.expertsChecked) experts, \(humanBytes(report.bytesChecked)) "
            + String(format: "checked in %.2f s: ", seconds) + (report.ok ? "OK" : "\(report.problems.count) problem(s)"))
        if !report.ok { throw ExitCode(1) }
    }
}

extension Verify {
    /// A GGUF: write its sums, or check it against them.
    func runGGUF() throws {
        let started = ContinuousClock.now
        do {
            let gguf = try GGUFCheckpoint(path: store)
            let c = try ModelConfig.fromGGUF(gguf)
            let total = gguf.totalBytes
            func seconds() -> String { String(format: "%.2f s", (ContinuousClock.now - started).seconds) }
            if writeSums {
                let sums = try GGUFSums.compute(gguf, c)
                try sums.write(for: gguf)
                print("\(sums.tensors.count) tensors, \(sums.experts.count * c.numRoutedExperts) experts, \(humanBytes(total)) summed in \(seconds()): wrote \(GGUFSums.path(for: gguf))")
                return
            }
            guard let sums = try GGUFSums.load(for: gguf, c) else {
                throw CLIError("\(gguf.path): no sums file (\(GGUFSums.path(for: gguf))): a GGUF carries no checksums; `moestream verify \(store) --write-sums` records them from the file as it is now")
            }
            let problems = sums.tensorProblems(gguf) + (try sums.expertProblems(gguf, c))
            for p in problems { print("DAMAGED  \(p)") }
            print("\(sums.tensors.count) tensors, \(sums.experts.count * c.numRoutedExperts) experts, \(humanBytes(total)) checked against \(sums.path) in \(seconds()): "
                + (problems.isEmpty ? "OK" : "\(problems.count) problem(s)"))
            if !problems.isEmpty { throw ExitCode(1) }
        } catch let e as StoreError { throw CLIError(e.description) } catch let e as CheckpointError { throw CLIError(e.description) }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
}
