//! Subscriber, subscription and replica iterator handles, and the update callback.

use crate::args::{
    borrow, borrow_mut, bytes_arg, free_handle, into_handle, out, set_optional, str_arg,
};
use crate::bytes::bytes_to_c;
use crate::config::mcsync_subscriber_config;
use crate::error::{mcsync_status, FfiError};
use crate::resync::{mcsync_resync_report, report_to_c};
use crate::stats::mcsync_stats;
use mcsync_core::{Error, OpKind, Record, SubscribeOptions, Subscriber, Subscription, Update};
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What an operation in an update does.
#[repr(C)]
#[allow(non_camel_case_types, clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcsync_op_kind {
    /// Set the key to the value.
    MCSYNC_OP_PUT = 0,
    /// Remove the key (the value is empty).
    MCSYNC_OP_DELETE = 1,
}

/// One put or delete inside an update passed to a callback. Every pointer in it is
/// borrowed: valid only until the callback returns. Copy what you need to keep.
#[repr(C)]
pub struct mcsync_op {
    /// Put or delete.
    pub kind: mcsync_op_kind,
    /// The record key (`key_len` bytes, never empty; not NUL-terminated).
    pub key: *const u8,
    /// Length of `key` in bytes.
    pub key_len: usize,
    /// The value (`value_len` bytes; NULL when `value_len` is 0, always for a delete).
    pub value: *const u8,
    /// Length of `value` in bytes.
    pub value_len: usize,
    /// Access groups allowed to read the record: `groups_len` NUL-terminated strings
    /// (NULL when `groups_len` is 0, which means everyone).
    pub groups: *const *const c_char,
    /// Number of entries in `groups`.
    pub groups_len: usize,
}

/// One committed master transaction, as passed to an update callback. Borrowed: it and
/// everything it points to are valid only during the callback.
#[repr(C)]
pub struct mcsync_update {
    /// The database version this transaction produced (1, 2, 3, ... per database).
    pub version: u64,
    /// When the publisher committed it, microseconds since the Unix epoch (0 for the
    /// update a hash resync passes).
    pub timestamp_us: u64,
    /// The operations, in the order the publisher issued them (NULL when `ops_len` is 0).
    pub ops: *const mcsync_op,
    /// Number of entries in `ops`. 0 when access groups withheld every operation of the
    /// transaction from this subscriber (the callback still runs, keeping versions dense).
    pub ops_len: usize,
    /// True when this update **replaces the host's whole state**: `ops` are puts of every
    /// record the replica holds at `version`, and the host must first drop everything it
    /// kept from this database, then apply them, then store `version` (all in one
    /// transaction of its own). Sent only to a subscription made with
    /// `mcsync_subscriber_subscribe_after` when the updates after the host's version can no
    /// longer be delivered one by one (the publisher's journal no longer reaches back that
    /// far) or when the master's history changed (a publisher restored from an older copy),
    /// and to every subscription of a subscriber whose replica store was discarded and
    /// rebuilt after an OS crash or power loss (replica durability periodic or none).
    /// False for every other update.
    pub reset: bool,
}

/// An update callback: called with the `user_data` given to `mcsync_subscriber_subscribe`
/// and one update, on the subscription's process thread, after the update is committed to
/// the local replica; once per master transaction, in version order. Two exceptions, where
/// one update stands for many versions (so versions skip): a compacted catch-up of a
/// replica far behind (see `mcsync_subscriber_config_set_compact_catch_up_after`) passes the
/// latest value of each changed key at the last version it covers, and a hash resync (a
/// journal trimmed past the replica's version, or `mcsync_subscription_request_resync`)
/// passes one update at the version it reached, with `timestamp_us` 0: the records it
/// fetched and deleted, then the operations of the journal updates after the publisher's
/// snapshot (when nothing differed: those journal updates one by one). An update with `reset`
/// set (only with `mcsync_subscriber_subscribe_after`) replaces the host's whole state.
///
/// Delivery is **at least once**: the replica keeps what a callback is to see until the
/// callback returned, so callbacks cut off by a crash, `kill -9` or a close are run again,
/// in order, at the next subscribe (a host may see the last few updates twice). A host
/// that stores each update's version in the same transaction as its data and passes that
/// version to `mcsync_subscriber_subscribe_after` gets each update **exactly once**.
/// `update` is valid only during the call. The callback must return (not `longjmp` or throw out of it); it
/// may call any mcsync function, including closing or freeing its own subscription, except
/// waiting on its own subscription (`mcsync_subscription_wait_for_version` would time out).
pub type mcsync_update_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, update: *const mcsync_update)>;

