//! The bench's namespaces and backends: [`Bench::up`] builds the client,
//! the lb (the balancer's namespace, with the VIP) and two nodes running
//! nginx; each run gets fresh source addresses
//! (`Bench::fresh_sources`); [`Bench::teardown`], dropping the [`Bench`],
//! or [`down`] removes them again.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::command::{self, pinned, raise_open_files};
use crate::netns::{self, ip_line};
use crate::procs::{self, Spawned};

use super::workloads::WRK_SCRIPT;
use super::{
    Addrs, BenchError, BenchOptions, Contender, CLIENT_IP, COMMAND_TIMEOUT, HEALTH_PORT,
    LB_CLIENT_SIDE, LB_NODE_SIDE, NODE_PORT, READY_TIMEOUT, ROLES, STOP_GRACE,
};

/// The namespaces, the backends and the state of one benchmark. Dropping it
/// stops every process in its namespaces and removes them.
pub struct Bench {
    pub(super) opts: BenchOptions,
    backends: Vec<Spawned>,
    /// Runs so far, for fresh addresses.
    pub(super) sequence: u32,
    /// wrk's `done()` hook ([`WRK_SCRIPT`]).
    pub(super) wrk_script: PathBuf,
    removed: bool,
}

impl Bench {
    /// The namespace of `role` in this bench.
    pub(super) fn ns(&self, role: &str) -> String {
        namespace(&self.opts.prefix, role)
    }

    /// Builds the topology, writes the large file and starts the backends.
    /// Leftovers of an earlier bench with the same prefix are removed first.
    pub fn up(opts: BenchOptions) -> Result<Bench, BenchError> {
        down(&opts.prefix, &opts.state_dir)?;
        raise_open_files();
        let wrk_script = opts.state_dir.join("result.lua");
        let mut bench = Bench {
            opts,
            backends: Vec::new(),
            sequence: 0,
            wrk_script,
            removed: false,
        };
        // From here on an error drops `bench`, which removes everything.
        bench.build()?;
        Ok(bench)
    }

    fn build(&mut self) -> Result<(), BenchError> {
        for dir in ["logs", "run", "www"] {
            create_dir(&self.opts.state_dir.join(dir))?;
        }
        write(&self.wrk_script, WRK_SCRIPT)?;
        self.build_client_and_lb()?;
        let big = self.opts.state_dir.join("www").join("big");
        write_big_file(&big, self.opts.big_file_mib)?;
        for (i, node_ip) in self.opts.addrs().nodes().iter().enumerate() {
            self.start_backend(i + 1, *node_ip)?;
        }
        self.wait_backends()
    }

    /// The client and lb namespaces, the link between them, the lb's
    /// bridge towards the nodes, and the sysctls of both.
    fn build_client_and_lb(&self) -> Result<(), BenchError> {
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        let a = self.opts.addrs();
        let (lb_client_side, vip) = (a.of(LB_CLIENT_SIDE), a.vip());
        netns::add(&client)?;
        netns::add(&lb)?;
        for cmd in [
            format!("-n {lb} link add eth0 type veth peer name eth0 netns {client}"),
            format!("-n {lb} addr add {} dev eth0", a.on_link(lb_client_side)),
            format!(
                "-n {lb} addr add {} dev eth0",
                a.with_prefix(vip, a.host_prefix())
            ),
            format!("-n {lb} link set eth0 up"),
            format!(
                "-n {client} addr add {} dev eth0",
                a.on_link(a.of(CLIENT_IP))
            ),
            format!("-n {client} link set eth0 up"),
            format!("-n {client} route add default via {lb_client_side}"),
            format!("-n {lb} link add br0 type bridge"),
            format!("-n {lb} addr add {} dev br0", a.on_link(a.of(LB_NODE_SIDE))),
            format!("-n {lb} link set br0 up"),
        ] {
            ip_line(&cmd)?;
        }
        // Forwarding inside the lb namespace only: `direct` and DNAT need it.
        set_sysctl(&lb, a.forwarding_sysctl(), "1")?;
        // Whichever side closes a connection first keeps it in TIME_WAIT.
        // When that is the client (wrk closes as soon as a `Connection:
        // close` response is complete, before a balancer that forwards the
        // server's FIN late), tens of thousands of TIME_WAIT sockets make
        // every connect search the port range, and wrk's core, not the
        // balancer, sets the rate. Both connecting namespaces may reuse a
        // TIME_WAIT port for a new outgoing connection (safe with TCP
        // timestamps) from the whole range, so no contender is measured
        // through its client's port search.
        for ns in [&client, &lb] {
            set_sysctl(ns, "net/ipv4/tcp_tw_reuse", "1")?;
            set_sysctl(ns, "net/ipv4/ip_local_port_range", "1024 65535")?;
        }
        Ok(())
    }

