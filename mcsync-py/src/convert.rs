//! Conversions between Python and the engine: bytes-like keys and values, addresses,
//! durations, records and counters.

use crate::errors::config_error;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// A key or value: `bytes` or `bytearray` as is, `str` encoded as UTF-8.
pub(crate) fn bytes_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(b.as_bytes().to_vec())
    } else if let Ok(s) = obj.cast::<PyString>() {
        Ok(s.to_cow()?.as_bytes().to_vec())
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        Ok(b.to_vec())
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} must be bytes or str, not {}",
            obj.get_type().name()?
        )))
    }
}

/// A list of names (access groups, databases): a list, tuple or other iterable of `str`,
/// or `None`. A lone `str` is refused with a hint (iterating it would give its letters).
pub(crate) fn names_arg(
    obj: Option<&Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<Vec<String>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let type_name = |o: &Bound<'_, PyAny>| {
        o.get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string())
    };
    if let Ok(s) = obj.cast::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of str, not a str: write {what}=[{}]",
            s.repr()?
        )));
    }
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of str, not {}",
            type_name(obj)
        )));
    }
    let items = obj.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a list of str, not {}",
            type_name(obj)
        ))
    })?;
    let mut out = Vec::new();
    for item in items {
        let item = item?;
        let s = item.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} must be a list of str, not a list holding {}",
                type_name(&item)
            ))
        })?;
        out.push(s.to_cow()?.into_owned());
    }
    Ok(Some(out))
}

/// A socket address: `"host:port"` or `(host, port)`; IPv4 preferred when a name resolves
/// to several addresses.
pub(crate) fn socket_addr_arg(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<SocketAddr> {
    let resolved = if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_cow()?;
        s.to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
            .map_err(|e| config_error(py, format!("{what} {s:?}: {e}")))?
    } else if let Ok((host, port)) = obj.extract::<(String, u16)>() {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
            .map_err(|e| config_error(py, format!("{what} ({host:?}, {port}): {e}")))?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be \"host:port\" or a (host, port) tuple"
        )));
    };
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| config_error(py, format!("{what} resolves to no address")))
}

/// An IPv4 address given as a string.
pub(crate) fn ipv4_arg(py: Python<'_>, s: &str, what: &str) -> PyResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| config_error(py, format!("{what} {s:?} is not an IPv4 address")))
}

/// A duration given in seconds.
pub(crate) fn seconds_arg(py: Python<'_>, secs: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        config_error(
            py,
            format!("{what} must be a finite number of seconds >= 0, got {secs}"),
        )
    })
}

/// A finite timeout in seconds, one the engine can add to the clock (a two-phase vote
/// wait cannot be cancelled, so "forever" is not offered).
pub(crate) fn finite_timeout_arg(py: Python<'_>, secs: f64, what: &str) -> PyResult<Duration> {
    let d = seconds_arg(py, secs, what)?;
    if Instant::now().checked_add(d).is_none() {
        return Err(config_error(
            py,
            format!("{what} of {secs} seconds is too large"),
        ));
    }
    Ok(d)
}

/// The deadline of an optional timeout in seconds; `None` waits forever (as does a timeout
/// too large to represent).
pub(crate) fn deadline_arg(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) => Ok(Instant::now().checked_add(seconds_arg(py, t, "timeout")?)),
    }
}

/// `(host, port)` as Python's socket functions give addresses.
pub(crate) fn addr_tuple(a: SocketAddr) -> (String, u16) {
    (a.ip().to_string(), a.port())
}

/// Whether an optional deadline has passed (`None` never does).
pub(crate) trait Deadline {
    /// `true` once the deadline is reached.
    fn expired(&self) -> bool;
}

impl Deadline for Option<Instant> {
    fn expired(&self) -> bool {
        self.is_some_and(|d| Instant::now() >= d)
    }
}

/// Builds a dict of counters.
pub(crate) fn stats_dict<'py>(
    py: Python<'py>,
    fields: impl IntoIterator<Item = (&'static str, u64)>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in fields {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// Records as a list of ``(key, value)`` tuples.
pub(crate) fn records_list<'py>(
    py: Python<'py>,
    records: Vec<mcsync::Record>,
) -> PyResult<Bound<'py, PyList>> {
    let items = records
        .iter()
        .map(|(k, v)| PyTuple::new(py, [PyBytes::new(py, k), PyBytes::new(py, v)]))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}
