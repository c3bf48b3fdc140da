//! An upstream reset reaching the relay: the upstream journal no longer reaches back to
//! the relay's version, or the upstream history changed. The downstream database's state
//! becomes the reset's records at its version, its journal starts empty there, and it
//! draws a new incarnation, so downstream replicas resync through the history-identity
//! path. The downstream publisher is closed for the replacement and reopened on the same
//! control address (its subscribers reconnect; every database gets a new key epoch).

use super::{relay_closed, RelayInner};
use crate::store::PublisherStore;
use crate::sync::{Locked, RwLocked};
use crate::{Publisher, PublisherConfig, Result, Update};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a reopen retries (the control port may be briefly unavailable).
const REOPEN_FOR: Duration = Duration::from_secs(30);

/// Replaces downstream database `name` by the reset `update`.
pub(super) fn replace(inner: &RelayInner, name: &str, update: &Update) -> Result<()> {
    let mut publisher = inner.publisher.write_locked();
    let old = publisher.take().ok_or_else(relay_closed)?;
    let before = old.database(name)?.version();
    old.close()?;
    drop(old);
    log::warn!(
        "relay of {name:?}: upstream reset at version {} ({} records; relayed up to \
         {before}): replacing the database under a new history id",
        update.version,
        update.ops.len()
    );
    let config = inner.downstream.locked().clone();
    {
        let store = PublisherStore::open(&config.data_dir, config.map_size)?;
        let tables = store.tables(name)?;
        store.replace_database(name, tables, update.version, &update.ops)?;
        store.release_lock();
    }
    *publisher = Some(reopen(&config, &inner.stop)?);
    inner.counters.resets.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Reopens the downstream publisher if a failed replacement left none.
pub(super) fn ensure_publisher(inner: &RelayInner) -> Result<()> {
    if inner.publisher.read_locked().is_some() {
        return Ok(());
    }
    let mut publisher = inner.publisher.write_locked();
    if publisher.is_none() {
        let config = inner.downstream.locked().clone();
        *publisher = Some(reopen(&config, &inner.stop)?);
    }
    Ok(())
}

/// Opens the publisher, retrying an I/O failure (the control port still held) for up to
/// [`REOPEN_FOR`].
fn reopen(config: &PublisherConfig, stop: &crate::net::StopFlag) -> Result<Publisher> {
    let deadline = Instant::now() + REOPEN_FOR;
    loop {
        match Publisher::open(config.clone()) {
            Ok(p) => return Ok(p),
            Err(e) if e.kind() == crate::ErrorKind::Io && Instant::now() < deadline => {
                if stop.is_stopped() {
                    return Err(e);
                }
                log::warn!("relay: reopening the downstream publisher: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}
