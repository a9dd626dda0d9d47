//! Network namespaces for the privileged tests (the datapath tests and the
//! end-to-end tests of the agent binary): the topology (client, node, pods
//! behind a bridge), pod servers (ones that greet and then echo on a kept
//! connection, ones that answer once over TCP and to every UDP datagram), and
//! tiny TCP, UDP and HTTP clients that run inside a namespace.
//!
//! ```text
//!  client ns               node ns (the agent, table inet portico)    pod ns (one per pod)
//!  eth0 192.168.77.2 ── vc 192.168.77.1    br0 10.244.0.1 ──┬── eth0 10.244.0.10 (first pod)
//!                                                            └── eth0 10.244.0.11 (second pod)
//!  (with IPv6: fd00:77::2/::1, fd00:244::1, fd00:244::10/::11)
//! ```
//!
//! Every namespace is removed by a drop guard, also when the test panics.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use portico_node_agent::{NftBackend as _, NftCommand, NftError};

/// The node's address on the client link.
pub const NODE_IP: &str = "192.168.77.1";
/// The client's address.
pub const CLIENT_IP: &str = "192.168.77.2";
/// The node's address on the pod bridge (what masqueraded traffic comes from).
pub const NODE_BRIDGE_IP: &str = "10.244.0.1";
/// The node's IPv6 address on the client link (with [`Lab::with_ipv6`]).
pub const NODE_IP6: &str = "fd00:77::1";
/// The client's IPv6 address (with [`Lab::with_ipv6`]).
pub const CLIENT_IP6: &str = "fd00:77::2";
/// The node's IPv6 address on the pod bridge (with [`Lab::with_ipv6`]).
pub const NODE_BRIDGE_IP6: &str = "fd00:244::1";
/// The port every pod server listens on.
pub const POD_PORT: u16 = 8080;
/// How long a connection that should succeed or be refused may take.
pub const QUICK: Duration = Duration::from_secs(2);

