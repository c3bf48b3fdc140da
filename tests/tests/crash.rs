//! Crash tests on real processes: a publisher and two subscribers (each with a host store
//! of its own) run as child processes (`crash_node`); each round SIGKILLs one of them, at a
//! crash point compiled into mcsync-core (`MCSYNC_CRASH_AT=<point>:<n>`: inside a journal
//! group commit, inside the publisher state writer's transaction, inside an apply, between
//! apply and callbacks, mid-compaction, during a retention trim, inside a hash resync) or
//! from outside after a seeded delay. After every
//! kill the dead process's stores are opened and checked against the model
//! (`mcsync_tests::crash`): no commit that returned to its (Sync) caller is lost, the
//! master equals the model at its version, every replica equals the master at the
//! replica's version, every host table equals the master at the host's version (and is
//! never ahead of its replica), and no update reached a host twice. At the end everything
//! runs clean to one final version and all five stores must be equal.
//!
//! Each subscriber's successive lives cycle through the three replica durabilities (`sync`,
//! `periodic:200`, `none`; see `mcsync::ReplicaDurability`): after a kill -9 in any of them
//! nothing the replica applied is lost (it holds at least every version its host said it
//! stored), it is never rebuilt (same boot: the page cache had every commit), and a clean
//! stop leaves no unsynced marker.
//!
//! The publisher's lives alternate between `Durability::Sync` and `Durability::Async`
//! (seeded). After a kill in an `Async` life, acknowledged versions may be missing from the
//! master (at most `ASYNC_MAX_PENDING`), but never one that any host received: nothing is
//! multicast before it is journaled. So every host's version must be at most the master's,
//! checked after the kill and again just before the publisher restarts (and reissues the
//! lost versions). The lost acknowledgements are then forgotten; a `Sync` life's are held
//! to the full guarantee.
//!
//! `MCSYNC_CRASH_SEED=<n>` reruns a seed; `MCSYNC_CRASH_KILLS=<n>` asks for more kills
//! (default 50); `MCSYNC_CRASH_KEEP=1` keeps the data directories. See docs/TESTING.md.

