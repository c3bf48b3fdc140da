//! Journal retention and hash resync from history (content hashes per record).

use mcsync::{Publisher, Retention, Subscriber};
use mcsync_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Duration;

const DB: &str = "catalog";

/// A publisher whose journal keeps at least only 10 entries and at most 1 byte beyond
/// that, so `apply_retention` trims everything older.
fn tight_publisher(dir: &Path) -> Publisher {
    let mut cfg = publisher_config(&dir.join("pub"));
    cfg.retention = Retention {
        max_bytes: 1,
        max_age: Duration::from_secs(3600),
        min_count: 10,
        min_free_disk_bytes: 0,
    };
    Publisher::open(cfg).unwrap()
}

/// Loads `n` records of ~100-byte values in transactions of 1,000.
fn load(db: &mcsync::Database, n: u32, tag: &str) -> u64 {
    let mut v = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut t = db.transaction();
        for i in chunk {
            t.put(
                format!("record-{i:06}"),
                format!("{tag}-{i:06}-{}", "x".repeat(80)),
            )
            .unwrap();
        }
        v = t.commit().unwrap();
    }
    v
}

/// Changes `n` random records (puts), deletes a few and adds a few.
fn churn(db: &mcsync::Database, total: u32, n: u32, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = db.transaction();
    for _ in 0..n {
        let i = rng.gen_range(0..total);
        match rng.gen_range(0..10) {
            0 => t.delete(format!("record-{i:06}")).unwrap(),
            1 => t.put(format!("new-{i:06}-{seed}"), "added").unwrap(),
            _ => t
                .put(
                    format!("record-{i:06}"),
                    format!("changed-{seed}-{}", "y".repeat(80)),
                )
                .unwrap(),
        }
    }
    t.commit().unwrap()
}

fn assert_equal(sub: &mcsync::Subscription, db: &mcsync::Database) {
    let replica: Vec<_> = sub.iter().unwrap().collect();
    let master = db.snapshot().unwrap();
    assert_eq!(replica.len(), master.len());
    assert!(replica == master, "replica differs from master");
}

