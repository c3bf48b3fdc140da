//! Publisher, database and transaction handles.

use crate::args::{
    borrow, borrow_mut, bytes_arg, free_handle, into_handle, out, set_optional, str_arg,
};
use crate::config::mcsync_publisher_config;
use crate::error::{mcsync_status, FfiError};
use crate::stats::mcsync_stats;
use mcsync_core::{Database, Prepared, Publisher, Schedule, Transaction};
use std::ffi::CString;
use std::os::raw::c_char;
use std::time::Duration;

/// A publisher (the master side): its LMDB journal, its repair server and one multicaster
/// thread per database. Opened by `mcsync_publisher_open`, freed by `mcsync_publisher_free`.
/// Thread-safe: any thread may call any function on it concurrently.
pub struct mcsync_publisher {
    inner: Publisher,
}

/// A published database. Created by `mcsync_publisher_database`, freed by
/// `mcsync_db_free`. Thread-safe. It keeps working after its publisher is closed or freed,
/// but every write then fails with `MCSYNC_ERR_CLOSED`.
pub struct mcsync_db {
    inner: Database,
}

/// A pending transaction on one database. Created by `mcsync_txn_begin`; ended (and freed)
/// by exactly one of `mcsync_txn_commit`, `mcsync_txn_commit_two_phase`,
/// `mcsync_txn_prepare` or `mcsync_txn_discard`. Not thread-safe: use it from one thread at
/// a time. It does not depend on the `mcsync_db` handle it was begun from, which may be
/// freed first.
pub struct mcsync_txn {
    inner: Transaction,
}

/// A two-phase update every participant has voted PREPARED, awaiting the decision. Created
/// by `mcsync_txn_prepare`; ended (and freed) by exactly one of `mcsync_prepared_commit` or
/// `mcsync_prepared_rollback`. Until then no replica shows it, and every later commit of
/// its database waits behind it (other databases go on), so decide promptly, and never write
/// to the same database from the thread holding it (that write would wait forever). Not
/// thread-safe: use it from one thread at a time (it may be handed to another thread).
pub struct mcsync_prepared {
    inner: Prepared,
}

/// A daily multicast window for `mcsync_publisher_set_schedule_windows`, in minutes after
/// midnight UTC.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mcsync_schedule_window {
    /// First minute of the window, 0..=1439.
    pub start_minute: u32,
    /// Minute the window ends (exclusive), 0..=1440. A window with `end_minute <
    /// start_minute` runs over midnight.
    pub end_minute: u32,
}

/// One subscriber registered with the publisher, as listed by
/// `mcsync_publisher_subscribers`. Borrowed from its list, with every string in it: valid
/// until `mcsync_subscriber_list_free`. New fields are only ever added at the end.
#[repr(C)]
pub struct mcsync_subscriber_info {
    /// Registration id, unique within the publisher.
    pub id: u64,
    /// User it authenticated as (NUL-terminated UTF-8; empty with open access).
    pub user: *const c_char,
    /// Database it subscribed to.
    pub database: *const c_char,
    /// Client name it gave (`mcsync_subscriber_config_set_client_name`).
    pub client: *const c_char,
    /// Address of its last session, "ip:port".
    pub peer: *const c_char,
    /// Registrations and repair sessions it opened.
    pub sessions: u64,
    /// Whether it takes part in two-phase updates of its database
    /// (`mcsync_subscriber_subscribe_participant`).
    pub participant: bool,
}

/// A snapshot of the subscribers registered with a publisher, by registration id. Created
/// by `mcsync_publisher_subscribers`, freed by `mcsync_subscriber_list_free`. Immutable,
/// so thread-safe.
pub struct mcsync_subscriber_list {
    entries: Vec<SubscriberEntry>,
}

/// An entry and the strings its pointers point into (a `CString`'s buffer does not move
/// when the `CString` does).
struct SubscriberEntry {
    info: mcsync_subscriber_info,
    _strings: [CString; 4],
}