/// Size in bytes of the `reason` buffer mcsync passes to a vote callback (room for 255
/// bytes of text and a NUL).
pub const MCSYNC_VOTE_REASON_BYTES: usize = 256;

/// A two-phase participant's vote (see `mcsync_subscriber_subscribe_participant`): called
/// with the `user_data` given at subscription and the prepared update, on the
/// subscription's process thread, once the replica is at the version just before it and
/// before anything of it is visible in the replica. `update` is valid only during the call.
/// Like an update callback it sees only the operations this subscriber's access groups
/// allow: puts of records restricted to other groups are left out (the replica turns them
/// into deletes of their keys, and the prepared copy kept on disk holds that form too).
///
/// Return 0 to vote PREPARED (the replica then keeps the update durably until the
/// publisher's decision), or any other value to refuse it. To say why, copy a
/// NUL-terminated UTF-8 text into `reason`, a zero-filled buffer of `reason_len`
/// (`MCSYNC_VOTE_REASON_BYTES`) bytes owned by mcsync and valid only during the call; mcsync
/// reads it up to the first NUL (or all `reason_len` bytes if there is none) after the
/// callback returned, replaces invalid UTF-8, and passes it to the publisher, whose error
/// names this participant (its client name, see `mcsync_subscriber_config_set_client_name`)
/// and the reason. Without a text the reason says which value was returned. `reason` is
/// ignored when 0 is returned. The return type is `int` rather than `mcsync_status` so that
/// any value a C function returns is well-defined.
///
/// The callback must return (not `longjmp` or throw out of it), and should decide quickly:
/// the publisher's update, and every commit queued behind it, waits for the vote. It must
/// not wait on its own subscription; a write to the same publisher from it waits until the
/// two-phase update is decided (by the votes or its timeout).
pub type mcsync_vote_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        update: *const mcsync_update,
        reason: *mut c_char,
        reason_len: usize,
    ) -> c_int,
>;

/// Frees a `user_data` handed to mcsync with a callback; called exactly once, after the last
/// call of that callback (see `mcsync_subscriber_subscribe` and
/// `mcsync_publisher_config_set_authenticator` for when and on which thread).
pub type mcsync_free_callback = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// A subscriber: a local LMDB store holding replicas of the databases it subscribes to.
/// Opened by `mcsync_subscriber_open`, freed by `mcsync_subscriber_free`. Thread-safe.
pub struct mcsync_subscriber {
    /// Shared (weakly) with its subscriptions, for `mcsync_subscription_wait_until_current`.
    inner: Arc<Subscriber>,
}

/// A live replica of one database. Created by `mcsync_subscriber_subscribe`, freed by
/// `mcsync_subscription_free`. Thread-safe: reads may run on any threads concurrently with
/// the process thread applying updates.
pub struct mcsync_subscription {
    inner: Subscription,
    /// The subscriber that made it (whose configuration reaches the publisher); the
    /// subscriber's handle owns it.
    subscriber: Weak<Subscriber>,
}

/// A snapshot of every record of a replica, in key order, as of one consistent version.
/// Created by `mcsync_subscription_iter_new`, freed by `mcsync_subscription_iter_free`.
/// The snapshot is copied into memory when it is created. Not thread-safe.
pub struct mcsync_subscription_iter {
    count: usize,
    rest: std::vec::IntoIter<Record>,
    current: Option<Record>,
}

/// The host's `user_data` and its destructor, which runs when the last owner drops it.
pub(crate) struct UserData {
    pub(crate) ptr: *mut c_void,
    pub(crate) free: mcsync_free_callback,
}

// SAFETY: the host promises that `user_data` may be used from the threads its callback
// runs on (see `mcsync_subscriber_subscribe`, `mcsync_publisher_config_set_authenticator`);
// mcsync itself never dereferences it.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: runs once, when the last owner lets go, as the host asked.
            unsafe { free(self.ptr) };
        }
    }
}

