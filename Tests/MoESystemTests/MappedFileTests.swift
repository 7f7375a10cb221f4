import Foundation
import Testing
@testable import MoESystem

@Suite struct MappedFileTests {
    @Test func mapsTheFileBytes() throws {
        let path = NSTemporaryDirectory() + "mapped-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3, 4, 5]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let m = try MappedFile(path: path)
        #expect(m.count == 5)
        #expect(Array(m.bytes(1..<4)) == [2, 3, 4])
    }

    /// A copy that skips byte ranges reads every other byte as the file has it; the pages wholly inside a skipped
    /// range (merged, clipped to the file) are what it leaves out.
    @Test func aCopyLeavesOutThePagesOfSkippedRanges() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = (0..<(6 * page)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        let path = NSTemporaryDirectory() + "mapped-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let skip = [(page + 10)..<(4 * page + 5)]
        #expect(MappedFile.holes(skip, count: bytes.count) == [(2 * page)..<(4 * page)])
        let m = try MappedFile(path: path, copy: true, skipping: skip)
        #expect(m.isCopy && m.count == bytes.count)
        #expect(Array(m.bytes(0..<(2 * page))) == Array(bytes[0..<(2 * page)]))
        #expect(Array(m.bytes((4 * page)..<(6 * page))) == Array(bytes[(4 * page)...]))
        #expect(MappedFile.holes([0..<(page / 2), (3 * page)..<(7 * page), page..<(3 * page + 1)], count: 6 * page) == [page..<(6 * page)])
    }

    @Test func missingFileNamesThePath() {
        do {
            _ = try MappedFile(path: "/nonexistent/model.safetensors")
            Issue.record("expected an error")
        } catch {
            #expect(error.errno == ENOENT)
            #expect(error.description.contains("/nonexistent/model.safetensors"))
        }
    }

    @Test func ioUringProbeAgreesWithTheKernelSetting() throws {
        // kernel.io_uring_disabled = 2 forbids every ring; 0 allows them (1 allows only a privileged group).
        let setting = (try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let rc = Capabilities.ioUringProbe()
        switch setting {
        case "2": #expect(rc == -EPERM, "io_uring disabled by the kernel but setup returned \(rc)")
        case "1":
            // Only io_uring_group members and CAP_SYS_ADMIN may set up rings: root may, others get EPERM.
            if geteuid() == 0 { #expect(rc == 0, "root under io_uring_disabled=1 but setup returned \(rc)") } else {
                #expect(rc == 0 || rc == -EPERM, "setup returned \(rc)")
            }
        case "0": #expect(rc == 0, "io_uring allowed by the kernel but setup returned \(rc)")
        default:
            // No setting (kernels before 6.6): io_uring is there or compiled out, nothing else.
            #expect(rc == 0 || rc == -ENOSYS, "setup returned \(rc) with no io_uring_disabled setting")
        }
    }

    @Test func numaNodeCountMatchesSysfs() throws {
        let nodes = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/devices/system/node"))?
            .filter { $0.hasPrefix("node") && Int($0.dropFirst(4)) != nil }.count ?? 0
        guard nodes > 0 else { return }  // no NUMA sysfs (containers, macOS)
        #expect(Capabilities.numaNodeCount == nodes)
    }
}
