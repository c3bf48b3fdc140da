//! Configuration of publishers and subscribers, with the defaults a user gets.

use crate::auth::Authenticator;
use crate::net::tls::{ServerIdentity, ServerTrust};
use crate::{Error, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod limits;
pub use limits::{parse_fingerprint, Limit, OutOfRange};

/// Default largest update (one master transaction, encoded): 16 MiB.
pub const DEFAULT_MAX_UPDATE_BYTES: usize = 16 * 1024 * 1024;
/// Default datagram size (header + sealed payload): fits a 1,500-byte MTU with IP/UDP headers.
pub const DEFAULT_DATAGRAM_BYTES: usize = 1400;
/// Smallest datagram size accepted.
pub const MIN_DATAGRAM_BYTES: usize = 256;
/// Largest datagram size accepted (UDP over IPv4 minus headers).
pub const MAX_DATAGRAM_BYTES: usize = 65_000;
/// Default [`MulticastConfig::max_backlog_bytes`]: 8 MiB. That is about 2.6 s of the lowest
/// adapted rate (3.2 MB/s, 5 % of the default pacing) and 0.13 s of the default 64 MB/s.
/// A longer backlog would only make subscribers later: they learn of newer versions from
/// what multicast carries, and fetch what was skipped from the journal at once.
pub const DEFAULT_MAX_BACKLOG_BYTES: usize = 8 << 20;

/// Default publisher pacing, payload bytes per second (64 MB/s: about 45,000 full
/// 1,400-byte datagrams per second).
pub const DEFAULT_MAX_BYTES_PER_SEC: u64 = 64_000_000;

/// How a publisher multicasts: group allocation, socket options, pacing, heartbeats.
#[derive(Debug, Clone)]
pub struct MulticastConfig {
    /// First group address of the range databases are given groups from. Must be an IPv4
    /// multicast address; 239.0.0.0/8 (administratively scoped) is advised.
    pub group: Ipv4Addr,
    /// Number of group addresses in the range (`group`, `group + 1`, ...).
    pub group_count: u32,
    /// First UDP port of the range.
    pub port: u16,
    /// Number of ports in the range. Database number `i` (in order of creation, stable
    /// across restarts) gets group `i % group_count` and port `i / group_count`.
    pub port_count: u16,
    /// Interface address to send from (`IP_MULTICAST_IF`); 127.0.0.1 keeps traffic on loopback.
    pub interface: Ipv4Addr,
    /// `IP_MULTICAST_TTL`: 0 stays on the host, 1 on the local network.
    pub ttl: u32,
    /// `IP_MULTICAST_LOOP`: deliver to receivers on this host (needed on loopback).
    pub loopback: bool,
    /// Largest datagram sent (header + sealed payload).
    pub datagram_bytes: usize,
    /// Pacing: most packets per second (0 = unlimited, the default: pacing is in bytes, so
    /// a 16 KiB update costs sixteen times the budget of a 1 KiB one rather than one
    /// packet's budget per 1,400-byte piece).
    pub max_packets_per_sec: u64,
    /// Pacing: most payload bytes per second (0 = unlimited). The default,
    /// [`DEFAULT_MAX_BYTES_PER_SEC`], leaves half of a 1 Gbit/s link to other traffic.
    /// Adaptation lowers the limit in force when subscribers report loss.
    pub max_bytes_per_sec: u64,
    /// Most encoded bytes bundled into one chain when updates queue up.
    pub max_bundle_bytes: usize,
    /// Bytes of recently sent datagrams kept per database for packet repair.
    pub retransmit_buffer_bytes: usize,
    /// First heartbeat after the last update.
    pub heartbeat_initial: Duration,
    /// Heartbeat interval while idle (the interval doubles up to this).
    pub heartbeat_max: Duration,
    /// Most bytes per database waiting to be multicast (updates queued and packets built but
    /// not yet sent). Past it, the updates waiting are not multicast: they are in the
    /// journal, and subscribers fetch them by unicast as soon as a later chain or a
    /// heartbeat shows them a newer version. Default [`DEFAULT_MAX_BACKLOG_BYTES`].
    pub max_backlog_bytes: usize,
    /// Most unicast-only subscribers per database the stream is pushed to (every datagram
    /// multicast is also sent to each of them, so egress grows by one stream per target).
    /// Past it a HELLO asking for push is still answered HELLO_OK, with push refused
    /// (logged and counted); that subscriber catches up by polling. 0 refuses every push.
    /// Default [`DEFAULT_MAX_UNICAST_TARGETS`].
    pub max_unicast_targets: usize,
}

/// Default [`MulticastConfig::max_unicast_targets`]: 32 unicast-only subscribers per
/// database, 32 copies of the stream's egress.
pub const DEFAULT_MAX_UNICAST_TARGETS: usize = 32;

impl MulticastConfig {
    /// Sets the group range from CIDR notation (`239.255.77.0/24`) and the ports from
    /// `first-last` (or a single port).
    pub fn set_ranges(&mut self, cidr: &str, ports: &str) -> Result<()> {
        let bad = |what: &str| Error::Config(what.to_owned());
        let (addr, len) = cidr
            .split_once('/')
            .ok_or_else(|| bad(&format!("group range {cidr:?} is not CIDR (a.b.c.d/n)")))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad(&format!("bad address in {cidr:?}")))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (4..=32).contains(l))
            .ok_or_else(|| bad(&format!("prefix length in {cidr:?} must be 4..=32")))?;
        let count = 1u64 << (32 - len);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let addr = Ipv4Addr::from(u32::from(addr) & mask);
        if !addr.is_multicast() {
            return Err(bad(&format!(
                "group range {cidr:?} is not multicast (224.0.0.0/4)"
            )));
        }
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u16>(), b.trim().parse::<u16>()),
            None => (ports.trim().parse::<u16>(), ports.trim().parse::<u16>()),
        };
        let (first, last) = match (first, last) {
            (Ok(a), Ok(b)) if a > 0 && a <= b => (a, b),
            _ => {
                return Err(bad(&format!(
                    "port range {ports:?} must be first-last, 1..=65535"
                )))
            }
        };
        self.group = addr;
        self.group_count = count.min(u64::from(u32::MAX)) as u32;
        self.port = first;
        self.port_count = last - first + 1;
        Ok(())
    }

    /// Checks every setting against [`limits`] and the ones that depend on each other.
    pub fn validate(&self) -> Result<()> {
        check_interface(self.interface, "multicast interface")?;
        limits::check_multicast_group(self.group)?;
        limits::MULTICAST_PORT.check(self.port)?;
        if self.group_count == 0 || self.port_count == 0 {
            return Err(Error::Config(
                "multicast group and port ranges must not be empty".into(),
            ));
        }
        if u32::from(self.port) + u32::from(self.port_count) > 65_536 {
            return Err(Error::Config("multicast port range passes 65535".into()));
        }
        limits::TTL.check(self.ttl)?;
        limits::DATAGRAM_BYTES.check(self.datagram_bytes)?;
        limits::MAX_BUNDLE_BYTES.check(self.max_bundle_bytes)?;
        limits::check_heartbeats(self.heartbeat_initial, self.heartbeat_max)?;
        limits::MAX_UNICAST_TARGETS.check(self.max_unicast_targets)?;
        Ok(())
    }
}

