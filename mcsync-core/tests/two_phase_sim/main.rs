//! Seeded simulation of two-phase updates: the real sans-IO coordinator round
//! (`proto::Round`, `proto::two_phase::outcome`), decision repeats (`proto::DecisionRepeat`),
//! participants (`proto::Participant`) and version order with repair (`proto::Receiver`),
//! driven by a virtual clock. The network loses multicast records (most come back through
//! packet repair, some are gone for good), delays them, fails control requests or loses
//! their replies; participants refuse, vote too slowly, crash between any two steps and
//! restart; the publisher restarts mid-round; one-phase commits are interleaved.
//!
//! Every scenario checks:
//! - every update a replica applies is the journal's update at that version, applied once
//!   and in order across restarts: nothing prepared is visible before its COMMIT and nothing
//!   aborted ever is;
//! - the coordinator commits only when every participant of the round holds exactly that
//!   update durably (it voted PREPARED only after keeping it);
//! - the caller's failure names exactly who refused (with the reason) and who did not
//!   answer;
//! - once the network heals, every replica reaches the master's version and content, and no
//!   prepared copy at or below the committed version is left anywhere.
//!
//! A failing scenario prints its seed; rerun it alone with
//! `MCSYNC_SIM_SEED=<seed> cargo test -p mcsync-core --test two_phase_sim -- --nocapture`.
//! `MCSYNC_SIM_SCENARIOS=<n>` changes how many scenarios run.

use mcsync::proto::two_phase::{outcome, Decision, Outcome};
use mcsync::proto::{
    DecisionRepeat, Participant, Receiver, ReceiverConfig, Round, Route, TwoPhaseAction,
    VoteFailure,
};
use mcsync::wire::update::RecordKind;
use mcsync::{Op, OpKind, Update};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
/// A scenario that has not converged this long after the network healed has failed.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Params {
    participants: usize,
    /// Subscribers that hold PREPAREs but neither vote nor acknowledge.
    observers: usize,
    rounds: usize,
    /// Probability of a one-phase commit before each round.
    one_phase: f64,
    /// Probability that a multicast record (or heartbeat) to one subscriber is lost.
    loss: f64,
    /// Of the lost records, the fraction packet repair does not bring back.
    gone: f64,
    /// Probability that a control request fails before reaching the publisher.
    unicast_fail: f64,
    /// Probability that a request was handled but its reply is lost.
    reply_lost: f64,
    refuse: f64,
    /// Probability that the host's vote takes longer than the caller's timeout.
    slow: f64,
    /// Probability that the caller rolls back a fully prepared update.
    rollback: f64,
    /// Probability that a participant crashes right after one of its steps.
    crash: f64,
    /// Crashes per participant at random times.
    random_crashes: usize,
    /// Probability, per round, that the publisher restarts before deciding it.
    publisher_restart: f64,
    vote_timeout: Duration,
    repeat_for: Duration,
    delay: Duration,
    jitter: Duration,
    packet_repair: Duration,
    rtt: Duration,
    max_gap: Duration,
    heartbeat: Duration,
    max_downtime: Duration,
}

fn dur_ms(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rng.gen_range(lo..=hi) / 1000.0)
}

impl Params {
    fn random(rng: &mut ChaCha8Rng) -> Params {
        let calm = rng.gen_bool(0.15);
        // Harsh scenarios lose many records for good and start rounds back to back, so
        // decisions and PREPAREs of consecutive rounds go missing together.
        let harsh = !calm && rng.gen_bool(0.3);
        let p = |rng: &mut ChaCha8Rng, hi: f64| if calm { 0.0 } else { rng.gen_range(0.0..hi) };
        Params {
            participants: rng.gen_range(1..=4),
            observers: rng.gen_range(0..=2),
            rounds: rng.gen_range(10..=40),
            one_phase: rng.gen_range(0.0..0.6),
            loss: if harsh {
                rng.gen_range(0.3..0.6)
            } else {
                p(rng, 0.3)
            },
            gone: rng.gen_range(if harsh { 0.5..1.0 } else { 0.0..0.5 }),
            unicast_fail: p(rng, 0.15),
            reply_lost: p(rng, 0.1),
            refuse: p(rng, 0.15),
            slow: p(rng, 0.08),
            rollback: p(rng, 0.1),
            crash: p(rng, 0.04),
            random_crashes: if calm { 0 } else { rng.gen_range(0..=3) },
            publisher_restart: p(rng, 0.08),
            vote_timeout: dur_ms(rng, 100.0, 800.0),
            repeat_for: dur_ms(rng, 200.0, 3000.0),
            delay: dur_ms(rng, 0.05, 2.0),
            jitter: dur_ms(rng, 0.0, 3.0),
            packet_repair: dur_ms(rng, 1.0, 20.0),
            rtt: dur_ms(rng, 0.1, 5.0),
            max_gap: dur_ms(rng, 0.0, if harsh { 10.0 } else { 200.0 }),
            heartbeat: dur_ms(rng, 20.0, 200.0),
            max_downtime: dur_ms(rng, 10.0, 1500.0),
        }
    }
}

