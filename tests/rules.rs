//! Allocation rules in the state machine: sale window, maximum quantity per reserve, rate
//! per user (token bucket) and maximum units per user, with their precedence and their
//! interplay with idempotent repeats, confirm, release, expiry, extend, live rule changes,
//! snapshots and borrowing between cores.
//!
//! How it works: the tables run on one 1-core [`Engine`] (every user on the same core);
//! a row is `(at, command, expected status, expected expires_at_ms)` with times in ms after
//! [`T0`] and 0 for "none", and after every row the runner calls [`Engine::audit`], which
//! also checks every user's counted units against the reservations. The property test
//! drives a multi-core [`Cluster`] (borrowing, parked reserves, releases, expiries, rule
//! changes) and asserts at every step that no user ever holds and has confirmed more than
//! `max_per_user` units of the pool.

use proptest::prelude::*;
use shardcap::protocol::control::{PoolCreate, PoolKind, PoolRules};
use shardcap::protocol::{ConfirmOp, ExtendOp, ReleaseOp, ReservationState, ReserveOp, Status as S, home_core};

const HELD: ReservationState = ReservationState::Held;
const CONFIRMED: ReservationState = ReservationState::Confirmed;
const RELEASED: ReservationState = ReservationState::Released;
const EXPIRED: ReservationState = ReservationState::Expired;
use shardcap::shard::cluster::Cluster;
use shardcap::shard::{Command, Engine, EngineConfig, Outcome, Reply};

const T0: u64 = 1_000_000;
const RETENTION: u64 = 2_000;
const TTL: u32 = 1_000;
const ALICE: u128 = 0xA11CE;
const BOB: u128 = 0xB0B;

fn request(capacity: u64, rules: PoolRules) -> PoolCreate {
    PoolCreate {
        name: "pool".into(),
        capacity,
        hold_ttl_ms_default: TTL,
        hold_ttl_ms_max: 5 * TTL,
        kind: PoolKind::Counted as u8,
        active: true,
        rules,
    }
}

/// Core 0's limits of a `cores`-core cluster: 400 live holds, room for 1,600 finished
/// reservations (kept `retention_ms`, none forgotten early at this scale).
fn limits(cores: u16, retention_ms: u64) -> EngineConfig {
    EngineConfig {
        core: 0,
        cores,
        holds_max: 400,
        parked_max: 64,
        retention_ms,
        retention_min_ms: 0,
        retained_max: 1600,
        pools_max: 4,
    }
}

fn engine(capacity: u64, rules: PoolRules) -> Engine {
    let cfg = EngineConfig {
        core: 0,
        cores: 1,
        holds_max: 100,
        parked_max: 16,
        retention_ms: RETENTION,
        retention_min_ms: 0,
        retained_max: 400,
        pools_max: 4,
    };
    let mut e = Engine::new(cfg, T0);
    let def = e.validate_pool_create(&request(capacity, rules)).expect("valid rules");
    e.create_pool(def);
    e
}

#[derive(Clone, Copy, Debug)]
enum Cmd {
    Reserve { id: u128, user: u128, qty: u32 },
    Confirm { id: u128, user: u128 },
    Release { id: u128, user: u128 },
    Extend { id: u128, user: u128 },
    Rules(PoolRules),
    Tick,
}
use Cmd::*;

fn run(e: &mut Engine, rows: &[(u64, Cmd, S, u64)]) {
    for (n, &(at, cmd, status, expires)) in rows.iter().enumerate() {
        let now = T0 + at;
        let (got_status, got_expires) = match cmd {
            Reserve { id, user, qty } => {
                let op = ReserveOp { id, user, pool: 1, qty, ttl_ms: 0, priority: 0 };
                match e.apply(now, Command::Reserve(op)) {
                    Outcome::Reserve(Reply::Done(r)) => (r.status, r.expires_at_ms),
                    other => panic!("row {n}: a 1-core reserve is decided at once, got {other:?}"),
                }
            }
            Confirm { id, user } => op_result(e.apply(now, Command::Confirm(ConfirmOp { id, user, commit_ref: 1 }))),
            Release { id, user } => op_result(e.apply(now, Command::Release(ReleaseOp { id, user }))),
            Extend { id, user } => op_result(e.apply(now, Command::Extend(ExtendOp { id, user, ttl_ms: 3 * TTL }))),
            Rules(rules) => match e.apply(now, Command::SetPoolRules { pool: 1, rules }) {
                Outcome::Pool(Ok(info)) => {
                    assert_eq!(info.rules, rules, "row {n}: the pool reports its new rules");
                    (S::Ok as u8, 0)
                }
                Outcome::Pool(Err(s)) => (s as u8, 0),
                other => panic!("row {n}: {other:?}"),
            },
            Tick => {
                e.apply(now, Command::Tick);
                (S::Ok as u8, 0)
            }
        };
        assert_eq!(S::from_u8(got_status), Some(status), "row {n}: {cmd:?} status");
        let got = if got_expires == 0 { 0 } else { got_expires - T0 };
        assert_eq!(got, expires, "row {n}: {cmd:?} expires_at_ms");
        e.audit();
    }
}

