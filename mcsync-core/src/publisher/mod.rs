//! The public publisher API: open a store, publish databases, commit updates.
//!
//! Threads: the host's threads call `commit`; one intake thread groups concurrent commits
//! into one durable LMDB transaction and answers each caller with its version; one
//! multicaster thread per database sends; the repair server answers catch-up requests.

//!
//! One idea per file: `sequencer` (versions, queues behind rounds, batches; sans-IO) driven
//! by the `intake` thread; `journal` (the LMDB journal and the async writer); `coordinator`
//! (the publisher's side of two-phase rounds); `maintenance` (retention, adaptation,
//! quiescing, schedules, rotation); `database` (what a published database shares);
//! `transaction` (Transaction and Prepared).

mod coordinator;
mod database;
mod import;
mod intake;
mod journal;
mod maintenance;
mod sequencer;
mod transaction;

pub use transaction::{Pending, PendingPrepare, Prepared, Transaction};

use crate::auth::{Authenticator, FailureLimiter, Grant, UsersFile};
use crate::config::{Authentication, Durability, PublisherConfig, Schedule};
use crate::net::repair_server::{RepairServer, ServerContext, SubscriberRecord};
use crate::net::tls::ServerTls;
use crate::net::StopFlag;
use crate::stats::{PublisherCounters, PublisherStats};
use crate::store::PublisherStore;
use crate::sync::{Locked, RwLocked};
use crate::wire::update::update_encoded_len;
use crate::{Error, Result};
use crossbeam_channel as chan;
use database::{start_database, DbShared};
use intake::{intake_loop, Intake};
use journal::JournalWriter;
use maintenance::{apply_retention, maintenance_loop, rotate};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Commits waiting for the intake thread; callers block when it is full.
const INTAKE_QUEUE: usize = 4096;

/// What the control server shares with the publisher: the store, counters, identity,
/// authentication and two-phase tally.
fn server_context(
    config: &PublisherConfig,
    store: &Arc<PublisherStore>,
    counters: &Arc<PublisherCounters>,
) -> Result<Arc<ServerContext>> {
    let tls = ServerTls::load(&config.identity, &config.data_dir)?;
    Ok(Arc::new(ServerContext {
        store: store.clone(),
        databases: Default::default(),
        counters: counters.clone(),
        max_request_frame: 64 << 10,
        stop: StopFlag::default(),
        fingerprint: tls.fingerprint.clone(),
        tls,
        authenticator: authenticator(&config.authentication)?,
        limiter: FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30)),
        revoked: std::sync::RwLock::new(store.revoked()?.into_iter().collect()),
        registry: Mutex::new(HashMap::new()),
        auth_cache: Mutex::new(HashMap::new()),
        rotate: Mutex::new(None),
        known_good: Mutex::new(std::collections::HashSet::new()),
        two_phase: Default::default(),
    }))
}

/// The error of a call on a closed publisher.
fn publisher_closed() -> Error {
    Error::Closed("publisher is closed".into())
}

/// Checks a database name: 1 to 200 bytes of letters, digits, `-`, `_`, `.`.
pub(crate) fn validate_database_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "database name {name:?} must be 1..=200 characters of [A-Za-z0-9._-]"
        )))
    }
}

/// What every handle and thread of one publisher shares.
struct Inner {
    config: PublisherConfig,
    store: Arc<PublisherStore>,
    counters: Arc<PublisherCounters>,
    intake_tx: Mutex<Option<chan::Sender<Intake>>>,
    intake: Mutex<Option<JoinHandle<()>>>,
    databases: Mutex<HashMap<String, Arc<DbShared>>>,
    server_ctx: Arc<ServerContext>,
    server: Mutex<Option<RepairServer>>,
    control_addr: SocketAddr,
    fingerprint: Option<String>,
    schedule: Mutex<Schedule>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    stop: crate::net::StopFlag,
}

impl Inner {
    /// Where commits go; `Closed` once the publisher is closing.
    fn intake(&self) -> Result<chan::Sender<Intake>> {
        self.intake_tx.locked().clone().ok_or_else(publisher_closed)
    }