/// Opens (or creates) a publisher's store in the configured data directory, starts its
/// control (repair) server and resumes every database published before.
///
/// `config` is only read; the caller still owns it and may free it right after.
/// On success `*out_publisher` receives a new handle the caller owns: close it with
/// `mcsync_publisher_close` (optional) and free it with `mcsync_publisher_free`.
/// Errors: `MCSYNC_ERR_CONFIG` (missing or inconsistent settings), `MCSYNC_ERR_IO` (address
/// in use, directory not writable), `MCSYNC_ERR_STORAGE`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_open(
    config: *const mcsync_publisher_config,
    out_publisher: *mut *mut mcsync_publisher,
) -> mcsync_status {
    ffi_panic_boundary! {
        let cfg = borrow(config, "config")?.build()?;
        let slot = out(out_publisher, "out_publisher")?;
        let publisher = Publisher::open(cfg)?;
        *slot = into_handle(mcsync_publisher { inner: publisher });
        Ok(())
    }
}

/// Gets the database called `name`, publishing it from now on (it is created on first use;
/// its versions continue across restarts). Names are 1..=200 characters of
/// `[A-Za-z0-9._-]`.
///
/// `name` is borrowed for the call only. On success `*out_db` receives a new handle the
/// caller owns and frees with `mcsync_db_free`; several handles to one database may exist.
/// Errors: `MCSYNC_ERR_CONFIG` (bad name), `MCSYNC_ERR_CLOSED`, `MCSYNC_ERR_IO`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_database(
    publisher: *const mcsync_publisher,
    name: *const c_char,
    out_db: *mut *mut mcsync_db,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        let name = str_arg(name, "name")?;
        let slot = out(out_db, "out_db")?;
        let db = p.inner.database(name)?;
        *slot = into_handle(mcsync_db { inner: db });
        Ok(())
    }
}

/// Writes the control address subscribers connect to, as "ip:port" with a NUL, into `buf`
/// of `len` bytes (64 bytes always suffice).
///
/// On success `*written` receives the string's length (without the NUL). If it does not
/// fit, returns `MCSYNC_ERR_BUFFER_TOO_SMALL`, leaves `buf` untouched and sets `*written`
/// to the length needed (without the NUL; the buffer needs one more byte). `buf` may be
/// NULL when `len` is 0, to ask for the length. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_control_addr(
    publisher: *const mcsync_publisher,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        let written = out(written, "written")?;
        write_c_string(&p.inner.control_addr().to_string(), buf, len, written, "control address")
    }
}

/// Writes the SHA-256 fingerprint of the control channel's TLS certificate (64 lowercase hex
/// digits and a NUL) into `buf` of `len` bytes (65 suffice), for subscribers to pin with
/// `mcsync_subscriber_config_set_trust_fingerprint`. `MCSYNC_ERR_NOT_FOUND` when the
/// publisher runs without TLS (insecure loopback). Buffer rules as
/// `mcsync_publisher_control_addr`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_fingerprint(
    publisher: *const mcsync_publisher,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        let written = out(written, "written")?;
        let fp = p.inner.fingerprint().ok_or_else(|| {
            FfiError::new(
                mcsync_status::MCSYNC_ERR_NOT_FOUND,
                "the publisher runs without TLS (insecure loopback): no fingerprint",
            )
        })?;
        write_c_string(fp, buf, len, written, "fingerprint")
    }
}

/// Copies `text` and a NUL into `buf` of `len` bytes; on success or when it does not fit,
/// `*written` gets the text's length.
pub(crate) unsafe fn write_c_string(
    text: &str,
    buf: *mut c_char,
    len: usize,
    written: &mut usize,
    what: &str,
) -> Result<(), FfiError> {
    if len < text.len() + 1 {
        *written = text.len();
        return Err(FfiError::new(
            mcsync_status::MCSYNC_ERR_BUFFER_TOO_SMALL,
            format!("{what} needs {} bytes, buffer has {len}", text.len() + 1),
        ));
    }
    if buf.is_null() {
        return Err(FfiError::null("buf"));
    }
    std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
    *buf.add(text.len()) = 0;
    *written = text.len();
    Ok(())
}

