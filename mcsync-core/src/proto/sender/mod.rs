//! The publisher's side of a stream: queues encoded updates, bundles those that queue up
//! into one chain, compresses a chain when that shrinks it, cuts it into packets, paces
//! them, and heartbeats when idle.

use super::{ChainBuilder, HeartbeatTimer, Pacer, PlainPacket};
use crate::wire::packet::{Compression, Heartbeat};
use crate::wire::update::{encode_bundle, RecordKind};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tuning of a [`Sender`].
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Largest datagram.
    pub datagram_bytes: usize,
    /// Most encoded bytes bundled into one chain (a single larger update still goes alone).
    pub max_bundle_bytes: usize,
    /// First heartbeat after data.
    pub heartbeat_initial: Duration,
    /// Longest idle heartbeat interval.
    pub heartbeat_max: Duration,
    /// Pacing, packets per second (0 = unlimited).
    pub packets_per_sec: u64,
    /// Pacing, bytes per second (0 = unlimited).
    pub bytes_per_sec: u64,
    /// Try lz4 on each chain.
    pub compress: bool,
    /// Most bytes waiting to be multicast: encoded records queued plus packets built and not
    /// yet handed out. Queueing an update that would go past it skips every committed update
    /// still queued (they are in the journal; heartbeats and later chains announce their
    /// versions, so subscribers catch up by unicast). The new update is always queued, so one
    /// larger than the cap still goes out alone.
    pub max_backlog_bytes: usize,
}

/// Counters kept by the sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderCounters {
    /// Chains built.
    pub chains: u64,
    /// Updates put into chains.
    pub updates: u64,
    /// Chains sent compressed.
    pub compressed_chains: u64,
    /// Heartbeats built.
    pub heartbeats: u64,
    /// Data packets built.
    pub data_packets: u64,
    /// Committed updates skipped (left to the journal) because the backlog reached
    /// [`SenderConfig::max_backlog_bytes`].
    pub skipped_backlog: u64,
    /// Largest backlog so far, bytes (a high-water mark, not a running count).
    pub backlog_peak_bytes: u64,
}

/// Sans-IO sender of one database's stream.
#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    builder: ChainBuilder,
    queue: VecDeque<Queued>,
    /// Encoded bytes in `queue`.
    queued_bytes: usize,
    pending: VecDeque<PlainPacket>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    pending_top: u64,
    sent_version: u64,
    oldest_version: u64,
    heartbeat: HeartbeatTimer,
    pacer: Pacer,
    counters: SenderCounters,
    scratch: Vec<u8>,
    multicast: bool,
    changekey_until: Option<Instant>,
}

/// A record waiting to be bundled into a chain.
#[derive(Debug)]
enum Queued {
    /// A committed update of this version.
    Update { version: u64, encoded: Arc<Vec<u8>> },
    /// A two-phase PREPARE or decision: sent in order with the updates, carries no new
    /// version, never skipped.
    Control { encoded: Arc<Vec<u8>> },
}

impl Queued {
    /// The encoded record.
    fn encoded(&self) -> &Arc<Vec<u8>> {
        match self {
            Queued::Update { encoded, .. } | Queued::Control { encoded } => encoded,
        }
    }

    /// The committed version it carries, if it is an update.
    fn version(&self) -> Option<u64> {
        match self {
            Queued::Update { version, .. } => Some(*version),
            Queued::Control { .. } => None,
        }
    }
}

/// How long packets carry CHANGEKEY after a rotation.
const CHANGEKEY_FOR: Duration = Duration::from_secs(2);

impl Sender {
    /// A sender for stream `stream_id`, whose last sent version is `latest`.
    pub fn new(
        now: Instant,
        stream_id: u32,
        key_epoch: u32,
        latest: u64,
        config: SenderConfig,
    ) -> Sender {
        Sender {
            builder: ChainBuilder::new(stream_id, key_epoch, config.datagram_bytes),
            queue: VecDeque::new(),
            queued_bytes: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_top: latest,
            sent_version: latest,
            oldest_version: 1,
            heartbeat: HeartbeatTimer::new(now, config.heartbeat_initial, config.heartbeat_max),
            pacer: Pacer::new(now, config.packets_per_sec, config.bytes_per_sec),
            counters: SenderCounters::default(),
            scratch: Vec::new(),
            multicast: true,
            changekey_until: None,
            config,
        }
    }

    /// Queues an encoded update of version `version` (versions arrive in order). When the
    /// backlog would go past [`SenderConfig::max_backlog_bytes`], the committed updates
    /// still queued are skipped first (two-phase records stay).
    pub fn push(&mut self, version: u64, encoded: Arc<Vec<u8>>) {
        debug_assert!(
            version
                > self
                    .queue
                    .iter()
                    .rev()
                    .find_map(Queued::version)
                    .unwrap_or(self.pending_top)
        );
        if self.backlog_bytes() + encoded.len() > self.config.max_backlog_bytes {
            let skipped = self.skip_queued_updates();
            if self.multicast {
                // (With multicast off they were never going to be multicast.)
                self.counters.skipped_backlog += skipped;
            }
        }
        self.enqueue(Queued::Update { version, encoded });
    }

