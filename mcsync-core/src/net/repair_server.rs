//! The publisher's control server: registration (OPEN / CLOSE SUBSCRIPTION) and repair,
//! over TLS 1.3. Every connection starts with an authenticated HELLO; the grant decides
//! which database it may read and which access groups it holds. One thread accepts; one
//! thread serves each connection, so a slow subscriber costs only its own connection and
//! never the multicaster.

// Handlers return the error frame to send as their `Err`; it is rare and written at once.
#![allow(clippy::result_large_err)]

use super::frame::{read_message, write_message};
use super::tls::{ServerTls, Stream};
use super::two_phase::Coordinator;
use super::StopFlag;
use crate::auth::{visible, Authenticator, FailureLimiter, Grant, Refusal, Secret};
use crate::crypto::KeyHandout;
use crate::proto::resync::{child_digests, key_hash, HashIndex, Range};
use crate::stats::{add, inc, PublisherCounters};
use crate::store::publisher::DbTables;
use crate::store::PublisherStore;
use crate::wire::control::{
    DatabaseInfo, ErrorCode, Message, SubscriberReport, CONTROL_VERSION, HELLO_PARTICIPANT,
    MAX_LIST_ENTRIES,
};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            self.revoked
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(user.to_owned());
            reg.retain(|_, r| r.user != user);
        }
        self.auth_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The authenticator said no to `user`. If it holds registrations (it could decrypt
    /// until now), they are dropped and the databases it read have their keys rotated, as
    /// for an explicit revocation.
    fn on_denied(&self, user: &str) {
        let dbs: HashSet<String> = {
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            let dbs = reg
                .values()
                .filter(|r| r.user == user)
                .map(|r| r.database.clone())
                .collect();
            reg.retain(|_, r| r.user != user);
            dbs
        };
        if dbs.is_empty() {
            return;
        }
        self.auth_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(u, _), _| u != user);
        let rotate = self.rotate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = rotate.as_ref() {
            for db in dbs {
                f(&db);
            }
        }
    }

    /// Drops the registrations nobody heard from for `silence` or longer; returns how many.
    /// Their subscribers, if alive, register again with their next report.
    pub fn expire_registrations(&self, now: Instant, silence: Duration) -> usize {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let before = reg.len();
        reg.retain(|_, r| now.saturating_duration_since(r.last_seen) < silence);
        before - reg.len()
    }

    /// Notes that registration `id` was heard from.
    fn seen(&self, id: u64, now: Instant) {
        if let Some(r) = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            r.last_seen = now;
        }
    }

    fn is_revoked(&self, user: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(user)
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
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
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
        let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
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
    let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
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

fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

/// An authenticated session: who, which database, what it may read, and the resync
/// snapshot it is working on.
struct Session {
    user: String,
    id: u64,
    /// Client name and role of the registration (to register it again if it expired).
    client: String,
    participant: bool,
    groups: Vec<String>,
    db: Arc<dyn PublishedDatabase>,
    resync: Option<ResyncSnapshot>,
}

/// The publisher's side of a hash resync: content hashes of the records the session may
/// read, as of one version, and their keys by key hash.
struct ResyncSnapshot {
    index: HashIndex,
    keys: HashMap<u64, Vec<u8>>,
}

fn serve(tcp: TcpStream, peer: SocketAddr, ctx: &ServerContext, state: &ConnState) -> Result<()> {
    // The read time-out is only a backstop: the accept thread enforces HELLO_DEADLINE and
    // IDLE_TIMEOUT as deadlines (see `sweep`).
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))
        .and_then(|_| tcp.set_read_timeout(Some(IDLE_TIMEOUT)))
        .and_then(|_| tcp.set_nodelay(true))
        .map_err(|e| Error::io("control socket options", e))?;
    let stream = ctx.tls.accept(tcp)?;
    let mut conn = BufReader::with_capacity(64 << 10, stream);
    let mut session: Option<Session> = None;
    loop {
        let msg = match read_message(&mut conn, ctx.max_request_frame) {
            Ok(Some((m, _))) => m,
            Ok(None) => return Ok(()),
            // Closed by the accept thread (deadline or eviction): counted there.
            Err(e) if state.is_closed() => return Err(e),
            Err(e) => {
                inc(&ctx.counters.repair_errors);
                if matches!(e, Error::Protocol(_)) {
                    let _ = reply(&mut conn, ctx, &error(ErrorCode::BadRequest, e.to_string()));
                } else {
                    // A failed TLS handshake (or a client that went away) lands here.
                    inc(&ctx.counters.tls_failures);
                }
                return Err(e);
            }
        };
        state.enter(
            if session.is_some() { BUSY } else { CHECKING },
            Instant::now(),
        );
        if let Some(s) = &session {
            if ctx.is_revoked(&s.user) {
                inc(&ctx.counters.auth_failures);
                let m = error(ErrorCode::Auth, format!("user {:?} is revoked", s.user));
                let _ = reply(&mut conn, ctx, &m);
                return Ok(());
            }
            ctx.seen(s.id, Instant::now());
        }
        let mut close = false;
        let answer = match msg {
            hello_msg @ Message::Hello { .. } => match hello(ctx, peer, hello_msg) {
                Ok((s, info)) => {
                    session = Some(s);
                    Ok(Message::HelloOk(info))
                }
                Err(m) => {
                    close = matches!(
                        m,
                        Message::Error {
                            code: ErrorCode::Auth,
                            ..
                        }
                    );
                    Err(m)
                }
            },
            Message::Vote {
                version,
                round,
                prepared,
                reason,
            } => {
                match &session {
                    Some(s) => {
                        let refusal = (!prepared).then_some(reason);
                        if ctx
                            .two_phase
                            .vote(s.db.name(), (version, round), s.id, refusal)
                        {
                            Ok(Message::Ok)
                        } else {
                            Err(error(
                            ErrorCode::BadRequest,
                            format!("no open two-phase round at version {version} for this participant"),
                        ))
                        }
                    }
                    None => Err(error(ErrorCode::BadRequest, "vote before HELLO")),
                }
            }
            Message::Ack { version, round } => match &session {
                Some(s) => {
                    if ctx.two_phase.ack(s.db.name(), (version, round), s.id) {
                        s.db.decision_acknowledged(version);
                    }
                    Ok(Message::Ok)
                }
                None => Err(error(ErrorCode::BadRequest, "ack before HELLO")),
            },
            Message::OutcomeRequest { version, round } => match &session {
                Some(s) => {
                    let state = ctx.two_phase.outcome(
                        s.db.name(),
                        (version, round),
                        s.db.committed_version(),
                    );
                    Ok(Message::Outcome { version, state })
                }
                None => Err(error(ErrorCode::BadRequest, "outcome request before HELLO")),
            },
            Message::Report(r) => match &session {
                Some(s) => report(ctx, s, peer, r),
                None => Err(error(ErrorCode::BadRequest, "report before HELLO")),
            },
            Message::StatusRequest => match &session {
                Some(s) => {
                    let info = s.db.info();
                    Ok(Message::Status {
                        current_version: info.current_version,
                        oldest_version: info.oldest_version,
                        incarnation: info.incarnation,
                    })
                }
                None => Err(error(ErrorCode::BadRequest, "status before HELLO")),
            },
            Message::CompactRequest { first, last } => match &session {
                Some(s) => {
                    let mut w = BufWriter::with_capacity(256 << 10, conn.get_mut());
                    let r = compact(ctx, s.db.as_ref(), first, last, &mut w);
                    w.flush()
                        .map_err(|e| Error::io("flushing compacted catch-up", e))?;
                    r
                }
                None => Err(error(ErrorCode::BadRequest, "catch-up before HELLO")),
            },
            Message::CatchupRequest { ranges } => match &session {
                Some(s) => {
                    let mut w = BufWriter::with_capacity(256 << 10, conn.get_mut());
                    let r = catch_up(ctx, s.db.as_ref(), &ranges, &mut w);
                    w.flush().map_err(|e| Error::io("flushing catch-up", e))?;
                    r
                }
                None => Err(error(ErrorCode::BadRequest, "catch-up before HELLO")),
            },
            Message::PacketRequest { stream_id, ranges } => match &session {
                Some(s) => {
                    let mut w = BufWriter::with_capacity(256 << 10, conn.get_mut());
                    let r = resend(ctx, s.db.as_ref(), stream_id, &ranges, &mut w);
                    w.flush()
                        .map_err(|e| Error::io("flushing packet repair", e))?;
                    r
                }
                None => Err(error(ErrorCode::BadRequest, "packet request before HELLO")),
            },
            Message::ResyncBegin => match &mut session {
                Some(s) => resync_begin(ctx, s),
                None => Err(error(ErrorCode::BadRequest, "resync before HELLO")),
            },
            Message::DigestRequest { ranges } => {
                match session.as_ref().and_then(|s| s.resync.as_ref()) {
                    Some(r) => Ok(Message::DigestReply {
                        digests: child_digests(&r.index, &ranges),
                    }),
                    None => Err(error(ErrorCode::BadRequest, "digests before RESYNC_BEGIN")),
                }
            }
            Message::ListRequest { ranges } => {
                match session.as_ref().and_then(|s| s.resync.as_ref()) {
                    Some(r) => list(r, &ranges),
                    None => Err(error(ErrorCode::BadRequest, "list before RESYNC_BEGIN")),
                }
            }
            Message::FetchRequest { key_hashes } => match &session {
                Some(s) if s.resync.is_some() => {
                    let mut w = BufWriter::with_capacity(256 << 10, conn.get_mut());
                    let r = fetch(ctx, s, &key_hashes, &mut w);
                    w.flush().map_err(|e| Error::io("flushing fetch", e))?;
                    r
                }
                _ => Err(error(ErrorCode::BadRequest, "fetch before RESYNC_BEGIN")),
            },
            Message::CloseSubscription { subscriber_id } => match &session {
                Some(s) => {
                    let mut reg = ctx.registry.lock().unwrap_or_else(|e| e.into_inner());
                    if reg.get(&subscriber_id).is_some_and(|r| r.user == s.user) {
                        reg.remove(&subscriber_id);
                    }
                    close = true;
                    Ok(Message::Ok)
                }
                None => Err(error(ErrorCode::BadRequest, "close before HELLO")),
            },
            _ => Err(error(
                ErrorCode::BadRequest,
                "unexpected message from client",
            )),
        };
        let msg = answer.unwrap_or_else(|m| {
            inc(&ctx.counters.repair_errors);
            m
        });
        reply(&mut conn, ctx, &msg)?;
        if let Some(s) = &session {
            // A long answer (a catch-up stream) is activity too.
            ctx.seen(s.id, Instant::now());
        }
        if close {
            return Ok(());
        }
        // Waiting for the client again: for HELLO (the deadline still counts from the
        // accept), or for the next request.
        state.enter(
            if session.is_some() {
                IDLE
            } else {
                WAITING_HELLO
            },
            Instant::now(),
        );
    }
}

