//! The model every part of Portico shares: load-balanced Services, Nodes and
//! the edge's settings, as validated values.
//!
//! Sources (a config file, the Kubernetes API, the hook API) turn their input
//! into these types; planners turn these types into desired state. Nothing here
//! does IO, and every value here has already been validated: a `Service` with a
//! port outside 1-65535 cannot be built through the config file parser.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;

/// Identifies a Service: `namespace/name`, as Kubernetes does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key from a namespace and a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An L4 protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// An IP family, as `spec.ipFamilies` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> IpFamily {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrafficPolicy {
    /// Any node forwards to any ready endpoint (kube-proxy masquerades).
    /// The edge checks kube-proxy's node health server (`:10256/healthz`).
    #[default]
    Cluster,
    /// A node forwards only to its own endpoints and keeps the client address.
    /// The edge checks `healthCheckNodePort`, which answers 503 on nodes
    /// without a local endpoint.
    Local,
}

/// `spec.sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionAffinity {
    /// Every connection is placed on its own (by client address and port).
    #[default]
    None,
    /// A client address sticks to one node until `timeout` passes without
    /// traffic from it.
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds` (1..=86400, default 10800).
        timeout: Duration,
    },
}

/// Default ClientIP affinity timeout, as Kubernetes defaults it.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

/// How a Service port picks a node for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Maglev consistent hashing on the client address and port (or the
    /// client address alone under ClientIP affinity). Two edges with the same
    /// view pick the same node; a node leaving moves only its own flows.
    #[default]
    Maglev,
    /// Weighted round-robin.
    RoundRobin,
    /// The node with the fewest active connections through this edge
    /// (relative to its weight).
    LeastConnections,
}

/// Whether and how a PROXY protocol header is sent to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyProtocol {
    /// No header: the node sees a plain connection.
    #[default]
    Off,
    /// The human-readable v1 header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary v2 header.
    V2,
}

/// When a TCP connection's bytes go through `splice(2)` instead of a
/// user-space buffer (`settings.proxy.splice`).
///
/// Splicing halves the CPU per GB of bulk transfers, but each small
/// request costs more (a pipe and two splices where one read and one write
/// do), which doubled kept-alive p99 latency in docs/benchmarks.md (run 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpliceMode {
    /// Always through buffers.
    Off,
    /// Each direction starts buffered and switches to splicing once one
    /// read fills the whole buffer, i.e. the transfer proves large (the
    /// rule of HAProxy's `option splice-auto`). Request/response traffic
    /// keeps the buffered path's latency, bulk transfers get the spliced
    /// path's CPU cost.
    #[default]
    Auto,
    /// Every direction splices from the first byte.
    Always,
}

/// `spec.loadBalancerSourceRanges`, after parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum SourceRanges {
    /// No ranges given: every client may connect.
    #[default]
    Any,
    /// Only clients inside one of these networks may connect.
    Only(Vec<IpNetwork>),
    /// The ranges could not be parsed. The Service fails closed: no client is
    /// accepted, because an unparsable range must never widen access. Sources
    /// that cannot refuse the whole object (the Kubernetes API) produce this.
    Invalid {
        /// Every problem found, each naming the offending entry.
        errors: Vec<String>,
    },
}

/// One port of a load-balanced Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// The port's name (may be empty for a single-port Service).
    pub name: String,
    /// Its L4 protocol.
    pub protocol: Protocol,
    /// The port clients connect to on the Service's VIPs.
    pub port: u16,
    /// The port every node listens on for this Service port. `None` when the
    /// Service was created with `allocateLoadBalancerNodePorts: false`: the
    /// edge cannot reach such a port through nodes.
    pub node_port: Option<u16>,
}

/// A Service the edge balances: VIPs, ports and per-Service options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// The addresses clients connect to (IPv4 and/or IPv6).
    pub vips: Vec<IpAddr>,
    /// The Service's ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`, required for `Local`.
    pub health_check_node_port: Option<u16>,
    /// `spec.sessionAffinity` (+ its timeout).
    pub session_affinity: SessionAffinity,
    /// `spec.loadBalancerSourceRanges`.
    pub source_ranges: SourceRanges,
    /// How a node is picked.
    pub algorithm: Algorithm,
    /// PROXY protocol towards the node.
    pub proxy_protocol: ProxyProtocol,
    /// How nodes are checked for this Service when its policy is `Cluster`;
    /// `None` follows `settings.health.clusterCheck`.
    pub cluster_check: Option<ClusterHealthCheck>,
}

