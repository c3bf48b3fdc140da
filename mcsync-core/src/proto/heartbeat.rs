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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_heartbeat_is_due_after_the_initial_interval() {
        let t0 = Instant::now();
        let h = HeartbeatTimer::new(t0, 2 * MS, 100 * MS);
        assert_eq!(h.due(), t0 + 2 * MS);
        assert!(!h.is_due(t0 + MS));
        assert!(h.is_due(t0 + 2 * MS));
    }

    #[test]
    fn idle_interval_doubles_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut h = HeartbeatTimer::new(t0, 2 * MS, 20 * MS);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let due = h.due();
            gaps.push(due - now);
            now = due;
            h.on_sent(now);
        }
        assert_eq!(gaps, [2, 4, 8, 16, 20, 20].map(|n| n * MS));
    }

    #[test]
    fn data_restarts_the_short_interval() {
        let t0 = Instant::now();
        let mut h = HeartbeatTimer::new(t0, MS, 64 * MS);
        let mut now = t0;
        for _ in 0..5 {
            now = h.due();
            h.on_sent(now);
        }
        assert_eq!(h.due() - now, 32 * MS);
        let data_at = now + 3 * MS;
        h.on_data(data_at);
        assert_eq!(h.due(), data_at + MS);
        h.on_sent(h.due());
        assert_eq!(h.due(), data_at + 3 * MS);
    }
}
