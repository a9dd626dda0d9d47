//! Stage 2 of reading a config file: checks a [`RawDocument`] and turns it
//! into a [`model::EdgeConfig`](crate::model::EdgeConfig).
//!
//! Every problem is collected (nothing stops at the first one) as a
//! [`FieldError`] whose path uses the file's key names and `[i]` indices,
//! e.g. `services[2].ports[0].nodePort: 99999 is outside 1-65535`.
//!
//! One `Validator` collects the problems; each part of the file has its
//! own module of `impl Validator` steps:
//! - `settings`: `settings:` (health, proxy, VIP interface, listen addresses,
//!   the Kubernetes watch, the hook API);
//! - `addresses`: address lists (VIPs, node addresses) and the address
//!   pools, with fixed VIPs kept out of them;
//! - `nodes`: `nodes:`;
//! - `services`: `services:` (each Service, its ports, and the listeners
//!   and keys no two Services may share);
//! - `checks`: the value checks shared by all of them.

mod addresses;
mod checks;
mod nodes;
mod services;
mod settings;
#[cfg(test)]
mod test_support;

use std::time::Duration;

use crate::error::FieldError;
use crate::file::{RawDocument, RawEdgeConfig};
use crate::model::{EdgeConfig, EdgeSettings};

pub use crate::names::{DEFAULT_NAMESPACE, MAX_AFFINITY_TIMEOUT_SECONDS};
/// The smallest accepted `maglevTableSize`.
pub const MIN_MAGLEV_TABLE_SIZE: u32 = 7;
/// The largest accepted `maglevTableSize` (a prime).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_000_003;
/// The largest accepted `connectRetries`.
pub const MAX_CONNECT_RETRIES: u32 = 16;
/// The largest accepted `maxConnections` and `maxUdpFlows` (the descriptor
/// limit bounds them further when the edge starts).
pub const MAX_CONNECTIONS: u32 = 10_000_000;

// The accepted range of every duration, both ends included. Each is wide
// enough for any real setup and narrow enough that a slip of unit (`1ms`
// for `1s`, `2000h` for `2000ms`) is caught: HAProxy's and the cloud load
// balancers' own ranges lie inside them.

/// `settings.health.interval`: a probe at most every 100 ms (per target),
/// at least every hour.
pub const HEALTH_INTERVAL_RANGE: (Duration, Duration) = (millis(100), hours(1));
/// `settings.health.timeout` (and never longer than the interval).
pub const HEALTH_TIMEOUT_RANGE: (Duration, Duration) = (millis(10), hours(1));
/// `settings.proxy.connectTimeout`.
pub const CONNECT_TIMEOUT_RANGE: (Duration, Duration) = (millis(10), minutes(5));
/// `settings.proxy.connectAttemptDelay` (`0s`: one node after another).
pub const CONNECT_ATTEMPT_DELAY_RANGE: (Duration, Duration) = (Duration::ZERO, minutes(1));
/// `settings.proxy.idleTimeout`: up to a week.
pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), hours(168));
/// `settings.proxy.udpIdleTimeout`.
pub const UDP_IDLE_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), hours(24));
/// `settings.kubernetes.leaderElection.leaseDuration`.
pub const LEASE_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_secs(3), Duration::from_secs(300));
/// `settings.announce.withdrawGrace` (`0s`: stop accepting at once).
pub const WITHDRAW_GRACE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(60));
/// `settings.proxy.drainTimeout` (`0s`: close at once).
pub const DRAIN_TIMEOUT_RANGE: (Duration, Duration) = (Duration::ZERO, hours(1));

const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

const fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

/// Stage 2: validates a document from [`crate::file::parse_document`].
///
/// Entries that failed stage 1 (`None`) are skipped: their problems were
/// reported there, so callers must treat stage-1 errors as fatal too (as
/// [`crate::parse_edge_config`] does). Returns every problem found.
pub fn validate(doc: &RawDocument) -> Result<EdgeConfig, Vec<FieldError>> {
    let mut v = Validator::default();
    let settings = match &doc.settings {
        Some(raw) => v.settings(raw, doc.nodes.len()),
        None => EdgeSettings::default(),
    };
    let nodes = v.nodes(&doc.nodes);
    let services = v.services(&doc.services);
    v.vips_outside_pools(&services, &settings.address_pools);
    if v.errors.is_empty() {
        Ok(EdgeConfig {
            settings,
            services,
            nodes,
        })
    } else {
        Err(v.errors)
    }
}

/// Validates a file that was deserialized in one piece (e.g. by
/// `serde_yaml_ng::from_str::<RawEdgeConfig>`).
pub fn validate_raw(raw: RawEdgeConfig) -> Result<EdgeConfig, Vec<FieldError>> {
    validate(&RawDocument::from(raw))
}

/// Collects every problem found, each with its path.
#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// Checks an optional field: `Some(default)` when absent, `Some(value)`
    /// when valid, `None` (with the problem recorded) when invalid.
    fn field<R: ?Sized, T>(
        &mut self,
        path: &str,
        raw: Option<&R>,
        default: T,
        check: impl FnOnce(&R) -> Result<T, String>,
    ) -> Option<T> {
        match raw {
            None => Some(default),
            Some(raw) => self.check(path, check(raw)),
        }
    }

    fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(path, message)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::assert_problems;
    use super::*;

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 80}]}
  - {name: b, vips: [10.0.0.2], ports: [{port: 80, nodeport: 30080}]}
nodes:
  - {name: a, address: [10.0.0.1]}
settings: {proxy: {maglev: 7}, vip: {iface: eth0}}
",
            &[
                ("settings.proxy.maglev", "unknown field `maglev`"),
                ("settings.vip.iface", "unknown field `iface`"),
                (
                    "nodes[0].address",
                    "unknown field `address`, expected one of",
                ),
                ("services[1].ports[0].nodeport", "unknown field `nodeport`"),
            ],
        );
    }

    #[test]
    fn stage_one_and_stage_two_problems_are_reported_together() {
        assert_problems(
            "services:
  - {name: a, vips: [10.0.0.1], ports: [{port: 80}], colour: blue}
  - {name: B, vips: [10.0.0.2], ports: [{port: 80}]}
  - {name: c, vips: [10.0.0.3], ports: [{name: a, port: 80, nodePort: 99999}, {name: b, port: [80]}]}
  - {name: d, vips: 10.0.0.4, ports: [{port: 80}]}
",
            &[
                ("services[0].colour", "unknown field `colour`"),
                ("services[1].name", r#""B" is not a valid RFC 1123 label"#),
                ("services[2].ports[1].port", "invalid type: sequence, expected a whole number"),
                ("services[2].ports[0].nodePort", "99999 is outside 1-65535"),
                ("services[3].vips", "invalid type: string"),
            ],
        );
    }

    #[test]
    fn validate_raw_accepts_a_whole_deserialized_file() {
        let raw: RawEdgeConfig =
            serde_yaml_ng::from_str("services: [{name: a, vips: [10.0.0.1], ports: [{port: 80}]}]")
                .unwrap();
        let config = validate_raw(raw).unwrap();
        assert_eq!(config.services[0].ports[0].port, 80);
    }
}
