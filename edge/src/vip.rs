//! VIPs on the wire: listeners that bind before their address exists, the
//! addresses themselves on the configured interface, and the announcements
//! (gratuitous ARP, unsolicited neighbour advertisement) that make the
//! neighbours send a moved VIP's traffic here at once instead of when their
//! caches expire.
//!
//! [`VipManager`] keeps the interface's VIPs equal to what the configuration
//! wants, but only ever removes addresses it added itself: an address that
//! was already there (put by an operator, keepalived, another tool) is left
//! alone whatever happens. The system work sits behind [`AddressOps`] so that
//! the bookkeeping is tested without privileges (`FakeAddressOps`, in unit
//! tests and with the `testing` feature only), while [`IpCommand`] does it
//! for real.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARP_REQUEST: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet's minimum frame (without FCS); shorter frames are padded.
const MIN_FRAME: usize = 60;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// The NA "override" flag: replace whatever link address a cache holds.
const NA_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_ADDR: u8 = 2;
/// Neighbour discovery messages must arrive with hop limit 255 (RFC 4861
/// 7.1.2), proving they were not routed.
const ND_HOP_LIMIT: u32 = 255;
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
    /// `ip` could not be run at all.
    #[error("cannot run {program} for VIP {ip} on {ifname}: {source}")]
    Spawn {
        /// The program that was run.
        program: PathBuf,
        /// The interface.
        ifname: String,
        /// The VIP concerned.
        ip: IpAddr,
        /// Why it could not start.
        source: io::Error,
    },
    /// `ip` ran and failed; its stderr says why.
    #[error("`{command}` for VIP {ip} on {ifname} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// The interface.
        ifname: String,
        /// The VIP concerned.
        ip: IpAddr,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
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
/// Blocking (it runs `ip`); call it off the async runtime's worker threads.
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

/// [`AddressOps`] on the real system: addresses through iproute2's `ip`,
/// announcements from raw sockets.
///
/// `ip` rather than rtnetlink: none of the allowed crates speaks netlink,
/// hand-written netlink is far more code than the two commands needed, and
/// `ip`'s error messages are what an operator would see doing it by hand.
/// A reconcile runs `ip` at most three times per interface however many
/// VIPs change ([`AddressOps::add_all`], [`AddressOps::remove_all`]): one
/// listing, one `ip -force -batch -` of every add or removal (`ip` names
/// the failing lines), and a second listing only if some line failed. One
/// process per VIP cost 4 ms each, 4 s of set-up for 1,000 Services.
#[derive(Debug)]
pub struct IpCommand {
    program: PathBuf,
    count: u32,
    interval: Duration,
    repeater: OnceLock<Option<mpsc::Sender<Repeat>>>,
}

impl Default for IpCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl IpCommand {
    /// Uses iproute2's `ip` from the usual places (not every PATH has the
    /// sbin directories), else whatever `ip` PATH finds.
    pub fn new() -> Self {
        let program = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .unwrap_or(Path::new("ip"));
        Self::with_program(program)
    }

