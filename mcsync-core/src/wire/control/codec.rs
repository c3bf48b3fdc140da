//! The control messages' byte layout: type codes, field encodings, `Message::encode` and
//! `Message::parse`.

use super::*;
use super::{Put, Reader, WireError};
use crate::auth::Secret;
use crate::crypto::Key;
use crate::proto::resync::{
    Digest, Range, MAX_FETCH_PER_REQUEST, MAX_RANGES_PER_REQUEST, SUM_BYTES,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const T_HELLO: u8 = 1;
const T_HELLO_OK: u8 = 2;
/// HELLO_OK `encrypted` byte, bit 1: the body ends with a `push` byte.
const INFO_PUSH: u8 = 2;
const T_CATCHUP_REQUEST: u8 = 3;
const T_CATCHUP_UPDATE: u8 = 4;
const T_CATCHUP_END: u8 = 5;
const T_ERROR: u8 = 6;
const T_PACKET_REQUEST: u8 = 7;
const T_PACKET_DATA: u8 = 8;
const T_PACKET_END: u8 = 9;
const T_CLOSE_SUBSCRIPTION: u8 = 10;
const T_OK: u8 = 11;
const T_RESYNC_BEGIN: u8 = 12;
const T_RESYNC_SNAPSHOT: u8 = 13;
const T_DIGEST_REQUEST: u8 = 14;
const T_DIGEST_REPLY: u8 = 15;
const T_LIST_REQUEST: u8 = 16;
const T_LIST_REPLY: u8 = 17;
const T_FETCH_REQUEST: u8 = 18;
const T_FETCH_RECORD: u8 = 19;
const T_FETCH_END: u8 = 20;
const T_VOTE: u8 = 21;
const T_ACK: u8 = 22;
const T_OUTCOME_REQUEST: u8 = 23;
const T_OUTCOME: u8 = 24;
const T_COMPACT_REQUEST: u8 = 25;
const T_REPORT: u8 = 26;
const T_STATUS_REQUEST: u8 = 27;
const T_STATUS: u8 = 28;
const T_COMPACT_UPDATE: u8 = 29;

/// Tree ranges as (level, varint index of the range within its level): 2–4 bytes where
/// (lo, level) took 9.
fn put_tree_ranges(out: &mut Vec<u8>, ranges: &[Range]) {
    out.put_u16(ranges.len() as u16);
    for r in ranges {
        out.put_u8(r.level);
        put_varint(out, r.index());
    }
}

fn read_tree_ranges(r: &mut Reader<'_>) -> Result<Vec<Range>, WireError> {
    let n = r.u16("range count")? as usize;
    if n == 0 || n > MAX_RANGES_PER_REQUEST {
        return Err(WireError::Invalid("range count", n as u64));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let level = r.u8("range level")?;
        let index = read_varint(r, "range index")?;
        out.push(Range::at(level, index).ok_or(WireError::Invalid("range index", index))?);
    }
    Ok(out)
}

/// An unsigned LEB128 number: 7 bits a byte, low bits first.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn read_varint(r: &mut Reader<'_>, field: &'static str) -> Result<u64, WireError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = r.u8(field)?;
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(WireError::TooLong(field, u64::from(b)));
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(WireError::TooLong(field, v))
}

fn check_sum_bytes(sum_bytes: u8) -> Result<u8, WireError> {
    if SUM_BYTES.contains(&sum_bytes) {
        Ok(sum_bytes)
    } else {
        Err(WireError::Invalid("digest sum bytes", u64::from(sum_bytes)))
    }
}

/// Reads a u32 count and checks that `per_item` bytes each fit in what is left.
fn read_count(
    r: &mut Reader<'_>,
    per_item: usize,
    field: &'static str,
) -> Result<usize, WireError> {
    let n = r.u32(field)? as usize;
    if n > r.remaining() / per_item {
        return Err(WireError::TooLong(field, n as u64));
    }
    Ok(n)
}

fn put_ranges(out: &mut Vec<u8>, ranges: &[(u64, u64)]) {
    out.put_u16(ranges.len() as u16);
    for (a, b) in ranges {
        out.put_u64(*a);
        out.put_u64(*b);
    }
}

