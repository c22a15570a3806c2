//! The pure state machine: everything a core decides, with no I/O and no clock of its own.
//!
//! - [`engine`]: one core's state, `apply(now, command) -> outcome`, and the borrowing
//!   protocol between cores.
//! - [`pool`]: pool definitions, shards and the home core's borrowing state.
//! - [`holds`]: the reservation table (live holds in a slab, one index, allocated once).
//! - [`retained`]: finished reservations kept for repeats, in a ring sized from a budget.
//! - [`huge`]: large tables on 2 MiB pages.
//! - [`users`]: per-user state of pools with per-user rules (limits, rates).
//! - [`wheel`]: the timing wheel that expires holds without scanning them.
//! - [`snapshot`]: the plain-data form of a core's state, for snapshots.
//! - [`cluster`]: several engines wired together with an in-memory, ordered, seedable
//!   network: the deterministic simulation used by tests.
//! - [`model`]: the reference model the simulation is checked against.

pub mod cluster;
pub mod engine;
pub mod holds;
pub mod huge;
pub mod model;
pub mod pool;
pub mod retained;
pub mod snapshot;
pub mod users;
pub mod wheel;

pub use engine::{Command, Completion, Engine, EngineConfig, EngineStats, Envelope, Link, Outcome, PeerMsg, Reply};
pub use pool::{BankMode, PoolDef};
