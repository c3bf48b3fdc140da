//! A subscriber process, driven as `subscriber/driver.rs` drives the engine: packets and
//! answers go in through `Engine::handle`, and every `Output` is done or sent as a request
//! that the publisher answers after a round trip.

use super::*;
use mcsync::proto::subscription::{Engine, EngineStart, Output, Traffic};
use mcsync::proto::two_phase::{outcome, Outcome};

impl Sim {
    /// Starts a subscriber as `subscriber/start.rs` does: registers and, for a prepared
    /// copy kept before the crash, asks what became of its round (OUTCOME_REQUEST); then
    /// runs the engine.
    pub(super) fn start_node(&mut self, i: usize) {
        if self.request() != Some(true) {
            self.schedule(self.now + 20 * MS, Event::Restart { node: i });
            return;
        }
        let committed = self.coord.committed();
        let registration = self.registration(i);
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
        let held = restored.as_ref().map(|p| (p.version, p.timestamp_us));
        let start = EngineStart {
            applied: n.applied,
            incarnation: INCARNATION,
            registration,
            participant: n.participant,
            held: restored,
        };
        let engine = Engine::new(self.base + self.now, self.p.engine(), start);
        n.live = Some(Live {
            shadow: Shadow::new(engine.stream_id(), held),
            engine,
            left: false,
            received: 0,
        });
        n.up = true;
        n.busy_until = None;
        self.drain(i);
    }

