//! The process thread: a thin driver of the sans-IO [`Engine`]. Each turn it waits for
//! packets and control answers until the engine's next timer, reads the clock, feeds what
//! happened, and does what the engine asks: the store and callbacks itself, requests to the
//! publisher through the control worker (`control.rs`), which answers without blocking
//! it. Applying and delivering live in `host.rs`, repairs in `repair.rs`.

use super::control::{Control, Event, Job};
use super::{keyring_from, SubShared, UpdateCallback, VoteCallback};
use crate::crypto::Keyring;
use crate::net::receive::Inbound;
use crate::net::repair_client::RepairClient;
use crate::proto::subscription::{Engine, Input, Output, Traffic, APPLY_BATCH_BYTES};
use crate::proto::Delivery;
use crate::stats::inc;
use crate::sync::{Locked, RwLocked};
use crate::wire::control::{DatabaseInfo, Push};
use crate::wire::update::Limits;
use crate::{Error, Result, Update};
use crossbeam_channel as chan;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Longest the process thread sleeps before re-checking its stop flag and the receive
/// side's counters.
pub(super) const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Most packets taken from the channel in one turn.
const PACKETS_PER_TURN: usize = 4096;
/// Most control answers taken in one turn.
const EVENTS_PER_TURN: usize = 64;

/// The process thread's state: the engine and what its outputs are done with.
pub(super) struct Driver {
    pub engine: Engine,
    pub shared: Arc<SubShared>,
    /// Set to leave the multicast group (the receive thread acts on it).
    pub leave: Arc<AtomicBool>,
    /// The host's vote on prepared updates (participants only).
    pub vote: Option<VoteCallback>,
    pub source: Arc<Mutex<Option<SocketAddr>>>,
    pub keyring: Arc<RwLock<Keyring>>,
    /// Set by the receive thread when a packet of an unknown key epoch arrives.
    pub rekey: Arc<AtomicBool>,
    pub callback: Option<UpdateCallback>,
    /// What the host has been called back for and what it is still owed.
    pub delivery: Delivery,
    /// The delivered cursor as last written to the store.
    pub delivered_durable: u64,
    /// An owed reset waits until the replica reached this version (after a rebuild: the
    /// host's own version, or the master's at registration if lower), so a host is not
    /// sent back to an empty replica that is still catching up.
    pub reset_floor: u64,
    pub last_flush: Instant,
    pub limits: Limits,
    /// The interface the group is joined on (named in the silent-group warning).
    pub interface: Ipv4Addr,
    /// Whether the silent-group warning was logged (it is, once).
    pub warned_silent: bool,
    /// Where the push socket is bound (unicast-only subscriptions).
    pub push: Option<SocketAddr>,
    /// A part of the host's journal backlog is asked for and not yet answered.
    pub journal_in_flight: bool,
    /// A part that failed is asked for again from then on.
    pub journal_retry_at: Instant,
}

/// Counts and logs a registration whose unicast push the publisher refused.
pub(super) fn note_push(name: &str, info: &DatabaseInfo, c: &crate::stats::SubscriptionCounters) {
    if info.push == Push::Refused {
        inc(&c.unicast_refused);
        log::warn!(
            "{name}: the publisher refused unicast push (it has as many unicast subscribers \
             as it allows); catching up by polling"
        );
    }
}

