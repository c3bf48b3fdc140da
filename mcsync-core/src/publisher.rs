//! The public publisher API: open a store, publish databases, commit updates.
//!
//! Threads: the host's threads call `commit`; one intake thread groups concurrent commits
//! into one durable LMDB transaction and answers each caller with its version; one
//! multicaster thread per database sends; the repair server answers catch-up requests.

use crate::auth::{Authenticator, FailureLimiter, Grant, UsersFile};
use crate::config::{Authentication, Durability, PublisherConfig, Schedule, ASYNC_MAX_PENDING};
use crate::crypto::{EpochKeys, Key, KeyHandout, Keyring};
use crate::net::multicaster::{self, McastCmd, MulticasterParts, Outgoing, DECISION_REPEAT_FOR};
use crate::net::repair_server::{PublishedDatabase, RepairServer, ServerContext, SubscriberRecord};
use crate::net::tls::ServerTls;
use crate::net::{socket, wall_clock_us, StopFlag};
use crate::proto::adapt::{losses_by_user, AdaptConfig, BundleController};
use crate::proto::{RetransmitBuffer, SenderConfig};
use crate::stats::{add, inc, PublisherCounters, PublisherStats};
use crate::store::publisher::{DbTables, JournalEntry};
use crate::store::PublisherStore;
use crate::wire::control::DatabaseInfo;
use crate::wire::update::{
    encode_record, update_encoded_len, update_to_vec, validate_op, RecordKind, MAX_KEY_LEN,
};
use crate::{Error, Op, Result, Update};
use crossbeam_channel as chan;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Commits waiting for the intake thread; callers block when it is full.
const INTAKE_QUEUE: usize = 4096;
/// Most commits grouped into one LMDB transaction.
const MAX_GROUP: usize = 1024;
/// Most encoded bytes grouped into one LMDB transaction.
const MAX_GROUP_BYTES: usize = 64 << 20;

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

struct CommitRequest {
    db: Arc<DbShared>,
    ops: Vec<Op>,
    reply: chan::Sender<Result<u64>>,
}

/// A two-phase update asking for a version.
struct PrepareRequest {
    db: Arc<DbShared>,
    ops: Vec<Op>,
    reply: chan::Sender<Result<PreparedTicket>>,
}

/// What the intake hands a preparer: the version, where to send COMMIT (true) or ABORT
/// (false), and where the outcome comes back (the version, or 0 when rolled back).
struct PreparedTicket {
    version: u64,
    resolve: chan::Sender<bool>,
    done: chan::Receiver<Result<u64>>,
}

/// What the intake thread takes, in order.
enum Intake {
    Commit(CommitRequest),
    Prepare(PrepareRequest),
    /// Answer once every commit answered before is journaled.
    Flush(chan::Sender<Result<()>>),
}

struct DbShared {
    name: String,
    tables: DbTables,
    info: DatabaseInfo,
    committed: AtomicU64,
    /// The current key and the previous one for a bounded grace; never written to disk.
    /// Shared with the multicaster, which reports when it switched and drained.
    keys: Arc<Mutex<EpochKeys>>,
    /// Held for a whole rotation, so rotations of this database happen one at a time.
    rotating: Mutex<()>,
    last_rotation: Mutex<Instant>,
    registered: AtomicBool,
    multicast_on: AtomicBool,
    /// Oldest version the journal still holds.
    oldest: AtomicU64,
    /// Bundle size and rate adaptation from subscriber reports.
    adapt: Mutex<BundleController>,
    /// Multicast paused because most subscribers lose too much (since when).
    quiesced: Mutex<Option<Instant>>,
    mcast_tx: Mutex<Option<chan::Sender<McastCmd>>>,
    mcast_thread: Mutex<Option<JoinHandle<()>>>,
    retransmit: Arc<Mutex<RetransmitBuffer>>,
}

