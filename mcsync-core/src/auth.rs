//! Authentication and authorization of subscribers: the [`Authenticator`] trait a host
//! implements, a built-in [`UsersFile`] with salted argon2 password hashes, a per-source
//! rate limiter for failures, and a cap on concurrent password hashing.

use crate::{Error, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, PasswordHasher, Salt, SaltString};
use argon2::Argon2;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A user's secret: redacted in `Debug` output and wiped from memory on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(zeroize::Zeroizing::new(s.into()))
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret::new(s)
    }
}

/// What an authenticated user may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// Databases the user may subscribe to; `None` means every database.
    pub databases: Option<Vec<String>>,
    /// The user's access groups: records restricted to groups are visible to the user only
    /// if it holds one of them.
    pub groups: Vec<String>,
    /// Whether the user may register as a two-phase participant of the databases it may
    /// subscribe to. A participant votes on every two-phase update of the database and so
    /// can refuse (veto) or stall them all; grant it only to trusted replicas.
    pub participant: bool,
}

impl Grant {
    /// A grant to every database with the given groups (not as a two-phase participant).
    pub fn all(groups: &[&str]) -> Grant {
        Grant {
            databases: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            participant: false,
        }
    }

    /// The same grant, also allowing registration as a two-phase participant.
    pub fn with_participant(mut self) -> Grant {
        self.participant = true;
        self
    }

    /// Whether the grant covers `database`.
    pub fn allows(&self, database: &str) -> bool {
        self.databases
            .as_ref()
            .is_none_or(|d| d.iter().any(|x| x == database))
    }
}

/// Whether a record restricted to `record_groups` (none: everyone) is visible to a holder of
/// `mine`.
pub(crate) fn visible(record_groups: &[String], mine: &[String]) -> bool {
    record_groups.is_empty() || record_groups.iter().any(|g| mine.contains(g))
}

/// Why a login was not accepted, as [`Authenticator::check`] says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The credentials were checked and refused; the message is for the client (it should
    /// not say whether the user exists). A failed login.
    Denied(String),
    /// The credentials could not be checked now (too many checks in progress); the client
    /// should try again later. Not a failed login: it counts against no user and no address.
    Busy(String),
}

