//! End-to-end tests of how the real server answers bad input on the wire.
//!
//! How it works: each test starts the `shardcap` binary (through `common::Server`, on
//! loopback with OS-chosen ports) with small limits (`frame_size_max_bytes = 4096`,
//! `batch_operations_max = 16`) and one pool, `tickets`, which gets id 1 as the first pool
//! declared. The tests talk to it with plain `std::net::TcpStream`s and exact bytes built by
//! hand from the documented layout (32-byte little-endian header: magic `SCAP` @0, version
//! @4, opcode @5, flags @6, request_id @8, body_len @16, op_count @20, status @22,
//! reserved @23, retry_after_ms @24, reserved @28), not with the library's encoder, so that
//! the wire format itself is under test.
//!
//! For every kind of bad input a test asserts the exact answer: one error frame (opcode
//! 0xFF, flag RESPONSE, op_count 0, the exact status byte, the request id echoed when the
//! header could be read and 0 otherwise, a UTF-8 message as body; the parser's and the
//! connection's messages are compared exactly), then that the server closes the connection (the next read returns 0
//! bytes), and then that the server is still healthy: on a NEW connection a
//! `shardcap::client::Client` reserves one unit of `tickets` and gets status `ok`, and the
//! server's peak resident memory (VmHWM in /proc; the server is the only child process of
//! the test's thread) stayed under 256 MiB: refused input must not make it allocate.
//! Further tests cover a frame split over several writes, pipelined frames, and `busy`
//! for too many connections and for too many frames in flight on one connection.
//!
//! Every socket has a read timeout of 10 s (the `Client` handshake, which cannot take a
//! timeout before it runs, is bounded by a watchdog), so a hung server fails a test instead
//! of hanging it; every loop is bounded. The only waits are the 50 ms pauses that make a
//! split frame really arrive in pieces, and the bounded poll that waits for the server to
//! count a closed connection as closed.
//!
//! Two tests, `bad_magic_http_request` and `frame_too_large_huge_body_len`, guard against a
//! fixed bug: after refusing a header, the server grew its input buffer to `32 + body_len`
//! of the refused header (up to 4 GiB, zero-filled) before it answered.

#![cfg(feature = "server")]

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{Server, pool, users_on};
use shardcap::client::Client;
use shardcap::protocol::control::PoolRef;
use shardcap::protocol::{OpResult, ReservationState, ReserveOp, Status, decode_batch_results};

/// Bound on every read (and on the client handshake).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The pool every configuration declares.
const POOL: &str = "tickets";
/// Its id: it is the first pool declared, and ids start at 1.
const POOL_ID: u32 = 1;
/// `limits.frame_size_max_bytes` of the test configuration (the smallest allowed).
const FRAME_MAX: u32 = 4096;
/// `limits.batch_operations_max` of the test configuration.
const BATCH_MAX: u16 = 16;
/// `limits.busy_retry_after_ms` where a test expects `busy`.
const RETRY_AFTER_MS: u32 = 40;

const HEADER: usize = 32;
const RESERVE_RECORD: usize = 48;
const EXTEND_RECORD: usize = 48;
const OP_RESULT: usize = 24;
const FLAG_RESPONSE: u16 = 1;

const OP_HELLO: u8 = 0x01;
const OP_PING: u8 = 0x02;
const OP_RESERVE: u8 = 0x10;
const OP_EXTEND: u8 = 0x13;
const OP_POOL_CREATE: u8 = 0x20;
const OP_POOL_STATUS: u8 = 0x21;
const OP_POOL_LIST: u8 = 0x22;
const OP_SERVER_STATS: u8 = 0x30;
const OP_ERROR: u8 = 0xFF;

// The parser's messages (src/protocol/frame.rs).
const MSG_BAD_MAGIC: &str = "frame does not start with SCAP";
const MSG_VERSION: &str = "protocol version not supported";
const MSG_UNKNOWN_OPCODE: &str = "unknown opcode";
const MSG_ERROR_OPCODE: &str = "the error opcode is for responses only";
const MSG_RESERVED_HEADER: &str = "reserved header bytes must be zero";
const MSG_REQUEST_FIELDS: &str = "request flags, status and retry_after_ms must be zero";
const MSG_TOO_LARGE: &str = "frame exceeds frame_size_max_bytes";
const MSG_TOO_MANY: &str = "op_count exceeds batch_operations_max";
const MSG_BODY_SIZE: &str = "body size does not match the opcode and op_count";
// The connection's messages for a frame the parser accepted (src/net/connection.rs).
const MSG_RESERVED_RECORD: &str = "reserved bytes of a record must be zero";
const MSG_MALFORMED_BODY: &str = "malformed body";

// ---------------------------------------------------------------------------------------
// Servers and connections
// ---------------------------------------------------------------------------------------