/// What the scenarios did, summed so the suite can show it exercised every path.
#[derive(Debug, Default, Clone)]
struct Stats {
    scenarios: u64,
    rounds: u64,
    committed: u64,
    one_phase: u64,
    aborted_refused: u64,
    aborted_timeout: u64,
    rolled_back: u64,
    publisher_restarts: u64,
    records_lost: u64,
    records_gone: u64,
    decision_repeats: u64,
    repeats_expired: u64,
    all_acknowledged: u64,
    crashes: u64,
    crashed_while_prepared: u64,
    restart_pending: u64,
    restart_committed: u64,
    restart_aborted: u64,
    slow_votes: u64,
    votes_not_taken: u64,
    outcome_catch_up: u64,
    applied_prepared: u64,
    commit_without_prepare: u64,
    prepare_replaced: u64,
    repairs: u64,
    applied: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
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
            records_lost,
            records_gone,
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
            outcome_catch_up,
            applied_prepared,
            commit_without_prepare,
            prepare_replaced,
            repairs,
            applied
        );
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Record(RecordKind, Update),
    Heartbeat(u64),
}

#[derive(Debug)]
enum Event {
    Deliver {
        node: usize,
        gen: u64,
        msg: Msg,
    },
    Tick {
        node: usize,
        gen: u64,
    },
    CheckDone {
        node: usize,
        gen: u64,
        version: u64,
        verdict: Result<(), String>,
    },
    RepairReply {
        node: usize,
        gen: u64,
        updates: Vec<Update>,
        ok: bool,
        current: u64,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Next,
    Tally {
        round: u64,
    },
    Timeout {
        round: u64,
    },
    Repeat {
        round: u64,
    },
    Heartbeat,
    PublisherRestart {
        round: u64,
    },
}

/// One subscriber: what survives a crash (replica, applied version, prepared copy) and
/// what does not (the state machines, the connection).
struct Node {
    participant: bool,
    id: u64,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: u64,
    prepared: Option<Update>,
    up: bool,
    gen: u64,
    busy_until: Option<Duration>,
    machine: Option<(Participant, Receiver)>,
    repairing: bool,
    /// Multicast reaches a subscriber in send order (the reorder stage): the time the
    /// last record was released.
    last_release: Duration,
}

struct Coordinator {
    journal: Vec<Update>,
    master: BTreeMap<Vec<u8>, Vec<u8>>,
    round: Option<Round>,
    update: Option<Update>,
    /// Round counter (the timestamp of the round's PREPARE is derived from it).
    round_no: u64,
    /// Ground truth of the votes the round took: node → refusal.
    taken: BTreeMap<usize, Option<String>>,
    repeat: Option<(DecisionRepeat, Msg)>,
    rounds_left: usize,
    down_until: Duration,
    finished: bool,
}

impl Coordinator {
    fn committed(&self) -> u64 {
        self.journal.len() as u64
    }
}

struct Sim {
    p: Params,
    rng: ChaCha8Rng,
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Event>,
    nodes: Vec<Node>,
    coord: Coordinator,
    healed: bool,
    stats: Stats,
}

fn name(i: usize) -> String {
    format!("node{i}")
}

fn apply_ops(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, u: &Update) {
    for op in &u.ops {
        match op.kind {
            OpKind::Put => {
                state.insert(op.key.clone(), op.value.clone());
            }
            OpKind::Delete => {
                state.remove(&op.key);
            }
        }
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = Params::random(&mut rng);
        let nodes = (0..p.participants + p.observers)
            .map(|i| Node {
                participant: i < p.participants,
                id: i as u64 + 1,
                state: BTreeMap::new(),
                applied: 0,
                prepared: None,
                up: false,
                gen: 0,
                busy_until: None,
                machine: None,
                repairing: false,
                last_release: Duration::ZERO,
            })
            .collect();
        let coord = Coordinator {
            journal: Vec::new(),
            master: BTreeMap::new(),
            round: None,
            update: None,
            round_no: 0,
            taken: BTreeMap::new(),
            repeat: None,
            rounds_left: p.rounds,
            down_until: Duration::ZERO,
            finished: false,
        };
        let mut sim = Sim {
            p,
            rng,
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            coord,
            healed: false,
            stats: Stats {
                scenarios: 1,
                ..Stats::default()
            },
        };
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
            if sim.nodes[i].participant {
                for _ in 0..sim.p.random_crashes {
                    let span = sim.p.rounds as f64 * 60.0;
                    let at = dur_ms(&mut sim.rng, 0.0, span);
                    sim.schedule(at, Event::Crash { node: i });
                }
            }
        }
        sim.schedule(MS, Event::Next);
        sim.schedule(sim.p.heartbeat, Event::Heartbeat);
        sim
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn chance(&mut self, p: f64) -> bool {
        !self.healed && p > 0.0 && self.rng.gen_bool(p)
    }

    fn receiver_config() -> ReceiverConfig {
        ReceiverConfig {
            buffer_bytes: 1 << 20,
            repair_delay: 2 * MS,
            repair_retry: 50 * MS,
            max_ranges: 16,
        }
    }

    // ------------------------------------------------------------------ the publisher

    fn random_update(&mut self, version: u64, timestamp_us: u64) -> Update {
        let n = self.rng.gen_range(1..=3);
        let ops = (0..n)
            .map(|_| {
                let key = format!("k{}", self.rng.gen_range(0..12)).into_bytes();
                if self.rng.gen_bool(0.2) {
                    Op::delete(key)
                } else {
                    Op::put(key, format!("v{version}-{timestamp_us}"))
                }
            })
            .collect();
        Update {
            version,
            timestamp_us,
            ops,
            reset: false,
        }
    }

    fn coordinator_up(&self) -> bool {
        self.now >= self.coord.down_until
    }

    fn multicast(&mut self, msg: Msg) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let mut at = self.now + self.p.delay;
            if self.p.jitter > Duration::ZERO {
                at += dur_ms(&mut self.rng, 0.0, self.p.jitter.as_secs_f64() * 1000.0);
            }
            if self.chance(self.p.loss) {
                self.stats.records_lost += 1;
                if self.rng.gen_bool(self.p.gone) {
                    // Packet repair could not bring it back; the reorder stage skips it.
                    self.stats.records_gone += 1;
                    continue;
                }
                at += self.p.packet_repair;
            }
            let n = &mut self.nodes[i];
            at = at.max(n.last_release);
            n.last_release = at;
            let gen = n.gen;
            self.schedule(
                at,
                Event::Deliver {
                    node: i,
                    gen,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn next(&mut self) {
        if !self.coordinator_up() {
            let at = self.coord.down_until;
            self.schedule(at, Event::Next);
            return;
        }
        if self.coord.rounds_left == 0 {
            self.coord.finished = true;
            return;
        }
        let v = self.coord.committed() + 1;
        if self.rng.gen_bool(self.p.one_phase) {
            let u = self.random_update(v, 0);
            self.commit(u.clone());
            self.stats.one_phase += 1;
            self.multicast(Msg::Record(RecordKind::Commit, u));
            let gap = dur_ms(&mut self.rng, 0.0, self.p.max_gap.as_secs_f64() * 1000.0);
            self.schedule(self.now + gap, Event::Next);
            return;
        }
        self.coord.rounds_left -= 1;
        self.coord.round_no += 1;
        self.stats.rounds += 1;
        let rn = self.coord.round_no;
        let u = self.random_update(v, rn * 1000);
        let participants: BTreeMap<u64, String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.participant)
            .map(|(i, n)| (n.id, name(i)))
            .collect();
        self.coord.round = Some(Round::new(v, u.timestamp_us, participants));
        self.coord.update = Some(u.clone());
        self.coord.taken.clear();
        // A new round supersedes the previous decision's repeats.
        self.coord.repeat = None;
        self.multicast(Msg::Record(RecordKind::Prepare, u));
        let timeout = self.now + self.p.vote_timeout;
        self.schedule(timeout, Event::Timeout { round: rn });
        if self.chance(self.p.publisher_restart) {
            let at = self.now
                + dur_ms(
                    &mut self.rng,
                    0.0,
                    self.p.vote_timeout.as_secs_f64() * 1500.0,
                );
            self.schedule(at, Event::PublisherRestart { round: rn });
        }
    }

    fn commit(&mut self, u: Update) {
        assert_eq!(u.version, self.coord.committed() + 1);
        apply_ops(&mut self.coord.master, &u);
        self.coord.journal.push(u);
    }

    fn current_round(&self, rn: u64) -> bool {
        rn == self.coord.round_no
            && self
                .coord
                .round
                .as_ref()
                .is_some_and(|r| r.decision().is_none())
    }

    fn tally(&mut self, rn: u64, timed_out: bool) {
        if !self.current_round(rn) {
            return;
        }
        let round = self.coord.round.as_ref().unwrap();
        let result = match round.tally() {
            Some(r) => r,
            None if timed_out => Err(round.timed_out()),
            None => return,
        };
        match result {
            Ok(()) => {
                let rollback = self.rng.gen_bool(self.p.rollback);
                if rollback {
                    self.stats.rolled_back += 1;
                }
                self.decide(!rollback);
            }
            Err(why) => {
                self.check_failure(&why);
                if why.refused.is_empty() {
                    self.stats.aborted_timeout += 1;
                } else {
                    self.stats.aborted_refused += 1;
                }
                self.decide(false);
            }
        }
    }

    /// The caller's report must match what the network actually delivered.
    fn check_failure(&self, why: &VoteFailure) {
        let refused: Vec<(String, String)> = self
            .coord
            .taken
            .iter()
            .filter_map(|(&i, r)| r.as_ref().map(|r| (name(i), r.clone())))
            .collect();
        if !why.refused.is_empty() {
            assert_eq!(why.refused, refused, "refusals reported");
            return;
        }
        assert!(refused.is_empty(), "a refusal was not reported: {why}");
        let missing: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].participant && !self.coord.taken.contains_key(&i))
            .map(name)
            .collect();
        assert_eq!(
            why.timed_out, missing,
            "participants reported as not answering"
        );
    }

