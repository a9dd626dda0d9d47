//! Golden files: each fixture's planned ruleset, rendered as the full nft
//! script (with the planner's warnings as comments on top), compared with
//! `tests/golden/<name>.nft`. `UPDATE_GOLDEN=1` rewrites the files.
//! Every golden is also checked by `nft -c -f` (the kernel validates the
//! transaction and discards it) when privileged tests can run.

use std::path::PathBuf;

use portico_node_agent::{plan, render_full, NftCommand, PlanOptions};

use crate::support::fixtures::{self, Fixture};
use crate::support::*;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"))
}

fn render_fixture(fixture: &Fixture) -> String {
    let (services, slices) = fixture;
    let planned = plan(
        services,
        slices,
        &node("node-a", "192.168.77.1"),
        &PlanOptions::default(),
    );
    let mut text = String::new();
    for skipped in &planned.skipped {
        text.push_str(&format!("# skipped: {skipped}\n"));
    }
    text.push_str(&render_full(&planned.ruleset));
    text
}

#[test]
fn goldens_match() {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut mismatches = Vec::new();
    for (name, fixture) in fixtures::all() {
        let rendered = render_fixture(&fixture);
        // Rendering is deterministic: a second run must be byte-identical.
        assert_eq!(rendered, render_fixture(&fixture), "{name}");
        let path = golden_path(name);
        if update {
            std::fs::write(&path, &rendered).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        if expected != rendered {
            mismatches.push(format!(
                "{name}: differs from {}; rendered:\n{rendered}",
                path.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "goldens differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn goldens_are_valid_nft() {
    if !privileged("goldens_are_valid_nft") {
        return;
    }
    let nft = NftCommand::new();
    for (name, _) in fixtures::all() {
        let path = golden_path(name);
        let text = std::fs::read_to_string(&path).expect("golden exists");
        if let Err(e) = nft.check(&text) {
            panic!("{} is rejected by nft -c: {e}", path.display());
        }
    }
}

#[test]
fn bad_input_keeps_the_good_service_and_names_every_problem() {
    let (services, slices) = fixtures::bad_input();
    let planned = plan(
        &services,
        &slices,
        &node("node-a", "192.168.77.1"),
        &PlanOptions::default(),
    );
    let fields: Vec<String> = planned
        .skipped
        .iter()
        .map(|s| format!("{} {}", s.object, s.field))
        .collect();
    assert_eq!(
        fields,
        [
            "EndpointSlice default/broken-a endpoints[1].addresses[0]",
            "EndpointSlice default/broken-a ports[1].port",
            "Service default/broken spec.ports[0].port",
            "Service default/broken spec.ports[2].port",
            "Service default/broken spec.ports[3].nodePort",
            "Service default/closed spec.externalIPs[1]",
            "Service default/closed spec.loadBalancerSourceRanges",
            "Service default/no-cluster-ip spec.clusterIPs",
        ]
    );
    let nodeports = &planned.ruleset.sets["service-nodeports"].elements;
    let keys: Vec<&str> = nodeports.keys().map(String::as_str).collect();
    // api (30100), broken's first valid port (30101), closed (30105);
    // kube-proxy-owned (30104) is not ours.
    assert_eq!(keys, ["tcp . 30100", "tcp . 30101", "tcp . 30105"]);
}
