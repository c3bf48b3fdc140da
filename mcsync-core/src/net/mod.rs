//! I/O: sockets (socket2), threads and channels (crossbeam-channel), and the unicast repair
//! channel. The protocol logic lives in `proto`; this module drives it.

pub mod batch;
pub mod frame;
pub mod multicaster;
pub mod push;
pub mod receive;
pub mod repair_client;
pub mod repair_server;
pub mod socket;
pub mod tls;
pub mod two_phase;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag threads poll to learn they should stop.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Asks the threads to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
