import Foundation

/// Element-wise and normalisation steps of the forward pass, all in fp32.
public enum VectorOps {
    /// `out = x · rsqrt(mean(x²) + eps) · w` over `n` values (RMSNorm, computed in fp32 as transformers does).
    @inline(__always)
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight w: [Float], eps: Float,
                               count n: Int, into out: UnsafeMutablePointer<Float>) {
        var ss: Float = 0
        for i in 0..<n { ss += x[i] * x[i] }
        let scale = 1 / (ss / Float(n) + eps).squareRoot()
        w.withUnsafeBufferPointer { w in
            for i in 0..<n { out[i] = w[i] * (x[i] * scale) }
        }
    }

    /// SiLU(x) = x · σ(x).
    @inline(__always)
    public static func silu(_ x: Float) -> Float { x / (1 + Foundation.exp(-x)) }

    @inline(__always)
    public static func sigmoid(_ x: Float) -> Float { 1 / (1 + Foundation.exp(-x)) }

    /// In-place softmax over `n` values, max-subtracted.
    @inline(__always)
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s: Float = 0
        for i in 0..<n { x[i] = Foundation.exp(x[i] - m); s += x[i] }
        let inv = 1 / s
        for i in 0..<n { x[i] *= inv }
    }

    /// `Σ a[i] · b[i]` with fp32 SIMD accumulation.
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count n: Int) -> Float {
        dotF32(a, b, n)
    }

    /// `y += alpha · x`.
    @inline(__always)
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { y[i] += alpha * x[i] }
    }
}