/// Cuts `user` off: its sessions are refused from now on (also after a restart), and every
/// database's key is rotated so it cannot decrypt anything published after this call.
/// Other subscribers re-register and continue. `user` is borrowed for the call only.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_revoke(
    publisher: *const mcsync_publisher,
    user: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        p.inner.revoke(str_arg(user, "user")?)?;
        Ok(())
    }
}

/// Takes a snapshot of the publisher's counters (all databases together).
///
/// On success `*out_stats` receives a new object the caller owns and frees with
/// `mcsync_stats_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_stats(
    publisher: *const mcsync_publisher,
    out_stats: *mut *mut mcsync_stats,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        let slot = out(out_stats, "out_stats")?;
        *slot = into_handle(mcsync_stats::from_fields(p.inner.stats().fields()));
        Ok(())
    }
}

/// Renders every publisher counter and gauge, each database's version, and each registered
/// subscriber's last report (lag, loss, latency) in the OpenMetrics text format that
/// Prometheus scrapes (serve it with content type
/// `application/openmetrics-text; version=1.0.0; charset=utf-8`). `*text` receives a
/// NUL-terminated buffer (free it with `mcsync_bytes_free`), `*len` (optional, may be
/// NULL) its length without the NUL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_metrics(
    publisher: *const mcsync_publisher,
    text: *mut *mut c_char,
    len: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        crate::bytes::text_out(text, len, &p.inner.metrics())
    }
}

/// Waits until every commit that has returned is journaled durably and handed to
/// multicast (immediate unless `mcsync_publisher_config_set_async_commits` is on). Errors:
/// `MCSYNC_ERR_STORAGE` (a journal commit failed; the updates it held are lost),
/// `MCSYNC_ERR_CLOSED`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_flush(
    publisher: *const mcsync_publisher,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow(publisher, "publisher")?.inner.flush()?;
        Ok(())
    }
}

/// Trims every database's journal now as the retention policy says
/// (`mcsync_publisher_config_set_retention_*`; the publisher also does this by itself about
/// once a second). On success, if `removed` is not NULL, `*removed` receives the number of
/// journal entries removed. Errors: `MCSYNC_ERR_STORAGE`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_apply_retention(
    publisher: *const mcsync_publisher,
    removed: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        let n = p.inner.apply_retention()?;
        set_optional(removed, n);
        Ok(())
    }
}

/// Multicasts at all times from now on (the default), replacing the schedule set in the
/// configuration or by an earlier call. Takes effect within about 50 ms. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_set_schedule_always(
    publisher: *const mcsync_publisher,
) -> mcsync_status {
    ffi_panic_boundary! {
        Ok(borrow(publisher, "publisher")?.inner.set_schedule(Schedule::Always)?)
    }
}

/// Stops multicasting from now on: updates are only journaled and subscribers catch up by
/// unicast (they learn of new versions from heartbeats). Takes effect within about 50 ms.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_set_schedule_never(
    publisher: *const mcsync_publisher,
) -> mcsync_status {
    ffi_panic_boundary! {
        Ok(borrow(publisher, "publisher")?.inner.set_schedule(Schedule::Never)?)
    }
}

/// Multicasts only inside the given daily windows from now on (`windows_len` entries,
/// 1..=1440, copied; see `mcsync_schedule_window`), replacing the schedule set in the
/// configuration or by an earlier call. Outside every window updates are only journaled and
/// subscribers catch up by unicast. Takes effect within about 50 ms. A window out of range,
/// or `windows_len` 0 (use `mcsync_publisher_set_schedule_never`), gives `MCSYNC_ERR_RANGE`
/// and leaves the schedule unchanged. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_set_schedule_windows(
    publisher: *const mcsync_publisher,
    windows: *const mcsync_schedule_window,
    windows_len: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        if windows_len == 0 || windows_len > Schedule::MAX_WINDOWS {
            return Err(FfiError::range(format!(
                "{windows_len} schedule windows outside 1..=1440 \
                 (mcsync_publisher_set_schedule_never turns multicast off)"
            )));
        }
        if windows.is_null() {
            return Err(FfiError::null("windows"));
        }
        let list = std::slice::from_raw_parts(windows, windows_len);
        let out = list.iter().map(|w| (w.start_minute, w.end_minute)).collect();
        // Core checks each window (and leaves the schedule as it was if one is out of range).
        p.inner
            .set_schedule(Schedule::Windows(out))
            .map_err(|e| FfiError::range(e.to_string()))
    }
}

