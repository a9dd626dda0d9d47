//! Stage 1 of reading a config file: raw serde structs that mirror the YAML.
//!
//! Every struct refuses unknown keys. Values that stage 2
//! ([`crate::validate`]) checks are kept loose here so that a bad value gets a
//! precise message there instead of a serde error here: numbers are
//! [`RawInt`]s (so `nodePort: 99999` or `port: 1e30` is reported against the
//! field's range, not as an overflow or a type name), addresses, CIDRs and
//! enum-like values are strings, and durations are [`RawDuration`]s.
//!
//! No text value or key may be longer than [`MAX_TEXT_CHARS`]: a longer one
//! is reported by its length (and then left out) rather than echoed in a
//! message.
//!
//! [`parse_document`] does not deserialize the whole file in one go: it
//! parses the text to a [`serde_yaml_ng::Value`] first, then deserializes each
//! settings subsection, each node, each Service and each Service port on its
//! own, so a mistake in one of them does not hide the mistakes in the others.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::error::FieldError;
pub use crate::scalars::{RawDuration, RawInt, RawNameOrBool};

/// A whole config file, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with settings, nodes and services"
)]
pub struct RawEdgeConfig {
    /// `settings`.
    pub settings: Option<RawSettings>,
    /// `nodes`.
    pub nodes: Option<Vec<RawNode>>,
    /// `services`.
    pub services: Option<Vec<RawService>>,
}

/// `settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a settings mapping"
)]
pub struct RawSettings {
    /// `settings.health`.
    pub health: Option<RawHealthSettings>,
    /// `settings.proxy`.
    pub proxy: Option<RawProxySettings>,
    /// `settings.vip`.
    pub vip: Option<RawVipSettings>,
    /// `settings.announce`: VIP routes for a routing daemon.
    pub announce: Option<RawAnnounceSettings>,
    /// `settings.metricsListen`, a socket address.
    pub metrics_listen: Option<String>,
    /// `settings.adminListen`, a socket address.
    pub admin_listen: Option<String>,
    /// `settings.kubernetes`: watch a cluster for LoadBalancer Services.
    pub kubernetes: Option<RawKubernetesSettings>,
    /// `settings.addressPools`: where LoadBalancer addresses are assigned
    /// from, by index (an entry that failed stage 1 is `None`).
    pub address_pools: Option<Vec<Option<RawAddressPool>>>,
    /// `settings.hookApi`: the cloud-provider hook API.
    pub hook_api: Option<RawHookApiSettings>,
}

/// `settings.kubernetes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a kubernetes settings mapping"
)]
pub struct RawKubernetesSettings {
    /// `enabled` (default true when the section is present).
    pub enabled: Option<bool>,
    /// `loadBalancerClass`: the `spec.loadBalancerClass` the edge implements.
    pub load_balancer_class: Option<String>,
    /// `defaultClass`: also take Services without a `loadBalancerClass`.
    pub default_class: Option<bool>,
    /// `kubeconfig`: a kubeconfig file (else `KUBECONFIG` or in-cluster).
    pub kubeconfig: Option<String>,
    /// `leaderElection`: which of several edges writes to the cluster.
    pub leader_election: Option<RawLeaderElection>,
}

/// `settings.kubernetes.leaderElection`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a leader election mapping"
)]
pub struct RawLeaderElection {
    /// `enabled` (default true).
    pub enabled: Option<bool>,
    /// `namespace` of the Lease.
    pub namespace: Option<String>,
    /// `leaseName`.
    pub lease_name: Option<String>,
    /// `leaseDuration`, a duration in whole seconds.
    pub lease_duration: Option<RawDuration>,
}

/// One entry of `settings.addressPools`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an address pool (a mapping with name and addresses)"
)]
pub struct RawAddressPool {
    /// `name`.
    pub name: Option<String>,
    /// `addresses`: CIDRs, `first-last` ranges or single addresses.
    pub addresses: Option<Vec<String>>,
}

/// `settings.hookApi`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a hook API settings mapping"
)]
pub struct RawHookApiSettings {
    /// `listen`, a socket address.
    pub listen: Option<String>,
    /// `tokenFile`: the file holding the bearer token.
    pub token_file: Option<String>,
    /// `stateFile`: where the API's state is persisted.
    pub state_file: Option<String>,
}

