//! End-to-end race for the last units, against the real server on 2 cores.
//!
//! How it works: a pool of 1,000 units is split 500/500 over the cores. Sixteen client
//! threads, fourteen of them with users homed on core 0, reserve (in pipelined batches of
//! one to four) and confirm until the pool answers `sold_out`. Core 0 runs dry halfway and
//! must borrow core 1's units. Half the clients use the shared port (so operations are
//! forwarded between cores) and half use their users' core ports.
//!
//! Checks: exactly 1,000 units end up confirmed, never more; the server's own status agrees
//! (held 0, confirmed 1,000, capacity conserved); the hot core borrowed and sold more than its
//! initial half; and `sold_out`
//! was never premature: since nothing is ever released, no reserve sent *after* some client
//! received `sold_out` may succeed (that would mean capacity was left somewhere — a phantom
//! sold-out). Every loop is bounded in iterations and time.

#![cfg(feature = "server")]

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Server, pool, users_on};
use shardcap::protocol::control::PoolRef;
use shardcap::protocol::{ConfirmOp, ReserveOp, Status};

const CAPACITY: u64 = 1_000;
const CLIENTS: usize = 16;
const ITERATIONS_MAX: usize = 2_000;
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Outcome {
    confirmed: u64,
    /// Send instants of reserves that succeeded.
    successes_sent: Vec<Instant>,
    /// Receive instants of `sold_out` answers.
    sold_out_received: Vec<Instant>,
}

#[test]
fn sixteen_clients_race_for_the_last_units() {
    let server = Server::start(2, &pool("race", CAPACITY));
    let pool_id = server.client().pool_id("race").unwrap().expect("pool race");
    let hot_users = users_on(0, 2, 14);
    let cold_users = users_on(1, 2, 2);
    let users: Vec<u128> = hot_users.into_iter().chain(cold_users).collect();
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(n, user)| {
            let mut client =
                if n % 2 == 0 { server.client() } else { server.core_client(shardcap::protocol::home_core(user, 2)) };
            client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let start = start.clone();
            std::thread::spawn(move || {
                let mut out = Outcome::default();
                start.wait();
                let began = Instant::now();
                let mut next_id = (n as u128 + 1) << 64;
                for round in 0..ITERATIONS_MAX {
                    assert!(began.elapsed() < DEADLINE, "client {n} still racing after {DEADLINE:?}");
                    let batch = 1 + (round + n) % 4;
                    let ops: Vec<ReserveOp> = (0..batch)
                        .map(|_| {
                            next_id += 1;
                            ReserveOp { id: next_id, user, pool: pool_id, qty: 1, ttl_ms: 0, priority: 0 }
                        })
                        .collect();
                    let sent = Instant::now();
                    let results = client.reserve(&ops).expect("reserve");
                    let received = Instant::now();
                    let mut confirms = Vec::new();
                    for (op, r) in ops.iter().zip(&results) {
                        match Status::from_u8(r.status) {
                            Some(Status::Ok) => {
                                out.successes_sent.push(sent);
                                confirms.push(ConfirmOp { id: op.id, user, commit_ref: op.id });
                            }
                            Some(Status::SoldOut) => out.sold_out_received.push(received),
                            other => panic!("client {n}: unexpected reserve status {other:?}"),
                        }
                    }
                    if !confirms.is_empty() {
                        for r in client.confirm(&confirms).expect("confirm") {
                            assert_eq!(r.status, Status::Ok as u8, "client {n}: confirm refused");
                            out.confirmed += 1;
                        }
                    }
                    if !out.sold_out_received.is_empty() {
                        return out;
                    }
                }
                panic!("client {n} never saw sold_out in {ITERATIONS_MAX} rounds");
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();

    let confirmed: u64 = outcomes.iter().map(|o| o.confirmed).sum();
    assert_eq!(confirmed, CAPACITY, "exactly the capacity is confirmed");
    assert!(outcomes.iter().all(|o| !o.sold_out_received.is_empty()), "every client ends on sold_out");

    let first_sold_out = outcomes.iter().flat_map(|o| o.sold_out_received.iter()).min().copied().unwrap();
    let late = outcomes.iter().flat_map(|o| o.successes_sent.iter()).filter(|&&s| s > first_sold_out).count();
    assert_eq!(late, 0, "{late} reserves sent after a sold_out still succeeded: that sold_out was a phantom");

    let mut admin = server.client();
    let status = admin.pool_status(&PoolRef { id: pool_id, name: String::new() }).unwrap().unwrap();
    assert_eq!((status.held(), status.confirmed(), status.available()), (0, CAPACITY, 0));
    assert!(status.conserved(), "capacity conserved: {status:?}");
    assert_eq!(status.in_flight(), 0);
    for s in &status.shards {
        assert!(s.held + s.confirmed <= s.capacity, "shard over-allocated: {s:?}");
    }
    let stats = admin.server_stats().unwrap();
    let borrow_messages: u64 = stats.iter().map(|s| s.borrow_messages).sum();
    assert!(borrow_messages > 0, "core 0 ran dry and must have borrowed: {stats:?}");
    assert!(status.shards[0].confirmed > CAPACITY / 2, "the hot core sold more than its initial half: {status:?}");
}
