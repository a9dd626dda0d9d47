//! The few system calls that std, socket2 and nix offer no safe wrapper for.
//!
//! Everything here is a safe function around one tiny `unsafe` block, so the
//! rest of the crate stays free of `unsafe`:
//!
//! - building and reading a `sockaddr_ll` (the AF_PACKET address a raw ARP
//!   frame is sent to, and the one that tells an interface's MAC address);
//! - taking ownership of file descriptors received with SCM_RIGHTS;
//! - attaching a TUN device to a descriptor (`TUNSETIFF`).
//!
//! This module needs the workspace's `unsafe_code` lint to be `deny` (not
//! `forbid`), since only then can the attribute below lift it here.
#![allow(unsafe_code)]

use std::io;
use std::io::IoSliceMut;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, MsgFlags};
use socket2::{SockAddr, SockAddrStorage};

/// The most file descriptors Linux passes in one message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Builds the AF_PACKET address of interface `ifindex` for EtherType
/// `protocol` (host byte order) and link-layer destination `dest`.
pub fn packet_sockaddr(ifindex: u32, protocol: u16, dest: [u8; 6]) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `view_as` requires T to fit in a sockaddr_storage with its
    // alignment, which holds for sockaddr_ll; the storage is zeroed, so every
    // field, padding included, is initialised.
    let sll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    sll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    sll.sll_protocol = protocol.to_be();
    // The kernel reads sll_ifindex as a signed int; real indexes are small.
    sll.sll_ifindex = ifindex as libc::c_int;
    sll.sll_halen = dest.len() as u8;
    sll.sll_addr[..dest.len()].copy_from_slice(&dest);
    // SAFETY: the storage holds an initialised sockaddr_ll and the length is
    // exactly its size, as `SockAddr::new` requires.
    unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as libc::socklen_t) }
}

/// What an AF_PACKET socket address says about the link it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkLayer {
    /// ARP hardware type (`ARPHRD_ETHER` is 1, loopback 772).
    pub hatype: u16,
    /// Hardware address, `halen` bytes long (6 for Ethernet).
    pub addr: Vec<u8>,
}

/// Reads the link type and hardware address out of an AF_PACKET address,
/// such as `getsockname` of a packet socket bound to an interface returns.
/// `None` when `addr` is not an AF_PACKET address.
pub fn link_layer(addr: &SockAddr) -> Option<LinkLayer> {
    // The kernel returns only offsetof(sll_addr) + halen bytes.
    let header = std::mem::offset_of!(libc::sockaddr_ll, sll_addr);
    if addr.family() != libc::AF_PACKET as libc::sa_family_t || (addr.len() as usize) < header {
        return None;
    }
    let mut storage = addr.clone().as_storage();
    // SAFETY: as in `packet_sockaddr`, sockaddr_ll fits the storage, and the
    // storage is fully initialised (socket2 zeroes it before the kernel fills
    // it), so reading any field is defined.
    let sll: &libc::sockaddr_ll = unsafe { storage.view_as() };
    let halen = usize::from(sll.sll_halen)
        .min(sll.sll_addr.len())
        .min(addr.len() as usize - header);
    Some(LinkLayer {
        hatype: sll.sll_hatype,
        addr: sll.sll_addr[..halen].to_vec(),
    })
}

/// One message received by [`recv_with_fds`].
#[derive(Debug)]
pub struct ReceivedMessage {
    /// Bytes written to the data buffer.
    pub len: usize,
    /// Every file descriptor that arrived with it, now owned by us (closed on
    /// drop), whatever else went wrong.
    pub fds: Vec<OwnedFd>,
    /// The data did not fit the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// Some control data, possibly file descriptors, was dropped by the
    /// kernel (`MSG_CTRUNC`: no room, or the descriptor table is full).
    pub control_truncated: bool,
    /// Control messages other than SCM_RIGHTS (nobody should send them).
    pub other_control: usize,
}