fn reply(conn: &mut BufReader<Box<dyn Stream>>, ctx: &ServerContext, msg: &Message) -> Result<()> {
    let w = conn.get_mut();
    let n = write_message(w, msg)?;
    add(&ctx.counters.repair_bytes_sent, n as u64);
    w.flush()
        .map_err(|e| Error::io("flushing control reply", e))
}

fn authenticate(
    ctx: &ServerContext,
    peer: SocketAddr,
    user: &str,
    secret: &Secret,
) -> std::result::Result<Grant, Message> {
    use sha2::{Digest, Sha256};
    let now = Instant::now();
    let fail = |why: String| {
        inc(&ctx.counters.auth_failures);
        error(ErrorCode::Auth, why)
    };
    if ctx.limiter.is_blocked(peer.ip(), user, now) {
        inc(&ctx.counters.auth_rate_limited);
        return Err(fail(format!(
            "too many failed logins from {}; try again later",
            peer.ip()
        )));
    }
    if ctx.is_revoked(user) {
        // Not counted against the address: a revoked subscriber retrying must not lock
        // out its neighbours behind the same address.
        return Err(fail(format!("user {user:?} is revoked")));
    }
    let digest: [u8; 32] = Sha256::digest(secret.expose().as_bytes()).into();
    let cache_key = (user.to_owned(), digest);
    if let Some((g, at)) = ctx
        .auth_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&cache_key)
    {
        if now.duration_since(*at) < AUTH_CACHE_TTL {
            return Ok(g.clone());
        }
    }
    // Counted as a failure before the (costly) check, in one step with the block check, so
    // that logins arriving together cannot all be checked before any failure is counted;
    // taken back below if it was not one.
    let Some(attempt) = ctx.limiter.attempt(peer.ip(), user, now) else {
        inc(&ctx.counters.auth_rate_limited);
        return Err(fail(format!(
            "too many failed logins from {}; try again later",
            peer.ip()
        )));
    };
    match ctx.authenticator.check(user, secret.expose(), peer) {
        Ok(g) => {
            ctx.limiter.succeeded(attempt, Instant::now());
            ctx.known_good
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cache_key.clone());
            ctx.auth_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cache_key, (g.clone(), now));
            Ok(g)
        }
        Err(Refusal::Busy(why)) => {
            // Not a failed login: counted against nobody, and not an Auth refusal (the
            // client tries again later).
            ctx.limiter.withdraw(attempt);
            inc(&ctx.counters.auth_busy);
            Err(error(ErrorCode::Internal, why))
        }
        Err(Refusal::Denied(why)) => {
            // The failure stays counted.
            drop(attempt);
            let withdrawn = ctx
                .known_good
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&cache_key);
            if withdrawn {
                ctx.on_denied(user);
            }
            Err(fail(why))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn hello(
    ctx: &ServerContext,
    peer: SocketAddr,
    msg: Message,
) -> std::result::Result<(Session, DatabaseInfo), Message> {
    let Message::Hello {
        version,
        database,
        client,
        user,
        secret,
        subscriber_id,
        flags,
    } = msg
    else {
        return Err(error(ErrorCode::BadRequest, "expected HELLO"));
    };
    if version != CONTROL_VERSION {
        return Err(error(
            ErrorCode::Version,
            format!("control protocol {version} unsupported (server speaks {CONTROL_VERSION})"),
        ));
    }
    let grant = authenticate(ctx, peer, &user, &secret)?;
    if !grant.allows(&database) {
        inc(&ctx.counters.auth_failures);
        return Err(error(
            ErrorCode::Auth,
            format!("user {user:?} may not subscribe to database {database:?}"),
        ));
    }
    let found = ctx
        .databases
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&database)
        .cloned();
    let Some(db) = found else {
        return Err(error(
            ErrorCode::UnknownDatabase,
            format!("database {database:?} is not published"),
        ));
    };
    let participant = flags & HELLO_PARTICIPANT != 0;
    if participant && !grant.participant {
        inc(&ctx.counters.auth_failures);
        // A registration that was a participant under an earlier grant votes no more.
        if let Some(r) = ctx
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&subscriber_id)
            .filter(|r| r.user == user && r.database == database)
        {
            r.participant = false;
        }
        return Err(error(
            ErrorCode::Auth,
            format!(
                "user {user:?} may not register as a two-phase participant of database {database:?}"
            ),
        ));
    }
    let record = SubscriberRecord {
        id: subscriber_id,
        user: user.clone(),
        database,
        client,
        peer,
        sessions: 1,
        participant,
        report: None,
        last_seen: Instant::now(),
    };
    let client = record.client.clone();
    let (id, keys) = register(ctx, record, db.as_ref())?;
    db.on_registered();
    inc(&ctx.counters.registrations);
    let mut info = db.info();
    info.keys = keys.keys;
    info.older_keys_below = keys.older_below;
    info.groups = grant.groups.clone();
    info.subscriber_id = id;
    let session = Session {
        user,
        id,
        client,
        participant,
        groups: grant.groups,
        db,
        resync: None,
    };
    Ok((session, info))
}

