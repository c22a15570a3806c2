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

/// `count` consecutive free loopback ports below the kernel's ephemeral range (the
/// thousands of client connections of the other tests take ports in that range, and one
/// of them could take a port between the kill and the restart). Bounded tries.
fn free_ports(count: u16) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    assert!(ephemeral_low > 10_000 + count, "the ephemeral range starts at {ephemeral_low}");
    let span = (ephemeral_low - 10_000 - count) as u32;
    // Different test processes start their search at different ports.
    let mut base = 10_000 + (std::process::id() * 7919 % span) as u16;
    for _ in 0..200 {
        let bound: Result<Vec<_>, _> = (0..count).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
        if bound.is_ok() {
            return base;
        }
        base = 10_000 + ((base - 10_000 + count) as u32 % span) as u16;
    }
    panic!("no {count} consecutive free ports found below {ephemeral_low} in 200 tries");
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
    // And one on the admin port, answered (HTTP keep-alive keeps it open).
    let mut admin = raw(first.admin.expect("admin port"));
    admin.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = [0u8; 12];
    admin.read_exact(&mut answer).expect("admin answer");
    assert_eq!(&answer, b"HTTP/1.1 200", "the admin port answers");
    clients.push(admin);
    let dir = first.kill();
    // The kernel closed the dead server's sockets (FIN); the clients close in turn.
    for mut c in clients.drain(..) {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("read the end");
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

// ---------------------------------------------------------------------------------------
// Abusive connections
// ---------------------------------------------------------------------------------------

/// A request header, byte by byte (magic, version 1, opcode, request id, body length,
/// op count).
fn header(opcode: u8, request_id: u64, op_count: u16, body_len: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"SCAP");
    h[4] = 1;
    h[5] = opcode;
    h[8..16].copy_from_slice(&request_id.to_le_bytes());
    h[16..20].copy_from_slice(&body_len.to_le_bytes());
    h[20..22].copy_from_slice(&op_count.to_le_bytes());
    h
}

/// A pool_list request for every pool that fits in one answer (body: start_after 0,
/// limit 0, reserved).
fn pool_list(request_id: u64) -> Vec<u8> {
    let mut f = header(0x22, request_id, 1, 8).to_vec();
    f.extend_from_slice(&[0u8; 8]);
    f
}

/// The soft limit on open files raised to at least `want` (the server inherits it).
fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0, "getrlimit");
    if limit.rlim_cur < want {
        limit.rlim_cur = want.min(limit.rlim_max);
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "setrlimit");
    }
    assert!(limit.rlim_cur >= want, "the open-file limit is {} (hard limit), below {want}", limit.rlim_max);
}

/// Connections the server counts open, over all cores.
fn open_connections(c: &mut shardcap::client::Client) -> u64 {
    c.server_stats().expect("server stats").iter().map(|s| s.connections_open).sum()
}

/// Polls until the server counts `want` open connections; answers the last count.
fn wait_open(c: &mut shardcap::client::Client, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let open = open_connections(c);
        if open == want || Instant::now() >= deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client of the shared port with a read timeout.
fn good_client(server: &Server) -> shardcap::client::Client {
    let mut c = server.client();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c
}

/// A well-behaved client is served: a ping, and a reserve of one unit of pool 1.
fn assert_served(c: &mut shardcap::client::Client, id: u128) {
    c.ping().expect("ping");
    let results = c.reserve(&[common::reserve(id, 7, 1, 1, 0)]).expect("reserve");
    assert_eq!(results[0].status, shardcap::protocol::Status::Ok as u8, "{results:?}");
}

/// The next read ends the connection (end of stream or reset) within `IO_TIMEOUT`, after
/// whatever answers were still on their way.
fn assert_ends(s: &mut TcpStream, what: &str) {
    let mut sink = vec![0u8; 64 << 10];
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: the connection did not end: {e}"),
        }
    }
    panic!("{what}: the connection still delivered bytes after {IO_TIMEOUT:?}");
}

