//! `mcsync bench`: measures mcsync on loopback multicast in one process, beside baselines
//! measured in the same run, and writes a table, `bench.json` and PNG plots.
//!
//! Sections: (a) throughput beside the raw multicast limit, (b) publish→applied latency at
//! a fixed offered rate and the time to recover a lost last update, (c) publisher egress
//! bytes per update beside unicast TCP fan-out, (d) repair cost under injected loss.

mod baseline;
mod plot;
mod redis;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mcsync::net::wall_clock_us;
use mcsync::wire::update::update_to_vec;
use mcsync::{
    Authentication, Database, Durability, LossConfig, MulticastConfig, Op, Publisher,
    PublisherConfig, PublisherStats, ServerTrust, Subscriber, SubscriberConfig, Subscription,
    SubscriptionStats, Update,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Value sizes of the throughput section.
const SIZES: [usize; 3] = [100, 1024, 16 * 1024];
/// Subscriber counts of the throughput section.
const THROUGHPUT_SUBS: [usize; 3] = [1, 4, 8];
/// Publisher thread counts of the group-commit sweep (8 subscribers, 1 KiB values).
const SWEEP_THREADS: [usize; 4] = [16, 64, 256, 1024];
/// Subscriber counts of the fan-out section.
const FANOUT_SUBS: [usize; 4] = [1, 4, 8, 16];
/// Injected loss rates of the repair section (0 is the lossless reference).
const LOSSES: [f64; 5] = [0.0, 0.001, 0.01, 0.05, 0.20];
/// Redis 7 replicating 1 KiB SETs to 8 replicas on this machine (issue #6 reference).
const REDIS_REFERENCE_UPDATES_PER_S: f64 = 37_000.0;
/// Longest wait for replicas to converge before the bench fails.
const CONVERGE: Duration = Duration::from_secs(180);

/// Options of `mcsync bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Tiny counts for a CI smoke run (finishes in well under a minute); the figures are
    /// too noisy to quote.
    #[arg(long)]
    quick: bool,
    /// Directory for bench.json and the PNG plots (created if missing).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Sections to run, comma-separated: throughput, latency, fanout, repair (default all).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,fanout,repair"
    )]
    sections: Vec<Section>,
    /// Threads publishing concurrently; their durable commits share journal fsyncs (group
    /// commit), so throughput grows with this until the multicaster or the subscribers limit.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Datagram size the publisher sends (header + sealed payload); the default is the
    /// library's, which fits a 1,500-byte MTU. Loopback allows up to 65,000.
    #[arg(long, default_value_t = MulticastConfig::default().datagram_bytes)]
    datagram_bytes: usize,
    /// Publisher pacing limit in packets per second (0 = unlimited); default: the library's.
    #[arg(long)]
    max_packets_per_sec: Option<u64>,
    /// Threads publishing in the latency section: enough that the offered rate is held
    /// while each durable commit waits for its fsync.
    #[arg(long, default_value_t = 512)]
    latency_publishers: usize,
    /// Offered rate of the latency section, updates per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Subscribers of the latency and repair sections.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Multiply the update counts of every section (e.g. 0.5 for a faster, noisier run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// First multicast group; scenario i uses the group + i and port + i (about 100
    /// scenarios in a full run). Must be in 239.0.0.0/8 (default: a random 239.254.x.1, so
    /// concurrent runs do not meet).
    #[arg(long)]
    group: Option<Ipv4Addr>,
    /// First UDP port (default: random in 30000..=59000).
    #[arg(long)]
    port: Option<u16>,
    /// Directory the publisher and subscriber stores are created in (temporary
    /// subdirectories, removed afterwards). Durable commits cost what this disk's fsync costs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also measure Redis replication side by side: runs `redis-server` from PATH as one
    /// master and 8 replicas on 127.0.0.1 and SETs 1 KiB values from as many connections as
    /// --publishers, each waiting for its reply; once without persistence and once with
    /// `appendfsync always` (durable, like mcsync's journal).
    #[arg(long)]
    redis: bool,
    /// Seed of the values and of the loss generators.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// When the publisher's commits return: `sync` (journaled durably, the library's
    /// default) or `async` (version assigned; a journal writer group-commits behind).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
}

/// `--durability` values.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum DurabilityArg {
    /// `Durability::Sync`.
    Sync,
    /// `Durability::Async`.
    Async,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Async => Durability::Async,
        }
    }
}

/// A section of the bench.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Section {
    /// (a) throughput beside the raw multicast limit.
    Throughput,
    /// (b) latency at a fixed rate and tail-loss recovery.
    Latency,
    /// (c) egress bytes per update beside unicast TCP fan-out.
    Fanout,
    /// (d) repair cost under injected loss.
    Repair,
}

/// Counts of one run (full or quick).
struct Counts {
    /// Runs of each throughput and repair scenario (the median run is reported).
    repeats: usize,
    throughput: [usize; 3],
    latency_secs: f64,
    tail_lost: usize,
    tail_trials: usize,
    fanout: usize,
    repair: usize,
}

impl Counts {
    fn new(quick: bool, scale: f64) -> Counts {
        let s = |n: usize| ((n as f64 * scale).round() as usize).max(20);
        if quick {
            Counts {
                repeats: 1,
                throughput: [s(600), s(600), s(100)],
                latency_secs: 0.3 * scale,
                tail_lost: 5,
                tail_trials: 200,
                fanout: s(300),
                repair: s(2_000),
            }
        } else {
            Counts {
                repeats: 3,
                throughput: [s(12_000), s(10_000), s(1_500)],
                latency_secs: 10.0 * scale,
                tail_lost: 50,
                tail_trials: 1000,
                fanout: s(10_000),
                repair: s(6_000),
            }
        }
    }
}

/// Everything written to bench.json.
#[derive(Serialize, Default)]
pub struct Report {
    tool: String,
    version: String,
    command: String,
    quick: bool,
    machine: Machine,
    settings: Settings,
    duration_s: f64,
    section_seconds: std::collections::BTreeMap<String, f64>,
    throughput: Vec<ThroughputRow>,
    publisher_threads: Vec<ThreadsRow>,
    latency: Option<Latency>,
    fanout: Vec<FanoutRow>,
    repair: Vec<RepairRow>,
    redis: Vec<redis::RedisResult>,
    targets: Vec<Target>,
}

#[derive(Serialize, Default)]
struct Machine {
    nproc: usize,
    cpu_model: String,
    load_average_start: String,
    load_average_end: String,
}