/// Records a reception report. A registration that expired meanwhile (the subscriber was
/// silent for `registration_expiry`) is registered again under its id.
fn report(
    ctx: &ServerContext,
    s: &Session,
    peer: SocketAddr,
    r: SubscriberReport,
) -> std::result::Result<Message, Message> {
    let now = Instant::now();
    inc(&ctx.counters.reports_received);
    {
        let mut reg = ctx.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = reg.get_mut(&s.id) {
            rec.report = Some((r, now));
            rec.last_seen = now;
            return Ok(Message::Ok);
        }
    }
    let record = SubscriberRecord {
        id: s.id,
        user: s.user.clone(),
        database: s.db.name().to_owned(),
        client: s.client.clone(),
        peer,
        sessions: 1,
        participant: s.participant,
        report: Some((r, now)),
        last_seen: now,
    };
    let (id, _) = register(ctx, record, s.db.as_ref())?;
    if id != s.id {
        // Its id was taken meanwhile: the subscriber must register again to learn its new
        // one (this record would otherwise be orphaned).
        ctx.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        return Err(error(
            ErrorCode::BadRequest,
            "registration expired; register again",
        ));
    }
    Ok(Message::Ok)
}

/// Most registrations one user may hold for one database: one subscriber keeps one record
/// however often it reconnects, so only a client that throws its id away (or a hostile one)
/// reaches this; it must not be able to outnumber everyone else in the adaptation vote.
pub const MAX_REGISTRATIONS_PER_USER: usize = 256;

