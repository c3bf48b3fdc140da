//! Hosts and sites in network namespaces, for tests that run the real `mcsync` commands
//! across a network: namespaces joined by veth pairs to bridges (each bridge in a
//! namespace of its own), 10.x addresses and 239.0.0.0/8 routes only inside them. Every
//! namespace carries the test's PID in its name and is deleted on drop (the veths and the
//! bridges go with it), failure or not.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for anything that must happen (a loaded 2-core machine).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `ip` with `args`; panics with its output if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why network-namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}

/// A bridge (a switch) in a namespace of its own.
pub struct Switch {
    ns: String,
    bridge: String,
}

/// The namespaces, switches and links of one test; all deleted on drop.
pub struct Net {
    tag: String,
    id: u32,
    links: u32,
    created: Vec<String>,
}

impl Net {
    pub fn new() -> Net {
        Net {
            tag: format!("mcs{}", std::process::id()),
            id: std::process::id() % 100_000,
            links: 0,
            created: Vec::new(),
        }
    }

    /// A new namespace (a host) with its loopback up; returns its name.
    pub fn host(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        ip(&["netns", "add", &ns]);
        self.created.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A new switch.
    pub fn switch(&mut self, name: &str) -> Switch {
        let ns = self.host(name);
        self.links += 1;
        let bridge = format!("b{}x{}", self.links, self.id);
        ip(&["-n", &ns, "link", "add", &bridge, "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", &bridge, "up"]);
        Switch { ns, bridge }
    }

    /// Plugs host `ns` into `switch` with address `cidr` (e.g. "10.201.1.1/24"), and
    /// routes 239.0.0.0/8 there if `multicast`; returns the host's interface name.
    pub fn plug(&mut self, ns: &str, switch: &Switch, cidr: &str, multicast: bool) -> String {
        self.links += 1;
        // Interface names: at most 15 bytes.
        let inside = format!("v{}x{}", self.links, self.id);
        let port = format!("w{}x{}", self.links, self.id);
        ip(&[
            "link", "add", &inside, "netns", ns, "type", "veth", "peer", "name", &port, "netns",
            &switch.ns,
        ]);
        ip(&[
            "-n",
            &switch.ns,
            "link",
            "set",
            &port,
            "master",
            &switch.bridge,
        ]);
        ip(&["-n", &switch.ns, "link", "set", &port, "up"]);
        ip(&["-n", ns, "addr", "add", cidr, "dev", &inside]);
        ip(&["-n", ns, "link", "set", &inside, "up"]);
        if multicast {
            ip(&["-n", ns, "route", "add", "239.0.0.0/8", "dev", &inside]);
        }
        inside
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// A command run inside namespace `ns`.
pub fn exec(ns: &str, bin: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(bin);
    c
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every line of `pipe`, collected as it comes, and sent on.
pub fn collect_lines(
    pipe: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let all = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let a = all.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            a.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    (all, rx)
}

/// The first line `rx` gives that `f` maps to something.
pub fn wait_for<T>(rx: &mpsc::Receiver<String>, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                if let Some(t) = f(&l) {
                    return t;
                }
            }
            Err(e) => panic!("waiting for {what}: {e:?}"),
        }
    }
}

/// Waits (polling every 100 ms) until `cond` holds; panics after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a thread that entered namespace `ns` (only that thread moves).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
            // SAFETY: setns on a valid namespace fd moves only the calling thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace")
    })
}

/// The `--metrics` address a command printed on `stderr` ("metrics on http://A/metrics").
pub fn metrics_addr(rx: &mpsc::Receiver<String>) -> String {
    wait_for(rx, "the metrics address", |l| {
        l.strip_prefix("metrics on http://")
            .and_then(|r| r.strip_suffix("/metrics"))
            .map(str::to_owned)
    })
}

/// The samples of the metrics endpoint at `addr` (scraped from inside namespace `ns`)
/// named `prefix<name>{database="db"}`, by name.
pub fn metrics(ns: &str, addr: &str, prefix: &str, db: &str) -> HashMap<String, f64> {
    let addr = addr.to_owned();
    let text = in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("metrics reply");
        text
    });
    let label = format!("{{database=\"{db}\"}}");
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let name = name.strip_prefix(prefix)?;
            let name = name.strip_suffix(label.as_str())?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}