/// Receives one message from a unix socket, taking ownership of every file
/// descriptor that came with it (with close-on-exec set atomically).
///
/// Unlike nix's control-message iterator, which refuses to show anything
/// once `MSG_CTRUNC` is set, this walks the control buffer itself so that
/// descriptors installed before the truncation are still found and closed,
/// never leaked into the process.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<ReceivedMessage> {
    // Room for the largest SCM_RIGHTS message the kernel can produce, so
    // MSG_CTRUNC only ever means a full descriptor table. Plain bytes, as
    // nix's own `cmsg_space!` allocates: the allocator aligns them enough.
    let mut control = vec![0u8; cmsg_space(SCM_MAX_FD * size_of::<RawFd>())];
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, msg_flags) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut control), flags)?;
        (msg.bytes, msg.flags)
    };
    let mut received = ReceivedMessage {
        len,
        fds: Vec::new(),
        truncated: msg_flags.contains(MsgFlags::MSG_TRUNC),
        control_truncated: msg_flags.contains(MsgFlags::MSG_CTRUNC),
        other_control: 0,
    };
    for (level, kind, data) in control_messages(&control) {
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for chunk in data.chunks_exact(size_of::<RawFd>()) {
                let raw = RawFd::from_ne_bytes(chunk.try_into().unwrap_or_default());
                // SAFETY: the kernel just installed this descriptor in our
                // table for this message (SCM_RIGHTS); nothing else in the
                // process knows its number, so this is its only owner.
                received.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        } else {
            received.other_control += 1;
        }
    }
    Ok(received)
}

/// The kernel's CMSG_ALIGN: control messages are padded to `long`.
fn cmsg_align(len: usize) -> usize {
    len.next_multiple_of(size_of::<libc::c_long>())
}

fn cmsg_space(data: usize) -> usize {
    cmsg_align(size_of::<libc::cmsghdr>()) + cmsg_align(data)
}

/// Walks the control messages the kernel wrote into a zeroed buffer:
/// `(level, type, data)` for each. Stops at the first zero header, which is
/// where the kernel stopped writing.
fn control_messages(buf: &[u8]) -> Vec<(i32, i32, &[u8])> {
    // Kernel layout (include/linux/socket.h): size_t len; int level; int type.
    let word = size_of::<usize>();
    let header = cmsg_align(size_of::<libc::cmsghdr>());
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + header <= buf.len() {
        let field = |at: usize, n: usize| &buf[offset + at..offset + at + n];
        let len = usize::from_ne_bytes(field(0, word).try_into().unwrap_or_default());
        if len < header || offset + len > buf.len() {
            break;
        }
        let level = i32::from_ne_bytes(field(word, 4).try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(field(word + 4, 4).try_into().unwrap_or_default());
        out.push((level, kind, &buf[offset + header..offset + len]));
        offset += cmsg_align(len);
    }
    out
}

/// Opens `/dev/net/tun` and attaches the TUN device `name` to it (created
/// if there is none): `IFF_TUN | IFF_NO_PI`, not persistent, so the device
/// lives exactly as long as some process holds a copy of the returned
/// descriptor. `EBUSY` when another process holds a device of that name.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (to, from) in ifr_name.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    let mut request = libc::ifreq {
        ifr_name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        },
    };
    // SAFETY: TUNSETIFF reads an `ifreq` (the name, NUL-terminated since it
    // is shorter than IFNAMSIZ, and the flags) and writes the name back into
    // it; `request` is one, alive and exclusively borrowed for the call, and
    // the descriptor is open.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut request as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_sockaddr_round_trips_through_link_layer() {
        let mac = [0x02, 0, 0x5e, 0x10, 0x20, 0x30];
        let addr = packet_sockaddr(7, 0x0806, mac);
        assert_eq!(addr.family(), libc::AF_PACKET as libc::sa_family_t);
        let link = link_layer(&addr).expect("an AF_PACKET address");
        assert_eq!(link.addr, mac);
    }

    #[test]
    fn link_layer_rejects_other_families() {
        let addr = SockAddr::from("127.0.0.1:80".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(link_layer(&addr), None);
    }

    #[test]
    fn control_messages_stops_at_garbage_lengths() {
        // A header claiming more bytes than the buffer holds is not trusted.
        let mut buf = vec![0u8; 64];
        buf[..size_of::<usize>()].copy_from_slice(&1000usize.to_ne_bytes());
        assert!(control_messages(&buf).is_empty());
        assert!(control_messages(&[0u8; 64]).is_empty());
    }
}