/// Records the registration and returns its id and the keys it gets; an id from an earlier
/// HELLO of the same user and database is kept, so one subscriber has one record however
/// often it reconnects. Fails when the user already holds [`MAX_REGISTRATIONS_PER_USER`]
/// registrations of the database, or was revoked while it authenticated.
///
/// The registry lock covers the revocation check, the record and the key handout, and
/// [`ServerContext::revoke`] marks the user under the same lock: a HELLO in flight during a
/// revocation either registered (and took the keys before the revocation's rotation) and is
/// dropped by it, or sees the mark — it never gets a key drawn after the revocation.
fn register(
    ctx: &ServerContext,
    mut record: SubscriberRecord,
    db: &dyn PublishedDatabase,
) -> std::result::Result<(u64, KeyHandout), Message> {
    let mut reg = ctx.registry.lock().unwrap_or_else(|e| e.into_inner());
    if ctx.is_revoked(&record.user) {
        inc(&ctx.counters.auth_failures);
        return Err(error(
            ErrorCode::Auth,
            format!("user {:?} is revoked", record.user),
        ));
    }
    if let Some(r) = reg.get_mut(&record.id) {
        if r.user == record.user && r.database == record.database {
            r.sessions += 1;
            r.peer = record.peer;
            r.participant = record.participant;
            return Ok((record.id, db.keys()));
        }
    }
    let held = reg
        .values()
        .filter(|r| r.user == record.user && r.database == record.database)
        .count();
    if held >= MAX_REGISTRATIONS_PER_USER {
        return Err(error(
            ErrorCode::Auth,
            format!(
                "user {:?} already holds {held} registrations of database {:?}; close some \
                 (CLOSE SUBSCRIPTION) or reuse their ids",
                record.user, record.database
            ),
        ));
    }
    // An id the publisher does not know (it restarted) is taken over if free, so a
    // participant keeps its identity; otherwise the server draws one. Ids are random, never
    // counted up from a client's choice: nothing wraps into another user's record.
    if record.id == 0 || reg.contains_key(&record.id) {
        record.id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 && !reg.contains_key(&id) {
                break id;
            }
        };
    }
    let id = record.id;
    reg.insert(id, record);
    Ok((id, db.keys()))
}

