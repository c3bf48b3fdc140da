//! The control worker: the one thread of a subscription that talks to the publisher's
//! control server. The process thread hands it requests ([`Job`]) and goes on taking
//! packets, running timers and calling the host back; the answers come back as
//! [`Event`]s in the order the requests were made. A long catch-up streams its updates
//! back in batches as they arrive, so repairing many versions never stops the process
//! thread from taking packets in order (they would otherwise pile up in the receive
//! channel and be dropped), nor delays callbacks until the end.
//!
//! One connection carries everything, so requests are answered one at a time: a vote
//! asked for during a long catch-up waits for it (a participant behind the prepared
//! version could not vote before catching up anyway).

use super::{filter_updates, SubShared};
use crate::crypto::Keyring;
use crate::net::repair_client::RepairClient;
use crate::proto::subscription::{Input, RepairEnd, APPLY_BATCH, APPLY_BATCH_BYTES};
use crate::proto::OpenPacket;
use crate::resync::{HostDelivery, Resynced};
use crate::stats::{add, inc};
use crate::sync::RwLocked;
use crate::wire::control::{DatabaseInfo, ErrorCode, SubscriberReport};
use crate::wire::packet::PacketHeader;
use crate::wire::update::{decode_update, Limits};
use crate::{Error, ErrorKind, Result, Update};
use crossbeam_channel as chan;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

/// Answers waiting for the process thread: with each batch of repaired updates at most
/// [`BATCH_BYTES`] (or one larger update), this bounds what a catch-up holds beside the
/// engine's own buffer (which is applied past half of [`APPLY_BATCH_BYTES`]).
const EVENTS_IN_FLIGHT: usize = 2;
/// Most bytes of keys and values in one [`Event::Repaired`] batch.
const BATCH_BYTES: usize = APPLY_BATCH_BYTES / 8;

/// A request to the publisher, made by the process thread.
pub(super) enum Job {
    /// Register again ([`Event::Registered`]).
    Hello,
    /// Send a reception report ([`Event::Reported`]).
    Report(SubscriberReport),
    /// Ask the latest version (answered with [`Input::Current`] when it succeeds).
    Status,
    /// Acknowledge a two-phase decision (not answered).
    Ack { version: u64, round: u64 },
    /// Vote on a prepared update (answered with [`Input::VoteSent`], or with
    /// [`Input::Outcome`] when the vote was not taken; not answered when neither reached
    /// the publisher).
    Vote {
        version: u64,
        round: u64,
        prepared: bool,
        reason: String,
    },
    /// Fetch packets from the retransmit buffer ([`Input::PacketsRepaired`]).
    Packets {
        stream: u32,
        ranges: Vec<(u64, u64)>,
    },
    /// Fetch versions from the journal (`compacted`: that one range, latest value per
    /// changed key): [`Event::Repaired`] batches, then [`Input::RepairDone`].
    CatchUp {
        ranges: Vec<(u64, u64)>,
        compacted: Option<(u64, u64)>,
    },
    /// Fetch versions `from..=end` the replica holds, for a host behind it
    /// ([`Event::Journal`]).
    Journal { from: u64, end: u64 },
    /// Hash resync ([`Event::Resynced`]).
    Resync {
        new_history: Option<u64>,
        host: HostDelivery,
        groups: Vec<String>,
    },
    /// Close the registration at the publisher, then stop.
    Close,
}

/// What a [`Job::Journal`] brought.
pub(super) enum JournalPart {
    /// Every version asked for.
    Got(Vec<Update>),
    /// The journal no longer holds them.
    Trimmed,
    /// Fewer updates than asked for, or the request failed (asked again later).
    Failed(String),
}

/// An answer, in the order the jobs were given.
pub(super) enum Event {
    /// An answer the engine takes as it is.
    Engine(Input),
    /// Updates of a catch-up, in order.
    Repaired(Vec<Update>),
    Registered(Result<DatabaseInfo>),
    Reported,
    Journal {
        from: u64,
        end: u64,
        part: JournalPart,
    },
    Resynced {
        new_history: Option<u64>,
        host: HostDelivery,
        result: Result<Resynced>,
    },
    /// A registration showed another history (requests fail until a resync adopts it).
    HistoryChanged(u64),
}

/// The process thread's end of the worker.
pub(super) struct Control {
    jobs: Option<chan::Sender<Job>>,
    pub events: chan::Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Starts the worker on `client`.
    pub fn spawn(
        client: RepairClient,
        shared: Arc<SubShared>,
        keyring: Arc<RwLock<Keyring>>,
        limits: Limits,
    ) -> Result<Control> {
        let (jobs, job_rx) = chan::unbounded();
        let (event_tx, events) = chan::bounded(EVENTS_IN_FLIGHT);
        let worker = Worker {
            client,
            shared,
            keyring,
            limits,
            events: event_tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("mcsync-ctl-{}", worker.shared.name))
            .spawn(move || worker.run(job_rx))
            .map_err(|e| Error::io("spawning the control thread", e))?;
        Ok(Control {
            jobs: Some(jobs),
            events,
            thread: Some(thread),
        })
    }