impl PublishedDatabase for DbShared {
    fn name(&self) -> &str {
        &self.name
    }
    fn info(&self) -> DatabaseInfo {
        let mut i = self.info.clone();
        i.current_version = self.committed.load(Ordering::SeqCst);
        let oldest = self.oldest.load(Ordering::SeqCst);
        i.oldest_version = oldest.min(i.current_version.max(1));
        i
    }
    fn tables(&self) -> DbTables {
        self.tables
    }
    fn committed_version(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }
    fn keys(&self) -> KeyHandout {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handout(Instant::now())
    }
    fn decision_acknowledged(&self, version: u64) {
        send_mcast(self, McastCmd::DecisionDone(version));
    }
    fn on_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }
    fn resend(&self, stream_id: u32, seq: u64) -> Option<Arc<Vec<u8>>> {
        let buf = self.retransmit.lock().unwrap_or_else(|e| e.into_inner());
        (buf.stream_id() == stream_id)
            .then(|| buf.get(seq))
            .flatten()
    }
}

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
        lock(&self.intake_tx).clone().ok_or_else(publisher_closed)
    }

    /// Every published database (a snapshot of the list).
    fn database_list(&self) -> Vec<Arc<DbShared>> {
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
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

/// A pending master transaction: operations collected by [`put`](Transaction::put) and
/// [`delete`](Transaction::delete), applied atomically by [`commit`](Transaction::commit).
/// Dropping it without commit discards it; nothing is written or sent.
pub struct Transaction {
    db: Database,
    ops: Vec<Op>,
    encoded_len: usize,
}

impl Publisher {
    /// Opens (or creates) the publisher's store in `config.data_dir`, starts the intake
    /// thread and the repair server, and resumes every database published before.
    pub fn open(config: PublisherConfig) -> Result<Publisher> {
        config.validate()?;
        let store = Arc::new(PublisherStore::open(&config.data_dir, config.map_size)?);
        store.check()?;
        let tls = ServerTls::load(&config.identity, &config.data_dir)?;
        let authenticator = authenticator(&config.authentication)?;
        let counters = Arc::new(PublisherCounters::default());
        let server_ctx = Arc::new(ServerContext {
            store: store.clone(),
            databases: Default::default(),
            counters: counters.clone(),
            max_request_frame: 64 << 10,
            stop: StopFlag::default(),
            fingerprint: tls.fingerprint.clone(),
            tls,
            authenticator,
            limiter: FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30)),
            revoked: std::sync::RwLock::new(store.revoked()?.into_iter().collect()),
            registry: Mutex::new(HashMap::new()),
            auth_cache: Mutex::new(HashMap::new()),
            rotate: Mutex::new(None),
            known_good: Mutex::new(std::collections::HashSet::new()),
            two_phase: Default::default(),
        });
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
            let db = inner
                .databases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned();
            if let Some(db) = db {
                if let Err(e) = rotate(&inner, &db) {
                    log::error!("database {name:?}: key rotation failed: {e}");
                }
            }
        };
        *publisher
            .inner
            .server_ctx
            .rotate
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(rotate_by_name));
        let weak = Arc::downgrade(&publisher.inner);
        let m = std::thread::Builder::new()
            .name("mcsync-maintenance".into())
            .spawn(move || maintenance_loop(weak))
            .map_err(|e| Error::io("spawning maintenance thread", e))?;
        *publisher
            .inner
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(m);
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
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// Trims every database's journal now as the retention policy says (the maintenance
    /// thread also does this about once a second). Returns the entries removed.
    pub fn apply_retention(&self) -> Result<u64> {
        apply_retention(&self.inner)
    }

    /// Changes the multicast schedule at run time (takes effect within about 50 ms).
    pub fn set_schedule(&self, schedule: Schedule) {
        *self
            .inner
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = schedule;
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
        if inner
            .intake_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(Error::Closed("publisher is closed".into()));
        }
        let mut dbs = inner.databases.lock().unwrap_or_else(|e| e.into_inner());
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
            .write()
            .unwrap_or_else(|e| e.into_inner())
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
                key_epoch: d
                    .keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .current_epoch(),
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
    if let Some(h) = inner
        .maintenance
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = h.join();
    }
    drop(
        inner
            .intake_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    if let Some(h) = inner
        .intake
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = h.join();
    }
    // Every multicaster at once: each paces out what it has queued for at most
    // `CLOSE_DRAIN`, together rather than one after another.
    let dbs: Vec<_> = inner.database_list();
    for db in &dbs {
        drop(db.mcast_tx.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
    for db in dbs {
        if let Some(h) = db
            .mcast_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
    if let Some(mut s) = inner
        .server
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        s.shutdown();
    }
    // Nothing writes any more: another publisher may open the directory.
    inner.store.release_lock();
}

fn group_for(m: &crate::MulticastConfig, index: u64) -> Result<SocketAddr> {
    let groups = u64::from(m.group_count);
    let port_off = index / groups;
    if port_off >= u64::from(m.port_count) {
        return Err(Error::Config(format!(
            "database number {index} has no group left: {} groups × {} ports configured",
            m.group_count, m.port_count
        )));
    }
    let g = u64::from(u32::from(m.group)) + index % groups;
    let addr = Ipv4Addr::from(u32::try_from(g).unwrap_or(0));
    if !addr.is_multicast() {
        return Err(Error::Config(format!(
            "database number {index}: group range from {} leaves the multicast space",
            m.group
        )));
    }
    Ok(SocketAddr::new(IpAddr::V4(addr), m.port + port_off as u16))
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

/// Longest a rotation waits for the multicaster to seal under the new epoch.
const REKEY_WAIT: Duration = Duration::from_secs(2);

/// Draws a new key epoch and key for `db`, hands it to the multicaster, and keeps the
/// previous key for a bounded grace (packets already built, late packets, repairs).
///
/// Rotations of one database are serialized (revocation, the schedule, an authenticator
/// refusal and `rotate_key` may race), and each waits until the multicaster sealed under
/// the new epoch (up to [`REKEY_WAIT`]): epochs are drawn, installed and sent in one order,
/// and the key handed out as "previous" is the one the multicaster was using.
fn rotate(inner: &Inner, db: &DbShared) -> Result<u32> {
    let _one = db.rotating.lock().unwrap_or_else(|e| e.into_inner());
    let epoch = inner.store.next_key_epoch(&db.name)?;
    let key = Key::generate();
    db.keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .rotate(epoch, key.clone());
    *db.last_rotation.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    let (done, switched) = chan::bounded(1);
    let sent = db
        .mcast_tx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|tx| tx.send(McastCmd::Rekey { epoch, key, done }).is_ok());
    if sent && switched.recv_timeout(REKEY_WAIT).is_err() {
        log::warn!(
            "database {:?}: the multicaster did not switch to key epoch {epoch} within \
             {REKEY_WAIT:?}",
            db.name
        );
    }
    inc(&inner.counters.key_rotations);
    log::info!("database {:?}: key rotated to epoch {epoch}", db.name);
    Ok(epoch)
}

/// Trims each database's journal per the retention policy (down to the minimum count
/// when the disk runs low, which is logged and counted).
fn apply_retention(inner: &Inner) -> Result<u64> {
    let mut policy = inner.config.retention.clone();
    if crate::store::free_disk_bytes(&inner.config.data_dir)
        .is_some_and(|f| f < policy.min_free_disk_bytes)
    {
        inc(&inner.counters.disk_low);
        log::error!(
            "data directory {} has less than {} bytes free: trimming journals to their minimum",
            inner.config.data_dir.display(),
            policy.min_free_disk_bytes
        );
        policy.max_bytes = 0;
        policy.max_age = Duration::ZERO;
    }
    let dbs: Vec<_> = inner.database_list();
    let mut total = 0;
    for db in dbs {
        loop {
            let n =
                inner
                    .store
                    .trim_journal(&db.name, db.tables, &policy, wall_clock_us(), 10_000)?;
            total += n;
            add(&inner.counters.journal_trimmed, n);
            if n < 10_000 {
                break;
            }
        }
        let oldest = inner.store.oldest_version(db.tables)?;
        if oldest > 0 && db.oldest.swap(oldest, Ordering::SeqCst) != oldest {
            send_mcast(&db, McastCmd::Oldest(oldest));
        }
    }
    Ok(total)
}

/// How long a quiesced database stays quiet before multicast is tried again.
const QUIESCE_FOR: Duration = Duration::from_secs(5);
/// Reports older than this are not used.
const REPORT_FRESH: Duration = Duration::from_secs(5);

/// Feeds each database's recent subscriber reports to its bundle controller and applies
/// the result: bundle size and rate to the multicaster, and quiescing when most
/// subscribers lose too much (they catch up by unicast meanwhile).
fn adapt_to_reports(inner: &Inner) {
    let reports: Vec<(String, String, f64)> = inner
        .server_ctx
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(|r| {
            let (rep, at) = r.report?;
            (at.elapsed() < REPORT_FRESH && !rep.unicast_only).then(|| {
                (
                    r.database.clone(),
                    r.user.clone(),
                    f64::from(rep.loss_ppm) / 1e6,
                )
            })
        })
        .collect();
    let dbs: Vec<_> = inner.database_list();
    for db in dbs {
        // One vote per user (the median of its registrations' reports).
        let losses = losses_by_user(
            reports
                .iter()
                .filter(|(d, _, _)| *d == db.name)
                .map(|(_, user, loss)| (user.as_str(), *loss)),
        );
        if losses.is_empty() {
            // Nobody on multicast reports (all backed off to unicast, or gone): a pause
            // has nothing left to protect once its minimum is over.
            let mut q = db.quiesced.lock().unwrap_or_else(|e| e.into_inner());
            if q.is_some_and(|since| since.elapsed() >= QUIESCE_FOR) {
                *q = None;
            }
            continue;
        }
        let (before, after) = {
            let mut a = db.adapt.lock().unwrap_or_else(|e| e.into_inner());
            let before = a.tuning();
            (before, a.on_reports(&losses))
        };
        if (after.bundle, after.rate) != (before.bundle, before.rate) {
            send_mcast(
                &db,
                McastCmd::Tune {
                    bundle_bytes: after.bundle,
                    packets_per_sec: after.rate,
                },
            );
        }
        inner
            .counters
            .bundle_bytes
            .store(after.bundle as u64, Ordering::Relaxed);
        inner
            .counters
            .packets_per_sec
            .store(after.rate, Ordering::Relaxed);
        let mut q = db.quiesced.lock().unwrap_or_else(|e| e.into_inner());
        match *q {
            None if after.quiesce => {
                log::warn!(
                    "database {:?}: most subscribers lose too much; multicast paused",
                    db.name
                );
                inc(&inner.counters.quiesces);
                *q = Some(Instant::now());
            }
            Some(since) if !after.quiesce && since.elapsed() >= QUIESCE_FOR => *q = None,
            _ => {}
        }
    }
}

/// Minute of the day, UTC.
fn minute_of_day() -> u32 {
    ((wall_clock_us() / 60_000_000) % 1440) as u32
}

/// Applies the schedule (multicast windows, multicast on first subscription) and timed
/// key rotation, every 50 ms, until the publisher closes.
fn maintenance_loop(weak: std::sync::Weak<Inner>) {
    let mut last_retention = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.is_stopped() {
            return;
        }
        if last_retention.elapsed() >= Duration::from_secs(1) {
            last_retention = Instant::now();
            let expired = inner
                .server_ctx
                .expire_registrations(Instant::now(), inner.config.registration_expiry);
            add(&inner.counters.registrations_expired, expired as u64);
            adapt_to_reports(&inner);
            if let Err(e) = apply_retention(&inner) {
                log::error!("journal retention failed: {e}");
            }
            let overdue = inner
                .server_ctx
                .two_phase
                .overdue(Instant::now(), DECISION_REPEAT_FOR);
            for (db, version, names) in overdue {
                log::warn!(
                    "database {db:?}: no acknowledgement of the two-phase decision on version \
                     {version} from {} within {DECISION_REPEAT_FOR:?}; declared failed (they \
                     learn the outcome from later versions or after a restart)",
                    names.join(", ")
                );
                add(
                    &inner.counters.two_phase_participants_failed,
                    names.len() as u64,
                );
            }
        }
        let open = inner
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_open(minute_of_day());
        let dbs: Vec<_> = inner.database_list();
        for db in dbs {
            let quiesced = db
                .quiesced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            let want = open
                && !quiesced
                && (!inner.config.multicast_on_first_subscription
                    || db.registered.load(Ordering::SeqCst));
            if db.multicast_on.swap(want, Ordering::SeqCst) != want {
                if let Some(tx) = &*db.mcast_tx.lock().unwrap_or_else(|e| e.into_inner()) {
                    let _ = tx.send(McastCmd::Multicast(want));
                }
                if want && inner.config.rotate_key_at_window_start {
                    let _ = rotate(&inner, &db);
                }
            }
            if let Some(every) = inner.config.key_rotation_interval {
                let last = *db.last_rotation.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= every {
                    if let Err(e) = rotate(&inner, &db) {
                        log::error!("database {:?}: key rotation failed: {e}", db.name);
                    }
                }
            }
        }
    }
}

