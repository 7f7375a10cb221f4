import Foundation

/// Paths to the committed fixtures and scratch directories for tests.
public enum Fixtures {
    /// `Tests/Fixtures`, found from this source file so tests run from any working directory.
    public static let root: String = {
        let here = URL(fileURLWithPath: #filePath)  // Tests/MoETestSupport/Fixtures.swift
        return here.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }()

    /// The three reference models written by Tools/make_fixtures.py.
    public static let modelNames = ["kimi_k2", "deepseek_v3", "odd_dense2"]

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

/// Largest absolute difference between two equally long sequences.
public func maxAbsDiff<A: Collection, B: Collection>(_ a: A, _ b: B) -> Float where A.Element == Float, B.Element == Float {
    precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}
