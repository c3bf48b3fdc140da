//! Seeded simulation of the publisher's egress when one stream fans out to many subscribers
//! that each lose 1 % of datagrams independently (issue 17, item 5; docs/PROTOCOL.md
//! section 15 discusses the results).
//!
//! The stream is the real one: 1 KiB puts encoded with `wire::update`, bundled, compressed
//! when that helps, cut into datagrams and paced by the sans-IO `proto::Sender` (the
//! publisher's default multicast settings) driven by a virtual clock, each datagram sealed
//! with `crypto::Keyring` to get its on-wire size (UDP payload: header, payload, GCM tag),
//! heartbeats included. Repair frame sizes come from `wire::control::Message`. No sockets,
//! threads, clocks or files.
//!
//! Loss and repair are then simulated per subscriber, for each mode:
//!
//! * **a. unicast repair** (today's mcsync): every subscriber fetches each datagram it lost
//!   from the publisher's retransmit buffer (PACKET_DATA frame per datagram plus one
//!   PACKET_END per request; one request per lost datagram, since 1 % independent losses
//!   are isolated).
//! * **b. NACK-aggregated multicast repair**: a datagram lost by ≥ k subscribers is
//!   re-multicast once per round (each re-multicast is again lost with p by each subscriber
//!   still missing it) until fewer than k miss it; those fetch it by unicast as in a.
//! * **c. proactive FEC**: each block of up to B data datagrams (a block closes early when
//!   the sender goes idle, i.e. at a heartbeat) is followed by r parity datagrams as long as
//!   the block's longest datagram. Recovery is modelled combinatorially as an MDS
//!   (Reed–Solomon) code: any b of the b + r datagrams rebuild the block; no coding is done.
//!   r comes from the loss the subscribers report (their loss over the first quarter of the
//!   stream). A subscriber short of d datagrams fetches d lost data datagrams by unicast and
//!   decodes the rest; or, in the "+ parity repair" variant, the publisher multicasts
//!   max(d) more parity datagrams per round, which serve every subscriber at once. Lost
//!   heartbeats are fetched by unicast.
//! * **d. relay tier**: R relays receive the multicast (loss p) and repair by unicast from
//!   the publisher; each re-multicasts on its site to its N / R subscribers and repairs
//!   them itself. The publisher pays the stream plus the relays' repair.
//! * **e. unicast fan-out**: one copy of every encoded update (4-byte framing) per
//!   subscriber, like the TCP baseline of docs/BENCHMARKS.md (c); TCP/IP headers and TCP's
//!   own retransmissions left out.
//!
//! Every mode tracks, per subscriber, which datagrams it holds, and the test fails unless
//! every subscriber (and relay) ends with every datagram.
//!
//! Run: `cargo test -p mcsync-core --test fanout_sim -- --nocapture`;
//! `MCSYNC_SIM_SEED=<n>` changes the seed.

use mcsync::crypto::{Key, Keyring};
use mcsync::proto::{Sender, SenderConfig};
use mcsync::wire::control::Message;
use mcsync::wire::packet::{PacketKind, HEADER_LEN, TAG_LEN};
use mcsync::wire::update::update_to_vec;
use mcsync::{MulticastConfig, Op, Update};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_SEED: u64 = 0x6d63_7379_6e63_0017;
/// Committed updates in the stream.
const UPDATES: u64 = 20_000;
const VALUE_BYTES: usize = 1024;
/// Independent loss of every subscriber (and relay, and relay-site subscriber) link.
const LOSS: f64 = 0.01;
const SUBSCRIBERS: [usize; 5] = [1, 8, 64, 100, 1000];
/// The larger NACK threshold of mode b.
const NACK_K: usize = 4;
/// Data datagrams per FEC block.
const FEC_BLOCK: usize = 32;
/// Target of the reliability rule: P(more than r of b + r lost) below this, at the 95th
/// percentile of the reported loss.
const FEC_TARGET: f64 = 1e-3;
const MAX_PARITY: usize = 16;
const RELAYS: [usize; 2] = [4, 10];

// Seed salts: which random stream a draw belongs to.
const SALT_FIRST: u64 = 1;
const SALT_ROUNDS: u64 = 2;
const SALT_FEC: u64 = 3;
const SALT_FEC_REPAIR: u64 = 4;
const SALT_RELAY: u64 = 5;
const SALT_LEAF: u64 = 6;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn sub_seed(seed: u64, salt: u64, n: usize, i: usize) -> u64 {
    splitmix(splitmix(splitmix(seed ^ salt.wrapping_mul(0x1000_0001)) ^ n as u64) ^ i as u64)
}