/// When a database is multicast. Outside the schedule updates are only journaled;
/// subscribers learn of them from heartbeats and catch up by unicast repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Always multicast (the default).
    Always,
    /// Never multicast: every subscriber catches up by unicast.
    Never,
    /// Multicast inside these daily windows, `(start, end)` in minutes after midnight UTC;
    /// a window with `end < start` runs over midnight.
    Windows(Vec<(u32, u32)>),
}

impl Schedule {
    /// Most windows a schedule holds.
    pub const MAX_WINDOWS: usize = 1440;

    /// Checks every window against [`limits::check_schedule_window`], and their number
    /// (at most [`MAX_WINDOWS`](Self::MAX_WINDOWS)).
    pub fn validate(&self) -> Result<()> {
        if let Schedule::Windows(w) = self {
            if w.len() > Self::MAX_WINDOWS {
                return Err(crate::Error::Config(format!(
                    "{} schedule windows, more than {}",
                    w.len(),
                    Self::MAX_WINDOWS
                )));
            }
            for (i, &(start, end)) in w.iter().enumerate() {
                limits::check_schedule_window(start, end)
                    .map_err(|e| crate::Error::Config(format!("schedule window {i}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Whether multicast is on at `minute_of_day` (0..1440, UTC).
    pub fn is_open(&self, minute_of_day: u32) -> bool {
        match self {
            Schedule::Always => true,
            Schedule::Never => false,
            Schedule::Windows(w) => w.iter().any(|&(a, b)| {
                if a <= b {
                    (a..b).contains(&minute_of_day)
                } else {
                    minute_of_day >= a || minute_of_day < b
                }
            }),
        }
    }
}

/// How much journal the publisher keeps. The oldest entries are removed while the journal
/// exceeds the size limit or they are older than the age limit, but never below
/// `min_count` entries. A subscriber that falls behind
/// the oldest kept version catches up by hash resync instead of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Most journal bytes kept per database (default 1 GiB).
    pub max_bytes: u64,
    /// Oldest entry kept (default 7 days).
    pub max_age: Duration,
    /// Fewest entries kept, whatever their size and age (default 10,000).
    pub min_count: u64,
    /// When free space in the data directory drops below this, the journal is trimmed to
    /// `min_count` and the condition is logged and counted (default 256 MiB).
    pub min_free_disk_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
            min_count: 10_000,
            min_free_disk_bytes: 256 << 20,
        }
    }
}

/// Who may subscribe.
#[derive(Clone)]
pub enum Authentication {
    /// Users and grants from a users file (see [`crate::auth::UsersFile`]); the default is
    /// `<data_dir>/users`.
    UsersFile(PathBuf),
    /// A host-supplied authenticator.
    Custom(Arc<dyn Authenticator>),
    /// Anyone may subscribe to every database with no access groups. For tests and demos.
    Open,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authentication::UsersFile(p) => write!(f, "UsersFile({})", p.display()),
            Authentication::Custom(_) => f.write_str("Custom(..)"),
            Authentication::Open => f.write_str("Open"),
        }
    }
}

impl Default for MulticastConfig {
    fn default() -> Self {
        MulticastConfig {
            group: Ipv4Addr::new(239, 255, 77, 1),
            group_count: 256,
            port: 47_100,
            port_count: 1,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            loopback: true,
            datagram_bytes: DEFAULT_DATAGRAM_BYTES,
            max_packets_per_sec: 0,
            max_bytes_per_sec: DEFAULT_MAX_BYTES_PER_SEC,
            max_bundle_bytes: 60 * 1024,
            retransmit_buffer_bytes: 64 << 20,
            heartbeat_initial: Duration::from_millis(5),
            heartbeat_max: Duration::from_secs(1),
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
            max_unicast_targets: DEFAULT_MAX_UNICAST_TARGETS,
        }
    }
}

/// When a commit returns to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once the update is journaled durably (LMDB commit with fsync; concurrent commits
    /// share one). The default: a version a caller was given survives a crash.
    #[default]
    Sync,
    /// Once its version is assigned. A journal writer thread group-commits right behind
    /// (at most [`ASYNC_MAX_PENDING`] updates wait for it; past that, commits wait for
    /// room), then multicasts. Far faster for a caller that commits one
    /// update at a time, e.g. from a host's update hook. A crash, or a journal failure, can
    /// lose the updates not yet journaled; they were never multicast, so no replica has
    /// them. Reads of the master state (`Database::get`) see an update once it is
    /// journaled; [`Publisher::flush`](crate::Publisher::flush) waits for that.
    Async,
}

