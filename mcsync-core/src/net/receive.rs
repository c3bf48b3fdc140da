//! A subscription's receive thread: socket → source check → (injected loss) → header
//! parse → decrypt → replay check → bounded channel to the process thread. It never does
//! more than that, so nothing slows it except the channel being full (which is counted).

use super::batch::BatchReceiver;
use super::StopFlag;
use crate::crypto::{Keyring, OpenError};
use crate::proto::replay::Verdict;
use crate::proto::{LossGenerator, OpenPacket, ReplayWindow};
use crate::stats::{add, inc, SubscriptionCounters};
use crate::sync::{Locked, RwLocked};
use crate::wire::packet::PacketHeader;
use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// An authenticated packet for the process thread.
pub type Inbound = OpenPacket;

/// What the receive thread needs.
pub struct ReceiveParts {
    /// Database name (thread name).
    pub database: String,
    /// Joined group socket (with a read timeout).
    pub socket: UdpSocket,
    /// The only source accepted (`None`: any source; tests only). The process thread
    /// updates it when the publisher restarts on another port.
    pub source: Arc<Mutex<Option<SocketAddr>>>,
    /// Keys by epoch (the process thread adds new epochs after re-registering).
    pub keyring: Arc<RwLock<Keyring>>,
    /// Set when a packet shows a newer key epoch than any held: the process thread then
    /// re-registers to fetch the new key.
    pub rekey: Arc<AtomicBool>,
    /// Set by the process thread to leave the group for a while (error policy).
    pub leave: Arc<AtomicBool>,
    /// The group joined.
    pub group: SocketAddr,
    /// The interface it was joined on.
    pub interface: std::net::Ipv4Addr,
    /// The socket is a unicast-only subscription's push socket, not a group socket: there
    /// is no group to join or leave, and what arrives is counted as `unicast_datagrams`.
    pub unicast: bool,
    /// Injected loss, if configured.
    pub loss: Option<LossGenerator>,
    /// Counters.
    pub counters: Arc<SubscriptionCounters>,
    /// Stop flag.
    pub stop: StopFlag,
}

/// Streams remembered for replay checks (a publisher restart starts a new one).
const MAX_STREAMS: usize = 8;

/// Starts the thread.
pub fn spawn(parts: ReceiveParts, tx: Sender<Inbound>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("mcsync-recv-{}", parts.database))
        .spawn(move || run(parts, tx))
}

fn run(mut p: ReceiveParts, tx: Sender<Inbound>) {
    let mut receiver = BatchReceiver::new(&p.socket);
    let mut windows: HashMap<u32, ReplayWindow> = HashMap::new();
    let mut joined = true;
    while !p.stop.is_stopped() {
        follow_membership(&p, &mut joined);
        let received = match receiver.recv(&p.socket) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                log::warn!("{}: receive failed: {e}", p.database);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        inc(&p.counters.receive_calls);
        if !joined {
            // Left the group: whatever still arrives is not ours to take.
            continue;
        }
        for datagram in received.datagrams() {
            let Some(packet) = accept(&mut p, &mut windows, datagram, received.from) else {
                continue;
            };
            if !forward(&p, &tx, packet) {
                return;
            }
        }
    }
}

/// Leaves or rejoins the group when the process thread asks (its error policy).
fn follow_membership(p: &ReceiveParts, joined: &mut bool) {
    let leave = p.leave.load(Ordering::SeqCst);
    if leave != *joined {
        return;
    }
    if p.unicast {
        // Nothing to leave: what is pushed while "left" is dropped as for a group.
        *joined = !leave;
        return;
    }
    if let SocketAddr::V4(g) = p.group {
        let r = if leave {
            p.socket.leave_multicast_v4(g.ip(), &p.interface)
        } else {
            p.socket.join_multicast_v4(g.ip(), &p.interface)
        };
        match r {
            Ok(()) => *joined = !leave,
            Err(e) => log::warn!("{}: changing membership of {g}: {e}", p.database),
        }
    }
}

/// Checks one datagram: its source, the loss generator, its header, its seal and its
/// replay window. Returns the opened packet, or `None` (counted) if it is dropped.
fn accept(
    p: &mut ReceiveParts,
    windows: &mut HashMap<u32, ReplayWindow>,
    datagram: &[u8],
    from: SocketAddr,
) -> Option<Inbound> {
    let c = &p.counters;
    inc(&c.packets_received);
    if p.unicast {
        inc(&c.unicast_datagrams);
    }
    add(&c.bytes_received, datagram.len() as u64);
    if p.source.locked().is_some_and(|s| s != from) {
        inc(&c.dropped_source);
        return None;
    }
    if p.loss.as_mut().is_some_and(|l| l.drop_next()) {
        inc(&c.dropped_injected);
        return None;
    }
    let Ok((header, sealed)) = PacketHeader::parse(datagram) else {
        inc(&c.dropped_malformed);
        return None;
    };
    let keyring = p.keyring.read_locked();
    let payload = match keyring.open(&header, sealed) {
        Ok(pl) => pl,
        Err(OpenError::UnknownEpoch(epoch)) => {
            inc(&c.dropped_epoch);
            if keyring.newest_epoch().is_none_or(|n| epoch > n) {
                p.rekey.store(true, Ordering::Relaxed);
            }
            return None;
        }
        Err(OpenError::BadTag) => {
            inc(&c.dropped_auth);
            return None;
        }
        Err(OpenError::Retired(_)) => {
            inc(&c.dropped_retired_key);
            return None;
        }
    };
    drop(keyring);
    if windows.len() >= MAX_STREAMS && !windows.contains_key(&header.stream_id) {
        windows.clear();
    }
    match windows
        .entry(header.stream_id)
        .or_default()
        .check(header.seq)
    {
        Verdict::Fresh => Some(Inbound { header, payload }),
        Verdict::Seen => {
            inc(&c.dropped_replay);
            None
        }
        Verdict::Far => {
            inc(&c.dropped_far);
            None
        }
    }
}

/// Hands a packet to the process thread, waiting (and counting) when the channel is full.
/// Returns false when the process thread is gone or a stop was asked.
fn forward(p: &ReceiveParts, tx: &Sender<Inbound>, mut item: Inbound) -> bool {
    match tx.try_send(item) {
        Ok(()) => return true,
        Err(TrySendError::Disconnected(_)) => return false,
        Err(TrySendError::Full(back)) => {
            inc(&p.counters.channel_full);
            item = back;
        }
    }
    loop {
        match tx.send_timeout(item, Duration::from_millis(50)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Disconnected(_)) => return false,
            Err(SendTimeoutError::Timeout(back)) => {
                if p.stop.is_stopped() {
                    return false;
                }
                item = back;
            }
        }
    }
}
