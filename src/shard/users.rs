//! Per-user state of the pools whose rules need it (a limit per user, a rate), kept on
//! the user's home core: every reservation of a user lives on that core, so its counts
//! are exact without asking any other core, whichever connection a request came on and
//! whichever core lent the units (borrowing moves units between shards, never holds
//! between users).
//!
//! An entry is kept while the user has units held, pending (a reserve waiting for
//! borrowed units) or, in a pool with a limit per user, confirmed; in a pool with a rate,
//! until the user's bucket is full again; and in a pool that tracks users, for the
//! retention period after the user's last operation. Then it is dropped (compacted): an
//! idle user costs nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::hash_map::Entry;
use hashbrown::{DefaultHashBuilder, HashMap};

use super::huge::HugeAlloc;
use crate::protocol::control::PoolRules;

/// One user's entry in one pool, as snapshots keep it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct UserPool {
    /// Pool id.
    pub pool: u32,
    /// User id.
    pub user: u128,
    /// The user's state in the pool.
    pub state: UserState,
    /// Recent events (pools that track users).
    pub recent: Recent,
}

/// How many recent events each entry keeps.
pub const RECENT_EVENTS: usize = 4;

/// One of a user's recent events in a pool: a reservation held, confirmed, released or
/// expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct UserEvent {
    /// The reservation.
    pub id: u128,
    /// When it happened, ms.
    pub at_ms: u64,
    /// Units.
    pub qty: u32,
    /// The reservation's state after it ([`crate::protocol::ReservationState`] byte).
    pub state: u8,
}

/// One user's state in one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct UserState {
    /// Units in live holds.
    pub held: u64,
    /// Units confirmed (kept as long as the pool has a limit per user).
    pub confirmed: u64,
    /// Units of reserves waiting for borrowed capacity.
    pub pending: u64,
    /// Units released (while the entry lives).
    pub released: u64,
    /// Units expired (while the entry lives).
    pub expired: u64,
    /// The user's last activity in the pool, ms: an operation, an expiry (at its deadline),
    /// or the rule change that counted the user's units afresh.
    pub last_ms: u64,
    /// Reserve attempts left, in thousandths (token bucket).
    pub tokens_milli: u64,
    /// When `tokens_milli` was last brought up to date, ms.
    pub tokens_at_ms: u64,
    /// When the entry is due to be looked at for compaction (0: not queued).
    pub sweep_at_ms: u64,
}

/// A user's most recent events in a pool that tracks users, a ring: `len` valid ones, the
/// newest just before `next` (recording one writes one slot). Kept beside the counts, so
/// that pools with only a limit or a rate do not carry it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct Recent {
    /// The slots.
    pub events: [UserEvent; RECENT_EVENTS],
    /// Valid events.
    pub len: u8,
    /// The slot the next event goes to.
    pub next: u8,
}

impl Recent {
    /// The events, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &UserEvent> {
        let next = self.next as usize;
        (1..=self.len as usize).map(move |k| &self.events[(next + RECENT_EVENTS - k) % RECENT_EVENTS])
    }

    fn record(&mut self, event: UserEvent) {
        self.events[self.next as usize] = event;
        self.next = ((self.next as usize + 1) % RECENT_EVENTS) as u8;
        self.len = (self.len + 1).min(RECENT_EVENTS as u8);
    }
}

impl UserState {
    /// A new entry at `now_ms`: nothing counted, a full bucket.
    pub fn fresh(rules: &PoolRules, now_ms: u64) -> UserState {
        UserState { tokens_milli: rules.burst as u64 * 1000, tokens_at_ms: now_ms, ..UserState::default() }
    }

    /// Units that count against a limit per user.
    pub fn counted(&self) -> u64 {
        self.held + self.confirmed + self.pending
    }

    /// Refills the bucket up to `now_ms` under `rules`.
    fn refill(&mut self, rules: &PoolRules, now_ms: u64) {
        let full = rules.burst as u64 * 1000;
        let elapsed = now_ms.saturating_sub(self.tokens_at_ms);
        self.tokens_milli = full.min(self.tokens_milli.saturating_add(elapsed.saturating_mul(rules.rate_per_s as u64)));
        self.tokens_at_ms = self.tokens_at_ms.max(now_ms);
    }

    /// Reserve attempts left at `now_ms`, in thousandths (the bucket refilled to then).
    pub fn attempts_at(&self, rules: &PoolRules, now_ms: u64) -> u64 {
        let mut e = *self;
        e.refill(rules, now_ms);
        e.tokens_milli
    }

