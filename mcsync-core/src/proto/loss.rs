//! Seeded receive-side loss injection for tests and the demo: bursts of `burst_len`
//! packets start with a given probability. The same seed drops the same packets.

use crate::config::LossConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Decides which packets to drop.
#[derive(Debug)]
pub struct LossGenerator {
    probability: f64,
    burst_len: u32,
    left_in_burst: u32,
    rng: StdRng,
}

impl LossGenerator {
    /// A generator following `config`.
    pub fn new(config: &LossConfig) -> LossGenerator {
        // A burst of n starting with probability p drops about p*n of the packets; scale so
        // that `probability` is the overall loss rate.
        let p = config.probability / f64::from(config.burst_len.max(1));
        LossGenerator {
            probability: p.clamp(0.0, 1.0),
            burst_len: config.burst_len.max(1),
            left_in_burst: 0,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Whether to drop the next packet.
    pub fn drop_next(&mut self) -> bool {
        if self.left_in_burst > 0 {
            self.left_in_burst -= 1;
            return true;
        }
        if self.rng.gen_bool(self.probability) {
            self.left_in_burst = self.burst_len - 1;
            return true;
        }
        false
    }
}
