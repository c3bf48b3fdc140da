//! The public subscriber API: subscribe to databases and read the local replicas.
//!
//! Per subscription there is exactly one receive thread (socket → source check → decrypt
//! → channel) and one process thread (chain assembly → version order → one LMDB
//! transaction per group of whole master transactions → callbacks → repair).

use crate::auth::visible;
use crate::config::SubscriberConfig;
use crate::crypto::Keyring;
use crate::net::receive::{self, Inbound, ReceiveParts};
use crate::net::repair_client::{ClientIdentity, RepairClient};
use crate::net::tls::ClientTls;
use crate::net::{socket, StopFlag};
use crate::proto::{
    decode_chain_records, Backlog, ChainAssembler, ChainDrop, Delivery, DeliveryStart,
    LossGenerator, OpenPacket, PacketReorder, Participant, Receiver, ReceiverConfig, ReorderConfig,
    Route, TwoPhaseAction,
};
use crate::publisher::validate_database_name;
use crate::resync::{HostDelivery, ResyncReport};
use crate::stats::{add, inc, SubscriptionCounters, SubscriptionStats};
use crate::store::subscriber::ReplicaTables;
use crate::store::SubscriberStore;
use crate::wire::control::{DatabaseInfo, ErrorCode, Outcome, SubscriberReport};
use crate::wire::packet::PacketHeader;
use crate::wire::packet::{Heartbeat, PacketKind};
use crate::wire::update::RecordKind;
use crate::wire::update::{decode_update, Limits};
use crate::{Error, Result, Update};
use crossbeam_channel as chan;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// A host callback, run on the subscription's process thread after each master
/// transaction is committed to the replica, once per transaction, in version order.
pub type UpdateCallback = Box<dyn FnMut(&Update) + Send + 'static>;

/// A participant's vote on a two-phase update: `Ok` for PREPARED, `Err(reason)` to
/// refuse. Runs on the subscription's process thread before anything is visible.
pub type VoteCallback = Box<dyn FnMut(&Update) -> std::result::Result<(), String> + Send + 'static>;

/// Most updates applied in one LMDB transaction.
const APPLY_BATCH: usize = 1024;
/// Most bytes applied in one LMDB transaction.
const APPLY_BATCH_BYTES: usize = 32 << 20;
/// Longest the process thread sleeps before re-checking its stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A keyring holding the keys a registration handed out, the older ones bounded as the
/// publisher said (they open only packets sealed before the current epoch began).
fn keyring_from(info: &DatabaseInfo) -> Keyring {
    let mut k = Keyring::default();
    for (epoch, key) in &info.keys {
        k.insert(*epoch, key);
    }
    k.retire_below(info.key_epoch(), info.older_keys_below);
    k
}

/// Enforces access groups. Puts of records a holder of `groups` may not read become
/// deletes of their keys in `batch` (so the record never lands in the replica, and an
/// older visible value does not linger); the returned updates, for the callbacks, hold
/// only the visible operations.
fn filter_updates(
    groups: &[String],
    c: &SubscriptionCounters,
    batch: &mut [Update],
) -> Vec<Update> {
    let mut shown = Vec::with_capacity(batch.len());
    for u in batch.iter_mut() {
        let mut withheld = false;
        let mut visible_ops = Vec::new();
        for op in &mut u.ops {
            if visible(&op.groups, groups) {
                visible_ops.push(op.clone());
            } else {
                withheld = true;
                *op = crate::Op::delete(std::mem::take(&mut op.key));
            }
        }
        if withheld {
            inc(&c.updates_filtered);
        }
        shown.push(Update {
            version: u.version,
            timestamp_us: u.timestamp_us,
            ops: visible_ops,
            reset: false,
        });
    }
    shown
}

struct SubShared {
    name: String,
    latency: crate::stats::LatencyHistogram,
    force_resync: AtomicBool,
    auth_error: Mutex<Option<String>>,
    store: Arc<SubscriberStore>,
    tables: ReplicaTables,
    counters: Arc<SubscriptionCounters>,
    /// Version up to which the replica is applied and every callback has run.
    version: Mutex<u64>,
    /// The publisher's latest version when the subscription registered.
    registered_version: u64,
    advanced: Condvar,
    failure: Mutex<Option<String>>,
    stop: StopFlag,
    threads: Mutex<Vec<JoinHandle<()>>>,
    process_thread: OnceLock<ThreadId>,
}

impl SubShared {
    fn stats(&self) -> SubscriptionStats {
        let mut s = self.counters.snapshot();
        let h = &self.latency;
        s.latency_p50_us = h.quantile(0.5);
        s.latency_p99_us = h.quantile(0.99);
        s.latency_p999_us = h.quantile(0.999);
        s
    }

    /// The subscription as the metrics show it.
    fn metrics_view(&self) -> crate::metrics::SubscriptionView {
        let h = &self.latency;
        crate::metrics::SubscriptionView {
            database: self.name.clone(),
            stats: self.stats(),
            version: *self.version.lock().unwrap_or_else(|e| e.into_inner()),
            latency_buckets: h
                .octaves()
                .into_iter()
                .map(|(us, n)| (us as f64 / 1e6, n))
                .collect(),
            latency_sum: h.sum_us() as f64 / 1e6,
        }
    }

    /// Stops the threads and joins them; false when called from the process thread itself
    /// (which then exits after the callback returns).
    fn close(&self) -> bool {
        self.stop.stop();
        self.advanced.notify_all();
        let me = std::thread::current().id();
        if self.process_thread.get() == Some(&me) {
            // Closing from inside a callback: the threads see the flag and exit by
            // themselves; joining here would wait for ourselves.
            return false;
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        true
    }
}

/// Closes the subscription when the last user-held handle goes away (the worker threads
/// hold `SubShared`, not this).
struct CloseOnDrop(Arc<SubShared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

/// A subscriber: opens the local store and subscribes to databases.
pub struct Subscriber {
    closed: AtomicBool,
    config: SubscriberConfig,
    store: Arc<SubscriberStore>,
    subs: Mutex<Subs>,
    /// Signalled when a database stops being busy.
    idle: Condvar,
}

/// The subscriber's subscriptions, and the databases a subscribe or one-shot resync is
/// working on right now (outside the lock: no lock is held over network I/O).
#[derive(Default)]
struct Subs {
    live: HashMap<String, Arc<SubShared>>,
    busy: std::collections::HashSet<String>,
}

/// Marks a database busy for the life of the guard (a subscribe or resync in progress).
struct Busy<'a> {
    subscriber: &'a Subscriber,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut subs = self
            .subscriber
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subs.busy.remove(&self.name);
        self.subscriber.idle.notify_all();
    }
}

/// One subscription: a live replica of one database. Clones share it; it closes when
/// [`close`](Subscription::close) is called or the last clone is dropped.
#[derive(Clone)]
pub struct Subscription {
    shared: Arc<SubShared>,
    _guard: Arc<CloseOnDrop>,
}

/// How to subscribe: see [`Subscriber::subscribe_with_options`].
#[derive(Default)]
pub struct SubscribeOptions {
    /// Called after each master transaction is applied, once per transaction, in version
    /// order, on the subscription's process thread.
    pub callback: Option<UpdateCallback>,
    /// The version the host already holds, for **exactly-once** delivery. A host that
    /// stores, in its own transaction, the data a callback hands it together with that
    /// update's version passes that version here at every subscribe and gets exactly the
    /// updates after it: from the replica's kept updates, from the publisher's journal, or
    /// — when neither reaches back that far, or the master's history changed — one update
    /// with [`Update::reset`] set that holds the whole state. Never a silent gap.
    ///
    /// `None` (the default) continues after the replica's durable delivered cursor:
    /// at least once (a crash may replay the last few callbacks).
    pub after: Option<u64>,
    /// Register as a two-phase participant (see [`Subscriber::subscribe_participant`]).
    pub participant: bool,
    /// The participant's vote (needs `participant`).
    pub vote: Option<VoteCallback>,
}

