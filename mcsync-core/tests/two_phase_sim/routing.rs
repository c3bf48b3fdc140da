//! The engine's two-phase routing, step by step on a real stream: a COMMIT_PREPARED of the
//! held round applies the held copy; one whose PREPARE never arrived is caught up from the
//! journal (no heartbeat announces the version here, so only the routing can ask for it).

use super::*;
use mcsync::proto::subscription::{Engine, EngineStart, Output, RepairEnd};
use mcsync::wire::control::DatabaseInfo;
use mcsync::wire::update::{encode_record, update_to_vec, RecordKind};
use mcsync::Op;

const STREAM: u32 = 7;

fn update(version: u64, timestamp_us: u64) -> Update {
    Update {
        version,
        timestamp_us,
        ops: vec![Op::put(format!("k{version}"), format!("v{version}"))],
        reset: false,
    }
}

/// A participant's engine fed by a real sender, with a clock.
struct Bench {
    engine: Engine,
    sender: Sender,
    now: Instant,
    journal: Vec<Update>,
    outputs: Vec<Output>,
    applied: Vec<Update>,
}

impl Bench {
    fn new() -> Bench {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let config = SenderConfig {
            datagram_bytes: 1_400,
            max_bundle_bytes: 4_096,
            heartbeat_initial: hour,
            heartbeat_max: hour,
            packets_per_sec: 0,
            bytes_per_sec: 0,
            compress: false,
            max_backlog_bytes: mcsync::config::DEFAULT_MAX_BACKLOG_BYTES,
        };
        let mut p = Params::random(&mut ChaCha8Rng::seed_from_u64(1));
        (p.packet_repair, p.silence_timeout, p.report_interval) = (MS, hour, hour);
        let registration = DatabaseInfo {
            group: "239.255.0.1:4000".parse().expect("an address"),
            source: "127.0.0.1:4000".parse().expect("an address"),
            encrypted: true,
            keys: Vec::new(),
            older_keys_below: u64::MAX,
            groups: Vec::new(),
            current_version: 0,
            oldest_version: 1,
            subscriber_id: 1,
            incarnation: INCARNATION,
            stream_id: STREAM,
            push: Default::default(),
        };
        let start = EngineStart {
            applied: 0,
            incarnation: INCARNATION,
            registration,
            participant: true,
            held: None,
        };
        Bench {
            engine: Engine::new(now, p.engine(), start),
            sender: Sender::new(now, STREAM, 1, 0, config),
            now,
            journal: Vec::new(),
            outputs: Vec::new(),
            applied: Vec::new(),
        }
    }

    fn commit(&mut self, u: &Update) {
        self.journal.push(u.clone());
        self.sender.push(u.version, Arc::new(update_to_vec(u)));
    }

    fn control(&mut self, kind: RecordKind, u: &Update) {
        let mut b = Vec::new();
        encode_record(kind, u, &mut b);
        self.sender.push_control(Arc::new(b));
    }

    /// The packets the sender lets out now.
    fn transmit(&mut self) -> Vec<OpenPacket> {
        let mut out = Vec::new();
        while let Some(p) = self.sender.poll_transmit(self.now, 0) {
            out.push(OpenPacket {
                header: p.header,
                payload: p.payload,
            });
        }
        out
    }

    fn feed(&mut self, packets: Vec<OpenPacket>) {
        for p in packets {
            self.engine.handle(self.now, Input::Packet(p));
        }
        self.run();
    }

    /// 200 ms of the driver: lost packets are gone from the retransmit buffer, catch-ups
    /// come from the journal, the host agrees, the coordinator takes every vote.
    fn run(&mut self) {
        for _ in 0..200 {
            while let Some(out) = self.engine.poll(self.now) {
                let inputs = match &out {
                    Output::Apply(batch) => {
                        self.applied.extend(batch.iter().cloned());
                        Vec::new()
                    }
                    Output::FetchPackets { .. } => vec![Input::PacketsRepaired {
                        packets: Vec::new(),
                        ok: true,
                    }],
                    Output::CatchUp(ranges) => {
                        let mut inputs: Vec<Input> = ranges
                            .iter()
                            .flat_map(|&(a, b)| a..=b)
                            .map(|v| Input::Repaired(self.journal[v as usize - 1].clone()))
                            .collect();
                        let current_version = self.journal.len() as u64;
                        inputs.push(Input::RepairDone(RepairEnd::Done { current_version }));
                        inputs
                    }
                    Output::Check { version, .. } => vec![Input::Checked {
                        version: *version,
                        verdict: Ok(()),
                    }],
                    Output::Vote {
                        version,
                        round,
                        prepared,
                        ..
                    } => vec![Input::VoteSent {
                        version: *version,
                        round: *round,
                        prepared: *prepared,
                    }],
                    Output::Forget => vec![Input::Forgotten],
                    _ => Vec::new(),
                };
                self.outputs.push(out);
                for input in inputs {
                    self.engine.handle(self.now, input);
                }
            }
            self.now += MS;
        }
    }

    fn catch_ups(&self) -> Vec<&Output> {
        let catch_up = |o: &&Output| matches!(o, Output::CatchUp(_));
        self.outputs.iter().filter(catch_up).collect()
    }
}

#[test]
fn a_commit_prepared_whose_prepare_was_lost_is_caught_up_from_the_journal() {
    let mut b = Bench::new();
    let (u1, u2) = (update(1, 0), update(2, 2_000));
    b.commit(&u1);
    let first = b.transmit();
    b.feed(first);
    b.control(RecordKind::Prepare, &u2);
    let _lost_for_good = b.transmit();
    b.journal.push(u2.clone());
    let decision = Update {
        ops: Vec::new(),
        ..u2.clone()
    };
    b.control(RecordKind::CommitPrepared, &decision);
    let second = b.transmit();
    b.feed(second);
    assert!(
        !b.outputs.iter().any(|o| matches!(o, Output::Check { .. })),
        "checked a PREPARE it never took: {:?}",
        b.outputs
    );
    let wanted = Output::CatchUp(vec![(2, 2)]);
    assert_eq!(b.catch_ups(), vec![&wanted], "{:?}", b.outputs);
    assert_eq!(b.applied, vec![u1, u2]);
    // A participant acknowledges every decision it hears.
    let ack = Output::Ack {
        version: 2,
        round: 2_000,
    };
    assert!(b.outputs.contains(&ack), "{:?}", b.outputs);
}

#[test]
fn a_commit_prepared_of_the_held_round_applies_the_held_copy() {
    let mut b = Bench::new();
    let (u1, u2) = (update(1, 0), update(2, 2_000));
    b.commit(&u1);
    b.control(RecordKind::Prepare, &u2);
    let first = b.transmit();
    b.feed(first);
    let check = Output::Check {
        version: 2,
        update: u2.clone(),
    };
    assert!(b.outputs.contains(&check), "{:?}", b.outputs);
    assert_eq!(b.applied, vec![u1.clone()], "nothing prepared is visible");
    b.journal.push(u2.clone());
    let decision = Update {
        ops: Vec::new(),
        ..u2.clone()
    };
    b.control(RecordKind::CommitPrepared, &decision);
    let second = b.transmit();
    b.feed(second);
    assert!(b.catch_ups().is_empty(), "{:?}", b.outputs);
    assert_eq!(b.applied, vec![u1, u2]);
}
