//! The reservation table of one core: fixed-size records in a slab allocated once at start
//! (from `holds_max_per_core`), and an index from reservation id to slab slot that stores
//! only the 4-byte slot. A held reservation costs 52 bytes of record plus 5 to 9 bytes of
//! index (4-byte slot and 1 control byte per bucket, at a load factor between 7/16 and
//! 7/8); inserting one allocates nothing.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::wheel::{Links, NIL};
use crate::protocol::ReservationState;

/// The largest quantity one reservation can hold: the record keeps its state in the top
/// three bits of the quantity's word.
pub const HOLD_QTY_MAX: u32 = (1 << 29) - 1;
const QTY_BITS: u32 = 29;

/// One reservation, 52 bytes with 4-byte alignment: ids and the time are stored as 32-bit
/// words (a `u128` or `u64` field would pad the record), and the state shares a word with
/// the quantity. With the index, a live hold costs about 60 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    id: [u32; 4],
    user: [u32; 4],
    /// Held: when the hold expires. Final: when the record is purged (ms since the epoch).
    when_ms: [u32; 2],
    /// Quantity in the low 29 bits, [`ReservationState`] in the top 3.
    qty_state: u32,
    /// Pool id.
    pool: u32,
    /// Timer-wheel link, or the free-list link of an unused slot.
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Hold>() == 52);

fn split(v: u128) -> [u32; 4] {
    [v as u32, (v >> 32) as u32, (v >> 64) as u32, (v >> 96) as u32]
}
fn join(v: [u32; 4]) -> u128 {
    v[0] as u128 | (v[1] as u128) << 32 | (v[2] as u128) << 64 | (v[3] as u128) << 96
}

impl Hold {
    /// A new held reservation (`qty` at most [`HOLD_QTY_MAX`]).
    pub fn new(id: u128, user: u128, pool: u32, qty: u32, expires_at_ms: u64) -> Self {
        assert!(qty <= HOLD_QTY_MAX, "quantity checked by the caller");
        Hold {
            id: split(id),
            user: split(user),
            when_ms: [expires_at_ms as u32, (expires_at_ms >> 32) as u32],
            qty_state: qty | (ReservationState::Held as u32) << QTY_BITS,
            pool,
            next: NIL,
        }
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
        self.qty_state & HOLD_QTY_MAX
    }
    /// Pool id.
    pub fn pool(&self) -> u32 {
        self.pool
    }
    /// Held: when the hold expires. Final: when the record is purged (ms since the epoch).
    pub fn when_ms(&self) -> u64 {
        self.when_ms[0] as u64 | (self.when_ms[1] as u64) << 32
    }
    /// Sets [`Self::when_ms`].
    pub fn set_when_ms(&mut self, when_ms: u64) {
        self.when_ms = [when_ms as u32, (when_ms >> 32) as u32];
    }
    /// Current state.
    pub fn state(&self) -> ReservationState {
        ReservationState::from_u8((self.qty_state >> QTY_BITS) as u8).expect("valid state bits")
    }
    /// Moves to `state`.
    pub fn set_state(&mut self, state: ReservationState) {
        self.qty_state = self.qty() | (state as u32) << QTY_BITS;
    }
    fn is_free(&self) -> bool {
        self.state() == ReservationState::None
    }
}

/// The table: slab, free list and id index.
pub struct HoldTable {
    slab: Vec<Hold>,
    free_head: u32,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    capacity: u32,
    len: u32,
}

impl HoldTable {
    /// A table for at most `capacity` records, allocated now.
    pub fn with_capacity(capacity: u32) -> Self {
        HoldTable {
            slab: Vec::with_capacity(capacity as usize),
            free_head: NIL,
            index: HashTable::with_capacity(capacity as usize),
            hasher: DefaultHashBuilder::default(),
            capacity,
            len: 0,
        }
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
            self.free_head = self.slab[slot as usize].next;
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
        let id = self.slab[slot as usize].id();
        let hash = self.hasher.hash_one(id);
        let slab = &self.slab;
        let entry = self.index.find_entry(hash, |&s| slab[s as usize].id() == id).expect("indexed record");
        entry.remove();
        self.slab[slot as usize].next = self.free_head;
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
        &mut self.slab[slot as usize]
    }

    /// Every live record, in slot order (for audits and snapshots; not for the hot path).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Hold)> {
        self.slab.iter().enumerate().filter(|(_, h)| !h.is_free()).map(|(i, h)| (i as u32, h))
    }
}

impl Links for HoldTable {
    fn next(&self, i: u32) -> u32 {
        self.slab[i as usize].next
    }
    fn set_next(&mut self, i: u32, next: u32) {
        self.slab[i as usize].next = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_reuse() {
        let mut t = HoldTable::with_capacity(3);
        let a = t.insert(Hold::new(10, 1, 1, 2, 100)).unwrap();
        let b = t.insert(Hold::new(u128::MAX, 2, 1, HOLD_QTY_MAX, u64::MAX - 1)).unwrap();
        let c = t.insert(Hold::new(12, 3, 1, 1, 100)).unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert(Hold::new(13, 3, 1, 1, 100)), None);
        assert_eq!(t.find(u128::MAX), Some(b));
        assert_eq!(t.get(b).user(), 2);
        assert_eq!((t.get(b).qty(), t.get(b).when_ms(), t.get(b).id()), (HOLD_QTY_MAX, u64::MAX - 1, u128::MAX));
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
