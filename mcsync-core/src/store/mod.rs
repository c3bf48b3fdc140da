//! LMDB storage (lmdb-rkv): the publisher's journal and master state, the subscriber's
//! replicas. One write transaction is one unit of durability; readers never see half of one.

pub mod publisher;
pub mod subscriber;

pub use publisher::PublisherStore;
pub use subscriber::SubscriberStore;

use crate::{Error, Result};
use lmdb::{Database, DatabaseFlags, Environment, RoTransaction, RwTransaction, Transaction};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Content hash of a record: xxh3-64 over the key length, key and value, so that
/// `(k, v)` pairs with the same concatenation still differ.
pub fn record_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(key.len() as u32).to_be_bytes());
    h.update(key);
    h.update(value);
    h.digest()
}

/// A digest of a whole state: xxh3-64 over every record's content hash, in key order.
/// Two stores with the same records have the same digest.
pub fn state_digest<'a>(records: impl IntoIterator<Item = &'a crate::Record>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in records {
        h.update(&record_hash(k, v).to_be_bytes());
    }
    h.digest()
}

/// An LMDB environment that grows its map when full instead of failing.
///
/// LMDB allows a resize only while this process has no transaction open, so every
/// transaction holds the gate shared and a resize holds it exclusively.
pub struct Env {
    env: Environment,
    gate: RwLock<()>,
    path: PathBuf,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("path", &self.path).finish()
    }
}

const MAX_DBS: u32 = 1024;

impl Env {
    /// Opens (creating if needed) the environment in directory `dir`.
    pub fn open(dir: &Path, map_size: usize) -> Result<Env> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_map_size(map_size.max(1 << 20))
            .set_max_readers(256)
            .open(dir)
            .map_err(|e| Error::Storage(format!("opening LMDB in {}: {e}", dir.display())))?;
        Ok(Env {
            env,
            gate: RwLock::new(()),
            path: dir.to_owned(),
        })
    }

    /// Opens or creates a named database.
    pub fn db(&self, name: &str) -> Result<Database> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.env
            .create_db(Some(name), DatabaseFlags::empty())
            .map_err(|e| Error::Storage(format!("opening table {name:?}: {e}")))
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&RoTransaction<'_>) -> std::result::Result<T, lmdb::Error>,
    ) -> Result<T> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let txn = self.env.begin_ro_txn()?;
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    /// Runs `f` in a write transaction and commits it durably. When the map is full the
    /// transaction is aborted, the map doubled, and `f` run again.
    pub fn write<T>(
        &self,
        mut f: impl FnMut(&mut RwTransaction<'_>) -> std::result::Result<T, lmdb::Error>,
    ) -> Result<T> {
        loop {
            let attempt = {
                let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
                let mut txn = self.env.begin_rw_txn()?;
                match f(&mut txn) {
                    Ok(v) => txn.commit().map(|_| v),
                    Err(e) => Err(e),
                }
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(lmdb::Error::MapFull) => self.grow()?,
                Err(e) => return Err(Error::Storage(format!("{}: {e}", self.path.display()))),
            }
        }
    }

    fn grow(&self) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let now = self.env.info()?.map_size();
        let next = now.saturating_mul(2);
        log::info!(
            "LMDB map {} full at {now} bytes; growing to {next}",
            self.path.display()
        );
        self.env.set_map_size(next)?;
        Ok(())
    }
}

/// Reads a big-endian u64 stored in a table, or `None`.
pub(crate) fn get_u64(
    txn: &impl Transaction,
    db: Database,
    key: &[u8],
) -> std::result::Result<Option<u64>, lmdb::Error> {
    match txn.get(db, &key) {
        Ok(b) if b.len() == 8 => Ok(Some(u64::from_be_bytes(b.try_into().expect("8 bytes")))),
        Ok(_) => Err(lmdb::Error::Corrupted),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a record and its content hash, or deletes both.
pub(crate) fn apply_op(
    txn: &mut RwTransaction<'_>,
    data: Database,
    hashes: Database,
    op: &crate::Op,
) -> std::result::Result<(), lmdb::Error> {
    let w = lmdb::WriteFlags::empty();
    match op.kind {
        crate::OpKind::Put => {
            txn.put(data, &op.key, &op.value, w)?;
            txn.put(
                hashes,
                &op.key,
                &record_hash(&op.key, &op.value).to_be_bytes(),
                w,
            )?;
        }
        crate::OpKind::Delete => {
            for db in [data, hashes] {
                match txn.del(db, &op.key, None) {
                    Ok(()) | Err(lmdb::Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Copies every record of a table, in key order.
pub(crate) fn read_all(
    txn: &impl Transaction,
    db: Database,
) -> std::result::Result<Vec<crate::Record>, lmdb::Error> {
    use lmdb::Cursor;
    let mut cur = txn.open_ro_cursor(db)?;
    let mut out = Vec::new();
    for item in cur.iter_start() {
        let (k, v) = item?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}
