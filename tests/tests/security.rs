//! Registration over TLS, authentication, key rotation, revocation, access groups,
//! schedules, and what an observer of the wire can see.

use mcsync::auth::UsersFile;
use mcsync::store::SubscriberStore;
use mcsync::{
    Authentication, ErrorKind, Publisher, Schedule, ServerIdentity, ServerTrust, Subscriber,
};
use mcsync_tests::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DB: &str = "sales";

/// Users: alice (sales, groups emea+na), bob (sales, group apac), carol (orders only),
/// dave (every database, no groups, may be a two-phase participant).
fn users_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("users");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    UsersFile::add_user(
        &path,
        "alice",
        "alice-pw",
        Some(&s(&[DB])),
        &s(&["emea", "na"]),
        false,
    )
    .unwrap();
    UsersFile::add_user(
        &path,
        "bob",
        "bob-pw",
        Some(&s(&[DB])),
        &s(&["apac"]),
        false,
    )
    .unwrap();
    UsersFile::add_user(
        &path,
        "carol",
        "carol-pw",
        Some(&s(&["orders"])),
        &[],
        false,
    )
    .unwrap();
    UsersFile::add_user(&path, "dave", "dave-pw", None, &[], true).unwrap();
    path
}

fn secure_publisher(dir: &Path) -> Publisher {
    let mut cfg = publisher_config(&dir.join("pub"));
    cfg.authentication = Authentication::UsersFile(users_file(dir));
    Publisher::open(cfg).unwrap()
}

fn login(dir: &Path, p: &Publisher, user: &str, pw: &str, loss: Option<(f64, u64)>) -> Subscriber {
    let mut c = subscriber_config(&dir.join(format!("sub-{user}")), p, loss);
    c.user = user.into();
    c.secret = pw.into();
    Subscriber::open(c).unwrap()
}

#[test]
fn bad_credentials_and_peers_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    p.database("orders").unwrap();
    db.put("k", "v").unwrap();
    let cases = [
        ("alice", "wrong", "wrong password"),
        ("mallory", "x", "unknown user or wrong password"),
        (
            "carol",
            "carol-pw",
            "may not subscribe to database \"sales\"",
        ),
    ];
    for (user, pw, expect) in cases {
        let s = login(dir.path(), &p, user, pw, None);
        let err = s.subscribe(DB, |_| {}).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::Auth, "{user}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(expect)
                || (expect == "wrong password" && text.contains("unknown user or wrong password")),
            "{user}: {text}"
        );
    }
    // A wrong pinned fingerprint fails the TLS handshake before any credential is sent.
    let mut c = subscriber_config(&dir.path().join("sub-pin"), &p, None);
    c.trust = ServerTrust::Fingerprint("00".repeat(32));
    c.user = "alice".into();
    c.secret = "alice-pw".into();
    let err = Subscriber::open(c)
        .unwrap()
        .subscribe(DB, |_| {})
        .err()
        .expect("refused");
    assert!(err.to_string().contains("fingerprint"), "{err}");
    // A plain TCP client speaking garbage gets nothing useful and hurts nothing.
    let mut t = TcpStream::connect(p.control_addr()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"\x00\x00\x00\x05\x01hello garbage").unwrap();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    assert!(!buf.windows(4).any(|w| w == b"sale"), "no plaintext answer");
    // The publisher is unaffected: the right user subscribes and replicates.
    let s = login(dir.path(), &p, "alice", "alice-pw", None);
    let sub = s.subscribe(DB, |_| {}).unwrap();
    let v = db.put("k2", "v2").unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    let st = p.stats();
    assert!(st.auth_failures >= 3, "{st:?}");
    assert!(st.tls_failures >= 2, "{st:?}");
}

#[test]
fn repeated_failures_from_one_address_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    p.database(DB).unwrap();
    for _ in 0..10 {
        let mut c = repair_client(&p, DB, "alice", "nope");
        assert_eq!(c.hello().unwrap_err().kind(), ErrorKind::Auth);
    }
    // Now even the right password is refused for a while, without being checked.
    let err = repair_client(&p, DB, "alice", "alice-pw")
        .hello()
        .unwrap_err();
    assert!(err.to_string().contains("too many failed logins"), "{err}");
    assert!(p.stats().auth_rate_limited >= 1);
}

