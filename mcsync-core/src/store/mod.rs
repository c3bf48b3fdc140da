//! LMDB storage (lmdb-rkv): the publisher's journal and master state, the subscriber's
//! replicas. One write transaction is one unit of durability; readers never see half of one.

pub mod publisher;
mod publisher_reset;
#[cfg(test)]
mod replica_acl_tests;
mod state_writer;
pub mod subscriber;
pub mod unsynced;

pub use publisher::{PublisherStore, StoreCore};
pub use subscriber::SubscriberStore;

use crate::sync::{Locked, RwLocked};
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
    /// Set when the environment was opened with `MDB_NOSYNC`: its writes keep the unsynced
    /// marker (see [`unsynced`]).
    unsynced: Option<unsynced::Tracker>,
    // Declared last so the environment is closed before another process may take the lock.
    lock: std::sync::Mutex<Option<DirLock>>,
}

/// An exclusive OS lock (flock) on a data directory, held for the life of the store: two
/// writers on one LMDB environment would each hand out the same versions.
///
/// flock locks belong to the open file description, so a second open in the same process
/// is refused like one in another process; the kernel releases the lock when the holder
/// exits, kill -9 included, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Name of the lock file inside a data directory.
pub const LOCK_FILE: &str = "mcsync.lock";

impl DirLock {
    /// Takes the lock on `dir` (which must exist), or fails with a `Config` error naming the
    /// directory and the PID of the process holding it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        use std::io::{Read, Seek, Write};
        let path = dir.join(LOCK_FILE);
        let ctx = |e| Error::io(format!("opening lock file {}", path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(ctx)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) if pid == std::process::id() => "this process".to_owned(),
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process".to_owned(),
                };
                return Err(Error::Config(format!(
                    "data directory {} is in use by {holder} (one publisher or subscriber per \
                     data directory)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        // Only the holder writes its PID, so a reader refused above sees the holder's.
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(DirLock { _file: file })
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("path", &self.path).finish()
    }
}

const MAX_DBS: u32 = 1024;

/// LMDB reader slots: every control connection (at most 512) may read at once, beside the
/// host's own threads reading replicas and the publisher's maintenance. A slot costs 64
/// bytes of the lock file.
pub const MAX_READERS: u32 = 2048;

impl Env {
    /// Opens (creating if needed) the environment in directory `dir`.
    pub fn open(dir: &Path, map_size: usize) -> Result<Env> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
        let lock = DirLock::acquire(dir)?;
        Env::open_locked(dir, map_size, lock, None)
    }

    /// Opens the environment in `dir`, whose lock the caller took. With `unsynced` it is
    /// opened with `MDB_NOSYNC` and every write transaction first makes sure the unsynced
    /// marker is on disk; [`Env::sync`] flushes.
    pub fn open_locked(
        dir: &Path,
        map_size: usize,
        lock: DirLock,
        unsynced: Option<unsynced::Tracker>,
    ) -> Result<Env> {
        // Read transactions are short and may run on any thread: without NOTLS each
        // thread that ever read would pin a reader slot for its whole life.
        let mut flags = lmdb::EnvironmentFlags::NO_TLS;
        if unsynced.is_some() {
            flags |= lmdb::EnvironmentFlags::NO_SYNC;
        }
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_map_size(map_size.max(1 << 20))
            .set_max_readers(MAX_READERS)
            .set_flags(flags)
            .open(dir)
            .map_err(|e| Error::Storage(format!("opening LMDB in {}: {e}", dir.display())))?;
        Ok(Env {
            env,
            gate: RwLock::new(()),
            path: dir.to_owned(),
            unsynced,
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    /// The unsynced marker's tracker, when the environment was opened with `MDB_NOSYNC`.
    pub fn unsynced(&self) -> Option<&unsynced::Tracker> {
        self.unsynced.as_ref()
    }

    /// Flushes every committed transaction to disk (fsync), whatever the environment's
    /// flags. Applies go on meanwhile: the gate is held shared (only a map resize waits).
    pub fn sync(&self) -> Result<()> {
        let _g = self.gate.read_locked();
        self.env
            .sync(true)
            .map_err(|e| storage_error(&self.path, e))
    }

    /// Gives up the data directory's lock once its owner is closed and will write no more
    /// (a closed handle that lingers, e.g. in a garbage-collected binding, must not keep
    /// the directory from being opened again). Reads through this environment stay safe:
    /// LMDB serializes writers across processes and readers never block.
    pub fn release_lock(&self) {
        drop(self.lock.locked().take());
    }

    /// Opens or creates a named database.
    pub fn db(&self, name: &str) -> Result<Database> {
        let _g = self.gate.read_locked();
        self.env
            .create_db(Some(name), DatabaseFlags::empty())
            .map_err(|e| Error::Storage(format!("opening table {name:?}: {e}")))
    }

    /// Opens a named database if it exists (never creates one).
    pub fn existing_db(&self, name: &str) -> Result<Option<Database>> {
        let _g = self.gate.read_locked();
        match self.env.open_db(Some(name)) {
            Ok(db) => Ok(Some(db)),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(Error::Storage(format!("opening table {name:?}: {e}"))),
        }
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&RoTransaction<'_>) -> std::result::Result<T, lmdb::Error>,
    ) -> Result<T> {
        let _g = self.gate.read_locked();
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
                let _unsynced = match &self.unsynced {
                    Some(t) => {
                        t.begin()?;
                        Some(EndOnDrop(t))
                    }
                    None => None,
                };
                let _g = self.gate.read_locked();
                let mut txn = self
                    .env
                    .begin_rw_txn()
                    .map_err(|e| storage_error(&self.path, e))?;
                match f(&mut txn) {
                    Ok(v) => txn.commit().map(|_| v),
                    Err(e) => Err(e),
                }
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(lmdb::Error::MapFull) => self.grow()?,
                Err(e) => return Err(storage_error(&self.path, e)),
            }
        }
    }

    fn grow(&self) -> Result<()> {
        let _g = self.gate.write_locked();
        let now = self.env.info()?.map_size();
        let next = now.saturating_mul(2);
        log::info!(
            "LMDB map {} full at {now} bytes; growing to {next}",
            self.path.display()
        );
        self.env
            .set_map_size(next)
            .map_err(|e| storage_error(&self.path, e))?;
        Ok(())
    }
}

/// Ends a tracked write transaction however it ends.
struct EndOnDrop<'a>(&'a unsynced::Tracker);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Free bytes available to unprivileged writers in `dir`, if the OS says.
pub fn free_disk_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Below this much free space an I/O error of a write is taken for a full disk: LMDB
/// reports a short write (the device filled up in the middle of it) as `EIO`.
pub const LOW_DISK_BYTES: u64 = 64 << 20;

/// A `Storage` error for a failed write to the LMDB environment in `dir`. A full disk
/// says so: `ENOSPC`, or `EIO` while `dir` has less than [`LOW_DISK_BYTES`] free (how
/// LMDB reports a write cut short by a full device), reads "no space left on device",
/// with the free space and LMDB's own words.
pub fn storage_error(dir: &Path, e: lmdb::Error) -> Error {
    describe_storage_error(dir, e, || free_disk_bytes(dir))
}

fn describe_storage_error(dir: &Path, e: lmdb::Error, free: impl FnOnce() -> Option<u64>) -> Error {
    let (enospc, eio) = match e {
        lmdb::Error::Other(code) => (code == libc::ENOSPC, code == libc::EIO),
        _ => (false, false),
    };
    let free = if enospc || eio { free() } else { None };
    if enospc || (eio && free.is_some_and(|f| f < LOW_DISK_BYTES)) {
        let free = free.map_or("free space unknown".to_owned(), |f| {
            format!("{f} bytes free")
        });
        Error::Storage(format!(
            "{}: no space left on device ({free}; LMDB: {e})",
            dir.display()
        ))
    } else {
        Error::Storage(format!("{}: {e}", dir.display()))
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

/// The tables holding one database's records: data (key → value), content hashes
/// (key → xxh3 of key and value), and access groups of restricted records (key → groups).
#[derive(Debug, Clone, Copy)]
pub struct RecordTables {
    /// key → value.
    pub data: Database,
    /// key → content hash (8 bytes, big-endian).
    pub hash: Database,
    /// key → access groups (only restricted records). The publisher's and the replica's
    /// stores both keep it, so a resync or a reset hands restricted records on restricted.
    pub acl: Option<Database>,
}

/// An order-independent digest of a whole state, updated record by record: the wrapping
/// sum of every record's content hash, and the record count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSum {
    /// Wrapping sum of content hashes.
    pub sum: u64,
    /// Number of records.
    pub count: u64,
}

impl StateSum {
    fn meta_key(name: &str) -> String {
        format!("sum:{name}")
    }

    /// Reads the stored sum of database `name`.
    pub(crate) fn load(
        txn: &impl Transaction,
        meta: Database,
        name: &str,
    ) -> std::result::Result<StateSum, lmdb::Error> {
        match txn.get(meta, &Self::meta_key(name)) {
            Ok(b) if b.len() == 16 => Ok(StateSum {
                sum: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                count: u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            }),
            Ok(_) => Err(lmdb::Error::Corrupted),
            Err(lmdb::Error::NotFound) => Ok(StateSum::default()),
            Err(e) => Err(e),
        }
    }

    /// Stores the sum of database `name`.
    pub(crate) fn store(
        &self,
        txn: &mut RwTransaction<'_>,
        meta: Database,
        name: &str,
    ) -> std::result::Result<(), lmdb::Error> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.sum.to_be_bytes());
        b[8..].copy_from_slice(&self.count.to_be_bytes());
        txn.put(meta, &Self::meta_key(name), &b, lmdb::WriteFlags::empty())
    }

