//! Unicast control messages (the repair channel). Each message is a frame:
//!
//! ```text
//! length u32 (bytes after this field) | type u8 | body
//! ```
//!
//! Bodies are listed in `docs/PROTOCOL.md`; socket addresses are encoded as
//! `family u8 (4 or 6) | address (4 or 16 bytes) | port u16`.

use super::{Put, Reader, WireError};
use crate::auth::Secret;
use crate::crypto::Key;
use crate::proto::resync::{Digest, Range};
use std::net::SocketAddr;

/// Version of the control protocol this build speaks. 2: VOTE, ACK and OUTCOME_REQUEST
/// name the two-phase round (its PREPARE's timestamp) beside the version. 3: HELLO_OK
/// carries the database's incarnation and stream id, STATUS its incarnation, and a
/// compacted catch-up answers with COMPACT_UPDATE (which names the first version each
/// chunk covers), so a replica can tell a changed history or a skipped version. 4:
/// HELLO_OK carries `older_keys_below`. 5: HELLO may ask for unicast push (flag
/// [`HELLO_UNICAST`] and a UDP port) and HELLO_OK then answers with the push state; tree
/// ranges are (level, varint index) and digest replies carry short sums.
pub const CONTROL_VERSION: u8 = 5;
/// Oldest control protocol a publisher of this build serves. Version 4 sent tree ranges
/// and digests in another encoding, so a version 4 subscriber could register but not
/// resync: it is refused at HELLO.
pub const MIN_CONTROL_VERSION: u8 = 5;
/// Bytes of frame header (length + type).
pub const FRAME_HEADER_LEN: usize = 5;
/// Most version ranges in one catch-up request.
pub const MAX_RANGES: usize = 256;

/// Error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request was malformed or out of order.
    BadRequest = 1,
    /// The database is not published.
    UnknownDatabase = 2,
    /// The requested versions do not exist (beyond the latest version).
    NoSuchVersion = 3,
    /// The journal no longer holds the requested versions.
    Trimmed = 4,
    /// The publisher failed internally (storage).
    Internal = 5,
    /// Authentication or authorization failed.
    Auth = 6,
    /// The client speaks an unsupported protocol version.
    Version = 7,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::UnknownDatabase,
            3 => ErrorCode::NoSuchVersion,
            4 => ErrorCode::Trimmed,
            5 => ErrorCode::Internal,
            6 => ErrorCode::Auth,
            7 => ErrorCode::Version,
            _ => return None,
        })
    }
}

/// What the publisher tells a subscriber about a database in answer to HELLO: the
/// registration (OPEN SUBSCRIPTION) result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// Multicast group and port the database is sent to.
    pub group: SocketAddr,
    /// Source address and port the publisher sends from (subscribers drop anything else).
    pub source: SocketAddr,
    /// Whether packets are sealed (always true in this version).
    pub encrypted: bool,
    /// Key epochs and keys, oldest first; the last is current.
    pub keys: Vec<(u32, Key)>,
    /// Keys older than the current one open only packets with a sequence number below this
    /// (the first one sealed under the current epoch; `u64::MAX` while the multicaster has
    /// not switched yet).
    pub older_keys_below: u64,
    /// The subscriber's access groups.
    pub groups: Vec<String>,
    /// Latest committed version.
    pub current_version: u64,
    /// Oldest version the journal can serve.
    pub oldest_version: u64,
    /// Id of this subscriber's registration (sent back in later HELLOs and in CLOSE).
    pub subscriber_id: u64,
    /// The database's incarnation: a random nonzero id drawn when the database was created
    /// at this publisher. A different one means a different history (the publisher's data
    /// was replaced), so versions a replica holds no longer mean the same content.
    pub incarnation: u64,
    /// Stream id the database's multicaster seals under now (it changes at every publisher
    /// start); data packets of any other stream are not from this registration's stream.
    pub stream_id: u32,
    /// Whether the publisher pushes the stream to this subscriber by unicast UDP (only
    /// when its HELLO asked for it; on the wire only then).
    pub push: Push,
}

/// The publisher's answer to a HELLO that asked for unicast push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Push {
    /// Not asked for (multicast subscriber, or a control protocol 4 peer).
    #[default]
    NotAsked,
    /// Every datagram multicast to the group is also sent to the subscriber's UDP port
    /// at the address of its control connection.
    Pushing,
    /// Refused: the database has as many unicast targets as it allows. The subscriber
    /// catches up by polling.
    Refused,
}

impl Push {
    /// Its code on the wire (HELLO_OK's trailing `push` byte).
    pub(crate) fn code(self) -> u8 {
        match self {
            Push::NotAsked => 0,
            Push::Pushing => 1,
            Push::Refused => 2,
        }
    }

