//! A relay: a replica that serves others (DESIGN section 8, "Relay"). It subscribes to
//! databases of an upstream publisher and re-publishes each one — same master versions,
//! record content and timestamps — from a downstream [`Publisher`] of its own: its own
//! journal (packet repair, catch-up, compacted catch-up and hash resync downstream), control
//! server, TLS identity, users and key epochs. Downstream subscribers are ordinary
//! subscribers, and relays chain.
//!
//! One idea per file: `link` (the upstream subscription of one database, feeding imports
//! and re-subscribing exactly after the downstream's version when something went wrong);
//! `replace` (an upstream reset: the downstream database is replaced and draws a new
//! incarnation, so downstream replicas resync).
//!
//! Guarantees:
//! - **Exactly once, in order.** Each database subscribes upstream with
//!   [`SubscribeOptions::after`](crate::SubscribeOptions::after) set to the downstream
//!   database's journaled version, so after a crash (kill -9 or power loss) the relay
//!   resumes exactly after what its own journal holds and imports the rest again.
//! - **Durability** is the downstream config's, and both modes give the same guarantee: the
//!   intake (`Durability::Sync`) or the journal writer (`Durability::Async`) multicasts an
//!   update only after its durable journal commit, imports are not waited for one by one
//!   (a checker thread collects their outcomes), and after kill -9 or a power loss the relay
//!   resumes after its journal's last durable version and imports the rest again from
//!   upstream, with the same content. `Async` only answers imports sooner, so the journal
//!   writer pipelines behind the intake: about 1.4× the throughput (docs/BENCHMARKS.md,
//!   section (g)); `mcsync relay` uses it by default.
//! - **Two-phase updates** upstream reach the relay's callbacks only once committed; the
//!   downstream sees them as ordinary one-phase commits (the relay is no participant).
//! - **Access groups**: the relay's replica holds only what its upstream grant allows, and
//!   every record it re-publishes keeps its groups — imports carry them, and an upstream
//!   reset or hash resync hands them over too (FETCH_RECORD carries them, the replica keeps
//!   them in `acl/<db>`). Downstream grants come from the relay's own users file or
//!   authenticator.

mod link;
mod replace;

use crate::net::StopFlag;
use crate::stats::{PublisherStats, SubscriptionStats};
use crate::sync::{Locked, RwLocked};
use crate::{Error, Publisher, PublisherConfig, Result, Subscriber, SubscriberConfig};
use link::{Imports, Link};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Everything [`Relay::open`] needs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How to reach the upstream publisher; `data_dir` holds the relay's replica.
    pub upstream: SubscriberConfig,
    /// How to publish downstream: its own data directory (journal and state), control
    /// address, multicast groups and interface, identity, users and durability.
    pub downstream: PublisherConfig,
    /// The databases relayed (at least one).
    pub databases: Vec<String>,
}

/// A relay's own counters, beside its publisher's and its subscriptions'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Upstream updates committed downstream.
    pub imported: u64,
    /// Imports refused (a gap or duplicate version, a closed publisher); each leads to a
    /// re-subscription after the downstream's version.
    pub import_errors: u64,
    /// Upstream resets: a downstream database replaced with a new incarnation.
    pub resets: u64,
    /// Upstream subscriptions made again (after an import error or a lost subscription).
    pub resubscribes: u64,
}

impl RelayStats {
    /// Every counter with its name, in declaration order.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("imported", self.imported),
            ("import_errors", self.import_errors),
            ("resets", self.resets),
            ("resubscribes", self.resubscribes),
        ]
    }
}

#[derive(Default)]
struct RelayCounters {
    imported: AtomicU64,
    import_errors: AtomicU64,
    resets: AtomicU64,
    resubscribes: AtomicU64,
}

/// What the relay's threads and callbacks share.
struct RelayInner {
    /// The downstream config, with the control address the first open bound (a
    /// replacement reopens the publisher on the same address).
    downstream: Mutex<PublisherConfig>,
    /// The downstream publisher: imports hold it shared; a replacement holds it alone.
    publisher: RwLock<Option<Publisher>>,
    subscriber: Subscriber,
    links: Mutex<BTreeMap<String, Link>>,
    imports: Imports,
    counters: Arc<RelayCounters>,
    fingerprint: Option<String>,
    control_addr: SocketAddr,
    stop: StopFlag,
}