    fn enqueue(&mut self, item: Queued) {
        self.queued_bytes += item.encoded().len();
        self.queue.push_back(item);
        let backlog = self.backlog_bytes() as u64;
        self.counters.backlog_peak_bytes = self.counters.backlog_peak_bytes.max(backlog);
    }

    /// Drops every committed update still queued (they are in the journal), keeping
    /// two-phase records, and moves the version heartbeats announce past them. Returns how
    /// many were dropped.
    fn skip_queued_updates(&mut self) -> u64 {
        let before = self.queue.len();
        let Some(top) = self.queue.iter().filter_map(Queued::version).max() else {
            return 0;
        };
        self.queue.retain(|q| q.version().is_none());
        self.queued_bytes = self.queue.iter().map(|q| q.encoded().len()).sum();
        self.pending_top = self.pending_top.max(top);
        if self.pending.is_empty() {
            self.sent_version = self.pending_top;
        }
        (before - self.queue.len()) as u64
    }

    /// Seals chains built from now on under key epoch `epoch`, and flags packets with
    /// CHANGEKEY for a while so subscribers re-register promptly.
    ///
    /// Returns the first sequence number sealed under `epoch`: every packet under an
    /// earlier epoch is below it.
    pub fn rekey(&mut self, now: Instant, epoch: u32) -> u64 {
        self.builder.set_key_epoch(epoch);
        self.changekey_until = Some(now + CHANGEKEY_FOR);
        self.builder.next_seq()
    }

    /// The oldest key epoch a built packet still waiting to be sent uses (the current
    /// epoch when none waits): keys of older epochs are no longer needed to seal.
    pub fn oldest_epoch_in_use(&self) -> u32 {
        self.pending
            .iter()
            .map(|p| p.header.key_epoch)
            .min()
            .unwrap_or(self.builder.key_epoch())
            .min(self.builder.key_epoch())
    }

    /// Turns multicast of updates on or off. While off, queued updates are skipped (they
    /// are in the journal) and heartbeats announce them, so subscribers repair by unicast.
    pub fn set_multicast(&mut self, on: bool) {
        self.multicast = on;
    }

    /// Changes the largest bundle (bytes of encoded updates per chain).
    pub fn set_bundle_bytes(&mut self, bytes: usize) {
        self.config.max_bundle_bytes = bytes.max(1);
    }

    /// Whether updates are multicast.
    pub fn multicast(&self) -> bool {
        self.multicast
    }

    /// Queues a record that is not a new committed version (a two-phase PREPARE or
    /// decision): it is sent in order with the updates but does not move the version
    /// heartbeats announce.
    ///
    /// Never skipped, whatever the backlog: a participant must see every PREPARE and
    /// decision (they are few and small).
    pub fn push_control(&mut self, encoded: Arc<Vec<u8>>) {
        self.enqueue(Queued::Control { encoded });
    }

    /// The committed version moved to `v` without new data (a prepared update was
    /// committed): heartbeats announce it from now on.
    pub fn advance_to(&mut self, v: u64) {
        self.pending_top = self.pending_top.max(v);
        if self.pending.is_empty() && self.queue.is_empty() {
            self.sent_version = self.sent_version.max(v);
        }
    }

    /// Sets the oldest version the journal can serve (announced in heartbeats).
    pub fn set_oldest_version(&mut self, v: u64) {
        self.oldest_version = v;
    }

    /// Changes pacing at run time.
    pub fn set_rates(&mut self, now: Instant, packets_per_sec: u64, bytes_per_sec: u64) {
        self.config.packets_per_sec = packets_per_sec;
        self.config.bytes_per_sec = bytes_per_sec;
        self.pacer.set_rates(now, packets_per_sec, bytes_per_sec);
    }

    /// Last version whose chain was completely handed out.
    pub fn sent_version(&self) -> u64 {
        self.sent_version
    }

    /// Whether updates or packets are waiting.
    pub fn is_busy(&self) -> bool {
        !self.queue.is_empty() || !self.pending.is_empty()
    }

    /// Bytes waiting to be multicast: encoded records queued plus built packets not yet
    /// handed out.
    pub fn backlog_bytes(&self) -> usize {
        self.queued_bytes + self.pending_bytes
    }

    /// Counters so far.
    pub fn counters(&self) -> &SenderCounters {
        &self.counters
    }

