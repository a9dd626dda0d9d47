//! `services:`: each Service (key, VIPs, traffic policy, affinity, source
//! ranges, ports), and what no two Services may share (a key, a listener).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::checks::{dns_label, port, spelled, u32_in};
use super::{Validator, DEFAULT_NAMESPACE, MAX_AFFINITY_TIMEOUT_SECONDS};
use crate::file::{RawNameOrBool, RawService, RawServicePort, ServiceEntry};
use crate::kube::{parse_cidr, quoted};
use crate::model::{
    ParseEnumError, Protocol, ProxyProtocol, Service, ServiceKey, ServicePort, SessionAffinity,
    SourceRanges, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT,
};

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
    /// `services:`, in file order, with the checks across Services (keys,
    /// listeners).
    pub(super) fn services(&mut self, raw: &[Option<ServiceEntry>]) -> Vec<Service> {
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
        let health_check_node_port = match (policy, raw.health_check_node_port.as_ref()) {
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
                    .and_then(|c| c.timeout_seconds.as_ref());
                let timeout = self.field(
                    &format!("{config_path}.clientIP.timeoutSeconds"),
                    seconds,
                    DEFAULT_AFFINITY_TIMEOUT,
                    |s| {
                        u32_in(s, 1, MAX_AFFINITY_TIMEOUT_SECONDS)
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
                            "duplicate port name {} (also ports[{}])",
                            quoted(name),
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
            let number = match &raw_port.port {
                None => {
                    self.error(pp("port"), "required");
                    None
                }
                Some(v) => self.check(&pp("port"), port(v)),
            };
            let node_port = self.field(&pp("nodePort"), raw_port.node_port.as_ref(), None, |v| {
                port(v).map(Some)
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

/// `proxyProtocol`: a version's name, or `false` (off); `true` is refused
/// as ambiguous.
fn proxy_protocol(raw: &RawNameOrBool) -> Result<ProxyProtocol, String> {
    match raw {
        RawNameOrBool::Name(name) => spelled(name),
        RawNameOrBool::Bool(false) => Ok(ProxyProtocol::Off),
        RawNameOrBool::Bool(true) => Err("true is ambiguous; use \"v1\" or \"v2\"".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::super::test_support::{assert_problems, only_service, valid};
    use crate::model::{
        Algorithm, Protocol, ProxyProtocol, Service, ServiceKey, ServicePort, SessionAffinity,
        SourceRanges, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT,
    };
    use crate::parse_edge_config;

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
}
