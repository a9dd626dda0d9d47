//! Property tests of this crate's parsers: the config file and the
//! Kubernetes readers, fed hostile input (valid documents with one value
//! replaced by something odd, and arbitrary text). Each must answer without
//! a panic, in bounded time, and every refusal must name where it is and
//! say what is wrong in a bounded message.
//!
//! `cargo test` runs proptest's default of 256 cases per property;
//! `PROPTEST_CASES=20000 cargo test -p portico-config properties` is the
//! longer run.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::hostile::{mutate, value};
use crate::kube::{read_endpoint_slice, read_node, read_service, FieldProblem};
use crate::parse_edge_config;

/// How long one input may take to be read (a debug build, a busy machine).
const TIME_LIMIT: Duration = Duration::from_secs(2);

/// The longest message a config file error may carry (a value of up to
/// 1,024 characters may be quoted in it; a longer one is told by length).
const CONFIG_MESSAGE_LIMIT: usize = 2048;

/// The longest refusal message a reader may give.
const MESSAGE_LIMIT: usize = 1024;

/// A valid config file, as JSON (YAML reads JSON).
fn config_base() -> Value {
    json!({
        "settings": {
            "health": {"interval": "2s", "timeout": "1s", "rise": 2, "fall": 2},
            "proxy": {"connectTimeout": "2s", "connectRetries": 2, "maglevTableSize": 65537,
                      "maxConnections": 1000},
            "addressPools": [{"name": "lab", "addresses": ["203.0.113.0/28", "2001:db8::1-2001:db8::9"]}],
        },
        "nodes": [{"name": "n1", "addresses": ["192.0.2.1"]}, {"name": "n2", "addresses": ["192.0.2.2", "2001:db8:1::2"]}],
        "services": [{
            "namespace": "shop", "name": "web", "vips": ["198.51.100.1"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
                      {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}],
        }],
    })
}

/// A valid LoadBalancer Service.
fn service_base() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web",
                     "annotations": {"service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8"}},
        "spec": {
            "type": "LoadBalancer", "loadBalancerClass": "portico.io/edge",
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "loadBalancerSourceRanges": ["192.0.2.0/24"],
            "externalIPs": ["198.51.100.7"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "Proxy"}]}},
    })
}

/// A valid EndpointSlice.
fn slice_base() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": "web-abc12",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "n1"}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    })
}

/// A valid Node.
fn node_base() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
    })
}

/// Reads `object` as `T` (the JSON decoding may refuse it first, as the
/// API server's would) and through `read`; checks the answer.
fn check_reader<T, R>(object: &Value, read: impl Fn(&T) -> Result<R, FieldProblem>)
where
    T: serde::de::DeserializeOwned,
{
    let Ok(typed) = serde_json::from_value::<T>(object.clone()) else {
        return;
    };
    let started = Instant::now();
    let answer = read(&typed);
    assert!(started.elapsed() < TIME_LIMIT, "{:?}", started.elapsed());
    if let Err(problem) = answer {
        assert!(!problem.field.is_empty(), "{problem:?}");
        assert!(!problem.message.is_empty(), "{problem:?}");
        let text = problem.to_string();
        assert!(
            text.len() <= MESSAGE_LIMIT,
            "{} bytes: {text:.200}",
            text.len()
        );
    }
}

proptest! {
    #[test]
    fn a_config_file_with_one_odd_value_is_read_or_refused_naming_the_path(
        pick in any::<prop::sample::Index>(),
        key in prop::option::of("[a-zA-Z]{1,12}"),
        with in value(),
    ) {
        let doc = mutate(&config_base(), pick, key, with);
        let text = serde_json::to_string_pretty(&doc).expect("JSON");
        let started = Instant::now();
        let answer = parse_edge_config(&text);
        prop_assert!(started.elapsed() < TIME_LIMIT, "{:?}", started.elapsed());
        if let Err(errors) = answer {
            prop_assert!(!errors.errors().is_empty());
            for e in errors.errors() {
                prop_assert!(!e.message.is_empty(), "{e:?}");
                prop_assert!(
                    e.message.len() <= CONFIG_MESSAGE_LIMIT,
                    "{} bytes at {}: {:.300}", e.message.len(), e.path, e.message
                );
            }
        }
    }

    #[test]
    fn any_text_as_a_config_file_is_read_or_refused(text in ".{0,300}") {
        let started = Instant::now();
        if let Err(errors) = parse_edge_config(&text) {
            prop_assert!(!errors.errors().is_empty());
        }
        prop_assert!(started.elapsed() < TIME_LIMIT);
    }

    #[test]
    fn a_service_with_one_odd_value_is_read_or_refused_naming_the_field(
        pick in any::<prop::sample::Index>(),
        key in prop::option::of("[a-zA-Z]{1,12}"),
        with in value(),
    ) {
        check_reader::<core::Service, _>(&mutate(&service_base(), pick, key, with), read_service);
    }

    #[test]
    fn an_endpoint_slice_with_one_odd_value_is_read_or_refused_naming_the_field(
        pick in any::<prop::sample::Index>(),
        key in prop::option::of("[a-zA-Z]{1,12}"),
        with in value(),
    ) {
        check_reader::<discovery::EndpointSlice, _>(
            &mutate(&slice_base(), pick, key, with),
            read_endpoint_slice,
        );
    }

    #[test]
    fn a_node_with_one_odd_value_is_read_or_refused_naming_the_field(
        pick in any::<prop::sample::Index>(),
        key in prop::option::of("[a-zA-Z]{1,12}"),
        with in value(),
    ) {
        check_reader::<core::Node, _>(&mutate(&node_base(), pick, key, with), read_node);
    }
}

#[test]
fn the_bases_are_valid() {
    parse_edge_config(&config_base().to_string()).expect("the config base is valid");
    read_service(&serde_json::from_value(service_base()).unwrap()).expect("the Service base");
    read_endpoint_slice(&serde_json::from_value(slice_base()).unwrap()).expect("the slice base");
    read_node(&serde_json::from_value(node_base()).unwrap()).expect("the Node base");
}

#[test]
fn an_alias_bomb_is_refused_without_expanding_it() {
    let mut lines = vec![r#"a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]"#.to_string()];
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        lines.push(format!("a{i}: &a{i} [{refs}]"));
    }
    lines.push("services: *a9".into());
    let started = Instant::now();
    let errors = parse_edge_config(&lines.join("\n")).unwrap_err();
    assert!(started.elapsed() < TIME_LIMIT);
    assert!(errors.to_string().contains("repetition limit"), "{errors}");
}
