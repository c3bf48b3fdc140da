//! Orders updates by version, detects what is missing, and says which versions to repair.
//!
//! Updates arrive from multicast chains and from repair, in any order and possibly twice.
//! The receiver hands them out strictly in version order, each once. A gap — a version
//! above the next expected one, or a heartbeat announcing a newer version — turns into a
//! repair request for exactly the missing versions.

use crate::proto::range_set::RangeSet;
use crate::update::Update;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Tuning of a [`Receiver`].
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Bytes of out-of-order updates held; above it the highest versions are evicted (they
    /// are repaired later).
    pub buffer_bytes: usize,
    /// Wait after a gap appears before asking for repair.
    pub repair_delay: Duration,
    /// Wait before asking again for versions a finished repair did not deliver.
    pub repair_retry: Duration,
    /// Most ranges in one repair request.
    pub max_ranges: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            buffer_bytes: 64 << 20,
            repair_delay: Duration::ZERO,
            repair_retry: Duration::from_millis(100),
            max_ranges: 64,
        }
    }
}

/// Counters kept by the receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverCounters {
    /// Updates received that were already applied or buffered.
    pub duplicates: u64,
    /// Times a gap appeared where there was none.
    pub gaps: u64,
    /// Buffered updates evicted to respect the buffer limit.
    pub evicted: u64,
    /// Repair requests issued.
    pub repair_requests: u64,
}

/// A request for inclusive version ranges.
pub type RepairRanges = Vec<(u64, u64)>;

/// Version ordering and gap tracking for one subscription.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    applied: u64,
    known_latest: u64,
    /// Updates waiting for an earlier version, by first version (a compacted update covers
    /// `first..=version`).
    buffer: BTreeMap<u64, (Update, usize)>,
    buffer_bytes: usize,
    /// The versions `buffer` covers: what is missing is the gaps in it.
    received: RangeSet,
    /// `first -> version` of the buffered compacted updates (those covering more than one
    /// version): the only entries that can cover versions above their key.
    compacted: BTreeMap<u64, u64>,
    gap_since: Option<Instant>,
    in_flight: bool,
    requested_top: u64,
    retry_at: Option<Instant>,
    counters: ReceiverCounters,
}

fn update_size(u: &Update) -> usize {
    64 + u
        .ops
        .iter()
        .map(|o| 48 + o.key.len() + o.value.len())
        .sum::<usize>()
}

impl Receiver {
    /// A receiver whose replica is at version `applied`.
    pub fn new(applied: u64, config: ReceiverConfig) -> Receiver {
        Receiver {
            config,
            applied,
            known_latest: applied,
            buffer: BTreeMap::new(),
            buffer_bytes: 0,
            received: RangeSet::new(),
            compacted: BTreeMap::new(),
            gap_since: None,
            in_flight: false,
            requested_top: 0,
            retry_at: None,
            counters: ReceiverCounters::default(),
        }
    }

    /// Version of the last update handed out by [`poll_ready`](Self::poll_ready).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Highest version known to exist.
    pub fn known_latest(&self) -> u64 {
        self.known_latest
    }

    /// Counters so far.
    pub fn counters(&self) -> &ReceiverCounters {
        &self.counters
    }

    /// Bytes of updates waiting for an earlier version.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Feeds an update from multicast or repair. Returns whether it was new.
    pub fn on_update(&mut self, now: Instant, update: Update) -> bool {
        let v = update.version;
        if v <= self.applied || self.buffer.contains_key(&v) {
            self.counters.duplicates += 1;
            return false;
        }
        self.known_latest = self.known_latest.max(v);
        self.put(v, update);
        self.evict();
        self.note_gap(now);
        true
    }

    /// Feeds the latest version announced by a heartbeat.
    pub fn on_heartbeat(&mut self, now: Instant, latest: u64) {
        self.known_latest = self.known_latest.max(latest);
        self.note_gap(now);
    }

    fn evict(&mut self) {
        while self.buffer_bytes > self.config.buffer_bytes && self.buffer.len() > 1 {
            let Some((&v, _)) = self.buffer.last_key_value() else {
                break;
            };
            if v == self.applied + 1 {
                break;
            }
            if self.take(v).is_some() {
                self.counters.evicted += 1;
            }
        }
    }