#[test]
fn a_resync_fetch_withholds_records_restricted_after_its_snapshot() {
    use mcsync::proto::resync::key_hash;
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    db.put("open", "everyone").unwrap();
    db.put("later-secret", "readable for now").unwrap();
    let mut t = db.transaction();
    t.put_with_groups("apac-note", "for apac", &["emea", "apac"])
        .unwrap();
    t.commit().unwrap();
    // bob (group apac) snapshots while all three records are open to him...
    let mut c = repair_client(&p, DB, "bob", "bob-pw");
    c.hello().unwrap();
    let (version, root) = c.resync_begin().unwrap();
    assert_eq!((version, root.count), (3, 3));
    // ...then one is restricted to a group he does not hold.
    let mut t = db.transaction();
    t.put_with_groups("later-secret", "for emea only", &["emea"])
        .unwrap();
    t.commit().unwrap();
    let mut got = Vec::new();
    let missing = c
        .fetch(
            &[
                key_hash(b"open"),
                key_hash(b"later-secret"),
                key_hash(b"apac-note"),
            ],
            |op| got.push((op.key, op.value, op.groups)),
        )
        .unwrap();
    // Each record comes with its access groups, so his replica keeps the restriction.
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (b"open".to_vec(), b"everyone".to_vec(), groups(&[])),
            (
                b"apac-note".to_vec(),
                b"for apac".to_vec(),
                groups(&["emea", "apac"])
            ),
        ]
    );
    assert_eq!(
        missing, 1,
        "reported absent, so his replica deletes its copy"
    );
}

#[test]
fn only_users_granted_it_become_two_phase_participants() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    db.put("k", "v").unwrap();
    // alice may read the database but not vote on (or veto) its two-phase updates.
    let alice = login(dir.path(), &p, "alice", "alice-pw", None);
    let err = alice
        .subscribe_participant(DB, None, None)
        .err()
        .expect("refused");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(
        err.to_string()
            .contains("may not register as a two-phase participant"),
        "{err}"
    );
    // As an ordinary replica she is welcome, and no participant is registered.
    let sub = alice.subscribe(DB, |_| {}).unwrap();
    sub.wait_for_version(1, CONVERGE).unwrap();
    assert!(p.subscribers().iter().all(|r| !r.participant));
    // A two-phase update therefore commits without waiting for her.
    let mut t = db.transaction();
    t.put("k", "w").unwrap();
    assert_eq!(t.commit_two_phase(Duration::from_secs(30)).unwrap(), 2);
    // dave's grant allows it.
    let dave = login(dir.path(), &p, "dave", "dave-pw", None);
    let dsub = dave.subscribe_participant(DB, None, None).unwrap();
    dsub.wait_for_version(2, CONVERGE).unwrap();
    assert_eq!(p.subscribers().iter().filter(|r| r.participant).count(), 1);
    let mut t = db.transaction();
    t.put("k", "x").unwrap();
    assert_eq!(t.commit_two_phase(Duration::from_secs(30)).unwrap(), 3);
    sub.wait_for_version(3, CONVERGE).unwrap();
    assert_eq!(sub.get("k").unwrap().as_deref(), Some(&b"x"[..]));
    assert!(p.stats().auth_failures >= 1);
}

