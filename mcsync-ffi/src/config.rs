//! Configuration objects with typed setters, so C hosts configure mcsync without
//! recompiling and without a text format.
//!
//! Each setter checks its argument at once (`MCSYNC_ERR_NULL`, `MCSYNC_ERR_UTF8`,
//! `MCSYNC_ERR_CONFIG` for text that does not parse, `MCSYNC_ERR_RANGE` for numbers out of
//! range) and leaves the object unchanged when it fails. Settings that depend on each
//! other, and the required ones, are checked by `_open`.

use crate::args::{borrow_mut, free_handle, into_handle, out, str_arg};
use crate::auth::{mcsync_authenticate_callback, HostAuthenticator};
use crate::error::{mcsync_status, FfiError};
use crate::subscriber::mcsync_free_callback;
use mcsync_core::config::{limits, parse_fingerprint};
use mcsync_core::{
    Authentication, LossConfig, PublisherConfig, ReplicaDurability, Schedule, Secret,
    ServerIdentity, ServerTrust, SubscriberConfig,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::raw::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Settings for `mcsync_publisher_open`. Created by `mcsync_publisher_config_new`, freed by
/// `mcsync_publisher_config_free`. Not thread-safe: set it up on one thread.
pub struct mcsync_publisher_config {
    pub(crate) config: PublisherConfig,
    data_dir_set: bool,
    /// Unset: the users file in the data directory, which is only known at open.
    authentication: Option<Authentication>,
}

/// Settings for `mcsync_subscriber_open`. Created by `mcsync_subscriber_config_new`, freed
/// by `mcsync_subscriber_config_free`. Not thread-safe: set it up on one thread.
pub struct mcsync_subscriber_config {
    pub(crate) config: SubscriberConfig,
    data_dir_set: bool,
    server_set: bool,
    trust_set: bool,
}

impl mcsync_publisher_config {
    /// The engine configuration, once the required settings are there.
    pub(crate) fn build(&self) -> Result<PublisherConfig, FfiError> {
        if !self.data_dir_set {
            return Err(FfiError::config(
                "publisher config: data directory not set (mcsync_publisher_config_set_data_dir)",
            ));
        }
        let mut config = self.config.clone();
        config.authentication = self
            .authentication
            .clone()
            .unwrap_or_else(|| Authentication::UsersFile(config.data_dir.join("users")));
        Ok(config)
    }
}

impl mcsync_subscriber_config {
    /// The engine configuration, once the required settings are there.
    pub(crate) fn build(&self) -> Result<SubscriberConfig, FfiError> {
        let missing = [
            (
                self.data_dir_set,
                "data directory (mcsync_subscriber_config_set_data_dir)",
            ),
            (
                self.server_set,
                "server address (mcsync_subscriber_config_set_server)",
            ),
            (
                self.trust_set,
                "server trust (mcsync_subscriber_config_set_trust_fingerprint, \
                 _set_trust_ca_file or _set_insecure_loopback)",
            ),
        ];
        if let Some((_, what)) = missing.iter().find(|(set, _)| !set) {
            return Err(FfiError::config(format!(
                "subscriber config: {what} not set"
            )));
        }
        Ok(self.config.clone())
    }
}

fn non_empty_path(path: &str, what: &str) -> Result<PathBuf, FfiError> {
    if path.is_empty() {
        return Err(FfiError::config(format!("{what} must not be empty")));
    }
    Ok(PathBuf::from(path))
}

fn parse_ipv4(text: &str, what: &str) -> Result<Ipv4Addr, FfiError> {
    text.trim()
        .parse()
        .map_err(|_| FfiError::config(format!("{what} {text:?} is not an IPv4 address")))
}

fn parse_socket_addr(text: &str, what: &str) -> Result<SocketAddr, FfiError> {
    text.trim().parse().map_err(|_| {
        FfiError::config(format!(
            "{what} {text:?} is not a numeric address and port such as 127.0.0.1:7000"
        ))
    })
}

// The setters below check each argument against `mcsync_core::config::limits`, the ranges
// `Publisher::open` and `Subscriber::open` enforce for Rust and Python too, and report core's
// message.

// ---------------------------------------------------------------------------------------
// Publisher configuration
// ---------------------------------------------------------------------------------------

/// Creates a publisher configuration holding the defaults: multicast group 239.255.77.1,
/// port 47100, interface 127.0.0.1, TTL 1, loopback on, 1400-byte datagrams; control server
/// on 127.0.0.1 with a free port, TLS with a self-signed certificate kept in the data
/// directory, subscribers authenticated by the users file `<data_dir>/users`; always
/// multicasting. The data directory must be set before `mcsync_publisher_open`.
///
/// Ownership: on success `*out_config` receives a new object the caller owns and frees with
/// `mcsync_publisher_config_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_new(
    out_config: *mut *mut mcsync_publisher_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        let slot = out(out_config, "out_config")?;
        *slot = into_handle(mcsync_publisher_config {
            config: PublisherConfig::new(""),
            data_dir_set: false,
            authentication: None,
        });
        Ok(())
    }
}

