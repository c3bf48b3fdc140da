//! Replica durability on real processes: a subscriber (`crash_node subscriber`, with a host
//! store of its own) runs with `ReplicaDurability::Periodic` and a flush interval far longer
//! than the test, so every commit it makes stays unsynced and its `replica-unsynced`
//! marker stays on disk. It is SIGKILLed twice:
//!
//! 1. same boot (a process crash): it reopens its store as it was, is not rebuilt, and
//!    carries on exactly once for its host;
//! 2. after its marker was rewritten with another boot id (what a power loss leaves: the
//!    kernel's boot id changes with the reboot): its store is discarded, the rebuild is
//!    counted and logged, the host is handed a reset, and replica and host converge with
//!    the master again.

use mcsync::store::{unsynced, SubscriberStore};
use mcsync::{Publisher, ReplicaDurability};
use mcsync_tests::crash::DB;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest wait for anything that must happen (a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(120);
/// Never flushes during the test: every commit stays unsynced until a clean close.
const MODE: &str = "periodic:3600000";

struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Host version from the `ready` line, and whether the store was rebuilt at open.
    ready: (u64, u64),
    /// Versions of the resets the host was handed.
    resets: Vec<u64>,
}

impl Node {
    fn start(root: &Path, publisher: &Publisher) -> Node {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("sub.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_node"))
            .arg("subscriber")
            .args(["--replica-durability", MODE])
            .arg("--dir")
            .arg(root.join("sub"))
            .arg("--host-dir")
            .arg(root.join("host"))
            .args(["--server", &publisher.control_addr().to_string()])
            .args(["--fingerprint", publisher.fingerprint().unwrap()])
            .args(["--compact-after", "1000000"])
            .env_remove("MCSYNC_CRASH_AT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let lines = mcsync_tests::lines_of(child.stdout.take().unwrap());
        let mut node = Node {
            child,
            lines,
            ready: (0, 0),
            resets: Vec::new(),
        };
        let line = node.next_line("ready");
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((w[0], w[2]), ("ready", "rebuilds"), "{line}");
        node.ready = (w[1].parse().unwrap(), w[3].parse().unwrap());
        node
    }

    fn next_line(&mut self, what: &str) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("waiting for {what} from the subscriber: {e}"))
    }

    /// Waits until the host stored version `v` (or later).
    fn wait_host(&mut self, v: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = self.next_line(&format!("host {v}"));
            if let Some(r) = line.strip_prefix("reset ") {
                self.resets.push(r.parse().unwrap());
            }
            if let Some(h) = line.strip_prefix("host ") {
                if h.parse::<u64>().unwrap() >= v {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "host never reached {v}");
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        let st = self.child.wait().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    }

    /// Closes stdin (a clean stop) and waits for exit 0.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the subscriber stopped with {st}");
    }
}

/// Puts and deletes at the master: versions `n` more, a quarter of them deletes.
fn publish(db: &mcsync::Database, n: u64, salt: &str) -> u64 {
    let mut v = db.version();
    for i in 0..n {
        let key = format!("k{:03}", (i * 7 + v) % 60);
        v = if i % 4 == 3 {
            db.delete(&key).unwrap()
        } else {
            db.put(&key, format!("{salt}-{i}-{v}")).unwrap()
        };
    }
    v
}

/// The host store's version and table (see `crash_node`'s `HostStore`).
fn read_host(dir: &Path) -> (u64, BTreeMap<Vec<u8>, Vec<u8>>) {
    use lmdb::{Cursor, Transaction};
    let env = lmdb::Environment::new()
        .set_max_dbs(8)
        .set_map_size(1 << 30)
        .open(dir)
        .unwrap();
    let rows = env.open_db(Some("rows")).unwrap();
    let meta = env.open_db(Some("meta")).unwrap();
    let txn = env.begin_ro_txn().unwrap();
    let version = u64::from_be_bytes(txn.get(meta, b"version").unwrap().try_into().unwrap());
    let mut table = BTreeMap::new();
    for item in txn.open_ro_cursor(rows).unwrap().iter_start() {
        let (k, v) = item.unwrap();
        table.insert(k.to_vec(), v.to_vec());
    }
    (version, table)
}

