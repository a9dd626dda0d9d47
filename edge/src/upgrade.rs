//! Binary upgrade: hands every listening socket to a new edge process, so
//! that replacing the binary never refuses a connection.
//!
//! A listening socket lives in the kernel for as long as any process holds a
//! descriptor for it; connections that arrive meanwhile wait in its accept
//! queue. So the old process passes its descriptors (SCM_RIGHTS) to the new
//! one, and only after the new one confirms it holds them all does the old
//! one close its copies and drain.
//!
//! The shape follows pingora's upgrade (the new process listens on a unix
//! socket, the old one connects and sends), but pingora's `Fds` transfer
//! caps out at 32 descriptors and a 2 KiB name buffer and panics past that,
//! while the edge opens one listener per VIP:port of every Service. This
//! protocol batches instead:
//!
//! - the socket is `SOCK_SEQPACKET`, so every record arrives whole and
//!   alone, together with exactly the descriptors sent with it;
//! - a record is a 10-byte header (`PTCU`, version 1, kind, a big-endian
//!   u32) and, for a batch, that many keys each prefixed by a big-endian u16
//!   length; a batch carries at most [`MAX_FDS_PER_MESSAGE`] descriptors, in
//!   key order, and at most [`MAX_MANIFEST_BYTES`] of manifest;
//! - an end record carries the total count, and the receiver answers with an
//!   acknowledgement of that count, or a rejection with its reason.
//!
//! Keys name what each socket is for (`tcp/203.0.113.10:443`); the receiver
//! checks that every batch has as many descriptors as keys, that keys are
//! UTF-8 and unique, and that the total matches, and on any failure closes
//! every descriptor it got, so a broken transfer leaves nothing behind.

use std::collections::HashSet;
use std::fs;
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::sys;

/// The most descriptors sent in one record; Linux allows 253 (`SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 200;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The most manifest bytes in one record. Records are single datagrams, which
/// Linux caps near the socket send buffer (about 200 KiB by default), so
/// batches stay well below that.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// How long the sender waits for any one send, and for the acknowledgement.
/// The receiver only validates what it gets, so this is generous.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

const MAGIC: [u8; 4] = *b"PTCU";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 10;
const KIND_BATCH: u8 = 1;
const KIND_END: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_REJECT: u8 = 4;
/// A rejection reason is for a log line; keep it short.
const MAX_REASON_LEN: usize = 1024;
/// Big enough for a full batch, so a larger record shows as truncated.
const RECEIVE_BUFFER: usize = HEADER_LEN + MAX_MANIFEST_BYTES + 1;

/// Why handing listeners over failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A key is empty or longer than [`MAX_KEY_LEN`], or arrived as
    /// something other than UTF-8.
    #[error("invalid listener key {key:?}: {reason}")]
    InvalidKey {
        /// The key (lossily decoded when it was not UTF-8).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two sockets carry the same key, so the receiver could not tell which
    /// is which.
    #[error("duplicate listener key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// Something other than a socket is at the upgrade socket path; it is
    /// left alone rather than deleted.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    PathOccupied {
        /// The upgrade socket path.
        path: PathBuf,
    },
    /// The upgrade socket could not be created.
    #[error("cannot listen on upgrade socket {path}: {source}")]
    Bind {
        /// The upgrade socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The new process's upgrade socket could not be reached.
    #[error("cannot connect to upgrade socket {path}: {source}")]
    Connect {
        /// The upgrade socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A step did not finish in time.
    #[error("upgrade socket {path}: timed out after {waited:?} {stage}")]
    Timeout {
        /// The upgrade socket path.
        path: PathBuf,
        /// What was being waited for.
        stage: &'static str,
        /// How long.
        waited: Duration,
    },
    /// The connecting process runs as another user, who must not be able to
    /// plant listening sockets in the edge.
    #[error("upgrade socket {path}: peer runs as uid {uid}, not as us or root")]
    PeerNotAllowed {
        /// The upgrade socket path.
        path: PathBuf,
        /// The peer's user id.
        uid: u32,
    },
    /// The peer sent something that is not this protocol.
    #[error("upgrade socket {path}: protocol error: {detail}")]
    Protocol {
        /// The upgrade socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A batch's manifest and its descriptors disagree in number.
    #[error(
        "upgrade socket {path}: manifest names {keys} sockets but {fds} descriptors came with it"
    )]
    FdCountMismatch {
        /// The upgrade socket path.
        path: PathBuf,
        /// Keys in the manifest.
        keys: usize,
        /// Descriptors received.
        fds: usize,
    },
    /// The peer hung up before the transfer was complete. On the sending
    /// side this can follow the end record: the new process may then hold the
    /// sockets or not, so the old one should keep serving.
    #[error("upgrade socket {path}: peer closed the connection {stage}")]
    PeerClosed {
        /// The upgrade socket path.
        path: PathBuf,
        /// How far the transfer had got.
        stage: &'static str,
    },
    /// The receiver refused the transfer and said why.
    #[error("upgrade socket {path}: the new process rejected the transfer: {reason}")]
    Rejected {
        /// The upgrade socket path.
        path: PathBuf,
        /// The receiver's reason.
        reason: String,
    },
    /// Any other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path or socket concerned.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
}

