//! Relays: master → relay → downstream subscribers, with real sockets on 127.0.0.1 and
//! 239.x groups. Every downstream replica equals the master (keys, values, versions,
//! timestamps); the relay has its own keys and grants; relays chain; an upstream history
//! change resets the relay, whose downstream follow; downstream loss is repaired from the
//! relay's journal. (tests/relay_crash.rs kills a `mcsync relay` process.)

use mcsync::{
    Authentication, Database, Grant, LossConfig, Publisher, Relay, RelayConfig, ServerTrust,
    Subscriber, SubscriberConfig, Subscription, Update,
};
use mcsync_tests::{assert_versions, publisher_config, subscriber_config, wait_until, CONVERGE};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

const DB: &str = "ledger";

/// A relay of `DB` from `upstream` (as `user`), publishing from `dir`.
fn open_relay(dir: &Path, upstream: SubscriberConfig) -> Relay {
    Relay::open(RelayConfig {
        upstream,
        downstream: publisher_config(&dir.join("down")),
        databases: vec![DB.to_owned()],
    })
    .expect("open relay")
}

/// The upstream config of a relay under `dir` subscribing to `publisher`.
fn upstream_of(dir: &Path, publisher: &Publisher) -> SubscriberConfig {
    subscriber_config(&dir.join("up"), publisher, None)
}

/// The upstream config of a relay under `dir` subscribing to another relay.
fn upstream_of_relay(dir: &Path, relay: &Relay) -> SubscriberConfig {
    downstream_config(&dir.join("up"), relay, None)
}

/// A subscriber config for a downstream replica of `relay`.
fn downstream_config(dir: &Path, relay: &Relay, loss: Option<(f64, u64)>) -> SubscriberConfig {
    let fp = relay.fingerprint().expect("TLS relay").to_owned();
    let mut c = SubscriberConfig::new(dir, relay.control_addr(), ServerTrust::Fingerprint(fp));
    c.user = "tester".into();
    c.loss = loss.map(|(probability, seed)| LossConfig {
        probability,
        burst_len: 1,
        seed,
    });
    c
}

/// Every version and timestamp a subscription's callback saw, in order.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

fn subscribe(s: &Subscriber) -> (Subscription, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let sub = s
        .subscribe(DB, move |u: &Update| {
            s2.lock().unwrap().push((u.version, u.timestamp_us))
        })
        .expect("subscribe");
    (sub, seen)
}

/// Commits `n` updates of two records each, the second deleting an older key now and then.
fn publish(db: &Database, from: u64, n: u64) -> u64 {
    let mut v = 0;
    for i in from..from + n {
        let mut t = db.transaction();
        t.put(format!("k{:04}", i % 97), format!("value {i}"))
            .unwrap();
        t.put(format!("n{i:05}"), vec![b'x'; (i % 300) as usize])
            .unwrap();
        if i % 7 == 0 {
            t.delete(format!("n{:05}", i / 2)).unwrap();
        }
        v = t.commit().unwrap();
    }
    v
}

/// Waits until `sub`'s replica equals the master's state at the master's version.
fn wait_equal(sub: &Subscription, db: &Database) {
    let v = db.version();
    sub.wait_for_version(v, CONVERGE)
        .expect("downstream reached the master's version");
    let want = db.snapshot().unwrap();
    wait_until(CONVERGE, || {
        sub.version() >= v && sub.iter().unwrap().collect::<Vec<_>>() == want
    });
}

