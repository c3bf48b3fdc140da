//! Baselines measured beside mcsync in the same run: plain UDP multicast with no protocol
//! (the raw limit) and unicast fan-out over one TCP connection per subscriber.

use mcsync::net::socket::{receiver_socket, sender_socket};
use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What the raw multicast run measured.
#[derive(Clone, Copy)]
pub struct RawResult {
    /// Updates delivered per second to each receiver (mean over receivers), counted until
    /// the last receiver got its last datagram.
    pub updates_per_s: f64,
    /// Fraction of the datagrams sent that receivers did not get (their buffers overflowed).
    pub loss: f64,
    /// Datagrams sent per update.
    pub datagrams_per_update: usize,
}

/// Sends `updates` updates of `payload` bytes each, cut into datagrams of at most
/// `max_datagram` bytes, from one thread to `group`, received by `receivers` sockets
/// (one thread each) joined on 127.0.0.1. No protocol: no header, no sealing, no
/// ordering, no repair.
pub fn raw_multicast(
    group: SocketAddr,
    receivers: usize,
    payload: usize,
    max_datagram: usize,
    updates: usize,
    ttl: u32,
) -> Result<RawResult, Box<dyn std::error::Error>> {
    let max_datagram = max_datagram.max(1);
    let mut chunks = Vec::new();
    let mut left = payload;
    while left > 0 {
        let c = left.min(max_datagram);
        chunks.push(c);
        left -= c;
    }
    let per_update = chunks.len();
    let total = per_update * updates;
    let ready = Arc::new(Barrier::new(receivers + 1));
    let done = Arc::new(AtomicBool::new(false));
    let mut socks = Vec::new();
    for _ in 0..receivers {
        let (s, _granted) = receiver_socket(group, Ipv4Addr::LOCALHOST, 8 << 20)?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        socks.push(s);
    }
    let handles: Vec<_> = socks
        .into_iter()
        .map(|s| {
            let (ready, done) = (ready.clone(), done.clone());
            std::thread::spawn(move || receive_count(s, total, &ready, &done))
        })
        .collect();
    let tx = sender_socket(Ipv4Addr::LOCALHOST, ttl, true)?;
    let buf = vec![0xA5u8; max_datagram.min(payload).max(1)];
    ready.wait();
    let start = Instant::now();
    for _ in 0..updates {
        for &c in &chunks {
            send_retrying(&tx, &buf[..c], group);
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut got = 0u64;
    let mut last = start;
    for h in handles {
        let (n, t) = h.join().map_err(|_| "raw receiver panicked")?;
        got += n;
        if let Some(t) = t {
            last = last.max(t);
        }
    }
    let secs = last.duration_since(start).as_secs_f64().max(1e-6);
    let per_receiver = got as f64 / receivers as f64;
    Ok(RawResult {
        updates_per_s: per_receiver / per_update as f64 / secs,
        loss: 1.0 - per_receiver / total as f64,
        datagrams_per_update: per_update,
    })
}

fn receive_count(
    s: UdpSocket,
    expected: usize,
    ready: &Barrier,
    done: &AtomicBool,
) -> (u64, Option<Instant>) {
    let mut buf = vec![0u8; 65_536];
    let mut n = 0u64;
    let mut last = None;
    let mut idle_since: Option<Instant> = None;
    ready.wait();
    while (n as usize) < expected {
        match s.recv_from(&mut buf) {
            Ok(_) => {
                n += 1;
                last = Some(Instant::now());
                idle_since = None;
            }
            Err(_) => {
                if done.load(Ordering::SeqCst) {
                    // The sender finished; whatever has not arrived 200 ms later was dropped.
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(200) {
                        break;
                    }
                }
            }
        }
    }
    (n, last)
}

/// Sends one datagram, retrying briefly while the socket buffer is full.
fn send_retrying(s: &UdpSocket, d: &[u8], to: SocketAddr) {
    for _ in 0..1000 {
        match s.send_to(d, to) {
            Ok(_) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN)) => {
                std::thread::sleep(Duration::from_micros(20));
            }
            Err(_) => return,
        }
    }
}

/// What the unicast fan-out baseline measured.
pub struct TcpResult {
    /// Application bytes the sender wrote, per update (all connections together).
    pub bytes_per_update: f64,
    /// Updates per second until every receiver had every update.
    pub updates_per_s: f64,
}

/// Sends every encoded update (framed by a 4-byte length) over one TCP connection per
/// subscriber on loopback, from one sender thread, and counts what the receivers read.
pub fn tcp_fanout(
    subscribers: usize,
    encoded: &[Vec<u8>],
) -> Result<TcpResult, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let receivers: Vec<_> = (0..subscribers)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
                let mut s = TcpStream::connect(addr)?;
                let mut buf = vec![0u8; 256 << 10];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf)? {
                        0 => return Ok((n, Instant::now())),
                        k => n += k as u64,
                    }
                }
            })
        })
        .collect();
    let mut conns = Vec::new();
    for _ in 0..subscribers {
        let (s, _) = listener.accept()?;
        conns.push(BufWriter::with_capacity(64 << 10, s));
    }
    let start = Instant::now();
    let mut written = 0u64;
    for u in encoded {
        let len = (u.len() as u32).to_be_bytes();
        for c in conns.iter_mut() {
            c.write_all(&len)?;
            c.write_all(u)?;
            written += (len.len() + u.len()) as u64;
        }
    }
    for c in conns {
        let s = c.into_inner().map_err(|e| e.into_error())?;
        s.shutdown(std::net::Shutdown::Write)?;
    }
    let mut read = 0u64;
    let mut last = start;
    for r in receivers {
        let (n, t) = r.join().map_err(|_| "TCP receiver panicked")??;
        read += n;
        last = last.max(t);
    }
    if read != written {
        return Err(format!("TCP baseline: wrote {written} bytes, receivers read {read}").into());
    }
    Ok(TcpResult {
        bytes_per_update: written as f64 / encoded.len().max(1) as f64,
        updates_per_s: encoded.len() as f64 / last.duration_since(start).as_secs_f64().max(1e-6),
    })
}
