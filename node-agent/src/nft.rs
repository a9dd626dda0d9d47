//! The IO edge: loading scripts into nftables.
//!
//! [`NftCommand`] runs the `nft` program (`nft -f -`, the script on stdin):
//! nft sends a whole file as one netlink batch, so a script is applied
//! completely or not at all. It runs in the network namespace of the calling
//! thread; tests enter a namespace on a dedicated thread before calling it.
//! `FakeNft` (unit tests only) records scripts in memory for tests of the
//! code that decides what to apply.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::ruleset::TABLE_NAME;

/// Why loading or listing rules failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` program could not be started, fed or waited for.
    #[error("running {program}: {source}")]
    Io {
        /// The program that was run.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the script or the command; nothing was changed.
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        /// The program that was run.
        program: String,
        /// Its arguments.
        args: String,
        /// Its exit status.
        status: String,
        /// What nft printed on stderr (names the offending line).
        stderr: String,
    },
    /// The fake was told to fail this call.
    #[cfg(test)]
    #[error("injected failure: {0}")]
    Injected(String),
}

/// Loads scripts into nftables and lists what is there.
pub trait NftBackend {
    /// Applies `script` (nft `-f` syntax) as one transaction.
    fn apply(&self, script: &str) -> Result<(), NftError>;
    /// Lists the agent's table (`nft list table inet portico`).
    fn dump(&self) -> Result<String, NftError>;
}

/// The real backend: the `nft` program.
#[derive(Debug, Clone)]
pub struct NftCommand {
    program: PathBuf,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand {
            program: PathBuf::from("nft"),
        }
    }
}

impl NftCommand {
    /// Uses the `nft` found on `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the given `nft` binary.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        NftCommand {
            program: program.into(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let program = self.program.display().to_string();
        let io_err = |source| NftError::Io {
            program: program.clone(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err)?;
        // Feed stdin from another thread: nft may write (or exit) before it
        // has read everything, and neither side may block the other.
        let writer = match (stdin, child.stdin.take()) {
            (Some(text), Some(mut pipe)) => {
                let text = text.to_string();
                // Dropping `pipe` at the end of the thread closes nft's stdin.
                Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
            }
            _ => None,
        };
        let output = child.wait_with_output().map_err(io_err)?;
        let written = match writer {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked"))),
            None => Ok(()),
        };
        if output.status.success() {
            // nft succeeding on a truncated script would be a partial apply
            // of what we meant; report the broken pipe instead.
            written.map_err(io_err)?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            // nft's own complaint explains a failure better than the broken
            // pipe it may have caused.
            Err(NftError::Failed {
                program,
                args: args.join(" "),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// Checks a script without changing anything (`nft -c -f -`).
    pub fn check(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(script)).map(drop)
    }
}

impl NftBackend for NftCommand {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).map(drop)
    }

    fn dump(&self) -> Result<String, NftError> {
        self.run(&["list", "table", "inet", TABLE_NAME], None)
    }
}

/// An in-memory backend: records every applied script; can be told to fail.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeNft {
    state: std::sync::Mutex<FakeState>,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct FakeState {
    applied: Vec<String>,
    fail_next: Option<String>,
}

#[cfg(test)]
impl FakeNft {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every script applied so far, oldest first.
    pub fn applied(&self) -> Vec<String> {
        self.lock().applied.clone()
    }

    /// Makes the next `apply` fail with `message` (and record nothing).
    pub fn fail_next(&self, message: impl Into<String>) {
        self.lock().fail_next = Some(message.into());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
impl NftBackend for FakeNft {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        let mut state = self.lock();
        if let Some(message) = state.fail_next.take() {
            return Err(NftError::Injected(message));
        }
        state.applied.push(script.to_string());
        Ok(())
    }

    /// The scripts applied so far, concatenated: what a real table would
    /// have been built from.
    fn dump(&self) -> Result<String, NftError> {
        Ok(self.lock().applied.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_records_scripts_and_injects_failures() {
        let fake = FakeNft::new();
        fake.apply("add table inet portico\n").expect("apply");
        fake.fail_next("boom");
        let err = fake
            .apply("flush table inet portico\n")
            .expect_err("injected");
        assert_eq!(err.to_string(), "injected failure: boom");
        fake.apply("add chain inet portico x\n").expect("apply");
        assert_eq!(
            fake.applied(),
            ["add table inet portico\n", "add chain inet portico x\n"]
        );
        assert_eq!(
            fake.dump().expect("dump"),
            "add table inet portico\nadd chain inet portico x\n"
        );
    }

    #[test]
    fn missing_program_is_a_io_error_naming_it() {
        let nft = NftCommand::with_program("/nonexistent/portico-nft");
        let err = nft
            .apply("add table inet portico\n")
            .expect_err("no such program");
        assert!(matches!(err, NftError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/portico-nft"),
            "{err}"
        );
    }

    #[test]
    fn failing_program_keeps_its_stderr() {
        // `ls -c -f -` stands in for an nft that rejects its input: it
        // fails and says why on stderr (there is no file named `-`).
        let nft = NftCommand::with_program("ls");
        let err = nft
            .check("ignored")
            .expect_err("ls of a missing file fails");
        let NftError::Failed { stderr, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(stderr.contains('-'), "{err}");
        assert!(err.to_string().contains("ls -c -f - failed"), "{err}");
    }
}
