//! Checks shared by the deploy tests of the edge
//! (`edge/tests/integration/deploy.rs`) and the node agent
//! (`node-agent/tests/integration/deploy.rs`), which include this file with
//! `#[path]`: typed reading that refuses misspelt fields, and the
//! exact grants of a ClusterRole.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `value` as a `T` that serialises back to the same JSON.
pub fn typed<T: DeserializeOwned + Serialize>(value: &serde_yaml_ng::Value, at: &str) -> T {
    let object: T = serde_yaml_ng::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{at}: not a valid {}: {e}", std::any::type_name::<T>()));
    let written = serde_json::to_value(value).expect("YAML as JSON");
    let kept = serde_json::to_value(&object).expect("object as JSON");
    if let Some(difference) = first_difference(&written, &kept, "") {
        panic!("{at}: {difference} (misspelt or misplaced field?)");
    }
    object
}

/// Where `written` and `kept` first differ, as a field path.
pub fn first_difference(
    written: &serde_json::Value,
    kept: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (written, kept) {
        (Value::Object(w), Value::Object(k)) => {
            for (key, value) in w {
                let here = format!("{path}.{key}");
                match k.get(key) {
                    None => return Some(format!("{here} is not a field of the object")),
                    Some(other) => {
                        if let Some(d) = first_difference(value, other, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            k.keys()
                .find(|key| !w.contains_key(*key))
                .map(|key| format!("{path}.{key} appeared"))
        }
        (Value::Array(w), Value::Array(k)) if w.len() == k.len() => w
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (w, k))| first_difference(w, k, &format!("{path}[{i}]"))),
        _ if written == kept => None,
        _ => Some(format!("{path}: {written} was read as {kept}")),
    }
}

/// Every (apiGroup, resource, verb) a ClusterRole grants; panics on rules
/// that reach further than group x resource x verb (names, URLs, aggregation).
pub fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let name = role.metadata.name.as_deref().unwrap_or_default();
    assert!(
        role.aggregation_rule.is_none(),
        "{name}: aggregates other roles"
    );
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
            "{name}: rules are by group, resource and verb only"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

pub fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect()
}