/// Most acknowledged updates waiting for the journal writer with [`Durability::Async`]:
/// what a crash can lose.
pub const ASYNC_MAX_PENDING: usize = 8192;

/// Everything [`Publisher::open`](crate::Publisher::open) needs.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Directory of the publisher's LMDB store (created if missing).
    pub data_dir: PathBuf,
    /// Address the repair (control) server listens on; port 0 picks a free port.
    pub control_addr: SocketAddr,
    /// The certificate the control channel presents (default: self-signed, kept in the
    /// data directory).
    pub identity: ServerIdentity,
    /// Who may subscribe (default: the users file `<data_dir>/users`).
    pub authentication: Authentication,
    /// Rotate every database's key this often (`None`: only on revocation and on demand).
    pub key_rotation_interval: Option<std::time::Duration>,
    /// When to multicast.
    pub schedule: Schedule,
    /// How much journal to keep.
    pub retention: Retention,
    /// Rotate keys when a multicast window opens, so subscribers re-register.
    pub rotate_key_at_window_start: bool,
    /// Start a database's multicast only once a subscriber has registered for it.
    pub multicast_on_first_subscription: bool,
    /// Multicast settings.
    pub multicast: MulticastConfig,
    /// Largest encoded update accepted; larger commits fail with `TooLarge` and write nothing.
    pub max_update_bytes: usize,
    /// Initial LMDB map size; the map grows when full.
    pub map_size: usize,
    /// When commits return (default [`Durability::Sync`]).
    pub durability: Durability,
    /// A registration that neither reports nor makes a request for this long is dropped
    /// (default 5 minutes; subscribers report every `report_interval`, 1 s by default). It
    /// then no longer counts in the loss vote, nor as a two-phase participant; the
    /// subscriber's next report registers it again under the same id.
    pub registration_expiry: std::time::Duration,
}

