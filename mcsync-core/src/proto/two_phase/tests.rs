use super::*;
use crate::update::Op;

fn update(v: u64, ts: u64) -> Update {
    Update {
        version: v,
        timestamp_us: ts,
        ops: vec![Op::put(format!("k{v}"), format!("v{ts}"))],
        reset: false,
    }
}

fn decision(v: u64, ts: u64) -> Update {
    Update {
        version: v,
        timestamp_us: ts,
        ops: Vec::new(),
        reset: false,
    }
}

/// Drains the actions, answering checks with `verdict` and confirming every vote.
fn drain(
    p: &mut Participant,
    now: Instant,
    applied: u64,
    verdict: Result<(), String>,
) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(a) = p.poll(now, applied) {
        match &a {
            Action::Forget => p.forgotten(),
            Action::Check(v) => p.checked(*v, verdict.clone()),
            Action::Vote {
                version,
                round,
                prepared,
                ..
            } => p.vote_sent(*version, *round, *prepared),
            _ => {}
        }
        out.push(a);
    }
    out
}

#[test]
fn prepare_vote_commit_ack() {
    let now = Instant::now();
    let mut p = Participant::new(true, None);
    assert_eq!(
        p.on_record(RecordKind::Prepare, update(5, 1), 4),
        Route::Held
    );
    let acts = drain(&mut p, now, 4, Ok(()));
    assert_eq!(
        acts,
        vec![
            Action::Check(5),
            Action::Vote {
                version: 5,
                round: 1,
                prepared: true,
                reason: String::new()
            }
        ]
    );
    assert_eq!(
        p.on_record(RecordKind::CommitPrepared, decision(5, 1), 4),
        Route::Apply(update(5, 1))
    );
    // Applied: the durable copy is forgotten and the decision acknowledged.
    assert_eq!(
        drain(&mut p, now, 5, Ok(())),
        vec![
            Action::Forget,
            Action::Ack {
                version: 5,
                round: 1
            }
        ]
    );
    assert_eq!(p.counters().votes_prepared, 1);
}

#[test]
fn refusal_keeps_nothing_and_abort_discards() {
    let now = Instant::now();
    let mut p = Participant::new(true, None);
    p.on_record(RecordKind::Prepare, update(2, 7), 1);
    let acts = drain(&mut p, now, 1, Err("full".into()));
    assert_eq!(
        acts[1],
        Action::Vote {
            version: 2,
            round: 7,
            prepared: false,
            reason: "full".into()
        }
    );
    assert_eq!(
        p.on_record(RecordKind::Abort, decision(2, 7), 1),
        Route::Held
    );
    assert!(p.pending().is_none());
    assert_eq!(
        drain(&mut p, now, 1, Ok(())),
        vec![Action::Ack {
            version: 2,
            round: 7
        }]
    );
}

#[test]
fn decision_of_another_round_never_applies_what_was_prepared() {
    let mut p = Participant::new(true, None);
    p.on_record(RecordKind::Prepare, update(3, 1), 2);
    // A COMMIT of version 3 from a later round (timestamp 9): repair, never apply ours.
    assert_eq!(
        p.on_record(RecordKind::CommitPrepared, decision(3, 9), 2),
        Route::CatchUp(3)
    );
    // A stale ABORT of the old round after a new PREPARE leaves the new one.
    p.on_record(RecordKind::Prepare, update(4, 2), 3);
    p.on_record(RecordKind::Abort, decision(4, 1), 3);
    assert_eq!(p.pending(), Some(&update(4, 2)));
    // A one-phase commit at the held version voids it.
    assert_eq!(
        p.on_record(RecordKind::Commit, update(4, 3), 3),
        Route::Apply(update(4, 3))
    );
    assert!(p.pending().is_none());
}

#[test]
fn behind_catches_up_once_and_unconfirmed_votes_retry() {
    let t0 = Instant::now();
    let mut p = Participant::new(true, None);
    p.on_record(RecordKind::Prepare, update(10, 1), 6);
    assert_eq!(p.poll(t0, 6), Some(Action::CatchUp(9)));
    assert_eq!(p.poll(t0, 6), None);
    assert_eq!(p.poll(t0, 9), Some(Action::Check(10)));
    assert_eq!(p.poll(t0, 9), None, "a check is handed out once");
    p.checked(10, Ok(()));
    assert!(matches!(p.poll(t0, 9), Some(Action::Vote { .. })));
    assert_eq!(p.poll(t0, 9), None);
    assert_eq!(p.next_timeout(), Some(t0 + VOTE_RETRY));
    assert!(matches!(
        p.poll(t0 + VOTE_RETRY, 9),
        Some(Action::Vote { .. })
    ));
    p.vote_sent(10, 1, true);
    assert_eq!(p.next_timeout(), None);
    assert_eq!(p.poll(t0 + VOTE_RETRY * 2, 9), None);
}

