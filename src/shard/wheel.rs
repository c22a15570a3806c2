//! A hierarchical timing wheel with 1 ms resolution that files entries by index into
//! caller-owned link storage, so that arming a timer allocates nothing and a hold costs one
//! `u32` link.
//!
//! How it works: six levels of 64 slots; level `L` slots span `64^L` ms. An entry lives at
//! the lowest level whose slot distinguishes its deadline from the wheel's current time, so
//! level 0 holds the next 64 ms exactly, level 1 the next 4 s in 64 ms slots, and so on
//! (six levels reach 2.2 years; later deadlines wait in the last slot and are re-filed).
//! Advancing takes the earliest due slot and hands its entries back one by one; the caller
//! either fires an entry (its deadline has passed) or files it again, which moves it to a
//! lower level. The lists are doubly linked, so an entry can be taken out early in O(1)
//! ([`TimerWheel::remove`]: a hold that is confirmed or released leaves the wheel, and its
//! slot is free at once). A hold that is extended stays filed at its old deadline, and the
//! caller files it again when that slot comes up. Each entry is in exactly one list at a
//! time, and no operation scans all holds.
//!
//! The `prev` link of the first entry of a list names the list instead of an entry: a value
//! from [`ENTRY_MAX`] + 1 up (one per slot of every level, and one for the list of entries
//! being handed back).

/// The "no entry" link value.
pub const NIL: u32 = u32::MAX;
const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 6;
const MAX_DELTA: u64 = (1u64 << (BITS as usize * LEVELS)) - 1;
/// The list of entries taken from a due slot, after the slots of every level.
const DRAINING_LIST: u32 = (LEVELS * SLOTS) as u32;
/// The largest entry index the wheel can file: the values above it (but [`NIL`]) name lists.
pub const ENTRY_MAX: u32 = NIL - 2 - DRAINING_LIST;

/// The `prev` value of the first entry of list `list`.
fn list_tag(list: u32) -> u32 {
    ENTRY_MAX + 1 + list
}

/// Link storage the wheel threads its lists through: entry `i` has a `next` and a `prev`
/// link.
pub trait Links {
    /// The next entry of entry `i`'s list.
    fn next(&self, i: u32) -> u32;
    /// Sets the next entry of entry `i`'s list.
    fn set_next(&mut self, i: u32, next: u32);
    /// The entry before entry `i` in its list, or the list's tag if `i` is its first.
    fn prev(&self, i: u32) -> u32;
    /// Sets the entry before entry `i`.
    fn set_prev(&mut self, i: u32, prev: u32);
}

/// The wheel itself: slot heads and occupancy bitmaps; the entries are elsewhere.
#[derive(Clone, Debug)]
pub struct TimerWheel {
    /// Time the wheel has been advanced to, in ms.
    elapsed: u64,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Entries taken from a due slot and not yet handed back.
    draining: u32,
    /// No slot is due before this time (a lower bound, so `advance` can return at once).
    next_due_hint: u64,
    len: usize,
}