// ---------------------------------------------------------------------------------------
// The stream

/// The lossless multicast stream, as datagram sizes on the wire.
struct Stream {
    /// UDP payload size of each datagram, in sequence order.
    sizes: Vec<u64>,
    /// Whether each datagram is a heartbeat.
    heartbeat: Vec<bool>,
    /// Sum of `sizes`.
    bytes: u64,
    /// Encoded updates plus a 4-byte length each: what unicast fan-out sends per subscriber.
    unicast_bytes: u64,
    heartbeats: u64,
}

impl Stream {
    fn len(&self) -> usize {
        self.sizes.len()
    }
}

/// The publisher's sender settings (as `publisher/database.rs` derives them).
fn sender_config() -> SenderConfig {
    let m = MulticastConfig::default();
    SenderConfig {
        datagram_bytes: m.datagram_bytes,
        max_bundle_bytes: m.max_bundle_bytes,
        heartbeat_initial: m.heartbeat_initial,
        heartbeat_max: m.heartbeat_max,
        packets_per_sec: m.max_packets_per_sec,
        bytes_per_sec: m.max_bytes_per_sec,
        compress: true,
        max_backlog_bytes: m.max_backlog_bytes,
    }
}

/// Drives the real sender with a virtual clock: commits arrive 0–20 per millisecond
/// (10,000/s on average), with an idle gap of 5–300 ms after 1 in 200 milliseconds so
/// heartbeats go out as they would.
fn generate_stream(seed: u64) -> Stream {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now(); // the only clock read: virtual time is start + offsets
    let wall = |t: Instant| 1_700_000_000_000_000u64 + (t - start).as_micros() as u64;
    let config = sender_config();
    let max_datagram = config.datagram_bytes as u64;
    let mut sender = Sender::new(start, 7, 1, 0, config);
    let keyring = Keyring::with_key(1, &Key::from_bytes([0x17; 32]));
    let mut stream = Stream {
        sizes: Vec::new(),
        heartbeat: Vec::new(),
        bytes: 0,
        unicast_bytes: 0,
        heartbeats: 0,
    };
    let mut sealed = Vec::new();
    let mut record = |p: mcsync::proto::PlainPacket, s: &mut Stream| {
        let hb = p.header.kind == PacketKind::Heartbeat;
        let plain = p.payload.len();
        assert!(keyring.seal(p.header, &p.payload, &mut sealed));
        assert_eq!(sealed.len(), HEADER_LEN + plain + TAG_LEN);
        let size = sealed.len() as u64;
        assert!(size <= max_datagram);
        s.sizes.push(size);
        s.heartbeat.push(hb);
        s.bytes += size;
        s.heartbeats += u64::from(hb);
    };
    // Runs the sender from `now` to `until`, recording what it sends.
    let mut run = |sender: &mut Sender, now: &mut Instant, until: Instant, s: &mut Stream| {
        loop {
            while let Some(p) = sender.poll_transmit(*now, wall(*now)) {
                record(p, s);
            }
            let next = sender.next_timeout(*now);
            if next >= until {
                break;
            }
            *now = next.max(*now + Duration::from_micros(1));
        }
        *now = until;
    };
    let mut now = start;
    let mut version = 0u64;
    while version < UPDATES {
        let commits = rng.gen_range(0..=20u64).min(UPDATES - version);
        for _ in 0..commits {
            version += 1;
            let mut value = vec![0u8; VALUE_BYTES];
            rng.fill(&mut value[..]);
            let u = Update {
                version,
                timestamp_us: wall(now),
                ops: vec![Op::put(format!("key-{:05}", version % 10_000), value)],
                reset: false,
            };
            let encoded = update_to_vec(&u);
            stream.unicast_bytes += encoded.len() as u64 + 4;
            sender.push(version, Arc::new(encoded));
        }
        let mut step = Duration::from_millis(1);
        if rng.gen_ratio(1, 200) {
            step += Duration::from_millis(rng.gen_range(5..=300));
        }
        let until = now + step;
        run(&mut sender, &mut now, until, &mut stream);
    }
    // Drain, then idle long enough for the heartbeats that announce the last version.
    let until = now + Duration::from_millis(50);
    run(&mut sender, &mut now, until, &mut stream);
    assert!(!sender.is_busy());
    assert_eq!(sender.sent_version(), UPDATES);
    assert_eq!(sender.counters().updates, UPDATES);
    assert_eq!(sender.counters().skipped_backlog, 0);
    stream
}

