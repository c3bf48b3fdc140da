//! One thread per published database: takes committed updates from the intake, drives the
//! sans-IO [`Sender`], seals each packet and sends it to the database's group, and the
//! same datagram to each unicast push target of the database (see [`super::push`]).

use super::batch::BatchSender;
use super::push::PushTargets;
use super::wall_clock_us;
use crate::crypto::{EpochKeys, Keyring};
use crate::proto::adapt::scaled_rates;
use crate::proto::two_phase::Decision;
use crate::proto::{DecisionRepeat, RetransmitBuffer, Sender, SenderConfig};
use crate::stats::{add, inc, PublisherCounters};
use crate::sync::Locked;
use crate::wire::packet::PacketKind;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A committed update on its way to the multicaster.
pub struct Outgoing {
    /// Its version.
    pub version: u64,
    /// Its wire encoding (shared with the journal write).
    pub encoded: Arc<Vec<u8>>,
}

/// What the multicaster is told to do, in order.
pub enum McastCmd {
    /// Send a committed update.
    Update(Outgoing),
    /// Seal from now on under this epoch and key (the old key stays for packets already
    /// built). Epochs only go forward: an older one is ignored. `done` is told once the
    /// switch happened.
    Rekey {
        /// The new epoch.
        epoch: u32,
        /// Its key.
        key: crate::crypto::Key,
        /// Told when packets are sealed under `epoch` from now on.
        done: crossbeam_channel::Sender<()>,
    },
    /// Turn multicast of updates on or off (heartbeats continue).
    Multicast(bool),
    /// Quiesce the group (`true`: most subscribers lose too much) or end it. While
    /// quiesced, the group gets only heartbeats; unicast push targets, if any, still get
    /// everything (without targets it is `Multicast(false)`).
    Quiesce(bool),
    /// Send a two-phase PREPARE record (no new committed version yet).
    Control(Arc<Vec<u8>>),
    /// Send a two-phase decision, and repeat it (backing off) until every participant
    /// acknowledged it or it has been repeated for [`DECISION_REPEAT_FOR`].
    Decision {
        /// The decided version.
        version: u64,
        /// COMMIT (the version is now committed) or ABORT.
        decision: Decision,
        /// The encoded decision record.
        encoded: Arc<Vec<u8>>,
    },
    /// Every participant acknowledged the decision on this version.
    DecisionDone(u64),
    /// The journal now starts at this version (announced in heartbeats).
    Oldest(u64),
    /// New bundle size and rate from the loss subscribers report.
    Tune {
        /// Bytes of encoded updates per chain at most.
        bundle_bytes: usize,
        /// The pacing limits in force, per mille of the configured ones
        /// ([`scaled_rates`]).
        rate_permille: u32,
    },
}

/// How long a two-phase decision is repeated at most (participants that have not
/// acknowledged by then are declared failed; they learn the outcome by asking).
pub const DECISION_REPEAT_FOR: Duration = Duration::from_secs(30);

/// How long a closing multicaster goes on pacing out what is queued. What is left then is
/// not multicast: it is in the journal, and subscribers fetch it from there.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// Longest stretch of sending before the command channel is drained again, so commits
/// reach the (capped) sender promptly even while sends are retried on a full buffer.
const SEND_SLICE: Duration = Duration::from_millis(2);

/// A decision being repeated.
struct Repeat {
    schedule: DecisionRepeat,
    encoded: Arc<Vec<u8>>,
}

/// What a multicaster needs.
pub struct MulticasterParts {
    /// Database name (thread name and logs).
    pub database: String,
    /// Socket bound to the source address subscribers expect.
    pub socket: UdpSocket,
    /// Group and port.
    pub group: SocketAddr,
    /// Keys, and the epoch to seal under.
    pub keyring: Keyring,
    /// Epoch to seal under.
    pub key_epoch: u32,
    /// The database's keys, shared with the publisher: told the first sequence number of
    /// each new epoch, and when the previous epoch's last packet was sealed.
    pub epochs: Arc<Mutex<EpochKeys>>,
    /// Fresh stream id.
    pub stream_id: u32,
    /// Latest version already sent or journaled at start.
    pub latest: u64,
    /// Oldest version the journal serves.
    pub oldest: u64,
    /// Sender tuning.
    pub config: SenderConfig,
    /// Publisher counters.
    pub counters: Arc<PublisherCounters>,
    /// Where sent datagrams are kept for packet repair.
    pub retransmit: Arc<Mutex<RetransmitBuffer>>,
    /// Unicast-only subscribers every datagram is also sent to.
    pub push: Arc<PushTargets>,
}

/// Where a send slice's datagrams go: the group (while quiesced with push targets, only
/// heartbeats) and every push target, each in as few calls as GSO allows.
struct Outputs {
    group: BatchSender,
    push: BatchSender,
    targets: Arc<Vec<SocketAddr>>,
    /// Updates are on (schedule, first subscription).
    stream_on: bool,
    quiesced: bool,
}

