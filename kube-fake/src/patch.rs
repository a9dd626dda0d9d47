//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch (treated
//! as a merge patch, so lists are replaced whole rather than merged by key),
//! JSON patch (RFC 6902) and server-side apply (a merge of the applied
//! fields; YAML or JSON body).

use serde_json::Value;

use crate::status::ApiError;

/// The patch flavours the real server accepts, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (applied as a merge patch).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// Picks the flavour from a `Content-Type` value (parameters ignored).
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let media = ct.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            _ => Err(ApiError::UnsupportedMediaType),
        }
    }
}

/// Parses a patch body for `kind` (YAML accepted for apply, which covers JSON).
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Apply => serde_yaml_ng::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}"))),
        _ => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}"))),
    }
}

/// Applies a parsed patch to `target`, returning the patched document.
pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match kind {
        PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "patch body must be a JSON object".into(),
                ));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &ops).map_err(|e| match e.kind {
                json_patch::PatchErrorKind::TestFailed => ApiError::Unprocessable(format!(
                    "the server rejected our request due to an error in our request: {e}"
                )),
                _ => ApiError::BadRequest(format!(
                    "the server rejected our request due to an error in our request: {e}"
                )),
            })?;
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain"),
            Err(ApiError::UnsupportedMediaType)
        );
    }

    #[test]
    fn merge_patch_rfc7386() {
        let target = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "keep": true});
        let patch = json!({"a": {"b": null, "d": 3}, "l": [3]});
        assert_eq!(
            apply(PatchKind::Merge, &target, &patch).unwrap(),
            json!({"a": {"c": 2, "d": 3}, "l": [3], "keep": true})
        );
        // Strategic merge is a merge patch here: lists are replaced.
        assert_eq!(
            apply(PatchKind::Strategic, &target, &patch).unwrap()["l"],
            json!([3])
        );
    }

    #[test]
    fn json_patch_rfc6902() {
        let target = json!({"spec": {"ports": [{"port": 80}]}, "x": 1});
        let ops = json!([
            {"op": "test", "path": "/x", "value": 1},
            {"op": "add", "path": "/spec/ports/-", "value": {"port": 443}},
            {"op": "replace", "path": "/spec/ports/0/port", "value": 8080},
            {"op": "remove", "path": "/x"}
        ]);
        assert_eq!(
            apply(PatchKind::Json, &target, &ops).unwrap(),
            json!({"spec": {"ports": [{"port": 8080}, {"port": 443}]}})
        );
        let failing = json!([{"op": "test", "path": "/x", "value": 2}]);
        assert_eq!(
            apply(PatchKind::Json, &target, &failing)
                .unwrap_err()
                .code(),
            422
        );
        let bad = json!([{"op": "remove", "path": "/nope"}]);
        assert_eq!(
            apply(PatchKind::Json, &target, &bad).unwrap_err().code(),
            400
        );
    }

    #[test]
    fn apply_body_is_yaml_or_json() {
        let yaml = b"apiVersion: v1\nkind: Service\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 1.2.3.4\n";
        let parsed = parse_body(PatchKind::Apply, yaml).unwrap();
        assert_eq!(
            parsed["status"]["loadBalancer"]["ingress"][0]["ip"],
            "1.2.3.4"
        );
        let json_body = br#"{"status":{"x":1}}"#;
        assert_eq!(
            parse_body(PatchKind::Apply, json_body).unwrap()["status"]["x"],
            1
        );
        assert!(parse_body(PatchKind::Merge, b"not json").is_err());
    }
}
