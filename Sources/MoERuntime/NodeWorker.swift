import Foundation
import MoESystem

/// The I/O thread of one NUMA node: owns the node's ring (or pread pool), takes demand reads before prefetches,
/// drops prefetches the model has already passed, submits in batches up to the queue depth, and hands each
/// finished read back to the cache (whose checksum pool verifies it and marks the slot ready). It never hashes.
///
/// Every read is tagged with its slot and the slot's generation (bumped for each read), so a completion that
/// arrives late, after its slot was read again for another expert, is recognised and ignored.
///
/// When the reader fails (a submission or a wait the kernel refuses for good), the worker stops using it:
/// reads that never reached the kernel are queued again, those in flight are drained, a slot whose read could
/// not be drained is retired (the kernel may still write into it), and the node goes on with a pread pool,
/// saying so in one line.
final class NodeWorker: @unchecked Sendable {  // `reader` and `thread` belong to the worker's own thread (and to `join` after it ended)
    /// Strong: the thread keeps the table alive until `shutdown()` stops it (never a dangling reference).
    let table: SlotTable
    let files: ReadFiles
    let node: Int
    private(set) var reader: any BlockReader
    let cpus: [Int]
    let drainLimit: Duration
    private var thread: JoinableThread?

    init(table: SlotTable, files: ReadFiles, node: Int, reader: any BlockReader, cpus: [Int], drainLimit: Duration) {
        self.table = table
        self.files = files
        self.node = node
        self.reader = reader
        self.cpus = cpus
        self.drainLimit = drainLimit
    }

    func start() {
        let name = "moe-io\(node)"
        thread = JoinableThread { [self] in
            ThreadAffinity.nameCurrentThread(name)
            run()
        }
    }

    /// Waits for the thread to exit (and let go of this worker), then drops it.
    func join() {
        thread?.join()
        thread = nil
    }

    private func run() {
        if !cpus.isEmpty { ThreadAffinity.pinCurrentThread(to: cpus) }
        var batch: [ReadRequest] = []
        var completions: [ReadCompletion] = []
        batch.reserveCapacity(reader.depth)
        completions.reserveCapacity(reader.depth)
        while table.takeReads(node: node, depth: reader.depth, into: &batch) {
            completions.removeAll(keepingCapacity: true)
            do throws(SystemError) {
                if !batch.isEmpty { try reader.submit(batch) }
                try reader.complete(waitNanoseconds: 200_000, into: &completions)
            } catch {
                recover(from: error, completions: &completions)
                continue
            }
            table.delivered(node: node, completions, inFlight: reader.inFlight)
        }
    }

    /// The reader failed: give back what never started, drain what did, retire slots whose reads could not be
    /// drained, and go on with a pread pool.
    private func recover(from error: SystemError, completions: inout [ReadCompletion]) {
        let never = reader.abandon()
        let drainedBefore = completions.count
        let deadline = ContinuousClock.now + drainLimit
        var stuck = false
        while reader.inFlight > 0 && ContinuousClock.now < deadline {
            do throws(SystemError) { try reader.complete(waitNanoseconds: 100_000_000, into: &completions) } catch {
                stuck = true
                break
            }
        }
        let drained = completions.count - drainedBefore
        let lost = stuck || reader.inFlight > 0
        table.delivered(node: node, completions, inFlight: reader.inFlight)
        let old = reader.engine
        reader = PReadReader(files: files, depth: reader.depth)
        table.readerReplaced(node: node, engine: reader.engine, never: never, lostUnlessDrained: lost,
                             reason: "its read was in flight when the \(old) reader of node \(node) failed (\(error))") { retired in
            var line = "\(old) reads failed on node \(self.node) (\(error)): \(drained) reads drained, \(never.count) queued again"
            if retired > 0 { line += ", \(retired) slots retired (their reads never came back)" }
            return line + "; reading experts with a pread thread pool from now on"
        }
    }
}
