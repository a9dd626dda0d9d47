//! [`AddressOps`] on the real system: the addresses through rtnetlink, the
//! announcements through [`super::announce`].
//!
//! The kernel's answers are typed, per address: `RTM_NEWADDR` with
//! `NLM_F_EXCL` fails with `EEXIST` when the address is already there,
//! `RTM_DELADDR` with `EADDRNOTAVAIL` (or `ENOENT`) when it is already gone,
//! and any other failure comes back as that address's errno, with the
//! kernel's own explanation (its extended ack) when it gives one.
//!
//! The messages are rtnetlink's (built with its `AddressMessageBuilder` and
//! `netlink-packet-route`'s types) and go through rtnetlink's own connection
//! layer (`rtnetlink::proto`), not its request types: those send one message
//! per datagram and wait for its answer, where a Service set-up adds
//! hundreds of addresses. Here they go [`BATCH`] to a datagram, and the
//! kernel answers each in turn.
//!
//! [`AddressOps`] is synchronous and acts in the network namespace of the
//! calling thread; rtnetlink is async. So each call opens its own netlink
//! socket on a short-lived thread of its own, running a current-thread
//! runtime: a thread starts in the network namespace of the thread that
//! spawned it, so the socket talks to the caller's namespace, and the call
//! works the same from a plain thread, a `block_in_place` section of the
//! edge's control task, or inside a current-thread runtime (where a runtime
//! cannot be entered again). A reconcile makes at most two calls per
//! interface, and the thread, runtime and socket cost well under a
//! millisecond next to the addresses themselves.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::{Stream, StreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    ErrorMessage, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::AddressMessageBuilder;

use super::announce::Announcer;
use super::{check_ifname, invalid_interface, AddressOps, VipError};

/// Messages per datagram. The kernel handles a datagram's messages while
/// it is being sent and queues an answer to each before the first can be
/// read, so this bounds the answers waiting in the socket's receive buffer;
/// an answer that does not fit is dropped, and its message fails after
/// [`REQUEST_TIMEOUT`]. With the default 208 KiB buffer, 256 answers fit
/// and 512 did not (Linux 6.18, refusals included): 128 leaves room.
const BATCH: usize = 128;

/// How long one request may wait for the kernel's answer. The kernel
/// answers at once; this only bounds a call whose answer was lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

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

/// Runs `work` with a fresh [`Session`] on a thread of its own (see the
/// module doc); `Err` when the thread, runtime or socket could not be made.
fn on_netlink_thread<T: Send>(work: impl AsyncFnOnce(&Session) -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("vip-netlink".to_owned())
            .spawn_scoped(scope, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()?;
                runtime.block_on(async move {
                    let session = Session::open()?;
                    Ok(work(&session).await)
                })
            })?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One netlink socket to the calling thread's network namespace, its
/// connection driven by the runtime it was opened in.
struct Session {
    handle: ConnectionHandle<RouteNetlinkMessage>,
    /// Whether failures carry only the request's header and the kernel's
    /// extended ack (`NETLINK_CAP_ACK` and `NETLINK_EXT_ACK` took).
    ext_ack: bool,
}

