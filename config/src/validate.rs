//! Stage 2 of reading a config file: checks a [`RawDocument`] and turns it
//! into a [`model::EdgeConfig`](crate::model::EdgeConfig).
//!
//! Every problem is collected (nothing stops at the first one) as a
//! [`FieldError`] whose path uses the file's key names and `[i]` indices,
//! e.g. `services[2].ports[0].nodePort: 99999 is outside 1-65535`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::duration::{format_duration, parse_duration};
use crate::error::FieldError;
use crate::file::{
    RawAddressPool, RawDocument, RawDuration, RawEdgeConfig, RawHealthSettings, RawHookApiSettings,
    RawKubernetesSettings, RawNameOrBool, RawNode, RawProxySettings, RawService, RawServicePort,
    RawSettings, ServiceEntry,
};
use crate::kube::parse_cidr;
use crate::model::{
    AddressPool, AddressRange, EdgeConfig, EdgeSettings, HealthSettings, HookApiSettings,
    KubernetesSettings, Node, ParseEnumError, Protocol, ProxyProtocol, ProxySettings, Service,
    ServiceKey, ServicePort, SessionAffinity, SourceRanges, SpliceMode, TrafficPolicy, VipSettings,
    DEFAULT_AFFINITY_TIMEOUT,
};

pub use crate::kube::names::{DEFAULT_NAMESPACE, MAX_AFFINITY_TIMEOUT_SECONDS};
/// The smallest accepted `maglevTableSize`.
pub const MIN_MAGLEV_TABLE_SIZE: u32 = 7;
/// The largest accepted `maglevTableSize` (a prime).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_000_003;
/// The largest accepted `connectRetries`.
pub const MAX_CONNECT_RETRIES: u32 = 16;

/// Stage 2: validates a document from [`crate::file::parse_document`].
///
/// Entries that failed stage 1 (`None`) are skipped: their problems were
/// reported there, so callers must treat stage-1 errors as fatal too (as
/// [`crate::parse_edge_config`] does). Returns every problem found.
pub fn validate(doc: &RawDocument) -> Result<EdgeConfig, Vec<FieldError>> {
    let mut v = Validator::default();
    let settings = match &doc.settings {
        Some(raw) => v.settings(raw, doc.nodes.len()),
        None => EdgeSettings::default(),
    };
    let nodes = v.nodes(&doc.nodes);
    let services = v.services(&doc.services);
    v.vips_outside_pools(&services, &settings.address_pools);
    if v.errors.is_empty() {
        Ok(EdgeConfig {
            settings,
            services,
            nodes,
        })
    } else {
        Err(v.errors)
    }
}

