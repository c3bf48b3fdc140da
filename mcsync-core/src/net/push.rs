//! Unicast push: the same sealed datagrams the multicaster sends to a database's group,
//! sent also to each unicast-only subscriber of the database by unicast UDP.
//!
//! The subscriber binds a socket on the local address of its control connection and
//! names the port in HELLO ([`PushSocket`]); the publisher records the target as the
//! address the control connection came from plus that port — never an address the
//! client names, so a HELLO cannot point the stream at a third party — and the
//! multicaster sends every datagram to each target of its database ([`PushTargets`]).

use super::socket;
use crate::Result;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// A subscriber's push socket: bound, on first use, to the local address of the control
/// connection (port 0), and named by port in every HELLO after that.
#[derive(Debug)]
pub struct PushSocket {
    recv_buffer: usize,
    bound: Option<SocketAddr>,
    /// The socket and the receive buffer granted, until the receive thread takes it.
    socket: Option<(UdpSocket, usize)>,
}

impl PushSocket {
    /// Not bound yet; the receive buffer asked for will be `recv_buffer` bytes.
    pub fn new(recv_buffer: usize) -> PushSocket {
        PushSocket {
            recv_buffer,
            bound: None,
            socket: None,
        }
    }

    /// The port to announce for a control connection from `local`, binding the socket
    /// on that address the first time. Later connections announce the same port (the
    /// receive thread holds the socket); one from another local address is logged,
    /// since pushes then go to an address the socket is not bound on.
    pub fn port_for(&mut self, local: IpAddr) -> Result<u16> {
        match self.bound {
            Some(b) => {
                if b.ip() != local {
                    log::warn!(
                        "control connection now leaves from {local}, but the push socket is \
                         bound on {}; pushes may not arrive (the subscription repairs by \
                         polling when silent)",
                        b.ip()
                    );
                }
                Ok(b.port())
            }
            None => {
                let (s, granted) = socket::unicast_socket(local, self.recv_buffer)?;
                let addr = s
                    .local_addr()
                    .map_err(|e| crate::Error::io("push socket address", e))?;
                self.bound = Some(addr);
                self.socket = Some((s, granted));
                Ok(addr.port())
            }
        }
    }

    /// Where it is bound, once it is.
    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound
    }

    /// The bound socket and the receive buffer granted (once; for the receive thread).
    pub fn take_socket(&mut self) -> Option<(UdpSocket, usize)> {
        self.socket.take()
    }
}

/// The unicast targets of one database, shared by the control server (which adds and
/// removes them as registrations come and go) and the multicaster (which sends to them).
#[derive(Debug)]
pub struct PushTargets {
    limit: usize,
    map: Mutex<Targets>,
}

/// Registration id → address, and the snapshot the multicaster takes per send slice.
#[derive(Debug, Default)]
struct Targets {
    by_id: BTreeMap<u64, SocketAddr>,
    snapshot: Arc<Vec<SocketAddr>>,
}

impl Targets {
    fn rebuild(&mut self) {
        self.snapshot = Arc::new(self.by_id.values().copied().collect());
    }
}

/// Why a target was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushFull {
    /// The limit reached.
    pub limit: usize,
}

impl PushTargets {
    /// No targets; at most `limit`.
    pub fn new(limit: usize) -> PushTargets {
        PushTargets {
            limit,
            map: Mutex::new(Targets::default()),
        }
    }

    /// Sends to `addr` for registration `id` from now on (replacing its earlier target).
    /// Fails when the database has `limit` targets of other registrations.
    pub fn insert(&self, id: u64, addr: SocketAddr) -> std::result::Result<(), PushFull> {
        let mut m = lock(&self.map);
        if !m.by_id.contains_key(&id) && m.by_id.len() >= self.limit {
            return Err(PushFull { limit: self.limit });
        }
        m.by_id.insert(id, addr);
        m.rebuild();
        Ok(())
    }

    /// Stops sending to registration `id`; returns whether it was a target.
    pub fn remove(&self, id: u64) -> bool {
        let mut m = lock(&self.map);
        let was = m.by_id.remove(&id).is_some();
        if was {
            m.rebuild();
        }
        was
    }

    /// Keeps only the targets whose registration `keep` says to keep; returns how many
    /// were removed.
    pub fn retain(&self, mut keep: impl FnMut(u64) -> bool) -> usize {
        let mut m = lock(&self.map);
        let before = m.by_id.len();
        m.by_id.retain(|id, _| keep(*id));
        let removed = before - m.by_id.len();
        if removed > 0 {
            m.rebuild();
        }
        removed
    }

    /// The current targets (a snapshot: cheap to take, not updated).
    pub fn snapshot(&self) -> Arc<Vec<SocketAddr>> {
        lock(&self.map).snapshot.clone()
    }

    /// How many targets there are.
    pub fn len(&self) -> usize {
        lock(&self.map).by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most it takes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The lock, even if a thread panicked holding it (the map stays consistent: every
/// change is one insert or remove followed by the snapshot).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn targets_past_the_limit_are_refused_but_a_known_one_moves() {
        let t = PushTargets::new(2);
        assert_eq!(t.insert(1, addr(1000)), Ok(()));
        assert_eq!(t.insert(2, addr(1001)), Ok(()));
        assert_eq!(t.insert(3, addr(1002)), Err(PushFull { limit: 2 }));
        // Re-registering (a new port) is not a new target.
        assert_eq!(t.insert(1, addr(1003)), Ok(()));
        assert_eq!(*t.snapshot(), vec![addr(1003), addr(1001)]);
        assert!(t.remove(1));
        assert!(!t.remove(1));
        assert_eq!(t.insert(3, addr(1002)), Ok(()));
        assert_eq!(t.retain(|id| id != 2), 1);
        assert_eq!(*t.snapshot(), vec![addr(1002)]);
    }

    #[test]
    fn a_push_socket_binds_once_on_the_control_connections_address() {
        let mut p = PushSocket::new(1 << 20);
        let local = IpAddr::from([127, 0, 0, 1]);
        let port = p.port_for(local).unwrap();
        assert_ne!(port, 0);
        assert_eq!(p.port_for(local).unwrap(), port);
        let (s, granted) = p.take_socket().unwrap();
        assert!(granted > 0);
        assert_eq!(s.local_addr().unwrap(), SocketAddr::new(local, port));
        assert!(p.take_socket().is_none());
    }
}