    /// Buffers `update` under its first version `first` (no entry may be there).
    fn put(&mut self, first: u64, update: Update) {
        debug_assert!(!self.buffer.contains_key(&first));
        let size = update_size(&update);
        self.received.insert_range(first..=update.version);
        if update.version > first {
            self.compacted.insert(first, update.version);
        }
        self.buffer.insert(first, (update, size));
        self.buffer_bytes += size;
    }

    /// Removes the entry at `first` and forgets the versions only it covered.
    fn take(&mut self, first: u64) -> Option<Update> {
        let (update, size) = self.buffer.remove(&first)?;
        self.buffer_bytes -= size;
        self.compacted.remove(&first);
        self.received.remove_range(first..=update.version);
        self.recover(first, update.version);
        Some(update)
    }

    /// Marks again as received what the remaining entries cover of `lo..=hi`, after a
    /// removal cleared it: entries overlap when compacted updates are buffered.
    fn recover(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        let below = self
            .compacted
            .range(..lo)
            .filter(|&(_, &end)| end >= lo)
            .map(|(&s, &e)| (s, e));
        let inside = self
            .buffer
            .range(lo..=hi)
            .map(|(&s, (u, _))| (s, u.version));
        let cover: Vec<(u64, u64)> = below.chain(inside).collect();
        for (s, e) in cover {
            self.received.insert_range(s..=e);
        }
    }

    fn has_gap(&self) -> bool {
        self.known_latest > self.applied && !self.buffer.contains_key(&(self.applied + 1))
    }

    fn note_gap(&mut self, now: Instant) {
        if self.has_gap() {
            if self.gap_since.is_none() {
                self.gap_since = Some(now);
                self.counters.gaps += 1;
            }
        } else {
            self.gap_since = None;
        }
    }

    /// The next update in version order, if it is here.
    pub fn poll_ready(&mut self) -> Option<Update> {
        let (u, size) = self.buffer.remove(&(self.applied + 1))?;
        self.buffer_bytes -= size;
        self.compacted.remove(&(self.applied + 1));
        self.applied = u.version;
        // A compacted update covers several versions: drop what it made redundant.
        let mut reach = self.applied;
        while let Some((&k, _)) = self.buffer.first_key_value() {
            if k > self.applied {
                break;
            }
            if let Some((dropped, size)) = self.buffer.remove(&k) {
                self.buffer_bytes -= size;
                self.compacted.remove(&k);
                reach = reach.max(dropped.version);
            }
        }
        // What the removed entries covered is no longer held (a dropped entry may have
        // reached past `applied`); the remaining ones, all above `applied`, say what is.
        self.received.remove_range(0..=reach);
        self.recover(self.applied + 1, reach);
        Some(u)
    }

    /// Feeds a compacted update: the net effect of versions `first..=update.version`,
    /// applied as one step once the replica is at `first - 1`.
    pub fn on_compacted(&mut self, now: Instant, first: u64, update: Update) -> bool {
        if first <= self.applied || update.version < first {
            self.counters.duplicates += 1;
            return false;
        }
        self.known_latest = self.known_latest.max(update.version);
        self.take(first);
        self.put(first, update);
        self.evict();
        self.note_gap(now);
        true
    }

    /// Missing inclusive ranges in (applied, known_latest], at most `max_ranges`.
    pub fn missing(&self) -> RepairRanges {
        self.received
            .gaps(self.applied + 1..=self.known_latest)
            .take(self.config.max_ranges)
            .collect()
    }

