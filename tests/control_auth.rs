//! Control operations need the admin token on the data ports (PROTOCOL.md 4.22): refused
//! `unauthorized` without it or with a wrong one, and nothing is changed or logged; data
//! operations need nothing; without a token, control is open on loopback only, and a
//! server asked to listen elsewhere without one refuses to start unless told
//! `insecure_open_control`.

#![cfg(feature = "server")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Server, Setup, by_id, pool, reserve, temp_data_dir, users_on};
use shardcap::client::Client;
use shardcap::protocol::control::{PoolCreate, PoolInfo, PoolRules, UserActivityRequest};
use shardcap::protocol::{ConfirmOp, ExtendOp, HEADER_SIZE, Header, LookupOp, Opcode, ReleaseOp, Status};

const TOKEN: &str = "s3cret-0perator-token";

/// A configuration with pool `demo` (100 units, a rule that tracks users) and the token.
fn with_token() -> String {
    format!("{}track_users = true\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n", pool("demo", 100))
}

fn new_pool(name: &str) -> PoolCreate {
    PoolCreate {
        name: name.into(),
        capacity: 10,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 120_000,
        kind: 0,
        active: true,
        rules: PoolRules::default(),
    }
}

/// Runs every control operation once on `c` against pool `pool`; answers each one's name
/// and its status.
fn every_control_op(c: &mut Client, pool: u32, tag: &str) -> Vec<(&'static str, Status)> {
    let status = |r: Result<PoolInfo, Status>| r.err().unwrap_or(Status::Ok);
    vec![
        ("pool_create", status(c.pool_create(&new_pool(&format!("new-{tag}"))).unwrap())),
        ("pool_set_active", status(c.pool_set_active(pool, false).unwrap())),
        ("pool_set_rules", status(c.pool_set_rules(pool, PoolRules { max_qty: 3, ..PoolRules::default() }).unwrap())),
        ("pool_set_capacity", status(c.pool_set_capacity(pool, 250).unwrap())),
        ("pool_rename", status(c.pool_rename(pool, &format!("renamed-{tag}")).unwrap())),
        ("pool_set_description", status(c.pool_set_description(pool, "changed").unwrap())),
    ]
}

fn assert_all(results: &[(&str, Status)], want: Status, what: &str) {
    for (op, got) in results {
        assert_eq!(*got, want, "{op} {what}");
    }
}

