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
