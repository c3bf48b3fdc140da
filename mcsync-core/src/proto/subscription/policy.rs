//! When a subscription registers again, and its error policy: every report interval it
//! measures the network's loss; past the threshold it registers again, and if the loss
//! stays above it leaves multicast and catches up by unicast for a back-off period
//! (polling the publisher's latest version), then rejoins.
//!
//! A subscriber that hears nothing at all by multicast (no data, not even a heartbeat)
//! while versions the publisher committed after it joined the group reach it only by
//! repair is losing everything: the group is not arriving on its interface (a wrong
//! interface, no multicast route). That interval's loss is 1.0, so the policy acts on it
//! as on any other total loss, instead of reading the silence as "too few packets".
//! The same holds for a unicast-only subscriber's push flow: the engine does not know
//! which socket its packets came by.
//!
//! A unicast-only subscriber whose push the publisher refused (its limit of targets)
//! polls the latest version as a backed-off one does, until a registration grants push.

use super::{EngineConfig, Traffic};
use std::time::{Duration, Instant};

/// How often a subscriber on unicast asks for the latest version.
pub const UNICAST_POLL: Duration = Duration::from_millis(100);
/// Fewest packets in a report interval for its loss rate to count.
const MIN_PACKETS_FOR_LOSS: u64 = 20;
/// Fewest versions committed since joining the group, all obtained by repair while no
/// multicast packet arrived, for the silence to count as total loss.
pub const MIN_SILENT_VERSIONS: u64 = 3;
/// After an authentication refusal, registration is tried again only this often.
const AUTH_RETRY: Duration = Duration::from_secs(3);
/// Packets from another source: registration at most this often.
const FOREIGN_RETRY: Duration = Duration::from_secs(1);
/// A key epoch or stream not known: registration at most this often.
const REKEY_RETRY: Duration = Duration::from_millis(250);
/// "Longer than" a duration, as a deadline.
const JUST_AFTER: Duration = Duration::from_nanos(1);

/// What one report interval decided.
pub(super) struct Tick {
    /// The network's loss rate over the interval.
    pub loss: f64,
    /// Leave (`true`) or rejoin the group.
    pub membership: Option<bool>,
    /// Register again now.
    pub hello: bool,
    /// Nothing arrived by multicast while versions committed since joining the group
    /// came only by repair (the loss is then 1.0).
    pub silent: bool,
}

impl Tick {
    pub fn loss_ppm(&self) -> u64 {
        (self.loss * 1e6) as u64
    }
}

pub(super) struct Policy {
    interval: Duration,
    threshold: f64,
    backoff: Duration,
    silence: Duration,
    last_report: Instant,
    last_poll: Instant,
    last_arrived: u64,
    last_lost: u64,
    /// Versions obtained by repair (committed after joining the group) counted so far.
    last_fresh: u64,
    /// Of those, how many came since the last multicast packet arrived.
    fresh_unheard: u64,
    strikes: u32,
    unicast_until: Option<Instant>,
    /// Push refused at the last registration: poll until one grants it.
    push_refused: bool,
    last_heard: Instant,
    last_hello: Instant,
    /// Packets from a foreign source counted at the last registration.
    seen_foreign: u64,
    /// A stream not named by the registration was seen.
    rekey: bool,
    auth_backoff: bool,
    hello_in_flight: bool,
    hello_soon: bool,
    traffic: Traffic,
}