    /// When the bucket is full again (now if it is).
    fn full_at(&self, rules: &PoolRules) -> u64 {
        let missing = (rules.burst as u64 * 1000).saturating_sub(self.tokens_milli);
        if missing == 0 || rules.rate_per_s == 0 {
            return self.tokens_at_ms;
        }
        self.tokens_at_ms + missing.div_ceil(rules.rate_per_s as u64)
    }
}

/// The per-user entries of one core, and the compaction queue.
///
/// The map grows with the users (it is not sized in advance like the reservation table:
/// entries are reached at random, so room for every possible user would soon be resident
/// memory).
pub struct Users {
    map: UserMap,
    /// Recent events of the entries of pools that track users.
    recent: HashMap<(u32, u128), Recent, DefaultHashBuilder, HugeAlloc>,
    /// How long an idle user's activity is kept in a pool that tracks users, ms.
    pub retention_ms: u64,
    /// (due, pool, user): entries to look at again once their bucket is full.
    sweep: BinaryHeap<Reverse<(u64, u32, u128)>>,
}

impl Default for Users {
    fn default() -> Self {
        Users::with_retention(0)
    }
}

/// The entry of `key`, created with a full bucket if there is none: one lookup, and the
/// handle can remove the entry without another.
fn entry<'a>(map: &'a mut UserMap, key: (u32, u128), rules: &PoolRules, now_ms: u64) -> Occupied<'a> {
    match map.entry(key) {
        Entry::Occupied(o) => o,
        Entry::Vacant(v) => v.insert_entry(UserState::fresh(rules, now_ms)),
    }
}

type UserMap = HashMap<(u32, u128), UserState, DefaultHashBuilder, HugeAlloc>;

type Occupied<'a> = hashbrown::hash_map::OccupiedEntry<'a, (u32, u128), UserState, DefaultHashBuilder, HugeAlloc>;

/// Drops the entry if nothing needs it any more, or queues it for when its bucket is full
/// (and, in a pool that tracks users, its retention is over).
fn settle(
    mut o: Occupied<'_>,
    rules: &PoolRules,
    now_ms: u64,
    retention_ms: u64,
    recent: &mut HashMap<(u32, u128), Recent, DefaultHashBuilder, HugeAlloc>,
    sweep: &mut BinaryHeap<Reverse<(u64, u32, u128)>>,
) {
    let key = *o.key();
    let e = o.get_mut();
    let confirmed = if rules.max_per_user > 0 { e.confirmed } else { 0 };
    if e.held + e.pending + confirmed > 0 {
        return;
    }
    e.refill(rules, now_ms);
    let kept_until = if rules.tracks_users() { e.last_ms + retention_ms } else { 0 };
    let due = e.full_at(rules).max(kept_until);
    if due <= now_ms {
        o.remove();
        recent.remove(&key);
    } else if e.sweep_at_ms == 0 {
        e.sweep_at_ms = due;
        sweep.push(Reverse((due, key.0, key.1)));
    }
}

/// Why the rules refuse a reserve attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No attempt left; the next comes at this time.
    Rate { next_at_ms: u64 },
    /// The user's units plus this quantity exceed the limit.
    Limit,
}

impl Users {
    /// No entries; an idle user's activity is kept `retention_ms` in pools that track users.
    pub fn with_retention(retention_ms: u64) -> Users {
        Users {
            map: HashMap::with_hasher_in(DefaultHashBuilder::default(), HugeAlloc),
            recent: HashMap::with_hasher_in(DefaultHashBuilder::default(), HugeAlloc),
            retention_ms,
            sweep: BinaryHeap::new(),
        }
    }

    /// The entry of `user` in `pool`, if any.
    pub fn get(&self, pool: u32, user: u128) -> Option<UserState> {
        self.map.get(&(pool, user)).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = UserPool> + '_ {
        self.map.iter().map(|(&(pool, user), &state)| {
            let recent = self.recent.get(&(pool, user)).copied().unwrap_or_default();
            UserPool { pool, user, state, recent }
        })
    }

    /// The recent events of `user` in `pool`, newest first (pools that track users).
    pub fn events(&self, pool: u32, user: u128) -> impl Iterator<Item = &UserEvent> {
        self.recent.get(&(pool, user)).into_iter().flat_map(Recent::iter)
    }

    /// Records `event` for `user` in `pool` if there is one and the pool tracks users.
    pub fn note(&mut self, rules: &PoolRules, key: (u32, u128), event: Option<UserEvent>) {
        if let Some(event) = event.filter(|_| rules.tracks_users()) {
            self.recent.entry(key).or_default().record(event);
        }
    }

