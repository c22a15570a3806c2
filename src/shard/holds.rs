//! The reservation table of one core: fixed-size records in a slab allocated once at start
//! (from `holds_max_per_core`), and an index from reservation id to slab slot that stores
//! only the 4-byte slot. A held reservation costs 48 bytes of record plus 5 to 9 bytes of
//! index (4-byte slot and 1 control byte per bucket, at a load factor between 7/16 and
//! 7/8); inserting one allocates nothing. Both are large and accessed at random, so they
//! ask for 2 MiB pages ([`super::huge`]).

use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::huge::{self, HugeAlloc};
use super::wheel::{Links, NIL};
use crate::protocol::ReservationState;

/// The largest quantity one reservation can hold (29 bits of the record).
pub const HOLD_QTY_MAX: u32 = (1 << 29) - 1;
/// The largest pool id a record can name (22 bits of the record).
pub const HOLD_POOL_ID_MAX: u32 = (1 << 22) - 1;
/// The latest time a record can store: 42 bits of milliseconds since the epoch (the
/// year 2109).
const WHEN_MAX_MS: u64 = (1 << 42) - 1;
const WHEN_BITS: u32 = 42;
const LINK_BITS: u32 = 32;
const QTY_BITS: u32 = 29;

/// One reservation in 48 bytes: the two ids, then two words that pack the rest — the time
/// (42 bits) with the pool id (22 bits), and the wheel link (32 bits) with the quantity
/// (29 bits) and the state (3 bits). With the index, a live hold costs about 56 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    id: [u64; 2],
    user: [u64; 2],
    /// Time in the low 42 bits (held: when the hold expires; final: when the record is
    /// purged; ms since the epoch), pool id in the high 22.
    when_pool: u64,
    /// Timer-wheel link (or the free-list link of an unused slot) in the low 32 bits,
    /// quantity in the next 29, [`ReservationState`] in the top 3.
    link_qty_state: u64,
}

const _: () = assert!(std::mem::size_of::<Hold>() == 48);
const _: () = assert!(WHEN_BITS + 22 == 64 && LINK_BITS + QTY_BITS + 3 == 64);

fn split(v: u128) -> [u64; 2] {
    [v as u64, (v >> 64) as u64]
}
fn join(v: [u64; 2]) -> u128 {
    v[0] as u128 | (v[1] as u128) << 64
}

impl Hold {
    /// A new held reservation (`qty` at most [`HOLD_QTY_MAX`], `pool` at most
    /// [`HOLD_POOL_ID_MAX`]).
    pub fn new(id: u128, user: u128, pool: u32, qty: u32, expires_at_ms: u64) -> Self {
        assert!(qty <= HOLD_QTY_MAX && pool <= HOLD_POOL_ID_MAX, "checked by the caller");
        let mut hold = Hold {
            id: split(id),
            user: split(user),
            when_pool: (pool as u64) << WHEN_BITS,
            link_qty_state: NIL as u64 | (qty as u64) << LINK_BITS,
        };
        hold.set_when_ms(expires_at_ms);
        hold.set_state(ReservationState::Held);
        hold
    }
    /// Reservation id.
    pub fn id(&self) -> u128 {
        join(self.id)
    }
    /// User id.
    pub fn user(&self) -> u128 {
        join(self.user)
    }
    /// Units.
    pub fn qty(&self) -> u32 {
        (self.link_qty_state >> LINK_BITS) as u32 & HOLD_QTY_MAX
    }
    /// Pool id.
    pub fn pool(&self) -> u32 {
        (self.when_pool >> WHEN_BITS) as u32
    }
    /// Held: when the hold expires. Final: when the record is purged (ms since the epoch).
    pub fn when_ms(&self) -> u64 {
        self.when_pool & WHEN_MAX_MS
    }
    /// Sets [`Self::when_ms`] (times past the year 2109 are stored as that year).
    pub fn set_when_ms(&mut self, when_ms: u64) {
        self.when_pool = (self.when_pool & !WHEN_MAX_MS) | when_ms.min(WHEN_MAX_MS);
    }
    /// Current state.
    pub fn state(&self) -> ReservationState {
        ReservationState::from_u8((self.link_qty_state >> (LINK_BITS + QTY_BITS)) as u8).expect("valid state bits")
    }
    /// Moves to `state`.
    pub fn set_state(&mut self, state: ReservationState) {
        let keep = self.link_qty_state & ((1 << (LINK_BITS + QTY_BITS)) - 1);
        self.link_qty_state = keep | (state as u64) << (LINK_BITS + QTY_BITS);
    }
    fn link(&self) -> u32 {
        self.link_qty_state as u32
    }
    fn set_link(&mut self, next: u32) {
        self.link_qty_state = (self.link_qty_state & !(u32::MAX as u64)) | next as u64;
    }
    fn is_free(&self) -> bool {
        self.state() == ReservationState::None
    }
}

