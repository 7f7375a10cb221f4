import MoECheckpoint
import MoETensor

/// Multi-head latent attention in the absorbed form, for a batch of consecutive tokens.
///
/// Per token (`H` hidden, `n` heads, `r` kv_lora, `p` rope, `dn`/`dv` nope/v head dims):
///   q = q_b(RMSNorm₁ₑ₋₆(q_a(x)))            [n, dn + p]   (or q_proj(x))
///   c | k_pe = kv_a_proj_with_mqa(x)          [r] | [p]
///   c = RMSNorm₁ₑ₋₆(c) → cache;  k_pe = RoPE(k_pe) → cache
///   per head h:  q̃ = W_kᵀ·q_nope              [r]   (W_k: kv_b's key rows of head h, [dn, r])
///                s_j = (q̃·c_j + RoPE(q_pe)·k_pe_j) · scale,  j ≤ position
///                o_h = W_v·(Σ_j softmax(s)_j · c_j)   [dv]  (W_v: kv_b's value rows, [dv, r])
///   out = o_proj(concat_h o_h)                [H]
/// This equals transformers' `softmax(q·kᵀ)·v` with k and v expanded through kv_b, without ever forming them:
/// the cache holds r + p values per token instead of n·(dn + p + dv).
struct LatentAttention {
    let config: ModelConfig
    let weights: AttentionWeights
    let rope: RoPE
    let scale: Float
    let layer: Int

    /// Attends `x [T, H]` at positions `start ..< start + T`, appending to `cache`; writes `out [T, H]`.
    func callAsFunction(_ x: UnsafePointer<Float>, tokens T: Int, start: Int, cache: KVCache,
                        into out: UnsafeMutablePointer<Float>) {
        let c = config
        let (heads, dn, dp, dv, r) = (c.numHeads, c.qkNopeHeadDim, c.qkRopeHeadDim, c.vHeadDim, c.kvLoraRank)
        let qk = dn + dp

        let q = FloatBuffer(count: T * heads * qk)  // [T, n·(dn + dp)]
        switch weights.query {
        case .full(let proj):
            proj.apply(x, tokens: T, into: q.pointer)
        case .lowRank(let a, let norm, let b):
            let qa = FloatBuffer(count: T * a.rows)  // [T, q_lora]
            a.apply(x, tokens: T, into: qa.pointer)
            for t in 0..<T {
                let row = qa.row(t, width: a.rows)
                VectorOps.rmsNorm(row, weight: norm, eps: 1e-6, count: a.rows, into: row)
            }
            b.apply(qa.pointer, tokens: T, into: q.pointer)
        }

        let kv = FloatBuffer(count: T * (r + dp))  // [T, r + dp]: c | k_pe
        let angles = FloatBuffer(count: T * dp)    // [T, dp]: cos [dp/2] | sin [dp/2]
        weights.kvA.apply(x, tokens: T, into: kv.pointer)
        for t in 0..<T {
            let row = kv.row(t, width: r + dp)
            let cs = angles.row(t, width: dp)
            rope.angles(position: start + t, cos: cs, sin: cs + dp / 2)
            VectorOps.rmsNorm(row, weight: weights.kvANorm, eps: 1e-6, count: r, into: cache.latent(layer, start + t))
            let kPe = cache.ropeKey(layer, start + t)
            kPe.update(from: row + r, count: dp)
            rope.rotate(kPe, cos: cs, sin: cs + dp / 2)
        }

        let attended = FloatBuffer(count: T * heads * dv)  // [T, n·dv]
        let kvB = weights.kvB
        parallelFor(T * heads) { job in
            let t = job / heads, h = job % heads
            let length = start + t + 1
            let qHead = q.pointer + t * heads * qk + h * qk
            let cs = angles.row(t, width: dp)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * r + length) { scratch in
                let qLatent = scratch.baseAddress!, context = qLatent + r, scores = context + r
                qLatent.initialize(repeating: 0, count: 2 * r)
                kvB.accumulateRows(from: h * (dn + dv), count: dn, weights: qHead, into: qLatent)  // q̃ = W_kᵀ q_nope
                let qPe = qHead + dn
                rope.rotate(qPe, cos: cs, sin: cs + dp / 2)
                for j in 0..<length {
                    scores[j] = (VectorOps.dot(qLatent, cache.latent(layer, j), count: r)
                        + VectorOps.dot(qPe, cache.ropeKey(layer, j), count: dp)) * scale
                }
                VectorOps.softmax(scores, count: length)
                for j in 0..<length { VectorOps.axpy(scores[j], cache.latent(layer, j), context, count: r) }
                let oHead = attended.pointer + t * heads * dv + h * dv
                for i in 0..<dv { oHead[i] = kvB.dot(row: h * (dn + dv) + dn + i, context) }  // o_h = W_v · context
            }
        }
        weights.output.apply(attended.pointer, tokens: T, into: out)
    }
}