#[derive(Serialize, Default)]
struct Settings {
    publisher_threads: usize,
    latency_publisher_threads: usize,
    repeats: usize,
    datagram_bytes: usize,
    max_packets_per_sec: u64,
    max_bundle_bytes: usize,
    heartbeat_initial_us: u64,
    encryption: String,
    journal: String,
    value_content: String,
    data_dir: String,
}

#[derive(Serialize)]
struct ThroughputRow {
    subscribers: usize,
    value_bytes: usize,
    /// Updates per run.
    updates: usize,
    /// Seconds of the median run.
    seconds: f64,
    /// Updates per second from the first publish until every subscriber applied the last
    /// (median run).
    updates_per_s: f64,
    /// Every run's figure.
    updates_per_s_runs: Vec<f64>,
    /// Value bytes per second (10^6 bytes).
    mb_per_s: f64,
    /// Raw multicast, one datagram per update carrying the value bytes.
    raw_updates_per_s: f64,
    raw_mb_per_s: f64,
    raw_loss: f64,
    raw_updates_per_s_runs: Vec<f64>,
    fraction_of_raw: f64,
    /// Raw multicast with the value cut into datagrams of the publisher's datagram size
    /// (differs from the above only for values larger than a datagram).
    raw_same_datagram_updates_per_s: f64,
    raw_same_datagram_loss: f64,
    fraction_of_raw_same_datagram: f64,
    raw_datagrams_per_update: usize,
    journal_commits: u64,
    updates_per_journal_commit: f64,
    /// Updates applied per subscriber LMDB commit (each is durable too).
    updates_per_apply_commit: f64,
    packets_sent: u64,
    chains_sent: u64,
    chains_compressed: u64,
    chains_dropped: u64,
    channel_full: u64,
    repair_bytes: u64,
}

/// Throughput against the number of publishing threads (they share journal fsyncs).
#[derive(Serialize)]
struct ThreadsRow {
    publisher_threads: usize,
    subscribers: usize,
    value_bytes: usize,
    updates: usize,
    updates_per_s: f64,
    updates_per_journal_commit: f64,
    journal_commits_per_s: f64,
}

#[derive(Serialize, Default)]
struct Latency {
    subscribers: usize,
    value_bytes: usize,
    offered_per_s: u64,
    achieved_per_s: f64,
    updates: usize,
    samples: usize,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    commit_p50_us: u64,
    commit_p99_us: u64,
    updates_per_journal_commit: f64,
    /// The distribution: (latency µs, fraction of samples at or below it), 200 points.
    cdf: Vec<(u64, f64)>,
    tail_loss: TailLoss,
}

#[derive(Serialize, Default)]
struct TailLoss {
    loss_probability: f64,
    heartbeat_initial_us: u64,
    trials: usize,
    lost_samples: usize,
    lost_p50_us: u64,
    lost_p90_us: u64,
    lost_max_us: u64,
    lossless_samples: usize,
    lossless_p50_us: u64,
    /// Updates delivered intact that waited while an earlier lost heartbeat was fetched by
    /// packet repair (the reorder stage holds packets behind a sequence gap).
    heartbeat_repaired_samples: usize,
    heartbeat_repaired_p50_us: u64,
    /// Error-policy events during the check (both should be 0).
    quiesces: u64,
    unicast_backoffs: u64,
    /// Lost-tail p50 minus lossless p50: detection plus the repair round trip.
    excess_p50_us: u64,
    target_us: u64,
}

#[derive(Serialize)]
struct FanoutRow {
    subscribers: usize,
    value_bytes: usize,
    updates: usize,
    encoded_bytes_per_update: f64,
    /// Multicast plus repair bytes the publisher sent, per update.
    bytes_per_update: f64,
    multicast_bytes: u64,
    repair_bytes: u64,
    ratio_to_one_subscriber: f64,
    updates_per_s: f64,
    tcp_bytes_per_update: f64,
    tcp_updates_per_s: f64,
}

#[derive(Serialize)]
struct RepairRow {
    loss: f64,
    subscribers: usize,
    value_bytes: usize,
    /// Updates per run.
    updates: usize,
    /// Median run.
    updates_per_s: f64,
    updates_per_s_runs: Vec<f64>,
    throughput_kept: f64,
    /// Lost and repaired figures are summed over every run.
    lost_packets: u64,
    lost_bytes: u64,
    repair_bytes: u64,
    /// Repair bytes / lost bytes (null when nothing was lost).
    repair_fraction: Option<f64>,
    packets_repaired: u64,
    repair_updates: u64,
    chains_dropped: u64,
    /// Updates applied per subscriber LMDB commit (median run).
    updates_per_apply_commit: f64,
    /// Error policy over every run: publisher quiesces, subscriber re-registrations and
    /// unicast fallbacks; the publisher's adapted bundle size and packet rate at the end of
    /// the median run.
    quiesces: u64,
    resubscriptions: u64,
    unicast_backoffs: u64,
    bundle_bytes_at_end: u64,
    packets_per_sec_at_end: u64,
}

#[derive(Serialize)]
struct Target {
    name: String,
    target: String,
    measured: String,
    met: bool,
}

/// Shared state of a run: where stores go, which group and port come next, the bar.
struct Ctx {
    data_root: PathBuf,
    group: Ipv4Addr,
    port: u16,
    next: u16,
    datagram_bytes: usize,
    max_pps: Option<u64>,
    publishers: usize,
    seed: u64,
    durability: Durability,
    bar: ProgressBar,
}

impl Ctx {
    /// A group and port no other scenario of this run uses.
    fn endpoint(&mut self) -> SocketAddr {
        let i = self.next;
        self.next = self.next.wrapping_add(1) % 500;
        let g = Ipv4Addr::from(u32::from(self.group) + u32::from(i));
        SocketAddr::from((g, self.port + i))
    }
}

/// (version, publish→applied µs) recorded by one subscriber's callback.
type Samples = Arc<Mutex<Vec<(u64, u64)>>>;

