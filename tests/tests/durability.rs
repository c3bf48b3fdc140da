//! `Durability::Async`: commits return once their version is assigned; a journal writer
//! group-commits behind them, then multicasts. Nothing is lost on a clean close.

use mcsync::{Durability, Publisher};
use mcsync_tests::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DB: &str = "hooked";

fn async_publisher(dir: &std::path::Path) -> Publisher {
    let mut cfg = publisher_config(&dir.join("pub"));
    cfg.durability = Durability::Async;
    Publisher::open(cfg).unwrap()
}

#[test]
fn one_caller_at_a_time_is_group_committed_and_replicated_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = async_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let s = open_subscriber(&dir.path().join("sub"), &p, Some((0.05, 3)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let sub = s
        .subscribe(DB, move |u| s2.lock().unwrap().push(u.version))
        .unwrap();
    // One thread, one update per call, as a host's update hook does.
    let n = 3_000u64;
    for i in 1..=n {
        let v = db
            .put(format!("k{}", i % 300), format!("value {i}"))
            .unwrap();
        assert_eq!(v, i, "versions are assigned in call order");
    }
    p.flush().unwrap();
    assert_eq!(db.version(), n, "journaled once flush returns");
    assert_eq!(db.get("k0").unwrap().as_deref(), Some(&b"value 3000"[..]));
    let st = p.stats();
    assert_eq!(st.updates_committed, n);
    assert!(st.journal_commits <= n, "{st:?}");
    sub.wait_for_version(n, CONVERGE).unwrap();
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    assert_versions(&seen.lock().unwrap(), 1..=n);
    assert_eq!(st.commits_lost, 0);
}

#[test]
fn close_journals_what_was_acknowledged_and_two_phase_follows_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let p = async_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe_participant(DB, None, None).unwrap();
    for _ in 0..200 {
        if p.subscribers().iter().any(|r| r.participant) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 1..=500u64 {
        assert_eq!(db.put(format!("k{i}"), "v").unwrap(), i);
    }
    // A two-phase update right behind them: its PREPARE goes out after they are
    // journaled and multicast, so the participant can vote at once.
    let mut t = db.transaction();
    t.put("k1", "two-phase").unwrap();
    assert_eq!(t.commit_two_phase(Duration::from_secs(30)).unwrap(), 501);
    let mut last = 0;
    for i in 0..500u64 {
        last = db.put(format!("after{i}"), "x").unwrap();
    }
    assert_eq!(last, 1_001);
    // Closing right away still journals everything acknowledged.
    p.close().unwrap();
    drop(sub);
    drop(s);
    let p = async_publisher(dir.path());
    let db = p.database(DB).unwrap();
    assert_eq!(db.version(), 1_001);
    assert_eq!(db.get("k1").unwrap().as_deref(), Some(&b"two-phase"[..]));
    assert_eq!(db.get("after499").unwrap().as_deref(), Some(&b"x"[..]));
}
