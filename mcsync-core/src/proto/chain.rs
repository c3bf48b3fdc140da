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

    /// Key epoch of the packets built from now on.
    pub fn key_epoch(&self) -> u32 {
        self.key_epoch
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::OIC;

    fn reassemble(pkts: &[PlainPacket]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            out.extend_from_slice(if i == 0 {
                &p.payload[CHAIN_PREFIX_LEN..]
            } else {
                &p.payload
            });
        }
        out
    }

    #[test]
    fn capacity_leaves_room_for_header_and_tag() {
        let b = ChainBuilder::new(1, 1, 1_400);
        assert_eq!(b.capacity(), 1_400 - HEADER_LEN - TAG_LEN);
    }

    #[test]
    fn a_small_chain_is_one_packet_with_its_length() {
        let mut b = ChainBuilder::new(7, 3, 1_400);
        let mut out = Vec::new();
        b.build(b"hello", Compression::Lz4, &mut out);
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert_eq!(p.header.flags, OIC);
        assert_eq!(p.header.kind, PacketKind::Data);
        assert_eq!(p.header.compression, Compression::Lz4);
        assert_eq!(
            (p.header.stream_id, p.header.key_epoch, p.header.seq),
            (7, 3, 1)
        );
        assert_eq!(p.payload, [&5u32.to_be_bytes()[..], b"hello"].concat());
    }

    #[test]
    fn a_chain_one_byte_too_long_for_a_packet_takes_two() {
        let mut b = ChainBuilder::new(1, 1, 200);
        let fits = b.capacity() - CHAIN_PREFIX_LEN;
        let mut out = Vec::new();
        b.build(&vec![1; fits], Compression::None, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        b.build(&vec![2; fits + 1], Compression::None, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].header.flags, FIC);
        assert_eq!(out[1].header.flags, LIC);
        assert_eq!(out[1].payload, [2]);
    }

    #[test]
    fn a_large_chain_is_cut_into_first_middle_and_last() {
        let mut b = ChainBuilder::new(1, 1, 300);
        let chain: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        b.build(&chain, Compression::None, &mut out);
        let cap = b.capacity();
        assert_eq!(out.len(), (chain.len() + CHAIN_PREFIX_LEN).div_ceil(cap));
        assert_eq!(out[0].header.flags, FIC);
        assert_eq!(out.last().unwrap().header.flags, LIC);
        assert!(out[1..out.len() - 1].iter().all(|p| p.header.flags == MIC));
        assert!(out.iter().all(|p| p.payload.len() <= cap));
        assert_eq!(out[0].payload[..4], (chain.len() as u32).to_be_bytes());
        assert_eq!(reassemble(&out), chain);
        let seqs: Vec<u64> = out.iter().map(|p| p.header.seq).collect();
        assert_eq!(seqs, (1..=out.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn an_empty_chain_still_makes_one_packet() {
        let mut b = ChainBuilder::new(1, 1, 100);
        let mut out = Vec::new();
        b.build(&[], Compression::None, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header.flags, OIC);
        assert_eq!(out[0].payload, 0u32.to_be_bytes());
    }

    #[test]
    fn heartbeats_and_chains_share_one_sequence() {
        let mut b = ChainBuilder::new(5, 1, 100);
        let mut out = Vec::new();
        b.build(&[9; 100], Compression::None, &mut out);
        let hb = b.heartbeat(vec![1, 2, 3]);
        assert_eq!(hb.header.kind, PacketKind::Heartbeat);
        assert_eq!(hb.header.flags, 0);
        assert_eq!(hb.header.seq, out.len() as u64 + 1);
        assert_eq!(hb.payload, [1, 2, 3]);
        b.set_key_epoch(2);
        assert_eq!(b.next_seq(), hb.header.seq + 1);
        out.clear();
        b.build(b"x", Compression::None, &mut out);
        assert_eq!(out[0].header.key_epoch, 2);
        assert_eq!(out[0].header.seq, hb.header.seq + 1);
    }
}