/// The table: slab, free list and id index, and the commit reference of each slot.
pub struct HoldTable {
    slab: Vec<Hold>,
    free_head: u32,
    index: HashTable<u32, HugeAlloc>,
    hasher: DefaultHashBuilder,
    capacity: u32,
    len: u32,
    /// Commit reference of each slot's confirmed reservation (0: none), indexed by slot.
    /// Allocated zeroed at start; the OS hands out its pages only as slots are confirmed.
    commit_refs: Vec<u128>,
    /// A snapshot being taken.
    cow: Option<Cow>,
}

/// Copy-on-write state of a snapshot in progress: records are read in slot order from
/// `cursor` to `end` while the table keeps changing; a slot not read yet is saved as it
/// was before its first change, so the snapshot shows the table as it was at its start.
struct Cow {
    end: u32,
    cursor: u32,
    saved: HashMap<u32, (Hold, u128)>,
}

/// A reservation as a snapshot stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct HoldSnap {
    /// Reservation id.
    pub id: u128,
    /// User id.
    pub user: u128,
    /// Pool id.
    pub pool: u32,
    /// Units.
    pub qty: u32,
    /// [`ReservationState`] byte.
    pub state: u8,
    /// Expiry (held) or purge time (final), ms since the epoch.
    pub when_ms: u64,
    /// Commit reference (0: none).
    pub commit_ref: u128,
}

impl HoldTable {
    /// A table for at most `capacity` records, allocated now.
    pub fn with_capacity(capacity: u32) -> Self {
        let mut slab = Vec::with_capacity(capacity as usize);
        huge::advise_spare(&mut slab);
        HoldTable {
            slab,
            free_head: NIL,
            index: HashTable::with_capacity_in(capacity as usize, HugeAlloc),
            hasher: DefaultHashBuilder::default(),
            capacity,
            len: 0,
            commit_refs: vec![0; capacity as usize],
            cow: None,
        }
    }

    /// Before slot `slot` changes: keep its old content for a snapshot in progress.
    fn before_change(&mut self, slot: u32) {
        if let Some(cow) = &mut self.cow {
            if slot >= cow.cursor && slot < cow.end {
                let old = (self.slab[slot as usize], self.commit_refs[slot as usize]);
                cow.saved.entry(slot).or_insert(old);
            }
        }
    }

    /// Starts a snapshot of the table as it is now; answers how many records it holds.
    /// Read it with [`Self::snapshot_chunk`] while the table keeps changing.
    pub fn snapshot_begin(&mut self) -> u32 {
        assert!(self.cow.is_none(), "one snapshot at a time");
        self.cow = Some(Cow { end: self.slab.len() as u32, cursor: 0, saved: HashMap::new() });
        self.len
    }

    /// Appends up to `max` records of the snapshot in progress to `out`; true once all of
    /// them have been given (the snapshot is then over).
    pub fn snapshot_chunk(&mut self, max: usize, out: &mut Vec<HoldSnap>) -> bool {
        let cow = self.cow.as_mut().expect("a snapshot in progress");
        let mut given = 0;
        while cow.cursor < cow.end && given < max {
            let slot = cow.cursor;
            cow.cursor += 1;
            let (h, commit_ref) = match cow.saved.remove(&slot) {
                Some(saved) => saved,
                None => (self.slab[slot as usize], self.commit_refs[slot as usize]),
            };
            if h.is_free() {
                continue;
            }
            given += 1;
            out.push(HoldSnap {
                id: h.id(),
                user: h.user(),
                pool: h.pool(),
                qty: h.qty(),
                state: h.state() as u8,
                when_ms: h.when_ms(),
                commit_ref,
            });
        }
        let done = cow.cursor >= cow.end;
        if done {
            self.cow = None;
        }
        done
    }

    /// The commit reference of the reservation in `slot` (0: none).
    pub fn commit_ref(&self, slot: u32) -> u128 {
        self.commit_refs[slot as usize]
    }

    /// Stores the commit reference of the reservation in `slot`.
    pub fn set_commit_ref(&mut self, slot: u32, commit_ref: u128) {
        self.before_change(slot);
        self.commit_refs[slot as usize] = commit_ref;
    }

    /// Changes the most records the table takes; growing allocates now. A table above a
    /// lowered limit stays as it is and refuses new records until it is below.
    pub fn set_capacity(&mut self, capacity: u32) {
        let more = (capacity as usize).saturating_sub(self.slab.len());
        if more > self.slab.spare_capacity_mut().len() {
            self.slab.reserve_exact(more);
            huge::advise_spare(&mut self.slab);
        }
        if self.commit_refs.len() < capacity as usize {
            self.commit_refs.resize(capacity as usize, 0);
        }
        let slab = &self.slab;
        let hasher = &self.hasher;
        self.index.reserve((capacity as usize).saturating_sub(self.len as usize), |&s| {
            hasher.hash_one(slab[s as usize].id())
        });
        self.capacity = capacity;
    }

