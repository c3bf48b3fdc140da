//! (e) Unicast-only subscribers: the publisher pushes its stream to each of them by
//! unicast UDP. Measured beside the same number of multicast subscribers and beside
//! subscribers refused push (`max_unicast_targets` 0), which catch up by polling STATUS
//! every 100 ms and fetching by TLS catch-up: today's fallback where multicast is blocked.

use super::*;
use mcsync::sync::Locked;

/// Subscriber counts of the unicast section.
const UNICAST_SUBS: [usize; 2] = [4, 8];

/// How a row's subscribers receive.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub(super) enum Mode {
    /// Joined the group.
    Multicast,
    /// Pushed to by unicast UDP.
    Unicast,
    /// Refused push: polling STATUS and catching up over TLS.
    Polling,
}

#[derive(Serialize)]
pub(super) struct UnicastRow {
    pub(super) mode: Mode,
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    pub(super) updates: usize,
    pub(super) updates_per_s: f64,
    /// Every byte the publisher sent (multicast + unicast push + repair), per update.
    pub(super) egress_bytes_per_update: f64,
    /// The lossless stream: the group's bytes per update (one copy).
    pub(super) stream_bytes_per_update: f64,
    /// Egress over the lossless stream.
    pub(super) egress_ratio: f64,
    pub(super) multicast_bytes: u64,
    pub(super) unicast_bytes: u64,
    pub(super) repair_bytes: u64,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    /// STATUS polls the subscribers sent.
    pub(super) status_polls: u64,
}

/// (e): 1 KiB updates to 4 and 8 subscribers: multicast, unicast push, and (4) polling.
pub(super) fn unicast_fanout(ctx: &mut Ctx, counts: &Counts) -> BenchResult<Vec<UnicastRow>> {
    let mut rows = Vec::new();
    for &n in &UNICAST_SUBS {
        for mode in [Mode::Multicast, Mode::Unicast, Mode::Polling] {
            if mode == Mode::Polling && n != UNICAST_SUBS[0] {
                continue;
            }
            // Polling is slow (100 ms rounds): a tenth of the updates say as much.
            let count = if mode == Mode::Polling {
                (counts.fanout / 10).max(20)
            } else {
                counts.fanout
            };
            ctx.bar.set_message(format!(
                "(e) unicast: {n} {mode:?} subscriber(s), {count} updates of 1 KiB"
            ));
            rows.push(measure(ctx, n, mode, count)?);
            ctx.bar.inc(1);
        }
    }
    Ok(rows)
}

/// Steps of the section (for the progress bar).
pub(super) fn steps() -> usize {
    UNICAST_SUBS.len() * 2 + 1
}

fn measure(ctx: &mut Ctx, n: usize, mode: Mode, count: usize) -> BenchResult<UnicastRow> {
    let vals = values(count, 1024, ctx.seed ^ 0xe ^ n as u64);
    ctx.push = match mode {
        Mode::Multicast => None,
        Mode::Unicast => Some(n),
        Mode::Polling => Some(0),
    };
    let opened = Cluster::open(ctx, n, None, 0);
    ctx.push = None;
    let c = opened?;
    let p0 = c.publisher.stats();
    c.record.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let last = publish(&c.db, "u", &vals, ctx.publishers)?;
    c.wait_all(last)?;
    let secs = t0.elapsed().as_secs_f64();
    c.record.store(false, Ordering::SeqCst);
    let p1 = c.publisher.stats();
    let polls = c.sub_stats().iter().map(|s| s.status_polls).sum();
    let mut samples: Vec<u64> = c
        .samples
        .iter()
        .flat_map(|s| s.locked().iter().map(|x| x.1).collect::<Vec<_>>())
        .collect();
    samples.sort_unstable();
    c.close()?;
    let d = |f: fn(&PublisherStats) -> u64| f(&p1).saturating_sub(f(&p0));
    let (mc, uc, rep) = (
        d(|s| s.bytes_sent),
        d(|s| s.unicast_bytes),
        d(|s| s.repair_bytes_sent),
    );
    let stream = mc as f64 / count as f64;
    let egress = (mc + uc + rep) as f64 / count as f64;
    Ok(UnicastRow {
        mode,
        subscribers: n,
        value_bytes: 1024,
        updates: count,
        updates_per_s: count as f64 / secs.max(1e-9),
        egress_bytes_per_update: egress,
        stream_bytes_per_update: stream,
        egress_ratio: egress / stream.max(1.0),
        multicast_bytes: mc,
        unicast_bytes: uc,
        repair_bytes: rep,
        p50_us: quantile(&samples, 0.50),
        p99_us: quantile(&samples, 0.99),
        status_polls: polls,
    })
}

/// Table (e).
pub(super) fn print_unicast(r: &Report) {
    println!(
        "\n(e) Unicast-only subscribers: 1 KiB updates pushed by unicast UDP, beside multicast \
         and beside polling (push refused)"
    );
    println!(
        "{:>9} {:>5} {:>8} {:>10} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9} {:>7}",
        "mode",
        "subs",
        "updates",
        "updates/s",
        "egress B",
        "stream B",
        "ratio",
        "repair B",
        "p50 ms",
        "p99 ms",
        "polls"
    );
    for x in &r.unicast {
        println!(
            "{:>9} {:>5} {:>8} {:>10.0} {:>10.0} {:>10.0} {:>6.2}× {:>10} {:>9.2} {:>9.2} {:>7}",
            format!("{:?}", x.mode).to_lowercase(),
            x.subscribers,
            x.updates,
            x.updates_per_s,
            x.egress_bytes_per_update,
            x.stream_bytes_per_update,
            x.egress_ratio,
            x.repair_bytes,
            ms(x.p50_us),
            ms(x.p99_us),
            x.status_polls
        );
    }
    println!(
        "  egress: multicast + unicast push + repair bytes per update; stream: the group's \
         bytes per update (one copy); latency: publish → applied, every subscriber"
    );
}
