//! The status enum every fallible export returns, its static texts, and the thread-local
//! detailed message of the last failure.

use mcsync_core::ErrorKind;
use std::cell::RefCell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

/// Result of every fallible mcsync call. The numbers are stable across releases and are
/// never reused; new codes are only ever added. `MCSYNC_OK` (0) is success.
///
/// Codes 1..=99 mirror the engine's error kinds; codes from 100 on are raised by the C
/// layer itself (bad arguments, panics, buffers). `mcsync_status_str()` gives a static
/// text for each; `mcsync_last_error()` gives the detailed message of the last failure on
/// the calling thread.
#[repr(C)]
#[allow(non_camel_case_types, clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum mcsync_status {
    /// Success.
    MCSYNC_OK = 0,
    /// Invalid configuration or argument (bad key, bad address, bad database name,
    /// missing required setting, empty transaction, ...).
    MCSYNC_ERR_CONFIG = 1,
    /// An operating-system I/O failure (socket, file, connection to the publisher).
    MCSYNC_ERR_IO = 2,
    /// The LMDB store failed or holds data it cannot read.
    MCSYNC_ERR_STORAGE = 3,
    /// A peer violated the protocol.
    MCSYNC_ERR_PROTOCOL = 4,
    /// Authentication or authorization failed.
    MCSYNC_ERR_AUTH = 5,
    /// The object (publisher, subscriber, subscription) is closed.
    MCSYNC_ERR_CLOSED = 6,
    /// A deadline passed (for example `mcsync_subscription_wait_for_version`).
    MCSYNC_ERR_TIMEOUT = 7,
    /// A key, value or transaction exceeds a configured maximum.
    MCSYNC_ERR_TOO_LARGE = 8,
    /// The publisher refused the request (unknown database, versions that do not exist),
    /// or a two-phase update was aborted (a participant refused, or did not vote in time;
    /// the message names them).
    MCSYNC_ERR_REFUSED = 9,
    /// A required pointer argument was NULL.
    MCSYNC_ERR_NULL = 100,
    /// A string argument was not valid UTF-8.
    MCSYNC_ERR_UTF8 = 101,
    /// A numeric argument was out of its allowed range.
    MCSYNC_ERR_RANGE = 102,
    /// mcsync panicked (a bug). The call did not complete; the message says where.
    MCSYNC_ERR_PANIC = 103,
    /// The caller's buffer is too small; the length out-parameter holds the length needed.
    MCSYNC_ERR_BUFFER_TOO_SMALL = 104,
    /// The key (or statistics counter name) does not exist.
    MCSYNC_ERR_NOT_FOUND = 105,
}

use mcsync_status::*;

impl mcsync_status {
    /// Every status, for tests and for `mcsync_status_str`.
    /// cbindgen:ignore
    pub(crate) const ALL: [mcsync_status; 16] = [
        MCSYNC_OK,
        MCSYNC_ERR_CONFIG,
        MCSYNC_ERR_IO,
        MCSYNC_ERR_STORAGE,
        MCSYNC_ERR_PROTOCOL,
        MCSYNC_ERR_AUTH,
        MCSYNC_ERR_CLOSED,
        MCSYNC_ERR_TIMEOUT,
        MCSYNC_ERR_TOO_LARGE,
        MCSYNC_ERR_REFUSED,
        MCSYNC_ERR_NULL,
        MCSYNC_ERR_UTF8,
        MCSYNC_ERR_RANGE,
        MCSYNC_ERR_PANIC,
        MCSYNC_ERR_BUFFER_TOO_SMALL,
        MCSYNC_ERR_NOT_FOUND,
    ];

    /// The engine's error kinds, mapped in this one place.
    pub fn from_kind(kind: ErrorKind) -> mcsync_status {
        match kind {
            ErrorKind::Config => MCSYNC_ERR_CONFIG,
            ErrorKind::Io => MCSYNC_ERR_IO,
            ErrorKind::Storage => MCSYNC_ERR_STORAGE,
            ErrorKind::Protocol => MCSYNC_ERR_PROTOCOL,
            ErrorKind::Auth => MCSYNC_ERR_AUTH,
            ErrorKind::Closed => MCSYNC_ERR_CLOSED,
            ErrorKind::Timeout => MCSYNC_ERR_TIMEOUT,
            ErrorKind::TooLarge => MCSYNC_ERR_TOO_LARGE,
            ErrorKind::Refused => MCSYNC_ERR_REFUSED,
        }
    }

