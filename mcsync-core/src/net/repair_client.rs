//! The subscriber's side of the control channel: registration (HELLO), repair, and CLOSE
//! SUBSCRIPTION over one persistent TLS connection per subscription, reopened after any
//! failure (and retried once when a reused connection turns out to be closed).

use super::frame::{read_message, write_message};
use super::tls::{ClientTls, Stream};
use crate::auth::Secret;
use crate::proto::resync::{Digest, Range};
use crate::wire::control::{DatabaseInfo, ErrorCode, Message, CONTROL_VERSION};
use crate::{Error, Result};
use std::io::{BufReader, Write};
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

/// The publisher's answer to STATUS_REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusInfo {
    /// Latest committed version of the database.
    pub current_version: u64,
    /// Oldest version the journal holds (as of the publisher's last retention pass).
    pub oldest_version: u64,
    /// The database's incarnation (as in HELLO_OK): a different one than the replica
    /// stored means the publisher's history changed.
    pub incarnation: u64,
}

/// Who the client is and how it reaches the publisher.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The publisher's control address.
    pub server: SocketAddr,
    /// TLS (or insecure loopback) settings.
    pub tls: ClientTls,
    /// User name.
    pub user: String,
    /// Secret.
    pub secret: Secret,
    /// Client name for the publisher's records.
    pub client_name: String,
}

/// A connection to a publisher's control server, bound to one database.
pub struct RepairClient {
    id: ClientIdentity,
    database: String,
    timeout: Duration,
    max_frame: usize,
    subscriber_id: u64,
    conn: Option<BufReader<Box<dyn Stream>>>,
    last_info: Option<DatabaseInfo>,
    last_refusal: Option<ErrorCode>,
    bytes_sent: u64,
    bytes_received: u64,
    participant: bool,
}

fn refused(code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::Auth => Error::Auth(message),
        ErrorCode::BadRequest | ErrorCode::Version => Error::Protocol(message),
        _ => Error::Refused(message),
    }
}

impl RepairClient {
    /// A client for `database` (connects lazily).
    pub fn new(
        id: ClientIdentity,
        database: &str,
        timeout: Duration,
        max_frame: usize,
    ) -> RepairClient {
        RepairClient {
            id,
            database: database.to_owned(),
            timeout,
            max_frame,
            subscriber_id: 0,
            conn: None,
            last_info: None,
            last_refusal: None,
            bytes_sent: 0,
            bytes_received: 0,
            participant: false,
        }
    }

    /// The registration id the publisher gave (0 before the first HELLO).
    pub fn subscriber_id(&self) -> u64 {
        self.subscriber_id
    }

