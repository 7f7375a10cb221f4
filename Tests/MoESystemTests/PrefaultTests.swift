import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import MoESystem

/// The expert cache's slab is committed by several threads before io_uring registers it: every page ends up
/// resident, and bytes already there are kept.
@Suite struct PrefaultTests {
    /// Resident 4 KB pages of `[p, p + count)` (mincore).
    func residentPages(_ p: UnsafeMutableRawPointer, _ count: Int) -> Int {
        var vec = [UInt8](repeating: 0, count: (count + 4095) / 4096)
        #expect(mincore(p, count, &vec) == 0)
        return vec.filter { $0 & 1 != 0 }.count
    }

    @Test(arguments: [true, false]) func everyPageOfEveryRegionIsCommittedAndKept(advise: Bool) throws {
        let count = 10 << 20
        let p = try #require(mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(p != MAP_FAILED)
        defer { munmap(p, count) }
        _ = madvise(p, count, MADV_NOHUGEPAGE)  // 4 KB pages, so that mincore counts what was faulted
        p.storeBytes(of: 0xABCD_EF01, toByteOffset: 4096 * 7 + 3, as: UInt32.self)
        #expect(residentPages(p, count) <= 2)
        // Unequal regions, one not starting on a page (the cache's 1 GiB pieces need not).
        let cuts = [0, 3 << 20, (3 << 20) + 100, 7 << 20, count]
        let regions = (0..<4).map { UnsafeMutableRawBufferPointer(start: p + cuts[$0], count: cuts[$0 + 1] - cuts[$0]) }
        #expect(Prefault.populate(regions, threads: 3, advise: advise) == 3)
        #expect(residentPages(p, count) == count / 4096)
        #expect(p.loadUnaligned(fromByteOffset: 4096 * 7 + 3, as: UInt32.self) == 0xABCD_EF01)
        #expect(Prefault.populate([], threads: 4) == 0)
    }
}