/// Clients that send requests and never read the answers: each request (a pool_list of 200
/// pools, about 14 KB of answer for 40 bytes) is answered into the connection's output
/// buffer, which is bounded; once it is full the server reads no further request, and when
/// the client takes nothing for `write_stall_timeout_ms` the connection is closed. The
/// server's resident memory stays flat meanwhile, and other clients are served.
#[test]
fn clients_that_never_read_are_closed_and_the_server_memory_stays_flat() {
    let mut extra = "[durability]\nmode = \"none\"\n[limits]\nholds_max_per_core = 100000\nretention_bytes_max_per_core = 16777216\n\
                     output_buffer_max_bytes = 65536\nwrite_stall_timeout_ms = 500\n"
        .to_string();
    for n in 0..200 {
        extra += &pool(&format!("pool-{n}"), 1000);
    }
    let server = Server::start(2, &extra);
    let mut good = good_client(&server);
    assert_served(&mut good, 1);
    let before = server.rss_kib();
    // 1 MiB of requests each (more than the server reads before its answers fill the
    // sockets' buffers); a write the server does not take within 500 ms ends the sending.
    let burst: Vec<u8> = (0..1024).flat_map(pool_list).collect();
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = raw(server.addr);
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut sent = 0usize;
        while sent < 1 << 20 {
            // Frames stay whole: the next write goes on where the last one stopped.
            match s.write(&burst[sent % burst.len()..]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        stalled.push(s);
    }
    assert_served(&mut good, 2);
    // The stalled connections are closed; the peak memory while they wait is noted.
    let mut peak = server.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open = open_connections(&mut good);
    while open != 1 && Instant::now() < deadline {
        peak = peak.max(server.rss_kib());
        std::thread::sleep(Duration::from_millis(20));
        open = open_connections(&mut good);
    }
    peak = peak.max(server.rss_kib());
    let grew = peak.saturating_sub(before);
    eprintln!("never-reading clients: RSS before {before} KiB, peak {peak} KiB (+{grew} KiB for 8 connections)");
    assert_eq!(open, 1, "the server still has {} connections that never read open after 15 s", open - 1);
    for (n, s) in stalled.iter_mut().enumerate() {
        assert_ends(s, &format!("stalled connection {n}"));
    }
    assert_served(&mut good, 3);
    assert!(grew < 16 << 10, "the server's RSS grew by {grew} KiB for 8 connections that never read");
}

/// A thousand connections send half a header and stall: each is closed once its partial
/// frame is `frame_read_timeout_ms` old (not before), while other clients are served and
/// a frame that arrives in two pieces within the timeout is answered. Each stalled
/// connection costs little memory, and the memory is returned when they close.
#[test]
fn half_headers_are_closed_after_the_frame_read_timeout() {
    const STALLED: u64 = 1000;
    const TIMEOUT_MS: u64 = 4000;
    raise_fd_limit(2 * STALLED + 512);
    let extra = format!(
        "[durability]\nmode = \"none\"\n[limits]\nholds_max_per_core = 100000\nretention_bytes_max_per_core = 16777216\nframe_read_timeout_ms = {TIMEOUT_MS}\n{}",
        pool("tickets", 1000)
    );
    let server = Server::start(2, &extra);
    let mut good = good_client(&server);
    assert_served(&mut good, 1);
    let before = server.rss_kib();
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|n| {
            let mut s = raw(server.addr);
            s.write_all(&ping(n)[..16]).expect("half a header");
            s
        })
        .collect();
    let open = wait_open(&mut good, STALLED + 1, Duration::from_millis(TIMEOUT_MS * 3 / 4));
    assert_eq!(open, STALLED + 1, "the server counts {open} connections, not {}", STALLED + 1);
    let during = server.rss_kib();
    // Others are served meanwhile, also a frame that arrives in two pieces in time.
    assert_served(&mut good, 2);
    assert_served(&mut good_client(&server), 3);
    let mut slow = raw(server.addr);
    let whole = ping(77);
    slow.write_all(&whole[..16]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    slow.write_all(&whole[16..]).unwrap();
    let mut answer = [0u8; 32];
    slow.read_exact(&mut answer).expect("the ping sent in two pieces is answered");
    assert_eq!((answer[5], answer[22]), (0x02, 0), "{answer:?}");
    // The first stalled connection ends at its timeout, not before.
    let mut byte = [0u8; 1];
    assert_eq!(stalled[0].read(&mut byte).expect("read the end"), 0, "closed without an answer");
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(TIMEOUT_MS), "closed after {waited:?}, before the timeout");
    let open = wait_open(&mut good, 2, Duration::from_secs(10));
    assert_eq!(open, 2, "{} stalled connections are still open", open - 2);
    for (n, s) in stalled.iter_mut().enumerate().skip(1) {
        assert_eq!(s.read(&mut byte).unwrap_or_else(|e| panic!("stalled {n}: {e}")), 0, "stalled {n} ends");
    }
    drop(stalled);
    let after = server.rss_kib();
    let per_connection = during.saturating_sub(before) * 1024 / STALLED;
    eprintln!(
        "half headers: RSS before {before} KiB, with {STALLED} stalled {during} KiB ({per_connection} bytes each), after {after} KiB"
    );
    assert!(per_connection < 16 << 10, "a stalled connection costs {per_connection} bytes");
    assert!(after < before + (8 << 10), "RSS {after} KiB after the stalled connections closed (before: {before} KiB)");
    assert_served(&mut good, 4);
}

