//! Hostile input for property tests: odd scalars, arbitrary JSON values,
//! and valid documents with one value replaced ([`mutate`]). Used by this
//! crate's property tests and, through the `testing` feature, by the edge's
//! and the node agent's.

use proptest::prelude::*;
use serde_json::{json, Value};

/// Scalars as odd as YAML and JSON allow.
pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(1e300)),
        Just(json!(-0.0)),
        ".{0,24}".prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::from),
        (1usize..5_000).prop_map(|n| Value::from("9".repeat(n))),
        (1usize..5_000).prop_map(|n| Value::from("a".repeat(n))),
        prop::sample::select(vec![
            "",
            " ",
            "\u{0}",
            "\u{1b}[31m",
            "\u{feff}",
            "-1",
            "0",
            "65536",
            "1e30",
            "0x10",
            "1ms",
            "-1s",
            "100000000h",
            "1h30m",
            "010.001.002.003/32",
            "::ffff:1.2.3.4",
            "10.0.0.0/33",
            "TCP",
            "UDP",
            "SCTP",
            "Local",
            "Cluster",
            "LoadBalancer",
            "~",
            "null",
            "true",
            "NaN",
            ".inf",
        ])
        .prop_map(Value::from),
    ]
}

/// Any JSON value, a few levels deep.
pub fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path (object keys and array indexes) inside `v`, `v` included.
fn paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Vec::new(),
    };
    for (key, child) in children {
        here.push(key);
        paths(child, here, out);
        here.pop();
    }
}

/// `base` with the value at one of its paths (picked by `pick`) replaced
/// by `with`, or, now and then, a new key added there.
pub fn mutate(base: &Value, pick: prop::sample::Index, key: Option<String>, with: Value) -> Value {
    let mut all = Vec::new();
    paths(base, &mut Vec::new(), &mut all);
    let path = pick.get(&all);
    let mut out = base.clone();
    let mut at = &mut out;
    for step in path {
        at = match at {
            Value::Object(m) => m.get_mut(step).expect("a path of the value"),
            Value::Array(a) => &mut a[step.parse::<usize>().expect("an index")],
            _ => unreachable!("paths only step into objects and arrays"),
        };
    }
    match (key, at) {
        (Some(key), Value::Object(m)) => {
            m.insert(key, with);
        }
        (_, at) => *at = with,
    }
    out
}
