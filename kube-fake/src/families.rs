//! A Service's address families, as a dual-stack API server keeps them:
//! the fake is a cluster with an IPv4 service range ([`V4_RANGE`], the
//! default family) and an IPv6 one ([`V6_RANGE`]).
//!
//! [`default`] is the real registry's `initIPFamilyFields` and ClusterIP
//! allocation: `ipFamilyPolicy` defaults to `SingleStack` on create and to
//! the old policy on update, `clusterIPs` follows `clusterIP`, `ipFamilies`
//! is inferred from the given `clusterIPs`, else the default family, and a
//! `PreferDualStack` or `RequireDualStack` Service gets the other family
//! too; every family without an address gets one from its range.
//! [`validate`] is its validation (`ValidateServiceClusterIPsRelatedFields`
//! and the policy checks), with the real server's field paths and messages.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::validate::FieldError;

/// The IPv4 service range the fake allocates from (`10.96.0.0/16`).
pub const V4_RANGE: &str = "10.96.0.0/16";
/// The IPv6 service range the fake allocates from (`fd00:96::/112`).
pub const V6_RANGE: &str = "fd00:96::/112";

const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];
const POLICIES: [&str; 3] = ["PreferDualStack", "RequireDualStack", "SingleStack"];

/// The family of an address, as `ipFamilies` names it.
fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("IPv4"),
        IpAddr::V6(_) => Some("IPv6"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

fn headless(spec: &Map<String, Value>) -> bool {
    spec.get("clusterIP").and_then(Value::as_str) == Some("None")
}

/// Defaults and allocates a Service's family fields (`spec` of a Service
/// that is not `ExternalName`); `old_spec` is the stored Service's on an
/// update (`{}` on create). `next` hands out the next free address of a
/// family. Leaves what it cannot make sense of for [`validate`].
pub fn default(
    spec: &mut Map<String, Value>,
    old_spec: &Value,
    next: &mut dyn FnMut(&str) -> String,
) {
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        let policy = old_spec
            .get("ipFamilyPolicy")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or(json!("SingleStack"));
        spec.insert("ipFamilyPolicy".into(), policy);
    }
    // clusterIP and clusterIPs[0] are one field: fill the one left out.
    let cluster_ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
        .map(str::to_string);
    let mut ips = strings(spec.get("clusterIPs").unwrap_or(&Value::Null));
    match (&cluster_ip, ips.first()) {
        (Some(ip), None) => ips.push(ip.clone()),
        (None, Some(first)) => {
            spec.insert("clusterIP".into(), json!(first));
        }
        _ => {}
    }
    if !ips.is_empty() {
        spec.insert("clusterIPs".into(), json!(ips));
    }
    if headless(spec) {
        return;
    }
    let mut families = strings(spec.get("ipFamilies").unwrap_or(&Value::Null));
    if !validate(spec).is_empty() {
        return;
    }
    for (i, ip) in ips.iter().enumerate() {
        if i >= families.len() {
            match family_of(ip) {
                Some(f) => families.push(f.to_string()),
                None => return,
            }
        }
    }
    if families.is_empty() {
        families.push(FAMILIES[0].to_string());
    }
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or_default();
    if policy != "SingleStack" && families.len() == 1 {
        let other = if families[0] == "IPv4" {
            "IPv6"
        } else {
            "IPv4"
        };
        families.push(other.to_string());
    }
    for (i, family) in families.iter().enumerate() {
        if ips.get(i).is_none_or(String::is_empty) {
            let ip = next(family);
            match ips.get_mut(i) {
                Some(slot) => *slot = ip,
                None => ips.push(ip),
            }
        }
    }
    spec.insert("clusterIP".into(), json!(ips[0]));
    spec.insert("clusterIPs".into(), json!(ips));
    spec.insert("ipFamilies".into(), json!(families));
}

