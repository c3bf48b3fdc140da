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