    /// The state a wire code names, if any.
    pub(crate) fn from_code(code: u8) -> Option<Push> {
        Some(match code {
            0 => Push::NotAsked,
            1 => Push::Pushing,
            2 => Push::Refused,
            _ => return None,
        })
    }
}

impl DatabaseInfo {
    /// The current key epoch.
    pub fn key_epoch(&self) -> u32 {
        self.keys.last().map_or(0, |k| k.0)
    }
}

/// Most keys in one HELLO_OK.
pub const MAX_KEYS: usize = 4;
/// Most access groups in one HELLO_OK.
pub const MAX_GROUPS: usize = 255;

/// A subscriber's summary of its reception, sent every report interval and when it re-registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberReport {
    /// Packets the network lost per million sent, over the last interval.
    pub loss_ppm: u32,
    /// Packets received by multicast so far.
    pub packets_received: u64,
    /// Packets lost so far (repaired or skipped).
    pub packets_lost: u64,
    /// Version the replica is at.
    pub applied_version: u64,
    /// Publish→applied latency, median, microseconds.
    pub latency_p50_us: u64,
    /// Publish→applied latency, 99th percentile, microseconds.
    pub latency_p99_us: u64,
    /// Repair requests so far (version and packet repairs).
    pub repairs: u64,
    /// Re-registrations so far.
    pub resubscriptions: u64,
    /// Whether it has left multicast and catches up by unicast for now.
    pub unicast_only: bool,
}

/// A control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → publisher: open a session for a database.
    Hello {
        /// Control protocol version.
        version: u8,
        /// Database name.
        database: String,
        /// Free-form client name, for the publisher's logs and stats.
        client: String,
        /// User name.
        user: String,
        /// The user's secret (the channel is TLS).
        secret: Secret,
        /// Registration id from an earlier HELLO_OK, or 0 for a new registration.
        subscriber_id: u64,
        /// Bit 0: two-phase participant ([`HELLO_PARTICIPANT`]). Bit 1
        /// ([`HELLO_UNICAST`]) is not kept here: it is set on the wire exactly when
        /// `unicast_port` is.
        flags: u8,
        /// Ask for unicast push to this UDP port (at the address the publisher sees the
        /// control connection come from).
        unicast_port: Option<u16>,
    },
    /// Publisher → client: the database's parameters.
    HelloOk(DatabaseInfo),
    /// Client → publisher: send these inclusive version ranges.
    CatchupRequest {
        /// Inclusive `(first, last)` ranges, ascending, non-overlapping.
        ranges: Vec<(u64, u64)>,
    },
    /// Publisher → client: one encoded update (see `wire::update`).
    CatchupUpdate(Vec<u8>),
    /// Publisher → client: the catch-up is complete.
    CatchupEnd {
        /// Latest committed version at the end of the catch-up.
        current_version: u64,
    },
    /// Client → publisher: resend these packets of a stream (inclusive sequence ranges)
    /// from the retransmit buffer.
    PacketRequest {
        /// Stream id.
        stream_id: u32,
        /// Inclusive `(first, last)` sequence ranges, ascending, non-overlapping.
        ranges: Vec<(u64, u64)>,
    },
    /// Publisher → client: one sealed datagram exactly as it was multicast.
    PacketData(Vec<u8>),
    /// Publisher → client: the packet repair is complete.
    PacketEnd {
        /// Packets requested that the retransmit buffer no longer held.
        missing: u64,
    },
    /// Client → publisher: release the registration.
    CloseSubscription {
        /// Registration id.
        subscriber_id: u64,
    },
    /// Publisher → client: the request succeeded (answer to CLOSE_SUBSCRIPTION).
    Ok,
    /// Client → publisher: start a hash resync; the publisher snapshots the content hashes
    /// of the records this user may read.
    ResyncBegin,
    /// Publisher → client: the snapshot's version and root digest.
    ResyncSnapshot {
        /// Version the snapshot reflects.
        version: u64,
        /// Root digest: record count.
        count: u32,
        /// Root digest: wrapping sum of content hashes.
        sum: u64,
    },
    /// Client → publisher: send the child digests of these ranges.
    DigestRequest {
        /// Parent ranges.
        ranges: Vec<Range>,
        /// Bytes of each sum to send (`proto::resync::SUM_BYTES`): the low bytes.
        sum_bytes: u8,
    },
    /// Publisher → client: 16 child digests per requested range, in order.
    DigestReply {
        /// Bytes of each sum (as asked).
        sum_bytes: u8,
        /// The digests, sums cut to `sum_bytes` bytes.
        digests: Vec<Digest>,
    },
    /// Client → publisher: list the records of these ranges.
    ListRequest {
        /// Ranges to list.
        ranges: Vec<Range>,
    },
    /// Publisher → client: `(key hash, content hash)` of every record in the ranges, sorted.
    ListReply {
        /// The entries.
        entries: Vec<(u64, u64)>,
    },
    /// Client → publisher: send the current records with these key hashes.
    FetchRequest {
        /// Key hashes from the snapshot.
        key_hashes: Vec<u64>,
    },
    /// Publisher → client: one record.
    FetchRecord {
        /// The key.
        key: Vec<u8>,
        /// Its current value.
        value: Vec<u8>,
        /// Its current access groups (empty: everyone), so a replica, and a relay
        /// re-publishing it, keeps the restriction.
        groups: Vec<String>,
    },
    /// Publisher → client: the fetch is complete.
    FetchEnd {
        /// Key hashes not found (deleted since the snapshot, or unknown).
        missing: u64,
    },
    /// Participant → publisher: its vote on a prepared two-phase version.
    Vote {
        /// The prepared version.
        version: u64,
        /// The round: the timestamp its PREPARE carried.
        round: u64,
        /// PREPARED (true) or REFUSED (false).
        prepared: bool,
        /// Why it refused (empty when prepared).
        reason: String,
    },
    /// Participant → publisher: it applied (COMMIT) or discarded (ABORT) the version.
    Ack {
        /// The decided version.
        version: u64,
        /// The round: the timestamp its PREPARE and decision carried.
        round: u64,
    },
    /// Participant → publisher: what became of a version it holds prepared (asked after
    /// a restart).
    OutcomeRequest {
        /// The prepared version.
        version: u64,
        /// The round: the timestamp its PREPARE carried.
        round: u64,
    },
    /// Publisher → participant: the answer to OUTCOME_REQUEST.
    Outcome {
        /// The version asked about.
        version: u64,
        /// What became of it.
        state: Outcome,
    },
    /// Client → publisher: send versions `first..=last` compacted: per chunk of the
    /// journal, one update holding the latest operation on each key it changed.
    CompactRequest {
        /// First version wanted.
        first: u64,
        /// Last version wanted.
        last: u64,
    },
    /// Subscriber → publisher: its reception summary (answered with OK).
    Report(SubscriberReport),
    /// Subscriber → publisher: ask for the latest and oldest versions.
    StatusRequest,
    /// Publisher → subscriber: the answer to STATUS_REQUEST.
    Status {
        /// Latest committed version.
        current_version: u64,
        /// Oldest version the journal holds.
        oldest_version: u64,
        /// The database's incarnation, as in HELLO_OK.
        incarnation: u64,
    },
    /// Publisher → client: one compacted update in answer to COMPACT_REQUEST, the net
    /// effect of versions `first..=` the update's own version.
    CompactUpdate {
        /// First version the update covers (the one after the previous chunk's last, or
        /// the request's `first`), so the client can check nothing was skipped.
        first: u64,
        /// One encoded update (see `wire::update`) at the chunk's last version.
        update: Vec<u8>,
    },
    /// Either direction: a failure, with a code and a human-readable message.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// What went wrong, naming the database or versions.
        message: String,
    },
}