/// A publisher and its subscribers on one group, with latency recording.
struct Cluster {
    publisher: Publisher,
    db: Database,
    subs: Vec<Subscription>,
    subscribers: Vec<Subscriber>,
    samples: Vec<Samples>,
    record: Arc<AtomicBool>,
    heartbeat_initial: Duration,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A publisher and `n` subscribers, the first `lossy` of them with injected `loss`.
    fn open(ctx: &mut Ctx, n: usize, loss: Option<f64>, lossy: usize) -> BenchResult<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("mcsync-bench-")
            .tempdir_in(&ctx.data_root)?;
        let ep = ctx.endpoint();
        let SocketAddr::V4(ep) = ep else {
            unreachable!()
        };
        let mut pc = PublisherConfig::new(dir.path().join("publisher"));
        pc.authentication = Authentication::Open;
        pc.multicast.group = *ep.ip();
        pc.multicast.group_count = 1;
        pc.multicast.port = ep.port();
        pc.multicast.port_count = 1;
        pc.multicast.datagram_bytes = ctx.datagram_bytes;
        pc.durability = ctx.durability;
        if let Some(r) = ctx.max_pps {
            pc.multicast.max_packets_per_sec = r;
        }
        let heartbeat_initial = pc.multicast.heartbeat_initial;
        let publisher = Publisher::open(pc)?;
        let db = publisher.database("bench")?;
        let fp = publisher
            .fingerprint()
            .ok_or("publisher has no TLS certificate")?
            .to_owned();
        let record = Arc::new(AtomicBool::new(false));
        let (mut subs, mut subscribers, mut samples) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let mut sc = SubscriberConfig::new(
                dir.path().join(format!("subscriber-{i}")),
                publisher.control_addr(),
                ServerTrust::Fingerprint(fp.clone()),
            );
            sc.user = "bench".into();
            sc.client_name = format!("bench-{i}");
            sc.loss = loss.filter(|p| *p > 0.0 && i < lossy).map(|p| LossConfig {
                probability: p,
                burst_len: 1,
                seed: ctx.seed.wrapping_mul(1000).wrapping_add(i as u64 + 1),
            });
            let s = Subscriber::open(sc)?;
            let lat = Arc::new(Mutex::new(Vec::new()));
            let (l2, r2) = (lat.clone(), record.clone());
            let sub = s.subscribe("bench", move |u: &Update| {
                if r2.load(Ordering::Relaxed) {
                    let now = wall_clock_us();
                    l2.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((u.version, now.saturating_sub(u.timestamp_us)));
                }
            })?;
            subs.push(sub);
            subscribers.push(s);
            samples.push(lat);
        }
        let c = Cluster {
            publisher,
            db,
            subs,
            subscribers,
            samples,
            record,
            heartbeat_initial,
            _dir: dir,
        };
        // Every subscriber registered and receiving before anything is timed.
        let v = c.db.put("warm-up", b"warm-up")?;
        c.wait_all(v)?;
        Ok(c)
    }

    fn wait_all(&self, v: u64) -> BenchResult<()> {
        for s in &self.subs {
            s.wait_for_version(v, CONVERGE)?;
        }
        Ok(())
    }

    fn sub_stats(&self) -> Vec<SubscriptionStats> {
        self.subs.iter().map(|s| s.stats()).collect()
    }

    fn close(self) -> BenchResult<()> {
        for s in &self.subs {
            s.close()?;
        }
        for s in &self.subscribers {
            s.close()?;
        }
        self.publisher.close()?;
        Ok(())
    }
}

/// Random (incompressible) values, all different.
fn values(n: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v = vec![0u8; size];
            rng.fill(&mut v[..]);
            v
        })
        .collect()
}

fn key(tag: &str, i: usize) -> String {
    format!("{tag}-{i:09}")
}

/// Publishes `values` as one put per update from `threads` threads; returns the highest
/// version.
fn publish(db: &Database, tag: &str, values: &[Vec<u8>], threads: usize) -> BenchResult<u64> {
    let next = AtomicUsize::new(0);
    let last = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let next = &next;
                s.spawn(move || -> mcsync::Result<u64> {
                    let mut last = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= values.len() {
                            return Ok(last);
                        }
                        last = last.max(db.put(key(tag, i), &values[i])?);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .try_fold(0, |m, r| r.map(|v| m.max(v)))
    })?;
    Ok(last)
}

/// Counters before and after a timed load.
struct Load {
    updates: usize,
    secs: f64,
    p0: PublisherStats,
    p1: PublisherStats,
    s0: Vec<SubscriptionStats>,
    s1: Vec<SubscriptionStats>,
}

impl Load {
    fn updates_per_s(&self) -> f64 {
        self.updates as f64 / self.secs.max(1e-9)
    }
    fn sub_sum(&self, f: impl Fn(&SubscriptionStats) -> u64) -> u64 {
        self.s1
            .iter()
            .zip(&self.s0)
            .map(|(a, b)| f(a).saturating_sub(f(b)))
            .sum()
    }
}

macro_rules! pd {
    ($l:expr, $f:ident) => {
        $l.p1.$f.saturating_sub($l.p0.$f)
    };
}

/// Opens a cluster, publishes `count` values of `size` bytes, waits until every
/// subscriber applied them, closes it.
fn run_load(
    ctx: &mut Ctx,
    subs: usize,
    size: usize,
    count: usize,
    loss: Option<f64>,
    tag: &str,
) -> BenchResult<(Load, Vec<Vec<u8>>)> {
    let vals = values(count, size, ctx.seed ^ (size as u64) << 20 ^ subs as u64);
    let c = Cluster::open(ctx, subs, loss, subs)?;
    let (p0, s0) = (c.publisher.stats(), c.sub_stats());
    let t0 = Instant::now();
    let last = publish(&c.db, tag, &vals, ctx.publishers)?;
    c.wait_all(last)?;
    let secs = t0.elapsed().as_secs_f64();
    let (p1, s1) = (c.publisher.stats(), c.sub_stats());
    c.close()?;
    Ok((
        Load {
            updates: count,
            secs,
            p0,
            p1,
            s0,
            s1,
        },
        vals,
    ))
}

/// Runs `f` `n` times; returns the runs sorted by `key` and the median's index.
fn repeat<T>(
    n: usize,
    mut f: impl FnMut() -> BenchResult<T>,
    key: impl Fn(&T) -> f64,
) -> BenchResult<(Vec<T>, usize)> {
    let mut runs = (0..n.max(1))
        .map(|_| f())
        .collect::<BenchResult<Vec<_>>>()?;
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = runs.len() / 2;
    Ok((runs, mid))
}

