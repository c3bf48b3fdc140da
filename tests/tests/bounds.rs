//! Resource bounds and locking: nothing the subscriber holds is blocked by network I/O.

use mcsync::{ErrorKind, ServerTrust, Subscriber, SubscriberConfig};
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn a_subscribe_stuck_on_a_silent_publisher_does_not_hold_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    // A "publisher" that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = SubscriberConfig::new(
        dir.path(),
        silent.local_addr().unwrap(),
        ServerTrust::InsecureLoopback,
    );
    cfg.repair_io_timeout = Duration::from_secs(60);
    let s = Subscriber::open(cfg).unwrap();
    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| s.subscribe_with("a", None).err());
        // The first subscribe is inside its HELLO once the server accepted its connection.
        let (conn, _) = silent.accept().unwrap();
        let t0 = Instant::now();
        let err = s.subscribe_with("a", None).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("being subscribed"), "{err}");
        // Answered without waiting for the stuck HELLO (which waits 60 s).
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        // Another database is not blocked by it either: its own HELLO is under way.
        let other = scope.spawn(|| s.subscribe_with("b", None).err());
        let (conn2, _) = silent.accept().unwrap();
        drop((conn, conn2));
        assert!(stuck.join().unwrap().is_some());
        assert!(other.join().unwrap().is_some());
    });
}

#[test]
fn a_participant_subscribe_that_fails_after_hello_leaves_no_registration() {
    use mcsync::Publisher;
    use mcsync_tests::*;
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database("ledger").unwrap();
    db.put("k", "v").unwrap();
    let mut c = subscriber_config(&dir.path().join("sub"), &p, None);
    // No interface has this address: joining the group fails after HELLO succeeded.
    c.interface = "10.255.254.253".parse().unwrap();
    let s = Subscriber::open(c).unwrap();
    let err = s
        .subscribe_participant("ledger", None, None)
        .err()
        .expect("the join fails");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    // The registration was closed: nobody is left to wait for in a two-phase round.
    assert!(p.subscribers().is_empty(), "{:?}", p.subscribers());
    let mut t = db.transaction();
    t.put("k", "w").unwrap();
    let t0 = Instant::now();
    assert_eq!(t.commit_two_phase(Duration::from_secs(60)).unwrap(), 2);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[test]
fn registration_ids_come_from_the_server_and_one_user_cannot_pile_them_up() {
    use mcsync::Publisher;
    use mcsync_tests::*;
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    p.database("ledger").unwrap().put("k", "v").unwrap();
    let mut alice = repair_client(&p, "ledger", "alice", "");
    let alice_id = alice.hello().unwrap().subscriber_id;
    // A client choosing an id near the top of the range gets no wrap-around: the next
    // registrations neither overflow nor land on alice's record.
    let mut near_top = repair_client(&p, "ledger", "mallory", "");
    near_top.set_subscriber_id(u64::MAX);
    near_top.hello().unwrap();
    let mut clients = Vec::new();
    let mut refused = None;
    for i in 0..mcsync::net::repair_server::MAX_REGISTRATIONS_PER_USER + 1 {
        let mut c = repair_client(&p, "ledger", "mallory", "");
        match c.hello() {
            Ok(info) => {
                assert_ne!(info.subscriber_id, alice_id);
                clients.push(c);
            }
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, err) = refused.expect("the per-user cap refuses");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("registrations"), "{err}");
    // The one near the top counts too.
    assert_eq!(
        at + 1,
        mcsync::net::repair_server::MAX_REGISTRATIONS_PER_USER
    );
    let regs = p.subscribers();
    let alice_rec = regs.iter().find(|r| r.id == alice_id).expect("alice kept");
    assert_eq!(alice_rec.user, "alice");
    // Another user is not affected by mallory's cap.
    assert!(repair_client(&p, "ledger", "bob", "").hello().is_ok());
}

#[test]
fn one_user_with_many_registrations_cannot_pause_multicast() {
    use mcsync::wire::control::SubscriberReport;
    use mcsync::Publisher;
    use mcsync_tests::*;
    let dir = tempfile::tempdir().unwrap();
    let cfg = publisher_config(&dir.path().join("pub"));
    let max_bundle = cfg.multicast.max_bundle_bytes as u64;
    let p = Publisher::open(cfg).unwrap();
    p.database("ledger").unwrap().put("k", "v").unwrap();
    // Twenty registrations of one user say they lose everything; two other users lose nothing.
    let mut voters = Vec::new();
    for user in std::iter::repeat_n("mallory", 20).chain(["alice", "bob"]) {
        let mut c = repair_client(&p, "ledger", user, "");
        c.hello().unwrap();
        let loss_ppm = if user == "mallory" { 1_000_000 } else { 0 };
        voters.push((c, loss_ppm));
    }
    // Report until the adaptation acted on the reports at least twice: the lossy user
    // still steers the bundle size (the 75th percentile), so it shrinks a step per round.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (c, loss_ppm) in &mut voters {
            c.report(SubscriberReport {
                loss_ppm: *loss_ppm,
                ..SubscriberReport::default()
            })
            .unwrap();
        }
        let st = p.stats();
        if st.bundle_bytes != 0 && st.bundle_bytes <= max_bundle / 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no adaptation: {st:?}");
        // Reports are paced like a subscriber's (they stay fresh for 5 s).
        std::thread::sleep(Duration::from_millis(200));
    }
    // But one user is one vote: multicast was never paused for everyone.
    assert_eq!(p.stats().quiesces, 0, "{:?}", p.stats());
}

#[test]
fn silent_registrations_expire_and_come_back_with_their_next_report() {
    use mcsync::wire::control::SubscriberReport;
    use mcsync::Publisher;
    use mcsync_tests::*;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.registration_expiry = Duration::from_secs(3);
    let p = Publisher::open(cfg).unwrap();
    let db = p.database("ledger").unwrap();
    let v = db.put("k", "v").unwrap();
    let mut ghost = repair_client(&p, "ledger", "ghost", "");
    let ghost_id = ghost.hello().unwrap().subscriber_id;
    // A real subscriber reports every second.
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe("ledger", |_| {}).unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    let live_id = p
        .subscribers()
        .iter()
        .find(|r| r.user == "tester")
        .expect("registered")
        .id;
    wait_until(CONVERGE, || {
        p.subscribers().iter().all(|r| r.id != ghost_id)
    });
    assert!(p.stats().registrations_expired >= 1);
    // The subscriber that reports is registered (under load it may have expired between
    // two reports, and came back under its own id).
    wait_until(CONVERGE, || p.subscribers().iter().any(|r| r.id == live_id));
    // The silent one reports again: registered again under the same id.
    ghost.report(SubscriberReport::default()).unwrap();
    let back = p.subscribers();
    let rec = back.iter().find(|r| r.id == ghost_id).expect("back");
    assert_eq!(rec.user, "ghost");
    assert!(rec.report.is_some());
}
