//! The lab's Kubernetes objects, from [`crate::topology`]: what a kubelet,
//! `kubectl apply` and the EndpointSlice controller would have put in the
//! API server. Pure.

use serde_json::{json, Value};

use crate::topology::{
    NodeSpec, PodSpec, Policy, ServiceSpec, KUBE_NAMESPACE, LB_CLASS, POD_PORT, SERVICE_PORT,
};

/// Where Nodes are created.
pub const NODES_PATH: &str = "/api/v1/nodes";

/// Where Services are created.
pub fn services_path() -> String {
    format!("/api/v1/namespaces/{KUBE_NAMESPACE}/services")
}

/// Where EndpointSlices are created.
pub fn slices_path() -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{KUBE_NAMESPACE}/endpointslices")
}

/// A Node as its kubelet registers it (status included: a Node's status
/// is kept on create), with its pod CIDR.
pub fn node(node: &NodeSpec) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr()]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip().to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// A LoadBalancer Service of the edge's class, labelled for the node agent.
pub fn service(svc: &ServiceSpec) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(v) = svc.proxy_protocol {
        annotations.insert("portico.io/proxy-protocol".into(), json!(v));
    }
    let mut spec = json!({
        "type": "LoadBalancer",
        "loadBalancerClass": LB_CLASS,
        "selector": {"app": svc.name},
        "clusterIP": svc.cluster_ip.to_string(),
        "clusterIPs": [svc.cluster_ip.to_string()],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "externalTrafficPolicy": match svc.policy {
            Policy::Cluster => "Cluster",
            Policy::Local => "Local",
        },
        "internalTrafficPolicy": "Cluster",
        "sessionAffinity": "None",
        "ports": [{
            "name": "http",
            "protocol": "TCP",
            "port": SERVICE_PORT,
            "targetPort": "http",
            "nodePort": svc.node_port,
        }],
    });
    if let Some(port) = svc.health_check_node_port {
        spec["healthCheckNodePort"] = json!(port);
    }
    if !svc.source_ranges.is_empty() {
        spec["loadBalancerSourceRanges"] = json!(svc.source_ranges);
    }
    if let Some(timeout) = svc.client_ip_affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": KUBE_NAMESPACE,
            "labels": {"service.kubernetes.io/service-proxy-name": "portico"},
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// The Service's EndpointSlice: its pods, ready, on their nodes.
pub fn slice(svc: &ServiceSpec, pods: &[PodSpec]) -> Value {
    let endpoints: Vec<Value> = svc
        .pods
        .iter()
        .filter_map(|name| pods.iter().find(|p| p.name == *name))
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", p.node),
                "targetRef": {"kind": "Pod", "namespace": KUBE_NAMESPACE, "name": p.name},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-lab", svc.name),
            "namespace": KUBE_NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": "portico-lab",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT}],
        "endpoints": endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{pods, services};

    #[test]
    fn objects_carry_what_both_binaries_select_on() {
        let all = services();
        let local = all.iter().find(|s| s.name == "local").unwrap();
        let obj = service(local);
        assert_eq!(obj["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(obj["spec"]["healthCheckNodePort"], 32081);
        assert_eq!(obj["spec"]["loadBalancerClass"], LB_CLASS);
        assert_eq!(
            obj["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"],
            "portico"
        );
        let s = slice(local, &pods());
        let nodes: Vec<&str> = s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["nodeName"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, ["node-1", "node-2"]);
        let sticky = service(all.iter().find(|s| s.name == "sticky").unwrap());
        assert_eq!(sticky["spec"]["sessionAffinity"], "ClientIP");
        let restricted = service(all.iter().find(|s| s.name == "restricted").unwrap());
        assert_eq!(
            restricted["spec"]["loadBalancerSourceRanges"],
            json!(["198.51.100.0/28"])
        );
    }
}
