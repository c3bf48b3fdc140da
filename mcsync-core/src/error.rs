//! The one error type every part of mcsync returns, and every binding maps from once.

use std::fmt;

/// Broad category of an [`Error`]; bindings map these to status codes and exception classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Invalid configuration or argument supplied by the host.
    Config,
    /// An operating-system I/O failure (socket, file).
    Io,
    /// The LMDB store failed or holds data it cannot read.
    Storage,
    /// A peer sent something that violates the protocol.
    Protocol,
    /// Authentication or authorization failed.
    Auth,
    /// The object was closed.
    Closed,
    /// A deadline passed.
    Timeout,
    /// A value, key or update exceeds a configured maximum.
    TooLarge,
    /// The peer refused the request (unknown database, versions that do not exist, ...).
    Refused,
}

impl ErrorKind {
    /// A short lowercase name, stable across releases.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Io => "io",
            ErrorKind::Storage => "storage",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::TooLarge => "too large",
            ErrorKind::Refused => "refused",
        }
    }
}

/// An mcsync error: a kind plus a message that names the object involved
/// (database, version range, peer address).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::Config`].
    #[error("config: {0}")]
    Config(String),
    /// See [`ErrorKind::Io`].
    #[error("io: {context}: {source}")]
    Io {
        /// What mcsync was doing.
        context: String,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// See [`ErrorKind::Storage`].
    #[error("storage: {0}")]
    Storage(String),
    /// See [`ErrorKind::Protocol`].
    #[error("protocol: {0}")]
    Protocol(String),
    /// See [`ErrorKind::Auth`].
    #[error("auth: {0}")]
    Auth(String),
    /// See [`ErrorKind::Closed`].
    #[error("closed: {0}")]
    Closed(String),
    /// See [`ErrorKind::Timeout`].
    #[error("timeout: {0}")]
    Timeout(String),
    /// See [`ErrorKind::TooLarge`].
    #[error("too large: {0}")]
    TooLarge(String),
    /// See [`ErrorKind::Refused`].
    #[error("refused: {0}")]
    Refused(String),
    /// A two-phase update aborted because participants refused or did not answer in time
    /// (kind [`ErrorKind::Refused`]); the message names them too.
    #[error("refused: {message}")]
    Aborted {
        /// What was aborted, and why.
        message: String,
        /// `(participant, reason)` for each that refused.
        refused: Vec<(String, String)>,
        /// Participants that did not answer in time.
        timed_out: Vec<String>,
    },
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Io { .. } => ErrorKind::Io,
            Error::Storage(_) => ErrorKind::Storage,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::Auth(_) => ErrorKind::Auth,
            Error::Closed(_) => ErrorKind::Closed,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::Refused(_) | Error::Aborted { .. } => ErrorKind::Refused,
        }
    }

    /// The message without the kind it is displayed with (`Display` gives
    /// `"auth: <message>"`): for a binding whose exception class already names the kind,
    /// or for wrapping one error's text in another's.
    pub fn message(&self) -> String {
        match self {
            Error::Io { context, source } => format!("{context}: {source}"),
            Error::Config(m)
            | Error::Storage(m)
            | Error::Protocol(m)
            | Error::Auth(m)
            | Error::Closed(m)
            | Error::Timeout(m)
            | Error::TooLarge(m)
            | Error::Refused(m)
            | Error::Aborted { message: m, .. } => m.clone(),
        }
    }

    /// Wraps an I/O error with what mcsync was doing when it happened.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Error {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }

    /// Builds an error of the given kind with a message (I/O errors get a generic OS error).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        let m = message.into();
        match kind {
            ErrorKind::Config => Error::Config(m),
            ErrorKind::Io => Error::io(m, std::io::Error::other("remote i/o error")),
            ErrorKind::Storage => Error::Storage(m),
            ErrorKind::Protocol => Error::Protocol(m),
            ErrorKind::Auth => Error::Auth(m),
            ErrorKind::Closed => Error::Closed(m),
            ErrorKind::Timeout => Error::Timeout(m),
            ErrorKind::TooLarge => Error::TooLarge(m),
            ErrorKind::Refused => Error::Refused(m),
        }
    }
}

impl From<lmdb::Error> for Error {
    fn from(e: lmdb::Error) -> Error {
        Error::Storage(format!("lmdb: {e}"))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