    /// A new reserve attempt of `qty` units: takes one attempt from the bucket (if the pool
    /// has a rate), then checks the limit per user (if it has one). Admitted, the units
    /// are counted as held at once (one lookup on the hot path); the caller moves them to
    /// pending if the reserve waits, or takes them back if it is refused for capacity.
    pub fn attempt(
        &mut self,
        rules: &PoolRules,
        (pool, user): (u32, u128),
        qty: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let mut o = entry(&mut self.map, (pool, user), rules, now_ms);
        let e = o.get_mut();
        e.last_ms = e.last_ms.max(now_ms);
        let mut refusal = None;
        if rules.rate_per_s > 0 {
            e.refill(rules, now_ms);
            if e.tokens_milli >= 1000 {
                e.tokens_milli -= 1000;
            } else {
                let wait = (1000 - e.tokens_milli).div_ceil(rules.rate_per_s as u64);
                refusal = Some(Refusal::Rate { next_at_ms: now_ms + wait });
            }
        }
        if refusal.is_none() && rules.max_per_user > 0 && e.counted() + qty > rules.max_per_user {
            refusal = Some(Refusal::Limit);
        }
        match refusal {
            None => {
                e.held += qty;
                Ok(())
            }
            Some(refusal) => {
                settle(o, rules, now_ms, self.retention_ms, &mut self.recent, &mut self.sweep);
                Err(refusal)
            }
        }
    }

    /// Adds units to an entry (negative: removes), `delta` = [held, confirmed, pending,
    /// released, expired], and drops it if it is idle.
    pub fn add(
        &mut self,
        rules: &PoolRules,
        pool: u32,
        user: u128,
        now_ms: u64,
        delta: [i64; 5],
        event: Option<UserEvent>,
    ) {
        self.note(rules, (pool, user), event);
        let mut o = entry(&mut self.map, (pool, user), rules, now_ms);
        let e = o.get_mut();
        let apply = |v: &mut u64, d: i64| *v = v.checked_add_signed(d).expect("user counts never go below zero");
        apply(&mut e.held, delta[0]);
        apply(&mut e.confirmed, delta[1]);
        apply(&mut e.pending, delta[2]);
        apply(&mut e.released, delta[3]);
        apply(&mut e.expired, delta[4]);
        e.last_ms = e.last_ms.max(now_ms);
        if delta.iter().any(|&d| d < 0) {
            settle(o, rules, now_ms, self.retention_ms, &mut self.recent, &mut self.sweep);
        }
    }

    /// [`settle`] for the entry of `key`, if there is one.
    fn settle_key(&mut self, rules: &PoolRules, key: (u32, u128), now_ms: u64) {
        if let Entry::Occupied(o) = self.map.entry(key) {
            settle(o, rules, now_ms, self.retention_ms, &mut self.recent, &mut self.sweep);
        }
    }

    /// Looks again at the entries due by `now_ms`; `rules_of` gives a pool's rules.
    pub fn sweep(&mut self, now_ms: u64, rules_of: impl Fn(u32) -> Option<PoolRules>) {
        while let Some(&Reverse((due, pool, user))) = self.sweep.peek() {
            if due > now_ms {
                break;
            }
            self.sweep.pop();
            let Entry::Occupied(mut o) = self.map.entry((pool, user)) else { continue };
            if o.get().sweep_at_ms != due {
                continue;
            }
            o.get_mut().sweep_at_ms = 0;
            if let Some(rules) = rules_of(pool) {
                settle(o, &rules, now_ms, self.retention_ms, &mut self.recent, &mut self.sweep);
            }
        }
    }

    /// Replaces every entry of `pool` with `entries` (a rules change that starts keeping
    /// per-user state counts it from the reservations), or just drops them.
    /// Entries that hold nothing are settled at once (dropped, or queued for compaction).
    pub fn reset_pool(
        &mut self,
        pool: u32,
        rules: &PoolRules,
        now_ms: u64,
        entries: impl IntoIterator<Item = UserPool>,
    ) {
        self.map.retain(|&(p, _), _| p != pool);
        for e in entries {
            self.insert(e);
            self.settle_key(rules, (e.pool, e.user), now_ms);
        }
        // Events live with their entry: a user the new rules keep no entry for loses them.
        let (map, tracks) = (&self.map, rules.tracks_users());
        self.recent.retain(|key, _| key.0 != pool || (tracks && map.contains_key(key)));
    }

    /// True if an entry is due to be looked at again by `now_ms` ([`Self::sweep`] would
    /// change something).
    pub fn sweep_due(&self, now_ms: u64) -> bool {
        self.sweep.peek().is_some_and(|Reverse((due, _, _))| *due <= now_ms)
    }

    fn insert(&mut self, e: UserPool) {
        self.map.insert((e.pool, e.user), e.state);
        if e.recent.len > 0 {
            self.recent.insert((e.pool, e.user), e.recent);
        }
        if e.state.sweep_at_ms != 0 {
            self.sweep.push(Reverse((e.state.sweep_at_ms, e.pool, e.user)));
        }
    }

