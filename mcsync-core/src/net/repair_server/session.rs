//! One control connection: reading requests and answering them.

#![allow(clippy::result_large_err)]

use super::*;
use crate::net::frame::{read_message, write_message};
use crate::net::tls::Stream;
use crate::proto::resync::{child_digests, HashIndex};
use crate::stats::{add, inc};
use crate::sync::Locked;
use crate::wire::control::{ErrorCode, Message};
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

pub(super) fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

/// An authenticated session: who, which database, what it may read, and the resync
/// snapshot it is working on.
pub(super) struct Session {
    pub(super) user: String,
    pub(super) id: u64,
    /// Client name and role of the registration (to register it again if it expired).
    pub(super) client: String,
    pub(super) participant: bool,
    /// The unicast push target its HELLO asked for (to register it again if it expired).
    pub(super) push: Option<SocketAddr>,
    pub(super) groups: Vec<String>,
    pub(super) db: Arc<dyn PublishedDatabase>,
    pub(super) resync: Option<ResyncSnapshot>,
}

/// The publisher's side of a hash resync: content hashes of the records the session may
/// read, as of one version, and their keys by key hash.
pub(super) struct ResyncSnapshot {
    pub(super) index: HashIndex,
    pub(super) keys: HashMap<u64, Vec<u8>>,
}

pub(super) fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &ServerContext,
    state: &ConnState,
) -> Result<()> {
    // The read time-out is only a backstop: the accept thread enforces HELLO_DEADLINE and
    // IDLE_TIMEOUT as deadlines (see `sweep`).
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))
        .and_then(|_| tcp.set_read_timeout(Some(IDLE_TIMEOUT)))
        .and_then(|_| tcp.set_nodelay(true))
        .map_err(|e| Error::io("control socket options", e))?;
    let stream = ctx.tls.accept(tcp)?;
    let mut conn = BufReader::with_capacity(64 << 10, stream);
    let mut session: Option<Session> = None;
    loop {
        let msg = match read_message(&mut conn, ctx.max_request_frame) {
            Ok(Some((m, _))) => m,
            Ok(None) => return Ok(()),
            // Closed by the accept thread (deadline or eviction): counted there.
            Err(e) if state.is_closed() => return Err(e),
            Err(e) => {
                inc(&ctx.counters.repair_errors);
                if matches!(e, Error::Protocol(_)) {
                    let _ = reply(&mut conn, ctx, &error(ErrorCode::BadRequest, e.to_string()));
                } else {
                    // A failed TLS handshake (or a client that went away) lands here.
                    inc(&ctx.counters.tls_failures);
                }
                return Err(e);
            }
        };
        state.enter(
            if session.is_some() { BUSY } else { CHECKING },
            Instant::now(),
        );
        if let Some(s) = &session {
            if ctx.is_revoked(&s.user) {
                inc(&ctx.counters.auth_failures);
                let m = error(ErrorCode::Auth, format!("user {:?} is revoked", s.user));
                let _ = reply(&mut conn, ctx, &m);
                return Ok(());
            }
            ctx.seen(s.id, Instant::now());
        }
        let (answer, close) = answer(ctx, peer, &mut session, &mut conn, msg)?;
        let msg = answer.unwrap_or_else(|m| {
            inc(&ctx.counters.repair_errors);
            m
        });
        reply(&mut conn, ctx, &msg)?;
        if let Some(s) = &session {
            // A long answer (a catch-up stream) is activity too.
            ctx.seen(s.id, Instant::now());
        }
        if close {
            return Ok(());
        }
        // Waiting for the client again: for HELLO (the deadline still counts from the
        // accept), or for the next request.
        state.enter(
            if session.is_some() {
                IDLE
            } else {
                WAITING_HELLO
            },
            Instant::now(),
        );
    }
}

pub(super) fn reply(
    conn: &mut BufReader<Box<dyn Stream>>,
    ctx: &ServerContext,
    msg: &Message,
) -> Result<()> {
    let w = conn.get_mut();
    let n = write_message(w, msg)?;
    add(&ctx.counters.repair_bytes_sent, n as u64);
    w.flush()
        .map_err(|e| Error::io("flushing control reply", e))
}

/// An answer to a request: the frame to send, or the error frame as `Err`.
type Answer = std::result::Result<Message, Message>;

/// Answers one request; also says whether the connection closes after it. An `Err` is an
/// I/O failure while streaming a long answer.
fn answer(
    ctx: &ServerContext,
    peer: SocketAddr,
    session: &mut Option<Session>,
    conn: &mut BufReader<Box<dyn Stream>>,
    msg: Message,
) -> Result<(Answer, bool)> {
    if let Message::Hello { .. } = msg {
        return Ok(match hello(ctx, peer, msg) {
            Ok((s, info)) => {
                *session = Some(s);
                (Ok(Message::HelloOk(info)), false)
            }
            Err(m) => {
                let auth = matches!(
                    m,
                    Message::Error {
                        code: ErrorCode::Auth,
                        ..
                    }
                );
                (Err(m), auth)
            }
        });
    }
    let Some(s) = session.as_mut() else {
        let what = match request_name(&msg) {
            Some(name) => format!("{name} before HELLO"),
            None => "unexpected message from client".to_owned(),
        };
        return Ok((Err(error(ErrorCode::BadRequest, what)), false));
    };
    let close = matches!(msg, Message::CloseSubscription { .. });
    Ok((answer_registered(ctx, peer, s, conn, msg)?, close))
}

