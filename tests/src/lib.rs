//! Shared helpers for the integration tests: every test gets its own multicast group and
//! port, its own temporary data directories, and real sockets and LMDB files.

pub mod crash;
pub mod netns;

use mcsync::{
    Authentication, LossConfig, Publisher, PublisherConfig, ServerTrust, Subscriber,
    SubscriberConfig,
};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// A random administratively scoped group and a random high port, so tests running in
/// parallel never hear each other.
pub fn unique_group() -> (Ipv4Addr, u16) {
    let r: u32 = rand::random();
    let group = Ipv4Addr::new(
        239,
        1 + (r % 250) as u8,
        (r >> 8) as u8,
        1 + ((r >> 16) % 200) as u8,
    );
    let port = 20_000 + (rand::random::<u16>() % 40_000);
    (group, port)
}

/// A publisher config on loopback with a unique group, real TLS (a self-signed
/// certificate) and open authentication.
pub fn publisher_config(dir: &Path) -> PublisherConfig {
    let mut c = PublisherConfig::new(dir);
    c.authentication = Authentication::Open;
    let (g, p) = unique_group();
    c.multicast.group = g;
    c.multicast.port = p;
    c
}

/// A subscriber config for `publisher` (pinning its certificate), with optional injected
/// loss.
pub fn subscriber_config(
    dir: &Path,
    publisher: &Publisher,
    loss: Option<(f64, u64)>,
) -> SubscriberConfig {
    let fp = publisher.fingerprint().expect("TLS publisher").to_owned();
    let mut c = SubscriberConfig::new(dir, publisher.control_addr(), ServerTrust::Fingerprint(fp));
    c.user = "tester".into();
    c.loss = loss.map(|(p, seed)| LossConfig {
        probability: p,
        burst_len: 1,
        seed,
    });
    c
}

/// Opens a subscriber.
pub fn open_subscriber(dir: &Path, publisher: &Publisher, loss: Option<(f64, u64)>) -> Subscriber {
    Subscriber::open(subscriber_config(dir, publisher, loss)).expect("open subscriber")
}

/// Generous timeout for convergence on a loaded 2-core machine.
pub const CONVERGE: Duration = Duration::from_secs(120);

/// A raw control-channel client for `database` (TLS, pinned to `publisher`).
pub fn repair_client(
    publisher: &Publisher,
    database: &str,
    user: &str,
    secret: &str,
) -> mcsync::net::repair_client::RepairClient {
    use mcsync::net::repair_client::{ClientIdentity, RepairClient};
    let fp = publisher.fingerprint().expect("TLS publisher").to_owned();
    let tls = mcsync::net::tls::ClientTls::new(
        &ServerTrust::Fingerprint(fp),
        publisher.control_addr(),
        None,
    )
    .expect("client TLS");
    let id = ClientIdentity {
        server: publisher.control_addr(),
        tls,
        user: user.into(),
        secret: secret.into(),
        client_name: "test".into(),
    };
    RepairClient::new(id, database, Duration::from_secs(10), 1 << 20)
}

/// Asserts that callbacks saw exactly `expected` versions, in order, once each, and says
/// where they first differ (not the whole list).
pub fn assert_versions(seen: &[u64], expected: std::ops::RangeInclusive<u64>) {
    let want: Vec<u64> = expected.collect();
    if seen != want.as_slice() {
        let at = seen
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(seen.len().min(want.len()));
        panic!(
            "callbacks saw {} versions, expected {}; first difference at index {at}: saw {:?}, expected {:?}",
            seen.len(),
            want.len(),
            seen.get(at),
            want.get(at)
        );
    }
}

/// Waits until `cond` holds, polling every 10 ms; panics with `what` after `timeout`.
/// For properties that become true eventually (a gauge catching up), never for timing.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A host database as a legacy plugin keeps one: its own table rebuilt from callbacks and
/// the version it applied, updated together (as the host's own transaction would), and
/// every version it was called with, in order.
#[derive(Debug, Default, Clone)]
pub struct HostTable {
    /// The host's table.
    pub rows: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// The version of the last update applied.
    pub version: u64,
    /// Every version called back, in order (a reset shows as its version).
    pub seen: Vec<u64>,
    /// Resets received.
    pub resets: u64,
}

impl HostTable {
    /// Applies one update as a host would: a reset replaces the table.
    pub fn apply(&mut self, u: &mcsync::Update) {
        if u.reset {
            self.rows.clear();
            self.resets += 1;
        }
        for op in &u.ops {
            match op.kind {
                mcsync::OpKind::Put => {
                    self.rows.insert(op.key.clone(), op.value.clone());
                }
                mcsync::OpKind::Delete => {
                    self.rows.remove(&op.key);
                }
            }
        }
        self.version = u.version;
        self.seen.push(u.version);
    }

    /// The table as (key, value) pairs in key order, to compare with a snapshot.
    pub fn records(&self) -> Vec<mcsync::Record> {
        self.rows
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The newest modification time of the files under `path`.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| newest_mtime(&e.ok()?.path()))
        .max()
}

/// The `mcsync` command-line binary of this workspace, for tests that run it as a user
/// would (`CARGO_BIN_EXE_mcsync` exists only inside the CLI's own package). Built with
/// cargo for the profile the tests were built with, unless the binary there is newer
/// than every source it is built from (a nested build under `cargo test` may rebuild
/// dependencies whose feature set the tests crate unifies differently).
pub fn mcsync_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // <target>/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace holds the tests crate");
        let bin = profile_dir.join("mcsync");
        let sources = ["mcsync-core", "mcsync-cli", "Cargo.toml", "Cargo.lock"]
            .iter()
            .filter_map(|p| newest_mtime(&workspace.join(p)))
            .max();
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if let (Some(built), Some(sources)) = (built, sources) {
            if built > sources {
                return bin;
            }
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.current_dir(workspace).args([
            "build",
            "--quiet",
            "-p",
            "mcsync-cli",
            "--bin",
            "mcsync",
        ]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(other) => {
                build.args(["--profile", other]);
            }
        }
        if let Some(target) = profile_dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let status = build
            .status()
            .expect("run cargo build for the mcsync binary");
        assert!(status.success(), "building the mcsync binary failed");
        assert!(bin.exists(), "no {} after building it", bin.display());
        bin
    })
    .clone()
}

/// The lines a child process writes to `out`, as they come (a thread reads them; the
/// channel closes when the child closes its end).
pub fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}
