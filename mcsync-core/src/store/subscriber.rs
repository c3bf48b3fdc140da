//! The subscriber's store: per subscribed database a replica (key → value) with a content
//! hash per record, and meta (applied version). Each apply is one LMDB transaction holding
//! one or more whole master transactions, so after a crash the replica is exactly the
//! master's state at the stored version.
//!
//! Delivery to the host is tracked beside it: `delivered:<db>` is the version up to which
//! the host's callbacks have returned, and `pending/<db>` keeps (in the same transaction
//! as the apply) what the host is to see of every update applied after it, so callbacks
//! that a crash or a close cut off are replayed at the next subscribe. The delivered
//! cursor is written lazily (with the next apply, or when the subscription idles or
//! closes): a crash replays at most that window again, it never skips one.

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
    /// version → what the host sees of that update, for versions not yet delivered.
    pending: Database,
}

/// Where delivery to the host stands for one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryState {
    /// Version the replica is at.
    pub applied: u64,
    /// Version up to which the host's callbacks returned (durably recorded).
    pub delivered: u64,
    /// Whether `pending` holds every update in (delivered, applied] (false when updates
    /// were applied with no callback to deliver them to).
    pub pending_complete: bool,
    /// The host is owed a reset (the history changed; not yet handed over).
    pub reset_owed: bool,
}