/// What an idle connection costs the server: a thousand connections that each had a frame
/// answered, then wait. Their memory is returned when they close.
#[test]
fn idle_connections_cost_little_memory_and_return_it() {
    const IDLE: u64 = 1000;
    raise_fd_limit(2 * IDLE + 512);
    let extra = format!("[durability]\nmode = \"none\"\n{}", pool("tickets", 1000));
    let server = Server::start(2, &extra);
    let mut good = good_client(&server);
    assert_served(&mut good, 1);
    let before = server.rss_kib();
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| raw(server.addr)).collect();
    for (n, s) in idle.iter_mut().enumerate() {
        ping_ok(s, n as u64);
    }
    let open = wait_open(&mut good, IDLE + 1, Duration::from_secs(10));
    assert_eq!(open, IDLE + 1);
    let during = server.rss_kib();
    drop(idle);
    let open = wait_open(&mut good, 1, Duration::from_secs(10));
    assert_eq!(open, 1, "{} closed connections are still counted open", open - 1);
    let after = server.rss_kib();
    let per_connection = during.saturating_sub(before) * 1024 / IDLE;
    eprintln!(
        "idle connections: RSS before {before} KiB, with {IDLE} idle {during} KiB ({per_connection} bytes each), after closing {after} KiB"
    );
    assert!(per_connection < 16 << 10, "an idle connection costs {per_connection} bytes");
    assert!(after < before + (8 << 10), "RSS {after} KiB after the idle connections closed (before: {before} KiB)");
}

/// Reads the answer to a connection that was refused: an error frame `busy` with the
/// retry hint, request id 0, then the end of the connection.
fn assert_refused_busy(s: &mut TcpStream, what: &str) {
    let mut head = [0u8; 32];
    s.read_exact(&mut head).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    let body_len = u32::from_le_bytes(head[16..20].try_into().unwrap()) as usize;
    let mut body = vec![0u8; body_len];
    s.read_exact(&mut body).unwrap_or_else(|e| panic!("{what}: no body: {e}"));
    assert_eq!(
        (head[5], head[22], u64::from_le_bytes(head[8..16].try_into().unwrap())),
        (0xFF, shardcap::protocol::Status::Busy as u8, 0),
        "{what}: {head:?}"
    );
    assert_eq!(u32::from_le_bytes(head[24..28].try_into().unwrap()), 40, "{what}: retry_after_ms");
    assert_eq!(std::str::from_utf8(&body), Ok("connections_max_per_core reached"), "{what}");
    assert_ends(s, what);
}