    /// Every published database (a snapshot of the list).
    fn database_list(&self) -> Vec<Arc<DbShared>> {
        self.databases.locked().values().cloned().collect()
    }
}

/// A publisher: the master side. Cheap to share across threads (`&Publisher` is enough
/// for every call); closing it stops every thread it started.
pub struct Publisher {
    inner: Arc<Inner>,
}

/// A handle to one published database. Clone it freely; it stays valid until the
/// publisher closes, after which every call fails with [`Error::Closed`].
#[derive(Clone)]
pub struct Database {
    db: Arc<DbShared>,
    inner: Arc<Inner>,
}

impl Publisher {
    /// Opens (or creates) the publisher's store in `config.data_dir`, starts the intake
    /// thread and the repair server, and resumes every database published before.
    pub fn open(config: PublisherConfig) -> Result<Publisher> {
        config.validate()?;
        let store = Arc::new(PublisherStore::open(&config.data_dir, config.map_size)?);
        store.check()?;
        let counters = Arc::new(PublisherCounters::default());
        let server_ctx = server_context(&config, &store, &counters)?;
        let server = RepairServer::start(config.control_addr, server_ctx.clone())?;
        let control_addr = server.addr();
        let (tx, rx) = chan::bounded(INTAKE_QUEUE);
        let stop = StopFlag::default();
        let (s2, x2, f2) = (store.clone(), server_ctx.clone(), stop.clone());
        let writer = match config.durability {
            Durability::Sync => None,
            Durability::Async => Some(JournalWriter::start(store.clone(), counters.clone())?),
        };
        let intake = std::thread::Builder::new()
            .name("mcsync-intake".into())
            .spawn(move || intake_loop(rx, &s2, &x2, &f2, writer))
            .map_err(|e| Error::io("spawning intake thread", e))?;
        let publisher = Publisher {
            inner: Arc::new(Inner {
                fingerprint: server_ctx.fingerprint.clone(),
                schedule: Mutex::new(config.schedule.clone()),
                config,
                store,
                counters,
                intake_tx: Mutex::new(Some(tx)),
                intake: Mutex::new(Some(intake)),
                databases: Mutex::new(HashMap::new()),
                server_ctx,
                server: Mutex::new(Some(server)),
                control_addr,
                maintenance: Mutex::new(None),
                stop,
            }),
        };
        for name in publisher.inner.store.database_names()? {
            publisher.database(&name)?;
        }
        let w = Arc::downgrade(&publisher.inner);
        let rotate_by_name = move |name: &str| {
            let Some(inner) = w.upgrade() else { return };
            let db = inner.databases.locked().get(name).cloned();
            if let Some(db) = db {
                if let Err(e) = rotate(&inner, &db) {
                    log::error!("database {name:?}: key rotation failed: {e}");
                }
            }
        };
        *publisher.inner.server_ctx.rotate.locked() = Some(Box::new(rotate_by_name));
        let weak = Arc::downgrade(&publisher.inner);
        let m = std::thread::Builder::new()
            .name("mcsync-maintenance".into())
            .spawn(move || maintenance_loop(weak))
            .map_err(|e| Error::io("spawning maintenance thread", e))?;
        *publisher.inner.maintenance.locked() = Some(m);
        if let Some(fp) = &publisher.inner.fingerprint {
            log::info!("publisher on {control_addr}, certificate SHA-256 fingerprint {fp}");
        }
        Ok(publisher)
    }

    /// SHA-256 fingerprint of the control channel's certificate (64 hex digits), for
    /// subscribers to pin; `None` with `ServerIdentity::InsecureLoopback`.
    pub fn fingerprint(&self) -> Option<&str> {
        self.inner.fingerprint.as_deref()
    }

    /// Cuts `user` off: its sessions are refused from now on (also after a restart), and
    /// every database's key is rotated so it cannot decrypt anything published after this
    /// call. Other subscribers re-register and continue.
    pub fn revoke(&self, user: &str) -> Result<()> {
        self.inner.store.revoke(user)?;
        self.inner.server_ctx.revoke(user);
        let dbs: Vec<_> = self.inner.database_list();
        for db in dbs {
            rotate(&self.inner, &db)?;
        }
        Ok(())
    }

