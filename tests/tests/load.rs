//! Unauthenticated load on the control port (issue 14 item 7): silent connections, connections
//! that trickle bytes, and floods of failed logins, all from 127.0.0.1, must neither lock out
//! a legitimate subscriber from the same address nor blow up the publisher's memory.
//!
//! The publisher runs as a child process (`src/bin/load_publisher.rs`) so that its own peak
//! resident memory (`VmHWM` in `/proc/<pid>/status`) can be read; the attackers and the
//! legitimate subscribers run in this process, over real TCP and TLS 1.3.
//!
//! File descriptors: this process holds 600 silent sockets, 200 attacking TLS clients and a
//! few subscribers at once (the publisher holds up to 512 connections), so the soft
//! `RLIMIT_NOFILE` is raised to at least 4,096 (within the hard limit) before anything opens;
//! the child inherits it.

use mcsync::auth::UsersFile;
use mcsync::{Authentication, ErrorKind, Publisher, ServerTrust, Subscriber, SubscriberConfig};
use mcsync_tests::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

const DB: &str = "loaddb";
/// Silent TCP connections held open (more than the publisher's 512-connection table).
const SILENT: usize = 600;
/// Concurrent failed logins per wave.
const FAILED_LOGINS: usize = 200;
/// A legitimate subscriber must register within this while the attack runs.
const REGISTER_WITHIN: Duration = Duration::from_secs(5);
/// The publisher's peak resident memory must stay under this. Measured: about 90 MiB (512
/// connection threads, TLS state, and at most two argon2 runs of 19 MiB each); before the
/// cap, 200 concurrent wrong-password logins (without the silent connections) reached
/// 1.6 GiB, and each argon2 run could need 19 MiB more.
const PEAK_MEMORY_BOUND_KIB: u64 = 256 << 10;

/// Users: alice, bob and carol, each with password `<name>-pw`, all allowed `DB`.
fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users");
    for u in ["alice", "bob", "carol"] {
        UsersFile::add_user(&path, u, &format!("{u}-pw"), None, &[], false).unwrap();
    }
    path
}

/// Raises the soft file-descriptor limit to at least 4,096 (or the hard limit).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    let want = r.rlim_max.min(4096);
    if r.rlim_cur < want {
        r.rlim_cur = want;
        // SAFETY: a valid rlimit; the soft limit stays within the hard one.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
    }
    assert!(
        r.rlim_cur >= 2048,
        "the load test needs about 1,000 file descriptors; `ulimit -n` allows {}",
        r.rlim_cur
    );
}

/// The publisher child process.
struct PublisherProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    fingerprint: String,
    addr: SocketAddr,
}

impl PublisherProcess {
    fn start(dir: &Path) -> PublisherProcess {
        let users = users_file(dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_load_publisher"))
            .arg("--dir")
            .arg(dir.join("pub"))
            .arg("--users")
            .arg(&users)
            .args(["--database", DB])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning load_publisher");
        let lines = mcsync_tests::lines_of(child.stdout.take().unwrap());
        let ready = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("publisher ready");
        let f: Vec<&str> = ready.split_whitespace().collect();
        assert_eq!(f.first(), Some(&"ready"), "{ready}");
        PublisherProcess {
            stdin: child.stdin.take(),
            child,
            fingerprint: f[1].to_owned(),
            addr: f[2].parse().unwrap(),
            lines,
        }
    }

    /// Every publisher counter, by name.
    fn stats(&mut self) -> HashMap<String, u64> {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "stats").unwrap();
        stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("stats answer");
        let rest = line.strip_prefix("stats ").expect("stats line");
        rest.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// A field of `/proc/<pid>/status`, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.child.id()))
    }

    fn trust(&self) -> ServerTrust {
        ServerTrust::Fingerprint(self.fingerprint.clone())
    }