/// Sends every listener to the new process waiting on `path` and returns how
/// many were sent, once the receiver acknowledged holding all of them; only
/// then may the caller close its own descriptors and drain.
///
/// Blocking (run it in `spawn_blocking`); each step gives up after
/// [`SEND_TIMEOUT`]. Keys are checked before anything is sent.
pub fn send_listeners(
    path: &Path,
    listeners: &[(String, BorrowedFd<'_>)],
) -> Result<usize, UpgradeError> {
    let mut seen = HashSet::with_capacity(listeners.len());
    for (key, _) in listeners {
        check_key(key)?;
        if !seen.insert(key.as_str()) {
            return Err(UpgradeError::DuplicateKey { key: key.clone() });
        }
    }
    let sock =
        Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(|source| UpgradeError::Io {
            context: format!("cannot create a socket for {}", path.display()),
            source,
        })?;
    let connect_err = |source| UpgradeError::Connect {
        path: path.to_owned(),
        source,
    };
    sock.set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(connect_err)?;
    sock.set_read_timeout(Some(SEND_TIMEOUT))
        .map_err(connect_err)?;
    sock.connect(&SockAddr::unix(path).map_err(connect_err)?)
        .map_err(connect_err)?;

    let mut sent = 0;
    for batch in batches(listeners) {
        let record = encode_batch(batch.iter().map(|(k, _)| k.as_str()));
        let fds: Vec<RawFd> = batch.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        send_record(&sock, path, &record, &fds)?;
        sent += batch.len();
    }
    send_record(&sock, path, &header(KIND_END, sent), &[])?;

    match read_reply(&sock, path, "before acknowledging")? {
        Reply::Ack(n) if n == sent => Ok(sent),
        Reply::Ack(n) => Err(UpgradeError::Protocol {
            path: path.to_owned(),
            detail: format!("receiver acknowledged {n} sockets, {sent} were sent"),
        }),
        Reply::Reject(reason) => Err(UpgradeError::Rejected {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// Waits on `path` for one old process, receives its listeners, and returns
/// them as `(key, descriptor)` in the order sent, with close-on-exec set.
/// The socket file is removed before returning.
///
/// `timeout` bounds the whole exchange (waiting included). Blocking.
/// When the caller must know the socket is ready before telling the old
/// process to send, use [`UpgradeSocket`] instead.
pub fn receive_listeners(
    path: &Path,
    timeout: Duration,
) -> Result<Vec<(String, OwnedFd)>, UpgradeError> {
    UpgradeSocket::bind(path)?.receive(timeout)
}

/// The new process's end of an upgrade: a bound unix socket that accepts one
/// old process. Dropping it removes the socket file (if it is still ours).
#[derive(Debug)]
pub struct UpgradeSocket {
    socket: Socket,
    path: PathBuf,
    /// Device and inode of our socket file, so that Drop never removes a
    /// file some later process put at the same path.
    identity: Option<(u64, u64)>,
}

impl UpgradeSocket {
    /// Creates the upgrade socket at `path` (mode 0600), replacing a stale
    /// socket file left there but nothing else. One path serves one upgrade
    /// at a time.
    pub fn bind(path: &Path) -> Result<Self, UpgradeError> {
        let bind_err = |source| UpgradeError::Bind {
            path: path.to_owned(),
            source,
        };
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match fs::remove_file(path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed stale upgrade socket"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_err(e)),
            },
            Ok(_) => {
                return Err(UpgradeError::PathOccupied {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(bind_err)?;
        socket
            .bind(&SockAddr::unix(path).map_err(bind_err)?)
            .map_err(bind_err)?;
        let mut this = UpgradeSocket {
            socket,
            path: path.to_owned(),
            identity: None,
        };
        // From here on, Drop cleans the file up if anything fails.
        let meta = fs::symlink_metadata(path).map_err(bind_err)?;
        this.identity = Some((meta.dev(), meta.ino()));
        // Whoever can connect can plant sockets in the edge: owner only (the
        // peer's uid is checked as well, see `receive`).
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        this.socket.listen(4).map_err(bind_err)?;
        this.socket.set_nonblocking(true).map_err(bind_err)?;
        Ok(this)
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for one sender and receives its listeners, as
    /// [`receive_listeners`] does. On success the sender is told how many
    /// arrived; on failure it is told why, and every descriptor received so
    /// far is closed.
    pub fn receive(mut self, timeout: Duration) -> Result<Vec<(String, OwnedFd)>, UpgradeError> {
        let deadline = Instant::now() + timeout;
        let conn = loop {
            wait_readable(
                self.socket.as_fd(),
                deadline,
                timeout,
                &self.path,
                "waiting for the old process",
            )?;
            match self.socket.accept() {
                Ok((conn, _)) => break conn,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(source) => {
                    return Err(UpgradeError::Io {
                        context: format!("accept on upgrade socket {}", self.path.display()),
                        source,
                    })
                }
            }
        };
        // One sender per upgrade: later ones find no socket.
        self.remove_file();
        let path = self.path.clone();

        let result =
            check_peer(&conn, &path).and_then(|()| receive_from(&conn, &path, deadline, timeout));
        let reply = match &result {
            Ok(listeners) => header(KIND_ACK, listeners.len()),
            Err(e) => reject(&e.to_string()),
        };
        // A sender that never hears back assumes failure and keeps serving;
        // so must we, or both would think the other has the sockets.
        let sent = sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(&reply)],
            &[],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        );
        match (result, sent) {
            (Ok(listeners), Ok(_)) => Ok(listeners),
            (Ok(_), Err(errno)) => Err(UpgradeError::Io {
                context: format!("cannot acknowledge on upgrade socket {}", path.display()),
                source: errno.into(),
            }),
            (Err(e), _) => Err(e),
        }
    }

    fn remove_file(&mut self) {
        let Some(identity) = self.identity.take() else {
            return;
        };
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == identity => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove upgrade socket");
                }
            }
            _ => {}
        }
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        self.remove_file();
    }
}

fn check_key(key: &str) -> Result<(), UpgradeError> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY_LEN {
        "longer than 1024 bytes"
    } else {
        return Ok(());
    };
    Err(UpgradeError::InvalidKey {
        key: portico_config::kube::quoted(key),
        reason,
    })
}

/// Splits the listeners into records within both per-record limits.
fn batches<'a, 'fd>(
    listeners: &'a [(String, BorrowedFd<'fd>)],
) -> Vec<&'a [(String, BorrowedFd<'fd>)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (key, _)) in listeners.iter().enumerate() {
        let size = 2 + key.len();
        if i > start && (i - start == MAX_FDS_PER_MESSAGE || bytes + size > MAX_MANIFEST_BYTES) {
            out.push(&listeners[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < listeners.len() {
        out.push(&listeners[start..]);
    }
    out
}

fn header(kind: u8, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    // Counts are bounded by the descriptor table, far below u32::MAX.
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
    out
}

fn encode_batch<'k>(keys: impl ExactSizeIterator<Item = &'k str>) -> Vec<u8> {
    let mut out = header(KIND_BATCH, keys.len());
    for key in keys {
        // check_key bounded the length to MAX_KEY_LEN.
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out
}

fn reject(reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = header(KIND_REJECT, cut);
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out
}

/// What a record says, once its header checked out.
#[derive(Debug, PartialEq)]
enum Record {
    Batch(Vec<String>),
    End(usize),
}

#[derive(Debug, PartialEq)]
enum Reply {
    Ack(usize),
    Reject(String),
}

/// Reads the header: kind, count and the rest.
fn split_header(bytes: &[u8]) -> Result<(u8, usize, &[u8]), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("short message ({} bytes)", bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err("not an upgrade message (bad magic)".to_owned());
    }
    if bytes[4] != VERSION {
        return Err(format!("unsupported protocol version {}", bytes[4]));
    }
    let count = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    Ok((bytes[5], count, &bytes[HEADER_LEN..]))
}

fn decode_record(bytes: &[u8], path: &Path) -> Result<Record, UpgradeError> {
    let protocol = |detail: String| UpgradeError::Protocol {
        path: path.to_owned(),
        detail,
    };
    let (kind, count, mut rest) = split_header(bytes).map_err(protocol)?;
    match kind {
        KIND_BATCH => {
            if count == 0 || count > MAX_FDS_PER_MESSAGE {
                return Err(protocol(format!(
                    "batch of {count} sockets (1 to {MAX_FDS_PER_MESSAGE} allowed)"
                )));
            }
            let mut keys = Vec::with_capacity(count);
            for i in 0..count {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                    return Err(protocol(format!("manifest ends before key {i} of {count}")));
                };
                let len = usize::from(u16::from_be_bytes(*len));
                let Some((raw, tail)) = tail.split_at_checked(len) else {
                    return Err(protocol(format!(
                        "key {i} of {count} runs past the message"
                    )));
                };
                let key =
                    String::from_utf8(raw.to_vec()).map_err(|e| UpgradeError::InvalidKey {
                        key: portico_config::kube::quoted(&String::from_utf8_lossy(e.as_bytes())),
                        reason: "not UTF-8",
                    })?;
                check_key(&key)?;
                keys.push(key);
                rest = tail;
            }
            if !rest.is_empty() {
                return Err(protocol(format!("{} bytes after the manifest", rest.len())));
            }
            Ok(Record::Batch(keys))
        }
        KIND_END if rest.is_empty() => Ok(Record::End(count)),
        KIND_END => Err(protocol("end marker with a body".to_owned())),
        other => Err(protocol(format!("unexpected message kind {other}"))),
    }
}

fn decode_reply(bytes: &[u8], path: &Path) -> Result<Reply, UpgradeError> {
    let protocol = |detail: String| UpgradeError::Protocol {
        path: path.to_owned(),
        detail,
    };
    let (kind, count, rest) = split_header(bytes).map_err(protocol)?;
    match kind {
        KIND_ACK if rest.is_empty() => Ok(Reply::Ack(count)),
        KIND_REJECT if rest.len() == count => {
            Ok(Reply::Reject(String::from_utf8_lossy(rest).into_owned()))
        }
        other => Err(protocol(format!(
            "unexpected reply kind {other} ({} bytes)",
            bytes.len()
        ))),
    }
}

fn send_record(
    sock: &Socket,
    path: &Path,
    record: &[u8],
    fds: &[RawFd],
) -> Result<(), UpgradeError> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(record)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            // A seqpacket record goes whole or not at all.
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                return Err(UpgradeError::Timeout {
                    path: path.to_owned(),
                    stage: "sending listeners (the receiver stopped reading)",
                    waited: SEND_TIMEOUT,
                })
            }
            Err(errno) => {
                // A receiver that rejects a batch says why before hanging up.
                if let Ok(Reply::Reject(reason)) = read_reply(sock, path, "") {
                    return Err(UpgradeError::Rejected {
                        path: path.to_owned(),
                        reason,
                    });
                }
                if matches!(errno, Errno::EPIPE | Errno::ECONNRESET) {
                    return Err(UpgradeError::PeerClosed {
                        path: path.to_owned(),
                        stage: "while listeners were being sent",
                    });
                }
                return Err(UpgradeError::Io {
                    context: format!("sending listeners to {}", path.display()),
                    source: errno.into(),
                });
            }
        }
    }
}

