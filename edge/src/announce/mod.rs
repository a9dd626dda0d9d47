//! Announcing VIPs to a routing daemon: how several edges share VIPs by BGP
//! (each edge's BIRD exports the VIPs this edge asks for; the upstream
//! router spreads flows over the edges that announce a VIP).
//!
//! The edge keeps one host route (/32, /128) per VIP it should attract in a
//! kernel routing table of its own (`settings.announce.table`), through a
//! TUN device it creates and holds (`settings.announce.device`); BIRD's
//! kernel protocol learns that table (`learn`) and exports what it holds.
//! No `ip rule` points at the table, so it never steers traffic. The
//! device is the point: it lives only while some process holds its
//! descriptor, so when the edge ends, however it ends (a crash, SIGKILL,
//! OOM), the device and every route through it go, and BIRD withdraws at
//! once. A binary upgrade hands the descriptor to the new process with the
//! listeners, so the routes never go; a BIRD restart finds them in the
//! kernel again.
//!
//! Which VIPs ([`wanted`], pure): a VIP whose every port has its listener
//! open and its nodes probed at least once (the first health results are
//! in), and, with `withdrawWhenNoHealthyNode`, at least one port with a
//! healthy node. None while the edge is drained (`portico-edge drain`) or
//! stopping. [`Announcer`] keeps the table equal to that (bookkeeping
//! over [`RouteTable`]; the real one is [`TunRoutes`]).

pub mod bird;
mod netlink;
#[cfg(test)]
mod netns_tests;
mod presence;

#[cfg(any(test, feature = "testing"))]
mod fake;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;

#[cfg(any(test, feature = "testing"))]
pub use fake::FakeRoutes;
pub use netlink::TunRoutes;
pub use presence::{Presence, Readiness, RouteTables, TunTables, TAKEOVER_HOLD_LIMIT};

/// The listener key a device's descriptor is handed over under.
pub fn handover_key(device: &str) -> String {
    format!("announce/{device}")
}

/// Why a route could not be added or removed, or the device not made.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The device could not be created, found or brought up.
    #[error("cannot {op} device {device} for the announced VIPs: {source}")]
    Device {
        /// What was being done.
        op: &'static str,
        /// The device.
        device: String,
        /// Why.
        source: io::Error,
    },
    /// The kernel refused to add or remove a route (or the exchange failed).
    #[error("cannot {op} the route of VIP {vip} in table {table}: {source}")]
    Route {
        /// `add`, `remove`, `list`.
        op: &'static str,
        /// The VIP.
        vip: IpAddr,
        /// The routing table.
        table: u32,
        /// Why.
        source: io::Error,
    },
    /// The routes in the table could not be listed.
    #[error("cannot list the routes of table {table}: {source}")]
    List {
        /// The routing table.
        table: u32,
        /// Why.
        source: io::Error,
    },
}

