//! Many datagrams per system call. On Linux a run of equal-sized datagrams to one
//! destination goes out as one `sendmsg` with `UDP_SEGMENT` (GSO: the kernel cuts it into
//! datagrams, and on loopback each receiver gets it as one buffer), and a receiver with
//! `UDP_GRO` takes such a run back in one `recvmsg`. Both fall back to one datagram per
//! call where the kernel refuses; the datagrams on the wire are the same either way.
//!
//! `MCSYNC_NO_GSO=1` in the environment turns both off (for side-by-side measurement).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;

/// Most bytes in one GSO send: a UDP payload must fit a 16-bit length with its headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Whether batching is allowed by the environment (`MCSYNC_NO_GSO` unset or `0`).
pub fn gso_allowed() -> bool {
    std::env::var("MCSYNC_NO_GSO").map_or(true, |v| v.is_empty() || v == "0")
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Datagrams that could not be sent (logged).
    pub errors: u64,
    /// System calls made.
    pub calls: u64,
}

/// Queues datagrams for one destination and sends them in as few calls as it can.
pub struct BatchSender {
    dest: SocketAddr,
    gso: bool,
    queue: Vec<Arc<Vec<u8>>>,
    queued_bytes: usize,
}

impl BatchSender {
    /// A sender to `dest` (GSO on where the platform has it and the environment allows).
    pub fn new(dest: SocketAddr) -> BatchSender {
        BatchSender {
            dest,
            gso: cfg!(target_os = "linux") && gso_allowed(),
            queue: Vec::with_capacity(MAX_SEGMENTS),
            queued_bytes: 0,
        }
    }

    /// Whether sends are still batched (false once the kernel refused GSO).
    pub fn batching(&self) -> bool {
        self.gso
    }

    /// Queues one datagram; returns true when the queue is full and should be flushed.
    pub fn push(&mut self, datagram: Arc<Vec<u8>>) -> bool {
        self.queued_bytes += datagram.len();
        self.queue.push(datagram);
        self.queue.len() >= MAX_SEGMENTS || self.queued_bytes >= MAX_GSO_BYTES
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued, in order: each run of equal-sized datagrams (the last of
    /// a run may be shorter) in one call when batching, else one call per datagram.
    pub fn flush(&mut self, socket: &UdpSocket, log_name: &str) -> Flushed {
        let out = self.send_to(socket, self.dest, log_name);
        self.clear();
        out
    }

    /// Sends everything queued to `dest` as [`flush`](Self::flush) does, and keeps it
    /// queued (the same datagrams go to several destinations: the group and each unicast
    /// push target).
    pub fn send_to(&mut self, socket: &UdpSocket, dest: SocketAddr, log_name: &str) -> Flushed {
        let mut out = Flushed::default();
        let queue = std::mem::take(&mut self.queue);
        let mut i = 0;
        while i < queue.len() {
            let run = if self.gso { run_len(&queue[i..]) } else { 1 };
            let segments = &queue[i..i + run];
            let r = if run > 1 {
                send_segments(socket, dest, segments)
            } else {
                send_one(socket, dest, &segments[0])
            };
            out.calls += 1;
            match r {
                Ok(()) => {
                    out.packets += run as u64;
                    out.bytes += segments.iter().map(|d| d.len() as u64).sum::<u64>();
                    i += run;
                }
                Err(e) if run > 1 && gso_refused(&e) => {
                    log::info!(
                        "{log_name}: the kernel refused UDP GSO to {dest} ({e}); sending one \
                         datagram per call"
                    );
                    self.gso = false;
                }
                Err(e) => {
                    log::warn!("{log_name}: send to {dest} failed: {e}");
                    out.errors += run as u64;
                    i += run;
                }
            }
        }
        self.queue = queue;
        out
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }
}

/// Length of the run at the start of `queue` that one GSO send can carry: datagrams of the
/// first one's size, then at most one shorter one, within the segment and byte limits.
fn run_len(queue: &[Arc<Vec<u8>>]) -> usize {
    let size = queue[0].len();
    let mut bytes = 0;
    let mut n = 0;
    for d in queue.iter().take(MAX_SEGMENTS) {
        if d.len() > size || bytes + d.len() > MAX_GSO_BYTES {
            break;
        }
        bytes += d.len();
        n += 1;
        if d.len() < size {
            break;
        }
    }
    n.max(1)
}

/// Errors that mean "this kernel or device does not do UDP GSO here".
fn gso_refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

/// Retries a send while the socket buffer is full (`ENOBUFS` / `EAGAIN`), briefly.
fn retry_full(mut send: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
    for _ in 0..99 {
        match send() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN)) => {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            r => return r,
        }
    }
    send()
}

fn send_one(socket: &UdpSocket, dest: SocketAddr, datagram: &[u8]) -> std::io::Result<()> {
    retry_full(|| socket.send_to(datagram, dest).map(|_| ()))
}

