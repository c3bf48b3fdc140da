//! Multicast packets: a fixed plaintext header (authenticated as AES-GCM associated data)
//! followed by the sealed payload and its 16-byte tag.
//!
//! ```text
//! 0  magic     u16  0x4D53 ("MS")
//! 2  version   u8   1
//! 3  kind      u8   1 = DATA, 2 = HEARTBEAT
//! 4  flags     u8   bit 0 FIC, bit 1 LIC (MIC = 0, OIC = 3); bit 7 CHANGEKEY
//! 5  alg       u8   payload compression: 0 none, 1 lz4 (same on every packet of a chain)
//! 6  length    u16  bytes after the header (sealed payload + tag)
//! 8  stream    u32  stream id: fresh for every start of a database's multicaster
//! 12 epoch     u32  key epoch the payload is sealed under
//! 16 seq       u64  packet sequence number within the stream, from 1
//! ```

use super::{Put, Reader, WireError};

/// Magic number at the start of every multicast packet.
pub const MAGIC: u16 = 0x4D53;
/// Version of the packet format this build speaks.
pub const VERSION: u8 = 1;
/// Size of the plaintext packet header.
pub const HEADER_LEN: usize = 24;
/// Size of the AES-GCM tag that follows the payload.
pub const TAG_LEN: usize = 16;

/// Flag: first packet of a chain.
pub const FIC: u8 = 0b01;
/// Flag: last packet of a chain.
pub const LIC: u8 = 0b10;
/// Flags of a packet in the middle of a chain.
pub const MIC: u8 = 0;
/// Flags of a chain that fits one packet.
pub const OIC: u8 = FIC | LIC;
/// Flag: the publisher has moved to a newer key epoch (subscribers re-register).
pub const CHANGEKEY: u8 = 0x80;
const KNOWN_FLAGS: u8 = FIC | LIC | CHANGEKEY;

/// What a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A piece of a chain of updates.
    Data = 1,
    /// The publisher's latest version, sent when idle.
    Heartbeat = 2,
}

/// Compression applied to a chain's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Sent as is.
    None = 0,
    /// lz4 block format with the uncompressed size prepended.
    Lz4 = 1,
}

/// The plaintext header of a multicast packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Data or heartbeat.
    pub kind: PacketKind,
    /// FIC / LIC / CHANGEKEY bits.
    pub flags: u8,
    /// Compression of the chain this packet belongs to.
    pub compression: Compression,
    /// Bytes after the header (sealed payload and tag).
    pub length: u16,
    /// Stream id.
    pub stream_id: u32,
    /// Key epoch.
    pub key_epoch: u32,
    /// Packet sequence number.
    pub seq: u64,
}

impl PacketHeader {
    /// Appends the header's 24 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.kind as u8);
        out.put_u8(self.flags);
        out.put_u8(self.compression as u8);
        out.put_u16(self.length);
        out.put_u32(self.stream_id);
        out.put_u32(self.key_epoch);
        out.put_u64(self.seq);
    }

    /// The header as a fixed array (used as associated data).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut v = Vec::with_capacity(HEADER_LEN);
        self.encode(&mut v);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&v);
        out
    }

    /// Parses a datagram's header and checks that `length` matches the datagram exactly.
    /// Returns the header and the sealed bytes that follow it.
    pub fn parse(datagram: &[u8]) -> Result<(PacketHeader, &[u8]), WireError> {
        let mut r = Reader::new(datagram);
        let magic = r.u16("magic")?;
        if magic != MAGIC {
            return Err(WireError::Invalid("magic", magic.into()));
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(WireError::Invalid("packet version", version.into()));
        }
        let kind = match r.u8("kind")? {
            1 => PacketKind::Data,
            2 => PacketKind::Heartbeat,
            k => return Err(WireError::Invalid("packet kind", k.into())),
        };
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::Invalid("flags", flags.into()));
        }
        let compression = match r.u8("alg")? {
            0 => Compression::None,
            1 => Compression::Lz4,
            a => return Err(WireError::Invalid("compression", a.into())),
        };
        let length = r.u16("length")?;
        let stream_id = r.u32("stream")?;
        let key_epoch = r.u32("epoch")?;
        let seq = r.u64("seq")?;
        if (length as usize) < TAG_LEN {
            return Err(WireError::Invalid("length", length.into()));
        }
        if r.remaining() != length as usize {
            return Err(WireError::Invalid("length", length.into()));
        }
        let sealed = r.bytes(length as usize, "payload")?;
        let header = PacketHeader {
            kind,
            flags,
            compression,
            length,
            stream_id,
            key_epoch,
            seq,
        };
        Ok((header, sealed))
    }
}

/// Prefix of the first packet's payload in every chain: the chain's total byte length
/// (after compression), so the assembler knows when the chain is complete.
pub const CHAIN_PREFIX_LEN: usize = 4;

/// The plaintext payload of a HEARTBEAT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Latest version committed and sent on this stream.
    pub latest_version: u64,
    /// Oldest version the journal can still serve.
    pub oldest_version: u64,
    /// Publisher time, microseconds since the Unix epoch.
    pub timestamp_us: u64,
}

impl Heartbeat {
    /// Encoded size.
    pub const LEN: usize = 24;

    /// Appends the heartbeat body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(self.latest_version);
        out.put_u64(self.oldest_version);
        out.put_u64(self.timestamp_us);
    }

    /// Parses a heartbeat body.
    pub fn parse(buf: &[u8]) -> Result<Heartbeat, WireError> {
        let mut r = Reader::new(buf);
        let hb = Heartbeat {
            latest_version: r.u64("latest")?,
            oldest_version: r.u64("oldest")?,
            timestamp_us: r.u64("timestamp")?,
        };
        r.finish()?;
        Ok(hb)
    }
}