/// Every data operation answers on a connection that showed no token.
fn assert_data_ops_open(c: &mut Client, pool: u32, id: u128) {
    let user = users_on(0, 2, 1)[0];
    c.ping().unwrap();
    assert_eq!(c.reserve(&[reserve(id, user, pool, 2, 0)]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c.extend(&[ExtendOp { id, user, ttl_ms: 100_000 }]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c.lookup(&[LookupOp { id, user: 0 }]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c.confirm(&[ConfirmOp { id, user, commit_ref: 7 }]).unwrap()[0].status, Status::Ok as u8);
    let other = id + 1;
    assert_eq!(c.reserve(&[reserve(other, user, pool, 1, 0)]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c.release(&[ReleaseOp { id: other, user }]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c.pool_status(&by_id(pool)).unwrap().unwrap().confirmed(), 2);
    assert!(c.pool_list().unwrap().iter().any(|p| p.id == pool));
    let activity = c.user_activity(UserActivityRequest { user, pool, state: 0, recent: 4 }).unwrap().unwrap();
    assert_eq!(activity[0].confirmed, 2);
    assert_eq!(c.server_stats().unwrap().len(), 2);
}

/// A raw frame's control status (the prefix's first byte), on a connection that stays open.
fn raw_control_status(c: &mut Client, opcode: Opcode, body: &[u8]) -> Status {
    let id = c.send_frame(opcode, 1, body);
    let r = c.wait(id).expect("answered, not refused");
    assert_eq!(r.header.opcode, opcode as u8);
    Status::from_u8(r.body[0]).expect("a status")
}

#[test]
fn with_a_token_control_needs_it_and_data_does_not() {
    let data_dir = temp_data_dir();
    let extra = with_token();
    let setup = Setup { cores: 2, extra: &extra, ..Setup::default() };
    let server = Server::start_with(&setup, &data_dir);
    let mut c = server.client();
    let before = c.pool_list().unwrap();
    assert_eq!(before.len(), 1);
    let demo = before[0].id;

    // No token, then a wrong one (also one that is the right one's prefix, and empty):
    // every control operation is refused and the connection stays open.
    assert_all(&every_control_op(&mut c, demo, "a"), Status::Unauthorized, "without a token");
    for wrong in ["guess", &TOKEN[..TOKEN.len() - 1], "", &format!("{TOKEN}x")] {
        assert_eq!(c.authenticate(wrong).unwrap(), Err(Status::Unauthorized), "token {wrong:?}");
        assert_all(&every_control_op(&mut c, demo, "b"), Status::Unauthorized, "with a wrong token");
    }
    // Refused before its body is read: a malformed control body is not a protocol error.
    assert_eq!(raw_control_status(&mut c, Opcode::PoolSetActive, &[1, 0, 0, 0, 9, 0, 0, 0]), Status::Unauthorized);
    // On the cores' own ports too.
    for core in 0..2 {
        let mut own = server.core_client(core);
        assert_all(&every_control_op(&mut own, demo, "c"), Status::Unauthorized, &format!("on core {core}'s port"));
    }
    assert_data_ops_open(&mut c, demo, 0x51);
    assert_eq!(c.pool_list().unwrap(), before, "nothing was changed");

    // Nothing was logged either: after a restart on the same data directory the pool is
    // as it was.
    let dir = server.kill();
    let server = Server::start_with(&setup, &dir);
    let mut c = server.client();
    assert_eq!(c.pool_list().unwrap(), before, "nothing was changed after a restart");
    let status = c.pool_status(&by_id(demo)).unwrap().unwrap();
    assert_eq!((status.info.capacity, status.confirmed()), (100, 2), "the data operations were kept");

    // The right token: everything succeeds, and stays after a restart.
    assert_eq!(c.authenticate(TOKEN).unwrap(), Ok(()));
    assert_all(&every_control_op(&mut c, demo, "d"), Status::Ok, "with the token");
    let after = c.pool_list().unwrap();
    let changed = after.iter().find(|p| p.id == demo).unwrap();
    assert_eq!(
        (changed.name.as_str(), changed.active, changed.capacity, changed.rules.max_qty, changed.description.as_str()),
        ("renamed-d", false, 250, 3, "changed")
    );
    assert!(after.iter().any(|p| p.name == "new-d"), "created: {after:?}");
    // A later wrong token takes the right away again.
    assert_eq!(c.authenticate("guess").unwrap(), Err(Status::Unauthorized));
    assert_eq!(c.pool_set_active(demo, true).unwrap().unwrap_err(), Status::Unauthorized);
    // Another connection has its own rights.
    assert_eq!(server.client().pool_set_active(demo, true).unwrap().unwrap_err(), Status::Unauthorized);
    let dir = server.kill();
    let server = Server::start_with(&setup, &dir);
    let again = server.client().pool_list().unwrap();
    assert_eq!(again[..2], after[..], "the changes made with the token were logged");
    // The configuration still declares `demo`, renamed meanwhile: the start creates it anew.
    assert_eq!((again.len(), again[2].name.as_str()), (3, "demo"));
}

/// Reads `n` bytes from a raw connection.
fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    s.read_exact(&mut bytes).expect("an answer");
    bytes
}

/// The bytes of PROTOCOL.md 10.6, sent and received as they are written there.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

#[test]
fn auth_frames_are_as_documented_byte_for_byte() {
    let extra = format!("{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n", pool("demo", 100));
    let server = Server::start(1, &extra);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = hex("53 43 41 50 01 03 00 00 0a 00 00 00 00 00 00 00
                    0e 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00
                    06 00 00 00 00 00 00 00 73 33 63 72 65 74");
    let answer = |status: &str| {
        hex(&format!(
            "53 43 41 50 01 03 01 00 0a 00 00 00 00 00 00 00
             08 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00
             {status} 00 00 00 00 00 00 00"
        ))
    };
    let refused_change = hex("53 43 41 50 01 23 01 00 0b 00 00 00 00 00 00 00
                              08 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00
                              33 00 00 00 00 00 00 00");
    // pool_set_active (request id 11): pool 1, active 0.
    let mut set_active = Vec::new();
    Header::request(Opcode::PoolSetActive, 11, 1, 8).append_to(&mut set_active);
    set_active.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);

    s.write_all(&set_active).unwrap();
    assert_eq!(read_exactly(&mut s, 40), refused_change, "a change before auth");
    s.write_all(&auth).unwrap();
    assert_eq!(read_exactly(&mut s, 40), answer("00"), "the right token");
    let mut wrong = auth.clone();
    wrong[HEADER_SIZE + 8] = b'S';
    s.write_all(&wrong).unwrap();
    assert_eq!(read_exactly(&mut s, 40), answer("33"), "a wrong token");
    s.write_all(&set_active).unwrap();
    assert_eq!(read_exactly(&mut s, 40), refused_change, "the last auth decides");
    // Pipelined: the auth is read before the change that follows it.
    s.write_all(&[auth.as_slice(), &set_active].concat()).unwrap();
    assert_eq!(read_exactly(&mut s, 40), answer("00"));
    let changed = read_exactly(&mut s, HEADER_SIZE + 8);
    assert_eq!((changed[5], changed[HEADER_SIZE]), (0x23, 0), "the change after the auth is applied");

    // A reserved byte that is not zero is a malformed body: the connection is closed.
    let mut c = server.client();
    let mut body = vec![6, 0, 0, 1, 0, 0, 0, 0];
    body.extend_from_slice(b"s3cret");
    let id = c.send_frame(Opcode::Auth, 1, &body);
    let refused = c.wait(id).unwrap_err().to_string();
    assert!(refused.contains("malformed_body"), "{refused}");
    // A body whose size is not 8 + token_len is refused by the frame parser.
    let mut c = server.client();
    let mut frame = Vec::new();
    Header::request(Opcode::Auth, 9, 1, 7).append_to(&mut frame);
    frame.extend_from_slice(&[0; 7]);
    c.send_raw(&frame);
    let refused = c.wait(9).unwrap_err().to_string();
    assert!(refused.contains("malformed_body"), "{refused}");
}

#[test]
fn without_a_token_control_is_open_on_loopback() {
    let server = Server::start(2, &pool("demo", 100));
    let mut c = server.client();
    let demo = c.pool_id("demo").unwrap().unwrap();
    assert_all(&every_control_op(&mut c, demo, "a"), Status::Ok, "on loopback without a token");
    // Any token is accepted: there is none to check.
    assert_eq!(c.authenticate("whatever").unwrap(), Ok(()));
    assert_eq!(c.pool_set_active(demo, true).unwrap().map(|p| p.active), Ok(true));
}

/// Runs the CLI against `server` with `args` (and optionally SHARDCAP_ADMIN_TOKEN):
/// answers the exit code and stdout and stderr together.
fn cli(server: &Server, args: &[&str], env_token: Option<&str>) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardcap"));
    command.args(args).env("SHARDCAP_SERVER", server.addr.to_string()).env_remove("SHARDCAP_ADMIN_TOKEN");
    if let Some(token) = env_token {
        command.env("SHARDCAP_ADMIN_TOKEN", token);
    }
    let out = command.output().expect("run shardcap");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().expect("an exit code"), text)
}

#[test]
fn the_cli_sends_the_token_from_the_flag_or_the_environment() {
    let server = Server::start(1, &with_token());
    let (code, text) = cli(&server, &["pool", "create", "a", "--capacity", "4"], None);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("pool create refused: unauthorized") && text.contains("SHARDCAP_ADMIN_TOKEN"), "{text}");
    let (code, text) = cli(&server, &["pool", "create", "a", "--capacity", "4", "--token", "guess"], None);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("the server refused the admin token"), "{text}");
    let (code, text) = cli(&server, &["pool", "create", "a", "--capacity", "4", "--token", TOKEN], None);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("created pool a (id 2)"), "{text}");
    let (code, text) = cli(&server, &["pool", "resize", "a", "6"], Some(TOKEN));
    assert_eq!((code, text.as_str()), (0, "pool a capacity 6\n"));
    // Data commands need no token, and ignore a wrong one.
    let (code, text) = cli(&server, &["reserve", "a", "--user", "alice", "--qty", "2"], Some("guess"));
    assert_eq!(code, 0, "{text}");
    // The token is not shown by --help.
    let (_, help) = cli(&server, &["pool", "create", "--help"], Some(TOKEN));
    assert!(help.contains("--token") && !help.contains(TOKEN), "{help}");
}

