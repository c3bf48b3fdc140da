//! The ranges numeric settings accept, and the parsers of checked text settings, in one
//! place. [`PublisherConfig::validate`](super::PublisherConfig) and
//! [`SubscriberConfig::validate`](super::SubscriberConfig) check against them, the C setters
//! check each argument against them as it is set, and the Python constructors go through
//! `validate`: Rust, C and Python refuse the same values with the same message.

use super::{MAX_DATAGRAM_BYTES, MIN_DATAGRAM_BYTES, MIN_REGISTRATION_EXPIRY};
use crate::Error;
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::time::Duration;

/// A setting outside the range it accepts. It becomes [`Error::Config`] in Rust and Python;
/// the C setters report it as `MCSYNC_ERR_RANGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutOfRange(String);

impl OutOfRange {
    /// A refusal with this message (which names the setting, the value and what it accepts).
    pub fn new(message: impl Into<String>) -> OutOfRange {
        OutOfRange(message.into())
    }

    /// What was refused and why.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<OutOfRange> for Error {
    fn from(e: OutOfRange) -> Error {
        Error::Config(e.0)
    }
}

/// The inclusive range one setting accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit<T> {
    /// The setting, as the Rust field and the Python keyword name it.
    pub name: &'static str,
    /// Smallest value accepted.
    pub min: T,
    /// Largest value accepted.
    pub max: T,
}

impl<T: PartialOrd + Copy + Debug> Limit<T> {
    /// `value` if it is in range; NaN never is.
    pub fn check(&self, value: T) -> Result<T, OutOfRange> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(OutOfRange(format!(
                "{} {value:?} outside {:?}..={:?}",
                self.name, self.min, self.max
            )))
        }
    }
}

impl Limit<usize> {
    /// `text` if its length in bytes is in range.
    pub fn check_len<'a>(&self, text: &'a str) -> Result<&'a str, OutOfRange> {
        self.check(text.len()).map(|_| text)
    }
}