/// The configuration most tests use: small frame and batch limits, one pool.
fn small_limits() -> String {
    format!(
        "[limits]\nholds_max_per_core = 100000\nframe_size_max_bytes = {FRAME_MAX}\nbatch_operations_max = {BATCH_MAX}\n{}",
        pool(POOL, 1000)
    )
}

/// A 2-core server with [`small_limits`].
fn start() -> Server {
    Server::start(2, &small_limits())
}

/// A raw connection with read and write timeouts.
fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Core `core`'s own port.
fn core_addr(server: &Server, core: u16) -> SocketAddr {
    SocketAddr::new(server.addr.ip(), server.core_ports[core as usize])
}

/// A raw connection to the shared port that has already sent `bytes`.
fn raw_sent(server: &Server, bytes: &[u8]) -> TcpStream {
    let mut s = raw(server.addr);
    s.write_all(bytes).expect("send");
    s
}

/// A `Client` (handshake done) with a read timeout. `Client::connect` reads the handshake
/// answer before a timeout can be set, so it runs on a helper thread bounded by
/// `READ_TIMEOUT`.
fn client(addr: SocketAddr) -> Client {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Client::connect(addr).map(|mut c| {
            c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
            c
        }));
    });
    match rx.recv_timeout(READ_TIMEOUT) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("client handshake with {addr} failed: {e}"),
        Err(_) => panic!("client handshake with {addr} did not finish within {READ_TIMEOUT:?}"),
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1_000);

/// A reservation id not used before in this test binary.
fn fresh_id() -> u128 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed) as u128
}

/// Reserves one unit of `tickets` through `c` and asserts it is held.
fn assert_reserve_ok(c: &mut Client) {
    let id = fresh_id();
    let op = ReserveOp { id, user: 0xA11CE, pool: POOL_ID, qty: 1, ttl_ms: 0, priority: 0 };
    let results = c.reserve(&[op]).expect("reserve on a healthy connection");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, Status::Ok as u8, "reserve {id} refused: {:?}", results[0]);
    assert_eq!(results[0].state, ReservationState::Held as u8, "reserve {id}: {:?}", results[0]);
}

/// Bound on the server's peak resident memory (it starts at about 40 MB): refused input
/// must not make it allocate for bodies it will never read.
const PEAK_RSS_MAX_KIB: u64 = 256 << 10;

/// The server's pid: the harness spawns it from the thread that calls `Server::start`, so
/// it is the only child of the test's thread.
fn server_pid() -> u32 {
    let text = std::fs::read_to_string("/proc/thread-self/children").expect("read /proc/thread-self/children");
    let pids: Vec<u32> = text.split_whitespace().map(|p| p.parse().expect("pid")).collect();
    assert_eq!(pids.len(), 1, "expected one server process started by this test thread, found {pids:?}");
    pids[0]
}

/// The server's peak resident memory so far (VmHWM) stayed under [`PEAK_RSS_MAX_KIB`].
fn assert_bounded_memory(what: &str) {
    let pid = server_pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the server's /proc status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    assert!(
        peak_kib < PEAK_RSS_MAX_KIB,
        "{what}: the server's peak RSS is {peak_kib} KiB (bound {PEAK_RSS_MAX_KIB} KiB)"
    );
}

/// The server still serves well-formed requests on a new connection: the configured pool
/// is listed under its id, and a reserve on it succeeds. Its memory stayed bounded.
fn assert_server_serves(server: &Server) {
    assert_bounded_memory("after the refusals");
    let mut c = client(server.addr);
    assert_eq!(c.pool_id(POOL).expect("pool list"), Some(POOL_ID), "pool '{POOL}' has id {POOL_ID}");
    assert_reserve_ok(&mut c);
}

// ---------------------------------------------------------------------------------------
// Raw frames
// ---------------------------------------------------------------------------------------

/// A valid request header, byte by byte.
fn header(opcode: u8, request_id: u64, op_count: u16, body_len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(b"SCAP");
    h[4] = 1;
    h[5] = opcode;
    h[8..16].copy_from_slice(&request_id.to_le_bytes());
    h[16..20].copy_from_slice(&body_len.to_le_bytes());
    h[20..22].copy_from_slice(&op_count.to_le_bytes());
    h
}

/// A request frame: a valid header for `body`, then `body`.
fn frame(opcode: u8, request_id: u64, op_count: u16, body: &[u8]) -> Vec<u8> {
    let mut out = header(opcode, request_id, op_count, body.len() as u32).to_vec();
    out.extend_from_slice(body);
    out
}

/// One reserve record: id u128 @0, user u128 @16, pool u32 @32, qty u32 @36, ttl_ms u32
/// @40 (0: the pool's default), priority u8 @44, reserved 3 bytes @45.
fn reserve_record(id: u128, user: u128, qty: u32) -> [u8; RESERVE_RECORD] {
    let mut r = [0u8; RESERVE_RECORD];
    r[0..16].copy_from_slice(&id.to_le_bytes());
    r[16..32].copy_from_slice(&user.to_le_bytes());
    r[32..36].copy_from_slice(&POOL_ID.to_le_bytes());
    r[36..40].copy_from_slice(&qty.to_le_bytes());
    r
}

