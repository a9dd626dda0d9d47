//! The table of resources the fake serves: one [`ResourceDef`] per resource.
//!
//! Adding a resource is one entry in [`RESOURCES`]. Per-resource behaviour
//! (the Go zero-value skeleton the real server always serialises, defaulting,
//! validation, supported field selectors) hangs off the entry as plain data or
//! function pointers, so the HTTP layer and the store stay generic.

use serde_json::{json, Map, Value};

use crate::validate;

/// One servable resource (a group/version/kind and its REST plural).
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version inside the group, e.g. `v1`.
    pub version: &'static str,
    /// `kind` of a single object, e.g. `Service`.
    pub kind: &'static str,
    /// REST plural used in paths, e.g. `services`.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether a `/status` subresource exists (and the main resource ignores `.status`).
    pub has_status: bool,
    /// Whether `metadata.generation` is kept (1 on create, +1 on every non-metadata,
    /// non-status change). Services and Nodes have none in the real server.
    pub generation: bool,
    /// Field selector labels besides `metadata.name` (and `metadata.namespace` for
    /// namespaced resources), with the JSON path (dot separated) they read.
    pub fields: &'static [(&'static str, &'static str)],
    /// The Go zero value of the type as the real server serialises it (fields
    /// without `omitempty`); filled into every stored object and used for bookmarks.
    pub zero: fn() -> Value,
    /// Defaulting applied on create and update (`old` is the stored object on update).
    pub default: fn(&mut Value, Option<&Value>, &mut Allocator),
    /// Validation; an error list becomes a 422 `Invalid` Status.
    pub validate: fn(&Value) -> Vec<validate::FieldError>,
}

impl ResourceDef {
    /// `apiVersion` of single objects, e.g. `v1` or `discovery.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The "qualified resource" used in error messages: `services` or
    /// `endpointslices.discovery.k8s.io`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `kind` of a list, e.g. `ServiceList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The JSON path a field selector label reads, or `None` when the real
    /// server would answer "field label not supported".
    pub fn field_path(&self, label: &str) -> Option<&'static str> {
        match label {
            "metadata.name" => Some("metadata.name"),
            "metadata.namespace" if self.namespaced => Some("metadata.namespace"),
            _ => self
                .fields
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, path)| *path),
        }
    }
}

/// Namespaces that exist in every cluster.
pub const BUILT_IN_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Every resource the fake serves.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        has_status: true,
        generation: false,
        fields: &[("status.phase", "status.phase")],
        zero: || json!({"metadata": {"creationTimestamp": null}, "spec": {}, "status": {}}),
        default: default_namespace,
        validate: validate::nothing,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
        has_status: true,
        generation: false,
        fields: &[
            ("spec.clusterIP", "spec.clusterIP"),
            ("spec.type", "spec.type"),
        ],
        zero: || json!({"metadata": {"creationTimestamp": null}, "spec": {}, "status": {"loadBalancer": {}}}),
        default: default_service,
        validate: validate_service,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        has_status: true,
        generation: false,
        fields: &[("spec.unschedulable", "spec.unschedulable")],
        zero: || {
            json!({
                "metadata": {"creationTimestamp": null},
                "spec": {},
                "status": {
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                    "nodeInfo": {
                        "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                        "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
                        "kubeProxyVersion": "", "operatingSystem": "", "architecture": ""
                    }
                }
            })
        },
        default: no_defaults,
        validate: validate::nothing,
    },
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
        has_status: false,
        generation: true,
        fields: &[("addressType", "addressType")],
        zero: || json!({"metadata": {"creationTimestamp": null}, "addressType": "", "endpoints": null}),
        default: default_endpoint_slice,
        validate: validate::endpoint_slice,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        has_status: false,
        generation: false,
        fields: &[
            ("involvedObject.kind", "involvedObject.kind"),
            ("involvedObject.namespace", "involvedObject.namespace"),
            ("involvedObject.name", "involvedObject.name"),
            ("involvedObject.uid", "involvedObject.uid"),
            ("involvedObject.apiVersion", "involvedObject.apiVersion"),
            (
                "involvedObject.resourceVersion",
                "involvedObject.resourceVersion",
            ),
            ("involvedObject.fieldPath", "involvedObject.fieldPath"),
            ("reason", "reason"),
            ("reportingComponent", "reportingComponent"),
            ("source", "source.component"),
            ("type", "type"),
        ],
        zero: || {
            json!({
                "metadata": {"creationTimestamp": null},
                "involvedObject": {}, "source": {},
                "firstTimestamp": null, "lastTimestamp": null, "eventTime": null,
                "reportingComponent": "", "reportingInstance": ""
            })
        },
        default: no_defaults,
        validate: validate::nothing,
    },
    ResourceDef {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        has_status: false,
        generation: false,
        fields: &[
            ("regarding.kind", "regarding.kind"),
            ("regarding.namespace", "regarding.namespace"),
            ("regarding.name", "regarding.name"),
            ("reason", "reason"),
            ("reportingController", "reportingController"),
            ("type", "type"),
        ],
        zero: || {
            json!({
                "metadata": {"creationTimestamp": null},
                "eventTime": null,
                "deprecatedSource": {}, "deprecatedFirstTimestamp": null, "deprecatedLastTimestamp": null
            })
        },
        default: no_defaults,
        validate: validate::event,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        has_status: false,
        generation: false,
        fields: &[],
        zero: || json!({"metadata": {"creationTimestamp": null}, "spec": {}}),
        default: no_defaults,
        validate: validate::lease,
    },
];