/// Builds the C view of `update` (borrowing from it) and passes it to `f`; everything `f`
/// sees lives until `f` returns.
fn with_c_update<R>(update: &Update, f: impl FnOnce(&mcsync_update) -> R) -> R {
    let groups: Vec<Vec<CString>> = update
        .ops
        .iter()
        .map(|op| {
            op.groups
                .iter()
                .map(|g| CString::new(g.replace('\0', "")).unwrap_or_default())
                .collect()
        })
        .collect();
    let group_ptrs: Vec<Vec<*const c_char>> = groups
        .iter()
        .map(|gs| gs.iter().map(|g| g.as_ptr()).collect())
        .collect();
    let ops: Vec<mcsync_op> = update
        .ops
        .iter()
        .zip(&group_ptrs)
        .map(|(op, gp)| mcsync_op {
            kind: match op.kind {
                OpKind::Put => mcsync_op_kind::MCSYNC_OP_PUT,
                OpKind::Delete => mcsync_op_kind::MCSYNC_OP_DELETE,
            },
            key: op.key.as_ptr(),
            key_len: op.key.len(),
            value: if op.value.is_empty() {
                std::ptr::null()
            } else {
                op.value.as_ptr()
            },
            value_len: op.value.len(),
            groups: if gp.is_empty() {
                std::ptr::null()
            } else {
                gp.as_ptr()
            },
            groups_len: gp.len(),
        })
        .collect();
    let c_update = mcsync_update {
        version: update.version,
        timestamp_us: update.timestamp_us,
        ops: if ops.is_empty() {
            std::ptr::null()
        } else {
            ops.as_ptr()
        },
        ops_len: ops.len(),
        reset: update.reset,
    };
    f(&c_update)
}

/// The C callback as the process thread owns it.
struct HostCallback {
    callback: mcsync_update_callback,
    user: Arc<UserData>,
}

impl HostCallback {
    fn deliver(&mut self, update: &Update) {
        // No check of a stop flag here: the engine counts an update as delivered once this
        // returns, so skipping the call would lose it for good. The engine itself starts no
        // callback after its subscription was told to stop (close from any thread, or from
        // inside a callback); what was not called back is replayed at the next subscribe.
        let Some(callback) = self.callback else {
            return;
        };
        // SAFETY: the host supplied a valid function; everything passed outlives the call.
        with_c_update(update, |u| unsafe { callback(self.user.ptr, u) });
    }
}

/// The C vote callback as the process thread owns it.
struct HostVote {
    vote: unsafe extern "C" fn(*mut c_void, *const mcsync_update, *mut c_char, usize) -> c_int,
    user: Arc<UserData>,
}

impl HostVote {
    fn decide(&mut self, update: &Update) -> Result<(), String> {
        let mut reason = [0u8; MCSYNC_VOTE_REASON_BYTES];
        // SAFETY: the host supplied a valid function; `reason` holds `reason.len()` writable
        // bytes and everything passed outlives the call.
        let rc = with_c_update(update, |u| unsafe {
            (self.vote)(self.user.ptr, u, reason.as_mut_ptr().cast(), reason.len())
        });
        if rc == 0 {
            Ok(())
        } else {
            Err(reason_text(&reason, rc))
        }
    }
}

/// The refusal reason a vote callback left in its buffer: the bytes before the first NUL
/// (all of them if it wrote none), invalid UTF-8 replaced; a default text if empty.
fn reason_text(buf: &[u8], rc: c_int) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    let text = text.trim();
    if text.is_empty() {
        format!("vote callback returned {rc} (no reason given)")
    } else {
        text.to_owned()
    }
}

/// Opens (or creates) a subscriber's store in the configured data directory. No network
/// traffic happens until `mcsync_subscriber_subscribe`.
///
/// `config` is only read; the caller still owns it. On success `*out_subscriber` receives
/// a new handle the caller owns: close it with `mcsync_subscriber_close` (optional) and
/// free it with `mcsync_subscriber_free`. Errors: `MCSYNC_ERR_CONFIG` (missing or invalid
/// settings), `MCSYNC_ERR_STORAGE`, `MCSYNC_ERR_IO`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_open(
    config: *const mcsync_subscriber_config,
    out_subscriber: *mut *mut mcsync_subscriber,
) -> mcsync_status {
    ffi_panic_boundary! {
        let cfg = borrow(config, "config")?.build()?;
        let slot = out(out_subscriber, "out_subscriber")?;
        let subscriber = Subscriber::open(cfg)?;
        *slot = into_handle(mcsync_subscriber {
            inner: Arc::new(subscriber),
        });
        Ok(())
    }
}