/// Frees a publisher configuration. NULL is a no-op. Objects opened from it are not
/// affected (they copied what they needed).
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_free(config: *mut mcsync_publisher_config) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(config)
    }
}

/// Sets the directory of the publisher's LMDB store (created if missing). Required.
/// `path` is copied; it must be UTF-8.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_data_dir(
    config: *mut mcsync_publisher_config,
    path: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let path = str_arg(path, "path")?;
        if path.is_empty() {
            return Err(FfiError::config("data directory must not be empty"));
        }
        c.config.data_dir = path.into();
        c.data_dir_set = true;
        Ok(())
    }
}

/// Makes the control channel present the certificate chain in PEM file `cert_path` (leaf
/// first) with the private key in PEM file `key_path` (PKCS#8, PKCS#1 or SEC1), instead of
/// the default self-signed certificate. The files are read by `mcsync_publisher_open`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_tls_files(
    config: *mut mcsync_publisher_config,
    cert_path: *const c_char,
    key_path: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let cert = non_empty_path(str_arg(cert_path, "cert_path")?, "certificate path")?;
        let key = non_empty_path(str_arg(key_path, "key_path")?, "key path")?;
        c.config.identity = ServerIdentity::Files { cert, key };
        Ok(())
    }
}

/// Makes the control channel present a self-signed certificate, generated on first start
/// and kept (key mode 0600) in `<data_dir>/tls/` (the default). Subscribers pin its
/// fingerprint (`mcsync_publisher_fingerprint`).
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_tls_self_signed(
    config: *mut mcsync_publisher_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.identity = ServerIdentity::SelfSigned;
        Ok(())
    }
}

/// Turns TLS off: the control channel runs in plaintext, which `mcsync_publisher_open`
/// allows only on a loopback control address. For tests and local tools only.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_insecure_loopback(
    config: *mut mcsync_publisher_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.identity = ServerIdentity::InsecureLoopback;
        Ok(())
    }
}

/// Authenticates subscribers against a users file (one user per line: name, argon2 hash,
/// databases or `*`, groups or `-`; `mcsync users add` writes entries). The default is
/// `<data_dir>/users`. The file is read by `mcsync_publisher_open`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_users_file(
    config: *mut mcsync_publisher_config,
    path: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let path = non_empty_path(str_arg(path, "path")?, "users file path")?;
        c.authentication = Some(Authentication::UsersFile(path));
        Ok(())
    }
}

/// Lets anyone subscribe to every database, with no access groups, whatever user and
/// secret they send. For tests and demos only.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_open_access(
    config: *mut mcsync_publisher_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.authentication = Some(Authentication::Open);
        Ok(())
    }
}

/// Authenticates subscribers with a host function instead of a users file (see
/// `mcsync_authenticate_callback`): it is called with `user_data` on every registration and
/// repair session whose credentials are not cached, on the publisher's connection threads,
/// possibly on several at once, so it must be thread-safe.
///
/// Ownership of `user_data`: it passes to mcsync at this call, whatever it returns. If
/// `free_user_data` is not NULL it is called exactly once with `user_data`, after the last
/// authentication, when nothing uses the authenticator any more: once the configuration is
/// freed (or this setting replaced) and every publisher opened from it, and every database
/// handle of those, is freed. On failure (NULL `config` or `callback`) it is called before
/// this function returns.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_authenticator(
    config: *mut mcsync_publisher_config,
    callback: mcsync_authenticate_callback,
    user_data: *mut c_void,
    free_user_data: mcsync_free_callback,
) -> mcsync_status {
    ffi_panic_boundary! {
        let auth = HostAuthenticator::new(callback, user_data, free_user_data);
        let c = borrow_mut(config, "config")?;
        let auth = auth?;
        c.authentication = Some(Authentication::Custom(Arc::new(auth)));
        Ok(())
    }
}

