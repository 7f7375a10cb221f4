import Foundation
import MoESystem

/// A recording of what the model asked the expert cache for, and what speculative routing predicted, so cache
/// policies and prefetchers can be compared offline (`moestream stats TRACE`).
///
/// Format: JSON lines. The first line is the header; every other line is an event:
///   {"format":"moestream-trace","version":1,"moe_layers":[1,2],"experts":32,"top_k":8,"extent_bytes":4096,"prefetch_depth":1}
///   {"s":3,"l":1,"e":[2,9,17]}                 step 3 asked layer 1 for experts 2, 9, 17 (one request)
///   {"s":3,"after":1,"p":{"2":[4,5,...]}}       after layer 1's attention, routers predicted layer 2's experts
/// A step is one forward pass (a prefill batch or one decode token).
public struct RoutingTrace: Sendable, Equatable {
    public struct Header: Codable, Sendable, Equatable {
        public var format = "moestream-trace"
        public var version = 1
        public var moeLayers: [Int]
        public var experts: Int
        public var topK: Int
        public var extentBytes: Int
        public var prefetchDepth: Int

        enum CodingKeys: String, CodingKey {
            case format, version, experts
            case moeLayers = "moe_layers"
            case topK = "top_k"
            case extentBytes = "extent_bytes"
            case prefetchDepth = "prefetch_depth"
        }
    }

    public enum Event: Sendable, Equatable {
        case request(step: Int, layer: Int, experts: [Int])
        /// Router predictions made after `after`'s attention: target layer → experts.
        case prediction(step: Int, after: Int, predicted: [Int: [Int]])
    }

    public var header: Header
    public var events: [Event]

    public init(header: Header, events: [Event]) {
        self.header = header
        self.events = events
    }

    struct Line: Codable {
        var s: Int
        var l: Int?
        var e: [Int]?
        var after: Int?
        var p: [String: [Int]]?
    }

    public static func line(_ event: Event) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let l: Line
        switch event {
        case .request(let s, let layer, let e): l = Line(s: s, l: layer, e: e)
        case .prediction(let s, let after, let p):
            l = Line(s: s, after: after, p: Dictionary(uniqueKeysWithValues: p.map { (String($0.key), $0.value) }))
        }
        return String(decoding: try! enc.encode(l), as: UTF8.self)
    }

    public func encoded() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var out = String(decoding: try! enc.encode(header), as: UTF8.self) + "\n"
        for e in events { out += Self.line(e) + "\n" }
        return out
    }

    /// Traces are replayed whole in memory; a day of decoding records well under this.
    static let maxFileBytes = 4 << 30

    public static func load(path: String) throws -> RoutingTrace {
        let raw: [UInt8]
        do { raw = try FileSystem.contents(path, limit: maxFileBytes) } catch {
            throw TraceError(file: path, line: 0, reason: "cannot be read: \(error)")
        }
        guard let text = String(validating: raw, as: UTF8.self) else { throw TraceError(file: path, line: 0, reason: "is not UTF-8 text") }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: true).makeIterator()
        guard let first = lines.next(), let header = try? JSONDecoder().decode(Header.self, from: Data(first.utf8)),
              header.format == "moestream-trace" else {
            throw TraceError(file: path, line: 1, reason: "not a moestream routing trace header")
        }
        guard header.version == 1 else { throw TraceError(file: path, line: 1, reason: "version \(header.version) is not 1") }
        // The header's numbers size the simulator's tables and divide budgets: checked before anything uses them.
        guard (1...4096).contains(header.experts), (1...header.experts).contains(header.topK),
              // The co-activation statistics replayed with the trace hold layers × experts² counts.
              header.moeLayers.count * header.experts * header.experts <= 1 << 28,
              (1...4096).contains(header.moeLayers.count), Set(header.moeLayers).count == header.moeLayers.count,
              header.moeLayers.allSatisfy({ (0..<4096).contains($0) }), (1...(1 << 34)).contains(header.extentBytes),
              (0...4096).contains(header.prefetchDepth) else {
            throw TraceError(file: path, line: 1, reason: "header numbers out of range (experts 1...4096, layers × experts² ≤ 2^28, top_k 1...experts, "
                + "1...4096 distinct MoE layers below 4096, extent_bytes 1...16G, prefetch_depth 0...4096)")
        }
        var events: [Event] = []
        var n = 1
        let dec = JSONDecoder()
        while let raw = lines.next() {
            n += 1
            guard let l = try? dec.decode(Line.self, from: Data(raw.utf8)) else { throw TraceError(file: path, line: n, reason: "not a trace event") }
            if let layer = l.l, let e = l.e {
                guard header.moeLayers.contains(layer), e.allSatisfy({ (0..<header.experts).contains($0) }) else {
                    throw TraceError(file: path, line: n, reason: "layer \(layer) or an expert id is outside the header's model")
                }
                events.append(.request(step: l.s, layer: layer, experts: e))
            } else if let after = l.after, let p = l.p {
                var predicted: [Int: [Int]] = [:]
                for (k, v) in p {
                    guard let layer = Int(k), header.moeLayers.contains(layer) else {
                        throw TraceError(file: path, line: n, reason: "prediction for unknown layer \(k)")
                    }
                    guard v.allSatisfy({ (0..<header.experts).contains($0) }) else {
                        throw TraceError(file: path, line: n, reason: "prediction for layer \(k) names an expert outside 0..<\(header.experts)")
                    }
                    predicted[layer] = v
                }
                events.append(.prediction(step: l.s, after: after, predicted: predicted))
            } else {
                throw TraceError(file: path, line: n, reason: "neither a request nor a prediction")
            }
        }
        return RoutingTrace(header: header, events: events)
    }
}

public struct TraceError: Error, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var reason: String
    public var description: String { "\(file):\(line): \(reason)" }
}

/// Appends trace events as the cache serves requests. Thread-safe; `write(to:)` saves the trace.
public final class RoutingTraceRecorder: @unchecked Sendable {  // `trace` is guarded by `lock`
    let lock = NSLock()
    var trace: RoutingTrace

    public init(header: RoutingTrace.Header) { trace = RoutingTrace(header: header, events: []) }

    func record(_ e: RoutingTrace.Event) {
        lock.lock()
        trace.events.append(e)
        lock.unlock()
    }

    public var snapshot: RoutingTrace {
        lock.lock()
        defer { lock.unlock() }
        return trace
    }

    public func write(to path: String) throws {
        try snapshot.encoded().write(toFile: path, atomically: true, encoding: .utf8)
    }
}
