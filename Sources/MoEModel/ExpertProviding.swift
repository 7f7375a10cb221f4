import MoETensor

/// One routed expert: a SwiGLU MLP `down(silu(gate(x)) · up(x))`.
public struct ExpertWeights: Sendable {
    /// `[moe_intermediate, hidden]`
    public let gate: WeightMatrix
    /// `[moe_intermediate, hidden]`
    public let up: WeightMatrix
    /// `[hidden, moe_intermediate]`
    public let down: WeightMatrix

    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        self.gate = gate
        self.up = up
        self.down = down
    }
}

/// The only door through which the model reaches routed experts.
///
/// The model asks for all the experts a layer needs at once (for a prefill batch: every expert any token chose,
/// each once), so an implementation can read them in one batch, serve hits first and compute while the rest
/// arrive. The weights handed to `body` are valid only during the call: a cache may pin the slot for exactly
/// that long. `body` may be called concurrently from several threads for different experts (a cache computes
/// each expert on a worker of the NUMA node that holds it); the model's result does not depend on the order
/// or the thread of the calls.
public protocol ExpertProviding: AnyObject, Sendable {
    /// Calls `body(expert, weights)` exactly once for each id in `experts` (distinct, ascending), in any order,
    /// possibly concurrently, and returns when all calls have returned.
    /// Throws `ModelError.expertUnavailable` when an expert cannot be delivered intact; never hands out damaged
    /// weights.
    func withExperts(layer: Int, _ experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws

    /// Called after layer `layer`'s attention with the residual stream `hidden [tokens, hidden_size]`, before
    /// its experts are asked for: a prefetcher may apply later layers' routers to it and start reads early.
    /// Must not change anything the model computes.
    func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens: Int)

    /// Called when a forward pass of `tokens` tokens starts and ends (statistics count tokens).
    func forwardDidFinish(tokens: Int)
}

extension ExpertProviding {
    public func hint(afterAttentionOf layer: Int, hidden: UnsafePointer<Float>, tokens: Int) {}
    public func forwardDidFinish(tokens: Int) {}
}