fn resync_begin(ctx: &ServerContext, s: &mut Session) -> std::result::Result<Message, Message> {
    let (version, records) = ctx
        .store
        .hash_snapshot(s.db.name(), s.db.tables())
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
    let mut keys = HashMap::with_capacity(records.len());
    let mut entries = Vec::with_capacity(records.len());
    for r in records {
        if visible(&r.groups, &s.groups) {
            let kh = key_hash(&r.key);
            entries.push((kh, r.hash));
            keys.insert(kh, r.key);
        }
    }
    let index = HashIndex::new(entries);
    let root = index.digest(Range::ROOT);
    s.resync = Some(ResyncSnapshot { index, keys });
    inc(&ctx.counters.resyncs_served);
    Ok(Message::ResyncSnapshot {
        version,
        count: root.count,
        sum: root.sum,
    })
}

fn list(r: &ResyncSnapshot, ranges: &[Range]) -> std::result::Result<Message, Message> {
    let mut entries = Vec::new();
    for range in ranges {
        entries.extend_from_slice(r.index.entries(*range));
        if entries.len() > MAX_LIST_ENTRIES {
            return Err(error(
                ErrorCode::BadRequest,
                format!("list of more than {MAX_LIST_ENTRIES} records; ask for smaller ranges"),
            ));
        }
    }
    Ok(Message::ListReply { entries })
}

fn fetch(
    ctx: &ServerContext,
    s: &Session,
    key_hashes: &[u64],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let Some(r) = &s.resync else {
        return Err(error(ErrorCode::BadRequest, "fetch before RESYNC_BEGIN"));
    };
    let keys: Vec<Vec<u8>> = key_hashes
        .iter()
        .filter_map(|kh| r.keys.get(kh).cloned())
        .collect();
    let mut missing = (key_hashes.len() - keys.len()) as u64;
    let records = ctx
        .store
        .get_many(s.db.tables(), &keys)
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
    for (key, record) in keys.into_iter().zip(records) {
        // Deleted since the snapshot, or restricted since to groups this user does not
        // hold: absent for this replica (it deletes its copy).
        let Some((value, _)) = record.filter(|(_, groups)| visible(groups, &s.groups)) else {
            missing += 1;
            continue;
        };
        let n = write_message(w, &Message::FetchRecord { key, value })
            .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        add(&ctx.counters.repair_bytes_sent, n as u64);
    }
    Ok(Message::FetchEnd { missing })
}

/// Encoded journal bytes folded into one compacted update (subscribers use compaction
/// only when their update size limit is at least twice this).
pub const COMPACT_CHUNK_BYTES: usize = 4 << 20;

/// Where a journal answer (catch-up or compacted catch-up) reads from, and how much per
/// read.
struct JournalSource<'a> {
    store: &'a PublisherStore,
    tables: DbTables,
    counters: &'a PublisherCounters,
    /// Most updates and about the most bytes per journal read (a compacted chunk is one
    /// read).
    batch_updates: usize,
    batch_bytes: usize,
    /// Called with the version about to be read before every journal read. The server
    /// passes a no-op; tests trim the journal here, as retention may at any moment
    /// between two reads of a long answer.
    before_read: &'a mut dyn FnMut(u64),
}

impl JournalSource<'_> {
    fn internal(e: Error) -> Message {
        error(ErrorCode::Internal, e.to_string())
    }

    /// The oldest version the journal holds now.
    fn oldest(&self) -> std::result::Result<u64, Message> {
        self.store
            .oldest_version(self.tables)
            .map_err(Self::internal)
    }

    /// Reads up to a batch of journal entries `next..=last` and checks they are exactly
    /// `next, next + 1, …`: the journal is contiguous from its oldest version, so a
    /// version missing here was trimmed (by retention, while an earlier part of the
    /// answer was being sent). Serving from the next version held instead would move the
    /// replica past changes it never received, so the answer is ERROR Trimmed, and the
    /// subscriber resyncs by hashes.
    fn read(&mut self, next: u64, last: u64) -> std::result::Result<Vec<(u64, Vec<u8>)>, Message> {
        (self.before_read)(next);
        let batch = self
            .store
            .read_journal(
                self.tables,
                next,
                last,
                self.batch_updates,
                self.batch_bytes,
            )
            .map_err(Self::internal)?;
        for (want, &(v, _)) in (next..).zip(batch.iter()) {
            if v != want {
                return Err(self.missing(want, Some(v)));
            }
        }
        if batch.is_empty() {
            return Err(self.missing(next, None));
        }
        Ok(batch)
    }

    /// The answer when version `want` is not in the journal (`held` is the next one it
    /// holds, if any within the request).
    fn missing(&self, want: u64, held: Option<u64>) -> Message {
        let oldest = match self.oldest() {
            Ok(o) => o,
            Err(m) => return m,
        };
        let held = held.map_or_else(String::new, |v| format!("; next held is {v}"));
        error(
            ErrorCode::Trimmed,
            format!(
                "version {want} is no longer in the journal (trimmed while the answer was \
                 being sent; oldest is now {oldest}{held})"
            ),
        )
    }
}

