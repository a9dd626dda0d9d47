//! The contenders: what each one is, the configuration it runs with
//! (rendered here, checked by the tests), and how it is started in the lb
//! namespace for one run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::command::{installed, pinned};
use crate::procs::{self, Spawned};

use super::topology::{create_dir, nft, write};
use super::{Bench, BenchError, HEALTH_PORT, NODES, NODE_PORT, VIP, VIP_PORT};

/// A balancer under test (or none, for `direct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// Client to node 1, forwarded by the lb namespace's kernel: the ceiling.
    Direct,
    /// `portico-edge run`, one worker thread.
    Portico,
    /// A second edge binary ([`BenchOptions::edge_bin_b`](super::BenchOptions::edge_bin_b), say another
    /// branch), run the same way in the same rounds.
    PorticoB,
    /// HAProxy `mode tcp`, `check`, one thread, splice-auto, redispatch.
    Haproxy,
    /// nginx `stream`, one worker.
    Nginx,
    /// nftables DNAT + SNAT in the lb namespace, no health checks.
    Nftables,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 6] = [
        Contender::Direct,
        Contender::Portico,
        Contender::PorticoB,
        Contender::Haproxy,
        Contender::Nginx,
        Contender::Nftables,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Portico => "portico",
            Contender::PorticoB => "portico-b",
            Contender::Haproxy => "haproxy",
            Contender::Nginx => "nginx",
            Contender::Nftables => "nftables",
        }
    }

    /// The contender called `name`.
    pub fn parse(name: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The program it needs that is not installed, if any.
    pub fn missing_program(self) -> Option<&'static str> {
        let program = match self {
            Contender::Direct | Contender::Portico | Contender::PorticoB => return None,
            Contender::Haproxy => "haproxy",
            Contender::Nginx => "nginx",
            Contender::Nftables => "nft",
        };
        (!installed(program)).then_some(program)
    }

    /// Where the client connects.
    pub(super) fn target(self) -> SocketAddr {
        match self {
            Contender::Direct => SocketAddr::new(NODES[0].into(), NODE_PORT),
            _ => SocketAddr::new(VIP.into(), VIP_PORT),
        }
    }

    /// How many nodes must have answered before it counts as ready.
    pub(super) fn nodes_reached(self) -> usize {
        match self {
            Contender::Direct => 1,
            _ => NODES.len(),
        }
    }
}

impl std::fmt::Display for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Bench {
    /// Starts `contender` in the lb namespace for the run `name` (nothing
    /// to start for `direct`; a ruleset to load for nftables, SNAT to
    /// `lb_src`).
    pub(super) fn start_contender(
        &self,
        contender: Contender,
        lb_src: Ipv4Addr,
        name: &str,
    ) -> Result<Option<Spawned>, BenchError> {
        let state = &self.opts.state_dir;
        let lb = self.ns("lb");
        let cpu = self.opts.balancer_cpu.map(|c| c.to_string());
        let (program, args) = match contender {
            Contender::Direct => return Ok(None),
            Contender::Nftables => {
                nft(&lb, &["-f", "-"], Some(&nftables_ruleset(lb_src)))?;
                return Ok(None);
            }
            Contender::Portico | Contender::PorticoB => {
                let conf = state.join(format!("{name}.yaml"));
                write(&conf, &portico_config())?;
                let socket = state.join("run").join(format!("{name}.sock"));
                let mut args = vec![
                    "run".to_string(),
                    "--config".into(),
                    conf.display().to_string(),
                    "--upgrade-socket".into(),
                    socket.display().to_string(),
                    "--threads".into(),
                    "1".into(),
                ];
                let bin = match (contender, &self.opts.edge_bin_b) {
                    (Contender::PorticoB, Some(b)) => b,
                    _ => &self.opts.edge_bin,
                };
                let edge = bin.display().to_string();
                args.insert(0, edge);
                let program = args.remove(0);
                pinned(cpu.as_deref(), &program, &args)
            }
            Contender::Haproxy => {
                let conf = state.join(format!("{name}.cfg"));
                write(&conf, &haproxy_conf())?;
                pinned(
                    cpu.as_deref(),
                    "haproxy",
                    &["-db".into(), "-f".into(), conf.display().to_string()],
                )
            }
            Contender::Nginx => {
                let dir = state.join(name);
                create_dir(&dir.join("logs"))?;
                let conf = dir.join("nginx.conf");
                write(&conf, &stream_nginx_conf(&dir))?;
                pinned(
                    cpu.as_deref(),
                    "nginx",
                    &[
                        "-p".into(),
                        format!("{}/", dir.display()),
                        "-c".into(),
                        conf.display().to_string(),
                        "-e".into(),
                        "stderr".into(),
                    ],
                )
            }
        };
        let spawned = procs::spawn(state, name, &lb, Path::new(&program), &args)?;
        Ok(Some(spawned))
    }
}

