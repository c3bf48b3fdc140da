//! The upstream side of one relayed database: a subscription whose callback imports each
//! update into the downstream publisher, a checker of the imports' outcomes, and the
//! supervisor that subscribes again — exactly after the downstream's journaled version —
//! when an import failed or the subscription ended.

use super::{relay_closed, replace, RelayCounters, RelayInner};
use crate::sync::{Locked, RwLocked};
use crate::{Error, Pending, Result, SubscribeOptions, Subscription, Update};
use crossbeam_channel as chan;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait between two attempts to subscribe upstream.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the supervisor looks at the links.
const TICK: Duration = Duration::from_millis(20);

/// One relayed database's upstream subscription.
pub(super) struct Link {
    name: String,
    pub(super) subscription: Option<Subscription>,
    /// Set when an import of this subscription failed: its later callbacks are skipped and
    /// the supervisor subscribes again. One flag per subscription, so a late outcome of an
    /// old one cannot break the next.
    broken: Arc<AtomicBool>,
    next_try: Instant,
    backoff: Duration,
}

impl Link {
    pub(super) fn new(name: &str) -> Link {
        Link {
            name: name.to_owned(),
            subscription: None,
            broken: Arc::new(AtomicBool::new(false)),
            next_try: Instant::now(),
            backoff: Duration::from_millis(100),
        }
    }

    fn needs_subscribe(&self) -> bool {
        match &self.subscription {
            None => true,
            Some(s) => s.is_closed() || self.broken.load(Ordering::SeqCst),
        }
    }

    /// Closes the subscription: no callback runs after this returns.
    pub(super) fn close(&mut self) {
        if let Some(s) = self.subscription.take() {
            let _ = s.close();
        }
    }
}

/// Subscribes `link` upstream exactly after the downstream's journaled version (closing
/// its previous subscription first).
pub(super) fn subscribe(inner: &Arc<RelayInner>, link: &mut Link) -> Result<()> {
    link.close();
    let after = {
        let p = inner.publisher.read_locked();
        let p = p.as_ref().ok_or_else(relay_closed)?;
        // Every import handed over before is journaled: the version is exact.
        p.flush()?;
        p.database(&link.name)?.version()
    };
    let broken = Arc::new(AtomicBool::new(false));
    let callback = importer(Arc::downgrade(inner), &link.name, broken.clone());
    let sub = inner.subscriber.subscribe_with_options(
        &link.name,
        SubscribeOptions {
            callback: Some(Box::new(callback)),
            after: Some(after),
            ..SubscribeOptions::default()
        },
    )?;
    log::info!(
        "relay of {:?}: subscribed upstream after version {after}",
        link.name
    );
    link.subscription = Some(sub);
    link.broken = broken;
    Ok(())
}

/// The subscription's callback: imports each update (or replaces the database on a
/// reset); after a failure it skips everything until the supervisor subscribes again.
fn importer(
    weak: Weak<RelayInner>,
    name: &str,
    broken: Arc<AtomicBool>,
) -> impl FnMut(&Update) + Send + 'static {
    let name = name.to_owned();
    move |u: &Update| {
        let Some(inner) = weak.upgrade() else { return };
        if broken.load(Ordering::SeqCst) || inner.stop.is_stopped() {
            return;
        }
        let result = if u.reset {
            replace::replace(&inner, &name, u).map(|()| None)
        } else {
            let p = inner.publisher.read_locked();
            p.as_ref()
                .ok_or_else(relay_closed)
                .and_then(|p| p.database(&name)?.import(u))
                .map(Some)
        };
        match result {
            Ok(Some(pending)) => inner.imports.check(pending, &name, u.version, &broken),
            Ok(None) => {}
            Err(e) => {
                log::warn!(
                    "relay of {name:?}: version {} not relayed ({e}); subscribing again",
                    u.version
                );
                inner.counters.import_errors.fetch_add(1, Ordering::SeqCst);
                broken.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The supervisor thread: subscribes again every link that needs it, with back-off.
pub(super) fn supervise(weak: &Weak<RelayInner>) {
    loop {
        std::thread::sleep(TICK);
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.is_stopped() {
            return;
        }
        if let Err(e) = replace::ensure_publisher(&inner) {
            log::error!("relay: downstream publisher not running: {e}");
            continue;
        }
        let mut links = inner.links.locked();
        for link in links.values_mut() {
            if !link.needs_subscribe() || Instant::now() < link.next_try {
                continue;
            }
            inner.counters.resubscribes.fetch_add(1, Ordering::SeqCst);
            match subscribe(&inner, link) {
                Ok(()) => link.backoff = Duration::from_millis(100),
                Err(e) => {
                    log::warn!(
                        "relay of {:?}: subscribing upstream: {e} (again in {:?})",
                        link.name,
                        link.backoff
                    );
                    link.next_try = Instant::now() + link.backoff;
                    link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// An import handed to the intake, waiting for its outcome.
struct Checked {
    pending: Pending<u64>,
    name: String,
    version: u64,
    broken: Arc<AtomicBool>,
}

/// A thread that waits for each import's outcome in order, counts it, and breaks the
/// subscription of an import that failed.
pub(super) struct Imports {
    tx: Mutex<Option<chan::Sender<Checked>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Imports {
    pub(super) fn start(counters: Arc<RelayCounters>) -> Result<Imports> {
        let (tx, rx) = chan::unbounded::<Checked>();
        let thread = std::thread::Builder::new()
            .name("mcsync-relay-imports".into())
            .spawn(move || {
                for c in rx {
                    match c.pending.wait_forever() {
                        Ok(_) => {
                            counters.imported.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            log::warn!(
                                "relay of {:?}: version {} not relayed ({e}); subscribing again",
                                c.name,
                                c.version
                            );
                            counters.import_errors.fetch_add(1, Ordering::SeqCst);
                            c.broken.store(true, Ordering::SeqCst);
                        }
                    }
                }
            })
            .map_err(|e| Error::io("spawning relay import checker", e))?;
        Ok(Imports {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn check(&self, pending: Pending<u64>, name: &str, version: u64, broken: &Arc<AtomicBool>) {
        if let Some(tx) = &*self.tx.locked() {
            let _ = tx.send(Checked {
                pending,
                name: name.to_owned(),
                version,
                broken: broken.clone(),
            });
        }
    }

    /// Waits for every outcome, then stops the thread.
    pub(super) fn drain(&self) {
        drop(self.tx.locked().take());
        if let Some(h) = self.thread.locked().take() {
            let _ = h.join();
        }
    }
}