/// Shortest [`PublisherConfig::registration_expiry`], and longest
/// [`SubscriberConfig::report_interval`]: a subscriber that reports must never expire.
pub const MIN_REGISTRATION_EXPIRY: std::time::Duration = std::time::Duration::from_secs(1);

impl PublisherConfig {
    /// A configuration with defaults, storing in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> PublisherConfig {
        let data_dir = data_dir.into();
        PublisherConfig {
            control_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            identity: ServerIdentity::SelfSigned,
            authentication: Authentication::UsersFile(data_dir.join("users")),
            key_rotation_interval: None,
            schedule: Schedule::Always,
            retention: Retention::default(),
            rotate_key_at_window_start: false,
            multicast_on_first_subscription: false,
            data_dir,
            multicast: MulticastConfig::default(),
            max_update_bytes: DEFAULT_MAX_UPDATE_BYTES,
            map_size: 256 << 20,
            durability: Durability::Sync,
            registration_expiry: std::time::Duration::from_secs(300),
        }
    }

    /// Checks every setting against [`limits`] and the ones that depend on each other
    /// (what [`Publisher::open`](crate::Publisher::open) refuses).
    pub fn validate(&self) -> Result<()> {
        limits::REGISTRATION_EXPIRY.check(self.registration_expiry)?;
        limits::MAX_UPDATE_BYTES.check(self.max_update_bytes)?;
        limits::MAP_SIZE.check(self.map_size)?;
        limits::RETENTION_MAX_AGE.check(self.retention.max_age)?;
        self.schedule.validate()?;
        if self.identity == ServerIdentity::InsecureLoopback {
            crate::net::tls::require_loopback(self.control_addr, "control address")?;
        }
        self.multicast.validate()
    }
}

/// Receive-side injected loss, for tests and the demo. Off unless set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// Fraction of packets dropped overall (0.0..=1.0), whatever the burst length.
    pub probability: f64,
    /// Packets dropped per burst (1 = independent losses).
    pub burst_len: u32,
    /// Seed of the generator, so a run can be repeated.
    pub seed: u64,
}