fn throughput(ctx: &mut Ctx, counts: &Counts, ttl: u32) -> BenchResult<Vec<ThroughputRow>> {
    let mut rows = Vec::new();
    let reps = counts.repeats;
    for (si, &size) in SIZES.iter().enumerate() {
        let count = counts.throughput[si];
        for &n in &THROUGHPUT_SUBS {
            ctx.bar.set_message(format!(
                "(a) throughput: {n} subscriber(s), {size} B values, {reps} × {count} updates"
            ));
            let (runs, mid) = repeat(
                reps,
                || Ok(run_load(ctx, n, size, count, None, "t")?.0),
                Load::updates_per_s,
            )?;
            ctx.bar.inc(1);
            ctx.bar
                .set_message(format!("(a) raw multicast: {n} receiver(s), {size} B"));
            let (raws, rmid) = repeat(
                reps,
                || baseline::raw_multicast(ctx.endpoint(), n, size, size, count, ttl),
                |r| r.updates_per_s,
            )?;
            let raw = raws[rmid];
            let split = if size > ctx.datagram_bytes {
                let (s, m) = repeat(
                    reps,
                    || {
                        baseline::raw_multicast(
                            ctx.endpoint(),
                            n,
                            size,
                            ctx.datagram_bytes,
                            count,
                            ttl,
                        )
                    },
                    |r| r.updates_per_s,
                )?;
                s[m]
            } else {
                raw
            };
            ctx.bar.inc(1);
            let l = &runs[mid];
            let ups = l.updates_per_s();
            let commits = pd!(l, journal_commits);
            rows.push(ThroughputRow {
                subscribers: n,
                value_bytes: size,
                updates: count,
                seconds: l.secs,
                updates_per_s: ups,
                updates_per_s_runs: runs.iter().map(Load::updates_per_s).collect(),
                mb_per_s: ups * size as f64 / 1e6,
                raw_updates_per_s: raw.updates_per_s,
                raw_mb_per_s: raw.updates_per_s * size as f64 / 1e6,
                raw_loss: raw.loss,
                raw_updates_per_s_runs: raws.iter().map(|r| r.updates_per_s).collect(),
                fraction_of_raw: ups / raw.updates_per_s,
                raw_same_datagram_updates_per_s: split.updates_per_s,
                raw_same_datagram_loss: split.loss,
                fraction_of_raw_same_datagram: ups / split.updates_per_s,
                raw_datagrams_per_update: split.datagrams_per_update,
                journal_commits: commits,
                updates_per_journal_commit: pd!(l, updates_committed) as f64
                    / commits.max(1) as f64,
                updates_per_apply_commit: l.sub_sum(|s| s.updates_applied) as f64
                    / l.sub_sum(|s| s.apply_commits).max(1) as f64,
                packets_sent: pd!(l, packets_sent),
                chains_sent: pd!(l, chains_sent),
                chains_compressed: pd!(l, chains_compressed),
                chains_dropped: l.sub_sum(|s| s.chains_dropped),
                channel_full: l.sub_sum(|s| s.channel_full),
                repair_bytes: l.sub_sum(|s| s.repair_bytes + s.packet_repair_bytes),
            });
        }
    }
    Ok(rows)
}

/// Throughput at 8 subscribers, 1 KiB, against the number of publisher threads.
fn thread_sweep(ctx: &mut Ctx, counts: &Counts) -> BenchResult<Vec<ThreadsRow>> {
    let mut rows = Vec::new();
    let count = counts.throughput[1];
    let saved = ctx.publishers;
    for &t in &SWEEP_THREADS {
        ctx.bar.set_message(format!(
            "(a) group commit: {t} publisher threads, 8 subscribers, {count} updates of 1 KiB"
        ));
        ctx.publishers = t;
        let r = run_load(ctx, 8, 1024, count, None, "s");
        ctx.publishers = saved;
        let (l, _) = r?;
        ctx.bar.inc(1);
        let commits = pd!(l, journal_commits);
        rows.push(ThreadsRow {
            publisher_threads: t,
            subscribers: 8,
            value_bytes: 1024,
            updates: count,
            updates_per_s: l.updates_per_s(),
            updates_per_journal_commit: pd!(l, updates_committed) as f64 / commits.max(1) as f64,
            journal_commits_per_s: commits as f64 / l.secs.max(1e-9),
        });
    }
    Ok(rows)
}

/// The `q` quantile of sorted samples.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// (b): latency at a fixed offered rate; returns the summary and every sample (µs).
fn latency(ctx: &mut Ctx, counts: &Counts, a: &BenchArgs) -> BenchResult<(Latency, Vec<u64>)> {
    let rate = a.rate.max(1);
    let total = ((rate as f64 * counts.latency_secs).round() as usize).max(100);
    let n = a.subscribers.max(1);
    ctx.bar.set_message(format!(
        "(b) latency: {total} updates of 1 KiB at {rate}/s to {n} subscribers"
    ));
    let vals = values(total, 1024, ctx.seed ^ 0x1a7);
    let c = Cluster::open(ctx, n, None, 0)?;
    let p0 = c.publisher.stats();
    c.record.store(true, Ordering::SeqCst);
    let start = Instant::now() + Duration::from_millis(20);
    let period_ns = 1e9 / rate as f64;
    let next = AtomicUsize::new(0);
    let commit_lat = Mutex::new(Vec::with_capacity(total));
    let threads = a.latency_publishers.max(1);
    let db = &c.db;
    let (last, end) = std::thread::scope(|s| -> BenchResult<(u64, Instant)> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (next, vals, commit_lat) = (&next, &vals, &commit_lat);
                s.spawn(move || -> mcsync::Result<(u64, Instant)> {
                    let (mut last, mut end) = (0, start);
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= vals.len() {
                            break;
                        }
                        let at = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        let t = Instant::now();
                        last = last.max(db.put(key("l", i), &vals[i])?);
                        end = Instant::now();
                        mine.push((end - t).as_micros() as u64);
                    }
                    commit_lat
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(mine);
                    Ok((last, end))
                })
            })
            .collect();
        let mut out = (0, start);
        for h in handles {
            let (l, e) = h.join().expect("publisher thread")?;
            out = (out.0.max(l), out.1.max(e));
        }
        Ok(out)
    })?;
    c.wait_all(last)?;
    let p1 = c.publisher.stats();
    let mut samples: Vec<u64> = c
        .samples
        .iter()
        .flat_map(|s| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|x| x.1)
                .collect::<Vec<_>>()
        })
        .collect();
    samples.sort_unstable();
    let mut commits = commit_lat.into_inner().unwrap_or_else(|e| e.into_inner());
    commits.sort_unstable();
    c.close()?;
    ctx.bar.inc(1);
    let journal = p1.journal_commits.saturating_sub(p0.journal_commits);
    let committed = p1.updates_committed.saturating_sub(p0.updates_committed);
    let tail = tail_loss(ctx, counts)?;
    ctx.bar.inc(1);
    Ok((
        Latency {
            subscribers: n,
            value_bytes: 1024,
            offered_per_s: rate,
            achieved_per_s: total as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
            updates: total,
            samples: samples.len(),
            p50_us: quantile(&samples, 0.50),
            p90_us: quantile(&samples, 0.90),
            p99_us: quantile(&samples, 0.99),
            p999_us: quantile(&samples, 0.999),
            max_us: samples.last().copied().unwrap_or(0),
            commit_p50_us: quantile(&commits, 0.50),
            commit_p99_us: quantile(&commits, 0.99),
            updates_per_journal_commit: committed as f64 / journal.max(1) as f64,
            cdf: (1..=200)
                .map(|i| {
                    let q = f64::from(i) / 200.0;
                    (quantile(&samples, q), q)
                })
                .collect(),
            tail_loss: tail,
        },
        samples,
    ))
}