const fn limit<T>(name: &'static str, min: T, max: T) -> Limit<T> {
    Limit { name, min, max }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

// Publisher settings.

/// [`MulticastConfig::datagram_bytes`](super::MulticastConfig::datagram_bytes).
pub const DATAGRAM_BYTES: Limit<usize> =
    limit("datagram_bytes", MIN_DATAGRAM_BYTES, MAX_DATAGRAM_BYTES);
/// `max_update_bytes` of both configurations: 1 KiB..=1 GiB.
pub const MAX_UPDATE_BYTES: Limit<usize> = limit("max_update_bytes", 1024, 1 << 30);
/// `map_size` of both configurations: at least 1 MiB.
pub const MAP_SIZE: Limit<usize> = limit("map_size", 1 << 20, usize::MAX);
/// [`MulticastConfig::ttl`](super::MulticastConfig::ttl).
pub const TTL: Limit<u32> = limit("ttl", 0, 255);
/// [`MulticastConfig::port`](super::MulticastConfig::port).
pub const MULTICAST_PORT: Limit<u16> = limit("port", 1, u16::MAX);
/// [`MulticastConfig::max_bundle_bytes`](super::MulticastConfig::max_bundle_bytes).
pub const MAX_BUNDLE_BYTES: Limit<usize> = limit("max_bundle_bytes", 1024, 16 << 20);
/// [`MulticastConfig::max_unicast_targets`](super::MulticastConfig::max_unicast_targets):
/// 0..=4096 (each target is one more copy of the stream).
pub const MAX_UNICAST_TARGETS: Limit<usize> = limit("max_unicast_targets", 0, 4096);
/// [`MulticastConfig::heartbeat_initial`](super::MulticastConfig::heartbeat_initial).
pub const HEARTBEAT_INITIAL: Limit<Duration> = limit("heartbeat_initial", MS, HOUR);
/// [`MulticastConfig::heartbeat_max`](super::MulticastConfig::heartbeat_max); also at least
/// `heartbeat_initial` (see [`check_heartbeats`]).
pub const HEARTBEAT_MAX: Limit<Duration> = limit("heartbeat_max", MS, HOUR);
/// [`PublisherConfig::registration_expiry`](super::PublisherConfig::registration_expiry).
pub const REGISTRATION_EXPIRY: Limit<Duration> = limit(
    "registration_expiry",
    MIN_REGISTRATION_EXPIRY,
    Duration::MAX,
);
/// [`Retention::max_age`](super::Retention::max_age): the store keeps it in microseconds.
pub const RETENTION_MAX_AGE: Limit<Duration> = limit(
    "retention_max_age",
    Duration::ZERO,
    Duration::from_millis(u64::MAX / 1000),
);
/// First minute of a schedule window (after midnight UTC).
pub const SCHEDULE_WINDOW_START: Limit<u32> = limit("schedule window start (minute)", 0, 1439);
/// Minute a schedule window ends (exclusive).
pub const SCHEDULE_WINDOW_END: Limit<u32> = limit("schedule window end (minute)", 0, 1440);

// Subscriber settings.

/// Port of [`SubscriberConfig::server`](super::SubscriberConfig::server).
pub const SERVER_PORT: Limit<u16> = limit("server port", 1, u16::MAX);
/// Length in bytes of [`SubscriberConfig::server_name`](super::SubscriberConfig::server_name).
pub const SERVER_NAME_LEN: Limit<usize> = limit("server_name length", 1, 255);
/// Length in bytes of [`SubscriberConfig::user`](super::SubscriberConfig::user).
pub const USER_LEN: Limit<usize> = limit("user name length", 0, 255);
/// Length in bytes of [`SubscriberConfig::client_name`](super::SubscriberConfig::client_name).
pub const CLIENT_NAME_LEN: Limit<usize> = limit("client_name length", 1, 255);
/// [`SubscriberConfig::silence_timeout`](super::SubscriberConfig::silence_timeout).
pub const SILENCE_TIMEOUT: Limit<Duration> =
    limit("silence_timeout", Duration::from_millis(100), HOUR);
/// [`SubscriberConfig::recv_buffer_bytes`](super::SubscriberConfig::recv_buffer_bytes).
pub const RECV_BUFFER_BYTES: Limit<usize> = limit("recv_buffer_bytes", 4096, 1 << 30);
/// [`SubscriberConfig::channel_capacity`](super::SubscriberConfig::channel_capacity).
pub const CHANNEL_CAPACITY: Limit<usize> = limit("channel_capacity", 1, 1 << 20);
/// [`SubscriberConfig::reorder_buffer_bytes`](super::SubscriberConfig::reorder_buffer_bytes).
pub const REORDER_BUFFER_BYTES: Limit<usize> = limit("reorder_buffer_bytes", 64 << 10, usize::MAX);
/// [`SubscriberConfig::repair_delay`](super::SubscriberConfig::repair_delay).
pub const REPAIR_DELAY: Limit<Duration> = limit("repair_delay", Duration::ZERO, MINUTE);
/// [`SubscriberConfig::repair_retry`](super::SubscriberConfig::repair_retry).
pub const REPAIR_RETRY: Limit<Duration> = limit("repair_retry", MS, MINUTE);
/// [`SubscriberConfig::repair_io_timeout`](super::SubscriberConfig::repair_io_timeout).
pub const REPAIR_IO_TIMEOUT: Limit<Duration> = limit("repair_io_timeout", MS, HOUR);
/// [`LossConfig::probability`](super::LossConfig::probability).
pub const LOSS_PROBABILITY: Limit<f64> = limit("loss probability", 0.0, 1.0);
/// [`LossConfig::burst_len`](super::LossConfig::burst_len).
pub const LOSS_BURST_LEN: Limit<u32> = limit("loss burst length", 1, u32::MAX);

/// Checks both heartbeat intervals and that the first is not longer than the idle one.
pub fn check_heartbeats(initial: Duration, max: Duration) -> Result<(), OutOfRange> {
    HEARTBEAT_INITIAL.check(initial)?;
    HEARTBEAT_MAX.check(max)?;
    if max < initial {
        return Err(OutOfRange(format!(
            "heartbeat_max {max:?} is below heartbeat_initial {initial:?}"
        )));
    }
    Ok(())
}

/// Checks one daily schedule window, `(start, end)` in minutes after midnight UTC.
pub fn check_schedule_window(start: u32, end: u32) -> Result<(u32, u32), OutOfRange> {
    Ok((
        SCHEDULE_WINDOW_START.check(start)?,
        SCHEDULE_WINDOW_END.check(end)?,
    ))
}

/// Checks a multicast group address.
pub fn check_multicast_group(group: Ipv4Addr) -> crate::Result<Ipv4Addr> {
    if !group.is_multicast() {
        return Err(Error::Config(format!(
            "multicast group {group} is not a multicast address (224.0.0.0/4)"
        )));
    }
    Ok(group)
}

/// Parses a SHA-256 certificate fingerprint: 64 hex digits in either case, colons allowed
/// between them (as `openssl x509 -fingerprint` prints it). Returns 64 lowercase digits.
pub fn parse_fingerprint(text: &str) -> crate::Result<String> {
    let digits: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Config(format!(
            "fingerprint {text:?} is not 64 hex digits (SHA-256)"
        )));
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_names_the_setting_the_value_and_the_range() {
        assert_eq!(TTL.check(255), Ok(255));
        let e = TTL.check(256).unwrap_err();
        assert_eq!(e.message(), "ttl 256 outside 0..=255");
        let e = SILENCE_TIMEOUT.check(Duration::from_millis(5)).unwrap_err();
        assert_eq!(e.message(), "silence_timeout 5ms outside 100ms..=3600s");
        let e: Error = CLIENT_NAME_LEN.check_len("").unwrap_err().into();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("client_name length 0 outside 1..=255"),
            "{e}"
        );
    }

    #[test]
    fn nan_is_never_in_range() {
        assert!(LOSS_PROBABILITY.check(f64::NAN).is_err());
        assert!(LOSS_PROBABILITY.check(1.5).is_err());
        assert_eq!(LOSS_PROBABILITY.check(0.25), Ok(0.25));
    }

    #[test]
    fn heartbeats_must_not_shrink_and_windows_stay_in_the_day() {
        assert!(check_heartbeats(5 * MS, 1000 * MS).is_ok());
        let e = check_heartbeats(100 * MS, 10 * MS).unwrap_err();
        assert!(e.message().contains("below heartbeat_initial"), "{e}");
        assert!(check_heartbeats(Duration::ZERO, MS).is_err());
        assert_eq!(check_schedule_window(1380, 60), Ok((1380, 60)));
        assert!(check_schedule_window(1440, 10).is_err());
        use crate::Schedule;
        assert!(Schedule::Windows(vec![(0, 60), (1380, 60)])
            .validate()
            .is_ok());
        let e = Schedule::Windows(vec![(0, 60), (1440, 10)])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("schedule window 1"), "{e}");
        assert!(Schedule::Windows(vec![(0, 1); 1441]).validate().is_err());
        assert!(check_schedule_window(0, 1441).is_err());
    }

    #[test]
    fn a_fingerprint_is_64_hex_digits_with_optional_colons() {
        let upper = ["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&upper).unwrap(), "ab".repeat(32));
        for bad in ["abc", &"zz".repeat(32), &"00".repeat(31), ""] {
            let e = parse_fingerprint(bad).unwrap_err();
            assert!(e.to_string().contains("not 64 hex digits"), "{e}");
        }
    }
}
