//! The real table: flows made by real sockets, listed and deleted through
//! ctnetlink, in a network namespace of the test thread's own (`unshare`,
//! gone with the thread). Needs root and `ip` and `nft` (conntrack only
//! tracks a namespace once a rule there uses it); skips loudly otherwise
//! and fails under `CI=true`.

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;

use portico_conntrack::{Conntrack, Flow, Netlink, Protocol};

fn privileged(what: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["nft", "ip"].iter().all(|tool| {
        Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    let why = format!(
        "SKIPPED {what}: needs root and the nft and ip programs (root={root}, tools={tools})"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping");
    }
    writeln!(std::io::stderr(), "{why}").expect("stderr");
    false
}

/// Runs `f` on a thread in a new, empty network namespace with `lo` up and
/// connection tracking on (a rule that uses it). Programs started from
/// that thread run in the namespace too.
fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                run("ip", &["link", "set", "lo", "up"], None);
                run(
                    "nft",
                    &["-f", "-"],
                    Some(concat!(
                        "table inet track {\n",
                        "  chain out {\n",
                        "    type filter hook output priority 0;\n",
                        "    ct state new accept\n",
                        "  }\n",
                        "}\n",
                    )),
                );
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// One datagram from a new client socket to `server`, and its answer; the
/// client socket (kept open, its port is not reused meanwhile).
fn exchange(server: &UdpSocket) -> UdpSocket {
    let any: SocketAddr = match server.local_addr().expect("addr") {
        SocketAddr::V4(_) => "127.0.0.1:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::1]:0".parse().unwrap(),
    };
    let client = UdpSocket::bind(any).expect("bind client");
    client
        .send_to(b"ping", server.local_addr().expect("addr"))
        .expect("send");
    let mut buf = [0u8; 16];
    let (_, from) = server.recv_from(&mut buf).expect("server receives");
    server.send_to(b"pong", from).expect("answer");
    client.recv_from(&mut buf).expect("client receives");
    client
}

fn find(flows: &[Flow], client: SocketAddr, server: SocketAddr) -> Option<Flow> {
    flows
        .iter()
        .find(|f| f.original.src == client && f.original.dst == server)
        .cloned()
}

#[test]
fn udp_flows_are_listed_and_deleted_in_both_families() {
    if !privileged("udp_flows_are_listed_and_deleted_in_both_families") {
        return;
    }
    in_new_netns(|| {
        let table = Netlink::new();
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let server = UdpSocket::bind(local).expect("bind server");
            let server_addr = server.local_addr().expect("addr");
            let client = exchange(&server).local_addr().expect("addr");

            let flows = table.list(Protocol::Udp).expect("list");
            let flow = find(&flows, client, server_addr)
                .unwrap_or_else(|| panic!("{client} -> {server_addr} not in {flows:#?}"));
            assert_eq!(flow.protocol, Protocol::Udp);
            assert_eq!(
                flow.reply.src, server_addr,
                "not translated: the reply comes from the server"
            );
            assert_eq!(flow.reply.dst, client);
            assert!(flow.replied, "{flow:?}");
            assert!(flow.id.is_some(), "{flow:?}");
            assert!(
                find(
                    &table.list(Protocol::Tcp).expect("list"),
                    client,
                    server_addr
                )
                .is_none(),
                "a UDP flow is not listed as TCP"
            );

            // A delete naming another entry's id leaves this one alone.
            let mut other = flow.clone();
            other.id = flow.id.map(|id| id.wrapping_add(1));
            assert_eq!(table.delete(&[other]).expect("delete"), 0);
            assert!(find(
                &table.list(Protocol::Udp).expect("list"),
                client,
                server_addr
            )
            .is_some());

            assert_eq!(
                table.delete(std::slice::from_ref(&flow)).expect("delete"),
                1
            );
            assert!(
                find(
                    &table.list(Protocol::Udp).expect("list"),
                    client,
                    server_addr
                )
                .is_none(),
                "{flow} still listed after its delete"
            );
            // Already gone: not an error, not counted.
            assert_eq!(table.delete(&[flow]).expect("delete again"), 0);
        }
    });
}

#[test]
fn many_flows_are_deleted_in_batches() {
    if !privileged("many_flows_are_deleted_in_batches") {
        return;
    }
    in_new_netns(|| {
        let table = Netlink::new();
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind server");
        let server_addr = server.local_addr().expect("addr");
        // More than one batch of requests, and more than one datagram of
        // dump answers.
        let clients: Vec<UdpSocket> = (0..300).map(|_| exchange(&server)).collect();
        let mut want: Vec<SocketAddr> = clients
            .iter()
            .map(|c| c.local_addr().expect("addr"))
            .collect();
        want.sort();
        let ours: Vec<Flow> = table
            .list(Protocol::Udp)
            .expect("list")
            .into_iter()
            .filter(|f| f.original.dst == server_addr)
            .collect();
        let mut listed: Vec<SocketAddr> = ours.iter().map(|f| f.original.src).collect();
        listed.sort();
        assert_eq!(listed, want, "every client's flow listed once");
        assert_eq!(table.delete(&ours).expect("delete"), clients.len());
        let left = table
            .list(Protocol::Udp)
            .expect("list")
            .into_iter()
            .filter(|f| f.original.dst == server_addr)
            .count();
        assert_eq!(left, 0);
    });
}