/// Decides who may subscribe. Called on every registration and every repair session, from
/// the publisher's connection threads (so it must be thread-safe).
pub trait Authenticator: Send + Sync {
    /// Checks `user` and `secret` (sent by `peer` over the TLS session). Returns the grant,
    /// or an error message for the client (which should not say whether the user exists).
    fn authenticate(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, String>;

    /// What the publisher calls: [`authenticate`](Authenticator::authenticate), except that
    /// an authenticator that bounds its own work may answer [`Refusal::Busy`] instead of
    /// checking. The default calls `authenticate` and calls every refusal
    /// [`Refusal::Denied`].
    fn check(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, Refusal> {
        self.authenticate(user, secret, peer)
            .map_err(Refusal::Denied)
    }
}

impl<F> Authenticator for F
where
    F: Fn(&str, &str, SocketAddr) -> Result<Grant, String> + Send + Sync,
{
    fn authenticate(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, String> {
        self(user, secret, peer)
    }
}

/// Most password checks (argon2 runs: about 19 MiB and a few tens of milliseconds of one
/// core each with the default parameters) that [`UsersFile`] runs at once in this process;
/// more wait in line, first come first served.
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// Longest wait in line for a password check; a login still waiting then is answered
/// [`Refusal::Busy`] ("publisher busy"). Shorter than a subscriber's control I/O time-out
/// (10 s), so the client hears why.
pub const HASH_WAIT: Duration = Duration::from_secs(5);

/// A counting semaphore that lets its waiters through in the order they came.
#[derive(Debug)]
struct HashGate {
    permits: usize,
    state: Mutex<GateState>,
    turn: Condvar,
}

#[derive(Debug)]
struct GateState {
    running: usize,
    next_ticket: u64,
    queue: VecDeque<u64>,
}

/// A place in a [`HashGate`]; gives it back when dropped.
#[derive(Debug)]
struct HashPermit<'a>(&'a HashGate);

impl HashGate {
    const fn new(permits: usize) -> HashGate {
        HashGate {
            permits,
            state: Mutex::new(GateState {
                running: 0,
                next_ticket: 0,
                queue: VecDeque::new(),
            }),
            turn: Condvar::new(),
        }
    }

    /// Waits up to `wait` for a place, behind everyone who asked before.
    fn acquire(&self, wait: Duration) -> Option<HashPermit<'_>> {
        let deadline = Instant::now() + wait;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        loop {
            if st.queue.front() == Some(&ticket) && st.running < self.permits {
                st.queue.pop_front();
                st.running += 1;
                // The next in line may fit too.
                self.turn.notify_all();
                return Some(HashPermit(self));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.queue.retain(|&t| t != ticket);
                // If this one was at the front, the next may go now.
                self.turn.notify_all();
                return None;
            }
            st = self
                .turn
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for HashPermit<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        st.running -= 1;
        self.0.turn.notify_all();
    }
}

/// The process's password checks (every [`UsersFile`] shares it: the memory is the
/// process's).
static HASHING: HashGate = HashGate::new(MAX_CONCURRENT_HASHES);

/// Verifies `password` against a PHC `hash` as argon2's `verify_password` does (with the
/// algorithm, version, parameters and salt the hash names; constant-time comparison), but
/// with its work memory mapped for this one check and unmapped after it. Through the heap,
/// each connection thread's malloc arena would keep a freed 19 MiB area resident: a few
/// hundred megabytes over many threads, though only [`MAX_CONCURRENT_HASHES`] run at once.
fn verify(password: &[u8], hash: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(hash),
        argon2::Algorithm::try_from(hash.algorithm),
    ) else {
        return false;
    };
    let Ok(version) = hash.version.map(argon2::Version::try_from).transpose() else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let Some(memory) = BlockMemory::new(params.block_count()) else {
        return false;
    };
    let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
    Argon2::new(algorithm, version.unwrap_or_default(), params)
        .hash_password_into_with_memory(password, salt, &mut out, memory)
        .is_ok()
        // `Output` compares in constant time.
        && Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// Zero-filled argon2 work memory in an anonymous mapping of its own, returned to the
/// system when dropped.
struct BlockMemory {
    ptr: std::ptr::NonNull<argon2::Block>,
    len: usize,
}

impl BlockMemory {
    fn new(len: usize) -> Option<BlockMemory> {
        let bytes = len.checked_mul(std::mem::size_of::<argon2::Block>())?;
        if bytes == 0 {
            return None;
        }
        // SAFETY: an anonymous private mapping (no file, no fixed address); failure is
        // checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let ptr = std::ptr::NonNull::new(p.cast::<argon2::Block>())?;
        Some(BlockMemory { ptr, len })
    }
}

impl AsMut<[argon2::Block]> for BlockMemory {
    fn as_mut(&mut self) -> &mut [argon2::Block] {
        // SAFETY: the mapping holds `len` blocks, is page-aligned (more than a block's 64
        // bytes), zero-filled (a valid block is any 128 u64s), and exclusively ours while
        // `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for BlockMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, of exactly this size, unmapped once.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<argon2::Block>(),
            );
        }
    }
}

/// Hashes a password with argon2id and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Config(format!("hashing password: {e}")))
}

#[derive(Debug, Clone)]
struct UserEntry {
    hash: String,
    grant: Grant,
}

