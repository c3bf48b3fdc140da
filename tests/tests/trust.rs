//! Trust: one writer per data directory, delivery of every update to the host, and no
//! silent divergence when the master's history changes.

use mcsync::{ErrorKind, Publisher};
use mcsync_tests::*;

const DB: &str = "orders";

#[test]
fn a_data_directory_has_one_publisher_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(dir.path())).unwrap();
    let db = p.database(DB).unwrap();
    assert_eq!(db.put("k", "v").unwrap(), 1);
    let err = Publisher::open(publisher_config(dir.path()))
        .err()
        .expect("second publisher refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("in use by this process"), "{msg}");
    // The first publisher is unharmed and the version sequence stays its own.
    assert_eq!(db.put("k", "w").unwrap(), 2);
    p.close().unwrap();
    drop((db, p));
    // Once closed, the directory can be opened again and continues the history.
    let p = Publisher::open(publisher_config(dir.path())).unwrap();
    assert_eq!(p.database(DB).unwrap().version(), 2);
}

#[test]
fn a_data_directory_has_one_subscriber_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let sub_dir = dir.path().join("sub");
    let s = open_subscriber(&sub_dir, &p, None);
    let err = mcsync::Subscriber::open(subscriber_config(&sub_dir, &p, None))
        .err()
        .expect("second subscriber refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    s.close().unwrap();
    drop(s);
    mcsync::Subscriber::open(subscriber_config(&sub_dir, &p, None)).unwrap();
}

use mcsync::{Retention, SubscribeOptions, Subscriber, Subscription};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Subscribes `s` to DB with a host table as the callback, continuing after `after`.
/// When `close_at` is given, the callback closes the subscription from inside once the
/// host reaches that version, leaving the rest of the applied batch undelivered.
fn host_subscription(
    s: &Subscriber,
    host: &Arc<Mutex<HostTable>>,
    after: Option<u64>,
    close_at: Option<u64>,
) -> Subscription {
    let h = host.clone();
    let me: Arc<Mutex<Option<Subscription>>> = Arc::default();
    let me2 = me.clone();
    let sub = s
        .subscribe_with_options(
            DB,
            SubscribeOptions {
                callback: Some(Box::new(move |u| {
                    let mut h = h.lock().unwrap();
                    h.apply(u);
                    if close_at.is_some_and(|c| h.version >= c) {
                        if let Some(sub) = me2.lock().unwrap().take() {
                            sub.close().unwrap();
                        }
                    }
                })),
                after,
                ..SubscribeOptions::default()
            },
        )
        .unwrap();
    *me.lock().unwrap() = Some(sub.clone());
    sub
}

/// A subscriber that catches up step by step (never compacted), so every version is
/// called back individually.
fn stepwise_subscriber(dir: &std::path::Path, p: &Publisher) -> Subscriber {
    let mut c = subscriber_config(dir, p, None);
    c.compact_catch_up_after = u64::MAX;
    Subscriber::open(c).unwrap()
}

/// Publishes `n` single-put (and some delete) transactions; returns the last version.
fn publish(db: &mcsync::Database, from: u32, n: u32) -> u64 {
    let mut v = 0;
    for i in from..from + n {
        v = if i % 7 == 3 {
            db.delete(format!("k{}", (i / 2) % 150)).unwrap()
        } else {
            db.put(format!("k{}", i % 150), format!("value {i}"))
                .unwrap()
        };
    }
    v
}

/// Closes `s` once its subscription stopped (from its own callback) and the threads ended.
fn close_after_stop(s: Subscriber, sub: Subscription) {
    wait_until(CONVERGE, || sub.is_closed());
    s.close().unwrap();
    drop((sub, s));
}

#[test]
fn a_host_that_keeps_its_version_gets_every_update_exactly_once_across_close() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    // Published before the replica exists: one catch-up applies it in large batches, so
    // closing from the callback leaves applied updates whose callbacks have not run.
    let first = publish(&db, 0, 600);
    let host = Arc::new(Mutex::new(HostTable::default()));
    let sub_dir = dir.path().join("sub");
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, Some(0), Some(100));
    close_after_stop(s, sub);
    let h1 = host.lock().unwrap().version;
    assert!(h1 >= 100, "host at {h1}");
    let last = publish(&db, 600, 400);
    assert!(last > first);
    // The host reopens, passing the version its own store holds.
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, Some(h1), None);
    sub.wait_for_version(last, CONVERGE).unwrap();
    let st = sub.stats();
    eprintln!("host stopped at {h1}; replayed {}", st.updates_replayed);
    let h = host.lock().unwrap();
    assert_versions(&h.seen, 1..=last);
    assert_eq!(h.records(), db.snapshot().unwrap());
    assert_eq!(h.resets, 0);
}

