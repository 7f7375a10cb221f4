import Foundation

/// Paths to the committed fixtures and scratch directories for tests.
public enum Fixtures {
    /// `Tests/Fixtures`, found from this source file so tests run from any working directory.
    public static let root: String = {
        let here = URL(fileURLWithPath: #filePath)  // Tests/MoETestSupport/Fixtures.swift
        return here.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }()

    /// Reference models written by Tools/make_fixtures.py that the engine reads straight from the checkpoint.
    public static let modelNames = ["kimi_k2", "deepseek_v3", "odd_dense2", "kimi_k2_fp8"]

    /// Every reference model, each in a different source format: BF16 (sharded), F32, F16, block FP8, and
    /// compressed-tensors INT4 (which only runs after conversion to a store).
    public static let allModels = modelNames + ["kimi_k2_int4"]

    /// The `moestream` executable built beside the test bundle.
    public static var executable: String {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [dir, dir.deletingLastPathComponent()] {
            let p = candidate.appendingPathComponent("moestream").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return URL(fileURLWithPath: root).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/moestream").path
    }

    public static func model(_ name: String) -> String { root + "/models/" + name }

    /// A fresh empty directory under the system temp dir; removed by the caller or the OS.
    public static func scratchDirectory(_ label: String = "moestream-test") -> String {
        let path = NSTemporaryDirectory() + "\(label)-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Copies a fixture model into a scratch directory so a test can damage it.
    public static func copyOfModel(_ name: String) -> String {
        let dst = scratchDirectory(name)
        for f in try! FileManager.default.contentsOfDirectory(atPath: model(name)) {
            try! FileManager.default.copyItem(atPath: model(name) + "/" + f, toPath: dst + "/" + f)
        }
        return dst
    }
}

/// transformers' outputs for a fixture model (reference.json).
public struct Reference: Decodable {
    public let model: String
    public let prompt: [Int]
    /// [prompt, vocab]: logits of every prompt position from one prefill pass.
    public let prefillLogits: [[Float]]
    /// Greedy continuation from `generate` with transformers' KV cache.
    public let generated: [Int]
    /// [generated, vocab]: the logits each greedy step chose from.
    public let generatedLogits: [[Float]]
    public let minGreedyMargin: Float

    enum CodingKeys: String, CodingKey {
        case model, prompt, generated
        case prefillLogits = "prefill_logits"
        case generatedLogits = "generated_logits"
        case minGreedyMargin = "min_greedy_margin"
    }

    public static func load(_ name: String) throws -> Reference {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.model(name) + "/reference.json"))
        return try JSONDecoder().decode(Reference.self, from: data)
    }
}

/// Every regular file under `dir` (relative path → bytes), for comparing two stores byte by byte.
public func directoryContents(_ dir: String) -> [String: Data] {
    var out: [String: Data] = [:]
    let e = FileManager.default.enumerator(atPath: dir)
    while let rel = e?.nextObject() as? String {
        var isDir: ObjCBool = false
        let p = dir + "/" + rel
        if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue {
            out[rel] = FileManager.default.contents(atPath: p)
        }
    }
    return out
}

/// Runs a program, returning its exit status (negative: killed by that signal) and its standard error.
@discardableResult
public func runProcess(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, stderr: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    let data = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let status = p.terminationReason == .uncaughtSignal ? -p.terminationStatus : p.terminationStatus
    return (status, String(decoding: data, as: UTF8.self))
}

/// Largest absolute difference between two equally long sequences.
public func maxAbsDiff<A: Collection, B: Collection>(_ a: A, _ b: B) -> Float where A.Element == Float, B.Element == Float {
    precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}