/// Time to apply an update whose packets were lost when nothing follows it: isolated 1 KiB
/// updates to three subscribers, one of them with 10 % injected loss (heartbeats are lost
/// at that rate too; a minority at a loss under the error thresholds, so neither the
/// subscriber's unicast fallback nor the publisher's quiescing kicks in). An update counts as a lost tail when its data came by repair (packet repair
/// delivered at least its size, or the journal delivered an update); otherwise as clean,
/// or as "waited for a heartbeat" when only an earlier lost heartbeat was fetched first.
fn tail_loss(ctx: &mut Ctx, counts: &Counts) -> BenchResult<TailLoss> {
    const P: f64 = 0.1;
    ctx.bar
        .set_message("(b) tail loss: isolated updates, 10 % injected loss");
    let c = Cluster::open(ctx, 3, Some(P), 1)?;
    let p0 = c.publisher.stats();
    c.record.store(true, Ordering::SeqCst);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x7a11);
    let value = values(1, 1024, ctx.seed ^ 0x7a12).remove(0);
    let sub = &c.subs[0];
    let (mut lost, mut lossless, mut after_heartbeat) = (Vec::new(), Vec::new(), Vec::new());
    let mut trials = 0;
    while trials < counts.tail_trials && (lost.len() < counts.tail_lost || lossless.len() < 10) {
        trials += 1;
        let before = sub.stats();
        let v = c.db.put(key("tail", trials), &value)?;
        sub.wait_for_version(v, CONVERGE)?;
        let after = sub.stats();
        let lat = c.samples[0]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|x| x.0 == v)
            .map(|x| x.1);
        let data_repaired = after.repair_updates > before.repair_updates
            || after.packet_repair_bytes - before.packet_repair_bytes >= value.len() as u64;
        let any_repaired = after.packets_repaired > before.packets_repaired;
        if let Some(lat) = lat {
            if data_repaired {
                lost.push(lat);
            } else if any_repaired {
                after_heartbeat.push(lat);
            } else {
                lossless.push(lat);
            }
        }
        // Idle a while so the next update is again the last one sent.
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..40)));
    }
    let hb = c.heartbeat_initial;
    let (quiesces, backoffs) = (
        c.publisher.stats().quiesces - p0.quiesces,
        sub.stats().unicast_backoffs,
    );
    c.close()?;
    lost.sort_unstable();
    lossless.sort_unstable();
    after_heartbeat.sort_unstable();
    let (lp50, llp50) = (quantile(&lost, 0.5), quantile(&lossless, 0.5));
    Ok(TailLoss {
        loss_probability: P,
        heartbeat_initial_us: hb.as_micros() as u64,
        trials,
        lost_samples: lost.len(),
        lost_p50_us: lp50,
        lost_p90_us: quantile(&lost, 0.9),
        lost_max_us: lost.last().copied().unwrap_or(0),
        lossless_samples: lossless.len(),
        lossless_p50_us: llp50,
        heartbeat_repaired_samples: after_heartbeat.len(),
        heartbeat_repaired_p50_us: quantile(&after_heartbeat, 0.5),
        excess_p50_us: lp50.saturating_sub(llp50),
        quiesces,
        unicast_backoffs: backoffs,
        target_us: 2 * hb.as_micros() as u64,
    })
}

/// (c): egress bytes per update for 1..16 subscribers, beside TCP fan-out.
fn fanout(ctx: &mut Ctx, counts: &Counts) -> BenchResult<Vec<FanoutRow>> {
    let mut rows: Vec<FanoutRow> = Vec::new();
    let count = counts.fanout;
    for &n in &FANOUT_SUBS {
        ctx.bar.set_message(format!(
            "(c) fan-out: {n} subscriber(s), {count} updates of 1 KiB"
        ));
        let (l, vals) = run_load(ctx, n, 1024, count, None, "f")?;
        ctx.bar.inc(1);
        ctx.bar
            .set_message(format!("(c) TCP unicast fan-out to {n} receiver(s)"));
        let ts = wall_clock_us();
        let encoded: Vec<Vec<u8>> = vals
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                update_to_vec(&Update {
                    version: i as u64 + 2,
                    timestamp_us: ts,
                    ops: vec![Op::put(key("f", i), v)],
                    reset: false,
                })
            })
            .collect();
        let enc_bytes = encoded.iter().map(Vec::len).sum::<usize>() as f64 / count as f64;
        let tcp = baseline::tcp_fanout(n, &encoded)?;
        ctx.bar.inc(1);
        let (mc, rep) = (pd!(l, bytes_sent), pd!(l, repair_bytes_sent));
        let per = (mc + rep) as f64 / count as f64;
        let one = rows.first().map_or(per, |r| r.bytes_per_update);
        rows.push(FanoutRow {
            subscribers: n,
            value_bytes: 1024,
            updates: count,
            encoded_bytes_per_update: enc_bytes,
            bytes_per_update: per,
            multicast_bytes: mc,
            repair_bytes: rep,
            ratio_to_one_subscriber: per / one,
            updates_per_s: l.updates_per_s(),
            tcp_bytes_per_update: tcp.bytes_per_update,
            tcp_updates_per_s: tcp.updates_per_s,
        });
    }
    Ok(rows)
}