impl Session {
    /// Must be called inside a runtime, which then drives the connection.
    fn open() -> io::Result<Session> {
        let (mut connection, handle, _unsolicited) =
            rtnetlink::proto::new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE)?;
        let socket = connection.socket_mut().socket_mut();
        // Without these (kernels before 4.12) a failure is still typed,
        // only without the kernel's message.
        let ext_ack = socket.set_cap_ack(true).is_ok() && socket.set_ext_ack(true).is_ok();
        // Every message of a batch answered, successes too, so that the
        // answers line up with the messages.
        connection.set_forward_ack(true);
        tokio::spawn(connection);
        Ok(Session { handle, ext_ack })
    }

    /// The index of interface `ifname`, `None` when there is none.
    async fn link_index(&self, ifname: &str) -> Result<Option<u32>, NetlinkError> {
        let mut link = LinkMessage::default();
        link.attributes
            .push(LinkAttribute::IfName(ifname.to_owned()));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
        request.header.flags = NLM_F_REQUEST;
        match self.request(request).await {
            Ok(answers) => Ok(answers.into_iter().find_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

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

    /// Sends one request (a lookup or a dump) and returns what it answered.
    async fn request(
        &self,
        request: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut answers = self
            .handle
            .request(request, SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::Other(io::Error::other(e.to_string())))?;
        let mut messages = Vec::new();
        while let Some(answer) = self.next(&mut answers).await.map_err(NetlinkError::Other)? {
            match answer.payload {
                NetlinkPayload::InnerMessage(message) => messages.push(message),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(self.refused(&error))
                }
                _ => {}
            }
        }
        Ok(messages)
    }

    /// Sends `messages` in datagrams of [`BATCH`] and returns the kernel's
    /// answer to each, in order: the kernel handles a datagram's messages
    /// one after the other and answers each (`NLM_F_ACK`).
    async fn batch(
        &self,
        messages: impl Iterator<Item = NetlinkMessage<RouteNetlinkMessage>>,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut messages = messages.peekable();
        let mut results = Vec::new();
        while messages.peek().is_some() {
            let datagram: Vec<_> = messages.by_ref().take(BATCH).collect();
            let sent = datagram.len();
            let mut answered = Vec::with_capacity(sent);
            let failure = match self.handle.request_batch(datagram, SocketAddr::new(0, 0)) {
                Err(e) => Some(io::Error::other(e.to_string())),
                Ok(mut answers) => loop {
                    match self.next(&mut answers).await {
                        Ok(Some(answer)) => answered.push(match answer.payload {
                            NetlinkPayload::Error(error) if error.code.is_some() => {
                                Err(self.refused(&error))
                            }
                            NetlinkPayload::Error(_) => Ok(()),
                            other => Err(NetlinkError::Other(io::Error::other(format!(
                                "unexpected answer: {other:?}"
                            )))),
                        }),
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                },
            };
            // The exchange broke off: the messages left without an answer
            // failed with it.
            answered.truncate(sent);
            while answered.len() < sent {
                let why = match &failure {
                    Some(e) => io::Error::new(e.kind(), e.to_string()),
                    None => io::Error::other("no answer from the kernel"),
                };
                answered.push(Err(NetlinkError::Other(why)));
            }
            results.extend(answered);
        }
        results
    }

    /// The next answer of `answers`; a timeout once [`REQUEST_TIMEOUT`]
    /// has passed without one.
    async fn next(
        &self,
        answers: &mut (impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + Unpin),
    ) -> io::Result<Option<NetlinkMessage<RouteNetlinkMessage>>> {
        tokio::time::timeout(REQUEST_TIMEOUT, answers.next())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the kernel within {REQUEST_TIMEOUT:?}"),
                )
            })
    }

    /// The kernel's refusal, typed, with its message when it gave one.
    fn refused(&self, error: &ErrorMessage) -> NetlinkError {
        NetlinkError::Kernel {
            errno: error.to_io(),
            kernel_message: self.ext_ack.then(|| ext_ack_message(error)).flatten(),
        }
    }
}

/// What went wrong with one netlink request.
#[derive(Debug)]
enum NetlinkError {
    /// The kernel refused it.
    Kernel {
        errno: io::Error,
        kernel_message: Option<String>,
    },
    /// The exchange itself failed (connection closed, no answer).
    Other(io::Error),
}

impl NetlinkError {
    fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => errno.raw_os_error(),
            NetlinkError::Other(_) => None,
        }
    }

    fn into_io(self) -> io::Error {
        match self {
            NetlinkError::Kernel {
                errno,
                kernel_message: Some(message),
            } => io::Error::new(errno.kind(), format!("{errno}: {message}")),
            NetlinkError::Kernel { errno, .. } => errno,
            NetlinkError::Other(e) => e,
        }
    }

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

/// The kernel's message in a failure's extended ack. With
/// `NETLINK_CAP_ACK`, the failure carries the request's 16-byte header
/// and then the ack's attributes.
fn ext_ack_message(error: &ErrorMessage) -> Option<String> {
    const HEADER: usize = 16;
    let attributes = error.header.get(HEADER..)?;
    NlasIterator::new(attributes)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            String::from_utf8_lossy(text).into_owned()
        })
        .filter(|text| !text.is_empty())
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
    fn the_kernel_message_comes_from_the_extended_ack() {
        // The request's header (16 bytes), then NLMSGERR_ATTR_MSG.
        let mut header = vec![0u8; 16];
        let text = b"IPv6 is disabled on this device\0";
        let len = 4 + text.len();
        header.extend_from_slice(&(len as u16).to_ne_bytes());
        header.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        header.extend_from_slice(text);
        header.resize(16 + len.next_multiple_of(4), 0);
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::EACCES);
        error.header = header;
        assert_eq!(
            ext_ack_message(&error).as_deref(),
            Some("IPv6 is disabled on this device")
        );
        let mut bare = ErrorMessage::default();
        bare.code = std::num::NonZeroI32::new(-libc::EACCES);
        bare.header = vec![0u8; 16];
        assert_eq!(ext_ack_message(&bare), None);
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
