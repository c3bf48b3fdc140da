//! Counter snapshots as (name, value) pairs, so new counters appear in C without an ABI
//! change.

use crate::args::{borrow, free_handle, out, str_arg};
use crate::error::{mcsync_status, FfiError};
use std::ffi::CString;
use std::os::raw::c_char;

/// A snapshot of counters: `(name, value)` pairs in a fixed order. Created by
/// `mcsync_publisher_stats` or `mcsync_subscription_stats`, freed by `mcsync_stats_free`.
/// Immutable, so thread-safe. Counter names are documented in docs/C_API.md; code should
/// look them up by name (`mcsync_stats_get`) since new ones may be added.
pub struct mcsync_stats {
    entries: Vec<(CString, u64)>,
}

impl mcsync_stats {
    pub(crate) fn from_fields(fields: Vec<(&'static str, u64)>) -> mcsync_stats {
        let entries = fields
            .into_iter()
            .map(|(name, value)| {
                // Counter names are Rust identifiers: never an interior NUL.
                let name = CString::new(name).unwrap_or_default();
                (name, value)
            })
            .collect();
        mcsync_stats { entries }
    }
}

/// Writes the number of counters in the snapshot to `*count`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_stats_count(
    stats: *const mcsync_stats,
    count: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(stats, "stats")?;
        *out(count, "count")? = s.entries.len();
        Ok(())
    }
}

/// Reads counter number `index` (0-based, below the count): its name into `*name` and its
/// value into `*value`. `MCSYNC_ERR_RANGE` if `index` is past the end.
///
/// The name is borrowed from the snapshot: a NUL-terminated string valid until
/// `mcsync_stats_free(stats)`; do not free it. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_stats_entry(
    stats: *const mcsync_stats,
    index: usize,
    name: *mut *const c_char,
    value: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(stats, "stats")?;
        let name = out(name, "name")?;
        let value = out(value, "value")?;
        let (n, v) = s.entries.get(index).ok_or_else(|| {
            FfiError::range(format!(
                "statistics index {index} outside 0..{}",
                s.entries.len()
            ))
        })?;
        *name = n.as_ptr();
        *value = *v;
        Ok(())
    }
}

/// Looks a counter up by name (e.g. "updates_applied") and writes its value to `*value`.
/// `MCSYNC_ERR_NOT_FOUND` if the snapshot has no such counter. `name` is borrowed for the
/// call only. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_stats_get(
    stats: *const mcsync_stats,
    name: *const c_char,
    value: *mut u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let s = borrow(stats, "stats")?;
        let wanted = str_arg(name, "name")?;
        let value = out(value, "value")?;
        let found = s
            .entries
            .iter()
            .find(|(n, _)| n.as_bytes() == wanted.as_bytes())
            .ok_or_else(|| {
                FfiError::new(
                    mcsync_status::MCSYNC_ERR_NOT_FOUND,
                    format!("no statistics counter named {wanted:?}"),
                )
            })?;
        *value = found.1;
        Ok(())
    }
}

/// Frees a statistics snapshot (and the names borrowed from it). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn mcsync_stats_free(stats: *mut mcsync_stats) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(stats)
    }
}