#[test]
fn key_rotation_under_loss_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let subs: Vec<_> = ["alice", "bob", "dave"]
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let s = login(
                dir.path(),
                &p,
                u,
                &format!("{u}-pw"),
                Some((0.05, 50 + i as u64)),
            );
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s2 = seen.clone();
            let sub = s
                .subscribe(DB, move |u| s2.lock().unwrap().push(u.version))
                .unwrap();
            (s, sub, seen)
        })
        .collect();
    let first_epoch = db.key_epoch();
    let mut last = 0;
    for i in 0..2_000u32 {
        last = db
            .put(
                format!("k{}", i % 400),
                vec![i as u8; 200 + (i as usize % 3000)],
            )
            .unwrap();
        if i % 300 == 299 {
            db.rotate_key().unwrap();
        }
    }
    assert!(db.key_epoch() >= first_epoch + 6);
    for (_, sub, seen) in &subs {
        sub.wait_for_version(last, CONVERGE).unwrap();
        assert_eq!(
            sub.iter().unwrap().collect::<Vec<_>>(),
            db.snapshot().unwrap()
        );
        assert_versions(&seen.lock().unwrap(), 1..=last);
        // Rotations that come close together may be learned in one re-registration, so
        // the property is that the final epoch was adopted, not how many steps it took.
        let final_epoch = u64::from(db.key_epoch());
        wait_until(CONVERGE, || sub.stats().key_epoch == final_epoch);
        let st = sub.stats();
        assert_eq!(st.key_epoch, final_epoch, "{st:?}");
        assert!(st.key_changes >= 1, "{st:?}");
        assert!(st.dropped_injected > 0, "{st:?}");
    }
    assert!(p.stats().key_rotations >= 6);
}

#[test]
fn a_revoked_user_is_cut_off_while_others_continue() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let a = login(dir.path(), &p, "alice", "alice-pw", None);
    let b = login(dir.path(), &p, "bob", "bob-pw", None);
    let sa = a.subscribe(DB, |_| {}).unwrap();
    let sb = b.subscribe(DB, |_| {}).unwrap();
    let mut v = 0;
    for i in 0..100u32 {
        v = db.put(format!("k{i}"), b"before").unwrap();
    }
    sa.wait_for_version(v, CONVERGE).unwrap();
    sb.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(p.subscribers().len(), 2);
    let cut = db.version();
    p.revoke("bob").unwrap();
    for i in 0..100u32 {
        v = db.put(format!("k{i}"), b"after revocation").unwrap();
    }
    sa.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(
        sa.get("k5").unwrap().as_deref(),
        Some(&b"after revocation"[..])
    );
    let err = sb.wait_for_version(v, Duration::from_secs(20)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert_eq!(sb.version(), cut, "bob's replica stops at the rotation");
    assert_eq!(sb.get("k5").unwrap().as_deref(), Some(&b"before"[..]));
    let st = sb.stats();
    assert!(st.dropped_epoch > 0 && st.auth_failures > 0, "{st:?}");
    // Bob cannot register again either, even after a publisher restart.
    assert_eq!(
        repair_client(&p, DB, "bob", "bob-pw")
            .hello()
            .unwrap_err()
            .kind(),
        ErrorKind::Auth
    );
    assert!(p.subscribers().iter().all(|r| r.user != "bob"));
}

#[test]
fn access_groups_decide_what_each_replica_holds() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let users = ["alice", "bob", "dave"];
    let mut subs = Vec::new();
    for u in users {
        let s = login(dir.path(), &p, u, &format!("{u}-pw"), None);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sub = s
            .subscribe(DB, move |u| {
                for op in &u.ops {
                    s2.lock()
                        .unwrap()
                        .push(String::from_utf8(op.key.clone()).unwrap());
                }
            })
            .unwrap();
        subs.push((u, s, sub, seen));
    }
    let mut t = db.transaction();
    t.put("public", "everyone").unwrap();
    t.put_with_groups("emea-only", "e", &["emea"]).unwrap();
    t.put_with_groups("apac-only", "a", &["apac"]).unwrap();
    t.put_with_groups("na-or-apac", "n", &["na", "apac"])
        .unwrap();
    t.commit().unwrap();
    // A public record later restricted disappears from replicas that may not see it.
    db.put("public", "still public").unwrap();
    let mut t = db.transaction();
    t.put_with_groups("was-public", "x", &["apac"]).unwrap();
    let v = t.commit().unwrap();
    let expected = |u: &str| -> Vec<&str> {
        match u {
            "alice" => vec!["emea-only", "na-or-apac", "public"],
            "bob" => vec!["apac-only", "na-or-apac", "public", "was-public"],
            _ => vec!["public"],
        }
    };
    for (u, s, sub, seen) in subs {
        sub.wait_for_version(v, CONVERGE).unwrap();
        let mut cb: Vec<String> = seen.lock().unwrap().clone();
        cb.sort();
        cb.dedup();
        assert_eq!(cb, expected(u), "callbacks of {u}");
        sub.close().unwrap();
        s.close().unwrap();
        drop((sub, s));
        // Read the replica's LMDB file directly.
        let store = SubscriberStore::open(&dir.path().join(format!("sub-{u}")), 1 << 20).unwrap();
        let tables = store.tables(DB).unwrap();
        let keys: Vec<String> = store
            .all(tables)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(keys, expected(u), "LMDB replica of {u}");
    }
}

