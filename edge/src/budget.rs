//! The descriptor budget: how the process's descriptor limit is shared out,
//! and which Services a configuration can afford.
//!
//! Everything the edge holds is a file descriptor, and every one of them
//! can be asked for from outside: a listener per VIP:port (by whoever gives
//! Services), a probe per health target (by the Services' nodes), two or
//! three per TCP connection and one per UDP flow (by clients). Without a
//! budget, one Service with enough ports takes the descriptors the health
//! probes, the admin server and the hook API need, and every Service goes
//! down with it. So the limit (`RLIMIT_NOFILE`, the soft limit raised to the
//! hard one at start) is shared out before anything is opened:
//!
//! - [`CONTROL_RESERVE`]: standard streams, the runtime, netlink, the
//!   admin, metrics and hook servers and their connections, the config file;
//! - client connections: `settings.proxy.maxConnections` x
//!   [`DESCRIPTORS_PER_CONNECTION`] (the client, its node, a raced attempt);
//! - UDP flows: `settings.proxy.maxUdpFlows`, one socket each;
//! - the rest: listeners ([`DESCRIPTORS_PER_LISTENER`] each) and health
//!   probes (one each), the share a configuration spends
//!   ([`Budget::config`]).
//!
//! A source is refused at the source when it asks for more than is left
//! (the config file fails validation, the hook API answers 4xx, the cluster
//! source leaves the Service out), and [`fit`] keeps the merged
//! configuration inside the budget whatever the sources did: earlier
//! Services (the config file's, then each source's in its order) keep what
//! they have, and a Service that does not fit is left out whole, with the
//! reason.
//!
//! Pure: numbers and configurations in, numbers and decisions out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use portico_config::{EdgeConfig, ProxySettings, ServiceKey};

use crate::plan::{self, HealthTarget, ListenerKey, Plan};

/// Descriptors kept for the process itself and its control plane: standard
/// streams, the runtime (epoll, eventfds), netlink, the admin and metrics
/// servers with their connections, the hook API with its 64 connections,
/// the Kubernetes client, the config file, a binary upgrade's socket.
pub const CONTROL_RESERVE: u64 = 512;

/// Descriptors one TCP connection may hold at once: the client's, its
/// node's, and a raced connect attempt's.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 3;

/// Descriptors one listener may hold: its socket, and (TCP) a connection it
/// accepted while every connection slot is taken, waiting for one.
pub const DESCRIPTORS_PER_LISTENER: u64 = 2;

/// `maxConnections` when the config does not say: this many, or a quarter of
/// the descriptors when that is fewer.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 20_000;

/// `maxUdpFlows` when the config does not say: this many, or an eighth of
/// the descriptors when that is fewer.
pub const DEFAULT_MAX_UDP_FLOWS: u32 = 20_000;

/// The least a configuration must be left for listeners and probes; a
/// setting that leaves less is refused.
pub const MIN_CONFIG_SHARE: u64 = 16;

/// How the descriptor limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's descriptor limit.
    pub descriptors: u64,
    /// TCP connections in flight at most.
    pub max_connections: u32,
    /// UDP flows at most.
    pub max_udp_flows: u32,
    /// Listeners plus health probes at most.
    pub config: u64,
}

/// A setting the descriptor limit cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BudgetError {
    /// The setting's path in the config file.
    pub field: String,
    /// Why, with the figures.
    pub message: String,
}

impl Budget {
    /// Shares out `descriptors` (the process's limit) as `proxy` asks.
    pub fn derive(descriptors: u64, proxy: &ProxySettings) -> Result<Budget, BudgetError> {
        let available = descriptors.saturating_sub(CONTROL_RESERVE);
        let derived = |default: u32, share: u64| -> u32 {
            u32::try_from(share)
                .unwrap_or(u32::MAX)
                .clamp(1, default.max(1))
        };
        let max_connections = proxy.max_connections.unwrap_or_else(|| {
            derived(
                DEFAULT_MAX_CONNECTIONS,
                available / 4 / DESCRIPTORS_PER_CONNECTION,
            )
        });
        let max_udp_flows = proxy
            .max_udp_flows
            .unwrap_or_else(|| derived(DEFAULT_MAX_UDP_FLOWS, available / 8));
        let connections = u64::from(max_connections) * DESCRIPTORS_PER_CONNECTION;
        let flows = u64::from(max_udp_flows);
        let config = available
            .checked_sub(connections + flows)
            .filter(|left| *left >= MIN_CONFIG_SHARE);
        let Some(config) = config else {
            let field = if proxy.max_connections.is_some() {
                "settings.proxy.maxConnections"
            } else {
                "settings.proxy.maxUdpFlows"
            };
            return Err(BudgetError {
                field: field.into(),
                message: format!(
                    "{max_connections} connections ({DESCRIPTORS_PER_CONNECTION} descriptors each) \
                     and {max_udp_flows} UDP flows need {} descriptors, but the descriptor limit \
                     (RLIMIT_NOFILE) is {descriptors}, of which {CONTROL_RESERVE} are kept for the \
                     edge itself and at least {MIN_CONFIG_SHARE} must be left for listeners and \
                     health probes; lower the setting or raise the limit (LimitNOFILE= in the \
                     systemd unit)",
                    connections + flows
                ),
            });
        };
        Ok(Budget {
            descriptors,
            max_connections,
            max_udp_flows,
            config,
        })
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} descriptors: {} for listeners and probes, {} connections, {} UDP flows",
            self.descriptors, self.config, self.max_connections, self.max_udp_flows
        )
    }
}