#[test]
fn a_non_loopback_address_needs_a_token_or_the_insecure_setting() {
    let everywhere = Setup { cores: 2, listen: "0.0.0.0:0", extra: &pool("demo", 10), ..Setup::default() };
    let (status, stderr) = everywhere.refused();
    assert_eq!(status.code(), Some(2), "{stderr}");
    for fix in ["0.0.0.0:0 is not a loopback address", "admin.token", "SHARDCAP_ADMIN_TOKEN", "insecure_open_control"] {
        assert!(stderr.contains(fix), "the message names {fix:?}: {stderr}");
    }

    // The explicit setting, in the configuration or as a flag: the server starts, with
    // control open to anyone.
    for setup in [
        Setup { server_extra: "insecure_open_control = true", ..everywhere },
        Setup { args: &["--insecure-open-control"], ..everywhere },
    ] {
        let server = Server::start_with(&setup, &temp_data_dir());
        assert!(server.addr.ip().is_unspecified(), "{}", server.addr);
        let mut c = Client::connect(("127.0.0.1", server.addr.port())).unwrap();
        let demo = c.pool_id("demo").unwrap().unwrap();
        assert_eq!(c.pool_set_capacity(demo, 20).unwrap().map(|p| p.capacity), Ok(20));
    }

    // With a token it starts, and control needs the token.
    let extra = format!("{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n", pool("demo", 10));
    let server = Server::start_with(&Setup { extra: &extra, ..everywhere }, &temp_data_dir());
    let mut c = Client::connect(("127.0.0.1", server.addr.port())).unwrap();
    let demo = c.pool_id("demo").unwrap().unwrap();
    assert_eq!(c.pool_set_capacity(demo, 20).unwrap().unwrap_err(), Status::Unauthorized);
    assert_eq!(c.authenticate(TOKEN).unwrap(), Ok(()));
    assert_eq!(c.pool_set_capacity(demo, 20).unwrap().map(|p| p.capacity), Ok(20));
}
