//! A publisher or a subscriber (with a host store of its own) as a child process of the
//! crash test (`tests/tests/crash.rs`), which SIGKILLs it at seeded moments or lets a crash
//! point kill it (`MCSYNC_CRASH_AT=<point>:<n>`, see `mcsync::crash`).
//!
//! ```text
//! crash_node publisher --dir D --listen ADDR --group G:PORT --seed S --acks FILE
//!                      [--durability sync|async]
//!                      [--target V] [--retention-min-count K]
//! crash_node subscriber --dir D --host-dir H --server ADDR --fingerprint F
//!                       [--compact-after N] [--until V] [--replica-durability MODE]
//! ```
//!
//! Both print progress lines on stdout and stop cleanly (exit 0) when stdin closes.
//! Publisher: `ready <fingerprint> <addr> <version>`, then `v <version>` after each commit
//! returned (and was appended to the acks file), `idle <version>` on reaching its target;
//! stdin lines `target <V>` raise the target. Subscriber: `ready <host version> rebuilds
//! <n>` (`n`: 1 if its replica store was discarded at open, see `ReplicaDurability`), then
//! `host <version>` after each host transaction (preceded by `reset <version>` when the
//! update was a reset). A reset (`Update::reset`) replaces the
//! host's table; one that would take the host back to an older version is a failure
//! (exit 3, like a duplicate). A duplicate delivery to the host writes
//! `<host dir>/DUPLICATE` and exits 3; a subscription that stops by itself exits 4.

use lmdb::{DatabaseFlags, Environment, Transaction, WriteFlags};
use mcsync::{
    Authentication, Durability, Publisher, PublisherConfig, Retention, ServerTrust,
    SubscribeOptions, Subscriber, SubscriberConfig, Update,
};
use mcsync_tests::crash::{ops_for, summary, DB};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Logs mcsync's warnings (or `MCSYNC_LOG=info|debug`) to stderr with the process id.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{} {}] {}", std::process::id(), r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn init_log() {
    let level = match std::env::var("MCSYNC_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Ends the process with `code` after saying why (a failure the test reports).
fn die(code: i32, why: impl std::fmt::Display) -> ! {
    eprintln!("crash_node {}: {why}", std::process::id());
    std::process::exit(code)
}

fn args() -> (String, HashMap<String, String>) {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_default();
    let mut flags = HashMap::new();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            die(2, format!("unexpected argument {flag:?}"))
        };
        let value = it
            .next()
            .unwrap_or_else(|| die(2, format!("--{name} needs a value")));
        flags.insert(name.to_owned(), value);
    }
    (cmd, flags)
}

fn flag<T: std::str::FromStr>(flags: &HashMap<String, String>, name: &str) -> T {
    let v = flags
        .get(name)
        .unwrap_or_else(|| die(2, format!("--{name} is required")));
    v.parse()
        .unwrap_or_else(|_| die(2, format!("--{name}: bad value {v:?}")))
}

fn optional<T: std::str::FromStr>(flags: &HashMap<String, String>, name: &str) -> Option<T> {
    flags.contains_key(name).then(|| flag(flags, name))
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    // The test reads progress from these lines; a closed pipe means it is gone.
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Reads stdin on a thread: each `target <V>` line raises `target`; EOF sends on `done`.
fn watch_stdin(target: Arc<AtomicU64>, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(v) = line.strip_prefix("target ") {
                if let Ok(v) = v.trim().parse::<u64>() {
                    target.fetch_max(v, Ordering::SeqCst);
                }
            }
        }
        let _ = done.send(());
    });
}

fn main() {
    init_log();
    let (cmd, flags) = args();
    match cmd.as_str() {
        "publisher" => publisher(&flags),
        "subscriber" => subscriber(&flags),
        _ => die(2, "usage: crash_node publisher|subscriber --flag value ..."),
    }
}

