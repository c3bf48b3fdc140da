//! Rejects packets already seen on a stream: a sliding window over sequence numbers.
//! Versions already applied are ignored later anyway; this keeps a replayed packet from
//! disturbing a chain being assembled.

/// Window of the last 128 sequence numbers of one stream.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: u64,
    seen: u128,
}

const WIDTH: u64 = 128;

impl ReplayWindow {
    /// Returns true, and records `seq`, if it was not seen before and is not too old.
    pub fn check_and_record(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= WIDTH {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = seq;
            return true;
        }
        let back = self.highest - seq;
        if back >= WIDTH {
            return false;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_sequence_once() {
        let mut w = ReplayWindow::default();
        for s in 1..=300 {
            assert!(w.check_and_record(s), "{s}");
            assert!(!w.check_and_record(s), "{s} replayed");
        }
    }

    #[test]
    fn zero_is_never_valid() {
        let mut w = ReplayWindow::default();
        assert!(!w.check_and_record(0));
        assert!(w.check_and_record(5));
        assert!(!w.check_and_record(0));
    }

    #[test]
    fn late_packets_inside_the_window_are_accepted_once() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_record(200));
        // 200 - 127 is the oldest sequence the window still tracks.
        assert!(w.check_and_record(73));
        assert!(!w.check_and_record(73));
        assert!(w.check_and_record(150));
        assert!(!w.check_and_record(150));
        assert!(!w.check_and_record(200));
    }

    #[test]
    fn too_old_packets_are_rejected() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_record(200));
        assert!(!w.check_and_record(72));
        assert!(!w.check_and_record(1));
    }

    #[test]
    fn a_large_jump_clears_the_window() {
        let mut w = ReplayWindow::default();
        for s in 1..=10 {
            assert!(w.check_and_record(s));
        }
        assert!(w.check_and_record(10 + 128));
        // Everything at least 128 behind the new highest is too old, the rest is fresh.
        assert!(!w.check_and_record(10));
        assert!(w.check_and_record(11));
        assert!(w.check_and_record(137));
        assert!(!w.check_and_record(137));
        assert!(w.check_and_record(u64::MAX));
        assert!(!w.check_and_record(u64::MAX));
        assert!(!w.check_and_record(138));
    }
}
