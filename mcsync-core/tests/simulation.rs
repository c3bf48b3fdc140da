//! Seeded simulation of one-phase replication: the real sans-IO publisher and subscriber
//! code (`proto::Sender`, `crypto::Keyring`, `wire::packet`, `proto::ReplayWindow`,
//! `proto::ChainAssembler`, `proto::decode_chain`, `proto::Receiver`) driven by a virtual
//! clock over a simulated network that loses (in bursts), duplicates, delays, reorders and
//! tampers with packets, with subscriber and publisher restarts and a repair service that
//! answers from the master's journal, sometimes slowly, sometimes failing half-way.
//!
//! Every scenario asserts that each replica ends byte-for-byte equal to the master and that
//! the application saw every version exactly once, in order, across restarts.
//!
//! A failing scenario prints its seed; rerun it alone with
//! `MCSYNC_SIM_SEED=<seed> cargo test -p mcsync-core --test simulation -- --nocapture`.
//! `MCSYNC_SIM_SCENARIOS=<n>` changes how many scenarios each test runs.

use mcsync::crypto::{Key, Keyring};
use mcsync::proto::{
    decode_chain, ChainAssembler, ChainDrop, LossGenerator, OpenPacket, PacketReorder, Receiver,
    ReceiverConfig, ReorderConfig, RepairRanges, ReplayWindow, RetransmitBuffer, Sender,
    SenderConfig,
};
use mcsync::wire::packet::{Compression, Heartbeat, PacketHeader, PacketKind, FIC};
use mcsync::wire::update::{decode_update, update_to_vec, Limits};
use mcsync::{LossConfig, Op, OpKind, Update};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
/// Largest chain a subscriber accepts (as `subscriber.rs` sizes it).
const MAX_CHAIN: usize = (16 << 20) + (64 << 10);
/// A scenario that has not converged this long after its last commit has failed.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Scenario parameters

#[derive(Debug, Clone)]
struct Params {
    updates: usize,
    subscribers: usize,
    keyspace: usize,
    /// Overall loss rate of each subscriber's link.
    loss: f64,
    burst_len: u32,
    /// Probability that a delivered packet arrives twice.
    dup: f64,
    /// Probability that a delivered packet is followed by a tampered copy.
    tamper: f64,
    /// Probability that an attacker injects a forged heartbeat after a packet.
    forge: f64,
    base_delay: Duration,
    /// Probability that a packet is held back by up to `jitter` (which reorders it).
    reorder: f64,
    jitter: Duration,
    /// Probability that a commit follows an idle gap.
    idle_gap: f64,
    max_idle: Duration,
    /// Probability that a put carries a large (multi-packet) value.
    large: f64,
    ops_max: usize,
    restarts_per_sub: usize,
    max_downtime: Duration,
    publisher_restart: bool,
    repair_fail: f64,
    repair_rtt: Duration,
    /// Whether subscribers put packets in sequence order and fetch lost packets from the
    /// publisher's retransmit buffer (as `subscriber.rs` does) before repairing versions.
    packet_repair: bool,
    retransmit_bytes: usize,
    sender: SenderConfig,
    receiver: ReceiverConfig,
}

fn dur_us(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_micros(rng.gen_range(lo..=hi))
}