// ---------------------------------------------------------------------------------------
// Repair frame sizes

/// Bytes the publisher sends to repair one datagram by unicast, beside the datagram:
/// the PACKET_DATA frame around it, plus one PACKET_END (one request per lost datagram).
/// Plaintext frame bytes, as `repair_bytes_sent` counts them (TLS records add ~22 B per
/// record, TCP/IP headers more; left out like the multicast side's UDP/IP headers).
fn unicast_overhead() -> u64 {
    let data = Message::PacketData(vec![0; 100]).to_vec().len() as u64 - 100;
    let end = Message::PacketEnd { missing: 0 }.to_vec().len() as u64;
    data + end
}

// ---------------------------------------------------------------------------------------
// Loss draws and holdings

/// Independent loss with probability p, drawn lazily: the gap to the next loss is
/// geometric, so a subscriber costs O(losses), not O(datagrams).
struct Loss {
    rng: ChaCha8Rng,
    p: f64,
}

impl Loss {
    fn new(seed: u64, salt: u64, n: usize, i: usize, p: f64) -> Loss {
        Loss {
            rng: ChaCha8Rng::seed_from_u64(sub_seed(seed, salt, n, i)),
            p,
        }
    }

    /// Datagrams received before the next loss.
    fn gap(&mut self) -> usize {
        if self.p <= 0.0 {
            return usize::MAX;
        }
        let u: f64 = self.rng.gen();
        let g = ((1.0 - u).ln() / (1.0 - self.p).ln()).floor();
        if g >= usize::MAX as f64 {
            usize::MAX
        } else {
            g as usize
        }
    }

    /// Positions lost among `len` datagrams, ascending.
    fn positions(&mut self, len: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = self.gap();
        while pos < len {
            out.push(pos);
            pos = pos.saturating_add(1).saturating_add(self.gap());
        }
        out
    }

    /// Whether one more datagram is lost.
    fn lost(&mut self) -> bool {
        self.rng.gen_bool(self.p)
    }

    /// How many of `m` datagrams are received.
    fn received_of(&mut self, m: usize) -> usize {
        (0..m).filter(|_| !self.lost()).count()
    }
}

/// Which datagrams each receiver holds: a bitset per receiver, all set (lossless) at the
/// start. Losing a datagram it does not hold, or recovering one it holds, is a bug.
struct Holdings {
    words: usize,
    len: usize,
    bits: Vec<u64>,
}

impl Holdings {
    fn new(receivers: usize, len: usize) -> Holdings {
        let words = len.div_ceil(64);
        let mut h = Holdings {
            words,
            len,
            bits: vec![!0u64; receivers * words],
        };
        for r in 0..receivers {
            h.bits[r * words + words - 1] = Self::last_mask(len);
        }
        h
    }

    fn last_mask(len: usize) -> u64 {
        match len % 64 {
            0 => !0,
            k => (1u64 << k) - 1,
        }
    }

    fn lose(&mut self, r: usize, i: usize) {
        let w = &mut self.bits[r * self.words + i / 64];
        assert!(*w & (1 << (i % 64)) != 0, "receiver {r} lost {i} twice");
        *w &= !(1 << (i % 64));
    }

    fn recover(&mut self, r: usize, i: usize) {
        let w = &mut self.bits[r * self.words + i / 64];
        assert!(
            *w & (1 << (i % 64)) == 0,
            "receiver {r} recovered {i} it held"
        );
        *w |= 1 << (i % 64);
    }

    fn holds(&self, r: usize, i: usize) -> bool {
        self.bits[r * self.words + i / 64] & (1 << (i % 64)) != 0
    }

