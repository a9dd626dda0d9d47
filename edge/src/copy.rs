//! The data copy of one proxied TCP connection: moves bytes between the client
//! and the upstream (backend) socket in both directions until the connection
//! ends, and reports why it ended and how many bytes moved each way.
//!
//! # Why not `tokio::io::copy_bidirectional`
//!
//! Tokio's version has no idle timeout, no way to stop it from outside (the
//! drain signal used when a backend is removed or the edge shuts down), and
//! reports byte counts only at the very end, whereas the edge's metrics need
//! them per chunk so long-lived connections show up while they run. It also
//! folds "which side failed" into one `io::Error`.
//!
//! # Design
//!
//! Both directions run concurrently inside the caller's task (no extra task
//! per connection) on the split halves of the two sockets. Each direction
//! owns one buffer of [`CopyOptions::buffer_size`] bytes, allocated once per
//! connection; a read never allocates. A zero-copy `splice(2)` path through a
//! pipe could later replace the buffered path behind the same
//! [`copy_bidirectional`] signature without changing callers.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Default size of each direction's buffer: 64 KiB.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Default idle timeout: one hour, as in Envoy's TCP proxy. Long enough for
/// quiet but legitimate connections (database pools, websockets with sparse
/// pings), short enough that dead peers that never sent a FIN or RST are
/// eventually reclaimed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Idle timeouts are capped at this so that "last activity + timeout" can
/// never overflow `Instant`; no connection lives this long anyway.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Tuning for [`copy_bidirectional`], typically shared by all connections of
/// a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Size in bytes of each of the two per-connection buffers. A size of 0
    /// is treated as 1, because a read into an empty buffer would look like
    /// end of stream.
    pub buffer_size: usize,
    /// Stop the copy once no byte has been written in either direction for
    /// this long. `None` disables the timeout.
    pub idle_timeout: Option<Duration>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            buffer_size: DEFAULT_BUFFER_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// Receives byte counts while a connection's data is copied.
///
/// Each method is called once per successful write with the number of bytes
/// that write moved, from the copying task, so implementations should be
/// cheap (bump an atomic or a prometheus counter) and must not block. `Sync`
/// is required so that the copy future can run on a multi-threaded runtime.
pub trait CopyObserver: Send + Sync {
    /// `n` bytes from the client were written to the upstream.
    fn client_to_upstream(&self, n: usize);
    /// `n` bytes from the upstream were written to the client.
    fn upstream_to_client(&self, n: usize);
}

/// A [`CopyObserver`] that ignores every count, for callers that only need
/// the totals in [`CopyOutcome`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl CopyObserver for NoopObserver {
    fn client_to_upstream(&self, _n: usize) {}
    fn upstream_to_client(&self, _n: usize) {}
}

/// Why [`copy_bidirectional`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Both sides sent end of stream and both half-closes were passed on.
    Eof,
    /// No byte moved in either direction for [`CopyOptions::idle_timeout`].
    IdleTimeout,
    /// The drain signal fired.
    Drained,
    /// Reading from, writing to or shutting down the client socket failed
    /// (e.g. the client reset the connection).
    ClientError(io::ErrorKind),
    /// Reading from, writing to or shutting down the upstream socket failed.
    UpstreamError(io::ErrorKind),
}

impl EndReason {
    /// A short, stable `snake_case` name, suitable as a metrics label or log
    /// field (the error kind is deliberately left out to bound cardinality).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::IdleTimeout => "idle_timeout",
            Self::Drained => "drained",
            Self::ClientError(_) => "client_error",
            Self::UpstreamError(_) => "upstream_error",
        }
    }
}

/// The result of [`copy_bidirectional`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOutcome {
    /// Why the copy stopped.
    pub end: EndReason,
    /// Bytes written to the upstream, i.e. received from the client.
    pub client_to_upstream: u64,
    /// Bytes written to the client, i.e. received from the upstream.
    pub upstream_to_client: u64,
}

