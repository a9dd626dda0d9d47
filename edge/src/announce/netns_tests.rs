//! [`TunRoutes`] against the kernel, in a network namespace of the test
//! thread's own (`unshare`, gone with the thread). They need root: without
//! it they skip loudly, and under `CI=true` they fail.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::Command;

use portico_config::AnnounceSettings;

use super::{AnnounceError, RouteTable, TunRoutes};

fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = format!("{test}: needs root for a network namespace and a TUN device");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true, so this is a failure, not a skip)");
    }
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
    false
}

/// Runs `f` on a thread in a new, empty network namespace.
fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `ip route show table 4242` for both families, from this thread's
/// namespace (a child process starts in it).
fn shown() -> String {
    let mut out = String::new();
    for family in ["-4", "-6"] {
        let o = Command::new("ip")
            .args([family, "route", "show", "table", "4242"])
            .output()
            .expect("ip");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn settings() -> AnnounceSettings {
    AnnounceSettings {
        device: "ptest-vips".to_string(),
        ..AnnounceSettings::default()
    }
}

#[test]
fn routes_live_as_long_as_a_descriptor_of_the_device() {
    if !privileged("routes_live_as_long_as_a_descriptor_of_the_device") {
        return;
    }
    in_new_netns(|| {
        let table = TunRoutes::open(&settings(), None).expect("open");
        let vips = [ip("192.0.2.10"), ip("2001:db8::10")];
        assert!(table.add(&vips).iter().all(Result::is_ok));
        // Already there: fine.
        assert!(table.add(&vips[..1]).iter().all(Result::is_ok));
        let listed = table.list().expect("list");
        assert_eq!(listed, BTreeSet::from(vips));
        let text = shown();
        assert!(
            text.contains("192.0.2.10 dev ptest-vips proto 242 scope link"),
            "{text}"
        );
        assert!(
            text.contains("2001:db8::10 dev ptest-vips proto 242"),
            "{text}"
        );

        // A second holder of the same name is refused, clearly.
        let err = TunRoutes::open(&settings(), None).expect_err("busy");
        assert!(matches!(err, AnnounceError::Device { .. }), "{err}");
        assert!(err.to_string().contains("ptest-vips"), "{err}");

        // A handover: the new holder keeps the device and its routes.
        let handed = table
            .device_fd()
            .expect("fd")
            .try_clone_to_owned()
            .expect("dup");
        drop(table);
        let taken = TunRoutes::open(&settings(), Some(handed)).expect("adopt");
        assert_eq!(taken.list().expect("list"), BTreeSet::from(vips));

        assert!(taken.remove(&vips[..1]).iter().all(Result::is_ok));
        // Already gone: fine.
        assert!(taken.remove(&vips[..1]).iter().all(Result::is_ok));
        assert_eq!(taken.list().expect("list"), BTreeSet::from([vips[1]]));

        // The last holder goes: so do the device and its routes.
        drop(taken);
        let text = shown();
        assert!(text.trim().is_empty(), "routes left behind: {text}");
    });
}
