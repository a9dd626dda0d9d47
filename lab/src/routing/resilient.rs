//! A router that keeps flows where they are when an edge leaves: its BGP
//! routes installed as resilient nexthop groups (`ip nexthop ... type
//! resilient`), as a router with resilient ECMP hashing does in hardware.
//!
//! BIRD installs plain multipath routes only, so in the lab the router's
//! BIRD exports into table [`LEARNED_TABLE`] (its kernel protocols get a
//! `kernel table` line, [`learned_table`]) and a [`ResilientFib`] thread
//! mirrors each route found there into the main table as a route through a
//! resilient group of the same next hops. When a next hop leaves the group,
//! the kernel moves only its buckets; the others keep their next hop, so
//! the flows on the surviving edges stay on them. A next hop that joins
//! takes buckets only once they have been idle for [`IDLE_TIMER`] seconds.
//!
//! [`changes`] (what to run for a change of the learned routes) is pure;
//! the thread reads the table and runs the `ip` commands every few
//! milliseconds, which adds those milliseconds to every route change.
//!
//! Both families alike: an IPv6 route's next hops are IPv6 gateways, which
//! get nexthop objects of their own, so each group holds one family (the
//! kernel refuses a group that mixes them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns;
use crate::sync::lock;

use super::{RoutingError, RECHECK};

/// The kernel table the router's BIRD exports to when its FIB is resilient.
pub const LEARNED_TABLE: u32 = 4243;
/// The buckets of each group: enough that one edge of three holds about a
/// third of them.
pub const BUCKETS: u32 = 128;
/// Seconds a bucket must be unused before it may move to a joining next
/// hop (the kernel's `idle_timer`).
pub const IDLE_TIMER: u32 = 1;
/// The first nexthop id the mirror uses (gateways, then groups above).
const FIRST_ID: u32 = 1000;
/// How long the mirror runs at most (a lab test's lifetime).
const LIFETIME: Duration = Duration::from_secs(900);

/// A next hop: gateway and device.
pub type Hop = (IpAddr, String);

/// The routes of the learned table: prefix -> next hops.
pub type Routes = BTreeMap<String, BTreeSet<Hop>>;

