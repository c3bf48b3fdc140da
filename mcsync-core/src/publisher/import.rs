//! A relay's way in: an update committed upstream is committed here at the same version,
//! with the same timestamp and operations, journaled and multicast by the normal path.

use super::intake::{CommitRequest, Imported, Intake};
use super::{publisher_closed, Database, Pending};
use crate::wire::update::validate_op;
use crate::{Error, Result, Update};
use crossbeam_channel as chan;

impl Database {
    /// Commits `update` (one committed upstream transaction) at exactly `update.version`
    /// with `update.timestamp_us`, through the intake like any commit: journaled with the
    /// publisher's durability, then multicast. Returns at once; the [`Pending`] answers
    /// with the version, or with a `Config` error when `update.version` is not the next
    /// version of this database (a gap or a duplicate: the caller re-subscribes from
    /// [`version`](Database::version)).
    ///
    /// Unlike [`Transaction::commit`](super::Transaction::commit) it takes an update with no
    /// operation (upstream access groups may have hidden all of them; the version still
    /// counts) and does not apply `max_update_bytes` (the upstream did). A reset update is
    /// refused: the relay replaces the whole database instead.
    pub(crate) fn import(&self, update: &Update) -> Result<Pending<u64>> {
        if update.reset {
            return Err(Error::Config(format!(
                "import into database {:?}: a reset update replaces the database, it is not \
                 imported",
                self.name()
            )));
        }
        for op in &update.ops {
            validate_op(op).map_err(|m| {
                Error::Config(format!(
                    "import into database {:?} at version {}: {m}",
                    self.name(),
                    update.version
                ))
            })?;
        }
        let (reply, rx) = chan::bounded(1);
        let req = Intake::Commit(CommitRequest {
            db: self.db.clone(),
            ops: update.ops.clone(),
            reply,
            import: Some(Imported {
                version: update.version,
                timestamp_us: update.timestamp_us,
            }),
        });
        self.inner
            .intake()?
            .send(req)
            .map_err(|_| publisher_closed())?;
        Ok(Pending::new(rx))
    }
}
