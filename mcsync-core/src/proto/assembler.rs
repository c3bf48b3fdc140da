//! Reassembles chains from authenticated packets. A lost packet drops the rest of its chain;
//! the stream resumes at the next first-in-chain packet.

use crate::wire::packet::{Compression, PacketHeader, CHAIN_PREFIX_LEN, FIC, LIC};

/// Why packets were discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainDrop {
    /// A chain in progress lost a packet; its partial bytes were discarded.
    Broken,
    /// A middle or last packet arrived with no chain in progress (its FIC was lost).
    Orphan,
    /// The first packet announced a chain longer than the maximum, or the pieces
    /// disagree with the announced length.
    BadLength,
}

#[derive(Debug)]
struct Partial {
    next_seq: u64,
    total: usize,
    compression: Compression,
    buf: Vec<u8>,
}

/// A chain that arrived whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its bytes (still compressed if `compression` says so).
    pub bytes: Vec<u8>,
    /// Compression of `bytes`.
    pub compression: Compression,
}

/// What one packet produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    /// A chain completed by this packet.
    pub chain: Option<Chain>,
    /// Packets discarded because of this packet.
    pub dropped: Option<ChainDrop>,
}

impl Assembled {
    fn dropped(d: ChainDrop) -> Assembled {
        Assembled {
            chain: None,
            dropped: Some(d),
        }
    }
}

/// Chain reassembly for one stream.
#[derive(Debug)]
pub struct ChainAssembler {
    max_chain: usize,
    partial: Option<Partial>,
}

impl ChainAssembler {
    /// An assembler accepting chains of at most `max_chain` bytes.
    pub fn new(max_chain: usize) -> ChainAssembler {
        ChainAssembler {
            max_chain,
            partial: None,
        }
    }

    /// Forgets any chain in progress (the stream changed).
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// Feeds one authenticated DATA packet. Returns a chain if this packet completed one,
    /// and why packets were dropped if any were (a first-in-chain packet can do both: end a
    /// broken chain and complete a one-packet chain).
    pub fn on_packet(&mut self, header: &PacketHeader, payload: &[u8]) -> Assembled {
        if header.flags & FIC != 0 {
            let broken = self.partial.take().map(|_| ChainDrop::Broken);
            return match self.start(header, payload) {
                Ok(chain) => Assembled {
                    chain,
                    dropped: broken,
                },
                Err(e) => Assembled::dropped(e),
            };
        }
        let Some(p) = self.partial.as_mut() else {
            return Assembled::dropped(ChainDrop::Orphan);
        };
        if header.seq != p.next_seq || header.compression != p.compression {
            self.partial = None;
            return Assembled::dropped(ChainDrop::Broken);
        }
        if p.buf.len() + payload.len() > p.total {
            self.partial = None;
            return Assembled::dropped(ChainDrop::BadLength);
        }
        p.buf.extend_from_slice(payload);
        p.next_seq += 1;
        if header.flags & LIC == 0 {
            return Assembled::default();
        }
        let p = self.partial.take().expect("partial checked above");
        match Self::finish(p) {
            Ok(chain) => Assembled {
                chain,
                dropped: None,
            },
            Err(e) => Assembled::dropped(e),
        }
    }

    fn start(&mut self, header: &PacketHeader, payload: &[u8]) -> Result<Option<Chain>, ChainDrop> {
        if payload.len() < CHAIN_PREFIX_LEN {
            return Err(ChainDrop::BadLength);
        }
        let (prefix, piece) = payload.split_at(CHAIN_PREFIX_LEN);
        let total = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if total > self.max_chain || piece.len() > total {
            return Err(ChainDrop::BadLength);
        }
        // Grow with what arrives rather than trusting the announced total.
        let mut buf = Vec::with_capacity(total.min(piece.len() * 64));
        buf.extend_from_slice(piece);
        let p = Partial {
            next_seq: header.seq.wrapping_add(1),
            total,
            compression: header.compression,
            buf,
        };
        if header.flags & LIC != 0 {
            return Self::finish(p);
        }
        self.partial = Some(p);
        Ok(None)
    }