#[test]
fn downstream_replicas_of_a_relay_equal_the_master_and_never_see_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let master = Publisher::open(publisher_config(&dir.path().join("master"))).unwrap();
    let db = master.database(DB).unwrap();
    publish(&db, 0, 60);
    // A direct subscriber of the master: the timestamps downstream must equal.
    let direct = mcsync_tests::open_subscriber(&dir.path().join("direct"), &master, None);
    let (_direct_sub, direct_seen) = subscribe(&direct);
    let relay = open_relay(
        &dir.path().join("relay"),
        upstream_of(&dir.path().join("relay"), &master),
    );
    let clean = Subscriber::open(downstream_config(&dir.path().join("d1"), &relay, None)).unwrap();
    let lossy = Subscriber::open(downstream_config(
        &dir.path().join("d2"),
        &relay,
        Some((0.1, 17)),
    ))
    .unwrap();
    let (sub1, seen1) = subscribe(&clean);
    let (sub2, seen2) = subscribe(&lossy);
    // Commits during, and a key rotation upstream: the relay's keys are its own.
    let epoch = relay.key_epoch(DB).unwrap();
    let last = publish(&db, 60, 240);
    db.rotate_key().unwrap();
    let last = last.max(publish(&db, 300, 100));
    assert_eq!(last, 400);
    wait_equal(&sub1, &db);
    wait_equal(&sub2, &db);
    assert_eq!(
        relay.key_epoch(DB).unwrap(),
        epoch,
        "an upstream rotation is not the relay's"
    );
    assert_eq!(relay.version(DB).unwrap(), last);
    assert_ne!(relay.incarnation(DB).unwrap(), 0);
    for seen in [&seen1, &seen2] {
        let versions: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.0).collect();
        assert_versions(&versions, 1..=last);
    }
    // Same master versions and commit timestamps downstream.
    wait_until(CONVERGE, || {
        direct_seen.lock().unwrap().len() as u64 >= last
    });
    let master_ts: BTreeMap<u64, u64> = direct_seen.lock().unwrap().iter().copied().collect();
    let down_ts: BTreeMap<u64, u64> = seen1.lock().unwrap().iter().copied().collect();
    assert_eq!(down_ts, master_ts);
    // The lossy replica's losses were repaired from the relay's journal.
    let st = sub2.stats();
    assert!(st.dropped_injected > 0, "{st:?}");
    let down = relay.downstream_stats().unwrap();
    assert!(
        down.packet_repairs_served + down.repairs_served > 0,
        "the relay served repairs: {down:?}"
    );
    // An import is counted once its outcome is collected, just after it is journaled.
    wait_until(CONVERGE, || relay.stats().imported >= last);
    let rs = relay.stats();
    assert_eq!((rs.imported, rs.resets), (last, 0), "{rs:?}");
    relay.close().unwrap();
}

#[test]
fn a_relay_granted_some_access_groups_serves_only_those_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("master"));
    cfg.authentication = Authentication::Custom(Arc::new(
        |user: &str, _: &str, _: std::net::SocketAddr| match user {
            "relay-eu" => Ok(Grant::all(&["eu"])),
            _ => Ok(Grant::all(&["eu", "us"])),
        },
    ));
    let master = Publisher::open(cfg).unwrap();
    let db = master.database(DB).unwrap();
    let mut up = upstream_of(&dir.path().join("relay"), &master);
    up.user = "relay-eu".into();
    // Downstream grants are the relay's own: "eu-reader" reads eu records, others none.
    let mut down_cfg = publisher_config(&dir.path().join("relay").join("down"));
    down_cfg.authentication = Authentication::Custom(Arc::new(
        |user: &str, _: &str, _: std::net::SocketAddr| match user {
            "eu-reader" => Ok(Grant::all(&["eu"])),
            _ => Ok(Grant::all(&[])),
        },
    ));
    let mut relay_cfg = RelayConfig {
        upstream: up,
        downstream: down_cfg,
        databases: vec![DB.to_owned()],
    };
    let relay = Relay::open(relay_cfg.clone()).unwrap();
    relay_cfg.downstream.control_addr = relay.control_addr();
    let mut eu_cfg = downstream_config(&dir.path().join("d-eu"), &relay, None);
    eu_cfg.user = "eu-reader".into();
    let eu = Subscriber::open(eu_cfg).unwrap();
    let (eu_sub, _) = subscribe(&eu);
    let plain = Subscriber::open(downstream_config(&dir.path().join("d"), &relay, None)).unwrap();
    let (plain_sub, _) = subscribe(&plain);
    let commit = |i: u64| {
        let mut t = db.transaction();
        t.put(format!("open{}", i % 120), format!("everyone {i}"))
            .unwrap();
        t.put_with_groups(format!("eu{}", i % 120), format!("eu only {i}"), &["eu"])
            .unwrap();
        t.put_with_groups(format!("us{}", i % 120), format!("us only {i}"), &["us"])
            .unwrap();
        t.commit().unwrap()
    };
    let check = |subs: [&Subscription; 2], last: u64| {
        let master_state = db.snapshot().unwrap();
        for (sub, prefixes) in subs.into_iter().zip([&["open", "eu"][..], &["open"][..]]) {
            sub.wait_for_version(last, CONVERGE).unwrap();
            let want: Vec<_> = master_state
                .iter()
                .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_bytes())))
                .cloned()
                .collect();
            assert_eq!(want.len(), 120 * prefixes.len());
            assert_eq!(
                sub.iter().unwrap().collect::<Vec<_>>(),
                want,
                "{prefixes:?}"
            );
        }
    };
    let last = (0..120).fold(0, |_, i| commit(i));
    check([&eu_sub, &plain_sub], last);
    // Away for longer than a step-by-step catch-up (its replica catches up compacted),
    // the relay still relays every version with its access groups.
    relay.close().unwrap();
    drop(relay);
    let last = (120..1_620).fold(0, |_, i| commit(i));
    let relay = Relay::open(relay_cfg).unwrap();
    check([&eu_sub, &plain_sub], last);
    wait_until(CONVERGE, || relay.stats().imported >= 1_500);
    assert_eq!(relay.stats().imported, 1_500);
    relay.close().unwrap();
}

