//! Throughput of the TCP copy on loopback, buffered against spliced: a
//! source streams bytes through one proxy thread (a current-thread tokio
//! runtime running `copy_bidirectional`) to a sink that discards them.
//!
//! Runs are interleaved (every contender once per round, A B C A B C ...)
//! and reported as medians with ratios to the buffered path, because this
//! machine is shared and absolute figures drift between runs. Per contender it prints wall-clock
//! throughput and the proxy thread's CPU time (user + system, from
//! `getrusage(RUSAGE_THREAD)`) per GB copied, the figure that decides how
//! many streams one core can carry. Source and sink threads share the cores
//! with the proxy; nothing is pinned.
//!
//! `cargo bench -p portico-edge --bench copy`; environment:
//! `PORTICO_BENCH_COPY_MIB` (per stream and run, default 1024),
//! `PORTICO_BENCH_COPY_ROUNDS` (default 5), `PORTICO_BENCH_COPY_STREAMS`
//! (comma-separated stream counts, default `1,8`). Without `--bench` (as
//! `cargo test --all-targets` runs it) it is a smoke test: 8 MiB, one
//! round, 1 and 2 streams.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream as StdStream};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use portico_edge::copy::{copy_bidirectional, CopyOptions, CopyPath, NoopObserver, SpliceMode};

/// One contender: a name and the options it runs with.
struct Contender {
    name: &'static str,
    opts: CopyOptions,
}

/// One measured run.
#[derive(Clone, Copy)]
struct Sample {
    gbit_per_s: f64,
    cpu_s_per_gb: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn contenders() -> Vec<Contender> {
    let spliced = |pipe_size| CopyOptions {
        splice: SpliceMode::Always,
        pipe_size,
        ..CopyOptions::default()
    };
    vec![
        Contender {
            name: "buffered 64 KiB",
            opts: CopyOptions {
                splice: SpliceMode::Off,
                ..CopyOptions::default()
            },
        },
        // The default: buffered until a read fills the buffer.
        Contender {
            name: "auto, 256 KiB pipe",
            opts: CopyOptions::default(),
        },
        // What every pipe gets once the user's pipe pages pass
        // `fs.pipe-user-pages-soft` (unprivileged processes only).
        Contender {
            name: "spliced 8 KiB pipe",
            opts: spliced(8 * 1024),
        },
        Contender {
            name: "spliced 64 KiB pipe",
            opts: spliced(64 * 1024),
        },
        Contender {
            name: "spliced 256 KiB pipe",
            opts: spliced(256 * 1024),
        },
        Contender {
            name: "spliced 1 MiB pipe",
            opts: spliced(1024 * 1024),
        },
    ]
}

fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let d =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    d(usage.user_time()) + d(usage.system_time())
}

