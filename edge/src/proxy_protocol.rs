//! PROXY protocol headers (versions 1 and 2) as specified in haproxy's
//! `proxy-protocol.txt`.
//!
//! The edge is an L4 proxy, so a backend only ever sees the edge's own
//! address as the TCP peer. When a backend pool asks for it, the edge writes a
//! PROXY header as the very first bytes of the upstream connection so that the
//! backend learns the real client (source) and the address the client
//! connected to (destination).
//!
//! The encoders only ever emit `TCP4`/`TCP6` (v1) or `PROXY` + TCP over
//! IPv4/IPv6 (v2). `decode` understands everything a receiver must accept
//! (including v1 `UNKNOWN`, v2 `LOCAL` and v2 TLVs, which it skips); the edge
//! never reads a header, so it exists only in unit tests, which hold the
//! encoders to it.
//!
//! # Address families
//!
//! Both addresses of a header must be of the same family, but a dual-stack
//! listener can see an IPv4 client as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`), or a client and listener address of different families.
//! The encoders therefore first *unmap* any IPv4-mapped IPv6 address, then:
//! - if both addresses are IPv4, they emit TCP over IPv4;
//! - otherwise they map the IPv4 address (if any) to IPv4-mapped IPv6 and emit
//!   TCP over IPv6.
//!
//! Unmapping first means the common dual-stack case is sent as plain `TCP4`,
//! which every receiver understands and which shows the backend the address it
//! would have seen without the edge. Mapping (rather than refusing, or sending
//! `UNKNOWN`) keeps the real client address in the header in the rare mixed
//! case. Only genuinely IPv4-mapped addresses are unmapped: `::1` or other
//! "IPv4-compatible" addresses stay IPv6.

use std::io::Write as _;
#[cfg(test)]
use std::net::{IpAddr, Ipv4Addr};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The longest version 1 line a receiver must accept, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// Length of the fixed part of a version 2 header (signature, version and
/// command, family and transport, address length).
const V2_FIXED_LEN: usize = 16;

#[cfg(test)]
const V1_PREFIX: &[u8] = b"PROXY ";

/// Version 2 "version and command" byte: version 2, command PROXY.
const V2_VERSION_PROXY: u8 = 0x21;
const V2_TCP_OVER_IPV4: u8 = 0x11;
const V2_TCP_OVER_IPV6: u8 = 0x21;
const V2_IPV4_ADDRESS_LEN: u16 = 2 * 4 + 2 * 2;
const V2_IPV6_ADDRESS_LEN: u16 = 2 * 16 + 2 * 2;

/// Which version of the protocol a decoded header used.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The human-readable `PROXY TCP4 ...\r\n` line.
    V1,
    /// The binary format starting with [`V2_SIGNATURE`].
    V2,
}

/// The original endpoints of a proxied connection.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client's address (the connection's original source).
    pub source: SocketAddr,
    /// The address the client connected to (the original destination).
    pub destination: SocketAddr,
}

/// A decoded PROXY protocol header.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The protocol version the header was written in.
    pub version: Version,
    /// The original endpoints, or `None` when the receiver must use the real
    /// connection's endpoints instead: v1 `UNKNOWN`, v2 `LOCAL` (health
    /// checks), and v2 families or transports other than TCP over IPv4/IPv6
    /// (which the spec lets a receiver treat as `UNSPEC`).
    pub addresses: Option<Addresses>,
}

