//! The subscriber's side of the repair channel: one persistent connection per
//! subscription, reopened after any failure.

use super::frame::{read_message, write_message};
use crate::wire::control::{DatabaseInfo, ErrorCode, Message, CONTROL_VERSION};
use crate::{Error, Result};
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What a finished catch-up reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchupOutcome {
    /// The publisher's latest version when it finished.
    pub current_version: u64,
    /// Updates received.
    pub updates: u64,
    /// Bytes received (frames).
    pub bytes: u64,
}

/// A connection to a publisher's repair server, bound to one database.
pub struct RepairClient {
    server: SocketAddr,
    database: String,
    client_name: String,
    timeout: Duration,
    max_frame: usize,
    conn: Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>,
}

fn refused(code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::Auth => Error::Auth(message),
        ErrorCode::BadRequest | ErrorCode::Version => Error::Protocol(message),
        _ => Error::Refused(message),
    }
}

impl RepairClient {
    /// A client for `database` at `server` (connects lazily).
    pub fn new(
        server: SocketAddr,
        database: &str,
        client_name: &str,
        timeout: Duration,
        max_frame: usize,
    ) -> RepairClient {
        RepairClient {
            server,
            database: database.to_owned(),
            client_name: client_name.to_owned(),
            timeout,
            max_frame,
            conn: None,
        }
    }

    fn connect(&mut self) -> Result<DatabaseInfo> {
        self.conn = None;
        let ctx = |e| Error::io(format!("connecting to publisher {}", self.server), e);
        let s = TcpStream::connect_timeout(&self.server, self.timeout).map_err(ctx)?;
        s.set_read_timeout(Some(self.timeout)).map_err(ctx)?;
        s.set_write_timeout(Some(self.timeout)).map_err(ctx)?;
        s.set_nodelay(true).map_err(ctx)?;
        let r = BufReader::with_capacity(256 << 10, s.try_clone().map_err(ctx)?);
        self.conn = Some((r, BufWriter::new(s)));
        let hello = Message::Hello {
            version: CONTROL_VERSION,
            database: self.database.clone(),
            client: self.client_name.clone(),
        };
        match self.request(&hello)? {
            (Message::HelloOk(info), _) => Ok(info),
            (other, _) => Err(self.unexpected(other)),
        }
    }

    /// Opens a fresh session and returns the database's parameters.
    pub fn hello(&mut self) -> Result<DatabaseInfo> {
        self.connect().inspect_err(|_| self.conn = None)
    }

    fn unexpected(&mut self, m: Message) -> Error {
        self.conn = None;
        match m {
            Message::Error { code, message } => refused(code, message),
            other => Error::Protocol(format!("unexpected reply from publisher: {other:?}")),
        }
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        let (_, w) = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Closed("no connection".into()))?;
        write_message(w, m)?;
        w.flush().map_err(|e| Error::io("sending to publisher", e))
    }

    fn receive(&mut self) -> Result<(Message, usize)> {
        let max = self.max_frame;
        let (r, _) = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Closed("no connection".into()))?;
        match read_message(r, max)? {
            Some(m) => Ok(m),
            None => Err(Error::Protocol("publisher closed the connection".into())),
        }
    }

    fn request(&mut self, m: &Message) -> Result<(Message, usize)> {
        let out = self.send(m).and_then(|_| self.receive());
        if out.is_err() {
            self.conn = None;
        }
        out
    }

    /// Fetches sealed datagrams of `stream_id` (inclusive sequence ranges) from the
    /// publisher's retransmit buffer, handing each to `on_packet`. Returns how many it
    /// received, how many the publisher no longer had, and the bytes received.
    pub fn fetch_packets(
        &mut self,
        stream_id: u32,
        ranges: &[(u64, u64)],
        mut on_packet: impl FnMut(&[u8]),
    ) -> Result<(u64, u64, u64)> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let req = Message::PacketRequest {
            stream_id,
            ranges: ranges.to_vec(),
        };
        let (mut got, mut bytes) = (0, 0);
        let mut reply = self.request(&req)?;
        loop {
            bytes += reply.1 as u64;
            match reply.0 {
                Message::PacketData(d) => {
                    got += 1;
                    on_packet(&d);
                }
                Message::PacketEnd { missing } => return Ok((got, missing, bytes)),
                other => return Err(self.unexpected(other)),
            }
            reply = self.receive().inspect_err(|_| self.conn = None)?;
        }
    }

    /// Fetches the inclusive version ranges, handing each encoded update to `on_update`
    /// as it arrives.
    pub fn catch_up(
        &mut self,
        ranges: &[(u64, u64)],
        mut on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let req = Message::CatchupRequest {
            ranges: ranges.to_vec(),
        };
        let mut out = CatchupOutcome {
            current_version: 0,
            updates: 0,
            bytes: 0,
        };
        let mut reply = self.request(&req)?;
        loop {
            out.bytes += reply.1 as u64;
            match reply.0 {
                Message::CatchupUpdate(bytes) => {
                    out.updates += 1;
                    if let Err(e) = on_update(&bytes) {
                        self.conn = None;
                        return Err(e);
                    }
                }
                Message::CatchupEnd { current_version } => {
                    out.current_version = current_version;
                    return Ok(out);
                }
                other => return Err(self.unexpected(other)),
            }
            reply = self.receive().inspect_err(|_| self.conn = None)?;
        }
    }
}
