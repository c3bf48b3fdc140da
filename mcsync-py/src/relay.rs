//! `Relay`: a replica that re-publishes databases of an upstream publisher.

use crate::convert::{addr_tuple, stats_dict};
use crate::errors::{config_error, OrRaise};
use crate::lifecycle::{interruptible, ReleaseOnDrop};
use crate::publisher::PyPublisher;
use crate::subscriber::PySubscriber;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A relay: subscribes to databases of an upstream publisher and re-publishes them — same
/// versions, record content and commit timestamps — from a publisher of its own, with its
/// own journal (repair, catch-up and resync downstream), control address, TLS identity,
/// users and keys. Downstream subscribers are ordinary ``Subscriber`` objects given the relay's
/// ``control_addr`` and ``fingerprint``; relays chain.
///
/// ``Relay(upstream={...}, downstream={...}, databases=[...])``: ``upstream`` holds the
/// keyword arguments of ``Subscriber(...)`` (``data_dir``, ``control_addr`` and
/// ``fingerprint`` of the upstream publisher, ``user``, ``secret``, ``interface``, ...),
/// ``downstream`` those of ``Publisher(...)`` (another ``data_dir``, ``group``, ``port``,
/// ``interface``, ``users``/``authenticator``, ``durability``, ...).
///
/// Each database is subscribed upstream exactly after the version the relay's own journal
/// holds: a relay reopened after a crash resumes where its journal ends, and downstream
/// callbacks see every version once, in order. Two-phase updates upstream reach downstream
/// as ordinary committed updates once decided. An upstream reset (its journal no longer
/// reaches back, or its history changed) replaces the relayed database under a new history
/// id, and downstream replicas resync. Records the upstream grant hides never reach the
/// relay; downstream grants are the relay's own.
///
/// Use it as a context manager, or call ``close()``.
#[pyclass(frozen, module = "mcsync", name = "Relay")]
pub(crate) struct PyRelay {
    core: ReleaseOnDrop<Arc<mcsync::Relay>>,
    closed: AtomicBool,
}

#[pymethods]
impl PyRelay {
    #[new]
    #[pyo3(signature = (*, upstream, downstream, databases))]
    fn new(
        py: Python<'_>,
        upstream: &Bound<'_, PyDict>,
        downstream: &Bound<'_, PyDict>,
        databases: Vec<String>,
    ) -> PyResult<Self> {
        let up = py
            .get_type::<PySubscriber>()
            .call_method("_config", (), Some(upstream))?;
        let up = up
            .cast::<crate::subscriber::PySubscriberConfig>()?
            .get()
            .0
            .clone();
        let down = py
            .get_type::<PyPublisher>()
            .call_method("_config", (), Some(downstream))?;
        let down = down
            .cast::<crate::publisher::PyPublisherConfig>()?
            .get()
            .0
            .clone();
        if databases.is_empty() {
            return Err(config_error(py, "Relay needs at least one database"));
        }
        let config = mcsync::RelayConfig {
            upstream: up,
            downstream: down,
            databases,
        };
        let core = interruptible(py, "open-relay", move || {
            mcsync::Relay::open(config).map(Arc::new)
        })?
        .or_raise(py)?;
        Ok(PyRelay {
            core: ReleaseOnDrop::new(core),
            closed: AtomicBool::new(false),
        })
    }

    /// SHA-256 fingerprint of the relay's own certificate, for downstream
    /// ``Subscriber(fingerprint=...)``; ``None`` without TLS.
    #[getter]
    fn fingerprint(&self) -> Option<&str> {
        self.core.fingerprint()
    }

    /// ``(host, port)`` downstream subscribers connect to.
    #[getter]
    fn control_addr(&self) -> (String, u16) {
        addr_tuple(self.core.control_addr())
    }

    /// The version database ``name`` is relayed up to (journaled by the relay).
    fn version(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        self.core.version(name).or_raise(py)
    }

    /// The relay's own key epoch of database ``name`` (upstream keys never reach
    /// downstream).
    fn key_epoch(&self, py: Python<'_>, name: &str) -> PyResult<u32> {
        self.core.key_epoch(name).or_raise(py)
    }

    /// Rotates the relay's key of database ``name``; returns the new epoch.
    fn rotate_key(&self, py: Python<'_>, name: &str) -> PyResult<u32> {
        py.detach(|| self.core.rotate_key(name)).or_raise(py)
    }

    /// Cuts downstream ``user`` off (see ``Publisher.revoke``).
    fn revoke(&self, py: Python<'_>, user: &str) -> PyResult<()> {
        py.detach(|| self.core.revoke(user)).or_raise(py)
    }

    /// The relay's own counters as a dict: ``imported``, ``import_errors``, ``resets``,
    /// ``resubscribes``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.core.stats().fields())
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops the upstream subscriptions, then closes the relay's publisher (with the GIL
    /// released). What it journaled stays; a relay opened again on the same directories
    /// resumes after it. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::SeqCst);
        py.detach(|| self.core.close()).or_raise(py)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (exc_type, exc_value, traceback, /))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc_value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (exc_type, exc_value, traceback);
        self.close(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Relay control_addr={}{}>",
            self.core.control_addr(),
            if self.closed() { " closed" } else { "" }
        )
    }
}
