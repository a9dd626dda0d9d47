//! BIRD in a network namespace: started in the foreground as a child of the
//! test with its own control socket, asked through `birdc`, killed on drop;
//! and `bird -p`, which checks a config without starting anything.

use std::fs::{self, File};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::command::{self, CommandFailed};
use crate::procs;

use super::{wait_for, RoutingError, COMMAND_LIMIT};

/// `bird -p -c config`: parses the config (and checks its filters and
/// symbols) without starting anything.
pub fn bird_parse(config: &Path) -> Result<(), CommandFailed> {
    let bird = bird_program("bird");
    command::run(
        &bird,
        &[
            "-p".to_string(),
            "-c".to_string(),
            config.display().to_string(),
        ],
        None,
        COMMAND_LIMIT,
    )
    .map(|_| ())
}

/// Where `program` (`bird`, `birdc`) is ([`command::daemon_program`]).
fn bird_program(program: &str) -> String {
    command::daemon_program(program).display().to_string()
}

/// A BIRD daemon in a namespace, in the foreground as a child of this
/// process, with its own control socket, pid file and log; killed on drop.
#[derive(Debug)]
pub struct Bird {
    /// Its namespace.
    pub ns: String,
    /// Its control socket (`birdc -s`).
    pub socket: PathBuf,
    /// Its log file (the config's `log`, and what it prints).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Writes `config` to `<dir>/<name>.conf` and starts `bird -f -c CONF -s
    /// SOCK -P PIDFILE` in namespace `ns`. `config` should log to
    /// [`Bird::log_path`] ([`super::log_to_file`]).
    pub fn start(ns: &str, dir: &Path, name: &str, config: &str) -> Result<Bird, RoutingError> {
        let file = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RoutingError::File { path, source }
        };
        let conf = dir.join(format!("{name}.conf"));
        fs::write(&conf, config).map_err(file(&conf))?;
        let socket = dir.join(format!("{name}.ctl"));
        let log = Bird::log_path(dir, name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(file(&log))?;
        let err = out.try_clone().map_err(file(&log))?;
        // `ip netns exec` execs bird: the child's pid is BIRD's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bird_program("bird"))
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join(format!("{name}.pid")))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| RoutingError::Spawn {
                ns: ns.to_string(),
                source,
            })?;
        Ok(Bird {
            ns: ns.to_string(),
            socket,
            log,
            child: Some(child),
        })
    }

    /// The log file of the BIRD named `name` in `dir`.
    pub fn log_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }

    /// `birdc -s SOCK <command>`: what BIRD answered.
    pub fn birdc(&self, command: &str) -> Result<String, RoutingError> {
        let mut args = vec!["-s".to_string(), self.socket.display().to_string()];
        args.extend(command.split_whitespace().map(str::to_string));
        Ok(command::run(
            &bird_program("birdc"),
            &args,
            None,
            COMMAND_LIMIT,
        )?)
    }

    /// `show protocols`: each protocol's name, state and info column (`up`
    /// and `Established` for a BGP session that is up).
    pub fn protocols(&self) -> Result<Vec<Protocol>, RoutingError> {
        let text = self.birdc("show protocols")?;
        Ok(parse_protocols(&text))
    }

    /// Whether BIRD still runs (an exited, unreaped one does not).
    pub fn running(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(") ")?.1.chars().next()? != 'Z'))
            .unwrap_or(false)
    }

    /// `birdc` while waiting on BIRD: a failure is "not yet" (`Ok(Err)`)
    /// while BIRD runs (it makes its control socket a moment after it
    /// starts), and ends the wait once it has exited.
    fn birdc_waiting(&self, command: &str) -> Result<Result<String, String>, RoutingError> {
        match self.birdc(command) {
            Ok(text) => Ok(Ok(text)),
            Err(e) if self.running() => Ok(Err(e.to_string())),
            Err(e) => Err(RoutingError::Exited {
                ns: self.ns.clone(),
                last: e.to_string(),
                log: self.log_tail(20),
            }),
        }
    }

    /// Waits until every protocol in `names` is an Established BGP session.
    pub fn wait_established(&self, names: &[&str], limit: Duration) -> Result<(), RoutingError> {
        let what = format!("{}: BGP {names:?} established", self.ns);
        wait_for(&what, limit, || {
            let protocols = match self.birdc_waiting("show protocols")? {
                Ok(text) => parse_protocols(&text),
                Err(not_yet) => return Ok(Err(not_yet)),
            };
            let up = names.iter().all(|n| {
                protocols
                    .iter()
                    .any(|p| p.name == *n && p.state == "up" && p.info.starts_with("Established"))
            });
            Ok(if up {
                Ok(())
            } else {
                Err(format!("{protocols:?}"))
            })
        })
    }

    /// Waits until BIRD's BFD sessions to each of `peers` are Up.
    pub fn wait_bfd_up(&self, peers: &[IpAddr], limit: Duration) -> Result<(), RoutingError> {
        wait_for(&format!("{}: BFD up to {peers:?}", self.ns), limit, || {
            let text = match self.birdc_waiting("show bfd sessions")? {
                Ok(text) => text,
                Err(not_yet) => return Ok(Err(not_yet)),
            };
            let up = peers.iter().all(|peer| {
                text.lines().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.first() == Some(&peer.to_string().as_str()) && words.contains(&"Up")
                })
            });
            Ok(if up { Ok(()) } else { Err(text) })
        })
    }

    /// Stops BIRD as systemd does (SIGTERM: it closes its BGP sessions with
    /// a notification) and reaps it, waiting at most `limit`.
    pub fn stop(&mut self, limit: Duration) -> Result<(), RoutingError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            tracing::warn!(ns = %self.ns, error = %e, "cannot signal bird");
        }
        let what = format!("bird in {}", self.ns);
        command::wait_bounded(&mut child, limit, &what)?;
        Ok(())
    }

    /// Ends BIRD at once (SIGKILL: no BGP notification, no BFD farewell,
    /// as when its host dies) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot kill bird");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot reap bird");
            }
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        procs::log_tail(&self.log, lines)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line of `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Its name.
    pub name: String,
    /// Its protocol (`BGP`, `Kernel`, ...).
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// The info column (`Established`, `Active`, an error).
    pub info: String,
}

/// Reads `birdc show protocols`: `Name Proto Table State Since Info`, the
/// since column being a time of day (one word).
pub fn parse_protocols(text: &str) -> Vec<Protocol> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            if words.len() < 5 || words[0] == "Name" {
                return None;
            }
            Some(Protocol {
                name: words[0].to_string(),
                proto: words[1].to_string(),
                state: words[3].to_string(),
                info: words[5..].join(" "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_read() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     21:12:47.314  \n\
            edge1_v4   BGP        ---        up     21:12:51.575  Established   \n\
            edge2_v4   BGP        ---        start  21:13:05.034  Active        Error: BFD session down\n";
        let p = parse_protocols(text);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "edge1_v4");
        assert_eq!(p[1].state, "up");
        assert_eq!(p[1].info, "Established");
        assert_eq!(p[2].info, "Active Error: BFD session down");
    }
}
