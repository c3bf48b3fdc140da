//! Two sites, as a user would deploy them: site A holds the master (`mcsync serve`), site B
//! two multicast subscribers and one unicast-only subscriber (`mcsync subscribe
//! [--unicast]`), and a relay host with one leg in each site (`mcsync relay`) carries the
//! database from A's multicast to B's. The relay's upstream leg loses 10 % of what it
//! receives (`--inject-loss 0.1`: this machine's kernel has no netem), and the relay is
//! killed with SIGKILL midway while the master keeps committing, then restarted.
//!
//! At the end every replica in site B holds exactly the master's records (read from the
//! stores themselves), and each subscriber's lag behind the master is printed.
//!
//! Needs root and `ip netns`; without them it prints why and passes. Addresses are
//! 10.201.x inside namespaces the test creates and deletes; groups are in 239.0.0.0/8.

use mcsync::auth::UsersFile;
use mcsync::store::{PublisherStore, SubscriberStore};
use mcsync_tests::netns::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PUB_IP: &str = "10.201.1.1";
const RELAY_A: &str = "10.201.1.2";
const RELAY_B: &str = "10.201.2.1";
const SITE_B: &str = "10.201.2.2";
const MASTER: &str = "10.201.1.1:47000";
const RELAY: &str = "10.201.2.1:47001";
const DB: &str = "inv";
const UPSTREAM_PASSWORD: &str = "relay-secret";
const PASSWORD: &str = "site-b-secret";

/// The fingerprint in a `serve` / `relay` banner line.
fn fingerprint_in(l: &str) -> Option<String> {
    let rest = l.split("fingerprint ").nth(1)?;
    Some(rest.split(')').next()?.to_owned())
}

/// `mcsync relay` on the relay host: upstream from the master on leg A (losing 10 %),
/// downstream to site B on leg B.
fn start_relay(ns: &str, bin: &Path, dir: &Path, users: &Path, master_fp: &str) -> (Proc, String) {
    let mut child = exec(ns, bin)
        .arg("relay")
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--server",
            MASTER,
            "--fingerprint",
            master_fp,
            "--user",
            "relay",
        ])
        .args([
            "--database",
            DB,
            "--interface",
            RELAY_A,
            "--inject-loss",
            "0.1",
        ])
        .args(["--listen", RELAY, "--downstream-interface", RELAY_B])
        .args(["--groups", "239.201.2.0/24", "--ports", "47200-47209"])
        .arg("--users")
        .arg(users)
        .env("MCSYNC_PASSWORD", UPSTREAM_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mcsync relay");
    let (_, rx) = collect_lines(child.stdout.take().unwrap());
    let proc = Proc(child);
    let fp = wait_for(&rx, "the relay's banner", |l| {
        l.starts_with("relaying database")
            .then(|| fingerprint_in(l))?
    });
    (proc, fp)
}

/// One `mcsync subscribe` in site B.
struct Sub {
    name: &'static str,
    _proc: Proc,
    dir: PathBuf,
    metrics: String,
}

impl Sub {
    fn start(
        ns: &str,
        bin: &Path,
        dir: PathBuf,
        name: &'static str,
        fp: &str,
        unicast: bool,
    ) -> Sub {
        let mut cmd = exec(ns, bin);
        cmd.arg("subscribe")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--server", RELAY, "--database", DB, "--user", "ops"])
            .args(["--fingerprint", fp, "--metrics", "127.0.0.1:0"])
            .env("MCSYNC_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if unicast {
            cmd.arg("--unicast");
        } else {
            cmd.args(["--interface", SITE_B]);
        }
        let mut child = cmd.spawn().expect("start mcsync subscribe");
        let (_, rx) = collect_lines(child.stderr.take().unwrap());
        let proc = Proc(child);
        let metrics = metrics_addr(&rx);
        Sub {
            name,
            _proc: proc,
            dir,
            metrics,
        }
    }

    fn get(&self, ns: &str, name: &str) -> f64 {
        metrics(ns, &self.metrics, "mcsync_subscription_", DB)
            .get(name)
            .copied()
            .unwrap_or(0.0)
    }
}

/// `mcsync serve` at site A, fed `put` lines; remembers the latest version it printed.
struct Master {
    proc: Proc,
    stdin: ChildStdin,
    versions: mpsc::Receiver<String>,
    puts: u64,
    last: u64,
}

impl Master {
    fn put(&mut self, i: u64) {
        writeln!(self.stdin, "put k{:04} v{i}", i % 500).expect("write to mcsync serve");
        self.puts += 1;
    }

    /// Waits until every put so far was committed; returns the latest version.
    fn committed(&mut self) -> u64 {
        while self.last < self.puts {
            let v = wait_for(&self.versions, "a committed version", |l| {
                l.strip_prefix("version ")?.parse::<u64>().ok()
            });
            self.last = self.last.max(v);
        }
        self.last
    }
}

/// Every record of a replica store, and its version.
fn replica(dir: &Path) -> (u64, BTreeMap<Vec<u8>, Vec<u8>>) {
    let s = SubscriberStore::open(dir, 64 << 20).expect("reopen a replica");
    let t = s.tables(DB).unwrap();
    let v = s.applied_version(DB).unwrap();
    (v, s.all(t).unwrap().into_iter().collect())
}

