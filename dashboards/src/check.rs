//! Structural checks on a loaded dashboard: what Grafana would accept but
//! show wrongly (or not at all). [`problems`] lists every problem at once,
//! each naming the panel or variable it is about.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Dashboard, DatasourceRef, Panel};

/// The grid's width in columns.
pub const GRID_COLUMNS: u32 = 24;
/// The schema versions these checks know (Grafana 10.x-11.x).
pub const SCHEMA_VERSIONS: std::ops::RangeInclusive<u32> = 36..=41;
/// The datasource every panel, target and query variable must use.
pub const DATASOURCE_UID: &str = "${datasource}";
/// Panel types the dashboards may use.
pub const PANEL_TYPES: &[&str] = &[
    "row",
    "timeseries",
    "stat",
    "state-timeline",
    "status-history",
    "table",
    "bargauge",
    "gauge",
];
/// Variables Grafana defines itself.
pub const BUILTIN_VARIABLES: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
    "__name",
    "__all",
    "timeFilter",
];

/// Every problem found in `d`; empty when it is fine.
pub fn problems(d: &Dashboard) -> Vec<String> {
    let mut out = Vec::new();
    if d.title.trim().is_empty() {
        out.push("the dashboard has no title".to_string());
    }
    if d.uid.trim().is_empty() || d.uid.len() > 40 {
        out.push(format!("uid {:?} must be 1-40 characters", d.uid));
    }
    if !SCHEMA_VERSIONS.contains(&d.schema_version) {
        out.push(format!(
            "schemaVersion {} is outside {SCHEMA_VERSIONS:?}",
            d.schema_version
        ));
    }
    if !d.editable {
        out.push("editable must be true (operators adapt these dashboards)".to_string());
    }
    if d.id.is_some() {
        out.push("id must be null in a file meant for import".to_string());
    }
    variables(d, &mut out);
    panels(d, &mut out);
    layout(&d.panels, "the dashboard", &mut out);
    for row in d.panels.iter().filter(|p| !p.panels.is_empty()) {
        layout(&row.panels, &format!("row {:?}", row.title), &mut out);
    }
    out
}

fn variables(d: &Dashboard, out: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for v in &d.templating.list {
        if !seen.insert(v.name.as_str()) {
            out.push(format!("variable ${} is defined twice", v.name));
        }
        match v.kind.as_str() {
            "datasource" => {
                if v.query.as_ref().and_then(|q| q.as_str()) != Some("prometheus") {
                    out.push(format!(
                        "variable ${}: a datasource variable must offer prometheus datasources",
                        v.name
                    ));
                }
            }
            "query" => {
                datasource(
                    v.datasource.as_ref(),
                    &format!("variable ${}", v.name),
                    true,
                    out,
                );
                if v.query_text().is_none_or(|q| q.trim().is_empty()) {
                    out.push(format!("variable ${} has no query", v.name));
                }
            }
            "custom" | "constant" | "interval" | "textbox" => {}
            other => out.push(format!("variable ${}: unknown type {other:?}", v.name)),
        }
    }
    if !d
        .templating
        .list
        .iter()
        .any(|v| v.name == "datasource" && v.kind == "datasource")
    {
        out.push("no $datasource variable of type datasource".to_string());
    }
    let defined: BTreeSet<&str> = d
        .templating
        .list
        .iter()
        .map(|v| v.name.as_str())
        .chain(BUILTIN_VARIABLES.iter().copied())
        .collect();
    let mut texts: Vec<(String, String)> = Vec::new();
    for v in &d.templating.list {
        if let Some(q) = v.query_text() {
            texts.push((format!("variable ${}", v.name), q.to_string()));
        }
    }
    for p in d.all_panels() {
        let at = format!("panel {} {:?}", p.id, p.title);
        texts.push((at.clone(), p.title.clone()));
        if let Some(ds) = &p.datasource {
            texts.push((at.clone(), ds.uid.clone()));
        }
        for t in &p.targets {
            texts.push((format!("{at} target {}", t.ref_id), t.expr.clone()));
            if let Some(l) = &t.legend_format {
                texts.push((format!("{at} target {} legend", t.ref_id), l.clone()));
            }
        }
    }
    for (at, text) in texts {
        for name in used_variables(&text) {
            if !defined.contains(name.as_str()) {
                out.push(format!("{at}: ${name} is not a defined variable"));
            }
        }
    }
}

