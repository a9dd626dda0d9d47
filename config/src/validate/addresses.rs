//! IP addresses: the lists of them (a Service's VIPs, a node's addresses),
//! the address pools (`settings.addressPools`), and the check that fixed
//! VIPs stay out of the pools.

use std::collections::HashMap;
use std::net::IpAddr;

use super::checks::dns_label;
use super::Validator;
use crate::file::RawAddressPool;
use crate::kube::{parse_cidr, quoted};
use crate::model::{AddressPool, AddressRange, Service};

impl Validator {
    /// A non-empty list of distinct, usable IP addresses (VIPs or node
    /// addresses); returns the valid ones.
    pub(super) fn addresses(
        &mut self,
        path: &str,
        raw: Option<&[String]>,
        what: &str,
    ) -> Vec<IpAddr> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.error(path, format!("at least one {what} is required"));
        }
        let mut seen: Vec<(IpAddr, usize)> = Vec::new();
        for (k, text) in raw.iter().enumerate() {
            let item_path = format!("{path}[{k}]");
            let Some(ip) = self.check(&item_path, usable_ip(text)) else {
                continue;
            };
            match seen.iter().find(|(seen_ip, _)| *seen_ip == ip) {
                Some((_, earlier)) => {
                    let list = path.rsplit('.').next().unwrap_or(path);
                    let message = format!("duplicate {what} {ip} (also {list}[{earlier}])");
                    self.error(item_path, message);
                }
                None => seen.push((ip, k)),
            }
        }
        seen.into_iter().map(|(ip, _)| ip).collect()
    }

    /// `settings.addressPools`: named pools whose ranges no two share.
    pub(super) fn address_pools(&mut self, raw: &[Option<RawAddressPool>]) -> Vec<AddressPool> {
        let mut pools: Vec<AddressPool> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        // (range, path of the entry, pool index) of every valid range so far.
        let mut seen: Vec<(AddressRange, String, usize)> = Vec::new();
        for (i, pool) in raw.iter().enumerate() {
            // Entries that failed stage 1 were reported there.
            let Some(pool) = pool else { continue };
            let path = format!("settings.addressPools[{i}]");
            let name = match pool.name.as_deref() {
                None => {
                    self.error(format!("{path}.name"), "is required");
                    None
                }
                Some(name) => self.check(&format!("{path}.name"), dns_label(name).map(|()| name)),
            };
            if let Some(name) = name {
                if let Some(first) = names.insert(name.to_string(), i) {
                    self.error(
                        format!("{path}.name"),
                        format!(
                            "{} is also the name of settings.addressPools[{first}]",
                            quoted(name)
                        ),
                    );
                }
            }
            let mut ranges = Vec::new();
            match pool.addresses.as_deref() {
                None | Some([]) => self.error(
                    format!("{path}.addresses"),
                    "at least one CIDR, range (first-last) or address is required",
                ),
                Some(entries) => {
                    for (j, entry) in entries.iter().enumerate() {
                        let entry_path = format!("{path}.addresses[{j}]");
                        let Some(range) = self.check(&entry_path, address_range(entry)) else {
                            continue;
                        };
                        if let Some((_, other, _)) =
                            seen.iter().find(|(r, _, _)| r.overlaps(&range))
                        {
                            self.error(
                                &entry_path,
                                format!("{range} overlaps {other}; pools must not share addresses"),
                            );
                            continue;
                        }
                        seen.push((range, entry_path, i));
                        ranges.push(range);
                    }
                }
            }
            if let Some(name) = name {
                pools.push(AddressPool {
                    name: name.to_string(),
                    ranges,
                });
            }
        }
        pools
    }

    /// A config file Service's VIP must not lie in an address pool: the
    /// edge hands pool addresses out, and would hand that one out too.
    pub(super) fn vips_outside_pools(&mut self, services: &[Service], pools: &[AddressPool]) {
        for (i, svc) in services.iter().enumerate() {
            for (j, vip) in svc.vips.iter().enumerate() {
                if let Some((k, pool)) = pools.iter().enumerate().find(|(_, p)| p.contains(*vip)) {
                    self.error(
                        format!("services[{i}].vips[{j}]"),
                        format!(
                            "{vip} lies in settings.addressPools[{k}] ({}); the edge assigns pool addresses to Services from the cluster, so a fixed VIP must be outside every pool",
                            pool.name
                        ),
                    );
                }
            }
        }
    }
}

/// An IP address a VIP or a node can have: not unspecified, not multicast,
/// not the IPv4 broadcast address.
fn usable_ip(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{} is not a valid IP address", quoted(text)))?;
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(format!(
                "{ip} is an IPv4-mapped IPv6 address (an IPv4 address in IPv6 form, which IPv4 clients never use); write it as the IPv4 address {v4}"
            ));
        }
    }
    let unusable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if unusable {
        return Err(format!(
            "{ip} cannot be used here (unspecified, multicast or broadcast address)"
        ));
    }
    Ok(ip)
}

