//! The publisher's control server: registration (OPEN / CLOSE SUBSCRIPTION) and repair,
//! over TLS 1.3. Every connection starts with an authenticated HELLO; the grant decides
//! which database it may read and which access groups it holds. One thread accepts; one
//! thread serves each connection, so a slow subscriber costs only its own connection and
//! never the multicaster.

// Handlers return the error frame to send as their `Err`; it is rare and written at once.
#![allow(clippy::result_large_err)]

use super::tls::ServerTls;
use super::two_phase::Coordinator;
use super::StopFlag;
use crate::auth::{Authenticator, FailureLimiter, Grant};
use crate::crypto::KeyHandout;
use crate::stats::{inc, PublisherCounters};
use crate::store::publisher::DbTables;
use crate::store::PublisherStore;
use crate::sync::{Locked, RwLocked};
use crate::wire::control::{DatabaseInfo, SubscriberReport};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod journal;
mod push;
mod registration;
mod session;
#[cfg(test)]
mod tests;

pub use journal::COMPACT_CHUNK_BYTES;
use journal::*;
pub use registration::MAX_REGISTRATIONS_PER_USER;
use registration::*;
use session::*;

/// What the server knows of a published database.
pub trait PublishedDatabase: Send + Sync {
    /// Its name.
    fn name(&self) -> &str;
    /// Parameters for HELLO_OK (keys, groups and ids are filled in by the server).
    fn info(&self) -> DatabaseInfo;
    /// Current and previous keys, oldest first.
    fn keys(&self) -> KeyHandout;
    /// Journal tables.
    fn tables(&self) -> DbTables;
    /// Latest committed (journaled) version.
    fn committed_version(&self) -> u64;
    /// A recently multicast datagram, for packet repair.
    fn resend(&self, stream_id: u32, seq: u64) -> Option<Arc<Vec<u8>>>;
    /// A subscriber registered (for multicast-on-first-subscription).
    fn on_registered(&self);
    /// Every participant acknowledged the decision on `version`: stop repeating it.
    fn decision_acknowledged(&self, version: u64);
    /// Where its stream is pushed by unicast (`None`: push is not offered).
    fn push_targets(&self) -> Option<Arc<crate::net::push::PushTargets>> {
        None
    }
}

/// A registered subscriber, as the publisher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberRecord {
    /// Registration id.
    pub id: u64,
    /// User it authenticated as.
    pub user: String,
    /// Database it subscribed to.
    pub database: String,
    /// Client name it gave.
    pub client: String,
    /// Address of its last session.
    pub peer: SocketAddr,
    /// Registrations and repair sessions it opened.
    pub sessions: u64,
    /// Whether it takes part in two-phase updates of its database.
    pub participant: bool,
    /// Where its database's stream is pushed by unicast (the address of its control
    /// connection and the port its HELLO named), if it asked and was granted push.
    pub push: Option<SocketAddr>,
    /// Its latest reception report, and when it came.
    pub report: Option<(SubscriberReport, Instant)>,
    /// When it last registered, reported or made a request (registrations silent for
    /// `registration_expiry` are dropped).
    pub last_seen: Instant,
}

/// State shared by the accept thread and the connection threads.
pub struct ServerContext {
    /// The store the journal is read from.
    pub store: Arc<PublisherStore>,
    /// Databases by name.
    pub databases: RwLock<HashMap<String, Arc<dyn PublishedDatabase>>>,
    /// Counters.
    pub counters: Arc<PublisherCounters>,
    /// Largest frame accepted from a client.
    pub max_request_frame: usize,
    /// Stop flag of the whole server.
    pub stop: StopFlag,
    /// TLS (or insecure loopback).
    pub tls: ServerTls,
    /// The certificate's fingerprint.
    pub fingerprint: Option<String>,
    /// Who may subscribe.
    pub authenticator: Arc<dyn Authenticator>,
    /// Failure rate limiting per source address.
    pub limiter: FailureLimiter,
    /// Revoked users.
    pub revoked: RwLock<HashSet<String>>,
    /// Credentials that were accepted at least once: a later refusal of the same
    /// credentials means access was withdrawn (keys are then rotated); a refusal of other
    /// credentials (a wrong password) is just a failed login.
    pub known_good: Mutex<HashSet<(String, [u8; 32])>>,
    /// Rotates a database's key (set by the publisher; used when the authenticator
    /// refuses a user that holds a registration).
    pub rotate: Mutex<Option<RotateFn>>,
    /// Two-phase rounds, votes and acknowledgements.
    pub two_phase: Coordinator,
    /// Registered subscribers by id.
    pub registry: Mutex<HashMap<u64, SubscriberRecord>>,
    /// Recently verified credentials (user, secret digest) → grant, so reconnects do not pay
    /// for a password hash each time. Cleared on revocation.
    pub auth_cache: Mutex<AuthCache>,
}

