//! The spliced path of a direction: `splice(2)` socket -> pipe -> socket
//! inside the kernel, with pooled pipes (see the [parent module](super) for
//! the rules).

use super::*;

/// Flags of every splice: move pages rather than copy where the kernel can,
/// and never block on the pipe (the sockets are non-blocking already).
const SPLICE_FLAGS: SpliceFFlags =
    SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// The spliced path of [`pump`]; see the module docs for the rules it keeps.
///
/// A write to a reset peer may raise `SIGPIPE` (the kernel's splice-to-socket
/// does not pass `MSG_NOSIGNAL`); Rust programs ignore `SIGPIPE` from the
/// start, so it surfaces as `EPIPE` like a `write` would.
pub(super) async fn splice_pump(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    opts: &CopyOptions,
    dir: &Direction<'_>,
    activity: &Activity,
    observer: &dyn CopyObserver,
) -> Result<Pumped, EndReason> {
    let src = from.as_ref();
    // Held only while the source has data; see the module docs.
    let mut held: Option<Pipe> = None;
    let mut spliced_any = false;
    loop {
        src.readable()
            .await
            .map_err(|e| (dir.read_error)(e.kind()))?;
        let pipe = match held.take() {
            Some(pipe) => pipe,
            None => match Pipe::take(opts.pipe_size) {
                Ok(pipe) => pipe,
                Err(e) => {
                    // Out of descriptors or of pipe pages: the direction
                    // holds no bytes now, so it can carry on buffered
                    // without losing any.
                    tracing::debug!(direction = dir.name, error = %e, "no pipe for splice; copying buffered");
                    return Ok(Pumped::Switch(CopyPath::Buffered));
                }
            },
        };
        let filled = src.try_io(Interest::READABLE, || {
            splice(src, None, &pipe.write, None, pipe.capacity, SPLICE_FLAGS)
                .map_err(io::Error::from)
        });
        let mut in_pipe = match filled {
            Ok(0) => {
                // End of stream, and the pipe is empty: every byte before
                // the FIN has been written, so the FIN can follow.
                pipe.recycle();
                to.shutdown()
                    .await
                    .map_err(|e| (dir.write_error)(e.kind()))?;
                return Ok(Pumped::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The source is drained for now (`try_io` has cleared its
                // readiness): let another connection use the pipe meanwhile.
                pipe.recycle();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                held = Some(pipe);
                continue;
            }
            Err(e) if !spliced_any && splice_unsupported(&e) => {
                warn_splice_unsupported(&e);
                return Ok(Pumped::Switch(CopyPath::Buffered));
            }
            Err(e) => return Err((dir.read_error)(e.kind())),
        };
        spliced_any = true;
        let dst = to.as_ref();
        while in_pipe > 0 {
            let drained = dst
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, dst, None, in_pipe, SPLICE_FLAGS)
                        .map_err(io::Error::from)
                })
                .await;
            let written = match drained {
                Ok(0) => return Err((dir.write_error)(io::ErrorKind::WriteZero)),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((dir.write_error)(e.kind())),
            };
            in_pipe -= written;
            dir.wrote(written, activity, observer);
        }
        held = Some(pipe);
    }
}

/// Whether a failed first splice means "not possible here" (an old kernel, a
/// socket type without splice support, a seccomp filter) rather than a
/// failing connection.
pub(super) fn splice_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
    )
}

/// Logs, once per process, that the kernel refused to splice.
fn warn_splice_unsupported(e: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "splice(2) refused; copying through buffers (logged once)");
    } else {
        tracing::debug!(error = %e, "splice(2) refused; copying through buffers");
    }
}

/// Empty pipes waiting for the next burst of any connection.
static IDLE_PIPES: Mutex<IdlePipes> = Mutex::new(IdlePipes {
    pipes: Vec::new(),
    bytes: 0,
});

struct IdlePipes {
    pipes: Vec<Pipe>,
    /// Sum of their capacities.
    bytes: usize,
}

/// Why [`Pipe::take`] has no pipe to give.
#[derive(Debug)]
enum NoPipe {
    /// `pipe2` or `fcntl` failed (e.g. `EMFILE`: out of descriptors).
    Failed(Errno),
    /// The kernel gave a pipe of this many bytes, smaller than its default
    /// (the user is past `fs.pipe-user-pages-soft`): splicing through it
    /// costs about twice the CPU of copying through a buffer.
    Starved(usize),
}

impl std::fmt::Display for NoPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "{e}"),
            Self::Starved(size) => {
                write!(f, "only a {size}-byte pipe (past fs.pipe-user-pages-soft)")
            }
        }
    }
}

/// A non-blocking pipe one direction splices through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The size it was asked for, so that a pooled pipe is reused only by
    /// copies that ask for the same.
    requested: usize,
    /// What the kernel gave: the most one fill can move.
    capacity: usize,
}

impl Pipe {
    /// An empty pipe of `size` bytes, from the pool or new.
    fn take(size: usize) -> Result<Pipe, NoPipe> {
        let pooled = {
            let mut idle = IDLE_PIPES.lock().unwrap_or_else(PoisonError::into_inner);
            let found = idle.pipes.iter().rposition(|p| p.requested == size);
            found.map(|at| {
                let pipe = idle.pipes.swap_remove(at);
                idle.bytes -= pipe.capacity;
                pipe
            })
        };
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Self::create(size),
        }
    }

    fn create(size: usize) -> Result<Pipe, NoPipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(NoPipe::Failed)?;
        let wanted = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        let initial = fcntl(&write, FcntlArg::F_GETPIPE_SZ).map_err(NoPipe::Failed)?;
        let initial_bytes = usize::try_from(initial).unwrap_or(0);
        if initial_bytes < KERNEL_PIPE_SIZE && size > initial_bytes {
            return Err(NoPipe::Starved(initial_bytes));
        }
        let capacity = match initial {
            current if usize::try_from(current) == Ok(size) => current,
            current => match fcntl(&write, FcntlArg::F_SETPIPE_SZ(wanted)) {
                Ok(resized) => resized,
                Err(e) => {
                    warn_pipe_size(size, e);
                    current
                }
            },
        };
        Ok(Pipe {
            read,
            write,
            requested: size,
            // The kernel never reports a pipe smaller than one page.
            capacity: usize::try_from(capacity)
                .unwrap_or(DEFAULT_PIPE_SIZE)
                .max(1),
        })
    }

    /// Gives an empty pipe back to the pool (or closes it if the pool is
    /// full). Only ever called right after a fill found nothing or after a
    /// drain emptied it: a pipe with bytes in it must never be pooled, or
    /// they would go to another connection.
    fn recycle(self) {
        // Checked in debug builds (every test), where a poll per recycle is
        // affordable.
        #[cfg(debug_assertions)]
        assert!(self.is_empty(), "a pipe with bytes in it was pooled");
        let mut idle = IDLE_PIPES.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.bytes + self.capacity <= MAX_IDLE_PIPE_BYTES {
            idle.bytes += self.capacity;
            idle.pipes.push(self);
        }
    }
}

#[cfg(debug_assertions)]
impl Pipe {
    /// Whether no byte waits in the pipe (for the pool's invariant check).
    fn is_empty(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }
}

/// Logs, once per process, that pipes could not be given the asked size.
fn warn_pipe_size(size: usize, e: Errno) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            size,
            error = %e,
            "cannot resize splice pipes (fs.pipe-max-size or fs.pipe-user-pages-soft); \
             keeping the kernel's size (logged once)"
        );
    }
}
