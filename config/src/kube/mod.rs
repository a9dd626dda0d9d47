//! Kubernetes objects in, the shared model out: the one reading of `v1`
//! Service, `discovery.k8s.io/v1` EndpointSlice and `v1` Node that the edge
//! (cluster watch and hook API), the node agent (watch and manifests) and
//! the test API server all use, so no two parts of Portico can read one
//! object differently.
//!
//! Pure: `k8s-openapi` types in, [`crate::cluster`] and [`crate::model`]
//! types out; no client, no IO. Every Kubernetes name Portico reads (labels,
//! taints, the legacy annotation, the weight header) is defined once, in
//! [`crate::names`]. The edge's own annotations (`portico.io/...`) are read by the
//! edge, where they mean something.
//!
//! Each field has one rule, the API server's:
//! - A value the API server would refuse (an unknown protocol, type,
//!   traffic policy or IP family, a port outside 1-65535, an affinity
//!   timeout outside 1-86400, a ClusterIP that is not an address) refuses
//!   the whole object with a [`FieldProblem`]: such an object cannot exist
//!   in a real cluster, so it can only come from a manifest or a hook call,
//!   whose caller is told. Every other object is unaffected.
//! - Defaults are the server's: namespace `default`, type ClusterIP,
//!   protocol TCP, traffic policies Cluster, affinity timeout 10800 s,
//!   `targetPort` = `port`, NodePort 0 = none.
//! - Values the server accepts are read as it reads them: source ranges
//!   through [`parse_cidr`] (blanks, leading zeros, host bits, duplicates);
//!   one that still does not parse closes the load-balancer addresses
//!   ([`crate::SourceRanges::Invalid`]) and is reported, without costing
//!   the object.
//! - One bad item of a list the server does not validate (a Node address,
//!   an endpoint address) costs that item, reported, not the object.

pub mod cidr;
pub mod endpoint_slice;

pub mod node;
pub mod service;

#[cfg(any(test, feature = "testing"))]
pub mod cases;

pub use crate::quote::quoted;
pub use cidr::{is_valid_cidr, parse_cidr, parse_ip_sloppy, source_ranges};
pub use endpoint_slice::read_endpoint_slice;
pub use node::read_node;
pub use service::read_service;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::ServiceKey;
use crate::names;

/// A problem with one field of one object: either the reason the object
/// was refused (the `Err` of a reader) or something a reader worked around
/// and reports ([`Read::problems`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct FieldProblem {
    /// `Service ns/name`, `EndpointSlice ns/name` or `Node name`.
    pub object: String,
    /// The field's path, e.g. `spec.ports[1].nodePort`.
    pub field: String,
    /// What is wrong (and, for a reported problem, what was done instead).
    pub message: String,
}

/// An object read into the model, with what was worked around on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// The model value.
    pub value: T,
    /// Problems each already acted on (an item skipped, a Service closed).
    pub problems: Vec<FieldProblem>,
}

/// Names one object and builds its problems.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    name: String,
}

impl Object {
    pub(crate) fn new(name: String) -> Object {
        Object { name }
    }

