//! Two-phase updates, rollback, and compacted catch-up.

use mcsync::{ErrorKind, Publisher, Subscriber, Subscription};
use mcsync_tests::*;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DB: &str = "ledger";

struct Participant {
    _s: Subscriber,
    sub: Subscription,
    seen: Arc<Mutex<Vec<u64>>>,
}

fn participant(
    dir: &Path,
    p: &Publisher,
    name: &str,
    loss: Option<(f64, u64)>,
    vote: Option<mcsync::VoteCallback>,
) -> Participant {
    let mut c = subscriber_config(&dir.join(name), p, loss);
    c.client_name = name.into();
    let s = Subscriber::open(c).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let cb: mcsync::UpdateCallback = Box::new(move |u| s2.lock().unwrap().push(u.version));
    let sub = s.subscribe_participant(DB, Some(cb), vote).unwrap();
    Participant { _s: s, sub, seen }
}

fn wait_participants(p: &Publisher, n: usize) {
    for _ in 0..200 {
        if p.subscribers().iter().filter(|r| r.participant).count() == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{n} participants did not register");
}

#[test]
fn all_prepared_commits_everywhere_and_callbacks_follow_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    db.put("a", "1").unwrap();
    let parts: Vec<_> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| participant(dir.path(), &p, n, None, None))
        .collect();
    let observer = open_subscriber(&dir.path().join("observer"), &p, None);
    let obs = observer.subscribe(DB, |_| {}).unwrap();
    wait_participants(&p, 3);
    let mut t = db.transaction();
    t.put("balance", "100").unwrap();
    t.put("owner", "alice").unwrap();
    let v = t.commit_two_phase(Duration::from_secs(10)).unwrap();
    assert_eq!(v, 2);
    for x in parts.iter().map(|x| &x.sub).chain([&obs]) {
        x.wait_for_version(v, CONVERGE).unwrap();
        assert_eq!(x.get("balance").unwrap().as_deref(), Some(&b"100"[..]));
    }
    for x in &parts {
        assert_versions(&x.seen.lock().unwrap(), 1..=2);
        assert!(x.sub.stats().votes_prepared >= 1);
    }
    // One-phase updates continue after it, in one total order.
    assert_eq!(db.put("after", "x").unwrap(), 3);
    let st = p.stats();
    assert_eq!((st.two_phase_committed, st.two_phase_aborted), (1, 0));
}

#[test]
fn a_refusal_aborts_everywhere_and_names_the_refuser() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    db.put("a", "1").unwrap();
    let no: mcsync::VoteCallback = Box::new(|u| {
        if u.ops.iter().any(|o| o.key == b"forbidden") {
            Err("key not allowed here".into())
        } else {
            Ok(())
        }
    });
    let parts = vec![
        participant(dir.path(), &p, "yes-1", None, None),
        participant(dir.path(), &p, "strict", None, Some(no)),
        participant(dir.path(), &p, "yes-2", None, None),
    ];
    wait_participants(&p, 3);
    let mut t = db.transaction();
    t.put("forbidden", "x").unwrap();
    let err = t.commit_two_phase(Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    let text = err.to_string();
    assert!(
        text.contains("strict") && text.contains("key not allowed here"),
        "{text}"
    );
    let mcsync::Error::Aborted {
        refused, timed_out, ..
    } = &err
    else {
        panic!("not Aborted: {err:?}")
    };
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].0.contains("strict") && refused[0].1.contains("key not allowed here"));
    assert!(timed_out.is_empty(), "{timed_out:?}");
    // The version was given back; nothing is visible anywhere.
    let v = db.put("b", "2").unwrap();
    assert_eq!(v, 2);
    for x in &parts {
        x.sub.wait_for_version(v, CONVERGE).unwrap();
        assert_eq!(x.sub.get("forbidden").unwrap(), None);
        assert_versions(&x.seen.lock().unwrap(), 1..=2);
    }
    assert_eq!(db.get("forbidden").unwrap(), None);
}

#[test]
fn an_unresponsive_participant_times_out_and_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    db.put("a", "1").unwrap();
    let hang: mcsync::VoteCallback = Box::new(|_| {
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    });
    let ok = participant(dir.path(), &p, "healthy", None, None);
    let stuck = participant(dir.path(), &p, "stuck", None, Some(hang));
    wait_participants(&p, 2);
    let mut t = db.transaction();
    t.put("k", "v").unwrap();
    let err = t.commit_two_phase(Duration::from_millis(800)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no answer in time from stuck"), "{text}");
    let mcsync::Error::Aborted {
        refused, timed_out, ..
    } = &err
    else {
        panic!("not Aborted: {err:?}")
    };
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert!(timed_out[0].contains("stuck"), "{timed_out:?}");
    stuck.sub.close().unwrap();
    let v = db.put("k2", "v2").unwrap();
    ok.sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(
        ok.sub.get("k").unwrap(),
        None,
        "the aborted update never shows"
    );
    assert_eq!(v, 2);
}

