//! Network namespaces through `ip`: create, list, delete, the processes
//! inside one, and running code in one (a thread that entered it: sockets it
//! creates live there).

use std::fs::File;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

/// A failure of an `ip` command or of entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be started.
    #[error("cannot run `ip {args}`: {source}")]
    Spawn {
        /// Its arguments.
        args: String,
        /// Why.
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// The namespace could not be entered.
    #[error("cannot enter network namespace {ns}: {reason}")]
    Enter {
        /// The namespace.
        ns: String,
        /// Why.
        reason: String,
    },
}

/// Runs `ip` with `args`; its stdout.
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip` with whitespace-separated arguments.
pub fn ip_line(line: &str) -> Result<String, NetnsError> {
    ip(&line.split_whitespace().collect::<Vec<_>>())
}

/// Creates namespace `name` with its loopback up, and IPv6 duplicate
/// address detection off for every interface it will get: the lab's
/// addresses are unique by construction, and an address (link-local ones
/// included, which neighbour discovery speaks from) is usable at once
/// instead of a second or two after its link comes up.
pub fn add(name: &str) -> Result<(), NetnsError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    let written = in_netns(name, || {
        ["all", "default"].iter().try_for_each(|conf| {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")
        })
    })?;
    written.map_err(|e| NetnsError::Enter {
        ns: name.to_string(),
        reason: format!("cannot turn IPv6 duplicate address detection off: {e}"),
    })
}

/// Deletes namespace `name` (its links go when its last process has left).
pub fn del(name: &str) -> Result<(), NetnsError> {
    ip(&["netns", "del", name]).map(|_| ())
}

/// Every named network namespace.
pub fn list() -> Result<Vec<String>, NetnsError> {
    // `ip netns list` prints `name` or `name (id: N)`.
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The processes inside namespace `name`.
pub fn pids(name: &str) -> Result<Vec<i32>, NetnsError> {
    Ok(ip(&["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Runs `f` on a fresh thread that entered namespace `ns`: sockets it
/// creates live there (and stay there when used elsewhere). A panic in `f`
/// is passed on.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            let path = format!("/run/netns/{ns}");
            let enter_err = |reason: String| NetnsError::Enter {
                ns: ns.to_string(),
                reason,
            };
            let file = File::open(&path).map_err(|e| enter_err(format!("open {path}: {e}")))?;
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| enter_err(format!("setns: {e}")))?;
            Ok(f())
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// For tests: whether privileged tests (root, `ip`, `nft`, `setsid`) can run here. When
/// they cannot, says so loudly; under `CI=true` that is a failure.
pub fn privileged(what: &str) -> bool {
    use std::io::Write as _;
    let root = nix::unistd::geteuid().is_root();
    let tools = [("ip", "-V"), ("nft", "-V"), ("setsid", "--version")]
        .iter()
        .all(|(tool, flag)| {
            std::process::Command::new(tool)
                .arg(flag)
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if root && tools {
        return true;
    }
    let why = format!(
        "SKIPPED {what}: needs root and the ip, nft and setsid programs (root={root}, tools={tools})"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing
    // tests, and a skip must be seen.
    if let Err(e) = writeln!(std::io::stderr(), "{why}") {
        panic!("{why} (and stderr failed: {e})");
    }
    false
}
