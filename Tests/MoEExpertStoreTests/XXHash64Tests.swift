import Testing
@testable import MoEExpertStore

@Suite struct XXHash64Tests {
    /// Values from Python's `xxhash` package (xxhash.xxh64(data).hexdigest()).
    @Test func matchesTheReferenceImplementation() {
        #expect(XXHash64.hex(XXHash64.hash([])) == "ef46db3751d8e999")
        #expect(XXHash64.hex(XXHash64.hash(Array("a".utf8))) == "d24ec4f1a98c6e5b")
        #expect(XXHash64.hex(XXHash64.hash(Array("abc".utf8))) == "44bc2cf5ad770999")
        #expect(XXHash64.hex(XXHash64.hash(Array("0123456789abcdef0123456789abcdefXYZ".utf8))) == "654f6a2b39e4d8c1")
        let bytes = (0..<768).map { UInt8($0 % 256) }
        #expect(XXHash64.hex(XXHash64.hash(bytes)) == "8e03c838c596036f")
    }

    @Test func streamingEqualsOneShotForAnySplit() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        let whole = XXHash64.hash(bytes)
        for split in [[1000], [1, 999], [31, 1, 968], [7, 25, 32, 33, 903], [500, 500], [3, 3, 3, 991]] {
            var s = XXHash64.Streaming()
            var at = 0
            bytes.withUnsafeBytes { b in
                for n in split {
                    s.update(b.baseAddress! + at, count: n)
                    at += n
                }
            }
            #expect(s.finish() == whole, "split \(split)")
        }
    }
}