/// Subscribes to database `name`: registers with the publisher, joins the database's
/// multicast group, starts the subscription's receive and process threads and catches up
/// from the version stored locally (0 for a new replica). One subscription per database
/// per subscriber.
///
/// `callback` (may be NULL for none) is then called with `user_data` for every update
/// applied, on the subscription's process thread, after the update is committed to the
/// replica, once per master transaction, in version order (see `mcsync_update_callback`).
/// `user_data` is passed through untouched and must be usable from that thread.
///
/// Ownership of `user_data`: if `free_user_data` is not NULL it is called exactly once
/// with `user_data`, in every case: before this function returns if it fails; otherwise
/// after the last callback, on the process thread, when the subscription stops (before
/// `mcsync_subscription_close`, `mcsync_subscription_free`, `mcsync_subscriber_close` or
/// `mcsync_subscriber_free` returns, except when one of those is called from inside the
/// subscription's own callback: then it runs once that callback has returned).
///
/// On success `*out_subscription` receives a new handle the caller owns and frees with
/// `mcsync_subscription_free`. `name` is borrowed for the call only. Errors:
/// `MCSYNC_ERR_CONFIG` (bad name, already subscribed, key epoch mismatch), `MCSYNC_ERR_IO`
/// (publisher unreachable), `MCSYNC_ERR_REFUSED` (unknown database), `MCSYNC_ERR_CLOSED`
/// (subscriber closed). Thread-safe; blocks while registering.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_subscribe(
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    callback: mcsync_update_callback,
    user_data: *mut c_void,
    free_user_data: mcsync_free_callback,
    out_subscription: *mut *mut mcsync_subscription,
) -> mcsync_status {
    ffi_panic_boundary! {
        // From here on mcsync owns user_data (see subscribe_owning).
        subscribe_owning(user_data, free_user_data, subscriber, name, callback, None, None, out_subscription)
    }
}

/// Subscribes to database `name` for **exactly-once** delivery to a host that keeps its own
/// copy: exactly as `mcsync_subscriber_subscribe` (same `callback`, `user_data`,
/// `free_user_data`, ownership, errors and threading), except that the callback is called
/// for exactly the updates after `after_version`, the version the host holds.
///
/// The host stores, in one transaction of its own, what each callback hands it together
/// with that update's `version`, and passes the version it stored here at every start
/// (0 for a host that holds nothing). It then gets exactly the updates after it, in
/// version order, wherever they come from: the updates the replica keeps until their
/// callback returned (after a crash, `kill -9` or close), the publisher's journal (a host
/// behind its replica, say restored from a backup), or — when neither reaches back to
/// `after_version`, or the master's history changed (a publisher restored from an older
/// copy, or a host ahead of the master) — one update with `reset` set holding every record
/// at its version (see `mcsync_update`): drop the host's table, apply it, store its version.
/// Nothing is skipped silently. Updates at or below `after_version` that the replica applies
/// later (a host ahead of its replica) are applied without a callback.
///
/// With a NULL `callback` `after_version` is ignored (nothing is delivered).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_subscribe_after(
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    after_version: u64,
    callback: mcsync_update_callback,
    user_data: *mut c_void,
    free_user_data: mcsync_free_callback,
    out_subscription: *mut *mut mcsync_subscription,
) -> mcsync_status {
    ffi_panic_boundary! {
        subscribe_owning(user_data, free_user_data, subscriber,
            name,
            callback,
            Some(after_version),
            None,
            out_subscription)
    }
}

/// Subscribes to database `name` as a two-phase participant: exactly as
/// `mcsync_subscriber_subscribe` (same `callback`, `user_data`, ownership and errors), and
/// in addition every two-phase update of the database (`mcsync_txn_commit_two_phase`,
/// `mcsync_txn_prepare`) waits for this replica's vote. The publisher learns that this
/// subscription is a participant when it registers, so updates prepared after this
/// function returned wait for it.
///
/// `vote` (see `mcsync_vote_callback`) is called with the same `user_data` for each
/// prepared update, on the subscription's process thread, before anything of the update is
/// visible in the replica; it votes PREPARED (0) or refuses (non-zero, with a reason). With
/// `vote` NULL the replica votes PREPARED whenever it can keep the update. A committed
/// update is then applied and passed to `callback` like any other; an aborted one is
/// dropped and never seen by `callback`. After `mcsync_subscription_close` no vote starts
/// (an update prepared later is refused, or times out at the publisher).
///
/// `free_user_data` runs once, after the last call of either callback (as
/// `mcsync_subscriber_subscribe` says). On success `*out_subscription` receives a new
/// handle the caller owns and frees with `mcsync_subscription_free`. `name` is borrowed for
/// the call only. Thread-safe; blocks while registering.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_subscribe_participant(
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    callback: mcsync_update_callback,
    vote: mcsync_vote_callback,
    user_data: *mut c_void,
    free_user_data: mcsync_free_callback,
    out_subscription: *mut *mut mcsync_subscription,
) -> mcsync_status {
    ffi_panic_boundary! {
        subscribe_owning(user_data, free_user_data, subscriber,
            name,
            callback,
            None,
            Some(vote),
            out_subscription)
    }
}

