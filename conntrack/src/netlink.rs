//! The real table: ctnetlink requests on a `NETLINK_NETFILTER` socket, as
//! the `conntrack` tool sends them.
//!
//! - A list is one dump request (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`) for
//!   both families; the kernel answers in batches of entries until
//!   `NLMSG_DONE`. The protocol is filtered here.
//! - A delete is one `IPCTNL_MSG_CT_DELETE` per entry, naming it by its
//!   original tuple and, when listed from the kernel, its id (so a newer
//!   entry that took the same tuple is left alone). Requests go in batches
//!   of [`BATCH`] per `send`, each acknowledged; `ENOENT` (already gone) is
//!   not an error.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as NlProtocol, Status,
    Tuple as NlTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::{Conntrack, ConntrackError, Flow, Protocol, Tuple};

/// `CTA_ID`: the entry's id, a big-endian u32.
const CTA_ID: u16 = 12;

/// Delete requests per `send` (each answered by an acknowledgement).
const BATCH: usize = 64;

/// The kernel's conntrack table, through ctnetlink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Netlink;

impl Netlink {
    /// The table of the calling thread's network namespace.
    pub fn new() -> Netlink {
        Netlink
    }
}

fn socket_error(what: &'static str) -> impl FnOnce(std::io::Error) -> ConntrackError {
    move |source| ConntrackError::Socket { what, source }
}

/// A socket connected to the kernel, in the calling thread's namespace.
fn open() -> Result<Socket, ConntrackError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(socket_error("open"))?;
    socket.bind_auto().map_err(socket_error("bind"))?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(socket_error("connect"))?;
    // Acknowledgements without a copy of each request.
    socket
        .set_cap_ack(true)
        .map_err(socket_error("set NETLINK_CAP_ACK"))?;
    Ok(socket)
}

/// Appends one request to `buf`.
fn push(
    buf: &mut Vec<u8>,
    family: NetfilterProtoFamily,
    flags: u16,
    seq: u32,
    message: ConntrackMessage,
) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        )),
    );
    packet.finalize();
    let start = buf.len();
    buf.resize(start + packet.buffer_len(), 0);
    packet.serialize(&mut buf[start..]);
}

/// Reads datagrams until `each` says it is done with the answers (`true`).
fn receive(
    socket: &Socket,
    mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Result<bool, ConntrackError>,
) -> Result<(), ConntrackError> {
    loop {
        let (datagram, _) = socket.recv_from_full().map_err(socket_error("receive"))?;
        let mut offset = 0;
        while offset < datagram.len() {
            let message = NetlinkMessage::<NetfilterMessage>::deserialize(&datagram[offset..])
                .map_err(|e| ConntrackError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            if each(message)? {
                return Ok(());
            }
            if length == 0 {
                break;
            }
            // Messages are 4-byte aligned within a datagram.
            offset += (length + 3) & !3;
        }
    }
}

impl Conntrack for Netlink {
    fn list(&self, protocol: Protocol) -> Result<Vec<Flow>, ConntrackError> {
        let socket = open()?;
        let mut request = Vec::new();
        push(
            &mut request,
            NetfilterProtoFamily::Unspec,
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            ConntrackMessage::Get(Vec::new()),
        );
        socket.send(&request, 0).map_err(socket_error("send"))?;
        let mut flows = Vec::new();
        receive(&socket, |message| match message.payload {
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => Err(ConntrackError::Refused {
                what: "list conntrack entries",
                source: e.to_io(),
            }),
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(entry),
                ..
            }) => {
                if let ConntrackMessage::New(attributes) | ConntrackMessage::Get(attributes) = entry
                {
                    flows.extend(flow(&attributes).filter(|f| f.protocol == protocol));
                }
                Ok(false)
            }
            _ => Ok(false),
        })?;
        Ok(flows)
    }

    fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        if flows.is_empty() {
            return Ok(0);
        }
        let socket = open()?;
        let mut deleted = 0;
        for batch in flows.chunks(BATCH) {
            let mut request = Vec::new();
            for (seq, flow) in (1..).zip(batch) {
                let family = match flow.original.src.ip() {
                    IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
                    IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
                };
                let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(tuple(
                    flow.protocol,
                    &flow.original,
                ))];
                if let Some(id) = flow.id {
                    attributes.push(ConntrackAttribute::Other(DefaultNla::new(
                        CTA_ID,
                        id.to_be_bytes().to_vec(),
                    )));
                }
                push(
                    &mut request,
                    family,
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    ConntrackMessage::Delete(attributes),
                );
            }
            socket.send(&request, 0).map_err(socket_error("send"))?;
            let mut answered = 0;
            let mut refused = None;
            receive(&socket, |message| {
                if let NetlinkPayload::Error(e) = message.payload {
                    answered += 1;
                    match e.code.map(|c| -c.get()) {
                        None => deleted += 1,
                        Some(ENOENT) => {}
                        Some(_) => {
                            refused.get_or_insert(e.to_io());
                        }
                    }
                }
                Ok(answered == batch.len())
            })?;
            if let Some(source) = refused {
                return Err(ConntrackError::Refused {
                    what: "delete a conntrack entry",
                    source,
                });
            }
        }
        Ok(deleted)
    }
}

/// `ENOENT`: the entry is not there (any more).
const ENOENT: i32 = 2;