#[test]
fn without_the_hosts_version_delivery_is_at_least_once_in_order_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    publish(&db, 0, 600);
    let host = Arc::new(Mutex::new(HostTable::default()));
    let sub_dir = dir.path().join("sub");
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, None, Some(100));
    close_after_stop(s, sub);
    let first_session = host.lock().unwrap().seen.clone();
    let last = publish(&db, 600, 200);
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, None, None);
    sub.wait_for_version(last, CONVERGE).unwrap();
    let h = host.lock().unwrap();
    let second_session = &h.seen[first_session.len()..];
    assert_versions(&first_session, 1..=*first_session.last().unwrap());
    // The second session starts at or before the first one's end + 1 and runs to the end.
    let start = second_session[0];
    assert!(
        start <= first_session.last().unwrap() + 1,
        "gap: resumed at {start}"
    );
    assert_versions(second_session, start..=last);
    assert_eq!(h.records(), db.snapshot().unwrap());
}

#[test]
fn a_host_behind_its_replica_is_served_from_the_journal_or_reset_when_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    let p = Publisher::open(cfg.clone()).unwrap();
    let db = p.database(DB).unwrap();
    let v1 = publish(&db, 0, 300);
    let sub_dir = dir.path().join("sub");
    // A replica with no host at all: it applies everything, delivers nothing.
    {
        let s = stepwise_subscriber(&sub_dir, &p);
        let sub = s.subscribe_with(DB, None).unwrap();
        sub.wait_for_version(v1, CONVERGE).unwrap();
        s.close().unwrap();
    }
    // A host that restored its table to version 120 (say, from a backup): the journal
    // still reaches back, so it gets exactly 121..=v1.
    let mut restored = HostTable::default();
    {
        let all = Arc::new(Mutex::new(HostTable::default()));
        let a2 = all.clone();
        let probe = stepwise_subscriber(&dir.path().join("probe"), &p);
        let sub = probe
            .subscribe(DB, move |u| {
                let mut h = a2.lock().unwrap();
                if u.version <= 120 {
                    h.apply(u);
                }
            })
            .unwrap();
        sub.wait_for_version(v1, CONVERGE).unwrap();
        restored.rows = all.lock().unwrap().rows.clone();
        restored.version = 120;
    }
    let host = Arc::new(Mutex::new(restored));
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, Some(120), None);
    sub.wait_for_version(v1, CONVERGE).unwrap();
    {
        let h = host.lock().unwrap();
        assert_versions(&h.seen, 121..=v1);
        assert_eq!(h.records(), db.snapshot().unwrap());
    }
    s.close().unwrap();
    drop((sub, s));
    // Now the journal is trimmed far past version 50 (the publisher restarts keeping only
    // the last 10 entries): a host at 50 can only be reset.
    p.close().unwrap();
    drop((db, p));
    cfg.retention = Retention {
        max_bytes: 1,
        max_age: Duration::from_secs(3600),
        min_count: 10,
        min_free_disk_bytes: 0,
    };
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    let v2 = publish(&db, 300, 100);
    // Trimmed here, or already by the publisher's own retention (it runs every second).
    p.apply_retention().unwrap();
    assert!(
        db.oldest_version() > 51,
        "journal from {}",
        db.oldest_version()
    );
    let host = Arc::new(Mutex::new(HostTable {
        version: 50,
        ..HostTable::default()
    }));
    host.lock()
        .unwrap()
        .rows
        .insert(b"stale-row".to_vec(), b"gone at the master".to_vec());
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, Some(50), None);
    sub.wait_for_version(v2, CONVERGE).unwrap();
    let h = host.lock().unwrap();
    assert_eq!(h.resets, 1, "{:?}", sub.stats());
    // The reset carries the replica's version (v1, unless it caught up meanwhile).
    let r = h.seen[0];
    assert!(r >= v1, "reset at {r}");
    // After it, in order to v2: one by one, or (the journal trimmed past the replica too)
    // as one update at the version a hash resync reached.
    assert!(h.seen.windows(2).all(|w| w[0] < w[1]), "{:?}", h.seen);
    assert_eq!(h.version, v2);
    assert!(!h.rows.contains_key(&b"stale-row"[..]));
    assert_eq!(h.records(), db.snapshot().unwrap());
    assert_eq!(sub.stats().resets_delivered, 1);
}

/// Copies a directory tree (a publisher's data directory, closed).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Waits until the host's table equals the master's state at the master's version.
fn wait_host_equals_master(host: &Arc<Mutex<HostTable>>, db: &mcsync::Database) {
    let v = db.version();
    let want = db.snapshot().unwrap();
    wait_until(CONVERGE, || {
        let h = host.lock().unwrap();
        h.version == v && h.records() == want
    });
}

