//! The unsynced marker of a replica store opened with `MDB_NOSYNC`
//! ([`ReplicaDurability::Periodic`](crate::ReplicaDurability) or `None`).
//!
//! LMDB keeps a NOSYNC store consistent across a process crash (committed transactions are
//! in the OS page cache) but not across an OS crash or power loss: the disk does not keep
//! the order of writes, so a meta page can reach it before the data pages it points to,
//! and pages of the last synced snapshot may have been reused. So before the first
//! unsynced commit (after open, or after a flush that found the store clean) the file
//! [`MARKER`] is written durably (write, fsync, rename, fsync of the directory) with the
//! current boot id, and it is removed durably after a flush that no commit raced. At open
//! a marker from another boot means the last run ended in an OS crash or power loss with
//! unsynced writes: the LMDB files are not trusted (see `SubscriberStore::open_with`).

use crate::config::ReplicaDurability;
use crate::sync::Locked;
use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name of the marker file in the data directory.
pub const MARKER: &str = "replica-unsynced";

/// Where the kernel says which boot this is (a random UUID per boot).
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The current boot id, or `None` when the OS does not say (not Linux).
pub fn current_boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The boot id a marker in `dir` holds, if there is a marker.
pub fn read_marker(dir: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(
            format!("reading {}", dir.join(MARKER).display()),
            e,
        )),
    }
}

/// Fsyncs directory `dir` (so a file created, renamed or removed in it stays so).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// Writes the marker in `dir` durably, holding `boot_id`.
pub fn write_marker(dir: &Path, boot_id: &str) -> Result<()> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let ctx = |e| Error::io(format!("writing {}", tmp.display()), e);
    let mut f = std::fs::File::create(&tmp).map_err(ctx)?;
    f.write_all(format!("{boot_id}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(ctx)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(MARKER)).map_err(ctx)?;
    sync_dir(dir)
}

/// Removes the marker in `dir` durably (nothing to do if there is none).
pub fn remove_marker(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(MARKER)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("removing {}", dir.join(MARKER).display()),
            e,
        )),
    }
}

#[derive(Debug, Default)]
struct State {
    /// The marker is on disk: commits since the last clean flush are not synced.
    dirty: bool,
    /// Write transactions begun and not yet ended.
    in_flight: u64,
    /// Write transactions ended (committed or aborted).
    ended: u64,
}

/// Tracks the write transactions of a NOSYNC environment against its marker.
#[derive(Debug)]
pub struct Tracker {
    dir: PathBuf,
    boot_id: String,
    state: Mutex<State>,
}

/// What a flush needs to know of the writes before its sync.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    ended: u64,
    quiet: bool,
}

impl Tracker {
    /// A tracker of the store in `dir` for this boot; `dirty` when a marker is on disk.
    pub fn new(dir: &Path, boot_id: String, dirty: bool) -> Tracker {
        Tracker {
            dir: dir.to_owned(),
            boot_id,
            state: Mutex::new(State {
                dirty,
                ..State::default()
            }),
        }
    }

    /// Before a write transaction begins: writes the marker first if the store is clean.
    pub fn begin(&self) -> Result<()> {
        let mut s = self.state.locked();
        if !s.dirty {
            write_marker(&self.dir, &self.boot_id)?;
            s.dirty = true;
        }
        s.in_flight += 1;
        Ok(())
    }

    /// After a write transaction ended (whether it committed or not).
    pub fn end(&self) {
        let mut s = self.state.locked();
        s.in_flight -= 1;
        s.ended += 1;
    }

    /// Before a flush's sync: `None` if the store is clean (nothing to sync).
    pub fn before_sync(&self) -> Option<Snapshot> {
        let s = self.state.locked();
        s.dirty.then_some(Snapshot {
            ended: s.ended,
            quiet: s.in_flight == 0,
        })
    }

    /// After a flush's sync: removes the marker if no write transaction was in flight when
    /// the sync started and none began since (so the sync covered every commit). Returns
    /// whether the store is clean now.
    pub fn after_sync(&self, before: Snapshot) -> Result<bool> {
        let mut s = self.state.locked();
        if !s.dirty {
            return Ok(true);
        }
        if !before.quiet || s.in_flight != 0 || s.ended != before.ended {
            return Ok(false);
        }
        // Under the lock: a write that wants to begin waits, then finds the store clean
        // and writes the marker again before its commit.
        remove_marker(&self.dir)?;
        s.dirty = false;
        Ok(true)
    }