/// `settings.health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a health settings mapping"
)]
pub struct RawHealthSettings {
    /// `interval`.
    pub interval: Option<RawDuration>,
    /// `timeout`.
    pub timeout: Option<RawDuration>,
    /// `rise`.
    pub rise: Option<RawInt>,
    /// `fall`.
    pub fall: Option<RawInt>,
    /// `clusterCheck`: `kube-proxy` or `tcp-node-port`.
    pub cluster_check: Option<String>,
    /// `kubeProxyPort`.
    pub kube_proxy_port: Option<RawInt>,
    /// `allDown`: `fail-open` or `fail-closed`.
    pub all_down: Option<String>,
}

/// `settings.proxy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a proxy settings mapping"
)]
pub struct RawProxySettings {
    /// `connectTimeout`.
    pub connect_timeout: Option<RawDuration>,
    /// `connectRetries`.
    pub connect_retries: Option<RawInt>,
    /// `connectAttemptDelay`.
    pub connect_attempt_delay: Option<RawDuration>,
    /// `idleTimeout`.
    pub idle_timeout: Option<RawDuration>,
    /// `udpIdleTimeout`.
    pub udp_idle_timeout: Option<RawDuration>,
    /// `drainTimeout`.
    pub drain_timeout: Option<RawDuration>,
    /// `maglevTableSize`.
    pub maglev_table_size: Option<RawInt>,
    /// `splice`: `auto`, `always` / `true` or `off` / `false`.
    pub splice: Option<RawNameOrBool>,
    /// `maxConnections`.
    pub max_connections: Option<RawInt>,
    /// `maxUdpFlows`.
    pub max_udp_flows: Option<RawInt>,
}

/// `settings.vip`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a vip settings mapping"
)]
pub struct RawVipSettings {
    /// `interface`.
    pub interface: Option<String>,
}

/// `settings.announce`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an announce settings mapping"
)]
pub struct RawAnnounceSettings {
    /// `table`, a kernel routing table number.
    pub table: Option<RawInt>,
    /// `device`, the interface name of the device the routes go through.
    pub device: Option<String>,
    /// `withdrawWhenNoHealthyNode`.
    pub withdraw_when_no_healthy_node: Option<bool>,
    /// `withdrawGrace`, a duration.
    pub withdraw_grace: Option<RawDuration>,
    /// `birdSocket`, the control socket of the BIRD beside the edge.
    pub bird_socket: Option<String>,
}

/// One entry of `nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a node (a mapping with name and addresses)"
)]
pub struct RawNode {
    /// `name`.
    pub name: Option<String>,
    /// `addresses`, IP addresses.
    pub addresses: Option<Vec<String>>,
    /// `excluded`, exclusion reasons as [`crate::ExclusionReason`] displays them.
    pub excluded: Option<Vec<String>>,
}

/// One entry of `services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a Service (a mapping with name, vips and ports)"
)]
pub struct RawService {
    /// `namespace` (default `default`).
    pub namespace: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `vips`, IP addresses.
    pub vips: Option<Vec<String>>,
    /// `externalTrafficPolicy`: `Cluster` or `Local`.
    pub external_traffic_policy: Option<String>,
    /// `healthCheckNodePort`.
    pub health_check_node_port: Option<RawInt>,
    /// `sessionAffinity`: `None` or `ClientIP`.
    pub session_affinity: Option<String>,
    /// `sessionAffinityConfig`.
    pub session_affinity_config: Option<RawSessionAffinityConfig>,
    /// `loadBalancerSourceRanges`, CIDRs.
    pub load_balancer_source_ranges: Option<Vec<String>>,
    /// `algorithm`: `maglev`, `round-robin` or `least-connections`.
    pub algorithm: Option<String>,
    /// `proxyProtocol`: `off`, `v1`, `v2` or `false`.
    pub proxy_protocol: Option<RawNameOrBool>,
    /// `clusterCheck`: overrides `settings.health.clusterCheck` for this
    /// Service.
    pub cluster_check: Option<String>,
    /// `ports`. [`parse_document`] leaves this `None` and returns the ports
    /// in [`ServiceEntry::ports`] instead, each deserialized on its own.
    pub ports: Option<Vec<RawServicePort>>,
}

/// `sessionAffinityConfig`, in the Kubernetes shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with clientIP"
)]
pub struct RawSessionAffinityConfig {
    /// `clientIP`.
    #[serde(rename = "clientIP")]
    pub client_ip: Option<RawClientIpConfig>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with timeoutSeconds"
)]
pub struct RawClientIpConfig {
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<RawInt>,
}

