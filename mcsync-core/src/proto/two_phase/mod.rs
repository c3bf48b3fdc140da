//! Two-phase updates, sans-IO: the coordinator's [`Round`] (who must vote, the votes, the
//! decision, the acknowledgements), the [`DecisionRepeat`] schedule on which a decision is
//! multicast again until acknowledged, and the [`Participant`] a subscriber runs (the held
//! prepared update, its durable copy, the vote, the acknowledgements).
//!
//! The publisher is the single coordinator; this is not a consensus protocol. A round is
//! identified by its version and by the timestamp its PREPARE carried: an aborted version
//! is given back and reused, and a decision repeated for the old round must never touch the
//! new one.
//!
//! Guarantees, checked by the seeded simulation in `tests/two_phase_sim/` with loss, delay,
//! failed requests, slow voters and restarts of both sides:
//! - a participant never hands a prepared update to the version order except on the COMMIT
//!   of the same round, so nothing prepared is visible before COMMIT;
//! - the coordinator commits only when every participant of the round voted PREPARED, and
//!   a participant votes PREPARED only after its host kept the update durably;
//! - a participant that missed the PREPARE or restarted catches up from the journal, which
//!   holds exactly the committed versions.

use crate::update::Update;
pub use crate::wire::control::Outcome;
use crate::wire::update::RecordKind;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// The coordinator's decision on a prepared version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// COMMIT: the version is journaled and applied everywhere.
    Commit,
    /// ABORT: participants discard what they prepared; the version is given back.
    Abort,
}

impl Decision {
    /// Whether it commits.
    pub fn commits(self) -> bool {
        self == Decision::Commit
    }
}

/// Why a prepare failed: who refused (with reasons) and who did not answer in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoteFailure {
    /// `(participant, reason)` for each REFUSED.
    pub refused: Vec<(String, String)>,
    /// Participants that did not vote before the timeout.
    pub timed_out: Vec<String>,
}

impl std::fmt::Display for VoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .refused
            .iter()
            .map(|(n, r)| format!("{n} refused: {r}"))
            .collect();
        if !self.timed_out.is_empty() {
            parts.push(format!(
                "no answer in time from {}",
                self.timed_out.join(", ")
            ));
        }
        if parts.is_empty() {
            parts.push("the round was superseded".into());
        }
        f.write_str(&parts.join("; "))
    }
}

/// One two-phase round of one database, on the coordinator.
#[derive(Debug, Clone)]
pub struct Round {
    version: u64,
    /// The round's identity beside its version: the timestamp its PREPARE carried.
    id: u64,
    /// Participant id → name, fixed when the round starts.
    participants: BTreeMap<u64, String>,
    /// Participant id → `None` (PREPARED) or `Some(reason)` (REFUSED).
    votes: HashMap<u64, Option<String>>,
    acks: HashSet<u64>,
    /// `None` while undecided.
    decision: Option<Decision>,
}

impl Round {
    /// A round for `version` whose PREPARE carried timestamp `id`, with these
    /// participants (registration id → name).
    pub fn new(version: u64, id: u64, participants: BTreeMap<u64, String>) -> Round {
        Round {
            version,
            id,
            participants,
            votes: HashMap::new(),
            acks: HashSet::new(),
            decision: None,
        }
    }

    /// The version being decided.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether `(version, round)` names this round.
    pub fn is(&self, version: u64, round: u64) -> bool {
        self.version == version && self.id == round
    }

    /// Records the vote of participant `id`; false if it is not for this round (a vote for
    /// an earlier round of a reused version is refused), the round is decided, or `id` is
    /// not one of its participants. A repeated vote replaces the earlier one.
    pub fn vote(&mut self, version: u64, round: u64, id: u64, refusal: Option<String>) -> bool {
        if !self.is(version, round)
            || self.decision.is_some()
            || !self.participants.contains_key(&id)
        {
            return false;
        }
        self.votes.insert(id, refusal);
        true
    }

    /// `Some(Ok)` when every participant voted PREPARED, `Some(Err)` naming the refusers as
    /// soon as one refused, `None` while votes are missing.
    pub fn tally(&self) -> Option<Result<(), VoteFailure>> {
        let refused: Vec<(String, String)> = self
            .participants
            .iter()
            .filter_map(|(id, name)| {
                let why = self.votes.get(id)?.as_ref()?;
                Some((name.clone(), why.clone()))
            })
            .collect();
        if !refused.is_empty() {
            return Some(Err(VoteFailure {
                refused,
                timed_out: Vec::new(),
            }));
        }
        self.participants
            .keys()
            .all(|id| self.votes.contains_key(id))
            .then_some(Ok(()))
    }