    /// A subscriber for `user` (not yet subscribed).
    fn subscriber(&self, dir: &Path, user: &str) -> Subscriber {
        let mut c = SubscriberConfig::new(dir.join(format!("sub-{user}")), self.addr, self.trust());
        c.user = user.into();
        c.secret = format!("{user}-pw").into();
        Subscriber::open(c).unwrap()
    }

    /// A raw control client logging in as `user` with a wrong password.
    fn attacker(&self, user: &str) -> mcsync::net::repair_client::RepairClient {
        use mcsync::net::repair_client::{ClientIdentity, RepairClient};
        let tls = mcsync::net::tls::ClientTls::new(&self.trust(), self.addr, None).unwrap();
        let id = ClientIdentity {
            server: self.addr,
            tls,
            user: user.into(),
            secret: "guess".into(),
            client_name: "attacker".into(),
        };
        RepairClient::new(id, DB, Duration::from_secs(30), 1 << 20)
    }
}

impl Drop for PublisherProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the failed logins of one wave got back, by kind of answer.
#[derive(Debug, Default)]
struct Outcomes {
    /// "unknown user or wrong password": the secret was checked.
    refused: usize,
    /// "too many failed logins from …": refused unchecked.
    rate_limited: usize,
    /// "server busy": the check could not start in time.
    busy: usize,
    /// Anything else (connection reset, time-out): the publisher did not answer.
    other: Vec<String>,
    /// Logins that succeeded (never expected).
    accepted: usize,
}

/// Starts a login thread for each of `logins`, the i-th as `user(i)`, plus `legit` users
/// that subscribe properly; all wait at one barrier and start together. Adds the outcomes
/// of the failed logins to `out`, and returns, per legitimate user, the result of its
/// `subscribe` and how long it took.
#[allow(clippy::type_complexity)]
fn wave(
    p: &PublisherProcess,
    dir: &Path,
    logins: std::ops::Range<usize>,
    user: impl Fn(usize) -> String,
    legit: &[&str],
    out: &mut Outcomes,
) -> Vec<(String, Result<(), mcsync::Error>, Duration)> {
    let barrier = Arc::new(Barrier::new(logins.len() + legit.len()));
    let attackers: Vec<_> = logins
        .map(|i| {
            let mut c = p.attacker(&user(i));
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                c.hello().map(|_| ())
            })
        })
        .collect();
    let legit: Vec<_> = legit
        .iter()
        .map(|&u| {
            let s = p.subscriber(dir, u);
            let b = barrier.clone();
            let u = u.to_owned();
            std::thread::spawn(move || {
                b.wait();
                let t = Instant::now();
                let r = s.subscribe(DB, |_| {});
                let took = t.elapsed();
                if let Ok(sub) = r.as_ref() {
                    sub.wait_for_version(1, CONVERGE).unwrap();
                }
                (u, r.map(|_| ()), took)
            })
        })
        .collect();
    for a in attackers {
        match a.join().unwrap() {
            Ok(()) => out.accepted += 1,
            Err(e) => {
                let text = e.to_string();
                if text.contains("too many failed logins") {
                    out.rate_limited += 1;
                } else if text.contains("unknown user or wrong password") {
                    out.refused += 1;
                } else if text.contains("busy") {
                    out.busy += 1;
                } else {
                    out.other.push(text);
                }
            }
        }
    }
    legit.into_iter().map(|h| h.join().unwrap()).collect()
}

fn summary(o: &Outcomes) -> String {
    let mut other: HashMap<&str, usize> = HashMap::new();
    for t in &o.other {
        *other.entry(t.as_str()).or_default() += 1;
    }
    format!(
        "{} refused after the check, {} rate-limited unchecked, {} busy, {} accepted, {} other {:?}",
        o.refused,
        o.rate_limited,
        o.busy,
        o.accepted,
        o.other.len(),
        other
    )
}

