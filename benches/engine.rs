//! Microbenchmarks of the state machine: what one `Engine::apply` costs on one core, with no
//! I/O, no routing and no network in the way.
//!
//! How to run:
//!
//! - `cargo bench --bench engine [filter]`: full mode, optimized. Each case (or only those
//!   whose name contains `filter`) runs one discarded warm-up sample, then fresh samples
//!   until about 2 s have been measured (at least 3), and prints the median sample as
//!   `case  ns/op  Mops/s  iterations` (iterations: all measured samples together).
//! - `cargo test --benches` (CI): tiny mode. Every case runs once with 2048 iterations in
//!   the unoptimized test build, and its assertions still hold. The numbers printed then are
//!   not measurements; the point is that the benchmark cannot rot.
//!
//! How it works: a sample builds its own state (a fresh 1-core `Engine`, or a 2-core
//! `Cluster`) and fills it as the case needs, all outside the timed region; then it times
//! `n` iterations with `Instant`, and afterwards checks every outcome it counted and the
//! totals of the shard (held, confirmed, available, records, expirations, messages). The
//! outcome checks inside the loop are one compare each and are part of the time. Ids and
//! users are unique 128-bit values spread by an odd multiplier, as random ids would be.
//!
//! Memory: an engine is sized for its sample (`holds_max` = iterations + 16). A full-mode
//! sample of the large cases has 2^20 iterations: about 52 MiB of records plus 10 MiB of
//! index per engine, and up to 66 MiB more for the engine's map of commit references after
//! the warm-up below; more than the caches hold, so most operations on a random id wait for
//! memory. The 2-core cases allocate two engines. The `_small` cases use 2^16 records
//! (4 MiB) and show the cost when the table is in cache.
//!
//! Before a timed region that inserts records, the sample warms the engine up: it fills the
//! table with confirmed holds of a second pool and lets them be purged, so the slab's pages
//! are touched, its slots come from the free list and the map of commit references has
//! grown, as on a server that has been running for a while. `reserve_cold` skips that step:
//! the first fill of a fresh slab, page faults included.
//!
//! The cases (one iteration is what the name says):
//!
//! - `reserve`, `reserve_small`: hold 1 unit of a pool of exactly `n` units; all `n` are
//!   held, the next is `sold_out`. `reserve_cold`: the same into a slab never used before.
//! - `reserve_rules`: `reserve` into a pool with every rule on (a sale window, a maximum
//!   quantity, a rate and a limit per user, none of which refuses): the cost of the rules
//!   and of the per-user entry each reserve creates. Compare with `reserve`.
//! - `reserve_confirm`, `reserve_release`: a reserve and, at once, the confirm (with a
//!   commit reference) or the release of the same hold; one iteration is both operations.
//!   `reserve_confirm_noref` confirms without a commit reference.
//! - `reserve_repeat`: the idempotent repeat of a held reservation (`ok`, flag `repeat`),
//!   visiting the `n` records in a scattered order.
//! - `sold_out`: a reserve refused because the pool is empty (the 1-core pool is drained,
//!   so the refusal is decided without a recall).
//! - `lookup`, `lookup_small`: a lookup of a held reservation, in a scattered order.
//! - `expire`: `n` holds whose deadlines are spread over 10 s expire while `Command::Tick`
//!   advances the clock 1 ms at a time; the cost is per expired hold, ticks included.
//! - `cluster_borrow`: 2 cores, every reserve on the core that is not the pool's home, which
//!   runs dry after half the pool and borrows (aggregate borrows, each granting half of what
//!   the home core has left); a parked reserve is settled by delivering every message before
//!   the next reserve. Per reserve, borrowing messages included.
//! - `cluster_exact`: 2 cores, the pool drained (every free unit at the home core), so each
//!   reserve on the other core parks, borrows exactly 1 unit and is granted: two messages
//!   and a park per reserve, the slowest path a successful reserve takes.
//!
//! The cluster cases apply reserves on core 0 directly (no user hash) and deliver messages
//! with `Cluster::deliver`, without the invariant check that `Cluster::settle` runs after
//! each message; the checks run once after the timed region.

mod support;

use std::hint::black_box;

use std::time::{Duration, Instant};
use support::{Bench, Sizes};

use shardcap::protocol::control::{PoolCreate, PoolKind, PoolRules, SHARD_FLAG_DRAINED, ShardStatus};
use shardcap::protocol::{
    ConfirmOp, LookupOp, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp, Status, home_core,
};
use shardcap::shard::cluster::Cluster;
use shardcap::shard::{Command, Engine, EngineConfig, Outcome, Reply};