/// Why a Node is excluded from receiving load-balanced traffic
/// (cloud-provider service controller, KEP-3458).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExclusionReason {
    /// The Node has a `deletionTimestamp`.
    Deleting,
    /// The Node carries `node.kubernetes.io/exclude-from-external-load-balancers`.
    ExcludeLabel,
    /// The Node carries the taint `ToBeDeletedByClusterAutoscaler`.
    ToBeDeletedTaint,
}

impl fmt::Display for ExclusionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExclusionReason::Deleting => "deleting",
            ExclusionReason::ExcludeLabel => "exclude-from-external-load-balancers",
            ExclusionReason::ToBeDeletedTaint => "ToBeDeletedByClusterAutoscaler",
        })
    }
}

/// A cluster node the edge may send traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Node {
    /// The Node's name.
    pub name: String,
    /// Its addresses in order of preference (first InternalIP, ...). The edge
    /// uses the first address of the client's family, else the first one.
    pub addresses: Vec<IpAddr>,
    /// Why it must not receive traffic; empty when it is eligible.
    pub excluded: Vec<ExclusionReason>,
}

impl Node {
    /// Whether the Node may receive load-balanced traffic.
    pub fn eligible(&self) -> bool {
        self.excluded.is_empty()
    }

    /// Whether the Node is on its way out of the cluster (being deleted, or
    /// marked by the cluster autoscaler): what kube-proxy's `/healthz`
    /// reports as `nodeEligible: false`. The exclusion label does not count
    /// there; it only keeps load balancers away.
    pub fn leaving(&self) -> bool {
        self.excluded.iter().any(|r| {
            matches!(
                r,
                ExclusionReason::Deleting | ExclusionReason::ToBeDeletedTaint
            )
        })
    }
}

/// How the edge checks nodes for `externalTrafficPolicy: Cluster` Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClusterHealthCheck {
    /// HTTP GET `node:<kube_proxy_port>/healthz` (kube-proxy's node health server).
    #[default]
    KubeProxy,
    /// A TCP connect to the Service's NodePort, for clusters where nothing
    /// serves the node health port.
    TcpNodePort,
}

/// What happens when every backend of a Service port is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AllDownPolicy {
    /// Send to every eligible node anyway, as cloud network load balancers do:
    /// a health-check outage must not become a traffic outage.
    #[default]
    FailOpen,
    /// Refuse new connections until a node is healthy again.
    FailClosed,
}

/// Health check settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthSettings {
    /// Time between two probes of one target.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Consecutive successes to mark a down target up.
    pub rise: u32,
    /// Consecutive failures to mark an up target down.
    pub fall: u32,
    /// The probe used for `Cluster` Services.
    pub cluster_check: ClusterHealthCheck,
    /// The port of kube-proxy's node health server (10256).
    pub kube_proxy_port: u16,
    /// Behaviour when every backend is down.
    pub all_down: AllDownPolicy,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            cluster_check: ClusterHealthCheck::KubeProxy,
            kube_proxy_port: crate::names::KUBE_PROXY_HEALTH_PORT,
            all_down: AllDownPolicy::FailOpen,
        }
    }
}