impl std::fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("callback", &self.callback.is_some())
            .field("after", &self.after)
            .field("participant", &self.participant)
            .field("vote", &self.vote.is_some())
            .finish()
    }
}

impl Subscriber {
    /// Opens (or creates) the subscriber's store in `config.data_dir`.
    pub fn open(config: SubscriberConfig) -> Result<Subscriber> {
        config.validate()?;
        let store = Arc::new(SubscriberStore::open(&config.data_dir, config.map_size)?);
        Ok(Subscriber {
            closed: AtomicBool::new(false),
            config,
            store,
            subs: Mutex::new(Subs::default()),
            idle: Condvar::new(),
        })
    }

    /// Subscribes to database `name`, calling `callback` after each master transaction is
    /// applied. Returns once registered; the replica then catches up from the version
    /// stored locally (0 for a new replica) in the background
    /// ([`Subscription::wait_caught_up`] waits for that).
    ///
    /// Every update's callback runs **at least once**, in version order: callbacks that a
    /// crash or [`close`](Subscription::close) cut off are replayed at the next subscribe.
    /// For exactly once, see [`SubscribeOptions::after`].
    pub fn subscribe(
        &self,
        name: &str,
        callback: impl FnMut(&Update) + Send + 'static,
    ) -> Result<Subscription> {
        self.subscribe_with(name, Some(Box::new(callback)))
    }

    /// Subscribes with an optional callback.
    pub fn subscribe_with(
        &self,
        name: &str,
        callback: Option<UpdateCallback>,
    ) -> Result<Subscription> {
        self.subscribe_with_options(
            name,
            SubscribeOptions {
                callback,
                ..SubscribeOptions::default()
            },
        )
    }

    /// Subscribes as `options` say (a callback, the host's own version for exactly-once
    /// delivery, two-phase participation).
    pub fn subscribe_with_options(
        &self,
        name: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        if options.vote.is_some() && !options.participant {
            return Err(Error::Config(
                "a vote callback needs SubscribeOptions::participant".into(),
            ));
        }
        let participant = options.participant.then_some(options.vote);
        self.subscribe_inner(name, options.callback, participant, options.after)
    }

    /// Subscribes as a two-phase participant: every two-phase update of the database
    /// waits for this replica's vote. `vote` may refuse (returning the reason); without
    /// it the replica votes PREPARED whenever it can apply the update. It is called on
    /// the process thread, before anything of the update is visible. The user's grant must
    /// allow it ([`Grant::participant`](crate::Grant::participant)); otherwise it fails
    /// with an `Auth` error.
    pub fn subscribe_participant(
        &self,
        name: &str,
        callback: Option<UpdateCallback>,
        vote: Option<VoteCallback>,
    ) -> Result<Subscription> {
        self.subscribe_inner(name, callback, Some(vote), None)
    }

    fn subscribe_inner(
        &self,
        name: &str,
        callback: Option<UpdateCallback>,
        participant: Option<Option<VoteCallback>>,
        after: Option<u64>,
    ) -> Result<Subscription> {
        validate_database_name(name)?;
        let busy = self.claim(name, |subs| {
            if subs.live.get(name).is_some_and(|s| !s.stop.is_stopped()) {
                return Err(Error::Config(format!(
                    "already subscribed to database {name:?} in this subscriber"
                )));
            }
            Ok(())
        })?;
        let shared = start(
            &self.config,
            &self.store,
            name,
            callback,
            participant,
            after,
        )?;
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            // Closed while registering: this subscription never becomes live.
            drop(subs);
            let _ = shared.close();
            return Err(Error::Closed("subscriber is closed".into()));
        }
        subs.live.insert(name.to_owned(), shared.clone());
        drop(subs);
        drop(busy);
        Ok(Subscription {
            _guard: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        })
    }

    /// Marks `name` busy if the subscriber is open, nothing else is working on `name`, and
    /// `check` agrees; the mark ends with the returned guard.
    fn claim(&self, name: &str, check: impl FnOnce(&Subs) -> Result<()>) -> Result<Busy<'_>> {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("subscriber is closed".into()));
        }
        if subs.busy.contains(name) {
            return Err(Error::Config(format!(
                "database {name:?} is being subscribed or resynced in this subscriber"
            )));
        }
        check(&subs)?;
        subs.busy.insert(name.to_owned());
        Ok(Busy {
            subscriber: self,
            name: name.to_owned(),
        })
    }

    /// Compares the local replica of `name` with the publisher's state by range digests,
    /// without changing anything. The replica's content hashes are recomputed from its
    /// data, so records edited behind mcsync's back are found.
    pub fn verify(&self, name: &str) -> Result<ResyncReport> {
        self.one_shot(name, false)
    }

    /// Resyncs the local replica of `name` by hashes now, without subscribing (for a
    /// replica restored from a backup or repaired by hand). Fails if this subscriber has a
    /// live subscription to it; use [`Subscription::request_resync`] then.
    pub fn resync(&self, name: &str) -> Result<ResyncReport> {
        self.one_shot(name, true)
    }

    fn one_shot(&self, name: &str, apply: bool) -> Result<ResyncReport> {
        validate_database_name(name)?;
        let busy = self.claim(name, |subs| {
            if apply && subs.live.get(name).is_some_and(|s| !s.stop.is_stopped()) {
                return Err(Error::Config(format!(
                    "database {name:?} has a live subscription; use Subscription::request_resync"
                )));
            }
            Ok(())
        })?;
        let tables = self.store.tables(name)?;
        let mut client = client_for(&self.config, name)?;
        let groups = client.hello()?.groups;
        let counters = SubscriptionCounters::default();
        let filter = |b: &mut [Update]| filter_updates(&groups, &counters, b);
        let limits = Limits {
            max_update_bytes: self.config.max_update_bytes,
        };
        let out = crate::resync::run(
            &self.store,
            name,
            tables,
            &mut client,
            &limits,
            apply.then_some(HostDelivery::Nobody),
            &filter,
        )?;
        drop(busy);
        let _ = client.close_subscription();
        Ok(out.report)
    }

    /// Every subscription's counters, gauges, version and latency histogram, labelled by
    /// database, in the OpenMetrics text format Prometheus scrapes (serve it with
    /// [`metrics::CONTENT_TYPE`](crate::metrics::CONTENT_TYPE)). See docs/OPERATIONS.md.
    pub fn metrics(&self) -> String {
        let mut views: Vec<_> = self
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .values()
            .map(|s| s.metrics_view())
            .collect();
        views.sort_by(|a, b| a.database.cmp(&b.database));
        crate::metrics::render_subscriber(&views)
    }

    /// Closes every subscription and joins their threads. Idempotent.
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        let subs: Vec<_> = {
            let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
            // A subscribe or resync in flight ends within its I/O timeouts; wait for it
            // (without holding the lock) so nothing writes after the lock is released.
            while !subs.busy.is_empty() {
                subs = self.idle.wait(subs).unwrap_or_else(|e| e.into_inner());
            }
            subs.live.drain().map(|(_, s)| s).collect()
        };
        let mut joined = true;
        for s in subs {
            joined &= s.close();
        }
        // Every writer (process thread) is joined: the directory may be opened again.
        if joined {
            self.store.release_lock();
        }
        Ok(())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Who a control-channel client is, as `cfg` says.
fn identity(cfg: &SubscriberConfig) -> Result<ClientIdentity> {
    Ok(ClientIdentity {
        server: cfg.server,
        tls: ClientTls::new(&cfg.trust, cfg.server, cfg.server_name.as_deref())?,
        user: cfg.user.clone(),
        secret: cfg.secret.clone(),
        client_name: cfg.client_name.clone(),
    })
}

/// A control-channel client for database `name` as `cfg` says.
fn client_for(cfg: &SubscriberConfig, name: &str) -> Result<RepairClient> {
    let identity = identity(cfg)?;
    let max_frame =
        (cfg.max_update_bytes + 1024).max(crate::wire::control::MAX_LIST_ENTRIES * 16 + 64);
    Ok(RepairClient::new(
        identity,
        name,
        cfg.repair_io_timeout,
        max_frame,
    ))
}

