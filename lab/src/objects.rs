//! The lab's Kubernetes objects, from [`crate::topology`]: what a kubelet,
//! `kubectl apply` and the EndpointSlice controller would have put in the
//! API server. Pure.

use serde_json::{json, Value};

use crate::topology::{
    IpFamily, NodeSpec, PodSpec, Policy, ServiceSpec, FAMILIES, KUBE_NAMESPACE, LB_CLASS, POD_PORT,
    SERVICE_PORT,
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

/// A Node as its kubelet registers it on a dual-stack cluster (status
/// included: a Node's status is kept on create): an InternalIP and a pod
/// CIDR of each family, IPv4 first.
pub fn node(node: &NodeSpec) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr(), node.pod_cidr6()]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip_of(IpFamily::V4).to_string()},
                {"type": "InternalIP", "address": node.ip_of(IpFamily::V6).to_string()},
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
    let cluster_ips: Vec<String> = svc.cluster_ips().iter().map(|ip| ip.to_string()).collect();
    let families: Vec<String> = svc.families.iter().map(|f| f.to_string()).collect();
    let mut spec = json!({
        "type": "LoadBalancer",
        "loadBalancerClass": LB_CLASS,
        "selector": {"app": svc.name},
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ipFamilies": families,
        "ipFamilyPolicy": svc.family_policy(),
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

/// The Service's EndpointSlices, one per family it has (as the
/// EndpointSlice controller keeps them): its pods, ready, on their nodes.
pub fn slices(svc: &ServiceSpec, pods: &[PodSpec]) -> Vec<Value> {
    slices_terminating(svc, pods, &[])
}

/// [`slices`], with the pods named in `terminating` as a pod being deleted
/// is listed until it is gone: not ready, still serving, terminating.
pub fn slices_terminating(svc: &ServiceSpec, pods: &[PodSpec], terminating: &[&str]) -> Vec<Value> {
    FAMILIES
        .iter()
        .filter(|f| svc.families.contains(f))
        .map(|f| endpoint_slice(svc, pods, *f, terminating))
        .collect()
}

/// The Service's EndpointSlice of `family`.
pub fn slice(svc: &ServiceSpec, pods: &[PodSpec], family: IpFamily) -> Value {
    endpoint_slice(svc, pods, family, &[])
}

fn endpoint_slice(
    svc: &ServiceSpec,
    pods: &[PodSpec],
    family: IpFamily,
    terminating: &[&str],
) -> Value {
    let endpoints: Vec<Value> = svc
        .pods
        .iter()
        .filter_map(|name| pods.iter().find(|p| p.name == *name))
        .map(|p| {
            let going = terminating.contains(&p.name.as_str());
            json!({
                "addresses": [p.ip_of(family).to_string()],
                "conditions": {"ready": !going, "serving": true, "terminating": going},
                "nodeName": format!("node-{}", p.node),
                "targetRef": {"kind": "Pod", "namespace": KUBE_NAMESPACE, "name": p.name},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(svc, family),
            "namespace": KUBE_NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": "portico-lab",
            },
        },
        "addressType": family.to_string(),
        "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT}],
        "endpoints": endpoints,
    })
}

/// The name of the Service's EndpointSlice of `family`: `<name>-lab` and
/// `<name>-lab-v6`.
pub fn slice_name(svc: &ServiceSpec, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("{}-lab", svc.name),
        IpFamily::V6 => format!("{}-lab-v6", svc.name),
    }
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
        let local_slices = slices(local, &pods());
        let types: Vec<&str> = local_slices
            .iter()
            .map(|s| s["addressType"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["IPv4", "IPv6"]);
        assert_eq!(
            local_slices[1]["endpoints"][0]["addresses"][0],
            "fd00:244:1::11"
        );
        assert_eq!(obj["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        assert_eq!(obj["spec"]["clusterIP"], "fd00:96::11");
        let s = &local_slices[0];
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
            json!(["198.51.100.0/28", "2001:db8:100::/120"])
        );
        let web6 = all.iter().find(|s| s.name == "web6").unwrap();
        let types: Vec<Value> = slices(web6, &pods())
            .iter()
            .map(|s| s["addressType"].clone())
            .collect();
        assert_eq!(types, ["IPv6"]);
        let n = node(&crate::topology::nodes()[0]);
        assert_eq!(
            n["spec"]["podCIDRs"],
            json!(["10.244.1.0/24", "fd00:244:1::/64"])
        );
        assert_eq!(n["status"]["addresses"][1]["address"], "fd00:88::11");
    }
}
