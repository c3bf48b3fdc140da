//! The subscription engine: everything a subscription decides, with no I/O.
//!
//! [`Engine`] owns packet order ([`PacketReorder`]), chain assembly, version order
//! ([`Receiver`]), the two-phase participant, the stream and history gates, re-registration
//! timing, the error policy and the choice of repair strategy (packet repair, catch-up,
//! compacted catch-up, hash resync). The driver (`subscriber/driver.rs` in the library, the
//! seeded simulation in the tests) reads the clock, feeds what happened through
//! [`Engine::handle`], does what [`Engine::poll`] asks, and sleeps until
//! [`Engine::poll_timeout`]. Like quinn-proto's `Connection`: time is passed in, every
//! request is answered by an input, and nothing here blocks, so a repair in flight does not
//! stop packets from being taken in order.
//!
//! The driver's contract: after [`Engine::new`] and every [`Engine::handle`], call
//! [`Engine::poll`] until it returns `None`; answer every [`Output`] that names an answer
//! (a request whose I/O failed is answered with its failure input, never left unanswered).

mod policy;
#[cfg(test)]
mod tests;
mod types;

use super::assembler::{ChainAssembler, ChainDrop};
use super::receiver::Receiver;
use super::reorder::{OpenPacket, PacketReorder};
use super::sender::decode_chain_records;
use super::two_phase::{Action as TwoPhaseAction, Participant, Route};
use crate::update::Update;
use crate::wire::control::{DatabaseInfo, Push, SubscriberReport};
use crate::wire::packet::{Heartbeat, PacketKind};
use crate::wire::update::RecordKind;
use policy::Policy;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use policy::{MIN_SILENT_VERSIONS, UNICAST_POLL};
pub use types::{
    EngineConfig, EngineCounters, EngineStart, Input, Output, RepairEnd, Timer, Traffic,
};

/// Most updates in one [`Output::Apply`] batch.
pub const APPLY_BATCH: usize = 1024;
/// Most bytes of keys and values in one [`Output::Apply`] batch.
pub const APPLY_BATCH_BYTES: usize = 32 << 20;
/// Least time between attempts to resync against a changed history.
pub const HISTORY_RETRY: Duration = Duration::from_millis(500);
/// Room for chain framing above the largest update a chain may carry.
const CHAIN_OVERHEAD: usize = 64 << 10;

/// The repair in flight, if any (one at a time; packet repair runs beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    CatchUp,
    Compact { next_first: u64 },
    Resync { new_history: Option<u64> },
}

/// Whether a registration shows a history other than the replica's: another incarnation
/// (the publisher's data was replaced), or a master behind `applied`, the replica's version
/// when it asked (it lost versions the replica applied). Returns the registration's
/// incarnation if so.
pub fn history_changed(stored: u64, applied: u64, info: &DatabaseInfo) -> Option<u64> {
    let other = stored != 0 && stored != info.incarnation;
    (other || info.current_version < applied).then_some(info.incarnation)
}

/// A subscription's decisions; see the module docs.
pub struct Engine {
    config: EngineConfig,
    receiver: Receiver,
    reorder: PacketReorder,
    assembler: ChainAssembler,
    two_phase: Participant,
    policy: Policy,
    /// The stream the latest registration named: data from any other is not applied.
    stream_id: u32,
    groups: Vec<String>,
    /// The history the replica belongs to.
    incarnation: u64,
    /// A history the replica must resync against before anything else is applied.
    new_history: Option<u64>,
    last_history_try: Option<Instant>,
    busy: Option<Busy>,
    /// The stream of the packet repair in flight.
    packet_stream: Option<u32>,
    want_resync: bool,
    /// The next registration's latest version also lowers the known latest (a repair was
    /// refused: the versions announced may not exist).
    clamp_on_register: bool,
    /// Versions up to this one were committed before the subscription (re)joined the
    /// group: repairing them says nothing about whether multicast arrives.
    joined_at: u64,
    /// Versions above `joined_at` obtained by repair (for the error policy's silence
    /// check).
    fresh_repaired: u64,
    /// The replica's version when the registration in flight was asked for: the
    /// publisher's answer is at least that unless it lost versions (packets and repairs
    /// go on meanwhile, so the replica may be past the answer by the time it arrives).
    applied_at_hello: u64,
    /// The highest latest version announced (heartbeat, STATUS, registration) while the
    /// version repair in flight was out: its end's `current_version` may be older, and
    /// must not make the engine forget a gap announced meanwhile.
    announced_in_repair: u64,
    queue: VecDeque<Output>,
    counters: EngineCounters,
}