/// Rotates every database's key every `interval_ms` milliseconds (0: only on revocation
/// and `mcsync_db_rotate_key`, the default). Subscribers fetch the new key over the control
/// channel.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_key_rotation_ms(
    config: *mut mcsync_publisher_config,
    interval_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.key_rotation_interval =
            (interval_ms > 0).then(|| Duration::from_millis(interval_ms));
        Ok(())
    }
}

/// Drops a subscriber's registration once it has neither reported nor made a request for
/// `expiry_ms` milliseconds (default 300,000; at least 1,000). An expired registration no
/// longer votes on the loss or counts as a two-phase participant; a live subscriber's next
/// report registers it again.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_registration_expiry_ms(
    config: *mut mcsync_publisher_config,
    expiry_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.registration_expiry =
            limits::REGISTRATION_EXPIRY.check(Duration::from_millis(expiry_ms))?;
        Ok(())
    }
}

/// Restricts multicast to daily windows: adds the window from `start_minute` to
/// `end_minute` (minutes after midnight UTC, 0..=1439 and 0..=1440; a window with
/// `end_minute < start_minute` runs over midnight). Outside every window updates are only
/// journaled and subscribers catch up by unicast. Without windows multicast is always on.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_add_schedule_window(
    config: *mut mcsync_publisher_config,
    start_minute: u32,
    end_minute: u32,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let window = limits::check_schedule_window(start_minute, end_minute)?;
        match &mut c.config.schedule {
            Schedule::Windows(w) => w.push(window),
            other => *other = Schedule::Windows(vec![window]),
        }
        Ok(())
    }
}

/// Turns multicast off entirely (until `mcsync_publisher_config_add_schedule_window` adds a
/// window, or `mcsync_publisher_set_schedule_always` turns it on at run time): updates are
/// only journaled and every subscriber catches up by unicast.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_schedule_never(
    config: *mut mcsync_publisher_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.schedule = Schedule::Never;
        Ok(())
    }
}

/// Whether keys are rotated when a multicast window opens, so subscribers re-register and
/// make their presence known (default false).
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_rotate_key_at_window_start(
    config: *mut mcsync_publisher_config,
    rotate: bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.rotate_key_at_window_start = rotate;
        Ok(())
    }
}

/// When commits return (default false: once journaled durably). With `async_commits`,
/// a commit returns once its version is assigned and a journal writer group-commits
/// behind it (at most 8,192 updates behind): far faster for a caller committing one update
/// at a time, e.g. from a database's update hook, but a crash can lose the updates not yet
/// journaled (never multicast, so no replica has them). `mcsync_publisher_flush` waits
/// until everything returned so far is journaled.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_async_commits(
    config: *mut mcsync_publisher_config,
    async_commits: bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.durability = if async_commits {
            mcsync_core::Durability::Async
        } else {
            mcsync_core::Durability::Sync
        };
        Ok(())
    }
}

/// Whether a database starts multicasting only once a subscriber registered for it
/// (default false).
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_multicast_on_first_subscription(
    config: *mut mcsync_publisher_config,
    lazy: bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.multicast_on_first_subscription = lazy;
        Ok(())
    }
}

/// Sets the address the control (repair) server listens on, numeric "ip:port", e.g.
/// "127.0.0.1:0" (port 0 picks a free port; `mcsync_publisher_control_addr` tells which).
/// Default "127.0.0.1:0".
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_control_addr(
    config: *mut mcsync_publisher_config,
    addr: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.control_addr = parse_socket_addr(str_arg(addr, "addr")?, "control address")?;
        Ok(())
    }
}

/// Sets the first multicast group, dotted IPv4 such as "239.1.2.3". Database number `i`
/// (in order of first use) is sent to group + i. Must be a multicast address
/// (`MCSYNC_ERR_CONFIG` otherwise); 239.0.0.0/8 is advised. Default "239.255.77.1".
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_group(
    config: *mut mcsync_publisher_config,
    group: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let g = parse_ipv4(str_arg(group, "group")?, "multicast group")?;
        c.config.multicast.group = limits::check_multicast_group(g)?;
        Ok(())
    }
}