/// The built-in authenticator: a text file, one user per line:
///
/// ```text
/// # name   argon2 hash (PHC)            databases (or *)   groups (or -)   [participant]
/// alice    $argon2id$v=19$m=19456,...   inventory,orders   sales,emea
/// bob      $argon2id$v=19$m=19456,...   *                  -               participant
/// ```
///
/// The optional fifth field `participant` lets the user register as a two-phase
/// participant. Blank lines and lines starting with `#` are ignored. `mcsync users add` writes entries.
#[derive(Debug)]
pub struct UsersFile {
    path: PathBuf,
    users: HashMap<String, UserEntry>,
    /// What an unknown user's secret is checked against: a PHC string with the parameters
    /// (and so the cost) of the file's first hash, whose output nothing hashes to.
    dummy: String,
}

/// A PHC string with the algorithm, version, parameters and salt of `like` (or, without
/// it or if it is not an argon2 hash, of [`hash_password`]) and an all-zero output of the same length: verifying any
/// password against it costs what verifying against `like` costs, and fails.
fn dummy_hash(like: Option<&str>) -> String {
    let params = ParamsString::try_from(&argon2::Params::default()).ok();
    let default = params.map(|params| PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params,
        salt: Salt::from_b64("bWNzeW5jLWR1bW15LXNhbHQ").ok(),
        hash: Output::new(&[0; 32]).ok(),
    });
    let template = like
        .and_then(|h| PasswordHash::new(h).ok())
        .filter(|h| {
            argon2::Algorithm::try_from(h.algorithm).is_ok() && argon2::Params::try_from(h).is_ok()
        })
        .or(default);
    let Some(mut h) = template else {
        return String::new();
    };
    let len = h.hash.map_or(32, |o| o.len());
    h.hash = Output::new(&vec![0; len]).ok();
    h.to_string()
}