/// One entry of a Service's `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a Service port (a mapping with port and nodePort)"
)]
pub struct RawServicePort {
    /// `name`.
    pub name: Option<String>,
    /// `protocol`: `TCP`, `UDP` or `SCTP` (default `TCP`).
    pub protocol: Option<String>,
    /// `port`.
    pub port: Option<RawInt>,
    /// `nodePort`; absent when the Service has no NodePorts.
    pub node_port: Option<RawInt>,
}

/// A config file after stage 1, with every list index preserved: an entry
/// that could not be deserialized is `None` (and its problems are in the
/// errors [`parse_document`] returned with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument {
    /// `settings` (all defaults when absent); `None` if it was not a
    /// mapping. Parts of it that failed to deserialize are left out.
    pub settings: Option<RawSettings>,
    /// `nodes`, by index.
    pub nodes: Vec<Option<RawNode>>,
    /// `services`, by index.
    pub services: Vec<Option<ServiceEntry>>,
    /// The paths of the texts and keys over [`MAX_TEXT_CHARS`], reported
    /// and left out: their first error is the one about the length, and
    /// any other at the same path ([`drop_echoes`]) only follows from
    /// leaving them out.
    pub overlong: Vec<String>,
    /// Whether the document states its Services as a list (`services: []`
    /// included), rather than leaving `services` out or empty: a reload
    /// may remove every Service only when the file says so.
    pub lists_services: bool,
}

/// Keeps only the first error at each path of `overlong` (the one about the
/// length; a value left out may also be reported as missing or mistyped).
pub fn drop_echoes(errors: &mut Vec<FieldError>, overlong: &[String]) {
    let mut seen: Vec<&str> = Vec::new();
    errors.retain(|e| {
        if !overlong.contains(&e.path) {
            return true;
        }
        if seen.contains(&e.path.as_str()) {
            return false;
        }
        seen.push(
            overlong
                .iter()
                .find(|p| **p == e.path)
                .map_or("", String::as_str),
        );
        true
    });
}

impl Default for RawDocument {
    fn default() -> Self {
        RawDocument {
            settings: Some(RawSettings::default()),
            nodes: Vec::new(),
            services: Vec::new(),
            overlong: Vec::new(),
            lists_services: false,
        }
    }
}

/// One Service after stage 1: the Service without its ports, and the ports
/// deserialized one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The Service; its `ports` field is `None` (see `ports`).
    pub service: RawService,
    /// The Service's ports by index (empty when absent); `None` if `ports`
    /// was not a list at all.
    pub ports: Option<Vec<Option<RawServicePort>>>,
}

impl From<RawService> for ServiceEntry {
    fn from(mut service: RawService) -> Self {
        let ports = service.ports.take().unwrap_or_default();
        ServiceEntry {
            service,
            ports: Some(ports.into_iter().map(Some).collect()),
        }
    }
}

impl From<RawEdgeConfig> for RawDocument {
    fn from(raw: RawEdgeConfig) -> Self {
        RawDocument {
            lists_services: raw.services.is_some(),
            settings: Some(raw.settings.unwrap_or_default()),
            nodes: raw
                .nodes
                .unwrap_or_default()
                .into_iter()
                .map(Some)
                .collect(),
            services: raw
                .services
                .unwrap_or_default()
                .into_iter()
                .map(|s| Some(s.into()))
                .collect(),
            overlong: Vec::new(),
        }
    }
}

/// The longest text value (or key) a config file may hold, in characters.
/// The longest real ones are file paths; anything longer is a mistake (a
/// file pasted into a value, say), reported by its length.
pub const MAX_TEXT_CHARS: usize = 1024;

/// The message for an empty document (also used for an empty file).
pub const EMPTY_DOCUMENT: &str = "the file is empty: it is refused so that a file not yet written, or cut short, never removes every Service; to run without Services from this file, write `services: []`";

