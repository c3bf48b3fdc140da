//! Reading a replica and waiting on it: the `Subscription` handle.

use super::start::identity;
use super::{driver, Subscriber, Subscription};
use crate::net::repair_client::RepairClient;
use crate::stats::SubscriptionStats;
use crate::sync::Locked;
use crate::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        *self.shared.version.locked()
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
        let mut cur = self.shared.version.locked();
        while *cur < v {
            if let Some(f) = &*self.shared.failure.locked() {
                return Err(Error::Storage(f.clone()));
            }
            if let Some(a) = &*self.shared.auth_error.locked() {
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
                .wait_timeout(cur, (deadline - now).min(driver::IDLE_WAIT))
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