#[test]
fn lost_commit_packets_still_commit_via_repeats_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    let lossy = participant(dir.path(), &p, "lossy", Some((0.3, 77)), None);
    let clean = participant(dir.path(), &p, "clean", None, None);
    wait_participants(&p, 2);
    let mut last = 0;
    for i in 0..10u32 {
        let mut t = db.transaction();
        t.put(format!("k{i}"), format!("{i}")).unwrap();
        last = t.commit_two_phase(Duration::from_secs(20)).unwrap();
    }
    for x in [&lossy, &clean] {
        x.sub.wait_for_version(last, CONVERGE).unwrap();
        assert_eq!(
            x.sub.iter().unwrap().collect::<Vec<_>>(),
            db.snapshot().unwrap()
        );
        assert_versions(&x.seen.lock().unwrap(), 1..=last);
    }
    assert!(lossy.sub.stats().dropped_injected > 0);
}

#[test]
fn a_participant_restarted_between_prepared_and_commit_learns_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    db.put("a", "1").unwrap();
    let stay = participant(dir.path(), &p, "stay", None, None);
    let restart = participant(dir.path(), &p, "restart", None, None);
    wait_participants(&p, 2);
    restart.sub.wait_for_version(1, CONVERGE).unwrap();
    let mut t = db.transaction();
    t.put("k", "committed while away").unwrap();
    let prepared = t.prepare(Duration::from_secs(10)).unwrap();
    // Restart the participant (it keeps its prepared update on disk).
    drop(restart);
    let v = prepared.commit().unwrap();
    let back = participant(dir.path(), &p, "restart", None, None);
    back.sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(
        back.sub.get("k").unwrap().as_deref(),
        Some(&b"committed while away"[..])
    );
    stay.sub.wait_for_version(v, CONVERGE).unwrap();
    // Rollback of a prepared update: nothing shows, and the version is given back.
    let mut t = db.transaction();
    t.put("k", "retracted").unwrap();
    let prepared = t.prepare(Duration::from_secs(10)).unwrap();
    assert_eq!(prepared.version(), v + 1);
    prepared.rollback().unwrap();
    assert_eq!(db.put("z", "1").unwrap(), v + 1);
    stay.sub.wait_for_version(v + 1, CONVERGE).unwrap();
    assert_eq!(
        stay.sub.get("k").unwrap().as_deref(),
        Some(&b"committed while away"[..])
    );
}

#[test]
fn compacted_catch_up_equals_step_by_step_with_fewer_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    // 3,000 versions touching 100 keys: many overwrites and some deletes.
    let mut last = 0;
    for i in 0..3_000u32 {
        last = if i % 17 == 0 {
            db.delete(format!("k{}", i % 100)).unwrap()
        } else {
            db.put(
                format!("k{}", i % 100),
                format!("value {i} {}", "z".repeat(200)),
            )
            .unwrap()
        };
    }
    let open = |name: &str, compact_after: u64| {
        let mut c = subscriber_config(&dir.path().join(name), &p, None);
        c.compact_catch_up_after = compact_after;
        Subscriber::open(c).unwrap()
    };
    let (a, b) = (open("compacted", 1000), open("stepwise", u64::MAX));
    let ca = Arc::new(Mutex::new(0u64));
    let ca2 = ca.clone();
    let sa = a.subscribe(DB, move |_| *ca2.lock().unwrap() += 1).unwrap();
    let sb = b.subscribe(DB, |_| {}).unwrap();
    sa.wait_for_version(last, CONVERGE).unwrap();
    sb.wait_for_version(last, CONVERGE).unwrap();
    let (ra, rb): (Vec<_>, Vec<_>) = (sa.iter().unwrap().collect(), sb.iter().unwrap().collect());
    assert!(ra == rb && ra == db.snapshot().unwrap(), "same final state");
    let (xa, xb) = (sa.stats(), sb.stats());
    println!(
        "catch-up of {last} versions: compacted {} bytes, step by step {} bytes",
        xa.repair_bytes, xb.repair_bytes
    );
    assert_eq!(xa.catchups_compacted, 1, "{xa:?}");
    assert!(
        xa.repair_bytes * 10 < xb.repair_bytes,
        "compacted {} vs step-by-step {} bytes",
        xa.repair_bytes,
        xb.repair_bytes
    );
    assert!(
        *ca.lock().unwrap() < 10,
        "the callback saw the compacted changes, not every step"
    );
}

