//! `settings:`: health checks, proxying, the VIP interface, the listen
//! addresses, the Kubernetes watch and the hook API (the address pools are
//! in `addresses`).

use std::net::SocketAddr;

use super::checks::{dns_label, duration_in, port, spelled, u32_in};
use super::{
    Validator, CONNECT_ATTEMPT_DELAY_RANGE, CONNECT_TIMEOUT_RANGE, DRAIN_TIMEOUT_RANGE,
    HEALTH_INTERVAL_RANGE, HEALTH_TIMEOUT_RANGE, IDLE_TIMEOUT_RANGE, LEASE_DURATION_RANGE,
    MAX_CONNECTIONS, MAX_CONNECT_RETRIES, MAX_MAGLEV_TABLE_SIZE, MIN_MAGLEV_TABLE_SIZE,
    UDP_IDLE_TIMEOUT_RANGE, WITHDRAW_GRACE_RANGE,
};
use crate::duration::format_duration;
use crate::file::{
    RawAnnounceSettings, RawHealthSettings, RawHookApiSettings, RawInt, RawKubernetesSettings,
    RawLeaderElection, RawNameOrBool, RawProxySettings, RawSettings,
};
use crate::kube::{quoted, NameRule};
use crate::model::{
    AnnounceSettings, EdgeSettings, HealthSettings, HookApiSettings, KubernetesSettings,
    LeaderElection, ProxySettings, SpliceMode, VipSettings,
};

impl Validator {
    /// `settings:`; `node_count` bounds the Maglev table size.
    pub(super) fn settings(&mut self, raw: &RawSettings, node_count: usize) -> EdgeSettings {
        let defaults = EdgeSettings::default();
        let health = self.health(raw.health.as_ref().unwrap_or(&RawHealthSettings::default()));
        let proxy = self.proxy(
            raw.proxy.as_ref().unwrap_or(&RawProxySettings::default()),
            node_count,
        );

        let interface = raw.vip.as_ref().and_then(|vip| vip.interface.as_deref());
        let interface = self
            .field("settings.vip.interface", interface, None, |s| {
                interface_name(s).map(|()| Some(s.to_string()))
            })
            .flatten();

        let announce = raw
            .announce
            .as_ref()
            .map(|a| self.announce(a, interface.as_deref()));

        let metrics = self.field(
            "settings.metricsListen",
            raw.metrics_listen.as_deref(),
            defaults.metrics_listen,
            socket_addr,
        );
        let admin = self.field(
            "settings.adminListen",
            raw.admin_listen.as_deref(),
            defaults.admin_listen,
            socket_addr,
        );
        if let (Some(metrics), Some(admin)) = (metrics, admin) {
            if metrics == admin && admin.port() != 0 {
                self.error(
                    "settings.adminListen",
                    format!("{admin} is also metricsListen; they must differ"),
                );
            }
        }

        let kubernetes = raw.kubernetes.as_ref().and_then(|k| self.kubernetes(k));
        let address_pools = self.address_pools(raw.address_pools.as_deref().unwrap_or_default());
        let hook_api = raw
            .hook_api
            .as_ref()
            .and_then(|h| self.hook_api(h, [metrics, admin]));
        if kubernetes.is_some() && hook_api.is_some() {
            // Each would assign addresses from the same pools without
            // knowing the other's; and both describe the same cluster.
            self.error(
                "settings.hookApi",
                "cannot be used together with settings.kubernetes: an edge takes a cluster's load balancers either from watching it or from its controller-manager, not both",
            );
        }

        EdgeSettings {
            health,
            proxy,
            vip: VipSettings { interface },
            announce,
            metrics_listen: metrics.unwrap_or(defaults.metrics_listen),
            admin_listen: admin.unwrap_or(defaults.admin_listen),
            kubernetes,
            address_pools,
            hook_api,
        }
    }

    fn kubernetes(&mut self, raw: &RawKubernetesSettings) -> Option<KubernetesSettings> {
        let d = KubernetesSettings::default();
        let class = self.field(
            "settings.kubernetes.loadBalancerClass",
            raw.load_balancer_class.as_deref(),
            d.load_balancer_class,
            |s| qualified_name(s).map(|()| s.to_string()),
        );
        let kubeconfig = self
            .field(
                "settings.kubernetes.kubeconfig",
                raw.kubeconfig.as_deref(),
                None,
                |s: &str| {
                    if s.is_empty() {
                        Err("must not be empty (leave it out to use KUBECONFIG or the in-cluster account)".to_string())
                    } else {
                        Ok(Some(std::path::PathBuf::from(s)))
                    }
                },
            )
            .flatten();
        let leader_election = match &raw.leader_election {
            None => d.leader_election,
            Some(raw) => self.leader_election(raw),
        };
        if raw.enabled == Some(false) {
            return None;
        }
        Some(KubernetesSettings {
            load_balancer_class: class?,
            default_class: raw.default_class.unwrap_or(false),
            kubeconfig,
            leader_election,
        })
    }

