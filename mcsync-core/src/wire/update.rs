//! Encoding of updates and of bundles of updates (the bytes a chain carries, and what a
//! catch-up stream sends one by one).
//!
//! ```text
//! update:  version u64 | timestamp_us u64 | kind u8 (1 = commit) | op count u32 | op*
//! op:      op u8 (1 put, 2 delete) | key id u16 (0 = database key) | group count u8 |
//!          group* (u8 length + UTF-8) | key (u32 length + bytes) | value (u32 length +
//!          bytes, puts only)
//! bundle:  update count u16 | (u32 length + update)*
//! ```

use super::{Put, Reader, WireError};
use crate::update::{Op, OpKind, Update};

/// Update kind byte: a one-phase committed transaction.
pub const KIND_COMMIT: u8 = 1;

/// What a record in a chain (or catch-up stream) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A committed master transaction (one-phase, or a two-phase one once committed).
    Commit = 1,
    /// A two-phase update proposed at its version, not yet committed: hold it, vote, and
    /// show nothing until COMMIT.
    Prepare = 2,
    /// The prepared update of this version is committed (no ops).
    CommitPrepared = 3,
    /// The prepared update of this version is aborted or rolled back (no ops).
    Abort = 4,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Commit,
            2 => RecordKind::Prepare,
            3 => RecordKind::CommitPrepared,
            4 => RecordKind::Abort,
            _ => return None,
        })
    }
}
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// Smallest possible encoded op, used to bound counts before allocating.
const MIN_OP_LEN: usize = 1 + 2 + 1 + 4;
const UPDATE_FIXED_LEN: usize = 8 + 8 + 1 + 4;
/// Longest key accepted: LMDB's key size limit.
pub const MAX_KEY_LEN: usize = 511;
/// Most access groups on one record.
pub const MAX_GROUPS: usize = 32;

/// Size limits a parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded update accepted.
    pub max_update_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_update_bytes: crate::config::DEFAULT_MAX_UPDATE_BYTES,
        }
    }
}

/// Encoded size of one op.
pub fn op_encoded_len(op: &Op) -> usize {
    let groups: usize = op.groups.iter().map(|g| 1 + g.len()).sum();
    let value = match op.kind {
        OpKind::Put => 4 + op.value.len(),
        OpKind::Delete => 0,
    };
    MIN_OP_LEN + groups + op.key.len() + value
}

/// Encoded size of an update with these ops.
pub fn update_encoded_len(ops: &[Op]) -> usize {
    UPDATE_FIXED_LEN + ops.iter().map(op_encoded_len).sum::<usize>()
}

/// Checks an op against the format's limits; the message names what is wrong.
pub fn validate_op(op: &Op) -> Result<(), String> {
    if op.key.is_empty() {
        return Err("empty key".into());
    }
    if op.key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key of {} bytes exceeds {MAX_KEY_LEN}",
            op.key.len()
        ));
    }
    if op.kind == OpKind::Delete && !op.value.is_empty() {
        return Err("a delete carries no value".into());
    }
    if op.groups.len() > MAX_GROUPS {
        return Err(format!("{} groups exceed {MAX_GROUPS}", op.groups.len()));
    }
    if let Some(g) = op
        .groups
        .iter()
        .find(|g| g.is_empty() || g.len() > 255 || g.chars().any(char::is_control))
    {
        return Err(format!(
            "group name {g:?} must be 1..=255 bytes without control characters"
        ));
    }
    Ok(())
}

/// Appends an encoded update.
pub fn encode_update(u: &Update, out: &mut Vec<u8>) {
    encode_record(RecordKind::Commit, u, out);
}

/// Appends an encoded record of the given kind.
pub fn encode_record(kind: RecordKind, u: &Update, out: &mut Vec<u8>) {
    out.reserve(update_encoded_len(&u.ops));
    out.put_u64(u.version);
    out.put_u64(u.timestamp_us);
    out.put_u8(kind as u8);
    out.put_u32(u.ops.len() as u32);
    for op in &u.ops {
        out.put_u8(match op.kind {
            OpKind::Put => OP_PUT,
            OpKind::Delete => OP_DELETE,
        });
        out.put_u16(0);
        out.put_u8(op.groups.len() as u8);
        for g in &op.groups {
            out.put_str8(g);
        }
        out.put_blob32(&op.key);
        if op.kind == OpKind::Put {
            out.put_blob32(&op.value);
        }
    }
}

/// Encodes an update into a fresh buffer.
pub fn update_to_vec(u: &Update) -> Vec<u8> {
    let mut v = Vec::new();
    encode_update(u, &mut v);
    v
}

