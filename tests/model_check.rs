//! Property tests of the state machine against the reference model.
//!
//! How it works: proptest generates a cluster of 1 to 4 cores, a few pools and a sequence
//! of operations (reserve, confirm, release, extend, lookup, pool (de)activation, capacity
//! changes and recalls) and clock advances, with users spread over the cores so that shards run dry and borrow.
//!
//! - `sequential_cluster_matches_model`: every operation is settled (all borrowing messages
//!   delivered, in a seeded random order across core pairs) before the next one; the
//!   cluster must then answer exactly what the model answers, including `sold_out` only
//!   when the whole pool is short. Invariants and capacity conservation (units in flight
//!   included) are checked after every message.
//! - `concurrent_cluster_keeps_invariants`: operations interleave with partial message
//!   delivery; every step keeps the invariants, and once the network is quiet the pool's
//!   whole free capacity can be taken by one reserve on any core (nothing is stranded).
//!
//! A failure prints the minimal sequence; `PROPTEST_CASES` raises the case count.

use proptest::prelude::*;
use shardcap::protocol::control::PoolCreate;
use shardcap::protocol::{ConfirmOp, ExtendOp, LookupOp, OpResult, ReleaseOp, ReserveOp, Status};
use shardcap::shard::cluster::Cluster;
use shardcap::shard::model::Model;
use shardcap::shard::{Command, EngineConfig, Outcome, Reply};

const START_MS: u64 = 1_000_000;
const RETENTION_MS: u64 = 2_000;
const TTL_DEFAULT_MS: u32 = 1_000;
const TTL_MAX_MS: u32 = 5_000;

#[derive(Clone, Debug)]
enum Step {
    Reserve { id: u8, user: u8, pool: u8, qty: u8, ttl: u8 },
    Confirm { id: u8, user: u8, commit: u8 },
    Release { id: u8, user: u8 },
    Extend { id: u8, user: u8, ttl: u8 },
    Lookup { id: u8, user: u8 },
    SetActive { pool: u8, active: bool },
    Resize { pool: u8, capacity: u8 },
    Recall { pool: u8 },
    Advance { ms: u16 },
    Deliver { count: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..14u8, 0..7u8, 1..4u8, 0..6u8, 0..6u8).prop_map(|(id, user, pool, qty, ttl)| Step::Reserve { id, user, pool, qty, ttl }),
        2 => (1..14u8, 1..7u8, 0..3u8).prop_map(|(id, user, commit)| Step::Confirm { id, user, commit }),
        2 => (1..14u8, 1..7u8).prop_map(|(id, user)| Step::Release { id, user }),
        1 => (1..14u8, 1..7u8, 0..6u8).prop_map(|(id, user, ttl)| Step::Extend { id, user, ttl }),
        1 => (0..14u8, 0..7u8).prop_map(|(id, user)| Step::Lookup { id, user }),
        1 => (1..4u8, any::<bool>()).prop_map(|(pool, active)| Step::SetActive { pool, active }),
        1 => (1..4u8, 0..50u8).prop_map(|(pool, capacity)| Step::Resize { pool, capacity }),
        1 => (1..4u8).prop_map(|pool| Step::Recall { pool }),
        2 => (0..2500u16).prop_map(|ms| Step::Advance { ms }),
        3 => (0..6u8).prop_map(|count| Step::Deliver { count }),
    ]
}

fn id(n: u8) -> u128 {
    if n == 0 { 0 } else { (n as u128) * 0x1_0000_0000_0000_0001 }
}
fn user(n: u8) -> u128 {
    if n == 0 { 0 } else { 1000 + n as u128 }
}
fn ttl(n: u8) -> u32 {
    [0, 40, 400, 1_500, TTL_MAX_MS, TTL_MAX_MS + 1][n as usize]
}

fn config() -> EngineConfig {
    EngineConfig {
        core: 0,
        cores: 1,
        holds_max: 10_000,
        parked_max: 10_000,
        retention_ms: RETENTION_MS,
        retention_min_ms: 0,
        retained_max: 40000,
        pools_max: 16,
    }
}

fn pool_request(n: usize, capacity: u64) -> PoolCreate {
    PoolCreate {
        name: format!("pool-{n}"),
        capacity,
        hold_ttl_ms_default: TTL_DEFAULT_MS,
        hold_ttl_ms_max: TTL_MAX_MS,
        kind: 0,
        active: true,
        rules: Default::default(),
    }
}

/// A xorshift generator for delivery order, seeded by proptest.
fn picker(mut seed: u64) -> impl FnMut(usize) -> usize {
    seed |= 1;
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    }
}