    /// `settings.kubernetes.leaderElection`; `None` when disabled.
    fn leader_election(&mut self, raw: &RawLeaderElection) -> Option<LeaderElection> {
        let d = LeaderElection::default();
        let name = |rule: NameRule| {
            move |s: &str| {
                rule.check(s)
                    .map(|()| s.to_string())
                    .map_err(|why| format!("{} {why}", quoted(s)))
            }
        };
        let namespace = self.field(
            "settings.kubernetes.leaderElection.namespace",
            raw.namespace.as_deref(),
            d.namespace.clone(),
            name(NameRule::Label),
        );
        let lease_name = self.field(
            "settings.kubernetes.leaderElection.leaseName",
            raw.lease_name.as_deref(),
            d.lease_name.clone(),
            name(NameRule::Subdomain),
        );
        let lease_duration = self.field(
            "settings.kubernetes.leaderElection.leaseDuration",
            raw.lease_duration.as_ref(),
            d.lease_duration,
            |v| {
                let duration = duration_in(v, LEASE_DURATION_RANGE)?;
                if duration.subsec_nanos() != 0 {
                    return Err(format!(
                        "{} is not a whole number of seconds (a Lease counts in seconds)",
                        format_duration(duration)
                    ));
                }
                Ok(duration)
            },
        );
        if raw.enabled == Some(false) {
            return None;
        }
        Some(LeaderElection {
            namespace: namespace.unwrap_or(d.namespace),
            lease_name: lease_name.unwrap_or(d.lease_name),
            lease_duration: lease_duration.unwrap_or(d.lease_duration),
        })
    }

    /// `settings.announce`; `vip_interface` is `settings.vip.interface`.
    fn announce(
        &mut self,
        raw: &RawAnnounceSettings,
        vip_interface: Option<&str>,
    ) -> AnnounceSettings {
        let d = AnnounceSettings::default();
        let table = self.field("settings.announce.table", raw.table.as_ref(), d.table, |v| {
            let table = u32_in(v, 1, u32::MAX)?;
            match table {
                253..=255 => Err(format!(
                    "{table} is one of the kernel's own tables (253 default, 254 main, 255 local); pick a table of the edge's own, such as {}",
                    d.table
                )),
                _ => Ok(table),
            }
        });
        let device = self
            .field(
                "settings.announce.device",
                raw.device.as_deref(),
                d.device.clone(),
                |s| interface_name(s).map(|()| s.to_string()),
            )
            .filter(|device| {
                let clash = vip_interface == Some(device.as_str());
                if clash {
                    self.error(
                        "settings.announce.device",
                        format!(
                            "{} is also settings.vip.interface; the edge creates this device for its routes alone",
                            quoted(device)
                        ),
                    );
                }
                !clash
            });
        let withdraw_grace = self.field(
            "settings.announce.withdrawGrace",
            raw.withdraw_grace.as_ref(),
            d.withdraw_grace,
            |v| duration_in(v, WITHDRAW_GRACE_RANGE),
        );
        let bird_socket = self.field(
            "settings.announce.birdSocket",
            raw.bird_socket.as_deref(),
            d.bird_socket.clone(),
            |s: &str| {
                if s.is_empty() {
                    Err(
                        "must not be empty (leave it out for BIRD's /run/bird/bird.ctl)"
                            .to_string(),
                    )
                } else {
                    Ok(std::path::PathBuf::from(s))
                }
            },
        );
        AnnounceSettings {
            bird_socket: bird_socket.unwrap_or(d.bird_socket),
            table: table.unwrap_or(d.table),
            device: device.unwrap_or(d.device),
            withdraw_when_no_healthy_node: raw
                .withdraw_when_no_healthy_node
                .unwrap_or(d.withdraw_when_no_healthy_node),
            withdraw_grace: withdraw_grace.unwrap_or(d.withdraw_grace),
        }
    }