/// Sets the UDP port of every multicast group (1..=65535; 0 is `MCSYNC_ERR_RANGE`).
/// Default 47100.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_port(
    config: *mut mcsync_publisher_config,
    port: u16,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.port = limits::MULTICAST_PORT.check(port)?;
        Ok(())
    }
}

/// Sets the multicast address and port ranges databases are spread over: `groups` in CIDR
/// notation ("239.255.77.0/24") and `ports` as "first-last" or one port ("47100-47199").
/// Replaces `_set_group` and `_set_port`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_group_range(
    config: *mut mcsync_publisher_config,
    groups: *const c_char,
    ports: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let groups = str_arg(groups, "groups")?;
        let ports = str_arg(ports, "ports")?;
        let mut m = c.config.multicast.clone();
        m.set_ranges(groups, ports)?;
        c.config.multicast = m;
        Ok(())
    }
}

/// Sets the interface address multicast is sent from (`IP_MULTICAST_IF`), dotted IPv4.
/// Default "127.0.0.1", which keeps traffic on this host.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_interface(
    config: *mut mcsync_publisher_config,
    interface: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.interface = parse_ipv4(str_arg(interface, "interface")?, "interface")?;
        Ok(())
    }
}

/// Sets `IP_MULTICAST_TTL` (0..=255; 0 stays on the host, 1 on the local network).
/// Default 1.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_ttl(
    config: *mut mcsync_publisher_config,
    ttl: u32,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.ttl = limits::TTL.check(ttl)?;
        Ok(())
    }
}

/// Sets `IP_MULTICAST_LOOP`: whether receivers on this host get the traffic. Default true.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_loopback(
    config: *mut mcsync_publisher_config,
    loopback: bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.multicast.loopback = loopback;
        Ok(())
    }
}

/// Sets the largest datagram sent, header and sealed payload (256..=65000). Default 1400,
/// which fits a 1500-byte MTU.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_datagram_bytes(
    config: *mut mcsync_publisher_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.datagram_bytes = limits::DATAGRAM_BYTES.check(bytes)?;
        Ok(())
    }
}

/// Sets multicast pacing: most packets and most payload bytes per second (0 = unlimited).
/// Defaults: packets unlimited, 64000000 bytes/s. Adaptation lowers both when
/// subscribers report loss.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_rate_limit(
    config: *mut mcsync_publisher_config,
    packets_per_sec: u64,
    bytes_per_sec: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.max_packets_per_sec = packets_per_sec;
        c.config.multicast.max_bytes_per_sec = bytes_per_sec;
        Ok(())
    }
}

/// Sets the most encoded bytes bundled into one chain when updates queue up
/// (1024..=16 MiB). Default 60 KiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_max_bundle_bytes(
    config: *mut mcsync_publisher_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.max_bundle_bytes = limits::MAX_BUNDLE_BYTES.check(bytes)?;
        Ok(())
    }
}

/// Sets the heartbeat intervals in milliseconds: the first heartbeat after the last update,
/// and the idle interval it doubles up to. Requires 1 <= initial_ms <= max_ms <= 3600000.
/// Defaults 5 and 1000.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_heartbeat_ms(
    config: *mut mcsync_publisher_config,
    initial_ms: u64,
    max_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
        limits::check_heartbeats(initial, max)?;
        c.config.multicast.heartbeat_initial = initial;
        c.config.multicast.heartbeat_max = max;
        Ok(())
    }
}

/// Sets the largest encoded update (one transaction) accepted (1 KiB..=1 GiB); a larger
/// commit fails with `MCSYNC_ERR_TOO_LARGE` and writes nothing. Default 16 MiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_max_update_bytes(
    config: *mut mcsync_publisher_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.max_update_bytes = limits::MAX_UPDATE_BYTES.check(bytes)?;
        Ok(())
    }
}

/// Sets the initial LMDB map size in bytes (at least 1 MiB); the map grows when full.
/// Default 256 MiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_map_size(
    config: *mut mcsync_publisher_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.map_size = limits::MAP_SIZE.check(bytes)?;
        Ok(())
    }
}

/// Journal retention: keeps at most `bytes` bytes of journal per database (any value; 0
/// keeps only the minimum count). Entries beyond both this and the age limit are removed,
/// oldest first, but never below the minimum count (`_set_retention_min_count`). A
/// subscriber that falls behind the oldest version kept catches up by hash resync instead
/// of the journal. Default 1 GiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_retention_max_bytes(
    config: *mut mcsync_publisher_config,
    bytes: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.retention.max_bytes = bytes;
        Ok(())
    }
}