impl Outputs {
    fn new(group: SocketAddr) -> Outputs {
        Outputs {
            group: BatchSender::new(group),
            push: BatchSender::new(group),
            targets: Arc::new(Vec::new()),
            stream_on: true,
            quiesced: false,
        }
    }

    /// Takes the current targets and tells the sender whether updates go out at all: on
    /// while the schedule says so and someone receives them (the group, or, while it is
    /// quiesced, a push target).
    fn refresh(&mut self, p: &MulticasterParts, sender: &mut Sender) {
        self.targets = p.push.snapshot();
        let on = self.stream_on && (!self.quiesced || !self.targets.is_empty());
        if sender.multicast() != on {
            sender.set_multicast(on);
        }
    }

    /// Queues a sealed datagram; flushes what is full.
    fn queue(&mut self, p: &MulticasterParts, datagram: Arc<Vec<u8>>, heartbeat: bool) {
        if !self.targets.is_empty() && self.push.push(datagram.clone()) {
            self.flush_push(p);
        }
        // Quiesced without targets, the sender builds no updates: what it sends (heartbeats,
        // two-phase records) goes to the group as before quiescing met push.
        let to_group = !self.quiesced || heartbeat || self.targets.is_empty();
        if to_group && self.group.push(datagram) {
            flush(p, &mut self.group);
        }
    }

    fn flush(&mut self, p: &MulticasterParts) {
        flush(p, &mut self.group);
        self.flush_push(p);
    }

    /// Sends the push queue to every target.
    fn flush_push(&mut self, p: &MulticasterParts) {
        if self.push.is_empty() {
            return;
        }
        for t in self.targets.iter() {
            let f = self.push.send_to(&p.socket, *t, &p.database);
            add(&p.counters.unicast_datagrams, f.packets);
            add(&p.counters.unicast_bytes, f.bytes);
            add(&p.counters.send_errors, f.errors);
            add(&p.counters.send_calls, f.calls);
        }
        self.push.clear();
    }
}

/// Starts the thread. It runs until every sender of `rx` is dropped, then sends what is
/// still queued for at most [`CLOSE_DRAIN`] and exits.
pub fn spawn(parts: MulticasterParts, rx: Receiver<McastCmd>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("mcsync-mcast-{}", parts.database))
        .spawn(move || run(parts, rx))
}

