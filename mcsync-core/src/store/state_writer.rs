//! The publisher's state writer: applies journaled updates to the state environment off
//! the commit path, many commit groups per durable transaction, and brings the state up
//! to the journal when the store opens (after a crash it is behind).
//!
//! A commit is durable once its journal transaction is; the state is derived data. Both
//! environments are written with fsync, so after kill -9 or a power loss each one is at a
//! transaction it committed: the state at some version `s`, the journal at `j >= s`, and
//! the journal still holds `s + 1..=j` (retention never trims past the state). Opening
//! replays those versions. Readers that must see every commit that returned (`get`,
//! `state`) apply what is pending themselves first.

use super::publisher::{DbTables, StoreCore, JOURNAL_DIR};
use super::{apply_op, StateSum};
use crate::sync::Locked;
use crate::wire::update::{decode_update, Limits};
use crate::{Error, Result, Update};
use crossbeam_channel as chan;
use lmdb::{Cursor, Transaction, WriteFlags};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Most encoded journal bytes applied in one state transaction. What a pass holds in
/// memory is about three times this (the entries read, decoded, and LMDB's dirty pages):
/// 16 MiB made a publisher flooded with 64 MiB of commits grow by 45 MiB.
const APPLY_CHUNK_BYTES: usize = 2 << 20;

/// Shortest time between two passes of the writer: commits that land meanwhile share the
/// next state transaction and its fsync, and a record written many times is written to
/// disk once. Every 10 ms gave the disk about 100 state fsyncs a second beside the
/// journal's and doubled the journal's commit p99 in `mcsync bench`; readers that must see
/// every commit do not wait for it (they apply what is pending themselves).
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(250);

/// With no commit to wake it, the writer still looks this often (a commit whose wake-up
/// was lost to a full nudge channel is applied by then).
const IDLE_PASS_INTERVAL: Duration = Duration::from_secs(1);

/// After a failed pass, the writer waits this long before the next one.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The state writer thread of a publisher store.
pub(super) struct StateWriter {
    thread: JoinHandle<()>,
}

impl StateWriter {
    /// Starts the thread; the store's journal commits wake it through `core.nudge`.
    pub(super) fn start(core: &Arc<StoreCore>) -> Result<StateWriter> {
        let (tx, rx) = chan::bounded(1);
        *core.nudge.locked() = Some(tx);
        let core = core.clone();
        let thread = std::thread::Builder::new()
            .name("mcsync-state".into())
            .spawn(move || run(&core, &rx))
            .map_err(|e| Error::io("spawning the state writer", e))?;
        Ok(StateWriter { thread })
    }

    /// Stops the thread after its current pass.
    pub(super) fn stop(self, core: &StoreCore) {
        drop(core.nudge.locked().take());
        let _ = self.thread.join();
    }
}

fn run(core: &StoreCore, rx: &chan::Receiver<()>) {
    loop {
        match rx.recv_timeout(IDLE_PASS_INTERVAL) {
            Ok(()) | Err(chan::RecvTimeoutError::Timeout) => {}
            Err(chan::RecvTimeoutError::Disconnected) => return,
        }
        match core.apply_journal() {
            Ok(()) => std::thread::sleep(MIN_PASS_INTERVAL),
            Err(e) => {
                log::error!(
                    "applying journaled updates to the publisher's state failed (retried; \
                     commits go on, the journal keeps what is not applied): {e}"
                );
                std::thread::sleep(RETRY_INTERVAL);
            }
        }
    }
}

impl StoreCore {
    /// Applies every journaled update the state has not reached yet, database by database,
    /// in transactions of at most [`APPLY_CHUNK_BYTES`] of journal. Does nothing once the
    /// store released its locks.
    pub fn apply_journal(&self) -> Result<()> {
        if self.released.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _pass = self.state_lock.locked();
        let tables: Vec<(String, DbTables)> = self
            .tables
            .locked()
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        for (name, t) in tables {
            while self.apply_chunk(&name, t)? {}
        }
        Ok(())
    }

