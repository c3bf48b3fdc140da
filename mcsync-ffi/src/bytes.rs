//! Byte buffers mcsync allocates and hands to C (values returned by `get`).
//!
//! The buffer's length sits in a small header just before the bytes C sees, so
//! `mcsync_bytes_free(p)` needs only the pointer. A NUL follows the data (not counted in
//! its length) so text values can be printed as C strings.

/// Bytes before the data: the length (8 bytes) and a magic number (8 bytes). 16 keeps the
/// data as aligned as the allocator made the block.
const PREFIX: usize = 16;
/// Marks a live buffer; a pointer without it is not freed (a cheap guard against freeing
/// something mcsync did not allocate).
const MAGIC: u64 = 0x6d63_7379_6e63_4231; // "mcsyncB1"

/// Copies `data` into a new buffer for C; free it with `mcsync_bytes_free`.
pub(crate) fn bytes_to_c(data: &[u8]) -> *mut u8 {
    let mut v = Vec::with_capacity(PREFIX + data.len() + 1);
    v.extend_from_slice(&(data.len() as u64).to_ne_bytes());
    v.extend_from_slice(&MAGIC.to_ne_bytes());
    v.extend_from_slice(data);
    v.push(0);
    let block: *mut [u8] = Box::into_raw(v.into_boxed_slice());
    // SAFETY: the block holds at least PREFIX bytes.
    unsafe { block.cast::<u8>().add(PREFIX) }
}

/// Hands `text` to C as a NUL-terminated buffer in `*slot` (free it with
/// `mcsync_bytes_free`), and its length without the NUL in `*len` unless `len` is NULL.
///
/// # Safety
/// `slot` and `len` are NULL or valid for writes.
pub(crate) unsafe fn text_out(
    slot: *mut *mut std::os::raw::c_char,
    len: *mut usize,
    text: &str,
) -> Result<(), crate::error::FfiError> {
    let slot = crate::args::out(slot, "text")?;
    if !len.is_null() {
        *len = text.len();
    }
    *slot = bytes_to_c(text.as_bytes()).cast();
    Ok(())
}

/// Frees a buffer returned by `mcsync_subscription_get`.
///
/// Ownership: `value` must come from mcsync (never from malloc) and be freed exactly
/// once; NULL is a no-op. The length is not needed. Thread-safe (any thread may free it).
#[no_mangle]
pub unsafe extern "C" fn mcsync_bytes_free(value: *mut u8) {
    ffi_panic_boundary! { on_panic = ();
        if value.is_null() {
            return;
        }
        // SAFETY: `value` came from `bytes_to_c`, so PREFIX bytes precede it.
        let base = value.sub(PREFIX);
        let mut word = [0u8; 8];
        std::ptr::copy_nonoverlapping(base, word.as_mut_ptr(), 8);
        let len = u64::from_ne_bytes(word) as usize;
        std::ptr::copy_nonoverlapping(base.add(8), word.as_mut_ptr(), 8);
        if u64::from_ne_bytes(word) != MAGIC {
            crate::error::set_last_error(
                "mcsync_bytes_free: pointer was not allocated by mcsync (not freed)".into(),
            );
            return;
        }
        std::ptr::write_bytes(base.add(8), 0, 8);
        let block = std::ptr::slice_from_raw_parts_mut(base, PREFIX + len + 1);
        drop(Box::from_raw(block));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_trailing_nul() {
        for data in [&b""[..], b"x", &[7u8; 1000]] {
            let p = bytes_to_c(data);
            let got = unsafe { std::slice::from_raw_parts(p, data.len() + 1) };
            assert_eq!(&got[..data.len()], data);
            assert_eq!(got[data.len()], 0);
            unsafe { mcsync_bytes_free(p) };
        }
        unsafe { mcsync_bytes_free(std::ptr::null_mut()) };
    }
}