fn op_result(outcome: Outcome) -> (u8, u64) {
    match outcome {
        Outcome::Op(r) => (r.status, r.expires_at_ms),
        other => panic!("{other:?}"),
    }
}

fn counted(e: &Engine, user: u128) -> u64 {
    e.user_state(1, user).map_or(0, |u| u.counted())
}

#[test]
fn sale_window_and_max_quantity() {
    let rules = PoolRules { opens_at_ms: T0 + 100, closes_at_ms: T0 + 200, max_qty: 3, ..PoolRules::default() };
    let mut e = engine(10, rules);
    #[rustfmt::skip]
    run(&mut e, &[
        // Before the window: not_open, with the opening time.
        (0,   Reserve { id: 1, user: ALICE, qty: 1 }, S::NotOpen,          100),
        (99,  Reserve { id: 1, user: ALICE, qty: 1 }, S::NotOpen,          100),
        // The id of a refused reserve is not burnt.
        (100, Reserve { id: 1, user: ALICE, qty: 1 }, S::Ok,               1100),
        (150, Reserve { id: 2, user: ALICE, qty: 4 }, S::QuantityAboveMax, 0),
        (150, Reserve { id: 2, user: ALICE, qty: 3 }, S::Ok,               1150),
        // Closed from closes_at on, but an idempotent repeat still answers ok and existing
        // holds can still be confirmed, released and extended.
        (200, Reserve { id: 3, user: BOB,   qty: 1 }, S::Closed,           0),
        (200, Reserve { id: 1, user: ALICE, qty: 1 }, S::Ok,               1100),
        (201, Extend  { id: 1, user: ALICE },         S::Ok,               3201),
        (202, Confirm { id: 1, user: ALICE },         S::Ok,               0),
        (203, Release { id: 2, user: ALICE },         S::Ok,               0),
        // A live change reopens the pool for the next reserve.
        (300, Rules(PoolRules { max_qty: 3, ..PoolRules::default() }), S::Ok, 0),
        (300, Reserve { id: 3, user: BOB,   qty: 3 }, S::Ok,               1300),
        // Inconsistent rules are refused and change nothing.
        (301, Rules(PoolRules { opens_at_ms: 5, closes_at_ms: 5, ..PoolRules::default() }), S::InvalidRules, 0),
        (301, Reserve { id: 4, user: BOB,   qty: 4 }, S::QuantityAboveMax, 0),
    ]);
}

#[test]
fn max_per_user_counts_held_and_confirmed_units_and_frees_on_release_and_expiry() {
    let rules = PoolRules { max_per_user: 4, ..PoolRules::default() };
    let mut e = engine(100, rules);
    #[rustfmt::skip]
    run(&mut e, &[
        (0,    Reserve { id: 1, user: ALICE, qty: 3 }, S::Ok,               1000),
        (1,    Reserve { id: 2, user: ALICE, qty: 2 }, S::UserLimitReached, 0),
        (1,    Reserve { id: 2, user: ALICE, qty: 1 }, S::Ok,               1001),
        // A repeat of a held reserve answers ok and takes nothing.
        (2,    Reserve { id: 2, user: ALICE, qty: 1 }, S::Ok,               1001),
        (2,    Reserve { id: 3, user: ALICE, qty: 1 }, S::UserLimitReached, 0),
        // Another user has a limit of their own.
        (2,    Reserve { id: 4, user: BOB,   qty: 4 }, S::Ok,               1002),
        // Confirmed units still count; released ones do not.
        (3,    Confirm { id: 1, user: ALICE },         S::Ok,               0),
        (4,    Reserve { id: 3, user: ALICE, qty: 1 }, S::UserLimitReached, 0),
        (5,    Release { id: 2, user: ALICE },         S::Ok,               0),
        (6,    Reserve { id: 3, user: ALICE, qty: 1 }, S::Ok,               1006),
        // Extending changes no count.
        (7,    Extend  { id: 3, user: ALICE },         S::Ok,               3007),
        (8,    Reserve { id: 5, user: ALICE, qty: 1 }, S::UserLimitReached, 0),
        // Bob's hold expires: his units are his again.
        (1002, Tick,                                   S::Ok,               0),
        (1003, Reserve { id: 6, user: BOB,   qty: 4 }, S::Ok,               2003),
    ]);
    assert_eq!((counted(&e, ALICE), counted(&e, BOB)), (4, 4));
    let alice = e.user_state(1, ALICE).unwrap();
    assert_eq!((alice.held, alice.confirmed, alice.pending), (1, 3, 0));
}