#[test]
fn chained_relays_deliver_the_master_to_the_last_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let master = Publisher::open(publisher_config(&dir.path().join("master"))).unwrap();
    let db = master.database(DB).unwrap();
    publish(&db, 0, 50);
    let r1dir = dir.path().join("relay1");
    let relay1 = open_relay(&r1dir, upstream_of(&r1dir, &master));
    let r2dir = dir.path().join("relay2");
    let relay2 = open_relay(&r2dir, upstream_of_relay(&r2dir, &relay1));
    let leaf =
        Subscriber::open(downstream_config(&dir.path().join("leaf"), &relay2, None)).unwrap();
    let (sub, seen) = subscribe(&leaf);
    let last = publish(&db, 50, 200);
    wait_equal(&sub, &db);
    let versions: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_versions(&versions, 1..=last);
    assert_eq!(relay2.version(DB).unwrap(), last);
    relay2.close().unwrap();
    relay1.close().unwrap();
}

/// Copies a directory tree (a publisher's data directory, closed).
fn copy_dir(from: &Path, to: &Path) {
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

#[test]
fn an_upstream_history_change_resets_the_relay_and_its_downstream_follow() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("master");
    let mut cfg = publisher_config(&pdir);
    let master = Publisher::open(cfg.clone()).unwrap();
    cfg.control_addr = master.control_addr();
    publish(&master.database(DB).unwrap(), 0, 100);
    master.close().unwrap();
    drop(master);
    copy_dir(&pdir, &dir.path().join("backup"));
    // The master goes on to 200; the relay and its downstream follow.
    let master = Publisher::open(cfg.clone()).unwrap();
    let db = master.database(DB).unwrap();
    assert_eq!(publish(&db, 100, 100), 200);
    let rdir = dir.path().join("relay");
    let relay = open_relay(&rdir, upstream_of(&rdir, &master));
    let down = Subscriber::open(downstream_config(&dir.path().join("d"), &relay, None)).unwrap();
    let (sub, seen) = subscribe(&down);
    wait_equal(&sub, &db);
    let incarnation = relay.incarnation(DB).unwrap();
    master.close().unwrap();
    drop((db, master));
    // Restored from the copy at 100, the master takes other updates.
    std::fs::remove_dir_all(&pdir).unwrap();
    copy_dir(&dir.path().join("backup"), &pdir);
    let master = Publisher::open(cfg).unwrap();
    let db = master.database(DB).unwrap();
    assert_eq!(publish(&db, 5_000, 80), 180);
    wait_until(CONVERGE, || relay.stats().resets >= 1);
    wait_equal(&sub, &db);
    assert_ne!(
        relay.incarnation(DB).unwrap(),
        incarnation,
        "a new history downstream"
    );
    assert!(sub.stats().history_changes >= 1, "{:?}", sub.stats());
    // From there on the new history's updates reach downstream one by one.
    let n = seen.lock().unwrap().len();
    let last = publish(&db, 6_000, 50);
    wait_equal(&sub, &db);
    let versions: Vec<u64> = seen.lock().unwrap()[n..].iter().map(|s| s.0).collect();
    assert_eq!(versions.last(), Some(&last), "{versions:?}");
    relay.close().unwrap();
}

