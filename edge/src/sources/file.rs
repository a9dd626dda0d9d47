//! The config file as a source: read and validated at start, re-read on
//! `SIGHUP` and whenever it changes.
//!
//! - **Finding changes**: the path is polled (following symlinks) every
//!   watch interval. An editor that renames a new file into place and a
//!   ConfigMap update that swaps a symlink both give the path a new inode,
//!   which the poll sees, where inotify on the file itself would miss them.
//! - **Settling**: a change is read only once the file's metadata (inode,
//!   size, modification and change times) has stayed the same for a whole
//!   watch interval, so a file still being written in place is not read
//!   half-way; the metadata is taken again after reading, and a file that
//!   changed meanwhile waits for the next round. `SIGHUP` reads at once.
//! - **Refusing what is not a whole config**: an empty file, one not UTF-8,
//!   one ending in the middle of a line (cut short) or over
//!   [`MAX_FILE_BYTES`] (refused from its size, before reading) is a failed
//!   reload like an invalid one: logged, counted, and the running
//!   configuration stays ([`portico_config::text`]). So is a file that
//!   would remove every Service without listing `services` (`services: []`):
//!   one cut short just before them looks like that.
//! - **Off the runtime**: reading and parsing run on a blocking thread (a
//!   large file takes a while to parse), never on the runtime's workers, and
//!   the process loop is not held up either: it starts a read with
//!   [`ConfigFile::check`] and hears of the outcome from
//!   [`ConfigFile::finished`] while it goes on handling signals and sources.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portico_config::text::too_large;
use portico_config::{
    parse_edge_config_file, read_edge_config_file, ConfigErrors, EdgeConfig, MAX_FILE_BYTES,
};
use tokio::task::JoinHandle;

/// The example configuration, embedded so `portico-edge run` works with no file.
pub const EMBEDDED_CONFIG: &str = include_str!("../../../config/examples/edge.yaml");

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, watched for changes.
    File(PathBuf),
    /// The embedded example.
    Embedded,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is invalid (or too large, empty, not UTF-8, cut short).
    #[error("{path} is invalid:\n{errors}")]
    Invalid {
        /// The file.
        path: String,
        /// Every error.
        errors: ConfigErrors,
    },
}

/// What a reload found.
#[derive(Debug)]
pub enum Reloaded {
    /// The content is unchanged, or still changing (and the reload was not
    /// forced).
    Unchanged,
    /// A new, valid configuration.
    Valid(Box<EdgeConfig>),
    /// The file could not be read or is invalid; the current configuration
    /// stays. Each error is already logged.
    Failed,
}

