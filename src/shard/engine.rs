//! The state machine of one core: `apply(now, command) -> outcome`, deterministic, with no
//! I/O and no clock of its own. Here a reserve is decided, a hold confirmed, released,
//! extended or expired, and capacity borrowed between cores.
//!
//! # Borrowing, without double counting or phantom sold-out
//!
//! Each pool has a shard on every core, starting with an even split of the capacity (the
//! home core also starts with the units kept for priority reserves, if any), and a
//! home core (`pool id mod cores`) that coordinates borrowing (the "bank"; its free units
//! are the home shard's free units). Units only move inside messages, and the sender
//! debits before it sends: `capacity + lent - borrowed` of a shard never changes, so the
//! shards' capacities plus the units in flight always add up to the pool's capacity.
//!
//! - A reserve that fits in its shard is decided on the spot. Otherwise it waits in the
//!   shard's line and the shard asks the home core for the shortfall (one aggregate
//!   borrow for the whole line); the home core grants it plus a share of what it has left
//!   to spare, so that a busy shard does not come back for every reserve.
//! - When the home core cannot cover a borrow, it *recalls*: every other shard sends back
//!   all its free units and becomes *drained*. A drained shard keeps no free units: what a
//!   release frees goes straight back home, and each waiting reserve asks for exactly its
//!   quantity. With every free unit at the home core, the home core decides each waiting
//!   reserve exactly: granted, or `sold_out` because the whole pool cannot cover it.
//! - During a recall, the reserves waiting for units (the home core's own and the other
//!   shards' exact borrows) are decided in the order they reached the home core.
//! - `sold_out` is only ever decided by the home core at the end of a recall or while the
//!   pool is drained, that is, when it knows every free unit of the pool. So idle shards
//!   never hoard what busy ones need, and a shard that ran dry never answers `sold_out`
//!   while a sibling still has capacity.
//! - When everything asked for during a recall could be granted, or when a drained pool
//!   has gathered an eighth of its units that are not kept for priority reserves again (at
//!   least one unit per core, at most all of them) through releases and expiries, the home core tells the shards to go back to normal borrowing.
//! - Exactness is with respect to what the home core can know: units freed by a release on
//!   another core while the home core decides are still on their way home, and that
//!   release counts as happening after the `sold_out`.
//!
//! Messages between two cores are delivered in order (as glommio's channel mesh does);
//! the argument above relies on it.

use std::collections::{HashMap, VecDeque};

use super::holds::{HOLD_POOL_ID_MAX, HOLD_QTY_MAX, Hold, HoldSnap, HoldTable};
use super::pool::{Bank, BankMode, Demand, POOL_CAPACITY_MAX, Parked, PoolDef, PoolSlot, Shard};
use super::retained::Record;
use super::snapshot::{DemandSnap, LinkSnap, MsgSnap, ParkedSnap, PoolSnap, SNAPSHOT_FORMAT, SnapshotHead};
use super::users::{RECENT_EVENTS, Refusal, UserEvent, UserPool, UserState, Users};
use super::wheel::TimerWheel;
use crate::protocol::control::{
    ActivityEvent, PoolCreate, PoolInfo, PoolKind, PoolRules, ShardStatus, UserActivity, valid_pool_name,
};
use crate::protocol::{
    ConfirmOp, ExtendOp, LookupOp, LookupResult, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp,
    Status,
};

/// Sizes and identity of one core's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// This core's index.
    pub core: u16,
    /// Number of cores (shards per pool).
    pub cores: u16,
    /// Most live holds on this core.
    pub holds_max: u32,
    /// Most reserves waiting for borrowed capacity on this core.
    pub parked_max: u32,
    /// The longest a finished reservation (confirmed, released, expired) is kept for
    /// idempotent repeats and lookups, in ms.
    pub retention_ms: u64,
    /// The shortest: a finished reservation younger than this is never forgotten to make
    /// room (a reserve is answered `busy` instead), in ms.
    pub retention_min_ms: u64,
    /// Most finished reservations kept on this core (from the retention memory budget); at
    /// least `holds_max`, since every live hold has a place to finish in.
    pub retained_max: u32,
    /// Most pools.
    pub pools_max: u32,
}

/// A message between the state machines of two cores (the borrowing protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// Shard → home: I need `need` units; `ticket` names one parked reserve (exact borrow,
    /// with that reserve's `priority`), `None` asks for the shard's whole line (aggregate
    /// borrow, priority 0: never granted kept units).
    Borrow { pool: u32, need: u64, ticket: Option<u64>, priority: u8 },
    /// Home → shard: `units` for the borrow named by `ticket`. An aggregate grant of 0
    /// units means "the pool is being recalled: borrow exactly".
    Grant { pool: u32, units: u64, ticket: Option<u64> },
    /// Home → shard: the pool cannot cover the exact borrow `ticket`.
    SoldOut { pool: u32, ticket: u64 },
    /// Home → shard: send back every free unit and keep none (become drained).
    Recall { pool: u32 },
    /// Shard → home: the answer to a recall, with the shard's free units.
    Returned { pool: u32, units: u64 },
    /// Drained shard → home: units freed here (a release, an expiry, an unused grant).
    Return { pool: u32, units: u64 },
    /// Home → shard: stop being drained; borrow normally again.
    Undrain { pool: u32 },
}

/// Size of a [`PeerMsg`] in the log and in snapshots.
pub const PEER_MSG_SIZE: usize = 24;

impl PeerMsg {
    /// Encodes the message: tag u8 @0, flags u8 @1 (bit 0: a ticket is present), priority
    /// u8 @2 (of a borrow; else 0), reserved u8 @3, pool u32 @4, a u64 @8 (need or units, or
    /// the ticket of a sold-out), b u64 @16 (the ticket of a borrow or grant).
    pub fn encode(&self) -> [u8; PEER_MSG_SIZE] {
        let mut b = [0u8; PEER_MSG_SIZE];
        let (tag, pool, a, ticket) = match *self {
            PeerMsg::Borrow { pool, need, ticket, priority } => {
                b[2] = priority;
                (1, pool, need, ticket)
            }
            PeerMsg::Grant { pool, units, ticket } => (2, pool, units, ticket),
            PeerMsg::SoldOut { pool, ticket } => (3, pool, ticket, None),
            PeerMsg::Recall { pool } => (4, pool, 0, None),
            PeerMsg::Returned { pool, units } => (5, pool, units, None),
            PeerMsg::Return { pool, units } => (6, pool, units, None),
            PeerMsg::Undrain { pool } => (7, pool, 0, None),
        };
        b[0] = tag;
        b[1] = ticket.is_some() as u8;
        b[4..8].copy_from_slice(&pool.to_le_bytes());
        b[8..16].copy_from_slice(&a.to_le_bytes());
        b[16..24].copy_from_slice(&ticket.unwrap_or(0).to_le_bytes());
        b
    }

    /// Decodes [`Self::encode`]'s bytes; `None` if they are not a message.
    pub fn decode(b: &[u8; PEER_MSG_SIZE]) -> Option<PeerMsg> {
        let pool = u32::from_le_bytes(b[4..8].try_into().unwrap());
        let a = u64::from_le_bytes(b[8..16].try_into().unwrap());
        let ticket = match b[1] {
            0 => None,
            1 => Some(u64::from_le_bytes(b[16..24].try_into().unwrap())),
            _ => return None,
        };
        Some(match b[0] {
            1 => PeerMsg::Borrow { pool, need: a, ticket, priority: b[2] },
            2 => PeerMsg::Grant { pool, units: a, ticket },
            3 => PeerMsg::SoldOut { pool, ticket: a },
            4 => PeerMsg::Recall { pool },
            5 => PeerMsg::Returned { pool, units: a },
            6 => PeerMsg::Return { pool, units: a },
            7 => PeerMsg::Undrain { pool },
            _ => return None,
        })
    }

    /// Units the message carries.
    pub fn units(&self) -> u64 {
        match *self {
            PeerMsg::Grant { units, .. } | PeerMsg::Returned { units, .. } | PeerMsg::Return { units, .. } => units,
            _ => 0,
        }
    }
    /// The pool the message is about.
    pub fn pool(&self) -> u32 {
        match *self {
            PeerMsg::Borrow { pool, .. }
            | PeerMsg::Grant { pool, .. }
            | PeerMsg::SoldOut { pool, .. }
            | PeerMsg::Recall { pool }
            | PeerMsg::Returned { pool, .. }
            | PeerMsg::Return { pool, .. }
            | PeerMsg::Undrain { pool } => pool,
        }
    }
}

/// A message for another core, numbered on its link (1, 2, ... per destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Destination core.
    pub to: u16,
    /// Sequence number on the link to `to`.
    pub seq: u64,
    /// The message.
    pub msg: PeerMsg,
}

/// The state of the link with one other core. Messages are kept until the other core
/// acknowledges them ([`Command::PeerAck`], sent once it has them on durable storage), so
/// that after a crash every message that may not have arrived is sent again; the receiver
/// applies each sequence number once and ignores repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The last sequence number sent to that core.
    pub sent: u64,
    /// Messages sent and not acknowledged yet, oldest first.
    pub unacked: VecDeque<(u64, PeerMsg)>,
    /// The last sequence number applied from that core.
    pub received: u64,
}

/// The late result of a reserve that was parked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The ticket [`Reply::Parked`] gave.
    pub ticket: u64,
    /// The result.
    pub result: OpResult,
}

/// The answer to a reserve: decided now, or parked until capacity arrives from another core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Decided.
    Done(OpResult),
    /// Waiting; a [`Completion`] with this ticket will follow.
    Parked(u64),
}