/// What a resync keeps for the host, in the same transaction as the resync itself.
#[derive(Debug, Clone, Copy)]
pub enum ResyncDelivery<'a> {
    /// Keep these (what the host sees of the resync) as pending, to be delivered.
    Keep(&'a [Update]),
    /// The host will be handed the whole state: drop pending, delivered = the version.
    Reset,
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

fn delivered_key(name: &str) -> String {
    format!("delivered:{name}")
}

/// Set while `pending/<db>` does not cover everything after the delivered cursor.
fn pending_gap_key(name: &str) -> String {
    format!("pending-gap:{name}")
}

/// Set while the host is owed a reset (the whole state) after a history change.
fn reset_owed_key(name: &str) -> String {
    format!("reset-owed:{name}")
}

fn incarnation_key(name: &str) -> String {
    format!("incarnation:{name}")
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
            pending: self.env.db(&format!("pending/{name}"))?,
        })
    }

    /// Version the replica of `name` is at (0 if never applied).
    pub fn applied_version(&self, name: &str) -> Result<u64> {
        let key = applied_key(name);
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Applies whole updates, in version order, in one durable transaction and records the
    /// last one's version. In the same transaction it keeps `shown` (what the host is to
    /// see of them; empty when nothing is delivered to a host) for replay, and moves the
    /// delivered cursor to `delivered` (callbacks that returned since the last write).
    pub fn apply(
        &self,
        name: &str,
        tables: ReplicaTables,
        updates: &[Update],
        shown: &[Update],
        delivered: u64,
    ) -> Result<()> {
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
            )?;
            self.keep_pending(txn, name, tables, shown)?;
            crate::crash::point("apply.in_txn");
            self.record_delivered(txn, name, tables, delivered)
        })
    }

    /// Keeps what the host is to see of just-applied updates until its callbacks return;
    /// with nothing to keep (no host), marks the kept updates incomplete instead. Runs inside
    /// the caller's (the apply's) transaction.
    fn keep_pending(
        &self,
        txn: &mut lmdb::RwTransaction<'_>,
        name: &str,
        tables: ReplicaTables,
        shown: &[Update],
    ) -> std::result::Result<(), lmdb::Error> {
        if shown.is_empty() {
            txn.put(
                self.meta,
                &pending_gap_key(name),
                &[1u8],
                WriteFlags::empty(),
            )?;
        }
        for u in shown {
            let bytes = crate::wire::update::update_to_vec(u);
            txn.put(
                tables.pending,
                &u.version.to_be_bytes(),
                &bytes,
                WriteFlags::empty(),
            )?;
        }
        Ok(())
    }

    /// Moves the delivered cursor forward to `v` (never back) and forgets the pending
    /// updates it covers. Runs inside the caller's transaction.
    fn record_delivered(
        &self,
        txn: &mut lmdb::RwTransaction<'_>,
        name: &str,
        tables: ReplicaTables,
        v: u64,
    ) -> std::result::Result<(), lmdb::Error> {
        let key = delivered_key(name);
        if get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0) >= v {
            return Ok(());
        }
        txn.put(self.meta, &key, &v.to_be_bytes(), WriteFlags::empty())?;
        let done: Vec<Vec<u8>> = {
            let mut cur = txn.open_ro_cursor(tables.pending)?;
            let mut out = Vec::new();
            for item in cur.iter_start() {
                let (k, _) = item?;
                if k > &v.to_be_bytes()[..] {
                    break;
                }
                out.push(k.to_vec());
            }
            out
        };
        for k in done {
            txn.del(tables.pending, &k, None)?;
        }
        // Caught up: whatever was applied without pending copies is delivered now.
        let applied = get_u64(txn, self.meta, applied_key(name).as_bytes())?.unwrap_or(0);
        if v >= applied {
            match txn.del(self.meta, &pending_gap_key(name), None) {
                Ok(()) | Err(lmdb::Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records durably that the host's callbacks returned up to version `v`.
    pub fn mark_delivered(&self, name: &str, tables: ReplicaTables, v: u64) -> Result<()> {
        self.env
            .write(|txn| self.record_delivered(txn, name, tables, v))
    }

    /// Where delivery stands for `name`.
    pub fn delivery_state(&self, name: &str) -> Result<DeliveryState> {
        self.env.read(|txn| {
            let applied = get_u64(txn, self.meta, applied_key(name).as_bytes())?.unwrap_or(0);
            // A store from before delivery was tracked counts as delivered up to applied.
            let delivered = get_u64(txn, self.meta, delivered_key(name).as_bytes())?
                .unwrap_or(applied)
                .min(applied);
            let flag = |key: String| match txn.get(self.meta, &key) {
                Ok(_) => Ok(true),
                Err(lmdb::Error::NotFound) => Ok(false),
                Err(e) => Err(e),
            };
            let gap = flag(pending_gap_key(name))?;
            Ok(DeliveryState {
                applied,
                delivered,
                pending_complete: !gap || delivered >= applied,
                reset_owed: flag(reset_owed_key(name))?,
            })
        })
    }

    /// The kept (not yet delivered) updates of `name` after version `after`, in version
    /// order, at most `max_bytes` of them (at least one).
    pub fn pending_after(
        &self,
        name: &str,
        tables: ReplicaTables,
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<Update>> {
        let limits = crate::wire::update::Limits {
            max_update_bytes: usize::MAX,
        };
        let raw = self.env.read(|txn| {
            let mut cur = txn.open_ro_cursor(tables.pending)?;
            let mut out = Vec::new();
            let mut bytes = 0;
            let start = (after.saturating_add(1)).to_be_bytes();
            for item in cur.iter_from(start) {
                let (_, v) = item?;
                bytes += v.len();
                out.push(v.to_vec());
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })?;
        raw.iter()
            .map(|b| crate::wire::update::decode_update(b, &limits))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| crate::Error::Storage(format!("pending update of {name:?}: {e}")))
    }

    /// The history (incarnation id) the replica of `name` belongs to (0 if not known yet).
    pub fn incarnation(&self, name: &str) -> Result<u64> {
        let key = incarnation_key(name);
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// The databases this store holds a replica of (every one that was ever applied to),
    /// in name order.
    pub fn database_names(&self) -> Result<Vec<String>> {
        self.env.read(|txn| {
            let mut cur = txn.open_ro_cursor(self.meta)?;
            let mut out = Vec::new();
            for item in cur.iter_from(b"applied:") {
                let (k, _) = item?;
                let Some(name) = k.strip_prefix(b"applied:") else {
                    break;
                };
                out.push(String::from_utf8_lossy(name).into_owned());
            }
            Ok(out)
        })
    }

    /// Records the history the replica of `name` belongs to.
    pub fn set_incarnation(&self, name: &str, id: u64) -> Result<()> {
        let key = incarnation_key(name);
        self.env
            .write(|txn| txn.put(self.meta, &key, &id.to_be_bytes(), WriteFlags::empty()))
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

    /// Number of records in the replica (LMDB's entry count: no record is read).
    pub fn count(&self, tables: ReplicaTables) -> Result<u64> {
        self.env
            .read(|txn| Ok(txn.stat(tables.records.data)?.entries() as u64))
    }

    /// Every key of the replica, in key order, as of one consistent version.
    pub fn keys(&self, tables: ReplicaTables) -> Result<Vec<Vec<u8>>> {
        self.env.read(|txn| {
            let mut cur = txn.open_ro_cursor(tables.records.data)?;
            let mut out = Vec::new();
            for item in cur.iter_start() {
                out.push(item?.0.to_vec());
            }
            Ok(out)
        })
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
    #[allow(clippy::too_many_arguments)] // one transaction's worth of inputs, each distinct
    pub fn apply_resync(
        &self,
        name: &str,
        tables: ReplicaTables,
        deletes: &[Vec<u8>],
        puts: &[crate::Record],
        updates: &[Update],
        version: u64,
        delivery: ResyncDelivery<'_>,
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
            txn.put(self.meta, &key, &version.to_be_bytes(), WriteFlags::empty())?;
            crate::crash::point("resync.apply");
            match delivery {
                ResyncDelivery::Keep(shown) => self.keep_pending(txn, name, tables, shown)?,
                ResyncDelivery::Reset => {
                    // The host is owed the whole state (durably, so a crash before it is
                    // handed over still owes it); nothing older is replayed.
                    txn.clear_db(tables.pending)?;
                    txn.put(
                        self.meta,
                        &reset_owed_key(name),
                        &[1u8],
                        WriteFlags::empty(),
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Forgets every pending update and sets the delivered cursor to `version`: the host
    /// was handed the whole state at `version` (a reset).
    pub fn reset_delivery(&self, name: &str, tables: ReplicaTables, version: u64) -> Result<()> {
        self.env.write(|txn| {
            txn.clear_db(tables.pending)?;
            for key in [pending_gap_key(name), reset_owed_key(name)] {
                match txn.del(self.meta, &key, None) {
                    Ok(()) | Err(lmdb::Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            txn.put(
                self.meta,
                &delivered_key(name),
                &version.to_be_bytes(),
                WriteFlags::empty(),
            )
        })
    }
}
