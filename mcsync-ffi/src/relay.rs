//! Relay handles: a replica that re-publishes databases of an upstream publisher.

use crate::args::{borrow, free_handle, into_handle, out, set_optional, str_arg};
use crate::config::{mcsync_publisher_config, mcsync_subscriber_config};
use crate::error::{mcsync_status, FfiError};
use crate::publisher::write_c_string;
use crate::stats::mcsync_stats;
use mcsync_core::{Relay, RelayConfig};
use std::os::raw::c_char;

/// A relay: subscribes to databases of an upstream publisher and re-publishes them, same
/// versions, content and timestamps, from a publisher of its own (journal, control server,
/// TLS identity, users, keys). Downstream subscribers are ordinary subscribers
/// (`mcsync_subscriber_open` with the relay's control address and fingerprint). Opened by
/// `mcsync_relay_open`, freed by `mcsync_relay_free`. Thread-safe.
pub struct mcsync_relay {
    inner: Relay,
}

/// Opens a relay of the `n` databases named in `databases`: the downstream publisher as
/// `downstream` configures it (its own data directory, control address, multicast groups,
/// identity, users, durability), and the upstream subscriber as `upstream` configures it
/// (a different data directory). Each database is subscribed upstream exactly after the
/// version the relay's own journal holds, so a relay restarted after a crash resumes where
/// its journal ends. An upstream not reachable yet is retried in the background.
///
/// `upstream`, `downstream` and the strings of `databases` are only read during the call;
/// the caller still owns them. On success `*out` receives a new handle the caller owns:
/// close it with `mcsync_relay_close` (optional) and free it with `mcsync_relay_free`.
/// Errors: `MCSYNC_ERR_NULL`, `MCSYNC_ERR_UTF8`, `MCSYNC_ERR_CONFIG` (no database, a bad
/// name, both data directories the same, missing settings), `MCSYNC_ERR_AUTH` (the upstream
/// refused the relay's credentials), `MCSYNC_ERR_IO`, `MCSYNC_ERR_STORAGE`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_open(
    upstream: *const mcsync_subscriber_config,
    downstream: *const mcsync_publisher_config,
    databases: *const *const c_char,
    n: usize,
    out_relay: *mut *mut mcsync_relay,
) -> mcsync_status {
    ffi_panic_boundary! {
        let upstream = borrow(upstream, "upstream")?.build()?;
        let downstream = borrow(downstream, "downstream")?.build()?;
        let slot = out(out_relay, "out_relay")?;
        if n > 0 && databases.is_null() {
            return Err(FfiError::null("databases"));
        }
        let mut names = Vec::with_capacity(n);
        for i in 0..n {
            names.push(str_arg(*databases.add(i), "databases[i]")?.to_owned());
        }
        let relay = Relay::open(RelayConfig { upstream, downstream, databases: names })?;
        *slot = into_handle(mcsync_relay { inner: relay });
        Ok(())
    }
}

/// Writes the SHA-256 fingerprint of the relay's own TLS certificate (64 hex digits and a
/// NUL; 65 bytes suffice), for downstream subscribers to pin. `MCSYNC_ERR_NOT_FOUND` without
/// TLS. Buffer rules as `mcsync_publisher_control_addr`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_fingerprint(
    relay: *const mcsync_relay,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let r = borrow(relay, "relay")?;
        let written = out(written, "written")?;
        let fp = r.inner.fingerprint().ok_or_else(|| {
            FfiError::new(
                mcsync_status::MCSYNC_ERR_NOT_FOUND,
                "the relay runs without TLS (insecure loopback): no fingerprint",
            )
        })?;
        write_c_string(fp, buf, len, written, "fingerprint")
    }
}

/// Writes the control address downstream subscribers connect to, "ip:port" and a NUL (64
/// bytes suffice). Buffer rules as `mcsync_publisher_control_addr`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_control_addr(
    relay: *const mcsync_relay,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let r = borrow(relay, "relay")?;
        let written = out(written, "written")?;
        write_c_string(&r.inner.control_addr().to_string(), buf, len, written, "control address")
    }
}

/// Writes the version database `name` is relayed up to (journaled by the relay) to
/// `*version`. `MCSYNC_ERR_CLOSED` after `mcsync_relay_close`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_version(
    relay: *const mcsync_relay,
    name: *const c_char,
    version: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let r = borrow(relay, "relay")?;
        let name = str_arg(name, "name")?;
        let slot = out(version, "version")?;
        *slot = r.inner.version(name)?;
        Ok(())
    }
}

/// Writes the relay's own key epoch of database `name` to `*epoch` (upstream keys never
/// reach downstream). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_key_epoch(
    relay: *const mcsync_relay,
    name: *const c_char,
    epoch: *mut u32,
) -> mcsync_status {
    ffi_panic_boundary! {
        let r = borrow(relay, "relay")?;
        let name = str_arg(name, "name")?;
        let slot = out(epoch, "epoch")?;
        *slot = r.inner.key_epoch(name)?;
        Ok(())
    }
}

/// Rotates the relay's key of database `name` and, if `epoch` is not NULL, writes the new
/// epoch to `*epoch`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_rotate_key(
    relay: *const mcsync_relay,
    name: *const c_char,
    epoch: *mut u32,
) -> mcsync_status {
    ffi_panic_boundary! {
        let r = borrow(relay, "relay")?;
        let e = r.inner.rotate_key(str_arg(name, "name")?)?;
        set_optional(epoch, e);
        Ok(())
    }
}

/// Cuts downstream `user` off (as `mcsync_publisher_revoke` on the relay's own publisher).
/// `user` is borrowed for the call only. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_revoke(
    relay: *const mcsync_relay,
    user: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow(relay, "relay")?.inner.revoke(str_arg(user, "user")?)?;
        Ok(())
    }
}

/// Takes a snapshot of the relay's own counters (`imported`, `import_errors`, `resets`,
/// `resubscribes`). On success `*out_stats` receives a new object the caller frees with
/// `mcsync_stats_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_stats(
    relay: *const mcsync_relay,
    out_stats: *mut *mut mcsync_stats,
) -> mcsync_status {
    ffi_panic_boundary! {
        let r = borrow(relay, "relay")?;
        let slot = out(out_stats, "out_stats")?;
        *slot = into_handle(mcsync_stats::from_fields(r.inner.stats().fields()));
        Ok(())
    }
}

/// Closes the relay: its upstream subscriptions stop, then its publisher closes (what it
/// journaled stays; a relay opened again on the same directories resumes after it). Later
/// calls fail with `MCSYNC_ERR_CLOSED`; closing again is a no-op. Thread-safe; blocks until
/// its threads have stopped.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_close(relay: *const mcsync_relay) -> mcsync_status {
    ffi_panic_boundary! {
        borrow(relay, "relay")?.inner.close()?;
        Ok(())
    }
}

/// Closes the relay if still open, then frees the handle. NULL is a no-op. No other thread
/// may be using the handle.
#[no_mangle]
pub unsafe extern "C" fn mcsync_relay_free(relay: *mut mcsync_relay) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(relay)
    }
}