/// Why a byte sequence is not a valid PROXY protocol header.
///
/// The spec requires the receiver to drop the connection on any of these.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The input starts with neither `PROXY ` nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    /// A v1 line has no CRLF within the first [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v1 line does not match the grammar; the message says which part.
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// A v2 header announces a version other than 2.
    #[error("unsupported PROXY v2 version nibble {0:#x}")]
    V2Version(u8),
    /// A v2 header has a command other than `LOCAL` (0) or `PROXY` (1).
    #[error("unsupported PROXY v2 command {0:#x}")]
    V2Command(u8),
    /// A v2 header has an unassigned address family or transport.
    #[error("invalid PROXY v2 family/transport byte {0:#04x}")]
    V2Family(u8),
    /// A v2 header's address block is shorter than its family requires.
    #[error("PROXY v2 address block of {got} bytes is shorter than the {need} bytes family {family:#04x} needs")]
    V2AddressTooShort {
        /// The family/transport byte.
        family: u8,
        /// The length announced in the header.
        got: u16,
        /// The length the family/transport requires.
        need: u16,
    },
}

/// Brings both addresses to one family, as described in the module docs.
fn normalize(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (unmap(src), unmap(dst));
    match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (src, dst)
        }
        _ => (SocketAddr::V6(to_v6(src)), SocketAddr::V6(to_v6(dst))),
    }
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        // `to_ipv4_mapped`, not `to_ipv4`: the latter would turn `::1` into
        // `0.0.0.1`.
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    }
}

/// Appends a version 1 (text) header for a TCP connection from `src` to `dst`
/// to `out`, e.g. `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n`.
///
/// Mixed or IPv4-mapped families are handled as the module docs describe.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    let (src, dst) = normalize(src, dst);
    out.reserve(V1_MAX_LEN);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            // Writing into a Vec cannot fail.
            let _ = write!(
                out,
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            );
        }
        _ => {
            let (s, d) = (to_v6(src), to_v6(dst));
            out.extend_from_slice(b"PROXY TCP6 ");
            write_v6_hex(*s.ip(), out);
            out.push(b' ');
            write_v6_hex(*d.ip(), out);
            let _ = write!(out, " {} {}\r\n", s.port(), d.port());
        }
    }
}

/// Writes an IPv6 address in the colon-hex form the v1 spec prescribes.
///
/// `Ipv6Addr`'s `Display` writes IPv4-mapped addresses as `::ffff:a.b.c.d`,
/// which the spec's grammar ("sets of 4 hexadecimal digits") does not allow
/// and strict receivers may reject, so those are spelled out in hex here.
fn write_v6_hex(ip: Ipv6Addr, out: &mut Vec<u8>) {
    match ip.to_ipv4_mapped() {
        Some(v4) => {
            let [a, b, c, d] = v4.octets();
            let _ = write!(
                out,
                "::ffff:{:x}:{:x}",
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d])
            );
        }
        // Apart from IPv4-mapped addresses, `Display` already produces the
        // RFC 5952 form: lowercase hex, longest zero run compressed.
        None => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Appends a version 2 (binary) header for a TCP connection from `src` to
