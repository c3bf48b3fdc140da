//! The publisher's side of a stream: queues encoded updates, bundles those that queue up
//! into one chain, compresses a chain when that shrinks it, cuts it into packets, paces
//! them, and heartbeats when idle.

use super::{ChainBuilder, HeartbeatTimer, Pacer, PlainPacket};
use crate::wire::packet::{Compression, Heartbeat};
use crate::wire::update::encode_bundle;
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
}

/// Sans-IO sender of one database's stream.
#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    builder: ChainBuilder,
    queue: VecDeque<(u64, Arc<Vec<u8>>)>,
    pending: VecDeque<PlainPacket>,
    pending_top: u64,
    sent_version: u64,
    oldest_version: u64,
    heartbeat: HeartbeatTimer,
    pacer: Pacer,
    counters: SenderCounters,
    scratch: Vec<u8>,
}

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
            pending: VecDeque::new(),
            pending_top: latest,
            sent_version: latest,
            oldest_version: 1,
            heartbeat: HeartbeatTimer::new(now, config.heartbeat_initial, config.heartbeat_max),
            pacer: Pacer::new(now, config.packets_per_sec, config.bytes_per_sec),
            counters: SenderCounters::default(),
            scratch: Vec::new(),
            config,
        }
    }

    /// Queues an encoded update of version `version` (versions arrive in order).
    pub fn push(&mut self, version: u64, encoded: Arc<Vec<u8>>) {
        debug_assert!(version > self.queue.back().map_or(self.pending_top, |q| q.0));
        self.queue.push_back((version, encoded));
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

    /// Counters so far.
    pub fn counters(&self) -> &SenderCounters {
        &self.counters
    }

    fn build_chain(&mut self) {
        let mut bytes = 0usize;
        let mut n = 0usize;
        for (_, u) in &self.queue {
            if n > 0
                && (bytes + u.len() + 4 > self.config.max_bundle_bytes || n == u16::MAX as usize)
            {
                break;
            }
            bytes += u.len() + 4;
            n += 1;
        }
        let taken: Vec<_> = self.queue.drain(..n).collect();
        self.pending_top = taken.last().map_or(self.pending_top, |t| t.0);
        self.scratch.clear();
        encode_bundle(taken.iter().map(|(_, u)| u.as_slice()), &mut self.scratch);
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
        self.pending.extend(packets);
    }

    /// The next packet to send at `now`, if pacing allows one.
    ///
    /// `wall_us` is the publisher's wall clock (microseconds since the Unix epoch), put in
    /// heartbeats so subscribers can estimate their lag.
    pub fn poll_transmit(&mut self, now: Instant, wall_us: u64) -> Option<PlainPacket> {
        if self.pending.is_empty() && !self.queue.is_empty() {
            self.build_chain();
        }
        if let Some(front) = self.pending.front() {
            if !self.pacer.delay(now, front.payload.len()).is_zero() {
                return None;
            }
            let p = self.pending.pop_front()?;
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
        self.heartbeat.due()
    }
}

/// Turns a reassembled chain back into its updates, decompressing with a size limit.
pub fn decode_chain(
    chain: &super::Chain,
    limits: &crate::wire::update::Limits,
    max_chain: usize,
) -> Result<Vec<crate::Update>, crate::wire::WireError> {
    use crate::wire::WireError;
    match chain.compression {
        Compression::None => crate::wire::update::decode_bundle(&chain.bytes, limits),
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
            crate::wire::update::decode_bundle(&raw, limits)
        }
    }
}
