//! Fallback across independent servers (feature `tokio`): one pool per server, e.g. one
//! per region or venue, and reserves that go elsewhere when their first choice is sold out
//! or unreachable.
//!
//! **What fallback means.** Within one server there is none to do: the server's shards
//! borrow from each other, and `sold_out` is decided only by the pool's home core while
//! every free unit of the pool is with it, so a `sold_out` from a server means that
//! server's whole pool is taken (no phantom sold-out). Across servers, a reserve that is
//! refused for capacity (`sold_out`), or for a pool that does not sell now (`pool_inactive`,
//! `not_open`, `closed`), answered `busy`, or whose server could not be reached (nothing
//! was sent), is tried on another server,
//! chosen by the **power of two choices**: two of the servers not tried yet, picked at
//! random, and of those the one with more capacity left by the last hint seen (a server
//! with no hint yet counts as having most). Refusals that would be the same anywhere (an
//! invalid quantity, a limit per user) are returned at once, and so is a failure whose
//! outcome is unknown (`Timeout`, `Disconnected`: the server may hold the units): reserving
//! elsewhere then could hold them twice. Send such a reserve again with the same id and the
//! same first choice; the server that got it answers a repeat.
//!
//! The random picks come from a hash of the reservation id.
//!
//! ```no_run
//! # async fn run() -> Result<(), shardcap::client::Error> {
//! use shardcap::client::fallback::Fallback;
//! use shardcap::protocol::{ReserveOp, user_id_from_name};
//!
//! let venues = Fallback::connect(&[("10.0.0.1:7400", "hall-a"), ("10.0.0.2:7400", "hall-b")]).await?;
//! let op = ReserveOp { id: 7, user: user_id_from_name("alice"), pool: 0, qty: 1, ttl_ms: 0, priority: 0 };
//! let (venue, held) = venues.reserve(op, 0).await?;
//! println!("held at {venue} until {}", held.expires_at_ms);
//! # Ok(()) }
//! ```

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Error;
use super::tokio::{AsyncClient, Done};
use crate::protocol::{ReserveOp, Status};

/// One server and its pool.
struct Venue {
    addr: String,
    pool_name: String,
    /// The client and the pool's id, once connected.
    link: tokio::sync::OnceCell<(AsyncClient, u32)>,
}

/// Reserves across several servers with fallback by the power of two choices.
pub struct Fallback {
    venues: Vec<Venue>,
}

impl Fallback {
    /// Servers and the name of the pool each sells. Servers that cannot be reached now are
    /// tried again when a reserve needs them; at least one must answer.
    pub async fn connect(targets: &[(&str, &str)]) -> Result<Fallback, Error> {
        let venues: Vec<Venue> = targets
            .iter()
            .map(|(addr, pool)| Venue {
                addr: addr.to_string(),
                pool_name: pool.to_string(),
                link: tokio::sync::OnceCell::new(),
            })
            .collect();
        let fallback = Fallback { venues };
        let mut last = Error::Io("no servers given".into());
        let mut any = false;
        for v in &fallback.venues {
            match v.client().await {
                Ok(_) => any = true,
                Err(e) => last = e,
            }
        }
        if any { Ok(fallback) } else { Err(last) }
    }

    /// The number of servers.
    pub fn len(&self) -> usize {
        self.venues.len()
    }

    /// True when no server is configured.
    pub fn is_empty(&self) -> bool {
        self.venues.is_empty()
    }

    /// The last capacity hint of server `venue`'s pool (`None`: not seen yet or not
    /// connected).
    pub fn capacity_hint(&self, venue: usize) -> Option<u64> {
        self.venues[venue].link.get().and_then(|(client, pool)| client.capacity_hint(*pool))
    }

    /// Reserves on server `first` or, if it is sold out or unreachable, on others picked by
    /// the power of two choices. `op.pool` is ignored: each server's configured pool is
    /// used. Answers the server that holds the units. When every server refuses, the
    /// error is that of the last one tried.
    pub async fn reserve(&self, op: ReserveOp, first: usize) -> Result<(usize, Done), Error> {
        let mut untried: Vec<usize> = (0..self.venues.len()).filter(|&v| v != first).collect();
        let mut next = first;
        let mut round = 0u64;
        loop {
            let error = match self.try_venue(next, op).await {
                Ok(done) => return Ok((next, done)),
                Err(e) if !worth_another(&e) => return Err(e),
                Err(e) => e,
            };
            if untried.is_empty() {
                return Err(error);
            }
            round += 1;
            next = self.pick(&mut untried, op.id, round);
        }
    }

    async fn try_venue(&self, venue: usize, op: ReserveOp) -> Result<Done, Error> {
        let (client, pool) = self.venues[venue].client().await?;
        client.reserve(ReserveOp { pool: *pool, ..op }).await
    }

    /// Two of `untried` by a hash of the reservation id, and of those the one with more
    /// capacity left; removed from `untried`.
    fn pick(&self, untried: &mut Vec<usize>, id: u128, round: u64) -> usize {
        let n = untried.len();
        let h = xxh3_64_with_seed(&id.to_le_bytes(), round);
        let a = (h % n as u64) as usize;
        let b = if n == 1 { a } else { (a + 1 + ((h >> 32) % (n as u64 - 1)) as usize) % n };
        let ha = self.capacity_hint(untried[a]).unwrap_or(u64::MAX);
        let hb = self.capacity_hint(untried[b]).unwrap_or(u64::MAX);
        let chosen = if hb > ha { b } else { a };
        untried.remove(chosen)
    }
}

/// True for a refusal that another server may not give: no capacity, a pool that does not
/// sell now, `busy`, or a server that could not be reached. Not for a failure whose outcome
/// is unknown: the units may be held here.
fn worth_another(e: &Error) -> bool {
    match e {
        Error::Status { status, .. } => {
            matches!(
                status,
                Status::SoldOut | Status::PoolInactive | Status::NotOpen | Status::Closed | Status::PoolNotFound
            )
        }
        Error::Busy { .. } | Error::Io(_) => true,
        Error::Timeout | Error::Disconnected(_) | Error::Protocol(_) => false,
    }
}

impl Venue {
    /// The connected client and pool id, connecting first if needed.
    async fn client(&self) -> Result<&(AsyncClient, u32), Error> {
        self.link
            .get_or_try_init(|| async {
                let client = AsyncClient::connect(self.addr.as_str()).await?;
                let pool = client.pool_id(&self.pool_name).await?;
                Ok((client, pool))
            })
            .await
    }
}