impl Policy {
    pub fn new(now: Instant, config: &EngineConfig) -> Policy {
        Policy {
            interval: config.report_interval,
            threshold: config.error_threshold,
            backoff: config.unicast_backoff,
            silence: config.silence_timeout,
            last_report: now,
            last_poll: now,
            last_arrived: 0,
            last_lost: 0,
            last_fresh: 0,
            fresh_unheard: 0,
            strikes: 0,
            unicast_until: None,
            push_refused: false,
            last_heard: now,
            last_hello: now,
            seen_foreign: 0,
            rekey: false,
            auth_backoff: false,
            hello_in_flight: false,
            hello_soon: false,
            traffic: Traffic::default(),
        }
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Whether it catches up by polling: backed off by the error policy, or refused push.
    pub fn is_unicast(&self) -> bool {
        self.unicast_until.is_some() || self.push_refused
    }

    /// The last registration refused (`true`) or granted unicast push. Polling starts from
    /// now when refused.
    pub fn set_push_refused(&mut self, now: Instant, refused: bool) {
        if refused && !self.push_refused {
            self.last_poll = now;
        }
        self.push_refused = refused;
    }

    pub fn hello_in_flight(&self) -> bool {
        self.hello_in_flight
    }

    pub fn on_traffic(&mut self, t: Traffic) {
        self.traffic = t;
    }

    pub fn on_heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    pub fn on_foreign_stream(&mut self) {
        self.rekey = true;
    }

    /// Register again as soon as no registration is in flight.
    pub fn hello_soon(&mut self) {
        self.hello_soon = true;
    }

    pub fn on_registered(&mut self) {
        self.hello_in_flight = false;
        self.auth_backoff = false;
        self.rekey = false;
        self.traffic.unknown_epoch = false;
    }

    pub fn on_register_failed(&mut self, auth: bool) {
        self.hello_in_flight = false;
        self.auth_backoff |= auth;
    }

    /// When registering again is due: the publisher has been silent too long, packets
    /// arrive from an unexpected source (it may have restarted on another port) or of a
    /// stream or key epoch we do not know (it restarted, or rotated the key).
    pub fn hello_due_at(&self) -> Option<Instant> {
        if self.hello_in_flight {
            return None;
        }
        if self.hello_soon {
            return Some(self.last_hello);
        }
        let rekey = self.rekey || self.traffic.unknown_epoch;
        let foreign = self.traffic.foreign_source > self.seen_foreign;
        let gap = if self.auth_backoff {
            AUTH_RETRY
        } else if foreign && !rekey {
            FOREIGN_RETRY
        } else {
            REKEY_RETRY
        };
        let changed = (rekey || foreign).then(|| self.last_hello + gap + JUST_AFTER);
        // Off the group by choice (error policy), silence says nothing about the publisher.
        let silent = (!self.is_unicast())
            .then(|| self.last_heard.max(self.last_hello) + self.silence + JUST_AFTER);
        [changed, silent].into_iter().flatten().min()
    }

    /// Whether to register now; if so, the registration is in flight until answered.
    pub fn poll_hello(&mut self, now: Instant) -> bool {
        if self.hello_due_at().is_none_or(|t| now < t) {
            return false;
        }
        self.begin_hello(now);
        true
    }

    fn begin_hello(&mut self, now: Instant) {
        self.hello_in_flight = true;
        self.hello_soon = false;
        self.last_hello = now;
        self.seen_foreign = self.traffic.foreign_source;
    }

    pub fn status_due_at(&self) -> Option<Instant> {
        self.is_unicast().then(|| self.last_poll + UNICAST_POLL)
    }

    /// Whether to ask the publisher's latest version now (only while off multicast).
    pub fn poll_status(&mut self, now: Instant) -> bool {
        if self.status_due_at().is_none_or(|t| now < t) {
            return false;
        }
        self.last_poll = now;
        true
    }

    pub fn report_due_at(&self) -> Instant {
        self.last_report + self.interval
    }

    /// Versions committed since joining the group that came only by repair while nothing
    /// arrived by multicast (0 once a packet arrives).
    pub fn unheard_versions(&self) -> u64 {
        self.fresh_unheard
    }

    /// Every report interval: the loss rate (from `lost`, the packets repaired or skipped
    /// so far, and `fresh`, the versions committed after joining the group that were
    /// obtained by repair so far) and what the policy does about it. A two-phase
    /// participant stays in the group: PREPAREs are only multicast, and without them it
    /// could not vote.
    pub fn poll_report(
        &mut self,
        now: Instant,
        lost: u64,
        fresh: u64,
        participant: bool,
    ) -> Option<Tick> {
        if now < self.report_due_at() {
            return None;
        }
        self.last_report = now;
        // The network's loss: packets that never arrived over packets sent. Packets the
        // loss generator dropped did not arrive; packets that arrived under a key epoch not
        // yet known were repaired but not lost by the network.
        let t = &self.traffic;
        let arrived = t.received.saturating_sub(t.injected_drops);
        let lost_net = lost.saturating_sub(t.unknown_epoch_drops);
        let da = arrived.saturating_sub(self.last_arrived);
        let dl = lost_net.saturating_sub(self.last_lost);
        self.last_arrived = arrived;
        self.last_lost = lost_net;
        let df = fresh.saturating_sub(self.last_fresh);
        self.last_fresh = fresh;
        // Off the group by choice, silence is expected: nothing counts.
        if da > 0 || self.is_unicast() {
            self.fresh_unheard = 0;
        } else {
            self.fresh_unheard += df;
        }
        // Nothing heard while the publisher's progress reached us only by repair: the
        // group does not arrive here at all (the publisher heartbeats after every update,
        // so a subscriber that hears the group hears something).
        let silent = self.fresh_unheard >= MIN_SILENT_VERSIONS;
        // Too few packets say nothing about the loss rate (and must not quiesce anyone).
        let loss = if silent {
            1.0
        } else if da + dl < MIN_PACKETS_FOR_LOSS {
            0.0
        } else {
            dl as f64 / (da + dl) as f64
        };
        let mut tick = Tick {
            loss,
            membership: None,
            hello: false,
            silent,
        };
        match self.unicast_until {
            // Polling because push was refused: there is no stream to judge or leave.
            _ if self.push_refused => {}
            Some(until) if now >= until => {
                self.unicast_until = None;
                self.strikes = 0;
                self.fresh_unheard = 0;
                // Silence is measured from the rejoin, not from before the back-off.
                self.last_heard = now;
                tick.membership = Some(false);
            }
            Some(_) => {}
            None if loss > self.threshold => {
                self.strikes += 1;
                if self.strikes == 1 || participant {
                    tick.hello = self.strikes == 1 && !self.hello_in_flight;
                    if tick.hello {
                        self.begin_hello(now);
                    }
                } else {
                    self.unicast_until = Some(now + self.backoff);
                    self.last_poll = now;
                    tick.membership = Some(true);
                }
            }
            None => self.strikes = 0,
        }
        Some(tick)
    }
}
