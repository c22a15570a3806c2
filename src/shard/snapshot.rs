//! What a snapshot of one core's state holds, as plain data: the pools with their shards,
//! waiting lines and borrowing state, the links with other cores, and the reservation
//! records ([`HoldSnap`], read in chunks while the core keeps running). The in-memory
//! layout of the state machine can change without changing this format. With the
//! `server` feature these types are serialized with rkyv.

pub use super::holds::HoldSnap;
pub use super::users::UserPool;
use crate::protocol::control::PoolRules;

/// The version of this format.
pub const SNAPSHOT_FORMAT: u32 = 6;

/// Everything but the reservation records.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct SnapshotHead {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// Core index.
    pub core: u16,
    /// Core count.
    pub cores: u16,
    /// `holds_max`, `parked_max`, `retention_ms`, `pools_max` in force.
    pub holds_max: u32,
    /// Most parked reserves.
    pub parked_max: u32,
    /// Longest retention of finished records, in ms.
    pub retention_ms: u64,
    /// Shortest retention of finished records, in ms.
    pub retention_min_ms: u64,
    /// Most finished records kept.
    pub retained_max: u32,
    /// Most pools.
    pub pools_max: u32,
    /// The latest time the state machine had seen.
    pub last_now_ms: u64,
    /// The next ticket for a parked reserve.
    pub next_ticket: u64,
    /// Counters: operations, borrowing messages, expirations, and finished reservations
    /// evicted, forced out and refused room ([`super::EngineStats`]).
    pub stats: [u64; 6],
    /// Pools in id order.
    pub pools: Vec<PoolSnap>,
    /// Links with every core (this one's entry unused), by core index.
    pub links: Vec<LinkSnap>,
    /// Per-user entries of pools with per-user rules, by pool and user.
    pub users: Vec<UserPool>,
    /// How many reservation records follow: the live holds, then the finished ones oldest
    /// first (their `when_ms` is when they finished).
    pub records: u64,
}

/// A pool: its definition, this core's shard and, on its home core, the borrowing state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct PoolSnap {
    /// Pool id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Kind byte.
    pub kind: u8,
    /// Total units.
    pub capacity: u64,
    /// Default hold TTL, ms.
    pub hold_ttl_ms_default: u32,
    /// Maximum hold TTL, ms.
    pub hold_ttl_ms_max: u32,
    /// Accepting reserves.
    pub active: bool,
    /// Allocation rules.
    pub rules: PoolRules,
    /// Description.
    pub description: String,
    /// Shard: units owned.
    pub shard_capacity: u64,
    /// Shard: units held.
    pub held: u64,
    /// Shard: units confirmed.
    pub confirmed: u64,
    /// Shard: units sent away, ever.
    pub lent: u64,
    /// Shard: units received, ever.
    pub borrowed: u64,
    /// Shard: its share (`Shard::share`, an i64 stored in two's complement).
    pub share: u64,
    /// Shard: drained.
    pub drained: bool,
    /// Shard: an aggregate borrow is outstanding.
    pub aggregate_outstanding: bool,
    /// Shard: the waiting line, first to last.
    pub waiting: Vec<ParkedSnap>,
    /// Bank mode: 0 normal, 1 recalling, 2 drained.
    pub bank_mode: u8,
    /// Bank: recall answers still missing.
    pub bank_acks_pending: u16,
    /// Bank: demands waiting for the end of a recall.
    pub bank_queue: Vec<DemandSnap>,
}

/// A parked reserve.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct ParkedSnap {
    /// Its ticket.
    pub ticket: u64,
    /// The reserve, in its wire encoding.
    pub op: [u8; 48],
    /// An exact borrow for it is outstanding.
    pub asked: bool,
}

/// A demand at the home core.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct DemandSnap {
    /// Asking core.
    pub from: u16,
    /// Its parked reserve.
    pub ticket: u64,
    /// Units.
    pub need: u64,
    /// The reserve's priority.
    pub priority: u8,
}

/// The link with one other core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct LinkSnap {
    /// Last sequence number sent.
    pub sent: u64,
    /// Last sequence number applied.
    pub received: u64,
    /// Messages not acknowledged yet: sequence number and encoding.
    pub unacked: Vec<MsgSnap>,
}

/// A kept message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct MsgSnap {
    /// Sequence number on the link.
    pub seq: u64,
    /// [`super::PeerMsg`] encoding.
    pub msg: [u8; 24],
}