/// Reads ascending, non-overlapping, non-empty inclusive ranges of non-zero numbers.
fn read_ranges(r: &mut Reader<'_>) -> Result<Vec<(u64, u64)>, WireError> {
    let n = r.u16("range count")? as usize;
    if n == 0 || n > MAX_RANGES {
        return Err(WireError::Invalid("range count", n as u64));
    }
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(n);
    for _ in 0..n {
        let a = r.u64("range start")?;
        let b = r.u64("range end")?;
        if a == 0 || b < a || ranges.last().is_some_and(|&(_, pb)| a <= pb) {
            return Err(WireError::Invalid("range", a));
        }
        ranges.push((a, b));
    }
    Ok(ranges)
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.put_u16(a.port());
}

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, WireError> {
    let ip = match r.u8("address family")? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("address")?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("address")?)),
        f => return Err(WireError::Invalid("address family", f.into())),
    };
    Ok(SocketAddr::new(ip, r.u16("port")?))
}

fn read_info(r: &mut Reader<'_>) -> Result<DatabaseInfo, WireError> {
    let group = read_addr(r)?;
    let source = read_addr(r)?;
    // Bit 0: encrypted; bit 1: a `push` byte ends the body (only in answer to a HELLO
    // that asked for push, so a control protocol 4 client never sees it set).
    let flags = r.u8("encrypted")?;
    if flags & !(1 | INFO_PUSH) != 0 {
        return Err(WireError::Invalid("encrypted", flags.into()));
    }
    let encrypted = flags & 1 != 0;
    let nkeys = r.u8("key count")? as usize;
    if nkeys > MAX_KEYS {
        return Err(WireError::TooLong("key count", nkeys as u64));
    }
    let mut keys = Vec::with_capacity(nkeys);
    for _ in 0..nkeys {
        let epoch = r.u32("key epoch")?;
        keys.push((epoch, Key::from_bytes(r.array::<32>("key")?)));
    }
    let older_keys_below = r.u64("older keys bound")?;
    let ngroups = r.u8("group count")? as usize;
    let mut groups = Vec::with_capacity(ngroups);
    for _ in 0..ngroups {
        groups.push(r.str8("group")?.to_owned());
    }
    Ok(DatabaseInfo {
        group,
        source,
        encrypted,
        keys,
        older_keys_below,
        groups,
        current_version: r.u64("current version")?,
        oldest_version: r.u64("oldest version")?,
        subscriber_id: r.u64("subscriber id")?,
        incarnation: r.u64("incarnation")?,
        stream_id: r.u32("stream id")?,
        push: if flags & INFO_PUSH != 0 {
            let code = r.u8("push")?;
            match Push::from_code(code) {
                Some(p) if p != Push::NotAsked => p,
                _ => return Err(WireError::Invalid("push", code.into())),
            }
        } else {
            Push::NotAsked
        },
    })
}