/// Validates a file that was deserialized in one piece (e.g. by
/// `serde_yaml_ng::from_str::<RawEdgeConfig>`).
pub fn validate_raw(raw: RawEdgeConfig) -> Result<EdgeConfig, Vec<FieldError>> {
    validate(&RawDocument::from(raw))
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

/// What the cross-Service checks need to know about one Service.
struct ServiceFacts {
    /// Its key, when namespace and name are both valid.
    key: Option<ServiceKey>,
    /// How to name it in messages about other Services.
    display: String,
    /// Every valid listener: (VIP, protocol, port, index of the port).
    listeners: Vec<(IpAddr, Protocol, u16, usize)>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// Checks an optional field: `Some(default)` when absent, `Some(value)`
    /// when valid, `None` (with the problem recorded) when invalid.
    fn field<R: ?Sized, T>(
        &mut self,
        path: &str,
        raw: Option<&R>,
        default: T,
        check: impl FnOnce(&R) -> Result<T, String>,
    ) -> Option<T> {
        match raw {
            None => Some(default),
            Some(raw) => self.check(path, check(raw)),
        }
    }

    fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(path, message)).ok()
    }

    // ----- settings -------------------------------------------------------

    fn settings(&mut self, raw: &RawSettings, node_count: usize) -> EdgeSettings {
        let defaults = EdgeSettings::default();
        let health = self.health(raw.health.as_ref().unwrap_or(&RawHealthSettings::default()));
        let proxy = self.proxy(
            raw.proxy.as_ref().unwrap_or(&RawProxySettings::default()),
            node_count,
        );

        let interface = raw.vip.as_ref().and_then(|vip| vip.interface.as_deref());
        let interface = self
            .field("settings.vip.interface", interface, None, |s| {
                interface_name(s).map(|()| Some(s.to_string()))
            })
            .flatten();

        let metrics = self.field(
            "settings.metricsListen",
            raw.metrics_listen.as_deref(),
            defaults.metrics_listen,
            socket_addr,
        );
        let admin = self.field(
            "settings.adminListen",
            raw.admin_listen.as_deref(),
            defaults.admin_listen,
            socket_addr,
        );
        if let (Some(metrics), Some(admin)) = (metrics, admin) {
            if metrics == admin && admin.port() != 0 {
                self.error(
                    "settings.adminListen",
                    format!("{admin} is also metricsListen; they must differ"),
                );
            }
        }

        let kubernetes = raw.kubernetes.as_ref().and_then(|k| self.kubernetes(k));
        let address_pools = self.address_pools(raw.address_pools.as_deref().unwrap_or_default());
        let hook_api = raw
            .hook_api
            .as_ref()
            .and_then(|h| self.hook_api(h, [metrics, admin]));
        if kubernetes.is_some() && hook_api.is_some() {
            // Each would assign addresses from the same pools without
            // knowing the other's; and both describe the same cluster.
            self.error(
                "settings.hookApi",
                "cannot be used together with settings.kubernetes: an edge takes a cluster's load balancers either from watching it or from its controller-manager, not both",
            );
        }

        EdgeSettings {
            health,
            proxy,
            vip: VipSettings { interface },
            metrics_listen: metrics.unwrap_or(defaults.metrics_listen),
            admin_listen: admin.unwrap_or(defaults.admin_listen),
            kubernetes,
            address_pools,
            hook_api,
        }
    }

    /// A config file Service's VIP must not lie in an address pool: the
    /// edge hands pool addresses out, and would hand that one out too.
    fn vips_outside_pools(&mut self, services: &[Service], pools: &[AddressPool]) {
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

    fn kubernetes(&mut self, raw: &RawKubernetesSettings) -> Option<KubernetesSettings> {
        let d = KubernetesSettings::default();
        let class = self.field(
            "settings.kubernetes.loadBalancerClass",
            raw.load_balancer_class.as_deref(),
            d.load_balancer_class,
            |s| qualified_name(s).map(|()| s.to_string()),
        );
        let kubeconfig = self
            .field(
                "settings.kubernetes.kubeconfig",
                raw.kubeconfig.as_deref(),
                None,
                |s: &str| {
                    if s.is_empty() {
                        Err("must not be empty (leave it out to use KUBECONFIG or the in-cluster account)".to_string())
                    } else {
                        Ok(Some(std::path::PathBuf::from(s)))
                    }
                },
            )
            .flatten();
        if raw.enabled == Some(false) {
            return None;
        }
        Some(KubernetesSettings {
            load_balancer_class: class?,
            default_class: raw.default_class.unwrap_or(false),
            kubeconfig,
        })
    }

    fn address_pools(&mut self, raw: &[Option<RawAddressPool>]) -> Vec<AddressPool> {
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
                        format!("{name:?} is also the name of settings.addressPools[{first}]"),
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

    fn hook_api(
        &mut self,
        raw: &RawHookApiSettings,
        others: [Option<SocketAddr>; 2],
    ) -> Option<HookApiSettings> {
        let listen = match raw.listen.as_deref() {
            None => {
                self.error("settings.hookApi.listen", "is required (e.g. 0.0.0.0:9722)");
                None
            }
            Some(text) => self.check("settings.hookApi.listen", socket_addr(text)),
        };
        if let Some(listen) = listen {
            if listen.port() != 0 && others.contains(&Some(listen)) {
                self.error(
                    "settings.hookApi.listen",
                    format!("{listen} is also metricsListen or adminListen; nothing but the hook API may listen there"),
                );
            }
        }
        let mut path = |field: &str, value: Option<&str>| match value {
            None | Some("") => {
                self.error(
                    format!("settings.hookApi.{field}"),
                    "is required (a file path)",
                );
                None
            }
            Some(p) => Some(std::path::PathBuf::from(p)),
        };
        let token_file = path("tokenFile", raw.token_file.as_deref());
        let state_file = path("stateFile", raw.state_file.as_deref());
        Some(HookApiSettings {
            listen: listen?,
            token_file: token_file?,
            state_file: state_file?,
        })
    }

    fn health(&mut self, raw: &RawHealthSettings) -> HealthSettings {
        let d = HealthSettings::default();
        let p = |field: &str| format!("settings.health.{field}");
        let interval = self.field(&p("interval"), raw.interval.as_ref(), d.interval, positive);
        let timeout = self.field(&p("timeout"), raw.timeout.as_ref(), d.timeout, positive);
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                self.error(
                    p("timeout"),
                    format!(
                        "{} must not be longer than interval ({})",
                        format_duration(timeout),
                        format_duration(interval)
                    ),
                );
            }
        }
        let rise = self.field(&p("rise"), raw.rise.as_ref(), d.rise, |v| {
            u32_in(*v, 1, 100)
        });
        let fall = self.field(&p("fall"), raw.fall.as_ref(), d.fall, |v| {
            u32_in(*v, 1, 100)
        });
        let cluster_check = self.field(
            &p("clusterCheck"),
            raw.cluster_check.as_deref(),
            d.cluster_check,
            spelled,
        );
        let kube_proxy_port = self.field(
            &p("kubeProxyPort"),
            raw.kube_proxy_port.as_ref(),
            d.kube_proxy_port,
            |v| port(*v),
        );
        let all_down = self.field(&p("allDown"), raw.all_down.as_deref(), d.all_down, spelled);
        HealthSettings {
            interval: interval.unwrap_or(d.interval),
            timeout: timeout.unwrap_or(d.timeout),
            rise: rise.unwrap_or(d.rise),
            fall: fall.unwrap_or(d.fall),
            cluster_check: cluster_check.unwrap_or(d.cluster_check),
            kube_proxy_port: kube_proxy_port.unwrap_or(d.kube_proxy_port),
            all_down: all_down.unwrap_or(d.all_down),
        }
    }

    fn proxy(&mut self, raw: &RawProxySettings, node_count: usize) -> ProxySettings {
        let d = ProxySettings::default();
        let p = |field: &str| format!("settings.proxy.{field}");
        let connect_timeout = self.field(
            &p("connectTimeout"),
            raw.connect_timeout.as_ref(),
            d.connect_timeout,
            positive,
        );
        let connect_retries = self.field(
            &p("connectRetries"),
            raw.connect_retries.as_ref(),
            d.connect_retries,
            |v| u32_in(*v, 0, MAX_CONNECT_RETRIES),
        );
        let connect_attempt_delay = self.field(
            &p("connectAttemptDelay"),
            raw.connect_attempt_delay.as_ref(),
            d.connect_attempt_delay,
            duration,
        );
        let idle_timeout = self.field(
            &p("idleTimeout"),
            raw.idle_timeout.as_ref(),
            d.idle_timeout,
            positive,
        );
        let udp_idle_timeout = self.field(
            &p("udpIdleTimeout"),
            raw.udp_idle_timeout.as_ref(),
            d.udp_idle_timeout,
            positive,
        );
        let drain_timeout = self.field(
            &p("drainTimeout"),
            raw.drain_timeout.as_ref(),
            d.drain_timeout,
            duration,
        );
        let maglev_table_size = self.field(
            &p("maglevTableSize"),
            raw.maglev_table_size.as_ref(),
            d.maglev_table_size,
            |v| maglev_table_size(*v),
        );
        let splice = self.field(&p("splice"), raw.splice.as_ref(), d.splice, splice_mode);
        if let Some(size) = maglev_table_size {
            if usize::try_from(size).is_ok_and(|size| size <= node_count) {
                self.error(
                    p("maglevTableSize"),
                    format!(
                        "{size} must be larger than the number of nodes ({node_count}); \
                         a prime of at least 10 times the number of nodes is recommended"
                    ),
                );
            }
        }
        ProxySettings {
            connect_timeout: connect_timeout.unwrap_or(d.connect_timeout),
            connect_retries: connect_retries.unwrap_or(d.connect_retries),
            connect_attempt_delay: connect_attempt_delay.unwrap_or(d.connect_attempt_delay),
            idle_timeout: idle_timeout.unwrap_or(d.idle_timeout),
            udp_idle_timeout: udp_idle_timeout.unwrap_or(d.udp_idle_timeout),
            drain_timeout: drain_timeout.unwrap_or(d.drain_timeout),
            maglev_table_size: maglev_table_size.unwrap_or(d.maglev_table_size),
            splice: splice.unwrap_or(d.splice),
        }
    }

    // ----- nodes ----------------------------------------------------------

    fn nodes(&mut self, raw: &[Option<RawNode>]) -> Vec<Node> {
        let mut first_by_name: HashMap<&str, usize> = HashMap::new();
        let mut nodes = Vec::new();
        for (i, node) in raw.iter().enumerate() {
            let Some(node) = node else { continue };
            let path = format!("nodes[{i}]");

            match node.name.as_deref() {
                None => self.error(format!("{path}.name"), "required"),
                Some(name) if name.trim().is_empty() => {
                    self.error(format!("{path}.name"), "must not be empty")
                }
                Some(name) => match first_by_name.entry(name) {
                    Entry::Occupied(earlier) => {
                        let earlier = *earlier.get();
                        self.error(
                            format!("{path}.name"),
                            format!(
                                "duplicate node name {name:?} (already defined at nodes[{earlier}])"
                            ),
                        );
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                },
            }

            let addresses = self.addresses(
                &format!("{path}.addresses"),
                node.addresses.as_deref(),
                "address",
            );

            let mut excluded = Vec::new();
            for (k, reason) in node.excluded.iter().flatten().enumerate() {
                if let Some(reason) = self.check(&format!("{path}.excluded[{k}]"), spelled(reason))
                {
                    if !excluded.contains(&reason) {
                        excluded.push(reason);
                    }
                }
            }

            nodes.push(Node {
                name: node.name.clone().unwrap_or_default(),
                addresses,
                excluded,
            });
        }
        nodes
    }

    /// A non-empty list of distinct, usable IP addresses (VIPs or node
    /// addresses); returns the valid ones.
    fn addresses(&mut self, path: &str, raw: Option<&[String]>, what: &str) -> Vec<IpAddr> {
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

    // ----- services -------------------------------------------------------

    fn services(&mut self, raw: &[Option<ServiceEntry>]) -> Vec<Service> {
        let mut first_by_key: HashMap<ServiceKey, usize> = HashMap::new();
        // Listener -> (index of the Service, its name for messages).
        let mut listeners: HashMap<(IpAddr, Protocol, u16), (usize, String)> = HashMap::new();
        let mut services = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let path = format!("services[{i}]");
            let (service, facts) = self.service(&path, entry);

            if let Some(key) = facts.key {
                match first_by_key.entry(key) {
                    Entry::Occupied(earlier) => {
                        let message = format!(
                            "duplicate Service {} (already defined at services[{}])",
                            earlier.key(),
                            earlier.get()
                        );
                        self.error(format!("{path}.name"), message);
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }

            for (vip, protocol, port, k) in facts.listeners {
                match listeners.entry((vip, protocol, port)) {
                    Entry::Occupied(owner) if owner.get().0 != i => {
                        let (earlier, name) = owner.get();
                        let message = format!(
                            "listener {}/{protocol} is already used by Service {name} (services[{earlier}])",
                            SocketAddr::new(vip, port)
                        );
                        self.error(format!("{path}.ports[{k}].port"), message);
                    }
                    Entry::Occupied(_) => {}
                    Entry::Vacant(slot) => {
                        slot.insert((i, facts.display.clone()));
                    }
                }
            }
            services.push(service);
        }
        services
    }

    fn service(&mut self, path: &str, entry: &ServiceEntry) -> (Service, ServiceFacts) {
        let raw: &RawService = &entry.service;
        let p = |field: &str| format!("{path}.{field}");

        let namespace = raw.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let namespace_ok = self.check(&p("namespace"), dns_label(namespace)).is_some();
        let name = raw.name.as_deref().unwrap_or_default();
        let name_ok = match &raw.name {
            None => {
                self.error(p("name"), "required");
                false
            }
            Some(name) => self.check(&p("name"), dns_label(name)).is_some(),
        };
        let key = ServiceKey::new(namespace, name);

        let vips = self.addresses(&p("vips"), raw.vips.as_deref(), "VIP");

        let policy = self.field(
            &p("externalTrafficPolicy"),
            raw.external_traffic_policy.as_deref(),
            TrafficPolicy::Cluster,
            spelled,
        );
        let health_check_node_port = match (policy, raw.health_check_node_port) {
            (Some(TrafficPolicy::Local), None) => {
                self.error(
                    p("healthCheckNodePort"),
                    "required when externalTrafficPolicy is Local",
                );
                None
            }
            (Some(TrafficPolicy::Local), Some(hc)) => {
                self.check(&p("healthCheckNodePort"), port(hc))
            }
            (Some(TrafficPolicy::Cluster), Some(_)) => {
                self.error(
                    p("healthCheckNodePort"),
                    "only allowed when externalTrafficPolicy is Local",
                );
                None
            }
            (_, hc) => hc.and_then(|hc| self.check(&p("healthCheckNodePort"), port(hc))),
        };

        let session_affinity = self.session_affinity(path, raw);
        let source_ranges = self.source_ranges(path, raw.load_balancer_source_ranges.as_deref());
        let algorithm = self
            .field(
                &p("algorithm"),
                raw.algorithm.as_deref(),
                Default::default(),
                spelled,
            )
            .unwrap_or_default();
        let proxy_protocol = self
            .field(
                &p("proxyProtocol"),
                raw.proxy_protocol.as_ref(),
                ProxyProtocol::Off,
                proxy_protocol,
            )
            .unwrap_or_default();

        let cluster_check = self
            .field(
                &p("clusterCheck"),
                raw.cluster_check.as_deref(),
                None,
                |s: &str| spelled(s).map(Some),
            )
            .flatten();

        let (ports, port_listeners) = match &entry.ports {
            Some(ports) => self.ports(path, ports),
            None => (Vec::new(), Vec::new()),
        };
        let listeners = vips
            .iter()
            .flat_map(|vip| {
                port_listeners
                    .iter()
                    .map(move |&(protocol, port, k)| (*vip, protocol, port, k))
            })
            .collect();

        let facts = ServiceFacts {
            key: (namespace_ok && name_ok).then(|| key.clone()),
            display: key.to_string(),
            listeners,
        };
        let service = Service {
            key,
            vips,
            ports,
            external_traffic_policy: policy.unwrap_or_default(),
            health_check_node_port,
            session_affinity,
            source_ranges,
            algorithm,
            proxy_protocol,
            cluster_check,
        };
        (service, facts)
    }

    fn session_affinity(&mut self, path: &str, raw: &RawService) -> SessionAffinity {
        let affinity_path = format!("{path}.sessionAffinity");
        let config_path = format!("{path}.sessionAffinityConfig");
        let client_ip = match raw.session_affinity.as_deref() {
            None | Some("None") => Some(false),
            Some("ClientIP") => Some(true),
            Some(other) => {
                let error = ParseEnumError {
                    what: "sessionAffinity",
                    value: other.to_string(),
                    expected: &["None", "ClientIP"],
                };
                self.error(affinity_path, error.to_string());
                None
            }
        };
        match client_ip {
            Some(false) => {
                if raw.session_affinity_config.is_some() {
                    self.error(config_path, "only allowed when sessionAffinity is ClientIP");
                }
                SessionAffinity::None
            }
            Some(true) => {
                let seconds = raw
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let timeout = self.field(
                    &format!("{config_path}.clientIP.timeoutSeconds"),
                    seconds.as_ref(),
                    DEFAULT_AFFINITY_TIMEOUT,
                    |s| {
                        u32_in(*s, 1, MAX_AFFINITY_TIMEOUT_SECONDS)
                            .map(|s| Duration::from_secs(s.into()))
                    },
                );
                SessionAffinity::ClientIp {
                    timeout: timeout.unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
                }
            }
            None => SessionAffinity::None,
        }
    }

    fn source_ranges(&mut self, path: &str, raw: Option<&[String]>) -> SourceRanges {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            return SourceRanges::Any;
        }
        // Each entry is checked on its own for its path; the set is then
        // read as every other source reads it (duplicates kept once).
        let mut networks: Vec<IpNetwork> = Vec::new();
        for (k, text) in raw.iter().enumerate() {
            if let Some(net) = self.check(
                &format!("{path}.loadBalancerSourceRanges[{k}]"),
                parse_cidr(text),
            ) {
                if !networks.contains(&net) {
                    networks.push(net);
                }
            }
        }
        SourceRanges::Only(networks)
    }

    /// Checks a Service's ports; returns the valid ones and the valid
    /// (protocol, port, index) triples for the listener checks.
    fn ports(
        &mut self,
        path: &str,
        raw: &[Option<RawServicePort>],
    ) -> (Vec<ServicePort>, Vec<(Protocol, u16, usize)>) {
        if raw.is_empty() {
            self.error(format!("{path}.ports"), "at least one port is required");
        }
        let several = raw.len() > 1;
        let mut first_by_name: HashMap<&str, usize> = HashMap::new();
        let mut first_by_port: HashMap<(Protocol, u16), usize> = HashMap::new();
        let mut ports = Vec::new();
        let mut listeners = Vec::new();
        for (k, port_entry) in raw.iter().enumerate() {
            let Some(raw_port) = port_entry else { continue };
            let pp = |field: &str| format!("{path}.ports[{k}].{field}");

            let name = raw_port.name.as_deref().unwrap_or_default();
            if name.is_empty() {
                if several {
                    self.error(pp("name"), "required when a Service has more than one port");
                }
            } else if self.check(&pp("name"), dns_label(name)).is_some() {
                match first_by_name.entry(name) {
                    Entry::Occupied(earlier) => {
                        let message = format!(
                            "duplicate port name {name:?} (also ports[{}])",
                            earlier.get()
                        );
                        self.error(pp("name"), message);
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(k);
                    }
                }
            }

            let protocol = self.field(
                &pp("protocol"),
                raw_port.protocol.as_deref(),
                Protocol::Tcp,
                spelled,
            );
            let number = match raw_port.port {
                None => {
                    self.error(pp("port"), "required");
                    None
                }
                Some(v) => self.check(&pp("port"), port(v)),
            };
            let node_port = self.field(&pp("nodePort"), raw_port.node_port.as_ref(), None, |v| {
                port(*v).map(Some)
            });

            let (Some(protocol), Some(number)) = (protocol, number) else {
                continue;
            };
            match first_by_port.entry((protocol, number)) {
                Entry::Occupied(earlier) => {
                    let message = format!(
                        "duplicate port {number}/{protocol} (also ports[{}])",
                        earlier.get()
                    );
                    self.error(pp("port"), message);
                }
                Entry::Vacant(slot) => {
                    slot.insert(k);
                    listeners.push((protocol, number, k));
                }
            }
            if let Some(node_port) = node_port {
                ports.push(ServicePort {
                    name: name.to_string(),
                    protocol,
                    port: number,
                    node_port,
                });
            }
        }
        (ports, listeners)
    }
}

// ----- value checks ---------------------------------------------------------

/// `v` as a `u32`, if within `lo..=hi`.
fn u32_in(v: i64, lo: u32, hi: u32) -> Result<u32, String> {
    u32::try_from(v)
        .ok()
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| format!("{v} is outside {lo}-{hi}"))
}