/// Reads only the version of an encoded update.
pub fn peek_version(buf: &[u8]) -> Result<u64, WireError> {
    Reader::new(buf).u64("version")
}

/// Reads only the timestamp of an encoded update.
pub fn peek_timestamp(buf: &[u8]) -> Result<u64, WireError> {
    let mut r = Reader::new(buf);
    r.u64("version")?;
    r.u64("timestamp")
}

/// Parses one encoded update that fills `buf` exactly.
pub fn decode_update(buf: &[u8], limits: &Limits) -> Result<Update, WireError> {
    match decode_record(buf, limits)? {
        (RecordKind::Commit, u) => Ok(u),
        (k, _) => Err(WireError::Invalid("update kind", k as u64)),
    }
}

/// Parses one encoded record of any kind that fills `buf` exactly.
pub fn decode_record(buf: &[u8], limits: &Limits) -> Result<(RecordKind, Update), WireError> {
    if buf.len() > limits.max_update_bytes {
        return Err(WireError::TooLong("update", buf.len() as u64));
    }
    let mut r = Reader::new(buf);
    let version = r.u64("version")?;
    let timestamp_us = r.u64("timestamp")?;
    let raw = r.u8("update kind")?;
    let kind = RecordKind::from_u8(raw).ok_or(WireError::Invalid("update kind", raw.into()))?;
    let n = r.u32("op count")? as usize;
    if n > r.remaining() / MIN_OP_LEN {
        return Err(WireError::TooLong("op count", n as u64));
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(decode_op(&mut r)?);
    }
    r.finish()?;
    let u = Update {
        version,
        timestamp_us,
        ops,
        reset: false,
    };
    Ok((kind, u))
}

/// Reads a record's access groups as ops carry them: a count (at most [`MAX_GROUPS`]),
/// then each name as str8 (never empty).
pub(crate) fn read_groups(r: &mut Reader<'_>) -> Result<Vec<String>, WireError> {
    let ngroups = r.u8("group count")? as usize;
    if ngroups > MAX_GROUPS {
        return Err(WireError::TooLong("group count", ngroups as u64));
    }
    let mut groups = Vec::with_capacity(ngroups);
    for _ in 0..ngroups {
        let g = r.str8("group")?;
        if g.is_empty() {
            return Err(WireError::Invalid("group", 0));
        }
        groups.push(g.to_owned());
    }
    Ok(groups)
}

fn decode_op(r: &mut Reader<'_>) -> Result<Op, WireError> {
    let kind = match r.u8("op")? {
        OP_PUT => OpKind::Put,
        OP_DELETE => OpKind::Delete,
        k => return Err(WireError::Invalid("op", k.into())),
    };
    let key_id = r.u16("key id")?;
    if key_id != 0 {
        return Err(WireError::Invalid("key id", key_id.into()));
    }
    let groups = read_groups(r)?;
    let key = r.blob32(MAX_KEY_LEN, "key")?;
    if key.is_empty() {
        return Err(WireError::Invalid("key length", 0));
    }
    let value = match kind {
        OpKind::Put => r.blob32(usize::MAX, "value")?.to_vec(),
        OpKind::Delete => Vec::new(),
    };
    Ok(Op {
        kind,
        key: key.to_vec(),
        value,
        groups,
    })
}

/// Appends a bundle made of already-encoded updates.
pub fn encode_bundle<'a>(updates: impl ExactSizeIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    debug_assert!(updates.len() <= u16::MAX as usize);
    out.put_u16(updates.len() as u16);
    for u in updates {
        out.put_blob32(u);
    }
}

/// Parses a bundle into its updates.
pub fn decode_bundle(buf: &[u8], limits: &Limits) -> Result<Vec<Update>, WireError> {
    decode_bundle_records(buf, limits)?
        .into_iter()
        .map(|(k, u)| match k {
            RecordKind::Commit => Ok(u),
            other => Err(WireError::Invalid("update kind", other as u64)),
        })
        .collect()
}

/// Parses a bundle into its records, whatever their kind.
pub fn decode_bundle_records(
    buf: &[u8],
    limits: &Limits,
) -> Result<Vec<(RecordKind, Update)>, WireError> {
    let mut r = Reader::new(buf);
    let n = r.u16("update count")? as usize;
    if n == 0 || n > r.remaining() / (4 + UPDATE_FIXED_LEN) {
        return Err(WireError::Invalid("update count", n as u64));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let b = r.blob32(limits.max_update_bytes, "update")?;
        out.push(decode_record(b, limits)?);
    }
    r.finish()?;
    Ok(out)
}