// Long (≈ 145 lines): one event loop (decision repeats, a send slice, key drain, close,
// commands) whose eight locals every step shares.
fn run(mut p: MulticasterParts, rx: Receiver<McastCmd>) {
    let mut sender = Sender::new(
        Instant::now(),
        p.stream_id,
        p.key_epoch,
        p.latest,
        p.config.clone(),
    );
    sender.set_oldest_version(p.oldest);
    let mut out = Outputs::new(p.group);
    // Set once every sender of `rx` is gone: when to stop sending.
    let mut close_by: Option<Instant> = None;
    let mut last_counters = sender.counters().clone();
    let mut last_backlog = 0;
    let mut repeat: Option<Repeat> = None;
    let mut epoch = p.key_epoch;
    let mut drained = true;
    loop {
        if let Some(r) = repeat.as_mut() {
            match r.schedule.poll(Instant::now()) {
                None => repeat = None,
                Some(true) => sender.push_control(r.encoded.clone()),
                Some(false) => {}
            }
        }
        send_slice(&p, &mut sender, &mut out);
        // Keys of epochs no built packet uses any more are dropped; the publisher is told
        // once the previous epoch's last packet went out (its grace starts then).
        let oldest = sender.oldest_epoch_in_use();
        p.keyring.retain_from(oldest);
        if !drained && oldest == epoch {
            drained = true;
            p.epochs.locked().drained(epoch, Instant::now());
        }
        account(&p.counters, &mut last_counters, sender.counters());
        set_backlog(
            &p.counters,
            &mut last_backlog,
            sender.backlog_bytes() as u64,
        );
        if let Some(by) = close_by {
            if !sender.is_busy() || Instant::now() >= by {
                if sender.is_busy() {
                    log::info!(
                        "{}: closing with {} bytes not multicast after {CLOSE_DRAIN:?}; \
                         subscribers fetch them from the journal",
                        p.database,
                        sender.backlog_bytes()
                    );
                }
                set_backlog(&p.counters, &mut last_backlog, 0);
                return;
            }
        }
        let mut deadline = sender.next_timeout(Instant::now());
        if let Some(r) = &repeat {
            deadline = deadline.min(r.schedule.next_timeout());
        }
        if let Some(by) = close_by {
            std::thread::sleep(deadline.min(by).saturating_duration_since(Instant::now()));
            continue;
        }
        match rx.recv_deadline(deadline) {
            Ok(cmd) => {
                for cmd in std::iter::once(cmd).chain(rx.try_iter()) {
                    match cmd {
                        McastCmd::Update(o) => sender.push(o.version, o.encoded),
                        McastCmd::Rekey {
                            epoch: new,
                            key,
                            done,
                        } => {
                            if new > epoch {
                                p.keyring.insert(new, &key);
                                let first_seq = sender.rekey(Instant::now(), new);
                                p.epochs.locked().switched(new, first_seq);
                                (epoch, drained) = (new, false);
                            } else {
                                log::warn!(
                                    "{}: ignored a rotation back to key epoch {new} (sealing \
                                     under {epoch})",
                                    p.database
                                );
                            }
                            let _ = done.send(());
                        }
                        McastCmd::Multicast(on) => out.stream_on = on,
                        McastCmd::Quiesce(q) => out.quiesced = q,
                        McastCmd::Control(encoded) => {
                            // A new round supersedes the previous decision's repeats.
                            repeat = None;
                            sender.push_control(encoded);
                        }
                        McastCmd::Decision {
                            version,
                            decision,
                            encoded,
                        } => {
                            sender.push_control(encoded.clone());
                            if decision.commits() {
                                sender.advance_to(version);
                            }
                            repeat = Some(Repeat {
                                schedule: DecisionRepeat::new(
                                    Instant::now(),
                                    version,
                                    DECISION_REPEAT_FOR,
                                ),
                                encoded,
                            });
                        }
                        McastCmd::Tune {
                            bundle_bytes,
                            rate_permille,
                        } => {
                            sender.set_bundle_bytes(bundle_bytes);
                            let (packets, bytes) = scaled_rates(
                                p.config.packets_per_sec,
                                p.config.bytes_per_sec,
                                rate_permille,
                            );
                            sender.set_rates(Instant::now(), packets, bytes);
                        }
                        McastCmd::Oldest(v) => sender.set_oldest_version(v),
                        McastCmd::DecisionDone(v) => {
                            if repeat.as_ref().is_some_and(|r| r.schedule.version() == v) {
                                repeat = None;
                            }
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => close_by = Some(Instant::now() + CLOSE_DRAIN),
        }
    }
}

/// Seals and sends what pacing allows for [`SEND_SLICE`].
fn send_slice(p: &MulticasterParts, sender: &mut Sender, out: &mut Outputs) {
    out.refresh(p, sender);
    let now = Instant::now();
    while now.elapsed() < SEND_SLICE {
        let Some(pkt) = sender.poll_transmit(now, wall_clock_us()) else {
            break;
        };
        let mut datagram = Vec::with_capacity(p.config.datagram_bytes);
        if !p.keyring.seal(pkt.header, &pkt.payload, &mut datagram) {
            log::error!("{}: no key for epoch {}", p.database, pkt.header.key_epoch);
            inc(&p.counters.send_errors);
            continue;
        }
        let datagram = Arc::new(datagram);
        p.retransmit.locked().push(pkt.header.seq, datagram.clone());
        out.queue(p, datagram, pkt.header.kind == PacketKind::Heartbeat);
    }
    out.flush(p);
}

/// Sends what the slice sealed (runs of equal-sized datagrams in one call; see
/// [`super::batch`]).
fn flush(p: &MulticasterParts, batch: &mut BatchSender) {
    if batch.is_empty() {
        return;
    }
    let f = batch.flush(&p.socket, &p.database);
    add(&p.counters.packets_sent, f.packets);
    add(&p.counters.bytes_sent, f.bytes);
    add(&p.counters.send_errors, f.errors);
    add(&p.counters.send_calls, f.calls);
}

fn account(
    c: &PublisherCounters,
    last: &mut crate::proto::SenderCounters,
    now: &crate::proto::SenderCounters,
) {
    add(&c.chains_sent, now.chains - last.chains);
    add(
        &c.chains_compressed,
        now.compressed_chains - last.compressed_chains,
    );
    add(&c.heartbeats_sent, now.heartbeats - last.heartbeats);
    add(&c.data_packets_sent, now.data_packets - last.data_packets);
    add(&c.updates_sent, now.updates - last.updates);
    add(
        &c.updates_skipped_backlog,
        now.skipped_backlog - last.skipped_backlog,
    );
    c.backlog_bytes_peak
        .fetch_max(now.backlog_peak_bytes, std::sync::atomic::Ordering::Relaxed);
    *last = now.clone();
}

/// Moves this database's share of the `backlog_bytes` gauge (summed over databases) from
/// `*last` to `now`.
fn set_backlog(c: &PublisherCounters, last: &mut u64, now: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    if now >= *last {
        c.backlog_bytes.fetch_add(now - *last, Relaxed);
    } else {
        c.backlog_bytes.fetch_sub(*last - now, Relaxed);
    }
    *last = now;
}