#[test]
fn a_relay_carries_site_a_to_site_b_through_loss_and_a_kill() {
    if let Some(why) = unavailable() {
        println!("skipped: {why}");
        return;
    }
    let t0 = Instant::now();
    let bin = mcsync_tests::mcsync_bin();
    let mut net = Net::new();
    let (pub_ns, relay_ns, b_ns) = (net.host("pub"), net.host("relay"), net.host("siteb"));
    let (site_a, site_b) = (net.switch("swa"), net.switch("swb"));
    net.plug(&pub_ns, &site_a, &format!("{PUB_IP}/24"), true);
    net.plug(&relay_ns, &site_a, &format!("{RELAY_A}/24"), false);
    net.plug(&relay_ns, &site_b, &format!("{RELAY_B}/24"), true);
    net.plug(&b_ns, &site_b, &format!("{SITE_B}/24"), true);
    let tmp = tempfile::tempdir().unwrap();
    let (up_users, down_users) = (tmp.path().join("users-a"), tmp.path().join("users-b"));
    UsersFile::add_user(&up_users, "relay", UPSTREAM_PASSWORD, None, &[], false).unwrap();
    UsersFile::add_user(&down_users, "ops", PASSWORD, None, &[], false).unwrap();

    let pub_dir = tmp.path().join("master");
    let mut child = exec(&pub_ns, &bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(&pub_dir)
        .args(["--database", DB, "--listen", MASTER, "--interface", PUB_IP])
        .args(["--groups", "239.201.1.0/24", "--ports", "47100-47109"])
        .arg("--users")
        .arg(&up_users)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mcsync serve");
    let stdin = child.stdin.take().unwrap();
    let (_, versions) = collect_lines(child.stdout.take().unwrap());
    let master_fp = wait_for(&versions, "the master's fingerprint", fingerprint_in);
    let mut master = Master {
        proc: Proc(child),
        stdin,
        versions,
        puts: 0,
        last: 0,
    };
    let relay_dir = tmp.path().join("relay");
    let (relay, relay_fp) = start_relay(&relay_ns, &bin, &relay_dir, &down_users, &master_fp);
    let subs = [
        Sub::start(
            &b_ns,
            &bin,
            tmp.path().join("b1"),
            "b1 (multicast)",
            &relay_fp,
            false,
        ),
        Sub::start(
            &b_ns,
            &bin,
            tmp.path().join("b2"),
            "b2 (multicast)",
            &relay_fp,
            false,
        ),
        Sub::start(
            &b_ns,
            &bin,
            tmp.path().join("bu"),
            "bu (unicast-only)",
            &relay_fp,
            true,
        ),
    ];
    println!("two sites up in {:?}", t0.elapsed());

    let converge = |what: &str, subs: &[Sub], v: u64| {
        let t = Instant::now();
        for s in subs {
            wait_until(what, || s.get(&b_ns, "version") >= v as f64);
            println!("  {} at version {v} after {:?}", s.name, t.elapsed());
        }
    };
    let mut i = 0;
    for _ in 0..400 {
        i += 1;
        master.put(i);
    }
    let v1 = master.committed();
    converge("site B reaches the master", &subs, v1);

    // The relay dies mid-stream (kill -9) while the master goes on, and comes back.
    for _ in 0..200 {
        i += 1;
        master.put(i);
    }
    drop(relay);
    println!("relay killed at {:?}", t0.elapsed());
    for _ in 0..300 {
        i += 1;
        master.put(i);
    }
    let (_relay, fp_again) = start_relay(&relay_ns, &bin, &relay_dir, &down_users, &master_fp);
    assert_eq!(
        fp_again, relay_fp,
        "the relay keeps its identity across a restart"
    );
    for _ in 0..300 {
        i += 1;
        master.put(i);
    }
    let last = master.committed();
    let lag: Vec<String> = subs
        .iter()
        .map(|s| format!("{} {}", s.name, last as f64 - s.get(&b_ns, "version")))
        .collect();
    println!(
        "lag in versions right after the last commit: {}",
        lag.join(", ")
    );
    converge(
        "site B reaches the master after the relay's restart",
        &subs,
        last,
    );
    for s in &subs {
        let m = metrics(&b_ns, &s.metrics, "mcsync_subscription_", DB);
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
        println!(
            "{}: latency p50 {:.1} ms p99 {:.1} ms, {} datagrams ({} pushed by unicast), {} catch-ups, {} repairs",
            s.name,
            g("latency_p50_us") / 1e3,
            g("latency_p99_us") / 1e3,
            g("packets_received_total"),
            g("unicast_datagrams_total"),
            g("catchups_journal_total"),
            g("packets_repaired_total"),
        );
        assert!(g("packets_received_total") > 0.0, "{}: {m:?}", s.name);
        if s.name.contains("unicast") {
            assert_eq!(
                g("unicast_datagrams_total"),
                g("packets_received_total"),
                "{m:?}"
            );
        } else {
            assert_eq!(g("unicast_datagrams_total"), 0.0, "{m:?}");
        }
    }

    // Everything stops; the stores themselves are compared.
    let Master { proc, stdin, .. } = master;
    drop(stdin);
    let mut proc = proc;
    let deadline = Instant::now() + DEADLINE;
    while proc.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "mcsync serve did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dirs: Vec<(&str, PathBuf)> = subs.into_iter().map(|s| (s.name, s.dir)).collect();
    let store = PublisherStore::open(&pub_dir, 64 << 20).unwrap();
    let t = store.tables(DB).unwrap();
    assert_eq!(store.last_version(DB).unwrap(), last);
    let want: BTreeMap<_, _> = store.state(t).unwrap().into_iter().collect();
    assert_eq!(want.len(), 500);
    for (name, dir) in dirs {
        let (v, got) = replica(&dir);
        assert_eq!(v, last, "{name}");
        assert!(got == want, "{name}: the replica differs from the master");
    }
    println!(
        "every replica equals the master at version {last}; {:?}",
        t0.elapsed()
    );
}
