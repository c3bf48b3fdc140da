//! (g) A relay tier: a master, a relay of its database, and N subscribers of the relay.
//! Throughput from the master's commits to the last downstream replica, latency from the
//! master's commit (its timestamp, which the relay keeps) to a downstream callback, and the
//! egress of each publisher.

use super::*;
use mcsync::sync::Locked;
use mcsync::{Relay, RelayConfig};

/// Offered rate of the relay's latency measurement, updates per second.
const RELAY_LATENCY_RATE: u64 = 2_000;

/// What the relay section measured.
#[derive(Serialize)]
pub(super) struct RelayRow {
    pub(super) subscribers: usize,
    pub(super) value_bytes: usize,
    pub(super) updates: usize,
    /// Master commits to every downstream replica applied, at full load.
    pub(super) updates_per_s: f64,
    pub(super) latency_updates: usize,
    pub(super) latency_offered_per_s: u64,
    /// Master commit → downstream applied, paced at `latency_offered_per_s`.
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    /// Multicast plus repair bytes per update the master sent (to the relay alone).
    pub(super) master_bytes_per_update: f64,
    /// Multicast plus repair bytes per update the relay sent (to its subscribers).
    pub(super) relay_bytes_per_update: f64,
    pub(super) relay_durability: String,
}

/// The relay's publisher config: its own group and port, open access.
fn downstream_config(ctx: &mut Ctx, dir: &std::path::Path) -> PublisherConfig {
    let SocketAddr::V4(ep) = ctx.endpoint() else {
        unreachable!()
    };
    let mut pc = PublisherConfig::new(dir.join("relay-publisher"));
    pc.authentication = Authentication::Open;
    pc.multicast.group = *ep.ip();
    pc.multicast.group_count = 1;
    pc.multicast.port = ep.port();
    pc.multicast.port_count = 1;
    pc.multicast.datagram_bytes = ctx.datagram_bytes;
    pc.durability = ctx.durability;
    pc
}

fn subscriber_config(dir: PathBuf, addr: SocketAddr, fp: &str, i: usize) -> SubscriberConfig {
    let mut sc = SubscriberConfig::new(dir, addr, ServerTrust::Fingerprint(fp.to_owned()));
    sc.user = "bench".into();
    sc.client_name = format!("bench-relay-{i}");
    sc
}

/// Publishes `vals` at `rate` per second from 16 threads; returns the highest version.
fn publish_paced(db: &Database, vals: &[Vec<u8>], rate: u64) -> BenchResult<u64> {
    let start = Instant::now() + Duration::from_millis(20);
    let period_ns = 1e9 / rate.max(1) as f64;
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let next = &next;
                s.spawn(move || -> mcsync::Result<u64> {
                    let mut last = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(v) = vals.get(i) else {
                            return Ok(last);
                        };
                        let at = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        last = last.max(db.put(key("rl", i), v)?);
                    }
                })
            })
            .collect();
        let mut last = 0;
        for h in handles {
            last = last.max(h.join().expect("publisher thread")?);
        }
        Ok(last)
    })
}

/// (e): master → relay → `n` subscribers.
pub(super) fn relay(ctx: &mut Ctx, count: usize, n: usize) -> BenchResult<RelayRow> {
    ctx.bar.set_message(format!(
        "(g) relay: {count} updates of 1 KiB, master → relay → {n} subscribers"
    ));
    let master = Cluster::open(ctx, 0, None, 0)?;
    let dir = tempfile::Builder::new()
        .prefix("mcsync-bench-relay-")
        .tempdir_in(&ctx.data_root)?;
    let fp = master.publisher.fingerprint().ok_or("no TLS")?.to_owned();
    let mut upstream = subscriber_config(
        dir.path().join("relay-replica"),
        master.publisher.control_addr(),
        &fp,
        0,
    );
    upstream.replica_durability = ctx.replica_durability;
    let relay = Relay::open(RelayConfig {
        upstream,
        downstream: downstream_config(ctx, dir.path()),
        databases: vec!["bench".into()],
    })?;
    let rfp = relay.fingerprint().ok_or("no TLS")?.to_owned();
    let record = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let (mut subscribers, mut subs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut sc = subscriber_config(
            dir.path().join(format!("sub-{i}")),
            relay.control_addr(),
            &rfp,
            i,
        );
        sc.replica_durability = ctx.replica_durability;
        let s = Subscriber::open(sc)?;
        let (r2, s2) = (record.clone(), samples.clone());
        subs.push(s.subscribe("bench", move |u: &Update| {
            if r2.load(Ordering::Relaxed) {
                let lat = wall_clock_us().saturating_sub(u.timestamp_us);
                s2.locked().push((u.version, lat));
            }
        })?);
        subscribers.push(s);
    }
    let wait = |v: u64| -> BenchResult<()> {
        for s in &subs {
            s.wait_for_version(v, CONVERGE)?;
        }
        Ok(())
    };
    wait(master.db.version())?;
    // Throughput and egress at full load.
    let vals = values(count, 1024, ctx.seed ^ 0x7e1a);
    let (m0, r0) = (master.publisher.stats(), relay.downstream_stats()?);
    let t0 = Instant::now();
    let last = publish(&master.db, "r", &vals, ctx.publishers)?;
    wait(last)?;
    let secs = t0.elapsed().as_secs_f64();
    let (m1, r1) = (master.publisher.stats(), relay.downstream_stats()?);
    ctx.bar.inc(1);
    // Latency, paced.
    let lat_n = (count / 5).max(100);
    let vals = values(lat_n, 1024, ctx.seed ^ 0x7e1b);
    record.store(true, Ordering::SeqCst);
    let last = publish_paced(&master.db, &vals, RELAY_LATENCY_RATE)?;
    wait(last)?;
    let mut lat: Vec<u64> = samples.locked().iter().map(|s| s.1).collect();
    lat.sort_unstable();
    ctx.bar.inc(1);
    let egress = |a: &PublisherStats, b: &PublisherStats| {
        (a.bytes_sent + a.repair_bytes_sent).saturating_sub(b.bytes_sent + b.repair_bytes_sent)
            as f64
            / count as f64
    };
    let row = RelayRow {
        subscribers: n,
        value_bytes: 1024,
        updates: count,
        updates_per_s: count as f64 / secs.max(1e-9),
        latency_updates: lat_n,
        latency_offered_per_s: RELAY_LATENCY_RATE,
        p50_us: quantile(&lat, 0.50),
        p99_us: quantile(&lat, 0.99),
        master_bytes_per_update: egress(&m1, &m0),
        relay_bytes_per_update: egress(&r1, &r0),
        relay_durability: format!("{:?}", ctx.durability).to_lowercase(),
    };
    for s in &subs {
        s.close()?;
    }
    for s in &subscribers {
        s.close()?;
    }
    relay.close()?;
    master.close()?;
    Ok(row)
}

/// Table (e).
pub(super) fn print_relay(x: &RelayRow) {
    println!(
        "\n(g) Relay tier: master → relay → {} subscribers, 1 KiB values (relay journal {})",
        x.subscribers, x.relay_durability
    );
    println!(
        "  {} updates at full load: {:.0} updates/s to every downstream replica; egress per update: master {:.0} B, relay {:.0} B",
        x.updates, x.updates_per_s, x.master_bytes_per_update, x.relay_bytes_per_update
    );
    println!(
        "  {} updates at {}/s: master commit → downstream applied p50 {} µs, p99 {} µs",
        x.latency_updates, x.latency_offered_per_s, x.p50_us, x.p99_us
    );
}
