//! Security options: who may subscribe (users file, a Python authenticator, or anyone),
//! grants, the control channel's certificate and how subscribers check it, and schedules.

use crate::convert::{addr_tuple, names_arg};
use crate::errors::{config_error, is_kind, raise, OrRaise};
use mcsync::ErrorKind;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyTuple};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What an authenticated user may do: the databases it may subscribe to (``None``: every
/// database), its access groups (records restricted to groups reach a replica only if
/// its user holds one of them), and whether it may register as a two-phase participant
/// (a participant can refuse every two-phase update). Returned by an ``authenticator``
/// callable.
#[pyclass(frozen, module = "mcsync", name = "Grant")]
pub(crate) struct PyGrant {
    databases: Option<Vec<String>>,
    groups: Vec<String>,
    participant: bool,
}

#[pymethods]
impl PyGrant {
    #[new]
    #[pyo3(signature = (databases = None, groups = None, participant = false))]
    fn new(
        databases: Option<&Bound<'_, PyAny>>,
        groups: Option<&Bound<'_, PyAny>>,
        participant: bool,
    ) -> PyResult<Self> {
        Ok(PyGrant {
            databases: names_arg(databases, "databases")?,
            groups: names_arg(groups, "groups")?.unwrap_or_default(),
            participant,
        })
    }

    /// Whether the user may register as a two-phase participant.
    #[getter]
    fn participant(&self) -> bool {
        self.participant
    }

    /// Databases the user may subscribe to, or ``None`` for every database.
    #[getter]
    fn databases<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.databases
            .as_ref()
            .map(|d| PyTuple::new(py, d))
            .transpose()
    }

    /// The user's access groups.
    #[getter]
    fn groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.groups)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let databases = match self.databases(py)? {
            Some(d) => d.repr()?.to_string(),
            None => "None".to_owned(),
        };
        Ok(format!(
            "Grant(databases={databases}, groups={}, participant={})",
            self.groups(py)?.repr()?,
            if self.participant { "True" } else { "False" }
        ))
    }
}

/// A Python callable deciding who may subscribe, called from the publisher's connection
/// threads (with the GIL taken for the call).
struct PyAuthenticator {
    callable: Py<PyAny>,
}

const DENIED: &str = "access denied";

impl mcsync::Authenticator for PyAuthenticator {
    fn authenticate(
        &self,
        user: &str,
        secret: &str,
        peer: SocketAddr,
    ) -> Result<mcsync::Grant, String> {
        Python::try_attach(|py| self.call(py, user, secret, peer))
            .unwrap_or_else(|| Err("publisher is shutting down".to_owned()))
    }
}

impl PyAuthenticator {
    /// `True` grants everything without groups; `None` or `False` refuses; an `AuthError`
    /// refuses with its message; any other exception or return value refuses and is
    /// reported to `sys.unraisablehook` (it is a bug in the authenticator).
    fn call(
        &self,
        py: Python<'_>,
        user: &str,
        secret: &str,
        peer: SocketAddr,
    ) -> Result<mcsync::Grant, String> {
        let f = self.callable.bind(py);
        let result = match f.call1((user, secret, addr_tuple(peer))) {
            Ok(r) => r,
            Err(e) if is_kind(py, &e, ErrorKind::Auth) => {
                return Err(e
                    .value(py)
                    .str()
                    .map_or(DENIED.to_owned(), |s| s.to_string()))
            }
            Err(e) => {
                e.write_unraisable(py, Some(f));
                return Err(DENIED.to_owned());
            }
        };
        if result.is_none() {
            return Err(DENIED.to_owned());
        }
        if let Ok(b) = result.cast::<PyBool>() {
            return if b.is_true() {
                Ok(mcsync::Grant::default())
            } else {
                Err(DENIED.to_owned())
            };
        }
        if let Ok(g) = result.cast::<PyGrant>() {
            let g = g.get();
            return Ok(mcsync::Grant {
                databases: g.databases.clone(),
                groups: g.groups.clone(),
                participant: g.participant,
            });
        }
        let type_name = result
            .get_type()
            .name()
            .map_or("?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!(
            "an authenticator returns a Grant, True, False or None, not {type_name}"
        ))
        .write_unraisable(py, Some(f));
        Err(DENIED.to_owned())
    }
}