#[test]
fn rate_limit_is_a_token_bucket_per_user_and_repeats_cost_nothing() {
    // 10 attempts per second, 2 at once: a new attempt every 100 ms.
    let rules = PoolRules { rate_per_s: 10, burst: 2, ..PoolRules::default() };
    let mut e = engine(100, rules);
    #[rustfmt::skip]
    run(&mut e, &[
        (0,   Reserve { id: 1, user: ALICE, qty: 1 }, S::Ok,          1000),
        (0,   Reserve { id: 2, user: ALICE, qty: 1 }, S::Ok,          1000),
        // A repeat is not an attempt.
        (0,   Reserve { id: 2, user: ALICE, qty: 1 }, S::Ok,          1000),
        // The answer says when the next attempt comes.
        (0,   Reserve { id: 3, user: ALICE, qty: 1 }, S::RateLimited, 100),
        (50,  Reserve { id: 3, user: ALICE, qty: 1 }, S::RateLimited, 100),
        (50,  Reserve { id: 9, user: BOB,   qty: 1 }, S::Ok,          1050),
        (100, Reserve { id: 3, user: ALICE, qty: 1 }, S::Ok,          1100),
        (100, Reserve { id: 4, user: ALICE, qty: 1 }, S::RateLimited, 200),
        // Refusals by a later rule still use up an attempt: 2 attempts back after 200 ms.
        (300, Rules(PoolRules { rate_per_s: 10, burst: 2, max_qty: 1, ..PoolRules::default() }), S::Ok, 0),
        (300, Reserve { id: 4, user: ALICE, qty: 2 }, S::QuantityAboveMax, 0),
        (300, Reserve { id: 4, user: ALICE, qty: 1 }, S::Ok,          1300),
        (300, Reserve { id: 5, user: ALICE, qty: 1 }, S::Ok,          1300),
        (300, Reserve { id: 6, user: ALICE, qty: 1 }, S::RateLimited, 400),
    ]);
}

#[test]
fn idle_users_are_compacted() {
    let rules = PoolRules { max_per_user: 2, rate_per_s: 10, burst: 1, ..PoolRules::default() };
    let mut e = engine(100, rules);
    #[rustfmt::skip]
    run(&mut e, &[
        (0,   Reserve { id: 1, user: ALICE, qty: 1 }, S::Ok, 1000),
        (0,   Reserve { id: 2, user: BOB,   qty: 1 }, S::Ok, 1000),
        (10,  Release { id: 2, user: BOB },           S::Ok, 0),
    ]);
    assert!(e.user_state(1, BOB).is_some(), "kept until Bob's bucket is full again");
    run(&mut e, &[(100, Tick, S::Ok, 0)]);
    assert_eq!(e.user_state(1, BOB), None, "an idle user with a full bucket is dropped");
    assert!(e.user_state(1, ALICE).is_some(), "a user with a hold is kept");
    run(&mut e, &[(1000, Tick, S::Ok, 0)]);
    assert_eq!(e.user_state(1, ALICE), None, "dropped once the hold expired and the bucket is full");
}

#[test]
fn turning_a_limit_on_counts_the_reservations_already_there() {
    let mut e = engine(100, PoolRules::default());
    #[rustfmt::skip]
    run(&mut e, &[
        (0, Reserve { id: 1, user: ALICE, qty: 3 }, S::Ok,               1000),
        (0, Reserve { id: 2, user: ALICE, qty: 2 }, S::Ok,               1000),
        (1, Confirm { id: 2, user: ALICE },         S::Ok,               0),
        (2, Rules(PoolRules { max_per_user: 6, ..PoolRules::default() }), S::Ok, 0),
        (3, Reserve { id: 3, user: ALICE, qty: 2 }, S::UserLimitReached, 0),
        (3, Reserve { id: 3, user: ALICE, qty: 1 }, S::Ok,               1003),
        // Turning it off drops the per-user state; on again, counts afresh.
        (4, Rules(PoolRules::default()),            S::Ok,               0),
        (4, Reserve { id: 4, user: ALICE, qty: 5 }, S::Ok,               1004),
        (5, Rules(PoolRules { max_per_user: 6, ..PoolRules::default() }), S::Ok, 0),
        (5, Reserve { id: 5, user: ALICE, qty: 1 }, S::UserLimitReached, 0),
    ]);
    assert_eq!(counted(&e, ALICE), 11);
}

#[test]
fn rules_and_user_counts_survive_a_snapshot() {
    let rules = PoolRules { max_per_user: 3, rate_per_s: 1, burst: 2, ..PoolRules::default() };
    let mut e = engine(100, rules);
    #[rustfmt::skip]
    run(&mut e, &[
        (0, Reserve { id: 1, user: ALICE, qty: 2 }, S::Ok, 1000),
        (0, Reserve { id: 2, user: BOB,   qty: 1 }, S::Ok, 1000),
    ]);
    let head = e.snapshot_begin();
    let mut records = Vec::new();
    while !e.snapshot_chunk(16, &mut records) {}
    let mut restored = Engine::restore(&head, &records).expect("a consistent snapshot");
    assert_eq!(restored.pool_info(1).unwrap().rules, rules);
    assert_eq!(restored.user_state(1, ALICE), e.user_state(1, ALICE));
    #[rustfmt::skip]
    run(&mut restored, &[
        (1, Reserve { id: 3, user: ALICE, qty: 2 }, S::UserLimitReached, 0),
        (1, Reserve { id: 3, user: ALICE, qty: 1 }, S::RateLimited,      1000),
    ]);
}

// ----- many cores ------------------------------------------------------------------------------