    fn connect(&mut self) -> Result<DatabaseInfo> {
        self.conn = None;
        let server = self.id.server;
        let ctx = |e| Error::io(format!("connecting to publisher {server}"), e);
        let s = TcpStream::connect_timeout(&server, self.timeout).map_err(ctx)?;
        s.set_read_timeout(Some(self.timeout)).map_err(ctx)?;
        s.set_write_timeout(Some(self.timeout)).map_err(ctx)?;
        s.set_nodelay(true).map_err(ctx)?;
        let stream = self.id.tls.connect(s)?;
        self.conn = Some(BufReader::with_capacity(256 << 10, stream));
        let hello = Message::Hello {
            version: CONTROL_VERSION,
            database: self.database.clone(),
            client: self.id.client_name.clone(),
            user: self.id.user.clone(),
            secret: self.id.secret.clone(),
            subscriber_id: self.subscriber_id,
            flags: if self.participant {
                crate::wire::control::HELLO_PARTICIPANT
            } else {
                0
            },
        };
        let reply = self.exchange(&hello).map_err(|e| match e {
            // The first exchange runs the TLS handshake: a certificate that fails
            // verification surfaces here as invalid data.
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
                Error::Auth(format!(
                    "TLS handshake with publisher {server} failed: {source}"
                ))
            }
            other => other,
        })?;
        match reply {
            (Message::HelloOk(info), _) => {
                self.subscriber_id = info.subscriber_id;
                self.last_info = Some(info.clone());
                Ok(info)
            }
            (other, _) => Err(self.unexpected(other)),
        }
    }

    /// Registers (or re-registers) and returns the database's parameters and keys.
    pub fn hello(&mut self) -> Result<DatabaseInfo> {
        self.connect().inspect_err(|_| self.conn = None)
    }

    /// Sends a reception report.
    pub fn report(&mut self, r: crate::wire::control::SubscriberReport) -> Result<()> {
        self.expect_ok(&Message::Report(r))
    }

    /// The publisher's latest and oldest versions and the database's incarnation.
    pub fn status(&mut self) -> Result<StatusInfo> {
        match self.request(&Message::StatusRequest)?.0 {
            Message::Status {
                current_version,
                oldest_version,
                incarnation,
            } => Ok(StatusInfo {
                current_version,
                oldest_version,
                incarnation,
            }),
            other => Err(self.unexpected(other)),
        }
    }

    /// Registers as a two-phase participant from the next HELLO on.
    pub fn set_participant(&mut self, on: bool) {
        self.participant = on;
    }

    /// Reuses a registration id from an earlier run.
    pub fn set_subscriber_id(&mut self, id: u64) {
        self.subscriber_id = id;
    }

    fn expect_ok(&mut self, m: &Message) -> Result<()> {
        match self.request(m)?.0 {
            Message::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// Sends this participant's vote on a prepared version.
    pub fn vote(&mut self, version: u64, round: u64, prepared: bool, reason: &str) -> Result<()> {
        self.expect_ok(&Message::Vote {
            version,
            round,
            prepared,
            reason: reason.to_owned(),
        })
    }

    /// Acknowledges a two-phase decision.
    pub fn ack(&mut self, version: u64, round: u64) -> Result<()> {
        self.expect_ok(&Message::Ack { version, round })
    }

    /// Asks what became of the round `round` prepared at `version` (`OUTCOME_*`).
    pub fn outcome(&mut self, version: u64, round: u64) -> Result<u8> {
        match self.request(&Message::OutcomeRequest { version, round })?.0 {
            Message::Outcome { state, .. } => Ok(state),
            other => Err(self.unexpected(other)),
        }
    }

    /// Fetches versions `first..=last` compacted, handing each encoded update (one per
    /// journal chunk, at the chunk's last version) to `on_update`.
    pub fn compact(
        &mut self,
        first: u64,
        last: u64,
        on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        self.stream_updates(&Message::CompactRequest { first, last }, on_update)
    }

    /// The code of the error frame the publisher answered the last request with, if it
    /// did.
    pub fn last_refusal(&self) -> Option<ErrorCode> {
        self.last_refusal
    }

    /// Bytes sent and received on the control channel so far (frames, not TLS records).
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_sent, self.bytes_received)
    }

    fn unexpected(&mut self, m: Message) -> Error {
        self.conn = None;
        match m {
            Message::Error { code, message } => {
                self.last_refusal = Some(code);
                refused(code, message)
            }
            _ => Error::Protocol("unexpected reply from publisher".into()),
        }
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Closed("no connection".into()))?;
        // One write of the whole frame; no BufWriter, whose drop would retry a failed
        // flush (and block on a broken TLS session until the timeout).
        let w = conn.get_mut();
        self.bytes_sent += write_message(w, m)? as u64;
        w.flush().map_err(|e| Error::io("sending to publisher", e))
    }

    fn receive(&mut self) -> Result<(Message, usize)> {
        let max = self.max_frame;
        let r = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Closed("no connection".into()))?;
        match read_message(r, max) {
            Ok(Some(m)) => {
                self.bytes_received += m.1 as u64;
                Ok(m)
            }
            Ok(None) => Err(Error::io(
                "publisher closed the connection",
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Err(e) => Err(e),
        }
        .inspect_err(|_| self.conn = None)
    }

    fn exchange(&mut self, m: &Message) -> Result<(Message, usize)> {
        let out = self.send(m).and_then(|_| self.receive());
        if out.is_err() {
            self.conn = None;
        }
        out
    }

    /// Sends a request on the open connection (opening one if needed); if a reused
    /// connection fails at the transport level (the publisher closed it while idle, or
    /// restarted), reconnects once and tries again.
    fn request(&mut self, m: &Message) -> Result<(Message, usize)> {
        self.last_refusal = None;
        let reused = self.conn.is_some();
        if !reused {
            self.connect()?;
        }
        match self.exchange(m) {
            Err(e) if reused && e.kind() == crate::ErrorKind::Io => {
                self.connect()?;
                self.exchange(m)
            }
            other => other,
        }
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
            reply = self.receive()?;
        }
    }

    /// Fetches the inclusive version ranges, handing each encoded update to `on_update`
    /// as it arrives.
    pub fn catch_up(
        &mut self,
        ranges: &[(u64, u64)],
        on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        let req = Message::CatchupRequest {
            ranges: ranges.to_vec(),
        };
        self.stream_updates(&req, on_update)
    }

    fn stream_updates(
        &mut self,
        req: &Message,
        mut on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        let mut out = CatchupOutcome {
            current_version: 0,
            updates: 0,
            bytes: 0,
        };
        let mut reply = self.request(req)?;
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
            reply = self.receive()?;
        }
    }

    /// Starts a hash resync: the publisher snapshots what this user may read. Returns the
    /// snapshot's version and root digest.
    pub fn resync_begin(&mut self) -> Result<(u64, Digest)> {
        match self.request(&Message::ResyncBegin)?.0 {
            Message::ResyncSnapshot {
                version,
                count,
                sum,
            } => Ok((version, Digest { count, sum })),
            other => Err(self.unexpected(other)),
        }
    }

    /// Child digests of `ranges` (16 per range) from the current resync snapshot.
    pub fn digests(&mut self, ranges: &[Range]) -> Result<Vec<Digest>> {
        let m = Message::DigestRequest {
            ranges: ranges.to_vec(),
        };
        match self.exchange(&m)?.0 {
            Message::DigestReply { digests } => Ok(digests),
            other => Err(self.unexpected(other)),
        }
    }

    /// `(key hash, content hash)` of the snapshot's records in `ranges`.
    pub fn list(&mut self, ranges: &[Range]) -> Result<Vec<(u64, u64)>> {
        let m = Message::ListRequest {
            ranges: ranges.to_vec(),
        };
        match self.exchange(&m)?.0 {
            Message::ListReply { entries } => Ok(entries),
            other => Err(self.unexpected(other)),
        }
    }

    /// Current records for snapshot key hashes; returns how many were missing.
    pub fn fetch(
        &mut self,
        key_hashes: &[u64],
        mut on_record: impl FnMut(Vec<u8>, Vec<u8>),
    ) -> Result<u64> {
        let m = Message::FetchRequest {
            key_hashes: key_hashes.to_vec(),
        };
        let mut reply = self.exchange(&m)?;
        loop {
            match reply.0 {
                Message::FetchRecord { key, value } => on_record(key, value),
                Message::FetchEnd { missing } => return Ok(missing),
                other => return Err(self.unexpected(other)),
            }
            reply = self.receive()?;
        }
    }

    /// Releases the registration at the publisher (CLOSE SUBSCRIPTION). Best effort: the
    /// caller is closing anyway.
    pub fn close_subscription(&mut self) -> Result<()> {
        if self.subscriber_id == 0 {
            return Ok(());
        }
        let m = Message::CloseSubscription {
            subscriber_id: self.subscriber_id,
        };
        let out = match self.request(&m)? {
            (Message::Ok, _) => Ok(()),
            (other, _) => Err(self.unexpected(other)),
        };
        self.conn = None;
        out
    }
}