/// Data path settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxySettings {
    /// How long one connect to a node may take.
    pub connect_timeout: Duration,
    /// How many further nodes are tried after a failed connect.
    pub connect_retries: u32,
    /// When a connect has not completed after this long, the next node is
    /// tried alongside it and the first to connect wins (RFC 8305's
    /// "connection attempt delay"); a dead node then costs a client this
    /// delay instead of the whole connect timeout. Zero tries the nodes one
    /// after another, each for the whole timeout.
    pub connect_attempt_delay: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// A UDP flow (client address -> node) with no datagram either way for
    /// this long is forgotten; the next datagram picks a node afresh.
    pub udp_idle_timeout: Duration,
    /// How long connections to a removed backend (or, at shutdown or upgrade,
    /// any connection) may run on before they are closed.
    pub drain_timeout: Duration,
    /// Size of the Maglev lookup table; a prime.
    pub maglev_table_size: u32,
    /// When TCP data is copied socket -> pipe -> socket with `splice(2)`,
    /// inside the kernel, rather than through a user-space buffer (the edge
    /// falls back to buffers by itself where the kernel refuses).
    pub splice: SpliceMode,
    /// TCP connections in flight at most (HAProxy's `maxconn`); a listener
    /// stops accepting while the edge holds this many, and clients wait in
    /// its backlog. `None`: derived from the descriptor limit.
    pub max_connections: Option<u32>,
    /// UDP flows at most, over every UDP port; a datagram that would start
    /// one more is dropped and counted. `None`: derived from the descriptor
    /// limit.
    pub max_udp_flows: Option<u32>,
}

/// The default Maglev table size, from the Maglev paper.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65537;

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(2),
            connect_retries: 2,
            connect_attempt_delay: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(3600),
            udp_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            splice: SpliceMode::Auto,
            max_connections: None,
            max_udp_flows: None,
        }
    }
}

/// Whether the edge puts VIPs on an interface itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct VipSettings {
    /// The interface to add VIPs to and announce them on; `None` leaves
    /// addresses to someone else (keepalived, a routing daemon, the operator).
    pub interface: Option<String>,
}

/// The kernel routing table announced VIP routes go in, unless configured.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 4242;
/// The device announced VIP routes go through, unless configured.
pub const DEFAULT_ANNOUNCE_DEVICE: &str = "portico-vips";
/// The route protocol number (`ip route ... proto 242`) of announced VIP
/// routes: what a routing daemon's import filter selects them by.
pub const ANNOUNCE_ROUTE_PROTOCOL: u8 = 242;

/// Announcing VIPs to a routing daemon (BIRD exporting them by BGP): the
/// edge keeps a host route for each VIP it is ready to serve in a kernel
/// routing table of its own, through a device that lives only as long as
/// the edge's process (and its successor after a binary upgrade), so the
/// routes go when the edge does, however it ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnnounceSettings {
    /// The kernel routing table the routes go in (no `ip rule` needs to
    /// point at it: it never steers the edge's own traffic).
    pub table: u32,
    /// The name of the device the routes go through.
    pub device: String,
    /// Withdraw a VIP while this edge sees no healthy node for any of its
    /// ports (another edge may see one).
    pub withdraw_when_no_healthy_node: bool,
    /// At a stop, how long the edge keeps accepting after withdrawing its
    /// VIPs, while the withdraw reaches the routers.
    pub withdraw_grace: Duration,
    /// The control socket of the BIRD beside the edge, whose BGP and BFD
    /// sessions the edge exports as metrics.
    pub bird_socket: std::path::PathBuf,
}

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            table: DEFAULT_ANNOUNCE_TABLE,
            device: DEFAULT_ANNOUNCE_DEVICE.to_string(),
            withdraw_when_no_healthy_node: false,
            withdraw_grace: Duration::from_secs(2),
            bird_socket: std::path::PathBuf::from("/run/bird/bird.ctl"),
        }
    }
}

/// Settings of the edge process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeSettings {
    /// Health checks.
    pub health: HealthSettings,
    /// The data path.
    pub proxy: ProxySettings,
    /// VIP management.
    pub vip: VipSettings,
    /// Announcing VIPs to a routing daemon; `None`: not announced.
    pub announce: Option<AnnounceSettings>,
    /// Where `/metrics` is served.
    pub metrics_listen: std::net::SocketAddr,
    /// Where the admin API (`/status`) is served.
    pub admin_listen: std::net::SocketAddr,
    /// Watching a Kubernetes cluster; `None` when the edge does not.
    pub kubernetes: Option<KubernetesSettings>,
    /// Pools LoadBalancer addresses are assigned from (Services from the
    /// cluster and from the hook API). Never overlapping.
    pub address_pools: Vec<AddressPool>,
    /// The cloud-provider hook API; `None` when it is off.
    pub hook_api: Option<HookApiSettings>,
}