const MAX_PER_USER: u64 = 4;

#[derive(Clone, Debug)]
enum Step {
    Reserve { user: u8, id: u8, qty: u8 },
    Confirm { user: u8, id: u8 },
    Release { user: u8, id: u8 },
    Deliver { count: u8 },
    Advance { ms: u16 },
    ToggleLimit,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..6u8, 0..40u8, 1..4u8).prop_map(|(user, id, qty)| Step::Reserve { user, id, qty }),
        2 => (0..6u8, 0..40u8).prop_map(|(user, id)| Step::Confirm { user, id }),
        2 => (0..6u8, 0..40u8).prop_map(|(user, id)| Step::Release { user, id }),
        4 => (0..10u8).prop_map(|count| Step::Deliver { count }),
        1 => (0..1500u16).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::ToggleLimit),
    ]
}

/// Units user `user` holds and has confirmed in pool 1, from the reservations on every
/// core (they all live on the user's home core).
fn units_of(c: &Cluster, user: u128) -> u64 {
    (1u128..=255)
        .map(|id| shardcap::protocol::LookupOp { id, user })
        .filter_map(|op| {
            let core = home_core(user, c.cores());
            match c.engines[core as usize].lookup(0, &op) {
                r if r.status == S::Ok as u8 && r.state == ReservationState::Held as u8 => Some(r.qty as u64),
                r if r.status == S::Ok as u8 && r.state == ReservationState::Confirmed as u8 => Some(r.qty as u64),
                _ => None,
            }
        })
        .sum()
}

proptest! {
    /// Users race for a small pool spread over 2 or 3 cores, so that shards run dry, borrow
    /// and park reserves; the limit per user is turned off and on while it happens. While it
    /// is on, no user ever has more than `MAX_PER_USER` units held and confirmed, and every
    /// core's per-user counts agree with its reservations.
    #[test]
    fn no_user_ever_exceeds_max_per_user(cores in 2..=3u16, steps in prop::collection::vec(step(), 1..150)) {
        let template = limits(cores, 100_000);
        let mut c = Cluster::new(cores, template, T0);
        let limit = PoolRules { max_per_user: MAX_PER_USER, ..PoolRules::default() };
        c.create_pool(&request(12, limit)).unwrap();
        let users: Vec<u128> = (0..6u128).map(|u| 1000 + u).collect();
        let mut now = T0;
        let mut limited = true;
        // How far above the limit each user was (held, confirmed or waiting) when the limit
        // was last turned on.
        let mut exempt = [0u64; 6];
        for s in &steps {
            match *s {
                Step::Reserve { user, id, qty } => {
                    let op = ReserveOp { id: id as u128 + 1, user: users[user as usize], pool: 1, qty: qty as u32, ttl_ms: 0, priority: 0 };
                    c.submit(now, Command::Reserve(op));
                }
                Step::Confirm { user, id } => {
                    c.submit(now, Command::Confirm(ConfirmOp { id: id as u128 + 1, user: users[user as usize], commit_ref: 1 }));
                }
                Step::Release { user, id } => {
                    c.submit(now, Command::Release(ReleaseOp { id: id as u128 + 1, user: users[user as usize] }));
                }
                Step::Deliver { count } => {
                    for _ in 0..count {
                        let busy = c.busy_links();
                        if busy.is_empty() {
                            break;
                        }
                        let (from, to) = busy[(now as usize + count as usize) % busy.len()];
                        c.deliver(now, from, to);
                    }
                }
                Step::Advance { ms } => {
                    now += ms as u64;
                    for core in 0..cores {
                        c.apply(now, core, Command::Tick);
                    }
                }
                Step::ToggleLimit => {
                    limited = !limited;
                    let rules = if limited { limit } else { PoolRules::default() };
                    for core in 0..cores {
                        c.apply(now, core, Command::SetPoolRules { pool: 1, rules });
                    }
                    // Reserves already held or waiting are not checked again: what a user
                    // has or waits for when the limit comes on may stay above it.
                    for (i, &u) in users.iter().enumerate() {
                        let core = home_core(u, cores) as usize;
                        let counted = c.engines[core].user_state(1, u).map_or(0, |e| e.counted());
                        exempt[i] = counted.saturating_sub(MAX_PER_USER);
                    }
                }
            }
            c.check();
            for e in &c.engines {
                e.audit();
            }
            if limited {
                for (i, &u) in users.iter().enumerate() {
                    let units = units_of(&c, u);
                    prop_assert!(units <= MAX_PER_USER + exempt[i], "user {} has {} units (limit {})", i, units, MAX_PER_USER);
                }
            }
        }
    }
}

