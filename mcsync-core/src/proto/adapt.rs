//! Adapting the sender to the loss its subscribers report: bigger bundles and the full
//! configured rate while loss is low, smaller bundles and a lower rate when it rises, and
//! multicast quiesced (subscribers catch up by unicast) when most subscribers lose a lot.

/// One loss figure per user: the median of the reports of that user's registrations. The
/// vote is per user, so a user that opens many registrations (or one hostile client that
/// throws its ids away) cannot outvote the others and pause multicast for everyone.
pub fn losses_by_user<'a>(reports: impl IntoIterator<Item = (&'a str, f64)>) -> Vec<f64> {
    let mut by_user: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for (user, loss) in reports {
        by_user.entry(user).or_default().push(loss);
    }
    by_user
        .into_values()
        .map(|mut l| {
            l.sort_by(|a, b| a.total_cmp(b));
            l[(l.len() - 1) / 2]
        })
        .collect()
}

/// Bounds and thresholds of the adaptation.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptConfig {
    /// Smallest bundle (bytes of encoded updates per chain).
    pub min_bundle: usize,
    /// Largest bundle.
    pub max_bundle: usize,
    /// Configured packet rate (the ceiling); 0 = unlimited (then the rate is not adapted).
    pub max_rate: u64,
    /// Lowest packet rate adaptation goes down to.
    pub min_rate: u64,
    /// Loss below this is "low" (bundles and rate grow).
    pub low_loss: f64,
    /// Loss above this is "high" (bundles and rate shrink).
    pub high_loss: f64,
    /// A subscriber losing more than this counts towards quiescing.
    pub quiesce_loss: f64,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig {
            min_bundle: 4 * 1024,
            max_bundle: 60 * 1024,
            max_rate: 40_000,
            min_rate: 2_000,
            low_loss: 0.01,
            high_loss: 0.05,
            quiesce_loss: 0.25,
        }
    }
}

/// What the sender should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Bundle size in bytes.
    pub bundle: usize,
    /// Packets per second (0 = unlimited).
    pub rate: u64,
    /// Whether multicast should pause (most subscribers lose too much).
    pub quiesce: bool,
}

/// Turns loss reports into a [`Tuning`], one step per report round.
#[derive(Debug, Clone)]
pub struct BundleController {
    config: AdaptConfig,
    tuning: Tuning,
}

impl BundleController {
    /// Starts at the largest bundle and full rate.
    pub fn new(config: AdaptConfig) -> BundleController {
        let tuning = Tuning {
            bundle: config.max_bundle,
            rate: config.max_rate,
            quiesce: false,
        };
        BundleController { config, tuning }
    }

    /// The current tuning.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// One round of reports: each subscriber's recent loss fraction (0..=1). Returns the
    /// new tuning.
    pub fn on_reports(&mut self, losses: &[f64]) -> Tuning {
        if losses.is_empty() {
            return self.tuning;
        }
        let c = &self.config;
        let mut sorted = losses.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        // Steer by the 75th percentile: one bad receiver does not slow everybody, but a
        // widespread problem does.
        let p75 = sorted[(sorted.len() * 3).div_ceil(4).saturating_sub(1)];
        let t = &mut self.tuning;
        if p75 > c.high_loss {
            t.bundle = (t.bundle / 2).max(c.min_bundle);
            if c.max_rate > 0 {
                t.rate = (t.rate * 3 / 4).max(c.min_rate);
            }
        } else if p75 < c.low_loss {
            t.bundle = (t.bundle * 2).min(c.max_bundle);
            if c.max_rate > 0 {
                t.rate = (t.rate + t.rate / 10 + 1).min(c.max_rate);
            }
        }
        let bad = losses.iter().filter(|&&l| l > c.quiesce_loss).count();
        t.quiesce = bad * 2 > losses.len();
        self.tuning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_registrations_of_one_user_are_one_vote() {
        let mut reports = vec![("alice", 0.0), ("bob", 0.01)];
        reports.extend(std::iter::repeat_n(("mallory", 1.0), 200));
        let mut losses = losses_by_user(reports);
        losses.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(losses, vec![0.0, 0.01, 1.0]);
        let mut b = BundleController::new(AdaptConfig::default());
        assert!(!b.on_reports(&losses).quiesce);
        // A user's own registrations vote by their median.
        let l = losses_by_user([("carol", 0.9), ("carol", 0.0), ("carol", 0.8)]);
        assert_eq!(l, vec![0.8]);
        assert!(losses_by_user([]).is_empty());
    }

    #[test]
    fn bundles_grow_with_low_loss_and_shrink_with_high_loss() {
        let mut b = BundleController::new(AdaptConfig::default());
        let start = b.tuning();
        let high = b.on_reports(&[0.10, 0.08, 0.12]);
        assert!(high.bundle < start.bundle && high.rate < start.rate);
        let higher = b.on_reports(&[0.10, 0.08, 0.12]);
        assert!(higher.bundle < high.bundle);
        for _ in 0..20 {
            b.on_reports(&[0.5, 0.5, 0.5]);
        }
        assert_eq!(b.tuning().bundle, AdaptConfig::default().min_bundle);
        assert_eq!(b.tuning().rate, AdaptConfig::default().min_rate);
        assert!(b.tuning().quiesce, "most subscribers lose a lot");
        let low = b.on_reports(&[0.0, 0.001, 0.0]);
        assert!(low.bundle > AdaptConfig::default().min_bundle && !low.quiesce);
        for _ in 0..50 {
            b.on_reports(&[0.0, 0.0]);
        }
        assert_eq!(b.tuning(), start, "back to full size and rate");
        // One lossy subscriber out of four neither shrinks bundles nor quiesces.
        let t = b.on_reports(&[0.0, 0.0, 0.0, 0.4]);
        assert_eq!(t, start);
    }
}
