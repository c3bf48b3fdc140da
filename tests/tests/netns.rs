//! Two hosts, as a user would run them: the real `mcsync serve` in one network namespace
//! and `mcsync subscribe` processes in another, joined by a bridge (in a third namespace)
//! over veth pairs on 10.200.0.0/24, each with a multicast route. Subscribers given the
//! interface facing the publisher receive the stream by multicast and converge; one given
//! its own loopback receives nothing by multicast, still converges by unicast, and says
//! why (the silent-group warning and `multicast_silent_intervals`).
//!
//! Needs root and `ip netns`; without them it prints why and passes. Every namespace it
//! creates carries the test's PID in its name and is deleted on drop (the veths and the
//! bridge go with it), failure or not. Traffic stays inside those namespaces: 10.200.0.x
//! addresses and a 239.0.0.0/8 group.

use mcsync::auth::UsersFile;
use mcsync_tests::netns::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
const PUB_IP: &str = "10.200.0.1";
const SUB_IP: &str = "10.200.0.2";
const CONTROL: &str = "10.200.0.1:47000";
const DB: &str = "inv";
const PASSWORD: &str = "netns-secret";

/// Namespaces for a publisher host and a subscriber host, on one switch.
struct Hosts {
    publisher: String,
    subscriber: String,
    _net: Net,
}

impl Hosts {
    fn new() -> Hosts {
        let mut net = Net::new();
        let publisher = net.host("pub");
        let subscriber = net.host("sub");
        let switch = net.switch("sw");
        net.plug(&publisher, &switch, &format!("{PUB_IP}/24"), true);
        net.plug(&subscriber, &switch, &format!("{SUB_IP}/24"), true);
        Hosts {
            publisher,
            subscriber,
            _net: net,
        }
    }

    /// A command run inside namespace `ns`.
    fn exec(ns: &str, bin: &Path) -> Command {
        exec(ns, bin)
    }
}

/// One `mcsync subscribe` in the subscriber's namespace and what it says.
struct Sub {
    proc: Proc,
    dir: PathBuf,
    interface: &'static str,
    metrics: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    fn start(
        bin: &Path,
        ns: &str,
        dir: PathBuf,
        fingerprint: &str,
        interface: &'static str,
    ) -> Sub {
        let mut child = Hosts::exec(ns, bin)
            .arg("subscribe")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--server", CONTROL, "--database", DB, "--user", "ops"])
            .args(["--fingerprint", fingerprint, "--interface", interface])
            .args(["--metrics", "127.0.0.1:0"])
            .env("MCSYNC_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcsync subscribe");
        let (stderr, rx) = collect_lines(child.stderr.take().expect("stderr"));
        let proc = Proc(child);
        let metrics = metrics_addr(&rx);
        Sub {
            proc,
            dir,
            interface,
            metrics,
            stderr,
        }
    }

    /// The subscription's metrics (read from inside the subscriber's namespace).
    fn metrics(&self, ns: &str) -> HashMap<String, f64> {
        metrics(ns, &self.metrics, "mcsync_subscription_", DB)
    }

    fn get(&self, ns: &str, name: &str) -> f64 {
        self.metrics(ns).get(name).copied().unwrap_or(0.0)
    }
}

/// `mcsync serve` in the publisher's namespace, fed `put` lines.
struct Serve {
    proc: Proc,
    stdin: ChildStdin,
    versions: mpsc::Receiver<String>,
    puts: u64,
    last: u64,
}