fn main() {
    let mut b = Bench::from_args("engine");
    // 2^20 records (62 MiB) do not fit in the caches; 2^16 (4 MiB) do.
    let large = Sizes { tiny: 2048, full: 1 << 20 };
    let small = Sizes { tiny: 2048, full: 1 << 16 };
    b.case("reserve", large, reserve);
    b.case("reserve_small", small, reserve);
    b.case("reserve_cold", large, reserve_cold);
    b.case("reserve_rules", large, reserve_rules);
    b.case("reserve_confirm", large, |n| reserve_confirm(n, true));
    b.case("reserve_confirm_noref", large, |n| reserve_confirm(n, false));
    b.case("reserve_release", large, reserve_release);
    b.case("reserve_repeat", large, reserve_repeat);
    b.case("sold_out", large, sold_out);
    b.case("lookup", large, lookup);
    b.case("lookup_small", small, lookup);
    b.case("expire", large, expire);
    let mut users = UsersOnCore0::default();
    b.case("cluster_borrow", large, |n| cluster_borrow(n, &mut users));
    b.case("cluster_exact", large, |n| cluster_exact(n, &mut users));
    b.finish();
}

// ----- cases: each builds its state, times `n` iterations, checks, returns the time ------------

fn reserve(n: u64) -> Duration {
    let (mut e, now) = warm_engine(n, n);
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        ok += is_ok(op_result(e.apply(now, Command::Reserve(black_box(reserve_op(i, 1, 0))))));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, n, "every reserve is held until capacity");
    let s = shard(&e);
    assert_eq!((s.held, s.available(), e.holds_len() as u64), (n, 0, n));
    let refused = op_result(e.apply(now, Command::Reserve(reserve_op(n, 1, 0))));
    assert_eq!(refused.status, Status::SoldOut as u8, "the pool is full");
    elapsed
}

fn reserve_rules(n: u64) -> Duration {
    let (mut e, now) = warm_engine(n, n);
    let rules = PoolRules {
        max_per_user: 1_000,
        opens_at_ms: T0,
        closes_at_ms: u64::MAX,
        rate_per_s: 1_000,
        burst: 1_000,
        max_qty: 10,
        flags: 0,
        kept_permille: 0,
        priority_min: 0,
    };
    let Outcome::Pool(Ok(_)) = e.apply(now, Command::SetPoolRules { pool: POOL, rules }) else { panic!("rules set") };
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        ok += is_ok(op_result(e.apply(now, Command::Reserve(black_box(reserve_op(i, 1, 0))))));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, n, "no rule refuses");
    assert_eq!(e.user_state(POOL, user(n - 1)).map(|u| u.held), Some(1), "each user's unit is counted");
    elapsed
}

fn reserve_cold(n: u64) -> Duration {
    let mut e = engine(n, n);
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        ok += is_ok(op_result(e.apply(T0, Command::Reserve(black_box(reserve_op(i, 1, 0))))));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, n, "every reserve is held until capacity");
    assert_eq!((shard(&e).held, e.holds_len() as u64), (n, n));
    elapsed
}

fn reserve_confirm(n: u64, with_ref: bool) -> Duration {
    let (mut e, now) = warm_engine(n, n);
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        ok += is_ok(op_result(e.apply(now, Command::Reserve(black_box(reserve_op(i, 1, 0))))));
        let commit_ref = if with_ref { id(i) ^ 0xC0FFEE } else { 0 };
        let confirm = ConfirmOp { id: id(i), user: user(i), commit_ref };
        ok += is_ok(op_result(e.apply(now, Command::Confirm(black_box(confirm)))));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, 2 * n, "every reserve and every confirm answered ok");
    let s = shard(&e);
    assert_eq!((s.held, s.confirmed, s.available()), (0, n, 0));
    let last = LookupOp { id: id(n - 1), user: user(n - 1) };
    let Outcome::Lookup(r) = e.apply(now, Command::Lookup(last)) else { panic!("a lookup answers a lookup result") };
    assert_eq!(r.commit_ref, if with_ref { id(n - 1) ^ 0xC0FFEE } else { 0 }, "the commit reference is kept");
    elapsed
}

fn reserve_release(n: u64) -> Duration {
    let (mut e, now) = warm_engine(n, n);
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        ok += is_ok(op_result(e.apply(now, Command::Reserve(black_box(reserve_op(i, 1, 0))))));
        let release = ReleaseOp { id: id(i), user: user(i) };
        ok += is_ok(op_result(e.apply(now, Command::Release(black_box(release)))));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, 2 * n, "every reserve and every release answered ok");
    let s = shard(&e);
    assert_eq!((s.held, s.confirmed, s.available()), (0, 0, n));
    assert_eq!((e.holds_len(), e.retained().0 as u64), (0, n), "released records are kept for retention");
    elapsed
}

