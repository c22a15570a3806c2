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
//! lower level. Entries are never unlinked early: a hold that is extended, confirmed or
//! released stays filed, and the caller looks at the record when its slot comes up. Each
//! entry is therefore in exactly one slot list at a time, and no operation scans all holds.

/// The "no entry" link value.
pub const NIL: u32 = u32::MAX;
const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 6;
const MAX_DELTA: u64 = (1u64 << (BITS as usize * LEVELS)) - 1;

/// Link storage the wheel threads its lists through: entry `i` has one `next` link.
pub trait Links {
    /// The link of entry `i`.
    fn next(&self, i: u32) -> u32;
    /// Sets the link of entry `i`.
    fn set_next(&mut self, i: u32, next: u32);
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
        links.set_next(i, self.heads[level][slot]);
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
                links.set_next(i, NIL);
                self.len -= 1;
                return Some(i);
            }
            match self.earliest_slot() {
                Some((level, slot, deadline)) if deadline <= now_ms => {
                    self.draining = self.heads[level][slot];
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
        when: Vec<u64>,
    }
    impl Links for Store {
        fn next(&self, i: u32) -> u32 {
            self.next[i as usize]
        }
        fn set_next(&mut self, i: u32, next: u32) {
            self.next[i as usize] = next;
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
            let mut s = Store { next: vec![NIL], when: vec![start + d] };
            w.insert(0, start + d, &mut s);
            assert!(fire(&mut w, &mut s, start + d - 1).is_empty(), "delta {d} fired early");
            assert_eq!(fire(&mut w, &mut s, start + d), vec![0], "delta {d} not fired on time");
            assert!(w.is_empty());
        }
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
        let mut s = Store { next: vec![NIL; n], when: vec![0; n] };
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