impl TimerWheel {
    /// An empty wheel whose clock starts at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            elapsed: now_ms,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            draining: NIL,
            next_due_hint: u64::MAX,
            len: 0,
        }
    }

    /// Entries filed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is filed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if some slot may be due at `now_ms` (cheap; call before [`Self::next_due`]).
    pub fn may_have_due(&self, now_ms: u64) -> bool {
        self.draining != NIL || now_ms >= self.next_due_hint
    }

    /// Files entry `i` to come due at `when_ms`. Deadlines at or before the wheel's time
    /// come due at the next advance.
    pub fn insert(&mut self, i: u32, when_ms: u64, links: &mut impl Links) {
        let when = when_ms.clamp(self.elapsed, self.elapsed + MAX_DELTA);
        let level = level_for(self.elapsed, when);
        let slot = ((when >> (level as u32 * BITS)) as usize) & (SLOTS - 1);
        debug_assert!(i <= ENTRY_MAX, "entry index out of range");
        let head = self.heads[level][slot];
        links.set_next(i, head);
        links.set_prev(i, list_tag((level * SLOTS + slot) as u32));
        if head != NIL {
            links.set_prev(head, i);
        }
        self.heads[level][slot] = i;
        self.occupied[level] |= 1 << slot;
        self.len += 1;
        let deadline = self.slot_deadline(level, slot);
        self.next_due_hint = self.next_due_hint.min(deadline);
    }

    /// Hands back the next entry of a slot that is due at `now_ms`, or `None` when no slot
    /// is due. The caller must fire the entry or [`Self::insert`] it again.
    pub fn next_due(&mut self, now_ms: u64, links: &mut impl Links) -> Option<u32> {
        loop {
            if self.draining != NIL {
                let i = self.draining;
                self.draining = links.next(i);
                if self.draining != NIL {
                    links.set_prev(self.draining, list_tag(DRAINING_LIST));
                }
                // Handed back: in no list (`remove` refuses it).
                links.set_next(i, NIL);
                links.set_prev(i, NIL);
                self.len -= 1;
                return Some(i);
            }
            match self.earliest_slot() {
                Some((level, slot, deadline)) if deadline <= now_ms => {
                    self.draining = self.heads[level][slot];
                    links.set_prev(self.draining, list_tag(DRAINING_LIST));
                    self.heads[level][slot] = NIL;
                    self.occupied[level] &= !(1 << slot);
                    self.elapsed = self.elapsed.max(deadline);
                }
                next => {
                    self.elapsed = self.elapsed.max(now_ms);
                    self.next_due_hint = next.map_or(u64::MAX, |(_, _, d)| d);
                    return None;
                }
            }
        }
    }

    /// Takes entry `i`, which is filed, out of the wheel.
    pub fn remove(&mut self, i: u32, links: &mut impl Links) {
        let (prev, next) = (links.prev(i), links.next(i));
        assert_ne!(prev, NIL, "entry {i} is not filed");
        if prev <= ENTRY_MAX {
            links.set_next(prev, next);
        } else {
            let list = prev - ENTRY_MAX - 1;
            if list == DRAINING_LIST {
                self.draining = next;
            } else {
                let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
                debug_assert_eq!(self.heads[level][slot], i, "the first entry of its list");
                self.heads[level][slot] = next;
                if next == NIL {
                    self.occupied[level] &= !(1 << slot);
                }
            }
        }
        if next != NIL {
            links.set_prev(next, prev);
        }
        links.set_next(i, NIL);
        links.set_prev(i, NIL);
        self.len -= 1;
    }

    /// The earliest occupied slot: (level, slot, deadline). Any occupied slot at a lower
    /// level comes before every slot of a higher one.
    fn earliest_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let pos = ((self.elapsed >> (level as u32 * BITS)) as usize) & (SLOTS - 1);
            let rotated = occupied.rotate_right(pos as u32);
            let slot = (pos + rotated.trailing_zeros() as usize) & (SLOTS - 1);
            return Some((level, slot, self.slot_deadline(level, slot)));
        }
        None
    }

    /// When slot `slot` of `level` starts, at or after the wheel's current time.
    fn slot_deadline(&self, level: usize, slot: usize) -> u64 {
        let shift = level as u32 * BITS;
        let range = 1u64 << (shift + BITS);
        let base = self.elapsed & !(range - 1);
        let mut deadline = base + ((slot as u64) << shift);
        if deadline + (1u64 << shift) <= self.elapsed {
            // The slot lies in the next turn of this level.
            deadline += range;
        }
        deadline.max(self.elapsed)
    }
}

