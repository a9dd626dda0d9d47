//! The lab's shape as data: namespace and link names, addresses, the nodes,
//! pods and Services. Pure; [`crate::lab`] turns it into namespaces and
//! processes, [`crate::objects`] into Kubernetes objects.
//!
//! ```text
//!                  public 198.51.100.0/24 (bridge br-pub in <p>-net)
//!   <p>-client-in  eth0 .10 ──┐
//!   <p>-client-out eth0 .200 ─┤
//!                             └── eth0 .1 + VIPs .100-.109   <p>-edge   (portico-edge,
//!                                 eth1 10.88.0.1 ──┐                      API server :6443)
//!                  cluster 10.88.0.0/24 (br-clu)   │
//!        ┌─────────────────────────┬───────────────┴─────────┐
//!   eth0 10.88.0.11           eth0 10.88.0.12           eth0 10.88.0.13
//!   <p>-node-1                <p>-node-2                <p>-node-3     (portico-node-agent)
//!   gw 10.244.1.1             gw 10.244.2.1             gw 10.244.3.1
//!    ├ <p>-pod-web-1   .10     ├ <p>-pod-web-2   .10     └ <p>-pod-web-3 .10
//!    └ <p>-pod-local-1 .11     └ <p>-pod-local-2 .11
//! ```
//!
//! With several edges (`portico-lab up --edges N`), a router takes the
//! edge's place on the public network and the edges sit behind it:
//!
//! ```text
//!   clients (routes 198.51.100.96/28 via .1)
//!      └── eth0 198.51.100.1   <p>-router   (BIRD: BGP + BFD to every edge,
//!          eth1 10.42.0.1 ──┐                ECMP with a layer-4 hash)
//!            edges 10.42.0.0/24 (br-edge)
//!      ┌──────────────────┼──────────────────┐
//!   eth0 10.42.0.11     eth0 10.42.0.12     eth0 10.42.0.13
//!   <p>-edge            <p>-edge2           <p>-edge3   (portico-edge + BIRD,
//!   eth1 10.88.0.1      eth1 10.88.0.2      eth1 10.88.0.3   VIPs on lo)
//!      └──────────── cluster 10.88.0.0/24 (br-clu) ──── nodes as above
//! ```
//!
//! Pods are routed, as Calico routes them: each pod has a veth of its own
//! to its node, a host route to it on the node, and a default route via
//! the node's gateway address (the same address on every pod's link). No
//! bridge: traffic between two pods of a node passes the node's routing and
//! conntrack both ways, so a pod reaching another pod of its node (or
//! itself) through a Service works without `br_netfilter`. Each node routes
//! the other nodes' pod CIDRs via their cluster address. Nothing is routed to or
//! from the host: the lab's addresses exist only inside its namespaces.
//!
//! The lab is dual-stack: every address above has an IPv6 twin, drawn from
//! the same numbers (`198.51.100.10` is `2001:db8:100::10`, `10.88.0.11` is
//! `fd00:88::11`, `10.244.2.10` is `fd00:244:2::10`), every Node has an
//! InternalIP and a pod CIDR of each family, and the Services ask for both
//! families (one for IPv6 only), so each scenario runs in either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use portico_config::IpFamily;

/// Both families, IPv4 first.
pub const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// The edge's address on the public network (its `vip.interface` is `eth0`).
pub const EDGE_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The client inside the `restricted` Service's source range.
pub const CLIENT_IN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The client outside it.
pub const CLIENT_OUT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
/// Prefix length of the public network.
pub const PUBLIC_PREFIX: u8 = 24;
/// The source range of the `restricted` Service: admits [`CLIENT_IN_IP`] only.
pub const SOURCE_RANGE: &str = "198.51.100.0/28";
/// The edge's address pool (VIPs), on the public network.
pub const ADDRESS_POOL: &str = "198.51.100.100-198.51.100.109";
/// The edge's address on the cluster network (where the API server listens,
/// and where the edge's connections to the nodes come from).
pub const EDGE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// With several edges, the block the clients route to the router: it holds
/// [`ADDRESS_POOL`].
pub const VIP_BLOCK: &str = "198.51.100.96/28";
/// Every address of [`ADDRESS_POOL`], in order.
pub fn pool_addresses() -> Vec<Ipv4Addr> {
    let (first, last) = ADDRESS_POOL
        .split_once('-')
        .expect("ADDRESS_POOL is a range");
    let first = u32::from(first.parse::<Ipv4Addr>().expect("an address"));
    let last = u32::from(last.parse::<Ipv4Addr>().expect("an address"));
    (first..=last).map(Ipv4Addr::from).collect()
}

