//! The publisher's store, in two LMDB environments:
//!
//! - the **journal** (`<data_dir>/journal/`): per database the encoded updates by version,
//!   and its last version and size. Each commit group is one durable (fsynced) transaction
//!   that appends sequentially; it is the only write on a commit's path.
//! - the **state** (`<data_dir>/`): per database the current records with a content hash
//!   each and their access groups, the state digest and the version they are at; and meta
//!   (database registry, stream ids, key epochs, incarnations, revocations). The state is
//!   derived from the journal: the [`state_writer`](super::state_writer) applies journaled
//!   updates to it in large durable transactions off the commit path, and on open it is
//!   brought up to the journal again. Retention never trims past the state's version, so
//!   the journal always reaches back to it.

use super::{decode_groups, get_u64, Env, RecordTables, StateSum};
use crate::sync::Locked;
use crate::{Error, Result, Update};
use lmdb::{Cursor, Database, Transaction, WriteFlags};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A record's value and its access groups (empty: visible to everyone).
pub type GroupedValue = (Vec<u8>, Vec<String>);

/// LMDB tables of one published database.
#[derive(Debug, Clone, Copy)]
pub struct DbTables {
    /// version → encoded update (journal environment).
    pub(super) journal: Database,
    /// The current records (state environment).
    pub(super) records: RecordTables,
}

/// A record as a hash resync sees it: key, content hash, access groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedRecord {
    /// The key.
    pub key: Vec<u8>,
    /// xxh3 content hash of key and value.
    pub hash: u64,
    /// Access groups (empty: everyone).
    pub groups: Vec<String>,
}

/// One update to append: its database's tables, name, and the update with its encoding.
pub struct JournalEntry<'a> {
    /// Database name (meta key).
    pub name: &'a str,
    /// Its tables.
    pub tables: DbTables,
    /// The update (version assigned).
    pub update: &'a Update,
    /// Its wire encoding, stored in the journal and sent as is.
    pub encoded: &'a [u8],
}

/// The publisher's LMDB store. It dereferences to [`StoreCore`], which holds the
/// environments and every read and write; this handle owns the state writer thread and
/// stops it when closed or dropped.
pub struct PublisherStore {
    core: Arc<StoreCore>,
    writer: Mutex<Option<super::state_writer::StateWriter>>,
}

