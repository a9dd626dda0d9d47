//! The kernel's connection tracking table, as Portico's programs use it.
//!
//! NAT rules are only consulted for the first packet of a flow: later
//! packets follow the flow's conntrack entry. A UDP client that keeps
//! sending therefore stays on the endpoint its first datagram was sent to,
//! even after that endpoint left the Service, until the entry expires (120
//! s for a flow that had replies), and datagrams that arrived before the
//! rules existed stay un-NATed. kube-proxy deletes such entries after each
//! sync; so do Portico's programs, through this crate.
//!
//! [`Conntrack`] lists the flows of one protocol (both address families)
//! and deletes chosen ones:
//! - [`Netlink`] speaks ctnetlink (the protocol of the `conntrack` tool)
//!   through `netlink-packet-netfilter`. Like `nft`, a netlink socket works
//!   in the network namespace of the thread that opens it, and each call
//!   opens its own, so a caller that entered a namespace is served there.
//! - [`Fake`] keeps flows in memory, for tests of the code that decides
//!   what to delete.
//!
//! Which flows to delete is the caller's decision (it knows the Services);
//! this crate only lists and deletes.

mod fake;
mod netlink;

use std::fmt;
use std::net::SocketAddr;

pub use fake::Fake;
pub use netlink::Netlink;

/// A transport protocol conntrack tracks with ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Its IANA protocol number (`IPPROTO_*`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// One direction of a flow: who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    /// The sender.
    pub src: SocketAddr,
    /// The receiver.
    pub dst: SocketAddr,
}

/// A conntrack entry.
///
/// `original` is the flow as its first packet was seen (the client to the
/// address it asked for); `reply` is what an answer looks like after NAT:
/// for a DNATed flow its source is the endpoint the flow was sent to, for
/// a flow no rule translated it is `original` reversed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// Its transport protocol.
    pub protocol: Protocol,
    /// The original direction.
    pub original: Tuple,
    /// The reply direction.
    pub reply: Tuple,
    /// Whether a reply was seen (`SEEN_REPLY`; `[UNREPLIED]` in
    /// `conntrack -L` when not).
    pub replied: bool,
    /// The kernel's id of the entry, when it was listed from the kernel: a
    /// delete then removes that entry only, not a newer one that took the
    /// same tuple since.
    pub id: Option<u32>,
}

impl Flow {
    /// A flow of `protocol` from `client` to `service`, translated to
    /// `endpoint` (give `service` again for a flow no rule translated).
    pub fn new(
        protocol: Protocol,
        client: SocketAddr,
        service: SocketAddr,
        endpoint: SocketAddr,
    ) -> Flow {
        Flow {
            protocol,
            original: Tuple {
                src: client,
                dst: service,
            },
            reply: Tuple {
                src: endpoint,
                dst: client,
            },
            replied: false,
            id: None,
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} (reply from {})",
            self.protocol, self.original.src, self.original.dst, self.reply.src
        )
    }
}

/// Why listing or deleting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened, or a message not sent or
    /// received.
    #[error("conntrack netlink socket: {what}: {source}")]
    Socket {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("the kernel refused to {what}: {source}")]
    Refused {
        /// The request.
        what: &'static str,
        /// The error the kernel answered.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be read.
    #[error("unreadable conntrack message: {0}")]
    Decode(String),
    /// The fake was told to fail this call.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// Lists and deletes conntrack entries.
pub trait Conntrack {
    /// Every entry of `protocol`, IPv4 and IPv6.
    fn list(&self, protocol: Protocol) -> Result<Vec<Flow>, ConntrackError>;

    /// Deletes `flows`; returns how many were deleted. An entry that is
    /// already gone (expired, or deleted by someone else) is not an error
    /// and is not counted.
    fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError>;
}

/// Shared with whoever else looks at the table (a test and its fake).
impl<T: Conntrack + ?Sized> Conntrack for std::sync::Arc<T> {
    fn list(&self, protocol: Protocol) -> Result<Vec<Flow>, ConntrackError> {
        (**self).list(protocol)
    }

    fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        (**self).delete(flows)
    }
}