/// Finds a resource by its REST coordinates (group `""` for core).
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Finds the resource of a `k8s-openapi` type, e.g. `of::<Service>()`.
pub fn of<K: k8s_openapi::Resource>() -> Option<&'static ResourceDef> {
    by_kind(K::API_VERSION, K::KIND)
}

/// Hands out cluster IPs and node ports, like the real allocators (never reused).
#[derive(Debug, Clone)]
pub struct Allocator {
    next_ip: u32,
    next_port: u16,
    /// NodePorts other Services hold (set by the store before each
    /// Service write): never handed out.
    pub(crate) taken: std::collections::BTreeSet<u64>,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            next_ip: 10,
            next_port: 30000,
            taken: std::collections::BTreeSet::new(),
        }
    }
}

impl Allocator {
    /// The next ClusterIP of `family` (`IPv4` or `IPv6`), from
    /// [`crate::families::V4_RANGE`] or [`crate::families::V6_RANGE`].
    fn cluster_ip(&mut self, family: &str) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        if family == "IPv6" {
            format!("fd00:96::{n:x}")
        } else {
            format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
        }
    }

    fn node_port(&mut self) -> u16 {
        // The range has 2,768 ports; past that many taken, give up skipping.
        for _ in 0..=2768 {
            let p = self.next_port;
            self.next_port = if p >= 32767 { 30000 } else { p + 1 };
            if !self.taken.contains(&u64::from(p)) {
                self.taken.insert(u64::from(p));
                return p;
            }
        }
        self.next_port
    }
}

/// Fills keys of `zero` that are missing from `obj`, recursing into objects
/// present on both sides (how a Go struct round-trip adds non-`omitempty` fields).
pub fn fill_zero(obj: &mut Value, zero: &Value) {
    if let (Value::Object(o), Value::Object(z)) = (obj, zero) {
        for (k, zv) in z {
            match o.get_mut(k) {
                None => {
                    o.insert(k.clone(), zv.clone());
                }
                Some(ov) => fill_zero(ov, zv),
            }
        }
    }
}

fn no_defaults(_: &mut Value, _: Option<&Value>, _: &mut Allocator) {}