/// Who may subscribe: at most one of a users file, an authenticator callable, or anyone.
pub(crate) fn authentication_arg(
    py: Python<'_>,
    users: Option<PathBuf>,
    authenticator: Option<Bound<'_, PyAny>>,
    open_access: bool,
) -> PyResult<Option<mcsync::Authentication>> {
    match (users, authenticator, open_access) {
        (None, None, false) => Ok(None),
        (Some(path), None, false) => Ok(Some(mcsync::Authentication::UsersFile(path))),
        (None, Some(f), false) => {
            if !f.is_callable() {
                return Err(PyTypeError::new_err("authenticator must be callable"));
            }
            Ok(Some(mcsync::Authentication::Custom(Arc::new(
                PyAuthenticator {
                    callable: f.unbind(),
                },
            ))))
        }
        (None, None, true) => Ok(Some(mcsync::Authentication::Open)),
        _ => Err(config_error(
            py,
            "give at most one of users=, authenticator= and open_access=True",
        )),
    }
}

/// The publisher's certificate: self-signed (default), PEM files, or no TLS on loopback.
pub(crate) fn identity_arg(
    py: Python<'_>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    insecure_loopback: bool,
) -> PyResult<mcsync::ServerIdentity> {
    match (certificate, private_key, insecure_loopback) {
        (None, None, false) => Ok(mcsync::ServerIdentity::SelfSigned),
        (Some(cert), Some(key), false) => Ok(mcsync::ServerIdentity::Files { cert, key }),
        (None, None, true) => Ok(mcsync::ServerIdentity::InsecureLoopback),
        _ => Err(config_error(
            py,
            "certificate= and private_key= go together, and not with insecure_loopback=True",
        )),
    }
}

/// How a subscriber checks the publisher: exactly one of a pinned fingerprint, a CA file,
/// or no TLS on loopback.
pub(crate) fn trust_arg(
    py: Python<'_>,
    fingerprint: Option<String>,
    ca_file: Option<PathBuf>,
    insecure_loopback: bool,
) -> PyResult<mcsync::ServerTrust> {
    match (fingerprint, ca_file, insecure_loopback) {
        (Some(f), None, false) => Ok(mcsync::ServerTrust::Fingerprint(
            mcsync::config::parse_fingerprint(&f).or_raise(py)?,
        )),
        (None, Some(p), false) => Ok(mcsync::ServerTrust::CaFile(p)),
        (None, None, true) => Ok(mcsync::ServerTrust::InsecureLoopback),
        _ => Err(config_error(
            py,
            "give exactly one of fingerprint=, ca_file= and insecure_loopback=True",
        )),
    }
}

/// A multicast schedule: ``"always"``, ``"never"``, or a list of daily ``(start, end)``
/// windows in minutes after midnight UTC.
pub(crate) fn schedule_arg(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<mcsync::Schedule> {
    if let Ok(s) = obj.cast::<PyString>() {
        return match &*s.to_cow()? {
            "always" => Ok(mcsync::Schedule::Always),
            "never" => Ok(mcsync::Schedule::Never),
            other => Err(config_error(
                py,
                format!("schedule {other:?} is not \"always\", \"never\" or a list of windows"),
            )),
        };
    }
    let windows: Vec<(u32, u32)> = obj.extract().map_err(|_| {
        PyTypeError::new_err(
            "schedule must be \"always\", \"never\" or a list of (start, end) minutes",
        )
    })?;
    // Core checks the windows (`Schedule::validate`) at open and in `set_schedule`.
    Ok(mcsync::Schedule::Windows(windows))
}

/// Adds a user to a users file (creating the file, and its directory: a publisher's
/// ``<data_dir>/users`` can be written before the publisher first opens), with an argon2
/// hash of ``password`` (which must not be empty).
///
/// ``databases`` lists what the user may subscribe to (``None``: every database; an empty
/// list is refused);
/// ``groups`` are its access groups; ``participant`` lets it register as a two-phase
/// participant. A publisher reads the file at open
/// (``Publisher(users=path)``; the default is ``<data_dir>/users``).
#[pyfunction]
#[pyo3(signature = (path, user, password, databases = None, groups = None, participant = false))]
pub(crate) fn add_user(
    py: Python<'_>,
    path: PathBuf,
    user: String,
    password: String,
    databases: Option<&Bound<'_, PyAny>>,
    groups: Option<&Bound<'_, PyAny>>,
    participant: bool,
) -> PyResult<()> {
    let databases = names_arg(databases, "databases")?;
    let groups = names_arg(groups, "groups")?.unwrap_or_default();
    if password.is_empty() {
        return Err(config_error(py, "password must not be empty"));
    }
    if databases.as_ref().is_some_and(Vec::is_empty) {
        return Err(config_error(
            py,
            "databases must name at least one database (None: every database)",
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            raise(
                py,
                ErrorKind::Io,
                format!("creating directory {}: {e}", dir.display()),
            )
        })?;
    }
    py.detach(|| {
        mcsync::auth::UsersFile::add_user(
            &path,
            &user,
            &password,
            databases.as_deref(),
            &groups,
            participant,
        )
    })
    .or_raise(py)
}
