//! The Grafana dashboard JSON model (schema version 39 and near it), as far
//! as Portico's dashboards use it.
//!
//! Structs refuse unknown fields where Grafana's schema is fixed (dashboard,
//! panel, grid position, target, variable), so a misspelt key fails to load
//! here rather than being dropped by Grafana. Panel `options`, `fieldConfig`
//! defaults and overrides are plugin-specific in Grafana and are kept as
//! JSON values.

use serde::Deserialize;
use serde_json::Value;

/// A load failure, with the JSON path of the offending field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct LoadError {
    /// Where in the document (`panels[3].gridPos.w`).
    pub path: String,
    /// What serde said.
    pub source: serde_json::Error,
}

/// Parses a dashboard file.
pub fn load(json: &str) -> Result<Dashboard, LoadError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| LoadError {
        path: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// A whole dashboard (what "Export > Save to file" writes, without
/// `__inputs`: the datasource is a template variable instead).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dashboard {
    /// Built-in and custom annotations (Grafana's default list).
    pub annotations: Option<Value>,
    /// Shown in the dashboard settings and search.
    pub description: Option<String>,
    /// Whether users may change it in Grafana.
    pub editable: bool,
    /// First month of the fiscal year (0 = January).
    pub fiscal_year_start_month: Option<u8>,
    /// 0 default, 1 shared crosshair, 2 shared tooltip.
    pub graph_tooltip: Option<u8>,
    /// Database id; `null` in files meant for import.
    pub id: Option<u64>,
    /// Links shown at the top.
    #[serde(default)]
    pub links: Vec<Value>,
    /// The panels (rows included), in order.
    pub panels: Vec<Panel>,
    /// Auto-refresh interval (`30s`).
    pub refresh: Option<String>,
    /// Grafana's dashboard schema version.
    pub schema_version: u32,
    /// Search tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Template variables.
    pub templating: Templating,
    /// Default time range.
    pub time: TimeRange,
    /// Time picker settings.
    pub timepicker: Option<Value>,
    /// `browser`, `utc` or a zone name.
    pub timezone: Option<String>,
    /// The title.
    pub title: String,
    /// Stable identifier (URLs, provisioning).
    pub uid: String,
    /// Version counter Grafana bumps on save.
    pub version: Option<u64>,
    /// First day of the week (empty = locale default).
    pub week_start: Option<String>,
}

/// A time range, in Grafana's relative syntax (`now-1h`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// Start.
    pub from: String,
    /// End.
    pub to: String,
}

/// The template variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templating {
    /// In display order.
    pub list: Vec<Variable>,
}

/// One template variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Variable {
    /// Referenced as `$name` / `${name}`.
    pub name: String,
    /// `datasource`, `query`, `custom`, `constant`, `interval`, `textbox`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Shown instead of the name.
    pub label: Option<String>,
    /// Tooltip.
    pub description: Option<String>,
    /// For `datasource`: the plugin id; for `query`: a string or Grafana's
    /// query-editor object (`{"query": "label_values(...)", ...}`).
    pub query: Option<Value>,
    /// The query as text (what the variable list shows).
    pub definition: Option<String>,
    /// Where a `query` variable runs.
    pub datasource: Option<DatasourceRef>,
    /// The selected value(s).
    pub current: Option<Value>,
    /// 0 shown, 1 label hidden, 2 hidden.
    pub hide: Option<u8>,
    /// 1 on load, 2 on time range change.
    pub refresh: Option<u8>,
    /// Filter on the values.
    pub regex: Option<String>,
    /// Static options.
    #[serde(default)]
    pub options: Vec<Value>,
    /// Offer "All".
    pub include_all: Option<bool>,
    /// Allow several values.
    pub multi: Option<bool>,
    /// What "All" expands to.
    pub all_value: Option<String>,
    /// Sort order of the values.
    pub sort: Option<u8>,
}

impl Variable {
    /// The query text of a `query` variable, whichever form it is stored in.
    pub fn query_text(&self) -> Option<&str> {
        match &self.query {
            Some(Value::String(s)) => Some(s),
            Some(Value::Object(o)) => o.get("query").and_then(Value::as_str),
            _ => self.definition.as_deref(),
        }
    }
}

/// A datasource reference (`{"type": "prometheus", "uid": "${datasource}"}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceRef {
    /// Plugin id.
    #[serde(rename = "type")]
    pub kind: String,
    /// Datasource uid, or a variable naming one.
    pub uid: String,
}

/// A panel, or a row (`"type": "row"`, whose `panels` hold its children
/// while it is collapsed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Panel {
    /// Unique within the dashboard.
    pub id: u32,
    /// Plugin: `timeseries`, `stat`, `state-timeline`, `table`, `row`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Shown on the panel.
    pub title: String,
    /// The panel's info tooltip: what it shows and what to do about it.
    pub description: Option<String>,
    /// Place on the 24-column grid.
    pub grid_pos: GridPos,
    /// Where the targets run.
    pub datasource: Option<DatasourceRef>,
    /// The queries.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Units, thresholds, mappings, overrides.
    pub field_config: Option<FieldConfig>,
    /// Plugin options (legend, tooltip, reduce options, ...).
    pub options: Option<Value>,
    /// Data transformations.
    #[serde(default)]
    pub transformations: Vec<Value>,
    /// Rows: whether collapsed.
    pub collapsed: Option<bool>,
    /// Rows: the children while collapsed.
    #[serde(default)]
    pub panels: Vec<Panel>,
    /// Minimum query step.
    pub interval: Option<String>,
    /// Plugin version that last saved the panel.
    pub plugin_version: Option<String>,
}