/// One input of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Hold units.
    Reserve(ReserveOp),
    /// Make a hold permanent.
    Confirm(ConfirmOp),
    /// Give a hold back.
    Release(ReleaseOp),
    /// Move a hold's expiry.
    Extend(ExtendOp),
    /// Read a reservation (user 0: any user).
    Lookup(LookupOp),
    /// A borrowing message from core `from`, with its sequence number on that link; a
    /// sequence number already applied is ignored (a message sent again after a crash).
    Peer { from: u16, seq: u64, msg: PeerMsg },
    /// Core `from` has every message up to `seq` from this core on durable storage: they
    /// need not be kept for sending again.
    PeerAck { from: u16, seq: u64 },
    /// New limits (a restart with another configuration); the core and core count stay.
    SetLimits(EngineConfig),
    /// Let time pass: expire due holds, purge records past retention.
    Tick,
    /// Add a pool (validated by core 0 with [`Engine::validate_pool_create`]).
    CreatePool(PoolDef),
    /// Activate or deactivate a pool.
    SetPoolActive { pool: u32, active: bool },
    /// Replace a pool's rules.
    SetPoolRules { pool: u32, rules: PoolRules },
    /// Change a pool's capacity: decided by the pool's home core, recorded by the others
    /// ([`Engine::resize_pool`]).
    ResizePool { pool: u32, capacity: u64 },
    /// On the pool's home core: bring every shard's free units home (a recall), so that a
    /// smaller capacity can take them. Elsewhere, or while a recall runs, nothing.
    RecallPool { pool: u32 },
    /// Rename a pool (checked on core 0, applied on every core).
    RenamePool { pool: u32, name: Box<str> },
    /// Replace a pool's description (checked on core 0, applied on every core).
    DescribePool { pool: u32, description: Box<str> },
}

/// What [`Engine::apply`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reserve's reply.
    Reserve(Reply),
    /// The result of confirm, release or extend.
    Op(OpResult),
    /// The result of a lookup.
    Lookup(LookupResult),
    /// The pool after a catalog change, or why it was refused.
    Pool(Result<PoolInfo, Status>),
    /// Nothing to answer (peer messages, ticks).
    None,
}

/// Counters of this core's state machine (plain integers, read when scraped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Client operations applied.
    pub operations: u64,
    /// Borrowing messages sent.
    pub borrow_messages: u64,
    /// Holds expired.
    pub expirations: u64,
    /// Finished reservations forgotten before `retention_ms` to make room (each older than
    /// `retention_min_ms`).
    pub retention_evictions: u64,
    /// Finished reservations younger than `retention_min_ms` forgotten because the limits
    /// were lowered below what the core held (never otherwise).
    pub retention_forced: u64,
    /// Reserves answered `busy` because keeping `retention_min_ms` needed the room.
    pub retention_busy: u64,
}

enum Attempt {
    Done(OpResult),
    Short,
}

/// The state of one core.
pub struct Engine {
    cfg: EngineConfig,
    pools: Vec<PoolSlot>,
    names: HashMap<Box<str>, u32>,
    holds: HoldTable,
    users: Users,
    wheel: TimerWheel,
    outbox: Vec<Envelope>,
    links: Vec<Link>,
    completions: Vec<Completion>,
    /// Holds found expired by the current tick (kept to reuse its allocation).
    expiring: Vec<(u64, u128, u32)>,
    /// The latest time the state machine has seen.
    last_now_ms: u64,
    next_ticket: u64,
    parked_total: u32,
    stats: EngineStats,
    /// Reservations in the held state.
    held_count: u64,
    /// Units sent to other cores and received from them since this state was built.
    units_lent: u64,
    units_borrowed: u64,
    /// Pools whose shard changed since the last [`Engine::check_touched`] (indices; every
    /// pool once [`TOUCHED_MAX`] are listed).
    touched: Vec<usize>,
}

/// Shards listed for [`Engine::check_touched`]; past it, the check covers every shard.
const TOUCHED_MAX: usize = 1024;

impl Engine {
    /// An empty core state whose clock starts at `now_ms`.
    pub fn new(cfg: EngineConfig, now_ms: u64) -> Self {
        assert!(cfg.cores >= 1 && cfg.core < cfg.cores, "core index out of range");
        Engine {
            cfg,
            pools: Vec::new(),
            names: HashMap::new(),
            holds: HoldTable::with_capacity(cfg.holds_max, cfg.retained_max),
            users: Users::with_retention(cfg.retention_ms),
            wheel: TimerWheel::new(now_ms),
            outbox: Vec::new(),
            links: vec![Link::default(); cfg.cores as usize],
            completions: Vec::new(),
            expiring: Vec::new(),
            last_now_ms: now_ms,
            next_ticket: 1,
            parked_total: 0,
            stats: EngineStats::default(),
            held_count: 0,
            units_lent: 0,
            units_borrowed: 0,
            touched: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Reservations held now (neither confirmed, released nor expired).
    pub fn held_count(&self) -> u64 {
        self.held_count
    }

    /// Capacity units this core has sent to other cores and received from them, since
    /// start-up (these are not kept in snapshots).
    pub fn units_moved(&self) -> (u64, u64) {
        (self.units_lent, self.units_borrowed)
    }

    /// Live holds on this core (held reservations, not the finished ones kept).
    pub fn holds_len(&self) -> u32 {
        self.holds.len()
    }

    /// Finished reservations kept on this core, and when the oldest of them finished.
    pub fn retained(&self) -> (u32, Option<u64>) {
        let ring = self.holds.ring();
        (ring.len(), ring.front().map(|(_, r)| r.finished_at_ms()))
    }

    /// Applies one command at time `now_ms`, or at the latest time seen before if that is
    /// later: the state machine's time never goes backwards. A wall clock stepped back (NTP)
    /// must not reopen a sale window that closed, expire holds by a deadline already passed,
    /// or make a new hold outlive those granted before it; a replay of the log clamps alike.
    pub fn apply(&mut self, now_ms: u64, command: Command) -> Outcome {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        let now_ms = self.last_now_ms;
        match command {
            Command::Reserve(op) => Outcome::Reserve(self.reserve(now_ms, &op)),
            Command::Confirm(op) => Outcome::Op(self.confirm(now_ms, &op)),
            Command::Release(op) => Outcome::Op(self.release(now_ms, &op)),
            Command::Extend(op) => Outcome::Op(self.extend(now_ms, &op)),
            Command::Lookup(op) => Outcome::Lookup(self.lookup(now_ms, &op)),
            Command::Peer { from, seq, msg } => {
                let link = &mut self.links[from as usize];
                if seq <= link.received {
                    return Outcome::None;
                }
                assert_eq!(seq, link.received + 1, "messages from core {from} arrive in order and none is lost");
                link.received = seq;
                self.on_peer(now_ms, from, msg);
                Outcome::None
            }
            Command::PeerAck { from, seq } => {
                let unacked = &mut self.links[from as usize].unacked;
                while unacked.front().is_some_and(|&(s, _)| s <= seq) {
                    unacked.pop_front();
                }
                Outcome::None
            }
            Command::SetLimits(cfg) => {
                self.set_limits(now_ms, cfg);
                Outcome::None
            }
            Command::Tick => {
                self.tick(now_ms);
                Outcome::None
            }
            Command::CreatePool(def) => Outcome::Pool(Ok(self.create_pool(def))),
            Command::SetPoolActive { pool, active } => Outcome::Pool(self.set_pool_active(pool, active)),
            Command::SetPoolRules { pool, rules } => Outcome::Pool(self.set_pool_rules(now_ms, pool, rules)),
            Command::ResizePool { pool, capacity } => Outcome::Pool(self.resize_pool(now_ms, pool, capacity)),
            Command::RecallPool { pool } => {
                self.recall_pool(now_ms, pool);
                Outcome::None
            }
            Command::RenamePool { pool, name } => Outcome::Pool(self.rename_pool(pool, &name)),
            Command::DescribePool { pool, description } => Outcome::Pool(self.describe_pool(pool, description)),
        }
    }

    /// Moves the messages for other cores into `out` (in the order they must be sent).
    pub fn take_outbox(&mut self, out: &mut Vec<Envelope>) {
        out.append(&mut self.outbox);
    }

    /// The link with core `core`: what was sent, kept and received.
    pub fn link(&self, core: u16) -> &Link {
        &self.links[core as usize]
    }

    /// Every message kept for sending again (after a restart), per link in order.
    pub fn unacked(&self) -> Vec<Envelope> {
        let mut all = Vec::new();
        for (to, link) in self.links.iter().enumerate() {
            all.extend(link.unacked.iter().map(|&(seq, msg)| Envelope { to: to as u16, seq, msg }));
        }
        all
    }

    /// Changes the limits (core and core count stay as they are).
    fn set_limits(&mut self, now_ms: u64, cfg: EngineConfig) {
        assert_eq!((cfg.core, cfg.cores), (self.cfg.core, self.cfg.cores), "a core keeps its place");
        let dropped = self.holds.set_capacity(cfg.holds_max, cfg.retained_max);
        let now_ms = now_ms.max(self.last_now_ms);
        for r in dropped {
            if r.finished_at_ms() + cfg.retention_min_ms > now_ms {
                self.stats.retention_forced += 1;
            } else {
                self.stats.retention_evictions += 1;
            }
        }
        self.users.retention_ms = cfg.retention_ms;
        self.cfg = cfg;
    }

    /// Moves the results of parked reserves decided since the last call into `out`.
    pub fn take_completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.completions);
    }

