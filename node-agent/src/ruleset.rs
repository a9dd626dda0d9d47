//! The desired nftables state of the agent's table, as plain data.
//!
//! Rules are kept as nft statement text (the planner writes them, the
//! renderer only places them): the ruleset is compared and diffed by chain,
//! and a chain's rules only ever change as a whole.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The one table the agent owns (family `inet`). Nothing outside it is
/// ever touched.
pub const TABLE_NAME: &str = "portico";

/// An address family: the `inet` table holds one part per family (its own
/// maps, chains and endpoint addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The nft payload keyword for this family's header (`ip` / `ip6`).
    pub fn nft_keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nft data type of an address of this family.
    pub fn nft_addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// Suffix of this family's map names: IPv4 keeps kube-proxy's names,
    /// IPv6 maps end in `6` (kube-proxy has a table per family; we have one
    /// `inet` table, so the names must differ).
    pub fn map_suffix(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => "6",
        }
    }

    /// The loopback network, excluded from NodePorts as kube-proxy does
    /// (loopback NodePorts would need `route_localnet`).
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1",
        }
    }

    /// Both families, in rendering order.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The hook of a base chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: String,
    /// `prerouting`, `input`, `forward`, `output` or `postrouting`.
    pub hook: String,
    /// The priority, as nft text (`dstnat`, `-110`, `dstnat - 10`).
    pub priority: String,
}

/// A chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Chain {
    /// `Some` for a base chain attached to a hook.
    pub base: Option<BaseChain>,
    /// Its rules, in order, as nft statement text.
    pub rules: Vec<String>,
}

/// A named set or map (a map when `value_type` is set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Set {
    /// The key's declaration: `type ipv4_addr . inet_proto . inet_service`,
    /// or `typeof numgen random mod 1` where only an expression names the
    /// type.
    pub key: String,
    /// The value type of a map (`verdict`); `None` for a set.
    pub value_type: Option<String>,
    /// Set flags (`dynamic`, `timeout`).
    pub flags: Vec<String>,
    /// The default element timeout in seconds (affinity sets).
    pub timeout_secs: Option<u64>,
    /// Static elements: key text -> value text (`None` in a set). Dynamic
    /// sets (filled by the datapath) have none.
    pub elements: BTreeMap<String, Option<String>>,
}

impl Set {
    /// Whether this is a map (`map` rather than `set` in nft).
    pub fn is_map(&self) -> bool {
        self.value_type.is_some()
    }

    /// Whether two sets have the same definition (everything but elements):
    /// a changed definition means the set must be recreated.
    pub fn same_definition(&self, other: &Set) -> bool {
        self.key == other.key
            && self.value_type == other.value_type
            && self.flags == other.flags
            && self.timeout_secs == other.timeout_secs
    }
}

/// The whole desired content of `table inet portico`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Ruleset {
    /// Applies a change given as two partial rulesets over the same names
    /// (see [`crate::plan::PlanChange::rulesets`]): every chain and set named
    /// in `before` or `after` becomes what `after` says (absent = removed),
    /// except that a set whose definition `self` already has keeps its other
    /// elements: only the elements named in `before` or `after` change.
    pub fn apply_change(&mut self, before: &Ruleset, after: &Ruleset) {
        for name in before.chains.keys() {
            if !after.chains.contains_key(name) {
                self.chains.remove(name);
            }
        }
        for (name, chain) in &after.chains {
            self.chains.insert(name.clone(), chain.clone());
        }
        for name in before.sets.keys() {
            if !after.sets.contains_key(name) {
                self.sets.remove(name);
            }
        }
        for (name, new) in &after.sets {
            match self.sets.get_mut(name) {
                Some(set) if set.same_definition(new) => {
                    if let Some(old) = before.sets.get(name) {
                        for key in old.elements.keys() {
                            if !new.elements.contains_key(key) {
                                set.elements.remove(key);
                            }
                        }
                    }
                    for (key, value) in &new.elements {
                        set.elements.insert(key.clone(), value.clone());
                    }
                }
                _ => {
                    self.sets.insert(name.clone(), new.clone());
                }
            }
        }
    }
}