/// Streams versions `first..=last` compacted: the journal is read in chunks, and each
/// chunk becomes one update at the chunk's last version holding only the latest operation
/// on each key it touched, sent as COMPACT_UPDATE naming the chunk's first version.
/// Applied in order after version `first - 1`, each leaves the replica exactly at the
/// master's state of its version.
fn compact(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    first: u64,
    last: u64,
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let mut src = JournalSource {
        store: &ctx.store,
        tables: db.tables(),
        counters: &ctx.counters,
        batch_updates: usize::MAX,
        batch_bytes: COMPACT_CHUNK_BYTES,
        before_read: &mut |_| {},
    };
    compact_from(&mut src, db.committed_version(), first, last, w)
}

/// [`compact`] from a journal source, `current` being the latest committed version.
fn compact_from(
    src: &mut JournalSource<'_>,
    current: u64,
    first: u64,
    last: u64,
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    if first > current {
        return Err(error(
            ErrorCode::NoSuchVersion,
            format!("versions {first}..={last} do not exist: latest version is {current}"),
        ));
    }
    let oldest = src.oldest()?;
    if oldest > first {
        return Err(error(
            ErrorCode::Trimmed,
            format!("version {first} is no longer in the journal (oldest is {oldest})"),
        ));
    }
    inc(&src.counters.repairs_served);
    let limits = crate::wire::update::Limits {
        max_update_bytes: usize::MAX,
    };
    let last = last.min(current);
    let mut next = first;
    while next <= last {
        let batch = src.read(next, last)?;
        let top = batch.last().map_or(next, |b| b.0);
        let mut latest: BTreeMap<Vec<u8>, crate::Op> = BTreeMap::new();
        let mut ts = 0;
        for (_, bytes) in &batch {
            let u = crate::wire::update::decode_update(bytes, &limits)
                .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
            ts = u.timestamp_us;
            for op in u.ops {
                latest.insert(op.key.clone(), op);
            }
        }
        let u = crate::Update {
            version: top,
            timestamp_us: ts,
            ops: latest.into_values().collect(),
            reset: false,
        };
        let update = crate::wire::update::update_to_vec(&u);
        let n = write_message(
            w,
            &Message::CompactUpdate {
                first: next,
                update,
            },
        )
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        inc(&src.counters.repair_updates_sent);
        add(&src.counters.repair_bytes_sent, n as u64);
        crate::crash::point("repair.compact");
        next = top + 1;
    }
    Ok(Message::CatchupEnd {
        current_version: current,
    })
}

/// Most packets resent for one request.
const MAX_RESEND: u64 = 65_536;

fn resend(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    stream_id: u32,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let total: u64 = ranges.iter().map(|&(a, b)| b - a + 1).sum();
    if total > MAX_RESEND {
        return Err(error(
            ErrorCode::BadRequest,
            format!("{total} packets requested; at most {MAX_RESEND} per request"),
        ));
    }
    inc(&ctx.counters.packet_repairs_served);
    let mut missing = 0;
    for &(first, last) in ranges {
        for seq in first..=last {
            let Some(d) = db.resend(stream_id, seq) else {
                missing += 1;
                continue;
            };
            let n = write_message(w, &Message::PacketData(d.to_vec()))
                .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
            inc(&ctx.counters.packets_resent);
            add(&ctx.counters.repair_bytes_sent, n as u64);
        }
    }
    add(&ctx.counters.packets_not_resent, missing);
    Ok(Message::PacketEnd { missing })
}

fn catch_up(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let mut src = JournalSource {
        store: &ctx.store,
        tables: db.tables(),
        counters: &ctx.counters,
        batch_updates: BATCH_UPDATES,
        batch_bytes: BATCH_BYTES,
        before_read: &mut |_| {},
    };
    catch_up_from(&mut src, db.committed_version(), ranges, w)
}