fn check_legit(phase: &str, results: &[(String, Result<(), mcsync::Error>, Duration)]) {
    for (u, r, took) in results {
        println!("{phase}: {u} registered in {took:?} ({r:?})");
        assert!(r.is_ok(), "{phase}: {u} could not register: {r:?}");
        assert!(
            *took < REGISTER_WITHIN,
            "{phase}: {u} took {took:?} to register (limit {REGISTER_WITHIN:?})"
        );
    }
}

/// Waits until the publisher closes `s` (EOF or reset); returns false if it stays open for
/// `within`.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A TLS alert or anything else the server sends before closing: keep reading.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn silent_connections_and_failed_logins_do_not_lock_out_a_subscriber() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut p = PublisherProcess::start(dir.path());
    println!(
        "publisher pid {}: VmRSS {} KiB at start",
        p.child.id(),
        p.status_kib("VmRSS")
    );

    // alice has logged in from this address before the attack.
    {
        let s = p.subscriber(dir.path(), "alice");
        let sub = s.subscribe(DB, |_| {}).expect("alice before the attack");
        sub.wait_for_version(1, CONVERGE).unwrap();
        sub.close().unwrap();
    }
    let base = p.stats();
    let accepted = |st: &HashMap<String, u64>| {
        st["repair_sessions"] + st["repair_errors"]
            - base["repair_sessions"]
            - base["repair_errors"]
    };

    // 600 silent TCP connections, held open; the publisher has taken them all in (or
    // closed those it would not keep) before the logins start.
    let mut silent: Vec<TcpStream> = (0..SILENT)
        .map(|i| {
            TcpStream::connect_timeout(&p.addr, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("silent connection {i}: {e}"))
        })
        .collect();
    wait_until(Duration::from_secs(60), || {
        accepted(&p.stats()) >= SILENT as u64
    });
    let silent_at = Instant::now();

    // Phase A: 200 concurrent failed logins of one unknown user while alice (known here;
    // her login is served from the 30-s verified-login cache) and bob (never logged in
    // here: his password is checked, in line behind the attacker's checks) subscribe.
    let mut attack = Outcomes::default();
    let legit = wave(
        &p,
        dir.path(),
        0..FAILED_LOGINS,
        |_| "mallory".into(),
        &["alice", "bob"],
        &mut attack,
    );
    println!("phase A (one unknown user): {}", summary(&attack));
    println!(
        "publisher peak resident memory after phase A: {} KiB",
        p.status_kib("VmHWM")
    );
    check_legit("phase A", &legit);
    assert_eq!(attack.accepted, 0);
    assert!(attack.other.is_empty(), "{}", summary(&attack));
    // The failure is counted before the password is checked: 10 checks, the rest refused
    // unchecked. So the address is not blocked, and bob got in although he is new here.
    assert_eq!(attack.refused + attack.busy, 10, "{}", summary(&attack));
    assert_eq!(attack.rate_limited, FAILED_LOGINS - 10);

    // Every silent connection is closed by the publisher: those evicted to make room at
    // once, the others when their handshake-and-HELLO deadline (10 s) passes.
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, Duration::from_secs(60)),
            "silent connection {i} still open {:?} after the publisher took it in",
            silent_at.elapsed()
        );
    }
    println!(
        "all {SILENT} silent connections closed by the publisher {:?} after it took them in",
        silent_at.elapsed()
    );
    drop(silent);

    // Phase B: password spraying, 200 failed logins of distinct unknown users, in ten
    // waves of 20 at once (so that the password checks keep up and none is answered
    // "busy", which would count against nobody and leave the outcome to timing). The
    // address is blocked after 100 failures over all user names; alice and bob, who logged
    // in from it before, keep getting in.
    const SPRAY_WAVE: usize = 20;
    let mut attack = Outcomes::default();
    let mut legit = Vec::new();
    for first in (0..FAILED_LOGINS).step_by(SPRAY_WAVE) {
        let known: &[&str] = if first == 0 { &["alice", "bob"] } else { &[] };
        legit.extend(wave(
            &p,
            dir.path(),
            first..first + SPRAY_WAVE,
            |i| format!("ghost-{i}"),
            known,
            &mut attack,
        ));
    }
    println!("phase B (spraying): {}", summary(&attack));
    check_legit("phase B", &legit);
    assert_eq!(attack.accepted, 0);
    assert!(attack.other.is_empty(), "{}", summary(&attack));
    assert!(attack.refused <= 100, "{}", summary(&attack));
    assert!(
        attack.rate_limited >= FAILED_LOGINS - 100,
        "{}",
        summary(&attack)
    );
    // carol never logged in from this address: the address block refuses her too, for 30 s,
    // without checking her password. That is the design: a block spares only users that
    // logged in from the address within the last day.
    let s = p.subscriber(dir.path(), "carol");
    let carol = s.subscribe(DB, |_| {});
    println!("phase B: carol (new here) got {:?}", carol.as_ref().err());
    if attack.busy == 0 {
        let err = carol.err().expect("carol refused");
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(
            err.to_string()
                .contains("too many failed logins from 127.0.0.1"),
            "{err}"
        );
    } else {
        // Some sprayed logins were never checked (the machine is very slow): they count
        // against nobody, so the address may not have reached its 100 failures.
        println!(
            "phase B: {} logins answered busy; carol's outcome not checked",
            attack.busy
        );
        drop(carol);
    }

    let st = p.stats();
    let counters: Vec<String> = [
        "repair_sessions",
        "registrations",
        "auth_failures",
        "auth_rate_limited",
        "auth_busy",
        "tls_failures",
        "control_timeouts",
        "control_evictions",
        "control_refused",
        "repair_errors",
    ]
    .iter()
    .map(|k| format!("{k}={}", st.get(*k).copied().unwrap_or(0)))
    .collect();
    println!("publisher counters: {}", counters.join(" "));
    let peak = p.status_kib("VmHWM");
    println!(
        "publisher peak resident memory (VmHWM): {} KiB = {:.1} MiB (bound {} MiB)",
        peak,
        peak as f64 / 1024.0,
        PEAK_MEMORY_BOUND_KIB >> 10
    );
    assert!(
        peak < PEAK_MEMORY_BOUND_KIB,
        "publisher peak memory {peak} KiB over {PEAK_MEMORY_BOUND_KIB} KiB"
    );
    assert!(
        st["control_evictions"] >= (SILENT - 512) as u64,
        "{counters:?}"
    );
    assert!(st["control_timeouts"] >= 1, "{counters:?}");
}

