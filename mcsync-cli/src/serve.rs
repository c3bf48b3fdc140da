//! `mcsync serve`, `mcsync subscribe`, `mcsync status`.

use clap::Args;
use mcsync::{Key, Publisher, PublisherConfig, Subscriber, SubscriberConfig};
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `mcsync serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Data directory of the publisher's store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Database to publish stdin into.
    #[arg(long, default_value = "default")]
    database: String,
    /// Control (repair) address to listen on.
    #[arg(long, default_value = "127.0.0.1:47000")]
    listen: SocketAddr,
    /// Key as 64 hex digits (share it with subscribers); `--key-file` reads it from a file.
    #[arg(long, conflicts_with = "key_file")]
    key: Option<String>,
    /// File holding the key as 64 hex digits.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// First multicast group.
    #[arg(long, default_value = "239.255.77.1")]
    group: Ipv4Addr,
    /// Multicast port.
    #[arg(long, default_value_t = 47_100)]
    port: u16,
}

/// Options of `mcsync subscribe`.
#[derive(Args)]
pub struct SubscribeArgs {
    /// Data directory of the subscriber's store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Publisher's control address.
    #[arg(long, default_value = "127.0.0.1:47000")]
    server: SocketAddr,
    /// Database to replicate.
    #[arg(long, default_value = "default")]
    database: String,
    /// Key as 64 hex digits.
    #[arg(long, conflicts_with = "key_file")]
    key: Option<String>,
    /// File holding the key as 64 hex digits.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

/// Options of `mcsync status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Data directory of a publisher's store.
    #[arg(long)]
    data_dir: PathBuf,
}

fn load_key(key: Option<String>, file: Option<PathBuf>) -> Result<Key, Box<dyn std::error::Error>> {
    match (key, file) {
        (Some(k), _) => Ok(Key::from_hex(&k)?),
        (None, Some(f)) => Ok(Key::from_hex(&std::fs::read_to_string(&f)?)?),
        (None, None) => Err("give the key with --key or --key-file".into()),
    }
}

/// Runs `mcsync serve` until standard input ends.
pub fn serve(a: ServeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let key = load_key(a.key, a.key_file)?;
    let mut cfg = PublisherConfig::new(&a.data_dir, key);
    cfg.control_addr = a.listen;
    cfg.multicast.group = a.group;
    cfg.multicast.port = a.port;
    let publisher = Publisher::open(cfg)?;
    let db = publisher.database(&a.database)?;
    eprintln!(
        "serving database {:?} at version {} on {} (multicast {}); reading `put KEY VALUE` / `del KEY` lines",
        a.database,
        db.version(),
        publisher.control_addr(),
        db.group()
    );
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
    publisher.close()?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `mcsync subscribe` until interrupted.
pub fn subscribe(a: SubscribeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let key = load_key(a.key, a.key_file)?;
    let s = Subscriber::open(SubscriberConfig::new(&a.data_dir, a.server, key))?;
    let sub = s.subscribe(&a.database, |u| {
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
    })?;
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

/// Prints what a publisher's data directory holds.
pub fn status(a: StatusArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let store = mcsync::store::PublisherStore::open(&a.data_dir, 1 << 20)?;
    let names = store.database_names()?;
    if names.is_empty() {
        println!("{}: no databases", a.data_dir.display());
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
    Ok(ExitCode::SUCCESS)
}