#[test]
fn adding_a_limit_to_a_rate_counts_afresh_and_a_new_rate_starts_full() {
    let rate = PoolRules { rate_per_s: 1, burst: 3, ..PoolRules::default() };
    let mut e = engine(100, rate);
    #[rustfmt::skip]
    run(&mut e, &[
        (0, Reserve { id: 1, user: ALICE, qty: 2 }, S::Ok,               1000),
        (0, Confirm { id: 1, user: ALICE },         S::Ok,               0),
        // With a rate alone, confirmed units need not be kept...
        (0, Rules(PoolRules { max_per_user: 3, ..rate }), S::Ok, 0),
        // ...so adding a limit counts them from the reservations (2 confirmed).
        (0, Reserve { id: 2, user: ALICE, qty: 2 }, S::UserLimitReached, 0),
        (0, Reserve { id: 2, user: ALICE, qty: 1 }, S::Ok,               1000),
        // A limit alone keeps no bucket; a rate added later starts with a full one (3).
        (1, Rules(PoolRules { max_per_user: 10, ..PoolRules::default() }), S::Ok, 0),
        (2, Rules(PoolRules { max_per_user: 10, ..rate }), S::Ok, 0),
        (2, Reserve { id: 3, user: ALICE, qty: 1 }, S::Ok,               1002),
        (2, Reserve { id: 4, user: ALICE, qty: 1 }, S::Ok,               1002),
        (2, Reserve { id: 5, user: ALICE, qty: 1 }, S::Ok,               1002),
        (2, Reserve { id: 6, user: ALICE, qty: 1 }, S::RateLimited,      1002),
    ]);
    assert_eq!(counted(&e, ALICE), 6);
}

#[test]
fn tracked_users_keep_their_activity_for_the_retention_period() {
    let track = PoolRules { flags: shardcap::protocol::control::RULE_FLAG_TRACK_USERS, ..PoolRules::default() };
    let mut e = engine(100, track);
    #[rustfmt::skip]
    run(&mut e, &[
        (0,   Reserve { id: 1, user: ALICE, qty: 2 }, S::Ok, 1000),
        (0,   Reserve { id: 2, user: ALICE, qty: 3 }, S::Ok, 1000),
        (0,   Reserve { id: 3, user: ALICE, qty: 4 }, S::Ok, 1000),
        (10,  Confirm { id: 1, user: ALICE },         S::Ok, 0),
        (20,  Release { id: 2, user: ALICE },         S::Ok, 0),
        // Hold 3 expires at 1000.
        (1000, Tick,                                  S::Ok, 0),
    ]);
    let a = e.user_activity(T0 + 1000, ALICE, 1, 0, 4);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].held, a[0].confirmed, a[0].pending, a[0].released, a[0].expired), (0, 2, 0, 3, 4));
    assert_eq!(a[0].last_activity_ms, T0 + 1000, "the expiry is the last activity");
    // The four most recent events, newest first: the expiry of 3, the release of 2, the
    // confirm of 1, the hold of 3 (the holds of 1 and 2 fell out).
    let events: Vec<(u128, u8, u64)> = a[0].events.iter().map(|ev| (ev.id, ev.state, ev.at_ms - T0)).collect();
    let (h, c, r, x) = (HELD as u8, CONFIRMED as u8, RELEASED as u8, EXPIRED as u8);
    assert_eq!(events, [(3, x, 1000), (2, r, 20), (1, c, 10), (3, h, 0)]);
    let released = e.user_activity(T0 + 1000, ALICE, 1, r, 4);
    assert_eq!(released[0].events.iter().map(|ev| ev.id).collect::<Vec<_>>(), [2], "filtered by state");
    assert!(e.user_activity(T0 + 1000, ALICE, 1, 0, 0)[0].events.is_empty(), "no events asked for");
    assert_eq!(e.user_activity(T0 + 1000, ALICE, 0, 0, 4), a, "every pool: the same single pool");
    assert!(e.user_activity(T0 + 1000, BOB, 0, 0, 4).is_empty(), "nothing for a user who did nothing");
    // Without a limit, confirmed units do not keep the entry: it goes RETENTION after the
    // last activity.
    run(&mut e, &[(1000 + RETENTION - 1, Tick, S::Ok, 0)]);
    assert_eq!(e.user_activity(T0 + 1000 + RETENTION - 1, ALICE, 1, 0, 4).len(), 1);
    assert!(!e.tick_due(T0 + 1000 + RETENTION - 1));
    assert!(e.tick_due(T0 + 1000 + RETENTION), "a compaction due makes a tick due (and logged)");
    run(&mut e, &[(1000 + RETENTION, Tick, S::Ok, 0)]);
    assert!(e.user_activity(T0 + 1000 + RETENTION, ALICE, 1, 0, 4).is_empty(), "compacted after the retention period");
}

