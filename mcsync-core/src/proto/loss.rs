//! Seeded receive-side loss injection for tests and the demo: drops a `probability`
//! fraction of packets overall, in bursts of `burst_len`. The same seed drops the same
//! packets.

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
        // Bursts of n start with probability q only at packets outside a burst, so the
        // overall loss rate is f = n*q / (1 - q + n*q). Solve for q so that `probability`
        // is the overall loss rate f: q = f / (n*(1 - f) + f).
        // NaN would make `gen_bool` panic; treat it as no loss.
        let f = if config.probability.is_nan() {
            0.0
        } else {
            config.probability.clamp(0.0, 1.0)
        };
        let n = f64::from(config.burst_len.max(1));
        LossGenerator {
            probability: (f / (n * (1.0 - f) + f)).clamp(0.0, 1.0),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(probability: f64, burst_len: u32, seed: u64) -> LossConfig {
        LossConfig {
            probability,
            burst_len,
            seed,
        }
    }

    fn decisions(c: &LossConfig, n: usize) -> Vec<bool> {
        let mut g = LossGenerator::new(c);
        (0..n).map(|_| g.drop_next()).collect()
    }

    /// Lengths of the runs of consecutive drops, leaving out a run cut off at the end.
    fn runs(d: &[bool]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut cur = 0;
        for &x in d {
            if x {
                cur += 1;
            } else if cur > 0 {
                out.push(cur);
                cur = 0;
            }
        }
        out
    }

    #[test]
    fn independent_losses_match_the_probability() {
        let d = decisions(&config(0.1, 1, 7), 200_000);
        let rate = d.iter().filter(|&&x| x).count() as f64 / d.len() as f64;
        assert!((0.095..0.105).contains(&rate), "{rate}");
    }

    #[test]
    fn bursts_have_the_configured_length_and_overall_rate() {
        let d = decisions(&config(0.2, 4, 11), 200_000);
        let rate = d.iter().filter(|&&x| x).count() as f64 / d.len() as f64;
        assert!((0.19..0.21).contains(&rate), "{rate}");
        let r = runs(&d);
        assert!(r.len() > 5_000);
        assert!(
            r.iter().all(|&n| n % 4 == 0),
            "a run not made of whole bursts"
        );
        let single = r.iter().filter(|&&n| n == 4).count() as f64 / r.len() as f64;
        assert!(single > 0.9, "{single}");
    }

    #[test]
    fn long_bursts_keep_the_overall_rate() {
        for (p, n) in [(0.05, 8), (0.3, 2), (0.01, 16)] {
            let d = decisions(&config(p, n, 5), 400_000);
            let rate = d.iter().filter(|&&x| x).count() as f64 / d.len() as f64;
            assert!(
                (rate - p).abs() < p * 0.08,
                "{rate} for {p} in bursts of {n}"
            );
        }
    }

    #[test]
    fn the_same_seed_drops_the_same_packets() {
        let c = config(0.3, 3, 42);
        assert_eq!(decisions(&c, 10_000), decisions(&c, 10_000));
        assert_ne!(
            decisions(&c, 10_000),
            decisions(&config(0.3, 3, 43), 10_000)
        );
    }

    #[test]
    fn edge_probabilities() {
        assert!(decisions(&config(0.0, 5, 1), 10_000).iter().all(|&x| !x));
        assert!(decisions(&config(1.0, 1, 1), 10_000).iter().all(|&x| x));
        // Out-of-range settings are clamped rather than panicking.
        assert!(decisions(&config(7.0, 0, 1), 100).iter().all(|&x| x));
        assert!(decisions(&config(3.0, 2, 1), 100).iter().all(|&x| x));
        assert!(decisions(&config(-1.0, 2, 1), 100).iter().all(|&x| !x));
        assert!(decisions(&config(f64::NAN, 2, 1), 100).iter().all(|&x| !x));
    }
}