/// The replica's version and records, and whether opening it rebuilt it.
fn read_replica(dir: &Path) -> (u64, BTreeMap<Vec<u8>, Vec<u8>>, bool) {
    let store = SubscriberStore::open(dir, 1 << 20).unwrap();
    let t = store.tables(DB).unwrap();
    let records = store.all(t).unwrap().into_iter().collect();
    (store.applied_version(DB).unwrap(), records, store.rebuilt())
}

fn marker(root: &Path) -> Option<String> {
    unsynced::read_marker(&root.join("sub")).unwrap()
}

#[test]
fn after_a_power_loss_an_unsynced_replica_is_rebuilt_and_after_kill_nine_it_is_not() {
    let root: PathBuf = tempfile::Builder::new()
        .prefix("mcsync-replica-durability-")
        .tempdir()
        .unwrap()
        .keep();
    eprintln!("replica durability test directory {}", root.display());
    assert_eq!(
        ReplicaDurability::parse(MODE).unwrap(),
        ReplicaDurability::Periodic(Duration::from_secs(3600))
    );
    let boot = unsynced::current_boot_id().expect("this test needs Linux's boot id");
    let publisher = Publisher::open(mcsync_tests::publisher_config(&root.join("pub"))).unwrap();
    let db = publisher.database(DB).unwrap();
    let master = |db: &mcsync::Database| -> BTreeMap<Vec<u8>, Vec<u8>> {
        db.snapshot().unwrap().into_iter().collect()
    };
    let v1 = publish(&db, 120, "a");
    let mut node = Node::start(&root, &publisher);
    assert_eq!(node.ready, (0, 0));
    node.wait_host(v1);
    assert_eq!(
        marker(&root).as_deref(),
        Some(boot.as_str()),
        "commits are unsynced"
    );

    // 1. kill -9, same boot: nothing applied is lost, nothing rebuilt.
    node.kill();
    let (applied, replica, rebuilt) = read_replica(&root.join("sub"));
    assert!(!rebuilt);
    assert_eq!(
        (applied, replica),
        (v1, master(&db)),
        "the page cache had it all"
    );
    assert!(read_host(&root.join("host")).0 == v1);
    // (Reading synced it and dropped the marker: put it back as the kill left it.)
    unsynced::write_marker(&root.join("sub"), &boot).unwrap();
    let v2 = publish(&db, 80, "b");
    let mut node = Node::start(&root, &publisher);
    assert_eq!(node.ready, (v1, 0), "same boot: reopened as it was");
    node.wait_host(v2);
    assert!(marker(&root).is_some());
    assert_eq!(
        node.resets,
        Vec::<u64>::new(),
        "a kill -9 owes the host no reset"
    );

    // 2. kill -9, then the marker says another boot: a power loss with unsynced commits.
    node.kill();
    unsynced::write_marker(&root.join("sub"), "00000000-0000-0000-0000-power-loss").unwrap();
    let v3 = publish(&db, 60, "c");
    let mut node = Node::start(&root, &publisher);
    assert_eq!(node.ready, (v2, 1), "another boot: the store was rebuilt");
    node.wait_host(v3);
    // The reset came once the replica was back at least where the host was.
    assert_eq!(node.resets.len(), 1, "the host is handed one reset");
    assert!(
        node.resets[0] >= v2,
        "reset at {:?}, host was at {v2}",
        node.resets
    );
    node.stop();
    assert_eq!(
        marker(&root),
        None,
        "a clean stop flushes and drops the marker"
    );
    let log = std::fs::read_to_string(root.join("sub.log")).unwrap();
    assert!(
        log.contains("OS crash or power loss") && log.contains("discarded"),
        "the rebuild is logged: {log}"
    );
    assert!(root
        .join("sub")
        .join(unsynced::DISCARDED_DATA_FILE)
        .exists());
    let (applied, replica, rebuilt) = read_replica(&root.join("sub"));
    assert!(!rebuilt);
    assert_eq!(applied, v3);
    assert_eq!(replica, master(&db), "the rebuilt replica converged");
    let (host, table) = read_host(&root.join("host"));
    assert_eq!(host, v3);
    assert_eq!(table, master(&db), "the host, reset, converged too");
    assert!(!root.join("host").join("DUPLICATE").exists());
    publisher.close().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