#[test]
fn a_publisher_restored_from_an_older_copy_makes_replicas_resync_not_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("pub");
    let mut cfg = publisher_config(&pdir);
    let p = Publisher::open(cfg.clone()).unwrap();
    cfg.control_addr = p.control_addr();
    let db = p.database(DB).unwrap();
    assert_eq!(publish(&db, 0, 100), 100);
    p.close().unwrap();
    drop((db, p));
    copy_dir(&pdir, &dir.path().join("backup"));
    // The master goes on to 200 and the replica and its host follow.
    let p = Publisher::open(cfg.clone()).unwrap();
    let db = p.database(DB).unwrap();
    assert_eq!(publish(&db, 100, 100), 200);
    let host = Arc::new(Mutex::new(HostTable::default()));
    let s = stepwise_subscriber(&dir.path().join("sub"), &p);
    let sub = host_subscription(&s, &host, Some(0), None);
    sub.wait_for_version(200, CONVERGE).unwrap();
    p.close().unwrap();
    drop((db, p));
    // The master's data is restored from the copy at version 100 and takes other updates.
    std::fs::remove_dir_all(&pdir).unwrap();
    copy_dir(&dir.path().join("backup"), &pdir);
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    assert_eq!(db.version(), 100);
    assert_eq!(publish(&db, 5_000, 50), 150);
    wait_host_equals_master(&host, &db);
    let st = sub.stats();
    assert!(st.history_changes >= 1, "{st:?}");
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    let resets = host.lock().unwrap().resets;
    assert!(resets >= 1);
    // From there on, exactly the new history's updates, once each, in order.
    let seen_before = host.lock().unwrap().seen.len();
    let last = publish(&db, 6_000, 100);
    wait_host_equals_master(&host, &db);
    let h = host.lock().unwrap();
    assert_versions(&h.seen[seen_before..], 151..=last);
    assert_eq!(h.resets, resets);
}

#[test]
fn a_publisher_whose_data_was_lost_starts_a_new_history_that_replicas_adopt() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    let p = Publisher::open(cfg.clone()).unwrap();
    cfg.control_addr = p.control_addr();
    let db = p.database(DB).unwrap();
    assert_eq!(publish(&db, 0, 200), 200);
    let old = db.incarnation();
    let host = Arc::new(Mutex::new(HostTable::default()));
    let s = stepwise_subscriber(&dir.path().join("sub"), &p);
    let sub = host_subscription(&s, &host, Some(0), None);
    sub.wait_for_version(200, CONVERGE).unwrap();
    p.close().unwrap();
    drop((db, p));
    // A new data directory (only the TLS identity kept): versions start again at 1 and
    // pass the replica's 200 before it hears of them.
    let fresh = dir.path().join("pub-new");
    copy_dir(&dir.path().join("pub").join("tls"), &fresh.join("tls"));
    cfg.data_dir = fresh;
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    assert_ne!(db.incarnation(), old);
    assert_eq!(publish(&db, 9_000, 300), 300);
    wait_host_equals_master(&host, &db);
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    let st = sub.stats();
    assert!(
        st.history_changes >= 1 && st.resets_delivered >= 1,
        "{st:?}"
    );
}

#[test]
fn a_replica_away_while_a_restored_publisher_passed_its_version_still_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("pub");
    let mut cfg = publisher_config(&pdir);
    let p = Publisher::open(cfg.clone()).unwrap();
    cfg.control_addr = p.control_addr();
    let db = p.database(DB).unwrap();
    assert_eq!(publish(&db, 0, 100), 100);
    p.close().unwrap();
    drop((db, p));
    copy_dir(&pdir, &dir.path().join("backup"));
    let p = Publisher::open(cfg.clone()).unwrap();
    let db = p.database(DB).unwrap();
    let incarnation = db.incarnation();
    assert_eq!(publish(&db, 100, 100), 200);
    let host = Arc::new(Mutex::new(HostTable::default()));
    let sub_dir = dir.path().join("sub");
    {
        let s = stepwise_subscriber(&sub_dir, &p);
        let sub = host_subscription(&s, &host, Some(0), None);
        sub.wait_for_version(200, CONVERGE).unwrap();
        s.close().unwrap();
    }
    p.close().unwrap();
    drop((db, p));
    // Restored from the copy, the master publishes other updates past the replica's 200
    // while the replica is away: versions alone cannot tell the histories apart.
    std::fs::remove_dir_all(&pdir).unwrap();
    copy_dir(&dir.path().join("backup"), &pdir);
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    assert_ne!(
        db.incarnation(),
        incarnation,
        "a restored data file is a new history"
    );
    assert_eq!(publish(&db, 7_000, 150), 250);
    let after = host.lock().unwrap().version;
    let s = stepwise_subscriber(&sub_dir, &p);
    let sub = host_subscription(&s, &host, Some(after), None);
    wait_host_equals_master(&host, &db);
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    assert!(sub.stats().history_changes >= 1, "{:?}", sub.stats());
}