    fn decide(&mut self, commit: bool) {
        let u = self.coord.update.clone().expect("round update");
        if commit {
            // Every participant voted PREPARED, so each keeps exactly this update durably.
            for (i, n) in self.nodes.iter().enumerate() {
                if n.participant {
                    assert_eq!(
                        n.prepared.as_ref(),
                        Some(&u),
                        "{} voted PREPARED without keeping version {} durably",
                        name(i),
                        u.version
                    );
                }
            }
            self.commit(u.clone());
            self.stats.committed += 1;
        }
        let decision = if commit {
            Decision::Commit
        } else {
            Decision::Abort
        };
        self.coord.round.as_mut().unwrap().decide(decision);
        let kind = if commit {
            RecordKind::CommitPrepared
        } else {
            RecordKind::Abort
        };
        let record = Update {
            version: u.version,
            timestamp_us: u.timestamp_us,
            ops: Vec::new(),
            reset: false,
        };
        let msg = Msg::Record(kind, record);
        self.multicast(msg.clone());
        let repeat = DecisionRepeat::new(self.instant(), u.version, self.p.repeat_for);
        let at = repeat.next_timeout() - self.base;
        self.coord.repeat = Some((repeat, msg));
        let rn = self.coord.round_no;
        self.schedule(at, Event::Repeat { round: rn });
        let gap = dur_ms(&mut self.rng, 0.0, self.p.max_gap.as_secs_f64() * 1000.0);
        self.schedule(self.now + gap, Event::Next);
    }

