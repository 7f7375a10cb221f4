import ArgumentParser
import Foundation
import MoEExpertStore
import MoEModel
import MoERuntime
import MoESystem
import MoETensor

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks measured against a baseline in the same run.",
                                                    subcommands: [BenchIO.self, BenchKernels.self, BenchMemory.self, BenchLifecycle.self])
}

struct BenchIO: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io",
        abstract: "Read random expert extents from a store, then run fio on the same file, block size and depth; print both and the ratio.")

    @Argument(help: "An expert store.")
    var store: String

    @Option(help: "Reads in flight.")
    var ioDepth: Int = 32

    @Option(help: "Read engine: uring or pread.")
    var ioEngine: ReadEngine = .uring

    @Option(help: "Seconds per measurement.")
    var seconds: Double = 10

    @Option(help: "Rounds of (moestream, moestream with verification, fio); medians are compared.")
    var rounds: Int = 3

    @Option(help: "MoE layer whose expert file is read (default: the first).")
    var layer: Int?

    func run() throws {
        let s: ExpertStore
        do { s = try ExpertStore(path: store, verifyResident: false) } catch { throw CLIError(error.description) }
        guard let file = layer.map({ l in s.manifest.experts.files.first { $0.layer == l } }) ?? s.manifest.experts.files.first else {
            throw CLIError("layer \(layer ?? -1) has no expert file in \(store)")
        }
        let path = store + "/" + file.path
        let extent = s.manifest.experts.layout.extentBytes
        print("file \(path): \(file.experts) extents of \(humanBytes(extent)); depth \(ioDepth), \(Int(seconds)) s each, random order")
        var bench = IOBenchmark(path: path, extentBytes: extent, extents: file.experts)
        bench.depth = ioDepth
        bench.engine = ioEngine
        // The drive (here a virtual disk) varies run to run: alternate ours and fio, report medians.
        bench.seconds = max(1, seconds / 4)
        _ = try bench.run()  // warm-up: device and the buffers' page tables
        bench.seconds = seconds
        var ours: [Double] = [], verified: [Double] = [], fio: [Double] = [], paired: [Double] = []
        var engine = "", direct = false
        for round in 1...rounds {
            bench.checksums = nil
            let r = try bench.run()
            engine = r.engine
            direct = r.direct
            ours.append(r.gbps)
            bench.checksums = file.checksums.map { UInt64($0, radix: 16) ?? 0 }
            verified.append(try bench.run().gbps)
            paired.append(verified.last! / max(ours.last!, 1e-9))
            guard let f = try runFio(path: path, extent: extent) else {
                print("fio not found: install it (apt-get install -y fio) to compare against the drive's limit")
                return
            }
            fio.append(f.gbps)
            print(String(format: "round %d: moestream %.3f GB/s, with xxh64 verify %.3f GB/s, fio %.3f GB/s", round, ours.last!,
                         verified.last!, fio.last!))
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        print(String(format: "moestream (%@%@)   median %7.3f GB/s", engine, direct ? ", O_DIRECT" : "", median(ours)))
        print(String(format: "moestream + xxh64 verify       median %7.3f GB/s", median(verified)))
        print(String(format: "fio (%@, O_DIRECT)        median %7.3f GB/s", ioEngine == .uring ? "io_uring" : "psync", median(fio)))
        print(String(format: "ratio moestream / fio          %7.2f", median(ours) / max(median(fio), 1e-9)))
        print(String(format: "ratio verified / fio           %7.2f", median(verified) / max(median(fio), 1e-9)))
        print(String(format: "ratio verified / unverified    %7.2f (median over rounds; checksums on %d thread%@ at %.1f GB/s each, off the I/O thread)",
                     median(paired), bench.checksumThreads, bench.checksumThreads == 1 ? "" : "s", hashSpeed(extent)))
    }

    /// xxHash64 on one thread over one extent of this store, GB/s.
    func hashSpeed(_ extent: Int) -> Double {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: extent, alignment: 4096)
        defer { buffer.deallocate() }
        for i in stride(from: 0, to: extent, by: 8) { buffer.storeBytes(of: UInt64(i) &* 0x9E37_79B9_7F4A_7C15, toByteOffset: i, as: UInt64.self) }
        var sink: UInt64 = 0
        let start = ContinuousClock.now
        for _ in 0..<8 { sink ^= XXHash64.hash(buffer.baseAddress!, count: extent) }
        let t = ContinuousClock.now - start
        let seconds = Double(t.components.seconds) + Double(t.components.attoseconds) * 1e-18
        return sink == 42 ? 0 : Double(8 * extent) / max(seconds, 1e-9) / 1e9
    }

    func runFio(path: String, extent: Int) throws -> (gbps: Double, reads: Int)? {
        let which = Process()
        which.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        which.arguments = ["sh", "-c", "command -v fio"]
        let out = Pipe()
        which.standardOutput = out
        try which.run()
        which.waitUntilExit()
        let fioPath = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard which.terminationStatus == 0, !fioPath.isEmpty else { return nil }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: fioPath)
        p.arguments = ["--name=experts", "--filename=\(path)", "--ioengine=\(ioEngine == .uring ? "io_uring" : "psync")",
                       "--direct=1", "--rw=randread", "--bs=\(extent)", "--iodepth=\(ioDepth)",
                       "--numjobs=\(ioEngine == .uring ? 1 : ioDepth)", "--group_reporting",
                       "--runtime=\(Int(seconds))", "--time_based", "--readonly", "--output-format=json"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0,
              let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let job = (json["jobs"] as? [[String: Any]])?.first, let read = job["read"] as? [String: Any],
              let bw = read["bw_bytes"] as? NSNumber, let ios = read["total_ios"] as? NSNumber else {
            throw CLIError("fio failed (exit \(p.terminationStatus))")
        }
        return (bw.doubleValue / 1e9, ios.intValue)
    }
}

struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Time each matrix kernel (one thread) at Kimi K2's expert size against its generic Swift twin, and check they agree.")

    @Option(help: "Rows of the matrix (an expert's gate is 2048 × 7168).")
    var rows: Int = 2048

    @Option(help: "Columns of the matrix.")
    var cols: Int = 7168

    @Option(help: ArgumentHelp("Token counts to time, comma-separated.", valueName: "list"))
    var tokens: String = "1,4,16"

    @Option(help: "Repeats per measurement (the best is kept).")
    var repeats: Int = 5

    @Option(help: ArgumentHelp("GGML block types to time as well, comma-separated; none to skip. Each is timed exact (rows decoded, then fp32 products) and, for the block types (legacy, K-quants, i-quants, ternary), with int8 dot products over Q8 activations (and on AMX tiles where the CPU has them).", valueName: "list"))
    var ggml: String = "Q4_K,Q6_K,Q2_K,IQ2_XXS"

    func run() throws {
        let counts = tokens.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ $0 >= 1 }) else { throw CLIError("--tokens: a list of positive counts, e.g. 1,4,16") }
        guard rows >= 8, rows % 8 == 0, cols >= 32, cols % 32 == 0 else {
            throw CLIError("--rows a multiple of 8 (the interleaved layout's blocks) and --cols a multiple of 32")
        }
        let isas = KernelISA.allCases.filter(\.isSupported)
        print("matrix \(rows) × \(cols), one thread; supported: \(isas.map(\.rawValue).joined(separator: ", "))"
              + (KernelISA.avx512.isSupported ? "" : " (no AVX-512 on this CPU)"))
        // What one core can do at most, measured the same way (register-only loops): each kernel's share of it.
        var peaks: [KernelISA: (fp32: Double, int8: Double?)] = [:]
        for isa in isas {
            guard let p = KernelBenchmark.peak(isa) else { continue }
            peaks[isa] = p
            print(String(format: "peak of one core, %@: fp32 FMA %.1f GFLOP/s", isa.rawValue, p.fp32)
                  + (p.int8.map { String(format: ", int8 dot %.1f GOP/s (%@)", $0, isa == .avx2 ? "maddubs" : "vpdpbusd") } ?? ""))
        }
        let amxPeak = KernelBenchmark.amxPeak()
        if let amxPeak { print(String(format: "peak of one core, AMX: bf16 tdpbf16ps %.1f GFLOP/s", amxPeak)) }
        let dpPeak = KernelBenchmark.dpbf16Peak()
        if let dpPeak { print(String(format: "peak of one core, AVX512-BF16: bf16 vdpbf16ps %.1f GFLOP/s", dpPeak)) }
        print("kind        tokens  isa       ms      GB/s  GFLOP/s  vs generic  max |Δ|/scale  % of peak")
        for kind in KernelBenchmark.Kind.allCases {
            let m = KernelBenchmark.randomMatrix(kind, rows: rows, cols: cols)
            for t in counts {
                let x = KernelBenchmark.randomActivations(t * cols)
                let reference = FloatBuffer(count: t * rows)
                m.gemm(rows: 0..<rows, x.pointer, tokens: t, into: reference.pointer, isa: .generic)
                let scale = (0..<(t * rows)).reduce(Float(0)) { max($0, abs(reference.pointer[$1])) }
                var base = 0.0
                for isa in isas {
                    let s = KernelBenchmark.time(m, tokens: t, isa: isa, repeats: isa == .generic ? max(1, repeats / 2) : repeats)
                    if isa == .generic { base = s }
                    let y = FloatBuffer(count: t * rows)
                    m.gemm(rows: 0..<rows, x.pointer, tokens: t, into: y.pointer, isa: isa)
                    printRow(kind.rawValue, t, isa, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference,
                             scale: scale, peak: peaks[isa]?.fp32)
                }
            }
        }
        // int4 weights × activations quantised to int8 (`--expert-activations q8`), row-major and interleaved:
        // speed against the fp32 generic product, and its error against it (the quantisation's, not float rounding).
        for kind in [KernelBenchmark.Kind.int4, .int4x8] {
        let m = KernelBenchmark.randomMatrix(kind, rows: rows, cols: cols)
        for t in counts {
            let (x, reference, scale, base) = generic(m, tokens: t)
            for isa in isas {
                let (s, y) = KernelBenchmark.timeQ8(m, x, tokens: t, isa: isa, repeats: isa == .generic ? max(1, repeats / 2) : repeats)
                // The q8 kernels' products are int8 (AVX-512 without VNNI runs the AVX2 one).
                let peak = isa == .generic ? nil : (peaks[isa]?.int8 ?? peaks[.avx2]?.int8)
                printRow(kind == .int4 ? "int4×q8" : "x8×q8", t, isa, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference,
                         scale: scale, peak: peak)
            }
            // Two-part int8 activations (`q8-gate-up-q16-down`'s down): GOP/s count the matrix's multiply-adds
            // once, so its share of the int8 peak is at most 50%.
            if kind == .int4x8 {
                for isa in isas {
                    let (s, y) = KernelBenchmark.timeQ16(m, x, tokens: t, isa: isa, repeats: isa == .generic ? max(1, repeats / 2) : repeats)
                    let peak = isa == .generic ? nil : (peaks[isa]?.int8 ?? peaks[.avx2]?.int8)
                    printRow("x8×q16", t, isa, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference,
                             scale: scale, peak: peak)
                }
            }
        }
        }
        // int8 resident matrices interleaved by 8 (`convert --resident int8`) × two-part int8 activations (their
        // default arithmetic): the same 50% ceiling.
        let m8 = KernelBenchmark.randomMatrix(.int8x8, rows: rows, cols: cols)
        for t in counts {
            let (x, reference, scale, base) = generic(m8, tokens: t)
            for isa in isas {
                let (s, y) = KernelBenchmark.timeQ16(m8, x, tokens: t, isa: isa, repeats: isa == .generic ? max(1, repeats / 2) : repeats)
                let peak = isa == .generic ? nil : (peaks[isa]?.int8 ?? peaks[.avx2]?.int8)
                printRow("i8x8×q16", t, isa, seconds: s, base: base, bytes: m8.storedByteCount, y: y, reference: reference,
                         scale: scale, peak: peak)
            }
        }
        // GGML block types (GGUF experts): rows decoded exactly, then the fp32 kernel of each ISA (generic: dotF32).
        for name in ggml.split(separator: ",").map(String.init) where name != "none" {
            guard let type = GGMLType(named: name), type.canDequantize, cols % type.blockSize == 0 else {
                throw CLIError("--ggml \(name): not a GGML type this build decodes with rows of \(cols) values")
            }
            let m = KernelBenchmark.randomGGML(type, rows: rows, cols: cols)
            for t in counts {
                let (x, reference, scale, base) = generic(m, tokens: t)
                for isa in isas {
                    let s = isa == .generic ? base : KernelBenchmark.time(m, tokens: t, isa: isa, repeats: repeats)
                    let y = FloatBuffer(count: t * rows)
                    m.gemm(rows: 0..<rows, x.pointer, tokens: t, into: y.pointer, isa: isa)
                    printRow(name, t, isa, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference, scale: scale,
                             peak: peaks[isa]?.fp32)
                }
                guard type.hasQ8Kernel else { continue }
                for isa in isas {
                    let (s, y) = KernelBenchmark.timeQ8(m, x, tokens: t, isa: isa, repeats: isa == .generic ? 1 : repeats,
                                                        tiles: false)
                    let peak = isa == .generic ? nil : (peaks[isa]?.int8 ?? peaks[.avx2]?.int8)
                    printRow(name + "×q8", t, isa, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference,
                             scale: scale, peak: peak)
                }
                // On AMX-INT8 tiles (a prompt pass's default from 5 tokens for the K-quants, 16 for the i-quants),
                // packing included.
                if isas.contains(.avx512), type.hasAMXKernel {
                    let (s, y) = KernelBenchmark.timeQ8(m, x, tokens: t, isa: .avx512, repeats: repeats, tiles: true)
                    printRow(name + "×q8", t, .avx512, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference,
                             scale: scale, peak: nil, isaName: "amx")
                }
            }
        }
        // bf16 weights × activations split into two bf16 parts (`--resident-activations bf16x2`) on AMX tiles and
        // with `vdpbf16ps`, packing included: its error against the fp32 product is the split's. The share is of
        // the instruction's peak, which counts both parts' products: at most 50% for the matrix's own.
        let bf16x2: [(BF16x2Kernel, Double)] = [amxPeak.map { (.amx, $0) }, dpPeak.map { (.vdpbf16ps, $0) }].compactMap { $0 }
        if !bf16x2.isEmpty, rows % WeightMatrix.amxTileRows == 0, cols % 32 == 0 {
            let m = KernelBenchmark.randomMatrix(.bf16, rows: rows, cols: cols)
            for t in counts {
                let (x, reference, scale, base) = generic(m, tokens: t)
                for (kernel, peak) in bf16x2 {
                    let (s, y) = KernelBenchmark.timeBF16(m, x, tokens: t, repeats: repeats, kernel: kernel)
                    printRow("bf16x2", t, .avx512, seconds: s, base: base, bytes: m.storedByteCount, y: y, reference: reference,
                             scale: scale, peak: peak, isaName: kernel == .amx ? "amx" : "vdpbf16")
                }
            }
        }
    }

    /// Random activations for `tokens` tokens, the generic fp32 product over them (the reference a kernel's error
    /// is measured against), its largest magnitude, and its time.
    func generic(_ m: WeightMatrix, tokens t: Int) -> (x: FloatBuffer, reference: FloatBuffer, scale: Float, seconds: Double) {
        let x = KernelBenchmark.randomActivations(t * cols)
        let reference = FloatBuffer(count: t * rows)
        m.gemm(rows: 0..<rows, x.pointer, tokens: t, into: reference.pointer, isa: .generic)
        let scale = (0..<(t * rows)).reduce(Float(0)) { max($0, abs(reference.pointer[$1])) }
        return (x, reference, scale, KernelBenchmark.time(m, tokens: t, isa: .generic, repeats: max(1, repeats / 2)))
    }

    /// One line: time, bandwidth, GFLOP/s, speed against the generic fp32 product, the largest difference from it
    /// relative to the largest output, and the GFLOP/s as a share of the core's measured `peak` for the kernel's
    /// instructions (fp32 FMA, or int8 dot products for the q8 rows).
    func printRow(_ name: String, _ tokens: Int, _ isa: KernelISA, seconds s: Double, base: Double, bytes: Int,
                  y: FloatBuffer, reference: FloatBuffer, scale: Float, peak: Double?, isaName: String? = nil) {
        var worst: Float = 0
        for i in 0..<(tokens * rows) { worst = max(worst, abs(y.pointer[i] - reference.pointer[i])) }
        let ms: Double = s * 1e3
        let gbps: Double = Double(bytes) / s / 1e9
        let flops: Double = 2.0 * Double(rows * cols * tokens) / s / 1e9
        let ratio: Double = base / s
        let error: Double = Double(worst) / Double(max(scale, 1e-30))
        let label = name.padding(toLength: 10, withPad: " ", startingAt: 0)
        let isaName = (isaName ?? isa.rawValue).padding(toLength: 7, withPad: " ", startingAt: 0)
        print(label + String(format: "  %6d  ", tokens) + isaName
              + String(format: " %7.2f  %7.2f  %7.2f  %8.2f×  %.1e", ms, gbps, flops, ratio, error)
              + (peak.map { String(format: "        %5.1f%%", 100 * flops / $0) } ?? ""))
    }
}

