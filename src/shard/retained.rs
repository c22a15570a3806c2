//! Finished reservations (confirmed, released, expired), kept for idempotent repeats and
//! lookups in a ring of compact records, oldest first, apart from the live holds.
//!
//! A record is 44 bytes (ids, pool, quantity, state and the time it finished), its commit
//! reference 16 more in a parallel ring that is only written where a reference is set, and
//! its entry in the reservation index ([`super::holds`]) at most 12: at most
//! [`RETAINED_RECORD_BYTES`] per record, against 52 bytes of record and link for a live hold.
//! The ring's size comes from a memory budget. Records enter in the order they finish,
//! which is the order of the state machine's time, so the oldest is always at the front:
//! purging records past the longest retention and evicting for room both take from the
//! front, in O(1). The records never change while they are kept; a snapshot reads them in
//! order and saves the few that are overwritten before it has read them.

use std::collections::HashMap;

use super::huge;
use crate::protocol::ReservationState;

/// The memory a retained record may cost at most, in bytes: the record (44), its commit
/// reference (16) and its share of the index (4-byte slot and a control byte per bucket, at
/// a load factor down to 7/16).
pub const RETAINED_RECORD_BYTES: u64 = 72;

const WHEN_BITS: u32 = 42;
const WHEN_MAX_MS: u64 = (1 << WHEN_BITS) - 1;
const QTY_BITS: u32 = 29;
const QTY_MASK: u32 = (1 << QTY_BITS) - 1;

/// One finished reservation in 44 bytes, aligned to 4 so that no padding is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Record {
    id: u128,
    user: u128,
    /// When it finished in the low 42 bits (ms since the epoch), pool id in the high 22.
    when_pool: u64,
    /// Quantity in the low 29 bits, [`ReservationState`] in the top 3.
    qty_state: u32,
}

const _: () = assert!(std::mem::size_of::<Record>() == 44);
const _: () = assert!(std::mem::size_of::<Record>() as u64 + 16 + 12 <= RETAINED_RECORD_BYTES);

impl Record {
    /// A finished reservation (`state` is final; `qty` and `pool` fit a hold's record).
    pub fn new(id: u128, user: u128, pool: u32, qty: u32, state: ReservationState, finished_at_ms: u64) -> Record {
        debug_assert!(state.is_final());
        Record {
            id,
            user,
            when_pool: finished_at_ms.min(WHEN_MAX_MS) | (pool as u64) << WHEN_BITS,
            qty_state: (qty & QTY_MASK) | (state as u32) << QTY_BITS,
        }
    }
    /// Reservation id.
    pub fn id(&self) -> u128 {
        self.id
    }
    /// User id.
    pub fn user(&self) -> u128 {
        self.user
    }
    /// Pool id.
    pub fn pool(&self) -> u32 {
        (self.when_pool >> WHEN_BITS) as u32
    }
    /// Units.
    pub fn qty(&self) -> u32 {
        self.qty_state & QTY_MASK
    }
    /// The final state.
    pub fn state(&self) -> ReservationState {
        ReservationState::from_u8((self.qty_state >> QTY_BITS) as u8).expect("valid state bits")
    }
    /// When it finished (ms since the epoch).
    pub fn finished_at_ms(&self) -> u64 {
        self.when_pool & WHEN_MAX_MS
    }
}

/// The ring: records and commit references by position, the oldest at `head`.
pub struct Ring {
    records: Vec<Record>,
    /// Commit reference by position (0: none); allocated zeroed, so the OS hands out its
    /// pages only where references are written.
    commit_refs: Vec<u128>,
    head: u32,
    len: u32,
    capacity: u32,
    cow: Option<RingCow>,
}

/// A snapshot being read: positions `cursor..end` (counted from the ring's head at its start)
/// are still to be read; a record overwritten before that is saved first.
struct RingCow {
    start: u32,
    cursor: u32,
    end: u32,
    saved: HashMap<u32, (Record, u128)>,
}

impl Ring {
    /// A ring of at most `capacity` records (memory is reserved now and used as it fills).
    pub fn with_capacity(capacity: u32) -> Ring {
        let mut records = Vec::with_capacity(capacity as usize);
        huge::advise_spare(&mut records);
        Ring { records, commit_refs: vec![0; capacity as usize], head: 0, len: 0, capacity, cow: None }
    }

    /// Records kept.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when no record is kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most records.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The position and record of the oldest record.
    pub fn front(&self) -> Option<(u32, Record)> {
        (self.len > 0).then(|| (self.head, self.records[self.head as usize]))
    }

    /// The record at `pos`.
    pub fn get(&self, pos: u32) -> Record {
        self.records[pos as usize]
    }

    /// The commit reference of the record at `pos` (0: none).
    pub fn commit_ref(&self, pos: u32) -> u128 {
        self.commit_refs[pos as usize]
    }

    /// Adds `record` as the newest; answers its position. The ring must not be full.
    pub fn push(&mut self, record: Record, commit_ref: u128) -> u32 {
        assert!(self.len < self.capacity, "the caller makes room first");
        let pos = ((self.head as u64 + self.len as u64) % self.capacity as u64) as u32;
        if pos as usize == self.records.len() {
            self.records.push(record);
        } else {
            self.before_overwrite(pos);
            self.records[pos as usize] = record;
        }
        // Written only if it changes: untouched pages of the zeroed ring stay unbacked.
        if self.commit_refs[pos as usize] != commit_ref {
            self.commit_refs[pos as usize] = commit_ref;
        }
        self.len += 1;
        pos
    }

