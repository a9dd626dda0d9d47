//! `v1` Service -> [`ClusterService`].

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{require_key, source_ranges, FieldProblem, NameRule, Object, Read};
use crate::cluster::{
    ClusterService, ClusterServicePort, IpMode, LoadBalancerIngress, ServiceType, TargetPort,
};
use crate::model::{
    IpFamily, Protocol, SessionAffinity, SourceRanges, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT,
};
use crate::names::{
    LEGACY_SOURCE_RANGES_ANNOTATION, MAX_AFFINITY_TIMEOUT_SECONDS, SERVICE_PROXY_NAME_LABEL,
};

/// Reads a `v1` Service (rules in the [module docs](super)).
///
/// - `cluster_ips`: `spec.clusterIPs`, else `spec.clusterIP`; `None`
///   (headless) and empty give none; duplicates are kept once.
/// - `external_ips`: `spec.externalIPs`, duplicates kept once.
/// - `ingress`: the `status.loadBalancer.ingress[]` entries that carry an
///   `ip` (hostname-only ones are skipped).
/// - `source_ranges`: `spec.loadBalancerSourceRanges`, or when that is empty
///   the legacy annotation (comma-separated), read by
///   [`source_ranges`](super::source_ranges); an invalid set is reported.
/// - `proxy_name`: the [`SERVICE_PROXY_NAME_LABEL`] label.
pub fn read_service(svc: &core::Service) -> Result<Read<ClusterService>, FieldProblem> {
    let (key, object) = require_key("Service", &svc.metadata, NameRule::Rfc1035Label)?;
    let spec = svc.spec.as_ref().ok_or_else(|| object.missing("spec"))?;
    // The steps run in field order: the first refusal is the one reported.
    let service_type = service_type(&object, spec)?;
    let cluster_ips = cluster_ips(&object, spec)?;
    let ip_families = ip_families(&object, spec)?;
    let external_ips = external_ips(&object, spec)?;
    let ingress = ingress(svc, &object)?;
    let ports = ports(&object, spec)?;
    let external_traffic_policy = traffic_policy(
        &object,
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
    )?;
    let internal_traffic_policy = traffic_policy(
        &object,
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
    )?;
    let health_check_node_port = object.optional_port(spec.health_check_node_port, || {
        "spec.healthCheckNodePort".into()
    })?;
    let session_affinity = session_affinity(&object, spec)?;

    let mut problems = Vec::new();
    let (source_ranges, ranges_field) = read_source_ranges(svc);
    if let SourceRanges::Invalid { errors } = &source_ranges {
        problems.push(object.problem(
            ranges_field,
            format!(
                "{}; the load-balancer addresses accept no client",
                errors.join("; ")
            ),
        ));
    }

    Ok(Read {
        value: ClusterService {
            key,
            service_type,
            load_balancer_class: spec.load_balancer_class.clone().filter(|c| !c.is_empty()),
            cluster_ips,
            ip_families,
            external_ips,
            load_balancer_ip: spec
                .load_balancer_ip
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            ingress,
            ports,
            external_traffic_policy,
            internal_traffic_policy,
            health_check_node_port,
            session_affinity,
            source_ranges,
            proxy_name: svc
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
                .cloned(),
        },
        problems,
    })
}

/// `spec.type`; absent is ClusterIP.
fn service_type(object: &Object, spec: &core::ServiceSpec) -> Result<ServiceType, FieldProblem> {
    match spec.type_.as_deref().unwrap_or("") {
        "" | "ClusterIP" => Ok(ServiceType::ClusterIp),
        "NodePort" => Ok(ServiceType::NodePort),
        "LoadBalancer" => Ok(ServiceType::LoadBalancer),
        "ExternalName" => Ok(ServiceType::ExternalName),
        other => Err(object.invalid(
            "spec.type",
            other,
            "one of ClusterIP, NodePort, LoadBalancer, ExternalName",
        )),
    }
}

/// `spec.clusterIPs`, else `spec.clusterIP`; `None` (headless) and empty
/// give none; duplicates are kept once.
fn cluster_ips(object: &Object, spec: &core::ServiceSpec) -> Result<Vec<IpAddr>, FieldProblem> {
    let mut cluster_ips = Vec::new();
    let (list, field): (Vec<&String>, &str) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => (list.iter().collect(), "spec.clusterIPs"),
        _ => (spec.cluster_ip.iter().collect(), "spec.clusterIP"),
    };
    for (i, ip) in list.into_iter().enumerate() {
        if ip != "None" && !ip.is_empty() {
            let ip = object.ip(ip, || indexed(field, i, field == "spec.clusterIPs"))?;
            if !cluster_ips.contains(&ip) {
                cluster_ips.push(ip);
            }
        }
    }
    Ok(cluster_ips)
}

/// `spec.ipFamilies`.
fn ip_families(object: &Object, spec: &core::ServiceSpec) -> Result<Vec<IpFamily>, FieldProblem> {
    let mut ip_families = Vec::new();
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        ip_families.push(match family.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            other => {
                return Err(object.invalid(
                    format!("spec.ipFamilies[{i}]"),
                    other,
                    "one of IPv4, IPv6",
                ))
            }
        });
    }
    Ok(ip_families)
}

