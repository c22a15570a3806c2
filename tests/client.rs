//! The shard-aware client library against live servers: routing to the owning core,
//! automatic batching, a retry after a dropped connection that does not reserve twice, and
//! fallback between two servers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, by_id, pool};
use shardcap::client::Error;
use shardcap::client::fallback::Fallback;
use shardcap::client::tokio::{AsyncClient, Options};
use shardcap::protocol::control::CoreStats;
use shardcap::protocol::{ReserveOp, Status, user_id_from_name};

fn op(id: u128, user: u128, pool: u32, qty: u32) -> ReserveOp {
    ReserveOp { id, user, pool, qty, ttl_ms: 0, priority: 0 }
}

/// Frames read, operations applied and operations forwarded, summed over the cores.
fn totals(server: &Server) -> (u64, u64, u64) {
    let stats: Vec<CoreStats> = server.client().server_stats().unwrap();
    stats.iter().fold((0, 0, 0), |(f, o, x), s| (f + s.frames, o + s.operations, x + s.forwarded_out))
}

#[tokio::test(flavor = "current_thread")]
async fn every_operation_lands_on_its_core_in_batches() {
    let server = Server::start(2, &pool("sale", 10_000));
    let client = AsyncClient::connect(server.addr).await.unwrap();
    assert_eq!(client.hello().core_count, 2);
    let pool = client.pool_id("sale").await.unwrap();
    // One reserve per core first: both connections are open before the burst.
    let warm: Vec<u128> = (0..2).map(|c| common::users_on(c, 2, 1)[0]).collect();
    for (i, &user) in warm.iter().enumerate() {
        client.reserve(op(i as u128 + 1, user, pool, 1)).await.unwrap();
    }
    let before = totals(&server);

    // 400 concurrent reserves of users on both cores.
    let calls: Vec<_> = (0..400u128)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(
                async move { client.reserve(op(1000 + i, user_id_from_name(&format!("u{i}")), pool, 1)).await },
            )
        })
        .collect();
    for call in calls {
        let done = call.await.unwrap().unwrap();
        assert!(!done.repeat);
    }
    let after = totals(&server);
    let (frames, ops, forwarded) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    assert_eq!(ops, 400);
    assert_eq!(forwarded, 0, "every operation went straight to its user's core");
    // The calls made together left in a few multi-operation frames (one per core here).
    assert!(frames <= 4, "{frames} frames for 400 concurrent reserves");
    let status = server.client().pool_status(&by_id(pool)).unwrap().unwrap();
    assert_eq!(status.held(), 402);
    assert!(client.capacity_hint(pool).is_some_and(|h| h < 10_000));
}

