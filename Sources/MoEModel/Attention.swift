import MoECheckpoint
import MoETensor

/// Multi-head latent attention in the absorbed form, for a batch of consecutive tokens.
///
/// Per token (`H` hidden, `n` heads, `r` kv_lora, `p` rope, `dn`/`dv` nope/v head dims):
///   q = q_b(RMSNorm₁ₑ₋₆(q_a(x)))            [n, dn + p]   (or q_proj(x))
///   c | k_pe = kv_a_proj_with_mqa(x)          [r] | [p]
///   c = RMSNorm₁ₑ₋₆(c) → cache;  k_pe = RoPE(k_pe) → cache
///   per head h:  q̂ = W_kᵀ·q_nope | RoPE(q_pe)   [r + p]  (W_k: kv_b's key rows of head h, [dn, r])
///                s_j = q̂ · (c_j | k_pe_j) · scale,  j ≤ position
///                o_h = W_v·(Σ_j softmax(s)_j · c_j)   [dv]  (W_v: kv_b's value rows, [dv, r])
///   out = o_proj(concat_h o_h)                [H]
/// This equals transformers' `softmax(q·kᵀ)·v` with k and v expanded through kv_b, without ever forming them:
/// the cache holds r + p values per token instead of n·(dn + p + dv).
///
/// The prompt is attended in blocks: per head and block of `queryBlock` tokens, the scores against every cached
/// row up to the block's last position are one matrix product (the kernels' f32 or bf16 tiles, as the cache
/// stores its rows; each row read once for the block), and the context sums walk the cached rows once for the block. A token's operations are the
/// same in a block as alone (the tiles' guarantee; the context adds keys in position order), so decode through
/// the cache reproduces a whole-prompt pass bit for bit.
struct LatentAttention {
    let config: ModelConfig
    let weights: AttentionWeights
    let rope: RoPE
    let scale: Float
    let layer: Int

    /// Query tokens attended together: their scores are one kernel call over the cached rows.
    static let queryBlock = 16

    /// A half-precision layer is widened for a prompt while it takes at most this many floats (64 MB: 29,000
    /// positions at Kimi K2's 576 values); beyond, the prompt reads the stored rows as decode does (the same bits,
    /// somewhat slower), so attention's scratch stays bounded whatever the context.
    static let maxWidenedValues = 16 << 20

    /// Attends `x [T, H]` at positions `start ..< start + T` of one sequence, appending to `cache`; writes
    /// `out [T, H]`.
    func callAsFunction(_ x: UnsafePointer<Float>, tokens T: Int, start: Int, cache: KVCache, workspace ws: Workspace,
                        into out: UnsafeMutablePointer<Float>) {
        attend(x, tokens: T, caches: [cache], start: start, workspace: ws, into: out)
    }

    /// Attends one token of each of `caches.count` sequences (`x [B, H]`, token b at position `caches[b].count`,
    /// appended to `caches[b]`): the decode step of several sequences at once. The projections take all B
    /// tokens in one product; each token attends its own cache exactly as it would alone (a block of one query).
    func callAsFunction(_ x: UnsafePointer<Float>, caches: [KVCache], workspace ws: Workspace, into out: UnsafeMutablePointer<Float>) {
        attend(x, tokens: caches.count, caches: caches, start: nil, workspace: ws, into: out)
    }

    /// One sequence (`caches` [one], positions `start ..< start + T`) or one token per sequence (`start` nil,
    /// token t at `caches[t].count`).
    private func attend(_ x: UnsafePointer<Float>, tokens T: Int, caches: [KVCache], start: Int?, workspace ws: Workspace,
                        into out: UnsafeMutablePointer<Float>) {
        let c = config
        let (heads, dn, dp, dv, r) = (c.numHeads, c.qkNopeHeadDim, c.qkRopeHeadDim, c.vHeadDim, c.kvLoraRank)
        let qk = dn + dp
        /// Token t's sequence and position.
        func place(_ t: Int) -> (cache: KVCache, position: Int) {
            if let start { return (caches[0], start + t) }
            return (caches[t], caches[t].count)
        }

        let q = ws.floats(T * heads * qk)  // [T, n·(dn + dp)]
        switch weights.query {
        case .full(let proj):
            proj.apply(x, tokens: T, into: q, workspace: ws)
        case .lowRank(let a, let norm, let b):
            let qa = ws.floats(T * a.rows)  // [T, q_lora]
            a.apply(x, tokens: T, into: qa, workspace: ws)
            for t in 0..<T {
                let row = qa + t * a.rows
                VectorOps.rmsNorm(row, weight: norm, eps: 1e-6, count: a.rows, into: row)
            }
            b.apply(qa, tokens: T, into: q, workspace: ws)
        }

        let kv = ws.floats(T * (r + dp))  // [T, r + dp]: c | k_pe
        let angles = ws.floats(T * dp)    // [T, dp]: cos [dp/2] | sin [dp/2]
        weights.kvA.apply(x, tokens: T, into: kv, workspace: ws)
        for t in 0..<T {
            let row = kv + t * (r + dp)
            let cs = angles + t * dp
            let (cache, position) = place(t)
            rope.angles(position: position, cos: cs, sin: cs + dp / 2)
            VectorOps.rmsNorm(row, weight: weights.kvANorm, eps: 1e-6, count: r, into: row)
            rope.rotate(row + r, cos: cs, sin: cs + dp / 2)
            cache.store(layer, position, row: row)  // rounded to the cache's precision once, here
        }

        let attended = ws.floats(T * heads * dv)  // [T, n·dv]
        let width = r + dp
        guard let start else {
            // One query per sequence, against that sequence's own rows as stored (decode's path).
            parallelFor(heads * T) { job in
                let h = job / T, t = job % T
                let (cache, position) = place(t)
                attendBlock(head: h, q: q, angles: angles, firstToken: t, count: 1, firstPosition: position,
                            rows: cache.matrix(layer, length: position + 1), into: attended)
            }
            weights.output.apply(attended, tokens: T, into: out, workspace: ws)
            return
        }
        let cache = caches[0]
        let blocks = (T + Self.queryBlock - 1) / Self.queryBlock
        // The cached rows up to the last token, as the kernels read them: a half-precision cache is widened once
        // here for a prompt (every head and block reads all of it; decode, and a context beyond
        // `maxWidenedValues`, read the stored rows directly).
        let rows = start + T
        var cached = cache.matrix(layer, length: rows)  // [rows, r + p]
        if cache.precision != .f32 && T > 1 && rows * width <= Self.maxWidenedValues {
            let wide = ws.floats(rows * width)
            cache.widen(layer, length: rows, into: wide)
            cached = WeightMatrix(rows: rows, cols: width, data: UnsafeRawPointer(wide), encoding: .f32, owners: [])
        }
        parallelFor(heads * blocks) { job in
            let h = job / blocks, t0 = (job % blocks) * Self.queryBlock
            let tb = min(Self.queryBlock, T - t0)
            attendBlock(head: h, q: q, angles: angles, firstToken: t0, count: tb, firstPosition: start + t0,
                        rows: cached.rows(0..<(start + t0 + tb))!, into: attended)
        }
        weights.output.apply(attended, tokens: T, into: out, workspace: ws)
    }