/// `text` (a rendered `bird-router.conf`) with each `protocol kernel {`
/// block exporting into [`LEARNED_TABLE`] instead of the main table.
pub fn learned_table(text: &str) -> String {
    text.lines()
        .flat_map(|l| {
            let mut out = vec![l.to_string()];
            if l.trim() == "protocol kernel {" {
                out.push(format!("\tkernel table {LEARNED_TABLE};"));
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// What the mirror has installed: the ids of gateways and of each prefix's
/// group, and each prefix's hops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    hop_ids: BTreeMap<Hop, u32>,
    groups: BTreeMap<String, (u32, BTreeSet<Hop>)>,
    next_id: u32,
}

impl Installed {
    /// The hops each prefix goes through now.
    pub fn routes(&self) -> Routes {
        self.groups
            .iter()
            .map(|(p, (_, hops))| (p.clone(), hops.clone()))
            .collect()
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.max(FIRST_ID) + 1;
        self.next_id
    }
}

/// The `ip` commands (argument lists, without the namespace) that take
/// `installed` to `learned`, and what is installed after them. Gateways
/// get a nexthop object once and keep it; a prefix's group is created,
/// replaced with its new members (the kernel keeps the buckets of the
/// members that stay) or removed with its route.
pub fn changes(installed: &Installed, learned: &Routes) -> (Vec<Vec<String>>, Installed) {
    let mut next = installed.clone();
    let mut commands = Vec::new();
    let family = |p: &str| if p.contains(':') { "-6" } else { "-4" };
    for (prefix, hops) in learned.iter().filter(|(_, hops)| !hops.is_empty()) {
        for hop in hops {
            if !next.hop_ids.contains_key(hop) {
                let id = next.id();
                next.hop_ids.insert(hop.clone(), id);
                commands.push(args(&format!(
                    "nexthop replace id {id} via {} dev {}",
                    hop.0, hop.1
                )));
            }
        }
        let members = hops
            .iter()
            .map(|h| next.hop_ids[h].to_string())
            .collect::<Vec<_>>()
            .join("/");
        let group =
            format!("group {members} type resilient buckets {BUCKETS} idle_timer {IDLE_TIMER}");
        match next.groups.get(prefix).cloned() {
            Some((_, ref had)) if had == hops => {}
            Some((id, _)) => {
                commands.push(args(&format!("nexthop replace id {id} {group}")));
                next.groups.insert(prefix.clone(), (id, hops.clone()));
            }
            None => {
                let id = next.id();
                commands.push(args(&format!("nexthop replace id {id} {group}")));
                commands.push(args(&format!(
                    "{} route replace {prefix} nhid {id}",
                    family(prefix)
                )));
                next.groups.insert(prefix.clone(), (id, hops.clone()));
            }
        }
    }
    let gone: Vec<String> = next
        .groups
        .keys()
        .filter(|p| learned.get(*p).is_none_or(BTreeSet::is_empty))
        .cloned()
        .collect();
    for prefix in gone {
        let (id, _) = next.groups.remove(&prefix).expect("listed");
        commands.push(args(&format!("{} route del {prefix}", family(&prefix))));
        commands.push(args(&format!("nexthop del id {id}")));
    }
    (commands, next)
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// Reads `ip -j route show table N`: each route's prefix and next hops.
pub fn parse_routes(text: &str) -> Result<Routes, RoutingError> {
    let bad = |why: String| RoutingError::IpJson(format!("{why}: {text}"));
    let mut routes = Routes::new();
    if text.trim().is_empty() {
        return Ok(routes);
    }
    let list: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    for route in list.as_array().ok_or_else(|| bad("not a list".into()))? {
        let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        let prefix = if dst.contains('/') {
            dst.to_string()
        } else if dst.contains(':') {
            format!("{dst}/128")
        } else {
            format!("{dst}/32")
        };
        let hops = routes.entry(prefix).or_default();
        let one = std::iter::once(route);
        let many = route
            .get("nexthops")
            .and_then(|h| h.as_array())
            .into_iter()
            .flatten();
        for hop in one.chain(many) {
            let (Some(gw), Some(dev)) = (
                hop.get("gateway").and_then(|g| g.as_str()),
                hop.get("dev").and_then(|d| d.as_str()),
            ) else {
                continue;
            };
            let gw: IpAddr = gw.parse().map_err(|_| bad(format!("gateway {gw}")))?;
            hops.insert((gw, dev.to_string()));
        }
    }
    Ok(routes)
}

/// The routes in [`LEARNED_TABLE`] of namespace `ns`, both families (none
/// while the kernel has no such table yet).
pub fn learned(ns: &str) -> Result<Routes, RoutingError> {
    let mut learned = Routes::new();
    for family in ["-4", "-6"] {
        let table = LEARNED_TABLE.to_string();
        match netns::ip(&["-j", family, "-n", ns, "route", "show", "table", &table]) {
            Ok(text) => learned.extend(parse_routes(&text)?),
            Err(netns::NetnsError::Failed { stderr, .. })
                if stderr.contains("FIB table does not exist") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(learned)
}

/// How many buckets of group `id` in namespace `ns` each member holds
/// (`ip -j nexthop bucket show id N`).
pub fn bucket_counts(ns: &str, id: u32) -> Result<BTreeMap<u32, usize>, RoutingError> {
    let text = netns::ip(&[
        "-j",
        "-n",
        ns,
        "nexthop",
        "bucket",
        "show",
        "id",
        &id.to_string(),
    ])?;
    parse_buckets(&text)
}

/// Reads `ip -j nexthop bucket show`: buckets per member id.
pub fn parse_buckets(text: &str) -> Result<BTreeMap<u32, usize>, RoutingError> {
    let bad = |why: String| RoutingError::IpJson(format!("{why}: {text}"));
    let list: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut counts = BTreeMap::new();
    for entry in list.as_array().ok_or_else(|| bad("not a list".into()))? {
        let nhid = entry
            .pointer("/bucket/nhid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("a bucket without its nhid".into()))?;
        *counts.entry(nhid).or_default() += 1;
    }
    Ok(counts)
}

/// The mirror of [`LEARNED_TABLE`] into resilient groups, running in a
/// namespace until dropped.
pub struct ResilientFib {
    stop: Arc<AtomicBool>,
    installed: Arc<Mutex<Installed>>,
    thread: Option<JoinHandle<Result<(), RoutingError>>>,
}

impl ResilientFib {
    /// Starts mirroring in namespace `ns`.
    pub fn start(ns: &str) -> ResilientFib {
        let stop = Arc::new(AtomicBool::new(false));
        let installed = Arc::new(Mutex::new(Installed::default()));
        let (ns, flag, shared) = (ns.to_string(), stop.clone(), installed.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
                let learned = learned(&ns)?;
                let now = lock(&shared).clone();
                let (commands, next) = changes(&now, &learned);
                for command in &commands {
                    let mut full: Vec<&str> = vec!["-n", &ns];
                    full.extend(command.iter().map(String::as_str));
                    netns::ip(&full)?;
                }
                *lock(&shared) = next;
                std::thread::sleep(RECHECK);
            }
            Ok(())
        });
        ResilientFib {
            stop,
            installed,
            thread: Some(thread),
        }
    }

    /// What the mirror has installed.
    pub fn installed(&self) -> Installed {
        lock(&self.installed).clone()
    }

    /// Waits until `prefix` goes through a group of `members` next hops
    /// whose buckets are spread evenly (the kernel moves idle buckets to a
    /// joining member once they are idle long enough); how long it took.
    pub fn wait_balanced(
        &self,
        ns: &str,
        prefix: &str,
        members: usize,
        limit: Duration,
    ) -> Result<Duration, RoutingError> {
        let started = Instant::now();
        super::wait_for(
            &format!("{ns}: {prefix}'s buckets spread over {members}"),
            limit,
            || {
                let Some((id, _)) = self.installed().groups.get(prefix).cloned() else {
                    return Ok(Err("no group yet".to_string()));
                };
                let counts = bucket_counts(ns, id)?;
                let (least, most) = (
                    counts.values().min().copied().unwrap_or(0),
                    counts.values().max().copied().unwrap_or(0),
                );
                Ok(if counts.len() == members && most - least <= 1 {
                    Ok(started.elapsed())
                } else {
                    Err(format!("{counts:?}"))
                })
            },
        )
    }

    /// Stops the mirror; its error, if it stopped on one.
    pub fn stop(&mut self) -> Result<(), RoutingError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(RoutingError::IpJson("the mirror panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for ResilientFib {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("resilient FIB mirror: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(last: u8) -> Hop {
        (IpAddr::from([10, 42, 0, last]), "br0".to_string())
    }

    fn routes(entries: &[(&str, &[u8])]) -> Routes {
        entries
            .iter()
            .map(|(p, hops)| (p.to_string(), hops.iter().map(|h| hop(*h)).collect()))
            .collect()
    }

    fn lines(commands: &[Vec<String>]) -> Vec<String> {
        commands.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn a_route_becomes_a_group_whose_members_change_in_place() {
        let (first, installed) = changes(
            &Installed::default(),
            &routes(&[("192.0.2.10/32", &[11, 12, 13])]),
        );
        let group = format!("type resilient buckets {BUCKETS} idle_timer {IDLE_TIMER}");
        assert_eq!(
            lines(&first),
            [
                "nexthop replace id 1001 via 10.42.0.11 dev br0".to_string(),
                "nexthop replace id 1002 via 10.42.0.12 dev br0".to_string(),
                "nexthop replace id 1003 via 10.42.0.13 dev br0".to_string(),
                format!("nexthop replace id 1004 group 1001/1002/1003 {group}"),
                "-4 route replace 192.0.2.10/32 nhid 1004".to_string(),
            ]
        );
        // Nothing changed: nothing to run.
        let (same, again) = changes(&installed, &routes(&[("192.0.2.10/32", &[11, 12, 13])]));
        assert!(same.is_empty());
        assert_eq!(again, installed);
        // Edge 3 leaves: the same group, two members; the route stays.
        let (left, installed) = changes(&installed, &routes(&[("192.0.2.10/32", &[11, 12])]));
        assert_eq!(
            lines(&left),
            [format!("nexthop replace id 1004 group 1001/1002 {group}")]
        );
        // It comes back: its nexthop object is reused.
        let (back, installed) = changes(&installed, &routes(&[("192.0.2.10/32", &[11, 12, 13])]));
        assert_eq!(
            lines(&back),
            [format!(
                "nexthop replace id 1004 group 1001/1002/1003 {group}"
            )]
        );
        // Every edge withdraws: route and group go, gateways stay.
        let (gone, installed) = changes(&installed, &Routes::new());
        assert_eq!(
            lines(&gone),
            ["-4 route del 192.0.2.10/32", "nexthop del id 1004"]
        );
        assert!(installed.routes().is_empty());
    }

    #[test]
    fn each_family_gets_a_group_of_its_own_next_hops() {
        let v6 = |last: u16| {
            (
                IpAddr::from(std::net::Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, last)),
                "br0".to_string(),
            )
        };
        let mut learned = routes(&[("192.0.2.10/32", &[11, 12])]);
        learned.insert(
            "2001:db8:10::10/128".to_string(),
            [v6(0x11), v6(0x12)].into_iter().collect(),
        );
        let (first, installed) = changes(&Installed::default(), &learned);
        let group = format!("type resilient buckets {BUCKETS} idle_timer {IDLE_TIMER}");
        assert_eq!(
            lines(&first),
            [
                "nexthop replace id 1001 via 10.42.0.11 dev br0".to_string(),
                "nexthop replace id 1002 via 10.42.0.12 dev br0".to_string(),
                format!("nexthop replace id 1003 group 1001/1002 {group}"),
                "-4 route replace 192.0.2.10/32 nhid 1003".to_string(),
                "nexthop replace id 1004 via fd42::11 dev br0".to_string(),
                "nexthop replace id 1005 via fd42::12 dev br0".to_string(),
                format!("nexthop replace id 1006 group 1004/1005 {group}"),
                "-6 route replace 2001:db8:10::10/128 nhid 1006".to_string(),
            ]
        );
        // Edge 2 leaves the IPv6 route only; then the IPv6 route goes.
        learned.insert(
            "2001:db8:10::10/128".to_string(),
            [v6(0x11)].into_iter().collect(),
        );
        let (left, installed) = changes(&installed, &learned);
        assert_eq!(
            lines(&left),
            [format!("nexthop replace id 1006 group 1004 {group}")]
        );
        learned.remove("2001:db8:10::10/128");
        let (gone, installed) = changes(&installed, &learned);
        assert_eq!(
            lines(&gone),
            ["-6 route del 2001:db8:10::10/128", "nexthop del id 1006"]
        );
        assert_eq!(installed.routes().len(), 1);
    }

    #[test]
    fn routes_are_read_from_ip_json_plain_and_multipath() {
        let text = r#"[{"dst":"192.0.2.10","gateway":"10.42.0.11","dev":"br0","protocol":"bird","flags":[]},
            {"dst":"192.0.2.11","protocol":"bird","flags":[],"nexthops":[{"gateway":"10.42.0.11","dev":"br0","weight":1,"flags":[]},{"gateway":"10.42.0.12","dev":"br0","weight":1,"flags":[]}]},
            {"dst":"2001:db8::10","protocol":"bird","flags":[],"nexthops":[{"gateway":"fd42::11","dev":"br0","weight":1,"flags":[]}]}]"#;
        let read = parse_routes(text).unwrap();
        assert_eq!(read["192.0.2.10/32"], [hop(11)].into_iter().collect());
        assert_eq!(
            read["192.0.2.11/32"],
            [hop(11), hop(12)].into_iter().collect()
        );
        assert_eq!(read["2001:db8::10/128"].len(), 1);
        assert!(parse_routes("").unwrap().is_empty());
        assert!(parse_routes("{").is_err());
    }

    #[test]
    fn buckets_are_counted_by_member() {
        let text = r#"[{"id":1,"bucket":{"index":0,"idle_time":0,"nhid":12},"flags":[]},{"id":1,"bucket":{"index":1,"idle_time":0.01,"nhid":11},"flags":[]},{"id":1,"bucket":{"index":2,"idle_time":2.01,"nhid":12},"flags":[]}]"#;
        let counts = parse_buckets(text).unwrap();
        assert_eq!(counts, BTreeMap::from([(11, 1), (12, 2)]));
        assert!(parse_buckets(r#"[{"id":1,"bucket":{"index":0}}]"#).is_err());
    }

    #[test]
    fn the_kernel_protocols_export_to_the_learned_table() {
        let text = "protocol device {\n}\nprotocol kernel {\n\tipv4 { export all; };\n}\nprotocol kernel {\n\tipv6 { export all; };\n}\n";
        let out = learned_table(text);
        assert_eq!(
            out.matches(&format!("\tkernel table {LEARNED_TABLE};"))
                .count(),
            2
        );
        assert!(out.starts_with("protocol device {\n}\nprotocol kernel {\n\tkernel table 4243;\n"));
    }
}