    /// Versions to fetch by repair now, if any. After this returns `Some`, the caller runs
    /// the repair, feeds what arrives through [`on_update`](Self::on_update), and calls
    /// [`on_repair_done`](Self::on_repair_done).
    pub fn poll_repair(&mut self, now: Instant) -> Option<RepairRanges> {
        if self.in_flight {
            return None;
        }
        self.note_gap(now);
        let since = self.gap_since?;
        if now < since + self.config.repair_delay {
            return None;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let ranges = self.missing();
        if ranges.is_empty() {
            return None;
        }
        self.in_flight = true;
        self.requested_top = ranges.last().map_or(0, |r| r.1);
        self.counters.repair_requests += 1;
        Some(ranges)
    }

    /// The repair asked for by the last `poll_repair` has finished (`ok`: the peer said it
    /// sent everything it had). Missing versions left after it are asked for again only
    /// after the retry interval, so a peer that cannot serve them is not hammered.
    pub fn on_repair_done(&mut self, now: Instant, ok: bool) {
        self.in_flight = false;
        let undelivered = self
            .missing()
            .first()
            .is_some_and(|&(first, _)| first <= self.requested_top);
        self.retry_at = if ok && !undelivered {
            None
        } else {
            Some(now + self.config.repair_retry)
        };
        self.note_gap(now);
    }

    /// Forgets the versions announced above what has been received, e.g. after the peer
    /// said they do not exist (a heartbeat from a publisher that lost its journal).
    pub fn clamp_latest(&mut self, latest: u64) {
        let top = self.buffer.keys().next_back().copied().unwrap_or(0);
        self.known_latest = latest.max(top).max(self.applied);
    }

    /// When [`poll_repair`](Self::poll_repair) should next be called, if a gap is waiting.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        let since = self.gap_since?;
        let t = since + self.config.repair_delay;
        Some(self.retry_at.map_or(t, |r| r.max(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Op;

    const MS: Duration = Duration::from_millis(1);

    fn up(v: u64) -> Update {
        Update {
            version: v,
            timestamp_us: v * 10,
            ops: vec![Op::put(format!("k{v}"), vec![v as u8; 10])],
            reset: false,
        }
    }

    fn config() -> ReceiverConfig {
        ReceiverConfig {
            buffer_bytes: 1 << 20,
            repair_delay: Duration::ZERO,
            repair_retry: 50 * MS,
            max_ranges: 64,
        }
    }

    fn drain(r: &mut Receiver) -> Vec<u64> {
        std::iter::from_fn(|| r.poll_ready().map(|u| u.version)).collect()
    }

    #[test]
    fn in_order_updates_are_handed_out_at_once() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        for v in 1..=3 {
            assert!(r.on_update(t, up(v)));
            assert_eq!(r.poll_ready(), Some(up(v)));
        }
        assert_eq!(r.applied(), 3);
        assert_eq!(r.poll_repair(t), None);
        assert_eq!(r.next_timeout(), None);
        assert_eq!(r.counters().gaps, 0);
    }

    #[test]
    fn out_of_order_updates_wait_for_the_missing_one() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        r.on_update(t, up(3));
        r.on_update(t, up(2));
        assert_eq!(drain(&mut r), Vec::<u64>::new());
        assert!(r.buffered_bytes() > 0);
        r.on_update(t, up(1));
        assert_eq!(drain(&mut r), [1, 2, 3]);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn repair_asks_for_exactly_the_missing_versions() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        for v in [1, 4, 7, 8] {
            r.on_update(t, up(v));
        }
        r.on_heartbeat(t, 10);
        assert_eq!(drain(&mut r), [1]);
        assert_eq!(r.missing(), [(2, 3), (5, 6), (9, 10)]);
        assert_eq!(r.poll_repair(t), Some(vec![(2, 3), (5, 6), (9, 10)]));
        // One repair at a time.
        assert_eq!(r.poll_repair(t), None);
        assert_eq!(r.next_timeout(), None);
        for v in [2, 3, 5, 6, 9, 10] {
            assert!(r.on_update(t, up(v)));
        }
        r.on_repair_done(t, true);
        assert_eq!(drain(&mut r), (2..=10).collect::<Vec<_>>());
        assert_eq!(r.poll_repair(t + MS), None);
        assert_eq!(r.counters().repair_requests, 1);
    }

    #[test]
    fn a_heartbeat_reveals_a_lost_tail() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        r.on_update(t, up(1));
        drain(&mut r);
        r.on_heartbeat(t, 1);
        assert_eq!(r.poll_repair(t), None);
        r.on_heartbeat(t + MS, 3);
        assert_eq!(r.known_latest(), 3);
        assert_eq!(r.poll_repair(t + MS), Some(vec![(2, 3)]));
        assert_eq!(r.counters().gaps, 1);
    }

    #[test]
    fn duplicates_are_counted_and_never_handed_out_twice() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        assert!(r.on_update(t, up(2)));
        assert!(!r.on_update(t, up(2)));
        assert!(r.on_update(t, up(1)));
        assert_eq!(drain(&mut r), [1, 2]);
        assert!(!r.on_update(t, up(1)));
        assert!(!r.on_update(t, up(2)));
        assert_eq!(drain(&mut r), Vec::<u64>::new());
        assert_eq!(r.counters().duplicates, 3);
    }