    fn repeat(&mut self, rn: u64) {
        if rn != self.coord.round_no {
            return;
        }
        let now = self.instant();
        let Some((schedule, msg)) = self.coord.repeat.as_mut() else {
            return;
        };
        match schedule.poll(now) {
            None => {
                self.coord.repeat = None;
                self.stats.repeats_expired += 1;
            }
            Some(send) => {
                let msg = msg.clone();
                let at = schedule.next_timeout() - self.base;
                if send {
                    self.stats.decision_repeats += 1;
                    self.multicast(msg);
                }
                self.schedule(at, Event::Repeat { round: rn });
            }
        }
    }

    fn publisher_restart(&mut self, rn: u64) {
        if !self.current_round(rn) {
            return;
        }
        // The undecided round dies with the process: nothing was journaled, no decision
        // is sent; the version is free for the next commit.
        self.stats.publisher_restarts += 1;
        self.coord.round = None;
        self.coord.repeat = None;
        let down = dur_ms(&mut self.rng, 1.0, 300.0);
        self.coord.down_until = self.now + down;
        self.schedule(self.coord.down_until, Event::Next);
    }

    /// A control request: `None` if it failed before reaching the publisher, else whether
    /// its reply arrived.
    fn request(&mut self) -> Option<bool> {
        if !self.coordinator_up() || self.chance(self.p.unicast_fail) {
            return None;
        }
        Some(!self.chance(self.p.reply_lost))
    }