/// Takes a snapshot of the subscribers currently registered (a subscriber leaves the list
/// when its subscription closes or its user is revoked), in order of registration id.
///
/// On success `*out_list` receives a new list the caller owns and frees with
/// `mcsync_subscriber_list_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_subscribers(
    publisher: *const mcsync_publisher,
    out_list: *mut *mut mcsync_subscriber_list,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(publisher, "publisher")?;
        let slot = out(out_list, "out_list")?;
        let text = |s: &str| CString::new(s.replace('\0', "")).unwrap_or_default();
        let entries = p
            .inner
            .subscribers()
            .into_iter()
            .map(|r| {
                let strings = [
                    text(&r.user),
                    text(&r.database),
                    text(&r.client),
                    text(&r.peer.to_string()),
                ];
                SubscriberEntry {
                    info: mcsync_subscriber_info {
                        id: r.id,
                        user: strings[0].as_ptr(),
                        database: strings[1].as_ptr(),
                        client: strings[2].as_ptr(),
                        peer: strings[3].as_ptr(),
                        sessions: r.sessions,
                        participant: r.participant,
                    },
                    _strings: strings,
                }
            })
            .collect();
        *slot = into_handle(mcsync_subscriber_list { entries });
        Ok(())
    }
}

/// Writes the number of subscribers in the list to `*count`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_list_count(
    list: *const mcsync_subscriber_list,
    count: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let l = borrow(list, "list")?;
        *out(count, "count")? = l.entries.len();
        Ok(())
    }
}

/// Points `*info` at subscriber number `index` (0-based, below the count) of the list.
/// `MCSYNC_ERR_RANGE` if `index` is past the end. The entry and its strings are borrowed
/// from the list: valid until `mcsync_subscriber_list_free(list)`; do not free or modify
/// them. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_list_entry(
    list: *const mcsync_subscriber_list,
    index: usize,
    info: *mut *const mcsync_subscriber_info,
) -> mcsync_status {
    ffi_panic_boundary! {
        let l = borrow(list, "list")?;
        let info = out(info, "info")?;
        let e = l.entries.get(index).ok_or_else(|| {
            FfiError::range(format!(
                "subscriber index {index} outside 0..{}",
                l.entries.len()
            ))
        })?;
        *info = &e.info;
        Ok(())
    }
}

/// Frees a subscriber list (and the entries and strings borrowed from it). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_list_free(list: *mut mcsync_subscriber_list) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(list)
    }
}

/// Closes the publisher: stops accepting commits, finishes those in progress, multicasts what
/// is queued for at most 2 s (the rest is in the journal, and subscribers fetch it from
/// there), stops the control server and joins every thread. The handle stays valid until
/// `mcsync_publisher_free`; later writes (through its databases and transactions) and
/// `mcsync_publisher_database` fail with `MCSYNC_ERR_CLOSED`, while getters such as
/// `mcsync_publisher_stats` keep working. Closing again is a no-op returning `MCSYNC_OK`.
/// Thread-safe; blocks until the threads have stopped.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_close(
    publisher: *const mcsync_publisher,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow(publisher, "publisher")?.inner.close()?;
        Ok(())
    }
}

/// Closes the publisher if still open, then frees the handle. NULL is a no-op. No other
/// thread may be using the handle; database handles stay valid (see `mcsync_db`). An
/// authenticator's `free_user_data` runs here if this was its last user.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_free(publisher: *mut mcsync_publisher) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(publisher)
    }
}

