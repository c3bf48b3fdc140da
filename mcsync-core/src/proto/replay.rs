//! Rejects packets already seen on a stream: a sliding window over sequence numbers.
//! Versions already applied are ignored later anyway; this keeps a replayed packet from
//! disturbing a chain being assembled.

/// Window of the last 128 sequence numbers of one stream.
///
/// One sealed packet far ahead of the stream must not move the window: any key holder could
/// then make every genuine packet look too old for the life of the stream. A jump of more than
/// [`MAX_JUMP`] is taken only once [`CONFIRM_FAR`] distinct packets confirm it (they land
/// within [`WIDTH`] of each other beyond the jump, as the publisher's own traffic does after
/// a long absence from the group); until then such packets are refused as [`Verdict::Far`].
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: u64,
    seen: u128,
    /// Far-ahead packets seen but not adopted: the window they would start, and how many.
    far: Option<FarCandidate>,
}

#[derive(Debug, Clone, Copy)]
struct FarCandidate {
    lowest: u64,
    highest: u64,
    count: u32,
}

const WIDTH: u64 = 128;

/// Largest forward jump one packet may make. A forged packet can therefore cost at most this
/// many genuine packets (dropped as too old, then fetched by packet repair); a longer real
/// gap (a burst of loss, a stretch off the group) costs [`CONFIRM_FAR`] − 1 repaired packets.
pub const MAX_JUMP: u64 = 1024;

/// Distinct far-ahead packets, close together, that confirm a large jump.
pub const CONFIRM_FAR: u32 = 16;

/// What the window says of a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: accept it.
    Fresh,
    /// Seen before, or too old to tell: drop it.
    Seen,
    /// Too far ahead to take on the word of one packet: drop it (counted apart).
    Far,
}

impl ReplayWindow {
    /// Returns true, and records `seq`, if it was not seen before and is not too old (nor
    /// an unconfirmed jump far ahead).
    pub fn check_and_record(&mut self, seq: u64) -> bool {
        self.check(seq) == Verdict::Fresh
    }

    /// Judges `seq`, and records it if fresh.
    pub fn check(&mut self, seq: u64) -> Verdict {
        if seq == 0 {
            return Verdict::Seen;
        }
        if self.highest != 0 && seq > self.highest && seq - self.highest > MAX_JUMP {
            return self.far_ahead(seq);
        }
        if seq > self.highest {
            self.advance(seq);
            return Verdict::Fresh;
        }
        let back = self.highest - seq;
        if back >= WIDTH {
            return Verdict::Seen;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return Verdict::Seen;
        }
        self.seen |= bit;
        Verdict::Fresh
    }

    fn advance(&mut self, seq: u64) {
        let shift = seq - self.highest;
        self.seen = if shift >= WIDTH {
            0
        } else {
            self.seen << shift
        };
        self.seen |= 1;
        self.highest = seq;
        self.far = None;
    }

    /// A packet more than [`MAX_JUMP`] ahead: counts towards confirming a jump there.
    fn far_ahead(&mut self, seq: u64) -> Verdict {
        let c = match self.far {
            Some(c) if seq.abs_diff(c.lowest) < WIDTH && seq.abs_diff(c.highest) < WIDTH => {
                if seq == c.lowest || seq == c.highest {
                    return Verdict::Seen;
                }
                FarCandidate {
                    lowest: c.lowest.min(seq),
                    highest: c.highest.max(seq),
                    count: c.count + 1,
                }
            }
            // Another place far ahead: start counting there instead.
            _ => FarCandidate {
                lowest: seq,
                highest: seq,
                count: 1,
            },
        };
        if c.count < CONFIRM_FAR {
            self.far = Some(c);
            return Verdict::Far;
        }
        // Confirmed: the stream really is there now. The packets counted before this one
        // were dropped; packet repair fetches them like any loss.
        self.highest = 0;
        self.seen = 0;
        self.advance(seq);
        Verdict::Fresh
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
        assert!(!w.check_and_record(138));
    }

    #[test]
    fn one_packet_far_ahead_does_not_move_the_window() {
        let mut w = ReplayWindow::default();
        for s in 1..=10 {
            assert!(w.check_and_record(s));
        }
        assert_eq!(w.check(10 + (1 << 40)), Verdict::Far);
        assert_eq!(w.check(u64::MAX), Verdict::Far);
        // Genuine traffic goes on.
        for s in 11..=500 {
            assert_eq!(w.check(s), Verdict::Fresh, "{s}");
        }
        // A jump within the bound is taken at once.
        assert_eq!(w.check(500 + MAX_JUMP), Verdict::Fresh);
    }

    #[test]
    fn a_far_jump_confirmed_by_traffic_is_adopted() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_record(1));
        let far = 1 + 3 * MAX_JUMP;
        for i in 0..u64::from(CONFIRM_FAR) - 1 {
            assert_eq!(w.check(far + i), Verdict::Far);
            // The same far packet twice counts once.
            assert_eq!(w.check(far + i), Verdict::Seen);
        }
        assert_eq!(w.check(far + 100), Verdict::Fresh);
        // The window is there now; the old place is far behind.
        assert_eq!(w.check(far + 101), Verdict::Fresh);
        assert_eq!(w.check(2), Verdict::Seen);
        // Dropped while unconfirmed, the first ones are fresh inside the new window.
        assert_eq!(w.check(far), Verdict::Fresh);
    }
}