    pub(super) fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(live) = n.live.take() else {
            return;
        };
        n.up = false;
        n.gen += 1;
        n.busy_until = None;
        let prepared = n.prepared.is_some();
        self.collect(&live);
        self.stats.crashes += 1;
        if prepared {
            self.stats.crashed_while_prepared += 1;
        }
        let down = dur_ms(
            &mut self.rng,
            1.0,
            self.p.max_downtime.as_secs_f64() * 1000.0,
        );
        self.schedule(self.now + down, Event::Restart { node: i });
    }

    /// Adds what a subscriber process counted before it ends.
    pub(super) fn collect(&mut self, live: &Live) {
        let c = live.engine.counters();
        let s = &mut self.stats;
        s.packets_repaired += c.packets_repaired;
        s.catchups_done += c.catchups_journal;
        s.repair_failures += c.repair_failures;
        s.backoffs += c.unicast_backoffs;
        s.dropped_stream += c.dropped_stream;
        s.chains_received += c.chains_received;
    }

    /// The receive thread hands a multicast packet to the process thread.
    pub(super) fn arrive(&mut self, i: usize, pkt: OpenPacket) {
        let now = self.instant();
        let live = self.nodes[i].live.as_mut().expect("a live node");
        live.received += 1;
        let (stream, seq) = (pkt.header.stream_id, pkt.header.seq);
        live.engine.handle(now, Input::Packet(pkt));
        let traffic = Traffic {
            received: live.received,
            ..Traffic::default()
        };
        live.engine.handle(now, Input::Traffic(traffic));
        self.fed(i, stream, seq);
        self.drain(i);
    }

    /// Notes a packet the engine took, for the routing counts.
    fn fed(&mut self, i: usize, stream: u32, seq: u64) {
        let n = &mut self.nodes[i];
        let live = n.live.as_mut().expect("a live node");
        if stream != live.engine.stream_id() {
            return;
        }
        let counts = live
            .shadow
            .on_fed(stream, seq, &self.coord.chains, &n.gone, n.applied);
        self.stats.applied_prepared += counts.applied_prepared;
        self.stats.commit_without_prepare += counts.commit_without_prepare;
        self.stats.prepare_replaced += counts.prepare_replaced;
    }

    /// The control worker's answer reaches the process thread.
    pub(super) fn answer(&mut self, i: usize, inputs: Vec<Input>, then: Option<Request>) {
        let now = self.instant();
        for input in inputs {
            let repaired: Vec<(u32, u64)> = match &input {
                Input::PacketsRepaired { packets, .. } => packets
                    .iter()
                    .map(|p| (p.header.stream_id, p.header.seq))
                    .collect(),
                _ => Vec::new(),
            };
            let live = self.nodes[i].live.as_mut().expect("a live node");
            live.engine.handle(now, input);
            for (stream, seq) in repaired {
                self.fed(i, stream, seq);
            }
        }
        if let Some(req) = then {
            self.send(i, req);
        }
        self.drain(i);
    }

    /// Sends a request; the publisher takes it half a round trip later.
    fn send(&mut self, i: usize, req: Request) {
        let gen = self.nodes[i].gen;
        let at = self.now + self.p.rtt / 2;
        self.schedule(at, Event::Request { node: i, gen, req });
    }

    /// Does what the engine asks until it has nothing more (or the process thread blocks
    /// in a slow vote callback, or the process crashes).
    pub(super) fn drain(&mut self, i: usize) {
        loop {
            let n = &mut self.nodes[i];
            if n.busy_until.is_some() {
                return;
            }
            let Some(live) = n.live.as_mut() else {
                return;
            };
            let now = self.base + self.now;
            let committed = self.coord.journal.len() as u64;
            assert!(
                live.engine.known_latest() <= committed,
                "{}: the engine believes in version {} but the master is at {committed}",
                name(i),
                live.engine.known_latest()
            );
            let Some(out) = live.engine.poll(now) else {
                // A drained engine has no timer due: a driver sleeping until it would spin.
                if let Some((timer, at)) = live.engine.next_timer() {
                    assert!(
                        at > now,
                        "{timer:?} due at {at:?}, nothing to do at {now:?}"
                    );
                }
                return;
            };
            let step = matches!(
                out,
                Output::Apply(_) | Output::Forget | Output::Ack { .. } | Output::Vote { .. }
            );
            self.execute(i, out);
            if step && self.chance(self.p.crash) {
                self.crash(i);
                return;
            }
        }
    }

    fn execute(&mut self, i: usize, out: Output) {
        let now = self.instant();
        match out {
            Output::Apply(batch) => self.apply(i, batch),
            Output::Hello => {
                self.stats.hellos += 1;
                self.send(i, Request::Hello);
            }
            Output::Report(r) => assert_eq!(r.applied_version, self.nodes[i].applied),
            Output::Status => {
                self.stats.status_polls += 1;
                self.send(i, Request::Status);
            }
            Output::Membership { leave, .. } => {
                let live = self.nodes[i].live.as_mut().expect("a live node");
                live.left = leave;
            }
            Output::FetchPackets { stream, ranges } => {
                self.stats.packet_repairs += 1;
                self.send(i, Request::Packets { stream, ranges });
            }
            Output::CatchUp(ranges) => {
                self.check_version_request(i, &ranges);
                self.stats.catchups += 1;
                self.send(i, Request::CatchUp(ranges));
            }
            out @ (Output::Compact { .. } | Output::Resync { .. }) => panic!(
                "{}: {out:?} with compaction off, one history and a journal never trimmed",
                name(i)
            ),
            Output::Forget => {
                let n = &mut self.nodes[i];
                n.prepared = None;
                let live = n.live.as_mut().expect("a live node");
                live.engine.handle(now, Input::Forgotten);
            }
            Output::Ack { version, round } => self.send(i, Request::Ack { version, round }),
            Output::Check { version, update } => self.check(i, version, update),
            Output::Vote {
                version,
                round,
                prepared,
                reason,
            } => self.send(
                i,
                Request::Vote {
                    version,
                    round,
                    prepared,
                    reason,
                },
            ),
        }
    }

    /// Version repairs ask for versions above the replica's.
    fn check_version_request(&self, i: usize, ranges: &[(u64, u64)]) {
        assert!(!ranges.is_empty(), "{}: an empty repair request", name(i));
        let mut prev = self.nodes[i].applied;
        for &(a, b) in ranges {
            assert!(
                a > prev && a <= b,
                "{}: bad ranges {ranges:?} at {prev}",
                name(i)
            );
            prev = b;
        }
    }

    /// The host's vote callback; a slow one blocks the process thread past the caller's
    /// timeout.
    fn check(&mut self, i: usize, version: u64, update: Update) {
        assert_eq!(
            update.version,
            version,
            "{}: checked another update",
            name(i)
        );
        let verdict = if self.chance(self.p.refuse) {
            Err(format!("{} cannot take version {version}", name(i)))
        } else {
            Ok(())
        };
        if self.chance(self.p.slow) {
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
                    update,
                    verdict,
                },
            );
            return;
        }
        self.checked(i, update, verdict);
    }

    /// The host agreed (the update is kept durably before the engine hears it) or refused.
    pub(super) fn checked(&mut self, i: usize, update: Update, verdict: Result<(), String>) {
        let now = self.instant();
        let version = update.version;
        let n = &mut self.nodes[i];
        if verdict.is_ok() {
            n.prepared = Some(update);
        }
        let live = n.live.as_mut().expect("a live node");
        live.engine.handle(now, Input::Checked { version, verdict });
    }

    /// The host applies a batch: each update must be the journal's, in order.
    fn apply(&mut self, i: usize, batch: Vec<Update>) {
        let n = &mut self.nodes[i];
        for u in batch {
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
}
