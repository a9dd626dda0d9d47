//! Network namespaces for end-to-end tests of the agent binary: the
//! datapath tests' topology (client, node, pods behind a bridge), pod
//! servers that greet and then echo on a kept connection, and tiny TCP and
//! HTTP clients that run inside a namespace.
//!
//! ```text
//!  client ns               node ns (the agent, table inet portico)    pod ns (one per pod)
//!  eth0 192.168.77.2 ── vc 192.168.77.1    br0 10.244.0.1 ──┬── eth0 10.244.0.10 (first pod)
//!                                                            └── eth0 10.244.0.11 (second pod)
//! ```
//!
//! Every namespace is removed by a drop guard, also when the test panics.

#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

/// The node's address on the client link.
pub const NODE_IP: &str = "192.168.77.1";
/// The client's address.
pub const CLIENT_IP: &str = "192.168.77.2";
/// The node's address on the pod bridge (what masqueraded traffic comes from).
pub const NODE_BRIDGE_IP: &str = "10.244.0.1";
/// The port every pod server listens on.
pub const POD_PORT: u16 = 8080;
/// How long a connection that should succeed or be refused may take.
pub const QUICK: Duration = Duration::from_secs(2);

/// Runs `f` on a fresh thread that has entered network namespace `ns`:
/// sockets it creates live in that namespace (and stay there when used from
/// other threads).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            let path = format!("/run/netns/{ns}");
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs a program; panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip` with whitespace-separated arguments; panics with its stderr.
pub fn ip_cmd(args: &str) -> String {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// Calls `check` until it returns `Some` or `limit` passes (then panics,
/// naming `what`), pausing `every` between calls. Returns the value and how
/// long it took.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return (v, started.elapsed());
        }
        if started.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// A pod of the lab.
pub struct Pod {
    /// Its name (what its server answers with).
    pub name: String,
    /// Its IPv4 address.
    pub addr: IpAddr,
}

/// Namespaces created by one test; removed on drop, also when the test panics.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}

impl Lab {
    /// The node, client and pod namespaces (IPv4), wired as in the module
    /// docs. `tag` keeps the names unique between tests of one process.
    pub fn new(tag: &str, test: &str, pods: &[&str]) -> (Lab, Vec<Pod>) {
        let mut lab = Lab {
            prefix: format!("{tag}{}-{test}", std::process::id()),
            namespaces: Vec::new(),
        };
        let node = lab.add_ns("node");
        let client = lab.add_ns("client");
        for cmd in [
            format!("-n {node} link add br0 type bridge"),
            format!("-n {node} addr add {NODE_BRIDGE_IP}/24 dev br0"),
            format!("-n {node} link set br0 up"),
            format!("-n {node} route add default via 10.244.0.254"),
            format!("-n {node} link add vc type veth peer name eth0 netns {client}"),
            format!("-n {node} addr add {NODE_IP}/24 dev vc"),
            format!("-n {node} link set vc up"),
            format!("-n {client} addr add {CLIENT_IP}/24 dev eth0"),
            format!("-n {client} link set eth0 up"),
            format!("-n {client} route add default via {NODE_IP}"),
            format!("netns exec {node} sysctl -qw net.ipv4.ip_forward=1"),
        ] {
            ip_cmd(&cmd);
        }
        let mut out = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let ns = lab.add_ns(pod);
            let addr = format!("10.244.0.{}", 10 + i);
            for cmd in [
                format!("-n {node} link add vp{i} type veth peer name eth0 netns {ns}"),
                format!("-n {node} link set vp{i} master br0 up"),
                format!("-n {ns} addr add {addr}/24 dev eth0"),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} route add default via {NODE_BRIDGE_IP}"),
            ] {
                ip_cmd(&cmd);
            }
            out.push(Pod {
                name: pod.to_string(),
                addr: addr.parse().expect("pod address"),
            });
        }
        (lab, out)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        ip_cmd(&format!("netns add {name}"));
        self.namespaces.push(name.clone());
        ip_cmd(&format!("-n {name} link set lo up"));
        name
    }

    /// The namespace of `role` (`node`, `client`, a pod's name).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Runs `nft` in the node namespace: its status, stdout and stderr.
    pub fn nft(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("node"), "nft"])
            .args(args)
            .output()
            .expect("run nft");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Whether the node namespace holds `table inet portico`.
    pub fn has_table(&self) -> bool {
        let (ok, out, err) = self.nft(&["list", "tables"]);
        assert!(ok, "nft list tables: {err}");
        out.lines().any(|l| l.trim() == "table inet portico")
    }

    /// Starts every pod's greet-and-echo server on [`POD_PORT`].
    pub fn serve(&self, pods: &[Pod]) -> Vec<EchoServer> {
        pods.iter()
            .map(|pod| EchoServer::start(&self.ns(&pod.name), &pod.name))
            .collect()
    }

    /// One connection from the client: the greeting `<pod> <peer>`.
    pub fn hello(&self, to: &str, port: u16) -> std::io::Result<String> {
        self.open(to, port).map(|c| c.greeting)
    }

    /// A kept connection from the client (greeting read).
    pub fn open(&self, to: &str, port: u16) -> std::io::Result<Conn> {
        let addr = SocketAddr::new(to.parse().expect("address"), port);
        let stream = in_netns(&self.ns("client"), || {
            TcpStream::connect_timeout(&addr, QUICK)
        })?;
        Conn::new(stream)
    }

    /// `GET path` from the namespace of `role`.
    pub fn http_get(&self, role: &str, to: &str, port: u16, path: &str) -> std::io::Result<Http> {
        let addr = SocketAddr::new(to.parse().expect("address"), port);
        let stream = in_netns(&self.ns(role), || TcpStream::connect_timeout(&addr, QUICK))?;
        Http::get(stream, path)
    }
}

/// A kept client connection to a pod server.
pub struct Conn {
    /// The server's first line: `<pod> <client address it saw>`.
    pub greeting: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn new(stream: TcpStream) -> std::io::Result<Conn> {
        stream.set_read_timeout(Some(QUICK))?;
        stream.set_write_timeout(Some(QUICK))?;
        let mut conn = Conn {
            greeting: String::new(),
            reader: BufReader::new(stream),
        };
        conn.greeting = conn.line()?;
        Ok(conn)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end().to_string())
    }

    /// Sends one line and returns the echoed line.
    pub fn echo(&mut self, msg: &str) -> std::io::Result<String> {
        self.reader
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())?;
        self.line()
    }
}

/// An HTTP/1.1 response.
#[derive(Debug)]
pub struct Http {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: String,
}

impl Http {
    fn get(mut stream: TcpStream, path: &str) -> std::io::Result<Http> {
        stream.set_read_timeout(Some(QUICK))?;
        stream.set_write_timeout(Some(QUICK))?;
        stream.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let bad =
            |what: &str| std::io::Error::new(ErrorKind::InvalidData, format!("{what}: {text:?}"));
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| bad("no header end"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Http {
            status,
            headers,
            body: body.to_string(),
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

type Connections = Arc<Mutex<BTreeMap<u64, (TcpStream, JoinHandle<()>)>>>;

/// A pod's TCP server: greets each connection with `<pod> <peer address>\n`,
/// then echoes every line until the client closes. Stopped on drop: the
/// listener and every open connection are shut down, every thread joined.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
    connections: Connections,
}

impl EchoServer {
    /// Listens on `[::]:POD_PORT` in namespace `ns` (IPv4 too, as mapped
    /// addresses, printed canonical).
    pub fn start(ns: &str, name: &str) -> EchoServer {
        let listener = in_netns(ns, || {
            TcpListener::bind(("::", POD_PORT)).expect("bind tcp")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Connections = Arc::default();
        let acceptor = {
            let (stop, name, connections) = (stop.clone(), name.to_string(), connections.clone());
            let listener = listener.try_clone().expect("clone listener");
            let ids = AtomicU64::new(0);
            std::thread::spawn(move || loop {
                let accepted = listener.accept();
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("{name}: accept: {e}");
                        continue;
                    }
                };
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let Ok(kept) = stream.try_clone() else {
                    eprintln!("{name}: cannot clone a connection");
                    continue;
                };
                let handler = {
                    let (name, connections) = (name.clone(), connections.clone());
                    std::thread::spawn(move || {
                        Self::converse(stream, &name, peer);
                        connections
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                    })
                };
                let mut map = connections.lock().unwrap_or_else(PoisonError::into_inner);
                // Finished handlers removed themselves, unless they finished
                // before being inserted: drop those now.
                map.retain(|_, (_, h)| !h.is_finished());
                map.insert(id, (kept, handler));
            })
        };
        EchoServer {
            stop,
            listener,
            acceptor: Some(acceptor),
            connections,
        }
    }

    fn converse(stream: TcpStream, name: &str, peer: SocketAddr) {
        let mut writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => return eprintln!("{name}: clone: {e}"),
        };
        if let Err(e) =
            writer.write_all(format!("{name} {}\n", peer.ip().to_canonical()).as_bytes())
        {
            return eprintln!("{name}: greeting {peer}: {e}");
        }
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // Ends when the client closes (or the server is stopped).
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if writer.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Connections currently open on this server.
    pub fn open_connections(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|(_, h)| !h.is_finished())
            .count()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() wakes the thread blocked in accept().
        if let Err(e) = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener),
            nix::sys::socket::Shutdown::Both,
        ) {
            eprintln!("stopping a pod server: shutdown: {e}");
        }
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.join().is_err() {
                eprintln!("a pod server's acceptor panicked");
            }
        }
        let open: Vec<_> = std::mem::take(
            &mut *self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_values()
        .collect();
        for (stream, handler) in open {
            match stream.shutdown(Shutdown::Both) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => {}
                Err(e) => eprintln!("stopping a pod connection: {e}"),
            }
            if handler.join().is_err() {
                eprintln!("a pod connection thread panicked");
            }
        }
    }
}
