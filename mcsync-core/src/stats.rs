//! Counters kept by publishers and subscriptions. Live counters are atomics updated by the
//! worker threads; `stats()` returns a plain snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$meta:meta])* $snapshot:ident, $live:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $snapshot {
            $($(#[$fmeta])* pub $field: u64,)*
        }

        /// Live atomic counters behind the snapshot of the same name.
        #[derive(Debug, Default)]
        pub struct $live {
            $($(#[$fmeta])* pub $field: AtomicU64,)*
        }

        impl $live {
            /// A consistent-enough copy of every counter.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl $snapshot {
            /// `(name, value)` for every counter, in declaration order (for CLIs and bindings).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

impl PublisherStats {
    /// Fields that are gauges (a current value), not counters.
    pub const GAUGES: &'static [&'static str] = &[
        "backlog_bytes",
        "backlog_bytes_peak",
        "bundle_bytes",
        "packets_per_sec",
        "bytes_per_sec",
        "unicast_targets",
    ];
}

impl SubscriptionStats {
    /// Fields that are gauges (a current value), not counters.
    pub const GAUGES: &'static [&'static str] = &[
        "key_epoch",
        "loss_ppm",
        "latency_p50_us",
        "latency_p99_us",
        "latency_p999_us",
        "recv_buffer_bytes",
        "replica_durability",
    ];
}

/// Adds `n` to an atomic counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to an atomic counter.
#[inline]
pub fn inc(c: &AtomicU64) {
    add(c, 1);
}

counters!(
    /// Publisher counters (all databases together).
    PublisherStats, PublisherCounters {
        /// Updates committed (master transactions).
        updates_committed,
        /// Encoded bytes of the updates committed (what one unicast copy would carry).
        bytes_committed,
        /// LMDB write transactions used to commit them (group commit makes this smaller).
        journal_commits,
        /// Commits refused (too large, invalid, storage failure).
        commits_refused,
        /// Updates acknowledged with `Durability::Async` that a journal failure lost.
        commits_lost,
        /// Multicast datagrams sent (data and heartbeats).
        packets_sent,
        /// Bytes of multicast datagrams sent (UDP payload).
        bytes_sent,
        /// Data packets built for sending (counted when their chain is cut into packets).
        data_packets_sent,
        /// Heartbeats sent.
        heartbeats_sent,
        /// Chains sent.
        chains_sent,
        /// Chains sent lz4-compressed.
        chains_compressed,
        /// Updates multicast.
        updates_sent,
        /// Committed updates not multicast because the database's multicast backlog reached
        /// `max_backlog_bytes` (subscribers fetch them from the journal).
        updates_skipped_backlog,
        /// Bytes waiting to be multicast, all databases together (a gauge): updates queued
        /// and packets built but not yet sent.
        backlog_bytes,
        /// Largest multicast backlog of any database so far, bytes (a high-water mark).
        backlog_bytes_peak,
        /// Datagrams the OS refused to send.
        send_errors,
        /// System calls that sent multicast datagrams (with UDP GSO one call carries a run
        /// of them: `packets_sent / send_calls` datagrams per call).
        send_calls,
        /// Repair sessions accepted.
        repair_sessions,
        /// Catch-up requests served.
        repairs_served,
        /// Updates sent by repair.
        repair_updates_sent,
        /// Bytes sent by repair (frames).
        repair_bytes_sent,
        /// Packet-repair requests served.
        packet_repairs_served,
        /// Datagrams resent by packet repair.
        packets_resent,
        /// Packets asked for that the retransmit buffer no longer held.
        packets_not_resent,
        /// Registrations (HELLOs answered with a database's parameters and keys).
        registrations,
        /// Authentication or authorization failures.
        auth_failures,
        /// Logins refused because their source failed too often.
        auth_rate_limited,
        /// Connections that failed the TLS handshake or broke mid-frame.
        tls_failures,
        /// Logins answered "publisher busy": too many password checks were waiting for this
        /// one to start in time. Counted against no user and no address.
        auth_busy,
        /// Control connections closed for missing a deadline: TLS handshake and HELLO within
        /// 10 s of connecting, then a complete request within 60 s of the last answer.
        control_timeouts,
        /// Control connections that had not completed HELLO, closed to make room for a new
        /// one when the connection table (512) was full.
        control_evictions,
        /// New control connections closed at once because every place in the connection
        /// table was held by an authenticated session (also counted in `repair_errors`).
        control_refused,
        /// Key rotations.
        key_rotations,
        /// Hash resyncs started by subscribers.
        resyncs_served,
        /// Journal entries removed by retention.
        journal_trimmed,
        /// Times the data directory was found low on free space.
        disk_low,
        /// Two-phase updates prepared.
        two_phase_prepared,
        /// Two-phase updates committed.
        two_phase_committed,
        /// Two-phase updates aborted (refused, timed out, or rolled back).
        two_phase_aborted,
        /// Participants declared failed: they did not acknowledge a decision while it was
        /// repeated (30 s).
        two_phase_participants_failed,
        /// Reception reports received from subscribers.
        reports_received,
        /// Current bundle size of the adaptation, bytes (a gauge; the last database tuned).
        bundle_bytes,
        /// Current pacing limit in packets/s, as adapted (a gauge; 0 = unlimited).
        packets_per_sec,
        /// Current pacing limit in bytes/s, as adapted (a gauge; 0 = unlimited).
        bytes_per_sec,
        /// Times multicast of a database was quiesced because most subscribers lost too much.
        quiesces,
        /// Repair requests refused (unknown database, versions that do not exist, bad frames).
        repair_errors,
        /// Registrations dropped because they neither reported nor asked anything for
        /// `registration_expiry`.
        registrations_expired,
        /// Datagrams pushed by unicast UDP to unicast-only subscribers (copies of what was
        /// multicast: data, heartbeats, two-phase records).
        unicast_datagrams,
        /// Bytes of those datagrams (UDP payload).
        unicast_bytes,
        /// Unicast-only subscribers the stream is pushed to now, all databases (a gauge).
        unicast_targets,
        /// HELLOs asking for unicast push that were refused because the database had
        /// `max_unicast_targets` already (those subscribers catch up by polling).
        unicast_refused,
    }
);

counters!(
    /// Counters of one subscription.
    SubscriptionStats, SubscriptionCounters {
        /// Datagrams received on the group socket.
        packets_received,
        /// Bytes of those datagrams.
        bytes_received,
        /// System calls that received them (with UDP GRO one call takes a run of them).
        receive_calls,
        /// Dropped: sent from an address other than the publisher's.
        dropped_source,
        /// Dropped by the injected loss generator.
        dropped_injected,
        /// Dropped: header did not parse (magic, version, lengths).
        dropped_malformed,
        /// Dropped: authentication tag failed (forged, tampered, wrong key).
        dropped_auth,
        /// Dropped: key epoch unknown.
        dropped_epoch,
        /// Dropped: sealed under a previous epoch's key at a sequence number the publisher
        /// had already moved past to a newer epoch (forged by someone who kept the old key).
        dropped_retired_key,
        /// Dropped: sequence number already seen (replay).
        dropped_replay,
        /// Sealed packets too far ahead of their stream to be taken on their own word (a
        /// jump not yet confirmed by further traffic).
        dropped_far,
        /// Times the receive thread found the channel to the process thread full.
        channel_full,
        /// Chains completed.
        chains_received,
        /// Chains lost to a missing packet.
        chains_dropped,
        /// Packets discarded because the start of their chain was lost.
        orphan_packets,
        /// Chains whose content did not decode.
        chains_invalid,
        /// Heartbeats received.
        heartbeats_received,
        /// Updates applied to the replica.
        updates_applied,
        /// LMDB transactions used to apply them.
        apply_commits,
        /// Updates received more than once (multicast and repair overlap).
        duplicates,
        /// Gaps detected.
        gaps_detected,
        /// Repair requests sent.
        repairs_requested,
        /// Repair requests that failed (connection, publisher error).
        repair_failures,
        /// Updates received by repair.
        repair_updates,
        /// Bytes received by repair (frames).
        repair_bytes,
        /// Packet-repair requests sent (lost packets fetched one by one).
        packet_repairs_requested,
        /// Datagrams received by packet repair.
        packets_repaired,
        /// Bytes received by packet repair (frames).
        packet_repair_bytes,
        /// Lost packets that packet repair could not deliver (their updates came from the
        /// journal instead).
        packets_skipped,
        /// Packets that arrived out of sequence order.
        packets_reordered,
        /// Catch-ups served from the journal.
        catchups_journal,
        /// Catch-ups by hash resync (the journal no longer reached back, or one was asked).
        catchups_resync,
        /// Catch-ups that copied everything (hash resync of an empty replica).
        catchups_full_copy,
        /// Control-channel bytes of hash resyncs (digests, lists, records, journal).
        resync_bytes,
        /// Records fetched by hash resync.
        resync_fetched,
        /// Records deleted by hash resync.
        resync_deleted,
        /// Two-phase PREPAREs received.
        prepares_received,
        /// Prepared updates discarded on ABORT.
        prepares_aborted,
        /// PREPARED votes sent.
        votes_prepared,
        /// REFUSED votes sent.
        votes_refused,
        /// Catch-ups served compacted (latest value per key).
        catchups_compacted,
        /// Updates evicted from the reorder buffer (repaired later).
        reorder_evicted,
        /// Registrations refused (wrong credentials, revoked, not allowed).
        auth_failures,
        /// Key epochs learned by re-registering.
        key_changes,
        /// Newest key epoch the subscription holds (a gauge).
        key_epoch,
        /// Updates whose ops were partly or wholly withheld by access groups.
        updates_filtered,
        /// Times the subscriber said HELLO again (publisher silent or sending from a new
        /// source).
        resubscriptions,
        /// Times it left multicast to catch up by unicast (too many errors).
        unicast_backoffs,
        /// Times it rejoined multicast after a back-off.
        rejoins,
        /// Report intervals in which nothing arrived by multicast while versions the
        /// publisher committed came only by repair: counted as total loss (the group does
        /// not reach the subscriber's interface; check the interface and multicast
        /// routing).
        multicast_silent_intervals,
        /// Reception reports sent to the publisher.
        reports_sent,
        /// Loss over the last report interval, packets per million.
        loss_ppm,
        /// Publish→applied latency, median, microseconds (from the publisher's commit
        /// timestamp; assumes synchronized clocks).
        latency_p50_us,
        /// Publish→applied latency, 99th percentile, microseconds.
        latency_p99_us,
        /// Publish→applied latency, 99.9th percentile, microseconds.
        latency_p999_us,
        /// Receive buffer size the kernel granted, bytes.
        recv_buffer_bytes,
        /// Callbacks that panicked (the subscription keeps going).
        callback_panics,
        /// Updates handed to the host's callback (replays included).
        updates_delivered,
        /// Updates handed to the host again or late: kept updates replayed after a restart
        /// or close, and journal updates fetched for a host behind its replica.
        updates_replayed,
        /// Data packets from a stream the latest registration did not name (dropped; the
        /// subscriber registers again and repairs them).
        dropped_stream,
        /// Times the publisher's history changed under the replica (another incarnation, or
        /// a master behind it) and the replica resynced against the new one.
        history_changes,
        /// How the subscriber's replica store reaches the disk (a gauge): 0 sync (fsync per
        /// apply), 1 periodic, 2 none (see `ReplicaDurability`). The store is shared by the
        /// subscriber's subscriptions, so this and the next two are the same in each.
        replica_durability,
        /// Flushes (fsyncs) of unsynced replica commits (periodic and none modes; also
        /// before each PREPARED vote and at close).
        replica_flushes,
        /// 1 when the subscriber discarded its store at open because the previous run ended
        /// in an OS crash or power loss with unsynced commits; the replicas were rebuilt
        /// from the publisher and every host handed a reset.
        replica_rebuilds,
        /// Times the host was handed the whole state (`Update::reset`): the history changed,
        /// or nothing reached back to the host's version.
        resets_delivered,
        /// Datagrams received on the unicast push socket (a unicast-only subscription;
        /// included in `packets_received`).
        unicast_datagrams,
        /// Registrations whose unicast push the publisher refused (its limit of targets):
        /// the subscription then catches up by polling.
        unicast_refused,
        /// STATUS requests sent (polling the latest version while off the stream).
        status_polls,
    }
);

/// A histogram of latencies in microseconds with quarter-octave buckets (about 19 %
/// resolution), lock-free to record.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

const SUB_BUCKETS: u64 = 4;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..64 * SUB_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < SUB_BUCKETS {
            return us as usize;
        }
        let octave = 63 - u64::from(us.leading_zeros());
        let sub = (us >> (octave - 2)) & (SUB_BUCKETS - 1);
        (octave * SUB_BUCKETS + sub) as usize
    }

    fn upper_bound(bucket: usize) -> u64 {
        let b = bucket as u64;
        if b < SUB_BUCKETS {
            return b;
        }
        let octave = b / SUB_BUCKETS;
        let sub = b % SUB_BUCKETS;
        ((SUB_BUCKETS + sub + 1) << (octave - 2)) - 1
    }

    /// Records one latency.
    pub fn record(&self, us: u64) {
        inc(&self.buckets[Self::bucket(us).min(self.buckets.len() - 1)]);
        add(&self.sum_us, us);
    }

    /// Sum of the latencies recorded, microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// `(upper bound in microseconds, count)` per power of two, up to the highest bucket
    /// used (coarser than the quantiles, which use quarter octaves).
    pub fn octaves(&self) -> Vec<(u64, u64)> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let Some(last) = counts.iter().rposition(|&c| c > 0) else {
            return Vec::new();
        };
        let octaves = last as u64 / SUB_BUCKETS + 1;
        // Bucket indexes 4..8 are never used: values 0..=3 have their own, then octave 2
        // (4..=7 µs) starts at index 8.
        (0..octaves)
            .filter(|&o| o != 1)
            .map(|o| {
                let first = (o * SUB_BUCKETS) as usize;
                let end = first + SUB_BUCKETS as usize;
                (Self::upper_bound(end - 1), counts[first..end].iter().sum())
            })
            .collect()
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The latency at quantile `q` (0..=1), as its bucket's upper bound; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_bound(i);
            }
        }
        Self::upper_bound(counts.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_octaves_sum_to_the_count_and_bound_their_values() {
        let h = super::LatencyHistogram::default();
        for us in [0, 3, 4, 7, 8, 1_000, 1_023, 1_024, 5_000_000] {
            h.record(us);
        }
        let o = h.octaves();
        assert_eq!(o.iter().map(|b| b.1).sum::<u64>(), h.count());
        assert_eq!(o[0], (3, 2));
        assert_eq!(o[1], (7, 2));
        assert!(o.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(o.last().unwrap().1, 1);
        assert!(o.last().unwrap().0 >= 5_000_000);
        assert_eq!(h.sum_us(), 5_000_000 + 1_000 + 1_023 + 1_024 + 22);
    }

    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000.0 - 1.0).abs() < 0.2, "{p50}");
        assert!((p99 / 9_900.0 - 1.0).abs() < 0.2, "{p99}");
        assert_eq!(h.count(), 10_000);
        for us in [0u64, 1, 3, 4, 5, 7, 8, 1000, 123_456_789] {
            assert!(LatencyHistogram::upper_bound(LatencyHistogram::bucket(us)) >= us);
        }
    }
}
