//! The publisher's side of two-phase rounds: the [`Coordinator`] of the intake thread owns
//! each database's open round, multicasts its PREPARE at the next version, and journals and
//! multicasts the caller's [`Decision`]. The votes and acknowledgements are tallied by
//! [`crate::net::two_phase::Coordinator`], which the control server shares.

use super::database::{send_mcast, DbShared};
use super::intake::{PrepareRequest, PreparedTicket};
use super::sequencer::Sequencer;
use crate::net::multicaster::McastCmd;
use crate::net::repair_server::ServerContext;
use crate::net::wall_clock_us;
use crate::proto::two_phase::Decision;
use crate::stats::inc;
use crate::store::publisher::JournalEntry;
use crate::store::PublisherStore;
use crate::sync::Locked;
use crate::wire::update::{encode_record, update_to_vec, RecordKind};
use crate::{Error, Result, Update};
use crossbeam_channel as chan;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A two-phase round waiting for its caller's decision.
struct OpenRound {
    db: Arc<DbShared>,
    update: Update,
    resolve: chan::Receiver<Decision>,
    done: chan::Sender<Result<u64>>,
}

/// The open two-phase rounds, at most one per database, from PREPARE to decision.
#[derive(Default)]
pub(super) struct Coordinator {
    open: HashMap<String, OpenRound>,
}

impl Coordinator {
    /// Opens a round for `p` (the sequencer holds the database's later commits meanwhile).
    pub(super) fn begin<T>(
        &mut self,
        p: PrepareRequest,
        seq: &mut Sequencer<T>,
        ctx: &ServerContext,
    ) {
        let name = p.db.name.clone();
        let round = begin_round(p, seq, ctx);
        seq.open_round(&name);
        self.open.insert(name, round);
    }

    /// The rounds whose caller decided. A caller that went away rolls its round back, and
    /// so does closing the publisher (`closing`) every undecided one.
    pub(super) fn decided(&self, closing: bool) -> Vec<(String, Decision)> {
        self.open
            .iter()
            .filter_map(|(name, r)| match r.resolve.try_recv() {
                Ok(d) => Some((name.clone(), d)),
                Err(chan::TryRecvError::Disconnected) => Some((name.clone(), Decision::Abort)),
                Err(chan::TryRecvError::Empty) => closing.then(|| (name.clone(), Decision::Abort)),
            })
            .collect()
    }

    /// Ends the round of `database` as decided, and releases what waited behind it.
    pub(super) fn finish<T>(
        &mut self,
        database: &str,
        decision: Decision,
        seq: &mut Sequencer<T>,
        (store, ctx): (&PublisherStore, &ServerContext),
    ) {
        let committed = self
            .open
            .remove(database)
            .and_then(|r| finish_round(r, decision, store, ctx));
        seq.close_round(database, committed);
    }

    /// Adds every open round's decision channel to `sel`.
    pub(super) fn watch<'a>(&'a self, sel: &mut chan::Select<'a>) {
        for r in self.open.values() {
            sel.recv(&r.resolve);
        }
    }
}

/// Starts a two-phase update: multicast PREPARE at the next version and hand the caller a
/// ticket. The intake then holds every later commit of the database until the caller
/// decides ([`finish_round`]).
fn begin_round<T>(p: PrepareRequest, seq: &mut Sequencer<T>, ctx: &ServerContext) -> OpenRound {
    let db = p.db;
    let v = seq.next_version(&db.name, db.committed.load(Ordering::SeqCst));
    let u = Update {
        version: v,
        timestamp_us: seq.round_timestamp(wall_clock_us()),
        ops: p.ops,
        reset: false,
    };
    let participants: BTreeMap<u64, String> = ctx
        .registry
        .locked()
        .values()
        .filter(|r| r.participant && r.database == db.name)
        .map(|r| (r.id, format!("{} ({})", r.client, r.user)))
        .collect();
    ctx.two_phase
        .begin(&db.name, v, u.timestamp_us, participants);
    let mut prepare = Vec::new();
    encode_record(RecordKind::Prepare, &u, &mut prepare);
    send_mcast(&db, McastCmd::Control(Arc::new(prepare)));
    inc(&ctx.counters.two_phase_prepared);
    let (resolve_tx, resolve_rx) = chan::bounded(1);
    let (done_tx, done_rx) = chan::bounded(1);
    let ticket = PreparedTicket {
        version: v,
        resolve: resolve_tx,
        done: done_rx,
    };
    // A caller that went away drops the ticket, which rolls the update back.
    let _ = p.reply.send(Ok(ticket));
    OpenRound {
        db,
        update: u,
        resolve: resolve_rx,
        done: done_tx,
    }
}

/// Ends a two-phase update as its caller decided: COMMIT journals the version and
/// multicasts the decision; ABORT multicasts the decision and gives the version back.
/// Returns the version if it committed.
fn finish_round(
    round: OpenRound,
    wanted: Decision,
    store: &PublisherStore,
    ctx: &ServerContext,
) -> Option<u64> {
    let c = &*ctx.counters;
    let OpenRound {
        db,
        update: u,
        done,
        ..
    } = round;
    let v = u.version;
    let outcome = if wanted.commits() {
        let enc = update_to_vec(&u);
        let entry = JournalEntry {
            name: &db.name,
            tables: db.tables,
            update: &u,
            encoded: &enc,
        };
        store.append(&[entry]).map(|_| v).map_err(|e| {
            Error::Storage(format!(
                "journal commit of two-phase version {v} of database {:?} failed: {}",
                db.name,
                e.message()
            ))
        })
    } else {
        Ok(0)
    };
    let decision = match outcome {
        Ok(x) if x == v => Decision::Commit,
        _ => Decision::Abort,
    };
    if decision.commits() {
        db.committed.store(v, Ordering::SeqCst);
        inc(&c.journal_commits);
        inc(&c.updates_committed);
        inc(&c.two_phase_committed);
    } else {
        inc(&c.two_phase_aborted);
    }
    ctx.two_phase.decide(&db.name, v, decision);
    let record = Update {
        version: v,
        timestamp_us: u.timestamp_us,
        ops: Vec::new(),
        reset: false,
    };
    let kind = match decision {
        Decision::Commit => RecordKind::CommitPrepared,
        Decision::Abort => RecordKind::Abort,
    };
    let mut enc = Vec::new();
    encode_record(kind, &record, &mut enc);
    send_mcast(
        &db,
        McastCmd::Decision {
            version: v,
            decision,
            encoded: Arc::new(enc),
        },
    );
    let _ = done.send(outcome);
    decision.commits().then_some(v)
}
