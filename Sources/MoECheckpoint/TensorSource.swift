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
    /// `name` as a weight matrix in a form the source keeps that `tensor` cannot express (GGML blocks), or nil to
    /// have the loader build it from `tensor`.
    func matrix(_ name: String, rows: Int, cols: Int) throws(CheckpointError) -> WeightMatrix?
}

extension TensorSource {
    public func matrix(_ name: String, rows: Int, cols: Int) throws(CheckpointError) -> WeightMatrix? { nil }
}

extension Checkpoint: TensorSource {}
