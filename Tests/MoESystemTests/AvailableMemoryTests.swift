import Testing
@testable import MoESystem

/// What the defaults may allocate: MemAvailable, or less under a memory cgroup's limit (v1 and v2, the limit on
/// the process's cgroup or an ancestor's), with reclaimable page cache counted as room; malformed files are no limit.
@Suite struct AvailableMemoryTests {
    let meminfo = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"

    func available(_ files: [String: String]) -> Int {
        AvailableMemory.bytes { files[$0] }
    }

    @Test func withoutACgroupLimitItIsMemAvailable() {
        #expect(available(["/proc/meminfo": meminfo]) == 20_000_000 * 1024)
        let v1 = "5:memory:/\n9:name=systemd:/\n"
        #expect(available(["/proc/meminfo": meminfo, "/proc/self/cgroup": v1,
                           "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"]) == 20_000_000 * 1024)
        #expect(available(["/proc/meminfo": meminfo, "/proc/self/cgroup": "0::/user.slice\n",
                           "/sys/fs/cgroup/user.slice/memory.max": "max\n"]) == 20_000_000 * 1024)
    }

    @Test func aV1LimitOnTheProcessOrAnAncestorBounds() {
        let files = ["/proc/meminfo": meminfo, "/proc/self/cgroup": "7:blkio:/\n5:memory:/bench/run\n",
                     "/sys/fs/cgroup/memory/bench/run/memory.limit_in_bytes": "\(4 << 30)\n",
                     "/sys/fs/cgroup/memory/bench/run/memory.usage_in_bytes": "\(3 << 30)\n",
                     "/sys/fs/cgroup/memory/bench/run/memory.stat": "cache 100\ntotal_inactive_file \(1 << 30)\n"]
        #expect(available(files) == 2 << 30, "4 GB limit − (3 GB used − 1 GB droppable page cache)")
        var tighter = files
        tighter["/sys/fs/cgroup/memory/bench/memory.limit_in_bytes"] = "\(1 << 30)"
        #expect(available(tighter) == 1 << 30, "the parent's limit, with nothing used there")
    }

    @Test func aV2LimitBounds() {
        let files = ["/proc/meminfo": meminfo, "/proc/self/cgroup": "0::/system.slice/moestream.service\n",
                     "/sys/fs/cgroup/system.slice/moestream.service/memory.max": "\(8 << 30)\n",
                     "/sys/fs/cgroup/system.slice/moestream.service/memory.current": "\(1 << 30)\n",
                     "/sys/fs/cgroup/system.slice/moestream.service/memory.stat": "anon 5\ninactive_file \(2 << 30)\n"]
        #expect(available(files) == 8 << 30, "page cache beyond usage never counts as negative use")
    }

    @Test func malformedFilesAreNoLimit() {
        for bad in ["", "lots", "-5", "99999999999999999999999", "1e9"] {
            #expect(available(["/proc/meminfo": meminfo, "/proc/self/cgroup": "0::/x\n", "/sys/fs/cgroup/x/memory.max": bad])
                    == 20_000_000 * 1024, "memory.max '\(bad)'")
        }
        #expect(available(["/proc/meminfo": "MemAvailable: 99999999999999999999 kB\n"]) > 0)
        #expect(available(["/proc/meminfo": "MemAvailable: 9223372036854775807 kB\n"]) > 0, "overflow-safe")
    }
}