fn start_database(inner: &Arc<Inner>, name: &str) -> Result<Arc<DbShared>> {
    let cfg = &inner.config;
    let m = &cfg.multicast;
    let index = inner.store.register_database(name)?;
    let group = group_for(m, index)?;
    let tables = inner.store.tables(name)?;
    let latest = inner.store.last_version(name)?;
    let oldest = inner.store.oldest_version(tables)?.max(1);
    let stream_id = inner.store.next_stream_id()?;
    // Drawn once per database and kept: replicas compare it to tell a changed history.
    let incarnation = inner.store.incarnation(name)?;
    // A fresh key and epoch at every start: a restarted publisher never seals under a key
    // a previous run used, and keys never touch the disk.
    let key_epoch = inner.store.next_key_epoch(name)?;
    let key = Key::generate();
    let epochs = Arc::new(Mutex::new(EpochKeys::new(key_epoch, key.clone())));
    let sock = socket::sender_socket(m.interface, m.ttl, m.loopback)?;
    let source = sock
        .local_addr()
        .map_err(|e| Error::io("multicast socket address", e))?;
    let (tx, rx) = chan::unbounded();
    let multicast_on = !cfg.multicast_on_first_subscription
        && inner
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_open(minute_of_day());
    if !multicast_on {
        let _ = tx.send(McastCmd::Multicast(false));
    }
    let retransmit = Arc::new(Mutex::new(RetransmitBuffer::new(
        stream_id,
        m.retransmit_buffer_bytes,
    )));
    let parts = MulticasterParts {
        retransmit: retransmit.clone(),
        database: name.to_owned(),
        socket: sock,
        group,
        keyring: Keyring::with_key(key_epoch, &key),
        key_epoch,
        epochs: epochs.clone(),
        stream_id,
        latest,
        oldest,
        config: SenderConfig {
            datagram_bytes: m.datagram_bytes,
            max_bundle_bytes: m.max_bundle_bytes,
            heartbeat_initial: m.heartbeat_initial,
            heartbeat_max: m.heartbeat_max,
            packets_per_sec: m.max_packets_per_sec,
            bytes_per_sec: m.max_bytes_per_sec,
            compress: true,
            max_backlog_bytes: m.max_backlog_bytes,
        },
        counters: inner.counters.clone(),
    };
    let thread = multicaster::spawn(parts, rx).map_err(|e| Error::io("spawning multicaster", e))?;
    Ok(Arc::new(DbShared {
        name: name.to_owned(),
        tables,
        info: DatabaseInfo {
            group,
            source,
            encrypted: true,
            keys: Vec::new(),
            older_keys_below: u64::MAX,
            groups: Vec::new(),
            current_version: latest,
            oldest_version: oldest,
            subscriber_id: 0,
            incarnation,
            stream_id,
        },
        committed: AtomicU64::new(latest),
        keys: epochs,
        rotating: Mutex::new(()),
        last_rotation: Mutex::new(Instant::now()),
        registered: AtomicBool::new(false),
        oldest: AtomicU64::new(oldest),
        adapt: Mutex::new(BundleController::new(AdaptConfig {
            max_bundle: m.max_bundle_bytes,
            min_bundle: (m.max_bundle_bytes / 16).max(2048),
            max_rate: m.max_packets_per_sec,
            min_rate: (m.max_packets_per_sec / 20).max(500),
            ..AdaptConfig::default()
        })),
        quiesced: Mutex::new(None),
        multicast_on: AtomicBool::new(multicast_on),
        mcast_tx: Mutex::new(Some(tx)),
        mcast_thread: Mutex::new(Some(thread)),
        retransmit,
    }))
}