    fn hook_api(
        &mut self,
        raw: &RawHookApiSettings,
        others: [Option<SocketAddr>; 2],
    ) -> Option<HookApiSettings> {
        let listen = match raw.listen.as_deref() {
            None => {
                self.error("settings.hookApi.listen", "is required (e.g. 0.0.0.0:9722)");
                None
            }
            Some(text) => self.check("settings.hookApi.listen", socket_addr(text)),
        };
        if let Some(listen) = listen {
            if listen.port() != 0 && others.contains(&Some(listen)) {
                self.error(
                    "settings.hookApi.listen",
                    format!("{listen} is also metricsListen or adminListen; nothing but the hook API may listen there"),
                );
            }
        }
        let mut path = |field: &str, value: Option<&str>| match value {
            None | Some("") => {
                self.error(
                    format!("settings.hookApi.{field}"),
                    "is required (a file path)",
                );
                None
            }
            Some(p) => Some(std::path::PathBuf::from(p)),
        };
        let token_file = path("tokenFile", raw.token_file.as_deref());
        let state_file = path("stateFile", raw.state_file.as_deref());
        Some(HookApiSettings {
            listen: listen?,
            token_file: token_file?,
            state_file: state_file?,
        })
    }

    fn health(&mut self, raw: &RawHealthSettings) -> HealthSettings {
        let d = HealthSettings::default();
        let p = |field: &str| format!("settings.health.{field}");
        let interval = self.field(&p("interval"), raw.interval.as_ref(), d.interval, |v| {
            duration_in(v, HEALTH_INTERVAL_RANGE)
        });
        let timeout = self.field(&p("timeout"), raw.timeout.as_ref(), d.timeout, |v| {
            duration_in(v, HEALTH_TIMEOUT_RANGE)
        });
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                self.error(
                    p("timeout"),
                    format!(
                        "{} must not be longer than interval ({})",
                        format_duration(timeout),
                        format_duration(interval)
                    ),
                );
            }
        }
        let rise = self.field(&p("rise"), raw.rise.as_ref(), d.rise, |v| u32_in(v, 1, 100));
        let fall = self.field(&p("fall"), raw.fall.as_ref(), d.fall, |v| u32_in(v, 1, 100));
        let cluster_check = self.field(
            &p("clusterCheck"),
            raw.cluster_check.as_deref(),
            d.cluster_check,
            spelled,
        );
        let kube_proxy_port = self.field(
            &p("kubeProxyPort"),
            raw.kube_proxy_port.as_ref(),
            d.kube_proxy_port,
            port,
        );
        let all_down = self.field(&p("allDown"), raw.all_down.as_deref(), d.all_down, spelled);
        HealthSettings {
            interval: interval.unwrap_or(d.interval),
            timeout: timeout.unwrap_or(d.timeout),
            rise: rise.unwrap_or(d.rise),
            fall: fall.unwrap_or(d.fall),
            cluster_check: cluster_check.unwrap_or(d.cluster_check),
            kube_proxy_port: kube_proxy_port.unwrap_or(d.kube_proxy_port),
            all_down: all_down.unwrap_or(d.all_down),
        }
    }

    fn proxy(&mut self, raw: &RawProxySettings, node_count: usize) -> ProxySettings {
        let d = ProxySettings::default();
        let p = |field: &str| format!("settings.proxy.{field}");
        let connect_timeout = self.field(
            &p("connectTimeout"),
            raw.connect_timeout.as_ref(),
            d.connect_timeout,
            |v| duration_in(v, CONNECT_TIMEOUT_RANGE),
        );
        let connect_retries = self.field(
            &p("connectRetries"),
            raw.connect_retries.as_ref(),
            d.connect_retries,
            |v| u32_in(v, 0, MAX_CONNECT_RETRIES),
        );
        let connect_attempt_delay = self.field(
            &p("connectAttemptDelay"),
            raw.connect_attempt_delay.as_ref(),
            d.connect_attempt_delay,
            |v| duration_in(v, CONNECT_ATTEMPT_DELAY_RANGE),
        );
        let idle_timeout = self.field(
            &p("idleTimeout"),
            raw.idle_timeout.as_ref(),
            d.idle_timeout,
            |v| duration_in(v, IDLE_TIMEOUT_RANGE),
        );
        let udp_idle_timeout = self.field(
            &p("udpIdleTimeout"),
            raw.udp_idle_timeout.as_ref(),
            d.udp_idle_timeout,
            |v| duration_in(v, UDP_IDLE_TIMEOUT_RANGE),
        );
        let drain_timeout = self.field(
            &p("drainTimeout"),
            raw.drain_timeout.as_ref(),
            d.drain_timeout,
            |v| duration_in(v, DRAIN_TIMEOUT_RANGE),
        );
        let maglev_table_size = self.field(
            &p("maglevTableSize"),
            raw.maglev_table_size.as_ref(),
            d.maglev_table_size,
            maglev_table_size,
        );
        let splice = self.field(&p("splice"), raw.splice.as_ref(), d.splice, splice_mode);
        let max_connections = raw
            .max_connections
            .as_ref()
            .and_then(|v| self.check(&p("maxConnections"), u32_in(v, 1, MAX_CONNECTIONS)));
        let max_udp_flows = raw
            .max_udp_flows
            .as_ref()
            .and_then(|v| self.check(&p("maxUdpFlows"), u32_in(v, 1, MAX_CONNECTIONS)));
        if let Some(size) = maglev_table_size {
            if usize::try_from(size).is_ok_and(|size| size <= node_count) {
                self.error(
                    p("maglevTableSize"),
                    format!(
                        "{size} must be larger than the number of nodes ({node_count}); \
                         a prime of at least 10 times the number of nodes is recommended"
                    ),
                );
            }
        }
        ProxySettings {
            connect_timeout: connect_timeout.unwrap_or(d.connect_timeout),
            connect_retries: connect_retries.unwrap_or(d.connect_retries),
            connect_attempt_delay: connect_attempt_delay.unwrap_or(d.connect_attempt_delay),
            idle_timeout: idle_timeout.unwrap_or(d.idle_timeout),
            udp_idle_timeout: udp_idle_timeout.unwrap_or(d.udp_idle_timeout),
            drain_timeout: drain_timeout.unwrap_or(d.drain_timeout),
            maglev_table_size: maglev_table_size.unwrap_or(d.maglev_table_size),
            splice: splice.unwrap_or(d.splice),
            max_connections,
            max_udp_flows,
        }
    }
}