use mcsync::store::{unsynced, PublisherStore, SubscriberStore};
use mcsync_tests::crash::{ops_for, state_at, SplitMix, DB};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Journal entries retention keeps (the publisher's `min_count`; `max_bytes` is 1, so it
/// trims down to this at every pass).
const RETENTION: u64 = 150;
/// Versions behind beyond which a subscriber catches up compacted.
const COMPACT_AFTER: u64 = 25;
/// Longest wait for anything that must happen (a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(90);
/// Replica durabilities a subscriber's lives cycle through.
const MODES: [&str; 3] = ["sync", "periodic:200", "none"];
/// Durabilities the publisher's lives cycle through.
const PUBLISHER_MODES: [&str; 2] = ["sync", "async"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber(usize),
}

/// What a child has said on stdout.
#[derive(Debug, Default)]
struct Said {
    /// `ready` line seen (publisher: fingerprint and address).
    ready: Option<String>,
    /// Publisher: last committed version (`v`) or idle version; subscriber: host version.
    version: u64,
    /// Publisher: the version it went idle at, if it is idle.
    idle: Option<u64>,
    /// Stdout closed (the process is gone).
    eof: bool,
}

#[derive(Default)]
struct Progress {
    said: Mutex<Said>,
    changed: Condvar,
}

impl Progress {
    /// Waits until `cond` holds on what the child said; false if it exited or `DEADLINE`
    /// passed first.
    fn wait(&self, mut cond: impl FnMut(&Said) -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        let mut s = self.said.lock().unwrap();
        loop {
            if cond(&s) {
                return true;
            }
            let now = Instant::now();
            if s.eof || now >= deadline {
                return false;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
    }
}

struct Node {
    role: Role,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    progress: Arc<Progress>,
    dir: PathBuf,
    host_dir: PathBuf,
    log: PathBuf,
    /// Lives started so far, and the durability of the current one (subscriber: replica
    /// durability; publisher: commit durability).
    lives: u64,
    mode: &'static str,
}

impl Node {
    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

struct Run {
    seed: u64,
    rng: SplitMix,
    root: PathBuf,
    bin: PathBuf,
    listen: String,
    group: String,
    fingerprint: Option<String>,
    nodes: Vec<Node>,
    /// The publisher commits up to this version.
    target: u64,
    /// The master's version when the publisher last opened (as the last check found it).
    master_opened: u64,
    kills: u64,
    external: u64,
    by_point: BTreeMap<&'static str, u64>,
    unreached: BTreeMap<&'static str, u64>,
    /// Crash points not reached yet in their round, to be tried again.
    again: Vec<&'static str>,
    checks: u64,
    /// Subscriber kills per replica durability.
    kills_by_mode: BTreeMap<&'static str, u64>,
    /// Publisher kills per commit durability.
    publisher_kills_by_mode: BTreeMap<&'static str, u64>,
    /// Acknowledged versions an `Async` publisher lost in a kill (reissued after).
    async_lost: u64,
    /// Kills after which an unsynced marker was found (the NOSYNC reopen path exercised).
    markers_by_mode: BTreeMap<&'static str, u64>,
}

fn fail(seed: u64, what: impl std::fmt::Display) -> ! {
    panic!("crash seed {seed}: {what} (rerun with MCSYNC_CRASH_SEED={seed})")
}

impl Run {
    fn node(&mut self, role: Role) -> &mut Node {
        let i = match role {
            Role::Publisher => 0,
            Role::Subscriber(i) => 1 + i,
        };
        &mut self.nodes[i]
    }

    fn acks_path(&self) -> PathBuf {
        self.root.join("acks")
    }

    /// Starts `role`'s process, with a crash point when `crash` names one.
    fn start(&mut self, role: Role, crash: Option<(&str, u64)>) {
        let mut cmd = Command::new(&self.bin);
        match role {
            Role::Publisher => {
                if self.node(role).lives > 0 {
                    self.check_hosts_not_ahead("before the publisher restarts");
                }
                let seed = self.seed;
                let node = self.node(role);
                node.mode = PUBLISHER_MODES[((node.lives + seed) % 2) as usize];
                node.lives += 1;
                let mode = node.mode;
                cmd.arg("publisher")
                    .args(["--durability", mode])
                    .args(["--listen", &self.listen, "--group", &self.group])
                    .args(["--seed", &self.seed.to_string()])
                    .args(["--target", &self.target.to_string()])
                    .args(["--retention-min-count", &RETENTION.to_string()])
                    .arg("--acks")
                    .arg(self.acks_path());
            }
            Role::Subscriber(i) => {
                let fp = self.fingerprint.clone().expect("publisher started first");
                let seed = self.seed;
                let node = self.node(role);
                node.mode = MODES[((node.lives + i as u64 + seed) % 3) as usize];
                node.lives += 1;
                let mode = node.mode;
                cmd.arg("subscriber")
                    .args(["--replica-durability", mode])
                    .args(["--server", &self.listen, "--fingerprint", &fp])
                    .args(["--compact-after", &COMPACT_AFTER.to_string()])
                    .arg("--host-dir")
                    .arg(&self.node(role).host_dir);
            }
        }
        let seed = self.seed;
        let node = self.node(role);
        cmd.arg("--dir").arg(&node.dir);
        cmd.env_remove("MCSYNC_CRASH_AT");
        if let Some((point, n)) = crash {
            cmd.env("MCSYNC_CRASH_AT", format!("{point}:{n}"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        writeln!(
            &log,
            "--- start {role:?} crash {crash:?} replica durability {:?}",
            node.mode
        )
        .unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(seed, format!("spawning {role:?}: {e}")));
        let progress = Arc::new(Progress::default());
        let out = child.stdout.take().unwrap();
        let p2 = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut s = p2.said.lock().unwrap();
                let mut words = line.split_whitespace();
                match (
                    words.next(),
                    words.next().and_then(|w| w.parse::<u64>().ok()),
                ) {
                    (Some("ready"), v) => {
                        // A subscriber's `ready` carries its host's version.
                        s.ready = Some(line.clone());
                        s.version = v.unwrap_or(s.version);
                    }
                    (Some("v" | "host"), Some(v)) => {
                        s.version = v;
                        s.idle = None;
                    }
                    (Some("idle"), Some(v)) => {
                        s.version = v;
                        s.idle = Some(v);
                    }
                    _ => {}
                }
                p2.changed.notify_all();
            }
            p2.said.lock().unwrap().eof = true;
            p2.changed.notify_all();
        });
        node.stdin = child.stdin.take();
        node.child = Some(child);
        node.progress = progress;
        if role == Role::Publisher {
            let p = self.node(role).progress.clone();
            // The publisher says `ready` unless it died at a crash point on the way up.
            if p.wait(|s| s.ready.is_some()) {
                let ready = p.said.lock().unwrap().ready.clone().unwrap();
                let fp = ready.split_whitespace().nth(1).unwrap().to_owned();
                self.fingerprint = Some(fp);
            }
        }
    }

    /// Raises the publisher's target by `n` versions.
    fn publish(&mut self, n: u64) {
        self.target += n;
        let line = format!("target {}\n", self.target);
        if let Some(stdin) = &mut self.node(Role::Publisher).stdin {
            // A dead publisher gets the target on its command line at restart.
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    /// Waits for `role`'s process to end (a crash point) up to `within`; false if it lives.
    fn wait_death(&mut self, role: Role, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let node = self.node(role);
        let child = node.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs `role`'s process from outside (if it is alive) and reaps it.
    fn kill(&mut self, role: Role) -> ExitStatus {
        let node = self.node(role);
        let child = node.child.as_mut().expect("started");
        let _ = child.kill();
        child.wait().unwrap()
    }

    /// After `role` died with `status`: it must have been SIGKILLed (not exited on its own
    /// with an error); then its stores are checked.
    fn after_death(&mut self, role: Role, status: ExitStatus, point: Option<&'static str>) {
        if status.signal() != Some(libc::SIGKILL) {
            let log = std::fs::read_to_string(&self.node(role).log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            fail(
                self.seed,
                format!("{role:?} ended with {status} instead of a kill; its log ends:\n{tail}"),
            );
        }
        let node = self.node(role);
        node.child = None;
        node.stdin = None;
        self.kills += 1;
        match point {
            Some(p) => *self.by_point.entry(p).or_default() += 1,
            None => self.external += 1,
        }
        match role {
            Role::Publisher => {
                let mode = self.node(role).mode;
                *self.publisher_kills_by_mode.entry(mode).or_default() += 1;
                self.check_publisher(None);
            }
            Role::Subscriber(_) => {
                let mode = self.node(role).mode;
                *self.kills_by_mode.entry(mode).or_default() += 1;
                self.check_subscriber(role, None);
            }
        }
    }

    /// Fails with the log of any node that ended without being killed.
    fn check_nobody_else_died(&mut self) {
        for i in 0..self.nodes.len() {
            let role = self.nodes[i].role;
            let node = &mut self.nodes[i];
            let Some(c) = node.child.as_mut() else {
                continue;
            };
            if let Some(st) = c.try_wait().unwrap() {
                self.after_death(role, st, None);
            }
        }
    }

    /// The master after a kill (or the clean end): every acknowledged version is
    /// journaled (at most one more, the commit in flight), the journal holds the model's
    /// operations contiguously and at least `RETENTION` of them, and the state is the
    /// model at the journal's version. Returns that version.
    fn check_publisher(&mut self, exact: Option<u64>) -> u64 {
        let seed = self.seed;
        self.checks += 1;
        let acked: Vec<u64> = std::fs::read_to_string(self.acks_path())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        let mut max_acked = acked.iter().copied().max().unwrap_or(0);
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: acks out of order"
        );
        let store = PublisherStore::open(&self.node(Role::Publisher).dir, 256 << 20)
            .unwrap_or_else(|e| fail(seed, format!("reopening the master: {e}")));
        let tables = store.tables(DB).unwrap();
        let last = store.last_version(DB).unwrap();
        if self.node(Role::Publisher).mode == "async" && last < max_acked {
            // Acknowledged before journaled: lost, within the bound, and never delivered.
            let lost = max_acked - last;
            if lost > mcsync::ASYNC_MAX_PENDING as u64 {
                fail(
                    seed,
                    format!(
                        "async publisher lost {lost} acknowledged versions, more than the bound"
                    ),
                );
            }
            self.async_lost += lost;
            self.forget_acks_after(last);
            max_acked = last;
        }
        if last < max_acked {
            fail(
                seed,
                format!("acknowledged version {max_acked} lost: the master reopened at {last}"),
            );
        }
        // One commit at a time is in flight: the last process may have journaled one
        // version past what it acknowledged, or past the version it opened at.
        let floor = max_acked.max(self.master_opened);
        if last > floor + 1 || last < self.master_opened {
            fail(
                seed,
                format!(
                    "master at {last}, but {max_acked} acknowledged and the last publisher \
                     opened at {} (one commit in flight)",
                    self.master_opened
                ),
            );
        }
        self.master_opened = last;
        self.check_hosts_not_ahead("after the publisher's kill");
        if let Some(v) = exact {
            assert_eq!(last, v, "seed {seed}: master version at the end");
        }
        let oldest = store.oldest_version(tables).unwrap();
        let journal = store
            .read_journal(tables, oldest, last, usize::MAX, usize::MAX)
            .unwrap();
        let held = journal.len() as u64;
        if last > 0 && (oldest == 0 || held != last - oldest + 1) {
            fail(
                seed,
                format!("journal not contiguous: {held} entries from {oldest} to {last}"),
            );
        }
        if held < last.min(RETENTION) {
            fail(
                seed,
                format!("retention kept {held} entries, fewer than {RETENTION}"),
            );
        }
        let limits = mcsync::wire::update::Limits {
            max_update_bytes: usize::MAX,
        };
        for (v, bytes) in &journal {
            let u = mcsync::wire::update::decode_update(bytes, &limits)
                .unwrap_or_else(|e| fail(seed, format!("journal entry {v} undecodable: {e}")));
            let want = ops_for(seed, *v);
            let same = u.version == *v
                && u.ops.len() == want.len()
                && u.ops
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.kind == b.kind && a.key == b.key && a.value == b.value);
            if !same {
                fail(seed, format!("journal entry {v} differs from the model"));
            }
        }
        let state: BTreeMap<_, _> = store.state(tables).unwrap().into_iter().collect();
        if state != state_at(seed, last) {
            fail(
                seed,
                format!("master state differs from the model at version {last}"),
            );
        }
        last
    }

    /// Drops acknowledgements past `version` from the acks file (an `Async` publisher lost
    /// them; its next life reissues those versions).
    fn forget_acks_after(&mut self, version: u64) {
        let path = self.acks_path();
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap() <= version)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap();
    }

    /// No host holds a version the master does not have (as its last check found it):
    /// an update reaches subscribers only once journaled, whatever the durability.
    fn check_hosts_not_ahead(&mut self, when: &str) {
        let master = self.master_opened;
        for i in 0..self.nodes.len() {
            if let Role::Subscriber(_) = self.nodes[i].role {
                let host = self.nodes[i].progress.said.lock().unwrap().version;
                if host > master {
                    fail(
                        self.seed,
                        format!(
                            "{when}: subscriber {i}'s host holds version {host}, past the                              master's {master}"
                        ),
                    );
                }
            }
        }
    }

    /// A subscriber after a kill (or the clean end): its replica equals the master at the
    /// replica's version, its host table equals the master at the host's version, the
    /// host is not ahead of the replica, and no update reached the host twice.
    fn check_subscriber(&mut self, role: Role, exact: Option<u64>) {
        let seed = self.seed;
        self.checks += 1;
        let (dir, host_dir) = {
            let n = self.node(role);
            (n.dir.clone(), n.host_dir.clone())
        };
        if let Ok(why) = std::fs::read_to_string(host_dir.join("DUPLICATE")) {
            fail(seed, format!("{role:?}: duplicate delivery: {why}"));
        }
        let (mode, said_host) = {
            let n = self.node(role);
            (n.mode, n.progress.said.lock().unwrap().version)
        };
        // Opening the store syncs it and drops the marker (same boot); it is put back after,
        // so the next life reopens the store as the kill left it.
        let marker = unsynced::read_marker(&dir).unwrap();
        if marker.is_some() {
            *self.markers_by_mode.entry(mode).or_default() += 1;
        }
        let (applied, replica) = {
            let store = SubscriberStore::open(&dir, 256 << 20)
                .unwrap_or_else(|e| fail(seed, format!("reopening {role:?}'s replica: {e}")));
            if store.rebuilt() {
                fail(
                    seed,
                    format!("{role:?} ({mode}): a kill -9 made the store be rebuilt"),
                );
            }
            let tables = store.tables(DB).unwrap();
            let applied = store.applied_version(DB).unwrap();
            let replica: BTreeMap<_, _> = store.all(tables).unwrap().into_iter().collect();
            (applied, replica)
        };
        if let Some(m) = marker {
            unsynced::write_marker(&dir, &m).unwrap();
        }
        if applied < said_host {
            fail(
                seed,
                format!(
                    "{role:?} ({mode}): applied update lost: the replica reopened at {applied}, \
                     but its host had stored {said_host}"
                ),
            );
        }
        if applied > self.target {
            fail(
                seed,
                format!(
                    "{role:?}: replica at {applied}, past everything published ({})",
                    self.target
                ),
            );
        }
        if replica != state_at(seed, applied) {
            fail(
                seed,
                format!("{role:?}: replica differs from the master at its version {applied}"),
            );
        }
        let (host, rows, seen) = read_host(&host_dir);
        if host > applied {
            fail(
                seed,
                format!("{role:?}: host at {host}, ahead of its replica at {applied}"),
            );
        }
        if rows != state_at(seed, host) {
            fail(
                seed,
                format!("{role:?}: host table differs from the master at its version {host}"),
            );
        }
        if seen.last().copied().unwrap_or(0) != host {
            fail(
                seed,
                format!("{role:?}: host at {host} but last saw {:?}", seen.last()),
            );
        }
        if let Some(v) = exact {
            assert_eq!(
                (applied, host),
                (v, v),
                "seed {seed}: {role:?} (replica, host) at the end"
            );
        }
    }

    /// Starts every node that is not running, without a crash point (the publisher first).
    fn start_missing(&mut self, except: Option<Role>) {
        for i in 0..self.nodes.len() {
            let role = self.nodes[i].role;
            if Some(role) != except && !self.nodes[i].alive() {
                self.start(role, None);
            }
        }
    }

    /// Makes sure `role` is not running: kills it from outside (a kill like any other,
    /// checked) if it is.
    fn stop_by_kill(&mut self, role: Role) {
        if self.node(role).alive() {
            let st = self.kill(role);
            self.after_death(role, st, None);
        }
    }

    /// One round: kills one process, at `point` or (None) from outside after a delay.
    fn round(&mut self, point: Option<&'static str>) {
        self.check_nobody_else_died();
        let sub = Role::Subscriber(self.rng.range(0, 1) as usize);
        let Some(point) = point else {
            let victim = if self.rng.chance(30) {
                Role::Publisher
            } else {
                sub
            };
            self.start_missing(None);
            let n = self.rng.range(10, 80);
            self.publish(n);
            std::thread::sleep(Duration::from_millis(self.rng.range(0, 300)));
            let st = self.kill(victim);
            self.after_death(victim, st, None);
            return;
        };
        let victim = if point.starts_with("journal")
            || point.starts_with("state")
            || point.starts_with("retention")
            || point.starts_with("repair")
        {
            Role::Publisher
        } else {
            sub
        };
        // An `Async` publisher group-commits far more updates per journal commit: its
        // journal points come after fewer commits.
        let lives = self.node(Role::Publisher).lives;
        let async_next = victim == Role::Publisher
            && PUBLISHER_MODES[((lives + self.seed) % 2) as usize] == "async";
        let n = match point {
            "journal.in_commit" | "journal.after_commit" if async_next => self.rng.range(1, 3),
            "journal.in_commit" | "journal.after_commit" | "deliver.between" => {
                self.rng.range(1, 30)
            }
            "apply.in_txn" | "apply.after_commit" | "state.in_commit" => self.rng.range(1, 4),
            "retention.trim" => self.rng.range(1, 2),
            _ => 1,
        };
        match point {
            "repair.compact" => {
                // A subscriber that was caught up, then kept away while the master moves on
                // (less than the journal keeps), catches up compacted.
                self.start_missing(None);
                let target = self.target;
                let p = self.node(sub).progress.clone();
                p.wait(|s| s.version >= target);
                self.stop_by_kill(sub);
                self.stop_by_kill(victim);
                self.start(victim, Some((point, n)));
                let gap = self.rng.range(COMPACT_AFTER + 15, RETENTION - 60);
                self.publish(gap);
                self.wait_idle();
                self.start(sub, None);
            }
            "resync.apply" => {
                // A subscriber kept away past what the journal holds resyncs by hashes.
                self.stop_by_kill(victim);
                self.start_missing(Some(victim));
                let gap = self.rng.range(RETENTION + 20, RETENTION + 80);
                self.publish(gap);
                self.wait_idle();
                self.start(victim, Some((point, n)));
            }
            _ => {
                self.stop_by_kill(victim);
                self.start_missing(Some(victim));
                self.start(victim, Some((point, n)));
                let more = n + self.rng.range(10, 40);
                self.publish(more);
            }
        }
        // Wait for the crash point; while everything is idle, publish more to reach it.
        let mut status = None;
        for _ in 0..6 {
            status = self.wait_death(victim, Duration::from_millis(300));
            if status.is_some() {
                break;
            }
            if self.node(Role::Publisher).alive() {
                self.wait_idle_or_death(victim);
                status = self.wait_death(victim, Duration::from_millis(200));
                if status.is_some() {
                    break;
                }
            }
            self.check_nobody_else_died();
            let more = self.rng.range(10, 40);
            self.publish(more);
        }
        match status {
            Some(st) => self.after_death(victim, st, Some(point)),
            None => {
                *self.unreached.entry(point).or_default() += 1;
                if !self.by_point.contains_key(point) {
                    self.again.push(point);
                }
                let st = self.kill(victim);
                self.after_death(victim, st, None);
            }
        }
    }

    /// Waits until the publisher is idle at the target (it committed everything asked).
    fn wait_idle(&mut self) {
        let target = self.target;
        let p = self.node(Role::Publisher).progress.clone();
        // It may die at its crash point on the way; the caller finds out.
        p.wait(|s| s.idle == Some(target));
    }

    /// Waits until the publisher is idle at the target or `victim` died.
    fn wait_idle_or_death(&mut self, victim: Role) {
        let target = self.target;
        let deadline = Instant::now() + DEADLINE;
        let p = self.node(Role::Publisher).progress.clone();
        while Instant::now() < deadline {
            if !self.node(victim).alive() {
                return;
            }
            let s = p.said.lock().unwrap();
            if s.idle == Some(target) || s.eof {
                return;
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs everything clean to one last version, stops it, and checks all stores equal.
    fn finish(&mut self) {
        let seed = self.seed;
        self.start_missing(None);
        self.publish(30);
        let target = self.target;
        for i in 0..self.nodes.len() {
            let role = self.nodes[i].role;
            let p = self.nodes[i].progress.clone();
            let done = match role {
                Role::Publisher => p.wait(|s| s.idle == Some(target)),
                Role::Subscriber(_) => p.wait(|s| s.version >= target),
            };
            if !done {
                let said = format!("{:?}", p.said.lock().unwrap());
                fail(
                    seed,
                    format!("{role:?} did not reach version {target} at the end: {said}"),
                );
            }
        }
        // Subscribers first, so they do not chase a closed publisher.
        for i in (0..self.nodes.len()).rev() {
            let role = self.nodes[i].role;
            let node = &mut self.nodes[i];
            drop(node.stdin.take());
            let child = node.child.as_mut().unwrap();
            let deadline = Instant::now() + DEADLINE;
            let st = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: {role:?} did not stop"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            if !st.success() {
                fail(seed, format!("{role:?} stopped with {st}"));
            }
            node.child = None;
        }
        self.check_publisher(Some(target));
        for i in 0..2 {
            let role = Role::Subscriber(i);
            if unsynced::read_marker(&self.node(role).dir)
                .unwrap()
                .is_some()
            {
                let mode = self.node(role).mode;
                fail(
                    seed,
                    format!("{role:?} ({mode}): a clean stop left the unsynced marker"),
                );
            }
            self.check_subscriber(role, Some(target));
        }
    }
}

/// The host store's version, table and seen versions (nothing if it was never created).
fn read_host(dir: &Path) -> (u64, BTreeMap<Vec<u8>, Vec<u8>>, Vec<u64>) {
    use lmdb::{Cursor, Transaction};
    if !dir.join("data.mdb").exists() {
        return (0, BTreeMap::new(), Vec::new());
    }
    let env = lmdb::Environment::new()
        .set_max_dbs(8)
        .set_map_size(1 << 30)
        .open(dir)
        .unwrap();
    let open = |name| env.open_db(Some(name)).ok();
    let (Some(rows), Some(meta), Some(seen)) = (open("rows"), open("meta"), open("seen")) else {
        return (0, BTreeMap::new(), Vec::new());
    };
    let txn = env.begin_ro_txn().unwrap();
    let version = match txn.get(meta, b"version") {
        Ok(b) => u64::from_be_bytes(b.try_into().unwrap()),
        Err(_) => 0,
    };
    let mut table = BTreeMap::new();
    for item in txn.open_ro_cursor(rows).unwrap().iter_start() {
        let (k, v) = item.unwrap();
        table.insert(k.to_vec(), v.to_vec());
    }
    let mut versions = Vec::new();
    for item in txn.open_ro_cursor(seen).unwrap().iter_start() {
        let (k, _) = item.unwrap();
        versions.push(u64::from_be_bytes(k.try_into().unwrap()));
    }
    (version, table, versions)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn kill_nine_anywhere_loses_nothing_acknowledged_and_every_store_stays_a_master_version() {
    let seed = env_u64("MCSYNC_CRASH_SEED").unwrap_or_else(rand::random);
    eprintln!("crash seed {seed} (rerun with MCSYNC_CRASH_SEED={seed})");
    let want_kills = env_u64("MCSYNC_CRASH_KILLS").unwrap_or(50);
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("mcsync-crash-")
        .tempdir()
        .unwrap()
        .keep();
    eprintln!("crash test directory {}", root.display());
    let (g, port) = mcsync_tests::unique_group();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let node = |role: Role, name: &str| Node {
        role,
        child: None,
        stdin: None,
        progress: Arc::default(),
        dir: root.join(name),
        host_dir: root.join(format!("{name}-host")),
        log: root.join(format!("{name}.log")),
        lives: 0,
        mode: "",
    };
    let mut run = Run {
        seed,
        rng: SplitMix(seed),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_crash_node")),
        listen,
        group: format!("{g}:{port}"),
        fingerprint: None,
        nodes: vec![
            node(Role::Publisher, "pub"),
            node(Role::Subscriber(0), "sub0"),
            node(Role::Subscriber(1), "sub1"),
        ],
        root: root.clone(),
        target: RETENTION + 50,
        master_opened: 0,
        kills: 0,
        external: 0,
        by_point: BTreeMap::new(),
        unreached: BTreeMap::new(),
        again: Vec::new(),
        checks: 0,
        kills_by_mode: BTreeMap::new(),
        publisher_kills_by_mode: BTreeMap::new(),
        async_lost: 0,
        markers_by_mode: BTreeMap::new(),
    };
    run.start_missing(None);
    run.wait_idle();
    // Every crash point once, in a seeded order, then a seeded mix with outside kills.
    let mut order: Vec<&'static str> = mcsync::crash::POINTS.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, run.rng.range(0, i as u64) as usize);
    }
    let mut rounds: u64 = 0;
    while run.kills < want_kills || rounds < order.len() as u64 {
        let point = match order.get(rounds as usize) {
            Some(p) => Some(*p),
            None if !run.again.is_empty() => run.again.pop(),
            None if run.rng.chance(65) => Some(
                mcsync::crash::POINTS
                    [run.rng.range(0, mcsync::crash::POINTS.len() as u64 - 1) as usize],
            ),
            None => None,
        };
        run.round(point);
        rounds += 1;
        assert!(
            rounds < 10 * want_kills.max(10),
            "seed {seed}: too many rounds"
        );
    }
    run.finish();
    eprintln!(
        "crash seed {seed}: {} kills in {rounds} rounds ({} at crash points {:?}, {} from \
         outside; crash points not reached: {:?}), subscriber kills by replica durability {:?} \
         (unsynced marker found {:?}), publisher kills by durability {:?} ({} acknowledged \
         async versions lost and reissued), {} store checks, final version {}, {:.1} s",
        run.kills,
        run.kills - run.external,
        run.by_point,
        run.external,
        run.unreached,
        run.kills_by_mode,
        run.markers_by_mode,
        run.publisher_kills_by_mode,
        run.async_lost,
        run.checks,
        run.target,
        started.elapsed().as_secs_f64()
    );
    assert!(run.kills >= want_kills);
    for m in MODES {
        assert!(
            run.kills_by_mode.contains_key(m),
            "seed {seed}: no subscriber was killed with replica durability {m}: {:?}",
            run.kills_by_mode
        );
    }
    for m in PUBLISHER_MODES {
        assert!(
            run.publisher_kills_by_mode.contains_key(m),
            "seed {seed}: no publisher was killed with durability {m}: {:?}",
            run.publisher_kills_by_mode
        );
    }
    for p in mcsync::crash::POINTS {
        assert!(
            run.by_point.contains_key(p),
            "seed {seed}: crash point {p} never reached: {:?}",
            run.by_point
        );
    }
    if std::env::var_os("MCSYNC_CRASH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