fn split_list(field: &str, any: &str) -> Option<Vec<String>> {
    if field == any {
        return None;
    }
    Some(
        field
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

impl UsersFile {
    /// Reads and checks a users file; errors name the line.
    pub fn load(path: &Path) -> Result<UsersFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading users file {}", path.display()), e))?;
        let mut users = HashMap::new();
        let mut first_hash = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let bad =
                |why: &str| Error::Config(format!("{} line {}: {why}", path.display(), i + 1));
            let participant = match f.get(4) {
                _ if !(4..=5).contains(&f.len()) => {
                    return Err(bad("expected: name hash databases groups [participant]"))
                }
                None => false,
                Some(&"participant") => true,
                Some(other) => {
                    return Err(bad(&format!(
                        "fifth field is {other:?}; the only one allowed is \"participant\""
                    )))
                }
            };
            PasswordHash::new(f[1]).map_err(|_| bad("password hash is not a PHC string"))?;
            let entry = UserEntry {
                hash: f[1].to_owned(),
                grant: Grant {
                    databases: split_list(f[2], "*"),
                    groups: split_list(f[3], "-").unwrap_or_default(),
                    participant,
                },
            };
            first_hash.get_or_insert_with(|| entry.hash.clone());
            if users.insert(f[0].to_owned(), entry).is_some() {
                return Err(bad("user listed twice"));
            }
        }
        Ok(UsersFile {
            path: path.to_owned(),
            users,
            dummy: dummy_hash(first_hash.as_deref()),
        })
    }

    /// Appends a user to a users file (creating it), hashing the password. `participant`
    /// lets the user register as a two-phase participant.
    pub fn add_user(
        path: &Path,
        name: &str,
        password: &str,
        databases: Option<&[String]>,
        groups: &[String],
        participant: bool,
    ) -> Result<()> {
        let valid = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == ',');
        if !valid(name)
            || !databases.unwrap_or_default().iter().all(|d| valid(d))
            || !groups.iter().all(|g| valid(g))
        {
            return Err(Error::Config(
                "user, database and group names must be non-empty, without spaces or commas".into(),
            ));
        }
        if password.is_empty() {
            return Err(Error::Config("a user's password must not be empty".into()));
        }
        if databases.is_some_and(|d| d.is_empty()) {
            return Err(Error::Config(
                "databases must name at least one database (None: every database)".into(),
            ));
        }
        if path.exists() && UsersFile::load(path)?.users.contains_key(name) {
            return Err(Error::Config(format!(
                "user {name:?} already in {}",
                path.display()
            )));
        }
        let dbs = databases.map_or("*".to_owned(), |d| d.join(","));
        let gs = if groups.is_empty() {
            "-".to_owned()
        } else {
            groups.join(",")
        };
        let role = if participant { " participant" } else { "" };
        let line = format!("{name} {} {dbs} {gs}{role}\n", hash_password(password)?);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening users file {}", path.display()), e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(format!("writing users file {}", path.display()), e))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Authenticator for UsersFile {
    fn authenticate(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, String> {
        self.check(user, secret, peer).map_err(|r| match r {
            Refusal::Denied(m) | Refusal::Busy(m) => m,
        })
    }

    /// Verifies the secret against the user's hash, or, for an unknown user, against a
    /// dummy hash of the same cost, so neither the answer nor its timing tells whether the
    /// user exists. Every verification waits for one of [`MAX_CONCURRENT_HASHES`] places
    /// (in order of arrival, at most [`HASH_WAIT`]; then [`Refusal::Busy`]), which bounds
    /// the memory and CPU that logins can take however many arrive at once.
    fn check(&self, user: &str, secret: &str, _peer: SocketAddr) -> Result<Grant, Refusal> {
        self.check_in(&HASHING, HASH_WAIT, user, secret)
    }
}

impl UsersFile {
    /// [`check`](Authenticator::check), waiting up to `wait` for a place in `gate`.
    fn check_in(
        &self,
        gate: &HashGate,
        wait: Duration,
        user: &str,
        secret: &str,
    ) -> Result<Grant, Refusal> {
        let denied = || Refusal::Denied("unknown user or wrong password".to_owned());
        let entry = self.users.get(user);
        let hash = PasswordHash::new(entry.map_or(self.dummy.as_str(), |u| u.hash.as_str()))
            .map_err(|_| denied())?;
        let Some(permit) = gate.acquire(wait) else {
            return Err(Refusal::Busy(format!(
                "publisher busy: too many logins waiting to be checked (none could start \
                 within {} ms); try again later",
                wait.as_millis()
            )));
        };
        let verified = verify(secret.as_bytes(), &hash);
        drop(permit);
        match entry {
            Some(u) if verified => Ok(u.grant.clone()),
            _ => Err(denied()),
        }
    }
}

/// Failures counted since a window start, and the end of a block if one is in force.
type FailureWindow = (u32, Instant, Option<Instant>);

/// How many times the per-user threshold one address may fail, over all user names, before
/// it is blocked for every user that has not logged in from it before.
const ADDRESS_FACTOR: u32 = 10;

/// How long a successful login keeps its (address, user) exempt from an address block.
const TRUSTED_FOR: Duration = Duration::from_secs(24 * 3600);

/// Limits authentication failures, per (source address, user) and per source address.
///
/// - After `max_failures` failures for one user from one address within `window`, that user
///   is refused from that address, unchecked, for `block_for`. Only that user's own success
///   clears that count: a valid credential cannot be interleaved to reset guesses for others.
/// - After `ADDRESS_FACTOR × max_failures` failures from one address over all user names
///   (password spraying, unknown users), the address is blocked for every user that has not
///   logged in successfully from it within a day. Hosts behind one NAT, or on one machine,
///   share an address: a user that is known there keeps getting in.
///
/// The publisher counts a login as a failure *before* its secret is checked
/// ([`attempt`](FailureLimiter::attempt)), and takes the count back if it turns out not to
/// be one ([`succeeded`](FailureLimiter::succeeded), [`withdraw`](FailureLimiter::withdraw)).
/// So many logins arriving at once cannot all pass the check before any failure is counted:
/// at most `max_failures` checks of one user, and `ADDRESS_FACTOR × max_failures` over all
/// users, run per address and window.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    block_for: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    by_address: HashMap<IpAddr, FailureWindow>,
    by_user: HashMap<(IpAddr, String), FailureWindow>,
    trusted: HashMap<(IpAddr, String), Instant>,
}

