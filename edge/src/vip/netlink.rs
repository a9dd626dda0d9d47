//! [`AddressOps`] on the real system: the addresses through rtnetlink, the
//! announcements through [`super::announce`].
//!
//! The kernel's answers are typed, per address: `RTM_NEWADDR` with
//! `NLM_F_EXCL` fails with `EEXIST` when the address is already there,
//! `RTM_DELADDR` with `EADDRNOTAVAIL` (or `ENOENT`) when it is already gone,
//! and any other failure comes back as that address's errno, with the
//! kernel's own explanation (its extended ack) when it gives one.
//!
//! The requests go through the edge's rtnetlink session
//! ([`crate::rtnl`]): batched, each answered, on a thread of their own in
//! the caller's network namespace. A reconcile makes at most two calls per
//! interface.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::AddressMessageBuilder;

use super::announce::Announcer;
use super::{check_ifname, invalid_interface, AddressOps, VipError};
use crate::rtnl::{on_netlink_thread, NetlinkError, Session};

/// The real [`AddressOps`]: VIPs added and removed through rtnetlink (a
/// host address each: /32, or /128 without duplicate address detection),
/// announced with gratuitous ARP / unsolicited neighbour advertisements.
///
/// Making one touches nothing: every call opens what it needs.
#[derive(Debug, Default)]
pub struct NetlinkOps {
    announcer: Announcer,
}

impl NetlinkOps {
    /// Sends [`super::ANNOUNCE_COUNT`] announcements per VIP added,
    /// [`super::ANNOUNCE_INTERVAL`] apart.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `count` announcements per VIP, `interval` apart, instead of the
    /// defaults. A count of 0 sends none.
    pub fn with_announcements(mut self, count: u32, interval: Duration) -> Self {
        self.announcer = Announcer::new(count, interval);
        self
    }
}

impl AddressOps for NetlinkOps {
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
        if ips.is_empty() || check_ifname(ifname).is_err() {
            return ips.iter().map(|_| Err(invalid_interface(ifname))).collect();
        }
        on_netlink_thread(async |session| add_all(session, ifname, ips).await).unwrap_or_else(
            |source| each_failed(ifname, ips, "open a netlink socket to add", &source),
        )
    }

    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
        if ips.is_empty() || check_ifname(ifname).is_err() {
            return ips.iter().map(|_| Err(invalid_interface(ifname))).collect();
        }
        on_netlink_thread(async |session| remove_all(session, ifname, ips).await).unwrap_or_else(
            |source| each_failed(ifname, ips, "open a netlink socket to remove", &source),
        )
    }

    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
        self.announcer.announce(ifname, ip)
    }
}

/// Puts each missing one of `ips` on `ifname`.
///
/// The addresses already on the interface are listed first, so that one
/// already there with any prefix length (an operator's 192.0.2.10/24) counts
/// as present, as it would for a person reading `ip addr`; `NLM_F_EXCL`
/// alone would only catch the same prefix length. An address that appears
/// between the listing and the add fails with `EEXIST`: present too.
async fn add_all(session: &Session, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
    let index = match session.link_index(ifname).await {
        Ok(Some(index)) => index,
        Ok(None) => return ips.iter().map(|ip| Err(not_found(ifname, *ip))).collect(),
        Err(e) => return each_failed(ifname, ips, "look up the interface to add", &e.into_io()),
    };
    let present = match session.addresses(index).await {
        Ok(present) => present,
        Err(e) => return each_failed(ifname, ips, "list the addresses to add", &e.into_io()),
    };
    let missing: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| !present.contains(ip))
        .copied()
        .collect();
    // One answer per missing address, in the order of `ips`.
    let mut added = session.add(index, &missing).await.into_iter();
    ips.iter()
        .map(|ip| {
            if present.contains(ip) {
                return Ok(false);
            }
            match added.next() {
                Some(Ok(())) => Ok(true),
                Some(Err(e)) if e.errno() == Some(libc::EEXIST) => Ok(false),
                // The interface went between the lookup and the add.
                Some(Err(e)) if e.errno() == Some(libc::ENODEV) => Err(not_found(ifname, *ip)),
                Some(Err(e)) => Err(e.for_vip("add", ifname, *ip)),
                None => Err(
                    NetlinkError::Other(io::Error::other("no answer from the kernel"))
                        .for_vip("add", ifname, *ip),
                ),
            }
        })
        .collect()
}

