//! Seeded simulation of one-phase replication: the real sans-IO publisher code
//! (`proto::Sender`, `crypto::Keyring`, `wire::packet`) and the real subscription engine
//! (`proto::subscription::Engine`: packet and version order, re-registration, the error
//! policy, the choice of repair strategy) driven by a virtual clock over a simulated network
//! that loses (in bursts), duplicates, delays, reorders and tampers with packets, with
//! subscriber and publisher restarts and a control server that answers after a round trip
//! from the master's journal (trimmed in some scenarios), sometimes failing half-way. The
//! receive thread (parse, authenticate, replay window) and the application are simulated as
//! `net/receive.rs` and `subscriber/driver.rs` do them.
//!
//! Every scenario asserts that each replica ends byte-for-byte equal to the master and that
//! the application saw every version exactly once, in order, across restarts (but for the
//! versions a compacted catch-up or a hash resync hands over as one state).
//!
//! A failing scenario prints its seed; rerun it alone with
//! `MCSYNC_SIM_SEED=<seed> cargo test -p mcsync-core --test simulation -- --nocapture`.
//! `MCSYNC_SIM_SCENARIOS=<n>` changes how many scenarios each test runs.

use mcsync::crypto::{Key, Keyring, OpenError};
use mcsync::proto::subscription::{
    Engine, EngineConfig, EngineStart, Input, Output, RepairEnd, Traffic,
};
use mcsync::proto::{
    decode_chain, ChainAssembler, LossGenerator, OpenPacket, Receiver, ReceiverConfig,
    ReorderConfig, RepairRanges, ReplayWindow, RetransmitBuffer, Sender, SenderConfig,
};
use mcsync::wire::control::DatabaseInfo;
use mcsync::wire::packet::{Compression, Heartbeat, PacketHeader, PacketKind};
use mcsync::wire::update::{decode_update, update_to_vec, Limits};
use mcsync::{LossConfig, Op, OpKind, Update};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
/// Largest chain a subscriber accepts (the engine's, for the default limits).
const MAX_CHAIN: usize = (16 << 20) + (64 << 10);
/// The database's one history.
const INCARNATION: u64 = 0x1DEA;
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
    /// A first missing range longer than this is fetched compacted.
    compact_after: Option<u64>,
    /// How many versions the journal keeps (older ones need a hash resync).
    journal_keep: Option<u64>,
    silence_timeout: Duration,
    report_interval: Duration,
    error_threshold: f64,
    unicast_backoff: Duration,
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
            compact_after: rng.gen_bool(0.3).then(|| rng.gen_range(2..=40)),
            journal_keep: rng.gen_bool(0.3).then(|| rng.gen_range(5..=60)),
            silence_timeout: dur_us(rng, 200_000, 3_000_000),
            report_interval: dur_us(rng, 20_000, 1_000_000),
            error_threshold: rng.gen_range(0.02..0.5),
            unicast_backoff: dur_us(rng, 10_000, 2_000_000),
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
    rejected_retired: u64,
    chains_broken: u64,
    chains_orphaned: u64,
    chains_complete: u64,
    repairs: u64,
    packet_repairs: u64,
    packets_repaired: u64,
    packets_gone: u64,
    packets_skipped: u64,
    repair_failures: u64,
    hellos: u64,
    registrations: u64,
    reports: u64,
    status_polls: u64,
    backoffs: u64,
    rejoins: u64,
    silent_intervals: u64,
    not_in_group: u64,
    compacts: u64,
    resyncs: u64,
    trimmed: u64,
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
            rejected_retired,
            chains_broken,
            chains_orphaned,
            chains_complete,
            repairs,
            packet_repairs,
            packets_repaired,
            packets_gone,
            packets_skipped,
            repair_failures,
            hellos,
            registrations,
            reports,
            status_polls,
            backoffs,
            rejoins,
            silent_intervals,
            not_in_group,
            compacts,
            resyncs,
            trimmed,
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
    /// The control server answers a subscriber (in incarnation `generation`).
    Reply {
        sub: usize,
        generation: u64,
        reply: Reply,
    },
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

