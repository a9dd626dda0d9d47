//! The appliance's Debian package, as a user meets it: `scripts/package`
//! builds it (release, through cargo-deb); a fresh Debian root filesystem
//! (mmdebstrap, the host's release, minimal with systemd) installs it with
//! apt, as a user installs a downloaded package. There the shipped `/etc/portico/edge.yaml` passes `portico-edge
//! check-config`, systemd reads the unit (`systemd-analyze verify`), the
//! `portico` system user exists and can read the config (and nobody else),
//! the unit is installed but not enabled; and a purge leaves nothing of the
//! package behind: no file, directory or user.
//!
//! The edge's container image runs its binary under podman.
//!
//! Needs root, mmdebstrap and the Debian mirror (`scripts/install-deps`
//! installs mmdebstrap and cargo-deb): skips loudly without them, fails
//! under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use portico_lab::command::installed_or_skip;
use portico_lab::netns::privileged;

/// What runs in the fresh root filesystem: each step prints a line the test
/// reads; the first failing command ends it (and the build) with an error.
const IN_ROOT: &str = r#"
set -eu
# As a user installs a downloaded package: apt brings its dependencies.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/portico-edge.deb >/dev/null
echo "user: $(getent passwd portico | cut -d: -f1,6,7)"
echo "config dir: $(stat -c '%U:%G %a' /etc/portico)"
echo "config: $(stat -c '%U:%G %a' /etc/portico/edge.yaml)"
echo "conffiles: $(dpkg-query -W -f='${Conffiles}' portico-edge | awk '{print $1}' | xargs)"
portico-edge check-config /etc/portico/edge.yaml
runuser -u portico -- cat /etc/portico/edge.yaml >/dev/null && echo "the edge's user reads its config"
if runuser -u nobody -- cat /etc/portico/edge.yaml >/dev/null 2>&1; then echo "nobody reads it too"; fi
systemd-analyze verify --man=no portico-edge.service
echo "verified"
echo "enabled: $(systemctl is-enabled portico-edge.service || true)"
mkdir -p /var/lib/portico && touch /var/lib/portico/hook-state.json /etc/portico/kubeconfig
dpkg --purge portico-edge
for path in /usr/bin/portico-edge /usr/lib/systemd/system/portico-edge.service /etc/portico /var/lib/portico /usr/share/doc/portico-edge; do
  if [ -e "$path" ]; then echo "left after purge: $path"; fi
done
if getent passwd portico >/dev/null; then echo "left after purge: user portico"; fi
if getent group portico >/dev/null; then echo "left after purge: group portico"; fi
echo "purged"
"#;

/// The workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the edge's package sits in the workspace")
        .to_path_buf()
}

#[test]
fn the_package_installs_serves_its_config_and_purges_clean() {
    let what = "the_package_installs_serves_its_config_and_purges_clean";
    if !privileged(what) || !installed_or_skip(what, &[("mmdebstrap", "mmdebstrap")]) {
        return;
    }
    // `scripts/package`, as a user runs it: the path of the package last.
    let stdout = script("package", &[]);
    let deb = PathBuf::from(stdout.lines().last().expect("the package's path").trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "{deb:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("in-root.sh");
    std::fs::write(&script, IN_ROOT).expect("the script");
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--include=systemd", "--quiet"])
        .arg(format!(
            "--customize-hook=copy-in {} /tmp",
            script.display()
        ))
        .arg(format!(
            "--customize-hook=upload {} /tmp/portico-edge.deb",
            deb.display()
        ))
        .arg("--customize-hook=chroot \"$1\" sh /tmp/in-root.sh")
        // The host's release; the root filesystem is thrown away.
        .args([&debian_release(), "/dev/null"])
        .output()
        .expect("run mmdebstrap");
    // mmdebstrap passes the hooks' output on to its own standard error.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mmdebstrap: {}\n{said}", out.status);
    let line = |prefix: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{said}"))
            .trim()
            .to_string()
    };
    assert_eq!(line("user: "), "portico:/var/lib/portico:/usr/sbin/nologin");
    assert_eq!(line("config dir: "), "root:portico 750");
    assert_eq!(line("config: "), "root:portico 640");
    assert_eq!(line("conffiles: "), "/etc/portico/edge.yaml");
    assert!(
        said.contains("/etc/portico/edge.yaml: ok (0 services, 0 nodes)"),
        "check-config:\n{said}"
    );
    assert!(said.contains("the edge's user reads its config"), "{said}");
    assert!(!said.contains("nobody reads it too"), "{said}");
    assert!(said.lines().any(|l| l == "verified"), "{said}");
    assert_eq!(line("enabled: "), "disabled");
    assert!(said.contains("purged"), "{said}");
    let left: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("left after purge"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The edge's container image (`scripts/image edge`), run by podman: its
/// binary answers for its version and validates a config mounted into it,
/// with nothing but what the image holds (no shell, no package manager).
#[test]
fn the_edge_image_runs_its_binary() {
    let what = "the_edge_image_runs_its_binary";
    if !privileged(what)
        || !installed_or_skip(
            what,
            &[
                ("mmdebstrap", "mmdebstrap"),
                ("buildah", "buildah"),
                ("podman", "podman"),
                ("runc", "runc"),
            ],
        )
    {
        return;
    }
    let stdout = script("image", &["edge"]);
    let image = stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .expect("the image's name")
        .to_string();
    assert_eq!(
        image,
        format!("localhost/portico-edge:{}", env!("CARGO_PKG_VERSION"))
    );
    let config = workspace().join("deploy/edge.yaml");
    let run = |args: &[&str]| {
        let out = Command::new("podman")
            .args([
                "run",
                "--rm",
                "--network=none",
                "--cap-drop=ALL",
                "--read-only",
            ])
            // What this kind of machine asks of podman (see the node agent's
            // image test): runc, cgroupfs, limits within its own.
            .args(["--runtime=runc", "--cgroup-manager=cgroupfs"])
            .args(["--ulimit=nofile=4096:4096", "--ulimit=nproc=1024:1024"])
            .arg(format!(
                "--volume={}:/etc/portico/edge.yaml:ro",
                config.display()
            ))
            .arg(&image)
            .args(args)
            .output()
            .expect("podman run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = run(&["--version"]);
    assert!(ok, "{said}");
    assert_eq!(
        said.trim(),
        format!("portico-edge {}", env!("CARGO_PKG_VERSION"))
    );
    let (ok, said) = run(&["check-config", "/etc/portico/edge.yaml"]);
    assert!(ok, "{said}");
    assert!(said.contains(": ok (0 services, 0 nodes)"), "{said}");
}

/// Runs `scripts/<name>` with `args` from the workspace, as a user would:
/// what it printed; panics with everything it said when it fails.
fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new(workspace().join("scripts").join(name))
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/{name} {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The host's Debian release (its codename), which the root filesystem is
/// made of.
fn debian_release() -> String {
    let text = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .expect("VERSION_CODENAME in /etc/os-release")
}
