//! Helpers for tests that drive the real `portico-edge` binary: a child
//! process guard that is always killed and reaped, config files written the
//! way a ConfigMap update lands (atomically), and waits on sockets with a
//! deadline.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{hello, Subnet, KUBE_PROXY_PORT, NODE_PORT};

/// The binary under test.
pub const EDGE_BIN: &str = env!("CARGO_BIN_EXE_portico-edge");

/// How often conditions are re-checked while waiting.
const POLL: Duration = Duration::from_millis(10);

/// A child process that is killed (SIGKILL) and reaped when dropped, also
/// when the test panics; on a panic its stderr is printed, so a failed
/// assertion shows what the process logged.
pub struct Proc {
    name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Runs `EDGE_BIN args`, its stdout and stderr going to
    /// `<dir>/<name>.stdout` and `<dir>/<name>.stderr`. `NO_COLOR` keeps log
    /// lines free of escape codes.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        Proc::spawn_limited(dir, name, args, None)
    }

    /// [`Proc::spawn`] with the descriptor limit (`RLIMIT_NOFILE`, soft and
    /// hard) set to `nofile` by `prlimit`, which then becomes the edge.
    pub fn spawn_limited(dir: &Path, name: &str, args: &[&str], nofile: Option<u64>) -> Proc {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let out = std::fs::File::create(&stdout).expect("create stdout file");
        let err = std::fs::File::create(&stderr).expect("create stderr file");
        let mut command = match nofile {
            None => Command::new(EDGE_BIN),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(EDGE_BIN);
                c
            }
        };
        let child = command
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {EDGE_BIN}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            status: None,
            stdout,
            stderr,
        }
    }

    /// `portico-edge run --config <config> --upgrade-socket <dir>/up.sock
    /// <extra>`, under `nofile` descriptors if given ([`Proc::spawn_limited`]).
    pub fn run_edge(
        dir: &Path,
        name: &str,
        config: &Path,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> Proc {
        let socket = dir.join("up.sock");
        let mut args = vec![
            "run",
            "--config",
            path_str(config),
            "--upgrade-socket",
            path_str(&socket),
        ];
        args.extend_from_slice(extra);
        Proc::spawn_limited(dir, name, &args, nofile)
    }

    /// The descriptors the process holds now (0 once it is gone).
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("not reaped").id() as i32)
    }

    /// Sends `sig` to the process (which must not have been reaped yet).
    pub fn signal(&self, sig: Signal) {
        assert!(self.status.is_none(), "{} already exited", self.name);
        kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill {sig} {}: {e}", self.name));
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = &mut self.child {
                self.status = child.try_wait().expect("try_wait");
            }
        }
        self.status
    }

    /// Waits (asynchronously) for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (blocking the thread) for the process to exit, at most `timeout`.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`, at most `timeout`; fails early
    /// if the process exits.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(s) = self.try_status() {
                // It may have logged just before exiting.
                assert!(
                    self.stderr().contains(needle),
                    "{} exited ({s}) without logging {needle:?}",
                    self.name
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                // SIGKILL cannot be caught; wait() then reaps it.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} stderr ({}) -----\n{}\n----- {} stdout -----\n{}\n----- end of {} -----",
                self.name,
                self.stderr.display(),
                self.stderr(),
                self.name,
                self.stdout(),
                self.name
            );
        }
    }
}

/// `p` as the text a command line takes.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), so
/// the edge's file poll never reads half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

/// One TCP Service for [`yaml_config`]: `default/<name>` on `vip:port` to
/// NODE_PORT on every node.
pub struct YamlService<'a> {
    /// Service name.
    pub name: &'a str,
    /// Its VIP.
    pub vip: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its nodePort (NODE_PORT unless testing a bad value).
    pub node_port: u32,
}

impl<'a> YamlService<'a> {
    /// A Service to NODE_PORT.
    pub fn new(name: &'a str, vip: SocketAddr) -> Self {
        YamlService {
            name,
            vip: vip.ip(),
            port: vip.port(),
            node_port: NODE_PORT.into(),
        }
    }
}

/// The admin address of a subnet's edge: `127.a.b.250:9721`.
pub fn admin_addr(net: Subnet) -> SocketAddr {
    SocketAddr::new(net.ip(250), 9721)
}

/// The metrics address of a subnet's edge: `127.a.b.250:9720`.
pub fn metrics_addr(net: Subnet) -> SocketAddr {
    SocketAddr::new(net.ip(250), 9720)
}

