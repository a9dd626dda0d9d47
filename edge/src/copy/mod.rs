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
//! per connection) on the split halves of the two sockets, each on one of two
//! paths ([`CopyPath`]), chosen by [`CopyOptions::splice`]:
//!
//! - **Buffered**: `read` into a buffer of [`CopyOptions::buffer_size`]
//!   bytes, then `write` it all out. A direction takes a buffer from a
//!   per-thread pool when its source becomes readable and gives it back
//!   once the source is drained, so an idle connection holds no buffer and a
//!   new one allocates (and zeroes) nothing. A read that comes back short
//!   shows the socket drained, so its readiness is cleared right there, as
//!   tokio's own `read` does, instead of costing a `read` that would block.
//! - **Spliced**: `splice(2)` moves the bytes socket -> pipe -> socket inside
//!   the kernel, as page references, never copying them through user
//!   space. A direction fills its pipe only when the pipe is empty and then
//!   drains it completely before reading again, so the pipe's fill level is
//!   always known: a fill that would block means the source has nothing
//!   (never "the pipe is full", which with pipes counted in page slots
//!   rather than bytes could not be told apart), a drain that would block
//!   means the destination is full, and end of stream is seen only once
//!   every earlier byte has left, so the half-close is passed on behind the
//!   data. Readiness comes from tokio's reactor for the sockets; the pipe
//!   ends are non-blocking and, by the rule above, never need to wait.
//!
//! With [`SpliceMode::Auto`] (the default) a direction starts buffered and
//! moves to splicing for good after a read fills the whole buffer, once the
//! buffer's bytes are out: request/response traffic keeps the buffered
//! path's per-request cost and latency, bulk transfers get the spliced
//! path's CPU per byte (HAProxy's `splice-auto` follows the same rule).
//! [`SpliceMode::Always`] splices from the first byte; [`SpliceMode::Off`]
//! never does. A spliced direction falls back to buffers when the kernel
//! refuses the first splice (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`: a kernel or
//! sandbox without it) or no pipe can be had (out of file descriptors); a
//! switch either way happens only while that direction holds no bytes, so
//! no byte is lost or reordered by it.
//!
//! Pipes are not held for a connection's lifetime: a direction takes an
//! empty pipe from a process-wide pool when its source becomes readable and
//! gives it back, empty, once the source has nothing more to read. Only
//! connections with data in flight hold pipes, which bounds the extra file
//! descriptors (two per pipe) and the pipe pages the kernel accounts to the
//! user (`fs.pipe-user-pages-soft`, 64 MiB by default: past it, a process
//! without `CAP_SYS_RESOURCE` gets two-page pipes, which splice slower than
//! a buffer copies, so the direction goes buffered instead). A pipe that may
//! still hold bytes (the copy stopped on an error, a timeout or a drain) is
//! closed, never pooled.
//!
//! Both paths behave the same to the outside: same half-close, error
//! attribution, idle timeout, drain and per-write byte counts; the tests run
//! every behaviour on both.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
pub use portico_config::SpliceMode;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Default size of each direction's buffer: 64 KiB.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Default size of each direction's pipe: 256 KiB. On loopback
/// (`benches/copy.rs`) the proxy's CPU per GB fell from ~0.78x of the
/// buffered path with 64 KiB pipes to ~0.7x with 256 KiB and ~0.5x with
/// 1 MiB; 256 KiB keeps most of that while an unprivileged process can
/// still have 256 such pipes before `fs.pipe-user-pages-soft` (64 MiB by
/// default) is reached, past which new pipes get two pages and the copy
/// goes buffered (see [`Pipe::take`]).
pub const DEFAULT_PIPE_SIZE: usize = 256 * 1024;

/// The size of a new pipe before any `F_SETPIPE_SZ`, unless the user is past
/// `fs.pipe-user-pages-soft`.
const KERNEL_PIPE_SIZE: usize = 64 * 1024;

/// Default idle timeout: one hour, as in Envoy's TCP proxy. Long enough for
/// quiet but legitimate connections (database pools, websockets with sparse
/// pings), short enough that dead peers that never sent a FIN or RST are
/// eventually reclaimed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Idle timeouts are capped at this so that "last activity + timeout" can
/// never overflow `Instant`; no connection lives this long anyway.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// At most this many bytes of empty pipes wait in the pool (64 pipes of the
/// default size, a quarter of the default pipe page allowance); more are
/// closed when given back. Enough for the bursts of dozens of busy
/// connections at once without a `pipe2` each time.
const MAX_IDLE_PIPE_BYTES: usize = 16 * 1024 * 1024;

/// At most this many idle buffers wait in each thread's pool (4 MiB of the
/// default size); more are freed when given back.
const MAX_IDLE_BUFFERS: usize = 64;