fn reserve_repeat(n: u64) -> Duration {
    let mut e = engine(n, n);
    fill(&mut e, T0, n);
    let start = Instant::now();
    let mut repeats = 0;
    for i in 0..n {
        let r = op_result(e.apply(T0, Command::Reserve(black_box(reserve_op(scatter(i, n), 1, 0)))));
        repeats += u64::from(r.status == Status::Ok as u8 && r.flags == RESULT_FLAG_REPEAT);
    }
    let elapsed = start.elapsed();
    assert_eq!(repeats, n, "every repeat answered ok with the repeat flag");
    assert_eq!((shard(&e).held, e.holds_len() as u64), (n, n), "repeats change nothing");
    elapsed
}

fn sold_out(n: u64) -> Duration {
    let mut e = engine(1, 1);
    fill(&mut e, T0, 1);
    // The first refusal recalls (at once, on one core) and leaves the pool drained.
    let first = op_result(e.apply(T0, Command::Reserve(reserve_op(1, 1, 0))));
    assert_eq!(first.status, Status::SoldOut as u8);
    let start = Instant::now();
    let mut refused = 0;
    for i in 0..n {
        let r = op_result(e.apply(T0, Command::Reserve(black_box(reserve_op(i + 2, 1, 0)))));
        refused += u64::from(r.status == Status::SoldOut as u8);
    }
    let elapsed = start.elapsed();
    assert_eq!(refused, n, "every reserve refused sold_out");
    assert_eq!((shard(&e).held, e.holds_len()), (1, 1), "a refusal leaves no record");
    elapsed
}

fn lookup(n: u64) -> Duration {
    let mut e = engine(n, n);
    fill(&mut e, T0, n);
    let start = Instant::now();
    let mut found = 0;
    for i in 0..n {
        let j = scatter(i, n);
        let op = LookupOp { id: id(j), user: user(j) };
        let Outcome::Lookup(r) = e.apply(T0, Command::Lookup(black_box(op))) else {
            panic!("a lookup answers a lookup result")
        };
        found += u64::from(r.status == Status::Ok as u8 && r.state == ReservationState::Held as u8 && r.qty == 1);
    }
    let elapsed = start.elapsed();
    assert_eq!(found, n, "every lookup found its hold");
    elapsed
}

fn expire(n: u64) -> Duration {
    let mut e = engine(n, n);
    for i in 0..n {
        let ttl = 1 + (i % EXPIRY_SPREAD_MS) as u32;
        assert_eq!(is_ok(op_result(e.apply(T0, Command::Reserve(reserve_op(i, 1, ttl))))), 1);
    }
    let start = Instant::now();
    for t in 1..=EXPIRY_SPREAD_MS {
        black_box(e.apply(T0 + t, Command::Tick));
    }
    let elapsed = start.elapsed();
    assert_eq!(e.stats().expirations, n, "every hold expired");
    let s = shard(&e);
    assert_eq!((s.held, s.available()), (0, n), "every unit is back");
    assert_eq!((e.holds_len(), e.retained().0 as u64), (0, n), "expired records are kept for retention");
    elapsed
}

fn cluster_borrow(n: u64, users: &mut UsersOnCore0) -> Duration {
    let users = users.first(n as usize);
    let (mut c, now) = warm_cluster(n, n);
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        let op = ReserveOp { user: users[i as usize], ..reserve_op(i, 1, 0) };
        ok += is_ok(reserve_on(&mut c, now, 0, black_box(op)));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, n, "every reserve is held, half of them with borrowed units");
    c.check();
    assert_eq!(c.totals(POOL), (n, 0, 0));
    assert!(borrow_messages(&c) <= 4 * 64, "borrowing takes a logarithmic number of messages");
    elapsed
}

