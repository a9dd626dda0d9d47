//! What the scale run asks of the cluster, all pure: the Services (each
//! with its VIP requested by annotation and three nodePorts), the Nodes, and
//! which nodePort each change moves where.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};

use super::{Addrs, KUBE_NS, NODES, NODE_PORT_BASE, POOL, PORTS, PORT_NAMES};

/// Service `i`'s VIP (`i` < [`MAX_SERVICES`](super::MAX_SERVICES)) in the
/// family of `addrs`.
pub fn vip(addrs: Addrs, i: usize) -> IpAddr {
    addrs.of(Ipv4Addr::from(u32::from(POOL.0) + i as u32))
}

/// Service `i`'s initial nodePorts.
pub fn node_ports(i: usize) -> [u16; 3] {
    let base = NODE_PORT_BASE as usize + 3 * i;
    [base as u16, (base + 1) as u16, (base + 2) as u16]
}

/// The nodePort change `k` moves to: above every initial one.
pub fn changed_node_port(services: usize, k: usize) -> u16 {
    (NODE_PORT_BASE as usize + 3 * services + k) as u16
}

/// Which Service and which of its ports change `k` of `repeats` touches:
/// spread over the Services, cycling through the ports.
pub fn change_target(services: usize, repeats: usize, k: usize) -> (usize, usize) {
    (
        (k * services) / repeats.max(1) % services.max(1),
        k % PORTS.len(),
    )
}

/// Service `i`'s name.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// Service `i` as `kubectl apply` would create it: type LoadBalancer of the
/// edge's class, Cluster policy, three TCP ports with the given nodePorts,
/// its VIP requested by annotation, single-stack in the family of `addrs`.
pub fn service_object(addrs: Addrs, i: usize, node_ports: [u16; 3]) -> Value {
    let name = service_name(i);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": KUBE_NS,
            "annotations": {"portico.io/load-balancer-ips": vip(addrs, i).to_string()},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "portico.io/edge",
            "selector": {"app": name},
            "externalTrafficPolicy": "Cluster",
            "ipFamilyPolicy": "SingleStack",
            "ipFamilies": [addrs.family().to_string()],
            "ports": ports_json(node_ports),
        },
    })
}

/// The `spec.ports` list with the given nodePorts.
pub fn ports_json(node_ports: [u16; 3]) -> Value {
    Value::Array(
        (0..PORTS.len())
            .map(|p| {
                json!({
                    "name": PORT_NAMES[p],
                    "protocol": "TCP",
                    "port": PORTS[p],
                    "targetPort": 8080,
                    "nodePort": node_ports[p],
                })
            })
            .collect(),
    )
}

/// Node `k` (0-based) as its kubelet registers it, with its address in the
/// family of `addrs`.
pub fn node_object(addrs: Addrs, k: usize) -> Value {
    let name = format!("node-{}", k + 1);
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": addrs.of(NODES[k]).to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::{IpFamily, MAX_SERVICES, NODE_PORT_RANGE};
    use super::*;

    const V4: Addrs = Addrs(IpFamily::V4);
    const V6: Addrs = Addrs(IpFamily::V6);

    #[test]
    fn vips_and_node_ports_are_distinct_and_in_range() {
        assert_eq!(vip(V4, 0), Ipv4Addr::new(10, 95, 0, 1));
        assert_eq!(vip(V4, 255), Ipv4Addr::new(10, 95, 1, 0));
        assert_eq!(vip(V4, MAX_SERVICES - 1), Ipv4Addr::new(10, 95, 3, 254));
        assert_eq!(vip(V6, 255).to_string(), "fd00:95::1:0");
        assert_eq!(vip(V6, MAX_SERVICES - 1).to_string(), "fd00:95::3:254");
        let v6: std::collections::BTreeSet<IpAddr> =
            (0..MAX_SERVICES).map(|i| vip(V6, i)).collect();
        assert_eq!(v6.len(), MAX_SERVICES);
        assert_eq!(node_ports(0), [20000, 20001, 20002]);
        assert_eq!(node_ports(999), [22997, 22998, 22999]);
        assert_eq!(changed_node_port(1000, 0), 23000);
        assert_eq!(changed_node_port(1000, 19), 23019);
        assert!(changed_node_port(MAX_SERVICES, 100) <= NODE_PORT_RANGE.1);
        let targets: std::collections::BTreeSet<(usize, usize)> =
            (0..20).map(|k| change_target(1000, 20, k)).collect();
        assert_eq!(targets.len(), 20);
        assert_eq!(change_target(1000, 20, 1), (50, 1));
        assert_eq!(change_target(20, 3, 2), (13, 2));
    }

    #[test]
    fn the_service_object_asks_for_its_vip_and_ports() {
        let s = service_object(V4, 7, node_ports(7));
        assert_eq!(s["metadata"]["name"], "svc-0007");
        assert_eq!(
            s["metadata"]["annotations"]["portico.io/load-balancer-ips"],
            "10.95.0.8"
        );
        assert_eq!(s["spec"]["type"], "LoadBalancer");
        assert_eq!(s["spec"]["loadBalancerClass"], "portico.io/edge");
        let ports = s["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 3);
        assert_eq!(ports[1]["port"], 443);
        assert_eq!(ports[1]["nodePort"], 20022);
        assert_eq!(ports[2]["name"], "alt");
        assert_eq!(s["spec"]["ipFamilies"][0], "IPv4");
        let n = node_object(V4, 1);
        assert_eq!(n["status"]["addresses"][0]["address"], "10.94.0.12");
        let s = service_object(V6, 7, node_ports(7));
        assert_eq!(
            s["metadata"]["annotations"]["portico.io/load-balancer-ips"],
            "fd00:95::8"
        );
        assert_eq!(s["spec"]["ipFamilies"][0], "IPv6");
        let n = node_object(V6, 1);
        assert_eq!(n["status"]["addresses"][0]["address"], "fd00:94::12");
    }
}