    /// Hands the worker a request (never blocks).
    pub fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // Gone only when it stopped, which the process thread sees as the end.
            let _ = jobs.send(job);
        }
    }

    /// Stops the worker once the requests given are done (it gives up on a long one
    /// when the subscription is stopping), closing the registration at the publisher if
    /// `close_registration`, and waits for it.
    pub fn finish(mut self, close_registration: bool) {
        if let Some(jobs) = self.jobs.take() {
            if close_registration {
                let _ = jobs.send(Job::Close);
            }
        }
        // Answers nobody reads any more: a worker blocked handing one over gives up.
        let (_, dead) = chan::bounded(0);
        drop(std::mem::replace(&mut self.events, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The worker: the control connection and what answering needs.
struct Worker {
    client: RepairClient,
    shared: Arc<SubShared>,
    keyring: Arc<RwLock<Keyring>>,
    limits: Limits,
    events: chan::Sender<Event>,
}

/// The process thread stopped reading answers.
struct Gone;

impl Worker {
    fn run(mut self, jobs: chan::Receiver<Job>) {
        for job in jobs.iter() {
            if self.shared.stop.is_stopped() && !matches!(job, Job::Close) {
                // Nobody will act on the answer.
                continue;
            }
            if let Job::Close = job {
                if let Err(e) = self.client.close_subscription() {
                    log::debug!("{}: CLOSE SUBSCRIPTION: {e}", self.shared.name);
                }
                return;
            }
            if self.do_job(job).is_err() {
                return;
            }
            if let Some(new) = self.client.history_changed() {
                if self.send(Event::HistoryChanged(new)).is_err() {
                    return;
                }
            }
        }
    }

    fn send(&self, event: Event) -> std::result::Result<(), Gone> {
        self.events.send(event).map_err(|_| Gone)
    }

    fn do_job(&mut self, job: Job) -> std::result::Result<(), Gone> {
        let name = &self.shared.name;
        match job {
            Job::Hello => {
                let r = self.client.hello();
                self.send(Event::Registered(r))
            }
            Job::Report(r) => match self.client.report(r) {
                Ok(()) => self.send(Event::Reported),
                Err(e) => {
                    log::debug!("{name}: report: {e}");
                    Ok(())
                }
            },
            Job::Status => match self.client.status() {
                Ok(s) => self.send(Event::Engine(Input::Current(s.current_version))),
                Err(e) => {
                    log::debug!("{name}: status: {e}");
                    Ok(())
                }
            },
            Job::Ack { version, round } => {
                if let Err(e) = self.client.ack(version, round) {
                    log::debug!("{name}: acknowledging version {version}: {e}");
                }
                Ok(())
            }
            Job::Vote {
                version,
                round,
                prepared,
                reason,
            } => self.vote(version, round, prepared, &reason),
            Job::Packets { stream, ranges } => {
                let input = self.fetch_packets(stream, &ranges);
                self.send(Event::Engine(input))
            }
            Job::CatchUp { ranges, compacted } => self.catch_up(&ranges, compacted),
            Job::Journal { from, end } => {
                let part = self.journal(from, end);
                self.send(Event::Journal { from, end, part })
            }
            Job::Resync {
                new_history,
                host,
                groups,
            } => {
                let result = self.resync(new_history, host, &groups);
                self.send(Event::Resynced {
                    new_history,
                    host,
                    result,
                })
            }
            Job::Close => Ok(()),
        }
    }

    fn vote(
        &mut self,
        version: u64,
        round: u64,
        prepared: bool,
        reason: &str,
    ) -> std::result::Result<(), Gone> {
        let name = &self.shared.name;
        match self.client.vote(version, round, prepared, reason) {
            Ok(()) => self.send(Event::Engine(Input::VoteSent {
                version,
                round,
                prepared,
            })),
            Err(e) if self.client.last_refusal().is_some() => {
                // Not taken: the round is over (its decision did not reach us) or
                // superseded. Ask what became of it.
                log::debug!("{name}: vote on version {version} not taken: {e}");
                match self.client.outcome(version, round) {
                    Ok(state) => self.send(Event::Engine(Input::Outcome {
                        version,
                        round,
                        state,
                    })),
                    // Asked again after the next vote.
                    Err(e) => {
                        log::debug!("{name}: outcome of version {version}: {e}");
                        Ok(())
                    }
                }
            }
            // Sent again after the vote retry.
            Err(e) => {
                log::warn!("{name}: vote on version {version}: {e}");
                Ok(())
            }
        }
    }

    /// Fetches lost packets from the publisher's retransmit buffer and opens them;
    /// whatever it no longer has is skipped, and the journal repairs those versions.
    fn fetch_packets(&mut self, stream: u32, ranges: &[(u64, u64)]) -> Input {
        let c = &self.shared.counters;
        let mut datagrams = Vec::new();
        let fetched = self
            .client
            .fetch_packets(stream, ranges, |d| datagrams.push(d.to_vec()));
        let ok = match fetched {
            Ok((_got, _missing, bytes)) => {
                add(&c.packet_repair_bytes, bytes);
                true
            }
            Err(e) => {
                log::warn!("{}: packet repair failed: {e}", self.shared.name);
                false
            }
        };
        let mut packets = Vec::with_capacity(datagrams.len());
        let keyring = self.keyring.read_locked();
        for d in datagrams {
            let Ok((header, sealed)) = PacketHeader::parse(&d) else {
                inc(&c.dropped_malformed);
                continue;
            };
            match keyring.open(&header, sealed) {
                Ok(payload) if header.stream_id == stream => {
                    packets.push(OpenPacket { header, payload })
                }
                Ok(_) => inc(&c.dropped_malformed),
                Err(_) => inc(&c.dropped_auth),
            }
        }
        Input::PacketsRepaired { packets, ok }
    }

    /// Fetches versions from the journal, handing them on in batches as they arrive:
    /// a batch goes as soon as the process thread has taken the previous ones, or when
    /// full. Ends with [`Input::RepairDone`].
    fn catch_up(
        &mut self,
        ranges: &[(u64, u64)],
        compacted: Option<(u64, u64)>,
    ) -> std::result::Result<(), Gone> {
        let limits = self.limits;
        let events = self.events.clone();
        let stop = self.shared.stop.clone();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut gone = false;
        let mut on_bytes = |encoded: &[u8]| -> Result<()> {
            if stop.is_stopped() {
                return Err(Error::Closed("the subscription is closing".into()));
            }
            let u = decode_update(encoded, &limits)?;
            bytes += u.data_bytes();
            batch.push(u);
            let full = bytes >= BATCH_BYTES || batch.len() >= APPLY_BATCH;
            if full || events.is_empty() {
                bytes = 0;
                if events
                    .send(Event::Repaired(std::mem::take(&mut batch)))
                    .is_err()
                {
                    gone = true;
                    return Err(Error::Closed("the subscription is closing".into()));
                }
            }
            Ok(())
        };
        let result = match compacted {
            Some((a, b)) => self.client.compact(a, b, &mut on_bytes),
            None => self.client.catch_up(ranges, &mut on_bytes),
        };
        if gone {
            return Err(Gone);
        }
        if !batch.is_empty() {
            self.send(Event::Repaired(batch))?;
        }
        let c = &self.shared.counters;
        let end = match result {
            Ok(out) => {
                add(&c.repair_updates, out.updates);
                add(&c.repair_bytes, out.bytes);
                RepairEnd::Done {
                    current_version: out.current_version,
                }
            }
            Err(_) if self.client.last_refusal() == Some(ErrorCode::Trimmed) => RepairEnd::Trimmed,
            // Given up because the subscription is closing: nobody waits for the end.
            Err(_) if self.shared.stop.is_stopped() => return Ok(()),
            Err(e) => {
                log::warn!("{}: repair of {ranges:?} failed: {e}", self.shared.name);
                if e.kind() == ErrorKind::Refused {
                    RepairEnd::Refused
                } else {
                    RepairEnd::Failed
                }
            }
        };
        self.send(Event::Engine(Input::RepairDone(end)))
    }

    /// Versions `from..=end` for a host behind its replica.
    fn journal(&mut self, from: u64, end: u64) -> JournalPart {
        let limits = self.limits;
        let mut got = Vec::new();
        let result = self.client.catch_up(&[(from, end)], |bytes| {
            got.push(decode_update(bytes, &limits)?);
            Ok(())
        });
        match result {
            Ok(_) if got.len() as u64 == end - from + 1 => JournalPart::Got(got),
            Err(_) if self.client.last_refusal() == Some(ErrorCode::Trimmed) => {
                JournalPart::Trimmed
            }
            Ok(_) => JournalPart::Failed(format!("incomplete answer ({} updates)", got.len())),
            Err(e) => JournalPart::Failed(e.to_string()),
        }
    }

    /// Hash resync (see `crate::resync`). With a new history, requests go to it from now
    /// on.
    fn resync(
        &mut self,
        new_history: Option<u64>,
        host: HostDelivery,
        groups: &[String],
    ) -> Result<Resynced> {
        if let Some(new) = new_history {
            self.client.expect_incarnation(new);
        }
        let c = &self.shared.counters;
        let filter = |b: &mut [Update]| filter_updates(groups, c, b);
        crate::resync::run(
            &self.shared.store,
            &self.shared.name,
            self.shared.tables,
            &mut self.client,
            &self.limits,
            Some(host),
            &filter,
        )
    }
}
