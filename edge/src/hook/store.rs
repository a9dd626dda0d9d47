//! The hook state on disk: loaded once at start, written after every change
//! before the call is answered.
//!
//! Writes are atomic: the content goes to a temporary file in the same
//! directory (mode 0600), is flushed to disk, renamed over the state file,
//! and the directory is flushed too, so after a crash the file holds either
//! the old or the new state, never a mix.
//!
//! Temporary files a crash left behind (`.<file>.tmp-<pid>` of a process
//! that is gone) are removed at load.
//!
//! A file that cannot be read as a state (cut short, edited by hand, written
//! by a newer edge, over [`MAX_STATE_BYTES`]) is moved aside to `<file>.corrupt-<unix time>` and the
//! edge starts empty: the cloud-controller-manager ensures every load
//! balancer again at its next sync, and each gets back the address its
//! Service's status shows. A file that cannot be read at all (permissions)
//! stops the edge instead: starting empty would later overwrite it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::state::HookState;

/// The largest state file loaded; a larger one is moved aside unread. The
/// state holds the trimmed Services and one trimmed node list: a few MiB
/// for thousands of load balancers.
pub const MAX_STATE_BYTES: u64 = 256 << 20;

/// A state file problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file exists but cannot be read.
    #[error("cannot read the hook state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file's directory cannot be created.
    #[error("cannot create {path} for the hook state file: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A corrupt state file cannot be moved aside.
    #[error("the hook state file {path} is corrupt and cannot be moved aside to {to}: {source}")]
    MoveAside {
        /// The file.
        path: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state could not be written.
    #[error("cannot write the hook state file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What [`load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The state (empty for a missing or corrupt file).
    pub state: HookState,
    /// For a corrupt file: where it was moved, and what was wrong with it.
    pub moved_aside: Option<(PathBuf, String)>,
}

/// Loads the state from `path`, creating its directory if needed. A
/// missing file is an empty state; a corrupt one is moved aside.
pub fn load(path: &Path) -> Result<Loaded, StoreError> {
    let dir = dir_of(path);
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    remove_leftovers(path);
    let bytes = match read_bounded(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                state: HookState::default(),
                moved_aside: None,
            })
        }
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parsed = match bytes {
        Some(bytes) => HookState::from_json(&bytes),
        None => Err(format!(
            "the file is larger than {} MiB",
            MAX_STATE_BYTES >> 20
        )),
    };
    match parsed {
        Ok(state) => Ok(Loaded {
            state,
            moved_aside: None,
        }),
        Err(why) => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let mut to = path.as_os_str().to_owned();
            to.push(format!(".corrupt-{secs}"));
            let to = PathBuf::from(to);
            std::fs::rename(path, &to).map_err(|source| StoreError::MoveAside {
                path: path.to_path_buf(),
                to: to.clone(),
                source,
            })?;
            Ok(Loaded {
                state: HookState::default(),
                moved_aside: Some((to, why)),
            })
        }
    }
}

/// The file's content, or `None` when it is over [`MAX_STATE_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = File::open(path)?;
    if file.metadata()?.len() > MAX_STATE_BYTES {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_STATE_BYTES).then_some(bytes))
}

/// What the temporary file names of saves to `path` start with.
fn tmp_prefix(path: &Path) -> String {
    format!(
        ".{}.tmp-",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// The temporary file name a save by process `pid` uses for `path`.
fn tmp_name(path: &Path, pid: u32) -> String {
    format!("{}{pid}", tmp_prefix(path))
}

/// Removes the temporary files of saves by processes that are gone (a
/// crash between write and rename); a live process's (an edge handing
/// over) is left to it.
fn remove_leftovers(path: &Path) {
    let dir = dir_of(path);
    let prefix = tmp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix(prefix.as_str())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), "removed a temporary hook state file a crash left behind")
            }
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a temporary hook state file a crash left behind")
            }
        }
    }
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = dir_of(path);
    let tmp = dir.join(tmp_name(path, std::process::id()));
    // A leftover from a crash may have other permissions: start afresh.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        if let Err(rm) = std::fs::remove_file(&tmp) {
            if rm.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %tmp.display(), error = %rm, "cannot remove the temporary hook state file");
            }
        }
        return Err(err(e));
    }
    Ok(())
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_file_is_an_empty_state_and_its_directory_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/hook.json");
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.state, HookState::default());
        assert!(loaded.moved_aside.is_none());
        assert!(path.parent().unwrap().is_dir());
    }

    #[test]
    fn saved_state_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.json");
        let state = HookState::default();
        save(&path, &state.to_json()).unwrap();
        // Saving over an existing file works too, and leaves no temp file.
        save(&path, &state.to_json()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().state, state);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("hook.json")]);
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_and_a_live_writers_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.json");
        // No process has this pid (above any pid_max).
        let dead = dir.path().join(tmp_name(&path, u32::MAX - 1));
        let live = dir.path().join(tmp_name(&path, std::process::id()));
        let other = dir.path().join(".other.json.tmp-1");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"half").unwrap();
        }
        load(&path).unwrap();
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn a_state_file_over_the_size_limit_is_moved_aside_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.json");
        let f = File::create(&path).unwrap();
        f.set_len(MAX_STATE_BYTES + 1).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.state, HookState::default());
        let (_, why) = loaded.moved_aside.expect("moved aside");
        assert!(why.contains("larger than 256 MiB"), "{why}");
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_the_state_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.json");
        std::fs::write(&path, b"{\"version\": 1, \"clus").unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.state, HookState::default());
        let (to, why) = loaded.moved_aside.expect("moved aside");
        assert!(!path.exists());
        let name = to.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("hook.json.corrupt-"), "{name}");
        assert_eq!(std::fs::read(&to).unwrap(), b"{\"version\": 1, \"clus");
        assert!(why.contains("EOF"), "{why}");
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.json");
        save(&path, b"old").unwrap();
        // A directory where the temp file must go makes the create fail,
        // also for root.
        let tmp = dir
            .path()
            .join(format!(".hook.json.tmp-{}", std::process::id()));
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("x"), b"").unwrap();
        let err = save(&path, b"new").unwrap_err();
        assert!(err.to_string().contains("hook.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
