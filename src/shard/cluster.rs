//! A deterministic simulation of a whole server's state: one [`Engine`] per core and an
//! in-memory network between them that delivers each core pair's messages in order (as the
//! runtime's channel mesh does) while the order across pairs is chosen by the caller, for
//! example from a seed. Tests drive it to check the borrowing protocol step by step:
//! conservation of units in flight, no oversell, and no phantom sold-out.

use std::collections::VecDeque;

use super::engine::{Command, Completion, Engine, EngineConfig, Envelope, Outcome, PeerMsg, Reply};
use crate::protocol::control::{PoolCreate, PoolInfo, ShardStatus};
use crate::protocol::{LookupOp, LookupResult, Status, home_core};

/// Several engines and the messages between them.
pub struct Cluster {
    /// The cores' state machines, by core index.
    pub engines: Vec<Engine>,
    /// `links[from * n + to]`: messages sent and not yet delivered, oldest first.
    links: Vec<VecDeque<(u64, PeerMsg)>>,
    /// Results of parked reserves, with the core that decided them, in delivery order.
    pub completions: Vec<(u16, Completion)>,
    /// Every command each core applied, with what it sent and decided: the input a log
    /// would hold, and the output a replay of it must reproduce.
    pub journals: Vec<Vec<JournalEntry>>,
    scratch: Vec<Envelope>,
}

/// One command a core applied, with its effects on the outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// The time it was applied at.
    pub now_ms: u64,
    /// The command.
    pub command: Command,
    /// Messages it sent.
    pub sent: Vec<Envelope>,
    /// Parked reserves it decided.
    pub decided: Vec<Completion>,
}

/// Where a command goes: the home core of its user.
pub fn route(command: &Command, cores: u16) -> u16 {
    let user = match command {
        Command::Reserve(op) => op.user,
        Command::Confirm(op) => op.user,
        Command::Release(op) => op.user,
        Command::Extend(op) => op.user,
        Command::Lookup(op) => op.user,
        _ => 0,
    };
    home_core(user, cores)
}

/// Merges the answers of every core to a lookup without a user: the one found, else
/// `not_found`, or `id_ambiguous` when several users on different cores use the id.
pub fn merge_lookups(results: impl IntoIterator<Item = LookupResult>) -> LookupResult {
    let mut found: Option<LookupResult> = None;
    let mut first_error = None;
    for r in results {
        if r.status == Status::Ok as u8 {
            if found.is_some() {
                return LookupResult::status(Status::IdAmbiguous);
            }
            found = Some(r);
        } else if r.status != Status::NotFound as u8 {
            first_error.get_or_insert(r);
        }
    }
    found.or(first_error).unwrap_or_else(|| LookupResult::status(Status::NotFound))
}

impl Cluster {
    /// `cores` engines configured like `template` (its `core` and `cores` are replaced).
    pub fn new(cores: u16, template: EngineConfig, now_ms: u64) -> Self {
        let engines = (0..cores).map(|core| Engine::new(EngineConfig { core, cores, ..template }, now_ms)).collect();
        Cluster {
            engines,
            links: (0..cores as usize * cores as usize).map(|_| VecDeque::new()).collect(),
            completions: Vec::new(),
            journals: vec![Vec::new(); cores as usize],
            scratch: Vec::new(),
        }
    }

    /// Number of cores.
    pub fn cores(&self) -> u16 {
        self.engines.len() as u16
    }

    /// Creates a pool as the server does: validated by core 0, applied on every core.
    pub fn create_pool(&mut self, req: &PoolCreate) -> Result<PoolInfo, Status> {
        let def = self.engines[0].validate_pool_create(req)?;
        let mut info = None;
        for e in &mut self.engines {
            info = Some(e.create_pool(def.clone()));
        }
        Ok(info.expect("at least one core"))
    }

    /// Changes a pool's capacity as the server does: the pool's home core decides, and if
    /// its shard lacks the free units a shrink takes, it recalls every shard's free units
    /// (the network is settled with `pick`) and decides again; an accepted change is then
    /// recorded by every other core.
    pub fn resize_pool(
        &mut self,
        now_ms: u64,
        pool: u32,
        capacity: u64,
        pick: impl FnMut(usize) -> usize,
    ) -> Result<PoolInfo, Status> {
        let home = self.engines[0].pool_info(pool).ok_or(Status::PoolNotFound)?.home_core;
        if self.engines[home as usize].resize_shortfall(pool, capacity)? > 0 {
            self.apply(now_ms, home, Command::RecallPool { pool });
            self.settle(now_ms, pick);
        }
        let Outcome::Pool(result) = self.apply(now_ms, home, Command::ResizePool { pool, capacity }) else {
            unreachable!("a resize answers with the pool")
        };
        if result.is_ok() {
            for core in (0..self.cores()).filter(|&c| c != home) {
                self.apply(now_ms, core, Command::ResizePool { pool, capacity });
            }
        }
        result
    }

