//! One published database: what the intake, the multicaster, the repair server and the
//! maintenance share about it, and how it starts.

use super::maintenance::minute_of_day;
use super::Inner;
use crate::crypto::{EpochKeys, Key, KeyHandout, Keyring};
use crate::net::multicaster::{self, McastCmd, MulticasterParts};
use crate::net::push::PushTargets;
use crate::net::repair_server::PublishedDatabase;
use crate::net::socket;
use crate::net::wall_clock_us;
use crate::proto::adapt::{AdaptConfig, BundleController};
use crate::proto::{RetransmitBuffer, SenderConfig};
use crate::store::publisher::DbTables;
use crate::sync::Locked;
use crate::wire::control::DatabaseInfo;
use crate::{Error, Result};
use crossbeam_channel as chan;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// A published database, shared by every thread that serves it.
pub(super) struct DbShared {
    pub(super) name: String,
    pub(super) tables: DbTables,
    pub(super) info: DatabaseInfo,
    pub(super) committed: AtomicU64,
    /// The current key and the previous one for a bounded grace; never written to disk.
    /// Shared with the multicaster, which reports when it switched and drained.
    pub(super) keys: Arc<Mutex<EpochKeys>>,
    /// Held for a whole rotation, so rotations of this database happen one at a time.
    pub(super) rotating: Mutex<()>,
    pub(super) last_rotation: Mutex<Instant>,
    pub(super) registered: AtomicBool,
    pub(super) multicast_on: AtomicBool,
    /// Oldest version the journal still holds.
    pub(super) oldest: AtomicU64,
    /// Bundle size and rate adaptation from subscriber reports.
    pub(super) adapt: Mutex<BundleController>,
    /// Multicast paused because most subscribers lose too much (since when).
    pub(super) quiesced: Mutex<Option<Instant>>,
    pub(super) mcast_tx: Mutex<Option<chan::Sender<McastCmd>>>,
    pub(super) mcast_thread: Mutex<Option<JoinHandle<()>>>,
    pub(super) retransmit: Arc<Mutex<RetransmitBuffer>>,
    /// Unicast-only subscribers its stream is pushed to (shared with the multicaster).
    pub(super) push: Arc<PushTargets>,
    /// Whether the multicaster was last told the group is quiesced.
    pub(super) group_quiesced: AtomicBool,
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
        self.keys.locked().handout(Instant::now())
    }
    fn decision_acknowledged(&self, version: u64) {
        send_mcast(self, McastCmd::DecisionDone(version));
    }
    fn on_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }
    fn push_targets(&self) -> Option<Arc<PushTargets>> {
        Some(self.push.clone())
    }
    fn resend(&self, stream_id: u32, seq: u64) -> Option<Arc<Vec<u8>>> {
        let buf = self.retransmit.locked();
        (buf.stream_id() == stream_id)
            .then(|| buf.get(seq))
            .flatten()
    }
}

/// The multicast group and port of the database registered as number `index`.
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

/// Starts publishing `name`: its group, stream, key epoch and multicaster. (Long: it reads
/// the database's state from the store and builds the multicaster's parts and the shared
/// record from it, field by field, in one place.)
pub(super) fn start_database(inner: &Arc<Inner>, name: &str) -> Result<Arc<DbShared>> {
    let cfg = &inner.config;
    let m = &cfg.multicast;
    let index = inner.store.register_database(name)?;
    let group = group_for(m, index)?;
    let tables = inner.store.tables(name)?;
    let latest = inner.store.last_version(name)?;
    // An empty journal after commits (a relay replaced the database) holds nothing yet.
    let oldest = match inner.store.oldest_version(tables)? {
        0 if latest > 0 => latest + 1,
        v => v.max(1),
    };
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
            .locked()
            .is_open(minute_of_day(wall_clock_us()));
    if !multicast_on {
        let _ = tx.send(McastCmd::Multicast(false));
    }
    let retransmit = Arc::new(Mutex::new(RetransmitBuffer::new(
        stream_id,
        m.retransmit_buffer_bytes,
    )));
    let push = Arc::new(PushTargets::new(m.max_unicast_targets));
    let parts = MulticasterParts {
        push: push.clone(),
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
        config: sender_config(m),
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
            push: Default::default(),
        },
        committed: AtomicU64::new(latest),
        keys: epochs,
        rotating: Mutex::new(()),
        last_rotation: Mutex::new(Instant::now()),
        registered: AtomicBool::new(false),
        oldest: AtomicU64::new(oldest),
        adapt: Mutex::new(BundleController::new(adapt_config(m))),
        quiesced: Mutex::new(None),
        multicast_on: AtomicBool::new(multicast_on),
        mcast_tx: Mutex::new(Some(tx)),
        mcast_thread: Mutex::new(Some(thread)),
        retransmit,
        push,
        group_quiesced: AtomicBool::new(false),
    }))
}

/// How the database's stream is sent.
fn sender_config(m: &crate::MulticastConfig) -> SenderConfig {
    SenderConfig {
        datagram_bytes: m.datagram_bytes,
        max_bundle_bytes: m.max_bundle_bytes,
        heartbeat_initial: m.heartbeat_initial,
        heartbeat_max: m.heartbeat_max,
        packets_per_sec: m.max_packets_per_sec,
        bytes_per_sec: m.max_bytes_per_sec,
        compress: true,
        max_backlog_bytes: m.max_backlog_bytes,
    }
}

/// Within what bounds the bundle size and rate adapt to subscribers' loss.
fn adapt_config(m: &crate::MulticastConfig) -> AdaptConfig {
    AdaptConfig {
        max_bundle: m.max_bundle_bytes,
        min_bundle: (m.max_bundle_bytes / 16).max(2048),
        ..AdaptConfig::default()
    }
}

/// Hands `cmd` to the database's multicaster (dropped once it is closing).
pub(super) fn send_mcast(db: &DbShared, cmd: McastCmd) {
    if let Some(tx) = &*db.mcast_tx.locked() {
        let _ = tx.send(cmd);
    }
}
