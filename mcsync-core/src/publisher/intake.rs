//! The intake thread: takes commits and two-phase requests from the host's threads, lets the
//! [`Sequencer`] order and group them, and does the I/O (journal, multicast, answers).

use super::coordinator::Coordinator;
use super::database::DbShared;
use super::journal::{journal, JournalWriter, Staged};
use super::sequencer::{Kind, Sequenced, Sequencer, Step};
use crate::net::repair_server::ServerContext;
use crate::net::{wall_clock_us, StopFlag};
use crate::proto::two_phase::Decision;
use crate::stats::{add, PublisherCounters};
use crate::store::PublisherStore;
use crate::wire::update::{update_encoded_len, update_to_vec};
use crate::{Error, Op, Result, Update};
use crossbeam_channel as chan;
use std::sync::Arc;
use std::time::Duration;

/// A one-phase commit asking for a version.
pub(super) struct CommitRequest {
    pub(super) db: Arc<DbShared>,
    pub(super) ops: Vec<Op>,
    pub(super) reply: chan::Sender<Result<u64>>,
    /// A relay's import: the update must get exactly this version and keeps the
    /// upstream's commit timestamp (see [`Database::import`](super::Database::import)).
    pub(super) import: Option<Imported>,
}

/// The version and timestamp an imported update keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Imported {
    pub(super) version: u64,
    pub(super) timestamp_us: u64,
}

/// A two-phase update asking for a version.
pub(super) struct PrepareRequest {
    pub(super) db: Arc<DbShared>,
    pub(super) ops: Vec<Op>,
    pub(super) reply: chan::Sender<Result<PreparedTicket>>,
}

/// What the intake hands a preparer: the version, where to send the decision, and where the
/// outcome comes back (the version, or 0 when rolled back).
pub(super) struct PreparedTicket {
    pub(super) version: u64,
    pub(super) resolve: chan::Sender<Decision>,
    pub(super) done: chan::Receiver<Result<u64>>,
}

/// What the intake thread takes, in order.
pub(super) enum Intake {
    Commit(CommitRequest),
    Prepare(PrepareRequest),
    /// Answer once every commit answered before is journaled.
    Flush(chan::Sender<Result<()>>),
}

impl Sequenced for Intake {
    fn database(&self) -> Option<&str> {
        match self {
            Intake::Commit(r) => Some(&r.db.name),
            Intake::Prepare(p) => Some(&p.db.name),
            Intake::Flush(_) => None,
        }
    }
    fn kind(&self) -> Kind {
        match self {
            Intake::Commit(r) => Kind::Commit {
                bytes: update_encoded_len(&r.ops),
            },
            Intake::Prepare(_) => Kind::Prepare,
            Intake::Flush(_) => Kind::Flush,
        }
    }
}

/// The intake thread's state: the sequencer, the open rounds, and the I/O it drives.
struct IntakeThread<'a> {
    rx: chan::Receiver<Intake>,
    /// The intake channel is still connected (the publisher is not closing).
    open: bool,
    seq: Sequencer<Intake>,
    rounds: Coordinator,
    store: &'a PublisherStore,
    ctx: &'a ServerContext,
    writer: Option<JournalWriter>,
}

/// Groups whatever commits are queued into one durable LMDB transaction, then hands the
/// updates to the multicasters in version order and answers the callers. A two-phase
/// round holds what comes after it for its own database only, until its caller decides.
pub(super) fn intake_loop(
    rx: chan::Receiver<Intake>,
    store: &PublisherStore,
    ctx: &ServerContext,
    stop: &StopFlag,
    writer: Option<JournalWriter>,
) {
    let mut t = IntakeThread {
        rx,
        open: true,
        seq: Sequencer::default(),
        rounds: Coordinator::default(),
        store,
        ctx,
        writer,
    };
    loop {
        // Decisions first: a decided round releases what waited behind it.
        t.apply_decisions(stop);
        if !t.seq.has_ready() {
            if !t.open && !t.seq.has_open_rounds() {
                return;
            }
            t.wait();
            continue;
        }
        let (rx, open) = (&t.rx, &mut t.open);
        let step = t.seq.poll(|| pull(rx, open));
        match step {
            Some(Step::Batch(items)) => {
                let batch = items
                    .into_iter()
                    .filter_map(|i| match i {
                        Intake::Commit(r) => Some(r),
                        _ => None,
                    })
                    .collect();
                t.commit_batch(batch);
            }
            Some(Step::Alone(Intake::Prepare(p))) => t.prepare(p),
            Some(Step::Alone(Intake::Flush(reply))) => {
                let _ = reply.send(t.writer.as_ref().map_or(Ok(()), JournalWriter::flush));
            }
            Some(Step::Alone(Intake::Commit(_))) | None => {}
        }
    }
}