/// Shares out `descriptors` as the file's settings ask, and checks that the
/// file's own Services fit in what is left for listeners and probes; the
/// error names the first Service that does not (`services[i]`).
pub fn check_file(config: &EdgeConfig, descriptors: u64) -> Result<Budget, BudgetError> {
    let budget = Budget::derive(descriptors, &config.settings.proxy)?;
    let mut fitted = config.clone();
    if let Some(first) = fit(&mut fitted, 0, budget.config).first() {
        let index = config
            .services
            .iter()
            .position(|s| s.key == first.service)
            .unwrap_or_default();
        let total = cost(config);
        return Err(BudgetError {
            field: format!("services[{index}]"),
            message: format!(
                "{first}; the file's Services need {total} in all ({} descriptors), and the \
                 descriptor limit (RLIMIT_NOFILE) of {descriptors} leaves {} for them after the \
                 edge's own {CONTROL_RESERVE}, {} connections x {DESCRIPTORS_PER_CONNECTION} and \
                 {} UDP flows: raise the limit (LimitNOFILE= in the systemd unit), lower \
                 settings.proxy.maxConnections or maxUdpFlows, or split the Services over edges",
                total.total(),
                budget.config,
                budget.max_connections,
                budget.max_udp_flows,
            ),
        });
    }
    Ok(budget)
}

/// What a configuration spends: [`DESCRIPTORS_PER_LISTENER`] per listener
/// and one per health target (probes run at the same time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Listeners (VIP:port:protocol).
    pub listeners: u64,
    /// Health targets.
    pub probes: u64,
}

impl Cost {
    /// The descriptors the listeners and probes may hold.
    pub fn total(self) -> u64 {
        self.listeners * DESCRIPTORS_PER_LISTENER + self.probes
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} listeners and {} health probes",
            self.listeners, self.probes
        )
    }
}

/// What `config` spends.
pub fn cost(config: &EdgeConfig) -> Cost {
    let p = plan::plan(config);
    Cost {
        listeners: p.routes.len() as u64,
        probes: p.targets.len() as u64,
    }
}

/// A Service [`fit`] left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The Service.
    pub service: ServiceKey,
    /// What it would have spent.
    pub asked: Cost,
    /// What was left when its turn came.
    pub left: u64,
    /// The whole share of listeners and probes.
    pub budget: u64,
}

impl Refused {
    /// Why, without naming the Service.
    pub fn why(&self) -> String {
        format!(
            "its {} would pass this edge's descriptor budget ({} of {} left for listeners \
             and probes)",
            self.asked, self.left, self.budget
        )
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {}: not served: {}", self.service, self.why())
    }
}

/// Keeps `config` inside `budget` descriptors of listeners and probes.
/// Services are taken in order; the first `fixed` are always kept (the
/// config file's, checked on their own when the file is loaded), each later
/// one only if what it adds (its listeners, and the health targets no
/// earlier Service probes already) fits in what is left. A Service that
/// does not fit is left out whole; later, smaller ones may still fit.
pub fn fit(config: &mut EdgeConfig, fixed: usize, budget: u64) -> Vec<Refused> {
    let p = plan::plan(config);
    let demands = demands(&p);
    let mut spent = 0u64;
    let mut probed: BTreeSet<HealthTarget> = BTreeSet::new();
    let mut refused = Vec::new();
    let mut kept = BTreeSet::new();
    for (i, service) in config.services.iter().enumerate() {
        let key = service.key.clone();
        let Some(demand) = demands.get(&key) else {
            // Nothing planned (no port, or every listener lost a clash).
            kept.insert(key);
            continue;
        };
        let new_probes: BTreeSet<HealthTarget> =
            demand.targets.difference(&probed).copied().collect();
        let asked = Cost {
            listeners: demand.listeners.len() as u64,
            probes: new_probes.len() as u64,
        };
        let left = budget.saturating_sub(spent);
        if i < fixed || asked.total() <= left {
            spent += asked.total();
            probed.extend(new_probes);
            kept.insert(key);
        } else {
            refused.push(Refused {
                service: key,
                asked,
                left,
                budget,
            });
        }
    }
    if !refused.is_empty() {
        config.services.retain(|s| kept.contains(&s.key));
    }
    refused
}

/// What one Service's routes ask for.
#[derive(Default)]
struct Demand {
    listeners: BTreeSet<ListenerKey>,
    targets: BTreeSet<HealthTarget>,
}