    /// Static text of this status.
    fn text(self) -> &'static CStr {
        match self {
            MCSYNC_OK => c"ok",
            MCSYNC_ERR_CONFIG => c"invalid configuration or argument",
            MCSYNC_ERR_IO => c"i/o error",
            MCSYNC_ERR_STORAGE => c"storage error",
            MCSYNC_ERR_PROTOCOL => c"protocol error",
            MCSYNC_ERR_AUTH => c"authentication or authorization failed",
            MCSYNC_ERR_CLOSED => c"closed",
            MCSYNC_ERR_TIMEOUT => c"timed out",
            MCSYNC_ERR_TOO_LARGE => c"too large",
            MCSYNC_ERR_REFUSED => c"refused by the publisher or a two-phase participant",
            MCSYNC_ERR_NULL => c"NULL pointer argument",
            MCSYNC_ERR_UTF8 => c"string is not valid UTF-8",
            MCSYNC_ERR_RANGE => c"argument out of range",
            MCSYNC_ERR_PANIC => c"internal panic (a bug in mcsync)",
            MCSYNC_ERR_BUFFER_TOO_SMALL => c"buffer too small",
            MCSYNC_ERR_NOT_FOUND => c"not found",
        }
    }
}

/// A failure inside an export: the status to return and the message to keep.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: mcsync_status,
    pub message: String,
}

impl FfiError {
    pub fn new(status: mcsync_status, message: impl Into<String>) -> FfiError {
        debug_assert_ne!(status, MCSYNC_OK);
        FfiError {
            status,
            message: message.into(),
        }
    }

    /// A required pointer argument `what` was NULL.
    pub fn null(what: &str) -> FfiError {
        FfiError::new(MCSYNC_ERR_NULL, format!("argument `{what}` is NULL"))
    }

    pub fn range(message: impl Into<String>) -> FfiError {
        FfiError::new(MCSYNC_ERR_RANGE, message)
    }

    pub fn config(message: impl Into<String>) -> FfiError {
        FfiError::new(MCSYNC_ERR_CONFIG, message)
    }
}

/// A setting outside the range core accepts: `MCSYNC_ERR_RANGE`, with core's message.
impl From<mcsync_core::config::OutOfRange> for FfiError {
    fn from(e: mcsync_core::config::OutOfRange) -> FfiError {
        FfiError::range(e.message())
    }
}