    /// The failure to report when the caller's timeout passed: who has not voted.
    pub fn timed_out(&self) -> VoteFailure {
        VoteFailure {
            refused: Vec::new(),
            timed_out: self
                .participants
                .iter()
                .filter(|(id, _)| !self.votes.contains_key(id))
                .map(|(_, n)| n.clone())
                .collect(),
        }
    }

    /// Records the decision.
    pub fn decide(&mut self, decision: Decision) {
        self.decision = Some(decision);
    }

    /// The decision, once made.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// Records an acknowledgement of the decision; returns true when every participant
    /// has acknowledged (the decision need not be repeated any more).
    pub fn ack(&mut self, version: u64, round: u64, id: u64) -> bool {
        if !self.is(version, round) || self.decision.is_none() {
            return false;
        }
        if self.participants.contains_key(&id) {
            self.acks.insert(id);
        }
        self.participants.keys().all(|p| self.acks.contains(p))
    }

    /// Participants that have not acknowledged the decision.
    pub fn unacknowledged(&self) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(id, _)| !self.acks.contains(id))
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Whether `(version, round)` is this round and still undecided.
    pub fn is_pending(&self, version: u64, round: u64) -> bool {
        self.is(version, round) && self.decision.is_none()
    }
}

/// What became of the round `round` prepared at `version`, for a participant that asks
/// (after a restart, or when its vote was not taken): `Pending` while that round is
/// undecided, `Committed` once the version is committed (by that round or a later one: the
/// participant then fetches it from the journal rather than trusting what it prepared),
/// else `Aborted`.
pub fn outcome(current: Option<&Round>, version: u64, round: u64, committed: u64) -> Outcome {
    if current.is_some_and(|r| r.is_pending(version, round)) {
        Outcome::Pending
    } else if version <= committed {
        Outcome::Committed
    } else {
        Outcome::Aborted
    }
}

/// First interval between repeats of a decision; it doubles up to [`REPEAT_MAX_INTERVAL`].
pub const REPEAT_FIRST_INTERVAL: Duration = Duration::from_millis(5);
/// Longest interval between repeats of a decision.
pub const REPEAT_MAX_INTERVAL: Duration = Duration::from_millis(500);

/// When to multicast a decision again: 5 ms after it was sent, doubling to 500 ms, until
/// every participant acknowledged it or `repeat_for` passed (participants that have not
/// acknowledged by then are declared failed; they learn the outcome by asking or from the
/// journal).
#[derive(Debug, Clone)]
pub struct DecisionRepeat {
    version: u64,
    next: Instant,
    interval: Duration,
    until: Instant,
}

impl DecisionRepeat {
    /// The decision on `version` was sent at `now`.
    pub fn new(now: Instant, version: u64, repeat_for: Duration) -> DecisionRepeat {
        DecisionRepeat {
            version,
            next: now + REPEAT_FIRST_INTERVAL,
            interval: REPEAT_FIRST_INTERVAL,
            until: now + repeat_for,
        }
    }

    /// The decided version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether to send the decision again now. Once it returns `None` the repeats are
    /// over and the caller drops the schedule.
    pub fn poll(&mut self, now: Instant) -> Option<bool> {
        if now >= self.until {
            return None;
        }
        if now < self.next {
            return Some(false);
        }
        self.interval = (self.interval * 2).min(REPEAT_MAX_INTERVAL);
        self.next = now + self.interval;
        Some(true)
    }

    /// When to poll next.
    pub fn next_timeout(&self) -> Instant {
        self.next.min(self.until)
    }
}

/// What the host does with a record the participant routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A committed update: hand it to the version order.
    Apply(Update),
    /// This version is committed but its contents are not held here (the PREPARE was
    /// missed or belonged to another round): repair up to it from the journal.
    CatchUp(u64),
    /// Nothing to apply.
    Held,
}

/// Something the participant's host must do. Each action is handed out once; the host
/// answers with the method named (a vote that is not confirmed is handed out again after
/// [`VOTE_RETRY`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete the durable prepared copy; answer with [`Participant::forgotten`].
    Forget,
    /// Acknowledge the decision on this version over the control channel.
    Ack {
        /// The decided version.
        version: u64,
        /// The round (the decision's timestamp).
        round: u64,
    },
    /// Repair up to this version (the one right before the prepared update) before voting.
    CatchUp(u64),
    /// Ask the host's vote on the held update ([`Participant::pending`]) and, if it agrees,
    /// keep the update durably; answer with [`Participant::checked`].
    Check(u64),
    /// Send this vote; answer with [`Participant::vote_sent`] once the coordinator took it,
    /// or, if it refused the vote, ask what became of the round and answer with
    /// [`Participant::on_outcome`].
    Vote {
        /// The prepared version.
        version: u64,
        /// The round (the PREPARE's timestamp).
        round: u64,
        /// PREPARED (`true`) or REFUSED.
        prepared: bool,
        /// Why it was refused (empty when prepared).
        reason: String,
    },
}