/// What the subscribe functions do once `user` owns the host's `user_data`: `after` is the
/// host's version (exactly once), `participant` is `Some(vote)` for a two-phase participant.
/// Takes ownership of `user_data` (every path out either hands it to the subscription or
/// frees it) and subscribes. Our own reference is dropped last, after the engine returned,
/// so a failing subscribe never runs `free_user_data` while the engine holds a lock (the
/// destructor may call back into mcsync).
#[allow(clippy::too_many_arguments)] // the C arguments, passed through
unsafe fn subscribe_owning(
    user_data: *mut c_void,
    free_user_data: mcsync_free_callback,
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    callback: mcsync_update_callback,
    after: Option<u64>,
    participant: Option<mcsync_vote_callback>,
    out_subscription: *mut *mut mcsync_subscription,
) -> Result<(), FfiError> {
    let user = Arc::new(UserData {
        ptr: user_data,
        free: free_user_data,
    });
    let result = subscribe(
        &user,
        subscriber,
        name,
        callback,
        after,
        participant,
        out_subscription,
    );
    drop(user);
    result
}

unsafe fn subscribe(
    user: &Arc<UserData>,
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    callback: mcsync_update_callback,
    after: Option<u64>,
    participant: Option<mcsync_vote_callback>,
    out_subscription: *mut *mut mcsync_subscription,
) -> Result<(), FfiError> {
    let s = borrow(subscriber, "subscriber")?;
    let name = str_arg(name, "name")?;
    let slot = out(out_subscription, "out_subscription")?;
    let mut host = HostCallback {
        callback,
        user: user.clone(),
    };
    let boxed: mcsync_core::UpdateCallback = Box::new(move |u: &Update| host.deliver(u));
    let vote = participant.flatten().map(|vote| {
        let mut host = HostVote {
            vote,
            user: user.clone(),
        };
        Box::new(move |u: &Update| host.decide(u)) as mcsync_core::VoteCallback
    });
    let options = SubscribeOptions {
        callback: Some(boxed),
        after,
        participant: participant.is_some(),
        vote,
    };
    // The core refuses a closed subscriber, and closes a subscription made while it closed.
    let subscription = s
        .inner
        .subscribe_with_options(name, options)
        .map_err(|e| closed_for(e, || format!("subscribe to {name:?}")))?;
    *slot = into_handle(mcsync_subscription {
        inner: subscription,
        subscriber: Arc::downgrade(&s.inner),
    });
    Ok(())
}

/// Compares the local replica of database `name` with the publisher's current state, by
/// range digests of content hashes, without changing anything. The replica's hashes are
/// recomputed from its data, so records changed behind mcsync's back are found too. Works
/// with or without a live subscription to `name` (with one, updates still in flight may
/// show as differences: compare `version` and `previous_version`).
///
/// On success `*out_report` receives a new report the caller owns and frees with
/// `mcsync_resync_report_free`; its `in_agreement` says whether the records are the same.
/// `name` is borrowed for the call only. Errors: `MCSYNC_ERR_CONFIG` (bad name),
/// `MCSYNC_ERR_IO` (publisher unreachable), `MCSYNC_ERR_AUTH`, `MCSYNC_ERR_REFUSED`
/// (unknown database), `MCSYNC_ERR_STORAGE`, `MCSYNC_ERR_CLOSED` (subscriber closed).
/// Thread-safe; blocks while it talks to the publisher (one control connection; the traffic
/// grows with the number of differences, not with the size of the replica).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_verify(
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    out_report: *mut *mut mcsync_resync_report,
) -> mcsync_status {
    ffi_panic_boundary! {
        one_shot(subscriber, name, out_report, false)
    }
}

/// Resyncs the local replica of database `name` by hashes now, without subscribing: fetches
/// what differs or is missing, deletes what the publisher does not have, then applies the
/// journal after the publisher's snapshot, all in one LMDB transaction (readers see the old
/// state until it commits). For a replica restored from a backup, copied from another
/// replica or repaired by hand. With a live subscription to `name` this fails with
/// `MCSYNC_ERR_CONFIG`: use `mcsync_subscription_request_resync` instead.
///
/// On success `*out_report` receives a new report the caller owns and frees with
/// `mcsync_resync_report_free`. Other errors and threading as `mcsync_subscriber_verify`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_resync(
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    out_report: *mut *mut mcsync_resync_report,
) -> mcsync_status {
    ffi_panic_boundary! {
        one_shot(subscriber, name, out_report, true)
    }
}

/// `mcsync_subscriber_verify` (`apply` false) and `mcsync_subscriber_resync` (true).
unsafe fn one_shot(
    subscriber: *const mcsync_subscriber,
    name: *const c_char,
    out_report: *mut *mut mcsync_resync_report,
    apply: bool,
) -> Result<(), FfiError> {
    let s = borrow(subscriber, "subscriber")?;
    let name = str_arg(name, "name")?;
    let slot = out(out_report, "out_report")?;
    let what = if apply { "resync" } else { "verify" };
    let report = if apply {
        s.inner.resync(name)
    } else {
        s.inner.verify(name)
    }
    .map_err(|e| closed_for(e, || format!("{what} {name:?}")))?;
    *slot = report_to_c(&report);
    Ok(())
}