/// HAProxy's documented set-up for a TCP balancer on one core: one thread,
/// active checks (1 s, fall 2, rise 2; HTTP `GET /healthz` on the nodes'
/// health port, as Portico's kube-proxy check), a failed connect retried
/// elsewhere (`option redispatch`), kernel splicing where it pays
/// (`splice-auto`).
fn haproxy_conf() -> String {
    let servers: String = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "  server node-{} {ip}:{NODE_PORT} check port {HEALTH_PORT} inter 1s fall 2 rise 2\n",
                i + 1
            )
        })
        .collect();
    format!(
        "global
  nbthread 1
  maxconn 7000
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  retries 2
  option redispatch
  option splice-auto
frontend vip
  bind {VIP}:{VIP_PORT}
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /healthz
{servers}"
    )
}

/// nginx `stream` on one worker (passive health: a failed connect takes the
/// node out for 10 s and the next one is tried).
fn stream_nginx_conf(dir: &Path) -> String {
    let dir = dir.display();
    let servers: String = NODES
        .iter()
        .map(|ip| format!("    server {ip}:{NODE_PORT} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    let load = if Path::new(module).is_file() {
        format!("load_module {module};\n")
    } else {
        String::new()
    };
    format!(
        "{load}user root;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 16384; }}
stream {{
  upstream nodes {{
{servers}  }}
  server {{
    listen {VIP}:{VIP_PORT} backlog=16384;
    proxy_pass nodes;
    proxy_connect_timeout 2s;
    proxy_timeout 1h;
    proxy_next_upstream on;
  }}
}}
"
    )
}

/// The edge's config file: the two nodes, health checks on (kube-proxy's:
/// HTTP `GET /healthz` on the nodes' [`HEALTH_PORT`], as HAProxy's
/// `check`), same intervals as HAProxy.
pub fn portico_config() -> String {
    let nodes: String = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("  - name: node-{}\n    addresses: [{ip}]\n", i + 1))
        .collect();
    format!(
        "settings:
  health:
    interval: 1s
    timeout: 500ms
    rise: 2
    fall: 2
    clusterCheck: kube-proxy
    kubeProxyPort: {HEALTH_PORT}
  proxy:
    connectTimeout: 2s
    connectRetries: 2
    drainTimeout: 1s
  metricsListen: 127.0.0.1:9720
  adminListen: 127.0.0.1:9721
nodes:
{nodes}services:
  - namespace: default
    name: bench
    vips: [{VIP}]
    ports:
      - name: http
        protocol: TCP
        port: {VIP_PORT}
        nodePort: {NODE_PORT}
"
    )
}

/// DNAT to the nodes in turn, SNAT to the run's fresh address.
fn nftables_ruleset(snat: Ipv4Addr) -> String {
    let map: Vec<String> = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{i} : {ip}"))
        .collect();
    let nodes: Vec<String> = NODES.iter().map(|ip| ip.to_string()).collect();
    format!(
        "table ip pbench {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} tcp dport {VIP_PORT} dnat to numgen inc mod {} map {{ {} }} : {NODE_PORT}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr {{ {} }} tcp dport {NODE_PORT} ct status dnat snat to {snat}
  }}
}}
",
        NODES.len(),
        map.join(", "),
        nodes.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_both_nodes() {
        for text in [
            haproxy_conf(),
            stream_nginx_conf(Path::new("/x")),
            portico_config(),
            nftables_ruleset(Ipv4Addr::new(10, 92, 1, 10)),
        ] {
            for node in NODES {
                assert!(text.contains(&node.to_string()), "{text}");
            }
        }
    }
}
