//! VIPs on the wire: the addresses themselves on the configured interface,
//! and the announcements (gratuitous ARP, unsolicited neighbour
//! advertisement) that make the neighbours send a moved VIP's traffic here at
//! once instead of when their caches expire. (Listeners bind before their
//! address exists: see [`crate::sockets`].)
//!
//! [`VipManager`] keeps the interface's VIPs equal to what the configuration
//! wants, but only ever removes addresses it added itself: an address that
//! was already there (put by an operator, keepalived, another tool) is left
//! alone whatever happens. It is pure bookkeeping; the system work sits
//! behind [`AddressOps`] so that the bookkeeping is tested without privileges
//! (`FakeAddressOps`, in unit tests and with the `testing` feature only),
//! while [`NetlinkOps`] does it for real: the addresses
//! through rtnetlink (`netlink`), the announcements built and scheduled in
//! `announce` (their packet-socket addresses come from [`crate::sys`]). The
//! tests against the kernel, in network namespaces, are in `netns_tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

mod announce;
#[cfg(any(test, feature = "testing"))]
mod fake;
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeAddressOps, FakeCall};
mod netlink;
#[cfg(test)]
mod netns_tests;

pub use announce::{ANNOUNCE_COUNT, ANNOUNCE_INTERVAL};
pub use netlink::NetlinkOps;

/// The longest interface name is one byte shorter (the kernel's NUL).
const IFNAMSIZ: usize = 16;

/// Why putting a VIP on the wire, or taking it off, failed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The name is not a possible Linux interface name.
    #[error("invalid interface name {ifname:?}")]
    InvalidInterface {
        /// The name given.
        ifname: String,
    },
    /// The interface does not exist (in this network namespace).
    #[error("interface {ifname} (for VIP {ip}) not found: {source}")]
    InterfaceNotFound {
        /// The interface.
        ifname: String,
        /// The VIP concerned.
        ip: IpAddr,
        /// Why the lookup failed.
        source: io::Error,
    },
    /// The kernel refused to add or remove the VIP (or the netlink exchange
    /// about it failed).
    #[error(
        "cannot {op} VIP {ip} on {ifname}: {source}{}",
        explained(kernel_message)
    )]
    Netlink {
        /// What was being done ("add", "remove", "look up the interface
        /// to add", ...).
        op: &'static str,
        /// The interface.
        ifname: String,
        /// The VIP concerned.
        ip: IpAddr,
        /// The errno the kernel answered (`raw_os_error`), or what failed
        /// in the exchange.
        source: io::Error,
        /// The kernel's own explanation (its extended ack), when it gave one.
        kernel_message: Option<String>,
    },
    /// The interface is Ethernet but has no usable hardware address to
    /// announce the VIP from.
    #[error("interface {ifname} has no Ethernet address to announce VIP {ip} from")]
    NoLinkAddress {
        /// The interface.
        ifname: String,
        /// The VIP concerned.
        ip: IpAddr,
    },
    /// Sending an announcement failed (raw sockets need CAP_NET_RAW).
    #[error("cannot announce VIP {ip} on {ifname}: {op}: {source}")]
    Announce {
        /// The interface.
        ifname: String,
        /// The VIP concerned.
        ip: IpAddr,
        /// The step that failed.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// ` (kernel: why)` when the kernel said why.
fn explained(kernel_message: &Option<String>) -> String {
    kernel_message
        .as_ref()
        .map(|m| format!(" (kernel: {m})"))
        .unwrap_or_default()
}

/// The system work behind [`VipManager`]. Implementations act in the
/// network namespace of the calling thread.
pub trait AddressOps: Send + Sync {
    /// Puts each of `ips` (as a host address: /32 or /128) on `ifname`,
    /// results in the same order: `Ok(true)` when this call added it,
    /// `Ok(false)` when it was already there. Implementations may do it in
    /// one go (a Service set-up adds hundreds).
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>>;
    /// Takes each of `ips` off `ifname`, results in the same order; an
    /// address already gone is not an error.
    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>>;
    /// Tells the link's neighbours that `ip` is now here ([`ANNOUNCE_COUNT`]
    /// times, [`ANNOUNCE_INTERVAL`] apart). Returns once the first went out.
    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError>;
}

impl<T: AddressOps + ?Sized> AddressOps for Arc<T> {
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
        (**self).add_all(ifname, ips)
    }
    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
        (**self).remove_all(ifname, ips)
    }
    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
        (**self).announce(ifname, ip)
    }
}

