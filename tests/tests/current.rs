//! Waiting until a replica is current without knowing the master's version
//! (`Subscription::wait_until_current`), counting and listing a replica, and a control
//! connection that never answers said plainly.

use mcsync::{ErrorKind, Publisher};
use mcsync_tests::*;
use std::time::{Duration, Instant};

#[test]
fn wait_until_current_reaches_what_the_publisher_has_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database("stock").unwrap();
    for i in 0..20 {
        db.put(format!("early{i}"), "x").unwrap();
    }
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe("stock", |_| {}).unwrap();
    assert_eq!(sub.wait_caught_up(CONVERGE).unwrap(), 20);
    // Written after the registration: wait_caught_up does not cover these.
    let mut last = 0;
    for i in 0..300 {
        last = db.put(format!("late{i:03}"), format!("{i}")).unwrap();
    }
    let v = sub.wait_until_current(&s, CONVERGE).unwrap();
    assert_eq!(v, last);
    assert!(sub.version() >= last);
    assert_eq!(sub.get("late299").unwrap().as_deref(), Some(&b"299"[..]));
    // Counting and listing read the replica.
    assert_eq!(sub.len().unwrap(), 320);
    assert!(!sub.is_empty().unwrap());
    let keys = sub.keys().unwrap();
    assert_eq!(keys.len(), 320);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order");
    assert_eq!(keys[0], b"early0");
    db.delete("early0").unwrap();
    sub.wait_until_current(&s, CONVERGE).unwrap();
    assert_eq!(sub.len().unwrap(), 319);

    // Only with the subscriber that made it.
    let other = open_subscriber(&dir.path().join("other"), &p, None);
    let e = sub.wait_until_current(&other, CONVERGE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    // A closed subscription says so without asking the publisher.
    sub.close().unwrap();
    let e = sub.wait_until_current(&s, CONVERGE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    // The replica stays readable.
    assert_eq!(sub.len().unwrap(), 319);
}

#[test]
fn wait_until_current_fails_fast_when_the_publisher_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    p.database("stock").unwrap().put("k", "v").unwrap();
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let sub = s.subscribe("stock", |_| {}).unwrap();
    sub.wait_caught_up(CONVERGE).unwrap();
    p.close().unwrap();
    drop(p);
    let started = Instant::now();
    let e = sub
        .wait_until_current(&s, Duration::from_secs(30))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "{e}");
}

#[test]
fn a_publisher_that_never_answers_times_out_saying_so() {
    // Accepts connections (the kernel does, into the backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = mcsync::SubscriberConfig::new(
        dir.path(),
        addr,
        mcsync::ServerTrust::Fingerprint("00".repeat(32)),
    );
    c.repair_io_timeout = Duration::from_millis(300);
    let s = mcsync::Subscriber::open(c).unwrap();
    let e = s.subscribe("stock", |_| {}).err().expect("no answer");
    let m = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Io, "{m}");
    assert!(m.contains("timed out"), "{m}");
    assert!(m.contains(&addr.to_string()), "{m}");
    assert!(!m.contains("temporarily unavailable"), "{m}");
}