/// What the metadata of the path says, to tell a change without reading.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    /// The file (after symlinks).
    File {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    /// The path cannot be looked at (missing, say).
    Unreadable(std::io::ErrorKind),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp::File {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn at(path: &Path) -> Stamp {
        std::fs::metadata(path).map_or_else(|e| Stamp::Unreadable(e.kind()), |m| Stamp::of(&m))
    }
}

/// What the watch knows of the file between reads.
#[derive(Debug, Default)]
struct WatchState {
    /// The stamp of the last read (valid or not) and the hash of what it
    /// read (`None`: it could not be read), so a file is reported once per
    /// change rather than at every poll.
    seen: Option<(Stamp, Option<u64>)>,
    /// A stamp not read yet, and when it was first seen.
    pending: Option<(Stamp, Instant)>,
}

/// The config file, the state of its watch, and the read in flight.
#[derive(Debug)]
pub struct ConfigFile {
    source: ConfigSource,
    /// How long a change must stay unchanged before it is read.
    settle: Duration,
    /// `None` while a read holds it.
    state: Option<WatchState>,
    reading: Option<JoinHandle<(WatchState, Reloaded)>>,
    /// A `SIGHUP` came while a read was in flight: read again after it.
    forced_next: bool,
    /// How many Services the running configuration has from the file, as
    /// last told by [`ConfigFile::check`].
    running_services: usize,
}

impl ConfigFile {
    /// Reads and validates the configuration (blocking: call it where a
    /// blocking read is fine). Changes are later read once they have stayed
    /// the same for `settle`.
    pub fn load(
        source: ConfigSource,
        settle: Duration,
    ) -> Result<(ConfigFile, EdgeConfig), LoadError> {
        let mut state = WatchState::default();
        let (name, bytes) = match &source {
            ConfigSource::Embedded => (
                "<embedded example>".to_string(),
                EMBEDDED_CONFIG.as_bytes().to_vec(),
            ),
            ConfigSource::File(path) => {
                let (stamp, bytes) = read_file(path)?;
                state.seen = Some((stamp, Some(hash(&bytes))));
                (path.display().to_string(), bytes)
            }
        };
        let config = parse_edge_config_file(&bytes)
            .map_err(|errors| LoadError::Invalid { path: name, errors })?;
        let file = ConfigFile {
            source,
            settle,
            state: Some(state),
            reading: None,
            forced_next: false,
            running_services: config.services.len(),
        };
        Ok((file, config))
    }

    /// Starts a look at the file on a blocking thread, unless one is under
    /// way (then a `force`d one follows it). `force` (`SIGHUP`): read now,
    /// even if unchanged or still changing. The outcome comes from
    /// [`ConfigFile::finished`]. Nothing for the embedded example.
    /// `running_services`: how many Services the running configuration has
    /// from the file (a file without `services` may not remove them all).
    pub fn check(&mut self, force: bool, running_services: usize) {
        self.running_services = running_services;
        let ConfigSource::File(path) = &self.source else {
            return;
        };
        let Some(mut state) = self.state.take() else {
            self.forced_next |= force;
            return;
        };
        let path = path.clone();
        let settle = self.settle;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let outcome = step(&path, &mut state, force, settle, running_services);
            (state, outcome)
        }));
    }

    /// The outcome of the look started by [`ConfigFile::check`]; pending
    /// while there is none. Cancel-safe: dropped before the end, the look
    /// goes on and a later call gets its outcome.
    pub async fn finished(&mut self) -> Reloaded {
        let Some(reading) = self.reading.as_mut() else {
            return std::future::pending().await;
        };
        let result = reading.await;
        self.reading = None;
        let outcome = match result {
            Ok((state, outcome)) => {
                self.state = Some(state);
                outcome
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the config file failed; keeping the current configuration");
                // Forget what was seen: the next poll reads the file afresh.
                self.state = Some(WatchState::default());
                Reloaded::Failed
            }
        };
        if std::mem::take(&mut self.forced_next) {
            self.check(true, self.running_services);
        }
        outcome
    }
}

/// One look at the file (blocking): read it when `force`d, or when its
/// stamp changed and has stayed the same for `settle`. `running`: how many
/// Services the running configuration has from the file.
fn step(
    path: &Path,
    state: &mut WatchState,
    force: bool,
    settle: Duration,
    running: usize,
) -> Reloaded {
    let stamp = Stamp::at(path);
    if !force {
        if state.seen.as_ref().is_some_and(|(seen, _)| *seen == stamp) {
            state.pending = None;
            return Reloaded::Unchanged;
        }
        match &state.pending {
            Some((pending, since)) if *pending == stamp => {
                if since.elapsed() < settle {
                    return Reloaded::Unchanged;
                }
            }
            _ => {
                // Changed since the last look: wait for it to settle.
                state.pending = Some((stamp, Instant::now()));
                return Reloaded::Unchanged;
            }
        }
    }
    state.pending = None;
    if !force {
        tracing::info!(path = %path.display(), "the config file changed and has settled; reading it");
    }
    match read_file(path) {
        Err(e) => {
            state.seen = Some((stamp, None));
            report(path, &e);
            Reloaded::Failed
        }
        Ok((read_stamp, _)) if !force && read_stamp != stamp => {
            // Written again while being read: settle anew.
            state.pending = Some((read_stamp, Instant::now()));
            Reloaded::Unchanged
        }
        Ok((read_stamp, bytes)) => {
            let hash = hash(&bytes);
            let same = state.seen.as_ref().is_some_and(|(_, h)| *h == Some(hash));
            state.seen = Some((read_stamp, Some(hash)));
            if same && !force {
                // Touched, or written with the same content.
                return Reloaded::Unchanged;
            }
            let invalid = |errors| LoadError::Invalid {
                path: path.display().to_string(),
                errors,
            };
            match read_edge_config_file(&bytes) {
                Ok(contents) => match contents.removes_unlisted(running) {
                    Some(error) => {
                        report(path, &invalid(ConfigErrors::new(vec![error])));
                        Reloaded::Failed
                    }
                    None => Reloaded::Valid(Box::new(contents.config)),
                },
                Err(errors) => {
                    report(path, &invalid(errors));
                    Reloaded::Failed
                }
            }
        }
    }
}

