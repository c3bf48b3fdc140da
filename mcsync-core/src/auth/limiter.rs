//! Limits on authentication failures, per (address, user) and per address.

use crate::sync::Locked;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures counted since a window start, and the end of a block if one is in force.
pub(super) type FailureWindow = (u32, Instant, Option<Instant>);

/// How many times the per-user threshold one address may fail, over all user names, before
/// it is blocked for every user that has not logged in from it before.
pub(super) const ADDRESS_FACTOR: u32 = 10;

/// How long a successful login keeps its (address, user) exempt from an address block.
pub(super) const TRUSTED_FOR: Duration = Duration::from_secs(24 * 3600);

/// Limits authentication failures, per (source address, user) and per source address.
///
/// - After `max_failures` failures for one user from one address within `window`, that user
///   is refused from that address, unchecked, for `block_for`. Only that user's own success
///   clears that count: a valid credential cannot be interleaved to reset guesses for others.
/// - After `ADDRESS_FACTOR × max_failures` failures from one address over all user names
///   (password spraying, unknown users), the address is blocked for every user that has not
///   logged in successfully from it within a day. Hosts behind one NAT, or on one machine,
///   share an address: a user that is known there keeps getting in.
///
/// The publisher counts a login as a failure *before* its secret is checked
/// ([`attempt`](FailureLimiter::attempt)), and takes the count back if it turns out not to
/// be one ([`succeeded`](FailureLimiter::succeeded), [`withdraw`](FailureLimiter::withdraw)).
/// So many logins arriving at once cannot all pass the check before any failure is counted:
/// at most `max_failures` checks of one user, and `ADDRESS_FACTOR × max_failures` over all
/// users, run per address and window.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    block_for: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
pub(super) struct LimiterState {
    by_address: HashMap<IpAddr, FailureWindow>,
    by_user: HashMap<(IpAddr, String), FailureWindow>,
    trusted: HashMap<(IpAddr, String), Instant>,
}

/// Counts one failure in `w`; blocks when it reaches `max`. Returns the start of the window
/// it was counted in.
pub(super) fn count(
    w: &mut FailureWindow,
    now: Instant,
    window: Duration,
    max: u32,
    block_for: Duration,
) -> Instant {
    if now.duration_since(w.1) > window {
        *w = (0, now, None);
    }
    w.0 += 1;
    if w.0 >= max {
        w.2 = Some(now + block_for);
    }
    w.1
}

/// Takes back one failure counted in the window that started at `start` (if that window
/// is still the current one), as if it had never been counted: a block that it completed
/// is lifted.
pub(super) fn uncount(w: Option<&mut FailureWindow>, start: Instant, max: u32) {
    if let Some(w) = w.filter(|w| w.1 == start && w.0 > 0) {
        w.0 -= 1;
        if w.0 < max {
            w.2 = None;
        }
    }
}

/// A login counted in advance as a failure by [`FailureLimiter::attempt`], while its
/// secret is checked. Dropping it leaves the failure counted; [`FailureLimiter::succeeded`]
/// and [`FailureLimiter::withdraw`] take it back.
#[derive(Debug)]
#[must_use = "a login that did not fail must be given back to the limiter"]
pub struct Attempt {
    ip: IpAddr,
    user: String,
    /// Start of the per-user and of the per-address window it was counted in.
    user_window: Instant,
    address_window: Instant,
}

pub(super) fn blocked(w: Option<&FailureWindow>, now: Instant) -> bool {
    w.and_then(|&(_, _, until)| until)
        .is_some_and(|until| now < until)
}

impl FailureLimiter {
    /// A limiter with the given thresholds.
    pub fn new(max_failures: u32, window: Duration, block_for: Duration) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            block_for,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// Whether `user` from `ip` is currently refused without checking.
    pub fn is_blocked(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        let st = self.state.locked();
        Self::blocked_in(&st, ip, user, now)
    }

    fn blocked_in(st: &LimiterState, ip: IpAddr, user: &str, now: Instant) -> bool {
        let key = (ip, user.to_owned());
        if blocked(st.by_user.get(&key), now) {
            return true;
        }
        let trusted = st
            .trusted
            .get(&key)
            .is_some_and(|&at| now.duration_since(at) < TRUSTED_FOR);
        !trusted && blocked(st.by_address.get(&ip), now)
    }

    /// A login of `user` from `ip` is about to be checked: unless it is blocked (`None`,
    /// nothing counted), counts it as a failure now, in one step with the block check, and
    /// returns the [`Attempt`] to settle once the check is done.
    pub fn attempt(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Attempt> {
        let mut st = self.state.locked();
        if Self::blocked_in(&st, ip, user, now) {
            return None;
        }
        let (user_window, address_window) = self.count_in(&mut st, ip, user, now);
        Some(Attempt {
            ip,
            user: user.to_owned(),
            user_window,
            address_window,
        })
    }

    /// The attempt's login succeeded: takes its failure back from the address's count and
    /// records the success (see [`success`](FailureLimiter::success)).
    pub fn succeeded(&self, a: Attempt, now: Instant) {
        let mut st = self.state.locked();
        let max = self.address_max();
        uncount(st.by_address.get_mut(&a.ip), a.address_window, max);
        Self::success_in(&mut st, a.ip, &a.user, now);
    }

    /// The attempt's secret could not be checked (the server was busy): takes its failure
    /// back from both counts, so server load never counts against a user or an address.
    pub fn withdraw(&self, a: Attempt) {
        let mut st = self.state.locked();
        let (max, address_max) = (self.max_failures, self.address_max());
        uncount(st.by_user.get_mut(&(a.ip, a.user)), a.user_window, max);
        uncount(st.by_address.get_mut(&a.ip), a.address_window, address_max);
    }

    fn address_max(&self) -> u32 {
        self.max_failures.saturating_mul(ADDRESS_FACTOR)
    }

    /// Records a failed login of `user` from `ip`.
    pub fn failure(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.locked();
        self.count_in(&mut st, ip, user, now);
    }

    /// Counts a failure; returns the starts of the per-user and per-address windows it was
    /// counted in.
    fn count_in(
        &self,
        st: &mut LimiterState,
        ip: IpAddr,
        user: &str,
        now: Instant,
    ) -> (Instant, Instant) {
        if st.by_user.len() > 100_000 || st.by_address.len() > 100_000 {
            let keep = |&mut (_, start, until): &mut FailureWindow| {
                until.is_some_and(|u| now < u) || now.duration_since(start) < self.window
            };
            st.by_user.retain(|_, w| keep(w));
            st.by_address.retain(|_, w| keep(w));
        }
        let (window, max, block) = (self.window, self.max_failures, self.block_for);
        let w = st
            .by_user
            .entry((ip, user.to_owned()))
            .or_insert((0, now, None));
        let user_window = count(w, now, window, max, block);
        let w = st.by_address.entry(ip).or_insert((0, now, None));
        let address_window = count(w, now, window, self.address_max(), block);
        (user_window, address_window)
    }

    /// Records a successful login of `user` from `ip`: clears that user's failures there
    /// (not the address's) and exempts it from an address block for a day.
    pub fn success(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.locked();
        Self::success_in(&mut st, ip, user, now);
    }

    fn success_in(st: &mut LimiterState, ip: IpAddr, user: &str, now: Instant) {
        let key = (ip, user.to_owned());
        st.by_user.remove(&key);
        if st.trusted.len() > 100_000 {
            st.trusted
                .retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
        }
        st.trusted.insert(key, now);
    }
}
