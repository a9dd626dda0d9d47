//! Services, EndpointSlices and this Node from Kubernetes objects.
//!
//! Two layers:
//! - pure conversions from the `k8s-openapi` types into the
//!   [`portico_config::cluster`] model ([`service_from_k8s`],
//!   [`slice_from_k8s`], [`node_from_k8s`]), applying the defaults the API
//!   server applies (protocol TCP, traffic policies Cluster, ClientIP timeout
//!   10800 s, `targetPort` = `port`, EndpointSlice conditions). They know
//!   nothing about files and are meant to be reused by the Kubernetes watch.
//!   An object that cannot be converted (a port out of range, an address that
//!   is not an IP, a required field missing) is an [`ObjectError`] naming the
//!   object and the field; the caller skips that object and nothing else.
//! - a manifest reader: [`parse_manifests`] turns one file's text (YAML with
//!   any number of `---` documents, or JSON; single objects or `*List`
//!   kinds) into [`Object`]s, and [`load_dir`] reads a directory of such
//!   files into a [`Snapshot`]. [`fingerprint`] lets a poller notice changes.
//!
//! Problems never cost more than their own scope: a document that does not
//! parse loses that document, an object that does not convert loses that
//! object, an unreadable file loses that file. Unparsable
//! `loadBalancerSourceRanges` entries do not even lose the Service: they are
//! kept in `invalid_source_ranges` so the planner can fail closed.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, Endpoint, EndpointPort, EndpointSlice,
    NodeInfo, ServiceType, TargetPort, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
};
use portico_config::{
    Protocol, ServiceKey, SessionAffinity, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT,
};
use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

/// The legacy annotation holding comma-separated source ranges, honoured when
/// `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The taint the cluster autoscaler puts on a Node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The namespace of a namespaced object whose manifest gives none (what
/// `kubectl apply` uses with the default context).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest `sessionAffinityConfig.clientIP.timeoutSeconds` Kubernetes allows.
const MAX_AFFINITY_TIMEOUT_SECS: i32 = 86400;

/// Why one Kubernetes object could not be converted. The object is skipped;
/// every other object is unaffected.
///
/// `object` names it the way the planner does (`Service default/web`,
/// `EndpointSlice default/web-abc12`, `Node node-1`); `field` is the path of
/// the offending value (`spec.ports[1].nodePort`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// A required field is absent or empty (a port of 0 counts as absent).
    #[error("{object}: {field}: required")]
    Missing {
        /// The object.
        object: String,
        /// The path of the missing field.
        field: String,
    },
    /// A port number outside 1-65535.
    #[error("{object}: {field}: {value} is outside 1-65535")]
    PortOutOfRange {
        /// The object.
        object: String,
        /// The path of the port.
        field: String,
        /// The number given.
        value: i64,
    },
    /// An address that is not an IP address.
    #[error("{object}: {field}: {value:?} is not a valid IP address")]
    InvalidIp {
        /// The object.
        object: String,
        /// The path of the address.
        field: String,
        /// The text given.
        value: String,
    },
    /// A value Kubernetes does not allow for this field (an unknown
    /// protocol, Service type, traffic policy or address type, an affinity
    /// timeout out of range).
    #[error("{object}: {field}: {value:?} is not {expected}")]
    InvalidValue {
        /// The object.
        object: String,
        /// The path of the value.
        field: String,
        /// The value given.
        value: String,
        /// What is allowed, in words (`one of TCP, UDP, SCTP`).
        expected: &'static str,
    },
}

impl ObjectError {
    /// The object the error is about (`Service default/web`).
    pub fn object(&self) -> &str {
        match self {
            ObjectError::Missing { object, .. }
            | ObjectError::PortOutOfRange { object, .. }
            | ObjectError::InvalidIp { object, .. }
            | ObjectError::InvalidValue { object, .. } => object,
        }
    }

    /// The path of the offending field (`spec.ports[1].nodePort`).
    pub fn field(&self) -> &str {
        match self {
            ObjectError::Missing { field, .. }
            | ObjectError::PortOutOfRange { field, .. }
            | ObjectError::InvalidIp { field, .. }
            | ObjectError::InvalidValue { field, .. } => field,
        }
    }
}

/// Where in the manifests something was found: a file (or other origin),
/// the document in it and, inside a `*List`, the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (as given to [`parse_manifests`]; [`load_dir`] uses the path).
    pub origin: String,
    /// The document in the file, counted from 0, empty documents skipped.
    pub document: usize,
    /// The index in the document's `items` when the document is a list.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.origin, self.document)?;
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        Ok(())
    }
}

/// A problem found while reading manifests. Each loses only its own scope
/// (a file, a document, an object); [`ManifestError::Duplicate`] loses
/// nothing and is a warning.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A manifest file could not be read (vanished, unreadable, not UTF-8).
    /// The file is skipped.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A document is not valid YAML or JSON. That document is skipped (for
    /// JSON, the rest of the file too: JSON cannot resynchronise).
    #[error("{at}: invalid YAML/JSON: {message}")]
    Syntax {
        /// The file and document.
        at: Location,
        /// The parser's message, with the line in the file.
        message: String,
    },
    /// A document or list item is not a Kubernetes object this module can
    /// read: not a mapping, no `kind`, `items` not a list, or a field of the
    /// wrong type. It is skipped.
    #[error("{at}: {object}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
    Decode {
        /// The file, document and item.
        at: Location,
        /// The object, as far as it could be named (`Service default/web`).
        object: String,
        /// The path of the offending value, empty for the whole object.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An object was read but could not be converted. It is skipped.
    #[error("{at}: {error}")]
    Object {
        /// The file, document and item.
        at: Location,
        /// The conversion error, naming the object and field.
        error: ObjectError,
    },
    /// The same object (kind, namespace and name) is defined twice. Not an
    /// error: the later definition (by file name, then position) is kept.
    #[error("{at}: {object} is also defined at {earlier}; the later definition wins")]
    Duplicate {
        /// The definition that is kept.
        at: Location,
        /// The object (`Service default/web`).
        object: String,
        /// The definition that is dropped.
        earlier: Location,
    },
}

/// One object read from a manifest, converted to the cluster model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A `v1` Service.
    Service(ClusterService),
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A `v1` Node.
    Node(NodeInfo),
}

impl Object {
    /// Identity for duplicate detection: kind, then `namespace/name`.
    fn identity(&self) -> (&'static str, ServiceKey) {
        match self {
            Object::Service(s) => ("Service", s.key.clone()),
            Object::EndpointSlice(s) => ("EndpointSlice", s.key.clone()),
            Object::Node(n) => ("Node", ServiceKey::new("", n.name.clone())),
        }
    }

    /// The object's name as errors print it.
    fn describe(&self) -> String {
        match self {
            Object::Service(s) => format!("Service {}", s.key),
            Object::EndpointSlice(s) => format!("EndpointSlice {}", s.key),
            Object::Node(n) => format!("Node {}", n.name),
        }
    }
}

/// Everything read from a manifest directory: what the planner needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every Service, sorted by key (one per key).
    pub services: Vec<ClusterService>,
    /// Every EndpointSlice, sorted by key (one per key).
    pub slices: Vec<EndpointSlice>,
    /// The Node named like this agent's node, if a manifest defines it.
    pub node: Option<NodeInfo>,
}