/// The system work behind [`Announcer`]: host routes through one device in
/// one table, in the network namespace the device was made in.
pub trait RouteTable: Send {
    /// The VIPs with a route through the device in the table now.
    fn list(&self) -> Result<BTreeSet<IpAddr>, AnnounceError>;
    /// Adds a host route for each of `ips` (one already there is fine).
    fn add(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>>;
    /// Removes the host route of each of `ips` (one already gone is fine).
    fn remove(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>>;
    /// The descriptor that keeps the device (and so the routes) alive, to
    /// hand to a new process; `None` for a table without a device.
    fn device_fd(&self) -> Option<BorrowedFd<'_>>;
}

impl<T: RouteTable + ?Sized> RouteTable for Box<T> {
    fn list(&self) -> Result<BTreeSet<IpAddr>, AnnounceError> {
        (**self).list()
    }
    fn add(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>> {
        (**self).add(ips)
    }
    fn remove(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>> {
        (**self).remove(ips)
    }
    fn device_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).device_fd()
    }
}

/// What the edge knows of one listener (a VIP, protocol and port), for
/// deciding whether its VIP is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortState {
    /// The VIP.
    pub vip: IpAddr,
    /// The listener is open.
    pub open: bool,
    /// Every node of the port has been probed at least once.
    pub probed: bool,
    /// At least one node of the port is healthy.
    pub healthy: bool,
}

/// The VIPs to announce: those whose every port is open and probed, and,
/// when `withdraw_unhealthy`, have at least one port with a healthy node.
pub fn wanted(
    ports: impl IntoIterator<Item = PortState>,
    withdraw_unhealthy: bool,
) -> BTreeSet<IpAddr> {
    // (ready, any healthy) per VIP.
    let mut by_vip: BTreeMap<IpAddr, (bool, bool)> = BTreeMap::new();
    for port in ports {
        let entry = by_vip.entry(port.vip).or_insert((true, false));
        entry.0 &= port.open && port.probed;
        entry.1 |= port.healthy;
    }
    by_vip
        .into_iter()
        .filter(|(_, (ready, healthy))| *ready && (*healthy || !withdraw_unhealthy))
        .map(|(vip, _)| vip)
        .collect()
}

/// Why the edge as a whole is not ready to serve: empty when it is.
pub fn not_ready(ports: impl IntoIterator<Item = (String, PortState)>) -> Vec<String> {
    let mut waiting = Vec::new();
    for (listener, port) in ports {
        if !port.open {
            waiting.push(format!("listener {listener} is not open"));
        } else if !port.probed {
            waiting.push(format!(
                "listener {listener}: its nodes are not all probed yet"
            ));
        }
    }
    waiting
}

/// Keeps the table's routes equal to the VIPs to announce.
///
/// After a takeover the routes the previous process announced are held
/// (never removed) until [`Announcer::end_hold`]: the new process only
/// knows its VIPs are ready once its own first health results are in, and
/// withdrawing them meanwhile would move every flow away from this edge.
pub struct Announcer<T: RouteTable = Box<dyn RouteTable>> {
    table: T,
    hold: bool,
    announced: BTreeSet<IpAddr>,
}

impl<T: RouteTable> Announcer<T> {
    /// An announcer over `table`; `hold` keeps the routes found there until
    /// [`end_hold`](Self::end_hold).
    pub fn new(table: T, hold: bool) -> Announcer<T> {
        Announcer {
            table,
            hold,
            announced: BTreeSet::new(),
        }
    }

    /// Whether routes are held (after a takeover, before the first ready
    /// reconcile).
    pub fn holding(&self) -> bool {
        self.hold
    }

    /// Stops holding: from now on routes not wanted are removed.
    pub fn end_hold(&mut self) {
        self.hold = false;
    }

