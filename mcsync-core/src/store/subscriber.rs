//! The subscriber's store: per subscribed database a replica (key → value) with a content
//! hash per record, and meta (applied version). Each apply is one LMDB transaction holding
//! one or more whole master transactions, so after a crash the replica is exactly the
//! master's state at the stored version.

use super::{apply_op, get_u64, Env};
use crate::{Result, Update};
use lmdb::{Database, Transaction, WriteFlags};
use std::path::Path;

/// Tables of one replicated database.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaTables {
    replica: Database,
    hash: Database,
}

/// The subscriber's LMDB store (shared by its subscriptions).
pub struct SubscriberStore {
    env: Env,
    meta: Database,
}

fn applied_key(name: &str) -> String {
    format!("applied:{name}")
}

impl SubscriberStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path, map_size: usize) -> Result<SubscriberStore> {
        let env = Env::open(dir, map_size)?;
        let meta = env.db("meta")?;
        Ok(SubscriberStore { env, meta })
    }

    /// Opens (creating) the tables of database `name`.
    pub fn tables(&self, name: &str) -> Result<ReplicaTables> {
        Ok(ReplicaTables {
            replica: self.env.db(&format!("replica/{name}"))?,
            hash: self.env.db(&format!("hash/{name}"))?,
        })
    }

    /// Version the replica of `name` is at (0 if never applied).
    pub fn applied_version(&self, name: &str) -> Result<u64> {
        let key = applied_key(name);
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Applies whole updates, in version order, in one durable transaction and records the
    /// last one's version.
    pub fn apply(&self, name: &str, tables: ReplicaTables, updates: &[Update]) -> Result<()> {
        let Some(last) = updates.last() else {
            return Ok(());
        };
        let key = applied_key(name);
        self.env.write(|txn| {
            for u in updates {
                for op in &u.ops {
                    apply_op(txn, tables.replica, tables.hash, op)?;
                }
            }
            txn.put(
                self.meta,
                &key,
                &last.version.to_be_bytes(),
                WriteFlags::empty(),
            )
        })
    }

    /// One record of the replica.
    pub fn get(&self, tables: ReplicaTables, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.env.read(|txn| match txn.get(tables.replica, &key) {
            Ok(v) => Ok(Some(v.to_vec())),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Every record of the replica, in key order.
    pub fn all(&self, tables: ReplicaTables) -> Result<Vec<crate::Record>> {
        self.env.read(|txn| super::read_all(txn, tables.replica))
    }
}
