//! The buffered path of a direction: `read` into a pooled buffer, `write`
//! it all out (see the [parent module](super) for the rules).

use super::*;

/// The buffered path of [`pump`]. With `may_splice`, a read that fills the
/// whole buffer moves the direction to [`splice_pump`] once the buffer's
/// bytes are written.
pub(super) async fn buffered_pump(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    opts: &CopyOptions,
    may_splice: bool,
    dir: &Direction<'_>,
    activity: &Activity,
    observer: &dyn CopyObserver,
) -> Result<Pumped, EndReason> {
    let src = from.as_ref();
    let size = opts.buffer_size.max(1);
    // Held only while the source has data; see the module docs.
    let mut held: Option<Vec<u8>> = None;
    loop {
        src.readable()
            .await
            .map_err(|e| (dir.read_error)(e.kind()))?;
        let mut buf = held.take().unwrap_or_else(|| buffers::take(size));
        let room = buf.capacity() - buf.len();
        let mut got = None;
        // The read runs inside `try_io` so that a short read, which shows
        // the socket drained, can clear the readiness observed before it
        // (by answering `WouldBlock`): readiness that arrived during the
        // read is kept, so no wake-up is lost.
        let read = src.try_io(Interest::READABLE, || {
            let n = src.try_read_buf(&mut buf)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        let n = match (read, got) {
            (Ok(n), _) => n,
            (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => n,
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {
                buffers::give(buf);
                continue;
            }
            (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => {
                held = Some(buf);
                continue;
            }
            (Err(e), _) => return Err((dir.read_error)(e.kind())),
        };
        if n == 0 {
            buffers::give(buf);
            to.shutdown()
                .await
                .map_err(|e| (dir.write_error)(e.kind()))?;
            return Ok(Pumped::Eof);
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
            dir.wrote(written, activity, observer);
        }
        if n < room {
            // Drained: no buffer is held while the source is quiet.
            buffers::give(buf);
        } else if may_splice {
            // The transfer is large, and no byte is held here now.
            buffers::give(buf);
            return Ok(Pumped::Switch(CopyPath::Spliced));
        } else {
            buf.clear();
            held = Some(buf);
        }
    }
}

/// The per-thread pool of empty copy buffers of [`buffered_pump`].
pub(super) mod buffers {
    use super::{RefCell, MAX_IDLE_BUFFERS};

    thread_local! {
        static IDLE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for `size` bytes, from this thread's pool
    /// or new (allocated, not zeroed: reads fill its spare capacity).
    pub(in crate::copy) fn take(size: usize) -> Vec<u8> {
        IDLE.with_borrow_mut(|idle| {
            idle.iter()
                .rposition(|b| b.capacity() == size)
                .map(|at| idle.swap_remove(at))
        })
        .unwrap_or_else(|| Vec::with_capacity(size))
    }

    /// How many buffers this thread's pool holds.
    #[cfg(test)]
    pub(in crate::copy) fn idle_count() -> usize {
        IDLE.with_borrow(Vec::len)
    }

    /// Gives a buffer back (its bytes are forgotten), or frees it if the
    /// pool is full.
    pub(in crate::copy) fn give(mut buf: Vec<u8>) {
        buf.clear();
        IDLE.with_borrow_mut(|idle| {
            if idle.len() < MAX_IDLE_BUFFERS {
                idle.push(buf);
            }
        });
    }
}
