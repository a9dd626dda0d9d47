//! Portico's shared model, config file format and validation, and the one
//! reading of Kubernetes objects into that model ([`kube`]).
//!
//! No IO and no async runtime here: the edge, the node agent and the test API
//! server all depend on this crate, and it depends on none of them. The
//! Kubernetes objects come in as `k8s-openapi` types (plain data; no client).
//!
//! A config file is read in two stages: [`file`](mod@file) turns YAML text into raw
//! serde structs (reporting syntax errors, unknown keys and wrong types), and
//! [`validate`] checks them and builds the [`model`]. [`parse_edge_config`]
//! runs both and reports every problem of both stages at once.
//! [`text`] comes first for a file: its bytes as text (size, UTF-8, an
//! empty file, a file cut short while being written);
//! [`parse_edge_config_file`] runs all three.

pub mod cluster;
pub mod duration;
pub mod error;
pub mod file;
pub mod kube;
pub mod model;
pub mod names;
pub mod quote;
pub mod scalars;
pub mod text;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
pub mod hostile;
#[cfg(test)]
mod properties;

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigErrors, FieldError};
pub use model::*;
pub use text::{parse_edge_config_file, read_edge_config_file, ConfigFileContents, MAX_FILE_BYTES};

/// Parses and validates an edge config file (YAML).
///
/// Returns every problem found, in document order, each with the path of the
/// offending value (`services[2].ports[0].nodePort: 99999 is outside 1-65535`).
/// An empty document is an error (a file not yet written, or cut short,
/// must not remove every Service); `{}` or `services: []` is a valid config
/// with no Nodes and no Services.
pub fn parse_edge_config(yaml: &str) -> Result<EdgeConfig, ConfigErrors> {
    parse_listing(yaml).map(|(config, _)| config)
}

/// [`parse_edge_config`], and whether the document lists its Services
/// ([`file::RawDocument::lists_services`]).
fn parse_listing(yaml: &str) -> Result<(EdgeConfig, bool), ConfigErrors> {
    let (doc, mut errors) = file::parse_document(yaml);
    match validate::validate(&doc) {
        Ok(config) if errors.is_empty() => return Ok((config, doc.lists_services)),
        Ok(_) => {}
        Err(more) => errors.extend(more),
    }
    file::drop_echoes(&mut errors, &doc.overlong);
    // Stage 1 and stage 2 each report in document order; interleave them by
    // section and list entry (stable, so each entry's own order is kept).
    errors.sort_by_key(|e| document_position(&e.path));
    Err(ConfigErrors::new(errors))
}