/// The IPv6 public network's prefix length.
pub const PUBLIC_PREFIX6: u8 = 64;
/// The source range of the `restricted` Service in IPv6: admits
/// [`Client::Inside`]'s IPv6 address only.
pub const SOURCE_RANGE6: &str = "2001:db8:100::/120";
/// The edge's IPv6 address pool, on the public network.
pub const ADDRESS_POOL6: &str = "2001:db8:100::100-2001:db8:100::109";
/// With several edges, the IPv6 block the clients route to the router: it
/// holds [`ADDRESS_POOL6`].
pub const VIP_BLOCK6: &str = "2001:db8:100::100/120";
/// The IPv6 cluster network's prefix length.
pub const CLUSTER_PREFIX6: u8 = 64;

/// The IPv6 twin of a lab address: the same last numbers under the
/// family's prefix (`198.51.100.10` -> `2001:db8:100::10`,
/// `10.88.0.11` -> `fd00:88::11`, `10.244.2.10` -> `fd00:244:2::10`,
/// `10.96.0.12` -> `fd00:96::12`). The digits are read as hexadecimal
/// groups, so the twin reads like the original.
pub fn twin(v4: Ipv4Addr) -> Ipv6Addr {
    let hex = decimal_as_hex;
    match v4.octets() {
        [198, 51, 100, d] => Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, hex(d)),
        [10, 244, n, d] => Ipv6Addr::new(0xfd00, 0x244, hex(n), 0, 0, 0, 0, hex(d)),
        [10, b, 0, d] => Ipv6Addr::new(0xfd00, hex(b), 0, 0, 0, 0, 0, hex(d)),
        other => panic!("{other:?} is not a lab address with an IPv6 twin"),
    }
}

/// An IPv4 octet's decimal digits read as a hexadecimal IPv6 group (`88`
/// is `0x88`), so an IPv6 twin reads like its IPv4 address; the lab's and
/// the benchmarks' address plans both twin this way.
pub fn decimal_as_hex(octet: u8) -> u16 {
    u16::from_str_radix(&octet.to_string(), 16).expect("decimal digits are hex digits")
}

/// An address of the lab in `family`: `v4` itself or its [`twin`].
pub fn in_family(v4: Ipv4Addr, family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(v4),
        IpFamily::V6 => IpAddr::V6(twin(v4)),
    }
}

/// Every address of [`ADDRESS_POOL6`], in order.
pub fn pool_addresses6() -> Vec<Ipv6Addr> {
    pool_addresses().into_iter().map(twin).collect()
}

/// With a VRRP pair, edge `n`'s (1-based) address on the public network:
/// edge 1's is [`EDGE_PUBLIC_IP`].
pub fn edge_public_ip(n: usize) -> Ipv4Addr {
    let [a, b, c, d] = EDGE_PUBLIC_IP.octets();
    Ipv4Addr::new(a, b, c, d + n as u8 - 1)
}

/// Edge `n`'s (1-based) address on the cluster network: edge 1's is
/// [`EDGE_CLUSTER_IP`].
pub fn edge_cluster_ip(n: usize) -> Ipv4Addr {
    let [a, b, c, _] = EDGE_CLUSTER_IP.octets();
    Ipv4Addr::new(a, b, c, n as u8)
}

/// Prefix length of the cluster network.
pub const CLUSTER_PREFIX: u8 = 24;
/// The pods' range (every node's pod CIDR lies in it): the node agents'
/// `--cluster-cidr`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The pods' IPv6 range.
pub const CLUSTER_CIDR6: &str = "fd00:244::/32";
/// The API server's port (on [`EDGE_CLUSTER_IP`]).
pub const API_PORT: u16 = 6443;
/// The port every pod's server listens on (the Services' `targetPort`).
pub const POD_PORT: u16 = 8080;
/// The port every Service exposes on its VIP.
pub const SERVICE_PORT: u16 = 80;
/// The node agents' kube-proxy health server port (`/healthz`).
pub const NODE_HEALTH_PORT: u16 = 10256;
/// The node agents' `/metrics` port (on 127.0.0.1 in each node namespace).
pub const AGENT_METRICS_PORT: u16 = 9731;
/// The edge's `/metrics` port (on 127.0.0.1 in the edge namespace).
pub const EDGE_METRICS_PORT: u16 = 9720;
/// The edge's admin port (`/status`; on 127.0.0.1 in the edge namespace).
pub const EDGE_ADMIN_PORT: u16 = 9721;
/// The `loadBalancerClass` the edge serves.
pub const LB_CLASS: &str = "portico.io/edge";
/// The namespace of every Service and EndpointSlice.
pub const KUBE_NAMESPACE: &str = "default";

