import MoECheckpoint
import MoETensor

extension MLPWeights {
    /// `out [T, H] = down(silu(gate(x)) · up(x))` for `x [T, H]`.
    func callAsFunction(_ x: UnsafePointer<Float>, tokens T: Int, into out: UnsafeMutablePointer<Float>) {
        swiGLU(gate: gate, up: up, down: down, x, tokens: T, into: out)
    }
}

/// The SwiGLU MLP every FFN in the model is: `down(silu(gate(x)) · up(x))`.
func swiGLU(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, tokens T: Int,
            into out: UnsafeMutablePointer<Float>) {
    let inter = gate.rows
    let g = FloatBuffer(count: T * inter), u = FloatBuffer(count: T * inter)  // [T, inter]
    gate.apply(x, tokens: T, into: g.pointer)
    up.apply(x, tokens: T, into: u.pointer)
    for i in 0..<(T * inter) { g.pointer[i] = VectorOps.silu(g.pointer[i]) * u.pointer[i] }
    down.apply(g.pointer, tokens: T, into: out)
}

/// An MoE layer for a batch of tokens: route each token, ask the provider for every expert any token chose
/// (each once), run each expert on the tokens that chose it, and combine.
///
/// Each (token, choice) result lands in its own slot, and slots are summed per token in choice order (the
/// router returns each token's experts ascending) after all experts are done, so the result is bit-identical
/// whatever order or thread the provider delivers experts in: a cache that serves hits first cannot change it.
struct MoELayer {
    let config: ModelConfig
    let weights: MoEWeights
    let router: NoAuxRouter
    let layer: Int

    func callAsFunction(_ x: UnsafePointer<Float>, tokens T: Int, experts provider: any ExpertProviding,
                        into out: UnsafeMutablePointer<Float>) throws -> [Routing] {
        let H = config.hiddenSize, n = config.numRoutedExperts, k = config.expertsPerToken

        let logits = FloatBuffer(count: T * n)  // [T, n_routed]
        weights.router.apply(x, tokens: T, into: logits.pointer)
        for i in 0..<(T * n) { logits.pointer[i] = VectorOps.sigmoid(logits.pointer[i]) }
        let routings = (0..<T).map { t in router.route(scores: logits.row(t, width: n), bias: weights.correctionBias) }

        // Tokens of each chosen expert, with the slot (choice rank) each result goes to.
        var users: [Int: [(token: Int, slot: Int)]] = [:]
        for (t, r) in routings.enumerated() {
            for (slot, e) in r.experts.enumerated() { users[e, default: []].append((t, slot)) }
        }
        let slots = FloatBuffer(count: T * k * H)  // [T, k, H]
        try provider.withExperts(layer: layer, users.keys.sorted()) { e, expert in
            guard let list = users[e] else { return }
            let xs = FloatBuffer(count: list.count * H), ys = FloatBuffer(count: list.count * H)  // [m, H]
            for (i, u) in list.enumerated() { xs.row(i, width: H).update(from: x + u.token * H, count: H) }
            swiGLU(gate: expert.gate, up: expert.up, down: expert.down, xs.pointer, tokens: list.count, into: ys.pointer)
            for (i, u) in list.enumerated() {
                let w = routings[u.token].weights[u.slot]
                let dst = slots.row(u.token * k + u.slot, width: H), src = ys.row(i, width: H)
                for j in 0..<H { dst[j] = src[j] * w }
            }
        }

        // out = Σ_slots (ascending expert id) + shared(x)
        for t in 0..<T {
            let o = out + t * H
            o.initialize(repeating: 0, count: H)
            for slot in 0..<k {
                let s = slots.row(t * k + slot, width: H)
                for j in 0..<H { o[j] += s[j] }
            }
        }
        if let shared = weights.shared {
            let s = FloatBuffer(count: T * H)
            shared(x, tokens: T, into: s.pointer)
            for i in 0..<(T * H) { out[i] += s.pointer[i] }
        }
        return routings
    }
}
