//! Crash points for the process-level crash tests (`tests/tests/crash.rs`).
//!
//! With the `crash-points` feature, [`point`] kills the whole process with SIGKILL at the
//! n-th time the named point is passed, when the environment variable
//! `MCSYNC_CRASH_AT=<name>:<n>` says so (read once per process). The kill is the same as a
//! `kill -9` from outside, only placed exactly: inside a write transaction, between a
//! commit and what follows it. Without the feature (the default) [`point`] is empty and
//! compiles to nothing.
//!
//! Points (each a one-line call at the named place):
//! `journal.in_commit`, `journal.after_commit`, `state.in_commit` (the publisher's state
//! writer), `retention.trim`, `repair.compact`, `apply.in_txn`, `apply.after_commit`,
//! `deliver.between`, `resync.apply`.

/// Every crash point's name (the crash test spreads its kills over them).
pub const POINTS: [&str; 9] = [
    "journal.in_commit",
    "journal.after_commit",
    "state.in_commit",
    "retention.trim",
    "repair.compact",
    "apply.in_txn",
    "apply.after_commit",
    "deliver.between",
    "resync.apply",
];

/// Passes crash point `name`: kills this process if `MCSYNC_CRASH_AT` names this point
/// and this is the hit it names.
#[cfg(feature = "crash-points")]
pub(crate) fn point(name: &'static str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("MCSYNC_CRASH_AT").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_owned(), n.parse().ok()?))
    });
    let Some((point, n)) = target else { return };
    if point != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *n {
        return;
    }
    eprintln!(
        "mcsync crash point {name}:{n}: killing process {}",
        std::process::id()
    );
    // SAFETY: kill(2) on our own PID; SIGKILL cannot be caught, so nothing runs after it.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL to ourselves is delivered before kill(2) returns to user space; never reached.
    std::process::abort();
}

/// Passes crash point `name` (crash points are compiled out: nothing happens).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) {}
