//! The HAProxy contender: its generated config (a `listen` per VIP:port,
//! the nodes' state tracked from one health check per node), its
//! master-worker process, reloads by `SIGUSR2`, and its measurement
//! ([`Scale::run_haproxy`]).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns;
use crate::procfs::ticks_to_seconds;
use crate::procs::{self, Spawned};

use super::figures::{cpu_ticks, mem, per_pid_ticks, ticks_since};
use super::topology::{run_in, wait_until, write};
use super::{
    change_target, changed_node_port, node_ports, vip, Addrs, Figures, Scale, ScaleError,
    HAPROXY_IDLE_PORT, HEALTH_PORT, NODES, PORTS, STOP_GRACE,
};

/// HAProxy doing the edge's job for `services` (each Service's nodePorts):
/// one `listen` per VIP:port to both nodes, whose state tracks one
/// `httpchk GET /healthz` per node (kube-proxy's health server, as the edge
/// checks it); one thread. Addresses in the family of `addrs` (IPv6 ones in
/// brackets).
pub fn haproxy_config(addrs: Addrs, services: &[[u16; 3]]) -> String {
    let mut out = String::with_capacity(200 + services.len() * 600);
    out.push_str(
        "global
  nbthread 1
  maxconn 6000
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  retries 2
  option redispatch
backend health
  option httpchk GET /healthz
",
    );
    let nodes = NODES.map(|ip| addrs.of(ip));
    for (k, ip) in nodes.iter().enumerate() {
        out.push_str(&format!(
            "  server node-{} {} check inter 1s fall 2 rise 2\n",
            k + 1,
            SocketAddr::new(*ip, HEALTH_PORT)
        ));
    }
    out.push_str(&format!(
        "listen idle\n  bind 127.0.0.1:{HAPROXY_IDLE_PORT}\n"
    ));
    for (i, ports) in services.iter().enumerate() {
        for (p, node_port) in ports.iter().enumerate() {
            out.push_str(&format!(
                "listen s{i}-{port}\n  bind {vip}\n  balance roundrobin\n",
                port = PORTS[p],
                vip = SocketAddr::new(vip(addrs, i), PORTS[p])
            ));
            for (k, ip) in nodes.iter().enumerate() {
                out.push_str(&format!(
                    "  server node-{n} {} track health/node-{n}\n",
                    SocketAddr::new(*ip, *node_port),
                    n = k + 1
                ));
            }
        }
    }
    out
}

impl Scale {
    /// Starts HAProxy (process `name`) on `conf` in the lb namespace, pinned.
    fn start_haproxy(&self, conf: &Path, name: &str) -> Result<Spawned, ScaleError> {
        let (program, args) = self.pinned(
            "haproxy",
            &[
                "-W".into(),
                "-db".into(),
                "-f".into(),
                conf.display().to_string(),
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

    /// HAProxy's processes (master and workers) in the lb namespace.
    fn haproxy_pids(&self) -> Result<Vec<i32>, ScaleError> {
        Ok(netns::pids(&self.ns("lb"))?
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "haproxy")
            })
            .collect())
    }

    /// Waits until HAProxy's master logged `loads` successful loads and runs
    /// one worker (a reload signalled before the master finished the last one
    /// can be lost).
    fn haproxy_settled(&self, log: &Path, loads: usize) -> Result<Vec<i32>, ScaleError> {
        let mut pids = Vec::new();
        wait_until(
            "HAProxy: loaded, one master, one worker",
            Duration::from_secs(30),
            || {
                pids = self.haproxy_pids().map_err(|e| e.to_string())?;
                let loaded = fs::read_to_string(log)
                    .unwrap_or_default()
                    .matches("Loading success")
                    .count();
                if pids.len() == 2 && loaded >= loads {
                    Ok(())
                } else {
                    Err(format!(
                        "{} processes, {loaded} of {loads} loads; log: {}",
                        pids.len(),
                        procs::log_tail(log, 10)
                    ))
                }
            },
        )?;
        // The master's signal handling is set up just after its log line.
        std::thread::sleep(Duration::from_millis(200));
        Ok(pids)
    }