#[test]
fn two_phase_updates_reach_downstream_as_committed_updates_once_decided() {
    let dir = tempfile::tempdir().unwrap();
    let master = Publisher::open(publisher_config(&dir.path().join("master"))).unwrap();
    let db = master.database(DB).unwrap();
    publish(&db, 0, 10);
    let rdir = dir.path().join("relay");
    let relay = open_relay(&rdir, upstream_of(&rdir, &master));
    let down = Subscriber::open(downstream_config(&dir.path().join("d"), &relay, None)).unwrap();
    let (sub, seen) = subscribe(&down);
    let timeout = std::time::Duration::from_secs(30);
    let mut t = db.transaction();
    t.put("tp-committed", "yes").unwrap();
    let committed = t.commit_two_phase(timeout).unwrap();
    let mut t = db.transaction();
    t.put("tp-rolled-back", "no").unwrap();
    t.prepare(timeout).unwrap().rollback().unwrap();
    let last = publish(&db, 10, 5);
    assert_eq!(
        last,
        committed + 5,
        "the rolled-back round gave its version back"
    );
    wait_equal(&sub, &db);
    assert_eq!(
        sub.get("tp-committed").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(sub.get("tp-rolled-back").unwrap(), None);
    let versions: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_versions(&versions, 1..=last);
    relay.close().unwrap();
}

/// A master whose user "relay" is granted group g1 (everyone else: every group).
fn g1_master_config(dir: &Path) -> mcsync::PublisherConfig {
    let mut cfg = publisher_config(&dir.join("master"));
    cfg.authentication = Authentication::Custom(Arc::new(
        |user: &str, _: &str, _: std::net::SocketAddr| match user {
            "relay" => Ok(Grant::all(&["g1"])),
            _ => Ok(Grant::all(&["g1", "g2"])),
        },
    ));
    cfg
}

/// A relay of `master` as user "relay"; downstream, "g1-reader" holds g1, others nothing.
fn g1_relay_config(dir: &Path, master: &Publisher) -> RelayConfig {
    let rdir = dir.join("relay");
    let mut up = upstream_of(&rdir, master);
    up.user = "relay".into();
    let mut down = publisher_config(&rdir.join("down"));
    down.authentication = Authentication::Custom(Arc::new(
        |user: &str, _: &str, _: std::net::SocketAddr| match user {
            "g1-reader" => Ok(Grant::all(&["g1"])),
            _ => Ok(Grant::all(&[])),
        },
    ));
    RelayConfig {
        upstream: up,
        downstream: down,
        databases: vec![DB.to_owned()],
    }
}

/// Commits an unrestricted record and one restricted to g1, both `open{i % keys}` /
/// `secret{i % keys}`.
fn commit_g1(db: &Database, i: u64, keys: u64) -> u64 {
    let mut t = db.transaction();
    t.put(format!("open{:02}", i % keys), format!("everyone {i}"))
        .unwrap();
    t.put_with_groups(
        format!("secret{:02}", i % keys),
        format!("g1 only {i}"),
        &["g1"],
    )
    .unwrap();
    t.commit().unwrap()
}

/// Downstream replicas of a relay of g1 records: one read by "g1-reader", one by a user
/// without groups.
struct G1Downstream {
    _subscribers: Vec<Subscriber>,
    g1: Subscription,
    plain: Subscription,
}

impl G1Downstream {
    fn open(dir: &Path, relay: &Relay) -> G1Downstream {
        let mut g1_cfg = downstream_config(&dir.join("d-g1"), relay, None);
        g1_cfg.user = "g1-reader".into();
        let g1s = Subscriber::open(g1_cfg).unwrap();
        let plains =
            Subscriber::open(downstream_config(&dir.join("d-plain"), relay, None)).unwrap();
        let (g1, _) = subscribe(&g1s);
        let (plain, _) = subscribe(&plains);
        G1Downstream {
            _subscribers: vec![g1s, plains],
            g1,
            plain,
        }
    }

    /// Waits until both replicas reached the master's version with the records they may
    /// read, then checks the user without g1 holds no restricted record.
    fn check(&self, db: &Database) {
        let v = db.version();
        let master = db.snapshot().unwrap();
        let of = |prefixes: &[&str]| -> Vec<_> {
            master
                .iter()
                .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_bytes())))
                .cloned()
                .collect()
        };
        let (all, open) = (of(&["open", "secret"]), of(&["open"]));
        wait_until(CONVERGE, || {
            self.g1.version() == v && self.g1.iter().unwrap().collect::<Vec<_>>() == all
        });
        wait_until(CONVERGE, || {
            self.plain.version() == v
                && self
                    .plain
                    .iter()
                    .unwrap()
                    .filter(|(k, _)| k.starts_with(b"open"))
                    .collect::<Vec<_>>()
                    == open
        });
        let leaked: Vec<String> = self
            .plain
            .iter()
            .unwrap()
            .filter(|(k, _)| !k.starts_with(b"open"))
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect();
        assert!(
            leaked.is_empty(),
            "records restricted to g1 reached a downstream user without it: {leaked:?}"
        );
    }
}