/// The real server's checks of a Service's family fields.
pub fn validate(spec: &Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let null = Value::Null;
    let cluster_ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ips = strings(spec.get("clusterIPs").unwrap_or(&null));
    let families = strings(spec.get("ipFamilies").unwrap_or(&null));
    if !cluster_ip.is_empty() {
        match ips.first() {
            None => errors.push(FieldError::required("spec.clusterIPs")),
            Some(first) if first != cluster_ip => errors.push(FieldError::invalid_raw(
                "spec.clusterIPs",
                &go_strings(&ips),
                "first value must match `clusterIP`",
            )),
            Some(_) => {}
        }
    } else if !ips.is_empty() {
        errors.push(FieldError::invalid_raw(
            "spec.clusterIPs",
            &go_strings(&ips),
            "must be empty when `clusterIP` is not specified",
        ));
    }
    for (i, family) in families.iter().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        if !FAMILIES.contains(&family.as_str()) {
            errors.push(FieldError::not_supported(path.as_str(), family, &FAMILIES));
        }
        if families[..i].contains(family) {
            errors.push(FieldError::duplicate(path.as_str(), family));
        }
    }
    let policy = spec.get("ipFamilyPolicy").and_then(Value::as_str);
    if let Some(p) = policy.filter(|p| !POLICIES.contains(p)) {
        errors.push(FieldError::not_supported(
            "spec.ipFamilyPolicy",
            p,
            &POLICIES,
        ));
    }
    let mut bad_ip = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if ips.len() > 1 {
                bad_ip = true;
                errors.push(FieldError::invalid_raw(
                    "spec.clusterIPs",
                    &go_strings(&ips),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if family_of(ip).is_none() {
            bad_ip = true;
            errors.push(FieldError::invalid(
                format!("spec.clusterIPs[{i}]"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if ips.len() > 2 {
        errors.push(FieldError::invalid_raw(
            "spec.clusterIPs",
            &go_strings(&ips),
            "may only hold up to 2 values",
        ));
    }
    if bad_ip {
        return errors;
    }
    if ips.len() == 2 && family_of(&ips[0]) == family_of(&ips[1]) {
        errors.push(FieldError::invalid_raw(
            "spec.clusterIPs",
            &go_strings(&ips),
            "may specify no more than one IP for each IP family",
        ));
    }
    if !(ips.len() == 1 && ips[0] == "None") {
        for (i, (ip, family)) in ips.iter().zip(&families).enumerate() {
            let actual = family_of(ip).unwrap_or_default();
            if FAMILIES.contains(&family.as_str()) && actual != family {
                errors.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    &format!("expected an {family} value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
    if policy == Some("SingleStack") && !headless(spec) {
        if ips.len() == 2 {
            errors.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                "SingleStack",
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            errors.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                "SingleStack",
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    errors
}

/// A list of strings as Go's `%#v` prints a `[]string`.
fn go_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults `spec` as a create would, with addresses handed out in
    /// order from each range.
    fn create(spec: Value) -> Value {
        let mut spec = spec.as_object().cloned().unwrap();
        let mut n = 10;
        let mut next = |family: &str| {
            n += 1;
            match family {
                "IPv4" => format!("10.96.0.{n}"),
                _ => format!("fd00:96::{n}"),
            }
        };
        default(&mut spec, &json!({}), &mut next);
        Value::Object(spec)
    }

    fn messages(spec: &Value) -> Vec<String> {
        validate(spec.as_object().unwrap())
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn single_stack_is_the_default_and_ipv4_the_default_family() {
        let s = create(json!({"type": "LoadBalancer"}));
        assert_eq!(s["ipFamilyPolicy"], "SingleStack");
        assert_eq!(s["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["clusterIPs"], json!(["10.96.0.11"]));
        assert_eq!(s["clusterIP"], "10.96.0.11");
    }

    #[test]
    fn a_dual_stack_policy_gets_both_families_in_the_order_asked() {
        let s = create(json!({"ipFamilyPolicy": "PreferDualStack"}));
        assert_eq!(s["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(s["clusterIPs"], json!(["10.96.0.11", "fd00:96::12"]));
        let s = create(json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}));
        assert_eq!(s["ipFamilies"], json!(["IPv6", "IPv4"]));
        assert_eq!(s["clusterIP"], "fd00:96::11");
        // Families follow the addresses given.
        let s = create(json!({"clusterIP": "fd00:96::5"}));
        assert_eq!(s["ipFamilies"], json!(["IPv6"]));
        assert_eq!(s["clusterIPs"], json!(["fd00:96::5"]));
        let s = create(json!({"ipFamilyPolicy": "RequireDualStack",
            "clusterIPs": ["10.96.0.5", "fd00:96::5"]}));
        assert_eq!(s["clusterIP"], "10.96.0.5");
        assert_eq!(s["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert!(messages(&s).is_empty());
    }

    #[test]
    fn an_update_keeps_the_old_policy() {
        let mut spec = json!({"clusterIP": "10.96.0.5"})
            .as_object()
            .cloned()
            .unwrap();
        let old = json!({"ipFamilyPolicy": "PreferDualStack"});
        default(&mut spec, &old, &mut |_| "fd00:96::9".to_string());
        assert_eq!(spec["ipFamilyPolicy"], "PreferDualStack");
        assert_eq!(spec["clusterIPs"], json!(["10.96.0.5", "fd00:96::9"]));
    }

    #[test]
    fn inconsistent_fields_are_refused_as_the_real_server_words_it() {
        let s = create(json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}));
        assert_eq!(
            messages(&s),
            ["spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"]
        );
        let s = create(json!({"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "Sometimes"}));
        assert_eq!(
            messages(&s),
            [
                "spec.ipFamilies[1]: Duplicate value: \"IPv4\"",
                "spec.ipFamilyPolicy: Unsupported value: \"Sometimes\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
            ]
        );
        let s = create(json!({"ipFamilyPolicy": "RequireDualStack",
            "clusterIPs": ["10.96.0.5", "10.96.0.6"]}));
        assert_eq!(
            messages(&s),
            ["spec.clusterIPs: Invalid value: []string{\"10.96.0.5\", \"10.96.0.6\"}: may specify no more than one IP for each IP family"]
        );
        let s = create(json!({"clusterIP": "10.96.0.5", "ipFamilies": ["IPv6"]}));
        assert_eq!(
            messages(&s),
            ["spec.clusterIPs[0]: Invalid value: \"10.96.0.5\": expected an IPv6 value as indicated by `ipFamilies[0]`"]
        );
        let s = create(json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.6"]}));
        assert_eq!(
            messages(&s),
            ["spec.clusterIPs: Invalid value: []string{\"10.96.0.6\"}: first value must match `clusterIP`"]
        );
        let s = create(json!({"clusterIP": "10.96.0.300"}));
        assert_eq!(
            messages(&s),
            ["spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
        );
    }

    #[test]
    fn headless_services_get_no_address() {
        let s = create(json!({"clusterIP": "None"}));
        assert_eq!(s["clusterIPs"], json!(["None"]));
        assert!(messages(&s).is_empty());
    }
}