/// How a subscriber's replica store reaches the disk (see docs/OPERATIONS.md, "Replica
/// durability").
///
/// A replica is *recoverable*, not the durable truth: the publisher's journal is. Whatever
/// the mode, a kill -9 of the subscriber process loses nothing it applied (committed LMDB
/// transactions are in the OS page cache), and the host delivery cursor and the two-phase
/// `prepared` table live in the same LMDB environment, so they stay consistent with the
/// replica.
///
/// The modes differ on an **OS crash or power loss**:
///
/// - [`Sync`](ReplicaDurability::Sync): every apply commit is fsynced; nothing applied is
///   lost.
/// - [`Periodic`](ReplicaDurability::Periodic) and [`None`](ReplicaDurability::None): the
///   store is opened with `MDB_NOSYNC` and flushed once it has been idle for an interval
///   (and at least every 30 intervals under continuous applies) with `Periodic`, or only
///   at a clean close with `None`. LMDB does not keep a NOSYNC store consistent across a power
///   loss, so before the first unsynced commit the subscriber writes (durably) a marker
///   file `replica-unsynced` holding the boot id, and removes it after a flush that no
///   commit raced. A store found at open with a marker from another boot is not trusted:
///   its LMDB files are discarded, the replica starts empty at version 0 and catches up
///   from the publisher (counted in `replica_rebuilds`), and every host is handed a reset
///   (the whole state, [`Update::reset`](crate::Update::reset)). A participant's PREPARED
///   vote is made durable (fsync) before it is sent, in every mode.
///
/// The default is `Periodic(1 s)`: with 8 replicas on one disk an fsync per apply costs
/// most of the throughput (docs/BENCHMARKS.md, "Replica durability"), while a power loss
/// at worst costs a rebuild from the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaDurability {
    /// Fsync every apply commit (LMDB's default).
    Sync,
    /// `MDB_NOSYNC`, flushed (fsync) by a flusher thread that looks every interval: when no
    /// apply happened since it last looked, or 30 intervals after its last flush; and at
    /// clean close.
    Periodic(Duration),
    /// `MDB_NOSYNC`, flushed only at clean close.
    None,
}

impl Default for ReplicaDurability {
    fn default() -> ReplicaDurability {
        ReplicaDurability::Periodic(DEFAULT_REPLICA_FLUSH_INTERVAL)
    }
}

/// The flush interval of the default [`ReplicaDurability::Periodic`].
pub const DEFAULT_REPLICA_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The flush intervals [`ReplicaDurability::Periodic`] accepts (1 ms to 1 hour).
pub const REPLICA_FLUSH_INTERVAL: limits::Limit<Duration> = limits::Limit {
    name: "replica flush interval",
    min: Duration::from_millis(1),
    max: Duration::from_secs(3600),
};

impl ReplicaDurability {
    /// Parses `sync`, `none`, `periodic` (the default interval) or `periodic:<ms>`, as the
    /// CLI takes it.
    pub fn parse(text: &str) -> Result<ReplicaDurability> {
        let bad = || {
            Error::Config(format!(
                "replica durability {text:?}: expected sync, periodic, periodic:<ms> or none"
            ))
        };
        let d = match text.trim() {
            "sync" => ReplicaDurability::Sync,
            "none" => ReplicaDurability::None,
            "periodic" => ReplicaDurability::default(),
            other => {
                let ms = other
                    .strip_prefix("periodic:")
                    .ok_or_else(bad)?
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| bad())?;
                ReplicaDurability::Periodic(Duration::from_millis(ms))
            }
        };
        d.validate()?;
        Ok(d)
    }

    /// Checks the flush interval of `Periodic` against [`REPLICA_FLUSH_INTERVAL`].
    pub fn validate(&self) -> Result<()> {
        if let ReplicaDurability::Periodic(interval) = self {
            REPLICA_FLUSH_INTERVAL.check(*interval)?;
        }
        Ok(())
    }

    /// The mode as a number, for stats and the C API: 0 sync, 1 periodic, 2 none.
    pub fn code(&self) -> u64 {
        match self {
            ReplicaDurability::Sync => 0,
            ReplicaDurability::Periodic(_) => 1,
            ReplicaDurability::None => 2,
        }
    }
}

impl std::fmt::Display for ReplicaDurability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaDurability::Sync => f.write_str("sync"),
            ReplicaDurability::Periodic(i) => write!(f, "periodic:{}", i.as_millis()),
            ReplicaDurability::None => f.write_str("none"),
        }
    }
}