/// `splice`: a mode's name, or a boolean (`true` is `always`, `false` is
/// `off`).
fn splice_mode(raw: &RawNameOrBool) -> Result<SpliceMode, String> {
    match raw {
        RawNameOrBool::Name(name) => spelled(name),
        RawNameOrBool::Bool(true) => Ok(SpliceMode::Always),
        RawNameOrBool::Bool(false) => Ok(SpliceMode::Off),
    }
}

/// A Kubernetes qualified name with a prefix, as `loadBalancerClass`
/// requires (`example.com/name`).
fn qualified_name(s: &str) -> Result<(), String> {
    let Some((prefix, name)) = s.split_once('/') else {
        return Err(format!(
            "{} must be a label-style name with a domain prefix, e.g. portico.io/edge",
            quoted(s)
        ));
    };
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 253
        && prefix.split('.').all(|label| dns_label(label).is_ok());
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if prefix_ok && name_ok {
        Ok(())
    } else {
        Err(format!("{} is not a valid qualified name (a DNS subdomain, '/', and a name of at most 63 letters, digits, '-', '_' or '.')", quoted(s)))
    }
}

/// A socket address such as `127.0.0.1:9720` or `[::1]:9720`.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{} is not a valid socket address (expected e.g. 127.0.0.1:9720 or [::1]:9720)",
            quoted(text)
        )
    })
}

/// A Linux network interface name (`dev_valid_name`): 1-15 bytes, not `.`
/// or `..`, no '/', ':' or whitespace.
fn interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.len() > 15 {
        return Err(format!(
            "{} is not a valid interface name: it is longer than 15 characters",
            quoted(s)
        ));
    }
    if s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(format!("{} is not a valid interface name: '/', ':', whitespace, \".\" and \"..\" are not allowed", quoted(s)));
    }
    Ok(())
}

