//! Validation hooks: the checks of the real API server that client code meets.
//!
//! Service source ranges are checked (spec field and legacy annotation),
//! EndpointSlice addresses and ports, and `events.k8s.io/v1` Events as
//! strictly as the real server checks them on create, with the real server's field paths and messages; other resources
//! accept anything. A hook returns every problem it finds, each becoming one `cause`
//! of a 422 `Invalid` Status.

use serde_json::Value;

/// The legacy annotation the real server also validates.
pub use portico_config::names::LEGACY_SOURCE_RANGES_ANNOTATION as SOURCE_RANGES_ANNOTATION;

const SOURCE_RANGES_HINT: &str =
    "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ";

/// One invalid field, as in a Status `details.causes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `reason` of the cause, e.g. `FieldValueInvalid`.
    pub reason: &'static str,
    /// Field path as the real server spells it, e.g. `spec.LoadBalancerSourceRanges`.
    pub field: String,
    /// Message without the field, e.g. `Invalid value: "x": must be ...`.
    pub message: String,
}

impl FieldError {
    pub(crate) fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self::invalid_raw(field, &go_quote(value), detail)
    }

    /// `Invalid` with a value already printed as Go prints it (`%#v`).
    pub(crate) fn invalid_raw(field: impl Into<String>, shown: &str, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub(crate) fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_quote(value),
                supported.join(", ")
            ),
        }
    }

    pub(crate) fn duplicate(field: impl Into<String>, value: &str) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", go_quote(value)),
        }
    }

    fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// The longest `note` of an `events.k8s.io/v1` Event, in bytes.
pub const NOTE_LENGTH_LIMIT: usize = 1024;
/// The longest `reason`, `action` and `reportingInstance`, in bytes.
pub const EVENT_FIELD_LENGTH_LIMIT: usize = 128;

impl FieldError {
    pub(crate) fn required(field: impl Into<String>) -> Self {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
}

/// `events.k8s.io/v1` Event checks on create (the real server's
/// `ValidateEventCreate`): `eventTime`, `reportingController`,
/// `reportingInstance`, `action` and `reason` are required, `type` is
/// `Normal` or `Warning`, and lengths are bounded (the note to
/// [`NOTE_LENGTH_LIMIT`] bytes, reported under the internal name
/// `message` as the real server does).
pub fn event(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let text = |field: &str| obj[field].as_str().unwrap_or_default();
    if obj["eventTime"].is_null() {
        errors.push(FieldError::required("eventTime"));
    }
    let kind = text("type");
    if kind != "Normal" && kind != "Warning" {
        errors.push(FieldError::invalid(
            "type",
            "",
            &format!("has invalid value: {kind}"),
        ));
    }
    if text("reportingController").is_empty() {
        errors.push(FieldError::required("reportingController"));
    }
    for field in ["reportingInstance", "action", "reason"] {
        if text(field).is_empty() {
            errors.push(FieldError::required(field));
        }
        if text(field).len() > EVENT_FIELD_LENGTH_LIMIT {
            errors.push(FieldError::invalid(
                field,
                "",
                &format!("can have at most {EVENT_FIELD_LENGTH_LIMIT} characters"),
            ));
        }
    }
    if text("note").len() > NOTE_LENGTH_LIMIT {
        errors.push(FieldError::invalid(
            "message",
            "",
            &format!("can have at most {NOTE_LENGTH_LIMIT} characters"),
        ));
    }
    errors
}

/// EndpointSlice checks (the real server's `ValidateEndpointSlice`, the
/// parts clients meet): each address must be one of the slice's
/// `addressType` (parsed as the server parses them, leading zeros allowed),
/// and a port number, when given, must be 1-65535.
pub fn endpoint_slice(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let want_v4 = match obj["addressType"].as_str() {
        Some("IPv4") => Some(true),
        Some("IPv6") => Some(false),
        _ => None,
    };
    if let Some(v4) = want_v4 {
        for (i, ep) in obj["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, addr) in ep["addresses"].as_array().into_iter().flatten().enumerate() {
                let text = addr.as_str().unwrap_or_default();
                let ok = portico_config::kube::parse_ip_sloppy(text)
                    .is_some_and(|ip| ip.is_ipv4() == v4);
                if !ok {
                    let family = if v4 { "IPv4" } else { "IPv6" };
                    errors.push(FieldError::invalid(
                        format!("endpoints[{i}].addresses[{j}]"),
                        text,
                        &format!("must be a valid {family} address"),
                    ));
                }
            }
        }
    }
    for (i, port) in obj["ports"].as_array().into_iter().flatten().enumerate() {
        if let Some(n) = port.get("port").and_then(Value::as_i64) {
            if !(1..=65535).contains(&n) {
                errors.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: format!("ports[{i}].port"),
                    message: format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                });
            }
        }
    }
    errors
}

