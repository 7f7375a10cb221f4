import MoECheckpoint

/// What can stop a forward pass or a model load. Cases name the layer, expert or token involved.
public enum ModelError: Error, CustomStringConvertible {
    case checkpoint(CheckpointError)
    /// A token id outside the vocabulary.
    case tokenOutOfRange(token: Int, vocabSize: Int)
    /// The sequence would pass `max_position_embeddings` (or the cache's limit).
    case contextFull(position: Int, limit: Int)
    /// The expert provider could not deliver an expert (a read failed, a checksum did not match).
    case expertUnavailable(layer: Int, expert: Int, reason: String)
    /// The checkpoint's tensors use an encoding this path cannot compute with.
    case unsupportedEncoding(tensor: String, reason: String)
    case emptyInput
    /// The caller cancelled the pass (before `layer`); the KV cache holds what it held before the pass.
    case cancelled(layer: Int)
    /// The logits hold NaN or infinity: weights with non-finite values (a damaged checkpoint without checksums)
    /// or values that overflow. Refused rather than sampled from.
    case nonFiniteLogits(position: Int)

    public var description: String {
        switch self {
        case .checkpoint(let e): return e.description
        case .tokenOutOfRange(let t, let v): return "token id \(t) is outside the vocabulary (0..<\(v))"
        case .contextFull(let p, let l): return "position \(p) is past the context limit of \(l) tokens"
        case .expertUnavailable(let l, let e, let r): return "layer \(l) expert \(e) unavailable: \(r)"
        case .unsupportedEncoding(let t, let r): return "tensor '\(t)': \(r)"
        case .emptyInput: return "no input tokens"
        case .cancelled(let l): return "cancelled before layer \(l)"
        case .nonFiniteLogits(let p):
            return "the logits at position \(p) are not finite (NaN or infinity): the weights hold non-finite values "
                + "or overflow; the checkpoint may be damaged (a store's checksums would have named the tensor)"
        }
    }
}