    // ------------------------------------------------------------------ the subscribers

    fn start_node(&mut self, i: usize) {
        // HELLO, and OUTCOME_REQUEST for a prepared copy kept before the crash.
        if self.request() != Some(true) {
            self.schedule(self.now + 20 * MS, Event::Restart { node: i });
            return;
        }
        let committed = self.coord.committed();
        let n = &mut self.nodes[i];
        let restored = match n.prepared.take() {
            Some(p) if p.version > n.applied => {
                match outcome(
                    self.coord.round.as_ref(),
                    p.version,
                    p.timestamp_us,
                    committed,
                ) {
                    Outcome::Pending => {
                        self.stats.restart_pending += 1;
                        Some(p)
                    }
                    Outcome::Committed => {
                        self.stats.restart_committed += 1;
                        None
                    }
                    s => {
                        assert_eq!(s, Outcome::Aborted);
                        self.stats.restart_aborted += 1;
                        None
                    }
                }
            }
            _ => None,
        };
        n.prepared = restored.clone();
        let participant = Participant::new(n.participant, restored);
        let mut receiver = Receiver::new(n.applied, Self::receiver_config());
        receiver.on_heartbeat(self.base + self.now, committed);
        n.machine = Some((participant, receiver));
        n.up = true;
        n.busy_until = None;
        n.repairing = false;
        n.last_release = self.now;
        self.step(i);
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.up {
            return;
        }
        n.up = false;
        n.gen += 1;
        n.machine = None;
        self.stats.crashes += 1;
        if n.prepared.is_some() {
            self.stats.crashed_while_prepared += 1;
        }
        let down = dur_ms(
            &mut self.rng,
            1.0,
            self.p.max_downtime.as_secs_f64() * 1000.0,
        );
        self.schedule(self.now + down, Event::Restart { node: i });
    }

    fn live(&self, i: usize, gen: u64) -> bool {
        let n = &self.nodes[i];
        n.up && n.gen == gen
    }

    fn deliver(&mut self, i: usize, msg: Msg) {
        let now = self.instant();
        let n = &mut self.nodes[i];
        let (participant, receiver) = n.machine.as_mut().unwrap();
        match msg {
            Msg::Heartbeat(v) => receiver.on_heartbeat(now, v),
            Msg::Record(kind, u) => {
                let before = participant.pending().cloned();
                if kind == RecordKind::Prepare
                    && before
                        .as_ref()
                        .is_some_and(|p| p.version == u.version && p.timestamp_us != u.timestamp_us)
                {
                    self.stats.prepare_replaced += 1;
                }
                let from_prepared = kind == RecordKind::CommitPrepared;
                match participant.on_record(kind, u, receiver.applied()) {
                    Route::Apply(u) => {
                        if from_prepared {
                            self.stats.applied_prepared += 1;
                        }
                        receiver.on_update(now, u);
                    }
                    Route::CatchUp(v) => {
                        self.stats.commit_without_prepare += 1;
                        receiver.on_heartbeat(now, v);
                    }
                    Route::Held => {}
                }
            }
        }
        self.step(i);
    }