/// One byte of a TLS record every 200 ms never completes a read that times out per read;
/// the publisher closes the connection at its handshake-and-HELLO deadline (10 s) anyway.
#[test]
fn a_connection_that_trickles_bytes_is_closed_at_its_hello_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.authentication = Authentication::UsersFile(users_file(dir.path()));
    let p = Publisher::open(cfg).unwrap();
    p.database(DB).unwrap();
    let mut s = TcpStream::connect(p.control_addr()).unwrap();
    let t = Instant::now();
    // A handshake record announcing 512 bytes, sent one byte at a time.
    let header = [0x16u8, 0x03, 0x01, 0x02, 0x00];
    let mut sent = 0usize;
    let closed = loop {
        let byte = header.get(sent).copied().unwrap_or(0x42);
        if s.write_all(&[byte]).is_err() {
            break true;
        }
        sent += 1;
        // Paces the trickle, and notices the close.
        if closed_by_peer(&mut s, Duration::from_millis(200)) {
            break true;
        }
        if t.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    let took = t.elapsed();
    println!("trickling connection closed after {took:?} ({sent} bytes sent)");
    assert!(closed, "still open after {took:?}");
    assert!(took < Duration::from_secs(30), "closed only after {took:?}");
    assert!(p.stats().control_timeouts >= 1);
}
