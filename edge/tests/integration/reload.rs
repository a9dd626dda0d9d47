//! Reloading the config file of a running `portico-edge`: by polling the
//! file, by SIGHUP, and refusing an invalid file while serving on; files
//! that are not a whole config (empty, cut short, not UTF-8, oversized), a
//! slow writer, a ConfigMap swap, a large file, and health settings that
//! apply at once, each with a client that never stops asking an admitted
//! Service.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::process::*;
use crate::support::*;

/// The edge's reload counters and snapshot generation, from /metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    ok: f64,
    failed: f64,
    generation: f64,
}

async fn figures(metrics: SocketAddr) -> Option<Figures> {
    let text = get_ok(metrics, "/metrics").await?;
    // The gauge is always exported; its absence means a broken scrape.
    text.lines()
        .any(|l| l.starts_with("portico_edge_snapshot_generation "))
        .then(|| Figures {
            ok: metric(&text, "portico_edge_reloads_total", &["result=\"ok\""]),
            failed: metric(&text, "portico_edge_reloads_total", &["result=\"failed\""]),
            generation: metric(&text, "portico_edge_snapshot_generation", &[]),
        })
}

/// Waits until the figures satisfy `f`; returns them.
async fn wait_figures(
    what: &str,
    metrics: SocketAddr,
    f: impl Fn(&Figures) -> bool + Copy,
) -> Figures {
    wait_for(what, Duration::from_secs(20), || async move {
        figures(metrics).await.filter(f)
    })
    .await
}

