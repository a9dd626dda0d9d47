//! Reloading the config file of a running `portico-edge`: by polling the
//! file, by SIGHUP, and refusing an invalid file while serving on.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::process::*;
use crate::support::*;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

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