/// The level whose slots first tell `when` apart from `elapsed`.
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    ((significant / BITS) as usize).min(LEVELS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Store {
        next: Vec<u32>,
        prev: Vec<u32>,
        when: Vec<u64>,
    }
    impl Store {
        fn new(when: Vec<u64>) -> Store {
            Store { next: vec![NIL; when.len()], prev: vec![NIL; when.len()], when }
        }
    }
    impl Links for Store {
        fn next(&self, i: u32) -> u32 {
            self.next[i as usize]
        }
        fn set_next(&mut self, i: u32, next: u32) {
            self.next[i as usize] = next;
        }
        fn prev(&self, i: u32) -> u32 {
            self.prev[i as usize]
        }
        fn set_prev(&mut self, i: u32, prev: u32) {
            self.prev[i as usize] = prev;
        }
    }

    /// Advances to `now` and returns the entries whose deadline passed, re-filing the rest.
    fn fire(w: &mut TimerWheel, s: &mut Store, now: u64) -> Vec<u32> {
        let mut fired = Vec::new();
        while let Some(i) = w.next_due(now, s) {
            if s.when[i as usize] <= now {
                fired.push(i);
            } else {
                let when = s.when[i as usize];
                w.insert(i, when, s);
            }
        }
        fired.sort();
        fired
    }

    #[test]
    fn fires_exactly_at_the_deadline_on_every_level() {
        let start = 1_700_000_000_000u64;
        let deltas = [1u64, 2, 63, 64, 65, 4095, 4096, 4097, 262_143, 262_144, 16_777_216, 1 << 33];
        for &d in &deltas {
            let mut w = TimerWheel::new(start);
            let mut s = Store::new(vec![start + d]);
            w.insert(0, start + d, &mut s);
            assert!(fire(&mut w, &mut s, start + d - 1).is_empty(), "delta {d} fired early");
            assert_eq!(fire(&mut w, &mut s, start + d), vec![0], "delta {d} not fired on time");
            assert!(w.is_empty());
        }
    }

    #[test]
    fn removes_first_middle_last_and_while_draining() {
        let start = 10_000u64;
        // Entries 0..6 share one level-0 slot; 6 and 7 are on higher levels.
        let mut when = vec![start + 5; 6];
        when.extend([start + 70_000, start + 9_000_000]);
        let mut s = Store::new(when.clone());
        let mut w = TimerWheel::new(start);
        for (i, &t) in when.iter().enumerate() {
            w.insert(i as u32, t, &mut s);
        }
        // Filed last, 5 heads its list; 0 is its last entry.
        w.remove(5, &mut s);
        w.remove(2, &mut s);
        w.remove(0, &mut s);
        w.remove(7, &mut s);
        assert_eq!(w.len(), 4);
        // Start handing back the due slot, then take one out of the list being handed back.
        let first = w.next_due(start + 5, &mut s).unwrap();
        assert_eq!(first, 4);
        w.remove(1, &mut s);
        assert_eq!(w.next_due(start + 5, &mut s), Some(3));
        assert_eq!(w.next_due(start + 5, &mut s), None);
        assert_eq!(fire(&mut w, &mut s, start + 70_000), vec![6]);
        assert!(w.is_empty());
        assert_eq!(fire(&mut w, &mut s, start + 20_000_000), Vec::<u32>::new());
    }

    #[test]
    fn matches_a_sorted_model_under_random_steps() {
        // A small deterministic generator keeps this test independent of any RNG crate.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let start = 5_000u64;
        let n = 2000;
        let mut s = Store::new(vec![0; n]);
        let mut w = TimerWheel::new(start);
        let mut now = start;
        let mut pending: Vec<u32> = Vec::new();
        let mut next_id = 0u32;
        while (next_id as usize) < n || !pending.is_empty() {
            for _ in 0..rnd(5) {
                if (next_id as usize) < n {
                    let when = now + 1 + rnd(300_000);
                    s.when[next_id as usize] = when;
                    w.insert(next_id, when, &mut s);
                    pending.push(next_id);
                    next_id += 1;
                }
            }
            // Take a random pending entry out early now and then (a confirm or release).
            if !pending.is_empty() && rnd(3) == 0 {
                let i = pending.swap_remove(rnd(pending.len() as u64) as usize);
                w.remove(i, &mut s);
            }
            now += rnd(20_000);
            let fired = fire(&mut w, &mut s, now);
            let mut expected: Vec<u32> = pending.iter().copied().filter(|&i| s.when[i as usize] <= now).collect();
            expected.sort();
            assert_eq!(fired, expected, "at {now}");
            pending.retain(|&i| s.when[i as usize] > now);
            assert_eq!(w.len(), pending.len());
        }
    }
}
