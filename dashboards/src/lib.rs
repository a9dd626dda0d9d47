//! Portico's Grafana dashboards (`portico-edge.json`, `portico-node-agent.json`
//! in this folder) and the checks that keep them honest.
//!
//! - [`model`]: the part of Grafana's dashboard JSON model the dashboards use,
//!   as serde structs that refuse unknown fields, so a typo or a field from
//!   another schema fails to load instead of being silently ignored.
//! - [`check`]: what Grafana would otherwise accept and render wrongly:
//!   duplicate panel ids, panels outside the 24-column grid or on top of each
//!   other, targets without a query or `refId`, variables used but not
//!   defined, datasources not taken from the `${datasource}` variable.
//! - [`promql`]: the metric names a PromQL expression reads, and the function
//!   each is read through.
//! - [`exposition`]: the metric families (with their types) in a Prometheus
//!   text scrape, and how a series name a query uses maps onto them.
//!
//! The tests in `tests/` load both dashboards through [`model`] and
//! [`check`], and (as root, in the lab) compare every metric they query with
//! real `/metrics` scrapes of `portico-edge` and `portico-node-agent`.

pub mod check;
pub mod exposition;
pub mod model;
pub mod promql;

/// One dashboard file shipped in this folder.
#[derive(Debug, Clone, Copy)]
pub struct DashboardFile {
    /// The file name inside `dashboards/`.
    pub file: &'static str,
    /// The binary whose metrics it shows.
    pub component: Component,
    /// The file's content.
    pub json: &'static str,
}

/// The binary a dashboard is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// `portico-edge` (`portico_edge_*`).
    Edge,
    /// `portico-node-agent` (`portico_node_agent_*`).
    NodeAgent,
}

impl Component {
    /// The prefix every metric of this binary has.
    pub fn metric_prefix(self) -> &'static str {
        match self {
            Component::Edge => "portico_edge_",
            Component::NodeAgent => "portico_node_agent_",
        }
    }
}

/// Every dashboard in this folder.
pub const DASHBOARDS: &[DashboardFile] = &[
    DashboardFile {
        file: "portico-edge.json",
        component: Component::Edge,
        json: include_str!("../portico-edge.json"),
    },
    DashboardFile {
        file: "portico-node-agent.json",
        component: Component::NodeAgent,
        json: include_str!("../portico-node-agent.json"),
    },
];