/// Sets `key` to `value` in a transaction of its own and returns once the journal holds it
/// durably.
///
/// `key` (1..=511 bytes) and `value` (may be NULL when `value_len` is 0) are copied; they
/// are borrowed for the call only. On success, if `version` is not NULL, `*version`
/// receives the database version this put produced.
/// Errors: `MCSYNC_ERR_CONFIG` (empty key), `MCSYNC_ERR_TOO_LARGE` (a key over 511 bytes, or
/// an update over the maximum size), `MCSYNC_ERR_CLOSED`, `MCSYNC_ERR_STORAGE`. Thread-safe; concurrent callers share one journal commit.
#[no_mangle]
pub unsafe extern "C" fn mcsync_db_put(
    db: *const mcsync_db,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let d = borrow(db, "db")?;
        let key = bytes_arg(key, key_len, "key")?;
        let value = bytes_arg(value, value_len, "value")?;
        let v = d.inner.put(key, value)?;
        set_optional(version, v);
        Ok(())
    }
}

/// Deletes `key` in a transaction of its own (a delete of an absent key still produces a
/// version). `key` is borrowed for the call only. On success, if `version` is not NULL,
/// `*version` receives the new version. Errors as `mcsync_db_put`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_db_delete(
    db: *const mcsync_db,
    key: *const u8,
    key_len: usize,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let d = borrow(db, "db")?;
        let key = bytes_arg(key, key_len, "key")?;
        let v = d.inner.delete(key)?;
        set_optional(version, v);
        Ok(())
    }
}

/// Writes the database's latest committed version (0 before the first commit) to
/// `*version`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_db_version(
    db: *const mcsync_db,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let d = borrow(db, "db")?;
        *out(version, "version")? = d.inner.version();
        Ok(())
    }
}

/// Rotates the database's key now (subscribers fetch the new one over the control channel)
/// and, if `epoch` is not NULL, writes the new key epoch to `*epoch`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_db_rotate_key(
    db: *const mcsync_db,
    epoch: *mut u32,
) -> mcsync_status {
    ffi_panic_boundary! {
        let d = borrow(db, "db")?;
        let e = d.inner.rotate_key()?;
        set_optional(epoch, e);
        Ok(())
    }
}

/// Writes the database's current key epoch to `*epoch`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_db_key_epoch(
    db: *const mcsync_db,
    epoch: *mut u32,
) -> mcsync_status {
    ffi_panic_boundary! {
        let d = borrow(db, "db")?;
        *out(epoch, "epoch")? = d.inner.key_epoch();
        Ok(())
    }
}

/// Frees a database handle. NULL is a no-op. The database stays published; other handles
/// and transactions begun from this one are not affected.
#[no_mangle]
pub unsafe extern "C" fn mcsync_db_free(db: *mut mcsync_db) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(db)
    }
}

/// Begins a transaction on `db`: puts and deletes collected by `mcsync_txn_put`,
/// `mcsync_txn_put_with_groups` and `mcsync_txn_delete` are applied atomically, as one
/// version, by `mcsync_txn_commit`.
///
/// On success `*out_txn` receives a new transaction the caller owns; it must be ended by
/// exactly one call of `mcsync_txn_commit` or `mcsync_txn_discard`, which free it.
/// Thread-safe (each transaction is then used by one thread at a time).
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_begin(
    db: *const mcsync_db,
    out_txn: *mut *mut mcsync_txn,
) -> mcsync_status {
    ffi_panic_boundary! {
        let d = borrow(db, "db")?;
        let slot = out(out_txn, "out_txn")?;
        *slot = into_handle(mcsync_txn {
            inner: d.inner.transaction(),
        });
        Ok(())
    }
}

/// Adds a put of `value` at `key` to the transaction. Both are copied (borrowed for the
/// call only); `value` may be NULL when `value_len` is 0. On failure (`MCSYNC_ERR_CONFIG`
/// for an empty key, `MCSYNC_ERR_TOO_LARGE` for a key over 511 bytes or when the
/// transaction would exceed the maximum update size) the transaction is unchanged and still
/// usable.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_put(
    txn: *mut mcsync_txn,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let t = borrow_mut(txn, "txn")?;
        let key = bytes_arg(key, key_len, "key")?;
        let value = bytes_arg(value, value_len, "value")?;
        t.inner.put(key, value)?;
        Ok(())
    }
}