// ---------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------

/// Names an object for errors and builds its errors.
struct Ctx {
    object: String,
}

impl Ctx {
    fn missing(&self, field: impl Into<String>) -> ObjectError {
        ObjectError::Missing {
            object: self.object.clone(),
            field: field.into(),
        }
    }

    fn invalid(
        &self,
        field: impl Into<String>,
        value: &str,
        expected: &'static str,
    ) -> ObjectError {
        ObjectError::InvalidValue {
            object: self.object.clone(),
            field: field.into(),
            value: value.to_owned(),
            expected,
        }
    }

    /// A required port: 0 (what an absent one decodes to) is missing.
    fn port(&self, value: i32, field: impl FnOnce() -> String) -> Result<u16, ObjectError> {
        match u16::try_from(value) {
            Ok(0) => Err(self.missing(field())),
            Ok(port) => Ok(port),
            Err(_) => Err(ObjectError::PortOutOfRange {
                object: self.object.clone(),
                field: field(),
                value: i64::from(value),
            }),
        }
    }

    /// An optional port: absent or 0 is `None`.
    fn optional_port(
        &self,
        value: Option<i32>,
        field: impl FnOnce() -> String,
    ) -> Result<Option<u16>, ObjectError> {
        match value {
            None | Some(0) => Ok(None),
            Some(v) => self.port(v, field).map(Some),
        }
    }

    fn ip(&self, value: &str, field: impl FnOnce() -> String) -> Result<IpAddr, ObjectError> {
        value.parse().map_err(|_| ObjectError::InvalidIp {
            object: self.object.clone(),
            field: field(),
            value: value.to_owned(),
        })
    }

    fn protocol(
        &self,
        value: Option<&str>,
        field: impl FnOnce() -> String,
    ) -> Result<Protocol, ObjectError> {
        match value.unwrap_or("") {
            "" | "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(self.invalid(field(), other, "one of TCP, UDP, SCTP")),
        }
    }

    fn traffic_policy(
        &self,
        value: Option<&str>,
        field: &str,
    ) -> Result<TrafficPolicy, ObjectError> {
        match value.unwrap_or("") {
            "" | "Cluster" => Ok(TrafficPolicy::Cluster),
            "Local" => Ok(TrafficPolicy::Local),
            other => Err(self.invalid(field, other, "one of Cluster, Local")),
        }
    }
}

/// `namespace/name` of a namespaced object (namespace defaults to
/// [`DEFAULT_NAMESPACE`]), or `None` without a name.
fn namespaced_key(meta: &ObjectMeta) -> Option<ServiceKey> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(ServiceKey::new(namespace, name))
}

/// The key of a namespaced object, or the error naming it as unnamed.
fn require_key(kind: &str, meta: &ObjectMeta) -> Result<(ServiceKey, Ctx), ObjectError> {
    match namespaced_key(meta) {
        Some(key) => {
            let object = format!("{kind} {key}");
            Ok((key, Ctx { object }))
        }
        None => Err(ObjectError::Missing {
            object: format!("{kind} (unnamed)"),
            field: "metadata.name".into(),
        }),
    }
}

/// Appends `ip` unless it is already there (duplicate map elements would
/// make the ruleset fail to load).
fn push_unique(list: &mut Vec<IpAddr>, ip: IpAddr) {
    if !list.contains(&ip) {
        list.push(ip);
    }
}

/// Converts a `v1` Service.
///
/// Defaults as the API server does: `type` ClusterIP, `protocol` TCP,
/// `targetPort` = `port` (also for 0 or ""), both traffic policies Cluster,
/// the ClientIP affinity timeout [`DEFAULT_AFFINITY_TIMEOUT`]; a missing
/// namespace is [`DEFAULT_NAMESPACE`].
///
/// - `cluster_ips`: `spec.clusterIPs`, else `spec.clusterIP`; `None` (headless)
///   or empty gives none.
/// - `external_ips`: `status.loadBalancer.ingress[].ip` then
///   `spec.externalIPs`, without duplicates. Ingress entries with only a
///   `hostname`, or with `ipMode: Proxy` (the load balancer sends traffic to
///   node ports, so kube-proxy does not capture that address either), are left
///   out.
/// - `source_ranges`: `spec.loadBalancerSourceRanges`, or when that is empty
///   the legacy annotation [`SOURCE_RANGES_ANNOTATION`] (comma-separated).
///   Entries are trimmed and must be CIDRs (`10.0.0.0/8`); host bits are
///   cleared. An entry that does not parse goes to `invalid_source_ranges`
///   and does not fail the Service.
/// - `proxy_name`: the [`SERVICE_PROXY_NAME_LABEL`] label.
pub fn service_from_k8s(svc: &core::Service) -> Result<ClusterService, ObjectError> {
    let (key, ctx) = require_key("Service", &svc.metadata)?;
    let spec = svc.spec.as_ref().ok_or_else(|| ctx.missing("spec"))?;

    let service_type = match spec.type_.as_deref().unwrap_or("") {
        "" | "ClusterIP" => ServiceType::ClusterIp,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        other => {
            return Err(ctx.invalid(
                "spec.type",
                other,
                "one of ClusterIP, NodePort, LoadBalancer, ExternalName",
            ))
        }
    };

    let mut cluster_ips = Vec::new();
    match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            for (i, ip) in list.iter().enumerate() {
                if ip != "None" && !ip.is_empty() {
                    push_unique(
                        &mut cluster_ips,
                        ctx.ip(ip, || format!("spec.clusterIPs[{i}]"))?,
                    );
                }
            }
        }
        _ => {
            if let Some(ip) = spec.cluster_ip.as_deref() {
                if ip != "None" && !ip.is_empty() {
                    cluster_ips.push(ctx.ip(ip, || "spec.clusterIP".into())?);
                }
            }
        }
    }

    let mut external_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, entry) in ingress.iter().enumerate() {
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if entry.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        push_unique(
            &mut external_ips,
            ctx.ip(ip, || format!("status.loadBalancer.ingress[{i}].ip"))?,
        );
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        push_unique(
            &mut external_ips,
            ctx.ip(ip, || format!("spec.externalIPs[{i}]"))?,
        );
    }

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = ctx.port(p.port, || format!("spec.ports[{i}].port"))?;
        let target_port = match &p.target_port {
            None | Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(ctx.port(*n, || format!("spec.ports[{i}].targetPort"))?)
            }
            Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ClusterServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: ctx.protocol(p.protocol.as_deref(), || {
                format!("spec.ports[{i}].protocol")
            })?,
            port,
            node_port: ctx.optional_port(p.node_port, || format!("spec.ports[{i}].nodePort"))?,
            target_port,
        });
    }

    let external_traffic_policy = ctx.traffic_policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
    )?;
    let internal_traffic_policy = ctx.traffic_policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
    )?;
    let health_check_node_port = ctx.optional_port(spec.health_check_node_port, || {
        "spec.healthCheckNodePort".into()
    })?;

    let session_affinity = match spec.session_affinity.as_deref().unwrap_or("") {
        "" | "None" => SessionAffinity::None,
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&t) => {
                    Duration::from_secs(u64::from(t.unsigned_abs()))
                }
                Some(t) => {
                    return Err(ctx.invalid(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        &t.to_string(),
                        "a number of seconds from 1 to 86400",
                    ))
                }
            };
            SessionAffinity::ClientIp { timeout }
        }
        other => return Err(ctx.invalid("spec.sessionAffinity", other, "one of None, ClientIP")),
    };

    let (source_ranges, invalid_source_ranges) = source_ranges(svc);

    let proxy_name = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
        .cloned();

    Ok(ClusterService {
        key,
        service_type,
        cluster_ips,
        external_ips,
        ports,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        session_affinity,
        source_ranges,
        invalid_source_ranges,
        proxy_name,
    })
}

