//! Snapshots and replay: a core restored from a snapshot and fed the commands applied
//! since the snapshot began must become exactly the live core, and send exactly the same
//! messages and decide exactly the same reserves along the way. This is what recovery
//! relies on: a snapshot plus the log after it stand for the state, and the messages a
//! recovered core sends again must be the ones its peers already numbered.
//!
//! How it works: proptest drives a 2- or 3-core [`Cluster`] (reserves, confirms, releases,
//! extends, clock advances, partial message delivery) and starts a snapshot of one core in
//! the middle. The snapshot is read in small chunks while the cluster keeps running, so
//! copy-on-write is exercised: records change, expire, are purged and are reused after the
//! snapshot began. At the end the core is restored from the snapshot, the journal of the
//! commands it applied since is replayed into it, and its outputs and final state are
//! compared with the live core's.

use proptest::prelude::*;
use shardcap::protocol::control::PoolCreate;
use shardcap::protocol::{ConfirmOp, ExtendOp, ReleaseOp, ReserveOp};
use shardcap::shard::cluster::Cluster;
use shardcap::shard::snapshot::{HoldSnap, SnapshotHead};
use shardcap::shard::{Command, Engine, EngineConfig};

const START_MS: u64 = 5_000_000;

#[derive(Clone, Debug)]
enum Step {
    Reserve { id: u8, user: u8, qty: u8, ttl: u16 },
    Confirm { id: u8, user: u8 },
    Release { id: u8, user: u8 },
    Extend { id: u8, user: u8, ttl: u16 },
    Advance { ms: u16 },
    Deliver { count: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (1..24u8, 1..9u8, 1..6u8, 0..3000u16).prop_map(|(id, user, qty, ttl)| Step::Reserve { id, user, qty, ttl }),
        2 => (1..24u8, 1..9u8).prop_map(|(id, user)| Step::Confirm { id, user }),
        2 => (1..24u8, 1..9u8).prop_map(|(id, user)| Step::Release { id, user }),
        1 => (1..24u8, 1..9u8, 1..3000u16).prop_map(|(id, user, ttl)| Step::Extend { id, user, ttl }),
        2 => (0..1500u16).prop_map(|ms| Step::Advance { ms }),
        3 => (0..8u8).prop_map(|count| Step::Deliver { count }),
    ]
}

fn picker(mut seed: u64) -> impl FnMut(usize) -> usize {
    seed |= 1;
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    }
}

/// Applies one step; `now` moves with `Advance`.
fn run(c: &mut Cluster, now: &mut u64, s: &Step, pick: &mut impl FnMut(usize) -> usize) {
    let id = |n: u8| n as u128 * 7919;
    let user = |n: u8| 100 + n as u128;
    let command = match *s {
        Step::Reserve { id: i, user: u, qty, ttl } => Command::Reserve(ReserveOp {
            id: id(i),
            user: user(u),
            pool: 1 + (i % 2) as u32,
            qty: qty as u32,
            ttl_ms: ttl as u32,
            priority: 0,
        }),
        Step::Confirm { id: i, user: u } => {
            Command::Confirm(ConfirmOp { id: id(i), user: user(u), commit_ref: i as u128 })
        }
        Step::Release { id: i, user: u } => Command::Release(ReleaseOp { id: id(i), user: user(u) }),
        Step::Extend { id: i, user: u, ttl } => {
            Command::Extend(ExtendOp { id: id(i), user: user(u), ttl_ms: ttl as u32 })
        }
        Step::Advance { ms } => {
            *now += ms as u64;
            for core in 0..c.cores() {
                c.apply(*now, core, Command::Tick);
            }
            return;
        }
        Step::Deliver { count } => {
            for _ in 0..count {
                let busy = c.busy_links();
                if busy.is_empty() {
                    return;
                }
                let (from, to) = busy[pick(busy.len())];
                c.deliver(*now, from, to);
            }
            return;
        }
    };
    c.submit(*now, command);
}

/// A core's whole state in a comparable form: its snapshot header and records by id.
fn canonical(e: &mut Engine) -> (SnapshotHead, Vec<HoldSnap>) {
    let head = e.snapshot_begin();
    let mut records = Vec::new();
    while !e.snapshot_chunk(7, &mut records) {}
    records.sort_by_key(|r| r.id);
    (head, records)
}

