//! The engine's strategy choices, one input at a time. (The seeded simulation drives it
//! over a lossy network; these pin the paths it reaches rarely.)

use super::*;
use crate::proto::{ReceiverConfig, ReorderConfig};
use crate::wire::update::Limits;

const MS: Duration = Duration::from_millis(1);

fn config() -> EngineConfig {
    EngineConfig {
        receiver: ReceiverConfig {
            buffer_bytes: 1 << 20,
            repair_delay: Duration::ZERO,
            repair_retry: 100 * MS,
            max_ranges: 64,
        },
        reorder: ReorderConfig {
            repair_delay: Duration::ZERO,
            max_bytes: 1 << 20,
            max_ranges: 64,
        },
        limits: Limits::default(),
        compact_after: None,
        silence_timeout: Duration::from_secs(3),
        report_interval: Duration::from_secs(1),
        error_threshold: 0.1,
        unicast_backoff: Duration::from_secs(5),
    }
}

fn info(current_version: u64, incarnation: u64) -> DatabaseInfo {
    DatabaseInfo {
        group: "239.255.0.1:4000".parse().expect("an address"),
        source: "127.0.0.1:4000".parse().expect("an address"),
        encrypted: true,
        keys: Vec::new(),
        older_keys_below: u64::MAX,
        groups: Vec::new(),
        current_version,
        oldest_version: 1,
        subscriber_id: 1,
        incarnation,
        stream_id: 7,
        push: Default::default(),
    }
}

fn engine(t0: Instant, applied: u64, stored: u64, registration: DatabaseInfo) -> Engine {
    let start = EngineStart {
        applied,
        incarnation: stored,
        registration,
        participant: false,
        held: None,
    };
    Engine::new(t0, config(), start)
}

/// Everything `poll` has now; afterwards no timer may be due (a driver would spin).
fn drain(e: &mut Engine, now: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = e.poll(now) {
        out.push(o);
        assert!(out.len() < 1000, "poll never runs dry: {out:?}");
    }
    if let Some((timer, at)) = e.next_timer() {
        assert!(
            at > now,
            "{timer:?} due at {at:?} but poll had nothing at {now:?}"
        );
    }
    out
}

fn only_requests(out: Vec<Output>) -> Vec<Output> {
    out.into_iter()
        .filter(|o| !matches!(o, Output::Report(_)))
        .collect()
}

#[test]
fn a_changed_history_is_adopted_by_resync_retried_until_it_succeeds() {
    let t0 = Instant::now();
    // The replica holds history 1; the publisher registered it with history 2.
    let mut e = engine(t0, 40, 1, info(50, 2));
    assert_eq!(e.new_history(), Some(2));
    let resync = Output::Resync {
        new_history: Some(2),
    };
    assert_eq!(drain(&mut e, t0), std::slice::from_ref(&resync));
    e.handle(t0, Input::ResyncFailed);
    // Meanwhile nothing else runs (no catch-up of the other history, no report), and no
    // timer stays due: a driver sleeps until the retry.
    let t1 = t0 + 3 * config().report_interval;
    let at = e.poll_timeout().expect("the retry");
    assert_eq!(e.next_timer().map(|t| t.0), Some(Timer::History));
    assert!(at <= t0 + HISTORY_RETRY);
    assert_eq!(only_requests(drain(&mut e, t1)), [resync]);
    e.handle(t1, Input::Resynced { version: 55 });
    assert_eq!((e.incarnation(), e.new_history()), (2, None));
    assert_eq!(e.applied(), 55);
    assert_eq!(e.counters().history_changes, 1);
    assert_eq!(e.counters().repair_failures, 1);
    assert_eq!(only_requests(drain(&mut e, t1)), []);
}