/// `dst` to `out`: command `PROXY`, TCP over IPv4 (`0x11`) or IPv6 (`0x21`),
/// and no TLVs.
///
/// Mixed or IPv4-mapped families are handled as the module docs describe.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    let (src, dst) = normalize(src, dst);
    out.reserve(V2_FIXED_LEN + usize::from(V2_IPV6_ADDRESS_LEN));
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_VERSION_PROXY);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(V2_TCP_OVER_IPV4);
            out.extend_from_slice(&V2_IPV4_ADDRESS_LEN.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        _ => {
            out.push(V2_TCP_OVER_IPV6);
            out.extend_from_slice(&V2_IPV6_ADDRESS_LEN.to_be_bytes());
            out.extend_from_slice(&to_v6(src).ip().octets());
            out.extend_from_slice(&to_v6(dst).ip().octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

/// Decodes a v1 or v2 header at the start of `buf`.
///
/// Returns `Ok(Some((header, len)))` when a complete header is present, where
/// `len` is the number of bytes it occupies (anything after that is the
/// proxied payload); `Ok(None)` when `buf` is a valid but incomplete prefix of
/// a header, so the caller should read more; and `Err` as soon as the bytes
/// cannot be a valid header. Never panics, whatever the input.
///
/// Addresses are returned exactly as sent: an IPv4-mapped IPv6 address in a
/// `TCP6` header stays IPv6.
#[cfg(test)]
pub fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(&b) if b == V1_PREFIX[0] => decode_v1(buf),
        Some(&b) if b == V2_SIGNATURE[0] => decode_v2(buf),
        Some(_) => Err(ProxyProtocolError::NotProxyProtocol),
    }
}

#[cfg(test)]
fn decode_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyProtocolError> {
    let prefix_len = buf.len().min(V1_PREFIX.len());
    if buf[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err(ProxyProtocolError::NotProxyProtocol);
    }
    // Scan for CRLF while rejecting anything that cannot be part of a line,
    // so garbage is refused as early as possible instead of after 107 bytes.
    let mut cr = None;
    for (i, &b) in buf.iter().enumerate().skip(V1_PREFIX.len()) {
        if b == b'\r' {
            cr = Some(i);
            break;
        }
        if !(b' '..=b'~').contains(&b) {
            return Err(ProxyProtocolError::V1Malformed("non-printable byte"));
        }
        if i + 2 >= V1_MAX_LEN {
            return Err(ProxyProtocolError::V1TooLong);
        }
    }
    let Some(cr) = cr else {
        return Ok(None);
    };
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyProtocolError::V1Malformed("CR not followed by LF")),
    }
    // Only printable ASCII got this far, so this cannot fail.
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| ProxyProtocolError::V1Malformed("not ASCII"))?;
    let len = cr + 2;
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    if protocol == "UNKNOWN" {
        // The spec says to ignore whatever follows UNKNOWN.
        let header = Header {
            version: Version::V1,
            addresses: None,
        };
        return Ok(Some((header, len)));
    }
    let want_v4 = match protocol {
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(ProxyProtocolError::V1Malformed("unknown protocol")),
    };
    let mut next = |what| fields.next().ok_or(ProxyProtocolError::V1Malformed(what));
    let (src_ip, dst_ip) = (
        next("missing source address")?,
        next("missing destination address")?,
    );
    let (src_port, dst_port) = (
        next("missing source port")?,
        next("missing destination port")?,
    );
    if fields.next().is_some() {
        return Err(ProxyProtocolError::V1Malformed("trailing fields"));
    }
    let src_ip = parse_v1_ip(src_ip, want_v4)?;
    let dst_ip = parse_v1_ip(dst_ip, want_v4)?;
    let header = Header {
        version: Version::V1,
        addresses: Some(Addresses {
            source: SocketAddr::new(src_ip, parse_v1_port(src_port)?),
            destination: SocketAddr::new(dst_ip, parse_v1_port(dst_port)?),
        }),
    };
    Ok(Some((header, len)))
}

#[cfg(test)]
fn parse_v1_ip(s: &str, want_v4: bool) -> Result<IpAddr, ProxyProtocolError> {
    // std's IPv4 parser already rejects the leading zeroes the spec forbids.
    if want_v4 {
        s.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv4 address"))
    } else {
        s.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv6 address"))
    }
}

#[cfg(test)]
fn parse_v1_port(s: &str) -> Result<u16, ProxyProtocolError> {
    // `u16::from_str` would accept `+443` and `0443`; the spec allows neither.
    let well_formed =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !well_formed {
        return Err(ProxyProtocolError::V1Malformed("bad port"));
    }
    s.parse()
        .map_err(|_| ProxyProtocolError::V1Malformed("port out of range"))
}

