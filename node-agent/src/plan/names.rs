//! Names: chain and set names (`prefix-HASH-readable`, stable, unique
//! after truncation, as nft accepts them) and how objects are named in
//! [`Skipped`](super::Skipped) reports.

use std::net::IpAddr;

use portico_config::cluster::ClusterServicePort;
use portico_config::{Protocol, ServiceKey};
use xxhash_rust::xxh3::xxh3_64;

use super::MAX_CHAIN_NAME;
use crate::ruleset::Family;

/// A protocol as nft writes it (`meta l4proto tcp`).
pub(super) fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// A Service as [`Skipped::object`](super::Skipped::object) names it.
pub(super) fn service_object(key: &ServiceKey) -> String {
    format!("Service {key}")
}

/// An EndpointSlice as [`Skipped::object`](super::Skipped::object) names it.
pub(super) fn slice_object(key: &ServiceKey) -> String {
    format!("EndpointSlice {key}")
}

/// Formats an address for a DNAT target (`[v6]:port`).
pub(super) fn addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A short, stable hash of a chain's identity (8 characters of base32,
/// as kube-proxy does), so names are unique even after truncation and
/// sanitising.
fn short_hash(identity: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = xxh3_64(identity.as_bytes());
    (0..8)
        .map(|i| ALPHABET[((h >> (59 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// `prefix-HASH-readable`, with characters nft does not accept in an
/// unquoted name replaced and the whole cut to [`MAX_CHAIN_NAME`].
fn object_name(prefix: &str, identity: &str, readable: &str) -> String {
    let clean: String = readable
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '/' | '.' | '_' | '-' => c,
            // IPv6 endpoint addresses; the hash keeps names unique.
            ':' => '.',
            _ => '_',
        })
        .collect();
    let mut name = format!("{prefix}-{}-{clean}", short_hash(identity));
    // Only ASCII is left, so any byte index is a char boundary.
    name.truncate(MAX_CHAIN_NAME);
    name
}

/// The names of one Service port's chains in one family.
pub(super) struct PortNames {
    /// `namespace/name/proto/port-name`, the readable part of every name.
    id: String,
    /// The family and `id`, hashed (with a prefix) into every name.
    hash_base: String,
    /// The chain picking any usable endpoint.
    pub(super) service: String,
    /// The chain picking one of this node's endpoints.
    pub(super) local: String,
    /// The chain of a `Local` port's external keys.
    pub(super) external: String,
    /// The chain dropping sources outside `loadBalancerSourceRanges`.
    pub(super) firewall: String,
}

impl PortNames {
    /// The names of `port` of the Service `key` in `family`.
    pub(super) fn new(key: &ServiceKey, port: &ClusterServicePort, family: Family) -> PortNames {
        let port_id = if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.clone()
        };
        let id = format!(
            "{}/{}/{}/{}",
            key.namespace,
            key.name,
            proto_name(port.protocol),
            port_id
        );
        let hash_base = format!("{}/{id}", family.nft_keyword());
        let name = |prefix: &str| object_name(prefix, &format!("{prefix}/{hash_base}"), &id);
        PortNames {
            service: name("service"),
            local: name("local"),
            external: name("external"),
            firewall: name("firewall"),
            id,
            hash_base,
        }
    }

    /// The `endpoint-` chain of one endpoint (ClientIP affinity only).
    pub(super) fn endpoint(&self, addr: IpAddr, port: u16) -> String {
        let readable = format!("{}__{addr}/{port}", self.id);
        object_name(
            "endpoint",
            &format!("endpoint/{}/{addr}/{port}", self.hash_base),
            &readable,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::web;
    use super::*;

    #[test]
    fn chain_names_are_stable_short_and_family_specific() {
        let port = &web(None).ports[0];
        let key = ServiceKey::new("default", "web");
        let v4 = PortNames::new(&key, port, Family::V4);
        let v6 = PortNames::new(&key, port, Family::V6);
        // Pinned: a changed hash renames every chain on upgrade.
        assert_eq!(v4.service, "service-E3KJOWRQ-default/web/tcp/http");
        assert_ne!(v4.service, v6.service);
        assert!(v6.service.ends_with("-default/web/tcp/http"));

        let long = ServiceKey::new("n".repeat(63), "s".repeat(63));
        let mut long_port = port.clone();
        long_port.name = "p".repeat(15);
        let names = PortNames::new(&long, &long_port, Family::V6);
        let ep = names.endpoint(
            "fd00:1234:5678:9abc:def0:1234:5678:9abc"
                .parse()
                .expect("ip"),
            65535,
        );
        assert_eq!(ep.len(), MAX_CHAIN_NAME);
        assert!(ep.starts_with("endpoint-"));
        assert!(
            ep.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
            "{ep}"
        );
        // Truncated names still differ by their hash.
        let other = names.endpoint(
            "fd00:1234:5678:9abc:def0:1234:5678:9abd"
                .parse()
                .expect("ip"),
            65535,
        );
        assert_ne!(ep, other);
    }
}
