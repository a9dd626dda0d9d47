//! The `portico-node-agent` binary as the end-to-end tests run it: inside
//! the node namespace of a [`Lab`], on a manifest directory or a
//! kubeconfig, its logs kept in files. Killed and reaped on drop.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::netns::{in_netns, wait_for, Lab};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portico-node-agent");
/// The node health server's port (kube-proxy's).
pub const HEALTH_PORT: u16 = 10256;
/// How often the tests re-check a condition they wait for.
pub const RECHECK: Duration = Duration::from_millis(20);

/// A running `portico-node-agent run` in the node namespace. Killed and
/// reaped on drop; when the test is failing, its stderr is printed.
pub struct Agent {
    child: Option<Child>,
    /// The container it runs in, when it runs from the image.
    container: Option<String>,
    label: String,
    logs: tempfile::TempDir,
    /// Where it serves `/metrics` (on 127.0.0.1 in the node namespace).
    pub metrics_port: u16,
}

/// Where an agent reads its objects from.
pub enum AgentSource<'a> {
    /// `--manifests DIR`.
    Manifests(&'a Path),
    /// `--kubernetes --kubeconfig FILE`, with `--watch-timeout-secs`.
    Kubernetes {
        kubeconfig: &'a Path,
        watch_timeout: Duration,
    },
}

/// Where an agent serves and what it reads.
pub struct AgentConfig<'a> {
    pub source: AgentSource<'a>,
    pub node_name: &'a str,
    pub health_bind_ip: &'a str,
    /// Searched for `nft` before the inherited `PATH` (a wrapper).
    pub nft_dir: Option<&'a Path>,
    pub sync_period: Duration,
    /// Run the container image of that name (podman) instead of the binary,
    /// in the node namespace, as the DaemonSet runs it.
    pub image: Option<&'a str>,
}

impl Agent {
    pub fn start(lab: &Lab, label: &str, cfg: &AgentConfig<'_>) -> Agent {
        let node_ns = lab.ns("node");
        // Any port is free in a fresh namespace; ask the kernel for one.
        let metrics_port = in_netns(&node_ns, || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port in the node namespace")
                .port()
        });
        let logs = tempfile::tempdir().expect("log dir");
        let stdout = fs::File::create(logs.path().join("stdout")).expect("stdout file");
        let stderr = fs::File::create(logs.path().join("stderr")).expect("stderr file");
        let mut command = Command::new("ip");
        if let Some(dir) = cfg.nft_dir {
            // `ip` is looked up in the new PATH too: keep the old one after.
            let inherited = std::env::var_os("PATH").unwrap_or_default();
            let path = std::env::join_paths(
                std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&inherited)),
            )
            .expect("PATH");
            command.env("PATH", path);
        }
        let container = cfg.image.map(|image| {
            let name = format!("portico-test-{}-{label}", std::process::id());
            let mounts = match &cfg.source {
                AgentSource::Manifests(dir) => dir.to_path_buf(),
                AgentSource::Kubernetes { kubeconfig, .. } => {
                    kubeconfig.parent().expect("a directory").to_path_buf()
                }
            };
            command = Command::new("podman");
            command.args(["run", "--rm", "--name", &name]);
            // As deploy/node-agent.yaml runs it: the node's network, no
            // capability but NET_ADMIN, a read-only root filesystem.
            command.arg(format!("--network=ns:/run/netns/{node_ns}"));
            command.args(["--cap-drop=ALL", "--cap-add=NET_ADMIN", "--read-only"]);
            command.args(["--security-opt=no-new-privileges"]);
            command.arg(format!("--volume={0}:{0}:ro", mounts.display()));
            command.args(["--env=RUST_LOG=info", "--env=NO_COLOR=1"]);
            // What this kind of machine asks of podman: runc (crun refuses
            // its hybrid cgroups), cgroupfs (no systemd), limits within its own.
            command.args(["--runtime=runc", "--cgroup-manager=cgroupfs"]);
            command.args(["--ulimit=nofile=4096:4096", "--ulimit=nproc=1024:1024"]);
            command.args([image, "run"]);
            name
        });
        if container.is_none() {
            command.args(["netns", "exec", &node_ns, BIN, "run"]);
        }
        match &cfg.source {
            AgentSource::Manifests(dir) => command.arg("--manifests").arg(dir),
            AgentSource::Kubernetes {
                kubeconfig,
                watch_timeout,
            } => command
                .arg("--kubernetes")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--watch-timeout-secs", &watch_timeout.as_secs().to_string()]),
        };
        let child = command
            .args(["--node-name", cfg.node_name])
            .args(["--health-addr", &format!("0.0.0.0:{HEALTH_PORT}")])
            .args(["--health-bind-ip", cfg.health_bind_ip])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--sync-period-secs", &cfg.sync_period.as_secs().to_string()])
            .args(["--poll-interval-ms", "100"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {BIN}: {e}"));
        Agent {
            child: Some(child),
            container,
            label: label.to_string(),
            logs,
            metrics_port,
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    pub fn syncs(&self) -> usize {
        self.stderr()
            .lines()
            .filter(|l| l.contains(" synced"))
            .count()
    }

    /// Waits until the agent has logged `n` syncs in all.
    pub fn wait_syncs(&mut self, n: usize, limit: Duration) -> Duration {
        let (_, took) = wait_for(
            &format!("{}: {n} syncs", self.label),
            limit,
            RECHECK,
            || {
                self.assert_running();
                (self.syncs() >= n).then_some(())
            },
        );
        took
    }

    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("agent running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "{} exited early with {status}:\n{}",
                self.label,
                self.stderr()
            );
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                &format!("{} to exit after SIGTERM", self.label),
                Duration::from_secs(10),
                RECHECK,
                || child.try_wait().expect("try_wait"),
            )
        }));
        match waited {
            Ok((status, _)) => status,
            Err(panic) => {
                self.child = Some(child); // the drop guard kills it
                std::panic::resume_unwind(panic)
            }
        }
    }

    pub fn metrics(&self, lab: &Lab) -> String {
        let resp = lab
            .http_get("node", "127.0.0.1", self.metrics_port, "/metrics")
            .expect("GET /metrics");
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.body
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                eprintln!("{}: kill: {e}", self.label);
            }
            if let Err(e) = child.wait() {
                eprintln!("{}: wait: {e}", self.label);
            }
        }
        // Killing podman leaves its container running: remove it.
        if let Some(name) = self.container.take() {
            let removed = Command::new("podman")
                .args(["rm", "--force", "--time=0", "--ignore", &name])
                .output();
            if let Err(e) = removed {
                eprintln!("{}: podman rm {name}: {e}", self.label);
            }
        }
        if std::thread::panicking() {
            eprintln!("----- {} stderr -----\n{}-----", self.label, self.stderr());
        }
    }
}

/// A metric's value in the Prometheus text format.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