/// A registration made by HELLO, closed (CLOSE SUBSCRIPTION) if it is dropped before the
/// process thread takes its client.
struct Registration(Option<RepairClient>);

impl Registration {
    fn client(&mut self) -> &mut RepairClient {
        self.0.as_mut().expect("the client stays until taken")
    }

    fn take(mut self) -> RepairClient {
        self.0.take().expect("taken once")
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Err(e) = c.close_subscription() {
                log::debug!("closing a registration after a failed subscribe: {e}");
            }
        }
    }
}

fn start(
    cfg: &SubscriberConfig,
    store: &Arc<SubscriberStore>,
    name: &str,
    callback: Option<UpdateCallback>,
    participant: Option<Option<VoteCallback>>,
    after: Option<u64>,
) -> Result<Arc<SubShared>> {
    let tables = store.tables(name)?;
    let applied = store.applied_version(name)?;
    let kept = store.delivery_state(name)?;
    let mut client = client_for(cfg, name)?;
    client.set_participant(participant.is_some());
    client.set_subscriber_id(store.subscriber_id(name)?);
    let info = client.hello()?;
    // From here on a failure must not leave the registration behind at the publisher (a
    // participant's would stall every two-phase round until its timeout).
    let mut reg = Registration(Some(client));
    if info.subscriber_id != store.subscriber_id(name)? {
        store.set_subscriber_id(name, info.subscriber_id)?;
    }
    let stored_incarnation = store.incarnation(name)?;
    let history_change = history_changed(stored_incarnation, applied, &info);
    if stored_incarnation == 0 && history_change.is_none() {
        // A new replica (or one from before incarnations) joins this history.
        store.set_incarnation(name, info.incarnation)?;
    }
    // Requests go to the history registered with; a changed one is resynced against first.
    reg.client().expect_incarnation(info.incarnation);
    // A prepared two-phase update kept from before a restart: ask what became of it.
    let mut held = None;
    if let Some(p) = store.prepared(name)? {
        if p.version > applied
            && reg.client().outcome(p.version, p.timestamp_us)? == Outcome::Pending
        {
            held = Some(p);
        } else {
            store.clear_prepared(name)?;
        }
    }
    let delivery = Delivery::plan(DeliveryStart {
        applied: kept.applied,
        delivered: kept.delivered,
        pending_complete: kept.pending_complete,
        reset_owed: kept.reset_owed,
        after,
        master_version: info.current_version,
        has_callback: callback.is_some(),
    });
    let keyring = Arc::new(RwLock::new(keyring_from(&info)));
    let (sock, granted) =
        socket::receiver_socket(info.group, cfg.interface, cfg.recv_buffer_bytes)?;
    let counters = Arc::new(SubscriptionCounters::default());
    counters
        .recv_buffer_bytes
        .store(granted as u64, Ordering::Relaxed);
    counters
        .key_epoch
        .store(u64::from(info.key_epoch()), Ordering::Relaxed);
    let shared = Arc::new(SubShared {
        name: name.to_owned(),
        store: store.clone(),
        tables,
        counters: counters.clone(),
        version: Mutex::new(applied.min(delivery.delivered)),
        registered_version: info.current_version,
        auth_error: Mutex::new(None),
        latency: Default::default(),
        force_resync: AtomicBool::new(false),
        advanced: Condvar::new(),
        failure: Mutex::new(None),
        stop: StopFlag::default(),
        threads: Mutex::new(Vec::new()),
        process_thread: OnceLock::new(),
    });
    let (tx, rx) = chan::bounded(cfg.channel_capacity);
    let source = Arc::new(Mutex::new(cfg.verify_source.then_some(info.source)));
    let rekey = Arc::new(AtomicBool::new(false));
    let leave = Arc::new(AtomicBool::new(false));
    let recv = receive::spawn(
        ReceiveParts {
            database: name.to_owned(),
            socket: sock,
            source: source.clone(),
            keyring: keyring.clone(),
            rekey: rekey.clone(),
            leave: leave.clone(),
            group: info.group,
            interface: cfg.interface,
            loss: cfg.loss.as_ref().map(LossGenerator::new),
            counters,
            stop: shared.stop.clone(),
        },
        tx,
    )
    .map_err(|e| Error::io("spawning receive thread", e))?;
    let receiver_config = ReceiverConfig {
        buffer_bytes: cfg.reorder_buffer_bytes,
        repair_delay: cfg.repair_delay,
        repair_retry: cfg.repair_retry,
        max_ranges: 64,
    };
    let mut receiver = Receiver::new(applied, receiver_config.clone());
    // Catch up at once to what the publisher had when we said hello.
    receiver.on_heartbeat(Instant::now(), info.current_version);
    let now = Instant::now();
    let reorder_config = ReorderConfig {
        repair_delay: cfg.repair_delay,
        max_bytes: cfg.reorder_buffer_bytes,
        max_ranges: 64,
    };
    let state = Process {
        policy: Policy {
            interval: cfg.report_interval,
            threshold: cfg.error_threshold,
            backoff: cfg.unicast_backoff,
            last_report: now,
            last_poll: now,
            last_arrived: 0,
            last_lost: 0,
            strikes: 0,
            unicast_until: None,
        },
        leave: leave.clone(),
        two_phase: Participant::new(participant.is_some(), held),
        vote: participant.flatten(),
        compact_after: cfg.compact_catch_up_after,
        receiver_config,
        shared: shared.clone(),
        source,
        silence_timeout: cfg.silence_timeout,
        last_heard: now,
        last_hello: now,
        seen_dropped_source: 0,
        receiver,
        assembler: ChainAssembler::new(cfg.max_update_bytes + (64 << 10)),
        reorder: PacketReorder::new(reorder_config.clone()),
        reorder_config,
        keyring,
        rekey,
        groups: info.groups.clone(),
        auth_backoff: false,
        callback,
        delivered_durable: delivery.delivered,
        delivery,
        incarnation: if history_change.is_some() {
            stored_incarnation
        } else {
            info.incarnation
        },
        new_history: history_change,
        stream_id: info.stream_id,
        last_history_try: now - HISTORY_RETRY,
        last_flush: now,
        limits: Limits {
            max_update_bytes: cfg.max_update_bytes,
        },
    };
    let s2 = shared.clone();
    let client = reg.take();
    let process = std::thread::Builder::new()
        .name(format!("mcsync-proc-{name}"))
        .spawn(move || {
            let _ = s2.process_thread.set(std::thread::current().id());
            run_process(state, client, rx)
        });
    let process = match process {
        Ok(h) => h,
        Err(e) => {
            shared.stop.stop();
            let _ = recv.join();
            return Err(Error::io("spawning process thread", e));
        }
    };
    shared
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([recv, process]);
    Ok(shared)
}

/// Whether a registration shows a history other than the replica's: another incarnation
/// (the publisher's data was replaced), or a master behind the replica (it lost versions
/// the replica applied). Returns the registration's incarnation if so.
fn history_changed(stored: u64, applied: u64, info: &DatabaseInfo) -> Option<u64> {
    let other = stored != 0 && stored != info.incarnation;
    (other || info.current_version < applied).then_some(info.incarnation)
}

/// Fewest packets in a report interval for its loss rate to count.
const MIN_PACKETS_FOR_LOSS: u64 = 20;

/// How often a subscriber on unicast asks for the latest version.
const UNICAST_POLL: Duration = Duration::from_millis(100);

/// The subscriber's error policy and reporting state.
struct Policy {
    interval: Duration,
    threshold: f64,
    backoff: Duration,
    last_report: Instant,
    last_poll: Instant,
    last_arrived: u64,
    last_lost: u64,
    strikes: u32,
    unicast_until: Option<Instant>,
}