/// Journal retention: keeps entries younger than `age_ms` milliseconds (0..=UINT64_MAX /
/// 1000; see `_set_retention_max_bytes` for how the limits combine). Default 7 days.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_retention_max_age_ms(
    config: *mut mcsync_publisher_config,
    age_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.retention.max_age = limits::RETENTION_MAX_AGE.check(Duration::from_millis(age_ms))?;
        Ok(())
    }
}

/// Journal retention: the fewest entries kept per database, whatever their size and age
/// (any value). Default 10000.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_retention_min_count(
    config: *mut mcsync_publisher_config,
    count: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.retention.min_count = count;
        Ok(())
    }
}

/// Journal retention: when the data directory's file system has less than `bytes` bytes
/// free, journals are trimmed to their minimum count, and the condition is logged and
/// counted (publisher statistics counter "disk_low"). 0 turns the check off. Default
/// 256 MiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_retention_min_free_disk_bytes(
    config: *mut mcsync_publisher_config,
    bytes: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.retention.min_free_disk_bytes = bytes;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Subscriber configuration
// ---------------------------------------------------------------------------------------

/// Creates a subscriber configuration holding the defaults (interface 127.0.0.1, 8 MiB
/// receive buffer, no user name or secret, no injected loss). The data directory, the
/// server address and how to trust the server (a pinned fingerprint, a CA file, or
/// insecure loopback) must be set before `mcsync_subscriber_open`.
///
/// Ownership: on success `*out_config` receives a new object the caller owns and frees
/// with `mcsync_subscriber_config_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_new(
    out_config: *mut *mut mcsync_subscriber_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        let slot = out(out_config, "out_config")?;
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        *slot = into_handle(mcsync_subscriber_config {
            config: SubscriberConfig::new("", server, ServerTrust::InsecureLoopback),
            data_dir_set: false,
            server_set: false,
            trust_set: false,
        });
        Ok(())
    }
}

/// Frees a subscriber configuration. NULL is a no-op. Objects opened from it are not
/// affected.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_free(config: *mut mcsync_subscriber_config) {
    ffi_panic_boundary! { on_panic = ();
        free_handle(config)
    }
}

/// Sets the directory of the subscriber's LMDB store (created if missing). Required.
/// `path` is copied; it must be UTF-8. Two open subscribers must not share a directory.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_data_dir(
    config: *mut mcsync_subscriber_config,
    path: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let path = str_arg(path, "path")?;
        if path.is_empty() {
            return Err(FfiError::config("data directory must not be empty"));
        }
        c.config.data_dir = path.into();
        c.data_dir_set = true;
        Ok(())
    }
}

/// Sets the publisher's control address, numeric "ip:port" as printed by
/// `mcsync_publisher_control_addr`. Required.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_server(
    config: *mut mcsync_subscriber_config,
    addr: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let a = parse_socket_addr(str_arg(addr, "addr")?, "server address")?;
        limits::SERVER_PORT.check(a.port())?;
        c.config.server = a;
        c.server_set = true;
        Ok(())
    }
}

/// Trusts the publisher's certificate only if its SHA-256 fingerprint is `fingerprint`
/// (64 hex digits, colons allowed; printed by `mcsync_publisher_fingerprint`). One of the
/// three trust settings is required.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_trust_fingerprint(
    config: *mut mcsync_subscriber_config,
    fingerprint: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let fp = parse_fingerprint(str_arg(fingerprint, "fingerprint")?)?;
        c.config.trust = ServerTrust::Fingerprint(fp);
        c.trust_set = true;
        Ok(())
    }
}

/// Verifies the publisher's certificate chain against the CA certificates in PEM file
/// `ca_path`, and its name (see `_set_server_name`). Read by `mcsync_subscriber_subscribe`.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_trust_ca_file(
    config: *mut mcsync_subscriber_config,
    ca_path: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.trust = ServerTrust::CaFile(non_empty_path(str_arg(ca_path, "ca_path")?, "CA file path")?);
        c.trust_set = true;
        Ok(())
    }
}

