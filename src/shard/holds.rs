//! The reservation table of one core: live holds in fixed-size records in a slab allocated
//! once at start (from `holds_max_per_core`), finished reservations in a ring of compact
//! records of their own ([`super::retained`], sized from a memory budget), and one index
//! from reservation id to either, which stores only a 4-byte slot. A held reservation costs
//! 48 bytes of record, a 4-byte back link for the timing wheel and 5 to 9 bytes of index
//! (4-byte slot and 1 control byte per bucket, at a load factor between 7/16 and 7/8);
//! inserting one allocates nothing. Finished reservations never take a live hold's place:
//! a confirm, release or expiry moves the record from the slab to the ring at once. The
//! tables are large and accessed at random, so they ask for 2 MiB pages ([`super::huge`]).

use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::huge::{self, HugeAlloc};
use super::retained::{Record, Ring};
use super::wheel::{ENTRY_MAX, Links, NIL};
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
    /// Time in the low 42 bits (held: when the hold expires; a finished one read from the
    /// ring: when it finished; ms since the epoch), pool id in the high 22.
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
    /// Held: when the hold expires. Finished ([`HoldTable::get`] of a ring position): when it
    /// finished (ms since the epoch).
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

/// Index values with this bit set name a position in the ring of finished reservations;
/// without it, a slot of the slab of live holds.
pub const RETAINED: u32 = 1 << 31;

/// The table: live holds (slab, wheel back links, free list), finished reservations (ring)
/// and the id index over both.
pub struct HoldTable {
    slab: Vec<Hold>,
    /// The wheel's back link of each slot of the slab.
    prev: Vec<u32>,
    free_head: u32,
    index: HashTable<u32, HugeAlloc>,
    hasher: DefaultHashBuilder,
    capacity: u32,
    len: u32,
    ring: Ring,
    /// A snapshot being taken.
    cow: Option<Cow>,
}

/// Copy-on-write state of a snapshot in progress: live records are read in slot order from
/// `cursor` to `end` while the table keeps changing; a slot not read yet is saved as it
/// was before its first change, so the snapshot shows the table as it was at its start.
/// The ring is read after the slab ([`Ring::snapshot_begin`]).
struct Cow {
    end: u32,
    cursor: u32,
    saved: HashMap<u32, Hold>,
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
    /// Held: expiry. Final: when it finished (ms since the epoch).
    pub when_ms: u64,
    /// Commit reference (0: none).
    pub commit_ref: u128,
}

impl HoldTable {
    /// A table for at most `capacity` live holds and `retained` finished reservations,
    /// allocated now (the ring's records as it fills).
    pub fn with_capacity(capacity: u32, retained: u32) -> Self {
        // Slab slots stay below both the ring tag and the wheel's list tags.
        const _: () = assert!(RETAINED <= ENTRY_MAX);
        assert!(capacity < RETAINED && retained < RETAINED, "checked by the config");
        let mut slab = Vec::with_capacity(capacity as usize);
        huge::advise_spare(&mut slab);
        let mut prev = Vec::with_capacity(capacity as usize);
        huge::advise_spare(&mut prev);
        HoldTable {
            slab,
            prev,
            free_head: NIL,
            index: HashTable::with_capacity_in(capacity as usize + retained as usize, HugeAlloc),
            hasher: DefaultHashBuilder::default(),
            capacity,
            len: 0,
            ring: Ring::with_capacity(retained),
            cow: None,
        }
    }

    /// The id of the record an index value names.
    fn id_at(slab: &[Hold], ring: &Ring, v: u32) -> u128 {
        if v & RETAINED != 0 { ring.get(v & !RETAINED).id() } else { slab[v as usize].id() }
    }

    /// Before slot `slot` changes: keep its old content for a snapshot in progress.
    fn before_change(&mut self, slot: u32) {
        if let Some(cow) = &mut self.cow {
            if slot >= cow.cursor && slot < cow.end {
                cow.saved.entry(slot).or_insert(self.slab[slot as usize]);
            }
        }
    }

    /// Starts a snapshot of the table as it is now; answers how many records (live, then
    /// finished) it holds. Read it with [`Self::snapshot_chunk`] while the table keeps
    /// changing.
    pub fn snapshot_begin(&mut self) -> u32 {
        assert!(self.cow.is_none(), "one snapshot at a time");
        self.cow = Some(Cow { end: self.slab.len() as u32, cursor: 0, saved: HashMap::new() });
        self.len + self.ring.snapshot_begin()
    }