#[test]
fn a_trimmed_journal_turns_the_catch_up_into_a_resync() {
    let t0 = Instant::now();
    let mut e = engine(t0, 0, 1, info(10, 1));
    assert_eq!(drain(&mut e, t0), [Output::CatchUp(vec![(1, 10)])]);
    e.handle(t0, Input::RepairDone(RepairEnd::Trimmed));
    assert_eq!(drain(&mut e, t0), [Output::Resync { new_history: None }]);
    assert!(e.is_repairing());
    e.handle(t0, Input::Resynced { version: 10 });
    assert_eq!(e.applied(), 10);
    assert_eq!(only_requests(drain(&mut e, t0 + 500 * MS)), []);
}

#[test]
fn a_refused_catch_up_registers_again_and_forgets_versions_that_do_not_exist() {
    let t0 = Instant::now();
    let mut e = engine(t0, 0, 1, info(10, 1));
    assert_eq!(drain(&mut e, t0), [Output::CatchUp(vec![(1, 10)])]);
    e.handle(t0, Input::RepairDone(RepairEnd::Refused));
    assert_eq!(drain(&mut e, t0), [Output::Hello]);
    // The publisher lost versions 6..=10 (a heartbeat had announced them).
    e.handle(t0, Input::Registered(Box::new(info(5, 1))));
    assert_eq!(e.known_latest(), 5);
    let t1 = t0 + config().receiver.repair_retry;
    assert_eq!(drain(&mut e, t1), [Output::CatchUp(vec![(1, 5)])]);
}

#[test]
fn a_long_gap_from_the_replica_comes_compacted_then_the_rest_by_versions() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.compact_after = Some(100);
    let start = EngineStart {
        applied: 0,
        incarnation: 1,
        registration: info(1_000, 1),
        participant: false,
        held: None,
    };
    let mut e = Engine::new(t0, cfg, start);
    assert_eq!(
        drain(&mut e, t0),
        [Output::Compact {
            from: 1,
            through: 1_000
        }]
    );
    let compacted = Update {
        version: 1_000,
        timestamp_us: 0,
        ops: vec![crate::Op::put("k", "v")],
        reset: false,
    };
    e.handle(t0, Input::Repaired(compacted.clone()));
    e.handle(
        t0,
        Input::RepairDone(RepairEnd::Done {
            current_version: 1_000,
        }),
    );
    assert_eq!(drain(&mut e, t0), [Output::Apply(vec![compacted])]);
    assert_eq!(e.counters().catchups_compacted, 1);
}

#[test]
fn packets_of_another_stream_are_dropped_until_registration_names_it() {
    let t0 = Instant::now();
    let mut e = engine(t0, 0, 1, info(0, 1));
    let header = crate::wire::packet::PacketHeader {
        kind: PacketKind::Heartbeat,
        flags: 0,
        compression: crate::wire::packet::Compression::None,
        length: 0,
        stream_id: 8,
        seq: 1,
        key_epoch: 1,
    };
    let mut body = Vec::new();
    Heartbeat {
        latest_version: 3,
        oldest_version: 1,
        timestamp_us: 0,
    }
    .encode(&mut body);
    let packet = OpenPacket {
        header,
        payload: body.clone(),
    };
    e.handle(t0, Input::Packet(packet));
    assert_eq!(e.counters().dropped_stream, 1);
    assert_eq!(e.known_latest(), 0);
    // Re-registration is due at most every 250 ms after the last one.
    assert_eq!(only_requests(drain(&mut e, t0)), []);
    let t1 = t0 + 251 * MS;
    assert_eq!(only_requests(drain(&mut e, t1)), [Output::Hello]);
    let mut moved = info(0, 1);
    moved.stream_id = 8;
    e.handle(t1, Input::Registered(Box::new(moved)));
    e.handle(
        t1,
        Input::Packet(OpenPacket {
            header,
            payload: body,
        }),
    );
    assert_eq!(e.known_latest(), 3);
}

fn update(version: u64) -> Update {
    Update {
        version,
        timestamp_us: 0,
        ops: vec![crate::Op::put(format!("k{version}"), "v")],
        reset: false,
    }
}

