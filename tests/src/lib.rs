//! Shared helpers for the integration tests: every test gets its own multicast group and
//! port, its own temporary data directories, and real sockets and LMDB files.

use mcsync::{Key, LossConfig, Publisher, PublisherConfig, Subscriber, SubscriberConfig};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// A random administratively scoped group and a random high port, so tests running in
/// parallel never hear each other.
pub fn unique_group() -> (Ipv4Addr, u16) {
    let r: u32 = rand::random();
    let group = Ipv4Addr::new(
        239,
        1 + (r % 250) as u8,
        (r >> 8) as u8,
        1 + ((r >> 16) % 200) as u8,
    );
    let port = 20_000 + (rand::random::<u16>() % 40_000);
    (group, port)
}

/// A publisher config on loopback with a unique group.
pub fn publisher_config(dir: &Path, key: &Key) -> PublisherConfig {
    let mut c = PublisherConfig::new(dir, key.clone());
    let (g, p) = unique_group();
    c.multicast.group = g;
    c.multicast.port = p;
    c
}

/// A subscriber config for `publisher`, with optional injected loss.
pub fn subscriber_config(
    dir: &Path,
    publisher: &Publisher,
    key: &Key,
    loss: Option<(f64, u64)>,
) -> SubscriberConfig {
    let mut c = SubscriberConfig::new(dir, publisher.control_addr(), key.clone());
    c.loss = loss.map(|(p, seed)| LossConfig {
        probability: p,
        burst_len: 1,
        seed,
    });
    c
}

/// Opens a subscriber.
pub fn open_subscriber(
    dir: &Path,
    publisher: &Publisher,
    key: &Key,
    loss: Option<(f64, u64)>,
) -> Subscriber {
    Subscriber::open(subscriber_config(dir, publisher, key, loss)).expect("open subscriber")
}

/// Generous timeout for convergence on a loaded 2-core machine.
pub const CONVERGE: Duration = Duration::from_secs(120);
