//! The C API driven from Rust through the same `extern "C"` functions C calls: a
//! publisher and a subscriber on loopback, a callback that closes its own subscription, and
//! argument checking. (scripts/test-c.sh runs the C programs themselves.)

use mcsync::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn last_error() -> String {
    let mut buf = [0 as std::os::raw::c_char; 512];
    unsafe { mcsync_last_error(buf.as_mut_ptr(), buf.len(), null_mut()) };
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[track_caller]
fn ok(st: mcsync_status) {
    assert_eq!(st, mcsync_status::MCSYNC_OK, "{}", last_error());
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A random group in 239.0.0.0/8 and a random high port.
fn unique_group() -> (String, u16) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().rotate_left(16);
    let group = format!(
        "239.{}.{}.{}",
        1 + nanos % 250,
        (nanos >> 8) % 256,
        1 + (nanos >> 16) % 200
    );
    (group, 20_000 + (nanos % 40_000) as u16)
}

unsafe fn open_pair(dir: &std::path::Path) -> (*mut mcsync_publisher, *mut mcsync_subscriber) {
    let (group, port) = unique_group();
    let mut pc = null_mut();
    ok(mcsync_publisher_config_new(&mut pc));
    ok(mcsync_publisher_config_set_data_dir(
        pc,
        c(dir.join("pub").to_str().unwrap()).as_ptr(),
    ));
    ok(mcsync_publisher_config_set_group(pc, c(&group).as_ptr()));
    ok(mcsync_publisher_config_set_port(pc, port));
    ok(mcsync_publisher_config_set_ttl(pc, 0));
    ok(mcsync_publisher_config_set_insecure_loopback(pc));
    ok(mcsync_publisher_config_set_open_access(pc));
    let mut publisher = null_mut();
    ok(mcsync_publisher_open(pc, &mut publisher));
    mcsync_publisher_config_free(pc);

    let mut addr = [0 as std::os::raw::c_char; 64];
    let mut n = 0;
    ok(mcsync_publisher_control_addr(
        publisher,
        addr.as_mut_ptr(),
        addr.len(),
        &mut n,
    ));
    let mut sc = null_mut();
    ok(mcsync_subscriber_config_new(&mut sc));
    ok(mcsync_subscriber_config_set_data_dir(
        sc,
        c(dir.join("sub").to_str().unwrap()).as_ptr(),
    ));
    ok(mcsync_subscriber_config_set_server(sc, addr.as_ptr()));
    ok(mcsync_subscriber_config_set_insecure_loopback(sc));
    ok(mcsync_subscriber_config_set_loss(sc, 0.05, 1, 7));
    let mut subscriber = null_mut();
    ok(mcsync_subscriber_open(sc, &mut subscriber));
    mcsync_subscriber_config_free(sc);
    (publisher, subscriber)
}

/// State a callback sees: how many updates, and the handle to close at version 5.
struct Seen {
    calls: AtomicU64,
    last: AtomicU64,
    me: AtomicPtr<mcsync_subscription>,
    close_at: u64,
    freed: AtomicU64,
}

unsafe extern "C" fn on_update(user_data: *mut c_void, update: *const mcsync_update) {
    let seen = &*(user_data as *const Seen);
    let u = &*update;
    seen.calls.fetch_add(1, Ordering::SeqCst);
    seen.last.store(u.version, Ordering::SeqCst);
    if seen.close_at != 0 && u.version == seen.close_at {
        let me = seen.me.load(Ordering::SeqCst);
        assert_eq!(mcsync_subscription_close(me), mcsync_status::MCSYNC_OK);
    }
}

unsafe extern "C" fn on_free(user_data: *mut c_void) {
    let seen = &*(user_data as *const Seen);
    seen.freed.fetch_add(1, Ordering::SeqCst);
}

fn new_seen(close_at: u64) -> Box<Seen> {
    Box::new(Seen {
        calls: AtomicU64::new(0),
        last: AtomicU64::new(0),
        me: AtomicPtr::new(null_mut()),
        close_at,
        freed: AtomicU64::new(0),
    })
}

#[test]
fn replicate_read_and_close_from_the_callback() {
    let dir = tempfile::tempdir().unwrap();
    unsafe {
        let (publisher, subscriber) = open_pair(dir.path());
        let mut db = null_mut();
        ok(mcsync_publisher_database(
            publisher,
            c("items").as_ptr(),
            &mut db,
        ));
        let mut db2 = null_mut();
        ok(mcsync_publisher_database(
            publisher,
            c("closing").as_ptr(),
            &mut db2,
        ));

        let seen = new_seen(0);
        let seen_ptr = &*seen as *const Seen as *mut c_void;
        let mut sub = null_mut();
        ok(mcsync_subscriber_subscribe(
            subscriber,
            c("items").as_ptr(),
            Some(on_update),
            seen_ptr,
            Some(on_free),
            &mut sub,
        ));
        let closing = new_seen(5);
        let closing_ptr = &*closing as *const Seen as *mut c_void;
        let mut sub2 = null_mut();
        ok(mcsync_subscriber_subscribe(
            subscriber,
            c("closing").as_ptr(),
            Some(on_update),
            closing_ptr,
            Some(on_free),
            &mut sub2,
        ));
        closing.me.store(sub2, Ordering::SeqCst);

        let mut version = 0;
        for i in 0..300u32 {
            let key = format!("key-{i:04}");
            let value = vec![b'a' + (i % 26) as u8; (i as usize * 13) % 3000];
            ok(mcsync_db_put(
                db,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                &mut version,
            ));
            ok(mcsync_db_put(
                db2,
                key.as_ptr(),
                key.len(),
                null(),
                0,
                null_mut(),
            ));
        }
        let mut txn = null_mut();
        ok(mcsync_txn_begin(db, &mut txn));
        ok(mcsync_txn_delete(txn, b"key-0000".as_ptr(), 8));
        ok(mcsync_txn_put(txn, b"extra".as_ptr(), 5, b"x".as_ptr(), 1));
        ok(mcsync_txn_commit(txn, &mut version));
        assert_eq!(version, 301);

        ok(mcsync_subscription_wait_for_version(sub, version, 120_000));
        assert_eq!(seen.calls.load(Ordering::SeqCst), version);
        assert_eq!(seen.last.load(Ordering::SeqCst), version);

        // Contents: 299 keys left + "extra", in key order.
        let mut it = null_mut();
        ok(mcsync_subscription_iter_new(sub, &mut it));
        let mut count = 0;
        ok(mcsync_subscription_iter_count(it, &mut count));
        assert_eq!(count, 300);
        let (mut k, mut kl, mut v, mut vl, mut more) = (null(), 0, null(), 0, false);
        ok(mcsync_subscription_iter_next(
            it, &mut k, &mut kl, &mut v, &mut vl, &mut more,
        ));
        assert!(more);
        assert_eq!(std::slice::from_raw_parts(k, kl), b"extra");
        assert_eq!(std::slice::from_raw_parts(v, vl), b"x");
        mcsync_subscription_iter_free(it);

        let mut value = null_mut();
        let mut len = 0;
        ok(mcsync_subscription_get(
            sub,
            b"key-0007".as_ptr(),
            8,
            &mut value,
            &mut len,
        ));
        assert_eq!(len, 7 * 13);
        assert_eq!(*value.add(len), 0);
        mcsync_bytes_free(value);
        assert_eq!(
            mcsync_subscription_get(sub, b"key-0000".as_ptr(), 8, &mut value, &mut len),
            mcsync_status::MCSYNC_ERR_NOT_FOUND
        );

        // The callback closed its own subscription at version 5, without deadlock, and no
        // callback ran after that.
        let start = Instant::now();
        while closing.freed.load(Ordering::SeqCst) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "threads did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(closing.calls.load(Ordering::SeqCst), 5);
        let mut closed = false;
        ok(mcsync_subscription_is_closed(sub2, &mut closed));
        assert!(closed);
        ok(mcsync_subscription_close(sub2));
        mcsync_subscription_free(sub2);

        let mut stats = null_mut();
        ok(mcsync_subscription_stats(sub, &mut stats));
        let mut applied = 0;
        ok(mcsync_stats_get(
            stats,
            c("updates_applied").as_ptr(),
            &mut applied,
        ));
        assert!(applied >= version);
        let mut mode = u64::MAX;
        ok(mcsync_stats_get(
            stats,
            c("replica_durability").as_ptr(),
            &mut mode,
        ));
        assert_eq!(mode, 1, "the default is periodic");
        mcsync_stats_free(stats);

        ok(mcsync_subscription_close(sub));
        ok(mcsync_subscription_close(sub));
        mcsync_subscription_free(sub);
        assert_eq!(seen.freed.load(Ordering::SeqCst), 1);
        ok(mcsync_subscriber_close(subscriber));
        mcsync_subscriber_free(subscriber);
        ok(mcsync_publisher_close(publisher));
        assert_eq!(
            mcsync_db_put(db, b"k".as_ptr(), 1, null(), 0, null_mut()),
            mcsync_status::MCSYNC_ERR_CLOSED
        );
        mcsync_db_free(db);
        mcsync_db_free(db2);
        mcsync_publisher_free(publisher);
    }
}

/// A host's log of the versions its callback was handed, closing its own subscription
/// from the callback once it reaches `close_at` (0: never).
struct HostLog {
    versions: std::sync::Mutex<Vec<u64>>,
    resets: AtomicU64,
    me: AtomicPtr<mcsync_subscription>,
    /// Set once `me` holds the handle (callbacks may start before subscribe returns).
    ready: std::sync::atomic::AtomicBool,
    close_at: u64,
}

unsafe extern "C" fn host_update(user_data: *mut c_void, update: *const mcsync_update) {
    let host = &*(user_data as *const HostLog);
    let u = &*update;
    // Waits (on a condition, with a deadline) until the test stored the handle to close.
    let deadline = Instant::now() + Duration::from_secs(120);
    while host.close_at != 0 && !host.ready.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the test never stored its handle"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    if u.reset {
        host.resets.fetch_add(1, Ordering::SeqCst);
    }
    host.versions.lock().unwrap().push(u.version);
    if host.close_at != 0 && u.version >= host.close_at {
        let me = host.me.swap(null_mut(), Ordering::SeqCst);
        if !me.is_null() {
            assert_eq!(mcsync_subscription_close(me), mcsync_status::MCSYNC_OK);
        }
    }
}