/// What a request is called in "before HELLO" errors (`None`: not a client request).
fn request_name(msg: &Message) -> Option<&'static str> {
    Some(match msg {
        Message::Vote { .. } => "vote",
        Message::Ack { .. } => "ack",
        Message::OutcomeRequest { .. } => "outcome request",
        Message::Report(_) => "report",
        Message::StatusRequest => "status",
        Message::CompactRequest { .. } | Message::CatchupRequest { .. } => "catch-up",
        Message::PacketRequest { .. } => "packet request",
        Message::ResyncBegin => "resync",
        Message::DigestRequest { .. } => "digests",
        Message::ListRequest { .. } => "list",
        Message::FetchRequest { .. } => "fetch",
        Message::CloseSubscription { .. } => "close",
        _ => return None,
    })
}

/// Answers a request of a registered session. (Long: one arm per request type.)
fn answer_registered(
    ctx: &ServerContext,
    peer: SocketAddr,
    s: &mut Session,
    conn: &mut BufReader<Box<dyn Stream>>,
    msg: Message,
) -> Result<Answer> {
    Ok(match msg {
        Message::Vote {
            version,
            round,
            prepared,
            reason,
        } => {
            let refusal = (!prepared).then_some(reason);
            if ctx
                .two_phase
                .vote(s.db.name(), (version, round), s.id, refusal)
            {
                Ok(Message::Ok)
            } else {
                Err(error(
                    ErrorCode::BadRequest,
                    format!("no open two-phase round at version {version} for this participant"),
                ))
            }
        }
        Message::Ack { version, round } => {
            if ctx.two_phase.ack(s.db.name(), (version, round), s.id) {
                s.db.decision_acknowledged(version);
            }
            Ok(Message::Ok)
        }
        Message::OutcomeRequest { version, round } => {
            let state =
                ctx.two_phase
                    .outcome(s.db.name(), (version, round), s.db.committed_version());
            Ok(Message::Outcome { version, state })
        }
        Message::Report(r) => report(ctx, s, peer, r),
        Message::StatusRequest => {
            let info = s.db.info();
            Ok(Message::Status {
                current_version: info.current_version,
                oldest_version: info.oldest_version,
                incarnation: info.incarnation,
            })
        }
        Message::CompactRequest { first, last } => streamed(conn, "compacted catch-up", |w| {
            compact(ctx, s.db.as_ref(), first, last, w)
        })?,
        Message::CatchupRequest { ranges } => streamed(conn, "catch-up", |w| {
            catch_up(ctx, s.db.as_ref(), &ranges, w)
        })?,
        Message::PacketRequest { stream_id, ranges } => streamed(conn, "packet repair", |w| {
            resend(ctx, s.db.as_ref(), stream_id, &ranges, w)
        })?,
        Message::ResyncBegin => resync_begin(ctx, s),
        Message::DigestRequest { ranges, sum_bytes } => match s.resync.as_ref() {
            Some(r) => Ok(Message::DigestReply {
                sum_bytes,
                digests: child_digests(&r.index, &ranges, sum_bytes),
            }),
            None => Err(error(ErrorCode::BadRequest, "digests before RESYNC_BEGIN")),
        },
        Message::ListRequest { ranges } => match s.resync.as_ref() {
            Some(r) => list(r, &ranges),
            None => Err(error(ErrorCode::BadRequest, "list before RESYNC_BEGIN")),
        },
        Message::FetchRequest { key_hashes } if s.resync.is_some() => {
            streamed(conn, "fetch", |w| fetch(ctx, s, &key_hashes, w))?
        }
        Message::FetchRequest { .. } => {
            Err(error(ErrorCode::BadRequest, "fetch before RESYNC_BEGIN"))
        }
        Message::CloseSubscription { subscriber_id } => {
            let mut reg = ctx.registry.locked();
            if reg.get(&subscriber_id).is_some_and(|r| r.user == s.user) {
                ctx.remove_where(&mut reg, |r| r.id == subscriber_id);
            }
            Ok(Message::Ok)
        }
        _ => Err(error(
            ErrorCode::BadRequest,
            "unexpected message from client",
        )),
    })
}

/// Streams a long answer through a large buffer, flushed before the final frame.
fn streamed(
    conn: &mut BufReader<Box<dyn Stream>>,
    what: &str,
    f: impl FnOnce(&mut BufWriter<&mut Box<dyn Stream>>) -> Answer,
) -> Result<Answer> {
    let mut w = BufWriter::with_capacity(256 << 10, conn.get_mut());
    let r = f(&mut w);
    w.flush()
        .map_err(|e| Error::io(format!("flushing {what}"), e))?;
    Ok(r)
}
