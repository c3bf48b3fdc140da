//! The publisher's retransmit buffer: the most recent sealed datagrams of a stream, so a
//! subscriber that lost a few packets of a large chain fetches just those packets.

use std::collections::VecDeque;
use std::sync::Arc;

/// Recent datagrams of one stream, bounded by bytes.
#[derive(Debug)]
pub struct RetransmitBuffer {
    stream_id: u32,
    packets: VecDeque<(u64, Arc<Vec<u8>>)>,
    bytes: usize,
    max_bytes: usize,
}

impl RetransmitBuffer {
    /// An empty buffer for `stream_id` holding at most `max_bytes` of datagrams.
    pub fn new(stream_id: u32, max_bytes: usize) -> RetransmitBuffer {
        RetransmitBuffer {
            stream_id,
            packets: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// The stream it buffers.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// Remembers a sent datagram (sequence numbers increase), evicting the oldest.
    pub fn push(&mut self, seq: u64, datagram: Arc<Vec<u8>>) {
        debug_assert!(self.packets.back().is_none_or(|&(s, _)| s < seq));
        self.bytes += datagram.len();
        self.packets.push_back((seq, datagram));
        while self.bytes > self.max_bytes {
            match self.packets.pop_front() {
                Some((_, d)) => self.bytes -= d.len(),
                None => break,
            }
        }
    }

    /// The datagram with sequence number `seq`, if still held.
    pub fn get(&self, seq: u64) -> Option<Arc<Vec<u8>>> {
        let i = self.packets.partition_point(|&(s, _)| s < seq);
        match self.packets.get(i) {
            Some((s, d)) if *s == seq => Some(d.clone()),
            _ => None,
        }
    }

    /// Oldest sequence number held.
    pub fn oldest(&self) -> Option<u64> {
        self.packets.front().map(|&(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(n: usize, b: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![b; n])
    }

    #[test]
    fn returns_what_it_holds_by_sequence() {
        let mut b = RetransmitBuffer::new(9, 1_000);
        assert_eq!(b.stream_id(), 9);
        assert_eq!(b.oldest(), None);
        for s in [3, 4, 7] {
            b.push(s, dg(100, s as u8));
        }
        assert_eq!(b.get(4).as_deref(), Some(&vec![4; 100]));
        assert_eq!(b.get(7).as_deref(), Some(&vec![7; 100]));
        assert_eq!(b.get(5), None);
        assert_eq!(b.get(8), None);
        assert_eq!(b.get(0), None);
        assert_eq!(b.oldest(), Some(3));
    }

    #[test]
    fn evicts_the_oldest_beyond_its_byte_limit() {
        let mut b = RetransmitBuffer::new(1, 1_000);
        for s in 1..=25 {
            b.push(s, dg(100, 0));
        }
        assert_eq!(b.oldest(), Some(16));
        assert_eq!(b.get(15), None);
        assert!(b.get(16).is_some() && b.get(25).is_some());
        // A datagram larger than the whole buffer is not kept.
        b.push(26, dg(1_001, 0));
        assert_eq!(b.get(26), None);
        assert_eq!(b.oldest(), None);
    }
}
