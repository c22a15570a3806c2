//! Allocation rules end to end, against the real server binary on 2 cores: eight clients
//! acting as one user race on a pool with `max_per_user = 4`; a live rule change reaches
//! every core before it is answered; rules and per-user counts survive a restart; and the
//! refusals carry the status that names the rule.
//!
//! Every loop is bounded in iterations and time; every server runs on loopback and was
//! started by the test.

#![cfg(feature = "server")]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Server, now_ms, users_on};
use shardcap::client::Client;
use shardcap::protocol::control::{PoolRef, PoolRules, UserActivityRequest};
use shardcap::protocol::{ConfirmOp, ReservationState, ReserveOp, Status};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn limited_pool(name: &str, capacity: u64, max_per_user: u64) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\ncapacity = {capacity}\nhold_ttl_s_default = 300\nhold_ttl_s_max = 900\n\
         max_per_user = {max_per_user}\n"
    )
}

fn reserve(id: u128, user: u128, pool: u32, qty: u32) -> ReserveOp {
    common::reserve(id, user, pool, qty, 0)
}

fn status_of(c: &mut Client, op: ReserveOp) -> Status {
    Status::from_u8(c.reserve(&[op]).unwrap()[0].status).expect("known status")
}

#[test]
fn eight_clients_as_one_user_get_exactly_max_per_user() {
    const CLIENTS: usize = 8;
    const ATTEMPTS: u128 = 6;
    let server = Server::start(2, &limited_pool("limited", 1_000, 4));
    let pool = server.client().pool_id("limited").unwrap().expect("pool");
    // The user lives on core 1; half the clients come in through the shared port (their
    // reserves may be forwarded from core 0), half straight to core 1.
    let user = users_on(1, 2, 1)[0];
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let mut c = if n % 2 == 0 { server.client() } else { server.core_client(1) };
            c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut held = Vec::new();
                for k in 0..ATTEMPTS {
                    let id = (n as u128 + 1) << 32 | k;
                    let r = c.reserve(&[reserve(id, user, pool, 1)]).unwrap()[0];
                    match Status::from_u8(r.status) {
                        Some(Status::Ok) => held.push(id),
                        Some(Status::UserLimitReached) => {}
                        other => panic!("client {n}: unexpected status {other:?}"),
                    }
                }
                // Confirm half of what this client got: confirmed units count too.
                let confirms: Vec<ConfirmOp> =
                    held.iter().step_by(2).map(|&id| ConfirmOp { id, user, commit_ref: id }).collect();
                if !confirms.is_empty() {
                    for r in c.confirm(&confirms).unwrap() {
                        assert_eq!(r.status, Status::Ok as u8);
                    }
                }
                held.len()
            })
        })
        .collect();
    let got: usize = threads.into_iter().map(|t| t.join().expect("client thread")).sum();
    assert_eq!(got, 4, "exactly max_per_user reserves succeed among {} attempts", CLIENTS as u128 * ATTEMPTS);

    let mut c = server.client();
    let status = c.pool_status(&PoolRef { id: pool, name: String::new() }).unwrap().unwrap();
    assert_eq!(status.held() + status.confirmed(), 4, "{status:?}");
    // Another user has a limit of their own, on either core.
    for (n, other) in [users_on(0, 2, 1)[0], users_on(1, 2, 2)[1]].into_iter().enumerate() {
        for k in 0..4 {
            assert_eq!(status_of(&mut c, reserve(900 + n as u128 * 10 + k, other, pool, 1)), Status::Ok);
        }
        assert_eq!(status_of(&mut c, reserve(999 - n as u128, other, pool, 1)), Status::UserLimitReached);
    }
}