/// Streams `bytes` through the proxy on each of `streams` connections at
/// once.
fn run(opts: &CopyOptions, streams: usize, bytes: u64) -> Sample {
    let sink = StdListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let front = StdListener::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap();
    front.set_nonblocking(true).unwrap();
    let block = vec![0x5au8; 1024 * 1024];
    let started = Instant::now();

    let (received, proxy_cpu) = thread::scope(|s| {
        let sinks = s.spawn(|| {
            let readers: Vec<_> = (0..streams)
                .map(|_| {
                    let (mut conn, _) = sink.accept().unwrap();
                    thread::spawn(move || {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut total = 0u64;
                        loop {
                            match conn.read(&mut buf).unwrap() {
                                0 => return total,
                                n => total += n as u64,
                            }
                        }
                    })
                })
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
        });
        let proxy = s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::from_std(front).unwrap();
                let cpu_before = cpu_time();
                let mut copies = Vec::new();
                for _ in 0..streams {
                    let (mut client, _) = listener.accept().await.unwrap();
                    let mut upstream = tokio::net::TcpStream::connect(sink_addr).await.unwrap();
                    for s in [&client, &upstream] {
                        s.set_nodelay(true).unwrap();
                    }
                    let opts = opts.clone();
                    copies.push(tokio::spawn(async move {
                        copy_bidirectional(
                            &mut client,
                            &mut upstream,
                            &opts,
                            std::future::pending(),
                            &NoopObserver,
                        )
                        .await
                    }));
                }
                for copy in copies {
                    let outcome = copy.await.unwrap();
                    assert_eq!(outcome.client_to_upstream, bytes, "{outcome:?}");
                    // A fallback would make the figures lie about the path.
                    let want = match opts.splice {
                        SpliceMode::Off => CopyPath::Buffered,
                        SpliceMode::Auto | SpliceMode::Always => CopyPath::Spliced,
                    };
                    assert_eq!(outcome.client_to_upstream_path, want, "{outcome:?}");
                }
                cpu_time() - cpu_before
            })
        });
        let sources: Vec<_> = (0..streams)
            .map(|_| {
                let block = &block;
                s.spawn(move || {
                    let mut conn = StdStream::connect(front_addr).unwrap();
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(block.len() as u64) as usize;
                        conn.write_all(&block[..n]).unwrap();
                        left -= n as u64;
                    }
                    conn.shutdown(Shutdown::Write).unwrap();
                    // End of stream here: the whole copy has finished.
                    let mut rest = Vec::new();
                    conn.read_to_end(&mut rest).unwrap();
                })
            })
            .collect();
        for source in sources {
            source.join().unwrap();
        }
        (sinks.join().unwrap(), proxy.join().unwrap())
    });
    let wall = started.elapsed();
    assert_eq!(received, bytes * streams as u64);
    let gb = received as f64 / 1e9;
    Sample {
        gbit_per_s: gb * 8.0 / wall.as_secs_f64(),
        cpu_s_per_gb: proxy_cpu.as_secs_f64() / gb,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, as a smoke test of every contender (a few MiB, one
    // round, figures meaningless in a debug build).
    let measuring = std::env::args().any(|a| a == "--bench");
    if !measuring {
        println!("copy: smoke run (no --bench): every contender once, 8 MiB per stream");
    }
    let mib: u64 = env_or("PORTICO_BENCH_COPY_MIB", if measuring { 1024 } else { 8 });
    let rounds: usize = env_or("PORTICO_BENCH_COPY_ROUNDS", if measuring { 5 } else { 1 });
    let stream_counts: Vec<usize> = std::env::var("PORTICO_BENCH_COPY_STREAMS")
        .unwrap_or_else(|_| if measuring { "1,8" } else { "1,2" }.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let contenders = contenders();
    for &streams in &stream_counts {
        // Per stream, so the total grows with the stream count.
        let bytes = mib * 1024 * 1024;
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
        for _ in 0..rounds {
            for (i, c) in contenders.iter().enumerate() {
                samples[i].push(run(&c.opts, streams, bytes));
            }
        }
        println!("\n{streams} stream(s) x {mib} MiB, medians of {rounds} interleaved rounds");
        println!(
            "{:<22} {:>10} {:>8} {:>14} {:>8}",
            "contender", "Gbit/s", "ratio", "CPU s per GB", "ratio"
        );
        let base_rate = median(samples[0].iter().map(|s| s.gbit_per_s).collect());
        let base_cpu = median(samples[0].iter().map(|s| s.cpu_s_per_gb).collect());
        for (c, runs) in contenders.iter().zip(&samples) {
            let rate = median(runs.iter().map(|s| s.gbit_per_s).collect());
            let cpu = median(runs.iter().map(|s| s.cpu_s_per_gb).collect());
            println!(
                "{:<22} {:>10.2} {:>8.2} {:>14.3} {:>8.2}",
                c.name,
                rate,
                rate / base_rate,
                cpu,
                cpu / base_cpu
            );
        }
    }
}
