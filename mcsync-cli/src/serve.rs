//! `mcsync serve`, `mcsync subscribe`, `mcsync status`, `mcsync users`.

use clap::{Args, Subcommand};
use mcsync::auth::UsersFile;
use mcsync::{
    Authentication, Publisher, PublisherConfig, ServerIdentity, ServerTrust, Subscriber,
    SubscriberConfig,
};
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::metrics_http::{self, MetricsServer};

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Options of `mcsync serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Data directory of the publisher's store (also holds the self-signed certificate).
    #[arg(long)]
    data_dir: PathBuf,
    /// Database to publish standard input into.
    #[arg(long, default_value = "default")]
    database: String,
    /// Control (registration and repair) address to listen on.
    #[arg(long, default_value = "127.0.0.1:47000")]
    listen: SocketAddr,
    /// Users file (see `mcsync users add`); default `<data-dir>/users`.
    #[arg(long)]
    users: Option<PathBuf>,
    /// TLS certificate chain (PEM); without it a self-signed certificate is generated.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Multicast group range (CIDR).
    #[arg(long, default_value = "239.255.77.0/24")]
    groups: String,
    /// Multicast port range (`first-last`).
    #[arg(long, default_value = "47100-47109")]
    ports: String,
    /// Interface to multicast from.
    #[arg(long, default_value = "127.0.0.1")]
    interface: Ipv4Addr,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477; port 0 picks
    /// a free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// When each line's commit returns: `sync` (journaled durably, the default) or `async`
    /// (version assigned; the journal writer group-commits behind it).
    #[arg(long, value_enum, default_value_t = crate::bench::DurabilityArg::Sync)]
    durability: crate::bench::DurabilityArg,
    /// Most unicast-only subscribers (`--unicast`) each database is pushed to; past it
    /// they catch up by polling.
    #[arg(long, default_value_t = mcsync::config::DEFAULT_MAX_UNICAST_TARGETS)]
    max_unicast_targets: usize,
}

/// How a subscribing command reaches the publisher, proves who it is, and where it
/// receives multicast: the options `mcsync subscribe`, `mcsync verify` and `mcsync resync`
/// share.
#[derive(Args)]
pub struct ConnectArgs {
    /// Publisher's control address.
    #[arg(long, default_value = "127.0.0.1:47000")]
    server: SocketAddr,
    /// User name.
    #[arg(long)]
    user: String,
    /// File whose first line is the password (default: the MCSYNC_PASSWORD variable).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Pinned SHA-256 fingerprint of the publisher's certificate (`mcsync serve` prints it).
    #[arg(long, conflicts_with = "ca_file")]
    fingerprint: Option<String>,
    /// CA certificates (PEM) to verify the publisher with.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Name to verify in the publisher's certificate (with --ca-file).
    #[arg(long)]
    server_name: Option<String>,
    /// Address of the local interface to join the multicast group on (the one facing the
    /// publisher's --interface); it must be assigned to an interface of this host.
    #[arg(long, default_value = "127.0.0.1")]
    interface: Ipv4Addr,
    /// Unicast-only: do not join the group; the publisher pushes the same sealed datagrams
    /// by unicast UDP to this host (at the address of the control connection). For
    /// networks that carry no multicast (clouds, WAN links).
    #[arg(long)]
    unicast: bool,
    /// Testing and demos: drop this fraction (0..=1) of the datagrams received, at random
    /// (seeded by the process id), as a lossy link would. Repair recovers them.
    #[arg(long, value_name = "FRACTION")]
    inject_loss: Option<f64>,
}

impl ConnectArgs {
    /// A subscriber configuration storing in `data_dir` for the publisher these name; the
    /// fingerprint is checked by core's parser, the password read from its file or the
    /// environment.
    pub(crate) fn subscriber_config(
        &self,
        data_dir: &Path,
    ) -> Result<SubscriberConfig, Box<dyn std::error::Error>> {
        let trust = match (&self.fingerprint, &self.ca_file) {
            (Some(f), _) => ServerTrust::Fingerprint(mcsync::config::parse_fingerprint(f)?),
            (None, Some(c)) => ServerTrust::CaFile(c.clone()),
            (None, None) => {
                return Err("give --fingerprint or --ca-file to verify the publisher".into())
            }
        };
        if !self.unicast {
            check_local_address(self.interface)?;
        }
        let mut cfg = SubscriberConfig::new(data_dir, self.server, trust);
        cfg.interface = self.interface;
        cfg.unicast = self.unicast;
        if let Some(p) = self.inject_loss {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("--inject-loss {p} outside 0..=1").into());
            }
            cfg.loss = Some(mcsync::LossConfig {
                probability: p,
                burst_len: 1,
                seed: u64::from(std::process::id()),
            });
        }
        cfg.server_name = self.server_name.clone();
        cfg.user = self.user.clone();
        cfg.secret = read_password(self.password_file.as_ref())?.into();
        Ok(cfg)
    }
}

/// The IPv4 addresses assigned to this host's interfaces, with the interfaces' names.
fn local_ipv4_addresses() -> std::io::Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below by freeifaddrs; every node
    // and address it points to stays valid until then, and is only read.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut node = head;
        while !node.is_null() {
            let ifa = &*node;
            let addr = ifa.ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                    .to_string_lossy()
                    .into_owned();
                out.push((name, ip));
            }
            node = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
        Ok(out)
    }
}

/// Refuses an `--interface` address that no interface of this host has (the group would
/// be joined nowhere, and nothing would arrive by multicast).
fn check_local_address(ip: Ipv4Addr) -> Result<(), Box<dyn std::error::Error>> {
    let local = local_ipv4_addresses().map_err(|e| format!("listing interfaces: {e}"))?;
    if local.iter().any(|(_, a)| *a == ip) {
        return Ok(());
    }
    let have: Vec<String> = local.iter().map(|(n, a)| format!("{a} ({n})")).collect();
    Err(format!(
        "--interface {ip} is not assigned to any interface of this host; give the address \
         of the interface facing the publisher (this host has: {})",
        have.join(", ")
    )
    .into())
}

/// Options of `mcsync subscribe`.
#[derive(Args)]
pub struct SubscribeArgs {
    /// Data directory of the subscriber's store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Database to replicate.
    #[arg(long, default_value = "default")]
    database: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port, printed
    /// at start).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How the replica reaches the disk: `sync` (fsync every apply), `periodic:<ms>`
    /// (flush every <ms>; `periodic` alone is every 1000 ms, the default) or `none` (flush
    /// only at a clean close). Nothing applied is lost on kill -9 in any mode; after a power
    /// loss a periodic/none replica is rebuilt from the publisher (docs/OPERATIONS.md).
    #[arg(long, value_name = "MODE", default_value = "periodic:1000", value_parser = parse_replica_durability)]
    replica_durability: mcsync::ReplicaDurability,
}

/// Parses `--replica-durability`.
pub fn parse_replica_durability(s: &str) -> Result<mcsync::ReplicaDurability, String> {
    mcsync::ReplicaDurability::parse(s).map_err(|e| e.to_string())
}

/// Options of `mcsync verify` and `mcsync resync`.
#[derive(Args)]
pub struct CheckArgs {
    /// Data directory of the subscriber's store (the replica to check).
    #[arg(long)]
    data_dir: PathBuf,
    /// Database to check.
    #[arg(long, default_value = "default")]
    database: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn open_for_check(a: &CheckArgs) -> Result<Subscriber, Box<dyn std::error::Error>> {
    Ok(Subscriber::open(a.connect.subscriber_config(&a.data_dir)?)?)
}

fn print_report(r: &mcsync::ResyncReport) {
    println!(
        "replica at version {} ({} records); publisher snapshot at version {} ({} records visible to this user)",
        r.previous_version, r.local_records, r.version, r.remote_records
    );
    for range in r.differing_ranges.iter().take(50) {
        println!(
            "  differs: key hashes {:016x}..={:016x} (level {})",
            range.lo,
            range.hi(),
            range.level
        );
    }
    if r.differing_ranges.len() > 50 {
        println!("  ... and {} more ranges", r.differing_ranges.len() - 50);
    }
}

/// `mcsync verify`: compares a replica with the publisher by range digests. Exit code 0
/// when they agree, 1 when they differ.
pub fn verify(a: CheckArgs) -> CliResult {
    let s = open_for_check(&a)?;
    let r = s.verify(&a.database)?;
    print_report(&r);
    if r.in_agreement() {
        println!("in agreement");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "DIFFERS in {} key-hash ranges; run `mcsync resync` to repair",
            r.differing_ranges.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `mcsync resync`: repairs a replica by hash resync.
pub fn resync(a: CheckArgs) -> CliResult {
    let s = open_for_check(&a)?;
    let r = s.resync(&a.database)?;
    print_report(&r);
    println!(
        "resynced to version {}: {} records fetched, {} deleted, {} journal updates, {} bytes exchanged{}",
        r.version,
        r.fetched,
        r.deleted,
        r.journal_updates,
        r.bytes,
        if r.full_copy { " (full copy)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `mcsync status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Data directory of a publisher's or a subscriber's store.
    #[arg(long, required_unless_present = "metrics")]
    data_dir: Option<PathBuf>,
    /// Read a running `mcsync serve` or `mcsync subscribe` through its metrics endpoint
    /// (its --metrics address) instead.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Refresh every --interval seconds until interrupted (with --metrics: rates too).
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
}