    /// Applies the next chunk of journaled updates of `name`; false when the state was
    /// already at the journal's last version.
    fn apply_chunk(&self, name: &str, t: DbTables) -> Result<bool> {
        let last = self.last_version(name)?;
        let state = self.state_version(name)?;
        if state >= last {
            return Ok(false);
        }
        let batch = self.read_journal(t, state + 1, last, usize::MAX, APPLY_CHUNK_BYTES)?;
        let limits = Limits {
            max_update_bytes: usize::MAX,
        };
        let mut updates: Vec<Update> = Vec::with_capacity(batch.len());
        for (want, (v, encoded)) in (state + 1..).zip(&batch) {
            if *v != want {
                return Err(Error::Storage(format!(
                    "database {name:?}: the state is at version {state} but the journal \
                     holds {v} where {want} was expected; the state cannot be brought up to \
                     the journal (restore both environments of the data directory together)"
                )));
            }
            let u = decode_update(encoded, &limits).map_err(|e| {
                Error::Storage(format!(
                    "database {name:?}: journal entry {v} does not decode: {e}"
                ))
            })?;
            updates.push(u);
        }
        let Some(to) = updates.last().map(|u| u.version) else {
            return Err(Error::Storage(format!(
                "database {name:?}: the state is at version {state} but the journal ends \
                 before {} (its last version is {last})",
                state + 1
            )));
        };
        let vkey = format!("v:{name}");
        self.env.write(|txn| {
            let mut sum = StateSum::load(txn, self.meta, name)?;
            for u in &updates {
                for op in &u.ops {
                    apply_op(txn, &t.records, &mut sum, op)?;
                }
            }
            sum.store(txn, self.meta, name)?;
            txn.put(self.meta, &vkey, &to.to_be_bytes(), WriteFlags::empty())?;
            crate::crash::point("state.in_commit");
            Ok(())
        })?;
        Ok(true)
    }

    /// A state ahead of its journal means the journal environment was lost or restored
    /// from an older copy: versions above the journal's last would be handed out again
    /// under the same history id, and replicas past them could not tell. For each such
    /// database the journal's last version is set to the state's (versions go on from
    /// there) and a new incarnation will be drawn (replicas resync by hashes).
    pub(super) fn reconcile_journal(&self) -> Result<()> {
        let names: Vec<String> = self.tables.locked().keys().cloned().collect();
        for name in names {
            let (state, journal) = (self.state_version(&name)?, self.last_version(&name)?);
            if state <= journal {
                continue;
            }
            log::warn!(
                "database {name:?}: the state is at version {state} but the journal ends at \
                 {journal} (journal lost or restored from an older copy); versions go on from \
                 {state} under a new history id, and replicas will resync"
            );
            let bytes = self.journal_bytes(&name)?;
            self.journal_env
                .write(|txn| self.put_journal_meta(txn, &name, state, bytes))?;
            let key = format!("incarnation:{name}");
            self.env.write(|txn| match txn.del(self.meta, &key, None) {
                Err(lmdb::Error::NotFound) => Ok(()),
                r => r,
            })?;
        }
        Ok(())
    }

    /// Moves the journal of a data directory written before the journal had its own
    /// environment (journal tables and their meta in the state environment) into the
    /// journal environment, database by database, each in one transaction per side.
    pub(super) fn migrate_journal(&self) -> Result<()> {
        let names: Vec<String> = self.tables.locked().keys().cloned().collect();
        for name in names {
            let Some(old) = self.env.existing_db(&format!("journal/{name}"))? else {
                continue;
            };
            let t = self.tables(&name)?;
            let vkey = format!("v:{name}");
            let moved = self
                .journal_env
                .read(|txn| super::get_u64(txn, self.jmeta, vkey.as_bytes()))?
                .is_some();
            if !moved {
                self.move_journal(&name, old, t)?;
            }
            // Only now that the journal environment holds them durably.
            self.env.write(|txn| {
                // SAFETY: `old` is not used after this transaction, nor kept anywhere.
                unsafe { txn.drop_db(old) }?;
                match txn.del(self.meta, &format!("jbytes:{name}"), None) {
                    Err(lmdb::Error::NotFound) => Ok(()),
                    r => r,
                }
            })?;
        }
        Ok(())
    }

