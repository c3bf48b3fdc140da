//! The public subscriber API: subscribe to databases and read the local replicas.
//!
//! Per subscription there is exactly one receive thread (socket → source check → decrypt
//! → channel) and one process thread, which drives the sans-IO subscription engine
//! (`proto::subscription`: packet and chain order, version order, re-registration, error
//! policy, repair strategy) and does what it asks: one LMDB transaction per group of whole
//! master transactions, then the callbacks (`host.rs`); repairs over the control channel
//! (`repair.rs`). The driver loop is `driver.rs`.

mod control;
mod driver;
mod host;
mod repair;
mod start;
mod subscription;

use crate::auth::visible;
use crate::config::{ReplicaDurability, SubscriberConfig};
use crate::crypto::Keyring;
use crate::net::StopFlag;
use crate::publisher::validate_database_name;
use crate::resync::{HostDelivery, ResyncReport};
use crate::stats::{inc, SubscriptionCounters, SubscriptionStats};
use crate::store::subscriber::ReplicaTables;
use crate::store::SubscriberStore;
use crate::sync::Locked;
use crate::wire::control::DatabaseInfo;
use crate::wire::update::Limits;
use crate::{Error, Result, Update};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};

/// A host callback, run on the subscription's process thread after each master
/// transaction is committed to the replica, once per transaction, in version order.
pub type UpdateCallback = Box<dyn FnMut(&Update) + Send + 'static>;

/// A participant's vote on a two-phase update: `Ok` for PREPARED, `Err(reason)` to
/// refuse. Runs on the subscription's process thread before anything is visible.
pub type VoteCallback = Box<dyn FnMut(&Update) -> std::result::Result<(), String> + Send + 'static>;

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
        let r = self.store.replica_stats();
        s.replica_durability = r.durability;
        s.replica_flushes = r.flushes;
        s.replica_rebuilds = r.rebuilds;
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
            version: *self.version.locked(),
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
        let threads = std::mem::take(&mut *self.threads.locked());
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
    /// Flushes the replica store every interval ([`ReplicaDurability::Periodic`]).
    flusher: Mutex<Option<Flusher>>,
}

/// The thread that flushes a NOSYNC replica store ([`ReplicaDurability::Periodic`]),
/// stopped at close. It looks every interval and flushes when no apply happened since it
/// last looked (an idle replica is clean within two intervals, and an fsync then finds
/// little to write), or when [`FORCED_FLUSH_INTERVALS`] intervals passed since the last
/// flush. Flushing every interval under load stalled the disk: with 4 replicas on one
/// disk, p50 publish→applied at 10k/s went from 19 ms (`none`) to 113 ms.
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

/// Under continuous applies a periodic replica is still flushed every this many intervals.
pub const FORCED_FLUSH_INTERVALS: u32 = 30;

impl Flusher {
    fn start(store: Arc<SubscriberStore>, interval: std::time::Duration) -> Result<Flusher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mcsync-flush".into())
            .spawn(move || {
                let (stopped, cv) = &*stop2;
                let mut next = std::time::Instant::now() + interval;
                let mut last_flush = std::time::Instant::now();
                let mut seen = store.writes_ended();
                let mut s = stopped.locked();
                loop {
                    let now = std::time::Instant::now();
                    if *s {
                        return;
                    }
                    if now < next {
                        s = cv
                            .wait_timeout(s, next - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    // The fsync runs without the stop lock, so close never waits on it
                    // for longer than the flush in progress.
                    drop(s);
                    let writes = store.writes_ended();
                    if writes == seen || last_flush.elapsed() >= interval * FORCED_FLUSH_INTERVALS {
                        if let Err(e) = store.flush() {
                            log::error!("flushing the replica store: {e}");
                        }
                        last_flush = std::time::Instant::now();
                    }
                    seen = writes;
                    next = std::time::Instant::now() + interval;
                    s = stopped.locked();
                }
            })
            .map_err(|e| Error::io("spawning the replica flusher thread", e))?;
        Ok(Flusher { stop, thread })
    }

    fn stop(self) {
        *self.stop.0.locked() = true;
        self.stop.1.notify_all();
        let _ = self.thread.join();
    }
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
        let mut subs = self.subscriber.subs.locked();
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
        let store = Arc::new(SubscriberStore::open_with(
            &config.data_dir,
            config.map_size,
            config.replica_durability,
        )?);
        let flusher = match store.durability() {
            ReplicaDurability::Periodic(interval) => Some(Flusher::start(store.clone(), interval)?),
            _ => None,
        };
        Ok(Subscriber {
            closed: AtomicBool::new(false),
            config,
            store,
            subs: Mutex::new(Subs::default()),
            idle: Condvar::new(),
            flusher: Mutex::new(flusher),
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
        let shared = start::start(
            &self.config,
            &self.store,
            name,
            callback,
            participant,
            after,
        )?;
        let mut subs = self.subs.locked();
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
        let mut subs = self.subs.locked();
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
        let mut client = start::client_for(&self.config, name)?;
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
            .locked()
            .live
            .values()
            .map(|s| s.metrics_view())
            .collect();
        views.sort_by(|a, b| a.database.cmp(&b.database));
        crate::metrics::render_subscriber(&views)
    }

    /// Whether [`close`](Self::close) was called (subscribing then fails with
    /// `Error::Closed`).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes every subscription and joins their threads. Idempotent.
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        let subs: Vec<_> = {
            let mut subs = self.subs.locked();
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
        if let Some(f) = self.flusher.locked().take() {
            f.stop();
        }
        // Every writer (process thread) is joined: the final flush, then the directory
        // may be opened again. (Otherwise the store flushes when its last user drops it.)
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