impl ServerContext {
    /// Marks `user` revoked: its sessions are refused from now on. Marked under the
    /// registry lock, which every key handout holds (see `register`).
    pub fn revoke(&self, user: &str) {
        {
            let mut reg = self.registry.locked();
            self.revoked.write_locked().insert(user.to_owned());
            // Its push targets go with its registrations, at once.
            self.remove_where(&mut reg, |r| r.user == user);
        }
        self.auth_cache.locked().clear();
    }

    /// The authenticator said no to `user`. If it holds registrations (it could decrypt
    /// until now), they are dropped and the databases it read have their keys rotated, as
    /// for an explicit revocation.
    fn on_denied(&self, user: &str) {
        let dbs: HashSet<String> = {
            let mut reg = self.registry.locked();
            let dbs = reg
                .values()
                .filter(|r| r.user == user)
                .map(|r| r.database.clone())
                .collect();
            self.remove_where(&mut reg, |r| r.user == user);
            dbs
        };
        if dbs.is_empty() {
            return;
        }
        self.auth_cache.locked().retain(|(u, _), _| u != user);
        let rotate = self.rotate.locked();
        if let Some(f) = rotate.as_ref() {
            for db in dbs {
                f(&db);
            }
        }
    }

    /// Drops the registrations nobody heard from for `silence` or longer; returns how many.
    /// Their subscribers, if alive, register again with their next report.
    pub fn expire_registrations(&self, now: Instant, silence: Duration) -> usize {
        let mut reg = self.registry.locked();
        self.remove_where(&mut reg, |r| {
            now.saturating_duration_since(r.last_seen) >= silence
        })
        .len()
    }

    /// Notes that registration `id` was heard from.
    fn seen(&self, id: u64, now: Instant) {
        if let Some(r) = self.registry.locked().get_mut(&id) {
            r.last_seen = now;
        }
    }

    fn is_revoked(&self, user: &str) -> bool {
        self.revoked.read_locked().contains(user)
    }
}

/// Rotates the key of the named database.
pub type RotateFn = Box<dyn Fn(&str) + Send + Sync>;

/// Verified credentials: (user, SHA-256 of the secret) → grant and when it was checked.
pub type AuthCache = HashMap<(String, [u8; 32]), (Grant, Instant)>;

/// Most connections served at once. When the table is full, a new connection takes the
/// place of the oldest one that has not completed HELLO; only if every place is held by an
/// authenticated session is the new one closed at once (and counted).
const MAX_CONNECTIONS: usize = 512;
/// Updates per journal read while streaming (bounds memory per connection).
const BATCH_UPDATES: usize = 512;
const BATCH_BYTES: usize = 4 << 20;
/// How often the accept loop checks the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// A connection must complete its TLS handshake and send HELLO within this of being
/// accepted, however it trickles its bytes.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// An authenticated connection that sends no complete request for this long after its last
/// answer is closed (the client reconnects when it needs to). A deadline, not a per-read
/// time-out: bytes trickled without completing a request do not extend it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a client to take what is sent.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a verified credential is remembered.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(30);

/// Open connections.
type Connections = Arc<Mutex<Vec<Connection>>>;

/// One open connection, as the accept thread keeps it: a handle to shut it down, what it is
/// doing, and its thread.
struct Connection {
    tcp: TcpStream,
    state: Arc<ConnState>,
    thread: JoinHandle<()>,
}

/// What a connection is doing, shared by its thread (which updates it) and the accept
/// thread (which closes connections past their deadline, and evicts when the table is full).
#[derive(Debug)]
struct ConnState {
    accepted: Instant,
    /// The phase (top 8 bits) and the milliseconds since `accepted` at which it began.
    word: AtomicU64,
    /// Set once the accept thread has shut the connection down.
    closed: AtomicBool,
}

/// Before HELLO_OK, waiting for the client (TLS handshake, HELLO): closed at
/// `accepted + HELLO_DEADLINE`; evicted first, oldest first.
const WAITING_HELLO: u8 = 0;
/// Before HELLO_OK, handling what the client sent (checking a HELLO: waiting for a place to
/// hash the password, hashing): no deadline (the server's own work is bounded); evicted
/// after every WAITING_HELLO connection.
const CHECKING: u8 = 1;
/// Authenticated, waiting for a request: closed `IDLE_TIMEOUT` after the phase began;
/// never evicted.
const IDLE: u8 = 2;
/// Authenticated, serving a request: `WRITE_TIMEOUT` on every write governs; never
/// evicted.
const BUSY: u8 = 3;

impl ConnState {
    fn new(accepted: Instant) -> ConnState {
        ConnState {
            accepted,
            word: AtomicU64::new(u64::from(WAITING_HELLO) << 56),
            closed: AtomicBool::new(false),
        }
    }

    /// Enters `phase` at `now`.
    fn enter(&self, phase: u8, now: Instant) {
        let ms = now.saturating_duration_since(self.accepted).as_millis() as u64;
        self.word.store(
            (u64::from(phase) << 56) | (ms & ((1 << 56) - 1)),
            Ordering::Release,
        );
    }