/// Streams every version of `ranges` (each capped at `current`, the latest committed
/// version) from the journal, in order, each range exactly: a version trimmed meanwhile
/// ends the answer with ERROR Trimmed rather than being skipped.
fn catch_up_from(
    src: &mut JournalSource<'_>,
    current: u64,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let oldest = src.oldest()?;
    if let Some(&(first, last)) = ranges.iter().find(|&&(a, _)| a > current) {
        return Err(error(
            ErrorCode::NoSuchVersion,
            format!("versions {first}..={last} do not exist: latest version is {current}"),
        ));
    }
    if let Some(&(first, _)) = ranges.first() {
        if oldest > first {
            return Err(error(
                ErrorCode::Trimmed,
                format!("version {first} is no longer in the journal (oldest is {oldest})"),
            ));
        }
    }
    inc(&src.counters.repairs_served);
    for &(first, last) in ranges {
        let last = last.min(current);
        let mut next = first;
        while next <= last {
            let batch = src.read(next, last)?;
            let top = batch.last().map_or(next, |b| b.0);
            for (_, bytes) in batch {
                let n = write_message(w, &Message::CatchupUpdate(bytes))
                    .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
                inc(&src.counters.repair_updates_sent);
                add(&src.counters.repair_bytes_sent, n as u64);
            }
            next = top + 1;
        }
    }
    Ok(Message::CatchupEnd {
        current_version: current,
    })
}

#[cfg(test)]
mod tests {
    //! Journal answers against a real LMDB store, with retention trimming the journal
    //! between two reads of one answer (the `before_read` hook), as it may on a live
    //! publisher while a long catch-up is being streamed.
    use super::*;
    use crate::config::Retention;
    use crate::store::publisher::JournalEntry;
    use crate::wire::update::{peek_version, update_to_vec};
    use crate::{Op, Update};

    const DB: &str = "db";

