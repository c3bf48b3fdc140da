//! The subscriber's side of the control channel: registration (HELLO), repair, and CLOSE
//! SUBSCRIPTION over one persistent TLS connection per subscription, reopened after any
//! failure (and retried once when a reused connection turns out to be closed).

use super::frame::{read_message, write_message};
use super::tls::{ClientTls, Stream};
use crate::auth::Secret;
use crate::proto::resync::{Digest, Range};
use crate::wire::control::{DatabaseInfo, ErrorCode, Message, Outcome, CONTROL_VERSION};
use crate::wire::update::peek_version;
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

/// A catch-up answer that did not cover exactly the versions asked for: the publisher
/// skipped versions (or sent ones not asked for). Whatever came before it was handed on
/// (it was in order); nothing from it on was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoverageGap {
    /// The version that should have come next (for a compacted answer: the first version
    /// the next chunk should cover), or `None` if nothing more was asked for.
    pub expected: Option<u64>,
    /// The version that came instead (for a compacted chunk: the first version it says it
    /// covers), or `None` if the answer ended (CATCHUP_END) without it.
    pub received: Option<u64>,
}

impl std::fmt::Display for CoverageGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.expected {
            Some(v) => write!(f, "expected version {v}")?,
            None => write!(f, "expected nothing more")?,
        }
        match self.received {
            Some(v) => write!(f, ", received version {v}"),
            None => write!(f, ", but the answer ended"),
        }
    }
}

/// What a catch-up answer must cover, checked update by update before any is handed on:
/// the versions of `ranges` in order, each exactly once, up to the publisher's latest
/// version (ranges are capped there). A compacted answer has one range, and each chunk
/// must start where the previous one ended (the first at the range's start).
#[derive(Debug, Clone)]
struct Coverage {
    ranges: Vec<(u64, u64)>,
    /// Index of the range `next` is in (`ranges.len()` once all are covered).
    idx: usize,
    /// Next version wanted, inside `ranges[idx]`.
    next: u64,
}

impl Coverage {
    fn new(ranges: &[(u64, u64)]) -> Coverage {
        Coverage {
            ranges: ranges.to_vec(),
            idx: 0,
            next: ranges.first().map_or(0, |r| r.0),
        }
    }

    /// The next version wanted, if any.
    fn wanted(&self) -> Option<u64> {
        (self.idx < self.ranges.len()).then_some(self.next)
    }

    /// The versions `first..=last` arrived (one update, or a compacted chunk).
    fn take(&mut self, first: u64, last: u64) -> std::result::Result<(), CoverageGap> {
        let gap = CoverageGap {
            expected: self.wanted(),
            received: Some(first),
        };
        let Some(&(_, end)) = self.ranges.get(self.idx) else {
            return Err(gap);
        };
        if first != self.next || last < first || last > end {
            return Err(gap);
        }
        if last == end {
            self.idx += 1;
            self.next = self.ranges.get(self.idx).map_or(0, |r| r.0);
        } else {
            self.next = last + 1;
        }
        Ok(())
    }

    /// The answer ended with the publisher at `current`: every version asked for up to
    /// `current` must have come.
    fn end(&self, current: u64) -> std::result::Result<(), CoverageGap> {
        match self.wanted() {
            Some(v) if v <= current => Err(CoverageGap {
                expected: Some(v),
                received: None,
            }),
            _ => Ok(()),
        }
    }
}

/// How a streamed catch-up answer comes: one journaled update per frame, or compacted
/// chunks that name their first version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Journal,
    Compacted,
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
    last_gap: Option<CoverageGap>,
    bytes_sent: u64,
    bytes_received: u64,
    participant: bool,
    /// The history (incarnation) the caller's replica belongs to; 0 accepts any.
    expected_incarnation: u64,
    /// A registration showed another history: requests are refused until the caller
    /// accepts it ([`RepairClient::expect_incarnation`]), so nothing of the new history is
    /// applied on top of the old one through a silent reconnect.
    history_change: Option<u64>,
    /// Unicast-only: the push socket whose port every HELLO names.
    push: Option<super::push::PushSocket>,
}

fn refused(code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::Auth => Error::Auth(message),
        ErrorCode::BadRequest | ErrorCode::Version => Error::Protocol(message),
        _ => Error::Refused(message),
    }
}

