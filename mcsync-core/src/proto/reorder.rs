//! Puts authenticated packets of a stream back in sequence order and finds the holes, so a
//! lost packet can be fetched by itself (packet repair from the publisher's retransmit
//! buffer) instead of re-fetching the whole update it belonged to. Packets are released in
//! order; a hole that cannot be repaired is skipped, and the chain assembler then drops
//! the broken chain as usual (its versions are repaired from the journal).

use crate::proto::range_set::RangeSet;
use crate::wire::packet::PacketHeader;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// An authenticated packet: header and decrypted payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPacket {
    /// Its header.
    pub header: PacketHeader,
    /// Its plaintext payload.
    pub payload: Vec<u8>,
}

/// Tuning of a [`PacketReorder`].
#[derive(Debug, Clone)]
pub struct ReorderConfig {
    /// Wait after a hole appears before asking for its packets (lets reordered packets in).
    pub repair_delay: Duration,
    /// Most payload bytes held behind a hole; above it the hole is skipped.
    pub max_bytes: usize,
    /// Most sequence ranges in one packet-repair request.
    pub max_ranges: usize,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        ReorderConfig {
            repair_delay: Duration::ZERO,
            max_bytes: 64 << 20,
            max_ranges: 64,
        }
    }
}

/// Counters kept by the reorder stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReorderCounters {
    /// Packets that arrived after one with a higher sequence number.
    pub out_of_order: u64,
    /// Packets already released or already held (duplicates).
    pub duplicates: u64,
    /// Holes that appeared.
    pub holes: u64,
    /// Packet-repair requests issued.
    pub repair_requests: u64,
    /// Packets given up on (skipped holes).
    pub skipped: u64,
}

/// Sequence ordering for one stream.
#[derive(Debug)]
pub struct PacketReorder {
    config: ReorderConfig,
    stream: Option<u32>,
    next_seq: u64,
    pending: BTreeMap<u64, OpenPacket>,
    /// The sequence numbers of `pending`, as runs: what is missing is the gaps between them.
    held: RangeSet,
    /// Packets to release in order before `pending`: what was held behind holes that were
    /// given up on.
    ready: VecDeque<OpenPacket>,
    /// Bytes of `pending` and `ready`.
    pending_bytes: usize,
    hole_since: Option<Instant>,
    /// A packet repair is in flight for the holes up to this sequence number.
    in_flight: Option<u64>,
    counters: ReorderCounters,
}

