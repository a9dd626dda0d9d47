//! API errors and the `Status` bodies the real server sends for them.
//!
//! Shapes and messages follow the recorded exchanges in
//! `tests/fixtures/` (05 NotFound, 12/16 Invalid, 13 Conflict, 14 Unauthorized,
//! 07 Expired).

use serde_json::{json, Map, Value};

use crate::resource::ResourceDef;
use crate::validate::FieldError;

/// An error the fake API server answers with a `Status` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 404: the named object does not exist.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// Qualified resource, e.g. `services` or `endpointslices.discovery.k8s.io`.
        resource: String,
        /// API group (empty for core), reported in `details.group`.
        group: String,
        /// Plural, reported in `details.kind`.
        plural: String,
        /// Object name.
        name: String,
    },
    /// 404: the path names no resource this server knows.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// 409: create of an existing name.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// Qualified resource.
        resource: String,
        /// API group (empty for core).
        group: String,
        /// Plural.
        plural: String,
        /// Object name.
        name: String,
    },
    /// 409: write with a stale `metadata.resourceVersion`.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        /// Qualified resource.
        resource: String,
        /// API group (empty for core).
        group: String,
        /// Plural.
        plural: String,
        /// Object name.
        name: String,
    },
    /// 409: a server-side apply without `force` would change fields another manager owns.
    #[error("{}", apply_conflict_message(.conflicts))]
    ApplyConflict {
        /// Qualified resource.
        resource: String,
        /// API group (empty for core).
        group: String,
        /// Plural.
        plural: String,
        /// Object name.
        name: String,
        /// `(conflict with "manager" [using apiVersion], .field.path)` pairs.
        conflicts: Vec<(String, String)>,
    },
    /// 403: a create in a namespace that is being deleted (the real
    /// server's NamespaceLifecycle admission).
    #[error("{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated", qualified(.plural, .group))]
    NamespaceTerminating {
        /// API group (empty for core).
        group: String,
        /// Plural.
        plural: String,
        /// Object name.
        name: String,
        /// The namespace being deleted.
        namespace: String,
    },
    /// 422: validation failed.
    #[error("{} \"{name}\" is invalid: {}", qualified_kind(.kind, .group), invalid_summary(.causes))]
    Invalid {
        /// Kind, e.g. `Service` (the real server reports the kind here, not the plural).
        kind: String,
        /// API group (empty for core).
        group: String,
        /// Object name.
        name: String,
        /// One entry per invalid field.
        causes: Vec<FieldError>,
    },
    /// 422 without field details (e.g. a failed JSON patch `test` operation).
    #[error("{0}")]
    Unprocessable(String),
    /// 400: malformed request (bad selector, body, continue token, missing fieldManager).
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    /// 405: a verb the resource does not support at this path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 410: a continue token or list resourceVersion older than the compaction horizon.
    #[error("{0}")]
    Expired(String),
    /// 415: a PATCH content type the server does not know.
    #[error("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")]
    UnsupportedMediaType,
}

fn apply_conflict_message(conflicts: &[(String, String)]) -> String {
    if let [(who, field)] = conflicts {
        return format!("Apply failed with 1 conflict: {who}: {field}");
    }
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(who, field)| format!("{who}: {field}"))
        .collect();
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// `plural.group` (`plural` alone for the core group), as the real
/// server names a resource in messages.
fn qualified(plural: &str, group: &str) -> String {
    qualified_kind(plural, group)
}

