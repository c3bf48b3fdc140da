//! A master transaction, and a prepared two-phase update waiting for its decision.

use super::intake::{CommitRequest, Intake, PrepareRequest, PreparedTicket};
use super::{publisher_closed, Database, DbShared};
use crate::proto::two_phase::Decision;
use crate::stats::inc;
use crate::wire::update::{validate_op, MAX_KEY_LEN};
use crate::{Error, Op, Result};
use crossbeam_channel as chan;
use std::sync::Arc;
use std::time::Duration;

/// A pending master transaction: operations collected by [`put`](Transaction::put) and
/// [`delete`](Transaction::delete), applied atomically by [`commit`](Transaction::commit).
/// Dropping it without commit discards it; nothing is written or sent.
pub struct Transaction {
    pub(super) db: Database,
    pub(super) ops: Vec<Op>,
    pub(super) encoded_len: usize,
}

impl Transaction {
    fn push(&mut self, op: Op) -> Result<()> {
        if op.key.len() > MAX_KEY_LEN {
            // Too large, like a value: the same error for either.
            return Err(Error::TooLarge(format!(
                "database {:?}: key of {} bytes exceeds {MAX_KEY_LEN} (LMDB's key limit)",
                self.db.name(),
                op.key.len()
            )));
        }
        validate_op(&op)
            .map_err(|m| Error::Config(format!("database {:?}: {m}", self.db.name())))?;
        let len = op.encoded_len();
        let max = self.db.inner.config.max_update_bytes;
        if self.encoded_len + len > max {
            inc(&self.db.inner.counters.commits_refused);
            return Err(Error::TooLarge(format!(
                "transaction on database {:?} would be {} bytes encoded (keys, values and \
                 groups, plus 21 bytes per update, 12 per put and 8 per delete); the maximum is \
                 {max} (max_update_bytes)",
                self.db.name(),
                self.encoded_len + len
            )));
        }
        self.encoded_len += len;
        self.ops.push(op);
        Ok(())
    }

    /// Adds a put of `value` at `key`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.push(Op::put(key.as_ref(), value.as_ref()))
    }

    /// Adds a put readable only by subscribers holding one of `groups`.
    pub fn put_with_groups(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        groups: &[&str],
    ) -> Result<()> {
        let mut op = Op::put(key.as_ref(), value.as_ref());
        op.groups = groups.iter().map(|g| g.to_string()).collect();
        self.push(op)
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        self.push(Op::delete(key.as_ref()))
    }

    /// Operations collected so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks the transaction is not empty and hands it to the intake thread as `make`
    /// builds it; returns the channel the answer comes back on.
    fn submit<T>(
        self,
        make: impl FnOnce(Arc<DbShared>, Vec<Op>, chan::Sender<T>) -> Intake,
    ) -> Result<chan::Receiver<T>> {
        if self.ops.is_empty() {
            return Err(Error::Config(format!(
                "empty transaction on database {:?}",
                self.db.name()
            )));
        }
        let (reply, rx) = chan::bounded(1);
        let req = make(self.db.db.clone(), self.ops, reply);
        let tx = self.db.inner.intake()?;
        tx.send(req).map_err(|_| publisher_closed())?;
        Ok(rx)
    }

    /// Journals the transaction durably, queues it for multicast, and returns its version.
    pub fn commit(self) -> Result<u64> {
        let rx = self.submit(|db, ops, reply| Intake::Commit(CommitRequest { db, ops, reply }))?;
        rx.recv().map_err(|_| publisher_closed())?
    }

    /// Discards the transaction (the same as dropping it): nothing was written or sent.
    pub fn rollback(self) {}

    /// Two-phase commit: PREPARE at the next version, wait until every participant of
    /// the database has PREPARED (or one REFUSED, or `timeout` passes), then COMMIT.
    /// Returns the version; on abort, [`Error::Aborted`] naming who refused (and why) and
    /// who did not answer.
    pub fn commit_two_phase(self, timeout: Duration) -> Result<u64> {
        self.prepare(timeout)?.commit()
    }

    /// The first phase alone: returns a [`Prepared`] update to commit or roll back. On
    /// a refusal or timeout it is aborted at once and the error says why.
    pub fn prepare(self, timeout: Duration) -> Result<Prepared> {
        let inner = self.db.inner.clone();
        let name = self.db.name().to_owned();
        let rx =
            self.submit(|db, ops, reply| Intake::Prepare(PrepareRequest { db, ops, reply }))?;
        let ticket = rx.recv().map_err(|_| publisher_closed())??;
        let v = ticket.version;
        let mut prepared = Prepared {
            database: name.clone(),
            ticket: Some(ticket),
        };
        match inner.server_ctx.two_phase.wait_votes(&name, v, timeout) {
            Ok(()) => Ok(prepared),
            Err(why) => {
                prepared.resolve(Decision::Abort)?;
                Err(Error::Aborted {
                    message: format!(
                        "two-phase update of database {name:?} at version {v} aborted: {why}"
                    ),
                    refused: why.refused,
                    timed_out: why.timed_out,
                })
            }
        }
    }
}

/// A two-phase update every participant has PREPARED: commit or roll it back. Until then
/// no replica shows it, and later commits of its database wait behind it (other databases
/// go on). Dropping it rolls it back.
pub struct Prepared {
    database: String,
    ticket: Option<PreparedTicket>,
}

impl Prepared {
    /// The version it will have if committed.
    pub fn version(&self) -> u64 {
        self.ticket.as_ref().map_or(0, |t| t.version)
    }

    fn resolve(&mut self, decision: Decision) -> Result<u64> {
        let t = self
            .ticket
            .take()
            .ok_or_else(|| Error::Closed("two-phase update already resolved".into()))?;
        let closed = || Error::Closed("publisher closed during a two-phase update".into());
        t.resolve.send(decision).map_err(|_| closed())?;
        t.done.recv().map_err(|_| closed())?
    }

    /// Journals the version durably and multicasts COMMIT (repeated until every
    /// participant acknowledges); returns the version.
    pub fn commit(mut self) -> Result<u64> {
        let v = self.version();
        match self.resolve(Decision::Commit)? {
            x if x == v => Ok(v),
            _ => Err(Error::Storage(format!(
                "two-phase update of database {:?} at version {v} was not committed",
                self.database
            ))),
        }
    }

    /// Retracts it (ROLLBACK): multicasts ABORT; participants discard what they prepared
    /// and the version is given back.
    pub fn rollback(mut self) -> Result<()> {
        self.resolve(Decision::Abort).map(|_| ())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let _ = self.resolve(Decision::Abort);
        }
    }
}
