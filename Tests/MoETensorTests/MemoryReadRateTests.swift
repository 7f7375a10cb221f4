import Testing
@testable import MoETensor

/// `moestream bench memory`'s probe reads every byte it times: its sums are checked against the words written.
@Suite struct MemoryReadRateTests {
    @Test func sumAddsEveryWord() {
        let count = 5 * MemoryReadRate.step
        let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
        defer { p.deallocate() }
        let words = p.bindMemory(to: UInt64.self, capacity: count / 8)
        var expected: UInt64 = 0
        for i in 0..<(count / 8) {
            words[i] = UInt64(i) &* 0x9E37_79B9_7F4A_7C15  // wraps: the sum must wrap the same way
            expected &+= words[i]
        }
        #expect(MemoryReadRate.sum(UnsafeRawPointer(p), count: count) == expected)
        words[count / 8 - 1] &+= 1  // the last word counts too
        #expect(MemoryReadRate.sum(UnsafeRawPointer(p), count: count) == expected &+ 1)
    }

    @Test(arguments: [1, 3]) func everyThreadReadsItsWholePart(threads: Int) {
        let r = MemoryReadRate.measure(bytes: 3 << 20, threads: threads, rounds: 2)
        // Word i holds i: the parts together are words 0 ..< n, whose sum is n(n − 1)/2.
        let n = UInt64((3 << 20) / threads / MemoryReadRate.step * MemoryReadRate.step * threads / 8)
        #expect(r.checksum == n * (n - 1) / 2)
        #expect(r.threads == threads)
        #expect(r.bytesPerSecond > 0 && r.bytesPerSecond.isFinite)
    }
}
