//! Authentication and authorization of subscribers: the [`Authenticator`] trait a host
//! implements, a built-in [`UsersFile`] with salted argon2 password hashes, and a per-source
//! rate limiter for failures.

use crate::{Error, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

/// Decides who may subscribe. Called on every registration and every repair session, from
/// the publisher's connection threads (so it must be thread-safe).
pub trait Authenticator: Send + Sync {
    /// Checks `user` and `secret` (sent by `peer` over the TLS session). Returns the grant,
    /// or an error message for the client (which should not say whether the user exists).
    fn authenticate(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, String>;
}

impl<F> Authenticator for F
where
    F: Fn(&str, &str, SocketAddr) -> Result<Grant, String> + Send + Sync,
{
    fn authenticate(&self, user: &str, secret: &str, peer: SocketAddr) -> Result<Grant, String> {
        self(user, secret, peer)
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
            if users.insert(f[0].to_owned(), entry).is_some() {
                return Err(bad("user listed twice"));
            }
        }
        Ok(UsersFile {
            path: path.to_owned(),
            users,
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
    fn authenticate(&self, user: &str, secret: &str, _peer: SocketAddr) -> Result<Grant, String> {
        let denied = || "unknown user or wrong password".to_owned();
        let Some(u) = self.users.get(user) else {
            // Spend the same effort as a real check so timing does not reveal the user.
            let _ = hash_password(secret);
            return Err(denied());
        };
        let hash = PasswordHash::new(&u.hash).map_err(|_| denied())?;
        Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .map_err(|_| denied())?;
        Ok(u.grant.clone())
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

/// Counts one failure in `w`; blocks when it reaches `max`.
fn count(w: &mut FailureWindow, now: Instant, window: Duration, max: u32, block_for: Duration) {
    if now.duration_since(w.1) > window {
        *w = (0, now, None);
    }
    w.0 += 1;
    if w.0 >= max {
        w.2 = Some(now + block_for);
    }
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

    /// Records a failed login of `user` from `ip`.
    pub fn failure(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
        count(w, now, window, max, block);
        let w = st.by_address.entry(ip).or_insert((0, now, None));
        count(w, now, window, max.saturating_mul(ADDRESS_FACTOR), block);
    }

    /// Records a successful login of `user` from `ip`: clears that user's failures there
    /// (not the address's) and exempts it from an address block for a day.
    pub fn success(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
}
