//! The `portico-edge` binary from the outside: `check-config`, `run` with a
//! bad file, `status` against a running edge, and SIGTERM draining.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use portico_edge::status::Status;

use crate::support::process::*;
use crate::support::*;

/// The repository's example configs.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(name)
}

/// Every error `portico-edge` reports for config/examples/broken.yaml, one
/// per line marked `# ERROR` in the file.
const BROKEN_ERRORS: &[&str] = &[
    "settings.health.timeout: 5s must not be longer than interval (1s)",
    "settings.health.rise: 0 is outside 1-100",
    "settings.proxy.maglevTableSize: 65536 is not a prime",
    "settings.metricsListen: \"localhost:9720\" is not a valid socket address",
    "nodes[1].name: duplicate node name \"node-a\"",
    "nodes[1].addresses[0]: \"10.0.0.300\" is not a valid IP address",
    "services[1].name: \"Web_2\" is not a valid RFC 1123 label",
    "services[1].healthCheckNodePort: required when externalTrafficPolicy is Local",
    "services[1].loadBalancerSourceRanges[1]: \"10.0.0.0/33\" is not a valid CIDR",
    "services[1].ports[0].nodePort: 99999 is outside 1-65535",
    "services[1].ports[0].port: listener 203.0.113.10:80/TCP is already used by Service default/web",
    "services[2].ports[0].nodeport: unknown field `nodeport`",
    "services[2].sessionAffinityConfig: only allowed when sessionAffinity is ClientIP",
];

/// Asserts `stderr` holds every error of broken.yaml, and as many error
/// lines as the file marks.
fn assert_broken_errors(stderr: &str) {
    for e in BROKEN_ERRORS {
        assert!(
            stderr.lines().any(|l| l.starts_with(e)),
            "missing error line {e:?} in:\n{stderr}"
        );
    }
    let text = std::fs::read_to_string(example("broken.yaml")).expect("read broken.yaml");
    let marked = text.matches("# ERROR").count();
    assert_eq!(
        marked,
        BROKEN_ERRORS.len(),
        "the test lists every marked error"
    );
    let reported = stderr
        .lines()
        .filter(|l| {
            (l.starts_with("settings.") || l.starts_with("nodes[") || l.starts_with("services["))
                && l.contains(": ")
        })
        .count();
    assert_eq!(reported, marked, "one line per error:\n{stderr}");
}

#[test]
fn check_config_accepts_the_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = example("edge.yaml");
    let mut p = Proc::spawn(dir.path(), "check", &["check-config", path_str(&file)]);
    let status = p.wait_exit_blocking(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    let out = p.stdout();
    assert_eq!(
        out.trim_end(),
        format!("{}: ok (2 services, 3 nodes)", file.display())
    );
}

#[test]
fn check_config_reports_every_error_of_a_broken_file_with_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = example("broken.yaml");
    let mut p = Proc::spawn(dir.path(), "check", &["check-config", path_str(&file)]);
    let status = p.wait_exit_blocking(Duration::from_secs(30));
    assert_eq!(status.code(), Some(64), "stderr: {}", p.stderr());
    let err = p.stderr();
    assert!(
        err.starts_with(&format!("{} is invalid:\n", file.display())),
        "{err}"
    );
    assert_broken_errors(&err);
    assert!(p.stdout().is_empty(), "nothing on stdout: {:?}", p.stdout());
}

#[test]
fn check_config_of_a_missing_file_exits_64_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("no-such-config.yaml");
    let mut p = Proc::spawn(dir.path(), "check", &["check-config", path_str(&file)]);
    let status = p.wait_exit_blocking(Duration::from_secs(30));
    assert_eq!(status.code(), Some(64), "stderr: {}", p.stderr());
    let err = p.stderr();
    assert!(
        err.contains(&format!("cannot read {}", file.display()))
            && err.contains("No such file or directory"),
        "{err}"
    );
    assert!(p.stdout().is_empty());
}

/// `check-config FILE`: exit code and stderr.
fn check(dir: &Path, file: &Path) -> (Option<i32>, String) {
    let mut p = Proc::spawn(dir, "check", &["check-config", path_str(file)]);
    let status = p.wait_exit_blocking(Duration::from_secs(30));
    (status.code(), p.stderr())
}