#[test]
fn offline_subscriber_past_trimmed_journal_converges_by_hash_resync() {
    let dir = tempfile::tempdir().unwrap();
    let p = tight_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let v = load(&db, 100_000, "v1");
    let sdir = dir.path().join("sub");
    {
        let s = open_subscriber(&sdir, &p, None);
        let sub = s.subscribe(DB, |_| {}).unwrap();
        sub.wait_for_version(v, CONVERGE).unwrap();
    }
    // 1 % of the records change while the subscriber is away, in more than `min_count`
    // transactions, and the journal is trimmed past its version.
    let mut last = 0;
    for k in 0..20 {
        last = churn(&db, 100_000, 50, k);
    }
    // Trimmed here, or already by the publisher's own retention (it runs every second).
    p.apply_retention().unwrap();
    assert!(
        db.oldest_version() > v + 1,
        "journal from {}",
        db.oldest_version()
    );
    // A fresh replica (full copy) for comparison of bytes.
    let full = open_subscriber(&dir.path().join("fresh"), &p, None);
    let fsub = full.subscribe(DB, |_| {}).unwrap();
    fsub.wait_for_version(last, CONVERGE).unwrap();
    assert_equal(&fsub, &db);
    let fs = fsub.stats();
    assert_eq!(fs.catchups_full_copy, 1, "{fs:?}");

    let t0 = std::time::Instant::now();
    let s = open_subscriber(&sdir, &p, None);
    let sub = s.subscribe(DB, |_| {}).unwrap();
    sub.wait_for_version(last, CONVERGE).unwrap();
    let took = t0.elapsed();
    assert_equal(&sub, &db);
    let st = sub.stats();
    assert_eq!(st.catchups_resync, 1, "{st:?}");
    println!("hash resync of 100,000 records with 1 % changed took {took:?}");
    let fraction = st.resync_bytes as f64 / fs.resync_bytes as f64;
    println!(
        "hash resync moved {} bytes; a full copy {} bytes: {:.2} % ({} fetched, {} deleted)",
        st.resync_bytes,
        fs.resync_bytes,
        fraction * 100.0,
        st.resync_fetched,
        st.resync_deleted
    );
    assert!(
        st.resync_fetched >= 800 && st.resync_fetched <= 1000,
        "{st:?}"
    );
    assert!(
        fraction <= 0.03,
        "resync used {:.2} % of a full copy",
        fraction * 100.0
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn replica_restored_from_an_older_backup_converges() {
    let dir = tempfile::tempdir().unwrap();
    let p = tight_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let v = load(&db, 5_000, "v1");
    let sdir = dir.path().join("sub");
    let backup = dir.path().join("backup");
    let s = open_subscriber(&sdir, &p, None);
    let sub = s.subscribe(DB, |_| {}).unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    sub.close().unwrap();
    s.close().unwrap();
    drop((sub, s));
    copy_dir(&sdir, &backup);
    // The replica moves on, then is restored from the older backup.
    let s = open_subscriber(&sdir, &p, None);
    let sub = s.subscribe(DB, |_| {}).unwrap();
    let mut last = 0;
    for k in 0..15 {
        last = churn(&db, 5_000, 40, 100 + k);
    }
    sub.wait_for_version(last, CONVERGE).unwrap();
    sub.close().unwrap();
    s.close().unwrap();
    drop((sub, s));
    p.apply_retention().unwrap();
    std::fs::remove_dir_all(&sdir).unwrap();
    copy_dir(&backup, &sdir);
    let s = open_subscriber(&sdir, &p, None);
    let sub = s.subscribe(DB, |_| {}).unwrap();
    assert_eq!(sub.version(), v, "restored at the backup's version");
    sub.wait_for_version(last, CONVERGE).unwrap();
    assert_equal(&sub, &db);
    assert_eq!(sub.stats().catchups_resync, 1);
}

/// Edits a replica's LMDB file directly, behind mcsync's back: one record changed, one
/// deleted, one added (hashes and digests left as they were).
fn tamper(sdir: &Path) {
    use lmdb::Transaction;
    let env = lmdb::Environment::new().set_max_dbs(64).open(sdir).unwrap();
    let t = env.open_db(Some(&format!("replica/{DB}"))).unwrap();
    let mut txn = env.begin_rw_txn().unwrap();
    let w = lmdb::WriteFlags::empty();
    txn.put(t, b"record-000007", b"forged value", w).unwrap();
    txn.del(t, b"record-000042", None).unwrap();
    txn.put(t, b"planted-record", b"should not be here", w)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_tampered_replica_is_detected_by_verify_and_repaired_by_resync() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    let v = load(&db, 3_000, "v1");
    let sdir = dir.path().join("sub");
    {
        let s = open_subscriber(&sdir, &p, None);
        let sub = s.subscribe(DB, |_| {}).unwrap();
        sub.wait_for_version(v, CONVERGE).unwrap();
        let ok = s.verify(DB).unwrap();
        assert!(ok.in_agreement(), "{ok:?}");
    }
    tamper(&sdir);
    let s = Subscriber::open(subscriber_config(&sdir, &p, None)).unwrap();
    let report = s.verify(DB).unwrap();
    assert!(!report.in_agreement());
    assert!(
        report.differing_ranges.len() >= 2 && report.differing_ranges.len() <= 3,
        "{report:?}"
    );
    let fixed = s.resync(DB).unwrap();
    assert_eq!((fixed.fetched, fixed.deleted), (2, 1), "{fixed:?}");
    assert!(s.verify(DB).unwrap().in_agreement());
    let sub = s.subscribe(DB, |_| {}).unwrap();
    assert_equal(&sub, &db);
}

#[test]
fn publishing_continues_during_a_resync_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let p = tight_publisher(dir.path());
    let db = p.database(DB).unwrap();
    load(&db, 50_000, "v1");
    churn(&db, 50_000, 100, 1);
    p.apply_retention().unwrap();
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        let mut last = 0;
        for i in 0..400u32 {
            last = writer_db.put(format!("live-{i}"), format!("{i}")).unwrap();
        }
        last
    });
    let s = open_subscriber(&dir.path().join("sub"), &p, Some((0.05, 4)));
    let sub = s.subscribe(DB, |_| {}).unwrap();
    let last = writer.join().unwrap();
    sub.wait_for_version(last, CONVERGE).unwrap();
    assert_equal(&sub, &db);
    assert!(sub.stats().catchups_full_copy == 1, "{:?}", sub.stats());
}

/// Every update a host callback was handed.
type Handed = std::sync::Arc<std::sync::Mutex<Vec<mcsync::Update>>>;

