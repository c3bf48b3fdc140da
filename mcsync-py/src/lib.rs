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
mod relay;
mod resync;
mod security;
mod subscriber;
mod update;

/// Native part of the `mcsync` package; import `mcsync` instead.
/// Drops the cache of the ``mcsync.*`` loggers' levels, so that levels changed with
/// ``logging`` after mcsync logged its first records take effect.
#[pyfunction]
fn refresh_log_levels() {
    if let Some(h) = LOG_CACHE.get() {
        h.reset();
    }
}

static LOG_CACHE: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

#[pymodule]
fn _mcsync(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Log records go to Python's `logging`, under the logger "mcsync" (targets such as
    // "mcsync::subscriber" become "mcsync.subscriber"). Levels are looked up in Python once
    // per logger and cached (so filtered-out records cost no GIL); `refresh_log_levels()`
    // drops the cache after the host changes them. Fails only if another Rust logger is
    // installed (then that one gets the records).
    if let Ok(handle) = pyo3_log::try_init() {
        let _ = LOG_CACHE.set(handle);
    }
    m.add_function(wrap_pyfunction!(refresh_log_levels, m)?)?;
    m.add_class::<publisher::PyPublisher>()?;
    m.add_class::<publisher::PyDatabase>()?;
    m.add_class::<publisher::PyTransaction>()?;
    m.add_class::<publisher::PyPrepared>()?;
    m.add_class::<subscriber::PySubscriber>()?;
    m.add_class::<subscriber::PySubscription>()?;
    m.add_class::<subscriber::PyUpdateIterator>()?;
    m.add_class::<relay::PyRelay>()?;
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