/// Tuning for [`copy_bidirectional`], typically shared by all connections of
/// a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Size in bytes of each of the two per-connection buffers of the
    /// buffered path. A size of 0 is treated as 1, because a read into an
    /// empty buffer would look like end of stream.
    pub buffer_size: usize,
    /// Stop the copy once no byte has been written in either direction for
    /// this long. `None` disables the timeout.
    pub idle_timeout: Option<Duration>,
    /// When to move bytes with `splice(2)` through a pipe per direction
    /// (falling back to the buffered path where the kernel refuses); see
    /// the module docs.
    pub splice: SpliceMode,
    /// Size in bytes asked of each pipe (`F_SETPIPE_SZ`); the kernel rounds
    /// it up to a power of two pages. If it is refused (above
    /// `fs.pipe-max-size`, or past the user's pipe page allowance), the pipe
    /// keeps the size the kernel gave it.
    pub pipe_size: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            buffer_size: DEFAULT_BUFFER_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            splice: SpliceMode::Auto,
            pipe_size: DEFAULT_PIPE_SIZE,
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

/// How one direction of a connection moved its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPath {
    /// Through a user-space buffer with `read` and `write`.
    Buffered,
    /// Socket -> pipe -> socket with `splice(2)`, inside the kernel.
    Spliced,
}

impl CopyPath {
    /// A short, stable `snake_case` name for logs and labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Buffered => "buffered",
            Self::Spliced => "spliced",
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
    /// The path client -> upstream was on when the copy stopped
    /// ([`CopyPath::Spliced`] if it moved to splicing, [`CopyPath::Buffered`]
    /// if it fell back from it).
    pub client_to_upstream_path: CopyPath,
    /// The path upstream -> client was on when the copy stopped.
    pub upstream_to_client_path: CopyPath,
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
/// down (after every byte before it has been written) and the opposite
/// direction keeps flowing, so half-closed connections (a client that shuts
/// down its write side after the request, a server that speaks first and
/// closes) work. `observer` is told about every write.
///
/// Pass [`drain_signal`] (or any future, e.g. a `select` of a per-backend and
/// a global signal) as `drain`, or `std::future::pending()` for none.
///
/// The sockets are not closed here: on return the caller drops them, which
/// closes both (after an error or a drain, nothing more is to be sent).
/// Anything already written to `upstream` (a PROXY protocol header) goes
/// before the first copied byte, on either path.
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
    let activity = Activity::new();
    let client_to_upstream_total = AtomicU64::new(0);
    let upstream_to_client_total = AtomicU64::new(0);
    let starts_buffered = opts.splice != SpliceMode::Always;
    let client_to_upstream_buffered = AtomicBool::new(starts_buffered);
    let upstream_to_client_buffered = AtomicBool::new(starts_buffered);

    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let client_to_upstream = pump(
        client_read,
        upstream_write,
        opts,
        Direction {
            total: &client_to_upstream_total,
            buffered: &client_to_upstream_buffered,
            observe: |o: &dyn CopyObserver, n| o.client_to_upstream(n),
            read_error: EndReason::ClientError,
            write_error: EndReason::UpstreamError,
            name: "client_to_upstream",
        },
        &activity,
        observer,
    );
    let upstream_to_client = pump(
        upstream_read,
        client_write,
        opts,
        Direction {
            total: &upstream_to_client_total,
            buffered: &upstream_to_client_buffered,
            observe: |o: &dyn CopyObserver, n| o.upstream_to_client(n),
            read_error: EndReason::UpstreamError,
            write_error: EndReason::ClientError,
            name: "upstream_to_client",
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

    let path = |buffered: &AtomicBool| {
        if buffered.load(Ordering::Relaxed) {
            CopyPath::Buffered
        } else {
            CopyPath::Spliced
        }
    };
    CopyOutcome {
        end,
        client_to_upstream: client_to_upstream_total.load(Ordering::Relaxed),
        upstream_to_client: upstream_to_client_total.load(Ordering::Relaxed),
        client_to_upstream_path: path(&client_to_upstream_buffered),
        upstream_to_client_path: path(&upstream_to_client_buffered),
    }
}

/// What distinguishes the two directions of a connection.
struct Direction<'a> {
    total: &'a AtomicU64,
    /// Set when this direction is (or has fallen back to) the buffered path.
    buffered: &'a AtomicBool,
    observe: fn(&dyn CopyObserver, usize),
    read_error: fn(io::ErrorKind) -> EndReason,
    write_error: fn(io::ErrorKind) -> EndReason,
    /// For logs.
    name: &'static str,
}

impl Direction<'_> {
    /// Accounts for `n` bytes just written to the destination.
    fn wrote(&self, n: usize, activity: &Activity, observer: &dyn CopyObserver) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
        (self.observe)(observer, n);
    }
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

/// Copies one direction on the path `opts` asks for until end of stream
/// (then half-closes `to`) or an error, which is returned already attributed
/// to the failing side.
async fn pump(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    opts: &CopyOptions,
    dir: Direction<'_>,
    activity: &Activity,
    observer: &dyn CopyObserver,
) -> Result<(), EndReason> {
    let mut path = match opts.splice {
        SpliceMode::Always => CopyPath::Spliced,
        SpliceMode::Auto | SpliceMode::Off => CopyPath::Buffered,
    };
    let mut may_splice = opts.splice == SpliceMode::Auto;
    loop {
        let next = match path {
            CopyPath::Buffered => {
                buffered_pump(&from, &mut to, opts, may_splice, &dir, activity, observer).await?
            }
            CopyPath::Spliced => {
                splice_pump(&from, &mut to, opts, &dir, activity, observer).await?
            }
        };
        match next {
            Pumped::Eof => return Ok(()),
            Pumped::Switch(to_path) => {
                // Each switch happens while the direction holds no byte, and
                // at most once each way.
                dir.buffered
                    .store(to_path == CopyPath::Buffered, Ordering::Relaxed);
                path = to_path;
                may_splice = false;
            }
        }
    }
}

