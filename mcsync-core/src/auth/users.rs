//! The users file: one line per user with a salted argon2 hash, databases, groups, role.

use super::*;
use crate::{Error, Result};
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::password::*;

#[derive(Debug, Clone)]
pub(super) struct UserEntry {
    pub(super) hash: String,
    pub(super) grant: Grant,
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
    pub(super) path: PathBuf,
    pub(super) users: HashMap<String, UserEntry>,
    /// What an unknown user's secret is checked against: a PHC string with the parameters
    /// (and so the cost) of the file's first hash, whose output nothing hashes to.
    pub(super) dummy: String,
}

/// A PHC string with the algorithm, version, parameters and salt of `like` (or, without
/// it or if it is not an argon2 hash, of [`hash_password`]) and an all-zero output of the same length: verifying any
/// password against it costs what verifying against `like` costs, and fails.
pub(super) fn dummy_hash(like: Option<&str>) -> String {
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

pub(super) fn split_list(field: &str, any: &str) -> Option<Vec<String>> {
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
    pub(super) fn check_in(
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