    /// True if messages or completions are waiting to be taken.
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty() || !self.completions.is_empty()
    }

    // ----- catalog -------------------------------------------------------------------------

    /// Checks a pool creation against the catalog (run on core 0, which owns pool ids).
    /// A repeat of an existing pool's creation (same name, kind, capacity and TTLs; the
    /// active flag and the rules may have changed since) answers `Ok` with that pool. (The
    /// capacity compared is the current one: a repeat after `pool_set_capacity` must carry
    /// the new capacity, or it is `pool_exists`.)
    pub fn validate_pool_create(&self, req: &PoolCreate) -> Result<PoolDef, Status> {
        if !valid_pool_name(&req.name) {
            return Err(Status::InvalidPoolName);
        }
        let kind = PoolKind::from_u8(req.kind).ok_or(Status::WrongPoolKind)?;
        if kind == PoolKind::Seated {
            return Err(Status::Unsupported);
        }
        if req.capacity == 0 || req.capacity > POOL_CAPACITY_MAX {
            return Err(Status::InvalidCapacity);
        }
        if req.hold_ttl_ms_default == 0 || req.hold_ttl_ms_max == 0 || req.hold_ttl_ms_default > req.hold_ttl_ms_max {
            return Err(Status::InvalidTtl);
        }
        if !req.rules.valid() {
            return Err(Status::InvalidRules);
        }
        let def = PoolDef {
            id: self.pools.len() as u32 + 1,
            name: req.name.as_str().into(),
            kind,
            capacity: req.capacity,
            hold_ttl_ms_default: req.hold_ttl_ms_default,
            hold_ttl_ms_max: req.hold_ttl_ms_max,
            active: req.active,
            rules: req.rules,
            description: "".into(),
        };
        if let Some(&id) = self.names.get(req.name.as_str()) {
            let existing = &self.pools[id as usize - 1].def;
            let same = PoolDef {
                id,
                active: existing.active,
                rules: existing.rules,
                description: existing.description.clone(),
                ..def
            } == *existing;
            return if same { Ok(existing.clone()) } else { Err(Status::PoolExists) };
        }
        if self.pools.len() as u32 >= self.cfg.pools_max.min(HOLD_POOL_ID_MAX) {
            return Err(Status::PoolsLimitReached);
        }
        Ok(def)
    }

    /// Adds a validated pool (every core applies the same creations in the same order). A
    /// repeat of an existing pool changes nothing.
    pub fn create_pool(&mut self, def: PoolDef) -> PoolInfo {
        if let Some(existing) = self.pools.get(def.id as usize - 1) {
            assert_eq!(existing.def, def, "pool {} created twice with different definitions", def.id);
            return def.info(self.cfg.cores);
        }
        assert_eq!(def.id as usize, self.pools.len() + 1, "pool ids are dense and applied in order");
        let share = def.initial_share(self.cfg.core, self.cfg.cores);
        self.names.insert(def.name.clone(), def.id);
        let info = def.info(self.cfg.cores);
        self.pools.push(PoolSlot { def, shard: Shard::new(share), bank: Bank::default() });
        info
    }

    /// Activates or deactivates a pool. Deactivated pools refuse new reserves; holds can
    /// still be confirmed, released and extended.
    pub fn set_pool_active(&mut self, pool: u32, active: bool) -> Result<PoolInfo, Status> {
        let p = self.pool_index(pool).ok_or(Status::PoolNotFound)?;
        self.pools[p].def.active = active;
        Ok(self.pools[p].def.info(self.cfg.cores))
    }

    /// Replaces a pool's rules; they apply from the next reserve. `kept_permille` cannot
    /// change (`invalid_rules`): it decided the split of the capacity at creation. Reserves already held or
    /// waiting are not checked again. A change that turns a limit per user, a rate or user
    /// tracking on or off counts each user's units afresh from the reservations on this core (holds,
    /// waiting reserves, and the confirmed reservations still kept: confirmed units whose
    /// records were purged after `retention_ms`, or forgotten earlier to make room in the
    /// retention budget, are not counted), with full buckets. A change of values
    /// only (a higher limit, another rate) keeps every count and bucket.
    pub fn set_pool_rules(&mut self, now_ms: u64, pool: u32, rules: PoolRules) -> Result<PoolInfo, Status> {
        let now_ms = now_ms.max(self.last_now_ms);
        let p = self.pool_index(pool).ok_or(Status::PoolNotFound)?;
        // The kept share decides how the capacity was split over the cores when the pool
        // was created (the home core took the kept units): it cannot change afterwards.
        if !rules.valid() || rules.kept_permille != self.pools[p].def.rules.kept_permille {
            return Err(Status::InvalidRules);
        }
        let old = std::mem::replace(&mut self.pools[p].def.rules, rules);
        let kinds = |r: &PoolRules| (r.max_per_user > 0, r.rate_per_s > 0, r.tracks_users());
        if !rules.per_user() {
            self.users.reset_pool(pool, &rules, now_ms, []);
        } else if kinds(&old) != kinds(&rules) {
            // Entries kept for a rate alone do not keep confirmed units, entries kept for a
            // limit alone have no bucket, and a pool without per-user state has no entries:
            // a new kind of rule counts afresh.
            let entries = self.count_users(p, now_ms);
            self.users.reset_pool(pool, &rules, now_ms, entries);
        }
        Ok(self.pools[p].def.info(self.cfg.cores))
    }

    /// Changes a pool's capacity. The pool's home core decides: a larger capacity adds the
    /// difference to its shard at once (serving its waiting reserves); a smaller one takes
    /// the difference from its shard's free units, leaving the units kept for priority
    /// reserves at the new capacity, and is refused with `capacity_in_use` if the shard
    /// does not have them (see [`Self::resize_shortfall`]). Every other core only
    /// records the new capacity: its shard does not change, so `share` changes on the home
    /// core alone and the shards' shares still add up to the capacity. A capacity outside
    /// 1..=2^60 is `invalid_capacity`.
    pub fn resize_pool(&mut self, now_ms: u64, pool: u32, capacity: u64) -> Result<PoolInfo, Status> {
        let short = self.resize_shortfall(pool, capacity)?;
        if short > 0 {
            return Err(Status::CapacityInUse);
        }
        let p = self.pool_index(pool).expect("checked");
        if self.is_home(p) {
            let old = self.pools[p].def.capacity;
            let shard = &mut self.pools[p].shard;
            // A shrink takes at most the shard's free units (`resize_shortfall` is 0).
            shard.capacity = shard.capacity + capacity - old;
            shard.share += capacity as i64 - old as i64;
            self.pools[p].def.capacity = capacity;
            self.touch(p);
            self.pump(now_ms.max(self.last_now_ms), p);
        } else {
            self.pools[p].def.capacity = capacity;
        }
        Ok(self.pools[p].def.info(self.cfg.cores))
    }

    /// Units a change of pool `pool` to `capacity` would take from the home core's shard
    /// beyond its free units (0: the change can be applied here now), or why the change is
    /// refused whatever the shards hold.
    pub fn resize_shortfall(&self, pool: u32, capacity: u64) -> Result<u64, Status> {
        let p = self.pool_index(pool).ok_or(Status::PoolNotFound)?;
        if capacity == 0 || capacity > POOL_CAPACITY_MAX {
            return Err(Status::InvalidCapacity);
        }
        let def = &self.pools[p].def;
        if !self.is_home(p) || capacity >= def.capacity {
            return Ok(0);
        }
        // The units kept for priority reserves at the new capacity stay free on this core.
        let needed = def.capacity - capacity + def.rules.kept_units(capacity);
        Ok(needed.saturating_sub(self.pools[p].shard.available()))
    }

    /// The borrowing mode of pool `pool` on its home core (`None` elsewhere).
    pub fn bank_mode(&self, pool: u32) -> Option<BankMode> {
        let p = self.pool_index(pool)?;
        self.is_home(p).then_some(self.pools[p].bank.mode)
    }

    /// Starts a recall of pool `pool` if this is its home core and its shards keep free
    /// units (normal mode): every shard sends its free units home and borrows exactly from
    /// then on.
    fn recall_pool(&mut self, now_ms: u64, pool: u32) {
        self.tick(now_ms);
        if let Some(p) = self.pool_index(pool)
            && self.is_home(p)
            && self.pools[p].bank.mode == BankMode::Normal
        {
            self.start_recall(now_ms, p);
        }
    }

    /// Renames a pool. The name must be valid and not another pool's (`invalid_pool_name`,
    /// `pool_exists`); the pool's own name is a change that changes nothing.
    pub fn rename_pool(&mut self, pool: u32, name: &str) -> Result<PoolInfo, Status> {
        let p = self.pool_index(pool).ok_or(Status::PoolNotFound)?;
        if !valid_pool_name(name) {
            return Err(Status::InvalidPoolName);
        }
        match self.names.get(name) {
            Some(&id) if id != pool => return Err(Status::PoolExists),
            Some(_) => {}
            None => {
                let old = std::mem::replace(&mut self.pools[p].def.name, name.into());
                if self.names.get(&old) == Some(&pool) {
                    self.names.remove(&old);
                }
                self.names.insert(name.into(), pool);
            }
        }
        Ok(self.pools[p].def.info(self.cfg.cores))
    }

    /// Replaces a pool's description (`invalid_description` if it is longer than 128 bytes
    /// or has control characters; empty clears it).
    pub fn describe_pool(&mut self, pool: u32, description: Box<str>) -> Result<PoolInfo, Status> {
        let p = self.pool_index(pool).ok_or(Status::PoolNotFound)?;
        if !super::pool::valid_pool_description(&description) {
            return Err(Status::InvalidDescription);
        }
        self.pools[p].def.description = description;
        Ok(self.pools[p].def.info(self.cfg.cores))
    }

    /// Each user's units in pool `p` as the reservations on this core show them, with a
    /// full bucket.
    fn count_users(&self, p: usize, now_ms: u64) -> Vec<UserPool> {
        let pool = self.pools[p].def.id;
        let rules = self.pools[p].def.rules;
        let mut by_user: HashMap<u128, UserState> = HashMap::new();
        let mut count = |user, [held, confirmed, pending, released, expired]: [u64; 5]| {
            let e = by_user
                .entry(user)
                .or_insert_with(|| UserState { last_ms: now_ms, ..UserState::fresh(&rules, now_ms) });
            e.held += held;
            e.confirmed += confirmed;
            e.pending += pending;
            e.released += released;
            e.expired += expired;
        };
        for (_, h) in self.holds.iter().filter(|(_, h)| h.pool() == pool) {
            let q = h.qty() as u64;
            match h.state() {
                ReservationState::Held => count(h.user(), [q, 0, 0, 0, 0]),
                ReservationState::Confirmed => count(h.user(), [0, q, 0, 0, 0]),
                ReservationState::Released => count(h.user(), [0, 0, 0, q, 0]),
                ReservationState::Expired => count(h.user(), [0, 0, 0, 0, q]),
                ReservationState::None => {}
            }
        }
        for w in &self.pools[p].shard.waiting {
            count(w.op.user, [0, 0, w.op.qty as u64, 0, 0]);
        }
        // Recent events stay as they are (they are kept beside the counts).
        by_user.into_iter().map(|(user, state)| UserPool { pool, user, state, recent: Default::default() }).collect()
    }

    /// A pool's definition.
    pub fn pool_info(&self, pool: u32) -> Option<PoolInfo> {
        self.pool_index(pool).map(|p| self.pools[p].def.info(self.cfg.cores))
    }

    /// Every pool's definition, by id.
    pub fn pool_defs(&self) -> Vec<PoolDef> {
        self.pools.iter().map(|slot| slot.def.clone()).collect()
    }

    /// A pool's id by name.
    pub fn pool_id(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }

    /// Number of pools.
    pub fn pool_count(&self) -> u32 {
        self.pools.len() as u32
    }

    /// This core's shard of a pool as it stands, without advancing time.
    pub fn shard_snapshot(&self, pool: u32) -> Option<ShardStatus> {
        let p = self.pool_index(pool)?;
        Some(self.pools[p].shard_status(self.cfg.core, self.cfg.cores))
    }

    fn pool_index(&self, pool: u32) -> Option<usize> {
        let p = (pool as usize).checked_sub(1)?;
        (p < self.pools.len()).then_some(p)
    }

    fn is_home(&self, p: usize) -> bool {
        self.pools[p].def.home_core(self.cfg.cores) == self.cfg.core
    }

    fn home(&self, p: usize) -> u16 {
        self.pools[p].def.home_core(self.cfg.cores)
    }

    // ----- reservation operations -----------------------------------------------------------

    /// Reserve. Statuses in order of precedence: `invalid_id`, `invalid_user`,
    /// `invalid_quantity`, `pool_not_found`, `wrong_pool_kind`, `invalid_ttl`, then for an id
    /// already in use `id_exists_with_different_pool` / `_user` / `_quantity` or an `ok`
    /// repeat, then `pool_inactive`, `holds_limit_reached`, `busy` (no place to keep the
    /// hold's record once it finishes without forgetting one younger than
    /// `retention_min_ms`; `expires_at_ms` says when one frees), then the pool's rules
    /// (`admit`), and then capacity: held if the shard has the units (and no reserve
    /// is waiting before it); `sold_out` at once on the home core of a drained pool; `busy`
    /// if the core's waiting line is full; otherwise the reserve waits for borrowed units
    /// and is decided later by the same checks from the top, except the pool's rules
    /// (checked once, on arrival). A refused reserve leaves no record: its id can be used
    /// again.
    pub fn reserve(&mut self, now_ms: u64, op: &ReserveOp) -> Reply {
        self.tick(now_ms);
        self.stats.operations += 1;
        let p = match self.precheck_reserve(now_ms, op) {
            Ok(p) => p,
            Err(result) => return Reply::Done(result),
        };
        if let Err(result) = self.admit(now_ms, p, op) {
            return Reply::Done(result);
        }
        if self.pools[p].shard.waiting.is_empty() {
            if let Attempt::Done(result) = self.take(now_ms, p, op) {
                let def = &self.pools[p].def;
                let note = event(op.id, now_ms, op.qty, ReservationState::Held);
                self.users.note(&def.rules, (def.id, op.user), note);
                return Reply::Done(result);
            }
        }
        let home = self.is_home(p);
        if home && self.pools[p].bank.mode == BankMode::Drained {
            // Every free unit of the pool is here: this is the whole pool's answer.
            self.count_user(now_ms, p, op.user, [-(op.qty as i64), 0, 0, 0, 0], None);
            return Reply::Done(self.sold_out(p));
        }
        if self.parked_total >= self.cfg.parked_max {
            self.count_user(now_ms, p, op.user, [-(op.qty as i64), 0, 0, 0, 0], None);
            return Reply::Done(OpResult::status(Status::Busy));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pools[p].shard.waiting.push_back(Parked { ticket, op: *op, asked: false });
        self.parked_total += 1;
        // Waiting is not an event: the reserve's `held` event comes if it takes the units.
        self.count_user(now_ms, p, op.user, [-(op.qty as i64), 0, op.qty as i64, 0, 0], None);
        if home {
            let demand = Demand { from: self.cfg.core, ticket, need: op.qty as u64, priority: op.priority };
            self.pools[p].bank.queue.push_back(demand);
            if self.pools[p].bank.mode == BankMode::Normal {
                self.start_recall(now_ms, p);
            }
        } else {
            self.pump(now_ms, p);
        }
        // On a single core the recall ends at once and the reserve is already decided.
        match self.completions.iter().rposition(|c| c.ticket == ticket) {
            Some(pos) => Reply::Done(self.completions.remove(pos).result),
            None => Reply::Parked(ticket),
        }
    }

    /// Checks everything but capacity; `Ok(pool index)` when the reserve may take units.
    fn precheck_reserve(&mut self, now_ms: u64, op: &ReserveOp) -> Result<usize, OpResult> {
        let refuse = |s| Err(OpResult::status(s));
        if op.id == 0 {
            return refuse(Status::InvalidId);
        }
        if op.user == 0 {
            return refuse(Status::InvalidUser);
        }
        if op.qty == 0 || op.qty > HOLD_QTY_MAX {
            return refuse(Status::InvalidQuantity);
        }
        let Some(p) = self.pool_index(op.pool) else { return refuse(Status::PoolNotFound) };
        let def = &self.pools[p].def;
        if def.kind != PoolKind::Counted {
            return refuse(Status::WrongPoolKind);
        }
        if op.ttl_ms > def.hold_ttl_ms_max {
            return refuse(Status::InvalidTtl);
        }
        if let Some(slot) = self.holds.find(op.id) {
            let h = self.holds.get(slot);
            return Err(if h.pool() != op.pool {
                OpResult::status(Status::IdExistsWithDifferentPool)
            } else if h.user() != op.user {
                OpResult::status(Status::IdExistsWithDifferentUser)
            } else if h.qty() != op.qty {
                OpResult::status(Status::IdExistsWithDifferentQuantity)
            } else {
                let mut r = self.result_of(slot, Status::Ok);
                r.flags = RESULT_FLAG_REPEAT;
                r
            });
        }
        if !def.active {
            return refuse(Status::PoolInactive);
        }
        if self.holds.is_full() {
            return refuse(Status::HoldsLimitReached);
        }
        self.retention_room(now_ms)?;
        Ok(p)
    }

    /// Makes sure one more hold has a place in the ring of finished reservations once it
    /// finishes: every live hold keeps one, so a confirm, release or expiry never has to
    /// forget a record younger than `retention_min_ms`. Forgets the oldest records, if older
    /// than that, as needed; otherwise the reserve is answered `busy`, with the time the
    /// oldest record may go.
    fn retention_room(&mut self, now_ms: u64) -> Result<(), OpResult> {
        loop {
            let ring = self.holds.ring();
            if self.held_count + (ring.len() as u64) < ring.capacity() as u64 {
                return Ok(());
            }
            match ring.front() {
                Some((_, r)) if r.finished_at_ms() + self.cfg.retention_min_ms <= now_ms => {
                    self.holds.forget_oldest();
                    self.stats.retention_evictions += 1;
                }
                front => {
                    self.stats.retention_busy += 1;
                    let free_at = front.map_or(0, |(_, r)| r.finished_at_ms() + self.cfg.retention_min_ms);
                    return Err(OpResult { expires_at_ms: free_at, ..OpResult::status(Status::Busy) });
                }
            }
        }
    }

    /// The pool's rules for a new reserve (checked once, when it arrives; a reserve that
    /// waits for borrowed units is not checked again). Admitted, its units count as the
    /// user's held units at once; [`Self::reserve`] moves them to pending if it waits and
    /// takes them back if it is refused. Precedence: `not_open`, `closed`,
    /// `quantity_above_max`, `rate_limited` (which uses up one attempt of the user's
    /// bucket), `user_limit_reached` (held, confirmed and pending units plus this one).
    fn admit(&mut self, now_ms: u64, p: usize, op: &ReserveOp) -> Result<(), OpResult> {
        let rules = self.pools[p].def.rules;
        if rules.opens_at_ms != 0 && now_ms < rules.opens_at_ms {
            return Err(OpResult { expires_at_ms: rules.opens_at_ms, ..OpResult::status(Status::NotOpen) });
        }
        if rules.closes_at_ms != 0 && now_ms >= rules.closes_at_ms {
            return Err(OpResult::status(Status::Closed));
        }
        if rules.max_qty != 0 && op.qty > rules.max_qty {
            return Err(OpResult::status(Status::QuantityAboveMax));
        }
        if !rules.per_user() {
            return Ok(());
        }
        match self.users.attempt(&rules, (op.pool, op.user), op.qty as u64, now_ms) {
            Ok(()) => Ok(()),
            Err(Refusal::Rate { next_at_ms }) => {
                Err(OpResult { expires_at_ms: next_at_ms, ..OpResult::status(Status::RateLimited) })
            }
            Err(Refusal::Limit) => Err(OpResult::status(Status::UserLimitReached)),
        }
    }

    /// Adds held, confirmed, pending, released and expired units to a user's entry in pool
    /// `p`, if the pool's rules keep per-user state.
    fn count_user(&mut self, now_ms: u64, p: usize, user: u128, delta: [i64; 5], note: Option<UserEvent>) {
        let def = &self.pools[p].def;
        if def.rules.per_user() {
            self.users.add(&def.rules, def.id, user, now_ms, delta, note);
        }
    }

    /// A user's entry in a pool with per-user rules (for tests and queries).
    pub fn user_state(&self, pool: u32, user: u128) -> Option<UserState> {
        self.users.get(pool, user)
    }

    /// A user's activity in pool `pool`, or in every pool for 0, by pool id, as of `now_ms`:
    /// the pools whose rules keep per-user state and where the user has an entry on this
    /// core (the user's home core has them all), each with up to `recent` of its recent
    /// events of kind `state` (held, confirmed, released, expired; 0: any), newest first.
    pub fn user_activity(&self, now_ms: u64, user: u128, pool: u32, state: u8, recent: u8) -> Vec<UserActivity> {
        // Read outside `apply` too: time as `apply` clamps it.
        let now_ms = now_ms.max(self.last_now_ms);
        let pools = if pool == 0 { 1..=self.pools.len() as u32 } else { pool..=pool };
        pools
            .filter_map(|id| {
                let e = self.users.get(id, user)?;
                let rules = self.pools[self.pool_index(id)?].def.rules;
                Some(UserActivity {
                    pool: id,
                    held: e.held,
                    confirmed: e.confirmed,
                    pending: e.pending,
                    released: e.released,
                    expired: e.expired,
                    last_activity_ms: e.last_ms,
                    attempts_left_milli: if rules.rate_per_s > 0 { e.attempts_at(&rules, now_ms) } else { 0 },
                    events: self
                        .users
                        .events(id, user)
                        .filter(|ev| state == 0 || ev.state == state)
                        .take(recent as usize)
                        .map(|ev| ActivityEvent { id: ev.id, at_ms: ev.at_ms, qty: ev.qty, state: ev.state })
                        .collect(),
                })
            })
            .collect()
    }

    /// Decides a reserve against this shard alone: done (held, or refused by a precheck),
    /// or short of units.
    fn attempt(&mut self, now_ms: u64, p: usize, op: &ReserveOp) -> Attempt {
        if let Err(result) = self.precheck_reserve(now_ms, op) {
            return Attempt::Done(result);
        }
        self.take(now_ms, p, op)
    }

    /// Holds the units of a reserve that passed its prechecks, if the shard has them.
    fn take(&mut self, now_ms: u64, p: usize, op: &ReserveOp) -> Attempt {
        if self.usable(p, op.priority) < op.qty as u64 {
            return Attempt::Short;
        }
        let slot = &mut self.pools[p];
        let ttl = if op.ttl_ms == 0 { slot.def.hold_ttl_ms_default } else { op.ttl_ms };
        let expires_at = now_ms + ttl as u64;
        slot.shard.held += op.qty as u64;
        self.touch(p);
        let slot = self.holds.insert(Hold::new(op.id, op.user, op.pool, op.qty, expires_at)).expect("checked not full");
        self.held_count += 1;
        self.wheel.insert(slot, expires_at, &mut self.holds);
        Attempt::Done(self.result_of(slot, Status::Ok))
    }

    /// Units of this shard a reserve of `priority` may take: all free units, except on the
    /// pool's home core, which never gives the last `kept` units of the pool (its rules'
    /// `kept_permille`) to a reserve below `priority_min`, whether it reserves here or
    /// borrows them.
    fn usable(&self, p: usize, priority: u8) -> u64 {
        let slot = &self.pools[p];
        let free = slot.shard.available();
        let rules = &slot.def.rules;
        if rules.kept_permille == 0 || rules.may_take_kept(priority) || !self.is_home(p) {
            return free;
        }
        free.saturating_sub(rules.kept_units(slot.def.capacity))
    }

    fn sold_out(&self, p: usize) -> OpResult {
        OpResult { available: self.pools[p].shard.available(), ..OpResult::status(Status::SoldOut) }
    }

    /// The result for reservation `slot` with `status`.
    fn result_of(&self, slot: u32, status: Status) -> OpResult {
        let h = self.holds.get(slot);
        let state = h.state();
        let available = self.pool_index(h.pool()).map_or(u64::MAX, |p| self.pools[p].shard.available());
        OpResult {
            status: status as u8,
            state: state as u8,
            flags: 0,
            expires_at_ms: if state == ReservationState::Held { h.when_ms() } else { 0 },
            available,
        }
    }

    /// Finds the reservation an operation names; `not_found` also when the user differs, so
    /// the answer does not depend on which core the wrong user hashes to.
    fn find_for(&self, id: u128, user: u128) -> Result<u32, OpResult> {
        if id == 0 {
            return Err(OpResult::status(Status::InvalidId));
        }
        if user == 0 {
            return Err(OpResult::status(Status::InvalidUser));
        }
        match self.holds.find(id) {
            Some(slot) if self.holds.get(slot).user() == user => Ok(slot),
            _ => Err(OpResult::status(Status::NotFound)),
        }
    }

    /// Confirm. Precedence: `invalid_id`, `invalid_user`, `not_found`, then by state:
    /// confirmed (`ok` repeat with the same reference, else `confirmed_with_different_ref`),
    /// `already_released`, `expired`; a held reservation becomes confirmed.
    pub fn confirm(&mut self, now_ms: u64, op: &ConfirmOp) -> OpResult {
        self.tick(now_ms);
        self.stats.operations += 1;
        let slot = match self.find_for(op.id, op.user) {
            Ok(slot) => slot,
            Err(r) => return r,
        };
        match self.holds.get(slot).state() {
            ReservationState::Confirmed => {
                if self.holds.commit_ref(slot) == op.commit_ref {
                    self.repeat_of(slot)
                } else {
                    self.result_of(slot, Status::ConfirmedWithDifferentRef)
                }
            }
            ReservationState::Released => self.result_of(slot, Status::AlreadyReleased),
            ReservationState::Expired => self.result_of(slot, Status::Expired),
            ReservationState::Held => {
                let h = self.holds.get(slot);
                let p = self.pool_index(h.pool()).expect("hold of a known pool");
                let shard = &mut self.pools[p].shard;
                shard.held -= h.qty() as u64;
                shard.confirmed += h.qty() as u64;
                self.touch(p);
                let note = event(h.id(), now_ms, h.qty(), ReservationState::Confirmed);
                self.count_user(now_ms, p, h.user(), [-(h.qty() as i64), h.qty() as i64, 0, 0, 0], note);
                self.wheel.remove(slot, &mut self.holds);
                let slot = self.finish(now_ms, slot, ReservationState::Confirmed, op.commit_ref);
                self.result_of(slot, Status::Ok)
            }
            ReservationState::None => unreachable!("indexed records are never in state none"),
        }
    }

    /// Release. Precedence: `invalid_id`, `invalid_user`, `not_found`, then by state:
    /// released (`ok` repeat), `already_confirmed`, `expired`; a held reservation gives its
    /// units back at once.
    pub fn release(&mut self, now_ms: u64, op: &ReleaseOp) -> OpResult {
        self.tick(now_ms);
        self.stats.operations += 1;
        let slot = match self.find_for(op.id, op.user) {
            Ok(slot) => slot,
            Err(r) => return r,
        };
        match self.holds.get(slot).state() {
            ReservationState::Released => self.repeat_of(slot),
            ReservationState::Confirmed => self.result_of(slot, Status::AlreadyConfirmed),
            ReservationState::Expired => self.result_of(slot, Status::Expired),
            ReservationState::Held => {
                self.wheel.remove(slot, &mut self.holds);
                let (p, slot) = self.give_back(now_ms, slot, ReservationState::Released);
                self.pump(now_ms, p);
                self.result_of(slot, Status::Ok)
            }
            ReservationState::None => unreachable!("indexed records are never in state none"),
        }
    }

    /// Extend: the hold expires `ttl_ms` from now, or keeps its expiry if that is later
    /// (extending never shortens a hold). Precedence: `invalid_id`,
    /// `invalid_user`, `not_found`, then by state `already_confirmed`, `already_released`,
    /// `expired`, then `invalid_ttl` (0, or above the pool's maximum).
    pub fn extend(&mut self, now_ms: u64, op: &ExtendOp) -> OpResult {
        self.tick(now_ms);
        self.stats.operations += 1;
        let slot = match self.find_for(op.id, op.user) {
            Ok(slot) => slot,
            Err(r) => return r,
        };
        match self.holds.get(slot).state() {
            ReservationState::Confirmed => self.result_of(slot, Status::AlreadyConfirmed),
            ReservationState::Released => self.result_of(slot, Status::AlreadyReleased),
            ReservationState::Expired => self.result_of(slot, Status::Expired),
            ReservationState::Held => {
                let pool = self.holds.get(slot).pool();
                let p = self.pool_index(pool).expect("hold of a known pool");
                if op.ttl_ms == 0 || op.ttl_ms > self.pools[p].def.hold_ttl_ms_max {
                    return self.result_of(slot, Status::InvalidTtl);
                }
                // Extending only moves the expiry later, so the record can stay filed in the
                // wheel at its old deadline; when that comes up it is filed at the new one.
                let h = self.holds.get_mut(slot);
                h.set_when_ms(h.when_ms().max(now_ms + op.ttl_ms as u64));
                self.result_of(slot, Status::Ok)
            }
            ReservationState::None => unreachable!("indexed records are never in state none"),
        }
    }

    /// Lookup, as of `now_ms`, without changing anything: a hold past its deadline reads
    /// as expired and a record past its retention as gone, even before a tick has
    /// processed them. A user of 0 matches any user (the slow path that asks every core).
    pub fn lookup(&self, now_ms: u64, op: &LookupOp) -> LookupResult {
        // Read outside `apply` too: time as `apply` clamps it.
        let now_ms = now_ms.max(self.last_now_ms);
        if op.id == 0 {
            return LookupResult::status(Status::InvalidId);
        }
        let Some(slot) = self.holds.find(op.id) else { return LookupResult::status(Status::NotFound) };
        let h = self.holds.get(slot);
        if op.user != 0 && h.user() != op.user {
            return LookupResult::status(Status::NotFound);
        }
        // A finished record's time is when it finished; it is kept until `retention_ms` after
        // that at the latest.
        let (state, when_ms) = match h.state() {
            ReservationState::Held if h.when_ms() <= now_ms => {
                (ReservationState::Expired, h.when_ms() + self.cfg.retention_ms)
            }
            ReservationState::Held => (ReservationState::Held, h.when_ms()),
            state => (state, h.when_ms() + self.cfg.retention_ms),
        };
        if state.is_final() && when_ms <= now_ms {
            return LookupResult::status(Status::NotFound);
        }
        LookupResult {
            status: Status::Ok as u8,
            state: state as u8,
            qty: h.qty(),
            pool: h.pool(),
            expires_at_ms: when_ms,
            user: h.user(),
            commit_ref: self.holds.commit_ref(slot),
        }
    }

    fn repeat_of(&self, slot: u32) -> OpResult {
        let mut r = self.result_of(slot, Status::Ok);
        r.flags = RESULT_FLAG_REPEAT;
        r
    }

    /// Moves a held reservation (already out of the wheel) to a final state: its record
    /// leaves the live holds for the ring of finished reservations, where it is kept at
    /// least `retention_min_ms` and at most `retention_ms` ([`Self::retention_room`] kept a
    /// place for it). Answers its new slot.
    fn finish(&mut self, now_ms: u64, slot: u32, state: ReservationState, commit_ref: u128) -> u32 {
        debug_assert_eq!(self.holds.get(slot).state(), ReservationState::Held, "only a held reservation is finished");
        self.held_count -= 1;
        let ring = self.holds.ring();
        if ring.len() >= ring.capacity() {
            // Only after the limits were lowered below what the core keeps.
            let forgotten = self.holds.forget_oldest().expect("a full ring has records");
            if forgotten.finished_at_ms() + self.cfg.retention_min_ms > now_ms {
                self.stats.retention_forced += 1;
            } else {
                self.stats.retention_evictions += 1;
            }
        }
        self.holds.finish(slot, state, now_ms, commit_ref)
    }

    /// Returns a held reservation's units to its shard (the hold is out of the wheel);
    /// answers the pool index and the record's new slot.
    fn give_back(&mut self, now_ms: u64, slot: u32, state: ReservationState) -> (usize, u32) {
        let h = self.holds.get(slot);
        let p = self.pool_index(h.pool()).expect("hold of a known pool");
        self.pools[p].shard.held -= h.qty() as u64;
        self.touch(p);
        let q = h.qty() as i64;
        let delta = if state == ReservationState::Expired { [-q, 0, 0, 0, q] } else { [-q, 0, 0, q, 0] };
        self.count_user(now_ms, p, h.user(), delta, event(h.id(), now_ms, h.qty(), state));
        (p, self.finish(now_ms, slot, state, 0))
    }

    /// True if the oldest finished reservation is past `retention_ms` at `now_ms`.
    fn purge_due(&self, now_ms: u64) -> bool {
        let front = self.holds.ring().front();
        front.is_some_and(|(_, r)| r.finished_at_ms() + self.cfg.retention_ms <= now_ms)
    }

    /// Expires due holds, purges records past retention and drops idle per-user entries.
    pub fn tick(&mut self, now_ms: u64) {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        let pools = &self.pools;
        self.users.sweep(now_ms, |pool| pools.get(pool as usize - 1).map(|slot| slot.def.rules));
        while self.purge_due(now_ms) {
            self.holds.forget_oldest();
        }
        if !self.wheel.may_have_due(now_ms) {
            return;
        }
        let mut expiring = std::mem::take(&mut self.expiring);
        while let Some(slot) = self.wheel.next_due(now_ms, &mut self.holds) {
            let h = self.holds.get(slot);
            debug_assert_eq!(h.state(), ReservationState::Held, "only live holds are filed");
            if h.when_ms() > now_ms {
                self.wheel.insert(slot, h.when_ms(), &mut self.holds);
                continue;
            }
            expiring.push((h.when_ms(), h.id(), slot));
        }
        // Holds that expire together are given back in an order that depends only on what
        // they are (deadline, then id), not on how the wheel filed them: a log replayed into
        // a state restored from a snapshot must send the same messages as the original.
        expiring.sort_unstable();
        for &(when, _, slot) in &expiring {
            // Expired at exactly its deadline: it finished then.
            let (p, _) = self.give_back(when, slot, ReservationState::Expired);
            self.stats.expirations += 1;
            self.pump(now_ms, p);
        }
        expiring.clear();
        self.expiring = expiring;
    }

    /// True if time `now_ms` may expire holds, purge records or drop idle per-user entries:
    /// a [`Command::Tick`] then changes the state (and a log must record it).
    pub fn tick_due(&self, now_ms: u64) -> bool {
        self.wheel.may_have_due(now_ms) || self.users.sweep_due(now_ms) || self.purge_due(now_ms)
    }

    // ----- borrowing -------------------------------------------------------------------------

    fn send(&mut self, to: u16, msg: PeerMsg) {
        let units = msg.units();
        if units > 0 {
            let p = msg.pool() as usize - 1;
            let shard = &mut self.pools[p].shard;
            assert!(shard.available() >= units, "debit before send: only free units move");
            shard.capacity -= units;
            shard.lent += units;
            self.units_lent += units;
            self.touch(p);
        }
        self.stats.borrow_messages += 1;
        let link = &mut self.links[to as usize];
        link.sent += 1;
        link.unacked.push_back((link.sent, msg));
        self.outbox.push(Envelope { to, seq: link.sent, msg });
    }

    fn receive_units(&mut self, p: usize, units: u64) {
        let shard = &mut self.pools[p].shard;
        shard.capacity += units;
        shard.borrowed += units;
        self.units_borrowed += units;
        self.touch(p);
    }

    fn complete(&mut self, ticket: u64, result: OpResult) {
        self.completions.push(Completion { ticket, result });
    }

    /// Removes parked reserve `ticket` from pool `p`'s line.
    fn unpark(&mut self, p: usize, ticket: u64) -> Option<Parked> {
        let waiting = &mut self.pools[p].shard.waiting;
        // Tickets are handed out in increasing order and the line keeps that order.
        let pos = waiting.binary_search_by_key(&ticket, |w| w.ticket).ok()?;
        self.parked_total -= 1;
        waiting.remove(pos)
    }

    /// A parked reserve was decided with `result`: its units stop being pending for its
    /// user, and are held if it took them (an `ok` that is not a repeat).
    fn left_line(&mut self, now_ms: u64, p: usize, op: &ReserveOp, result: &OpResult) {
        let took = result.status == Status::Ok as u8 && result.flags & RESULT_FLAG_REPEAT == 0;
        let qty = op.qty as i64;
        let note = if took { event(op.id, now_ms, op.qty, ReservationState::Held) } else { None };
        self.count_user(now_ms, p, op.user, [if took { qty } else { 0 }, 0, -qty, 0, 0], note);
    }

    /// Serves the waiting line in order while it fits, then asks for what is missing (or,
    /// when drained, sends free units home).
    fn pump(&mut self, now_ms: u64, p: usize) {
        if self.is_home(p) && matches!(self.pools[p].bank.mode, BankMode::Recalling { .. }) {
            // The home core's own waiting reserves are in the recall's queue with everyone
            // else's: they are decided in arrival order when the recall ends.
            return;
        }
        while let Some(front) = self.pools[p].shard.waiting.front().copied() {
            match self.attempt(now_ms, p, &front.op) {
                Attempt::Done(result) => {
                    self.pools[p].shard.waiting.pop_front();
                    self.parked_total -= 1;
                    self.left_line(now_ms, p, &front.op, &result);
                    self.complete(front.ticket, result);
                }
                Attempt::Short => break,
            }
        }
        if self.is_home(p) {
            if self.pools[p].bank.mode == BankMode::Drained {
                self.maybe_undrain(p);
            }
            return;
        }
        let home = self.home(p);
        let pool = self.pools[p].def.id;
        if self.pools[p].shard.drained {
            let free = self.pools[p].shard.available();
            if free > 0 {
                self.send(home, PeerMsg::Return { pool, units: free });
            }
            let mut asks = Vec::new();
            for w in self.pools[p].shard.waiting.iter_mut().filter(|w| !w.asked) {
                w.asked = true;
                asks.push(PeerMsg::Borrow {
                    pool,
                    need: w.op.qty as u64,
                    ticket: Some(w.ticket),
                    priority: w.op.priority,
                });
            }
            for msg in asks {
                self.send(home, msg);
            }
        } else if !self.pools[p].shard.aggregate_outstanding {
            let shard = &self.pools[p].shard;
            let wanted: u64 = shard.waiting.iter().filter(|w| !w.asked).map(|w| w.op.qty as u64).sum();
            let need = wanted.saturating_sub(shard.available());
            if need > 0 {
                self.pools[p].shard.aggregate_outstanding = true;
                self.send(home, PeerMsg::Borrow { pool, need, ticket: None, priority: 0 });
            }
        }
    }

    fn start_recall(&mut self, now_ms: u64, p: usize) {
        let others = self.cfg.cores - 1;
        self.pools[p].bank.mode = BankMode::Recalling { acks_pending: others };
        let pool = self.pools[p].def.id;
        let me = self.cfg.core;
        for core in (0..self.cfg.cores).filter(|&c| c != me) {
            self.send(core, PeerMsg::Recall { pool });
        }
        if others == 0 {
            self.finish_recall(now_ms, p);
        }
    }

    /// Every shard has sent its free units home: decide every waiting demand exactly.
    fn finish_recall(&mut self, now_ms: u64, p: usize) {
        let pool = self.pools[p].def.id;
        let mut refused = false;
        let queue = std::mem::take(&mut self.pools[p].bank.queue);
        for d in queue {
            if d.from == self.cfg.core {
                let Some(parked) = self.unpark(p, d.ticket) else { continue };
                let result = match self.attempt(now_ms, p, &parked.op) {
                    Attempt::Done(result) => result,
                    Attempt::Short => {
                        refused = true;
                        self.sold_out(p)
                    }
                };
                self.left_line(now_ms, p, &parked.op, &result);
                self.complete(d.ticket, result);
            } else if self.usable(p, d.priority) >= d.need {
                self.send(d.from, PeerMsg::Grant { pool, units: d.need, ticket: Some(d.ticket) });
            } else {
                refused = true;
                self.send(d.from, PeerMsg::SoldOut { pool, ticket: d.ticket });
            }
        }
        if refused {
            self.pools[p].bank.mode = BankMode::Drained;
            self.maybe_undrain(p);
        } else {
            self.undrain(p);
        }
    }

    /// A drained pool that has gathered an eighth of its units that are not kept for
    /// priority reserves (at least one unit per core, at most all of them) goes back to
    /// normal.
    fn maybe_undrain(&mut self, p: usize) {
        // Of the units lower priorities may take (all of them without a kept share).
        let def = &self.pools[p].def;
        let general = def.general_units();
        let threshold = (general / 8).max(self.cfg.cores as u64).min(general.max(1));
        if self.usable(p, 0) >= threshold {
            self.undrain(p);
        }
    }

    fn undrain(&mut self, p: usize) {
        self.pools[p].bank.mode = BankMode::Normal;
        let pool = self.pools[p].def.id;
        let me = self.cfg.core;
        for core in (0..self.cfg.cores).filter(|&c| c != me) {
            self.send(core, PeerMsg::Undrain { pool });
        }
    }

    /// Handles a borrowing message from core `from`.
    pub fn on_peer(&mut self, now_ms: u64, from: u16, msg: PeerMsg) {
        self.tick(now_ms);
        let p = self.pool_index(msg.pool()).expect("peers only speak of pools every core knows");
        let pool = msg.pool();
        match msg {
            PeerMsg::Borrow { need, ticket: None, .. } => {
                let free = self.usable(p, 0);
                if self.pools[p].bank.mode == BankMode::Normal && free >= need {
                    let spare = (free - need) / self.cfg.cores as u64;
                    self.send(from, PeerMsg::Grant { pool, units: need + spare, ticket: None });
                } else {
                    if self.pools[p].bank.mode == BankMode::Normal {
                        self.start_recall(now_ms, p);
                    }
                    // After the recall message: the shard first drains, then borrows exactly.
                    self.send(from, PeerMsg::Grant { pool, units: 0, ticket: None });
                }
            }
            PeerMsg::Borrow { need, ticket: Some(ticket), priority, .. } => {
                let free = self.usable(p, priority);
                let demand = Demand { from, ticket, need, priority };
                match self.pools[p].bank.mode {
                    BankMode::Recalling { .. } => {
                        self.pools[p].bank.queue.push_back(demand);
                    }
                    _ if free >= need => {
                        self.send(from, PeerMsg::Grant { pool, units: need, ticket: Some(ticket) });
                    }
                    BankMode::Normal => {
                        self.pools[p].bank.queue.push_back(demand);
                        self.start_recall(now_ms, p);
                    }
                    BankMode::Drained => self.send(from, PeerMsg::SoldOut { pool, ticket }),
                }
            }
            PeerMsg::Grant { units, ticket, .. } => {
                self.receive_units(p, units);
                match ticket {
                    None => self.pools[p].shard.aggregate_outstanding = false,
                    Some(ticket) => self.serve_ticket(now_ms, p, ticket, None),
                }
                self.pump(now_ms, p);
            }
            PeerMsg::SoldOut { ticket, .. } => {
                let refusal = self.sold_out(p);
                self.serve_ticket(now_ms, p, ticket, Some(refusal));
                self.pump(now_ms, p);
            }
            PeerMsg::Recall { .. } => {
                // Drained, the shard sends its free units home and asks exactly for each
                // waiting reserve; the answer to the recall comes last, so the home core
                // decides those reserves in this same recall.
                self.pools[p].shard.drained = true;
                self.pump(now_ms, p);
                let free = self.pools[p].shard.available();
                self.send(from, PeerMsg::Returned { pool, units: free });
            }
            PeerMsg::Returned { units, .. } => {
                self.receive_units(p, units);
                let BankMode::Recalling { acks_pending } = self.pools[p].bank.mode else {
                    panic!("recall answer for pool {pool} without a recall");
                };
                if acks_pending == 1 {
                    self.finish_recall(now_ms, p);
                } else {
                    self.pools[p].bank.mode = BankMode::Recalling { acks_pending: acks_pending - 1 };
                }
            }
            PeerMsg::Return { units, .. } => {
                self.receive_units(p, units);
                self.pump(now_ms, p);
            }
            PeerMsg::Undrain { .. } => {
                self.pools[p].shard.drained = false;
                self.pump(now_ms, p);
            }
        }
    }

    /// Decides parked reserve `ticket` now: held if it fits, else `refusal` (or, without a
    /// refusal, it waits again and asks anew).
    fn serve_ticket(&mut self, now_ms: u64, p: usize, ticket: u64, refusal: Option<OpResult>) {
        let Ok(pos) = self.pools[p].shard.waiting.binary_search_by_key(&ticket, |w| w.ticket) else { return };
        let parked = self.pools[p].shard.waiting[pos];
        match (self.attempt(now_ms, p, &parked.op), refusal) {
            (Attempt::Done(result), _) | (Attempt::Short, Some(result)) => {
                self.pools[p].shard.waiting.remove(pos);
                self.parked_total -= 1;
                self.left_line(now_ms, p, &parked.op, &result);
                self.complete(ticket, result);
            }
            (Attempt::Short, None) => self.pools[p].shard.waiting[pos].asked = false,
        }
    }

    // ----- invariants --------------------------------------------------------------------------

    /// Checks this core's invariants (cheap: per pool, not per hold). Panics on a violation.
    pub fn check_invariants(&self) {
        if let Some(broken) = self.broken_invariant() {
            panic!("{broken}");
        }
    }

    /// The first invariant of [`Self::check_invariants`] that does not hold, if any.
    pub fn broken_invariant(&self) -> Option<String> {
        if let Some(broken) = self.accounting_failure() {
            return Some(broken);
        }
        let mut parked = 0;
        for slot in &self.pools {
            let s = &slot.shard;
            let id = slot.def.id;
            let home = slot.def.home_core(self.cfg.cores) == self.cfg.core;
            if !home && s.drained && s.available() != 0 {
                return Some(format!("drained shard of pool {id} keeps free units"));
            }
            let recalling = matches!(slot.bank.mode, BankMode::Recalling { .. });
            if home && !recalling && !s.waiting.is_empty() {
                return Some(format!("home line of pool {id} waits outside a recall"));
            }
            parked += s.waiting.len() as u32;
        }
        (parked != self.parked_total).then(|| format!("{parked} reserves parked, {} counted", self.parked_total))
    }

    /// The first shard that holds and confirms more units than it has (an oversell), or
    /// whose units do not add up with those lent and borrowed (units created or lost).
    pub fn accounting_failure(&self) -> Option<String> {
        self.pools.iter().find_map(|slot| slot.shard.accounting_failure(slot.def.id))
    }

    /// Notes that pool `p`'s shard changed, for [`Self::check_touched`].
    fn touch(&mut self, p: usize) {
        if self.touched.len() < TOUCHED_MAX && self.touched.last() != Some(&p) {
            self.touched.push(p);
        }
    }

    /// Checks the accounting of every shard changed since the last call (`held + confirmed
    /// <= capacity`, units conserved: [`Shard::accounting_failure`]) and panics on a
    /// violation. Cheap (a few compares per shard changed): the runtime runs it after every
    /// batch, in release builds too.
    pub fn check_touched(&mut self) {
        let broken = if self.touched.len() >= TOUCHED_MAX {
            self.accounting_failure()
        } else {
            self.touched.iter().find_map(|&p| self.pools[p].shard.accounting_failure(self.pools[p].def.id))
        };
        if let Some(broken) = broken {
            panic!("invariant broken after a batch: {broken}");
        }
        self.touched.clear();
    }

    /// Checks the invariants and, record by record, that each shard's `held` is the sum of
    /// its live holds (slow; for tests and for restoring snapshots).
    pub fn audit(&self) {
        if let Some(broken) = self.audit_failure() {
            panic!("{broken}");
        }
    }

    /// The first failure of [`Self::audit`], if any.
    pub fn audit_failure(&self) -> Option<String> {
        if let Some(broken) = self.broken_invariant() {
            return Some(broken);
        }
        let mut held = vec![0u64; self.pools.len()];
        let mut held_count = 0;
        for (_, h) in self.holds.iter() {
            if h.state() == ReservationState::Held {
                held[h.pool() as usize - 1] += h.qty() as u64;
                held_count += 1;
            }
        }
        if held_count != self.held_count {
            return Some(format!("{held_count} reservations held, {} counted", self.held_count));
        }
        let mut pools = self.pools.iter().zip(held);
        if let Some((slot, sum)) = pools.find(|(slot, sum)| slot.shard.held != *sum) {
            return Some(format!(
                "held units of pool {} ({}) disagree with its holds ({sum})",
                slot.def.id, slot.shard.held
            ));
        }
        self.user_counts_failure()
    }

    /// Checks the per-user entries against the reservations: held and pending units of
    /// every user of every pool with per-user rules, and no entry in other pools.
    fn user_counts_failure(&self) -> Option<String> {
        let mut expected: HashMap<(u32, u128), (u64, u64)> = HashMap::new();
        for (_, h) in self.holds.iter() {
            let per_user = self.pool_index(h.pool()).is_some_and(|p| self.pools[p].def.rules.per_user());
            if per_user && h.state() == ReservationState::Held {
                expected.entry((h.pool(), h.user())).or_default().0 += h.qty() as u64;
            }
        }
        for slot in self.pools.iter().filter(|slot| slot.def.rules.per_user()) {
            for w in &slot.shard.waiting {
                expected.entry((slot.def.id, w.op.user)).or_default().1 += w.op.qty as u64;
            }
        }
        for e in self.users.iter() {
            let per_user = self.pool_index(e.pool).is_some_and(|p| self.pools[p].def.rules.per_user());
            if !per_user {
                return Some(format!("user {:x} has an entry in pool {}, which has no per-user rules", e.user, e.pool));
            }
            let (held, pending) = expected.remove(&(e.pool, e.user)).unwrap_or_default();
            if (e.state.held, e.state.pending) != (held, pending) {
                return Some(format!(
                    "user {:x} in pool {}: {} held and {} pending counted, {held} and {pending} in the reservations",
                    e.user, e.pool, e.state.held, e.state.pending
                ));
            }
        }
        expected.into_iter().next().map(|((pool, user), (held, pending))| {
            format!("user {user:x} in pool {pool} has {held} held and {pending} pending units and no entry")
        })
    }

    /// Free units of pool `pool` on this shard (for tests and capacity hints).
    pub fn available(&self, pool: u32) -> Option<u64> {
        self.pool_index(pool).map(|p| self.pools[p].shard.available())
    }
}

