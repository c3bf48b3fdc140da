//! Replacing a published database's whole state (a relay whose upstream reset it): the
//! records at a version, an empty journal ending at that version, and a new incarnation,
//! so downstream replicas resync. Crash-safe through a marker: the state environment's
//! transaction writes the new state and `reset-journal:<name>`; the journal is emptied
//! after it, and an open that finds the marker empties it again before anything else.

use super::publisher::{DbTables, StoreCore};
use super::{apply_op, get_u64, StateSum};
use crate::sync::Locked;
use crate::{Op, Result};
use lmdb::WriteFlags;

fn marker_key(name: &str) -> String {
    format!("reset-journal:{name}")
}

impl StoreCore {
    /// Replaces database `name`'s state by `records` (puts, with their access groups) at
    /// `version`, empties its journal (its last version becomes `version`) and forgets its
    /// incarnation, so the next [`incarnation`](StoreCore::incarnation) draws a new one.
    /// Call only with no publisher running on the store.
    pub(crate) fn replace_database(
        &self,
        name: &str,
        tables: DbTables,
        version: u64,
        records: &[Op],
    ) -> Result<()> {
        // Held across both transactions: the state writer must not apply the old journal to
        // the new state in between.
        let _g = self.state_lock.locked();
        self.env.write(|txn| {
            txn.clear_db(tables.records.data)?;
            txn.clear_db(tables.records.hash)?;
            if let Some(acl) = tables.records.acl {
                txn.clear_db(acl)?;
            }
            let mut sum = StateSum::default();
            for op in records {
                apply_op(txn, &tables.records, &mut sum, op)?;
            }
            sum.store(txn, self.meta, name)?;
            let w = WriteFlags::empty();
            txn.put(self.meta, &format!("v:{name}"), &version.to_be_bytes(), w)?;
            txn.put(self.meta, &marker_key(name), &version.to_be_bytes(), w)?;
            match txn.del(self.meta, &format!("incarnation:{name}"), None) {
                Err(lmdb::Error::NotFound) => Ok(()),
                r => r,
            }
        })?;
        crate::crash::point("reset.after_state");
        self.finish_reset(name, tables, version)
    }

    /// Empties the journal of every database a replacement left marked (a crash came
    /// between its two transactions).
    pub(super) fn finish_resets(&self) -> Result<()> {
        let names: Vec<String> = self.tables.locked().keys().cloned().collect();
        for name in names {
            let key = marker_key(&name);
            let marked = self
                .env
                .read(|txn| get_u64(txn, self.meta, key.as_bytes()))?;
            if let Some(version) = marked {
                log::warn!("database {name:?}: finishing its replacement at version {version}");
                let tables = self.tables(&name)?;
                self.finish_reset(&name, tables, version)?;
            }
        }
        Ok(())
    }

    fn finish_reset(&self, name: &str, tables: DbTables, version: u64) -> Result<()> {
        self.journal_env.write(|txn| {
            txn.clear_db(tables.journal)?;
            self.put_journal_meta(txn, name, version, 0)
        })?;
        self.env
            .write(|txn| match txn.del(self.meta, &marker_key(name), None) {
                Err(lmdb::Error::NotFound) => Ok(()),
                r => r,
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::store::publisher::journal_ops;
    use crate::store::PublisherStore;
    use crate::Op;

    #[test]
    fn a_replaced_database_holds_the_records_at_the_version_an_empty_journal_and_a_new_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let before = {
            let store = PublisherStore::open(dir.path(), 1 << 22).expect("store");
            journal_ops(&store, "db", 1..=20, |v| Op::put(format!("k{v}"), "old"));
            let id = store.incarnation("db").expect("incarnation");
            let tables = store.tables("db").expect("tables");
            let mut restricted = Op::put("b", "2");
            restricted.groups = vec!["eu".into()];
            let records = [Op::put("a", "1"), restricted];
            store
                .replace_database("db", tables, 7, &records)
                .expect("replace");
            id
        };
        let store = PublisherStore::open(dir.path(), 1 << 22).expect("reopen");
        let tables = store.tables("db").expect("tables");
        assert_eq!(store.last_version("db").unwrap(), 7);
        assert_eq!(store.state_version("db").unwrap(), 7);
        assert_eq!(store.oldest_version(tables).unwrap(), 0, "an empty journal");
        assert_eq!(
            store.state(tables).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        let (_, hashed) = store.hash_snapshot("db", tables).unwrap();
        assert_eq!(hashed[1].groups, vec!["eu".to_string()], "groups kept");
        assert_ne!(store.incarnation("db").unwrap(), before);
    }

    #[test]
    fn an_open_finishes_a_replacement_a_crash_cut_between_its_transactions() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = PublisherStore::open(dir.path(), 1 << 22).expect("store");
            journal_ops(&store, "db", 1..=20, |v| Op::put(format!("k{v}"), "old"));
            store.stop_writer();
            // The state transaction of a replacement at 5 committed, its journal one not.
            store
                .env
                .write(|txn| {
                    let w = lmdb::WriteFlags::empty();
                    txn.put(store.meta, &"v:db", &5u64.to_be_bytes(), w)?;
                    txn.put(store.meta, &"reset-journal:db", &5u64.to_be_bytes(), w)
                })
                .expect("marker");
        }
        let store = PublisherStore::open(dir.path(), 1 << 22).expect("reopen");
        let tables = store.tables("db").expect("tables");
        assert_eq!(store.last_version("db").unwrap(), 5);
        assert!(store
            .read_journal(tables, 1, 20, 100, 1 << 20)
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .env
                .read(|txn| super::get_u64(txn, store.meta, b"reset-journal:db"))
                .unwrap(),
            None
        );
    }
}