    /// Makes the table hold exactly `wanted` (while holding, only adds).
    /// The table is listed each time, so a route removed by hand comes
    /// back. Returns every failure; the others still go through.
    pub fn reconcile(&mut self, wanted: &BTreeSet<IpAddr>) -> Vec<AnnounceError> {
        let present = match self.table.list() {
            Ok(present) => present,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        let stale: Vec<IpAddr> = if self.hold {
            Vec::new()
        } else {
            present.difference(wanted).copied().collect()
        };
        let mut now = present.clone();
        for (ip, result) in stale.iter().zip(self.table.remove(&stale)) {
            match result {
                Ok(()) => {
                    tracing::info!(vip = %ip, "VIP withdrawn");
                    now.remove(ip);
                }
                Err(e) => errors.push(e),
            }
        }
        let missing: Vec<IpAddr> = wanted.difference(&present).copied().collect();
        for (ip, result) in missing.iter().zip(self.table.add(&missing)) {
            match result {
                Ok(()) => {
                    tracing::info!(vip = %ip, "VIP announced");
                    now.insert(*ip);
                }
                Err(e) => errors.push(e),
            }
        }
        self.announced = now;
        errors
    }

    /// The VIPs announced after the last reconcile.
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// The route table.
    pub fn table(&self) -> &T {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn port(vip: &str, open: bool, probed: bool, healthy: bool) -> PortState {
        PortState {
            vip: ip(vip),
            open,
            probed,
            healthy,
        }
    }

    #[test]
    fn a_vip_is_wanted_once_every_port_is_open_and_probed() {
        let ports = [
            port("192.0.2.1", true, true, true),
            port("192.0.2.1", true, true, false),
            // One port not probed yet holds its VIP back.
            port("192.0.2.2", true, true, true),
            port("192.0.2.2", true, false, false),
            // A listener that failed to open too.
            port("192.0.2.3", false, true, true),
            // No healthy node: announced unless asked otherwise.
            port("192.0.2.4", true, true, false),
        ];
        assert_eq!(
            wanted(ports, false),
            [ip("192.0.2.1"), ip("192.0.2.4")].into()
        );
        assert_eq!(wanted(ports, true), [ip("192.0.2.1")].into());
        assert!(wanted([], true).is_empty());
    }

    #[test]
    fn not_ready_names_each_listener_waited_for() {
        let waiting = not_ready([
            (
                "tcp/192.0.2.1:80".to_string(),
                port("192.0.2.1", true, true, false),
            ),
            (
                "tcp/192.0.2.1:443".to_string(),
                port("192.0.2.1", false, true, true),
            ),
            (
                "udp/192.0.2.2:53".to_string(),
                port("192.0.2.2", true, false, true),
            ),
        ]);
        assert_eq!(
            waiting,
            [
                "listener tcp/192.0.2.1:443 is not open",
                "listener udp/192.0.2.2:53: its nodes are not all probed yet"
            ]
        );
    }

    #[test]
    fn the_table_follows_what_is_wanted_and_comes_back_when_edited() {
        let table = FakeRoutes::new();
        let mut announcer = Announcer::new(table.clone(), false);
        let both: BTreeSet<IpAddr> = [ip("192.0.2.1"), ip("2001:db8::1")].into();
        assert!(announcer.reconcile(&both).is_empty());
        assert_eq!(table.routes(), both);
        assert_eq!(announcer.announced(), &both);
        // Removed by hand: back at the next reconcile.
        table.remove(&[ip("192.0.2.1")]);
        assert!(announcer.reconcile(&both).is_empty());
        assert_eq!(table.routes(), both);
        let one: BTreeSet<IpAddr> = [ip("2001:db8::1")].into();
        assert!(announcer.reconcile(&one).is_empty());
        assert_eq!(table.routes(), one);
        assert!(announcer.reconcile(&BTreeSet::new()).is_empty());
        assert!(table.routes().is_empty());
    }

    #[test]
    fn after_a_takeover_routes_are_held_until_the_hold_ends() {
        let table = FakeRoutes::new();
        table.add(&[ip("192.0.2.1"), ip("192.0.2.2")]);
        let mut announcer = Announcer::new(table.clone(), true);
        assert!(announcer.reconcile(&BTreeSet::new()).is_empty());
        assert_eq!(table.routes().len(), 2, "held");
        assert!(announcer.reconcile(&[ip("192.0.2.3")].into()).is_empty());
        assert_eq!(table.routes().len(), 3, "adds go through while holding");
        announcer.end_hold();
        assert!(announcer.reconcile(&[ip("192.0.2.3")].into()).is_empty());
        assert_eq!(table.routes(), [ip("192.0.2.3")].into());
    }

    #[test]
    fn a_failed_step_is_reported_and_the_others_go_through() {
        let table = FakeRoutes::new();
        table.fail(ip("192.0.2.2"));
        let mut announcer = Announcer::new(table.clone(), false);
        let errors = announcer.reconcile(&[ip("192.0.2.1"), ip("192.0.2.2")].into());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("192.0.2.2"), "{}", errors[0]);
        assert_eq!(table.routes(), [ip("192.0.2.1")].into());
        assert_eq!(announcer.announced(), &[ip("192.0.2.1")].into());
    }
}
