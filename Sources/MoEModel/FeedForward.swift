import MoECheckpoint
import MoETensor

extension MLPWeights {
    /// `out [T, H] = down(silu(gate(x)) · up(x))` for `x [T, H]`, with the pass's resident arithmetic.
    func callAsFunction(_ x: UnsafePointer<Float>, tokens T: Int, workspace: Workspace,
                        into out: UnsafeMutablePointer<Float>) {
        let mode = workspace.residentActivations
        if mode == .q8, gate.takesResidentQ8, up.takesResidentQ8 {
            let scratch = workspace.floats(2 * T * gate.rows + Q8Activations.floatsNeeded(tokens: T, cols: max(gate.cols, gate.rows)))
            swiGLUQ8(gate: gate, up: up, down: down, x, tokens: T, quantiseDown: down.takesResidentQ8, scratch: scratch, into: out)
            return
        }
        if mode != .fp32, gate.takesQ16, up.takesQ16, down.takesQ16 {
            let scratch = workspace.floats(2 * T * gate.rows + Q16Activations.floatsNeeded(tokens: T, cols: max(gate.cols, gate.rows)))
            swiGLUQ16(gate: gate, up: up, down: down, x, tokens: T, scratch: scratch, into: out)
            return
        }
        let scratch = workspace.floats(2 * T * gate.rows)
        if mode != .fp32, gate.takesBF16Tiles, up.takesBF16Tiles, down.takesBF16Tiles {
            swiGLUBF16(gate: gate, up: up, down: down, x, tokens: T, workspace: workspace, scratch: scratch, into: out)
        } else {
            swiGLU(gate: gate, up: up, down: down, x, tokens: T, scratch: scratch, into: out)
        }
    }
}

/// The SwiGLU MLP every FFN in the model is: `down(silu(gate(x)) · up(x))`; `scratch` holds 2·T·inter floats.
///
/// Gate, up and SiLU are fused: each chunk of intermediate rows runs both products over the same activations and
/// gates its own rows, one pool job instead of two products and a serial pass; then `down`. The weights are read
/// where they lie (a cache slot, the mapped checkpoint).
func swiGLU(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, tokens T: Int,
            scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
    let inter = gate.rows
    let g = scratch, u = scratch + T * inter  // [T, inter] each
    gate.splitRows { rows in
        gate.gemm(rows: rows, x, tokens: T, into: g)
        up.gemm(rows: rows, x, tokens: T, into: u)
        gateRows(rows, tokens: T, inter: inter, g, u)
    }
    down.apply(g, tokens: T, into: out)
}

/// `g ← silu(g) · u` on rows `rows` of every token (`g`, `u`: [T, inter]).
@inline(__always)
func gateRows(_ rows: Range<Int>, tokens T: Int, inter: Int, _ g: UnsafeMutablePointer<Float>, _ u: UnsafePointer<Float>) {
    for t in 0..<T {
        for i in rows { g[t * inter + i] = VectorOps.silu(g[t * inter + i]) * u[t * inter + i] }
    }
}

/// `swiGLU` with the activations quantised to int8 per 32 values before gate and up, and before down too when
/// `quantiseDown` (`ExpertActivations.q8GateUp`, `.q8`; int4 and GGML weights: `takesQ8`), or in two int8 parts
/// before down when `twoPartDown` (`.q8GateUpQ16Down`; interleaved int4: `takesQ16`); `scratch` holds 2·T·inter
/// floats and `Q8Activations.floatsNeeded` for max(cols, inter) (`Q16Activations.floatsNeeded` for inter with
/// `twoPartDown`).
func swiGLUQ8(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, tokens T: Int,
              quantiseDown: Bool = true, twoPartDown: Bool = false, scratch: UnsafeMutablePointer<Float>,
              into out: UnsafeMutablePointer<Float>) {
    let inter = gate.rows
    let g = scratch, u = scratch + T * inter, quantised = u + T * inter  // [T, inter] each, then the int8 copy
    let xq = Q8Activations(x, tokens: T, cols: gate.cols, memory: quantised, forms: gate.q8Forms.union(up.q8Forms))
    gate.splitRows { rows in
        gate.gemmQ8(rows: rows, xq, into: g)
        up.gemmQ8(rows: rows, xq, into: u)
        gateRows(rows, tokens: T, inter: inter, g, u)
    }
    if quantiseDown {
        down.applyQ8(Q8Activations(g, tokens: T, cols: inter, memory: quantised, forms: down.q8Forms), into: out)
    } else if twoPartDown {
        down.applyQ16(Q16Activations(g, tokens: T, cols: inter, memory: quantised), into: out)
    } else {
        down.apply(g, tokens: T, into: out)
    }
}

