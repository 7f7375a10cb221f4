import Foundation
import MoEExpertStore
import MoETensor

/// moestream-fuzz: a deterministic mutation fuzzer over every file the engine reads from outside (safetensors
/// shards, config.json, the shard index, a store's manifest, expert extents and resident file, tiktoken.model,
/// tokenizer_config.json, routing traces). Driven by `Tools/fuzz`, which restarts it after a crash and keeps
/// the crashing input.
///
///   moestream-fuzz run    --work DIR --fixtures DIR [--kinds a,b] [--seed S] [--cases N] [--from K] [--timeout S]
///   moestream-fuzz replay --work DIR --fixtures DIR FILE...   (regression inputs: KIND/TARGET--NAME)
///   moestream-fuzz craft  --work DIR --fixtures DIR      (hand-made hostile inputs, see Crafted.swift)
///   moestream-fuzz kinds
///
/// Before each case it writes `current` (case, kind, target) and `current.input` into the work directory, so
/// a case that kills the process (a trap, a signal, the SIGALRM of `--timeout`) is known to the driver. Every
/// finished case appends `case kind target outcome detail` to `log.tsv`.

struct Options {
    var command = ""
    var work = "/tmp/moestream-fuzz"
    var fixtures = "Tests/Fixtures"
    var kinds = FileKind.all.map(\.name)
    var seed: UInt64 = 1
    var cases = 1000
    var from = 0
    var timeout: UInt32 = 10
    var files: [String] = []

    static func parse(_ args: [String]) -> Options {
        var o = Options()
        var it = args.dropFirst().makeIterator()
        o.command = it.next() ?? ""
        while let a = it.next() {
            func value() -> String {
                guard let v = it.next() else { fail("\(a) needs a value") }
                return v
            }
            switch a {
            case "--work": o.work = value()
            case "--fixtures": o.fixtures = value()
            case "--kinds":
                let v = value()
                o.kinds = v == "all" ? FileKind.all.map(\.name) : v.split(separator: ",").map(String.init)
                for k in o.kinds where FileKind.named(k) == nil {
                    fail("unknown kind '\(k)' (kinds: \(FileKind.all.map(\.name).joined(separator: ", ")))")
                }
            case "--seed": o.seed = UInt64(value()) ?? { fail("--seed needs a number") }()
            case "--cases": o.cases = Int(value()) ?? { fail("--cases needs a number") }()
            case "--from": o.from = Int(value()) ?? { fail("--from needs a number") }()
            case "--timeout": o.timeout = UInt32(value()) ?? { fail("--timeout needs seconds") }()
            default:
                if a.hasPrefix("--") { fail("unknown option \(a)") }
                o.files.append(a)
            }
        }
        return o
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("moestream-fuzz: \(message)\n".utf8))
    exit(2)
}

/// Lays out `seed` again under `dir` (directories made, files linked) with `target` holding `bytes`.
func layOut(seed: String, into dir: String, target: String, bytes: [UInt8]) throws {
    let fm = FileManager.default
    try? fm.removeItem(atPath: dir)
    try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for rel in (fm.enumerator(atPath: seed)?.allObjects as? [String]) ?? [] {
        var isDir: ObjCBool = false
        _ = fm.fileExists(atPath: seed + "/" + rel, isDirectory: &isDir)
        if isDir.boolValue {
            try fm.createDirectory(atPath: dir + "/" + rel, withIntermediateDirectories: true)
        } else if rel != target {
            try fm.createSymbolicLink(atPath: dir + "/" + rel, withDestinationPath: seed + "/" + rel)
        }
    }
    guard fm.createFile(atPath: dir + "/" + target, contents: Data(bytes)) else { fail("cannot write \(dir)/\(target)") }
}

/// A manifest mutated but signed again, so the mutation reaches the checks behind the self-checksum.
func resigned(_ bytes: [UInt8]) -> [UInt8] {
    guard let m = try? JSONDecoder().decode(StoreManifest.self, from: Data(bytes)), let d = try? m.encoded() else { return bytes }
    return Array(d)
}