#[test]
fn turning_tracking_on_counts_the_reservations_already_there_and_compacts_idle_users() {
    let mut e = engine(100, PoolRules::default());
    #[rustfmt::skip]
    run(&mut e, &[
        (0,  Reserve { id: 1, user: ALICE, qty: 2 }, S::Ok, 1000),
        (0,  Reserve { id: 2, user: BOB,   qty: 3 }, S::Ok, 1000),
        (10, Release { id: 2, user: BOB },           S::Ok, 0),
        (20, Rules(PoolRules { flags: shardcap::protocol::control::RULE_FLAG_TRACK_USERS, ..PoolRules::default() }), S::Ok, 0),
        // Alice's hold, held before tracking began, is released: counted, no underflow.
        (30, Release { id: 1, user: ALICE },         S::Ok, 0),
    ]);
    let a = e.user_activity(T0 + 30, ALICE, 1, 0, 4);
    assert_eq!((a[0].held, a[0].released), (0, 2));
    let b = e.user_activity(T0 + 30, BOB, 1, 0, 4);
    assert_eq!((b[0].held, b[0].released, b[0].last_activity_ms), (0, 3, T0 + 20), "counted at the rule change");
    // Bob holds nothing: his entry goes RETENTION after the rule change, Alice's after her
    // release.
    run(&mut e, &[(20 + RETENTION, Tick, S::Ok, 0)]);
    assert!(e.user_activity(T0 + 20 + RETENTION, BOB, 1, 0, 4).is_empty());
    assert_eq!(e.user_activity(T0 + 20 + RETENTION, ALICE, 1, 0, 4).len(), 1);
    run(&mut e, &[(30 + RETENTION, Tick, S::Ok, 0)]);
    assert!(e.user_activity(T0 + 30 + RETENTION, ALICE, 1, 0, 4).is_empty());
}

#[test]
fn attempts_left_are_reported_as_of_the_query() {
    let rate = PoolRules { rate_per_s: 1, burst: 4, ..PoolRules::default() };
    let mut e = engine(100, rate);
    run(&mut e, &[(0, Reserve { id: 1, user: ALICE, qty: 1 }, S::Ok, 1000)]);
    assert_eq!(e.user_activity(T0, ALICE, 1, 0, 4)[0].attempts_left_milli, 3000);
    assert_eq!(e.user_activity(T0 + 500, ALICE, 1, 0, 4)[0].attempts_left_milli, 3500);
    assert_eq!(e.user_activity(T0 + 9000, ALICE, 1, 0, 4)[0].attempts_left_milli, 4000, "never above the burst");
}

// ----- priority: a kept share ------------------------------------------------------------------

/// Reserves `qty` units for `user` with `priority` on the user's home core, lets every
/// message be delivered, and answers the status.
fn reserve_settled(c: &mut Cluster, now: u64, id: u128, user: u128, qty: u32, priority: u8) -> S {
    let op = ReserveOp { id, user, pool: 1, qty, ttl_ms: 0, priority };
    let core = home_core(user, c.cores());
    let Outcome::Reserve(reply) = c.submit(now, Command::Reserve(op)) else { panic!("a reserve answers a reply") };
    c.settle(now, |n| n - 1);
    let r = c.reserve_result(core, reply).expect("decided once every message is delivered");
    S::from_u8(r.status).expect("known status")
}

#[test]
fn general_reserves_leave_the_kept_share_to_priority_reserves_on_every_core() {
    // 100 units, 10 kept for priority 5 and up; 2 cores, the home core is core 1.
    let kept = PoolRules { kept_permille: 100, priority_min: 5, ..PoolRules::default() };
    let template = limits(2, RETENTION);
    let mut c = Cluster::new(2, template, T0);
    let info = c.create_pool(&request(100, kept)).unwrap();
    assert_eq!(info.home_core, 1);
    let caps: Vec<u64> = c.shards(1).iter().map(|s| s.capacity).collect();
    assert_eq!(caps, [45, 55], "the home core starts with the kept units on top of its even share");

    let users: Vec<u128> = (1u128..)
        .filter(|&u| home_core(u, 2) == 0)
        .take(2)
        .chain((1u128..).filter(|&u| home_core(u, 2) == 1).take(2))
        .collect();
    // General users on both cores take 3 units at a time until sold out.
    let mut id = 0;
    let mut general = 0;
    for round in 0..100 {
        let user = users[round % 4];
        id += 1;
        match reserve_settled(&mut c, T0, id, user, 3, 0) {
            S::Ok => general += 3,
            S::SoldOut => break,
            other => panic!("general reserve {id}: {other:?}"),
        }
    }
    // 90 general units: 30 reserves of 3. A last unit would take a kept one.
    assert_eq!(general, 90);
    id += 1;
    assert_eq!(reserve_settled(&mut c, T0, id, users[0], 1, 4), S::SoldOut, "priority 4 is below the kept share's");
    assert_eq!(c.totals(1), (90, 0, 10));
    // Priority users get the kept units on either core: 4 on core 0 (borrowed from the
    // home core), 6 on core 1.
    id += 1;
    assert_eq!(reserve_settled(&mut c, T0, id, users[1], 4, 5), S::Ok);
    id += 1;
    assert_eq!(reserve_settled(&mut c, T0, id, users[2], 6, 9), S::Ok);
    id += 1;
    assert_eq!(reserve_settled(&mut c, T0, id, users[3], 1, 9), S::SoldOut, "the whole pool is taken");
    assert_eq!(c.totals(1), (100, 0, 0));
    c.check();
}

