//! A `mcsync relay` process killed with SIGKILL midway while the master commits: restarted
//! on the same data directory, it resumes exactly after its own journal, and every
//! downstream replica equals the master, its callbacks seeing each version once, in order.

use mcsync::auth::UsersFile;
use mcsync::{Publisher, ServerTrust, Subscriber, SubscriberConfig, Update};
use mcsync_tests::{assert_versions, publisher_config, wait_until, CONVERGE};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DB: &str = "ledger";
const PASSWORD: &str = "relay-secret";

/// A free port on 127.0.0.1 (bound and released), for the relay's control address, kept
/// across its restarts.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The relay child process; killed when dropped.
struct RelayProc(Child);

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mcsync relay` and waits for its "relaying database" line; returns the process,
/// its line channel and the fingerprint it prints.
fn start_relay(args: &[String], dir: &Path) -> (RelayProc, Receiver<String>, String) {
    let mut child = Command::new(mcsync_tests::mcsync_bin())
        .arg("relay")
        .args(args)
        .env("MCSYNC_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mcsync relay");
    let lines = mcsync_tests::lines_of(child.stdout.take().unwrap());
    let proc = RelayProc(child);
    let deadline = Instant::now() + CONVERGE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no 'relaying' line from the relay in {}", dir.display()));
        if let Some(rest) = line.split("fingerprint ").nth(1) {
            let fp = rest.split(')').next().unwrap().to_owned();
            return (proc, lines, fp);
        }
    }
}

/// A downstream subscriber's callbacks: every version, in order.
fn downstream(
    dir: &Path,
    control: &str,
    fp: &str,
) -> (Subscriber, mcsync::Subscription, Arc<Mutex<Vec<u64>>>) {
    let mut c = SubscriberConfig::new(
        dir,
        control.parse().unwrap(),
        ServerTrust::Fingerprint(fp.to_owned()),
    );
    c.user = "reader".into();
    c.secret = PASSWORD.into();
    let s = Subscriber::open(c).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let sub = s
        .subscribe(DB, move |u: &Update| s2.lock().unwrap().push(u.version))
        .unwrap();
    (s, sub, seen)
}

#[test]
fn a_relay_killed_midway_resumes_after_its_journal_and_downstream_stay_exact() {
    let seed: u64 = std::env::var("MCSYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (MCSYNC_SEED={seed} repeats this run)");
    let total = 1_500 + seed % 500;
    let kill_at = 300 + seed % 700;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("master"));
    let users = dir.path().join("users");
    UsersFile::add_user(&users, "relay", PASSWORD, None, &[], false).unwrap();
    UsersFile::add_user(&users, "reader", PASSWORD, None, &[], false).unwrap();
    cfg.authentication = mcsync::Authentication::UsersFile(users.clone());
    let master = Publisher::open(cfg).unwrap();
    let db = master.database(DB).unwrap();
    for i in 0..100u64 {
        db.put(format!("k{}", i % 50), format!("before {i}"))
            .unwrap();
    }
    let control = format!("127.0.0.1:{}", free_port());
    let (group, port) = mcsync_tests::unique_group();
    let args: Vec<String> = [
        "--data-dir",
        &dir.path().join("relay").display().to_string(),
        "--database",
        DB,
        "--server",
        &master.control_addr().to_string(),
        "--fingerprint",
        master.fingerprint().unwrap(),
        "--user",
        "relay",
        "--listen",
        &control,
        "--users",
        &users.display().to_string(),
        "--groups",
        &format!("{group}/32"),
        "--ports",
        &format!("{port}-{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (relay, _lines, fp) = start_relay(&args, &dir.path().join("relay"));
    let downs: Vec<_> = (0..2)
        .map(|i| downstream(&dir.path().join(format!("d{i}")), &control, &fp))
        .collect();
    let mut relay = Some(relay);
    let mut last = db.version();
    let mut rng = mcsync_tests::crash::SplitMix(seed);
    while last < total {
        let mut t = db.transaction();
        t.put(
            format!("k{}", rng.range(0, 200)),
            format!("value {last} {seed}"),
        )
        .unwrap();
        if rng.chance(10) {
            t.delete(format!("k{}", rng.range(0, 200))).unwrap();
        }
        last = t.commit().unwrap();
        if last == kill_at {
            // SIGKILL: no clean close; then the same command again.
            drop(relay.take());
            println!("relay killed at master version {last}");
            relay = Some(start_relay(&args, &dir.path().join("relay")).0);
        }
        if rng.chance(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let want = db.snapshot().unwrap();
    for (_, sub, seen) in &downs {
        sub.wait_for_version(last, CONVERGE).unwrap();
        wait_until(CONVERGE, || sub.iter().unwrap().collect::<Vec<_>>() == want);
        assert_versions(&seen.lock().unwrap(), 1..=last);
    }
    drop(relay);
}