    /// Appends up to `max` records of the snapshot in progress to `out`: the live holds in
    /// slot order, then the finished reservations oldest first; true once all of them have
    /// been given (the snapshot is then over).
    pub fn snapshot_chunk(&mut self, max: usize, out: &mut Vec<HoldSnap>) -> bool {
        let mut given = 0;
        if let Some(cow) = self.cow.as_mut() {
            while cow.cursor < cow.end && given < max {
                let slot = cow.cursor;
                cow.cursor += 1;
                let h = cow.saved.remove(&slot).unwrap_or(self.slab[slot as usize]);
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
                    commit_ref: 0,
                });
            }
            if cow.cursor < cow.end {
                return false;
            }
            self.cow = None;
        }
        self.ring.snapshot_chunk(max - given, |r, commit_ref| {
            out.push(HoldSnap {
                id: r.id(),
                user: r.user(),
                pool: r.pool(),
                qty: r.qty(),
                state: r.state() as u8,
                when_ms: r.finished_at_ms(),
                commit_ref,
            })
        })
    }

    /// The commit reference of the reservation in `slot` (0: none; live holds have none).
    pub fn commit_ref(&self, slot: u32) -> u128 {
        if slot & RETAINED != 0 { self.ring.commit_ref(slot & !RETAINED) } else { 0 }
    }

    /// Changes the most live holds and finished reservations the table takes; growing
    /// allocates now. A slab above a lowered limit stays as it is and refuses new holds
    /// until it is below; a smaller ring drops its oldest records (answered).
    pub fn set_capacity(&mut self, capacity: u32, retained: u32) -> Vec<Record> {
        // Slab slots stay below both the ring tag and the wheel's list tags.
        const _: () = assert!(RETAINED <= ENTRY_MAX);
        assert!(capacity < RETAINED && retained < RETAINED, "checked by the config");
        let more = (capacity as usize).saturating_sub(self.slab.len());
        if more > self.slab.spare_capacity_mut().len() {
            self.slab.reserve_exact(more);
            huge::advise_spare(&mut self.slab);
            self.prev.reserve_exact(more);
        }
        self.capacity = capacity;
        let mut gone = Vec::new();
        if retained != self.ring.capacity() {
            for (pos, _) in self.ring.iter().collect::<Vec<_>>() {
                self.unindex(pos | RETAINED);
            }
            gone = self.ring.resize(retained);
            for (pos, _) in self.ring.iter().collect::<Vec<_>>() {
                self.index_value(pos | RETAINED);
            }
        }
        let (slab, ring, hasher) = (&self.slab, &self.ring, &self.hasher);
        let live = (capacity as usize).saturating_sub(self.len as usize);
        let finished = (retained as usize).saturating_sub(ring.len() as usize);
        self.index.reserve(live + finished, |&v| hasher.hash_one(Self::id_at(slab, ring, v)));
        gone
    }

    /// Live holds in the table.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the table holds no live hold.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no live hold can be added.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// The finished reservations.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The slot of reservation `id`: a slab slot, or a ring position with [`RETAINED`] set.
    pub fn find(&self, id: u128) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        let (slab, ring) = (&self.slab, &self.ring);
        self.index.find(hash, |&v| Self::id_at(slab, ring, v) == id).copied()
    }

    fn index_value(&mut self, v: u32) {
        let (slab, ring, hasher) = (&self.slab, &self.ring, &self.hasher);
        let hash = hasher.hash_one(Self::id_at(slab, ring, v));
        self.index.insert_unique(hash, v, |&w| hasher.hash_one(Self::id_at(slab, ring, w)));
    }

    fn unindex(&mut self, v: u32) {
        let (slab, ring) = (&self.slab, &self.ring);
        let id = Self::id_at(slab, ring, v);
        let hash = self.hasher.hash_one(id);
        let entry = self.index.find_entry(hash, |&w| w == v).expect("indexed record");
        entry.remove();
    }

    /// Adds a live hold whose id is not in the table yet; `None` when the table is full.
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
            self.prev.push(NIL);
            (self.slab.len() - 1) as u32
        };
        self.index_value(slot);
        self.len += 1;
        Some(slot)
    }

    /// Removes the live hold in `slot` (it must not be filed in the wheel any more).
    #[cfg(test)]
    fn remove(&mut self, slot: u32) {
        self.unindex(slot);
        self.free_slot(slot);
    }

    /// Puts `slot`, whose hold is neither indexed nor filed any more, on the free list.
    fn free_slot(&mut self, slot: u32) {
        self.before_change(slot);
        let free_head = self.free_head;
        self.slab[slot as usize].set_link(free_head);
        self.slab[slot as usize].set_state(ReservationState::None);
        self.free_head = slot;
        self.len -= 1;
    }

    /// Moves the live hold in `slot` (out of the wheel) to the ring as finished in `state`
    /// at `at_ms`, with `commit_ref`; answers its new slot. The ring must have room.
    pub fn finish(&mut self, slot: u32, state: ReservationState, at_ms: u64, commit_ref: u128) -> u32 {
        let h = self.slab[slot as usize];
        let v = self.ring.push(Record::new(h.id(), h.user(), h.pool(), h.qty(), state, at_ms), commit_ref) | RETAINED;
        // The index entry stays where it is and names the ring now: one probe, into the
        // bucket the operation that finished the hold has just looked up.
        let hash = self.hasher.hash_one(h.id());
        *self.index.find_mut(hash, |&w| w == slot).expect("indexed record") = v;
        self.free_slot(slot);
        v
    }

    /// Adds a finished reservation to the ring (which must have room); answers its slot.
    pub fn retain(&mut self, record: Record, commit_ref: u128) -> u32 {
        let v = self.ring.push(record, commit_ref) | RETAINED;
        self.index_value(v);
        v
    }

    /// Forgets the oldest finished reservation, if any; answers it.
    pub fn forget_oldest(&mut self) -> Option<Record> {
        let (pos, record) = self.ring.front()?;
        self.unindex(pos | RETAINED);
        self.ring.pop_front();
        Some(record)
    }

    /// The record in `slot`, live or finished (a finished one reads as a hold whose time is
    /// when it finished).
    pub fn get(&self, slot: u32) -> Hold {
        if slot & RETAINED == 0 {
            return self.slab[slot as usize];
        }
        let r = self.ring.get(slot & !RETAINED);
        let mut h = Hold::new(r.id(), r.user(), r.pool(), r.qty(), r.finished_at_ms());
        h.set_state(r.state());
        h
    }

    /// The live hold in `slot`, to change it.
    pub fn get_mut(&mut self, slot: u32) -> &mut Hold {
        assert!(slot & RETAINED == 0, "finished records do not change");
        self.before_change(slot);
        &mut self.slab[slot as usize]
    }

    /// Every record, live holds in slot order then finished ones oldest first, with its
    /// slot (for audits and snapshots; not for the hot path).
    pub fn iter(&self) -> impl Iterator<Item = (u32, Hold)> + '_ {
        let live = self.slab.iter().enumerate().filter(|(_, h)| !h.is_free()).map(|(i, h)| (i as u32, *h));
        live.chain(self.ring.iter().map(|(pos, _)| (pos | RETAINED, self.get(pos | RETAINED))))
    }
}