/// How long an unconfirmed vote waits before it is sent again.
pub const VOTE_RETRY: Duration = Duration::from_millis(200);

/// Counters kept by a [`Participant`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantCounters {
    /// PREPARE records taken (a new round held).
    pub prepares_received: u64,
    /// Held rounds discarded on ABORT.
    pub prepares_aborted: u64,
    /// PREPARED votes the coordinator took.
    pub votes_prepared: u64,
    /// REFUSED votes the coordinator took.
    pub votes_refused: u64,
}

/// The subscriber's side of two-phase updates. Every subscriber holds PREPAREs (so that a
/// COMMIT applies without a repair); only a registered participant votes and acknowledges.
#[derive(Debug)]
pub struct Participant {
    participant: bool,
    /// The prepared update held (never visible before COMMIT).
    pending: Option<Update>,
    /// Version of the prepared update the host keeps durably, if any.
    durable: Option<u64>,
    /// Forget handed out for this durable version.
    forgetting: Option<u64>,
    /// Catch-up handed out for this prepared version.
    catching_up: Option<u64>,
    /// Check handed out for this prepared version.
    checking: Option<u64>,
    /// The host's verdict on a prepared version.
    verdict: Option<(u64, Result<(), String>)>,
    /// Version whose vote the coordinator took.
    voted: Option<u64>,
    /// The last round whose vote was counted, as (version, round).
    counted: Option<(u64, u64)>,
    /// When an unconfirmed vote may be sent again.
    vote_retry_at: Option<Instant>,
    /// Decisions to acknowledge: (version, round).
    acks: Vec<(u64, u64)>,
    counters: ParticipantCounters,
}

impl Participant {
    /// A participant (`participant`: registered to vote) holding `restored`, a prepared
    /// update kept durably before a restart whose round the coordinator says is pending.
    /// It was kept only after the host agreed, so the vote is sent again as PREPARED.
    pub fn new(participant: bool, restored: Option<Update>) -> Participant {
        let v = restored.as_ref().map(|u| u.version);
        Participant {
            participant,
            durable: v,
            verdict: v.map(|v| (v, Ok(()))),
            pending: restored,
            forgetting: None,
            catching_up: None,
            checking: None,
            voted: None,
            counted: None,
            vote_retry_at: None,
            acks: Vec::new(),
            counters: ParticipantCounters::default(),
        }
    }

    /// Whether it votes and acknowledges (registered as a participant).
    pub fn is_participant(&self) -> bool {
        self.participant
    }

    /// The prepared update held, if any.
    pub fn pending(&self) -> Option<&Update> {
        self.pending.as_ref()
    }

    /// Counters so far.
    pub fn counters(&self) -> &ParticipantCounters {
        &self.counters
    }

    /// Routes one record of a chain; `applied` is the replica's version.
    pub fn on_record(&mut self, kind: RecordKind, u: Update, applied: u64) -> Route {
        let held = self.pending.as_ref().map(|p| p.version);
        // A decision belongs to the round whose PREPARE carried the same timestamp.
        let same_round = self
            .pending
            .as_ref()
            .is_some_and(|p| p.version == u.version && p.timestamp_us == u.timestamp_us);
        match kind {
            RecordKind::Commit => {
                if held == Some(u.version) {
                    // The version was aborted and reused; what was prepared is void.
                    self.pending = None;
                }
                Route::Apply(u)
            }
            RecordKind::Prepare => {
                // A PREPARE for a version already held replaces it: the earlier round was
                // aborted (its ABORT missed) and the version reused.
                if u.version > applied && self.pending.as_ref() != Some(&u) {
                    self.counters.prepares_received += 1;
                    self.pending = Some(u);
                    self.verdict = None;
                    self.voted = None;
                    self.checking = None;
                    self.catching_up = None;
                    self.vote_retry_at = None;
                }
                Route::Held
            }
            RecordKind::CommitPrepared => {
                self.queue_ack(u.version, u.timestamp_us);
                match self.pending.take() {
                    Some(p) if same_round => Route::Apply(p),
                    other => {
                        self.pending = other;
                        Route::CatchUp(u.version)
                    }
                }
            }
            RecordKind::Abort => {
                self.queue_ack(u.version, u.timestamp_us);
                if same_round {
                    self.pending = None;
                    self.counters.prepares_aborted += 1;
                }
                Route::Held
            }
        }
    }