fn publisher(flags: &HashMap<String, String>) {
    let dir: PathBuf = flag(flags, "dir");
    let group: SocketAddr = flag(flags, "group");
    let SocketAddr::V4(group) = group else {
        die(2, "--group must be IPv4")
    };
    let seed: u64 = flag(flags, "seed");
    let acks: PathBuf = flag(flags, "acks");
    let mut c = PublisherConfig::new(&dir);
    c.authentication = Authentication::Open;
    c.control_addr = flag(flags, "listen");
    c.multicast.group = *group.ip();
    c.multicast.port = group.port();
    c.multicast.group_count = 1;
    c.durability = match flags.get("durability").map(String::as_str) {
        None | Some("sync") => Durability::Sync,
        Some("async") => Durability::Async,
        Some(other) => die(2, format!("--durability {other}: expected sync or async")),
    };
    c.retention = Retention {
        max_bytes: 1,
        max_age: Duration::from_secs(24 * 3600),
        min_count: optional(flags, "retention-min-count").unwrap_or(150),
        min_free_disk_bytes: 0,
    };
    let p = Publisher::open(c).unwrap_or_else(|e| die(5, format!("opening publisher: {e}")));
    let db = p
        .database(DB)
        .unwrap_or_else(|e| die(5, format!("opening database: {e}")));
    let mut acks = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&acks)
        .unwrap_or_else(|e| die(5, format!("opening acks file: {e}")));
    let fp = p
        .fingerprint()
        .unwrap_or_else(|| die(5, "no TLS fingerprint"));
    say(format!("ready {fp} {} {}", p.control_addr(), db.version()));
    let target = Arc::new(AtomicU64::new(optional(flags, "target").unwrap_or(0)));
    let (done_tx, done) = mpsc::channel();
    watch_stdin(target.clone(), done_tx);
    let mut idle_at = None;
    // The journaled version at open; from then on, what the commits returned.
    let mut current = db.version();
    loop {
        if done.try_recv().is_ok() {
            p.close()
                .unwrap_or_else(|e| die(5, format!("closing publisher: {e}")));
            std::process::exit(0);
        }
        if current >= target.load(Ordering::SeqCst) {
            if idle_at != Some(current) {
                // Trim now rather than at the next maintenance tick, so a subscriber the
                // test keeps away meets a trimmed journal.
                if let Err(e) = p.apply_retention() {
                    die(5, format!("retention: {e}"));
                }
                idle_at = Some(current);
                say(format!("idle {current}"));
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let next = current + 1;
        let ops = ops_for(seed, next);
        let result = if ops.len() == 1 {
            let op = &ops[0];
            match op.kind {
                mcsync::OpKind::Put => db.put(&op.key, &op.value),
                mcsync::OpKind::Delete => db.delete(&op.key),
            }
        } else {
            let mut t = db.transaction();
            for op in &ops {
                let r = match op.kind {
                    mcsync::OpKind::Put => t.put(&op.key, &op.value),
                    mcsync::OpKind::Delete => t.delete(&op.key),
                };
                r.unwrap_or_else(|e| die(5, format!("staging version {next}: {e}")));
            }
            t.commit()
        };
        let v = result.unwrap_or_else(|e| die(5, format!("committing version {next}: {e}")));
        if v != next {
            die(5, format!("commit got version {v}, expected {next}"));
        }
        // One write(2) per line: a kill after it returns never loses it.
        let line = format!("{v} {}\n", summary(&ops));
        acks.write_all(line.as_bytes())
            .and_then(|_| acks.flush())
            .unwrap_or_else(|e| die(5, format!("writing acks: {e}")));
        say(format!("v {v}"));
        current = v;
    }
}

/// The host's own store: `rows` (its table), `meta` (`version`: the version it holds),
/// `seen` (every version it was called with), updated in one LMDB transaction per update.
struct HostStore {
    env: Environment,
    rows: lmdb::Database,
    meta: lmdb::Database,
    seen: lmdb::Database,
    dir: PathBuf,
}

impl HostStore {
    fn open(dir: &Path) -> lmdb::Result<HostStore> {
        std::fs::create_dir_all(dir).map_err(|_| lmdb::Error::Invalid)?;
        let env = Environment::new()
            .set_max_dbs(8)
            .set_map_size(1 << 30)
            .open(dir)?;
        let rows = env.create_db(Some("rows"), DatabaseFlags::empty())?;
        let meta = env.create_db(Some("meta"), DatabaseFlags::empty())?;
        let seen = env.create_db(Some("seen"), DatabaseFlags::empty())?;
        Ok(HostStore {
            env,
            rows,
            meta,
            seen,
            dir: dir.to_owned(),
        })
    }

    fn version(&self) -> lmdb::Result<u64> {
        let txn = self.env.begin_ro_txn()?;
        let v = match txn.get(self.meta, b"version") {
            Ok(b) => u64::from_be_bytes(b.try_into().map_err(|_| lmdb::Error::Corrupted)?),
            Err(lmdb::Error::NotFound) => 0,
            Err(e) => return Err(e),
        };
        txn.commit()?;
        Ok(v)
    }

    /// Applies `u` as a host would, in one transaction with its version. A version the
    /// host already holds is a duplicate delivery: recorded in `DUPLICATE`, exit 3.
    fn apply(&self, u: &Update) -> lmdb::Result<()> {
        let mut txn = self.env.begin_rw_txn()?;
        let held = match txn.get(self.meta, b"version") {
            Ok(b) => u64::from_be_bytes(b.try_into().map_err(|_| lmdb::Error::Corrupted)?),
            Err(lmdb::Error::NotFound) => 0,
            Err(e) => return Err(e),
        };
        let seen_before = match txn.get(self.seen, &u.version.to_be_bytes()) {
            Ok(_) => true,
            Err(lmdb::Error::NotFound) => false,
            Err(e) => return Err(e),
        };
        if u.reset && u.version < held {
            let why = format!(
                "a reset at version {} took the host back from {held}\n",
                u.version
            );
            let _ = std::fs::write(self.dir.join("DUPLICATE"), &why);
            die(3, why.trim_end());
        }
        if !u.reset && (u.version <= held || seen_before) {
            let why = format!(
                "version {} delivered again (host holds {held}, seen before: {seen_before}, \
                 reset: {})\n",
                u.version, u.reset
            );
            let _ = std::fs::write(self.dir.join("DUPLICATE"), &why);
            die(3, why.trim_end());
        }
        if u.reset {
            txn.clear_db(self.rows)?;
        }
        for op in &u.ops {
            match op.kind {
                mcsync::OpKind::Put => {
                    txn.put(self.rows, &op.key, &op.value, WriteFlags::empty())?
                }
                mcsync::OpKind::Delete => match txn.del(self.rows, &op.key, None) {
                    Ok(()) | Err(lmdb::Error::NotFound) => {}
                    Err(e) => return Err(e),
                },
            }
        }
        txn.put(
            self.meta,
            b"version",
            &u.version.to_be_bytes(),
            WriteFlags::empty(),
        )?;
        txn.put(
            self.seen,
            &u.version.to_be_bytes(),
            b"",
            WriteFlags::empty(),
        )?;
        txn.commit()
    }
}

fn subscriber(flags: &HashMap<String, String>) {
    let dir: PathBuf = flag(flags, "dir");
    let host_dir: PathBuf = flag(flags, "host-dir");
    let server: SocketAddr = flag(flags, "server");
    let fp: String = flag(flags, "fingerprint");
    let until: Option<u64> = optional(flags, "until");
    let mut c = SubscriberConfig::new(&dir, server, ServerTrust::Fingerprint(fp));
    c.user = "crash".into();
    c.silence_timeout = Duration::from_millis(1000);
    c.repair_io_timeout = Duration::from_secs(5);
    c.compact_catch_up_after = optional(flags, "compact-after").unwrap_or(25);
    if let Some(mode) = flags.get("replica-durability") {
        c.replica_durability = mcsync::ReplicaDurability::parse(mode)
            .unwrap_or_else(|e| die(2, format!("--replica-durability: {e}")));
    }
    let s = Subscriber::open(c).unwrap_or_else(|e| die(4, format!("opening subscriber: {e}")));
    let host = Arc::new(
        HostStore::open(&host_dir).unwrap_or_else(|e| die(4, format!("opening host store: {e}"))),
    );
    let (done_tx, done) = mpsc::channel();
    let reached = Arc::new(AtomicBool::new(false));
    // The publisher may be down (the test kills it too): keep trying to register.
    let deadline = Instant::now() + Duration::from_secs(120);
    let sub = loop {
        let after = host
            .version()
            .unwrap_or_else(|e| die(4, format!("reading host version: {e}")));
        let (h, r, tx) = (host.clone(), reached.clone(), done_tx.clone());
        let callback = Box::new(move |u: &Update| {
            if let Err(e) = h.apply(u) {
                die(
                    4,
                    format!("host transaction for version {}: {e}", u.version),
                );
            }
            if u.reset {
                say(format!("reset {}", u.version));
            }
            say(format!("host {}", u.version));
            if until.is_some_and(|t| u.version >= t) && !r.swap(true, Ordering::SeqCst) {
                let _ = tx.send(());
            }
        });
        let options = SubscribeOptions {
            callback: Some(callback),
            after: Some(after),
            ..SubscribeOptions::default()
        };
        match s.subscribe_with_options(DB, options) {
            Ok(sub) => {
                say(format!(
                    "ready {after} rebuilds {}",
                    sub.stats().replica_rebuilds
                ));
                break sub;
            }
            Err(e) if Instant::now() < deadline => {
                log::info!("subscribing: {e}; trying again");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => die(4, format!("subscribing: {e}")),
        }
    };
    watch_stdin(Arc::new(AtomicU64::new(0)), done_tx);
    loop {
        match done.recv_timeout(Duration::from_millis(100)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if sub.is_closed() {
            let why = sub.wait_for_version(u64::MAX, Duration::ZERO).err();
            die(4, format!("the subscription stopped by itself: {why:?}"));
        }
    }
    sub.close()
        .unwrap_or_else(|e| die(4, format!("closing subscription: {e}")));
    s.close()
        .unwrap_or_else(|e| die(4, format!("closing subscriber: {e}")));
    std::process::exit(0);
}
