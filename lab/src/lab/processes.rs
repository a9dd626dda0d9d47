//! The lab's processes once it is up: waiting on a condition while
//! watching them ([`Lab::wait_for`]), their logs, signalling, stopping and
//! starting them again, and killing and reviving a whole node (its agent
//! and its pods).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procs::{self, ProcError, Spawned};
use crate::topology::{self, NodeSpec};

use super::{Lab, LabError, RECHECK, STOP_GRACE};

impl Lab {
    /// Calls `check` until it succeeds or `limit` passes; fails early when a
    /// lab process has exited.
    pub(super) fn wait<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Lab) -> Result<T, String>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match check(self) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let exited = self.exited();
            if !exited.is_empty() || Instant::now() >= deadline {
                let mut diagnostics = format!("\nlast problem: {last}");
                for (name, status) in &exited {
                    diagnostics.push_str(&format!("\n{name} exited: {status}"));
                }
                diagnostics.push_str(&self.log_tails(15));
                return Err(LabError::NotReady {
                    what: what.to_string(),
                    limit,
                    diagnostics,
                });
            }
            std::thread::sleep(RECHECK);
        }
    }

    /// Processes that have exited, with their status.
    fn exited(&mut self) -> Vec<(String, String)> {
        self.processes
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some((p.name.clone(), status.to_string())),
                Ok(None) => None,
                Err(e) => Some((p.name.clone(), format!("unknown ({e})"))),
            })
            .collect()
    }

    /// The last lines of every process's log, labelled.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in self.processes.iter().chain(&self.stopped) {
            out.push_str(&format!(
                "\n----- {} ({}) -----\n{}",
                p.name,
                p.log.display(),
                procs::log_tail(&p.log, lines)
            ));
        }
        out
    }

    /// Calls `check` until it succeeds or `limit` passes, failing early
    /// (with every process's log) when a lab process exits.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        check: impl FnMut(&Lab) -> Result<T, String>,
    ) -> Result<T, LabError> {
        self.wait(what, limit, check)
    }

    /// The names of the running lab processes (`api-server`, `edge`,
    /// `agent-node-1`, `pod-web-1`, ...).
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name.clone()).collect()
    }

    /// The name of the running edge process (`edge`; `edge-2`, ... after
    /// [`Lab::upgrade_edge`]).
    pub fn edge_process(&self) -> &str {
        &self.edge
    }

    /// The running process `name`.
    pub(super) fn running(&self, name: &str) -> Result<&Spawned, LabError> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchProcess(name.to_string()))
    }

    /// Sends `signal` to lab process `name` (SIGHUP to reload the edge,
    /// SIGSTOP / SIGCONT to freeze the API server, ...). Does not wait.
    pub fn signal(&self, name: &str, signal: Signal) -> Result<(), LabError> {
        let p = self.running(name)?;
        let pid = Pid::from_raw(p.child.id() as i32);
        kill(pid, signal).map_err(|e| LabError::Signal {
            name: name.to_string(),
            signal,
            errno: e,
        })
    }

    /// Stops lab process `name` with `signal` and waits (at most `limit`)
    /// until it has exited; its exit status. It is kept to be started again
    /// by [`Lab::start_again`].
    pub fn stop_process(
        &mut self,
        name: &str,
        signal: Signal,
        limit: Duration,
    ) -> Result<ExitStatus, LabError> {
        self.signal(name, signal)?;
        self.wait_exit(name, limit)
    }

    /// Waits (at most `limit`) until lab process `name` (running, or
    /// draining after [`Lab::upgrade_edge`]) has exited on its own or after
    /// a signal; moves it to the stopped ones.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Result<ExitStatus, LabError> {
        if let Some(i) = self.processes.iter().position(|p| p.name == name) {
            let p = self.processes.remove(i);
            self.stopped.retain(|s| s.name != name);
            self.stopped.push(p);
        }
        let i = self
            .stopped
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchProcess(name.to_string()))?;
        let deadline = Instant::now() + limit;
        loop {
            match self.stopped[i].child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(RECHECK),
                Ok(None) => {
                    return Err(LabError::NotReady {
                        what: format!("{name} to exit"),
                        limit,
                        diagnostics: self.log_tails(15),
                    })
                }
                Err(source) => {
                    return Err(LabError::Proc(ProcError::File {
                        name: name.to_string(),
                        path: self.stopped[i].log.clone(),
                        source,
                    }))
                }
            }
        }
    }

    /// Starts a process stopped by [`Lab::stop_process`] again, the same
    /// way (its log goes on in the same file). Does not wait for it to be
    /// ready: wait for what it provides.
    pub fn start_again(&mut self, name: &str) -> Result<(), LabError> {
        let i = self
            .stopped
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchProcess(name.to_string()))?;
        let old = self.stopped.remove(i);
        let spawned = procs::spawn(&self.state, &old.name, &old.ns, &old.program, &old.args)?;
        self.processes.push(spawned);
        Ok(())
    }

    /// Whether a stopped (or draining) process has exited; its status.
    pub fn stopped_status(&mut self, name: &str) -> Option<ExitStatus> {
        self.stopped
            .iter_mut()
            .find(|p| p.name == name)
            .and_then(|p| p.child.try_wait().ok().flatten())
    }

    /// The processes of a node: its agent and its pods' servers.
    pub fn node_processes(node: &NodeSpec) -> Vec<String> {
        let mut names = vec![format!("agent-{}", node.name)];
        names.extend(
            topology::pods()
                .iter()
                .filter(|p| p.node == node.index)
                .map(|p| format!("pod-{}", p.name)),
        );
        names
    }

    /// Kills a node's agent and its pods' servers (SIGKILL: nothing is
    /// cleaned up, the agent's rules stay as a crashed node leaves them);
    /// returns when they are gone.
    pub fn kill_node(&mut self, node: &NodeSpec) -> Result<(), LabError> {
        for name in Lab::node_processes(node) {
            self.signal(&name, Signal::SIGKILL)?;
        }
        for name in Lab::node_processes(node) {
            self.wait_exit(&name, STOP_GRACE)?;
        }
        Ok(())
    }

    /// Starts a node's agent and pods again after [`Lab::kill_node`].
    pub fn revive_node(&mut self, node: &NodeSpec) -> Result<(), LabError> {
        for name in Lab::node_processes(node) {
            self.start_again(&name)?;
        }
        Ok(())
    }
}
