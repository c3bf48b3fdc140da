//! The publisher's two-phase coordinator: the sans-IO [`Round`] of each database behind a
//! lock, so that the control server records votes and acknowledgements while the caller of
//! `Transaction::prepare` waits for the tally. The publisher is the single coordinator;
//! this is not a consensus protocol.

pub use crate::proto::two_phase::VoteFailure;
use crate::proto::two_phase::{self, Round};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Two-phase state of every database.
#[derive(Debug, Default)]
pub struct Coordinator {
    rounds: Mutex<HashMap<String, Round>>,
    changed: Condvar,
}

impl Coordinator {
    fn rounds(&self) -> MutexGuard<'_, HashMap<String, Round>> {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner())
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
        self.rounds().insert(
            database.to_owned(),
            Round::new(version, round, participants),
        );
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
        let mut rounds = self.rounds();
        loop {
            let Some(r) = rounds.get(database).filter(|r| r.version() == version) else {
                return Err(VoteFailure::default());
            };
            if let Some(tally) = r.tally() {
                return tally;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(r.timed_out());
            }
            rounds = self
                .changed
                .wait_timeout(rounds, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records the decision of the open round.
    pub fn decide(&self, database: &str, version: u64, commit: bool) {
        if let Some(r) = self
            .rounds()
            .get_mut(database)
            .filter(|r| r.version() == version)
        {
            r.decide(commit);
        }
        self.changed.notify_all();
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
            .map(Round::unacknowledged)
            .unwrap_or_default()
    }

    /// What became of round `round` at `version` of `database`, whose latest committed
    /// version is `committed` (see [`two_phase::outcome`]).
    pub fn outcome(&self, database: &str, (version, round): (u64, u64), committed: u64) -> u8 {
        two_phase::outcome(self.rounds().get(database), version, round, committed)
    }
}