    /// Forgets the oldest record; answers its position.
    pub fn pop_front(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let pos = self.head;
        self.head = if self.head + 1 == self.capacity { 0 } else { self.head + 1 };
        self.len -= 1;
        Some(pos)
    }

    /// Changes the most records the ring takes. The ring is rebuilt in order (positions
    /// change: the caller re-indexes with [`Self::iter`]); if it holds more than
    /// `capacity`, the oldest beyond it are dropped and returned.
    pub fn resize(&mut self, capacity: u32) -> Vec<Record> {
        assert!(self.cow.is_none(), "no resize during a snapshot");
        let mut kept: Vec<(Record, u128)> = self.iter().map(|(p, r)| (r, self.commit_ref(p))).collect();
        let dropped = kept.len().saturating_sub(capacity as usize);
        let gone: Vec<Record> = kept.drain(..dropped).map(|(r, _)| r).collect();
        *self = Ring::with_capacity(capacity);
        for (r, c) in kept {
            self.push(r, c);
        }
        gone
    }

    /// Every record with its position, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Record)> + '_ {
        (0..self.len).map(move |k| {
            let pos = ((self.head as u64 + k as u64) % self.capacity as u64) as u32;
            (pos, self.records[pos as usize])
        })
    }

    fn before_overwrite(&mut self, pos: u32) {
        if let Some(cow) = &mut self.cow {
            let k = ((pos as u64 + self.capacity as u64 - cow.start as u64) % self.capacity as u64) as u32;
            if k >= cow.cursor && k < cow.end {
                let old = (self.records[pos as usize], self.commit_refs[pos as usize]);
                cow.saved.entry(k).or_insert(old);
            }
        }
    }

    /// Starts a snapshot of the ring as it is now; answers how many records it holds.
    pub fn snapshot_begin(&mut self) -> u32 {
        assert!(self.cow.is_none(), "one snapshot at a time");
        self.cow = Some(RingCow { start: self.head, cursor: 0, end: self.len, saved: HashMap::new() });
        self.len
    }

    /// Gives up to `max` records of the snapshot in progress to `out`, oldest first, with
    /// their commit references; true once all of them have been given.
    pub fn snapshot_chunk(&mut self, max: usize, mut out: impl FnMut(Record, u128)) -> bool {
        let capacity = self.capacity as u64;
        let cow = self.cow.as_mut().expect("a snapshot in progress");
        let mut given = 0;
        while cow.cursor < cow.end && given < max {
            let k = cow.cursor;
            cow.cursor += 1;
            given += 1;
            let (r, c) = match cow.saved.remove(&k) {
                Some(saved) => saved,
                None => {
                    let pos = ((cow.start as u64 + k as u64) % capacity) as usize;
                    (self.records[pos], self.commit_refs[pos])
                }
            };
            out(r, c);
        }
        let done = cow.cursor >= cow.end;
        if done {
            self.cow = None;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u128, at: u64) -> Record {
        Record::new(id, id + 100, 7, 3, ReservationState::Released, at)
    }

    #[test]
    fn fields_round_trip_at_their_limits() {
        let r = Record::new(u128::MAX, 1, (1 << 22) - 1, (1 << 29) - 1, ReservationState::Expired, WHEN_MAX_MS);
        assert_eq!((r.id(), r.user(), r.pool(), r.qty()), (u128::MAX, 1, (1 << 22) - 1, (1 << 29) - 1));
        assert_eq!((r.state(), r.finished_at_ms()), (ReservationState::Expired, WHEN_MAX_MS));
    }

    #[test]
    fn wraps_oldest_first_and_snapshots_what_it_held() {
        let mut ring = Ring::with_capacity(4);
        for id in 1..=4 {
            ring.push(rec(id, id as u64), id * 10);
        }
        assert!(!ring.push_would_fit());
        assert_eq!(ring.front().map(|(_, r)| r.id()), Some(1));
        assert_eq!(ring.snapshot_begin(), 4);
        let mut seen = Vec::new();
        assert!(!ring.snapshot_chunk(1, |r, c| seen.push((r.id(), c))));
        // Two evictions and two new records overwrite what the snapshot has not read yet.
        for id in 5..=6 {
            ring.pop_front();
            ring.push(rec(id, id as u64), 0);
        }
        assert!(ring.snapshot_chunk(10, |r, c| seen.push((r.id(), c))));
        assert_eq!(seen, vec![(1, 10), (2, 20), (3, 30), (4, 40)], "the ring as it was at the start");
        let ids: Vec<u128> = ring.iter().map(|(_, r)| r.id()).collect();
        assert_eq!(ids, vec![3, 4, 5, 6]);
        assert_eq!(ring.commit_ref(ring.front().unwrap().0), 30);
        let gone = ring.resize(2);
        assert_eq!(gone.iter().map(|r| r.id()).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(ring.iter().map(|(_, r)| r.id()).collect::<Vec<_>>(), vec![5, 6]);
    }

    impl Ring {
        fn push_would_fit(&self) -> bool {
            self.len < self.capacity
        }
    }
}
