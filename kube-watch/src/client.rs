//! Building the API client, with the timeouts every watching program needs.

use std::path::PathBuf;
use std::time::Duration;

/// Server-side timeout of a watch request by default: the API server ends
/// the watch after it, and the watcher resumes from the last
/// resourceVersion (no relist).
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Added to the watch timeout to make the client's read timeout: longer
/// than a quiet watch lasts, so only a server that stopped answering trips it.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// How a program connects to the API server, under which name, and how
/// long its watches last.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The program's name (`portico-edge`, `portico-node-agent`): its
    /// User-Agent (`NAME/VERSION`) on every request and the field manager
    /// of every write it makes, so the API server's `managedFields` and
    /// audit log say which component did what.
    pub component: &'static str,
    /// A kubeconfig file; `None` infers the configuration (`KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Server-side timeout of each watch request (see
    /// [`DEFAULT_WATCH_TIMEOUT`]); the client's read timeout is a little
    /// longer, so [`crate::Watches`] gives every watch this timeout.
    pub watch_timeout: Duration,
}

impl KubeOptions {
    /// The default options of program `component`: the configuration as
    /// `kubectl` finds it, watches of [`DEFAULT_WATCH_TIMEOUT`].
    pub fn new(component: &'static str) -> Self {
        KubeOptions {
            component,
            kubeconfig: None,
            watch_timeout: DEFAULT_WATCH_TIMEOUT,
        }
    }

    /// The User-Agent of every request: `component/version`. The API
    /// server takes the part before the `/` as the field manager of a
    /// write that names none.
    pub fn user_agent(&self) -> String {
        format!("{}/{}", self.component, env!("CARGO_PKG_VERSION"))
    }

    /// The client's read timeout: the watch timeout plus a margin.
    pub fn read_timeout(&self) -> Duration {
        self.watch_timeout + READ_TIMEOUT_MARGIN
    }

    /// The watch timeout in whole seconds, as a watch request carries it
    /// (at least one: zero would turn the watcher's idle timeout off).
    pub(crate) fn watch_timeout_secs(&self) -> u32 {
        u32::try_from(self.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX)
    }
}

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file given is unreadable or invalid.
    #[error("cannot use kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration could be inferred from the environment.
    #[error("no Kubernetes configuration found (KUBECONFIG, ~/.kube/config, in-cluster service account): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The component name cannot be a User-Agent header.
    #[error("{component:?} cannot be a User-Agent")]
    UserAgent {
        /// The name.
        component: String,
    },
    /// The client could not be built from the configuration (TLS, auth).
    #[error("cannot build a Kubernetes client for {url}: {source}")]
    Client {
        /// The API server's URL.
        url: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

impl ClientError {
    /// Whether the configuration itself is wrong (a bad kubeconfig, none to
    /// be found), so that trying again unchanged cannot help.
    pub fn is_configuration(&self) -> bool {
        matches!(self, ClientError::Kubeconfig { .. } | ClientError::Infer(_))
    }
}

/// Builds the API client: from `opts.kubeconfig` when given, else as
/// `kubectl` finds one (`KUBECONFIG`, `~/.kube/config`, in-cluster).
///
/// Every request carries [`KubeOptions::user_agent`].
///
/// Sets a read timeout a little longer than a watch lasts
/// ([`KubeOptions::read_timeout`]): without one, a request to an API server
/// that accepts connections but never answers would wait forever, and a
/// watch on such a server would never fail and retry.
pub async fn client(opts: &KubeOptions) -> Result<kube::Client, ClientError> {
    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let bad = |source| ClientError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(bad)?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    };
    let agent = opts.user_agent();
    let agent = http::HeaderValue::from_str(&agent).map_err(|_| ClientError::UserAgent {
        component: opts.component.to_string(),
    })?;
    config.headers.push((http::header::USER_AGENT, agent));
    config.read_timeout = Some(opts.read_timeout());
    // Count the read timeout from each request, not from when its pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|source| ClientError::Client { url, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named_and_is_a_configuration_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("no-such-config");
        let Err(err) = client(&KubeOptions {
            kubeconfig: Some(path.clone()),
            ..KubeOptions::new("portico-test")
        })
        .await
        else {
            panic!("a client from a file that does not exist");
        };
        assert!(err.is_configuration(), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot use kubeconfig {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn the_read_timeout_outlasts_a_watch() {
        let opts = KubeOptions::new("portico-test");
        assert_eq!(opts.read_timeout(), Duration::from_secs(70));
        assert_eq!(opts.watch_timeout_secs(), 60);
        let zero = KubeOptions {
            watch_timeout: Duration::ZERO,
            ..KubeOptions::new("portico-test")
        };
        assert_eq!(zero.watch_timeout_secs(), 1, "never 0 (no idle timeout)");
    }
}