/// `swiGLU` for int8 resident matrices (`convert --resident int8`): x in two int8 parts once for gate and up (fused
/// with SiLU per chunk of rows), then silu(gate)·up in two parts for down. `scratch` holds 2·T·inter floats and
/// `Q16Activations.floatsNeeded` for max(cols, inter).
func swiGLUQ16(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, tokens T: Int,
               scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
    let inter = gate.rows
    let g = scratch, u = scratch + T * inter, quantised = u + T * inter  // [T, inter] each, then the two-part copy
    let xq = Q16Activations(x, tokens: T, cols: gate.cols, memory: quantised)
    gate.splitRows { rows in
        gate.gemmQ16(rows: rows, xq, into: g)
        up.gemmQ16(rows: rows, xq, into: u)
        gateRows(rows, tokens: T, inter: inter, g, u)
    }
    down.applyQ16(Q16Activations(g, tokens: T, cols: inter, memory: quantised), into: out)
}

/// Whether an expert takes the q8 path: asked for, and gate and up multiply Q8 activations (`takesQ8`).
func usesQ8(_ expert: ExpertWeights, _ activations: ExpertActivations) -> Bool {
    activations != .fp32 && expert.gate.takesQ8 && expert.up.takesQ8
}

/// Whether down's input is quantised too: `q8` asked for, and down multiplies Q8 activations.
func quantisesDown(_ expert: ExpertWeights, _ activations: ExpertActivations) -> Bool {
    activations == .q8 && expert.down.takesQ8
}

/// Whether an expert on the q8 path takes down's input in two int8 parts.
func splitsDown(_ expert: ExpertWeights, _ activations: ExpertActivations) -> Bool {
    activations == .q8GateUpQ16Down && expert.down.takesQ16
}

extension WeightMatrix {
    /// Whether `gemmQ8` multiplies this matrix: int4 (rows of whole groups of 32), or a GGML type with an integer
    /// kernel (`GGMLType.hasQ8Kernel`; its blocks are whole groups of 32).
    var takesQ8: Bool {
        switch encoding {
        case .int4g32, .int4g32x8: cols % 32 == 0
        case .ggml(let type): type.hasQ8Kernel && cols % 32 == 0
        default: false
        }
    }
}

/// An MoE layer for a batch of tokens: route each token, ask the provider for every expert any token chose
/// (each once), run each expert on the tokens that chose it, and combine.
///
/// Each (token, choice) result lands in its own slot, and slots are added to a token's sum in choice order (the
/// router returns each token's experts ascending) once every expert of their window is done, so the result is
/// bit-identical whatever order or thread the provider delivers experts in: a cache that serves hits first cannot
/// change it.
///
/// Memory is bounded by `chunk`, not by the prompt: the chosen experts are asked for in windows of ascending ids
/// whose slots fit in `chunk · k` rows (one expert alone when it has more users; its results then go straight to
/// the sums, a token having one slot per expert), each expert runs on at most `chunk` of its tokens at a time, and
/// the shared experts take `chunk` tokens at a time. Every expert is still asked for once per layer, and windows
/// go in ascending order, so a token's slots are added in the same order as with one window.
struct MoELayer {
    let config: ModelConfig
    let weights: MoEWeights
    let router: NoAuxRouter
    let layer: Int
    /// How routed experts multiply in this pass.
    let activations: ExpertActivations
    /// Tokens the per-token buffers are sized for (`KimiModel.prefillChunk`).
    let chunk: Int

