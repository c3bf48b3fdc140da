//! `Publisher`, `Database`, `Transaction` and `Prepared`: the master side.
//!
//! A prepared two-phase update holds the publisher's intake (every later commit waits
//! behind it, and closing the publisher would wait for it forever), so the prepared updates
//! made through Python are registered with their publisher ([`PubShared`]) and rolled back
//! before it closes. A one-phase commit is submitted to the core and waited for in slices
//! (see [`PubShared::commit`]), so Ctrl-C interrupts one queued behind a prepared update.

use crate::convert::{addr_tuple, bytes_arg, finite_timeout_arg, ipv4_arg, records_list};
use crate::convert::{names_arg, seconds_arg, socket_addr_arg, stats_dict};
use crate::errors::{config_error, raise, OrRaise};
use crate::lifecycle::{interruptible, track_publisher, ReleaseOnDrop, SLICE};
use crate::security::{authentication_arg, identity_arg, schedule_arg};
use mcsync::sync::Locked;
use mcsync::ErrorKind;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Vote timeout of a two-phase update when none is given, in seconds.
const DEFAULT_VOTE_TIMEOUT: f64 = 10.0;

/// A core publisher shared by its Python objects, with the two-phase updates prepared
/// through them.
pub(crate) struct PubShared {
    core: mcsync::Publisher,
    /// Two-phase updates prepared and not yet known to be resolved.
    prepared: Mutex<PreparedRegistry>,
}

#[derive(Default)]
struct PreparedRegistry {
    closing: bool,
    slots: Vec<Weak<PreparedSlot>>,
}

impl PubShared {
    fn new(core: mcsync::Publisher) -> Self {
        PubShared {
            core,
            prepared: Mutex::new(PreparedRegistry::default()),
        }
    }

    /// Rolls back every prepared update (the intake waits for them), then closes the core
    /// publisher, joining its threads. Call with the GIL released.
    pub(crate) fn close(&self) -> mcsync::Result<()> {
        let slots: Vec<_> = {
            let mut r = self.prepared.locked();
            r.closing = true;
            r.slots.drain(..).filter_map(|w| w.upgrade()).collect()
        };
        for slot in slots {
            slot.abandon();
        }
        self.core.close()
    }

    /// Registers a prepared update; if the publisher is closing, hands it back.
    fn register(&self, slot: &Arc<PreparedSlot>) -> bool {
        let mut r = self.prepared.locked();
        if r.closing {
            return false;
        }
        r.slots
            .retain(|w| w.upgrade().is_some_and(|s| s.is_pending()));
        r.slots.push(Arc::downgrade(slot));
        true
    }

    /// Commits a one-phase transaction: submits it to the core, then waits for its version
    /// with the GIL released, checking for signals between slices (a commit queued behind
    /// a prepared two-phase update can wait indefinitely). If a signal handler raises
    /// (Ctrl-C), the exception propagates at once, but the commit still completes in the
    /// core: it is journaled and multicast, and its version is not reported.
    fn commit(&self, py: Python<'_>, t: mcsync::Transaction) -> PyResult<u64> {
        // Blocks only while the core's intake queue (thousands of commits) is full.
        let pending = py.detach(|| t.submit()).or_raise(py)?;
        loop {
            if let Some(result) = py.detach(|| pending.wait(SLICE)) {
                return result.or_raise(py);
            }
            py.check_signals()?;
        }
    }

