//! What every lab test needs: the privilege check, the binaries under test,
//! a lab of its own under a unique prefix, and the lock that keeps the tests
//! that measure time away from every other lab ([`alone`], [`shared`]).
//!
//! The binaries: `portico-lab` is this package's (`CARGO_BIN_EXE_portico-lab`);
//! `portico-edge` and `portico-node-agent` are taken from the same target
//! directory and profile (`target/<profile>/`), where a workspace `cargo
//! test` builds them ([`Binaries::in_target`]: the missing ones, say under
//! `cargo test -p portico-lab`, are built once into that target directory; an
//! existing binary is used as it is, so after changing the edge or the agent,
//! build them or run the workspace's tests before these).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use portico_lab::{Binaries, Lab, LabOptions};

pub mod edges;

pub use portico_lab::netns::privileged;

/// The lab tests of this process: the ones that measure time hold it alone,
/// the others share it. Labs are separate namespaces, so sharing is safe;
/// holding it alone keeps other labs' load out of a measurement.
static LABS: RwLock<()> = RwLock::new(());

/// For a test whose lab may run beside other tests' labs (not beside one
/// that measures time). Take it before the lab, so the lab is gone first.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    LABS.read().unwrap_or_else(PoisonError::into_inner)
}

/// For a test that measures time (failure scenarios, benchmarks): no other
/// lab test runs until it is dropped. Take it before the lab.
pub fn alone() -> RwLockWriteGuard<'static, ()> {
    LABS.write().unwrap_or_else(PoisonError::into_inner)
}

/// The binaries under test (built once if missing, see the module docs).
pub fn binaries() -> Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES
        .get_or_init(|| {
            let lab = PathBuf::from(env!("CARGO_BIN_EXE_portico-lab"));
            let profile_dir = lab.parent().expect("the lab binary has a directory");
            Binaries::in_target(profile_dir).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// A lab of the test's own (prefix `plt<pid>-<n>`, state under the temp
/// directory), up and serving; torn down when dropped, also on panic.
pub fn lab() -> Lab {
    lab_with(portico_lab::lab::DEFAULT_DRAIN_TIMEOUT)
}

/// [`lab`] with the edge's `drainTimeout` set to `drain_timeout`.
pub fn lab_with(drain_timeout: Duration) -> Lab {
    lab_of(1, drain_timeout)
}

/// [`lab`] with `edges` edges (behind a router from 2 on) and the edges'
/// `drainTimeout` set to `drain_timeout`.
pub fn lab_of(edges: usize, drain_timeout: Duration) -> Lab {
    build(edges, false, drain_timeout)
}

/// [`lab`] with a VRRP pair of edges.
pub fn vrrp_lab() -> Lab {
    build(2, true, portico_lab::lab::DEFAULT_DRAIN_TIMEOUT)
}

fn build(edges: usize, vrrp: bool, drain_timeout: Duration) -> Lab {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "plt{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let opts = LabOptions {
        state_dir: std::env::temp_dir().join(format!("portico-lab-{prefix}")),
        prefix,
        binaries: binaries(),
        ready_timeout: Duration::from_secs(60),
        drain_timeout,
        edges,
        vrrp,
    };
    let started = Instant::now();
    let lab = Lab::up(&opts).unwrap_or_else(|e| panic!("lab up: {e}"));
    eprintln!(
        "lab {} up in {:?}: {:?}",
        opts.prefix,
        started.elapsed(),
        lab.timings()
    );
    lab
}

/// A metric's value: the first sample of `name` whose labels include every
/// `key="value"` in `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}