#[test]
fn outside_the_schedule_updates_arrive_by_repair_and_multicast_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.schedule = Schedule::Never;
    let p = Publisher::open(cfg).unwrap();
    let db = p.database("d").unwrap();
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe("d", |_| {}).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut v = 0;
    for i in 0..200u32 {
        v = db.put(format!("k{i}"), b"journaled only").unwrap();
    }
    sub.wait_for_version(v, CONVERGE).unwrap();
    let before = p.stats();
    assert_eq!(
        before.data_packets_sent, 0,
        "nothing multicast outside the window: {before:?}"
    );
    assert!(before.repair_updates_sent >= 200, "{before:?}");
    p.set_schedule(Schedule::Always).unwrap();
    // The schedule takes effect at the maintenance thread's next turn (about 50 ms, longer
    // on a loaded machine): commit until an update goes out by multicast.
    let deadline = std::time::Instant::now() + CONVERGE;
    while p.stats().updates_sent == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", p.stats());
        v = db.put("probe", b"multicast").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let on = p.stats().updates_sent;
    for i in 0..200u32 {
        v = db.put(format!("k{i}"), b"multicast").unwrap();
    }
    sub.wait_for_version(v, CONVERGE).unwrap();
    // All 200 go out by multicast (possibly bundled into fewer chains under load). The
    // multicaster counts a chain after its send returns, which may be after the
    // subscriber applied it: wait for the count.
    wait_until(CONVERGE, || p.stats().updates_sent >= on + 200);
    assert!(p.stats().data_packets_sent > 0, "{:?}", p.stats());
    assert!(sub.stats().chains_received > 0, "{:?}", sub.stats());
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    // Time-of-day windows, including one over midnight.
    let w = Schedule::Windows(vec![(60, 120), (1380, 30)]);
    assert!(w.is_open(60) && w.is_open(119) && !w.is_open(120));
    assert!(w.is_open(1400) && w.is_open(10) && !w.is_open(30) && !w.is_open(500));
}

/// A TCP relay that records every byte in both directions.
fn recording_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for client in l.incoming().take(8) {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(target).unwrap();
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let log = log2.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (addr, log)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_plaintext_value_secret_or_key_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let p = secure_publisher(dir.path());
    let db = p.database(DB).unwrap();
    let (proxy, tcp_log) = recording_proxy(p.control_addr());
    let mut c = subscriber_config(&dir.path().join("sub"), &p, Some((0.2, 9)));
    c.server = proxy;
    c.user = "dave".into();
    c.secret = "dave-pw".into();
    let s = Subscriber::open(c).unwrap();
    let sub = s.subscribe(DB, |_| {}).unwrap();
    let (spy, _) =
        mcsync::net::socket::receiver_socket(db.group(), Ipv4Addr::LOCALHOST, 1 << 22).unwrap();
    let secret_value = b"TOP-SECRET-VALUE-4242";
    let mut v = 0;
    for i in 0..300u32 {
        let mut val = secret_value.to_vec();
        val.extend_from_slice(&i.to_be_bytes());
        v = db.put(format!("key-{i}"), val).unwrap();
    }
    sub.wait_for_version(v, CONVERGE).unwrap();
    let mut udp = Vec::new();
    let mut buf = vec![0u8; 65536];
    spy.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Ok((n, _)) = spy.recv_from(&mut buf) {
        udp.extend_from_slice(&buf[..n]);
    }
    let tcp = tcp_log.lock().unwrap().clone();
    assert!(
        udp.len() > 10_000 && tcp.len() > 1_000,
        "captured {} / {} bytes",
        udp.len(),
        tcp.len()
    );
    assert!(
        sub.stats().packets_repaired + sub.stats().repair_updates > 0,
        "repairs crossed the proxy"
    );
    for (name, wire) in [("multicast", &udp), ("control channel", &tcp)] {
        assert!(
            !contains(wire, secret_value),
            "value in clear on the {name}"
        );
        assert!(!contains(wire, b"dave-pw"), "secret in clear on the {name}");
        assert!(!contains(wire, b"key-12"), "key in clear on the {name}");
    }
}