impl Serve {
    fn put(&mut self, key: &str, value: &str) {
        writeln!(self.stdin, "put {key} {value}").expect("write to mcsync serve");
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

#[test]
fn subscribers_on_another_host_receive_by_multicast_on_the_interface_they_name() {
    if let Some(why) = unavailable() {
        println!("skipped: {why}");
        return;
    }
    let t0 = Instant::now();
    let bin = mcsync_tests::mcsync_bin();
    println!("mcsync binary ready in {:?}", t0.elapsed());
    let hosts = Hosts::new();
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    UsersFile::add_user(&users, "ops", PASSWORD, None, &[], false).unwrap();
    let (group, _) = mcsync_tests::unique_group();
    let o = group.octets();
    let mut child = Hosts::exec(&hosts.publisher, &bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(tmp.path().join("pub"))
        .args(["--database", DB, "--listen", CONTROL, "--interface", PUB_IP])
        .args(["--groups", &format!("{}.{}.{}.0/24", o[0], o[1], o[2])])
        .args(["--ports", "47100-47109"])
        .arg("--users")
        .arg(&users)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mcsync serve");
    let stdin = child.stdin.take().unwrap();
    let (_, versions) = collect_lines(child.stdout.take().unwrap());
    let fingerprint = wait_for(&versions, "the publisher's fingerprint", |l| {
        let rest = l.split("fingerprint ").nth(1)?;
        Some(rest.split(')').next()?.to_owned())
    });
    let mut serve = Serve {
        proc: Proc(child),
        stdin,
        versions,
        puts: 0,
        last: 0,
    };
    let ns = hosts.subscriber.clone();
    let start =
        |name: &str, iface| Sub::start(&bin, &ns, tmp.path().join(name), &fingerprint, iface);
    let good = [start("sub1", SUB_IP), start("sub2", SUB_IP)];
    // Joins the group on its own loopback: nothing from the other host arrives there.
    let deaf = start("deaf", "127.0.0.1");
    let all = || good.iter().chain([&deaf]);
    for s in all() {
        let lines = s.stderr.clone();
        wait_until("subscribed", || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("subscribed to"))
        });
    }
    println!("set up and subscribed in {:?}", t0.elapsed());
    for i in 0..300 {
        serve.put(&format!("k{:03}", i % 120), &format!("v{i}"));
    }
    let mut master = serve.committed();
    // A trickle, as a live master writes, until the deaf subscriber's error policy has
    // seen versions arrive only by repair with nothing heard by multicast, registered
    // again, and left the group for unicast.
    let mut n = 0;
    wait_until("the deaf subscriber backs off to unicast", || {
        n += 1;
        serve.put(&format!("t{:03}", n % 50), &format!("trickle {n}"));
        std::thread::sleep(Duration::from_millis(100));
        deaf.get(&ns, "unicast_backoffs_total") > 0.0
    });
    master = master.max(serve.committed());
    println!(
        "back-off to unicast after {n} trickled updates ({:?})",
        t0.elapsed()
    );
    for s in all() {
        wait_until("replica at the master's version", || {
            s.get(&ns, "version") >= master as f64
        });
    }
    println!("all converged to version {master} at {:?}", t0.elapsed());
    for s in &good {
        let m = s.metrics(&ns);
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
        println!(
            "{} on {}: {} packets received by multicast, {} chains, {} catch-ups, {} silent intervals",
            s.dir.display(),
            s.interface,
            g("packets_received_total"),
            g("chains_received_total"),
            g("catchups_journal_total"),
            g("multicast_silent_intervals_total")
        );
        assert!(g("packets_received_total") > 0.0, "{m:?}");
        assert!(g("chains_received_total") > 0.0, "{m:?}");
        assert_eq!(g("multicast_silent_intervals_total"), 0.0, "{m:?}");
    }
    let m = deaf.metrics(&ns);
    let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
    println!(
        "deaf on 127.0.0.1: {} packets received, {} silent intervals, {} back-offs to unicast",
        g("packets_received_total"),
        g("multicast_silent_intervals_total"),
        g("unicast_backoffs_total")
    );
    assert_eq!(g("packets_received_total"), 0.0, "{m:?}");
    assert!(g("multicast_silent_intervals_total") > 0.0, "{m:?}");
    let warned = deaf
        .stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("no multicast received on interface 127.0.0.1"));
    assert!(warned, "{:#?}", deaf.stderr.lock().unwrap());
    // Each replica equals the master's state, by range digests (`mcsync verify`).
    let subs: Vec<Sub> = good.into_iter().chain([deaf]).collect();
    for s in subs {
        let Sub {
            proc,
            dir,
            interface,
            ..
        } = s;
        drop(proc);
        let out = Hosts::exec(&ns, &bin)
            .arg("verify")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--server", CONTROL, "--database", DB, "--user", "ops"])
            .args(["--fingerprint", &fingerprint, "--interface", interface])
            .env("MCSYNC_PASSWORD", PASSWORD)
            .output()
            .expect("run mcsync verify");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {text}", dir.display());
        assert!(text.contains("in agreement"), "{text}");
    }
    // End of input ends the publisher.
    let Serve {
        mut proc, stdin, ..
    } = serve;
    drop(stdin);
    let deadline = Instant::now() + DEADLINE;
    while proc.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "mcsync serve did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("done in {:?}", t0.elapsed());
}
