//! Announcing a VIP to the link's neighbours once it is added: a gratuitous
//! ARP for IPv4, an unsolicited neighbour advertisement for IPv6, sent
//! [`ANNOUNCE_COUNT`] times [`ANNOUNCE_INTERVAL`] apart. The first goes out
//! inline; the repeats are scheduled on one background thread, so nothing
//! waits for them. The frames are built here; the packet-socket addresses
//! they need come from [`crate::sys`].

use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{check_ifname, VipError};
use crate::sys;

/// How many announcements are sent for each VIP added. RFC 4861 allows up to
/// three unsolicited advertisements; the repeats cover a frame lost while a
/// switch port or bond is still converging after a failover.
pub const ANNOUNCE_COUNT: u32 = 3;

/// The spacing between announcements: long enough that one burst of loss
/// does not take them all, short enough that every neighbour has converged
/// within a second. Only the first is sent inline; the repeats are sent in
/// the background, so nothing waits for this.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);

pub(super) const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
pub(super) const ARP_REQUEST: u16 = 1;
pub(super) const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet's minimum frame (without FCS); shorter frames are padded.
const MIN_FRAME: usize = 60;
pub(super) const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// The NA "override" flag: replace whatever link address a cache holds.
pub(super) const NA_OVERRIDE: u8 = 0x20;
pub(super) const ND_OPT_TARGET_LINK_ADDR: u8 = 2;
/// Neighbour discovery messages must arrive with hop limit 255 (RFC 4861
/// 7.1.2), proving they were not routed.
const ND_HOP_LIMIT: u32 = 255;

/// Sends each added VIP's announcements: the first at once, the repeats
/// from a background thread started on first use (and ending once the
/// announcer is gone and nothing is left to send).
#[derive(Debug)]
pub(super) struct Announcer {
    count: u32,
    interval: Duration,
    repeater: OnceLock<Option<mpsc::Sender<Repeat>>>,
}

impl Default for Announcer {
    fn default() -> Self {
        Self::new(ANNOUNCE_COUNT, ANNOUNCE_INTERVAL)
    }
}

impl Announcer {
    /// `count` announcements per VIP, `interval` apart; 0 sends none.
    pub(super) fn new(count: u32, interval: Duration) -> Self {
        Announcer {
            count,
            interval,
            repeater: OnceLock::new(),
        }
    }

    /// Tells the link's neighbours that `ip` is now here; returns once the
    /// first announcement went out. Links that are not Ethernet (loopback,
    /// tun, ...) have no neighbours to tell: nothing is sent.
    pub(super) fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
        check_ifname(ifname)?;
        if self.count == 0 {
            return Ok(());
        }
        let Some(announcement) = Announcement::new(ifname, ip)? else {
            return Ok(());
        };
        announcement.send()?;
        if self.count > 1 {
            self.repeat_later(announcement);
        }
        Ok(())
    }

    fn repeat_later(&self, announcement: Announcement) {
        let sender = self.repeater.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            match std::thread::Builder::new()
                .name("vip-announce".to_owned())
                .spawn(move || repeat_announcements(rx))
            {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the announcement thread; VIPs are announced once");
                    None
                }
            }
        });
        if let Some(tx) = sender {
            let repeat = Repeat {
                due: Instant::now() + self.interval,
                left: self.count - 1,
                interval: self.interval,
                announcement,
            };
            if tx.send(repeat).is_err() {
                tracing::warn!("announcement thread is gone; VIP announced once");
            }
        }
    }
}

/// One announcement, ready to be sent again: the socket belongs to the
/// network namespace it was opened in, so repeats go out where the first did
/// whichever thread sends them.
#[derive(Debug)]
struct Announcement {
    socket: Socket,
    message: Vec<u8>,
    dest: SockAddr,
    ifname: String,
    ip: IpAddr,
}

impl Announcement {
    /// `None` when the link is not Ethernet (loopback, tun, ...): it has no
    /// neighbours to tell.
    fn new(ifname: &str, ip: IpAddr) -> Result<Option<Self>, VipError> {
        let Some((index, mac, packet)) = ethernet_link(ifname, ip)? else {
            tracing::debug!(interface = ifname, vip = %ip, "not an Ethernet link; nothing to announce");
            return Ok(None);
        };
        let err = |op: &'static str| {
            move |source| VipError::Announce {
                ifname: ifname.to_owned(),
                ip,
                op,
                source,
            }
        };
        let (socket, message, dest) = match ip {
            IpAddr::V4(v4) => (
                packet,
                gratuitous_arp(mac, v4).to_vec(),
                sys::packet_sockaddr(index, ETH_P_ARP, BROADCAST),
            ),
            IpAddr::V6(v6) => {
                // The kernel fills in the checksum of every raw ICMPv6 socket
                // (RFC 3542 3.1; setting IPV6_CHECKSUM on one is EINVAL).
                let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                    .map_err(err("open raw ICMPv6 socket"))?;
                socket
                    .bind_device(Some(ifname.as_bytes()))
                    .map_err(err("bind to interface"))?;
                socket
                    .set_multicast_if_v6(index)
                    .map_err(err("set IPV6_MULTICAST_IF"))?;
                socket
                    .set_multicast_hops_v6(ND_HOP_LIMIT)
                    .map_err(err("set IPV6_MULTICAST_HOPS"))?;
                // A raw ICMPv6 socket also queues every ICMPv6 packet that
                // arrives while it lives (up to a second, with repeats): keep
                // that queue at the kernel's minimum.
                socket
                    .set_recv_buffer_size(0)
                    .map_err(err("set SO_RCVBUF"))?;
                // Our own stack needs no telling.
                socket
                    .set_multicast_loop_v6(false)
                    .map_err(err("set IPV6_MULTICAST_LOOP"))?;
                let all_nodes =
                    SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
                (
                    socket,
                    neighbor_advertisement(mac, v6).to_vec(),
                    all_nodes.into(),
                )
            }
        };
        Ok(Some(Announcement {
            socket,
            message,
            dest,
            ifname: ifname.to_owned(),
            ip,
        }))
    }

    fn send(&self) -> Result<(), VipError> {
        self.socket
            .send_to(&self.message, &self.dest)
            .map(drop)
            .map_err(|source| VipError::Announce {
                ifname: self.ifname.clone(),
                ip: self.ip,
                op: "send",
                source,
            })
    }
}