#[test]
fn ca_verification_and_insecure_loopback_rules() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let srv = rcgen::CertificateParams::new(vec!["publisher.test".to_string()])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
    let w = |n: &str, s: String| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    let ca_file = w("ca.pem", ca.pem());
    let cert = w("srv.pem", srv.pem());
    let key = w("srv.key", srv_key.serialize_pem());
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.identity = ServerIdentity::Files { cert, key };
    let p = Publisher::open(cfg).unwrap();
    let db = p.database("d").unwrap();
    let v = db.put("a", "1").unwrap();
    let mut c = subscriber_config(&dir.path().join("sub"), &p, None);
    c.trust = ServerTrust::CaFile(ca_file.clone());
    c.server_name = Some("publisher.test".into());
    let s = Subscriber::open(c.clone()).unwrap();
    let sub = s.subscribe("d", |_| {}).unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    // The wrong name fails verification.
    c.data_dir = dir.path().join("sub2");
    c.server_name = Some("other.test".into());
    let err = Subscriber::open(c)
        .unwrap()
        .subscribe("d", |_| {})
        .err()
        .expect("refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plaintext is refused off loopback, on both sides, before anything is sent.
    let mut bad = publisher_config(&dir.path().join("pub3"));
    bad.identity = ServerIdentity::InsecureLoopback;
    bad.control_addr = "0.0.0.0:0".parse().unwrap();
    assert_eq!(
        Publisher::open(bad).err().unwrap().kind(),
        ErrorKind::Config
    );
    let mut sc = subscriber_config(&dir.path().join("sub3"), &p, None);
    sc.trust = ServerTrust::InsecureLoopback;
    sc.server = "192.0.2.1:47000".parse().unwrap();
    // (Refused when the subscriber opens, as a malformed fingerprint is.)
    let err = Subscriber::open(sc).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

#[test]
fn close_subscription_releases_the_publisher_record() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database("d").unwrap();
    db.put("a", "1").unwrap();
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe("d", |_| {}).unwrap();
    sub.wait_for_version(1, CONVERGE).unwrap();
    assert_eq!(p.subscribers().len(), 1);
    assert_eq!(p.subscribers()[0].database, "d");
    sub.close().unwrap();
    assert!(p.subscribers().is_empty());
}

#[test]
fn multicast_starts_with_the_first_subscription_when_so_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.multicast_on_first_subscription = true;
    let p = Publisher::open(cfg).unwrap();
    let db = p.database("lazy").unwrap();
    for i in 0..20u32 {
        db.put(format!("k{i}"), b"before anyone listens").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        p.stats().updates_sent,
        0,
        "nothing multicast before a subscriber registers"
    );
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe("lazy", |_| {}).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let v = db.put("after", b"multicast").unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    // Counted after the send returns, perhaps after the subscriber applied it.
    wait_until(CONVERGE, || p.stats().updates_sent >= 1);
    assert!(sub.stats().chains_received >= 1, "{:?}", sub.stats());
}
