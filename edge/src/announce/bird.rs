//! What the BIRD beside the edge says of its sessions, read from its control
//! socket (the protocol `birdc` speaks): `show protocols` for the BGP
//! sessions, `show bfd sessions` for BFD. The edge exports it as metrics,
//! so one dashboard shows whether a VIP is announced and whether the
//! routers hear it.
//!
//! The control protocol is line based: BIRD greets with `0001 ...`, and
//! answers a command with lines `CODE-text` (more to come) or ` text` (a
//! continuation of the previous code), ending with a line `CODE text`
//! whose code starts with `0` (done) or `8`/`9` (an error, such as no BFD
//! instance).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The BGP protocol's name, or the BFD peer's address.
    pub name: String,
    /// Whether it is up: a BGP session `Established`, a BFD session `Up`.
    pub up: bool,
}

/// The sessions of one BIRD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BirdSessions {
    /// Every BGP protocol.
    pub bgp: Vec<Session>,
    /// Every BFD session.
    pub bfd: Vec<Session>,
}

/// Asks the BIRD listening on `socket` for its sessions, each step bounded
/// by `timeout`. Blocking.
pub fn sessions(socket: &Path, timeout: Duration) -> io::Result<BirdSessions> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    // The greeting.
    reply(&mut reader)?.map_err(io::Error::other)?;
    writer.write_all(b"show protocols\n")?;
    let protocols = reply(&mut reader)?.map_err(io::Error::other)?;
    writer.write_all(b"show bfd sessions\n")?;
    // No BFD configured is an error answer, not a failure: no sessions.
    let bfd = reply(&mut reader)?.unwrap_or_default();
    Ok(BirdSessions {
        bgp: bgp_sessions(&protocols),
        bfd: bfd_sessions(&bfd),
    })
}

/// Reads one answer: its text lines (codes stripped), or the error BIRD
/// gave.
fn reply(reader: &mut impl BufRead) -> io::Result<Result<Vec<String>, String>> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "BIRD closed the control socket",
            ));
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = text.strip_prefix(' ') {
            lines.push(rest.to_string());
            continue;
        }
        let (code, sep, rest) = match (text.get(..4), text.get(4..5), text.get(5..)) {
            (Some(code), Some(sep), rest) if code.bytes().all(|b| b.is_ascii_digit()) => {
                (code, sep, rest.unwrap_or_default())
            }
            _ => return Err(io::Error::other(format!("not a BIRD reply line: {text:?}"))),
        };
        if sep == "-" {
            lines.push(rest.to_string());
            continue;
        }
        return Ok(match code.as_bytes()[0] {
            b'8' | b'9' => Err(format!("{code} {rest}")),
            _ => {
                if !rest.is_empty() {
                    lines.push(rest.to_string());
                }
                Ok(lines)
            }
        });
    }
}

/// The BGP protocols of `show protocols` (`Name Proto Table State Since
/// Info`): up when the state is `up` and the info says `Established`.
fn bgp_sessions(lines: &[String]) -> Vec<Session> {
    lines
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            if words.get(1) != Some(&"BGP") {
                return None;
            }
            Some(Session {
                name: words[0].to_string(),
                up: words.get(3) == Some(&"up") && words.contains(&"Established"),
            })
        })
        .collect()
}

/// The sessions of `show bfd sessions` (`IP address Interface State Since
/// Interval Timeout`, under a `bfd1:` heading per instance).
fn bfd_sessions(lines: &[String]) -> Vec<Session> {
    lines
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let peer: std::net::IpAddr = words.first()?.parse().ok()?;
            Some(Session {
                name: peer.to_string(),
                up: words.get(2) == Some(&"Up"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What BIRD 2.0.12 sent on its control socket (a router's edge
    /// sessions), with the codes.
    const PROTOCOLS: &str = "2002-Name       Proto      Table      State  Since         Info\n\
        1002-device1    Device     ---        up     21:12:47.314  \n \
        vips4      Kernel     master4    up     21:12:47.314  \n \
        upstream4  BGP        ---        up     21:12:51.575  Established   \n \
        upstream6  BGP        ---        start  21:13:05.034  Active        Error: BFD session down\n\
        0000 \n";

    const BFD: &str = "1020-bfd1:\n \
        IP address                Interface  State      Since         Interval  Timeout\n \
        10.42.0.1                 eth0       Up         21:12:51.220    0.300    0.900\n \
        fd42::1                   eth0       Down       21:13:04.998    1.000    0.000\n\
        0000 \n";

    #[test]
    fn sessions_are_read_from_the_control_protocol() {
        let protocols = reply(&mut PROTOCOLS.as_bytes()).unwrap().unwrap();
        assert_eq!(
            bgp_sessions(&protocols),
            [
                Session {
                    name: "upstream4".into(),
                    up: true
                },
                Session {
                    name: "upstream6".into(),
                    up: false
                },
            ]
        );
        let bfd = reply(&mut BFD.as_bytes()).unwrap().unwrap();
        assert_eq!(
            bfd_sessions(&bfd),
            [
                Session {
                    name: "10.42.0.1".into(),
                    up: true
                },
                Session {
                    name: "fd42::1".into(),
                    up: false
                },
            ]
        );
    }

    #[test]
    fn an_error_answer_and_a_cut_answer_are_told_apart() {
        let error = reply(&mut "8003 No protocols match\n".as_bytes()).unwrap();
        assert_eq!(error, Err("8003 No protocols match".to_string()));
        let cut = reply(&mut "1002-device1 Device\n".as_bytes()).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
        let garbage = reply(&mut "hello\n".as_bytes()).unwrap_err();
        assert!(
            garbage.to_string().contains("not a BIRD reply"),
            "{garbage}"
        );
    }
}
