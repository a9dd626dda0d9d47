//! The lab's background processes: each started with `setsid ip netns exec
//! <ns> <program> ...` (its own session, so it outlives `portico-lab up` and
//! the terminal), its output in `<state>/logs/<name>.log`, its pid in
//! `<state>/run/<name>.pid`. Stopping goes by namespace (`ip netns pids`), so
//! it needs no pidfile and cannot hit a recycled pid outside the lab.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::{self, NetnsError};

/// How often a condition on processes is re-checked.
const RECHECK: Duration = Duration::from_millis(20);

/// A process failure.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Its log or pid file could not be written.
    #[error("{name}: {path}: {source}")]
    File {
        /// The process.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It could not be started.
    #[error("{name}: cannot start {program}: {source}")]
    Spawn {
        /// The process.
        name: String,
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its namespace could not be inspected.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Processes were still running after SIGKILL.
    #[error("processes still running in {namespaces:?} after SIGKILL")]
    Survivors {
        /// Where.
        namespaces: Vec<String>,
    },
}

/// A process the lab started.
#[derive(Debug)]
pub struct Spawned {
    /// Its name (`edge`, `agent-node-1`, `pod-web-1`, ...).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its log file.
    pub log: PathBuf,
    /// The program.
    pub program: PathBuf,
    /// Its arguments (to start it again the same way).
    pub args: Vec<String>,
    /// The child handle, to reap it (the process lives on when this is dropped).
    pub child: Child,
}

/// The log file of process `name`.
pub fn log_path(state: &Path, name: &str) -> PathBuf {
    state.join("logs").join(format!("{name}.log"))
}

/// The pid file of process `name`.
pub fn pid_path(state: &Path, name: &str) -> PathBuf {
    state.join("run").join(format!("{name}.pid"))
}

/// Starts `program args` in namespace `ns` in its own session. Its output
/// is appended to its log (a process started again keeps its history).
pub fn spawn(
    state: &Path,
    name: &str,
    ns: &str,
    program: &Path,
    args: &[String],
) -> Result<Spawned, ProcError> {
    let file_err = |path: &Path| {
        let (name, path) = (name.to_string(), path.to_path_buf());
        move |source| ProcError::File { name, path, source }
    };
    let log = log_path(state, name);
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(file_err(&log))?;
    let err = out.try_clone().map_err(file_err(&log))?;
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", ns])
        .arg(program)
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("PORTICO_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| ProcError::Spawn {
            name: name.to_string(),
            program: program.to_path_buf(),
            source,
        })?;
    // `setsid` (not a group leader here) and `ip netns exec` both exec: the
    // child's pid is the program's.
    let pid = pid_path(state, name);
    fs::write(&pid, format!("{}\n", child.id())).map_err(file_err(&pid))?;
    Ok(Spawned {
        name: name.to_string(),
        ns: ns.to_string(),
        log,
        program: program.to_path_buf(),
        args: args.to_vec(),
        child,
    })
}

/// Whether a pid file names a live process; its pid.
pub fn pid_alive(path: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    // A zombie (exited, not reaped) counts as gone.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    (state != 'Z').then_some(pid)
}

/// Ends every process in `namespaces`: SIGTERM, then SIGKILL for those still
/// there after `grace`. Returns how many processes were signalled.
pub fn stop_all(namespaces: &[String], grace: Duration) -> Result<usize, ProcError> {
    let running = |namespaces: &[String]| -> Result<Vec<(String, i32)>, ProcError> {
        let mut all = Vec::new();
        for ns in namespaces {
            all.extend(netns::pids(ns)?.into_iter().map(|p| (ns.clone(), p)));
        }
        Ok(all)
    };
    let first = running(namespaces)?;
    signal_all(&first, Signal::SIGTERM);
    if wait_gone(namespaces, grace, &running)? {
        return Ok(first.len());
    }
    let left = running(namespaces)?;
    tracing::warn!(
        count = left.len(),
        "processes ignored SIGTERM; killing them"
    );
    signal_all(&left, Signal::SIGKILL);
    if wait_gone(namespaces, Duration::from_secs(5), &running)? {
        return Ok(first.len());
    }
    let mut namespaces: Vec<String> = running(namespaces)?.into_iter().map(|(ns, _)| ns).collect();
    namespaces.dedup();
    Err(ProcError::Survivors { namespaces })
}

/// Stops every process in those of the namespaces `<prefix>-<role>` that
/// exist, then deletes them: what a benchmark's `down` removes. Safe when
/// none is there.
pub fn remove_namespaces(prefix: &str, roles: &[&str], grace: Duration) -> Result<(), ProcError> {
    let existing = netns::list()?;
    let ours: Vec<String> = roles
        .iter()
        .map(|r| format!("{prefix}-{r}"))
        .filter(|ns| existing.contains(ns))
        .collect();
    stop_all(&ours, grace)?;
    for ns in &ours {
        netns::del(ns)?;
    }
    Ok(())
}

fn signal_all(pids: &[(String, i32)], signal: Signal) {
    for (ns, pid) in pids {
        // ESRCH: it ended meanwhile.
        if let Err(e) = kill(Pid::from_raw(*pid), signal) {
            if e != nix::errno::Errno::ESRCH {
                tracing::warn!(ns, pid, error = %e, "cannot signal a lab process");
            }
        }
    }
}

type Running<'a> = dyn Fn(&[String]) -> Result<Vec<(String, i32)>, ProcError> + 'a;

/// Waits until no process is left in `namespaces`; `false` at the deadline.
fn wait_gone(
    namespaces: &[String],
    limit: Duration,
    running: &Running<'_>,
) -> Result<bool, ProcError> {
    let deadline = Instant::now() + limit;
    loop {
        if running(namespaces)?.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(RECHECK);
    }
}

/// The last `lines` lines of a log file (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
