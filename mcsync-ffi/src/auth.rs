//! Who may subscribe: a host-supplied authenticator (a C callback that checks a subscriber's
//! user and secret and fills in a grant: databases and access groups), or the users file,
//! which `mcsync_users_add` writes.

use crate::args::{borrow_mut, str_arg};
use crate::error::{mcsync_status, FfiError};
use crate::subscriber::{mcsync_free_callback, UserData};
use mcsync_core::auth::UsersFile;
use mcsync_core::{Authenticator, Grant};
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
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

/// Most names a `mcsync_users_add` list may hold (databases, groups).
const MAX_NAMES: usize = 255;

/// Borrows a C array of `len` strings naming `what` (NULL when `len` is 0). Each must be a
/// users-file name: 1..=255 bytes, no whitespace, commas or control characters.
///
/// # Safety
/// `list` is NULL or points to `len` pointers, each NULL or a NUL-terminated string.
unsafe fn name_list<'a>(
    list: *const *const c_char,
    len: usize,
    what: &str,
) -> Result<Vec<&'a str>, FfiError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if list.is_null() {
        return Err(FfiError::null(what));
    }
    if len > MAX_NAMES {
        return Err(FfiError::range(format!("{len} {what} exceed {MAX_NAMES}")));
    }
    std::slice::from_raw_parts(list, len)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = str_arg(*p, &format!("{what}[{i}]"))?;
            check_name(name, &format!("{what}[{i}]"))?;
            Ok(name)
        })
        .collect()
}

/// A name as the users file holds it: 1..=255 bytes, no whitespace, commas or control
/// characters (fields are separated by whitespace, list items by commas).
fn check_name(name: &str, what: &str) -> Result<(), FfiError> {
    if name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(FfiError::config(format!(
            "{what} {name:?} must be 1..=255 bytes without spaces, commas or control characters"
        )));
    }
    Ok(())
}

/// Adds a user to the users file at `path` (creating the file), the built-in way a
/// publisher authenticates subscribers (`mcsync_publisher_config_set_users_file`; the
/// default file is `<data_dir>/users`). `mcsync users add` writes the same entries.
///
/// - `user`: the name the subscriber logs in with (`mcsync_subscriber_config_set_credentials`).
/// - `password`: its secret, not empty; only an argon2id hash of it is written.
/// - `databases`: an array of `databases_len` database names the user may subscribe to;
///   NULL with `databases_len` 0 means every database.
/// - `groups`: an array of `groups_len` access groups (records published with groups are
///   stored in the user's replica only if it holds one of them); NULL with `groups_len` 0
///   means none.
/// - `participant`: whether the user may register as a two-phase participant (see
///   `mcsync_subscriber_subscribe_participant`); grant it to trusted replicas only.
///
/// User, database and group names are 1..=255 bytes of UTF-8 without spaces, commas or
/// control characters; at most 255 databases and 255 groups. Every argument is borrowed for
/// the call only. Returns `MCSYNC_ERR_NULL` (a NULL string, or a NULL array with a non-zero
/// length), `MCSYNC_ERR_UTF8`, `MCSYNC_ERR_RANGE` (too many names), `MCSYNC_ERR_CONFIG` (an
/// empty password, a name not allowed, the user already in the file, or a file that is not a
/// valid users file) or `MCSYNC_ERR_IO` (the file cannot be read or written). A publisher
/// reads the file when it opens: users added afterwards can subscribe once it is reopened.
/// Takes tens of milliseconds (the hash is deliberately slow). Thread-safe, but two calls
/// adding to the same file at once (from any threads or processes) may both add the same
/// user.
#[no_mangle]
pub unsafe extern "C" fn mcsync_users_add(
    path: *const c_char,
    user: *const c_char,
    password: *const c_char,
    databases: *const *const c_char,
    databases_len: usize,
    groups: *const *const c_char,
    groups_len: usize,
    participant: bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        let path = str_arg(path, "path")?;
        let user = str_arg(user, "user")?;
        let password = str_arg(password, "password")?;
        if path.is_empty() {
            return Err(FfiError::config("users file path must not be empty"));
        }
        check_name(user, "user")?;
        if password.is_empty() {
            return Err(FfiError::config("password must not be empty"));
        }
        let owned = |names: Vec<&str>| names.into_iter().map(str::to_owned).collect::<Vec<_>>();
        let databases = owned(name_list(databases, databases_len, "databases")?);
        let groups = owned(name_list(groups, groups_len, "groups")?);
        // Every database unless listed (an empty list would write an invalid line).
        let databases = (!databases.is_empty()).then_some(databases);
        UsersFile::add_user(
            Path::new(path),
            user,
            password,
            databases.as_deref(),
            &groups,
            participant,
        )?;
        Ok(())
    }
}
