import Testing
@testable import MoETensor

/// The group quantisers the converter uses: round-to-nearest-even against the group's scale, and total over every
/// Float (a damaged checkpoint's NaN, an infinity, or a scale too small to invert must not trap).
@Suite struct GroupQuantizationTests {
    /// Nibbles (q + 8, Q4_0 order) and bf16 scales of one row.
    func int4(_ row: [Float]) -> (nibbles: [UInt8], scales: [UInt16]) {
        var packed = [UInt8](repeating: 0, count: row.count / 2), scales = [UInt16](repeating: 0, count: row.count / 32)
        scales.withUnsafeMutableBytes { s in
            GroupQuantization.quantizeInt4(row: row, cols: row.count, scaleType: .bf16, packed: &packed, scales: s.baseAddress!)
        }
        var nibbles: [UInt8] = []  // element order: each group's 16 low nibbles, then its 16 high ones
        for g in 0..<(row.count / 32) {
            for j in 0..<16 { nibbles.append(packed[g * 16 + j] & 0xF) }
            for j in 0..<16 { nibbles.append(packed[g * 16 + j] >> 4) }
        }
        return (nibbles, scales)
    }

    @Test func finiteRowsQuantiseToNearestLevel() {
        var rng = SplitMix(seed: 3)
        let row = (0..<256).map { _ in Float(rng.unit() * 2 - 1) * 0.05 }
        let (nibbles, scales) = int4(row)
        for (i, w) in row.enumerated() {
            let scale = bf16ToFloat(scales[i / 32])
            let expected = min(max((w * (1 / scale)).rounded(.toNearestOrEven), -8), 7)
            #expect(Float(nibbles[i]) - 8 == expected, "element \(i)")
        }
        var values = [Int8](repeating: 0, count: row.count), f32 = [Float](repeating: 0, count: row.count / 32)
        f32.withUnsafeMutableBytes { GroupQuantization.quantizeInt8(row: row, cols: row.count, scaleType: .f32, values: &values, scales: $0.baseAddress!) }
        for (i, w) in row.enumerated() {
            #expect(Float(values[i]) == min(max((w * (1 / f32[i / 32])).rounded(.toNearestOrEven), -127), 127), "element \(i)")
        }
    }

    @Test func nonFiniteValuesAndTinyScalesDoNotTrap() {
        var row = [Float](repeating: 0.5, count: 128)
        row[3] = .nan                                  // group 0: amax NaN-tainted
        row[40] = .infinity                            // group 1: scale infinite, 1/scale 0, ∞ · 0 = NaN
        for j in 64..<96 { row[j] = 0 }
        row[70] = 7e-39                                // group 2: a subnormal scale whose inverse is infinite, zeros beside it
        row[100] = -.infinity                          // group 3
        let (nibbles, scales) = int4(row)
        #expect((1 / bf16ToFloat(scales[2])).isInfinite, "the case under test: 0 · (1/scale) is NaN")
        #expect(nibbles.count == 128)
        #expect(nibbles[64] == 8, "a zero stays zero beside a scale too small to invert")
        var values = [Int8](repeating: 0, count: row.count), f32 = [Float](repeating: 0, count: row.count / 32)
        f32.withUnsafeMutableBytes { GroupQuantization.quantizeInt8(row: row, cols: row.count, scaleType: .f32, values: &values, scales: $0.baseAddress!) }
        #expect(values[64] == 0)
        #expect(GroupQuantization.firstNonFinite(row, count: row.count) == 3)
        #expect(GroupQuantization.firstNonFinite(Array(row[64..<96]), count: 32) == nil)
    }
}
