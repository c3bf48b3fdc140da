//! A master transaction, and a prepared two-phase update waiting for its decision.

use super::intake::{CommitRequest, Intake, PrepareRequest, PreparedTicket};
use super::{publisher_closed, Database, DbShared};
use crate::proto::two_phase::Decision;
use crate::stats::inc;
use crate::sync::Locked;
use crate::wire::update::{validate_op, MAX_KEY_LEN};
use crate::{Error, Op, Result};
use crossbeam_channel as chan;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    fn send_to_intake<T>(
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
    /// The same as [`submit`](Transaction::submit) followed by
    /// [`Pending::wait_forever`].
    pub fn commit(self) -> Result<u64> {
        self.submit()?.wait_forever()
    }

    /// Hands the transaction to the publisher and returns at once; the version (or the
    /// error [`commit`](Transaction::commit) would return) comes through the [`Pending`].
    /// The commit goes on whether or not anyone waits for it; dropping the `Pending` only
    /// discards its answer. Errors found before handing it over (an empty transaction, a
    /// closed publisher) are returned here.
    pub fn submit(self) -> Result<Pending<u64>> {
        let rx = self.send_to_intake(|db, ops, reply| {
            Intake::Commit(CommitRequest {
                db,
                ops,
                reply,
                import: None,
            })
        })?;
        Ok(Pending::new(rx))
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
    /// a refusal or timeout it is aborted at once and the error says why. The same as
    /// [`submit_prepare`](Transaction::submit_prepare) followed by
    /// [`PendingPrepare::wait_forever`].
    pub fn prepare(self, timeout: Duration) -> Result<Prepared> {
        self.submit_prepare(timeout)?.wait_forever()
    }

    /// Hands the first phase to the publisher and returns at once; wait for its outcome
    /// with [`PendingPrepare::wait`] in slices. `timeout` counts from when the PREPARE
    /// went out (its version assigned), as in [`prepare`](Transaction::prepare). Dropping
    /// the `PendingPrepare` before the outcome rolls the update back.
    pub fn submit_prepare(self, timeout: Duration) -> Result<PendingPrepare> {
        let inner = self.db.inner.clone();
        let database = self.db.name().to_owned();
        let rx = self
            .send_to_intake(|db, ops, reply| Intake::Prepare(PrepareRequest { db, ops, reply }))?;
        Ok(PendingPrepare {
            inner,
            database,
            timeout,
            stage: PrepareStage::Assigning(rx),
        })
    }
}

/// A two-phase PREPARE on its way (see [`Transaction::submit_prepare`]): its version is
/// being assigned, then the participants vote.
pub struct PendingPrepare {
    inner: Arc<super::Inner>,
    database: String,
    timeout: Duration,
    stage: PrepareStage,
}

enum PrepareStage {
    Assigning(chan::Receiver<Result<PreparedTicket>>),
    Voting {
        prepared: Prepared,
        deadline: Instant,
    },
    Done,
}

impl PendingPrepare {
    /// Waits up to `slice`: `None` while the outcome is not known yet; then, once, the
    /// [`Prepared`] update (every participant PREPARED) or the error
    /// ([`Error::Aborted`] naming who refused and who did not answer; the update is
    /// already rolled back). Later calls return `Error::Closed`.
    pub fn wait(&mut self, slice: Duration) -> Option<Result<Prepared>> {
        let until = Instant::now() + slice;
        loop {
            match &mut self.stage {
                PrepareStage::Done => {
                    return Some(Err(Error::Closed("prepare outcome already taken".into())))
                }
                PrepareStage::Assigning(rx) => {
                    let ticket = match rx.recv_deadline(until) {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => return Some(Err(self.finish(e))),
                        Err(chan::RecvTimeoutError::Timeout) => return None,
                        Err(chan::RecvTimeoutError::Disconnected) => {
                            return Some(Err(self.finish(publisher_closed())))
                        }
                    };
                    self.stage = PrepareStage::Voting {
                        prepared: Prepared {
                            database: self.database.clone(),
                            ticket: Some(ticket),
                        },
                        deadline: Instant::now() + self.timeout,
                    };
                }
                PrepareStage::Voting { prepared, deadline } => {
                    let v = prepared.version();
                    let votes = self.inner.server_ctx.two_phase.votes_by(
                        &self.database,
                        v,
                        until.min(*deadline),
                        until >= *deadline,
                    )?;
                    let PrepareStage::Voting { mut prepared, .. } =
                        std::mem::replace(&mut self.stage, PrepareStage::Done)
                    else {
                        unreachable!("matched above")
                    };
                    return Some(match votes {
                        Ok(()) => Ok(prepared),
                        Err(why) => prepared.resolve(Decision::Abort).and(Err(Error::Aborted {
                            message: format!(
                                "two-phase update of database {:?} at version {v} aborted: {why}",
                                self.database
                            ),
                            refused: why.refused,
                            timed_out: why.timed_out,
                        })),
                    });
                }
            }
        }
    }

    /// Waits for the outcome however long it takes (the vote wait is bounded by the
    /// timeout given at submit).
    pub fn wait_forever(mut self) -> Result<Prepared> {
        loop {
            if let Some(r) = self.wait(Duration::from_secs(3600)) {
                return r;
            }
        }
    }

    fn finish(&mut self, e: Error) -> Error {
        self.stage = PrepareStage::Done;
        e
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

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("database", &self.database)
            .field("version", &self.version())
            .finish()
    }
}

impl std::fmt::Debug for PendingPrepare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            PrepareStage::Assigning(_) => "assigning a version",
            PrepareStage::Voting { .. } => "voting",
            PrepareStage::Done => "done",
        };
        f.debug_struct("PendingPrepare")
            .field("database", &self.database)
            .field("stage", &stage)
            .finish()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let _ = self.resolve(Decision::Abort);
        }
    }
}