    /// Node `index` (from 1): its namespace on the lb's bridge and its
    /// nginx.
    fn start_backend(&mut self, index: usize, node_ip: IpAddr) -> Result<(), BenchError> {
        let lb = self.ns("lb");
        let ns = self.ns(&format!("node-{index}"));
        let a = self.opts.addrs();
        let port = switch_port(index);
        netns::add(&ns)?;
        for cmd in [
            format!("-n {lb} link add {port} type veth peer name eth0 netns {ns}"),
            format!("-n {lb} link set {port} master br0 up"),
            format!("-n {ns} addr add {} dev eth0", a.on_link(node_ip)),
            format!("-n {ns} link set eth0 up"),
            format!("-n {ns} route add default via {}", a.of(LB_NODE_SIDE)),
        ] {
            ip_line(&cmd)?;
        }
        let dir = self.opts.state_dir.join(format!("node-{index}"));
        create_dir(&dir.join("logs"))?;
        let conf = dir.join("nginx.conf");
        write(
            &conf,
            &backend_nginx_conf(&format!("node-{index}"), &dir, &self.opts.state_dir, a),
        )?;
        let (program, args) = pinned(
            self.opts.backend_cpus.as_deref(),
            "nginx",
            &[
                "-p".into(),
                format!("{}/", dir.display()),
                "-c".into(),
                conf.display().to_string(),
                "-e".into(),
                "stderr".into(),
            ],
        );
        self.backends.push(procs::spawn(
            &self.opts.state_dir,
            &format!("backend-node-{index}"),
            &ns,
            Path::new(&program),
            &args,
        )?);
        Ok(())
    }

    /// Waits until every node answers the client directly.
    fn wait_backends(&self) -> Result<(), BenchError> {
        for (i, node_ip) in self.opts.addrs().nodes().iter().enumerate() {
            let target = SocketAddr::new(*node_ip, NODE_PORT);
            let log = procs::log_path(&self.opts.state_dir, &format!("backend-node-{}", i + 1));
            self.wait_answers(&self.ns("client"), target, 1, || procs::log_tail(&log, 20))
                .map_err(|(last, log)| BenchError::NotReady {
                    contender: Contender::Direct,
                    limit: READY_TIMEOUT,
                    last: format!("backend node-{}: {last}", i + 1),
                    log,
                })?;
        }
        Ok(())
    }

