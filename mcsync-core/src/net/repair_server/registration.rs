//! HELLO: authentication, registration, keys; and REPORT.

#![allow(clippy::result_large_err)]

use super::*;
use crate::auth::{Grant, Refusal, Secret};
use crate::crypto::KeyHandout;
use crate::stats::inc;
use crate::sync::{Locked, RwLocked};
use crate::wire::control::{
    DatabaseInfo, ErrorCode, Message, Push, SubscriberReport, CONTROL_VERSION, HELLO_PARTICIPANT,
    MIN_CONTROL_VERSION,
};
use std::net::SocketAddr;
use std::time::Instant;

use super::push::apply_push;
use super::session::*;

pub(super) fn authenticate(
    ctx: &ServerContext,
    peer: SocketAddr,
    user: &str,
    secret: &Secret,
) -> std::result::Result<Grant, Message> {
    use sha2::{Digest, Sha256};
    let now = Instant::now();
    let fail = |why: String| {
        inc(&ctx.counters.auth_failures);
        error(ErrorCode::Auth, why)
    };
    if ctx.limiter.is_blocked(peer.ip(), user, now) {
        inc(&ctx.counters.auth_rate_limited);
        return Err(fail(format!(
            "too many failed logins from {}; try again later",
            peer.ip()
        )));
    }
    if ctx.is_revoked(user) {
        // Not counted against the address: a revoked subscriber retrying must not lock
        // out its neighbours behind the same address.
        return Err(fail(format!("user {user:?} is revoked")));
    }
    let digest: [u8; 32] = Sha256::digest(secret.expose().as_bytes()).into();
    let cache_key = (user.to_owned(), digest);
    if let Some((g, at)) = ctx.auth_cache.locked().get(&cache_key) {
        if now.duration_since(*at) < AUTH_CACHE_TTL {
            return Ok(g.clone());
        }
    }
    // Counted as a failure before the (costly) check, in one step with the block check, so
    // that logins arriving together cannot all be checked before any failure is counted;
    // taken back below if it was not one.
    let Some(attempt) = ctx.limiter.attempt(peer.ip(), user, now) else {
        inc(&ctx.counters.auth_rate_limited);
        return Err(fail(format!(
            "too many failed logins from {}; try again later",
            peer.ip()
        )));
    };
    match ctx.authenticator.check(user, secret.expose(), peer) {
        Ok(g) => {
            ctx.limiter.succeeded(attempt, Instant::now());
            ctx.known_good.locked().insert(cache_key.clone());
            ctx.auth_cache.locked().insert(cache_key, (g.clone(), now));
            Ok(g)
        }
        Err(Refusal::Busy(why)) => {
            // Not a failed login: counted against nobody, and not an Auth refusal (the
            // client tries again later).
            ctx.limiter.withdraw(attempt);
            inc(&ctx.counters.auth_busy);
            Err(error(ErrorCode::Internal, why))
        }
        Err(Refusal::Denied(why)) => {
            // The failure stays counted.
            drop(attempt);
            let withdrawn = ctx.known_good.locked().remove(&cache_key);
            if withdrawn {
                ctx.on_denied(user);
            }
            Err(fail(why))
        }
    }
}

/// Answers a HELLO: protocol version, authentication, the database, the participant
/// role, then the registration and its keys. (Long: the checks in the order PROTOCOL.md
/// 5.5 lists them, each refusing with its own code.)
pub(super) fn hello(
    ctx: &ServerContext,
    peer: SocketAddr,
    msg: Message,
) -> std::result::Result<(Session, DatabaseInfo), Message> {
    let Message::Hello {
        version,
        database,
        client,
        user,
        secret,
        subscriber_id,
        flags,
        unicast_port,
    } = msg
    else {
        return Err(error(ErrorCode::BadRequest, "expected HELLO"));
    };
    if !(MIN_CONTROL_VERSION..=CONTROL_VERSION).contains(&version) {
        return Err(error(
            ErrorCode::Version,
            format!("control protocol {version} unsupported (server speaks {CONTROL_VERSION})"),
        ));
    }
    if unicast_port == Some(0) {
        return Err(error(ErrorCode::BadRequest, "unicast push to port 0"));
    }
    // Pushed to the address this connection comes from, never to one the client names.
    let push = unicast_port.map(|port| SocketAddr::new(peer.ip(), port));
    let grant = authenticate(ctx, peer, &user, &secret)?;
    if !grant.allows(&database) {
        inc(&ctx.counters.auth_failures);
        return Err(error(
            ErrorCode::Auth,
            format!("user {user:?} may not subscribe to database {database:?}"),
        ));
    }
    let found = ctx.databases.read_locked().get(&database).cloned();
    let Some(db) = found else {
        return Err(error(
            ErrorCode::UnknownDatabase,
            format!("database {database:?} is not published"),
        ));
    };
    let participant = flags & HELLO_PARTICIPANT != 0;
    if participant && !grant.participant {
        return Err(refuse_participant(ctx, subscriber_id, &user, &database));
    }
    let record = SubscriberRecord {
        id: subscriber_id,
        user: user.clone(),
        database,
        client,
        peer,
        sessions: 1,
        participant,
        push,
        report: None,
        last_seen: Instant::now(),
    };
    let client = record.client.clone();
    let (id, keys, pushing) = register(ctx, record, db.as_ref())?;
    db.on_registered();
    inc(&ctx.counters.registrations);
    let mut info = db.info();
    info.keys = keys.keys;
    info.older_keys_below = keys.older_below;
    info.groups = grant.groups.clone();
    info.subscriber_id = id;
    info.push = pushing;
    let session = Session {
        user,
        id,
        client,
        participant,
        push,
        groups: grant.groups,
        db,
        resync: None,
    };
    Ok((session, info))
}

