import MoETensor

/// Where the model's weights come from, by their transformers names ("model.layers.3.self_attn.kv_b_proj.weight"):
/// a safetensors checkpoint (`Checkpoint`) or a GGUF file seen through that naming (`GGUFTensors`).
public protocol TensorSource: AnyObject, Sendable {
    /// The directory or file, for error messages.
    var directory: String { get }
    func contains(_ name: String) -> Bool
    /// `name`, checked to have `shape` (torch order).
    func tensor(_ name: String, shape: [Int]) throws(CheckpointError) -> Tensor
    /// The file that holds `name`, for error messages.
    func path(of name: String) -> String
}

extension Checkpoint: TensorSource {}
