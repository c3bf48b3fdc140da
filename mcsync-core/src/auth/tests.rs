use super::password::*;
use super::*;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[test]
fn users_file_fields_and_the_participant_role() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    UsersFile::add_user(&path, "ann", "pw", None, &[], true).unwrap();
    UsersFile::add_user(
        &path,
        "ben",
        "pw",
        Some(&["a".into()]),
        &["g".into()],
        false,
    )
    .unwrap();
    // Entries the file could not read back, or nobody could log in with, are refused.
    let before = std::fs::read(&path).unwrap();
    for (pw, dbs) in [("", None), ("pw", Some(&[][..]))] {
        let e = UsersFile::add_user(&path, "cid", pw, dbs, &[], false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let users = UsersFile::load(&path).unwrap();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let ann = users.authenticate("ann", "pw", peer).unwrap();
    assert_eq!(ann, Grant::all(&[]).with_participant());
    let ben = users.authenticate("ben", "pw", peer).unwrap();
    assert!(!ben.participant && ben.allows("a") && !ben.allows("b"));
    assert_eq!(ben.groups, vec!["g".to_string()]);
    let hash = hash_password("pw").unwrap();
    for (line, why) in [
        (format!("cat {hash} * - voter"), "fifth field is \"voter\""),
        (
            format!("cat {hash} * - participant x"),
            "expected: name hash",
        ),
        (format!("cat {hash} *"), "expected: name hash"),
    ] {
        std::fs::write(&path, line).unwrap();
        let err = UsersFile::load(&path).unwrap_err().to_string();
        assert!(err.contains(why) && err.contains("line 1"), "{err}");
    }
}

#[test]
fn a_valid_login_does_not_reset_guesses_for_other_users() {
    let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let t = Instant::now();
    for i in 0..9 {
        l.failure(ip, "bob", t);
        // The attacker's own valid login in between clears nothing of bob's.
        l.success(ip, "mallory", t);
        assert!(!l.is_blocked(ip, "bob", t), "{i}");
    }
    l.failure(ip, "bob", t);
    assert!(l.is_blocked(ip, "bob", t));
    assert!(!l.is_blocked(ip, "mallory", t));
    // Bob's own success would clear it, after the block.
    let later = t + Duration::from_secs(31);
    assert!(!l.is_blocked(ip, "bob", later));
}

#[test]
fn spraying_blocks_the_address_but_not_users_known_there() {
    let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
    let ip: IpAddr = "192.0.2.8".parse().unwrap();
    let t = Instant::now();
    l.success(ip, "alice", t);
    for i in 0..200 {
        l.failure(ip, &format!("nobody-{i}"), t);
    }
    assert!(l.is_blocked(ip, "carol", t), "a user unknown here");
    assert!(
        !l.is_blocked(ip, "alice", t),
        "alice logged in from here before"
    );
    let other: IpAddr = "192.0.2.9".parse().unwrap();
    assert!(!l.is_blocked(other, "carol", t));
}

#[test]
fn concurrent_logins_are_counted_before_their_check() {
    let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let t = Instant::now();
    // 15 logins of one user arrive at once: only 10 get to be checked.
    let started: Vec<Attempt> = (0..15).filter_map(|_| l.attempt(ip, "bob", t)).collect();
    assert_eq!(started.len(), 10);
    assert!(l.is_blocked(ip, "bob", t));
    // All 10 fail (dropping an attempt leaves its failure counted).
    drop(started);
    assert!(l.is_blocked(ip, "bob", t));
    assert!(
        !l.is_blocked(ip, "carol", t),
        "10 failures do not block the address"
    );
}

#[test]
fn a_login_that_succeeds_or_is_not_checked_counts_against_nobody() {
    let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
    let ip: IpAddr = "192.0.2.11".parse().unwrap();
    let t = Instant::now();
    for i in 0..99 {
        l.failure(ip, &format!("nobody-{i}"), t);
    }
    // bob's login in flight is the address's 100th failure: it blocks the address...
    let bob = l.attempt(ip, "bob", t).expect("not blocked yet");
    assert!(l.is_blocked(ip, "carol", t));
    // ...until it succeeds: then it never was a failure.
    l.succeeded(bob, t);
    assert!(!l.is_blocked(ip, "carol", t));
    assert!(!l.is_blocked(ip, "bob", t));
    // A login the server was too busy to check is taken back from both counts.
    let attempts: Vec<Attempt> = (0..9).filter_map(|_| l.attempt(ip, "dan", t)).collect();
    assert_eq!(
        attempts.len(),
        1,
        "the 100th failure blocked the address for dan"
    );
    for a in attempts {
        l.withdraw(a);
    }
    assert!(!l.is_blocked(ip, "dan", t) && !l.is_blocked(ip, "carol", t));
    // Likewise a user's own block: 10 of erin's logins in flight, all withdrawn.
    let ip2: IpAddr = "192.0.2.13".parse().unwrap();
    let attempts: Vec<Attempt> = (0..12).filter_map(|_| l.attempt(ip2, "erin", t)).collect();
    assert_eq!(attempts.len(), 10);
    assert!(l.is_blocked(ip2, "erin", t));
    for a in attempts {
        l.withdraw(a);
    }
    assert!(!l.is_blocked(ip2, "erin", t));
}

#[test]
fn a_withdrawal_leaves_a_later_window_alone() {
    let l = FailureLimiter::new(2, Duration::from_secs(60), Duration::from_secs(30));
    let ip: IpAddr = "192.0.2.12".parse().unwrap();
    let t = Instant::now();
    let old = l.attempt(ip, "bob", t).unwrap();
    // A new window starts; bob fails twice in it and is blocked.
    let later = t + Duration::from_secs(61);
    l.failure(ip, "bob", later);
    l.failure(ip, "bob", later);
    assert!(l.is_blocked(ip, "bob", later));
    // Taking back the old window's failure does not touch the new window's count.
    l.withdraw(old);
    assert!(l.is_blocked(ip, "bob", later));
}

#[test]
fn the_hash_gate_caps_concurrency_and_serves_in_order() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let gate = Arc::new(HashGate::new(2));
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            std::thread::spawn(move || {
                let _p = gate.acquire(Duration::from_secs(60)).expect("place");
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::yield_now();
                running.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!((1..=2).contains(&most.load(Ordering::SeqCst)));

    // Full: a waiter gives up after its wait, and leaves no trace in the line.
    let gate = Arc::new(HashGate::new(1));
    let held = gate.acquire(Duration::ZERO).expect("free");
    assert!(gate.acquire(Duration::from_millis(20)).is_none());
    // First come, first served.
    let order = Arc::new(Mutex::new(Vec::new()));
    let queued = |n: usize| {
        let st = gate.state.lock().unwrap();
        st.queue.len() == n
    };
    let mut waiters = Vec::new();
    for who in ["first", "second", "third"] {
        let (g, o) = (gate.clone(), order.clone());
        let n = waiters.len() + 1;
        waiters.push(std::thread::spawn(move || {
            let _p = g.acquire(Duration::from_secs(60)).expect("place");
            o.lock().unwrap().push(who);
        }));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !queued(n) {
            assert!(Instant::now() < deadline, "waiter {who} never queued");
            std::thread::yield_now();
        }
    }
    drop(held);
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec!["first", "second", "third"]);
}

#[test]
fn verification_in_mapped_memory_agrees_with_argon2() {
    use argon2::password_hash::PasswordVerifier;
    use argon2::{Algorithm, Params, Version};
    let salt = SaltString::generate(&mut OsRng);
    let variants = [
        Argon2::default(),
        Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(4096, 1, 2, Some(16)).unwrap(),
        ),
        Argon2::new(
            Algorithm::Argon2d,
            Version::V0x13,
            Params::new(1024, 3, 1, Some(64)).unwrap(),
        ),
    ];
    for a in variants {
        let phc = a.hash_password(b"right", &salt).unwrap().to_string();
        let h = PasswordHash::new(&phc).unwrap();
        for pw in [&b"right"[..], b"wrong", b""] {
            assert_eq!(
                verify(pw, &h),
                Argon2::default().verify_password(pw, &h).is_ok(),
                "{phc} {pw:?}"
            );
        }
        assert!(verify(b"right", &h));
    }
    let no_output = PasswordHash::new("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ").unwrap();
    assert!(!verify(b"x", &no_output));
}

