//! `Subscriber`, `Subscription` and the pull-style `UpdateIterator`: the replica side.
//!
//! Callbacks (and a participant's vote) run on the subscription's process thread (a Rust
//! thread). It attaches to the interpreter only for the call; an exception from the callback
//! goes to `on_error` if given, else to `sys.unraisablehook`, is counted in
//! `stats()["callback_errors"]`, and the subscription keeps going (an exception from a vote
//! also refuses the update).

use crate::convert::{addr_tuple, bytes_arg, deadline_arg, ipv4_arg, seconds_arg};
use crate::convert::{socket_addr_arg, stats_dict, Deadline};
use crate::delivery::{Delivery, UpdateQueue};
use crate::errors::{config_error, raise, OrRaise};
use crate::lifecycle::{interruptible, next_slice, track_subscriber, ReleaseOnDrop};
use crate::resync::PyResyncReport;
use crate::security::trust_arg;
use crate::update::PyUpdate;
use mcsync::ErrorKind;
use pyo3::exceptions::{PyDeprecationWarning, PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyIterator, PyList};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A ``Subscriber`` configuration (``Subscriber._config(...)``), for ``Relay``.
#[pyclass(frozen, module = "mcsync", name = "_SubscriberConfig")]
pub(crate) struct PySubscriberConfig(pub(crate) mcsync::SubscriberConfig);

/// The replica side: a local LMDB store holding replicas of the databases it subscribes to.
///
/// ``Subscriber(data_dir, control_addr=publisher.control_addr,
/// fingerprint=publisher.fingerprint, user="alice", secret="...")``. ``control_addr`` is
/// the publisher's control address (``Publisher.control_addr``), ``(host, port)`` or
/// ``"host:port"``; ``server=`` is its older name, still accepted with a
/// ``DeprecationWarning``. The publisher is checked by exactly one of: ``fingerprint`` (its
/// certificate's SHA-256, 64 hex digits, checked here), ``ca_file`` (a PEM file of CA
/// certificates; ``server_name`` is the name checked, default the server's IP address), or
/// ``insecure_loopback=True`` (no TLS, loopback only). ``user`` and ``secret`` are
/// presented at registration.
///
/// ``client_name`` is the name this subscriber gives the publisher (listed by
/// ``Publisher.subscribers()``; a two-phase participant is named by it and its user in
/// refusals). A replica more than ``compact_catch_up_after`` versions behind (default
/// 1,000) catches up compacted, with the latest value of each changed key instead of every
/// step (its callback then sees fewer, larger updates).
///
/// ``replica_durability`` says how the replica store reaches the disk: ``"periodic"``
/// (default: no fsync per apply, a flush every ``replica_flush_interval`` seconds, default
/// 1.0, and at ``close()``), ``"sync"`` (an fsync per apply) or ``"none"`` (flushed only at
/// ``close()``). Nothing applied is lost on ``kill -9`` in any mode; after an OS crash or
/// power loss a periodic or none replica with unsynced commits is discarded at the next
/// open and rebuilt from the publisher (``stats()["replica_rebuilds"]``), and hosts get a
/// ``reset`` update. ``replica_flush_interval`` is only for ``"periodic"``.
///
/// ``unicast=True`` makes it unicast-only: it joins no multicast group, and the publisher
/// pushes the same sealed datagrams by unicast UDP to a socket bound on the local address
/// of the control connection (for networks without multicast). If the publisher refuses
/// (it has as many unicast subscribers as it allows), the subscription catches up by
/// polling, counted in ``stats()["unicast_refused"]``.
///
/// ``loss`` (a probability, e.g. ``0.05``) injects seeded receive-side loss for tests and
/// demos; ``loss_seed`` and ``loss_burst`` shape it. Durations are in seconds. Options left
/// at ``None`` take the engine's defaults.
///
/// Use it as a context manager, or call ``close()``; it is also closed at interpreter exit.
#[pyclass(frozen, module = "mcsync", name = "Subscriber")]
pub(crate) struct PySubscriber {
    core: ReleaseOnDrop<Arc<mcsync::Subscriber>>,
    server: SocketAddr,
}

impl PySubscriber {
    /// A verify or resync; the engine refuses a closed subscriber.
    fn one_shot(&self, py: Python<'_>, name: &str, apply: bool) -> PyResult<PyResyncReport> {
        let subscriber = Arc::clone(&self.core);
        let name = name.to_owned();
        let report = interruptible(py, if apply { "resync" } else { "verify" }, move || {
            if apply {
                subscriber.resync(&name)
            } else {
                subscriber.verify(&name)
            }
        })?
        .or_raise(py)?;
        Ok(PyResyncReport::new(report))
    }
}