/// A running relay. Closing it (or dropping it) stops its subscriptions, then its
/// publisher.
pub struct Relay {
    inner: Arc<RelayInner>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

fn relay_closed() -> Error {
    Error::Closed("relay is closed".into())
}

impl Relay {
    /// Opens the downstream publisher and the upstream subscriber, publishes every database
    /// of `config.databases` and subscribes to it upstream after the downstream's version.
    /// Fails on bad configuration, an unusable data directory, or an upstream that refuses
    /// the relay's credentials; an upstream that cannot be reached yet is retried.
    pub fn open(config: RelayConfig) -> Result<Relay> {
        if config.databases.is_empty() {
            return Err(Error::Config("a relay needs at least one database".into()));
        }
        if config.upstream.data_dir == config.downstream.data_dir {
            return Err(Error::Config(format!(
                "the relay's upstream replica and downstream publisher need different data \
                 directories (both are {})",
                config.upstream.data_dir.display()
            )));
        }
        let mut downstream = config.downstream.clone();
        let publisher = Publisher::open(config.downstream)?;
        downstream.control_addr = publisher.control_addr();
        for name in &config.databases {
            publisher.database(name)?;
        }
        let subscriber = Subscriber::open(config.upstream)?;
        let counters = Arc::new(RelayCounters::default());
        let inner = Arc::new(RelayInner {
            fingerprint: publisher.fingerprint().map(str::to_owned),
            control_addr: publisher.control_addr(),
            downstream: Mutex::new(downstream),
            publisher: RwLock::new(Some(publisher)),
            subscriber,
            links: Mutex::new(BTreeMap::new()),
            imports: Imports::start(counters.clone())?,
            counters,
            stop: StopFlag::default(),
        });
        let relay = Relay {
            inner: inner.clone(),
            supervisor: Mutex::new(None),
        };
        for name in &config.databases {
            let mut link = Link::new(name);
            match link::subscribe(&inner, &mut link) {
                Err(e) if matches!(e.kind(), crate::ErrorKind::Auth | crate::ErrorKind::Config) => {
                    return Err(e)
                }
                Err(e) => log::warn!("relay of {name:?}: upstream not reached yet ({e}); retrying"),
                Ok(()) => {}
            }
            inner.links.locked().insert(name.clone(), link);
        }
        let weak = Arc::downgrade(&inner);
        let h = std::thread::Builder::new()
            .name("mcsync-relay".into())
            .spawn(move || link::supervise(&weak))
            .map_err(|e| Error::io("spawning relay supervisor", e))?;
        *relay.supervisor.locked() = Some(h);
        Ok(relay)
    }

    /// Runs `f` on the downstream publisher (`Closed` once the relay is closed).
    fn with_publisher<T>(&self, f: impl FnOnce(&Publisher) -> Result<T>) -> Result<T> {
        let p = self.inner.publisher.read_locked();
        f(p.as_ref().ok_or_else(relay_closed)?)
    }

    /// SHA-256 fingerprint of the relay's own certificate, for its downstream subscribers
    /// to pin (`None` with `ServerIdentity::InsecureLoopback`).
    pub fn fingerprint(&self) -> Option<&str> {
        self.inner.fingerprint.as_deref()
    }

    /// The address downstream subscribers connect to.
    pub fn control_addr(&self) -> SocketAddr {
        self.inner.control_addr
    }

    /// The downstream multicast group and port of database `name`.
    pub fn group(&self, name: &str) -> Result<SocketAddr> {
        self.with_publisher(|p| Ok(p.database(name)?.group()))
    }

    /// The version database `name` is relayed up to (journaled downstream).
    pub fn version(&self, name: &str) -> Result<u64> {
        self.with_publisher(|p| Ok(p.database(name)?.version()))
    }

    /// The downstream incarnation of database `name` (a new one after an upstream reset).
    pub fn incarnation(&self, name: &str) -> Result<u64> {
        self.with_publisher(|p| Ok(p.database(name)?.incarnation()))
    }

    /// The downstream key epoch of database `name` (the relay's own keys).
    pub fn key_epoch(&self, name: &str) -> Result<u32> {
        self.with_publisher(|p| Ok(p.database(name)?.key_epoch()))
    }

    /// Rotates database `name`'s downstream key; returns the new epoch.
    pub fn rotate_key(&self, name: &str) -> Result<u32> {
        self.with_publisher(|p| p.database(name)?.rotate_key())
    }

    /// Cuts downstream `user` off (see [`Publisher::revoke`]).
    pub fn revoke(&self, user: &str) -> Result<()> {
        self.with_publisher(|p| p.revoke(user))
    }

    /// The relay's own counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.inner.counters;
        RelayStats {
            imported: c.imported.load(Ordering::SeqCst),
            import_errors: c.import_errors.load(Ordering::SeqCst),
            resets: c.resets.load(Ordering::SeqCst),
            resubscribes: c.resubscribes.load(Ordering::SeqCst),
        }
    }

    /// The downstream publisher's counters.
    pub fn downstream_stats(&self) -> Result<PublisherStats> {
        self.with_publisher(|p| Ok(p.stats()))
    }

    /// The upstream subscription's counters of database `name` (`None` while it is not
    /// subscribed).
    pub fn upstream_stats(&self, name: &str) -> Option<SubscriptionStats> {
        let links = self.inner.links.locked();
        links.get(name)?.subscription.as_ref().map(|s| s.stats())
    }

    /// The downstream publisher's metrics (OpenMetrics text, see [`Publisher::metrics`]).
    pub fn metrics(&self) -> Result<String> {
        self.with_publisher(|p| Ok(p.metrics()))
    }

    /// Waits until database `name` is relayed up to at least version `v`.
    pub fn wait_for_version(&self, name: &str, v: u64, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let now = self.version(name)?;
            if now >= v {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "relay of database {name:?} at version {now}, waited for {v}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the upstream subscriptions, then closes the downstream publisher (what it
    /// journaled stays; a reopened relay resumes after it). Idempotent.
    pub fn close(&self) -> Result<()> {
        self.inner.stop.stop();
        if let Some(h) = self.supervisor.locked().take() {
            let _ = h.join();
        }
        let links = std::mem::take(&mut *self.inner.links.locked());
        for (_, mut link) in links {
            link.close();
        }
        let _ = self.inner.subscriber.close();
        if let Some(p) = self.inner.publisher.write_locked().take() {
            p.close()?;
        }
        self.inner.imports.drain();
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