/// `Kind.group`, as Go's `GroupKind.String()` prints it (`Kind` alone for
/// the core group).
fn qualified_kind(kind: &str, group: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

fn invalid_summary(causes: &[FieldError]) -> String {
    let each: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if each.len() == 1 {
        each[0].clone()
    } else {
        format!("[{}]", each.join(", "))
    }
}

impl ApiError {
    /// 404 for `name` of `res`.
    pub fn not_found(res: &ResourceDef, name: &str) -> Self {
        ApiError::NotFound {
            resource: res.qualified(),
            group: res.group.into(),
            plural: res.plural.into(),
            name: name.into(),
        }
    }

    /// 409 AlreadyExists for `name` of `res`.
    pub fn already_exists(res: &ResourceDef, name: &str) -> Self {
        ApiError::AlreadyExists {
            resource: res.qualified(),
            group: res.group.into(),
            plural: res.plural.into(),
            name: name.into(),
        }
    }

    /// 409 Conflict for `name` of `res`.
    pub fn conflict(res: &ResourceDef, name: &str) -> Self {
        ApiError::Conflict {
            resource: res.qualified(),
            group: res.group.into(),
            plural: res.plural.into(),
            name: name.into(),
        }
    }

    /// 403 for a create of `name` of `res` in `namespace`, which is being
    /// deleted.
    pub fn namespace_terminating(res: &ResourceDef, name: &str, namespace: &str) -> Self {
        ApiError::NamespaceTerminating {
            group: res.group.into(),
            plural: res.plural.into(),
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// 404 for a create in `namespace`, which does not exist.
    pub fn namespace_not_found(namespace: &str) -> Self {
        ApiError::NotFound {
            resource: "namespaces".into(),
            group: String::new(),
            plural: "namespaces".into(),
            name: namespace.into(),
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. } => 409,
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => 422,
            ApiError::NamespaceTerminating { .. } => 403,
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::MethodNotAllowed => 405,
            ApiError::Expired(_) => 410,
            ApiError::UnsupportedMediaType => 415,
        }
    }

    /// `reason` of the Status.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => "Invalid",
            ApiError::NamespaceTerminating { .. } => "Forbidden",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Expired(_) => "Expired",
            ApiError::UnsupportedMediaType => "UnsupportedMediaType",
        }
    }

    /// The full `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = failure(&self.to_string(), self.reason(), self.code());
        let details = match self {
            ApiError::NotFound {
                group,
                plural,
                name,
                ..
            }
            | ApiError::AlreadyExists {
                group,
                plural,
                name,
                ..
            }
            | ApiError::Conflict {
                group,
                plural,
                name,
                ..
            } => Some(details(name, group, plural)),
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                let mut d = details(name, group, kind);
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                d.insert("causes".into(), Value::Array(causes));
                Some(d)
            }
            ApiError::ApplyConflict {
                group,
                plural,
                name,
                conflicts,
                ..
            } => {
                let mut d = details(name, group, plural);
                let causes: Vec<Value> = conflicts
                    .iter()
                    .map(|(who, field)| json!({"reason": "FieldManagerConflict", "message": who, "field": field}))
                    .collect();
                d.insert("causes".into(), Value::Array(causes));
                Some(d)
            }
            ApiError::NamespaceTerminating {
                group,
                plural,
                name,
                namespace,
            } => {
                let mut d = details(name, group, plural);
                d.insert(
                    "causes".into(),
                    json!([{
                        "reason": "NamespaceTerminating",
                        "message": format!("namespace {namespace} is being terminated"),
                        "field": "metadata.namespace",
                    }]),
                );
                Some(d)
            }
            ApiError::NoRoute => Some(Map::new()),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = Value::Object(d);
        }
        status
    }
}

fn details(name: &str, group: &str, kind: &str) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("name".into(), json!(name));
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(kind));
    d
}

/// A bare failure `Status` (no details).
pub fn failure(message: &str, reason: &str, code: u16) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// The `Status` of the watch `ERROR` event for a resourceVersion before the horizon.
pub fn too_old(requested: u64, horizon: u64) -> Value {
    failure(
        &format!("too old resource version: {requested} ({horizon})"),
        "Expired",
        410,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_kind;

    #[test]
    fn not_found_like_fixture_05() {
        let svc = by_kind("v1", "Service").unwrap();
        assert_eq!(
            ApiError::not_found(svc, "nope").to_status(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "services \"nope\" not found", "reason": "NotFound",
                "details": {"name": "nope", "kind": "services"}, "code": 404})
        );
    }

    #[test]
    fn grouped_resources_name_their_group() {
        let es = by_kind("discovery.k8s.io/v1", "EndpointSlice").unwrap();
        let s = ApiError::not_found(es, "x").to_status();
        assert_eq!(
            s["message"],
            "endpointslices.discovery.k8s.io \"x\" not found"
        );
        assert_eq!(s["details"]["group"], "discovery.k8s.io");
        assert_eq!(s["details"]["kind"], "endpointslices");
    }

    #[test]
    fn conflict_like_fixture_13() {
        let svc = by_kind("v1", "Service").unwrap();
        let s = ApiError::conflict(svc, "web").to_status();
        assert_eq!(s["message"], "Operation cannot be fulfilled on services \"web\": the object has been modified; please apply your changes to the latest version and try again");
        assert_eq!(s["code"], 409);
    }

    #[test]
    fn invalid_lists_several_causes() {
        let cause = |f: &str| FieldError {
            reason: "FieldValueInvalid",
            field: f.into(),
            message: "Invalid value: \"x\": bad".into(),
        };
        let one = ApiError::Invalid {
            kind: "Service".into(),
            group: String::new(),
            name: "a".into(),
            causes: vec![cause("spec.a")],
        };
        assert_eq!(
            one.to_string(),
            "Service \"a\" is invalid: spec.a: Invalid value: \"x\": bad"
        );
        let two = ApiError::Invalid {
            kind: "Service".into(),
            group: String::new(),
            name: "a".into(),
            causes: vec![cause("spec.a"), cause("spec.b")],
        };
        assert!(two.to_string().contains(": [spec.a: "));
        assert_eq!(
            two.to_status()["details"]["causes"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn too_old_like_fixture_07() {
        assert_eq!(
            too_old(1, 71),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (71)", "reason": "Expired", "code": 410})
        );
    }
}
