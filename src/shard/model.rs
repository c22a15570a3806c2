//! The reference model: the documented semantics written as plainly as possible — one
//! global counter per pool, every reservation in a `BTreeMap`, expiry by scanning. No
//! shards, no borrowing, no timing wheel. Property tests check that a cluster of engines
//! answers exactly what this model answers.
//!
//! One documented property of placement is modelled on purpose: a reservation is stored on
//! its user's home core, so ids are unique per home core. Two users on different cores can
//! use the same id without conflict (each addresses its own reservation); a lookup without
//! a user then answers `id_ambiguous`.

use std::collections::BTreeMap;

use crate::protocol::control::PoolCreate;
use crate::protocol::home_core;
use crate::protocol::{
    ConfirmOp, ExtendOp, LookupOp, LookupResult, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp,
    Status,
};
use crate::shard::cluster::merge_lookups;

#[derive(Clone, Debug)]
struct Pool {
    capacity: u64,
    held: u64,
    confirmed: u64,
    ttl_default_ms: u32,
    ttl_max_ms: u32,
    active: bool,
}

#[derive(Clone, Debug)]
struct Record {
    user: u128,
    pool: u32,
    qty: u32,
    state: ReservationState,
    /// Expiry while held; purge time once final.
    when_ms: u64,
    commit_ref: u128,
}

/// The model of a whole server.
#[derive(Clone, Debug)]
pub struct Model {
    pools: BTreeMap<u32, Pool>,
    /// Keyed by (home core of the user, reservation id).
    records: BTreeMap<(u16, u128), Record>,
    retention_ms: u64,
    cores: u16,
}

impl Model {
    /// An empty model of a server with `cores` cores that keeps final reservations for
    /// `retention_ms`.
    pub fn new(cores: u16, retention_ms: u64) -> Self {
        Model { pools: BTreeMap::new(), records: BTreeMap::new(), retention_ms, cores }
    }

    fn key(&self, id: u128, user: u128) -> (u16, u128) {
        (home_core(user, self.cores), id)
    }

    /// Adds a pool (requests are assumed valid and new); answers its id.
    pub fn create_pool(&mut self, req: &PoolCreate) -> u32 {
        let id = self.pools.len() as u32 + 1;
        self.pools.insert(
            id,
            Pool {
                capacity: req.capacity,
                held: 0,
                confirmed: 0,
                ttl_default_ms: req.hold_ttl_ms_default,
                ttl_max_ms: req.hold_ttl_ms_max,
                active: req.active,
            },
        );
        id
    }

    /// Activates or deactivates a pool.
    pub fn set_active(&mut self, pool: u32, active: bool) {
        if let Some(p) = self.pools.get_mut(&pool) {
            p.active = active;
        }
    }

    /// Changes a pool's capacity: refused with `capacity_in_use` below what is held and
    /// confirmed, with `invalid_capacity` outside 1..=2^60.
    pub fn resize(&mut self, pool: u32, capacity: u64) -> Result<(), Status> {
        let p = self.pools.get_mut(&pool).ok_or(Status::PoolNotFound)?;
        if capacity == 0 || capacity > crate::shard::pool::POOL_CAPACITY_MAX {
            return Err(Status::InvalidCapacity);
        }
        if capacity < p.held + p.confirmed {
            return Err(Status::CapacityInUse);
        }
        p.capacity = capacity;
        Ok(())
    }

    /// Pool totals: (held, confirmed, available).
    pub fn totals(&self, pool: u32) -> (u64, u64, u64) {
        let p = &self.pools[&pool];
        (p.held, p.confirmed, p.capacity - p.held - p.confirmed)
    }

    /// Expires holds whose time has come and forgets final records past retention.
    pub fn advance(&mut self, now_ms: u64) {
        let retention = self.retention_ms;
        for r in self.records.values_mut() {
            if r.state == ReservationState::Held && r.when_ms <= now_ms {
                self.pools.get_mut(&r.pool).expect("pool").held -= r.qty as u64;
                r.state = ReservationState::Expired;
                r.when_ms += retention;
            }
        }
        self.records.retain(|_, r| r.state == ReservationState::Held || r.when_ms > now_ms);
    }

    fn result(&self, key: (u16, u128), status: Status, flags: u8) -> OpResult {
        let r = &self.records[&key];
        OpResult {
            status: status as u8,
            state: r.state as u8,
            flags,
            expires_at_ms: if r.state == ReservationState::Held { r.when_ms } else { 0 },
            available: u64::MAX,
        }
    }

    fn finish(&mut self, key: (u16, u128), now_ms: u64, state: ReservationState) {
        let retention = self.retention_ms;
        let r = self.records.get_mut(&key).expect("record");
        r.state = state;
        // Kept `retention` after it finished (the model's budget never runs out).
        r.when_ms = now_ms + retention;
    }