/// A two-phase round waiting for its caller's decision.
struct OpenRound {
    db: Arc<DbShared>,
    update: Update,
    resolve: chan::Receiver<bool>,
    done: chan::Sender<Result<u64>>,
}

impl Intake {
    fn db(&self) -> Option<&Arc<DbShared>> {
        match self {
            Intake::Commit(r) => Some(&r.db),
            Intake::Prepare(p) => Some(&p.db),
            Intake::Flush(_) => None,
        }
    }
}

/// Groups whatever commits are queued into one durable LMDB transaction, then hands the
/// updates to the multicasters in version order and answers the callers. A two-phase
/// round holds what comes after it for its own database only, until its caller decides.
fn intake_loop(
    rx: chan::Receiver<Intake>,
    store: &PublisherStore,
    ctx: &ServerContext,
    stop: &StopFlag,
    writer: Option<JournalWriter>,
) {
    let c = &*ctx.counters;
    let mut next: HashMap<String, u64> = HashMap::new();
    // Two-phase rounds are told apart by their PREPARE's timestamp, kept strictly rising.
    let mut last_round = 0;
    let mut rounds: HashMap<String, OpenRound> = HashMap::new();
    // What arrived for a database with an open round, in order.
    let mut held: HashMap<String, VecDeque<Intake>> = HashMap::new();
    // Taken from the channel (or released by a decision), not yet handled.
    let mut ready: VecDeque<Intake> = VecDeque::new();
    let mut open = true;
    loop {
        // Decisions first: a decided round releases what waited behind it. Closing the
        // publisher rolls back every undecided round.
        let decided: Vec<(String, bool)> = rounds
            .iter()
            .filter_map(|(name, r)| match r.resolve.try_recv() {
                Ok(commit) => Some((name.clone(), commit)),
                Err(chan::TryRecvError::Disconnected) => Some((name.clone(), false)),
                Err(chan::TryRecvError::Empty) => stop.is_stopped().then(|| (name.clone(), false)),
            })
            .collect();
        for (name, commit) in decided {
            if let Some(r) = rounds.remove(&name) {
                finish_round(r, commit, &mut next, store, ctx);
            }
            for i in held.remove(&name).into_iter().flatten().rev() {
                ready.push_front(i);
            }
        }
        if ready.is_empty() {
            if !open && rounds.is_empty() {
                return;
            }
            // Wait for intake or a decision.
            let mut sel = chan::Select::new();
            if open {
                sel.recv(&rx);
            }
            for r in rounds.values() {
                sel.recv(&r.resolve);
            }
            let _ = sel.ready_timeout(Duration::from_millis(100));
            if open {
                match rx.try_recv() {
                    Ok(i) => ready.push_back(i),
                    Err(chan::TryRecvError::Disconnected) => open = false,
                    Err(chan::TryRecvError::Empty) => {}
                }
            }
            continue;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            let item = match ready.pop_front() {
                Some(i) => i,
                None if open => match rx.try_recv() {
                    Ok(i) => i,
                    Err(chan::TryRecvError::Empty) => break,
                    Err(chan::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                },
                None => break,
            };
            if let Some(db) = item.db().filter(|db| rounds.contains_key(&db.name)) {
                held.entry(db.name.clone()).or_default().push_back(item);
                continue;
            }
            match item {
                Intake::Commit(r) => {
                    bytes += update_encoded_len(&r.ops);
                    batch.push(r);
                }
                // A two-phase update or a flush waits for the commits taken before it.
                i @ (Intake::Prepare(_) | Intake::Flush(_)) if !batch.is_empty() => {
                    ready.push_front(i);
                    break;
                }
                Intake::Prepare(p) => {
                    if let Some(why) = writer.as_ref().and_then(JournalWriter::failure) {
                        let _ = p.reply.send(Err(stopped_by(&why)));
                        continue;
                    }
                    // Its PREPARE follows the versions before it onto the wire.
                    if let Some(w) = &writer {
                        let _ = w.flush();
                    }
                    let round = begin_round(p, (&mut next, &mut last_round), ctx);
                    rounds.insert(round.db.name.clone(), round);
                }
                Intake::Flush(reply) => {
                    let _ = reply.send(writer.as_ref().map_or(Ok(()), JournalWriter::flush));
                }
            }
        }
        if !batch.is_empty() {
            commit_batch(batch, &mut next, store, c, writer.as_ref());
        }
    }
}

/// The next version of `db` (not yet taken).
fn next_version(next: &mut HashMap<String, u64>, db: &DbShared) -> u64 {
    *next
        .entry(db.name.clone())
        .or_insert_with(|| db.committed.load(Ordering::SeqCst))
        + 1
}

fn send_mcast(db: &DbShared, cmd: McastCmd) {
    if let Some(tx) = &*db.mcast_tx.lock().unwrap_or_else(|e| e.into_inner()) {
        let _ = tx.send(cmd);
    }
}

/// An update with its version assigned, ready to journal.
struct Staged {
    db: Arc<DbShared>,
    update: Update,
    encoded: Arc<Vec<u8>>,
}

/// Assigns the next versions to a group of one-phase commits.
fn stage(batch: &mut [CommitRequest], next: &mut HashMap<String, u64>) -> Vec<Staged> {
    let ts = wall_clock_us();
    batch
        .iter_mut()
        .map(|r| {
            let v = next_version(next, &r.db);
            next.insert(r.db.name.clone(), v);
            let update = Update {
                version: v,
                timestamp_us: ts,
                ops: std::mem::take(&mut r.ops),
                reset: false,
            };
            let encoded = Arc::new(update_to_vec(&update));
            Staged {
                db: r.db.clone(),
                update,
                encoded,
            }
        })
        .collect()
}

/// Journals staged updates in one durable LMDB transaction, then marks them committed and
/// hands them to the multicasters in version order.
fn journal(staged: &[Staged], store: &PublisherStore, c: &PublisherCounters) -> Result<()> {
    let entries: Vec<JournalEntry<'_>> = staged
        .iter()
        .map(|s| JournalEntry {
            name: &s.db.name,
            tables: s.db.tables,
            update: &s.update,
            encoded: &s.encoded,
        })
        .collect();
    store.append(&entries)?;
    crate::crash::point("journal.after_commit");
    inc(&c.journal_commits);
    add(&c.updates_committed, staged.len() as u64);
    let enc_bytes: usize = staged.iter().map(|s| s.encoded.len()).sum();
    add(&c.bytes_committed, enc_bytes as u64);
    for s in staged {
        s.db.committed.store(s.update.version, Ordering::SeqCst);
        send_mcast(
            &s.db,
            McastCmd::Update(Outgoing {
                version: s.update.version,
                encoded: s.encoded.clone(),
            }),
        );
    }
    Ok(())
}

/// Commits a group of one-phase commits: with `Durability::Sync` journals them and then
/// answers the callers; with an async `writer`, answers at once and hands them to it.
fn commit_batch(
    mut batch: Vec<CommitRequest>,
    next: &mut HashMap<String, u64>,
    store: &PublisherStore,
    c: &PublisherCounters,
    writer: Option<&JournalWriter>,
) {
    if let Some(why) = writer.and_then(JournalWriter::failure) {
        add(&c.commits_refused, batch.len() as u64);
        for r in batch {
            let _ = r.reply.send(Err(stopped_by(&why)));
        }
        return;
    }
    let staged = stage(&mut batch, next);
    let result = match writer {
        Some(w) => {
            for (r, s) in batch.iter().zip(&staged) {
                let _ = r.reply.send(Ok(s.update.version));
            }
            w.journal(staged);
            return;
        }
        None => journal(&staged, store, c),
    };
    match result {
        Ok(()) => {
            for (r, s) in batch.into_iter().zip(staged) {
                let _ = r.reply.send(Ok(s.update.version));
            }
        }
        Err(e) => {
            // Nothing was written: give the versions back.
            next.clear();
            add(&c.commits_refused, batch.len() as u64);
            for r in batch {
                let _ = r.reply.send(Err(Error::Storage(format!(
                    "journal commit for database {:?} failed: {}",
                    r.db.name,
                    e.message()
                ))));
            }
        }
    }
}

/// The error of every commit after the async journal writer failed.
fn stopped_by(why: &str) -> Error {
    Error::Storage(format!(
        "the publisher takes no more commits after a journal failure: {why}"
    ))
}

/// What the journal writer takes, in order.
enum WriterMsg {
    Journal(Vec<Staged>),
    /// Answer once everything before is journaled.
    Flush(chan::Sender<Result<()>>),
}

/// The journal writer of `Durability::Async`: a thread that group-commits what the intake
/// staged, then multicasts it. After a journal failure it journals nothing more, and every
/// later commit fails with the failure.
struct JournalWriter {
    tx: Option<chan::Sender<WriterMsg>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<WriterShared>,
}

/// What the intake and the writer thread share.
#[derive(Default)]
struct WriterShared {
    /// The journal failure that stopped the writer.
    failed: Mutex<Option<String>>,
    /// Updates handed over and not yet journaled.
    pending: Mutex<usize>,
    drained: Condvar,
}

impl JournalWriter {
    fn start(store: Arc<PublisherStore>, counters: Arc<PublisherCounters>) -> Result<Self> {
        let (tx, rx) = chan::unbounded();
        let shared = Arc::new(WriterShared::default());
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mcsync-journal".into())
            .spawn(move || writer_loop(rx, &store, &counters, &s2))
            .map_err(|e| Error::io("spawning journal writer", e))?;
        Ok(JournalWriter {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// The journal failure that stopped the writer, if any.
    fn failure(&self) -> Option<String> {
        lock(&self.shared.failed).clone()
    }

    /// Hands over staged updates; waits while [`ASYNC_MAX_PENDING`] are not yet journaled.
    fn journal(&self, staged: Vec<Staged>) {
        let mut pending = lock(&self.shared.pending);
        while *pending >= ASYNC_MAX_PENDING {
            pending = self
                .shared
                .drained
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        *pending += staged.len();
        drop(pending);
        self.send(WriterMsg::Journal(staged));
    }

    fn send(&self, msg: WriterMsg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }

    /// Waits until everything handed over before is journaled.
    fn flush(&self) -> Result<()> {
        let (tx, rx) = chan::bounded(1);
        self.send(WriterMsg::Flush(tx));
        rx.recv().map_err(|_| publisher_closed())?
    }
}

impl Drop for JournalWriter {
    /// Journals what is still queued, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn writer_loop(
    rx: chan::Receiver<WriterMsg>,
    store: &PublisherStore,
    c: &PublisherCounters,
    shared: &WriterShared,
) {
    while let Ok(first) = rx.recv() {
        // Everything waiting goes into one transaction.
        let mut group = Vec::new();
        let mut flushes = Vec::new();
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                WriterMsg::Journal(staged) => group.extend(staged),
                WriterMsg::Flush(reply) => flushes.push(reply),
            }
        }
        // (The lock is not held while journaling: the intake reads it for every commit.)
        let mut failure = lock(&shared.failed).clone();
        if failure.is_some() {
            add(&c.commits_lost, group.len() as u64);
        } else if !group.is_empty() {
            if let Err(e) = journal(&group, store, c) {
                log::error!(
                    "journal commit of {} acknowledged updates failed; they are lost, and the \
                     publisher takes no more commits: {e}",
                    group.len()
                );
                add(&c.commits_lost, group.len() as u64);
                failure = Some(e.message());
                *lock(&shared.failed) = failure.clone();
            }
        }
        for reply in flushes {
            let _ = reply.send(match &failure {
                None => Ok(()),
                Some(why) => Err(Error::Storage(format!("journal commit failed: {why}"))),
            });
        }
        *lock(&shared.pending) -= group.len();
        shared.drained.notify_all();
    }
}

/// Starts a two-phase update: multicast PREPARE at the next version and hand the caller a
/// ticket. The intake then holds every later commit of the database until the caller
/// decides ([`finish_round`]).
fn begin_round(
    p: PrepareRequest,
    (next, last_round): (&mut HashMap<String, u64>, &mut u64),
    ctx: &ServerContext,
) -> OpenRound {
    let db = p.db;
    let v = next_version(next, &db);
    *last_round = wall_clock_us().max(*last_round + 1);
    let u = Update {
        version: v,
        timestamp_us: *last_round,
        ops: p.ops,
        reset: false,
    };
    let participants: BTreeMap<u64, String> = ctx
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|r| r.participant && r.database == db.name)
        .map(|r| (r.id, format!("{} ({})", r.client, r.user)))
        .collect();
    ctx.two_phase
        .begin(&db.name, v, u.timestamp_us, participants);
    let mut prepare = Vec::new();
    encode_record(RecordKind::Prepare, &u, &mut prepare);
    send_mcast(&db, McastCmd::Control(Arc::new(prepare)));
    inc(&ctx.counters.two_phase_prepared);
    let (resolve_tx, resolve_rx) = chan::bounded(1);
    let (done_tx, done_rx) = chan::bounded(1);
    let ticket = PreparedTicket {
        version: v,
        resolve: resolve_tx,
        done: done_rx,
    };
    // A caller that went away drops the ticket, which rolls the update back.
    let _ = p.reply.send(Ok(ticket));
    OpenRound {
        db,
        update: u,
        resolve: resolve_rx,
        done: done_tx,
    }
}

/// Ends a two-phase update as its caller decided: COMMIT journals the version and
/// multicasts the decision; ABORT multicasts the decision and gives the version back.
fn finish_round(
    round: OpenRound,
    wants_commit: bool,
    next: &mut HashMap<String, u64>,
    store: &PublisherStore,
    ctx: &ServerContext,
) {
    let c = &*ctx.counters;
    let OpenRound {
        db,
        update: u,
        done,
        ..
    } = round;
    let v = u.version;
    let outcome = if wants_commit {
        let enc = update_to_vec(&u);
        let entry = JournalEntry {
            name: &db.name,
            tables: db.tables,
            update: &u,
            encoded: &enc,
        };
        store.append(&[entry]).map(|_| v).map_err(|e| {
            Error::Storage(format!(
                "journal commit of two-phase version {v} of database {:?} failed: {}",
                db.name,
                e.message()
            ))
        })
    } else {
        Ok(0)
    };
    let committed = matches!(outcome, Ok(x) if x == v);
    if committed {
        next.insert(db.name.clone(), v);
        db.committed.store(v, Ordering::SeqCst);
        inc(&c.journal_commits);
        inc(&c.updates_committed);
        inc(&c.two_phase_committed);
    } else {
        inc(&c.two_phase_aborted);
    }
    ctx.two_phase.decide(&db.name, v, committed);
    let decision = Update {
        version: v,
        timestamp_us: u.timestamp_us,
        ops: Vec::new(),
        reset: false,
    };
    let kind = if committed {
        RecordKind::CommitPrepared
    } else {
        RecordKind::Abort
    };
    let mut enc = Vec::new();
    encode_record(kind, &decision, &mut enc);
    send_mcast(
        &db,
        McastCmd::Decision {
            version: v,
            commit: committed,
            encoded: Arc::new(enc),
        },
    );
    let _ = done.send(outcome);
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
        self.db
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current_epoch()
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

impl Transaction {
    fn push(&mut self, op: Op) -> Result<()> {
        if op.key.len() > MAX_KEY_LEN {
            // Too large, like a value: the same error for either.
            return Err(Error::TooLarge(format!(
                "database {:?}: key of {} bytes exceeds {MAX_KEY_LEN} (LMDB's key limit)",
                self.db.name(),
                op.key.len()
            )));
        }
        validate_op(&op)
            .map_err(|m| Error::Config(format!("database {:?}: {m}", self.db.name())))?;
        let len = op.encoded_len();
        let max = self.db.inner.config.max_update_bytes;
        if self.encoded_len + len > max {
            inc(&self.db.inner.counters.commits_refused);
            return Err(Error::TooLarge(format!(
                "transaction on database {:?} would be {} bytes encoded (keys, values and \
                 groups, plus 21 bytes per update, 12 per put and 8 per delete); the maximum is \
                 {max} (max_update_bytes)",
                self.db.name(),
                self.encoded_len + len
            )));
        }
        self.encoded_len += len;
        self.ops.push(op);
        Ok(())
    }

    /// Adds a put of `value` at `key`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.push(Op::put(key.as_ref(), value.as_ref()))
    }

    /// Adds a put readable only by subscribers holding one of `groups`.
    pub fn put_with_groups(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        groups: &[&str],
    ) -> Result<()> {
        let mut op = Op::put(key.as_ref(), value.as_ref());
        op.groups = groups.iter().map(|g| g.to_string()).collect();
        self.push(op)
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        self.push(Op::delete(key.as_ref()))
    }

    /// Operations collected so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks the transaction is not empty and hands it to the intake thread as `make`
    /// builds it; returns the channel the answer comes back on.
    fn submit<T>(
        self,
        make: impl FnOnce(Arc<DbShared>, Vec<Op>, chan::Sender<T>) -> Intake,
    ) -> Result<chan::Receiver<T>> {
        if self.ops.is_empty() {
            return Err(Error::Config(format!(
                "empty transaction on database {:?}",
                self.db.name()
            )));
        }
        let (reply, rx) = chan::bounded(1);
        let req = make(self.db.db.clone(), self.ops, reply);
        let tx = self.db.inner.intake()?;
        tx.send(req).map_err(|_| publisher_closed())?;
        Ok(rx)
    }

    /// Journals the transaction durably, queues it for multicast, and returns its version.
    pub fn commit(self) -> Result<u64> {
        let rx = self.submit(|db, ops, reply| Intake::Commit(CommitRequest { db, ops, reply }))?;
        rx.recv().map_err(|_| publisher_closed())?
    }

    /// Discards the transaction (the same as dropping it): nothing was written or sent.
    pub fn rollback(self) {}

    /// Two-phase commit: PREPARE at the next version, wait until every participant of
    /// the database has PREPARED (or one REFUSED, or `timeout` passes), then COMMIT.
    /// Returns the version; on abort, a `Refused` error naming who refused (and why) and
    /// who did not answer.
    pub fn commit_two_phase(self, timeout: Duration) -> Result<u64> {
        self.prepare(timeout)?.commit()
    }

    /// The first phase alone: returns a [`Prepared`] update to commit or roll back. On
    /// a refusal or timeout it is aborted at once and the error says why.
    pub fn prepare(self, timeout: Duration) -> Result<Prepared> {
        let inner = self.db.inner.clone();
        let name = self.db.name().to_owned();
        let rx =
            self.submit(|db, ops, reply| Intake::Prepare(PrepareRequest { db, ops, reply }))?;
        let ticket = rx.recv().map_err(|_| publisher_closed())??;
        let v = ticket.version;
        let mut prepared = Prepared {
            database: name.clone(),
            ticket: Some(ticket),
        };
        match inner.server_ctx.two_phase.wait_votes(&name, v, timeout) {
            Ok(()) => Ok(prepared),
            Err(why) => {
                prepared.resolve(false)?;
                Err(Error::Refused(format!(
                    "two-phase update of database {name:?} at version {v} aborted: {why}"
                )))
            }
        }
    }
}

/// A two-phase update every participant has PREPARED: commit or roll it back. Until then
/// no replica shows it, and later commits of its database wait behind it (other databases
/// go on). Dropping it rolls it back.
pub struct Prepared {
    database: String,
    ticket: Option<PreparedTicket>,
}

impl Prepared {
    /// The version it will have if committed.
    pub fn version(&self) -> u64 {
        self.ticket.as_ref().map_or(0, |t| t.version)
    }

    fn resolve(&mut self, commit: bool) -> Result<u64> {
        let t = self
            .ticket
            .take()
            .ok_or_else(|| Error::Closed("two-phase update already resolved".into()))?;
        let closed = || Error::Closed("publisher closed during a two-phase update".into());
        t.resolve.send(commit).map_err(|_| closed())?;
        t.done.recv().map_err(|_| closed())?
    }

    /// Journals the version durably and multicasts COMMIT (repeated until every
    /// participant acknowledges); returns the version.
    pub fn commit(mut self) -> Result<u64> {
        let v = self.version();
        match self.resolve(true)? {
            x if x == v => Ok(v),
            _ => Err(Error::Storage(format!(
                "two-phase update of database {:?} at version {v} was not committed",
                self.database
            ))),
        }
    }

    /// Retracts it (ROLLBACK): multicasts ABORT; participants discard what they prepared
    /// and the version is given back.
    pub fn rollback(mut self) -> Result<()> {
        self.resolve(false).map(|_| ())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let _ = self.resolve(false);
        }
    }
}
