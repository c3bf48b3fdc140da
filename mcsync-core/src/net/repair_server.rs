//! The publisher's repair server: answers HELLO with a database's parameters and streams
//! missed versions from the journal. One thread accepts; one thread serves each
//! connection, so a slow subscriber costs only its own connection and never the
//! multicaster.

use super::frame::{read_message, write_message};
use super::StopFlag;
use crate::stats::{add, inc, PublisherCounters};
use crate::store::publisher::DbTables;
use crate::store::PublisherStore;
use crate::wire::control::{DatabaseInfo, ErrorCode, Message, CONTROL_VERSION};
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server knows of a published database.
pub trait PublishedDatabase: Send + Sync {
    /// Parameters for HELLO.
    fn info(&self) -> DatabaseInfo;
    /// Journal tables.
    fn tables(&self) -> DbTables;
    /// Latest committed (journaled) version.
    fn committed_version(&self) -> u64;
    /// A recently multicast datagram, for packet repair.
    fn resend(&self, stream_id: u32, seq: u64) -> Option<Arc<Vec<u8>>>;
}

/// State shared by the accept thread and the connection threads.
pub struct ServerContext {
    /// The store the journal is read from.
    pub store: Arc<PublisherStore>,
    /// Databases by name.
    pub databases: RwLock<HashMap<String, Arc<dyn PublishedDatabase>>>,
    /// Counters.
    pub counters: Arc<PublisherCounters>,
    /// Largest frame accepted from a client.
    pub max_request_frame: usize,
    /// Stop flag of the whole server.
    pub stop: StopFlag,
}

/// Most connections served at once; more are refused with an error frame.
const MAX_CONNECTIONS: usize = 512;
/// Updates per journal read while streaming (bounds memory per connection).
const BATCH_UPDATES: usize = 512;
const BATCH_BYTES: usize = 4 << 20;
/// How often an idle connection checks the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Longest wait for the rest of a frame, or for a client to take what is sent.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Open connections: a handle to shut each down, and its thread.
type Connections = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// The running server: its address and threads.
pub struct RepairServer {
    addr: SocketAddr,
    ctx: Arc<ServerContext>,
    accept: Option<JoinHandle<()>>,
    conns: Connections,
}

impl RepairServer {
    /// Binds `addr` and starts accepting.
    pub fn start(addr: SocketAddr, ctx: Arc<ServerContext>) -> Result<RepairServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("binding repair server {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("repair server address", e))?;
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c2, k2) = (ctx.clone(), conns.clone());
        let accept = std::thread::Builder::new()
            .name("mcsync-repair-accept".into())
            .spawn(move || accept_loop(listener, c2, k2))
            .map_err(|e| Error::io("spawning repair server", e))?;
        Ok(RepairServer {
            addr,
            ctx,
            accept: Some(accept),
            conns,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and joins every thread.
    pub fn shutdown(&mut self) {
        self.ctx.stop.stop();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, h) in conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = h.join();
        }
    }
}

impl Drop for RepairServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    rc > 0
}

fn accept_loop(listener: TcpListener, ctx: Arc<ServerContext>, conns: Connections) {
    while !ctx.stop.is_stopped() {
        if !wait_readable(listener.as_raw_fd(), IDLE_POLL) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                log::warn!("repair server accept: {e}");
                continue;
            }
        };
        let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(_, h)| !h.is_finished());
        if list.len() >= MAX_CONNECTIONS {
            inc(&ctx.counters.repair_errors);
            let mut s = stream;
            let _ = write_message(&mut s, &error(ErrorCode::Internal, "too many connections"));
            continue;
        }
        let Ok(shut) = stream.try_clone() else {
            continue;
        };
        inc(&ctx.counters.repair_sessions);
        let c = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("mcsync-repair-conn".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &c) {
                    log::debug!("repair connection {peer}: {e}");
                }
            });
        if let Ok(h) = spawned {
            list.push((shut, h));
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

fn serve(stream: TcpStream, ctx: &ServerContext) -> Result<()> {
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|_| stream.set_nodelay(true))
        .map_err(|e| Error::io("repair socket options", e))?;
    let fd = stream.as_raw_fd();
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| Error::io("clone", e))?);
    let mut writer = BufWriter::with_capacity(256 << 10, stream);
    let mut db: Option<Arc<dyn PublishedDatabase>> = None;
    loop {
        // Wait for the next request without holding a timeout over a half-read frame.
        while reader.buffer().is_empty() && !wait_readable(fd, IDLE_POLL) {
            if ctx.stop.is_stopped() {
                return Ok(());
            }
        }
        let msg = match read_message(&mut reader, ctx.max_request_frame) {
            Ok(Some((m, _))) => m,
            Ok(None) => return Ok(()),
            Err(e) => {
                inc(&ctx.counters.repair_errors);
                let _ = write_message(&mut writer, &error(ErrorCode::BadRequest, e.to_string()));
                let _ = writer.flush();
                return Err(e);
            }
        };
        let reply = match msg {
            Message::Hello {
                version, database, ..
            } => hello(ctx, version, &database, &mut db),
            Message::CatchupRequest { ranges } => match &db {
                Some(d) => catch_up(ctx, d.as_ref(), &ranges, &mut writer),
                None => Err(error(ErrorCode::BadRequest, "catch-up before HELLO")),
            },
            Message::PacketRequest { stream_id, ranges } => match &db {
                Some(d) => resend(ctx, d.as_ref(), stream_id, &ranges, &mut writer),
                None => Err(error(ErrorCode::BadRequest, "packet request before HELLO")),
            },
            other => Err(error(
                ErrorCode::BadRequest,
                format!("unexpected message from client: {other:?}"),
            )),
        };
        let msg = match reply {
            Ok(m) => m,
            Err(m) => {
                inc(&ctx.counters.repair_errors);
                m
            }
        };
        let n = write_message(&mut writer, &msg)?;
        add(&ctx.counters.repair_bytes_sent, n as u64);
        writer
            .flush()
            .map_err(|e| Error::io("flushing repair stream", e))?;
    }
}