#[test]
fn a_smaller_capacity_leaves_the_kept_share_and_a_larger_one_grows_it() {
    // 100 units, 10 kept for priority 5 and up; 2 cores, the home core is core 1.
    let rules = PoolRules { kept_permille: 100, priority_min: 5, ..PoolRules::default() };
    let template = limits(2, RETENTION);
    let mut c = Cluster::new(2, template, T0);
    c.create_pool(&request(100, rules)).unwrap();
    let (u0, u1) =
        ((1u128..).find(|&u| home_core(u, 2) == 0).unwrap(), (1u128..).find(|&u| home_core(u, 2) == 1).unwrap());
    for id in 1..=9 {
        assert_eq!(reserve_settled(&mut c, T0, id, if id % 2 == 0 { u0 } else { u1 }, 10, 0), S::Ok, "general {id}");
    }
    assert_eq!(c.totals(1), (90, 0, 10));
    // The 10 free units are the kept ones: a shrink may take only what keeps the new
    // capacity's kept units free (kept_units(99) = 9, kept_units(95) = 9).
    assert_eq!((rules.kept_units(99), rules.kept_units(95)), (9, 9));
    assert_eq!(c.resize_pool(T0, 1, 95, |n| n - 1), Err(S::CapacityInUse));
    assert_eq!(c.resize_pool(T0, 1, 99, |n| n - 1).map(|i| i.capacity), Ok(99));
    c.check();
    assert_eq!(reserve_settled(&mut c, T0, 20, u0, 1, 0), S::SoldOut, "the 9 free units are kept");
    // Growing to 120 adds 21 units: 12 of the 30 free ones are kept now, so general
    // reserves (on either core) get 18 more.
    assert_eq!(c.resize_pool(T0, 1, 120, |n| n - 1).map(|i| i.capacity), Ok(120));
    assert_eq!(reserve_settled(&mut c, T0, 21, u0, 10, 0), S::Ok);
    assert_eq!(reserve_settled(&mut c, T0, 24, u1, 8, 0), S::Ok);
    assert_eq!(reserve_settled(&mut c, T0, 22, u1, 1, 0), S::SoldOut);
    assert_eq!(reserve_settled(&mut c, T0, 23, u0, 12, 5), S::Ok, "priority reserves take the kept units");
    assert_eq!(c.totals(1), (120, 0, 0));
    c.check();
}

#[test]
fn a_home_core_whose_share_went_below_zero_and_a_description_survive_a_snapshot() {
    // 100 units on 2 cores (50 each, home core 1); core 0's users hold 10. Down to 10 units:
    // the home core takes its own 50 and the 40 core 0 had free, 90 in all, so its share is
    // 50 - 90 = -40 and core 0's stays 50: together 10.
    let template = limits(2, RETENTION);
    let mut c = Cluster::new(2, template, T0);
    c.create_pool(&request(100, PoolRules::default())).unwrap();
    let u0 = (1u128..).find(|&u| home_core(u, 2) == 0).unwrap();
    assert_eq!(reserve_settled(&mut c, T0, 1, u0, 10, 0), S::Ok);
    assert_eq!(c.resize_pool(T0, 1, 10, |n| n - 1).map(|i| i.capacity), Ok(10));
    c.check();
    let shards = c.shards(1);
    assert_eq!(shards.iter().map(|s| (s.capacity, s.held)).collect::<Vec<_>>(), [(10, 10), (0, 0)]);
    // The home core's shard: capacity 0, borrowed 40, so its share is -40.
    assert_eq!((shards[1].lent, shards[1].borrowed), (0, 40));
    let home = &mut c.engines[1];
    let description = "hall B, row 1-40".into();
    let Outcome::Pool(Ok(_)) = home.apply(T0, Command::DescribePool { pool: 1, description }) else {
        panic!("a description is accepted")
    };
    let head = home.snapshot_begin();
    let mut records = Vec::new();
    while !home.snapshot_chunk(16, &mut records) {}
    let mut restored = Engine::restore(&head, &records).expect("a consistent snapshot");
    restored.audit();
    assert_eq!(restored.shard_snapshot(1), home.shard_snapshot(1));
    assert_eq!(restored.pool_info(1).unwrap().description, "hall B, row 1-40", "the description too");
    // Growing again from there: the home core's share back to 0 and above.
    let Outcome::Pool(Ok(info)) = restored.apply(T0, Command::ResizePool { pool: 1, capacity: 60 }) else {
        panic!("a larger capacity is accepted")
    };
    assert_eq!((info.capacity, restored.shard_snapshot(1).unwrap().capacity), (60, 50));
    restored.audit();
}

#[derive(Clone, Debug)]
enum PStep {
    Reserve { user: u8, qty: u8, priority: bool },
    ReleaseGeneral { nth: u8 },
    Deliver { count: u8 },
}

fn pstep() -> impl Strategy<Value = PStep> {
    prop_oneof![
        6 => (0..8u8, 1..4u8, any::<bool>()).prop_map(|(user, qty, priority)| PStep::Reserve { user, qty, priority }),
        1 => (0..64u8).prop_map(|nth| PStep::ReleaseGeneral { nth }),
        4 => (0..12u8).prop_map(|count| PStep::Deliver { count }),
    ]
}