/// The event `state` of reservation `id` for its user.
fn event(id: u128, at_ms: u64, qty: u32, state: ReservationState) -> Option<UserEvent> {
    Some(UserEvent { id, at_ms, qty, state: state as u8 })
}

// ----- snapshots -------------------------------------------------------------------------------

impl Engine {
    /// Starts a snapshot of this core's state as it is now (between two commands): answers
    /// everything but the reservation records, which [`Self::snapshot_chunk`] then gives
    /// while commands keep being applied (copy-on-write: what it gives is the state at
    /// this call).
    pub fn snapshot_begin(&mut self) -> SnapshotHead {
        assert!(self.outbox.is_empty() && self.completions.is_empty(), "snapshots are taken between commands");
        let pools = self
            .pools
            .iter()
            .map(|slot| {
                let (d, s, b) = (&slot.def, &slot.shard, &slot.bank);
                let (bank_mode, bank_acks_pending) = match b.mode {
                    BankMode::Normal => (0, 0),
                    BankMode::Recalling { acks_pending } => (1, acks_pending),
                    BankMode::Drained => (2, 0),
                };
                PoolSnap {
                    id: d.id,
                    name: d.name.to_string(),
                    kind: d.kind as u8,
                    capacity: d.capacity,
                    hold_ttl_ms_default: d.hold_ttl_ms_default,
                    hold_ttl_ms_max: d.hold_ttl_ms_max,
                    active: d.active,
                    rules: d.rules,
                    description: d.description.to_string(),
                    shard_capacity: s.capacity,
                    held: s.held,
                    confirmed: s.confirmed,
                    lent: s.lent,
                    borrowed: s.borrowed,
                    // Two's complement: the snapshot's field stays a u64.
                    share: s.share as u64,
                    drained: s.drained,
                    aggregate_outstanding: s.aggregate_outstanding,
                    waiting: s
                        .waiting
                        .iter()
                        .map(|w| {
                            let mut op = [0u8; ReserveOp::SIZE];
                            w.op.encode(&mut op);
                            ParkedSnap { ticket: w.ticket, op, asked: w.asked }
                        })
                        .collect(),
                    bank_mode,
                    bank_acks_pending,
                    bank_queue: b
                        .queue
                        .iter()
                        .map(|d| DemandSnap { from: d.from, ticket: d.ticket, need: d.need, priority: d.priority })
                        .collect(),
                }
            })
            .collect();
        let links = self
            .links
            .iter()
            .map(|l| LinkSnap {
                sent: l.sent,
                received: l.received,
                unacked: l.unacked.iter().map(|&(seq, msg)| MsgSnap { seq, msg: msg.encode() }).collect(),
            })
            .collect();
        let records = self.holds.snapshot_begin() as u64;
        let c = &self.cfg;
        SnapshotHead {
            format: SNAPSHOT_FORMAT,
            core: c.core,
            cores: c.cores,
            holds_max: c.holds_max,
            parked_max: c.parked_max,
            retention_ms: c.retention_ms,
            retention_min_ms: c.retention_min_ms,
            retained_max: c.retained_max,
            pools_max: c.pools_max,
            last_now_ms: self.last_now_ms,
            next_ticket: self.next_ticket,
            stats: [
                self.stats.operations,
                self.stats.borrow_messages,
                self.stats.expirations,
                self.stats.retention_evictions,
                self.stats.retention_forced,
                self.stats.retention_busy,
            ],
            pools,
            links,
            users: self.users.sorted(),
            records,
        }
    }