fn hello(
    ctx: &ServerContext,
    version: u8,
    database: &str,
    db: &mut Option<Arc<dyn PublishedDatabase>>,
) -> std::result::Result<Message, Message> {
    if version != CONTROL_VERSION {
        return Err(error(
            ErrorCode::Version,
            format!("control protocol {version} unsupported (server speaks {CONTROL_VERSION})"),
        ));
    }
    let found = ctx
        .databases
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(database)
        .cloned();
    let Some(d) = found else {
        return Err(error(
            ErrorCode::UnknownDatabase,
            format!("database {database:?} is not published"),
        ));
    };
    let info = d.info();
    *db = Some(d);
    Ok(Message::HelloOk(info))
}

/// Most packets resent for one request.
const MAX_RESEND: u64 = 65_536;

fn resend(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    stream_id: u32,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let total: u64 = ranges.iter().map(|&(a, b)| b - a + 1).sum();
    if total > MAX_RESEND {
        return Err(error(
            ErrorCode::BadRequest,
            format!("{total} packets requested; at most {MAX_RESEND} per request"),
        ));
    }
    inc(&ctx.counters.packet_repairs_served);
    let mut missing = 0;
    for &(first, last) in ranges {
        for seq in first..=last {
            let Some(d) = db.resend(stream_id, seq) else {
                missing += 1;
                continue;
            };
            let n = write_message(w, &Message::PacketData(d.to_vec()))
                .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
            inc(&ctx.counters.packets_resent);
            add(&ctx.counters.repair_bytes_sent, n as u64);
        }
    }
    add(&ctx.counters.packets_not_resent, missing);
    Ok(Message::PacketEnd { missing })
}

fn catch_up(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let current = db.committed_version();
    let tables = db.tables();
    let internal = |e: Error| error(ErrorCode::Internal, e.to_string());
    let oldest = ctx.store.oldest_version(tables).map_err(internal)?;
    if let Some(&(first, last)) = ranges.iter().find(|&&(a, _)| a > current) {
        return Err(error(
            ErrorCode::NoSuchVersion,
            format!("versions {first}..={last} do not exist: latest version is {current}"),
        ));
    }
    if let Some(&(first, _)) = ranges.first() {
        if oldest > first {
            return Err(error(
                ErrorCode::Trimmed,
                format!("version {first} is no longer in the journal (oldest is {oldest})"),
            ));
        }
    }
    inc(&ctx.counters.repairs_served);
    for &(first, last) in ranges {
        let last = last.min(current);
        let mut next = first;
        while next <= last {
            let batch = ctx
                .store
                .read_journal(tables, next, last, BATCH_UPDATES, BATCH_BYTES)
                .map_err(internal)?;
            let Some(&(top, _)) = batch.last() else {
                return Err(error(
                    ErrorCode::Internal,
                    format!("journal has no version {next} (latest {current})"),
                ));
            };
            for (_, bytes) in batch {
                let n = write_message(w, &Message::CatchupUpdate(bytes))
                    .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
                inc(&ctx.counters.repair_updates_sent);
                add(&ctx.counters.repair_bytes_sent, n as u64);
            }
            next = top + 1;
        }
    }
    Ok(Message::CatchupEnd {
        current_version: current,
    })
}