#[test]
fn check_config_refuses_what_is_not_a_whole_file_and_odd_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("edge.yaml");
    let long = "a".repeat(10 * 1024);
    let cases: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "empty",
            Vec::new(),
            vec!["the file is empty: it is refused so that a file not yet written, or cut short, never removes every Service; to run without Services from this file, write `services: []`".into()],
        ),
        (
            "cut short",
            b"services: []\nnodes: [{name: a, addresses: [10.0.0.1]}]\nsettings: {health: {interval: 2".to_vec(),
            vec!["the file ends in the middle of line 3: it looks cut short while being written, so it is refused (a complete file ends with a line break)".into()],
        ),
        (
            "not UTF-8",
            b"services: []\n# \xff\n".to_vec(),
            vec!["the file is not UTF-8 text: byte 0xff at line 2, column 3 is not valid UTF-8 (save the file as UTF-8)".into()],
        ),
        (
            "odd values",
            format!(
                "settings: {{health: {{interval: 1ms}}, proxy: {{idleTimeout: 876000h, connectRetries: -1}}}}
services:
  - {{name: {long}, vips: ['::ffff:192.0.2.1'], ports: [{{port: 1e30, nodePort: 30080}}]}}
"
            )
            .into_bytes(),
            vec![
                "settings.health.interval: 1ms is outside 100ms-1h".into(),
                "settings.proxy.connectRetries: -1 is outside 0-16".into(),
                "settings.proxy.idleTimeout: 876000h is outside 1s-168h".into(),
                "services[0].name: a text of 10240 characters is too long: no text in this file may be longer than 1024 characters".into(),
                "services[0].vips[0]: ::ffff:192.0.2.1 is an IPv4-mapped IPv6 address (an IPv4 address in IPv6 form, which IPv4 clients never use); write it as the IPv4 address 192.0.2.1".into(),
                "services[0].ports[0].port: 1e30 is outside 1-65535".into(),
            ],
        ),
    ];
    for (what, bytes, errors) in cases {
        std::fs::write(&file, bytes).expect("write");
        let (code, err) = check(dir.path(), &file);
        assert_eq!(code, Some(64), "{what}: {err}");
        let header = format!("{} is invalid:", file.display());
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], header, "{what}");
        assert_eq!(lines[1..], errors, "{what}");
    }

    // Over 64 MiB: refused from its size (sparse: nothing to read).
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(64 * 1024 * 1024 + 1))
        .expect("sparse file");
    let (code, err) = check(dir.path(), &file);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("the file is 64 MiB (67108865 bytes); a config file may be at most 64 MiB"),
        "{err}"
    );

    // Removing every Service, said so, is fine.
    std::fs::write(&file, "services: []\n").expect("write");
    assert_eq!(check(dir.path(), &file).0, Some(0));
}

#[test]
fn run_with_a_broken_file_exits_64_without_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = example("broken.yaml");
    let up = dir.path().join("up.sock");
    let mut p = Proc::spawn(
        dir.path(),
        "edge",
        &[
            "run",
            "--config",
            path_str(&file),
            "--upgrade-socket",
            path_str(&up),
        ],
    );
    let status = p.wait_exit_blocking(Duration::from_secs(30));
    assert_eq!(status.code(), Some(64), "stderr: {}", p.stderr());
    let err = p.stderr();
    assert!(
        err.contains(&format!("portico-edge: {} is invalid:", file.display())),
        "{err}"
    );
    assert_broken_errors(&err);
    // The config is read before anything is opened: no listener, no admin
    // server, no upgrade socket.
    for never in ["listener open", "edge running"] {
        assert!(!err.contains(never), "logged {never:?}:\n{err}");
    }
    assert!(!up.exists());
}

/// The stand-ins, the config file and the running edge of one test.
struct Running {
    net: Subnet,
    vip: SocketAddr,
    nodes: Vec<portico_lab::standin::StandInNode>,
    edge: Proc,
    dir: tempfile::TempDir,
}

