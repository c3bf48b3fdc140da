//! The subscriber's store: per subscribed database a replica (key → value) with a content
//! hash per record and the access groups of restricted ones (`acl/<db>`, as on the
//! publisher), and meta (applied version). Each apply is one LMDB transaction holding
//! one or more whole master transactions, so after a crash the replica is exactly the
//! master's state at the stored version.
//!
//! Delivery to the host is tracked beside it: `delivered:<db>` is the version up to which
//! the host's callbacks have returned, and `pending/<db>` keeps (in the same transaction
//! as the apply) what the host is to see of every update applied after it, so callbacks
//! that a crash or a close cut off are replayed at the next subscribe. The delivered
//! cursor is written lazily (with the next apply, or when the subscription idles or
//! closes): a crash replays at most that window again, it never skips one.

use super::unsynced::{self, Tracker};
use super::{apply_op, get_u64, record_hash, DirLock, Env, RecordTables, StateSum};
use crate::config::ReplicaDurability;
use crate::{Error, Result, Update};
use lmdb::Cursor;
use lmdb::{Database, Transaction, WriteFlags};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// The host is owed a reset (the history changed, or the store was rebuilt; not yet
    /// handed over).
    pub reset_owed: bool,
    /// The reset is owed because the store was rebuilt after a power loss.
    pub rebuilt: bool,
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
    durability: ReplicaDurability,
    flushes: AtomicU64,
    rebuilds: u64,
    /// The final flush ran (and the lock may be gone): the marker is no longer ours.
    closed: AtomicBool,
}

/// How the replica store reaches the disk, as the stats show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStoreStats {
    /// The mode in effect ([`ReplicaDurability::code`]: 0 sync, 1 periodic, 2 none).
    pub durability: u64,
    /// Flushes (fsyncs) of unsynced commits so far.
    pub flushes: u64,
    /// 1 when this open discarded the store because the previous run ended in an OS crash
    /// or power loss with unsynced commits (the replica was rebuilt from the publisher).
    pub rebuilds: u64,
}

/// Set in a store that was rebuilt: every database's host is owed a reset (until it was
/// handed one: `rebuilt-reset:<db>`).
const REBUILT_KEY: &str = "rebuilt";

fn rebuilt_reset_key(name: &str) -> String {
    format!("rebuilt-reset:{name}")
}

impl Drop for SubscriberStore {
    fn drop(&mut self) {
        // The last user is gone without a clean close (the lock is still held, nothing
        // writes any more): flush now.
        if !self.closed.load(Ordering::SeqCst) {
            if let Err(e) = self.close_flush() {
                log::error!("flushing the replica store: {e}");
            }
        }
    }
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
    /// Opens (creating) the store in `dir`, every commit fsynced
    /// ([`ReplicaDurability::Sync`]).
    pub fn open(dir: &Path, map_size: usize) -> Result<SubscriberStore> {
        SubscriberStore::open_with(dir, map_size, ReplicaDurability::Sync)
    }

    /// Opens (creating) the store in `dir` with the given durability, checking the unsynced
    /// marker a previous run may have left against this boot's id.
    pub fn open_with(
        dir: &Path,
        map_size: usize,
        durability: ReplicaDurability,
    ) -> Result<SubscriberStore> {
        SubscriberStore::open_with_boot_id(dir, map_size, durability, unsynced::current_boot_id())
    }

    /// [`open_with`](Self::open_with) with the boot id given (`None`: the OS does not say;
    /// a NOSYNC mode then falls back to `Sync`). Tests simulate a reboot with it.
    ///
    /// A marker from this boot means the last run ended in a process crash: the page cache
    /// holds every commit, so the store is opened, synced, and the marker removed. A marker
    /// from another boot (or any marker when the boot id is unknown) means an OS crash or
    /// power loss with unsynced commits: the LMDB files are not opened, the data file is
    /// kept aside as [`DISCARDED_DATA_FILE`](unsynced::DISCARDED_DATA_FILE), and the store starts empty (the replica
    /// catches up from the publisher; every host is handed a reset).
    pub fn open_with_boot_id(
        dir: &Path,
        map_size: usize,
        durability: ReplicaDurability,
        boot_id: Option<String>,
    ) -> Result<SubscriberStore> {
        durability.validate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
        let lock = DirLock::acquire(dir)?;
        let unsynced::Opening {
            durability,
            tracker,
            rebuild,
            marker,
        } = unsynced::opening(dir, durability, boot_id)?;
        let env = Env::open_locked(dir, map_size, lock, tracker)?;
        let meta = env.db("meta")?;
        let prepared = env.db("prepared")?;
        if rebuild {
            env.write(|txn| txn.put(meta, &REBUILT_KEY, &[1u8], WriteFlags::empty()))?;
        }
        let store = SubscriberStore {
            env,
            meta,
            prepared,
            durability,
            flushes: AtomicU64::new(0),
            rebuilds: u64::from(rebuild),
            closed: AtomicBool::new(false),
        };
        if marker {
            // A process crash (or the rebuild just written): make everything durable and
            // drop the marker, so only commits of this run are ever unsynced.
            store.env.sync()?;
            match store.env.unsynced() {
                Some(t) => {
                    if let Some(before) = t.before_sync() {
                        t.after_sync(before)?;
                    }
                }
                None => unsynced::remove_marker(dir)?,
            }
        }
        Ok(store)
    }