    #[test]
    fn a_restarted_receiver_ignores_what_it_applied() {
        let t = Instant::now();
        let mut r = Receiver::new(10, config());
        assert!(!r.on_update(t, up(10)));
        assert!(!r.on_update(t, up(3)));
        r.on_heartbeat(t, 10);
        assert_eq!(r.poll_repair(t), None);
        r.on_heartbeat(t, 12);
        assert_eq!(r.poll_repair(t), Some(vec![(11, 12)]));
    }

    #[test]
    fn repair_waits_for_the_repair_delay() {
        let t = Instant::now();
        let mut r = Receiver::new(
            0,
            ReceiverConfig {
                repair_delay: 5 * MS,
                ..config()
            },
        );
        r.on_update(t, up(2));
        assert_eq!(r.next_timeout(), Some(t + 5 * MS));
        assert_eq!(r.poll_repair(t + 4 * MS), None);
        assert_eq!(r.poll_repair(t + 5 * MS), Some(vec![(1, 1)]));
    }

    #[test]
    fn a_gap_filled_in_time_needs_no_repair() {
        let t = Instant::now();
        let mut r = Receiver::new(
            0,
            ReceiverConfig {
                repair_delay: 5 * MS,
                ..config()
            },
        );
        r.on_update(t, up(2));
        r.on_update(t + MS, up(1));
        assert_eq!(r.next_timeout(), None);
        assert_eq!(r.poll_repair(t + 10 * MS), None);
        assert_eq!(drain(&mut r), [1, 2]);
    }

