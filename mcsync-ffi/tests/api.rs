//! The C API driven from Rust through the same `extern "C"` functions C calls: a
//! publisher and a subscriber on loopback, a callback that closes its own subscription, and
//! argument checking. (scripts/test-c.sh runs the C programs themselves.)

use mcsync::*;
use std::ffi::{c_void, CStr, CString};
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