/// `replica_durability=` and `replica_flush_interval=` as the engine's setting.
fn replica_durability_arg(
    py: Python<'_>,
    mode: &str,
    interval: Option<f64>,
) -> PyResult<mcsync::ReplicaDurability> {
    let d = match (mode, interval) {
        ("periodic", None) => mcsync::ReplicaDurability::default(),
        ("periodic", Some(secs)) => {
            mcsync::ReplicaDurability::Periodic(seconds_arg(py, secs, "replica_flush_interval")?)
        }
        ("sync" | "none", Some(_)) => {
            return Err(config_error(
                py,
                format!(
                "replica_flush_interval is only for replica_durability=\"periodic\", not {mode:?}"
            ),
            ))
        }
        ("sync", None) => mcsync::ReplicaDurability::Sync,
        ("none", None) => mcsync::ReplicaDurability::None,
        (other, _) => {
            return Err(config_error(
                py,
                format!(
                    "replica_durability must be \"sync\", \"periodic\" or \"none\", not {other:?}"
                ),
            ))
        }
    };
    d.validate().map_err(|e| config_error(py, e.to_string()))?;
    Ok(d)
}

#[pymethods]
impl PySubscriber {
    #[new]
    #[pyo3(signature = (
        data_dir, *, control_addr = None, server = None, fingerprint = None, ca_file = None,
        server_name = None,
        insecure_loopback = false, user = "", secret = "", interface = None, loss = None,
        loss_seed = 0, loss_burst = 1, recv_buffer_bytes = None, channel_capacity = None,
        reorder_buffer_bytes = None, repair_delay = None, repair_retry = None,
        repair_io_timeout = None, silence_timeout = None, max_update_bytes = None,
        map_size = None, client_name = None, compact_catch_up_after = None,
        replica_durability = "periodic", replica_flush_interval = None, unicast = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data_dir: PathBuf,
        control_addr: Option<&Bound<'_, PyAny>>,
        server: Option<&Bound<'_, PyAny>>,
        fingerprint: Option<String>,
        ca_file: Option<PathBuf>,
        server_name: Option<String>,
        insecure_loopback: bool,
        user: &str,
        secret: &str,
        interface: Option<&str>,
        loss: Option<f64>,
        loss_seed: u64,
        loss_burst: u32,
        recv_buffer_bytes: Option<usize>,
        channel_capacity: Option<usize>,
        reorder_buffer_bytes: Option<usize>,
        repair_delay: Option<f64>,
        repair_retry: Option<f64>,
        repair_io_timeout: Option<f64>,
        silence_timeout: Option<f64>,
        max_update_bytes: Option<usize>,
        map_size: Option<usize>,
        client_name: Option<String>,
        compact_catch_up_after: Option<u64>,
        replica_durability: &str,
        replica_flush_interval: Option<f64>,
        unicast: bool,
    ) -> PyResult<Self> {
        let c = Self::config(
            py,
            data_dir,
            control_addr,
            server,
            fingerprint,
            ca_file,
            server_name,
            insecure_loopback,
            user,
            secret,
            interface,
            loss,
            loss_seed,
            loss_burst,
            recv_buffer_bytes,
            channel_capacity,
            reorder_buffer_bytes,
            repair_delay,
            repair_retry,
            repair_io_timeout,
            silence_timeout,
            max_update_bytes,
            map_size,
            client_name,
            compact_catch_up_after,
            replica_durability,
            replica_flush_interval,
            unicast,
        )?
        .0;
        let server = c.server;
        let core = interruptible(py, "open-subscriber", move || {
            mcsync::Subscriber::open(c).map(Arc::new)
        })?
        .or_raise(py)?;
        track_subscriber(&core);
        Ok(PySubscriber {
            core: ReleaseOnDrop::new(core),
            server,
        })
    }

    /// The options of ``Subscriber(...)`` as a configuration, without opening anything:
    /// how ``Relay`` takes its upstream side.
    #[staticmethod]
    #[pyo3(name = "_config")]
    #[pyo3(signature = (
        data_dir, *, control_addr = None, server = None, fingerprint = None, ca_file = None,
        server_name = None,
        insecure_loopback = false, user = "", secret = "", interface = None, loss = None,
        loss_seed = 0, loss_burst = 1, recv_buffer_bytes = None, channel_capacity = None,
        reorder_buffer_bytes = None, repair_delay = None, repair_retry = None,
        repair_io_timeout = None, silence_timeout = None, max_update_bytes = None,
        map_size = None, client_name = None, compact_catch_up_after = None,
        replica_durability = "periodic", replica_flush_interval = None, unicast = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn config(
        py: Python<'_>,
        data_dir: PathBuf,
        control_addr: Option<&Bound<'_, PyAny>>,
        server: Option<&Bound<'_, PyAny>>,
        fingerprint: Option<String>,
        ca_file: Option<PathBuf>,
        server_name: Option<String>,
        insecure_loopback: bool,
        user: &str,
        secret: &str,
        interface: Option<&str>,
        loss: Option<f64>,
        loss_seed: u64,
        loss_burst: u32,
        recv_buffer_bytes: Option<usize>,
        channel_capacity: Option<usize>,
        reorder_buffer_bytes: Option<usize>,
        repair_delay: Option<f64>,
        repair_retry: Option<f64>,
        repair_io_timeout: Option<f64>,
        silence_timeout: Option<f64>,
        max_update_bytes: Option<usize>,
        map_size: Option<usize>,
        client_name: Option<String>,
        compact_catch_up_after: Option<u64>,
        replica_durability: &str,
        replica_flush_interval: Option<f64>,
        unicast: bool,
    ) -> PyResult<PySubscriberConfig> {
        let server = match (control_addr, server) {
            (Some(a), None) => socket_addr_arg(py, a, "control_addr")?,
            (None, Some(a)) => {
                PyErr::warn(
                    py,
                    &py.get_type::<PyDeprecationWarning>(),
                    c"Subscriber(server=...) is now Subscriber(control_addr=...)",
                    1,
                )?;
                socket_addr_arg(py, a, "server")?
            }
            (None, None) => {
                return Err(PyTypeError::new_err(
                    "Subscriber() needs control_addr=, the publisher's Publisher.control_addr",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(PyTypeError::new_err(
                    "give control_addr= (server= is its deprecated name), not both",
                ))
            }
        };
        let trust = trust_arg(py, fingerprint, ca_file, insecure_loopback)?;
        let mut c = mcsync::SubscriberConfig::new(data_dir, server, trust);
        c.server_name = server_name;
        c.user = user.to_owned();
        c.secret = mcsync::Secret::new(secret);
        if let Some(i) = interface {
            c.interface = ipv4_arg(py, i, "interface")?;
        }
        c.unicast = unicast;
        c.loss = loss.map(|probability| mcsync::LossConfig {
            probability,
            burst_len: loss_burst,
            seed: loss_seed,
        });
        c.recv_buffer_bytes = recv_buffer_bytes.unwrap_or(c.recv_buffer_bytes);
        c.channel_capacity = channel_capacity.unwrap_or(c.channel_capacity);
        c.reorder_buffer_bytes = reorder_buffer_bytes.unwrap_or(c.reorder_buffer_bytes);
        for (value, field, what) in [
            (repair_delay, &mut c.repair_delay, "repair_delay"),
            (repair_retry, &mut c.repair_retry, "repair_retry"),
            (
                repair_io_timeout,
                &mut c.repair_io_timeout,
                "repair_io_timeout",
            ),
            (silence_timeout, &mut c.silence_timeout, "silence_timeout"),
        ] {
            if let Some(secs) = value {
                *field = seconds_arg(py, secs, what)?;
            }
        }
        c.max_update_bytes = max_update_bytes.unwrap_or(c.max_update_bytes);
        c.map_size = map_size.unwrap_or(c.map_size);
        c.client_name = client_name.unwrap_or(c.client_name);
        c.compact_catch_up_after = compact_catch_up_after.unwrap_or(c.compact_catch_up_after);
        c.replica_durability =
            replica_durability_arg(py, replica_durability, replica_flush_interval)?;
        Ok(PySubscriberConfig(c))
    }

    /// Subscribes to database ``name`` and returns its ``Subscription``, after catching up
    /// from the version stored locally (the GIL is released and Ctrl-C works meanwhile).
    ///
    /// ``on_update(update)`` is called on the subscription's thread after each master
    /// transaction is applied, in version order, **at least once**: the replica keeps what a
    /// callback is to see until it returned, so callbacks cut off by a crash, ``kill -9`` or
    /// ``close()`` run again at the next subscribe. If it raises,
    /// ``on_error(exception, update)`` is called if given, else ``sys.unraisablehook``; the
    /// error is counted in ``stats()["callback_errors"]`` and the subscription goes on.
    ///
    /// Without ``on_update``, updates are queued for ``Subscription.updates()``; at most
    /// ``queue_size`` are kept (the oldest are dropped and counted in
    /// ``stats()["updates_dropped"]``; ``0`` disables the queue).
    ///
    /// ``after=`` the version the host holds gives **exactly once**: a host that stores each
    /// update's data and version in one transaction of its own passes the version it stored
    /// at every subscribe, and gets exactly the updates after it (from the replica's kept
    /// updates or the publisher's journal), or, when nothing reaches back that far or the
    /// master's history changed, one update with ``reset`` set holding the whole state.
    ///
    /// ``participant=True`` makes this replica a participant in the database's two-phase
    /// updates (``Transaction.commit_two_phase``): each waits for its vote. ``vote(update)``
    /// is called on the subscription's thread before anything of the update is visible;
    /// returning ``None`` or ``True`` votes PREPARED, returning a string (the reason) or
    /// ``False`` refuses. An exception refuses too, with ``"ExceptionType: message"`` as
    /// the reason, and is reported like an ``on_update`` error. Without ``vote`` the
    /// replica votes PREPARED whenever it can apply the update.
    #[pyo3(signature = (
        name, on_update = None, *, on_error = None, queue_size = 10000, participant = false,
        vote = None, after = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &self,
        py: Python<'_>,
        name: &str,
        on_update: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
        queue_size: usize,
        participant: bool,
        vote: Option<Bound<'_, PyAny>>,
        after: Option<u64>,
    ) -> PyResult<PySubscription> {
        // The engine refuses a closed subscriber (closed here or by close_all).
        for (what, f) in [
            ("on_update", &on_update),
            ("on_error", &on_error),
            ("vote", &vote),
        ] {
            if f.as_ref().is_some_and(|f| !f.is_callable()) {
                return Err(PyTypeError::new_err(format!("{what} must be callable")));
            }
        }
        if vote.is_some() && !participant {
            return Err(raise(
                py,
                ErrorKind::Config,
                "vote= is only called for a participant: pass participant=True",
            ));
        }
        let queue =
            (on_update.is_none() && queue_size > 0).then(|| Arc::new(UpdateQueue::new(queue_size)));
        let delivery = Arc::new(Delivery {
            on_update: on_update.map(Bound::unbind),
            on_error: on_error.map(Bound::unbind),
            vote: vote.map(Bound::unbind),
            queue: queue.clone(),
            errors: Arc::new(AtomicU64::new(0)),
        });
        let errors = delivery.errors.clone();
        let callback: Option<mcsync::UpdateCallback> =
            if delivery.on_update.is_some() || delivery.queue.is_some() {
                let d = Arc::clone(&delivery);
                Some(Box::new(move |u: &mcsync::Update| d.deliver(u)))
            } else {
                None
            };
        let voter: Option<mcsync::VoteCallback> = if delivery.vote.is_some() {
            let d = Arc::clone(&delivery);
            Some(Box::new(move |u: &mcsync::Update| d.vote(u)))
        } else {
            None
        };
        drop(delivery);
        let subscriber = Arc::clone(&self.core);
        let name_owned = name.to_owned();
        let options = mcsync::SubscribeOptions {
            callback,
            after,
            participant,
            vote: voter,
        };
        let core = interruptible(py, "subscribe", move || {
            subscriber.subscribe_with_options(&name_owned, options)
        })?
        .or_raise(py)?;
        Ok(PySubscription {
            core: ReleaseOnDrop::new(core),
            subscriber: ReleaseOnDrop::new(Arc::clone(&self.core)),
            queue,
            callback_errors: errors,
            participant,
        })
    }

    /// Compares the local replica of ``name`` with the publisher's current state by range
    /// digests of content hashes, without changing anything, and returns a
    /// ``ResyncReport`` (``in_agreement`` tells the verdict). The replica's hashes are
    /// recomputed from its data, so records edited behind mcsync's back are found. Works
    /// with or without a live subscription; the GIL is released and Ctrl-C interrupts it.
    fn verify(&self, py: Python<'_>, name: &str) -> PyResult<PyResyncReport> {
        self.one_shot(py, name, false)
    }

    /// Makes the local replica of ``name`` equal to the publisher's state now, by hashes
    /// (fetching what differs, deleting what the publisher lacks, then the journal since),
    /// without subscribing: for a replica restored from a backup or repaired by hand.
    /// Returns a ``ResyncReport``. Raises ``ConfigError`` while this subscriber has a live
    /// subscription to ``name``; use ``Subscription.request_resync()`` then. The GIL is
    /// released and Ctrl-C interrupts the wait (the resync then finishes in the background).
    fn resync(&self, py: Python<'_>, name: &str) -> PyResult<PyResyncReport> {
        self.one_shot(py, name, true)
    }

    /// ``(host, port)`` of the publisher's control server (its ``Publisher.control_addr``).
    #[getter]
    fn control_addr(&self) -> (String, u16) {
        addr_tuple(self.server)
    }

    /// Deprecated name of ``control_addr``.
    #[getter]
    fn server(&self, py: Python<'_>) -> PyResult<(String, u16)> {
        PyErr::warn(
            py,
            &py.get_type::<PyDeprecationWarning>(),
            c"Subscriber.server is now Subscriber.control_addr",
            1,
        )?;
        Ok(addr_tuple(self.server))
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Every subscription's counters, gauges, version and latency histogram (labelled by
    /// database), in the OpenMetrics text format Prometheus scrapes.
    fn metrics(&self) -> String {
        self.core.metrics()
    }

    /// Closes every subscription and joins their threads (with the GIL released).
    /// Idempotent; replicas stay readable through their ``Subscription`` objects.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
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
        self.close(py)?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Subscriber control_addr={}{}>",
            self.server,
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// A live replica of one database, kept current by its own threads: a read-only mapping
/// of ``bytes`` keys to ``bytes`` values (a ``collections.abc.Mapping``).
///
/// Read it with ``get``, ``[key]``, ``in``, ``len()``, iteration (over keys, in key
/// order), ``keys()``, ``values()`` and ``items()``; keys may be given as ``str`` (encoded
/// as UTF-8). Iteration, ``keys()``, ``values()`` and ``items()`` each read one consistent
/// version. ``dict(subscription)`` reads key by key while updates may land between reads;
/// ``dict(subscription.items())`` is one version. ``version`` is the master version it
/// holds. Use it as a context manager, or call ``close()``.
#[pyclass(frozen, module = "mcsync", name = "Subscription")]
pub(crate) struct PySubscription {
    core: ReleaseOnDrop<mcsync::Subscription>,
    // Keeps the subscriber (and its store) open while the subscription is referenced, and
    // reaches the publisher for `wait_until_current`.
    subscriber: ReleaseOnDrop<Arc<mcsync::Subscriber>>,
    queue: Option<Arc<UpdateQueue>>,
    callback_errors: Arc<AtomicU64>,
    participant: bool,
}

impl PySubscription {
    /// The replica as a dict of one consistent version.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let records = py
            .detach(|| self.core.iter().map(|i| i.collect::<Vec<_>>()))
            .or_raise(py)?;
        let d = PyDict::new(py);
        for (k, v) in records {
            d.set_item(PyBytes::new(py, &k), PyBytes::new(py, &v))?;
        }
        Ok(d)
    }

    /// Every key of one consistent version, in key order.
    fn key_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let keys = py.detach(|| self.core.keys()).or_raise(py)?;
        PyList::new(py, keys.iter().map(|k| PyBytes::new(py, k)))
    }

    /// Runs `wait` (one slice of an engine wait) with the GIL released until it returns,
    /// checking for signals between slices; once `deadline` passes, raises `TimeoutError`
    /// saying the subscription was `waiting` for something.
    fn wait_sliced<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        deadline: Option<Instant>,
        waiting: &str,
        wait: impl Fn(Duration) -> mcsync::Result<T> + Sync,
    ) -> PyResult<T> {
        loop {
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            match py.detach(|| wait(slice)) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    if deadline.expired() {
                        return Err(raise(
                            py,
                            ErrorKind::Timeout,
                            format!(
                                "database {:?} at version {} after {}s, {waiting}",
                                self.core.name(),
                                self.core.version(),
                                timeout.unwrap_or_default()
                            ),
                        ));
                    }
                    py.check_signals()?;
                }
                Err(e) => return Err(crate::errors::to_py(py, e)),
            }
        }
    }
}

