//! Every socket the edge listens on is made here: TCP listeners and UDP
//! sockets on VIPs (which may not be on any interface yet), the conversions
//! of descriptors handed over by a previous process back into sockets, and
//! the reading of peer addresses they report.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// The backlog of every listening socket.
pub const BACKLOG: i32 = 4096;

/// Opens a listening TCP socket on `addr` even when `addr` is not (yet) on
/// any interface, so a listener can exist before its VIP is added, and
/// survives the VIP moving away and back.
///
/// Sets SO_REUSEADDR (restarts do not wait for TIME_WAIT), IP_FREEBIND or,
/// for IPv6, IPV6_FREEBIND and IPV6_V6ONLY (so `[::]` never also claims the
/// IPv4 port), and nonblocking mode.
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Binds a UDP socket to a VIP that may not be on any interface yet
/// (`IP_FREEBIND`), nonblocking.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Turns a received descriptor into a std listener, after checking it really
/// is a listening TCP socket (a descriptor from another process could be
/// anything), and makes it nonblocking.
pub fn into_std_listener(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    let sock = Socket::from(fd);
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {what}"),
        )
    };
    if sock.r#type()? != Type::STREAM {
        return Err(invalid("is not a stream socket"));
    }
    let domain = sock.domain()?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(invalid("is not an IPv4 or IPv6 socket"));
    }
    if sock.protocol()?.is_some_and(|p| p != Protocol::TCP) {
        return Err(invalid("is not a TCP socket"));
    }
    if !sock.is_listener()? {
        return Err(invalid("is not listening"));
    }
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Turns a handed-over descriptor back into a UDP socket, checking it is
/// one, and makes it nonblocking.
pub fn into_std_udp(fd: OwnedFd) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::from(fd);
    if socket.r#type()? != Type::DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a datagram socket",
        ));
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A peer address as the data path uses it: IPv4-mapped IPv6 peers (from
/// dual-stack sockets) are IPv4.
pub fn normalize_peer(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn loud_skip(what: &str) {
        eprintln!("SKIPPED: {what}");
    }

    fn listen_local() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
    }

    #[test]
    fn listeners_bind_to_addresses_that_exist_nowhere() {
        // 198.18.0.0/15 is for benchmarking; nothing here has it.
        let addr: SocketAddr = "198.18.0.1:0".parse().unwrap();
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
            .is_ok_and(|v| v.trim() == "0")
        {
            let err = std::net::TcpListener::bind(addr).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::AddrNotAvailable,
                "without freebind it fails"
            );
        }
        let first = bind_listener(addr, 16).expect("freebind");
        let taken = first.local_addr().unwrap();
        assert_eq!(taken.ip(), addr.ip());
        let err = bind_listener(taken, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

        match bind_listener("[2001:db8::123]:0".parse().unwrap(), 16) {
            Ok(v6) => {
                let taken = v6.local_addr().unwrap();
                assert_eq!(
                    bind_listener(taken, 16).unwrap_err().kind(),
                    io::ErrorKind::AddrInUse
                );
            }
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                loud_skip(
                    "IPv6 part of listeners_bind_to_addresses_that_exist_nowhere: no IPv6 here",
                );
            }
            Err(e) => panic!("IPv6 freebind: {e}"),
        }
    }

    #[test]
    fn udp_sockets_bind_to_addresses_that_exist_nowhere_and_come_back() {
        let udp = bind_udp("198.18.0.2:0".parse().unwrap()).expect("freebind");
        let addr = udp.local_addr().unwrap();
        let back = into_std_udp(OwnedFd::from(udp)).expect("a UDP socket");
        assert_eq!(back.local_addr().unwrap(), addr);
        assert!(into_std_udp(OwnedFd::from(listen_local())).is_err());
    }

    #[test]
    fn into_std_listener_accepts_only_listening_tcp_sockets() {
        let tcp = listen_local();
        let l = into_std_listener(OwnedFd::from(tcp)).expect("a TCP listener");
        assert!(l.local_addr().is_ok());

        let dir = tempfile::tempdir().unwrap();
        let unbound = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let unix = std::os::unix::net::UnixListener::bind(PathBuf::from(dir.path()).join("u.sock"));
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        let mut bad: Vec<(&str, OwnedFd)> = vec![
            ("unbound TCP", unbound.into()),
            ("UDP", udp.into()),
            ("pipe", pipe_r),
        ];
        if let Ok(unix) = unix {
            bad.push(("unix listener", unix.into()));
        }
        for (what, fd) in bad {
            assert!(into_std_listener(fd).is_err(), "{what} must be rejected");
        }
    }

    #[test]
    fn mapped_peers_are_ipv4() {
        assert_eq!(
            normalize_peer("[::ffff:192.0.2.1]:5000".parse().unwrap()),
            "192.0.2.1:5000".parse().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(normalize_peer(v6), v6);
    }
}