    /// Panics unless every receiver holds every datagram.
    fn assert_complete(&self, mode: &str) {
        let last = Self::last_mask(self.len);
        for (r, ws) in self.bits.chunks(self.words).enumerate() {
            let (tail, full) = ws.split_last().unwrap();
            let complete = full.iter().all(|w| *w == !0) && *tail == last;
            assert!(complete, "{mode}: receiver {r} is missing datagrams");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Modes

/// Publisher egress of one mode, and what else is worth printing.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    egress: u64,
    /// Largest number of multicast repair rounds one datagram or block needed.
    rounds: usize,
    /// Parity datagrams per full block.
    parity: usize,
    /// Largest egress of one relay (site multicast plus its subscribers' repair).
    relay_egress: u64,
}

/// First-transmission losses of N subscribers (shared by modes a and b, and the reports
/// FEC sizes its parity from).
fn first_round(seed: u64, stream: &Stream, n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| Loss::new(seed, SALT_FIRST, n, i, LOSS).positions(stream.len()))
        .collect()
}

/// Loss each subscriber reports: its loss rate over the first quarter of the stream.
fn reported_loss(stream: &Stream, losses: &[Vec<usize>]) -> Vec<f64> {
    let window = stream.len() / 4;
    losses
        .iter()
        .map(|l| l.iter().take_while(|&&i| i < window).count() as f64 / window as f64)
        .collect()
}

/// a: each subscriber fetches each lost datagram by unicast.
fn unicast_repair(stream: &Stream, losses: &[Vec<usize>], overhead: u64) -> Outcome {
    let mut h = Holdings::new(losses.len(), stream.len());
    let mut egress = stream.bytes;
    for (s, lost) in losses.iter().enumerate() {
        for &i in lost {
            h.lose(s, i);
        }
        for &i in lost {
            egress += stream.sizes[i] + overhead;
            h.recover(s, i);
        }
    }
    h.assert_complete("unicast repair");
    Outcome {
        egress,
        ..Outcome::default()
    }
}

/// b: a datagram missed by ≥ k subscribers is re-multicast, round after round; once fewer
/// than k miss it, they fetch it by unicast.
fn multicast_repair(
    seed: u64,
    stream: &Stream,
    losses: &[Vec<usize>],
    k: usize,
    overhead: u64,
) -> Outcome {
    let n = losses.len();
    let mut h = Holdings::new(n, stream.len());
    let mut losers: Vec<Vec<usize>> = vec![Vec::new(); stream.len()];
    for (s, lost) in losses.iter().enumerate() {
        for &i in lost {
            h.lose(s, i);
            losers[i].push(s);
        }
    }
    let mut draws: Vec<Loss> = (0..n)
        .map(|s| Loss::new(seed, SALT_ROUNDS ^ ((k as u64) << 8), n, s, LOSS))
        .collect();
    let mut out = Outcome {
        egress: stream.bytes,
        ..Outcome::default()
    };
    for (i, missing) in losers.iter_mut().enumerate() {
        let mut rounds = 0;
        while !missing.is_empty() {
            if missing.len() >= k {
                out.egress += stream.sizes[i];
                rounds += 1;
                missing.retain(|&s| {
                    let lost = draws[s].lost();
                    if !lost {
                        h.recover(s, i);
                    }
                    lost
                });
            } else {
                for &s in missing.iter() {
                    out.egress += stream.sizes[i] + overhead;
                    h.recover(s, i);
                }
                missing.clear();
            }
        }
        out.rounds = out.rounds.max(rounds);
    }
    h.assert_complete("multicast repair");
    out
}

/// P(X = x) for X ~ Binomial(n, p), x = 0..=n.
fn binomial_pmf(n: usize, p: f64) -> Vec<f64> {
    let mut pmf = vec![0.0; n + 1];
    if p <= 0.0 {
        pmf[0] = 1.0;
        return pmf;
    }
    pmf[0] = (1.0 - p).powi(n as i32);
    for x in 0..n {
        pmf[x + 1] = pmf[x] * (n - x) as f64 / (x + 1) as f64 * p / (1.0 - p);
    }
    pmf
}

/// How the parity count is chosen from the reported loss rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParityRule {
    /// Smallest r with P(more than r of b + r lost) < FEC_TARGET at the 95th percentile of
    /// the reported loss.
    Target,
    /// r minimizing the expected egress per block: r parity datagrams plus, summed over the
    /// subscribers, the expected unicast fetches E[(lost − r)+] (each costing a datagram
    /// and the repair frames).
    MinCostUnicast,
    /// No parity up front (reactive: parity only as multicast repair). Minimizing
    /// r + E[maxᵢ (lostᵢ − r)+] (parity up front plus the first parity-repair round) always
    /// gives 0, since r + (x − r)+ ≥ x: up-front parity buys latency, not bytes.
    None,
}