/// Subscribes to `DB` with a callback that keeps every update it is handed.
fn keep_updates(s: &Subscriber, after: Option<u64>) -> (mcsync::Subscription, Handed) {
    let handed: Handed = Default::default();
    let h = handed.clone();
    let sub = s
        .subscribe_with_options(
            DB,
            mcsync::SubscribeOptions {
                callback: Some(Box::new(move |u: &mcsync::Update| {
                    h.lock().unwrap().push(u.clone())
                })),
                after,
                ..mcsync::SubscribeOptions::default()
            },
        )
        .unwrap();
    (sub, handed)
}

/// The access groups of each put in `updates`, by key (the last put of a key wins).
fn groups_of(updates: &[mcsync::Update]) -> std::collections::BTreeMap<String, Vec<String>> {
    updates
        .iter()
        .flat_map(|u| &u.ops)
        .filter(|op| op.kind == mcsync::OpKind::Put)
        .map(|op| {
            (
                String::from_utf8_lossy(&op.key).into_owned(),
                op.groups.clone(),
            )
        })
        .collect()
}

#[test]
fn a_hash_resync_and_a_reset_hand_the_host_each_records_access_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.retention = Retention {
        max_bytes: 1,
        max_age: Duration::from_secs(3600),
        min_count: 10,
        min_free_disk_bytes: 0,
    };
    cfg.authentication = mcsync::Authentication::Custom(std::sync::Arc::new(
        |_: &str, _: &str, _: std::net::SocketAddr| Ok(mcsync::Grant::all(&["g1"])),
    ));
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    let mut t = db.transaction();
    t.put("open", "everyone").unwrap();
    t.put_with_groups("both", "g1 or g2", &["g1", "g2"])
        .unwrap();
    t.put_with_groups("secret", "g1 only", &["g1"]).unwrap();
    let v1 = t.commit().unwrap();
    let sdir = dir.path().join("sub");
    {
        let s = open_subscriber(&sdir, &p, None);
        let (sub, _) = keep_updates(&s, None);
        sub.wait_for_version(v1, CONVERGE).unwrap();
        s.close().unwrap();
    }
    // Away while "secret" changes, "secret2" appears and the journal is trimmed past it.
    let mut last = 0;
    for i in 0..30 {
        let mut t = db.transaction();
        t.put_with_groups("secret", format!("g1 only {i}"), &["g1"])
            .unwrap();
        t.put_with_groups("secret2", format!("new {i}"), &["g1"])
            .unwrap();
        last = t.commit().unwrap();
    }
    p.apply_retention().unwrap();
    assert!(db.oldest_version() > v1 + 1, "journal trimmed");
    let g = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Hash resync: the fetched records reach the host with their groups.
    {
        let s = open_subscriber(&sdir, &p, None);
        let (sub, handed) = keep_updates(&s, None);
        sub.wait_for_version(last, CONVERGE).unwrap();
        wait_until(CONVERGE, || {
            handed.lock().unwrap().last().map(|u| u.version) == Some(last)
        });
        assert_eq!(sub.stats().catchups_resync, 1, "{:?}", sub.stats());
        let handed = handed.lock().unwrap();
        assert!(handed.iter().all(|u| !u.reset), "changes, not a reset");
        let got = groups_of(&handed);
        assert_eq!(got.get("secret"), Some(&g(&["g1"])), "{got:?}");
        assert_eq!(got.get("secret2"), Some(&g(&["g1"])), "{got:?}");
        s.close().unwrap();
    }
    // A host back at version 1 (the journal no longer reaches it) gets a reset from the
    // replica: every record with its groups, kept by live apply and by the resync alike.
    let s = open_subscriber(&sdir, &p, None);
    let (sub, handed) = keep_updates(&s, Some(v1));
    wait_until(CONVERGE, || handed.lock().unwrap().iter().any(|u| u.reset));
    let handed = handed.lock().unwrap();
    let reset: Vec<_> = handed.iter().filter(|u| u.reset).cloned().collect();
    let want: std::collections::BTreeMap<String, Vec<String>> = [
        ("both", g(&["g1", "g2"])),
        ("open", g(&[])),
        ("secret", g(&["g1"])),
        ("secret2", g(&["g1"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(groups_of(&reset), want);
    assert_eq!(sub.stats().resets_delivered, 1);
}