    /// Write transactions ended so far (a flusher compares two readings to tell whether
    /// the store was quiet in between).
    pub fn writes_ended(&self) -> u64 {
        self.state.locked().ended
    }

    /// Whether the marker is on disk.
    pub fn dirty(&self) -> bool {
        self.state.locked().dirty
    }
}

/// Name the LMDB data file of a discarded store is kept under (one, the last).
pub const DISCARDED_DATA_FILE: &str = "data.mdb.discarded";

/// What opening a replica store in `dir` found and decided, before LMDB is opened.
#[derive(Debug)]
pub struct Opening {
    /// The durability in effect (`Sync` when a NOSYNC mode has no boot id to rely on).
    pub durability: ReplicaDurability,
    /// The marker's tracker, for a NOSYNC environment.
    pub tracker: Option<Tracker>,
    /// The LMDB files were discarded: the previous run ended in an OS crash or power loss
    /// with unsynced commits.
    pub rebuild: bool,
    /// A marker was found (it is removed once the opened store is synced).
    pub marker: bool,
}

/// Checks the marker in `dir` (whose lock the caller holds) against `boot_id`, and
/// discards the LMDB files when they cannot be trusted.
pub fn opening(
    dir: &Path,
    durability: ReplicaDurability,
    boot_id: Option<String>,
) -> Result<Opening> {
    let marker = read_marker(dir)?;
    let durability = match (durability, &boot_id) {
        (ReplicaDurability::Sync, _) | (_, Some(_)) => durability,
        (_, None) => {
            log::warn!(
                "{}: the OS gives no boot id, so an unsynced replica could not be told apart \
                 after a power loss; replica durability {durability} falls back to sync",
                dir.display()
            );
            ReplicaDurability::Sync
        }
    };
    let rebuild = match (&marker, &boot_id) {
        (None, _) => false,
        (Some(m), Some(b)) => m != b,
        (Some(_), None) => true,
    };
    if rebuild {
        log::warn!(
            "{}: the previous run ended in an OS crash or power loss with unsynced replica \
             commits (marker from boot {:?}, this boot {:?}); the store may be corrupt, so it \
             is discarded (kept aside as {DISCARDED_DATA_FILE}) and the replicas start empty \
             and catch up from the publisher",
            dir.display(),
            marker.as_deref().unwrap_or_default(),
            boot_id.as_deref().unwrap_or("unknown"),
        );
        discard_lmdb_files(dir)?;
    }
    let tracker = match (durability, boot_id) {
        (ReplicaDurability::Sync, _) | (_, None) => None,
        (_, Some(b)) => Some(Tracker::new(dir, b, marker.is_some())),
    };
    Ok(Opening {
        durability,
        tracker,
        rebuild,
        marker: marker.is_some(),
    })
}

