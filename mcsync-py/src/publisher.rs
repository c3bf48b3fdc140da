//! `Publisher`, `Database` and `Transaction`: the master side.

use crate::convert::{addr_tuple, bytes_arg, ipv4_arg, records_list, seconds_arg};
use crate::convert::{socket_addr_arg, stats_dict};
use crate::errors::{raise, OrRaise};
use crate::lifecycle::{interruptible, track_publisher, ReleaseOnDrop};
use crate::security::{authentication_arg, identity_arg, schedule_arg};
use mcsync::ErrorKind;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The master side: journals every committed update durably, multicasts it once, and
/// answers registrations and repair requests on its control address.
///
/// ``Publisher(data_dir, ...)`` opens (or creates) the store in ``data_dir``. Options left
/// at ``None`` take the engine's defaults: groups from ``239.255.77.1`` (256 of them, one
/// per database), port ``47100``, interface ``127.0.0.1``, TTL 1, control server on
/// ``127.0.0.1`` with a free port, datagrams of 1,400 bytes, 40,000 packets/s, updates up
/// to 16 MiB. Durations are in seconds.
///
/// Security: the control channel is TLS 1.3 with a self-signed certificate kept in
/// ``data_dir`` (subscribers pin ``fingerprint``), or ``certificate`` and ``private_key``
/// PEM files; ``insecure_loopback=True`` turns TLS off and is accepted on loopback only.
/// Who may subscribe: the users file ``users`` (default ``<data_dir>/users``, see
/// ``add_user``), or ``authenticator(user, secret, peer)`` returning a ``Grant``, ``True``
/// (everything, no groups), or ``None``/``False`` (refused; raise ``AuthError`` to refuse
/// with a message), or ``open_access=True`` for anyone (tests and demos). Database keys
/// are drawn by the publisher and handed to subscribers at registration; they rotate every
/// ``key_rotation_interval`` seconds, on ``revoke`` and on ``Database.rotate_key()``.
///
/// ``schedule`` is ``"always"`` (default), ``"never"`` or daily ``(start, end)`` windows in
/// minutes after midnight UTC; outside them updates are only journaled and subscribers
/// catch up by unicast.
///
/// Use it as a context manager, or call ``close()``; it is also closed at interpreter exit.
#[pyclass(frozen, module = "mcsync", name = "Publisher")]
pub(crate) struct PyPublisher {
    core: ReleaseOnDrop<Arc<mcsync::Publisher>>,
    closed: AtomicBool,
}