    /// Uses `program` as `ip`.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        IpCommand {
            program: program.into(),
            count: ANNOUNCE_COUNT,
            interval: ANNOUNCE_INTERVAL,
            repeater: OnceLock::new(),
        }
    }

    /// Sends `count` announcements per VIP, `interval` apart, instead of the
    /// defaults. A count of 0 sends none.
    pub fn with_announcements(mut self, count: u32, interval: Duration) -> Self {
        self.count = count;
        self.interval = interval;
        self
    }

    /// Runs `ip` with `args` (and `stdin`, if any), in English whatever the
    /// host's locale.
    fn exec(&self, args: &[&str], stdin: Option<&str>) -> io::Result<std::process::Output> {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .env("LC_ALL", "C")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let Some(input) = stdin else {
            return command.stdin(Stdio::null()).output();
        };
        let mut child = command.stdin(Stdio::piped()).spawn()?;
        let pipe = child.stdin.take();
        // Written from a thread of its own while the output is read, so a
        // large batch cannot fill stdin while `ip` waits on a full stderr.
        std::thread::scope(|scope| {
            if let Some(mut pipe) = pipe {
                scope.spawn(move || {
                    // A failed write (ip exited early) shows in its status
                    // and stderr.
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })
    }

    fn spawn_error(&self, ifname: &str, ip: IpAddr, source: &io::Error) -> VipError {
        VipError::Spawn {
            program: self.program.clone(),
            ifname: ifname.to_owned(),
            ip,
            source: io::Error::new(source.kind(), source.to_string()),
        }
    }

    /// Every address on `ifname`, both families; a failure is reported
    /// against each of `ips`.
    fn addresses(&self, ifname: &str, ips: &[IpAddr]) -> Result<BTreeSet<IpAddr>, Vec<VipError>> {
        let args = ["-o", "addr", "show", "dev", ifname];
        let output = self.exec(&args, None).map_err(|e| {
            ips.iter()
                .map(|ip| self.spawn_error(ifname, *ip, &e))
                .collect::<Vec<_>>()
        })?;
        if output.status.success() {
            return Ok(parse_addresses(&String::from_utf8_lossy(&output.stdout)));
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(ips
            .iter()
            .map(|ip| VipError::Command {
                command: format!("{} {}", self.program.display(), args.join(" ")),
                ifname: ifname.to_owned(),
                ip: *ip,
                status: output.status.to_string(),
                stderr: stderr.clone(),
            })
            .collect())
    }

    /// Runs `lines` (one `ip` command each, without the program name)
    /// through one `ip -force -batch -`, which goes on past a failing line.
    /// Returns, per line, `None` or the error `ip` printed for it (as
    /// `VipError::Command` for `ips[i]`); or every line failed to run.
    fn batch(&self, ifname: &str, ips: &[IpAddr], lines: &[String]) -> Vec<Option<VipError>> {
        let mut input = lines.join("\n");
        input.push('\n');
        let output = match self.exec(&["-force", "-batch", "-"], Some(&input)) {
            Ok(output) => output,
            Err(e) => {
                return ips
                    .iter()
                    .map(|ip| Some(self.spawn_error(ifname, *ip, &e)))
                    .collect()
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut failures = batch_failures(&stderr, lines.len());
        if !output.status.success() && failures.iter().all(Option::is_none) {
            // It failed without naming a line: count every line as failed.
            failures = vec![Some(stderr.trim().to_owned()); lines.len()];
        }
        failures
            .into_iter()
            .zip(ips.iter().zip(lines))
            .map(|(failure, (ip, line))| {
                failure.map(|stderr| VipError::Command {
                    command: format!("{} -force -batch - (line: {line})", self.program.display()),
                    ifname: ifname.to_owned(),
                    ip: *ip,
                    status: output.status.to_string(),
                    stderr,
                })
            })
            .collect()
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

impl AddressOps for IpCommand {
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
        if ips.is_empty() || check_ifname(ifname).is_err() {
            return ips.iter().map(|_| Err(invalid_interface(ifname))).collect();
        }
        let present = match self.addresses(ifname, ips) {
            Ok(present) => present,
            Err(errors) => return errors.into_iter().map(Err).collect(),
        };
        let missing: Vec<IpAddr> = ips
            .iter()
            .filter(|ip| !present.contains(ip))
            .copied()
            .collect();
        let lines: Vec<String> = missing
            .iter()
            .map(|ip| {
                let (prefixed, extra) = host_address(*ip);
                let extra = extra.map(|e| format!(" {e}")).unwrap_or_default();
                format!("addr add {prefixed} dev {ifname}{extra}")
            })
            .collect();
        let mut failed: BTreeMap<IpAddr, VipError> = BTreeMap::new();
        if !lines.is_empty() {
            for (ip, failure) in missing.iter().zip(self.batch(ifname, &missing, &lines)) {
                if let Some(e) = failure {
                    failed.insert(*ip, e);
                }
            }
        }
        // Someone else added one between our look and our add: theirs.
        let now = if failed.is_empty() {
            BTreeSet::new()
        } else {
            self.addresses(ifname, &[]).unwrap_or_default()
        };
        ips.iter()
            .map(|ip| match failed.remove(ip) {
                Some(_) if now.contains(ip) => Ok(false),
                Some(e) => Err(e),
                None => Ok(!present.contains(ip)),
            })
            .collect()
    }

    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
        if ips.is_empty() || check_ifname(ifname).is_err() {
            return ips.iter().map(|_| Err(invalid_interface(ifname))).collect();
        }
        // The addresses went with their interface.
        if nix::net::if_::if_nametoindex(ifname) == Err(nix::errno::Errno::ENODEV) {
            return ips.iter().map(|_| Ok(())).collect();
        }
        let lines: Vec<String> = ips
            .iter()
            .map(|ip| format!("addr del {} dev {ifname}", host_address(*ip).0))
            .collect();
        let failures = self.batch(ifname, ips, &lines);
        // An address already gone is not an error.
        let now = if failures.iter().all(Option::is_none) {
            None
        } else {
            self.addresses(ifname, &[]).ok()
        };
        ips.iter()
            .zip(failures)
            .map(|(ip, failure)| match failure {
                None => Ok(()),
                Some(_) if now.as_ref().is_some_and(|now| !now.contains(ip)) => Ok(()),
                Some(e) => Err(e),
            })
            .collect()
    }

    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
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
}

/// The VIP as a host address; IPv6 skips duplicate address detection so the
/// address is usable at once instead of after a second or more.
fn host_address(ip: IpAddr) -> (String, Option<&'static str>) {
    match ip {
        IpAddr::V4(v4) => (format!("{v4}/32"), None),
        IpAddr::V6(v6) => (format!("{v6}/128"), Some("nodad")),
    }
}

/// Addresses in `ip -o addr show` output (`... inet 192.0.2.1/24 ...`,
/// `... inet 10.0.0.1 peer 10.0.0.2/32 ...`).
fn parse_addresses(output: &str) -> BTreeSet<IpAddr> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            let addr = words.next()?;
            addr.split('/').next()?.parse().ok()
        })
        .collect()
}

/// The error `ip -force -batch` printed for each of `lines` lines: the
/// lines it prints before `Command failed -:N` belong to line N.
fn batch_failures(stderr: &str, lines: usize) -> Vec<Option<String>> {
    let mut failures = vec![None; lines];
    let mut message: Vec<&str> = Vec::new();
    for text in stderr.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let failed_line = text
            .strip_prefix("Command failed -:")
            .and_then(|n| n.trim().parse::<usize>().ok());
        match failed_line {
            Some(n) => {
                if let Some(slot) = n.checked_sub(1).and_then(|i| failures.get_mut(i)) {
                    *slot = Some(if message.is_empty() {
                        "failed".to_owned()
                    } else {
                        message.join("; ")
                    });
                }
                message.clear();
            }
            None => message.push(text),
        }
    }
    failures
}

/// Interface names end up in argv and in socket options; reject anything
/// the kernel would not accept as a name.
fn check_ifname(ifname: &str) -> Result<(), VipError> {
    let valid = !ifname.is_empty()
        && ifname.len() < IFNAMSIZ
        && ifname != "."
        && ifname != ".."
        && !ifname.starts_with('-')
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
fn ethernet_link(ifname: &str, ip: IpAddr) -> Result<Option<(u32, [u8; 6], Socket)>, VipError> {
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

/// Sends the repeats as they fall due; ends when the [`IpCommand`] is gone
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

/// One call made to a [`FakeAddressOps`].
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// `add(ifname, ip)`.
    Add(String, IpAddr),
    /// `remove(ifname, ip)`.
    Remove(String, IpAddr),
    /// `announce(ifname, ip)`.
    Announce(String, IpAddr),
}

#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
struct FakeState {
    present: BTreeSet<(String, IpAddr)>,
    failing: BTreeSet<IpAddr>,
    failing_announce: BTreeSet<IpAddr>,
    calls: Vec<FakeCall>,
}

/// An [`AddressOps`] that only keeps books: which addresses are "on" which
/// interface, and every call made, for tests of code using [`VipManager`].
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FakeAddressOps {
    state: std::sync::Mutex<FakeState>,
}

#[cfg(any(test, feature = "testing"))]
impl FakeAddressOps {
    /// No addresses anywhere, nothing failing.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has already failed;
        // the books are still readable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `ip` on `ifname` as if someone else had.
    pub fn set_present(&self, ifname: &str, ip: IpAddr) {
        self.state().present.insert((ifname.to_owned(), ip));
    }

    /// Whether `ip` is on `ifname`.
    pub fn is_present(&self, ifname: &str, ip: IpAddr) -> bool {
        self.state().present.contains(&(ifname.to_owned(), ip))
    }

    /// Makes every add and remove of `ip` fail (or succeed again).
    pub fn set_failing(&self, ip: IpAddr, failing: bool) {
        let mut state = self.state();
        if failing {
            state.failing.insert(ip);
        } else {
            state.failing.remove(&ip);
        }
    }

    /// Makes announcing `ip` fail.
    pub fn set_announce_failing(&self, ip: IpAddr) {
        self.state().failing_announce.insert(ip);
    }

    /// Returns and clears the calls made so far.
    pub fn take_calls(&self) -> Vec<FakeCall> {
        std::mem::take(&mut self.state().calls)
    }

    fn fail(op: &str, ifname: &str, ip: IpAddr) -> VipError {
        VipError::Command {
            command: format!("fake {op}"),
            ifname: ifname.to_owned(),
            ip,
            status: "exit status: 2".to_owned(),
            stderr: "injected failure".to_owned(),
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl AddressOps for FakeAddressOps {
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
        let mut state = self.state();
        ips.iter()
            .map(|&ip| {
                state.calls.push(FakeCall::Add(ifname.to_owned(), ip));
                if state.failing.contains(&ip) {
                    return Err(Self::fail("add", ifname, ip));
                }
                Ok(state.present.insert((ifname.to_owned(), ip)))
            })
            .collect()
    }

    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
        let mut state = self.state();
        ips.iter()
            .map(|&ip| {
                state.calls.push(FakeCall::Remove(ifname.to_owned(), ip));
                if state.failing.contains(&ip) {
                    return Err(Self::fail("remove", ifname, ip));
                }
                state.present.remove(&(ifname.to_owned(), ip));
                Ok(())
            })
            .collect()
    }

    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
        let mut state = self.state();
        state.calls.push(FakeCall::Announce(ifname.to_owned(), ip));
        if state.failing_announce.contains(&ip) {
            return Err(Self::fail("announce", ifname, ip));
        }
        Ok(())
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

    /// Straight to the stderr descriptor: the test harness captures
    /// `eprintln!` of passing tests, and a skip must be seen.
    fn loud_skip(what: &str) {
        use std::io::Write as _;
        let _ = writeln!(io::stderr(), "\n*** SKIPPED: {what} ***\n");
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
            matches!(&errors[0], VipError::Command { ip: a, ifname, .. } if *a == ip("192.0.2.10") && ifname == "eth0")
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

    #[test]
    fn parses_ip_addr_show_output() {
        let out = "2: eth0    inet 192.0.2.1/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever\n\
                   2: eth0    inet 10.0.0.1 peer 10.0.0.2/32 scope global eth0\n\
                   2: eth0    inet6 2001:db8::10/128 scope global nodad \\       valid_lft forever\n\
                   garbage line\n";
        assert_eq!(
            parse_addresses(out),
            set(&["192.0.2.1", "10.0.0.1", "2001:db8::10"])
        );
    }

    #[test]
    fn interface_names_are_checked() {
        for good in ["eth0", "veth-a.10", "bond0", "enp0s31f6"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "with space",
            "-bad",
            "sixteen_chars_xx",
        ] {
            assert!(
                matches!(check_ifname(bad), Err(VipError::InvalidInterface { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn batch_errors_belong_to_the_line_ip_names() {
        let stderr = "Error: ipv4: Address already assigned.\nCommand failed -:3\n\
                      Cannot find device \"nosuch\"\nCommand failed -:5\n";
        assert_eq!(
            batch_failures(stderr, 5),
            [
                None,
                None,
                Some("Error: ipv4: Address already assigned.".to_owned()),
                None,
                Some("Cannot find device \"nosuch\"".to_owned()),
            ]
        );
        // A line number outside the batch names nothing; a message never
        // followed by a line number is not pinned on any line.
        assert_eq!(
            batch_failures("Command failed -:9\noops\n", 2),
            [None, None]
        );
        assert_eq!(
            batch_failures("Command failed -:1\n", 1),
            [Some("failed".to_owned())]
        );
    }

    #[test]
    fn ip_command_rejects_bad_names_before_running_anything() {
        let ops = IpCommand::with_program("/nonexistent/ip");
        assert!(matches!(
            ops.add_all("a b", &[ip("192.0.2.1")]).as_slice(),
            [Err(VipError::InvalidInterface { .. })]
        ));
        assert!(matches!(
            ops.add_all("eth0", &[ip("192.0.2.1")]).as_slice(),
            [Err(VipError::Spawn { .. })]
        ));
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

    /// Tests in network namespaces of their own, joined by a veth pair.
    mod netns {
        use super::*;
        use std::fs::File;
        use std::io::Read as _;
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsFd;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const DEADLINE: Duration = Duration::from_secs(20);
        const ETH_P_IPV6: u16 = 0x86dd;

        /// Namespaces this test created; deleted on drop, panic or not.
        struct Namespaces(Vec<String>);

        impl Drop for Namespaces {
            fn drop(&mut self) {
                for name in &self.0 {
                    let _ = Command::new(ip_program())
                        .args(["netns", "del", name])
                        .status();
                }
            }
        }

        fn ip_program() -> PathBuf {
            IpCommand::new().program
        }

        fn skip(test: &str, why: &str) -> Option<Namespaces> {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {why} (CI=true, so this is a failure, not a skip)");
            }
            loud_skip(&format!("{test}: {why}"));
            None
        }

        /// Creates `count` fresh namespaces, or says why it cannot.
        fn namespaces(test: &str, count: usize) -> Option<Namespaces> {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            if !nix::unistd::geteuid().is_root() {
                return skip(test, "needs root to create network namespaces");
            }
            let mut created = Namespaces(Vec::new());
            for _ in 0..count {
                let name = format!(
                    "portico-t{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                match Command::new(ip_program())
                    .args(["netns", "add", &name])
                    .output()
                {
                    Ok(out) if out.status.success() => created.0.push(name),
                    Ok(out) => {
                        let why = format!(
                            "cannot create a network namespace: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        return skip(test, why.trim());
                    }
                    Err(e) => return skip(test, &format!("cannot run ip: {e}")),
                }
            }
            Some(created)
        }

        fn ip_cmd(args: &[&str]) -> String {
            let out = Command::new(ip_program())
                .args(args)
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        fn addresses_in(ns: &str, ifname: &str) -> BTreeSet<IpAddr> {
            parse_addresses(&ip_cmd(&["-n", ns, "-o", "addr", "show", "dev", ifname]))
        }

        /// Runs `f` on a thread of its own that has entered namespace `ns`;
        /// sockets it creates stay in `ns` wherever they are used later.
        fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/run/netns/{ns}");
            std::thread::spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }

        /// An AF_PACKET socket receiving `ethertype` frames on `ifname`.
        fn capture(ifname: &str, ethertype: u16) -> Socket {
            let index = nix::net::if_::if_nametoindex(ifname).expect("interface index");
            let proto = Protocol::from(i32::from(ethertype.to_be()));
            let socket =
                Socket::new(Domain::PACKET, Type::RAW, Some(proto)).expect("AF_PACKET socket");
            socket
                .bind(&sys::packet_sockaddr(index, ethertype, [0; 6]))
                .expect("bind capture");
            socket
        }

        /// The IPv4 address a frame announces, if it is a gratuitous ARP
        /// request from `mac`.
        fn garp_for(frame: &[u8], mac: [u8; 6]) -> Option<Ipv4Addr> {
            let ok = frame.len() >= 42
                && frame[0..6] == BROADCAST
                && frame[6..12] == mac
                && frame[12..14] == ETH_P_ARP.to_be_bytes()
                && frame[20..22] == ARP_REQUEST.to_be_bytes()
                && frame[22..28] == mac
                && frame[28..32] == frame[38..42];
            let spa: [u8; 4] = frame.get(28..32)?.try_into().ok()?;
            ok.then_some(Ipv4Addr::from(spa))
        }

        /// The target of a frame that is an unsolicited NA from `mac` to all
        /// nodes, valid as a receiver would check it (hop limit 255, ICMPv6
        /// checksum, override flag, target link-layer address option).
        fn unsolicited_na_for(frame: &[u8], mac: [u8; 6]) -> Option<Ipv6Addr> {
            let ip6 = frame.get(14..54)?;
            let icmp = frame.get(54..54 + usize::from(u16::from_be_bytes([ip6[4], ip6[5]])))?;
            let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
            let ok = frame[6..12] == mac
                && ip6[6] == 58
                && ip6[7] == 255
                && ip6[24..40] == all_nodes
                && icmp.len() == 32
                && icmp[0] == ICMPV6_NEIGHBOR_ADVERTISEMENT
                && icmp[4] == NA_OVERRIDE
                && icmp[24..26] == [ND_OPT_TARGET_LINK_ADDR, 1]
                && icmp[26..32] == mac
                && icmpv6_checksum_ok(&ip6[8..24], &ip6[24..40], icmp);
            let target: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
            ok.then_some(Ipv6Addr::from(target))
        }

        fn icmpv6_checksum_ok(src: &[u8], dst: &[u8], msg: &[u8]) -> bool {
            let mut pseudo = Vec::with_capacity(40 + msg.len() + 1);
            pseudo.extend_from_slice(src);
            pseudo.extend_from_slice(dst);
            pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(msg);
            if pseudo.len() % 2 == 1 {
                pseudo.push(0);
            }
            let mut sum: u32 = pseudo
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            sum == 0xffff
        }

        /// One frame, or `None` once the deadline has passed.
        fn read_frame(socket: &Socket, deadline: Instant, buf: &mut [u8]) -> Option<usize> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            socket.set_read_timeout(Some(left)).ok()?;
            (&*socket).read(buf).ok()
        }

        /// Reads frames until `want` of them match, or the deadline passes;
        /// returns every match seen.
        fn collect<T: PartialEq>(
            socket: &Socket,
            want: &T,
            count: usize,
            parse: impl Fn(&[u8]) -> Option<T>,
        ) -> Vec<T> {
            let deadline = Instant::now() + DEADLINE;
            let mut buf = [0u8; 2048];
            let mut seen = Vec::new();
            while seen.iter().filter(|s| *s == want).count() < count {
                let Some(n) = read_frame(socket, deadline, &mut buf) else {
                    break;
                };
                seen.extend(parse(&buf[..n]));
            }
            seen
        }

        fn accept_within_deadline(listener: &TcpListener) -> SocketAddr {
            let deadline = Instant::now() + DEADLINE;
            loop {
                match listener.accept() {
                    Ok((_, peer)) => return peer,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        assert!(!left.is_zero(), "no connection before the deadline");
                        let mut fds = [nix::poll::PollFd::new(
                            listener.as_fd(),
                            nix::poll::PollFlags::POLLIN,
                        )];
                        let timeout = nix::poll::PollTimeout::try_from(left)
                            .unwrap_or(nix::poll::PollTimeout::MAX);
                        let _ = nix::poll::poll(&mut fds, timeout);
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }

        #[test]
        fn vips_go_up_are_announced_serve_and_go_away() {
            let test = "vips_go_up_are_announced_serve_and_go_away";
            let Some(ns) = namespaces(test, 2) else {
                return;
            };
            let (a, b) = (ns.0[0].clone(), ns.0[1].clone());
            ip_cmd(&[
                "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
            ]);
            for (n, dev) in [(&a, "va"), (&a, "lo"), (&b, "vb"), (&b, "lo")] {
                ip_cmd(&["-n", n, "link", "set", dev, "up"]);
            }
            ip_cmd(&["-n", &a, "addr", "add", "192.0.2.1/24", "dev", "va"]);
            ip_cmd(&["-n", &b, "addr", "add", "192.0.2.2/24", "dev", "vb"]);
            ip_cmd(&[
                "-n",
                &a,
                "addr",
                "add",
                "2001:db8::1/64",
                "dev",
                "va",
                "nodad",
            ]);
            ip_cmd(&[
                "-n",
                &b,
                "addr",
                "add",
                "2001:db8::2/64",
                "dev",
                "vb",
                "nodad",
            ]);
            // Someone else's address that the configuration also wants.
            ip_cmd(&["-n", &a, "addr", "add", "192.0.2.50/32", "dev", "va"]);

            let (vip4, vip6, other) = (ip("192.0.2.10"), ip("2001:db8::10"), ip("192.0.2.50"));
            let (IpAddr::V4(vip4_v4), IpAddr::V6(vip6_v6)) = (vip4, vip6) else {
                unreachable!()
            };

            // Listening before anything is announced: B's end sees it all.
            let (arp, nd) = in_netns(&b, || (capture("vb", ETH_P_ARP), capture("vb", ETH_P_IPV6)));

            let started = Instant::now();
            let (l4, l6, mut manager, errors, mac) = in_netns(&a, move || {
                // Listeners first: the VIPs do not exist yet.
                let l4 = bind_listener(SocketAddr::new(vip4, 0), 16)
                    .expect("bind before the VIP exists");
                let l6 = bind_listener(SocketAddr::new(vip6, 0), 16)
                    .expect("bind before the VIP exists");
                let ops =
                    IpCommand::new().with_announcements(ANNOUNCE_COUNT, Duration::from_millis(50));
                let mut manager = VipManager::new(ops);
                let errors = manager.reconcile(Some("va"), &BTreeSet::from([vip4, vip6, other]));
                let (_, mac, _) = ethernet_link("va", vip4)
                    .unwrap()
                    .expect("veth is Ethernet");
                (l4, l6, manager, errors, mac)
            });
            assert!(errors.is_empty(), "{errors:?}");
            let on_a = addresses_in(&a, "va");
            assert!(
                on_a.contains(&vip4) && on_a.contains(&vip6) && on_a.contains(&other),
                "{on_a:?}"
            );
            assert_eq!(manager.foreign().collect::<Vec<_>>(), [("va", other)]);

            let garps = collect(&arp, &vip4_v4, 3, |f| garp_for(f, mac));
            assert_eq!(
                garps.iter().filter(|g| **g == vip4_v4).count(),
                3,
                "three gratuitous ARPs: {garps:?}"
            );
            let nas = collect(&nd, &vip6_v6, 3, |f| unsolicited_na_for(f, mac));
            assert!(
                nas.iter().filter(|t| **t == vip6_v6).count() >= 3,
                "three advertisements: {nas:?}"
            );
            assert!(
                !garps.iter().any(|g| IpAddr::V4(*g) == other),
                "the pre-existing address is not announced"
            );
            eprintln!("announcements seen after {:?}", started.elapsed());

            // B reaches both VIPs through the listeners bound before they existed.
            let (p4, p6) = (l4.local_addr().unwrap(), l6.local_addr().unwrap());
            let clients = in_netns(&b, move || {
                [p4, p6].map(|to| {
                    TcpStream::connect_timeout(&to, DEADLINE).map(|s| s.local_addr().unwrap())
                })
            });
            let [c4, c6] = clients.map(|c| c.expect("connect from B"));
            assert_eq!(accept_within_deadline(&l4), c4);
            assert_eq!(accept_within_deadline(&l6), c6);

            // No longer wanted: ours go, the other stays.
            let (mut manager, errors) = in_netns(&a, move || {
                let errors = manager.reconcile(Some("va"), &BTreeSet::new());
                (manager, errors)
            });
            assert!(errors.is_empty(), "{errors:?}");
            let on_a = addresses_in(&a, "va");
            assert!(!on_a.contains(&vip4) && !on_a.contains(&vip6), "{on_a:?}");
            assert!(
                on_a.contains(&other),
                "never removes what it did not add: {on_a:?}"
            );
            let errors = in_netns(&a, move || manager.release_all());
            assert!(errors.is_empty(), "{errors:?}");
            assert!(addresses_in(&a, "va").contains(&other));

            // A missing interface is an error carrying ip's own message.
            let errors = in_netns(&a, move || {
                VipManager::new(IpCommand::new()).reconcile(Some("nope0"), &BTreeSet::from([vip4]))
            });
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                matches!(&errors[0], VipError::Command { stderr, ifname, .. } if stderr.contains("nope0") && ifname == "nope0"),
                "{:?}",
                errors[0]
            );
            eprintln!("{test} took {:?}", started.elapsed());
        }

        #[test]
        fn batches_add_and_remove_many_and_name_each_failure() {
            let test = "batches_add_and_remove_many_and_name_each_failure";
            let Some(ns) = namespaces(test, 1) else {
                return;
            };
            let a = ns.0[0].clone();
            ip_cmd(&[
                "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
            ]);
            ip_cmd(&["-n", &a, "link", "set", "va", "up"]);
            // Someone else's address.
            ip_cmd(&["-n", &a, "addr", "add", "192.0.2.50/32", "dev", "va"]);
            let ops = Arc::new(IpCommand::new().with_announcements(0, Duration::ZERO));

            let wanted = [
                ip("192.0.2.10"),
                ip("192.0.2.50"),
                ip("2001:db8::10"),
                ip("192.0.2.11"),
            ];
            let results = {
                let ops = Arc::clone(&ops);
                in_netns(&a, move || ops.add_all("va", &wanted))
            };
            let added: Vec<bool> = results.into_iter().map(|r| r.expect("added")).collect();
            assert_eq!(added, [true, false, true, true]);
            assert!(addresses_in(&a, "va").is_superset(&BTreeSet::from(wanted)));

            // One removed behind its back is not an error; the other address stays.
            ip_cmd(&["-n", &a, "addr", "del", "192.0.2.11/32", "dev", "va"]);
            let gone = [ip("192.0.2.10"), ip("192.0.2.11"), ip("2001:db8::10")];
            let results = {
                let ops = Arc::clone(&ops);
                in_netns(&a, move || ops.remove_all("va", &gone))
            };
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let left = addresses_in(&a, "va");
            assert!(left.contains(&ip("192.0.2.50")), "{left:?}");
            assert!(gone.iter().all(|g| !left.contains(g)), "{left:?}");

            // With IPv6 off on the link, every IPv6 line fails and only
            // those: 2,000 failing lines print more than a pipe holds.
            let out = Command::new(ip_program())
                .args([
                    "netns",
                    "exec",
                    &a,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.va.disable_ipv6=1",
                ])
                .output()
                .expect("run sysctl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut mixed: Vec<IpAddr> = (1..=2000u32)
                .map(|i| {
                    IpAddr::V6(Ipv6Addr::from(
                        0x2001_0db8_0000_0000_0000_0000_0001_0000u128 + u128::from(i),
                    ))
                })
                .collect();
            mixed.insert(1000, ip("198.18.0.1"));
            let results = {
                let ops = Arc::clone(&ops);
                let mixed = mixed.clone();
                in_netns(&a, move || ops.add_all("va", &mixed))
            };
            assert_eq!(results.len(), mixed.len());
            for (ip, result) in mixed.iter().zip(&results) {
                match (ip, result) {
                    (IpAddr::V4(_), Ok(true)) => {}
                    (
                        IpAddr::V6(_),
                        Err(VipError::Command {
                            ip: failed, stderr, ..
                        }),
                    ) => {
                        assert_eq!(failed, ip);
                        assert!(!stderr.is_empty());
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert!(addresses_in(&a, "va").contains(&ip("198.18.0.1")));
        }

        #[test]
        fn announcing_on_loopback_is_a_no_op_and_missing_interfaces_are_errors() {
            let test = "announcing_on_loopback_is_a_no_op_and_missing_interfaces_are_errors";
            let Some(ns) = namespaces(test, 1) else {
                return;
            };
            let a = ns.0[0].clone();
            ip_cmd(&["-n", &a, "link", "set", "lo", "up"]);
            let (lo, missing) = in_netns(&a, || {
                let ops = IpCommand::new();
                (
                    ops.announce("lo", ip("192.0.2.10")),
                    ops.announce("nope0", ip("2001:db8::10")),
                )
            });
            assert!(lo.is_ok(), "{lo:?}");
            assert!(
                matches!(missing, Err(VipError::InterfaceNotFound { .. })),
                "{missing:?}"
            );
        }
    }
}