/// The next item of the intake channel, if one is waiting; notes when it disconnected.
fn pull(rx: &chan::Receiver<Intake>, open: &mut bool) -> Option<Intake> {
    if !*open {
        return None;
    }
    match rx.try_recv() {
        Ok(i) => Some(i),
        Err(chan::TryRecvError::Empty) => None,
        Err(chan::TryRecvError::Disconnected) => {
            *open = false;
            None
        }
    }
}

impl IntakeThread<'_> {
    /// Finishes every round its caller decided (all of them when the publisher closes).
    fn apply_decisions(&mut self, stop: &StopFlag) {
        for (name, decision) in self.rounds.decided(stop.is_stopped()) {
            let io = (self.store, self.ctx);
            self.rounds.finish(&name, decision, &mut self.seq, io);
        }
    }

    /// Waits for intake or a decision (at most 100 ms), and takes one item if there is one.
    fn wait(&mut self) {
        let mut sel = chan::Select::new();
        if self.open {
            sel.recv(&self.rx);
        }
        self.rounds.watch(&mut sel);
        let _ = sel.ready_timeout(Duration::from_millis(100));
        if let Some(i) = pull(&self.rx, &mut self.open) {
            self.seq.push(i);
        }
    }

    /// Opens a two-phase round, unless the journal writer failed.
    fn prepare(&mut self, p: PrepareRequest) {
        if let Some(why) = self.writer.as_ref().and_then(JournalWriter::failure) {
            let _ = p.reply.send(Err(stopped_by(&why)));
            return;
        }
        // Its PREPARE follows the versions before it onto the wire.
        if let Some(w) = &self.writer {
            let _ = w.flush();
        }
        self.rounds.begin(p, &mut self.seq, self.ctx);
    }

    /// Assigns the next versions to a group of one-phase commits. An import whose version
    /// is not the next one is answered with an error here and leaves the group.
    fn stage(
        seq: &mut Sequencer<Intake>,
        batch: &mut Vec<CommitRequest>,
        c: &PublisherCounters,
    ) -> Vec<Staged> {
        let ts = wall_clock_us();
        let mut staged = Vec::with_capacity(batch.len());
        batch.retain_mut(|r| {
            let committed = r.db.committed.load(std::sync::atomic::Ordering::SeqCst);
            let next = seq.next_version(&r.db.name, committed);
            let timestamp_us = match r.import {
                Some(i) if i.version != next => {
                    crate::stats::inc(&c.commits_refused);
                    let _ = r.reply.send(Err(Error::Config(format!(
                        "import into database {:?}: version {} is not the next one ({next})",
                        r.db.name, i.version
                    ))));
                    return false;
                }
                Some(i) => i.timestamp_us,
                None => ts,
            };
            let update = Update {
                version: seq.take_version(&r.db.name, committed),
                timestamp_us,
                ops: std::mem::take(&mut r.ops),
                reset: false,
            };
            let encoded = Arc::new(update_to_vec(&update));
            staged.push(Staged {
                db: r.db.clone(),
                update,
                encoded,
            });
            true
        });
        staged
    }

    /// Commits a group of one-phase commits: with `Durability::Sync` journals them and then
    /// answers the callers; with an async `writer`, answers at once and hands them to it.
    fn commit_batch(&mut self, mut batch: Vec<CommitRequest>) {
        let c: &PublisherCounters = &self.ctx.counters;
        let writer = self.writer.as_ref();
        if let Some(why) = writer.and_then(JournalWriter::failure) {
            add(&c.commits_refused, batch.len() as u64);
            for r in batch {
                let _ = r.reply.send(Err(stopped_by(&why)));
            }
            return;
        }
        let staged = Self::stage(&mut self.seq, &mut batch, c);
        if staged.is_empty() {
            return;
        }
        let result = match writer {
            Some(w) => {
                for (r, s) in batch.iter().zip(&staged) {
                    let _ = r.reply.send(Ok(s.update.version));
                }
                w.journal(staged);
                return;
            }
            None => journal(&staged, self.store, c),
        };
        match result {
            Ok(()) => {
                for (r, s) in batch.into_iter().zip(staged) {
                    let _ = r.reply.send(Ok(s.update.version));
                }
            }
            Err(e) => {
                // Nothing was written: give the versions back.
                self.seq.give_back_versions();
                add(&c.commits_refused, batch.len() as u64);
                for r in batch {
                    let _ = r.reply.send(Err(Error::Storage(format!(
                        "journal commit for database {:?} failed: {}",
                        r.db.name,
                        e.message()
                    ))));
                }
            }
        }
    }
}

/// The error of every commit after the async journal writer failed.
pub(super) fn stopped_by(why: &str) -> Error {
    Error::Storage(format!(
        "the publisher takes no more commits after a journal failure: {why}"
    ))
}
