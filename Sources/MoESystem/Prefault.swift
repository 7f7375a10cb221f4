import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Commits fresh anonymous memory with several threads at once.
///
/// Why: registering an expert cache's slab with io_uring pins every page of it, and the kernel faults in (and
/// clears) the pages it pins on the registering thread alone — a 19 GB cache took ~70 s before the first token
/// on a 2-core VM whose page cache was full of model files, and on a workstation with `--cache 96G` one thread
/// clearing 96 GB is the whole start-up. Faulting the pages first, one region per thread, spreads the clearing
/// over the cores; the registration then only pins pages that are present.
public enum Prefault {
    /// `MADV_POPULATE_WRITE` (Linux 5.14): faults pages in writable without touching their bytes from user space.
    private static let populateWrite: Int32 = 23

    /// Commits every page of `regions` using up to `threads` threads, each taking whole regions in turn.
    /// The regions must be anonymous memory nobody else writes meanwhile: where the kernel lacks
    /// `MADV_POPULATE_WRITE`, one byte per page is read and written back. Returns the threads it used.
    @discardableResult
    public static func populate(_ regions: [UnsafeMutableRawBufferPointer], threads: Int) -> Int {
        populate(regions, threads: threads, advise: true)
    }

    /// `advise: false` takes the older kernels' path (a write per page), for tests.
    static func populate(_ regions: [UnsafeMutableRawBufferPointer], threads: Int, advise: Bool) -> Int {
        nonisolated(unsafe) let work = regions.filter { $0.baseAddress != nil && $0.count > 0 }
        guard !work.isEmpty else { return 0 }
        let n = max(1, min(threads, work.count))
        if n == 1 {
            for r in work { commit(r, advise: advise) }
            return 1
        }
        let next = NextIndex()
        let group = DispatchGroup()
        for _ in 0..<n {
            group.enter()
            let t = Thread {
                while let i = next.take(below: work.count) { commit(work[i], advise: advise) }
                group.leave()
            }
            t.name = "moe-prefault"
            t.start()
        }
        group.wait()
        return n
    }

    /// How many threads `populate` should use on this machine: the CPUs this process may run on, at most 16
    /// (clearing memory saturates a socket's bandwidth well before that).
    public static var defaultThreads: Int { max(1, min(16, ProcessInfo.processInfo.activeProcessorCount)) }

    private static func commit(_ r: UnsafeMutableRawBufferPointer, advise: Bool) {
        guard let base = r.baseAddress else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        // madvise wants a page-aligned start; the regions are slices of a page-aligned slab, but need not start on
        // a page themselves.
        let start = Int(bitPattern: base) & ~(page - 1)
        let end = Int(bitPattern: base) + r.count
        if advise && madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, populateWrite) == 0 { return }
        // An older kernel: a write per page faults it in (writing back the byte read changes nothing).
        var p = Int(bitPattern: base)
        while p < end {
            let byte = UnsafeMutableRawPointer(bitPattern: p)!
            byte.storeBytes(of: byte.load(as: UInt8.self), as: UInt8.self)
            p = (p & ~(page - 1)) + page
        }
    }

    /// The index of the next region to commit, shared by the threads.
    private final class NextIndex: @unchecked Sendable {
        private var value = 0
        private var lock = pthread_mutex_t()
        init() { pthread_mutex_init(&lock, nil) }
        deinit { pthread_mutex_destroy(&lock) }
        func take(below limit: Int) -> Int? {
            pthread_mutex_lock(&lock)
            defer { pthread_mutex_unlock(&lock) }
            guard value < limit else { return nil }
            value += 1
            return value - 1
        }
    }
}