/// Applies a client step to the cluster, returning its result once settled.
fn run_settled(cluster: &mut Cluster, now: u64, command: Command, pick: &mut impl FnMut(usize) -> usize) -> Outcome {
    let core = shardcap::shard::cluster::route(&command, cluster.cores());
    let outcome = cluster.apply(now, core, command);
    cluster.settle(now, &mut *pick);
    match outcome {
        Outcome::Reserve(reply) => {
            Outcome::Op(cluster.reserve_result(core, reply).expect("a settled reserve has an answer"))
        }
        other => other,
    }
}

fn same(engine: &OpResult, model: &OpResult) -> bool {
    (engine.status, engine.state, engine.flags, engine.expires_at_ms)
        == (model.status, model.state, model.flags, model.expires_at_ms)
}

proptest! {
    #[test]
    fn sequential_cluster_matches_model(
        cores in 1..=4u16,
        capacities in prop::collection::vec(1..40u64, 3),
        steps in prop::collection::vec(step(), 1..120),
        seed in any::<u64>(),
    ) {
        let mut pick = picker(seed);
        let mut cluster = Cluster::new(cores, config(), START_MS);
        let mut model = Model::new(cores, RETENTION_MS);
        for (i, &cap) in capacities.iter().enumerate() {
            let req = pool_request(i, cap);
            cluster.create_pool(&req).unwrap();
            model.create_pool(&req);
        }
        let mut now = START_MS;
        for (n, s) in steps.iter().enumerate() {
            match *s {
                Step::Reserve { id: i, user: u, pool, qty, ttl: t } => {
                    let op = ReserveOp { id: id(i), user: user(u), pool: pool as u32, qty: qty as u32, ttl_ms: ttl(t), priority: 0 };
                    let expected = model.reserve(now, &op);
                    let Outcome::Op(got) = run_settled(&mut cluster, now, Command::Reserve(op), &mut pick) else { unreachable!() };
                    prop_assert!(same(&got, &expected), "step {n} {s:?}: cluster {got:?} model {expected:?}");
                }
                Step::Confirm { id: i, user: u, commit } => {
                    let op = ConfirmOp { id: id(i), user: user(u), commit_ref: commit as u128 };
                    let expected = model.confirm(now, &op);
                    let Outcome::Op(got) = run_settled(&mut cluster, now, Command::Confirm(op), &mut pick) else { unreachable!() };
                    prop_assert!(same(&got, &expected), "step {n} {s:?}: cluster {got:?} model {expected:?}");
                }
                Step::Release { id: i, user: u } => {
                    let op = ReleaseOp { id: id(i), user: user(u) };
                    let expected = model.release(now, &op);
                    let Outcome::Op(got) = run_settled(&mut cluster, now, Command::Release(op), &mut pick) else { unreachable!() };
                    prop_assert!(same(&got, &expected), "step {n} {s:?}: cluster {got:?} model {expected:?}");
                }
                Step::Extend { id: i, user: u, ttl: t } => {
                    let op = ExtendOp { id: id(i), user: user(u), ttl_ms: ttl(t) };
                    let expected = model.extend(now, &op);
                    let Outcome::Op(got) = run_settled(&mut cluster, now, Command::Extend(op), &mut pick) else { unreachable!() };
                    prop_assert!(same(&got, &expected), "step {n} {s:?}: cluster {got:?} model {expected:?}");
                }
                Step::Lookup { id: i, user: u } => {
                    let op = LookupOp { id: id(i), user: user(u) };
                    let expected = model.lookup(now, &op);
                    let got = cluster.lookup(now, op);
                    cluster.settle(now, &mut pick);
                    prop_assert_eq!(got, expected, "step {} {:?}", n, s);
                }
                Step::SetActive { pool, active } => {
                    for core in 0..cores {
                        cluster.apply(now, core, Command::SetPoolActive { pool: pool as u32, active });
                    }
                    model.set_active(pool as u32, active);
                }
                Step::Resize { pool, capacity } => {
                    let got = cluster.resize_pool(now, pool as u32, capacity as u64, &mut pick).map(|info| info.capacity);
                    let expected = model.resize(pool as u32, capacity as u64).map(|()| capacity as u64);
                    prop_assert_eq!(got, expected, "step {} {:?}", n, s);
                }
                Step::Recall { pool } => {
                    let home = cluster.engines[0].pool_info(pool as u32).unwrap().home_core;
                    cluster.apply(now, home, Command::RecallPool { pool: pool as u32 });
                    cluster.settle(now, &mut pick);
                }
                Step::Advance { ms } => {
                    now += ms as u64;
                    for core in 0..cores {
                        cluster.apply(now, core, Command::Tick);
                    }
                    cluster.settle(now, &mut pick);
                    model.advance(now);
                }
                Step::Deliver { .. } => {}
            }
            cluster.check();
            for pool in 1..=3u32 {
                let (held, confirmed, available) = cluster.totals(pool);
                prop_assert_eq!((held, confirmed, available), model.totals(pool), "totals of pool {} after step {} {:?}", pool, n, s);
            }
        }
        for e in &cluster.engines {
            e.audit();
        }
    }

    #[test]
    fn concurrent_cluster_keeps_invariants(
        cores in 2..=4u16,
        capacities in prop::collection::vec(1..40u64, 3),
        steps in prop::collection::vec(step(), 1..160),
        seed in any::<u64>(),
    ) {
        let mut pick = picker(seed);
        let mut cluster = Cluster::new(cores, config(), START_MS);
        for (i, &cap) in capacities.iter().enumerate() {
            cluster.create_pool(&pool_request(i, cap)).unwrap();
        }
        let mut now = START_MS;
        let mut parked = 0usize;
        for s in &steps {
            let command = match *s {
                Step::Reserve { id: i, user: u, pool, qty, ttl: t } => Some(Command::Reserve(ReserveOp {
                    id: id(i), user: user(u), pool: pool as u32, qty: qty as u32, ttl_ms: ttl(t), priority: 0,
                })),
                Step::Confirm { id: i, user: u, commit } => Some(Command::Confirm(ConfirmOp { id: id(i), user: user(u), commit_ref: commit as u128 })),
                Step::Release { id: i, user: u } => Some(Command::Release(ReleaseOp { id: id(i), user: user(u) })),
                Step::Extend { id: i, user: u, ttl: t } => Some(Command::Extend(ExtendOp { id: id(i), user: user(u), ttl_ms: ttl(t) })),
                Step::Lookup { id: i, user: u } => Some(Command::Lookup(LookupOp { id: id(i), user: user(u) })),
                Step::SetActive { .. } => None,
                Step::Resize { pool, capacity } => {
                    // Decided by the home core at once (no recall: the network is not
                    // settled here), then recorded everywhere.
                    let (pool, capacity) = (pool as u32, capacity as u64);
                    let home = cluster.engines[0].pool_info(pool).unwrap().home_core;
                    if let Outcome::Pool(Ok(_)) = cluster.apply(now, home, Command::ResizePool { pool, capacity }) {
                        for core in (0..cores).filter(|&c| c != home) {
                            cluster.apply(now, core, Command::ResizePool { pool, capacity });
                        }
                    }
                    None
                }
                Step::Recall { pool } => {
                    let home = cluster.engines[0].pool_info(pool as u32).unwrap().home_core;
                    cluster.apply(now, home, Command::RecallPool { pool: pool as u32 });
                    None
                }
                Step::Advance { ms } => {
                    now += ms as u64;
                    for core in 0..cores {
                        cluster.apply(now, core, Command::Tick);
                    }
                    None
                }
                Step::Deliver { count } => {
                    for _ in 0..count {
                        let busy = cluster.busy_links();
                        if busy.is_empty() { break; }
                        let (from, to) = busy[pick(busy.len())];
                        cluster.deliver(now, from, to);
                        cluster.check();
                    }
                    None
                }
            };
            if let Some(command) = command {
                if let Outcome::Reserve(Reply::Parked(_)) = cluster.submit(now, command) {
                    parked += 1;
                }
            }
            cluster.check();
        }
        cluster.settle(now, &mut pick);
        prop_assert_eq!(cluster.completions.len(), parked, "every parked reserve is answered once");
        for e in &cluster.engines {
            e.audit();
        }
        // Nothing is stranded: the pool's whole free capacity goes to one reserve, from any core.
        for pool in 1..=3u32 {
            let (_, _, available) = cluster.totals(pool);
            if available == 0 { continue; }
            cluster.apply(now, 0, Command::SetPoolActive { pool, active: true });
            for core in 1..cores {
                cluster.apply(now, core, Command::SetPoolActive { pool, active: true });
            }
            let u = 2000 + pick(1000) as u128;
            let op = ReserveOp { id: 0xABCD_0000 + pool as u128, user: u, pool, qty: available as u32, ttl_ms: 0, priority: 0 };
            let result = run_settled(&mut cluster, now, Command::Reserve(op), &mut pick);
            prop_assert!(matches!(result, Outcome::Op(r) if r.status == Status::Ok as u8), "pool {pool}: {available} free but {result:?}");
            prop_assert_eq!(cluster.totals(pool).2, 0);
        }
    }
}