/// A port number, 1-65535.
fn port(v: i64) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|v| *v != 0)
        .ok_or_else(|| format!("{v} is outside 1-65535"))
}

/// Any duration, zero included.
fn duration(raw: &RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Text(text) => parse_duration(text),
        RawDuration::Seconds(secs) => u64::try_from(*secs)
            .map(Duration::from_secs)
            .map_err(|_| format!("{secs} is not a valid duration: it must not be negative")),
    }
}

/// A duration longer than zero.
fn positive(raw: &RawDuration) -> Result<Duration, String> {
    let d = duration(raw)?;
    if d.is_zero() {
        Err(format!("{} must be longer than 0", format_duration(d)))
    } else {
        Ok(d)
    }
}

/// One of an enum's spellings (its `FromStr`).
fn spelled<T: FromStr<Err = ParseEnumError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: ParseEnumError| e.to_string())
}

fn proxy_protocol(raw: &RawNameOrBool) -> Result<ProxyProtocol, String> {
    match raw {
        RawNameOrBool::Name(name) => spelled(name),
        RawNameOrBool::Bool(false) => Ok(ProxyProtocol::Off),
        RawNameOrBool::Bool(true) => Err("true is ambiguous; use \"v1\" or \"v2\"".to_string()),
    }
}

/// `splice`: a mode's name, or a boolean (`true` is `always`, `false` is
/// `off`).
fn splice_mode(raw: &RawNameOrBool) -> Result<SpliceMode, String> {
    match raw {
        RawNameOrBool::Name(name) => spelled(name),
        RawNameOrBool::Bool(true) => Ok(SpliceMode::Always),
        RawNameOrBool::Bool(false) => Ok(SpliceMode::Off),
    }
}

