//! # shardcap
//!
//! A capacity allocation server: a fixed amount of something (seats, stock, slots) is handed
//! out to many users at line rate, and never more than exists.
//!
//! The modules follow the path of a request:
//!
//! - [`protocol`]: frame header, operation records, status codes, the frame parser and the
//!   user-to-core hash. No I/O; shared by the server and the client.
//! - `net` (feature `server`): listeners and connections on glommio's io_uring sockets.
//! - `runtime` (feature `server`): one pinned executor per core, the mesh of channels
//!   between cores, routing of operations to their user's home core, the borrowing traffic.
//! - [`shard`]: the pure, deterministic state machine of one core — pools, shards, holds,
//!   expiry and the borrowing protocol. `apply(state, now, command) -> outcome`, no I/O.
//! - [`client`]: the clients, over [`protocol`]: a low-level blocking client with
//!   pipelining, and (feature `tokio`) the shard-aware async client with automatic batching
//!   and retries, its blocking face, and fallback across servers.
//! - `wal` (feature `server`): each core's write-ahead log, snapshots and recovery.
//! - [`config`] (feature `server`): the TOML configuration with every limit and its unit.
//! - `admin` (feature `server`): Prometheus metrics from core-local counts, and the admin
//!   HTTP port (metrics, health, the JSON API) on a thread of its own.
//! - [`top`] (feature `server`): `shardcap top`, a live terminal view of a running server's
//!   `/metrics`: per-core throughput and latency, pool capacity.

#[cfg(feature = "server")]
pub mod admin;
pub mod client;
pub mod protocol;
pub mod shard;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod net;
#[cfg(feature = "server")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod top;
#[cfg(feature = "server")]
pub mod wal;