/// Counts one failure in `w`; blocks when it reaches `max`. Returns the start of the window
/// it was counted in.
fn count(
    w: &mut FailureWindow,
    now: Instant,
    window: Duration,
    max: u32,
    block_for: Duration,
) -> Instant {
    if now.duration_since(w.1) > window {
        *w = (0, now, None);
    }
    w.0 += 1;
    if w.0 >= max {
        w.2 = Some(now + block_for);
    }
    w.1
}

/// Takes back one failure counted in the window that started at `start` (if that window
/// is still the current one), as if it had never been counted: a block that it completed
/// is lifted.
fn uncount(w: Option<&mut FailureWindow>, start: Instant, max: u32) {
    if let Some(w) = w.filter(|w| w.1 == start && w.0 > 0) {
        w.0 -= 1;
        if w.0 < max {
            w.2 = None;
        }
    }
}

/// A login counted in advance as a failure by [`FailureLimiter::attempt`], while its
/// secret is checked. Dropping it leaves the failure counted; [`FailureLimiter::succeeded`]
/// and [`FailureLimiter::withdraw`] take it back.
#[derive(Debug)]
#[must_use = "a login that did not fail must be given back to the limiter"]
pub struct Attempt {
    ip: IpAddr,
    user: String,
    /// Start of the per-user and of the per-address window it was counted in.
    user_window: Instant,
    address_window: Instant,
}

fn blocked(w: Option<&FailureWindow>, now: Instant) -> bool {
    w.and_then(|&(_, _, until)| until)
        .is_some_and(|until| now < until)
}

impl FailureLimiter {
    /// A limiter with the given thresholds.
    pub fn new(max_failures: u32, window: Duration, block_for: Duration) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            block_for,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// Whether `user` from `ip` is currently refused without checking.
    pub fn is_blocked(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::blocked_in(&st, ip, user, now)
    }

    fn blocked_in(st: &LimiterState, ip: IpAddr, user: &str, now: Instant) -> bool {
        let key = (ip, user.to_owned());
        if blocked(st.by_user.get(&key), now) {
            return true;
        }
        let trusted = st
            .trusted
            .get(&key)
            .is_some_and(|&at| now.duration_since(at) < TRUSTED_FOR);
        !trusted && blocked(st.by_address.get(&ip), now)
    }

    /// A login of `user` from `ip` is about to be checked: unless it is blocked (`None`,
    /// nothing counted), counts it as a failure now, in one step with the block check, and
    /// returns the [`Attempt`] to settle once the check is done.
    pub fn attempt(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Attempt> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if Self::blocked_in(&st, ip, user, now) {
            return None;
        }
        let (user_window, address_window) = self.count_in(&mut st, ip, user, now);
        Some(Attempt {
            ip,
            user: user.to_owned(),
            user_window,
            address_window,
        })
    }

    /// The attempt's login succeeded: takes its failure back from the address's count and
    /// records the success (see [`success`](FailureLimiter::success)).
    pub fn succeeded(&self, a: Attempt, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.address_max();
        uncount(st.by_address.get_mut(&a.ip), a.address_window, max);
        Self::success_in(&mut st, a.ip, &a.user, now);
    }