/// The `loadBalancerClass` the edge implements unless configured otherwise.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "portico.io/edge";

/// How the edge watches a Kubernetes cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubernetesSettings {
    /// Services with this `spec.loadBalancerClass` are ours.
    pub load_balancer_class: String,
    /// Services without a `loadBalancerClass` are ours too (the edge is the
    /// cluster's default LoadBalancer implementation).
    pub default_class: bool,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account, as `kubectl` looks for them.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Which of several edges watching the cluster writes statuses and
    /// Events; `None`: this edge always does (it is alone).
    pub leader_election: Option<LeaderElection>,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_string(),
            default_class: false,
            kubeconfig: None,
            leader_election: Some(LeaderElection::default()),
        }
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease: the edge holding
/// it writes statuses and posts Events; the others serve traffic and keep
/// their view current, and one of them takes over the writes within the
/// lease duration when the holder is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaderElection {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// How long the holder's lease lasts without a renewal (whole
    /// seconds): how long writes may pause when the holder dies.
    pub lease_duration: Duration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            namespace: "kube-system".to_string(),
            lease_name: "portico-edge".to_string(),
            lease_duration: Duration::from_secs(15),
        }
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressRange {
    /// The first address.
    pub first: IpAddr,
    /// The last address (same family, not below `first`).
    pub last: IpAddr,
}

impl AddressRange {
    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.first, self.last, addr) {
            (IpAddr::V4(f), IpAddr::V4(l), IpAddr::V4(a)) => f <= a && a <= l,
            (IpAddr::V6(f), IpAddr::V6(l), IpAddr::V6(a)) => f <= a && a <= l,
            _ => false,
        }
    }

    /// Whether two ranges share an address.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        other.contains(self.first)
            || other.contains(self.last)
            || self.contains(other.first)
            || self.contains(other.last)
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A named pool of LoadBalancer addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressPool {
    /// The pool's name (a DNS label), as Services name it in annotations.
    pub name: String,
    /// Its addresses, in the order they are handed out.
    pub ranges: Vec<AddressRange>,
}

impl AddressPool {
    /// Whether `addr` belongs to the pool.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr))
    }
}

/// The cloud-provider hook API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HookApiSettings {
    /// Where it listens (nothing else is served there).
    pub listen: std::net::SocketAddr,
    /// The file holding the bearer token callers must present.
    pub token_file: std::path::PathBuf,
    /// Where the load balancers given through the API are persisted.
    pub state_file: std::path::PathBuf,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            health: HealthSettings::default(),
            proxy: ProxySettings::default(),
            vip: VipSettings::default(),
            announce: None,
            metrics_listen: ([127, 0, 0, 1], 9720).into(),
            admin_listen: ([127, 0, 0, 1], 9721).into(),
            kubernetes: None,
            address_pools: Vec::new(),
            hook_api: None,
        }
    }
}

/// Everything the edge needs: its settings and the current Services and Nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeConfig {
    /// Process settings.
    pub settings: EdgeSettings,
    /// Load-balanced Services.
    pub services: Vec<Service>,
    /// Cluster nodes.
    pub nodes: Vec<Node>,
}

/// A string that names none of an enum's values, from one of the `FromStr`
/// impls below (which accept exactly the spellings the config file and the
/// Kubernetes API use, case-sensitively).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ParseEnumError {
    /// What was being parsed, e.g. `protocol`.
    pub what: &'static str,
    /// The offending input.
    pub value: String,
    /// Every accepted spelling.
    pub expected: &'static [&'static str],
}

impl ParseEnumError {
    fn describe(&self) -> String {
        let mut out = format!(
            "unknown {} {} (expected {})",
            self.what,
            crate::quote::quoted(&self.value),
            join_alternatives(self.expected)
        );
        if let Some(hint) = self
            .expected
            .iter()
            .find(|e| e.eq_ignore_ascii_case(&self.value))
        {
            out.push_str(&format!("; did you mean {hint:?}?"));
        }
        out
    }
}