/// Position and size in grid units (24 columns; a row unit is 30 px).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GridPos {
    /// Column, 0-23.
    pub x: u32,
    /// Row.
    pub y: u32,
    /// Width in columns.
    pub w: u32,
    /// Height in rows.
    pub h: u32,
}

impl GridPos {
    /// Whether two positions share any cell.
    pub fn overlaps(&self, other: &GridPos) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }
}

/// Field defaults and per-field overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Unit, min/max, thresholds, value mappings, plugin `custom` settings.
    pub defaults: Value,
    /// Matchers and the properties they set.
    #[serde(default)]
    pub overrides: Vec<Value>,
}

/// One Prometheus query of a panel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    /// Where it runs (the panel's, when absent).
    pub datasource: Option<DatasourceRef>,
    /// The PromQL expression.
    pub expr: String,
    /// Series name template (`{{service}}`).
    pub legend_format: Option<String>,
    /// `A`, `B`, ...: unique within the panel.
    pub ref_id: String,
    /// Evaluate once at the end of the range.
    pub instant: Option<bool>,
    /// Evaluate over the range.
    pub range: Option<bool>,
    /// `time_series`, `table` or `heatmap`.
    pub format: Option<String>,
    /// `code` or `builder`.
    pub editor_mode: Option<String>,
    /// Minimum step for this query.
    pub interval: Option<String>,
    /// Hidden from the panel.
    pub hide: Option<bool>,
}

impl Dashboard {
    /// Every panel, rows' collapsed children included, depth first.
    pub fn all_panels(&self) -> Vec<&Panel> {
        fn walk<'a>(panels: &'a [Panel], out: &mut Vec<&'a Panel>) {
            for p in panels {
                out.push(p);
                walk(&p.panels, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.panels, &mut out);
        out
    }

    /// Every PromQL expression with where it comes from: panel targets, and
    /// the metric selectors of `query` variables (`label_values(sel, label)`).
    pub fn queries(&self) -> Vec<Query> {
        let mut out = Vec::new();
        for v in &self.templating.list {
            if v.kind == "query" {
                if let Some(q) = v.query_text() {
                    out.push(Query {
                        origin: format!("variable ${}", v.name),
                        expr: variable_selector(q).to_string(),
                        labels_only: true,
                    });
                }
            }
        }
        for p in self.all_panels() {
            for t in &p.targets {
                out.push(Query {
                    origin: format!("panel {} {:?} target {}", p.id, p.title, t.ref_id),
                    expr: t.expr.clone(),
                    labels_only: false,
                });
            }
        }
        out
    }
}

/// A PromQL expression and where in the dashboard it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `panel 7 "Accepted connections" target A`, `variable $service`.
    pub origin: String,
    /// The expression.
    pub expr: String,
    /// Only the series' labels are used (a variable's `label_values`), not
    /// their values: any metric type may be read directly.
    pub labels_only: bool,
}

/// The PromQL part of a Prometheus variable query: the selector of
/// `label_values(selector, label)` (or of `query_result(expr)`); other forms
/// (`label_names()`, `metrics(regex)`) read no metric and give "".
pub fn variable_selector(query: &str) -> &str {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        // `label_values(label)` alone reads no metric.
        return match inner.rfind(',') {
            Some(comma) => inner[..comma].trim(),
            None => "",
        };
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return inner.trim();
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_selectors_are_the_metric_part_only() {
        assert_eq!(
            variable_selector("label_values(portico_edge_listeners, instance)"),
            "portico_edge_listeners"
        );
        assert_eq!(
            variable_selector(
                "label_values(portico_edge_connections_accepted_total{instance=~\"$instance\"}, service)"
            ),
            "portico_edge_connections_accepted_total{instance=~\"$instance\"}"
        );
        assert_eq!(variable_selector("label_values(instance)"), "");
        assert_eq!(variable_selector("metrics(portico_.*)"), "");
        assert_eq!(variable_selector("query_result(up == 1)"), "up == 1");
    }

    #[test]
    fn grid_positions_overlap_only_when_they_share_a_cell() {
        let a = GridPos {
            x: 0,
            y: 0,
            w: 12,
            h: 8,
        };
        assert!(a.overlaps(&GridPos {
            x: 11,
            y: 7,
            w: 2,
            h: 2
        }));
        assert!(!a.overlaps(&GridPos {
            x: 12,
            y: 0,
            w: 12,
            h: 8
        }));
        assert!(!a.overlaps(&GridPos {
            x: 0,
            y: 8,
            w: 24,
            h: 1
        }));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let json = r#"{"editable": true, "panels": [{"id": 1, "type": "stat", "title": "t",
            "gridPos": {"x": 0, "y": 0, "w": 4, "h": 4}, "gridpos": {}}],
            "schemaVersion": 39, "templating": {"list": []},
            "time": {"from": "now-1h", "to": "now"}, "title": "t", "uid": "u"}"#;
        let err = load(json).unwrap_err();
        assert_eq!(err.path, "panels[0].gridpos");
        assert!(err.source.to_string().contains("unknown field"), "{err}");
    }
}
