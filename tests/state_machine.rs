//! Table-driven tests of the state machine, in the style of TigerBeetle's state machine
//! tests: every test is a table of rows, and a small runner applies the rows in order and
//! asserts each one. The tables are the specification; read them top to bottom.
//!
//! How it works:
//!
//! - **Single-core tables** ([`Row`], run by [`run`]): one [`Engine`] with `cores: 1`, so
//!   every user lives on the same core and the engine's own answers are what a client sees.
//!   A row is `row(at, command, status, state, flags, expires, totals)`:
//!   - `at`: when the command is applied, in ms after [`T0`] (the engine's clock starts at
//!     `T0`; rows must not go back in time);
//!   - `command`: reserve / confirm / release / extend / lookup / set_active / tick;
//!   - `status`, `state`, `flags`: the expected status, reservation state and result flags
//!     (`REPEAT` for an idempotent repeat);
//!   - `expires`: the expected `expires_at_ms`, also in ms after `T0`, where `0` stands for
//!     the literal 0 the engine answers for final states and refusals. For lookups it is the
//!     record's `expires_at_ms`: the hold's expiry while held, the purge time once final;
//!   - `totals`: `(held, confirmed, available)` of every pool (pool 1 first) afterwards.
//!
//!   Lookup rows made with `.lookup(qty, commit_ref)` also check those two fields. A single
//!   core answers every reserve within the call, also one that waited for a recall (with no
//!   other core the recall ends at once): the runner requires `Reply::Done`, never
//!   `Reply::Parked`, and asserts that no completion or message is left behind. After every
//!   row the runner calls [`Engine::audit`].
//!
//! - **Pool catalog tables** run `validate_pool_create` (as core 0 does) and apply each
//!   accepted definition, row by row, asserting the status or the pool id.
//!
//! - **Multi-core tables** ([`NetRow`], run by [`run_net`]): a [`Cluster`] whose borrowing
//!   messages are stepped by hand. A row is a step (submit a client command on its user's
//!   home core, apply a catalog command on every core, or deliver the oldest message of one
//!   link) and the expected state after it:
//!   the reserve's immediate reply, the parked reserves decided during the step (by
//!   reservation id), the links with messages waiting, and every core's shard of pool 1 as
//!   `(capacity, held, lent, borrowed, flags, parked)` with `H` = home, `D` = drained,
//!   `R` = recalling. `cluster.check()` (invariants and conservation of units, in-flight
//!   included) runs after every step.
//!
//! Users are picked by the core they hash to with [`home_core`]. Nothing here sleeps or
//! draws random numbers; every row asserts concrete values.

use std::collections::HashMap;

use shardcap::protocol::control::{
    PoolCreate, PoolKind, SHARD_FLAG_DRAINED, SHARD_FLAG_HOME, SHARD_FLAG_RECALLING, ShardStatus,
};
use shardcap::protocol::{
    ConfirmOp, ExtendOp, LookupOp, LookupResult, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp,
    Status as S, home_core,
};
use shardcap::shard::cluster::{Cluster, route};
use shardcap::shard::{Command, Completion, Engine, EngineConfig, Envelope, Outcome, PeerMsg, PoolDef, Reply};

/// The engines' clock at the start of every test (ms since the epoch).
const T0: u64 = 1_000_000;
/// How long final records are kept.
const RETENTION: u64 = 2_000;
/// The pools' default hold TTL.
const TTL_DEFAULT: u32 = 1_000;
/// The pools' maximum hold TTL.
const TTL_MAX: u32 = 5_000;

const REPEAT: u8 = RESULT_FLAG_REPEAT;
const H: u8 = SHARD_FLAG_HOME;
const D: u8 = SHARD_FLAG_DRAINED;
const R: u8 = SHARD_FLAG_RECALLING;

const NONE: ReservationState = ReservationState::None;
const HELD: ReservationState = ReservationState::Held;
const CONFIRMED: ReservationState = ReservationState::Confirmed;
const RELEASED: ReservationState = ReservationState::Released;
const EXPIRED: ReservationState = ReservationState::Expired;

// Users of the single-core tables (any non-zero id lives on core 0 of a 1-core engine).
const ALICE: u128 = 0xA11CE;
const BOB: u128 = 0xB0B;

// ----- configuration -------------------------------------------------------------------------

fn config(holds_max: u32, parked_max: u32, pools_max: u32) -> EngineConfig {
    EngineConfig {
        core: 0,
        cores: 1,
        holds_max,
        parked_max,
        retention_ms: RETENTION,
        retention_min_ms: 0,
        retained_max: holds_max * 4,
        pools_max,
    }
}

fn pool_request(name: &str, capacity: u64) -> PoolCreate {
    PoolCreate {
        name: name.to_string(),
        capacity,
        hold_ttl_ms_default: TTL_DEFAULT,
        hold_ttl_ms_max: TTL_MAX,
        kind: PoolKind::Counted as u8,
        active: true,
        rules: Default::default(),
    }
}

/// A 1-core engine with pools `pool-1`, `pool-2`, ... of the given capacities.
fn engine(holds_max: u32, capacities: &[u64]) -> Engine {
    let mut e = Engine::new(config(holds_max, 64, 16), T0);
    for (i, &capacity) in capacities.iter().enumerate() {
        let def = e.validate_pool_create(&pool_request(&format!("pool-{}", i + 1), capacity)).expect("valid pool");
        assert_eq!(def.id, i as u32 + 1);
        e.create_pool(def);
    }
    e
}

/// A cluster of `cores` cores with one pool (id 1, home core `1 % cores`) of `capacity`.
fn cluster(cores: u16, parked_max: u32, capacity: u64) -> Cluster {
    let template = EngineConfig {
        core: 0,
        cores,
        holds_max: 1_000,
        parked_max,
        retention_ms: RETENTION,
        retention_min_ms: 0,
        retained_max: 4000,
        pools_max: 4,
    };
    let mut c = Cluster::new(cores, template, T0);
    let info = c.create_pool(&pool_request("pool-1", capacity)).expect("valid pool");
    assert_eq!((info.id, info.home_core), (1, 1 % cores));
    c
}

/// The `nth` user (from 0) whose home core is `core` on a server of `cores` cores.
fn user_on(core: u16, cores: u16, nth: usize) -> u128 {
    (1u128..).filter(|&u| home_core(u, cores) == core).nth(nth).expect("users on every core")
}

// ----- commands --------------------------------------------------------------------------------

/// A client command of a table row.
#[derive(Clone, Copy, Debug)]
enum Cmd {
    Reserve { id: u128, user: u128, pool: u32, qty: u32, ttl: u32 },
    Confirm { id: u128, user: u128, commit_ref: u128 },
    Release { id: u128, user: u128 },
    Extend { id: u128, user: u128, ttl: u32 },
    Lookup { id: u128, user: u128 },
    SetActive { pool: u32, active: bool },
    Tick,
}

fn reserve(id: u128, user: u128, pool: u32, qty: u32, ttl: u32) -> Cmd {
    Cmd::Reserve { id, user, pool, qty, ttl }
}
fn confirm(id: u128, user: u128, commit_ref: u128) -> Cmd {
    Cmd::Confirm { id, user, commit_ref }
}
fn release(id: u128, user: u128) -> Cmd {
    Cmd::Release { id, user }
}
fn extend(id: u128, user: u128, ttl: u32) -> Cmd {
    Cmd::Extend { id, user, ttl }
}
fn lookup(id: u128, user: u128) -> Cmd {
    Cmd::Lookup { id, user }
}
fn set_active(pool: u32, active: bool) -> Cmd {
    Cmd::SetActive { pool, active }
}
fn tick() -> Cmd {
    Cmd::Tick
}

impl Cmd {
    fn command(self) -> Command {
        match self {
            Cmd::Reserve { id, user, pool, qty, ttl } => {
                Command::Reserve(ReserveOp { id, user, pool, qty, ttl_ms: ttl, priority: 0 })
            }
            Cmd::Confirm { id, user, commit_ref } => Command::Confirm(ConfirmOp { id, user, commit_ref }),
            Cmd::Release { id, user } => Command::Release(ReleaseOp { id, user }),
            Cmd::Extend { id, user, ttl } => Command::Extend(ExtendOp { id, user, ttl_ms: ttl }),
            Cmd::Lookup { id, user } => Command::Lookup(LookupOp { id, user }),
            Cmd::SetActive { pool, active } => Command::SetPoolActive { pool, active },
            Cmd::Tick => Command::Tick,
        }
    }
}

/// What a row observed, in the units of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    status: S,
    state: ReservationState,
    flags: u8,
    /// Relative to `T0`; 0 stays 0.
    expires: u64,
}

fn relative(at_ms: u64) -> u64 {
    if at_ms == 0 { 0 } else { at_ms.checked_sub(T0).expect("times after T0") }
}

fn seen_op(r: OpResult) -> Seen {
    Seen {
        status: S::from_u8(r.status).expect("known status"),
        state: ReservationState::from_u8(r.state).expect("known state"),
        flags: r.flags,
        expires: relative(r.expires_at_ms),
    }
}

fn seen_lookup(r: &LookupResult) -> Seen {
    Seen {
        status: S::from_u8(r.status).expect("known status"),
        state: ReservationState::from_u8(r.state).expect("known state"),
        flags: 0,
        expires: relative(r.expires_at_ms),
    }
}

// ----- single-core runner ----------------------------------------------------------------------

/// One row of a single-core table.
struct Row {
    at: u64,
    cmd: Cmd,
    want: Seen,
    totals: &'static [(u64, u64, u64)],
    /// For lookups: expected (qty, commit_ref).
    lookup: Option<(u32, u128)>,
}

fn row(
    at: u64,
    cmd: Cmd,
    status: S,
    state: ReservationState,
    flags: u8,
    expires: u64,
    totals: &'static [(u64, u64, u64)],
) -> Row {
    Row { at, cmd, want: Seen { status, state, flags, expires }, totals, lookup: None }
}

impl Row {
    /// Also expect the lookup's quantity and commit reference.
    fn lookup(mut self, qty: u32, commit_ref: u128) -> Row {
        assert!(matches!(self.cmd, Cmd::Lookup { .. }), "only lookup rows carry lookup fields");
        self.lookup = Some((qty, commit_ref));
        self
    }
}

/// Applies `cmd` to a 1-core engine and reports what came back.
fn apply_one(e: &mut Engine, now: u64, cmd: Cmd) -> (Seen, Option<(u32, u128)>) {
    match e.apply(now, cmd.command()) {
        Outcome::Reserve(Reply::Done(r)) | Outcome::Op(r) => (seen_op(r), None),
        Outcome::Reserve(Reply::Parked(ticket)) => {
            // A single core has no one to borrow from: its recall ends within the call, so
            // `reserve` already knows the answer and must give it as `Reply::Done`.
            panic!("{cmd:?}: a single core answered Parked({ticket}) instead of Done")
        }
        Outcome::Lookup(r) => (seen_lookup(&r), Some((r.qty, r.commit_ref))),
        Outcome::Pool(Ok(_)) | Outcome::None => (Seen { status: S::Ok, state: NONE, flags: 0, expires: 0 }, None),
        Outcome::Pool(Err(status)) => (Seen { status, state: NONE, flags: 0, expires: 0 }, None),
    }
}

/// Pool totals on a 1-core engine: (held, confirmed, available) of pools 1..=n.
fn totals(e: &Engine, pools: usize) -> Vec<(u64, u64, u64)> {
    (1..=pools as u32)
        .map(|p| {
            let s = e.shard_snapshot(p).expect("pool exists");
            (s.held, s.confirmed, s.available())
        })
        .collect()
}

/// Applies the rows in order and asserts each.
fn run(e: &mut Engine, rows: &[Row]) {
    let mut last = 0;
    for (i, r) in rows.iter().enumerate() {
        assert!(r.at >= last, "row {i}: time goes backwards");
        last = r.at;
        let (got, lookup) = apply_one(e, T0 + r.at, r.cmd);
        assert_eq!(got, r.want, "row {i} (at +{} ms): {:?}", r.at, r.cmd);
        if let Some(want) = r.lookup {
            assert_eq!(lookup, Some(want), "row {i} (at +{} ms): {:?}: (qty, commit_ref)", r.at, r.cmd);
        }
        assert!(!e.has_output(), "row {i}: a single core sends no messages");
        e.audit();
        assert_eq!(totals(e, r.totals.len()), r.totals, "row {i} (at +{} ms): {:?}: pool totals", r.at, r.cmd);
    }
}

// ----- 1. every operation and every status, with precedence -------------------------------------

