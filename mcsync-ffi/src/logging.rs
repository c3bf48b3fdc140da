//! Log records to the host: mcsync's warnings (repair failures, storage errors,
//! re-registrations) reach a C callback instead of nowhere.

use crate::error::{mcsync_status, FfiError};
use mcsync_core::sync::RwLocked;
use std::cell::Cell;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Severity of a log record (`MCSYNC_LOG_ERROR` is the most severe).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum mcsync_log_level {
    /// Something failed (a storage error, a subscription stopped).
    MCSYNC_LOG_ERROR = 1,
    /// Something went wrong and was handled (a repair failed and is retried, a
    /// re-registration, a refused login).
    MCSYNC_LOG_WARN = 2,
    /// Life-cycle events (publisher started, key rotated, resync done).
    MCSYNC_LOG_INFO = 3,
    /// Details for debugging.
    MCSYNC_LOG_DEBUG = 4,
    /// Very verbose details.
    MCSYNC_LOG_TRACE = 5,
}

/// Receives one log record. `target` is where it comes from (e.g. `"mcsync::subscriber"`),
/// `message` the text; both are NUL-terminated and valid only during the call. Called on
/// mcsync's own threads, possibly several at once: it must be thread-safe and must not
/// call back into mcsync (such calls' own records are dropped rather than recursing).
pub type mcsync_log_callback = Option<
    unsafe extern "C" fn(
        level: mcsync_log_level,
        target: *const c_char,
        message: *const c_char,
        user_data: *mut c_void,
    ),
>;

struct Sink {
    callback: unsafe extern "C" fn(mcsync_log_level, *const c_char, *const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the host promises (see `mcsync_set_log_callback`) that the callback and its
// user_data may be used from any thread.
unsafe impl Send for Sink {}
unsafe impl Sync for Sink {}

struct HostLogger {
    sink: RwLock<Option<Sink>>,
}

static LOGGER: HostLogger = HostLogger {
    sink: RwLock::new(None),
};
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread is inside the host's callback.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn level_of(l: log::Level) -> mcsync_log_level {
    match l {
        log::Level::Error => mcsync_log_level::MCSYNC_LOG_ERROR,
        log::Level::Warn => mcsync_log_level::MCSYNC_LOG_WARN,
        log::Level::Info => mcsync_log_level::MCSYNC_LOG_INFO,
        log::Level::Debug => mcsync_log_level::MCSYNC_LOG_DEBUG,
        log::Level::Trace => mcsync_log_level::MCSYNC_LOG_TRACE,
    }
}

/// Interior NULs would cut the C string short; they become spaces.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) || IN_CALLBACK.with(Cell::get) {
            return;
        }
        let sink = self.sink.read_locked();
        let Some(s) = sink.as_ref() else { return };
        let target = c_string(record.target());
        let message = c_string(&record.args().to_string());
        IN_CALLBACK.with(|c| c.set(true));
        // A panic cannot come from C; the guard is for our own code around the call.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the host gave a valid function pointer; both strings live until it
            // returns.
            unsafe {
                (s.callback)(
                    level_of(record.level()),
                    target.as_ptr(),
                    message.as_ptr(),
                    s.user_data,
                )
            }
        }));
        IN_CALLBACK.with(|c| c.set(false));
    }

    fn flush(&self) {}
}

/// Sends mcsync's log records at `max_level` (an `mcsync_log_level`) and more severe to
/// `callback` (NULL: stop
/// sending; records are then dropped, as before the first call). Records come from every
/// mcsync thread of the process (all publishers and subscribers). `user_data` is passed to
/// each call; it and the callback must stay valid until the callback is replaced or the
/// process ends, and both must be safe to use from any thread.
///
/// Errors: `MCSYNC_ERR_RANGE` for a level outside 1..=5; `MCSYNC_ERR_CONFIG` when the
/// process already has another Rust logger (a Rust host that installed its own: use that
/// one). Thread-safe; may be called again at any time to change the callback or level.
#[no_mangle]
pub unsafe extern "C" fn mcsync_set_log_callback(
    callback: mcsync_log_callback,
    user_data: *mut c_void,
    max_level: c_int,
) -> mcsync_status {
    ffi_panic_boundary! {
        let filter = match max_level {
            1 => log::LevelFilter::Error,
            2 => log::LevelFilter::Warn,
            3 => log::LevelFilter::Info,
            4 => log::LevelFilter::Debug,
            5 => log::LevelFilter::Trace,
            n => {
                return Err(FfiError::new(
                    mcsync_status::MCSYNC_ERR_RANGE,
                    format!("log level {n} outside 1 (error) ..= 5 (trace)"),
                ))
            }
        };
        if !INSTALLED.swap(true, Ordering::SeqCst) && log::set_logger(&LOGGER).is_err() {
            INSTALLED.store(false, Ordering::SeqCst);
            return Err(FfiError::new(
                mcsync_status::MCSYNC_ERR_CONFIG,
                "another logger is installed in this process; mcsync logs through it",
            ));
        }
        *LOGGER.sink.write_locked() = callback.map(|callback| Sink {
            callback,
            user_data,
        });
        log::set_max_level(if callback.is_some() {
            filter
        } else {
            log::LevelFilter::Off
        });
        Ok(())
    }
}