/// `spec.loadBalancerSourceRanges`, or the legacy annotation when the field
/// is empty, split into parsed networks and entries that do not parse.
fn source_ranges(svc: &core::Service) -> (Vec<IpNetwork>, Vec<String>) {
    let field: Vec<&str> = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|s| s.trim())
        .collect();
    let entries = if field.is_empty() {
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|v| v.trim())
            .unwrap_or("");
        if annotation.is_empty() {
            Vec::new()
        } else {
            annotation.split(',').map(str::trim).collect()
        }
    } else {
        field
    };

    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for entry in entries {
        match parse_cidr(entry) {
            Some(net) => {
                if !valid.contains(&net) {
                    valid.push(net);
                }
            }
            None => invalid.push(entry.to_owned()),
        }
    }
    (valid, invalid)
}

/// A CIDR as Kubernetes accepts it (address and prefix length both
/// required), with the host bits cleared.
fn parse_cidr(text: &str) -> Option<IpNetwork> {
    if !text.contains('/') {
        return None;
    }
    let net: IpNetwork = text.parse().ok()?;
    IpNetwork::new(net.network(), net.prefix()).ok()
}

/// Converts a `discovery.k8s.io/v1` EndpointSlice.
///
/// The Service comes from the [`SERVICE_NAME_LABEL`] label (required).
/// Conditions default as Kubernetes documents them: `ready` absent = true,
/// `serving` absent = `ready`, `terminating` absent = false. Ports default
/// to protocol TCP and an empty name. An `FQDN` slice keeps its ports but no
/// endpoints (its addresses are host names, nothing to program).
pub fn slice_from_k8s(slice: &discovery::EndpointSlice) -> Result<EndpointSlice, ObjectError> {
    let (key, ctx) = require_key("EndpointSlice", &slice.metadata)?;
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ctx.missing(format!("metadata.labels[{SERVICE_NAME_LABEL:?}]")))?;
    let service = ServiceKey::new(key.namespace.clone(), service_name.clone());

    let address_type = match slice.address_type.as_str() {
        "" => return Err(ctx.missing("addressType")),
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        other => return Err(ctx.invalid("addressType", other, "one of IPv4, IPv6, FQDN")),
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: ctx.protocol(p.protocol.as_deref(), || format!("ports[{i}].protocol"))?,
            port: ctx.optional_port(p.port, || format!("ports[{i}].port"))?,
        });
    }

    let mut endpoints = Vec::new();
    if address_type != AddressType::Fqdn {
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let mut addresses = Vec::with_capacity(ep.addresses.len());
            for (j, addr) in ep.addresses.iter().enumerate() {
                addresses.push(ctx.ip(addr, || format!("endpoints[{i}].addresses[{j}]"))?);
            }
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            endpoints.push(Endpoint {
                addresses,
                ready,
                serving,
                terminating,
                node_name: ep.node_name.clone().filter(|n| !n.is_empty()),
            });
        }
    }

    Ok(EndpointSlice {
        key,
        service,
        address_type,
        ports,
        endpoints,
    })
}

/// Converts a `v1` Node.
///
/// `addresses`: every `InternalIP`, then every `ExternalIP`, in status order
/// and without duplicates (other address types are ignored). `deleting`: it
/// has a `deletionTimestamp`. `to_be_deleted`: it carries the
/// [`TO_BE_DELETED_TAINT`] taint (any effect).
pub fn node_from_k8s(node: &core::Node) -> Result<NodeInfo, ObjectError> {
    let Some(name) = node.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
        return Err(ObjectError::Missing {
            object: "Node (unnamed)".into(),
            field: "metadata.name".into(),
        });
    };
    let ctx = Ctx {
        object: format!("Node {name}"),
    };

    let status_addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut addresses = Vec::new();
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, a) in status_addresses.iter().enumerate() {
            if a.type_ == wanted {
                let ip = ctx.ip(&a.address, || format!("status.addresses[{i}].address"))?;
                push_unique(&mut addresses, ip);
            }
        }
    }

    let to_be_deleted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TO_BE_DELETED_TAINT);

    Ok(NodeInfo {
        name: name.to_owned(),
        addresses,
        deleting: node.metadata.deletion_timestamp.is_some(),
        to_be_deleted,
    })
}

// ---------------------------------------------------------------------------
// Manifest text
// ---------------------------------------------------------------------------

/// Parses one manifest file's text into objects.
///
/// The text is JSON (one or more concatenated values) when it starts with
/// `{` or `[` and parses as such, YAML otherwise (any number of documents
/// separated by `---`; JSON objects separated by `---` work too). A document
/// is one object or a list: `ServiceList`, `EndpointSliceList`, `NodeList`
/// (whose items carry no `kind`, as the API returns them; any other
/// `<Kind>List` likewise) or `List` (whose items must carry their `kind`).
/// Kinds other than Service, EndpointSlice and Node are ignored (debug log);
/// empty documents are skipped and not counted. An object's `apiVersion`, when
/// given, must be the one `k8s-openapi` decodes (`v1`, `discovery.k8s.io/v1`).
///
/// Every problem is returned with its place (`origin`, document, list item);
/// a document that does not parse or an object that does not convert is
/// skipped, the rest of the file still loads.
pub fn parse_manifests(text: &str, origin: &str) -> (Vec<Object>, Vec<ManifestError>) {
    let (located, errors) = parse_located(text, origin);
    (located.into_iter().map(|(_, o)| o).collect(), errors)
}

/// [`parse_manifests`], keeping each object's place.
fn parse_located(text: &str, origin: &str) -> (Vec<(Location, Object)>, Vec<ManifestError>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let documents = match json_documents(text, origin) {
        Some(docs) if docs.iter().all(Result::is_ok) => docs,
        // JSON objects separated by `---` are YAML; keep whichever reading
        // loses less.
        Some(docs) => {
            let yaml = yaml_documents(text, origin);
            if yaml.iter().all(Result::is_ok) {
                yaml
            } else {
                docs
            }
        }
        None => yaml_documents(text, origin),
    };
    for (document, parsed) in documents.into_iter().enumerate() {
        let at = Location {
            origin: origin.to_owned(),
            document,
            item: None,
        };
        match parsed {
            Ok(value) => decode_document(value, None, at, &mut out, &mut errors),
            Err(message) => errors.push(ManifestError::Syntax { at, message }),
        }
    }
    (out, errors)
}

