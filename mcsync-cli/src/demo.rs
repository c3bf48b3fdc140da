//! `mcsync demo`: a publisher and N subscribers in one process, on loopback multicast.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mcsync::store::state_digest;
use mcsync::{
    Authentication, LossConfig, Publisher, PublisherConfig, ServerTrust, Subscriber,
    SubscriberConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `mcsync demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Number of subscribers.
    #[arg(long, default_value_t = 3)]
    subscribers: u32,
    /// Number of master transactions to publish.
    #[arg(long, default_value_t = 10_000)]
    transactions: u32,
    /// Injected receive-side loss per subscriber (0.05 = 5 %).
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// Largest value in bytes; about 1 % of values are between 16 KiB and this (multi-packet).
    #[arg(long, default_value_t = 256 * 1024)]
    max_value: usize,
    /// Threads publishing concurrently (their commits share journal fsyncs).
    #[arg(long, default_value_t = 8)]
    threads: u32,
    /// Seed of the workload and of the loss generators.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Multicast group (IPv4, 239.0.0.0/8 advised).
    #[arg(long, default_value = "239.255.42.1")]
    group: Ipv4Addr,
    /// Multicast UDP port.
    #[arg(long, default_value_t = 47_420)]
    port: u16,
    /// Directory for the stores (default: a temporary directory removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds to wait for convergence before failing.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn value(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = match rng.gen_range(0..100) {
        0 => rng.gen_range((16 * 1024).min(max)..=max),
        1..=9 => rng.gen_range(1024.min(max)..=8192.min(max)),
        _ => rng.gen_range(0..=600.min(max)),
    };
    // Half text-like (compressible), half random (not).
    if rng.gen_bool(0.5) {
        let word = format!("item-{:08x} ", rng.gen::<u32>());
        word.bytes().cycle().take(len).collect()
    } else {
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    }
}

fn publish(
    db: &mcsync::Database,
    n: u32,
    seed: u64,
    max_value: usize,
    bar: &ProgressBar,
) -> mcsync::Result<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last = 0;
    for _ in 0..n {
        let mut t = db.transaction();
        for _ in 0..rng.gen_range(1..=3) {
            let key = format!("key-{:05}", rng.gen_range(0..5_000));
            if rng.gen_bool(0.1) {
                t.delete(key)?;
            } else {
                t.put(key, value(&mut rng, max_value))?;
            }
        }
        last = last.max(t.commit()?);
        bar.inc(1);
    }
    Ok(last)
}

/// Runs the demo; exit code 0 only if every replica equals the master.
pub fn run(a: DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if a.threads == 0 || a.subscribers == 0 {
        return Err("--threads and --subscribers must be at least 1".into());
    }
    let tmp = tempfile::tempdir()?;
    let root = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    // Real TLS with a self-signed certificate the subscribers pin; anyone may subscribe.
    let mut pc = PublisherConfig::new(root.join("publisher"));
    pc.authentication = Authentication::Open;
    pc.multicast.group = a.group;
    pc.multicast.port = a.port;
    let publisher = Publisher::open(pc)?;
    let db = publisher.database("demo")?;
    let start_version = db.version();
    println!(
        "mcsync demo: publisher on {} → group {}, {} subscribers, {} transactions, {:.1} % injected loss",
        publisher.control_addr(),
        db.group(),
        a.subscribers,
        a.transactions,
        a.loss * 100.0
    );
    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let trust = ServerTrust::Fingerprint(publisher.fingerprint().unwrap_or_default().into());
        let mut sc = SubscriberConfig::new(
            root.join(format!("subscriber-{i}")),
            publisher.control_addr(),
            trust,
        );
        sc.loss = (a.loss > 0.0).then_some(LossConfig {
            probability: a.loss,
            burst_len: 1,
            seed: a.seed.wrapping_add(u64::from(i) + 1),
        });
        let s = Subscriber::open(sc)?;
        let sub = s.subscribe("demo", |_| {})?;
        subs.push((s, sub));
    }

    let bar = ProgressBar::new(u64::from(a.transactions));
    bar.set_style(ProgressStyle::with_template(
        "publishing {bar:40} {pos}/{len} {per_sec}",
    )?);
    let t0 = Instant::now();
    let per = a.transactions / a.threads;
    let last = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let n = if t == 0 {
                    a.transactions - per * (a.threads - 1)
                } else {
                    per
                };
                let (db, bar) = (&db, &bar);
                s.spawn(move || publish(db, n, a.seed ^ (u64::from(t) << 32), a.max_value, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .try_fold(0, |m, r| r.map(|v| m.max(v)))
    })?;
    bar.finish_and_clear();
    let publish_time = t0.elapsed();
    for (_, sub) in &subs {
        sub.wait_for_version(last, Duration::from_secs(a.timeout))?;
    }
    let converge_time = t0.elapsed();
    let master = db.snapshot()?;
    let master_digest = state_digest(&master);
    println!(
        "published versions {}..={last} in {:.2} s; all replicas at {last} after {:.2} s",
        start_version + 1,
        publish_time.as_secs_f64(),
        converge_time.as_secs_f64()
    );
    println!(
        "master: {} records, digest {master_digest:016x}",
        master.len()
    );
    let mut ok = true;
    for (i, (_, sub)) in subs.iter().enumerate() {
        let replica: Vec<_> = sub.iter()?.collect();
        let digest = state_digest(&replica);
        let same = digest == master_digest && replica == master;
        ok &= same;
        let st = sub.stats();
        println!(
            "subscriber {i}: version {}, {} records, digest {digest:016x} {}, packets lost {}, repaired {} packets ({} bytes) + {} updates from the journal ({} bytes)",
            sub.version(),
            replica.len(),
            if same { "= master" } else { "DIFFERS" },
            st.dropped_injected,
            st.packets_repaired,
            st.packet_repair_bytes,
            st.repair_updates,
            st.repair_bytes
        );
    }
    let p = publisher.stats();
    let multicast = p.bytes_sent;
    let total = multicast + p.repair_bytes_sent;
    let unicast = p.bytes_committed * u64::from(a.subscribers);
    println!(
        "publisher sent {} multicast + {} repair = {} bytes; unicast to each subscriber would be at least {} bytes ({} × {} bytes of updates): {:.1} % saved",
        multicast,
        p.repair_bytes_sent,
        total,
        unicast,
        a.subscribers,
        p.bytes_committed,
        100.0 * (1.0 - total as f64 / unicast.max(1) as f64)
    );
    for (s, sub) in subs {
        sub.close()?;
        s.close()?;
    }
    publisher.close()?;
    if ok {
        println!("OK: every replica equals the master");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: a replica differs from the master");
        Ok(ExitCode::FAILURE)
    }
}