proptest! {
    #[test]
    fn snapshot_plus_replay_is_the_live_core(
        cores in 2..=3u16,
        capacities in prop::collection::vec(1..30u64, 2),
        before in prop::collection::vec(step(), 0..100),
        after in prop::collection::vec(step(), 0..100),
        chunk in 1..6usize,
        which in 0..3u16,
        seed in any::<u64>(),
    ) {
        let mut pick = picker(seed);
        let template = EngineConfig { core: 0, cores, holds_max: 64, parked_max: 64, retention_ms: 700, retention_min_ms: 0, retained_max: 256, pools_max: 4 };
        let mut c = Cluster::new(cores, template, START_MS);
        for (i, &capacity) in capacities.iter().enumerate() {
            let req = PoolCreate {
                name: format!("p{i}"), capacity, hold_ttl_ms_default: 900, hold_ttl_ms_max: 3000, kind: 0, active: true, rules: Default::default(),
            };
            c.create_pool(&req).unwrap();
        }
        let mut now = START_MS;
        for s in &before {
            run(&mut c, &mut now, s, &mut pick);
        }
        let k = which % cores;
        let begin = c.journals[k as usize].len();
        let head = c.engines[k as usize].snapshot_begin();
        let mut records = Vec::new();
        let mut done = false;
        for s in &after {
            run(&mut c, &mut now, s, &mut pick);
            if !done {
                done = c.engines[k as usize].snapshot_chunk(chunk, &mut records);
            }
        }
        while !done {
            done = c.engines[k as usize].snapshot_chunk(chunk, &mut records);
        }
        prop_assert_eq!(records.len() as u64, head.records);

        let mut restored = Engine::restore(&head, &records).expect("a consistent snapshot");
        for (n, entry) in c.journals[k as usize][begin..].iter().enumerate() {
            restored.apply(entry.now_ms, entry.command.clone());
            let mut sent = Vec::new();
            restored.take_outbox(&mut sent);
            let mut decided = Vec::new();
            restored.take_completions(&mut decided);
            prop_assert_eq!(&sent, &entry.sent, "messages of replayed command {} ({:?})", n, entry.command);
            prop_assert_eq!(&decided, &entry.decided, "decisions of replayed command {}", n);
            restored.check_invariants();
        }
        restored.audit();
        let live = canonical(&mut c.engines[k as usize]);
        let replayed = canonical(&mut restored);
        prop_assert_eq!(live, replayed);
    }
}

/// A snapshot that decodes but breaks an invariant is refused with a reason (recovery
/// reports it as a corrupt file) instead of aborting the server.
#[test]
fn a_snapshot_that_breaks_an_invariant_is_refused_with_a_reason() {
    let template = EngineConfig {
        core: 0,
        cores: 2,
        holds_max: 64,
        parked_max: 64,
        retention_ms: 700,
        retention_min_ms: 0,
        retained_max: 256,
        pools_max: 4,
    };
    let mut c = Cluster::new(2, template, START_MS);
    let req = PoolCreate {
        name: "p".into(),
        capacity: 10,
        hold_ttl_ms_default: 900,
        hold_ttl_ms_max: 3000,
        kind: 0,
        active: true,
        rules: Default::default(),
    };
    c.create_pool(&req).unwrap();
    let (head, records) = canonical(&mut c.engines[0]);
    assert!(Engine::restore(&head, &records).is_ok(), "the untouched snapshot restores");

    let mut held_without_records = head.clone();
    held_without_records.pools[0].held = 2;
    let err = Engine::restore(&held_without_records, &records).err().expect("refused");
    assert!(err.contains("held units of pool 1 (2) disagree with its holds (0)"), "{err}");

    let mut oversold = head.clone();
    oversold.pools[0].confirmed = oversold.pools[0].shard_capacity + 1;
    let err = Engine::restore(&oversold, &records).err().expect("refused");
    assert!(err.contains("oversell on pool 1"), "{err}");

    let mut created = head;
    created.pools[0].shard_capacity += 1;
    let err = Engine::restore(&created, &records).err().expect("refused");
    assert!(err.contains("units created or lost on pool 1"), "{err}");
}
