//! The publisher: two-phase rounds and one-phase commits, the multicast stream its real
//! `Sender` produces, and the control server answering subscribers' requests.

use super::*;
use mcsync::proto::decode_chain_records;
use mcsync::proto::subscription::RepairEnd;
use mcsync::proto::two_phase::{outcome, Decision};
use mcsync::wire::control::DatabaseInfo;
use mcsync::wire::packet::{PacketKind, TAG_LEN};
use mcsync::wire::update::{encode_record, update_to_vec, RecordKind};
use mcsync::Op;

fn encoded(kind: RecordKind, u: &Update) -> Arc<Vec<u8>> {
    let mut b = Vec::new();
    encode_record(kind, u, &mut b);
    Arc::new(b)
}

impl Sim {
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

    pub(super) fn coordinator_up(&self) -> bool {
        self.now >= self.coord.down_until
    }

    /// Multicasts every packet the sender lets out now. Each is kept for packet repair.
    pub(super) fn transmit(&mut self) {
        if !self.coordinator_up() {
            return;
        }
        let now = self.instant();
        let wall_us = self.now.as_micros() as u64;
        while let Some(plain) = self.coord.sender.poll_transmit(now, wall_us) {
            let mut header = plain.header;
            // As the sealed datagram would say.
            header.length = (plain.payload.len() + TAG_LEN) as u16;
            let pkt = OpenPacket {
                header,
                payload: plain.payload,
            };
            self.record_chain(&pkt);
            self.coord.sent.insert(header.seq, pkt.clone());
            self.stats.packets_sent += 1;
            self.multicast(&pkt);
        }
    }

    /// Notes which records each chain carried (what the subscribers' engines decode).
    fn record_chain(&mut self, pkt: &OpenPacket) {
        if pkt.header.kind != PacketKind::Data {
            return;
        }
        let c = &mut self.coord;
        let first = *c.chain_first.get_or_insert(pkt.header.seq);
        let Some(chain) = c.assembler.on_packet(&pkt.header, &pkt.payload).chain else {
            return;
        };
        c.chain_first = None;
        let limits = Limits::default();
        let records = decode_chain_records(&chain, &limits, MAX_CHAIN)
            .expect("the sender's chain decodes")
            .into_iter()
            .map(|(kind, u)| (kind, u.version, u.timestamp_us))
            .collect();
        c.chains.push(ChainRecord {
            stream: pkt.header.stream_id,
            first,
            last: pkt.header.seq,
            records,
        });
    }