/// Closes every subscription of this subscriber (see `mcsync_subscription_close`); later
/// subscribes fail with `MCSYNC_ERR_CLOSED`. Subscription handles stay valid until freed
/// and can still read their replicas. Closing again is a no-op returning `MCSYNC_OK`.
/// Thread-safe; may be called from an update callback (it does not wait for that
/// callback's own subscription, whose threads stop once the callback returns).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_close(
    subscriber: *const mcsync_subscriber,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscriber, "subscriber")?;
        s.inner.close()?;
        Ok(())
    }
}

/// The core's refusal of a closed subscriber, naming what the call was to do (`what`);
/// other errors as they are.
fn closed_for(e: Error, what: impl FnOnce() -> String) -> FfiError {
    match e {
        Error::Closed(m) if m == "subscriber is closed" => FfiError::new(
            mcsync_status::MCSYNC_ERR_CLOSED,
            format!("subscriber is closed; cannot {}", what()),
        ),
        e => e.into(),
    }
}

/// Closes the subscriber if still open (as `mcsync_subscriber_close`), then frees the
/// handle. NULL is a no-op. No other thread may be using the handle.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_free(subscriber: *mut mcsync_subscriber) {
    ffi_panic_boundary! { on_panic = ();
        if let Some(s) = subscriber.as_ref() {
            // Explicit: a wait_until_current in progress holds the subscriber too.
            let _ = s.inner.close();
        }
        free_handle(subscriber)
    }
}

/// Looks `key` up in the replica. On success `*value` receives a new buffer of
/// `*value_len` bytes holding a copy of the value, followed by a NUL byte that is not
/// counted (so text values print as C strings); the caller owns it and frees it with
/// `mcsync_bytes_free`. A missing key gives `MCSYNC_ERR_NOT_FOUND` (nothing written).
///
/// `key` is borrowed for the call only. Works after the subscription is closed (the
/// replica stays readable until the handle is freed). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_get(
    subscription: *const mcsync_subscription,
    key: *const u8,
    key_len: usize,
    value: *mut *mut u8,
    value_len: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        let key = bytes_arg(key, key_len, "key")?;
        let value = out(value, "value")?;
        let value_len = out(value_len, "value_len")?;
        let v = lookup(s, key)?;
        *value = bytes_to_c(&v);
        *value_len = v.len();
        Ok(())
    }
}

fn lookup(s: &mcsync_subscription, key: &[u8]) -> Result<Vec<u8>, FfiError> {
    s.inner.get(key)?.ok_or_else(|| {
        FfiError::new(
            mcsync_status::MCSYNC_ERR_NOT_FOUND,
            format!(
                "key {:?} not found in the replica of {:?}",
                String::from_utf8_lossy(key),
                s.inner.name()
            ),
        )
    })
}

/// Looks `key` up in the replica and copies the value into the caller's `buf` of
/// `buf_len` bytes (no NUL is added).
///
/// On success `*value_len` receives the value's length. If the value is longer than
/// `buf_len`, returns `MCSYNC_ERR_BUFFER_TOO_SMALL`, leaves `buf` untouched and sets
/// `*value_len` to the length needed (call with `buf_len` 0 and `buf` NULL to ask for the
/// length). A missing key gives `MCSYNC_ERR_NOT_FOUND` (nothing written). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_get_into(
    subscription: *const mcsync_subscription,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    buf_len: usize,
    value_len: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        let key = bytes_arg(key, key_len, "key")?;
        let value_len = out(value_len, "value_len")?;
        let v = lookup(s, key)?;
        if v.len() > buf_len {
            *value_len = v.len();
            return Err(FfiError::new(
                mcsync_status::MCSYNC_ERR_BUFFER_TOO_SMALL,
                format!("value needs {} bytes, buffer has {buf_len}", v.len()),
            ));
        }
        if !v.is_empty() {
            if buf.is_null() {
                return Err(FfiError::null("buf"));
            }
            std::ptr::copy_nonoverlapping(v.as_ptr(), buf, v.len());
        }
        *value_len = v.len();
        Ok(())
    }
}

