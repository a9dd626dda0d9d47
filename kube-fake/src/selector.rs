//! Label and field selectors, parsed from the `labelSelector` and
//! `fieldSelector` query parameters and matched against JSON objects.

use serde_json::Value;

use crate::resource::ResourceDef;

/// A selector string that does not parse, or names an unsupported field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector is malformed.
    #[error("unable to parse requirement: {0}")]
    Label(String),
    /// The field selector is malformed.
    #[error("invalid field selector: {0}")]
    Field(String),
    /// The field selector names a field this resource does not index.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed label selector: every requirement must hold (comma = AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<(String, LabelOp)>,
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k` (also `==`).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector { reqs })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.reqs.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                LabelOp::Eq(v) => value == Some(v.as_str()),
                LabelOp::NotEq(v) => value != Some(v.as_str()),
                LabelOp::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
                LabelOp::NotIn(vs) => value.is_none_or(|x| vs.iter().all(|v| v != x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::NotExists => value.is_none(),
            }
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_requirement(part: &str) -> Result<(String, LabelOp), SelectorError> {
    let bad = || SelectorError::Label(part.to_string());
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key)
            .then(|| (key.to_string(), LabelOp::NotExists))
            .ok_or_else(bad);
    }
    for (sym, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = part.split_once(sym) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) || !valid_value(v) {
                return Err(bad());
            }
            let op = if neg {
                LabelOp::NotEq(v.into())
            } else {
                LabelOp::Eq(v.into())
            };
            return Ok((k.to_string(), op));
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0];
        let rest = words[1].trim_start();
        for (word, neg) in [("notin", true), ("in", false)] {
            if let Some(list) = rest.strip_prefix(word) {
                let list = list.trim();
                let inner = list
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or_else(bad)?;
                let values: Vec<String> = inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if !valid_key(key) || values.is_empty() || !values.iter().all(|v| valid_value(v)) {
                    return Err(bad());
                }
                let op = if neg {
                    LabelOp::NotIn(values)
                } else {
                    LabelOp::In(values)
                };
                return Ok((key.to_string(), op));
            }
        }
        return Err(bad());
    }
    valid_key(part)
        .then(|| (part.to_string(), LabelOp::Exists))
        .ok_or_else(bad)
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(&'static str, bool, String)>,
}

impl FieldSelector {
    /// Parses a field selector, checking each field against what `res` supports
    /// (the real server's "field label not supported" error otherwise).
    pub fn parse(s: &str, res: &ResourceDef) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (label, neg, value) = if let Some((l, v)) = part.split_once("!=") {
                (l, true, v)
            } else if let Some((l, v)) = part.split_once("==") {
                (l, false, v)
            } else if let Some((l, v)) = part.split_once('=') {
                (l, false, v)
            } else {
                return Err(SelectorError::Field(part.to_string()));
            };
            let label = label.trim();
            let path = res
                .field_path(label)
                .ok_or_else(|| SelectorError::UnsupportedField(label.to_string()))?;
            reqs.push((path, neg, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// A selector on `metadata.name` only (used for `.../{name}?watch=true`).
    pub fn name(name: &str) -> Self {
        FieldSelector {
            reqs: vec![("metadata.name", false, name.to_string())],
        }
    }

    /// Whether `obj` satisfies every requirement (missing fields read as `""`).
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, neg, want)| {
            let got = field_string(obj, path);
            (got == *want) != *neg
        })
    }
}

/// Reads a dotted path as the string the real field indexers produce.
fn field_string(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        cur = &cur[seg];
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => {
            if path == "spec.unschedulable" {
                "false".into()
            } else {
                String::new()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_kind;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (db, web)",
            "app notin (db)",
            "missing notin (db)",
            "tier",
            "!missing",
            "app=web,tier=front",
            "app in (web),tier notin (back,mid)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "missing in (x)",
            "app notin (web,db)",
            "missing",
            "!app",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
    }

    #[test]
    fn label_parse_errors() {
        for s in ["app in web", "app in ()", "=x", "a b", "a=b=c=", "a in (x"] {
            assert!(LabelSelector::parse(s).is_err(), "{s}");
        }
        assert_eq!(
            LabelSelector::parse("kubernetes.io/service-name=web")
                .unwrap()
                .reqs
                .len(),
            1
        );
    }

    #[test]
    fn field_selectors() {
        let svc = by_kind("v1", "Service").unwrap();
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a", svc)
            .unwrap()
            .matches(&o));
        assert!(
            FieldSelector::parse("metadata.name==a,metadata.namespace=ns", svc)
                .unwrap()
                .matches(&o)
        );
        assert!(!FieldSelector::parse("metadata.namespace!=ns", svc)
            .unwrap()
            .matches(&o));
        assert_eq!(
            FieldSelector::parse("spec.foo=bar", svc),
            Err(SelectorError::UnsupportedField("spec.foo".into()))
        );
        assert_eq!(
            SelectorError::UnsupportedField("spec.foo".into()).to_string(),
            "field label not supported: spec.foo"
        );
        let node = by_kind("v1", "Node").unwrap();
        assert!(FieldSelector::parse("metadata.namespace=x", node).is_err());
        assert!(FieldSelector::parse("spec.unschedulable=false", node)
            .unwrap()
            .matches(&json!({"spec": {}})));
    }
}