/// Stage 1: parses YAML text into a [`RawDocument`], plus every problem
/// found on the way.
///
/// A YAML syntax error is a single error (with its line and column) and
/// yields an empty document. Otherwise each section and each list entry is
/// deserialized on its own and every failure is reported with its full path.
/// An empty document (nothing but whitespace, comments or `---`) is an
/// error ([`EMPTY_DOCUMENT`]); `{}` or `services: []` is an empty config.
pub fn parse_document(yaml: &str) -> (RawDocument, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut doc = RawDocument::default();

    let mut value: Value = match serde_yaml_ng::from_str(yaml) {
        Ok(value) => value,
        Err(e) => {
            errors.push(
                huge_integer(&e)
                    .unwrap_or_else(|| FieldError::new("", format!("invalid YAML: {e}"))),
            );
            return (doc, errors);
        }
    };
    if let Err(e) = value.apply_merge() {
        errors.push(FieldError::new("", format!("invalid YAML: {e}")));
        return (doc, errors);
    }

    limit_texts(&mut value, "", &mut doc.overlong, &mut errors);
    let top = match value {
        Value::Null => {
            errors.push(FieldError::new("", EMPTY_DOCUMENT));
            return (doc, errors);
        }
        Value::Mapping(top) => top,
        other => {
            errors.push(FieldError::new(
                "",
                format!(
                    "the document must be a mapping with settings, nodes and services, not {}",
                    kind(&other)
                ),
            ));
            return (doc, errors);
        }
    };

    for (key, value) in top {
        let Some(key) = key.as_str() else {
            errors.push(FieldError::new(
                "",
                format!("top-level keys must be strings, not {}", kind(&key)),
            ));
            continue;
        };
        match key {
            "settings" => {
                doc.settings = match value {
                    Value::Null => Some(RawSettings::default()),
                    value => settings(value, &mut errors),
                }
            }
            "nodes" => {
                doc.nodes = each_item(value, "nodes", "nodes", &mut errors)
                    .into_iter()
                    .map(|(path, node)| deserialize_at(node, &path, &mut errors))
                    .collect()
            }
            "services" => {
                doc.lists_services = matches!(value, Value::Sequence(_));
                doc.services = each_item(value, "services", "Services", &mut errors)
                    .into_iter()
                    .map(|(path, service)| service_entry(service, &path, &mut errors))
                    .collect()
            }
            other => errors.push(FieldError::new(
                other,
                format!("unknown field `{other}`, expected one of `settings`, `nodes`, `services`"),
            )),
        }
    }
    drop_echoes(&mut errors, &doc.overlong);
    (doc, errors)
}

/// The YAML reader's error for an integer beyond 64 bits (it stops the
/// whole document), in words and at its path.
fn huge_integer(e: &serde_yaml_ng::Error) -> Option<FieldError> {
    let text = e.to_string();
    let (path, rest) = text.split_once(": invalid type: integer `")?;
    let (number, rest) = rest.split_once('`')?;
    if !(rest.starts_with(" as u128") || rest.starts_with(" as i128")) {
        return None;
    }
    let at = e
        .location()
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    Some(FieldError::new(
        path.trim_start_matches('.'),
        format!("{number} is far outside the range of any setting{at}"),
    ))
}

/// Reports every text value and key longer than [`MAX_TEXT_CHARS`] by its
/// length and takes it out (a value becomes null, a key's entry goes), so
/// no later message repeats it.
fn limit_texts(
    value: &mut Value,
    path: &str,
    overlong: &mut Vec<String>,
    errors: &mut Vec<FieldError>,
) {
    let too_long = |s: &str| s.chars().count() > MAX_TEXT_CHARS;
    let message = |what: &str, s: &str| {
        format!(
            "{what} of {} characters is too long: no text in this file may be longer than {MAX_TEXT_CHARS} characters",
            s.chars().count()
        )
    };
    match value {
        Value::String(s) if too_long(s) => {
            errors.push(FieldError::new(path, message("a text", s)));
            overlong.push(path.to_string());
            *value = Value::Null;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                limit_texts(item, &format!("{path}[{i}]"), overlong, errors);
            }
        }
        Value::Mapping(map) => {
            map.retain(|key, _| match key.as_str() {
                Some(k) if too_long(k) => {
                    errors.push(FieldError::new(path, message("a key", k)));
                    overlong.push(path.to_string());
                    false
                }
                _ => true,
            });
            for (key, item) in map.iter_mut() {
                let mut sub = path.to_string();
                push_key(&mut sub, key.as_str().unwrap_or("?"));
                limit_texts(item, &sub, overlong, errors);
            }
        }
        Value::Tagged(tagged) => limit_texts(&mut tagged.value, path, overlong, errors),
        _ => {}
    }
}