    fn phase(&self) -> (u8, Instant) {
        let w = self.word.load(Ordering::Acquire);
        (
            (w >> 56) as u8,
            self.accepted + Duration::from_millis(w & ((1 << 56) - 1)),
        )
    }

    /// When the connection must be closed if it is still in its current phase then.
    fn deadline(&self) -> Option<Instant> {
        match self.phase() {
            (WAITING_HELLO, _) => Some(self.accepted + HELLO_DEADLINE),
            (IDLE, since) => Some(since + IDLE_TIMEOUT),
            _ => None,
        }
    }

    /// Order in which connections are evicted to make room (lowest first); `None`: never.
    fn eviction_rank(&self) -> Option<(u8, Instant)> {
        match self.phase().0 {
            p @ (WAITING_HELLO | CHECKING) => Some((p, self.accepted)),
            _ => None,
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Connection {
    /// Shuts the connection down (its thread then ends at its next read or write), the
    /// first time only, counting it in `counter` first.
    fn close(&self, counter: Option<&AtomicU64>) {
        if self.state.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(c) = counter {
            inc(c);
        }
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}

/// The running server: its address and threads.
pub struct RepairServer {
    addr: SocketAddr,
    ctx: Arc<ServerContext>,
    accept: Option<JoinHandle<()>>,
    conns: Connections,
}

impl RepairServer {
    /// Binds `addr` and starts accepting.
    pub fn start(addr: SocketAddr, ctx: Arc<ServerContext>) -> Result<RepairServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("binding control server {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("control server address", e))?;
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c2, k2) = (ctx.clone(), conns.clone());
        let accept = std::thread::Builder::new()
            .name("mcsync-control-accept".into())
            .spawn(move || accept_loop(listener, c2, k2))
            .map_err(|e| Error::io("spawning control server", e))?;
        Ok(RepairServer {
            addr,
            ctx,
            accept: Some(accept),
            conns,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and joins every thread.
    pub fn shutdown(&mut self) {
        self.ctx.stop.stop();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.conns.locked());
        for c in conns {
            c.close(None);
            let _ = c.thread.join();
        }
    }
}

impl Drop for RepairServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    rc > 0
}

fn accept_loop(listener: TcpListener, ctx: Arc<ServerContext>, conns: Connections) {
    let mut last_sweep = Instant::now();
    while !ctx.stop.is_stopped() {
        let readable = wait_readable(listener.as_raw_fd(), ACCEPT_POLL);
        if !readable || last_sweep.elapsed() >= ACCEPT_POLL {
            last_sweep = Instant::now();
            sweep(&ctx, &conns, last_sweep);
        }
        if !readable {
            continue;
        }
        let (tcp, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                log::warn!("control server accept: {e}");
                continue;
            }
        };
        let mut list = conns.locked();
        list.retain(|c| !c.thread.is_finished());
        if !make_room(&ctx, &list) {
            continue;
        }
        let Ok(shut) = tcp.try_clone() else {
            continue;
        };
        inc(&ctx.counters.repair_sessions);
        let state = Arc::new(ConnState::new(Instant::now()));
        let (c, st) = (ctx.clone(), state.clone());
        let spawned = std::thread::Builder::new()
            .name("mcsync-control-conn".into())
            .spawn(move || {
                if let Err(e) = serve(tcp, peer, &c, &st) {
                    log::debug!("control connection {peer}: {e}");
                }
            });
        if let Ok(thread) = spawned {
            list.push(Connection {
                tcp: shut,
                state,
                thread,
            });
        }
    }
}

/// Closes the connections past their deadline.
fn sweep(ctx: &ServerContext, conns: &Connections, now: Instant) {
    let mut list = conns.locked();
    list.retain(|c| !c.thread.is_finished());
    for c in list.iter() {
        if c.state.deadline().is_some_and(|d| now >= d) {
            c.close(Some(&ctx.counters.control_timeouts));
        }
    }
}

/// Whether a new connection may be served: when the table is full, the oldest connection
/// that has not completed HELLO (one still waiting for the client before one being
/// checked) is closed to make room; if every place is held by an authenticated session,
/// no (counted).
fn make_room(ctx: &ServerContext, list: &[Connection]) -> bool {
    let open = list.iter().filter(|c| !c.state.is_closed()).count();
    if open < MAX_CONNECTIONS {
        return true;
    }
    let victim = list
        .iter()
        .filter(|c| !c.state.is_closed())
        .filter_map(|c| Some((c.state.eviction_rank()?, c)))
        .min_by_key(|(rank, _)| *rank);
    match victim {
        Some((_, c)) => {
            c.close(Some(&ctx.counters.control_evictions));
            true
        }
        None => {
            inc(&ctx.counters.control_refused);
            inc(&ctx.counters.repair_errors);
            false
        }
    }
}