impl Message {
    /// Appends the whole frame (length, type, body). (Long: one arm per message, in the
    /// order of PROTOCOL.md's message table, mirrored by `parse`.)
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Message::Hello {
                version,
                database,
                client,
                user,
                secret,
                subscriber_id,
                flags,
                unicast_port,
            } => {
                out.put_u8(T_HELLO);
                out.put_u8(*version);
                out.put_str16(database);
                out.put_str16(client);
                out.put_str16(user);
                out.put_str16(secret.expose());
                out.put_u64(*subscriber_id);
                let unicast = if unicast_port.is_some() {
                    HELLO_UNICAST
                } else {
                    0
                };
                out.put_u8((flags & !HELLO_UNICAST) | unicast);
                if let Some(port) = unicast_port {
                    out.put_u16(*port);
                }
            }
            Message::HelloOk(info) => {
                out.put_u8(T_HELLO_OK);
                put_addr(out, &info.group);
                put_addr(out, &info.source);
                let push = if info.push == Push::NotAsked {
                    0
                } else {
                    INFO_PUSH
                };
                out.put_u8(u8::from(info.encrypted) | push);
                // The newest keys, if there were ever more than fit.
                let keys = &info.keys[info.keys.len().saturating_sub(MAX_KEYS)..];
                out.put_u8(keys.len() as u8);
                for (epoch, key) in keys {
                    out.put_u32(*epoch);
                    out.extend_from_slice(key.as_bytes());
                }
                out.put_u64(info.older_keys_below);
                out.put_u8(info.groups.len().min(MAX_GROUPS) as u8);
                for g in info.groups.iter().take(MAX_GROUPS) {
                    out.put_str8(g);
                }
                out.put_u64(info.current_version);
                out.put_u64(info.oldest_version);
                out.put_u64(info.subscriber_id);
                out.put_u64(info.incarnation);
                out.put_u32(info.stream_id);
                // Only to a HELLO that asked for push: a control protocol 4 peer (which
                // never asks) gets the HELLO_OK it knows.
                if push != 0 {
                    out.put_u8(info.push.code());
                }
            }
            Message::CloseSubscription { subscriber_id } => {
                out.put_u8(T_CLOSE_SUBSCRIPTION);
                out.put_u64(*subscriber_id);
            }
            Message::Ok => out.put_u8(T_OK),
            Message::ResyncBegin => out.put_u8(T_RESYNC_BEGIN),
            Message::ResyncSnapshot {
                version,
                count,
                sum,
            } => {
                out.put_u8(T_RESYNC_SNAPSHOT);
                out.put_u64(*version);
                out.put_u32(*count);
                out.put_u64(*sum);
            }
            Message::DigestRequest { ranges, sum_bytes } => {
                out.put_u8(T_DIGEST_REQUEST);
                out.put_u8(*sum_bytes);
                put_tree_ranges(out, ranges);
            }
            Message::DigestReply { sum_bytes, digests } => {
                // Each digest: varint count, then (unless the range is empty) the low
                // `sum_bytes` bytes of the sum, big-endian.
                out.put_u8(T_DIGEST_REPLY);
                out.put_u8(*sum_bytes);
                out.put_u32(digests.len() as u32);
                let width = usize::from(*sum_bytes).min(8);
                for d in digests {
                    put_varint(out, u64::from(d.count));
                    if d.count > 0 {
                        out.extend_from_slice(&d.sum.to_be_bytes()[8 - width..]);
                    }
                }
            }
            Message::ListRequest { ranges } => {
                out.put_u8(T_LIST_REQUEST);
                put_tree_ranges(out, ranges);
            }
            Message::ListReply { entries } => {
                out.put_u8(T_LIST_REPLY);
                out.put_u32(entries.len() as u32);
                for (k, h) in entries {
                    out.put_u64(*k);
                    out.put_u64(*h);
                }
            }
            Message::FetchRequest { key_hashes } => {
                out.put_u8(T_FETCH_REQUEST);
                out.put_u32(key_hashes.len() as u32);
                for k in key_hashes {
                    out.put_u64(*k);
                }
            }
            Message::FetchRecord { key, value, groups } => {
                out.put_u8(T_FETCH_RECORD);
                out.put_blob32(key);
                out.put_blob32(value);
                out.put_u8(groups.len() as u8);
                for g in groups {
                    out.put_str8(g);
                }
            }
            Message::FetchEnd { missing } => {
                out.put_u8(T_FETCH_END);
                out.put_u64(*missing);
            }
            Message::Vote {
                version,
                round,
                prepared,
                reason,
            } => {
                out.put_u8(T_VOTE);
                out.put_u64(*version);
                out.put_u64(*round);
                out.put_u8(u8::from(*prepared));
                out.put_str16(reason);
            }
            Message::Ack { version, round } => {
                out.put_u8(T_ACK);
                out.put_u64(*version);
                out.put_u64(*round);
            }
            Message::OutcomeRequest { version, round } => {
                out.put_u8(T_OUTCOME_REQUEST);
                out.put_u64(*version);
                out.put_u64(*round);
            }
            Message::Outcome { version, state } => {
                out.put_u8(T_OUTCOME);
                out.put_u64(*version);
                out.put_u8(state.code());
            }
            Message::CompactRequest { first, last } => {
                out.put_u8(T_COMPACT_REQUEST);
                out.put_u64(*first);
                out.put_u64(*last);
            }
            Message::Report(r) => {
                out.put_u8(T_REPORT);
                out.put_u32(r.loss_ppm);
                out.put_u64(r.packets_received);
                out.put_u64(r.packets_lost);
                out.put_u64(r.applied_version);
                out.put_u64(r.latency_p50_us);
                out.put_u64(r.latency_p99_us);
                out.put_u64(r.repairs);
                out.put_u64(r.resubscriptions);
                out.put_u8(u8::from(r.unicast_only));
            }
            Message::StatusRequest => out.put_u8(T_STATUS_REQUEST),
            Message::Status {
                current_version,
                oldest_version,
                incarnation,
            } => {
                out.put_u8(T_STATUS);
                out.put_u64(*current_version);
                out.put_u64(*oldest_version);
                out.put_u64(*incarnation);
            }
            Message::CompactUpdate { first, update } => {
                out.put_u8(T_COMPACT_UPDATE);
                out.put_u64(*first);
                out.extend_from_slice(update);
            }
            Message::CatchupRequest { ranges } => {
                out.put_u8(T_CATCHUP_REQUEST);
                put_ranges(out, ranges);
            }
            Message::PacketRequest { stream_id, ranges } => {
                out.put_u8(T_PACKET_REQUEST);
                out.put_u32(*stream_id);
                put_ranges(out, ranges);
            }
            Message::PacketData(bytes) => {
                out.put_u8(T_PACKET_DATA);
                out.extend_from_slice(bytes);
            }
            Message::PacketEnd { missing } => {
                out.put_u8(T_PACKET_END);
                out.put_u64(*missing);
            }
            Message::CatchupUpdate(bytes) => {
                out.put_u8(T_CATCHUP_UPDATE);
                out.extend_from_slice(bytes);
            }
            Message::CatchupEnd { current_version } => {
                out.put_u8(T_CATCHUP_END);
                out.put_u64(*current_version);
            }
            Message::Error { code, message } => {
                out.put_u8(T_ERROR);
                out.put_u16(*code as u16);
                out.put_str16(message);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Encodes into a fresh buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Parses a frame's type and body (everything after the length field). (Long: one
    /// arm per message, mirroring `encode`.)
    pub fn parse(frame: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(frame);
        let msg = match r.u8("message type")? {
            T_HELLO => {
                let version = r.u8("version")?;
                let database = r.str16("database")?.to_owned();
                let client = r.str16("client")?.to_owned();
                let user = r.str16("user")?.to_owned();
                let secret = Secret::new(r.str16("secret")?);
                let subscriber_id = r.u64("subscriber id")?;
                let flags = r.u8("flags")?;
                let unicast_port = if flags & HELLO_UNICAST != 0 {
                    Some(r.u16("unicast port")?)
                } else {
                    None
                };
                Message::Hello {
                    version,
                    database,
                    client,
                    user,
                    secret,
                    subscriber_id,
                    flags: flags & !HELLO_UNICAST,
                    unicast_port,
                }
            }
            T_HELLO_OK => Message::HelloOk(read_info(&mut r)?),
            T_CLOSE_SUBSCRIPTION => Message::CloseSubscription {
                subscriber_id: r.u64("subscriber id")?,
            },
            T_OK => Message::Ok,
            T_RESYNC_BEGIN => Message::ResyncBegin,
            T_RESYNC_SNAPSHOT => Message::ResyncSnapshot {
                version: r.u64("version")?,
                count: r.u32("count")?,
                sum: r.u64("sum")?,
            },
            T_DIGEST_REQUEST => Message::DigestRequest {
                sum_bytes: check_sum_bytes(r.u8("digest sum bytes")?)?,
                ranges: read_tree_ranges(&mut r)?,
            },
            T_DIGEST_REPLY => {
                let sum_bytes = check_sum_bytes(r.u8("digest sum bytes")?)?;
                let n = read_count(&mut r, 1, "digest count")?;
                let mut digests = Vec::with_capacity(n);
                for _ in 0..n {
                    let count = read_varint(&mut r, "digest count")?;
                    let count = u32::try_from(count)
                        .map_err(|_| WireError::Invalid("digest count", count))?;
                    let mut sum = 0u64;
                    if count > 0 {
                        for b in r.bytes(usize::from(sum_bytes), "digest sum")? {
                            sum = (sum << 8) | u64::from(*b);
                        }
                    }
                    digests.push(Digest { count, sum });
                }
                Message::DigestReply { sum_bytes, digests }
            }
            T_LIST_REQUEST => Message::ListRequest {
                ranges: read_tree_ranges(&mut r)?,
            },
            T_LIST_REPLY => {
                let n = read_count(&mut r, 16, "entry count")?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push((r.u64("key hash")?, r.u64("content hash")?));
                }
                Message::ListReply { entries }
            }
            T_FETCH_REQUEST => {
                let n = read_count(&mut r, 8, "key hash count")?;
                if n == 0 || n > MAX_FETCH_PER_REQUEST {
                    return Err(WireError::Invalid("key hash count", n as u64));
                }
                let mut key_hashes = Vec::with_capacity(n);
                for _ in 0..n {
                    key_hashes.push(r.u64("key hash")?);
                }
                Message::FetchRequest { key_hashes }
            }
            T_FETCH_RECORD => Message::FetchRecord {
                key: r.blob32(crate::wire::update::MAX_KEY_LEN, "key")?.to_vec(),
                value: r.blob32(usize::MAX, "value")?.to_vec(),
                groups: crate::wire::update::read_groups(&mut r)?,
            },
            T_FETCH_END => Message::FetchEnd {
                missing: r.u64("missing")?,
            },
            T_VOTE => Message::Vote {
                version: r.u64("version")?,
                round: r.u64("round")?,
                prepared: match r.u8("vote")? {
                    0 => false,
                    1 => true,
                    v => return Err(WireError::Invalid("vote", v.into())),
                },
                reason: r.str16("reason")?.to_owned(),
            },
            T_ACK => Message::Ack {
                version: r.u64("version")?,
                round: r.u64("round")?,
            },
            T_OUTCOME_REQUEST => Message::OutcomeRequest {
                version: r.u64("version")?,
                round: r.u64("round")?,
            },
            T_OUTCOME => {
                let version = r.u64("version")?;
                let code = r.u8("outcome")?;
                let state =
                    Outcome::from_code(code).ok_or(WireError::Invalid("outcome", code.into()))?;
                Message::Outcome { version, state }
            }
            T_REPORT => Message::Report(SubscriberReport {
                loss_ppm: match r.u32("loss")? {
                    v @ 0..=1_000_000 => v,
                    v => return Err(WireError::Invalid("loss", v.into())),
                },
                packets_received: r.u64("received")?,
                packets_lost: r.u64("lost")?,
                applied_version: r.u64("applied")?,
                latency_p50_us: r.u64("p50")?,
                latency_p99_us: r.u64("p99")?,
                repairs: r.u64("repairs")?,
                resubscriptions: r.u64("resubscriptions")?,
                unicast_only: match r.u8("unicast only")? {
                    0 => false,
                    1 => true,
                    v => return Err(WireError::Invalid("unicast only", v.into())),
                },
            }),
            T_STATUS_REQUEST => Message::StatusRequest,
            T_STATUS => Message::Status {
                current_version: r.u64("current version")?,
                oldest_version: r.u64("oldest version")?,
                incarnation: r.u64("incarnation")?,
            },
            T_COMPACT_UPDATE => {
                let first = r.u64("first")?;
                if first == 0 {
                    return Err(WireError::Invalid("first", 0));
                }
                let n = r.remaining();
                Message::CompactUpdate {
                    first,
                    update: r.bytes(n, "update")?.to_vec(),
                }
            }
            T_COMPACT_REQUEST => {
                let first = r.u64("first")?;
                let last = r.u64("last")?;
                if first == 0 || last < first {
                    return Err(WireError::Invalid("range", first));
                }
                Message::CompactRequest { first, last }
            }
            T_CATCHUP_REQUEST => Message::CatchupRequest {
                ranges: read_ranges(&mut r)?,
            },
            T_PACKET_REQUEST => Message::PacketRequest {
                stream_id: r.u32("stream")?,
                ranges: read_ranges(&mut r)?,
            },
            T_PACKET_DATA => {
                let n = r.remaining();
                Message::PacketData(r.bytes(n, "datagram")?.to_vec())
            }
            T_PACKET_END => Message::PacketEnd {
                missing: r.u64("missing")?,
            },
            T_CATCHUP_UPDATE => {
                let n = r.remaining();
                Message::CatchupUpdate(r.bytes(n, "update")?.to_vec())
            }
            T_CATCHUP_END => Message::CatchupEnd {
                current_version: r.u64("current version")?,
            },
            T_ERROR => {
                let raw = r.u16("error code")?;
                let code =
                    ErrorCode::from_u16(raw).ok_or(WireError::Invalid("error code", raw.into()))?;
                Message::Error {
                    code,
                    message: r.str16("message")?.to_owned(),
                }
            }
            t => return Err(WireError::Invalid("message type", t.into())),
        };
        r.finish()?;
        Ok(msg)
    }
}