/// `a`, `a or b`, `a, b or c`.
fn join_alternatives(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Parses `s` as one of `values`, compared with their spelling.
fn parse_spelled<T: Copy>(
    what: &'static str,
    s: &str,
    values: &[T],
    spellings: &'static [&'static str],
) -> Result<T, ParseEnumError> {
    values
        .iter()
        .zip(spellings)
        .find(|(_, spelled)| **spelled == s)
        .map(|(v, _)| *v)
        .ok_or_else(|| ParseEnumError {
            what,
            value: s.to_string(),
            expected: spellings,
        })
}

/// Gives a plain enum its canonical spelling, `Display` and `FromStr`.
macro_rules! spelled_enum {
    ($ty:ident, $what:literal, display = $display:tt, [$($variant:ident => $text:literal),+ $(,)?]) => {
        impl $ty {
            /// Every value, in the order the spellings are listed.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// The accepted spellings, in the order of [`Self::ALL`].
            pub const SPELLINGS: &'static [&'static str] = &[$($text),+];

            /// The canonical spelling (the one the config file uses).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_spelled($what, s, Self::ALL, Self::SPELLINGS)
            }
        }

        spelled_enum!(@display $display, $ty);
    };
    (@display true, $ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
    (@display false, $ty:ident) => {};
}

spelled_enum!(Protocol, "protocol", display = false, [Tcp => "TCP", Udp => "UDP", Sctp => "SCTP"]);
spelled_enum!(TrafficPolicy, "externalTrafficPolicy", display = true, [Cluster => "Cluster", Local => "Local"]);
spelled_enum!(Algorithm, "algorithm", display = true, [
    Maglev => "maglev",
    RoundRobin => "round-robin",
    LeastConnections => "least-connections",
]);
spelled_enum!(ProxyProtocol, "proxyProtocol", display = true, [Off => "off", V1 => "v1", V2 => "v2"]);
spelled_enum!(ExclusionReason, "exclusion reason", display = false, [
    Deleting => "deleting",
    ExcludeLabel => "exclude-from-external-load-balancers",
    ToBeDeletedTaint => "ToBeDeletedByClusterAutoscaler",
]);
spelled_enum!(ClusterHealthCheck, "clusterCheck", display = true, [
    KubeProxy => "kube-proxy",
    TcpNodePort => "tcp-node-port",
]);
spelled_enum!(SpliceMode, "splice", display = true, [Off => "off", Auto => "auto", Always => "always"]);
spelled_enum!(AllDownPolicy, "allDown", display = true, [FailOpen => "fail-open", FailClosed => "fail-closed"]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(*p));
        }
        for r in ExclusionReason::ALL {
            assert_eq!(r.to_string().parse::<ExclusionReason>(), Ok(*r));
        }
        for a in Algorithm::ALL {
            assert_eq!(a.to_string().parse::<Algorithm>(), Ok(*a));
        }
        for t in TrafficPolicy::ALL {
            assert_eq!(t.to_string().parse::<TrafficPolicy>(), Ok(*t));
        }
        for p in ProxyProtocol::ALL {
            assert_eq!(p.to_string().parse::<ProxyProtocol>(), Ok(*p));
        }
        for c in ClusterHealthCheck::ALL {
            assert_eq!(c.to_string().parse::<ClusterHealthCheck>(), Ok(*c));
        }
        for m in SpliceMode::ALL {
            assert_eq!(m.to_string().parse::<SpliceMode>(), Ok(*m));
        }
        for a in AllDownPolicy::ALL {
            assert_eq!(a.to_string().parse::<AllDownPolicy>(), Ok(*a));
        }
    }

    #[test]
    fn unknown_spelling_lists_choices_and_hints_case() {
        let err = "tcp".parse::<Protocol>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown protocol "tcp" (expected TCP, UDP or SCTP); did you mean "TCP"?"#
        );
        let err = "Foo".parse::<TrafficPolicy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown externalTrafficPolicy "Foo" (expected Cluster or Local)"#
        );
    }
}
