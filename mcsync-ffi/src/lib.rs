//! C ABI over mcsync-core: `libmcsync.so` / `libmcsync.a` and the generated
//! `include/mcsync.h`.
//!
//! Conventions every export follows (docs/C_API.md tells them to C programmers):
//! - names are `mcsync_<object>_<verb>`; handles are opaque; every `_new`/`_open`/`_begin`
//!   has exactly one function that frees what it made;
//! - every fallible function returns `mcsync_status` and writes its out-parameters only on
//!   success (the few documented exceptions concern buffer lengths);
//! - every body runs inside `ffi_panic_boundary!`, so no panic unwinds into C;
//! - NULL, invalid UTF-8 and out-of-range arguments are error codes, never crashes.
//!
//! The doc comments on exported items become the header's documentation; the header is
//! regenerated with `MCSYNC_REGEN_HEADER=1 cargo test -p mcsync-ffi --test header`.

// C naming (`mcsync_publisher`, `MCSYNC_OK`) is the point of this crate.
#![allow(non_camel_case_types)]
// Every export is `unsafe extern "C"`: C callers hand us raw pointers. The safety contract
// of each is written for C programmers in its doc comment (which pointers may be NULL,
// what they must point to, how long), rather than in a Rust `# Safety` section.
#![allow(clippy::missing_safety_doc)]

// Declaration order is the order of the header's sections, hence one group per module
// (rustfmt would sort a block of `mod` lines).
#[macro_use]
mod panic;

mod args;

/// Status codes and the last error.
mod error;

/// Configuration objects.
mod config;

/// Unicast-only subscribers.
mod unicast;

/// Publisher, database, transaction.
mod publisher;

/// Host authenticator callback, grants, and the users file.
mod auth;

/// Subscriber, subscription, iterator, callbacks.
mod subscriber;

/// Resync and verification reports.
mod resync;

/// Relays.
mod relay;

/// Counter snapshots.
mod stats;

/// Buffers handed to C.
mod bytes;

/// Library version.
mod library;

/// Log records to the host.
mod logging;

pub use auth::*;
pub use bytes::mcsync_bytes_free;
pub use config::*;
pub use error::{mcsync_last_error, mcsync_status, mcsync_status_str};
pub use library::mcsync_version;
pub use logging::*;
pub use publisher::*;
pub use relay::*;
pub use resync::*;
pub use stats::*;
pub use subscriber::*;
pub use unicast::*;