#[cfg(target_os = "linux")]
fn send_segments(
    socket: &UdpSocket,
    dest: SocketAddr,
    segments: &[Arc<Vec<u8>>],
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let addr = socket2::SockAddr::from(dest);
    let mut iov: Vec<libc::iovec> = segments
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let segment = segments[0].len() as u16;
    // Room for one cmsg carrying a u16, aligned as the kernel expects.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call
    // (addr, iov and control are locals, the segments are borrowed), and the lengths given
    // are those of the buffers pointed to.
    retry_full(|| unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        if libc::sendmsg(socket.as_raw_fd(), &msg, 0) < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn send_segments(
    socket: &UdpSocket,
    dest: SocketAddr,
    segments: &[Arc<Vec<u8>>],
) -> std::io::Result<()> {
    for d in segments {
        send_one(socket, dest, d)?;
    }
    Ok(())
}

/// Receives datagrams, several per call where the socket has `UDP_GRO` on.
pub struct BatchReceiver {
    buf: Vec<u8>,
    gro: bool,
}

/// One call's worth of datagrams: `len` bytes of the buffer cut into `segment`-byte
/// datagrams (the last may be shorter), all from `from`.
pub struct Received<'a> {
    data: &'a [u8],
    segment: usize,
    /// Where they came from.
    pub from: SocketAddr,
}

impl<'a> Received<'a> {
    /// The datagrams, in order.
    pub fn datagrams(&self) -> impl Iterator<Item = &'a [u8]> {
        self.data.chunks(self.segment.max(1))
    }
}

impl BatchReceiver {
    /// Turns `UDP_GRO` on for `socket` where possible (and allowed by the environment).
    pub fn new(socket: &UdpSocket) -> BatchReceiver {
        BatchReceiver {
            buf: vec![0u8; 65_536],
            gro: gso_allowed() && enable_gro(socket),
        }
    }

    /// Whether the socket takes runs of datagrams in one call.
    pub fn batching(&self) -> bool {
        self.gro
    }

    /// Waits for the next datagram(s) (up to the socket's read timeout).
    pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<Received<'_>> {
        if !self.gro {
            let (n, from) = socket.recv_from(&mut self.buf)?;
            return Ok(Received {
                data: &self.buf[..n],
                segment: n,
                from,
            });
        }
        recv_gro(socket, &mut self.buf)
    }
}

#[cfg(target_os = "linux")]
fn enable_gro(socket: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: fd is a valid socket; the option value is a c_int that outlives the call,
    // and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn enable_gro(_socket: &UdpSocket) -> bool {
    false
}

#[cfg(target_os = "linux")]
fn recv_gro<'a>(socket: &UdpSocket, buf: &'a mut [u8]) -> std::io::Result<Received<'a>> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: try_init hands a zeroed address buffer and its length, which recvmsg fills.
    // msghdr is plain data; the other pointers set refer to locals and `buf`, which outlive
    // the call, with their lengths. The cmsg walk stays within `control` as the kernel
    // filled it (msg_controllen), and reads the int UDP_GRO carries unaligned.
    let ((n, segment), addr) = unsafe {
        socket2::SockAddr::try_init(|name, namelen| {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = name.cast();
            msg.msg_namelen = *namelen;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *namelen = msg.msg_namelen;
            let n = n as usize;
            let mut segment = n;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                    let s = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    if s > 0 {
                        segment = s as usize;
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Ok((n, segment))
        })?
    };
    let from = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::other("datagram from a non-IP address"))?;
    Ok(Received {
        data: &buf[..n],
        segment,
        from,
    })
}

#[cfg(not(target_os = "linux"))]
fn recv_gro<'a>(socket: &UdpSocket, buf: &'a mut [u8]) -> std::io::Result<Received<'a>> {
    let (n, from) = socket.recv_from(buf)?;
    Ok(Received {
        data: &buf[..n],
        segment: n,
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: usize) -> Arc<Vec<u8>> {
        Arc::new(vec![0u8; n])
    }

    #[test]
    fn runs_are_equal_sizes_then_at_most_one_shorter() {
        let q = [d(1400), d(1400), d(900), d(1400)];
        assert_eq!(run_len(&q), 3);
        let q = [d(900), d(1400)];
        assert_eq!(run_len(&q), 1, "a longer datagram starts a new run");
        let q: Vec<_> = (0..100).map(|_| d(1000)).collect();
        assert_eq!(run_len(&q), 64, "at most MAX_SEGMENTS");
        let q: Vec<_> = (0..10).map(|_| d(20_000)).collect();
        assert_eq!(run_len(&q), 3, "at most MAX_GSO_BYTES");
        let q = [d(65_000)];
        assert_eq!(run_len(&q), 1);
    }

    /// Real loopback sockets: a batch of mixed sizes arrives as the same datagrams, in
    /// order, whether the receiver takes them batched or not.
    #[test]
    fn a_batch_arrives_as_the_same_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dest = rx.local_addr().expect("addr");
        let sizes = [1400, 1400, 1400, 700, 1400, 50, 50, 3000];
        let sent: Vec<Arc<Vec<u8>>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Arc::new((0..n).map(|j| (i * 31 + j) as u8).collect()))
            .collect();
        // UDP_GRO applies to what arrives after it is set.
        let mut receiver = BatchReceiver::new(&rx);
        let mut sender = BatchSender::new(dest);
        for s in &sent {
            assert!(!sender.push(s.clone()));
        }
        let f = sender.flush(&tx, "test");
        assert_eq!((f.packets, f.errors), (sizes.len() as u64, 0));
        if sender.batching() {
            assert!(f.calls < sizes.len() as u64, "batched: {f:?}");
        }
        assert!(sender.is_empty());
        let mut got = Vec::new();
        let mut calls = 0;
        while got.len() < sent.len() {
            calls += 1;
            let r = receiver.recv(&rx).expect("recv");
            assert_eq!(r.from, tx.local_addr().expect("addr"));
            got.extend(r.datagrams().map(|d| d.to_vec()));
        }
        let sent: Vec<Vec<u8>> = sent.iter().map(|s| s.to_vec()).collect();
        assert_eq!(got, sent);
        eprintln!(
            "{} datagrams: {} send calls (GSO {}), {calls} receive calls (GRO {})",
            sent.len(),
            f.calls,
            sender.batching(),
            receiver.batching()
        );
    }
}
