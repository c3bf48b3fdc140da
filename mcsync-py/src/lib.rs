//! Python bindings: the private native module `mcsync._mcsync`, re-exported by the pure-Python
//! package `mcsync` (see `python/mcsync/__init__.py` and docs/PYTHON.md).
//!
//! Every core handle is wrapped in a frozen `#[pyclass]` with interior state, so no Python
//! borrow is held across a call that releases the GIL. Calls that can block release the GIL
//! and, where they can wait long, wait in short slices and check for signals between them.

use pyo3::prelude::*;

mod convert;
mod delivery;
mod errors;
mod lifecycle;
mod publisher;
mod resync;
mod security;
mod subscriber;
mod update;

/// Native part of the `mcsync` package; import `mcsync` instead.
#[pymodule]
fn _mcsync(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<publisher::PyPublisher>()?;
    m.add_class::<publisher::PyDatabase>()?;
    m.add_class::<publisher::PyTransaction>()?;
    m.add_class::<publisher::PyPrepared>()?;
    m.add_class::<subscriber::PySubscriber>()?;
    m.add_class::<subscriber::PySubscription>()?;
    m.add_class::<subscriber::PyUpdateIterator>()?;
    m.add_class::<resync::PyResyncReport>()?;
    m.add_class::<update::PyUpdate>()?;
    m.add_class::<update::PyOp>()?;
    m.add_class::<security::PyGrant>()?;
    m.add_function(wrap_pyfunction!(security::add_user, m)?)?;
    m.add_function(wrap_pyfunction!(lifecycle::close_all, m)?)?;
    errors::add_to_module(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
