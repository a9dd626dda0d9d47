//! The contenders: what each one is, the configuration it runs with
//! (rendered here, checked by the tests), and how it is started in the lb
//! namespace for one run.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::command::{installed, pinned};
use crate::procs::{self, Spawned};

use super::topology::{create_dir, nft, write};
use super::{Addrs, Bench, BenchError, HEALTH_PORT, NODES, NODE_PORT, VIP_PORT};

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

    /// Where the client connects, in the family of `addrs`.
    pub(super) fn target(self, addrs: Addrs) -> SocketAddr {
        match self {
            Contender::Direct => SocketAddr::new(addrs.nodes()[0], NODE_PORT),
            _ => SocketAddr::new(addrs.vip(), VIP_PORT),
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
        lb_src: IpAddr,
        name: &str,
    ) -> Result<Option<Spawned>, BenchError> {
        let state = &self.opts.state_dir;
        let addrs = self.opts.addrs();
        let lb = self.ns("lb");
        let cpu = self.opts.balancer_cpu.map(|c| c.to_string());
        let (program, args) = match contender {
            Contender::Direct => return Ok(None),
            Contender::Nftables => {
                nft(&lb, &["-f", "-"], Some(&nftables_ruleset(addrs, lb_src)))?;
                return Ok(None);
            }
            Contender::Portico | Contender::PorticoB => {
                let conf = state.join(format!("{name}.yaml"));
                write(&conf, &portico_config(addrs))?;
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
                write(&conf, &haproxy_conf(addrs))?;
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
                write(&conf, &stream_nginx_conf(&dir, addrs))?;
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
/// (`splice-auto`). Addresses in the family of `addrs` (IPv6 ones in
/// brackets).
fn haproxy_conf(addrs: Addrs) -> String {
    let servers: String = addrs
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "  server node-{} {} check port {HEALTH_PORT} inter 1s fall 2 rise 2\n",
                i + 1,
                SocketAddr::new(*ip, NODE_PORT)
            )
        })
        .collect();
    let vip = SocketAddr::new(addrs.vip(), VIP_PORT);
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
  bind {vip}
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /healthz
{servers}"
    )
}

/// nginx `stream` on one worker (passive health: a failed connect takes the
/// node out for 10 s and the next one is tried). Addresses in the family of
/// `addrs` (IPv6 ones in brackets).
fn stream_nginx_conf(dir: &Path, addrs: Addrs) -> String {
    let dir = dir.display();
    let servers: String = addrs
        .nodes()
        .iter()
        .map(|ip| {
            let node = SocketAddr::new(*ip, NODE_PORT);
            format!("    server {node} max_fails=1 fail_timeout=10s;\n")
        })
        .collect();
    let vip = SocketAddr::new(addrs.vip(), VIP_PORT);
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
    listen {vip} backlog=16384;
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
/// `check`), same intervals as HAProxy; the VIP and the nodes in the family
/// of `addrs`.
pub fn portico_config(addrs: Addrs) -> String {
    let nodes: String = addrs
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("  - name: node-{}\n    addresses: [\"{ip}\"]\n", i + 1))
        .collect();
    let vip = addrs.vip();
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
    vips: [\"{vip}\"]
    ports:
      - name: http
        protocol: TCP
        port: {VIP_PORT}
        nodePort: {NODE_PORT}
"
    )
}

/// The nftables contender's table, in the lb namespace (family
/// [`Addrs::nft`]).
pub(super) const NFT_TABLE: &str = "pbench";

/// DNAT to the nodes in turn, SNAT to the run's fresh address; in the
/// family of `addrs` (`table ip6`, `dnat ip6 to`).
fn nftables_ruleset(addrs: Addrs, snat: IpAddr) -> String {
    let nodes = addrs.nodes();
    let map: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{i} : {ip}"))
        .collect();
    let nodes: Vec<String> = nodes.iter().map(|ip| ip.to_string()).collect();
    let (f, vip) = (addrs.nft(), addrs.vip());
    format!(
        "table {f} {NFT_TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {f} daddr {vip} tcp dport {VIP_PORT} dnat {f} to numgen inc mod {} map {{ {} }} : {NODE_PORT}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {f} daddr {{ {} }} tcp dport {NODE_PORT} ct status dnat snat {f} to {snat}
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
    use crate::bench::IpFamily;

    #[test]
    fn configs_name_both_nodes_in_either_family() {
        for addrs in [Addrs(IpFamily::V4), Addrs(IpFamily::V6)] {
            let snat = addrs.of(std::net::Ipv4Addr::new(10, 92, 1, 10));
            for text in [
                haproxy_conf(addrs),
                stream_nginx_conf(Path::new("/x"), addrs),
                portico_config(addrs),
                nftables_ruleset(addrs, snat),
            ] {
                for node in addrs.nodes() {
                    assert!(text.contains(&node.to_string()), "{text}");
                }
                assert!(text.contains(&addrs.vip().to_string()), "{text}");
            }
        }
    }

    #[test]
    fn ipv6_configs_bracket_their_addresses() {
        let addrs = Addrs(IpFamily::V6);
        let haproxy = haproxy_conf(addrs);
        assert!(haproxy.contains("bind [2001:db8:113::10]:80"), "{haproxy}");
        assert!(
            haproxy.contains("server node-2 [fd00:92::12]:30080"),
            "{haproxy}"
        );
        let nginx = stream_nginx_conf(Path::new("/x"), addrs);
        assert!(nginx.contains("listen [2001:db8:113::10]:80"), "{nginx}");
        assert!(nginx.contains("server [fd00:92::11]:30080"), "{nginx}");
        let nft = nftables_ruleset(addrs, "fd00:92::1:10".parse().unwrap());
        assert!(nft.starts_with("table ip6 pbench"), "{nft}");
        assert!(
            nft.contains("ip6 daddr 2001:db8:113::10 tcp dport 80 dnat ip6 to"),
            "{nft}"
        );
        assert!(nft.contains("snat ip6 to fd00:92::1:10"), "{nft}");
        let v4 = nftables_ruleset(Addrs(IpFamily::V4), "10.92.1.10".parse().unwrap());
        assert!(
            v4.contains("ip daddr 203.0.113.10 tcp dport 80 dnat ip to"),
            "{v4}"
        );
    }
}