/// Deserializes `settings`, taking its subsections (and each address pool)
/// apart so that a mistake in one does not hide those in the others. A part that fails is
/// left out (its problems are reported) and the others are still returned
/// for stage 2; `None` only when `settings` is not a mapping at all.
fn settings(value: Value, errors: &mut Vec<FieldError>) -> Option<RawSettings> {
    let Value::Mapping(mut map) = value else {
        return deserialize_at(value, "settings", errors);
    };
    let mut take = |key: &str| match map.remove(key) {
        None | Some(Value::Null) => None,
        Some(sub) => Some(sub),
    };
    let health = take("health").map(|v| deserialize_at(v, "settings.health", errors));
    let proxy = take("proxy").map(|v| deserialize_at(v, "settings.proxy", errors));
    let vip = take("vip").map(|v| deserialize_at(v, "settings.vip", errors));
    let announce = take("announce").map(|v| deserialize_at(v, "settings.announce", errors));
    let kubernetes = take("kubernetes").map(|v| deserialize_at(v, "settings.kubernetes", errors));
    let hook_api = take("hookApi").map(|v| deserialize_at(v, "settings.hookApi", errors));
    let address_pools = take("addressPools").map(|v| {
        each_item(v, "settings.addressPools", "address pools", errors)
            .into_iter()
            .map(|(path, item)| deserialize_at(item, &path, errors))
            .collect::<Vec<Option<RawAddressPool>>>()
    });
    let rest: RawSettings =
        deserialize_at(Value::Mapping(map), "settings", errors).unwrap_or_default();
    Some(RawSettings {
        health: health.flatten(),
        proxy: proxy.flatten(),
        vip: vip.flatten(),
        announce: announce.flatten(),
        kubernetes: kubernetes.flatten(),
        hook_api: hook_api.flatten(),
        address_pools,
        ..rest
    })
}

/// Deserializes one Service, taking its `ports` apart to deserialize each
/// port on its own.
fn service_entry(value: Value, path: &str, errors: &mut Vec<FieldError>) -> Option<ServiceEntry> {
    let (value, ports) = match value {
        Value::Mapping(mut map) => {
            let ports = map.remove("ports");
            (Value::Mapping(map), ports)
        }
        other => (other, None),
    };
    let ports_path = format!("{path}.ports");
    let ports = match ports {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Sequence(items)) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, port)| deserialize_at(port, &format!("{ports_path}[{i}]"), errors))
                .collect(),
        ),
        Some(other) => {
            errors.push(FieldError::new(
                ports_path,
                format!("invalid type: {}, expected a list of ports", kind(&other)),
            ));
            None
        }
    };
    let service: RawService = deserialize_at(value, path, errors)?;
    Some(ServiceEntry { service, ports })
}

/// Splits a top-level list into its entries, each with its path
/// (`section[i]`). Anything but a list (or null) is reported.
fn each_item(
    value: Value,
    section: &str,
    what: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<(String, Value)> {
    match value {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| (format!("{section}[{i}]"), item))
            .collect(),
        other => {
            errors.push(FieldError::new(
                section,
                format!("invalid type: {}, expected a list of {what}", kind(&other)),
            ));
            Vec::new()
        }
    }
}

/// Deserializes `value` as a `T`, reporting a failure at `prefix` plus the
/// path inside `value` where it happened.
fn deserialize_at<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = join_path(prefix, e.path());
            errors.push(FieldError::new(path, e.into_inner().to_string()));
            None
        }
    }
}

/// `prefix` followed by `path` in the file's notation (`.key`, `[i]`).
fn join_path(prefix: &str, path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = prefix.to_string();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_key(&mut out, key),
            Segment::Enum { variant } => push_key(&mut out, variant),
            Segment::Unknown => push_key(&mut out, "?"),
        }
    }
    out
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