    /// Applies what is ready, checking it against the journal.
    fn apply_ready(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let (_, receiver) = n.machine.as_mut().unwrap();
        while let Some(u) = receiver.poll_ready() {
            assert_eq!(
                u.version,
                n.applied + 1,
                "{}: applied out of order",
                name(i)
            );
            let Some(journaled) = self.coord.journal.get(u.version as usize - 1) else {
                panic!(
                    "{}: applied version {} which is not committed (committed {})",
                    name(i),
                    u.version,
                    self.coord.journal.len()
                );
            };
            assert_eq!(
                &u,
                journaled,
                "{}: applied something the journal does not hold",
                name(i)
            );
            apply_ops(&mut n.state, &u);
            n.applied = u.version;
            self.stats.applied += 1;
        }
    }

    /// One turn of the process thread: apply, do what the participant asks, repair.
    fn step(&mut self, i: usize) {
        loop {
            self.apply_ready(i);
            let now = self.instant();
            let n = &mut self.nodes[i];
            let (participant, receiver) = n.machine.as_mut().unwrap();
            let Some(action) = participant.poll(now, receiver.applied()) else {
                break;
            };
            match action {
                TwoPhaseAction::Forget => {
                    n.prepared = None;
                    participant.forgotten();
                }
                TwoPhaseAction::CatchUp(v) => receiver.on_heartbeat(now, v),
                TwoPhaseAction::Ack { version, round } => {
                    if self.request().is_some() {
                        let id = self.nodes[i].id;
                        if let Some(r) = self.coord.round.as_mut() {
                            if r.ack(version, round, id) && self.coord.repeat.is_some() {
                                self.coord.repeat = None;
                                self.stats.all_acknowledged += 1;
                            }
                        }
                    }
                }
                TwoPhaseAction::Check(v) => {
                    let verdict = if self.chance(self.p.refuse) {
                        Err(format!("{} cannot take version {v}", name(i)))
                    } else {
                        Ok(())
                    };
                    if self.chance(self.p.slow) {
                        // The host's vote callback blocks the process thread past the
                        // caller's timeout.
                        self.stats.slow_votes += 1;
                        let until = self.now + self.p.vote_timeout + 10 * MS;
                        let n = &mut self.nodes[i];
                        n.busy_until = Some(until);
                        let gen = n.gen;
                        self.schedule(
                            until,
                            Event::CheckDone {
                                node: i,
                                gen,
                                version: v,
                                verdict,
                            },
                        );
                        return;
                    }
                    self.checked(i, v, verdict);
                }
                TwoPhaseAction::Vote {
                    version,
                    round,
                    prepared,
                    reason,
                } => self.vote(i, (version, round), prepared, reason),
            }
            if self.chance(self.p.crash) {
                self.crash(i);
                return;
            }
        }
        self.poll_repair(i);
        self.schedule_tick(i);
    }

    fn checked(&mut self, i: usize, v: u64, verdict: Result<(), String>) {
        let n = &mut self.nodes[i];
        let (participant, _) = n.machine.as_mut().unwrap();
        if verdict.is_ok() {
            let p = participant.pending().expect("checking a held update");
            assert_eq!(p.version, v);
            n.prepared = Some(p.clone());
        }
        participant.checked(v, verdict);
    }