/// The interface's index and MAC address, and an AF_PACKET socket bound to
/// it; `None` when it is not Ethernet.
///
/// The MAC comes from the kernel (getsockname of the bound packet socket)
/// rather than /sys/class/net/IF/address: sysfs shows the interfaces of the
/// namespace it was mounted in, which is not the calling thread's after a
/// setns.
pub(super) fn ethernet_link(
    ifname: &str,
    ip: IpAddr,
) -> Result<Option<(u32, [u8; 6], Socket)>, VipError> {
    let index =
        nix::net::if_::if_nametoindex(ifname).map_err(|errno| VipError::InterfaceNotFound {
            ifname: ifname.to_owned(),
            ip,
            source: errno.into(),
        })?;
    let err = |op: &'static str| {
        move |source| VipError::Announce {
            ifname: ifname.to_owned(),
            ip,
            op,
            source,
        }
    };
    // Protocol 0: this socket only sends, so it asks for no incoming frames.
    let socket =
        Socket::new(Domain::PACKET, Type::RAW, None).map_err(err("open AF_PACKET socket"))?;
    socket
        .bind(&sys::packet_sockaddr(index, 0, [0; 6]))
        .map_err(err("bind AF_PACKET socket"))?;
    let local = socket.local_addr().map_err(err("read link address"))?;
    let Some(link) = sys::link_layer(&local) else {
        return Err(err("read link address")(io::Error::other(
            "not an AF_PACKET address",
        )));
    };
    if link.hatype != ARPHRD_ETHER {
        return Ok(None);
    }
    match <[u8; 6]>::try_from(link.addr.as_slice()) {
        Ok(mac) if mac != [0; 6] => Ok(Some((index, mac, socket))),
        _ => Err(VipError::NoLinkAddress {
            ifname: ifname.to_owned(),
            ip,
        }),
    }
}

/// A gratuitous ARP (RFC 5227's ARP announcement): a broadcast request from
/// `mac` whose sender and target IP are both the VIP, which makes every
/// neighbour holding the VIP in its cache point it at `mac`.
fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero (RFC 5227 2.3).
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (RFC 4861 7.2.6) for `ip` with
/// `mac` as its target link-layer address: override set, solicited clear,
/// router clear (the edge advertises a service address, not a router). The
/// checksum is left zero for the kernel.
fn neighbor_advertisement(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = ICMPV6_NEIGHBOR_ADVERTISEMENT;
    m[4] = NA_OVERRIDE;
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = ND_OPT_TARGET_LINK_ADDR;
    m[25] = 1; // option length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// A repeat still to send.
#[derive(Debug)]
struct Repeat {
    due: Instant,
    left: u32,
    interval: Duration,
    announcement: Announcement,
}

impl PartialEq for Repeat {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Repeat {}
impl PartialOrd for Repeat {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Repeat {
    /// Reversed, so the max-heap yields the earliest due first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

/// Sends the repeats as they fall due; ends when the [`Announcer`] is gone
/// and nothing is left to send.
fn repeat_announcements(rx: mpsc::Receiver<Repeat>) {
    let mut pending: BinaryHeap<Repeat> = BinaryHeap::new();
    let mut open = true;
    while open || !pending.is_empty() {
        let now = Instant::now();
        while pending.peek().is_some_and(|r| r.due <= now) {
            let Some(mut r) = pending.pop() else { break };
            if let Err(e) = r.announcement.send() {
                tracing::warn!(error = %e, "repeated VIP announcement failed");
            }
            r.left -= 1;
            if r.left > 0 {
                r.due = now + r.interval;
                pending.push(r);
            }
        }
        let next = match pending.peek() {
            Some(r) if open => rx.recv_timeout(r.due.saturating_duration_since(now)),
            Some(r) => {
                std::thread::sleep(r.due.saturating_duration_since(now));
                continue;
            }
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(r) => pending.push(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frame_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = gratuitous_arp(mac, "192.0.2.10".parse().unwrap());
        let expected_head: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x08,
            0x06, // Ethernet
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // ARP request, Ethernet/IPv4
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 192, 0, 2, 10, // sender
            0, 0, 0, 0, 0, 0, 192, 0, 2, 10, // target
        ];
        assert_eq!(f[..42], expected_head);
        assert!(f[42..].iter().all(|b| *b == 0), "padding");
    }

    #[test]
    fn neighbor_advertisement_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip6: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let m = neighbor_advertisement(mac, ip6);
        assert_eq!(m[..8], [136, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(m[8..24], ip6.octets());
        assert_eq!(m[24..], [2, 1, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    }
}