/// An answer that will come: "submit now, wait later". Returned by
/// [`Transaction::submit`]; [`wait`](Pending::wait) in slices (checking for signals or a
/// deadline in between) or [`wait_forever`](Pending::wait_forever). The work goes on
/// whether or not anyone waits; dropping a `Pending` only discards the answer.
pub struct Pending<T> {
    // Waiters take turns: the one holding the lock receives and keeps the answer.
    state: Mutex<PendingState<T>>,
}

struct PendingState<T> {
    rx: chan::Receiver<Result<T>>,
    answer: Option<Result<T>>,
}

impl<T: Clone> Pending<T> {
    pub(crate) fn new(rx: chan::Receiver<Result<T>>) -> Self {
        Pending {
            state: Mutex::new(PendingState { rx, answer: None }),
        }
    }

    /// Waits up to `timeout` for the answer: `None` if it has not come yet. Once it has,
    /// it is kept, and every later call returns it again at once. If the publisher closed
    /// without answering, the answer is [`Error::Closed`].
    pub fn wait(&self, timeout: Duration) -> Option<Result<T>> {
        let mut s = self.state.locked();
        if s.answer.is_none() {
            s.answer = match s.rx.recv_timeout(timeout) {
                Ok(answer) => Some(answer),
                Err(chan::RecvTimeoutError::Timeout) => return None,
                Err(chan::RecvTimeoutError::Disconnected) => Some(Err(publisher_closed())),
            };
        }
        s.answer.as_ref().map(clone_result)
    }

    /// Whether the answer has come (a [`wait`](Pending::wait) would return it at once).
    pub fn is_ready(&self) -> bool {
        self.wait(Duration::ZERO).is_some()
    }

    /// Waits for the answer however long it takes.
    pub fn wait_forever(self) -> Result<T> {
        let s = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        match s.answer {
            Some(answer) => answer,
            None => s.rx.recv().map_err(|_| publisher_closed())?,
        }
    }
}

/// A copy of an answer: [`Error`] is not `Clone` (its I/O variant holds an
/// `std::io::Error`), so the copy of an I/O error has the same kind and text.
fn clone_result<T: Clone>(r: &Result<T>) -> Result<T> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(clone_error(e)),
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Io { context, source } => Error::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Aborted {
            message,
            refused,
            timed_out,
        } => Error::Aborted {
            message: message.clone(),
            refused: refused.clone(),
            timed_out: timed_out.clone(),
        },
        other => Error::new(other.kind(), other.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keeps_its_answer() {
        let (tx, rx) = chan::bounded(1);
        let p = Pending::<u64>::new(rx);
        assert!(p.wait(Duration::from_millis(5)).is_none());
        assert!(!p.is_ready());
        tx.send(Ok(7)).unwrap();
        drop(tx);
        assert_eq!(p.wait(Duration::ZERO).unwrap().unwrap(), 7);
        assert!(p.is_ready());
        assert_eq!(p.wait(Duration::ZERO).unwrap().unwrap(), 7);
        assert_eq!(p.wait_forever().unwrap(), 7);
    }

    #[test]
    fn pending_errors_are_kept_and_closed_when_unanswered() {
        let (tx, rx) = chan::bounded(1);
        let p = Pending::<u64>::new(rx);
        let refused = Error::Aborted {
            message: "no".into(),
            refused: vec![("a".into(), "why".into())],
            timed_out: vec!["b".into()],
        };
        tx.send(Err(refused)).unwrap();
        for _ in 0..2 {
            match p.wait(Duration::ZERO) {
                Some(Err(Error::Aborted {
                    refused, timed_out, ..
                })) => {
                    assert_eq!(refused.len(), 1);
                    assert_eq!(timed_out, vec!["b".to_string()]);
                }
                _ => panic!("expected the kept abort"),
            }
        }
        let (tx, rx) = chan::bounded::<Result<u64>>(1);
        drop(tx);
        let p = Pending::new(rx);
        let e = p.wait(Duration::from_secs(5)).unwrap().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Closed);
        let (tx, rx) = chan::bounded::<Result<u64>>(1);
        drop(tx);
        assert_eq!(
            Pending::new(rx).wait_forever().unwrap_err().kind(),
            crate::ErrorKind::Closed
        );
    }
}