/// (d): repair bytes against lost bytes, and throughput kept, under injected loss.
fn repair(ctx: &mut Ctx, counts: &Counts, subs: usize) -> BenchResult<Vec<RepairRow>> {
    let mut rows: Vec<RepairRow> = Vec::new();
    let (count, reps) = (counts.repair, counts.repeats);
    // Rounds over every loss rate, so a slow spell of the machine hits all rates alike.
    let mut all: Vec<Vec<Load>> = LOSSES.iter().map(|_| Vec::new()).collect();
    for round in 1..=reps {
        for (i, &p) in LOSSES.iter().enumerate() {
            ctx.bar.set_message(format!(
                "(d) repair: {:.1} % loss, {subs} subscribers, {count} updates of 1 KiB (round {round}/{reps})",
                p * 100.0
            ));
            all[i].push(run_load(ctx, subs, 1024, count, Some(p), "r")?.0);
            ctx.bar.inc(1);
        }
    }
    for (&p, mut runs) in LOSSES.iter().zip(all) {
        runs.sort_by(|a, b| a.updates_per_s().total_cmp(&b.updates_per_s()));
        let mid = runs.len() / 2;
        // Injected loss drops a uniform sample of the stream, so the lost bytes are the
        // dropped packets times the stream's mean datagram size.
        let lost_bytes: f64 = runs
            .iter()
            .flat_map(|l| l.s1.iter().zip(&l.s0))
            .map(|(a, b)| {
                let pk = a.packets_received.saturating_sub(b.packets_received);
                let by = a.bytes_received.saturating_sub(b.bytes_received);
                let dr = a.dropped_injected.saturating_sub(b.dropped_injected);
                dr as f64 * by as f64 / pk.max(1) as f64
            })
            .sum();
        let sum = |f: &dyn Fn(&SubscriptionStats) -> u64| -> u64 {
            runs.iter().map(|l| l.sub_sum(f)).sum()
        };
        let repair_bytes = sum(&|s| s.packet_repair_bytes + s.repair_bytes);
        let ups = runs[mid].updates_per_s();
        let base = rows.first().map_or(ups, |r| r.updates_per_s);
        rows.push(RepairRow {
            loss: p,
            subscribers: subs,
            value_bytes: 1024,
            updates: count,
            updates_per_s: ups,
            updates_per_s_runs: runs.iter().map(Load::updates_per_s).collect(),
            throughput_kept: ups / base,
            lost_packets: sum(&|s| s.dropped_injected),
            lost_bytes: lost_bytes.round() as u64,
            repair_bytes,
            repair_fraction: (lost_bytes > 0.0).then(|| repair_bytes as f64 / lost_bytes),
            packets_repaired: sum(&|s| s.packets_repaired),
            repair_updates: sum(&|s| s.repair_updates),
            chains_dropped: sum(&|s| s.chains_dropped),
            updates_per_apply_commit: runs[mid].sub_sum(|s| s.updates_applied) as f64
                / runs[mid].sub_sum(|s| s.apply_commits).max(1) as f64,
            quiesces: runs.iter().map(|l| pd!(l, quiesces)).sum(),
            resubscriptions: sum(&|s| s.resubscriptions),
            unicast_backoffs: sum(&|s| s.unicast_backoffs),
            bundle_bytes_at_end: runs[mid].p1.bundle_bytes,
            packets_per_sec_at_end: runs[mid].p1.packets_per_sec,
        });
    }
    Ok(rows)
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu,
        load_average_start: load_average(),
        load_average_end: String::new(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let mut push = |name: &str, target: String, measured: String, met: bool| {
        t.push(Target {
            name: name.into(),
            target,
            measured,
            met,
        })
    };
    if let (Some(one), Some(sixteen)) = (
        r.fanout.iter().find(|f| f.subscribers == 1),
        r.fanout.iter().find(|f| f.subscribers == 16),
    ) {
        let ratio = sixteen.bytes_per_update / one.bytes_per_update;
        push(
            "egress per update, 16 vs 1 subscriber",
            "≤ 1.05×".into(),
            format!(
                "{ratio:.3}× ({:.0} vs {:.0} B/update; TCP fan-out {:.0} B)",
                sixteen.bytes_per_update, one.bytes_per_update, sixteen.tcp_bytes_per_update
            ),
            ratio <= 1.05,
        );
    }
    if let Some(row) = r
        .throughput
        .iter()
        .find(|x| x.subscribers == 8 && x.value_bytes == 1024)
    {
        let (redis, src) = match r.redis.first() {
            Some(x) => (
                x.updates_per_s,
                "Redis (no persistence) measured in this run",
            ),
            None => (REDIS_REFERENCE_UPDATES_PER_S, "Redis reference"),
        };
        push(
            "throughput, 8 subscribers, 1 KiB",
            format!("≥ 1.5 × {src} = {:.0}/s", 1.5 * redis),
            format!(
                "{:.0}/s = {:.2} × Redis",
                row.updates_per_s,
                row.updates_per_s / redis
            ),
            row.updates_per_s >= 1.5 * redis,
        );
    }
    let big: Vec<_> = r
        .throughput
        .iter()
        .filter(|x| x.value_bytes == 16 * 1024)
        .collect();
    if !big.is_empty() {
        let worst = big
            .iter()
            .map(|x| x.fraction_of_raw)
            .fold(f64::INFINITY, f64::min);
        let worst_dg = big
            .iter()
            .map(|x| x.fraction_of_raw_same_datagram)
            .fold(f64::INFINITY, f64::min);
        push(
            "throughput vs raw multicast, 16 KiB",
            "≥ 50 %".into(),
            format!(
                "{:.1} % of raw (worst of 1/4/8 subscribers); {:.1} % of raw cut to {} B datagrams",
                worst * 100.0,
                worst_dg * 100.0,
                r.settings.datagram_bytes
            ),
            worst >= 0.5,
        );
    }
    if let Some(l) = &r.latency {
        push(
            "p99 publish→applied at 10k/s",
            "≤ 5 ms".into(),
            format!(
                "{:.2} ms at {} offered/s (p50 {:.2} ms)",
                l.p99_us as f64 / 1e3,
                l.offered_per_s,
                l.p50_us as f64 / 1e3
            ),
            l.p99_us <= 5_000 && l.offered_per_s >= 10_000,
        );
        let tl = &l.tail_loss;
        push(
            "lost last update recovered",
            format!("≤ 2 × heartbeat_initial = {:.1} ms", tl.target_us as f64 / 1e3),
            format!(
                "{:.2} ms beyond a lossless update (p50; lost tail applied after {:.2} ms, lossless {:.2} ms)",
                tl.excess_p50_us as f64 / 1e3,
                tl.lost_p50_us as f64 / 1e3,
                tl.lossless_p50_us as f64 / 1e3
            ),
            tl.lost_samples > 0 && tl.excess_p50_us <= tl.target_us,
        );
    }
    if let Some(row) = r.repair.iter().find(|x| (x.loss - 0.05).abs() < 1e-9) {
        let f = row.repair_fraction.unwrap_or(f64::NAN);
        push(
            "repair bytes at 5 % loss",
            "≤ 1.3 × lost bytes".into(),
            format!("{f:.2} × lost bytes"),
            f <= 1.3,
        );
    }
    if let Some(row) = r.repair.iter().find(|x| (x.loss - 0.01).abs() < 1e-9) {
        push(
            "throughput at 1 % loss",
            "≥ 70 % of lossless".into(),
            format!("{:.1} % of lossless", row.throughput_kept * 100.0),
            row.throughput_kept >= 0.7,
        );
    }
    t
}

fn print_tables(r: &Report) {
    if !r.throughput.is_empty() {
        println!("\n(a) Throughput, publish → applied on every subscriber (AES-256-GCM, durable journal, {} publisher threads)", r.settings.publisher_threads);
        println!(
            "{:>5} {:>7} {:>8} {:>10} {:>8} {:>10} {:>8} {:>8} {:>7} {:>11} {:>7} {:>9}",
            "subs",
            "value",
            "updates",
            "updates/s",
            "MB/s",
            "raw upd/s",
            "raw MB/s",
            "raw loss",
            "of raw",
            "raw@dgram/s",
            "of it",
            "upd/fsync"
        );
        for x in &r.throughput {
            println!(
                "{:>5} {:>7} {:>8} {:>10.0} {:>8.1} {:>10.0} {:>8.1} {:>7.1}% {:>6.1}% {:>11.0} {:>6.1}% {:>9.1}",
                x.subscribers,
                size_label(x.value_bytes),
                x.updates,
                x.updates_per_s,
                x.mb_per_s,
                x.raw_updates_per_s,
                x.raw_mb_per_s,
                x.raw_loss * 100.0,
                x.fraction_of_raw * 100.0,
                x.raw_same_datagram_updates_per_s,
                x.fraction_of_raw_same_datagram * 100.0,
                x.updates_per_journal_commit
            );
        }
        println!(
            "  raw = one datagram per update; raw@dgram = the value cut into {} B datagrams like mcsync's",
            r.settings.datagram_bytes
        );
    }
    if !r.publisher_threads.is_empty() {
        println!("\n(a) Group commit: 8 subscribers, 1 KiB values, by publisher threads");
        println!(
            "{:>8} {:>10} {:>10} {:>10}",
            "threads", "updates/s", "upd/fsync", "fsyncs/s"
        );
        for x in &r.publisher_threads {
            println!(
                "{:>8} {:>10.0} {:>10.1} {:>10.0}",
                x.publisher_threads,
                x.updates_per_s,
                x.updates_per_journal_commit,
                x.journal_commits_per_s
            );
        }
    }
    if let Some(l) = &r.latency {
        println!(
            "\n(b) Latency, publish → applied, {} B values at {} offered/s ({:.0} achieved), {} subscribers, {} samples",
            l.value_bytes, l.offered_per_s, l.achieved_per_s, l.subscribers, l.samples
        );
        println!(
            "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms   (journal commit p50 {:.2} ms, p99 {:.2} ms; {:.1} updates per fsync)",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            ms(l.commit_p50_us),
            ms(l.commit_p99_us),
            l.updates_per_journal_commit
        );
        let t = &l.tail_loss;
        println!(
            "  lost last update ({} of {} isolated updates, {:.0} % loss): applied after p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms; clean p50 {:.2} ms ({}); excess {:.2} ms vs 2 × heartbeat_initial = {:.1} ms",
            t.lost_samples,
            t.trials,
            t.loss_probability * 100.0,
            ms(t.lost_p50_us),
            ms(t.lost_p90_us),
            ms(t.lost_max_us),
            ms(t.lossless_p50_us),
            t.lossless_samples,
            ms(t.excess_p50_us),
            ms(t.target_us)
        );
        println!(
            "  intact updates held while an earlier lost heartbeat was repaired: {}, p50 {:.2} ms (quiesces {}, unicast fallbacks {})",
            t.heartbeat_repaired_samples,
            ms(t.heartbeat_repaired_p50_us),
            t.quiesces,
            t.unicast_backoffs
        );
    }
    if !r.fanout.is_empty() {
        println!("\n(c) Publisher egress per 1 KiB update (multicast + repair bytes) vs TCP unicast fan-out");
        println!(
            "{:>5} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>11} {:>11}",
            "subs",
            "updates",
            "encoded B",
            "mcsync B",
            "vs 1",
            "repair B",
            "TCP B",
            "mcsync u/s",
            "TCP u/s*"
        );
        for x in &r.fanout {
            println!(
                "{:>5} {:>8} {:>10.0} {:>10.0} {:>7.3}× {:>10} {:>10.0} {:>11.0} {:>11.0}",
                x.subscribers,
                x.updates,
                x.encoded_bytes_per_update,
                x.bytes_per_update,
                x.ratio_to_one_subscriber,
                x.repair_bytes,
                x.tcp_bytes_per_update,
                x.updates_per_s,
                x.tcp_updates_per_s
            );
        }
        println!("  * the TCP baseline sends from memory: no journal, no encryption; compare its bytes, not its rate");
    }
    if !r.repair.is_empty() {
        println!(
            "\n(d) Repair cost under injected loss ({} subscribers, 1 KiB values; q/resub/uni = publisher quiesces / re-registrations / unicast fallbacks; bundle and pkt/s = adapted at the end)",
            r.repair[0].subscribers
        );
        println!(
            "{:>6} {:>8} {:>10} {:>7} {:>9} {:>12} {:>12} {:>11} {:>11} {:>10} {:>9} {:>8} {:>8}",
            "loss",
            "updates",
            "updates/s",
            "kept",
            "lost pkt",
            "lost B",
            "repair B",
            "repair/lost",
            "chains drop",
            "upd/commit",
            "q/resub/uni",
            "bundle",
            "pkt/s"
        );
        for x in &r.repair {
            println!(
                "{:>5.1}% {:>8} {:>10.0} {:>6.1}% {:>9} {:>12} {:>12} {:>11} {:>11} {:>10.1} {:>11} {:>8} {:>8}",
                x.loss * 100.0,
                x.updates,
                x.updates_per_s,
                x.throughput_kept * 100.0,
                x.lost_packets,
                x.lost_bytes,
                x.repair_bytes,
                x.repair_fraction
                    .map_or_else(|| "-".into(), |f| format!("{f:.3}")),
                x.chains_dropped,
                x.updates_per_apply_commit,
                format!(
                    "{}/{}/{}",
                    x.quiesces, x.resubscriptions, x.unicast_backoffs
                ),
                gauge(x.bundle_bytes_at_end),
                gauge(x.packets_per_sec_at_end)
            );
        }
    }
    for x in &r.redis {
        println!(
            "\nRedis {} replication, {}: {} × {} B SETs from {} connections to {} replicas: {:.0} updates/s, {:.0} B per update per replica",
            x.server_version,
            x.persistence,
            x.updates,
            x.value_bytes,
            x.client_connections,
            x.replicas,
            x.updates_per_s,
            x.bytes_per_update_per_replica
        );
    }
    if !r.targets.is_empty() {
        println!("\nTargets");
        for t in &r.targets {
            println!(
                "  [{}] {}: {} — target {}",
                if t.met { "met" } else { "MISSED" },
                t.name,
                t.measured,
                t.target
            );
        }
    }
}

/// A gauge the publisher sets once subscriber reports arrived ("-" before that).
fn gauge(v: u64) -> String {
    if v == 0 {
        "-".into()
    } else {
        v.to_string()
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn size_label(b: usize) -> String {
    if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

/// Runs the bench.
pub fn run(a: BenchArgs) -> BenchResult<ExitCode> {
    if a.publishers == 0 || a.latency_publishers == 0 || a.subscribers == 0 || a.scale <= 0.0 {
        return Err(
            "--publishers, --latency-publishers, --subscribers and --scale must be positive".into(),
        );
    }
    let mut rng = rand::thread_rng();
    let group = a
        .group
        .unwrap_or_else(|| Ipv4Addr::new(239, 254, rng.gen(), 1));
    // Scenarios use up to 500 consecutive groups and ports from these.
    if group.octets()[0] != 239 || Ipv4Addr::from(u32::from(group) + 500).octets()[0] != 239 {
        return Err(
            format!("--group {group} is not in 239.0.0.0/8 with 500 groups to spare").into(),
        );
    }
    let port = a.port.unwrap_or_else(|| rng.gen_range(30_000..=59_000));
    if !(1024..=65_000).contains(&port) {
        return Err("--port must be in 1024..=65000".into());
    }
    std::fs::create_dir_all(&a.out)?;
    let data_root = a.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&data_root)?;
    let counts = Counts::new(a.quick, a.scale);
    let has = |s: Section| a.sections.contains(&s);
    let steps = if has(Section::Throughput) {
        18 + SWEEP_THREADS.len()
    } else {
        0
    } + if has(Section::Latency) { 2 } else { 0 }
        + if has(Section::Fanout) { 8 } else { 0 }
        + if has(Section::Repair) {
            LOSSES.len() * counts.repeats
        } else {
            0
        }
        + 2 * usize::from(a.redis);
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
    )?);
    bar.enable_steady_tick(Duration::from_millis(200));
    let defaults = MulticastConfig::default();
    let mut ctx = Ctx {
        data_root: data_root.clone(),
        group,
        port,
        next: 0,
        datagram_bytes: a.datagram_bytes,
        max_pps: a.max_packets_per_sec,
        publishers: a.publishers,
        seed: a.seed,
        durability: a.durability.into(),
        bar: bar.clone(),
    };
    let t0 = Instant::now();
    let mut report = Report {
        tool: "mcsync bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: a.quick,
        machine: machine(),
        settings: Settings {
            publisher_threads: a.publishers,
            latency_publisher_threads: a.latency_publishers,
            repeats: counts.repeats,
            datagram_bytes: a.datagram_bytes,
            max_packets_per_sec: a.max_packets_per_sec.unwrap_or(defaults.max_packets_per_sec),
            max_bundle_bytes: defaults.max_bundle_bytes,
            heartbeat_initial_us: defaults.heartbeat_initial.as_micros() as u64,
            encryption: "AES-256-GCM on every packet; TLS 1.3 repair channel".into(),
            journal: match a.durability {
                DurabilityArg::Sync => "sync: each commit returns after the journal's LMDB fsync; concurrent commits share one",
                DurabilityArg::Async => "async: each commit returns once its version is assigned; a journal writer group-commits (fsync) behind it, at most 8,192 updates behind",
            }
            .into(),
            value_content: "random bytes (incompressible), a distinct key per update".into(),
            data_dir: data_root.display().to_string(),
        },
        ..Report::default()
    };
    let mut lat_samples = Vec::new();
    let result = (|| -> BenchResult<()> {
        let mut t = Instant::now();
        let mut lap = |name: &str, report: &mut Report| {
            report
                .section_seconds
                .insert(name.into(), t.elapsed().as_secs_f64());
            t = Instant::now();
        };
        if has(Section::Throughput) {
            report.throughput = throughput(&mut ctx, &counts, defaults.ttl)?;
            report.publisher_threads = thread_sweep(&mut ctx, &counts)?;
            lap("throughput", &mut report);
        }
        if has(Section::Latency) {
            let (l, s) = latency(&mut ctx, &counts, &a)?;
            report.latency = Some(l);
            lat_samples = s;
            lap("latency", &mut report);
        }
        if has(Section::Fanout) {
            report.fanout = fanout(&mut ctx, &counts)?;
            lap("fanout", &mut report);
        }
        if has(Section::Repair) {
            report.repair = repair(&mut ctx, &counts, a.subscribers)?;
            lap("repair", &mut report);
        }
        if a.redis {
            bar.set_message("Redis replication, side by side");
            for durable in [false, true] {
                report
                    .redis
                    .push(redis::measure(&data_root, a.quick, a.publishers, durable)?);
                bar.inc(1);
            }
            lap("redis", &mut report);
        }
        Ok(())
    })();
    bar.finish_and_clear();
    result?;
    report.duration_s = t0.elapsed().as_secs_f64();
    report.machine.load_average_end = load_average();
    report.targets = targets(&report);
    print_tables(&report);
    let json = a.out.join("bench.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    let plots = plot::write_all(&report, &lat_samples, &a.out)?;
    println!(
        "\nwrote {} and {} plot(s) to {} in {:.0} s",
        json.display(),
        plots,
        a.out.display(),
        report.duration_s
    );
    Ok(ExitCode::SUCCESS)
}
