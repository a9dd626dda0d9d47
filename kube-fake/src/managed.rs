//! A small model of `metadata.managedFields`.
//!
//! Field sets are `FieldsV1` JSON (`{"f:spec": {"f:type": {}}}`) with maps
//! recursed into and lists kept as leaves (the real server treats the lists
//! met here as atomic or keys them; leaves are close enough for clients, which
//! only read the manager names and operations). An update takes ownership of
//! the fields it changed away from other managers; an apply owns exactly the
//! fields it sent. Entries are sorted as the real server sorts them: `Apply`
//! before `Update`, then oldest first, then by manager.

use serde_json::{json, Map, Value};

/// Who wrote, how, and through which subresource.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Field manager name.
    pub manager: &'a str,
    /// `Apply` or `Update`.
    pub operation: &'a str,
    /// `apiVersion` of the object.
    pub api_version: &'a str,
    /// `status` or `None`.
    pub subresource: Option<&'a str>,
    /// RFC 3339 time of the write.
    pub time: &'a str,
}

/// Keys never recorded as owned (identity and server-owned metadata).
const SKIP_TOP: &[&str] = &["apiVersion", "kind"];
const SKIP_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
];

/// The field set of every leaf in `obj`.
pub fn fieldset(obj: &Value) -> Value {
    fieldset_at(obj, 0, false)
}

fn fieldset_at(obj: &Value, depth: usize, in_meta: bool) -> Value {
    let mut set = Map::new();
    if let Value::Object(map) = obj {
        for (k, v) in map {
            if (depth == 0 && SKIP_TOP.contains(&k.as_str()))
                || (in_meta && depth == 1 && SKIP_META.contains(&k.as_str()))
            {
                continue;
            }
            let child = match v {
                Value::Object(_) => fieldset_at(v, depth + 1, depth == 0 && k == "metadata"),
                _ => json!({}),
            };
            if v.is_object() && child.as_object().is_some_and(Map::is_empty) && !map_was_empty(v) {
                continue;
            }
            set.insert(format!("f:{k}"), child);
        }
    }
    Value::Object(set)
}

fn map_was_empty(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty)
}

/// The field set of leaves that differ between `old` and `new`.
pub fn changed(old: &Value, new: &Value) -> Value {
    changed_at(old, new, 0, false)
}

fn changed_at(old: &Value, new: &Value, depth: usize, in_meta: bool) -> Value {
    let mut set = Map::new();
    let empty = Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    for (k, nv) in n {
        if (depth == 0 && SKIP_TOP.contains(&k.as_str()))
            || (in_meta && depth == 1 && SKIP_META.contains(&k.as_str()))
        {
            continue;
        }
        let ov = o.get(k).unwrap_or(&Value::Null);
        if ov == nv {
            continue;
        }
        let child = if nv.is_object() && ov.is_object() {
            changed_at(ov, nv, depth + 1, depth == 0 && k == "metadata")
        } else if nv.is_object() {
            fieldset_at(nv, depth + 1, depth == 0 && k == "metadata")
        } else {
            json!({})
        };
        if nv.is_object() && child.as_object().is_some_and(Map::is_empty) && !map_was_empty(nv) {
            continue;
        }
        set.insert(format!("f:{k}"), child);
    }
    Value::Object(set)
}

/// The field set of leaves of `old` that `new` no longer has: nobody owns
/// a field that is gone (a merge patch's `null`, a PUT without it).
pub fn removed(old: &Value, new: &Value) -> Value {
    removed_at(old, new, 0, false)
}

fn removed_at(old: &Value, new: &Value, depth: usize, in_meta: bool) -> Value {
    let mut set = Map::new();
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return Value::Object(set);
    };
    for (k, ov) in o {
        if (depth == 0 && SKIP_TOP.contains(&k.as_str()))
            || (in_meta && depth == 1 && SKIP_META.contains(&k.as_str()))
        {
            continue;
        }
        let child_meta = depth == 0 && k == "metadata";
        let child = match n.get(k) {
            None | Some(Value::Null) => match ov {
                Value::Object(_) => fieldset_at(ov, depth + 1, child_meta),
                _ => json!({}),
            },
            Some(nv) if ov.is_object() && nv.is_object() => {
                let inner = removed_at(ov, nv, depth + 1, child_meta);
                if inner.as_object().is_some_and(Map::is_empty) {
                    continue;
                }
                inner
            }
            Some(_) => continue,
        };
        set.insert(format!("f:{k}"), child);
    }
    Value::Object(set)
}

/// Every entry of `entries` without the leaves of `gone`; entries left
/// owning nothing are dropped.
pub fn prune(entries: Vec<Value>, gone: &Value) -> Vec<Value> {
    if gone.as_object().is_none_or(Map::is_empty) {
        return entries;
    }
    entries
        .into_iter()
        .filter_map(|mut e| {
            let rest = subtract(&e["fieldsV1"], gone);
            if rest.as_object().is_some_and(Map::is_empty) {
                return None;
            }
            e["fieldsV1"] = rest;
            Some(e)
        })
        .collect()
}

