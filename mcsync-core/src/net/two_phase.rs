//! The publisher's two-phase coordinator: who must vote on a prepared version, the votes
//! and acknowledgements received over the control channel, and the outcome a restarted
//! participant can ask for. The publisher is the single coordinator; this is not a
//! consensus protocol.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// One two-phase round of one database.
#[derive(Debug, Clone)]
struct Round {
    version: u64,
    /// Participant id → name (client name and user), fixed when the round starts.
    participants: BTreeMap<u64, String>,
    /// Participant id → `None` (PREPARED) or `Some(reason)` (REFUSED).
    votes: HashMap<u64, Option<String>>,
    acks: HashSet<u64>,
    /// `None` while undecided; `Some(true)` committed; `Some(false)` aborted.
    decision: Option<bool>,
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
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(n, r)| format!("{n} refused: {r}"))
            .collect();
        let mut parts = refused;
        if !self.timed_out.is_empty() {
            parts.push(format!(
                "no answer in time from {}",
                self.timed_out.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Two-phase state of every database.
#[derive(Debug, Default)]
pub struct Coordinator {
    rounds: Mutex<HashMap<String, Round>>,
    changed: Condvar,
}

impl Coordinator {
    /// Starts a round for `version` of `database` with these participants.
    pub fn begin(&self, database: &str, version: u64, participants: BTreeMap<u64, String>) {
        let round = Round {
            version,
            participants,
            votes: HashMap::new(),
            acks: HashSet::new(),
            decision: None,
        };
        self.rounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database.to_owned(), round);
    }

    /// Records a vote; returns false if it is not for the open round or not from one of its
    /// participants.
    pub fn vote(&self, database: &str, version: u64, id: u64, refusal: Option<String>) -> bool {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = rounds.get_mut(database) else {
            return false;
        };
        if r.version != version || r.decision.is_some() || !r.participants.contains_key(&id) {
            return false;
        }
        r.votes.insert(id, refusal);
        self.changed.notify_all();
        true
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
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let Some(r) = rounds.get(database).filter(|r| r.version == version) else {
                return Err(VoteFailure::default());
            };
            let refused: Vec<(String, String)> = r
                .votes
                .iter()
                .filter_map(|(id, v)| {
                    v.as_ref()
                        .map(|why| (r.participants[id].clone(), why.clone()))
                })
                .collect();
            if !refused.is_empty() {
                return Err(VoteFailure {
                    refused,
                    timed_out: Vec::new(),
                });
            }
            if r.participants.keys().all(|id| r.votes.contains_key(id)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let timed_out = r
                    .participants
                    .iter()
                    .filter(|(id, _)| !r.votes.contains_key(id))
                    .map(|(_, n)| n.clone())
                    .collect();
                return Err(VoteFailure {
                    refused: Vec::new(),
                    timed_out,
                });
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
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = rounds.get_mut(database).filter(|r| r.version == version) {
            r.decision = Some(commit);
        }
        self.changed.notify_all();
    }

    /// Records an acknowledgement; returns true when every participant has acknowledged
    /// the decision (the publisher then stops repeating it).
    pub fn ack(&self, database: &str, version: u64, id: u64) -> bool {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = rounds.get_mut(database).filter(|r| r.version == version) else {
            return false;
        };
        if r.decision.is_none() {
            return false;
        }
        r.acks.insert(id);
        r.participants.keys().all(|p| r.acks.contains(p))
    }

    /// Participants that have not acknowledged the decision of `version` (declared failed
    /// by the caller after its timeout).
    pub fn unacknowledged(&self, database: &str, version: u64) -> Vec<String> {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds
            .get(database)
            .filter(|r| r.version == version)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|(id, _)| !r.acks.contains(id))
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `version` of `database` is prepared and still undecided.
    pub fn is_pending(&self, database: &str, version: u64) -> bool {
        self.rounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(database)
            .is_some_and(|r| r.version == version && r.decision.is_none())
    }
}