/// How a YAML value is described in messages, as serde describes it.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "sequence".to_string(),
        Value::Mapping(_) => "map".to_string(),
        Value::Tagged(t) => format!("tagged value `{}`", t.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn empty_document_is_an_error() {
        for text in ["", "   \n", "# only a comment\n", "---\n"] {
            let (doc, errors) = parse_document(text);
            assert_eq!(paths(&errors), [""], "{text:?}");
            assert_eq!(errors[0].message, EMPTY_DOCUMENT);
            assert_eq!(doc, RawDocument::default(), "{text:?}");
        }
    }

    #[test]
    fn empty_mapping_is_an_empty_config() {
        for (text, lists_services) in [
            ("{}", false),
            ("settings:\nnodes:\nservices:\n", false),
            ("services: []\n", true),
        ] {
            let (doc, errors) = parse_document(text);
            assert!(errors.is_empty(), "{text:?}: {errors:?}");
            let empty = RawDocument {
                lists_services,
                ..RawDocument::default()
            };
            assert_eq!(doc, empty, "{text:?}");
        }
    }

    #[test]
    fn syntax_error_is_one_error_with_location() {
        let (_, errors) = parse_document("services:\n  - name: web\n   vips: [\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "");
        assert!(errors[0].message.contains("line"), "{}", errors[0].message);
        assert!(
            errors[0].message.contains("column"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn document_must_be_a_mapping() {
        let (_, errors) = parse_document("- a\n- b\n");
        assert_eq!(paths(&errors), [""]);
        assert!(errors[0].message.contains("must be a mapping"));
    }

    #[test]
    fn unknown_top_level_key_is_reported() {
        let (_, errors) = parse_document("servces: []\nnodes: []\n");
        assert_eq!(paths(&errors), ["servces"]);
        assert!(errors[0].message.contains("unknown field `servces`"));
    }

    #[test]
    fn unknown_keys_in_nested_structs_have_full_paths() {
        let yaml = "
settings:
  health:
    intervall: 2s
services:
  - name: a
    vips: [10.0.0.1]
    ports:
      - port: 80
  - name: b
    vips: [10.0.0.2]
    ports:
      - port: 80
        nodeport: 30080
  - name: c
    sessionAffinityConfig: { clientIP: { timeout: 3 } }
";
        let (_, errors) = parse_document(yaml);
        assert_eq!(
            paths(&errors),
            [
                "settings.health.intervall",
                "services[1].ports[0].nodeport",
                "services[2].sessionAffinityConfig.clientIP.timeout",
            ],
            "{errors:?}"
        );
        assert!(errors[1].message.starts_with("unknown field `nodeport`"));
    }

    #[test]
    fn errors_in_different_items_are_all_reported() {
        let yaml = "
nodes:
  - name: a
    adresses: [10.0.0.1]
  - name: b
    addresses: 10.0.0.2
services:
  - name: a
    typo: 1
  - name: b
  - name: c
  - name: d
    ports:
      - port: eighty
      - port: 80
        protocol: [TCP]
";
        let (doc, errors) = parse_document(yaml);
        assert_eq!(
            paths(&errors),
            [
                "nodes[0].adresses",
                "nodes[1].addresses",
                "services[0].typo",
                "services[3].ports[0].port",
                "services[3].ports[1].protocol",
            ],
            "{errors:?}"
        );
        // Indices are kept: failed entries are holes, not removed.
        assert_eq!(doc.nodes.len(), 2);
        assert!(doc.nodes.iter().all(Option::is_none));
        assert_eq!(doc.services.len(), 4);
        assert!(doc.services[0].is_none());
        assert!(doc.services[1].is_some());
        let d = doc.services[3]
            .as_ref()
            .expect("services[3] itself is fine");
        assert_eq!(d.ports, Some(vec![None, None]));
    }

    #[test]
    fn wrong_shapes_of_lists_are_reported() {
        let (_, errors) = parse_document("nodes: {a: 1}\nservices: web\n");
        assert_eq!(paths(&errors), ["nodes", "services"]);
        let (doc, errors) = parse_document("services:\n  - name: web\n    ports: 80\n");
        assert_eq!(paths(&errors), ["services[0].ports"]);
        assert_eq!(
            doc.services[0].as_ref().and_then(|s| s.ports.as_ref()),
            None
        );
        let (_, errors) = parse_document("services:\n  - web\n");
        assert_eq!(paths(&errors), ["services[0]"]);
        assert!(
            errors[0].message.contains("expected a Service"),
            "{errors:?}"
        );
    }

    #[test]
    fn large_integers_reach_stage_two() {
        let (doc, errors) = parse_document(
            "services:\n  - name: web\n    ports:\n      - port: 99999\n        nodePort: -1\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let ports = doc.services[0].as_ref().and_then(|s| s.ports.clone());
        assert_eq!(
            ports,
            Some(vec![Some(RawServicePort {
                port: Some(RawInt::Int(99999)),
                node_port: Some(RawInt::Int(-1)),
                ..RawServicePort::default()
            })])
        );
    }

    #[test]
    fn any_number_reaches_stage_two_as_written() {
        let port = |text: &str| {
            let (doc, errors) =
                parse_document(&format!("services:\n  - ports: [{{port: {text}}}]\n"));
            assert!(errors.is_empty(), "{text}: {errors:?}");
            doc.services[0]
                .as_ref()
                .and_then(|s| s.ports.clone())
                .expect("ports")[0]
                .clone()
                .and_then(|p| p.port)
                .expect("port")
        };
        assert_eq!(port("1e30"), RawInt::Huge("1e30".into()));
        assert_eq!(port("-1e30"), RawInt::Huge("-1e30".into()));
        assert_eq!(port("1.0e20"), RawInt::Huge("1e20".into()));
        assert_eq!(
            port("18446744073709551615"),
            RawInt::Huge("18446744073709551615".into())
        );
        assert_eq!(port("8e3"), RawInt::Int(8000));
        assert_eq!(port("1.5"), RawInt::Fraction("1.5".into()));
        assert_eq!(port(".nan"), RawInt::Fraction("NaN".into()));
        // Beyond 64 bits the YAML reader itself gives up on the document.
        let (_, errors) = parse_document("services:\n  - ports: [{port: 99999999999999999999}]\n");
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["services[0].ports[0].port: 99999999999999999999 is far outside the range of any setting (line 2, column 20)"]
        );
        let (_, errors) = parse_document("services:\n  - ports: [{port: '80'}]\n");
        assert_eq!(
            errors[0].message,
            r#"invalid type: string "80", expected a whole number"#
        );
    }

    #[test]
    fn overlong_texts_and_keys_are_reported_by_their_length() {
        let long = "x".repeat(10 * 1024);
        let (doc, errors) = parse_document(&format!(
            "services:\n  - name: {long}\n    vips: [10.0.0.1, {long}]\n  - ? {long}\n    : 1\n"
        ));
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let what = "of 10240 characters is too long: no text in this file may be longer than 1024 characters";
        assert_eq!(
            shown,
            [
                format!("services[0].name: a text {what}"),
                format!("services[0].vips[1]: a text {what}"),
                format!("services[1]: a key {what}"),
            ]
        );
        assert_eq!(
            doc.overlong,
            ["services[0].name", "services[0].vips[1]", "services[1]"]
        );
        assert!(
            doc.services[1].is_some(),
            "the entry stays, without the key"
        );
        assert!(
            parse_document(&format!("services: [{{name: {}}}]\n", "x".repeat(1024)))
                .1
                .is_empty()
        );
    }

    #[test]
    fn durations_and_proxy_protocol_accept_their_alternative_forms() {
        let (doc, errors) = parse_document(
            "settings:\n  health:\n    interval: 3\n    timeout: 500ms\nservices:\n  - proxyProtocol: false\n  - proxyProtocol: off\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let health = doc.settings.and_then(|s| s.health).expect("health");
        assert_eq!(health.interval, Some(RawDuration::Seconds(3)));
        assert_eq!(health.timeout, Some(RawDuration::Text("500ms".into())));
        let pp: Vec<_> = doc
            .services
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.service.proxy_protocol.clone()))
            .collect();
        assert_eq!(
            pp,
            [
                Some(RawNameOrBool::Bool(false)),
                Some(RawNameOrBool::Name("off".into()))
            ]
        );
        let (_, errors) = parse_document("settings:\n  proxy:\n    idleTimeout: 1.5\n");
        assert_eq!(paths(&errors), ["settings.proxy.idleTimeout"]);
    }

    #[test]
    fn merge_keys_are_applied() {
        let yaml = "
services:
  - &web
    name: web
    vips: [10.0.0.1]
  - <<: *web
    name: web2
";
        let (doc, errors) = parse_document(yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let second = doc.services[1].as_ref().expect("second");
        assert_eq!(second.service.name.as_deref(), Some("web2"));
        assert_eq!(second.service.vips, Some(vec!["10.0.0.1".to_string()]));
    }

    #[test]
    fn whole_file_deserializes_into_raw_edge_config() {
        let raw: RawEdgeConfig =
            serde_yaml_ng::from_str("services:\n  - name: web\n    ports:\n      - port: 80\n")
                .expect("valid");
        let doc = RawDocument::from(raw);
        let entry = doc.services[0].as_ref().expect("service");
        assert_eq!(entry.service.ports, None);
        assert_eq!(entry.ports.as_ref().map(Vec::len), Some(1));
    }
}