/// The memory's read rate, the ceiling `Tools/bench-vs-llamacpp` sets both engines' decode against.
struct BenchMemory: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory",
        abstract: "Measure the memory read rate (one thread, then --threads): the ceiling of decode, which streams every resident matrix and chosen expert once per token.")

    @Option(help: "Threads that read at once (default: the CPUs this process may use).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "Megabytes read per round (beyond the last-level cache, so the rate is the memory's).")
    var megabytes: Int = 1024

    @Option(help: "Rounds per measurement (the best is kept).")
    var rounds: Int = 5

    func run() throws {
        guard (1...4096).contains(threads) else { throw CLIError("--threads must be between 1 and 4096, not \(threads)") }
        let most = Int(ProcessInfo.processInfo.physicalMemory >> 21)  // half the machine's memory, in MB
        guard (1...max(1, most)).contains(megabytes) else {
            throw CLIError("--megabytes must be between 1 and \(max(1, most)) (half of this machine's memory), not \(megabytes)")
        }
        guard (1...1000).contains(rounds) else { throw CLIError("--rounds must be between 1 and 1000, not \(rounds)") }
        print("memory read rate: \(megabytes) MB summed with 64-byte loads, best of \(rounds) rounds")
        for n in Set([1, threads]).sorted() {
            let r = MemoryReadRate.measure(bytes: megabytes << 20, threads: n, rounds: rounds)
            print(String(format: "%d thread%@: %.1f GB/s", n, n == 1 ? "" : "s", r.bytesPerSecond / 1e9))
        }
    }
}

/// Loads a store with its expert cache, runs a short prompt, shuts the cache down and drops everything, N times:
/// what a long-lived process (a server reloading its model, a test suite) must get back each time.
struct BenchLifecycle: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lifecycle",
        abstract: "Load and drop a store's model and expert cache N times; print open files, threads and RSS after the second and the last.")

    @Argument(help: "An expert store.")
    var store: String

    @Option(help: "Load/drop cycles.")
    var cycles: Int = 20

    @OptionGroup(title: "Expert cache") var cacheOptions: CacheOptions

    func run() throws {
        guard cycles >= 3 else { throw CLIError("--cycles must be at least 3") }
        try cacheOptions.startKernels()
        // Dispatch starts its manager thread (with an epoll, an eventfd and a timerfd) lazily, at a moment of its
        // choosing: start it now so it is not counted as something a cycle left behind.
        let ready = DispatchSemaphore(value: 0)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(1)) { ready.signal() }
        ready.wait()
        var first: ProcessCounts? = nil
        // One cycle in its own function: everything it made is released when it returns.
        func once() throws {
                let s: ExpertStore
                do { s = try ExpertStore(path: store, residentInt8: cacheOptions.wantsResidentInt8) } catch { throw CLIError(error.description) }
                let (config, _) = try cacheOptions.configuration(for: s)
                let (model, cache): (KimiModel, ExpertCache)
                do { (model, cache) = try s.loadModel(cache: config) } catch { throw CLIError(error.description) }
                let prompt = (0..<8).map { $0 % model.config.vocabSize }
                _ = try model.forward(prompt, cache: model.makeCache(), logits: .last)
                cache.shutdown()
        }
        for cycle in 1...cycles {
            try once()
            if cycle == 2 { first = ProcessCounts.now() }  // the first cycle warms up what lives for the process
        }
        let last = ProcessCounts.now()
        let f = first!
        func mb(_ b: Int) -> String { String(format: "%.1f MB", Double(b) / 1e6) }
        print("after cycle 2:  \(f.descriptors) open files, \(f.threads) threads, RSS \(mb(f.rssBytes))")
        print("after cycle \(cycles): \(last.descriptors) open files, \(last.threads) threads, RSS \(mb(last.rssBytes))"
            + String(format: " (%+.1f%%)", 100 * (Double(last.rssBytes) / Double(max(1, f.rssBytes)) - 1)))
    }
}

/// Open descriptors, threads and resident memory of this process, from /proc.
struct ProcessCounts {
    var descriptors: Int
    var threads: Int
    var rssBytes: Int

    static func now() -> ProcessCounts {
        let fm = FileManager.default
        let fds = (try? fm.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
        let tasks = (try? fm.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return ProcessCounts(descriptors: fds, threads: tasks, rssBytes: pages * Int(sysconf(Int32(_SC_PAGESIZE))))
    }
}
