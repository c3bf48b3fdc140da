//! Library-wide functions.

use std::os::raw::c_char;

/// The library version, e.g. "0.1.0": a static NUL-terminated string; never free it.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn mcsync_version() -> *const c_char {
    ffi_panic_boundary! { on_panic = std::ptr::null();
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    }
}