    /// Subscribers currently registered (released by CLOSE SUBSCRIPTION or revocation).
    pub fn subscribers(&self) -> Vec<SubscriberRecord> {
        let mut v: Vec<_> = self
            .inner
            .server_ctx
            .registry
            .locked()
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// Trims every database's journal now as the retention policy says (the maintenance
    /// thread also does this about once a second). The state is first brought up to every
    /// commit, since retention never trims past it. Returns the entries removed.
    pub fn apply_retention(&self) -> Result<u64> {
        self.inner.store.apply_journal()?;
        apply_retention(&self.inner)
    }

    /// Changes the multicast schedule at run time (takes effect within about 50 ms). A
    /// window out of range is refused ([`Schedule::validate`]) and the schedule stays.
    pub fn set_schedule(&self, schedule: Schedule) -> Result<()> {
        schedule.validate()?;
        *self.inner.schedule.locked() = schedule;
        Ok(())
    }

    /// The address subscribers connect to (the repair / control server).
    pub fn control_addr(&self) -> SocketAddr {
        self.inner.control_addr
    }

    /// The database called `name`, published from now on (created on first use; its
    /// versions continue across restarts).
    pub fn database(&self, name: &str) -> Result<Database> {
        validate_database_name(name)?;
        let inner = &self.inner;
        if inner.intake_tx.locked().is_none() {
            return Err(Error::Closed("publisher is closed".into()));
        }
        let mut dbs = inner.databases.locked();
        if let Some(db) = dbs.get(name) {
            return Ok(Database {
                db: db.clone(),
                inner: inner.clone(),
            });
        }
        let db = start_database(inner, name)?;
        dbs.insert(name.to_owned(), db.clone());
        inner
            .server_ctx
            .databases
            .write_locked()
            .insert(name.to_owned(), db.clone());
        Ok(Database {
            db,
            inner: inner.clone(),
        })
    }

    /// A snapshot of the publisher's counters.
    pub fn stats(&self) -> PublisherStats {
        self.inner.counters.snapshot()
    }

    /// Every counter and gauge, each database's version, journal start and key epoch, and
    /// what each registered subscriber last reported (lag, loss, latency), in the
    /// OpenMetrics text format Prometheus scrapes (serve it with
    /// [`metrics::CONTENT_TYPE`](crate::metrics::CONTENT_TYPE)). See docs/OPERATIONS.md.
    pub fn metrics(&self) -> String {
        let databases: Vec<_> = self
            .inner
            .database_list()
            .iter()
            .map(|d| crate::metrics::DatabaseView {
                name: d.name.clone(),
                committed: d.committed.load(Ordering::SeqCst),
                oldest: d.oldest.load(Ordering::SeqCst),
                key_epoch: d.keys.locked().current_epoch(),
            })
            .collect();
        crate::metrics::render_publisher(
            &self.stats(),
            &databases,
            &self.subscribers(),
            Instant::now(),
        )
    }

    /// Waits until every commit that has returned is journaled durably (and handed to
    /// multicast). With [`Durability::Sync`] that is already so; with
    /// [`Durability::Async`] it waits for the journal writer, and fails with `Storage` if
    /// a journal commit failed (the updates it held are lost).
    pub fn flush(&self) -> Result<()> {
        let tx = self.inner.intake()?;
        let (reply, rx) = chan::bounded(1);
        tx.send(Intake::Flush(reply))
            .map_err(|_| publisher_closed())?;
        rx.recv().map_err(|_| publisher_closed())?
    }

    /// Whether [`close`](Self::close) was called (or the publisher was dropped): commits
    /// then fail with `Error::Closed`.
    pub fn is_closed(&self) -> bool {
        self.inner.intake_tx.locked().is_none()
    }

    /// Stops accepting commits, finishes those in progress, multicasts what is queued for at
    /// most 2 s (`CLOSE_DRAIN`; the rest is in the journal, and subscribers fetch it from
    /// there), stops the repair server and joins every thread. Idempotent; dropping does the
    /// same.
    pub fn close(&self) -> Result<()> {
        close_inner(&self.inner);
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        close_inner(&self.inner);
    }
}

fn close_inner(inner: &Inner) {
    // The maintenance thread first, so no key rotation or schedule switch runs after close.
    inner.stop.stop();
    if let Some(h) = inner.maintenance.locked().take() {
        let _ = h.join();
    }
    drop(inner.intake_tx.locked().take());
    if let Some(h) = inner.intake.locked().take() {
        let _ = h.join();
    }
    // Every multicaster at once: each paces out what it has queued for at most
    // `CLOSE_DRAIN`, together rather than one after another.
    let dbs: Vec<_> = inner.database_list();
    for db in &dbs {
        drop(db.mcast_tx.locked().take());
    }
    for db in dbs {
        if let Some(h) = db.mcast_thread.locked().take() {
            let _ = h.join();
        }
    }
    if let Some(mut s) = inner.server.locked().take() {
        s.shutdown();
    }
    // Nothing writes any more: another publisher may open the directory.
    inner.store.release_lock();
}

fn authenticator(a: &Authentication) -> Result<Arc<dyn Authenticator>> {
    Ok(match a {
        Authentication::Open => {
            Arc::new(|_: &str, _: &str, _: SocketAddr| Ok(Grant::all(&[]).with_participant()))
        }
        Authentication::Custom(a) => a.clone(),
        Authentication::UsersFile(path) => {
            if !path.exists() {
                return Err(Error::Config(format!(
                    "no users file at {}: create one with `mcsync users add`, or configure an authenticator",
                    path.display()
                )));
            }
            Arc::new(UsersFile::load(path)?)
        }
    })
}

impl Database {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.db.name
    }