    fn vote(&mut self, i: usize, (version, round): (u64, u64), prepared: bool, reason: String) {
        let Some(reply) = self.request() else { return };
        let id = self.nodes[i].id;
        let refusal = (!prepared).then_some(reason);
        let taken = self
            .coord
            .round
            .as_mut()
            .is_some_and(|r| r.vote(version, round, id, refusal.clone()));
        if taken {
            self.coord.taken.insert(i, refusal);
            let rn = self.coord.round_no;
            self.schedule(self.now + self.p.rtt / 2, Event::Tally { round: rn });
        }
        if !reply {
            return;
        }
        let now = self.instant();
        if taken {
            let (participant, _) = self.nodes[i].machine.as_mut().unwrap();
            participant.vote_sent(version);
            return;
        }
        // Refused: ask what became of the round.
        self.stats.votes_not_taken += 1;
        if self.request() != Some(true) {
            return;
        }
        let state = outcome(
            self.coord.round.as_ref(),
            version,
            round,
            self.coord.committed(),
        );
        let (participant, receiver) = self.nodes[i].machine.as_mut().unwrap();
        if let Route::CatchUp(v) = participant.on_outcome(version, round, state) {
            self.stats.outcome_catch_up += 1;
            receiver.on_heartbeat(now, v);
        }
    }

    fn poll_repair(&mut self, i: usize) {
        let now = self.instant();
        let n = &mut self.nodes[i];
        if n.repairing {
            return;
        }
        let (_, receiver) = n.machine.as_mut().unwrap();
        let Some(ranges) = receiver.poll_repair(now) else {
            return;
        };
        n.repairing = true;
        let gen = n.gen;
        self.stats.repairs += 1;
        let mut updates: Vec<Update> = ranges
            .iter()
            .flat_map(|&(a, b)| {
                let top = b.min(self.coord.committed());
                (a..=top).map(|v| self.coord.journal[v as usize - 1].clone())
            })
            .collect();
        let ok = self.request() == Some(true);
        if !ok {
            // Failed part-way: some of it arrived.
            let keep = self.rng.gen_range(0..=updates.len());
            updates.truncate(keep);
        }
        let current = self.coord.committed();
        self.schedule(
            self.now + self.p.rtt,
            Event::RepairReply {
                node: i,
                gen,
                updates,
                ok,
                current,
            },
        );
    }

    fn repair_reply(&mut self, i: usize, updates: Vec<Update>, ok: bool, current: u64) {
        let now = self.instant();
        let n = &mut self.nodes[i];
        n.repairing = false;
        let (_, receiver) = n.machine.as_mut().unwrap();
        for u in updates {
            receiver.on_update(now, u);
        }
        if ok {
            receiver.clamp_latest(current);
        }
        receiver.on_repair_done(now, ok);
        self.step(i);
    }

    fn schedule_tick(&mut self, i: usize) {
        let n = &self.nodes[i];
        let (participant, receiver) = n.machine.as_ref().unwrap();
        let next = [receiver.next_timeout(), participant.next_timeout()]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = next {
            let at = (t - self.base).max(self.now + Duration::from_micros(100));
            let gen = n.gen;
            self.schedule(at, Event::Tick { node: i, gen });
        }
    }

    // ------------------------------------------------------------------ the run

    fn handle(&mut self, event: Event) {
        // Input for a node whose process thread is busy in a slow vote callback waits.
        if let Event::Deliver { node, .. }
        | Event::Tick { node, .. }
        | Event::RepairReply { node, .. } = &event
        {
            if let Some(t) = self.nodes[*node].busy_until.filter(|&t| t > self.now) {
                self.schedule(t, event);
                return;
            }
        }
        match event {
            Event::Deliver { node, gen, msg } if self.live(node, gen) => self.deliver(node, msg),
            Event::Tick { node, gen } if self.live(node, gen) => self.step(node),
            Event::CheckDone {
                node,
                gen,
                version,
                verdict,
            } if self.live(node, gen) => {
                self.nodes[node].busy_until = None;
                self.checked(node, version, verdict);
                self.step(node);
            }
            Event::RepairReply {
                node,
                gen,
                updates,
                ok,
                current,
            } if self.live(node, gen) => self.repair_reply(node, updates, ok, current),
            Event::Crash { node } if !self.healed => self.crash(node),
            Event::Restart { node } if !self.nodes[node].up => self.start_node(node),
            Event::Next => self.next(),
            Event::Tally { round } => self.tally(round, false),
            Event::Timeout { round } => self.tally(round, true),
            Event::Repeat { round } => self.repeat(round),
            Event::PublisherRestart { round } => self.publisher_restart(round),
            Event::Heartbeat => {
                if self.coordinator_up() {
                    let v = self.coord.committed();
                    self.multicast(Msg::Heartbeat(v));
                }
                self.schedule(self.now + self.p.heartbeat, Event::Heartbeat);
            }
            _ => {}
        }
    }

