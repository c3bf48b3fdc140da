//! `mcsync relay`: subscribe to databases of an upstream publisher and re-publish them to
//! another multicast group (and interface) with the relay's own journal, control server,
//! TLS identity, users file and keys. Runs until SIGINT or SIGTERM.

use crate::serve::ConnectArgs;
use clap::Args;
use mcsync::{Authentication, Durability, PublisherConfig, Relay, RelayConfig, ServerIdentity};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Options of `mcsync relay`.
#[derive(Args)]
pub struct RelayArgs {
    /// Data directory of the relay's downstream publisher (journal, state, certificate).
    #[arg(long)]
    data_dir: PathBuf,
    /// Data directory of the relay's upstream replica (default `<data-dir>/upstream`).
    #[arg(long)]
    upstream_data_dir: Option<PathBuf>,
    /// Database to relay (repeat for several).
    #[arg(long = "database", required = true)]
    databases: Vec<String>,
    /// How the relay reaches the upstream publisher (`--interface`: where it receives the
    /// upstream multicast).
    #[command(flatten)]
    connect: ConnectArgs,
    /// Control address downstream subscribers connect to.
    #[arg(long, default_value = "127.0.0.1:47001")]
    listen: SocketAddr,
    /// Users file for downstream subscribers (see `mcsync users add`); default
    /// `<data-dir>/users`.
    #[arg(long)]
    users: Option<PathBuf>,
    /// TLS certificate chain (PEM); without it a self-signed certificate is generated.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Downstream multicast group range (CIDR); must differ from the upstream's.
    #[arg(long, default_value = "239.255.78.0/24")]
    groups: String,
    /// Downstream multicast port range (`first-last`).
    #[arg(long, default_value = "47110-47119")]
    ports: String,
    /// Interface to multicast downstream from.
    #[arg(long, default_value = "127.0.0.1")]
    downstream_interface: Ipv4Addr,
    /// When an import is answered: `async` (at once; the journal writer group-commits
    /// behind) or `sync` (after its journal fsync). Either way an update is multicast
    /// downstream only once durable in the relay's journal, and a restarted relay resumes
    /// after what its journal holds, so both give the same guarantee; async relays about
    /// 1.4× more updates per second (docs/BENCHMARKS.md, section (e)).
    #[arg(long, default_value = "async", value_parser = parse_durability)]
    durability: Durability,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "async" => Ok(Durability::Async),
        _ => Err(format!("{s:?}: expected sync or async")),
    }
}

impl RelayArgs {
    fn relay_config(&self) -> Result<RelayConfig, Box<dyn std::error::Error>> {
        let up_dir = self
            .upstream_data_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("upstream"));
        let upstream = self.connect.subscriber_config(&up_dir)?;
        let mut down = PublisherConfig::new(&self.data_dir);
        down.control_addr = self.listen;
        down.multicast.set_ranges(&self.groups, &self.ports)?;
        down.multicast.interface = self.downstream_interface;
        down.durability = self.durability;
        if let Some(u) = &self.users {
            down.authentication = Authentication::UsersFile(u.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            down.identity = ServerIdentity::Files {
                cert: cert.clone(),
                key: key.clone(),
            };
        }
        Ok(RelayConfig {
            upstream,
            downstream: down,
            databases: self.databases.clone(),
        })
    }
}

/// SIGINT and SIGTERM, blocked in every thread (threads inherit the mask) and taken by
/// [`wait_for_signal`] on the main thread.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a set owned here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is a valid signal set and `sig` a valid out-parameter.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Runs `mcsync relay` until SIGINT or SIGTERM, then closes the relay cleanly.
pub fn relay(a: RelayArgs) -> CliResult {
    let set = block_signals();
    let config = a.relay_config()?;
    let server = config.upstream.server;
    let relay = std::sync::Arc::new(Relay::open(config)?);
    let (r, names) = (relay.clone(), a.databases.clone());
    std::thread::spawn(move || announce(&r, server, &names));
    let sig = wait_for_signal(&set);
    eprintln!("mcsync: signal {sig}: closing the relay");
    relay.close()?;
    Ok(ExitCode::SUCCESS)
}

/// Prints one line per database once it is subscribed upstream.
fn announce(relay: &Relay, server: SocketAddr, names: &[String]) {
    let mut left: Vec<&String> = names.iter().collect();
    while !left.is_empty() {
        left.retain(|name| {
            if relay.upstream_stats(name).is_none() {
                return true;
            }
            println!(
                "relaying database {name:?} from {server} at version {} on {} (TLS 1.3, \
                 certificate SHA-256 fingerprint {}); multicast {}",
                relay.version(name).unwrap_or(0),
                relay.control_addr(),
                relay.fingerprint().unwrap_or("-"),
                relay
                    .group(name)
                    .map_or_else(|e| e.to_string(), |g| g.to_string()),
            );
            false
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}
