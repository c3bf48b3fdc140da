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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends packets of `len` bytes as fast as the pacer allows between `from` and `to`
    /// (virtual time), returning how many went out.
    fn send_until(p: &mut Pacer, now: &mut Instant, to: Instant, len: usize) -> u64 {
        let mut sent = 0;
        while *now < to {
            let d = p.delay(*now, len);
            if d.is_zero() {
                p.on_sent(*now, len);
                sent += 1;
            } else {
                *now += d;
            }
        }
        sent
    }

    #[test]
    fn unlimited_never_delays() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 0, 0);
        for _ in 0..10_000 {
            assert_eq!(p.delay(t0, 65_000), Duration::ZERO);
            p.on_sent(t0, 65_000);
        }
    }

    #[test]
    fn packet_burst_then_one_packet_per_interval() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1_000, 0);
        for _ in 0..BURST_PACKETS as usize {
            assert_eq!(p.delay(t0, 100), Duration::ZERO);
            p.on_sent(t0, 100);
        }
        let d = p.delay(t0, 100);
        assert!(
            d > Duration::from_micros(990) && d <= Duration::from_micros(1_000),
            "{d:?}"
        );
        assert_eq!(p.delay(t0 + d, 100), Duration::ZERO);
    }

    #[test]
    fn holds_packet_rate_over_a_virtual_second() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Pacer::new(t0, 5_000, 0);
        // The first second includes the initial burst; the second one is steady state.
        let first = send_until(&mut p, &mut now, t0 + Duration::from_secs(1), 1_200);
        let second = send_until(&mut p, &mut now, t0 + Duration::from_secs(2), 1_200);
        assert!((5_000..=5_000 + 64 + 1).contains(&first), "{first}");
        assert!((4_950..=5_050).contains(&second), "{second}");
    }

    #[test]
    fn holds_byte_rate_over_a_virtual_second() {
        let t0 = Instant::now();
        let mut now = t0;
        let rate = 2_000_000u64;
        let mut p = Pacer::new(t0, 0, rate);
        send_until(&mut p, &mut now, t0 + Duration::from_secs(1), 1_400);
        let sent = send_until(&mut p, &mut now, t0 + Duration::from_secs(2), 1_400);
        let bytes = sent * 1_400;
        let err = (bytes as f64 - rate as f64).abs() / rate as f64;
        assert!(err < 0.02, "{bytes} bytes in a second at {rate} B/s");
    }

    #[test]
    fn the_stricter_limit_wins() {
        let t0 = Instant::now();
        let mut now = t0;
        // 10,000 packets/s of 1,000 bytes would be 10 MB/s; the byte limit allows 1 MB/s.
        let mut p = Pacer::new(t0, 10_000, 1_000_000);
        send_until(&mut p, &mut now, t0 + Duration::from_secs(1), 1_000);
        let sent = send_until(&mut p, &mut now, t0 + Duration::from_secs(2), 1_000);
        assert!((980..=1_020).contains(&sent), "{sent}");
    }

    #[test]
    fn set_rates_applies_at_once() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Pacer::new(t0, 1_000, 0);
        send_until(&mut p, &mut now, t0 + Duration::from_secs(1), 100);
        p.set_rates(now, 200, 0);
        let start = now;
        send_until(&mut p, &mut now, start + Duration::from_secs(1), 100);
        let sent = send_until(&mut p, &mut now, start + Duration::from_secs(2), 100);
        assert!((195..=205).contains(&sent), "{sent}");
        p.set_rates(now, 0, 0);
        assert_eq!(p.delay(now, 100), Duration::ZERO);
    }

    #[test]
    fn a_datagram_larger_than_the_byte_burst_still_goes() {
        let t0 = Instant::now();
        let mut now = t0;
        // Burst is 65,536 bytes at this rate; a 64 KiB + datagram must not wait forever.
        let mut p = Pacer::new(t0, 0, 100_000);
        let sent = send_until(&mut p, &mut now, t0 + Duration::from_secs(10), 65_535);
        assert!((15..=17).contains(&sent), "{sent}");
    }
}