/// `mcsync users` subcommands.
#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user to a users file (the password is read from standard input's first line,
    /// or MCSYNC_PASSWORD).
    Add {
        /// Users file (created if missing).
        #[arg(long)]
        file: PathBuf,
        /// User name.
        #[arg(long)]
        name: String,
        /// Databases the user may read (comma-separated); all if omitted.
        #[arg(long, value_delimiter = ',')]
        databases: Option<Vec<String>>,
        /// Access groups (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "")]
        groups: Vec<String>,
        /// May register as a two-phase participant (and so vote on, and refuse, the
        /// database's two-phase updates).
        #[arg(long)]
        participant: bool,
    },
}

fn read_password(file: Option<&PathBuf>) -> Result<String, Box<dyn std::error::Error>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)?;
        return Ok(text.lines().next().unwrap_or("").to_owned());
    }
    if let Ok(p) = std::env::var("MCSYNC_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Runs `mcsync users ...`.
pub fn users(cmd: UsersCommand) -> CliResult {
    match cmd {
        UsersCommand::Add {
            file,
            name,
            databases,
            groups,
            participant,
        } => {
            let password = read_password(None)?;
            if password.is_empty() {
                return Err("empty password".into());
            }
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            UsersFile::add_user(
                &file,
                &name,
                &password,
                databases.as_deref(),
                &groups,
                participant,
            )?;
            println!("added {name} to {}", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Starts the metrics endpoint if `--metrics` was given, and says where it listens.
fn serve_metrics(
    addr: Option<SocketAddr>,
    render: impl Fn() -> String + Send + 'static,
) -> Result<Option<MetricsServer>, Box<dyn std::error::Error>> {
    let Some(addr) = addr else { return Ok(None) };
    let m = MetricsServer::start(addr, render)?;
    eprintln!("metrics on http://{}/metrics", m.addr());
    Ok(Some(m))
}

/// Runs `mcsync serve` until standard input ends.
pub fn serve(a: ServeArgs) -> CliResult {
    let mut cfg = PublisherConfig::new(&a.data_dir);
    cfg.control_addr = a.listen;
    cfg.multicast.set_ranges(&a.groups, &a.ports)?;
    cfg.multicast.interface = a.interface;
    cfg.durability = a.durability.into();
    cfg.multicast.max_unicast_targets = a.max_unicast_targets;
    if let Some(u) = a.users {
        cfg.authentication = Authentication::UsersFile(u);
    }
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        cfg.identity = ServerIdentity::Files { cert, key };
    }
    let stats_file = a.data_dir.join("stats.txt");
    let publisher = std::sync::Arc::new(Publisher::open(cfg)?);
    let db = publisher.database(&a.database)?;
    let p = publisher.clone();
    let _metrics = serve_metrics(a.metrics, move || p.metrics())?;
    println!(
        "serving database {:?} at version {} on {} (TLS 1.3, certificate SHA-256 fingerprint {}); multicast {}",
        a.database,
        db.version(),
        publisher.control_addr(),
        publisher.fingerprint().unwrap_or("-"),
        db.group()
    );
    eprintln!("reading `put KEY VALUE` / `del KEY` lines from standard input");
    // `mcsync status` shows these figures while this runs.
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> CliResult {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write(&stats_file, stats_text(&publisher));
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
        let r = read_commands(&db);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })?;
    let _ = std::fs::write(&stats_file, stats_text(&publisher));
    publisher.close()?;
    Ok(ExitCode::SUCCESS)
}

/// The publisher's counters and registered subscribers, as text.
fn stats_text(p: &Publisher) -> String {
    let mut out = String::from("publisher\n");
    for (k, v) in p.stats().fields() {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    for r in p.subscribers() {
        out.push_str(&format!(
            "subscriber {} {} ({}) on {} from {}{}",
            r.id,
            r.client,
            r.user,
            r.database,
            r.peer,
            if r.participant {
                ", two-phase participant"
            } else {
                ""
            }
        ));
        if let Some(target) = r.push {
            out.push_str(&format!(", pushed to {target} (unicast)"));
        }
        if let Some((rep, _)) = r.report {
            out.push_str(&format!(
                ": version {}, loss {:.2} %, latency p50 {} us p99 {} us, repairs {}{}",
                rep.applied_version,
                f64::from(rep.loss_ppm) / 1e4,
                rep.latency_p50_us,
                rep.latency_p99_us,
                rep.repairs,
                if rep.unicast_only { ", on unicast" } else { "" }
            ));
        }
        out.push('\n');
    }
    out
}

fn read_commands(db: &mcsync::Database) -> CliResult {
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        let mut parts = line.splitn(3, ' ');
        let result = match (parts.next(), parts.next(), parts.next()) {
            (Some("put"), Some(k), Some(v)) => db.put(k, v),
            (Some("del"), Some(k), None) => db.delete(k),
            (Some(""), None, None) | (None, _, _) => continue,
            _ => {
                eprintln!("line {}: expected `put KEY VALUE` or `del KEY`", n + 1);
                continue;
            }
        };
        match result {
            Ok(v) => println!("version {v}"),
            Err(e) => eprintln!("line {}: {e}", n + 1),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one applied update as `mcsync subscribe` shows them.
fn print_update(u: &mcsync::Update) {
    for op in &u.ops {
        match op.kind {
            mcsync::OpKind::Put => println!(
                "{} put {} {}",
                u.version,
                String::from_utf8_lossy(&op.key),
                String::from_utf8_lossy(&op.value)
            ),
            mcsync::OpKind::Delete => {
                println!("{} del {}", u.version, String::from_utf8_lossy(&op.key))
            }
        }
    }
}

/// First wait before subscribing again after a failed start.
const START_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest wait between attempts to start.
const START_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a failed start is worth trying again, as a running subscription would: the
/// publisher is down, full, restarting or dropped the connection (I/O, timeouts, refusals
/// such as a database not published yet). Authentication refusals (wrong password,
/// revoked or unknown user, a certificate that fails verification), bad configuration,
/// protocol mismatches and local storage failures are not: trying again cannot help.
fn start_is_retryable(e: &mcsync::Error) -> bool {
    use mcsync::ErrorKind as K;
    matches!(e.kind(), K::Io | K::Timeout | K::Refused)
}

/// Subscribes, trying again with a back-off (100 ms doubling to 5 s, a line on standard
/// error per attempt) while the failure is one a running subscription rides out.
fn subscribe_retrying(
    s: &Subscriber,
    database: &str,
    server: SocketAddr,
) -> Result<mcsync::Subscription, mcsync::Error> {
    let mut wait = START_RETRY_FIRST;
    let mut attempt = 1u32;
    loop {
        match s.subscribe(database, print_update) {
            Ok(sub) => return Ok(sub),
            Err(e) if start_is_retryable(&e) => {
                eprintln!(
                    "mcsync: subscribing to {database:?} at {server} failed (attempt \
                     {attempt}): {e}; trying again in {wait:?}"
                );
                std::thread::sleep(wait);
                wait = (wait * 2).min(START_RETRY_MAX);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `mcsync subscribe` until interrupted. Starting waits for the publisher (see
/// [`subscribe_retrying`]); only what retrying cannot fix ends it.
pub fn subscribe(a: SubscribeArgs) -> CliResult {
    let mut cfg = a.connect.subscriber_config(&a.data_dir)?;
    cfg.replica_durability = a.replica_durability;
    let s = std::sync::Arc::new(Subscriber::open(cfg)?);
    let s2 = s.clone();
    let _metrics = serve_metrics(a.metrics, move || s2.metrics())?;
    let sub = subscribe_retrying(&s, &a.database, a.connect.server)?;
    eprintln!(
        "subscribed to {:?} at version {}",
        a.database,
        sub.version()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        if sub.is_closed() {
            return Ok(ExitCode::FAILURE);
        }
    }
}

/// Prints what a data directory holds (a publisher's or a subscriber's), or what a running
/// `mcsync serve` / `mcsync subscribe` reports through its metrics endpoint; with
/// `--watch`, again every `--interval` seconds.
pub fn status(a: StatusArgs) -> CliResult {
    let interval = std::time::Duration::from_secs_f64(a.interval.clamp(0.1, 3600.0));
    let mut previous: Option<(std::time::Instant, Samples)> = None;
    loop {
        if a.watch {
            // Clear the screen and go home, like watch(1).
            print!("\x1b[2J\x1b[H");
        }
        match (a.metrics, &a.data_dir) {
            (Some(addr), _) => {
                let now = std::time::Instant::now();
                let s = metrics_http::samples(&metrics_http::scrape(addr)?);
                print!(
                    "{}",
                    live_table(&s, previous.as_ref().map(|(t, p)| (now - *t, p)))
                );
                previous = Some((now, s));
            }
            (None, Some(dir)) => dir_status(dir)?,
            (None, None) => return Err("give --data-dir or --metrics".into()),
        }
        if !a.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(interval);
    }
}

type Samples = Vec<metrics_http::Sample>;

fn sample(s: &Samples, name: &str, labels: &[(String, String)]) -> Option<f64> {
    s.iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|x| x.2)
}

/// Every series of metric `name`.
fn series<'a>(s: &'a Samples, name: &'a str) -> impl Iterator<Item = &'a metrics_http::Sample> {
    s.iter().filter(move |(n, _, _)| n == name)
}

/// A table of a live publisher's databases and subscribers, or a subscriber's
/// subscriptions, from its metrics; rates from the previous scrape.
fn live_table(s: &Samples, previous: Option<(std::time::Duration, &Samples)>) -> String {
    let rate = |name: &str, labels: &[(String, String)]| -> String {
        let Some((dt, p)) = previous else {
            return "-".into();
        };
        match (sample(s, name, labels), sample(p, name, labels)) {
            (Some(now), Some(before)) if dt.as_secs_f64() > 0.0 => {
                format!("{:.0}/s", (now - before).max(0.0) / dt.as_secs_f64())
            }
            _ => "-".into(),
        }
    };
    let mut out = String::new();
    for (_, l, v) in series(s, "mcsync_database_version") {
        let db = &l[0].1;
        out.push_str(&format!(
            "database {db}: version {v}, journal from {}, commits {}\n",
            sample(s, "mcsync_database_oldest_version", l).unwrap_or(0.0),
            rate("mcsync_publisher_updates_committed_total", &[]),
        ));
    }
    let mut rows = Vec::new();
    for (_, l, lag) in series(s, "mcsync_subscriber_lag_versions") {
        let get = |k: &str| l.iter().find(|(n, _)| n == k).map_or("", |x| x.1.as_str());
        rows.push(format!(
            "  {:<20} {:<12} {:<10} {:>10} {:>8} {:>7.2} % {:>9.1} ms{}",
            get("id"),
            get("user"),
            get("database"),
            sample(s, "mcsync_subscriber_applied_version", l).unwrap_or(0.0),
            lag,
            100.0 * sample(s, "mcsync_subscriber_loss_ratio", l).unwrap_or(0.0),
            1e3 * sample(s, "mcsync_subscriber_latency_p99_seconds", l).unwrap_or(0.0),
            if sample(s, "mcsync_subscriber_unicast_only", l) == Some(1.0) {
                "  on unicast"
            } else {
                ""
            }
        ));
    }
    if !rows.is_empty() {
        out.push_str(&format!(
            "  {:<20} {:<12} {:<10} {:>10} {:>8} {:>9} {:>12}\n",
            "subscriber", "user", "database", "version", "lag", "loss", "latency p99"
        ));
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    for (_, l, v) in series(s, "mcsync_subscription_version") {
        let db = &l[0].1;
        out.push_str(&format!(
            "subscription {db}: version {v}, applied {}, loss {:.2} %, latency p99 {:.1} ms\n",
            rate("mcsync_subscription_updates_applied_total", l),
            sample(s, "mcsync_subscription_loss_ppm", l).unwrap_or(0.0) / 1e4,
            sample(s, "mcsync_subscription_latency_p99_us", l).unwrap_or(0.0) / 1e3,
        ));
    }
    if out.is_empty() {
        out.push_str("no databases or subscriptions yet\n");
    }
    out
}

/// What a data directory holds: a publisher's databases, or a subscriber's replicas.
fn dir_status(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(text) = std::fs::read_to_string(dir.join("stats.txt")) {
        print!("{text}");
    }
    // A subscriber's store has replicas and no journal; a publisher's the other way round.
    match mcsync::store::SubscriberStore::open(dir, 1 << 20) {
        Ok(store) if !store.database_names()?.is_empty() => {
            for name in store.database_names()? {
                let t = store.tables(&name)?;
                let d = store.delivery_state(&name)?;
                println!(
                    "replica {name}: version {}, {} records, delivered to the host through {}, \
                     incarnation {:016x}, registration {}",
                    store.applied_version(&name)?,
                    store.count(t)?,
                    d.delivered,
                    store.incarnation(&name)?,
                    store.subscriber_id(&name)?
                );
            }
            return Ok(());
        }
        // A running publisher or subscriber holds the directory's lock.
        Err(e) if e.kind() == mcsync::ErrorKind::Config => {
            println!("{e} (use --metrics ADDR to read a running one)");
            return Ok(());
        }
        _ => {}
    }
    let store = mcsync::store::PublisherStore::open(dir, 1 << 20)?;
    let names = store.database_names()?;
    if names.is_empty() {
        println!("{}: no databases", dir.display());
    }
    for name in names {
        let t = store.tables(&name)?;
        println!(
            "{name}: version {}, journal from {}, {} records",
            store.last_version(&name)?,
            store.oldest_version(t)?,
            store.state(t)?.len()
        );
    }
    Ok(())
}
