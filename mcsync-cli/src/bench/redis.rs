//! Optional side-by-side reference: Redis replicating 1 KiB SETs from one master to 8
//! replicas on 127.0.0.1 (`redis-server` from PATH; started and stopped here).

use super::BenchResult;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REPLICAS: usize = 8;
const VALUE: usize = 1024;

/// What the Redis run measured.
#[derive(Serialize)]
pub struct RedisResult {
    pub server_version: String,
    pub replicas: usize,
    pub value_bytes: usize,
    pub updates: usize,
    pub client_connections: usize,
    pub persistence: String,
    /// SETs per second until every replica's offset reached the master's.
    pub updates_per_s: f64,
    /// Replication stream bytes per SET, sent to each replica.
    pub bytes_per_update_per_replica: f64,
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(port: u16) -> BenchResult<Conn> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    return Ok(Conn {
                        r: BufReader::new(s.try_clone()?),
                        w: s,
                    });
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("redis on port {port}: {e}").into())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn command(&mut self, args: &[&[u8]]) -> BenchResult<Vec<u8>> {
        let mut m = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            m.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            m.extend_from_slice(a);
            m.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&m)?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let line = line.trim_end();
        match line.as_bytes().first() {
            Some(b'+') | Some(b':') => Ok(line.as_bytes()[1..].to_vec()),
            Some(b'$') => {
                let n: i64 = line[1..].parse()?;
                if n < 0 {
                    return Ok(Vec::new());
                }
                let mut v = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut v)?;
                v.truncate(n as usize);
                Ok(v)
            }
            _ => Err(format!("redis replied {line:?}").into()),
        }
    }

    fn info_field(&mut self, field: &str) -> BenchResult<Option<String>> {
        let info = self.command(&[b"INFO", b"replication"])?;
        let text = String::from_utf8_lossy(&info);
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned()))
    }
}

/// Runs master + 8 replicas, SETs 1 KiB values from `clients` connections (each waiting
/// for its reply), and times until every replica has them. `durable`: every server keeps
/// an append-only file fsynced before it replies (`appendfsync always`); otherwise nothing
/// is persisted.
pub fn measure(
    data_root: &Path,
    quick: bool,
    clients: usize,
    durable: bool,
) -> BenchResult<RedisResult> {
    let version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("--redis needs redis-server on PATH: {e}"))?;
    let version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("?")
        .to_owned();
    let dir = tempfile::Builder::new()
        .prefix("mcsync-bench-redis-")
        .tempdir_in(data_root)?;
    let ports: Vec<u16> = (0..=REPLICAS)
        .map(|_| free_port())
        .collect::<BenchResult<_>>()?;
    let mut servers = Servers(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let d = dir.path().join(format!("r{i}"));
        std::fs::create_dir_all(&d)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"])
            .args(if durable {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .args(["--dir", &d.display().to_string(), "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if i > 0 {
            cmd.args(["--replicaof", "127.0.0.1", &ports[0].to_string()]);
        }
        servers.0.push(cmd.spawn()?);
    }
    let mut master = Conn::open(ports[0])?;
    let mut reps = ports[1..]
        .iter()
        .map(|p| Conn::open(*p))
        .collect::<BenchResult<Vec<_>>>()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in &mut reps {
        while r.info_field("master_link_status")?.as_deref() != Some("up") {
            if Instant::now() > deadline {
                return Err("redis replicas did not connect within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let offset = |c: &mut Conn, f: &str| -> BenchResult<u64> {
        Ok(c.info_field(f)?.unwrap_or_default().parse().unwrap_or(0))
    };
    let start_offset = offset(&mut master, "master_repl_offset")?;
    let updates = if quick { 5_000 } else { 100_000 };
    let vals = super::values(updates, VALUE, 0x5ed15);
    let next = AtomicUsize::new(0);
    let master_port = ports[0];
    let t0 = Instant::now();
    std::thread::scope(|s| -> BenchResult<()> {
        let hs: Vec<_> = (0..clients.max(1))
            .map(|_| {
                let (next, vals) = (&next, &vals);
                s.spawn(move || -> Result<(), String> {
                    let mut c = Conn::open(master_port).map_err(|e| e.to_string())?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= vals.len() {
                            return Ok(());
                        }
                        let k = super::key("r", i);
                        c.command(&[b"SET", k.as_bytes(), &vals[i]])
                            .map_err(|e| e.to_string())?;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| "redis client panicked")??;
        }
        Ok(())
    })?;
    let end_offset = offset(&mut master, "master_repl_offset")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for r in &mut reps {
        while offset(r, "slave_repl_offset")? < end_offset {
            if Instant::now() > deadline {
                return Err("redis replicas did not catch up within 120 s".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(servers);
    Ok(RedisResult {
        server_version: version,
        replicas: REPLICAS,
        value_bytes: VALUE,
        updates,
        client_connections: clients.max(1),
        persistence: if durable {
            "append-only file, appendfsync always, on the master and every replica".into()
        } else {
            "none (--save \"\" --appendonly no): replication from memory".into()
        },
        updates_per_s: updates as f64 / secs,
        bytes_per_update_per_replica: end_offset.saturating_sub(start_offset) as f64
            / updates as f64,
    })
}