/// Resolves once `rx` holds `true`: adapts a `watch` flag to the `drain`
/// future of [`copy_bidirectional`].
///
/// If the sender is dropped without ever sending `true`, this never resolves:
/// dropping a handle (e.g. when a config generation is replaced) must not cut
/// live connections; only an explicit drain does.
pub async fn drain_signal(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|drain| *drain).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Copies data between `client` and `upstream` in both directions until both
/// have sent end of stream, one of them fails, no data moves for
/// [`CopyOptions::idle_timeout`], or `drain` resolves.
///
/// When one side sends end of stream, the other side's write half is shut
/// down and the opposite direction keeps flowing, so half-closed connections
/// (a client that shuts down its write side after the request, a server that
/// speaks first and closes) work. `observer` is told about every write.
///
/// Pass [`drain_signal`] (or any future, e.g. a `select` of a per-backend and
/// a global signal) as `drain`, or `std::future::pending()` for none.
///
/// The sockets are not closed here: on return the caller drops them, which
/// closes both (after an error or a drain, nothing more is to be sent).
pub async fn copy_bidirectional<D>(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    opts: &CopyOptions,
    drain: D,
    observer: &dyn CopyObserver,
) -> CopyOutcome
where
    D: Future<Output = ()>,
{
    let buffer_size = opts.buffer_size.max(1);
    let mut client_buf = vec![0u8; buffer_size];
    let mut upstream_buf = vec![0u8; buffer_size];
    let activity = Activity::new();
    let client_to_upstream_total = AtomicU64::new(0);
    let upstream_to_client_total = AtomicU64::new(0);

    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let client_to_upstream = pump(
        client_read,
        upstream_write,
        &mut client_buf,
        Direction {
            total: &client_to_upstream_total,
            observe: |o: &dyn CopyObserver, n| o.client_to_upstream(n),
            read_error: EndReason::ClientError,
            write_error: EndReason::UpstreamError,
        },
        &activity,
        observer,
    );
    let upstream_to_client = pump(
        upstream_read,
        client_write,
        &mut upstream_buf,
        Direction {
            total: &upstream_to_client_total,
            observe: |o: &dyn CopyObserver, n| o.upstream_to_client(n),
            read_error: EndReason::UpstreamError,
            write_error: EndReason::ClientError,
        },
        &activity,
        observer,
    );

    let idle_timeout = opts.idle_timeout.map(|t| t.min(MAX_IDLE_TIMEOUT));
    // One timer for the whole connection. Writes only record the time; the
    // timer is re-armed lazily when it fires, so the per-chunk cost is a
    // clock read and a store rather than a timer-wheel update.
    let idle = tokio::time::sleep_until(activity.start + idle_timeout.unwrap_or(MAX_IDLE_TIMEOUT));
    tokio::pin!(client_to_upstream, upstream_to_client, drain, idle);
    let (mut client_done, mut upstream_done) = (false, false);

    let end = loop {
        tokio::select! {
            // Drain first: once it fires, no more data should be moved even
            // if some is ready.
            biased;
            () = &mut drain => break EndReason::Drained,
            result = &mut client_to_upstream, if !client_done => match result {
                Ok(()) if upstream_done => break EndReason::Eof,
                Ok(()) => client_done = true,
                Err(end) => break end,
            },
            result = &mut upstream_to_client, if !upstream_done => match result {
                Ok(()) if client_done => break EndReason::Eof,
                Ok(()) => upstream_done = true,
                Err(end) => break end,
            },
            () = &mut idle, if idle_timeout.is_some() => {
                let timeout = idle_timeout.unwrap_or(MAX_IDLE_TIMEOUT);
                let deadline = activity.last() + timeout;
                if deadline <= Instant::now() {
                    break EndReason::IdleTimeout;
                }
                idle.as_mut().reset(deadline);
            }
        }
    };

    CopyOutcome {
        end,
        client_to_upstream: client_to_upstream_total.load(Ordering::Relaxed),
        upstream_to_client: upstream_to_client_total.load(Ordering::Relaxed),
    }
}

/// What distinguishes the two directions of a connection.
struct Direction<'a> {
    total: &'a AtomicU64,
    observe: fn(&dyn CopyObserver, usize),
    read_error: fn(io::ErrorKind) -> EndReason,
    write_error: fn(io::ErrorKind) -> EndReason,
}