/// An IP address a VIP or a node can have: not unspecified, not multicast,
/// not the IPv4 broadcast address.
fn usable_ip(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not a valid IP address"))?;
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
            format!("{s:?} is not an IP address (expected a CIDR, first-last or an address)")
        })
    };
    let range = if let Some((first, last)) = text.split_once('-') {
        let (first, last) = (ip(first)?, ip(last)?);
        if first.is_ipv4() != last.is_ipv4() {
            return Err(format!("{text:?} mixes IPv4 and IPv6"));
        }
        if last < first {
            return Err(format!("{text:?} ends before it starts"));
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
        usable_ip(&end.to_string()).map_err(|e| format!("{text:?}: {e}"))?;
    }
    Ok(range)
}

/// A Kubernetes qualified name with a prefix, as `loadBalancerClass`
/// requires (`example.com/name`).
fn qualified_name(s: &str) -> Result<(), String> {
    let Some((prefix, name)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} must be a label-style name with a domain prefix, e.g. portico.io/edge"
        ));
    };
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 253
        && prefix.split('.').all(|label| dns_label(label).is_ok());
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if prefix_ok && name_ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid qualified name (a DNS subdomain, '/', and a name of at most 63 letters, digits, '-', '_' or '.')"
        ))
    }
}

/// A socket address such as `127.0.0.1:9720` or `[::1]:9720`.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not a valid socket address (expected e.g. 127.0.0.1:9720 or [::1]:9720)"
        )
    })
}

/// An RFC 1123 DNS label: 1-63 lowercase letters, digits and '-', starting
/// and ending with a letter or digit.
fn dns_label(s: &str) -> Result<(), String> {
    const WHAT: &str = "is not a valid RFC 1123 label";
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} {WHAT}: it is longer than 63 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{s:?} {WHAT}: only lowercase letters, digits and '-' are allowed"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "{s:?} {WHAT}: it must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// A Linux network interface name (`dev_valid_name`): 1-15 bytes, not `.`
/// or `..`, no '/', ':' or whitespace.
fn interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.len() > 15 {
        return Err(format!(
            "{s:?} is not a valid interface name: it is longer than 15 characters"
        ));
    }
    if s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(format!(
            "{s:?} is not a valid interface name: '/', ':', whitespace, \".\" and \"..\" are not allowed"
        ));
    }
    Ok(())
}

