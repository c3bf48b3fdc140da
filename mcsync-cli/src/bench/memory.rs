//! (f) Memory: the resident set of a publisher and of one subscriber, each in its own
//! process (`mcsync serve` fed on standard input, `mcsync subscribe`), at a steady rate and
//! under a backlog (the subscriber stopped with SIGSTOP while the publisher goes on, then
//! resumed to catch up).

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicU64;

/// A process's memory: its whole resident set (`VmRSS`, which counts the pages of the
/// LMDB files it mapped and touched: page cache the kernel can drop) and the anonymous
/// part of it (`RssAnon`: heap and stacks, what the process itself holds).
#[derive(Serialize, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Mem {
    pub(super) rss_kib: u64,
    pub(super) anon_kib: u64,
}

/// One memory run.
#[derive(Serialize, Default)]
pub(super) struct MemoryRow {
    pub(super) value_bytes: usize,
    pub(super) steady_updates: usize,
    pub(super) steady_rate: u64,
    /// Median of the samples taken in the second half of the steady load.
    pub(super) publisher_steady: Mem,
    pub(super) publisher_peak: Mem,
    pub(super) subscriber_steady: Mem,
    pub(super) subscriber_peak: Mem,
    pub(super) backlog_updates: usize,
    pub(super) backlog_mb: f64,
    /// Peak while the stopped subscriber fell behind.
    pub(super) publisher_backlog_peak: Mem,
    /// Peak while the resumed subscriber caught up.
    pub(super) subscriber_catchup_peak: Mem,
    pub(super) catchup_s: f64,
}

/// Kills the child when dropped (the bench ending early leaves no process behind).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped child must run again to die of SIGKILL promptly everywhere.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Memory of `pid` (zeros if it cannot be read).
fn mem(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
    }
}

/// Follows a child's standard output: stores the number each line starts with (or
/// follows `version `) in `last`; the first line goes to `first`.
fn follow(
    out: std::process::ChildStdout,
    last: Arc<AtomicU64>,
    first: std::sync::mpsc::SyncSender<String>,
) {
    std::thread::spawn(move || {
        let mut first = Some(first);
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(tx) = first.take() {
                let _ = tx.send(line.clone());
            }
            let l = line.strip_prefix("version ").unwrap_or(&line);
            if let Some(v) = l.split(' ').next().and_then(|v| v.parse::<u64>().ok()) {
                last.fetch_max(v, Ordering::Relaxed);
            }
        }
    });
}