/// Keeps one interface's VIPs equal to what the configuration wants, touching
/// only addresses it added itself.
///
/// Ownership is remembered per (interface, address). An address found
/// already present when first wanted is recorded as not ours, never
/// announced and never removed; it is looked at afresh only once it stops
/// being wanted and is wanted again. Dropping the manager leaves every
/// address in place: call [`VipManager::release_all`] at shutdown, or
/// [`VipManager::forget_all`] when a new process takes the addresses over.
///
/// Blocking (its [`AddressOps`] wait for the kernel); call it off the async
/// runtime's worker threads.
pub struct VipManager<A: AddressOps = Arc<dyn AddressOps>> {
    ops: A,
    owned: BTreeSet<(String, IpAddr)>,
    foreign: BTreeSet<(String, IpAddr)>,
    adopt: bool,
}

impl<A: AddressOps> VipManager<A> {
    /// A manager that owns no address yet.
    pub fn new(ops: A) -> Self {
        VipManager {
            ops,
            owned: BTreeSet::new(),
            foreign: BTreeSet::new(),
            adopt: false,
        }
    }

    /// While set, an address already present when first wanted counts as
    /// ours (and will be removed when no longer wanted) instead of foreign.
    ///
    /// For a process taking over from a previous edge, whose VIPs are
    /// already up; the price is that it cannot tell them from an operator's
    /// address that happens to equal a VIP. Turn it off again once the first
    /// reconcile after the takeover is done.
    pub fn set_adopt(&mut self, adopt: bool) {
        self.adopt = adopt;
    }

    /// Makes `ifname` carry exactly the wanted VIPs, as far as addresses this
    /// manager owns go: adds (and announces) the missing ones, removes the
    /// ones it added that are no longer wanted, also from an interface that
    /// is no longer the configured one. `None` means no interface: every
    /// address it added is removed.
    ///
    /// Returns every failure; one address failing does not stop the others,
    /// and a failed step is tried again at the next reconcile.
    pub fn reconcile(&mut self, ifname: Option<&str>, wanted: &BTreeSet<IpAddr>) -> Vec<VipError> {
        let desired: BTreeSet<(String, IpAddr)> = match ifname {
            Some(name) => wanted.iter().map(|ip| (name.to_owned(), *ip)).collect(),
            None => BTreeSet::new(),
        };
        self.foreign.retain(|entry| desired.contains(entry));
        let mut errors = Vec::new();

        // Removals first, so that on an interface change the VIP is never on
        // two interfaces at once. One batch per interface.
        let stale: Vec<(String, IpAddr)> = self.owned.difference(&desired).cloned().collect();
        for (ifname, ips) in by_interface(&stale) {
            for (ip, result) in ips.iter().zip(self.ops.remove_all(ifname, &ips)) {
                match result {
                    Ok(()) => {
                        tracing::info!(interface = %ifname, vip = %ip, "VIP removed");
                        self.owned.remove(&(ifname.to_owned(), *ip));
                    }
                    Err(e) => errors.push(e),
                }
            }
        }

        let missing: Vec<(String, IpAddr)> = desired
            .into_iter()
            .filter(|entry| !self.owned.contains(entry) && !self.foreign.contains(entry))
            .collect();
        for (ifname, ips) in by_interface(&missing) {
            for (ip, result) in ips.iter().zip(self.ops.add_all(ifname, &ips)) {
                let entry = (ifname.to_owned(), *ip);
                match result {
                    Ok(true) => {
                        tracing::info!(interface = %ifname, vip = %ip, "VIP added");
                        if let Err(e) = self.ops.announce(ifname, *ip) {
                            errors.push(e);
                        }
                        self.owned.insert(entry);
                    }
                    Ok(false) if self.adopt => {
                        tracing::info!(interface = %ifname, vip = %ip, "VIP already present; adopted");
                        self.owned.insert(entry);
                    }
                    Ok(false) => {
                        tracing::info!(interface = %ifname, vip = %ip, "VIP already present; leaving it alone");
                        self.foreign.insert(entry);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        errors
    }

    /// Removes every address this manager added (at shutdown). Returns the
    /// failures; those addresses stay on its books.
    pub fn release_all(&mut self) -> Vec<VipError> {
        self.foreign.clear();
        self.reconcile(None, &BTreeSet::new())
    }

    /// Forgets every address without removing any: after a handover the new
    /// process owns them.
    pub fn forget_all(&mut self) {
        self.owned.clear();
        self.foreign.clear();
    }

    /// The addresses this manager added and would remove, as
    /// (interface, address).
    pub fn owned(&self) -> impl Iterator<Item = (&str, IpAddr)> + '_ {
        self.owned.iter().map(|(ifname, ip)| (ifname.as_str(), *ip))
    }

    /// The addresses found already present and left alone.
    pub fn foreign(&self) -> impl Iterator<Item = (&str, IpAddr)> + '_ {
        self.foreign
            .iter()
            .map(|(ifname, ip)| (ifname.as_str(), *ip))
    }

    /// The operations this manager uses.
    pub fn ops(&self) -> &A {
        &self.ops
    }
}

/// `entries` grouped by interface, in order.
fn by_interface(entries: &[(String, IpAddr)]) -> BTreeMap<&str, Vec<IpAddr>> {
    let mut grouped: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for (ifname, ip) in entries {
        grouped.entry(ifname.as_str()).or_default().push(*ip);
    }
    grouped
}

/// Interface names end up in netlink messages and socket options; reject
/// anything the kernel would not accept as a name.
fn check_ifname(ifname: &str) -> Result<(), VipError> {
    let valid = !ifname.is_empty()
        && ifname.len() < IFNAMSIZ
        && ifname != "."
        && ifname != ".."
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(invalid_interface(ifname))
    }
}

fn invalid_interface(ifname: &str) -> VipError {
    VipError::InvalidInterface {
        ifname: ifname.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FakeCall::{Add, Announce, Remove};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| ip(s)).collect()
    }

