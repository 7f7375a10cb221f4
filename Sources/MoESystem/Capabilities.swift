import CMoEShims

/// What this machine offers the I/O and placement layers, probed at run time (never assumed at compile time).
public enum Capabilities {
    /// 0 when an io_uring can be created here; otherwise the negative errno that setup returned.
    public static func ioUringProbe(entries: UInt32 = 8) -> Int32 {
        cmoe_uring_probe(entries)
    }

    /// NUMA nodes libnuma sees, or 0 when the kernel has no NUMA support.
    public static var numaNodeCount: Int { Int(cmoe_numa_node_count()) }
}
