//! End-to-end replication over real loopback multicast with real LMDB stores.

use mcsync::{Publisher, Subscription};
use mcsync_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};

/// Collects callback versions so tests can check order and uniqueness.
fn recorder() -> (
    Arc<Mutex<Vec<u64>>>,
    impl FnMut(&mcsync::Update) + Send + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    (seen, move |u: &mcsync::Update| {
        s2.lock().unwrap().push(u.version)
    })
}

fn assert_replica_equals_master(sub: &Subscription, db: &mcsync::Database) {
    let replica: Vec<_> = sub.iter().unwrap().collect();
    let master = db.snapshot().unwrap();
    assert_eq!(
        replica.len(),
        master.len(),
        "record count of {}",
        sub.name()
    );
    assert!(
        replica == master,
        "replica of {} differs from master",
        sub.name()
    );
}

/// A value size drawn so most updates are small and about 1 % are large (up to 256 KiB).
fn value_len(rng: &mut StdRng) -> usize {
    match rng.gen_range(0..100) {
        0 => rng.gen_range(16 * 1024..=256 * 1024),
        1..=9 => rng.gen_range(1024..8 * 1024),
        _ => rng.gen_range(0..600),
    }
}

#[test]
fn three_subscribers_converge_under_five_percent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("inventory").unwrap();
    let mut subs = Vec::new();
    for i in 0..3u64 {
        let s = open_subscriber(
            &dir.path().join(format!("sub{i}")),
            &publisher,
            Some((0.05, 1000 + i)),
        );
        let (seen, cb) = recorder();
        let sub = s.subscribe("inventory", cb).unwrap();
        subs.push((s, sub, seen));
    }
    let mut rng = StdRng::seed_from_u64(7);
    let mut last = 0;
    for i in 0..10_000u32 {
        let mut t = db.transaction();
        let ops = rng.gen_range(1..=4);
        for _ in 0..ops {
            let k = format!("item-{:05}", rng.gen_range(0..3000));
            if rng.gen_bool(0.15) {
                t.delete(&k).unwrap();
            } else {
                let mut v = vec![0u8; value_len(&mut rng)];
                rng.fill(&mut v[..]);
                t.put(&k, v).unwrap();
            }
        }
        last = t.commit().unwrap();
        assert_eq!(last, u64::from(i) + 1);
    }
    let mut lost = 0;
    for (_, sub, seen) in &subs {
        sub.wait_for_version(last, CONVERGE).unwrap();
        assert_replica_equals_master(sub, &db);
        assert_versions(&seen.lock().unwrap(), 1..=last);
        let st = sub.stats();
        lost += st.dropped_injected;
        assert!(st.dropped_injected > 0, "loss was injected: {st:?}");
        assert!(
            st.packets_repaired + st.repair_updates > 0,
            "losses were repaired: {st:?}"
        );
        assert_eq!(
            st.dropped_auth + st.dropped_malformed + st.dropped_source,
            0,
            "{st:?}"
        );
    }
    let p = publisher.stats();
    assert!(
        p.repairs_served + p.packet_repairs_served > 0 && p.updates_committed == last,
        "{p:?}"
    );
    println!("lost {lost} packets across 3 subscribers; publisher {p:?}");
}

#[test]
fn late_subscriber_catches_up_and_reopened_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("catalog").unwrap();
    for i in 0..5_000u32 {
        db.put(format!("k{}", i % 1500), i.to_be_bytes()).unwrap();
    }
    // A new subscriber catches up from version 0 through the journal.
    let sdir = dir.path().join("late");
    // Step by step (not compacted), so every version is called back.
    let step_by_step = || {
        let mut c = subscriber_config(&sdir, &publisher, None);
        c.compact_catch_up_after = u64::MAX;
        mcsync::Subscriber::open(c).unwrap()
    };
    let s = step_by_step();
    let (seen, cb) = recorder();
    let sub = s.subscribe("catalog", cb).unwrap();
    sub.wait_for_version(5_000, CONVERGE).unwrap();
    assert_replica_equals_master(&sub, &db);
    assert_versions(&seen.lock().unwrap(), 1..=5_000);
    assert!(sub.stats().repair_updates >= 5_000);
    sub.close().unwrap();
    s.close().unwrap();
    drop(s);

    // Published while it is closed.
    for i in 0..500u32 {
        db.put(format!("k{i}"), b"after").unwrap();
    }
    let s = step_by_step();
    let (seen, cb) = recorder();
    let sub = s.subscribe("catalog", cb).unwrap();
    assert_eq!(sub.version(), 5_000, "resumes from its stored version");
    sub.wait_for_version(5_500, CONVERGE).unwrap();
    assert_replica_equals_master(&sub, &db);
    assert_versions(&seen.lock().unwrap(), 5_001..=5_500);
    assert_eq!(sub.stats().repair_updates, 500);
}

#[test]
fn reopened_publisher_continues_the_version_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("pub");
    let cfg = publisher_config(&pdir);
    let publisher = Publisher::open(cfg.clone()).unwrap();
    let db = publisher.database("orders").unwrap();
    for i in 0..300u32 {
        db.put(format!("o{i}"), b"x").unwrap();
    }
    let s = open_subscriber(&dir.path().join("sub"), &publisher, Some((0.05, 3)));
    let (seen, cb) = recorder();
    let sub = s.subscribe("orders", cb).unwrap();
    sub.wait_for_version(300, CONVERGE).unwrap();
    let control = publisher.control_addr();
    publisher.close().unwrap();
    drop(publisher);

    // Same data directory, same control address: the subscriber's repair connection
    // reconnects, learns the new source port, and multicast resumes on a fresh stream.
    let mut cfg2 = cfg.clone();
    cfg2.control_addr = control;
    let publisher = Publisher::open(cfg2).unwrap();
    let db = publisher.database("orders").unwrap();
    assert_eq!(db.version(), 300);
    let mut last = 0;
    for i in 0..300u32 {
        last = db.put(format!("o{i}"), b"y").unwrap();
    }
    assert_eq!(last, 600);
    sub.wait_for_version(600, CONVERGE).unwrap();
    assert_replica_equals_master(&sub, &db);
    assert_versions(&seen.lock().unwrap(), 1..=600);
}