    /// The whole HAProxy measurement.
    pub fn run_haproxy(&mut self) -> Result<Figures, ScaleError> {
        let mut f = Figures::default();
        let n = self.opts.services;
        let lb = self.ns("lb");
        let addrs = self.opts.addrs();
        // Its VIPs, as the edge's would be: /32 (/128) on eth0 (untimed).
        let batch: String = (0..n)
            .map(|i| {
                let vip = addrs.with_prefix(vip(addrs, i), addrs.host_prefix());
                format!("addr add {vip} dev eth0\n")
            })
            .collect();
        run_in(&lb, "ip", &["-batch", "-"], Some(&batch))?;
        let conf = self.opts.state_dir.join("haproxy.cfg");
        let initial: Vec<[u16; 3]> = (0..n).map(node_ports).collect();
        self.ports = initial.clone();
        write(&conf, &haproxy_config(addrs, &[]))?;
        let master = self.start_haproxy(&conf, "haproxy-warm")?;
        let master_pid = master.child.id() as i32;
        let log = master.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            let pids = self.haproxy_settled(&log, 1)?;
            std::thread::sleep(Duration::from_secs(2));
            f.mem_empty = mem(&pids);
            let before = per_pid_ticks(&pids);
            let started = Instant::now();
            write(&conf, &haproxy_config(addrs, &self.ports))?;
            signal(master_pid, nix::sys::signal::Signal::SIGUSR2)?;
            (f.warm_first, f.warm) =
                self.probe_all(started, "warm set-up (HAProxy reload)", &log, || {})?;
            f.warm_cpu_s = ticks_to_seconds(ticks_since(&before, &self.haproxy_pids()?));
            let pids = self.haproxy_settled(&log, 2)?;
            f.answered = self.check_pass()?;
            f.mem_warm = mem(&pids);
            for k in 0..self.opts.changes {
                let (i, p) = change_target(n, self.opts.changes, k);
                let new = changed_node_port(n, k);
                let mut ports = self.ports.clone();
                ports[i][p] = new;
                let since = Instant::now();
                write(&conf, &haproxy_config(addrs, &ports))?;
                signal(master_pid, nix::sys::signal::Signal::SIGUSR2)?;
                let (took, errors) =
                    self.follow(SocketAddr::new(vip(addrs, i), PORTS[p]), new, since, &log)?;
                self.ports = ports;
                f.changes.push(took);
                f.change_errors += errors;
                // The reload ends and the old worker leaves before the next change.
                self.haproxy_settled(&log, 3 + k)?;
            }
            Ok(())
        })();
        procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)?;
        let mut master = master;
        if let Err(e) = master.child.wait() {
            tracing::warn!(error = %e, "cannot reap HAProxy");
        }
        result?;
        let started = Instant::now();
        let master = self.start_haproxy(&conf, "haproxy-cold")?;
        let log = master.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            (f.cold_first, f.cold) =
                self.probe_all(started, "cold start (HAProxy)", &log, || {})?;
            let pids = self.haproxy_pids()?;
            f.cold_cpu_s = ticks_to_seconds(cpu_ticks(&pids));
            let answered = self.check_pass()?;
            f.answered = f.answered.min(answered);
            f.mem_cold = mem(&self.haproxy_settled(&log, 1)?);
            Ok(())
        })();
        self.stop_contender(Some(master))?;
        // Back to the Services' state in the API server for a later run.
        self.ports = initial;
        result?;
        Ok(f)
    }
}

/// Sends `sig` to process `pid`.
fn signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<(), ScaleError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| ScaleError::Command {
        command: format!("kill -{sig} {pid}"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::IpFamily;
    use super::*;

    #[test]
    fn the_haproxy_config_has_every_frontend_tracking_both_nodes() {
        let v4 = Addrs(IpFamily::V4);
        let text = haproxy_config(v4, &[node_ports(0), [20003, 20004, 23000]]);
        assert_eq!(text.matches("\nlisten s").count(), 6);
        assert!(text.contains("listen s1-8080\n  bind 10.95.0.2:8080\n"));
        assert!(text.contains("  server node-2 10.94.0.12:23000 track health/node-2\n"));
        assert!(text.contains("  server node-1 10.94.0.11:20000 track health/node-1\n"));
        assert!(text.contains("  server node-1 10.94.0.11:10256 check inter 1s fall 2 rise 2\n"));
        assert!(text.contains("option httpchk GET /healthz"));
        assert!(text.contains("nbthread 1"));
        let empty = haproxy_config(v4, &[]);
        assert!(empty.contains("listen idle\n  bind 127.0.0.1:9799\n"));
        assert!(!empty.contains("listen s"));
        let v6 = haproxy_config(Addrs(IpFamily::V6), &[node_ports(0), [20003, 20004, 23000]]);
        assert!(
            v6.contains("listen s1-8080\n  bind [fd00:95::2]:8080\n"),
            "{v6}"
        );
        assert!(v6.contains("  server node-2 [fd00:94::12]:23000 track health/node-2\n"));
        assert!(v6.contains("  server node-1 [fd00:94::11]:10256 check inter 1s"));
    }
}
