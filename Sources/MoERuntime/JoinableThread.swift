import Foundation

/// A thread that can be joined: `join()` returns after the thread has exited and let go of everything its body
/// held (the body is released on the thread before it ends). Foundation's `Thread` releases its closure some time
/// after the thread finishes, so a worker that holds the expert cache could keep it — its rings and files —
/// alive past `shutdown()`.
final class JoinableThread: @unchecked Sendable {  // `thread` is set by init and cleared by `join`, which its owner calls from one thread
    private final class Box {
        var body: (() -> Void)?
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    private var thread: pthread_t?

    /// Starts `body` on a new thread (stack from the system's default).
    init(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body?()
            box.body = nil  // what the body captured goes before the thread ends
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        thread = t
    }

    /// Waits for the thread to exit. Calling it again does nothing.
    func join() {
        guard let t = thread else { return }
        pthread_join(t, nil)
        thread = nil
    }
}