/// A pool entry: a CIDR (`203.0.113.0/28`, every address of it), a range
/// (`203.0.113.10-203.0.113.20`) or one address.
fn address_range(text: &str) -> Result<AddressRange, String> {
    let ip = |s: &str| -> Result<IpAddr, String> {
        let s = s.trim();
        s.parse().map_err(|_| {
            format!(
                "{} is not an IP address (expected a CIDR, first-last or an address)",
                quoted(s)
            )
        })
    };
    let range = if let Some((first, last)) = text.split_once('-') {
        let (first, last) = (ip(first)?, ip(last)?);
        if first.is_ipv4() != last.is_ipv4() {
            return Err(format!("{} mixes IPv4 and IPv6", quoted(text)));
        }
        if last < first {
            return Err(format!("{} ends before it starts", quoted(text)));
        }
        AddressRange { first, last }
    } else if text.contains('/') {
        let net = parse_cidr(text)?;
        AddressRange {
            first: net.network(),
            last: net.broadcast(),
        }
    } else {
        let addr = ip(text)?;
        AddressRange {
            first: addr,
            last: addr,
        }
    };
    for end in [range.first, range.last] {
        usable_ip(&end.to_string()).map_err(|e| format!("{}: {e}", quoted(text)))?;
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_problems, only_service, valid};

    #[test]
    fn address_pools_take_cidrs_ranges_and_addresses() {
        let config = valid(
            "settings:\n  addressPools:\n    - name: public\n      addresses: [203.0.113.0/30, 198.51.100.10-198.51.100.20, 192.0.2.7, 2001:db8::/126]\n    - name: spare\n      addresses: ['2001:db8:1::1 - 2001:db8:1::9']\n",
        );
        let pools = &config.settings.address_pools;
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].name, "public");
        let shown: Vec<String> = pools[0].ranges.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            shown,
            [
                "203.0.113.0-203.0.113.3",
                "198.51.100.10-198.51.100.20",
                "192.0.2.7",
                "2001:db8::-2001:db8::3"
            ]
        );
        assert!(pools[0].contains("198.51.100.15".parse().unwrap()));
        assert!(!pools[0].contains("198.51.100.21".parse().unwrap()));
        assert!(pools[1].contains("2001:db8:1::5".parse().unwrap()));
    }

    #[test]
    fn address_pool_problems_name_the_entry() {
        assert_problems(
            "settings:\n  addressPools:\n    - name: a\n      addresses: [10.0.0.0/24, 10.0.0.9-10.0.0.1, 10.0.1.0/33, '::1-10.0.0.1', bogus]\n    - name: a\n      addresses: [10.0.0.128/25]\n    - addresses: []\n    - name: c\n      adresses: [10.9.0.0/24]\n    - name: d\n      addresses: [10.0.0.5]\n",
            &[
                ("settings.addressPools[0].addresses[1]", "ends before it starts"),
                ("settings.addressPools[0].addresses[2]", "prefix length"),
                ("settings.addressPools[0].addresses[3]", "mixes IPv4 and IPv6"),
                ("settings.addressPools[0].addresses[4]", "\"bogus\" is not an IP address"),
                ("settings.addressPools[1].name", "also the name of settings.addressPools[0]"),
                ("settings.addressPools[1].addresses[0]", "overlaps settings.addressPools[0].addresses[0]"),
                ("settings.addressPools[2].name", "is required"),
                ("settings.addressPools[2].addresses", "at least one"),
                ("settings.addressPools[3].adresses", "unknown field `adresses`"),
                ("settings.addressPools[4].addresses[0]", "overlaps settings.addressPools[0]"),
            ],
        );
    }

    #[test]
    fn fixed_vips_must_be_outside_the_pools() {
        assert_problems(
            "settings:\n  addressPools:\n    - name: public\n      addresses: [203.0.113.0/28]\nservices:\n  - name: a\n    vips: [192.0.2.1, 203.0.113.4]\n    ports: [{port: 80, nodePort: 30080}]\n",
            &[("services[0].vips[1]", "lies in settings.addressPools[0] (public)")],
        );
    }

    #[test]
    fn node_addresses_are_required_valid_ips() {
        assert_problems(
            "nodes:
  - {name: a}
  - {name: b, addresses: []}
  - {name: c, addresses: [10.0.0.1, node-c.example, 10.0.0.1, 0.0.0.0]}
",
            &[
                ("nodes[0].addresses", "at least one address is required"),
                ("nodes[1].addresses", "at least one address is required"),
                (
                    "nodes[2].addresses[1]",
                    r#""node-c.example" is not a valid IP address"#,
                ),
                (
                    "nodes[2].addresses[2]",
                    "duplicate address 10.0.0.1 (also addresses[0])",
                ),
                ("nodes[2].addresses[3]", "0.0.0.0 cannot be used here"),
            ],
        );
    }

    #[test]
    fn vips_are_required_valid_and_distinct() {
        assert_problems(
            "services:
  - {name: a, ports: [{port: 80}]}
  - {name: b, vips: [], ports: [{port: 80}]}
  - {name: c, vips: [10.0.0.1, 10.0.0.256, '2001:db8::10', '2001:db8:0::10', '::', 224.0.0.1], ports: [{port: 80}]}
",
            &[
                ("services[0].vips", "at least one VIP is required"),
                ("services[1].vips", "at least one VIP is required"),
                ("services[2].vips[1]", r#""10.0.0.256" is not a valid IP address"#),
                ("services[2].vips[3]", "duplicate VIP 2001:db8::10 (also vips[2])"),
                ("services[2].vips[4]", ":: cannot be used here"),
                ("services[2].vips[5]", "224.0.0.1 cannot be used here"),
            ],
        );
        let s = only_service(
            "services: [{name: a, vips: [203.0.113.10, '2001:db8::10'], ports: [{port: 80}]}]",
        );
        assert_eq!(s.vips.len(), 2);
    }
}
