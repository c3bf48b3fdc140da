//! Authentication and authorization of subscribers: the [`Authenticator`] trait a host
//! implements, a built-in [`UsersFile`] with salted argon2 password hashes, a per-source
//! rate limiter for failures, and a cap on concurrent password hashing.

use crate::Result;
use std::net::SocketAddr;

mod limiter;
mod password;
#[cfg(test)]
mod tests;
mod users;

pub use limiter::{Attempt, FailureLimiter};
pub use password::{hash_password, HASH_WAIT, MAX_CONCURRENT_HASHES};
pub use users::UsersFile;

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
