//! Finished reservations are kept apart from live holds, within a budget: a long churn on
//! a small budget never refuses a reserve for bookkeeping, forgets the oldest finished
//! records first, always recognises a repeat younger than `retention_min_ms`, and answers
//! `busy` (never forgets a young record) when the budget cannot keep that window. A
//! snapshot carries the finished records in their order.
//!
//! These run the state machine directly with a simulated clock: one reserve and one
//! release (or confirm) every few milliseconds of engine time.

use shardcap::protocol::control::PoolCreate;
use shardcap::protocol::{
    ConfirmOp, LookupOp, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp, Status,
};
use shardcap::shard::{Command, Engine, EngineConfig, Outcome, Reply};

const T0: u64 = 1_700_000_000_000;
const USER: u128 = 0xC0FFEE;
const MIN_MS: u64 = 1_000;

fn engine(holds_max: u32, retained_max: u32) -> Engine {
    let cfg = EngineConfig {
        core: 0,
        cores: 1,
        holds_max,
        parked_max: 16,
        retention_ms: 3_600_000,
        retention_min_ms: MIN_MS,
        retained_max,
        pools_max: 4,
    };
    let mut e = Engine::new(cfg, T0);
    let req = PoolCreate {
        name: "churn".into(),
        capacity: 1 << 40,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 60_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    };
    let def = e.validate_pool_create(&req).expect("valid pool");
    e.apply(T0, Command::CreatePool(def));
    e
}

fn reserve(e: &mut Engine, at: u64, id: u128) -> OpResult {
    let op = ReserveOp { id, user: USER, pool: 1, qty: 1, ttl_ms: 0, priority: 0 };
    match e.apply(at, Command::Reserve(op)) {
        Outcome::Reserve(Reply::Done(r)) => r,
        other => panic!("reserve {id}: {other:?}"),
    }
}

fn release(e: &mut Engine, at: u64, id: u128) -> OpResult {
    match e.apply(at, Command::Release(ReleaseOp { id, user: USER })) {
        Outcome::Op(r) => r,
        other => panic!("release {id}: {other:?}"),
    }
}

fn found(e: &mut Engine, at: u64, id: u128) -> bool {
    match e.apply(at, Command::Lookup(LookupOp { id, user: USER })) {
        Outcome::Lookup(l) => l.status == Status::Ok as u8,
        other => panic!("lookup {id}: {other:?}"),
    }
}

/// Reserves and releases id `i` at `T0 + i * step_ms` for `i` in `ids`; every reserve
/// must succeed.
fn churn(e: &mut Engine, ids: std::ops::Range<u128>, step_ms: u64) {
    for id in ids {
        let at = T0 + id as u64 * step_ms;
        let r = reserve(e, at, id);
        assert_eq!((r.status, r.flags), (Status::Ok as u8, 0), "reserve {id} at +{} ms", at - T0);
        let r = release(e, at, id);
        assert_eq!(r.status, Status::Ok as u8, "release {id}");
        e.check_invariants();
    }
}

#[test]
fn a_long_churn_on_a_small_budget_keeps_selling_and_forgets_the_oldest_first() {
    // 400 places, one reservation finishing every 5 ms: the 1 s minimum needs 200 of them.
    let mut e = engine(100, 400);
    let n = 20_000u128;
    churn(&mut e, 1..n + 1, 5);
    let now = T0 + n as u64 * 5;
    let (kept, oldest) = e.retained();
    // Each reserve made a place for its hold by forgetting the oldest record, and its
    // release took it: the ring is full of the newest records.
    assert_eq!(kept, 400, "the ring is full of the newest records");
    let stats = e.stats();
    assert_eq!(stats.retention_evictions as u128, n - 400, "every older record was forgotten, none twice");
    assert_eq!((stats.retention_forced, stats.retention_busy), (0, 0));
    // Oldest first: exactly the last 400 are there.
    let first_kept = n - 400 + 1;
    assert_eq!(oldest, Some(T0 + first_kept as u64 * 5));
    assert!(found(&mut e, now, first_kept) && found(&mut e, now, n));
    assert!(!found(&mut e, now, first_kept - 1) && !found(&mut e, now, 1));
    // A repeat inside the minimum window is recognised: nothing is taken twice.
    let young = n - 100; // finished 500 ms ago
    let r = reserve(&mut e, now, young);
    assert_eq!((r.status, r.state, r.flags), (Status::Ok as u8, ReservationState::Released as u8, RESULT_FLAG_REPEAT));
    let r = release(&mut e, now, young);
    assert_eq!((r.status, r.flags), (Status::Ok as u8, RESULT_FLAG_REPEAT));
    // One whose record was forgotten (finished 99 s ago, past the window) is a new reserve,
    // as documented.
    let r = reserve(&mut e, now, 1);
    assert_eq!((r.status, r.state, r.flags), (Status::Ok as u8, ReservationState::Held as u8, 0));
    e.audit();
}

