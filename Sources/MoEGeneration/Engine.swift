import Foundation
import MoEModel
import MoETokenizer

/// Runs generation requests on one worker thread: up to `parallel` sequences at a time, decoded together (one
/// forward per step over one token of each, so each chosen expert is read and computed once per step for every
/// sequence that chose it; each sequence's tokens are bit for bit its tokens alone). A request joins at the next
/// step after a place frees (first come, first served: none starves), its prompt run alone first, which pauses
/// the others' steps for that long. Callers get the text as an `AsyncStream` and may cancel at any point (a
/// client that disconnects): the request leaves at the next step, the others go on. Requests beyond `maxQueue`
/// waiting are refused, not buffered without bound.
/// Sendable: `jobs`, `admitted`, `counters` and `stopping` are guarded by `lock`; only the worker thread runs `generator`.
public final class Engine: @unchecked Sendable {
    public struct Request: Sendable {
        public var prompt: [Int]
        public var sampling: SamplingParameters
        public var maxTokens: Int
        public var stop: Set<Int>
        /// Text that ends generation when it appears (OpenAI's `stop`); it is not returned.
        public var stopTexts: [String]
        /// Special tokens after which nothing more is streamed (a tool-call section).
        public var quietAfter: Set<Int>

        public init(prompt: [Int], sampling: SamplingParameters, maxTokens: Int, stop: Set<Int>, stopTexts: [String] = [],
                    quietAfter: Set<Int> = []) {
            self.prompt = prompt
            self.sampling = sampling
            self.maxTokens = maxTokens
            self.stop = stop
            self.stopTexts = stopTexts.filter { !$0.isEmpty }
            self.quietAfter = quietAfter
        }
    }

    public enum Event: Sendable {
        case text(String)
        case done(GenerationResult)
        case failed(String)
    }

    public enum SubmitError: Error { case queueFull(Int) }

    /// A place in the queue, taken before the server spends CPU on a request (tokenising its prompt), so a full
    /// queue refuses a request before any of that work. Given back when dropped unused.
    public final class Admission: @unchecked Sendable {  // `used` is touched only by its owner, then the engine under its lock
        fileprivate let engine: Engine
        fileprivate var used = false

        fileprivate init(engine: Engine) { self.engine = engine }

        deinit { if !used { engine.release() } }
    }

    /// Counters for /metrics.
    public struct Counters: Sendable {
        public var requests = 0
        public var completed = 0
        public var cancelled = 0
        public var failed = 0
        public var rejected = 0
        public var promptTokens = 0
        /// Prompt tokens whose positions came from the prefix cache, and those computed.
        public var promptTokensReused = 0
        public var promptTokensComputed = 0
        public var generatedTokens = 0
        public var queued = 0
        public var running = 0
        public var prefillSeconds = 0.0
        public var decodeSeconds = 0.0
        /// Decode steps, and the sequences they carried (sequences ÷ steps: how many went together on average).
        public var steps = 0
        public var stepSequences = 0
    }