/// Three stand-in nodes and an edge running Service `web` over them.
async fn start_edge(drain: &str) -> Running {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let vip = SocketAddr::new(net.ip(100), 8080);
    let cfg = dir.path().join("edge.yaml");
    write_atomically(
        &cfg,
        &yaml_config(net, 3, drain, &[YamlService::new("web", vip)]),
    );
    let up = dir.path().join("up.sock");
    let edge = Proc::spawn(
        dir.path(),
        "edge",
        &[
            "run",
            "--config",
            path_str(&cfg),
            "--upgrade-socket",
            path_str(&up),
        ],
    );
    wait_serving(vip, Duration::from_secs(20)).await;
    Running {
        net,
        vip,
        nodes,
        edge,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_one_row_per_node_with_a_stopped_node_down() {
    let mut r = start_edge("30s").await;
    let admin = admin_addr(r.net);
    r.nodes[1].stop();
    let healthy_of = |s: &Status| -> Option<Vec<(String, bool)>> {
        let l = s.listeners.iter().find(|l| l.service == "default/web")?;
        l.backends
            .iter()
            .map(|b| b.probed.then(|| (b.node.clone(), b.healthy)))
            .collect()
    };
    let expected = vec![
        ("node-0".to_string(), true),
        ("node-1".to_string(), false),
        ("node-2".to_string(), true),
    ];
    wait_for(
        "/status to show node-1 down, the others up",
        Duration::from_secs(20),
        || async {
            let body = get_ok(admin, "/status").await?;
            let s: Status = serde_json::from_str(&body).ok()?;
            let mut h = healthy_of(&s)?;
            h.sort();
            (h == expected).then_some(())
        },
    )
    .await;

    let mut cmd = Proc::spawn(
        r.dir.path(),
        "status",
        &["status", "--admin", &admin.to_string()],
    );
    let status = cmd.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "stderr: {}", cmd.stderr());
    let out = cmd.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("generation ")),
        "{out}"
    );
    let header: Vec<&str> = lines
        .get(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        header,
        ["SERVICE", "PORT", "LISTENER", "NODE", "BACKEND", "HEALTH", "WEIGHT", "ACTIVE"],
        "{out}"
    );
    let rows: Vec<Vec<&str>> = lines[2..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "one row per node, no note row:\n{out}");
    let listener = format!("tcp/{}", r.vip);
    for (i, row) in rows.iter().enumerate() {
        let node = format!("node-{i}");
        let backend = SocketAddr::new(r.net.ip(i as u8 + 1), NODE_PORT).to_string();
        assert_eq!(
            row[..5],
            [
                "default/web",
                "tcp",
                listener.as_str(),
                node.as_str(),
                backend.as_str()
            ],
            "{out}"
        );
        if i == 1 {
            assert_eq!(row[5], "DOWN", "the stopped node:\n{out}");
            assert!(
                lines[2 + i].contains("DOWN (") && lines[2 + i].contains("refused"),
                "the probe error is shown:\n{out}"
            );
        } else {
            assert_eq!(row[5], "up", "{node}:\n{out}");
        }
    }
    assert!(r.edge.running(), "the edge still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_at_once_and_exits_0_after_the_last_connection() {
    let mut r = start_edge("30s").await;
    let mut held = Held::open(r.vip).await;
    held.echoes("before SIGTERM").await.expect("echo");

    r.edge.signal(Signal::SIGTERM);
    wait_refused(r.vip, Duration::from_secs(5)).await;
    // Refused because the edge stopped accepting, not because it is gone:
    // it drains the held connection, for up to drainTimeout (30s).
    assert!(r.edge.running(), "the edge drains instead of exiting");
    for i in 0..3 {
        held.echoes(&format!("draining {i}"))
            .await
            .unwrap_or_else(|e| panic!("the held connection works while draining: {e}"));
    }
    assert!(r.edge.running());
    held.close().await;
    // Well below drainTimeout: the edge exits because its last connection
    // ended, not because the drain time ran out.
    let status = r.edge.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "clean exit");
    let err = r.edge.stderr();
    assert!(err.contains("SIGTERM: draining and stopping"), "{err}");
    assert!(err.contains("stopped"), "{err}");
    assert!(!err.contains("drain time over"), "{err}");
}

/// While the edge drains after SIGTERM, a connection to the admin or metrics
/// address is either refused or answered: never accepted by the kernel and
/// then left unanswered, which makes `portico-edge status` and Prometheus
/// scrapes hang until their own timeouts instead of failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_metrics_are_refused_or_answered_while_draining() {
    let mut r = start_edge("30s").await;
    let admin = admin_addr(r.net);
    let metrics = metrics_addr(r.net);
    assert!(get_ok(admin, "/status").await.is_some(), "admin serves");
    assert!(
        get_ok(metrics, "/metrics").await.is_some(),
        "metrics serves"
    );
    let held = Held::open(r.vip).await;

    r.edge.signal(Signal::SIGTERM);
    wait_refused(r.vip, Duration::from_secs(5)).await;
    for addr in [admin, metrics] {
        let answer = tokio::time::timeout(Duration::from_secs(3), async {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Ok("refused".to_string())
                }
                Err(e) => Err(format!("connect: {e}")),
                Ok(_) => match try_http_get(addr, "/metrics").await {
                    Ok((200, _)) => Ok("answered".to_string()),
                    Ok((code, body)) => Err(format!("HTTP {code}: {body}")),
                    Err(e) => Err(format!("accepted, then {e}")),
                },
            }
        })
        .await;
        assert!(
            r.edge.running(),
            "still draining the held connection when {addr} was tried"
        );
        match answer {
            Ok(Ok(how)) => eprintln!("{addr} while draining: {how}"),
            Ok(Err(e)) => panic!("{addr} while draining: {e}"),
            Err(_) => panic!("{addr} while draining: accepted but never answered"),
        }
    }
    held.close().await;
    let status = r.edge.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}