    fn queue_ack(&mut self, version: u64, round: u64) {
        if self.participant && !self.acks.contains(&(version, round)) {
            self.acks.push((version, round));
        }
    }

    /// The coordinator's answer to OUTCOME_REQUEST about the held round `(version,
    /// round)`: `Aborted` discards it; `Committed` discards it too and says to catch up to
    /// the version from the journal (the held copy is never applied on an answer); `Pending`
    /// keeps it (the vote is sent again).
    pub fn on_outcome(&mut self, version: u64, round: u64, state: Outcome) -> Route {
        let held = self
            .pending
            .as_ref()
            .is_some_and(|p| p.version == version && p.timestamp_us == round);
        if !held || state == Outcome::Pending {
            return Route::Held;
        }
        self.pending = None;
        match state {
            Outcome::Committed => Route::CatchUp(version),
            Outcome::Aborted | Outcome::Pending => {
                self.counters.prepares_aborted += 1;
                Route::Held
            }
        }
    }

    /// The next thing to do, given the replica's version `applied`.
    pub fn poll(&mut self, now: Instant, applied: u64) -> Option<Action> {
        if self.pending.as_ref().is_some_and(|p| p.version <= applied) {
            self.pending = None;
        }
        let held = self.pending.as_ref().map(|p| p.version);
        if self.durable.is_some() && self.durable != held && self.forgetting != self.durable {
            self.forgetting = self.durable;
            return Some(Action::Forget);
        }
        if let Some((version, round)) = self.acks.pop() {
            return Some(Action::Ack { version, round });
        }
        if !self.participant {
            return None;
        }
        let (v, round) = self.pending.as_ref().map(|p| (p.version, p.timestamp_us))?;
        if self.voted == Some(v) {
            return None;
        }
        if applied + 1 < v {
            // Behind: repair first, then vote.
            if self.catching_up == Some(v) {
                return None;
            }
            self.catching_up = Some(v);
            return Some(Action::CatchUp(v - 1));
        }
        match &self.verdict {
            Some((w, verdict)) if *w == v => {
                if self.vote_retry_at.is_some_and(|t| now < t) {
                    return None;
                }
                self.vote_retry_at = Some(now + VOTE_RETRY);
                let (prepared, reason) = match verdict {
                    Ok(()) => (true, String::new()),
                    Err(r) => (false, r.clone()),
                };
                Some(Action::Vote {
                    version: v,
                    round,
                    prepared,
                    reason,
                })
            }
            _ if self.checking == Some(v) => None,
            _ => {
                self.checking = Some(v);
                Some(Action::Check(v))
            }
        }
    }

    /// The host deleted the durable prepared copy.
    pub fn forgotten(&mut self) {
        self.durable = None;
        self.forgetting = None;
    }

    /// The host's verdict on `version`; on `Ok` it has kept the update durably.
    pub fn checked(&mut self, version: u64, verdict: Result<(), String>) {
        if self.pending.as_ref().map(|p| p.version) != Some(version) {
            return;
        }
        if verdict.is_ok() {
            self.durable = Some(version);
        }
        self.verdict = Some((version, verdict));
    }

    /// The coordinator took the vote (`prepared` or not) on round `round` of `version`. It
    /// is counted once per round. A confirmation for an earlier round (the vote travelled
    /// while a new PREPARE of the same version arrived) says nothing about the round held
    /// now, which is still voted on.
    pub fn vote_sent(&mut self, version: u64, round: u64, prepared: bool) {
        if self.counted != Some((version, round)) {
            self.counted = Some((version, round));
            if prepared {
                self.counters.votes_prepared += 1;
            } else {
                self.counters.votes_refused += 1;
            }
        }
        let held = self.pending.as_ref().map(|p| (p.version, p.timestamp_us));
        if held == Some((version, round)) {
            self.voted = Some(version);
            self.vote_retry_at = None;
        }
    }

    /// When [`poll`](Self::poll) has something to do again without new input.
    pub fn next_timeout(&self) -> Option<Instant> {
        let waiting = self.participant
            && self.pending.as_ref().map(|p| p.version) != self.voted
            && self.pending.is_some();
        self.vote_retry_at.filter(|_| waiting)
    }
}

#[cfg(test)]
mod tests;