/// A TCP proxy to `upstream` that, when told, drops the next answer and cuts the
/// connection (as a network failure would after the server acted).
struct Proxy {
    addr: SocketAddr,
    cut_next_answer: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut_next_answer = Arc::new(AtomicBool::new(false));
        let cut = cut_next_answer.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(upstream).unwrap();
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = c_read.read(&mut buf) {
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                let cut = cut.clone();
                std::thread::spawn(move || {
                    let (mut s_read, mut c_write) = (server, client);
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = s_read.read(&mut buf) {
                        if cut.swap(false, Ordering::SeqCst) {
                            let _ = c_write.shutdown(std::net::Shutdown::Both);
                            let _ = s_read.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Proxy { addr, cut_next_answer }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_retried_after_a_dropped_connection_takes_capacity_once() {
    let server = Server::start(2, &pool("tickets", 100));
    let proxy = Proxy::start(server.addr);
    let options = Options { shard_aware: false, timeout: Duration::from_secs(5), retries: 3, ..Options::default() };
    let client = AsyncClient::connect_with(proxy.addr, options).await.unwrap();
    let pool = client.pool_id("tickets").await.unwrap();
    let alice = user_id_from_name("alice");
    // The connection through the proxy is open; the next answer is lost on the way.
    client.reserve(op(1, alice, pool, 1)).await.unwrap();
    proxy.cut_next_answer.store(true, Ordering::SeqCst);

    let done = client.reserve(op(2, alice, pool, 3)).await.expect("the retry succeeds");
    assert!(!proxy.cut_next_answer.load(Ordering::SeqCst), "the first answer was cut");
    assert!(done.repeat, "the server had applied the reserve: the retry is a repeat");
    let status = server.client().pool_status(&by_id(pool)).unwrap().unwrap();
    assert_eq!(status.held(), 1 + 3, "the 3 units are held once");

    // The same id with another quantity is a different request: refused, not reserved.
    let other = client.reserve(op(2, alice, pool, 4)).await.unwrap_err();
    assert_eq!(other.status(), Some(Status::IdExistsWithDifferentQuantity));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_or_unreachable_server_sends_reserves_to_the_other() {
    let a = Server::start(1, &pool("venue", 10));
    let b = Server::start(2, &pool("venue", 10));
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let venues = Fallback::connect(&[(a_addr.as_str(), "venue"), (b_addr.as_str(), "venue")]).await.unwrap();
    assert_eq!(venues.len(), 2);

    // 15 users who prefer server 0: 10 get it, then it is sold out and 5 land on server 1.
    let mut landed = [0u32; 2];
    for i in 0..15u128 {
        let (venue, done) = venues.reserve(op(100 + i, user_id_from_name(&format!("fan{i}")), 0, 1), 0).await.unwrap();
        assert!(!done.repeat);
        landed[venue] += 1;
    }
    assert_eq!(landed, [10, 5]);
    assert_eq!(venues.capacity_hint(0), Some(0), "server 0 said it has nothing left");
    let held = |s: &Server| s.client().pool_status(&by_id(1)).unwrap().unwrap().held();
    assert_eq!((held(&a), held(&b)), (10, 5));

    // A first choice that cannot be reached (nothing was sent): its fans land on server 1
    // until that is sold out too.
    let gone = a.addr.to_string();
    drop(a);
    let venues = Fallback::connect(&[(gone.as_str(), "venue"), (b_addr.as_str(), "venue")]).await.unwrap();
    for i in 15..20u128 {
        let (venue, _) = venues.reserve(op(100 + i, user_id_from_name(&format!("fan{i}")), 0, 1), 0).await.unwrap();
        assert_eq!(venue, 1);
    }
    assert_eq!(held(&b), 10);
    let refused = venues.reserve(op(200, user_id_from_name("late"), 0, 1), 0).await.unwrap_err();
    assert_eq!(refused.status(), Some(Status::SoldOut), "{refused}");

    // A refusal that would be the same anywhere is not sent elsewhere.
    let zero = venues.reserve(op(201, user_id_from_name("zero"), 0, 0), 1).await.unwrap_err();
    assert!(matches!(zero, Error::Status { status: Status::InvalidQuantity, .. }), "{zero}");
}

#[test]
fn the_blocking_client_reserves_confirms_and_batches_a_slice() {
    let server = Server::start(2, &pool("seats", 100));
    let client = shardcap::client::blocking::BlockingClient::connect(&server.addr.to_string()).unwrap();
    let pool = client.pool_id("seats").unwrap();
    // Both connections open first, so that the slice is the only traffic measured.
    for (i, core) in (0..2).enumerate() {
        client.reserve(op(1 + i as u128, common::users_on(core, 2, 1)[0], pool, 1)).unwrap();
    }
    let before = totals(&server);
    let ops: Vec<ReserveOp> = (0..60u128).map(|i| op(10 + i, user_id_from_name(&format!("b{i}")), pool, 2)).collect();
    let results = client.reserve_many(&ops);
    let frames = totals(&server).0 - before.0;
    assert!(frames < 60, "the slice left in batches: {frames} frames for 60 reserves");
    let held = results.iter().filter(|r| r.is_ok()).count();
    let sold_out = results.iter().filter(|r| r.as_ref().err().and_then(Error::status) == Some(Status::SoldOut)).count();
    assert_eq!((held, sold_out), (49, 11), "98 units left, 2 each");
    let first = ops.iter().zip(&results).find(|(_, r)| r.is_ok()).unwrap().0;
    let confirm = shardcap::protocol::ConfirmOp { id: first.id, user: first.user, commit_ref: 9 };
    assert_eq!(client.confirm(confirm).unwrap().state, shardcap::protocol::ReservationState::Confirmed);
    assert!(client.confirm(confirm).unwrap().repeat, "a confirm sent again is a repeat");
    assert!(client.capacity_hint(pool).is_some_and(|h| h < 100), "answers carried capacity hints");
    let status = server.client().pool_status(&by_id(pool)).unwrap().unwrap();
    assert_eq!((status.held(), status.confirmed()), (98, 2), "2 single units, 48 pairs held, 1 pair confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_calls_than_frames_in_flight_can_carry_still_all_get_answers() {
    let server = Server::start(1, &pool("big", 1000));
    // Frames of 4 operations, one unanswered at a time: 50 calls queued together need 13
    // frames, sent one after the other as the answers come back.
    let options = Options {
        batch_max: 4,
        frames_in_flight: 1,
        timeout: Duration::from_secs(2),
        retries: 0,
        ..Options::default()
    };
    let client = AsyncClient::connect_with(server.addr, options).await.unwrap();
    let pool = client.pool_id("big").await.unwrap();
    client.reserve(op(1, 1, pool, 1)).await.unwrap();
    let before = totals(&server);
    let calls: Vec<_> = (0..50u128)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.reserve(op(100 + i, 1000 + i, pool, 1)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("answered");
    }
    let after = totals(&server);
    assert_eq!(after.1 - before.1, 50);
    assert!(after.0 - before.0 >= 13, "no frame carries more than 4 operations");
}