    /// The first phase of `t`, waited for in slices with the GIL released (a signal
    /// handler that raises, e.g. Ctrl-C, drops the pending prepare, which rolls it back),
    /// and registered so closing rolls it back.
    fn prepare(
        &self,
        py: Python<'_>,
        t: mcsync::Transaction,
        timeout: Duration,
        database: &str,
    ) -> PyResult<Arc<PreparedSlot>> {
        // Dropped without the GIL: a rollback waits for the publisher's intake.
        let pending = ReleaseOnDrop::new(Mutex::new(
            py.detach(|| t.submit_prepare(timeout)).or_raise(py)?,
        ));
        let prepared = loop {
            if let Some(result) = py.detach(|| pending.locked().wait(SLICE)) {
                break ReleaseOnDrop::new(result.or_raise(py)?);
            }
            py.check_signals()?;
        };
        let slot = Arc::new(PreparedSlot {
            database: database.to_owned(),
            version: prepared.version(),
            state: Mutex::new(PrepState::Pending(prepared)),
        });
        if !self.register(&slot) {
            py.detach(|| slot.abandon());
            return Err(raise(
                py,
                ErrorKind::Closed,
                format!(
                    "publisher closed while preparing version {} of database {:?}; rolled back",
                    slot.version, slot.database
                ),
            ));
        }
        Ok(slot)
    }
}

impl Drop for PubShared {
    fn drop(&mut self) {
        // Every prepared update is held by objects that keep this alive; this only guards
        // the core's close against waiting for one.
        let _ = self.close();
    }
}

/// A ``Publisher`` configuration (``Publisher._config(...)``), for ``Relay``.
#[pyclass(frozen, module = "mcsync", name = "_PublisherConfig")]
pub(crate) struct PyPublisherConfig(pub(crate) mcsync::PublisherConfig);

