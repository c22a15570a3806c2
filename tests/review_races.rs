//! The races and traps found in review, end to end against the real server binary on 2
//! cores (loopback, started by the test).
//!
//! How the creation window is made wide: with `batch` durability and a 200 ms interval, a
//! pool creation waits for core 0's log to be durable before core 1 hears of it, and for
//! core 1's before it answers, so for hundreds of milliseconds the pool exists on core 0
//! only. A second client polls the pool (by the id the creation will get: the first pool is
//! 1) on core 0's own port meanwhile. Every loop is bounded in count and time.

#![cfg(feature = "server")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Server, by_id, metric_sum, pool_request, users_on};
use shardcap::client::Client;
use shardcap::protocol::Status;

const READ_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_DEADLINE: Duration = Duration::from_secs(60);
const POLLS_MAX: usize = 20_000;

/// A server whose log is made durable every 200 ms: a pool creation takes that long to
/// reach core 1.
fn slow_catalog_server() -> Server {
    Server::start(2, "[durability]\nmode = \"batch\"\nfsync_interval_ms = 200\n")
}

fn client(mut c: Client) -> Client {
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c
}

/// Creates pool `name` on core 0's port while `poll` runs on another connection of core 0
/// (from just before the creation is sent until it has answered, and once more after);
/// answers what `poll` returned each time.
fn poll_during_creation<T: Send + 'static>(
    server: &Server,
    name: &str,
    capacity: u64,
    mut poll: impl FnMut(&mut Client) -> T + Send + 'static,
) -> Vec<T> {
    let created = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(2));
    let mut poller = client(server.core_client(0));
    let poller = {
        let (created, start) = (created.clone(), start.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            start.wait();
            let began = Instant::now();
            while !created.load(Ordering::SeqCst) && began.elapsed() < POLL_DEADLINE {
                if seen.len() < POLLS_MAX {
                    seen.push(poll(&mut poller));
                } else {
                    // Enough seen: wait for the creation's answer (polling the flag).
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // Once more, after the creation has answered.
            seen.push(poll(&mut poller));
            seen
        })
    };
    let mut creator = client(server.core_client(0));
    start.wait();
    let info = creator.pool_create(&pool_request(name, capacity)).expect("the server answers the creation");
    created.store(true, Ordering::SeqCst);
    assert_eq!(info.expect("created").id, 1, "the first pool");
    poller.join().expect("poller")
}

#[test]
fn a_reserve_during_a_pool_creation_never_borrows_from_a_core_that_lacks_the_pool() {
    let mut server = slow_catalog_server();
    // Pool 1's home is core 1; core 0's shard has 5 of its 10 units, so a reserve of 6 on
    // core 0 must borrow from core 1.
    let user = users_on(0, 2, 1)[0];
    let mut next_id = 0u128;
    let answers = poll_during_creation(&server, "fresh", 10, move |c| {
        next_id += 1;
        let r = c.reserve(&[common::reserve(next_id, user, 1, 6, 0)]).map(|r| r[0].status);
        r.map(|s| Status::from_u8(s).expect("a known status")).map_err(|e| e.to_string())
    });
    assert!(server.is_running(), "the server survived the creation");
    // Unknown until every core has the pool, then held once (borrowing a unit from core 1),
    // then sold out (4 units left).
    let unknown = answers.iter().take_while(|a| **a == Ok(Status::PoolNotFound)).count();
    assert!(unknown > 10, "the poller ran during the creation ({unknown} polls)");
    assert_eq!(answers.get(unknown), Some(&Ok(Status::Ok)), "once created, the reserve borrows and is held");
    for a in &answers[unknown + 1..] {
        assert_eq!(*a, Ok(Status::SoldOut), "{answers:?}");
    }
    let status = client(server.client()).pool_status(&by_id(1)).unwrap().expect("the pool is known");
    assert!(status.conserved(), "{status:?}");
    assert_eq!((status.held(), status.shards[0].held), (6, 6), "{status:?}");
}

#[test]
fn a_pool_status_during_a_pool_creation_counts_no_oversell() {
    let server = slow_catalog_server();
    let answers = poll_during_creation(&server, "fresh", 10, |c| c.pool_status(&by_id(1)).expect("status answered"));
    assert!(answers.len() > 10, "the poller ran during the creation ({} polls)", answers.len());
    let last = answers.last().unwrap();
    assert!(
        last.as_ref().is_ok_and(|s| s.conserved() && s.info.capacity == 10),
        "after the creation: {last:?} ({} polls)",
        answers.len()
    );
    for a in &answers {
        match a {
            Err(status) => assert_eq!(*status, Status::PoolNotFound, "a pool not known everywhere yet"),
            Ok(s) => {
                assert!(s.conserved(), "a status answered is complete: {s:?}");
                assert_eq!(s.shards.len(), 2);
            }
        }
    }
    let oversell = metric_sum(server.admin.unwrap(), "shardcap_oversell_detected_total");
    assert_eq!(oversell, 0.0, "no oversell happened, none may be counted");
}

#[test]
fn a_name_too_long_for_the_protocol_is_refused_by_the_client_and_the_connection_stays_open() {
    let server = Server::start(2, "");
    let mut c = client(server.client());
    let err = c.pool_create(&pool_request(&"n".repeat(300), 10)).expect_err("refused before it is sent");
    assert_eq!(err.to_string(), "request not sent: the pool name is 300 bytes long; the protocol carries at most 64");
    let err = c.pool_rename(1, &"n".repeat(65)).expect_err("refused before it is sent");
    assert_eq!(err.to_string(), "request not sent: the pool name is 65 bytes long; the protocol carries at most 64");
    let err = c.pool_set_description(1, &"d".repeat(256)).expect_err("refused before it is sent");
    assert_eq!(
        err.to_string(),
        "request not sent: the description is 256 bytes long; the protocol carries at most 255"
    );
    c.ping().expect("nothing malformed was sent: the connection is still open");
    assert!(c.pool_list().unwrap().is_empty(), "nothing was created");
}