/// A Service's checks: its address family fields (not on `ExternalName`),
/// then the rest.
fn validate_service(obj: &Value) -> Vec<validate::FieldError> {
    let mut errors = Vec::new();
    if let Some(spec) = obj["spec"].as_object() {
        if obj["spec"]["type"] != "ExternalName" {
            errors.extend(crate::families::validate(spec));
        }
    }
    errors.extend(validate::service(obj));
    errors
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Service defaulting and IP/port allocation, as the real registry does it.
/// On update, allocated values the client left out are carried over from `old`.
fn default_namespace(obj: &mut Value, _: Option<&Value>, _: &mut Allocator) {
    if obj["spec"]["finalizers"].is_null() {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
    }
    if obj["status"]["phase"].is_null() {
        obj["status"]["phase"] = json!("Active");
    }
}

fn default_service(obj: &mut Value, old: Option<&Value>, alloc: &mut Allocator) {
    let old_spec = old
        .and_then(|o| o.get("spec"))
        .cloned()
        .unwrap_or(json!({}));
    let Some(spec) = obj
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    set_default(spec, "sessionAffinity", json!("None"));
    if spec["sessionAffinity"] == "ClientIP" {
        set_default(
            spec,
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    if ty == "ExternalName" {
        return;
    }
    for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        if let Some(v) = old_spec.get(key) {
            set_default(spec, key, v.clone());
        }
    }
    // Kept only while the Service still needs one.
    if ty == "LoadBalancer"
        && spec
            .get("externalTrafficPolicy")
            .is_none_or(|p| p == "Local")
    {
        if let Some(v) = old_spec.get("healthCheckNodePort") {
            set_default(spec, "healthCheckNodePort", v.clone());
        }
    }
    crate::families::default(spec, &old_spec, &mut |family| alloc.cluster_ip(family));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    let external = ty == "NodePort" || ty == "LoadBalancer";
    if external {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    let want_node_ports = ty == "NodePort"
        || (ty == "LoadBalancer" && spec["allocateLoadBalancerNodePorts"] != false);
    let old_ports: Vec<Value> = old_spec["ports"].as_array().cloned().unwrap_or_default();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
            let number = port.get("port").cloned().unwrap_or(Value::Null);
            set_default(port, "targetPort", number.clone());
            if want_node_ports {
                let previous = old_ports
                    .iter()
                    .find(|p| p["port"] == number && p["protocol"] == port["protocol"])
                    .and_then(|p| p.get("nodePort"))
                    .cloned();
                match previous {
                    Some(np) => set_default(port, "nodePort", np),
                    None if port.get("nodePort").is_none() => {
                        port.insert("nodePort".into(), json!(alloc.node_port()));
                    }
                    None => {}
                }
            }
        }
    }
    if external && spec["externalTrafficPolicy"] == "Local" {
        if spec.get("healthCheckNodePort").is_none() && ty == "LoadBalancer" {
            spec.insert("healthCheckNodePort".into(), json!(alloc.node_port()));
        }
    } else {
        spec.remove("healthCheckNodePort");
    }
}

/// EndpointSlice defaulting: ports default to TCP.
fn default_endpoint_slice(obj: &mut Value, _: Option<&Value>, _: &mut Allocator) {
    if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree() {
        let svc = by_path("", "v1", "services").unwrap();
        assert_eq!(svc.api_version(), "v1");
        assert_eq!(by_kind("v1", "Service").unwrap().plural, "services");
        let es = by_path("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!(es.qualified(), "endpointslices.discovery.k8s.io");
        assert_eq!(
            of::<k8s_openapi::api::events::v1::Event>().unwrap().group,
            "events.k8s.io"
        );
        assert_eq!(of::<k8s_openapi::api::core::v1::Event>().unwrap().group, "");
        assert!(by_path("", "v1", "pods").is_none());
    }

    #[test]
    fn field_labels_follow_scope() {
        let node = by_kind("v1", "Node").unwrap();
        assert_eq!(node.field_path("metadata.name"), Some("metadata.name"));
        assert_eq!(node.field_path("metadata.namespace"), None);
        let svc = by_kind("v1", "Service").unwrap();
        assert_eq!(
            svc.field_path("metadata.namespace"),
            Some("metadata.namespace")
        );
        assert_eq!(svc.field_path("spec.bogus"), None);
    }

    #[test]
    fn zero_fill_keeps_existing_values() {
        let mut obj = json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        fill_zero(
            &mut obj,
            &json!({"spec": {}, "status": {"loadBalancer": {}}}),
        );
        assert_eq!(
            obj,
            json!({"spec": {}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}})
        );
    }

    #[test]
    fn service_defaults_allocate_and_carry_over() {
        let mut alloc = Allocator::default();
        let mut svc = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}});
        default_service(&mut svc, None, &mut alloc);
        let spec = &svc["spec"];
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][0]["nodePort"], 30000);
        assert_eq!(spec["healthCheckNodePort"], 30001);
        assert_eq!(spec["clusterIPs"][0], spec["clusterIP"]);
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["allocateLoadBalancerNodePorts"], true);

        // A replace that omits allocated values keeps them.
        let old = svc.clone();
        let mut update = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}});
        default_service(&mut update, Some(&old), &mut alloc);
        assert_eq!(update["spec"], old["spec"]);
    }
}