    fn fake_manager() -> VipManager<Arc<FakeAddressOps>> {
        VipManager::new(Arc::new(FakeAddressOps::new()))
    }

    fn owned(m: &VipManager<Arc<FakeAddressOps>>) -> Vec<(String, IpAddr)> {
        m.owned().map(|(i, a)| (i.to_owned(), a)).collect()
    }

    #[test]
    fn adds_and_announces_missing_vips() {
        let mut m = fake_manager();
        let errors = m.reconcile(Some("eth0"), &set(&["192.0.2.10", "2001:db8::10"]));
        assert!(errors.is_empty(), "{errors:?}");
        // The interface's adds go as one batch, then each new VIP is announced.
        assert_eq!(
            m.ops().take_calls(),
            [
                Add("eth0".into(), ip("192.0.2.10")),
                Add("eth0".into(), ip("2001:db8::10")),
                Announce("eth0".into(), ip("192.0.2.10")),
                Announce("eth0".into(), ip("2001:db8::10")),
            ]
        );
        assert!(m.ops().is_present("eth0", ip("192.0.2.10")));
        assert_eq!(owned(&m).len(), 2);
    }

    #[test]
    fn keeps_what_is_still_wanted_without_touching_it() {
        let mut m = fake_manager();
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        m.ops().take_calls();
        assert!(m.reconcile(Some("eth0"), &set(&["192.0.2.10"])).is_empty());
        assert_eq!(m.ops().take_calls(), []);
        assert!(m.ops().is_present("eth0", ip("192.0.2.10")));
    }

    #[test]
    fn removes_only_its_own_addresses() {
        let mut m = fake_manager();
        m.ops().set_present("eth0", ip("192.0.2.99"));
        m.reconcile(Some("eth0"), &set(&["192.0.2.10", "192.0.2.11"]));
        m.ops().take_calls();
        assert!(m.reconcile(Some("eth0"), &set(&["192.0.2.11"])).is_empty());
        assert_eq!(
            m.ops().take_calls(),
            [Remove("eth0".into(), ip("192.0.2.10"))]
        );
        assert!(!m.ops().is_present("eth0", ip("192.0.2.10")));
        assert!(
            m.ops().is_present("eth0", ip("192.0.2.99")),
            "never wanted, never touched"
        );
    }

    #[test]
    fn pre_existing_addresses_are_never_announced_or_removed() {
        let mut m = fake_manager();
        m.ops().set_present("eth0", ip("192.0.2.10"));
        assert!(m.reconcile(Some("eth0"), &set(&["192.0.2.10"])).is_empty());
        assert_eq!(m.ops().take_calls(), [Add("eth0".into(), ip("192.0.2.10"))]);
        assert_eq!(m.foreign().count(), 1);
        // Still wanted: not even looked at again.
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        assert_eq!(m.ops().take_calls(), []);
        // No longer wanted, interface changed, shutdown: never removed.
        m.reconcile(Some("eth0"), &set(&[]));
        m.reconcile(Some("eth1"), &set(&[]));
        m.reconcile(None, &set(&[]));
        assert!(m.release_all().is_empty());
        assert!(!m.ops().take_calls().iter().any(|c| matches!(c, Remove(..))));
        assert!(m.ops().is_present("eth0", ip("192.0.2.10")));
    }