/// A reserve frame of one unit per user, with fresh reservation ids.
fn reserve_frame(request_id: u64, users: &[u128]) -> Vec<u8> {
    let body: Vec<u8> = users.iter().flat_map(|&u| reserve_record(fresh_id(), u, 1)).collect();
    frame(OP_RESERVE, request_id, users.len() as u16, &body)
}

/// A pool_list body: start_after u32, limit u16 (0: as many as fit), reserved u16.
fn pool_list_frame(request_id: u64) -> Vec<u8> {
    frame(OP_POOL_LIST, request_id, 1, &[0u8; 8])
}

/// A response frame as read from the wire.
struct Reply {
    head: [u8; HEADER],
    body: Vec<u8>,
}

impl Reply {
    fn opcode(&self) -> u8 {
        self.head[5]
    }
    fn flags(&self) -> u16 {
        u16::from_le_bytes([self.head[6], self.head[7]])
    }
    fn request_id(&self) -> u64 {
        u64::from_le_bytes(self.head[8..16].try_into().unwrap())
    }
    fn op_count(&self) -> u16 {
        u16::from_le_bytes([self.head[20], self.head[21]])
    }
    fn status(&self) -> u8 {
        self.head[22]
    }
    fn retry_after_ms(&self) -> u32 {
        u32::from_le_bytes(self.head[24..28].try_into().unwrap())
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Reply {{ opcode: {:#04x}, flags: {}, request_id: {}, op_count: {}, status: {} ({:?}), retry_after_ms: {}, body: {:?} }}",
            self.opcode(),
            self.flags(),
            self.request_id(),
            self.op_count(),
            self.status(),
            Status::from_u8(self.status()),
            self.retry_after_ms(),
            String::from_utf8_lossy(&self.body),
        )
    }
}

/// Reads one whole response frame (header checked for magic, version and the reserved
/// bytes; body length bounded).
fn read_reply(s: &mut TcpStream, what: &str) -> Reply {
    let mut head = [0u8; HEADER];
    if let Err(e) = s.read_exact(&mut head) {
        panic!("{what}: no response header ({:?}: {e})", e.kind());
    }
    assert_eq!(&head[0..4], b"SCAP", "{what}: response magic");
    assert_eq!(head[4], 1, "{what}: response version");
    assert_eq!(head[23], 0, "{what}: reserved byte 23 of the response");
    assert_eq!(head[28..32], [0; 4], "{what}: reserved bytes 28..32 of the response");
    let body_len = u32::from_le_bytes(head[16..20].try_into().unwrap()) as usize;
    assert!(body_len <= 1 << 20, "{what}: response body_len {body_len} is absurd");
    let mut body = vec![0u8; body_len];
    if let Err(e) = s.read_exact(&mut body) {
        panic!("{what}: response body of {body_len} bytes not received ({:?}: {e})", e.kind());
    }
    let reply = Reply { head, body };
    assert_eq!(reply.flags() & FLAG_RESPONSE, FLAG_RESPONSE, "{what}: RESPONSE flag in {reply:?}");
    reply
}

/// The server has closed the connection: a read returns end of file, not data, not an
/// error, not a timeout.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: expected the server to close the connection, got {n} more bytes: {:?}", &buf[..n]),
        Err(e) => panic!("{what}: expected end of file after the error frame, got {:?}: {e}", e.kind()),
    }
}

/// Reads the error frame the server must answer with, checks every field, then checks
/// that the connection is closed. `message: None` accepts any non-empty UTF-8 message.
fn expect_refusal(s: &mut TcpStream, status: Status, request_id: u64, message: Option<&str>, what: &str) {
    let r = read_reply(s, what);
    assert_eq!(r.opcode(), OP_ERROR, "{what}: expected an error frame, got {r:?}");
    assert_eq!(r.status(), status as u8, "{what}: expected status {status} ({}), got {r:?}", status as u8);
    assert_eq!(r.flags(), FLAG_RESPONSE, "{what}: flags of {r:?}");
    assert_eq!(r.request_id(), request_id, "{what}: request id of {r:?}");
    assert_eq!(r.op_count(), 0, "{what}: op_count of {r:?}");
    if status != Status::Busy {
        assert_eq!(r.retry_after_ms(), 0, "{what}: retry_after_ms of {r:?}");
    }
    let text = std::str::from_utf8(&r.body).unwrap_or_else(|_| panic!("{what}: message is not UTF-8: {r:?}"));
    match message {
        Some(m) => assert_eq!(text, m, "{what}: message of {r:?}"),
        None => assert!(!text.is_empty(), "{what}: empty message in {r:?}"),
    }
    assert_closed(s, what);
}