/// The master side: journals every committed update durably, multicasts it once, and
/// answers registrations and repair requests on its control address.
///
/// ``Publisher(data_dir, ...)`` opens (or creates) the store in ``data_dir``. Options left
/// at ``None`` take the engine's defaults: groups from ``239.255.77.1`` (256 of them, one
/// per database), port ``47100``, interface ``127.0.0.1``, TTL 1, control server on
/// ``127.0.0.1`` with a free port, datagrams of 1,400 bytes, paced at 64 MB/s, updates up
/// to 16 MiB encoded (``max_update_bytes`` counts keys, values and access groups plus 21
/// bytes per update, 12 per put and 8 per delete: one put's value can be up to
/// ``max_update_bytes - 33 - len(key)``). Durations are in seconds.
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
/// A subscriber's registration that neither reports nor asks anything for
/// ``registration_expiry`` seconds (default 300) is dropped until its next report.
/// ``max_unicast_targets`` (default 32) bounds the unicast-only subscribers
/// (``Subscriber(unicast=True)``) each database is pushed to; past it they poll.
///
/// ``schedule`` is ``"always"`` (default), ``"never"`` or daily ``(start, end)`` windows in
/// minutes after midnight UTC; outside them updates are only journaled and subscribers
/// catch up by unicast.
///
/// Journal retention: entries beyond both ``retention_max_bytes`` (per database, default
/// 1 GiB) and ``retention_max_age`` (seconds, default 7 days) are removed, oldest first, but
/// never below ``retention_min_count`` entries (default 10,000); when the data directory
/// has less than ``retention_min_free_disk_bytes`` free (default 256 MiB) journals are
/// trimmed to that minimum. It is applied about once a second and by
/// ``apply_retention()``. A subscriber further behind than the journal reaches catches up
/// by hash resync.
///
/// ``durability="sync"`` (default): a commit returns once journaled durably.
/// ``durability="async"``: it returns once its version is assigned, and a journal writer
/// group-commits behind it (at most 8,192 updates behind) — far faster for one update at a
/// time, but a crash can lose what was not journaled yet (never multicast, so no replica
/// has it). ``flush()`` waits until everything returned so far is journaled.
///
/// Use it as a context manager, or call ``close()``; it is also closed at interpreter exit.
#[pyclass(frozen, module = "mcsync", name = "Publisher")]
pub(crate) struct PyPublisher {
    shared: ReleaseOnDrop<Arc<PubShared>>,
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
        max_update_bytes = None, map_size = None, retention_max_bytes = None,
        retention_max_age = None, retention_min_count = None,
        retention_min_free_disk_bytes = None, durability = "sync", registration_expiry = None,
        max_unicast_targets = None
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
        retention_max_bytes: Option<u64>,
        retention_max_age: Option<f64>,
        retention_min_count: Option<u64>,
        retention_min_free_disk_bytes: Option<u64>,
        durability: &str,
        registration_expiry: Option<f64>,
        max_unicast_targets: Option<usize>,
    ) -> PyResult<Self> {
        let c = Self::config(
            py,
            data_dir,
            group,
            group_count,
            port,
            port_count,
            control_addr,
            interface,
            ttl,
            certificate,
            private_key,
            insecure_loopback,
            users,
            authenticator,
            open_access,
            key_rotation_interval,
            schedule,
            rotate_key_at_window_start,
            multicast_on_first_subscription,
            datagram_bytes,
            max_packets_per_sec,
            max_bytes_per_sec,
            max_update_bytes,
            map_size,
            retention_max_bytes,
            retention_max_age,
            retention_min_count,
            retention_min_free_disk_bytes,
            durability,
            registration_expiry,
            max_unicast_targets,
        )?
        .0;
        let shared = interruptible(py, "open-publisher", move || {
            mcsync::Publisher::open(c).map(|p| Arc::new(PubShared::new(p)))
        })?
        .or_raise(py)?;
        track_publisher(&shared);
        Ok(PyPublisher {
            shared: ReleaseOnDrop::new(shared),
        })
    }

    /// The options of ``Publisher(...)`` as a configuration, without opening anything:
    /// how ``Relay`` takes its downstream side.
    #[staticmethod]
    #[pyo3(name = "_config")]
    #[pyo3(signature = (
        data_dir, *, group = None, group_count = None, port = None, port_count = None,
        control_addr = None, interface = None, ttl = None, certificate = None,
        private_key = None, insecure_loopback = false, users = None, authenticator = None,
        open_access = false, key_rotation_interval = None, schedule = None,
        rotate_key_at_window_start = false, multicast_on_first_subscription = false,
        datagram_bytes = None, max_packets_per_sec = None, max_bytes_per_sec = None,
        max_update_bytes = None, map_size = None, retention_max_bytes = None,
        retention_max_age = None, retention_min_count = None,
        retention_min_free_disk_bytes = None, durability = "sync", registration_expiry = None,
        max_unicast_targets = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn config(
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
        retention_max_bytes: Option<u64>,
        retention_max_age: Option<f64>,
        retention_min_count: Option<u64>,
        retention_min_free_disk_bytes: Option<u64>,
        durability: &str,
        registration_expiry: Option<f64>,
        max_unicast_targets: Option<usize>,
    ) -> PyResult<PyPublisherConfig> {
        let mut c = mcsync::PublisherConfig::new(data_dir);
        if let Some(secs) = registration_expiry {
            c.registration_expiry = seconds_arg(py, secs, "registration_expiry")?;
        }
        c.durability = match durability {
            "sync" => mcsync::Durability::Sync,
            "async" => mcsync::Durability::Async,
            other => {
                return Err(config_error(
                    py,
                    format!("durability must be \"sync\" or \"async\", not {other:?}"),
                ))
            }
        };
        let r = &mut c.retention;
        r.max_bytes = retention_max_bytes.unwrap_or(r.max_bytes);
        if let Some(secs) = retention_max_age {
            r.max_age = seconds_arg(py, secs, "retention_max_age")?;
        }
        r.min_count = retention_min_count.unwrap_or(r.min_count);
        r.min_free_disk_bytes = retention_min_free_disk_bytes.unwrap_or(r.min_free_disk_bytes);
        c.identity = identity_arg(py, certificate, private_key, insecure_loopback)?;
        if let Some(a) = authentication_arg(py, users, authenticator, open_access)? {
            c.authentication = a;
        }
        if let mcsync::Authentication::UsersFile(path) = &c.authentication {
            if !path.exists() {
                let shown = path.display().to_string();
                return Err(config_error(
                    py,
                    format!(
                        "no users file at {shown}: add users with mcsync.add_user({shown:?}, \
                         user, password) (or the CLI: mcsync users add), pass authenticator=, \
                         or open_access=True to let anyone subscribe (tests and demos)"
                    ),
                ));
            }
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
        m.max_unicast_targets = max_unicast_targets.unwrap_or(m.max_unicast_targets);
        m.max_packets_per_sec = max_packets_per_sec.unwrap_or(m.max_packets_per_sec);
        m.max_bytes_per_sec = max_bytes_per_sec.unwrap_or(m.max_bytes_per_sec);
        c.max_update_bytes = max_update_bytes.unwrap_or(c.max_update_bytes);
        c.map_size = map_size.unwrap_or(c.map_size);
        Ok(PyPublisherConfig(c))
    }

    /// SHA-256 fingerprint of the control channel's certificate (64 hex digits), for
    /// ``Subscriber(fingerprint=...)``; ``None`` with ``insecure_loopback=True``.
    #[getter]
    fn fingerprint(&self) -> Option<&str> {
        self.shared.core.fingerprint()
    }

    /// Cuts ``user`` off: its sessions are refused from now on (also after a restart) and
    /// every database's key is rotated, so it cannot decrypt anything published later.
    fn revoke(&self, py: Python<'_>, user: &str) -> PyResult<()> {
        py.detach(|| self.shared.core.revoke(user)).or_raise(py)
    }

    /// Waits until every commit that has returned is journaled durably (immediate with
    /// ``durability="sync"``). Raises ``StorageError`` if a journal commit failed (the
    /// updates it held are lost).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.shared.core.flush()).or_raise(py)
    }

    /// Trims every database's journal now as the retention options say (the publisher
    /// also does this about once a second); returns the number of entries removed.
    fn apply_retention(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.shared.core.apply_retention())
            .or_raise(py)
    }

    /// The subscribers currently registered, as dicts with ``id``, ``user``, ``database``,
    /// ``client``, ``peer`` (``(host, port)``), ``sessions`` and ``participant`` (whether
    /// it votes on two-phase updates).
    fn subscribers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let records = self
            .shared
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
                d.set_item("participant", r.participant)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, records)
    }

    /// Changes the multicast schedule (``"always"``, ``"never"`` or a list of ``(start,
    /// end)`` minute windows, UTC); takes effect within about 50 ms. A window out of range
    /// raises ``ConfigError`` and the schedule stays as it was.
    fn set_schedule(&self, py: Python<'_>, schedule: &Bound<'_, PyAny>) -> PyResult<()> {
        self.shared
            .core
            .set_schedule(schedule_arg(py, schedule)?)
            .or_raise(py)
    }

    /// The database called ``name`` (1 to 200 characters of ``[A-Za-z0-9._-]``), created on
    /// first use; its versions continue across restarts.
    fn database(&self, py: Python<'_>, name: &str) -> PyResult<PyDatabase> {
        let db = self.shared.core.database(name).or_raise(py)?;
        Ok(PyDatabase {
            db,
            shared: ReleaseOnDrop::new(Arc::clone(&self.shared)),
        })
    }

    /// ``(host, port)`` of the control (repair) server: pass it to
    /// ``Subscriber(control_addr=...)``.
    #[getter]
    fn control_addr(&self) -> (String, u16) {
        addr_tuple(self.shared.core.control_addr())
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.core.is_closed()
    }

    /// A snapshot of the publisher's counters (all databases together), as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.shared.core.stats().fields())
    }

    /// Every counter and gauge, each database's version, and each registered subscriber's
    /// last report (lag, loss, latency), in the OpenMetrics text format Prometheus scrapes
    /// (content type ``application/openmetrics-text; version=1.0.0; charset=utf-8``).
    fn metrics(&self) -> String {
        self.shared.core.metrics()
    }

    /// Rolls back the two-phase updates still prepared, stops accepting commits, multicasts
    /// what is queued for at most 2 s (the rest is in the journal, and subscribers fetch it
    /// from there), stops the repair server and joins every thread (with the GIL released).
    /// Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.shared.close()).or_raise(py)
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
        self.close(py)?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Publisher control_addr={}{}>",
            self.shared.core.control_addr(),
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// One published database. Writes return the new version once the journal holds it
/// durably (the GIL is released meanwhile).
#[pyclass(frozen, module = "mcsync", name = "Database")]
pub(crate) struct PyDatabase {
    db: mcsync::Database,
    shared: ReleaseOnDrop<Arc<PubShared>>,
}