#[test]
fn a_late_confirmation_of_an_earlier_rounds_vote_does_not_count_for_the_next() {
    let t0 = Instant::now();
    let mut p = Participant::new(true, None);
    p.on_record(RecordKind::Prepare, update(2, 1), 1);
    assert_eq!(p.poll(t0, 1), Some(Action::Check(2)));
    p.checked(2, Err("denied".into()));
    assert!(matches!(
        p.poll(t0, 1),
        Some(Action::Vote {
            version: 2,
            round: 1,
            prepared: false,
            ..
        })
    ));
    // The refusal aborts round 1, and round 2 of the same version is prepared before
    // the confirmation of the first vote comes back.
    p.on_record(RecordKind::Prepare, update(2, 2), 1);
    assert_eq!(p.poll(t0, 1), Some(Action::Check(2)));
    p.checked(2, Ok(()));
    p.vote_sent(2, 1, false);
    // Counted as what it was: a refusal of round 1.
    assert_eq!(p.counters().votes_refused, 1);
    assert_eq!(p.counters().votes_prepared, 0);
    // Round 2 is still voted on, and its own confirmation counts.
    assert!(matches!(
        p.poll(t0, 1),
        Some(Action::Vote {
            version: 2,
            round: 2,
            prepared: true,
            ..
        })
    ));
    p.vote_sent(2, 2, true);
    p.vote_sent(2, 2, true);
    assert_eq!(p.counters().votes_prepared, 1, "counted once per round");
    assert_eq!(p.poll(t0 + VOTE_RETRY, 1), None);
}

#[test]
fn restored_prepared_update_is_voted_again_without_asking() {
    let now = Instant::now();
    let mut p = Participant::new(true, Some(update(8, 4)));
    assert!(matches!(
        p.poll(now, 7),
        Some(Action::Vote { prepared: true, .. })
    ));
    // Not a participant: holds, never votes or acknowledges.
    let mut q = Participant::new(false, None);
    q.on_record(RecordKind::Prepare, update(8, 4), 7);
    assert_eq!(
        q.on_record(RecordKind::CommitPrepared, decision(8, 4), 7),
        Route::Apply(update(8, 4))
    );
    assert_eq!(q.poll(now, 8), None);
}

#[test]
fn a_vote_not_taken_is_settled_by_the_outcome() {
    let mut p = Participant::new(true, None);
    p.on_record(RecordKind::Prepare, update(6, 3), 5);
    assert_eq!(
        p.on_outcome(6, 2, Outcome::Aborted),
        Route::Held,
        "another round"
    );
    assert!(p.pending().is_some());
    assert_eq!(p.on_outcome(6, 3, Outcome::Pending), Route::Held);
    assert!(p.pending().is_some());
    assert_eq!(p.on_outcome(6, 3, Outcome::Committed), Route::CatchUp(6));
    assert!(p.pending().is_none());
    p.on_record(RecordKind::Prepare, update(7, 4), 6);
    assert_eq!(p.on_outcome(7, 4, Outcome::Aborted), Route::Held);
    assert!(p.pending().is_none());
    assert_eq!(p.counters().prepares_aborted, 1);
}

#[test]
fn round_tally_timeout_and_acks() {
    let names: BTreeMap<u64, String> = [(1, "a".to_string()), (2, "b".to_string())]
        .into_iter()
        .collect();
    let mut r = Round::new(7, 70, names);
    assert!(!r.vote(6, 70, 1, None), "wrong version");
    assert!(!r.vote(7, 69, 1, None), "an earlier round of the version");
    assert!(!r.vote(7, 70, 3, None), "not a participant");
    assert!(r.vote(7, 70, 1, None));
    assert_eq!(r.tally(), None);
    assert_eq!(r.timed_out().timed_out, vec!["b".to_string()]);
    assert!(r.vote(7, 70, 2, Some("no room".into())));
    let why = r.tally().unwrap().unwrap_err();
    assert_eq!(why.refused, vec![("b".into(), "no room".into())]);
    assert!(why.to_string().contains("b refused: no room"));
    assert!(
        r.vote(7, 70, 2, None),
        "a vote may be repeated before the decision"
    );
    assert_eq!(r.tally(), Some(Ok(())));
    assert_eq!(outcome(Some(&r), 7, 70, 6), Outcome::Pending);
    assert_eq!(
        outcome(Some(&r), 7, 69, 6),
        Outcome::Aborted,
        "an earlier round"
    );
    assert!(!r.ack(7, 70, 1), "no ack before the decision");
    r.decide(Decision::Commit);
    assert!(!r.vote(7, 70, 1, None), "no vote after the decision");
    assert_eq!(outcome(Some(&r), 7, 70, 7), Outcome::Committed);
    assert_eq!(outcome(None, 8, 1, 7), Outcome::Aborted);
    assert!(
        !r.ack(7, 69, 2),
        "an ack of an earlier round does not count"
    );
    assert!(!r.ack(7, 70, 1));
    assert_eq!(r.unacknowledged(), vec!["b".to_string()]);
    assert!(r.ack(7, 70, 2));
}

#[test]
fn decision_repeats_back_off_and_end() {
    let t0 = Instant::now();
    let mut d = DecisionRepeat::new(t0, 3, Duration::from_secs(2));
    assert_eq!(d.poll(t0), Some(false));
    let mut sent = Vec::new();
    let mut t = t0;
    while let Some(now) = Some(d.next_timeout()).filter(|_| t < t0 + Duration::from_secs(3)) {
        t = now;
        match d.poll(t) {
            Some(true) => sent.push(t - t0),
            Some(false) => {}
            None => break,
        }
    }
    let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![5, 15, 35, 75, 155, 315, 635, 1135, 1635]);
}
