//! CIDRs read the way the Kubernetes API server reads them, and
//! `loadBalancerSourceRanges` built from them.
//!
//! The API server validates `spec.loadBalancerSourceRanges` and the legacy
//! annotation with `netutils.ParseCIDRSloppy` after trimming blanks; kube-proxy
//! and the cloud providers then read the same text with `ParseIPNets` (trim,
//! sloppy parse, network address, set). So a value the server accepted can
//! carry blank padding, IPv4 octets with leading zeros (`010.001.002.003/32`,
//! read as decimal), a prefix length with leading zeros (`/08`) and host bits
//! (`10.1.2.3/8` is `10.0.0.0/8`). Every reader in Portico (the config file,
//! the edge, the node agent, the test API server) goes through
//! [`parse_cidr`], so they can never disagree on a value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::model::SourceRanges;

/// Parses one CIDR as the API server accepts it (see the module docs):
/// surrounding blanks are ignored, host bits are cleared.
///
/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) is read as Go's
/// `IPNet.Contains` matches it, as the IPv4 range it maps (`10.0.0.0/8`);
/// one with a prefix shorter than 96 would match every IPv4 client, and is
/// refused rather than read that wide.
///
/// The error is a sentence naming the text: `"10.0.0.0/33" is not a valid
/// CIDR (the prefix length must be a number from 0 to 32)`.
pub fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    let (address, prefix, invalid) = parse_go(text)?;
    let (address, prefix) = match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            Some(_) => {
                return Err(invalid(
                    "an IPv4-mapped IPv6 range shorter than /96 would match every IPv4 client; write the IPv4 range",
                ))
            }
            None => (address, prefix),
        },
        IpAddr::V4(_) => (address, prefix),
    };
    let net = IpNetwork::new(address, prefix).map_err(|e| invalid(&e.to_string()))?;
    IpNetwork::new(net.network(), prefix).map_err(|e| invalid(&e.to_string()))
}

/// Whether the API server accepts `text` as a CIDR (`ParseCIDRSloppy` after
/// trimming blanks): what a Kubernetes object can hold, even where
/// [`parse_cidr`] then refuses to read it that wide.
pub fn is_valid_cidr(text: &str) -> bool {
    parse_go(text).is_ok()
}

/// The error sentence for one CIDR text, given the reason.
type Invalid = Box<dyn Fn(&str) -> String>;

/// `ParseCIDRSloppy` of the trimmed text: the address, the prefix length,
/// and the builder of error sentences for the text.
fn parse_go(text: &str) -> Result<(IpAddr, u8, Invalid), String> {
    let trimmed = text.trim().to_owned();
    let invalid: Invalid = {
        let trimmed = trimmed.clone();
        Box::new(move |why: &str| {
            format!("{} is not a valid CIDR ({why})", super::quoted(&trimmed))
        })
    };
    let Some((address, prefix)) = trimmed.split_once('/') else {
        let hint = match parse_ip_sloppy(&trimmed) {
            Some(IpAddr::V4(_)) => format!(", e.g. {trimmed}/32"),
            Some(IpAddr::V6(_)) => format!(", e.g. {trimmed}/128"),
            None => String::new(),
        };
        return Err(invalid(&format!("a prefix length is required{hint}")));
    };
    let address = parse_ip_sloppy(address)
        .ok_or_else(|| invalid(&format!("{} is not an IP address", super::quoted(address))))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = decimal(prefix).filter(|p| *p <= max).ok_or_else(|| {
        invalid(&format!(
            "the prefix length must be a number from 0 to {max}"
        ))
    })?;
    let prefix = u8::try_from(prefix).expect("at most 128");
    Ok((address, prefix, invalid))
}

/// An IP address as Go's sloppy parser reads it: IPv4 octets may carry
/// leading zeros (decimal, never octal), also inside an IPv6 address's
/// trailing dotted part. No zone (`%eth0`), no blanks.
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_sloppy(text) {
        return Some(IpAddr::V4(v4));
    }
    if !text.contains(':') {
        return None;
    }
    // A trailing dotted quad (`::ffff:010.0.0.1`) gets the same leniency.
    let (head, tail) = text.rsplit_once(':')?;
    let text = if tail.contains('.') {
        format!("{head}:{}", parse_ipv4_sloppy(tail)?)
    } else {
        text.to_owned()
    };
    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Four decimal octets, each at most 255, leading zeros allowed.
