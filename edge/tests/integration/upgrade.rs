//! Binary upgrade of a running `portico-edge`: a second process takes the
//! listening sockets over (`--takeover`, then SIGQUIT to the first) while
//! clients keep connecting; not one connection is refused or fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::process::*;
use crate::support::*;

/// The most connections the load opens, and for how long it runs at most.
const LOAD_MAX_CONNECTIONS: usize = 10_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(20);
/// Clients connecting at once, each one connection per tick at most: about
/// 1,000 connections a second, so the bound above spans about 10 s.
const LOAD_WORKERS: usize = 2;
const LOAD_TICK: Duration = Duration::from_millis(2);

/// What the client load saw so far.
#[derive(Default)]
struct LoadLog {
    /// When each served connection started (connect, then greeting read).
    served: Vec<Instant>,
    /// Connects refused.
    refused: usize,
    /// Other failures, with why.
    failed: Vec<String>,
    /// Whether the load ended by itself (a bound), not because told to.
    bounded_out: bool,
}

impl LoadLog {
    fn served_since(&self, t: Instant) -> usize {
        self.served.iter().filter(|s| **s >= t).count()
    }
}

/// Connects to `vip` and reads the node's greeting, from LOAD_WORKERS
/// clients, until `stop` or a bound; every outcome goes to `log`.
async fn load(vip: SocketAddr, stop: Arc<AtomicBool>, log: Arc<Mutex<LoadLog>>) {
    let started = Instant::now();
    let opened = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|_| {
            let (stop, log, opened) = (stop.clone(), log.clone(), opened.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LOAD_TICK);
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if started.elapsed() > LOAD_MAX_TIME
                        || opened.fetch_add(1, Ordering::Relaxed) >= LOAD_MAX_CONNECTIONS
                    {
                        log.lock().expect("load log").bounded_out = true;
                        return;
                    }
                    tick.tick().await;
                    let t = Instant::now();
                    let r = hello(vip, None).await;
                    let mut log = log.lock().expect("load log");
                    match r {
                        Ok((line, _)) if line.starts_with("node-") => log.served.push(t),
                        Ok((line, _)) => log.failed.push(format!("unexpected greeting {line:?}")),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            log.refused += 1
                        }
                        Err(e) => log.failed.push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("load worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_hands_listeners_over_without_refusing_a_connection() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let up = dir.path().join("up.sock");
    let vip = SocketAddr::new(net.ip(100), 8080);
    let (admin, metrics) = (admin_addr(net), metrics_addr(net));
    let drain = Duration::from_secs(5);
    write_atomically(
        &cfg,
        &yaml_config(net, 3, "5s", &[YamlService::new("web", vip)]),
    );
    let run_args = [
        "run",
        "--config",
        path_str(&cfg),
        "--upgrade-socket",
        path_str(&up),
    ];

    let mut edge1 = Proc::spawn(dir.path(), "edge1", &run_args);
    wait_serving(vip, Duration::from_secs(20)).await;
    let mut held = Held::open(vip).await;
    held.echoes("through edge 1").await.expect("echo");

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(LoadLog::default()));
    let load_task = tokio::spawn(load(vip, stop.clone(), log.clone()));
    let load_started = Instant::now();
    let served = |since: Instant, n: usize| {
        let log = log.clone();
        move || log.lock().expect("load log").served_since(since) >= n
    };
    wait_until(
        "the load to run through edge 1",
        Duration::from_secs(20),
        served(load_started, 20),
    )
    .await;

    let mut args2 = run_args.to_vec();
    args2.push("--takeover");
    let mut edge2 = Proc::spawn(dir.path(), "edge2", &args2);
    // Connecting to the upgrade socket would use up its one accept: wait
    // until it is bound and listening, as the kernel reports it.
    wait_until(
        "edge 2's upgrade socket to listen",
        Duration::from_secs(20),
        || up.exists() && unix_socket_listening(&up),
    )
    .await;
    assert!(edge2.running(), "edge 2 waits for the handover");
    assert!(
        get_ok(admin, "/status").await.is_some(),
        "edge 1 still serves its admin API"
    );

    edge1.signal(Signal::SIGQUIT);
    edge1
        .wait_log("handover done; draining", Duration::from_secs(20))
        .await;
    edge2
        .wait_log("listeners received", Duration::from_secs(20))
        .await;
    edge2
        .wait_log("edge running", Duration::from_secs(20))
        .await;
    wait_for("edge 2's /status", Duration::from_secs(20), || {
        get_ok(admin, "/status")
    })
    .await;
    assert!(!up.exists(), "edge 2 removed the upgrade socket file");
    let err2 = edge2.stderr();
    assert!(
        err2.contains("taking over inherited listener listener=tcp/")
            && !err2.contains("cannot open listener"),
        "edge 2 serves the inherited socket:\n{err2}"
    );

    // Edge 1 drains: the connection it holds still works, and keeps it alive.
    for i in 0..3 {
        held.echoes(&format!("edge 1 draining {i}"))
            .await
            .unwrap_or_else(|e| panic!("the held connection through edge 1: {e}"));
    }
    assert!(edge1.running(), "edge 1 drains its held connection");
    let closed_at = Instant::now();
    held.close().await;
    let status1 = edge1.wait_exit(drain + Duration::from_secs(5)).await;
    let edge1_gone = Instant::now();
    assert_eq!(status1.code(), Some(0), "edge 1 exits cleanly");
    assert!(
        edge1_gone - closed_at < drain,
        "edge 1 exited because its last connection closed, not at the end of drainTimeout"
    );
    assert!(
        !edge1.stderr().contains("drain time over"),
        "{}",
        edge1.stderr()
    );

    // With edge 1 gone, only edge 2 holds the listeners.
    wait_until(
        "the load to be served after edge 1 exited",
        Duration::from_secs(20),
        served(edge1_gone, 20),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(30), load_task)
        .await
        .expect("the load stops")
        .expect("the load task");
    let log = std::mem::take(&mut *log.lock().expect("load log"));
    let after = log.served_since(edge1_gone);
    eprintln!(
        "load: {} served ({} after edge 1 exited), {} refused, {} failed",
        log.served.len(),
        after,
        log.refused,
        log.failed.len()
    );
    assert!(
        !log.bounded_out,
        "the load hit its bound before the upgrade was over"
    );
    assert_eq!(log.refused, 0, "connections refused during the upgrade");
    assert!(
        log.failed.is_empty(),
        "connections failed during the upgrade: {:?}",
        &log.failed[..log.failed.len().min(10)]
    );
    assert!(after >= 20, "served after edge 1 exited: {after}");

    // Edge 2 serves /metrics on the same address, and counted what it served.
    let text = get_ok(metrics, "/metrics")
        .await
        .expect("edge 2 serves /metrics on the inherited address");
    let accepted = metric(
        &text,
        "portico_edge_connections_accepted_total",
        &["service=\"default/web\""],
    );
    assert!(
        accepted >= after as f64 && accepted <= log.served.len() as f64,
        "edge 2 accepted {accepted}; {after} were served after edge 1 exited, {} in all",
        log.served.len()
    );
    let (line, _) = hello(vip, None).await.expect("edge 2 serves the VIP");
    assert!(line.starts_with("node-"), "{line}");

    edge2.signal(Signal::SIGTERM);
    let status2 = edge2.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status2.code(), Some(0), "edge 2 exits cleanly");
}
