//! Answers from the journal and the state: catch-up, compacted catch-up, packet resend,
//! and the hash resync's listings and fetches.

#![allow(clippy::result_large_err)]

use super::*;
use crate::auth::visible;
use crate::net::frame::write_message;
use crate::proto::resync::{key_hash, HashIndex, Range};
use crate::stats::{add, inc, PublisherCounters};
use crate::store::publisher::DbTables;
use crate::store::PublisherStore;
use crate::wire::control::{ErrorCode, Message, MAX_LIST_ENTRIES};
use crate::Error;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use super::session::*;

pub(super) fn resync_begin(
    ctx: &ServerContext,
    s: &mut Session,
) -> std::result::Result<Message, Message> {
    let (version, records) = ctx
        .store
        .hash_snapshot(s.db.name(), s.db.tables())
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
    let mut keys = HashMap::with_capacity(records.len());
    let mut entries = Vec::with_capacity(records.len());
    for r in records {
        if visible(&r.groups, &s.groups) {
            let kh = key_hash(&r.key);
            entries.push((kh, r.hash));
            keys.insert(kh, r.key);
        }
    }
    let index = HashIndex::new(entries);
    let root = index.digest(Range::ROOT);
    s.resync = Some(ResyncSnapshot { index, keys });
    inc(&ctx.counters.resyncs_served);
    Ok(Message::ResyncSnapshot {
        version,
        count: root.count,
        sum: root.sum,
    })
}

pub(super) fn list(r: &ResyncSnapshot, ranges: &[Range]) -> std::result::Result<Message, Message> {
    let mut entries = Vec::new();
    for range in ranges {
        entries.extend_from_slice(r.index.entries(*range));
        if entries.len() > MAX_LIST_ENTRIES {
            return Err(error(
                ErrorCode::BadRequest,
                format!("list of more than {MAX_LIST_ENTRIES} records; ask for smaller ranges"),
            ));
        }
    }
    Ok(Message::ListReply { entries })
}

pub(super) fn fetch(
    ctx: &ServerContext,
    s: &Session,
    key_hashes: &[u64],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let Some(r) = &s.resync else {
        return Err(error(ErrorCode::BadRequest, "fetch before RESYNC_BEGIN"));
    };
    let keys: Vec<Vec<u8>> = key_hashes
        .iter()
        .filter_map(|kh| r.keys.get(kh).cloned())
        .collect();
    let mut missing = (key_hashes.len() - keys.len()) as u64;
    let records = ctx
        .store
        .get_many(s.db.tables(), &keys)
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
    for (key, record) in keys.into_iter().zip(records) {
        // Deleted since the snapshot, or restricted since to groups this user does not
        // hold: absent for this replica (it deletes its copy).
        let Some((value, groups)) = record.filter(|(_, groups)| visible(groups, &s.groups)) else {
            missing += 1;
            continue;
        };
        // With its groups: a replica (and a relay re-publishing it) keeps the restriction.
        let n = write_message(w, &Message::FetchRecord { key, value, groups })
            .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        add(&ctx.counters.repair_bytes_sent, n as u64);
    }
    Ok(Message::FetchEnd { missing })
}

/// Encoded journal bytes folded into one compacted update (subscribers use compaction
/// only when their update size limit is at least twice this).
pub const COMPACT_CHUNK_BYTES: usize = 4 << 20;

/// Where a journal answer (catch-up or compacted catch-up) reads from, and how much per
/// read.
pub(super) struct JournalSource<'a> {
    pub(super) store: &'a PublisherStore,
    pub(super) tables: DbTables,
    pub(super) counters: &'a PublisherCounters,
    /// Most updates and about the most bytes per journal read (a compacted chunk is one
    /// read).
    pub(super) batch_updates: usize,
    pub(super) batch_bytes: usize,
    /// Called with the version about to be read before every journal read. The server
    /// passes a no-op; tests trim the journal here, as retention may at any moment
    /// between two reads of a long answer.
    pub(super) before_read: &'a mut dyn FnMut(u64),
}

impl JournalSource<'_> {
    fn internal(e: Error) -> Message {
        error(ErrorCode::Internal, e.to_string())
    }

    /// The oldest version the journal holds now.
    fn oldest(&self) -> std::result::Result<u64, Message> {
        self.store
            .oldest_version(self.tables)
            .map_err(Self::internal)
    }

    /// Reads up to a batch of journal entries `next..=last` and checks they are exactly
    /// `next, next + 1, …`: the journal is contiguous from its oldest version, so a
    /// version missing here was trimmed (by retention, while an earlier part of the
    /// answer was being sent). Serving from the next version held instead would move the
    /// replica past changes it never received, so the answer is ERROR Trimmed, and the
    /// subscriber resyncs by hashes.
    fn read(&mut self, next: u64, last: u64) -> std::result::Result<Vec<(u64, Vec<u8>)>, Message> {
        (self.before_read)(next);
        let batch = self
            .store
            .read_journal(
                self.tables,
                next,
                last,
                self.batch_updates,
                self.batch_bytes,
            )
            .map_err(Self::internal)?;
        for (want, &(v, _)) in (next..).zip(batch.iter()) {
            if v != want {
                return Err(self.missing(want, Some(v)));
            }
        }
        if batch.is_empty() {
            return Err(self.missing(next, None));
        }
        Ok(batch)
    }

    /// The answer when version `want` is not in the journal (`held` is the next one it
    /// holds, if any within the request).
    fn missing(&self, want: u64, held: Option<u64>) -> Message {
        let oldest = match self.oldest() {
            Ok(o) => o,
            Err(m) => return m,
        };
        let held = held.map_or_else(String::new, |v| format!("; next held is {v}"));
        error(
            ErrorCode::Trimmed,
            format!(
                "version {want} is no longer in the journal (trimmed while the answer was \
                 being sent; oldest is now {oldest}{held})"
            ),
        )
    }
}