    /// Applies `command` on `core` at `now_ms` and queues the messages it sends.
    pub fn apply(&mut self, now_ms: u64, core: u16, command: Command) -> Outcome {
        let outcome = self.engines[core as usize].apply(now_ms, command.clone());
        let (sent, decided) = self.collect(core);
        self.journals[core as usize].push(JournalEntry { now_ms, command, sent, decided });
        outcome
    }

    /// Applies a client command on its user's home core.
    pub fn submit(&mut self, now_ms: u64, command: Command) -> Outcome {
        let core = route(&command, self.cores());
        self.apply(now_ms, core, command)
    }

    /// A lookup as the server answers it: on the user's core, or on every core for user 0.
    pub fn lookup(&mut self, now_ms: u64, op: LookupOp) -> LookupResult {
        if op.user != 0 {
            return match self.submit(now_ms, Command::Lookup(op)) {
                Outcome::Lookup(r) => r,
                other => unreachable!("lookup answered {other:?}"),
            };
        }
        let results: Vec<LookupResult> = (0..self.cores())
            .map(|core| match self.apply(now_ms, core, Command::Lookup(op)) {
                Outcome::Lookup(r) => r,
                other => unreachable!("lookup answered {other:?}"),
            })
            .collect();
        merge_lookups(results)
    }

    fn collect(&mut self, core: u16) -> (Vec<Envelope>, Vec<Completion>) {
        let n = self.cores() as usize;
        self.engines[core as usize].take_outbox(&mut self.scratch);
        let sent = self.scratch.clone();
        for env in self.scratch.drain(..) {
            self.links[core as usize * n + env.to as usize].push_back((env.seq, env.msg));
        }
        let mut done = Vec::new();
        self.engines[core as usize].take_completions(&mut done);
        self.completions.extend(done.iter().map(|&c| (core, c)));
        (sent, done)
    }

    /// Links with messages waiting, as (from, to).
    pub fn busy_links(&self) -> Vec<(u16, u16)> {
        let n = self.cores() as usize;
        (0..self.links.len()).filter(|&i| !self.links[i].is_empty()).map(|i| ((i / n) as u16, (i % n) as u16)).collect()
    }

    /// Delivers the oldest message on link `from → to`, and its acknowledgement back (as
    /// if the receiver's log were durable at once); false if the link is empty.
    pub fn deliver(&mut self, now_ms: u64, from: u16, to: u16) -> bool {
        let n = self.cores() as usize;
        let Some((seq, msg)) = self.links[from as usize * n + to as usize].pop_front() else { return false };
        self.apply(now_ms, to, Command::Peer { from, seq, msg });
        self.apply(now_ms, from, Command::PeerAck { from: to, seq });
        true
    }

    /// Delivers messages until none is left, choosing the link with `pick(number of busy
    /// links)` each time (a seeded generator gives a reproducible interleaving). Checks
    /// every invariant after each delivery. Returns the number of messages delivered.
    pub fn settle(&mut self, now_ms: u64, mut pick: impl FnMut(usize) -> usize) -> usize {
        let mut delivered = 0;
        loop {
            let busy = self.busy_links();
            if busy.is_empty() {
                return delivered;
            }
            let (from, to) = busy[pick(busy.len()) % busy.len()];
            self.deliver(now_ms, from, to);
            delivered += 1;
            assert!(delivered < 1_000_000, "borrowing does not settle");
            self.check();
        }
    }

    /// Units of `pool` inside undelivered messages.
    pub fn in_flight_units(&self, pool: u32) -> u64 {
        self.links.iter().flatten().filter(|(_, m)| m.pool() == pool).map(|(_, m)| m.units()).sum()
    }

    /// Every core's shard of `pool`, read without advancing time.
    pub fn shards(&self, pool: u32) -> Vec<ShardStatus> {
        self.engines.iter().map(|e| e.shard_snapshot(pool).expect("pool on every core")).collect()
    }

    /// Checks every core's invariants and, for every pool, that the shards' capacities plus
    /// the units in flight equal the pool's capacity.
    pub fn check(&self) {
        for e in &self.engines {
            e.check_invariants();
        }
        for pool in 1..=self.engines[0].pool_count() {
            let capacity = self.engines[0].pool_info(pool).expect("pool").capacity;
            let sum: u64 = self.shards(pool).iter().map(|s| s.capacity).sum();
            assert_eq!(sum + self.in_flight_units(pool), capacity, "capacity of pool {pool} not conserved");
        }
    }

    /// Pool totals over all shards: (held, confirmed, available).
    pub fn totals(&self, pool: u32) -> (u64, u64, u64) {
        self.shards(pool).iter().fold((0, 0, 0), |(h, c, a), s| (h + s.held, c + s.confirmed, a + s.available()))
    }

    /// The reply of a reserve: decided at once, or found among the completions after
    /// [`Self::settle`].
    pub fn reserve_result(&self, core: u16, reply: Reply) -> Option<crate::protocol::OpResult> {
        match reply {
            Reply::Done(r) => Some(r),
            Reply::Parked(ticket) => self
                .completions
                .iter()
                .find(|(c, done)| *c == core && done.ticket == ticket)
                .map(|(_, done)| done.result),
        }
    }
}