    fn multicast(&mut self, pkt: &OpenPacket) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.up || n.live.as_ref().is_some_and(|l| l.left) {
                continue;
            }
            let gen = n.gen;
            let mut at = self.now + self.p.delay;
            if self.p.jitter > Duration::ZERO {
                at += dur_ms(&mut self.rng, 0.0, self.p.jitter.as_secs_f64() * 1000.0);
            }
            if self.chance(self.p.loss) {
                self.stats.packets_lost += 1;
                if self.rng.gen_bool(self.p.gone) {
                    // Packet repair will not bring it back; the journal repairs its versions.
                    self.stats.packets_gone += 1;
                    let key = (pkt.header.stream_id, pkt.header.seq);
                    self.nodes[i].gone.insert(key);
                }
                continue;
            }
            let pkt = pkt.clone();
            self.schedule(at, Event::Arrive { node: i, gen, pkt });
        }
    }

    pub(super) fn next(&mut self) {
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
            self.coord.sender.push(v, Arc::new(update_to_vec(&u)));
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
        self.coord
            .sender
            .push_control(encoded(RecordKind::Prepare, &u));
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

    pub(super) fn tally(&mut self, rn: u64, timed_out: bool) {
        if !self.current_round(rn) {
            return;
        }
        let round = self.coord.round.as_ref().expect("current round");
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
        self.coord
            .round
            .as_mut()
            .expect("current round")
            .decide(decision);
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
        let bytes = encoded(kind, &record);
        self.coord.sender.push_control(bytes.clone());
        if commit {
            self.coord.sender.advance_to(u.version);
        }
        let repeat = DecisionRepeat::new(self.instant(), u.version, self.p.repeat_for);
        let at = repeat.next_timeout() - self.base;
        self.coord.repeat = Some((repeat, bytes));
        let rn = self.coord.round_no;
        self.schedule(at, Event::Repeat { round: rn });
        let gap = dur_ms(&mut self.rng, 0.0, self.p.max_gap.as_secs_f64() * 1000.0);
        self.schedule(self.now + gap, Event::Next);
    }

    pub(super) fn repeat(&mut self, rn: u64) {
        if rn != self.coord.round_no {
            return;
        }
        let now = self.instant();
        let Some((schedule, bytes)) = self.coord.repeat.as_mut() else {
            return;
        };
        match schedule.poll(now) {
            None => {
                self.coord.repeat = None;
                self.stats.repeats_expired += 1;
            }
            Some(send) => {
                let bytes = bytes.clone();
                let at = schedule.next_timeout() - self.base;
                if send {
                    self.stats.decision_repeats += 1;
                    self.coord.sender.push_control(bytes);
                }
                self.schedule(at, Event::Repeat { round: rn });
            }
        }
    }

    pub(super) fn publisher_restart(&mut self, rn: u64) {
        if !self.current_round(rn) {
            return;
        }
        // The undecided round dies with the process: nothing was journaled, no decision
        // is sent; the version is free for the next commit. The new process multicasts on
        // a new stream, with an empty retransmit buffer.
        self.stats.publisher_restarts += 1;
        self.coord.round = None;
        self.coord.repeat = None;
        let down = dur_ms(&mut self.rng, 1.0, 300.0);
        self.coord.down_until = self.now + down;
        let mut id = self.rng.gen();
        while id == self.coord.stream_id {
            id = self.rng.gen();
        }
        let config = self.p.sender(&mut self.rng);
        let c = &mut self.coord;
        c.stream_id = id;
        c.sender = Sender::new(
            self.base + c.down_until,
            id,
            1,
            c.journal.len() as u64,
            config,
        );
        c.sent.clear();
        c.assembler = ChainAssembler::new(MAX_CHAIN);
        c.chain_first = None;
        self.schedule(self.coord.down_until, Event::Next);
    }

    /// A control request: `None` if it failed before reaching the publisher, else whether
    /// its reply arrived.
    pub(super) fn request(&mut self) -> Option<bool> {
        if !self.coordinator_up() || self.chance(self.p.unicast_fail) {
            return None;
        }
        Some(!self.chance(self.p.reply_lost))
    }

    /// What HELLO_OK says now.
    pub(super) fn registration(&self, i: usize) -> DatabaseInfo {
        DatabaseInfo {
            group: "239.255.0.1:4000".parse().expect("an address"),
            source: "127.0.0.1:4000".parse().expect("an address"),
            encrypted: true,
            keys: Vec::new(),
            older_keys_below: u64::MAX,
            groups: Vec::new(),
            current_version: self.coord.committed(),
            oldest_version: 1,
            subscriber_id: self.nodes[i].id,
            incarnation: INCARNATION,
            stream_id: self.coord.stream_id,
            push: Default::default(),
        }
    }

    /// The publisher takes a request; its answer reaches the subscriber half a round trip
    /// later (a failed request is answered with its failure, as the control worker does).
    pub(super) fn serve(&mut self, i: usize, gen: u64, req: Request) {
        let r = self.request();
        let mut then = None;
        let inputs = match req {
            Request::Hello if r == Some(true) => {
                self.stats.registrations += 1;
                vec![Input::Registered(Box::new(self.registration(i)))]
            }
            Request::Hello => {
                self.stats.register_failed += 1;
                vec![Input::RegisterFailed { auth: false }]
            }
            Request::Status if r == Some(true) => vec![Input::Current(self.coord.committed())],
            Request::Status => Vec::new(),
            Request::Ack { version, round } => {
                if r.is_some() {
                    self.take_ack(i, version, round);
                }
                Vec::new()
            }
            Request::Vote {
                version,
                round,
                prepared,
                reason,
            } => {
                let taken = r.is_some() && self.take_vote(i, (version, round), prepared, reason);
                match r {
                    Some(true) if taken => vec![Input::VoteSent {
                        version,
                        round,
                        prepared,
                    }],
                    Some(true) => {
                        // Not taken: the control worker asks what became of the round.
                        self.stats.votes_not_taken += 1;
                        then = Some(Request::Outcome { version, round });
                        Vec::new()
                    }
                    _ => Vec::new(),
                }
            }
            Request::Outcome { version, round } if r == Some(true) => {
                let state = outcome(
                    self.coord.round.as_ref(),
                    version,
                    round,
                    self.coord.committed(),
                );
                if state == mcsync::proto::two_phase::Outcome::Committed {
                    self.stats.outcome_committed += 1;
                }
                vec![Input::Outcome {
                    version,
                    round,
                    state,
                }]
            }
            Request::Outcome { .. } => Vec::new(),
            Request::Packets { stream, ranges } => vec![self.serve_packets(i, stream, &ranges, r)],
            Request::CatchUp(ranges) => self.serve_versions(&ranges, r),
        };
        if !inputs.is_empty() || then.is_some() {
            let at = self.now + self.p.rtt / 2;
            self.schedule(
                at,
                Event::Answer {
                    node: i,
                    gen,
                    inputs,
                    then,
                },
            );
        }
    }

    fn take_ack(&mut self, i: usize, version: u64, round: u64) {
        let id = self.nodes[i].id;
        if let Some(r) = self.coord.round.as_mut() {
            if r.ack(version, round, id) && self.coord.repeat.is_some() {
                self.coord.repeat = None;
                self.stats.all_acknowledged += 1;
            }
        }
    }

    /// Whether the round took the vote.
    fn take_vote(&mut self, i: usize, (v, round): (u64, u64), ok: bool, why: String) -> bool {
        let id = self.nodes[i].id;
        let refusal = (!ok).then_some(why);
        let taken = self
            .coord
            .round
            .as_mut()
            .is_some_and(|r| r.vote(v, round, id, refusal.clone()));
        if taken {
            self.coord.taken.insert(i, refusal);
            let rn = self.coord.round_no;
            self.schedule(self.now + self.p.rtt / 2, Event::Tally { round: rn });
        }
        taken
    }

    /// Packets from the retransmit buffer; those lost for good to this subscriber are not
    /// there any more (a lost reply fails part-way).
    fn serve_packets(
        &mut self,
        i: usize,
        stream: u32,
        ranges: &[(u64, u64)],
        r: Option<bool>,
    ) -> Input {
        let Some(reply) = r else {
            return Input::PacketsRepaired {
                packets: Vec::new(),
                ok: false,
            };
        };
        let mut packets: Vec<OpenPacket> = ranges
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .filter(|&seq| !self.nodes[i].gone.contains(&(stream, seq)))
            .filter_map(|seq| {
                (stream == self.coord.stream_id)
                    .then(|| self.coord.sent.get(&seq).cloned())
                    .flatten()
            })
            .collect();
        if !reply {
            let keep = self.rng.gen_range(0..=packets.len());
            packets.truncate(keep);
        }
        Input::PacketsRepaired { packets, ok: reply }
    }

    /// Versions from the journal, then CATCHUP_END with the current version (a lost
    /// reply fails part-way).
    fn serve_versions(&mut self, ranges: &[(u64, u64)], r: Option<bool>) -> Vec<Input> {
        let Some(reply) = r else {
            return vec![Input::RepairDone(RepairEnd::Failed)];
        };
        let committed = self.coord.committed();
        let mut inputs: Vec<Input> = ranges
            .iter()
            .flat_map(|&(a, b)| a..=b.min(committed))
            .map(|v| Input::Repaired(self.coord.journal[v as usize - 1].clone()))
            .collect();
        if !reply {
            let keep = self.rng.gen_range(0..=inputs.len());
            inputs.truncate(keep);
            inputs.push(Input::RepairDone(RepairEnd::Failed));
        } else {
            inputs.push(Input::RepairDone(RepairEnd::Done {
                current_version: committed,
            }));
        }
        inputs
    }
}