/// Moves the LMDB data file of a store that cannot be trusted aside (replacing one moved
/// aside before) and removes its lock file, durably.
fn discard_lmdb_files(dir: &Path) -> Result<()> {
    let data = dir.join("data.mdb");
    if data.exists() {
        std::fs::rename(&data, dir.join(DISCARDED_DATA_FILE))
            .map_err(|e| Error::io(format!("moving {} aside", data.display()), e))?;
    }
    match std::fs::remove_file(dir.join("lock.mdb")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}/lock.mdb", dir.display()), e)),
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SubscriberStore;
    use crate::{Op, Update};
    use std::time::Duration;

    const DB: &str = "db";

    fn open(dir: &Path, d: ReplicaDurability, boot: &str) -> SubscriberStore {
        SubscriberStore::open_with_boot_id(dir, 1 << 20, d, Some(boot.to_owned())).unwrap()
    }

    fn put(store: &SubscriberStore, version: u64) {
        let t = store.tables(DB).unwrap();
        let u = Update {
            version,
            timestamp_us: 0,
            ops: vec![Op::put(format!("k{version}"), b"v".to_vec())],
            reset: false,
        };
        store
            .apply(DB, t, std::slice::from_ref(&u), std::slice::from_ref(&u), 0)
            .unwrap();
    }

    fn marker(dir: &Path) -> Option<String> {
        read_marker(dir).unwrap()
    }

    #[test]
    fn the_marker_is_on_disk_exactly_while_commits_are_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), ReplicaDurability::None, "boot-a");
        assert_eq!(marker(dir.path()), None, "nothing committed yet");
        put(&store, 1);
        assert_eq!(marker(dir.path()).as_deref(), Some("boot-a"));
        assert!(store.unsynced());
        store.flush().unwrap();
        assert_eq!(marker(dir.path()), None);
        assert_eq!(store.replica_stats().flushes, 1);
        store.flush().unwrap();
        assert_eq!(
            store.replica_stats().flushes,
            1,
            "a clean store is not synced"
        );
        put(&store, 2);
        assert_eq!(marker(dir.path()).as_deref(), Some("boot-a"));
        store.close_flush().unwrap();
        assert_eq!(marker(dir.path()), None);
        drop(store);
        // Sync never leaves a marker.
        let store = open(dir.path(), ReplicaDurability::Sync, "boot-a");
        put(&store, 3);
        assert_eq!(marker(dir.path()), None);
        assert_eq!(store.replica_stats().durability, 0);
        assert_eq!(store.applied_version(DB).unwrap(), 3);
    }

    #[test]
    fn a_flush_raced_by_a_commit_keeps_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::new(dir.path(), "boot-a".into(), false);
        t.begin().unwrap();
        let before = t.before_sync().unwrap();
        t.end();
        assert!(
            !t.after_sync(before).unwrap(),
            "a commit ended during the sync"
        );
        assert!(marker(dir.path()).is_some());
        t.begin().unwrap();
        let before = t.before_sync().unwrap();
        assert!(!t.after_sync(before).unwrap(), "a commit is in flight");
        t.end();
        let before = t.before_sync().unwrap();
        assert!(t.after_sync(before).unwrap());
        assert_eq!(marker(dir.path()), None);
        assert!(t.before_sync().is_none());
    }

    #[test]
    fn a_marker_of_this_boot_opens_the_store_and_one_of_another_rebuilds_it() {
        let dir = tempfile::tempdir().unwrap();
        let periodic = ReplicaDurability::Periodic(Duration::from_secs(1));
        let store = open(dir.path(), periodic, "boot-a");
        put(&store, 1);
        put(&store, 2);
        store.close_flush().unwrap();
        drop(store);
        // As a kill -9 leaves it: a marker of this boot. The page cache had everything.
        write_marker(dir.path(), "boot-a").unwrap();
        let store = open(dir.path(), periodic, "boot-a");
        assert!(!store.rebuilt());
        assert_eq!(store.replica_stats().rebuilds, 0);
        assert_eq!(store.applied_version(DB).unwrap(), 2);
        assert_eq!(marker(dir.path()), None, "synced and dropped at open");
        assert!(!store.delivery_state(DB).unwrap().reset_owed);
        put(&store, 3);
        drop(store);
        // As a power loss leaves it: a marker of another boot.
        write_marker(dir.path(), "boot-a").unwrap();
        let store = open(dir.path(), periodic, "boot-b");
        assert!(store.rebuilt());
        assert_eq!(store.replica_stats().rebuilds, 1);
        assert_eq!(marker(dir.path()), None);
        assert!(dir.path().join(DISCARDED_DATA_FILE).exists());
        let t = store.tables(DB).unwrap();
        assert_eq!(store.applied_version(DB).unwrap(), 0);
        assert!(store.all(t).unwrap().is_empty());
        let d = store.delivery_state(DB).unwrap();
        assert!(d.reset_owed, "the host is owed a reset: {d:?}");
        store.reset_delivery(DB, t, 0).unwrap();
        assert!(!store.delivery_state(DB).unwrap().reset_owed);
        // Another database's host is owed one too, until it was handed it.
        assert!(store.delivery_state("other").unwrap().reset_owed);
        put(&store, 1);
        drop(store);
        let store = open(dir.path(), periodic, "boot-b");
        assert!(!store.rebuilt());
        assert_eq!(store.applied_version(DB).unwrap(), 1);
        assert!(!store.delivery_state(DB).unwrap().reset_owed);
    }

    #[test]
    fn without_a_boot_id_a_nosync_mode_falls_back_to_sync_and_a_marker_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        write_marker(dir.path(), "boot-a").unwrap();
        let store =
            SubscriberStore::open_with_boot_id(dir.path(), 1 << 20, ReplicaDurability::None, None)
                .unwrap();
        assert_eq!(store.durability(), ReplicaDurability::Sync);
        assert!(store.rebuilt());
        put(&store, 1);
        assert_eq!(marker(dir.path()), None);
    }
}