/// Streams versions `first..=last` compacted: the journal is read in chunks, and each
/// chunk becomes one update at the chunk's last version holding only the latest operation
/// on each key it touched, sent as COMPACT_UPDATE naming the chunk's first version.
/// Applied in order after version `first - 1`, each leaves the replica exactly at the
/// master's state of its version.
pub(super) fn compact(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    first: u64,
    last: u64,
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let mut src = JournalSource {
        store: &ctx.store,
        tables: db.tables(),
        counters: &ctx.counters,
        batch_updates: usize::MAX,
        batch_bytes: COMPACT_CHUNK_BYTES,
        before_read: &mut |_| {},
    };
    compact_from(&mut src, db.committed_version(), first, last, w)
}

/// [`compact`] from a journal source, `current` being the latest committed version.
pub(super) fn compact_from(
    src: &mut JournalSource<'_>,
    current: u64,
    first: u64,
    last: u64,
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    if first > current {
        return Err(error(
            ErrorCode::NoSuchVersion,
            format!("versions {first}..={last} do not exist: latest version is {current}"),
        ));
    }
    let oldest = src.oldest()?;
    if oldest > first {
        return Err(error(
            ErrorCode::Trimmed,
            format!("version {first} is no longer in the journal (oldest is {oldest})"),
        ));
    }
    inc(&src.counters.repairs_served);
    let limits = crate::wire::update::Limits {
        max_update_bytes: usize::MAX,
    };
    let last = last.min(current);
    let mut next = first;
    while next <= last {
        let batch = src.read(next, last)?;
        let top = batch.last().map_or(next, |b| b.0);
        let mut latest: BTreeMap<Vec<u8>, crate::Op> = BTreeMap::new();
        let mut ts = 0;
        for (_, bytes) in &batch {
            let u = crate::wire::update::decode_update(bytes, &limits)
                .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
            ts = u.timestamp_us;
            for op in u.ops {
                latest.insert(op.key.clone(), op);
            }
        }
        let u = crate::Update {
            version: top,
            timestamp_us: ts,
            ops: latest.into_values().collect(),
            reset: false,
        };
        let update = crate::wire::update::update_to_vec(&u);
        let n = write_message(
            w,
            &Message::CompactUpdate {
                first: next,
                update,
            },
        )
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        inc(&src.counters.repair_updates_sent);
        add(&src.counters.repair_bytes_sent, n as u64);
        crate::crash::point("repair.compact");
        next = top + 1;
    }
    Ok(Message::CatchupEnd {
        current_version: current,
    })
}

/// Most packets resent for one request.
pub(super) const MAX_RESEND: u64 = 65_536;

pub(super) fn resend(
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

pub(super) fn catch_up(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let mut src = JournalSource {
        store: &ctx.store,
        tables: db.tables(),
        counters: &ctx.counters,
        batch_updates: BATCH_UPDATES,
        batch_bytes: BATCH_BYTES,
        before_read: &mut |_| {},
    };
    catch_up_from(&mut src, db.committed_version(), ranges, w)
}

/// Streams every version of `ranges` (each capped at `current`, the latest committed
/// version) from the journal, in order, each range exactly: a version trimmed meanwhile
/// ends the answer with ERROR Trimmed rather than being skipped.
pub(super) fn catch_up_from(
    src: &mut JournalSource<'_>,
    current: u64,
    ranges: &[(u64, u64)],
    w: &mut impl Write,
) -> std::result::Result<Message, Message> {
    let oldest = src.oldest()?;
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
    inc(&src.counters.repairs_served);
    for &(first, last) in ranges {
        let last = last.min(current);
        let mut next = first;
        while next <= last {
            let batch = src.read(next, last)?;
            let top = batch.last().map_or(next, |b| b.0);
            for (_, bytes) in batch {
                let n = write_message(w, &Message::CatchupUpdate(bytes))
                    .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
                inc(&src.counters.repair_updates_sent);
                add(&src.counters.repair_bytes_sent, n as u64);
            }
            next = top + 1;
        }
    }
    Ok(Message::CatchupEnd {
        current_version: current,
    })
}