fn cluster_exact(n: u64, users: &mut UsersOnCore0) -> Duration {
    let users = users.first(n as usize + 2);
    let capacity = 8 * n + 8;
    let (mut c, now) = warm_cluster(capacity, n);
    // Core 1 (the home core) holds its whole share, core 0 all of its share but `n`; a
    // reserve of `n + 1` on core 0 then recalls, is refused, and leaves the pool drained
    // with its last `n` free units at the home core: an eighth of the pool minus one, too
    // few to go back to normal borrowing.
    let user_1 = (1u128..).find(|&u| home_core(u, 2) == 1).expect("a user on core 1");
    let share = u32::try_from(capacity / 2).expect("fits a reserve");
    let setup = |k: u64, user: u128, qty: u32| ReserveOp { user, ..reserve_op(SETUP_IDS + k, qty, 0) };
    assert_eq!(reserve_on(&mut c, now, 1, setup(0, user_1, share)).status, Status::Ok as u8);
    let qty = share - n as u32;
    assert_eq!(reserve_on(&mut c, now, 0, setup(1, users[n as usize], qty)).status, Status::Ok as u8);
    let refusal = reserve_on(&mut c, now, 0, setup(2, users[n as usize + 1], n as u32 + 1));
    assert_eq!(refusal.status, Status::SoldOut as u8);
    let home = c.engines[1].shard_snapshot(POOL).expect("pool");
    assert_eq!((home.flags & SHARD_FLAG_DRAINED, home.available()), (SHARD_FLAG_DRAINED, n));
    let messages_before = borrow_messages(&c);

    let start = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        let op = ReserveOp { user: users[i as usize], ..reserve_op(i, 1, 0) };
        ok += is_ok(reserve_on(&mut c, now, 0, black_box(op)));
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, n, "every reserve is held with a unit borrowed for it");
    c.check();
    assert_eq!(c.totals(POOL), (capacity, 0, 0));
    assert_eq!(borrow_messages(&c) - messages_before, 2 * n, "one borrow and one grant per reserve");
    elapsed
}

// ----- state ------------------------------------------------------------------------------

/// The engines' clock at the start of every sample (ms since the epoch).
const T0: u64 = 1_700_000_000_000;
/// The pool's default hold TTL: nothing expires during a case unless it asks for it.
const TTL_DEFAULT_MS: u32 = 600_000;
/// How long final records are kept.
const RETENTION_MS: u64 = 60_000;
/// The pool every case measures (the warm-up fills a second one).
const POOL: u32 = 1;
/// The `expire` case spreads deadlines over this many ms.
const EXPIRY_SPREAD_MS: u64 = 10_000;
/// Ids of setup reserves start here, far from the iterations' ids.
const SETUP_IDS: u64 = 1 << 40;

/// A reservation id: unique per `i`, never 0, bits spread as a random id's would be.
fn id(i: u64) -> u128 {
    (i as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
}

/// A user id: unique per `i`, never 0.
fn user(i: u64) -> u128 {
    (i as u128 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93_2545_F491_4F6C_DD1D)
}

/// Visits `0..n` in a scattered order (`n` a power of two).
fn scatter(i: u64, n: u64) -> u64 {
    debug_assert!(n.is_power_of_two());
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) & (n - 1)
}

fn reserve_op(i: u64, qty: u32, ttl_ms: u32) -> ReserveOp {
    ReserveOp { id: id(i), user: user(i), pool: POOL, qty, ttl_ms, priority: 0 }
}

fn pool_request(name: &str, capacity: u64) -> PoolCreate {
    PoolCreate {
        name: name.to_string(),
        capacity,
        hold_ttl_ms_default: TTL_DEFAULT_MS,
        hold_ttl_ms_max: TTL_DEFAULT_MS,
        kind: PoolKind::Counted as u8,
        active: true,
        rules: Default::default(),
    }
}

fn config(cores: u16, holds_max: u64) -> EngineConfig {
    let holds_max = u32::try_from(holds_max + 16).expect("holds_max fits u32");
    EngineConfig {
        core: 0,
        cores,
        holds_max,
        parked_max: 1024,
        retention_ms: RETENTION_MS,
        retention_min_ms: 0,
        retained_max: holds_max * 4,
        pools_max: 4,
    }
}

/// A 1-core engine with room for `holds` records and one pool of `capacity` units.
fn engine(capacity: u64, holds: u64) -> Engine {
    let mut e = Engine::new(config(1, holds), T0);
    let def = e.validate_pool_create(&pool_request("bench", capacity)).expect("valid pool");
    let Outcome::Pool(Ok(info)) = e.apply(T0, Command::CreatePool(def)) else { panic!("pool created") };
    assert_eq!(info.id, POOL);
    e
}

/// A 2-core cluster with room for `holds` records per core and one pool of `capacity`
/// units whose home is core 1.
fn cluster(capacity: u64, holds: u64) -> Cluster {
    let mut c = Cluster::new(2, config(2, holds), T0);
    let info = c.create_pool(&pool_request("bench", capacity)).expect("valid pool");
    assert_eq!((info.id, info.home_core), (POOL, 1));
    c
}

