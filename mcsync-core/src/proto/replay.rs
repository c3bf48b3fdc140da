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