    /// Reserve (see [`crate::shard::Engine::reserve`] for the order of precedence).
    pub fn reserve(&mut self, now_ms: u64, op: &ReserveOp) -> OpResult {
        self.advance(now_ms);
        let refuse = |s| OpResult::status(s);
        if op.id == 0 {
            return refuse(Status::InvalidId);
        }
        if op.user == 0 {
            return refuse(Status::InvalidUser);
        }
        if op.qty == 0 || op.qty > crate::shard::holds::HOLD_QTY_MAX {
            return refuse(Status::InvalidQuantity);
        }
        let Some(pool) = self.pools.get(&op.pool) else { return refuse(Status::PoolNotFound) };
        if op.ttl_ms > pool.ttl_max_ms {
            return refuse(Status::InvalidTtl);
        }
        let key = self.key(op.id, op.user);
        if let Some(r) = self.records.get(&key) {
            return if r.pool != op.pool {
                refuse(Status::IdExistsWithDifferentPool)
            } else if r.user != op.user {
                refuse(Status::IdExistsWithDifferentUser)
            } else if r.qty != op.qty {
                refuse(Status::IdExistsWithDifferentQuantity)
            } else {
                self.result(key, Status::Ok, RESULT_FLAG_REPEAT)
            };
        }
        if !pool.active {
            return refuse(Status::PoolInactive);
        }
        if pool.capacity - pool.held - pool.confirmed < op.qty as u64 {
            return refuse(Status::SoldOut);
        }
        let ttl = if op.ttl_ms == 0 { pool.ttl_default_ms } else { op.ttl_ms };
        self.pools.get_mut(&op.pool).expect("pool").held += op.qty as u64;
        self.records.insert(
            key,
            Record {
                user: op.user,
                pool: op.pool,
                qty: op.qty,
                state: ReservationState::Held,
                when_ms: now_ms + ttl as u64,
                commit_ref: 0,
            },
        );
        self.result(key, Status::Ok, 0)
    }

    fn find(&self, id: u128, user: u128) -> Result<((u16, u128), Record), OpResult> {
        if id == 0 {
            return Err(OpResult::status(Status::InvalidId));
        }
        if user == 0 {
            return Err(OpResult::status(Status::InvalidUser));
        }
        let key = self.key(id, user);
        match self.records.get(&key) {
            Some(r) if r.user == user => Ok((key, r.clone())),
            _ => Err(OpResult::status(Status::NotFound)),
        }
    }

    /// Confirm.
    pub fn confirm(&mut self, now_ms: u64, op: &ConfirmOp) -> OpResult {
        self.advance(now_ms);
        let (key, r) = match self.find(op.id, op.user) {
            Ok(found) => found,
            Err(e) => return e,
        };
        match r.state {
            ReservationState::Confirmed if r.commit_ref == op.commit_ref => {
                self.result(key, Status::Ok, RESULT_FLAG_REPEAT)
            }
            ReservationState::Confirmed => self.result(key, Status::ConfirmedWithDifferentRef, 0),
            ReservationState::Released => self.result(key, Status::AlreadyReleased, 0),
            ReservationState::Expired => self.result(key, Status::Expired, 0),
            _ => {
                let pool = self.pools.get_mut(&r.pool).expect("pool");
                pool.held -= r.qty as u64;
                pool.confirmed += r.qty as u64;
                self.finish(key, now_ms, ReservationState::Confirmed);
                self.records.get_mut(&key).expect("record").commit_ref = op.commit_ref;
                self.result(key, Status::Ok, 0)
            }
        }
    }

    /// Release.
    pub fn release(&mut self, now_ms: u64, op: &ReleaseOp) -> OpResult {
        self.advance(now_ms);
        let (key, r) = match self.find(op.id, op.user) {
            Ok(found) => found,
            Err(e) => return e,
        };
        match r.state {
            ReservationState::Released => self.result(key, Status::Ok, RESULT_FLAG_REPEAT),
            ReservationState::Confirmed => self.result(key, Status::AlreadyConfirmed, 0),
            ReservationState::Expired => self.result(key, Status::Expired, 0),
            _ => {
                self.pools.get_mut(&r.pool).expect("pool").held -= r.qty as u64;
                self.finish(key, now_ms, ReservationState::Released);
                self.result(key, Status::Ok, 0)
            }
        }
    }

    /// Extend.
    pub fn extend(&mut self, now_ms: u64, op: &ExtendOp) -> OpResult {
        self.advance(now_ms);
        let (key, r) = match self.find(op.id, op.user) {
            Ok(found) => found,
            Err(e) => return e,
        };
        match r.state {
            ReservationState::Confirmed => self.result(key, Status::AlreadyConfirmed, 0),
            ReservationState::Released => self.result(key, Status::AlreadyReleased, 0),
            ReservationState::Expired => self.result(key, Status::Expired, 0),
            _ => {
                if op.ttl_ms == 0 || op.ttl_ms > self.pools[&r.pool].ttl_max_ms {
                    return self.result(key, Status::InvalidTtl, 0);
                }
                let rec = self.records.get_mut(&key).expect("record");
                rec.when_ms = rec.when_ms.max(now_ms + op.ttl_ms as u64);
                self.result(key, Status::Ok, 0)
            }
        }
    }

    /// Lookup (user 0 asks every core), as of `now_ms` and without changing anything: a
    /// hold past its deadline reads as expired, a record past its retention as gone.
    pub fn lookup(&self, now_ms: u64, op: &LookupOp) -> LookupResult {
        if op.id == 0 {
            return LookupResult::status(Status::InvalidId);
        }
        let retention = self.retention_ms;
        let found = |r: &Record| {
            let (state, when_ms) = match r.state {
                ReservationState::Held if r.when_ms <= now_ms => (ReservationState::Expired, r.when_ms + retention),
                state => (state, r.when_ms),
            };
            if state.is_final() && when_ms <= now_ms {
                return LookupResult::status(Status::NotFound);
            }
            LookupResult {
                status: Status::Ok as u8,
                state: state as u8,
                qty: r.qty,
                pool: r.pool,
                expires_at_ms: when_ms,
                user: r.user,
                commit_ref: r.commit_ref,
            }
        };
        if op.user != 0 {
            return match self.records.get(&self.key(op.id, op.user)) {
                Some(r) if r.user == op.user => found(r),
                _ => LookupResult::status(Status::NotFound),
            };
        }
        merge_lookups((0..self.cores).map(|core| match self.records.get(&(core, op.id)) {
            Some(r) => found(r),
            None => LookupResult::status(Status::NotFound),
        }))
    }
}