#[pymethods]
impl PyDatabase {
    /// The database's name.
    #[getter]
    fn name(&self) -> &str {
        self.db.name()
    }

    /// Latest journaled version (0 before the first commit); with ``durability="async"``
    /// a version a commit returned is included once journaled (see ``Publisher.flush``).
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
    /// ``groups`` (a list of str) restricts the record to subscribers holding one of those
    /// access groups. A key over 511 bytes, or an update over ``max_update_bytes``, raises
    /// ``TooLargeError``.
    #[pyo3(signature = (key, value, groups = None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        groups: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let groups = names_arg(groups, "groups")?;
        let mut t = self.db.transaction();
        push_put(py, &mut t, key, value, groups)?;
        self.shared.commit(py, t)
    }

    /// Deletes ``key`` (a no-op on the replicas if absent) and returns the new version.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<u64> {
        let key = bytes_arg(key, "key")?;
        let mut t = self.db.transaction();
        t.delete(key).or_raise(py)?;
        self.shared.commit(py, t)
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
    ///
    /// With ``two_phase=True`` its ``commit()`` (and the end of a ``with`` block) is a
    /// two-phase commit (see ``Transaction.commit_two_phase``) whose participants have
    /// ``timeout`` seconds to vote (default 10).
    #[pyo3(signature = (*, two_phase = false, timeout = None))]
    fn transaction(
        &self,
        py: Python<'_>,
        two_phase: bool,
        timeout: Option<f64>,
    ) -> PyResult<PyTransaction> {
        let two_phase = match (two_phase, timeout) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(config_error(
                    py,
                    "timeout= is the vote timeout of a two_phase=True transaction",
                ))
            }
            (true, t) => Some(finite_timeout_arg(
                py,
                t.unwrap_or(DEFAULT_VOTE_TIMEOUT),
                "timeout",
            )?),
        };
        Ok(PyTransaction {
            state: Mutex::new(TxnState::Open(self.db.transaction())),
            name: self.db.name().to_owned(),
            two_phase,
            shared: ReleaseOnDrop::new(Arc::clone(&self.shared)),
        })
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
    /// Being committed or prepared by some thread.
    Committing,
    Committed(u64),
    /// Prepared by `prepare()` or `commit_two_phase()`: the outcome is the slot's.
    Prepared(Arc<PreparedSlot>),
    Discarded,
}

