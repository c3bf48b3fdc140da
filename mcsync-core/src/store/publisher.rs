//! The publisher's store: per database a journal (version → encoded update), the current
//! state (key → value) with a content hash per record, and meta (last version, stream ids).

use super::{apply_op, decode_groups, get_u64, Env, RecordTables, StateSum};
use crate::sync::Locked;
use crate::{Error, Result, Update};
use lmdb::{Cursor, Database, Transaction, WriteFlags};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// A record's value and its access groups (empty: visible to everyone).
pub type GroupedValue = (Vec<u8>, Vec<String>);

/// LMDB tables of one published database.
#[derive(Debug, Clone, Copy)]
pub struct DbTables {
    journal: Database,
    records: RecordTables,
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

/// The publisher's LMDB store.
pub struct PublisherStore {
    env: Env,
    meta: Database,
    tables: Mutex<HashMap<String, DbTables>>,
}

fn version_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
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

impl PublisherStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path, map_size: usize) -> Result<PublisherStore> {
        let env = Env::open(dir, map_size)?;
        let meta = env.db("meta")?;
        let store = PublisherStore {
            env,
            meta,
            tables: Mutex::new(HashMap::new()),
        };
        store.check_file_identity(dir)?;
        Ok(store)
    }

    /// A data file that is not the one this store last ran on (restored from a backup, or
    /// copied) may hold an older history under the same incarnation ids, which replicas
    /// could not tell from the one they hold. LMDB writes its data file in place, so a new
    /// (device, inode) means a copy: every database then gets a new incarnation (replicas
    /// resync) and the stream ids start from a fresh random value.
    fn check_file_identity(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let file = dir.join("data.mdb");
        let m = std::fs::metadata(&file)
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&m.dev().to_be_bytes());
        id[8..].copy_from_slice(&m.ino().to_be_bytes());
        self.env.write(|txn| {
            let known = match txn.get(self.meta, b"data-file-id") {
                Ok(b) => Some(b.to_vec()),
                Err(lmdb::Error::NotFound) => None,
                Err(e) => return Err(e),
            };
            if known.as_deref() == Some(&id[..]) {
                return Ok(());
            }
            if known.is_some() {
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
            txn.put(self.meta, b"data-file-id", &id, WriteFlags::empty())
        })
    }

    /// Releases the data directory's lock (the owner is closed; see [`Env::release_lock`]).
    pub fn release_lock(&self) {
        self.env.release_lock();
    }

    /// Opens (creating) the tables of database `name`.
    pub fn tables(&self, name: &str) -> Result<DbTables> {
        let mut map = self.tables.locked();
        if let Some(t) = map.get(name) {
            return Ok(*t);
        }
        let t = DbTables {
            journal: self.env.db(&format!("journal/{name}"))?,
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

    /// Latest committed version of database `name` (0 if none).
    pub fn last_version(&self, name: &str) -> Result<u64> {
        let key = format!("v:{name}");
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Appends updates (of one or several databases) in one durable transaction: journal,
    /// state, hashes and each database's last version.
    ///
    /// Journal keys only grow, so they are appended (`MDB_APPEND`: no search, full pages);
    /// each database's meta (state sum, last version, journal bytes) is read and written
    /// once per call, not once per update.
    pub fn append(&self, entries: &[JournalEntry<'_>]) -> Result<()> {
        self.env.write(|txn| {
            // Per database touched, in order of first appearance: (entry index, sum, last
            // version, journal bytes added). A commit group holds few databases.
            let mut touched: Vec<(usize, StateSum, u64, u64)> = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let v = e.update.version;
                put_journal(txn, e.tables.journal, v, e.encoded)?;
                let slot = match touched.iter().position(|t| entries[t.0].name == e.name) {
                    Some(slot) => slot,
                    None => {
                        let sum = StateSum::load(txn, self.meta, e.name)?;
                        touched.push((i, sum, v, 0));
                        touched.len() - 1
                    }
                };
                let (_, sum, last, bytes) = &mut touched[slot];
                for op in &e.update.ops {
                    apply_op(txn, &e.tables.records, sum, op)?;
                }
                *last = v;
                *bytes += e.encoded.len() as u64;
            }
            for (i, sum, last, added) in touched {
                let name = entries[i].name;
                sum.store(txn, self.meta, name)?;
                txn.put(
                    self.meta,
                    &format!("v:{name}"),
                    &last.to_be_bytes(),
                    WriteFlags::empty(),
                )?;
                let jkey = format!("jbytes:{name}");
                let jb = get_u64(txn, self.meta, jkey.as_bytes())?.unwrap_or(0);
                txn.put(
                    self.meta,
                    &jkey,
                    &(jb + added).to_be_bytes(),
                    WriteFlags::empty(),
                )?;
            }
            crate::crash::point("journal.in_commit");
            Ok(())
        })
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
        self.env.read(|txn| {
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
        self.env.read(|txn| {
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

    /// Every record of the current state of a database, in key order.
    pub fn state(&self, tables: DbTables) -> Result<Vec<crate::Record>> {
        self.env
            .read(|txn| super::read_all(txn, tables.records.data))
    }

    /// One record of the current state.
    pub fn get(&self, tables: DbTables, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.env
            .read(|txn| match txn.get(tables.records.data, &key) {
                Ok(v) => Ok(Some(v.to_vec())),
                Err(lmdb::Error::NotFound) => Ok(None),
                Err(e) => Err(e),
            })
    }

    /// The state digest (sum of content hashes and count) and the version it belongs to,
    /// read together.
    pub fn state_sum(&self, name: &str) -> Result<(u64, StateSum)> {
        let key = format!("v:{name}");
        self.env.read(|txn| {
            let v = get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0);
            Ok((v, StateSum::load(txn, self.meta, name)?))
        })
    }

    /// Every record's key, content hash and access groups, with the version they belong
    /// to, read in one transaction (the publisher side of a hash resync).
    pub fn hash_snapshot(&self, name: &str, tables: DbTables) -> Result<(u64, Vec<HashedRecord>)> {
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
    /// transaction.
    pub fn get_many(
        &self,
        tables: DbTables,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<GroupedValue>>> {
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
        self.env
            .read(|txn| Ok(get_u64(txn, self.meta, key.as_bytes())?.unwrap_or(0)))
    }

    /// Removes the oldest journal entries of `name` as `policy` says, at most `max_remove`
    /// per call (one transaction). Returns how many were removed.
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
        self.env.write(|txn| {
            let last = get_u64(txn, self.meta, vkey.as_bytes())?.unwrap_or(0);
            let mut bytes = get_u64(txn, self.meta, jkey.as_bytes())?.unwrap_or(0);
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
            txn.put(self.meta, &jkey, &bytes.to_be_bytes(), WriteFlags::empty())?;
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