/// Refuses a HELLO asking to be a two-phase participant without the role; a registration
/// that was a participant under an earlier grant votes no more.
fn refuse_participant(ctx: &ServerContext, id: u64, user: &str, database: &str) -> Message {
    inc(&ctx.counters.auth_failures);
    if let Some(r) = ctx
        .registry
        .locked()
        .get_mut(&id)
        .filter(|r| r.user == user && r.database == database)
    {
        r.participant = false;
    }
    error(
        ErrorCode::Auth,
        format!(
            "user {user:?} may not register as a two-phase participant of database {database:?}"
        ),
    )
}

/// Records a reception report. A registration that expired meanwhile (the subscriber was
/// silent for `registration_expiry`) is registered again under its id.
pub(super) fn report(
    ctx: &ServerContext,
    s: &Session,
    peer: SocketAddr,
    r: SubscriberReport,
) -> std::result::Result<Message, Message> {
    let now = Instant::now();
    inc(&ctx.counters.reports_received);
    {
        let mut reg = ctx.registry.locked();
        if let Some(rec) = reg.get_mut(&s.id) {
            rec.report = Some((r, now));
            rec.last_seen = now;
            return Ok(Message::Ok);
        }
    }
    let record = SubscriberRecord {
        id: s.id,
        user: s.user.clone(),
        database: s.db.name().to_owned(),
        client: s.client.clone(),
        peer,
        sessions: 1,
        participant: s.participant,
        push: s.push,
        report: Some((r, now)),
        last_seen: now,
    };
    let (id, _, _) = register(ctx, record, s.db.as_ref())?;
    if id != s.id {
        // Its id was taken meanwhile: the subscriber must register again to learn its new
        // one (this record would otherwise be orphaned).
        let mut reg = ctx.registry.locked();
        ctx.remove_where(&mut reg, |r| r.id == id);
        return Err(error(
            ErrorCode::BadRequest,
            "registration expired; register again",
        ));
    }
    Ok(Message::Ok)
}

/// Most registrations one user may hold for one database: one subscriber keeps one record
/// however often it reconnects, so only a client that throws its id away (or a hostile one)
/// reaches this; it must not be able to outnumber everyone else in the adaptation vote.
pub const MAX_REGISTRATIONS_PER_USER: usize = 256;

/// Records the registration and returns its id, the keys it gets and whether its stream is
/// pushed by unicast (a target asked for is added, within the database's limit, under
/// the same lock as the revocation check); an id from an earlier
/// HELLO of the same user and database is kept, so one subscriber has one record however
/// often it reconnects. Fails when the user already holds [`MAX_REGISTRATIONS_PER_USER`]
/// registrations of the database, or was revoked while it authenticated.
///
/// The registry lock covers the revocation check, the record and the key handout, and
/// [`ServerContext::revoke`] marks the user under the same lock: a HELLO in flight during a
/// revocation either registered (and took the keys before the revocation's rotation) and is
/// dropped by it, or sees the mark — it never gets a key drawn after the revocation.
pub(super) fn register(
    ctx: &ServerContext,
    mut record: SubscriberRecord,
    db: &dyn PublishedDatabase,
) -> std::result::Result<(u64, KeyHandout, Push), Message> {
    let mut reg = ctx.registry.locked();
    if ctx.is_revoked(&record.user) {
        inc(&ctx.counters.auth_failures);
        return Err(error(
            ErrorCode::Auth,
            format!("user {:?} is revoked", record.user),
        ));
    }
    if let Some(r) = reg.get_mut(&record.id) {
        if r.user == record.user && r.database == record.database {
            r.sessions += 1;
            r.peer = record.peer;
            r.participant = record.participant;
            let (push, target) = apply_push(ctx, db, record.id, &record.user, record.push);
            r.push = target;
            return Ok((record.id, db.keys(), push));
        }
    }
    let held = reg
        .values()
        .filter(|r| r.user == record.user && r.database == record.database)
        .count();
    if held >= MAX_REGISTRATIONS_PER_USER {
        return Err(error(
            ErrorCode::Auth,
            format!(
                "user {:?} already holds {held} registrations of database {:?}; close some \
                 (CLOSE SUBSCRIPTION) or reuse their ids",
                record.user, record.database
            ),
        ));
    }
    // An id the publisher does not know (it restarted) is taken over if free, so a
    // participant keeps its identity; otherwise the server draws one. Ids are random, never
    // counted up from a client's choice: nothing wraps into another user's record.
    if record.id == 0 || reg.contains_key(&record.id) {
        record.id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 && !reg.contains_key(&id) {
                break id;
            }
        };
    }
    let id = record.id;
    let (push, target) = apply_push(ctx, db, id, &record.user, record.push);
    record.push = target;
    reg.insert(id, record);
    Ok((id, db.keys(), push))
}
