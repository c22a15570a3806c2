//! A pool's definition (the same on every core), one core's shard of it, and the borrowing
//! state the pool's home core keeps (the "bank").

use std::collections::VecDeque;

use crate::protocol::ReserveOp;
use crate::protocol::control::{
    PoolInfo, PoolKind, PoolRules, SHARD_FLAG_DRAINED, SHARD_FLAG_HOME, SHARD_FLAG_RECALLING, ShardStatus,
};

/// Largest pool capacity in units; keeps every sum of units far from overflow.
pub const POOL_CAPACITY_MAX: u64 = 1 << 60;

/// A pool's definition, replicated on every core in the same order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDef {
    /// Pool id, from 1, dense.
    pub id: u32,
    /// Unique name.
    pub name: Box<str>,
    /// Counted or seated.
    pub kind: PoolKind,
    /// Total units.
    pub capacity: u64,
    /// TTL of a hold whose reserve asks for 0, in ms.
    pub hold_ttl_ms_default: u32,
    /// Longest TTL a reserve or extend may ask for, in ms.
    pub hold_ttl_ms_max: u32,
    /// Whether new reserves are accepted.
    pub active: bool,
    /// Allocation rules (changeable at runtime, like `active`).
    pub rules: PoolRules,
    /// Free text for operators (up to [`POOL_DESCRIPTION_MAX_BYTES`]; empty at creation).
    pub description: Box<str>,
}

pub use crate::protocol::control::POOL_DESCRIPTION_MAX_BYTES;

/// True for a description of at most [`POOL_DESCRIPTION_MAX_BYTES`] bytes without control
/// characters (any other UTF-8 text; empty clears it).
pub fn valid_pool_description(text: &str) -> bool {
    text.len() <= POOL_DESCRIPTION_MAX_BYTES && !text.chars().any(char::is_control)
}

impl PoolDef {
    /// The core that coordinates borrowing for this pool: `id mod cores`.
    pub fn home_core(&self, cores: u16) -> u16 {
        (self.id % cores as u32) as u16
    }

    /// The units core `core` starts with: the home core the units kept for priority
    /// reserves (`rules.kept_permille`), and every core an even split of the rest, the
    /// remainder to the lowest cores.
    pub fn initial_share(&self, core: u16, cores: u16) -> u64 {
        let n = cores as u64;
        let rest = self.general_units();
        let even = rest / n + u64::from((core as u64) < rest % n);
        if core == self.home_core(cores) { even + (self.capacity - rest) } else { even }
    }

    /// Units any reserve may take: the capacity less the units kept for priority reserves.
    pub fn general_units(&self) -> u64 {
        self.capacity - self.rules.kept_units(self.capacity)
    }

    /// The definition as the protocol reports it.
    pub fn info(&self, cores: u16) -> PoolInfo {
        PoolInfo {
            id: self.id,
            name: self.name.to_string(),
            kind: self.kind as u8,
            active: self.active,
            capacity: self.capacity,
            hold_ttl_ms_default: self.hold_ttl_ms_default,
            hold_ttl_ms_max: self.hold_ttl_ms_max,
            home_core: self.home_core(cores),
            rules: self.rules,
            description: self.description.to_string(),
        }
    }
}

/// A reserve waiting on this core for capacity from the home core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parked {
    /// Names the reserve in completions.
    pub ticket: u64,
    /// The request.
    pub op: ReserveOp,
    /// An exact borrow for this reserve alone is outstanding.
    pub asked: bool,
}

/// One core's shard of a pool. Invariants: `held + confirmed <= capacity`, and
/// `capacity + lent - borrowed == share` (units only move with a counted message).
#[derive(Clone, Debug, Default)]
pub struct Shard {
    /// Units this shard owns now.
    pub capacity: u64,
    /// Units in live holds.
    pub held: u64,
    /// Units confirmed.
    pub confirmed: u64,
    /// Units sent to other cores, ever.
    pub lent: u64,
    /// Units received from other cores, ever.
    pub borrowed: u64,
    /// The units this shard started with, plus the capacity changes made on it (only on
    /// the pool's home core). Signed: a smaller capacity can take more units from the home
    /// core than it started with, when other shards lent it units; the shares of all shards
    /// still add up to the pool's capacity.
    pub share: i64,
    /// Free units are gathered at the home core; this shard keeps none and borrows exactly.
    pub drained: bool,
    /// An aggregate borrow (for the whole waiting line) is outstanding.
    pub aggregate_outstanding: bool,
    /// Reserves waiting for capacity, first come first served.
    pub waiting: VecDeque<Parked>,
}

