import MoETensor
import Testing

@Suite struct WorkspaceTests {
    /// A pass larger than the slab still gets its memory (overflow chunks); the next reset makes one slab of the
    /// high-water size, and passes up to that size then reuse it: nothing new is taken.
    @Test func growsToTheLargestPassThenReuses() {
        let ws = Workspace(bytes: 256)
        ws.reset()
        let a = ws.floats(100), b = ws.floats(1000)  // 400 + 4000 bytes: b overflows
        for i in 0..<100 { a[i] = 1 }
        for i in 0..<1000 { b[i] = 2 }
        _ = ws.ints(10)
        ws.reset()
        let high = ws.bytes
        #expect(high == 448 + 4032 + 128)
        for _ in 0..<3 {
            ws.reset()
            let c = ws.floats(100), d = ws.floats(1000)
            #expect((0..<100).allSatisfy { c[$0] == 0 } && (0..<1000).allSatisfy { d[$0] == 0 }, "handed out zeroed")
            #expect(ws.bytes == high)
            _ = ws.ints(10)
        }
    }

    /// What a stage releases is the next stage's: a pass of many stages needs only its largest stage.
    @Test func releasedMemoryIsReused() {
        let ws = Workspace(bytes: 64)
        for _ in 0..<2 {
            ws.reset()
            let base = ws.floats(16)
            for _ in 0..<5 {
                let stage = ws.mark()
                _ = ws.floats(1000)
                _ = ws.floats(500)
                ws.release(to: stage)
            }
            _ = base
        }
        ws.reset()
        #expect(ws.bytes == 64 + 4032 + 2048, "the base and one stage, not five")
        let stage = ws.mark()
        let a = ws.floats(16), b = ws.floats(1000)
        ws.release(to: stage)
        #expect(ws.floats(16) == a && ws.floats(1000) == b)
    }

    @Test func allocationsAreAlignedAndDisjoint() {
        let ws = Workspace(bytes: 4096)
        ws.reset()
        let a = ws.floats(3), b = ws.floats(5), c = ws.ints(2)
        for p in [UnsafeRawPointer(a), UnsafeRawPointer(b), UnsafeRawPointer(c)] { #expect(Int(bitPattern: p) % 64 == 0) }
        #expect(UnsafeRawPointer(b) - UnsafeRawPointer(a) >= 12 && UnsafeRawPointer(c) - UnsafeRawPointer(b) >= 20)
    }

    @Test func threadScratchIsKeptBetweenCalls() {
        let first = ThreadScratch.floats(10_000)
        #expect(ThreadScratch.floats(10_000) == first && ThreadScratch.floats(5) == first)
        first[9_999] = 3  // all of it is usable
    }
}