    #[test]
    fn a_failed_repair_is_retried_after_the_retry_interval() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        r.on_heartbeat(t, 4);
        assert_eq!(r.poll_repair(t), Some(vec![(1, 4)]));
        r.on_update(t + MS, up(1));
        r.on_repair_done(t + MS, false);
        drain(&mut r);
        assert_eq!(r.poll_repair(t + MS), None);
        assert_eq!(r.next_timeout(), Some(t + 51 * MS));
        assert_eq!(r.poll_repair(t + 50 * MS), None);
        assert_eq!(r.poll_repair(t + 51 * MS), Some(vec![(2, 4)]));
        assert_eq!(r.counters().repair_requests, 2);
    }

    #[test]
    fn a_repair_that_left_versions_out_is_retried_later() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        r.on_heartbeat(t, 4);
        assert_eq!(r.poll_repair(t), Some(vec![(1, 4)]));
        for v in 1..=2 {
            r.on_update(t, up(v));
        }
        r.on_repair_done(t, true);
        assert_eq!(drain(&mut r), [1, 2]);
        assert_eq!(r.poll_repair(t), None);
        assert_eq!(r.poll_repair(t + 50 * MS), Some(vec![(3, 4)]));
    }

    #[test]
    fn new_versions_announced_during_a_repair_are_asked_for_at_once() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        r.on_heartbeat(t, 2);
        assert_eq!(r.poll_repair(t), Some(vec![(1, 2)]));
        r.on_heartbeat(t + MS, 5);
        r.on_update(t + MS, up(1));
        r.on_update(t + MS, up(2));
        r.on_repair_done(t + MS, true);
        assert_eq!(drain(&mut r), [1, 2]);
        assert_eq!(r.poll_repair(t + MS), Some(vec![(3, 5)]));
    }

    #[test]
    fn requests_are_capped_at_max_ranges() {
        let t = Instant::now();
        let mut r = Receiver::new(
            0,
            ReceiverConfig {
                max_ranges: 2,
                ..config()
            },
        );
        for v in [2, 4, 6] {
            r.on_update(t, up(v));
        }
        r.on_heartbeat(t, 8);
        assert_eq!(r.poll_repair(t), Some(vec![(1, 1), (3, 3)]));
        r.on_update(t, up(1));
        r.on_update(t, up(3));
        r.on_repair_done(t, true);
        assert_eq!(drain(&mut r), [1, 2, 3, 4]);
        assert_eq!(r.poll_repair(t), Some(vec![(5, 5), (7, 8)]));
    }

    #[test]
    fn clamp_latest_forgets_versions_that_do_not_exist() {
        let t = Instant::now();
        let mut r = Receiver::new(0, config());
        r.on_update(t, up(1));
        r.on_update(t, up(3));
        drain(&mut r);
        r.on_heartbeat(t, 1 << 60);
        assert_eq!(r.poll_repair(t), Some(vec![(2, 2), (4, 1 << 60)]));
        r.clamp_latest(3);
        r.on_update(t, up(2));
        r.on_repair_done(t, true);
        assert_eq!(r.known_latest(), 3);
        assert_eq!(drain(&mut r), [2, 3]);
        assert_eq!(r.missing(), []);
        assert_eq!(r.poll_repair(t + Duration::from_secs(1)), None);
        // Never below what is buffered or applied.
        r.on_update(t, up(6));
        r.clamp_latest(1);
        assert_eq!(r.known_latest(), 6);
        assert_eq!(r.missing(), [(4, 5)]);
    }

    #[test]
    fn a_full_buffer_evicts_the_highest_versions_which_are_repaired_later() {
        let t = Instant::now();
        let one = update_size(&up(1));
        let mut r = Receiver::new(
            0,
            ReceiverConfig {
                buffer_bytes: 3 * one,
                ..config()
            },
        );
        for v in 2..=6 {
            r.on_update(t, up(v));
        }
        assert_eq!(r.counters().evicted, 2);
        assert!(r.buffered_bytes() <= 3 * one);
        assert_eq!(r.missing(), [(1, 1), (5, 6)]);
        // Version 1 overfills the buffer too: the highest (4) goes, not the one to apply.
        r.on_update(t, up(1));
        assert_eq!(r.counters().evicted, 3);
        assert_eq!(drain(&mut r), [1, 2, 3]);
        assert_eq!(r.poll_repair(t), Some(vec![(4, 6)]));
    }

    #[test]
    fn the_next_version_is_never_evicted() {
        let t = Instant::now();
        let mut r = Receiver::new(
            0,
            ReceiverConfig {
                buffer_bytes: 1,
                ..config()
            },
        );
        r.on_update(t, up(3));
        r.on_update(t, up(2));
        assert_eq!(r.missing(), [(1, 1), (3, 3)]);
        // A single update larger than the buffer is kept when it is the next to apply.
        r.on_update(t, up(1));
        assert_eq!(r.counters().evicted, 2);
        assert_eq!(drain(&mut r), [1]);
        assert_eq!(r.missing(), [(2, 3)]);
    }

    /// `missing()` as it was computed before the range set: a walk over the buffer.
    fn missing_by_walking_the_buffer(r: &Receiver) -> RepairRanges {
        let mut out = Vec::new();
        let mut next = r.applied + 1;
        for (&v, (u, _)) in &r.buffer {
            if out.len() == r.config.max_ranges {
                return out;
            }
            if v > next {
                out.push((next, v - 1));
            }
            next = next.max(u.version + 1);
        }
        if next <= r.known_latest && out.len() < r.config.max_ranges {
            out.push((next, r.known_latest));
        }
        out
    }

    fn compacted(first: u64, last: u64) -> Update {
        Update {
            version: last,
            ..up(first)
        }
    }

    #[test]
    fn the_range_set_bookkeeping_matches_a_walk_over_the_buffer() {
        let t = Instant::now();
        for seed in 0..300u64 {
            // A small seeded generator (xorshift) keeps the test dependency-free.
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let buffer_bytes = [1 << 20, 600, 300][(seed % 3) as usize];
            let max_ranges = [64, 3][(seed % 2) as usize];
            let cfg = ReceiverConfig {
                buffer_bytes,
                max_ranges,
                ..config()
            };
            let mut r = Receiver::new(next(5), cfg);
            for step in 0..200 {
                let base = r.applied();
                match next(10) {
                    0..=4 => {
                        r.on_update(t, up(base + 1 + next(30)));
                    }
                    5 | 6 => {
                        let first = base + next(30);
                        r.on_compacted(t, first, compacted(first, first + next(12)));
                    }
                    7 => r.on_heartbeat(t, base + next(40)),
                    8 => r.clamp_latest(base + next(20)),
                    _ => {
                        drain(&mut r);
                    }
                }
                assert_eq!(
                    r.missing(),
                    missing_by_walking_the_buffer(&r),
                    "seed {seed} step {step}"
                );
            }
        }
    }
}