/// HELLO flag: the subscriber takes part in two-phase updates.
pub const HELLO_PARTICIPANT: u8 = 1;
/// HELLO flag: a UDP port follows; push the stream there by unicast (control protocol 5).
pub const HELLO_UNICAST: u8 = 2;
/// OUTCOME state: committed.
const OUTCOME_COMMITTED: u8 = 1;
/// OUTCOME state: aborted (or rolled back).
const OUTCOME_ABORTED: u8 = 2;
/// OUTCOME state: still being decided.
const OUTCOME_PENDING: u8 = 3;

/// What became of a two-phase round, as the publisher answers OUTCOME_REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The version is committed (by that round or a later one).
    Committed,
    /// The round was aborted or rolled back.
    Aborted,
    /// The round is still being decided.
    Pending,
}

impl Outcome {
    /// Its code on the wire.
    fn code(self) -> u8 {
        match self {
            Outcome::Committed => OUTCOME_COMMITTED,
            Outcome::Aborted => OUTCOME_ABORTED,
            Outcome::Pending => OUTCOME_PENDING,
        }
    }

    /// The outcome a wire code names, if any.
    fn from_code(code: u8) -> Option<Outcome> {
        match code {
            OUTCOME_COMMITTED => Some(Outcome::Committed),
            OUTCOME_ABORTED => Some(Outcome::Aborted),
            OUTCOME_PENDING => Some(Outcome::Pending),
            _ => None,
        }
    }
}
/// Most entries in one list reply.
pub const MAX_LIST_ENTRIES: usize = 1 << 20;

mod codec;