    /// Rebuilds from a snapshot's entries.
    pub fn restore(entries: &[UserPool], retention_ms: u64) -> Users {
        let mut users = Users::with_retention(retention_ms);
        for e in entries {
            users.insert(*e);
        }
        users
    }

    /// Every entry, sorted by pool and user (for snapshots).
    pub fn sorted(&self) -> Vec<UserPool> {
        let mut v: Vec<UserPool> = self.iter().collect();
        v.sort_unstable_by_key(|e| (e.pool, e.user));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    fn rules(max_per_user: u64, rate_per_s: u32, burst: u32) -> PoolRules {
        PoolRules { max_per_user, rate_per_s, burst, ..PoolRules::default() }
    }

    #[test]
    fn the_bucket_gives_burst_attempts_then_one_per_interval() {
        let r = rules(0, 2, 3);
        let mut u = Users::default();
        for _ in 0..3 {
            assert_eq!(u.attempt(&r, (1, 7), 1, T0), Ok(()));
        }
        assert_eq!(u.attempt(&r, (1, 7), 1, T0), Err(Refusal::Rate { next_at_ms: T0 + 500 }));
        assert_eq!(u.attempt(&r, (1, 7), 1, T0 + 499), Err(Refusal::Rate { next_at_ms: T0 + 500 }));
        assert_eq!(u.attempt(&r, (1, 7), 1, T0 + 500), Ok(()));
        // Another user and another pool have their own buckets.
        assert_eq!(u.attempt(&r, (1, 8), 1, T0 + 500), Ok(()));
        assert_eq!(u.attempt(&r, (2, 7), 1, T0 + 500), Ok(()));
    }

    #[test]
    fn idle_entries_are_dropped_once_their_bucket_is_full() {
        let r = rules(0, 10, 2);
        let mut u = Users::default();
        u.attempt(&r, (1, 7), 1, T0).unwrap();
        u.add(&r, 1, 7, T0, [-1, 0, 0, 0, 0], None); // refused for capacity after all
        assert_eq!(u.len(), 1, "kept while the bucket refills");
        u.sweep(T0 + 99, |_| Some(r));
        assert_eq!(u.len(), 1);
        u.sweep(T0 + 100, |_| Some(r));
        assert!(u.is_empty(), "dropped when full");

        let limit = rules(4, 0, 0);
        u.attempt(&limit, (1, 7), 3, T0).unwrap();
        assert_eq!(u.get(1, 7).map(|e| e.held), Some(3), "an admitted attempt counts as held");
        assert_eq!(u.attempt(&limit, (1, 7), 2, T0), Err(Refusal::Limit));
        u.add(&limit, 1, 7, T0, [-3, 3, 0, 0, 0], None);
        assert_eq!(u.get(1, 7).map(|e| e.counted()), Some(3), "confirmed units count");
        u.add(&limit, 1, 7, T0, [0, 0, 1, 0, 0], None);
        assert_eq!(u.attempt(&limit, (1, 7), 1, T0), Err(Refusal::Limit), "pending units count");
        u.add(&limit, 1, 7, T0, [0, 0, -1, 0, 0], None);
        assert_eq!(u.attempt(&limit, (1, 7), 1, T0), Ok(()));
    }

    #[test]
    fn recent_events_keep_the_newest_four_in_pools_that_track_users() {
        let track = PoolRules { flags: crate::protocol::control::RULE_FLAG_TRACK_USERS, ..rules(100, 0, 0) };
        let mut u = Users::default();
        let held = |id: u128| UserEvent { id, at_ms: T0 + id as u64, qty: id as u32, state: 1 };
        for id in 1..=5u128 {
            u.attempt(&track, (1, 7), id as u64, T0 + id as u64).unwrap();
            u.note(&track, (1, 7), Some(held(id)));
        }
        let ids = |u: &Users| u.events(1, 7).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&u), [5, 4, 3, 2], "newest first, four kept");
        let confirmed = UserEvent { id: 3, at_ms: T0 + 9, qty: 3, state: 2 };
        u.add(&track, 1, 7, T0 + 9, [-3, 3, 0, 0, 0], Some(confirmed));
        assert_eq!(ids(&u), [3, 5, 4, 3]);
        assert_eq!(u.events(1, 7).next(), Some(&confirmed));
        // A pool that does not track users keeps no events.
        let limit = rules(100, 0, 0);
        u.attempt(&limit, (2, 7), 1, T0).unwrap();
        u.note(&limit, (2, 7), Some(held(1)));
        assert_eq!(u.events(2, 7).count(), 0);
        // Turning tracking off drops the events.
        u.reset_pool(1, &limit, T0 + 10, []);
        assert_eq!(u.events(1, 7).count(), 0);
    }
}
