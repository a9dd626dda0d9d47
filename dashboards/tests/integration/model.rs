//! The shipped dashboards load as Grafana dashboard models and pass the
//! structural checks; each check, in turn, catches the mistake it is for
//! (shown on a copy of a real dashboard with that one mistake made).

use portico_dashboards::{check, model, promql, Component, DASHBOARDS};
use serde_json::{json, Value};

fn edge_json() -> Value {
    serde_json::from_str(DASHBOARDS[0].json).expect("valid JSON")
}

/// The problems `check` finds in a dashboard given as JSON.
fn problems_of(v: &Value) -> Vec<String> {
    let d = model::load(&v.to_string()).unwrap_or_else(|e| panic!("load: {e}"));
    check::problems(&d)
}

/// The first non-row panel of `v`.
fn first_panel(v: &mut Value) -> &mut Value {
    v["panels"]
        .as_array_mut()
        .expect("panels")
        .iter_mut()
        .find(|p| p["type"] != "row")
        .expect("a panel")
}

fn assert_found(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:#?}"
    );
}

#[test]
fn every_dashboard_loads_and_passes_the_checks() {
    assert_eq!(DASHBOARDS.len(), 2);
    for f in DASHBOARDS {
        let d = model::load(f.json).unwrap_or_else(|e| panic!("{}: {e}", f.file));
        assert_eq!(check::problems(&d), Vec::<String>::new(), "{}", f.file);
        assert!(d.editable, "{}", f.file);
        assert!(!d.uid.is_empty() && !d.title.is_empty());
        let panels = d
            .all_panels()
            .into_iter()
            .filter(|p| p.kind != "row")
            .count();
        assert!(panels >= 10, "{}: {panels} panels", f.file);
    }
}

#[test]
fn every_query_parses_and_reads_only_its_components_metrics() {
    for f in DASHBOARDS {
        let d = model::load(f.json).expect("loads");
        let queries = d.queries();
        assert!(!queries.is_empty());
        for q in queries {
            let names = promql::metric_names(&q.expr)
                .unwrap_or_else(|e| panic!("{} {}: {e}\n{}", f.file, q.origin, q.expr));
            assert!(!names.is_empty(), "{} {} reads no metric", f.file, q.origin);
            for n in names {
                assert!(
                    n.starts_with(f.component.metric_prefix()),
                    "{} {}: {n} is not a {:?} metric",
                    f.file,
                    q.origin,
                    f.component
                );
            }
        }
    }
    assert_eq!(
        DASHBOARDS.iter().map(|f| f.component).collect::<Vec<_>>(),
        [Component::Edge, Component::NodeAgent]
    );
}

#[test]
fn an_unknown_field_does_not_load() {
    let mut v = edge_json();
    first_panel(&mut v)["gridPos"]["width"] = json!(3);
    let err = model::load(&v.to_string()).unwrap_err();
    assert!(err.path.ends_with(".gridPos.width"), "{err}");
}

#[test]
fn a_target_without_expr_or_ref_id_does_not_load() {
    for field in ["expr", "refId"] {
        let mut v = edge_json();
        first_panel(&mut v)["targets"][0]
            .as_object_mut()
            .expect("a target")
            .remove(field);
        let err = model::load(&v.to_string()).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn duplicate_panel_ids_are_found() {
    let mut v = edge_json();
    let id = v["panels"][0]["id"].clone();
    first_panel(&mut v)["id"] = id;
    assert_found(&problems_of(&v), "is also panel");
}

#[test]
fn panels_outside_the_grid_or_overlapping_are_found() {
    let mut v = edge_json();
    first_panel(&mut v)["gridPos"]["x"] = json!(20);
    let problems = problems_of(&v);
    assert_found(&problems, "is not inside the 24-column grid");
    assert_found(&problems, "overlaps panel");
}

#[test]
fn undefined_variables_are_found() {
    let mut v = edge_json();
    let target = &mut first_panel(&mut v)["targets"][0];
    let expr = target["expr"]
        .as_str()
        .expect("expr")
        .replace("$instance", "$node");
    target["expr"] = json!(expr);
    assert_found(&problems_of(&v), "$node is not a defined variable");
}

#[test]
fn a_hard_coded_datasource_is_found() {
    let mut v = edge_json();
    first_panel(&mut v)["datasource"]["uid"] = json!("P1809F7CD0C75ACF3");
    assert_found(&problems_of(&v), "datasource must be");
}

#[test]
fn empty_queries_duplicate_ref_ids_and_missing_descriptions_are_found() {
    let mut v = edge_json();
    let panel = first_panel(&mut v);
    panel["targets"][0]["expr"] = json!(" ");
    let mut second = panel["targets"][0].clone();
    second["expr"] = json!("portico_edge_listeners");
    panel["targets"]
        .as_array_mut()
        .expect("targets")
        .push(second);
    panel["description"] = json!("");
    let problems = problems_of(&v);
    assert_found(&problems, "empty expr");
    assert_found(&problems, "refId used twice");
    assert_found(&problems, "no description");
}

#[test]
fn a_non_editable_dashboard_or_old_schema_is_found() {
    let mut v = edge_json();
    v["editable"] = json!(false);
    v["schemaVersion"] = json!(27);
    let problems = problems_of(&v);
    assert_found(&problems, "editable must be true");
    assert_found(&problems, "schemaVersion 27");
}