    /// A problem with `field` of this object.
    pub(crate) fn problem(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> FieldProblem {
        FieldProblem {
            object: self.name.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A required field that is absent or empty.
    pub(crate) fn missing(&self, field: impl Into<String>) -> FieldProblem {
        self.problem(field, "required")
    }

    /// A value outside what the field allows.
    pub(crate) fn invalid(
        &self,
        field: impl Into<String>,
        value: &str,
        expected: &str,
    ) -> FieldProblem {
        self.problem(field, format!("{} is not {expected}", quoted(value)))
    }

    /// A required port (1-65535; 0 is what an absent one decodes to).
    pub(crate) fn port(
        &self,
        value: i32,
        field: impl FnOnce() -> String,
    ) -> Result<u16, FieldProblem> {
        match u16::try_from(value) {
            Ok(0) => Err(self.missing(field())),
            Ok(port) => Ok(port),
            Err(_) => Err(self.problem(field(), format!("{value} is outside 1-65535"))),
        }
    }

    /// An optional port: absent or 0 is `None`.
    pub(crate) fn optional_port(
        &self,
        value: Option<i32>,
        field: impl FnOnce() -> String,
    ) -> Result<Option<u16>, FieldProblem> {
        match value {
            None | Some(0) => Ok(None),
            Some(v) => self.port(v, field).map(Some),
        }
    }

    /// An IP address as the API server accepts it and kube-proxy reads it
    /// (`ParseIPSloppy`: IPv4 octets may carry leading zeros, read as
    /// decimal); an IPv4-mapped IPv6 address is the IPv4 address, as Go
    /// treats it.
    pub(crate) fn ip(
        &self,
        value: &str,
        field: impl FnOnce() -> String,
    ) -> Result<std::net::IpAddr, FieldProblem> {
        parse_ip_sloppy(value)
            .map(|ip| ip.to_canonical())
            .ok_or_else(|| {
                self.problem(
                    field(),
                    format!("{} is not a valid IP address", quoted(value)),
                )
            })
    }
}

/// The key of a namespaced object: a missing or empty namespace is
/// [`crate::names::DEFAULT_NAMESPACE`] (what `kubectl apply` and the API server
/// use). `None` without a name.
pub fn namespaced_key(meta: &ObjectMeta) -> Option<ServiceKey> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(names::DEFAULT_NAMESPACE);
    Some(ServiceKey::new(namespace, name))
}

/// The key of a namespaced object of `kind` and its problem builder, or the
/// problem naming it as unnamed.
pub(crate) fn require_key(
    kind: &str,
    meta: &ObjectMeta,
    name_rule: NameRule,
) -> Result<(ServiceKey, Object), FieldProblem> {
    let Some(key) = namespaced_key(meta) else {
        return Err(Object::new(format!("{kind} (unnamed)")).missing("metadata.name"));
    };
    let unnamed = || Object::new(format!("{kind} (invalid name)"));
    if let Err(why) = NameRule::Label.check(&key.namespace) {
        return Err(unnamed().problem(
            "metadata.namespace",
            format!("{} {why}", quoted(&key.namespace)),
        ));
    }
    if let Err(why) = name_rule.check(&key.name) {
        return Err(unnamed().problem("metadata.name", format!("{} {why}", quoted(&key.name))));
    }
    let object = Object::new(format!("{kind} {key}"));
    check_annotations(&object, meta)?;
    Ok((key, object))
}

/// The API server's total size of an object's annotations (keys and values).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Refuses annotations over [`MAX_ANNOTATIONS_BYTES`] in all, as the API
/// server does.
fn check_annotations(object: &Object, meta: &ObjectMeta) -> Result<(), FieldProblem> {
    let total: usize = meta
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(object.problem(
            "metadata.annotations",
            format!("{total} bytes in all, over the API server's limit of {MAX_ANNOTATIONS_BYTES}"),
        ));
    }
    Ok(())
}

/// What an object's name must be, as the API server validates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// An RFC 1123 label: at most 63 of `a-z`, `0-9` and `-`, starting and
    /// ending alphanumeric (namespaces).
    Label,
    /// An RFC 1035 label: an RFC 1123 label starting with a letter
    /// (Services).
    Rfc1035Label,
    /// An RFC 1123 subdomain: at most 253 characters, labels joined by `.`
    /// (EndpointSlices, Nodes).
    Subdomain,
}

impl NameRule {
    /// `Ok`, or why `name` is not one.
    pub fn check(self, name: &str) -> Result<(), &'static str> {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        match self {
            NameRule::Label if label(name) => Ok(()),
            NameRule::Label => Err("is not a DNS label (at most 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"),
            NameRule::Rfc1035Label
                if label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()) =>
            {
                Ok(())
            }
            NameRule::Rfc1035Label => Err("is not a DNS-1035 label (at most 63 of a-z, 0-9 and '-', starting with a letter and ending with a letter or digit)"),
            NameRule::Subdomain if name.len() <= 253 && name.split('.').all(label) => Ok(()),
            NameRule::Subdomain => Err("is not a DNS subdomain (at most 253 characters: DNS labels joined by '.')"),
        }
    }
}

#[cfg(test)]
mod tests;
