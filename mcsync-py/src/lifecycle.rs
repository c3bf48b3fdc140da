//! Thread lifetime: releasing the GIL while core threads are joined, interruptible waits,
//! and closing everything at interpreter exit.
//!
//! The core joins its worker threads when a handle is closed or dropped. A subscription's
//! process thread may be waiting for the GIL to run a callback, so every join happens with
//! the GIL released: explicitly in `close()`, and through [`ReleaseOnDrop`] when Python
//! frees an object.

use crate::publisher::PubShared;
use mcsync::sync::Locked;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::ops::Deref;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Longest a blocking call waits with the GIL released before it checks for signals
/// (Ctrl-C) and deadlines.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Holds a core handle whose drop may join threads, and drops it with the GIL released.
pub(crate) struct ReleaseOnDrop<T: Send>(Option<T>);

impl<T: Send> ReleaseOnDrop<T> {
    pub(crate) fn new(value: T) -> Self {
        ReleaseOnDrop(Some(value))
    }

    /// The value, to be consumed by the caller (who then drops it where it must).
    pub(crate) fn into_inner(mut self) -> T {
        self.0.take().expect("value present until drop")
    }
}

impl<T: Send> Deref for ReleaseOnDrop<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Only `drop` takes the value out.
        self.0.as_ref().expect("value present until drop")
    }
}

impl<T: Send> Drop for ReleaseOnDrop<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            // When the interpreter is finalizing, try_attach declines and the closure (with
            // the value) is dropped as is: by then close_all has stopped every thread.
            let _ = Python::try_attach(move |py| py.detach(move || drop(value)));
        }
    }
}

/// The remaining time to wait in this slice, or `None` once `deadline` has passed.
pub(crate) fn next_slice(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(SLICE),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (!left.is_zero()).then_some(left.min(SLICE))
        }
    }
}

/// Runs `f` on a helper thread and waits for it with the GIL released, checking for
/// signals between slices, so Ctrl-C interrupts a call that cannot itself be interrupted
/// (an open or a subscribe waiting on the network). If interrupted, `f` finishes in the
/// background and its result is dropped there (which closes what it opened).
pub(crate) fn interruptible<T, F>(py: Python<'_>, what: &str, f: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("mcsync-py-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| {
            crate::errors::raise(
                py,
                mcsync::ErrorKind::Io,
                format!("spawning a thread to {what}: {e}"),
            )
        })?;
    // A Mutex only to make the receiver Sync for `detach`; nobody else locks it.
    let rx = Mutex::new(rx);
    loop {
        let received = py.detach(|| rx.locked().recv_timeout(SLICE));
        match received {
            Ok(v) => return Ok(v),
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(format!("{what} panicked")))
            }
        }
    }
}

static PUBLISHERS: Mutex<Vec<Weak<PubShared>>> = Mutex::new(Vec::new());
static SUBSCRIBERS: Mutex<Vec<Weak<mcsync::Subscriber>>> = Mutex::new(Vec::new());

fn track<T>(list: &Mutex<Vec<Weak<T>>>, item: &Arc<T>) {
    let mut l = list.locked();
    l.retain(|w| w.strong_count() > 0);
    l.push(Arc::downgrade(item));
}

fn live<T>(list: &Mutex<Vec<Weak<T>>>) -> Vec<Arc<T>> {
    let mut l = list.locked();
    l.retain(|w| w.strong_count() > 0);
    l.iter().filter_map(Weak::upgrade).collect()
}

/// Remembers a publisher so [`close_all`] can close it.
pub(crate) fn track_publisher(p: &Arc<PubShared>) {
    track(&PUBLISHERS, p);
}

/// Remembers a subscriber so [`close_all`] can close it (and its subscriptions).
pub(crate) fn track_subscriber(s: &Arc<mcsync::Subscriber>) {
    track(&SUBSCRIBERS, s);
}

/// Closes every open subscriber (with its subscriptions) and then every publisher, joining
/// their threads. Two-phase updates still prepared are rolled back first.
///
/// The ``mcsync`` package registers this with ``atexit``, so a script that forgets to close
/// still exits. Objects stay usable for reading a replica; writes and waits raise
/// ``ClosedError``. Python runs ``atexit`` hooks only after every non-daemon thread has
/// ended: a non-daemon thread blocked in a wait without a timeout keeps the script alive
/// (until Ctrl-C); make such threads daemon threads or give their waits a timeout.
#[pyfunction]
pub(crate) fn close_all(py: Python<'_>) {
    let subscribers = live(&SUBSCRIBERS);
    let publishers = live(&PUBLISHERS);
    py.detach(move || {
        for s in subscribers {
            let _ = s.close();
        }
        for p in publishers {
            let _ = p.close();
        }
    });
}