#[test]
fn a_live_rule_change_applies_to_the_next_request_on_every_core() {
    let server = Server::start(2, &common::pool("live", 1_000));
    let mut admin = server.client();
    let pool = admin.pool_id("live").unwrap().expect("pool");
    let users = [users_on(0, 2, 1)[0], users_on(1, 2, 1)[0]];
    let mut cores = [server.core_client(0), server.core_client(1)];
    for (core, c) in cores.iter_mut().enumerate() {
        assert_eq!(status_of(c, reserve(1, users[core], pool, 3)), Status::Ok, "core {core}: no rule yet");
    }

    let rules = PoolRules { max_qty: 2, ..PoolRules::default() };
    let info = admin.pool_set_rules(pool, rules).unwrap().unwrap();
    assert_eq!(info.rules, rules);
    for (core, c) in cores.iter_mut().enumerate() {
        assert_eq!(status_of(c, reserve(2, users[core], pool, 3)), Status::QuantityAboveMax, "core {core}");
        assert_eq!(status_of(c, reserve(2, users[core], pool, 2)), Status::Ok, "core {core}");
    }

    // A window that closed a second ago, then one that opens in an hour.
    let now = now_ms();
    let closed = PoolRules { closes_at_ms: now - 1_000, ..PoolRules::default() };
    admin.pool_set_rules(pool, closed).unwrap().unwrap();
    for (core, c) in cores.iter_mut().enumerate() {
        assert_eq!(status_of(c, reserve(3, users[core], pool, 1)), Status::Closed, "core {core}");
    }
    let later = PoolRules { opens_at_ms: now + 3_600_000, ..PoolRules::default() };
    admin.pool_set_rules(pool, later).unwrap().unwrap();
    for (core, c) in cores.iter_mut().enumerate() {
        let r = c.reserve(&[reserve(3, users[core], pool, 1)]).unwrap()[0];
        assert_eq!((r.status, r.expires_at_ms), (Status::NotOpen as u8, now + 3_600_000), "core {core}");
    }

    // A limit turned on counts what users already hold, on their own core.
    let limit = PoolRules { max_per_user: 5, ..PoolRules::default() };
    admin.pool_set_rules(pool, limit).unwrap().unwrap();
    for (core, c) in cores.iter_mut().enumerate() {
        assert_eq!(status_of(c, reserve(4, users[core], pool, 1)), Status::UserLimitReached, "core {core}: 5 held");
    }

    // Bad rules are refused and change nothing; an unknown pool is named.
    let bad = PoolRules { rate_per_s: 5, burst: 0, ..PoolRules::default() };
    assert_eq!(admin.pool_set_rules(pool, bad).unwrap(), Err(Status::InvalidRules));
    assert_eq!(admin.pool_set_rules(99, limit).unwrap(), Err(Status::PoolNotFound));
    assert_eq!(admin.pool_info_of(pool).rules, limit);
}

#[test]
fn rules_and_user_counts_survive_a_restart() {
    let config = limited_pool("kept", 100, 3);
    let server = Server::start(2, &config);
    let mut c = server.client();
    let pool = c.pool_id("kept").unwrap().expect("pool");
    let rate = PoolRules { max_per_user: 3, rate_per_s: 1, burst: 5, ..PoolRules::default() };
    c.pool_set_rules(pool, rate).unwrap().unwrap();
    // A refused change is in the log too (logged before it is decided) and must not stop
    // the restart.
    let bad = PoolRules { rate_per_s: 1, ..PoolRules::default() };
    assert_eq!(c.pool_set_rules(pool, bad).unwrap(), Err(Status::InvalidRules));
    let users = [users_on(0, 2, 1)[0], users_on(1, 2, 1)[0]];
    for (n, &user) in users.iter().enumerate() {
        let id = 10 + n as u128;
        assert_eq!(status_of(&mut c, reserve(id, user, pool, 2)), Status::Ok);
        let r = c.confirm(&[ConfirmOp { id, user, commit_ref: 1 }]).unwrap()[0];
        assert_eq!(r.status, Status::Ok as u8);
    }
    drop(c);
    let dir = server.kill();

    // The configuration still says max_per_user = 3 without a rate: the data directory's
    // rules (changed at runtime) win.
    let server = Server::start_in(2, &config, &dir);
    let mut c = server.client();
    assert_eq!(c.pool_info_of(pool).rules, rate, "the rules set at runtime survive");
    for (n, &user) in users.iter().enumerate() {
        let id = 20 + n as u128;
        assert_eq!(status_of(&mut c, reserve(id, user, pool, 2)), Status::UserLimitReached, "user {n}: 2 confirmed");
        assert_eq!(status_of(&mut c, reserve(id, user, pool, 1)), Status::Ok, "user {n}");
    }
}

fn activity(user: u128, pool: u32) -> UserActivityRequest {
    UserActivityRequest { user, pool, state: 0, recent: 4 }
}

trait PoolInfoOf {
    fn pool_info_of(&mut self, pool: u32) -> shardcap::protocol::control::PoolInfo;
}

impl PoolInfoOf for Client {
    fn pool_info_of(&mut self, pool: u32) -> shardcap::protocol::control::PoolInfo {
        self.pool_status(&PoolRef { id: pool, name: String::new() }).unwrap().unwrap().info
    }
}

