//! Unicast-only subscribers: the publisher pushes the same sealed datagrams it multicasts
//! to each of them by unicast UDP (real sockets on loopback), with the same repair, key
//! and revocation rules, within a per-database limit.

use mcsync::{Database, Publisher, Subscriber, Subscription};
use mcsync_tests::*;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

const DB: &str = "orders";

fn assert_replica_equals_master(sub: &Subscription, db: &Database) {
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

/// A unicast-only subscriber for `user`, with optional injected loss.
fn unicast_subscriber(
    dir: &Path,
    p: &Publisher,
    user: &str,
    loss: Option<(f64, u64)>,
) -> Subscriber {
    let mut c = subscriber_config(dir, p, loss);
    c.user = user.into();
    c.unicast = true;
    Subscriber::open(c).unwrap()
}

/// Commits `n` small transactions (keys cycle over 500); returns the last version.
fn commit(db: &Database, n: u32) -> u64 {
    let mut last = 0;
    for i in 0..n {
        let mut t = db.transaction();
        t.put(format!("order-{:03}", i % 500), format!("qty {i}"))
            .unwrap();
        if i % 7 == 0 {
            t.delete(format!("order-{:03}", (i + 250) % 500)).unwrap();
        }
        last = t.commit().unwrap();
    }
    last
}

#[test]
fn a_unicast_subscriber_converges_by_push_alone_beside_a_multicast_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    let m = open_subscriber(&dir.path().join("mcast"), &p, None);
    let msub = m.subscribe(DB, |_| {}).unwrap();
    let u = unicast_subscriber(&dir.path().join("ucast"), &p, "wan", None);
    let usub = u.subscribe(DB, |_| {}).unwrap();
    let last = commit(&db, 2_000);
    for sub in [&msub, &usub] {
        sub.wait_for_version(last, CONVERGE).unwrap();
        assert_replica_equals_master(sub, &db);
    }
    // Heartbeats are pushed too: the first follows the last update once the stream idles.
    wait_until(CONVERGE, || usub.stats().heartbeats_received > 0);
    let us = usub.stats();
    assert!(us.unicast_datagrams > 0, "{us:?}");
    // Everything it received came by push: no multicast datagram, no STATUS poll, no
    // back-off.
    assert_eq!(us.packets_received, us.unicast_datagrams, "{us:?}");
    assert_eq!(us.status_polls, 0, "{us:?}");
    assert_eq!(us.unicast_backoffs, 0, "{us:?}");
    assert_eq!(us.unicast_refused, 0, "{us:?}");
    let ms = msub.stats();
    assert!(ms.packets_received > 0, "{ms:?}");
    assert_eq!(ms.unicast_datagrams, 0, "{ms:?}");
    let ps = p.stats();
    assert!(ps.unicast_datagrams > 0, "{ps:?}");
    assert!(ps.unicast_bytes >= ps.unicast_datagrams, "{ps:?}");
    assert_eq!(ps.unicast_targets, 1, "{ps:?}");
    // The target is the address the control connection came from.
    let target = p
        .subscribers()
        .into_iter()
        .find(|r| r.user == "wan")
        .and_then(|r| r.push)
        .expect("the unicast subscriber is a push target");
    assert_eq!(target.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(p
        .subscribers()
        .iter()
        .any(|r| r.user == "tester" && r.push.is_none()));
    // Closing releases the target.
    usub.close().unwrap();
    wait_until(CONVERGE, || p.stats().unicast_targets == 0);
}

#[test]
fn a_unicast_subscriber_repairs_injected_loss_and_follows_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    let u = unicast_subscriber(&dir.path().join("ucast"), &p, "wan", Some((0.05, 17)));
    let usub = u.subscribe(DB, |_| {}).unwrap();
    commit(&db, 1_000);
    let before = db.key_epoch();
    let epoch = db.rotate_key().unwrap();
    assert!(epoch > before);
    let last = commit(&db, 1_000);
    usub.wait_for_version(last, CONVERGE).unwrap();
    assert_replica_equals_master(&usub, &db);
    wait_until(CONVERGE, || usub.stats().key_epoch == u64::from(epoch));
    let s = usub.stats();
    assert!(s.dropped_injected > 0, "loss was injected: {s:?}");
    assert!(s.packets_repaired + s.repair_updates > 0, "{s:?}");
    assert!(s.key_changes >= 1, "{s:?}");
    assert_eq!(s.packets_received, s.unicast_datagrams, "{s:?}");
    // Re-registering for the new key announced the port again: still one target.
    assert_eq!(p.stats().unicast_targets, 1);
}

