//! Maintenance: journal retention, adaptation to subscriber reports, quiescing, the
//! multicast schedule and key rotation. The decisions are functions of `now` and state
//! ([`quiesce_after`], [`multicast_wanted`], [`rotation_due`], [`retention_policy`],
//! [`minute_of_day`]); the thread that applies them reads the clock once per turn.

use super::database::{send_mcast, DbShared};
use super::Inner;
use crate::config::Retention;
use crate::crypto::Key;
use crate::net::multicaster::{McastCmd, DECISION_REPEAT_FOR};
use crate::net::wall_clock_us;
use crate::proto::adapt::{losses_by_user, scaled_rates};
use crate::stats::{add, inc};
use crate::sync::Locked;
use crate::Result;
use crossbeam_channel as chan;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// How often the maintenance thread looks at the schedule.
const TICK: Duration = Duration::from_millis(50);
/// How often retention, report adaptation and registration expiry run.
const SLOW_TICK: Duration = Duration::from_secs(1);

/// Longest a rotation waits for the multicaster to seal under the new epoch.
const REKEY_WAIT: Duration = Duration::from_secs(2);

/// Draws a new key epoch and key for `db`, hands it to the multicaster, and keeps the
/// previous key for a bounded grace (packets already built, late packets, repairs).
///
/// Rotations of one database are serialized (revocation, the schedule, an authenticator
/// refusal and `rotate_key` may race), and each waits until the multicaster sealed under
/// the new epoch (up to [`REKEY_WAIT`]): epochs are drawn, installed and sent in one order,
/// and the key handed out as "previous" is the one the multicaster was using.
pub(super) fn rotate(inner: &Inner, db: &DbShared) -> Result<u32> {
    let _one = db.rotating.locked();
    let epoch = inner.store.next_key_epoch(&db.name)?;
    let key = Key::generate();
    db.keys.locked().rotate(epoch, key.clone());
    *db.last_rotation.locked() = Instant::now();
    let (done, switched) = chan::bounded(1);
    let sent = db
        .mcast_tx
        .locked()
        .as_ref()
        .is_some_and(|tx| tx.send(McastCmd::Rekey { epoch, key, done }).is_ok());
    if sent && switched.recv_timeout(REKEY_WAIT).is_err() {
        log::warn!(
            "database {:?}: the multicaster did not switch to key epoch {epoch} within \
             {REKEY_WAIT:?}",
            db.name
        );
    }
    inc(&inner.counters.key_rotations);
    log::info!("database {:?}: key rotated to epoch {epoch}", db.name);
    Ok(epoch)
}

/// The retention policy to apply: the configured one, or its minimum when the disk has less
/// than `min_free_disk_bytes` free (`free_disk`; `None` when unknown). The flag says the disk
/// runs low.
pub(super) fn retention_policy(
    configured: &Retention,
    free_disk: Option<u64>,
) -> (Retention, bool) {
    let mut policy = configured.clone();
    let low = free_disk.is_some_and(|f| f < policy.min_free_disk_bytes);
    if low {
        policy.max_bytes = 0;
        policy.max_age = Duration::ZERO;
    }
    (policy, low)
}

/// Trims each database's journal per the retention policy (down to the minimum count
/// when the disk runs low, which is logged and counted).
pub(super) fn apply_retention(inner: &Inner) -> Result<u64> {
    let free = crate::store::free_disk_bytes(&inner.config.data_dir);
    let (policy, low) = retention_policy(&inner.config.retention, free);
    if low {
        inc(&inner.counters.disk_low);
        log::error!(
            "data directory {} has less than {} bytes free: trimming journals to their minimum",
            inner.config.data_dir.display(),
            policy.min_free_disk_bytes
        );
    }
    let dbs: Vec<_> = inner.database_list();
    let mut total = 0;
    for db in dbs {
        loop {
            let n =
                inner
                    .store
                    .trim_journal(&db.name, db.tables, &policy, wall_clock_us(), 10_000)?;
            total += n;
            add(&inner.counters.journal_trimmed, n);
            if n < 10_000 {
                break;
            }
        }
        let oldest = inner.store.oldest_version(db.tables)?;
        if oldest > 0 && db.oldest.swap(oldest, Ordering::SeqCst) != oldest {
            send_mcast(&db, McastCmd::Oldest(oldest));
        }
    }
    Ok(total)
}

/// How long a quiesced database stays quiet before multicast is tried again.
const QUIESCE_FOR: Duration = Duration::from_secs(5);
/// Reports older than this are not used.
const REPORT_FRESH: Duration = Duration::from_secs(5);

/// Whether a report received at `at` is recent enough at `now` to adapt to.
fn is_fresh(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) < REPORT_FRESH
}