/// The variable names `text` refers to: `$name`, `${name}`, `${name:format}`
/// and the deprecated `[[name]]`.
pub fn used_variables(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            let name = braced[..end].split([':', '.']).next().unwrap_or_default();
            out.insert(name.to_string());
            rest = &braced[end..];
        } else {
            let end = rest.find(|c| !is_name(c)).unwrap_or(rest.len());
            if end > 0 {
                out.insert(rest[..end].to_string());
            }
            rest = &rest[end..];
        }
    }
    let mut rest = text;
    while let Some(i) = rest.find("[[") {
        rest = &rest[i + 2..];
        let end = rest.find("]]").unwrap_or(rest.len());
        let name = rest[..end].split(':').next().unwrap_or_default();
        if !name.is_empty() && name.chars().all(is_name) {
            out.insert(name.to_string());
        }
        rest = &rest[end..];
    }
    out
}

fn datasource(ds: Option<&DatasourceRef>, at: &str, required: bool, out: &mut Vec<String>) {
    match ds {
        None if required => out.push(format!("{at}: no datasource")),
        Some(ds) if ds.kind != "prometheus" || ds.uid != DATASOURCE_UID => out.push(format!(
            "{at}: datasource must be {{\"type\": \"prometheus\", \"uid\": \"{DATASOURCE_UID}\"}}, not {{\"type\": {:?}, \"uid\": {:?}}}",
            ds.kind, ds.uid
        )),
        _ => {}
    }
}

fn panels(d: &Dashboard, out: &mut Vec<String>) {
    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    for p in d.all_panels() {
        let at = format!("panel {} {:?}", p.id, p.title);
        if let Some(first) = ids.insert(p.id, &p.title) {
            out.push(format!("{at}: id {} is also panel {first:?}'s", p.id));
        }
        if !PANEL_TYPES.contains(&p.kind.as_str()) {
            out.push(format!(
                "{at}: type {:?} is not one of {PANEL_TYPES:?}",
                p.kind
            ));
        }
        if p.title.trim().is_empty() {
            out.push(format!("{at}: no title"));
        }
        if p.kind == "row" {
            if !p.targets.is_empty() {
                out.push(format!("{at}: a row has no queries"));
            }
            if p.grid_pos.w != GRID_COLUMNS || p.grid_pos.h != 1 || p.grid_pos.x != 0 {
                out.push(format!("{at}: a row spans the grid, one unit high"));
            }
            continue;
        }
        if !p.panels.is_empty() {
            out.push(format!("{at}: only rows hold panels"));
        }
        if p.description.as_deref().is_none_or(|s| s.trim().is_empty()) {
            out.push(format!(
                "{at}: no description (say what it shows and what to do when it looks wrong)"
            ));
        }
        datasource(p.datasource.as_ref(), &at, true, out);
        if p.targets.is_empty() {
            out.push(format!("{at}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &p.targets {
            let tat = format!("{at} target {:?}", t.ref_id);
            if t.ref_id.trim().is_empty() {
                out.push(format!("{tat}: empty refId"));
            } else if !refs.insert(t.ref_id.as_str()) {
                out.push(format!("{tat}: refId used twice in the panel"));
            }
            if t.expr.trim().is_empty() {
                out.push(format!("{tat}: empty expr"));
            }
            datasource(t.datasource.as_ref(), &tat, false, out);
        }
    }
}

/// Panels of one level (the dashboard's, or a collapsed row's children):
/// inside the grid, and no two on the same cell.
fn layout(panels: &[Panel], level: &str, out: &mut Vec<String>) {
    for (i, p) in panels.iter().enumerate() {
        let g = p.grid_pos;
        if g.w == 0 || g.h == 0 || g.x + g.w > GRID_COLUMNS {
            out.push(format!(
                "panel {} {:?} in {level}: gridPos {g:?} is not inside the {GRID_COLUMNS}-column grid",
                p.id, p.title
            ));
        }
        for q in &panels[..i] {
            if g.overlaps(&q.grid_pos) {
                out.push(format!(
                    "panel {} {:?} in {level} overlaps panel {} {:?} ({g:?} and {:?})",
                    p.id, p.title, q.id, q.title, q.grid_pos
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_found_in_every_syntax() {
        let used = used_variables(
            r#"rate(x{instance=~"$instance", service=~"${service:regex}"}[$__rate_interval]) [[old]] $ 5"#,
        );
        let want: BTreeSet<String> = ["instance", "service", "__rate_interval", "old"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(used, want);
    }
}
