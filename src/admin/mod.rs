//! Observability and administration: the admin HTTP port.
//!
//! The port is served by a thread of its own running hyper on a single-threaded tokio
//! runtime, off the cores: it serves `/metrics` (Prometheus text), `/healthz`, `/readyz`
//! and the JSON API under `/v1/` (docs/OBSERVABILITY.md). It reaches the cores only by
//! message: each core has a [`CoreMsg`] channel that one of its tasks reads. A scrape asks
//! every core to flush its counts into the registry ([`metrics`]); an API request asks
//! core 0, which does what a control frame of the binary protocol would.

pub mod http;
pub mod json;
pub mod metrics;

use crate::protocol::LookupOp;
use crate::protocol::control::{PoolCreate, PoolInfo, PoolRules, PoolStatus, UserActivity};
use crate::protocol::{LookupResult, Status};

/// Compares a token shown by a client with the configured secret in a time that does not
/// depend on where they differ (only on their lengths), so that the time of a refusal does
/// not tell how much of a guess was right. Used by the admin port's bearer check and the
/// data port's `auth`.
pub fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len() && given.iter().zip(secret).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request from the admin thread to a core.
pub enum CoreMsg {
    /// Flush the core's counts into the registry and report the pools chosen for export.
    Flush {
        /// Which pools to report.
        pools: std::sync::Arc<PoolSelection>,
        /// Where the report goes.
        reply: flume::Sender<CoreReport>,
    },
    /// A request of the JSON API.
    Control {
        /// The request.
        req: ControlReq,
        /// Where the answer goes.
        reply: flume::Sender<ControlResp>,
    },
}

/// The pools whose numbers are exported as metrics: a bounded set, so that label
/// cardinality does not grow with the number of pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSelection {
    /// These pools, by name (missing ones are skipped).
    Named(Vec<String>),
    /// The first this many pools by id.
    First(u32),
}

/// One core's numbers of one exported pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolReport {
    /// Pool id.
    pub id: u32,
    /// Pool name.
    pub name: String,
    /// True on the pool's home core, whose capacity is the pool's (it decides changes).
    pub home: bool,
    /// The pool's capacity as this core knows it.
    pub capacity: u64,
    /// Units held on this core's shard.
    pub held: u64,
    /// Units confirmed on this core's shard.
    pub confirmed: u64,
}

/// What a core reports to a scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreReport {
    /// The core.
    pub core: u16,
    /// Pools it knows.
    pub pool_count: u32,
    /// The selected pools it knows.
    pub pools: Vec<PoolReport>,
}

/// A pool named in a request path: a positive number is an id, anything else a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolKey(pub String);

/// A change to a pool, as the JSON API asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolChange {
    /// Accept or refuse new reserves.
    Active(bool),
    /// Replace the rules.
    Rules(PoolRules),
    /// Change the capacity.
    Capacity(u64),
    /// Rename.
    Rename(String),
    /// Replace the description.
    Describe(String),
}

/// A request of the JSON API, run on core 0.
#[derive(Clone, Debug)]
pub enum ControlReq {
    /// Up to `limit` pool definitions with ids above `start_after`.
    ListPools {
        /// Ids above this one.
        start_after: u32,
        /// At most this many.
        limit: usize,
    },
    /// A pool's status with its per-shard breakdown.
    PoolStatus(PoolKey),
    /// Create a pool.
    CreatePool(PoolCreate),
    /// Apply changes to a pool, in order; the first refusal stops them.
    ChangePool(PoolKey, Vec<PoolChange>),
    /// A reservation (user 0: every core is asked).
    Lookup(LookupOp),
    /// A user's activity in one pool, or in every pool.
    UserActivity {
        /// The user.
        user: u128,
        /// One pool, or every pool.
        pool: Option<PoolKey>,
        /// At most this many recent events per pool.
        recent: u8,
    },
}

/// The answer to a [`ControlReq`].
#[derive(Clone, Debug)]
pub enum ControlResp {
    /// Pool definitions, and whether more follow.
    Pools(Vec<PoolInfo>, bool),
    /// A pool's status.
    Status(Result<PoolStatus, Status>),
    /// A pool's definition after a change. On a refusal, the number of changes applied
    /// before it.
    Pool(Result<PoolInfo, (Status, usize)>),
    /// A pool's definition after a creation, and whether this request created it (`false`:
    /// the same pool existed already).
    Created(Result<(PoolInfo, bool), Status>),
    /// A reservation.
    Lookup(LookupResult),
    /// A user's activity, pool by pool, with each pool's name.
    Activity(Result<Vec<(String, UserActivity)>, Status>),
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"", b"x"));
        assert!(!same_secret(b"x", b""));
    }
}