#[pymethods]
impl PyPublisher {
    #[new]
    #[pyo3(signature = (
        data_dir, *, group = None, group_count = None, port = None, port_count = None,
        control_addr = None, interface = None, ttl = None, certificate = None,
        private_key = None, insecure_loopback = false, users = None, authenticator = None,
        open_access = false, key_rotation_interval = None, schedule = None,
        rotate_key_at_window_start = false, multicast_on_first_subscription = false,
        datagram_bytes = None, max_packets_per_sec = None, max_bytes_per_sec = None,
        max_update_bytes = None, map_size = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data_dir: PathBuf,
        group: Option<&str>,
        group_count: Option<u32>,
        port: Option<u16>,
        port_count: Option<u16>,
        control_addr: Option<&Bound<'_, PyAny>>,
        interface: Option<&str>,
        ttl: Option<u32>,
        certificate: Option<PathBuf>,
        private_key: Option<PathBuf>,
        insecure_loopback: bool,
        users: Option<PathBuf>,
        authenticator: Option<Bound<'_, PyAny>>,
        open_access: bool,
        key_rotation_interval: Option<f64>,
        schedule: Option<&Bound<'_, PyAny>>,
        rotate_key_at_window_start: bool,
        multicast_on_first_subscription: bool,
        datagram_bytes: Option<usize>,
        max_packets_per_sec: Option<u64>,
        max_bytes_per_sec: Option<u64>,
        max_update_bytes: Option<usize>,
        map_size: Option<usize>,
    ) -> PyResult<Self> {
        let mut c = mcsync::PublisherConfig::new(data_dir);
        c.identity = identity_arg(py, certificate, private_key, insecure_loopback)?;
        if let Some(a) = authentication_arg(py, users, authenticator, open_access)? {
            c.authentication = a;
        }
        if let Some(secs) = key_rotation_interval {
            c.key_rotation_interval = Some(seconds_arg(py, secs, "key_rotation_interval")?);
        }
        if let Some(s) = schedule {
            c.schedule = schedule_arg(py, s)?;
        }
        c.rotate_key_at_window_start = rotate_key_at_window_start;
        c.multicast_on_first_subscription = multicast_on_first_subscription;
        if let Some(a) = control_addr {
            c.control_addr = socket_addr_arg(py, a, "control_addr")?;
        }
        let m = &mut c.multicast;
        if let Some(g) = group {
            m.group = ipv4_arg(py, g, "group")?;
        }
        if let Some(i) = interface {
            m.interface = ipv4_arg(py, i, "interface")?;
        }
        m.group_count = group_count.unwrap_or(m.group_count);
        m.port = port.unwrap_or(m.port);
        m.port_count = port_count.unwrap_or(m.port_count);
        m.ttl = ttl.unwrap_or(m.ttl);
        m.datagram_bytes = datagram_bytes.unwrap_or(m.datagram_bytes);
        m.max_packets_per_sec = max_packets_per_sec.unwrap_or(m.max_packets_per_sec);
        m.max_bytes_per_sec = max_bytes_per_sec.unwrap_or(m.max_bytes_per_sec);
        c.max_update_bytes = max_update_bytes.unwrap_or(c.max_update_bytes);
        c.map_size = map_size.unwrap_or(c.map_size);
        let core = interruptible(py, "open-publisher", move || {
            mcsync::Publisher::open(c).map(Arc::new)
        })?
        .or_raise(py)?;
        track_publisher(&core);
        Ok(PyPublisher {
            core: ReleaseOnDrop::new(core),
            closed: AtomicBool::new(false),
        })
    }

    /// SHA-256 fingerprint of the control channel's certificate (64 hex digits), for
    /// ``Subscriber(fingerprint=...)``; ``None`` with ``insecure_loopback=True``.
    #[getter]
    fn fingerprint(&self) -> Option<&str> {
        self.core.fingerprint()
    }

    /// Cuts ``user`` off: its sessions are refused from now on (also after a restart) and
    /// every database's key is rotated, so it cannot decrypt anything published later.
    fn revoke(&self, py: Python<'_>, user: &str) -> PyResult<()> {
        py.detach(|| self.core.revoke(user)).or_raise(py)
    }

    /// The subscribers currently registered, as dicts with ``id``, ``user``, ``database``,
    /// ``client``, ``peer`` (``(host, port)``) and ``sessions``.
    fn subscribers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let records = self
            .core
            .subscribers()
            .into_iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("id", r.id)?;
                d.set_item("user", r.user)?;
                d.set_item("database", r.database)?;
                d.set_item("client", r.client)?;
                d.set_item("peer", addr_tuple(r.peer))?;
                d.set_item("sessions", r.sessions)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, records)
    }

    /// Changes the multicast schedule (``"always"``, ``"never"`` or a list of ``(start,
    /// end)`` minute windows, UTC); takes effect within about 50 ms.
    fn set_schedule(&self, py: Python<'_>, schedule: &Bound<'_, PyAny>) -> PyResult<()> {
        self.core.set_schedule(schedule_arg(py, schedule)?);
        Ok(())
    }

    /// The database called ``name`` (1 to 200 characters of ``[A-Za-z0-9._-]``), created on
    /// first use; its versions continue across restarts.
    fn database(&self, py: Python<'_>, name: &str) -> PyResult<PyDatabase> {
        let db = self.core.database(name).or_raise(py)?;
        Ok(PyDatabase {
            db,
            publisher: ReleaseOnDrop::new(Arc::clone(&self.core)),
        })
    }

    /// ``(host, port)`` of the control (repair) server: pass it to ``Subscriber(server=...)``.
    #[getter]
    fn control_addr(&self) -> (String, u16) {
        addr_tuple(self.core.control_addr())
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A snapshot of the publisher's counters (all databases together), as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.core.stats().fields())
    }

    /// Stops accepting commits, sends everything queued, stops the repair server and joins
    /// every thread (with the GIL released). Idempotent.
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
    ) -> PyResult<bool> {
        let _ = (exc_type, exc_value, traceback);
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Publisher control_addr={}{}>",
            self.core.control_addr(),
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// One published database. Writes return the new version once the journal holds it
/// durably (the GIL is released meanwhile).
#[pyclass(frozen, module = "mcsync", name = "Database")]
pub(crate) struct PyDatabase {
    db: mcsync::Database,
    publisher: ReleaseOnDrop<Arc<mcsync::Publisher>>,
}

#[pymethods]
impl PyDatabase {
    /// The database's name.
    #[getter]
    fn name(&self) -> &str {
        self.db.name()
    }

    /// Latest committed version (0 before the first commit).
    #[getter]
    fn version(&self) -> u64 {
        self.db.version()
    }

    /// The current key epoch (it grows with every key rotation).
    #[getter]
    fn key_epoch(&self) -> u32 {
        self.db.key_epoch()
    }

    /// Rotates this database's key now (subscribers re-register and fetch the new key);
    /// returns the new epoch.
    fn rotate_key(&self, py: Python<'_>) -> PyResult<u32> {
        py.detach(|| self.db.rotate_key()).or_raise(py)
    }

    /// ``(group, port)`` this database is multicast to.
    #[getter]
    fn group(&self) -> (String, u16) {
        addr_tuple(self.db.group())
    }

    /// Sets ``key`` to ``value`` in a transaction of its own and returns the new version.
    /// ``groups`` restricts the record to subscribers holding one of those access groups.
    #[pyo3(signature = (key, value, groups = None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        groups: Option<Vec<String>>,
    ) -> PyResult<u64> {
        let mut t = self.db.transaction();
        push_put(py, &mut t, key, value, groups)?;
        py.detach(|| t.commit()).or_raise(py)
    }

    /// Deletes ``key`` (a no-op on the replicas if absent) and returns the new version.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<u64> {
        let key = bytes_arg(key, "key")?;
        let mut t = self.db.transaction();
        t.delete(key).or_raise(py)?;
        py.detach(|| t.commit()).or_raise(py)
    }

    /// The master's value of ``key``, or ``default``.
    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let key = bytes_arg(key, "key")?;
        Ok(match self.db.get(key).or_raise(py)? {
            Some(v) => Some(PyBytes::new(py, &v).into_any()),
            None => default,
        })
    }

    /// Every record of the master state in key order, as ``(key, value)`` tuples.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let records = py.detach(|| self.db.snapshot()).or_raise(py)?;
        records_list(py, records)
    }

    /// Starts a transaction. As a context manager it commits when the block succeeds and
    /// discards everything when it raises.
    fn transaction(&self) -> PyTransaction {
        PyTransaction {
            state: Mutex::new(TxnState::Open(self.db.transaction())),
            name: self.db.name().to_owned(),
            _publisher: ReleaseOnDrop::new(Arc::clone(&self.publisher)),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Database {:?} version={}>",
            self.db.name(),
            self.db.version()
        )
    }
}

