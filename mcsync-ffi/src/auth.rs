//! A host-supplied authenticator: a C callback that checks a subscriber's user and secret
//! and fills in a grant (databases and access groups).

use crate::args::{borrow_mut, str_arg};
use crate::error::{mcsync_status, FfiError};
use crate::subscriber::{mcsync_free_callback, UserData};
use mcsync_core::{Authenticator, Grant};
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Arc;

/// What an authenticated subscriber may do, filled in by an authenticator callback. Starts
/// as "every database, no access groups, not a two-phase participant". Borrowed: valid only
/// during the callback.
pub struct mcsync_grant {
    databases: Option<Vec<String>>,
    groups: Vec<String>,
    participant: bool,
}

/// An authenticator: decides whether `user` with `secret`, connecting from `peer` ("ip:port"),
/// may subscribe, and to what. To accept, fill in `grant` (by default every database and no
/// access groups, not a two-phase participant; see `mcsync_grant_allow_database`,
/// `mcsync_grant_add_group` and `mcsync_grant_allow_participant`) and
/// return `MCSYNC_OK` (0); any other value refuses, and the subscriber gets
/// `MCSYNC_ERR_AUTH` (with a message that does not say whether the user exists). The return
/// type is `int` rather than `mcsync_status` so that any value a C function returns is
/// well-defined.
///
/// All strings and `grant` are borrowed: valid only during the call. Called on the
/// publisher's connection threads, possibly concurrently: it must be thread-safe. Results
/// are cached for a short while per user and secret. It must return (not `longjmp` or
/// throw out).
pub type mcsync_authenticate_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        user: *const c_char,
        secret: *const c_char,
        peer: *const c_char,
        grant: *mut mcsync_grant,
    ) -> c_int,
>;

/// The C callback as the publisher's connection threads call it.
pub(crate) struct HostAuthenticator {
    callback: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        *const c_char,
        *const c_char,
        *mut mcsync_grant,
    ) -> c_int,
    user: Arc<UserData>,
}

impl HostAuthenticator {
    /// Takes ownership of `user_data` at once, so a failure here still frees it.
    pub(crate) fn new(
        callback: mcsync_authenticate_callback,
        user_data: *mut c_void,
        free_user_data: mcsync_free_callback,
    ) -> Result<HostAuthenticator, FfiError> {
        let user = Arc::new(UserData {
            ptr: user_data,
            free: free_user_data,
        });
        let callback = callback.ok_or_else(|| FfiError::null("callback"))?;
        Ok(HostAuthenticator { callback, user })
    }
}

fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

impl Authenticator for HostAuthenticator {
    fn authenticate(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, String> {
        let denied = || "unknown user or wrong password".to_owned();
        let run = std::panic::AssertUnwindSafe(|| {
            let user = c_text(user);
            let secret = WipedCString(c_text(secret));
            let peer = c_text(&peer.to_string());
            let mut grant = mcsync_grant {
                databases: None,
                groups: Vec::new(),
                participant: false,
            };
            // SAFETY: the host supplied a valid, thread-safe function; every pointer passed
            // outlives the call.
            let st = unsafe {
                (self.callback)(
                    self.user.ptr,
                    user.as_ptr(),
                    secret.0.as_ptr(),
                    peer.as_ptr(),
                    &mut grant,
                )
            };
            (st, grant)
        });
        match std::panic::catch_unwind(run) {
            Ok((0, grant)) => Ok(Grant {
                databases: grant.databases,
                groups: grant.groups,
                participant: grant.participant,
            }),
            _ => Err(denied()),
        }
    }
}

/// A copy of a secret that is wiped when dropped.
struct WipedCString(CString);

impl Drop for WipedCString {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes_with_nul();
        for b in bytes.iter_mut() {
            // SAFETY: a valid, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Restricts the grant to the listed databases: call once per database the user may
/// subscribe to (without any call, every database is allowed). `database` is copied.
/// Only valid inside an authenticator callback, on the grant it was given.
#[no_mangle]
pub unsafe extern "C" fn mcsync_grant_allow_database(
    grant: *mut mcsync_grant,
    database: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let g = borrow_mut(grant, "grant")?;
        let name = str_arg(database, "database")?;
        if name.is_empty() {
            return Err(FfiError::config("database name must not be empty"));
        }
        g.databases.get_or_insert_with(Vec::new).push(name.to_owned());
        Ok(())
    }
}

/// Gives the user an access group: records published with groups are stored in its
/// replica only if it holds one of them (records without groups are visible to all).
/// `group` (1..=255 bytes) is copied. Only valid inside an authenticator callback.
#[no_mangle]
pub unsafe extern "C" fn mcsync_grant_add_group(
    grant: *mut mcsync_grant,
    group: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let g = borrow_mut(grant, "grant")?;
        let group = str_arg(group, "group")?;
        if group.is_empty() || group.len() > 255 {
            return Err(FfiError::range(format!(
                "group name of {} bytes outside 1..=255",
                group.len()
            )));
        }
        g.groups.push(group.to_owned());
        Ok(())
    }
}

/// Lets the user register as a two-phase participant of the databases the grant covers
/// (see `mcsync_subscriber_subscribe_participant`). Without it, a subscriber asking to be a
/// participant is refused with `MCSYNC_ERR_AUTH`. A participant votes on every two-phase
/// update of the database and can refuse or stall them all: grant it to trusted replicas
/// only. Only valid inside an authenticator callback, on the grant it was given.
#[no_mangle]
pub unsafe extern "C" fn mcsync_grant_allow_participant(grant: *mut mcsync_grant) -> mcsync_status {
    ffi_panic_boundary! {
        let g = borrow_mut(grant, "grant")?;
        g.participant = true;
        Ok(())
    }
}