/// A flood of connections past `connections_max_per_core` on both cores: every one of them
/// is answered `busy` (the documented error frame) and closed; the established connections
/// carry on, and the server's memory does not grow with the flood.
#[test]
fn a_connection_flood_past_the_limit_is_refused_and_established_ones_carry_on() {
    const FLOOD: usize = 500;
    raise_fd_limit(2 * FLOOD as u64 + 512);
    let extra = format!(
        "[durability]\nmode = \"none\"\n[limits]\nholds_max_per_core = 100000\nretention_bytes_max_per_core = 16777216\nconnections_max_per_core = 50\nbusy_retry_after_ms = 40\n{}",
        pool("tickets", 100_000)
    );
    let server = Server::start(2, &extra);
    let mut good = good_client(&server);
    // The cores filled: 99 more connections through the shared port (one core has the
    // good client), each answering a ping.
    let mut established: Vec<TcpStream> = (0..99).map(|_| raw(server.addr)).collect();
    for (n, s) in established.iter_mut().enumerate() {
        ping_ok(s, n as u64);
    }
    assert_eq!(open_connections(&mut good), 100);
    let before = server.rss_kib();
    let mut flood: Vec<TcpStream> = (0..FLOOD).map(|_| raw(server.addr)).collect();
    for (n, s) in flood.iter_mut().enumerate() {
        assert_refused_busy(s, &format!("flood connection {n}"));
    }
    drop(flood);
    let after = server.rss_kib();
    for (n, s) in established.iter_mut().enumerate() {
        ping_ok(s, 1000 + n as u64);
    }
    assert_served(&mut good, 1);
    assert_eq!(open_connections(&mut good), 100);
    eprintln!("connection flood: RSS before {before} KiB, after {FLOOD} refused connections {after} KiB");
    assert!(after < before + (8 << 10), "RSS {after} KiB after the flood (before: {before} KiB)");
}

/// Once a core is at `connections_max_per_core`, connections of the shared port that the
/// kernel hands it go on to the core with room: core 0 filled through its own port, twenty
/// connections of the shared port are all served (by core 1). With both cores full, the
/// shared port and core 0's port answer `busy`.
#[test]
fn a_full_core_passes_shared_port_connections_to_one_with_room() {
    let extra = format!(
        "[durability]\nmode = \"none\"\n[limits]\nholds_max_per_core = 100000\nretention_bytes_max_per_core = 16777216\nconnections_max_per_core = 20\nbusy_retry_after_ms = 40\n{}",
        pool("tickets", 1000)
    );
    let server = Server::start(2, &extra);
    let core0 = SocketAddr::from(([127, 0, 0, 1], server.core_ports[0]));
    let mut on_core0: Vec<TcpStream> = (0..20).map(|_| raw(core0)).collect();
    for (n, s) in on_core0.iter_mut().enumerate() {
        ping_ok(s, n as u64);
    }
    let mut shared: Vec<TcpStream> = (0..20).map(|_| raw(server.addr)).collect();
    for (n, s) in shared.iter_mut().enumerate() {
        ping_ok(s, 100 + n as u64);
    }
    // Forty connections are served with twenty per core: the shared port's went to core 1.
    assert_refused_busy(&mut raw(server.addr), "the shared port with both cores full");
    assert_refused_busy(&mut raw(core0), "core 0's port when full");
    // Room again on core 1: the shared port serves again.
    drop(shared.pop());
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut again = loop {
        let mut s = raw(server.addr);
        s.write_all(&ping(500)).unwrap();
        let mut answer = [0u8; 32];
        if s.read_exact(&mut answer).is_ok() && answer[5] == 0x02 {
            break s;
        }
        assert!(Instant::now() < deadline, "no room on the shared port after a connection closed");
        std::thread::sleep(Duration::from_millis(20));
    };
    ping_ok(&mut again, 501);
    for (n, s) in on_core0.iter_mut().chain(shared.iter_mut()).enumerate() {
        ping_ok(s, 1000 + n as u64);
    }
}