/// `set` without the leaves of `remove`; empty branches are dropped.
pub fn subtract(set: &Value, remove: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(s) = set {
        for (k, v) in s {
            match remove.get(k) {
                None => {
                    out.insert(k.clone(), v.clone());
                }
                Some(r) if r.as_object().is_some_and(Map::is_empty) => {}
                Some(r) => {
                    if v.as_object().is_some_and(Map::is_empty) {
                        // A leaf here is a branch there: the remover owns part of it.
                        out.insert(k.clone(), v.clone());
                        continue;
                    }
                    let rest = subtract(v, r);
                    if rest.as_object().is_some_and(|m| !m.is_empty()) {
                        out.insert(k.clone(), rest);
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// The union of two field sets.
pub fn union(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    if let Value::Object(bm) = b {
        for (k, v) in bm {
            let merged = match out.get(k) {
                Some(existing) => union(existing, v),
                None => v.clone(),
            };
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Records a write of `fields` by `writer` into `entries` (the current
/// `managedFields`), returning the new sorted list.
pub fn record(entries: &[Value], writer: &Writer<'_>, fields: &Value) -> Vec<Value> {
    let same = |e: &Value| {
        e["manager"] == writer.manager
            && e["operation"] == writer.operation
            && e.get("subresource").and_then(Value::as_str) == writer.subresource
    };
    let mut owned = fields.clone();
    let mut out = Vec::new();
    for e in entries {
        if same(e) {
            if writer.operation == "Update" {
                owned = union(&e["fieldsV1"], fields);
            }
            continue;
        }
        let rest = subtract(&e["fieldsV1"], fields);
        if rest.as_object().is_some_and(|m| !m.is_empty()) {
            let mut kept = e.clone();
            kept["fieldsV1"] = rest;
            out.push(kept);
        }
    }
    if owned.as_object().is_some_and(|m| !m.is_empty()) {
        let mut entry = json!({
            "manager": writer.manager,
            "operation": writer.operation,
            "apiVersion": writer.api_version,
            "time": writer.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": owned,
        });
        if let Some(sub) = writer.subresource {
            entry["subresource"] = json!(sub);
        }
        out.push(entry);
    }
    out.sort_by(|a, b| {
        let key = |e: &Value| {
            (
                e["operation"].as_str().unwrap_or_default().to_string(),
                e["time"].as_str().unwrap_or_default().to_string(),
                e["manager"].as_str().unwrap_or_default().to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_field_is_nobodys() {
        let old = json!({"spec": {"holderIdentity": "a", "renewTime": "t", "leaseTransitions": 1}});
        let new = json!({"spec": {"holderIdentity": null, "leaseTransitions": 2}});
        let gone = removed(&old, &new);
        assert_eq!(
            gone,
            json!({"f:spec": {"f:holderIdentity": {}, "f:renewTime": {}}})
        );
        let entries = vec![
            json!({"manager": "a", "operation": "Apply",
                "fieldsV1": {"f:spec": {"f:holderIdentity": {}, "f:renewTime": {}}}}),
            json!({"manager": "b", "operation": "Update",
                "fieldsV1": {"f:spec": {"f:leaseTransitions": {}, "f:renewTime": {}}}}),
        ];
        let kept = prune(entries, &gone);
        assert_eq!(kept.len(), 1, "a owned only removed fields: {kept:?}");
        assert_eq!(
            kept[0]["fieldsV1"],
            json!({"f:spec": {"f:leaseTransitions": {}}})
        );
    }

    #[test]
    fn fieldsets_skip_identity_and_keep_lists_whole() {
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": "1"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        assert_eq!(
            fieldset(&obj),
            json!({"f:metadata": {"f:labels": {"f:x": {}}},
                "f:status": {"f:loadBalancer": {"f:ingress": {}}}})
        );
    }

    #[test]
    fn changes_only() {
        let old = json!({"spec": {"a": 1, "b": [1]}, "status": {}});
        let new = json!({"spec": {"a": 1, "b": [2]}, "status": {"lb": {"ingress": []}}});
        assert_eq!(
            changed(&old, &new),
            json!({"f:spec": {"f:b": {}}, "f:status": {"f:lb": {"f:ingress": {}}}})
        );
    }

    #[test]
    fn update_takes_fields_from_others_like_fixture_08() {
        let status = json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}});
        let entries = vec![
            json!({"manager": "portico-edge", "operation": "Apply", "apiVersion": "v1",
                "time": "2026-11-25T20:03:31Z", "fieldsType": "FieldsV1",
                "fieldsV1": status.clone(), "subresource": "status"}),
            json!({"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
                "time": "2026-11-25T19:07:37Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:type": {}}}}),
        ];
        let writer = Writer {
            manager: "curl",
            operation: "Update",
            api_version: "v1",
            subresource: Some("status"),
            time: "2026-11-25T20:03:50Z",
        };
        let out = record(&entries, &writer, &status);
        let managers: Vec<&str> = out.iter().map(|e| e["manager"].as_str().unwrap()).collect();
        assert_eq!(managers, ["kubectl-client-side-apply", "curl"]);
        assert_eq!(out[1]["subresource"], "status");

        // And an apply takes them back, sorted first.
        let writer = Writer {
            manager: "portico-edge",
            operation: "Apply",
            time: "2026-11-25T20:03:51Z",
            ..writer
        };
        let out = record(&out, &writer, &status);
        let managers: Vec<&str> = out.iter().map(|e| e["manager"].as_str().unwrap()).collect();
        assert_eq!(managers, ["portico-edge", "kubectl-client-side-apply"]);
    }

    #[test]
    fn subtract_and_union() {
        let a = json!({"f:spec": {"f:a": {}, "f:b": {}}});
        let b = json!({"f:spec": {"f:a": {}}});
        assert_eq!(subtract(&a, &b), json!({"f:spec": {"f:b": {}}}));
        assert_eq!(subtract(&b, &a), json!({}));
        assert_eq!(
            union(&b, &json!({"f:x": {}})),
            json!({"f:spec": {"f:a": {}}, "f:x": {}})
        );
    }
}