#[pymethods]
impl PySubscription {
    /// Name of the replicated database.
    #[getter]
    fn name(&self) -> &str {
        self.core.name()
    }

    /// The master version the replica holds; every callback up to it has run.
    #[getter]
    fn version(&self) -> u64 {
        self.core.version()
    }

    /// Whether the subscription is closed (or stopped after a storage failure).
    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Whether it was made with ``participant=True`` (it votes on two-phase updates).
    #[getter]
    fn participant(&self) -> bool {
        self.participant
    }

    /// Asks the subscription's thread to resync the replica by hashes now (for a store
    /// restored from a backup or edited by hand) and returns at once. Progress shows in
    /// ``stats()`` (``catchups_resync``, ``resync_fetched``, ``resync_deleted``,
    /// ``resync_bytes``). The callback sees what changed, together with the journal updates
    /// after the publisher's snapshot, as one update at the version the resync reached.
    fn request_resync(&self) {
        self.core.request_resync();
    }

    /// The replica's value of ``key``, or ``default``.
    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let key = bytes_arg(key, "key")?;
        Ok(match self.core.get(key).or_raise(py)? {
            Some(v) => Some(PyBytes::new(py, &v).into_any()),
            None => default,
        })
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let k = bytes_arg(key, "key")?;
        match self.core.get(k).or_raise(py)? {
            Some(v) => Ok(PyBytes::new(py, &v)),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    /// ``key in subscription``: ``False`` for anything but ``bytes``, ``bytearray`` and
    /// ``str``.
    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(k) = bytes_arg(key, "key") else {
            return Ok(false);
        };
        Ok(self.core.get(k).or_raise(py)?.is_some())
    }

