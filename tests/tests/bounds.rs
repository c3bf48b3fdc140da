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
