//! The Portico contender: the edge's config (the Kubernetes watch, VIPs
//! from a pool), its process in the lb namespace, its metrics, and its
//! measurement ([`Scale::run_portico`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api;
use crate::netns;
use crate::procfs::ticks_to_seconds;
use crate::procs::{self, Spawned};

use super::figures::{cpu_ticks, mem};
use super::topology::{wait_until, write};
use super::{
    change_target, changed_node_port, pool, ports_json, service_name, service_object, vip, Addrs,
    Figures, Scale, ScaleError, EDGE_ADMIN_PORT, EDGE_METRICS, HEALTH_PORT, KUBE_NS, PORTS,
};

/// The edge's config: the Kubernetes watch, VIPs on `eth0`, the pool, the
/// lab's health settings (kube-proxy's `/healthz` on :10256); the pool in
/// the family of `addrs`.
pub fn portico_config(kubeconfig: &Path, addrs: Addrs) -> String {
    format!(
        "# Written by portico-lab scale.
settings:
  health:
    interval: 1s
    timeout: 500ms
    rise: 2
    fall: 2
    kubeProxyPort: {HEALTH_PORT}
  proxy:
    connectTimeout: 1s
    connectRetries: 2
    drainTimeout: 1s
  vip:
    interface: eth0
  metricsListen: {EDGE_METRICS}
  adminListen: 127.0.0.1:{EDGE_ADMIN_PORT}
  kubernetes:
    kubeconfig: {}
  addressPools:
    - name: scale
      addresses: [\"{}\"]
",
        kubeconfig.display(),
        pool(addrs)
    )
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

impl Scale {
    /// Starts the edge (process `name`) in the lb namespace, pinned.
    fn start_edge(&self, name: &str) -> Result<Spawned, ScaleError> {
        let conf = self.opts.state_dir.join("edge.yaml");
        write(
            &conf,
            &portico_config(
                &self.opts.state_dir.join(api::KUBECONFIG),
                self.opts.addrs(),
            ),
        )?;
        let socket = self.opts.state_dir.join("run").join(format!("{name}.sock"));
        let (program, args) = self.pinned(
            &self.opts.edge_bin.display().to_string(),
            &[
                "run".into(),
                "--config".into(),
                conf.display().to_string(),
                "--upgrade-socket".into(),
                socket.display().to_string(),
                "--threads".into(),
                "1".into(),
            ],
        );
        Ok(procs::spawn(
            &self.opts.state_dir,
            name,
            &self.ns("lb"),
            Path::new(&program),
            &args,
        )?)
    }

    /// The edge's `/metrics` text.
    fn edge_metrics(&self) -> Result<String, String> {
        let (code, body) = netns::in_netns(&self.ns("lb"), || {
            api::http_exchange(EDGE_METRICS, "GET", "/metrics", None)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        Ok(body)
    }

    /// The whole Portico measurement.
    pub fn run_portico(&mut self) -> Result<Figures, ScaleError> {
        let mut f = Figures::default();
        let n = self.opts.services;
        let edge = self.start_edge("edge-warm")?;
        let pid = edge.child.id() as i32;
        let log = edge.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            wait_until("the edge's metrics", Duration::from_secs(30), || {
                self.edge_metrics().map(|_| ())
            })?;
            std::thread::sleep(Duration::from_secs(2));
            f.mem_empty = mem(&[pid]);
            let cpu_before = cpu_ticks(&[pid]);
            let api = self.api();
            let addrs = self.opts.addrs();
            let path = format!("/api/v1/namespaces/{KUBE_NS}/services");
            let started = Instant::now();
            for (i, ports) in self.ports.iter().enumerate() {
                api.create(&path, &service_object(addrs, i, *ports))?;
            }
            f.api_writes = Some(started.elapsed());
            let want = (n * PORTS.len()) as f64;
            let mut listeners_at: Option<Duration> = None;
            (f.warm_first, f.warm) =
                self.probe_all(started, "warm set-up (Portico)", &log, || {
                    if listeners_at.is_none() {
                        if let Ok(m) = self.edge_metrics() {
                            if metric_value(&m, "portico_edge_listeners").is_some_and(|v| v >= want)
                            {
                                listeners_at = Some(started.elapsed());
                            }
                        }
                    }
                })?;
            f.warm_cpu_s = ticks_to_seconds(cpu_ticks(&[pid]).saturating_sub(cpu_before));
            if listeners_at.is_none() {
                let m = self.edge_metrics().unwrap_or_default();
                if metric_value(&m, "portico_edge_listeners").is_some_and(|v| v >= want) {
                    listeners_at = Some(started.elapsed());
                }
            }
            f.warm_listeners = listeners_at;
            f.answered = self.check_pass()?;
            f.mem_warm = mem(&[pid]);
            for k in 0..self.opts.changes {
                let (i, p) = change_target(n, self.opts.changes, k);
                let new = changed_node_port(n, k);
                let mut ports = self.ports[i];
                ports[p] = new;
                let patch = json!({"spec": {"ports": ports_json(ports)}});
                api.merge_patch(&format!("{path}/{}", service_name(i)), &patch)?;
                let since = Instant::now();
                let (took, errors) =
                    self.follow(SocketAddr::new(vip(addrs, i), PORTS[p]), new, since, &log)?;
                self.ports[i] = ports;
                f.changes.push(took);
                f.change_errors += errors;
            }
            Ok(())
        })();
        self.stop_contender(Some(edge))?;
        result?;
        // Cold: everything is in the API server already.
        let started = Instant::now();
        let edge = self.start_edge("edge-cold")?;
        let pid = edge.child.id() as i32;
        let log = edge.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            (f.cold_first, f.cold) =
                self.probe_all(started, "cold start (Portico)", &log, || {})?;
            f.cold_cpu_s = ticks_to_seconds(cpu_ticks(&[pid]));
            let answered = self.check_pass()?;
            f.answered = f.answered.min(answered);
            f.mem_cold = mem(&[pid]);
            Ok(())
        })();
        self.stop_contender(Some(edge))?;
        result?;
        Ok(f)
    }
}