#[test]
fn reserve_statuses_and_precedence() {
    // Pool 1 holds 10, pool 2 holds 5; the core keeps at most 4 records.
    let mut e = engine(4, &[10, 5]);
    let big_ttl = TTL_MAX + 1;
    #[rustfmt::skip]
    let rows = [
        //  at  command                              status                          state  flags   expires  totals (pool 1, pool 2)
        // Validation, one refusal at a time and two at once (the first listed wins).
        row(0, reserve(0, 0, 99, 0, big_ttl),        S::InvalidId,                   NONE,  0,      0,       &[(0, 0, 10), (0, 0, 5)]),
        row(0, reserve(1, 0, 99, 0, big_ttl),        S::InvalidUser,                 NONE,  0,      0,       &[(0, 0, 10), (0, 0, 5)]),
        row(0, reserve(1, ALICE, 99, 0, big_ttl),    S::InvalidQuantity,             NONE,  0,      0,       &[(0, 0, 10), (0, 0, 5)]),
        row(0, reserve(1, ALICE, 99, 1, big_ttl),    S::PoolNotFound,                NONE,  0,      0,       &[(0, 0, 10), (0, 0, 5)]),
        row(0, reserve(1, ALICE, 0, 1, 0),           S::PoolNotFound,                NONE,  0,      0,       &[(0, 0, 10), (0, 0, 5)]),
        row(0, reserve(1, ALICE, 1, 1, big_ttl),     S::InvalidTtl,                  NONE,  0,      0,       &[(0, 0, 10), (0, 0, 5)]),
        // Ok: ttl 0 is the pool default; TTL_MAX itself is allowed.
        row(0, reserve(1, ALICE, 1, 4, 0),           S::Ok,                          HELD,  0,      1_000,   &[(4, 0, 6), (0, 0, 5)]),
        row(10, reserve(2, ALICE, 1, 3, TTL_MAX),    S::Ok,                          HELD,  0,      5_010,   &[(7, 0, 3), (0, 0, 5)]),
        // An id in use: invalid_ttl still comes first, then pool, user, quantity, repeat.
        row(20, reserve(1, BOB, 2, 9, big_ttl),      S::InvalidTtl,                  NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(20, reserve(1, BOB, 2, 9, 0),            S::IdExistsWithDifferentPool,   NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(20, reserve(1, BOB, 1, 9, 0),            S::IdExistsWithDifferentUser,   NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(20, reserve(1, ALICE, 1, 9, 0),          S::IdExistsWithDifferentQuantity, NONE, 0,     0,       &[(7, 0, 3), (0, 0, 5)]),
        row(20, reserve(1, ALICE, 1, 4, 0),          S::Ok,                          HELD,  REPEAT, 1_000,   &[(7, 0, 3), (0, 0, 5)]),
        // sold_out: the pool has 3 free; nothing is recorded.
        row(30, reserve(3, ALICE, 1, 4, 0),          S::SoldOut,                     NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(30, lookup(3, ALICE),                    S::NotFound,                    NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        // Deactivated pool: a repeat (or a conflict) of an id in use is answered before pool_inactive.
        row(40, set_active(1, false),                S::Ok,                          NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(40, reserve(1, ALICE, 1, 4, 0),          S::Ok,                          HELD,  REPEAT, 1_000,   &[(7, 0, 3), (0, 0, 5)]),
        row(40, reserve(1, ALICE, 1, 2, 0),          S::IdExistsWithDifferentQuantity, NONE, 0,     0,       &[(7, 0, 3), (0, 0, 5)]),
        row(40, reserve(3, ALICE, 1, 1, 0),          S::PoolInactive,                NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        // pool_inactive before sold_out.
        row(40, reserve(3, ALICE, 1, 100, 0),        S::PoolInactive,                NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(50, set_active(1, true),                 S::Ok,                          NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        row(50, set_active(3, true),                 S::PoolNotFound,                NONE,  0,      0,       &[(7, 0, 3), (0, 0, 5)]),
        // Fill the table: 4 records.
        row(60, reserve(4, BOB, 2, 2, 0),            S::Ok,                          HELD,  0,      1_060,   &[(7, 0, 3), (2, 0, 3)]),
        row(60, reserve(5, BOB, 2, 3, 0),            S::Ok,                          HELD,  0,      1_060,   &[(7, 0, 3), (5, 0, 0)]),
        // holds_limit_reached before sold_out; pool_inactive before holds_limit_reached.
        row(70, reserve(6, BOB, 1, 1, 0),            S::HoldsLimitReached,           NONE,  0,      0,       &[(7, 0, 3), (5, 0, 0)]),
        row(70, reserve(6, BOB, 2, 1, 0),            S::HoldsLimitReached,           NONE,  0,      0,       &[(7, 0, 3), (5, 0, 0)]),
        row(70, set_active(2, false),                S::Ok,                          NONE,  0,      0,       &[(7, 0, 3), (5, 0, 0)]),
        row(70, reserve(6, BOB, 2, 1, 0),            S::PoolInactive,                NONE,  0,      0,       &[(7, 0, 3), (5, 0, 0)]),
        // ... and a repeat is still answered on a full table.
        row(70, reserve(5, BOB, 2, 3, 0),            S::Ok,                          HELD,  REPEAT, 1_060,   &[(7, 0, 3), (5, 0, 0)]),
    ];
    run(&mut e, &rows);
    assert_eq!(e.holds_len(), 4);
}

#[test]
fn holds_limit_counts_live_holds_only() {
    let mut e = engine(2, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at     command                         status                 state     flags  expires  totals
        row(0,     reserve(1, ALICE, 1, 1, 0),     S::Ok,                 HELD,     0,     1_000,   &[(1, 0, 9)]),
        row(0,     reserve(2, ALICE, 1, 1, 0),     S::Ok,                 HELD,     0,     1_000,   &[(2, 0, 8)]),
        row(0,     reserve(3, ALICE, 1, 1, 0),     S::HoldsLimitReached,  NONE,     0,     0,       &[(2, 0, 8)]),
        // A finished reservation leaves the live holds at once: its record is kept apart.
        row(100,   release(1, ALICE),              S::Ok,                 RELEASED, 0,     0,       &[(1, 0, 9)]),
        row(100,   reserve(3, ALICE, 1, 1, 0),     S::Ok,                 HELD,     0,     1_100,   &[(2, 0, 8)]),
        row(100,   confirm(2, ALICE, 0),           S::Ok,                 CONFIRMED, 0,    0,       &[(1, 1, 8)]),
        row(100,   reserve(4, ALICE, 1, 1, 0),     S::Ok,                 HELD,     0,     1_100,   &[(2, 1, 7)]),
        row(100,   reserve(5, ALICE, 1, 1, 0),     S::HoldsLimitReached,  NONE,     0,     0,       &[(2, 1, 7)]),
        // ... and is still recognised.
        row(100,   release(1, ALICE),              S::Ok,                 RELEASED, REPEAT, 0,      &[(2, 1, 7)]),
        row(100,   reserve(2, ALICE, 1, 1, 0),     S::Ok,                 CONFIRMED, REPEAT, 0,     &[(2, 1, 7)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn reserve_on_a_seated_pool_answers_wrong_pool_kind() {
    // Seated pools cannot be created through validation (see the catalog test); a definition
    // applied directly still exercises the reserve's kind check and its precedence.
    let mut e = engine(8, &[10]);
    let seated = PoolDef {
        id: 2,
        name: "seats".into(),
        kind: PoolKind::Seated,
        capacity: 10,
        hold_ttl_ms_default: TTL_DEFAULT,
        hold_ttl_ms_max: TTL_MAX,
        active: false,
        rules: Default::default(),
        description: "".into(),
    };
    assert!(matches!(e.apply(T0, Command::CreatePool(seated)), Outcome::Pool(Ok(ref info)) if info.id == 2));
    #[rustfmt::skip]
    let rows = [
        //  at  command                                status              state  flags  expires  totals
        row(0, reserve(1, ALICE, 2, 0, 0),             S::InvalidQuantity, NONE,  0,     0,       &[(0, 0, 10), (0, 0, 10)]),
        // wrong_pool_kind before invalid_ttl and pool_inactive (the pool is inactive too).
        row(0, reserve(1, ALICE, 2, 1, TTL_MAX + 1),   S::WrongPoolKind,   NONE,  0,     0,       &[(0, 0, 10), (0, 0, 10)]),
        row(0, reserve(1, ALICE, 2, 1, 0),             S::WrongPoolKind,   NONE,  0,     0,       &[(0, 0, 10), (0, 0, 10)]),
        row(0, reserve(1, ALICE, 1, 1, 0),             S::Ok,              HELD,  0,     1_000,   &[(1, 0, 9), (0, 0, 10)]),
        // ... and before the id check.
        row(0, reserve(1, ALICE, 2, 1, 0),             S::WrongPoolKind,   NONE,  0,     0,       &[(1, 0, 9), (0, 0, 10)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn confirm_statuses_and_precedence() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at     command                     status                        state      flags   expires  totals
        row(0,     reserve(1, ALICE, 1, 2, 0), S::Ok,                        HELD,      0,      1_000,   &[(2, 0, 8)]),
        row(0,     reserve(2, ALICE, 1, 3, 0), S::Ok,                        HELD,      0,      1_000,   &[(5, 0, 5)]),
        row(0,     reserve(3, ALICE, 1, 1, 0), S::Ok,                        HELD,      0,      1_000,   &[(6, 0, 4)]),
        // invalid_id, then invalid_user, then not_found (the wrong user is not told the id exists).
        row(10,    confirm(0, 0, 7),           S::InvalidId,                 NONE,      0,      0,       &[(6, 0, 4)]),
        row(10,    confirm(1, 0, 7),           S::InvalidUser,               NONE,      0,      0,       &[(6, 0, 4)]),
        row(10,    confirm(99, 0, 7),          S::InvalidUser,               NONE,      0,      0,       &[(6, 0, 4)]),
        row(10,    confirm(99, ALICE, 7),      S::NotFound,                  NONE,      0,      0,       &[(6, 0, 4)]),
        row(10,    confirm(1, BOB, 7),         S::NotFound,                  NONE,      0,      0,       &[(6, 0, 4)]),
        // ok: held -> confirmed; the reference is stored.
        row(20,    confirm(1, ALICE, 7),       S::Ok,                        CONFIRMED, 0,      0,       &[(4, 2, 4)]),
        row(20,    lookup(1, ALICE),           S::Ok,                        CONFIRMED, 0,      2_020,   &[(4, 2, 4)]).lookup(2, 7),
        row(30,    confirm(1, ALICE, 7),       S::Ok,                        CONFIRMED, REPEAT, 0,       &[(4, 2, 4)]),
        row(30,    confirm(1, ALICE, 8),       S::ConfirmedWithDifferentRef, CONFIRMED, 0,      0,       &[(4, 2, 4)]),
        row(30,    confirm(1, ALICE, 0),       S::ConfirmedWithDifferentRef, CONFIRMED, 0,      0,       &[(4, 2, 4)]),
        // Confirming without a reference: a repeat must also carry none.
        row(40,    confirm(2, ALICE, 0),       S::Ok,                        CONFIRMED, 0,      0,       &[(1, 5, 4)]),
        row(40,    confirm(2, ALICE, 0),       S::Ok,                        CONFIRMED, REPEAT, 0,       &[(1, 5, 4)]),
        row(40,    confirm(2, ALICE, 1),       S::ConfirmedWithDifferentRef, CONFIRMED, 0,      0,       &[(1, 5, 4)]),
        // already_released.
        row(50,    release(3, ALICE),          S::Ok,                        RELEASED,  0,      0,       &[(0, 5, 5)]),
        row(50,    confirm(3, ALICE, 7),       S::AlreadyReleased,           RELEASED,  0,      0,       &[(0, 5, 5)]),
        // expired.
        row(60,    reserve(4, ALICE, 1, 2, 100), S::Ok,                      HELD,      0,      160,     &[(2, 5, 3)]),
        row(160,   confirm(4, ALICE, 7),       S::Expired,                   EXPIRED,   0,      0,       &[(0, 5, 5)]),
        // A deactivated pool still confirms, releases and extends its holds.
        row(170,   reserve(5, ALICE, 1, 1, 0), S::Ok,                        HELD,      0,      1_170,   &[(1, 5, 4)]),
        row(170,   reserve(6, ALICE, 1, 2, 0), S::Ok,                        HELD,      0,      1_170,   &[(3, 5, 2)]),
        row(170,   set_active(1, false),       S::Ok,                        NONE,      0,      0,       &[(3, 5, 2)]),
        row(180,   confirm(5, ALICE, 0),       S::Ok,                        CONFIRMED, 0,      0,       &[(2, 6, 2)]),
        row(180,   extend(6, ALICE, 3_000),    S::Ok,                        HELD,      0,      3_180,   &[(2, 6, 2)]),
        row(190,   release(6, ALICE),          S::Ok,                        RELEASED,  0,      0,       &[(0, 6, 4)]),
        row(190,   reserve(7, ALICE, 1, 1, 0), S::PoolInactive,              NONE,      0,      0,       &[(0, 6, 4)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn release_statuses_and_precedence() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at   command                        status               state      flags   expires  totals
        row(0,   reserve(1, ALICE, 1, 2, 0),    S::Ok,               HELD,      0,      1_000,   &[(2, 0, 8)]),
        row(0,   reserve(2, ALICE, 1, 3, 0),    S::Ok,               HELD,      0,      1_000,   &[(5, 0, 5)]),
        row(0,   reserve(3, ALICE, 1, 4, 100),  S::Ok,               HELD,      0,      100,     &[(9, 0, 1)]),
        row(10,  release(0, 0),                 S::InvalidId,        NONE,      0,      0,       &[(9, 0, 1)]),
        row(10,  release(1, 0),                 S::InvalidUser,      NONE,      0,      0,       &[(9, 0, 1)]),
        row(10,  release(99, ALICE),            S::NotFound,         NONE,      0,      0,       &[(9, 0, 1)]),
        row(10,  release(1, BOB),               S::NotFound,         NONE,      0,      0,       &[(9, 0, 1)]),
        // ok gives the units back at once; a second release is an ok repeat.
        row(20,  release(1, ALICE),             S::Ok,               RELEASED,  0,      0,       &[(7, 0, 3)]),
        row(30,  release(1, ALICE),             S::Ok,               RELEASED,  REPEAT, 0,       &[(7, 0, 3)]),
        // already_confirmed.
        row(40,  confirm(2, ALICE, 5),          S::Ok,               CONFIRMED, 0,      0,       &[(4, 3, 3)]),
        row(40,  release(2, ALICE),             S::AlreadyConfirmed, CONFIRMED, 0,      0,       &[(4, 3, 3)]),
        // Releasing an expired hold answers expired; its units came back when it expired.
        row(100, release(3, ALICE),             S::Expired,          EXPIRED,   0,      0,       &[(0, 3, 7)]),
        row(110, release(3, ALICE),             S::Expired,          EXPIRED,   0,      0,       &[(0, 3, 7)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn extend_statuses_and_precedence() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at   command                        status               state      flags  expires  totals
        row(0,   reserve(1, ALICE, 1, 1, 0),    S::Ok,               HELD,      0,     1_000,   &[(1, 0, 9)]),
        row(0,   reserve(2, ALICE, 1, 1, 0),    S::Ok,               HELD,      0,     1_000,   &[(2, 0, 8)]),
        row(0,   reserve(3, ALICE, 1, 1, 0),    S::Ok,               HELD,      0,     1_000,   &[(3, 0, 7)]),
        row(0,   reserve(4, ALICE, 1, 1, 50),   S::Ok,               HELD,      0,     50,      &[(4, 0, 6)]),
        // invalid_id, invalid_user and not_found come before the ttl check.
        row(10,  extend(0, 0, 0),               S::InvalidId,        NONE,      0,     0,       &[(4, 0, 6)]),
        row(10,  extend(1, 0, 0),               S::InvalidUser,      NONE,      0,     0,       &[(4, 0, 6)]),
        row(10,  extend(99, ALICE, 0),          S::NotFound,         NONE,      0,     0,       &[(4, 0, 6)]),
        row(10,  extend(1, BOB, 100),           S::NotFound,         NONE,      0,     0,       &[(4, 0, 6)]),
        // invalid_ttl on a held reservation: 0, or above the pool maximum; the hold is unchanged.
        row(10,  extend(1, ALICE, 0),           S::InvalidTtl,       HELD,      0,     1_000,   &[(4, 0, 6)]),
        row(10,  extend(1, ALICE, TTL_MAX + 1), S::InvalidTtl,       HELD,      0,     1_000,   &[(4, 0, 6)]),
        row(10,  extend(1, ALICE, 2_000),       S::Ok,               HELD,      0,     2_010,   &[(4, 0, 6)]),
        // The state answers before the ttl check.
        row(20,  confirm(2, ALICE, 0),          S::Ok,               CONFIRMED, 0,     0,       &[(3, 1, 6)]),
        row(20,  extend(2, ALICE, 0),           S::AlreadyConfirmed, CONFIRMED, 0,     0,       &[(3, 1, 6)]),
        row(20,  release(3, ALICE),             S::Ok,               RELEASED,  0,     0,       &[(2, 1, 7)]),
        row(20,  extend(3, ALICE, TTL_MAX + 1), S::AlreadyReleased,  RELEASED,  0,     0,       &[(2, 1, 7)]),
        row(50,  extend(4, ALICE, 0),           S::Expired,          EXPIRED,   0,     0,       &[(1, 1, 8)]),
        row(50,  extend(4, ALICE, 100),         S::Expired,          EXPIRED,   0,     0,       &[(1, 1, 8)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn lookup_statuses() {
    let mut e = engine(16, &[10, 5]);
    #[rustfmt::skip]
    let rows = [
        //  at   command                       status          state      flags  expires  totals
        row(0,   reserve(1, ALICE, 2, 3, 0),   S::Ok,          HELD,      0,     1_000,   &[(0, 0, 10), (3, 0, 2)]),
        row(0,   lookup(0, ALICE),             S::InvalidId,   NONE,      0,     0,       &[(0, 0, 10), (3, 0, 2)]),
        row(0,   lookup(0, 0),                 S::InvalidId,   NONE,      0,     0,       &[(0, 0, 10), (3, 0, 2)]),
        row(0,   lookup(2, ALICE),             S::NotFound,    NONE,      0,     0,       &[(0, 0, 10), (3, 0, 2)]),
        row(0,   lookup(1, BOB),               S::NotFound,    NONE,      0,     0,       &[(0, 0, 10), (3, 0, 2)]),
        row(0,   lookup(1, ALICE),             S::Ok,          HELD,      0,     1_000,   &[(0, 0, 10), (3, 0, 2)]).lookup(3, 0),
        // User 0 matches any user.
        row(0,   lookup(1, 0),                 S::Ok,          HELD,      0,     1_000,   &[(0, 0, 10), (3, 0, 2)]).lookup(3, 0),
        row(10,  confirm(1, ALICE, 42),        S::Ok,          CONFIRMED, 0,     0,       &[(0, 0, 10), (0, 3, 2)]),
        // A final record reports when it will be purged: max(1_000, 10 + 2_000).
        row(10,  lookup(1, ALICE),             S::Ok,          CONFIRMED, 0,     2_010,   &[(0, 0, 10), (0, 3, 2)]).lookup(3, 42),
    ];
    run(&mut e, &rows);
    // The lookup also names the pool and the user.
    let Outcome::Lookup(r) = e.apply(T0 + 10, Command::Lookup(LookupOp { id: 1, user: 0 })) else { unreachable!() };
    assert_eq!((r.pool, r.user, r.qty, r.commit_ref), (2, ALICE, 3, 42));
}

#[test]
fn pool_catalog_create_validate_and_set_active() {
    let mut e = Engine::new(config(16, 16, 2), T0);
    let base = pool_request("alpha", 100);
    let with = |f: &dyn Fn(&mut PoolCreate)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    // (request, expected: Ok(pool id) or the refusal), in order; accepted ones are applied.
    #[rustfmt::skip]
    let table: Vec<(PoolCreate, Result<u32, S>)> = vec![
        // Precedence: name, then kind (wrong_pool_kind / unsupported), capacity, ttl, then the
        // name's existing pool, then the limit.
        (with(&|r| { r.name = String::new(); r.kind = 7; r.capacity = 0; }),         Err(S::InvalidPoolName)),
        (with(&|r| r.name = "two words".into()),                                      Err(S::InvalidPoolName)),
        (with(&|r| r.name = "a".repeat(65)),                                          Err(S::InvalidPoolName)),
        (with(&|r| r.name = "caf\u{e9}".into()),                                      Err(S::InvalidPoolName)),
        (with(&|r| { r.kind = 7; r.capacity = 0; r.hold_ttl_ms_default = 0; }),      Err(S::WrongPoolKind)),
        (with(&|r| { r.kind = 1; r.capacity = 0; r.hold_ttl_ms_default = 0; }),      Err(S::Unsupported)),
        (with(&|r| { r.capacity = 0; r.hold_ttl_ms_default = 0; }),                  Err(S::InvalidCapacity)),
        (with(&|r| r.capacity = (1 << 60) + 1),                                       Err(S::InvalidCapacity)),
        (with(&|r| r.hold_ttl_ms_default = 0),                                        Err(S::InvalidTtl)),
        (with(&|r| r.hold_ttl_ms_max = 0),                                            Err(S::InvalidTtl)),
        (with(&|r| r.hold_ttl_ms_default = TTL_MAX + 1),                              Err(S::InvalidTtl)),
        // Accepted: the longest name and the largest capacity are allowed.
        (with(&|r| { r.name = "a".repeat(64); r.capacity = 1 << 60; }),               Ok(1)),
        (base.clone(),                                                                Ok(2)),
        // A repeat (same name, kind, capacity and TTLs) answers the existing pool, whatever
        // its active flag: that flag is state, not identity. Any other difference is
        // pool_exists; a request that is invalid in itself is refused for that first.
        (base.clone(),                                                                Ok(2)),
        (with(&|r| r.active = false),                                                 Ok(2)),
        (with(&|r| r.capacity = 101),                                                 Err(S::PoolExists)),
        (with(&|r| { r.capacity = 101; r.active = false; }),                          Err(S::PoolExists)),
        (with(&|r| r.hold_ttl_ms_default = TTL_DEFAULT + 1),                          Err(S::PoolExists)),
        (with(&|r| r.hold_ttl_ms_max = TTL_MAX - 1),                                  Err(S::PoolExists)),
        (with(&|r| r.hold_ttl_ms_max = 0),                                            Err(S::InvalidTtl)),
        // The catalog is full (pools_max 2): new names are refused, existing names still answer.
        (with(&|r| r.name = "beta".into()),                                           Err(S::PoolsLimitReached)),
        (with(&|r| { r.name = "beta".into(); r.kind = 9; }),                          Err(S::WrongPoolKind)),
        (with(&|r| r.capacity = 7),                                                   Err(S::PoolExists)),
        (base.clone(),                                                                Ok(2)),
    ];
    for (i, (req, want)) in table.iter().enumerate() {
        let got = e.validate_pool_create(req).map(|def| def.id);
        assert_eq!(got, *want, "row {i}: {req:?}");
        if let Ok(def) = e.validate_pool_create(req) {
            let Outcome::Pool(Ok(info)) = e.apply(T0, Command::CreatePool(def)) else { panic!("row {i}: create") };
            assert_eq!(
                (info.id, info.name.as_str(), info.capacity, info.home_core),
                (def_id(want), req.name.as_str(), req.capacity, 0)
            );
        }
        e.check_invariants();
    }
    assert_eq!(e.pool_count(), 2);
    assert_eq!(e.pool_id("alpha"), Some(2));
    assert_eq!(e.shard_snapshot(2).map(|s| (s.capacity, s.flags)), Some((100, H)));
    // The repeat with `active: false` answered the pool as it is and did not deactivate it.
    assert_eq!(e.pool_info(2).map(|p| p.active), Some(true));

    // Set active: (pool, active) -> Ok(active) or the refusal.
    #[rustfmt::skip]
    let table: [(u32, bool, Result<bool, S>); 5] = [
        (0, false, Err(S::PoolNotFound)),
        (3, false, Err(S::PoolNotFound)),
        (2, false, Ok(false)),
        (2, false, Ok(false)),
        (2, true, Ok(true)),
    ];
    for (i, &(pool, active, want)) in table.iter().enumerate() {
        let Outcome::Pool(got) = e.apply(T0, Command::SetPoolActive { pool, active }) else { unreachable!() };
        assert_eq!(got.map(|info| info.active), want, "set_active row {i}");
        if want.is_ok() {
            assert_eq!(e.pool_info(pool).map(|p| p.active), Some(active));
        }
    }

    // A client that retries its creation after the pool was deactivated: the repeat is
    // still an ok repeat (with either active flag), it answers the pool as it is (inactive)
    // and applying it changes nothing; a different capacity or TTL is still pool_exists.
    let Outcome::Pool(Ok(info)) = e.apply(T0, Command::SetPoolActive { pool: 2, active: false }) else {
        panic!("deactivate")
    };
    assert!(!info.active);
    // request -> Ok((pool id, active)) or the refusal.
    type Repeat = Result<(u32, bool), S>;
    #[rustfmt::skip]
    let table: Vec<(PoolCreate, Repeat)> = vec![
        (base.clone(),                                                                Ok((2, false))),
        (with(&|r| r.active = false),                                                 Ok((2, false))),
        (with(&|r| r.capacity = 101),                                                 Err(S::PoolExists)),
        (with(&|r| { r.capacity = 99; r.active = false; }),                           Err(S::PoolExists)),
        (with(&|r| r.hold_ttl_ms_default = TTL_DEFAULT - 1),                          Err(S::PoolExists)),
        (with(&|r| r.hold_ttl_ms_max = TTL_MAX + 1),                                  Err(S::PoolExists)),
    ];
    for (i, (req, want)) in table.iter().enumerate() {
        let got = e.validate_pool_create(req);
        assert_eq!(got.as_ref().map(|def| (def.id, def.active)).map_err(|s| *s), *want, "repeat row {i}: {req:?}");
        if let Ok(def) = got {
            assert_eq!(
                (def.name.as_ref(), def.kind, def.capacity, def.hold_ttl_ms_default, def.hold_ttl_ms_max),
                ("alpha", PoolKind::Counted, 100, TTL_DEFAULT, TTL_MAX),
                "repeat row {i}: the existing definition"
            );
            let Outcome::Pool(Ok(info)) = e.apply(T0, Command::CreatePool(def)) else {
                panic!("repeat row {i}: create")
            };
            assert_eq!((info.id, info.active, info.capacity), (2, false, 100), "repeat row {i}");
        }
        assert_eq!(e.pool_info(2).map(|p| p.active), Some(false), "repeat row {i}: still inactive");
        e.check_invariants();
    }
    assert_eq!(e.pool_count(), 2);
}

fn def_id(want: &Result<u32, S>) -> u32 {
    *want.as_ref().expect("accepted row")
}

// ----- 2. expiry and retention at exact boundaries -----------------------------------------------

#[test]
fn expiry_at_exact_boundaries() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at     command                          status         state      flags  expires  totals
        // ttl 0 means the pool default (1_000).
        row(0,     reserve(1, ALICE, 1, 2, 0),      S::Ok,         HELD,      0,     1_000,   &[(2, 0, 8)]),
        row(0,     reserve(2, ALICE, 1, 3, 0),      S::Ok,         HELD,      0,     1_000,   &[(5, 0, 5)]),
        row(0,     reserve(3, ALICE, 1, 4, 400),    S::Ok,         HELD,      0,     400,     &[(9, 0, 1)]),
        // At t + T - 1 the hold is still held: confirm works. (Hold 3 expired at 400; a
        // lookup only reads, so its units come back with the next command that ticks.)
        row(999,   lookup(2, ALICE),                S::Ok,         HELD,      0,     1_000,   &[(9, 0, 1)]),
        row(999,   lookup(3, ALICE),                S::Ok,         EXPIRED,   0,     2_400,   &[(9, 0, 1)]),
        row(999,   confirm(1, ALICE, 1),            S::Ok,         CONFIRMED, 0,     0,       &[(3, 2, 5)]),
        // At exactly t + T it has expired and its units are back.
        row(1_000, confirm(2, ALICE, 1),            S::Expired,    EXPIRED,   0,     0,       &[(0, 2, 8)]),
        row(1_000, lookup(2, ALICE),                S::Ok,         EXPIRED,   0,     3_000,   &[(0, 2, 8)]).lookup(3, 0),
        row(1_000, release(3, ALICE),               S::Expired,    EXPIRED,   0,     0,       &[(0, 2, 8)]),
        // The units can be taken again at once.
        row(1_000, reserve(4, ALICE, 1, 8, TTL_MAX), S::Ok,        HELD,      0,     6_000,   &[(8, 2, 0)]),
        // A tick alone expires holds: the 1 ms before and at the deadline.
        row(5_999, tick(),                          S::Ok,         NONE,      0,     0,       &[(8, 2, 0)]),
        row(6_000, tick(),                          S::Ok,         NONE,      0,     0,       &[(0, 2, 8)]),
        row(6_000, lookup(4, ALICE),                S::Ok,         EXPIRED,   0,     8_000,   &[(0, 2, 8)]),
    ];
    run(&mut e, &rows);
    assert_eq!(e.stats().expirations, 3);
}

#[test]
fn extend_moves_expiry_later_and_never_earlier() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at     command                          status          state      flags  expires  totals
        row(0,     reserve(1, ALICE, 1, 2, 0),      S::Ok,          HELD,      0,     1_000,   &[(2, 0, 8)]),
        row(100,   extend(1, ALICE, 2_000),         S::Ok,          HELD,      0,     2_100,   &[(2, 0, 8)]),
        // A shorter extension keeps the later expiry.
        row(200,   extend(1, ALICE, 500),           S::Ok,          HELD,      0,     2_100,   &[(2, 0, 8)]),
        row(200,   extend(1, ALICE, 1_900),         S::Ok,          HELD,      0,     2_100,   &[(2, 0, 8)]),
        // Above the pool maximum: invalid_ttl, expiry unchanged; the maximum itself is fine.
        row(300,   extend(1, ALICE, TTL_MAX + 1),   S::InvalidTtl,  HELD,      0,     2_100,   &[(2, 0, 8)]),
        // The original deadline passes: still held.
        row(1_000, tick(),                          S::Ok,          NONE,      0,     0,       &[(2, 0, 8)]),
        row(1_000, lookup(1, ALICE),                S::Ok,          HELD,      0,     2_100,   &[(2, 0, 8)]),
        row(2_099, extend(1, ALICE, TTL_MAX),       S::Ok,          HELD,      0,     7_099,   &[(2, 0, 8)]),
        row(2_100, lookup(1, ALICE),                S::Ok,          HELD,      0,     7_099,   &[(2, 0, 8)]),
        row(7_098, confirm(1, BOB, 0),              S::NotFound,    NONE,      0,     0,       &[(2, 0, 8)]),
        row(7_098, lookup(1, ALICE),                S::Ok,          HELD,      0,     7_099,   &[(2, 0, 8)]),
        row(7_099, extend(1, ALICE, TTL_MAX),       S::Expired,     EXPIRED,   0,     0,       &[(0, 0, 10)]),
        // A confirmed hold is kept for the retention after its confirm, whatever its expiry.
        row(7_100, reserve(2, ALICE, 1, 1, 100),    S::Ok,          HELD,      0,     7_200,   &[(1, 0, 9)]),
        row(7_100, extend(2, ALICE, 4_000),         S::Ok,          HELD,      0,     11_100,  &[(1, 0, 9)]),
        row(7_200, confirm(2, ALICE, 3),            S::Ok,          CONFIRMED, 0,     0,       &[(0, 1, 9)]),
        row(9_199, lookup(2, ALICE),                S::Ok,          CONFIRMED, 0,     9_200,   &[(0, 1, 9)]).lookup(1, 3),
        row(9_200, lookup(2, ALICE),                S::NotFound,    NONE,      0,     0,       &[(0, 1, 9)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn retention_keeps_final_records_for_the_retention_after_they_finish() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at     command                           status      state      flags   expires  totals
        row(0,     reserve(1, ALICE, 1, 1, 0),       S::Ok,      HELD,      0,      1_000,   &[(1, 0, 9)]),
        row(0,     reserve(2, ALICE, 1, 2, TTL_MAX), S::Ok,      HELD,      0,      5_000,   &[(3, 0, 7)]),
        row(0,     reserve(3, ALICE, 1, 3, 500),     S::Ok,      HELD,      0,      500,     &[(6, 0, 4)]),
        // id 1 confirmed at 100: kept until 100 + 2_000 = 2_100.
        row(100,   confirm(1, ALICE, 11),            S::Ok,      CONFIRMED, 0,      0,       &[(5, 1, 4)]),
        // id 2 released at 100: kept until 2_100 too, although its hold ran until 5_000.
        row(100,   release(2, ALICE),                S::Ok,      RELEASED,  0,      0,       &[(3, 1, 6)]),
        // id 3 expires at 500: kept until 500 + 2_000 = 2_500. Lookups read without
        // ticking: its units come back with the confirm at 2_099.
        row(500,   lookup(3, ALICE),                 S::Ok,      EXPIRED,   0,      2_500,   &[(3, 1, 6)]),
        row(2_099, lookup(1, ALICE),                 S::Ok,      CONFIRMED, 0,      2_100,   &[(3, 1, 6)]).lookup(1, 11),
        row(2_099, confirm(1, ALICE, 11),            S::Ok,      CONFIRMED, REPEAT, 0,       &[(0, 1, 9)]),
        row(2_099, release(2, ALICE),                S::Ok,      RELEASED,  REPEAT, 0,       &[(0, 1, 9)]),
        row(2_099, lookup(2, ALICE),                 S::Ok,      RELEASED,  0,      2_100,   &[(0, 1, 9)]).lookup(2, 0),
        row(2_100, lookup(1, ALICE),                 S::NotFound, NONE,     0,      0,       &[(0, 1, 9)]),
        row(2_100, confirm(1, ALICE, 11),            S::NotFound, NONE,     0,      0,       &[(0, 1, 9)]),
        row(2_100, release(2, ALICE),                S::NotFound, NONE,     0,      0,       &[(0, 1, 9)]),
        // The id is free again (the confirmed unit stays confirmed).
        row(2_100, reserve(1, ALICE, 1, 4, 0),       S::Ok,      HELD,      0,      3_100,   &[(4, 1, 5)]),
        row(2_499, reserve(3, ALICE, 1, 3, 500),     S::Ok,      EXPIRED,   REPEAT, 0,       &[(4, 1, 5)]),
        row(2_500, lookup(3, ALICE),                 S::NotFound, NONE,     0,      0,       &[(4, 1, 5)]),
        row(2_500, reserve(3, ALICE, 1, 3, 500),     S::Ok,      HELD,      0,      3_000,   &[(7, 1, 2)]),
        row(5_000, reserve(2, ALICE, 1, 9, 0),       S::Ok,      HELD,      0,      6_000,   &[(9, 1, 0)]),
    ];
    run(&mut e, &rows);
}

// ----- 3. idempotent repeats --------------------------------------------------------------------

#[test]
fn idempotent_repeats_take_nothing_twice() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at     command                          status                        state      flags   expires  totals
        row(0,     reserve(1, ALICE, 1, 3, 0),      S::Ok,                        HELD,      0,      1_000,   &[(3, 0, 7)]),
        row(10,    reserve(1, ALICE, 1, 3, 0),      S::Ok,                        HELD,      REPEAT, 1_000,   &[(3, 0, 7)]),
        // The ttl is not part of the id's parameters: a repeat with another ttl changes nothing.
        row(20,    reserve(1, ALICE, 1, 3, 4_000),  S::Ok,                        HELD,      REPEAT, 1_000,   &[(3, 0, 7)]),
        // After confirm: the repeat reports the confirmed state.
        row(30,    confirm(1, ALICE, 77),           S::Ok,                        CONFIRMED, 0,      0,       &[(0, 3, 7)]),
        row(40,    reserve(1, ALICE, 1, 3, 0),      S::Ok,                        CONFIRMED, REPEAT, 0,       &[(0, 3, 7)]),
        row(40,    confirm(1, ALICE, 77),           S::Ok,                        CONFIRMED, REPEAT, 0,       &[(0, 3, 7)]),
        row(40,    confirm(1, ALICE, 78),           S::ConfirmedWithDifferentRef, CONFIRMED, 0,      0,       &[(0, 3, 7)]),
        // After release.
        row(50,    reserve(2, ALICE, 1, 4, 0),      S::Ok,                        HELD,      0,      1_050,   &[(4, 3, 3)]),
        row(60,    release(2, ALICE),               S::Ok,                        RELEASED,  0,      0,       &[(0, 3, 7)]),
        row(70,    release(2, ALICE),               S::Ok,                        RELEASED,  REPEAT, 0,       &[(0, 3, 7)]),
        row(70,    reserve(2, ALICE, 1, 4, 0),      S::Ok,                        RELEASED,  REPEAT, 0,       &[(0, 3, 7)]),
        // After expiry.
        row(80,    reserve(3, ALICE, 1, 5, 100),    S::Ok,                        HELD,      0,      180,     &[(5, 3, 2)]),
        row(179,   reserve(3, ALICE, 1, 5, 100),    S::Ok,                        HELD,      REPEAT, 180,     &[(5, 3, 2)]),
        row(180,   reserve(3, ALICE, 1, 5, 100),    S::Ok,                        EXPIRED,   REPEAT, 0,       &[(0, 3, 7)]),
        // A repeat of a reserve whose units are gone from the pool is still an ok repeat.
        row(190,   reserve(4, ALICE, 1, 7, 0),      S::Ok,                        HELD,      0,      1_190,   &[(7, 3, 0)]),
        row(190,   reserve(4, ALICE, 1, 7, 0),      S::Ok,                        HELD,      REPEAT, 1_190,   &[(7, 3, 0)]),
        row(190,   reserve(1, ALICE, 1, 3, 0),      S::Ok,                        CONFIRMED, REPEAT, 0,       &[(7, 3, 0)]),
    ];
    run(&mut e, &rows);
}

/// The project documents this decision (README, "Semantics worth knowing"): a refused
/// reserve leaves no record, so the same id may succeed once capacity is back.
#[test]
fn refused_reserve_does_not_burn_its_id() {
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at   command                       status            state     flags  expires  totals
        row(0,   reserve(1, ALICE, 1, 10, 0),  S::Ok,            HELD,     0,     1_000,   &[(10, 0, 0)]),
        row(0,   reserve(2, BOB, 1, 4, 0),     S::SoldOut,       NONE,     0,     0,       &[(10, 0, 0)]),
        row(0,   lookup(2, BOB),               S::NotFound,      NONE,     0,     0,       &[(10, 0, 0)]),
        // Retried while still short: sold_out again, not a repeat of a refusal.
        row(10,  reserve(2, BOB, 1, 4, 0),     S::SoldOut,       NONE,     0,     0,       &[(10, 0, 0)]),
        row(20,  release(1, ALICE),            S::Ok,            RELEASED, 0,     0,       &[(0, 0, 10)]),
        // Same id, now served: a fresh hold (no REPEAT flag), units taken once.
        row(30,  reserve(2, BOB, 1, 4, 0),     S::Ok,            HELD,     0,     1_030,   &[(4, 0, 6)]),
        row(30,  reserve(2, BOB, 1, 4, 0),     S::Ok,            HELD,     REPEAT, 1_030,  &[(4, 0, 6)]),
        // The same holds for other refusals: pool_inactive leaves the id free too.
        row(40,  set_active(1, false),         S::Ok,            NONE,     0,     0,       &[(4, 0, 6)]),
        row(40,  reserve(3, BOB, 1, 1, 0),     S::PoolInactive,  NONE,     0,     0,       &[(4, 0, 6)]),
        row(50,  set_active(1, true),          S::Ok,            NONE,     0,     0,       &[(4, 0, 6)]),
        // ... even with another quantity, since nothing was recorded.
        row(50,  reserve(3, BOB, 1, 2, 0),     S::Ok,            HELD,     0,     1_050,   &[(6, 0, 4)]),
    ];
    run(&mut e, &rows);
}

#[test]
fn same_id_on_one_core_belongs_to_one_user() {
    // On a single core every user shares the id space: another user's reserve with the id is
    // refused, and that user's operations on it answer not_found.
    let mut e = engine(16, &[10]);
    #[rustfmt::skip]
    let rows = [
        //  at  command                       status                         state  flags  expires  totals
        row(0,  reserve(5, ALICE, 1, 2, 0),   S::Ok,                         HELD,  0,     1_000,   &[(2, 0, 8)]),
        row(0,  reserve(5, BOB, 1, 2, 0),     S::IdExistsWithDifferentUser,  NONE,  0,     0,       &[(2, 0, 8)]),
        row(0,  release(5, BOB),              S::NotFound,                   NONE,  0,     0,       &[(2, 0, 8)]),
        row(0,  extend(5, BOB, 100),          S::NotFound,                   NONE,  0,     0,       &[(2, 0, 8)]),
        row(0,  lookup(5, BOB),               S::NotFound,                   NONE,  0,     0,       &[(2, 0, 8)]),
        row(0,  lookup(5, ALICE),             S::Ok,                         HELD,  0,     1_000,   &[(2, 0, 8)]).lookup(2, 0),
    ];
    run(&mut e, &rows);
}

/// On a single core, a reserve that does not fit waits for a recall that has no other core
/// to ask, so the recall ends inside the same call and decides it: `reserve` answers
/// `Reply::Done(sold_out)` itself, and no ticket, completion or message is left behind.
/// Outcomes are compared whole, `available` (the shard's free units) included.
#[test]
fn single_core_sold_out_is_answered_done_not_parked() {
    // Pool 1 holds 80: a drained pool goes back to normal at max(80 / 8, 1 core) = 10 free.
    let mut e = engine(16, &[80]);
    let held = |expires: u64, available: u64| {
        Outcome::Reserve(Reply::Done(OpResult {
            status: S::Ok as u8,
            state: HELD as u8,
            flags: 0,
            expires_at_ms: T0 + expires,
            available,
        }))
    };
    let sold_out =
        |available: u64| Outcome::Reserve(Reply::Done(OpResult { available, ..OpResult::status(S::SoldOut) }));
    let released = |available: u64| {
        Outcome::Op(OpResult { status: S::Ok as u8, state: RELEASED as u8, flags: 0, expires_at_ms: 0, available })
    };
    // (at, command, outcome, shard flags afterwards)
    #[rustfmt::skip]
    let rows: [(u64, Cmd, Outcome, u8); 8] = [
        (0,  reserve(1, ALICE, 1, 75, 0),   held(1_000, 5),   H),
        // 6 > 5 free: the reserve parks, the recall ends at once and refuses it (the whole
        // pool has 5). 5 < 10 free: the pool stays drained.
        (0,  reserve(2, ALICE, 1, 6, 0),    sold_out(5),      H | D),
        // Drained: home refuses a short reserve without parking it; what fits is held.
        (0,  reserve(3, ALICE, 1, 6, 0),    sold_out(5),      H | D),
        (0,  reserve(4, ALICE, 1, 5, 0),    held(1_000, 0),   H | D),
        (10, reserve(5, ALICE, 1, 1, 0),    sold_out(0),      H | D),
        // 75 free again: at least 10, back to normal.
        (20, release(1, ALICE),             released(75),     H),
        (20, reserve(6, ALICE, 1, 6, 0),    held(1_020, 69),  H),
        // Normal: parks, recalls, refused in the same call; 69 free, so normal again at once.
        (30, reserve(7, ALICE, 1, 100, 0),  sold_out(69),     H),
    ];
    for (i, (at, cmd, want, flags)) in rows.into_iter().enumerate() {
        assert_eq!(e.apply(T0 + at, cmd.command()), want, "row {i}: {cmd:?}");
        assert!(!e.has_output(), "row {i}: no completion and no message left behind");
        e.audit();
        let s = e.shard_snapshot(1).expect("pool 1");
        assert_eq!((s.flags, s.parked), (flags, 0), "row {i}: shard (flags, parked)");
    }
    // The refused reserves left no record: ids 4 and 6 are held, 1 (released) is kept.
    assert_eq!((e.holds_len(), e.retained().0), (2, 1));
}

// ----- multi-core runner -------------------------------------------------------------------------

/// What a submitted reserve answers at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply1 {
    /// Decided on the spot: status, state, flags.
    Done(S, ReservationState, u8),
    /// Parked, waiting for units from the home core.
    Parked,
    /// Not a reserve (confirm, release, ...): status, state, flags.
    Op(S, ReservationState, u8),
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// A client command, on its user's home core.
    Submit(Cmd),
    /// A catalog command, on every core in order (as the server applies it).
    Everywhere(Cmd),
    /// The oldest message of the link `from -> to`.
    Deliver(u16, u16),
}

/// (capacity, held, lent, borrowed, flags, parked)
type Sh = (u64, u64, u64, u64, u8, u32);

/// One row of a multi-core table.
struct NetRow {
    step: Step,
    reply: Option<Reply1>,
    /// Parked reserves decided during this step, by reservation id.
    done: &'static [(u128, S)],
    links: &'static [(u16, u16)],
    shards: &'static [Sh],
}

fn submit(
    cmd: Cmd,
    reply: Reply1,
    done: &'static [(u128, S)],
    links: &'static [(u16, u16)],
    shards: &'static [Sh],
) -> NetRow {
    NetRow { step: Step::Submit(cmd), reply: Some(reply), done, links, shards }
}

fn everywhere(
    cmd: Cmd,
    reply: Reply1,
    done: &'static [(u128, S)],
    links: &'static [(u16, u16)],
    shards: &'static [Sh],
) -> NetRow {
    NetRow { step: Step::Everywhere(cmd), reply: Some(reply), done, links, shards }
}

fn deliver(
    from: u16,
    to: u16,
    done: &'static [(u128, S)],
    links: &'static [(u16, u16)],
    shards: &'static [Sh],
) -> NetRow {
    NetRow { step: Step::Deliver(from, to), reply: None, done, links, shards }
}

fn sh(s: &ShardStatus) -> Sh {
    (s.capacity, s.held, s.lent, s.borrowed, s.flags, s.parked)
}

/// Steps the cluster through `rows` at time `now`, asserting each.
fn run_net(c: &mut Cluster, now: u64, rows: &[NetRow]) {
    // (deciding core, ticket) -> reservation id, for the completions.
    let mut tickets: HashMap<(u16, u64), u128> = HashMap::new();
    let mut seen = c.completions.len();
    c.check();
    for (i, r) in rows.iter().enumerate() {
        match r.step {
            Step::Submit(cmd) => {
                let command = cmd.command();
                let core = route(&command, c.cores());
                let reply = match c.apply(now, core, command) {
                    Outcome::Reserve(Reply::Done(res)) => {
                        let s = seen_op(res);
                        Reply1::Done(s.status, s.state, s.flags)
                    }
                    Outcome::Reserve(Reply::Parked(ticket)) => {
                        let Cmd::Reserve { id, .. } = cmd else { unreachable!() };
                        tickets.insert((core, ticket), id);
                        Reply1::Parked
                    }
                    Outcome::Op(res) => {
                        let s = seen_op(res);
                        Reply1::Op(s.status, s.state, s.flags)
                    }
                    other => panic!("row {i}: unexpected outcome {other:?}"),
                };
                assert_eq!(Some(reply), r.reply, "row {i}: reply to {cmd:?}");
            }
            Step::Everywhere(cmd) => {
                for core in 0..c.cores() {
                    let reply = match c.apply(now, core, cmd.command()) {
                        Outcome::Pool(Ok(_)) => Reply1::Op(S::Ok, NONE, 0),
                        Outcome::Pool(Err(status)) => Reply1::Op(status, NONE, 0),
                        other => panic!("row {i}: unexpected outcome {other:?}"),
                    };
                    assert_eq!(Some(reply), r.reply, "row {i}: reply to {cmd:?} on core {core}");
                }
            }
            Step::Deliver(from, to) => {
                assert!(c.deliver(now, from, to), "row {i}: link {from} -> {to} is empty");
            }
        }
        c.check();
        let done: Vec<(u128, S)> = c.completions[seen..]
            .iter()
            .map(|(core, done)| {
                let id = *tickets.get(&(*core, done.ticket)).expect("completion of a parked reserve");
                let result = seen_op(done.result);
                let state = if result.status == S::Ok { HELD } else { NONE };
                assert_eq!(result.state, state, "row {i}: state of completed reserve {id}");
                (id, result.status)
            })
            .collect();
        seen = c.completions.len();
        assert_eq!(done, r.done, "row {i} ({:?}): reserves decided", r.step);
        assert_eq!(c.busy_links(), r.links, "row {i} ({:?}): links with messages", r.step);
        let shards: Vec<Sh> = c.shards(1).iter().map(sh).collect();
        assert_eq!(shards, r.shards, "row {i} ({:?}): shards (capacity, held, lent, borrowed, flags, parked)", r.step);
    }
    for e in &c.engines {
        e.audit();
    }
}

fn parked() -> Reply1 {
    Reply1::Parked
}
fn done(status: S, state: ReservationState) -> Reply1 {
    Reply1::Done(status, state, 0)
}
fn repeat(state: ReservationState) -> Reply1 {
    Reply1::Done(S::Ok, state, REPEAT)
}
fn op(status: S, state: ReservationState) -> Reply1 {
    Reply1::Op(status, state, 0)
}

// ----- 1 (cont.). busy and id_ambiguous need several cores ----------------------------------------

#[test]
fn busy_when_the_parking_line_is_full() {
    // 2 cores, at most 1 parked reserve per core. Pool 1 (10 units) is homed on core 1;
    // each core starts with 5.
    let mut c = cluster(2, 1, 10);
    let a = user_on(0, 2, 0);
    let b = user_on(1, 2, 0);
    #[rustfmt::skip]
    let rows = [
        //      step                                 reply                          done               links        core 0               core 1
        submit(reserve(1, a, 1, 2, 0),               done(S::Ok, HELD),             &[],               &[],         &[(5, 2, 0, 0, 0, 0), (5, 0, 0, 0, H, 0)]),
        // 6 > 3 free here: parked; the shard borrows the shortfall (3) from home.
        submit(reserve(2, a, 1, 6, 0),               parked(),                      &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        // The line is not empty, so even a reserve that would fit must wait: busy.
        submit(reserve(3, a, 1, 1, 0),               done(S::Busy, NONE),           &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        // Refusals and repeats decided by the prechecks come before busy.
        submit(reserve(1, a, 1, 2, 0),               repeat(HELD),                  &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        submit(reserve(4, a, 1, 0, 0),               done(S::InvalidQuantity, NONE), &[],              &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        submit(reserve(1, a, 1, 3, 0),               done(S::IdExistsWithDifferentQuantity, NONE), &[], &[(0, 1)],  &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        everywhere(set_active(1, false),             op(S::Ok, NONE),               &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        submit(reserve(3, a, 1, 1, 0),               done(S::PoolInactive, NONE),   &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        everywhere(set_active(1, true),              op(S::Ok, NONE),               &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        submit(reserve(3, a, 1, 1, 0),               done(S::Busy, NONE),           &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 0, 0, 0, H, 0)]),
        // The limit is per core: core 1 has nothing parked.
        submit(reserve(5, b, 1, 1, 0),               done(S::Ok, HELD),             &[],               &[(0, 1)],   &[(5, 2, 0, 0, 0, 1), (5, 1, 0, 0, H, 0)]),
        // Home has 4 free: grants the 3 asked (spare (4 - 3) / 2 = 0).
        deliver(0, 1,                                                               &[],               &[(1, 0)],   &[(5, 2, 0, 0, 0, 1), (2, 1, 3, 0, H, 0)]),
        deliver(1, 0,                                                               &[(2, S::Ok)],     &[],         &[(8, 8, 0, 3, 0, 0), (2, 1, 3, 0, H, 0)]),
        // Busy did not burn id 3: it parks now and is served.
        submit(reserve(3, a, 1, 1, 0),               parked(),                      &[],               &[(0, 1)],   &[(8, 8, 0, 3, 0, 1), (2, 1, 3, 0, H, 0)]),
        deliver(0, 1,                                                               &[],               &[(1, 0)],   &[(8, 8, 0, 3, 0, 1), (1, 1, 4, 0, H, 0)]),
        deliver(1, 0,                                                               &[(3, S::Ok)],     &[],         &[(9, 9, 0, 4, 0, 0), (1, 1, 4, 0, H, 0)]),
    ];
    run_net(&mut c, T0, &rows);
    assert_eq!(c.totals(1), (10, 0, 0));
}

#[test]
fn lookup_without_user_is_ambiguous_when_two_cores_hold_the_id() {
    let mut c = cluster(2, 16, 10);
    let a = user_on(0, 2, 0);
    let b = user_on(1, 2, 0);
    let now = T0;
    // Ids are unique per home core: the same id for users on different cores is no conflict.
    #[rustfmt::skip]
    let rows = [
        submit(reserve(77, a, 1, 1, 0),   done(S::Ok, HELD),    &[], &[], &[(5, 1, 0, 0, 0, 0), (5, 0, 0, 0, H, 0)]),
        submit(reserve(77, b, 1, 2, 0),   done(S::Ok, HELD),    &[], &[], &[(5, 1, 0, 0, 0, 0), (5, 2, 0, 0, H, 0)]),
        submit(release(77, a),            op(S::Ok, RELEASED),  &[], &[], &[(5, 0, 0, 0, 0, 0), (5, 2, 0, 0, H, 0)]),
    ];
    run_net(&mut c, now, &rows);
    let l = |c: &mut Cluster, at: u64, id: u128, user: u128| {
        let r = c.lookup(T0 + at, LookupOp { id, user });
        (S::from_u8(r.status).unwrap(), ReservationState::from_u8(r.state).unwrap(), r.user, r.qty)
    };
    // (at, id, user) -> (status, state, user, qty)
    type Found = (S, ReservationState, u128, u32);
    #[rustfmt::skip]
    let table: [(u64, u128, u128, Found); 10] = [
        (0,     77, 0, (S::IdAmbiguous, NONE, 0, 0)),
        (0,     77, a, (S::Ok, RELEASED, a, 1)),
        (0,     77, b, (S::Ok, HELD, b, 2)),
        (0,     78, 0, (S::NotFound, NONE, 0, 0)),
        (0,     0, 0,  (S::InvalidId, NONE, 0, 0)),
        // a's released record is kept until max(1_000, 0 + 2_000); b's hold expires at
        // 1_000 and is kept until 3_000.
        (1_999, 77, 0, (S::IdAmbiguous, NONE, 0, 0)),
        (2_000, 77, 0, (S::Ok, EXPIRED, b, 2)),
        (2_000, 77, a, (S::NotFound, NONE, 0, 0)),
        (2_999, 77, 0, (S::Ok, EXPIRED, b, 2)),
        (3_000, 77, 0, (S::NotFound, NONE, 0, 0)),
    ];
    for (i, &(at, id, user, want)) in table.iter().enumerate() {
        assert_eq!(l(&mut c, at, id, user), want, "lookup row {i}: id {id} user {user} at +{at}");
        assert!(c.busy_links().is_empty());
        c.check();
    }
}

// ----- 4. borrowing ------------------------------------------------------------------------------

#[test]
fn a_dry_shard_borrows_from_home_with_spare_units() {
    // 2 cores; pool 1 (100 units) is homed on core 1 (1 % 2); each core starts with 50.
    let mut c = cluster(2, 16, 100);
    let a = user_on(0, 2, 0);
    let b = user_on(1, 2, 0);
    #[rustfmt::skip]
    let rows = [
        //      step                        reply               done                         links       core 0                  core 1
        submit(reserve(1, a, 1, 30, 0),     done(S::Ok, HELD),  &[],                         &[],        &[(50, 30, 0, 0, 0, 0),  (50, 0, 0, 0, H, 0)]),
        // 20 free, 30 asked: parked, and one aggregate borrow of the shortfall (10).
        submit(reserve(2, a, 1, 30, 0),     parked(),           &[],                         &[(0, 1)],  &[(50, 30, 0, 0, 0, 1),  (50, 0, 0, 0, H, 0)]),
        // Home grants 10 plus (50 - 10) / 2 = 20 spare: 30 units leave core 1.
        deliver(0, 1,                                           &[],                         &[(1, 0)],  &[(50, 30, 0, 0, 0, 1),  (20, 0, 30, 0, H, 0)]),
        deliver(1, 0,                                           &[(2, S::Ok)],               &[],        &[(80, 60, 0, 30, 0, 0), (20, 0, 30, 0, H, 0)]),
        // The spare serves the next reserve without a message.
        submit(reserve(3, a, 1, 20, 0),     done(S::Ok, HELD),  &[],                         &[],        &[(80, 80, 0, 30, 0, 0), (20, 0, 30, 0, H, 0)]),
        submit(reserve(4, b, 1, 5, 0),      done(S::Ok, HELD),  &[],                         &[],        &[(80, 80, 0, 30, 0, 0), (20, 5, 30, 0, H, 0)]),
        // Two reserves wait behind one aggregate borrow (4 + 3 = 7 wanted, 4 asked first).
        submit(reserve(5, a, 1, 4, 0),      parked(),           &[],                         &[(0, 1)],  &[(80, 80, 0, 30, 0, 1), (20, 5, 30, 0, H, 0)]),
        submit(reserve(6, a, 1, 3, 0),      parked(),           &[],                         &[(0, 1)],  &[(80, 80, 0, 30, 0, 2), (20, 5, 30, 0, H, 0)]),
        // One message only: once delivered the link is empty. Grant 4 + (15 - 4) / 2 = 9.
        deliver(0, 1,                                           &[],                         &[(1, 0)],  &[(80, 80, 0, 30, 0, 2), (11, 5, 39, 0, H, 0)]),
        deliver(1, 0,                                           &[(5, S::Ok), (6, S::Ok)],   &[],        &[(89, 87, 0, 39, 0, 0), (11, 5, 39, 0, H, 0)]),
        // Releasing on a normal (undrained) shard keeps the units there.
        submit(release(1, a),               op(S::Ok, RELEASED), &[],                        &[],        &[(89, 57, 0, 39, 0, 0), (11, 5, 39, 0, H, 0)]),
    ];
    run_net(&mut c, T0, &rows);
    assert_eq!(c.totals(1), (62, 0, 38));
}

#[test]
fn recall_gathers_every_free_unit_before_deciding_exactly() {
    // 3 cores; pool 1 (30 units) is homed on core 1; each core starts with 10.
    let mut c = cluster(3, 16, 30);
    let a = user_on(0, 3, 0);
    let b = user_on(1, 3, 0);
    let d = user_on(2, 3, 0);
    #[rustfmt::skip]
    let rows = [
        //      step                        reply               done              links                          core 0                 core 1                     core 2
        submit(reserve(1, a, 1, 10, 0),     done(S::Ok, HELD),  &[],              &[],                           &[(10, 10, 0, 0, 0, 0), (10, 0, 0, 0, H, 0),       (10, 0, 0, 0, 0, 0)]),
        submit(reserve(2, b, 1, 8, 0),      done(S::Ok, HELD),  &[],              &[],                           &[(10, 10, 0, 0, 0, 0), (10, 8, 0, 0, H, 0),       (10, 0, 0, 0, 0, 0)]),
        // Core 0 is dry: it asks home for 5.
        submit(reserve(3, a, 1, 5, 0),      parked(),           &[],              &[(0, 1)],                     &[(10, 10, 0, 0, 0, 1), (10, 8, 0, 0, H, 0),       (10, 0, 0, 0, 0, 0)]),
        // Home has 2: it cannot cover the borrow, so it recalls cores 0 and 2 and tells
        // core 0 to borrow exactly (a grant of 0).
        deliver(0, 1,                                           &[],              &[(1, 0), (1, 2)],             &[(10, 10, 0, 0, 0, 1), (10, 8, 0, 0, H | R, 0),   (10, 0, 0, 0, 0, 0)]),
        // Core 2 is drained: it sends its 10 free units home (a return), then answers the
        // recall with the 0 it has left.
        deliver(1, 2,                                           &[],              &[(1, 0), (2, 1)],             &[(10, 10, 0, 0, 0, 1), (10, 8, 0, 0, H | R, 0),   (0, 0, 10, 0, D, 0)]),
        // Core 0 has none to send; drained, it asks exactly for its parked reserve, and
        // only then answers the recall (empty).
        deliver(1, 0,                                           &[],              &[(0, 1), (1, 0), (2, 1)],     &[(10, 10, 0, 0, D, 1), (10, 8, 0, 0, H | R, 0),   (0, 0, 10, 0, D, 0)]),
        // The grant of 0 changes nothing: the exact borrow is already on its way.
        deliver(1, 0,                                           &[],              &[(0, 1), (2, 1)],             &[(10, 10, 0, 0, D, 1), (10, 8, 0, 0, H | R, 0),   (0, 0, 10, 0, D, 0)]),
        // Core 0's exact borrow arrives first and waits in this recall's queue ...
        deliver(0, 1,                                           &[],              &[(0, 1), (2, 1)],             &[(10, 10, 0, 0, D, 1), (10, 8, 0, 0, H | R, 0),   (0, 0, 10, 0, D, 0)]),
        // ... then its (empty) answer: one shard still to answer.
        deliver(0, 1,                                           &[],              &[(2, 1)],                     &[(10, 10, 0, 0, D, 1), (10, 8, 0, 0, H | R, 0),   (0, 0, 10, 0, D, 0)]),
        // Core 2's 10 arrive while home is still recalling: nothing is decided yet.
        deliver(2, 1,                                           &[],              &[(2, 1)],                     &[(10, 10, 0, 0, D, 1), (20, 8, 0, 10, H | R, 0),  (0, 0, 10, 0, D, 0)]),
        // Core 2's answer ends the recall: home knows all 12 free units, grants exactly the
        // 5 in this same round, and undrains (everything asked could be granted).
        deliver(2, 1,                                           &[],              &[(1, 0), (1, 2)],             &[(10, 10, 0, 0, D, 1), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, D, 0)]),
        // No phantom sold_out: the dry shard got units a sibling held.
        deliver(1, 0,                                           &[(3, S::Ok)],    &[(1, 0), (1, 2)],             &[(15, 15, 0, 5, D, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, D, 0)]),
        deliver(1, 0,                                           &[],              &[(1, 2)],                     &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, D, 0)]),
        deliver(1, 2,                                           &[],              &[],                           &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, 0, 0)]),
        // 7 units are left, all at home. Core 2 asks for 8: recall again, and the home core
        // answers sold_out only once every shard has answered (the whole pool has 7).
        submit(reserve(4, d, 1, 8, 0),      parked(),           &[],              &[(2, 1)],                     &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, 0, 1)]),
        deliver(2, 1,                                           &[],              &[(1, 0), (1, 2)],             &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H | R, 0),  (0, 0, 10, 0, 0, 1)]),
        // Core 2 drains with nothing to send, asks exactly for 8, then answers (empty).
        deliver(1, 2,                                           &[],              &[(1, 0), (1, 2), (2, 1)],     &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H | R, 0),  (0, 0, 10, 0, D, 1)]),
        // The exact borrow joins this recall's queue, then core 2's answer is counted.
        deliver(2, 1,                                           &[],              &[(1, 0), (1, 2), (2, 1)],     &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H | R, 0),  (0, 0, 10, 0, D, 1)]),
        deliver(2, 1,                                           &[],              &[(1, 0), (1, 2)],             &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H | R, 0),  (0, 0, 10, 0, D, 1)]),
        // Core 0 is the last to answer: still recalling until then.
        deliver(1, 0,                                           &[],              &[(0, 1), (1, 2)],             &[(15, 15, 0, 5, D, 0), (15, 8, 5, 10, H | R, 0),  (0, 0, 10, 0, D, 1)]),
        // Every shard answered: 7 < 8, sold_out. The pool is drained, but 7 is at least
        // max(30 / 8, 3 cores) = 3, so the home core undrains at once.
        deliver(0, 1,                                           &[],              &[(1, 0), (1, 2)],             &[(15, 15, 0, 5, D, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, D, 1)]),
        deliver(1, 2,                                           &[],              &[(1, 0), (1, 2)],             &[(15, 15, 0, 5, D, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, D, 1)]),
        deliver(1, 2,                                           &[(4, S::SoldOut)], &[(1, 0), (1, 2)],           &[(15, 15, 0, 5, D, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, D, 0)]),
        deliver(1, 2,                                           &[],              &[(1, 0)],                     &[(15, 15, 0, 5, D, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, 0, 0)]),
        deliver(1, 0,                                           &[],              &[],                           &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, 0, 0)]),
        // Exactly what is left still fits, from the dry core.
        submit(reserve(4, d, 1, 7, 0),      parked(),           &[],              &[(2, 1)],                     &[(15, 15, 0, 5, 0, 0), (15, 8, 5, 10, H, 0),      (0, 0, 10, 0, 0, 1)]),
        deliver(2, 1,                                           &[],              &[(1, 2)],                     &[(15, 15, 0, 5, 0, 0), (8, 8, 12, 10, H, 0),      (0, 0, 10, 0, 0, 1)]),
        deliver(1, 2,                                           &[(4, S::Ok)],    &[],                           &[(15, 15, 0, 5, 0, 0), (8, 8, 12, 10, H, 0),      (7, 7, 10, 7, 0, 0)]),
    ];
    run_net(&mut c, T0, &rows);
    assert_eq!(c.totals(1), (30, 0, 0));
}

#[test]
fn drained_pool_sends_releases_home_and_undrains_at_an_eighth() {
    // 2 cores; pool 1 (80 units) is homed on core 1; each core starts with 40. A drained
    // pool goes back to normal when home has max(80 / 8, 2) = 10 free units.
    let mut c = cluster(2, 16, 80);
    let a = user_on(0, 2, 0);
    let b = user_on(1, 2, 0);
    #[rustfmt::skip]
    let rows = [
        //      step                        reply                    done                 links               core 0                  core 1
        submit(reserve(1, a, 1, 35, 0),     done(S::Ok, HELD),       &[],                 &[],                &[(40, 35, 0, 0, 0, 0), (40, 0, 0, 0, H, 0)]),
        submit(reserve(2, a, 1, 2, 0),      done(S::Ok, HELD),       &[],                 &[],                &[(40, 37, 0, 0, 0, 0), (40, 0, 0, 0, H, 0)]),
        submit(reserve(3, a, 1, 1, 0),      done(S::Ok, HELD),       &[],                 &[],                &[(40, 38, 0, 0, 0, 0), (40, 0, 0, 0, H, 0)]),
        submit(reserve(4, b, 1, 35, 0),     done(S::Ok, HELD),       &[],                 &[],                &[(40, 38, 0, 0, 0, 0), (40, 35, 0, 0, H, 0)]),
        // 7 free in the pool (2 here, 5 at home); 8 asked.
        submit(reserve(5, a, 1, 8, 0),      parked(),                &[],                 &[(0, 1)],          &[(40, 38, 0, 0, 0, 1), (40, 35, 0, 0, H, 0)]),
        // Home cannot cover the shortfall of 6: recall.
        deliver(0, 1,                                                &[],                 &[(1, 0)],          &[(40, 38, 0, 0, 0, 1), (40, 35, 0, 0, H | R, 0)]),
        // Core 0 is drained: it sends its 2 free units home, asks exactly for 8, and only
        // then answers the recall (with 0 left), all on the same link, in that order.
        deliver(1, 0,                                                &[],                 &[(0, 1), (1, 0)],  &[(38, 38, 2, 0, D, 1), (40, 35, 0, 0, H | R, 0)]),
        // The grant of 0 changes nothing: the exact borrow is already on its way.
        deliver(1, 0,                                                &[],                 &[(0, 1)],          &[(38, 38, 2, 0, D, 1), (40, 35, 0, 0, H | R, 0)]),
        // The 2 units arrive while home is still recalling ...
        deliver(0, 1,                                                &[],                 &[(0, 1)],          &[(38, 38, 2, 0, D, 1), (42, 35, 0, 2, H | R, 0)]),
        // ... the exact borrow of 8 waits in this recall's queue ...
        deliver(0, 1,                                                &[],                 &[(0, 1)],          &[(38, 38, 2, 0, D, 1), (42, 35, 0, 2, H | R, 0)]),
        // ... and the answer ends the recall with every free unit at home: 7 < 8 is
        // sold_out, decided in this one round, and the pool stays drained (7 < 10).
        deliver(0, 1,                                                &[],                 &[(1, 0)],          &[(38, 38, 2, 0, D, 1), (42, 35, 0, 2, H | D, 0)]),
        deliver(1, 0,                                                &[(5, S::SoldOut)],  &[],                &[(38, 38, 2, 0, D, 0), (42, 35, 0, 2, H | D, 0)]),
        // While drained, home answers its own short reserves at once ...
        submit(reserve(6, b, 1, 8, 0),      done(S::SoldOut, NONE),  &[],                 &[],                &[(38, 38, 2, 0, D, 0), (42, 35, 0, 2, H | D, 0)]),
        // ... and grants exact borrows that the pool can cover.
        submit(reserve(7, a, 1, 3, 0),      parked(),                &[],                 &[(0, 1)],          &[(38, 38, 2, 0, D, 1), (42, 35, 0, 2, H | D, 0)]),
        deliver(0, 1,                                                &[],                 &[(1, 0)],          &[(38, 38, 2, 0, D, 1), (39, 35, 3, 2, H | D, 0)]),
        deliver(1, 0,                                                &[(7, S::Ok)],       &[],                &[(41, 41, 2, 3, D, 0), (39, 35, 3, 2, H | D, 0)]),
        // A drained exact borrow the pool cannot cover is refused without a recall.
        submit(reserve(8, a, 1, 5, 0),      parked(),                &[],                 &[(0, 1)],          &[(41, 41, 2, 3, D, 1), (39, 35, 3, 2, H | D, 0)]),
        deliver(0, 1,                                                &[],                 &[(1, 0)],          &[(41, 41, 2, 3, D, 1), (39, 35, 3, 2, H | D, 0)]),
        deliver(1, 0,                                                &[(8, S::SoldOut)],  &[],                &[(41, 41, 2, 3, D, 0), (39, 35, 3, 2, H | D, 0)]),
        // A release on the drained shard sends its units home at once.
        submit(release(2, a),               op(S::Ok, RELEASED),     &[],                 &[(0, 1)],          &[(39, 39, 4, 3, D, 0), (39, 35, 3, 2, H | D, 0)]),
        // Home now has 4 + 2 = 6 free: still short of 10, still drained.
        deliver(0, 1,                                                &[],                 &[],                &[(39, 39, 4, 3, D, 0), (41, 35, 3, 4, H | D, 0)]),
        submit(release(7, a),               op(S::Ok, RELEASED),     &[],                 &[(0, 1)],          &[(36, 36, 7, 3, D, 0), (41, 35, 3, 4, H | D, 0)]),
        // 9 free: one short of the threshold.
        deliver(0, 1,                                                &[],                 &[],                &[(36, 36, 7, 3, D, 0), (44, 35, 3, 7, H | D, 0)]),
        submit(release(3, a),               op(S::Ok, RELEASED),     &[],                 &[(0, 1)],          &[(35, 35, 8, 3, D, 0), (44, 35, 3, 7, H | D, 0)]),
        // 10 free: an eighth of the capacity is back, the pool goes back to normal.
        deliver(0, 1,                                                &[],                 &[(1, 0)],          &[(35, 35, 8, 3, D, 0), (45, 35, 3, 8, H, 0)]),
        deliver(1, 0,                                                &[],                 &[],                &[(35, 35, 8, 3, 0, 0), (45, 35, 3, 8, H, 0)]),
        // Normal borrowing again: 4 asked, granted with (10 - 4) / 2 = 3 spare.
        submit(reserve(9, a, 1, 4, 0),      parked(),                &[],                 &[(0, 1)],          &[(35, 35, 8, 3, 0, 1), (45, 35, 3, 8, H, 0)]),
        deliver(0, 1,                                                &[],                 &[(1, 0)],          &[(35, 35, 8, 3, 0, 1), (38, 35, 10, 8, H, 0)]),
        deliver(1, 0,                                                &[(9, S::Ok)],       &[],                &[(42, 39, 8, 10, 0, 0), (38, 35, 10, 8, H, 0)]),
        // A release on a normal shard keeps its units.
        submit(release(1, a),               op(S::Ok, RELEASED),     &[],                 &[],                &[(42, 4, 8, 10, 0, 0), (38, 35, 10, 8, H, 0)]),
    ];
    run_net(&mut c, T0, &rows);
    assert_eq!(c.totals(1), (39, 0, 41));
}

#[test]
fn an_expiry_on_a_drained_shard_sends_the_units_home() {
    // 2 cores; pool 1 (80 units) homed on core 1. Drain the pool, then let a hold on the
    // drained shard expire: its units go home as part of the expiry.
    let mut c = cluster(2, 16, 80);
    let a = user_on(0, 2, 0);
    let b = user_on(1, 2, 0);
    #[rustfmt::skip]
    let rows = [
        submit(reserve(1, a, 1, 36, 0),     done(S::Ok, HELD),      &[],                &[],               &[(40, 36, 0, 0, 0, 0), (40, 0, 0, 0, H, 0)]),
        submit(reserve(2, a, 1, 4, 300),    done(S::Ok, HELD),      &[],                &[],               &[(40, 40, 0, 0, 0, 0), (40, 0, 0, 0, H, 0)]),
        submit(reserve(3, b, 1, 38, 0),     done(S::Ok, HELD),      &[],                &[],               &[(40, 40, 0, 0, 0, 0), (40, 38, 0, 0, H, 0)]),
        // 3 asked, 2 free in the whole pool: one recall decides it. Core 0 drains, asks
        // exactly for 3 and then answers; home queues the exact borrow, and the answer ends
        // the recall with sold_out (2 < 3). The pool stays drained (2 < 10).
        submit(reserve(4, a, 1, 3, 0),      parked(),               &[],                &[(0, 1)],         &[(40, 40, 0, 0, 0, 1), (40, 38, 0, 0, H, 0)]),
        deliver(0, 1,                                               &[],                &[(1, 0)],         &[(40, 40, 0, 0, 0, 1), (40, 38, 0, 0, H | R, 0)]),
        deliver(1, 0,                                               &[],                &[(0, 1), (1, 0)], &[(40, 40, 0, 0, D, 1), (40, 38, 0, 0, H | R, 0)]),
        deliver(1, 0,                                               &[],                &[(0, 1)],         &[(40, 40, 0, 0, D, 1), (40, 38, 0, 0, H | R, 0)]),
        deliver(0, 1,                                               &[],                &[(0, 1)],         &[(40, 40, 0, 0, D, 1), (40, 38, 0, 0, H | R, 0)]),
        deliver(0, 1,                                               &[],                &[(1, 0)],         &[(40, 40, 0, 0, D, 1), (40, 38, 0, 0, H | D, 0)]),
        deliver(1, 0,                                               &[(4, S::SoldOut)], &[],               &[(40, 40, 0, 0, D, 0), (40, 38, 0, 0, H | D, 0)]),
    ];
    run_net(&mut c, T0, &rows);
    // 1 ms before the deadline nothing moves; at the deadline the 4 units leave core 0.
    c.apply(T0 + 299, 0, Command::Tick);
    assert!(c.busy_links().is_empty());
    assert_eq!(sh(&c.shards(1)[0]), (40, 40, 0, 0, D, 0));
    c.apply(T0 + 300, 0, Command::Tick);
    c.check();
    assert_eq!(c.busy_links(), [(0, 1)]);
    assert_eq!(c.in_flight_units(1), 4);
    assert_eq!(sh(&c.shards(1)[0]), (36, 36, 4, 0, D, 0));
    // Home gathers 2 + 4 = 6 < 10: still drained.
    assert!(c.deliver(T0 + 300, 0, 1));
    c.check();
    assert_eq!(sh(&c.shards(1)[1]), (44, 38, 0, 4, H | D, 0));
    assert!(c.busy_links().is_empty());
    assert_eq!(c.totals(1), (74, 0, 6));
}

/// The exact messages of one recall, read from the engines' outboxes (the [`Cluster`] tables
/// above only see which links are busy): a recalled shard first becomes drained and sends
/// its free units home, then one exact borrow per waiting reserve, and answers the recall
/// last, so the home core decides that borrow in the same round, knowing every free unit.
#[test]
fn a_recalled_shard_returns_and_borrows_exactly_before_it_answers() {
    // 2 cores, driven by hand; pool 1 (80 units) is homed on core 1; each core starts with 40.
    let template = EngineConfig {
        core: 0,
        cores: 2,
        holds_max: 100,
        parked_max: 16,
        retention_ms: RETENTION,
        retention_min_ms: 0,
        retained_max: 400,
        pools_max: 4,
    };
    let mut e: Vec<Engine> = (0..2).map(|core| Engine::new(EngineConfig { core, ..template }, T0)).collect();
    let def = e[0].validate_pool_create(&pool_request("pool-1", 80)).expect("valid pool");
    for engine in &mut e {
        assert_eq!(engine.create_pool(def.clone()).home_core, 1);
    }
    let a = user_on(0, 2, 0);
    let b = user_on(1, 2, 0);
    let out = |engine: &mut Engine| {
        let mut msgs = Vec::new();
        engine.take_outbox(&mut msgs);
        msgs
    };
    let to = |to: u16, seq: u64, msg: PeerMsg| Envelope { to, seq, msg };
    let peer = |from: u16, seq: u64, msg: PeerMsg| Command::Peer { from, seq, msg };
    let reserve =
        |id: u128, user: u128, qty: u32| Command::Reserve(ReserveOp { id, user, pool: 1, qty, ttl_ms: 0, priority: 0 });
    let is_held = |o: &Outcome| matches!(o, Outcome::Reserve(Reply::Done(r)) if r.status == S::Ok as u8);

    // 2 free on core 0, 5 at home: 7 in the pool.
    assert!(is_held(&e[0].apply(T0, reserve(1, a, 38))));
    assert!(is_held(&e[1].apply(T0, reserve(2, b, 35))));
    // 8 asked on core 0: parked, one aggregate borrow of the shortfall.
    let Outcome::Reserve(Reply::Parked(ticket)) = e[0].apply(T0, reserve(3, a, 8)) else { panic!("parked") };
    let borrow = PeerMsg::Borrow { pool: 1, need: 6, ticket: None, priority: 0 };
    assert_eq!(out(&mut e[0]), [to(1, 1, borrow)]);
    // Home cannot cover 6: it recalls core 0, then tells it to borrow exactly.
    e[1].apply(T0, peer(0, 1, borrow));
    let recall = PeerMsg::Recall { pool: 1 };
    let grant0 = PeerMsg::Grant { pool: 1, units: 0, ticket: None };
    assert_eq!(out(&mut e[1]), [to(0, 1, recall), to(0, 2, grant0)]);
    // The recall: the 2 free units go home, then the exact borrow, then the answer (0 left).
    e[0].apply(T0, peer(1, 1, recall));
    let give_back = PeerMsg::Return { pool: 1, units: 2 };
    let exact = PeerMsg::Borrow { pool: 1, need: 8, ticket: Some(ticket), priority: 0 };
    let answer = PeerMsg::Returned { pool: 1, units: 0 };
    assert_eq!(out(&mut e[0]), [to(1, 2, give_back), to(1, 3, exact), to(1, 4, answer)]);
    e[0].apply(T0, peer(1, 2, grant0));
    assert_eq!(out(&mut e[0]), []);
    // Home, still recalling, takes the units and queues the borrow; the answer ends the
    // recall: 7 < 8 is sold_out, with no second recall, and the pool stays drained (7 < 10).
    for (seq, msg) in [(2, give_back), (3, exact)] {
        e[1].apply(T0, peer(0, seq, msg));
        assert_eq!(out(&mut e[1]), [], "{msg:?}");
        assert_eq!(e[1].shard_snapshot(1).map(|s| s.flags), Some(H | R));
    }
    e[1].apply(T0, peer(0, 4, answer));
    let sold_out = PeerMsg::SoldOut { pool: 1, ticket };
    assert_eq!(out(&mut e[1]), [to(0, 3, sold_out)]);
    assert_eq!(e[1].shard_snapshot(1).map(|s| s.flags), Some(H | D));
    assert_eq!(e[1].available(1), Some(7));
    e[0].apply(T0, peer(1, 3, sold_out));
    assert_eq!(out(&mut e[0]), []);
    // Every message is kept until acknowledged, then forgotten; a message sent again
    // (after a crash) is recognised by its sequence number and changes nothing.
    assert_eq!(e[0].link(1).unacked.len(), 4);
    assert_eq!((e[0].link(1).sent, e[0].link(1).received), (4, 3));
    e[0].apply(T0, Command::PeerAck { from: 1, seq: 3 });
    assert_eq!(e[0].unacked(), [to(1, 4, answer)]);
    e[0].apply(T0, Command::PeerAck { from: 1, seq: 4 });
    assert!(e[0].unacked().is_empty());
    let before = e[1].shard_snapshot(1);
    e[1].apply(T0, peer(0, 3, exact));
    assert_eq!((e[1].shard_snapshot(1), out(&mut e[1])), (before, vec![]), "a repeated message is ignored");
    let mut done = Vec::new();
    e[0].take_completions(&mut done);
    assert_eq!(done, [Completion { ticket, result: OpResult { available: 0, ..OpResult::status(S::SoldOut) } }]);
    for engine in &e {
        engine.audit();
        assert!(!engine.has_output());
    }
    assert_eq!(
        e[0].shard_snapshot(1).map(|s| (s.capacity, s.held, s.lent, s.borrowed, s.flags)),
        Some((38, 38, 2, 0, D))
    );
}

/// During a recall, the reserves waiting for units are decided in the order they reached
/// the home core: units that another shard sends home meanwhile do not let the home core's
/// own, later reserve overtake an earlier exact borrow from another core.
#[test]
fn a_recall_decides_waiting_reserves_in_arrival_order() {
    // 3 cores, pool 1 of 30 units (10 per core), homed on core 1.
    let mut c = cluster(3, 100, 30);
    let (u0, u1, u2) = (user_on(0, 3, 0), user_on(1, 3, 0), user_on(2, 3, 0));
    let ok = |c: &mut Cluster, id: u128, user: u128, qty: u32| match c.submit(T0, Command::Reserve(r(id, user, qty))) {
        Outcome::Reserve(Reply::Done(res)) => assert_eq!(res.status, shardcap::protocol::Status::Ok as u8),
        other => panic!("reserve {id}: {other:?}"),
    };
    ok(&mut c, 1, u0, 10); // core 0 has nothing left
    ok(&mut c, 2, u1, 7); // the home core keeps 3
    ok(&mut c, 3, u2, 4); // core 2 keeps 6
    // Core 0 needs 6: its aggregate borrow makes the home core recall.
    let Outcome::Reserve(Reply::Parked(first)) = c.submit(T0, Command::Reserve(r(4, u0, 6))) else { panic!() };
    assert!(c.deliver(T0, 0, 1)); // aggregate borrow → recall sent to cores 0 and 2
    assert!(c.deliver(T0, 1, 0)); // core 0 drains: it borrows exactly 6, then answers the recall
    assert!(c.deliver(T0, 0, 1)); // its exact borrow is queued at home first
    // The home core's own user now wants 6 too and waits behind it.
    let Outcome::Reserve(Reply::Parked(second)) = c.submit(T0, Command::Reserve(r(5, u1, 6))) else { panic!() };
    assert!(c.deliver(T0, 1, 2)); // core 2 drains: Return{6} then Returned{0}
    assert!(c.deliver(T0, 2, 1)); // the 6 units reach home: 9 free there, nobody served yet
    assert!(c.completions.is_empty(), "nothing is decided before the recall ends");
    c.settle(T0, |_| 0);
    // Tickets are numbered per core.
    let result = |core: u16, ticket: u64| {
        c.completions.iter().find(|(at, done)| *at == core && done.ticket == ticket).map(|(_, d)| d.result.status)
    };
    assert_eq!(result(0, first), Some(shardcap::protocol::Status::Ok as u8), "the earlier exact borrow is served");
    assert_eq!(result(1, second), Some(shardcap::protocol::Status::SoldOut as u8), "3 units left for the later 6");
    assert_eq!(c.totals(1), (10 + 7 + 4 + 6, 0, 3));
}

fn r(id: u128, user: u128, qty: u32) -> shardcap::protocol::ReserveOp {
    shardcap::protocol::ReserveOp { id, user, pool: 1, qty, ttl_ms: 0, priority: 0 }
}

/// A hold keeps its state in the top bits of its quantity's word, so one reservation holds
/// at most 2^29 - 1 units; more is refused as `invalid_quantity` before anything else about
/// the pool is looked at.
#[test]
fn quantity_is_bounded_by_the_record_format() {
    const MAX: u64 = (1 << 29) - 1;
    const CAP: u64 = 1 << 40;
    let max = shardcap::shard::holds::HOLD_QTY_MAX;
    assert_eq!(max as u64, MAX);
    let mut e = engine(10, &[CAP]);
    run(
        &mut e,
        &[
            row(0, reserve(1, ALICE, 1, max + 1, 0), S::InvalidQuantity, NONE, 0, 0, &[(0, 0, CAP)]),
            row(0, reserve(1, ALICE, 9, u32::MAX, 0), S::InvalidQuantity, NONE, 0, 0, &[(0, 0, CAP)]),
            row(0, reserve(1, ALICE, 1, max, 0), S::Ok, HELD, 0, TTL_DEFAULT as u64, &[(MAX, 0, CAP - MAX)]),
            row(1, lookup(1, ALICE), S::Ok, HELD, 0, TTL_DEFAULT as u64, &[(MAX, 0, CAP - MAX)]).lookup(max, 0),
            row(2, confirm(1, ALICE, 5), S::Ok, CONFIRMED, 0, 0, &[(0, MAX, CAP - MAX)]),
        ],
    );
}

// ----- time never goes backwards -----------------------------------------------------------------

/// The wall clock steps back (an NTP correction) after the engine saw a later time: every
/// command is applied at the latest time seen, so a closed sale window stays closed, a hold
/// past its deadline stays expired, and new deadlines are counted from the latest time (no
/// hold is shortened). Rows are (at, command, status, state, expires), in ms after `T0`;
/// here `at` goes back.
#[test]
fn a_clock_stepped_back_reopens_no_window_and_shortens_no_hold() {
    // Pool 1 sells until +2,000; pool 2 has no window.
    let mut e = engine(16, &[10, 10]);
    let rules = shardcap::protocol::control::PoolRules { closes_at_ms: T0 + 2_000, ..Default::default() };
    assert!(matches!(e.apply(T0, Command::SetPoolRules { pool: 1, rules }), Outcome::Pool(Ok(_))));
    #[rustfmt::skip]
    let rows = [
        //  at     command                      status     state    expires
        (0,     reserve(1, ALICE, 1, 2, 0),     S::Ok,     HELD,    1_000),
        (2_500, reserve(2, ALICE, 1, 1, 0),     S::Closed, NONE,    0),
        (2_500, reserve(3, BOB, 2, 1, 0),       S::Ok,     HELD,    3_500),
        // The clock steps back 2 s, to +500: still +2,500 for the state machine.
        (500,   reserve(4, ALICE, 1, 1, 0),     S::Closed, NONE,    0),
        (500,   lookup(1, ALICE),               S::Ok,     EXPIRED, 1_000 + RETENTION),
        (500,   reserve(5, BOB, 2, 1, 0),       S::Ok,     HELD,    3_500),
        (500,   extend(3, BOB, 1_000),          S::Ok,     HELD,    3_500),
        (500,   tick(),                         S::Ok,     NONE,    0),
        (500,   lookup(1, ALICE),               S::Ok,     EXPIRED, 1_000 + RETENTION),
        // Wall time catches up and passes the latest time seen: time moves on from there.
        (3_600, lookup(3, BOB),                 S::Ok,     EXPIRED, 3_500 + RETENTION),
    ];
    for (i, &(at, cmd, status, state, expires)) in rows.iter().enumerate() {
        let (got, _) = apply_one(&mut e, T0 + at, cmd);
        assert_eq!(got, Seen { status, state, flags: 0, expires }, "row {i} (at +{at} ms): {cmd:?}");
        e.audit();
    }
    let (held, _, available) = totals(&e, 2)[1];
    assert_eq!((held, available), (2, 8), "holds 3 and 5 of pool 2 were counted, not yet expired by a tick");
}
