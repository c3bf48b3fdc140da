//! Delivery of applied updates to Python: callbacks (with error reporting) and the bounded
//! queue behind `Subscription.updates()`.

use crate::update::PyUpdate;
use pyo3::prelude::*;
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
    /// The pull queue of a subscription without a callback.
    pub(crate) queue: Option<Arc<UpdateQueue>>,
    /// Exceptions raised by `on_update` (reported in `stats()`).
    pub(crate) errors: Arc<AtomicU64>,
}

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
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= self.capacity {
            items.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        items.push_back(u);
        self.ready.notify_all();
    }

    /// The next update, waiting up to `wait` for one.
    pub(crate) fn pop(&self, wait: Duration) -> Option<mcsync::Update> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
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
        let _guard = self.items.lock().unwrap_or_else(|e| e.into_inner());
        self.ready.notify_all();
    }
}
