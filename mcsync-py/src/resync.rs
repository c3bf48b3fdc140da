//! `ResyncReport`: what `Subscriber.verify()` and `Subscriber.resync()` found and did.

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// What a hash comparison of a replica with the publisher found (``Subscriber.verify``)
/// and, for ``Subscriber.resync``, did.
///
/// ``in_agreement`` is true when replica and publisher held the same records when
/// compared. ``differing_ranges`` lists the smallest key-hash ranges found to differ, as
/// ``(first, last)`` 64-bit hash tuples.
#[pyclass(frozen, module = "mcsync", name = "ResyncReport")]
pub(crate) struct PyResyncReport {
    r: mcsync::ResyncReport,
}

impl PyResyncReport {
    pub(crate) fn new(r: mcsync::ResyncReport) -> Self {
        PyResyncReport { r }
    }
}

#[pymethods]
impl PyResyncReport {
    /// The version the replica is at afterwards (for ``verify``: the version of the
    /// publisher's snapshot it was compared with).
    #[getter]
    fn version(&self) -> u64 {
        self.r.version
    }

    /// The replica's version before.
    #[getter]
    fn previous_version(&self) -> u64 {
        self.r.previous_version
    }

    /// The replica was empty: this was (or would be) a full copy.
    #[getter]
    fn full_copy(&self) -> bool {
        self.r.full_copy
    }

    /// Records fetched (changed or added at the publisher); 0 for ``verify``.
    #[getter]
    fn fetched(&self) -> u64 {
        self.r.fetched
    }

    /// Records deleted (absent at the publisher); 0 for ``verify``.
    #[getter]
    fn deleted(&self) -> u64 {
        self.r.deleted
    }

    /// Journal updates applied after the snapshot; 0 for ``verify``.
    #[getter]
    fn journal_updates(&self) -> u64 {
        self.r.journal_updates
    }

    /// The smallest key-hash ranges found to differ, as ``(first, last)`` tuples.
    #[getter]
    fn differing_ranges<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ranges = self
            .r
            .differing_ranges
            .iter()
            .map(|r| PyTuple::new(py, [r.lo, r.hi()]))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, ranges)
    }

    /// Control-channel bytes exchanged, both directions.
    #[getter]
    fn bytes(&self) -> u64 {
        self.r.bytes
    }

    /// Records in the replica when compared.
    #[getter]
    fn local_records(&self) -> u64 {
        self.r.local_records
    }

    /// Records at the publisher (visible to this user) in the snapshot.
    #[getter]
    fn remote_records(&self) -> u64 {
        self.r.remote_records
    }

    /// Whether replica and publisher held the same records when compared.
    #[getter]
    fn in_agreement(&self) -> bool {
        self.r.in_agreement()
    }

    fn __repr__(&self) -> String {
        let r = &self.r;
        format!(
            "ResyncReport(version={}, previous_version={}, in_agreement={}, full_copy={}, \
             fetched={}, deleted={}, journal_updates={}, bytes={}, local_records={}, \
             remote_records={})",
            r.version,
            r.previous_version,
            if r.in_agreement() { "True" } else { "False" },
            if r.full_copy { "True" } else { "False" },
            r.fetched,
            r.deleted,
            r.journal_updates,
            r.bytes,
            r.local_records,
            r.remote_records
        )
    }
}