    /// Waits until `nodes` distinct nodes answered `/small` at `target`.
    pub(super) fn wait_answers(
        &self,
        ns: &str,
        target: SocketAddr,
        nodes: usize,
        log: impl Fn() -> String,
    ) -> Result<(), (String, String)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = BTreeSet::new();
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            match netns::in_netns(ns, || http_get_small(target)) {
                Ok(Ok(node)) => {
                    seen.insert(node);
                    if seen.len() >= nodes {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err((format!("{last} (nodes answered: {seen:?})"), log()))
    }

    /// Gives the client and the balancer's node side a fresh source address
    /// (trap 4: no run meets the previous run's TIME_WAIT sockets); returns
    /// the balancer's.
    pub(super) fn fresh_sources(&mut self) -> Result<IpAddr, BenchError> {
        self.sequence += 1;
        let s = self.sequence;
        let (hi, lo) = ((1 + s / 200) as u8, (10 + s % 200) as u8);
        let a = self.opts.addrs();
        let client_src = a.of(Ipv4Addr::new(10, 91, hi, lo));
        let lb_src = a.of(Ipv4Addr::new(10, 92, hi, lo));
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        for cmd in [
            format!("-n {client} addr add {} dev eth0", a.on_link(client_src)),
            format!(
                "-n {client} route replace default via {} src {client_src}",
                a.of(LB_CLIENT_SIDE)
            ),
            format!("-n {lb} addr add {} dev br0", a.on_link(lb_src)),
            format!(
                "-n {lb} route replace {} dev br0 src {lb_src} metric {}",
                a.node_net(),
                a.link_route_metric()
            ),
        ] {
            ip_line(&cmd)?;
        }
        Ok(lb_src)
    }

    /// Stops everything and removes the namespaces and the state directory.
    pub fn teardown(&mut self) -> Result<(), BenchError> {
        self.removed = true;
        down(&self.opts.prefix, &self.opts.state_dir)?;
        for b in &mut self.backends {
            if let Err(e) = b.child.wait() {
                tracing::warn!(process = %b.name, error = %e, "cannot reap a backend");
            }
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.teardown() {
                tracing::error!(error = %e, prefix = %self.opts.prefix, "bench teardown failed");
            }
        }
    }
}

/// Node `index`'s (from 1) port on the lb namespace's bridge: its link's
/// switch side.
pub(super) fn switch_port(index: usize) -> String {
    format!("n{index}")
}

/// The namespace of `role` under `prefix`.
pub fn namespace(prefix: &str, role: &str) -> String {
    format!("{prefix}-{role}")
}

/// Removes every namespace of the bench `prefix` (stopping what runs in
/// them) and its state directory. Safe when nothing is there.
pub fn down(prefix: &str, state_dir: &Path) -> Result<(), BenchError> {
    procs::remove_namespaces(prefix, &ROLES, STOP_GRACE)?;
    if state_dir.exists() {
        fs::remove_dir_all(state_dir).map_err(|source| BenchError::File {
            path: state_dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Each backend node: `/small` answers its name, `/big` is the large file;
/// kept-alive connections are never closed by a request count (trap 8). A
/// health server on [`HEALTH_PORT`] answers `/healthz` as kube-proxy's does,
/// so health checks never touch the NodePort. Both listen on every address
/// of the family of `addrs`.
fn backend_nginx_conf(node: &str, dir: &Path, state: &Path, addrs: Addrs) -> String {
    let dir = dir.display();
    let node_port = SocketAddr::new(addrs.any(), NODE_PORT);
    let health = SocketAddr::new(addrs.any(), HEALTH_PORT);
    let www = state.join("www");
    let www = www.display();
    format!(
        "user root;
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen {node_port} reuseport backlog=16384;
    location = /small {{ return 200 \"{node}\\n\"; }}
    location = /big {{ root {www}; }}
  }}
  server {{
    listen {health};
    location = /healthz {{ return 200 \"ok\\n\"; }}
  }}
}}
"
    )
}

/// GETs `/small` once; the node that answered.
fn http_get_small(target: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&target, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {:?}", answer.lines().next()));
    }
    answer
        .split("\r\n\r\n")
        .nth(1)
        .map(|body| body.trim().to_string())
        .ok_or_else(|| "no body".to_string())
}

/// Writes `mib` MiB of a repeating pattern and reads it once (page cache).
fn write_big_file(path: &Path, mib: u64) -> Result<(), BenchError> {
    let err = |source| BenchError::File {
        path: path.to_path_buf(),
        source,
    };
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut f = fs::File::create(path).map_err(err)?;
    for _ in 0..mib.max(1) {
        f.write_all(&chunk).map_err(err)?;
    }
    drop(f);
    let mut sink = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut sink))
        .map_err(err)?;
    Ok(())
}

/// Sets `/proc/sys/<key>` inside namespace `ns` (these are per namespace).
fn set_sysctl(ns: &str, key: &str, value: &str) -> Result<(), BenchError> {
    let path = Path::new("/proc/sys").join(key);
    netns::in_netns(ns, || fs::write(&path, value))?.map_err(|source| BenchError::File {
        path: path.clone(),
        source,
    })
}

/// Runs `nft args` in namespace `ns`, bounded; its stdout.
pub(super) fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BenchError> {
    Ok(command::run_in(ns, "nft", args, stdin, COMMAND_TIMEOUT)?)
}

/// Creates directory `path` and its parents.
pub(super) fn create_dir(path: &Path) -> Result<(), BenchError> {
    fs::create_dir_all(path).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path`.
pub(super) fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    fs::write(path, text).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}