#[test]
fn access_groups_survive_an_upstream_reset_of_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = g1_master_config(dir.path());
    let pdir = cfg.data_dir.clone();
    let master = Publisher::open(cfg.clone()).unwrap();
    cfg.control_addr = master.control_addr();
    let db = master.database(DB).unwrap();
    let last = (0..100).fold(0, |_, i| commit_g1(&db, i, 50));
    assert_eq!(last, 100);
    master.close().unwrap();
    drop((db, master));
    copy_dir(&pdir, &dir.path().join("backup"));
    // The master goes on to 200 rewriting records 0..20 only (so records 20..50 are the
    // same in both histories: the relay's resync keeps its copies, not fetched).
    let master = Publisher::open(cfg.clone()).unwrap();
    let db = master.database(DB).unwrap();
    for i in 100..200 {
        commit_g1(&db, i, 20);
    }
    let relay = Relay::open(g1_relay_config(dir.path(), &master)).unwrap();
    let down = G1Downstream::open(dir.path(), &relay);
    down.check(&db);
    master.close().unwrap();
    drop((db, master));
    // Restored from the copy at 100, the master takes other updates: the relay's upstream
    // resyncs by hash and hands the relay a reset, which replaces its database.
    std::fs::remove_dir_all(&pdir).unwrap();
    copy_dir(&dir.path().join("backup"), &pdir);
    let master = Publisher::open(cfg).unwrap();
    let db = master.database(DB).unwrap();
    for i in 5_000..5_080 {
        commit_g1(&db, i, 20);
    }
    wait_until(CONVERGE, || relay.stats().resets >= 1);
    down.check(&db);
    // Later updates keep their groups too.
    for i in 6_000..6_030 {
        commit_g1(&db, i, 40);
    }
    down.check(&db);
    relay.close().unwrap();
}

#[test]
fn access_groups_survive_a_hash_resync_of_the_relays_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = g1_master_config(dir.path());
    // The journal keeps only its last 10 entries: a relay away for longer resyncs by hash.
    cfg.retention = mcsync::Retention {
        max_bytes: 1,
        max_age: std::time::Duration::from_secs(3600),
        min_count: 10,
        min_free_disk_bytes: 0,
    };
    let master = Publisher::open(cfg).unwrap();
    let db = master.database(DB).unwrap();
    for i in 0..40 {
        commit_g1(&db, i, 20);
    }
    let mut relay_cfg = g1_relay_config(dir.path(), &master);
    let relay = Relay::open(relay_cfg.clone()).unwrap();
    relay_cfg.downstream.control_addr = relay.control_addr();
    let down = G1Downstream::open(dir.path(), &relay);
    down.check(&db);
    let away_at = relay.version(DB).unwrap();
    relay.close().unwrap();
    drop(relay);
    // Away: records change and new restricted ones appear, in more transactions than the
    // journal keeps, and the journal is trimmed past the relay.
    for i in 40..100 {
        commit_g1(&db, i, 40);
    }
    master.apply_retention().unwrap();
    assert!(db.oldest_version() > away_at + 1, "journal trimmed");
    let relay = Relay::open(relay_cfg).unwrap();
    down.check(&db);
    // The replica resynced by hash (records fetched with their groups); its changes, one
    // update at the version reached, cannot be imported version by version, so the relay
    // is reset from its replica (groups from `acl/<db>`).
    let rs = relay.stats();
    assert!(rs.resets >= 1, "{rs:?}");
    relay.close().unwrap();
}
