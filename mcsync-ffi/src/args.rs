//! Checked conversion of C arguments: NULL pointers, strings and byte ranges become
//! `FfiError`s instead of undefined behaviour, and handles move in and out of boxes.

use crate::error::{mcsync_status, FfiError};
use std::ffi::CStr;
use std::os::raw::c_char;

/// Borrows a handle; NULL is `MCSYNC_ERR_NULL` naming the argument.
///
/// # Safety
/// `p` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn borrow<'a, T>(p: *const T, what: &str) -> Result<&'a T, FfiError> {
    p.as_ref().ok_or_else(|| FfiError::null(what))
}

/// Borrows a handle mutably; NULL is `MCSYNC_ERR_NULL`.
///
/// # Safety
/// `p` is NULL or points to a live `T` not otherwise borrowed for `'a`.
pub(crate) unsafe fn borrow_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    p.as_mut().ok_or_else(|| FfiError::null(what))
}

/// Checks a required out-parameter before any work is done, so a call that fails because
/// of it has no side effect.
///
/// # Safety
/// `p` is NULL or valid for writes of `T` for `'a`.
pub(crate) unsafe fn out<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    p.as_mut().ok_or_else(|| FfiError::null(what))
}

/// Writes `value` to an optional out parameter (nothing when `p` is NULL).
///
/// # Safety
/// `p` is NULL or valid for writes of `T`.
pub(crate) unsafe fn set_optional<T>(p: *mut T, value: T) {
    if let Some(slot) = p.as_mut() {
        *slot = value;
    }
}

/// Borrows a NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, FfiError> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        FfiError::new(
            mcsync_status::MCSYNC_ERR_UTF8,
            format!(
                "argument `{what}` is not valid UTF-8 (byte {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Borrows `len` bytes at `p`; NULL is allowed only when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that live for `'a`.
pub(crate) unsafe fn bytes_arg<'a>(
    p: *const u8,
    len: usize,
    what: &str,
) -> Result<&'a [u8], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::range(format!(
            "length of `{what}` ({len}) exceeds isize::MAX"
        )));
    }
    Ok(std::slice::from_raw_parts(p, len))
}

/// Moves a value into a heap handle owned by C.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes back and drops a handle from [`into_handle`]; NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from `into_handle::<T>` and was not freed before.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        drop(Box::from_raw(p));
    }
}