/// Runs `f` on a fresh thread that has entered network namespace `ns`:
/// sockets it creates live in that namespace (and stay there when used from
/// other threads; programs it starts live in that namespace too).
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
    /// Its IPv6 address, in a lab made by [`Lab::with_ipv6`].
    pub addr6: Option<IpAddr>,
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
        Lab::build(tag, test, pods, false)
    }

    /// [`Lab::new`], dual-stack: the IPv6 addresses of the module docs,
    /// default routes and forwarding too.
    pub fn with_ipv6(tag: &str, test: &str, pods: &[&str]) -> (Lab, Vec<Pod>) {
        Lab::build(tag, test, pods, true)
    }

    fn build(tag: &str, test: &str, pods: &[&str], ipv6: bool) -> (Lab, Vec<Pod>) {
        let mut lab = Lab {
            prefix: format!("{tag}{}-{test}", std::process::id()),
            namespaces: Vec::new(),
        };
        let node = lab.add_ns("node");
        let client = lab.add_ns("client");
        // Each step: the IPv4 command, and the IPv6 one (run only with `ipv6`).
        let steps = [
            (format!("-n {node} link add br0 type bridge"), None),
            (
                format!("-n {node} addr add {NODE_BRIDGE_IP}/24 dev br0"),
                Some(format!(
                    "-n {node} addr add {NODE_BRIDGE_IP6}/64 dev br0 nodad"
                )),
            ),
            (format!("-n {node} link set br0 up"), None),
            // The node's way out (nobody answers there): without it, traffic
            // to an LB address that found no DNAT is unroutable before any
            // filter hook sees it.
            (
                format!("-n {node} route add default via 10.244.0.254"),
                None,
            ),
            (
                format!("-n {node} link add vc type veth peer name eth0 netns {client}"),
                None,
            ),
            (
                format!("-n {node} addr add {NODE_IP}/24 dev vc"),
                Some(format!("-n {node} addr add {NODE_IP6}/64 dev vc nodad")),
            ),
            (format!("-n {node} link set vc up"), None),
            (
                format!("-n {client} addr add {CLIENT_IP}/24 dev eth0"),
                Some(format!(
                    "-n {client} addr add {CLIENT_IP6}/64 dev eth0 nodad"
                )),
            ),
            (format!("-n {client} link set eth0 up"), None),
            (
                format!("-n {client} route add default via {NODE_IP}"),
                Some(format!("-n {client} -6 route add default via {NODE_IP6}")),
            ),
            // Forwarding in the node namespace only (the sysctls are per
            // namespace).
            (
                format!("netns exec {node} sysctl -qw net.ipv4.ip_forward=1"),
                Some(format!(
                    "netns exec {node} sysctl -qw net.ipv6.conf.all.forwarding=1"
                )),
            ),
        ];
        run_steps(steps, ipv6);
        let mut out = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let ns = lab.add_ns(pod);
            let addr = format!("10.244.0.{}", 10 + i);
            let addr6 = format!("fd00:244::{}", 10 + i);
            let steps = [
                (
                    format!("-n {node} link add vp{i} type veth peer name eth0 netns {ns}"),
                    None,
                ),
                (format!("-n {node} link set vp{i} master br0 up"), None),
                (
                    format!("-n {ns} addr add {addr}/24 dev eth0"),
                    Some(format!("-n {ns} addr add {addr6}/64 dev eth0 nodad")),
                ),
                (format!("-n {ns} link set eth0 up"), None),
                (
                    format!("-n {ns} route add default via {NODE_BRIDGE_IP}"),
                    Some(format!(
                        "-n {ns} -6 route add default via {NODE_BRIDGE_IP6}"
                    )),
                ),
            ];
            run_steps(steps, ipv6);
            out.push(Pod {
                name: pod.to_string(),
                addr: addr.parse().expect("pod address"),
                addr6: ipv6.then(|| addr6.parse().expect("pod IPv6 address")),
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

    /// Runs `nft` in the node namespace; panics with its stderr when it
    /// fails, else its stdout.
    pub fn nft_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.nft(args);
        assert!(ok, "nft {args:?}: {err}");
        out
    }

    /// Loads a script into the node namespace's nftables (as the agent
    /// would, with [`NftCommand`]).
    pub fn try_apply(&self, script: &str) -> Result<(), NftError> {
        in_netns(&self.ns("node"), || NftCommand::new().apply(script))
    }

    /// [`Lab::try_apply`]; panics with the script when it fails.
    pub fn apply(&self, script: &str) {
        if let Err(e) = self.try_apply(script) {
            panic!("applying to the node namespace failed: {e}\n{script}");
        }
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
        Conn::new(self.connect("client", to, port, QUICK)?)
    }

    /// `GET path` from the namespace of `role`.
    pub fn http_get(&self, role: &str, to: &str, port: u16, path: &str) -> std::io::Result<Http> {
        Http::get(self.connect(role, to, port, QUICK)?, path)
    }

    /// A TCP connection from the namespace of `role` (`client`, `node`).
    pub fn connect(
        &self,
        role: &str,
        to: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        let addr = SocketAddr::new(to.parse().expect("address"), port);
        in_netns(&self.ns(role), || {
            TcpStream::connect_timeout(&addr, timeout)
        })
    }

    /// One TCP connection from the client to a [`WhoServer`]: its whole
    /// answer, or the error.
    pub fn tcp(&self, to: &str, port: u16, timeout: Duration) -> std::io::Result<String> {
        self.tcp_from("client", to, port, timeout)
    }

    /// [`Lab::tcp`] from the namespace of `role` (`client`, `node`).
    pub fn tcp_from(
        &self,
        role: &str,
        to: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<String> {
        let mut stream = self.connect(role, to, port, timeout)?;
        stream.set_read_timeout(Some(QUICK))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// One UDP request from the client to a [`WhoServer`]; the answer, or
    /// the error.
    pub fn udp(&self, to: &str, port: u16) -> std::io::Result<String> {
        let addr = SocketAddr::new(to.parse().expect("address"), port);
        in_netns(&self.ns("client"), || {
            let socket = UdpSocket::bind(if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            socket.set_read_timeout(Some(QUICK))?;
            socket.send_to(b"who", addr)?;
            let mut buf = [0u8; 256];
            let (n, _) = socket.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    }

    /// Starts every pod's [`WhoServer`] on [`POD_PORT`].
    pub fn serve_who(&self, pods: &[Pod]) -> Vec<WhoServer> {
        pods.iter()
            .map(|pod| WhoServer::start(&self.ns(&pod.name), &pod.name))
            .collect()
    }
}

/// Runs each step's IPv4 `ip` command, and its IPv6 one when `ipv6`.
fn run_steps<const N: usize>(steps: [(String, Option<String>); N], ipv6: bool) {
    for (v4, v6) in steps {
        ip_cmd(&v4);
        if let Some(v6) = v6.filter(|_| ipv6) {
            ip_cmd(&v6);
        }
    }
}

/// A pod's TCP and UDP servers on [`POD_PORT`]: each TCP connection gets
/// `<pod> <peer address>` and is closed; each UDP datagram is answered the
/// same. Stopped and joined on drop.
pub struct WhoServer {
    stop: Arc<AtomicBool>,
    /// Handles on the servers' sockets, to wake their blocked threads.
    tcp: TcpListener,
    udp: UdpSocket,
    threads: Vec<JoinHandle<()>>,
}

impl WhoServer {
    /// Listens on `[::]:POD_PORT` (TCP and UDP) in namespace `ns`.
    pub fn start(ns: &str, name: &str) -> WhoServer {
        let (tcp, udp) = in_netns(ns, || {
            // `[::]` takes IPv4 too (as mapped addresses, printed canonical).
            let tcp = TcpListener::bind(("::", POD_PORT)).expect("bind tcp");
            let udp = UdpSocket::bind(("::", POD_PORT)).expect("bind udp");
            (tcp, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            let tcp = tcp.try_clone().expect("clone listener");
            std::thread::spawn(move || loop {
                let accepted = tcp.accept();
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (mut stream, peer) = accepted.unwrap_or_else(|e| panic!("{name}: accept: {e}"));
                let answer = format!("{name} {}", peer.ip().to_canonical());
                if let Err(e) = stream.write_all(answer.as_bytes()) {
                    eprintln!("{name}: answering {peer}: {e}");
                }
            })
        };
        let udp_thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            let udp = udp.try_clone().expect("clone socket");
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    let received = udp.recv_from(&mut buf);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (_, peer) = received.unwrap_or_else(|e| panic!("{name}: recv: {e}"));
                    let answer = format!("{name} {}", peer.ip().to_canonical());
                    if let Err(e) = udp.send_to(answer.as_bytes(), peer) {
                        eprintln!("{name}: answering {peer}: {e}");
                    }
                }
            })
        };
        WhoServer {
            stop,
            tcp,
            udp,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for WhoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() wakes the threads blocked in accept/recv. On an
        // unconnected UDP socket Linux wakes the reader but says ENOTCONN.
        for fd in [self.tcp.as_raw_fd(), self.udp.as_raw_fd()] {
            match nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both) {
                Ok(()) | Err(Errno::ENOTCONN) => {}
                Err(e) => eprintln!("stopping a pod server: shutdown: {e}"),
            }
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("a pod server thread panicked");
            }
        }
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
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() wakes the thread blocked in accept().
        if let Err(e) =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        {
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