/// A Kubernetes node of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// 1, 2 or 3.
    pub index: u8,
    /// The Node object's name (`node-<index>`).
    pub name: String,
}

impl NodeSpec {
    /// Its InternalIP, on the cluster network.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, 10 + self.index)
    }

    /// Its pod CIDR, `10.244.<index>.0/24`.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// Its IPv6 pod CIDR, `fd00:244:<index>::/64`.
    pub fn pod_cidr6(&self) -> String {
        format!("fd00:244:{}::/64", self.index)
    }

    /// Its address on each of its pods' links (the pods' gateway; what it
    /// masquerades to towards its own pods).
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }

    /// Its InternalIP of `family`.
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip(), family)
    }

    /// Its address on its pods' links in `family`.
    pub fn gateway_ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.gateway_ip(), family)
    }
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Its name, which its server answers with.
    pub name: String,
    /// The index of the node it runs on.
    pub node: u8,
    /// Its address in its node's pod CIDR (its IPv6 address is the
    /// [`twin`]).
    pub ip: Ipv4Addr,
}

impl PodSpec {
    /// Its address of `family`.
    pub fn ip_of(&self, family: IpFamily) -> IpAddr {
        in_family(self.ip, family)
    }
}

/// `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Any node forwards to any pod, masquerading.
    Cluster,
    /// A node forwards only to its own pods, keeping the source address.
    Local,
}

