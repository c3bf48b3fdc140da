//! `mcsync subscribe` at start: it waits for a publisher that is not up yet (trying again
//! with a back-off, as a running subscription does), and ends promptly only on what
//! retrying cannot fix: a refused password, a bad --interface.

use mcsync::auth::UsersFile;
use mcsync::{Authentication, Publisher, PublisherConfig};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);

fn publisher_config(dir: &Path, users: &Path, addr: SocketAddr) -> PublisherConfig {
    let mut pc = PublisherConfig::new(dir);
    pc.authentication = Authentication::UsersFile(users.to_owned());
    pc.control_addr = addr;
    let id = std::process::id();
    pc.multicast.group = std::net::Ipv4Addr::new(239, 78, (id % 250) as u8, 11);
    pc.multicast.port = 30_000 + (id % 20_000) as u16;
    pc
}

/// A free TCP port on loopback (free when this returns; nothing else here takes ports).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn subscribe(sdir: &Path, addr: SocketAddr, fp: &str, password: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mcsync"))
        .arg("subscribe")
        .arg("--data-dir")
        .arg(sdir)
        .args(["--server", &addr.to_string(), "--database", "inv"])
        .args(["--user", "ops", "--fingerprint", fp])
        .args(extra)
        .env("MCSYNC_PASSWORD", password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mcsync subscribe")
}

/// Lines of a child's pipe, as they come.
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line `pred` accepts; returns everything read so far.
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return;
                }
            }
            Err(_) => panic!("no such line within {DEADLINE:?}; saw {seen:#?}"),
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn subscribe_started_before_the_publisher_waits_for_it_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    UsersFile::add_user(&users, "ops", "right", None, &[], false).unwrap();
    let addr = free_addr();
    let pdir = dir.path().join("pub");
    // The publisher's identity exists (its fingerprint is pinned), but it is not running.
    let fp = {
        let p = Publisher::open(publisher_config(&pdir, &users, addr)).unwrap();
        let fp = p.fingerprint().unwrap().to_owned();
        p.close().unwrap();
        fp
    };
    let sdir = dir.path().join("sub");
    let mut child = subscribe(&sdir, addr, &fp, "right", &[]);
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let mut child = KillOnDrop(child);
    let mut seen = Vec::new();
    // It says it tries again, more than once, and keeps running.
    wait_line(&err, &mut seen, |l| l.contains("(attempt 2)"));
    assert!(child.0.try_wait().unwrap().is_none(), "{seen:#?}");
    let p = Publisher::open(publisher_config(&pdir, &users, addr)).unwrap();
    let db = p.database("inv").unwrap();
    let mut last = 0;
    for i in 0..50 {
        last = db.put(format!("k{i:02}"), format!("v{i}")).unwrap();
    }
    wait_line(&err, &mut seen, |l| l.contains("subscribed to \"inv\""));
    let mut printed = Vec::new();
    let want = format!("{last} put k49 v49");
    wait_line(&out, &mut printed, |l| l == want);
    // Every update was printed once, in order.
    let puts: Vec<&String> = printed.iter().filter(|l| l.contains(" put ")).collect();
    assert_eq!(puts.len(), 50, "{printed:#?}");
    drop(child);
    // The replica equals the master.
    let verify = Command::new(env!("CARGO_BIN_EXE_mcsync"))
        .arg("verify")
        .arg("--data-dir")
        .arg(&sdir)
        .args(["--server", &addr.to_string(), "--database", "inv"])
        .args(["--user", "ops", "--fingerprint", &fp])
        .env("MCSYNC_PASSWORD", "right")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(0), "{text}");
    assert!(text.contains("in agreement"), "{text}");
    p.close().unwrap();
}

#[test]
fn a_refused_password_or_a_foreign_interface_ends_subscribe_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    UsersFile::add_user(&users, "ops", "right", None, &[], false).unwrap();
    let addr = free_addr();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"), &users, addr)).unwrap();
    p.database("inv").unwrap();
    let fp = p.fingerprint().unwrap().to_owned();
    let sdir = dir.path().join("sub");
    let run = |password: &str, extra: &[&str]| {
        let t0 = Instant::now();
        let mut c = KillOnDrop(subscribe(&sdir, addr, &fp, password, extra));
        let deadline = t0 + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = c.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        c.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.code(), err, t0.elapsed())
    };
    let (code, err, took) = run("wrong", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("auth"), "{err}");
    assert!(!err.contains("trying again"), "{err}");
    eprintln!("wrong password: exit {code:?} after {took:?}");
    // TEST-NET-3: assigned to no interface here (nothing is sent to it).
    let (code, err, _) = run("right", &["--interface", "203.0.113.7"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not assigned to any interface"), "{err}");
    p.close().unwrap();
}