/// Adds a put readable only by subscribers holding one of `groups`: an array of
/// `groups_len` (at most 32) NUL-terminated UTF-8 names, each 1..=255 bytes; NULL when
/// `groups_len` is 0, which means readable by everyone. Everything is copied. Errors and
/// atomicity as `mcsync_txn_put`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_put_with_groups(
    txn: *mut mcsync_txn,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    groups: *const *const c_char,
    groups_len: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let t = borrow_mut(txn, "txn")?;
        let key = bytes_arg(key, key_len, "key")?;
        let value = bytes_arg(value, value_len, "value")?;
        let ptrs = if groups_len == 0 {
            &[][..]
        } else {
            if groups.is_null() {
                return Err(FfiError::null("groups"));
            }
            if groups_len > 32 {
                return Err(FfiError::range(format!("{groups_len} groups exceed 32")));
            }
            std::slice::from_raw_parts(groups, groups_len)
        };
        let names = ptrs
            .iter()
            .map(|p| str_arg(*p, "groups[i]"))
            .collect::<Result<Vec<&str>, FfiError>>()?;
        t.inner.put_with_groups(key, value, &names)?;
        Ok(())
    }
}

/// Adds a delete of `key` (copied) to the transaction. Errors and atomicity as
/// `mcsync_txn_put`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_delete(
    txn: *mut mcsync_txn,
    key: *const u8,
    key_len: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let t = borrow_mut(txn, "txn")?;
        let key = bytes_arg(key, key_len, "key")?;
        t.inner.delete(key)?;
        Ok(())
    }
}

/// Commits the transaction: journals it durably, queues it for multicast and, on success,
/// writes its version to `*version` if `version` is not NULL.
///
/// Ownership: the transaction is freed in every case, success or failure (like LMDB's
/// `mdb_txn_commit`); do not use `txn` afterwards. NULL gives `MCSYNC_ERR_NULL`.
/// Errors: `MCSYNC_ERR_CONFIG` (empty transaction), `MCSYNC_ERR_CLOSED`,
/// `MCSYNC_ERR_STORAGE`. Blocks until durable.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_commit(
    txn: *mut mcsync_txn,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        if txn.is_null() {
            return Err(FfiError::null("txn"));
        }
        let t = Box::from_raw(txn);
        let v = t.inner.commit()?;
        set_optional(version, v);
        Ok(())
    }
}

/// Longest a two-phase update may wait for votes: it holds its database's commits meanwhile.
const MAX_VOTE_TIMEOUT_MS: u64 = 3_600_000;

/// Takes the transaction of a two-phase call (freed on every path) and checks its timeout.
unsafe fn take_two_phase(
    txn: *mut mcsync_txn,
    timeout_ms: u64,
) -> Result<(Box<mcsync_txn>, Duration), FfiError> {
    if txn.is_null() {
        return Err(FfiError::null("txn"));
    }
    let t = Box::from_raw(txn);
    if timeout_ms > MAX_VOTE_TIMEOUT_MS {
        return Err(FfiError::range(format!(
            "two-phase vote timeout {timeout_ms} ms outside 0..={MAX_VOTE_TIMEOUT_MS}"
        )));
    }
    Ok((t, Duration::from_millis(timeout_ms)))
}