#[test]
fn unknown_users_are_checked_at_the_same_cost_and_a_full_gate_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    UsersFile::add_user(&path, "ann", "pw", None, &[], false).unwrap();
    let users = UsersFile::load(&path).unwrap();
    let ann = PasswordHash::new(&users.users["ann"].hash).unwrap();
    let dummy = PasswordHash::new(&users.dummy).unwrap();
    assert_eq!(
        (dummy.algorithm, dummy.version, &dummy.params),
        (ann.algorithm, ann.version, &ann.params)
    );
    assert_eq!(dummy.hash.unwrap().len(), ann.hash.unwrap().len());
    let gate = HashGate::new(1);
    let denied = Refusal::Denied("unknown user or wrong password".into());
    assert_eq!(
        users
            .check_in(&gate, Duration::ZERO, "nobody", "pw")
            .unwrap_err(),
        denied
    );
    assert_eq!(
        users
            .check_in(&gate, Duration::ZERO, "ann", "nope")
            .unwrap_err(),
        denied
    );
    assert!(users.check_in(&gate, Duration::ZERO, "ann", "pw").is_ok());
    let _held = gate.acquire(Duration::ZERO).unwrap();
    let busy = users.check_in(&gate, Duration::from_millis(10), "ann", "pw");
    assert!(
        matches!(busy, Err(Refusal::Busy(ref m)) if m.contains("busy")),
        "{busy:?}"
    );
    // Without users, the dummy has argon2's default parameters.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nobody\n").unwrap();
    let none = UsersFile::load(&empty).unwrap();
    let dummy = PasswordHash::new(&none.dummy).unwrap();
    let (got, want) = (
        argon2::Params::try_from(&dummy).unwrap(),
        argon2::Params::default(),
    );
    assert_eq!(
        (got.m_cost(), got.t_cost(), got.p_cost()),
        (want.m_cost(), want.t_cost(), want.p_cost())
    );
    assert_eq!(dummy.algorithm, argon2::Algorithm::Argon2id.ident());
}