/// Takes a snapshot of every record of the replica, in key order, as of one consistent
/// version, and returns an iterator over it. The records are copied into memory now, so
/// updates applied later do not show and the iterator does not hold the store open.
///
/// On success `*out_iter` receives a new iterator the caller owns and frees with
/// `mcsync_subscription_iter_free`. Thread-safe (the iterator itself is not).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_iter_new(
    subscription: *const mcsync_subscription,
    out_iter: *mut *mut mcsync_subscription_iter,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        let slot = out(out_iter, "out_iter")?;
        let rest = s.inner.iter()?;
        *slot = into_handle(mcsync_subscription_iter {
            count: rest.len(),
            rest,
            current: None,
        });
        Ok(())
    }
}

/// Writes the number of records in the iterator's snapshot (all of them, returned or not)
/// to `*count`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_iter_count(
    iter: *const mcsync_subscription_iter,
    count: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let it = borrow(iter, "iter")?;
        *out(count, "count")? = it.count;
        Ok(())
    }
}

/// Advances to the next record. If there is one, `*has_record` is set to true and `*key`,
/// `*key_len`, `*value`, `*value_len` describe it; at the end `*has_record` is set to
/// false and the other out-parameters are not written.
///
/// The key and value are borrowed from the iterator: valid until the next call of
/// `mcsync_subscription_iter_next` or `mcsync_subscription_iter_free` on it; do not free
/// them. `*value` may be NULL when `*value_len` is 0.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_iter_next(
    iter: *mut mcsync_subscription_iter,
    key: *mut *const u8,
    key_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
    has_record: *mut bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        let it = borrow_mut(iter, "iter")?;
        let key = out(key, "key")?;
        let key_len = out(key_len, "key_len")?;
        let value = out(value, "value")?;
        let value_len = out(value_len, "value_len")?;
        let has_record = out(has_record, "has_record")?;
        it.current = it.rest.next();
        match &it.current {
            Some((k, v)) => {
                *key = k.as_ptr();
                *key_len = k.len();
                *value = if v.is_empty() { std::ptr::null() } else { v.as_ptr() };
                *value_len = v.len();
                *has_record = true;
            }
            None => *has_record = false,
        }
        Ok(())
    }
}

/// Frees an iterator and the records it holds. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_iter_free(iter: *mut mcsync_subscription_iter) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(iter)
    }
}

/// Writes the version the replica is at to `*version`: every update up to it is committed
/// and its callback has run. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_version(
    subscription: *const mcsync_subscription,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        *out(version, "version")? = s.inner.version();
        Ok(())
    }
}

/// Blocks until the replica reaches `version` (and the callbacks up to it have run), for at
/// most `timeout_ms` milliseconds. Returns `MCSYNC_OK`, `MCSYNC_ERR_TIMEOUT`,
/// `MCSYNC_ERR_CLOSED` (the subscription closed) or `MCSYNC_ERR_STORAGE` (it stopped on a
/// storage failure). Thread-safe; never call it from the subscription's own callback (the
/// version cannot advance while the callback runs).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_wait_for_version(
    subscription: *const mcsync_subscription,
    version: u64,
    timeout_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        s.inner
            .wait_for_version(version, Duration::from_millis(timeout_ms))?;
        Ok(())
    }
}

/// Blocks until the replica has caught up with the version the publisher had when this
/// subscription registered, and every callback up to it has run (replays of callbacks a
/// crash or close cut off included), for at most `timeout_ms` milliseconds. On success
/// writes that version to `*out_version` (optional: may be NULL). Returns `MCSYNC_OK`,
/// `MCSYNC_ERR_TIMEOUT`, `MCSYNC_ERR_CLOSED` (the subscription closed), `MCSYNC_ERR_AUTH`
/// (its access was revoked) or `MCSYNC_ERR_STORAGE` (it stopped on a storage failure).
/// Thread-safe; never call it from the subscription's own callback (the version cannot
/// advance while the callback runs).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_wait_caught_up(
    subscription: *const mcsync_subscription,
    timeout_ms: u64,
    out_version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        let v = s.inner.wait_caught_up(Duration::from_millis(timeout_ms))?;
        set_optional(out_version, v);
        Ok(())
    }
}

/// Blocks until the replica has caught up with the version the publisher has **now**, and
/// every callback up to it has run, for at most `timeout_ms` milliseconds: no version needs
/// to be known. The version is asked over a short control connection of its own (a
/// registration, closed again at once, made with the subscriber's settings). On success
/// writes that version to `*out_version` (optional: may be NULL). Returns `MCSYNC_OK`,
/// `MCSYNC_ERR_TIMEOUT`, `MCSYNC_ERR_IO` (the publisher cannot be reached or does not
/// answer), `MCSYNC_ERR_AUTH`, `MCSYNC_ERR_REFUSED`, `MCSYNC_ERR_CLOSED` (the subscription
/// closed, or its subscriber was freed) or `MCSYNC_ERR_STORAGE` (it stopped on a storage
/// failure). Thread-safe; never call it from the subscription's own callback (the version
/// cannot advance while the callback runs).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_wait_until_current(
    subscription: *const mcsync_subscription,
    timeout_ms: u64,
    out_version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        let subscriber = s.subscriber.upgrade().ok_or_else(|| {
            FfiError::new(
                mcsync_status::MCSYNC_ERR_CLOSED,
                format!(
                    "the subscriber of the subscription to {:?} was freed",
                    s.inner.name()
                ),
            )
        })?;
        let v = s
            .inner
            .wait_until_current(&subscriber, Duration::from_millis(timeout_ms))?;
        set_optional(out_version, v);
        Ok(())
    }
}