/// The quiescing state after a round of reports at `now`: `state` is since when multicast is
/// paused (if it is), `wants` what the bundle controller says (`None` when nobody on
/// multicast reports). A pause starts at once and lasts at least [`QUIESCE_FOR`]; with
/// nobody reporting it has nothing left to protect once that minimum is over.
pub(super) fn quiesce_after(
    state: Option<Instant>,
    wants: Option<bool>,
    now: Instant,
) -> Option<Instant> {
    match (state, wants) {
        (None, Some(true)) => Some(now),
        (Some(since), None | Some(false))
            if now.saturating_duration_since(since) >= QUIESCE_FOR =>
        {
            None
        }
        (state, _) => state,
    }
}

/// Whether a database should multicast: its window is open, it is not quiesced, and (when
/// so configured) someone subscribed.
pub(super) fn multicast_wanted(
    window_open: bool,
    quiesced: bool,
    on_first_subscription: bool,
    registered: bool,
) -> bool {
    window_open && !quiesced && (!on_first_subscription || registered)
}

/// Whether a key last rotated at `last` is due for its timed rotation at `now`.
pub(super) fn rotation_due(last: Instant, every: Option<Duration>, now: Instant) -> bool {
    every.is_some_and(|every| now.saturating_duration_since(last) >= every)
}

/// Minute of the day, UTC, at wall-clock time `now_us` (microseconds since the epoch).
pub(super) fn minute_of_day(now_us: u64) -> u32 {
    ((now_us / 60_000_000) % 1440) as u32
}

/// Feeds each database's recent subscriber reports to its bundle controller and applies
/// the result: bundle size and rate to the multicaster, and quiescing when most
/// subscribers lose too much (they catch up by unicast meanwhile).
fn adapt_to_reports(inner: &Inner, now: Instant) {
    let reports: Vec<(String, String, f64)> = inner
        .server_ctx
        .registry
        .locked()
        .values()
        .filter_map(|r| {
            let (rep, at) = r.report?;
            (is_fresh(at, now) && !rep.unicast_only).then(|| {
                (
                    r.database.clone(),
                    r.user.clone(),
                    f64::from(rep.loss_ppm) / 1e6,
                )
            })
        })
        .collect();
    for db in inner.database_list() {
        // One vote per user (the median of its registrations' reports).
        let losses = losses_by_user(
            reports
                .iter()
                .filter(|(d, _, _)| *d == db.name)
                .map(|(_, user, loss)| (user.as_str(), *loss)),
        );
        let wants = (!losses.is_empty()).then(|| tune(inner, &db, &losses));
        let mut q = db.quiesced.locked();
        let after = quiesce_after(*q, wants, now);
        if q.is_none() && after.is_some() {
            log::warn!(
                "database {:?}: most subscribers lose too much; multicast paused",
                db.name
            );
            inc(&inner.counters.quiesces);
        }
        *q = after;
    }
}

/// Hands `losses` to the database's bundle controller, applies its bundle size and rate;
/// returns whether it wants multicast quiesced.
fn tune(inner: &Inner, db: &DbShared, losses: &[f64]) -> bool {
    let (before, after) = {
        let mut a = db.adapt.locked();
        let before = a.tuning();
        (before, a.on_reports(losses))
    };
    if (after.bundle, after.permille) != (before.bundle, before.permille) {
        send_mcast(
            db,
            McastCmd::Tune {
                bundle_bytes: after.bundle,
                rate_permille: after.permille,
            },
        );
    }
    let m = &inner.config.multicast;
    let (packets, bytes) = scaled_rates(m.max_packets_per_sec, m.max_bytes_per_sec, after.permille);
    inner
        .counters
        .bundle_bytes
        .store(after.bundle as u64, Ordering::Relaxed);
    inner
        .counters
        .packets_per_sec
        .store(packets, Ordering::Relaxed);
    inner.counters.bytes_per_sec.store(bytes, Ordering::Relaxed);
    after.quiesce
}