impl PacketReorder {
    /// An empty reorder stage; the first packet seen starts the stream.
    pub fn new(config: ReorderConfig) -> PacketReorder {
        PacketReorder {
            config,
            stream: None,
            next_seq: 0,
            pending: BTreeMap::new(),
            held: RangeSet::new(),
            ready: VecDeque::new(),
            pending_bytes: 0,
            hole_since: None,
            in_flight: None,
            counters: ReorderCounters::default(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> &ReorderCounters {
        &self.counters
    }

    /// The stream being ordered.
    pub fn stream(&self) -> Option<u32> {
        self.stream
    }

    /// Feeds an authenticated packet (from multicast or from packet repair). Returns
    /// whether the stream changed (the caller resets its chain assembly).
    pub fn on_packet(&mut self, now: Instant, packet: OpenPacket) -> bool {
        let seq = packet.header.seq;
        let mut changed = false;
        if self.stream != Some(packet.header.stream_id) {
            // A new stream (publisher restart): what was held of the old one is dropped;
            // the journal repairs its versions.
            self.counters.skipped += (self.pending.len() + self.ready.len()) as u64;
            self.pending.clear();
            self.held.clear();
            self.ready.clear();
            self.pending_bytes = 0;
            self.stream = Some(packet.header.stream_id);
            self.next_seq = seq;
            self.hole_since = None;
            self.in_flight = None;
            changed = true;
        }
        if seq < self.next_seq || self.pending.contains_key(&seq) {
            self.counters.duplicates += 1;
            return changed;
        }
        if self
            .pending
            .last_key_value()
            .is_some_and(|(&top, _)| seq < top)
        {
            self.counters.out_of_order += 1;
        }
        self.pending_bytes += packet.payload.len();
        self.pending.insert(seq, packet);
        self.held.insert(seq);
        if self.pending_bytes > self.config.max_bytes {
            self.skip_hole();
        }
        self.note_hole(now);
        changed
    }

    /// Whether a sequence number between the next one to release and the highest held is
    /// missing (anywhere, not only first: releasing up to it must not leave it untimed).
    fn has_hole(&self) -> bool {
        self.holes().next().is_some()
    }

    /// The gaps between the next sequence number to release and the highest held one.
    fn holes(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        // No packet held: nothing bounds the holes, so there are none.
        let top = self.held.max();
        top.into_iter()
            .flat_map(move |top| self.held.gaps(self.next_seq..=top))
    }

    fn note_hole(&mut self, now: Instant) {
        if self.has_hole() {
            if self.hole_since.is_none() {
                self.hole_since = Some(now);
                self.counters.holes += 1;
            }
        } else {
            self.hole_since = None;
        }
    }

    /// Gives up on the packets missing before the first held one.
    fn skip_hole(&mut self) {
        if let Some((&first, _)) = self.pending.first_key_value() {
            if first > self.next_seq {
                self.counters.skipped += first - self.next_seq;
                self.next_seq = first;
            }
        }
        self.hole_since = None;
    }

    /// Gives up on every packet missing up to `through`; what is held up to there is
    /// released in order.
    fn give_up_through(&mut self, through: u64) {
        if through < self.next_seq {
            return;
        }
        let above = self.pending.split_off(&(through + 1));
        let held = std::mem::replace(&mut self.pending, above);
        self.held.remove_range(self.next_seq..=through);
        self.counters.skipped += through + 1 - self.next_seq - held.len() as u64;
        self.ready.extend(held.into_values());
        self.next_seq = through + 1;
        self.hole_since = None;
    }

    /// The next packet in sequence order, if it is here.
    pub fn poll_release(&mut self) -> Option<OpenPacket> {
        let p = match self.ready.pop_front() {
            Some(p) => p,
            None => {
                let p = self.pending.remove(&self.next_seq)?;
                self.held.remove(self.next_seq);
                self.next_seq += 1;
                p
            }
        };
        self.pending_bytes -= p.payload.len();
        Some(p)
    }

    /// Missing inclusive sequence ranges below the highest held packet.
    pub fn missing(&self) -> Vec<(u64, u64)> {
        self.holes().take(self.config.max_ranges).collect()
    }

    /// Packets to fetch now: the stream id and inclusive sequence ranges. After `Some`, the
    /// caller fetches them, feeds each through [`on_packet`](Self::on_packet), and calls
    /// [`on_repair_done`](Self::on_repair_done).
    pub fn poll_repair(&mut self, now: Instant) -> Option<(u32, Vec<(u64, u64)>)> {
        if self.in_flight.is_some() {
            return None;
        }
        let since = self.hole_since?;
        if now < since + self.config.repair_delay {
            return None;
        }
        let ranges = self.missing();
        let stream = self.stream?;
        if ranges.is_empty() {
            return None;
        }
        self.in_flight = ranges.last().map(|&(_, last)| last);
        self.counters.repair_requests += 1;
        Some((stream, ranges))
    }

    /// The packet repair finished. Whatever it asked for and is still missing is given up
    /// on (the publisher no longer has it, or the repair failed): the chain assembler
    /// drops the affected chains and the journal repairs their versions. Holes that opened
    /// while it was in flight (packets go on arriving meanwhile) are not: they get a repair
    /// of their own.
    pub fn on_repair_done(&mut self, now: Instant) {
        if let Some(through) = self.in_flight.take() {
            self.give_up_through(through);
        }
        self.note_hole(now);
    }

    /// When [`poll_repair`](Self::poll_repair) should next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        self.hole_since.map(|t| t + self.config.repair_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{Compression, PacketKind};

    const MS: Duration = Duration::from_millis(1);

    fn pkt(stream_id: u32, seq: u64) -> OpenPacket {
        OpenPacket {
            header: PacketHeader {
                kind: PacketKind::Data,
                flags: 0,
                compression: Compression::None,
                length: 0,
                stream_id,
                key_epoch: 1,
                seq,
            },
            payload: vec![seq as u8; 10],
        }
    }

    fn release(r: &mut PacketReorder) -> Vec<u64> {
        std::iter::from_fn(|| r.poll_release().map(|p| p.header.seq)).collect()
    }

    fn config(delay: Duration) -> ReorderConfig {
        ReorderConfig {
            repair_delay: delay,
            ..ReorderConfig::default()
        }
    }

    #[test]
    fn packets_in_order_pass_straight_through() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(Duration::ZERO));
        assert!(r.on_packet(t, pkt(7, 10)));
        assert_eq!(r.stream(), Some(7));
        for s in 11..=13 {
            assert!(!r.on_packet(t, pkt(7, s)));
        }
        assert_eq!(release(&mut r), [10, 11, 12, 13]);
        assert_eq!(r.poll_repair(t), None);
        assert_eq!(r.next_timeout(), None);
    }

    #[test]
    fn a_hole_holds_later_packets_and_asks_for_exactly_the_missing_ones() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(2 * MS));
        for s in [1, 2, 4, 7, 8] {
            r.on_packet(t, pkt(7, s));
        }
        assert_eq!(release(&mut r), [1, 2]);
        assert_eq!(r.missing(), [(3, 3), (5, 6)]);
        assert_eq!(r.next_timeout(), Some(t + 2 * MS));
        assert_eq!(r.poll_repair(t + MS), None);
        assert_eq!(r.poll_repair(t + 2 * MS), Some((7, vec![(3, 3), (5, 6)])));
        assert_eq!(r.poll_repair(t + 2 * MS), None);
        for s in [3, 5, 6] {
            r.on_packet(t + 3 * MS, pkt(7, s));
        }
        r.on_repair_done(t + 3 * MS);
        assert_eq!(release(&mut r), [3, 4, 5, 6, 7, 8]);
        let c = r.counters();
        assert_eq!((c.holes, c.repair_requests, c.skipped), (1, 1, 0));
    }

    #[test]
    fn a_late_packet_fills_the_hole_without_repair() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(5 * MS));
        r.on_packet(t, pkt(1, 1));
        r.on_packet(t, pkt(1, 3));
        r.on_packet(t + MS, pkt(1, 2));
        assert_eq!(release(&mut r), [1, 2, 3]);
        assert_eq!(r.next_timeout(), None);
        assert_eq!(r.poll_repair(t + 10 * MS), None);
        assert_eq!(r.counters().out_of_order, 1);
    }

    #[test]
    fn what_a_repair_did_not_bring_is_skipped() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(Duration::ZERO));
        for s in [1, 4, 5] {
            r.on_packet(t, pkt(1, s));
        }
        assert_eq!(r.poll_repair(t), Some((1, vec![(2, 3)])));
        r.on_packet(t, pkt(1, 2));
        r.on_repair_done(t);
        assert_eq!(release(&mut r), [1, 2, 4, 5]);
        assert_eq!(r.counters().skipped, 1);
        // The skipped packet arriving late is a duplicate, not a new hole.
        r.on_packet(t, pkt(1, 3));
        assert_eq!(release(&mut r), Vec::<u64>::new());
        assert_eq!(r.counters().duplicates, 1);
    }

    #[test]
    fn duplicates_are_released_once() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(Duration::ZERO));
        r.on_packet(t, pkt(1, 1));
        r.on_packet(t, pkt(1, 3));
        r.on_packet(t, pkt(1, 3));
        assert_eq!(release(&mut r), [1]);
        r.on_packet(t, pkt(1, 1));
        r.on_packet(t, pkt(1, 2));
        assert_eq!(release(&mut r), [2, 3]);
        assert_eq!(r.counters().duplicates, 2);
    }

    #[test]
    fn a_new_stream_drops_what_was_held_of_the_old_one() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(Duration::ZERO));
        r.on_packet(t, pkt(1, 1));
        r.on_packet(t, pkt(1, 3));
        assert_eq!(release(&mut r), [1]);
        assert!(r.on_packet(t, pkt(2, 50)));
        assert_eq!(r.stream(), Some(2));
        assert_eq!(release(&mut r), [50]);
        assert_eq!(r.poll_repair(t), None);
        assert_eq!(r.counters().skipped, 1);
    }

    #[test]
    fn too_many_bytes_behind_a_hole_skip_it() {
        let t = Instant::now();
        let mut r = PacketReorder::new(ReorderConfig {
            max_bytes: 25,
            ..config(Duration::ZERO)
        });
        r.on_packet(t, pkt(1, 1));
        release(&mut r);
        r.on_packet(t, pkt(1, 3));
        r.on_packet(t, pkt(1, 4));
        assert_eq!(release(&mut r), Vec::<u64>::new());
        // 30 bytes held behind the hole at 2: give up on it.
        r.on_packet(t, pkt(1, 5));
        assert_eq!(release(&mut r), [3, 4, 5]);
        assert_eq!(r.counters().skipped, 1);
        assert_eq!(r.poll_repair(t), None);
    }

    #[test]
    fn a_failed_repair_gives_up_on_every_hole_at_once() {
        // The subscriber's pattern: release after every packet.
        let t = Instant::now();
        let mut r = PacketReorder::new(config(Duration::ZERO));
        let mut out = Vec::new();
        for s in [1, 3, 5, 6] {
            r.on_packet(t, pkt(1, s));
            out.extend(release(&mut r));
        }
        assert_eq!(out, [1]);
        assert_eq!(r.poll_repair(t), Some((1, vec![(2, 2), (4, 4)])));
        // The publisher no longer has them: nothing comes back.
        r.on_repair_done(t + MS);
        out.extend(release(&mut r));
        assert_eq!(out, [1, 3, 5, 6]);
        assert_eq!(r.counters().skipped, 2);
        assert_eq!(r.poll_repair(t + 2 * MS), None);
        assert_eq!(r.counters().repair_requests, 1);
    }

    #[test]
    fn a_hole_that_opens_while_a_repair_is_in_flight_gets_its_own_repair() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(Duration::ZERO));
        let mut out = Vec::new();
        for s in [1, 3] {
            r.on_packet(t, pkt(1, s));
            out.extend(release(&mut r));
        }
        assert_eq!(r.poll_repair(t), Some((1, vec![(2, 2)])));
        // Packets go on arriving while the repair is in flight, with a new loss (5).
        for s in [4, 6] {
            r.on_packet(t + MS, pkt(1, s));
            out.extend(release(&mut r));
        }
        // The repair brings 2 back; 5 was not asked for, so it is not given up on.
        r.on_packet(t + 2 * MS, pkt(1, 2));
        r.on_repair_done(t + 2 * MS);
        out.extend(release(&mut r));
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(r.counters().skipped, 0);
        assert_eq!(r.poll_repair(t + 3 * MS), Some((1, vec![(5, 5)])));
        r.on_repair_done(t + 4 * MS);
        out.extend(release(&mut r));
        assert_eq!(out, [1, 2, 3, 4, 6]);
        assert_eq!(r.counters().skipped, 1);
    }

    #[test]
    fn a_hole_behind_unreleased_packets_is_timed_from_when_it_appears() {
        let t = Instant::now();
        let mut r = PacketReorder::new(config(3 * MS));
        r.on_packet(t, pkt(1, 1));
        r.on_packet(t, pkt(1, 3));
        r.on_packet(t, pkt(1, 2));
        r.on_packet(t, pkt(1, 5));
        assert_eq!(release(&mut r), [1, 2, 3]);
        assert_eq!(r.next_timeout(), Some(t + 3 * MS));
        assert_eq!(r.poll_repair(t + 3 * MS), Some((1, vec![(4, 4)])));
    }

    #[test]
    fn requests_are_capped_at_max_ranges() {
        let t = Instant::now();
        let mut r = PacketReorder::new(ReorderConfig {
            max_ranges: 2,
            ..config(Duration::ZERO)
        });
        for s in [1, 3, 5, 7, 9] {
            r.on_packet(t, pkt(1, s));
        }
        assert_eq!(r.poll_repair(t), Some((1, vec![(2, 2), (4, 4)])));
    }

    /// `missing()` and the hole test as they were computed before the range set.
    fn missing_by_walking_pending(r: &PacketReorder) -> (Vec<(u64, u64)>, bool) {
        let mut out = Vec::new();
        let mut next = r.next_seq;
        for &s in r.pending.keys() {
            if out.len() == r.config.max_ranges {
                break;
            }
            if s > next {
                out.push((next, s - 1));
            }
            next = s + 1;
        }
        let hole = r
            .pending
            .last_key_value()
            .is_some_and(|(&top, _)| top - r.next_seq >= r.pending.len() as u64);
        (out, hole)
    }

    #[test]
    fn the_range_set_bookkeeping_matches_a_walk_over_pending() {
        let t = Instant::now();
        for seed in 0..300u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut r = PacketReorder::new(ReorderConfig {
                max_bytes: [1 << 20, 80][(seed % 2) as usize],
                max_ranges: [64, 2][(seed % 3 == 0) as usize],
                ..config(Duration::ZERO)
            });
            let mut stream = 1;
            for step in 0..200 {
                match next(10) {
                    0..=5 => {
                        r.on_packet(t, pkt(stream, r.next_seq + next(25)));
                    }
                    6 => {
                        release(&mut r);
                    }
                    7 => {
                        if r.poll_repair(t).is_some() {
                            r.on_repair_done(t);
                        }
                    }
                    8 => r.on_repair_done(t),
                    _ => stream += u32::from(next(8) == 0),
                }
                let (missing, hole) = missing_by_walking_pending(&r);
                assert_eq!(r.missing(), missing, "seed {seed} step {step}");
                assert_eq!(r.has_hole(), hole, "seed {seed} step {step}");
            }
        }
    }
}