    pub(crate) fn remove(&mut self, h: u64) {
        self.sum = self.sum.wrapping_sub(h);
        self.count = self.count.saturating_sub(1);
    }

    pub(crate) fn add(&mut self, h: u64) {
        self.sum = self.sum.wrapping_add(h);
        self.count += 1;
    }
}

fn del_if_present(
    txn: &mut RwTransaction<'_>,
    db: Database,
    key: &[u8],
) -> std::result::Result<(), lmdb::Error> {
    match txn.del(db, &key, None) {
        Ok(()) | Err(lmdb::Error::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Encodes access groups for the acl table.
pub(crate) fn encode_groups(groups: &[String]) -> Vec<u8> {
    groups.join("\n").into_bytes()
}

/// Decodes access groups stored by [`encode_groups`].
pub(crate) fn decode_groups(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .split('\n')
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes a record, its content hash and its groups, or deletes them, keeping `sum`
/// current. Runs inside the caller's transaction, so record, hash and digest always agree.
pub(crate) fn apply_op(
    txn: &mut RwTransaction<'_>,
    t: &RecordTables,
    sum: &mut StateSum,
    op: &crate::Op,
) -> std::result::Result<(), lmdb::Error> {
    let w = lmdb::WriteFlags::empty();
    match txn.get(t.hash, &op.key) {
        Ok(b) if b.len() == 8 => sum.remove(u64::from_be_bytes(b.try_into().expect("8 bytes"))),
        Ok(_) => return Err(lmdb::Error::Corrupted),
        Err(lmdb::Error::NotFound) => {}
        Err(e) => return Err(e),
    }
    match op.kind {
        crate::OpKind::Put => {
            let h = record_hash(&op.key, &op.value);
            txn.put(t.data, &op.key, &op.value, w)?;
            txn.put(t.hash, &op.key, &h.to_be_bytes(), w)?;
            sum.add(h);
            if let Some(acl) = t.acl {
                if op.groups.is_empty() {
                    del_if_present(txn, acl, &op.key)?;
                } else {
                    txn.put(acl, &op.key, &encode_groups(&op.groups), w)?;
                }
            }
        }
        crate::OpKind::Delete => {
            for db in [Some(t.data), Some(t.hash), t.acl].into_iter().flatten() {
                del_if_present(txn, db, &op.key)?;
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

/// Every record of `t` as a put with its access groups (from `t.acl`, when kept), in key
/// order: a whole state as a reset hands it over, restrictions included.
pub(crate) fn read_all_puts(
    txn: &impl Transaction,
    t: &RecordTables,
) -> std::result::Result<Vec<crate::Op>, lmdb::Error> {
    use lmdb::Cursor;
    let mut cur = txn.open_ro_cursor(t.data)?;
    let mut out = Vec::new();
    for item in cur.iter_start() {
        let (k, v) = item?;
        let groups = match t.acl.map(|acl| txn.get(acl, &k)) {
            Some(Ok(g)) => decode_groups(g),
            None | Some(Err(lmdb::Error::NotFound)) => Vec::new(),
            Some(Err(e)) => return Err(e),
        };
        out.push(crate::Op {
            kind: crate::OpKind::Put,
            key: k.to_vec(),
            value: v.to_vec(),
            groups,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hundred_threads_can_read_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::open(dir.path(), 1 << 20).unwrap();
        let db = env.db("t").unwrap();
        env.write(|txn| txn.put(db, b"k", b"v", lmdb::WriteFlags::empty()))
            .unwrap();
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let (holding, failed, ok) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        std::thread::scope(|s| {
            for _ in 0..300 {
                s.spawn(|| {
                    // Each thread holds its read transaction until all 300 hold one (or one
                    // could not begin, which is the failure this test is about).
                    let got = env.read(|txn| {
                        holding.fetch_add(1, SeqCst);
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(120);
                        while holding.load(SeqCst) + failed.load(SeqCst) < 300 {
                            assert!(std::time::Instant::now() < deadline, "readers never met");
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        txn.get(db, b"k").map(|v| v.to_vec())
                    });
                    match got {
                        Ok(v) if v == b"v" => ok.fetch_add(1, SeqCst),
                        _ => failed.fetch_add(1, SeqCst),
                    };
                });
            }
        });
        assert_eq!(ok.into_inner(), 300);
    }

    #[test]
    fn a_full_disk_is_named_as_such() {
        let dir = Path::new("/data");
        let eio = || lmdb::Error::Other(libc::EIO);
        // LMDB's EIO for a write cut short, with the disk (nearly) full.
        let e = describe_storage_error(dir, eio(), || Some(4096));
        assert_eq!(e.kind(), crate::ErrorKind::Storage);
        let m = e.to_string();
        assert!(
            m.contains("/data: no space left on device (4096 bytes free; LMDB: "),
            "{m}"
        );
        // ENOSPC says so whatever the free space.
        let m = describe_storage_error(dir, lmdb::Error::Other(libc::ENOSPC), || None).to_string();
        assert!(
            m.contains("no space left on device (free space unknown"),
            "{m}"
        );
        // EIO with room to spare is an I/O error, and other errors stay as they are.
        for (e, free) in [
            (eio(), Some(10 << 30)),
            (eio(), None),
            (lmdb::Error::Corrupted, Some(0)),
        ] {
            let m = describe_storage_error(dir, e, || free).to_string();
            assert!(!m.contains("no space"), "{m}");
            assert!(m.starts_with("storage: /data: "), "{m}");
        }
        assert!(free_disk_bytes(Path::new("/")).is_some());
        assert!(free_disk_bytes(Path::new("/no/such/dir")).is_none());
    }
}
