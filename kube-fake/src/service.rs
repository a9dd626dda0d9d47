//! What the real API server does to a Service beyond defaulting and
//! per-object validation: it clears the fields that belong to a type the
//! Service leaves (`dropTypeDependentFields` in its Service registry), keeps
//! `spec.loadBalancerClass` from changing while the Service stays a
//! LoadBalancer, and refuses a NodePort another Service holds. Client
//! writes only: the control API seeds whatever a test needs.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::validate::FieldError;

fn is_lb(spec: &Value) -> bool {
    spec["type"] == "LoadBalancer"
}

fn needs_node_ports(spec: &Value) -> bool {
    spec["type"] == "NodePort" || is_lb(spec)
}

fn needs_hc_node_port(spec: &Value) -> bool {
    is_lb(spec) && spec["externalTrafficPolicy"] == "Local"
}

fn node_ports(spec: &Value) -> BTreeSet<u64> {
    spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .filter(|p| *p != 0)
        .collect()
}

/// Every NodePort a Service's spec holds, `healthCheckNodePort` included.
pub fn held_node_ports(spec: &Value) -> BTreeSet<u64> {
    let mut ports = node_ports(spec);
    if let Some(p) = spec["healthCheckNodePort"].as_u64().filter(|p| *p != 0) {
        ports.insert(p);
    }
    ports
}

/// The real server's `dropTypeDependentFields`, on an update of the main
/// resource from `old` to `new` (before defaulting): fields of a type the
/// Service leaves are wiped when the user did not also change them, and
/// `status.loadBalancer` is cleared whenever the Service is not (or no
/// longer) a LoadBalancer.
pub fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let old_spec = &old["spec"];
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let new_spec = Value::Object(spec.clone());
    if needs_node_ports(old_spec)
        && !needs_node_ports(&new_spec)
        && node_ports(old_spec).is_superset(&node_ports(&new_spec))
    {
        for port in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            port.remove("nodePort");
        }
    }
    if needs_hc_node_port(old_spec)
        && !needs_hc_node_port(&new_spec)
        && old_spec["healthCheckNodePort"] == new_spec["healthCheckNodePort"]
    {
        spec.remove("healthCheckNodePort");
    }
    if is_lb(old_spec) && !is_lb(&new_spec) {
        if old_spec["allocateLoadBalancerNodePorts"] == new_spec["allocateLoadBalancerNodePorts"] {
            spec.remove("allocateLoadBalancerNodePorts");
        }
        if old_spec["loadBalancerClass"] == new_spec["loadBalancerClass"] {
            spec.remove("loadBalancerClass");
        }
    }
    if !is_lb(&new_spec) {
        new["status"]["loadBalancer"] = json!({});
    }
}

/// `ValidateServiceUpdate`'s class rule: a LoadBalancer's class may not
/// change while it stays a LoadBalancer.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let (new_spec, old_spec) = (&new["spec"], &old["spec"]);
    if is_lb(old_spec)
        && is_lb(new_spec)
        && old_spec["loadBalancerClass"] != new_spec["loadBalancerClass"]
    {
        let shown = match new_spec["loadBalancerClass"].as_str() {
            Some(class) => serde_json::to_string(class).unwrap_or_default(),
            None => "null".to_string(),
        };
        return vec![FieldError {
            reason: "FieldValueInvalid",
            field: "spec.loadBalancerClass".into(),
            message: format!("Invalid value: {shown}: may not change once set"),
        }];
    }
    Vec::new()
}

/// The NodePorts (and `healthCheckNodePort`) of `new` that another Service
/// of `others` holds, each as the real allocator's refusal. Ports `new`
/// held before (`old`) are its own.
pub fn node_port_clashes<'a>(
    new: &Value,
    old: Option<&Value>,
    others: impl Iterator<Item = &'a Value>,
) -> Vec<FieldError> {
    let taken: BTreeSet<u64> = others.flat_map(|o| held_node_ports(&o["spec"])).collect();
    let mine = old.map(|o| node_ports(&o["spec"])).unwrap_or_default();
    let mut errors = Vec::new();
    for (i, port) in new["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(n) = port["nodePort"].as_u64().filter(|n| *n != 0) else {
            continue;
        };
        if taken.contains(&n) && !mine.contains(&n) {
            errors.push(FieldError {
                reason: "FieldValueInvalid",
                field: format!("spec.ports[{i}].nodePort"),
                message: format!("Invalid value: {n}: provided port is already allocated"),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb() -> Value {
        json!({
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/edge",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                "allocateLoadBalancerNodePorts": true,
                "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}},
        })
    }

    #[test]
    fn leaving_load_balancer_wipes_its_fields_and_status() {
        let old = lb();
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        drop_type_dependent_fields(&mut new, &old);
        let spec = &new["spec"];
        for gone in [
            "loadBalancerClass",
            "healthCheckNodePort",
            "allocateLoadBalancerNodePorts",
        ] {
            assert!(spec.get(gone).is_none(), "{gone}: {spec}");
        }
        assert!(spec["ports"][0].get("nodePort").is_none());
        assert_eq!(new["status"]["loadBalancer"], json!({}));
        // To NodePort: the NodePorts stay, the LoadBalancer's fields go.
        let mut new = old.clone();
        new["spec"]["type"] = json!("NodePort");
        drop_type_dependent_fields(&mut new, &old);
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert!(new["spec"].get("loadBalancerClass").is_none());
        // Staying a LoadBalancer keeps everything.
        let mut same = old.clone();
        drop_type_dependent_fields(&mut same, &old);
        assert_eq!(same, old);
    }

    #[test]
    fn the_class_may_not_change_while_a_load_balancer() {
        let old = lb();
        let mut new = old.clone();
        new["spec"]["loadBalancerClass"] = json!("example.com/other");
        let errs = validate_update(&new, &old);
        assert_eq!(errs[0].field, "spec.loadBalancerClass");
        assert_eq!(
            errs[0].message,
            "Invalid value: \"example.com/other\": may not change once set"
        );
        new["spec"]["type"] = json!("ClusterIP");
        assert!(validate_update(&new, &old).is_empty());
    }

    #[test]
    fn a_node_port_is_held_by_one_service() {
        let other = lb();
        let mut new = json!({"spec": {"type": "NodePort", "ports": [
            {"port": 81, "nodePort": 30081}, {"port": 80, "nodePort": 30080}]}});
        let errs = node_port_clashes(&new, None, [&other].into_iter());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.ports[1].nodePort");
        assert_eq!(
            errs[0].message,
            "Invalid value: 30080: provided port is already allocated"
        );
        new["spec"]["ports"][1]["nodePort"] = json!(32000);
        assert_eq!(node_port_clashes(&new, None, [&other].into_iter()).len(), 1);
        new["spec"]["ports"][1]["nodePort"] = json!(30082);
        assert!(node_port_clashes(&new, None, [&other].into_iter()).is_empty());
    }
}