/// One non-empty document: its value, or the syntax error message.
type Document = Result<Value, String>;

/// The documents of a JSON text, or `None` when the text is not JSON (does
/// not start with `{`/`[`, or its first value does not parse).
fn json_documents(text: &str, origin: &str) -> Option<Vec<Document>> {
    if !text.trim_start().starts_with(['{', '[']) {
        return None;
    }
    let mut docs = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        match value {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok(v)),
            Err(_) if i == 0 => {
                tracing::debug!(origin, "not JSON, reading it as YAML");
                return None;
            }
            Err(e) => {
                docs.push(Err(e.to_string()));
                break;
            }
        }
    }
    Some(docs)
}

/// The non-empty documents of a YAML text. Documents are split at `---` and
/// `...` markers before parsing, so one with a syntax error does not stop
/// the ones after it.
fn yaml_documents(text: &str, origin: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for (first_line, chunk) in split_yaml(text) {
        match serde_yaml::from_str::<Value>(chunk) {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok(v)),
            Err(e) => {
                // Report lines in the file, not in the chunk.
                let message = shift_lines(&e.to_string(), first_line - 1);
                tracing::debug!(origin, %message, "YAML document does not parse");
                docs.push(Err(message));
            }
        }
    }
    docs
}

/// Adds `offset` to every `line N` in a parser message.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find("line ") {
        let (head, tail) = rest.split_at(pos + "line ".len());
        out.push_str(head);
        let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match tail[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Splits YAML text into documents: a `---` line starts one (and stays in
/// it: it may carry content), a `...` line ends one. Returns each chunk with
/// its first line number (1-based).
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    fn is_marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    }

    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        if is_marker(line, "---") {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
        if is_marker(line, "...") {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no + 1;
        }
    }
    chunks.push((start_line, &text[start..]));
    chunks.retain(|(_, chunk)| !chunk.trim().is_empty());
    chunks
}