    /// Appends up to `max` reservation records of the snapshot in progress to `out`; true
    /// once every record has been given.
    pub fn snapshot_chunk(&mut self, max: usize, out: &mut Vec<HoldSnap>) -> bool {
        self.holds.snapshot_chunk(max, out)
    }

    /// Rebuilds a core's state from a snapshot. Fails with a reason if the snapshot's data is
    /// malformed or decodes into a state that breaks an invariant (counters that disagree
    /// with the records, more units than the pool has).
    pub fn restore(head: &SnapshotHead, records: &[HoldSnap]) -> Result<Engine, String> {
        if head.format != SNAPSHOT_FORMAT {
            return Err(format!("snapshot format {} is not {SNAPSHOT_FORMAT}", head.format));
        }
        if head.records != records.len() as u64 || head.links.len() != head.cores as usize {
            return Err("snapshot record or link count does not match its header".into());
        }
        let cfg = EngineConfig {
            core: head.core,
            cores: head.cores,
            holds_max: head.holds_max,
            parked_max: head.parked_max,
            retention_ms: head.retention_ms,
            retention_min_ms: head.retention_min_ms,
            retained_max: head.retained_max,
            pools_max: head.pools_max,
        };
        if cfg.retained_max < cfg.holds_max
            || cfg.retained_max >= super::holds::RETAINED
            || cfg.holds_max >= super::holds::RETAINED
        {
            return Err(format!(
                "snapshot limits out of range: {} live holds, {} finished",
                cfg.holds_max, cfg.retained_max
            ));
        }
        let mut e = Engine::new(cfg, head.last_now_ms);
        for (i, p) in head.pools.iter().enumerate() {
            let kind = PoolKind::from_u8(p.kind).ok_or_else(|| format!("pool {}: kind {}", p.id, p.kind))?;
            if p.id as usize != i + 1 {
                return Err(format!("pool ids are not dense: {} at position {}", p.id, i + 1));
            }
            let def = PoolDef {
                id: p.id,
                name: p.name.as_str().into(),
                kind,
                capacity: p.capacity,
                hold_ttl_ms_default: p.hold_ttl_ms_default,
                hold_ttl_ms_max: p.hold_ttl_ms_max,
                active: p.active,
                rules: p.rules,
                description: p.description.as_str().into(),
            };
            if !def.rules.valid() {
                return Err(format!("pool {}: invalid rules", p.id));
            }
            if !super::pool::valid_pool_description(&def.description) {
                return Err(format!("pool {}: invalid description", p.id));
            }
            let mut waiting = VecDeque::with_capacity(p.waiting.len());
            for w in &p.waiting {
                let op =
                    ReserveOp::decode(&w.op).map_err(|_| format!("pool {}: a parked reserve is malformed", p.id))?;
                waiting.push_back(Parked { ticket: w.ticket, op, asked: w.asked });
            }
            e.parked_total += waiting.len() as u32;
            let shard = Shard {
                capacity: p.shard_capacity,
                held: p.held,
                confirmed: p.confirmed,
                lent: p.lent,
                borrowed: p.borrowed,
                share: p.share as i64,
                drained: p.drained,
                aggregate_outstanding: p.aggregate_outstanding,
                waiting,
            };
            let mode = match p.bank_mode {
                0 => BankMode::Normal,
                1 => BankMode::Recalling { acks_pending: p.bank_acks_pending },
                2 => BankMode::Drained,
                other => return Err(format!("pool {}: bank mode {other}", p.id)),
            };
            let queue = p
                .bank_queue
                .iter()
                .map(|d| Demand { from: d.from, ticket: d.ticket, need: d.need, priority: d.priority })
                .collect();
            e.names.insert(def.name.clone(), def.id);
            e.pools.push(PoolSlot { def, shard, bank: Bank { mode, queue } });
        }
        for (link, snap) in e.links.iter_mut().zip(&head.links) {
            link.sent = snap.sent;
            link.received = snap.received;
            for m in &snap.unacked {
                let msg = PeerMsg::decode(&m.msg).ok_or("a kept message is malformed")?;
                link.unacked.push_back((m.seq, msg));
            }
        }
        e.next_ticket = head.next_ticket;
        for u in &head.users {
            let tracks = e.pool_index(u.pool).is_some_and(|p| e.pools[p].def.rules.tracks_users());
            let (len, next) = (u.recent.len as usize, u.recent.next as usize);
            if len > RECENT_EVENTS || next >= RECENT_EVENTS || (len > 0 && !tracks) {
                return Err(format!("user {:x} in pool {}: recent events out of shape", u.user, u.pool));
            }
        }
        e.users = Users::restore(&head.users, head.retention_ms);
        let [operations, borrow_messages, expirations, retention_evictions, retention_forced, retention_busy] =
            head.stats;
        e.stats = EngineStats {
            operations,
            borrow_messages,
            expirations,
            retention_evictions,
            retention_forced,
            retention_busy,
        };
        // Live holds come first, then the finished reservations oldest first (their order in
        // the ring, which decides which one is forgotten first).
        let mut finished_at = 0;
        for r in records {
            let state = ReservationState::from_u8(r.state).filter(|s| *s != ReservationState::None);
            let state = state.ok_or_else(|| format!("reservation {:x}: state {}", r.id, r.state))?;
            if e.pool_index(r.pool).is_none() || r.qty == 0 || r.qty > HOLD_QTY_MAX || e.holds.find(r.id).is_some() {
                return Err(format!("reservation {:x} is not consistent with the snapshot", r.id));
            }
            if state == ReservationState::Held {
                if !e.holds.ring().is_empty() || r.commit_ref != 0 {
                    return Err(format!("reservation {:x}: a live hold out of place", r.id));
                }
                e.held_count += 1;
                let slot = e.holds.insert(Hold::new(r.id, r.user, r.pool, r.qty, r.when_ms));
                let slot = slot.ok_or("more live holds than holds_max")?;
                e.wheel.insert(slot, r.when_ms, &mut e.holds);
            } else {
                let ring = e.holds.ring();
                if ring.len() >= ring.capacity() || r.when_ms < finished_at {
                    return Err(format!("reservation {:x}: finished records out of order or too many", r.id));
                }
                finished_at = r.when_ms;
                e.holds.retain(Record::new(r.id, r.user, r.pool, r.qty, state, r.when_ms), r.commit_ref);
            }
        }
        match e.audit_failure() {
            Some(broken) => Err(format!("the snapshot breaks an invariant: {broken}")),
            None => Ok(e),
        }
    }
}