impl Engine {
    /// An engine for a subscription registered with `start.registration` at `now`.
    pub fn new(now: Instant, config: EngineConfig, start: EngineStart) -> Engine {
        let info = &start.registration;
        let new_history = history_changed(start.incarnation, start.applied, info);
        let mut receiver = Receiver::new(start.applied, config.receiver.clone());
        // Catch up at once to what the publisher had when we said hello.
        receiver.on_heartbeat(now, info.current_version);
        Engine {
            receiver,
            reorder: PacketReorder::new(config.reorder.clone()),
            assembler: ChainAssembler::new(config.limits.max_update_bytes + CHAIN_OVERHEAD),
            two_phase: Participant::new(start.participant, start.held),
            policy: {
                let mut p = Policy::new(now, &config);
                p.set_push_refused(now, info.push == Push::Refused);
                p
            },
            stream_id: info.stream_id,
            groups: info.groups.clone(),
            incarnation: if new_history.is_some() {
                start.incarnation
            } else {
                info.incarnation
            },
            new_history,
            last_history_try: None,
            busy: None,
            packet_stream: None,
            want_resync: false,
            clamp_on_register: false,
            joined_at: info.current_version,
            fresh_repaired: 0,
            applied_at_hello: start.applied,
            announced_in_repair: 0,
            queue: VecDeque::new(),
            counters: EngineCounters::default(),
            config,
        }
    }

    /// The replica's version as the engine knows it (applied batches included).
    pub fn applied(&self) -> u64 {
        self.receiver.applied()
    }

    /// The latest version the engine knows of.
    pub fn known_latest(&self) -> u64 {
        self.receiver.known_latest()
    }

    /// The stream the latest registration named.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// The access groups of the latest registration.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// The history the replica belongs to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// A changed history not yet adopted.
    pub fn new_history(&self) -> Option<u64> {
        self.new_history
    }

    /// Bytes of updates held waiting for order (a driver streaming a long catch-up applies
    /// with [`poll_apply`](Self::poll_apply) when this grows).
    pub fn buffered_bytes(&self) -> usize {
        self.receiver.buffered_bytes()
    }

    /// Whether a repair or resync is in flight.
    pub fn is_repairing(&self) -> bool {
        self.busy.is_some()
    }

    /// Whether a hash resync is in flight (it rewrites the replica and what is kept for
    /// the host: nothing else touches them meanwhile).
    pub fn is_resyncing(&self) -> bool {
        matches!(self.busy, Some(Busy::Resync { .. }))
    }

    /// Whether it is off multicast, catching up by unicast.
    pub fn is_unicast(&self) -> bool {
        self.policy.is_unicast()
    }

    /// Whether anything was asked for and not yet answered (registration or repair).
    pub fn is_idle(&self) -> bool {
        self.busy.is_none() && !self.policy.hello_in_flight() && self.queue.is_empty()
    }

    /// Versions committed since joining the group that came only by repair while
    /// nothing arrived by multicast, as of the last report (what a warning about a silent
    /// group can quote).
    pub fn unheard_versions(&self) -> u64 {
        self.policy.unheard_versions()
    }

    /// The engine's counters.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Counters of the version order.
    pub fn receiver_counters(&self) -> &super::ReceiverCounters {
        self.receiver.counters()
    }

    /// Counters of the packet order.
    pub fn reorder_counters(&self) -> &super::ReorderCounters {
        self.reorder.counters()
    }

    /// Counters of the two-phase participant.
    pub fn two_phase_counters(&self) -> &super::ParticipantCounters {
        self.two_phase.counters()
    }