    /// Copies database `name`'s journal from the old table of the state environment into
    /// the journal environment (with its last version and size), in one transaction.
    fn move_journal(&self, name: &str, old: lmdb::Database, t: DbTables) -> Result<()> {
        let (entries, last, bytes) = self.env.read(|txn| {
            let mut out = Vec::new();
            let mut cur = txn.open_ro_cursor(old)?;
            for item in cur.iter_start() {
                let (k, v) = item?;
                out.push((k.to_vec(), v.to_vec()));
            }
            let last = super::get_u64(txn, self.meta, format!("v:{name}").as_bytes())?;
            let bytes = super::get_u64(txn, self.meta, format!("jbytes:{name}").as_bytes())?;
            Ok((out, last.unwrap_or(0), bytes.unwrap_or(0)))
        })?;
        log::info!(
            "database {name:?}: moving {} journal entries into {JOURNAL_DIR}/",
            entries.len()
        );
        self.journal_env.write(|txn| {
            for (k, v) in &entries {
                txn.put(t.journal, k, v, WriteFlags::empty())?;
            }
            self.put_journal_meta(txn, name, last, bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::publisher::{journal_ops, PublisherStore, JOURNAL_DIR};
    use super::super::Env;
    use crate::config::Retention;
    use crate::Op;
    use lmdb::WriteFlags;
    use std::time::Duration;

    const DB: &str = "db";

    /// Journals versions `from..=to` of `DB`, each putting `k<v % 7>`.
    fn append(store: &PublisherStore, from: u64, to: u64) {
        journal_ops(store, DB, from..=to, |v| {
            Op::put(format!("k{}", v % 7), v.to_be_bytes())
        });
    }

    /// The master state after versions `1..=n`, as a reference model.
    fn model(n: u64) -> Vec<crate::Record> {
        let mut m = std::collections::BTreeMap::new();
        for v in 1..=n {
            m.insert(format!("k{}", v % 7).into_bytes(), v.to_be_bytes().to_vec());
        }
        m.into_iter().collect()
    }

    fn keep_none() -> Retention {
        Retention {
            max_bytes: 0,
            max_age: Duration::from_secs(3600),
            min_count: 0,
            min_free_disk_bytes: 0,
        }
    }

    #[test]
    fn a_state_behind_the_journal_is_caught_up_at_open_and_never_trimmed_past() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = PublisherStore::open(dir.path(), 1 << 20).expect("store");
            // No writer: the state stays where it is, as after a crash before its pass.
            store.stop_writer();
            append(&store, 1, 40);
            assert_eq!(store.state_version(DB).expect("state"), 0);
            assert_eq!(store.last_version(DB).expect("journal"), 40);
            let t = store.tables(DB).expect("tables");
            let removed = store
                .trim_journal(DB, t, &keep_none(), 100, usize::MAX)
                .expect("trim");
            assert_eq!(removed, 0, "nothing past the state's version 0");
            // Readers that must see every commit apply what is pending themselves.
            assert_eq!(store.state(t).expect("state"), model(40));
            assert_eq!(store.state_version(DB).expect("state"), 40);
            append(&store, 41, 50);
            assert_eq!(
                store
                    .trim_journal(DB, t, &keep_none(), 100, usize::MAX)
                    .expect("trim"),
                40,
                "up to the state's version 40, not the journal's 50"
            );
            // Dropped without a pass: versions 41..=50 are only in the journal.
        }
        let store = PublisherStore::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.state_version(DB).expect("state"), 50, "replayed");
        let t = store.tables(DB).expect("tables");
        assert_eq!(store.state(t).expect("state"), model(50));
        let (v, sum) = store.state_sum(DB).expect("sum");
        assert_eq!(v, 50);
        assert_eq!(sum.count, 7);
    }

    /// A journal environment lost (or restored older) while the state survives: versions go
    /// on after the state's, never again from the journal's, and the history id changes.
    #[test]
    fn a_state_ahead_of_a_lost_journal_keeps_versions_and_changes_history() {
        let dir = tempfile::tempdir().expect("temp dir");
        let before = {
            let store = PublisherStore::open(dir.path(), 1 << 20).expect("store");
            append(&store, 1, 20);
            store.apply_journal().expect("apply");
            store.incarnation(DB).expect("incarnation")
        };
        std::fs::remove_dir_all(dir.path().join(JOURNAL_DIR)).expect("lose the journal");
        let store = PublisherStore::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.last_version(DB).expect("journal"), 20);
        assert_ne!(store.incarnation(DB).expect("incarnation"), before);
        append(&store, 21, 22);
        let t = store.tables(DB).expect("tables");
        assert_eq!(store.state(t).expect("state"), model(22));
    }

