#if canImport(Glibc)
import Glibc
#endif

/// Drive and kernel faults to inject into the expert reads, for the tests that prove the cache recovers: a
/// read that fails or comes back short or damaged, a completion that arrives again after its slot was reused,
/// a submission the kernel refuses for a while (EAGAIN) or for good. Empty by default: nothing is injected.
public struct FaultPlan: Sendable, Equatable {
    public enum Fault: Sendable, Equatable {
        /// The read completes with `-errno` (nothing read).
        case error(Int32)
        /// The read completes with half its length.
        case shortRead
        /// The read completes in full, but one byte in the buffer is flipped, its middle one (a transfer the checksum
        /// must catch).
        case corrupt
        /// The read completes normally; its completion is delivered a second time when the next read into the
        /// same buffer is submitted, before that read starts (a late completion for a reused slot).
        case lateDuplicate
        /// The read completes, but its completion is swallowed: it never comes back (a drive that hangs).
        case neverCompletes
        /// The `submit` holding this read throws `errno` after starting the reads before it in the batch: the
        /// reader is broken from then on.
        case submitError(Int32)
    }

    /// A fault for reads that match: the `times` reads from the `after`-th on (counted from 0 over every read
    /// the reader is given), restricted to one file and offset when those are set.
    public struct Rule: Sendable, Equatable {
        public var fault: Fault
        public var after: Int
        public var times: Int
        public var file: Int?
        public var offset: Int?

        public init(_ fault: Fault, after: Int = 0, times: Int = 1, file: Int? = nil, offset: Int? = nil) {
            self.fault = fault
            self.after = after
            self.times = times
            self.file = file
            self.offset = offset
        }
    }

    public var rules: [Rule]
    /// io_uring only: results returned by the ring's next `io_uring_submit` calls instead of the kernel's
    /// (negative errnos: -EAGAIN for a kernel short of memory, -EIO for a broken ring).
    public var ringSubmitResults: [Int32]

    public init(_ rules: [Rule] = [], ringSubmitResults: [Int32] = []) {
        self.rules = rules
        self.ringSubmitResults = ringSubmitResults
    }

    public var isEmpty: Bool { rules.isEmpty && ringSubmitResults.isEmpty }
}

/// A reader that passes reads to another and injects the faults of a `FaultPlan` on the way. Test equipment:
/// the cache uses it only when its configuration carries a plan.
public final class FaultyReader: BlockReader {
    public var engine: String { inner.engine }
    public var depth: Int { inner.depth }
    /// Stale duplicates waiting in `ready` are extra completions, not reads: they are not counted.
    public var inFlight: Int { inner.inFlight + held.count + swallowed }
    public let inner: any BlockReader
    private var rules: [FaultPlan.Rule]
    /// Reads given so far (the index the rules count).
    private var reads = 0
    /// Completions to deliver instead of (or after) the inner reader's, by tag.
    private var override: [UInt64: FaultPlan.Fault] = [:]
    private var duplicateOf: [UnsafeMutableRawPointer: UInt64] = [:]
    private var buffers: [UInt64: (UnsafeMutableRawPointer, Int)] = [:]
    /// Reads not yet passed on: each waits for a stale duplicate to be delivered first.
    private var held: [ReadRequest] = []
    /// Completions made up here (stale duplicates), delivered on the next `complete`.
    private var ready: [ReadCompletion] = []
    /// Reads whose completion was swallowed (`neverCompletes`): still in flight as far as the owner can tell.
    private var swallowed = 0
    /// Tags of the stale duplicates delivered so far (`lateDuplicate`).
    public private(set) var duplicatesDelivered: [UInt64] = []
    /// How many faults were injected, by kind (for the tests' fault matrix).
    public private(set) var injected: [String: Int] = [:]

    public init(_ inner: any BlockReader, plan: FaultPlan) {
        self.inner = inner
        rules = plan.rules
    }

    private func fault(for r: ReadRequest) -> FaultPlan.Fault? {
        defer { reads += 1 }
        for i in rules.indices where rules[i].times > 0 && reads >= rules[i].after
            && (rules[i].file == nil || rules[i].file == r.file) && (rules[i].offset == nil || rules[i].offset == r.offset) {
            rules[i].times -= 1
            return rules[i].fault
        }
        return nil
    }

    private func count(_ f: FaultPlan.Fault) {
        let name: String
        switch f {
        case .error: name = "error"
        case .shortRead: name = "shortRead"
        case .corrupt: name = "corrupt"
        case .lateDuplicate: name = "lateDuplicate"
        case .neverCompletes: name = "neverCompletes"
        case .submitError: name = "submitError"
        }
        injected[name, default: 0] += 1
    }

    public func submit(_ requests: [ReadRequest]) throws(SystemError) {
        var pass: [ReadRequest] = []
        for (i, r) in requests.enumerated() {
            if let f = fault(for: r) {
                count(f)
                if case .submitError(let e) = f {
                    try inner.submit(pass)
                    held.append(contentsOf: requests[i...])  // accepted, never started: `abandon` returns them
                    throw SystemError(call: "io_uring_submit (injected)", path: nil, errno: e)
                }
                if case .lateDuplicate = f { duplicateOf[r.buffer] = r.tag } else { override[r.tag] = f }
                buffers[r.tag] = (r.buffer, r.length)
                pass.append(r)
            } else if let stale = duplicateOf.removeValue(forKey: r.buffer) {
                // The buffer is being reused: the old read's completion arrives again before this read starts.
                ready.append(ReadCompletion(tag: stale, result: r.length))
                held.append(r)
            } else {
                pass.append(r)
            }
        }
        try inner.submit(pass)
    }

    public func complete(waitNanoseconds: Int64, into out: inout [ReadCompletion]) throws(SystemError) {
        if !ready.isEmpty {
            out.append(contentsOf: ready)
            duplicatesDelivered += ready.map(\.tag)
            ready.removeAll()
            // The reads that waited for the stale completions start now.
            let start = held
            held.removeAll()
            try inner.submit(start)
            return
        }
        let first = out.count
        if inner.inFlight == 0 && swallowed > 0 {
            // Only swallowed reads are left: wait as a hung drive would make the owner wait.
            if waitNanoseconds != 0 { usleep(UInt32(waitNanoseconds < 0 ? 10_000 : min(waitNanoseconds / 1000, 10_000))) }
            return
        }
        try inner.complete(waitNanoseconds: waitNanoseconds, into: &out)
        var i = first
        while i < out.count {
            guard let f = override.removeValue(forKey: out[i].tag) else {
                i += 1
                continue
            }
            let (buffer, length) = buffers.removeValue(forKey: out[i].tag) ?? (nil, 0)
            switch f {
            case .error(let e): out[i].result = -Int(e)
            case .shortRead: out[i].result = length / 2
            case .corrupt:  // the middle byte: inside the expert's own bytes, not a GGUF superset's neighbour edge
                if let buffer, length > 0 {
                    buffer.storeBytes(of: buffer.load(fromByteOffset: length / 2, as: UInt8.self) ^ 0xFF, toByteOffset: length / 2, as: UInt8.self)
                }
            case .neverCompletes:
                out.remove(at: i)
                swallowed += 1
                continue
            case .lateDuplicate, .submitError: break
            }
            i += 1
        }
    }

    public func abandon() -> [UInt64] {
        let never = held.map(\.tag) + inner.abandon()
        held.removeAll()
        return never
    }
}