#[cfg(test)]
fn decode_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyProtocolError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err(ProxyProtocolError::NotProxyProtocol);
    }
    // Validate the fixed bytes as soon as they arrive, before waiting for the
    // rest.
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(ProxyProtocolError::V2Version(ver_cmd >> 4));
        }
        if ver_cmd & 0x0F > 1 {
            return Err(ProxyProtocolError::V2Command(ver_cmd & 0x0F));
        }
    }
    if let Some(&family) = buf.get(13) {
        if family >> 4 > 3 || family & 0x0F > 2 {
            return Err(ProxyProtocolError::V2Family(family));
        }
    }
    let Some(len_bytes) = buf.get(14..V2_FIXED_LEN) else {
        return Ok(None);
    };
    let addr_len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]);
    let total = V2_FIXED_LEN + usize::from(addr_len);
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(None);
    };
    let (is_proxy, family) = (buf[12] & 0x0F == 1, buf[13]);
    let need = match family {
        V2_TCP_OVER_IPV4 | 0x12 => V2_IPV4_ADDRESS_LEN,
        V2_TCP_OVER_IPV6 | 0x22 => V2_IPV6_ADDRESS_LEN,
        0x31 | 0x32 => 216,
        _ => 0,
    };
    // LOCAL must be accepted whatever its (ignored) address block says.
    if is_proxy && addr_len < need {
        return Err(ProxyProtocolError::V2AddressTooShort {
            family,
            got: addr_len,
            need,
        });
    }
    let addresses = match (is_proxy, family) {
        (true, V2_TCP_OVER_IPV4) => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            })
        }
        (true, V2_TCP_OVER_IPV6) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            })
        }
        // LOCAL, UNSPEC, UDP and UNIX: fall back to the real endpoints, as
        // the spec permits for combinations a receiver does not support.
        _ => None,
    };
    let header = Header {
        version: Version::V2,
        addresses,
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1(src: &str, dst: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_v1(sa(src), sa(dst), &mut out);
        out
    }

    fn v2(src: &str, dst: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_v2(sa(src), sa(dst), &mut out);
        out
    }

    fn decoded_addresses(buf: &[u8]) -> Addresses {
        let (header, len) = decode(buf).unwrap().unwrap();
        assert_eq!(len, buf.len());
        header.addresses.unwrap()
    }

    #[test]
    fn v1_tcp4_matches_spec_example() {
        // The example line from section 2.1 of the spec.
        assert_eq!(
            v1("192.168.0.1:56324", "192.168.0.11:443"),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            v1("192.0.2.1:56324", "198.51.100.1:443"),
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_lines_have_the_spec_lengths() {
        let tcp4 = v1("255.255.255.255:65535", "255.255.255.255:65535");
        assert_eq!(
            tcp4,
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(tcp4.len(), 56);

        let all_f = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let tcp6 = v1(all_f, all_f);
        assert_eq!(
            tcp6,
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
              ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(tcp6.len(), 104);
    }

    #[test]
    fn v1_tcp6_uses_compressed_hex() {
        assert_eq!(
            v1("[2001:db8::1]:56324", "[2001:db8:0:0:1::2]:443"),
            // Two equal zero runs: RFC 5952 compresses the first.
            b"PROXY TCP6 2001:db8::1 2001:db8::1:0:0:2 56324 443\r\n"
        );
        // `::1` is not IPv4-mapped and must not be unmapped to 0.0.0.1.
        assert_eq!(v1("[::1]:1", "[::1]:2"), b"PROXY TCP6 ::1 ::1 1 2\r\n");
    }

    #[test]
    fn v1_unmaps_ipv4_mapped_pairs() {
        assert_eq!(
            v1("[::ffff:192.0.2.1]:56324", "[::ffff:198.51.100.1]:443"),
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"
        );
        // A mapped client on a dual-stack socket with a plain IPv4 local
        // address is still an IPv4 connection.
        assert_eq!(
            v1("[::ffff:192.0.2.1]:56324", "198.51.100.1:443"),
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"
        );
    }

    #[test]
    fn v1_mixed_families_map_ipv4_to_hex_ipv6() {
        // 192.0.2.1 is c000:0201.
        assert_eq!(
            v1("192.0.2.1:56324", "[2001:db8::1]:443"),
            b"PROXY TCP6 ::ffff:c000:201 2001:db8::1 56324 443\r\n"
        );
        assert_eq!(
            v1("[2001:db8::1]:56324", "192.0.2.1:443"),
            b"PROXY TCP6 2001:db8::1 ::ffff:c000:201 56324 443\r\n"
        );
    }

    #[test]
    fn v2_tcp4_exact_bytes() {
        // 172.19.0.1:42578 -> 172.19.0.3:80, the header as haproxy emits it.
        let expected: [u8; 28] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // TCP over IPv4
            0x00, 0x0C, // 12 address bytes
            0xAC, 0x13, 0x00, 0x01, // 172.19.0.1
            0xAC, 0x13, 0x00, 0x03, // 172.19.0.3
            0xA6, 0x52, // 42578
            0x00, 0x50, // 80
        ];
        assert_eq!(v2("172.19.0.1:42578", "172.19.0.3:80"), expected);
        // A mapped pair is the same connection and must give the same bytes.
        assert_eq!(
            v2("[::ffff:172.19.0.1]:42578", "[::ffff:172.19.0.3]:80"),
            expected
        );
    }

    #[test]
    fn v2_tcp6_exact_bytes() {
        let expected: [u8; 52] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x21, // TCP over IPv6
            0x00, 0x24, // 36 address bytes
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, // 2001:db8::1
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x02, // 2001:db8::2
            0xDC, 0x04, // 56324
            0x01, 0xBB, // 443
        ];
        assert_eq!(v2("[2001:db8::1]:56324", "[2001:db8::2]:443"), expected);
    }

    #[test]
    fn v2_mixed_families_map_ipv4_into_ipv6() {
        let expected: [u8; 52] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, 0x21, 0x00, 0x24, // PROXY, TCP over IPv6, 36 bytes
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 1, // ::ffff:192.0.2.1
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, // 2001:db8::1
            0xDC, 0x04, // 56324
            0x01, 0xBB, // 443
        ];
        assert_eq!(v2("192.0.2.1:56324", "[2001:db8::1]:443"), expected);
    }

    #[test]
    fn encoders_append_rather_than_overwrite() {
        let mut out = b"payload-before".to_vec();
        encode_v1(sa("192.0.2.1:1"), sa("192.0.2.2:2"), &mut out);
        assert_eq!(out, b"payload-beforePROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n");
    }

    #[test]
    fn round_trips_v4_v6_and_mixed() {
        let cases = [
            // (source, destination, expected source, expected destination)
            (
                "192.0.2.1:56324",
                "198.51.100.1:443",
                "192.0.2.1:56324",
                "198.51.100.1:443",
            ),
            (
                "0.0.0.0:0",
                "255.255.255.255:65535",
                "0.0.0.0:0",
                "255.255.255.255:65535",
            ),
            (
                "[2001:db8::1]:1",
                "[2001:db8::2]:65535",
                "[2001:db8::1]:1",
                "[2001:db8::2]:65535",
            ),
            ("[::1]:5", "[::]:6", "[::1]:5", "[::]:6"),
            (
                "[::ffff:192.0.2.1]:7",
                "[::ffff:192.0.2.2]:8",
                "192.0.2.1:7",
                "192.0.2.2:8",
            ),
            (
                "192.0.2.1:9",
                "[2001:db8::2]:10",
                "[::ffff:192.0.2.1]:9",
                "[2001:db8::2]:10",
            ),
            (
                "[2001:db8::1]:11",
                "[::ffff:192.0.2.2]:12",
                "[2001:db8::1]:11",
                "[::ffff:192.0.2.2]:12",
            ),
        ];
        for (src, dst, want_src, want_dst) in cases {
            let want = Addresses {
                source: sa(want_src),
                destination: sa(want_dst),
            };
            for (version, bytes) in [(Version::V1, v1(src, dst)), (Version::V2, v2(src, dst))] {
                let (header, len) = decode(&bytes).unwrap().unwrap();
                assert_eq!(header.version, version, "{src} -> {dst}");
                assert_eq!(len, bytes.len(), "{version:?} {src} -> {dst}");
                assert_eq!(header.addresses, Some(want), "{version:?} {src} -> {dst}");
            }
        }
    }

    #[test]
    fn decode_reports_header_length_and_leaves_payload() {
        for mut bytes in [
            v1("192.0.2.1:1", "192.0.2.2:2"),
            v2("[2001:db8::1]:3", "[2001:db8::2]:4"),
        ] {
            let header_len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let (_, len) = decode(&bytes).unwrap().unwrap();
            assert_eq!(len, header_len);
        }
    }

    fn v2_raw(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn decode_v2_skips_tlvs() {
        let mut block = v2("192.0.2.1:80", "192.0.2.2:443")[16..].to_vec();
        // PP2_TYPE_AUTHORITY "example.com" followed by a PP2_TYPE_NOOP.
        block.extend_from_slice(&[0x02, 0x00, 0x0B]);
        block.extend_from_slice(b"example.com");
        block.extend_from_slice(&[0x04, 0x00, 0x00]);
        let bytes = v2_raw(0x21, 0x11, &block);
        assert_eq!(
            decoded_addresses(&bytes),
            Addresses {
                source: sa("192.0.2.1:80"),
                destination: sa("192.0.2.2:443"),
            }
        );
    }

    #[test]
    fn decode_accepts_headers_without_addresses() {
        let no_addresses = |bytes: &[u8], version| {
            assert_eq!(
                decode(bytes).unwrap(),
                Some((
                    Header {
                        version,
                        addresses: None
                    },
                    bytes.len()
                )),
                "{bytes:?}"
            );
        };
        no_addresses(b"PROXY UNKNOWN\r\n", Version::V1);
        no_addresses(
            b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n",
            Version::V1,
        );
        // LOCAL (a health check) with no address block, and with one that
        // must be ignored.
        no_addresses(&v2_raw(0x20, 0x00, &[]), Version::V2);
        no_addresses(&v2_raw(0x20, 0x11, &[1, 2, 3]), Version::V2);
        // PROXY over UNSPEC, UDP and UNIX fall back to the real endpoints.
        no_addresses(&v2_raw(0x21, 0x00, &[]), Version::V2);
        no_addresses(&v2_raw(0x21, 0x12, &[0; 12]), Version::V2);
        no_addresses(&v2_raw(0x21, 0x31, &[0; 216]), Version::V2);
    }

    #[test]
    fn decode_rejects_malformed_v1() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"PROXY\r\n",
            b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
            b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
            b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 65536\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 -2\r\n",
            b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX",
            b"PROXY TCP4 192.0.2.1\n192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\x00\r\n",
        ];
        for bytes in bad {
            assert!(
                decode(bytes).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn decode_v1_line_length_limit() {
        // Exactly 107 bytes is the longest valid line.
        let mut longest = b"PROXY UNKNOWN ".to_vec();
        longest.resize(V1_MAX_LEN - 2, b'f');
        longest.extend_from_slice(b"\r\n");
        assert_eq!(decode(&longest).unwrap().unwrap().1, V1_MAX_LEN);

        // One byte more is refused, whether or not the CRLF has arrived.
        let mut too_long = b"PROXY UNKNOWN ".to_vec();
        too_long.resize(V1_MAX_LEN - 1, b'f');
        assert_eq!(decode(&too_long), Err(ProxyProtocolError::V1TooLong));
        too_long.extend_from_slice(b"\r\n");
        assert_eq!(decode(&too_long), Err(ProxyProtocolError::V1TooLong));
    }

    #[test]
    fn decode_rejects_malformed_v2() {
        let good = v2("192.0.2.1:80", "192.0.2.2:443");
        let with = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            bytes
        };
        assert_eq!(
            decode(&with(3, 0x0B)),
            Err(ProxyProtocolError::NotProxyProtocol)
        );
        assert_eq!(
            decode(&with(12, 0x11)),
            Err(ProxyProtocolError::V2Version(1))
        );
        assert_eq!(
            decode(&with(12, 0x22)),
            Err(ProxyProtocolError::V2Command(2))
        );
        assert_eq!(
            decode(&with(13, 0x41)),
            Err(ProxyProtocolError::V2Family(0x41))
        );
        assert_eq!(
            decode(&with(13, 0x13)),
            Err(ProxyProtocolError::V2Family(0x13))
        );
        // Claims IPv6 with only IPv4's 12 address bytes.
        assert_eq!(
            decode(&with(13, 0x21)),
            Err(ProxyProtocolError::V2AddressTooShort {
                family: 0x21,
                got: 12,
                need: 36
            })
        );
        assert_eq!(
            decode(&v2_raw(0x21, 0x11, &[0; 11])),
            Err(ProxyProtocolError::V2AddressTooShort {
                family: 0x11,
                got: 11,
                need: 12
            })
        );
        // Bad fixed bytes are refused before the address block has arrived.
        assert_eq!(
            decode(&with(12, 0x31)[..13]),
            Err(ProxyProtocolError::V2Version(3))
        );
    }

    #[test]
    fn every_strict_prefix_needs_more_bytes() {
        let mut tlv_header = v2_raw(0x21, 0x11, &[0; 12]);
        tlv_header.extend_from_slice(&[0x04, 0x00, 0x00]);
        tlv_header[15] += 3;
        let headers = [
            v1("192.0.2.1:56324", "198.51.100.1:443"),
            v1("[2001:db8::1]:1", "[2001:db8::2]:2"),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2("192.0.2.1:56324", "198.51.100.1:443"),
            v2("[2001:db8::1]:1", "[2001:db8::2]:2"),
            v2_raw(0x20, 0x00, &[]),
            tlv_header,
        ];
        for header in headers {
            for end in 0..header.len() {
                assert_eq!(decode(&header[..end]), Ok(None), "{header:?} cut at {end}");
            }
            assert_eq!(decode(&header).unwrap().unwrap().1, header.len());
        }
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    fn next_random(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn decode_never_panics_on_random_or_corrupted_input() {
        let mut state = 0x9E37_79B9_7F4A_7C15;
        let seeds = [
            v1("192.0.2.1:56324", "198.51.100.1:443"),
            v1("[2001:db8::1]:1", "[2001:db8::2]:2"),
            v2("192.0.2.1:56324", "198.51.100.1:443"),
            v2("[2001:db8::1]:1", "[2001:db8::2]:2"),
        ];
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                let len = (next_random(&mut state) % 200) as usize;
                (0..len).map(|_| next_random(&mut state) as u8).collect()
            } else {
                // Corrupt one to three bytes of a valid header, which reaches
                // far deeper into the parser than uniformly random bytes.
                let mut bytes = seeds[round / 2 % seeds.len()].clone();
                for _ in 0..1 + next_random(&mut state) % 3 {
                    let at = (next_random(&mut state) as usize) % bytes.len();
                    bytes[at] = next_random(&mut state) as u8;
                }
                bytes
            };
            match decode(&bytes) {
                Ok(Some((_, len))) => assert!(len <= bytes.len(), "{bytes:?}"),
                Ok(None) => {
                    let first = bytes.first().copied();
                    assert!(
                        first.is_none() || first == Some(b'P') || first == Some(0x0D),
                        "{bytes:?} cannot be a header prefix"
                    );
                }
                Err(_) => {}
            }
            // Decoding must also be stable under truncation.
            bytes.truncate(bytes.len() / 2);
            let _ = decode(&bytes);
        }
    }
}