    /// Flushes unsynced commits to disk (nothing to do with [`ReplicaDurability::Sync`] or
    /// when nothing was committed since the last flush) and, when no commit raced the
    /// flush, removes the unsynced marker.
    pub fn flush(&self) -> Result<()> {
        let Some(t) = self.env.unsynced() else {
            return Ok(());
        };
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(before) = t.before_sync() else {
            return Ok(());
        };
        self.env.sync()?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        t.after_sync(before)?;
        Ok(())
    }

    /// Write transactions ended so far in a NOSYNC store (0 otherwise).
    pub fn writes_ended(&self) -> u64 {
        self.env.unsynced().map_or(0, |t| t.writes_ended())
    }

    /// The clean close: flushes and removes the marker (nothing else writes any more).
    /// After it the marker is no longer this store's to touch.
    pub fn close_flush(&self) -> Result<()> {
        let flushed = self.flush();
        self.closed.store(true, Ordering::SeqCst);
        flushed
    }

    /// The durability in effect (`Sync` when a NOSYNC mode had to fall back).
    pub fn durability(&self) -> ReplicaDurability {
        self.durability
    }

    /// How the store reaches the disk, for the stats.
    pub fn replica_stats(&self) -> ReplicaStoreStats {
        ReplicaStoreStats {
            durability: self.durability.code(),
            flushes: self.flushes.load(Ordering::Relaxed),
            rebuilds: self.rebuilds,
        }
    }

    /// Whether this open discarded the store (a power loss with unsynced commits).
    pub fn rebuilt(&self) -> bool {
        self.rebuilds > 0
    }

    /// Whether commits are waiting for a flush (the unsynced marker is on disk).
    pub fn unsynced(&self) -> bool {
        self.env.unsynced().is_some_and(Tracker::dirty)
    }

    /// Releases the data directory's lock (the owner is closed; see [`Env::release_lock`]),
    /// after the final flush.
    pub fn release_lock(&self) {
        if let Err(e) = self.close_flush() {
            log::error!("flushing the replica store at close: {e}");
        }
        self.env.release_lock();
    }

    /// Opens (creating) the tables of database `name`.
    pub fn tables(&self, name: &str) -> Result<ReplicaTables> {
        Ok(ReplicaTables {
            records: RecordTables {
                data: self.env.db(&format!("replica/{name}"))?,
                hash: self.env.db(&format!("hash/{name}"))?,
                // Created here for a replica from before it existed: its restricted
                // records get their groups back with their next write or resync.
                acl: Some(self.env.db(&format!("acl/{name}"))?),
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
            // A rebuilt store owes every host a reset: what it had may be gone.
            let rebuilt = flag(REBUILT_KEY.to_owned())? && !flag(rebuilt_reset_key(name))?;
            Ok(DeliveryState {
                applied,
                delivered,
                pending_complete: !gap || delivered >= applied,
                reset_owed: rebuilt || flag(reset_owed_key(name))?,
                rebuilt,
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

    /// Every record of the replica as a put with its access groups, in key order (what a
    /// reset hands the host).
    pub fn all_puts(&self, tables: ReplicaTables) -> Result<Vec<crate::Op>> {
        self.env
            .read(|txn| super::read_all_puts(txn, &tables.records))
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

    /// Keeps a prepared two-phase update of `name` durably (replacing any earlier one):
    /// in a NOSYNC mode it is flushed at once, so a PREPARED vote sent after it survives
    /// a power loss like it does with `Sync`.
    pub fn put_prepared(&self, name: &str, u: &Update) -> Result<()> {
        let bytes = crate::wire::update::update_to_vec(u);
        self.env
            .write(|txn| txn.put(self.prepared, &name, &bytes, WriteFlags::empty()))?;
        self.flush()
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

    /// Replaces records in one transaction: deletes `deletes`, writes `puts` (fetched
    /// records, each with its access groups), then applies
    /// `updates` (journal entries after the snapshot), records `version`, and recomputes
    /// the state digest from the hash table. Readers see the old state until it commits.
    #[allow(clippy::too_many_arguments)] // one transaction's worth of inputs, each distinct
    pub fn apply_resync(
        &self,
        name: &str,
        tables: ReplicaTables,
        deletes: &[Vec<u8>],
        puts: &[crate::Op],
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
            for op in puts {
                apply_op(txn, &tables.records, &mut sum, op)?;
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
            match txn.get(self.meta, &REBUILT_KEY) {
                Ok(_) => txn.put(
                    self.meta,
                    &rebuilt_reset_key(name),
                    &[1u8],
                    WriteFlags::empty(),
                )?,
                Err(lmdb::Error::NotFound) => {}
                Err(e) => return Err(e),
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
