//! Multicast sockets with the options DESIGN section 6 needs on loopback.

use crate::{Error, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// A socket for sending to multicast groups from `interface`, bound to an ephemeral port
/// on that interface so subscribers can check the source address and port.
pub fn sender_socket(interface: Ipv4Addr, ttl: u32, loopback: bool) -> Result<UdpSocket> {
    let ctx = |what: &str| format!("multicast send socket on {interface}: {what}");
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| Error::io(ctx("socket"), e))?;
    s.set_multicast_if_v4(&interface)
        .map_err(|e| Error::io(ctx("IP_MULTICAST_IF"), e))?;
    s.set_multicast_loop_v4(loopback)
        .map_err(|e| Error::io(ctx("IP_MULTICAST_LOOP"), e))?;
    s.set_multicast_ttl_v4(ttl)
        .map_err(|e| Error::io(ctx("IP_MULTICAST_TTL"), e))?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SockAddr::from(SocketAddrV4::new(interface, 0)))
        .map_err(|e| Error::io(ctx("bind"), e))?;
    Ok(s.into())
}

/// A socket receiving `group:port` joined on `interface`, with a large receive buffer
/// and a read timeout so the receive thread notices a stop. Returns the socket and the
/// receive buffer size the kernel granted.
pub fn receiver_socket(
    group: SocketAddr,
    interface: Ipv4Addr,
    recv_buffer: usize,
) -> Result<(UdpSocket, usize)> {
    let SocketAddr::V4(group) = group else {
        return Err(Error::Config(format!(
            "group {group} is IPv6; only IPv4 groups are supported so far"
        )));
    };
    let ctx = |what: &str| format!("multicast receive socket for {group} on {interface}: {what}");
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| Error::io(ctx("socket"), e))?;
    s.set_reuse_address(true)
        .map_err(|e| Error::io(ctx("SO_REUSEADDR"), e))?;
    // SO_RCVBUFFORCE passes the rmem_max cap when privileged; fall back to SO_RCVBUF.
    if force_recv_buffer(&s, recv_buffer).is_err() {
        let _ = s.set_recv_buffer_size(recv_buffer);
    }
    let granted = s.recv_buffer_size().unwrap_or(0);
    s.bind(&SockAddr::from(SocketAddrV4::new(
        *group.ip(),
        group.port(),
    )))
    .map_err(|e| Error::io(ctx("bind"), e))?;
    s.join_multicast_v4(group.ip(), &interface)
        .map_err(|e| Error::io(ctx("IP_ADD_MEMBERSHIP"), e))?;
    // Linux delivers a group's packets to every socket bound to its address and port once
    // any socket of the host joined it; receive only what this socket itself joined, so
    // that leaving the group (the error policy) really stops reception.
    #[cfg(target_os = "linux")]
    set_int_option(&s, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, 0)
        .map_err(|e| Error::io(ctx("IP_MULTICAST_ALL"), e))?;
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| Error::io(ctx("SO_RCVTIMEO"), e))?;
    Ok((s.into(), granted))
}

/// `setsockopt` with an int value.
fn set_int_option(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fd is a valid socket owned by `s`; the option value is a c_int that outlives
    // the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn force_recv_buffer(s: &Socket, size: usize) -> std::io::Result<()> {
    let v = size.min(i32::MAX as usize) as libc::c_int;
    set_int_option(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
}

/// A socket receiving unicast datagrams on `local` (an ephemeral port), with the same
/// receive buffer sizing and read timeout as a group socket: a unicast-only
/// subscription's push socket. Returns the socket and the receive buffer granted.
pub fn unicast_socket(local: std::net::IpAddr, recv_buffer: usize) -> Result<(UdpSocket, usize)> {
    let ctx = |what: &str| format!("unicast push socket on {local}: {what}");
    let domain = if local.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| Error::io(ctx("socket"), e))?;
    if force_recv_buffer(&s, recv_buffer).is_err() {
        let _ = s.set_recv_buffer_size(recv_buffer);
    }
    let granted = s.recv_buffer_size().unwrap_or(0);
    s.bind(&SockAddr::from(SocketAddr::new(local, 0)))
        .map_err(|e| Error::io(ctx("bind"), e))?;
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| Error::io(ctx("SO_RCVTIMEO"), e))?;
    Ok((s.into(), granted))
}
