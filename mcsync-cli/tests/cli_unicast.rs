//! `mcsync subscribe --unicast`: the publisher pushes the stream to the subscriber by
//! unicast UDP instead of it joining the group, and the replica converges.

use mcsync::auth::UsersFile;
use mcsync::{Authentication, Publisher, PublisherConfig};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);

fn publisher_config(dir: &Path, users: &Path) -> PublisherConfig {
    let mut pc = PublisherConfig::new(dir);
    pc.authentication = Authentication::UsersFile(users.to_owned());
    pc.control_addr = "127.0.0.1:0".parse().unwrap();
    let id = std::process::id();
    pc.multicast.group = std::net::Ipv4Addr::new(239, 79, (id % 250) as u8, 12);
    pc.multicast.port = 30_000 + (id % 20_000) as u16;
    pc
}

fn mcsync(cmd: &str, sdir: &Path, addr: SocketAddr, fp: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mcsync"));
    c.arg(cmd)
        .arg("--data-dir")
        .arg(sdir)
        .args(["--server", &addr.to_string(), "--database", "inv"])
        .args(["--user", "ops", "--fingerprint", fp, "--unicast"])
        .env("MCSYNC_PASSWORD", "right");
    c
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn subscribe_unicast_converges_by_push() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    UsersFile::add_user(&users, "ops", "right", None, &[], false).unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"), &users)).unwrap();
    let db = p.database("inv").unwrap();
    let (addr, fp) = (p.control_addr(), p.fingerprint().unwrap().to_owned());
    let sdir = dir.path().join("sub");
    let mut child = mcsync("subscribe", &sdir, addr, &fp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Registered with a push target before anything is committed.
    let deadline = Instant::now() + DEADLINE;
    while !p.subscribers().iter().any(|r| r.push.is_some()) {
        assert!(Instant::now() < deadline, "no unicast registration");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut last = 0;
    for i in 0..200 {
        last = db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
    }
    let want = format!("{last} put k199 v199");
    let mut puts = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("subscribe printed every update");
        puts += usize::from(line.contains(" put "));
        if line == want {
            break;
        }
    }
    assert_eq!(puts, 200);
    let s = p.stats();
    assert!(s.unicast_datagrams > 0, "{s:?}");
    assert_eq!(s.unicast_targets, 1, "{s:?}");
    drop(child);
    let verify = mcsync("verify", &sdir, addr, &fp).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(0), "{text}");
    assert!(text.contains("in agreement"), "{text}");
    p.close().unwrap();
}