/// A pending master transaction: puts and deletes applied atomically by ``commit()``.
///
/// ``with db.transaction() as t:`` commits when the block ends normally (an empty block
/// commits nothing) and discards the transaction when the block raises (rolling back an
/// update the block prepared with ``t.prepare()`` and left unresolved).
///
/// A transaction opened with ``db.transaction(two_phase=True, timeout=...)`` commits in
/// two phases (``commit_two_phase``), also at the end of its ``with`` block.
#[pyclass(frozen, module = "mcsync", name = "Transaction")]
pub(crate) struct PyTransaction {
    state: Mutex<TxnState>,
    name: String,
    /// The vote timeout of a `two_phase=True` transaction.
    two_phase: Option<Duration>,
    shared: ReleaseOnDrop<Arc<PubShared>>,
}

impl PyTransaction {
    fn with_open<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut mcsync::Transaction) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut state = self.state.locked();
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

    /// Takes the open transaction, leaving `Committing` until [`Self::finish`].
    fn take_open(&self, py: Python<'_>) -> PyResult<mcsync::Transaction> {
        let mut state = self.state.locked();
        match std::mem::replace(&mut *state, TxnState::Committing) {
            TxnState::Open(t) => Ok(t),
            other => {
                *state = other;
                Err(self.finished_error(py))
            }
        }
    }

    fn finish(&self, state: TxnState) {
        *self.state.locked() = state;
    }

    fn vote_timeout(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Duration> {
        match (timeout, self.two_phase) {
            (Some(t), _) => finite_timeout_arg(py, t, "timeout"),
            (None, Some(d)) => Ok(d),
            (None, None) => Ok(Duration::from_secs_f64(DEFAULT_VOTE_TIMEOUT)),
        }
    }

    fn commit_one_phase(&self, py: Python<'_>) -> PyResult<u64> {
        let txn = self.take_open(py)?;
        let result = self.shared.commit(py, txn);
        self.finish(match &result {
            Ok(v) => TxnState::Committed(*v),
            Err(_) => TxnState::Discarded,
        });
        result
    }

    fn prepare_slot(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Arc<PreparedSlot>> {
        let timeout = self.vote_timeout(py, timeout)?;
        let txn = self.take_open(py)?;
        let result = self.shared.prepare(py, txn, timeout, &self.name);
        self.finish(match &result {
            Ok(slot) => TxnState::Prepared(Arc::clone(slot)),
            Err(_) => TxnState::Discarded,
        });
        result
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
        groups: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let groups = names_arg(groups, "groups")?;
        self.with_open(py, |t| push_put(py, t, key, value, groups))
    }

    /// Adds a delete of ``key``.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = bytes_arg(key, "key")?;
        self.with_open(py, |t| t.delete(key).or_raise(py))
    }

    /// Journals the transaction durably, queues it for multicast and returns its version
    /// (in two phases for a ``two_phase=True`` transaction). Raises ``ConfigError`` if it
    /// is empty and ``ClosedError`` if it already ended.
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        if self.two_phase.is_some() {
            self.commit_two_phase(py, None)
        } else {
            self.commit_one_phase(py)
        }
    }

    /// Two-phase commit: multicasts PREPARE at the next version and waits up to
    /// ``timeout`` seconds (default: the transaction's, else 10) until every participant
    /// of the database (a subscription made with ``participant=True``) has voted PREPARED;
    /// then journals the version durably, multicasts COMMIT and returns the version. With
    /// no participant it commits at once.
    ///
    /// If a participant refuses or does not answer in time, the update is aborted
    /// everywhere, its version is given back, and ``RefusedError`` names who refused (with
    /// the reason) and who did not answer. Every other commit of the publisher waits
    /// meanwhile. The GIL is released and Ctrl-C interrupts the wait; the update is then
    /// rolled back when the vote wait ends.
    #[pyo3(signature = (timeout = None))]
    fn commit_two_phase(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        self.prepare_slot(py, timeout)?.commit(py)
    }

    /// The first phase alone: like ``commit_two_phase`` but returns a ``Prepared`` once
    /// every participant has voted PREPARED, to ``commit()`` or ``rollback()`` later (after
    /// preparing elsewhere too, say). Until then no replica shows the update, and every
    /// other commit of the publisher waits behind it: resolve it promptly, and not by
    /// committing from the same thread first. Dropping the ``Prepared`` or closing the
    /// publisher rolls it back. Raises ``RefusedError`` as ``commit_two_phase`` does.
    #[pyo3(signature = (timeout = None))]
    fn prepare(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PyPrepared> {
        let slot = self.prepare_slot(py, timeout)?;
        Ok(PyPrepared {
            slot,
            _shared: ReleaseOnDrop::new(Arc::clone(&self.shared)),
        })
    }

    /// Discards the transaction: nothing is written or sent. Idempotent.
    fn rollback(&self) {
        let mut state = self.state.locked();
        if matches!(*state, TxnState::Open(_)) {
            *state = TxnState::Discarded;
        }
    }

    /// The committed version, or ``None`` before a commit (and after a rollback).
    #[getter]
    fn version(&self) -> Option<u64> {
        match &*self.state.locked() {
            TxnState::Committed(v) => Some(*v),
            TxnState::Prepared(slot) => slot.committed_version(),
            _ => None,
        }
    }

    /// Operations added so far (0 once the transaction ended).
    fn __len__(&self) -> usize {
        match &*self.state.locked() {
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
    ) -> PyResult<()> {
        let _ = (exc_value, traceback);
        enum Exit {
            Commit,
            Discard,
            RollBack(Arc<PreparedSlot>),
            Nothing,
        }
        let raised = exc_type.is_some();
        let exit = match &*self.state.locked() {
            TxnState::Open(t) if !raised && !t.is_empty() => Exit::Commit,
            TxnState::Open(_) => Exit::Discard,
            TxnState::Prepared(slot) if raised && slot.is_pending() => {
                Exit::RollBack(Arc::clone(slot))
            }
            _ => Exit::Nothing,
        };
        match exit {
            Exit::Commit => {
                self.commit(py)?;
            }
            Exit::Discard => self.rollback(),
            // The block's exception propagates; a failed rollback must not replace it.
            Exit::RollBack(slot) => {
                let _ = slot.rollback(py);
            }
            Exit::Nothing => {}
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        let state = match &*self.state.locked() {
            TxnState::Open(t) => format!(
                "open{}, {} ops",
                if self.two_phase.is_some() {
                    " (two-phase)"
                } else {
                    ""
                },
                t.len()
            ),
            TxnState::Committing => "committing".to_owned(),
            TxnState::Committed(v) => format!("committed at version {v}"),
            TxnState::Prepared(slot) => slot.describe(),
            TxnState::Discarded => "discarded".to_owned(),
        };
        format!("<mcsync.Transaction on {:?}: {state}>", self.name)
    }
}

enum PrepState {
    /// Every participant voted PREPARED; waiting for commit or rollback.
    Pending(ReleaseOnDrop<mcsync::Prepared>),
    /// Being committed by some thread.
    Committing,
    Committed(u64),
    RolledBack,
    /// Rolled back because the publisher closed.
    Abandoned,
    /// The commit failed (nothing was journaled).
    Failed,
}

/// A prepared two-phase update shared by its `Prepared` and `Transaction` objects and
/// registered with its publisher. Dropping it while pending rolls the update back (with
/// the GIL released).
pub(crate) struct PreparedSlot {
    database: String,
    version: u64,
    state: Mutex<PrepState>,
}

impl PreparedSlot {
    fn is_pending(&self) -> bool {
        matches!(*self.state.locked(), PrepState::Pending(_))
    }

    fn committed_version(&self) -> Option<u64> {
        match *self.state.locked() {
            PrepState::Committed(v) => Some(v),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let v = self.version;
        match *self.state.locked() {
            PrepState::Pending(_) => format!("prepared at version {v}"),
            PrepState::Committing => format!("committing version {v}"),
            PrepState::Committed(v) => format!("committed at version {v}"),
            PrepState::RolledBack => format!("version {v} rolled back"),
            PrepState::Abandoned => {
                format!("version {v} rolled back when the publisher closed")
            }
            PrepState::Failed => format!("commit of version {v} failed"),
        }
    }

    /// Rolls the update back if it is still pending, because the publisher closes. Call
    /// with the GIL released.
    fn abandon(&self) {
        let prepared = {
            let mut state = self.state.locked();
            match std::mem::replace(&mut *state, PrepState::Abandoned) {
                PrepState::Pending(p) => Some(p),
                other => {
                    *state = other;
                    None
                }
            }
        };
        if let Some(p) = prepared {
            // It can only fail when the publisher is already gone: nothing is committed.
            let _ = p.into_inner().rollback();
        }
    }

    /// Takes the pending update for `action`, leaving `Committing`.
    fn take_pending(&self, py: Python<'_>, action: &str) -> PyResult<mcsync::Prepared> {
        let mut state = self.state.locked();
        match std::mem::replace(&mut *state, PrepState::Committing) {
            PrepState::Pending(p) => Ok(p.into_inner()),
            other => {
                *state = other;
                let what = state_text(&state);
                Err(raise(
                    py,
                    ErrorKind::Closed,
                    format!(
                        "cannot {action} version {} of database {:?}: it {what}",
                        self.version, self.database
                    ),
                ))
            }
        }
    }

    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        let prepared = self.take_pending(py, "commit")?;
        let result = py.detach(|| prepared.commit());
        *self.state.locked() = match &result {
            Ok(v) => PrepState::Committed(*v),
            Err(_) => PrepState::Failed,
        };
        result.or_raise(py)
    }

    /// Rolls back a pending update; a no-op once rolled back, an error once committed.
    fn rollback(&self, py: Python<'_>) -> PyResult<()> {
        if matches!(
            *self.state.locked(),
            PrepState::RolledBack | PrepState::Abandoned | PrepState::Failed
        ) {
            return Ok(());
        }
        let prepared = self.take_pending(py, "roll back")?;
        // It can only fail when the publisher is already gone: nothing is committed.
        let _ = py.detach(|| prepared.rollback());
        *self.state.locked() = PrepState::RolledBack;
        Ok(())
    }
}

fn state_text(state: &PrepState) -> &'static str {
    match state {
        PrepState::Pending(_) => "is prepared",
        PrepState::Committing => "is being committed",
        PrepState::Committed(_) => "was already committed",
        PrepState::RolledBack => "was already rolled back",
        PrepState::Abandoned => "was rolled back when the publisher closed",
        PrepState::Failed => "failed to commit",
    }
}

/// A two-phase update every participant has voted PREPARED for, returned by
/// ``Transaction.prepare()``: ``commit()`` or ``rollback()`` it. Until then no replica
/// shows it and every later commit of its database waits behind it.
///
/// ``with t.prepare() as p:`` commits when the block ends normally and rolls back when it
/// raises. Dropping an unresolved ``Prepared``, or closing the publisher, rolls it back.
#[pyclass(frozen, module = "mcsync", name = "Prepared")]
pub(crate) struct PyPrepared {
    slot: Arc<PreparedSlot>,
    // Keeps the publisher open (its intake waits for this update); dropped after `slot`.
    _shared: ReleaseOnDrop<Arc<PubShared>>,
}

#[pymethods]
impl PyPrepared {
    /// The version the update has once committed.
    #[getter]
    fn version(&self) -> u64 {
        self.slot.version
    }

    /// Name of the database.
    #[getter]
    fn database(&self) -> &str {
        &self.slot.database
    }

    /// ``"prepared"``, ``"committing"``, ``"committed"``, ``"rolled back"`` or
    /// ``"failed"`` (the commit raised; nothing was journaled).
    #[getter]
    fn state(&self) -> &'static str {
        match *self.slot.state.locked() {
            PrepState::Pending(_) => "prepared",
            PrepState::Committing => "committing",
            PrepState::Committed(_) => "committed",
            PrepState::RolledBack | PrepState::Abandoned => "rolled back",
            PrepState::Failed => "failed",
        }
    }

    /// Journals the update durably, multicasts COMMIT (repeated until every participant
    /// acknowledges) and returns the version. Raises ``ClosedError`` if it was already
    /// resolved (or rolled back because the publisher closed).
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        self.slot.commit(py)
    }

    /// Retracts the update: multicasts ABORT, participants discard what they prepared, and
    /// the version is given back. A no-op once rolled back; ``ClosedError`` once committed.
    fn rollback(&self, py: Python<'_>) -> PyResult<()> {
        self.slot.rollback(py)
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
        let _ = (exc_value, traceback);
        if self.slot.is_pending() {
            if exc_type.is_some() {
                // The block's exception propagates; a failed rollback must not replace it.
                let _ = self.slot.rollback(py);
            } else {
                self.slot.commit(py)?;
            }
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Prepared on {:?}: {}>",
            self.slot.database,
            self.slot.describe()
        )
    }
}
