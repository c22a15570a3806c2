//! End-to-end tests of the real server: start-up on the embedded defaults, pool
//! management seen from every core, routing of operations to their owner from any port,
//! expiry driven by the server's own clock, and pipelining.
//!
//! How it works: each test starts the `shardcap` binary on loopback (see `common`), talks
//! to it with the blocking client, and asserts exact statuses and counts. Loops that wait
//! for the server's clock poll with a bounded deadline.

#![cfg(feature = "server")]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, by_id, pool, reserve, users_on};
use shardcap::client::Client;
use shardcap::protocol::control::{PoolCreate, PoolRef};
use shardcap::protocol::{
    ConfirmOp, LookupOp, Opcode, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp, Status,
    decode_batch_results, home_core,
};

#[test]
fn serve_runs_on_embedded_defaults() {
    // The default data directory is relative: run where it can be created and removed.
    let cwd = common::temp_data_dir();
    std::fs::create_dir_all(&cwd).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcap"))
        .arg("serve")
        .current_dir(&cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shardcap serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("ready line");
    let result = std::panic::catch_unwind(|| {
        assert!(line.starts_with("shardcap ready: listen=127.0.0.1:7400 "), "{line}");
        let mut c = Client::connect("127.0.0.1:7400").unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get() as u16;
        assert_eq!(c.hello().core_count, cpus, "one core per CPU by default");
        assert_eq!(c.hello().core_ports, (0..cpus).map(|i| 7401 + i).collect::<Vec<_>>());
        let pools = c.pool_list().unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!((pools[0].name.as_str(), pools[0].capacity, pools[0].hold_ttl_ms_default), ("demo", 1000, 300_000));
    });
    let _ = child.kill();
    let _ = child.wait();
    let wrote_logs = cwd.join("shardcap-data/core-0").is_dir();
    let _ = std::fs::remove_dir_all(&cwd);
    result.unwrap();
    assert!(wrote_logs, "the default durability is sync, with logs under ./shardcap-data");
}

#[test]
fn pools_are_created_listed_and_changed_on_every_core() {
    let server = Server::start(2, &pool("demo", 1000));
    let mut c0 = server.core_client(0);
    let mut c1 = server.core_client(1);
    let req = PoolCreate {
        name: "concert".into(),
        capacity: 11,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 120_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    };
    let info = c1.pool_create(&req).unwrap().unwrap();
    assert_eq!((info.id, info.capacity, info.home_core), (2, 11, 0));
    assert_eq!(c0.pool_create(&req).unwrap().unwrap(), info, "an identical repeat answers the same pool");
    assert_eq!(c0.pool_create(&PoolCreate { capacity: 12, ..req.clone() }).unwrap(), Err(Status::PoolExists));
    assert_eq!(
        c0.pool_create(&PoolCreate { name: "two words".into(), ..req.clone() }).unwrap(),
        Err(Status::InvalidPoolName)
    );
    assert_eq!(
        c0.pool_create(&PoolCreate { kind: 1, name: "seats".into(), ..req.clone() }).unwrap(),
        Err(Status::Unsupported)
    );
    let names: Vec<String> = c0.pool_list().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["demo", "concert"]);

    let status = c0.pool_status(&PoolRef { id: 0, name: "concert".into() }).unwrap().unwrap();
    let caps: Vec<u64> = status.shards.iter().map(|s| s.capacity).collect();
    assert_eq!(caps, [6, 5], "an even split, the remainder to core 0");
    assert_eq!(c0.pool_status(&PoolRef { id: 0, name: "nope".into() }).unwrap(), Err(Status::PoolNotFound));

    let u0 = users_on(0, 2, 1)[0];
    let u1 = users_on(1, 2, 1)[0];
    let held = c0.reserve(&[reserve(1, u0, 2, 2, 0)]).unwrap()[0];
    assert_eq!(held.status, Status::Ok as u8);
    assert!(!c1.pool_set_active(2, false).unwrap().unwrap().active);
    for (id, user) in [(2, u0), (3, u1)] {
        let r = c1.reserve(&[reserve(id, user, 2, 1, 0)]).unwrap()[0];
        assert_eq!(r.status, Status::PoolInactive as u8, "deactivation reached the core of user {user}");
    }
    let confirmed = c0.confirm(&[ConfirmOp { id: 1, user: u0, commit_ref: 9 }]).unwrap()[0];
    assert_eq!(confirmed.status, Status::Ok as u8, "holds of an inactive pool can still be confirmed");
    assert!(c0.pool_set_active(2, true).unwrap().unwrap().active);
    assert_eq!(c1.reserve(&[reserve(3, u1, 2, 1, 0)]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c0.pool_set_active(99, true).unwrap(), Err(Status::PoolNotFound));
}

#[test]
fn operations_reach_the_owning_core_from_any_port() {
    let server = Server::start(2, &pool("demo", 100));
    let u0 = users_on(0, 2, 1)[0];
    let u1 = users_on(1, 2, 1)[0];
    let mut admin = server.client();
    let forwarded = |admin: &mut Client| admin.server_stats().unwrap().iter().map(|s| s.forwarded_out).sum::<u64>();

    // Through each user's own core port: no proxy hop.
    let mut own0 = server.core_client(0);
    let mut own1 = server.core_client(1);
    assert_eq!(own0.reserve(&[reserve(10, u0, 1, 1, 0)]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(own1.reserve(&[reserve(11, u1, 1, 1, 0)]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(forwarded(&mut admin), 0);

    // Through the other core's port: forwarded to the owner and answered on the same connection.
    let results = own1.reserve(&[reserve(12, u0, 1, 1, 0), reserve(13, u1, 1, 1, 0)]).unwrap();
    assert!(results.iter().all(|r| r.status == Status::Ok as u8));
    assert_eq!(forwarded(&mut admin), 1);
    let repeat = own1.reserve(&[reserve(12, u0, 1, 1, 0)]).unwrap()[0];
    assert_eq!((repeat.status, repeat.flags), (Status::Ok as u8, RESULT_FLAG_REPEAT), "the owner remembers the id");
    let released = own1.release(&[ReleaseOp { id: 10, user: u0 }]).unwrap()[0];
    assert_eq!((released.status, released.state), (Status::Ok as u8, ReservationState::Released as u8));

    // A lookup without a user asks every core.
    let found = admin.lookup(&[LookupOp { id: 11, user: 0 }, LookupOp { id: 77, user: 0 }]).unwrap();
    assert_eq!((found[0].status, found[0].user, found[0].state), (Status::Ok as u8, u1, ReservationState::Held as u8));
    assert_eq!(found[1].status, Status::NotFound as u8);

    let status = admin.pool_status(&by_id(1)).unwrap().unwrap();
    assert_eq!((status.held(), status.available()), (3, 97));
    let per_core: Vec<u64> = status.shards.iter().map(|s| s.held).collect();
    assert_eq!(per_core, [1, 2], "holds live on their users' home cores");
}

#[test]
fn holds_expire_on_time_and_return_capacity() {
    let server = Server::start(2, &pool("short", 10));
    let mut c = server.client();
    let user = users_on(1, 2, 1)[0];
    let r = c.reserve(&[reserve(1, user, 1, 10, 300)]).unwrap()[0];
    assert_eq!(r.status, Status::Ok as u8);
    assert_eq!(c.reserve(&[reserve(2, user, 1, 1, 0)]).unwrap()[0].status, Status::SoldOut as u8);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.pool_status(&by_id(1)).unwrap().unwrap();
        if status.held() == 0 {
            assert_eq!(status.available(), 10, "expired units are free again");
            break;
        }
        assert!(Instant::now() < deadline, "hold not expired 10 s after its 300 ms TTL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now_ms >= r.expires_at_ms, "not expired before its time");
    let confirm = c.confirm(&[ConfirmOp { id: 1, user, commit_ref: 1 }]).unwrap()[0];
    assert_eq!((confirm.status, confirm.state), (Status::Expired as u8, ReservationState::Expired as u8));
    assert_eq!(c.reserve(&[reserve(2, user, 1, 10, 0)]).unwrap()[0].status, Status::Ok as u8);
}

#[test]
fn pipelined_frames_are_answered_by_request_id() {
    // 40 units split 20/20; every user lives on core 1 (the pool's home), which runs out
    // after 20 and recalls core 0's units: reserves parked meanwhile are answered after
    // later frames, so the answers come out of order and are matched by request id.
    let server = Server::start(2, &pool("tiny", 40));
    let mut c = server.client();
    let users = users_on(1, 2, 3);
    let mut ids = Vec::new();
    for n in 0..60u32 {
        let user = users[n as usize % users.len()];
        if n % 3 == 0 {
            ids.push((c.send_frame(Opcode::Ping, 0, &[]), None));
        } else {
            ids.push((c.send_batch(&[reserve(1000 + n as u128, user, 1, 1, 0)]), Some(n)));
        }
    }
    c.flush().unwrap();
    let mut seen = HashSet::new();
    let mut ok = 0;
    let mut sold_out = 0;
    for _ in 0..ids.len() {
        let r = c.recv().unwrap();
        assert!(seen.insert(r.header.request_id), "request {} answered twice", r.header.request_id);
        let (_, reserve_n) = ids.iter().find(|(id, _)| *id == r.header.request_id).expect("an id we sent");
        match reserve_n {
            None => assert_eq!(r.header.opcode, Opcode::Ping as u8),
            Some(_) => {
                let res = decode_batch_results::<ReserveOp>(r.header.op_count, &r.body).unwrap();
                match Status::from_u8(res[0].status) {
                    Some(Status::Ok) => ok += 1,
                    Some(Status::SoldOut) => sold_out += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    assert_eq!((ok, sold_out), (40, 0), "40 reserves of 1 unit fit exactly in 40 units");
    assert!(users.iter().all(|&u| home_core(u, 2) == 1));
}

#[test]
fn sync_answers_wait_for_the_log() {
    // In sync mode an answer leaves only once the log holds everything applied before it:
    // right after each acknowledged reserve, the core's durable LSN covers every record it
    // has logged (nothing else is logged meanwhile: no hold expires during the test).
    let server = Server::start(2, &pool("durable", 1000));
    let user = users_on(0, 2, 1)[0];
    let mut c = server.core_client(0);
    let mut admin = server.core_client(1);
    for id in 1..=200u128 {
        assert_eq!(c.reserve(&[reserve(id, user, 1, 1, 0)]).unwrap()[0].status, Status::Ok as u8);
        let stats = admin.server_stats().unwrap();
        let core0 = &stats[0];
        assert!(core0.log_records >= id as u64, "every reserve is logged: {core0:?}");
        assert!(
            core0.log_durable_lsn >= core0.log_records,
            "reserve {id} was answered before its record was durable: {core0:?}"
        );
    }
    assert!(admin.server_stats().unwrap()[0].log_syncs > 0);
}