/// Sends `bytes` on a new connection and expects the refusal, then the close.
fn refused(server: &Server, bytes: &[u8], status: Status, request_id: u64, message: Option<&str>, what: &str) {
    let mut s = raw_sent(server, bytes);
    expect_refusal(&mut s, status, request_id, message, what);
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The frame-level status numbers are part of the wire protocol and must not move.
#[test]
fn status_codes_on_the_wire() {
    let expected = [
        (Status::BadMagic, 1),
        (Status::UnsupportedVersion, 2),
        (Status::FrameTooLarge, 3),
        (Status::UnknownOpcode, 4),
        (Status::MalformedBody, 5),
        (Status::TooManyOperations, 6),
        (Status::Busy, 7),
        (Status::ReservedNotZero, 9),
    ];
    for (status, code) in expected {
        assert_eq!(status as u8, code, "{status}");
    }
}

/// An HTTP request sent to the data port. Its bytes 16..20 ("Host") read as a body_len of
/// 1,953,722,184: the frame is refused on its magic, and that number must not matter.
#[test]
fn bad_magic_http_request() {
    let server = start();
    refused(&server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "http");
    assert_bounded_memory("after an HTTP request");
    assert_server_serves(&server);
}

#[test]
fn bad_magic_garbage_and_short_http_line() {
    let server = start();
    // Shorter than a header: refused at once, without waiting for 32 bytes.
    refused(&server, b"GET / HTTP/1.0\r\n", Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "16-byte http line");
    // One byte that is not 'S', and two bytes whose second is not 'C': both already
    // mismatch the magic, so the server must not wait for more.
    refused(&server, b"X", Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "1 byte");
    refused(&server, b"SX", Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "2 bytes");
    refused(&server, b"SCA\x00", Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "4 bytes");
    // A magic in another byte order is still wrong.
    let mut swapped = header(OP_PING, 5, 0, 0);
    swapped[0..4].copy_from_slice(b"PACS");
    refused(&server, &swapped, Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "reversed magic");
    assert_server_serves(&server);
}

#[test]
fn unsupported_version() {
    let server = start();
    for version in [0u8, 2, 0xFF] {
        let mut h = header(OP_PING, 0x1122_3344_5566_7788, 0, 0);
        h[4] = version;
        let what = format!("version {version}");
        refused(&server, &h, Status::UnsupportedVersion, 0x1122_3344_5566_7788, Some(MSG_VERSION), &what);
    }
    // Five bytes are enough to see the version; the request id is not there yet, so 0.
    refused(&server, b"SCAP\x07", Status::UnsupportedVersion, 0, Some(MSG_VERSION), "version in a 5-byte prefix");
    assert_server_serves(&server);
}

#[test]
fn frame_too_large() {
    let server = start();
    let over = FRAME_MAX - HEADER as u32 + 1; // header + body = FRAME_MAX + 1
    // The header alone is refused: the server does not wait for a body it will not take.
    refused(&server, &header(OP_RESERVE, 31, 1, over), Status::FrameTooLarge, 31, Some(MSG_TOO_LARGE), "1 byte over");
    refused(&server, &header(OP_PING, 32, 0, 1 << 20), Status::FrameTooLarge, 32, Some(MSG_TOO_LARGE), "1 MiB ping");
    // Exactly at the limit the size check passes and the next check (body size for the
    // opcode) decides: a ping has no body.
    let at = FRAME_MAX - HEADER as u32;
    let mut s = raw(server.addr);
    s.write_all(&header(OP_PING, 33, 0, at)).unwrap();
    expect_refusal(&mut s, Status::MalformedBody, 33, Some(MSG_BODY_SIZE), "ping of exactly FRAME_MAX");
    assert_server_serves(&server);
}

/// A body_len near 4 GiB is refused like any oversize frame, and answered at once ("an
/// oversize or malformed frame is refused at once", src/protocol/frame.rs): the server must
/// not make room for a body it has refused.
#[test]
fn frame_too_large_huge_body_len() {
    let server = start();
    refused(&server, &header(OP_RESERVE, 34, 1, u32::MAX), Status::FrameTooLarge, 34, Some(MSG_TOO_LARGE), "u32::MAX");
    assert_bounded_memory("after a header with body_len u32::MAX");
    assert_server_serves(&server);
}

#[test]
fn unknown_opcode() {
    let server = start();
    for opcode in [0x00u8, 0x04, 0x15, 0x55, 0xFE] {
        let what = format!("opcode {opcode:#04x}");
        refused(&server, &header(opcode, 41, 0, 0), Status::UnknownOpcode, 41, Some(MSG_UNKNOWN_OPCODE), &what);
    }
    assert_server_serves(&server);
}

#[test]
fn error_opcode_sent_as_request() {
    let server = start();
    refused(&server, &header(OP_ERROR, 42, 0, 0), Status::UnknownOpcode, 42, Some(MSG_ERROR_OPCODE), "0xFF request");
    // With a message body, as a confused peer echoing an error frame might send it.
    let echo = frame(OP_ERROR, 43, 0, b"oops");
    refused(&server, &echo, Status::UnknownOpcode, 43, Some(MSG_ERROR_OPCODE), "0xFF request with a body");
    assert_server_serves(&server);
}

#[test]
fn too_many_operations() {
    let server = start();
    let count = BATCH_MAX + 1;
    // The frame fits in FRAME_MAX (32 + 17 * 48 = 848 bytes), so only op_count is wrong.
    let h = header(OP_RESERVE, 51, count, count as u32 * RESERVE_RECORD as u32);
    refused(&server, &h, Status::TooManyOperations, 51, Some(MSG_TOO_MANY), "17 reserves");
    let h = header(OP_RESERVE, 52, u16::MAX, 0);
    refused(&server, &h, Status::TooManyOperations, 52, Some(MSG_TOO_MANY), "65535 reserves, no body");
    // At the limit the batch is served.
    let users = vec![0xB0B; BATCH_MAX as usize];
    let mut s = raw_sent(&server, &reserve_frame(53, &users));
    let r = read_reply(&mut s, "16 reserves");
    assert_eq!((r.opcode(), r.status(), r.request_id(), r.op_count()), (OP_RESERVE, 0, 53, BATCH_MAX), "{r:?}");
    assert_eq!(r.body.len(), BATCH_MAX as usize * OP_RESULT);
    for (i, rec) in r.body.chunks_exact(OP_RESULT).enumerate() {
        assert_eq!(rec[0], Status::Ok as u8, "reserve {i} of 16: {:?}", OpResult::decode(rec));
    }
    assert_server_serves(&server);
}

#[test]
fn malformed_body_size() {
    let server = start();
    // Two records announced, one sent.
    let one = reserve_record(fresh_id(), 0xC0, 1);
    refused(
        &server,
        &frame(OP_RESERVE, 61, 2, &one),
        Status::MalformedBody,
        61,
        Some(MSG_BODY_SIZE),
        "2 ops, 1 record",
    );
    // One record announced, a record and a half sent.
    let mut long = one.to_vec();
    long.extend_from_slice(&[0; 24]);
    refused(&server, &frame(OP_RESERVE, 62, 1, &long), Status::MalformedBody, 62, Some(MSG_BODY_SIZE), "72-byte body");
    // A ping with a body.
    refused(&server, &frame(OP_PING, 63, 0, b"x"), Status::MalformedBody, 63, Some(MSG_BODY_SIZE), "ping with a body");
    assert_server_serves(&server);
}

#[test]
fn malformed_body_zero_operations() {
    let server = start();
    refused(&server, &frame(OP_RESERVE, 64, 0, &[]), Status::MalformedBody, 64, Some(MSG_BODY_SIZE), "0 reserves");
    refused(&server, &frame(OP_EXTEND, 65, 0, &[]), Status::MalformedBody, 65, Some(MSG_BODY_SIZE), "0 extends");
    assert_server_serves(&server);
}

/// Reserved bytes inside a record are answered `reserved_not_zero` (9), as
/// `Connection::batch` does, and the whole frame is refused before any of it is applied.
#[test]
fn reserved_bytes_in_records() {
    let server = start();
    for byte in 45..48 {
        // A valid first record, then one whose reserved byte is set.
        let mut body = reserve_record(fresh_id(), 0xD0, 1).to_vec();
        let mut bad = reserve_record(fresh_id(), 0xD1, 1);
        bad[byte] = 0x01;
        body.extend_from_slice(&bad);
        let what = format!("reserve record byte {byte}");
        refused(
            &server,
            &frame(OP_RESERVE, 70 + byte as u64, 2, &body),
            Status::ReservedNotZero,
            70 + byte as u64,
            Some(MSG_RESERVED_RECORD),
            &what,
        );
    }
    // An extend record: id @0, user @16, ttl_ms @32, reserved 12 bytes @36.
    let mut ext = [0u8; EXTEND_RECORD];
    ext[0..16].copy_from_slice(&fresh_id().to_le_bytes());
    ext[16..32].copy_from_slice(&0xD2u128.to_le_bytes());
    ext[32..36].copy_from_slice(&1000u32.to_le_bytes());
    ext[47] = 0x80;
    refused(
        &server,
        &frame(OP_EXTEND, 79, 1, &ext),
        Status::ReservedNotZero,
        79,
        Some(MSG_RESERVED_RECORD),
        "extend record byte 47",
    );

    // Nothing of the refused frames was applied: no unit of the pool is held.
    let mut c = client(server.addr);
    let status = c.pool_status(&PoolRef { id: POOL_ID, name: String::new() }).unwrap().expect("pool status");
    assert_eq!(status.held(), 0, "units held after refused frames: {status:?}");
    assert_eq!(status.confirmed(), 0);
    drop(c);
    assert_server_serves(&server);
}

/// A pool_create body whose name is not UTF-8.
#[test]
fn pool_create_name_not_utf8() {
    let server = start();
    // capacity u64 @0, hold_ttl_ms_default u32 @8, hold_ttl_ms_max u32 @12, kind u8 @16,
    // active u8 @17, name_len u8 @18, reserved 5 bytes @19, rules 48 bytes @24, name @72.
    let name = [b'p', 0xFF, 0xFE, b'q'];
    let mut body = Vec::new();
    body.extend_from_slice(&100u64.to_le_bytes());
    body.extend_from_slice(&60_000u32.to_le_bytes());
    body.extend_from_slice(&120_000u32.to_le_bytes());
    body.extend_from_slice(&[0, 1, name.len() as u8, 0, 0, 0, 0, 0]);
    body.extend_from_slice(&[0; 48]);
    body.extend_from_slice(&name);
    assert_eq!(body.len(), 72 + name.len());
    refused(&server, &frame(OP_POOL_CREATE, 81, 1, &body), Status::MalformedBody, 81, Some(MSG_MALFORMED_BODY), "name");
    // No pool was created.
    let mut c = client(server.addr);
    let pools = c.pool_list().expect("pool list");
    assert_eq!(pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), [POOL], "pools: {pools:?}");
    drop(c);
    assert_server_serves(&server);
}