/// Holds `n` units, one per reservation `0..n`, at `now` (the pool must have them).
fn fill(e: &mut Engine, now: u64, n: u64) {
    for i in 0..n {
        let r = op_result(e.apply(now, Command::Reserve(reserve_op(i, 1, 0))));
        assert_eq!(r.status, Status::Ok as u8, "setup reserve {i}");
    }
}

/// Fills the table with `n` records and lets them be purged, as on a server that has been
/// running for a while: the slab's pages are touched, its slots are on the free list, and
/// the map of commit references has grown. The records are holds of pool `pool` (which
/// must have `n` free units on this core), confirmed with a commit reference; the case's
/// pool is left alone. Returns the time after the purge.
fn warm(e: &mut Engine, pool: u32, n: u64) -> u64 {
    for i in 0..n {
        let op = ReserveOp { pool, ..reserve_op(SETUP_IDS + i, 1, 1) };
        assert_eq!(op_result(e.apply(T0, Command::Reserve(op))).status, Status::Ok as u8, "warm-up reserve {i}");
        let confirm = ConfirmOp { id: op.id, user: op.user, commit_ref: op.id };
        assert_eq!(op_result(e.apply(T0, Command::Confirm(confirm))).status, Status::Ok as u8, "warm-up confirm {i}");
    }
    let now = T0 + RETENTION_MS;
    e.apply(now, Command::Tick);
    assert_eq!((e.holds_len(), e.retained().0, shard(e).held), (0, 0, 0), "warm-up records purged");
    assert!(!e.has_output(), "the warm-up pool's units were all on this core");
    now
}

/// A 1-core engine as [`engine`] makes it, warmed up; returns it with the time after.
fn warm_engine(capacity: u64, holds: u64) -> (Engine, u64) {
    let mut e = engine(capacity, holds);
    let def = e.validate_pool_create(&pool_request("warm-up", holds)).expect("valid pool");
    let Outcome::Pool(Ok(info)) = e.apply(T0, Command::CreatePool(def)) else { panic!("pool created") };
    let now = warm(&mut e, info.id, holds);
    (e, now)
}

/// A 2-core cluster as [`cluster`] makes it, with core 0 warmed up; returns it with the time
/// after.
fn warm_cluster(capacity: u64, holds: u64) -> (Cluster, u64) {
    let mut c = cluster(capacity, holds);
    let info = c.create_pool(&pool_request("warm-up", 2 * holds)).expect("valid pool");
    let now = warm(&mut c.engines[0], info.id, holds);
    c.engines[1].apply(now, Command::Tick);
    (c, now)
}

/// Distinct users whose home is core 0 of 2, found once and kept across samples.
#[derive(Default)]
struct UsersOnCore0 {
    list: Vec<u128>,
    next: u64,
}

impl UsersOnCore0 {
    /// The first `n` of them.
    fn first(&mut self, n: usize) -> &[u128] {
        while self.list.len() < n {
            let u = user(self.next);
            if home_core(u, 2) == 0 {
                self.list.push(u);
            }
            self.next += 1;
        }
        &self.list[..n]
    }
}

fn borrow_messages(c: &Cluster) -> u64 {
    c.engines.iter().map(|e| e.stats().borrow_messages).sum()
}

fn shard(e: &Engine) -> ShardStatus {
    e.shard_snapshot(POOL).expect("pool exists")
}

/// The result of a reserve, confirm or release.
fn op_result(outcome: Outcome) -> OpResult {
    match outcome {
        Outcome::Reserve(Reply::Done(r)) | Outcome::Op(r) => r,
        other => panic!("expected a decided result, got {other:?}"),
    }
}

fn is_ok(r: OpResult) -> u64 {
    u64::from(r.status == Status::Ok as u8)
}

/// Reserves on `core` and, if the reserve parks, delivers every message (alternating the
/// two links, each in order) until the cluster is quiet; returns the reserve's result.
fn reserve_on(c: &mut Cluster, now: u64, core: u16, op: ReserveOp) -> OpResult {
    match c.apply(now, core, Command::Reserve(op)) {
        Outcome::Reserve(Reply::Done(r)) => r,
        Outcome::Reserve(Reply::Parked(ticket)) => {
            while c.deliver(now, 0, 1) | c.deliver(now, 1, 0) {}
            let (by, done) = c.completions.pop().expect("the parked reserve was decided");
            assert_eq!((by, done.ticket), (core, ticket));
            assert!(c.completions.is_empty());
            done.result
        }
        other => panic!("a reserve answers a reply, got {other:?}"),
    }
}