fn demands(p: &Plan) -> BTreeMap<ServiceKey, Demand> {
    let mut by_service: BTreeMap<ServiceKey, Demand> = BTreeMap::new();
    for (key, route) in &p.routes {
        let d = by_service.entry(route.service.clone()).or_default();
        d.listeners.insert(*key);
        d.targets.extend(route.backends.iter().map(|b| b.health));
    }
    by_service
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::parse_edge_config;

    fn proxy(max_connections: Option<u32>, max_udp_flows: Option<u32>) -> ProxySettings {
        ProxySettings {
            max_connections,
            max_udp_flows,
            ..ProxySettings::default()
        }
    }

    #[test]
    fn defaults_take_a_share_of_small_limits_and_a_cap_of_large_ones() {
        let small = Budget::derive(1024, &ProxySettings::default()).unwrap();
        assert_eq!(small.max_connections, 42, "{small}");
        assert_eq!(small.max_udp_flows, 64, "{small}");
        assert_eq!(small.config, 1024 - 512 - 42 * 3 - 64);
        let large = Budget::derive(1 << 20, &ProxySettings::default()).unwrap();
        assert_eq!(large.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(large.max_udp_flows, DEFAULT_MAX_UDP_FLOWS);
        assert_eq!(
            large.config,
            (1 << 20) - 512 - u64::from(DEFAULT_MAX_CONNECTIONS) * 3 - 20_000
        );
    }

    #[test]
    fn a_setting_the_limit_cannot_honour_is_refused_naming_it() {
        let e = Budget::derive(65_536, &proxy(Some(30_000), None)).unwrap_err();
        assert_eq!(e.field, "settings.proxy.maxConnections");
        assert!(e.message.contains("RLIMIT_NOFILE) is 65536"), "{e}");
        let e = Budget::derive(65_536, &proxy(None, Some(70_000))).unwrap_err();
        assert_eq!(e.field, "settings.proxy.maxUdpFlows");
        assert!(Budget::derive(65_536, &proxy(Some(10_000), Some(10_000))).is_ok());
    }

    #[test]
    fn even_a_tiny_limit_gives_a_usable_budget_or_a_clear_refusal() {
        for limit in [0, 1, 512, 520, 600, 1024] {
            match Budget::derive(limit, &ProxySettings::default()) {
                Ok(b) => assert!(b.config >= MIN_CONFIG_SHARE && b.max_connections >= 1),
                Err(e) => assert!(e.message.contains(&limit.to_string()), "{e}"),
            }
        }
    }

    fn config(services: &[(&str, &str, u16)]) -> EdgeConfig {
        let mut yaml = String::from(
            "nodes:\n  - {name: n1, addresses: [192.0.2.1]}\n  - {name: n2, addresses: [192.0.2.2]}\nservices:\n",
        );
        for (name, vip, ports) in services {
            yaml.push_str(&format!(
                "  - name: {name}\n    vips: [{vip}]\n    ports:\n"
            ));
            for p in 0..*ports {
                yaml.push_str(&format!(
                    "      - {{name: p{p}, port: {}, nodePort: {}}}\n",
                    1000 + p,
                    30000 + p
                ));
            }
        }
        parse_edge_config(&yaml).unwrap()
    }

    #[test]
    fn the_cost_is_listeners_plus_shared_probes() {
        let c = config(&[("a", "198.51.100.1", 3), ("b", "198.51.100.2", 2)]);
        // Five listeners; both Services are Cluster, probing the two nodes'
        // kube-proxy health servers, shared.
        assert_eq!(
            cost(&c),
            Cost {
                listeners: 5,
                probes: 2
            }
        );
    }

    #[test]
    fn fit_keeps_the_fixed_and_earlier_services_and_leaves_out_what_does_not_fit() {
        let mut c = config(&[
            ("file", "198.51.100.1", 2),
            ("old", "198.51.100.2", 3),
            ("huge", "198.51.100.3", 50),
            ("small", "198.51.100.4", 1),
        ]);
        // Descriptors: file 2 x 2 + 2 probes; old 3 x 2; huge 50 x 2;
        // small 1 x 2.
        let refused = fit(&mut c, 1, 14);
        let names: Vec<_> = c.services.iter().map(|s| s.key.name.as_str()).collect();
        assert_eq!(names, ["file", "old", "small"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].service.name, "huge");
        assert_eq!(
            refused[0].asked,
            Cost {
                listeners: 50,
                probes: 0
            }
        );
        assert_eq!(refused[0].left, 2);
        let message = refused[0].to_string();
        assert!(message.contains("Service default/huge"), "{message}");
        assert!(message.contains("50 listeners"), "{message}");
    }

    #[test]
    fn fixed_services_are_kept_even_over_the_budget() {
        let mut c = config(&[("a", "198.51.100.1", 8), ("b", "198.51.100.2", 1)]);
        let refused = fit(&mut c, 1, 4);
        assert_eq!(c.services.len(), 1);
        assert_eq!(refused[0].service.name, "b");
        assert_eq!(refused[0].left, 0);
    }

    #[test]
    fn within_the_budget_nothing_changes() {
        let mut c = config(&[("a", "198.51.100.1", 2), ("b", "198.51.100.2", 2)]);
        let before = c.clone();
        assert!(fit(&mut c, 0, 10).is_empty());
        assert_eq!(c, before);
    }
}