/// An answer from the publisher's control server to what an engine asked.
#[derive(Debug)]
enum Reply {
    Registered,
    Current,
    Packets {
        stream: u32,
        ranges: Vec<(u64, u64)>,
    },
    CatchUp(RepairRanges),
    Compact {
        from: u64,
        through: u64,
    },
    Resync,
}

/// A subscriber process's in-memory state, lost on a crash: the real subscription engine
/// and what the receive thread keeps.
struct Live {
    engine: Engine,
    windows: HashMap<u32, ReplayWindow>,
    highest_seq: HashMap<u32, u64>,
    /// Authentic packets taken from the group.
    received: u64,
    /// Off the multicast group (the error policy's back-off).
    left: bool,
    /// Packets given to the engine and packets it asked to repair, by (stream, seq).
    fed: HashSet<(u32, u64)>,
    requested: HashSet<(u32, u64)>,
    /// Requests not answered yet.
    outstanding: usize,
}

struct Sub {
    loss: LossGenerator,
    keyring: Keyring,
    replica: Replica,
    /// Versions the application saw, in order, across restarts.
    seen: Vec<u64>,
    /// Versions the application was allowed to skip: compacted catch-ups and resyncs hand
    /// over the state at their last version.
    skipped: BTreeSet<u64>,
    /// Compacted updates served, by their last version: (first version, encoding).
    compacted: HashMap<u64, (u64, Vec<u8>)>,
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
        Sim::with(seed, |_| {})
    }

    /// A scenario whose random parameters `adjust` changes before anything is drawn
    /// from them.
    fn with(seed: u64, adjust: impl FnOnce(&mut Params)) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = Params::random(&mut rng);
        adjust(&mut p);
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
                    skipped: BTreeSet::new(),
                    compacted: HashMap::new(),
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
        if self.subs[sub].live.as_ref().is_some_and(|l| l.left) {
            // Off the group by its error policy: it catches up by unicast.
            self.stats.not_in_group += 1;
            return;
        }
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

    /// Oldest version the journal still serves.
    fn oldest(&self) -> u64 {
        let latest = self.latest();
        self.p
            .journal_keep
            .map_or(1, |keep| latest.saturating_sub(keep) + 1)
            .max(1)
    }

    /// What HELLO_OK says now.
    fn registration(&self) -> DatabaseInfo {
        DatabaseInfo {
            group: "239.255.0.1:4000".parse().expect("an address"),
            source: "127.0.0.1:4000".parse().expect("an address"),
            encrypted: true,
            keys: Vec::new(),
            older_keys_below: u64::MAX,
            groups: Vec::new(),
            current_version: self.latest(),
            oldest_version: self.oldest(),
            subscriber_id: 1,
            incarnation: INCARNATION,
            stream_id: self.stream_id,
            push: Default::default(),
        }
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            receiver: self.p.receiver.clone(),
            reorder: ReorderConfig {
                repair_delay: self.p.receiver.repair_delay,
                max_bytes: self.p.receiver.buffer_bytes,
                max_ranges: 64,
            },
            limits: self.limits,
            compact_after: self.p.compact_after,
            silence_timeout: self.p.silence_timeout,
            report_interval: self.p.report_interval,
            error_threshold: self.p.error_threshold,
            unicast_backoff: self.p.unicast_backoff,
        }
    }

    /// Starts a subscriber as `subscriber/start.rs` does: registers, then runs the engine.
    fn start_sub(&mut self, i: usize) {
        let start = EngineStart {
            applied: self.subs[i].replica.applied,
            incarnation: INCARNATION,
            registration: self.registration(),
            participant: false,
            held: None,
        };
        let engine = Engine::new(self.instant(), self.engine_config(), start);
        self.subs[i].live = Some(Live {
            engine,
            windows: HashMap::new(),
            highest_seq: HashMap::new(),
            received: 0,
            left: false,
            fed: HashSet::new(),
            requested: HashSet::new(),
            outstanding: 0,
        });
        self.drain(i);
    }

    /// Adds what a subscriber process counted before it ends.
    fn collect(stats: &mut Stats, live: &Live) {
        let c = live.engine.counters();
        stats.chains_broken += c.chains_dropped;
        stats.chains_orphaned += c.orphan_packets;
        stats.chains_complete += c.chains_received;
        stats.backoffs += c.unicast_backoffs;
        stats.rejoins += c.rejoins;
        stats.silent_intervals += c.multicast_silent_intervals;
        stats.evicted += live.engine.receiver_counters().evicted;
        stats.packets_skipped += live.engine.reorder_counters().skipped;
    }

    fn crash(&mut self, i: usize) {
        let s = &mut self.subs[i];
        let Some(live) = s.live.take() else {
            return; // already down
        };
        Self::collect(&mut self.stats, &live);
        s.generation += 1;
        self.stats.restarts += 1;
        let down = dur_us(&mut self.rng, 0, self.p.max_downtime.as_micros() as u64);
        self.lifecycle_pending += 1;
        self.schedule(self.now + down, Event::Up { sub: i });
    }

    /// The receive thread (parse, authenticate, replay check), then the engine.
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
            // A late packet of the old epoch, sealed past the point where the new one took
            // over (here: the old stream's, after a publisher restart): dropped as the real
            // receive thread does; repair makes it good.
            Err(OpenError::Retired(_)) if !bad => {
                st.rejected_retired += 1;
                return;
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
        live.received += 1;
        if header.stream_id == live.engine.stream_id() {
            live.fed.insert((header.stream_id, header.seq));
        }
        live.engine
            .handle(now, Input::Packet(OpenPacket { header, payload }));
        let traffic = Traffic {
            received: live.received,
            ..Traffic::default()
        };
        live.engine.handle(now, Input::Traffic(traffic));
        self.drain(i);
    }

    /// Does what the engine asks until it has nothing more, like `subscriber/driver.rs`;
    /// requests to the publisher are answered after a round trip.
    fn drain(&mut self, i: usize) {
        loop {
            let now = self.instant();
            let latest = self.latest();
            let Some(live) = self.subs[i].live.as_mut() else {
                return;
            };
            assert!(
                live.engine.known_latest() <= latest,
                "the engine believes in version {} but the master is at {latest}",
                live.engine.known_latest()
            );
            let Some(out) = live.engine.poll(now) else {
                // A drained engine has no timer due: a driver sleeping until it would spin.
                if let Some((timer, at)) = live.engine.next_timer() {
                    assert!(
                        at > now,
                        "{timer:?} due at {at:?}, nothing to do at {now:?}"
                    );
                }
                return;
            };
            match out {
                Output::Apply(batch) => self.apply(i, batch),
                Output::Hello => {
                    self.stats.hellos += 1;
                    self.request(i, Reply::Registered);
                }
                Output::Report(r) => {
                    self.stats.reports += 1;
                    assert_eq!(r.applied_version, self.subs[i].replica.applied);
                }
                Output::Status => {
                    self.stats.status_polls += 1;
                    self.request(i, Reply::Current);
                }
                Output::Membership { leave, .. } => live.left = leave,
                Output::FetchPackets { stream, ranges } => {
                    self.check_packet_request(i, stream, &ranges);
                    self.request(i, Reply::Packets { stream, ranges });
                }
                Output::CatchUp(ranges) => {
                    self.check_version_request(i, &ranges);
                    self.request(i, Reply::CatchUp(ranges));
                }
                Output::Compact { from, through } => {
                    self.check_version_request(i, &[(from, through)]);
                    self.stats.compacts += 1;
                    self.request(i, Reply::Compact { from, through });
                }
                Output::Resync { new_history } => {
                    assert_eq!(new_history, None, "one history only");
                    self.stats.resyncs += 1;
                    self.request(i, Reply::Resync);
                }
                other => panic!("a two-phase output with no two-phase updates: {other:?}"),
            }
        }
    }

    fn request(&mut self, i: usize, reply: Reply) {
        let rtt = self.p.repair_rtt.as_micros() as u64;
        let at = self.now + dur_us(&mut self.rng, rtt / 2, rtt * 3 / 2);
        let s = &mut self.subs[i];
        s.live.as_mut().expect("live").outstanding += 1;
        let generation = s.generation;
        self.schedule(
            at,
            Event::Reply {
                sub: i,
                generation,
                reply,
            },
        );
    }

    /// Packet repairs ask for packets the engine was not given, each once.
    fn check_packet_request(&mut self, i: usize, stream: u32, ranges: &[(u64, u64)]) {
        let live = self.subs[i].live.as_mut().expect("live");
        let mut prev = 0;
        for &(a, b) in ranges {
            assert!(a > prev && a <= b, "bad packet ranges {ranges:?}");
            prev = b;
        }
        assert!(!ranges.is_empty() && ranges.len() <= 64);
        for seq in ranges.iter().flat_map(|&(a, b)| a..=b) {
            assert!(
                !live.fed.contains(&(stream, seq)),
                "packet {seq} requested but already received"
            );
            assert!(
                live.requested.insert((stream, seq)),
                "packet {seq} requested twice"
            );
        }
        self.stats.packet_repairs += 1;
        self.subs[i].repairs += 1;
    }

    /// Version repairs ask for versions above the replica's and up to the master's.
    fn check_version_request(&mut self, i: usize, ranges: &[(u64, u64)]) {
        let latest = self.latest();
        let s = &mut self.subs[i];
        assert!(!ranges.is_empty(), "an empty repair request");
        let mut prev = s.replica.applied;
        for &(a, b) in ranges {
            assert!(a > prev && a <= b, "bad ranges {ranges:?} at {prev}");
            prev = b;
        }
        assert!(
            prev <= latest,
            "repair of {ranges:?} beyond the master's {latest}"
        );
        assert!(ranges.len() <= self.p.receiver.max_ranges);
        s.repairs += 1;
        self.stats.repairs += 1;
    }

    /// The application: applies updates in the order the engine hands them out. A version
    /// is the journal's, or a compacted update this subscriber was served.
    fn apply(&mut self, i: usize, batch: Vec<Update>) {
        let s = &mut self.subs[i];
        for u in batch {
            let v = u.version;
            let encoded = update_to_vec(&u);
            match s.compacted.get(&v) {
                Some((first, served)) if encoded == *served => {
                    assert!(
                        *first <= s.replica.applied + 1 && v > s.replica.applied,
                        "compacted {first}..={v} applied at {}",
                        s.replica.applied
                    );
                    s.skipped.extend(s.replica.applied + 1..v);
                }
                _ => {
                    assert_eq!(
                        v,
                        s.replica.applied + 1,
                        "the application got version {v} after {}",
                        s.replica.applied
                    );
                    assert!(
                        encoded == *self.journal[(v - 1) as usize],
                        "version {v} differs from the journal"
                    );
                }
            }
            apply(&mut s.replica.state, &u);
            s.replica.applied = v;
            s.seen.push(v);
            self.stats.applied += 1;
        }
    }

    /// The control server answers a request (unless the subscriber restarted meanwhile);
    /// with `repair_fail`, a repair's connection drops part-way.
    fn reply(&mut self, i: usize, generation: u64, reply: Reply) {
        if self.subs[i].generation != generation {
            return; // the subscriber restarted meanwhile
        }
        let now = self.instant();
        let latest = self.latest();
        let fail = self.p.repair_fail > 0.0 && self.rng.gen_bool(self.p.repair_fail);
        let info = self.registration();
        let live = self.subs[i].live.as_mut().expect("live");
        live.outstanding -= 1;
        match reply {
            Reply::Registered => {
                self.stats.registrations += 1;
                live.engine.handle(now, Input::Registered(Box::new(info)));
            }
            Reply::Current => live.engine.handle(now, Input::Current(latest)),
            Reply::Packets { stream, ranges } => self.serve_packets(i, stream, &ranges, fail),
            Reply::CatchUp(ranges) => self.serve_versions(i, &ranges, fail),
            Reply::Compact { from, through } => self.serve_compacted(i, from, through, fail),
            Reply::Resync => self.serve_resync(i, fail),
        }
        self.drain(i);
    }

    /// Packets from the publisher's retransmit buffer, like `net/repair_server/journal.rs`.
    fn serve_packets(&mut self, i: usize, stream: u32, ranges: &[(u64, u64)], fail: bool) {
        let now = self.instant();
        let seqs: Vec<u64> = ranges.iter().flat_map(|&(a, b)| a..=b).collect();
        let n = if fail {
            self.rng.gen_range(0..=seqs.len())
        } else {
            seqs.len()
        };
        let s = &mut self.subs[i];
        let mut packets = Vec::new();
        for &seq in &seqs[..n] {
            let held = (self.retransmit.stream_id() == stream)
                .then(|| self.retransmit.get(seq))
                .flatten();
            let Some(dg) = held else {
                self.stats.packets_gone += 1;
                continue;
            };
            let (header, sealed) = PacketHeader::parse(&dg).expect("a sent datagram parses");
            let payload = s
                .keyring
                .open(&header, sealed)
                .expect("a sent datagram opens");
            assert_eq!((header.stream_id, header.seq), (stream, seq));
            self.stats.packets_repaired += 1;
            packets.push(OpenPacket { header, payload });
        }
        let live = s.live.as_mut().expect("live");
        for p in &packets {
            live.fed.insert((p.header.stream_id, p.header.seq));
        }
        let input = Input::PacketsRepaired { packets, ok: !fail };
        live.engine.handle(now, input);
    }

    /// Versions from the journal, like `net/repair_server/journal.rs` (refused when trimmed).
    fn serve_versions(&mut self, i: usize, ranges: &[(u64, u64)], fail: bool) {
        let now = self.instant();
        let latest = self.latest();
        if ranges[0].0 < self.oldest() {
            self.stats.trimmed += 1;
            let engine = &mut self.subs[i].live.as_mut().expect("live").engine;
            engine.handle(now, Input::RepairDone(RepairEnd::Trimmed));
            return;
        }
        let versions: Vec<u64> = ranges.iter().flat_map(|&(a, b)| a..=b).collect();
        let n = if fail {
            self.rng.gen_range(0..=versions.len())
        } else {
            versions.len()
        };
        let engine = &mut self.subs[i].live.as_mut().expect("live").engine;
        for &v in &versions[..n] {
            let bytes = &self.journal[(v - 1) as usize];
            let u = decode_update(bytes, &self.limits).expect("a journaled update decodes");
            self.stats.versions_repaired += 1;
            engine.handle(now, Input::Repaired(u));
        }
        let end = if fail {
            self.stats.repair_failures += 1;
            RepairEnd::Failed
        } else {
            // CATCHUP_END carries the publisher's current version.
            RepairEnd::Done {
                current_version: latest,
            }
        };
        engine.handle(now, Input::RepairDone(end));
    }

    /// Versions `from..=through` compacted into one update: the last operation on each
    /// key changed in them.
    fn serve_compacted(&mut self, i: usize, from: u64, through: u64, fail: bool) {
        let now = self.instant();
        let latest = self.latest();
        let end = if from < self.oldest() {
            self.stats.trimmed += 1;
            RepairEnd::Trimmed
        } else if fail {
            self.stats.repair_failures += 1;
            RepairEnd::Failed
        } else {
            let mut last: BTreeMap<Vec<u8>, Op> = BTreeMap::new();
            for (_, u) in &self.workload[(from - 1) as usize..through as usize] {
                for op in &u.ops {
                    last.insert(op.key.clone(), op.clone());
                }
            }
            let u = Update {
                version: through,
                timestamp_us: 0,
                ops: last.into_values().collect(),
                reset: false,
            };
            let s = &mut self.subs[i];
            s.compacted.insert(through, (from, update_to_vec(&u)));
            let engine = &mut s.live.as_mut().expect("live").engine;
            engine.handle(now, Input::Repaired(u));
            RepairEnd::Done {
                current_version: latest,
            }
        };
        let engine = &mut self.subs[i].live.as_mut().expect("live").engine;
        engine.handle(now, Input::RepairDone(end));
    }

    /// Hash resync: the replica becomes the master's state; the application gets the
    /// changes at the master's version.
    fn serve_resync(&mut self, i: usize, fail: bool) {
        let now = self.instant();
        let latest = self.latest();
        let s = &mut self.subs[i];
        let engine = &mut s.live.as_mut().expect("live").engine;
        if fail {
            self.stats.repair_failures += 1;
            engine.handle(now, Input::ResyncFailed);
            return;
        }
        if latest > s.replica.applied {
            s.skipped.extend(s.replica.applied + 1..latest);
            s.seen.push(latest);
        }
        s.replica.state = self.master.clone();
        s.replica.applied = latest;
        engine.handle(now, Input::Resynced { version: latest });
    }

    // -- driver ---------------------------------------------------------------------------

    fn handle(&mut self, event: Event) {
        match event {
            Event::Commit => self.commit(),
            Event::Arrive { sub, datagram, bad } => self.arrive(sub, &datagram, bad),
            Event::Reply {
                sub,
                generation,
                reply,
            } => self.reply(sub, generation, reply),
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
                s.live
                    .as_ref()
                    .is_some_and(|l| l.outstanding == 0 && !l.engine.is_repairing())
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
                if let Some(t) = l.engine.poll_timeout() {
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
                let due = self.subs[i]
                    .live
                    .as_ref()
                    .and_then(|l| l.engine.poll_timeout())
                    .is_some_and(|t| t <= now);
                if due {
                    self.drain(i);
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
                Self::collect(&mut self.stats, l);
            }
        }
        self.stats
    }

    fn check_end(&self) {
        let latest = self.latest();
        assert_eq!(latest, self.p.updates as u64);
        for (i, s) in self.subs.iter().enumerate() {
            assert_eq!(s.replica.applied, latest, "subscriber {i}");
            let expected: Vec<u64> = (1..=latest).filter(|v| !s.skipped.contains(v)).collect();
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
         {} tampered + {} forged ({} rejected malformed, {} auth, {} replay, {} retired), \
         {} chains complete, {} broken, {} orphaned, {} compressed, {} packet repairs \
         ({} packets, {} gone, {} skipped), {} repairs ({} failed, {} versions, {} compacted, \
         {} trimmed, {} resyncs), {} hellos ({} answered), {} reports, {} back-offs \
         ({} silent intervals), {} rejoins, {} packets not sent to left subscribers, {} status polls, {} evicted, {} \
         subscriber restarts, {} publisher restarts, {} applied",
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
        t.rejected_retired,
        t.chains_complete,
        t.chains_broken,
        t.chains_orphaned,
        t.compressed_chains,
        t.packet_repairs,
        t.packets_repaired,
        t.packets_gone,
        t.packets_skipped,
        t.repairs,
        t.repair_failures,
        t.versions_repaired,
        t.compacts,
        t.trimmed,
        t.resyncs,
        t.hellos,
        t.registrations,
        t.reports,
        t.backoffs,
        t.silent_intervals,
        t.rejoins,
        t.not_in_group,
        t.status_polls,
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
    assert!(t.repair_failures > 0 && t.versions_repaired > 0, "{t:?}");
    assert!(
        t.lossy_scenarios_repaired * 100 >= t.lossy_scenarios * 95,
        "lossy scenarios without repair: {t:?}"
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
    // The real engine's policies ran: re-registration, the error policy's back-off and
    // rejoin (with STATUS polls meanwhile), and every repair strategy.
    assert!(t.hellos > 0 && t.registrations > 0, "{t:?}");
    assert!(t.reports > 0 && t.backoffs > 0 && t.rejoins > 0, "{t:?}");
    assert!(t.not_in_group > 0 && t.status_polls > 0, "{t:?}");
    assert!(t.compacts > 0 && t.trimmed > 0 && t.resyncs > 0, "{t:?}");
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

/// A subscriber that receives nothing by multicast (a wrong interface, no route) hears
/// nothing at all, not even heartbeats, and obtains every new version by repair: its
/// error policy counts that as total loss, re-registers, backs off to unicast, and the
/// replica still converges (as do the others').
#[test]
fn a_subscriber_cut_off_from_multicast_backs_off_and_converges() {
    for seed in 0..20u64 {
        let mut sim = Sim::with(0xB10C_0000 + seed, |p| {
            p.updates = 300;
            p.subscribers = 2;
            p.loss = 0.0;
            p.idle_gap = 0.5;
            p.max_idle = 40 * MS;
            p.restarts_per_sub = 0;
            p.publisher_restart = false;
            p.silence_timeout = Duration::from_millis(300);
            p.report_interval = Duration::from_millis(100);
            p.error_threshold = 0.25;
            p.unicast_backoff = Duration::from_millis(500);
        });
        sim.subs[0].loss = LossGenerator::new(&LossConfig {
            probability: 1.0,
            burst_len: 1,
            seed,
        });
        let t = sim.run();
        assert!(
            t.silent_intervals > 0 && t.backoffs > 0 && t.hellos > 0,
            "seed {seed}: {t:?}"
        );
    }
}