/// Answers the catch-up of `from..=through` in `out` (which must ask exactly that).
fn answer_catch_up(e: &mut Engine, now: Instant, out: &[Output], from: u64, through: u64) {
    assert!(
        out.contains(&Output::CatchUp(vec![(from, through)])),
        "expected a catch-up of {from}..={through}: {out:?}"
    );
    for v in from..=through {
        e.handle(now, Input::Repaired(update(v)));
    }
    e.handle(
        now,
        Input::RepairDone(RepairEnd::Done {
            current_version: through,
        }),
    );
}

fn report(out: &[Output]) -> &SubscriberReport {
    out.iter()
        .find_map(|o| match o {
            Output::Report(r) => Some(r),
            _ => None,
        })
        .expect("a report")
}

#[test]
fn a_subscriber_hearing_no_multicast_while_versions_come_only_by_repair_counts_total_loss() {
    let t0 = Instant::now();
    let interval = config().report_interval;
    // The backlog from before the registration is not multicast traffic: catching it up
    // with nothing heard is no loss.
    let mut e = engine(t0, 0, 1, info(10, 1));
    let out = drain(&mut e, t0);
    answer_catch_up(&mut e, t0, &out, 1, 10);
    let t1 = t0 + interval;
    let out = drain(&mut e, t1);
    assert_eq!(report(&out).loss_ppm, 0);
    assert_eq!(e.counters().multicast_silent_intervals, 0);
    // Silence: the publisher committed 11..=20 meanwhile, learned by registering again.
    let t3 = t0 + config().silence_timeout + MS;
    let out = drain(&mut e, t3);
    assert!(out.contains(&Output::Hello), "{out:?}");
    e.handle(t3, Input::Registered(Box::new(info(20, 1))));
    let t3r = t3 + config().receiver.repair_retry;
    let out = drain(&mut e, t3r);
    answer_catch_up(&mut e, t3r, &out, 11, 20);
    // The next report: nothing heard, ten new versions only by repair: total loss, and
    // the error policy registers again (first strike).
    let t4 = t3 + interval;
    let out = drain(&mut e, t4);
    assert_eq!(report(&out).loss_ppm, 1_000_000, "{out:?}");
    assert!(out.contains(&Output::Hello), "{out:?}");
    assert_eq!(e.counters().multicast_silent_intervals, 1);
    assert_eq!(e.unheard_versions(), 10);
    e.handle(t4, Input::Registered(Box::new(info(20, 1))));
    // Still nothing heard at the next report: second strike, off to unicast.
    let t5 = t4 + interval;
    let out = drain(&mut e, t5);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Membership {
                leave: true,
                loss
            } if *loss == 1.0
        )),
        "{out:?}"
    );
    assert!(e.is_unicast());
    assert_eq!(e.counters().unicast_backoffs, 1);
    assert_eq!(e.counters().multicast_silent_intervals, 2);
    // Off the group, silence is expected: the next reports say nothing of loss.
    let t6 = t5 + interval;
    let out = drain(&mut e, t6);
    assert_eq!(report(&out).loss_ppm, 0, "{out:?}");
    assert_eq!(e.counters().multicast_silent_intervals, 2);
}

#[test]
fn versions_repaired_while_the_group_is_heard_are_not_silence() {
    let t0 = Instant::now();
    let interval = config().report_interval;
    let mut e = engine(t0, 0, 1, info(0, 1));
    drain(&mut e, t0);
    // The publisher's progress comes by registration and repair, but a heartbeat or two
    // arrived by multicast in the same interval: the group is heard (too few packets to
    // measure a rate).
    e.handle(t0, Input::Registered(Box::new(info(10, 1))));
    let tr = t0 + config().receiver.repair_retry;
    let out = drain(&mut e, tr);
    answer_catch_up(&mut e, tr, &out, 1, 10);
    e.handle(
        tr,
        Input::Traffic(Traffic {
            received: 2,
            ..Traffic::default()
        }),
    );
    let out = drain(&mut e, t0 + interval);
    assert_eq!(report(&out).loss_ppm, 0, "{out:?}");
    assert_eq!(e.counters().multicast_silent_intervals, 0);
    assert_eq!(e.unheard_versions(), 0);
    // Fewer than MIN_SILENT_VERSIONS new versions with nothing heard: not yet silence.
    e.handle(t0 + interval, Input::Registered(Box::new(info(11, 1))));
    let tr = t0 + interval + config().receiver.repair_retry;
    let out = drain(&mut e, tr);
    answer_catch_up(&mut e, tr, &out, 11, 11);
    let out = drain(&mut e, t0 + 2 * interval);
    assert_eq!(report(&out).loss_ppm, 0, "{out:?}");
    const { assert!(MIN_SILENT_VERSIONS > 1) };
    assert_eq!(e.counters().multicast_silent_intervals, 0);
}