/// How a path of [`pump`] ended without an error.
enum Pumped {
    /// End of stream, passed on as a half-close.
    Eof,
    /// Holding no bytes, the direction goes on on this path.
    Switch(CopyPath),
}

mod buffered;
mod spliced;

use buffered::buffered_pump;
#[cfg(test)]
use buffered::buffers;
use spliced::splice_pump;
#[cfg(test)]
use spliced::splice_unsupported;

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
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
        /// `Send`. The task drops the proxy's sockets when the copy returns,
        /// after checking that both directions stayed on the path `opts`
        /// asked for (so a silent fallback cannot pass for a splice test).
        async fn start<D>(opts: CopyOptions, drain: D) -> Self
        where
            D: Future<Output = ()> + Send + 'static,
        {
            let (client, proxy_client) = connected_pair().await;
            let (proxy_upstream, upstream) = connected_pair().await;
            Self::start_on(opts, drain, client, proxy_client, proxy_upstream, upstream)
        }

        /// Like [`Proxied::start`], but the way from the proxy to the
        /// upstream holds as little as the kernel allows (minimal receive
        /// buffer at the upstream, minimal send buffer at the proxy), so
        /// that bytes the upstream does not read pile up inside the proxy,
        /// in its pipe when splicing, rather than in socket buffers.
        async fn start_with_small_upstream_buffers<D>(opts: CopyOptions, drain: D) -> Self
        where
            D: Future<Output = ()> + Send + 'static,
        {
            let (client, proxy_client) = connected_pair().await;
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            // Set before the handshake so the small window is advertised
            // from the start; accepted sockets inherit it.
            SockRef::from(&listener).set_recv_buffer_size(1).unwrap();
            let addr = listener.local_addr().unwrap();
            let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let proxy_upstream = connected.unwrap();
            SockRef::from(&proxy_upstream)
                .set_send_buffer_size(1)
                .unwrap();
            let upstream = accepted.unwrap().0;
            Self::start_on(opts, drain, client, proxy_client, proxy_upstream, upstream)
        }

        fn start_on<D>(
            opts: CopyOptions,
            drain: D,
            client: TcpStream,
            mut proxy_client: TcpStream,
            mut proxy_upstream: TcpStream,
            upstream: TcpStream,
        ) -> Self
        where
            D: Future<Output = ()> + Send + 'static,
        {
            let observer = Arc::new(CountingObserver::default());
            let task_observer = Arc::clone(&observer);
            let copy = tokio::spawn(async move {
                let outcome = copy_bidirectional(
                    &mut proxy_client,
                    &mut proxy_upstream,
                    &opts,
                    drain,
                    &*task_observer,
                )
                .await;
                let (got, want) = (settled(outcome, opts.splice), paths(opts.splice));
                assert_eq!(
                    (got.client_to_upstream_path, got.upstream_to_client_path),
                    (want.client_to_upstream_path, want.upstream_to_client_path),
                    "a direction left the path asked for"
                );
                outcome
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

    /// Default options with splicing `mode`.
    fn on(mode: SpliceMode) -> CopyOptions {
        CopyOptions {
            splice: mode,
            ..CopyOptions::default()
        }
    }

    fn with_idle(mode: SpliceMode, idle: Duration) -> CopyOptions {
        CopyOptions {
            idle_timeout: Some(idle),
            ..on(mode)
        }
    }

    /// The path both directions start on with `mode`.
    fn start_path(mode: SpliceMode) -> CopyPath {
        match mode {
            SpliceMode::Always => CopyPath::Spliced,
            SpliceMode::Off | SpliceMode::Auto => CopyPath::Buffered,
        }
    }

    /// An outcome with both directions on the path `mode` starts on, for
    /// `..paths(mode)`.
    fn paths(mode: SpliceMode) -> CopyOutcome {
        CopyOutcome {
            end: EndReason::Eof,
            client_to_upstream: 0,
            upstream_to_client: 0,
            client_to_upstream_path: start_path(mode),
            upstream_to_client_path: start_path(mode),
        }
    }

    /// `outcome` as the shared tests compare it: with [`SpliceMode::Auto`],
    /// whether a direction moved to splicing depends on how the kernel
    /// split the bytes into reads, so its paths are taken as they started
    /// (the `auto_*` tests check the switch itself).
    fn settled(outcome: CopyOutcome, mode: SpliceMode) -> CopyOutcome {
        match mode {
            SpliceMode::Auto => CopyOutcome {
                client_to_upstream_path: CopyPath::Buffered,
                upstream_to_client_path: CopyPath::Buffered,
                ..outcome
            },
            SpliceMode::Off | SpliceMode::Always => outcome,
        }
    }

    /// The most one write can move with `opts`: a buffer, or a pipe (whose
    /// size the kernel rounds up to a power of two pages).
    fn chunk_bound(opts: &CopyOptions) -> usize {
        let pipe = opts.pipe_size.max(page_size()).next_power_of_two();
        match opts.splice {
            SpliceMode::Off => opts.buffer_size.max(1),
            SpliceMode::Always => pipe,
            SpliceMode::Auto => pipe.max(opts.buffer_size.max(1)),
        }
    }

    fn page_size() -> usize {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .unwrap()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap()
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

    /// Writes `data` and then the FIN on `from` while `to` reads to end of
    /// stream; what `to` read.
    async fn stream_through(
        what: &str,
        from: &mut TcpStream,
        to: &mut TcpStream,
        data: &[u8],
    ) -> Vec<u8> {
        let send = async {
            from.write_all(data).await.unwrap();
            from.shutdown().await.unwrap();
        };
        let ((), got) = within(what, async { tokio::join!(send, read_to_eof(to)) }).await;
        got
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

    /// Runs each named test body once per splicing mode, as `off::<name>`,
    /// `auto::<name>` and `always::<name>`, with the given `#[tokio::test]`
    /// arguments.
    macro_rules! in_every_mode {
        ($($name:ident $(($($flavor:tt)*))?),* $(,)?) => {
            in_every_mode!(@mode off Off; $($name $(($($flavor)*))?),*);
            in_every_mode!(@mode auto Auto; $($name $(($($flavor)*))?),*);
            in_every_mode!(@mode always Always; $($name $(($($flavor)*))?),*);
        };
        (@mode $module:ident $mode:ident; $($name:ident $(($($flavor:tt)*))?),*) => {
            mod $module {
                $(
                    #[tokio::test$(($($flavor)*))?]
                    async fn $name() {
                        super::$name(super::SpliceMode::$mode).await
                    }
                )*
            }
        };
    }

    in_every_mode!(
        large_payloads_flow_both_ways_at_once(flavor = "multi_thread", worker_threads = 2),
        client_half_close_still_gets_full_response,
        upstream_half_close_lets_client_keep_sending,
        idle_timeout_fires_when_silent_and_closes_both_sides,
        idle_timer_restarts_from_the_last_byte,
        steady_traffic_in_either_direction_is_not_idle,
        drain_signal_stops_a_live_copy,
        drain_already_signalled_stops_before_copying,
        dropping_the_drain_sender_does_not_drain,
        client_reset_is_a_client_error,
        upstream_reset_is_an_upstream_error,
        write_to_a_reset_client_is_a_client_error,
        bytes_written_before_the_copy_go_first,
        many_small_writes_and_round_trips_arrive_intact,
        half_close_waits_for_bytes_held_in_the_proxy,
        idle_timeout_with_bytes_held_in_the_proxy_drops_them,
        drain_with_bytes_held_in_the_proxy_drops_them,
        upstream_reset_mid_transfer_is_an_upstream_error,
    );

    /// A PROXY protocol header is written to the upstream before the copy
    /// starts; it must reach the upstream ahead of every copied byte.
    async fn bytes_written_before_the_copy_go_first(path: SpliceMode) {
        let (mut client, mut proxy_client) = connected_pair().await;
        let (mut proxy_upstream, mut upstream) = connected_pair().await;
        let header = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 80\r\n";
        proxy_upstream.write_all(header).await.unwrap();
        let opts = on(path);
        let copy = tokio::spawn(async move {
            copy_bidirectional(
                &mut proxy_client,
                &mut proxy_upstream,
                &opts,
                no_drain(),
                &NoopObserver,
            )
            .await
        });
        let body = pattern(256 * 1024, 9);
        let got = stream_through("header and body", &mut client, &mut upstream, &body).await;
        let mut want = header.to_vec();
        want.extend_from_slice(&body);
        assert_same_bytes(&got, &want, "header then body");
        upstream.shutdown().await.unwrap();
        let outcome = within("the copy to end", copy).await.unwrap();
        assert_eq!(
            settled(outcome, path),
            CopyOutcome {
                end: EndReason::Eof,
                // The header was not copied, so it is not counted.
                client_to_upstream: body.len() as u64,
                upstream_to_client: 0,
                ..paths(path)
            }
        );
    }

    /// Thousands of tiny writes (each its own segment, with Nagle off) and
    /// request/response round trips: on the spliced path each small segment
    /// takes a pipe slot, and each round trip takes a pipe from the pool and
    /// gives it back.
    async fn many_small_writes_and_round_trips_arrive_intact(path: SpliceMode) {
        let mut proxied = Proxied::start(on(path), no_drain()).await;
        proxied.client.set_nodelay(true).unwrap();
        proxied.upstream.set_nodelay(true).unwrap();
        let data = pattern(200_000, 5);
        let chunks: Vec<&[u8]> = {
            let mut rest = &data[..];
            let mut out = Vec::new();
            let mut size = 1;
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                out.push(chunk);
                rest = tail;
                size = size % 97 + 1;
            }
            out
        };
        let send = async {
            for chunk in &chunks {
                proxied.client.write_all(chunk).await.unwrap();
            }
        };
        let mut got = vec![0u8; data.len()];
        within("the small writes", async {
            tokio::join!(send, proxied.upstream.read_exact(&mut got))
        })
        .await
        .1
        .unwrap();
        assert_same_bytes(&got, &data, "small writes");

        const ROUNDS: u64 = 500;
        for i in 0..ROUNDS {
            round_trip(&mut proxied, i, 5000).await;
        }
        proxied.client.shutdown().await.unwrap();
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, observer, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Eof);
        assert_eq!(
            observer.totals(),
            (outcome.client_to_upstream, outcome.upstream_to_client)
        );
        let requests: u64 = (0..ROUNDS).map(|i| 1 + (i * 37) % 3000).sum();
        assert_eq!(outcome.client_to_upstream, data.len() as u64 + requests);
    }

    /// Round trip `i`: a request of up to 3,000 bytes to the upstream, then
    /// a response of up to `max_response` bytes back, both checked byte for
    /// byte; returns their lengths.
    async fn round_trip(proxied: &mut Proxied, i: u64, max_response: usize) -> (u64, u64) {
        let request = pattern(1 + (i as usize * 37) % 3000, i + 1);
        proxied.client.write_all(&request).await.unwrap();
        let mut at_upstream = vec![0u8; request.len()];
        within("a request", proxied.upstream.read_exact(&mut at_upstream))
            .await
            .unwrap();
        assert_same_bytes(&at_upstream, &request, "request");
        let response = pattern(1 + (i as usize * 53) % max_response, i + 1000);
        proxied.upstream.write_all(&response).await.unwrap();
        let mut at_client = vec![0u8; response.len()];
        within("a response", proxied.client.read_exact(&mut at_client))
            .await
            .unwrap();
        assert_same_bytes(&at_client, &response, "response");
        (request.len() as u64, response.len() as u64)
    }

    /// Bytes the client sends while the upstream reads nothing, small
    /// enough for the client's and the proxy's socket buffers to take them
    /// all, so the client's write and FIN complete without the upstream.
    const HELD: usize = 48 * 1024;

    /// The client sends and half-closes while the upstream reads nothing:
    /// the proxy holds bytes (in its pipe, when splicing) when the FIN
    /// arrives, and must pass the FIN on only after all of them.
    async fn half_close_waits_for_bytes_held_in_the_proxy(path: SpliceMode) {
        let mut proxied = Proxied::start_with_small_upstream_buffers(on(path), no_drain()).await;
        let data = pattern(HELD, 11);
        within("the client's data and FIN", async {
            proxied.client.write_all(&data).await.unwrap();
            proxied.client.shutdown().await.unwrap();
        })
        .await;
        let got = read_to_eof(&mut proxied.upstream).await;
        assert_same_bytes(&got, &data, "bytes before the FIN");

        proxied.upstream.shutdown().await.unwrap();
        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(
            settled(outcome, path),
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: HELD as u64,
                upstream_to_client: 0,
                ..paths(path)
            }
        );
    }

    /// Sends [`HELD`] bytes towards an upstream that reads nothing and
    /// returns once the proxy has passed some on, i.e. holds the rest.
    async fn hold_bytes_in_the_proxy(proxied: &mut Proxied) -> Vec<u8> {
        let data = pattern(HELD, 13);
        within("the client's data", proxied.client.write_all(&data))
            .await
            .unwrap();
        let observer = Arc::clone(&proxied.observer);
        within("the first bytes to reach the upstream", async {
            let mut poll = tokio::time::interval(Duration::from_millis(1));
            while observer.totals().0 == 0 {
                poll.tick().await;
            }
        })
        .await;
        data
    }

    /// Reads what the proxy passed on before it stopped: a prefix of `sent`
    /// of exactly `counted` bytes, then end of stream (the proxy closed its
    /// upstream socket, dropping what it still held rather than flushing it
    /// later or into another connection).
    async fn assert_upstream_got_only(upstream: &mut TcpStream, sent: &[u8], counted: u64) {
        let got = read_to_eof(upstream).await;
        assert_eq!(got.len() as u64, counted, "bytes counted vs received");
        assert!(counted < sent.len() as u64, "the proxy held nothing back");
        assert_same_bytes(&got, &sent[..got.len()], "prefix");
    }

    async fn idle_timeout_with_bytes_held_in_the_proxy_drops_them(path: SpliceMode) {
        let idle = Duration::from_millis(300);
        let mut proxied =
            Proxied::start_with_small_upstream_buffers(with_idle(path, idle), no_drain()).await;
        let sent = hold_bytes_in_the_proxy(&mut proxied).await;
        let (outcome, _, _, mut upstream) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::IdleTimeout);
        assert_upstream_got_only(&mut upstream, &sent, outcome.client_to_upstream).await;
    }

    async fn drain_with_bytes_held_in_the_proxy_drops_them(path: SpliceMode) {
        let (tx, rx) = watch::channel(false);
        let mut proxied =
            Proxied::start_with_small_upstream_buffers(on(path), drain_signal(rx)).await;
        let sent = hold_bytes_in_the_proxy(&mut proxied).await;
        tx.send(true).unwrap();
        let (outcome, _, _, mut upstream) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Drained);
        assert_upstream_got_only(&mut upstream, &sent, outcome.client_to_upstream).await;
    }

    /// The upstream resets while a large transfer towards it is under way
    /// and the proxy holds bytes for it.
    async fn upstream_reset_mid_transfer_is_an_upstream_error(path: SpliceMode) {
        let mut proxied = Proxied::start_with_small_upstream_buffers(on(path), no_drain()).await;
        hold_bytes_in_the_proxy(&mut proxied).await;
        let Proxied {
            client,
            upstream,
            copy,
            observer,
        } = proxied;
        upstream.set_zero_linger().unwrap();
        drop(upstream);
        // The client keeps sending until the proxy, having failed, closes.
        let (_, mut client_write) = client.into_split();
        let chunk = [1u8; 16 * 1024];
        within("the client's writes to fail", async {
            while client_write.write_all(&chunk).await.is_ok() {}
        })
        .await;
        let outcome = within("the copy to end", copy).await.unwrap();
        assert!(
            matches!(
                outcome.end,
                EndReason::UpstreamError(
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                )
            ),
            "{outcome:?}"
        );
        assert_eq!(observer.totals().0, outcome.client_to_upstream);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spliced_large_transfers_keep_every_byte_in_order() {
        // Two pipe sizes: the default, and one the kernel grows a pipe to.
        for pipe_size in [DEFAULT_PIPE_SIZE, 1024 * 1024] {
            let opts = CopyOptions {
                pipe_size,
                ..on(SpliceMode::Always)
            };
            let proxied = Proxied::start(opts, no_drain()).await;
            const LEN: usize = 64 * 1024 * 1024;
            let (client_read, client_write) = proxied.client.into_split();
            let (upstream_read, upstream_write) = proxied.upstream.into_split();
            let ((want_up, want_down), (got_up, got_down)) = within("128 MiB to cross", async {
                let send_up = tokio::spawn(send_hashed(client_write, LEN, 21));
                let send_down = tokio::spawn(send_hashed(upstream_write, LEN, 22));
                let recv_up = tokio::spawn(receive_hashed(upstream_read));
                let recv_down = tokio::spawn(receive_hashed(client_read));
                (
                    (send_up.await.unwrap(), send_down.await.unwrap()),
                    (recv_up.await.unwrap(), recv_down.await.unwrap()),
                )
            })
            .await;
            assert_eq!(got_up, (LEN as u64, want_up), "client -> upstream");
            assert_eq!(got_down, (LEN as u64, want_down), "upstream -> client");
            let (outcome, observer, ..) = proxied_outcome(proxied.copy, proxied.observer).await;
            assert_eq!(outcome.end, EndReason::Eof);
            assert_eq!(observer.totals(), (LEN as u64, LEN as u64));
            assert!(observer.largest_chunk.load(Ordering::Relaxed) <= pipe_size as u64);
        }
    }

    async fn proxied_outcome(
        copy: JoinHandle<CopyOutcome>,
        observer: Arc<CountingObserver>,
    ) -> (CopyOutcome, Arc<CountingObserver>) {
        (within("the copy to end", copy).await.unwrap(), observer)
    }

    /// Writes `len` pseudo-random bytes in uneven pieces, half-closes, and
    /// returns their checksum.
    async fn send_hashed(mut w: tokio::net::tcp::OwnedWriteHalf, len: usize, seed: u64) -> u64 {
        let block = pattern(1024 * 1024 + 4093, seed);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut left = len;
        let mut piece = 1;
        while left > 0 {
            piece = (piece * 7 + 4099) % block.len() + 1;
            let n = piece.min(left);
            w.write_all(&block[..n]).await.unwrap();
            hasher.update(&block[..n]);
            left -= n;
        }
        w.shutdown().await.unwrap();
        hasher.digest()
    }

    /// Reads to end of stream: (length, checksum).
    async fn receive_hashed(mut r: tokio::net::tcp::OwnedReadHalf) -> (u64, u64) {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return (len, hasher.digest());
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
    }

    #[tokio::test]
    async fn a_pipe_of_one_page_still_copies() {
        let opts = CopyOptions {
            pipe_size: 0,
            ..on(SpliceMode::Always)
        };
        let mut proxied = Proxied::start(opts, no_drain()).await;
        let data = pattern(100_000, 17);
        let got = stream_through(
            "the data",
            &mut proxied.client,
            &mut proxied.upstream,
            &data,
        )
        .await;
        assert_same_bytes(&got, &data, "through a one-page pipe");
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, observer, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Eof);
        assert!(observer.largest_chunk.load(Ordering::Relaxed) <= page_size() as u64);
    }

    #[test]
    fn refusals_that_mean_no_splice_here_are_told_from_failures() {
        for errno in [Errno::EINVAL, Errno::ENOSYS, Errno::EOPNOTSUPP] {
            assert!(splice_unsupported(&io::Error::from(errno)), "{errno}");
        }
        for errno in [
            Errno::ECONNRESET,
            Errno::EPIPE,
            Errno::EAGAIN,
            Errno::ENOMEM,
        ] {
            assert!(!splice_unsupported(&io::Error::from(errno)), "{errno}");
        }
        assert!(!splice_unsupported(&io::Error::other("not an errno")));
    }

    /// Set in the child run of [`without_pipes_both_directions_copy_buffered`].
    const NO_PIPES_CHILD_ENV: &str = "PORTICO_COPY_TEST_NO_PIPES_CHILD";

    /// When no pipe can be had (the descriptor table is full), each
    /// direction carries on buffered and nothing is lost. The table limit is
    /// per process, so the copy runs in this test binary started again as a
    /// child with RLIMIT_NOFILE lowered to the descriptors already open.
    #[test]
    fn without_pipes_both_directions_copy_buffered() {
        let name = "without_pipes_both_directions_copy_buffered";
        if std::env::var_os(NO_PIPES_CHILD_ENV).is_some() {
            return no_pipes_child();
        }
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{module}::{name}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(NO_PIPES_CHILD_ENV, "1")
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the child's checks failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("portico-no-pipes-child-done"),
            "the child did not run the copy:\n{stdout}"
        );
    }

    fn no_pipes_child() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, mut proxy_client) = connected_pair().await;
            let (mut proxy_upstream, mut upstream) = connected_pair().await;
            // The lowest free descriptor number becomes the limit: nothing
            // more can be opened, a pipe least of all.
            let spare = nix::unistd::dup(&client).unwrap();
            let first_free = u64::try_from(std::os::fd::AsRawFd::as_raw_fd(&spare)).unwrap();
            drop(spare);
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            setrlimit(Resource::RLIMIT_NOFILE, first_free, hard).unwrap();
            assert_eq!(
                nix::unistd::pipe2(OFlag::O_CLOEXEC).err(),
                Some(Errno::EMFILE),
                "the descriptor table should be full"
            );

            let opts = on(SpliceMode::Always);
            let copy = async {
                copy_bidirectional(
                    &mut proxy_client,
                    &mut proxy_upstream,
                    &opts,
                    no_drain(),
                    &NoopObserver,
                )
                .await
            };
            let request = pattern(300_000, 31);
            let response = pattern(500_000, 32);
            let peers = async {
                let client_side = async {
                    client.write_all(&request).await.unwrap();
                    client.shutdown().await.unwrap();
                    read_to_eof(&mut client).await
                };
                let upstream_side = async {
                    let got = read_to_eof(&mut upstream).await;
                    upstream.write_all(&response).await.unwrap();
                    upstream.shutdown().await.unwrap();
                    got
                };
                tokio::join!(client_side, upstream_side)
            };
            let (outcome, (at_client, at_upstream)) =
                within("the copy", async { tokio::join!(copy, peers) }).await;
            assert_same_bytes(&at_upstream, &request, "request");
            assert_same_bytes(&at_client, &response, "response");
            assert_eq!(
                outcome,
                CopyOutcome {
                    end: EndReason::Eof,
                    client_to_upstream: request.len() as u64,
                    upstream_to_client: response.len() as u64,
                    ..paths(SpliceMode::Off)
                }
            );
        });
        println!("portico-no-pipes-child-done");
    }

    async fn large_payloads_flow_both_ways_at_once(path: SpliceMode) {
        const LEN: usize = 8 * 1024 * 1024;
        let opts = on(path);
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
            settled(outcome, path),
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: LEN as u64,
                upstream_to_client: LEN as u64,
                ..paths(path)
            }
        );
        let observer = &proxied.observer;
        assert_eq!(observer.totals(), (LEN as u64, LEN as u64));
        // Every write is reported and none exceeds one buffer (or pipe).
        let bound = chunk_bound(&opts);
        let min_calls = 2 * LEN.div_ceil(bound) as u64;
        assert!(observer.calls.load(Ordering::Relaxed) >= min_calls);
        assert!(observer.largest_chunk.load(Ordering::Relaxed) <= bound as u64);
    }

    async fn client_half_close_still_gets_full_response(path: SpliceMode) {
        let mut proxied = Proxied::start(on(path), no_drain()).await;
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

    async fn upstream_half_close_lets_client_keep_sending(path: SpliceMode) {
        let mut proxied = Proxied::start(on(path), no_drain()).await;
        // A server that speaks first and then closes its side.
        proxied.upstream.write_all(b"220 hello\r\n").await.unwrap();
        proxied.upstream.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.client).await, b"220 hello\r\n");

        proxied.client.write_all(b"late data").await.unwrap();
        proxied.client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.upstream).await, b"late data");

        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(
            settled(outcome, path),
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: 9,
                upstream_to_client: 11,
                ..paths(path)
            }
        );
    }

    async fn idle_timeout_fires_when_silent_and_closes_both_sides(path: SpliceMode) {
        let idle = Duration::from_millis(200);
        let started = Instant::now();
        let proxied = Proxied::start(with_idle(path, idle), no_drain()).await;
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

    async fn idle_timer_restarts_from_the_last_byte(path: SpliceMode) {
        let idle = Duration::from_millis(300);
        let start = Instant::now();
        let mut proxied = Proxied::start(with_idle(path, idle), no_drain()).await;
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

    async fn steady_traffic_in_either_direction_is_not_idle(path: SpliceMode) {
        let idle = Duration::from_millis(200);
        let tick = Duration::from_millis(25);
        // 2 x 24 ticks: 1.2 s of traffic, six idle periods.
        let ticks_per_phase = 24;
        let mut proxied = Proxied::start(with_idle(path, idle), no_drain()).await;
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
            settled(outcome, path),
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: bytes,
                upstream_to_client: bytes,
                ..paths(path)
            }
        );
    }

    async fn drain_signal_stops_a_live_copy(path: SpliceMode) {
        let (tx, rx) = watch::channel(false);
        let mut proxied = Proxied::start(on(path), drain_signal(rx)).await;
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
            settled(outcome, path),
            CopyOutcome {
                end: EndReason::Drained,
                client_to_upstream: 6,
                upstream_to_client: 0,
                ..paths(path)
            }
        );
        assert!(read_to_eof(&mut client).await.is_empty());
        assert!(read_to_eof(&mut upstream).await.is_empty());
    }

    async fn drain_already_signalled_stops_before_copying(path: SpliceMode) {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        // The flag stays set even though nobody can change it any more.
        drop(tx);
        let mut proxied = Proxied::start(on(path), drain_signal(rx)).await;
        proxied.client.write_all(b"too late").await.unwrap();
        let (outcome, _, _, mut upstream) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Drained);
        assert!(read_to_eof(&mut upstream).await.is_empty());
    }

    async fn dropping_the_drain_sender_does_not_drain(path: SpliceMode) {
        let (tx, rx) = watch::channel(false);
        let mut proxied = Proxied::start(on(path), drain_signal(rx)).await;
        drop(tx);
        proxied.client.write_all(b"still here").await.unwrap();
        proxied.client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut proxied.upstream).await, b"still here");
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(outcome.end, EndReason::Eof);
    }

    async fn client_reset_is_a_client_error(path: SpliceMode) {
        let mut proxied = Proxied::start(on(path), no_drain()).await;
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

    async fn upstream_reset_is_an_upstream_error(path: SpliceMode) {
        let proxied = Proxied::start(on(path), no_drain()).await;
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

    async fn write_to_a_reset_client_is_a_client_error(path: SpliceMode) {
        // The client half-closes, then resets while the response is still
        // flowing: the proxy no longer reads from the client, so it is the
        // write towards it that has to notice.
        let mut proxied = Proxied::start(on(path), no_drain()).await;
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
                ..on(SpliceMode::Off)
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

    /// Request/response traffic never fills a buffer in one read, so in
    /// the default mode both directions stay on the buffered path.
    #[tokio::test]
    async fn auto_keeps_request_response_traffic_buffered() {
        let mut proxied = Proxied::start(on(SpliceMode::Auto), no_drain()).await;
        let mut sent = (0, 0);
        for i in 0..200u64 {
            let (request, response) = round_trip(&mut proxied, i, 20_000).await;
            sent = (sent.0 + request, sent.1 + response);
        }
        proxied.client.shutdown().await.unwrap();
        proxied.upstream.shutdown().await.unwrap();
        let (outcome, ..) = proxied.outcome().await;
        assert_eq!(
            outcome,
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: sent.0,
                upstream_to_client: sent.1,
                ..paths(SpliceMode::Off)
            }
        );
    }

    /// A large download fills the buffer, so that direction moves to
    /// splicing, with no byte lost or reordered at the switch; the
    /// request direction stays buffered.
    #[tokio::test]
    async fn auto_splices_a_large_transfer_from_the_first_full_read() {
        const LEN: usize = 4 * 1024 * 1024;
        let opts = CopyOptions {
            // Small, so that a full read is certain however the kernel
            // splits the stream.
            buffer_size: 4096,
            ..on(SpliceMode::Auto)
        };
        let mut proxied = Proxied::start(opts, no_drain()).await;
        let request = b"GET /big HTTP/1.0\r\n\r\n";
        proxied.client.write_all(request).await.unwrap();
        let mut at_upstream = vec![0u8; request.len()];
        within("the request", proxied.upstream.read_exact(&mut at_upstream))
            .await
            .unwrap();
        let body = pattern(LEN, 21);
        let got = stream_through(
            "the download",
            &mut proxied.upstream,
            &mut proxied.client,
            &body,
        )
        .await;
        assert_same_bytes(&got, &body, "download across the switch");
        proxied.client.shutdown().await.unwrap();
        let (outcome, observer, ..) = proxied.outcome().await;
        assert_eq!(
            outcome,
            CopyOutcome {
                end: EndReason::Eof,
                client_to_upstream: request.len() as u64,
                upstream_to_client: LEN as u64,
                client_to_upstream_path: CopyPath::Buffered,
                upstream_to_client_path: CopyPath::Spliced,
            }
        );
        // Spliced writes move more than one 4 KiB buffer at a time.
        assert!(observer.largest_chunk.load(Ordering::Relaxed) > 4096);
    }

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let first = buffers::take(1000);
        assert!(first.is_empty() && first.capacity() >= 1000);
        let at = first.as_ptr();
        let mut used = first;
        used.extend_from_slice(b"old bytes");
        buffers::give(used);
        let again = buffers::take(1000);
        assert_eq!(again.as_ptr(), at, "the pooled buffer comes back");
        assert!(again.is_empty(), "with its bytes forgotten");
        // Another size is not handed out for this one.
        buffers::give(again);
        let other_size = buffers::take(2000);
        assert_ne!(other_size.as_ptr(), at);
        // Past the bound, buffers are freed rather than pooled.
        let many: Vec<_> = (0..MAX_IDLE_BUFFERS + 10)
            .map(|_| buffers::take(1000))
            .collect();
        for b in many {
            buffers::give(b);
        }
        let pooled = buffers::idle_count();
        assert_eq!(pooled, MAX_IDLE_BUFFERS);
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