/// A LoadBalancer Service of the lab (one TCP port, [`SERVICE_PORT`] ->
/// the pods' [`POD_PORT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name (namespace [`KUBE_NAMESPACE`]).
    pub name: &'static str,
    /// `spec.ipFamilies`, in order: two make it `RequireDualStack`, one
    /// `SingleStack`.
    pub families: Vec<IpFamily>,
    /// Its IPv4 ClusterIP (its IPv6 one is the [`twin`]).
    pub cluster_ip: Ipv4Addr,
    /// Its NodePort.
    pub node_port: u16,
    /// `externalTrafficPolicy`.
    pub policy: Policy,
    /// `healthCheckNodePort` (with [`Policy::Local`]).
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges` (empty: everyone).
    pub source_ranges: Vec<&'static str>,
    /// `sessionAffinity: ClientIP` with this timeout, in seconds.
    pub client_ip_affinity: Option<u32>,
    /// The `portico.io/proxy-protocol` annotation, if any.
    pub proxy_protocol: Option<&'static str>,
    /// The pods behind it (its EndpointSlice).
    pub pods: Vec<&'static str>,
}

impl ServiceSpec {
    /// `spec.clusterIPs`: one per family, in family order.
    pub fn cluster_ips(&self) -> Vec<IpAddr> {
        self.families
            .iter()
            .map(|f| in_family(self.cluster_ip, *f))
            .collect()
    }

    /// `spec.ipFamilyPolicy`.
    pub fn family_policy(&self) -> &'static str {
        if self.families.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        }
    }
}

/// The three nodes.
pub fn nodes() -> Vec<NodeSpec> {
    (1..=3)
        .map(|index| NodeSpec {
            index,
            name: format!("node-{index}"),
        })
        .collect()
}

/// The pods: a `web` pod on every node, a `local` pod on nodes 1 and 2 only
/// (node 3 has no local endpoint of the `local` Service).
pub fn pods() -> Vec<PodSpec> {
    let pod = |name: &str, node: u8, host: u8| PodSpec {
        name: name.to_string(),
        node,
        ip: Ipv4Addr::new(10, 244, node, host),
    };
    vec![
        pod("web-1", 1, 10),
        pod("local-1", 1, 11),
        pod("web-2", 2, 10),
        pod("local-2", 2, 11),
        pod("web-3", 3, 10),
    ]
}

/// The Services, dual-stack but for `web6`:
/// - `web`: `Cluster`, the three `web` pods;
/// - `local`: `Local` (healthCheckNodePort 32081), the two `local` pods, and
///   a PROXY v2 header from the edge so the pods learn the client address;
///   IPv6 first in its `ipFamilies`;
/// - `restricted`: like `web`, for [`SOURCE_RANGE`] and [`SOURCE_RANGE6`] only;
/// - `sticky`: like `web`, with `sessionAffinity: ClientIP`;
/// - `web6`: like `web`, IPv6 only.
pub fn services() -> Vec<ServiceSpec> {
    let web_pods = vec!["web-1", "web-2", "web-3"];
    let base = ServiceSpec {
        name: "web",
        families: FAMILIES.to_vec(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
        node_port: 30080,
        policy: Policy::Cluster,
        health_check_node_port: None,
        source_ranges: Vec::new(),
        client_ip_affinity: None,
        proxy_protocol: None,
        pods: web_pods,
    };
    vec![
        base.clone(),
        ServiceSpec {
            name: "local",
            cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
            node_port: 30081,
            policy: Policy::Local,
            families: vec![IpFamily::V6, IpFamily::V4],
            health_check_node_port: Some(32081),
            proxy_protocol: Some("v2"),
            pods: vec!["local-1", "local-2"],
            ..base.clone()
        },
        ServiceSpec {
            name: "restricted",
            cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
            node_port: 30082,
            source_ranges: vec![SOURCE_RANGE, SOURCE_RANGE6],
            ..base.clone()
        },
        ServiceSpec {
            name: "sticky",
            cluster_ip: Ipv4Addr::new(10, 96, 0, 13),
            node_port: 30083,
            client_ip_affinity: Some(600),
            ..base.clone()
        },
        ServiceSpec {
            name: "web6",
            families: vec![IpFamily::V6],
            cluster_ip: Ipv4Addr::new(10, 96, 0, 14),
            node_port: 30084,
            ..base
        },
    ]
}

/// One of the two client hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// [`CLIENT_IN_IP`], inside the source range.
    Inside,
    /// [`CLIENT_OUT_IP`], outside it.
    Outside,
}

impl Client {
    /// Its IPv4 address.
    pub fn ip(self) -> IpAddr {
        self.ip_of(IpFamily::V4)
    }

    /// Its address of `family`.
    pub fn ip_of(self, family: IpFamily) -> IpAddr {
        let v4 = match self {
            Client::Inside => CLIENT_IN_IP,
            Client::Outside => CLIENT_OUT_IP,
        };
        in_family(v4, family)
    }

    /// Its role in namespace names.
    pub fn role(self) -> &'static str {
        match self {
            Client::Inside => "client-in",
            Client::Outside => "client-out",
        }
    }
}

/// The names of one lab's namespaces: `<prefix>-<role>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (already validated by [`valid_prefix`]).
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>-<role>`.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The namespace holding the two bridges (the "switches").
    pub fn net(&self) -> String {
        self.ns("net")
    }

    /// The edge appliance's namespace (edge 1's, when there are several).
    pub fn edge(&self) -> String {
        self.ns("edge")
    }

    /// Edge `n`'s (1-based) namespace: [`Names::edge`] for edge 1.
    pub fn edge_n(&self, n: usize) -> String {
        match n {
            1 => self.edge(),
            n => self.ns(&format!("edge{n}")),
        }
    }

    /// The router's namespace (with several edges).
    pub fn router(&self) -> String {
        self.ns("router")
    }

    /// A client's namespace.
    pub fn client(&self, client: Client) -> String {
        self.ns(client.role())
    }

    /// A node's namespace.
    pub fn node(&self, node: &NodeSpec) -> String {
        self.ns(&node.name)
    }

    /// A pod's namespace.
    pub fn pod(&self, pod: &PodSpec) -> String {
        self.ns(&format!("pod-{}", pod.name))
    }

    /// Whether a namespace name belongs to this lab.
    pub fn owns(&self, ns: &str) -> bool {
        ns.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// Whether `prefix` can name a lab: 1-24 lowercase letters, digits and
/// dashes, starting with a letter, not ending with a dash.
pub fn valid_prefix(prefix: &str) -> bool {
    (1..=24).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && !prefix.ends_with('-')
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_their_prefix_only() {
        let names = Names::new("plab");
        assert_eq!(names.edge(), "plab-edge");
        assert!(names.owns("plab-node-1"));
        assert!(!names.owns("plab2-node-1"));
        assert!(!names.owns("plabnode"));
        assert!(!Names::new("plt1-0").owns("plt1-01-edge"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("plab"));
        assert!(valid_prefix("plt123-4"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("Plab"));
        assert!(!valid_prefix("plab-"));
        assert!(!valid_prefix("p/lab"));
        assert!(!valid_prefix("1lab"));
    }

    #[test]
    fn the_pool_is_ten_addresses_in_the_vip_block() {
        let pool = pool_addresses();
        assert_eq!(pool.len(), 10);
        assert_eq!(pool[0], Ipv4Addr::new(198, 51, 100, 100));
        assert_eq!(pool[9], Ipv4Addr::new(198, 51, 100, 109));
        // The clients route VIP_BLOCK to the router: it must hold the pool.
        let (base, len) = VIP_BLOCK.split_once('/').unwrap();
        let (base, len) = (
            u32::from(base.parse::<Ipv4Addr>().unwrap()),
            len.parse::<u32>().unwrap(),
        );
        let mask = u32::MAX << (32 - len);
        assert!(pool.iter().all(|a| u32::from(*a) & mask == base));
        assert_eq!(edge_public_ip(2), Ipv4Addr::new(198, 51, 100, 2));
    }

    #[test]
    fn ipv6_twins_read_like_their_ipv4_addresses_and_keep_every_rule() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(twin(CLIENT_IN_IP), v6("2001:db8:100::10"));
        assert_eq!(twin(EDGE_CLUSTER_IP), v6("fd00:88::1"));
        assert_eq!(twin(nodes()[2].ip()), v6("fd00:88::13"));
        assert_eq!(twin(pods()[2].ip), v6("fd00:244:2::10"));
        assert_eq!(twin(Ipv4Addr::new(10, 96, 0, 14)), v6("fd00:96::14"));
        let pool = pool_addresses6();
        assert_eq!(pool.len(), 10);
        assert_eq!(
            pool[0].to_string(),
            ADDRESS_POOL6.split('-').next().unwrap()
        );
        assert_eq!(
            pool[9].to_string(),
            ADDRESS_POOL6.split('-').nth(1).unwrap()
        );
        // The source range admits the inside client only, and the VIP
        // block holds the pool and no host of the public network.
        let within = |addr: Ipv6Addr, cidr: &str| {
            let (base, len) = cidr.split_once('/').unwrap();
            let len: u32 = len.parse().unwrap();
            let mask = u128::MAX << (128 - len);
            u128::from(addr) & mask == u128::from(v6(base))
        };
        assert!(within(twin(CLIENT_IN_IP), SOURCE_RANGE6));
        assert!(!within(twin(CLIENT_OUT_IP), SOURCE_RANGE6));
        assert!(pool.iter().all(|a| within(*a, VIP_BLOCK6)));
        for host in [
            CLIENT_IN_IP,
            CLIENT_OUT_IP,
            edge_public_ip(1),
            edge_public_ip(2),
        ] {
            assert!(!within(twin(host), VIP_BLOCK6), "{host}");
        }
    }

    #[test]
    fn services_ask_for_their_families_in_order() {
        let all = services();
        let local = all.iter().find(|s| s.name == "local").unwrap();
        assert_eq!(local.family_policy(), "RequireDualStack");
        assert_eq!(
            local.cluster_ips(),
            [
                "fd00:96::11".parse::<IpAddr>().unwrap(),
                "10.96.0.11".parse().unwrap()
            ]
        );
        let web6 = all.iter().find(|s| s.name == "web6").unwrap();
        assert_eq!(web6.family_policy(), "SingleStack");
        assert_eq!(
            web6.cluster_ips(),
            ["fd00:96::14".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn every_service_pod_exists_and_local_skips_node_3() {
        let pods = pods();
        for svc in services() {
            for p in &svc.pods {
                assert!(pods.iter().any(|q| q.name == *p), "{p}");
            }
        }
        let local = services().into_iter().find(|s| s.name == "local").unwrap();
        assert!(local
            .pods
            .iter()
            .all(|p| pods.iter().find(|q| q.name == *p).unwrap().node != 3));
        // Link names must fit IFNAMSIZ (15).
        for p in &pods {
            assert!(format!("vp-{}", p.name).len() <= 15);
        }
    }
}
