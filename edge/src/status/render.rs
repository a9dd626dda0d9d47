//! The status as a text table: one row per listener x node, problems
//! visible in the health column.

use comfy_table::{presets, Table};

use super::{AccessStatus, Status};

/// Renders the status: a `generation N` line, then an aligned table, one
/// row per listener x node (and one for a listener with a problem or no
/// node).
pub fn render(status: &Status) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header([
        "SERVICE", "PORT", "LISTENER", "NODE", "BACKEND", "HEALTH", "WEIGHT", "ACTIVE",
    ]);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for l in &status.listeners {
        let mut notes = Vec::new();
        if !l.open {
            notes.push(format!("NOT OPEN: {}", l.error.as_deref().unwrap_or("?")));
        }
        if let Some(p) = &l.problem {
            notes.push(p.clone());
        }
        if let AccessStatus::Closed { reason } = &l.access {
            notes.push(format!("closed: {reason}"));
        }
        if l.all_down && !l.backends.is_empty() {
            notes.push("all nodes down".into());
        }
        if l.backends.is_empty() || !notes.is_empty() {
            table.add_row([
                l.service.as_str(),
                &l.port,
                &l.listener,
                "-",
                "-",
                &notes.join("; "),
                "-",
                "-",
            ]);
        }
        for b in &l.backends {
            let health = match (b.probed, b.healthy) {
                (false, _) => "pending".to_string(),
                (true, true) => "up".to_string(),
                (true, false) => format!("DOWN ({})", b.last_error.as_deref().unwrap_or("failing")),
            };
            table.add_row([
                l.service.clone(),
                l.port.clone(),
                l.listener.clone(),
                b.node.clone(),
                b.addr.clone(),
                health,
                b.weight.to_string(),
                b.active.to_string(),
            ]);
        }
    }
    let mut out = format!("generation {}\n", status.generation);
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AccessStatus, BackendStatus, ListenerStatus, Status};

    #[test]
    fn renders_one_row_per_listener_and_node_with_problems_visible() {
        let backend = |node: &str, healthy: bool| BackendStatus {
            node: node.into(),
            addr: "10.0.0.1:30080".into(),
            check: "node-proxy:10.0.0.1:10256".into(),
            healthy,
            probed: true,
            weight: 1,
            active: 3,
            last_error: (!healthy).then(|| "connection refused".into()),
        };
        let status = Status {
            generation: 7,
            listeners: vec![
                ListenerStatus {
                    listener: "tcp/192.0.2.1:80".into(),
                    service: "default/web".into(),
                    port: "http".into(),
                    open: true,
                    error: None,
                    access: AccessStatus::Any,
                    problem: None,
                    all_down: false,
                    backends: vec![backend("a", true), backend("b", false)],
                },
                ListenerStatus {
                    listener: "tcp/192.0.2.2:80".into(),
                    service: "default/closed".into(),
                    port: "80".into(),
                    open: true,
                    error: None,
                    access: AccessStatus::Closed {
                        reason: "invalid loadBalancerSourceRanges: x".into(),
                    },
                    problem: None,
                    all_down: false,
                    backends: vec![],
                },
            ],
        };
        let text = render(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "generation 7");
        assert!(lines[1].starts_with("SERVICE"));
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[2].contains("default/web") && lines[2].contains(" a ") && lines[2].contains("up")
        );
        assert!(lines[3].contains("DOWN (connection refused)"), "{text}");
        assert!(lines[4].contains("closed: invalid"), "{text}");
    }
}