    /// Head `h` for tokens `firstToken ..< firstToken + tb` of the pass (`q [T, n·(dn + dp)]`, their rope
    /// `angles`), at consecutive positions from `firstPosition` of one sequence whose cached rows up to the last of
    /// them are `rows` [length, r + p]: writes their attended values into `attended [T, n·dv]`.
    private func attendBlock(head h: Int, q: UnsafeMutablePointer<Float>, angles: UnsafeMutablePointer<Float>, firstToken t0: Int,
                             count tb: Int, firstPosition: Int, rows keys: WeightMatrix, into attended: UnsafeMutablePointer<Float>) {
        let c = config
        let (heads, dn, dp, dv, r) = (c.numHeads, c.qkNopeHeadDim, c.qkRopeHeadDim, c.vHeadDim, c.kvLoraRank)
        let qk = dn + dp, width = r + dp
        let kvB = weights.kvB
        let length = keys.rows  // cached rows the block's last token sees
        precondition(length == firstPosition + tb)
        let queries = ThreadScratch.floats(tb * (width + length + r + dv))  // [tb, r + p]: q̂ per token
        let scores = queries + tb * width            // [tb, length]
        let context = scores + tb * length           // [tb, r]
        let values = context + tb * r                // [tb, dv]
        for i in 0..<tb { (queries + i * width).initialize(repeating: 0, count: r) }
        // q̂_nope = W_kᵀ q_nope for every token of the block: the head's key rows of kv_b [dn, r].
        kvB.accumulateRows(from: h * (dn + dv), count: dn, weights: q + t0 * heads * qk + h * qk, stride: heads * qk,
                           tokens: tb, into: queries, stride: width, columns: r)
        for i in 0..<tb {
            let t = t0 + i
            let qHead = q + t * heads * qk, qHat = queries + i * width
            (qHat + r).update(from: qHead + h * qk + dn, count: dp)
            let cs = angles + t * dp
            rope.rotate(qHat + r, cos: cs, sin: cs + dp / 2)
        }
        keys.gemm(rows: 0..<length, queries, tokens: tb, into: scores)  // scores[i, j] = q̂_i · row_j
        for i in 0..<tb {
            let row = scores + i * length, visible = firstPosition + i + 1
            for j in 0..<visible { row[j] *= scale }
            VectorOps.softmax(row, count: visible)
            for j in visible..<length { row[j] = 0 }  // rows a token does not see add exactly nothing below
        }
        // context_i = Σ_j p_ij · c_j: every cached c_j once for the block (the first r columns of the cache rows).
        context.initialize(repeating: 0, count: tb * r)
        keys.accumulateRows(from: 0, count: length, weights: scores, stride: length, tokens: tb, into: context, stride: r,
                            columns: r)
        // W_v · context: the head's value rows of kv_b [dv, r] over the block's contexts, by the matrix kernels
        // where the encoding allows a view of those rows.
        let valueRows = (h * (dn + dv) + dn)..<(h * (dn + dv) + dn + dv)
        if let wv = kvB.rows(valueRows) {
            wv.gemm(rows: 0..<dv, context, tokens: tb, into: values)
            for i in 0..<tb { (attended + (t0 + i) * heads * dv + h * dv).update(from: values + i * dv, count: dv) }
        } else {
            for i in 0..<tb {
                let oHead = attended + (t0 + i) * heads * dv + h * dv
                for (d, row) in valueRows.enumerated() { oHead[d] = kvB.dot(row: row, context + i * r) }
            }
        }
    }
}