/// The environments and tables of a [`PublisherStore`], shared with its state writer.
pub struct StoreCore {
    /// The state environment (records, meta).
    pub(super) env: Env,
    pub(super) meta: Database,
    /// The journal environment, and its meta (`v:<db>`, `jbytes:<db>`, `data-file-id`).
    pub(super) journal_env: Env,
    pub(super) jmeta: Database,
    pub(super) tables: Mutex<HashMap<String, DbTables>>,
    /// Held while journaled updates are applied to the state (one pass at a time).
    pub(super) state_lock: Mutex<()>,
    /// Wakes the state writer after a journal commit (taken to stop it).
    pub(super) nudge: Mutex<Option<crossbeam_channel::Sender<()>>>,
    /// Set once the directory's locks are released: nothing is written any more.
    pub(super) released: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for PublisherStore {
    type Target = StoreCore;
    fn deref(&self) -> &StoreCore {
        &self.core
    }
}

impl Drop for PublisherStore {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl PublisherStore {
    /// Opens (creating) the store in `dir`, brings the state up to the journal (it is
    /// behind after a crash) and starts the state writer.
    pub fn open(dir: &Path, map_size: usize) -> Result<PublisherStore> {
        let env = Env::open(dir, map_size)?;
        let meta = env.db("meta")?;
        let journal_env = Env::open(&dir.join(JOURNAL_DIR), map_size)?;
        let jmeta = journal_env.db("meta")?;
        let core = Arc::new(StoreCore {
            env,
            meta,
            journal_env,
            jmeta,
            tables: Mutex::new(HashMap::new()),
            state_lock: Mutex::new(()),
            nudge: Mutex::new(None),
            released: std::sync::atomic::AtomicBool::new(false),
        });
        core.check_file_identity(dir)?;
        for name in core.database_names()? {
            core.tables(&name)?;
        }
        core.migrate_journal()?;
        core.finish_resets()?;
        core.reconcile_journal()?;
        core.apply_journal()?;
        let writer = super::state_writer::StateWriter::start(&core)?;
        Ok(PublisherStore {
            core,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Stops the state writer (it finishes its pass first).
    pub(super) fn stop_writer(&self) {
        if let Some(w) = self.writer.locked().take() {
            w.stop(&self.core);
        }
    }

    /// Stops the state writer, brings the state up to the journal, and releases the data
    /// directory's locks (the owner is closed; see [`Env::release_lock`]). Reads go on
    /// working; nothing is written any more.
    pub fn release_lock(&self) {
        self.stop_writer();
        if let Err(e) = self.apply_journal() {
            log::warn!("bringing the state up to the journal at close: {e} (done at next open)");
        }
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.journal_env.release_lock();
        self.env.release_lock();
    }
}

/// Subdirectory of the data directory holding the journal environment.
pub const JOURNAL_DIR: &str = "journal";

fn version_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// The (device, inode) of a file, as 16 bytes.
fn file_id(file: &Path) -> Result<[u8; 16]> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::metadata(file).map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&m.dev().to_be_bytes());
    id[8..].copy_from_slice(&m.ino().to_be_bytes());
    Ok(id)
}

/// A value of a table, copied out, or `None`.
fn get_bytes(
    txn: &impl Transaction,
    db: Database,
    key: &[u8],
) -> std::result::Result<Option<Vec<u8>>, lmdb::Error> {
    match txn.get(db, &key) {
        Ok(b) => Ok(Some(b.to_vec())),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Puts journal entry `v`: appended at the end when it is the newest version (always, in
/// normal operation), else put in place (a version at or below the last would be a bug
/// upstream; LMDB's `KEYEXIST` from `MDB_APPEND` must not turn it into a failed commit).
fn put_journal(
    txn: &mut lmdb::RwTransaction<'_>,
    journal: Database,
    v: u64,
    encoded: &[u8],
) -> std::result::Result<(), lmdb::Error> {
    match txn.put(journal, &version_key(v), &encoded, WriteFlags::APPEND) {
        Err(lmdb::Error::KeyExist) => {
            txn.put(journal, &version_key(v), &encoded, WriteFlags::empty())
        }
        r => r,
    }
}

impl StoreCore {
    /// A data file that is not the one this store last ran on (restored from a backup, or
    /// copied) may hold an older history under the same incarnation ids, which replicas
    /// could not tell from the one they hold. LMDB writes its data files in place, so a new
    /// (device, inode) of either environment's file means a copy: every database then gets
    /// a new incarnation (replicas resync) and the stream ids start from a fresh random
    /// value. (A journal environment seen for the first time is only recorded.)
    fn check_file_identity(&self, dir: &Path) -> Result<()> {
        let state_id = file_id(&dir.join("data.mdb"))?;
        let journal_id = file_id(&dir.join(JOURNAL_DIR).join("data.mdb"))?;
        let journal_moved = self.journal_env.write(|txn| {
            let known = get_bytes(txn, self.jmeta, b"data-file-id")?;
            txn.put(
                self.jmeta,
                b"data-file-id",
                &journal_id,
                WriteFlags::empty(),
            )?;
            Ok(known.is_some_and(|k| k != journal_id))
        })?;
        self.env.write(|txn| {
            let known = get_bytes(txn, self.meta, b"data-file-id")?;
            let state_moved = known.as_ref().is_some_and(|k| k[..] != state_id[..]);
            if state_moved || journal_moved {
                let mut stale = Vec::new();
                {
                    let mut cur = txn.open_ro_cursor(self.meta)?;
                    for item in cur.iter_start() {
                        let (k, _) = item?;
                        if k.starts_with(b"incarnation:") {
                            stale.push(k.to_vec());
                        }
                    }
                }
                log::warn!(
                    "{}: data file was copied or restored; {} database(s) get a new history id \
                     and replicas will resync",
                    dir.display(),
                    stale.len()
                );
                for k in stale {
                    txn.del(self.meta, &k, None)?;
                }
                let fresh = u64::from(rand::random::<u32>() >> 1);
                txn.put(
                    self.meta,
                    b"stream_id",
                    &fresh.to_be_bytes(),
                    WriteFlags::empty(),
                )?;
            }
            txn.put(self.meta, b"data-file-id", &state_id, WriteFlags::empty())
        })
    }

    /// Opens (creating) the tables of database `name`.
    pub fn tables(&self, name: &str) -> Result<DbTables> {
        let mut map = self.tables.locked();
        if let Some(t) = map.get(name) {
            return Ok(*t);
        }
        let t = DbTables {
            journal: self.journal_env.db(&format!("journal/{name}"))?,
            records: RecordTables {
                data: self.env.db(&format!("state/{name}"))?,
                hash: self.env.db(&format!("hash/{name}"))?,
                acl: Some(self.env.db(&format!("acl/{name}"))?),
            },
        };
        map.insert(name.to_owned(), t);
        Ok(t)
    }

    /// Names of databases ever published from this store, in order of creation.
    pub fn database_names(&self) -> Result<Vec<String>> {
        let mut named: Vec<(u64, String)> = self.env.read(|txn| {
            let mut cur = txn.open_ro_cursor(self.meta)?;
            let mut out = Vec::new();
            for item in cur.iter_from(b"db:") {
                let (k, v) = item?;
                let Some(name) = k.strip_prefix(b"db:") else {
                    break;
                };
                let idx = u64::from_be_bytes(v.try_into().map_err(|_| lmdb::Error::Corrupted)?);
                out.push((idx, String::from_utf8_lossy(name).into_owned()));
            }
            Ok(out)
        })?;
        named.sort();
        Ok(named.into_iter().map(|(_, n)| n).collect())
    }

    /// Registers database `name` and returns its index (stable across restarts; used to
    /// allocate its multicast group).
    pub fn register_database(&self, name: &str) -> Result<u64> {
        let key = format!("db:{name}");
        self.env.write(|txn| {
            if let Some(i) = get_u64(txn, self.meta, key.as_bytes())? {
                return Ok(i);
            }
            let next = get_u64(txn, self.meta, b"db_count")?.unwrap_or(0);
            txn.put(self.meta, &key, &next.to_be_bytes(), WriteFlags::empty())?;
            txn.put(
                self.meta,
                b"db_count",
                &(next + 1).to_be_bytes(),
                WriteFlags::empty(),
            )?;
            Ok(next)
        })
    }

    /// The incarnation id of database `name`: a random nonzero u64 drawn the first time it
    /// is asked for (when the database is created, or on the first open of a data
    /// directory written before incarnations existed) and stored durably in meta
    /// (`incarnation:<name>`), so it stays the same across restarts and changes only when
    /// the database's history does (a new data directory draws a new one).
    pub fn incarnation(&self, name: &str) -> Result<u64> {
        let key = format!("incarnation:{name}");
        self.env.write(|txn| {
            if let Some(id) = get_u64(txn, self.meta, key.as_bytes())?.filter(|&id| id != 0) {
                return Ok(id);
            }
            // Zero is never drawn: replicas use it for "no incarnation known yet".
            let id = loop {
                let id = rand::random::<u64>();
                if id != 0 {
                    break id;
                }
            };
            txn.put(self.meta, &key, &id.to_be_bytes(), WriteFlags::empty())?;
            Ok(id)
        })
    }

    /// Draws the next stream id and stores it durably before it is used, so a restart never
    /// reuses one (the GCM nonce includes it).
    pub fn next_stream_id(&self) -> Result<u32> {
        self.env.write(|txn| {
            let last = match get_u64(txn, self.meta, b"stream_id")? {
                Some(v) => v,
                None => u64::from(rand::random::<u32>() >> 1),
            };
            let next = (last + 1) & 0xFFFF_FFFF;
            txn.put(
                self.meta,
                b"stream_id",
                &next.to_be_bytes(),
                WriteFlags::empty(),
            )?;
            Ok(next as u32)
        })
    }

    /// Draws the next key epoch of database `name` and stores it durably (epochs only grow,
    /// so a restarted publisher never reuses one; the keys themselves never touch disk).
    pub fn next_key_epoch(&self, name: &str) -> Result<u32> {
        let key = format!("epoch:{name}");
        self.env.write(|txn| {
            let next = get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0) + 1;
            txn.put(self.meta, &key, &next.to_be_bytes(), WriteFlags::empty())?;
            Ok((next & 0xFFFF_FFFF) as u32)
        })
    }

    /// Records that `user` is revoked (survives restarts).
    pub fn revoke(&self, user: &str) -> Result<()> {
        let key = format!("revoked:{user}");
        self.env
            .write(|txn| txn.put(self.meta, &key, &1u64.to_be_bytes(), WriteFlags::empty()))
    }

    /// Users revoked so far.
    pub fn revoked(&self) -> Result<Vec<String>> {
        self.env.read(|txn| {
            let mut cur = txn.open_ro_cursor(self.meta)?;
            let mut out = Vec::new();
            for item in cur.iter_from(b"revoked:") {
                let (k, _) = item?;
                let Some(user) = k.strip_prefix(b"revoked:") else {
                    break;
                };
                out.push(String::from_utf8_lossy(user).into_owned());
            }
            Ok(out)
        })
    }

    /// Latest committed (journaled) version of database `name` (0 if none).
    pub fn last_version(&self, name: &str) -> Result<u64> {
        let key = format!("v:{name}");
        self.journal_env
            .read(|txn| Ok(get_u64(txn, self.jmeta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Version the state of database `name` is at (0 if none); at most
    /// [`last_version`](Self::last_version), behind it until the state writer caught up.
    pub fn state_version(&self, name: &str) -> Result<u64> {
        let key = format!("v:{name}");
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Journals updates (of one or several databases) in one durable transaction, the only
    /// fsync on a commit's path; the state writer applies them to the state afterwards.
    ///
    /// Journal keys only grow, so they are appended (`MDB_APPEND`: no search, full pages);
    /// each database's last version and journal size are written once per call.
    pub fn append(&self, entries: &[JournalEntry<'_>]) -> Result<()> {
        self.journal_env.write(|txn| {
            // Per database touched, in order of first appearance: (entry index, last
            // version, journal bytes added). A commit group holds few databases.
            let mut touched: Vec<(usize, u64, u64)> = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let v = e.update.version;
                put_journal(txn, e.tables.journal, v, e.encoded)?;
                let slot = match touched.iter().position(|t| entries[t.0].name == e.name) {
                    Some(slot) => slot,
                    None => {
                        touched.push((i, v, 0));
                        touched.len() - 1
                    }
                };
                touched[slot].1 = v;
                touched[slot].2 += e.encoded.len() as u64;
            }
            for (i, last, added) in touched {
                let name = entries[i].name;
                let held = get_u64(txn, self.jmeta, format!("jbytes:{name}").as_bytes())?;
                self.put_journal_meta(txn, name, last, held.unwrap_or(0) + added)?;
            }
            crate::crash::point("journal.in_commit");
            Ok(())
        })?;
        if let Some(nudge) = &*self.nudge.locked() {
            let _ = nudge.try_send(());
        }
        Ok(())
    }

    /// Writes database `name`'s last journaled version and journal size (`v:<name>`,
    /// `jbytes:<name>` of the journal environment's meta).
    pub(super) fn put_journal_meta(
        &self,
        txn: &mut lmdb::RwTransaction<'_>,
        name: &str,
        last: u64,
        bytes: u64,
    ) -> std::result::Result<(), lmdb::Error> {
        let w = WriteFlags::empty();
        txn.put(self.jmeta, &format!("v:{name}"), &last.to_be_bytes(), w)?;
        txn.put(
            self.jmeta,
            &format!("jbytes:{name}"),
            &bytes.to_be_bytes(),
            w,
        )
    }

    /// Encoded journal entries with versions in `first..=last`, at most `max_count` of them
    /// and at most about `max_bytes`, in order.
    pub fn read_journal(
        &self,
        tables: DbTables,
        first: u64,
        last: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.journal_env.read(|txn| {
            let mut cur = txn.open_ro_cursor(tables.journal)?;
            let mut out = Vec::new();
            let mut bytes = 0;
            for item in cur.iter_from(version_key(first)) {
                let (k, v) = item?;
                let ver = u64::from_be_bytes(k.try_into().map_err(|_| lmdb::Error::Corrupted)?);
                if ver > last
                    || out.len() >= max_count
                    || (bytes > 0 && bytes + v.len() > max_bytes)
                {
                    break;
                }
                bytes += v.len();
                out.push((ver, v.to_vec()));
            }
            Ok(out)
        })
    }

    /// Oldest version still in the journal (0 when empty).
    pub fn oldest_version(&self, tables: DbTables) -> Result<u64> {
        self.journal_env.read(|txn| {
            let mut cur = txn.open_ro_cursor(tables.journal)?;
            let first = cur.iter_start().next();
            match first {
                Some(item) => {
                    let (k, _) = item?;
                    Ok(u64::from_be_bytes(
                        k.try_into().map_err(|_| lmdb::Error::Corrupted)?,
                    ))
                }
                None => Ok(0),
            }
        })
    }

    /// Every record of the current state of a database, in key order: the state at the
    /// latest version journaled when called (or later).
    pub fn state(&self, tables: DbTables) -> Result<Vec<crate::Record>> {
        self.apply_journal()?;
        self.env
            .read(|txn| super::read_all(txn, tables.records.data))
    }

    /// One record of the current state (as [`state`](Self::state)).
    pub fn get(&self, tables: DbTables, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.apply_journal()?;
        self.env
            .read(|txn| match txn.get(tables.records.data, &key) {
                Ok(v) => Ok(Some(v.to_vec())),
                Err(lmdb::Error::NotFound) => Ok(None),
                Err(e) => Err(e),
            })
    }

    /// The state digest (sum of content hashes and count) and the version it belongs to
    /// (the state's, which may be behind the journal), read together.
    pub fn state_sum(&self, name: &str) -> Result<(u64, StateSum)> {
        let key = format!("v:{name}");
        self.env.read(|txn| {
            let v = get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0);
            Ok((v, StateSum::load(txn, self.meta, name)?))
        })
    }

    /// Every record's key, content hash and access groups, with the version they belong
    /// to, read in one transaction after every update journaled before the call is applied
    /// (the publisher side of a hash resync).
    pub fn hash_snapshot(&self, name: &str, tables: DbTables) -> Result<(u64, Vec<HashedRecord>)> {
        self.apply_journal()?;
        let key = format!("v:{name}");
        self.env.read(|txn| {
            let v = get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0);
            let mut restricted = std::collections::HashMap::new();
            if let Some(acl) = tables.records.acl {
                let mut cur = txn.open_ro_cursor(acl)?;
                for item in cur.iter_start() {
                    let (k, g) = item?;
                    restricted.insert(k.to_vec(), decode_groups(g));
                }
            }
            let mut cur = txn.open_ro_cursor(tables.records.hash)?;
            let mut out = Vec::new();
            for item in cur.iter_start() {
                let (k, h) = item?;
                let hash = u64::from_be_bytes(h.try_into().map_err(|_| lmdb::Error::Corrupted)?);
                let groups = restricted.remove(k).unwrap_or_default();
                out.push(HashedRecord {
                    key: k.to_vec(),
                    hash,
                    groups,
                });
            }
            Ok((v, out))
        })
    }

    /// Current values of `keys` with their access groups (`None` where absent), read in one
    /// transaction, with every update journaled before the call applied.
    pub fn get_many(
        &self,
        tables: DbTables,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<GroupedValue>>> {
        self.apply_journal()?;
        self.env.read(|txn| {
            keys.iter()
                .map(|k| {
                    let value = match txn.get(tables.records.data, k) {
                        Ok(v) => v.to_vec(),
                        Err(lmdb::Error::NotFound) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let groups = match tables.records.acl.map(|acl| txn.get(acl, k)) {
                        Some(Ok(g)) => decode_groups(g),
                        None | Some(Err(lmdb::Error::NotFound)) => Vec::new(),
                        Some(Err(e)) => return Err(e),
                    };
                    Ok(Some((value, groups)))
                })
                .collect()
        })
    }

    /// Bytes of journal entries held for database `name`.
    pub fn journal_bytes(&self, name: &str) -> Result<u64> {
        let key = format!("jbytes:{name}");
        self.journal_env
            .read(|txn| Ok(get_u64(txn, self.jmeta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Removes the oldest journal entries of `name` as `policy` says, at most `max_remove`
    /// per call (one transaction), and never one the state has not reached (a restart
    /// replays the journal from the state's version). Returns how many were removed.
    pub fn trim_journal(
        &self,
        name: &str,
        tables: DbTables,
        policy: &crate::config::Retention,
        now_us: u64,
        max_remove: usize,
    ) -> Result<u64> {
        let vkey = format!("v:{name}");
        let jkey = format!("jbytes:{name}");
        let max_age_us = policy.max_age.as_micros() as u64;
        // The state only moves forward, so reading it first is safe.
        let state = self.state_version(name)?;
        self.journal_env.write(|txn| {
            let last = get_u64(txn, self.jmeta, vkey.as_bytes())?.unwrap_or(0);
            let mut bytes = get_u64(txn, self.jmeta, jkey.as_bytes())?.unwrap_or(0);
            let mut doomed = Vec::new();
            {
                let mut cur = txn.open_ro_cursor(tables.journal)?;
                for item in cur.iter_start() {
                    let (k, v) = item?;
                    let ver = u64::from_be_bytes(k.try_into().map_err(|_| lmdb::Error::Corrupted)?);
                    let held = last.saturating_sub(ver) + 1;
                    let ts = crate::wire::update::peek_timestamp(v).unwrap_or(now_us);
                    let too_old = now_us.saturating_sub(ts) > max_age_us;
                    if held <= policy.min_count
                        || ver > state
                        || doomed.len() >= max_remove
                        || (bytes <= policy.max_bytes && !too_old)
                    {
                        break;
                    }
                    bytes = bytes.saturating_sub(v.len() as u64);
                    doomed.push(ver);
                }
            }
            if doomed.is_empty() {
                return Ok(0);
            }
            for ver in &doomed {
                txn.del(tables.journal, &version_key(*ver), None)?;
            }
            txn.put(self.jmeta, &jkey, &bytes.to_be_bytes(), WriteFlags::empty())?;
            crate::crash::point("retention.trim");
            Ok(doomed.len() as u64)
        })
    }

    /// Checks that the store is readable; used at open to fail early with a clear error.
    pub fn check(&self) -> Result<()> {
        self.env
            .read(|txn| get_u64(txn, self.meta, b"db_count").map(|_| ()))
            .map_err(|e| Error::Storage(format!("publisher store unreadable: {e}")))
    }
}

/// Journals versions `versions` of database `name` (registered first), one update each
/// holding `op(version)`: the journal of a test.
#[cfg(test)]
pub(crate) fn journal_ops(
    store: &StoreCore,
    name: &str,
    versions: std::ops::RangeInclusive<u64>,
    op: impl Fn(u64) -> crate::Op,
) {
    store.register_database(name).expect("register");
    let tables = store.tables(name).expect("tables");
    for v in versions {
        let u = Update {
            version: v,
            timestamp_us: v,
            ops: vec![op(v)],
            reset: false,
        };
        let encoded = crate::wire::update::update_to_vec(&u);
        let entry = JournalEntry {
            name,
            tables,
            update: &u,
            encoded: &encoded,
        };
        store.append(&[entry]).expect("append");
    }
}

#[cfg(test)]
mod tests {
    use super::PublisherStore;

    #[test]
    fn incarnation_is_drawn_once_per_database_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = {
            let store = PublisherStore::open(dir.path(), 1 << 20).expect("store");
            let a = store.incarnation("a").expect("incarnation");
            assert_ne!(a, 0);
            assert_eq!(store.incarnation("a").expect("again"), a);
            (a, store.incarnation("b").expect("incarnation"))
        };
        assert_ne!(a, b, "one per database");
        let store = PublisherStore::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.incarnation("a").expect("after reopen"), a);
        assert_eq!(store.incarnation("b").expect("after reopen"), b);
    }
}
