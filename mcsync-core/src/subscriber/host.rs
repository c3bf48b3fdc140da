//! What the host sees: applying batches to the replica, running callbacks in version
//! order, the durable delivered cursor, and the backlog the host is owed from before live
//! updates (a reset, journal updates, kept ones).

use super::control::{Control, Job, JournalPart};
use super::driver::Driver;
use super::filter_updates;
use crate::proto::Backlog;
use crate::stats::{add, inc};
use crate::sync::Locked;
use crate::{Result, Update};
use std::time::{Duration, Instant};

/// Longest the durable delivered cursor lags the callbacks while the subscription is
/// busy (a crash replays at most this window; written with the next apply meanwhile).
const DELIVERED_FLUSH: Duration = Duration::from_millis(200);
/// Most versions fetched from the journal at once for a host behind its replica.
const JOURNAL_PART: u64 = 4096;
/// After a part of the host's journal backlog could not be fetched, how long until it is
/// asked for again.
const JOURNAL_RETRY: Duration = Duration::from_millis(500);
/// Most bytes of kept updates read from the store at once when replaying.
const REPLAY_CHUNK_BYTES: usize = 4 << 20;

impl Driver {
    /// Applies one batch of whole master transactions, then runs the callbacks. What the host is to see is kept in the apply's transaction until
    /// its callback returns, so a crash or close between apply and callback replays it at
    /// the next subscribe. A storage failure stops the subscription (the replica stays at
    /// its last committed version) and is reported to waiters.
    pub fn apply(&mut self, mut batch: Vec<Update>) -> Result<()> {
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
        Ok(())
    }

    /// Runs the callback for each update in order (skipping versions the host already
    /// holds) and moves the delivered cursor. Stops early when the subscription closes:
    /// the rest stays kept and is replayed at the next subscribe.
    pub fn deliver(&mut self, updates: &[Update]) {
        // What the host sees, the counters show already.
        self.sync_counters();
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
    pub fn announce(&self) {
        self.sync_counters();
        let applied = self.engine.applied();
        let v = if self.callback.is_some() {
            applied.min(self.delivery.delivered)
        } else {
            applied
        };
        *self.shared.version.locked() = v;
        self.shared.advanced.notify_all();
    }

    /// Writes the delivered cursor when it lags: at once if `now`, otherwise at most every
    /// [`DELIVERED_FLUSH`] (applies write it too, for free).
    pub fn flush_delivered(&mut self, now: bool) {
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
    /// is asked again after `JOURNAL_RETRY`; only a storage failure stops the
    /// subscription.
    pub fn deliver_backlog(&mut self, control: &Control) -> Result<()> {
        loop {
            if self.shared.stop.is_stopped() {
                return Ok(());
            }
            match self.delivery.backlog {
                Backlog::Clear => return Ok(()),
                // Rebuilt after a power loss: not before the replica is back where the host
                // was (asked again next turn).
                Backlog::Reset if self.engine.applied() < self.reset_floor => return Ok(()),
                Backlog::Reset => self.deliver_reset()?,
                Backlog::Journal { from, through } => {
                    // A part at a time, so a host far behind is not held in memory whole;
                    // the answer comes as an event (`journal_part`).
                    if !self.journal_in_flight && Instant::now() >= self.journal_retry_at {
                        let end = through.min(from.saturating_add(JOURNAL_PART - 1));
                        self.journal_in_flight = true;
                        control.send(Job::Journal { from, end });
                    }
                    return Ok(());
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
        let version = self.engine.applied();
        // With each record's access groups: a host (or a relay re-publishing the state)
        // keeps the restrictions.
        let ops = self
            .shared
            .store
            .all_puts(self.shared.tables)
            .inspect_err(|e| self.fail(e))?;
        let reset = Update {
            version,
            timestamp_us: 0,
            ops,
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

    /// Calls back versions `from..=end` fetched from the publisher's journal (the replica
    /// already holds them), or turns the rest of that backlog into a reset when the
    /// journal no longer reaches back. A failed part is asked again next turn.
    pub fn journal_part(&mut self, from: u64, end: u64, part: JournalPart) {
        self.journal_in_flight = false;
        let through = match self.delivery.backlog {
            Backlog::Journal { from: f, through } if f == from => through,
            // Owed something else meanwhile (the history changed): not this any more.
            _ => return,
        };
        match part {
            JournalPart::Got(mut got) => {
                let shown = self.filter(&mut got);
                add(&self.shared.counters.updates_replayed, shown.len() as u64);
                self.deliver(&shown);
                if self.shared.stop.is_stopped() {
                    return;
                }
                self.delivery.on_journal_part_delivered(end, through);
            }
            JournalPart::Trimmed => {
                log::warn!(
                    "{}: the journal no longer holds versions {from}..={through} the host has \
                     not seen",
                    self.shared.name
                );
                self.delivery.on_trimmed();
            }
            JournalPart::Failed(why) => {
                // The answer of a publisher that is down comes at once: not a tight loop.
                self.journal_retry_at = Instant::now() + JOURNAL_RETRY;
                log::warn!(
                    "{}: fetching versions {from}..={end} for the host: {why}; asking again \
                     in {JOURNAL_RETRY:?}",
                    self.shared.name
                );
            }
        }
        self.announce();
    }

    /// Enforces access groups. Puts of records this subscriber may not read become deletes
    /// of their keys in `batch` (so the record never lands in the replica, and an older
    /// visible value does not linger); the returned updates, for the callbacks, hold only
    /// the visible operations.
    pub fn filter(&self, batch: &mut [Update]) -> Vec<Update> {
        filter_updates(self.engine.groups(), &self.shared.counters, batch)
    }
}
