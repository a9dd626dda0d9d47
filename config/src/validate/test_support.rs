//! Helpers the validation tests share: each runs a YAML text through the
//! whole pipeline ([`crate::parse_edge_config`]).

use crate::model::{EdgeConfig, Service};
use crate::parse_edge_config;

/// Every (path, message) the full pipeline reports; empty when valid.
fn problems(yaml: &str) -> Vec<(String, String)> {
    match parse_edge_config(yaml) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

/// Asserts exactly these paths are reported, in order, each message
/// containing the given text.
#[track_caller]
pub(super) fn assert_problems(yaml: &str, expected: &[(&str, &str)]) {
    let got = problems(yaml);
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths, want, "all problems: {got:#?}");
    for ((path, message), (_, part)) in got.iter().zip(expected) {
        assert!(
            message.contains(part),
            "{path}: {message:?} does not contain {part:?}"
        );
    }
}

#[track_caller]
pub(super) fn valid(yaml: &str) -> EdgeConfig {
    match parse_edge_config(yaml) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

#[track_caller]
pub(super) fn only_service(yaml: &str) -> Service {
    let mut config = valid(yaml);
    assert_eq!(config.services.len(), 1);
    config.services.remove(0)
}
