//! One rtnetlink session for the edge's kernel work (the VIPs on their
//! interface, the announced routes): requests sent in batches, each
//! answered, failures typed with the kernel's own explanation.
//!
//! The messages are rtnetlink's (`netlink-packet-route`'s types) and go
//! through rtnetlink's own connection layer (`rtnetlink::proto`), not its
//! request types: those send one message per datagram and wait for its
//! answer, where a Service set-up adds hundreds of addresses. Here they go
//! [`BATCH`] to a datagram, and the kernel answers each in turn.
//!
//! The callers are synchronous and act in the network namespace of the
//! calling thread; rtnetlink is async. So each call opens its own netlink
//! socket on a short-lived thread of its own, running a current-thread
//! runtime: a thread starts in the network namespace of the thread that
//! spawned it, so the socket talks to the caller's namespace, and the call
//! works the same from a plain thread, a `block_in_place` section of the
//! edge's control task, or inside a current-thread runtime (where a runtime
//! cannot be entered again). The thread, runtime and socket cost well under
//! a millisecond.

use std::io;
use std::time::Duration;

use futures::{Stream, StreamExt};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    ErrorMessage, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_REQUEST,
};
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{AsyncSocket as _, SocketAddr};

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

/// Runs `work` with a fresh [`Session`] on a thread of its own (see the
/// module doc); `Err` when the thread, runtime or socket could not be made.
pub(crate) fn on_netlink_thread<T: Send>(
    work: impl AsyncFnOnce(&Session) -> T + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("rtnetlink".to_owned())
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
pub(crate) struct Session {
    handle: ConnectionHandle<RouteNetlinkMessage>,
    /// Whether failures carry only the request's header and the kernel's
    /// extended ack (`NETLINK_CAP_ACK` and `NETLINK_EXT_ACK` took).
    ext_ack: bool,
}

impl Session {
    /// Must be called inside a runtime, which then drives the connection.
    pub(crate) fn open() -> io::Result<Session> {
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
    pub(crate) async fn link_index(&self, ifname: &str) -> Result<Option<u32>, NetlinkError> {
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

    /// Sends one request (a lookup or a dump) and returns what it answered.
    pub(crate) async fn request(
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
    pub(crate) async fn batch(
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
pub(crate) enum NetlinkError {
    /// The kernel refused it.
    Kernel {
        errno: io::Error,
        kernel_message: Option<String>,
    },
    /// The exchange itself failed (connection closed, no answer).
    Other(io::Error),
}

impl NetlinkError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => errno.raw_os_error(),
            NetlinkError::Other(_) => None,
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        match self {
            NetlinkError::Kernel {
                errno,
                kernel_message: Some(message),
            } => io::Error::new(errno.kind(), format!("{errno}: {message}")),
            NetlinkError::Kernel { errno, .. } => errno,
            NetlinkError::Other(e) => e,
        }
    }
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
}