impl From<mcsync_core::Error> for FfiError {
    fn from(e: mcsync_core::Error) -> FfiError {
        FfiError::new(mcsync_status::from_kind(e.kind()), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Replaces this thread's last error message.
pub(crate) fn set_last_error(message: String) {
    // An interior NUL would cut the C string short; show it instead.
    let message = if message.contains('\0') {
        message.replace('\0', "\\0")
    } else {
        message
    };
    // `try_with`: during thread teardown the slot may be gone; losing the text is fine.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = message);
}

#[cfg(test)]
pub(crate) fn last_error_string() -> String {
    LAST_ERROR.with(|slot| slot.borrow().clone())
}

/// Turns an export body's result into its status, keeping the message of a failure.
pub(crate) fn status_of(result: Result<(), FfiError>) -> mcsync_status {
    match result {
        Ok(()) => MCSYNC_OK,
        Err(e) => {
            set_last_error(e.message);
            e.status
        }
    }
}

/// A static, NUL-terminated English text for a status code.
///
/// Ownership: the returned string is static; never free or modify it. Any `int` is
/// accepted: an unknown code gives "unknown status code". Never returns NULL.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn mcsync_status_str(code: c_int) -> *const c_char {
    ffi_panic_boundary! { on_panic = c"unknown status code".as_ptr();
        mcsync_status::ALL
            .iter()
            .find(|s| **s as c_int == code)
            .map_or(c"unknown status code", |s| s.text())
            .as_ptr()
    }
}

/// Copies the detailed message of the last failed mcsync call on the calling thread into
/// `buf` (NUL-terminated), e.g. "config: multicast group 10.0.0.1 is not a multicast address".
///
/// Each thread has its own last error. It is set by every call that returns a status other
/// than `MCSYNC_OK` and is kept (not cleared) by calls that succeed; this call itself never
/// changes it. With no failure yet on this thread the message is empty.
///
/// `buf` must point to `len` writable bytes. If the message (plus its NUL) does not fit it
/// is truncated at a character boundary, still NUL-terminated, and
/// `MCSYNC_ERR_BUFFER_TOO_SMALL` is returned: unlike the other calls, this one writes its
/// out-parameters in that case too, because part of a message beats none. 512 bytes are
/// enough for nearly every message. `written` (may be NULL) receives the number of bytes
/// copied, not counting the NUL. Returns `MCSYNC_ERR_NULL` if `buf` is NULL and
/// `MCSYNC_ERR_BUFFER_TOO_SMALL` without writing anything if `len` is 0.
/// Thread-safe (it reads the calling thread's own message).
#[no_mangle]
pub unsafe extern "C" fn mcsync_last_error(
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> mcsync_status {
    ffi_panic_boundary! { on_panic = MCSYNC_ERR_PANIC;
        if buf.is_null() {
            return MCSYNC_ERR_NULL;
        }
        if len == 0 {
            return MCSYNC_ERR_BUFFER_TOO_SMALL;
        }
        let message = LAST_ERROR
            .try_with(|slot| slot.borrow().clone())
            .unwrap_or_default();
        let mut n = message.len().min(len - 1);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: the caller guarantees `buf` holds `len` bytes and n < len.
        std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
        if !written.is_null() {
            *written = n;
        }
        if n < message.len() {
            MCSYNC_ERR_BUFFER_TOO_SMALL
        } else {
            MCSYNC_OK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable() {
        let expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 101, 102, 103, 104, 105];
        let got: Vec<i32> = mcsync_status::ALL.iter().map(|s| *s as i32).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn every_status_has_a_distinct_text() {
        let mut seen = std::collections::HashSet::new();
        for s in mcsync_status::ALL {
            let t = unsafe { CStr::from_ptr(mcsync_status_str(s as c_int)) };
            assert!(seen.insert(t.to_str().unwrap().to_owned()), "{s:?}");
        }
        let unknown = unsafe { CStr::from_ptr(mcsync_status_str(-7)) };
        assert_eq!(unknown.to_str().unwrap(), "unknown status code");
    }

    #[test]
    fn every_kind_maps_to_its_own_code() {
        use ErrorKind::*;
        let kinds = [
            Config, Io, Storage, Protocol, Auth, Closed, Timeout, TooLarge, Refused,
        ];
        let codes: Vec<i32> = kinds
            .iter()
            .map(|k| mcsync_status::from_kind(*k) as i32)
            .collect();
        assert_eq!(codes, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn last_error_truncates_at_a_char_boundary() {
        set_last_error("héllo wörld".into());
        let mut buf = [0x55 as c_char; 4];
        let mut written = 99;
        let st = unsafe { mcsync_last_error(buf.as_mut_ptr(), buf.len(), &mut written) };
        assert_eq!(st, MCSYNC_ERR_BUFFER_TOO_SMALL);
        // "h" + 2-byte "é" = 3 bytes, then the NUL.
        assert_eq!(written, 3);
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "hé");
        let mut big = [0 as c_char; 64];
        let st = unsafe { mcsync_last_error(big.as_mut_ptr(), big.len(), std::ptr::null_mut()) };
        assert_eq!(st, MCSYNC_OK);
        let s = unsafe { CStr::from_ptr(big.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "héllo wörld");
        assert_eq!(
            unsafe { mcsync_last_error(std::ptr::null_mut(), 8, std::ptr::null_mut()) },
            MCSYNC_ERR_NULL
        );
        // Asking does not change it.
        assert_eq!(last_error_string(), "héllo wörld");
    }
}
