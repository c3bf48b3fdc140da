//! Token-bucket pacing of packets and bytes, with time passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: u64, burst: f64) -> Option<Bucket> {
        (rate > 0).then_some(Bucket {
            rate: rate as f64,
            burst,
            tokens: burst,
        })
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
    }

    fn wait_for(&self, need: f64) -> Duration {
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }
}

/// Limits packets per second and bytes per second; either may be unlimited (rate 0).
#[derive(Debug, Clone)]
pub struct Pacer {
    packets: Option<Bucket>,
    bytes: Option<Bucket>,
    last: Instant,
}

/// Burst allowance in packets: enough to keep a sender busy between timer wake-ups,
/// small enough not to overflow receive buffers.
const BURST_PACKETS: f64 = 64.0;

impl Pacer {
    /// A pacer allowing `packets_per_sec` and `bytes_per_sec` (0 = unlimited).
    pub fn new(now: Instant, packets_per_sec: u64, bytes_per_sec: u64) -> Pacer {
        Pacer {
            packets: Bucket::new(packets_per_sec, BURST_PACKETS),
            bytes: Bucket::new(bytes_per_sec, (bytes_per_sec as f64 / 100.0).max(65_536.0)),
            last: now,
        }
    }

    /// Changes the rates at run time.
    pub fn set_rates(&mut self, now: Instant, packets_per_sec: u64, bytes_per_sec: u64) {
        *self = Pacer::new(now, packets_per_sec, bytes_per_sec);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        for b in [&mut self.packets, &mut self.bytes].into_iter().flatten() {
            b.refill(elapsed);
        }
    }

    /// How long to wait before a packet of `len` bytes may go (zero: now).
    pub fn delay(&mut self, now: Instant, len: usize) -> Duration {
        self.refill(now);
        let p = self
            .packets
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(1.0));
        let b = self
            .bytes
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for((len as f64).min(b.burst)));
        p.max(b)
    }

    /// Records that a packet of `len` bytes was sent at `now`.
    pub fn on_sent(&mut self, now: Instant, len: usize) {
        self.refill(now);
        if let Some(b) = self.packets.as_mut() {
            b.tokens -= 1.0;
        }
        if let Some(b) = self.bytes.as_mut() {
            b.tokens -= len as f64;
        }
    }
}
