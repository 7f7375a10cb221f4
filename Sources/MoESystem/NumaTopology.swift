import CMoEShims
#if canImport(Glibc)
import Glibc
#endif

/// The machine's NUMA nodes: their CPUs and memory. Read from libnuma, or made up for tests (`fake`), so the
/// placement and per-node budgets can be tested on a one-node machine.
public struct NumaTopology: Sendable, Equatable {
    public struct Node: Sendable, Equatable {
        public var id: Int
        public var cpus: [Int]
        public var memoryBytes: Int
        public var freeBytes: Int

        public init(id: Int, cpus: [Int], memoryBytes: Int, freeBytes: Int) {
            self.id = id
            self.cpus = cpus
            self.memoryBytes = memoryBytes
            self.freeBytes = freeBytes
        }
    }

    public var nodes: [Node]
    /// False for a fake topology: memory comes from the ordinary allocator and threads are not pinned.
    public var isReal: Bool

    public init(nodes: [Node], isReal: Bool) {
        self.nodes = nodes
        self.isReal = isReal
    }

    /// The topology libnuma reports; without NUMA support, one node holding every CPU and all memory.
    public static func detect() -> NumaTopology {
        let maxNode = Int(cmoe_numa_max_node())
        if maxNode >= 0 {
            var nodes: [Node] = []
            for id in 0...maxNode {
                var total: Int64 = 0, free: Int64 = 0
                guard cmoe_numa_node_memory(Int32(id), &total, &free) == 0, total > 0 else { continue }
                var cpus = [Int32](repeating: 0, count: 4096)
                let n = Int(cmoe_numa_node_cpus(Int32(id), &cpus, 4096))
                nodes.append(Node(id: id, cpus: n > 0 ? cpus.prefix(min(n, 4096)).map(Int.init) : [],
                                  memoryBytes: Int(total), freeBytes: Int(free)))
            }
            if !nodes.isEmpty { return NumaTopology(nodes: nodes, isReal: true) }
        }
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let pages = Int(sysconf(Int32(_SC_PHYS_PAGES))), avail = Int(sysconf(Int32(_SC_AVPHYS_PAGES)))
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        return NumaTopology(nodes: [Node(id: 0, cpus: Array(0..<max(1, cpus)), memoryBytes: pages * page, freeBytes: avail * page)],
                            isReal: false)
    }

    /// `count` equal nodes splitting `cpus` CPUs and `memory` bytes: for tests of multi-node behaviour.
    public static func fake(nodes count: Int, cpusPerNode: Int = 1, memoryPerNode: Int = 64 << 30) -> NumaTopology {
        NumaTopology(nodes: (0..<count).map {
            Node(id: $0, cpus: Array(($0 * cpusPerNode)..<(($0 + 1) * cpusPerNode)), memoryBytes: memoryPerNode, freeBytes: memoryPerNode)
        }, isReal: false)
    }
}

/// Memory that lives on one NUMA node (`numa_alloc_onnode`), or ordinary page-aligned memory when the
/// topology is fake or libnuma refuses. Zero-filled by the kernel, so pages are only committed when touched.
///
/// Asks for transparent huge pages (`MADV_HUGEPAGE`): an expert cache's slab is faulted in all at once before
/// io_uring registers it (`Prefault`, every core), and 2 MB pages make that start-up faster (a 19 GB cache here:
/// 9–23 s with the advice, 23–32 s without, over two runs each, on one thread) and spare the TLB on every expert
/// read. Advice only: ignored where THP is off.
/// Sendable: every field is a `let`; who writes the bytes, and when, is decided by the expert cache's slot bookkeeping.
public final class NodeMemory: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int
    public let node: Int
    /// Whether the memory really is bound to `node`.
    public let bound: Bool

    public init(bytes: Int, node: Int, topology: NumaTopology) throws(SystemError) {
        count = max(bytes, 4096)
        self.node = node
        if topology.isReal, let p = cmoe_numa_alloc_onnode(count, Int32(node)) {
            _ = madvise(p, count, MADV_HUGEPAGE)
            pointer = p
            bound = true
            return
        }
        let p = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemError(call: "mmap", path: "(\(bytes) bytes for node \(node))", errno: lastErrno()) }
        _ = madvise(p, count, MADV_HUGEPAGE)
        pointer = p
        bound = false
    }

    deinit {
        if bound { cmoe_numa_free(pointer, count) } else { munmap(pointer, count) }
    }
}

public enum ThreadAffinity {
    /// Names the calling thread for ps/top (truncated to 15 characters by the kernel).
    public static func nameCurrentThread(_ name: String) { cmoe_set_thread_name(String(name.prefix(15))) }

    /// Pins the calling thread to `cpus`; returns false (and leaves the thread free) when the kernel refuses.
    @discardableResult
    public static func pinCurrentThread(to cpus: [Int]) -> Bool {
        guard !cpus.isEmpty else { return false }
        let ids = cpus.map(Int32.init)
        return ids.withUnsafeBufferPointer { cmoe_pin_current_thread($0.baseAddress, Int32($0.count)) } == 0
    }
}