/// An I/O error of the control connection, said plainly when it is the read or write
/// timeout expiring (which the OS reports as "Resource temporarily unavailable").
fn timed_out(e: Error, doing: &str, server: SocketAddr, timeout: Duration) -> Error {
    match e {
        Error::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Error::io(
                format!("{doing} publisher {server}: no progress within {timeout:?}"),
                std::io::ErrorKind::TimedOut.into(),
            )
        }
        other => other,
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
            last_gap: None,
            bytes_sent: 0,
            bytes_received: 0,
            participant: false,
            expected_incarnation: 0,
            history_change: None,
            push: None,
        }
    }

    /// Asks for unicast push from the next HELLO on: a socket with a receive buffer of
    /// `recv_buffer` bytes is bound on the local address of the control connection and
    /// its port named in every HELLO.
    pub fn set_unicast(&mut self, recv_buffer: usize) {
        if self.push.is_none() {
            self.push = Some(super::push::PushSocket::new(recv_buffer));
        }
    }

    /// The push socket bound by the first HELLO and the receive buffer granted (once).
    pub fn take_push_socket(&mut self) -> Option<(std::net::UdpSocket, usize)> {
        self.push.as_mut()?.take_socket()
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
        let unicast_port = match self.push.as_mut() {
            Some(p) => Some(p.port_for(s.local_addr().map_err(ctx)?.ip())?),
            None => None,
        };
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
            unicast_port,
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
                if self.expected_incarnation != 0 && info.incarnation != self.expected_incarnation {
                    self.history_change = Some(info.incarnation);
                }
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

    /// Asks what became of the round `round` prepared at `version`.
    pub fn outcome(&mut self, version: u64, round: u64) -> Result<Outcome> {
        match self.request(&Message::OutcomeRequest { version, round })?.0 {
            Message::Outcome { state, .. } => Ok(state),
            other => Err(self.unexpected(other)),
        }
    }

    /// Fetches versions `first..=last` compacted, handing each encoded update (one per
    /// journal chunk, at the chunk's last version) to `on_update`. The chunks must cover
    /// `first..=` min(`last`, the publisher's latest version) exactly, each starting right
    /// after the previous one (the first at `first`); otherwise the answer is refused with
    /// [`Error::Protocol`] at the first chunk that does not fit (which is not handed on),
    /// and [`last_gap`](Self::last_gap) says where.
    pub fn compact(
        &mut self,
        first: u64,
        last: u64,
        on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        let req = Message::CompactRequest { first, last };
        self.stream_updates(&req, Answer::Compacted, &[(first, last)], on_update)
    }

    /// The code of the error frame the publisher answered the last request with, if it
    /// did.
    pub fn last_refusal(&self) -> Option<ErrorCode> {
        self.last_refusal
    }

    /// Where the last catch-up answer (of [`catch_up`](Self::catch_up) or
    /// [`compact`](Self::compact)) failed to cover exactly the versions asked for, if it
    /// did: the publisher skipped versions, so the replica must not move past them by
    /// this answer. Cleared by every request.
    pub fn last_gap(&self) -> Option<CoverageGap> {
        self.last_gap
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
        let (server, timeout) = (self.id.server, self.timeout);
        let timed_out = |e| timed_out(e, "sending to", server, timeout);
        self.bytes_sent += write_message(w, m).map_err(timed_out)? as u64;
        w.flush()
            .map_err(|e| Error::io("sending to publisher", e))
            .map_err(timed_out)
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
            Err(e) => Err(timed_out(
                e,
                "waiting for an answer from",
                self.id.server,
                self.timeout,
            )),
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
        self.last_gap = None;
        let reused = self.conn.is_some();
        if !reused {
            self.connect()?;
        }
        self.check_history()?;
        match self.exchange(m) {
            Err(e) if reused && e.kind() == crate::ErrorKind::Io => {
                self.connect()?;
                self.check_history()?;
                self.exchange(m)
            }
            other => other,
        }
    }

    /// Fails while a registration showed a history other than the expected one.
    fn check_history(&self) -> Result<()> {
        match self.history_change {
            Some(new) => Err(Error::Protocol(format!(
                "database {:?}: the publisher's history changed (incarnation {:016x}, replica \
                 has {:016x}); the replica must resync",
                self.database, new, self.expected_incarnation
            ))),
            None => Ok(()),
        }
    }

    /// Sets the history the caller's replica belongs to (0 accepts any) and clears a
    /// noticed change: requests go to that history from now on.
    pub fn expect_incarnation(&mut self, incarnation: u64) {
        self.expected_incarnation = incarnation;
        self.history_change = None;
    }

    /// The incarnation of a history other than the expected one, if a registration showed
    /// one (requests fail until [`expect_incarnation`](Self::expect_incarnation)).
    pub fn history_changed(&self) -> Option<u64> {
        self.history_change
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
    /// as it arrives. The updates must be exactly the versions of `ranges`, in order
    /// (each range capped at the publisher's latest version); otherwise the answer is
    /// refused with [`Error::Protocol`] at the first update that does not fit (which is
    /// not handed on), and [`last_gap`](Self::last_gap) says where.
    pub fn catch_up(
        &mut self,
        ranges: &[(u64, u64)],
        on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        let req = Message::CatchupRequest {
            ranges: ranges.to_vec(),
        };
        self.stream_updates(&req, Answer::Journal, ranges, on_update)
    }

    /// Refuses an answer that skipped versions: records where, and drops the connection
    /// (the rest of the answer is still on it).
    fn gap(&mut self, ranges: &[(u64, u64)], gap: CoverageGap) -> Error {
        self.conn = None;
        self.last_gap = Some(gap);
        Error::Protocol(format!(
            "catch-up of versions {ranges:?} from the publisher does not cover them: {gap}"
        ))
    }

    fn stream_updates(
        &mut self,
        req: &Message,
        answer: Answer,
        ranges: &[(u64, u64)],
        mut on_update: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CatchupOutcome> {
        let mut out = CatchupOutcome {
            current_version: 0,
            updates: 0,
            bytes: 0,
        };
        let mut coverage = Coverage::new(ranges);
        let mut reply = self.request(req)?;
        loop {
            out.bytes += reply.1 as u64;
            let (first, bytes) = match (answer, reply.0) {
                (Answer::Journal, Message::CatchupUpdate(bytes)) => (None, bytes),
                (Answer::Compacted, Message::CompactUpdate { first, update }) => {
                    (Some(first), update)
                }
                (_, Message::CatchupEnd { current_version }) => {
                    if let Err(g) = coverage.end(current_version) {
                        return Err(self.gap(ranges, g));
                    }
                    out.current_version = current_version;
                    return Ok(out);
                }
                (_, other) => return Err(self.unexpected(other)),
            };
            let version = match peek_version(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    self.conn = None;
                    return Err(Error::Protocol(format!(
                        "catch-up update from the publisher: {e}"
                    )));
                }
            };
            // A journal update covers its own version; a compacted chunk the versions from
            // the first it names to its own.
            if let Err(g) = coverage.take(first.unwrap_or(version), version) {
                return Err(self.gap(ranges, g));
            }
            out.updates += 1;
            if let Err(e) = on_update(&bytes) {
                self.conn = None;
                return Err(e);
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
    pub fn digests(&mut self, ranges: &[Range], sum_bytes: u8) -> Result<Vec<Digest>> {
        let m = Message::DigestRequest {
            ranges: ranges.to_vec(),
            sum_bytes,
        };
        match self.exchange(&m)?.0 {
            Message::DigestReply {
                sum_bytes: got,
                digests,
            } if got == sum_bytes => Ok(digests),
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

    /// Current records for snapshot key hashes, each a put with its access groups;
    /// returns how many were missing.
    pub fn fetch(
        &mut self,
        key_hashes: &[u64],
        mut on_record: impl FnMut(crate::Op),
    ) -> Result<u64> {
        let m = Message::FetchRequest {
            key_hashes: key_hashes.to_vec(),
        };
        let mut reply = self.exchange(&m)?;
        loop {
            match reply.0 {
                Message::FetchRecord { key, value, groups } => on_record(crate::Op {
                    kind: crate::OpKind::Put,
                    key,
                    value,
                    groups,
                }),
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

#[cfg(test)]
mod tests;