    fn finish(p: Partial) -> Result<Option<Chain>, ChainDrop> {
        if p.buf.len() != p.total {
            return Err(ChainDrop::BadLength);
        }
        Ok(Some(Chain {
            bytes: p.buf,
            compression: p.compression,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ChainBuilder, PlainPacket};
    use crate::wire::packet::{PacketKind, MIC, OIC};

    fn chain_bytes(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    /// Packets of consecutive chains, built like the sender does (100-byte datagrams:
    /// 60 bytes of payload each).
    fn build(chains: &[&[u8]]) -> Vec<PlainPacket> {
        let mut b = ChainBuilder::new(9, 1, 100);
        let mut out = Vec::new();
        for c in chains {
            b.build(c, Compression::None, &mut out);
        }
        out
    }

    fn feed(a: &mut ChainAssembler, p: &PlainPacket) -> Assembled {
        a.on_packet(&p.header, &p.payload)
    }

    fn complete(bytes: &[u8]) -> Assembled {
        Assembled {
            chain: Some(Chain {
                bytes: bytes.to_vec(),
                compression: Compression::None,
            }),
            dropped: None,
        }
    }

    #[test]
    fn one_packet_chain_completes_at_once() {
        let c = chain_bytes(40, 1);
        let pkts = build(&[&c]);
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].header.flags, OIC);
        let mut a = ChainAssembler::new(1 << 20);
        assert_eq!(feed(&mut a, &pkts[0]), complete(&c));
    }

    #[test]
    fn multi_packet_chain_reassembles_exactly() {
        let c = chain_bytes(1_000, 2);
        let pkts = build(&[&c]);
        assert_eq!(pkts.len(), (1_000usize + 4).div_ceil(60));
        let mut a = ChainAssembler::new(1 << 20);
        for p in &pkts[..pkts.len() - 1] {
            assert_eq!(feed(&mut a, p), Assembled::default());
        }
        assert_eq!(feed(&mut a, pkts.last().unwrap()), complete(&c));
    }

    #[test]
    fn a_lost_middle_packet_drops_the_rest_and_resumes_at_the_next_first() {
        let (c1, c2, c3) = (chain_bytes(200, 3), chain_bytes(30, 4), chain_bytes(150, 5));
        let pkts = build(&[&c1, &c2, &c3]);
        // c1 is packets 0..=3, c2 is packet 4, c3 is packets 5..=7.
        assert_eq!(pkts.len(), 8);
        assert_eq!(pkts[4].header.flags, OIC);
        let mut a = ChainAssembler::new(1 << 20);
        assert_eq!(feed(&mut a, &pkts[0]), Assembled::default());
        // pkts[1] is lost.
        assert_eq!(feed(&mut a, &pkts[2]).dropped, Some(ChainDrop::Broken));
        let last = feed(&mut a, &pkts[3]);
        assert_eq!(last.dropped, Some(ChainDrop::Orphan));
        assert_eq!(last.chain, None);
        assert_eq!(feed(&mut a, &pkts[4]), complete(&c2));
        for p in &pkts[5..7] {
            assert_eq!(feed(&mut a, p), Assembled::default());
        }
        assert_eq!(feed(&mut a, &pkts[7]), complete(&c3));
    }

    #[test]
    fn a_lost_first_packet_orphans_the_chain() {
        let (c1, c2) = (chain_bytes(200, 6), chain_bytes(10, 7));
        let pkts = build(&[&c1, &c2]);
        let mut a = ChainAssembler::new(1 << 20);
        for p in &pkts[1..4] {
            assert_eq!(feed(&mut a, p), Assembled::dropped(ChainDrop::Orphan));
        }
        assert_eq!(feed(&mut a, &pkts[4]), complete(&c2));
    }

    #[test]
    fn a_lost_last_packet_is_reported_when_the_next_chain_starts() {
        let (c1, c2) = (chain_bytes(200, 8), chain_bytes(10, 9));
        let pkts = build(&[&c1, &c2]);
        let mut a = ChainAssembler::new(1 << 20);
        for p in &pkts[..3] {
            assert_eq!(feed(&mut a, p), Assembled::default());
        }
        let out = feed(&mut a, &pkts[4]);
        assert_eq!(out.dropped, Some(ChainDrop::Broken));
        assert_eq!(out.chain, complete(&c2).chain);
    }

    #[test]
    fn reordered_packets_break_the_chain() {
        let (c1, c2) = (chain_bytes(200, 10), chain_bytes(10, 11));
        let pkts = build(&[&c1, &c2]);
        let mut a = ChainAssembler::new(1 << 20);
        feed(&mut a, &pkts[0]);
        assert_eq!(feed(&mut a, &pkts[2]).dropped, Some(ChainDrop::Broken));
        assert_eq!(feed(&mut a, &pkts[1]).dropped, Some(ChainDrop::Orphan));
        assert_eq!(feed(&mut a, &pkts[4]), complete(&c2));
    }

    #[test]
    fn an_announced_length_above_the_maximum_is_refused() {
        let c = chain_bytes(500, 12);
        let pkts = build(&[&c]);
        let mut a = ChainAssembler::new(499);
        assert_eq!(
            feed(&mut a, &pkts[0]),
            Assembled::dropped(ChainDrop::BadLength)
        );
        // Nothing was started, so the rest are orphans.
        assert_eq!(feed(&mut a, &pkts[1]).dropped, Some(ChainDrop::Orphan));
    }

    fn packet(seq: u64, flags: u8, payload: Vec<u8>) -> PlainPacket {
        PlainPacket {
            header: PacketHeader {
                kind: PacketKind::Data,
                flags,
                compression: Compression::None,
                length: 0,
                stream_id: 1,
                key_epoch: 1,
                seq,
            },
            payload,
        }
    }

    fn first(seq: u64, flags: u8, total: u32, piece: &[u8]) -> PlainPacket {
        let mut p = total.to_be_bytes().to_vec();
        p.extend_from_slice(piece);
        packet(seq, flags, p)
    }

    #[test]
    fn pieces_that_disagree_with_the_announced_length_are_dropped() {
        let mut a = ChainAssembler::new(1 << 20);
        // More bytes than announced, in the first packet.
        assert_eq!(
            feed(&mut a, &first(1, FIC, 3, b"abcd")),
            Assembled::dropped(ChainDrop::BadLength)
        );
        // More bytes than announced, in a later packet.
        assert_eq!(
            feed(&mut a, &first(2, FIC, 6, b"abc")),
            Assembled::default()
        );
        assert_eq!(
            feed(&mut a, &packet(3, LIC, b"defg".to_vec())),
            Assembled::dropped(ChainDrop::BadLength)
        );
        // Fewer bytes than announced when the last packet arrives.
        assert_eq!(
            feed(&mut a, &first(4, FIC, 8, b"abc")),
            Assembled::default()
        );
        assert_eq!(
            feed(&mut a, &packet(5, LIC, b"de".to_vec())),
            Assembled::dropped(ChainDrop::BadLength)
        );
        // A first packet too short to hold the length prefix.
        assert_eq!(
            feed(&mut a, &packet(6, OIC, vec![0, 0])),
            Assembled::dropped(ChainDrop::BadLength)
        );
        // The stream still works afterwards.
        assert_eq!(feed(&mut a, &first(7, FIC, 5, b"ab")), Assembled::default());
        assert_eq!(
            feed(&mut a, &packet(8, MIC, b"c".to_vec())),
            Assembled::default()
        );
        assert_eq!(
            feed(&mut a, &packet(9, LIC, b"de".to_vec())),
            complete(b"abcde")
        );
    }

    #[test]
    fn a_compression_change_mid_chain_breaks_it() {
        let mut a = ChainAssembler::new(1 << 20);
        feed(&mut a, &first(1, FIC, 4, b"ab"));
        let mut p = packet(2, LIC, b"cd".to_vec());
        p.header.compression = Compression::Lz4;
        assert_eq!(feed(&mut a, &p), Assembled::dropped(ChainDrop::Broken));
    }

    #[test]
    fn reset_forgets_the_chain_in_progress() {
        let mut a = ChainAssembler::new(1 << 20);
        feed(&mut a, &first(1, FIC, 4, b"ab"));
        a.reset();
        assert_eq!(
            feed(&mut a, &packet(2, LIC, b"cd".to_vec())),
            Assembled::dropped(ChainDrop::Orphan)
        );
    }
}