/// Where a path points in the document: (section, index of the list entry).
fn document_position(path: &str) -> (u8, usize) {
    let head_len = path.find(['.', '[']).unwrap_or(path.len());
    let section = match &path[..head_len] {
        "" => 0,
        "settings" => 1,
        "nodes" => 2,
        "services" => 3,
        _ => 4,
    };
    // The first list index in the path: `services[2]...`, `nodes[1]...`,
    // `settings.addressPools[3]...`.
    let index = path
        .split_once('[')
        .and_then(|(_, rest)| rest.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (section, index)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;

    const EXAMPLE: &str = include_str!("../examples/edge.yaml");
    const BROKEN: &str = include_str!("../examples/broken.yaml");

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_empty_document_is_an_error_and_an_explicit_empty_config_is_not() {
        for text in ["", "# nothing yet\n", "---\n", "~\n"] {
            let errors = parse_edge_config(text).expect_err(text);
            assert_eq!(errors.len(), 1, "{text:?}: {errors}");
            assert_eq!(errors.errors()[0].message, file::EMPTY_DOCUMENT);
        }
        for text in ["{}", "services: []\n", "services: []\nnodes: []\n"] {
            assert_eq!(
                parse_edge_config(text),
                Ok(EdgeConfig::default()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn example_config_validates() {
        let config = match parse_edge_config(EXAMPLE) {
            Ok(config) => config,
            Err(errors) => panic!("examples/edge.yaml is invalid:\n{errors}"),
        };

        let s = &config.settings;
        assert_eq!(s.metrics_listen, "127.0.0.1:9720".parse().unwrap());
        assert_eq!(s.admin_listen, "127.0.0.1:9721".parse().unwrap());
        assert_eq!(s.health.interval, Duration::from_secs(1));
        assert_eq!(s.health.timeout, Duration::from_millis(500));
        assert_eq!((s.health.rise, s.health.fall), (2, 2));

        let nodes: Vec<(&str, Vec<IpAddr>)> = config
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.addresses.clone()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("node-a", vec![ip("127.0.0.11")]),
                ("node-b", vec![ip("127.0.0.12")]),
                ("node-c", vec![ip("127.0.0.13")]),
            ]
        );
        assert!(config.nodes.iter().all(Node::eligible));

        let [web, api] = &config.services[..] else {
            panic!("expected two Services, got {:?}", config.services);
        };
        assert_eq!(web.key, ServiceKey::new("default", "web"));
        assert_eq!(web.vips, [ip("127.0.0.100")]);
        assert_eq!(
            web.ports,
            [ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
                node_port: Some(30080),
            }]
        );
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(web.algorithm, Algorithm::Maglev);
        assert_eq!(web.session_affinity, SessionAffinity::None);
        assert_eq!(web.source_ranges, SourceRanges::Any);

        assert_eq!(api.key, ServiceKey::new("default", "api"));
        assert_eq!(api.vips, [ip("127.0.0.100")]);
        assert_eq!(
            (api.ports[0].port, api.ports[0].node_port),
            (8081, Some(30081))
        );
        assert_eq!(api.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            api.session_affinity,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(600)
            }
        );
        assert_eq!(
            api.source_ranges,
            SourceRanges::Only(vec!["127.0.0.0/8".parse().unwrap()])
        );
    }

    #[test]
    fn broken_example_reports_every_error() {
        let errors = parse_edge_config(BROKEN).expect_err("broken.yaml must not validate");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "settings.health.timeout: 5s must not be longer than interval (1s)",
                "settings.health.rise: 0 is outside 1-100",
                "settings.proxy.maglevTableSize: 65536 is not a prime (the next prime is 65537)",
                r#"settings.metricsListen: "localhost:9720" is not a valid socket address (expected e.g. 127.0.0.1:9720 or [::1]:9720)"#,
                r#"nodes[1].name: duplicate node name "node-a" (already defined at nodes[0])"#,
                r#"nodes[1].addresses[0]: "10.0.0.300" is not a valid IP address"#,
                r#"services[1].name: "Web_2" is not a valid RFC 1123 label: only lowercase letters, digits and '-' are allowed"#,
                "services[1].healthCheckNodePort: required when externalTrafficPolicy is Local",
                r#"services[1].loadBalancerSourceRanges[1]: "10.0.0.0/33" is not a valid CIDR (the prefix length must be a number from 0 to 32)"#,
                "services[1].ports[0].nodePort: 99999 is outside 1-65535",
                "services[1].ports[0].port: listener 203.0.113.10:80/TCP is already used by Service default/web (services[0])",
                "services[2].ports[0].nodeport: unknown field `nodeport`, expected one of `name`, `protocol`, `port`, `nodePort`",
                "services[2].sessionAffinityConfig: only allowed when sessionAffinity is ClientIP",
            ]
        );
        // Display is one error a line.
        assert_eq!(errors.to_string(), lines.join("\n"));
        // Every line marked ERROR in the file is one reported problem.
        assert_eq!(BROKEN.matches("# ERROR").count(), errors.len());
    }

    #[test]
    fn yaml_syntax_error_is_a_single_error_with_its_location() {
        let errors = parse_edge_config("services:\n  - name: web\n    vips: [10.0.0.1\n")
            .expect_err("syntax error");
        assert_eq!(errors.len(), 1);
        let only = &errors.errors()[0];
        assert_eq!(only.path, "");
        assert!(only.message.starts_with("invalid YAML: "), "{only}");
        assert!(only.message.contains("line 4 column 1"), "{only}");
    }

    #[test]
    fn errors_come_in_document_order() {
        let yaml = "
services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 0}], bogus: 1}
  - {name: b, vips: [10.0.0.1], ports: [{port: 0}]}
  - {name: c, vips: [10.0.0.1], ports: [{port: 1, typo: 2}]}
nodes:
  - {name: n, addresses: []}
  - {name: n, adresses: []}
settings: {proxy: {connectRetries: 99}, bogus: 1}
";
        let errors = parse_edge_config(yaml).expect_err("invalid");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "settings.bogus",
                "settings.proxy.connectRetries",
                "nodes[0].addresses",
                "nodes[1].adresses",
                "services[0].bogus",
                "services[1].ports[0].port",
                "services[2].ports[0].typo",
            ]
        );
    }

    #[test]
    fn odd_scalars_are_reported_in_words_with_their_path() {
        let long = "a".repeat(10_000);
        let yaml = format!(
            "settings: {{health: {{rise: -1, interval: 876000h}}, proxy: {{connectRetries: 1.5}}}}
services:
  - {{name: {long}, vips: ['::ffff:10.0.0.1'], ports: [{{port: 1e30, nodePort: 1e20}}]}}
"
        );
        let errors = parse_edge_config(&yaml).expect_err("invalid");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "settings.health.interval: 876000h is outside 100ms-1h",
                "settings.health.rise: -1 is outside 1-100",
                "settings.proxy.connectRetries: 1.5 is not a whole number (expected one from 0 to 16)",
                "services[0].name: a text of 10000 characters is too long: no text in this file may be longer than 1024 characters",
                "services[0].vips[0]: ::ffff:10.0.0.1 is an IPv4-mapped IPv6 address (an IPv4 address in IPv6 form, which IPv4 clients never use); write it as the IPv4 address 10.0.0.1",
                "services[0].ports[0].port: 1e30 is outside 1-65535",
                "services[0].ports[0].nodePort: 1e20 is outside 1-65535",
            ]
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let name = "a".repeat(500);
        let errors = parse_edge_config(&format!(
            "settings: {{health: {{interval: {name}}}}}\nservices: [{{name: {name}, vips: [10.0.0.1], ports: [{{port: 80}}]}}]\n"
        ))
        .expect_err("invalid");
        let shown = format!("{:?}... (500 bytes)", "a".repeat(64));
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                format!("settings.health.interval: {shown} is not a valid duration: expected a number at {shown} (e.g. 500ms, 2s, 1m or 1h30m)"),
                format!("services[0].name: {shown} is not a valid RFC 1123 label: it is longer than 63 characters"),
            ]
        );
    }

    #[test]
    fn parse_duration_is_exported() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    }
}