#[test]
fn a_budget_too_small_for_the_minimum_window_answers_busy_and_forgets_nothing_young() {
    // 100 places, one reservation finishing every 2 ms: the 1 s minimum would need 500.
    let mut e = engine(50, 100);
    churn(&mut e, 1..101, 2);
    // Reservation 101 would need a place that only a record older than 1 s may give.
    let at = T0 + 101 * 2;
    let r = reserve(&mut e, at, 101);
    assert_eq!(r.status, Status::Busy as u8);
    // The hint: when the oldest record (reservation 1, finished at +2 ms) may go.
    assert_eq!(r.expires_at_ms, T0 + 2 + MIN_MS);
    assert_eq!(e.stats().retention_busy, 1);
    // Nothing was forgotten; a refused reserve leaves no record and can be sent again.
    assert!(found(&mut e, at, 1));
    assert!(!found(&mut e, at, 101));
    let r = reserve(&mut e, r.expires_at_ms - 1, 101);
    assert_eq!(r.status, Status::Busy as u8, "still inside the window");
    let r = reserve(&mut e, T0 + 2 + MIN_MS, 101);
    assert_eq!((r.status, r.flags), (Status::Ok as u8, 0), "the oldest record may go now");
    assert!(!found(&mut e, T0 + 2 + MIN_MS, 1));
    let stats = e.stats();
    assert_eq!((stats.retention_evictions, stats.retention_forced), (1, 0));
}

#[test]
fn live_holds_never_compete_with_finished_records() {
    // The live table is full with 10 holds; 90 finished records beside them change nothing.
    let mut e = engine(10, 200);
    churn(&mut e, 1..91, 1);
    for id in 1000..1010 {
        assert_eq!(reserve(&mut e, T0 + 100, id).status, Status::Ok as u8);
    }
    assert_eq!(reserve(&mut e, T0 + 100, 1010).status, Status::HoldsLimitReached as u8);
    let r = e.apply(T0 + 100, Command::Confirm(ConfirmOp { id: 1000, user: USER, commit_ref: 77 }));
    assert!(matches!(r, Outcome::Op(r) if r.status == Status::Ok as u8));
    assert_eq!(reserve(&mut e, T0 + 100, 1010).status, Status::Ok as u8, "the confirmed hold left its place");
    assert_eq!((e.holds_len(), e.retained().0), (10, 91));
    e.audit();
}

#[test]
fn a_snapshot_keeps_the_finished_records_in_their_order() {
    // 60 places, one reservation finishing every 20 ms: the ring wraps several times.
    let mut e = engine(20, 60);
    churn(&mut e, 1..200, 20);
    for id in 500..505 {
        assert_eq!(reserve(&mut e, T0 + 4_100, id).status, Status::Ok as u8);
    }
    let confirmed = e.apply(T0 + 4_100, Command::Confirm(ConfirmOp { id: 500, user: USER, commit_ref: 9 }));
    assert!(matches!(confirmed, Outcome::Op(r) if r.status == Status::Ok as u8));
    // Take the snapshot one record at a time while the churn goes on and overwrites records
    // the snapshot has not read yet.
    let head = e.snapshot_begin();
    let mut records = Vec::new();
    let mut id = 1000u128;
    while !e.snapshot_chunk(1, &mut records) {
        let at = T0 + 4_200 + (id as u64 - 1000) * 20;
        assert_eq!(reserve(&mut e, at, id).status, Status::Ok as u8);
        release(&mut e, at, id);
        id += 1;
    }
    assert_eq!(records.len() as u64, head.records);
    let mut restored = Engine::restore(&head, &records).expect("restores");
    restored.audit();
    // The restored state forgets in the same order: the oldest kept when the snapshot began.
    let (kept, oldest) = restored.retained();
    assert_eq!(kept as usize, records.iter().filter(|r| r.state != ReservationState::Held as u8).count());
    let first_final = records.iter().find(|r| r.state != ReservationState::Held as u8).expect("finished records");
    assert_eq!(oldest, Some(first_final.when_ms));
    // The confirm and its reference came through.
    match restored.apply(T0 + 5_000, Command::Lookup(LookupOp { id: 500, user: USER })) {
        Outcome::Lookup(l) => {
            assert_eq!((l.status, l.state, l.commit_ref), (Status::Ok as u8, ReservationState::Confirmed as u8, 9))
        }
        other => panic!("{other:?}"),
    }
    // Snapshotting the restored state gives the same records in the same order.
    let head2 = restored.snapshot_begin();
    let mut again = Vec::new();
    while !restored.snapshot_chunk(7, &mut again) {}
    assert_eq!((head2.records, again), (head.records, records));
}

#[test]
fn lower_limits_drop_the_oldest_records_and_count_the_young_ones_as_forced() {
    let mut e = engine(10, 100);
    // 50 records finish at +1 .. +50 ms; at +2,000 ms the first 20 are older than 1 s.
    churn(&mut e, 1..51, 1);
    let mut cfg = *e.config();
    cfg.retained_max = 30;
    e.apply(T0 + 1_040, Command::SetLimits(cfg));
    assert_eq!(e.retained(), (30, Some(T0 + 21)), "the oldest 20 went");
    let stats = e.stats();
    // Records 1..=20 finished at +1..=+20: at +1,040 those up to +40 are past the minimum.
    assert_eq!((stats.retention_evictions, stats.retention_forced), (20, 0));
    cfg.retained_max = 10;
    e.apply(T0 + 1_040, Command::SetLimits(cfg));
    let stats = e.stats();
    // Records 21..=40 are past the minimum at +1,040 (21 + 1,000 <= 1,040); none is young.
    assert_eq!((stats.retention_evictions, stats.retention_forced), (40, 0));
    cfg.retained_max = 5;
    e.apply(T0 + 1_040, Command::SetLimits(cfg));
    // Records 41..=45 finished at +41..=+45: younger than 1 s at +1,040.
    assert_eq!(e.stats().retention_forced, 5);
    assert_eq!(e.retained(), (5, Some(T0 + 46)));
    assert!(found(&mut e, T0 + 1_040, 50) && !found(&mut e, T0 + 1_040, 45));
    e.audit();
}