#[test]
fn user_activity_across_pools_is_answered_from_the_users_home_core() {
    let config = format!(
        "{}{}{}",
        limited_pool("tickets", 100, 4),
        common::pool("plain", 100),
        "[[pool]]\nname = \"tracked\"\ncapacity = 100\ntrack_users = true\n"
    );
    let server = Server::start(2, &config);
    let mut c = server.client();
    let ids: Vec<u32> = ["tickets", "plain", "tracked"].iter().map(|n| c.pool_id(n).unwrap().expect("pool")).collect();
    // A user on core 1, asked through the shared port and through core 0's port.
    let user = users_on(1, 2, 1)[0];
    for (k, &pool) in ids.iter().enumerate() {
        let base = 100 * (k as u128 + 1);
        assert_eq!(status_of(&mut c, reserve(base + 1, user, pool, 2)), Status::Ok);
        assert_eq!(status_of(&mut c, reserve(base + 2, user, pool, 1)), Status::Ok);
        let r = c.confirm(&[ConfirmOp { id: base + 1, user, commit_ref: 0 }]).unwrap()[0];
        assert_eq!(r.status, Status::Ok as u8);
        let r = c.release(&[shardcap::protocol::ReleaseOp { id: base + 2, user }]).unwrap()[0];
        assert_eq!(r.status, Status::Ok as u8);
    }
    let before = now_ms();
    for mut asker in [server.client(), server.core_client(0)] {
        let all = asker.user_activity(activity(user, 0)).unwrap().unwrap();
        // The plain pool keeps no per-user state.
        assert_eq!(all.iter().map(|a| a.pool).collect::<Vec<_>>(), [ids[0], ids[2]]);
        for a in &all {
            assert_eq!((a.held, a.confirmed, a.pending, a.released, a.expired), (0, 2, 0, 1, 0), "{a:?}");
            // Newest first: the release of the second reservation, the confirm of the first,
            // then their holds.
            let base = 100 * (ids.iter().position(|&p| p == a.pool).unwrap() as u128 + 1);
            let states = [
                ReservationState::Released,
                ReservationState::Confirmed,
                ReservationState::Held,
                ReservationState::Held,
            ];
            let mut expected: Vec<(u128, u8)> =
                [base + 2, base + 1, base + 2, base + 1].into_iter().zip(states.map(|s| s as u8)).collect();
            if a.pool == ids[0] {
                expected.clear(); // a limit alone keeps counts, not events
            }
            assert_eq!(a.events.iter().map(|e| (e.id, e.state)).collect::<Vec<_>>(), expected);
            assert!(a.last_activity_ms <= before && a.last_activity_ms + 60_000 > before, "{a:?}");
        }
        let one = asker.user_activity(activity(user, ids[2])).unwrap().unwrap();
        assert_eq!(one, all[1..]);
        let confirmed =
            UserActivityRequest { state: ReservationState::Confirmed as u8, recent: 1, ..activity(user, ids[2]) };
        let one = asker.user_activity(confirmed).unwrap().unwrap();
        assert_eq!(one[0].events.iter().map(|e| e.id).collect::<Vec<_>>(), [301]);
        assert!(asker.user_activity(activity(user, ids[1])).unwrap().unwrap().is_empty());
        assert!(asker.user_activity(activity(users_on(0, 2, 1)[0], 0)).unwrap().unwrap().is_empty());
    }
    assert_eq!(c.user_activity(activity(0, 0)).unwrap(), Err(Status::InvalidUser));
}

#[test]
fn low_priority_clients_exhaust_the_general_share_and_high_priority_ones_get_the_kept_share() {
    let config = "[[pool]]\nname = \"premium\"\ncapacity = 100\nkept_permille = 100\npriority_min = 5\n";
    let server = Server::start(2, config);
    let pool = server.client().pool_id("premium").unwrap().expect("pool");
    // Four low-priority clients, two per core, race until sold_out.
    let threads: Vec<_> = (0..4u16)
        .map(|n| {
            let core = n % 2;
            let user = users_on(core, 2, 4)[n as usize / 2];
            let mut c = server.core_client(core);
            c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
            std::thread::spawn(move || {
                let mut got = 0;
                for k in 0..200u128 {
                    let op = ReserveOp { id: (n as u128 + 1) << 32 | k, user, pool, qty: 1, ttl_ms: 0, priority: 0 };
                    match Status::from_u8(c.reserve(&[op]).unwrap()[0].status) {
                        Some(Status::Ok) => got += 1,
                        Some(Status::SoldOut) => return got,
                        other => panic!("client {n}: {other:?}"),
                    }
                }
                panic!("client {n} never saw sold_out");
            })
        })
        .collect();
    let general: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(general, 90, "the general share is capacity minus the kept 10%");

    // High-priority users on both cores get the 10 kept units, then the pool is sold out.
    let mut c = server.client();
    let premium = [users_on(0, 2, 8)[7], users_on(1, 2, 8)[7]];
    let mut got = 0;
    for k in 0..20u128 {
        let op = ReserveOp { id: 9_000 + k, user: premium[k as usize % 2], pool, qty: 1, ttl_ms: 0, priority: 7 };
        match Status::from_u8(c.reserve(&[op]).unwrap()[0].status) {
            Some(Status::Ok) => got += 1,
            Some(Status::SoldOut) => break,
            other => panic!("premium reserve {k}: {other:?}"),
        }
    }
    assert_eq!(got, 10);
    let status = c.pool_status(&PoolRef { id: pool, name: String::new() }).unwrap().unwrap();
    assert_eq!((status.held(), status.available()), (100, 0), "{status:?}");
    assert!(status.conserved());
}