impl Params {
    fn random(rng: &mut ChaCha8Rng) -> Params {
        let loss = if rng.gen_bool(0.15) {
            0.0
        } else {
            rng.gen_range(0.0..0.30)
        };
        let heartbeat_initial = dur_us(rng, 500, 5_000);
        Params {
            updates: rng.gen_range(20..=150),
            subscribers: rng.gen_range(1..=3),
            keyspace: rng.gen_range(5..=200),
            loss,
            burst_len: if rng.gen_bool(0.5) {
                1
            } else {
                rng.gen_range(2..=8)
            },
            dup: if rng.gen_bool(0.7) {
                0.0
            } else {
                rng.gen_range(0.0..0.1)
            },
            tamper: if rng.gen_bool(0.8) {
                0.0
            } else {
                rng.gen_range(0.0..0.05)
            },
            forge: if rng.gen_bool(0.9) { 0.0 } else { 0.01 },
            base_delay: dur_us(rng, 50, 2_000),
            reorder: if rng.gen_bool(0.4) {
                0.0
            } else {
                rng.gen_range(0.0..0.1)
            },
            jitter: dur_us(rng, 10, 5_000),
            idle_gap: rng.gen_range(0.0..0.1),
            max_idle: dur_us(rng, 5_000, 500_000),
            large: if rng.gen_bool(0.3) {
                0.0
            } else {
                rng.gen_range(0.0..0.04)
            },
            ops_max: if rng.gen_bool(0.8) { 4 } else { 20 },
            restarts_per_sub: rng.gen_range(0..=2),
            max_downtime: dur_us(rng, 0, 100_000),
            publisher_restart: rng.gen_bool(0.2),
            repair_fail: if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(0.0..0.4)
            },
            repair_rtt: dur_us(rng, 100, 10_000),
            packet_repair: rng.gen_bool(0.75),
            retransmit_bytes: if rng.gen_bool(0.3) {
                rng.gen_range(2_000..=100_000)
            } else {
                64 << 20
            },
            sender: SenderConfig {
                datagram_bytes: [200, 576, 1_400, 1_400, 1_400, 9_000][rng.gen_range(0..6)],
                max_bundle_bytes: rng.gen_range(64..=16_384),
                heartbeat_initial,
                heartbeat_max: heartbeat_initial.max(dur_us(rng, 5_000, 200_000)),
                packets_per_sec: if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(500..=50_000)
                },
                bytes_per_sec: if rng.gen_bool(0.7) {
                    0
                } else {
                    rng.gen_range(500_000..=50_000_000)
                },
                compress: rng.gen_bool(0.7),
                max_backlog_bytes: mcsync::config::DEFAULT_MAX_BACKLOG_BYTES,
            },
            receiver: ReceiverConfig {
                buffer_bytes: if rng.gen_bool(0.8) {
                    64 << 20
                } else {
                    rng.gen_range(1_000..=64_000)
                },
                repair_delay: if rng.gen_bool(0.3) {
                    Duration::ZERO
                } else {
                    dur_us(rng, 0, 5_000)
                },
                repair_retry: dur_us(rng, 1_000, 50_000),
                max_ranges: if rng.gen_bool(0.3) {
                    rng.gen_range(1..=4)
                } else {
                    64
                },
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Workload

fn value(rng: &mut ChaCha8Rng, len: usize, version: u64) -> Vec<u8> {
    if rng.gen_bool(0.5) {
        // Compressible text.
        let word = format!("v{version}-{} ", rng.gen_range(0..1_000));
        let mut v = word.as_bytes().repeat(len / word.len() + 1);
        v.truncate(len);
        v
    } else {
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    }
}

fn random_update(rng: &mut ChaCha8Rng, p: &Params, version: u64) -> Update {
    let n = rng.gen_range(1..=p.ops_max);
    let ops = (0..n)
        .map(|_| {
            let key = format!("key-{:04}", rng.gen_range(0..p.keyspace)).into_bytes();
            let mut op = if rng.gen_bool(0.25) {
                Op::delete(key)
            } else {
                let len = if rng.gen_bool(p.large) {
                    rng.gen_range(2_000..=24_000)
                } else {
                    rng.gen_range(0..=300)
                };
                Op::put(key, value(rng, len, version))
            };
            if rng.gen_bool(0.1) {
                op.groups = vec!["sales".into(), format!("g{}", rng.gen_range(0..3))];
            }
            op
        })
        .collect();
    Update {
        version,
        timestamp_us: version * 1_000,
        ops,
        reset: false,
    }
}

fn apply(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, u: &Update) {
    for op in &u.ops {
        match op.kind {
            OpKind::Put => {
                state.insert(op.key.clone(), op.value.clone());
            }
            OpKind::Delete => {
                state.remove(&op.key);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Counters

#[derive(Debug, Default, Clone)]
struct Stats {
    scenarios: u64,
    lossy_scenarios: u64,
    lossy_scenarios_repaired: u64,
    updates: u64,
    data_packets: u64,
    heartbeats: u64,
    compressed_chains: u64,
    delivered: u64,
    dropped: u64,
    dropped_data: u64,
    duplicated: u64,
    reordered: u64,
    arrived_while_down: u64,
    tampered: u64,
    forged: u64,
    bad_delivered: u64,
    rejected_malformed: u64,
    rejected_auth: u64,
    rejected_replay: u64,
    chains_broken: u64,
    chains_orphaned: u64,
    chains_complete: u64,
    multi_packet_chains: u64,
    heartbeat_revealed_gap: u64,
    repairs: u64,
    packet_repairs: u64,
    packets_repaired: u64,
    packets_gone: u64,
    packets_skipped: u64,
    requests_checked: u64,
    repair_failures: u64,
    versions_repaired: u64,
    evicted: u64,
    restarts: u64,
    publisher_restarts: u64,
    applied: u64,
    virtual_time: Duration,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            scenarios,
            lossy_scenarios,
            lossy_scenarios_repaired,
            updates,
            data_packets,
            heartbeats,
            compressed_chains,
            bad_delivered,
            delivered,
            dropped,
            dropped_data,
            duplicated,
            reordered,
            arrived_while_down,
            tampered,
            forged,
            rejected_malformed,
            rejected_auth,
            rejected_replay,
            chains_broken,
            chains_orphaned,
            chains_complete,
            multi_packet_chains,
            heartbeat_revealed_gap,
            repairs,
            packet_repairs,
            packets_repaired,
            packets_gone,
            packets_skipped,
            requests_checked,
            repair_failures,
            versions_repaired,
            evicted,
            restarts,
            publisher_restarts,
            applied,
            virtual_time
        );
    }
}

// ---------------------------------------------------------------------------------------
// Events

enum Event {
    /// The master commits its next update.
    Commit,
    /// A datagram reaches a subscriber.
    Arrive {
        sub: usize,
        datagram: Arc<Vec<u8>>,
        /// Tampered or forged: must be rejected.
        bad: bool,
    },
    /// A repair asked for by a subscriber (in incarnation `generation`) finishes.
    RepairDone { sub: usize, generation: u64 },
    /// A subscriber process dies, losing everything but its persisted replica.
    Crash { sub: usize },
    /// A crashed subscriber starts again.
    Up { sub: usize },
    /// The publisher restarts: fresh stream id, possibly a new key epoch, queue lost.
    PublisherRestart,
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

// ---------------------------------------------------------------------------------------
// Subscribers

/// What survives a subscriber restart: the replica and its applied version, committed
/// together (as the LMDB store does).
#[derive(Default)]
struct Replica {
    applied: u64,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A subscriber process's in-memory state, lost on a crash.
struct Live {
    receiver: Receiver,
    assembler: ChainAssembler,
    windows: HashMap<u32, ReplayWindow>,
    highest_seq: HashMap<u32, u64>,
    stream: Option<u32>,
    reorder: Option<PacketReorder>,
    /// Sequence numbers the reorder stage was given, and those it asked to repair, since it
    /// last changed streams.
    fed_seqs: BTreeSet<u64>,
    requested_seqs: BTreeSet<u64>,
    repair: Option<RepairRanges>,
    /// Versions handed to the receiver and not yet handed out (unless evicted).
    buffered: BTreeSet<u64>,
}

impl Live {
    /// The process thread: packet order (with the reorder stage), stream changes, then
    /// heartbeats and chains.
    fn on_authentic(&mut self, now: Instant, pkt: OpenPacket, st: &mut Stats, limits: &Limits) {
        match self.reorder.as_mut() {
            Some(r) => {
                let seq = pkt.header.seq;
                if r.on_packet(now, pkt) {
                    self.assembler.reset();
                    self.fed_seqs.clear();
                    self.requested_seqs.clear();
                }
                self.fed_seqs.insert(seq);
                self.release_ordered(now, st, limits);
            }
            None => {
                if self.stream != Some(pkt.header.stream_id) {
                    self.stream = Some(pkt.header.stream_id);
                    self.assembler.reset();
                }
                self.on_ordered(now, pkt, st, limits);
            }
        }
    }

    fn release_ordered(&mut self, now: Instant, st: &mut Stats, limits: &Limits) {
        while let Some(p) = self.reorder.as_mut().and_then(|r| r.poll_release()) {
            self.on_ordered(now, p, st, limits);
        }
    }

    fn on_ordered(&mut self, now: Instant, pkt: OpenPacket, st: &mut Stats, limits: &Limits) {
        let header = pkt.header;
        match header.kind {
            PacketKind::Heartbeat => {
                let hb = Heartbeat::parse(&pkt.payload).expect("an authentic heartbeat parses");
                if hb.latest_version > self.receiver.known_latest() {
                    st.heartbeat_revealed_gap += 1;
                }
                self.receiver.on_heartbeat(now, hb.latest_version);
            }
            PacketKind::Data => {
                let out = self.assembler.on_packet(&header, &pkt.payload);
                match out.dropped {
                    Some(ChainDrop::Broken) => st.chains_broken += 1,
                    Some(ChainDrop::Orphan) => st.chains_orphaned += 1,
                    Some(ChainDrop::BadLength) => panic!("an authentic chain has a bad length"),
                    None => {}
                }
                if let Some(chain) = out.chain {
                    st.chains_complete += 1;
                    st.multi_packet_chains += u64::from(header.flags & FIC == 0);
                    let updates = decode_chain(&chain, limits, MAX_CHAIN)
                        .expect("an authentic chain decodes");
                    for u in updates {
                        self.feed(now, u);
                    }
                }
            }
        }
    }

    fn feed(&mut self, now: Instant, u: Update) {
        let v = u.version;
        if self.receiver.on_update(now, u) {
            self.buffered.insert(v);
        }
    }

    /// What the receiver should ask for: every version in (applied, known latest] it was
    /// not given, as at most `max` ranges. Only exact while nothing was evicted.
    fn expected_missing(&self, applied: u64, max: usize) -> RepairRanges {
        let mut out: RepairRanges = Vec::new();
        for v in applied + 1..=self.receiver.known_latest() {
            if self.buffered.contains(&v) {
                continue;
            }
            match out.last_mut() {
                Some(r) if r.1 + 1 == v => r.1 = v,
                _ => out.push((v, v)),
            }
        }
        out.truncate(max);
        out
    }
}

struct Sub {
    loss: LossGenerator,
    keyring: Keyring,
    replica: Replica,
    /// Versions the application saw, in order, across restarts.
    seen: Vec<u64>,
    live: Option<Live>,
    generation: u64,
    lost_data: u64,
    repairs: u64,
}

// ---------------------------------------------------------------------------------------
// The simulation

struct Sim {
    rng: ChaCha8Rng,
    p: Params,
    base: Instant,
    now: Duration,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    /// Commit time and update of every version, in order.
    workload: Vec<(Duration, Update)>,
    committed: usize,
    master: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Encoded update of version v at index v - 1.
    journal: Vec<Arc<Vec<u8>>>,
    keyring: Keyring,
    attacker: Keyring,
    epoch: u32,
    stream_id: u32,
    sender: Sender,
    retransmit: RetransmitBuffer,
    subs: Vec<Sub>,
    lifecycle_pending: usize,
    limits: Limits,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = Params::random(&mut rng);
        let base = Instant::now();
        let keys = [1u32, 2].map(|_| Key::from_bytes(rng.gen()));
        let mut keyring = Keyring::with_key(1, &keys[0]);
        keyring.insert(2, &keys[1]);
        let attacker = Keyring::with_key(1, &Key::from_bytes(rng.gen()));

        let mut t = dur_us(&mut rng, 0, 5_000);
        let mut workload = Vec::with_capacity(p.updates);
        for v in 1..=p.updates as u64 {
            if rng.gen_bool(p.idle_gap) {
                t += dur_us(&mut rng, 1_000, p.max_idle.as_micros() as u64);
            } else if rng.gen_bool(0.5) {
                t += dur_us(&mut rng, 0, 2_000);
            }
            workload.push((t, random_update(&mut rng, &p, v)));
        }

        let subs = (0..p.subscribers)
            .map(|_| {
                let mut keyring = Keyring::with_key(1, &keys[0]);
                keyring.insert(2, &keys[1]);
                Sub {
                    loss: LossGenerator::new(&LossConfig {
                        probability: p.loss,
                        burst_len: p.burst_len,
                        seed: rng.gen(),
                    }),
                    keyring,
                    replica: Replica::default(),
                    seen: Vec::new(),
                    live: None,
                    generation: 0,
                    lost_data: 0,
                    repairs: 0,
                }
            })
            .collect();
        let stream_id = rng.gen();
        let sender = Sender::new(base, stream_id, 1, 0, p.sender.clone());
        let mut sim = Sim {
            rng,
            base,
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            next_seq: 0,
            workload,
            committed: 0,
            master: BTreeMap::new(),
            journal: Vec::new(),
            keyring,
            attacker,
            epoch: 1,
            stream_id,
            sender,
            retransmit: RetransmitBuffer::new(stream_id, p.retransmit_bytes),
            subs,
            lifecycle_pending: 0,
            limits: Limits::default(),
            stats: Stats::default(),
            p,
        };
        for i in 0..sim.subs.len() {
            sim.start_sub(i);
        }
        let first = sim.workload[0].0;
        sim.schedule(first, Event::Commit);
        let end = sim.workload.last().map_or(Duration::ZERO, |w| w.0) + 50 * MS;
        for sub in 0..sim.subs.len() {
            for _ in 0..sim.p.restarts_per_sub {
                let at = dur_us(&mut sim.rng, 0, end.as_micros() as u64);
                sim.lifecycle_pending += 1;
                sim.schedule(at, Event::Crash { sub });
            }
        }
        if sim.p.publisher_restart {
            let at = dur_us(&mut sim.rng, 0, end.as_micros() as u64);
            sim.lifecycle_pending += 1;
            sim.schedule(at, Event::PublisherRestart);
        }
        sim
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn latest(&self) -> u64 {
        self.journal.len() as u64
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.next_seq,
            event,
        }));
    }

    // -- publisher side -----------------------------------------------------------------

    fn commit(&mut self) {
        let (_, u) = &self.workload[self.committed];
        let v = u.version;
        assert_eq!(v, self.latest() + 1);
        apply(&mut self.master, u);
        let encoded = Arc::new(update_to_vec(u));
        self.journal.push(encoded.clone());
        self.sender.push(v, encoded);
        self.committed += 1;
        self.stats.updates += 1;
        if let Some(&(at, _)) = self.workload.get(self.committed) {
            self.schedule(at, Event::Commit);
        }
    }

    fn restart_publisher(&mut self) {
        self.stats.publisher_restarts += 1;
        let mut id = self.rng.gen();
        while id == self.stream_id {
            id = self.rng.gen();
        }
        self.stream_id = id;
        if self.rng.gen_bool(0.5) {
            self.epoch = 2;
        }
        self.stats.compressed_chains += self.sender.counters().compressed_chains;
        self.retransmit = RetransmitBuffer::new(id, self.p.retransmit_bytes);
        // Whatever was queued and not sent is now only in the journal.
        self.sender = Sender::new(
            self.instant(),
            id,
            self.epoch,
            self.latest(),
            self.p.sender.clone(),
        );
    }

    /// Sends every packet the sender lets out now.
    fn transmit(&mut self) {
        let wall_us = self.now.as_micros() as u64;
        let mut datagram = Vec::new();
        while let Some(pkt) = self.sender.poll_transmit(self.instant(), wall_us) {
            assert!(self.keyring.seal(pkt.header, &pkt.payload, &mut datagram));
            let data = pkt.header.kind == PacketKind::Data;
            if data {
                self.stats.data_packets += 1;
            } else {
                self.stats.heartbeats += 1;
            }
            let dg = Arc::new(datagram.clone());
            self.retransmit.push(pkt.header.seq, dg.clone());
            for sub in 0..self.subs.len() {
                self.send_to(sub, &dg, data);
            }
            if self.p.forge > 0.0 && self.rng.gen_bool(self.p.forge) {
                self.forge_heartbeat(pkt.header.seq + 1);
            }
        }
    }

    /// An attacker without the key announces a huge version, on the real stream, with the
    /// next sequence number (so a replay window that recorded it would drop the real one).
    fn forge_heartbeat(&mut self, seq: u64) {
        let mut body = Vec::new();
        Heartbeat {
            latest_version: 1 << 60,
            oldest_version: 1,
            timestamp_us: 0,
        }
        .encode(&mut body);
        let header = PacketHeader {
            kind: PacketKind::Heartbeat,
            flags: 0,
            compression: Compression::None,
            length: 0,
            stream_id: self.stream_id,
            key_epoch: 1,
            seq,
        };
        let mut dg = Vec::new();
        assert!(self.attacker.seal(header, &body, &mut dg));
        let dg = Arc::new(dg);
        for sub in 0..self.subs.len() {
            self.stats.forged += 1;
            let at = self.now + self.p.base_delay;
            self.schedule(
                at,
                Event::Arrive {
                    sub,
                    datagram: dg.clone(),
                    bad: true,
                },
            );
        }
    }

    fn delay(&mut self) -> Duration {
        if self.p.reorder > 0.0 && self.rng.gen_bool(self.p.reorder) {
            self.p.base_delay + dur_us(&mut self.rng, 1, self.p.jitter.as_micros() as u64)
        } else {
            self.p.base_delay
        }
    }

    fn send_to(&mut self, sub: usize, dg: &Arc<Vec<u8>>, data: bool) {
        if self.subs[sub].loss.drop_next() {
            self.stats.dropped += 1;
            if data {
                self.stats.dropped_data += 1;
                self.subs[sub].lost_data += 1;
            }
            return;
        }
        let at = self.now + self.delay();
        self.schedule(
            at,
            Event::Arrive {
                sub,
                datagram: dg.clone(),
                bad: false,
            },
        );
        if self.p.dup > 0.0 && self.rng.gen_bool(self.p.dup) {
            self.stats.duplicated += 1;
            let at = self.now + self.delay();
            self.schedule(
                at,
                Event::Arrive {
                    sub,
                    datagram: dg.clone(),
                    bad: false,
                },
            );
        }
        if self.p.tamper > 0.0 && self.rng.gen_bool(self.p.tamper) {
            self.stats.tampered += 1;
            let mut bad = dg.as_ref().clone();
            let bit = self.rng.gen_range(0..bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            // Ahead of the genuine packet, so it must not take its replay slot.
            let at = self.now + self.p.base_delay / 2;
            self.schedule(
                at,
                Event::Arrive {
                    sub,
                    datagram: Arc::new(bad),
                    bad: true,
                },
            );
        }
    }

    // -- subscriber side ----------------------------------------------------------------

    fn start_sub(&mut self, i: usize) {
        let now = self.instant();
        let latest = self.latest();
        let s = &mut self.subs[i];
        let mut receiver = Receiver::new(s.replica.applied, self.p.receiver.clone());
        // HELLO tells a (re)started subscriber the current version: catch up at once.
        receiver.on_heartbeat(now, latest);
        s.live = Some(Live {
            receiver,
            assembler: ChainAssembler::new(MAX_CHAIN),
            windows: HashMap::new(),
            highest_seq: HashMap::new(),
            stream: None,
            reorder: self.p.packet_repair.then(|| {
                PacketReorder::new(ReorderConfig {
                    repair_delay: self.p.receiver.repair_delay,
                    max_bytes: self.p.receiver.buffer_bytes,
                    max_ranges: 64,
                })
            }),
            fed_seqs: BTreeSet::new(),
            requested_seqs: BTreeSet::new(),
            repair: None,
            buffered: BTreeSet::new(),
        });
        self.after_input(i);
    }

    fn crash(&mut self, i: usize) {
        let s = &mut self.subs[i];
        let Some(live) = s.live.take() else {
            return; // already down
        };
        self.stats.evicted += live.receiver.counters().evicted;
        self.stats.packets_skipped += live.reorder.as_ref().map_or(0, |r| r.counters().skipped);
        s.generation += 1;
        self.stats.restarts += 1;
        let down = dur_us(&mut self.rng, 0, self.p.max_downtime.as_micros() as u64);
        self.lifecycle_pending += 1;
        self.schedule(self.now + down, Event::Up { sub: i });
    }

    fn arrive(&mut self, i: usize, dg: &[u8], bad: bool) {
        let now = self.instant();
        let st = &mut self.stats;
        let s = &mut self.subs[i];
        let Some(live) = s.live.as_mut() else {
            st.arrived_while_down += 1;
            return;
        };
        st.delivered += 1;
        st.bad_delivered += bad as u64;
        // The receive thread: parse, authenticate, replay check.
        let Ok((header, sealed)) = PacketHeader::parse(dg) else {
            assert!(bad, "a genuine datagram failed to parse");
            st.rejected_malformed += 1;
            return;
        };
        let payload = match s.keyring.open(&header, sealed) {
            Ok(p) => {
                assert!(!bad, "a tampered or forged packet opened: {header:?}");
                p
            }
            Err(e) => {
                assert!(bad, "a genuine packet failed to open: {e:?}");
                st.rejected_auth += 1;
                return;
            }
        };
        if !live
            .windows
            .entry(header.stream_id)
            .or_default()
            .check_and_record(header.seq)
        {
            st.rejected_replay += 1;
            return;
        }
        let hi = live.highest_seq.entry(header.stream_id).or_default();
        if header.seq < *hi {
            st.reordered += 1;
        }
        *hi = (*hi).max(header.seq);
        live.on_authentic(now, OpenPacket { header, payload }, st, &self.limits);
        self.after_input(i);
    }

    /// Applies what is ready, then asks for repair if the receiver wants one.
    fn after_input(&mut self, i: usize) {
        self.packet_repair(i);
        self.apply_ready(i);
        let now = self.instant();
        let latest = self.latest();
        let s = &mut self.subs[i];
        let Some(live) = s.live.as_mut() else { return };
        assert!(
            live.receiver.known_latest() <= latest,
            "receiver believes in version {} but the master is at {latest}",
            live.receiver.known_latest()
        );
        if live.repair.is_some() {
            return;
        }
        let Some(ranges) = live.receiver.poll_repair(now) else {
            return;
        };
        assert!(!ranges.is_empty(), "an empty repair request");
        let mut prev = s.replica.applied;
        for &(a, b) in &ranges {
            assert!(a > prev && a <= b, "bad ranges {ranges:?} at {prev}");
            prev = b;
        }
        assert!(
            prev <= latest,
            "repair of {ranges:?} beyond the master's {latest}"
        );
        if live.receiver.counters().evicted == 0 {
            let expected = live.expected_missing(s.replica.applied, self.p.receiver.max_ranges);
            assert_eq!(
                ranges, expected,
                "repair asks for other than the missing versions"
            );
            self.stats.requests_checked += 1;
        }
        assert!(ranges.len() <= self.p.receiver.max_ranges);
        live.repair = Some(ranges);
        s.repairs += 1;
        self.stats.repairs += 1;
        let rtt = self.p.repair_rtt.as_micros() as u64;
        let at = self.now + dur_us(&mut self.rng, rtt / 2, rtt * 3 / 2);
        let generation = s.generation;
        self.schedule(at, Event::RepairDone { sub: i, generation });
    }

    /// Fetches the packets the reorder stage misses from the publisher's retransmit buffer,
    /// at once, like `subscriber.rs` (sometimes the connection drops part-way).
    fn packet_repair(&mut self, i: usize) {
        let now = self.instant();
        let Sim {
            subs,
            retransmit,
            rng,
            stats,
            limits,
            p,
            ..
        } = self;
        let s = &mut subs[i];
        let Some(live) = s.live.as_mut() else { return };
        let Some((stream, ranges)) = live.reorder.as_mut().and_then(|r| r.poll_repair(now)) else {
            return;
        };
        let mut prev = 0;
        for &(a, b) in &ranges {
            assert!(a > prev && a <= b, "bad packet ranges {ranges:?}");
            prev = b;
        }
        assert!(ranges.len() <= 64);
        let seqs: Vec<u64> = ranges.iter().flat_map(|&(a, b)| a..=b).collect();
        for seq in &seqs {
            assert!(
                !live.fed_seqs.contains(seq),
                "packet {seq} requested but already received"
            );
            assert!(
                live.requested_seqs.insert(*seq),
                "packet {seq} requested twice"
            );
        }
        stats.packet_repairs += 1;
        s.repairs += 1;
        let fail = p.repair_fail > 0.0 && rng.gen_bool(p.repair_fail);
        let n = if fail {
            rng.gen_range(0..=seqs.len())
        } else {
            seqs.len()
        };
        let reorder = live.reorder.as_mut().expect("reorder stage");
        for &seq in &seqs[..n] {
            let held = (retransmit.stream_id() == stream)
                .then(|| retransmit.get(seq))
                .flatten();
            let Some(dg) = held else {
                stats.packets_gone += 1;
                continue;
            };
            let (header, sealed) = PacketHeader::parse(&dg).expect("a sent datagram parses");
            let payload = s
                .keyring
                .open(&header, sealed)
                .expect("a sent datagram opens");
            assert_eq!((header.stream_id, header.seq), (stream, seq));
            stats.packets_repaired += 1;
            live.fed_seqs.insert(seq);
            reorder.on_packet(now, OpenPacket { header, payload });
        }
        reorder.on_repair_done(now);
        live.release_ordered(now, stats, limits);
    }

    /// The application: applies updates in the order the receiver hands them out.
    fn apply_ready(&mut self, i: usize) {
        let s = &mut self.subs[i];
        let Some(live) = s.live.as_mut() else { return };
        while let Some(u) = live.receiver.poll_ready() {
            let v = u.version;
            assert_eq!(
                v,
                s.replica.applied + 1,
                "the application got version {v} after {}",
                s.replica.applied
            );
            let journal = &self.journal[(v - 1) as usize];
            assert!(
                update_to_vec(&u) == **journal,
                "version {v} differs from the journal"
            );
            apply(&mut s.replica.state, &u);
            s.replica.applied = v;
            live.buffered.remove(&v);
            s.seen.push(v);
            self.stats.applied += 1;
        }
    }

    /// The repair service answers from the journal, like `repair_server.rs`; sometimes the
    /// connection drops part-way.
    fn repair_done(&mut self, i: usize, generation: u64) {
        let now = self.instant();
        let latest = self.latest();
        if self.subs[i].generation != generation {
            return; // the subscriber restarted meanwhile
        }
        let ranges = self.subs[i]
            .live
            .as_mut()
            .and_then(|l| l.repair.take())
            .expect("a repair in flight");
        let versions: Vec<u64> = ranges.iter().flat_map(|&(a, b)| a..=b).collect();
        let fail = self.p.repair_fail > 0.0 && self.rng.gen_bool(self.p.repair_fail);
        let n = if fail {
            self.rng.gen_range(0..=versions.len())
        } else {
            versions.len()
        };
        for &v in &versions[..n] {
            let bytes = &self.journal[(v - 1) as usize];
            let u = decode_update(bytes, &self.limits).expect("a journaled update decodes");
            self.stats.versions_repaired += 1;
            self.subs[i].live.as_mut().expect("live").feed(now, u);
            self.apply_ready(i);
        }
        let live = self.subs[i].live.as_mut().expect("live");
        if fail {
            self.stats.repair_failures += 1;
            live.receiver.on_repair_done(now, false);
        } else {
            // CATCHUP_END carries the publisher's current version.
            live.receiver.clamp_latest(latest);
            live.receiver.on_repair_done(now, true);
        }
        self.after_input(i);
    }

    // -- driver ---------------------------------------------------------------------------

    fn handle(&mut self, event: Event) {
        match event {
            Event::Commit => self.commit(),
            Event::Arrive { sub, datagram, bad } => self.arrive(sub, &datagram, bad),
            Event::RepairDone { sub, generation } => self.repair_done(sub, generation),
            Event::Crash { sub } => {
                self.lifecycle_pending -= 1;
                self.crash(sub);
            }
            Event::Up { sub } => {
                self.lifecycle_pending -= 1;
                self.start_sub(sub);
            }
            Event::PublisherRestart => {
                self.lifecycle_pending -= 1;
                self.restart_publisher();
            }
        }
    }

    fn converged(&self) -> bool {
        self.committed == self.workload.len()
            && self.lifecycle_pending == 0
            && self.subs.iter().all(|s| {
                s.live.as_ref().is_some_and(|l| l.repair.is_none())
                    && s.replica.applied == self.latest()
            })
    }

    fn run(mut self) -> Stats {
        let deadline = self.workload.last().map_or(Duration::ZERO, |w| w.0) + CONVERGE_WITHIN;
        let mut stuck = 0;
        loop {
            self.transmit();
            if self.converged() {
                break;
            }
            let mut next = self.sender.next_timeout(self.instant());
            if let Some(Reverse(e)) = self.queue.peek() {
                next = next.min(self.base + e.at);
            }
            for l in self.subs.iter().filter_map(|s| s.live.as_ref()) {
                let reorder = l.reorder.as_ref().and_then(|r| r.next_timeout());
                for t in [l.receiver.next_timeout(), reorder].into_iter().flatten() {
                    next = next.min(t);
                }
            }
            let next = next.duration_since(self.base);
            if next <= self.now {
                stuck += 1;
                assert!(stuck < 10_000, "no progress at {:?}", self.now);
            } else {
                stuck = 0;
                self.now = next;
            }
            assert!(
                self.now < deadline,
                "not converged after {CONVERGE_WITHIN:?}: master at {}, replicas at {:?}",
                self.latest(),
                self.subs
                    .iter()
                    .map(|s| s.replica.applied)
                    .collect::<Vec<_>>()
            );
            while self.queue.peek().is_some_and(|Reverse(e)| e.at <= self.now) {
                let Reverse(e) = self.queue.pop().expect("peeked");
                self.handle(e.event);
            }
            for i in 0..self.subs.len() {
                let now = self.instant();
                let due = self.subs[i].live.as_ref().is_some_and(|l| {
                    let reorder = l.reorder.as_ref().and_then(|r| r.next_timeout());
                    [l.receiver.next_timeout(), reorder]
                        .into_iter()
                        .flatten()
                        .any(|t| t <= now)
                });
                if due {
                    self.after_input(i);
                }
            }
        }
        // Let what is still in flight arrive (late duplicates, old heartbeats): none of it
        // may reach the application again.
        while let Some(Reverse(e)) = self.queue.pop() {
            self.now = self.now.max(e.at);
            self.handle(e.event);
        }
        self.check_end();
        self.stats.compressed_chains += self.sender.counters().compressed_chains;
        self.stats.scenarios = 1;
        self.stats.virtual_time = self.now;
        let lossy = self.stats.dropped_data > 0;
        self.stats.lossy_scenarios = lossy as u64;
        let repaired = self.stats.repairs + self.stats.packet_repairs > 0;
        self.stats.lossy_scenarios_repaired = (lossy && repaired) as u64;
        for s in &self.subs {
            if let Some(l) = &s.live {
                self.stats.evicted += l.receiver.counters().evicted;
                self.stats.packets_skipped +=
                    l.reorder.as_ref().map_or(0, |r| r.counters().skipped);
            }
        }
        self.stats
    }

    fn check_end(&self) {
        let latest = self.latest();
        assert_eq!(latest, self.p.updates as u64);
        let expected: Vec<u64> = (1..=latest).collect();
        for (i, s) in self.subs.iter().enumerate() {
            assert_eq!(s.replica.applied, latest, "subscriber {i}");
            assert!(
                s.seen == expected,
                "subscriber {i}: the application did not see every version once, in order"
            );
            assert!(
                s.replica.state == self.master,
                "subscriber {i}: replica differs from the master"
            );
            // With no duplicated packets, a lost data packet can only be made good by repair
            // (of the packet or of its versions).
            if s.lost_data > 0 && self.p.dup == 0.0 {
                assert!(s.repairs > 0, "subscriber {i} lost data but never repaired");
            }
        }
        // Every tampered or forged packet that reached a running subscriber was rejected
        // before the replay window and the assembler (and no genuine one was).
        let rejected = self.stats.rejected_malformed + self.stats.rejected_auth;
        assert_eq!(rejected, self.stats.bad_delivered);
    }
}

fn run_seed(seed: u64) -> Stats {
    match std::panic::catch_unwind(|| Sim::new(seed).run()) {
        Ok(s) => s,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "simulation scenario failed: {msg}\n  rerun with MCSYNC_SIM_SEED={seed:#x} \
                 cargo test -p mcsync-core --test simulation -- --nocapture\n  parameters: \
                 {:#?}",
                Params::random(&mut ChaCha8Rng::seed_from_u64(seed))
            );
        }
    }
}

fn scenario_count(default: u64) -> u64 {
    std::env::var("MCSYNC_SIM_SCENARIOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Seed of the first scenario; scenario `i` of the suite uses `BASE_SEED + i`.
const BASE_SEED: u64 = 0x5EED_0000;
/// Scenarios per test (two tests, so the suite uses both cores of a small machine).
const SCENARIOS_PER_TEST: u64 = 500;

/// Runs the `part`-th batch of scenarios (or, in part 0, only `MCSYNC_SIM_SEED` if set) and
/// returns the summed counters.
fn run_many(name: &str, part: u64) -> Stats {
    let started = std::time::Instant::now();
    let count = scenario_count(SCENARIOS_PER_TEST);
    let seeds: Vec<u64> = match std::env::var("MCSYNC_SIM_SEED") {
        Ok(s) if part == 0 => vec![parse_seed(&s).expect("MCSYNC_SIM_SEED is a number")],
        Ok(_) => Vec::new(),
        Err(_) => (0..count).map(|i| BASE_SEED + part * count + i).collect(),
    };
    let mut total = Stats::default();
    for seed in seeds {
        total.add(&run_seed(seed));
    }
    let mut line = String::new();
    let t = &total;
    let _ = write!(
        line,
        "{name}: {} scenarios in {:?} (virtual {:?}): {} updates, {} data packets + {} \
         heartbeats sent, {} arrived, {} dropped ({} data), {} duplicated, {} reordered, \
         {} tampered + {} forged ({} rejected malformed, {} auth, {} replay), \
         {} chains complete ({} multi-packet), {} broken, {} orphaned, {} compressed, {} gaps revealed by \
         heartbeats, {} packet repairs ({} packets, {} gone, {} skipped), {} repairs \
         ({} checked exact, {} failed, {} versions), {} evicted, {} subscriber \
         restarts, {} publisher restarts, {} applied",
        t.scenarios,
        started.elapsed(),
        t.virtual_time,
        t.updates,
        t.data_packets,
        t.heartbeats,
        t.delivered,
        t.dropped,
        t.dropped_data,
        t.duplicated,
        t.reordered,
        t.tampered,
        t.forged,
        t.rejected_malformed,
        t.rejected_auth,
        t.rejected_replay,
        t.chains_complete,
        t.multi_packet_chains,
        t.chains_broken,
        t.chains_orphaned,
        t.compressed_chains,
        t.heartbeat_revealed_gap,
        t.packet_repairs,
        t.packets_repaired,
        t.packets_gone,
        t.packets_skipped,
        t.repairs,
        t.requests_checked,
        t.repair_failures,
        t.versions_repaired,
        t.evicted,
        t.restarts,
        t.publisher_restarts,
        t.applied,
    );
    println!("{line}");
    total
}

/// The summed counters show that the scenarios exercised what they claim to, so the suite
/// cannot pass vacuously.
fn assert_exercised(t: &Stats) {
    assert!(
        t.dropped_data > t.data_packets / 50,
        "too little loss: {t:?}"
    );
    assert!(t.repairs > t.scenarios, "too few repairs: {t:?}");
    assert!(t.requests_checked * 2 > t.repairs, "{t:?}");
    assert!(t.repair_failures > 0 && t.versions_repaired > 0, "{t:?}");
    assert!(
        t.lossy_scenarios_repaired * 100 >= t.lossy_scenarios * 95,
        "lossy scenarios without repair: {t:?}"
    );
    assert!(
        t.heartbeat_revealed_gap > 0,
        "no tail loss found by heartbeats"
    );
    assert!(t.chains_broken > 0 && t.chains_orphaned > 0, "{t:?}");
    assert!(
        t.duplicated > 0 && t.rejected_replay >= t.duplicated / 2,
        "{t:?}"
    );
    assert!(t.reordered > 0, "no reordering: {t:?}");
    assert!(t.tampered > 0 && t.forged > 0, "{t:?}");
    assert!(t.restarts > 0 && t.publisher_restarts > 0, "{t:?}");
    assert!(t.compressed_chains > 0 && t.evicted > 0, "{t:?}");
    assert!(t.multi_packet_chains > 0, "{t:?}");
    assert!(t.packet_repairs > 0 && t.packets_repaired > 0, "{t:?}");
    assert!(t.packets_gone > 0 && t.packets_skipped > 0, "{t:?}");
    assert!(t.applied >= t.updates, "{t:?}");
}

#[test]
fn random_scenarios_first_half() {
    let t = run_many("simulation 1", 0);
    if std::env::var("MCSYNC_SIM_SEED").is_err() {
        assert_exercised(&t);
    }
}

#[test]
fn random_scenarios_second_half() {
    let t = run_many("simulation 2", 1);
    if std::env::var("MCSYNC_SIM_SEED").is_err() {
        assert_exercised(&t);
    }
}

/// A subscriber that loses the last chain before the stream goes idle learns of it from
/// the first heartbeat it receives, and asks for exactly that version.
#[test]
fn lost_tail_is_detected_from_heartbeats() {
    let t0 = Instant::now();
    let key = Key::from_bytes([7; 32]);
    let ring = Keyring::with_key(1, &key);
    let config = SenderConfig {
        datagram_bytes: 1_400,
        max_bundle_bytes: 1,
        heartbeat_initial: 2 * MS,
        heartbeat_max: 50 * MS,
        packets_per_sec: 0,
        bytes_per_sec: 0,
        compress: false,
        max_backlog_bytes: mcsync::config::DEFAULT_MAX_BACKLOG_BYTES,
    };
    let mut sender = Sender::new(t0, 42, 1, 0, config);
    let mut receiver = Receiver::new(0, ReceiverConfig::default());
    let mut assembler = ChainAssembler::new(MAX_CHAIN);
    let mut window = ReplayWindow::default();
    let limits = Limits::default();
    for v in 1..=5u64 {
        let u = Update {
            version: v,
            timestamp_us: v,
            ops: vec![Op::put(format!("k{v}"), vec![v as u8; 3_000])],
            reset: false,
        };
        sender.push(v, Arc::new(update_to_vec(&u)));
    }
    let mut now = t0;
    let mut heartbeats = 0;
    let mut found_at = None;
    let mut dg = Vec::new();
    while now < t0 + Duration::from_secs(1) && found_at.is_none() {
        while let Some(pkt) = sender.poll_transmit(now, 0) {
            assert!(ring.seal(pkt.header, &pkt.payload, &mut dg));
            let (h, sealed) = PacketHeader::parse(&dg).unwrap();
            let payload = ring.open(&h, sealed).unwrap();
            assert!(window.check_and_record(h.seq));
            match h.kind {
                PacketKind::Heartbeat => {
                    heartbeats += 1;
                    // The first heartbeat is lost too; the second must reveal the tail.
                    if heartbeats > 1 {
                        let hb = Heartbeat::parse(&payload).unwrap();
                        assert_eq!(hb.latest_version, 5);
                        receiver.on_heartbeat(now, hb.latest_version);
                    }
                }
                PacketKind::Data => {
                    let out = assembler.on_packet(&h, &payload);
                    // Version 5 is the last chain: all of its packets are lost.
                    let Some(chain) = out.chain else { continue };
                    for u in decode_chain(&chain, &limits, MAX_CHAIN).unwrap() {
                        if u.version < 5 {
                            receiver.on_update(now, u);
                        }
                    }
                }
            }
        }
        while receiver.poll_ready().is_some() {}
        if let Some(ranges) = receiver.poll_repair(now) {
            assert_eq!(ranges, [(5, 5)]);
            found_at = Some(now);
        }
        now = sender.next_timeout(now);
    }
    assert_eq!(receiver.applied(), 4);
    assert_eq!(heartbeats, 2);
    // Data ended at t0; heartbeats at +2 ms (lost) and +6 ms.
    assert_eq!(found_at, Some(t0 + 6 * MS));
}