    #[test]
    fn release_all_removes_every_address_it_added() {
        let mut m = fake_manager();
        m.ops().set_present("eth0", ip("192.0.2.99"));
        m.reconcile(
            Some("eth0"),
            &set(&["192.0.2.10", "2001:db8::10", "192.0.2.99"]),
        );
        m.ops().take_calls();
        assert!(m.release_all().is_empty());
        let mut calls = m.ops().take_calls();
        calls.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            calls,
            [
                Remove("eth0".into(), ip("192.0.2.10")),
                Remove("eth0".into(), ip("2001:db8::10"))
            ]
        );
        assert_eq!(owned(&m), []);
        assert!(m.ops().is_present("eth0", ip("192.0.2.99")));
    }

    #[test]
    fn an_interface_change_moves_its_addresses() {
        let mut m = fake_manager();
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        m.ops().take_calls();
        assert!(m.reconcile(Some("eth1"), &set(&["192.0.2.10"])).is_empty());
        assert_eq!(
            m.ops().take_calls(),
            [
                Remove("eth0".into(), ip("192.0.2.10")),
                Add("eth1".into(), ip("192.0.2.10")),
                Announce("eth1".into(), ip("192.0.2.10")),
            ]
        );
        assert_eq!(owned(&m), [("eth1".to_owned(), ip("192.0.2.10"))]);
    }

    #[test]
    fn no_interface_releases_everything() {
        let mut m = fake_manager();
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        m.ops().take_calls();
        assert!(m.reconcile(None, &set(&["192.0.2.10"])).is_empty());
        assert_eq!(
            m.ops().take_calls(),
            [Remove("eth0".into(), ip("192.0.2.10"))]
        );
    }

    #[test]
    fn one_failing_address_does_not_stop_the_others_and_is_retried() {
        let mut m = fake_manager();
        m.ops().set_failing(ip("192.0.2.10"), true);
        let errors = m.reconcile(Some("eth0"), &set(&["192.0.2.10", "192.0.2.11"]));
        assert_eq!(errors.len(), 1);
        assert!(
            matches!(&errors[0], VipError::Netlink { ip: a, ifname, .. } if *a == ip("192.0.2.10") && ifname == "eth0")
        );
        assert!(m.ops().is_present("eth0", ip("192.0.2.11")));
        m.ops().set_failing(ip("192.0.2.10"), false);
        m.ops().take_calls();
        assert!(m
            .reconcile(Some("eth0"), &set(&["192.0.2.10", "192.0.2.11"]))
            .is_empty());
        assert_eq!(
            m.ops().take_calls(),
            [
                Add("eth0".into(), ip("192.0.2.10")),
                Announce("eth0".into(), ip("192.0.2.10"))
            ]
        );
    }

    #[test]
    fn a_failed_removal_stays_on_the_books_and_is_retried() {
        let mut m = fake_manager();
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        m.ops().set_failing(ip("192.0.2.10"), true);
        assert_eq!(m.release_all().len(), 1);
        assert_eq!(owned(&m).len(), 1);
        m.ops().set_failing(ip("192.0.2.10"), false);
        assert!(m.release_all().is_empty());
        assert_eq!(owned(&m), []);
        assert!(!m.ops().is_present("eth0", ip("192.0.2.10")));
    }

    #[test]
    fn an_announce_failure_is_reported_but_the_address_is_ours() {
        let mut m = fake_manager();
        m.ops().set_announce_failing(ip("192.0.2.10"));
        let errors = m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        assert_eq!(errors.len(), 1);
        assert_eq!(owned(&m).len(), 1, "added, so removed at shutdown");
    }

    #[test]
    fn adopting_takes_over_present_addresses() {
        let mut m = fake_manager();
        m.set_adopt(true);
        m.ops().set_present("eth0", ip("192.0.2.10"));
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        assert_eq!(
            m.ops().take_calls(),
            [Add("eth0".into(), ip("192.0.2.10"))],
            "not announced"
        );
        assert!(m.release_all().is_empty());
        assert!(!m.ops().is_present("eth0", ip("192.0.2.10")));
    }

    #[test]
    fn forget_all_leaves_addresses_in_place() {
        let mut m = fake_manager();
        m.reconcile(Some("eth0"), &set(&["192.0.2.10"]));
        m.forget_all();
        m.ops().take_calls();
        assert!(m.release_all().is_empty());
        assert_eq!(m.ops().take_calls(), []);
        assert!(m.ops().is_present("eth0", ip("192.0.2.10")));
    }

    #[test]
    fn works_behind_a_trait_object() {
        let fake = Arc::new(FakeAddressOps::new());
        let ops: Arc<dyn AddressOps> = fake.clone();
        let mut m: VipManager = VipManager::new(ops);
        assert!(m.reconcile(Some("eth0"), &set(&["192.0.2.10"])).is_empty());
        assert!(fake.is_present("eth0", ip("192.0.2.10")));
    }

    #[test]
    fn interface_names_are_checked() {
        for good in ["eth0", "veth-a.10", "bond0", "enp0s31f6", "-dash"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "with space",
            "sixteen_chars_xx",
        ] {
            assert!(
                matches!(check_ifname(bad), Err(VipError::InvalidInterface { .. })),
                "{bad:?}"
            );
        }
    }
}