/// Takes each of `ips` (as a host address) off `ifname`; one already gone,
/// or gone with its interface, is not an error. Only the host address is
/// matched: the same address with another prefix length is someone else's
/// and stays.
async fn remove_all(session: &Session, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
    let index = match session.link_index(ifname).await {
        Ok(Some(index)) => index,
        // The addresses went with their interface.
        Ok(None) => return ips.iter().map(|_| Ok(())).collect(),
        Err(e) => return each_failed(ifname, ips, "look up the interface to remove", &e.into_io()),
    };
    let gone = [libc::EADDRNOTAVAIL, libc::ENOENT, libc::ENODEV];
    ips.iter()
        .zip(session.remove(index, ips).await)
        .map(|(ip, result)| match result {
            Ok(()) => Ok(()),
            Err(e) if e.errno().is_some_and(|errno| gone.contains(&errno)) => Ok(()),
            Err(e) => Err(e.for_vip("remove", ifname, *ip)),
        })
        .collect()
}

/// The address requests of a [`Session`].
impl Session {
    /// Every address on interface `index`, both families (`RTM_GETADDR`).
    async fn addresses(&self, index: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
        let mut request =
            NetlinkMessage::from(RouteNetlinkMessage::GetAddress(AddressMessage::default()));
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let answers = self.request(request).await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => local_address(a),
                _ => None,
            })
            .collect())
    }

    /// `RTM_NEWADDR` of each of `ips` as a host address, `NLM_F_EXCL`: one
    /// already there fails with `EEXIST`.
    async fn add(&self, index: u32, ips: &[IpAddr]) -> Vec<Result<(), NetlinkError>> {
        let messages = ips.iter().map(|ip| {
            let mut address = host_address_message(index, *ip);
            if ip.is_ipv6() {
                // Usable at once instead of after a second or more of
                // duplicate address detection.
                address.header.flags = AddressHeaderFlags::Nodad;
            }
            let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(address));
            message.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
            message
        });
        self.batch(messages).await
    }

    /// `RTM_DELADDR` of each of `ips` as a host address.
    async fn remove(&self, index: u32, ips: &[IpAddr]) -> Vec<Result<(), NetlinkError>> {
        let messages = ips.iter().map(|ip| {
            let address = host_address_message(index, *ip);
            let mut message = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(address));
            message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            message
        });
        self.batch(messages).await
    }
}

impl NetlinkError {
    fn for_vip(self, op: &'static str, ifname: &str, ip: IpAddr) -> VipError {
        let (source, kernel_message) = match self {
            NetlinkError::Kernel {
                errno,
                kernel_message,
            } => (errno, kernel_message),
            NetlinkError::Other(e) => (e, None),
        };
        VipError::Netlink {
            op,
            ifname: ifname.to_owned(),
            ip,
            source,
            kernel_message,
        }
    }
}

fn each_failed<T>(
    ifname: &str,
    ips: &[IpAddr],
    op: &'static str,
    source: &io::Error,
) -> Vec<Result<T, VipError>> {
    ips.iter()
        .map(|ip| {
            Err(VipError::Netlink {
                op,
                ifname: ifname.to_owned(),
                ip: *ip,
                source: io::Error::new(source.kind(), source.to_string()),
                kernel_message: None,
            })
        })
        .collect()
}

fn not_found(ifname: &str, ip: IpAddr) -> VipError {
    VipError::InterfaceNotFound {
        ifname: ifname.to_owned(),
        ip,
        source: io::Error::from_raw_os_error(libc::ENODEV),
    }
}

/// `ip` as a host address on interface `index`, as `ip addr del` sends it.
fn host_address_message(index: u32, ip: IpAddr) -> AddressMessage {
    match ip {
        IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(v4, 32)
            .build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(v6, 128)
            .build(),
    }
}

/// The interface's own address in an address message: `IFA_LOCAL` when
/// there is one (on a point-to-point link `IFA_ADDRESS` is the peer's),
/// else `IFA_ADDRESS`.
fn local_address(message: &AddressMessage) -> Option<IpAddr> {
    let attribute = |local: bool| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    attribute(true).or_else(|| attribute(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rejects_bad_names_before_opening_anything() {
        let ops = NetlinkOps::new();
        assert!(matches!(
            ops.add_all("a b", &[ip("192.0.2.1")]).as_slice(),
            [Err(VipError::InvalidInterface { .. })]
        ));
        assert!(matches!(
            ops.remove_all("", &[ip("192.0.2.1")]).as_slice(),
            [Err(VipError::InvalidInterface { .. })]
        ));
        assert!(ops.add_all("eth0", &[]).is_empty());
    }

    #[test]
    fn the_local_address_wins_over_the_peer() {
        let mut message = host_address_message(2, ip("10.0.0.1"));
        message.attributes = vec![
            AddressAttribute::Address(ip("10.0.0.2")),
            AddressAttribute::Local(ip("10.0.0.1")),
        ];
        assert_eq!(local_address(&message), Some(ip("10.0.0.1")));
        let message = host_address_message(2, ip("2001:db8::1"));
        assert_eq!(local_address(&message), Some(ip("2001:db8::1")));
    }
}