/// Talks to the publisher without TLS, in plaintext, which is allowed only to a loopback
/// server address. For tests and local tools only; the publisher must use
/// `mcsync_publisher_config_set_insecure_loopback` too.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_insecure_loopback(
    config: *mut mcsync_subscriber_config,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.trust = ServerTrust::InsecureLoopback;
        c.trust_set = true;
        Ok(())
    }
}

/// Sets the name checked against the publisher's certificate with a CA file (default: the
/// server's IP address).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_server_name(
    config: *mut mcsync_subscriber_config,
    name: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let name = str_arg(name, "name")?;
        c.config.server_name = Some(limits::SERVER_NAME_LEN.check_len(name)?.to_owned());
        Ok(())
    }
}

/// Sets the user name and secret presented when registering (over TLS). Both are copied;
/// mcsync wipes its copy of the secret when the configuration (and every subscriber opened
/// from it) is freed. Default: empty, which only open-access publishers accept.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_credentials(
    config: *mut mcsync_subscriber_config,
    user: *const c_char,
    secret: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let user = str_arg(user, "user")?;
        let secret = str_arg(secret, "secret")?;
        c.config.user = limits::USER_LEN.check_len(user)?.to_owned();
        c.config.secret = Secret::new(secret);
        Ok(())
    }
}

/// Sets how long the subscriber tolerates hearing nothing from the publisher before it
/// registers again and catches up (the publisher may have restarted), in milliseconds
/// (100..=3600000). Default 3000.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_silence_timeout_ms(
    config: *mut mcsync_subscriber_config,
    timeout_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.silence_timeout = limits::SILENCE_TIMEOUT.check(Duration::from_millis(timeout_ms))?;
        Ok(())
    }
}

/// Sets the interface groups are joined on, dotted IPv4. Default "127.0.0.1".
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_interface(
    config: *mut mcsync_subscriber_config,
    interface: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.interface = parse_ipv4(str_arg(interface, "interface")?, "interface")?;
        Ok(())
    }
}

/// Sets the requested `SO_RCVBUF` in bytes (4 KiB..=1 GiB; the kernel may grant less, the
/// statistics counter "recv_buffer_bytes" shows what it granted). Default 8 MiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_recv_buffer_bytes(
    config: *mut mcsync_subscriber_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.recv_buffer_bytes = limits::RECV_BUFFER_BYTES.check(bytes)?;
        Ok(())
    }
}

/// Sets how many packets may queue between the receive and process threads
/// (1..=1048576). Default 16384.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_channel_capacity(
    config: *mut mcsync_subscriber_config,
    packets: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.channel_capacity = limits::CHANNEL_CAPACITY.check(packets)?;
        Ok(())
    }
}

/// Sets the bytes of out-of-order updates held while a gap is repaired (at least 64 KiB).
/// Default 64 MiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_reorder_buffer_bytes(
    config: *mut mcsync_subscriber_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.reorder_buffer_bytes = limits::REORDER_BUFFER_BYTES.check(bytes)?;
        Ok(())
    }
}

/// Sets repair timing in milliseconds: the delay before a detected gap is repaired (lets
/// reordered packets arrive first; 0..=60000, default 0), the wait before retrying a failed
/// repair (1..=60000, default 100), and the timeout of one repair connection's reads and
/// writes (1..=3600000, default 10000).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_repair_ms(
    config: *mut mcsync_subscriber_config,
    delay_ms: u64,
    retry_ms: u64,
    io_timeout_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let delay = limits::REPAIR_DELAY.check(Duration::from_millis(delay_ms))?;
        let retry = limits::REPAIR_RETRY.check(Duration::from_millis(retry_ms))?;
        let io_timeout = limits::REPAIR_IO_TIMEOUT.check(Duration::from_millis(io_timeout_ms))?;
        c.config.repair_delay = delay;
        c.config.repair_retry = retry;
        c.config.repair_io_timeout = io_timeout;
        Ok(())
    }
}

/// Sets the largest encoded update accepted (1 KiB..=1 GiB). Default 16 MiB; it must be
/// at least the publisher's.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_max_update_bytes(
    config: *mut mcsync_subscriber_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.max_update_bytes = limits::MAX_UPDATE_BYTES.check(bytes)?;
        Ok(())
    }
}

