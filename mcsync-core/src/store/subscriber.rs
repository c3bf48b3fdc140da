//! The subscriber's store: per subscribed database a replica (key → value) with a content
//! hash per record, and meta (applied version). Each apply is one LMDB transaction holding
//! one or more whole master transactions, so after a crash the replica is exactly the
//! master's state at the stored version.

use super::{apply_op, get_u64, record_hash, Env, RecordTables, StateSum};
use crate::{Result, Update};
use lmdb::Cursor;
use lmdb::{Database, Transaction, WriteFlags};
use std::path::Path;

/// A key and the content hash of its record.
pub type KeyHash = (Vec<u8>, u64);

/// Tables of one replicated database.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaTables {
    records: RecordTables,
}

/// The subscriber's LMDB store (shared by its subscriptions).
pub struct SubscriberStore {
    env: Env,
    meta: Database,
    prepared: Database,
}

fn applied_key(name: &str) -> String {
    format!("applied:{name}")
}

impl SubscriberStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path, map_size: usize) -> Result<SubscriberStore> {
        let env = Env::open(dir, map_size)?;
        let meta = env.db("meta")?;
        let prepared = env.db("prepared")?;
        Ok(SubscriberStore {
            env,
            meta,
            prepared,
        })
    }

    /// Releases the data directory's lock (the owner is closed; see [`Env::release_lock`]).
    pub fn release_lock(&self) {
        self.env.release_lock();
    }

    /// Opens (creating) the tables of database `name`.
    pub fn tables(&self, name: &str) -> Result<ReplicaTables> {
        Ok(ReplicaTables {
            records: RecordTables {
                data: self.env.db(&format!("replica/{name}"))?,
                hash: self.env.db(&format!("hash/{name}"))?,
                acl: None,
            },
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
            let mut sum = StateSum::load(txn, self.meta, name)?;
            for u in updates {
                for op in &u.ops {
                    apply_op(txn, &tables.records, &mut sum, op)?;
                }
            }
            sum.store(txn, self.meta, name)?;
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
        self.env
            .read(|txn| match txn.get(tables.records.data, &key) {
                Ok(v) => Ok(Some(v.to_vec())),
                Err(lmdb::Error::NotFound) => Ok(None),
                Err(e) => Err(e),
            })
    }

    /// Every record of the replica, in key order.
    pub fn all(&self, tables: ReplicaTables) -> Result<Vec<crate::Record>> {
        self.env
            .read(|txn| super::read_all(txn, tables.records.data))
    }

    /// Keeps a prepared two-phase update of `name` durably (replacing any earlier one).
    pub fn put_prepared(&self, name: &str, u: &Update) -> Result<()> {
        let bytes = crate::wire::update::update_to_vec(u);
        self.env
            .write(|txn| txn.put(self.prepared, &name, &bytes, WriteFlags::empty()))
    }

    /// The prepared two-phase update of `name`, if one is kept.
    pub fn prepared(&self, name: &str) -> Result<Option<Update>> {
        let bytes = self.env.read(|txn| match txn.get(self.prepared, &name) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        })?;
        let limits = crate::wire::update::Limits {
            max_update_bytes: usize::MAX,
        };
        bytes
            .map(|b| crate::wire::update::decode_update(&b, &limits))
            .transpose()
            .map_err(|e| crate::Error::Storage(format!("prepared update of {name:?}: {e}")))
    }

    /// Forgets the prepared update of `name`.
    pub fn clear_prepared(&self, name: &str) -> Result<()> {
        self.env
            .write(|txn| match txn.del(self.prepared, &name, None) {
                Ok(()) | Err(lmdb::Error::NotFound) => Ok(()),
                Err(e) => Err(e),
            })
    }

    /// The registration id the publisher gave this replica of `name` (0 if none yet).
    pub fn subscriber_id(&self, name: &str) -> Result<u64> {
        let key = format!("sid:{name}");
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Remembers the registration id (so a restarted participant keeps its identity).
    pub fn set_subscriber_id(&self, name: &str, id: u64) -> Result<()> {
        let key = format!("sid:{name}");
        self.env
            .write(|txn| txn.put(self.meta, &key, &id.to_be_bytes(), WriteFlags::empty()))
    }

    /// The incrementally kept state digest and the applied version, read together.
    pub fn state_sum(&self, name: &str) -> Result<(u64, StateSum)> {
        let key = applied_key(name);
        self.env.read(|txn| {
            let v = get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0);
            Ok((v, StateSum::load(txn, self.meta, name)?))
        })
    }

    /// Every record's key and content hash recomputed from the data itself (not from the
    /// stored hashes, so a store edited behind mcsync's back is seen as it is), with the
    /// applied version.
    pub fn content_hashes(&self, name: &str, tables: ReplicaTables) -> Result<(u64, Vec<KeyHash>)> {
        let key = applied_key(name);
        self.env.read(|txn| {
            let v = get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0);
            let mut cur = txn.open_ro_cursor(tables.records.data)?;
            let mut out = Vec::new();
            for item in cur.iter_start() {
                let (k, val) = item?;
                out.push((k.to_vec(), record_hash(k, val)));
            }
            Ok((v, out))
        })
    }

    /// Replaces records in one transaction: deletes `deletes`, writes `puts`, then applies
    /// `updates` (journal entries after the snapshot), records `version`, and recomputes
    /// the state digest from the hash table. Readers see the old state until it commits.
    pub fn apply_resync(
        &self,
        name: &str,
        tables: ReplicaTables,
        deletes: &[Vec<u8>],
        puts: &[crate::Record],
        updates: &[Update],
        version: u64,
    ) -> Result<()> {
        let key = applied_key(name);
        self.env.write(|txn| {
            let mut sum = StateSum::default();
            for k in deletes {
                apply_op(
                    txn,
                    &tables.records,
                    &mut sum,
                    &crate::Op::delete(k.clone()),
                )?;
            }
            for (k, v) in puts {
                apply_op(
                    txn,
                    &tables.records,
                    &mut sum,
                    &crate::Op::put(k.clone(), v.clone()),
                )?;
            }
            for u in updates {
                for op in &u.ops {
                    apply_op(txn, &tables.records, &mut sum, op)?;
                }
            }
            // Recount from the hash table: repairs a digest a tampered store had skewed.
            let mut total = StateSum::default();
            {
                let mut cur = txn.open_ro_cursor(tables.records.hash)?;
                for item in cur.iter_start() {
                    let (_, h) = item?;
                    total.add(u64::from_be_bytes(
                        h.try_into().map_err(|_| lmdb::Error::Corrupted)?,
                    ));
                }
            }
            total.store(txn, self.meta, name)?;
            txn.put(self.meta, &key, &version.to_be_bytes(), WriteFlags::empty())
        })
    }
}
