//! `mcsync bench`: measures mcsync on loopback multicast in one process, beside baselines
//! measured in the same run, and writes a table, `bench.json` and PNG plots.
//!
//! Sections: (a) throughput beside the raw multicast limit, (b) publish→applied latency at
//! a fixed offered rate and the time to recover a lost last update, (c) publisher egress
//! bytes per update beside unicast TCP fan-out, (d) repair cost under injected loss, (e)
//! unicast-only subscribers (pushed to by unicast UDP) beside multicast and polling, (f)
//! resident memory of a publisher and a subscriber process, (g) a relay tier (master →
//! relay → subscribers).

mod baseline;
mod cluster;
mod memory;
mod plot;
mod push_cost;
mod redis;
mod relay;
mod report;
mod scenarios;
mod unicast;

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

use cluster::*;
use push_cost::*;
use report::*;
use scenarios::*;
use unicast::*;

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
    /// Sections to run, comma-separated: throughput, latency, fanout, repair, unicast,
    /// memory, relay (default all).
    /// (default all).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,fanout,repair,unicast,memory,relay"
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
    /// Publisher pacing limit in bytes per second (0 = unlimited); default: the library's.
    #[arg(long)]
    max_bytes_per_sec: Option<u64>,
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
    /// How the subscribers' replicas reach the disk: `sync` (fsync every apply),
    /// `periodic:<ms>` (`periodic` alone: every 1000 ms, the library's default) or `none`.
    #[arg(long, value_name = "MODE", default_value = "periodic:1000", value_parser = crate::serve::parse_replica_durability)]
    replica_durability: mcsync::ReplicaDurability,
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
    /// (e) unicast-only subscribers beside multicast and polling.
    Unicast,
    /// (f) resident memory of a publisher and a subscriber process, steady and under a
    /// backlog.
    Memory,
    /// (g) a relay tier: master → relay → subscribers.
    Relay,
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
    /// Updates of the memory section: (steady, backlog).
    memory: (usize, usize),
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
                memory: (s(1_000), s(2_000)),
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
                memory: (s(30_000), s(100_000)),
            }
        }
    }
}

/// Runs the bench.
// Longer than 80 lines: checks the arguments, then runs the chosen sections in order and
// writes what they measured; each step is a call into cluster, scenarios or report.
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
        + if has(Section::Unicast) {
            unicast::steps() + 1
        } else {
            0
        }
        + 2 * usize::from(a.redis)
        + 2 * usize::from(has(Section::Memory))
        + if has(Section::Relay) { 2 } else { 0 };
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
        max_bps: a.max_bytes_per_sec,
        publishers: a.publishers,
        seed: a.seed,
        durability: a.durability.into(),
        replica_durability: a.replica_durability,
        push: None,
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
            max_bytes_per_sec: a.max_bytes_per_sec.unwrap_or(defaults.max_bytes_per_sec),
            max_bundle_bytes: defaults.max_bundle_bytes,
            heartbeat_initial_us: defaults.heartbeat_initial.as_micros() as u64,
            encryption: "AES-256-GCM on every packet; TLS 1.3 repair channel".into(),
            journal: match a.durability {
                DurabilityArg::Sync => "sync: each commit returns after the journal's LMDB fsync; concurrent commits share one",
                DurabilityArg::Async => "async: each commit returns once its version is assigned; a journal writer group-commits (fsync) behind it, at most 8,192 updates behind",
            }
            .into(),
            replica_durability: a.replica_durability.to_string(),
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
        if has(Section::Unicast) {
            report.unicast = unicast_fanout(&mut ctx, &counts)?;
            report.push_cost = push_cost(&mut ctx, counts.fanout * 4)?;
            bar.inc(1);
            lap("unicast", &mut report);
        }
        if has(Section::Memory) {
            report.memory = Some(memory::memory(&mut ctx, &counts)?);
            lap("memory", &mut report);
        }
        if has(Section::Relay) {
            report.relay = Some(relay::relay(&mut ctx, counts.fanout, a.subscribers)?);
            lap("relay", &mut report);
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
