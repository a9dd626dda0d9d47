//! The real [`RouteTable`]: a TUN device held by the edge, and host routes
//! through it in the announce table, through the edge's rtnetlink session
//! ([`crate::rtnl`]).
//!
//! Routes are `RTM_NEWROUTE` with `NLM_F_EXCL` (`EEXIST`: already there)
//! and `RTM_DELROUTE` (`ESRCH`: already gone), protocol
//! [`ANNOUNCE_ROUTE_PROTOCOL`], IPv4 ones with link scope. The table is
//! listed by a route dump, keeping the host routes of that table, protocol
//! and device.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::RouteNetlinkMessage;
use portico_config::{AnnounceSettings, ANNOUNCE_ROUTE_PROTOCOL};
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::RouteMessageBuilder;

use super::{AnnounceError, RouteTable};
use crate::rtnl::{on_netlink_thread, NetlinkError, Session};

/// The TUN device the announced routes go through, and the table they go
/// in. Dropping it closes this process's descriptor of the device: the
/// device and its routes go when no process holds one any more.
#[derive(Debug)]
pub struct TunRoutes {
    device: String,
    index: u32,
    table: u32,
    fd: OwnedFd,
}

impl TunRoutes {
    /// Creates the device (or, with `inherited`, keeps the one a previous
    /// process handed over), brings it up, in the calling thread's network
    /// namespace.
    pub fn open(
        settings: &AnnounceSettings,
        inherited: Option<OwnedFd>,
    ) -> Result<TunRoutes, AnnounceError> {
        let device = settings.device.clone();
        let failed = |op: &'static str| {
            let device = device.clone();
            move |source: io::Error| AnnounceError::Device { op, device, source }
        };
        let fd = match inherited {
            Some(fd) => fd,
            None => crate::sys::open_tun(&device).map_err(failed("create"))?,
        };
        let index = on_netlink_thread(async |session| {
            let index = session
                .link_index(&device)
                .await
                .map_err(NetlinkError::into_io)?
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
            session.set_up(index).await.map_err(NetlinkError::into_io)?;
            Ok(index)
        })
        .and_then(|r: io::Result<u32>| r)
        .map_err(failed("bring up"))?;
        Ok(TunRoutes {
            device,
            index,
            table: settings.table,
            fd,
        })
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn each_failed(
        &self,
        op: &'static str,
        ips: &[IpAddr],
        source: &io::Error,
    ) -> Vec<Result<(), AnnounceError>> {
        ips.iter()
            .map(|ip| {
                Err(AnnounceError::Route {
                    op,
                    vip: *ip,
                    table: self.table,
                    source: io::Error::new(source.kind(), source.to_string()),
                })
            })
            .collect()
    }

    fn change(
        &self,
        op: &'static str,
        ips: &[IpAddr],
        fine: &[i32],
    ) -> Vec<Result<(), AnnounceError>> {
        if ips.is_empty() {
            return Vec::new();
        }
        let add = op == "add";
        let messages: Vec<_> = ips
            .iter()
            .map(|ip| {
                let route = host_route(*ip, self.index, self.table);
                let mut message = NetlinkMessage::from(if add {
                    RouteNetlinkMessage::NewRoute(route)
                } else {
                    RouteNetlinkMessage::DelRoute(route)
                });
                message.header.flags = if add {
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
                } else {
                    NLM_F_REQUEST | NLM_F_ACK
                };
                message
            })
            .collect();
        match on_netlink_thread(async |session| session.batch(messages.into_iter()).await) {
            Err(e) => self.each_failed(op, ips, &e),
            Ok(results) => ips
                .iter()
                .zip(results)
                .map(|(ip, result)| match result {
                    Ok(()) => Ok(()),
                    Err(e) if e.errno().is_some_and(|errno| fine.contains(&errno)) => Ok(()),
                    Err(e) => Err(AnnounceError::Route {
                        op,
                        vip: *ip,
                        table: self.table,
                        source: e.into_io(),
                    }),
                })
                .collect(),
        }
    }
}

impl RouteTable for TunRoutes {
    fn list(&self) -> Result<BTreeSet<IpAddr>, AnnounceError> {
        let (index, table) = (self.index, self.table);
        on_netlink_thread(async |session| session.host_routes(index, table).await)
            .and_then(|r| r.map_err(NetlinkError::into_io))
            .map_err(|source| AnnounceError::List { table, source })
    }

    fn add(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>> {
        self.change("add", ips, &[libc::EEXIST])
    }

    fn remove(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>> {
        self.change("remove", ips, &[libc::ESRCH, libc::ENOENT, libc::ENODEV])
    }

    fn device_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }
}

/// The host route of `ip` through device `index` in `table`.
fn host_route(ip: IpAddr, index: u32, table: u32) -> RouteMessage {
    let protocol = RouteProtocol::from(ANNOUNCE_ROUTE_PROTOCOL);
    match ip {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .output_interface(index)
            .table_id(table)
            .protocol(protocol)
            .scope(RouteScope::Link)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .output_interface(index)
            .table_id(table)
            .protocol(protocol)
            .build(),
    }
}

/// The requests of a [`Session`] about the device and its routes.
impl Session {
    /// Sets link `index` up.
    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.batch(std::iter::once(message))
            .await
            .pop()
            .unwrap_or_else(|| Err(NetlinkError::Other(io::Error::other("no answer"))))
    }

    /// The destinations of the host routes through device `index` in
    /// `table` with the announce protocol, both families.
    async fn host_routes(&self, index: u32, table: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
        let mut request =
            NetlinkMessage::from(RouteNetlinkMessage::GetRoute(RouteMessage::default()));
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let answers = self.request(request).await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(route) => ours(route, index, table),
                _ => None,
            })
            .collect())
    }
}

/// The VIP of a route, when it is one of ours: a host route through device
/// `index` in `table` with the announce protocol.
fn ours(route: &RouteMessage, index: u32, table: u32) -> Option<IpAddr> {
    if u8::from(route.header.protocol) != ANNOUNCE_ROUTE_PROTOCOL {
        return None;
    }
    // The table is in the header when it fits a byte, and in RTA_TABLE.
    let in_table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    let through = route
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    if in_table != table || !through {
        return None;
    }
    let destination = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let host = match destination {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (route.header.destination_prefix_length == host).then_some(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_routes_of_the_table_protocol_and_device_are_ours() {
        let vip: IpAddr = "192.0.2.10".parse().unwrap();
        let route = host_route(vip, 7, 4242);
        assert_eq!(ours(&route, 7, 4242), Some(vip));
        assert_eq!(ours(&route, 8, 4242), None, "another device");
        assert_eq!(ours(&route, 7, 4243), None, "another table");
        let mut other = route.clone();
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(ours(&other, 7, 4242), None, "another protocol");
        let mut wide = route.clone();
        wide.header.destination_prefix_length = 24;
        assert_eq!(ours(&wide, 7, 4242), None, "not a host route");
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        assert_eq!(ours(&host_route(v6, 7, 4242), 7, 4242), Some(v6));
    }
}
