//! Delivery of applied updates to Python: callbacks (with error reporting), a
//! participant's vote on two-phase updates, and the bounded queue behind
//! `Subscription.updates()`.

use crate::update::PyUpdate;
use mcsync::sync::Locked;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the process thread does with each applied update.
pub(crate) struct Delivery {
    /// The callback, if any.
    pub(crate) on_update: Option<Py<PyAny>>,
    /// Receives `(exception, update)` when the callback raises.
    pub(crate) on_error: Option<Py<PyAny>>,
    /// A participant's vote on two-phase updates, if any.
    pub(crate) vote: Option<Py<PyAny>>,
    /// The pull queue of a subscription without a callback.
    pub(crate) queue: Option<Arc<UpdateQueue>>,
    /// Exceptions raised by `on_update` and `vote` (reported in `stats()`).
    pub(crate) errors: Arc<AtomicU64>,
}

/// Longest refusal reason sent to the publisher, in bytes (the wire allows 65,535; a
/// reason is for people to read).
const MAX_REASON_BYTES: usize = 1000;

impl Delivery {
    /// Runs on the process thread after `u` is committed to the replica.
    pub(crate) fn deliver(&self, u: &mcsync::Update) {
        if let Some(q) = &self.queue {
            q.push(u.clone());
        }
        if let Some(cb) = &self.on_update {
            // Declines while the interpreter is finalizing; the update is in the replica.
            let _ = Python::try_attach(|py| self.call(py, cb.bind(py), u));
        }
    }

    fn call(&self, py: Python<'_>, cb: &Bound<'_, PyAny>, u: &mcsync::Update) {
        let update = match PyUpdate::from_core(py, u) {
            Ok(x) => x,
            Err(e) => return self.report(py, cb, e, None),
        };
        if let Err(e) = cb.call1((update.clone_ref(py),)) {
            self.report(py, cb, e, Some(update));
        }
    }

    /// Runs on the process thread when a two-phase update is prepared, before anything of
    /// it is visible: `Ok` votes PREPARED, `Err(reason)` refuses.
    pub(crate) fn vote(&self, u: &mcsync::Update) -> Result<(), String> {
        let Some(cb) = &self.vote else {
            return Ok(());
        };
        Python::try_attach(|py| self.call_vote(py, cb.bind(py), u))
            .unwrap_or_else(|| Err("the Python interpreter is shutting down".to_owned()))
            .map_err(|reason| truncate(reason, MAX_REASON_BYTES))
    }

    fn call_vote(
        &self,
        py: Python<'_>,
        cb: &Bound<'_, PyAny>,
        u: &mcsync::Update,
    ) -> Result<(), String> {
        let update = match PyUpdate::from_core(py, u) {
            Ok(x) => x,
            Err(e) => {
                let reason = exception_text(py, &e);
                self.report(py, cb, e, None);
                return Err(reason);
            }
        };
        let verdict = cb.call1((update.clone_ref(py),)).and_then(|r| {
            if r.is_none() {
                Ok(Ok(()))
            } else if let Ok(b) = r.cast::<PyBool>() {
                Ok(if b.is_true() {
                    Ok(())
                } else {
                    Err("refused by the vote callback".to_owned())
                })
            } else if let Ok(s) = r.cast::<PyString>() {
                let s = s.to_cow()?;
                Ok(Err(if s.is_empty() {
                    "refused by the vote callback".to_owned()
                } else {
                    s.into_owned()
                }))
            } else {
                Err(PyTypeError::new_err(format!(
                    "vote must return None, True, False or a str, not {}",
                    r.get_type().name()?
                )))
            }
        });
        match verdict {
            Ok(v) => v,
            Err(e) => {
                let reason = exception_text(py, &e);
                self.report(py, cb, e, Some(update));
                Err(reason)
            }
        }
    }

    fn report(&self, py: Python<'_>, cb: &Bound<'_, PyAny>, e: PyErr, u: Option<Py<PyUpdate>>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        match &self.on_error {
            Some(handler) => {
                let handler = handler.bind(py);
                if let Err(e2) = handler.call1((e.into_value(py), u)) {
                    e2.write_unraisable(py, Some(handler));
                }
            }
            None => e.write_unraisable(py, Some(cb)),
        }
    }
}

/// `"TypeName: message"` (or just the type name) of an exception.
fn exception_text(py: Python<'_>, e: &PyErr) -> String {
    let name = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "exception".to_owned());
    match e.value(py).str() {
        Ok(s) if !s.to_string().is_empty() => format!("{name}: {s}"),
        _ => name,
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked with an ellipsis.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Updates waiting for `Subscription.updates()`: bounded, dropping the oldest when full.
pub(crate) struct UpdateQueue {
    items: Mutex<VecDeque<mcsync::Update>>,
    ready: Condvar,
    capacity: usize,
    pub(crate) dropped: AtomicU64,
    pub(crate) closed: AtomicBool,
}

impl UpdateQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        UpdateQueue {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn push(&self, u: mcsync::Update) {
        let mut items = self.items.locked();
        if items.len() >= self.capacity {
            items.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        items.push_back(u);
        self.ready.notify_all();
    }

    /// The next update, waiting up to `wait` for one.
    pub(crate) fn pop(&self, wait: Duration) -> Option<mcsync::Update> {
        let items = self.items.locked();
        let (mut items, _) = self
            .ready
            .wait_timeout_while(items, wait, |i| {
                i.is_empty() && !self.closed.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|e| e.into_inner());
        items.pop_front()
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _guard = self.items.locked();
        self.ready.notify_all();
    }
}
