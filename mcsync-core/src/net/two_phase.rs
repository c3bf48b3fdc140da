//! The publisher's two-phase coordinator: the sans-IO [`Round`] of each database behind a
//! lock, so that the control server records votes and acknowledgements while the caller of
//! `Transaction::prepare` waits for the tally. The publisher is the single coordinator;
//! this is not a consensus protocol.

pub use crate::proto::two_phase::VoteFailure;
use crate::proto::two_phase::{self, Decision, Outcome, Round};
use crate::sync::Locked;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The current round of a database, with when it was decided.
#[derive(Debug)]
struct Entry {
    round: Round,
    decided_at: Option<Instant>,
    /// Its unacknowledging participants were declared failed.
    reported: bool,
}

impl std::ops::Deref for Entry {
    type Target = Round;
    fn deref(&self) -> &Round {
        &self.round
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut Round {
        &mut self.round
    }
}

/// Two-phase state of every database.
#[derive(Debug, Default)]
pub struct Coordinator {
    rounds: Mutex<HashMap<String, Entry>>,
    changed: Condvar,
}

impl Coordinator {
    fn rounds(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.rounds.locked()
    }

    /// Starts round `round` (the PREPARE's timestamp) for `version` of `database` with
    /// these participants.
    pub fn begin(
        &self,
        database: &str,
        version: u64,
        round: u64,
        participants: BTreeMap<u64, String>,
    ) {
        let entry = Entry {
            round: Round::new(version, round, participants),
            decided_at: None,
            reported: false,
        };
        self.rounds().insert(database.to_owned(), entry);
        self.changed.notify_all();
    }

    /// Records a vote; returns false if it is not for the open round or not from one of its
    /// participants.
    pub fn vote(
        &self,
        database: &str,
        (version, round): (u64, u64),
        id: u64,
        refusal: Option<String>,
    ) -> bool {
        let taken = self
            .rounds()
            .get_mut(database)
            .is_some_and(|r| r.vote(version, round, id, refusal));
        self.changed.notify_all();
        taken
    }

    /// Waits until every participant voted PREPARED (Ok), one refused, or `timeout`
    /// passed (Err with who refused and who is missing).
    pub fn wait_votes(
        &self,
        database: &str,
        version: u64,
        timeout: Duration,
    ) -> Result<(), VoteFailure> {
        let deadline = Instant::now() + timeout;
        self.votes_by(database, version, deadline, true)
            .expect("a wait that ends in a timeout has an answer")
    }

    /// Waits for the tally of `version`'s round until `deadline`. `None` if it is still
    /// open then and `timeout_fails` is false (a caller waiting in slices); with
    /// `timeout_fails`, the timeout is the failure naming who did not answer.
    pub fn votes_by(
        &self,
        database: &str,
        version: u64,
        deadline: Instant,
        timeout_fails: bool,
    ) -> Option<Result<(), VoteFailure>> {
        let mut rounds = self.rounds();
        loop {
            let Some(r) = rounds.get(database).filter(|r| r.version() == version) else {
                return Some(Err(VoteFailure::default()));
            };
            if let Some(tally) = r.tally() {
                return Some(tally);
            }
            let now = Instant::now();
            if now >= deadline {
                return timeout_fails.then(|| Err(r.timed_out()));
            }
            rounds = self
                .changed
                .wait_timeout(rounds, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records the decision of the open round.
    pub fn decide(&self, database: &str, version: u64, decision: Decision) {
        if let Some(r) = self
            .rounds()
            .get_mut(database)
            .filter(|r| r.version() == version)
        {
            r.decide(decision);
            r.decided_at = Some(Instant::now());
        }
        self.changed.notify_all();
    }

    /// Rounds decided at least `after` before `now` whose decision some participants never
    /// acknowledged: `(database, version, their names)`, each round once. The publisher
    /// stops repeating a decision after that long and declares them failed.
    pub fn overdue(&self, now: Instant, after: Duration) -> Vec<(String, u64, Vec<String>)> {
        let mut out = Vec::new();
        for (name, e) in self.rounds().iter_mut() {
            let due = e.decided_at.is_some_and(|t| now >= t + after);
            if due && !e.reported {
                e.reported = true;
                let missing = e.unacknowledged();
                if !missing.is_empty() {
                    out.push((name.clone(), e.version(), missing));
                }
            }
        }
        out
    }

    /// Records an acknowledgement; returns true when every participant has acknowledged
    /// the decision (the publisher then stops repeating it).
    pub fn ack(&self, database: &str, (version, round): (u64, u64), id: u64) -> bool {
        self.rounds()
            .get_mut(database)
            .is_some_and(|r| r.ack(version, round, id))
    }

    /// Participants that have not acknowledged the decision of `version`.
    pub fn unacknowledged(&self, database: &str, version: u64) -> Vec<String> {
        self.rounds()
            .get(database)
            .filter(|r| r.version() == version)
            .map(|r| r.unacknowledged())
            .unwrap_or_default()
    }

    /// What became of round `round` at `version` of `database`, whose latest committed
    /// version is `committed` (see [`two_phase::outcome`]).
    pub fn outcome(&self, database: &str, (version, round): (u64, u64), committed: u64) -> Outcome {
        two_phase::outcome(
            self.rounds().get(database).map(|e| &e.round),
            version,
            round,
            committed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participants_that_never_acknowledge_are_declared_failed_once() {
        let c = Coordinator::default();
        let names: BTreeMap<u64, String> = [(1, "a".into()), (2, "b".into())].into();
        c.begin("db", 4, 40, names);
        assert!(c.vote("db", (4, 40), 1, None) && c.vote("db", (4, 40), 2, None));
        c.decide("db", 4, Decision::Commit);
        assert!(!c.ack("db", (4, 40), 1));
        let now = Instant::now();
        let after = Duration::from_secs(30);
        assert!(c.overdue(now, after).is_empty(), "not yet");
        let late = now + after + Duration::from_secs(1);
        assert_eq!(
            c.overdue(late, after),
            vec![("db".into(), 4, vec!["b".into()])]
        );
        assert!(c.overdue(late, after).is_empty(), "reported once");
        assert_eq!(c.unacknowledged("db", 4), vec!["b".to_string()]);
    }
}