/// Logs why a reload was refused: every error, then the verdict.
fn report(path: &Path, error: &LoadError) {
    match error {
        LoadError::Invalid { errors, .. } => {
            for e in errors.errors() {
                tracing::error!(path = %path.display(), error = %e, "invalid configuration");
            }
            tracing::error!(path = %path.display(), count = errors.len(), "reload rejected; keeping the current configuration");
        }
        LoadError::Read { source, .. } => {
            tracing::error!(path = %path.display(), error = %source, "reload rejected: cannot read the file; keeping the current configuration");
        }
    }
}

/// Reads the file, refusing one over [`MAX_FILE_BYTES`] from its size
/// before reading it (and one that grows past it while being read);
/// returns the file's stamp taken after reading.
fn read_file(path: &Path) -> Result<(Stamp, Vec<u8>), LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |size| LoadError::Invalid {
        path: path.display().to_string(),
        errors: ConfigErrors::new(vec![too_large(size)]),
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    if size > MAX_FILE_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let after = file.metadata().map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(after.len().max(bytes.len() as u64)));
    }
    Ok((Stamp::of(&after), bytes))
}

fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "services: []\n";

    fn write(path: &Path, text: &[u8]) {
        std::fs::write(path, text).expect("write");
    }

    /// Looks until the outcome is not `Unchanged` or `rounds` looks passed.
    fn look(path: &Path, state: &mut WatchState, settle: Duration, rounds: u32) -> Reloaded {
        look_running(path, state, settle, rounds, 0)
    }

    /// [`look`], with `running` Services from the file.
    fn look_running(
        path: &Path,
        state: &mut WatchState,
        settle: Duration,
        rounds: u32,
        running: usize,
    ) -> Reloaded {
        for _ in 0..rounds {
            match step(path, state, false, settle, running) {
                Reloaded::Unchanged => std::thread::sleep(settle / 4),
                other => return other,
            }
        }
        Reloaded::Unchanged
    }

    fn loaded(path: &Path) -> WatchState {
        let (mut file, _) =
            ConfigFile::load(ConfigSource::File(path.to_path_buf()), Duration::ZERO)
                .expect("valid");
        file.state.take().expect("state")
    }

    #[test]
    fn a_change_is_read_only_after_it_has_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.yaml");
        write(&path, GOOD.as_bytes());
        let mut state = loaded(&path);
        let settle = Duration::from_millis(200);
        assert!(matches!(
            step(&path, &mut state, false, settle, 0),
            Reloaded::Unchanged
        ));

        // Half a file written in place: seen, not read yet.
        write(&path, b"services: []\nnodes: [{name: a, addr");
        let first_seen = Instant::now();
        assert!(matches!(
            step(&path, &mut state, false, settle, 0),
            Reloaded::Unchanged
        ));
        // The writer finishes before the settle period ends: only the
        // whole file is ever read.
        write(
            &path,
            b"services: []\nnodes: [{name: a, addresses: [10.0.0.1]}]\n",
        );
        let outcome = look(&path, &mut state, settle, 20);
        let Reloaded::Valid(config) = outcome else {
            panic!("expected the whole file, got {outcome:?}");
        };
        assert!(first_seen.elapsed() >= settle);
        assert_eq!(config.nodes.len(), 1);
        // Read once: nothing more until it changes.
        assert!(matches!(
            look(&path, &mut state, settle, 3),
            Reloaded::Unchanged
        ));
    }

    #[test]
    fn unusable_files_fail_once_per_change_and_sighup_reports_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.yaml");
        write(&path, GOOD.as_bytes());
        let mut state = loaded(&path);
        let settle = Duration::from_millis(20);
        for bad in [&b""[..], b"services: [", b"\xff\xfe\n", b"# cleared\n"] {
            write(&path, bad);
            assert!(
                matches!(look(&path, &mut state, settle, 50), Reloaded::Failed),
                "{bad:?}"
            );
            assert!(matches!(
                look(&path, &mut state, settle, 3),
                Reloaded::Unchanged
            ));
            assert!(matches!(
                step(&path, &mut state, true, settle, 0),
                Reloaded::Failed
            ));
        }
        // A missing file: reported once, too.
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(
            look(&path, &mut state, settle, 50),
            Reloaded::Failed
        ));
        assert!(matches!(
            look(&path, &mut state, settle, 3),
            Reloaded::Unchanged
        ));
        write(&path, GOOD.as_bytes());
        assert!(matches!(
            look(&path, &mut state, settle, 50),
            Reloaded::Valid(_)
        ));
    }

    #[test]
    fn removing_every_service_needs_services_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.yaml");
        let nodes = "nodes: [{name: n, addresses: [10.0.0.9]}]\n";
        let service =
            "services: [{name: a, vips: [10.0.0.1], ports: [{port: 80, nodePort: 30080}]}]\n";
        write(&path, format!("{nodes}{service}").as_bytes());
        let mut state = loaded(&path);
        let settle = Duration::from_millis(20);
        // Cut short before its Services: valid, but refused while one runs.
        write(&path, nodes.as_bytes());
        assert!(matches!(
            look_running(&path, &mut state, settle, 50, 1),
            Reloaded::Failed
        ));
        write(&path, format!("{nodes}services: []\n").as_bytes());
        let Reloaded::Valid(config) = look_running(&path, &mut state, settle, 50, 1) else {
            panic!("listed as none: removed on purpose");
        };
        assert!(config.services.is_empty());
        // With none running, a file without `services` is fine.
        write(&path, format!("# again\n{nodes}").as_bytes());
        assert!(matches!(
            look_running(&path, &mut state, settle, 50, 0),
            Reloaded::Valid(_)
        ));
    }

    #[test]
    fn rename_into_place_and_symlink_swaps_are_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The ConfigMap layout: edge.yaml -> ..data/edge.yaml, ..data ->
        // a timestamped directory, swapped by renaming a new symlink.
        let one = dir.path().join("..2026_01");
        let two = dir.path().join("..2026_02");
        std::fs::create_dir(&one).expect("mkdir");
        std::fs::create_dir(&two).expect("mkdir");
        write(&one.join("edge.yaml"), GOOD.as_bytes());
        write(
            &two.join("edge.yaml"),
            b"services: []\nnodes: [{name: b, addresses: [10.0.0.2]}]\n",
        );
        std::os::unix::fs::symlink("..2026_01", dir.path().join("..data")).expect("symlink");
        let path = dir.path().join("edge.yaml");
        std::os::unix::fs::symlink("..data/edge.yaml", &path).expect("symlink");
        let mut state = loaded(&path);
        let settle = Duration::from_millis(20);

        std::os::unix::fs::symlink("..2026_02", dir.path().join("..data_tmp")).expect("symlink");
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
        let Reloaded::Valid(config) = look(&path, &mut state, settle, 50) else {
            panic!("the swap is seen");
        };
        assert_eq!(config.nodes[0].name, "b");

        // An editor's save: a new file renamed over the link.
        let tmp = dir.path().join("edge.yaml.tmp");
        write(
            &tmp,
            b"services: []\nnodes: [{name: c, addresses: [10.0.0.3]}]\n",
        );
        std::fs::rename(&tmp, &path).expect("rename");
        let Reloaded::Valid(config) = look(&path, &mut state, settle, 50) else {
            panic!("the rename is seen");
        };
        assert_eq!(config.nodes[0].name, "c");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.yaml");
        let file = std::fs::File::create(&path).expect("create");
        // Sparse: the size without the bytes.
        file.set_len(MAX_FILE_BYTES + 1).expect("set_len");
        let e = read_file(&path).expect_err("too large");
        assert_eq!(
            e.to_string(),
            format!(
                "{} is invalid:\nthe file is 64 MiB ({} bytes); a config file may be at most 64 MiB",
                path.display(),
                MAX_FILE_BYTES + 1
            )
        );
    }
}
