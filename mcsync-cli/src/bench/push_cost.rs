//! (e′) What pushing the stream costs the publisher, by transport: the same sealed
//! 1,400-byte datagrams sent to k receivers as unicast UDP (GSO runs of 64, what the
//! multicaster does) or as PACKET_DATA frames over k TLS 1.3 connections (the alternative
//! issue 17 names). Measures the sending thread's CPU time per datagram per receiver and
//! how many datagrams per second each receiver got; nothing but the transport differs.

use super::*;
use mcsync::net::batch::{BatchReceiver, BatchSender};
use mcsync::net::frame::{read_message, write_message};
use mcsync::net::tls::{ClientTls, ServerTls};
use mcsync::wire::control::Message;
use mcsync::ServerIdentity;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};

/// Receiver counts measured.
const RECEIVERS: [usize; 2] = [4, 8];
/// Datagram size (the library's default).
const DATAGRAM: usize = 1_400;

#[derive(Serialize)]
pub(super) struct PushCostRow {
    pub(super) transport: String,
    pub(super) receivers: usize,
    pub(super) datagrams: usize,
    /// Sending thread CPU time per datagram per receiver, µs.
    pub(super) sender_cpu_us: f64,
    /// Datagrams per second each receiver got (all arrived / wall time).
    pub(super) per_receiver_per_s: f64,
    /// Fraction of what was sent that arrived (UDP may drop when a receiver lags).
    pub(super) delivered: f64,
}

/// CPU time the calling thread used so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Both transports for 4 and 8 receivers, `n` datagrams each.
pub(super) fn push_cost(ctx: &mut Ctx, n: usize) -> BenchResult<Vec<PushCostRow>> {
    let datagrams: Vec<Arc<Vec<u8>>> = values(n, DATAGRAM, ctx.seed ^ 0x9c)
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut rows = Vec::new();
    for &k in &RECEIVERS {
        ctx.bar.set_message(format!(
            "(e) push cost: {n} datagrams to {k} receivers, UDP and TLS"
        ));
        rows.push(udp(&datagrams, k)?);
        rows.push(tls(ctx, &datagrams, k)?);
    }
    Ok(rows)
}

fn udp(datagrams: &[Arc<Vec<u8>>], k: usize) -> BenchResult<PushCostRow> {
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let mut receivers = Vec::new();
    for _ in 0..k {
        let (s, _) = mcsync::net::socket::unicast_socket([127, 0, 0, 1].into(), 8 << 20)?;
        receivers.push(s);
    }
    let targets: Vec<SocketAddr> = receivers
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let want = datagrams.len();
    let t0 = Instant::now();
    let (got, cpu) = std::thread::scope(|s| {
        let handles: Vec<_> = receivers
            .iter()
            .map(|r| {
                s.spawn(move || {
                    let mut rx = BatchReceiver::new(r);
                    let (mut got, mut idle) = (0, 0);
                    // Until all came, or nothing came for 20 read timeouts (1 s).
                    while got < want && idle < 20 {
                        match rx.recv(r) {
                            Ok(d) => {
                                got += d.datagrams().count();
                                idle = 0;
                            }
                            Err(_) => idle += 1,
                        }
                    }
                    got
                })
            })
            .collect();
        let cpu0 = thread_cpu();
        let mut batch = BatchSender::new(targets[0]);
        for chunk in datagrams.chunks(64) {
            for d in chunk {
                batch.push(d.clone());
            }
            for t in &targets {
                batch.send_to(&sender, *t, "push-cost");
            }
            batch.clear();
        }
        let cpu = thread_cpu() - cpu0;
        let got: Vec<usize> = handles
            .into_iter()
            .map(|h| h.join().expect("receiver"))
            .collect();
        (got, cpu)
    });
    Ok(row("udp (GSO)", k, want, &got, cpu, t0.elapsed()))
}

fn row(
    transport: &str,
    k: usize,
    n: usize,
    got: &[usize],
    cpu: Duration,
    wall: Duration,
) -> PushCostRow {
    let all: usize = got.iter().sum();
    PushCostRow {
        transport: transport.into(),
        receivers: k,
        datagrams: n,
        sender_cpu_us: cpu.as_secs_f64() * 1e6 / (n * k) as f64,
        per_receiver_per_s: all as f64 / k as f64 / wall.as_secs_f64().max(1e-9),
        delivered: all as f64 / (n * k) as f64,
    }
}

fn tls(ctx: &Ctx, datagrams: &[Arc<Vec<u8>>], k: usize) -> BenchResult<PushCostRow> {
    let dir = tempfile::Builder::new()
        .prefix("mcsync-bench-tls-")
        .tempdir_in(&ctx.data_root)?;
    let server = ServerTls::load(&ServerIdentity::SelfSigned, dir.path())?;
    let fp = server.fingerprint.clone().ok_or("no fingerprint")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let client = ClientTls::new(&ServerTrust::Fingerprint(fp), addr, None)?;
    let want = datagrams.len();
    let t0 = Instant::now();
    let (got, cpu) = std::thread::scope(|s| -> BenchResult<(Vec<usize>, Duration)> {
        let handles: Vec<_> = (0..k)
            .map(|_| {
                let client = client.clone();
                s.spawn(move || -> mcsync::Result<usize> {
                    let tcp = TcpStream::connect(addr).map_err(|e| mcsync::Error::io("tcp", e))?;
                    let mut r = std::io::BufReader::new(client.connect(tcp)?);
                    let mut got = 0;
                    while got < want {
                        match read_message(&mut r, 1 << 20)? {
                            Some((Message::PacketData(_), _)) => got += 1,
                            _ => break,
                        }
                    }
                    Ok(got)
                })
            })
            .collect();
        let mut streams = Vec::new();
        for _ in 0..k {
            let (tcp, _) = listener.accept()?;
            tcp.set_nodelay(true)?;
            streams.push(std::io::BufWriter::with_capacity(
                256 << 10,
                server.accept(tcp)?,
            ));
        }
        let cpu0 = thread_cpu();
        for chunk in datagrams.chunks(64) {
            for w in streams.iter_mut() {
                for d in chunk {
                    write_message(w, &Message::PacketData(d.to_vec()))?;
                }
                w.flush()?;
            }
        }
        let cpu = thread_cpu() - cpu0;
        let mut got = Vec::new();
        for h in handles {
            got.push(h.join().expect("receiver")?);
        }
        Ok((got, cpu))
    })?;
    Ok(row("tls 1.3", k, want, &got, cpu, t0.elapsed()))
}

/// Table (e′).
pub(super) fn print_push_cost(r: &Report) {
    println!(
        "\n(e') Push cost by transport: {DATAGRAM}-byte sealed datagrams to k receivers (one \
         sending thread)"
    );
    println!(
        "{:>10} {:>5} {:>10} {:>16} {:>16} {:>10}",
        "transport", "k", "datagrams", "sender CPU µs*", "per receiver/s", "delivered"
    );
    for x in &r.push_cost {
        println!(
            "{:>10} {:>5} {:>10} {:>16.2} {:>16.0} {:>9.1}%",
            x.transport,
            x.receivers,
            x.datagrams,
            x.sender_cpu_us,
            x.per_receiver_per_s,
            x.delivered * 100.0
        );
    }
    println!("  * per datagram per receiver; TLS also copies each datagram into a frame");
}
