import Testing
@testable import MoETensor

@Suite struct ConversionTests {
    @Test func bf16RoundTripAndRounding() {
        #expect(bf16ToFloat(0x3F80) == 1)
        #expect(bf16ToFloat(0xC000) == -2)
        #expect(floatToBF16(1) == 0x3F80)
        // 1 + 2^-8 lies exactly between two bf16 values: ties go to even (0x3F80).
        #expect(floatToBF16(1 + 0x1p-8) == 0x3F80)
        #expect(floatToBF16(1 + 0x1p-8 + 0x1p-12) == 0x3F81)
        #expect(bf16ToFloat(floatToBF16(.nan)).isNaN)
    }

    @Test func f16Values() {
        #expect(f16ToFloat(0x3C00) == 1)
        #expect(f16ToFloat(0xC000) == -2)
        #expect(f16ToFloat(0x0001) == 0x1p-24)        // smallest subnormal
        #expect(f16ToFloat(0x03FF) == 1023 * 0x1p-24)  // largest subnormal
        #expect(f16ToFloat(0x7BFF) == 65504)           // largest finite
        #expect(f16ToFloat(0x7C00) == .infinity)
        #expect(f16ToFloat(0x7E00).isNaN)
        #expect(f16ToFloat(0x8000).sign == .minus)
        // Every finite half converts as Swift's own Float16 does.
        #if arch(x86_64) || arch(arm64)
        for bits in UInt16(0)...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let got = f16ToFloat(bits)
            #expect(got == expected || (got.isNaN && expected.isNaN), "bits \(bits)")
        }
        #endif
    }

    @Test func e4m3fnValues() {
        #expect(e4m3ToFloat(0x38) == 1)          // exponent 7, mantissa 0
        #expect(e4m3ToFloat(0x7E) == 448)        // largest finite
        #expect(e4m3ToFloat(0xFE) == -448)
        #expect(e4m3ToFloat(0x7F).isNaN)         // no infinities: 0x7F and 0xFF are NaN
        #expect(e4m3ToFloat(0xFF).isNaN)
        #expect(e4m3ToFloat(0x01) == 0x1p-9)     // smallest subnormal: 2^-6 · 1/8
        #expect(e4m3ToFloat(0x07) == 7 * 0x1p-9)
        #expect(e4m3ToFloat(0x08) == 0x1p-6)     // smallest normal
        #expect(e4m3ToFloat(0x00) == 0)
        #expect(e4m3ToFloat(0x80) == 0 && e4m3ToFloat(0x80).sign == .minus)
        #expect(E4M3Table.values.filter(\.isNaN).count == 2)
    }
}
