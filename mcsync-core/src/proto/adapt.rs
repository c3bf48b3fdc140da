//! Adapting the sender to the loss its subscribers report: bigger bundles and the full
//! configured rate while loss is low, smaller bundles and a lower rate when it rises, and
//! multicast quiesced (subscribers catch up by unicast) when most subscribers lose a lot.
//!
//! The rate is adapted as a fraction of the configured limits (per mille), so it scales
//! whichever the publisher paces by: bytes per second (the default, so a 16 KiB update
//! costs sixteen times the budget of a 1 KiB one, not one packet's budget per 1,400-byte
//! piece of it) or packets per second.

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

/// The full configured rate, in per mille.
pub const FULL_RATE: u32 = 1000;

/// Packets per second adaptation never paces below (unless the configured limit is lower).
pub const MIN_PACKETS_PER_SEC: u64 = 500;

/// Bytes per second adaptation never paces below (unless the configured limit is lower).
pub const MIN_BYTES_PER_SEC: u64 = 1_000_000;

/// The pacing limits `(packets_per_sec, bytes_per_sec)` at `permille` of the configured
/// ones. A limit of 0 (unlimited) stays unlimited; a scaled limit never drops below
/// [`MIN_PACKETS_PER_SEC`] / [`MIN_BYTES_PER_SEC`] or above what is configured.
pub fn scaled_rates(packets_per_sec: u64, bytes_per_sec: u64, permille: u32) -> (u64, u64) {
    let scale = |limit: u64, floor: u64| {
        if limit == 0 {
            0
        } else {
            (limit.saturating_mul(permille as u64) / FULL_RATE as u64)
                .clamp(floor.min(limit), limit)
        }
    };
    (
        scale(packets_per_sec, MIN_PACKETS_PER_SEC),
        scale(bytes_per_sec, MIN_BYTES_PER_SEC),
    )
}

/// Bounds and thresholds of the adaptation.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptConfig {
    /// Smallest bundle (bytes of encoded updates per chain).
    pub min_bundle: usize,
    /// Largest bundle.
    pub max_bundle: usize,
    /// Lowest rate adaptation goes down to, per mille of the configured limits.
    pub min_permille: u32,
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
            min_permille: 50,
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
    /// The rate in force, per mille of the configured limits ([`scaled_rates`]).
    pub permille: u32,
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
            permille: FULL_RATE,
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
            t.permille = (t.permille * 3 / 4).max(c.min_permille);
        } else if p75 < c.low_loss {
            t.bundle = (t.bundle * 2).min(c.max_bundle);
            t.permille = (t.permille + t.permille / 10 + 1).min(FULL_RATE);
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
        assert!(high.bundle < start.bundle && high.permille < start.permille);
        let higher = b.on_reports(&[0.10, 0.08, 0.12]);
        assert!(higher.bundle < high.bundle);
        for _ in 0..20 {
            b.on_reports(&[0.5, 0.5, 0.5]);
        }
        assert_eq!(b.tuning().bundle, AdaptConfig::default().min_bundle);
        assert_eq!(b.tuning().permille, AdaptConfig::default().min_permille);
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

    #[test]
    fn scaled_rates_scale_what_is_limited_within_floors() {
        assert_eq!(scaled_rates(0, 0, 50), (0, 0), "unlimited stays unlimited");
        assert_eq!(scaled_rates(0, 64_000_000, FULL_RATE), (0, 64_000_000));
        assert_eq!(scaled_rates(40_000, 0, 500), (20_000, 0));
        assert_eq!(scaled_rates(0, 64_000_000, 50), (0, 3_200_000));
        // Floors, but never above the configured limit.
        assert_eq!(scaled_rates(2_000, 2_000_000, 50), (500, 1_000_000));
        assert_eq!(scaled_rates(200, 300_000, 50), (200, 300_000));
    }
}