struct Process {
    policy: Policy,
    leave: Arc<AtomicBool>,
    /// The subscriber's side of two-phase updates.
    two_phase: Participant,
    /// The host's vote on prepared updates (participants only).
    vote: Option<VoteCallback>,
    compact_after: u64,
    receiver_config: ReceiverConfig,
    shared: Arc<SubShared>,
    source: Arc<Mutex<Option<std::net::SocketAddr>>>,
    silence_timeout: Duration,
    last_heard: Instant,
    last_hello: Instant,
    seen_dropped_source: u64,
    receiver: Receiver,
    assembler: ChainAssembler,
    reorder: PacketReorder,
    keyring: Arc<RwLock<Keyring>>,
    rekey: Arc<AtomicBool>,
    groups: Vec<String>,
    auth_backoff: bool,
    callback: Option<UpdateCallback>,
    /// What the host has been called back for and what it is still owed.
    delivery: Delivery,
    /// The delivered cursor as last written to the store.
    delivered_durable: u64,
    /// The history (incarnation) the replica belongs to.
    incarnation: u64,
    /// A history the replica must resync against before anything else is applied.
    new_history: Option<u64>,
    /// The stream the latest registration named: data from any other is not applied.
    stream_id: u32,
    last_history_try: Instant,
    reorder_config: ReorderConfig,
    last_flush: Instant,
    limits: Limits,
}

/// Longest the durable delivered cursor lags the callbacks while the subscription is
/// busy (a crash replays at most this window; written with the next apply meanwhile).
const DELIVERED_FLUSH: Duration = Duration::from_millis(200);

/// Most versions fetched from the journal at once for a host behind its replica.
const JOURNAL_PART: u64 = 4096;

/// Least time between attempts to resync against a changed history.
const HISTORY_RETRY: Duration = Duration::from_millis(500);

/// Most bytes of kept updates read from the store at once when replaying.
const REPLAY_CHUNK_BYTES: usize = 4 << 20;