/// A Maglev table size: a prime in `MIN..=MAX`.
fn maglev_table_size(v: &RawInt) -> Result<u32, String> {
    let size = u32_in(v, MIN_MAGLEV_TABLE_SIZE, MAX_MAGLEV_TABLE_SIZE)?;
    if !is_prime(size) {
        return Err(format!(
            "{size} is not a prime (the next prime is {})",
            next_prime(size)
        ));
    }
    Ok(size)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn next_prime(mut n: u32) -> u32 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{assert_problems, valid};
    use crate::model::{
        AllDownPolicy, ClusterHealthCheck, EdgeConfig, HealthSettings, KubernetesSettings,
        ProxySettings, SpliceMode,
    };

    #[test]
    fn kubernetes_section_enables_the_watch_with_defaults() {
        let config = valid("settings:\n  kubernetes: {}\n");
        assert_eq!(
            config.settings.kubernetes,
            Some(KubernetesSettings::default())
        );
        assert_eq!(valid("{}").settings.kubernetes, None);
        assert_eq!(
            valid("settings:\n  kubernetes:\n    enabled: false\n")
                .settings
                .kubernetes,
            None
        );
        let custom = valid(
            "settings:\n  kubernetes:\n    loadBalancerClass: example.com/lb\n    defaultClass: true\n    kubeconfig: /etc/k.yaml\n",
        )
        .settings
        .kubernetes
        .expect("enabled");
        assert_eq!(custom.load_balancer_class, "example.com/lb");
        assert!(custom.default_class);
        assert_eq!(
            custom.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/k.yaml"))
        );
    }

    #[test]
    fn load_balancer_class_must_be_a_qualified_name() {
        for bad in [
            "edge",
            "Example.com/x",
            "example.com/",
            "/x",
            "example.com/-x",
        ] {
            assert_problems(
                &format!("settings:\n  kubernetes:\n    loadBalancerClass: {bad:?}\n"),
                &[("settings.kubernetes.loadBalancerClass", bad)],
            );
        }
    }

    #[test]
    fn the_hook_api_and_the_watch_exclude_each_other() {
        assert_problems(
            "settings:\n  kubernetes: {}\n  hookApi:\n    listen: 0.0.0.0:9722\n    tokenFile: /t\n    stateFile: /s\n",
            &[("settings.hookApi", "cannot be used together with settings.kubernetes")],
        );
    }

    #[test]
    fn leader_election_is_on_by_default_and_checked() {
        let on = valid("settings: {kubernetes: {}}")
            .settings
            .kubernetes
            .expect("watch");
        assert_eq!(on.leader_election, Some(crate::LeaderElection::default()));
        let off = valid("settings: {kubernetes: {leaderElection: {enabled: false}}}")
            .settings
            .kubernetes
            .expect("watch");
        assert_eq!(off.leader_election, None);
        let custom = valid(
            "settings:\n  kubernetes:\n    leaderElection:\n      namespace: portico-system\n      leaseName: edges.example\n      leaseDuration: 10s\n",
        )
        .settings
        .kubernetes
        .and_then(|k| k.leader_election)
        .expect("on");
        assert_eq!(
            (custom.namespace.as_str(), custom.lease_name.as_str()),
            ("portico-system", "edges.example")
        );
        assert_eq!(custom.lease_duration, std::time::Duration::from_secs(10));
        assert_problems(
            "settings:\n  kubernetes:\n    leaderElection:\n      namespace: Kube_System\n      leaseName: -x\n      leaseDuration: 1500ms\n",
            &[
                ("settings.kubernetes.leaderElection.namespace", "not a DNS label"),
                ("settings.kubernetes.leaderElection.leaseName", "-x"),
                ("settings.kubernetes.leaderElection.leaseDuration", "outside 3s-5m"),
            ],
        );
        assert_problems(
            "settings: {kubernetes: {leaderElection: {leaseDuration: 4500ms}}}",
            &[(
                "settings.kubernetes.leaderElection.leaseDuration",
                "whole number of seconds",
            )],
        );
    }

    #[test]
    fn announce_settings_have_defaults_and_bounds() {
        assert_eq!(valid("settings: {}").settings.announce, None);
        let on = valid("settings: {announce: {}}").settings.announce;
        assert_eq!(on, Some(crate::AnnounceSettings::default()));
        let set = valid(
            "settings:\n  vip: {interface: lo}\n  announce:\n    table: 100\n    device: vips0\n    withdrawWhenNoHealthyNode: true\n    withdrawGrace: 500ms\n",
        )
        .settings
        .announce
        .expect("announce on");
        assert_eq!(
            (
                set.table,
                set.device.as_str(),
                set.withdraw_when_no_healthy_node
            ),
            (100, "vips0", true)
        );
        assert_eq!(set.withdraw_grace, std::time::Duration::from_millis(500));
        assert_problems(
            "settings:\n  vip: {interface: lo}\n  announce:\n    table: 254\n    device: lo\n    withdrawGrace: 2m\n",
            &[
                ("settings.announce.table", "kernel's own tables"),
                ("settings.announce.device", "also settings.vip.interface"),
                ("settings.announce.withdrawGrace", "outside 0s-1m"),
            ],
        );
        assert_problems(
            "settings: {announce: {table: 0, device: 'a/b'}}",
            &[
                ("settings.announce.table", "outside 1-4294967295"),
                ("settings.announce.device", "not a valid interface name"),
            ],
        );
    }

    #[test]
    fn hook_api_needs_its_own_listen_address_and_files() {
        let hook = valid(
            "settings:\n  hookApi:\n    listen: 0.0.0.0:9722\n    tokenFile: /etc/portico/token\n    stateFile: /var/lib/portico/hook.json\n",
        )
        .settings
        .hook_api
        .expect("hook API on");
        assert_eq!(hook.listen, "0.0.0.0:9722".parse().unwrap());
        assert_eq!(hook.token_file, std::path::Path::new("/etc/portico/token"));
        assert_problems(
            "settings:\n  adminListen: 127.0.0.1:9721\n  hookApi:\n    listen: 127.0.0.1:9721\n",
            &[
                ("settings.hookApi.listen", "nothing but the hook API"),
                ("settings.hookApi.tokenFile", "is required"),
                ("settings.hookApi.stateFile", "is required"),
            ],
        );
    }

    #[test]
    fn absent_settings_are_the_model_defaults() {
        assert_eq!(valid("{}"), EdgeConfig::default());
        assert_eq!(valid("settings: {}"), EdgeConfig::default());
        assert_eq!(
            valid("settings: {health: {}, proxy: {}, vip: {}}"),
            EdgeConfig::default()
        );
    }

    #[test]
    fn every_setting_is_read() {
        let yaml = "
settings:
  health:
    interval: 3s
    timeout: 1500ms
    rise: 3
    fall: 5
    clusterCheck: tcp-node-port
    kubeProxyPort: 10257
    allDown: fail-closed
  proxy:
    connectTimeout: 1s
    connectRetries: 0
    connectAttemptDelay: 100ms
    idleTimeout: 1h30m
    udpIdleTimeout: 45s
    drainTimeout: 0
    maglevTableSize: 251
    splice: true
    maxConnections: 5000
    maxUdpFlows: 700
  vip:
    interface: eth0
  metricsListen: '[::1]:9100'
  adminListen: 0.0.0.0:9101
";
        let s = valid(yaml).settings;
        assert_eq!(
            s.health,
            HealthSettings {
                interval: Duration::from_secs(3),
                timeout: Duration::from_millis(1500),
                rise: 3,
                fall: 5,
                cluster_check: ClusterHealthCheck::TcpNodePort,
                kube_proxy_port: 10257,
                all_down: AllDownPolicy::FailClosed,
            }
        );
        assert_eq!(
            s.proxy,
            ProxySettings {
                connect_timeout: Duration::from_secs(1),
                connect_retries: 0,
                connect_attempt_delay: Duration::from_millis(100),
                idle_timeout: Duration::from_secs(5400),
                udp_idle_timeout: Duration::from_secs(45),
                drain_timeout: Duration::ZERO,
                maglev_table_size: 251,
                splice: SpliceMode::Always,
                max_connections: Some(5000),
                max_udp_flows: Some(700),
            }
        );
        assert_eq!(s.vip.interface.as_deref(), Some("eth0"));
        assert_eq!(s.metrics_listen, "[::1]:9100".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:9101".parse().unwrap());
    }

    #[test]
    fn splice_is_auto_unless_set_and_takes_names_or_booleans() {
        let mode = |yaml: &str| valid(yaml).settings.proxy.splice;
        assert_eq!(mode("settings: {proxy: {}}"), SpliceMode::Auto);
        assert_eq!(mode("settings: {proxy: {splice: auto}}"), SpliceMode::Auto);
        assert_eq!(
            mode("settings: {proxy: {splice: always}}"),
            SpliceMode::Always
        );
        assert_eq!(
            mode("settings: {proxy: {splice: true}}"),
            SpliceMode::Always
        );
        assert_eq!(mode("settings: {proxy: {splice: off}}"), SpliceMode::Off);
        assert_eq!(mode("settings: {proxy: {splice: false}}"), SpliceMode::Off);
        assert_problems(
            "settings: {proxy: {splice: sometimes}}",
            &[(
                "settings.proxy.splice",
                "unknown splice \"sometimes\" (expected off, auto or always)",
            )],
        );
        assert_problems(
            "settings: {proxy: {splice: 3}}",
            &[("settings.proxy.splice", "a name or a boolean")],
        );
    }

    #[test]
    fn interval_and_timeout_are_within_their_ranges() {
        assert_problems(
            "settings: {health: {interval: 0s, timeout: 0}}",
            &[
                ("settings.health.interval", "0s is outside 100ms-1h"),
                ("settings.health.timeout", "0s is outside 10ms-1h"),
            ],
        );
        assert_problems(
            "settings: {health: {interval: 1ms}}",
            &[("settings.health.interval", "1ms is outside 100ms-1h")],
        );
        assert_problems(
            "settings: {health: {interval: 876000h, timeout: 9999999999}}",
            &[
                ("settings.health.interval", "876000h is outside 100ms-1h"),
                (
                    "settings.health.timeout",
                    "2777777h46m39s is outside 10ms-1h",
                ),
            ],
        );
        assert_problems(
            "settings: {health: {interval: -2, timeout: 1x}}",
            &[
                ("settings.health.interval", "-2 is not a valid duration"),
                ("settings.health.timeout", r#""1x" is not a valid duration"#),
            ],
        );
        let h = valid("settings: {health: {interval: 100ms, timeout: 10ms}}")
            .settings
            .health;
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_millis(100), Duration::from_millis(10))
        );
        valid("settings: {health: {interval: 1h, timeout: 1h}}");
    }

    #[test]
    fn every_proxy_duration_has_its_range() {
        for (field, low, high, range) in [
            ("connectTimeout", "9ms", "5m1ms", "10ms-5m"),
            ("connectAttemptDelay", "-1", "1m1ms", "0s-1m"),
            ("idleTimeout", "999ms", "168h1ms", "1s-168h"),
            ("udpIdleTimeout", "999ms", "24h1ms", "1s-24h"),
            ("drainTimeout", "-1", "1h1ms", "0s-1h"),
        ] {
            let path = format!("settings.proxy.{field}");
            if low != "-1" {
                assert_problems(
                    &format!("settings: {{proxy: {{{field}: {low}}}}}"),
                    &[(&path, &format!("{low} is outside {range}"))],
                );
            }
            assert_problems(
                &format!("settings: {{proxy: {{{field}: {high}}}}}"),
                &[(&path, &format!("{high} is outside {range}"))],
            );
            let (min, max) = range.split_once('-').expect("a range");
            valid(&format!("settings: {{proxy: {{{field}: {min}}}}}"));
            valid(&format!("settings: {{proxy: {{{field}: {max}}}}}"));
        }
    }

    #[test]
    fn timeout_must_not_exceed_interval() {
        assert_problems(
            "settings: {health: {interval: 1s, timeout: 1500ms}}",
            &[(
                "settings.health.timeout",
                "1s500ms must not be longer than interval (1s)",
            )],
        );
        // Against the default interval (2s) too.
        assert_problems(
            "settings: {health: {timeout: 3s}}",
            &[("settings.health.timeout", "interval (2s)")],
        );
        valid("settings: {health: {interval: 1s, timeout: 1s}}");
    }

    #[test]
    fn rise_and_fall_are_1_to_100() {
        assert_problems(
            "settings: {health: {rise: 0, fall: 101}}",
            &[
                ("settings.health.rise", "0 is outside 1-100"),
                ("settings.health.fall", "101 is outside 1-100"),
            ],
        );
        valid("settings: {health: {rise: 1, fall: 100}}");
    }

    #[test]
    fn health_choices_and_kube_proxy_port_are_checked() {
        assert_problems(
            "settings: {health: {clusterCheck: http, kubeProxyPort: 0, allDown: Fail-Open}}",
            &[
                (
                    "settings.health.clusterCheck",
                    r#"unknown clusterCheck "http" (expected kube-proxy or tcp-node-port)"#,
                ),
                ("settings.health.kubeProxyPort", "0 is outside 1-65535"),
                ("settings.health.allDown", r#"did you mean "fail-open"?"#),
            ],
        );
    }

    #[test]
    fn proxy_timeouts_must_be_positive_but_drain_may_be_zero() {
        assert_problems(
            "settings: {proxy: {connectTimeout: 0ms, idleTimeout: 0, drainTimeout: 0s}}",
            &[
                ("settings.proxy.connectTimeout", "0s is outside 10ms-5m"),
                ("settings.proxy.idleTimeout", "0s is outside 1s-168h"),
            ],
        );
        assert_problems(
            "settings: {proxy: {drainTimeout: -1}}",
            &[("settings.proxy.drainTimeout", "must not be negative")],
        );
    }

    #[test]
    fn connection_and_flow_caps_are_positive_and_bounded() {
        assert_problems(
            "settings: {proxy: {maxConnections: 0, maxUdpFlows: 10000001}}",
            &[
                ("settings.proxy.maxConnections", "0 is outside 1-10000000"),
                (
                    "settings.proxy.maxUdpFlows",
                    "10000001 is outside 1-10000000",
                ),
            ],
        );
        let unset = valid("settings: {proxy: {}}").settings.proxy;
        assert_eq!((unset.max_connections, unset.max_udp_flows), (None, None));
    }

    #[test]
    fn connect_retries_are_0_to_16() {
        assert_problems(
            "settings: {proxy: {connectRetries: 17}}",
            &[("settings.proxy.connectRetries", "17 is outside 0-16")],
        );
        assert_problems(
            "settings: {proxy: {connectRetries: -1}}",
            &[("settings.proxy.connectRetries", "-1 is outside 0-16")],
        );
        assert_problems(
            "settings: {proxy: {connectRetries: 1e30}}",
            &[("settings.proxy.connectRetries", "1e30 is outside 0-16")],
        );
        assert_eq!(
            valid("settings: {proxy: {connectRetries: 16}}")
                .settings
                .proxy
                .connect_retries,
            16
        );
    }

    #[test]
    fn maglev_table_size_is_a_prime_in_range() {
        assert_problems(
            "settings: {proxy: {maglevTableSize: 65536}}",
            &[(
                "settings.proxy.maglevTableSize",
                "65536 is not a prime (the next prime is 65537)",
            )],
        );
        assert_problems(
            "settings: {proxy: {maglevTableSize: 5}}",
            &[("settings.proxy.maglevTableSize", "5 is outside 7-1000003")],
        );
        assert_problems(
            "settings: {proxy: {maglevTableSize: 1000033}}",
            &[(
                "settings.proxy.maglevTableSize",
                "1000033 is outside 7-1000003",
            )],
        );
        valid("settings: {proxy: {maglevTableSize: 7}}");
        valid("settings: {proxy: {maglevTableSize: 1000003}}");
    }

    #[test]
    fn maglev_table_size_must_exceed_the_node_count() {
        let nodes: String = (0..7)
            .map(|i| format!("  - {{name: n{i}, addresses: [10.0.0.{}]}}\n", i + 1))
            .collect();
        assert_problems(
            &format!("settings: {{proxy: {{maglevTableSize: 7}}}}\nnodes:\n{nodes}"),
            &[(
                "settings.proxy.maglevTableSize",
                "7 must be larger than the number of nodes (7)",
            )],
        );
        valid(&format!(
            "settings: {{proxy: {{maglevTableSize: 11}}}}\nnodes:\n{nodes}"
        ));
    }

    #[test]
    fn listen_addresses_are_socket_addresses_and_differ() {
        assert_problems(
            "settings: {metricsListen: 'localhost:9720', adminListen: 127.0.0.1}",
            &[
                (
                    "settings.metricsListen",
                    r#""localhost:9720" is not a valid socket address"#,
                ),
                (
                    "settings.adminListen",
                    r#""127.0.0.1" is not a valid socket address"#,
                ),
            ],
        );
        assert_problems(
            "settings: {metricsListen: '127.0.0.1:9000', adminListen: '127.0.0.1:9000'}",
            &[(
                "settings.adminListen",
                "127.0.0.1:9000 is also metricsListen",
            )],
        );
        // Port 0 (pick any free port) may be shared.
        valid("settings: {metricsListen: '127.0.0.1:0', adminListen: '127.0.0.1:0'}");
    }

    #[test]
    fn vip_interface_is_a_linux_interface_name() {
        for good in ["eth0", "bond0.100", "a", "enp0s31f6-abcde"] {
            let config = valid(&format!("settings: {{vip: {{interface: '{good}'}}}}"));
            assert_eq!(config.settings.vip.interface.as_deref(), Some(good));
        }
        for (bad, part) in [
            ("", "must not be empty"),
            ("enp0s31f6-abcdef", "longer than 15"),
            ("eth/0", "not a valid interface name"),
            ("eth 0", "not a valid interface name"),
            ("eth0:1", "not a valid interface name"),
            ("..", "not a valid interface name"),
        ] {
            assert_problems(
                &format!("settings: {{vip: {{interface: '{bad}'}}}}"),
                &[("settings.vip.interface", part)],
            );
        }
    }
}