impl Shard {
    /// A shard that owns `share` units.
    pub fn new(share: u64) -> Self {
        Shard { capacity: share, share: share as i64, ..Default::default() }
    }

    /// Units free on this shard. Panics, in release builds too, if the shard holds and
    /// confirms more units than it has: a broken invariant must stop the core, not wrap
    /// around to a huge number of free units.
    pub fn available(&self) -> u64 {
        match self.held.checked_add(self.confirmed).and_then(|used| self.capacity.checked_sub(used)) {
            Some(free) => free,
            None => panic!("accounting broken: {self:?} holds and confirms more units than it has"),
        }
    }

    /// Why this shard's accounting is broken, if it is: more units held and confirmed than
    /// it has (an oversell), or units that do not add up with those lent and borrowed
    /// (units created or lost). `pool` names the pool in the message.
    pub fn accounting_failure(&self, pool: u32) -> Option<String> {
        if self.held as u128 + self.confirmed as u128 > self.capacity as u128 {
            Some(format!("oversell on pool {pool}: {self:?}"))
        } else if self.capacity as i128 + self.lent as i128 != self.share as i128 + self.borrowed as i128 {
            Some(format!("units created or lost on pool {pool}: {self:?}"))
        } else {
            None
        }
    }
}

/// How the home core is handing out a pool's free capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BankMode {
    /// Shards keep what they have and borrow from the home core, with some to spare.
    Normal,
    /// The home core asked every shard for its free units and waits for this many answers.
    Recalling {
        /// Answers still missing.
        acks_pending: u16,
    },
    /// Every free unit is at the home core; shards borrow exactly what one reserve needs, and
    /// the home core decides `sold_out` knowing all that is left.
    Drained,
}

/// A request for units waiting at the home core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Demand {
    /// The core that asked (the home core itself for its own parked reserves).
    pub from: u16,
    /// The parked reserve on that core.
    pub ticket: u64,
    /// Units it needs.
    pub need: u64,
    /// The reserve's priority (it may take the pool's kept units if high enough).
    pub priority: u8,
}

/// Borrowing state kept by the pool's home core.
#[derive(Clone, Debug)]
pub struct Bank {
    /// Current mode.
    pub mode: BankMode,
    /// Demands waiting for the end of a recall.
    pub queue: VecDeque<Demand>,
}

impl Default for Bank {
    fn default() -> Self {
        Bank { mode: BankMode::Normal, queue: VecDeque::new() }
    }
}

/// Everything one core knows about one pool.
#[derive(Clone, Debug)]
pub struct PoolSlot {
    /// The definition.
    pub def: PoolDef,
    /// This core's shard.
    pub shard: Shard,
    /// Borrowing state; used only on the pool's home core.
    pub bank: Bank,
}

impl PoolSlot {
    /// This core's shard as the protocol reports it.
    pub fn shard_status(&self, core: u16, cores: u16) -> ShardStatus {
        let home = self.def.home_core(cores) == core;
        let mut flags = 0;
        if self.shard.drained {
            flags |= SHARD_FLAG_DRAINED;
        }
        if home {
            flags |= SHARD_FLAG_HOME;
            match self.bank.mode {
                BankMode::Recalling { .. } => flags |= SHARD_FLAG_RECALLING,
                BankMode::Drained => flags |= SHARD_FLAG_DRAINED,
                BankMode::Normal => {}
            }
        }
        ShardStatus {
            core,
            flags,
            parked: self.shard.waiting.len() as u32,
            capacity: self.shard.capacity,
            held: self.shard.held,
            confirmed: self.shard.confirmed,
            lent: self.shard.lent,
            borrowed: self.shard.borrowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    #[should_panic(expected = "accounting broken")]
    fn an_underflow_of_free_units_stops_rather_than_wraps() {
        // 4 held + 2 confirmed of 5: the subtraction would wrap to 2^64 - 1 free units.
        let shard = Shard { held: 4, confirmed: 2, ..Shard::new(5) };
        let _ = shard.available();
    }

    #[test]
    fn a_broken_shard_names_what_is_broken() {
        assert_eq!(Shard { held: 3, confirmed: 2, ..Shard::new(5) }.accounting_failure(7), None);
        let oversold = Shard { held: 4, confirmed: 2, ..Shard::new(5) }.accounting_failure(7).unwrap();
        assert!(oversold.starts_with("oversell on pool 7"), "{oversold}");
        let lost = Shard { capacity: 4, ..Shard::new(5) }.accounting_failure(7).unwrap();
        assert!(lost.starts_with("units created or lost on pool 7"), "{lost}");
    }
}
