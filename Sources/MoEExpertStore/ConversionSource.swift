import Foundation
import MoECheckpoint
import MoEModel
import MoETensor

/// A Hugging Face source directory for the converter: BF16/F16/F32, block FP8 (Kimi K2 Instruct), or
/// compressed-tensors pack-quantized INT4 (Kimi K2 Thinking). Gives every matrix as a `WeightMatrix` in its
/// stored encoding, so the converter can pass bytes through or dequantize row by row.
struct ConversionSource {
    enum Kind: Equatable {
        case dense
        case fp8(blockRows: Int, blockCols: Int)
        case int4

        var name: String {
            switch self {
            case .dense: "dense"
            case .fp8: "fp8"
            case .int4: "int4"
            }
        }
    }

    let path: String
    let configPath: String
    let config: ModelConfig
    /// The language model's config.json object (K2.5's `text_config` unwrapped), without quantization_config:
    /// what the store's config.json holds.
    let storeConfig: [String: Any]
    let checkpoint: Checkpoint
    let kind: Kind
    let weights: CheckpointWeights
    /// Reused for every repacked INT4 matrix, so converting thousands of experts allocates nothing per
    /// expert (per-matrix buffers fragmented glibc's heap: RSS grew ~7 MB per expert on the K2 slice).
    private let scratch = Scratch()

    final class Scratch {
        var data = AlignedBuffer(byteCount: 0)
        var scales = AlignedBuffer(byteCount: 0)

        func data(_ bytes: Int) -> AlignedBuffer {
            if data.count < bytes { data = AlignedBuffer(byteCount: bytes) }
            return data
        }

        func scales(_ bytes: Int) -> AlignedBuffer {
            if scales.count < bytes { scales = AlignedBuffer(byteCount: bytes) }
            return scales
        }
    }

    init(path: String) throws(StoreError) {
        self.path = path
        configPath = (path as NSString).appendingPathComponent("config.json")
        do {
            config = try ModelConfig.load(path: path)
            checkpoint = try Checkpoint(path: path)
        } catch { throw .checkpoint(error) }
        guard let data = FileManager.default.contents(atPath: configPath),
              var raw = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw .checkpoint(.badConfig(file: configPath, key: "(document)", reason: "unreadable"))
        }
        if let text = raw["text_config"] as? [String: Any] { raw = text }
        raw["quantization_config"] = nil
        storeConfig = raw
        switch config.quantization {
        case .none: kind = .dense
        case .fp8Block(let r, let c): kind = .fp8(blockRows: r, blockCols: c)
        case .packQuantized(let bits, let group, let symmetric, _):
            guard bits == 4, group == 32, symmetric else {
                throw .unsupportedSource(file: configPath, reason: "pack-quantized \(bits)-bit group \(group) "
                    + "\(symmetric ? "symmetric" : "asymmetric") is not supported (int4, group 32, symmetric)")
            }
            kind = .int4
        }
        weights = CheckpointWeights(checkpoint: checkpoint, config: config)
    }

    /// The full tensor name of `base` + `suffix` in the source.
    func name(_ base: String, _ suffix: String) -> String { config.tensorPrefix + base + suffix }

    /// Source tensor names that make up the Linear `base`, whatever its format.
    func tensorNames(of base: String) -> [String] {
        [".weight", ".weight_scale_inv", ".weight_packed", ".weight_scale", ".weight_shape"]
            .map { name(base, $0) }.filter { checkpoint.contains($0) }
    }

    /// Returns the pages of `base`'s tensors to the kernel once they are converted.
    func release(_ base: String) {
        for n in tensorNames(of: base) { checkpoint.release(n) }
    }

    /// The Linear `base` as `[rows, cols]`. INT4 is repacked into Q4_0 order (values unchanged) in a scratch
    /// buffer that the next INT4 matrix reuses: use each result before asking for the next. Everything else is
    /// a zero-copy view of the mapped source.
    func matrix(_ base: String, rows: Int, cols: Int) throws(StoreError) -> WeightMatrix {
        if checkpoint.contains(name(base, ".weight_packed")) { return try int4Matrix(base, rows: rows, cols: cols) }
        do { return try weights.matrix(base, rows: rows, cols: cols) } catch { throw .checkpoint(error) }
    }

    /// compressed-tensors: `weight_packed` I32 [rows, cols/8], `weight_scale` [rows, cols/32], `weight_shape` [2].
    private func int4Matrix(_ base: String, rows: Int, cols: Int) throws(StoreError) -> WeightMatrix {
        let packedName = name(base, ".weight_packed"), scaleName = name(base, ".weight_scale")
        let shapeName = name(base, ".weight_shape")
        guard cols % 32 == 0 else {
            throw .unsupportedSource(file: checkpoint.path(of: packedName), reason: "'\(packedName)': \(cols) columns are not whole groups of 32")
        }
        do {
            let packed = try checkpoint.tensor(packedName, shape: [rows, cols / 8])
            guard packed.dtype == .i32 else {
                throw CheckpointError.wrongDType(file: checkpoint.path(of: packedName), tensor: packedName, expected: "I32", actual: packed.dtype.rawValue)
            }
            let scale = try checkpoint.tensor(scaleName, shape: [rows, cols / 32])
            if checkpoint.contains(shapeName) {
                let s = try checkpoint.tensor(shapeName, shape: [2])
                guard s.int(at: 0) == rows && s.int(at: 1) == cols else {
                    throw CheckpointError.wrongShape(file: checkpoint.path(of: shapeName), tensor: shapeName,
                                                     expected: [rows, cols], actual: [Int(s.int(at: 0)), Int(s.int(at: 1))])
                }
            }
            let data = scratch.data(rows * cols / 2)
            let words = packed.data.assumingMemoryBound(to: UInt32.self)
            let out = data.pointer.assumingMemoryBound(to: UInt8.self)
            for r in 0..<rows {
                GroupQuantization.repackCompressedTensorsInt4(words: words + r * cols / 8, cols: cols, into: out + r * cols / 2)
            }
            let type: WeightMatrix.ScaleType
            let scales: AlignedBuffer
            switch scale.dtype {
            case .bf16:
                type = .bf16
                scales = scratch.scales(scale.byteCount)
                scales.pointer.copyMemory(from: scale.data, byteCount: scale.byteCount)
            case .f32, .f16:
                type = .f32
                scales = scratch.scales(rows * (cols / 32) * 4)
                let p = scales.pointer.assumingMemoryBound(to: Float.self)
                for i in 0..<(rows * cols / 32) { p[i] = scale.float(at: i) }
            default:
                throw CheckpointError.wrongDType(file: checkpoint.path(of: scaleName), tensor: scaleName,
                                                 expected: "BF16, F16 or F32", actual: scale.dtype.rawValue)
            }
            return WeightMatrix(rows: rows, cols: cols, data: UnsafeRawPointer(data.pointer),
                                encoding: .int4g32(scales: UnsafeRawPointer(scales.pointer), scaleType: type),
                                owners: [data, scales])
        } catch let e as CheckpointError { throw .checkpoint(e) } catch { throw .checkpoint(.badTensor(file: path, tensor: packedName, reason: "\(error)")) }
    }

    /// Whether a tensor name (prefix removed) belongs to a routed expert.
    static func isRoutedExpert(_ name: String) -> Bool { name.contains(".mlp.experts.") }

    /// Layer index of `model.layers.N.…`, if any.
    static func layerIndex(_ name: String) -> Int? {
        guard name.hasPrefix("model.layers.") else { return nil }
        return Int(name.dropFirst("model.layers.".count).prefix { $0 != "." })
    }
}