fn run_process(mut st: Process, mut client: RepairClient, rx: chan::Receiver<Inbound>) {
    let stop = st.shared.stop.clone();
    while !stop.is_stopped() {
        let now = Instant::now();
        let deadline = [
            st.receiver.next_timeout(),
            st.reorder.next_timeout(),
            st.two_phase.next_timeout(),
        ]
        .into_iter()
        .flatten()
        .fold(now + IDLE_WAIT, Instant::min);
        match rx.recv_deadline(deadline) {
            Ok(pkt) => {
                st.on_packet(pkt);
                for pkt in rx.try_iter().take(4096) {
                    st.on_packet(pkt);
                }
            }
            Err(chan::RecvTimeoutError::Timeout) => {}
            Err(chan::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(new) = client.history_changed() {
            st.new_history = Some(new);
        }
        if st.new_history.is_some() {
            // Nothing of another history is applied on top of this one.
            if st.adopt_history(&mut client).is_err() {
                break;
            }
            st.maybe_hello_again(&mut client);
            continue;
        }
        if let Some((stream, ranges)) = st.reorder.poll_repair(Instant::now()) {
            st.packet_repair(&mut client, stream, &ranges);
        }
        if st.apply_ready().is_err() {
            break;
        }
        if st.deliver_backlog(&mut client).is_err() {
            break;
        }
        if let Some(ranges) = st.receiver.poll_repair(Instant::now()) {
            if st.repair(&mut client, &ranges).is_err() {
                break;
            }
        }
        st.maybe_hello_again(&mut client);
        st.error_policy_step(&mut client);
        if st.two_phase_step(&mut client).is_err() {
            break;
        }
        if st.shared.force_resync.swap(false, Ordering::SeqCst)
            && st.resync(&mut client, false).is_err()
        {
            break;
        }
        st.sync_counters();
        st.flush_delivered(false);
    }
    st.sync_counters();
    // What the callbacks returned is recorded; the rest is replayed at the next subscribe.
    st.flush_delivered(true);
    if st
        .shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_none()
    {
        if let Err(e) = client.close_subscription() {
            log::debug!("{}: CLOSE SUBSCRIPTION: {e}", st.shared.name);
        }
    }
}

impl Process {
    /// Says HELLO again (re-registers) when the publisher has been silent too long,
    /// packets arrive from an unexpected source (it may have restarted on another port),
    /// or packets show a key epoch we do not hold (the key was rotated): learns the current
    /// source, keys, groups and version, then catches up as usual.
    fn maybe_hello_again(&mut self, client: &mut RepairClient) {
        let now = Instant::now();
        let c = self.shared.counters.clone();
        let dropped = c.dropped_source.load(Ordering::Relaxed);
        let foreign = dropped > self.seen_dropped_source;
        let since_hello = now.duration_since(self.last_hello);
        // Off the group by choice (error policy), silence says nothing about the publisher.
        let silent = self.policy.unicast_until.is_none()
            && now.duration_since(self.last_heard) > self.silence_timeout;
        let rekey = self.rekey.load(Ordering::Relaxed);
        // After an authorization failure, try again only every few seconds.
        let gap = if self.auth_backoff {
            Duration::from_secs(3)
        } else if foreign && !rekey {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        let due = ((rekey || foreign) && since_hello > gap)
            || (silent && since_hello > self.silence_timeout);
        if !due {
            return;
        }
        self.last_hello = now;
        self.seen_dropped_source = dropped;
        inc(&c.resubscriptions);
        match client.hello() {
            Ok(info) => self.on_registered(now, &info),
            Err(e) => {
                log::warn!("{}: registering again failed: {e}", self.shared.name);
                if e.kind() == crate::ErrorKind::Auth {
                    inc(&c.auth_failures);
                    self.auth_backoff = true;
                    *self
                        .shared
                        .auth_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    self.shared.advanced.notify_all();
                }
            }
        }
    }

    /// Adopts what a registration returned: keys, groups, source, latest version.
    fn on_registered(&mut self, now: Instant, info: &DatabaseInfo) {
        self.auth_backoff = false;
        *self
            .shared
            .auth_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        {
            let mut k = self.keyring.write().unwrap_or_else(|e| e.into_inner());
            let before = k.newest_epoch();
            *k = keyring_from(info);
            if k.newest_epoch() != before {
                inc(&self.shared.counters.key_changes);
            }
            self.shared
                .counters
                .key_epoch
                .store(u64::from(k.newest_epoch().unwrap_or(0)), Ordering::Relaxed);
        }
        self.rekey.store(false, Ordering::Relaxed);
        self.groups = info.groups.clone();
        self.stream_id = info.stream_id;
        if let Some(new) = history_changed(self.incarnation, self.receiver.applied(), info) {
            self.new_history = Some(new);
        }
        let mut src = self.source.lock().unwrap_or_else(|e| e.into_inner());
        if src.is_some_and(|s| s != info.source) {
            log::info!(
                "{}: publisher now sends from {}",
                self.shared.name,
                info.source
            );
            *src = Some(info.source);
        }
        drop(src);
        self.receiver.on_heartbeat(now, info.current_version);
    }

    /// Every report interval: measures recent loss, applies the error policy (re-register
    /// when it passes the threshold; if it stays above, leave multicast and catch up by
    /// unicast for a back-off period, then rejoin), and reports to the publisher. While on
    /// unicast it polls the publisher's latest version often.
    fn error_policy_step(&mut self, client: &mut RepairClient) {
        let now = Instant::now();
        let c = self.shared.counters.clone();
        let p = &mut self.policy;
        if p.unicast_until.is_some() && now.duration_since(p.last_poll) >= UNICAST_POLL {
            p.last_poll = now;
            if let Ok(current) = client.status().map(|s| s.current_version) {
                self.receiver.on_heartbeat(now, current);
            }
        }
        let p = &mut self.policy;
        if now.duration_since(p.last_report) < p.interval {
            return;
        }
        p.last_report = now;
        let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        let received = load(&c.packets_received);
        let lost = load(&c.packets_repaired) + load(&c.packets_skipped);
        // The network's loss: packets that never arrived over packets sent. Packets the
        // loss generator dropped did not arrive; packets that arrived under a key epoch not
        // yet known were repaired but not lost by the network.
        let arrived = received.saturating_sub(load(&c.dropped_injected));
        let lost_net = lost.saturating_sub(load(&c.dropped_epoch));
        let (da, dl) = (
            arrived.saturating_sub(p.last_arrived),
            lost_net.saturating_sub(p.last_lost),
        );
        p.last_arrived = arrived;
        p.last_lost = lost_net;
        // Too few packets say nothing about the loss rate (and must not quiesce anyone).
        let loss = if da + dl < MIN_PACKETS_FOR_LOSS {
            0.0
        } else {
            dl as f64 / (da + dl) as f64
        };
        c.loss_ppm.store((loss * 1e6) as u64, Ordering::Relaxed);
        let mut hello = false;
        match p.unicast_until {
            Some(until) if now >= until => {
                p.unicast_until = None;
                p.strikes = 0;
                self.leave.store(false, Ordering::SeqCst);
                // Silence is measured from the rejoin, not from before the back-off.
                self.last_heard = now;
                inc(&c.rejoins);
                log::info!("{}: rejoining multicast", self.shared.name);
            }
            Some(_) => {}
            None if loss > p.threshold => {
                p.strikes += 1;
                // A two-phase participant stays in the group: PREPAREs are only multicast,
                // and without them it could not vote.
                if p.strikes == 1 || self.two_phase.is_participant() {
                    hello = p.strikes == 1;
                } else {
                    p.unicast_until = Some(now + p.backoff);
                    p.last_poll = now;
                    self.leave.store(true, Ordering::SeqCst);
                    inc(&c.unicast_backoffs);
                    log::warn!(
                        "{}: losing {:.0} % of packets; catching up by unicast for {:?}",
                        self.shared.name,
                        loss * 100.0,
                        p.backoff
                    );
                }
            }
            None => p.strikes = 0,
        }
        let report = SubscriberReport {
            loss_ppm: (loss * 1e6) as u32,
            packets_received: received,
            packets_lost: lost,
            applied_version: self.receiver.applied(),
            latency_p50_us: self.shared.latency.quantile(0.5),
            latency_p99_us: self.shared.latency.quantile(0.99),
            repairs: c.repairs_requested.load(Ordering::Relaxed)
                + c.packet_repairs_requested.load(Ordering::Relaxed),
            resubscriptions: c.resubscriptions.load(Ordering::Relaxed),
            unicast_only: self.policy.unicast_until.is_some(),
        };
        if hello {
            // Re-register, reporting the error rate with it.
            inc(&c.resubscriptions);
            match client.hello() {
                Ok(info) => self.on_registered(now, &info),
                Err(e) => log::warn!("{}: re-registering: {e}", self.shared.name),
            }
        }
        if client.report(report).is_ok() {
            inc(&c.reports_sent);
        }
    }

    /// Takes an authenticated packet from multicast and releases, in sequence order,
    /// every packet that is now ready.
    fn on_packet(&mut self, pkt: Inbound) {
        let now = Instant::now();
        if pkt.header.stream_id != self.stream_id {
            // A stream the registration did not name (the publisher restarted, maybe on
            // another history): register again, which names the current stream and shows
            // the history, before anything from it is applied. Repair fills the gap.
            inc(&self.shared.counters.dropped_stream);
            self.rekey.store(true, Ordering::Relaxed);
            return;
        }
        self.last_heard = now;
        if self.reorder.on_packet(now, pkt) {
            self.assembler.reset();
        }
        self.release_ordered();
    }

    fn release_ordered(&mut self) {
        while let Some(p) = self.reorder.poll_release() {
            self.on_ordered(p);
        }
    }

    /// Fetches lost packets one by one from the publisher's retransmit buffer; whatever it
    /// no longer has is skipped, and the journal repairs those versions.
    fn packet_repair(&mut self, client: &mut RepairClient, stream: u32, ranges: &[(u64, u64)]) {
        let c = self.shared.counters.clone();
        inc(&c.packet_repairs_requested);
        let mut datagrams = Vec::new();
        match client.fetch_packets(stream, ranges, |d| datagrams.push(d.to_vec())) {
            Ok((got, _missing, bytes)) => {
                add(&c.packets_repaired, got);
                add(&c.packet_repair_bytes, bytes);
            }
            Err(e) => {
                inc(&c.repair_failures);
                log::warn!("{}: packet repair failed: {e}", self.shared.name);
            }
        }
        let now = Instant::now();
        for d in datagrams {
            let Ok((header, sealed)) = PacketHeader::parse(&d) else {
                inc(&c.dropped_malformed);
                continue;
            };
            let opened = self
                .keyring
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .open(&header, sealed);
            match opened {
                Ok(payload) if header.stream_id == stream => {
                    self.reorder.on_packet(now, OpenPacket { header, payload });
                }
                Ok(_) => inc(&c.dropped_malformed),
                Err(_) => inc(&c.dropped_auth),
            }
        }
        self.reorder.on_repair_done(now);
        self.release_ordered();
    }

    /// Routes one record of a chain: committed updates to the version order, two-phase
    /// records to the prepared-update state.
    fn on_record(&mut self, now: Instant, kind: RecordKind, u: Update) {
        match self.two_phase.on_record(kind, u, self.receiver.applied()) {
            Route::Apply(u) => {
                self.receiver.on_update(now, u);
            }
            Route::CatchUp(v) => self.receiver.on_heartbeat(now, v),
            Route::Held => {}
        }
    }

    /// Does what the two-phase participant asks: forgets durable copies that are done,
    /// acknowledges decisions, repairs up to a prepared update, asks the host's vote and
    /// keeps the update durably before voting PREPARED. A storage failure stops the
    /// subscription and is reported to waiters.
    fn two_phase_step(&mut self, client: &mut RepairClient) -> Result<()> {
        while let Some(action) = self.two_phase.poll(Instant::now(), self.receiver.applied()) {
            if let Err(e) = self.two_phase_action(client, action) {
                log::error!("{}: two-phase update: {e}", self.shared.name);
                self.fail(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    fn two_phase_action(
        &mut self,
        client: &mut RepairClient,
        action: TwoPhaseAction,
    ) -> Result<()> {
        let name = self.shared.name.clone();
        match action {
            TwoPhaseAction::Forget => {
                self.shared.store.clear_prepared(&name)?;
                self.two_phase.forgotten();
            }
            TwoPhaseAction::Ack { version, round } => {
                if let Err(e) = client.ack(version, round) {
                    log::debug!("{name}: acknowledging version {version}: {e}");
                }
            }
            TwoPhaseAction::CatchUp(v) => self.receiver.on_heartbeat(Instant::now(), v),
            TwoPhaseAction::Check(v) => {
                let Some(p) = self.two_phase.pending() else {
                    return Ok(());
                };
                // What this replica would apply (access groups enforced), and what its host
                // may see of it: the vote and the durable copy never hold records it may
                // not read.
                let mut applied_form = [p.clone()];
                let shown = filter_updates(&self.groups, &self.shared.counters, &mut applied_form);
                let verdict = match self.vote.as_mut() {
                    Some(f) => {
                        let run = std::panic::AssertUnwindSafe(|| f(&shown[0]));
                        std::panic::catch_unwind(run)
                            .unwrap_or_else(|_| Err("vote callback panicked".into()))
                    }
                    None => Ok(()),
                };
                if verdict.is_ok() {
                    self.shared.store.put_prepared(&name, &applied_form[0])?;
                }
                self.two_phase.checked(v, verdict);
            }
            TwoPhaseAction::Vote {
                version,
                round,
                prepared,
                reason,
            } => match client.vote(version, round, prepared, &reason) {
                Ok(()) => self.two_phase.vote_sent(version),
                Err(e) if client.last_refusal().is_some() => {
                    // Not taken: the round is over (its decision did not reach us) or
                    // superseded. Ask what became of it.
                    log::debug!("{name}: vote on version {version} not taken: {e}");
                    match client.outcome(version, round) {
                        Ok(state) => {
                            let route = self.two_phase.on_outcome(version, round, state);
                            if let Route::CatchUp(v) = route {
                                self.receiver.on_heartbeat(Instant::now(), v);
                            }
                        }
                        // Asked again after the next vote.
                        Err(e) => log::debug!("{name}: outcome of version {version}: {e}"),
                    }
                }
                Err(e) => log::warn!("{name}: vote on version {version}: {e}"),
            },
        }
        Ok(())
    }

    /// Records a failure that stops the subscription and wakes waiters to report it.
    fn fail(&self, e: &Error) {
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        self.shared.stop.stop();
        self.shared.advanced.notify_all();
    }

    fn on_ordered(&mut self, pkt: OpenPacket) {
        let c = &self.shared.counters;
        let now = Instant::now();
        match pkt.header.kind {
            PacketKind::Heartbeat => match Heartbeat::parse(&pkt.payload) {
                Ok(hb) => {
                    inc(&c.heartbeats_received);
                    self.receiver.on_heartbeat(now, hb.latest_version);
                }
                Err(_) => inc(&c.dropped_malformed),
            },
            PacketKind::Data => {
                let out = self.assembler.on_packet(&pkt.header, &pkt.payload);
                match out.dropped {
                    Some(ChainDrop::Orphan) => inc(&c.orphan_packets),
                    Some(_) => inc(&c.chains_dropped),
                    None => {}
                }
                let Some(chain) = out.chain else { return };
                let max = self.limits.max_update_bytes + (64 << 10);
                match decode_chain_records(&chain, &self.limits, max) {
                    Ok(records) => {
                        inc(&c.chains_received);
                        for (kind, u) in records {
                            self.on_record(now, kind, u);
                        }
                    }
                    Err(e) => {
                        log::warn!("{}: undecodable chain: {e}", self.shared.name);
                        inc(&c.chains_invalid);
                    }
                }
            }
        }
    }

    /// Applies every update that is ready, in batches of whole master transactions, then
    /// runs the callbacks. What the host is to see is kept in the apply's transaction until
    /// its callback returns, so a crash or close between apply and callback replays it at
    /// the next subscribe. A storage failure stops the subscription (the replica stays at
    /// its last committed version) and is reported to waiters.
    fn apply_ready(&mut self) -> Result<()> {
        loop {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while batch.len() < APPLY_BATCH && bytes < APPLY_BATCH_BYTES {
                let Some(u) = self.receiver.poll_ready() else {
                    break;
                };
                bytes += u
                    .ops
                    .iter()
                    .map(|o| o.key.len() + o.value.len())
                    .sum::<usize>();
                batch.push(u);
            }
            let Some(last) = batch.last().map(|u| u.version) else {
                return Ok(());
            };
            let shown = self.filter(&mut batch);
            let hosted = self.callback.is_some();
            if !hosted {
                // Nothing to deliver: the cursor follows the replica.
                self.delivery.on_delivered(last);
            }
            let kept: &[Update] = if hosted { &shown } else { &[] };
            if let Err(e) = self.shared.store.apply(
                &self.shared.name,
                self.shared.tables,
                &batch,
                kept,
                self.delivery.delivered,
            ) {
                log::error!("{}: applying up to version {last}: {e}", self.shared.name);
                self.fail(&e);
                return Err(e);
            }
            crate::crash::point("apply.after_commit");
            self.delivered_durable = self.delivery.delivered;
            let c = &self.shared.counters;
            inc(&c.apply_commits);
            let now_us = crate::net::wall_clock_us();
            for u in batch.iter().filter(|u| u.timestamp_us != 0) {
                self.shared
                    .latency
                    .record(now_us.saturating_sub(u.timestamp_us));
            }
            add(&c.updates_applied, batch.len() as u64);
            // While older updates are still owed, these wait in the store behind them.
            if self.delivery.backlog == Backlog::Clear {
                self.deliver(&shown);
            }
            self.announce();
        }
    }

    /// Runs the callback for each update in order (skipping versions the host already
    /// holds) and moves the delivered cursor. Stops early when the subscription closes:
    /// the rest stays kept and is replayed at the next subscribe.
    fn deliver(&mut self, updates: &[Update]) {
        let Some(cb) = self.callback.as_mut() else {
            return;
        };
        let c = &self.shared.counters;
        for u in updates {
            if u.version <= self.delivery.delivered && !u.reset {
                continue;
            }
            if self.shared.stop.is_stopped() {
                return;
            }
            if self.delivery.wants(u.version) {
                let run = std::panic::AssertUnwindSafe(|| cb(u));
                if std::panic::catch_unwind(run).is_err() {
                    inc(&c.callback_panics);
                }
                inc(&c.updates_delivered);
            }
            self.delivery.on_delivered(u.version);
            crate::crash::point("deliver.between");
        }
    }

    /// Announces the version up to which the replica is applied and every callback has
    /// run, so a waiter that wakes at version v knows every callback up to v has run.
    fn announce(&self) {
        let applied = self.receiver.applied();
        let v = if self.callback.is_some() {
            applied.min(self.delivery.delivered)
        } else {
            applied
        };
        *self
            .shared
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = v;
        self.shared.advanced.notify_all();
    }

    /// Writes the delivered cursor when it lags: at once if `now`, otherwise at most every
    /// [`DELIVERED_FLUSH`] (applies write it too, for free).
    fn flush_delivered(&mut self, now: bool) {
        if self.delivery.delivered <= self.delivered_durable
            || (!now && self.last_flush.elapsed() < DELIVERED_FLUSH)
        {
            return;
        }
        self.last_flush = Instant::now();
        let v = self.delivery.delivered;
        match self
            .shared
            .store
            .mark_delivered(&self.shared.name, self.shared.tables, v)
        {
            Ok(()) => self.delivered_durable = v,
            // Not fatal: the cursor stays behind, and those callbacks replay once more.
            Err(e) => log::warn!("{}: recording delivery up to {v}: {e}", self.shared.name),
        }
    }

    /// Delivers what the host is owed from before live updates: a reset, journal updates
    /// the store no longer keeps, then the kept ones. A publisher that cannot answer now
    /// is asked again next turn; only a storage failure stops the subscription.
    fn deliver_backlog(&mut self, client: &mut RepairClient) -> Result<()> {
        loop {
            if self.shared.stop.is_stopped() {
                return Ok(());
            }
            match self.delivery.backlog {
                Backlog::Clear => return Ok(()),
                Backlog::Reset => self.deliver_reset()?,
                Backlog::Journal { from, through } => {
                    // A part at a time, so a host far behind is not held in memory whole.
                    let end = through.min(from.saturating_add(JOURNAL_PART - 1));
                    if !self.deliver_from_journal(client, from, end, through) {
                        return Ok(());
                    }
                }
                Backlog::Kept => {
                    let kept = self
                        .shared
                        .store
                        .pending_after(
                            &self.shared.name,
                            self.shared.tables,
                            self.delivery.delivered,
                            REPLAY_CHUNK_BYTES,
                        )
                        .inspect_err(|e| self.fail(e))?;
                    if kept.is_empty() {
                        self.delivery.on_kept_delivered();
                    } else {
                        add(&self.shared.counters.updates_replayed, kept.len() as u64);
                        self.deliver(&kept);
                    }
                }
            }
            self.announce();
        }
    }

    /// Hands the host the whole state of the replica in one update with `reset` set.
    fn deliver_reset(&mut self) -> Result<()> {
        let version = self.receiver.applied();
        let records = self
            .shared
            .store
            .all(self.shared.tables)
            .inspect_err(|e| self.fail(e))?;
        let reset = Update {
            version,
            timestamp_us: 0,
            ops: records
                .into_iter()
                .map(|(k, v)| crate::Op::put(k, v))
                .collect(),
            reset: true,
        };
        log::warn!(
            "{}: handing the host the whole state at version {version} ({} records)",
            self.shared.name,
            reset.ops.len()
        );
        inc(&self.shared.counters.resets_delivered);
        self.delivery.skip_through = 0;
        self.deliver(std::slice::from_ref(&reset));
        if self.shared.stop.is_stopped() {
            return Ok(());
        }
        self.delivery.on_reset_delivered(version);
        self.shared
            .store
            .reset_delivery(&self.shared.name, self.shared.tables, version)
            .inspect_err(|e| self.fail(e))?;
        self.delivered_durable = version;
        Ok(())
    }

    /// Calls back versions `from..=through` fetched from the publisher's journal (the
    /// replica already holds them). Returns whether that part of the backlog is done
    /// (delivered, or turned into a reset because the journal no longer reaches back).
    fn deliver_from_journal(
        &mut self,
        client: &mut RepairClient,
        from: u64,
        end: u64,
        through: u64,
    ) -> bool {
        let limits = self.limits;
        let mut got = Vec::new();
        let result = client.catch_up(&[(from, end)], |bytes| {
            got.push(decode_update(bytes, &limits)?);
            Ok(())
        });
        match result {
            Ok(_) if got.len() as u64 == end - from + 1 => {
                let shown = self.filter(&mut got);
                add(&self.shared.counters.updates_replayed, shown.len() as u64);
                self.deliver(&shown);
                if self.shared.stop.is_stopped() {
                    return false;
                }
                self.delivery.on_journal_part_delivered(end, through);
                true
            }
            Err(_) if client.last_refusal() == Some(ErrorCode::Trimmed) => {
                log::warn!(
                    "{}: the journal no longer holds versions {from}..={through} the host has \
                     not seen",
                    self.shared.name
                );
                self.delivery.on_trimmed();
                true
            }
            Ok(_) => {
                log::warn!(
                    "{}: journal answer for versions {from}..={through} was incomplete ({} \
                     updates); asking again",
                    self.shared.name,
                    got.len()
                );
                false
            }
            Err(e) => {
                log::warn!(
                    "{}: fetching versions {from}..={through} for the host: {e}",
                    self.shared.name
                );
                false
            }
        }
    }

    /// Enforces access groups. Puts of records this subscriber may not read become deletes
    /// of their keys in `batch` (so the record never lands in the replica, and an older
    /// visible value does not linger); the returned updates, for the callbacks, hold only
    /// the visible operations.
    fn filter(&self, batch: &mut [Update]) -> Vec<Update> {
        filter_updates(&self.groups, &self.shared.counters, batch)
    }

    /// Hash resync (the journal no longer reaches back, or one was asked for): makes the
    /// replica equal to the publisher's state, then continues from there. With
    /// `history_changed` the host is owed the whole state (a reset) instead of the changes.
    fn resync(&mut self, client: &mut RepairClient, history_changed: bool) -> Result<bool> {
        let c = self.shared.counters.clone();
        let groups = self.groups.clone();
        let filter = |b: &mut [Update]| filter_updates(&groups, &c, b);
        // A host ahead of the replica holds a state the changes are not relative to: it
        // gets the whole state too.
        let host_ahead = self.delivery.skip_through > self.receiver.applied();
        let host = match (self.callback.is_some(), history_changed || host_ahead) {
            (false, _) => HostDelivery::Nobody,
            (true, false) => HostDelivery::Changes,
            (true, true) => HostDelivery::Reset,
        };
        let out = crate::resync::run(
            &self.shared.store,
            &self.shared.name,
            self.shared.tables,
            client,
            &self.limits,
            Some(host),
            &filter,
        );
        let done = match out {
            Ok(done) => done,
            Err(e) => {
                inc(&c.repair_failures);
                log::warn!("{}: resync failed: {e}", self.shared.name);
                self.receiver.on_repair_done(Instant::now(), false);
                if e.kind() == crate::ErrorKind::Storage {
                    self.fail(&e);
                    return Err(e);
                }
                return Ok(false);
            }
        };
        let r = &done.report;
        inc(if r.full_copy {
            &c.catchups_full_copy
        } else {
            &c.catchups_resync
        });
        add(&c.resync_bytes, r.bytes);
        add(&c.resync_fetched, r.fetched);
        add(&c.resync_deleted, r.deleted);
        add(&c.updates_applied, r.journal_updates);
        inc(&c.apply_commits);
        log::info!(
            "{}: resync to version {} ({} fetched, {} deleted, {} bytes)",
            self.shared.name,
            r.version,
            r.fetched,
            r.deleted,
            r.bytes
        );
        self.receiver = Receiver::new(r.version, self.receiver_config.clone());
        match host {
            HostDelivery::Nobody => self.delivery.on_delivered(r.version),
            HostDelivery::Reset => self.delivery.on_history_changed(),
            // Kept in the resync's transaction; delivered now unless older ones are owed.
            HostDelivery::Changes if self.delivery.backlog == Backlog::Clear => {
                let shown = done.shown;
                self.deliver(&shown);
            }
            HostDelivery::Changes => {}
        }
        self.announce();
        Ok(true)
    }

    /// Resyncs the replica against the history the publisher now has (another incarnation,
    /// or a master behind the replica) and owes the host a reset. Tried again next turn
    /// until it succeeds; only a storage failure stops the subscription.
    fn adopt_history(&mut self, client: &mut RepairClient) -> Result<()> {
        let Some(new) = self.new_history else {
            return Ok(());
        };
        if self.last_history_try.elapsed() < HISTORY_RETRY {
            return Ok(());
        }
        self.last_history_try = Instant::now();
        log::warn!(
            "{}: the publisher's history changed (incarnation {new:016x}, replica at version {} \
             of {:016x}); resyncing",
            self.shared.name,
            self.receiver.applied(),
            self.incarnation
        );
        client.expect_incarnation(new);
        self.reorder = PacketReorder::new(self.reorder_config.clone());
        self.assembler.reset();
        if !self.resync(client, true)? {
            return Ok(());
        }
        self.shared
            .store
            .set_incarnation(&self.shared.name, new)
            .inspect_err(|e| self.fail(e))?;
        self.incarnation = new;
        self.new_history = None;
        inc(&self.shared.counters.history_changes);
        Ok(())
    }

    fn repair(&mut self, client: &mut RepairClient, ranges: &[(u64, u64)]) -> Result<()> {
        let c = self.shared.counters.clone();
        inc(&c.repairs_requested);
        let limits = self.limits;
        let mut failed_apply = None;
        // Far behind: the first range comes compacted (latest value per changed key).
        let compactable =
            limits.max_update_bytes >= 2 * crate::net::repair_server::COMPACT_CHUNK_BYTES;
        let compacted = ranges
            .first()
            .filter(|&&(a, b)| {
                compactable && b - a + 1 > self.compact_after && a == self.receiver.applied() + 1
            })
            .copied();
        let mut next_first = compacted.map_or(0, |(a, _)| a);
        let mut on_bytes = |bytes: &[u8]| -> Result<()> {
            let u = decode_update(bytes, &limits)?;
            if compacted.is_some() {
                let first = next_first;
                next_first = u.version + 1;
                self.receiver.on_compacted(Instant::now(), first, u);
            } else {
                self.receiver.on_update(Instant::now(), u);
            }
            // Apply as we go so a long catch-up neither holds everything in memory nor
            // delays callbacks until the end.
            if self.receiver.buffered_bytes() > APPLY_BATCH_BYTES / 2
                || bytes.len() > APPLY_BATCH_BYTES / 2
            {
                if let Err(e) = self.apply_ready() {
                    failed_apply = Some(e.to_string());
                    return Err(e);
                }
            }
            Ok(())
        };
        let result = match compacted {
            Some((a, b)) => client.compact(a, b, &mut on_bytes),
            None => client.catch_up(ranges, &mut on_bytes),
        };
        if let Some(e) = failed_apply {
            return Err(Error::Storage(e));
        }
        let now = Instant::now();
        match result {
            Ok(out) => {
                inc(if compacted.is_some() {
                    &c.catchups_compacted
                } else {
                    &c.catchups_journal
                });
                add(&c.repair_updates, out.updates);
                add(&c.repair_bytes, out.bytes);
                self.receiver.clamp_latest(out.current_version);
                self.receiver.on_repair_done(now, true);
            }
            Err(_) if client.last_refusal() == Some(ErrorCode::Trimmed) => {
                // The journal no longer reaches back this far: resync by hashes.
                return self.resync(client, false).map(|_| ());
            }
            Err(e) => {
                inc(&c.repair_failures);
                log::warn!("{}: repair of {ranges:?} failed: {e}", self.shared.name);
                if e.kind() == crate::ErrorKind::Refused {
                    // The versions may not exist (announced by a heartbeat from a publisher
                    // that since lost them): learn the real latest version.
                    if let Ok(info) = client.hello() {
                        self.receiver.clamp_latest(info.current_version);
                    }
                }
                self.receiver.on_repair_done(now, false);
            }
        }
        self.apply_ready()
    }

    fn sync_counters(&self) {
        let r = self.receiver.counters();
        let c = &self.shared.counters;
        c.duplicates.store(r.duplicates, Ordering::Relaxed);
        c.gaps_detected.store(r.gaps, Ordering::Relaxed);
        c.reorder_evicted.store(r.evicted, Ordering::Relaxed);
        let o = self.reorder.counters();
        c.packets_skipped.store(o.skipped, Ordering::Relaxed);
        c.packets_reordered.store(o.out_of_order, Ordering::Relaxed);
        let t = self.two_phase.counters();
        c.prepares_received
            .store(t.prepares_received, Ordering::Relaxed);
        c.prepares_aborted
            .store(t.prepares_aborted, Ordering::Relaxed);
        c.votes_prepared.store(t.votes_prepared, Ordering::Relaxed);
        c.votes_refused.store(t.votes_refused, Ordering::Relaxed);
    }
}

impl Subscription {
    /// Name of the replicated database.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// One record of the replica.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.shared.store.get(self.shared.tables, key.as_ref())
    }

    /// Every record of the replica in key order, as of one consistent version.
    pub fn iter(&self) -> Result<std::vec::IntoIter<crate::Record>> {
        Ok(self.shared.store.all(self.shared.tables)?.into_iter())
    }

    /// Version up to which the replica is applied and the callback has run for every
    /// update (with no callback: the version the replica is at).
    pub fn version(&self) -> u64 {
        *self
            .shared
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the replica reaches version `v`. Fails with `Timeout` after `timeout`,
    /// with `Closed` if the subscription closes, or with `Storage` if it stopped on a
    /// storage failure.
    pub fn wait_for_version(&self, v: u64, timeout: Duration) -> Result<()> {
        let now = Instant::now();
        // A huge timeout means "forever": clamp instead of overflowing.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut cur = self
            .shared
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *cur < v {
            if let Some(f) = &*self
                .shared
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
            {
                return Err(Error::Storage(f.clone()));
            }
            if let Some(a) = &*self
                .shared
                .auth_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
            {
                return Err(Error::Auth(format!(
                    "database {:?} at version {}: {a}",
                    self.shared.name, *cur
                )));
            }
            if self.shared.stop.is_stopped() {
                return Err(Error::Closed(format!(
                    "subscription to {:?} closed at version {}",
                    self.shared.name, *cur
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(format!(
                    "database {:?} at version {} after {timeout:?}, waiting for {v}",
                    self.shared.name, *cur
                )));
            }
            cur = self
                .shared
                .advanced
                .wait_timeout(cur, (deadline - now).min(IDLE_WAIT))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Waits until the replica has caught up with the version the publisher had when this
    /// subscription registered, and every callback up to it has run (replays included);
    /// returns that version. Fails like [`wait_for_version`](Self::wait_for_version).
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<u64> {
        let v = self.shared.registered_version;
        self.wait_for_version(v, timeout)?;
        Ok(v)
    }

    /// Waits until the replica has caught up with the version the publisher has **now**,
    /// and every callback up to it has run; returns that version. Unlike
    /// [`wait_caught_up`](Self::wait_caught_up) (the version at registration) it needs no
    /// version from the caller: it asks the publisher, over a short control connection of
    /// its own made with `subscriber`'s configuration (see
    /// [`publisher_version`](Self::publisher_version)); `subscriber` is the one this
    /// subscription was made by. `timeout` covers the question and the wait. Fails like
    /// [`wait_for_version`](Self::wait_for_version), and with the connection's errors
    /// (`Io` when the publisher cannot be reached or does not answer in time, `Auth`,
    /// `Refused`).
    pub fn wait_until_current(&self, subscriber: &Subscriber, timeout: Duration) -> Result<u64> {
        let start = Instant::now();
        if self.is_closed() {
            // Says why without asking the publisher: closed, a storage failure, revoked.
            self.wait_for_version(u64::MAX, Duration::ZERO)?;
        }
        let v = self.publisher_version(subscriber, timeout)?;
        match self.wait_for_version(v, timeout.saturating_sub(start.elapsed())) {
            Err(Error::Timeout(_)) => Err(Error::Timeout(format!(
                "database {:?} at version {} after {timeout:?}, waiting for {v} (the \
                 publisher's version when asked)",
                self.shared.name,
                self.version()
            ))),
            other => other.map(|()| v),
        }
    }

    /// The publisher's latest version of this database, asked over a new control
    /// connection (a registration closed again at once) made with `subscriber`'s
    /// configuration; `subscriber` is the one this subscription was made by. Its reads and
    /// writes time out after `io_timeout` or the subscriber's `repair_io_timeout`,
    /// whichever is shorter.
    pub fn publisher_version(&self, subscriber: &Subscriber, io_timeout: Duration) -> Result<u64> {
        if !Arc::ptr_eq(&subscriber.store, &self.shared.store) {
            return Err(Error::Config(format!(
                "the subscription to {:?} was made by another subscriber",
                self.shared.name
            )));
        }
        let cfg = &subscriber.config;
        let identity = identity(cfg)?;
        // HELLO_OK carries keys and groups, never updates.
        let max_frame = crate::wire::control::MAX_LIST_ENTRIES * 16 + 64;
        let timeout = io_timeout
            .min(cfg.repair_io_timeout)
            .max(Duration::from_millis(1));
        let mut client = RepairClient::new(identity, &self.shared.name, timeout, max_frame);
        let info = client.hello()?;
        if let Err(e) = client.close_subscription() {
            log::debug!("{}: closing a version query: {e}", self.shared.name);
        }
        Ok(info.current_version)
    }

    /// Number of records in the replica (LMDB's entry count; no record is read).
    pub fn len(&self) -> Result<u64> {
        self.shared.store.count(self.shared.tables)
    }

    /// Whether the replica holds no record.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every key of the replica in key order, as of one consistent version.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.shared.store.keys(self.shared.tables)
    }

    /// A snapshot of the subscription's counters.
    pub fn stats(&self) -> SubscriptionStats {
        self.shared.stats()
    }

    /// Asks the process thread to resync this replica by hashes now (for a store restored
    /// from a backup or edited by hand). Progress shows in the stats
    /// (`catchups_resync`, `resync_bytes`).
    pub fn request_resync(&self) {
        self.shared.force_resync.store(true, Ordering::SeqCst);
    }

    /// Whether the subscription is closed (or stopped after a storage failure).
    pub fn is_closed(&self) -> bool {
        self.shared.stop.is_stopped()
    }

    /// Stops both threads and closes the socket. Idempotent. May be called from the
    /// subscription's own callback: it then returns at once and the threads exit after the
    /// callback returns.
    pub fn close(&self) -> Result<()> {
        let _ = self.shared.close();
        Ok(())
    }
}