/// `spec.externalIPs`, duplicates kept once.
fn external_ips(object: &Object, spec: &core::ServiceSpec) -> Result<Vec<IpAddr>, FieldProblem> {
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let ip = object.ip(ip, || format!("spec.externalIPs[{i}]"))?;
        if !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    Ok(external_ips)
}

/// `spec.ports`, in spec order.
fn ports(
    object: &Object,
    spec: &core::ServiceSpec,
) -> Result<Vec<ClusterServicePort>, FieldProblem> {
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = object.port(p.port, || format!("spec.ports[{i}].port"))?;
        let target_port = target_port(object, p, port, i)?;
        ports.push(ClusterServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(object, p.protocol.as_deref(), || {
                format!("spec.ports[{i}].protocol")
            })?,
            port,
            node_port: object.optional_port(p.node_port, || format!("spec.ports[{i}].nodePort"))?,
            target_port,
        });
    }
    Ok(ports)
}

/// `spec.ports[i].targetPort`: absent, 0 or empty is the port itself; a
/// string that is a number is that number, any other string a name.
fn target_port(
    object: &Object,
    p: &core::ServicePort,
    port: u16,
    i: usize,
) -> Result<TargetPort, FieldProblem> {
    Ok(match &p.target_port {
        None | Some(IntOrString::Int(0)) => TargetPort::Number(port),
        Some(IntOrString::Int(n)) => {
            TargetPort::Number(object.port(*n, || format!("spec.ports[{i}].targetPort"))?)
        }
        Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) if n != 0 => TargetPort::Number(n),
            _ => TargetPort::Name(s.clone()),
        },
    })
}

/// `spec.sessionAffinity` and, for ClientIP, its timeout (absent is
/// [`DEFAULT_AFFINITY_TIMEOUT`]).
fn session_affinity(
    object: &Object,
    spec: &core::ServiceSpec,
) -> Result<SessionAffinity, FieldProblem> {
    match spec.session_affinity.as_deref().unwrap_or("") {
        "" | "None" => Ok(SessionAffinity::None),
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => {
                        Duration::from_secs(u64::from(t))
                    }
                    _ => {
                        return Err(object.problem(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{t} is not a number of seconds from 1 to 86400"),
                        ))
                    }
                },
            };
            Ok(SessionAffinity::ClientIp { timeout })
        }
        other => Err(object.invalid("spec.sessionAffinity", other, "one of None, ClientIP")),
    }
}

/// `field[i]` for a list, `field` for the single-valued fallback.
fn indexed(field: &str, i: usize, list: bool) -> String {
    if list {
        format!("{field}[{i}]")
    } else {
        field.to_owned()
    }
}

/// `status.loadBalancer.ingress[]` entries with an `ip`.
fn ingress(svc: &core::Service, object: &Object) -> Result<Vec<LoadBalancerIngress>, FieldProblem> {
    let entries = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut out: Vec<LoadBalancerIngress> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let ip = object.ip(ip, || format!("status.loadBalancer.ingress[{i}].ip"))?;
        let ip_mode = match entry.ip_mode.as_deref() {
            None | Some("") => None,
            Some("VIP") => Some(IpMode::Vip),
            Some("Proxy") => Some(IpMode::Proxy),
            Some(other) => {
                return Err(object.invalid(
                    format!("status.loadBalancer.ingress[{i}].ipMode"),
                    other,
                    "one of VIP, Proxy",
                ))
            }
        };
        if !out.iter().any(|e| e.ip == ip) {
            out.push(LoadBalancerIngress { ip, ip_mode });
        }
    }
    Ok(out)
}

/// `spec.loadBalancerSourceRanges`, or the legacy annotation when the field
/// is empty (a blank annotation is no ranges, as the API server reads it);
/// with the field they came from.
fn read_source_ranges(svc: &core::Service) -> (SourceRanges, String) {
    let field = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_deref())
        .unwrap_or_default();
    if !field.is_empty() {
        return (
            source_ranges(field.iter().map(String::as_str)),
            "spec.loadBalancerSourceRanges".to_owned(),
        );
    }
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_SOURCE_RANGES_ANNOTATION))
        .map(|v| v.trim())
        .unwrap_or("");
    let ranges = if annotation.is_empty() {
        SourceRanges::Any
    } else {
        source_ranges(annotation.split(','))
    };
    (
        ranges,
        format!("metadata.annotations[{LEGACY_SOURCE_RANGES_ANNOTATION}]"),
    )
}

/// A port protocol; absent is TCP.
pub(crate) fn protocol(
    object: &Object,
    value: Option<&str>,
    field: impl FnOnce() -> String,
) -> Result<Protocol, FieldProblem> {
    match value.unwrap_or("") {
        "" | "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(object.invalid(field(), other, "one of TCP, UDP, SCTP")),
    }
}

fn traffic_policy(
    object: &Object,
    value: Option<&str>,
    field: &str,
) -> Result<TrafficPolicy, FieldProblem> {
    match value.unwrap_or("") {
        "" | "Cluster" => Ok(TrafficPolicy::Cluster),
        "Local" => Ok(TrafficPolicy::Local),
        other => Err(object.invalid(field, other, "one of Cluster, Local")),
    }
}