#[test]
fn a_revoked_unicast_subscriber_is_pushed_nothing_more_and_gets_no_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    let m = open_subscriber(&dir.path().join("mcast"), &p, None);
    let msub = m.subscribe(DB, |_| {}).unwrap();
    let u = unicast_subscriber(&dir.path().join("ucast"), &p, "wan", None);
    let usub = u.subscribe(DB, |_| {}).unwrap();
    let v1 = commit(&db, 200);
    usub.wait_for_version(v1, CONVERGE).unwrap();
    let old_epoch = usub.stats().key_epoch;
    p.revoke("wan").unwrap();
    // The target left with the registration, at once.
    assert_eq!(p.stats().unicast_targets, 0);
    assert!(p.subscribers().iter().all(|r| r.user != "wan"));
    // One more update reaches the multicast subscriber: by then the multicaster has taken
    // the target list again, and anything pushed before the revocation has arrived.
    let v = db.put("after-revoke", "1").unwrap();
    msub.wait_for_version(v, CONVERGE).unwrap();
    let pushed = p.stats().unicast_datagrams;
    let received = usub.stats().unicast_datagrams;
    let v2 = commit(&db, 300);
    msub.wait_for_version(v2, CONVERGE).unwrap();
    assert_replica_equals_master(&msub, &db);
    // The publisher pushed nothing more; the revoked subscriber received nothing newer
    // and holds no key drawn after the revocation.
    assert_eq!(p.stats().unicast_datagrams, pushed);
    let s = usub.stats();
    assert_eq!(s.unicast_datagrams, received, "{s:?}");
    assert!(usub.version() < v2, "a revoked replica reached {v2}");
    assert_eq!(s.key_epoch, old_epoch, "{s:?}");
    assert!(u64::from(db.key_epoch()) > old_epoch);
}

#[test]
fn past_the_target_limit_a_unicast_subscriber_polls_and_still_converges() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.multicast.max_unicast_targets = 1;
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    let first = unicast_subscriber(&dir.path().join("u1"), &p, "wan1", None);
    let s1 = first.subscribe(DB, |_| {}).unwrap();
    let second = unicast_subscriber(&dir.path().join("u2"), &p, "wan2", None);
    let s2 = second.subscribe(DB, |_| {}).unwrap();
    let last = commit(&db, 500);
    for sub in [&s1, &s2] {
        sub.wait_for_version(last, CONVERGE).unwrap();
        assert_replica_equals_master(sub, &db);
    }
    let (a, b) = (s1.stats(), s2.stats());
    assert!(a.unicast_datagrams > 0, "{a:?}");
    assert_eq!(a.unicast_refused, 0, "{a:?}");
    assert_eq!(b.unicast_refused, 1, "{b:?}");
    assert_eq!(b.unicast_datagrams, 0, "{b:?}");
    assert!(b.status_polls > 0, "it caught up by polling: {b:?}");
    assert!(b.repair_updates > 0, "{b:?}");
    let ps = p.stats();
    assert_eq!(ps.unicast_targets, 1, "{ps:?}");
    assert!(ps.unicast_refused >= 1, "{ps:?}");
}

/// Sends one raw HELLO over TLS and returns the answer.
fn raw_hello(
    p: &Publisher,
    version: u8,
    unicast_port: Option<u16>,
) -> mcsync::wire::control::Message {
    use mcsync::net::frame::{read_message, write_message};
    use mcsync::wire::control::Message;
    let fp = p.fingerprint().unwrap().to_owned();
    let tls = mcsync::net::tls::ClientTls::new(
        &mcsync::ServerTrust::Fingerprint(fp),
        p.control_addr(),
        None,
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(p.control_addr()).unwrap();
    tcp.set_read_timeout(Some(CONVERGE)).unwrap();
    let mut s = tls.connect(tcp).unwrap();
    let hello = Message::Hello {
        version,
        database: DB.into(),
        client: "raw".into(),
        user: "old".into(),
        secret: "".into(),
        subscriber_id: 0,
        flags: 0,
        unicast_port,
    };
    write_message(&mut s, &hello).unwrap();
    std::io::Write::flush(&mut s).unwrap();
    read_message(&mut s, 1 << 20).unwrap().unwrap().0
}

#[test]
fn older_control_protocols_are_refused_and_push_goes_to_the_connections_peer() {
    use mcsync::wire::control::{Message, Push, CONTROL_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    p.database(DB).unwrap();
    // Version 4 encoded resync digests differently: refused at HELLO, not half-served.
    for old in [3, 4] {
        match raw_hello(&p, old, None) {
            Message::Error { .. } => {}
            other => panic!("a version {old} HELLO was answered {other:?}"),
        }
    }
    match raw_hello(&p, CONTROL_VERSION, None) {
        Message::HelloOk(info) => assert_eq!(info.push, Push::NotAsked),
        other => panic!("a HELLO without the unicast flag was answered {other:?}"),
    }
    // Port 9 (discard) on the connection's own address: nothing listens, nothing leaves
    // loopback.
    match raw_hello(&p, CONTROL_VERSION, Some(9)) {
        Message::HelloOk(info) => assert_eq!(info.push, Push::Pushing),
        other => panic!("a unicast HELLO was answered {other:?}"),
    }
    let target = p.subscribers().into_iter().find_map(|r| r.push);
    assert_eq!(
        target,
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9)))
    );
}