fn read_reply(sock: &Socket, path: &Path, stage: &'static str) -> Result<Reply, UpgradeError> {
    let mut buf = [0u8; HEADER_LEN + MAX_REASON_LEN];
    // A peer that closed with our records unread leaves ECONNRESET pending,
    // which the kernel reports once, before the reply still queued for us.
    let mut reset_seen = false;
    loop {
        match (&*sock).read(&mut buf) {
            Ok(0) => {
                return Err(UpgradeError::PeerClosed {
                    path: path.to_owned(),
                    stage,
                })
            }
            Ok(n) => return decode_reply(&buf[..n], path),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !reset_seen => {
                reset_seen = true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(UpgradeError::Timeout {
                    path: path.to_owned(),
                    stage: "waiting for the new process to acknowledge",
                    waited: SEND_TIMEOUT,
                })
            }
            Err(source) => {
                return Err(UpgradeError::Io {
                    context: format!("reading the reply on {}", path.display()),
                    source,
                })
            }
        }
    }
}

fn check_peer(conn: &Socket, path: &Path) -> Result<(), UpgradeError> {
    let creds = getsockopt(conn, sockopt::PeerCredentials).map_err(|errno| UpgradeError::Io {
        context: format!("reading the peer's credentials on {}", path.display()),
        source: errno.into(),
    })?;
    let uid = creds.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        Ok(())
    } else {
        Err(UpgradeError::PeerNotAllowed {
            path: path.to_owned(),
            uid,
        })
    }
}