/// The nested attributes of one direction.
fn tuple(protocol: Protocol, t: &Tuple) -> Vec<NlTuple> {
    let protocol = match protocol {
        Protocol::Tcp => NlProtocol::Tcp,
        Protocol::Udp => NlProtocol::Udp,
        Protocol::Sctp => NlProtocol::Sctp,
    };
    vec![
        NlTuple::Ip(vec![
            IPTuple::SourceAddress(t.src.ip()),
            IPTuple::DestinationAddress(t.dst.ip()),
        ]),
        NlTuple::Proto(vec![
            ProtoTuple::Protocol(protocol),
            ProtoTuple::SourcePort(t.src.port()),
            ProtoTuple::DestinationPort(t.dst.port()),
        ]),
    ]
}

/// A listed entry as a [`Flow`]; `None` for a protocol without ports (ICMP
/// and the like) or an entry missing a part.
fn flow(attributes: &[ConntrackAttribute]) -> Option<Flow> {
    let mut original = None;
    let mut reply = None;
    let mut replied = false;
    let mut id = None;
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(t) => original = Some(read_tuple(t)?),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(read_tuple(t)?),
            ConntrackAttribute::CtaStatus(status) => {
                replied = status.contains(Status::SeenReply);
            }
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ID && nla.value_len() == 4 => {
                let mut value = [0u8; 4];
                nla.emit_value(&mut value);
                id = Some(u32::from_be_bytes(value));
            }
            _ => {}
        }
    }
    let (protocol, original) = original?;
    let (_, reply) = reply?;
    Some(Flow {
        protocol,
        original,
        reply,
        replied,
        id,
    })
}

/// One direction's protocol and addresses.
fn read_tuple(parts: &[NlTuple]) -> Option<(Protocol, Tuple)> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, None, None);
    for part in parts {
        match part {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(fields) => {
                for field in fields {
                    match field {
                        ProtoTuple::Protocol(NlProtocol::Tcp) => protocol = Some(Protocol::Tcp),
                        ProtoTuple::Protocol(NlProtocol::Udp) => protocol = Some(Protocol::Udp),
                        ProtoTuple::Protocol(NlProtocol::Sctp) => protocol = Some(Protocol::Sctp),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        protocol?,
        Tuple {
            src: SocketAddr::new(src?, sport?),
            dst: SocketAddr::new(dst?, dport?),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Flow {
        Flow {
            protocol: Protocol::Udp,
            original: Tuple {
                src: "192.0.2.7:40000".parse().unwrap(),
                dst: "10.96.0.53:53".parse().unwrap(),
            },
            reply: Tuple {
                src: "10.244.0.10:5353".parse().unwrap(),
                dst: "192.0.2.7:40000".parse().unwrap(),
            },
            replied: true,
            id: Some(0x0102_0304),
        }
    }

    /// The attributes the kernel sends for [`entry`].
    fn listed(f: &Flow) -> Vec<ConntrackAttribute> {
        vec![
            ConntrackAttribute::CtaTupleOrig(tuple(f.protocol, &f.original)),
            ConntrackAttribute::CtaTupleReply(tuple(f.protocol, &f.reply)),
            ConntrackAttribute::CtaStatus(
                Status::Confirmed | Status::SeenReply | Status::DstNatDone,
            ),
            ConntrackAttribute::CtaTimeout(30),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ID, vec![1, 2, 3, 4])),
        ]
    }

    #[test]
    fn a_listed_entry_reads_back_as_the_flow() {
        let want = entry();
        assert_eq!(flow(&listed(&want)), Some(want.clone()));
        // Through the wire format too.
        let mut buf = Vec::new();
        push(
            &mut buf,
            NetfilterProtoFamily::IPv4,
            0,
            7,
            ConntrackMessage::New(listed(&want)),
        );
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
            ..
        }) = message.payload
        else {
            panic!("not a conntrack entry: {message:?}");
        };
        assert_eq!(flow(&attributes), Some(want));
    }

    #[test]
    fn an_entry_without_ports_or_reply_is_not_a_flow() {
        let f = entry();
        let without_reply: Vec<_> = listed(&f)
            .into_iter()
            .filter(|a| !matches!(a, ConntrackAttribute::CtaTupleReply(_)))
            .collect();
        assert_eq!(flow(&without_reply), None);
        let icmp = vec![ConntrackAttribute::CtaTupleOrig(vec![
            NlTuple::Ip(vec![
                IPTuple::SourceAddress(f.original.src.ip()),
                IPTuple::DestinationAddress(f.original.dst.ip()),
            ]),
            NlTuple::Proto(vec![ProtoTuple::Protocol(NlProtocol::Icmp)]),
        ])];
        assert_eq!(flow(&icmp), None);
    }

    #[test]
    fn a_delete_names_the_original_tuple_and_the_id() {
        let f = entry();
        let attributes = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(f.protocol, &f.original)),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ID, vec![1, 2, 3, 4])),
        ];
        let mut buf = Vec::new();
        push(
            &mut buf,
            NetfilterProtoFamily::IPv4,
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            ConntrackMessage::Delete(attributes.clone()),
        );
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf).unwrap();
        assert_eq!(message.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        // ctnetlink's message type: subsystem 1 (conntrack), message 2 (delete).
        assert_eq!(message.header.message_type, (1 << 8) | 2);
        assert_eq!(
            message.payload,
            NetlinkPayload::InnerMessage(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                ConntrackMessage::Delete(attributes),
            ))
        );
    }
}