    public final class Cancellation: @unchecked Sendable {  // `flag` is guarded by `lock`
        private let lock = NSLock()
        private var flag = false
        public init() {}
        public func cancel() { lock.lock(); flag = true; lock.unlock() }
        public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return flag }
    }

    struct Job {
        let request: Request
        let cancellation: Cancellation
        let continuation: AsyncStream<Event>.Continuation
    }

    public let generator: Generator
    public let maxQueue: Int
    /// Positions one request may use (prompt + generated).
    public let contextLimit: Int
    /// Sequences decoded together at most.
    public let parallel: Int
    /// Recent sequences' KV caches: a request starts from the longest prefix of its ids kept here.
    public let prefixCache: PrefixCache
    private let lock = NSCondition()
    private var jobs: [Job] = []
    /// Admissions taken and not yet submitted or dropped: they count against `maxQueue`.
    private var admitted = 0
    private var counters = Counters()
    private var stopping = false
    private let finished = DispatchSemaphore(value: 0)

    /// `prefixBudget`: bytes of idle sequences' KV caches kept for prefix reuse (0: every request starts cold).
    /// `parallel`: sequences decoded together at most (1: one request at a time).
    public init(generator: Generator, maxQueue: Int = 64, contextLimit: Int, prefixBudget: Int = 0, parallel: Int = 1) {
        precondition(parallel >= 1)
        self.generator = generator
        self.maxQueue = maxQueue
        self.contextLimit = contextLimit
        self.parallel = parallel
        prefixCache = PrefixCache(budgetBytes: prefixBudget)
        let t = Thread { [self] in
            work()
            finished.signal()
        }
        t.name = "moe-engine"
        t.start()
    }

    public var counterSnapshot: Counters {
        lock.lock()
        defer { lock.unlock() }
        return counters
    }

    /// Takes a place in the queue for a request still to be prepared. Throws when `maxQueue` requests already
    /// wait or are being admitted.
    public func admit() throws(SubmitError) -> Admission {
        lock.lock()
        defer { lock.unlock() }
        guard jobs.count + admitted < maxQueue, !stopping else {
            counters.rejected += 1
            throw .queueFull(maxQueue)
        }
        admitted += 1
        return Admission(engine: self)
    }

    private func release() {
        lock.lock()
        admitted -= 1
        lock.unlock()
    }

    /// Queues `request`; its events arrive on the stream. Throws when `maxQueue` requests already wait.
    public func submit(_ request: Request) throws(SubmitError) -> (events: AsyncStream<Event>, cancellation: Cancellation) {
        submit(request, admission: try admit())
    }

    /// Queues `request` in the place `admission` holds.
    public func submit(_ request: Request, admission: Admission) -> (events: AsyncStream<Event>, cancellation: Cancellation) {
        precondition(admission.engine === self && !admission.used, "an admission is used once, on its own engine")
        let cancellation = Cancellation()
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .unbounded)
        continuation.onTermination = { _ in cancellation.cancel() }
        lock.lock()
        defer { lock.unlock() }
        admission.used = true
        admitted -= 1
        counters.requests += 1
        counters.queued += 1
        jobs.append(Job(request: request, cancellation: cancellation, continuation: continuation))
        lock.broadcast()
        return (stream, cancellation)
    }

    /// Refuses what still waits, lets the running request finish, and returns when the worker has stopped.
    public func shutdown() {
        lock.lock()
        guard !stopping else {
            lock.unlock()
            return
        }
        stopping = true
        let waiting = jobs
        jobs.removeAll()
        counters.queued = 0
        counters.cancelled += waiting.count
        lock.broadcast()
        lock.unlock()
        for job in waiting {
            job.continuation.yield(.failed("the server is shutting down"))
            job.continuation.finish()
        }
        finished.wait()
    }

    /// A request being generated: its generation and what its stop texts hold back.
    final class Active {
        let job: Job
        let generation: Generation
        var produced = ""
        var held = ""  // text that might be the start of a stop text
        var stopped = false  // a stop text was seen: nothing after it is shown

        init(job: Job, generation: Generation) {
            self.job = job
            self.generation = generation
        }

        /// Streams a piece of text, holding back what could grow into a stop text; false stops the generation.
        func emit(_ piece: String) -> Bool {
            let r = job.request
            if job.cancellation.isCancelled || stopped { return false }
            guard !r.stopTexts.isEmpty else {
                job.continuation.yield(.text(piece))
                return true
            }
            held += piece
            if let hit = r.stopTexts.compactMap({ held.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
                let before = String(held[..<hit.lowerBound])
                if !before.isEmpty { job.continuation.yield(.text(before)) }
                produced += before
                held = ""
                stopped = true
                return false
            }
            // Emit all but what could still grow into a stop text.
            let keep = r.stopTexts.map { $0.count - 1 }.max() ?? 0
            if held.count > keep {
                let emit = String(held.prefix(held.count - keep))
                job.continuation.yield(.text(emit))
                produced += emit
                held = String(held.suffix(keep))
            }
            return true
        }
    }

    private func work() {
        var active: [Active] = []
        while true {
            lock.lock()
            while jobs.isEmpty && active.isEmpty && !stopping { lock.wait() }
            if stopping && active.isEmpty { lock.unlock(); return }
            // First come, first served into the places free; none while stopping (the running ones finish).
            var joining: [Job] = []
            while !stopping && active.count + joining.count < parallel && !jobs.isEmpty {
                joining.append(jobs.removeFirst())
                counters.queued -= 1
                counters.running += 1
            }
            lock.unlock()
            for job in joining {
                if let a = start(job) { active.append(a) }
            }
            step(&active)
        }
    }

    /// Takes a request in: its prompt from the longest kept prefix, then its first token. Nil when it ended there.
    private func start(_ job: Job) -> Active? {
        let r = job.request
        guard !job.cancellation.isCancelled else {
            lock.lock()
            counters.running -= 1
            lock.unlock()
            finish(job, cancelled: true, result: nil)
            return nil
        }
        let (kv, reused) = prefixCache.checkout(prompt: r.prompt) { generator.model.makeCache(limit: contextLimit) }
        let g = Generation(generator, prompt: r.prompt, cached: reused, cache: kv, sampling: r.sampling, maxTokens: r.maxTokens,
                           stop: r.stop, quietAfter: r.quietAfter)
        let a = Active(job: job, generation: g)
        do {
            if try g.prefill(cancel: CancelCheck { job.cancellation.isCancelled }, onText: a.emit) { return a }
            complete(a, cancelled: false)
        } catch {
            fail([a], error)
        }
        return nil
    }

    /// One decode step: cancelled requests leave, then one forward over the next token of every other, each
    /// sampling from its own row.
    private func step(_ active: inout [Active]) {
        active.removeAll { a in
            guard a.job.cancellation.isCancelled else { return false }
            complete(a, cancelled: true)
            return true
        }
        guard !active.isEmpty else { return }
        let result: ForwardResult
        do {
            result = try generator.model.forward(batch: active.map(\.generation.next), caches: active.map(\.generation.cache))
        } catch {
            fail(active, error)
            active.removeAll()
            return
        }
        lock.lock()
        counters.steps += 1
        counters.stepSequences += active.count
        lock.unlock()
        var still: [Active] = []
        for (i, a) in active.enumerated() {
            if a.generation.accept(result.row(i), onText: a.emit) { still.append(a) } else { complete(a, cancelled: false) }
        }
        active = still
    }

    /// Ends a request: the rest of its text, its result, its cache kept for prefix reuse.
    private func complete(_ a: Active, cancelled: Bool) {
        let r = a.job.request, job = a.job
        var result = a.generation.finish(cancelled: cancelled, onText: a.emit)
        if !a.held.isEmpty && !job.cancellation.isCancelled && !a.stopped {
            job.continuation.yield(.text(a.held))
            a.produced += a.held
        }
        if !r.stopTexts.isEmpty && result.stopReason == .cancelled && !job.cancellation.isCancelled {
            result.stopReason = .stopToken  // a stop text, not a cancellation
            result.visibleText = a.produced
        }
        // The cache holds the prompt and the generated tokens fed back (all but the last sampled, or fewer when
        // the prefill was cancelled): kept for the next request that shares its prefix.
        let kv = a.generation.cache, reused = a.generation.cached
        let history = r.prompt + result.tokens
        prefixCache.checkin(tokens: Array(history.prefix(kv.count)), cache: kv)
        lock.lock()
        counters.running -= 1
        counters.promptTokens += result.promptTokens
        counters.promptTokensReused += result.cachedPromptTokens
        counters.promptTokensComputed += max(0, min(kv.count, r.prompt.count) - reused)  // a cancelled prefill computed none
        counters.generatedTokens += result.tokens.count
        counters.prefillSeconds += result.prefillSeconds
        counters.decodeSeconds += result.decodeSeconds
        lock.unlock()
        finish(job, cancelled: job.cancellation.isCancelled, result: result)
    }

    /// Requests whose pass failed (a read error the cache could not recover, a full context): each gets the
    /// error; their caches are dropped (a failed pass may have written rows it did not commit).
    private func fail(_ failed: [Active], _ error: any Error) {
        lock.lock()
        counters.failed += failed.count
        counters.running -= failed.count
        lock.unlock()
        for a in failed {
            a.job.continuation.yield(.failed("\(error)"))
            a.job.continuation.finish()
        }
    }

    private func finish(_ job: Job, cancelled: Bool, result: GenerationResult?) {
        lock.lock()
        if cancelled { counters.cancelled += 1 } else { counters.completed += 1 }
        lock.unlock()
        if let result, !cancelled { job.continuation.yield(.done(result)) }
        job.continuation.finish()
    }
}