/// Samples both processes' RSS every 50 ms until `done` holds (or `limit` passes):
/// returns each process's samples.
fn sample_until(
    pids: (u32, u32),
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(Vec<Mem>, Vec<Mem>), String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + limit;
    loop {
        a.push(mem(pids.0));
        b.push(mem(pids.1));
        if done() {
            return Ok((a, b));
        }
        if Instant::now() > end {
            return Err(format!("memory section: no progress within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Median of each figure over `v`'s second half (the first is still warming up).
fn steady(v: &[Mem]) -> Mem {
    let v = &v[v.len() / 2..];
    let median = |f: fn(&Mem) -> u64| {
        let mut x: Vec<u64> = v.iter().map(f).collect();
        x.sort_unstable();
        x.get(x.len() / 2).copied().unwrap_or(0)
    };
    Mem {
        rss_kib: median(|m| m.rss_kib),
        anon_kib: median(|m| m.anon_kib),
    }
}

/// Highest of each figure over `v`.
fn peak(v: &[Mem]) -> Mem {
    Mem {
        rss_kib: v.iter().map(|m| m.rss_kib).max().unwrap_or(0),
        anon_kib: v.iter().map(|m| m.anon_kib).max().unwrap_or(0),
    }
}

/// Writes `n` puts of `value_bytes` (hex of random bytes) to the publisher, at most
/// `rate` per second (0 = as fast as it reads them).
fn feed(
    stdin: &mut ChildStdin,
    from: usize,
    n: usize,
    value_bytes: usize,
    rate: u64,
    rng: &mut impl Rng,
) -> BenchResult<()> {
    let t0 = Instant::now();
    let mut raw = vec![0u8; value_bytes / 2];
    let mut line = String::with_capacity(value_bytes + 32);
    for i in 0..n {
        if rate > 0 {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                stdin.flush()?;
                std::thread::sleep(wait);
            }
        }
        rng.fill(&mut raw[..]);
        line.clear();
        line.push_str(&format!("put k{:08} ", from + i));
        for b in &raw {
            line.push_str(&format!("{b:02x}"));
        }
        line.push('\n');
        stdin.write_all(line.as_bytes())?;
    }
    stdin.flush()?;
    Ok(())
}

// Longer than 80 lines: one scenario, start to end (processes, steady load, backlog,
// catch-up), each step short and in order.
pub(super) fn memory(ctx: &mut Ctx, counts: &Counts) -> BenchResult<MemoryRow> {
    let dir = tempfile::Builder::new()
        .prefix("mcsync-bench-mem-")
        .tempdir_in(&ctx.data_root)?;
    let users = dir.path().join("users");
    mcsync::auth::UsersFile::add_user(&users, "bench", "bench", None, &[], false)?;
    let control = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let ep = ctx.endpoint();
    let exe = std::env::current_exe()?;
    let mut serve = Proc(
        Command::new(&exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("pub"))
            .arg("--users")
            .arg(&users)
            .args(["--database", "bench", "--listen", &control.to_string()])
            .args(["--groups", &format!("{}/32", ep.ip())])
            .args(["--ports", &format!("{0}-{0}", ep.port())])
            .args(["--durability", "async"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pub_version = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    follow(
        serve.0.stdout.take().ok_or("serve stdout")?,
        pub_version.clone(),
        tx,
    );
    let banner = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "mcsync serve printed nothing")?;
    let fp = banner
        .split("fingerprint ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("no fingerprint in {banner:?}"))?
        .to_owned();
    let mut sub = Proc(
        Command::new(&exe)
            .arg("subscribe")
            .arg("--data-dir")
            .arg(dir.path().join("sub"))
            .args(["--server", &control.to_string(), "--database", "bench"])
            .args(["--user", "bench", "--fingerprint", &fp])
            .args(["--replica-durability", &ctx.replica_durability.to_string()])
            .env("MCSYNC_PASSWORD", "bench")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let sub_version = Arc::new(AtomicU64::new(0));
    let (tx, _rx) = std::sync::mpsc::sync_channel(1);
    follow(
        sub.0.stdout.take().ok_or("subscribe stdout")?,
        sub_version.clone(),
        tx,
    );
    let pids = (serve.0.id(), sub.0.id());
    let mut stdin = serve.0.stdin.take().ok_or("serve stdin")?;
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let value_bytes = 1024;
    let limit = Duration::from_secs(300);
    let reached = |v: &Arc<AtomicU64>, n: u64| {
        let v = v.clone();
        move || v.load(Ordering::Relaxed) >= n
    };
    // Subscribed and receiving.
    feed(&mut stdin, 0, 1, value_bytes, 0, &mut rng)?;
    sample_until(pids, limit, reached(&sub_version, 1))?;

    ctx.bar.set_message("memory: steady load");
    let (n, rate) = (counts.memory.0, 5_000);
    let (p, s) = std::thread::scope(|sc| -> BenchResult<_> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let sampler = sc.spawn(move || sample_until(pids, limit, || stop2.load(Ordering::Relaxed)));
        let fed = feed(&mut stdin, 1, n, value_bytes, rate, &mut rng);
        let caught_up = sample_until(pids, limit, reached(&sub_version, 1 + n as u64));
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().map_err(|_| "sampler panicked")??;
        fed?;
        caught_up?;
        Ok(samples)
    })?;
    let mut row = MemoryRow {
        value_bytes,
        steady_updates: n,
        steady_rate: rate,
        publisher_steady: steady(&p),
        publisher_peak: peak(&p),
        subscriber_steady: steady(&s),
        subscriber_peak: peak(&s),
        ..MemoryRow::default()
    };
    ctx.bar.inc(1);

    ctx.bar.set_message("memory: backlog");
    let m = counts.memory.1;
    let last = (1 + n + m) as u64;
    unsafe { libc::kill(pids.1 as i32, libc::SIGSTOP) };
    let (p, _) = std::thread::scope(|sc| -> BenchResult<_> {
        let sampler = sc.spawn(|| sample_until(pids, limit, reached(&pub_version, last)));
        feed(&mut stdin, 1 + n, m, value_bytes, 0, &mut rng)?;
        Ok(sampler.join().map_err(|_| "sampler panicked")??)
    })?;
    unsafe { libc::kill(pids.1 as i32, libc::SIGCONT) };
    let t0 = Instant::now();
    let (_, s) = sample_until(pids, limit, reached(&sub_version, last))?;
    row.catchup_s = t0.elapsed().as_secs_f64();
    row.backlog_updates = m;
    row.backlog_mb = (m * value_bytes) as f64 / 1e6;
    row.publisher_backlog_peak = peak(&p);
    row.subscriber_catchup_peak = peak(&s);
    ctx.bar.inc(1);
    drop(stdin); // serve ends at the end of its input
    let _ = serve.0.wait();
    Ok(row)
}

/// Table (e).
pub(super) fn print(m: &MemoryRow) {
    let f = |x: Mem| {
        format!(
            "{:.1} ({:.1} anonymous)",
            x.rss_kib as f64 / 1024.0,
            x.anon_kib as f64 / 1024.0
        )
    };
    println!(
        "\n(f) Memory, MiB resident (of it anonymous), `mcsync serve` and one `mcsync subscribe`, {} B values",
        m.value_bytes
    );
    println!(
        "  steady, {} updates at {}/s: publisher {}, peak {}; subscriber {}, peak {}",
        m.steady_updates,
        m.steady_rate,
        f(m.publisher_steady),
        f(m.publisher_peak),
        f(m.subscriber_steady),
        f(m.subscriber_peak)
    );
    println!(
        "  backlog, {} updates ({:.0} MB) while the subscriber is stopped: publisher peak {}; then the subscriber catches up in {:.1} s, peak {}",
        m.backlog_updates,
        m.backlog_mb,
        f(m.publisher_backlog_peak),
        m.catchup_s,
        f(m.subscriber_catchup_peak)
    );
}