    fn converged(&self) -> bool {
        let committed = self.coord.committed();
        self.nodes
            .iter()
            .all(|n| n.up && n.busy_until.is_none() && n.applied == committed)
    }

    fn run(mut self) -> Stats {
        let mut healed_at = None;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            let event = self.events.remove(&seq).expect("scheduled event");
            self.now = at;
            self.handle(event);
            if self.coord.finished && !self.healed {
                // Heal the network; nodes that are down come back (their restarts are
                // scheduled), and everything must converge.
                self.healed = true;
                healed_at = Some(self.now);
            }
            if let Some(h) = healed_at {
                if self.converged() {
                    break;
                }
                assert!(
                    self.now < h + CONVERGE_WITHIN,
                    "not converged {CONVERGE_WITHIN:?} after healing: committed {}, replicas at {:?}",
                    self.coord.committed(),
                    self.nodes.iter().map(|n| (n.up, n.applied)).collect::<Vec<_>>()
                );
            }
        }
        assert!(
            self.converged(),
            "the event queue ran dry before convergence"
        );
        self.check_end();
        self.stats
    }

    fn check_end(&self) {
        let committed = self.coord.committed();
        for (i, n) in self.nodes.iter().enumerate() {
            assert_eq!(
                n.state,
                self.coord.master,
                "{} differs from the master",
                name(i)
            );
            assert!(
                n.prepared.as_ref().is_none_or(|p| p.version > committed),
                "{} keeps a prepared copy of committed version {}",
                name(i),
                n.prepared.as_ref().unwrap().version
            );
            let (participant, _) = n.machine.as_ref().unwrap();
            assert!(participant.pending().is_none_or(|p| p.version > committed));
        }
        let versions: BTreeSet<u64> = self.coord.journal.iter().map(|u| u.version).collect();
        assert_eq!(versions.len() as u64, committed, "journal without holes");
    }
}

fn run_seed(seed: u64) -> Stats {
    match std::panic::catch_unwind(|| Sim::new(seed).run()) {
        Ok(s) => s,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "two-phase scenario failed: {msg}\n  rerun with MCSYNC_SIM_SEED={seed:#x} \
                 cargo test -p mcsync-core --test two_phase_sim -- --nocapture\n  \
                 parameters: {:#?}",
                Params::random(&mut ChaCha8Rng::seed_from_u64(seed))
            );
        }
    }
}

const BASE_SEED: u64 = 0x2FA5_0000;
const SCENARIOS: u64 = 2000;

#[test]
fn random_two_phase_scenarios() {
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("MCSYNC_SIM_SEED") {
        Ok(s) => {
            let seed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            };
            vec![seed.expect("MCSYNC_SIM_SEED is a number")]
        }
        Err(_) => {
            let count = std::env::var("MCSYNC_SIM_SCENARIOS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SCENARIOS);
            (0..count).map(|i| BASE_SEED + i).collect()
        }
    };
    let single = seeds.len() == 1;
    let mut t = Stats::default();
    for seed in seeds {
        t.add(&run_seed(seed));
    }
    println!(
        "two-phase simulation: {} scenarios in {:?}: {t:#?}",
        t.scenarios,
        started.elapsed()
    );
    if single {
        return;
    }
    // The suite must have exercised every path it claims to.
    assert!(t.committed > t.scenarios * 3, "{t:#?}");
    assert!(
        t.aborted_refused > 0 && t.aborted_timeout > 0 && t.rolled_back > 0,
        "{t:#?}"
    );
    assert!(t.publisher_restarts > 0 && t.one_phase > 0, "{t:#?}");
    assert!(t.records_lost > 0 && t.records_gone > 0, "{t:#?}");
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
        t.slow_votes > 0 && t.votes_not_taken > 0 && t.outcome_catch_up > 0,
        "{t:#?}"
    );
    assert!(
        t.applied_prepared > 0 && t.commit_without_prepare > 0 && t.prepare_replaced > 0,
        "{t:#?}"
    );
    assert!(t.repairs > 0 && t.applied > t.committed, "{t:#?}");
}