    fn build_chain(&mut self) {
        let mut bytes = 0usize;
        let mut n = 0usize;
        for u in self.queue.iter().map(Queued::encoded) {
            if n > 0
                && (bytes + u.len() + 4 > self.config.max_bundle_bytes || n == u16::MAX as usize)
            {
                break;
            }
            bytes += u.len() + 4;
            n += 1;
        }
        let taken: Vec<_> = self.queue.drain(..n).collect();
        self.queued_bytes -= taken.iter().map(|t| t.encoded().len()).sum::<usize>();
        self.pending_top = taken
            .iter()
            .filter_map(Queued::version)
            .fold(self.pending_top, u64::max);
        self.scratch.clear();
        encode_bundle(
            taken.iter().map(|q| q.encoded().as_slice()),
            &mut self.scratch,
        );
        let mut compression = Compression::None;
        let compressed;
        let mut chain: &[u8] = &self.scratch;
        if self.config.compress && self.scratch.len() > 64 {
            compressed = lz4_flex::block::compress_prepend_size(&self.scratch);
            if compressed.len() < self.scratch.len() {
                chain = &compressed;
                compression = Compression::Lz4;
                self.counters.compressed_chains += 1;
            }
        }
        let mut packets = Vec::new();
        self.builder.build(chain, compression, &mut packets);
        self.counters.chains += 1;
        self.counters.updates += n as u64;
        self.counters.data_packets += packets.len() as u64;
        self.pending_bytes += packets.iter().map(|p| p.payload.len()).sum::<usize>();
        self.pending.extend(packets);
    }

    /// The next packet to send at `now`, if pacing allows one.
    ///
    /// `wall_us` is the publisher's wall clock (microseconds since the Unix epoch), put in
    /// heartbeats so subscribers can estimate their lag.
    pub fn poll_transmit(&mut self, now: Instant, wall_us: u64) -> Option<PlainPacket> {
        let mut p = self.poll_packet(now, wall_us)?;
        if self.changekey_until.is_some_and(|t| now < t) {
            p.header.flags |= crate::wire::packet::CHANGEKEY;
        }
        Some(p)
    }

    fn poll_packet(&mut self, now: Instant, wall_us: u64) -> Option<PlainPacket> {
        if !self.multicast {
            // Updates are skipped (they are in the journal); two-phase records still go.
            self.skip_queued_updates();
        }
        if self.pending.is_empty() && !self.queue.is_empty() {
            self.build_chain();
        }
        if let Some(front) = self.pending.front() {
            if !self.pacer.delay(now, front.payload.len()).is_zero() {
                return None;
            }
            let p = self.pending.pop_front()?;
            self.pending_bytes -= p.payload.len();
            self.pacer.on_sent(now, p.payload.len());
            if self.pending.is_empty() {
                self.sent_version = self.pending_top;
                self.heartbeat.on_data(now);
            }
            return Some(p);
        }
        if self.heartbeat.is_due(now) && self.pacer.delay(now, Heartbeat::LEN).is_zero() {
            let mut body = Vec::with_capacity(Heartbeat::LEN);
            Heartbeat {
                latest_version: self.sent_version,
                oldest_version: self.oldest_version,
                timestamp_us: wall_us,
            }
            .encode(&mut body);
            self.pacer.on_sent(now, body.len());
            self.heartbeat.on_sent(now);
            self.counters.heartbeats += 1;
            return Some(self.builder.heartbeat(body));
        }
        None
    }

    /// When to call [`poll_transmit`](Self::poll_transmit) next.
    pub fn next_timeout(&mut self, now: Instant) -> Instant {
        if let Some(front) = self.pending.front() {
            let len = front.payload.len();
            return now + self.pacer.delay(now, len);
        }
        if !self.queue.is_empty() {
            return now;
        }
        let due = self.heartbeat.due();
        if due <= now {
            // Due but held back by pacing: wake when the pacer allows it, not in a busy loop.
            return now + self.pacer.delay(now, Heartbeat::LEN);
        }
        due
    }
}

/// Turns a reassembled chain back into its updates, decompressing with a size limit.
pub fn decode_chain(
    chain: &super::Chain,
    limits: &crate::wire::update::Limits,
    max_chain: usize,
) -> Result<Vec<crate::Update>, crate::wire::WireError> {
    decode_chain_records(chain, limits, max_chain)?
        .into_iter()
        .map(|(k, u)| match k {
            RecordKind::Commit => Ok(u),
            other => Err(crate::wire::WireError::Invalid("update kind", other as u64)),
        })
        .collect()
}

/// Like [`decode_chain`], keeping two-phase records (PREPARE, COMMIT, ABORT) with their kind.
pub fn decode_chain_records(
    chain: &super::Chain,
    limits: &crate::wire::update::Limits,
    max_chain: usize,
) -> Result<Vec<(RecordKind, crate::Update)>, crate::wire::WireError> {
    use crate::wire::update::decode_bundle_records;
    use crate::wire::WireError;
    match chain.compression {
        Compression::None => decode_bundle_records(&chain.bytes, limits),
        Compression::Lz4 => {
            let b = &chain.bytes;
            if b.len() < 4 {
                return Err(WireError::Truncated("lz4 size"));
            }
            let size = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if size > max_chain {
                return Err(WireError::TooLong("decompressed chain", size as u64));
            }
            let raw = lz4_flex::block::decompress(&b[4..], size)
                .map_err(|_| WireError::Invalid("lz4 data", 0))?;
            decode_bundle_records(&raw, limits)
        }
    }
}

#[cfg(test)]
mod tests;