    /// The attempt's secret could not be checked (the server was busy): takes its failure
    /// back from both counts, so server load never counts against a user or an address.
    pub fn withdraw(&self, a: Attempt) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (max, address_max) = (self.max_failures, self.address_max());
        uncount(st.by_user.get_mut(&(a.ip, a.user)), a.user_window, max);
        uncount(st.by_address.get_mut(&a.ip), a.address_window, address_max);
    }

    fn address_max(&self) -> u32 {
        self.max_failures.saturating_mul(ADDRESS_FACTOR)
    }

    /// Records a failed login of `user` from `ip`.
    pub fn failure(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.count_in(&mut st, ip, user, now);
    }

    /// Counts a failure; returns the starts of the per-user and per-address windows it was
    /// counted in.
    fn count_in(
        &self,
        st: &mut LimiterState,
        ip: IpAddr,
        user: &str,
        now: Instant,
    ) -> (Instant, Instant) {
        if st.by_user.len() > 100_000 || st.by_address.len() > 100_000 {
            let keep = |&mut (_, start, until): &mut FailureWindow| {
                until.is_some_and(|u| now < u) || now.duration_since(start) < self.window
            };
            st.by_user.retain(|_, w| keep(w));
            st.by_address.retain(|_, w| keep(w));
        }
        let (window, max, block) = (self.window, self.max_failures, self.block_for);
        let w = st
            .by_user
            .entry((ip, user.to_owned()))
            .or_insert((0, now, None));
        let user_window = count(w, now, window, max, block);
        let w = st.by_address.entry(ip).or_insert((0, now, None));
        let address_window = count(w, now, window, self.address_max(), block);
        (user_window, address_window)
    }

    /// Records a successful login of `user` from `ip`: clears that user's failures there
    /// (not the address's) and exempts it from an address block for a day.
    pub fn success(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::success_in(&mut st, ip, user, now);
    }

    fn success_in(st: &mut LimiterState, ip: IpAddr, user: &str, now: Instant) {
        let key = (ip, user.to_owned());
        st.by_user.remove(&key);
        if st.trusted.len() > 100_000 {
            st.trusted
                .retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
        }
        st.trusted.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_fields_and_the_participant_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        UsersFile::add_user(&path, "ann", "pw", None, &[], true).unwrap();
        UsersFile::add_user(
            &path,
            "ben",
            "pw",
            Some(&["a".into()]),
            &["g".into()],
            false,
        )
        .unwrap();
        // Entries the file could not read back, or nobody could log in with, are refused.
        let before = std::fs::read(&path).unwrap();
        for (pw, dbs) in [("", None), ("pw", Some(&[][..]))] {
            let e = UsersFile::add_user(&path, "cid", pw, dbs, &[], false).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let users = UsersFile::load(&path).unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ann = users.authenticate("ann", "pw", peer).unwrap();
        assert_eq!(ann, Grant::all(&[]).with_participant());
        let ben = users.authenticate("ben", "pw", peer).unwrap();
        assert!(!ben.participant && ben.allows("a") && !ben.allows("b"));
        assert_eq!(ben.groups, vec!["g".to_string()]);
        let hash = hash_password("pw").unwrap();
        for (line, why) in [
            (format!("cat {hash} * - voter"), "fifth field is \"voter\""),
            (
                format!("cat {hash} * - participant x"),
                "expected: name hash",
            ),
            (format!("cat {hash} *"), "expected: name hash"),
        ] {
            std::fs::write(&path, line).unwrap();
            let err = UsersFile::load(&path).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("line 1"), "{err}");
        }
    }

    #[test]
    fn a_valid_login_does_not_reset_guesses_for_other_users() {
        let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t = Instant::now();
        for i in 0..9 {
            l.failure(ip, "bob", t);
            // The attacker's own valid login in between clears nothing of bob's.
            l.success(ip, "mallory", t);
            assert!(!l.is_blocked(ip, "bob", t), "{i}");
        }
        l.failure(ip, "bob", t);
        assert!(l.is_blocked(ip, "bob", t));
        assert!(!l.is_blocked(ip, "mallory", t));
        // Bob's own success would clear it, after the block.
        let later = t + Duration::from_secs(31);
        assert!(!l.is_blocked(ip, "bob", later));
    }

    #[test]
    fn spraying_blocks_the_address_but_not_users_known_there() {
        let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let t = Instant::now();
        l.success(ip, "alice", t);
        for i in 0..200 {
            l.failure(ip, &format!("nobody-{i}"), t);
        }
        assert!(l.is_blocked(ip, "carol", t), "a user unknown here");
        assert!(
            !l.is_blocked(ip, "alice", t),
            "alice logged in from here before"
        );
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(!l.is_blocked(other, "carol", t));
    }

    #[test]
    fn concurrent_logins_are_counted_before_their_check() {
        let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let t = Instant::now();
        // 15 logins of one user arrive at once: only 10 get to be checked.
        let started: Vec<Attempt> = (0..15).filter_map(|_| l.attempt(ip, "bob", t)).collect();
        assert_eq!(started.len(), 10);
        assert!(l.is_blocked(ip, "bob", t));
        // All 10 fail (dropping an attempt leaves its failure counted).
        drop(started);
        assert!(l.is_blocked(ip, "bob", t));
        assert!(
            !l.is_blocked(ip, "carol", t),
            "10 failures do not block the address"
        );
    }

    #[test]
    fn a_login_that_succeeds_or_is_not_checked_counts_against_nobody() {
        let l = FailureLimiter::new(10, Duration::from_secs(60), Duration::from_secs(30));
        let ip: IpAddr = "192.0.2.11".parse().unwrap();
        let t = Instant::now();
        for i in 0..99 {
            l.failure(ip, &format!("nobody-{i}"), t);
        }
        // bob's login in flight is the address's 100th failure: it blocks the address...
        let bob = l.attempt(ip, "bob", t).expect("not blocked yet");
        assert!(l.is_blocked(ip, "carol", t));
        // ...until it succeeds: then it never was a failure.
        l.succeeded(bob, t);
        assert!(!l.is_blocked(ip, "carol", t));
        assert!(!l.is_blocked(ip, "bob", t));
        // A login the server was too busy to check is taken back from both counts.
        let attempts: Vec<Attempt> = (0..9).filter_map(|_| l.attempt(ip, "dan", t)).collect();
        assert_eq!(
            attempts.len(),
            1,
            "the 100th failure blocked the address for dan"
        );
        for a in attempts {
            l.withdraw(a);
        }
        assert!(!l.is_blocked(ip, "dan", t) && !l.is_blocked(ip, "carol", t));
        // Likewise a user's own block: 10 of erin's logins in flight, all withdrawn.
        let ip2: IpAddr = "192.0.2.13".parse().unwrap();
        let attempts: Vec<Attempt> = (0..12).filter_map(|_| l.attempt(ip2, "erin", t)).collect();
        assert_eq!(attempts.len(), 10);
        assert!(l.is_blocked(ip2, "erin", t));
        for a in attempts {
            l.withdraw(a);
        }
        assert!(!l.is_blocked(ip2, "erin", t));
    }

    #[test]
    fn a_withdrawal_leaves_a_later_window_alone() {
        let l = FailureLimiter::new(2, Duration::from_secs(60), Duration::from_secs(30));
        let ip: IpAddr = "192.0.2.12".parse().unwrap();
        let t = Instant::now();
        let old = l.attempt(ip, "bob", t).unwrap();
        // A new window starts; bob fails twice in it and is blocked.
        let later = t + Duration::from_secs(61);
        l.failure(ip, "bob", later);
        l.failure(ip, "bob", later);
        assert!(l.is_blocked(ip, "bob", later));
        // Taking back the old window's failure does not touch the new window's count.
        l.withdraw(old);
        assert!(l.is_blocked(ip, "bob", later));
    }

    #[test]
    fn the_hash_gate_caps_concurrency_and_serves_in_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let gate = Arc::new(HashGate::new(2));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    let _p = gate.acquire(Duration::from_secs(60)).expect("place");
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::yield_now();
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!((1..=2).contains(&most.load(Ordering::SeqCst)));

        // Full: a waiter gives up after its wait, and leaves no trace in the line.
        let gate = Arc::new(HashGate::new(1));
        let held = gate.acquire(Duration::ZERO).expect("free");
        assert!(gate.acquire(Duration::from_millis(20)).is_none());
        // First come, first served.
        let order = Arc::new(Mutex::new(Vec::new()));
        let queued = |n: usize| {
            let st = gate.state.lock().unwrap();
            st.queue.len() == n
        };
        let mut waiters = Vec::new();
        for who in ["first", "second", "third"] {
            let (g, o) = (gate.clone(), order.clone());
            let n = waiters.len() + 1;
            waiters.push(std::thread::spawn(move || {
                let _p = g.acquire(Duration::from_secs(60)).expect("place");
                o.lock().unwrap().push(who);
            }));
            let deadline = Instant::now() + Duration::from_secs(60);
            while !queued(n) {
                assert!(Instant::now() < deadline, "waiter {who} never queued");
                std::thread::yield_now();
            }
        }
        drop(held);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["first", "second", "third"]);
    }

    #[test]
    fn verification_in_mapped_memory_agrees_with_argon2() {
        use argon2::password_hash::PasswordVerifier;
        use argon2::{Algorithm, Params, Version};
        let salt = SaltString::generate(&mut OsRng);
        let variants = [
            Argon2::default(),
            Argon2::new(
                Algorithm::Argon2i,
                Version::V0x10,
                Params::new(4096, 1, 2, Some(16)).unwrap(),
            ),
            Argon2::new(
                Algorithm::Argon2d,
                Version::V0x13,
                Params::new(1024, 3, 1, Some(64)).unwrap(),
            ),
        ];
        for a in variants {
            let phc = a.hash_password(b"right", &salt).unwrap().to_string();
            let h = PasswordHash::new(&phc).unwrap();
            for pw in [&b"right"[..], b"wrong", b""] {
                assert_eq!(
                    verify(pw, &h),
                    Argon2::default().verify_password(pw, &h).is_ok(),
                    "{phc} {pw:?}"
                );
            }
            assert!(verify(b"right", &h));
        }
        let no_output = PasswordHash::new("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ").unwrap();
        assert!(!verify(b"x", &no_output));
    }

    #[test]
    fn unknown_users_are_checked_at_the_same_cost_and_a_full_gate_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        UsersFile::add_user(&path, "ann", "pw", None, &[], false).unwrap();
        let users = UsersFile::load(&path).unwrap();
        let ann = PasswordHash::new(&users.users["ann"].hash).unwrap();
        let dummy = PasswordHash::new(&users.dummy).unwrap();
        assert_eq!(
            (dummy.algorithm, dummy.version, &dummy.params),
            (ann.algorithm, ann.version, &ann.params)
        );
        assert_eq!(dummy.hash.unwrap().len(), ann.hash.unwrap().len());
        let gate = HashGate::new(1);
        let denied = Refusal::Denied("unknown user or wrong password".into());
        assert_eq!(
            users
                .check_in(&gate, Duration::ZERO, "nobody", "pw")
                .unwrap_err(),
            denied
        );
        assert_eq!(
            users
                .check_in(&gate, Duration::ZERO, "ann", "nope")
                .unwrap_err(),
            denied
        );
        assert!(users.check_in(&gate, Duration::ZERO, "ann", "pw").is_ok());
        let _held = gate.acquire(Duration::ZERO).unwrap();
        let busy = users.check_in(&gate, Duration::from_millis(10), "ann", "pw");
        assert!(
            matches!(busy, Err(Refusal::Busy(ref m)) if m.contains("busy")),
            "{busy:?}"
        );
        // Without users, the dummy has argon2's default parameters.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nobody\n").unwrap();
        let none = UsersFile::load(&empty).unwrap();
        let dummy = PasswordHash::new(&none.dummy).unwrap();
        let (got, want) = (
            argon2::Params::try_from(&dummy).unwrap(),
            argon2::Params::default(),
        );
        assert_eq!(
            (got.m_cost(), got.t_cost(), got.p_cost()),
            (want.m_cost(), want.t_cost(), want.p_cost())
        );
        assert_eq!(dummy.algorithm, argon2::Algorithm::Argon2id.ident());
    }
}
