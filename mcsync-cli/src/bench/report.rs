//! What a bench run reports: the rows of bench.json, the targets met or missed, and the
//! tables printed at the end.

use super::*;

/// Everything written to bench.json.
#[derive(Serialize, Default)]
pub struct Report {
    pub(super) tool: String,
    pub(super) version: String,
    pub(super) command: String,
    pub(super) quick: bool,
    pub(super) machine: Machine,
    pub(super) settings: Settings,
    pub(super) duration_s: f64,
    pub(super) section_seconds: std::collections::BTreeMap<String, f64>,
    pub(super) throughput: Vec<ThroughputRow>,
    pub(super) publisher_threads: Vec<ThreadsRow>,
    pub(super) latency: Option<Latency>,
    pub(super) fanout: Vec<FanoutRow>,
    pub(super) repair: Vec<RepairRow>,
    pub(super) unicast: Vec<UnicastRow>,
    pub(super) push_cost: Vec<PushCostRow>,
    pub(super) memory: Option<super::memory::MemoryRow>,
    pub(super) relay: Option<super::relay::RelayRow>,
    pub(super) redis: Vec<redis::RedisResult>,
    pub(super) targets: Vec<Target>,
}

#[derive(Serialize, Default)]
pub(super) struct Machine {
    pub(super) nproc: usize,
    pub(super) cpu_model: String,
    pub(super) load_average_start: String,
    pub(super) load_average_end: String,
}

#[derive(Serialize, Default)]
pub(super) struct Settings {
    pub(super) publisher_threads: usize,
    pub(super) latency_publisher_threads: usize,
    pub(super) repeats: usize,
    pub(super) datagram_bytes: usize,
    pub(super) max_packets_per_sec: u64,
    pub(super) max_bytes_per_sec: u64,
    pub(super) max_bundle_bytes: usize,
    pub(super) heartbeat_initial_us: u64,
    pub(super) encryption: String,
    pub(super) journal: String,
    /// The subscribers' replica durability (`sync`, `periodic:<ms>`, `none`).
    pub(super) replica_durability: String,
    pub(super) value_content: String,
    pub(super) data_dir: String,
}

#[derive(Serialize)]
pub(super) struct ThroughputRow {
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    /// Updates per run.
    pub(super) updates: usize,
    /// Seconds of the median run.
    pub(super) seconds: f64,
    /// Updates per second from the first publish until every subscriber applied the last
    /// (median run).
    pub(super) updates_per_s: f64,
    /// Every run's figure.
    pub(super) updates_per_s_runs: Vec<f64>,
    /// Value bytes per second (10^6 bytes).
    pub(super) mb_per_s: f64,
    /// Raw multicast, one datagram per update carrying the value bytes.
    pub(super) raw_updates_per_s: f64,
    pub(super) raw_mb_per_s: f64,
    pub(super) raw_loss: f64,
    pub(super) raw_updates_per_s_runs: Vec<f64>,
    pub(super) fraction_of_raw: f64,
    /// Raw multicast with the value cut into datagrams of the publisher's datagram size
    /// (differs from the above only for values larger than a datagram).
    pub(super) raw_same_datagram_updates_per_s: f64,
    pub(super) raw_same_datagram_loss: f64,
    pub(super) fraction_of_raw_same_datagram: f64,
    pub(super) raw_datagrams_per_update: usize,
    pub(super) journal_commits: u64,
    pub(super) updates_per_journal_commit: f64,
    /// Updates applied per subscriber LMDB commit (each is durable too).
    pub(super) updates_per_apply_commit: f64,
    pub(super) packets_sent: u64,
    pub(super) chains_sent: u64,
    pub(super) chains_compressed: u64,
    pub(super) chains_dropped: u64,
    pub(super) channel_full: u64,
    pub(super) repair_bytes: u64,
}

/// Throughput against the number of publishing threads (they share journal fsyncs).
#[derive(Serialize)]
pub(super) struct ThreadsRow {
    pub(super) publisher_threads: usize,
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    pub(super) updates: usize,
    pub(super) updates_per_s: f64,
    pub(super) updates_per_journal_commit: f64,
    pub(super) journal_commits_per_s: f64,
}

#[derive(Serialize, Default)]
pub(super) struct Latency {
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    pub(super) offered_per_s: u64,
    pub(super) achieved_per_s: f64,
    pub(super) updates: usize,
    pub(super) samples: usize,
    pub(super) p50_us: u64,
    pub(super) p90_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) max_us: u64,
    pub(super) commit_p50_us: u64,
    pub(super) commit_p99_us: u64,
    pub(super) updates_per_journal_commit: f64,
    /// The distribution: (latency µs, fraction of samples at or below it), 200 points.
    pub(super) cdf: Vec<(u64, f64)>,
    pub(super) tail_loss: TailLoss,
}