/// Asks the subscription's process thread to resync its replica by hashes as soon as it
/// can (as `mcsync_subscriber_resync` does, but while subscribed): for a store restored
/// from a backup or edited by hand. Returns at once. Update callbacks then see what changed
/// as one update (see `mcsync_update_callback`); progress shows in the statistics
/// (`catchups_resync`, `resync_fetched`, `resync_deleted`, `resync_bytes`).
/// `MCSYNC_ERR_CLOSED` if the subscription is closed. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_request_resync(
    subscription: *const mcsync_subscription,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        if s.inner.is_closed() {
            return Err(FfiError::new(
                mcsync_status::MCSYNC_ERR_CLOSED,
                format!("subscription to {:?} is closed; cannot resync", s.inner.name()),
            ));
        }
        s.inner.request_resync();
        Ok(())
    }
}

/// Takes a snapshot of the subscription's counters. On success `*out_stats` receives a new
/// object the caller owns and frees with `mcsync_stats_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_stats(
    subscription: *const mcsync_subscription,
    out_stats: *mut *mut mcsync_stats,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        let slot = out(out_stats, "out_stats")?;
        *slot = into_handle(mcsync_stats::from_fields(s.inner.stats().fields()));
        Ok(())
    }
}

/// Renders every subscription's counters, gauges, version and latency histogram (labelled
/// by database) in the OpenMetrics text format that Prometheus scrapes. `*text` receives a
/// NUL-terminated buffer (free it with `mcsync_bytes_free`), `*len` (optional, may be
/// NULL) its length without the NUL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_metrics(
    subscriber: *const mcsync_subscriber,
    text: *mut *mut c_char,
    len: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscriber, "subscriber")?;
        crate::bytes::text_out(text, len, &s.inner.metrics())
    }
}

/// Writes whether the subscription is closed (by a close call, or stopped after a storage
/// failure) to `*closed`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_is_closed(
    subscription: *const mcsync_subscription,
    closed: *mut bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        *out(closed, "closed")? = s.inner.is_closed();
        Ok(())
    }
}

/// Closes the subscription: no callback starts after this returns, its threads stop and its
/// socket closes; the replica stays readable through the handle. Closing again is a no-op
/// returning `MCSYNC_OK`. Thread-safe; blocks until the threads stopped (a callback in
/// progress finishes first). Updates the replica already applied whose callbacks had not
/// run are kept and called back at the next subscribe to this database (nothing is lost).
///
/// May be called from the subscription's own update callback without deadlock: it then
/// returns at once, no further callback runs, and the threads exit (and `free_user_data`
/// runs) after that callback returns.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_close(
    subscription: *const mcsync_subscription,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(subscription, "subscription")?;
        s.inner.close()?;
        Ok(())
    }
}

/// Closes the subscription if still open (as `mcsync_subscription_close`, including from
/// its own callback), then frees the handle. NULL is a no-op. No other thread may be using
/// the handle.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscription_free(subscription: *mut mcsync_subscription) {
    ffi_panic_boundary! { on_panic = ();
        if let Some(s) = subscription.as_ref() {
            // Explicit: other clones (none today) must not keep it running.
            let _ = s.inner.close();
        }
        free_handle(subscription)
    }
}

#[cfg(test)]
mod tests {
    use super::reason_text;

    #[test]
    fn reason_text_reads_up_to_the_nul_or_the_whole_buffer() {
        let mut buf = [0u8; 16];
        assert_eq!(
            reason_text(&buf, 3),
            "vote callback returned 3 (no reason given)"
        );
        buf[..5].copy_from_slice(b"no.\0x");
        assert_eq!(reason_text(&buf, 1), "no.");
        let full = [b'a'; 16];
        assert_eq!(reason_text(&full, 1), "a".repeat(16));
        assert_eq!(reason_text(b"bad \xff utf8\0", 1), "bad \u{fffd} utf8");
        assert_eq!(
            reason_text(b"  \0", -1),
            "vote callback returned -1 (no reason given)"
        );
    }
}