    /// The layer's output for RMSNorm(x) with `norm`'s weights, into `out [T, H]`. The normalised rows are made
    /// where they are used (a chunk for the router and the shared experts, each expert's own tokens), so nothing of
    /// size T · H is held beside `x` and `out`; a row is normalised the same way wherever it is.
    func callAsFunction(_ x: UnsafePointer<Float>, norm: [Float], tokens T: Int, experts provider: any ExpertProviding,
                        scratch: ForwardScratch, into out: UnsafeMutablePointer<Float>) throws -> [Routing] {
        let H = config.hiddenSize, n = config.numRoutedExperts, k = config.expertsPerToken, C = max(1, chunk)
        let ws = scratch.workspace
        /// Runs `body(c0, rows, normed)` on chunks of C tokens with their normalised rows [rows, H].
        func normalisedChunks(_ body: (Int, Int, UnsafePointer<Float>) -> Void) {
            for c0 in stride(from: 0, to: T, by: C) {
                let m = min(C, T - c0), mark = ws.mark()
                let normed = ws.floats(m * H)
                for t in 0..<m { VectorOps.rmsNorm(x + (c0 + t) * H, weight: norm, eps: config.rmsNormEps, count: H, into: normed + t * H) }
                body(c0, m, normed)
                ws.release(to: mark)
            }
        }

        let logits = ws.floats(T * n)  // [T, n_routed]
        normalisedChunks { c0, m, normed in weights.router.apply(normed, tokens: m, into: logits + c0 * n) }
        for i in 0..<(T * n) { logits[i] = VectorOps.sigmoid(logits[i]) }
        let routings = (0..<T).map { t in router.route(scores: logits + t * n, bias: weights.correctionBias) }

        // Each chosen expert's users as `token · k + slot` (slot: the choice rank the result goes to), grouped by
        // expert in ascending order and by token within an expert: a counting sort into the workspace.
        let users = ws.ints(T * k), first = ws.ints(n + 1), next = ws.ints(n)  // first[e] ..< first[e + 1]
        for r in routings { for e in r.experts { first[e + 1] += 1 } }
        for e in 0..<n { first[e + 1] += first[e] }
        next.update(from: first, count: n)
        for (t, r) in routings.enumerated() {
            for (slot, e) in r.experts.enumerated() { users[next[e]] = t * k + slot; next[e] += 1 }
        }
        scratch.experts.removeAll(keepingCapacity: true)
        for e in 0..<n where first[e + 1] > first[e] { scratch.experts.append(e) }

        out.initialize(repeating: 0, count: T * H)
        let budget = max(1, chunk) * k  // slot rows a window holds
        let slots = ws.floats(min(T * k, budget) * H)  // [window's users, H], in `users` order
        var w0 = 0
        while w0 < scratch.experts.count {
            // The window: ascending experts while their users fit (at least one expert).
            var w1 = w0 + 1
            while w1 < scratch.experts.count, first[scratch.experts[w1] + 1] - first[scratch.experts[w0]] <= budget { w1 += 1 }
            // (One window, as for every prompt of up to `chunk` tokens and every decode step: the kept list itself.)
            let window = w0 == 0 && w1 == scratch.experts.count ? scratch.experts : Array(scratch.experts[w0..<w1])
            let base = first[window[0]]
            let direct = first[window.last! + 1] - base > budget  // one expert with more users than a window holds
            try provider.withExperts(layer: layer, window) { e, expert in
                for c0 in stride(from: first[e], to: first[e + 1], by: C) {
                    let list = UnsafeBufferPointer(start: users + c0, count: min(C, first[e + 1] - c0))
                    run(expert, on: list, x, norm: norm) { i, u, y in
                        let w = routings[u / k].weights[u % k]
                        if direct {
                            let o = out + (u / k) * H
                            for j in 0..<H {
                                let s = y[j] * w
                                o[j] += s
                            }
                        } else {
                            let dst = slots + (c0 - base + i) * H
                            for j in 0..<H { dst[j] = y[j] * w }
                        }
                    }
                }
            }
            if !direct {
                // Users go by expert ascending, so each token's slots of this window are added in choice order.
                for p in base..<first[window.last! + 1] {
                    let o = out + (users[p] / k) * H, s = slots + (p - base) * H
                    for j in 0..<H { o[j] += s[j] }
                }
            }
            w0 = w1
        }

        // out += shared(RMSNorm(x)), C tokens at a time.
        if let shared = weights.shared {
            normalisedChunks { c0, m, normed in
                let s = ws.floats(m * H)
                shared(normed, tokens: m, workspace: ws, into: s)
                let o = out + c0 * H
                for i in 0..<(m * H) { o[i] += s[i] }
            }
        }
        return routings
    }

    /// Runs `expert` on RMSNorm(x) of the tokens of `list` (users `token · k + slot`) and hands each user's output
    /// row [H] to `deliver(i, user, row)`; inputs, hidden and outputs live in the running thread's scratch (experts
    /// run in parallel).
    private func run(_ expert: ExpertWeights, on list: UnsafeBufferPointer<Int>, _ x: UnsafePointer<Float>, norm: [Float],
                     deliver: (Int, Int, UnsafePointer<Float>) -> Void) {
        guard !list.isEmpty else { return }
        let H = config.hiddenSize, k = config.expertsPerToken
        let m = list.count, inter = expert.gate.rows, q8 = usesQ8(expert, activations), split = q8 && splitsDown(expert, activations)
        let quantised = q8 ? max(Q8Activations.floatsNeeded(tokens: m, cols: max(H, inter)),
                                 split ? Q16Activations.floatsNeeded(tokens: m, cols: inter) : 0) : 0
        let xs = ThreadScratch.floats(2 * m * H + 2 * m * inter + quantised), ys = xs + m * H, hidden = ys + m * H
        for (i, u) in list.enumerated() {  // [m, H]
            VectorOps.rmsNorm(x + (u / k) * H, weight: norm, eps: config.rmsNormEps, count: H, into: xs + i * H)
        }
        if q8 {
            swiGLUQ8(gate: expert.gate, up: expert.up, down: expert.down, xs, tokens: m, quantiseDown: quantisesDown(expert, activations),
                     twoPartDown: split, scratch: hidden, into: ys)
        } else {
            swiGLU(gate: expert.gate, up: expert.up, down: expert.down, xs, tokens: m, scratch: hidden, into: ys)
        }
        for (i, u) in list.enumerated() { deliver(i, u, ys + i * H) }
    }
}