fn parse_ipv4_sloppy(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        *octet = u8::try_from(decimal(parts.next()?)?).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// A non-empty run of ASCII digits read as Go's `dtoi` reads it: leading
/// zeros allowed, any number of them; values from 0xFFFFFF up refused.
fn decimal(text: &str) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
        if n >= 0x00FF_FFFF {
            return None;
        }
    }
    Some(n)
}

/// Reads a list of source ranges as kube-proxy does: each entry through
/// [`parse_cidr`], duplicates (after clearing host bits) kept once, in
/// first-seen order. An empty list is [`SourceRanges::Any`]; any entry that
/// does not parse makes the whole set [`SourceRanges::Invalid`] (fail
/// closed: an unparsable range must never widen access), with each entry's
/// error.
pub fn source_ranges<'a>(entries: impl IntoIterator<Item = &'a str>) -> SourceRanges {
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    let mut any = false;
    for entry in entries {
        any = true;
        match parse_cidr(entry) {
            Ok(net) if nets.contains(&net) => {}
            Ok(net) => nets.push(net),
            Err(e) => errors.push(e),
        }
    }
    match (any, errors.is_empty()) {
        (false, _) => SourceRanges::Any,
        (true, true) => SourceRanges::Only(nets),
        (true, false) => SourceRanges::Invalid { errors },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn reads_what_the_api_server_accepts() {
        for (text, want) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 10.0.0.0/8\t", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("010.001.002.003/32", "10.1.2.3/32"),
            ("192.168.001.000/024", "192.168.1.0/24"),
            ("0000000010.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
            ("::ffff:010.1.2.3/128", "10.1.2.3/32"),
        ] {
            assert_eq!(parse_cidr(text), Ok(net(want)), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_the_api_server_refuses_with_the_reason() {
        for (text, why) in [
            (
                "10.0.0.0/33",
                "the prefix length must be a number from 0 to 32",
            ),
            (
                "2001:db8::/129",
                "the prefix length must be a number from 0 to 128",
            ),
            ("10.0.0.1", "a prefix length is required, e.g. 10.0.0.1/32"),
            (
                "2001:db8::1",
                "a prefix length is required, e.g. 2001:db8::1/128",
            ),
            ("example.com/8", "\"example.com\" is not an IP address"),
            (
                "10.0.0.0/",
                "the prefix length must be a number from 0 to 32",
            ),
            (
                "10.0.0.0/+8",
                "the prefix length must be a number from 0 to 32",
            ),
            ("256.0.0.0/8", "\"256.0.0.0\" is not an IP address"),
            ("10.0.0/8", "\"10.0.0\" is not an IP address"),
            ("fe80::1%eth0/64", "\"fe80::1%eth0\" is not an IP address"),
            ("", "a prefix length is required"),
            ("::ffff:0:0/95", "IPv4-mapped"),
        ] {
            assert_eq!(is_valid_cidr(text), why.contains("IPv4-mapped"), "{text:?}");
            let err = parse_cidr(text).expect_err(text);
            assert!(
                err.starts_with(&format!("{text:?} is not a valid CIDR (")) && err.contains(why),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn source_ranges_dedupe_and_fail_closed() {
        assert_eq!(source_ranges([]), SourceRanges::Any);
        assert_eq!(
            source_ranges(["10.0.0.0/8", " 10.9.9.9/8 ", "2001:db8::/32"]),
            SourceRanges::Only(vec![net("10.0.0.0/8"), net("2001:db8::/32")])
        );
        assert_eq!(
            source_ranges(["10.0.0.0/8", "10.0.0.0/33"]),
            SourceRanges::Invalid {
                errors: vec![
                    "\"10.0.0.0/33\" is not a valid CIDR (the prefix length must be a number from 0 to 32)".into()
                ]
            }
        );
        assert!(matches!(source_ranges([""]), SourceRanges::Invalid { .. }));
    }
}