/// Everything [`Subscriber::open`](crate::Subscriber::open) needs.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Directory of the subscriber's LMDB store (created if missing).
    pub data_dir: PathBuf,
    /// The publisher's control address.
    pub server: SocketAddr,
    /// How to check the publisher's certificate.
    pub trust: ServerTrust,
    /// Name checked against the publisher's certificate with `ServerTrust::CaFile`
    /// (default: the server's IP address).
    pub server_name: Option<String>,
    /// User name presented at registration.
    pub user: String,
    /// The user's secret.
    pub secret: crate::auth::Secret,
    /// Interface to join groups on.
    pub interface: Ipv4Addr,
    /// Requested `SO_RCVBUF` (the kernel may grant less; stats report what was obtained).
    pub recv_buffer_bytes: usize,
    /// Packets queued between the receive and process threads.
    pub channel_capacity: usize,
    /// Bytes of out-of-order updates held while a gap is repaired.
    pub reorder_buffer_bytes: usize,
    /// Delay before a detected gap is repaired (lets reordered packets arrive first).
    pub repair_delay: Duration,
    /// Wait before retrying a failed repair.
    pub repair_retry: Duration,
    /// Timeout of one repair connection's reads and writes.
    pub repair_io_timeout: Duration,
    /// Largest encoded update accepted.
    pub max_update_bytes: usize,
    /// Injected loss (tests and demo only).
    pub loss: Option<LossConfig>,
    /// Initial LMDB map size; the map grows when full.
    pub map_size: usize,
    /// Name this subscriber gives in HELLO.
    pub client_name: String,
    /// With nothing heard from the publisher for this long, say HELLO again (the publisher
    /// may have restarted on another source port) and catch up.
    pub silence_timeout: Duration,
    /// A replica further behind than this many versions catches up compacted (the
    /// latest value of each changed key) instead of step by step (default 1,000).
    pub compact_catch_up_after: u64,
    /// How often the subscriber reports its reception to the publisher (default 1 s).
    pub report_interval: Duration,
    /// Loss over a report interval above which the subscriber re-registers, and, if it
    /// stays above at the next interval, leaves multicast to catch up by unicast
    /// (default 0.25).
    pub error_threshold: f64,
    /// How long it stays on unicast before rejoining multicast (default 10 s).
    pub unicast_backoff: Duration,
    /// Drop packets whose source address and port are not the publisher's. Leave on;
    /// turning it off only makes sense for tests that inject packets.
    pub verify_source: bool,
    /// How the replica store reaches the disk (default [`ReplicaDurability::Periodic`],
    /// every second): see [`ReplicaDurability`].
    pub replica_durability: ReplicaDurability,
    /// Unicast-only: do not join the group; ask the publisher to push the same sealed
    /// datagrams by unicast UDP to a socket bound on the local address of the control
    /// connection (for networks that carry no multicast). Default false. If the publisher
    /// refuses (its limit of unicast targets), the subscription catches up by polling.
    pub unicast: bool,
}