pub(super) fn run(mut d: Driver, client: RepairClient, rx: chan::Receiver<Inbound>) {
    let control = match Control::spawn(client, d.shared.clone(), d.keyring.clone(), d.limits) {
        Ok(c) => c,
        Err(e) => return d.fail(&e),
    };
    let stop = d.shared.stop.clone();
    let mut ok = d.drain(&control).is_ok();
    while ok && !stop.is_stopped() {
        let now = Instant::now();
        let deadline = d
            .engine
            .poll_timeout()
            .map_or(now + IDLE_WAIT, |t| t.min(now + IDLE_WAIT));
        let (first_packet, first_event) = match wait(&rx, &control.events, deadline) {
            Some(first) => first,
            None => break,
        };
        let now = Instant::now();
        for pkt in first_packet
            .into_iter()
            .chain(rx.try_iter().take(PACKETS_PER_TURN))
        {
            d.engine.handle(now, Input::Packet(pkt));
        }
        for event in first_event
            .into_iter()
            .chain(control.events.try_iter().take(EVENTS_PER_TURN))
        {
            ok = ok && d.on_event(event).is_ok();
        }
        d.engine.handle(now, Input::Traffic(d.traffic()));
        if d.shared.force_resync.swap(false, Ordering::SeqCst) {
            d.engine.handle(now, Input::ResyncRequested);
        }
        // Nothing is owed to the host from another history, and nothing while a resync
        // rewrites what is kept for it.
        let owed = d.engine.new_history().is_none() && !d.engine.is_resyncing();
        ok = ok && d.drain(&control).is_ok() && (!owed || d.deliver_backlog(&control).is_ok());
        d.sync_counters();
        if !d.engine.is_resyncing() {
            d.flush_delivered(false);
        }
    }
    d.sync_counters();
    // What the callbacks returned is recorded; the rest is replayed at the next subscribe.
    d.flush_delivered(true);
    let failed = d.shared.failure.locked().is_some();
    control.finish(!failed);
}

/// Waits until a packet or a control answer arrives, or `deadline`. `None` when either
/// side is gone (the subscription is ending).
fn wait(
    packets: &chan::Receiver<Inbound>,
    events: &chan::Receiver<Event>,
    deadline: Instant,
) -> Option<(Option<Inbound>, Option<Event>)> {
    let mut sel = chan::Select::new();
    let on_packet = sel.recv(packets);
    sel.recv(events);
    match sel.select_deadline(deadline) {
        Err(_) => Some((None, None)),
        Ok(op) if op.index() == on_packet => op.recv(packets).ok().map(|p| (Some(p), None)),
        Ok(op) => op.recv(events).ok().map(|e| (None, Some(e))),
    }
}

impl Driver {
    /// Does what the engine asks until it has nothing more. Only a storage failure (which
    /// stops the subscription) is an error.
    pub fn drain(&mut self, control: &Control) -> Result<()> {
        while let Some(out) = self.engine.poll(Instant::now()) {
            self.execute(control, out)?;
            // Waiters and stats readers see what the engine counted at once.
            self.sync_counters();
        }
        self.warn_if_silent();
        Ok(())
    }

    fn execute(&mut self, control: &Control, out: Output) -> Result<()> {
        let name = &self.shared.name;
        match out {
            Output::Apply(batch) => self.apply(batch)?,
            Output::Hello => control.send(Job::Hello),
            Output::Report(mut report) => {
                report.latency_p50_us = self.shared.latency.quantile(0.5);
                report.latency_p99_us = self.shared.latency.quantile(0.99);
                control.send(Job::Report(report));
            }
            Output::Status => {
                inc(&self.shared.counters.status_polls);
                control.send(Job::Status);
            }
            Output::Membership { leave, loss } => {
                self.leave.store(leave, Ordering::SeqCst);
                if leave {
                    log::warn!(
                        "{name}: losing {:.0} % of packets; catching up by unicast for a while",
                        loss * 100.0
                    );
                } else {
                    log::info!("{name}: rejoining multicast");
                }
            }
            Output::FetchPackets { stream, ranges } => {
                control.send(Job::Packets { stream, ranges })
            }
            Output::CatchUp(ranges) => control.send(Job::CatchUp {
                ranges,
                compacted: None,
            }),
            Output::Compact { from, through } => control.send(Job::CatchUp {
                ranges: vec![(from, through)],
                compacted: Some((from, through)),
            }),
            Output::Resync { new_history } => self.request_resync(control, new_history),
            Output::Forget => {
                self.shared
                    .store
                    .clear_prepared(name)
                    .inspect_err(|e| self.fail_two_phase(e))?;
                self.engine.handle(Instant::now(), Input::Forgotten);
            }
            Output::Ack { version, round } => control.send(Job::Ack { version, round }),
            Output::Check { version, update } => self.check(version, update)?,
            Output::Vote {
                version,
                round,
                prepared,
                reason,
            } => control.send(Job::Vote {
                version,
                round,
                prepared,
                reason,
            }),
        }
        Ok(())
    }