/// Waits until the edge has handled its `n`-th SIGHUP to the end: the log
/// line that closes a reload (`outcome`) follows the `n`-th
/// `SIGHUP: reloading`.
async fn wait_sighup_handled(edge: &Proc, n: usize, outcome: &str) {
    wait_until(
        &format!("SIGHUP #{n} to be handled ({outcome})"),
        Duration::from_secs(20),
        || {
            let err = edge.stderr();
            let mut parts = err.split("SIGHUP: reloading");
            parts.nth(n).is_some_and(|after| after.contains(outcome)) && parts.next().is_none()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_and_sighup_reload_without_disturbing_connections() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let up = dir.path().join("up.sock");
    let a = SocketAddr::new(net.ip(100), 8080);
    let b = SocketAddr::new(net.ip(101), 8080);
    let metrics = metrics_addr(net);
    let only_a = [YamlService::new("a", a)];
    write_atomically(&cfg, &yaml_config(net, 3, "30s", &only_a));
    let mut edge = Proc::spawn(
        dir.path(),
        "edge",
        &[
            "run",
            "--config",
            path_str(&cfg),
            "--upgrade-socket",
            path_str(&up),
            "--watch-interval-ms",
            "100",
        ],
    );
    wait_serving(a, Duration::from_secs(20)).await;
    let start = wait_figures("a first scrape", metrics, |_| true).await;
    assert_eq!((start.ok, start.failed), (0.0, 0.0), "no reload yet");

    // SIGHUP re-reads the file even when it did not change (the poll, which
    // compares contents, never counts an unchanged file).
    edge.signal(Signal::SIGHUP);
    let after_hup = wait_figures("the SIGHUP reload", metrics, |f| f.ok >= 1.0).await;
    assert_eq!((after_hup.ok, after_hup.failed), (1.0, 0.0));
    wait_sighup_handled(&edge, 1, "configuration reloaded").await;

    let mut held = Held::open(a).await;
    held.echoes("before B").await.expect("echo through A");

    // Adding B to the file: picked up by the poll alone.
    write_atomically(
        &cfg,
        &yaml_config(
            net,
            3,
            "30s",
            &[YamlService::new("a", a), YamlService::new("b", b)],
        ),
    );
    wait_serving(b, Duration::from_secs(20)).await;
    let with_b = wait_figures("the reload adding B", metrics, |f| f.ok >= 2.0).await;
    assert_eq!(
        (with_b.ok, with_b.failed),
        (2.0, 0.0),
        "one reload per change"
    );
    assert!(
        with_b.generation > start.generation,
        "new snapshot: {start:?} -> {with_b:?}"
    );
    held.echoes("after B added")
        .await
        .expect("the held connection through A survives adding B");
    let (line, _) = hello(a, None).await.expect("A still serves");
    assert!(line.starts_with("node-"), "{line}");

    // Removing A, with SIGHUP.
    write_atomically(
        &cfg,
        &yaml_config(net, 3, "30s", &[YamlService::new("b", b)]),
    );
    edge.signal(Signal::SIGHUP);
    wait_refused(a, Duration::from_secs(20)).await;
    // Whether or not the poll applied the file first, the SIGHUP's reload
    // is counted once it is handled.
    wait_sighup_handled(&edge, 2, "configuration reloaded").await;
    held.echoes("after A removed")
        .await
        .expect("the held connection through A survives A's removal");
    let (line, _) = hello(b, None).await.expect("B still serves");
    assert!(line.starts_with("node-"), "{line}");
    let without_a = wait_figures("the reload removing A", metrics, |f| f.ok >= 3.0).await;
    // The poll may have seen the new file before the SIGHUP arrived; then
    // the SIGHUP re-applied it: 3 or 4, never a failure.
    assert!(
        (3.0..=4.0).contains(&without_a.ok) && without_a.failed == 0.0,
        "{without_a:?}"
    );
    assert!(
        without_a.generation > with_b.generation,
        "new snapshot: {with_b:?} -> {without_a:?}"
    );

    // An invalid file (two errors): refused, reported, B serves on.
    let mut bad_b = YamlService::new("b", b);
    bad_b.node_port = 99999;
    let bad = yaml_config(net, 3, "30s", &[bad_b]).replacen(
        "    interval: 200ms\n",
        "    intervall: 200ms\n",
        1,
    );
    assert!(bad.contains("intervall") && bad.contains("nodePort: 99999"));
    write_atomically(&cfg, &bad);
    let rejected = wait_figures("the failed reload", metrics, |f| f.failed >= 1.0).await;
    assert_eq!(
        (rejected.ok, rejected.failed),
        (without_a.ok, 1.0),
        "counted as failed, not ok"
    );
    edge.wait_log("reload rejected", Duration::from_secs(5))
        .await;
    let err = edge.stderr();
    for e in [
        "services[0].ports[0].nodePort: 99999 is outside 1-65535",
        "settings.health.intervall: unknown field `intervall`",
    ] {
        assert!(err.contains(e), "the error {e:?} is logged:\n{err}");
    }
    assert!(err.contains("count=2"), "{err}");
    let (line, _) = hello(b, None).await.expect("B still serves");
    assert!(line.starts_with("node-"), "{line}");
    held.echoes("after the invalid file").await.expect("echo");

    // The poll reports an invalid file once; SIGHUP reports it again.
    edge.signal(Signal::SIGHUP);
    wait_sighup_handled(&edge, 3, "reload rejected").await;
    let rehup = wait_figures("the failed SIGHUP reload", metrics, |f| f.failed >= 2.0).await;
    assert_eq!((rehup.ok, rehup.failed), (without_a.ok, 2.0));
    wait_refused(a, Duration::from_secs(1)).await;
    let (line, _) = hello(b, None).await.expect("B still serves");
    assert!(line.starts_with("node-"), "{line}");

    held.close().await;
    edge.signal(Signal::SIGTERM);
    let status = edge.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

/// One request of a [`ClientLoop`]: when it started, how long it took, and
/// why it failed.
struct Request {
    at: Instant,
    took: Duration,
    error: Option<String>,
}

/// A client that keeps opening connections through a VIP, one after
/// another, each one greeted by a node, until stopped.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Request>>,
}

impl ClientLoop {
    fn start(addr: SocketAddr) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut done = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let at = Instant::now();
                let error = match hello(addr, None).await {
                    Ok((line, _)) if line.starts_with("node-") => None,
                    Ok((line, _)) => Some(format!("greeted by {line:?}")),
                    Err(e) => Some(e.to_string()),
                };
                done.push(Request {
                    at,
                    took: at.elapsed(),
                    error,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            done
        });
        ClientLoop { stop, task }
    }

    /// Stops the loop; every request it made.
    async fn stop(self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("client loop")
    }
}

/// Asserts no request failed; prints how many there were and the slowest.
fn assert_all_answered(what: &str, requests: &[Request]) {
    let failed: Vec<&String> = requests.iter().filter_map(|r| r.error.as_ref()).collect();
    let slowest = requests.iter().map(|r| r.took).max().unwrap_or_default();
    eprintln!(
        "{what}: {} requests, {} failed, slowest {slowest:?}",
        requests.len(),
        failed.len()
    );
    assert!(requests.len() > 10, "{what}: the client loop ran");
    assert!(failed.is_empty(), "{what}: failed requests: {failed:?}");
}

/// Starts the edge on `cfg` with `--watch-interval-ms interval` and `extra`
/// arguments.
fn spawn_edge(dir: &Path, cfg: &Path, interval_ms: u32, extra: &[&str]) -> Proc {
    let up = dir.join("up.sock");
    let interval = interval_ms.to_string();
    let mut args = vec![
        "run",
        "--config",
        path_str(cfg),
        "--upgrade-socket",
        path_str(&up),
        "--watch-interval-ms",
        &interval,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(dir, "edge", &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_files_are_refused_while_the_admitted_service_answers() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let a = SocketAddr::new(net.ip(100), 8080);
    let metrics = metrics_addr(net);
    let good = yaml_config(net, 3, "30s", &[YamlService::new("a", a)]);
    write_atomically(&cfg, &good);
    let mut edge = spawn_edge(dir.path(), &cfg, 100, &[]);
    wait_serving(a, Duration::from_secs(20)).await;
    let client = ClientLoop::start(a);

    // Each written in place, as a careless editor or script would. The cut
    // file ends in `nodePort: 300`: valid YAML and a valid port, that would
    // send A's clients to a port no node serves.
    assert!(good.ends_with("nodePort: 30080\n"));
    let cut = &good.as_bytes()[..good.len() - 3];
    let latin1 = [b"# caf\xe9\n".as_slice(), good.as_bytes()].concat();
    // Cut at the end of a line, just before `services:`: a valid config
    // without Services.
    let before_services = &good[..good.find("services:").expect("services")];
    let cases: [(&str, &[u8], &str); 5] = [
        ("an empty file", b"", "the file is empty"),
        (
            "a file cut short",
            cut,
            "the file ends in the middle of line",
        ),
        (
            "a non-UTF-8 file",
            &latin1,
            "the file is not UTF-8 text: byte 0xe9 at line 1, column 6",
        ),
        (
            "a file of comments only",
            b"# moved elsewhere\n",
            "the file is empty",
        ),
        (
            "a file cut before its Services",
            before_services.as_bytes(),
            "services: missing, which would remove every Service the running configuration has from this file (1)",
        ),
    ];
    for (n, (what, bytes, message)) in cases.iter().enumerate() {
        std::fs::write(&cfg, bytes).expect("write in place");
        let failed = (n + 1) as f64;
        let f = wait_figures(what, metrics, |f| f.failed >= failed).await;
        assert_eq!((f.ok, f.failed), (0.0, failed), "{what}");
        edge.wait_log(message, Duration::from_secs(5)).await;
        let (line, _) = hello(a, None).await.expect("A still serves");
        assert!(line.starts_with("node-"), "{what}: {line}");
    }
    let err = edge.stderr();
    assert!(
        err.contains("to run without Services from this file, write `services: []`"),
        "the empty file's error says how to remove every Service:\n{err}"
    );

    // SIGHUP reads the last one again and refuses it again.
    edge.signal(Signal::SIGHUP);
    wait_sighup_handled(&edge, 1, "reload rejected").await;
    let f = wait_figures("the SIGHUP", metrics, |f| f.failed >= 6.0).await;
    assert_eq!((f.ok, f.failed), (0.0, 6.0));

    // Back to the good file: nothing to apply, nothing failed.
    write_atomically(&cfg, &good);
    edge.signal(Signal::SIGHUP);
    wait_sighup_handled(&edge, 2, "configuration reloaded").await;
    assert_all_answered("unusable files", &client.stop().await);

    // Removing every Service is a file that says so.
    write_atomically(&cfg, &yaml_config(net, 3, "30s", &[]));
    wait_refused(a, Duration::from_secs(20)).await;
    let f = wait_figures("the explicit removal", metrics, |f| f.ok >= 2.0).await;
    assert_eq!(f.failed, 6.0);

    edge.signal(Signal::SIGTERM);
    assert_eq!(
        edge.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

/// Writes `text` over the file at `path` in place (truncated, then written),
/// `chunk` bytes at a time with `pause` between: an editor or script that
/// does not rename into place.
async fn write_slowly(path: &Path, text: &str, chunk: usize, pause: Duration) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("truncate in place");
    for part in text.as_bytes().chunks(chunk) {
        file.write_all(part).expect("write");
        file.flush().expect("flush");
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_and_a_configmap_swap_are_read_once_whole() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        SocketAddr::new(net.ip(100), 8080),
        SocketAddr::new(net.ip(101), 8080),
        SocketAddr::new(net.ip(102), 8080),
    );
    let metrics = metrics_addr(net);
    // A ConfigMap volume: edge.yaml -> ..data/edge.yaml, ..data -> the
    // current version's directory.
    let version = |n: u32, services: &[YamlService<'_>]| {
        let d = dir.path().join(format!("..2026_0{n}"));
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("edge.yaml"), yaml_config(net, 3, "30s", services)).expect("write");
        format!("..2026_0{n}")
    };
    let first = version(1, &[YamlService::new("a", a)]);
    std::os::unix::fs::symlink(&first, dir.path().join("..data")).expect("symlink");
    let cfg = dir.path().join("edge.yaml");
    std::os::unix::fs::symlink("..data/edge.yaml", &cfg).expect("symlink");
    // A change is read once it has stayed the same for 300ms.
    let mut edge = spawn_edge(dir.path(), &cfg, 300, &[]);
    wait_serving(a, Duration::from_secs(20)).await;
    let client = ClientLoop::start(a);

    // Written in place through the links, 20 bytes every 20ms (over half a
    // second in all): never read half-way, read once when whole.
    let with_b = yaml_config(
        net,
        3,
        "30s",
        &[YamlService::new("a", a), YamlService::new("b", b)],
    );
    let started = Instant::now();
    write_slowly(&cfg, &with_b, 20, Duration::from_millis(20)).await;
    let writing = started.elapsed();
    wait_serving(b, Duration::from_secs(20)).await;
    let f = wait_figures("B added", metrics, |f| f.ok >= 1.0).await;
    eprintln!("slow writer: {} bytes over {writing:?}", with_b.len());
    assert!(writing > Duration::from_millis(600), "{writing:?}");
    assert_eq!(
        (f.ok, f.failed),
        (1.0, 0.0),
        "one reload, of the whole file"
    );

    // The ConfigMap update: a new version directory, and ..data swapped to
    // it by renaming a new symlink over it.
    let second = version(2, &[YamlService::new("a", a), YamlService::new("c", c)]);
    std::os::unix::fs::symlink(&second, dir.path().join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
    wait_serving(c, Duration::from_secs(20)).await;
    wait_refused(b, Duration::from_secs(20)).await;
    let f = wait_figures("the swap", metrics, |f| f.ok >= 2.0).await;
    assert_eq!((f.ok, f.failed), (2.0, 0.0));
    assert_all_answered("slow writer and swap", &client.stop().await);

    edge.signal(Signal::SIGTERM);
    assert_eq!(
        edge.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_read_off_the_runtime_and_an_oversized_one_refused() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let (a, b) = (
        SocketAddr::new(net.ip(100), 8080),
        SocketAddr::new(net.ip(101), 8080),
    );
    let metrics = metrics_addr(net);
    write_atomically(
        &cfg,
        &yaml_config(net, 3, "30s", &[YamlService::new("a", a)]),
    );
    // One worker thread: a read on it would stall every connection.
    let mut edge = spawn_edge(dir.path(), &cfg, 100, &["--threads", "1"]);
    wait_serving(a, Duration::from_secs(20)).await;
    let client = ClientLoop::start(a);

    // 48 MB: B, and a long commentary (it parses for seconds in a debug
    // build).
    let mut big = yaml_config(
        net,
        3,
        "30s",
        &[YamlService::new("a", a), YamlService::new("b", b)],
    );
    let line = format!("# {}\n", "x".repeat(77));
    big.push_str(&line.repeat(48_000_000 / line.len()));
    let written = Instant::now();
    write_atomically(&cfg, &big);
    wait_serving(b, Duration::from_secs(60)).await;
    let applied = written.elapsed();
    let f = wait_figures("B added", metrics, |f| f.ok >= 1.0).await;
    assert_eq!((f.ok, f.failed), (1.0, 0.0));

    // Oversized: refused from its size (a sparse file: nothing to read).
    let huge = dir.path().join("huge.tmp");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(65 * 1024 * 1024))
        .expect("sparse file");
    let refused_at = Instant::now();
    std::fs::rename(&huge, &cfg).expect("rename into place");
    wait_figures("the oversized file", metrics, |f| f.failed >= 1.0).await;
    let refused = refused_at.elapsed();
    edge.wait_log(
        "a config file may be at most 64 MiB",
        Duration::from_secs(5),
    )
    .await;
    let (line, _) = hello(b, None).await.expect("B still serves");
    assert!(line.starts_with("node-"), "{line}");

    let requests = client.stop().await;
    // The requests made while the large file was being settled, read and
    // parsed.
    let during: Vec<&Request> = requests
        .iter()
        .filter(|r| r.at >= written && r.at + r.took <= written + applied)
        .collect();
    let slowest = during.iter().map(|r| r.took).max().unwrap_or_default();
    eprintln!(
        "large file: {} MB applied {applied:?} after it was written; {} requests meanwhile, slowest {slowest:?}; the oversized file refused after {refused:?}",
        big.len() / 1_000_000,
        during.len()
    );
    assert_all_answered("large file", &requests);
    assert!(during.len() >= 5, "requests went on during the read");
    assert!(
        slowest < Duration::from_millis(1500),
        "no request waited for the read: {slowest:?}"
    );

    // The process loop is not held up by a read either: SIGTERM during
    // one closes the listeners at once.
    let with_a = yaml_config(net, 3, "30s", &[YamlService::new("a", a)]);
    let skip = with_b_len(&big);
    write_atomically(&cfg, &format!("{with_a}{}", &big[skip..]));
    edge.wait_log(
        "changed and has settled; reading it",
        Duration::from_secs(10),
    )
    .await;
    let term = Instant::now();
    edge.signal(Signal::SIGTERM);
    wait_refused(b, Duration::from_secs(10)).await;
    let closed = term.elapsed();
    let status = edge.wait_exit(Duration::from_secs(60)).await;
    eprintln!(
        "SIGTERM during a read: listeners closed after {closed:?}, exit after {:?}",
        term.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        edge.stderr().matches("configuration reloaded").count(),
        1,
        "the read in flight is not applied"
    );
    assert!(closed < Duration::from_millis(1500), "{closed:?}");
}

/// The length of a config before its commentary (the first `# ` line).
fn with_b_len(text: &str) -> usize {
    text.find("\n# ").map_or(text.len(), |i| i + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_health_interval_applies_at_once() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let a = SocketAddr::new(net.ip(100), 8080);
    let metrics = metrics_addr(net);
    let with_interval = |interval: &str| {
        yaml_config(net, 3, "30s", &[YamlService::new("a", a)]).replacen(
            "    interval: 200ms\n",
            &format!("    interval: {interval}\n"),
            1,
        )
    };
    write_atomically(&cfg, &with_interval("1h"));
    let mut edge = spawn_edge(dir.path(), &cfg, 100, &[]);
    wait_serving(a, Duration::from_secs(20)).await;
    let client = ClientLoop::start(a);
    let up = |text: &str| {
        metric(
            text,
            "portico_edge_backend_up",
            &["node=\"node-0\"", "check=\"node-proxy\""],
        )
    };
    // Every node probed once; the next probes are an hour away.
    let text = wait_for("every node probed", Duration::from_secs(20), || async {
        get_ok(metrics, "/metrics")
            .await
            .filter(|t| metric(t, "portico_edge_probe_duration_seconds_count", &[]) >= 3.0)
    })
    .await;
    assert_eq!(up(&text), 1.0);

    write_atomically(&cfg, &with_interval("200ms"));
    wait_figures("the reload", metrics, |f| f.ok >= 1.0).await;
    let reloaded = Instant::now();
    // node-0's kube-proxy now says it is unhealthy: seen after fall (2)
    // probes of the new interval, not an hour later.
    nodes[0].state.healthy.store(false, Ordering::Relaxed);
    wait_for("node-0 down", Duration::from_secs(10), || async {
        get_ok(metrics, "/metrics").await.filter(|t| up(t) == 0.0)
    })
    .await;
    eprintln!("node-0 taken out {:?} after the reload", reloaded.elapsed());
    assert_all_answered("health interval", &client.stop().await);

    edge.signal(Signal::SIGTERM);
    assert_eq!(
        edge.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}
