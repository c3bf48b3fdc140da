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