final class Log {
    let handle: FileHandle
    init(path: String) {
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { fail("cannot open \(path)") }
        h.seekToEndOfFile()
        handle = h
    }
    func write(_ line: String) { handle.write(Data((line + "\n").utf8)) }
}

/// Runs one case: marks it current, arms the alarm, exercises the engine, logs the outcome.
func runCase(id: String, kind: FileKind, target: String, bytes: [UInt8], seeds: Seeds, o: Options, log: Log) -> Outcome {
    let current = "\(id)\t\(kind.name)\t\(target)\n"
    FileManager.default.createFile(atPath: o.work + "/current.input", contents: Data(bytes))
    FileManager.default.createFile(atPath: o.work + "/current", contents: Data(current.utf8))
    let dir = o.work + "/case"
    do { try layOut(seed: seeds.directory(kind.seed), into: dir, target: target, bytes: bytes) } catch {
        fail("cannot lay out case \(id): \(error)")
    }
    alarm(o.timeout)
    let (outcome, detail) = exercise(kind, directory: dir)
    alarm(0)
    let flat = detail.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\t", with: " ")
    log.write("\(id)\t\(kind.name)\t\(target)\t\(outcome.rawValue)\t\(flat.prefix(200))")
    return outcome
}

let o = Options.parse(CommandLine.arguments)
switch o.command {
case "kinds":
    print(FileKind.all.map(\.name).joined(separator: "\n"))
case "craft":
    // Writes the hand-made hostile inputs (Crafted.swift) into --work's `crafted/` in the regression layout.
    let seeds: Seeds
    do { seeds = try Seeds.prepare(root: o.work + "/seeds", fixtures: o.fixtures) } catch { fail("cannot prepare seeds: \(error)") }
    do {
        for c in try craftedInputs(seeds) {
            let dir = o.work + "/crafted/" + c.kind
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let file = dir + "/" + c.target.replacingOccurrences(of: "/", with: "%2F") + "--" + c.name
            FileManager.default.createFile(atPath: file, contents: Data(c.bytes))
            print(file)
        }
    } catch { fail("cannot craft: \(error)") }
case "run", "replay":
    try? FileManager.default.createDirectory(atPath: o.work, withIntermediateDirectories: true)
    let seeds: Seeds
    do { seeds = try Seeds.prepare(root: o.work + "/seeds", fixtures: o.fixtures) } catch { fail("cannot prepare seeds: \(error)") }
    let log = Log(path: o.work + "/log.tsv")
    var nonFinite = 0
    if o.command == "run" {
        let kinds = o.kinds.map { FileKind.named($0)! }
        for i in o.from..<o.cases {
            let kind = kinds[i % kinds.count]
            var m = Mutator(rng: SplitMix(seed: o.seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(i)))
            let targets = kind.targets(seeds)
            let target = m.rng.pick(targets)
            let original = Array(FileManager.default.contents(atPath: seeds.directory(kind.seed) + "/" + target) ?? Data())
            var bytes = m.mutate(original, style: kind.style)
            if kind.resign && m.rng.chance(70) { bytes = resigned(bytes) }
            if runCase(id: "\(o.seed):\(i)", kind: kind, target: target, bytes: bytes, seeds: seeds, o: o, log: log) == .nonFinite {
                nonFinite += 1
            }
        }
    } else {
        // Regression inputs are named KIND/TARGET--NAME with '/' in TARGET written as '%2F'.
        for path in o.files {
            let parts = path.split(separator: "/").suffix(2)
            guard parts.count == 2, let kind = FileKind.named(String(parts.first!)),
                  let sep = parts.last!.range(of: "--") else { fail("\(path) is not KIND/TARGET--NAME") }
            let target = parts.last![..<sep.lowerBound].replacingOccurrences(of: "%2F", with: "/")
            guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read \(path)") }
            let outcome = runCase(id: path, kind: kind, target: target, bytes: Array(data), seeds: seeds, o: o, log: log)
            if outcome == .nonFinite { nonFinite += 1 }
        }
    }
    try? FileManager.default.removeItem(atPath: o.work + "/current")
    exit(nonFinite == 0 ? 0 : 1)
default:
    fail("usage: moestream-fuzz run|replay|kinds [options] (see Tools/fuzz)")
}