/// Applies the schedule (multicast windows, multicast on first subscription) and timed
/// key rotation, every 50 ms, until the publisher closes.
pub(super) fn maintenance_loop(weak: Weak<Inner>) {
    let mut last_slow = Instant::now();
    loop {
        std::thread::sleep(TICK);
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.is_stopped() {
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(last_slow) >= SLOW_TICK {
            last_slow = now;
            every_second(&inner, now);
        }
        apply_schedule(&inner, now, wall_clock_us());
    }
}

/// Registration expiry, adaptation to reports, retention, and failed two-phase participants.
fn every_second(inner: &Inner, now: Instant) {
    let expired = inner
        .server_ctx
        .expire_registrations(now, inner.config.registration_expiry);
    add(&inner.counters.registrations_expired, expired as u64);
    adapt_to_reports(inner, now);
    if let Err(e) = apply_retention(inner) {
        log::error!("journal retention failed: {e}");
    }
    let overdue = inner.server_ctx.two_phase.overdue(now, DECISION_REPEAT_FOR);
    for (db, version, names) in overdue {
        log::warn!(
            "database {db:?}: no acknowledgement of the two-phase decision on version \
             {version} from {} within {DECISION_REPEAT_FOR:?}; declared failed (they \
             learn the outcome from later versions or after a restart)",
            names.join(", ")
        );
        add(
            &inner.counters.two_phase_participants_failed,
            names.len() as u64,
        );
    }
}

/// Turns each database's multicast on or off as the schedule, quiescing and subscriptions
/// say (rotating the key at a window's start if configured), and rotates keys on time.
fn apply_schedule(inner: &Inner, now: Instant, now_us: u64) {
    let open = inner.schedule.locked().is_open(minute_of_day(now_us));
    for db in inner.database_list() {
        // Quiescing silences the group, not the stream: unicast push targets (whose
        // loss is their own) keep getting it. The multicaster turns updates off when
        // nobody would receive them.
        let quiesced = db.quiesced.locked().is_some();
        if db.group_quiesced.swap(quiesced, Ordering::SeqCst) != quiesced {
            send_mcast(&db, McastCmd::Quiesce(quiesced));
        }
        let want = multicast_wanted(
            open,
            false,
            inner.config.multicast_on_first_subscription,
            db.registered.load(Ordering::SeqCst),
        );
        if db.multicast_on.swap(want, Ordering::SeqCst) != want {
            send_mcast(&db, McastCmd::Multicast(want));
            if want && inner.config.rotate_key_at_window_start {
                let _ = rotate(inner, &db);
            }
        }
        let last = *db.last_rotation.locked();
        if rotation_due(last, inner.config.key_rotation_interval, now) {
            if let Err(e) = rotate(inner, &db) {
                log::error!("database {:?}: key rotation failed: {e}", db.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_starts_at_once_and_lasts_at_least_its_minimum() {
        let t0 = Instant::now();
        let paused = quiesce_after(None, Some(true), t0);
        assert_eq!(paused, Some(t0));
        assert_eq!(quiesce_after(None, Some(false), t0), None);
        assert_eq!(quiesce_after(None, None, t0), None);
        let soon = t0 + QUIESCE_FOR / 2;
        assert_eq!(
            quiesce_after(paused, Some(false), soon),
            paused,
            "too early"
        );
        assert_eq!(quiesce_after(paused, None, soon), paused, "too early");
        let later = t0 + QUIESCE_FOR;
        assert_eq!(
            quiesce_after(paused, Some(true), later),
            paused,
            "still lossy"
        );
        assert_eq!(quiesce_after(paused, Some(false), later), None);
        assert_eq!(
            quiesce_after(paused, None, later),
            None,
            "nobody left to protect"
        );
    }

    #[test]
    fn multicast_needs_an_open_window_no_pause_and_a_subscriber_when_asked() {
        assert!(multicast_wanted(true, false, false, false));
        assert!(!multicast_wanted(false, false, false, true));
        assert!(!multicast_wanted(true, true, false, true));
        assert!(!multicast_wanted(true, false, true, false));
        assert!(multicast_wanted(true, false, true, true));
    }

    #[test]
    fn timed_rotation_is_due_after_its_interval_only() {
        let t0 = Instant::now();
        let every = Some(Duration::from_secs(60));
        assert!(!rotation_due(t0, every, t0 + Duration::from_secs(59)));
        assert!(rotation_due(t0, every, t0 + Duration::from_secs(60)));
        assert!(!rotation_due(t0, None, t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn a_low_disk_trims_to_the_minimum() {
        let configured = Retention::default();
        let min = configured.min_free_disk_bytes;
        let (p, low) = retention_policy(&configured, Some(min + 1));
        assert!(!low);
        assert_eq!(
            (p.max_bytes, p.max_age),
            (configured.max_bytes, configured.max_age)
        );
        let (p, low) = retention_policy(&configured, Some(min - 1));
        assert!(low);
        assert_eq!((p.max_bytes, p.max_age), (0, Duration::ZERO));
        assert!(!retention_policy(&configured, None).1, "unknown is not low");
    }

    #[test]
    fn minutes_of_the_day_wrap_at_midnight() {
        assert_eq!(minute_of_day(0), 0);
        assert_eq!(minute_of_day(61 * 60_000_000), 61);
        assert_eq!(minute_of_day(1441 * 60_000_000 + 59_999_999), 1);
    }

    #[test]
    fn reports_go_stale_after_their_freshness() {
        let t0 = Instant::now();
        assert!(is_fresh(t0, t0 + REPORT_FRESH - Duration::from_millis(1)));
        assert!(!is_fresh(t0, t0 + REPORT_FRESH));
        assert!(
            is_fresh(t0 + Duration::from_secs(1), t0),
            "a report from the future"
        );
    }
}