/// A pool_status body with a pool id and a name that is not UTF-8: the name is ignored
/// (PROTOCOL 4.13: it is used only when the id is 0), the pool is reported, and the
/// connection stays open. With id 0 the same name is a malformed body.
#[test]
fn pool_status_ignores_the_name_when_an_id_is_given() {
    let server = start();
    let status_body = |id: u32| {
        let name = [b'p', 0xFF, 0xFE];
        let mut body = id.to_le_bytes().to_vec();
        body.extend_from_slice(&[name.len() as u8, 0, 0, 0]);
        body.extend_from_slice(&name);
        body
    };
    let mut s = raw_sent(&server, &frame(OP_POOL_STATUS, 83, 1, &status_body(POOL_ID)));
    let r = read_reply(&mut s, "pool_status by id with a non-UTF-8 name");
    assert_eq!((r.opcode(), r.request_id(), r.status()), (OP_POOL_STATUS, 83, 0), "{r:?}");
    assert_eq!(r.body[0], Status::Ok as u8, "the pool is reported: {r:?}");
    let info = shardcap::protocol::control::PoolStatus::decode(&r.body[8..]).expect("a pool status").info;
    assert_eq!((info.id, info.name.as_str()), (POOL_ID, POOL));
    // The connection still serves.
    s.write_all(&frame(OP_PING, 84, 0, &[])).unwrap();
    assert_eq!(read_reply(&mut s, "ping after").request_id(), 84);
    refused(
        &server,
        &frame(OP_POOL_STATUS, 85, 1, &status_body(0)),
        Status::MalformedBody,
        85,
        Some(MSG_MALFORMED_BODY),
        "a non-UTF-8 name in use",
    );
    assert_server_serves(&server);
}

