//! Splits a chain (the bytes of one bundle of updates) into packets flagged FIC / MIC / LIC,
//! or OIC when it fits one packet.

use crate::wire::packet::{
    Compression, PacketHeader, PacketKind, CHAIN_PREFIX_LEN, FIC, HEADER_LEN, LIC, MIC, TAG_LEN,
};

/// A packet before sealing: its header and plaintext payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainPacket {
    /// Header (its `length` is filled in when sealed).
    pub header: PacketHeader,
    /// Plaintext payload.
    pub payload: Vec<u8>,
}

/// Numbers packets of one stream and cuts chains into datagram-sized pieces.
#[derive(Debug, Clone)]
pub struct ChainBuilder {
    stream_id: u32,
    key_epoch: u32,
    next_seq: u64,
    capacity: usize,
}

impl ChainBuilder {
    /// A builder for a stream whose datagrams are at most `datagram_bytes` long.
    pub fn new(stream_id: u32, key_epoch: u32, datagram_bytes: usize) -> ChainBuilder {
        debug_assert!(datagram_bytes > HEADER_LEN + TAG_LEN + CHAIN_PREFIX_LEN);
        ChainBuilder {
            stream_id,
            key_epoch,
            next_seq: 1,
            capacity: datagram_bytes - HEADER_LEN - TAG_LEN,
        }
    }

    /// Plaintext bytes one packet carries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequence number the next packet gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Switches to another key epoch for the packets built from now on.
    pub fn set_key_epoch(&mut self, epoch: u32) {
        self.key_epoch = epoch;
    }

    fn header(&mut self, kind: PacketKind, flags: u8, compression: Compression) -> PacketHeader {
        let seq = self.next_seq;
        self.next_seq += 1;
        PacketHeader {
            kind,
            flags,
            compression,
            length: 0,
            stream_id: self.stream_id,
            key_epoch: self.key_epoch,
            seq,
        }
    }

    /// Cuts `chain` into packets appended to `out`. The first packet starts with the
    /// chain's total length.
    pub fn build(&mut self, chain: &[u8], compression: Compression, out: &mut Vec<PlainPacket>) {
        let mut rest = chain;
        let mut first = true;
        loop {
            let room = if first {
                self.capacity - CHAIN_PREFIX_LEN
            } else {
                self.capacity
            };
            let take = rest.len().min(room);
            let (piece, tail) = rest.split_at(take);
            rest = tail;
            let mut flags = if first { FIC } else { MIC };
            if rest.is_empty() {
                flags |= LIC;
            }
            let mut payload = Vec::with_capacity(take + CHAIN_PREFIX_LEN);
            if first {
                payload.extend_from_slice(&(chain.len() as u32).to_be_bytes());
            }
            payload.extend_from_slice(piece);
            let header = self.header(PacketKind::Data, flags, compression);
            out.push(PlainPacket { header, payload });
            first = false;
            if rest.is_empty() {
                break;
            }
        }
    }

    /// A heartbeat packet carrying `body`.
    pub fn heartbeat(&mut self, body: Vec<u8>) -> PlainPacket {
        let header = self.header(PacketKind::Heartbeat, 0, Compression::None);
        PlainPacket {
            header,
            payload: body,
        }
    }
}