/// A config file's text: `nodes` stand-in nodes of `net` (node-0.. at hosts
/// 1..), fast health checks (interval 200ms, timeout 100ms, rise/fall 2),
/// the given drain timeout, admin and metrics on [`admin_addr`] and
/// [`metrics_addr`], and `services`.
pub fn yaml_config(net: Subnet, nodes: u8, drain: &str, services: &[YamlService<'_>]) -> String {
    let mut y = format!(
        "settings:
  health:
    interval: 200ms
    timeout: 100ms
    rise: 2
    fall: 2
    clusterCheck: kube-proxy
    kubeProxyPort: {KUBE_PROXY_PORT}
  proxy:
    connectTimeout: 500ms
    connectRetries: 2
    drainTimeout: {drain}
  adminListen: {admin}
  metricsListen: {metrics}
nodes:
",
        admin = admin_addr(net),
        metrics = metrics_addr(net),
    );
    for i in 0..nodes {
        y.push_str(&format!(
            "  - name: node-{i}\n    addresses: [{}]\n",
            net.ip(i + 1)
        ));
    }
    if services.is_empty() {
        y.push_str("services: []\n");
    } else {
        y.push_str("services:\n");
    }
    for s in services {
        y.push_str(&format!(
            "  - namespace: default
    name: {}
    vips: [{}]
    externalTrafficPolicy: Cluster
    ports:
      - name: tcp
        protocol: TCP
        port: {}
        nodePort: {}
",
            s.name, s.vip, s.port, s.node_port
        ));
    }
    y
}

/// Polls the async `f` until it returns `Some`, at most `timeout`; panics
/// naming `what`. Each attempt is itself bounded by the time left.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(left, f()).await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A TCP connect to `addr` with a timeout: `Ok` when it connected.
pub async fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Waits until `addr` accepts a TCP connection.
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) {
    wait_for(&format!("{addr} to accept"), timeout, || async {
        try_connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// Waits until a connect to `addr` is refused (nothing listens there).
pub async fn wait_refused(addr: SocketAddr, timeout: Duration) {
    wait_for(&format!("{addr} to refuse"), timeout, || async {
        match try_connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await
}

/// Waits until the VIP `addr` proxies a connection to a stand-in node;
/// returns the greeting.
pub async fn wait_serving(addr: SocketAddr, timeout: Duration) -> String {
    wait_for(&format!("{addr} to proxy to a node"), timeout, || async {
        hello(addr, None).await.ok().map(|(line, _)| line)
    })
    .await
}

/// A connection through a VIP, past the greeting and the echo of the `hi`
/// that [`hello`] sends, ready to echo more.
pub struct Held {
    reader: BufReader<TcpStream>,
}

impl Held {
    /// Opens a connection through `addr` and reads up to the echoed `hi`.
    pub async fn open(addr: SocketAddr) -> Held {
        let (_, mut reader) = hello(addr, None).await.expect("held connection opens");
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .expect("echo of hi in time")
            .expect("echo of hi read");
        assert_eq!(line, "hi\n", "the node echoes what was sent");
        Held { reader }
    }

    /// Sends `msg` and returns whether exactly it comes back within 5 s.
    pub async fn echoes(&mut self, msg: &str) -> Result<(), String> {
        let line = format!("{msg}\n");
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = String::new();
        match tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut back)).await {
            Err(_) => Err("no echo within 5s".into()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(0)) => Err("closed".into()),
            Ok(Ok(_)) if back == line => Ok(()),
            Ok(Ok(_)) => Err(format!("echoed {back:?} instead of {line:?}")),
        }
    }

    /// Closes the connection (both directions) and waits for the far end to
    /// close too, so the edge has finished with it.
    pub async fn close(mut self) {
        let s = self.reader.get_mut();
        s.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "the edge closes its side after ours: {r:?}"
        );
    }
}

/// GET `path` at `addr`, bounded in time; any failure is an `Err`.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status code"))?;
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// A 200 answer's body from `path` at `addr`, or `None`.
pub async fn get_ok(addr: SocketAddr, path: &str) -> Option<String> {
    match try_http_get(addr, path).await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Whether a unix socket bound at `path` is listening (in this network
/// namespace), from `/proc/net/unix`: the `__SO_ACCEPTCON` flag (0x10000)
/// is set once `listen()` was called. Connecting would not do: the upgrade
/// socket accepts exactly one peer.
pub fn unix_socket_listening(path: &Path) -> bool {
    // The calling thread's namespace's table (`/proc/net` is the main
    // thread's; a test may run in a namespace of its thread's own).
    let Ok(table) = std::fs::read_to_string("/proc/thread-self/net/unix") else {
        return false;
    };
    let path = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[7] == path
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}
