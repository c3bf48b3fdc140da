//! The panic boundary every exported function body runs inside.
//!
//! Unwinding out of an `extern "C"` function is never acceptable: the C caller cannot catch
//! it, and since Rust 1.81 it aborts the whole host process. So each exported body runs in
//! [`ffi_panic_boundary!`], which turns a panic into `MCSYNC_ERR_PANIC` (or into the
//! function's stated fallback value) and keeps the panic message as the thread's last error.
//! `tests/panic_boundary.rs` proves that no export lacks it.

use std::any::Any;

/// Runs an exported function's body, catching any panic.
///
/// Two forms:
///
/// - `ffi_panic_boundary! { body }`: the body evaluates to `Result<(), FfiError>` (so `?`
///   works inside it) and the function returns `mcsync_status`. An `Err` is recorded as
///   the thread's last error and its status is returned; a panic is recorded and becomes
///   `MCSYNC_ERR_PANIC`.
/// - `ffi_panic_boundary! { on_panic = FALLBACK; body }`: the body evaluates to the
///   function's return value directly (used by `_free` functions, static-string getters
///   and `mcsync_last_error`, which must not overwrite the last error). A panic is
///   recorded and `FALLBACK` is returned.
macro_rules! ffi_panic_boundary {
    (on_panic = $fallback:expr; $($body:tt)*) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(value) => value,
            Err(payload) => {
                $crate::panic::record_panic(&*payload);
                $fallback
            }
        }
    };
    ($($body:tt)*) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> ::std::result::Result<(), $crate::error::FfiError> { $($body)* },
        )) {
            Ok(result) => $crate::error::status_of(result),
            Err(payload) => {
                $crate::panic::record_panic(&*payload);
                $crate::error::mcsync_status::MCSYNC_ERR_PANIC
            }
        }
    };
}

/// Keeps a caught panic's message as this thread's last error.
pub(crate) fn record_panic(payload: &(dyn Any + Send)) {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    };
    crate::error::set_last_error(format!(
        "panic inside mcsync (a bug; please report): {text}"
    ));
}

#[cfg(test)]
mod tests {
    use crate::error::{mcsync_status, FfiError};

    fn panics_with_status() -> mcsync_status {
        ffi_panic_boundary! {
            let v: Vec<u8> = Vec::new();
            if v.is_empty() {
                panic!("boom {}", 42);
            }
            Ok(())
        }
    }

    fn fails() -> mcsync_status {
        ffi_panic_boundary! {
            Err(FfiError::range("value 7 outside 1..=5"))
        }
    }

    fn panics_with_fallback() -> i32 {
        ffi_panic_boundary! { on_panic = -1;
            if std::hint::black_box(true) {
                panic!("static message");
            }
            5
        }
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        assert_eq!(panics_with_status(), mcsync_status::MCSYNC_ERR_PANIC);
        assert!(crate::error::last_error_string().contains("boom 42"));
        assert_eq!(panics_with_fallback(), -1);
        assert!(crate::error::last_error_string().contains("static message"));
    }

    #[test]
    fn an_error_becomes_its_status_and_message() {
        assert_eq!(fails(), mcsync_status::MCSYNC_ERR_RANGE);
        assert!(crate::error::last_error_string().contains("outside 1..=5"));
    }
}
