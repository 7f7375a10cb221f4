import ArgumentParser
import Foundation
import MoEExpertStore
import MoERuntime
import MoESystem

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks measured against a baseline in the same run.",
                                                    subcommands: [BenchIO.self])
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
        var ours: [Double] = [], verified: [Double] = [], fio: [Double] = []
        var engine = "", direct = false
        for round in 1...rounds {
            bench.checksums = nil
            let r = try bench.run()
            engine = r.engine
            direct = r.direct
            ours.append(r.gbps)
            bench.checksums = file.checksums.map { UInt64($0, radix: 16) ?? 0 }
            verified.append(try bench.run().gbps)
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