    #[test]
    fn the_writer_applies_commits_without_being_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = PublisherStore::open(dir.path(), 1 << 20).expect("store");
        append(&store, 1, 25);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while store.state_version(DB).expect("state") < 25 {
            assert!(std::time::Instant::now() < deadline, "state writer stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = store.tables(DB).expect("tables");
        assert_eq!(store.state(t).expect("state"), model(25));
    }

    /// A data directory of the layout before the journal had its own environment (journal
    /// table and `jbytes` in the state environment) opens with its journal moved over.
    #[test]
    fn a_journal_of_the_old_layout_is_moved_into_its_own_environment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (entries, bytes) = {
            let store = PublisherStore::open(dir.path(), 1 << 20).expect("store");
            append(&store, 1, 30);
            store.apply_journal().expect("apply");
            let t = store.tables(DB).expect("tables");
            let entries = store
                .read_journal(t, 1, 30, usize::MAX, usize::MAX)
                .expect("journal");
            (entries, store.journal_bytes(DB).expect("bytes"))
        };
        // Rewrite it into the old layout.
        std::fs::remove_dir_all(dir.path().join(JOURNAL_DIR)).expect("remove journal env");
        {
            let env = Env::open(dir.path(), 1 << 20).expect("env");
            let meta = env.db("meta").expect("meta");
            let old = env.db(&format!("journal/{DB}")).expect("old journal");
            env.write(|txn| {
                for (v, e) in &entries {
                    txn.put(old, &v.to_be_bytes(), e, WriteFlags::empty())?;
                }
                txn.put(
                    meta,
                    &format!("jbytes:{DB}"),
                    &bytes.to_be_bytes(),
                    WriteFlags::empty(),
                )
            })
            .expect("old layout");
        }
        let store = PublisherStore::open(dir.path(), 1 << 20).expect("reopen");
        let t = store.tables(DB).expect("tables");
        assert_eq!(store.last_version(DB).expect("journal"), 30);
        assert_eq!(store.journal_bytes(DB).expect("bytes"), bytes);
        assert_eq!(
            store
                .read_journal(t, 1, 30, usize::MAX, usize::MAX)
                .expect("journal"),
            entries
        );
        assert_eq!(store.state(t).expect("state"), model(30));
        assert!(
            store
                .env
                .existing_db(&format!("journal/{DB}"))
                .expect("lookup")
                .is_none(),
            "the old table is gone"
        );
        append(&store, 31, 32);
        assert_eq!(store.state(t).expect("state"), model(32));
    }
}