    /// A store holding versions `1..=n` of `DB`, each putting one ~100-byte record.
    fn journal(n: u64) -> (tempfile::TempDir, PublisherStore, DbTables) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = PublisherStore::open(dir.path(), 16 << 20).expect("store");
        let tables = store.tables(DB).expect("tables");
        for v in 1..=n {
            let u = Update {
                version: v,
                timestamp_us: v,
                ops: vec![Op::put(format!("k{}", v % 4), vec![v as u8; 100])],
                reset: false,
            };
            let encoded = update_to_vec(&u);
            let entry = JournalEntry {
                name: DB,
                tables,
                update: &u,
                encoded: &encoded,
            };
            store.append(&[entry]).expect("append");
        }
        (dir, store, tables)
    }

    /// Trims the journal so that it keeps only its newest `keep` versions.
    fn trim_to(store: &PublisherStore, tables: DbTables, keep: u64) {
        let policy = Retention {
            max_bytes: 0,
            max_age: Duration::from_secs(3600),
            min_count: keep,
            min_free_disk_bytes: 0,
        };
        store
            .trim_journal(DB, tables, &policy, 0, usize::MAX)
            .expect("trim");
    }

    /// The frames written, parsed.
    fn frames(mut bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some((m, _)) = read_message(&mut bytes, 1 << 20).expect("frame") {
            out.push(m);
        }
        out
    }

    /// Runs `f` with a journal source reading `batch_updates` per read (or chunks of about
    /// three updates when compacting), trimming the journal to its newest `keep` versions
    /// just before the read that starts at `trim_at`.
    fn with_source<T>(
        store: &PublisherStore,
        tables: DbTables,
        batch_updates: usize,
        trim_at: Option<(u64, u64)>,
        f: impl FnOnce(&mut JournalSource<'_>) -> T,
    ) -> T {
        let counters = PublisherCounters::default();
        // Every update of `journal` encodes to the same size: three fit a read, four do not.
        let one = store
            .read_journal(tables, 1, 1, 1, usize::MAX)
            .expect("read")[0]
            .1
            .len();
        let mut hook = |next: u64| {
            if let Some((at, keep)) = trim_at {
                if next == at {
                    trim_to(store, tables, keep);
                }
            }
        };
        let mut src = JournalSource {
            store,
            tables,
            counters: &counters,
            batch_updates,
            batch_bytes: 3 * one + one / 2,
            before_read: &mut hook,
        };
        f(&mut src)
    }

    fn is_trimmed(r: &std::result::Result<Message, Message>) -> bool {
        matches!(
            r,
            Err(Message::Error {
                code: ErrorCode::Trimmed,
                ..
            })
        )
    }

    #[test]
    fn connection_deadlines_follow_the_phase() {
        let t = Instant::now();
        let c = ConnState::new(t);
        // Before HELLO the deadline counts from the accept, whatever the client sends.
        assert_eq!(c.deadline(), Some(t + HELLO_DEADLINE));
        c.enter(CHECKING, t + Duration::from_secs(3));
        assert_eq!(
            c.deadline(),
            None,
            "checking a HELLO is the server's own work"
        );
        c.enter(WAITING_HELLO, t + Duration::from_secs(4));
        assert_eq!(
            c.deadline(),
            Some(t + HELLO_DEADLINE),
            "a refused HELLO gains nothing"
        );
        // Authenticated: idle for IDLE_TIMEOUT in all after the last answer.
        c.enter(IDLE, t + Duration::from_secs(5));
        assert_eq!(
            c.deadline(),
            Some(t + Duration::from_secs(5) + IDLE_TIMEOUT)
        );
        c.enter(BUSY, t + Duration::from_secs(6));
        assert_eq!(
            c.deadline(),
            None,
            "a request being served is bounded by its writes"
        );
        c.enter(IDLE, t + Duration::from_secs(100));
        assert_eq!(
            c.deadline(),
            Some(t + Duration::from_secs(100) + IDLE_TIMEOUT)
        );
    }

    #[test]
    fn eviction_takes_connections_waiting_for_hello_first_oldest_first() {
        let t = Instant::now();
        let at = |s: u64, phase: u8| {
            let c = ConnState::new(t + Duration::from_secs(s));
            c.enter(phase, t + Duration::from_secs(s + 1));
            c
        };
        let conns = [
            at(0, IDLE),
            at(1, CHECKING),
            at(2, WAITING_HELLO),
            at(3, BUSY),
            at(4, WAITING_HELLO),
        ];
        let order = |cs: &[ConnState]| {
            let mut ranked: Vec<(usize, (u8, Instant))> = cs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i, c.eviction_rank()?)))
                .collect();
            ranked.sort_by_key(|&(_, r)| r);
            ranked.into_iter().map(|(i, _)| i).collect::<Vec<_>>()
        };
        assert_eq!(order(&conns), vec![2, 4, 1]);
    }

    #[test]
    fn compacted_chunks_name_their_first_version_and_cover_the_range() {
        let (_dir, store, tables) = journal(10);
        let mut out = Vec::new();
        let r = with_source(&store, tables, usize::MAX, None, |src| {
            compact_from(src, 10, 1, 10, &mut out)
        });
        assert_eq!(
            r,
            Ok(Message::CatchupEnd {
                current_version: 10
            })
        );
        let chunks: Vec<(u64, u64)> = frames(&out)
            .into_iter()
            .map(|m| match m {
                Message::CompactUpdate { first, update } => {
                    (first, peek_version(&update).expect("version"))
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(chunks, vec![(1, 3), (4, 6), (7, 9), (10, 10)]);
    }

    #[test]
    fn compaction_trimmed_between_chunks_answers_trimmed() {
        let (_dir, store, tables) = journal(10);
        let mut out = Vec::new();
        // Versions 1..=5 go just before the second chunk (4..) is read: before the fix
        // the second chunk started at 6 and claimed to cover 4..=8.
        let r = with_source(&store, tables, usize::MAX, Some((4, 5)), |src| {
            compact_from(src, 10, 1, 10, &mut out)
        });
        assert!(is_trimmed(&r), "{r:?}");
        let sent = frames(&out);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(
            matches!(&sent[0], Message::CompactUpdate { first: 1, update }
            if peek_version(update).ok() == Some(3))
        );
    }

    #[test]
    fn catch_up_trimmed_between_reads_answers_trimmed() {
        let (_dir, store, tables) = journal(10);
        let mut out = Vec::new();
        let r = with_source(&store, tables, 3, Some((4, 5)), |src| {
            catch_up_from(src, 10, &[(1, 10)], &mut out)
        });
        assert!(is_trimmed(&r), "{r:?}");
        let versions: Vec<u64> = frames(&out)
            .into_iter()
            .map(|m| match m {
                Message::CatchupUpdate(b) => peek_version(&b).expect("version"),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(versions, vec![1, 2, 3], "nothing after the trimmed version");
    }

    #[test]
    fn a_later_range_trimmed_meanwhile_answers_trimmed() {
        let (_dir, store, tables) = journal(10);
        let mut out = Vec::new();
        // The second range (5..=6) loses version 5 while the first is being sent.
        let r = with_source(&store, tables, 512, Some((5, 5)), |src| {
            catch_up_from(src, 10, &[(1, 2), (5, 6)], &mut out)
        });
        assert!(is_trimmed(&r), "{r:?}");
        assert_eq!(frames(&out).len(), 2, "versions 1 and 2 only");
    }

    #[test]
    fn catch_up_untouched_sends_every_version_of_every_range() {
        let (_dir, store, tables) = journal(10);
        let mut out = Vec::new();
        let r = with_source(&store, tables, 3, None, |src| {
            catch_up_from(src, 10, &[(2, 4), (6, 12)], &mut out)
        });
        assert_eq!(
            r,
            Ok(Message::CatchupEnd {
                current_version: 10
            })
        );
        let versions: Vec<u64> = frames(&out)
            .into_iter()
            .map(|m| match m {
                Message::CatchupUpdate(b) => peek_version(&b).expect("version"),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(versions, vec![2, 3, 4, 6, 7, 8, 9, 10]);
    }
}