fn receive_from(
    conn: &Socket,
    path: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<(String, OwnedFd)>, UpgradeError> {
    let protocol = |detail: &str| UpgradeError::Protocol {
        path: path.to_owned(),
        detail: detail.to_owned(),
    };
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let mut listeners: Vec<(String, OwnedFd)> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        wait_readable(conn.as_fd(), deadline, timeout, path, "receiving listeners")?;
        let msg = match sys::recv_with_fds(conn.as_fd(), &mut buf, true) {
            Ok(msg) => msg,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(source) => {
                return Err(UpgradeError::Io {
                    context: format!("receiving listeners on {}", path.display()),
                    source,
                })
            }
        };
        // Every early return below drops msg.fds (and `listeners`), closing
        // them: nothing half-received stays open in this process.
        if msg.control_truncated {
            return Err(protocol(
                "descriptors were dropped by the kernel (is RLIMIT_NOFILE too low for all listeners?)",
            ));
        }
        if msg.truncated {
            return Err(protocol("message longer than any valid record"));
        }
        if msg.other_control > 0 {
            return Err(protocol(
                "unexpected control message (only SCM_RIGHTS is used)",
            ));
        }
        if msg.len == 0 && msg.fds.is_empty() {
            return Err(UpgradeError::PeerClosed {
                path: path.to_owned(),
                stage: "before the end of the transfer",
            });
        }
        match decode_record(&buf[..msg.len], path)? {
            Record::Batch(keys) => {
                if keys.len() != msg.fds.len() {
                    return Err(UpgradeError::FdCountMismatch {
                        path: path.to_owned(),
                        keys: keys.len(),
                        fds: msg.fds.len(),
                    });
                }
                for (key, fd) in keys.into_iter().zip(msg.fds) {
                    if !seen.insert(key.clone()) {
                        return Err(UpgradeError::DuplicateKey { key });
                    }
                    listeners.push((key, fd));
                }
            }
            Record::End(total) => {
                if !msg.fds.is_empty() {
                    return Err(UpgradeError::FdCountMismatch {
                        path: path.to_owned(),
                        keys: 0,
                        fds: msg.fds.len(),
                    });
                }
                if total != listeners.len() {
                    return Err(protocol(&format!(
                        "end marker counts {total} sockets, {} arrived",
                        listeners.len()
                    )));
                }
                return Ok(listeners);
            }
        }
    }
}