    /// Takes in an answer of the control worker. Only a storage failure is an error.
    fn on_event(&mut self, event: Event) -> Result<()> {
        let now = Instant::now();
        match event {
            Event::Engine(input) => self.engine.handle(now, input),
            Event::Repaired(batch) => {
                for u in batch {
                    self.engine.handle(now, Input::Repaired(u));
                }
                // A long catch-up is applied as it arrives, not held whole in memory.
                if self.engine.buffered_bytes() > APPLY_BATCH_BYTES / 2 {
                    while let Some(batch) = self.engine.poll_apply() {
                        self.apply(batch)?;
                    }
                }
            }
            Event::Registered(result) => self.registered(result),
            Event::Reported => inc(&self.shared.counters.reports_sent),
            Event::Journal { from, end, part } => self.journal_part(from, end, part),
            Event::Resynced {
                new_history,
                host,
                result,
            } => self.resynced(new_history, host, result)?,
            Event::HistoryChanged(new) => self.engine.handle(now, Input::HistoryChanged(new)),
        }
        Ok(())
    }

    /// The receive side's counts, for the error policy and re-registration.
    fn traffic(&self) -> Traffic {
        let c = &self.shared.counters;
        let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        Traffic {
            received: load(&c.packets_received),
            injected_drops: load(&c.dropped_injected),
            unknown_epoch_drops: load(&c.dropped_epoch),
            foreign_source: load(&c.dropped_source),
            unknown_epoch: self.rekey.load(Ordering::Relaxed),
        }
    }

    /// A registration's answer: the current source, keys, groups and version.
    fn registered(&mut self, result: Result<DatabaseInfo>) {
        let c = &self.shared.counters;
        match result {
            Ok(info) => {
                note_push(&self.shared.name, &info, c);
                self.adopt_registration(&info);
                self.engine
                    .handle(Instant::now(), Input::Registered(Box::new(info)));
            }
            Err(e) => {
                log::warn!("{}: registering again failed: {e}", self.shared.name);
                let auth = e.kind() == crate::ErrorKind::Auth;
                if auth {
                    inc(&c.auth_failures);
                    *self.shared.auth_error.locked() = Some(e.to_string());
                    self.shared.advanced.notify_all();
                }
                self.engine
                    .handle(Instant::now(), Input::RegisterFailed { auth });
            }
        }
    }

    /// What a registration changes outside the engine: keys, source, the auth error.
    fn adopt_registration(&mut self, info: &DatabaseInfo) {
        *self.shared.auth_error.locked() = None;
        let c = &self.shared.counters;
        {
            let mut k = self.keyring.write_locked();
            let before = k.newest_epoch();
            *k = keyring_from(info);
            if k.newest_epoch() != before {
                inc(&c.key_changes);
            }
            let epoch = u64::from(k.newest_epoch().unwrap_or(0));
            c.key_epoch.store(epoch, Ordering::Relaxed);
        }
        self.rekey.store(false, Ordering::Relaxed);
        let mut src = self.source.locked();
        if src.is_some_and(|s| s != info.source) {
            log::info!(
                "{}: publisher now sends from {}",
                self.shared.name,
                info.source
            );
            *src = Some(info.source);
        }
    }

