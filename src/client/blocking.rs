//! The blocking face of [`AsyncClient`] (feature `tokio`), for applications without an
//! async runtime: the same routing, batching, timeouts and retries, driven by a small
//! runtime of its own. Calls from many threads at once are batched together;
//! [`BlockingClient::reserve_many`] sends a slice at once.
//!
//! ```no_run
//! use shardcap::client::blocking::BlockingClient;
//! use shardcap::protocol::{ReserveOp, user_id_from_name};
//!
//! let client = BlockingClient::connect("127.0.0.1:7400")?;
//! let pool = client.pool_id("demo")?;
//! let op = ReserveOp { id: 42, user: user_id_from_name("alice"), pool, qty: 2, ttl_ms: 0, priority: 0 };
//! let held = client.reserve(op)?;
//! assert!(!held.repeat);
//! # Ok::<(), shardcap::client::Error>(())
//! ```

use super::Error;
use super::tokio::{AsyncClient, Done, Options};
use crate::protocol::control::Hello;
use crate::protocol::{ConfirmOp, ExtendOp, LookupOp, LookupResult, ReleaseOp, ReserveOp};

/// A shard-aware, batching client with blocking calls; share it between threads by
/// reference (`&self` everywhere) or in an `Arc`.
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: AsyncClient,
}

impl BlockingClient {
    /// Connects to a server's shared port with the default [`Options`].
    pub fn connect(addr: &str) -> Result<BlockingClient, Error> {
        BlockingClient::connect_with(addr, Options::default())
    }

    /// Connects with `options`.
    pub fn connect_with(addr: &str, options: Options) -> Result<BlockingClient, Error> {
        // One worker thread runs the connections while callers block.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shardcap-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Io(e.to_string()))?;
        let client = runtime.block_on(AsyncClient::connect_with(addr, options))?;
        Ok(BlockingClient { runtime, client })
    }

    /// The async client underneath (its clones share the connections).
    pub fn as_async(&self) -> &AsyncClient {
        &self.client
    }

    /// The server's topology and limits.
    pub fn hello(&self) -> &Hello {
        self.client.hello()
    }

    /// The id of the pool named `name`.
    pub fn pool_id(&self, name: &str) -> Result<u32, Error> {
        self.runtime.block_on(self.client.pool_id(name))
    }

    /// The last capacity hint seen for `pool`.
    pub fn capacity_hint(&self, pool: u32) -> Option<u64> {
        self.client.capacity_hint(pool)
    }

    /// Holds units for a user.
    pub fn reserve(&self, op: ReserveOp) -> Result<Done, Error> {
        self.runtime.block_on(self.client.reserve(op))
    }

    /// Reserves all of `ops` at once (batched per core); one result per operation, in order.
    pub fn reserve_many(&self, ops: &[ReserveOp]) -> Vec<Result<Done, Error>> {
        self.runtime.block_on(async {
            let calls: Vec<_> = ops
                .iter()
                .map(|&op| {
                    let client = self.client.clone();
                    tokio::spawn(async move { client.reserve(op).await })
                })
                .collect();
            let mut results = Vec::with_capacity(calls.len());
            for call in calls {
                results.push(call.await.unwrap_or_else(|e| Err(Error::Protocol(e.to_string()))));
            }
            results
        })
    }

    /// Makes a hold permanent.
    pub fn confirm(&self, op: ConfirmOp) -> Result<Done, Error> {
        self.runtime.block_on(self.client.confirm(op))
    }

    /// Gives a hold back.
    pub fn release(&self, op: ReleaseOp) -> Result<Done, Error> {
        self.runtime.block_on(self.client.release(op))
    }

    /// Moves a hold's expiry.
    pub fn extend(&self, op: ExtendOp) -> Result<Done, Error> {
        self.runtime.block_on(self.client.extend(op))
    }

    /// Looks a reservation up.
    pub fn lookup(&self, op: LookupOp) -> Result<LookupResult, Error> {
        self.runtime.block_on(self.client.lookup(op))
    }
}