    /// Takes in what happened.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Packet(p) => self.on_packet(now, p),
            Input::Traffic(t) => self.policy.on_traffic(t),
            Input::Registered(info) => self.on_registered(now, &info),
            Input::RegisterFailed { auth } => self.policy.on_register_failed(auth),
            Input::Current(v) => self.on_announced(now, v),
            Input::PacketsRepaired { packets, ok } => self.on_packets_repaired(now, packets, ok),
            Input::Repaired(u) => self.on_repaired(now, u),
            Input::RepairDone(end) => self.on_repair_done(now, end),
            Input::Resynced { version } => self.on_resynced(version),
            Input::ResyncFailed => {
                self.busy = None;
                self.counters.repair_failures += 1;
                self.receiver.on_repair_done(now, false);
            }
            Input::HistoryChanged(new) => self.new_history = Some(new),
            Input::ResyncRequested => self.want_resync = true,
            Input::Forgotten => self.two_phase.forgotten(),
            Input::Checked { version, verdict } => self.two_phase.checked(version, verdict),
            Input::VoteSent {
                version,
                round,
                prepared,
            } => self.two_phase.vote_sent(version, round, prepared),
            Input::Outcome {
                version,
                round,
                state,
            } => {
                if let Route::CatchUp(v) = self.two_phase.on_outcome(version, round, state) {
                    self.receiver.on_heartbeat(now, v);
                }
            }
        }
    }

    /// The next thing to do, if any. Call until `None` after every input.
    pub fn poll(&mut self, now: Instant) -> Option<Output> {
        if let Some(out) = self.queue.pop_front() {
            return Some(out);
        }
        if let Some(new) = self.new_history {
            // Nothing of another history is applied on top of this one.
            return self
                .adopt_history(now, new)
                .or_else(|| self.poll_hello(now));
        }
        if let Some((stream, ranges)) = self.reorder.poll_repair(now) {
            self.counters.packet_repairs_requested += 1;
            self.packet_stream = Some(stream);
            return Some(Output::FetchPackets { stream, ranges });
        }
        if let Some(batch) = self.poll_apply() {
            return Some(Output::Apply(batch));
        }
        if let Some(out) = self.poll_repair(now) {
            return Some(out);
        }
        if let Some(out) = self.poll_hello(now) {
            return Some(out);
        }
        if let Some(out) = self.poll_policy(now) {
            return Some(out);
        }
        self.poll_two_phase(now)
    }

    /// The next batch of updates ready to apply, in order (none while a resync is in
    /// flight: it replaces the replica's contents).
    pub fn poll_apply(&mut self) -> Option<Vec<Update>> {
        if matches!(self.busy, Some(Busy::Resync { .. })) {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < APPLY_BATCH && bytes < APPLY_BATCH_BYTES {
            let Some(u) = self.receiver.poll_ready() else {
                break;
            };
            bytes += u.data_bytes();
            batch.push(u);
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// When [`poll`](Self::poll) next has something to do without an input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(_, t)| t)
    }

    /// The earliest timer and when it fires.
    pub fn next_timer(&self) -> Option<(Timer, Instant)> {
        if self.new_history.is_some() {
            // Only registration and the history's resync run until it is adopted. Before
            // the first attempt there is no timer: `poll` makes it at once.
            let history = self
                .last_history_try
                .filter(|_| self.busy.is_none())
                .map(|t| t + HISTORY_RETRY);
            return [
                (Timer::Hello, self.policy.hello_due_at()),
                (Timer::History, history),
            ]
            .into_iter()
            .filter_map(|(timer, at)| at.map(|t| (timer, t)))
            .min_by_key(|&(_, t)| t);
        }
        let repairs_allowed = self.busy.is_none();
        [
            (Timer::PacketRepair, self.reorder.next_timeout()),
            (
                Timer::Repair,
                self.receiver.next_timeout().filter(|_| repairs_allowed),
            ),
            (Timer::TwoPhase, self.two_phase.next_timeout()),
            (Timer::Hello, self.policy.hello_due_at()),
            (Timer::Report, Some(self.policy.report_due_at())),
            (Timer::StatusPoll, self.policy.status_due_at()),
        ]
        .into_iter()
        .filter_map(|(timer, at)| at.map(|t| (timer, t)))
        .min_by_key(|&(_, t)| t)
    }

    fn adopt_history(&mut self, now: Instant, new: u64) -> Option<Output> {
        if self.busy.is_some()
            || self
                .last_history_try
                .is_some_and(|t| now < t + HISTORY_RETRY)
        {
            return None;
        }
        self.last_history_try = Some(now);
        self.reorder = PacketReorder::new(self.config.reorder.clone());
        self.assembler.reset();
        self.busy = Some(Busy::Resync {
            new_history: Some(new),
        });
        Some(Output::Resync {
            new_history: Some(new),
        })
    }

    /// A version repair, by the strategy the gap calls for.
    fn poll_repair(&mut self, now: Instant) -> Option<Output> {
        if self.busy.is_some() {
            return None;
        }
        if self.want_resync {
            self.want_resync = false;
            self.busy = Some(Busy::Resync { new_history: None });
            return Some(Output::Resync { new_history: None });
        }
        let ranges = self.receiver.poll_repair(now)?;
        self.counters.repairs_requested += 1;
        // Far behind: the first range comes compacted (latest value per changed key).
        let first = ranges[0];
        let compact = self.config.compact_after.is_some_and(|after| {
            first.1 - first.0 + 1 > after && first.0 == self.receiver.applied() + 1
        });
        if compact {
            self.announced_in_repair = 0;
            self.busy = Some(Busy::Compact {
                next_first: first.0,
            });
            return Some(Output::Compact {
                from: first.0,
                through: first.1,
            });
        }
        self.announced_in_repair = 0;
        self.busy = Some(Busy::CatchUp);
        Some(Output::CatchUp(ranges))
    }

    fn poll_hello(&mut self, now: Instant) -> Option<Output> {
        self.policy.poll_hello(now).then(|| {
            self.applied_at_hello = self.receiver.applied();
            self.counters.resubscriptions += 1;
            Output::Hello
        })
    }

    /// Status polls while off multicast; every report interval, the error policy and the
    /// report.
    fn poll_policy(&mut self, now: Instant) -> Option<Output> {
        if self.policy.poll_status(now) {
            return Some(Output::Status);
        }
        let lost = self.counters.packets_repaired + self.reorder.counters().skipped;
        let tick = self.policy.poll_report(
            now,
            lost,
            self.fresh_repaired,
            self.two_phase.is_participant(),
        )?;
        let c = &mut self.counters;
        c.loss_ppm = tick.loss_ppm();
        c.reports += 1;
        if tick.silent {
            c.multicast_silent_intervals += 1;
        }
        if let Some(leave) = tick.membership {
            if leave {
                c.unicast_backoffs += 1;
            } else {
                c.rejoins += 1;
                // Versions from here on are multicast to us again.
                self.joined_at = self.joined_at.max(self.receiver.known_latest());
            }
            self.queue.push_back(Output::Membership {
                leave,
                loss: tick.loss,
            });
        }
        if tick.hello {
            // Re-register, reporting the error rate with it.
            c.resubscriptions += 1;
            self.applied_at_hello = self.receiver.applied();
            self.queue.push_back(Output::Hello);
        }
        let report = SubscriberReport {
            loss_ppm: tick.loss_ppm() as u32,
            packets_received: self.policy.traffic().received,
            packets_lost: lost,
            applied_version: self.receiver.applied(),
            latency_p50_us: 0,
            latency_p99_us: 0,
            repairs: c.repairs_requested + c.packet_repairs_requested,
            resubscriptions: c.resubscriptions,
            unicast_only: self.policy.is_unicast(),
        };
        self.queue.push_back(Output::Report(report));
        self.queue.pop_front()
    }

    fn poll_two_phase(&mut self, now: Instant) -> Option<Output> {
        loop {
            let action = self.two_phase.poll(now, self.receiver.applied())?;
            return Some(match action {
                TwoPhaseAction::CatchUp(v) => {
                    self.receiver.on_heartbeat(now, v);
                    continue;
                }
                TwoPhaseAction::Forget => Output::Forget,
                TwoPhaseAction::Ack { version, round } => Output::Ack { version, round },
                TwoPhaseAction::Check(version) => match self.two_phase.pending() {
                    Some(p) => Output::Check {
                        version,
                        update: p.clone(),
                    },
                    None => continue,
                },
                TwoPhaseAction::Vote {
                    version,
                    round,
                    prepared,
                    reason,
                } => Output::Vote {
                    version,
                    round,
                    prepared,
                    reason,
                },
            });
        }
    }

    /// The publisher's latest version, as a heartbeat, a STATUS answer or a registration
    /// announced it.
    fn on_announced(&mut self, now: Instant, version: u64) {
        self.announced_in_repair = self.announced_in_repair.max(version);
        self.receiver.on_heartbeat(now, version);
    }

    fn on_registered(&mut self, now: Instant, info: &DatabaseInfo) {
        self.policy.on_registered();
        if info.push != Push::NotAsked {
            self.policy
                .set_push_refused(now, info.push == Push::Refused);
        }
        self.groups = info.groups.clone();
        self.stream_id = info.stream_id;
        if let Some(new) = history_changed(self.incarnation, self.applied_at_hello, info) {
            self.new_history = Some(new);
        }
        self.on_announced(now, info.current_version);
        if std::mem::take(&mut self.clamp_on_register) {
            self.receiver.clamp_latest(info.current_version);
        }
    }

    /// Takes an authenticated packet and releases, in sequence order, every packet that is
    /// now ready.
    fn on_packet(&mut self, now: Instant, pkt: OpenPacket) {
        if pkt.header.stream_id != self.stream_id {
            // A stream the registration did not name (the publisher restarted, maybe on
            // another history): register again, which names the current stream and shows
            // the history, before anything from it is applied. Repair fills the gap.
            self.counters.dropped_stream += 1;
            self.policy.on_foreign_stream();
            return;
        }
        self.policy.on_heard(now);
        if self.reorder.on_packet(now, pkt) {
            self.assembler.reset();
        }
        self.release_ordered(now);
    }

    fn release_ordered(&mut self, now: Instant) {
        while let Some(p) = self.reorder.poll_release() {
            self.on_ordered(now, p);
        }
    }

    fn on_ordered(&mut self, now: Instant, pkt: OpenPacket) {
        let c = &mut self.counters;
        match pkt.header.kind {
            PacketKind::Heartbeat => {
                // An authentic heartbeat always parses; one that does not is dropped.
                if let Ok(hb) = Heartbeat::parse(&pkt.payload) {
                    c.heartbeats_received += 1;
                    self.on_announced(now, hb.latest_version);
                }
            }
            PacketKind::Data => {
                let out = self.assembler.on_packet(&pkt.header, &pkt.payload);
                match out.dropped {
                    Some(ChainDrop::Orphan) => c.orphan_packets += 1,
                    Some(_) => c.chains_dropped += 1,
                    None => {}
                }
                let Some(chain) = out.chain else { return };
                let max = self.config.limits.max_update_bytes + CHAIN_OVERHEAD;
                match decode_chain_records(&chain, &self.config.limits, max) {
                    Ok(records) => {
                        c.chains_received += 1;
                        for (kind, u) in records {
                            self.on_record(now, kind, u);
                        }
                    }
                    Err(e) => {
                        log::warn!("undecodable chain: {e}");
                        c.chains_invalid += 1;
                    }
                }
            }
        }
    }

    /// Routes one record of a chain: committed updates to the version order, two-phase
    /// records to the prepared-update state.
    fn on_record(&mut self, now: Instant, kind: RecordKind, u: Update) {
        match self.two_phase.on_record(kind, u, self.receiver.applied()) {
            Route::Apply(u) => {
                self.receiver.on_update(now, u);
            }
            Route::CatchUp(v) => self.receiver.on_heartbeat(now, v),
            Route::Held => {}
        }
    }

    fn on_packets_repaired(&mut self, now: Instant, packets: Vec<OpenPacket>, ok: bool) {
        let stream = self.packet_stream.take();
        self.counters.packets_repaired += packets.len() as u64;
        if !ok {
            self.counters.repair_failures += 1;
        }
        for p in packets {
            if Some(p.header.stream_id) == stream {
                self.reorder.on_packet(now, p);
            }
        }
        self.reorder.on_repair_done(now);
        self.release_ordered(now);
    }

    fn on_repaired(&mut self, now: Instant, u: Update) {
        match &mut self.busy {
            Some(Busy::Compact { next_first }) => {
                let first = *next_first;
                *next_first = u.version + 1;
                // The compacted update stands for versions first..=u.version.
                let below = first.saturating_sub(1).max(self.joined_at);
                self.fresh_repaired += u.version.saturating_sub(below);
                self.receiver.on_compacted(now, first, u);
            }
            Some(Busy::CatchUp) => {
                if u.version > self.joined_at {
                    self.fresh_repaired += 1;
                }
                self.receiver.on_update(now, u);
            }
            // Not asked for (a late answer): ignored.
            _ => {}
        }
    }

    fn on_repair_done(&mut self, now: Instant, end: RepairEnd) {
        let busy = self.busy.take();
        let c = &mut self.counters;
        match end {
            RepairEnd::Done { current_version } => {
                match busy {
                    Some(Busy::Compact { .. }) => c.catchups_compacted += 1,
                    _ => c.catchups_journal += 1,
                }
                self.receiver
                    .clamp_latest(current_version.max(self.announced_in_repair));
                self.receiver.on_repair_done(now, true);
            }
            // The journal no longer reaches back this far: resync by hashes (the version
            // repair stays in flight until the resync ends).
            RepairEnd::Trimmed => self.want_resync = true,
            RepairEnd::Refused => {
                // The versions may not exist (announced by a heartbeat from a publisher
                // that since lost them): learn the real latest version.
                c.repair_failures += 1;
                self.clamp_on_register = true;
                self.policy.hello_soon();
                self.receiver.on_repair_done(now, false);
            }
            RepairEnd::Failed => {
                c.repair_failures += 1;
                self.receiver.on_repair_done(now, false);
            }
        }
    }

    fn on_resynced(&mut self, version: u64) {
        if let Some(Busy::Resync {
            new_history: Some(new),
        }) = self.busy
        {
            self.incarnation = new;
            if self.new_history == Some(new) {
                self.new_history = None;
            }
            self.counters.history_changes += 1;
        }
        self.busy = None;
        self.joined_at = self.joined_at.max(version);
        self.receiver = Receiver::new(version, self.config.receiver.clone());
    }
}