    /// Asks the host's vote on a prepared update and, if it agrees, keeps the update
    /// durably before the engine votes PREPARED. What this replica would apply (access
    /// groups enforced) is what is kept, and what the host may see of it is what it votes
    /// on: neither holds records it may not read.
    fn check(&mut self, version: u64, update: Update) -> Result<()> {
        let mut applied_form = [update];
        let shown = self.filter(&mut applied_form);
        let verdict = match self.vote.as_mut() {
            // Closed (perhaps from inside a callback): the host is asked nothing more.
            Some(_) if self.shared.stop.is_stopped() => {
                Err("the participant's subscription is closing".into())
            }
            Some(f) => {
                let run = std::panic::AssertUnwindSafe(|| f(&shown[0]));
                std::panic::catch_unwind(run)
                    .unwrap_or_else(|_| Err("vote callback panicked".into()))
            }
            None => Ok(()),
        };
        if verdict.is_ok() {
            self.shared
                .store
                .put_prepared(&self.shared.name, &applied_form[0])
                .inspect_err(|e| self.fail_two_phase(e))?;
        }
        let input = Input::Checked { version, verdict };
        self.engine.handle(Instant::now(), input);
        Ok(())
    }

    fn fail_two_phase(&self, e: &Error) {
        log::error!("{}: two-phase update: {e}", self.shared.name);
        self.fail(e);
    }

    /// Records a failure that stops the subscription and wakes waiters to report it.
    pub fn fail(&self, e: &Error) {
        *self.shared.failure.locked() = Some(e.to_string());
        self.shared.stop.stop();
        self.shared.advanced.notify_all();
    }

    /// Warns, once, when the error policy found the group silent: nothing arrives by
    /// multicast while the publisher's versions come only by repair.
    fn warn_if_silent(&mut self) {
        if self.warned_silent || self.engine.counters().multicast_silent_intervals == 0 {
            return;
        }
        self.warned_silent = true;
        if let Some(push) = self.push {
            log::warn!(
                "{}: nothing pushed to {push} while the publisher committed {} versions (all \
                 obtained by unicast repair): check that UDP from the publisher reaches this \
                 address (firewall, NAT); counted as total loss (multicast_silent_intervals)",
                self.shared.name,
                self.engine.unheard_versions()
            );
            return;
        }
        log::warn!(
            "{}: no multicast received on interface {} while the publisher committed {} \
             versions (all obtained by unicast repair): check the subscriber's interface \
             (--interface) and multicast routing; counted as total loss \
             (multicast_silent_intervals)",
            self.shared.name,
            self.interface,
            self.engine.unheard_versions()
        );
    }

    /// Copies the engine's counters to the subscription's.
    pub fn sync_counters(&self) {
        let c = &self.shared.counters;
        let set = |x: &std::sync::atomic::AtomicU64, v: u64| x.store(v, Ordering::Relaxed);
        let e = self.engine.counters();
        set(&c.dropped_stream, e.dropped_stream);
        set(&c.heartbeats_received, e.heartbeats_received);
        set(&c.orphan_packets, e.orphan_packets);
        set(&c.chains_dropped, e.chains_dropped);
        set(&c.chains_received, e.chains_received);
        set(&c.chains_invalid, e.chains_invalid);
        set(&c.resubscriptions, e.resubscriptions);
        set(&c.rejoins, e.rejoins);
        set(&c.multicast_silent_intervals, e.multicast_silent_intervals);
        set(&c.unicast_backoffs, e.unicast_backoffs);
        set(&c.loss_ppm, e.loss_ppm);
        set(&c.packets_repaired, e.packets_repaired);
        set(&c.packet_repairs_requested, e.packet_repairs_requested);
        set(&c.repairs_requested, e.repairs_requested);
        set(&c.catchups_journal, e.catchups_journal);
        set(&c.catchups_compacted, e.catchups_compacted);
        set(&c.repair_failures, e.repair_failures);
        set(&c.history_changes, e.history_changes);
        let r = self.engine.receiver_counters();
        set(&c.duplicates, r.duplicates);
        set(&c.gaps_detected, r.gaps);
        set(&c.reorder_evicted, r.evicted);
        let o = self.engine.reorder_counters();
        set(&c.packets_skipped, o.skipped);
        set(&c.packets_reordered, o.out_of_order);
        let t = self.engine.two_phase_counters();
        set(&c.prepares_received, t.prepares_received);
        set(&c.prepares_aborted, t.prepares_aborted);
        set(&c.votes_prepared, t.votes_prepared);
        set(&c.votes_refused, t.votes_refused);
    }
}