/// Commits the transaction in two phases: multicasts it as PREPARE at the next version,
/// waits until every participant of the database (see
/// `mcsync_subscriber_subscribe_participant`) has voted PREPARED, one refused, or
/// `timeout_ms` milliseconds (0..=3600000) passed, then multicasts COMMIT and journals it,
/// or ABORT. With no participant registered it commits at once. On success, if `version`
/// is not NULL, `*version` receives the version.
///
/// On abort it returns `MCSYNC_ERR_REFUSED`, nothing is written, the version is given back,
/// and the last error names who refused, with the reason its vote callback gave, and who
/// did not answer in time, e.g. "refused: two-phase update of database \"ledger\" at
/// version 5 aborted: audit-b (bob) refused: amount over limit".
///
/// Ownership: the transaction is freed in every case, success or failure (as
/// `mcsync_txn_commit`). Errors: `MCSYNC_ERR_REFUSED`, `MCSYNC_ERR_CONFIG` (empty
/// transaction), `MCSYNC_ERR_RANGE` (timeout), `MCSYNC_ERR_CLOSED`, `MCSYNC_ERR_STORAGE`.
/// Blocks until decided and durable; later commits of the database wait meanwhile.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_commit_two_phase(
    txn: *mut mcsync_txn,
    timeout_ms: u64,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let (t, timeout) = take_two_phase(txn, timeout_ms)?;
        let v = t.inner.commit_two_phase(timeout)?;
        set_optional(version, v);
        Ok(())
    }
}

/// The first phase alone: multicasts the transaction as PREPARE at the next version and
/// waits, at most `timeout_ms` milliseconds (0..=3600000), until every participant has
/// voted PREPARED. On success `*out_prepared` receives a new prepared update the caller
/// owns and must end with exactly one of `mcsync_prepared_commit` or
/// `mcsync_prepared_rollback` (see `mcsync_prepared`: later commits of the database wait
/// until then; `mcsync_publisher_close` and `mcsync_publisher_free` roll it back). On a
/// refusal or timeout it is aborted at once and `MCSYNC_ERR_REFUSED` says why, as for
/// `mcsync_txn_commit_two_phase`.
///
/// Ownership: the transaction is freed in every case, success or failure, also when
/// `out_prepared` is NULL (`MCSYNC_ERR_NULL`, nothing sent). Errors as
/// `mcsync_txn_commit_two_phase`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_prepare(
    txn: *mut mcsync_txn,
    timeout_ms: u64,
    out_prepared: *mut *mut mcsync_prepared,
) -> mcsync_status {
    ffi_panic_boundary! {
        let (t, timeout) = take_two_phase(txn, timeout_ms)?;
        let slot = out(out_prepared, "out_prepared")?;
        let prepared = t.inner.prepare(timeout)?;
        *slot = into_handle(mcsync_prepared { inner: prepared });
        Ok(())
    }
}

/// Writes the version the prepared update will have if committed to `*version`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_prepared_version(
    prepared: *const mcsync_prepared,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let p = borrow(prepared, "prepared")?;
        *out(version, "version")? = p.inner.version();
        Ok(())
    }
}

/// Commits the prepared update: journals it durably and multicasts COMMIT (repeated until
/// every participant acknowledges), after which the replicas apply it. On success, if
/// `version` is not NULL, `*version` receives its version.
///
/// Ownership: `prepared` is freed in every case, success or failure; NULL gives
/// `MCSYNC_ERR_NULL`. Errors: `MCSYNC_ERR_STORAGE` (not journaled: the update was aborted),
/// `MCSYNC_ERR_CLOSED`. Blocks until durable.
#[no_mangle]
pub unsafe extern "C" fn mcsync_prepared_commit(
    prepared: *mut mcsync_prepared,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        if prepared.is_null() {
            return Err(FfiError::null("prepared"));
        }
        let p = Box::from_raw(prepared);
        let v = p.inner.commit()?;
        set_optional(version, v);
        Ok(())
    }
}

/// Rolls the prepared update back: multicasts ABORT, the participants discard what they
/// prepared, nothing is written and the version is given back (the next commit takes it).
///
/// Ownership: `prepared` is freed in every case, success or failure; NULL gives
/// `MCSYNC_ERR_NULL`. Errors: `MCSYNC_ERR_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_prepared_rollback(prepared: *mut mcsync_prepared) -> mcsync_status {
    ffi_panic_boundary! {
        if prepared.is_null() {
            return Err(FfiError::null("prepared"));
        }
        let p = Box::from_raw(prepared);
        p.inner.rollback()?;
        Ok(())
    }
}

/// Discards the transaction and frees it; nothing is written or sent. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn mcsync_txn_discard(txn: *mut mcsync_txn) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(txn)
    }
}
