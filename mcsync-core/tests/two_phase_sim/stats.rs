//! What the scenarios did, and the paths the suite must have exercised.

/// What the scenarios did, summed so the suite can show it exercised every path.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub scenarios: u64,
    pub rounds: u64,
    pub committed: u64,
    pub one_phase: u64,
    pub aborted_refused: u64,
    pub aborted_timeout: u64,
    pub rolled_back: u64,
    pub publisher_restarts: u64,
    /// Packets the publisher multicast.
    pub packets_sent: u64,
    /// Deliveries of them to one subscriber that the network lost...
    pub packets_lost: u64,
    /// ...and of those, the ones packet repair could not bring back.
    pub packets_gone: u64,
    pub decision_repeats: u64,
    pub repeats_expired: u64,
    pub all_acknowledged: u64,
    pub crashes: u64,
    pub crashed_while_prepared: u64,
    pub restart_pending: u64,
    pub restart_committed: u64,
    pub restart_aborted: u64,
    pub slow_votes: u64,
    pub votes_not_taken: u64,
    pub outcome_committed: u64,
    /// COMMIT_PREPAREDs of the held round (applied from the held copy).
    pub applied_prepared: u64,
    /// COMMIT_PREPAREDs taken with no PREPARE of their round held (caught up instead).
    pub commit_without_prepare: u64,
    /// PREPAREs that replaced a held one of the same version (its ABORT was missed).
    pub prepare_replaced: u64,
    /// Registrations the engines asked for (`Output::Hello`), and how they ended.
    pub hellos: u64,
    pub registrations: u64,
    pub register_failed: u64,
    pub status_polls: u64,
    /// Packet repairs asked for (`Output::FetchPackets`), and the packets they brought.
    pub packet_repairs: u64,
    pub packets_repaired: u64,
    /// Catch-ups asked for (`Output::CatchUp`), and those that completed.
    pub catchups: u64,
    pub catchups_done: u64,
    pub repair_failures: u64,
    pub backoffs: u64,
    pub dropped_stream: u64,
    pub chains_received: u64,
    pub applied: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            scenarios,
            rounds,
            committed,
            one_phase,
            aborted_refused,
            aborted_timeout,
            rolled_back,
            publisher_restarts,
            packets_sent,
            packets_lost,
            packets_gone,
            decision_repeats,
            repeats_expired,
            all_acknowledged,
            crashes,
            crashed_while_prepared,
            restart_pending,
            restart_committed,
            restart_aborted,
            slow_votes,
            votes_not_taken,
            outcome_committed,
            applied_prepared,
            commit_without_prepare,
            prepare_replaced,
            hellos,
            registrations,
            register_failed,
            status_polls,
            packet_repairs,
            packets_repaired,
            catchups,
            catchups_done,
            repair_failures,
            backoffs,
            dropped_stream,
            chains_received,
            applied
        );
    }
}

/// The suite must have exercised every path it claims to.
pub fn assert_exercised(t: &Stats) {
    assert!(t.committed > t.scenarios * 3, "{t:#?}");
    assert!(
        t.aborted_refused > 0 && t.aborted_timeout > 0 && t.rolled_back > 0,
        "{t:#?}"
    );
    assert!(t.publisher_restarts > 0 && t.one_phase > 0, "{t:#?}");
    assert!(t.packets_lost > 0 && t.packets_gone > 0, "{t:#?}");
    assert!(
        t.decision_repeats > 0 && t.repeats_expired > 0 && t.all_acknowledged > 0,
        "{t:#?}"
    );
    assert!(t.crashes > 0 && t.crashed_while_prepared > 0, "{t:#?}");
    assert!(
        t.restart_pending > 0 && t.restart_committed > 0 && t.restart_aborted > 0,
        "{t:#?}"
    );
    assert!(
        t.slow_votes > 0 && t.votes_not_taken > 0 && t.outcome_committed > 0,
        "{t:#?}"
    );
    assert!(
        t.applied_prepared > 0 && t.commit_without_prepare > 0 && t.prepare_replaced > 0,
        "{t:#?}"
    );
    assert!(
        t.hellos > 0 && t.registrations > 0 && t.register_failed > 0 && t.dropped_stream > 0,
        "{t:#?}"
    );
    assert!(
        t.packet_repairs > 0 && t.packets_repaired > 0 && t.catchups_done > 0,
        "{t:#?}"
    );
    assert!(
        t.repair_failures > 0 && t.backoffs > 0 && t.status_polls > 0,
        "{t:#?}"
    );
    assert!(t.applied > t.committed, "{t:#?}");
}