#[test]
fn a_held_prepared_update_holds_only_its_own_database() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap());
    let ledger = p.database(DB).unwrap();
    let other = p.database("other").unwrap();
    ledger.put("a", "1").unwrap();
    let mut t = ledger.transaction();
    t.put("a", "2").unwrap();
    let prepared = t.prepare(Duration::from_secs(30)).unwrap();
    assert_eq!(prepared.version(), 2);
    // Another database commits at once, in several groups.
    for i in 0..50u32 {
        assert_eq!(other.put(format!("k{i}"), "v").unwrap(), u64::from(i) + 1);
    }
    // A commit of the same database waits behind the prepared update...
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.clone();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(p2.database(DB).unwrap().put("b", "3"));
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // ...and takes the next version once it is committed.
    assert_eq!(prepared.commit().unwrap(), 2);
    assert_eq!(rx.recv_timeout(CONVERGE).unwrap().unwrap(), 3);
    waiter.join().unwrap();
    // The same after a rollback: the waiting commit takes the version given back.
    let mut t = ledger.transaction();
    t.put("c", "4").unwrap();
    let prepared = t.prepare(Duration::from_secs(30)).unwrap();
    assert_eq!(prepared.version(), 4);
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.clone();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(p2.database(DB).unwrap().put("d", "5"));
    });
    assert_eq!(other.put("x", "y").unwrap(), 51);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    prepared.rollback().unwrap();
    assert_eq!(rx.recv_timeout(CONVERGE).unwrap().unwrap(), 4);
    waiter.join().unwrap();
    assert_eq!(ledger.get("c").unwrap(), None);
    assert_eq!(ledger.get("d").unwrap().as_deref(), Some(&b"5"[..]));
}

#[test]
fn a_late_vote_never_counts_for_the_round_that_reuses_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    db.put("a", "1").unwrap();
    // The first vote takes longer than the caller waits, the second a little while; each
    // is recorded when it is decided.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let slow_once: mcsync::VoteCallback = Box::new(move |u| {
        let first = c2.lock().unwrap().is_empty();
        std::thread::sleep(Duration::from_millis(if first { 1500 } else { 300 }));
        c2.lock().unwrap().push(u.ops[0].value.clone());
        Ok(())
    });
    let slow = participant(dir.path(), &p, "slow", None, Some(slow_once));
    let quick = participant(dir.path(), &p, "quick", None, None);
    wait_participants(&p, 2);
    let mut t = db.transaction();
    t.put("k", "first").unwrap();
    let err = t.commit_two_phase(Duration::from_millis(300)).unwrap_err();
    assert!(
        err.to_string().contains("no answer in time from slow"),
        "{err}"
    );
    // Version 2 again, while the slow participant is still deciding on the first round:
    // its late PREPARED (for the aborted round) must not count for this one.
    let mut t = db.transaction();
    t.put("k", "second").unwrap();
    assert_eq!(t.commit_two_phase(Duration::from_secs(20)).unwrap(), 2);
    // Committed only after the slow participant checked the second round's update.
    assert_eq!(
        *calls.lock().unwrap(),
        vec![b"first".to_vec(), b"second".to_vec()]
    );
    for x in [&slow, &quick] {
        x.sub.wait_for_version(2, CONVERGE).unwrap();
        assert_eq!(x.sub.get("k").unwrap().as_deref(), Some(&b"second"[..]));
    }
    // Its vote for the first round was not taken; the one for the second was.
    assert_eq!(slow.sub.stats().votes_prepared, 1);
    assert_eq!(*slow.seen.lock().unwrap(), vec![1, 2]);
}

#[test]
fn a_prepare_waited_for_in_slices_answers_once_the_votes_are_in() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    // The vote waits until the test has seen a slice end with no answer.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = Mutex::new(held);
    let slow: mcsync::VoteCallback = Box::new(move |_| {
        let _ = held.lock().unwrap().recv_timeout(CONVERGE);
        Ok(())
    });
    let part = participant(dir.path(), &p, "slow", None, Some(slow));
    wait_participants(&p, 1);
    let mut t = db.transaction();
    t.put("k", "v").unwrap();
    let mut pending = t.submit_prepare(Duration::from_secs(60)).unwrap();
    let mut empty_slices = 0;
    let prepared = loop {
        match pending.wait(Duration::from_millis(20)) {
            Some(r) => break r.unwrap(),
            None => {
                empty_slices += 1;
                let _ = release.send(());
            }
        }
    };
    assert!(
        empty_slices > 0,
        "the vote was held until a slice ended empty"
    );
    let err = pending.wait(Duration::ZERO).unwrap().unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Closed,
        "the outcome is handed out once"
    );
    let v = prepared.commit().unwrap();
    part.sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(part.sub.get("k").unwrap().as_deref(), Some(&b"v"[..]));

    // Dropping a pending prepare rolls the update back: the version is given back.
    let mut t = db.transaction();
    t.put("gone", "x").unwrap();
    drop(t.submit_prepare(Duration::from_secs(60)).unwrap());
    let v2 = db.put("after", "y").unwrap();
    part.sub.wait_for_version(v2, CONVERGE).unwrap();
    assert_eq!(v2, v + 1, "the dropped prepare's version was given back");
    assert_eq!(part.sub.get("gone").unwrap(), None);
}
