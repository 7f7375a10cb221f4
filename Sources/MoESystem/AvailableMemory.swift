import Foundation

/// Memory this process may still allocate without swapping or being killed: the kernel's MemAvailable, or less
/// where a memory cgroup's limit leaves less (a container, a systemd slice, the benchmarks' caps). MemAvailable
/// does not see a cgroup's limit, so defaults sized from it alone (the expert cache's budget, the server's prefix
/// cache) would overcommit inside one and be killed.
///
/// For the process's cgroup and each ancestor with a limit: limit − (usage − inactive file pages), the page cache
/// the kernel can drop being room. cgroup v2 (`memory.max`, `memory.current`, `inactive_file`) and v1
/// (`memory.limit_in_bytes`, `memory.usage_in_bytes`, `total_inactive_file`). Every number read is checked; a
/// file that is missing or malformed counts as no limit.
public enum AvailableMemory {
    /// `read` returns a file's text (injected by tests).
    public static func bytes(read: (String) -> String? = { try? String(contentsOfFile: $0, encoding: .utf8) }) -> Int {
        var available = memAvailable(read("/proc/meminfo") ?? "") ?? Int(clamping: ProcessInfo.processInfo.physicalMemory)
        for directory in cgroupDirectories(read("/proc/self/cgroup") ?? "") {
            if let room = room(in: directory, read: read) { available = min(available, room) }
        }
        return max(0, available)
    }

    /// MemAvailable in bytes.
    static func memAvailable(_ meminfo: String) -> Int? {
        for line in meminfo.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kb = Int(fields[1]), kb >= 0 else { return nil }
            let (bytes, overflow) = kb.multipliedReportingOverflow(by: 1024)
            return overflow ? nil : bytes
        }
        return nil
    }

    /// The memory cgroup directories of this process, itself first then each ancestor up to the root.
    static func cgroupDirectories(_ cgroup: String) -> [(path: String, v2: Bool)] {
        for line in cgroup.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let v2 = parts[0] == "0" && parts[1].isEmpty
            guard v2 || parts[1].split(separator: ",").contains("memory") else { continue }
            let base = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory"
            var components = parts[2].split(separator: "/").filter { $0 != ".." && $0 != "." }.map(String.init)
            var out: [(String, Bool)] = []
            while true {
                out.append((base + (components.isEmpty ? "" : "/" + components.joined(separator: "/")), v2))
                if components.isEmpty { break }
                components.removeLast()
            }
            return out
        }
        return []
    }

    /// limit − (usage − inactive file pages) for one cgroup directory, or nil without a limit.
    static func room(in directory: (path: String, v2: Bool), read: (String) -> String?) -> Int? {
        let (limitFile, usageFile, inactiveKey) = directory.v2
            ? ("memory.max", "memory.current", "inactive_file")
            : ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        func number(_ text: String?) -> Int? {
            guard let t = text?.trimmingCharacters(in: .whitespacesAndNewlines), let v = Int(t), v >= 0 else { return nil }
            return v
        }
        // "max" (v2) or a value near Int64.max (v1: no limit set) is no limit.
        guard let limit = number(read(directory.path + "/" + limitFile)), limit < 1 << 60 else { return nil }
        let usage = number(read(directory.path + "/" + usageFile)) ?? 0
        var inactive = 0
        for line in (read(directory.path + "/memory.stat") ?? "").split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2, f[0] == inactiveKey, let v = Int(f[1]), v >= 0 { inactive = v }
        }
        return limit - max(0, usage - min(inactive, usage))
    }
}