    /// Records in the table.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the table holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no record can be added.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// The slot of reservation `id`.
    pub fn find(&self, id: u128) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        let slab = &self.slab;
        self.index.find(hash, |&slot| slab[slot as usize].id() == id).copied()
    }

    /// Adds a record whose id is not in the table yet; `None` when the table is full.
    pub fn insert(&mut self, hold: Hold) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        debug_assert!(self.find(hold.id()).is_none());
        let slot = if self.free_head != NIL {
            let slot = self.free_head;
            self.before_change(slot);
            self.free_head = self.slab[slot as usize].link();
            self.slab[slot as usize] = hold;
            slot
        } else {
            self.slab.push(hold);
            (self.slab.len() - 1) as u32
        };
        let hash = self.hasher.hash_one(hold.id());
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| hasher.hash_one(slab[s as usize].id()));
        self.len += 1;
        Some(slot)
    }

    /// Removes the record in `slot` (it must not be filed in the wheel any more).
    pub fn remove(&mut self, slot: u32) {
        self.before_change(slot);
        // Written only if set: the zeroed pages of unconfirmed slots stay untouched.
        if self.commit_refs[slot as usize] != 0 {
            self.commit_refs[slot as usize] = 0;
        }
        let id = self.slab[slot as usize].id();
        let hash = self.hasher.hash_one(id);
        let slab = &self.slab;
        let entry = self.index.find_entry(hash, |&s| slab[s as usize].id() == id).expect("indexed record");
        entry.remove();
        let free_head = self.free_head;
        self.slab[slot as usize].set_link(free_head);
        self.slab[slot as usize].set_state(ReservationState::None);
        self.free_head = slot;
        self.len -= 1;
    }

    /// The record in `slot`.
    pub fn get(&self, slot: u32) -> &Hold {
        &self.slab[slot as usize]
    }

    /// The record in `slot`, to change it.
    pub fn get_mut(&mut self, slot: u32) -> &mut Hold {
        self.before_change(slot);
        &mut self.slab[slot as usize]
    }

    /// Every live record, in slot order (for audits and snapshots; not for the hot path).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Hold)> {
        self.slab.iter().enumerate().filter(|(_, h)| !h.is_free()).map(|(i, h)| (i as u32, h))
    }
}

impl Links for HoldTable {
    fn next(&self, i: u32) -> u32 {
        self.slab[i as usize].link()
    }
    fn set_next(&mut self, i: u32, next: u32) {
        self.slab[i as usize].set_link(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_reuse() {
        let mut t = HoldTable::with_capacity(3);
        let a = t.insert(Hold::new(10, 1, 1, 2, 100)).unwrap();
        let b = t.insert(Hold::new(u128::MAX, 2, HOLD_POOL_ID_MAX, HOLD_QTY_MAX, WHEN_MAX_MS)).unwrap();
        let c = t.insert(Hold::new(12, 3, 1, 1, 100)).unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert(Hold::new(13, 3, 1, 1, 100)), None);
        assert_eq!(t.find(u128::MAX), Some(b));
        assert_eq!(t.get(b).user(), 2);
        let h = t.get(b);
        assert_eq!((h.qty(), h.when_ms(), h.id(), h.pool()), (HOLD_QTY_MAX, WHEN_MAX_MS, u128::MAX, HOLD_POOL_ID_MAX));
        t.set_next(b, 77);
        assert_eq!((t.next(b), t.get(b).qty(), t.get(b).pool()), (77, HOLD_QTY_MAX, HOLD_POOL_ID_MAX));
        t.get_mut(b).set_when_ms(u64::MAX);
        assert_eq!((t.get(b).when_ms(), t.get(b).pool()), (WHEN_MAX_MS, HOLD_POOL_ID_MAX), "clamped, pool kept");
        assert_eq!(t.get(b).state(), ReservationState::Held);
        t.get_mut(b).set_state(ReservationState::Expired);
        assert_eq!((t.get(b).qty(), t.get(b).state()), (HOLD_QTY_MAX, ReservationState::Expired));
        t.remove(a);
        assert_eq!(t.find(10), None);
        assert_eq!(t.len(), 2);
        let d = t.insert(Hold::new(14, 4, 1, 1, 100)).unwrap();
        assert_eq!(d, a, "freed slot is reused");
        assert_eq!(t.find(14), Some(d));
        assert_eq!(t.find(12), Some(c));
        assert_eq!(t.iter().count(), 3);
    }
}