    /// Latest journaled version (0 before the first commit). With [`Durability::Async`] a
    /// version a commit returned is included once the journal writer has committed it.
    pub fn version(&self) -> u64 {
        self.db.committed.load(Ordering::SeqCst)
    }

    /// Oldest version the journal still holds (1 until retention trims it): a replica at
    /// an older version catches up by hash resync instead of from the journal.
    pub fn oldest_version(&self) -> u64 {
        use crate::net::repair_server::PublishedDatabase;
        self.db.info().oldest_version
    }

    /// The database's incarnation id: random, nonzero, drawn when the database was first
    /// published from this data directory and kept durably across restarts. Subscribers
    /// get it in HELLO_OK and STATUS; a replica that sees a different one (the publisher's
    /// data was replaced) knows its versions no longer match the master's history and
    /// resyncs.
    pub fn incarnation(&self) -> u64 {
        self.db.info.incarnation
    }

    /// Rotates this database's key now; returns the new epoch.
    pub fn rotate_key(&self) -> Result<u32> {
        rotate(&self.inner, &self.db)
    }

    /// The current key epoch.
    pub fn key_epoch(&self) -> u32 {
        self.db.keys.locked().current_epoch()
    }

    /// The multicast group and port this database is sent to.
    pub fn group(&self) -> SocketAddr {
        self.db.info.group
    }

    /// Starts a transaction.
    pub fn transaction(&self) -> Transaction {
        Transaction {
            db: self.clone(),
            ops: Vec::new(),
            encoded_len: update_encoded_len(&[]),
        }
    }

    /// Sets `key` to `value` in a transaction of its own; returns the new version once the
    /// journal holds it durably.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        let mut t = self.transaction();
        t.put(key, value)?;
        t.commit()
    }

    /// Deletes `key` in a transaction of its own; returns the new version.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64> {
        let mut t = self.transaction();
        t.delete(key)?;
        t.commit()
    }

    /// One record of the master state.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.store.get(self.db.tables, key.as_ref())
    }

    /// Every record of the master state, in key order (a snapshot).
    pub fn snapshot(&self) -> Result<Vec<crate::Record>> {
        self.inner.store.state(self.db.tables)
    }
}