#[derive(Serialize, Default)]
pub(super) struct TailLoss {
    pub(super) loss_probability: f64,
    pub(super) heartbeat_initial_us: u64,
    pub(super) trials: usize,
    pub(super) lost_samples: usize,
    pub(super) lost_p50_us: u64,
    pub(super) lost_p90_us: u64,
    pub(super) lost_max_us: u64,
    pub(super) lossless_samples: usize,
    pub(super) lossless_p50_us: u64,
    /// Updates delivered intact that waited while an earlier lost heartbeat was fetched by
    /// packet repair (the reorder stage holds packets behind a sequence gap).
    pub(super) heartbeat_repaired_samples: usize,
    pub(super) heartbeat_repaired_p50_us: u64,
    /// Error-policy events during the check (both should be 0).
    pub(super) quiesces: u64,
    pub(super) unicast_backoffs: u64,
    /// Lost-tail p50 minus lossless p50: detection plus the repair round trip.
    pub(super) excess_p50_us: u64,
    pub(super) target_us: u64,
}

#[derive(Serialize)]
pub(super) struct FanoutRow {
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    pub(super) updates: usize,
    pub(super) encoded_bytes_per_update: f64,
    /// Multicast plus repair bytes the publisher sent, per update.
    pub(super) bytes_per_update: f64,
    pub(super) multicast_bytes: u64,
    pub(super) repair_bytes: u64,
    pub(super) ratio_to_one_subscriber: f64,
    pub(super) updates_per_s: f64,
    pub(super) tcp_bytes_per_update: f64,
    pub(super) tcp_updates_per_s: f64,
}

#[derive(Serialize)]
pub(super) struct RepairRow {
    pub(super) loss: f64,
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    /// Updates per run.
    pub(super) updates: usize,
    /// Median run.
    pub(super) updates_per_s: f64,
    pub(super) updates_per_s_runs: Vec<f64>,
    pub(super) throughput_kept: f64,
    /// Lost and repaired figures are summed over every run.
    pub(super) lost_packets: u64,
    pub(super) lost_bytes: u64,
    pub(super) repair_bytes: u64,
    /// Repair bytes / lost bytes (null when nothing was lost).
    pub(super) repair_fraction: Option<f64>,
    pub(super) packets_repaired: u64,
    pub(super) repair_updates: u64,
    pub(super) chains_dropped: u64,
    /// Updates applied per subscriber LMDB commit (median run).
    pub(super) updates_per_apply_commit: f64,
    /// Error policy over every run: publisher quiesces, subscriber re-registrations and
    /// unicast fallbacks; the publisher's adapted bundle size and packet rate at the end of
    /// the median run.
    pub(super) quiesces: u64,
    pub(super) resubscriptions: u64,
    pub(super) unicast_backoffs: u64,
    pub(super) bundle_bytes_at_end: u64,
    pub(super) bytes_per_sec_at_end: u64,
}

#[derive(Serialize)]
pub(super) struct Target {
    pub(super) name: String,
    pub(super) target: String,
    pub(super) measured: String,
    pub(super) met: bool,
}

pub(super) fn machine() -> Machine {
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

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The targets a run is judged by, met or missed.
// Longer than 80 lines on purpose: one independent `push` per target, read top to bottom
// beside docs/BENCHMARKS.md; splitting it would only scatter the list.
pub(super) fn targets(r: &Report) -> Vec<Target> {
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
            format!("≥ 4 × {src} = {:.0}/s", 4.0 * redis),
            format!(
                "{:.0}/s = {:.2} × Redis",
                row.updates_per_s,
                row.updates_per_s / redis
            ),
            row.updates_per_s >= 4.0 * redis,
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
            "≥ 60 %".into(),
            format!(
                "{:.1} % of raw (worst of 1/4/8 subscribers); {:.1} % of raw cut to {} B datagrams",
                worst * 100.0,
                worst_dg * 100.0,
                r.settings.datagram_bytes
            ),
            worst >= 0.6,
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

pub(super) fn print_tables(r: &Report) {
    if !r.throughput.is_empty() {
        print_throughput(r);
    }
    if !r.publisher_threads.is_empty() {
        print_threads(r);
    }
    if let Some(l) = &r.latency {
        print_latency(l);
    }
    if !r.fanout.is_empty() {
        print_fanout(r);
    }
    if !r.repair.is_empty() {
        print_repair(r);
    }
    if !r.unicast.is_empty() {
        print_unicast(r);
    }
    if !r.push_cost.is_empty() {
        print_push_cost(r);
    }
    if let Some(m) = &r.memory {
        super::memory::print(m);
    }
    if let Some(x) = &r.relay {
        super::relay::print_relay(x);
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

/// Table (a) throughput beside raw multicast.
fn print_throughput(r: &Report) {
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

/// Table (a) group commit by publisher threads.
fn print_threads(r: &Report) {
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

/// Table (b) latency and the lost last update.
fn print_latency(l: &Latency) {
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

/// Table (c) egress beside TCP fan-out.
fn print_fanout(r: &Report) {
    println!(
        "\n(c) Publisher egress per 1 KiB update (multicast + repair bytes) vs TCP unicast fan-out"
    );
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

/// Table (d) repair cost under loss.
fn print_repair(r: &Report) {
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
        "pace B/s"
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
            gauge(x.bytes_per_sec_at_end)
        );
    }
}

/// A gauge the publisher sets once subscriber reports arrived ("-" before that).
pub(super) fn gauge(v: u64) -> String {
    if v == 0 {
        "-".into()
    } else {
        v.to_string()
    }
}

pub(super) fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

pub(super) fn size_label(b: usize) -> String {
    if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}