    /// Number of records (LMDB's count; no record is read).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let n = self.core.len().or_raise(py)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Iterates over the keys of one consistent version, in key order.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        self.key_list(py)?.try_iter()
    }

    /// The keys of one consistent version, in key order (a ``KeysView`` of a snapshot:
    /// it does not change as the replica does).
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        for k in self.key_list(py)? {
            d.set_item(k, py.None())?;
        }
        d.call_method0("keys")
    }

    /// The values of one consistent version, in key order (a ``ValuesView`` of a
    /// snapshot).
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.snapshot(py)?.call_method0("values")
    }

    /// Every record of one consistent version in key order, as ``(key, value)`` pairs (an
    /// ``ItemsView`` of a snapshot: it does not change as the replica does).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.snapshot(py)?.call_method0("items")
    }

    /// Equal to a mapping with the same records (as ``collections.abc.Mapping`` is).
    fn __eq__<'py>(
        &self,
        py: Python<'py>,
        other: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mapping = py.import("collections.abc")?.getattr("Mapping")?;
        if !other.is_instance(&mapping)? {
            return Ok(py.NotImplemented().into_bound(py));
        }
        let mine = self.snapshot(py)?;
        let theirs = PyDict::new(py);
        for item in other.call_method0("items")?.try_iter()? {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            theirs.set_item(k, v)?;
        }
        Ok(PyBool::new(py, mine.eq(&theirs)?).to_owned().into_any())
    }

    /// Waits until the replica reaches ``version``; ``timeout`` in seconds (``None`` waits
    /// forever). Raises ``TimeoutError`` when it passes, ``ClosedError`` if the subscription
    /// closes, ``StorageError`` if it stopped on a storage failure. The GIL is released and
    /// Ctrl-C interrupts the wait. Do not call it from this subscription's own callback:
    /// the version advances only after the callback returns.
    #[pyo3(signature = (version, timeout = None))]
    fn wait_for_version(&self, py: Python<'_>, version: u64, timeout: Option<f64>) -> PyResult<()> {
        let deadline = deadline_arg(py, timeout)?;
        self.wait_sliced(
            py,
            timeout,
            deadline,
            &format!("waiting for {version}"),
            |slice| self.core.wait_for_version(version, slice),
        )
    }

    /// Waits until the replica has caught up with the version the publisher had when this
    /// subscription registered, and every callback up to it has run (replays of callbacks
    /// cut off by a crash or close included); returns that version. ``timeout`` in seconds
    /// (``None`` waits forever). Raises like ``wait_for_version``; the GIL is released and
    /// Ctrl-C interrupts the wait. Do not call it from this subscription's own callback.
    #[pyo3(signature = (timeout = None))]
    fn wait_caught_up(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        let deadline = deadline_arg(py, timeout)?;
        self.wait_sliced(py, timeout, deadline, "catching up", |slice| {
            self.core.wait_caught_up(slice)
        })
    }

    /// Waits until the replica has caught up with the version the publisher has **now**,
    /// and every callback up to it has run; returns that version. No version needs to be
    /// known: it is asked over a short control connection of its own (a registration
    /// closed again at once). ``timeout`` in seconds covers the question and the wait
    /// (``None`` waits forever; the question itself gives up after ``repair_io_timeout``).
    /// Raises like ``wait_for_version``, and ``IoError`` when the publisher cannot be
    /// reached or does not answer. The GIL is released and Ctrl-C interrupts the wait. Do
    /// not call it from this subscription's own callback.
    #[pyo3(signature = (timeout = None))]
    fn wait_until_current(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        let deadline = deadline_arg(py, timeout)?;
        if self.core.is_closed() {
            // The engine says why: closed, a storage failure, a revoked access.
            py.detach(|| self.core.wait_for_version(u64::MAX, Duration::ZERO))
                .or_raise(py)?;
        }
        let io_timeout = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let sub = (*self.core).clone();
        let subscriber = Arc::clone(&self.subscriber);
        let current = interruptible(py, "ask-version", move || {
            sub.publisher_version(&subscriber, io_timeout)
        })?
        .or_raise(py)?;
        self.wait_sliced(
            py,
            timeout,
            deadline,
            &format!("waiting for {current} (the publisher's version when asked)"),
            |slice| self.core.wait_for_version(current, slice),
        )?;
        Ok(current)
    }

    /// Iterates over updates as they are applied (pull style, for a subscription made
    /// without ``on_update``), in version order. Iteration ends when no update arrives
    /// within ``timeout`` seconds (``None``: wait until the subscription closes). The GIL is
    /// released while waiting and Ctrl-C interrupts it.
    #[pyo3(signature = (timeout = None))]
    fn updates(
        slf: Bound<'_, Self>,
        py: Python<'_>,
        timeout: Option<f64>,
    ) -> PyResult<PyUpdateIterator> {
        let idle = timeout.map(|t| seconds_arg(py, t, "timeout")).transpose()?;
        if slf.get().queue.is_none() {
            return Err(raise(
                py,
                ErrorKind::Config,
                "updates() needs a subscription made without on_update and with queue_size > 0",
            ));
        }
        Ok(PyUpdateIterator {
            subscription: slf.unbind(),
            idle,
        })
    }

    /// A snapshot of the subscription's counters, as a dict (the engine's counters plus
    /// ``callback_errors``, which counts exceptions from ``on_update`` and ``vote``, and
    /// ``updates_dropped``).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = stats_dict(py, self.core.stats().fields())?;
        d.set_item(
            "callback_errors",
            self.callback_errors.load(Ordering::Relaxed),
        )?;
        let dropped = self
            .queue
            .as_ref()
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed));
        d.set_item("updates_dropped", dropped)?;
        Ok(d)
    }

    /// Stops the subscription's threads (with the GIL released) and ends ``updates()``
    /// iterators. Idempotent; safe from another thread while a callback runs (it waits for
    /// the callback) and from the callback itself (it returns at once).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(q) = &self.queue {
            q.close();
        }
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
        self.close(py)?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<mcsync.Subscription {:?} version={}{}>",
            self.core.name(),
            self.core.version(),
            if self.core.is_closed() { " closed" } else { "" }
        )
    }
}

/// Iterator returned by ``Subscription.updates()``.
#[pyclass(frozen, module = "mcsync", name = "UpdateIterator")]
pub(crate) struct PyUpdateIterator {
    subscription: Py<PySubscription>,
    idle: Option<Duration>,
}

#[pymethods]
impl PyUpdateIterator {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyUpdate>>> {
        let sub = self.subscription.get();
        let Some(queue) = &sub.queue else {
            return Ok(None);
        };
        let deadline = self.idle.and_then(|d| Instant::now().checked_add(d));
        loop {
            // A zero slice once the deadline passed still takes an update already queued.
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            if let Some(u) = py.detach(|| queue.pop(slice)) {
                return PyUpdate::from_core(py, &u).map(Some);
            }
            if queue.closed.load(Ordering::SeqCst) || sub.core.is_closed() || deadline.expired() {
                return Ok(None);
            }
            py.check_signals()?;
        }
    }
}
