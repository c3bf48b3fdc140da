//! When the publisher heartbeats: shortly after the last data (so a lost tail chain is
//! noticed within a few milliseconds), then doubling while idle up to a maximum (so an idle
//! stream costs almost nothing).

use std::time::{Duration, Instant};

/// Heartbeat schedule for one stream.
#[derive(Debug, Clone)]
pub struct HeartbeatTimer {
    initial: Duration,
    max: Duration,
    interval: Duration,
    due: Instant,
}

impl HeartbeatTimer {
    /// A schedule whose first heartbeat is due `initial` after `now`.
    pub fn new(now: Instant, initial: Duration, max: Duration) -> HeartbeatTimer {
        HeartbeatTimer {
            initial,
            max,
            interval: initial,
            due: now + initial,
        }
    }

    /// Data was just sent: restart at the short interval.
    pub fn on_data(&mut self, now: Instant) {
        self.interval = self.initial;
        self.due = now + self.initial;
    }

    /// When the next heartbeat is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// Whether a heartbeat is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.due
    }

    /// A heartbeat was sent: back off.
    pub fn on_sent(&mut self, now: Instant) {
        self.interval = (self.interval * 2).min(self.max);
        self.due = now + self.interval;
    }
}