#[test]
fn a_subscriber_refused_push_polls_until_a_registration_grants_it() {
    let t0 = Instant::now();
    let mut refused = info(0, 9);
    refused.push = Push::Refused;
    let mut e = engine(t0, 0, 9, refused);
    drain(&mut e, t0);
    assert!(e.is_unicast());
    let out = drain(&mut e, t0 + policy::UNICAST_POLL);
    assert!(out.iter().any(|o| matches!(o, Output::Status)), "{out:?}");
    let mut granted = info(0, 9);
    granted.push = Push::Pushing;
    e.handle(t0 + 150 * MS, Input::Registered(Box::new(granted)));
    drain(&mut e, t0 + 150 * MS);
    assert!(!e.is_unicast());
    let out = drain(&mut e, t0 + 400 * MS);
    assert!(!out.iter().any(|o| matches!(o, Output::Status)), "{out:?}");
}

#[test]
fn a_registration_older_than_what_was_applied_meanwhile_is_no_history_change() {
    let t0 = Instant::now();
    let mut e = engine(t0, 0, 1, info(0, 1));
    // Silent too long: register again. The publisher answers at version 2...
    let t1 = t0 + config().silence_timeout + MS;
    assert!(only_requests(drain(&mut e, t1)).contains(&Output::Hello));
    // ...but while the answer travels, version 3 is committed and reaches the replica
    // (packets and repairs go on while a registration is in flight).
    e.handle(t1, Input::Current(3));
    let out = drain(&mut e, t1);
    answer_catch_up(&mut e, t1, &out, 1, 3);
    assert!(matches!(&drain(&mut e, t1)[..], [Output::Apply(b)] if b.len() == 3));
    assert_eq!(e.applied(), 3);
    e.handle(t1, Input::Registered(Box::new(info(2, 1))));
    // The publisher was at 2 or later when it answered a HELLO sent at 0: nothing was lost.
    assert_eq!(e.new_history(), None);
    assert_eq!(only_requests(drain(&mut e, t1)), []);
    // A publisher behind what the replica had when it registered did lose versions.
    let t2 = t1 + config().silence_timeout + MS;
    assert!(only_requests(drain(&mut e, t2)).contains(&Output::Hello));
    e.handle(t2, Input::Registered(Box::new(info(2, 1))));
    assert_eq!(e.new_history(), Some(1));
}

#[test]
fn a_version_announced_while_a_catch_up_is_out_is_not_forgotten_at_its_end() {
    let t0 = Instant::now();
    let mut e = engine(t0, 0, 1, info(3, 1));
    let out = drain(&mut e, t0);
    assert!(out.contains(&Output::CatchUp(vec![(1, 3)])), "{out:?}");
    // While the catch-up streams, the publisher announces version 5 (its data was lost).
    e.handle(t0 + MS, Input::Current(5));
    for v in 1..=3 {
        e.handle(t0 + MS, Input::Repaired(update(v)));
    }
    // The catch-up's end says 3: it was built before 4 and 5 were committed.
    let done = Input::RepairDone(RepairEnd::Done { current_version: 3 });
    e.handle(t0 + 2 * MS, done);
    assert_eq!(e.known_latest(), 5);
    let out = drain(&mut e, t0 + 2 * MS);
    assert!(out.contains(&Output::CatchUp(vec![(4, 5)])), "{out:?}");
}