/// `coordination.k8s.io/v1` Lease checks (the real server's
/// `ValidateLeaseSpec`): `leaseDurationSeconds` greater than 0 and
/// `leaseTransitions` not negative, when set.
pub fn lease(obj: &Value) -> Vec<FieldError> {
    let spec = &obj["spec"];
    let number = |field: &str, detail: &str, bad: fn(i64) -> bool| {
        let value = spec[field].as_i64()?;
        bad(value).then(|| FieldError {
            reason: "FieldValueInvalid",
            field: format!("spec.{field}"),
            message: format!("Invalid value: {value}: {detail}"),
        })
    };
    [
        number("leaseDurationSeconds", "must be greater than 0", |v| v <= 0),
        number(
            "leaseTransitions",
            "must be greater than or equal to 0",
            |v| v < 0,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Accepts everything.
pub fn nothing(_: &Value) -> Vec<FieldError> {
    Vec::new()
}

/// Service checks: `spec.loadBalancerSourceRanges`, else the legacy
/// annotation, must parse as CIDRs and are only allowed on `type:
/// LoadBalancer`. (The address family fields are checked by
/// [`crate::families::validate`].)
pub fn service(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ranges: Vec<String> = obj["spec"]["loadBalancerSourceRanges"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let annotation = obj["metadata"]["annotations"][SOURCE_RANGES_ANNOTATION]
        .as_str()
        .unwrap_or_default();
    if ranges.is_empty() && annotation.is_empty() {
        return errors;
    }
    if obj["spec"]["type"] != "LoadBalancer" {
        errors.push(FieldError::forbidden(
            "spec.loadBalancerSourceRanges",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    if !ranges.is_empty() {
        if !ranges.iter().all(|r| is_cidr(r)) {
            let shown = format!("[{}]", ranges.join(" "));
            errors.push(FieldError::invalid(
                "spec.LoadBalancerSourceRanges",
                &shown,
                SOURCE_RANGES_HINT,
            ));
        }
    } else if !annotation.trim().is_empty() && !annotation.trim().split(',').all(is_cidr) {
        errors.push(FieldError::invalid(
            format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"),
            annotation,
            SOURCE_RANGES_HINT,
        ));
    }
    errors
}

/// Whether `s` is a CIDR as the API server accepts it (Go's
/// `ParseCIDRSloppy` after trimming blanks: host bits, leading zeros).
pub fn is_cidr(s: &str) -> bool {
    portico_config::kube::is_valid_cidr(s)
}

/// Quotes like Go's `%q` for the plain strings met here.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cidrs() {
        for good in [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
        ] {
            assert!(is_cidr(good), "{good}");
        }
        // What the real server accepts beyond the strict form (KEP-4858's
        // legacy validation): blanks, leading zeros, host bits.
        for good in [" 10.0.0.0/8 ", "010.001.002.003/32", "10.1.2.3/08"] {
            assert!(is_cidr(good), "{good}");
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0",
            "10.0.0/8",
            "2001:db8::/129",
            "x/1",
            "1.2.3.4/-1",
            "",
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn spec_ranges_like_the_real_server() {
        let svc =
            json!({"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/33"]}});
        assert_eq!(
            service(&svc),
            vec![FieldError {
                reason: "FieldValueInvalid",
                field: "spec.LoadBalancerSourceRanges".into(),
                message: "Invalid value: \"[10.0.0.0/33]\": must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ".into(),
            }]
        );
    }

    #[test]
    fn annotation_checked_only_without_spec_ranges() {
        let svc = json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "10.0.0.0/8, 10.0.0.0/33"}},
            "spec": {"type": "LoadBalancer"}});
        let errs = service(&svc);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].field,
            "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"
        );
        let svc = json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "nonsense"}},
            "spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}});
        assert!(service(&svc).is_empty());
    }

    #[test]
    fn events_like_the_real_server() {
        let good = json!({"eventTime": "2026-12-01T10:00:00.000000Z", "type": "Normal",
            "reportingController": "portico-edge", "reportingInstance": "lb-1",
            "action": "EnsureLoadBalancer", "reason": "AddressAssigned", "note": "x"});
        assert!(event(&good).is_empty());
        let mut long = good.clone();
        long["note"] = json!("x".repeat(NOTE_LENGTH_LIMIT + 1));
        assert_eq!(
            event(&long),
            [FieldError {
                reason: "FieldValueInvalid",
                field: "message".into(),
                message: "Invalid value: \"\": can have at most 1024 characters".into(),
            }]
        );
        let fields: Vec<String> = event(&json!({"note": "x"}))
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "eventTime",
                "type",
                "reportingController",
                "reportingInstance",
                "action",
                "reason"
            ]
        );
    }

    #[test]
    fn endpoint_slices_like_the_real_server() {
        let slice = json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["010.0.0.1"]}, {"addresses": ["10.0.0.x"]}, {"addresses": ["fd00::1"]}],
            "ports": [{"port": 80}, {"name": "none"}, {"port": 0}]});
        let errs: Vec<(String, String)> = endpoint_slice(&slice)
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect();
        assert_eq!(
            errs,
            [
                (
                    "endpoints[1].addresses[0]".to_string(),
                    "Invalid value: \"10.0.0.x\": must be a valid IPv4 address".to_string()
                ),
                (
                    "endpoints[2].addresses[0]".to_string(),
                    "Invalid value: \"fd00::1\": must be a valid IPv4 address".to_string()
                ),
                (
                    "ports[2].port".to_string(),
                    "Invalid value: 0: must be between 1 and 65535, inclusive".to_string()
                ),
            ]
        );
        let fqdn = json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}]});
        assert!(endpoint_slice(&fqdn).is_empty());
    }

    #[test]
    fn ranges_need_a_load_balancer() {
        let svc =
            json!({"spec": {"type": "ClusterIP", "loadBalancerSourceRanges": ["10.0.0.0/8"]}});
        assert_eq!(service(&svc)[0].reason, "FieldValueForbidden");
    }
}