/// Blocks until `fd` is readable (or hung up), or the deadline passes.
fn wait_readable(
    fd: BorrowedFd<'_>,
    deadline: Instant,
    timeout: Duration,
    path: &Path,
    stage: &'static str,
) -> Result<(), UpgradeError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UpgradeError::Timeout {
                path: path.to_owned(),
                stage,
                waited: timeout,
            });
        }
        // Round up, so a sub-millisecond remainder does not spin.
        let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(Errno::EINTR) => {}
            // Readable, hung up or in error: the next read tells which.
            Ok(_) => return Ok(()),
            Err(errno) => {
                return Err(UpgradeError::Io {
                    context: format!("waiting on upgrade socket {}", path.display()),
                    source: errno.into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    const DEADLINE: Duration = Duration::from_secs(20);

    /// A private directory, removed when the test ends, panic or not.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "portico-upgrade-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("upgrade.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Thousands of sockets exist at once in these tests; the default soft
    /// limit (often 1024) is too low.
    fn raise_fd_limit(wanted: u64) {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        if soft < wanted {
            assert!(
                hard >= wanted,
                "RLIMIT_NOFILE hard limit {hard} is below the {wanted} this test needs"
            );
            setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).expect("setrlimit");
        }
    }

    fn listen_local() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
    }

    fn key_of(l: &TcpListener) -> String {
        format!("tcp/{}", l.local_addr().unwrap())
    }

    fn addr_of(key: &str) -> SocketAddr {
        key.strip_prefix("tcp/").unwrap().parse().unwrap()
    }

    /// Runs the receiving side on its own thread, once the socket is bound,
    /// so the sender can never race the bind.
    fn spawn_receiver(
        path: &Path,
        timeout: Duration,
    ) -> thread::JoinHandle<Result<Vec<(String, OwnedFd)>, UpgradeError>> {
        let socket = UpgradeSocket::bind(path).expect("bind upgrade socket");
        thread::spawn(move || socket.receive(timeout))
    }

    fn wait_for_readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::try_from(DEADLINE).unwrap()), Ok(n) if n > 0)
    }

    /// Accepts one pending connection, waiting for it up to the deadline.
    fn accept_one(listener: &TcpListener) -> (TcpStream, SocketAddr) {
        assert!(
            wait_for_readable(listener.as_fd()),
            "no connection arrived before the deadline"
        );
        listener.accept().expect("accept")
    }

    #[test]
    fn transfers_a_thousand_listeners_each_under_its_key() {
        const N: usize = 1000;
        raise_fd_limit(4 * N as u64 + 256);
        let dir = TempDir::new();
        let path = dir.socket();
        let originals: Vec<TcpListener> = (0..N).map(|_| listen_local()).collect();
        let listeners: Vec<(String, BorrowedFd<'_>)> =
            originals.iter().map(|l| (key_of(l), l.as_fd())).collect();

        let receiver = spawn_receiver(&path, DEADLINE);
        assert_eq!(send_listeners(&path, &listeners).expect("send"), N);
        let received = receiver.join().unwrap().expect("receive");
        assert!(!path.exists(), "the upgrade socket file is removed");

        let sent_keys: Vec<&String> = listeners.iter().map(|(k, _)| k).collect();
        let got_keys: Vec<&String> = received.iter().map(|(k, _)| k).collect();
        assert_eq!(sent_keys, got_keys, "keys arrive complete and in order");
        // The old process closes its copies once the transfer is acknowledged.
        drop(listeners);
        drop(originals);

        for (key, fd) in received {
            let cloexec = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(cloexec & libc::FD_CLOEXEC, 0, "{key} is close-on-exec");
            let listener = crate::sockets::into_std_listener(fd).expect("a listening TCP socket");
            let client = TcpStream::connect_timeout(&addr_of(&key), DEADLINE).expect("connect");
            let (_conn, peer) = accept_one(&listener);
            assert_eq!(
                peer,
                client.local_addr().unwrap(),
                "{key} maps to its own socket"
            );
        }
    }

    #[test]
    fn no_connection_is_refused_across_the_handover() {
        const N: usize = 20;
        let dir = TempDir::new();
        let path = dir.socket();
        let originals: Vec<TcpListener> = (0..N).map(|_| listen_local()).collect();
        let addrs: Vec<SocketAddr> = originals.iter().map(|l| l.local_addr().unwrap()).collect();

        // Queued in the old process's sockets before the handover starts.
        let before: Vec<TcpStream> = addrs
            .iter()
            .map(|a| TcpStream::connect(a).expect("connect before"))
            .collect();

        // And a client hammering the listeners while it happens.
        let done = Arc::new(AtomicBool::new(false));
        let hammer = {
            let (addrs, done) = (addrs.clone(), done.clone());
            thread::spawn(move || {
                let mut streams = Vec::new();
                // Bounded, so it ends even if the handover is slow; the
                // accept queues (128 each) hold them all.
                for i in 0..N * 4 {
                    if done.load(Ordering::Acquire) && i >= N {
                        break;
                    }
                    streams.push(TcpStream::connect(addrs[i % N]).map_err(|e| (addrs[i % N], e)));
                }
                streams
            })
        };

        let receiver = spawn_receiver(&path, DEADLINE);
        let listeners: Vec<(String, BorrowedFd<'_>)> =
            originals.iter().map(|l| (key_of(l), l.as_fd())).collect();
        send_listeners(&path, &listeners).expect("send");
        let received = receiver.join().unwrap().expect("receive");
        drop(listeners);
        drop(originals);
        done.store(true, Ordering::Release);
        let during = hammer.join().unwrap();

        let after: Vec<TcpStream> = addrs
            .iter()
            .map(|a| TcpStream::connect(a).expect("connect after"))
            .collect();
        let during: Vec<TcpStream> = during
            .into_iter()
            .map(|r| r.unwrap_or_else(|(a, e)| panic!("connect to {a} during the handover: {e}")))
            .collect();

        // Every connection, whenever made, is accepted by the new process.
        let clients: Vec<&TcpStream> = before.iter().chain(&during).chain(&after).collect();
        let mut expected: Vec<SocketAddr> =
            clients.iter().map(|s| s.local_addr().unwrap()).collect();
        let mut accepted = Vec::new();
        for (_, fd) in received {
            let listener = crate::sockets::into_std_listener(fd).unwrap();
            let here = listener.local_addr().unwrap();
            let queued = clients
                .iter()
                .filter(|s| s.peer_addr().unwrap() == here)
                .count();
            for _ in 0..queued {
                accepted.push(accept_one(&listener).1);
            }
        }
        expected.sort();
        accepted.sort();
        assert_eq!(accepted, expected);
    }

    #[test]
    fn zero_listeners_transfer_cleanly() {
        let dir = TempDir::new();
        let receiver = spawn_receiver(&dir.socket(), DEADLINE);
        assert_eq!(send_listeners(&dir.socket(), &[]).unwrap(), 0);
        assert!(receiver.join().unwrap().unwrap().is_empty());
    }

    #[test]
    fn receiving_times_out_when_nobody_sends() {
        let dir = TempDir::new();
        let path = dir.socket();
        let started = Instant::now();
        let err = receive_listeners(&path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, UpgradeError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < DEADLINE);
        assert!(!path.exists(), "the socket file is removed on timeout too");
    }

    #[test]
    fn a_stale_socket_file_is_replaced_but_nothing_else() {
        let dir = TempDir::new();
        let path = dir.socket();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a stale socket file is left behind");
        drop(UpgradeSocket::bind(&path).expect("replaces a stale socket"));
        assert!(!path.exists());

        fs::write(&path, b"precious").unwrap();
        let err = UpgradeSocket::bind(&path).unwrap_err();
        assert!(matches!(err, UpgradeError::PathOccupied { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn sending_without_a_receiver_fails_to_connect() {
        let dir = TempDir::new();
        let err = send_listeners(&dir.socket(), &[]).unwrap_err();
        assert!(matches!(err, UpgradeError::Connect { .. }), "{err}");
    }

    #[test]
    fn sender_checks_keys_before_sending() {
        let dir = TempDir::new();
        let (a, b) = (listen_local(), listen_local());
        let dup = [("k".to_owned(), a.as_fd()), ("k".to_owned(), b.as_fd())];
        let err = send_listeners(&dir.socket(), &dup).unwrap_err();
        assert!(
            matches!(err, UpgradeError::DuplicateKey { ref key } if key == "k"),
            "{err}"
        );
        let empty = [(String::new(), a.as_fd())];
        assert!(matches!(
            send_listeners(&dir.socket(), &empty),
            Err(UpgradeError::InvalidKey { .. })
        ));
        let long = [("x".repeat(MAX_KEY_LEN + 1), a.as_fd())];
        assert!(matches!(
            send_listeners(&dir.socket(), &long),
            Err(UpgradeError::InvalidKey { .. })
        ));
    }

    #[test]
    fn batches_respect_both_limits() {
        let l = listen_local();
        let many: Vec<(String, BorrowedFd<'_>)> =
            (0..450).map(|i| (format!("k{i}"), l.as_fd())).collect();
        let sizes: Vec<usize> = batches(&many).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [200, 200, 50]);
        let long: Vec<(String, BorrowedFd<'_>)> = (0..130)
            .map(|i| (format!("{i:0>1000}"), l.as_fd()))
            .collect();
        let sizes: Vec<usize> = batches(&long).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [65, 65], "64 KiB of manifest per record");
        assert!(batches(&[]).is_empty());
    }

    /// A record as a hand-written peer sends it: bytes and descriptors.
    type RawRecord<'fd> = (Vec<u8>, Vec<BorrowedFd<'fd>>);

    /// A hand-written peer for the garbage tests: sends raw records with the
    /// given descriptors, then reads the receiver's reply, if any.
    fn raw_send(path: &Path, records: &[RawRecord<'_>], hang_up: bool) -> Option<Reply> {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        sock.connect(&SockAddr::unix(path).unwrap()).unwrap();
        for (bytes, fds) in records {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
            // The receiver may hang up after an earlier bad record.
            if sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .is_err()
            {
                break;
            }
        }
        if hang_up {
            return None;
        }
        read_reply(&sock, path, "").ok()
    }

    fn batch_of(keys: &[&[u8]]) -> Vec<u8> {
        let mut out = header(KIND_BATCH, keys.len());
        for k in keys {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k);
        }
        out
    }

    fn pseudo_random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn garbage_senders_get_clear_errors_not_panics() {
        let (a, b) = (listen_local(), listen_local());
        let (a, b) = (a.as_fd(), b.as_fd());
        let mut oversized = header(KIND_BATCH, 1);
        oversized.resize(RECEIVE_BUFFER + 100, b'x');
        let mut trailing = batch_of(&[b"tcp/a"]);
        trailing.push(0);
        let mut bad_version = header(KIND_END, 0);
        bad_version[4] = 9;

        type Check = fn(&UpgradeError) -> bool;
        let cases: Vec<(&str, Vec<RawRecord<'_>>, Check)> = vec![
            (
                "random bytes",
                vec![(pseudo_random_bytes(300, 0x9e37_79b9_7f4a_7c15), vec![])],
                |e| matches!(e, UpgradeError::Protocol { .. }),
            ),
            (
                "random bytes with a descriptor",
                vec![(pseudo_random_bytes(7, 42), vec![a])],
                |e| matches!(e, UpgradeError::Protocol { .. }),
            ),
            (
                "more keys than descriptors",
                vec![(batch_of(&[b"tcp/a", b"tcp/b"]), vec![a])],
                |e| {
                    matches!(
                        e,
                        UpgradeError::FdCountMismatch {
                            keys: 2,
                            fds: 1,
                            ..
                        }
                    )
                },
            ),
            (
                "more descriptors than keys",
                vec![(batch_of(&[b"tcp/a"]), vec![a, b])],
                |e| {
                    matches!(
                        e,
                        UpgradeError::FdCountMismatch {
                            keys: 1,
                            fds: 2,
                            ..
                        }
                    )
                },
            ),
            (
                "duplicate keys across batches",
                vec![
                    (batch_of(&[b"tcp/a"]), vec![a]),
                    (batch_of(&[b"tcp/a"]), vec![b]),
                ],
                |e| matches!(e, UpgradeError::DuplicateKey { key } if key == "tcp/a"),
            ),
            (
                "key that is not UTF-8",
                vec![(batch_of(&[b"tcp/\xff\xfe"]), vec![a])],
                |e| {
                    matches!(
                        e,
                        UpgradeError::InvalidKey {
                            reason: "not UTF-8",
                            ..
                        }
                    )
                },
            ),
            ("empty key", vec![(batch_of(&[b""]), vec![a])], |e| {
                matches!(e, UpgradeError::InvalidKey { .. })
            }),
            (
                "key length past the end",
                vec![(batch_of(&[b"tcp/a"])[..12].to_vec(), vec![a])],
                |e| matches!(e, UpgradeError::Protocol { .. }),
            ),
            ("trailing bytes", vec![(trailing, vec![a])], |e| {
                matches!(e, UpgradeError::Protocol { .. })
            }),
            ("empty batch", vec![(batch_of(&[]), vec![])], |e| {
                matches!(e, UpgradeError::Protocol { .. })
            }),
            ("oversized message", vec![(oversized, vec![a])], |e| {
                matches!(e, UpgradeError::Protocol { .. })
            }),
            (
                "end marker with the wrong total",
                vec![
                    (batch_of(&[b"tcp/a"]), vec![a]),
                    (header(KIND_END, 5), vec![]),
                ],
                |e| matches!(e, UpgradeError::Protocol { .. }),
            ),
            (
                "descriptors on the end marker",
                vec![(header(KIND_END, 0), vec![a])],
                |e| {
                    matches!(
                        e,
                        UpgradeError::FdCountMismatch {
                            keys: 0,
                            fds: 1,
                            ..
                        }
                    )
                },
            ),
            ("unknown version", vec![(bad_version, vec![])], |e| {
                matches!(e, UpgradeError::Protocol { .. })
            }),
            (
                "an acknowledgement instead of a batch",
                vec![(header(KIND_ACK, 0), vec![])],
                |e| matches!(e, UpgradeError::Protocol { .. }),
            ),
            (
                "hang-up before the end marker",
                vec![(batch_of(&[b"tcp/a"]), vec![a])],
                |e| matches!(e, UpgradeError::PeerClosed { .. }),
            ),
        ];
        for (name, records, check) in cases {
            let dir = TempDir::new();
            let receiver = spawn_receiver(&dir.socket(), DEADLINE);
            let reply = raw_send(&dir.socket(), &records, name.starts_with("hang-up"));
            let err = receiver
                .join()
                .unwrap_or_else(|_| panic!("{name}: the receiver panicked"))
                .expect_err(name);
            assert!(check(&err), "{name}: unexpected error {err:?}");
            match reply {
                Some(Reply::Reject(reason)) => assert_eq!(reason, err.to_string(), "{name}"),
                other => assert!(
                    matches!(err, UpgradeError::PeerClosed { .. }) && other.is_none(),
                    "{name}: the sender is told why, got {other:?}"
                ),
            }
        }
    }

    #[test]
    fn descriptors_of_a_failed_transfer_are_closed() {
        // A pipe's reader sees end-of-file only once every copy of the write
        // end is closed, so it tells whether the receiver kept one.
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let dir = TempDir::new();
        let receiver = spawn_receiver(&dir.socket(), DEADLINE);
        let records = vec![
            (batch_of(&[b"first"]), vec![w1.as_fd()]),
            (batch_of(&[b"second", b"third"]), vec![w2.as_fd()]),
        ];
        let reply = raw_send(&dir.socket(), &records, false);
        assert!(matches!(reply, Some(Reply::Reject(_))), "{reply:?}");
        let err = receiver.join().unwrap().unwrap_err();
        assert!(matches!(err, UpgradeError::FdCountMismatch { .. }), "{err}");
        drop(records);
        drop((w1, w2));
        for r in [r1, r2] {
            assert!(
                wait_for_readable(r.as_fd()),
                "the write end is still open somewhere"
            );
            let mut byte = [0u8; 1];
            assert_eq!(nix::unistd::read(&r, &mut byte).unwrap(), 0, "end of file");
        }
    }

    const CHILD_ENV: &str = "PORTICO_UPGRADE_TEST_CHILD";

    fn open_fds() -> Vec<usize> {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// When the descriptor table fills up mid-message the kernel installs
    /// what fits and sets MSG_CTRUNC; those that fit must still be closed.
    /// The table limit is per process, so the receiver is this test binary
    /// run again as a child with a tiny RLIMIT_NOFILE.
    #[test]
    fn descriptors_cut_off_by_a_full_table_are_closed() {
        let name = "descriptors_cut_off_by_a_full_table_are_closed";
        if let Ok(path) = std::env::var(CHILD_ENV) {
            return full_table_child(Path::new(&path));
        }
        let dir = TempDir::new();
        let path = dir.socket();
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{module}::{name}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the test binary again");
        // The child says when its socket is bound; its output is drained to
        // the end so that it never writes into a closed pipe.
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let drain = thread::spawn(move || {
            for line in std::io::BufRead::lines(stdout).map_while(Result::ok) {
                if line.ends_with("portico-child-ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        assert!(
            ready_rx.recv_timeout(DEADLINE).is_ok(),
            "the child never got ready"
        );

        let originals: Vec<TcpListener> =
            (0..MAX_FDS_PER_MESSAGE).map(|_| listen_local()).collect();
        let listeners: Vec<(String, BorrowedFd<'_>)> =
            originals.iter().map(|l| (key_of(l), l.as_fd())).collect();
        let err = send_listeners(&path, &listeners).unwrap_err();
        assert!(
            matches!(&err, UpgradeError::Rejected { reason, .. } if reason.contains("dropped by the kernel")),
            "{err}"
        );
        assert!(child.wait().unwrap().success(), "the child's checks failed");
        drain.join().unwrap();
    }

    fn full_table_child(path: &Path) {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let socket = UpgradeSocket::bind(path).unwrap();
        let before = open_fds();
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Room for the accepted connection and a few more, not 200: the
        // limit caps descriptor numbers, so count free numbers below it.
        let limit = (0..).filter(|n| !before.contains(n)).nth(8).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, limit as u64, hard).unwrap();
        println!("portico-child-ready");
        let err = socket.receive(DEADLINE).unwrap_err();
        assert!(
            matches!(&err, UpgradeError::Protocol { detail, .. } if detail.contains("dropped")),
            "{err}"
        );
        // Everything received is closed again; only the upgrade socket,
        // consumed by `receive`, is gone besides.
        assert_eq!(open_fds().len(), before.len() - 1, "descriptors leaked");
    }

    #[test]
    fn the_sender_reports_the_receivers_rejection() {
        let dir = TempDir::new();
        let path = dir.socket();
        // A seqpacket peer that answers the first record with a rejection.
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(1).unwrap();
        let peer = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = (&conn).read(&mut buf).unwrap();
            (&conn).write_all(&reject("no room")).unwrap();
        });
        let l = listen_local();
        let err = send_listeners(&path, &[(key_of(&l), l.as_fd())]).unwrap_err();
        peer.join().unwrap();
        assert!(
            matches!(err, UpgradeError::Rejected { ref reason, .. } if reason == "no room"),
            "{err}"
        );
    }

    #[test]
    fn records_decode_strictly() {
        let p = Path::new("/x");
        assert_eq!(
            decode_record(&batch_of(&[b"tcp/1.2.3.4:80"]), p).unwrap(),
            Record::Batch(vec!["tcp/1.2.3.4:80".to_owned()])
        );
        assert_eq!(
            decode_record(&header(KIND_END, 7), p).unwrap(),
            Record::End(7)
        );
        assert!(decode_record(&[], p).is_err());
        assert!(decode_record(&header(KIND_BATCH, MAX_FDS_PER_MESSAGE + 1), p).is_err());
        assert_eq!(
            decode_reply(&header(KIND_ACK, 3), p).unwrap(),
            Reply::Ack(3)
        );
        assert_eq!(
            decode_reply(&reject("why"), p).unwrap(),
            Reply::Reject("why".to_owned())
        );
        let long = "é".repeat(MAX_REASON_LEN);
        let Reply::Reject(cut) = decode_reply(&reject(&long), p).unwrap() else {
            panic!()
        };
        assert!(cut.len() <= MAX_REASON_LEN && long.starts_with(&cut));
    }

    mod properties {
        //! Hostile handover messages: any bytes, and valid messages cut or
        //! with one byte changed, are decoded or refused, never a panic;
        //! valid ones decode to what was encoded.
        use proptest::prelude::*;

        use super::super::*;

        fn path() -> &'static Path {
            Path::new("/run/portico-edge/upgrade.sock")
        }

        fn keys() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec("[a-z0-9/:.\\[\\]]{1,40}", 1..MAX_FDS_PER_MESSAGE)
        }

        proptest! {
            #[test]
            fn any_bytes_are_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode_record(&bytes, path());
                let _ = decode_reply(&bytes, path());
            }

            #[test]
            fn a_batch_round_trips(keys in keys()) {
                let bytes = encode_batch(keys.iter().map(String::as_str));
                match decode_record(&bytes, path()) {
                    Ok(Record::Batch(got)) => prop_assert_eq!(got, keys),
                    other => prop_assert!(false, "{:?}", other.map(|_| ())),
                }
            }

            #[test]
            fn a_batch_cut_or_changed_is_decoded_or_refused(
                keys in keys(),
                cut in any::<prop::sample::Index>(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let bytes = encode_batch(keys.iter().map(String::as_str));
                let cut_at = cut.index(bytes.len());
                prop_assert!(decode_record(&bytes[..cut_at], path()).is_err());
                let mut changed = bytes.clone();
                changed[at.index(bytes.len())] = byte;
                if let Err(e) = decode_record(&changed, path()) {
                    prop_assert!(e.to_string().len() < 2048, "{}", e);
                }
            }
        }
    }
}
