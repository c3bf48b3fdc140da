//! `Update` and `Op`: one replicated master transaction and its operations, as Python sees
//! them in callbacks and from `Subscription.updates()`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyTuple};

/// One operation of an update: a put or a delete of one key.
#[pyclass(frozen, module = "mcsync", name = "Op")]
pub(crate) struct PyOp {
    operation: &'static str,
    key: Py<PyBytes>,
    value: Option<Py<PyBytes>>,
    groups: Py<PyTuple>,
}

impl PyOp {
    fn from_core(py: Python<'_>, op: &mcsync::Op) -> PyResult<PyOp> {
        let (operation, value) = match op.kind {
            mcsync::OpKind::Put => ("put", Some(PyBytes::new(py, &op.value).unbind())),
            mcsync::OpKind::Delete => ("delete", None),
        };
        Ok(PyOp {
            operation,
            key: PyBytes::new(py, &op.key).unbind(),
            value,
            groups: PyTuple::new(py, &op.groups)?.unbind(),
        })
    }
}

#[pymethods]
impl PyOp {
    /// ``"put"`` or ``"delete"``.
    #[getter]
    fn operation(&self) -> &'static str {
        self.operation
    }

    /// The record key.
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyBytes> {
        self.key.clone_ref(py)
    }

    /// The new value of a put; ``None`` for a delete.
    #[getter]
    fn value(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.value.as_ref().map(|v| v.clone_ref(py))
    }

    /// Access groups allowed to read the record; empty means everyone.
    #[getter]
    fn groups(&self, py: Python<'_>) -> Py<PyTuple> {
        self.groups.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let key = self.key.bind(py).repr()?;
        match &self.value {
            Some(v) => Ok(format!("Op(put {key} = {})", v.bind(py).repr()?)),
            None => Ok(format!("Op(delete {key})")),
        }
    }
}

/// One committed master transaction of a database: its version and its operations in the
/// order the publisher issued them.
///
/// ``operation``, ``key``, ``value`` and ``groups`` are shortcuts for the only operation of
/// an update made by ``Database.put`` or ``Database.delete``; on an update of several
/// operations (a transaction) they raise ``ValueError``: iterate over the update or use
/// ``ops``.
#[pyclass(frozen, module = "mcsync", name = "Update")]
pub(crate) struct PyUpdate {
    version: u64,
    timestamp_us: u64,
    ops: Py<PyTuple>,
    reset: bool,
}

impl PyUpdate {
    /// Builds the Python view of a core update.
    pub(crate) fn from_core(py: Python<'_>, u: &mcsync::Update) -> PyResult<Py<PyUpdate>> {
        let ops = u
            .ops
            .iter()
            .map(|op| Py::new(py, PyOp::from_core(py, op)?))
            .collect::<PyResult<Vec<_>>>()?;
        Py::new(
            py,
            PyUpdate {
                version: u.version,
                timestamp_us: u.timestamp_us,
                ops: PyTuple::new(py, ops)?.unbind(),
                reset: u.reset,
            },
        )
    }

    fn only_op<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyOp>> {
        let ops = self.ops.bind(py);
        if ops.len() != 1 {
            return Err(PyValueError::new_err(format!(
                "update {} has {} operations; iterate over it or use .ops",
                self.version,
                ops.len()
            )));
        }
        Ok(ops.get_item(0)?.cast_into::<PyOp>()?)
    }
}

#[pymethods]
impl PyUpdate {
    /// The master version this update produced (1, 2, 3, ... per database).
    #[getter]
    fn version(&self) -> u64 {
        self.version
    }

    /// When the publisher committed it, in seconds since the Unix epoch.
    #[getter]
    fn timestamp(&self) -> f64 {
        self.timestamp_us as f64 / 1e6
    }

    /// ``True`` when this update replaces the host's whole state: its ``ops`` are puts of
    /// every record at ``version``, and the host drops everything it kept from this database
    /// first (then applies them and stores ``version``, in one transaction of its own). Sent
    /// only to a subscription made with ``after=`` when the updates after the host's version
    /// can no longer be delivered one by one (the publisher's journal no longer reaches back)
    /// or the master's history changed. ``False`` for every other update.
    #[getter]
    fn reset(&self) -> bool {
        self.reset
    }

    /// The operations, in order.
    #[getter]
    fn ops(&self, py: Python<'_>) -> Py<PyTuple> {
        self.ops.clone_ref(py)
    }

    /// ``"put"`` or ``"delete"``: the operation of a single-operation update.
    #[getter]
    fn operation(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.only_op(py)?.get().operation)
    }

    /// The key of a single-operation update.
    #[getter]
    fn key(&self, py: Python<'_>) -> PyResult<Py<PyBytes>> {
        Ok(self.only_op(py)?.get().key(py))
    }

    /// The value of a single-operation update (``None`` for a delete).
    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<Option<Py<PyBytes>>> {
        Ok(self.only_op(py)?.get().value(py))
    }

    /// The access groups of a single-operation update.
    #[getter]
    fn groups(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(self.only_op(py)?.get().groups(py))
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.ops.bind(py).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        self.ops.bind(py).try_iter()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let ops = self.ops.bind(py);
        let reset = if self.reset { ", reset" } else { "" };
        if ops.len() == 1 && !self.reset {
            Ok(format!(
                "Update(version={}, {})",
                self.version,
                ops.get_item(0)?.repr()?
            ))
        } else {
            Ok(format!(
                "Update(version={}, {} ops{reset})",
                self.version,
                ops.len()
            ))
        }
    }
}