#[test]
fn reserved_header_bytes_and_request_flags() {
    let server = start();
    let cases: [(usize, u8, &str); 8] = [
        (23, 0x01, MSG_RESERVED_HEADER),
        (28, 0x01, MSG_RESERVED_HEADER),
        (31, 0x80, MSG_RESERVED_HEADER),
        (6, 0x01, MSG_REQUEST_FIELDS),  // the RESPONSE flag on a request
        (6, 0x02, MSG_REQUEST_FIELDS),  // the MORE flag on a request
        (7, 0x80, MSG_REQUEST_FIELDS),  // an undefined flag
        (22, 0x01, MSG_REQUEST_FIELDS), // a status in a request
        (24, 0x05, MSG_REQUEST_FIELDS), // retry_after_ms in a request
    ];
    for (i, (offset, value, message)) in cases.into_iter().enumerate() {
        let id = 90 + i as u64;
        let mut h = header(OP_PING, id, 0, 0);
        h[offset] = value;
        let what = format!("header byte {offset} = {value:#04x}");
        refused(&server, &h, Status::ReservedNotZero, id, Some(message), &what);
    }
    // The same on a batch opcode, with its body.
    let mut f = reserve_frame(99, &[0xE0]);
    f[29] = 0x10;
    refused(&server, &f, Status::ReservedNotZero, 99, Some(MSG_RESERVED_HEADER), "reserve, header byte 29");
    assert_server_serves(&server);
}

