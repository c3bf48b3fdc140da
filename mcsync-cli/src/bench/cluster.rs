//! Starting what a scenario measures: a publisher and its subscribers on a fresh group and
//! port, and the threads that publish into it.

use super::*;
use mcsync::sync::Locked;

/// Shared state of a run: where stores go, which group and port come next, the bar.
pub(super) struct Ctx {
    pub(super) data_root: PathBuf,
    pub(super) group: Ipv4Addr,
    pub(super) port: u16,
    pub(super) next: u16,
    pub(super) datagram_bytes: usize,
    pub(super) max_pps: Option<u64>,
    pub(super) max_bps: Option<u64>,
    pub(super) publishers: usize,
    pub(super) seed: u64,
    pub(super) durability: Durability,
    pub(super) replica_durability: mcsync::ReplicaDurability,
    /// The next cluster's subscribers are unicast-only, and the publisher pushes to at most
    /// this many (0: none, they poll); `None`: multicast subscribers.
    pub(super) push: Option<usize>,
    pub(super) bar: ProgressBar,
}

impl Ctx {
    /// A group and port no other scenario of this run uses.
    pub(super) fn endpoint(&mut self) -> SocketAddr {
        let i = self.next;
        self.next = self.next.wrapping_add(1) % 500;
        let g = Ipv4Addr::from(u32::from(self.group) + u32::from(i));
        SocketAddr::from((g, self.port + i))
    }
}

/// (version, publish→applied µs) recorded by one subscriber's callback.
pub(super) type Samples = Arc<Mutex<Vec<(u64, u64)>>>;

/// A publisher and its subscribers on one group, with latency recording.
pub(super) struct Cluster {
    pub(super) publisher: Publisher,
    pub(super) db: Database,
    pub(super) subs: Vec<Subscription>,
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) samples: Vec<Samples>,
    pub(super) record: Arc<AtomicBool>,
    pub(super) heartbeat_initial: Duration,
    pub(super) _dir: tempfile::TempDir,
}

impl Cluster {
    /// A publisher and `n` subscribers, the first `lossy` of them with injected `loss`.
    pub(super) fn open(
        ctx: &mut Ctx,
        n: usize,
        loss: Option<f64>,
        lossy: usize,
    ) -> BenchResult<Cluster> {
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
        if let Some(max) = ctx.push {
            pc.multicast.max_unicast_targets = max;
        }
        if let Some(r) = ctx.max_pps {
            pc.multicast.max_packets_per_sec = r;
        }
        if let Some(r) = ctx.max_bps {
            pc.multicast.max_bytes_per_sec = r;
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
            sc.replica_durability = ctx.replica_durability;
            sc.unicast = ctx.push.is_some();
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
                    l2.locked()
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

    pub(super) fn wait_all(&self, v: u64) -> BenchResult<()> {
        for s in &self.subs {
            s.wait_for_version(v, CONVERGE)?;
        }
        Ok(())
    }

    pub(super) fn sub_stats(&self) -> Vec<SubscriptionStats> {
        self.subs.iter().map(|s| s.stats()).collect()
    }

    pub(super) fn close(self) -> BenchResult<()> {
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
pub(super) fn values(n: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v = vec![0u8; size];
            rng.fill(&mut v[..]);
            v
        })
        .collect()
}

pub(super) fn key(tag: &str, i: usize) -> String {
    format!("{tag}-{i:09}")
}

/// Publishes `values` as one put per update from `threads` threads; returns the highest
/// version.
pub(super) fn publish(
    db: &Database,
    tag: &str,
    values: &[Vec<u8>],
    threads: usize,
) -> BenchResult<u64> {
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
pub(super) struct Load {
    pub(super) updates: usize,
    pub(super) secs: f64,
    pub(super) p0: PublisherStats,
    pub(super) p1: PublisherStats,
    pub(super) s0: Vec<SubscriptionStats>,
    pub(super) s1: Vec<SubscriptionStats>,
}

impl Load {
    pub(super) fn updates_per_s(&self) -> f64 {
        self.updates as f64 / self.secs.max(1e-9)
    }
    pub(super) fn sub_sum(&self, f: impl Fn(&SubscriptionStats) -> u64) -> u64 {
        self.s1
            .iter()
            .zip(&self.s0)
            .map(|(a, b)| f(a).saturating_sub(f(b)))
            .sum()
    }
}

/// Opens a cluster, publishes `count` values of `size` bytes, waits until every
/// subscriber applied them, closes it.
pub(super) fn run_load(
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
