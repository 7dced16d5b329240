//! A panic in any thread of `twinfs run` ends the process (issue 13).
//!
//! Without this, a panicking thread dies alone: the applier, a replication
//! task or the supervisor thread would be gone while the rest of the daemon
//! keeps answering heartbeats, a half-alive node that the peer never declares
//! lost and that systemd never restarts. The hook logs the panic (thread,
//! message, location) through tracing, so it reaches the journal like every
//! other event, and then aborts: the process ends with SIGABRT, a non-zero
//! status for systemd's `Restart=`, and the peer sees the node go.
//!
//! Unwinding stays on (no `panic = "abort"` in the profiles): the test harness
//! needs it, and nothing in the daemon catches panics on purpose. Aborting
//! rather than `exit` runs no atexit handlers and no destructors while other
//! threads may hold locks or be mid-write: the store's durability never
//! depended on a clean exit (kill -9 is the case the tests cover).

/// Installs the hook. Call once, after tracing is set up.
pub(crate) fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<non-string panic payload>");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "<unknown>".to_owned());
        tracing::error!(
            thread,
            %location,
            "panic: {message}; ending the process (a half-alive daemon is worse than none)"
        );
        std::process::abort();
    }));
}