/// A frame that arrives in pieces waits for its bytes and gets exactly one answer.
#[test]
fn partial_frame_is_answered_once_complete() {
    let server = start();
    let bytes = reserve_frame(0x5157, &[0xF00D]);
    let mut s = raw(server.addr);
    // Each pause makes the split real (the pieces arrive in separate reads); it is a short
    // read that must see nothing, since the frame is not complete yet.
    let pause = |s: &mut TcpStream, what: &str| {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("{what}: the server closed the connection on a partial frame"),
            Ok(n) => panic!("{what}: the server answered a partial frame: {:?}", &buf[..n]),
            Err(e) => panic!("{what}: {e}"),
        }
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    };
    s.write_all(&bytes[..16]).unwrap(); // magic, version, opcode, flags, request id
    pause(&mut s, "half a header");
    s.write_all(&bytes[16..HEADER]).unwrap();
    pause(&mut s, "a header without its body");
    s.write_all(&bytes[HEADER..HEADER + 20]).unwrap();
    pause(&mut s, "part of the body");
    s.write_all(&bytes[HEADER + 20..]).unwrap();

    let r = read_reply(&mut s, "completed reserve");
    assert_eq!(
        (r.opcode(), r.status(), r.request_id(), r.op_count(), r.body.len()),
        (OP_RESERVE, Status::Ok as u8, 0x5157, 1, OP_RESULT),
        "{r:?}"
    );
    let result = OpResult::decode(&r.body);
    assert_eq!((result.status, result.state), (Status::Ok as u8, ReservationState::Held as u8), "{result:?}");
    // Exactly one answer: the next frame on the connection is the answer to the next request.
    s.write_all(&frame(OP_PING, 0x5158, 0, &[])).unwrap();
    let r = read_reply(&mut s, "ping after the split frame");
    assert_eq!((r.opcode(), r.status(), r.request_id(), r.body.len()), (OP_PING, 0, 0x5158, 0), "{r:?}");
    drop(s);
    assert_server_serves(&server);
}

/// Several frames in one write are all answered, each with its own request id (responses
/// may overtake one another, so they are matched by id).
#[test]
fn pipelined_frames_in_one_write() {
    let server = start();
    let on0 = users_on(0, 2, 2);
    let on1 = users_on(1, 2, 2);
    let mut bytes = Vec::new();
    bytes.extend(frame(OP_PING, 201, 0, &[]));
    bytes.extend(reserve_frame(202, &on0[..1]));
    bytes.extend(reserve_frame(203, &on1));
    bytes.extend(pool_list_frame(204));
    bytes.extend(frame(OP_HELLO, 205, 0, &[]));
    bytes.extend(reserve_frame(206, &[on0[1], on1[0], on1[1]]));
    bytes.extend(frame(OP_PING, 207, 0, &[]));
    let expected: HashMap<u64, (u8, u16)> = HashMap::from([
        (201, (OP_PING, 0)),
        (202, (OP_RESERVE, 1)),
        (203, (OP_RESERVE, 2)),
        (204, (OP_POOL_LIST, 1)),
        (205, (OP_HELLO, 1)),
        (206, (OP_RESERVE, 3)),
        (207, (OP_PING, 0)),
    ]);
    let mut s = raw_sent(&server, &bytes);
    let mut seen = HashMap::new();
    for n in 0..expected.len() {
        let r = read_reply(&mut s, &format!("pipelined response {n}"));
        let id = r.request_id();
        let &(opcode, op_count) = expected.get(&id).unwrap_or_else(|| panic!("unexpected request id in {r:?}"));
        assert_eq!((r.opcode(), r.status(), r.op_count()), (opcode, Status::Ok as u8, op_count), "{r:?}");
        if opcode == OP_RESERVE {
            let results = decode_batch_results::<ReserveOp>(r.op_count(), &r.body).expect("result records");
            assert!(results.iter().all(|x| x.status == Status::Ok as u8), "request {id}: {results:?}");
        }
        assert!(seen.insert(id, r).is_none(), "request {id} answered twice");
    }
    // All answered, and the connection is still open.
    s.write_all(&frame(OP_PING, 208, 0, &[])).unwrap();
    let r = read_reply(&mut s, "ping after the pipeline");
    assert_eq!((r.opcode(), r.status(), r.request_id()), (OP_PING, 0, 208), "{r:?}");
}

/// More connections than `connections_max_per_core`: the extra one gets `busy` with a
/// retry hint and is closed; once a connection closes, a new one is served.
#[test]
fn connection_limit_answers_busy() {
    let extra = format!(
        "[limits]\nholds_max_per_core = 100000\nconnections_max_per_core = 2\nbusy_retry_after_ms = {RETRY_AFTER_MS}\n{}",
        pool(POOL, 1000)
    );
    let server = Server::start(1, &extra);
    // Two connections with a completed handshake: both are counted.
    let mut first = client(server.addr);
    let second = client(server.addr);
    let busy = |s: &mut TcpStream, what: &str| {
        let r = read_reply(s, what);
        assert_eq!(
            (r.opcode(), r.status(), r.request_id(), r.flags(), r.op_count()),
            (OP_ERROR, Status::Busy as u8, 0, FLAG_RESPONSE, 0),
            "{what}: {r:?}"
        );
        assert_eq!(r.retry_after_ms(), RETRY_AFTER_MS, "{what}: {r:?}");
        assert_eq!(std::str::from_utf8(&r.body), Ok("connections_max_per_core reached"), "{what}: {r:?}");
        assert_closed(s, what);
    };
    // The third is answered busy without sending anything, then closed.
    busy(&mut raw(server.addr), "3rd connection");
    // The limit is per core, whichever port the connection came in on.
    busy(&mut raw(core_addr(&server, 0)), "3rd connection on the core port");
    // The refusals did not disturb the counted connections.
    first.ping().expect("ping on the first connection");
    assert_reserve_ok(&mut first);

    // Close the second; wait (bounded) until the server has counted it closed.
    drop(second);
    let mut open = u64::MAX;
    for _ in 0..500 {
        open = first.server_stats().expect("server stats")[0].connections_open;
        if open == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open, 1, "the server still counts the closed connection after 5 s");
    let mut third = client(server.addr);
    assert_reserve_ok(&mut third);
    // And the limit holds again.
    busy(&mut raw(server.addr), "3rd connection after the reconnect");
    assert_reserve_ok(&mut first);
}

