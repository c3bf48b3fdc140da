//! The exception hierarchy and the one mapping from `mcsync::ErrorKind` to it.
//!
//! The classes are created with `type()` at import because two of them have two bases
//! (`TimeoutError` also subclasses the builtin `TimeoutError`, `ConfigError` also subclasses
//! `ValueError`), which `create_exception!` cannot express.

use pyo3::exceptions::{PyException, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The exception classes, created once per process.
pub(crate) struct ErrorTypes {
    error: Py<PyType>,
    config: Py<PyType>,
    io: Py<PyType>,
    storage: Py<PyType>,
    protocol: Py<PyType>,
    auth: Py<PyType>,
    closed: Py<PyType>,
    timeout: Py<PyType>,
    too_large: Py<PyType>,
    refused: Py<PyType>,
}

static TYPES: PyOnceLock<ErrorTypes> = PyOnceLock::new();

fn new_class(
    py: Python<'_>,
    name: &str,
    doc: &str,
    bases: &[Bound<'_, PyType>],
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "mcsync")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let class = py.get_type::<PyType>().call1((name, bases, ns))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

fn create(py: Python<'_>) -> PyResult<ErrorTypes> {
    let error = new_class(
        py,
        "Error",
        "Base class of every error mcsync raises.",
        &[py.get_type::<PyException>()],
    )?;
    let sub = |name: &str, doc: &str| new_class(py, name, doc, &[error.bind(py).clone()]);
    Ok(ErrorTypes {
        config: new_class(
            py,
            "ConfigError",
            "Invalid configuration or argument (also a ValueError).",
            &[error.bind(py).clone(), py.get_type::<PyValueError>()],
        )?,
        timeout: new_class(
            py,
            "TimeoutError",
            "A deadline passed (also the builtin TimeoutError).",
            &[error.bind(py).clone(), py.get_type::<PyTimeoutError>()],
        )?,
        io: sub("IoError", "An operating-system I/O failure (socket, file).")?,
        storage: sub(
            "StorageError",
            "The LMDB store failed or holds data it cannot read.",
        )?,
        protocol: sub(
            "ProtocolError",
            "A peer sent something that violates the protocol.",
        )?,
        auth: sub("AuthError", "Authentication or authorization failed.")?,
        closed: sub("ClosedError", "The object was closed.")?,
        too_large: sub(
            "TooLargeError",
            "A key, value or update exceeds a configured maximum.",
        )?,
        refused: refused_class(
            py,
            sub(
                "RefusedError",
                "Refused: an unknown database, missing versions, or an aborted two-phase update.",
            )?,
        )?,
        error,
    })
}

/// `RefusedError` with empty `refused` and `timed_out` on the class: only an aborted
/// two-phase update sets them on its instance (see [`to_py`]).
fn refused_class(py: Python<'_>, class: Py<PyType>) -> PyResult<Py<PyType>> {
    let c = class.bind(py);
    c.setattr("refused", PyTuple::empty(py))?;
    c.setattr("timed_out", PyTuple::empty(py))?;
    Ok(class)
}

fn types(py: Python<'_>) -> &'static ErrorTypes {
    // Creating ten classes with type() fails only when the interpreter is out of memory.
    TYPES.get_or_init(py, || {
        create(py).expect("creating mcsync exception classes")
    })
}

/// Adds the exception classes to the module.
pub(crate) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let t = TYPES.get_or_try_init(py, || create(py))?;
    for (name, ty) in [
        ("Error", &t.error),
        ("ConfigError", &t.config),
        ("IoError", &t.io),
        ("StorageError", &t.storage),
        ("ProtocolError", &t.protocol),
        ("AuthError", &t.auth),
        ("ClosedError", &t.closed),
        ("TimeoutError", &t.timeout),
        ("TooLargeError", &t.too_large),
        ("RefusedError", &t.refused),
    ] {
        m.add(name, ty.clone_ref(py))?;
    }
    Ok(())
}

/// The Python exception class of an error kind: the one mapping every binding call uses.
fn class_of(py: Python<'_>, kind: mcsync::ErrorKind) -> Bound<'_, PyType> {
    use mcsync::ErrorKind as K;
    let t = types(py);
    let ty = match kind {
        K::Config => &t.config,
        K::Io => &t.io,
        K::Storage => &t.storage,
        K::Protocol => &t.protocol,
        K::Auth => &t.auth,
        K::Closed => &t.closed,
        K::Timeout => &t.timeout,
        K::TooLarge => &t.too_large,
        K::Refused => &t.refused,
    };
    ty.bind(py).clone()
}

/// An exception of the class for `kind`, with `message`.
pub(crate) fn raise(py: Python<'_>, kind: mcsync::ErrorKind, message: impl Into<String>) -> PyErr {
    PyErr::from_type(class_of(py, kind), message.into())
}

/// Converts a core error into its exception.
pub(crate) fn to_py(py: Python<'_>, e: mcsync::Error) -> PyErr {
    let err = raise(py, e.kind(), message_of(&e));
    if let mcsync::Error::Aborted {
        refused, timed_out, ..
    } = e
    {
        // Who refused `(name, reason)` and who did not answer, for code that reacts to them.
        let value = err.value(py);
        if let (Ok(r), Ok(t)) = (PyTuple::new(py, refused), PyTuple::new(py, timed_out)) {
            let _ = value.setattr("refused", r);
            let _ = value.setattr("timed_out", t);
        }
    }
    err
}

/// The message of a core error without the kind the engine's text starts with ("auth: ...",
/// repeated when a failure was passed on): the exception's class says it already.
pub(crate) fn message_of(e: &mcsync::Error) -> String {
    let text = e.message();
    let prefix = format!("{}: ", e.kind().as_str());
    let mut m = text.as_str();
    while let Some(rest) = m.strip_prefix(&prefix) {
        m = rest;
    }
    m.to_owned()
}

/// `mcsync::Result` → `PyResult`, mapping the error once.
pub(crate) trait OrRaise<T> {
    /// The value, or the core error as its Python exception.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for mcsync::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// A `ConfigError` (invalid argument) with `message`.
pub(crate) fn config_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, mcsync::ErrorKind::Config, message)
}

/// Whether `e` is (a subclass of) the exception class of `kind`.
pub(crate) fn is_kind(py: Python<'_>, e: &PyErr, kind: mcsync::ErrorKind) -> bool {
    e.is_instance(py, class_of(py, kind).as_any())
}