impl SubscriberConfig {
    /// A configuration with defaults, for the publisher at `server` checked as `trust` says.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        server: SocketAddr,
        trust: ServerTrust,
    ) -> SubscriberConfig {
        SubscriberConfig {
            data_dir: data_dir.into(),
            server,
            trust,
            server_name: None,
            user: String::new(),
            secret: crate::auth::Secret::default(),
            interface: Ipv4Addr::LOCALHOST,
            recv_buffer_bytes: 8 << 20,
            channel_capacity: 16_384,
            reorder_buffer_bytes: 64 << 20,
            repair_delay: Duration::from_millis(0),
            repair_retry: Duration::from_millis(100),
            repair_io_timeout: Duration::from_secs(10),
            max_update_bytes: DEFAULT_MAX_UPDATE_BYTES,
            loss: None,
            map_size: 256 << 20,
            client_name: "mcsync-subscriber".into(),
            verify_source: true,
            compact_catch_up_after: 1000,
            report_interval: Duration::from_secs(1),
            error_threshold: 0.25,
            unicast_backoff: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(3),
            replica_durability: ReplicaDurability::default(),
            unicast: false,
        }
    }

    /// Sets [`replica_durability`](SubscriberConfig::replica_durability).
    pub fn with_replica_durability(mut self, d: ReplicaDurability) -> SubscriberConfig {
        self.replica_durability = d;
        self
    }

    /// Checks every setting against [`limits`], and how the publisher is checked (what
    /// [`Subscriber::open`](crate::Subscriber::open) refuses).
    pub fn validate(&self) -> Result<()> {
        check_interface(self.interface, "subscriber interface")?;
        limits::SERVER_PORT.check(self.server.port())?;
        if let ServerTrust::Fingerprint(f) = &self.trust {
            parse_fingerprint(f)?;
        }
        if let Some(name) = &self.server_name {
            limits::SERVER_NAME_LEN.check_len(name)?;
        }
        // How the publisher is checked (the CA file, the server name, plaintext only to
        // loopback): refused now rather than at the first subscribe.
        crate::net::tls::ClientTls::new(&self.trust, self.server, self.server_name.as_deref())?;
        limits::USER_LEN.check_len(&self.user)?;
        limits::CLIENT_NAME_LEN.check_len(&self.client_name)?;
        if let Some(l) = &self.loss {
            limits::LOSS_PROBABILITY.check(l.probability)?;
            limits::LOSS_BURST_LEN.check(l.burst_len)?;
        }
        limits::SILENCE_TIMEOUT.check(self.silence_timeout)?;
        limits::RECV_BUFFER_BYTES.check(self.recv_buffer_bytes)?;
        limits::CHANNEL_CAPACITY.check(self.channel_capacity)?;
        limits::REORDER_BUFFER_BYTES.check(self.reorder_buffer_bytes)?;
        limits::REPAIR_DELAY.check(self.repair_delay)?;
        limits::REPAIR_RETRY.check(self.repair_retry)?;
        limits::REPAIR_IO_TIMEOUT.check(self.repair_io_timeout)?;
        limits::MAX_UPDATE_BYTES.check(self.max_update_bytes)?;
        limits::MAP_SIZE.check(self.map_size)?;
        self.replica_durability.validate()?;
        Ok(())
    }
}

/// An interface address must name one interface: 0.0.0.0 would join on whichever the
/// kernel picks and, on the subscriber, make every packet fail the source check.
fn check_interface(ip: Ipv4Addr, what: &str) -> Result<()> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(Error::Config(format!(
            "{what} {ip} does not name one interface; give the address of the interface to \
             use (127.0.0.1 for loopback)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod interface_tests {
    use super::*;

    #[test]
    fn an_unspecified_or_group_interface_is_refused_with_a_clear_error() {
        for bad in ["0.0.0.0", "239.1.2.3", "255.255.255.255"] {
            let ip: Ipv4Addr = bad.parse().unwrap();
            let mut s = SubscriberConfig::new(
                "/tmp/x",
                "127.0.0.1:1".parse().unwrap(),
                crate::ServerTrust::InsecureLoopback,
            );
            s.interface = ip;
            let e = s.validate().unwrap_err();
            assert!(e.to_string().contains("does not name one interface"), "{e}");
            let mut p = PublisherConfig::new("/tmp/x");
            p.multicast.interface = ip;
            assert!(p.validate().is_err(), "{bad}");
        }
        let s = SubscriberConfig::new(
            "/tmp/x",
            "127.0.0.1:1".parse().unwrap(),
            crate::ServerTrust::InsecureLoopback,
        );
        assert!(s.validate().is_ok());
    }

    #[test]
    fn how_the_publisher_is_checked_is_refused_at_open_when_malformed() {
        let config =
            |server: &str, trust| SubscriberConfig::new("/tmp/x", server.parse().unwrap(), trust);
        let fp = |f: &str| crate::ServerTrust::Fingerprint(f.to_owned());
        let e = config("127.0.0.1:1", fp("abc")).validate().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.to_string().contains("not 64 hex digits"), "{e}");
        let e = config("10.1.2.3:1", crate::ServerTrust::InsecureLoopback)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("loopback only"), "{e}");
        let e = config(
            "127.0.0.1:1",
            crate::ServerTrust::CaFile("/no/such/ca.pem".into()),
        )
        .validate()
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
        assert!(config("127.0.0.1:1", fp(&"Ab:".repeat(32)))
            .validate()
            .is_ok());
    }
}
