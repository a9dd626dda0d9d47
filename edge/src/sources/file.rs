//! The config file as a source: read and validated at start, re-read on
//! `SIGHUP` and whenever its content changes (polled, because a ConfigMap
//! update swaps a symlink that inotify on the file would miss).

use std::path::PathBuf;

use portico_config::{parse_edge_config, ConfigErrors, EdgeConfig};

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
    /// The config file is invalid.
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
    /// The content is unchanged (and the reload was not forced).
    Unchanged,
    /// A new, valid configuration.
    Valid(Box<EdgeConfig>),
    /// The file could not be read or is invalid; the current configuration
    /// stays. Each error is already logged.
    Failed,
}

/// The config file and the text last read from it.
#[derive(Debug)]
pub struct ConfigFile {
    source: ConfigSource,
    /// The text of the last reload attempt, valid or not, so an invalid
    /// file is reported once rather than at every poll.
    last_text: String,
}

impl ConfigFile {
    /// Reads and validates the configuration.
    pub fn load(source: ConfigSource) -> Result<(ConfigFile, EdgeConfig), LoadError> {
        let (name, text) = match &source {
            ConfigSource::Embedded => (
                "<embedded example>".to_string(),
                EMBEDDED_CONFIG.to_string(),
            ),
            ConfigSource::File(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|source| LoadError::Read {
                    path: path.clone(),
                    source,
                })?,
            ),
        };
        let config =
            parse_edge_config(&text).map_err(|errors| LoadError::Invalid { path: name, errors })?;
        Ok((
            ConfigFile {
                source,
                last_text: text,
            },
            config,
        ))
    }

    /// Whether the configuration comes from a file (that can change).
    pub fn is_file(&self) -> bool {
        matches!(self.source, ConfigSource::File(_))
    }

    /// Re-reads the file: its configuration when the content changed (or
    /// `force`) and is valid.
    pub fn reload(&mut self, force: bool) -> Reloaded {
        let ConfigSource::File(path) = &self.source else {
            return Reloaded::Unchanged;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if force => {
                tracing::error!(path = %path.display(), error = %e, "reload failed: cannot read the file; keeping the current configuration");
                return Reloaded::Failed;
            }
            // A poll that cannot read the file (being replaced, say) tries
            // again at the next one.
            Err(_) => return Reloaded::Unchanged,
        };
        if !force && text == self.last_text {
            return Reloaded::Unchanged;
        }
        self.last_text = text;
        match parse_edge_config(&self.last_text) {
            Ok(config) => Reloaded::Valid(Box::new(config)),
            Err(errors) => {
                for e in errors.errors() {
                    tracing::error!(path = %path.display(), error = %e, "invalid configuration");
                }
                tracing::error!(path = %path.display(), count = errors.errors().len(), "reload rejected; keeping the current configuration");
                Reloaded::Failed
            }
        }
    }
}