/// Parity datagrams for a block of `b` data datagrams, from the subscribers' reported loss.
fn parity_for(rule: ParityRule, b: usize, reported: &[f64], unicast_cost: f64) -> usize {
    match rule {
        ParityRule::Target => {
            let mut sorted = reported.to_vec();
            sorted.sort_by(f64::total_cmp);
            let p95 = sorted[((sorted.len() - 1) as f64 * 0.95).round() as usize];
            (0..=MAX_PARITY)
                .find(|&r| binomial_pmf(b + r, p95)[r + 1..].iter().sum::<f64>() < FEC_TARGET)
                .unwrap_or(MAX_PARITY)
        }
        ParityRule::None => 0,
        ParityRule::MinCostUnicast => {
            let cost = |r: usize| -> f64 {
                let short: f64 = reported
                    .iter()
                    .map(|&p| {
                        binomial_pmf(b + r, p)
                            .iter()
                            .enumerate()
                            .skip(r + 1)
                            .map(|(x, q)| (x - r) as f64 * q)
                            .sum::<f64>()
                    })
                    .sum();
                r as f64 + short * unicast_cost
            };
            (0..=MAX_PARITY)
                .map(|r| (r, cost(r)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap()
                .0
        }
    }
}

/// Something multicast in the FEC stream.
#[derive(Debug, Clone, Copy)]
enum Tx {
    /// A datagram of the plain stream.
    Datagram(usize),
    /// A parity datagram of a block.
    Parity,
}

/// A block of consecutive data datagrams `first..end` and its parity.
struct Block {
    first: usize,
    end: usize,
    parity: usize,
    parity_size: u64,
}

/// c: FEC blocks of up to `FEC_BLOCK` data datagrams with parity from `rule`; residual
/// shortfalls fetched by unicast, or (`multicast_residual`) repaired by more multicast
/// parity, round after round.
fn fec(
    seed: u64,
    stream: &Stream,
    reported: &[f64],
    rule: ParityRule,
    multicast_residual: bool,
    overhead: u64,
) -> Outcome {
    let n = reported.len();
    let mean_size = stream.bytes as f64 / stream.len() as f64;
    let unicast_cost = (mean_size + overhead as f64) / mean_size;
    let parity_by_len: Vec<usize> = (0..=FEC_BLOCK)
        .map(|b| {
            if b == 0 {
                0
            } else {
                parity_for(rule, b, reported, unicast_cost)
            }
        })
        .collect();
    // Blocks: a heartbeat (the sender went idle) or B data datagrams close one.
    let mut blocks: Vec<Block> = Vec::new();
    let mut block_of = vec![usize::MAX; stream.len()];
    let mut tx: Vec<(Tx, usize)> = Vec::new(); // (what, block or datagram)
    let mut open: Option<usize> = None;
    let close = |blocks: &mut Vec<Block>, tx: &mut Vec<(Tx, usize)>, first: usize, end: usize| {
        let parity = parity_by_len[end - first];
        let parity_size = stream.sizes[first..end].iter().copied().max().unwrap();
        let b = blocks.len();
        tx.extend((0..parity).map(|_| (Tx::Parity, b)));
        blocks.push(Block {
            first,
            end,
            parity,
            parity_size,
        });
    };
    for (i, &heartbeat) in stream.heartbeat.iter().enumerate() {
        if heartbeat {
            if let Some(first) = open.take() {
                close(&mut blocks, &mut tx, first, i);
            }
            tx.push((Tx::Datagram(i), usize::MAX));
            continue;
        }
        let first = *open.get_or_insert(i);
        block_of[i] = blocks.len();
        tx.push((Tx::Datagram(i), blocks.len()));
        if i + 1 - first == FEC_BLOCK {
            close(&mut blocks, &mut tx, first, i + 1);
            open = None;
        }
    }
    if let Some(first) = open {
        close(&mut blocks, &mut tx, first, stream.len());
    }
    let parity_bytes: u64 = blocks.iter().map(|b| b.parity as u64 * b.parity_size).sum();
    let mut out = Outcome {
        egress: stream.bytes + parity_bytes,
        parity: parity_by_len[FEC_BLOCK],
        ..Outcome::default()
    };
    let mut h = Holdings::new(n, stream.len());
    // Per block: (subscriber, shortfall) of the subscribers that cannot decode it.
    let mut short: Vec<Vec<(usize, usize)>> = vec![Vec::new(); blocks.len()];
    let mut lost_in = vec![0usize; blocks.len()];
    for s in 0..n {
        let lost = Loss::new(seed, SALT_FEC, n, s, LOSS).positions(tx.len());
        let mut touched = Vec::new();
        for &t in &lost {
            match tx[t] {
                (Tx::Datagram(i), _) => {
                    h.lose(s, i);
                    if stream.heartbeat[i] {
                        // A lost heartbeat: fetched by unicast.
                        out.egress += stream.sizes[i] + overhead;
                        h.recover(s, i);
                        continue;
                    }
                    let b = block_of[i];
                    if lost_in[b] == 0 {
                        touched.push(b);
                    }
                    lost_in[b] += 1;
                }
                (Tx::Parity, b) => {
                    if lost_in[b] == 0 {
                        touched.push(b);
                    }
                    lost_in[b] += 1;
                }
            }
        }
        for b in touched {
            let block = &blocks[b];
            let shortfall = lost_in[b].saturating_sub(block.parity);
            lost_in[b] = 0;
            if shortfall == 0 {
                decode(&mut h, s, block);
            } else if multicast_residual {
                short[b].push((s, shortfall));
            } else {
                // Fetch `shortfall` of the lost data datagrams, then decode the rest.
                let fetch: Vec<usize> = (block.first..block.end)
                    .filter(|&i| !h.holds(s, i))
                    .take(shortfall)
                    .collect();
                assert_eq!(fetch.len(), shortfall);
                for i in fetch {
                    out.egress += stream.sizes[i] + overhead;
                    h.recover(s, i);
                }
                decode(&mut h, s, block);
            }
        }
    }
    if multicast_residual {
        let mut draws: Vec<Loss> = (0..n)
            .map(|s| Loss::new(seed, SALT_FEC_REPAIR, n, s, LOSS))
            .collect();
        for (b, waiting) in short.iter_mut().enumerate() {
            let block = &blocks[b];
            let mut rounds = 0;
            while let Some(m) = waiting.iter().map(|w| w.1).max() {
                // The largest shortfall, as fresh parity datagrams, once for everyone.
                out.egress += m as u64 * block.parity_size;
                rounds += 1;
                waiting.retain_mut(|(s, d)| {
                    *d = d.saturating_sub(draws[*s].received_of(m));
                    if *d == 0 {
                        decode(&mut h, *s, block);
                    }
                    *d > 0
                });
            }
            out.rounds = out.rounds.max(rounds);
        }
    }
    h.assert_complete(&format!("FEC {rule:?}"));
    out
}

/// A subscriber holding b of a block's b + r datagrams rebuilds its lost data datagrams.
fn decode(h: &mut Holdings, s: usize, block: &Block) {
    for i in block.first..block.end {
        if !h.holds(s, i) {
            h.recover(s, i);
        }
    }
}

/// d: R relays repaired by unicast from the publisher; N subscribers spread over them,
/// each receiving its relay's site multicast and repaired by its relay.
fn relay_tier(seed: u64, stream: &Stream, n: usize, relays: usize, overhead: u64) -> Outcome {
    let mut relay_h = Holdings::new(relays, stream.len());
    let mut out = Outcome {
        egress: stream.bytes,
        ..Outcome::default()
    };
    for r in 0..relays {
        let lost = Loss::new(seed, SALT_RELAY, relays, r, LOSS).positions(stream.len());
        for &i in &lost {
            relay_h.lose(r, i);
        }
        for &i in &lost {
            out.egress += stream.sizes[i] + overhead;
            relay_h.recover(r, i);
        }
    }
    relay_h.assert_complete("relays");
    let mut relay_egress = vec![stream.bytes; relays];
    let mut leaf_h = Holdings::new(n, stream.len());
    for s in 0..n {
        let relay = s % relays;
        let lost = Loss::new(seed, SALT_LEAF, n, s, LOSS).positions(stream.len());
        for &i in &lost {
            leaf_h.lose(s, i);
        }
        for &i in &lost {
            assert!(relay_h.holds(relay, i));
            relay_egress[relay] += stream.sizes[i] + overhead;
            leaf_h.recover(s, i);
        }
    }
    leaf_h.assert_complete("relay-site subscribers");
    out.relay_egress = relay_egress.into_iter().max().unwrap();
    out
}

// ---------------------------------------------------------------------------------------
// The test

/// Expected re-multicasts per datagram with k = 1: round j happens when some subscriber
/// lost the datagram j times in a row, so E[T] = Σ_{j ≥ 1} (1 − (1 − p^j)^N).
fn expected_multicast_rounds(n: usize, p: f64) -> f64 {
    (1..=64)
        .map(|j| 1.0 - (1.0 - p.powi(j)).powi(n as i32))
        .sum()
}

struct Row {
    n: usize,
    unicast: f64,
    nack1: Outcome,
    nack_k: Outcome,
    fec_cost: Outcome,
    fec_target: Outcome,
    parity_nack: Outcome,
    fec_hybrid: Outcome,
    relays: Vec<Option<Outcome>>,
    fanout: f64,
}

#[test]
fn fanout_egress() {
    let seed = std::env::var("MCSYNC_SIM_SEED")
        .ok()
        .map(|s| s.trim().parse::<u64>().expect("MCSYNC_SIM_SEED: a u64"))
        .unwrap_or(DEFAULT_SEED);
    let stream = generate_stream(seed);
    let overhead = unicast_overhead();
    let s = stream.bytes as f64;
    let ratio = |egress: u64| egress as f64 / s;
    let data = stream.len() as u64 - stream.heartbeats;
    println!(
        "fanout_sim: seed {seed} (MCSYNC_SIM_SEED), {UPDATES} updates of {VALUE_BYTES} B values, \
         loss {:.0} % per subscriber link",
        LOSS * 100.0
    );
    println!(
        "lossless stream: {} datagrams ({} data, {} heartbeats), {} B on the wire ({:.1} B per update, \
         {:.1} B per datagram); unicast repair costs the datagram + {overhead} B of frames",
        stream.len(),
        data,
        stream.heartbeats,
        stream.bytes,
        s / UPDATES as f64,
        s / stream.len() as f64,
    );

    let mut rows = Vec::new();
    for &n in &SUBSCRIBERS {
        let losses = first_round(seed, &stream, n);
        let reported = reported_loss(&stream, &losses);
        let unicast = ratio(unicast_repair(&stream, &losses, overhead).egress);
        let nack1 = multicast_repair(seed, &stream, &losses, 1, overhead);
        let nack_k = multicast_repair(seed, &stream, &losses, NACK_K, overhead);
        let fec_cost = fec(
            seed,
            &stream,
            &reported,
            ParityRule::MinCostUnicast,
            false,
            overhead,
        );
        let fec_target = fec(
            seed,
            &stream,
            &reported,
            ParityRule::Target,
            false,
            overhead,
        );
        let parity_nack = fec(seed, &stream, &reported, ParityRule::None, true, overhead);
        let fec_hybrid = fec(
            seed,
            &stream,
            &reported,
            ParityRule::MinCostUnicast,
            true,
            overhead,
        );
        let relays = RELAYS
            .iter()
            .map(|&r| (n > r).then(|| relay_tier(seed, &stream, n, r, overhead)))
            .collect();
        rows.push(Row {
            n,
            unicast,
            nack1,
            nack_k,
            fec_cost,
            fec_target,
            parity_nack,
            fec_hybrid,
            relays,
            fanout: n as f64 * stream.unicast_bytes as f64 / s,
        });
    }

    println!();
    println!("publisher egress (multicast + repair) / lossless stream, p = {LOSS}:");
    println!(
        "| N | a. unicast repair | b. NACK re-multicast k=1 (rounds) | b. k={NACK_K} | b'. NACK parity repair (rounds) | \
         c. FEC B={FEC_BLOCK} min-cost (r) | c. FEC target {FEC_TARGET:e} at p95 (r) | c. min-cost FEC + parity repair (r, rounds) | \
         d. relays R=4 | d. R=10 | e. unicast fan-out |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let fmt_relay = |o: &Option<Outcome>| match o {
        Some(o) => format!("{:.3}×", ratio(o.egress)),
        None => "–".to_string(),
    };
    for r in &rows {
        println!(
            "| {} | {:.3}× | {:.3}× ({}) | {:.3}× | {:.3}× ({}) | {:.3}× ({}) | {:.3}× ({}) | {:.3}× ({}, {}) | {} | {} | {:.1}× |",
            r.n,
            r.unicast,
            ratio(r.nack1.egress),
            r.nack1.rounds,
            ratio(r.nack_k.egress),
            ratio(r.parity_nack.egress),
            r.parity_nack.rounds,
            ratio(r.fec_cost.egress),
            r.fec_cost.parity,
            ratio(r.fec_target.egress),
            r.fec_target.parity,
            ratio(r.fec_hybrid.egress),
            r.fec_hybrid.parity,
            r.fec_hybrid.rounds,
            fmt_relay(&r.relays[0]),
            fmt_relay(&r.relays[1]),
            r.fanout,
        );
    }
    println!();
    println!(
        "relay tier: busiest relay's egress (site multicast + its subscribers' repair) / stream:"
    );
    for r in &rows {
        let per: Vec<String> = RELAYS
            .iter()
            .zip(&r.relays)
            .filter_map(|(k, o)| o.map(|o| format!("R={k}: {:.3}×", ratio(o.relay_egress))))
            .collect();
        if !per.is_empty() {
            println!("  N={}: {}", r.n, per.join(", "));
        }
    }

    // ---- Properties ----
    let p = LOSS;
    let per_datagram = 1.0 + overhead as f64 * stream.len() as f64 / s; // repair cost / bytes
    let row = |n: usize| rows.iter().find(|r| r.n == n).unwrap();
    // a: every loss costs the datagram again (plus frames): E[ratio] = 1 + N·p·per_datagram.
    for w in rows.windows(2) {
        assert!(
            w[1].unicast > w[0].unicast,
            "unicast repair must grow with N"
        );
    }
    for r in rows.iter().filter(|r| r.n >= 64) {
        let expected = 1.0 + r.n as f64 * p * per_datagram;
        assert!(
            (r.unicast - expected).abs() <= 0.1 * (expected - 1.0),
            "N={}: unicast repair {:.3}× far from 1 + N·p·{per_datagram:.4} = {expected:.3}×",
            r.n,
            r.unicast
        );
    }
    let a100 = row(100).unicast;
    assert!(
        a100 >= 1.0 + 0.5 * 100.0 * p,
        "unicast repair at N=100: {a100:.3}×"
    );
    let a64 = row(64).unicast;
    assert!(
        (1.55..=1.75).contains(&a64),
        "N=64 should be near the demo's 1.64×: {a64:.3}×"
    );
    // b, k = 1: each datagram is re-multicast E[T] times on average (all sizes alike).
    for r in &rows {
        let et = expected_multicast_rounds(r.n, p);
        let b = ratio(r.nack1.egress) - 1.0;
        assert!(
            b <= 1.05 * et + 0.005 && b >= 0.95 * et - 0.005,
            "N={}: NACK multicast repair {:.3}× vs 1 + E[T] = {:.3}×",
            r.n,
            b + 1.0,
            1.0 + et
        );
        if r.n >= 8 {
            // (At N = 1 both cost p·(datagram) per datagram: equal in expectation.)
            assert!(
                b + 1.0 < r.unicast,
                "N={}: multicast repair above unicast",
                r.n
            );
            assert!(ratio(r.nack_k.egress) <= r.unicast, "N={}: k={NACK_K}", r.n);
        }
    }
    // b': one parity datagram repairs different losses at different subscribers, so a
    // round costs the largest shortfall, not every datagram anyone lost.
    for r in rows.iter().filter(|r| r.n >= 8) {
        assert!(
            r.parity_nack.egress < r.nack1.egress,
            "N={}: parity repair",
            r.n
        );
    }
    assert!(ratio(row(100).parity_nack.egress) <= 1.10);
    assert!(ratio(row(1000).parity_nack.egress) <= 1.15);
    // c: FEC sized by expected cost meets the goal at N = 100.
    let c100 = ratio(row(100).fec_cost.egress);
    assert!(c100 <= 1.10, "FEC at N=100: {c100:.3}× (goal ≤ 1.1×)");
    // d: relays cost the publisher R·p, not N·p.
    let a1000 = row(1000).unicast;
    let d1000 = ratio(row(1000).relays[1].unwrap().egress);
    assert!(
        d1000 <= 1.0 + 1.5 * 10.0 * p * per_datagram,
        "relays R=10: {d1000:.3}×"
    );
    assert!(
        d1000 * 5.0 <= a1000,
        "relays R=10 {d1000:.3}× vs unicast {a1000:.3}×"
    );
    // e: N copies.
    for r in &rows {
        assert!(r.fanout >= 0.95 * r.n as f64);
    }
}