/// Injects receive-side packet loss, for tests and demos: each packet starts a loss burst
/// of `burst_len` packets with `probability` (0.0..=1.0; 0 turns injection off), drawn
/// from a generator seeded with `seed` so a run can be repeated. `burst_len` must be >= 1.
/// Out-of-range values (and NaN) give `MCSYNC_ERR_RANGE`. Default off.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_loss(
    config: *mut mcsync_subscriber_config,
    probability: f64,
    burst_len: u32,
    seed: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        limits::LOSS_PROBABILITY.check(probability)?;
        limits::LOSS_BURST_LEN.check(burst_len)?;
        c.config.loss = (probability > 0.0).then_some(LossConfig {
            probability,
            burst_len,
            seed,
        });
        Ok(())
    }
}

/// Sets the initial LMDB map size in bytes (at least 1 MiB); the map grows when full.
/// Default 256 MiB.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_map_size(
    config: *mut mcsync_subscriber_config,
    bytes: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.map_size = limits::MAP_SIZE.check(bytes)?;
        Ok(())
    }
}

/// Sets the name this subscriber gives the publisher when it registers (1..=255 bytes of
/// UTF-8). Default "mcsync-subscriber". It names the subscriber in
/// `mcsync_publisher_subscribers` and, as "client (user)", names a two-phase participant in
/// the publisher's abort messages (who refused, who did not answer), so give each
/// participant its own.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_client_name(
    config: *mut mcsync_subscriber_config,
    name: *const c_char,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let name = str_arg(name, "name")?;
        c.config.client_name = limits::CLIENT_NAME_LEN.check_len(name)?.to_owned();
        Ok(())
    }
}

/// Sets how far behind (in versions) a replica catches up compacted: a gap of more than
/// `versions` versions is repaired as the latest value of each changed key instead of
/// update by update, and update callbacks then see it as one update (see
/// `mcsync_update_callback`). 0 compacts every catch-up; `UINT64_MAX` never does. Default
/// 1000.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_compact_catch_up_after(
    config: *mut mcsync_subscriber_config,
    versions: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.compact_catch_up_after = versions;
        Ok(())
    }
}

/// `mcsync_subscriber_config_set_replica_durability`: fsync every apply commit.
pub const MCSYNC_REPLICA_SYNC: c_int = 0;
/// `mcsync_subscriber_config_set_replica_durability`: no fsync per apply; flushed every
/// `interval_ms` and at a clean close (the default, every 1,000 ms).
pub const MCSYNC_REPLICA_PERIODIC: c_int = 1;
/// `mcsync_subscriber_config_set_replica_durability`: no fsync per apply; flushed only at
/// a clean close.
pub const MCSYNC_REPLICA_NONE: c_int = 2;

/// Sets how the replica store reaches the disk: `MCSYNC_REPLICA_SYNC` (fsync every apply
/// commit), `MCSYNC_REPLICA_PERIODIC` (LMDB `MDB_NOSYNC`, flushed every `interval_ms`
/// milliseconds, 1..=3,600,000, and at `mcsync_subscriber_close`) or `MCSYNC_REPLICA_NONE`
/// (flushed only at close). `interval_ms` is ignored except with `MCSYNC_REPLICA_PERIODIC`.
/// Default: periodic, every 1,000 ms.
///
/// In every mode a kill -9 of the process loses nothing applied. After an OS crash or power
/// loss a periodic or none replica that had unsynced commits is discarded at the next open
/// and rebuilt from the publisher (stats `replica_rebuilds`); hosts are then handed a reset
/// (the `reset` field of `mcsync_update`). See docs/OPERATIONS.md, "Replica durability".
///
/// Errors: `MCSYNC_ERR_RANGE` for an unknown mode or an interval out of range.
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_replica_durability(
    config: *mut mcsync_subscriber_config,
    mode: c_int,
    interval_ms: u64,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        let d = match mode {
            MCSYNC_REPLICA_SYNC => ReplicaDurability::Sync,
            MCSYNC_REPLICA_PERIODIC => ReplicaDurability::Periodic(
                mcsync_core::config::REPLICA_FLUSH_INTERVAL
                    .check(Duration::from_millis(interval_ms))?,
            ),
            MCSYNC_REPLICA_NONE => ReplicaDurability::None,
            other => {
                return Err(FfiError::range(format!(
                    "replica durability mode {other} is none of MCSYNC_REPLICA_SYNC (0), \
                     MCSYNC_REPLICA_PERIODIC (1), MCSYNC_REPLICA_NONE (2)"
                )))
            }
        };
        c.config.replica_durability = d;
        Ok(())
    }
}