impl Links for HoldTable {
    fn next(&self, i: u32) -> u32 {
        self.slab[i as usize].link()
    }
    fn set_next(&mut self, i: u32, next: u32) {
        self.slab[i as usize].set_link(next);
    }
    fn prev(&self, i: u32) -> u32 {
        self.prev[i as usize]
    }
    fn set_prev(&mut self, i: u32, prev: u32) {
        self.prev[i as usize] = prev;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_reuse() {
        let mut t = HoldTable::with_capacity(3, 3);
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

    #[test]
    fn a_finished_hold_moves_to_the_ring_and_is_found_there() {
        let mut t = HoldTable::with_capacity(2, 2);
        let a = t.insert(Hold::new(10, 1, 3, 2, 100)).unwrap();
        let b = t.insert(Hold::new(11, 1, 3, 5, 100)).unwrap();
        assert!(t.is_full());
        let a_done = t.finish(a, ReservationState::Confirmed, 50, 0xABC);
        assert_ne!(a_done & RETAINED, 0, "a ring position");
        assert_eq!((t.len(), t.ring().len()), (1, 1));
        assert!(!t.is_full(), "the live place is free at once");
        assert_eq!(t.find(10), Some(a_done));
        let h = t.get(a_done);
        assert_eq!((h.id(), h.user(), h.pool(), h.qty()), (10, 1, 3, 2));
        assert_eq!((h.state(), h.when_ms(), t.commit_ref(a_done)), (ReservationState::Confirmed, 50, 0xABC));
        let c = t.insert(Hold::new(12, 2, 3, 1, 100)).unwrap();
        assert_eq!(c, a, "the freed slot is reused");
        t.finish(b, ReservationState::Released, 60, 0);
        assert_eq!(t.forget_oldest().map(|r| r.id()), Some(10));
        assert_eq!((t.find(10), t.find(11).map(|s| s & RETAINED != 0), t.find(12)), (None, Some(true), Some(c)));
        let ids: Vec<u128> = t.iter().map(|(_, h)| h.id()).collect();
        assert_eq!(ids, vec![12, 11], "live holds, then finished ones");
    }
}