/// `busy` for in-flight frames, made deterministic: with
/// `inflight_frames_max_per_connection = 1`, a server_stats request (always answered later,
/// from a task gathering every core's counters) occupies the only slot; a pool_list in the
/// same write, handled in the same pass over the input, finds no free slot and is answered
/// `busy` (a busy response of its own opcode, not an error frame); a ping is exempt. The
/// connection stays open. (One small write on loopback arrives in one read.)
#[test]
fn inflight_limit_answers_busy_and_keeps_the_connection() {
    let extra = format!(
        "[limits]\nholds_max_per_core = 100000\ninflight_frames_max_per_connection = 1\nbusy_retry_after_ms = {RETRY_AFTER_MS}\n{}",
        pool(POOL, 1000)
    );
    let server = Server::start(2, &extra);
    let mut bytes = frame(OP_SERVER_STATS, 301, 0, &[]);
    bytes.extend(pool_list_frame(302));
    bytes.extend(frame(OP_PING, 303, 0, &[]));
    let mut s = raw_sent(&server, &bytes);
    let mut replies = HashMap::new();
    for n in 0..3 {
        let r = read_reply(&mut s, &format!("response {n}"));
        assert!(replies.insert(r.request_id(), r).is_none(), "a request answered twice");
    }
    let stats = &replies[&301];
    assert_eq!((stats.opcode(), stats.status(), stats.body.first()), (OP_SERVER_STATS, 0, Some(&0)), "{stats:?}");
    let busy = &replies[&302];
    assert_eq!(
        (busy.opcode(), busy.status(), busy.retry_after_ms(), busy.op_count(), busy.body.len()),
        (OP_POOL_LIST, Status::Busy as u8, RETRY_AFTER_MS, 0, 0),
        "{busy:?}"
    );
    let ping = &replies[&303];
    assert_eq!((ping.opcode(), ping.status()), (OP_PING, 0), "{ping:?}");
    // The connection is still open, and with the slot free again the pool_list is served.
    s.write_all(&pool_list_frame(304)).unwrap();
    let r = read_reply(&mut s, "pool_list after busy");
    assert_eq!((r.opcode(), r.status(), r.request_id(), r.op_count()), (OP_POOL_LIST, 0, 304, 1), "{r:?}");
}

/// A connection that breaks the protocol does not disturb another one on the same core,
/// not even one with a partial frame waiting in its buffer.
#[test]
fn bad_connection_does_not_disturb_another() {
    let server = start();
    for core in 0..2u16 {
        let addr = core_addr(&server, core);
        let mut a = client(addr);
        assert_eq!(a.hello().this_core, core);
        assert_reserve_ok(&mut a);
        // Half of a reserve frame on A...
        let request_id = 0xA000 + core as u64;
        let pending = reserve_frame(request_id, &[0xAB]);
        a.send_raw(&pending[..HEADER + 10]);
        a.flush().unwrap();
        // ...while B, on the same core, sends garbage, and C an unknown opcode.
        let mut b = raw(addr);
        // Longer than a header, with bytes 16..20 (body_len) at u32::MAX: the refusal must
        // not make room for that body (see `frame_too_large_huge_body_len`).
        let mut garbage = *b"\x00\x01\x02\x03 garbage, longer than one header";
        garbage[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(garbage.len() > HEADER);
        b.write_all(&garbage).unwrap();
        expect_refusal(&mut b, Status::BadMagic, 0, Some(MSG_BAD_MAGIC), "garbage on B");
        let mut c = raw(addr);
        c.write_all(&header(0x77, 7, 0, 0)).unwrap();
        expect_refusal(&mut c, Status::UnknownOpcode, 7, Some(MSG_UNKNOWN_OPCODE), "unknown opcode on C");
        // A completes its frame and is answered.
        a.send_raw(&pending[HEADER + 10..]);
        let results = a.wait_batch::<ReserveOp>(request_id).expect("A's split reserve");
        assert_eq!(results.len(), 1);
        assert_eq!((results[0].status, results[0].state), (Status::Ok as u8, ReservationState::Held as u8));
        assert_reserve_ok(&mut a);
    }
    assert_server_serves(&server);
}