/// A Maglev table size: a prime in `MIN..=MAX`.
fn maglev_table_size(v: i64) -> Result<u32, String> {
    let size = u32_in(v, MIN_MAGLEV_TABLE_SIZE, MAX_MAGLEV_TABLE_SIZE)?;
    if !is_prime(size) {
        return Err(format!(
            "{size} is not a prime (the next prime is {})",
            next_prime(size)
        ));
    }
    Ok(size)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn next_prime(mut n: u32) -> u32 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Algorithm, AllDownPolicy, ClusterHealthCheck, ExclusionReason, SpliceMode};
    use crate::parse_edge_config;

    /// Every (path, message) the full pipeline reports; empty when valid.
    fn problems(yaml: &str) -> Vec<(String, String)> {
        match parse_edge_config(yaml) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    /// Asserts exactly these paths are reported, in order, each message
    /// containing the given text.
    #[track_caller]
    fn assert_problems(yaml: &str, expected: &[(&str, &str)]) {
        let got = problems(yaml);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        let want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
        assert_eq!(paths, want, "all problems: {got:#?}");
        for ((path, message), (_, part)) in got.iter().zip(expected) {
            assert!(
                message.contains(part),
                "{path}: {message:?} does not contain {part:?}"
            );
        }
    }

    #[track_caller]
    fn valid(yaml: &str) -> EdgeConfig {
        match parse_edge_config(yaml) {
            Ok(config) => config,
            Err(errors) => panic!("expected a valid config, got:\n{errors}"),
        }
    }

    #[track_caller]
    fn only_service(yaml: &str) -> Service {
        let mut config = valid(yaml);
        assert_eq!(config.services.len(), 1);
        config.services.remove(0)
    }

    // ----- kubernetes, address pools, hook API ----------------------------

    #[test]
    fn kubernetes_section_enables_the_watch_with_defaults() {
        let config = valid("settings:\n  kubernetes: {}\n");
        assert_eq!(
            config.settings.kubernetes,
            Some(KubernetesSettings::default())
        );
        assert_eq!(valid("{}").settings.kubernetes, None);
        assert_eq!(
            valid("settings:\n  kubernetes:\n    enabled: false\n")
                .settings
                .kubernetes,
            None
        );
        let custom = valid(
            "settings:\n  kubernetes:\n    loadBalancerClass: example.com/lb\n    defaultClass: true\n    kubeconfig: /etc/k.yaml\n",
        )
        .settings
        .kubernetes
        .expect("enabled");
        assert_eq!(custom.load_balancer_class, "example.com/lb");
        assert!(custom.default_class);
        assert_eq!(
            custom.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/k.yaml"))
        );
    }

    #[test]
    fn load_balancer_class_must_be_a_qualified_name() {
        for bad in [
            "edge",
            "Example.com/x",
            "example.com/",
            "/x",
            "example.com/-x",
        ] {
            assert_problems(
                &format!("settings:\n  kubernetes:\n    loadBalancerClass: {bad:?}\n"),
                &[("settings.kubernetes.loadBalancerClass", bad)],
            );
        }
    }

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
    fn the_hook_api_and_the_watch_exclude_each_other() {
        assert_problems(
            "settings:\n  kubernetes: {}\n  hookApi:\n    listen: 0.0.0.0:9722\n    tokenFile: /t\n    stateFile: /s\n",
            &[("settings.hookApi", "cannot be used together with settings.kubernetes")],
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
    fn hook_api_needs_its_own_listen_address_and_files() {
        let hook = valid(
            "settings:\n  hookApi:\n    listen: 0.0.0.0:9722\n    tokenFile: /etc/portico/token\n    stateFile: /var/lib/portico/hook.json\n",
        )
        .settings
        .hook_api
        .expect("hook API on");
        assert_eq!(hook.listen, "0.0.0.0:9722".parse().unwrap());
        assert_eq!(hook.token_file, std::path::Path::new("/etc/portico/token"));
        assert_problems(
            "settings:\n  adminListen: 127.0.0.1:9721\n  hookApi:\n    listen: 127.0.0.1:9721\n",
            &[
                ("settings.hookApi.listen", "nothing but the hook API"),
                ("settings.hookApi.tokenFile", "is required"),
                ("settings.hookApi.stateFile", "is required"),
            ],
        );
    }

    // ----- settings -------------------------------------------------------

    #[test]
    fn absent_settings_are_the_model_defaults() {
        assert_eq!(valid(""), EdgeConfig::default());
        assert_eq!(valid("{}"), EdgeConfig::default());
        assert_eq!(valid("settings: {}"), EdgeConfig::default());
        assert_eq!(
            valid("settings: {health: {}, proxy: {}, vip: {}}"),
            EdgeConfig::default()
        );
    }

    #[test]
    fn every_setting_is_read() {
        let yaml = "
settings:
  health:
    interval: 3s
    timeout: 1500ms
    rise: 3
    fall: 5
    clusterCheck: tcp-node-port
    kubeProxyPort: 10257
    allDown: fail-closed
  proxy:
    connectTimeout: 1s
    connectRetries: 0
    connectAttemptDelay: 100ms
    idleTimeout: 1h30m
    udpIdleTimeout: 45s
    drainTimeout: 0
    maglevTableSize: 251
    splice: true
  vip:
    interface: eth0
  metricsListen: '[::1]:9100'
  adminListen: 0.0.0.0:9101
";
        let s = valid(yaml).settings;
        assert_eq!(
            s.health,
            HealthSettings {
                interval: Duration::from_secs(3),
                timeout: Duration::from_millis(1500),
                rise: 3,
                fall: 5,
                cluster_check: ClusterHealthCheck::TcpNodePort,
                kube_proxy_port: 10257,
                all_down: AllDownPolicy::FailClosed,
            }
        );
        assert_eq!(
            s.proxy,
            ProxySettings {
                connect_timeout: Duration::from_secs(1),
                connect_retries: 0,
                connect_attempt_delay: Duration::from_millis(100),
                idle_timeout: Duration::from_secs(5400),
                udp_idle_timeout: Duration::from_secs(45),
                drain_timeout: Duration::ZERO,
                maglev_table_size: 251,
                splice: SpliceMode::Always,
            }
        );
        assert_eq!(s.vip.interface.as_deref(), Some("eth0"));
        assert_eq!(s.metrics_listen, "[::1]:9100".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:9101".parse().unwrap());
    }

    #[test]
    fn splice_is_auto_unless_set_and_takes_names_or_booleans() {
        let mode = |yaml: &str| valid(yaml).settings.proxy.splice;
        assert_eq!(mode("settings: {proxy: {}}"), SpliceMode::Auto);
        assert_eq!(mode("settings: {proxy: {splice: auto}}"), SpliceMode::Auto);
        assert_eq!(
            mode("settings: {proxy: {splice: always}}"),
            SpliceMode::Always
        );
        assert_eq!(
            mode("settings: {proxy: {splice: true}}"),
            SpliceMode::Always
        );
        assert_eq!(mode("settings: {proxy: {splice: off}}"), SpliceMode::Off);
        assert_eq!(mode("settings: {proxy: {splice: false}}"), SpliceMode::Off);
        assert_problems(
            "settings: {proxy: {splice: sometimes}}",
            &[(
                "settings.proxy.splice",
                "unknown splice \"sometimes\" (expected off, auto or always)",
            )],
        );
        assert_problems(
            "settings: {proxy: {splice: 3}}",
            &[("settings.proxy.splice", "a name or a boolean")],
        );
    }

    #[test]
    fn interval_and_timeout_must_be_positive() {
        assert_problems(
            "settings: {health: {interval: 0s, timeout: 0}}",
            &[
                ("settings.health.interval", "0s must be longer than 0"),
                ("settings.health.timeout", "0s must be longer than 0"),
            ],
        );
        assert_problems(
            "settings: {health: {interval: -2, timeout: 1x}}",
            &[
                ("settings.health.interval", "-2 is not a valid duration"),
                ("settings.health.timeout", r#""1x" is not a valid duration"#),
            ],
        );
    }

    #[test]
    fn timeout_must_not_exceed_interval() {
        assert_problems(
            "settings: {health: {interval: 1s, timeout: 1500ms}}",
            &[(
                "settings.health.timeout",
                "1s500ms must not be longer than interval (1s)",
            )],
        );
        // Against the default interval (2s) too.
        assert_problems(
            "settings: {health: {timeout: 3s}}",
            &[("settings.health.timeout", "interval (2s)")],
        );
        valid("settings: {health: {interval: 1s, timeout: 1s}}");
    }

    #[test]
    fn rise_and_fall_are_1_to_100() {
        assert_problems(
            "settings: {health: {rise: 0, fall: 101}}",
            &[
                ("settings.health.rise", "0 is outside 1-100"),
                ("settings.health.fall", "101 is outside 1-100"),
            ],
        );
        valid("settings: {health: {rise: 1, fall: 100}}");
    }

    #[test]
    fn health_choices_and_kube_proxy_port_are_checked() {
        assert_problems(
            "settings: {health: {clusterCheck: http, kubeProxyPort: 0, allDown: Fail-Open}}",
            &[
                (
                    "settings.health.clusterCheck",
                    r#"unknown clusterCheck "http" (expected kube-proxy or tcp-node-port)"#,
                ),
                ("settings.health.kubeProxyPort", "0 is outside 1-65535"),
                ("settings.health.allDown", r#"did you mean "fail-open"?"#),
            ],
        );
    }

    #[test]
    fn proxy_timeouts_must_be_positive_but_drain_may_be_zero() {
        assert_problems(
            "settings: {proxy: {connectTimeout: 0ms, idleTimeout: 0, drainTimeout: 0s}}",
            &[
                ("settings.proxy.connectTimeout", "must be longer than 0"),
                ("settings.proxy.idleTimeout", "must be longer than 0"),
            ],
        );
        assert_problems(
            "settings: {proxy: {drainTimeout: -1}}",
            &[("settings.proxy.drainTimeout", "must not be negative")],
        );
    }

    #[test]
    fn connect_retries_are_0_to_16() {
        assert_problems(
            "settings: {proxy: {connectRetries: 17}}",
            &[("settings.proxy.connectRetries", "17 is outside 0-16")],
        );
        assert_problems(
            "settings: {proxy: {connectRetries: -1}}",
            &[("settings.proxy.connectRetries", "-1 is outside 0-16")],
        );
        assert_eq!(
            valid("settings: {proxy: {connectRetries: 16}}")
                .settings
                .proxy
                .connect_retries,
            16
        );
    }

    #[test]
    fn maglev_table_size_is_a_prime_in_range() {
        assert_problems(
            "settings: {proxy: {maglevTableSize: 65536}}",
            &[(
                "settings.proxy.maglevTableSize",
                "65536 is not a prime (the next prime is 65537)",
            )],
        );
        assert_problems(
            "settings: {proxy: {maglevTableSize: 5}}",
            &[("settings.proxy.maglevTableSize", "5 is outside 7-1000003")],
        );
        assert_problems(
            "settings: {proxy: {maglevTableSize: 1000033}}",
            &[(
                "settings.proxy.maglevTableSize",
                "1000033 is outside 7-1000003",
            )],
        );
        valid("settings: {proxy: {maglevTableSize: 7}}");
        valid("settings: {proxy: {maglevTableSize: 1000003}}");
    }

    #[test]
    fn maglev_table_size_must_exceed_the_node_count() {
        let nodes: String = (0..7)
            .map(|i| format!("  - {{name: n{i}, addresses: [10.0.0.{}]}}\n", i + 1))
            .collect();
        assert_problems(
            &format!("settings: {{proxy: {{maglevTableSize: 7}}}}\nnodes:\n{nodes}"),
            &[(
                "settings.proxy.maglevTableSize",
                "7 must be larger than the number of nodes (7)",
            )],
        );
        valid(&format!(
            "settings: {{proxy: {{maglevTableSize: 11}}}}\nnodes:\n{nodes}"
        ));
    }

    #[test]
    fn listen_addresses_are_socket_addresses_and_differ() {
        assert_problems(
            "settings: {metricsListen: 'localhost:9720', adminListen: 127.0.0.1}",
            &[
                (
                    "settings.metricsListen",
                    r#""localhost:9720" is not a valid socket address"#,
                ),
                (
                    "settings.adminListen",
                    r#""127.0.0.1" is not a valid socket address"#,
                ),
            ],
        );
        assert_problems(
            "settings: {metricsListen: '127.0.0.1:9000', adminListen: '127.0.0.1:9000'}",
            &[(
                "settings.adminListen",
                "127.0.0.1:9000 is also metricsListen",
            )],
        );
        // Port 0 (pick any free port) may be shared.
        valid("settings: {metricsListen: '127.0.0.1:0', adminListen: '127.0.0.1:0'}");
    }

    #[test]
    fn vip_interface_is_a_linux_interface_name() {
        for good in ["eth0", "bond0.100", "a", "enp0s31f6-abcde"] {
            let config = valid(&format!("settings: {{vip: {{interface: '{good}'}}}}"));
            assert_eq!(config.settings.vip.interface.as_deref(), Some(good));
        }
        for (bad, part) in [
            ("", "must not be empty"),
            ("enp0s31f6-abcdef", "longer than 15"),
            ("eth/0", "not a valid interface name"),
            ("eth 0", "not a valid interface name"),
            ("eth0:1", "not a valid interface name"),
            ("..", "not a valid interface name"),
        ] {
            assert_problems(
                &format!("settings: {{vip: {{interface: '{bad}'}}}}"),
                &[("settings.vip.interface", part)],
            );
        }
    }

    // ----- nodes ----------------------------------------------------------

    #[test]
    fn nodes_are_read_in_order() {
        let config = valid(
            "nodes:\n  - {name: a, addresses: [10.0.0.1, 'fd00::1']}\n  - {name: b, addresses: ['fd00::2'], excluded: [deleting, ToBeDeletedByClusterAutoscaler, deleting]}\n",
        );
        assert_eq!(
            config.nodes,
            vec![
                Node {
                    name: "a".into(),
                    addresses: vec![
                        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                        "fd00::1".parse().unwrap()
                    ],
                    excluded: vec![],
                },
                Node {
                    name: "b".into(),
                    addresses: vec!["fd00::2".parse().unwrap()],
                    excluded: vec![ExclusionReason::Deleting, ExclusionReason::ToBeDeletedTaint],
                },
            ]
        );
    }

    #[test]
    fn node_names_are_required_and_unique() {
        assert_problems(
            "nodes:
  - {name: a, addresses: [10.0.0.1]}
  - {addresses: [10.0.0.2]}
  - {name: '', addresses: [10.0.0.3]}
  - {name: a, addresses: [10.0.0.4]}
  - {name: a, addresses: [10.0.0.5]}
",
            &[
                ("nodes[1].name", "required"),
                ("nodes[2].name", "must not be empty"),
                (
                    "nodes[3].name",
                    r#"duplicate node name "a" (already defined at nodes[0])"#,
                ),
                ("nodes[4].name", "(already defined at nodes[0])"),
            ],
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
    fn node_exclusion_reasons_use_their_display_spelling() {
        let config = valid(
            "nodes: [{name: a, addresses: [10.0.0.1], excluded: [exclude-from-external-load-balancers]}]",
        );
        assert_eq!(config.nodes[0].excluded, [ExclusionReason::ExcludeLabel]);
        assert!(!config.nodes[0].eligible());
        assert_problems(
            "nodes: [{name: a, addresses: [10.0.0.1], excluded: [deleting, cordoned]}]",
            &[(
                "nodes[0].excluded[1]",
                r#"unknown exclusion reason "cordoned" (expected deleting, exclude-from-external-load-balancers or ToBeDeletedByClusterAutoscaler)"#,
            )],
        );
    }

    // ----- services -------------------------------------------------------

    #[test]
    fn minimal_service_gets_kubernetes_defaults() {
        let s = only_service("services: [{name: web, vips: [10.0.0.1], ports: [{port: 80}]}]");
        assert_eq!(
            s,
            Service {
                key: ServiceKey::new("default", "web"),
                vips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
                ports: vec![ServicePort {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: None,
                }],
                external_traffic_policy: TrafficPolicy::Cluster,
                health_check_node_port: None,
                session_affinity: SessionAffinity::None,
                source_ranges: SourceRanges::Any,
                algorithm: Algorithm::Maglev,
                proxy_protocol: ProxyProtocol::Off,
                cluster_check: None,
            }
        );
    }

    #[test]
    fn service_name_and_namespace_are_dns_labels() {
        let long = "a".repeat(64);
        assert_problems(
            &format!(
                "services:
  - {{name: Web, vips: [10.0.0.1], ports: [{{port: 80}}]}}
  - {{namespace: '', name: -web, vips: [10.0.0.1], ports: [{{port: 81}}]}}
  - {{namespace: kube_system, name: web-, vips: [10.0.0.1], ports: [{{port: 82}}]}}
  - {{name: {long}, vips: [10.0.0.1], ports: [{{port: 83}}]}}
  - {{vips: [10.0.0.1], ports: [{{port: 84}}]}}
"
            ),
            &[
                (
                    "services[0].name",
                    r#""Web" is not a valid RFC 1123 label: only lowercase letters, digits and '-' are allowed"#,
                ),
                ("services[1].namespace", "must not be empty"),
                (
                    "services[1].name",
                    "must start and end with a letter or digit",
                ),
                (
                    "services[2].namespace",
                    r#""kube_system" is not a valid RFC 1123 label"#,
                ),
                (
                    "services[2].name",
                    "must start and end with a letter or digit",
                ),
                ("services[3].name", "longer than 63 characters"),
                ("services[4].name", "required"),
            ],
        );
        let s = only_service(&format!(
            "services: [{{namespace: kube-system, name: {}, vips: [10.0.0.1], ports: [{{port: 80}}]}}]",
            "a".repeat(63)
        ));
        assert_eq!(s.key.namespace, "kube-system");
    }

    #[test]
    fn namespace_and_name_are_unique_across_the_file() {
        assert_problems(
            "services:
  - {name: web, vips: [10.0.0.1], ports: [{port: 80}]}
  - {namespace: other, name: web, vips: [10.0.0.2], ports: [{port: 80}]}
  - {namespace: default, name: web, vips: [10.0.0.3], ports: [{port: 80}]}
",
            &[(
                "services[2].name",
                "duplicate Service default/web (already defined at services[0])",
            )],
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

    #[test]
    fn ports_are_required_and_in_range() {
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1]}
  - {name: b, vips: [10.0.0.2], ports: []}
  - {name: c, vips: [10.0.0.3], ports: [{port: 80, nodePort: 99999}]}
  - {name: d, vips: [10.0.0.4], ports: [{port: 0, nodePort: 0}, {name: x, nodePort: 30000}]}
  - {name: e, vips: [10.0.0.5], ports: [{port: 65536, nodePort: -1}]}
",
            &[
                ("services[0].ports", "at least one port is required"),
                ("services[1].ports", "at least one port is required"),
                ("services[2].ports[0].nodePort", "99999 is outside 1-65535"),
                (
                    "services[3].ports[0].name",
                    "required when a Service has more than one port",
                ),
                ("services[3].ports[0].port", "0 is outside 1-65535"),
                ("services[3].ports[0].nodePort", "0 is outside 1-65535"),
                ("services[3].ports[1].port", "required"),
                ("services[4].ports[0].port", "65536 is outside 1-65535"),
                ("services[4].ports[0].nodePort", "-1 is outside 1-65535"),
            ],
        );
        // The exact message of the brief.
        let errors = parse_edge_config(
            "services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 80}]}
  - {name: b, vips: [10.0.0.2], ports: [{port: 80}]}
  - {name: c, vips: [10.0.0.3], ports: [{port: 80, nodePort: 99999}]}
",
        )
        .unwrap_err();
        assert_eq!(
            errors.to_string(),
            "services[2].ports[0].nodePort: 99999 is outside 1-65535"
        );
    }

    #[test]
    fn node_port_is_optional_and_ports_keep_their_fields() {
        let s = only_service(
            "services: [{name: a, vips: [10.0.0.1], ports: [{name: dns, protocol: UDP, port: 53, nodePort: 30053}, {name: dns-tcp, port: 53}]}]",
        );
        assert_eq!(
            s.ports,
            vec![
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: Some(30053),
                },
                ServicePort {
                    name: "dns-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 53,
                    node_port: None,
                },
            ]
        );
    }

    #[test]
    fn protocol_is_tcp_udp_or_sctp() {
        let s = only_service(
            "services: [{name: a, vips: [10.0.0.1], ports: [{port: 9, protocol: SCTP}]}]",
        );
        assert_eq!(s.ports[0].protocol, Protocol::Sctp);
        assert_problems(
            "services: [{name: a, vips: [10.0.0.1], ports: [{port: 80, protocol: tcp}]}]",
            &[(
                "services[0].ports[0].protocol",
                r#"unknown protocol "tcp" (expected TCP, UDP or SCTP); did you mean "TCP"?"#,
            )],
        );
    }

    #[test]
    fn health_check_node_port_is_in_range() {
        assert_problems(
            "services: [{name: a, vips: [10.0.0.1], externalTrafficPolicy: Local, healthCheckNodePort: 70000, ports: [{port: 80}]}]",
            &[("services[0].healthCheckNodePort", "70000 is outside 1-65535")],
        );
    }

    #[test]
    fn port_names_are_required_with_several_ports_and_unique() {
        assert_problems(
            "services:
  - name: a
    vips: [10.0.0.1]
    ports:
      - {name: http, port: 80}
      - {port: 81}
      - {name: '', port: 82}
      - {name: http, port: 83}
      - {name: HTTP, port: 84}
",
            &[
                (
                    "services[0].ports[1].name",
                    "required when a Service has more than one port",
                ),
                (
                    "services[0].ports[2].name",
                    "required when a Service has more than one port",
                ),
                (
                    "services[0].ports[3].name",
                    r#"duplicate port name "http" (also ports[0])"#,
                ),
                (
                    "services[0].ports[4].name",
                    r#""HTTP" is not a valid RFC 1123 label"#,
                ),
            ],
        );
        // A single port may stay unnamed.
        valid("services: [{name: a, vips: [10.0.0.1], ports: [{port: 80}]}]");
    }

    #[test]
    fn protocol_and_port_are_unique_within_a_service() {
        assert_problems(
            "services:
  - name: a
    vips: [10.0.0.1]
    ports:
      - {name: a, port: 53}
      - {name: b, port: 53, protocol: UDP}
      - {name: c, port: 53, protocol: TCP}
",
            &[(
                "services[0].ports[2].port",
                "duplicate port 53/TCP (also ports[0])",
            )],
        );
    }

    #[test]
    fn a_listener_belongs_to_one_service() {
        assert_problems(
            "services:
  - {name: web, vips: [203.0.113.10, '2001:db8::10'], ports: [{port: 80}]}
  - {namespace: shop, name: web2, vips: [203.0.113.11, '2001:db8::10'], ports: [{name: http, port: 80}, {name: dns, port: 80, protocol: UDP}]}
  - {name: web3, vips: [203.0.113.10], ports: [{port: 443}]}
  - {name: web4, vips: [203.0.113.10, 203.0.113.11], ports: [{port: 80}]}
",
            &[
                (
                    "services[1].ports[0].port",
                    "listener [2001:db8::10]:80/TCP is already used by Service default/web (services[0])",
                ),
                (
                    "services[3].ports[0].port",
                    "listener 203.0.113.10:80/TCP is already used by Service default/web (services[0])",
                ),
                (
                    "services[3].ports[0].port",
                    "listener 203.0.113.11:80/TCP is already used by Service shop/web2 (services[1])",
                ),
            ],
        );
    }

    #[test]
    fn local_requires_health_check_node_port_and_cluster_refuses_it() {
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1], externalTrafficPolicy: Local, ports: [{port: 80}]}
  - {name: b, vips: [10.0.0.1], externalTrafficPolicy: Cluster, healthCheckNodePort: 32000, ports: [{port: 81}]}
  - {name: c, vips: [10.0.0.1], healthCheckNodePort: 32000, ports: [{port: 82}]}
  - {name: d, vips: [10.0.0.1], externalTrafficPolicy: local, ports: [{port: 83}]}
",
            &[
                ("services[0].healthCheckNodePort", "required when externalTrafficPolicy is Local"),
                ("services[1].healthCheckNodePort", "only allowed when externalTrafficPolicy is Local"),
                ("services[2].healthCheckNodePort", "only allowed when externalTrafficPolicy is Local"),
                ("services[3].externalTrafficPolicy", r#"did you mean "Local"?"#),
            ],
        );
        let s = only_service(
            "services: [{name: a, vips: [10.0.0.1], externalTrafficPolicy: Local, healthCheckNodePort: 32000, ports: [{port: 80}]}]",
        );
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.health_check_node_port, Some(32000));
    }

    #[test]
    fn client_ip_affinity_timeout_defaults_and_range() {
        let svc = |extra: &str| {
            format!("services: [{{name: a, vips: [10.0.0.1], ports: [{{port: 80}}], {extra}}}]")
        };
        assert_eq!(
            only_service(&svc("sessionAffinity: ClientIP")).session_affinity,
            SessionAffinity::ClientIp {
                timeout: DEFAULT_AFFINITY_TIMEOUT
            }
        );
        assert_eq!(
            only_service(&svc(
                "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {}}"
            ))
            .session_affinity,
            SessionAffinity::ClientIp {
                timeout: DEFAULT_AFFINITY_TIMEOUT
            }
        );
        assert_eq!(
            only_service(&svc(
                "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}"
            ))
            .session_affinity,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(86400)
            }
        );
        for bad in ["0", "86401", "-5"] {
            assert_problems(
                &svc(&format!(
                    "sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {bad}}}}}"
                )),
                &[(
                    "services[0].sessionAffinityConfig.clientIP.timeoutSeconds",
                    &format!("{bad} is outside 1-86400"),
                )],
            );
        }
    }

    #[test]
    fn affinity_config_requires_client_ip() {
        for affinity in ["sessionAffinity: None, ", ""] {
            assert_problems(
                &format!(
                    "services: [{{name: a, vips: [10.0.0.1], ports: [{{port: 80}}], {affinity}sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}}}]"
                ),
                &[(
                    "services[0].sessionAffinityConfig",
                    "only allowed when sessionAffinity is ClientIP",
                )],
            );
        }
        assert_problems(
            "services: [{name: a, vips: [10.0.0.1], ports: [{port: 80}], sessionAffinity: ClientIp}]",
            &[(
                "services[0].sessionAffinity",
                r#"unknown sessionAffinity "ClientIp" (expected None or ClientIP); did you mean "ClientIP"?"#,
            )],
        );
    }

    #[test]
    fn source_ranges_must_be_cidrs() {
        let svc = |ranges: &str| {
            format!(
                "services: [{{name: a, vips: [10.0.0.1], ports: [{{port: 80}}], loadBalancerSourceRanges: {ranges}}}]"
            )
        };
        assert_eq!(only_service(&svc("[]")).source_ranges, SourceRanges::Any);
        assert_eq!(
            only_service(&svc("[10.0.0.0/8, '2001:db8::/32']")).source_ranges,
            SourceRanges::Only(vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ])
        );
        // Host bits may be set, as Kubernetes allows (and are cleared);
        // blanks, leading zeros and duplicates are read as Kubernetes reads them.
        assert_eq!(
            only_service(&svc("['10.1.2.3/8', '::/0', ' 010.0.0.0/08 ']")).source_ranges,
            SourceRanges::Only(vec!["10.0.0.0/8".parse().unwrap(), "::/0".parse().unwrap()])
        );
        assert_problems(
            &svc("[10.0.0.0/8, 10.0.0.0/33, 10.0.0.1, '2001:db8::1', example.com/8, '2001:db8::/129', 10.0.0.0/]"),
            &[
                (
                    "services[0].loadBalancerSourceRanges[1]",
                    r#""10.0.0.0/33" is not a valid CIDR (the prefix length must be a number from 0 to 32)"#,
                ),
                (
                    "services[0].loadBalancerSourceRanges[2]",
                    r#""10.0.0.1" is not a valid CIDR (a prefix length is required, e.g. 10.0.0.1/32)"#,
                ),
                (
                    "services[0].loadBalancerSourceRanges[3]",
                    "e.g. 2001:db8::1/128",
                ),
                (
                    "services[0].loadBalancerSourceRanges[4]",
                    r#""example.com/8" is not a valid CIDR ("example.com" is not an IP address)"#,
                ),
                (
                    "services[0].loadBalancerSourceRanges[5]",
                    "must be a number from 0 to 128",
                ),
                (
                    "services[0].loadBalancerSourceRanges[6]",
                    "must be a number from 0 to 32",
                ),
            ],
        );
    }

    #[test]
    fn algorithm_spellings() {
        for (text, algorithm) in [
            ("maglev", Algorithm::Maglev),
            ("round-robin", Algorithm::RoundRobin),
            ("least-connections", Algorithm::LeastConnections),
        ] {
            let s = only_service(&format!(
                "services: [{{name: a, vips: [10.0.0.1], ports: [{{port: 80}}], algorithm: {text}}}]"
            ));
            assert_eq!(s.algorithm, algorithm);
        }
        assert_problems(
            "services: [{name: a, vips: [10.0.0.1], ports: [{port: 80}], algorithm: random}]",
            &[(
                "services[0].algorithm",
                r#"unknown algorithm "random" (expected maglev, round-robin or least-connections)"#,
            )],
        );
    }

    #[test]
    fn proxy_protocol_spellings_and_false() {
        for (text, pp) in [
            ("'off'", ProxyProtocol::Off),
            ("off", ProxyProtocol::Off),
            ("false", ProxyProtocol::Off),
            ("v1", ProxyProtocol::V1),
            ("v2", ProxyProtocol::V2),
        ] {
            let s = only_service(&format!(
                "services: [{{name: a, vips: [10.0.0.1], ports: [{{port: 80}}], proxyProtocol: {text}}}]"
            ));
            assert_eq!(s.proxy_protocol, pp, "{text}");
        }
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 80}], proxyProtocol: true}
  - {name: b, vips: [10.0.0.1], ports: [{port: 81}], proxyProtocol: v3}
  - {name: c, vips: [10.0.0.1], ports: [{port: 82}], proxyProtocol: 2}
