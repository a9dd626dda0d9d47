//! Removing a lab: [`down`] removes every trace of one by its prefix
//! (processes, namespaces, the state directory), also when nothing is up;
//! a [`Lab`] does so when dropped, unless detached.

use std::fs;
use std::path::Path;

use crate::netns::{self, NetnsError};
use crate::procs;
use crate::topology::{self, Names};

use super::{Lab, LabError, MARKER, STOP_GRACE};

/// What [`down`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Processes stopped.
    pub processes: usize,
    /// Whether the state directory was removed.
    pub state_removed: bool,
}

impl Lab {
    /// Leaves the lab running when this value is dropped (`portico-lab up`).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Removes the lab now (what dropping it does).
    pub fn teardown(&mut self) -> Result<DownReport, LabError> {
        let report = down(self.names.prefix(), &self.state);
        // Reap the processes this value started (all ended by now).
        for p in self.processes.iter_mut().chain(&mut self.stopped) {
            if let Err(e) = p.child.try_wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap");
            }
        }
        self.processes.clear();
        self.stopped.clear();
        report
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if std::thread::panicking() {
            eprintln!("lab {}: logs{}", self.names.prefix(), self.log_tails(40));
        }
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown failed: {e}", self.names.prefix());
        }
    }
}

/// Removes every trace of the lab `prefix`: its processes, namespaces (and
/// with them every link and address), and its state directory. Safe to run
/// when nothing is up.
pub fn down(prefix: &str, state_dir: &Path) -> Result<DownReport, LabError> {
    if !topology::valid_prefix(prefix) {
        return Err(LabError::BadPrefix(prefix.to_string()));
    }
    let names = Names::new(prefix);
    let namespaces = owned_namespaces(&names)?;
    let processes = procs::stop_all(&namespaces, STOP_GRACE)?;
    let mut failed = None;
    for ns in &namespaces {
        if let Err(e) = netns::del(ns) {
            // Go on with the others; report the first failure.
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    let state_removed = remove_state_dir(state_dir)?;
    Ok(DownReport {
        namespaces: namespaces.len(),
        processes,
        state_removed,
    })
}

/// The namespaces of the lab `names`.
pub(super) fn owned_namespaces(names: &Names) -> Result<Vec<String>, NetnsError> {
    Ok(netns::list()?
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect())
}

/// Removes the state directory if it is the lab's (holds the marker);
/// whether it did.
pub(super) fn remove_state_dir(dir: &Path) -> Result<bool, LabError> {
    if !dir.join(MARKER).is_file() {
        // Absent, or not ours: an empty directory (a failed first step) may go.
        if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
            fs::remove_dir(dir).map_err(|source| LabError::File {
                path: dir.to_path_buf(),
                source,
            })?;
            return Ok(true);
        }
        return Ok(false);
    }
    fs::remove_dir_all(dir).map_err(|source| LabError::File {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(true)
}