#[test]
fn subscribe_after_delivers_exactly_the_updates_after_the_hosts_version() {
    let dir = tempfile::tempdir().unwrap();
    unsafe {
        let (publisher, subscriber) = open_pair(dir.path());
        let mut db = null_mut();
        ok(mcsync_publisher_database(
            publisher,
            c("hosted").as_ptr(),
            &mut db,
        ));
        let put = |i: u32| {
            let key = format!("key-{:03}", i % 120);
            let mut v = 0;
            ok(mcsync_db_put(
                db,
                key.as_ptr(),
                key.len(),
                b"v".as_ptr(),
                1,
                &mut v,
            ));
            v
        };
        // Published before the replica exists: it catches up in large batches, so the
        // close at version 50 leaves applied updates whose callbacks have not run.
        for i in 0..300 {
            put(i);
        }
        let first = HostLog {
            versions: Default::default(),
            resets: AtomicU64::new(0),
            me: AtomicPtr::new(null_mut()),
            ready: Default::default(),
            close_at: 50,
        };
        let mut sub = null_mut();
        ok(mcsync_subscriber_subscribe_after(
            subscriber,
            c("hosted").as_ptr(),
            0,
            Some(host_update),
            &first as *const HostLog as *mut c_void,
            None,
            &mut sub,
        ));
        first.me.store(sub, Ordering::SeqCst);
        first.ready.store(true, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            let mut closed = false;
            ok(mcsync_subscription_is_closed(sub, &mut closed));
            if closed {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Freeing waits for the threads: no callback of this subscription runs after it.
        mcsync_subscription_free(sub);
        let seen = first.versions.lock().unwrap().clone();
        let host_version = *seen.last().unwrap();
        assert_eq!(seen, (1..=host_version).collect::<Vec<_>>());

        let mut last = 0;
        for i in 300..400 {
            last = put(i);
        }
        assert_eq!(last, 400);
        let second = HostLog {
            versions: Default::default(),
            resets: AtomicU64::new(0),
            me: AtomicPtr::new(null_mut()),
            ready: Default::default(),
            close_at: 0,
        };
        ok(mcsync_subscriber_subscribe_after(
            subscriber,
            c("hosted").as_ptr(),
            host_version,
            Some(host_update),
            &second as *const HostLog as *mut c_void,
            None,
            &mut sub,
        ));
        let mut caught_up = 0;
        ok(mcsync_subscription_wait_caught_up(
            sub,
            120_000,
            &mut caught_up,
        ));
        assert_eq!(caught_up, 400);
        ok(mcsync_subscription_wait_caught_up(sub, 120_000, null_mut()));
        assert_eq!(
            *second.versions.lock().unwrap(),
            (host_version + 1..=400).collect::<Vec<_>>()
        );
        assert_eq!(first.resets.load(Ordering::SeqCst), 0);
        assert_eq!(second.resets.load(Ordering::SeqCst), 0);
        assert_eq!(
            mcsync_subscription_wait_caught_up(null(), 1, null_mut()),
            mcsync_status::MCSYNC_ERR_NULL
        );
        mcsync_subscription_free(sub);
        mcsync_subscriber_free(subscriber);
        mcsync_db_free(db);
        ok(mcsync_publisher_close(publisher));
        mcsync_publisher_free(publisher);
    }
}

#[test]
fn bad_arguments_are_codes_with_messages() {
    unsafe {
        let mut v = 17u64;
        assert_eq!(
            mcsync_db_put(null(), b"k".as_ptr(), 1, null(), 0, &mut v),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(v, 17);
        assert!(last_error().contains("`db`"));

        let mut pc = null_mut();
        ok(mcsync_publisher_config_new(&mut pc));
        let bad_utf8 = b"\xff\xfe\0";
        assert_eq!(
            mcsync_publisher_config_set_data_dir(pc, bad_utf8.as_ptr().cast()),
            mcsync_status::MCSYNC_ERR_UTF8
        );
        assert_eq!(
            mcsync_publisher_config_set_port(pc, 0),
            mcsync_status::MCSYNC_ERR_RANGE
        );
        assert_eq!(
            mcsync_publisher_config_set_group(pc, c("192.168.1.1").as_ptr()),
            mcsync_status::MCSYNC_ERR_CONFIG
        );
        assert!(last_error().contains("not a multicast address"));
        let mut p = std::ptr::dangling_mut::<mcsync_publisher>();
        assert_eq!(
            mcsync_publisher_open(pc, &mut p),
            mcsync_status::MCSYNC_ERR_CONFIG
        );
        assert_eq!(p, std::ptr::dangling_mut::<mcsync_publisher>());
        assert!(last_error().contains("data directory"));
        mcsync_publisher_config_free(pc);

        // A failed subscribe still frees user_data, exactly once.
        let seen = new_seen(0);
        let mut sub = null_mut();
        assert_eq!(
            mcsync_subscriber_subscribe(
                null(),
                c("x").as_ptr(),
                Some(on_update),
                &*seen as *const Seen as *mut c_void,
                Some(on_free),
                &mut sub,
            ),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(seen.freed.load(Ordering::SeqCst), 1);
        assert!(sub.is_null());
    }
}

/// A two-phase participant's state: votes cast, and the key it refuses.
struct Voter {
    refuse_key: &'static [u8],
    votes: AtomicU64,
    refusals: AtomicU64,
    applied: AtomicU64,
}

unsafe extern "C" fn vote(
    user_data: *mut c_void,
    update: *const mcsync_update,
    reason: *mut std::os::raw::c_char,
    reason_len: usize,
) -> std::os::raw::c_int {
    let voter = &*(user_data as *const Voter);
    voter.votes.fetch_add(1, Ordering::SeqCst);
    let u = &*update;
    let ops = std::slice::from_raw_parts(u.ops, u.ops_len);
    let refuse = ops
        .iter()
        .any(|op| std::slice::from_raw_parts(op.key, op.key_len) == voter.refuse_key);
    if !refuse {
        return 0;
    }
    voter.refusals.fetch_add(1, Ordering::SeqCst);
    let text = b"key is on the deny list";
    assert!(reason_len >= MCSYNC_VOTE_REASON_BYTES);
    std::ptr::copy_nonoverlapping(text.as_ptr(), reason.cast::<u8>(), text.len());
    7
}

unsafe extern "C" fn count_applied(user_data: *mut c_void, _update: *const mcsync_update) {
    let voter = &*(user_data as *const Voter);
    voter.applied.fetch_add(1, Ordering::SeqCst);
}

unsafe fn participant(
    dir: &std::path::Path,
    addr: &[std::os::raw::c_char],
    client: &str,
) -> *mut mcsync_subscriber {
    let mut sc = null_mut();
    ok(mcsync_subscriber_config_new(&mut sc));
    ok(mcsync_subscriber_config_set_data_dir(
        sc,
        c(dir.join(client).to_str().unwrap()).as_ptr(),
    ));
    ok(mcsync_subscriber_config_set_server(sc, addr.as_ptr()));
    ok(mcsync_subscriber_config_set_insecure_loopback(sc));
    ok(mcsync_subscriber_config_set_client_name(
        sc,
        c(client).as_ptr(),
    ));
    ok(mcsync_subscriber_config_set_compact_catch_up_after(sc, 50));
    let mut subscriber = null_mut();
    ok(mcsync_subscriber_open(sc, &mut subscriber));
    mcsync_subscriber_config_free(sc);
    subscriber
}

unsafe fn has_key(sub: *const mcsync_subscription, key: &[u8]) -> bool {
    let mut len = 0;
    match mcsync_subscription_get_into(sub, key.as_ptr(), key.len(), null_mut(), 0, &mut len) {
        mcsync_status::MCSYNC_ERR_NOT_FOUND => false,
        mcsync_status::MCSYNC_OK | mcsync_status::MCSYNC_ERR_BUFFER_TOO_SMALL => true,
        st => panic!("get_into: {st:?}: {}", last_error()),
    }
}

#[test]
fn two_phase_participants_verify_resync_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    unsafe {
        let (publisher, plain) = open_pair(dir.path());
        mcsync_subscriber_free(plain);
        let mut db = null_mut();
        ok(mcsync_publisher_database(
            publisher,
            c("ledger").as_ptr(),
            &mut db,
        ));
        let mut addr = [0 as std::os::raw::c_char; 64];
        let mut n = 0;
        ok(mcsync_publisher_control_addr(
            publisher,
            addr.as_mut_ptr(),
            addr.len(),
            &mut n,
        ));

        // Two participants: A accepts everything, B refuses the key "deny".
        let voters = [
            Box::new(Voter {
                refuse_key: b"",
                votes: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                applied: AtomicU64::new(0),
            }),
            Box::new(Voter {
                refuse_key: b"deny",
                votes: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                applied: AtomicU64::new(0),
            }),
        ];
        let names = ["participant-a", "participant-b"];
        let mut subscribers = [null_mut(); 2];
        let mut subs = [null_mut(); 2];
        for i in 0..2 {
            subscribers[i] = participant(dir.path(), &addr, names[i]);
            ok(mcsync_subscriber_subscribe_participant(
                subscribers[i],
                c("ledger").as_ptr(),
                Some(count_applied),
                Some(vote),
                &*voters[i] as *const Voter as *mut c_void,
                None,
                &mut subs[i],
            ));
        }

        // The publisher lists both as participants, with their client names.
        let mut list = null_mut();
        ok(mcsync_publisher_subscribers(publisher, &mut list));
        let mut count = 0;
        ok(mcsync_subscriber_list_count(list, &mut count));
        let mut participants = Vec::new();
        for i in 0..count {
            let mut info = null();
            ok(mcsync_subscriber_list_entry(list, i, &mut info));
            let info = &*info;
            if info.participant {
                participants.push(CStr::from_ptr(info.client).to_str().unwrap().to_owned());
                assert_eq!(CStr::from_ptr(info.database).to_str().unwrap(), "ledger");
                assert!(CStr::from_ptr(info.peer)
                    .to_str()
                    .unwrap()
                    .starts_with("127."));
            }
        }
        participants.sort();
        assert_eq!(participants, names);
        let mut info = null();
        assert_eq!(
            mcsync_subscriber_list_entry(list, count, &mut info),
            mcsync_status::MCSYNC_ERR_RANGE
        );
        mcsync_subscriber_list_free(list);

        // Accepted by both.
        let mut txn = null_mut();
        ok(mcsync_txn_begin(db, &mut txn));
        ok(mcsync_txn_put(txn, b"a".as_ptr(), 1, b"1".as_ptr(), 1));
        let mut v1 = 0;
        ok(mcsync_txn_commit_two_phase(txn, 20_000, &mut v1));
        assert_eq!(v1, 1);

        // Refused by B: nothing written, and the message names B and its reason.
        ok(mcsync_txn_begin(db, &mut txn));
        ok(mcsync_txn_put(txn, b"deny".as_ptr(), 4, b"x".as_ptr(), 1));
        let mut v = 99;
        assert_eq!(
            mcsync_txn_commit_two_phase(txn, 20_000, &mut v),
            mcsync_status::MCSYNC_ERR_REFUSED
        );
        assert_eq!(v, 99);
        let msg = last_error();
        assert!(
            msg.contains("participant-b") && msg.contains("key is on the deny list"),
            "{msg}"
        );
        assert!(!msg.contains("participant-a"), "{msg}");
        let mut at = 0;
        ok(mcsync_db_version(db, &mut at));
        assert_eq!(at, 1);
        // The aborted version is given back. A one-phase write takes it: a repeat of the
        // ABORT arriving after the next PREPARE of the same version would make the
        // participants drop that PREPARE (a limitation of mcsync-core under load).
        let mut filler = 0;
        ok(mcsync_db_put(db, b"n".as_ptr(), 1, null(), 0, &mut filler));
        assert_eq!(filler, 2);

        // Prepare, then roll back: the version is given back.
        ok(mcsync_txn_begin(db, &mut txn));
        ok(mcsync_txn_put(txn, b"b".as_ptr(), 1, b"2".as_ptr(), 1));
        let mut prepared = null_mut();
        ok(mcsync_txn_prepare(txn, 20_000, &mut prepared));
        let mut pv = 0;
        ok(mcsync_prepared_version(prepared, &mut pv));
        assert_eq!(pv, 3);
        ok(mcsync_prepared_rollback(prepared));
        ok(mcsync_db_put(db, b"n".as_ptr(), 1, null(), 0, &mut filler));
        assert_eq!(filler, 3);
        // Prepare, then commit.
        ok(mcsync_txn_begin(db, &mut txn));
        ok(mcsync_txn_put(txn, b"c".as_ptr(), 1, b"3".as_ptr(), 1));
        ok(mcsync_txn_prepare(txn, 20_000, &mut prepared));
        ok(mcsync_prepared_version(prepared, &mut pv));
        assert_eq!(pv, 4);
        let mut v2 = 0;
        ok(mcsync_prepared_commit(prepared, &mut v2));
        assert_eq!(v2, 4);

        for (i, sub) in subs.iter().enumerate() {
            ok(mcsync_subscription_wait_for_version(*sub, v2, 60_000));
            assert!(has_key(*sub, b"a") && has_key(*sub, b"c"));
            assert!(!has_key(*sub, b"deny") && !has_key(*sub, b"b"));
            assert_eq!(voters[i].applied.load(Ordering::SeqCst), 4);
            // Votes on versions 1, 2 (refused or not), 3 (rolled back) and 4.
            assert!(voters[i].votes.load(Ordering::SeqCst) >= 3);
        }
        assert!(voters[1].refusals.load(Ordering::SeqCst) >= 1);
        assert_eq!(voters[0].refusals.load(Ordering::SeqCst), 0);

        // Verify: the replica agrees with the publisher.
        let mut report = null_mut();
        ok(mcsync_subscriber_verify(
            subscribers[0],
            c("ledger").as_ptr(),
            &mut report,
        ));
        let r = &*report;
        assert!(
            r.in_agreement,
            "{} differing ranges",
            r.differing_ranges_len
        );
        assert!(r.differing_ranges.is_null() && r.differing_ranges_len == 0);
        assert_eq!((r.version, r.previous_version), (v2, v2));
        assert_eq!((r.local_records, r.remote_records), (3, 3));
        assert!(r.bytes > 0);
        mcsync_resync_report_free(report);
        // Resync while subscribed is refused; request_resync is the way.
        let mut report = null_mut();
        assert_eq!(
            mcsync_subscriber_resync(subscribers[0], c("ledger").as_ptr(), &mut report),
            mcsync_status::MCSYNC_ERR_CONFIG
        );
        assert!(report.is_null());
        ok(mcsync_subscription_request_resync(subs[0]));

        // B closes; a resync without a subscription then finds nothing to do.
        ok(mcsync_subscription_close(subs[1]));
        assert_eq!(
            mcsync_subscription_request_resync(subs[1]),
            mcsync_status::MCSYNC_ERR_CLOSED
        );
        mcsync_subscription_free(subs[1]);
        ok(mcsync_subscriber_resync(
            subscribers[1],
            c("ledger").as_ptr(),
            &mut report,
        ));
        let r = &*report;
        assert!(r.in_agreement && r.fetched == 0 && r.deleted == 0 && !r.full_copy);
        assert_eq!(r.version, v2);
        mcsync_resync_report_free(report);

        // Retention with the defaults keeps everything; schedules change at run time.
        let mut removed = 99;
        ok(mcsync_publisher_apply_retention(publisher, &mut removed));
        assert_eq!(removed, 0);
        let windows = [mcsync_schedule_window {
            start_minute: 0,
            end_minute: 1440,
        }];
        ok(mcsync_publisher_set_schedule_windows(
            publisher,
            windows.as_ptr(),
            1,
        ));
        let bad = [mcsync_schedule_window {
            start_minute: 1440,
            end_minute: 0,
        }];
        assert_eq!(
            mcsync_publisher_set_schedule_windows(publisher, bad.as_ptr(), 1),
            mcsync_status::MCSYNC_ERR_RANGE
        );
        assert_eq!(
            mcsync_publisher_set_schedule_windows(publisher, null(), 0),
            mcsync_status::MCSYNC_ERR_RANGE
        );
        ok(mcsync_publisher_set_schedule_never(publisher));
        ok(mcsync_publisher_set_schedule_always(publisher));

        // A participant alone now: A still votes, and the resync it asked for is done.
        let mut v3 = 0;
        ok(mcsync_txn_begin(db, &mut txn));
        ok(mcsync_txn_put(txn, b"deny".as_ptr(), 4, b"ok".as_ptr(), 2));
        ok(mcsync_txn_commit_two_phase(txn, 20_000, &mut v3));
        ok(mcsync_subscription_wait_for_version(subs[0], v3, 60_000));
        assert!(has_key(subs[0], b"deny"));

        mcsync_subscription_free(subs[0]);
        for s in subscribers {
            ok(mcsync_subscriber_close(s));
            mcsync_subscriber_free(s);
        }
        mcsync_db_free(db);
        mcsync_publisher_free(publisher);
    }
}

#[test]
fn two_phase_arguments_are_checked() {
    unsafe {
        let mut v = 5;
        assert_eq!(
            mcsync_txn_commit_two_phase(null_mut(), 10, &mut v),
            mcsync_status::MCSYNC_ERR_NULL
        );
        let mut p = null_mut();
        assert_eq!(
            mcsync_txn_prepare(null_mut(), 10, &mut p),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(
            mcsync_prepared_commit(null_mut(), &mut v),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(
            mcsync_prepared_rollback(null_mut()),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(
            mcsync_prepared_version(null(), &mut v),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(v, 5);
        assert_eq!(
            mcsync_subscriber_verify(null(), c("x").as_ptr(), null_mut()),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(
            mcsync_subscription_request_resync(null()),
            mcsync_status::MCSYNC_ERR_NULL
        );
        let mut pc = null_mut();
        ok(mcsync_publisher_config_new(&mut pc));
        assert_eq!(
            mcsync_publisher_config_set_retention_max_age_ms(pc, u64::MAX),
            mcsync_status::MCSYNC_ERR_RANGE
        );
        ok(mcsync_publisher_config_set_retention_max_age_ms(pc, 60_000));
        ok(mcsync_publisher_config_set_retention_max_bytes(pc, 0));
        ok(mcsync_publisher_config_set_retention_min_count(pc, 10));
        ok(mcsync_publisher_config_set_retention_min_free_disk_bytes(
            pc, 0,
        ));
        ok(mcsync_publisher_config_set_schedule_never(pc));
        mcsync_publisher_config_free(pc);
        mcsync_resync_report_free(null_mut());
        mcsync_subscriber_list_free(null_mut());

        // A participant subscribe that fails still frees user_data, exactly once.
        let seen = new_seen(0);
        let mut sub = null_mut();
        assert_eq!(
            mcsync_subscriber_subscribe_participant(
                null(),
                c("x").as_ptr(),
                None,
                None,
                &*seen as *const Seen as *mut c_void,
                Some(on_free),
                &mut sub,
            ),
            mcsync_status::MCSYNC_ERR_NULL
        );
        assert_eq!(seen.freed.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn users_add_writes_entries_the_users_file_reads() {
    use mcsync_status::*;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let path = c(file.to_str().unwrap());
    let (inventory, orders, emea) = (c("inventory"), c("orders"), c("emea"));
    let dbs = [inventory.as_ptr(), orders.as_ptr()];
    let groups = [emea.as_ptr()];
    unsafe {
        ok(mcsync_users_add(
            path.as_ptr(),
            c("carol").as_ptr(),
            c("s3cret").as_ptr(),
            dbs.as_ptr(),
            2,
            groups.as_ptr(),
            1,
            false,
        ));
        ok(mcsync_users_add(
            path.as_ptr(),
            c("dave").as_ptr(),
            c("pw").as_ptr(),
            null(),
            0,
            null(),
            0,
            true,
        ));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0][0], "carol");
    assert!(lines[0][1].starts_with("$argon2id$") && !text.contains("s3cret"));
    assert_eq!(lines[0][2..], ["inventory,orders", "emea"]);
    assert_eq!(lines[1][0], "dave");
    assert_eq!(lines[1][2..], ["*", "-", "participant"]);
    let users = mcsync_core::auth::UsersFile::load(&file).expect("a valid users file");
    assert_eq!(users.len(), 2);

    // Bad arguments: a status and a message, and the file unchanged.
    struct Args {
        path: *const c_char,
        user: *const c_char,
        password: *const c_char,
        dbs: (*const *const c_char, usize),
        groups: (*const *const c_char, usize),
    }
    let (u, pw, bad, comma, empty) = (c("u"), c("pw"), c("a b"), c("a,b"), c(""));
    let (comma_list, empty_db, many) = (
        [comma.as_ptr()],
        [inventory.as_ptr(), empty.as_ptr()],
        vec![inventory.as_ptr(); 256],
    );
    let good = Args {
        path: path.as_ptr(),
        user: u.as_ptr(),
        password: pw.as_ptr(),
        dbs: (null(), 0),
        groups: (null(), 0),
    };
    let carol = c("carol");
    let cases = [
        (
            MCSYNC_ERR_NULL,
            "user",
            Args {
                user: null(),
                ..good
            },
        ),
        (
            MCSYNC_ERR_NULL,
            "path",
            Args {
                path: null(),
                ..good
            },
        ),
        (
            MCSYNC_ERR_CONFIG,
            "password",
            Args {
                password: empty.as_ptr(),
                ..good
            },
        ),
        (
            MCSYNC_ERR_CONFIG,
            "user",
            Args {
                user: bad.as_ptr(),
                ..good
            },
        ),
        (
            MCSYNC_ERR_CONFIG,
            "groups[0]",
            Args {
                groups: (comma_list.as_ptr(), 1),
                ..good
            },
        ),
        (
            MCSYNC_ERR_CONFIG,
            "databases[1]",
            Args {
                dbs: (empty_db.as_ptr(), 2),
                ..good
            },
        ),
        (
            MCSYNC_ERR_NULL,
            "groups",
            Args {
                groups: (null(), 3),
                ..good
            },
        ),
        (
            MCSYNC_ERR_RANGE,
            "256 databases",
            Args {
                dbs: (many.as_ptr(), 256),
                ..good
            },
        ),
        (
            MCSYNC_ERR_CONFIG,
            "already",
            Args {
                user: carol.as_ptr(),
                ..good
            },
        ),
    ];
    for (status, words, a) in cases {
        let st = unsafe {
            mcsync_users_add(
                a.path, a.user, a.password, a.dbs.0, a.dbs.1, a.groups.0, a.groups.1, false,
            )
        };
        assert_eq!(st, status, "{words}: {}", last_error());
        assert!(last_error().contains(words), "{words}: {}", last_error());
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // A file that is not a users file is an error, not a crash, and stays as it was.
    let other = dir.path().join("other");
    std::fs::write(&other, "not a users file\n").unwrap();
    let st = unsafe {
        mcsync_users_add(
            c(other.to_str().unwrap()).as_ptr(),
            c("u").as_ptr(),
            c("pw").as_ptr(),
            null(),
            0,
            null(),
            0,
            false,
        )
    };
    assert_eq!(st, MCSYNC_ERR_CONFIG, "{}", last_error());
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "not a users file\n"
    );
}

/// The C setters are shims over core's limits: they refuse what `Publisher::open` and
/// `Subscriber::open` refuse (for Rust and Python), with the same message.
#[test]
fn setters_refuse_what_core_refuses_with_the_same_message() {
    use mcsync_core::config::limits;
    use mcsync_core::{PublisherConfig, ServerTrust, SubscriberConfig};
    #[track_caller]
    fn same(st: mcsync_status, rust: mcsync_core::Result<()>) {
        assert_eq!(st, mcsync_status::MCSYNC_ERR_RANGE);
        let (c_text, rust_text) = (last_error(), rust.unwrap_err().to_string());
        assert!(
            rust_text.ends_with(&c_text),
            "C {c_text:?}, Rust {rust_text:?}"
        );
    }
    let pub_with = |f: &dyn Fn(&mut PublisherConfig)| {
        let mut p = PublisherConfig::new("/tmp/x");
        f(&mut p);
        p.validate()
    };
    let sub_with = |f: &dyn Fn(&mut SubscriberConfig)| {
        let server = "127.0.0.1:1".parse().unwrap();
        let mut s = SubscriberConfig::new("/tmp/x", server, ServerTrust::InsecureLoopback);
        f(&mut s);
        s.validate()
    };
    let (mut pc, mut sc) = (null_mut(), null_mut());
    unsafe {
        ok(mcsync_publisher_config_new(&mut pc));
        ok(mcsync_subscriber_config_new(&mut sc));
        same(
            mcsync_publisher_config_set_ttl(pc, 256),
            pub_with(&|p| p.multicast.ttl = 256),
        );
        assert_eq!(last_error(), "ttl 256 outside 0..=255");
        same(
            mcsync_publisher_config_set_heartbeat_ms(pc, 100, 10),
            pub_with(&|p| {
                p.multicast.heartbeat_initial = Duration::from_millis(100);
                p.multicast.heartbeat_max = Duration::from_millis(10);
            }),
        );
        same(
            mcsync_publisher_config_set_registration_expiry_ms(pc, 10),
            pub_with(&|p| p.registration_expiry = Duration::from_millis(10)),
        );
        same(
            mcsync_subscriber_config_set_silence_timeout_ms(sc, 5),
            sub_with(&|s| s.silence_timeout = Duration::from_millis(5)),
        );
        same(
            mcsync_subscriber_config_set_channel_capacity(sc, 0),
            sub_with(&|s| s.channel_capacity = 0),
        );
        same(
            mcsync_subscriber_config_set_client_name(sc, c("").as_ptr()),
            sub_with(&|s| s.client_name = String::new()),
        );
        assert_eq!(
            last_error(),
            limits::CLIENT_NAME_LEN.check(0).unwrap_err().message()
        );
        // A fingerprint is parsed by core's one parser.
        assert_eq!(
            mcsync_subscriber_config_set_trust_fingerprint(sc, c("ab:cd").as_ptr()),
            mcsync_status::MCSYNC_ERR_CONFIG
        );
        let rust = mcsync_core::config::parse_fingerprint("ab:cd").unwrap_err();
        assert_eq!(last_error(), rust.to_string());
        mcsync_publisher_config_free(pc);
        mcsync_subscriber_config_free(sc);
    }
}

#[test]
fn replica_durability_setter_checks_its_arguments() {
    use mcsync_core::ReplicaDurability;
    let mut sc = null_mut();
    unsafe {
        ok(mcsync_subscriber_config_new(&mut sc));
        for (mode, interval) in [
            (MCSYNC_REPLICA_SYNC, 0),
            (MCSYNC_REPLICA_PERIODIC, 1),
            (MCSYNC_REPLICA_PERIODIC, 3_600_000),
            (MCSYNC_REPLICA_NONE, 0),
        ] {
            ok(mcsync_subscriber_config_set_replica_durability(
                sc, mode, interval,
            ));
        }
        for mode in [-1, 3, 100] {
            assert_eq!(
                mcsync_subscriber_config_set_replica_durability(sc, mode, 1000),
                mcsync_status::MCSYNC_ERR_RANGE
            );
            assert!(
                last_error().contains(&format!("replica durability mode {mode} is none of")),
                "{}",
                last_error()
            );
        }
        for interval in [0, 3_600_001, u64::MAX] {
            assert_eq!(
                mcsync_subscriber_config_set_replica_durability(
                    sc,
                    MCSYNC_REPLICA_PERIODIC,
                    interval
                ),
                mcsync_status::MCSYNC_ERR_RANGE
            );
            // The same words as Rust's validation.
            let rust = ReplicaDurability::Periodic(Duration::from_millis(interval))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(rust.ends_with(&last_error()), "{rust:?} {:?}", last_error());
        }
        assert_eq!(
            mcsync_subscriber_config_set_replica_durability(null_mut(), MCSYNC_REPLICA_SYNC, 0),
            mcsync_status::MCSYNC_ERR_NULL
        );
        mcsync_subscriber_config_free(sc);
    }
}

/// A slow host for the stop tests: logs versions (sleeping in each callback so a close
/// lands mid-stream) and, at `close_at`, closes the subscriber from the callback.
struct SlowHost {
    versions: std::sync::Mutex<Vec<u64>>,
    subscriber: AtomicPtr<mcsync_subscriber>,
    close_at: u64,
}

unsafe extern "C" fn slow_update(user_data: *mut c_void, update: *const mcsync_update) {
    let host = &*(user_data as *const SlowHost);
    let v = (*update).version;
    host.versions.lock().unwrap().push(v);
    // Past the 20th update the first host is slow enough (at least 5.6 s left) that the
    // close the test sends then lands mid-stream however loaded the machine is.
    let slow = host.close_at == 0 && v > 20;
    std::thread::sleep(Duration::from_millis(if slow { 20 } else { 2 }));
    if host.close_at != 0 && v == host.close_at {
        let s = host.subscriber.load(Ordering::SeqCst);
        assert_eq!(mcsync_subscriber_close(s), mcsync_status::MCSYNC_OK);
    }
}

fn slow_host(subscriber: *mut mcsync_subscriber, close_at: u64) -> SlowHost {
    SlowHost {
        versions: Default::default(),
        subscriber: AtomicPtr::new(subscriber),
        close_at,
    }
}

unsafe fn is_closed(sub: *const mcsync_subscription) -> bool {
    let mut closed = false;
    ok(mcsync_subscription_is_closed(sub, &mut closed));
    closed
}

/// The stop state lives in the engine: after `mcsync_subscription_close` from another
/// thread no callback runs, and what was not called back comes at the next subscribe;
/// `mcsync_subscriber_close` from inside a callback stops the rest of that batch and
/// closes every subscription of the subscriber.
#[test]
fn closing_stops_callbacks_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    unsafe {
        let (publisher, subscriber) = open_pair(dir.path());
        let mut db = null_mut();
        ok(mcsync_publisher_database(
            publisher,
            c("slow").as_ptr(),
            &mut db,
        ));
        let put = |i: u32| {
            let key = format!("key-{i:03}");
            let mut v = 0;
            ok(mcsync_db_put(
                db,
                key.as_ptr(),
                key.len(),
                b"v".as_ptr(),
                1,
                &mut v,
            ));
            v
        };
        // Published before subscribing: the replica catches up in large batches.
        for i in 0..300 {
            put(i);
        }
        let subscribe = |host: &SlowHost| {
            let mut sub = null_mut();
            ok(mcsync_subscriber_subscribe(
                subscriber,
                c("slow").as_ptr(),
                Some(slow_update),
                host as *const SlowHost as *mut c_void,
                None,
                &mut sub,
            ));
            sub
        };

        // Close from another thread while callbacks run.
        let first = slow_host(subscriber, 0);
        let sub = subscribe(&first);
        let start = Instant::now();
        while first.versions.lock().unwrap().len() < 20 {
            assert!(start.elapsed() < Duration::from_secs(60), "no callback");
            std::thread::sleep(Duration::from_millis(1));
        }
        let sub_addr = sub as usize;
        std::thread::spawn(move || {
            ok(mcsync_subscription_close(
                sub_addr as *const mcsync_subscription,
            ))
        })
        .join()
        .unwrap();
        let at_close = first.versions.lock().unwrap().clone();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            *first.versions.lock().unwrap(),
            at_close,
            "a callback ran after close"
        );
        assert!(is_closed(sub));
        let n = *at_close.last().unwrap();
        assert!(n < 300, "closed after every callback had run");
        assert_eq!(at_close, (1..=n).collect::<Vec<_>>());
        mcsync_subscription_free(sub);

        // The next subscribe replays the rest; the subscriber is closed from its callback.
        let other = slow_host(subscriber, 0);
        let mut other_db = null_mut();
        ok(mcsync_publisher_database(
            publisher,
            c("other").as_ptr(),
            &mut other_db,
        ));
        let mut other_sub = null_mut();
        ok(mcsync_subscriber_subscribe(
            subscriber,
            c("other").as_ptr(),
            Some(slow_update),
            &other as *const SlowHost as *mut c_void,
            None,
            &mut other_sub,
        ));
        let close_at = n + (300 - n) / 2;
        let second = slow_host(subscriber, close_at);
        let sub = subscribe(&second);
        let start = Instant::now();
        while !is_closed(sub) {
            assert!(start.elapsed() < Duration::from_secs(60), "never closed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(is_closed(other_sub));
        // The rest of the batch was not called back.
        mcsync_subscription_free(sub);
        assert_eq!(
            *second.versions.lock().unwrap(),
            (n + 1..=close_at).collect::<Vec<_>>()
        );
        mcsync_subscription_free(other_sub);
        // A closed subscriber refuses, naming what was refused.
        let mut again = null_mut();
        assert_eq!(
            mcsync_subscriber_subscribe(
                subscriber,
                c("slow").as_ptr(),
                None,
                null_mut(),
                None,
                &mut again
            ),
            mcsync_status::MCSYNC_ERR_CLOSED
        );
        assert!(again.is_null());
        assert_eq!(
            last_error(),
            "subscriber is closed; cannot subscribe to \"slow\""
        );
        let mut report = null_mut();
        assert_eq!(
            mcsync_subscriber_verify(subscriber, c("slow").as_ptr(), &mut report),
            mcsync_status::MCSYNC_ERR_CLOSED
        );
        assert_eq!(last_error(), "subscriber is closed; cannot verify \"slow\"");
        mcsync_subscriber_free(subscriber);
        mcsync_db_free(db);
        mcsync_db_free(other_db);
        ok(mcsync_publisher_close(publisher));
        mcsync_publisher_free(publisher);
    }
}