",
            &[
                ("services[0].proxyProtocol", "true is ambiguous"),
                ("services[1].proxyProtocol", r#"unknown proxyProtocol "v3""#),
                ("services[2].proxyProtocol", "invalid type: integer `2`"),
            ],
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 80}]}
  - {name: b, vips: [10.0.0.2], ports: [{port: 80, nodeport: 30080}]}
nodes:
  - {name: a, address: [10.0.0.1]}
settings: {proxy: {maglev: 7}, vip: {iface: eth0}}
",
            &[
                ("settings.proxy.maglev", "unknown field `maglev`"),
                ("settings.vip.iface", "unknown field `iface`"),
                (
                    "nodes[0].address",
                    "unknown field `address`, expected one of",
                ),
                ("services[1].ports[0].nodeport", "unknown field `nodeport`"),
            ],
        );
    }

    #[test]
    fn stage_one_and_stage_two_problems_are_reported_together() {
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 80}], colour: blue}
  - {name: B, vips: [10.0.0.2], ports: [{port: 80}]}
  - {name: c, vips: [10.0.0.3], ports: [{name: a, port: 80, nodePort: 99999}, {name: b, port: [80]}]}
  - {name: d, vips: 10.0.0.4, ports: [{port: 80}]}
",
            &[
                ("services[0].colour", "unknown field `colour`"),
                ("services[1].name", r#""B" is not a valid RFC 1123 label"#),
                ("services[2].ports[1].port", "invalid type: sequence, expected i64"),
                ("services[2].ports[0].nodePort", "99999 is outside 1-65535"),
                ("services[3].vips", "invalid type: string"),
            ],
        );
    }

    #[test]
    fn validate_raw_accepts_a_whole_deserialized_file() {
        let raw: RawEdgeConfig =
            serde_yaml_ng::from_str("services: [{name: a, vips: [10.0.0.1], ports: [{port: 80}]}]")
                .unwrap();
        let config = validate_raw(raw).unwrap();
        assert_eq!(config.services[0].ports[0].port, 80);
    }
}