/// When a byte last moved on a connection.
///
/// Atomics rather than `Cell`s, although only one task touches them, because
/// the two direction futures share them by reference and `&Cell` is not
/// `Send`, which would make the whole copy future `!Send`.
struct Activity {
    start: Instant,
    /// Nanoseconds since `start`; u64 nanoseconds last 584 years.
    last_nanos: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed))
    }
}

/// Copies one direction until end of stream (then half-closes `to`) or an
/// error, which is returned already attributed to the failing side.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    buf: &mut [u8],
    dir: Direction<'_>,
    activity: &Activity,
    observer: &dyn CopyObserver,
) -> Result<(), EndReason> {
    loop {
        let n = match from.read(buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((dir.read_error)(e.kind())),
        };
        if n == 0 {
            return to.shutdown().await.map_err(|e| (dir.write_error)(e.kind()));
        }
        // Written piecewise rather than with `write_all` so that every
        // partial write counts as activity and reaches the observer as it
        // happens: a slow reader draining a large chunk is not idle.
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let written = match to.write(pending).await {
                Ok(0) => return Err((dir.write_error)(io::ErrorKind::WriteZero)),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((dir.write_error)(e.kind())),
            };
            pending = &pending[written..];
            dir.total.fetch_add(written as u64, Ordering::Relaxed);
            activity.touch();
            (dir.observe)(observer, written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    /// Upper bound for anything that should happen promptly; generous so a
    /// loaded CI machine does not cause false failures.
    const DEADLINE: Duration = Duration::from_secs(30);

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        timeout(DEADLINE, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    #[derive(Default)]
    struct CountingObserver {
        client_to_upstream: AtomicU64,
        upstream_to_client: AtomicU64,
        calls: AtomicU64,
        largest_chunk: AtomicU64,
    }

    impl CountingObserver {
        fn record(&self, counter: &AtomicU64, n: usize) {
            assert!(n > 0, "observer told about an empty write");
            counter.fetch_add(n as u64, Ordering::Relaxed);
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.largest_chunk.fetch_max(n as u64, Ordering::Relaxed);
        }

        fn totals(&self) -> (u64, u64) {
            (
                self.client_to_upstream.load(Ordering::Relaxed),
                self.upstream_to_client.load(Ordering::Relaxed),
            )
        }
    }

    impl CopyObserver for CountingObserver {
        fn client_to_upstream(&self, n: usize) {
            self.record(&self.client_to_upstream, n);
        }
        fn upstream_to_client(&self, n: usize) {
            self.record(&self.upstream_to_client, n);
        }
    }

    /// A running copy between two test peers: `client` plays the downstream
    /// client, `upstream` the backend.
    struct Proxied {
        client: TcpStream,
        upstream: TcpStream,
        copy: JoinHandle<CopyOutcome>,
        observer: Arc<CountingObserver>,
    }

    impl Proxied {
        /// Starts the copy in its own task, which also proves the future is
        /// `Send`. The task drops the proxy's sockets when the copy returns.
        async fn start<D>(opts: CopyOptions, drain: D) -> Self
        where
            D: Future<Output = ()> + Send + 'static,
        {
            let (client, mut proxy_client) = connected_pair().await;
            let (mut proxy_upstream, upstream) = connected_pair().await;
            let observer = Arc::new(CountingObserver::default());
            let task_observer = Arc::clone(&observer);
            let copy = tokio::spawn(async move {
                copy_bidirectional(
                    &mut proxy_client,
                    &mut proxy_upstream,
                    &opts,
                    drain,
                    &*task_observer,
                )
                .await
            });
            Self {
                client,
                upstream,
                copy,
                observer,
            }
        }

        async fn outcome(self) -> (CopyOutcome, Arc<CountingObserver>, TcpStream, TcpStream) {
            let outcome = within("the copy to end", self.copy).await.unwrap();
            (outcome, self.observer, self.client, self.upstream)
        }
    }

    fn no_drain() -> std::future::Pending<()> {
        std::future::pending()
    }

    fn with_idle(idle: Duration) -> CopyOptions {
        CopyOptions {
            idle_timeout: Some(idle),
            ..CopyOptions::default()
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64*), so corruption,
    /// reordering or truncation anywhere in a stream is detected.
    fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
        if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
            panic!("{what}: first difference at byte {at}");
        }
        assert_eq!(got.len(), want.len(), "{what}: length");
    }

    /// Reads until end of stream; a closed socket must report EOF, not an
    /// error.
    async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        within("end of stream", stream.read_to_end(&mut out))
            .await
            .unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_payloads_flow_both_ways_at_once() {
        const LEN: usize = 8 * 1024 * 1024;
        let opts = CopyOptions::default();
        let proxied = Proxied::start(opts.clone(), no_drain()).await;
        let (client_read, client_write) = proxied.client.into_split();
        let (upstream_read, upstream_write) = proxied.upstream.into_split();

        async fn send(mut w: tokio::net::tcp::OwnedWriteHalf, data: Vec<u8>) {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        }
        async fn receive(mut r: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        }
        let to_upstream = pattern(LEN, 1);
        let to_client = pattern(LEN, 2);
        let ((), (), at_upstream, at_client) = within("16 MiB to cross the proxy", async {
            tokio::join!(
                send(client_write, to_upstream.clone()),
                send(upstream_write, to_client.clone()),
                receive(upstream_read),
                receive(client_read),
            )
        })
        .await;
        assert_same_bytes(&at_upstream, &to_upstream, "client -> upstream");
        assert_same_bytes(&at_client, &to_client, "upstream -> client");

        let outcome = within("the copy to end", proxied.copy).await.unwrap();
        assert_eq!(
            outcome,
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: LEN as u64,
                upstream_to_client: LEN as u64,
            }
        );
        let observer = &proxied.observer;
        assert_eq!(observer.totals(), (LEN as u64, LEN as u64));
        // Every write is reported and none exceeds one buffer.
        let min_calls = 2 * LEN.div_ceil(opts.buffer_size) as u64;
        assert!(observer.calls.load(Ordering::Relaxed) >= min_calls);
        assert!(observer.largest_chunk.load(Ordering::Relaxed) <= opts.buffer_size as u64);
    }

    #[tokio::test]
    async fn client_half_close_still_gets_full_response() {
        let mut proxied = Proxied::start(CopyOptions::default(), no_drain()).await;
        let request = b"GET /big HTTP/1.0\r\n\r\n";
        let response = pattern(1024 * 1024, 3);

        proxied.client.write_all(request).await.unwrap();
        proxied.client.shutdown().await.unwrap();
        // EOF here proves the client's FIN was passed on.
        let got = read_to_eof(&mut proxied.upstream).await;
        assert_eq!(got, request);

        let respond = async {
            proxied.upstream.write_all(&response).await.unwrap();
            proxied.upstream.shutdown().await.unwrap();
        };
        let (_, got) = within("the response", async {
            tokio::join!(respond, read_to_eof(&mut proxied.client))
        })
        .await;
        assert_same_bytes(&got, &response, "response after half-close");

        let (outcome, observer, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Eof);
        assert_eq!(outcome.client_to_upstream, request.len() as u64);
        assert_eq!(outcome.upstream_to_client, response.len() as u64);
        assert_eq!(
            observer.totals(),
            (outcome.client_to_upstream, outcome.upstream_to_client)
        );
    }

    #[tokio::test]
    async fn upstream_half_close_lets_client_keep_sending() {
        let mut proxied = Proxied::start(CopyOptions::default(), no_drain()).await;
        // A server that speaks first and then closes its side.
        proxied.upstream.write_all(b"220 hello\r\n").await.unwrap();
        proxied.upstream.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.client).await, b"220 hello\r\n");

        proxied.client.write_all(b"late data").await.unwrap();
        proxied.client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.upstream).await, b"late data");

        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(
            outcome,
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: 9,
                upstream_to_client: 11,
            }
        );
    }

    #[tokio::test]
    async fn idle_timeout_fires_when_silent_and_closes_both_sides() {
        let idle = Duration::from_millis(200);
        let started = Instant::now();
        let proxied = Proxied::start(with_idle(idle), no_drain()).await;
        let (outcome, _, mut client, mut upstream) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::IdleTimeout);
        assert!(
            started.elapsed() >= idle,
            "fired early: {:?}",
            started.elapsed()
        );
        assert_eq!(
            (outcome.client_to_upstream, outcome.upstream_to_client),
            (0, 0)
        );
        // The caller dropping the sockets is what closes them.
        assert!(read_to_eof(&mut client).await.is_empty());
        assert!(read_to_eof(&mut upstream).await.is_empty());
    }

    #[tokio::test]
    async fn idle_timer_restarts_from_the_last_byte() {
        let idle = Duration::from_millis(300);
        let start = Instant::now();
        let mut proxied = Proxied::start(with_idle(idle), no_drain()).await;
        // Traffic a third of the way into the first idle period must push the
        // deadline out to a full period after it. This sleep only creates the
        // quiet gap under test; it does not wait for anything to happen, and
        // the remaining two thirds leave room for a slow scheduler.
        tokio::time::sleep_until(start + idle / 3).await;
        let sent = Instant::now();
        proxied.client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        within("ping", proxied.upstream.read_exact(&mut buf))
            .await
            .unwrap();
        assert_eq!(&buf, b"ping");

        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::IdleTimeout);
        assert_eq!(outcome.client_to_upstream, 4);
        assert!(
            sent.elapsed() >= idle,
            "fired {:?} after traffic",
            sent.elapsed()
        );
    }

    #[tokio::test]
    async fn steady_traffic_in_either_direction_is_not_idle() {
        let idle = Duration::from_millis(200);
        let tick = Duration::from_millis(25);
        // 2 x 24 ticks: 1.2 s of traffic, six idle periods.
        let ticks_per_phase = 24;
        let mut proxied = Proxied::start(with_idle(idle), no_drain()).await;
        let mut interval = tokio::time::interval(tick);
        let mut buf = [0u8; 8];

        // Only client -> upstream moves, then only upstream -> client: each
        // direction alone must keep the connection alive.
        for i in 0..ticks_per_phase {
            interval.tick().await;
            proxied
                .client
                .write_all(&u64::to_le_bytes(i))
                .await
                .unwrap();
            within("a tick", proxied.upstream.read_exact(&mut buf))
                .await
                .unwrap();
            assert_eq!(u64::from_le_bytes(buf), i);
        }
        for i in 0..ticks_per_phase {
            interval.tick().await;
            proxied
                .upstream
                .write_all(&u64::to_le_bytes(i))
                .await
                .unwrap();
            within("a tick", proxied.client.read_exact(&mut buf))
                .await
                .unwrap();
            assert_eq!(u64::from_le_bytes(buf), i);
        }
        assert!(
            !proxied.copy.is_finished(),
            "copy ended during steady traffic"
        );

        proxied.client.shutdown().await.unwrap();
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, ..) = proxied.outcome().await;
        let bytes = 8 * ticks_per_phase;
        assert_eq!(
            outcome,
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: bytes,
                upstream_to_client: bytes,
            }
        );
    }

    #[tokio::test]
    async fn drain_signal_stops_a_live_copy() {
        let (tx, rx) = watch::channel(false);
        let mut proxied = Proxied::start(CopyOptions::default(), drain_signal(rx)).await;
        proxied.client.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        within(
            "data before the drain",
            proxied.upstream.read_exact(&mut buf),
        )
        .await
        .unwrap();

        tx.send(true).unwrap();
        let (outcome, _, mut client, mut upstream) = proxied.outcome().await;
        assert_eq!(
            outcome,
            CopyOutcome {
                end: EndReason::Drained,
                client_to_upstream: 6,
                upstream_to_client: 0,
            }
        );
        assert!(read_to_eof(&mut client).await.is_empty());
        assert!(read_to_eof(&mut upstream).await.is_empty());
    }

    #[tokio::test]
    async fn drain_already_signalled_stops_before_copying() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        // The flag stays set even though nobody can change it any more.
        drop(tx);
        let mut proxied = Proxied::start(CopyOptions::default(), drain_signal(rx)).await;
        proxied.client.write_all(b"too late").await.unwrap();
        let (outcome, _, _, mut upstream) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Drained);
        assert!(read_to_eof(&mut upstream).await.is_empty());
    }

    #[tokio::test]
    async fn dropping_the_drain_sender_does_not_drain() {
        let (tx, rx) = watch::channel(false);
        let mut proxied = Proxied::start(CopyOptions::default(), drain_signal(rx)).await;
        drop(tx);
        proxied.client.write_all(b"still here").await.unwrap();
        proxied.client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.upstream).await, b"still here");
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Eof);
    }

    #[tokio::test]
    async fn client_reset_is_a_client_error() {
        let mut proxied = Proxied::start(CopyOptions::default(), no_drain()).await;
        proxied.client.write_all(b"partial").await.unwrap();
        let mut buf = [0u8; 7];
        within(
            "data before the reset",
            proxied.upstream.read_exact(&mut buf),
        )
        .await
        .unwrap();
        proxied.client.set_zero_linger().unwrap();
        let Proxied {
            client,
            mut upstream,
            copy,
            observer,
        } = proxied;
        drop(client);

        let outcome = within("the copy to end", copy).await.unwrap();
        assert_eq!(
            outcome.end,
            EndReason::ClientError(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(outcome.client_to_upstream, 7);
        assert_eq!(observer.totals(), (7, 0));
        // The healthy side is closed cleanly, not reset.
        assert!(read_to_eof(&mut upstream).await.is_empty());
    }

    #[tokio::test]
    async fn upstream_reset_is_an_upstream_error() {
        let proxied = Proxied::start(CopyOptions::default(), no_drain()).await;
        proxied.upstream.set_zero_linger().unwrap();
        let Proxied {
            mut client,
            upstream,
            copy,
            ..
        } = proxied;
        drop(upstream);

        let outcome = within("the copy to end", copy).await.unwrap();
        assert_eq!(
            outcome.end,
            EndReason::UpstreamError(io::ErrorKind::ConnectionReset)
        );
        assert!(read_to_eof(&mut client).await.is_empty());
    }

    #[tokio::test]
    async fn write_to_a_reset_client_is_a_client_error() {
        // The client half-closes, then resets while the response is still
        // flowing: the proxy no longer reads from the client, so it is the
        // write towards it that has to notice.
        let mut proxied = Proxied::start(CopyOptions::default(), no_drain()).await;
        proxied.client.write_all(b"request").await.unwrap();
        proxied.client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.upstream).await, b"request");
        proxied.client.set_zero_linger().unwrap();
        let Proxied {
            client,
            mut upstream,
            copy,
            ..
        } = proxied;
        drop(client);

        let chunk = [7u8; 64 * 1024];
        let respond = async {
            // Ends once the proxy, having failed, drops its upstream socket.
            while upstream.write_all(&chunk).await.is_ok() {}
        };
        within("the response writes to fail", respond).await;
        let outcome = within("the copy to end", copy).await.unwrap();
        assert!(
            matches!(
                outcome.end,
                EndReason::ClientError(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
            ),
            "{outcome:?}"
        );
        assert_eq!(outcome.client_to_upstream, 7);
    }

    #[tokio::test]
    async fn zero_buffer_size_still_copies() {
        let mut proxied = Proxied::start(
            CopyOptions {
                buffer_size: 0,
                ..CopyOptions::default()
            },
            no_drain(),
        )
        .await;
        proxied.client.write_all(b"abc").await.unwrap();
        proxied.client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.upstream).await, b"abc");
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, observer, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Eof);
        assert_eq!(outcome.client_to_upstream, 3);
        assert_eq!(observer.largest_chunk.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn end_reason_labels_are_distinct() {
        let labels = [
            EndReason::Eof,
            EndReason::IdleTimeout,
            EndReason::Drained,
            EndReason::ClientError(io::ErrorKind::ConnectionReset),
            EndReason::UpstreamError(io::ErrorKind::ConnectionReset),
        ]
        .map(|end| end.as_str());
        let unique: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }
}