proptest! {
    /// General and priority reserves race for a pool with a kept share on 2 or 3 cores
    /// (shards run dry, borrow, recall); general holds are released now and then. At every
    /// step the general reserves hold at most capacity - kept units, and the invariants of
    /// every core hold. (Priority holds are not released here: a priority hold released on
    /// a core other than the home core while the pool is not drained frees its units on
    /// that core, where a general reserve may take them; see PROTOCOL.md 6.7.)
    #[test]
    fn general_reserves_never_take_the_kept_share(
        cores in 2..=3u16,
        capacity in 10..60u64,
        permille in 1..=500u16,
        steps in prop::collection::vec(pstep(), 1..200),
    ) {
        let rules = PoolRules { kept_permille: permille, priority_min: 1, ..PoolRules::default() };
        let template = limits(cores, RETENTION);
        let mut c = Cluster::new(cores, template, T0);
        c.create_pool(&request(capacity, rules)).unwrap();
        let kept = rules.kept_units(capacity);
        let users: Vec<u128> = (0..8u128).map(|u| 500 + u).collect();
        // General reservations: (id, user, qty).
        let mut general: Vec<(u128, u128, u64)> = Vec::new();
        let mut next_id = 0u128;
        for s in &steps {
            match *s {
                PStep::Reserve { user, qty, priority } => {
                    next_id += 1;
                    let op = ReserveOp { id: next_id, user: users[user as usize], pool: 1, qty: qty as u32, ttl_ms: 0, priority: priority as u8 };
                    c.submit(T0, Command::Reserve(op));
                    if !priority {
                        general.push((next_id, users[user as usize], qty as u64));
                    }
                }
                PStep::ReleaseGeneral { nth } => {
                    if let Some(&(id, user, _)) = general.get(nth as usize) {
                        c.submit(T0, Command::Release(ReleaseOp { id, user }));
                    }
                }
                PStep::Deliver { count } => {
                    for _ in 0..count {
                        let busy = c.busy_links();
                        if busy.is_empty() {
                            break;
                        }
                        let (from, to) = busy[(next_id as usize + count as usize) % busy.len()];
                        c.deliver(T0, from, to);
                    }
                }
            }
            c.check();
            let held: u64 = general
                .iter()
                .map(|&(id, user, qty)| {
                    let core = home_core(user, cores) as usize;
                    let r = c.engines[core].lookup(T0, &shardcap::protocol::LookupOp { id, user });
                    if r.status == S::Ok as u8 && r.state == ReservationState::Held as u8 { qty } else { 0 }
                })
                .sum();
            prop_assert!(held <= capacity - kept, "general reserves hold {} of {} units, {} kept", held, capacity, kept);
        }
    }
}

#[test]
fn the_kept_share_is_fixed_at_creation_and_a_large_one_still_undrains() {
    // 90% kept: the general share is 10 units of 100.
    let rules = PoolRules { kept_permille: 900, priority_min: 1, ..PoolRules::default() };
    let mut e = engine(100, rules);
    #[rustfmt::skip]
    run(&mut e, &[
        // The kept share cannot change; the rest of the rules can, priority_min included.
        (0, Rules(PoolRules { kept_permille: 800, ..rules }), S::InvalidRules, 0),
        (0, Rules(PoolRules { priority_min: 3, max_qty: 5, ..rules }), S::Ok, 0),
        (1, Reserve { id: 1, user: ALICE, qty: 5 }, S::Ok, 1001),
        (1, Reserve { id: 2, user: BOB,   qty: 5 }, S::Ok, 1001),
        // The general share is gone: the single core drains.
        (2, Reserve { id: 3, user: BOB,   qty: 1 }, S::SoldOut, 0),
        (3, Release { id: 1, user: ALICE },         S::Ok, 0),
    ]);
    // With every general unit back (5 of 10 is at least an eighth), the pool is normal again.
    let s = e.shard_snapshot(1).unwrap();
    assert_eq!(s.flags & shardcap::protocol::control::SHARD_FLAG_DRAINED, 0, "{s:?}");
}

#[test]
fn a_refused_reserve_leaves_no_event() {
    let track = PoolRules { flags: shardcap::protocol::control::RULE_FLAG_TRACK_USERS, ..PoolRules::default() };
    let mut e = engine(2, track);
    #[rustfmt::skip]
    run(&mut e, &[
        (0, Reserve { id: 1, user: ALICE, qty: 1 }, S::Ok,      1000),
        (1, Reserve { id: 2, user: ALICE, qty: 1 }, S::Ok,      1001),
        (2, Reserve { id: 3, user: ALICE, qty: 1 }, S::SoldOut, 0),
        (3, Release { id: 1, user: ALICE },         S::Ok,      0),
        (4, Reserve { id: 4, user: ALICE, qty: 2 }, S::SoldOut, 0),
    ]);
    let a = e.user_activity(T0 + 4, ALICE, 1, 0, 4);
    let events: Vec<(u128, u8)> = a[0].events.iter().map(|ev| (ev.id, ev.state)).collect();
    assert_eq!(events, [(1, RELEASED as u8), (2, HELD as u8), (1, HELD as u8)], "sold-out reserves are not events");
    assert_eq!((a[0].held, a[0].released), (1, 1));
}