/// Names an object from its raw form (`Service default/web`), for errors
/// about objects that did not decode.
fn describe_raw(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let field = |name: &str| {
        meta.and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (field("name"), kind) {
        (None, _) => format!("{kind} (unnamed)"),
        (Some(name), "Node") => format!("Node {name}"),
        (Some(name), _) => format!(
            "{kind} {}/{name}",
            field("namespace").unwrap_or(DEFAULT_NAMESPACE)
        ),
    }
}

/// Decodes a `k8s-openapi` type; a value of the wrong type is reported
/// (with its path) in `errors`.
fn decode<T: DeserializeOwned>(
    value: Value,
    kind: &str,
    at: &Location,
    errors: &mut Vec<ManifestError>,
) -> Option<T> {
    let object = describe_raw(kind, &value);
    match serde_path_to_error::deserialize(value) {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            let path = e.path().to_string();
            errors.push(ManifestError::Decode {
                at: at.clone(),
                object,
                field: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

/// Converts one document or list item; `kind_hint` is the item kind implied
/// by the enclosing `*List`.
fn decode_document(
    value: Value,
    kind_hint: Option<&str>,
    at: Location,
    out: &mut Vec<(Location, Object)>,
    errors: &mut Vec<ManifestError>,
) {
    let decode_error =
        |at: Location, object: String, field: &str, message: &str| ManifestError::Decode {
            at,
            object,
            field: field.into(),
            message: message.into(),
        };
    if !value.is_object() {
        errors.push(decode_error(
            at,
            "document".into(),
            "",
            "expected a Kubernetes object (a mapping)",
        ));
        return;
    }
    let kind = match value.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        None | Some(Value::Null) if kind_hint.is_some() => {
            kind_hint.map(str::to_owned).unwrap_or_default()
        }
        _ => {
            errors.push(decode_error(
                at,
                "object".into(),
                "kind",
                "required: a non-empty string",
            ));
            return;
        }
    };

    let converted = match kind.as_str() {
        "Service" => decode::<core::Service>(value, &kind, &at, errors)
            .map(|s| service_from_k8s(&s).map(Object::Service)),
        "EndpointSlice" => decode::<discovery::EndpointSlice>(value, &kind, &at, errors)
            .map(|s| slice_from_k8s(&s).map(Object::EndpointSlice)),
        "Node" => decode::<core::Node>(value, &kind, &at, errors)
            .map(|n| node_from_k8s(&n).map(Object::Node)),
        list if list.ends_with("List") => {
            let item_kind = list.strip_suffix("List").filter(|k| !k.is_empty());
            let items = match value {
                Value::Object(mut map) => map.remove("items"),
                _ => None,
            };
            let items = match items {
                None | Some(Value::Null) => return,
                Some(Value::Array(items)) => items,
                Some(_) => {
                    errors.push(decode_error(at, kind.clone(), "items", "expected a list"));
                    return;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let at = Location {
                    item: Some(i),
                    ..at.clone()
                };
                decode_document(item, item_kind, at, out, errors);
            }
            return;
        }
        other => {
            tracing::debug!(
                origin = %at.origin,
                document = at.document,
                kind = other,
                "ignoring object of unhandled kind"
            );
            return;
        }
    };
    match converted {
        None => {}
        Some(Ok(object)) => out.push((at, object)),
        Some(Err(error)) => errors.push(ManifestError::Object { at, error }),
    }
}

// ---------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------

/// The manifest files of `dir`: `*.yaml`, `*.yml` and `*.json`, not hidden
/// (names starting with `.` are skipped, e.g. editor lock files and the
/// `..data` entries of a ConfigMap mount), not recursive, sorted by name.
/// Symlinks are followed.
fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let wanted = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        let path = entry.path();
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every manifest file of `dir` (`*.yaml`, `*.yml`, `*.json`; sorted by
/// name; not recursive; hidden files skipped) into a [`Snapshot`].
///
/// Keeps the Node named `node_name` (other Nodes are ignored). When an
/// object (same kind, namespace and name) is defined more than once, the
/// later one (by file name, then position in the file) wins and a
/// [`ManifestError::Duplicate`] is returned. Nothing is logged here beyond
/// debug messages: the caller reports the returned problems.
///
/// An object that fails to convert is skipped and does not replace an
/// earlier valid definition. Fails only when the directory itself cannot be
/// listed; an unreadable file is a [`ManifestError::Read`]. File names that
/// are not UTF-8 are skipped.
pub fn load_dir(dir: &Path, node_name: &str) -> Result<(Snapshot, Vec<ManifestError>), io::Error> {
    let mut errors = Vec::new();
    let mut objects: BTreeMap<(&'static str, ServiceKey), (Location, Object)> = BTreeMap::new();
    for path in manifest_files(dir)? {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                errors.push(ManifestError::Read { path, error });
                continue;
            }
        };
        let (located, file_errors) = parse_located(&text, &path.display().to_string());
        errors.extend(file_errors);
        for (at, object) in located {
            if let Object::Node(node) = &object {
                if node.name != node_name {
                    tracing::debug!(node = %node.name, "ignoring another node's Node object");
                    continue;
                }
            }
            match objects.entry(object.identity()) {
                Entry::Vacant(slot) => {
                    slot.insert((at, object));
                }
                Entry::Occupied(mut slot) => {
                    let description = object.describe();
                    let (earlier, _) = slot.insert((at.clone(), object));
                    errors.push(ManifestError::Duplicate {
                        at,
                        object: description,
                        earlier,
                    });
                }
            }
        }
    }

    let mut snapshot = Snapshot::default();
    for (_, object) in objects.into_values() {
        match object {
            Object::Service(s) => snapshot.services.push(s),
            Object::EndpointSlice(s) => snapshot.slices.push(s),
            Object::Node(n) => snapshot.node = Some(n),
        }
    }
    Ok((snapshot, errors))
}

/// A fingerprint of the manifest files of `dir` (the files [`load_dir`]
/// reads): their names, sizes and contents. Poll it and reload when it
/// changes; take it before [`load_dir`], so that a change during the load
/// shows up at the next poll.
///
/// Fails only when the directory cannot be listed; a file that cannot be
/// read counts with its error kind, so it changes the fingerprint as it
/// comes and goes.
pub fn fingerprint(dir: &Path) -> io::Result<u64> {
    let mut hasher = Xxh3::new();
    let files = manifest_files(dir)?;
    hasher.update(&(files.len() as u64).to_le_bytes());
    for path in files {
        let name = path.file_name().unwrap_or_default();
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_encoded_bytes());
        match fs::read(&path) {
            Ok(content) => {
                hasher.update(&[1]);
                hasher.update(&(content.len() as u64).to_le_bytes());
                hasher.update(&content);
            }
            Err(error) => {
                hasher.update(&[0]);
                hasher.update(error.kind().to_string().as_bytes());
            }
        }
    }
    Ok(hasher.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE_LIST: &str = include_str!("../tests/fixtures/01-list-services.body");
    const SERVICE: &str = include_str!("../tests/fixtures/02-get-service.body");
    const NODE_LIST: &str = include_str!("../tests/fixtures/03-list-nodes.body");
    const SLICE_LIST: &str = include_str!("../tests/fixtures/04-list-endpointslices-selector.body");

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("test CIDR")
    }

    fn k8s_service(yaml: &str) -> core::Service {
        serde_yaml::from_str(yaml).expect("test Service")
    }

    fn convert(yaml: &str) -> Result<ClusterService, ObjectError> {
        service_from_k8s(&k8s_service(yaml))
    }

    fn slice(yaml: &str) -> Result<EndpointSlice, ObjectError> {
        slice_from_k8s(&serde_yaml::from_str(yaml).expect("test EndpointSlice"))
    }

    fn node(yaml: &str) -> Result<NodeInfo, ObjectError> {
        node_from_k8s(&serde_yaml::from_str(yaml).expect("test Node"))
    }

    /// Parses text that must not produce any problem.
    fn parse_clean(text: &str) -> Vec<Object> {
        let (objects, errors) = parse_manifests(text, "test.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        objects
    }

    fn web_fixture() -> ClusterService {
        ClusterService {
            key: ServiceKey::new("default", "web"),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec![ip("10.96.107.50")],
            external_ips: vec![ip("203.0.113.11")],
            ports: vec![ClusterServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(31690),
                target_port: TargetPort::Number(8080),
            }],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity: SessionAffinity::None,
            source_ranges: vec![net("192.0.2.0/24"), net("198.51.100.7/32")],
            invalid_source_ranges: vec![],
            proxy_name: None,
        }
    }

    #[test]
    fn get_service_fixture_converts_field_by_field() {
        let k8s: core::Service = serde_json::from_str(SERVICE).expect("fixture");
        let svc = service_from_k8s(&k8s).expect("converts");
        assert_eq!(svc.key, ServiceKey::new("default", "web"));
        assert_eq!(svc.service_type, ServiceType::LoadBalancer);
        assert_eq!(svc.cluster_ips, [ip("10.96.107.50")]);
        assert_eq!(svc.external_ips, [ip("203.0.113.11")]);
        assert_eq!(svc.ports.len(), 1);
        assert_eq!(svc.ports[0].name, "http");
        assert_eq!(svc.ports[0].protocol, Protocol::Tcp);
        assert_eq!(svc.ports[0].port, 80);
        assert_eq!(svc.ports[0].node_port, Some(31690));
        assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(svc.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(svc.health_check_node_port, None);
        assert_eq!(svc.session_affinity, SessionAffinity::None);
        assert_eq!(
            svc.source_ranges,
            [net("192.0.2.0/24"), net("198.51.100.7/32")]
        );
        assert!(svc.invalid_source_ranges.is_empty());
        assert_eq!(svc.proxy_name, None);
        assert_eq!(svc, web_fixture());

        // The same body read as a manifest file.
        assert_eq!(parse_clean(SERVICE), [Object::Service(web_fixture())]);
    }

    #[test]
    fn service_list_items_without_kind_are_services() {
        let objects = parse_clean(SERVICE_LIST);
        let [Object::Service(kubernetes), Object::Service(web)] = &objects[..] else {
            panic!("expected two Services, got {objects:?}");
        };
        assert_eq!(
            *kubernetes,
            ClusterService {
                key: ServiceKey::new("default", "kubernetes"),
                service_type: ServiceType::ClusterIp,
                cluster_ips: vec![ip("10.96.0.1")],
                external_ips: vec![],
                ports: vec![ClusterServicePort {
                    name: "https".into(),
                    protocol: Protocol::Tcp,
                    port: 443,
                    node_port: None,
                    target_port: TargetPort::Number(6443),
                }],
                external_traffic_policy: TrafficPolicy::Cluster,
                internal_traffic_policy: TrafficPolicy::Cluster,
                health_check_node_port: None,
                session_affinity: SessionAffinity::None,
                source_ranges: vec![],
                invalid_source_ranges: vec![],
                proxy_name: None,
            }
        );
        assert_eq!(*web, web_fixture());
    }

    #[test]
    fn node_list_fixture() {
        let objects = parse_clean(NODE_LIST);
        assert_eq!(
            objects,
            [Object::Node(NodeInfo {
                name: "node-1".into(),
                addresses: vec![],
                deleting: false,
                // Only `node.kubernetes.io/not-ready`: not the autoscaler's.
                to_be_deleted: false,
            })]
        );
    }

    #[test]
    fn endpoint_slice_list_fixture() {
        let objects = parse_clean(SLICE_LIST);
        let [Object::EndpointSlice(slice)] = &objects[..] else {
            panic!("expected one EndpointSlice, got {objects:?}");
        };
        assert_eq!(slice.key, ServiceKey::new("default", "web-abc12"));
        assert_eq!(slice.service, ServiceKey::new("default", "web"));
        assert_eq!(slice.address_type, AddressType::IPv4);
        assert_eq!(
            slice.ports,
            [EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: Some(8080),
            }]
        );
        assert_eq!(
            slice.endpoints,
            [
                Endpoint {
                    addresses: vec![ip("10.244.1.10")],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("node-1".into()),
                },
                Endpoint {
                    addresses: vec![ip("10.244.1.11")],
                    ready: false,
                    // serving absent = ready
                    serving: false,
                    terminating: false,
                    node_name: Some("node-1".into()),
                },
            ]
        );
    }

    #[test]
    fn service_defaults_as_the_api_server() {
        let svc = convert(
            "
metadata: {name: api}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  ports:
    - port: 8080
    - {name: dns, port: 53, protocol: UDP, targetPort: 0}
    - {name: metrics, port: 9000, targetPort: ''}
",
        )
        .expect("converts");
        assert_eq!(svc.key, ServiceKey::new("default", "api"));
        assert_eq!(svc.service_type, ServiceType::ClusterIp);
        assert_eq!(svc.cluster_ips, [ip("10.96.0.20")]);
        assert_eq!(svc.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(
            svc.session_affinity,
            SessionAffinity::ClientIp {
                timeout: DEFAULT_AFFINITY_TIMEOUT
            }
        );
        assert_eq!(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs(10800));
        assert_eq!(
            svc.ports,
            [
                ClusterServicePort {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                    node_port: None,
                    target_port: TargetPort::Number(8080),
                },
                ClusterServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: None,
                    target_port: TargetPort::Number(53),
                },
                ClusterServicePort {
                    name: "metrics".into(),
                    protocol: Protocol::Tcp,
                    port: 9000,
                    node_port: None,
                    target_port: TargetPort::Number(9000),
                },
            ]
        );
        assert!(svc.source_ranges.is_empty() && svc.invalid_source_ranges.is_empty());
        assert_eq!(svc.health_check_node_port, None);
        assert_eq!(svc.proxy_name, None);
    }

    #[test]
    fn service_explicit_values() {
        let svc = convert(
            r#"
metadata:
  name: web
  namespace: shop
  labels: {service.kubernetes.io/service-proxy-name: portico}
spec:
  type: NodePort
  clusterIPs: [10.96.0.30, "fd00::30"]
  externalIPs: [192.0.2.50]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 32000
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080, protocol: SCTP}
    - {name: alt, port: 81, targetPort: "8081"}
"#,
        )
        .expect("converts");
        assert_eq!(svc.key, ServiceKey::new("shop", "web"));
        assert_eq!(svc.service_type, ServiceType::NodePort);
        assert_eq!(svc.cluster_ips, [ip("10.96.0.30"), ip("fd00::30")]);
        assert_eq!(svc.external_ips, [ip("192.0.2.50")]);
        assert_eq!(svc.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(svc.health_check_node_port, Some(32000));
        assert_eq!(
            svc.session_affinity,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(600)
            }
        );
        assert_eq!(svc.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(svc.ports[0].node_port, Some(30080));
        assert_eq!(svc.ports[0].protocol, Protocol::Sctp);
        assert_eq!(svc.ports[1].target_port, TargetPort::Number(8081));
        assert_eq!(svc.proxy_name.as_deref(), Some("portico"));
    }

    #[test]
    fn headless_and_external_addresses() {
        let svc = convert(
            "
metadata: {name: db, namespace: data}
spec: {clusterIP: None, clusterIPs: [None], externalIPs: [203.0.113.7, 203.0.113.5]}
status:
  loadBalancer:
    ingress:
      - ip: 203.0.113.5
      - hostname: lb.example.com
      - {ip: 203.0.113.6, ipMode: Proxy}
      - {ip: 203.0.113.8, ipMode: VIP}
",
        )
        .expect("converts");
        assert!(svc.cluster_ips.is_empty());
        assert_eq!(
            svc.external_ips,
            [ip("203.0.113.5"), ip("203.0.113.8"), ip("203.0.113.7")]
        );

        let svc = convert("metadata: {name: x}\nspec: {clusterIP: None}\n").expect("converts");
        assert!(svc.cluster_ips.is_empty());
        assert!(svc.ports.is_empty());
    }

    #[test]
    fn legacy_source_range_annotation() {
        let annotated = r#"
metadata:
  name: web
  annotations:
    service.beta.kubernetes.io/load-balancer-source-ranges: " 10.0.0.0/8, 2001:db8::/32 "
spec: {type: LoadBalancer}
"#;
        let svc = convert(annotated).expect("converts");
        assert_eq!(svc.source_ranges, [net("10.0.0.0/8"), net("2001:db8::/32")]);
        assert!(svc.invalid_source_ranges.is_empty());

        // The field wins over the annotation.
        let both = format!("{annotated}  loadBalancerSourceRanges: [192.0.2.0/24]\n").replace(
            "spec: {type: LoadBalancer}\n",
            "spec:\n  type: LoadBalancer\n",
        );
        let svc = convert(&both).expect("converts");
        assert_eq!(svc.source_ranges, [net("192.0.2.0/24")]);

        // An empty annotation is no restriction.
        let svc = convert(
            r#"
metadata:
  name: web
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: " "}
spec: {type: LoadBalancer}
"#,
        )
        .expect("converts");
        assert!(svc.source_ranges.is_empty() && svc.invalid_source_ranges.is_empty());
    }

    #[test]
    fn invalid_source_ranges_are_kept_not_fatal() {
        let svc = convert(
            r#"
metadata: {name: web}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: ["10.0.0.0/33", " 192.0.2.9/24 ", "bogus", "198.51.100.7", ""]
"#,
        )
        .expect("an invalid range must not fail the Service");
        // Host bits cleared.
        assert_eq!(svc.source_ranges, [net("192.0.2.0/24")]);
        // A bare address is not a CIDR for Kubernetes either.
        assert_eq!(
            svc.invalid_source_ranges,
            ["10.0.0.0/33", "bogus", "198.51.100.7", ""]
        );

        // The annotation too, including an empty entry from a stray comma.
        let svc = convert(
            r#"
metadata:
  name: web
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: "10.0.0.0/8,,300.0.0.0/8"}
spec: {}
"#,
        )
        .expect("converts");
        assert_eq!(svc.source_ranges, [net("10.0.0.0/8")]);
        assert_eq!(svc.invalid_source_ranges, ["", "300.0.0.0/8"]);
    }

    #[test]
    fn bad_values_are_errors_with_object_and_path() {
        let cases = [
            (
                "spec: {ports: [{port: 80}, {port: 81, nodePort: 99999}]}",
                "Service default/web: spec.ports[1].nodePort: 99999 is outside 1-65535",
            ),
            (
                "spec: {ports: [{port: 80, targetPort: -1}]}",
                "Service default/web: spec.ports[0].targetPort: -1 is outside 1-65535",
            ),
            (
                "spec: {ports: [{name: x}]}",
                "Service default/web: spec.ports[0].port: required",
            ),
            (
                "spec: {ports: [{port: 70000}]}",
                "Service default/web: spec.ports[0].port: 70000 is outside 1-65535",
            ),
            (
                "spec: {healthCheckNodePort: 65536}",
                "Service default/web: spec.healthCheckNodePort: 65536 is outside 1-65535",
            ),
            (
                "spec: {clusterIP: 10.0.0.300}",
                r#"Service default/web: spec.clusterIP: "10.0.0.300" is not a valid IP address"#,
            ),
            (
                "spec: {clusterIPs: [10.0.0.1, 'fd00::zz']}",
                r#"Service default/web: spec.clusterIPs[1]: "fd00::zz" is not a valid IP address"#,
            ),
            (
                "spec: {externalIPs: [nope]}",
                r#"Service default/web: spec.externalIPs[0]: "nope" is not a valid IP address"#,
            ),
            (
                "spec: {}\nstatus: {loadBalancer: {ingress: [{ip: x}]}}",
                r#"Service default/web: status.loadBalancer.ingress[0].ip: "x" is not a valid IP address"#,
            ),
            (
                "spec: {ports: [{port: 80, protocol: tcp}]}",
                r#"Service default/web: spec.ports[0].protocol: "tcp" is not one of TCP, UDP, SCTP"#,
            ),
            (
                "spec: {type: Magic}",
                r#"Service default/web: spec.type: "Magic" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"#,
            ),
            (
                "spec: {externalTrafficPolicy: Global}",
                r#"Service default/web: spec.externalTrafficPolicy: "Global" is not one of Cluster, Local"#,
            ),
            (
                "spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}",
                r#"Service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: "86401" is not a number of seconds from 1 to 86400"#,
            ),
            ("status: {}", "Service default/web: spec: required"),
        ];
        for (spec, expected) in cases {
            let err = convert(&format!("metadata: {{name: web}}\n{spec}\n")).expect_err(spec);
            assert_eq!(err.to_string(), expected, "{spec}");
            assert_eq!(err.object(), "Service default/web");
        }

        let err = convert("spec: {ports: [{port: 80, nodePort: 99999}]}").expect_err("unnamed");
        assert_eq!(
            err,
            ObjectError::Missing {
                object: "Service (unnamed)".into(),
                field: "metadata.name".into()
            }
        );

        let err = convert(
            "metadata: {name: web}\nspec: {ports: [{port: 80}, {port: 81, nodePort: 99999}]}",
        )
        .expect_err("bad nodePort");
        assert_eq!(
            err,
            ObjectError::PortOutOfRange {
                object: "Service default/web".into(),
                field: "spec.ports[1].nodePort".into(),
                value: 99999
            }
        );
        assert_eq!(err.field(), "spec.ports[1].nodePort");
    }

    #[test]
    fn slice_condition_defaults() {
        let s = slice(
            "
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{port: 8080}, {name: none}]
endpoints:
  - addresses: ['fd00::1']
  - addresses: ['fd00::2']
    conditions: {ready: false, terminating: true}
  - addresses: ['fd00::3']
    conditions: {ready: false, serving: true, terminating: true}
",
        )
        .expect("converts");
        assert_eq!(s.key, ServiceKey::new("shop", "web-1"));
        assert_eq!(s.service, ServiceKey::new("shop", "web"));
        assert_eq!(s.address_type, AddressType::IPv6);
        assert_eq!(
            s.ports,
            [
                EndpointPort {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: Some(8080)
                },
                EndpointPort {
                    name: "none".into(),
                    protocol: Protocol::Tcp,
                    port: None
                },
            ]
        );
        let flags: Vec<(bool, bool, bool)> = s
            .endpoints
            .iter()
            .map(|e| (e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            flags,
            [
                (true, true, false),
                (false, false, true),
                (false, true, true)
            ]
        );
        assert_eq!(s.endpoints[0].addresses, [ip("fd00::1")]);
        assert_eq!(s.endpoints[0].node_name, None);
    }

    #[test]
    fn slice_errors_and_fqdn() {
        let labels = "labels: {kubernetes.io/service-name: web}";
        let err = slice(&format!(
            "metadata: {{name: s, {labels}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.0.0.1]}}, {{addresses: [10.0.0.2, 10.0.0.x]}}]"
        ))
        .expect_err("bad address");
        assert_eq!(
            err.to_string(),
            r#"EndpointSlice default/s: endpoints[1].addresses[1]: "10.0.0.x" is not a valid IP address"#
        );

        let err = slice(&format!(
            "metadata: {{name: s, {labels}}}\naddressType: IPv4\nports: [{{port: 65536}}]"
        ))
        .expect_err("bad port");
        assert_eq!(err.field(), "ports[0].port");

        let err = slice("metadata: {name: s}\naddressType: IPv4").expect_err("no label");
        assert_eq!(
            err.to_string(),
            r#"EndpointSlice default/s: metadata.labels["kubernetes.io/service-name"]: required"#
        );

        let err = slice(&format!("metadata: {{name: s, {labels}}}")).expect_err("no type");
        assert_eq!(err.field(), "addressType");

        let s = slice(&format!(
            "metadata: {{name: s, {labels}}}\naddressType: FQDN\nports: [{{port: 80}}]\nendpoints: [{{addresses: [db.example.com]}}]"
        ))
        .expect("FQDN converts");
        assert_eq!(s.address_type, AddressType::Fqdn);
        assert!(s.endpoints.is_empty());
        assert_eq!(s.ports.len(), 1);

        // The API sends `endpoints: null` for an empty slice.
        let s = slice(&format!(
            "metadata: {{name: s, {labels}}}\naddressType: IPv4\nendpoints: null"
        ))
        .expect("empty slice converts");
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn node_addresses_and_deletion() {
        let n = node(
            "
metadata: {name: n1, deletionTimestamp: '2026-11-25T19:07:27Z'}
spec:
  taints:
    - {key: node.kubernetes.io/not-ready, effect: NoSchedule}
    - {key: ToBeDeletedByClusterAutoscaler, value: '1764097647', effect: NoSchedule}
status:
  addresses:
    - {type: Hostname, address: n1}
    - {type: ExternalIP, address: 198.51.100.1}
    - {type: InternalIP, address: 10.0.0.1}
    - {type: InternalIP, address: 'fd00::1'}
    - {type: InternalIP, address: 10.0.0.1}
",
        )
        .expect("converts");
        assert_eq!(
            n,
            NodeInfo {
                name: "n1".into(),
                addresses: vec![ip("10.0.0.1"), ip("fd00::1"), ip("198.51.100.1")],
                deleting: true,
                to_be_deleted: true,
            }
        );

        let err =
            node("metadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: bad}]}")
                .expect_err("bad address");
        assert_eq!(
            err.to_string(),
            r#"Node n1: status.addresses[0].address: "bad" is not a valid IP address"#
        );
        let err = node("metadata: {}").expect_err("unnamed");
        assert_eq!(err.to_string(), "Node (unnamed): metadata.name: required");
    }

    #[test]
    fn multi_document_yaml_with_a_broken_document() {
        let text = "\
# leading comment
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.0.1}
---
---
apiVersion: v1
kind: Service
metadata: {name: broken
spec: {}
--- # a comment after the marker
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
...
";
        let (objects, errors) = parse_manifests(text, "multi.yaml");
        let names: Vec<String> = objects.iter().map(Object::describe).collect();
        assert_eq!(names, ["Service default/a", "Node n1"]);
        let [ManifestError::Syntax { at, message }] = &errors[..] else {
            panic!("expected one syntax error, got {errors:?}");
        };
        assert_eq!(
            *at,
            Location {
                origin: "multi.yaml".into(),
                document: 1,
                item: None
            }
        );
        // The line is the one in the file, not in the document.
        assert!(
            message.contains("at line 12 column 5")
                && message.contains("flow mapping at line 11 column 11"),
            "{message}"
        );
        assert!(
            errors[0]
                .to_string()
                .starts_with("multi.yaml document 1: invalid YAML/JSON: "),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn undecodable_and_unconvertible_objects_are_skipped_alone() {
        let text = "\
kind: Service
metadata: {name: typed, namespace: ns}
spec: {ports: [{port: eighty}]}
---
kind: Service
metadata: {name: ranged}
spec: {ports: [{port: 80, nodePort: 99999}]}
---
kind: Service
apiVersion: v2
metadata: {name: version}
---
- just
- a list
---
metadata: {name: kindless}
---
kind: Service
metadata: {name: fine}
spec: {}
";
        let (objects, errors) = parse_manifests(text, "f.yaml");
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].describe(), "Service default/fine");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(
            messages[0].starts_with(
                "f.yaml document 0: Service ns/typed: spec.ports[0].port: invalid type"
            ),
            "{}",
            messages[0]
        );
        assert_eq!(
            messages[1],
            "f.yaml document 1: Service default/ranged: spec.ports[0].nodePort: 99999 is outside 1-65535"
        );
        assert!(
            messages[2].starts_with(
                r#"f.yaml document 2: Service default/version: invalid value: string "v2", expected v1"#
            ),
            "{}",
            messages[2]
        );
        assert_eq!(
            messages[3],
            "f.yaml document 3: document: expected a Kubernetes object (a mapping)"
        );
        assert_eq!(
            messages[4],
            "f.yaml document 4: object: kind: required: a non-empty string"
        );
        let ManifestError::Object { at, error } = &errors[1] else {
            panic!("expected an object error, got {:?}", errors[1]);
        };
        assert_eq!(at.document, 1);
        assert_eq!(error.field(), "spec.ports[0].nodePort");
    }

    #[test]
    fn plain_list_and_list_without_item_kind() {
        let text = "
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: a}
    spec: {}
  - metadata: {name: no-kind}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
    addressType: IPv4
  - kind: Secret
    metadata: {name: ignored}
---
kind: NodeList
items: [{metadata: {name: n1}}]
---
kind: PodList
items: [{metadata: {name: p}}]
---
kind: ServiceList
items: null
";
        let (objects, errors) = parse_manifests(text, "list.yaml");
        let names: Vec<String> = objects.iter().map(Object::describe).collect();
        assert_eq!(
            names,
            ["Service default/a", "EndpointSlice default/a-1", "Node n1"]
        );
        let [ManifestError::Decode { at, field, .. }] = &errors[..] else {
            panic!("expected one decode error, got {errors:?}");
        };
        assert_eq!((at.document, at.item, field.as_str()), (0, Some(1), "kind"));
        assert!(errors[0]
            .to_string()
            .starts_with("list.yaml document 0 items[1]: "));
    }

    #[test]
    fn json_streams() {
        let objects = parse_clean(&format!("{SERVICE}\n{NODE_LIST}"));
        assert_eq!(objects.len(), 2);

        // A broken second value: the first one still loads.
        let (objects, errors) = parse_manifests(&format!("{SERVICE}\n{{\"kind\": "), "x.json");
        assert_eq!(objects, [Object::Service(web_fixture())]);
        let [ManifestError::Syntax { at, .. }] = &errors[..] else {
            panic!("expected one syntax error, got {errors:?}");
        };
        assert_eq!(at.document, 1);

        // JSON documents separated by `---` (YAML).
        let objects = parse_clean(&format!("{SERVICE}\n---\n{NODE_LIST}\n---\n{SLICE_LIST}"));
        assert_eq!(objects.len(), 3);

        // Flow-style YAML that is not JSON.
        let objects = parse_clean("{kind: Node, metadata: {name: n1}}");
        assert_eq!(objects.len(), 1);

        // Empty input has no objects and no errors.
        assert!(parse_clean("").is_empty());
        assert!(parse_clean("# nothing\n---\n").is_empty());
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).expect("write test file");
    }

    #[test]
    fn load_dir_later_file_wins_and_keeps_own_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(
            d,
            "10-services.yaml",
            "
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.1}
---
kind: Node
metadata: {name: me}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
kind: Node
metadata: {name: other}
",
        );
        write(d, "20-override.json", SERVICE);
        write(d, "30-slices.yml", SLICE_LIST);
        write(d, "40-broken.yaml", "kind: Service\nmetadata: {name: [\n");
        write(d, "notes.txt", "kind: Node\nmetadata: {name: me}\n");
        write(d, ".hidden.yaml", "kind: Node\nmetadata: {name: me}\n");
        fs::create_dir(d.join("sub.yaml")).expect("mkdir");
        write(
            &d.join("sub.yaml"),
            "x.yaml",
            "kind: Node\nmetadata: {name: me}\n",
        );

        let (snapshot, errors) = load_dir(d, "me").expect("load");
        assert_eq!(snapshot.services, [web_fixture()]);
        assert_eq!(snapshot.slices.len(), 1);
        assert_eq!(
            snapshot.slices[0].key,
            ServiceKey::new("default", "web-abc12")
        );
        assert_eq!(
            snapshot.node,
            Some(NodeInfo {
                name: "me".into(),
                addresses: vec![ip("10.0.0.1")],
                deleting: false,
                to_be_deleted: false,
            })
        );

        assert_eq!(errors.len(), 2, "{errors:?}");
        let ManifestError::Duplicate {
            at,
            object,
            earlier,
        } = &errors[0]
        else {
            panic!("expected a duplicate warning, got {errors:?}");
        };
        assert_eq!(object, "Service default/web");
        assert!(at.origin.ends_with("20-override.json"), "{at}");
        assert!(earlier.origin.ends_with("10-services.yaml"), "{earlier}");
        assert_eq!(earlier.document, 0);
        assert!(
            matches!(&errors[1], ManifestError::Syntax { at, .. } if at.origin.ends_with("40-broken.yaml")),
            "{errors:?}"
        );

        // Another node name: no Node.
        let (snapshot, _) = load_dir(d, "nobody").expect("load");
        assert_eq!(snapshot.node, None);

        // Only the listing itself is fatal.
        assert!(load_dir(&d.join("missing"), "me").is_err());
        assert!(fingerprint(&d.join("missing")).is_err());
    }

    #[test]
    fn fingerprint_follows_manifest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let empty = fingerprint(d).expect("fingerprint");
        write(d, "a.yaml", "kind: Node\nmetadata: {name: n1}\n");
        let one = fingerprint(d).expect("fingerprint");
        assert_ne!(one, empty);
        assert_eq!(fingerprint(d).expect("fingerprint"), one, "stable");

        // Same size, different content.
        write(d, "a.yaml", "kind: Node\nmetadata: {name: n2}\n");
        let changed = fingerprint(d).expect("fingerprint");
        assert_ne!(changed, one);

        // Files load_dir ignores do not count.
        write(d, "README.md", "hello");
        write(d, ".a.yaml.swp", "junk");
        assert_eq!(fingerprint(d).expect("fingerprint"), changed);

        // Renaming counts.
        fs::rename(d.join("a.yaml"), d.join("b.yaml")).expect("rename");
        assert_ne!(fingerprint(d).expect("fingerprint"), changed);
    }
}