fn push_put(
    py: Python<'_>,
    t: &mut mcsync::Transaction,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    groups: Option<Vec<String>>,
) -> PyResult<()> {
    let key = bytes_arg(key, "key")?;
    let value = bytes_arg(value, "value")?;
    match groups {
        None => t.put(key, value),
        Some(g) => {
            let g: Vec<&str> = g.iter().map(String::as_str).collect();
            t.put_with_groups(key, value, &g)
        }
    }
    .or_raise(py)
}

enum TxnState {
    Open(mcsync::Transaction),
    /// Being committed by another thread.
    Committing,
    Committed(u64),
    Discarded,
}

/// A pending master transaction: puts and deletes applied atomically by ``commit()``.
///
/// ``with db.transaction() as t:`` commits when the block ends normally (an empty block
/// commits nothing) and discards the transaction when the block raises.
#[pyclass(frozen, module = "mcsync", name = "Transaction")]
pub(crate) struct PyTransaction {
    state: Mutex<TxnState>,
    name: String,
    _publisher: ReleaseOnDrop<Arc<mcsync::Publisher>>,
}

impl PyTransaction {
    fn with_open<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut mcsync::Transaction) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            TxnState::Open(t) => f(t),
            _ => Err(self.finished_error(py)),
        }
    }

    fn finished_error(&self, py: Python<'_>) -> PyErr {
        raise(
            py,
            ErrorKind::Closed,
            format!(
                "transaction on database {:?} was already committed or discarded",
                self.name
            ),
        )
    }
}

#[pymethods]
impl PyTransaction {
    /// Adds a put of ``value`` at ``key`` (readable only by ``groups`` if given).
    #[pyo3(signature = (key, value, groups = None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        groups: Option<Vec<String>>,
    ) -> PyResult<()> {
        self.with_open(py, |t| push_put(py, t, key, value, groups))
    }

    /// Adds a delete of ``key``.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = bytes_arg(key, "key")?;
        self.with_open(py, |t| t.delete(key).or_raise(py))
    }

    /// Journals the transaction durably, queues it for multicast and returns its version.
    /// Raises ``ConfigError`` if it is empty and ``ClosedError`` if it already ended.
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        let txn = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match std::mem::replace(&mut *state, TxnState::Committing) {
                TxnState::Open(t) => t,
                other => {
                    *state = other;
                    return Err(self.finished_error(py));
                }
            }
        };
        let result = py.detach(|| txn.commit());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = match result {
            Ok(v) => TxnState::Committed(v),
            Err(_) => TxnState::Discarded,
        };
        result.or_raise(py)
    }

    /// Discards the transaction: nothing is written or sent. Idempotent.
    fn rollback(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*state, TxnState::Open(_)) {
            *state = TxnState::Discarded;
        }
    }

    /// The committed version, or ``None`` before a commit (and after a rollback).
    #[getter]
    fn version(&self) -> Option<u64> {
        match *self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            TxnState::Committed(v) => Some(v),
            _ => None,
        }
    }

    /// Operations added so far (0 once the transaction ended).
    fn __len__(&self) -> usize {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            TxnState::Open(t) => t.len(),
            _ => 0,
        }
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
    ) -> PyResult<bool> {
        let _ = (exc_value, traceback);
        let pending = match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            TxnState::Open(t) => Some(t.is_empty()),
            _ => None,
        };
        match (exc_type.is_some(), pending) {
            (false, Some(false)) => {
                self.commit(py)?;
            }
            (_, Some(_)) => self.rollback(),
            (_, None) => {}
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            TxnState::Open(t) => format!("open, {} ops", t.len()),
            TxnState::Committing => "committing".to_owned(),
            TxnState::Committed(v) => format!("committed at version {v}"),
            TxnState::Discarded => "discarded".to_owned(),
        };
        format!("<mcsync.Transaction on {:?}: {state}>", self.name)
    }
}
