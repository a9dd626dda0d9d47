//! The auxiliary programs the lab and the benchmarks run (`ip`, `nft`,
//! `taskset`, `haproxy`, `wrk`, `perf`), and the `cargo build` of the
//! binaries the tests run: every wait bounded, both output pipes read on
//! threads of their own so a chatty child never blocks, and every failure
//! naming the command line. Also where programs are found ([`find_on_path`],
//! [`installed`]), how one is pinned to CPUs ([`pinned`]) and the version
//! line a report prints of it ([`first_line`]).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A command that failed, timed out or could not start.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {reason}")]
pub struct CommandFailed {
    /// The command line.
    pub command: String,
    /// What it said, or why it did not run.
    pub reason: String,
}

/// Runs a command with a deadline; its stdout, or an error with its stderr.
pub fn run(
    program: &str,
    args: &[String],
    stdin: Option<&str>,
    limit: Duration,
) -> Result<String, CommandFailed> {
    let line = format!("{program} {}", args.join(" "));
    let fail = |reason: String| CommandFailed {
        command: line.clone(),
        reason,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| fail(format!("stdin: {e}")))?;
    }
    // Read both pipes on threads so a chatty child never blocks on them.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            if let Err(e) = p.read_to_string(&mut s) {
                tracing::debug!(error = %e, "reading a command's output");
            }
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            if let Err(e) = p.read_to_string(&mut s) {
                tracing::debug!(error = %e, "reading a command's output");
            }
        }
        s
    });
    let status = wait_bounded(&mut child, limit, &line)?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!("{status}: {}", stderr.trim())));
    }
    Ok(stdout)
}

/// Runs `program args` inside namespace `ns` (`ip netns exec`), with
/// `stdin`, at most `limit`; its stdout.
pub fn run_in(
    ns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> Result<String, CommandFailed> {
    let mut all: Vec<String> = ["netns", "exec", ns, program]
        .iter()
        .map(|a| a.to_string())
        .collect();
    all.extend(args.iter().map(|a| a.to_string()));
    run("ip", &all, stdin, limit)
}

/// Waits for `child` at most `limit`, killing it then.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> Result<std::process::ExitStatus, CommandFailed> {
    let deadline = Instant::now() + limit;
    loop {
        let polled = child.try_wait().map_err(|e| CommandFailed {
            command: what.to_string(),
            reason: e.to_string(),
        })?;
        if let Some(status) = polled {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            if let Err(e) = child.kill() {
                tracing::warn!(command = what, error = %e, "cannot kill a timed-out command");
            }
            // Reap it; an error here only means it is already gone.
            if let Err(e) = child.wait() {
                tracing::debug!(command = what, error = %e, "reaping a killed command");
            }
            return Err(CommandFailed {
                command: what.to_string(),
                reason: format!("still running after {limit:?}; killed"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises this process's open-files soft limit to its hard limit (trap 9);
/// the programs it starts inherit it.
pub fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open-files limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Where `program` is on PATH, if it is.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|p| p.join(program))
        .find(|p| p.is_file())
}

/// Where a daemon's `program` is: on PATH, else in /usr/sbin, where Debian
/// puts daemons (root's PATH has it; other users' may not).
pub fn daemon_program(program: &str) -> PathBuf {
    find_on_path(program).unwrap_or_else(|| Path::new("/usr/sbin").join(program))
}

/// Whether `program` is on PATH (or in /usr/sbin, where Debian puts daemons).
pub fn installed(program: &str) -> bool {
    find_on_path(program).is_some()
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(program).is_file())
}

/// For tests: says loudly (straight to stderr, which the harness does not
/// capture) that `what` is skipped and why, and returns `false`; under
/// `CI=true` a skip is a failure and this panics instead.
pub fn skip(what: &str, why: &str) -> bool {
    let why = format!("SKIPPED {what}: {why}");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}; CI=true forbids skipping"
    );
    if let Err(e) = writeln!(std::io::stderr(), "{why}") {
        panic!("{why} (and stderr failed: {e})");
    }
    false
}

/// For tests: whether every `(program, Debian package)` is installed;
/// when one is not, [`skip`]s `what` naming it.
pub fn installed_or_skip(what: &str, programs: &[(&str, &str)]) -> bool {
    match programs.iter().find(|(program, _)| !installed(program)) {
        None => true,
        Some((program, package)) => skip(
            what,
            &format!("{program} is not installed (Debian package {package}; scripts/install-deps installs it)"),
        ),
    }
}

/// `program args`, behind `taskset -c cpus` when pinned.
pub fn pinned(cpus: Option<&str>, program: &str, args: &[String]) -> (String, Vec<String>) {
    match cpus {
        Some(cpus) => {
            let mut all = vec!["-c".to_string(), cpus.to_string(), program.to_string()];
            all.extend(args.iter().cloned());
            ("taskset".to_string(), all)
        }
        None => (program.to_string(), args.to_vec()),
    }
}

/// The first line of what `program args` prints (stdout, then stderr): a
/// version line for a report, or why the program is not available.
pub fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string(),
        Err(e) => format!("{program}: not available ({e})"),
    }
}

/// `cargo build -p <package>... --bins` into the target directory and
/// profile that `profile_dir` (`<target>/<profile>`) belongs to, for the
/// tests that run binaries of other packages (the lab's and the
/// dashboards'). Cargo releases its build lock before running tests, so this
/// does not wait on the outer cargo. Its output goes to this process's.
pub fn cargo_build(profile_dir: &Path, packages: &[&str]) -> Result<(), CommandFailed> {
    let what = format!("cargo build {} --bins", packages.join(" "));
    let fail = |reason: String| CommandFailed {
        command: what.clone(),
        reason,
    };
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| fail(format!("{} has no target directory", profile_dir.display())))?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .ok_or_else(|| fail(format!("{} names no profile", profile_dir.display())))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(&cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("build")
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .arg("--bins")
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    eprintln!("building: {command:?}");
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot start {cargo}: {e}")))?;
    let status = wait_bounded(&mut child, CARGO_BUILD_LIMIT, &what)?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(status.to_string()))
    }
}

/// The longest a [`cargo_build`] may take (a clean build of the workspace
/// takes about 8 minutes on two cores).
const CARGO_BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);
