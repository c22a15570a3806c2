//! End-to-end tests of how the real server bounds what connections can cost it, and of a
//! restart on the same ports after a crash.
//!
//! How it works: each test starts the `shardcap` binary (through `common::Server`, on
//! loopback) and abuses it the way a careless or hostile client would: it never reads its
//! answers, it sends half a header and stalls (hundreds of times over), it opens more
//! connections than a core takes. Each test asserts the documented answer (a closed
//! connection, a `busy` error frame) and that well-behaved clients are served meanwhile;
//! the server's resident memory (VmRSS in /proc) is read before and after. The restart
//! test kills a server with SIGKILL while client connections are open, lets the clients
//! close (the dead server's side of each connection is left in TIME_WAIT), and starts a new
//! server on the same ports at once; a second server on ports in use must still refuse.
//!
//! Every socket has read and write timeouts, every loop is bounded in count and time, and
//! waits poll a condition with a deadline.

#![cfg(feature = "server")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{Ports, Server, pool, temp_data_dir};

/// Bound on every read and write of a test socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw connection with read and write timeouts.
fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// `count` consecutive free loopback ports (the first one chosen by the OS). Bounded tries.
fn free_ports(count: u16) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base.checked_add(count).is_none() {
            continue;
        }
        let rest: Result<Vec<_>, _> = (1..count).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
        if rest.is_ok() {
            return base;
        }
    }
    panic!("no {count} consecutive free ports found in 50 tries");
}

/// A 32-byte ping request.
fn ping(request_id: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"SCAP");
    h[4] = 1;
    h[5] = 0x02;
    h[8..16].copy_from_slice(&request_id.to_le_bytes());
    h
}

/// Sends a ping and reads its 32-byte answer.
fn ping_ok(s: &mut TcpStream, request_id: u64) {
    s.write_all(&ping(request_id)).expect("send ping");
    let mut answer = [0u8; 32];
    s.read_exact(&mut answer).expect("read the ping's answer");
    assert_eq!((&answer[0..4], answer[5], answer[22]), (&b"SCAP"[..], 0x02, 0), "ping answer {answer:?}");
    assert_eq!(u64::from_le_bytes(answer[8..16].try_into().unwrap()), request_id);
}

/// SIGKILL with client connections open on every data port, the clients close (leaving
/// the dead server's side of each connection in TIME_WAIT), and a new server starts on the
/// same ports within a second. While it runs, a second server on its ports is refused.
#[test]
fn a_killed_server_restarts_at_once_on_its_ports_and_a_second_one_is_refused() {
    let base = free_ports(4);
    let ports = Ports { listen: base, core_port_base: base + 1, admin: base + 3 };
    let dir = temp_data_dir();
    let extra = pool("tickets", 100);
    let first = Server::try_start_on(2, &extra, &dir, ports).expect("first start");
    assert_eq!((first.addr.port(), first.core_ports.clone()), (base, vec![base + 1, base + 2]));
    let mut clients: Vec<TcpStream> =
        [base, base + 1, base + 2].iter().map(|&p| raw(SocketAddr::from(([127, 0, 0, 1], p)))).collect();
    for (n, c) in clients.iter_mut().enumerate() {
        ping_ok(c, n as u64 + 1);
    }
    let dir = first.kill();
    // The kernel closed the dead server's sockets (FIN); the clients close in turn.
    for mut c in clients.drain(..) {
        let mut byte = [0u8; 1];
        assert_eq!(c.read(&mut byte).expect("read the end"), 0, "the killed server's connection ended");
        drop(c);
    }
    let started = Instant::now();
    let second = match Server::try_start_on(2, &extra, &dir, ports) {
        Ok(s) => s,
        Err(stderr) => panic!("the restart on the same ports failed:\n{stderr}"),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the restart took {took:?}");
    let mut c = raw(second.addr);
    ping_ok(&mut c, 9);

    // A second live server on the same ports is a real conflict: refused, naming the port.
    // (Its admin port is another: the admin port is bound first and would fail first.)
    let refused = Server::try_start_on(2, &extra, &temp_data_dir(), Ports { admin: 0, ..ports });
    let Err(stderr) = refused else { panic!("a second server started on ports in use") };
    assert!(stderr.contains(&format!("cannot bind 127.0.0.1:{base}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    // The first one still serves.
    ping_ok(&mut c, 10);
    let mut c = raw(SocketAddr::from(([127, 0, 0, 1], base + 1)));
    ping_ok(&mut c, 11);
}
