//! What one connection sends: the next frame's operations, chosen users and pools, unique
//! reservation ids, and the follow-ups (confirms, releases) owed to earlier holds.
//!
//! How it works:
//! - Users are `index + 1` with the index drawn uniformly or from a zipf distribution
//!   (index 0, user 1, is the hottest); pools likewise by index into the created pools.
//! - In shard-aware mode a connection only sends operations of users homed on its core:
//!   it draws users from the distribution and keeps the first one whose
//!   `home_core(user, cores)` is its core. So each core's connections see the distribution
//!   restricted to that core's users (with zipf, the hottest user drives one core only).
//!   After [`SHARD_AWARE_DRAWS_MAX`] draws it walks on from the last draw to the next user
//!   of its core; setup checked that every core has one, so this ends.
//! - Reservation ids are `nonce (32 bits) | connection (32 bits) | counter (64 bits)`: the
//!   nonce is random per run, so ids are unique across runs against the same server, and
//!   the connection and counter make them unique within a run without coordination.
//! - reserve-confirm queues every successful hold for a confirm; churn queues a fixed
//!   fraction of them (an accumulator, so the fraction is exact rather than random) for a
//!   release; mixed gives the successful holds their follow-ups in turn from [`MIXED_FATES`]
//!   (so the shares are exact too). Each kind of follow-up has its queue, and a frame
//!   carries one kind (one opcode); queued follow-ups go out first, up to --ops-per-frame
//!   per frame, the queues taken in turn, so they stay within about depth × ops-per-frame
//!   entries.
//! - Nothing here allocates per frame: the operation vectors and the queue are reused.

use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use shardcap::protocol::{
    ConfirmOp, ExtendOp, Header, LookupOp, Opcode, ReleaseOp, ReserveOp, encode_batch, home_core,
};

use crate::args::{Dist, Plan, Workload};

/// Draws from the distribution before a shard-aware connection walks to the next user of
/// its core.
pub const SHARD_AWARE_DRAWS_MAX: u32 = 64;

/// The kind of a request frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// One ping.
    Ping,
    /// A batch of reserves.
    Reserve,
    /// A batch of confirms.
    Confirm,
    /// A batch of releases.
    Release,
    /// A batch of extends.
    Extend,
    /// A batch of lookups.
    Lookup,
}

/// What the mixed workload does with a successful hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Confirmed in a later frame.
    Confirm,
    /// Released in a later frame.
    Release,
    /// Extended by the run's TTL in a later frame, then left to expire.
    Extend,
    /// Looked up in a later frame, then left to expire.
    Lookup,
    /// Left to expire.
    Expire,
}

/// The mixed workload's follow-ups, given to successful holds in turn: 20% confirmed, 30%
/// released, 10% extended, 10% looked up, 30% left to expire. Interleaved so that every
/// short stretch of holds has the same mix. Of the holds, 60% stay for their TTL (or two
/// TTLs when extended), which with the short default TTL bounds the live holds at about
/// 0.6 × reserves per second × TTL.
pub const MIXED_FATES: [Fate; 10] = [
    Fate::Confirm,
    Fate::Release,
    Fate::Expire,
    Fate::Extend,
    Fate::Release,
    Fate::Confirm,
    Fate::Expire,
    Fate::Lookup,
    Fate::Release,
    Fate::Expire,
];

/// The follow-up kinds, in the order of their queues.
const FOLLOW_UPS: [FrameKind; 4] = [FrameKind::Confirm, FrameKind::Release, FrameKind::Extend, FrameKind::Lookup];

/// Draws an index in `0..n`.
#[derive(Clone, Copy, Debug)]
pub enum Picker {
    /// Every index equally likely.
    Uniform {
        /// Number of indexes.
        n: u64,
    },
    /// Zipf: index 0 is the hottest.
    Zipf {
        /// Number of indexes.
        n: u64,
        /// The distribution over 1..=n.
        zipf: Zipf<f64>,
    },
}

impl Picker {
    /// A picker over `0..n`.
    pub fn new(dist: Dist, n: u64, theta: f64) -> Picker {
        match dist {
            Dist::Uniform => Picker::Uniform { n },
            Dist::Zipf => Picker::Zipf {
                n,
                zipf: Zipf::new(n as f64, theta).expect("n >= 1 and theta >= 0, checked by the plan"),
            },
        }
    }

    /// The number of indexes.
    pub fn len(&self) -> u64 {
        match *self {
            Picker::Uniform { n } | Picker::Zipf { n, .. } => n,
        }
    }

    /// Draws an index.
    pub fn pick(&self, rng: &mut SmallRng) -> u64 {
        match self {
            Picker::Uniform { n } => rng.random_range(0..*n),
            Picker::Zipf { n, zipf } => (zipf.sample(rng) as u64).clamp(1, *n) - 1,
        }
    }
}

/// A successful hold that is owed a confirm or a release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// Reservation id.
    pub id: u128,
    /// Its user.
    pub user: u128,
}

/// The operation source of one connection.
pub struct Generator {
    workload: Workload,
    ops_per_frame: usize,
    qty: u32,
    ttl_ms: u32,
    release_ratio: f64,
    users: Picker,
    pools: Picker,
    pool_ids: Vec<u32>,
    /// `(own core, core count)` in shard-aware mode.
    home: Option<(u16, u16)>,
    rng: SmallRng,
    id_base: u128,
    id_counter: u64,
    /// Queued follow-ups, one queue per kind of [`FOLLOW_UPS`].
    follow_ups: [VecDeque<Hold>; 4],
    /// The queue the next follow-up frame is taken from first.
    follow_up_turn: usize,
    release_credit: f64,
    /// Mixed: the next hold's place in [`MIXED_FATES`].
    fate_turn: usize,
    reserves: Vec<ReserveOp>,
    confirms: Vec<ConfirmOp>,
    releases: Vec<ReleaseOp>,
    extends: Vec<ExtendOp>,
    lookups: Vec<LookupOp>,
}

impl Generator {
    /// The generator of connection `conn` (global index), for a run with `nonce`.
    /// `home` is `(core, cores)` for a shard-aware connection.
    pub fn new(plan: &Plan, pool_ids: &[u32], conn: u32, nonce: u32, home: Option<(u16, u16)>) -> Generator {
        let k = plan.ops_per_frame as usize;
        let depth = plan.depth as usize;
        Generator {
            workload: plan.workload,
            ops_per_frame: k,
            qty: plan.qty,
            ttl_ms: plan.ttl_ms,
            release_ratio: plan.release_ratio,
            users: Picker::new(plan.user_dist, plan.users, plan.zipf_theta),
            pools: Picker::new(plan.pool_dist, pool_ids.len().max(1) as u64, plan.zipf_theta),
            pool_ids: pool_ids.to_vec(),
            home,
            // Each connection its own stream, reproducible from --seed.
            rng: SmallRng::seed_from_u64(plan.seed ^ (conn as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            id_base: ((nonce as u128) << 96) | ((conn as u128) << 64),
            id_counter: 0,
            follow_ups: std::array::from_fn(|_| VecDeque::with_capacity(2 * depth * k)),
            follow_up_turn: 0,
            release_credit: 0.0,
            fate_turn: 0,
            reserves: Vec::with_capacity(k),
            confirms: Vec::with_capacity(k),
            releases: Vec::with_capacity(k),
            extends: Vec::with_capacity(k),
            lookups: Vec::with_capacity(k),
        }
    }

    /// Appends the next frame, of at most `ops_max` operations, to `out`, and writes the
    /// reserves' holds into `sent` (at least `ops_max` long) so that their results can be
    /// matched. Answers the frame's kind and its number of operations.
    pub fn next_frame(
        &mut self,
        request_id: u64,
        ops_max: usize,
        sent: &mut [Hold],
        out: &mut Vec<u8>,
    ) -> (FrameKind, u16) {
        let n = ops_max.min(self.ops_per_frame).max(1);
        if self.workload == Workload::Ping {
            Header::request(Opcode::Ping, request_id, 0, 0).append_to(out);
            return (FrameKind::Ping, 1);
        }
        if let Some(queue) = (0..FOLLOW_UPS.len())
            .map(|i| (self.follow_up_turn + i) % FOLLOW_UPS.len())
            .find(|&q| !self.follow_ups[q].is_empty())
        {
            self.follow_up_turn = (queue + 1) % FOLLOW_UPS.len();
            let count = n.min(self.follow_ups[queue].len());
            let holds = self.follow_ups[queue].drain(..count);
            let kind = FOLLOW_UPS[queue];
            match kind {
                FrameKind::Confirm => {
                    self.confirms.clear();
                    // The id doubles as the commit reference (any non-zero value would do).
                    self.confirms.extend(holds.map(|h| ConfirmOp { id: h.id, user: h.user, commit_ref: h.id }));
                    encode_batch(request_id, &self.confirms, out);
                }
                FrameKind::Release => {
                    self.releases.clear();
                    self.releases.extend(holds.map(|h| ReleaseOp { id: h.id, user: h.user }));
                    encode_batch(request_id, &self.releases, out);
                }
                FrameKind::Extend => {
                    self.extends.clear();
                    let ttl_ms = self.ttl_ms;
                    self.extends.extend(holds.map(|h| ExtendOp { id: h.id, user: h.user, ttl_ms }));
                    encode_batch(request_id, &self.extends, out);
                }
                FrameKind::Lookup => {
                    self.lookups.clear();
                    self.lookups.extend(holds.map(|h| LookupOp { id: h.id, user: h.user }));
                    encode_batch(request_id, &self.lookups, out);
                }
                FrameKind::Ping | FrameKind::Reserve => unreachable!("not a follow-up"),
            }
            return (kind, count as u16);
        }
        self.reserves.clear();
        for slot in sent.iter_mut().take(n) {
            self.id_counter += 1;
            let hold = Hold { id: self.id_base | self.id_counter as u128, user: self.pick_user() };
            let pool = self.pool_ids[self.pools.pick(&mut self.rng) as usize];
            self.reserves.push(ReserveOp {
                id: hold.id,
                user: hold.user,
                pool,
                qty: self.qty,
                ttl_ms: self.ttl_ms,
                priority: 0,
            });
            *slot = hold;
        }
        encode_batch(request_id, &self.reserves, out);
        (FrameKind::Reserve, n as u16)
    }

    /// A reserve succeeded: queue its follow-up if the workload has one.
    pub fn on_held(&mut self, hold: Hold) {
        let queue = match self.workload {
            Workload::ReserveConfirm => Some(FrameKind::Confirm),
            Workload::Churn => {
                self.release_credit += self.release_ratio;
                (self.release_credit >= 1.0).then(|| {
                    self.release_credit -= 1.0;
                    FrameKind::Release
                })
            }
            Workload::Mixed => {
                let fate = MIXED_FATES[self.fate_turn];
                self.fate_turn = (self.fate_turn + 1) % MIXED_FATES.len();
                match fate {
                    Fate::Confirm => Some(FrameKind::Confirm),
                    Fate::Release => Some(FrameKind::Release),
                    Fate::Extend => Some(FrameKind::Extend),
                    Fate::Lookup => Some(FrameKind::Lookup),
                    Fate::Expire => None,
                }
            }
            Workload::Ping | Workload::Reserve => None,
        };
        if let Some(kind) = queue {
            let index = FOLLOW_UPS.iter().position(|k| *k == kind).expect("a follow-up kind");
            self.follow_ups[index].push_back(hold);
        }
    }

    /// Follow-ups queued and not sent yet.
    pub fn follow_ups_pending(&self) -> usize {
        self.follow_ups.iter().map(VecDeque::len).sum()
    }

    fn pick_user(&mut self) -> u128 {
        let mut index = self.users.pick(&mut self.rng);
        let Some((core, cores)) = self.home else { return index as u128 + 1 };
        for _ in 0..SHARD_AWARE_DRAWS_MAX {
            if home_core(index as u128 + 1, cores) == core {
                return index as u128 + 1;
            }
            index = self.users.pick(&mut self.rng);
        }
        // Setup checked that some user of 1..=N is homed on this core: the walk ends
        // within N steps, and in practice within a few.
        let n = self.users.len();
        for _ in 0..n {
            if home_core(index as u128 + 1, cores) == core {
                return index as u128 + 1;
            }
            index = (index + 1) % n;
        }
        unreachable!("setup checked that core {core} is the home of some user")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Args, Plan};
    use clap::Parser;
    use shardcap::protocol::{HEADER_SIZE, decode_header};

    fn plan(flags: &[&str]) -> Plan {
        let mut argv = vec!["shardcap-loadgen", "--seed", "7"];
        argv.extend_from_slice(flags);
        Plan::resolve(Args::parse_from(argv)).expect("valid plan")
    }

    #[test]
    fn reserve_frames_carry_unique_ids_and_valid_users() {
        let plan = plan(&["--workload", "reserve", "--ops-per-frame", "4", "--users", "10"]);
        let mut g = Generator::new(&plan, &[3], 5, 0xabcd_0123, None);
        let mut sent = [Hold::default(); 4];
        let mut out = Vec::new();
        let (kind, n) = g.next_frame(9, 4, &mut sent, &mut out);
        assert_eq!((kind, n), (FrameKind::Reserve, 4));
        assert_eq!(out.len(), HEADER_SIZE + 4 * ReserveOp::SIZE);
        let header = decode_header(out[..HEADER_SIZE].try_into().unwrap()).unwrap();
        assert_eq!((header.request_id, header.op_count), (9, 4));
        let first = ReserveOp::decode(&out[HEADER_SIZE..]).unwrap();
        assert_eq!(first.id, (0xabcd_0123u128 << 96) | (5u128 << 64) | 1);
        assert_eq!((first.pool, first.qty, first.ttl_ms), (3, 1, 60_000));
        assert!(sent.iter().all(|h| (1..=10).contains(&h.user)));
        assert_eq!(sent[3].id & 0xffff_ffff_ffff_ffff, 4);
    }

    #[test]
    fn quota_limits_the_frame() {
        let plan = plan(&["--workload", "reserve", "--ops-per-frame", "8"]);
        let mut g = Generator::new(&plan, &[1], 0, 1, None);
        let mut sent = [Hold::default(); 8];
        let mut out = Vec::new();
        assert_eq!(g.next_frame(1, 3, &mut sent, &mut out).1, 3);
    }

    #[test]
    fn reserve_confirm_confirms_every_hold_first() {
        let plan = plan(&["--workload", "reserve-confirm", "--ops-per-frame", "2"]);
        let mut g = Generator::new(&plan, &[1], 0, 1, None);
        let mut sent = [Hold::default(); 2];
        let mut out = Vec::new();
        g.next_frame(1, 2, &mut sent, &mut out);
        let held = sent;
        held.iter().for_each(|h| g.on_held(*h));
        out.clear();
        assert_eq!(g.next_frame(2, 2, &mut sent, &mut out), (FrameKind::Confirm, 2));
        let confirm = ConfirmOp::decode(&out[HEADER_SIZE..]).unwrap();
        assert_eq!((confirm.id, confirm.user), (held[0].id, held[0].user));
        assert_eq!(g.follow_ups_pending(), 0);
        out.clear();
        assert_eq!(g.next_frame(3, 2, &mut sent, &mut out).0, FrameKind::Reserve);
    }

    #[test]
    fn churn_releases_the_exact_fraction() {
        let plan = plan(&["--workload", "churn", "--release-ratio", "0.25"]);
        let mut g = Generator::new(&plan, &[1], 0, 1, None);
        for i in 1..=100u128 {
            g.on_held(Hold { id: i, user: i });
        }
        assert_eq!(g.follow_ups_pending(), 25);
        assert_eq!(plan.ttl_ms, 2_000, "churn's default TTL is short");
    }

    #[test]
    fn mixed_gives_every_follow_up_its_exact_share() {
        let plan = plan(&["--workload", "mixed", "--ops-per-frame", "1"]);
        assert_eq!(plan.ttl_ms, 5_000, "mixed's default TTL is short");
        let mut g = Generator::new(&plan, &[1], 0, 1, None);
        for i in 1..=100u128 {
            g.on_held(Hold { id: i, user: i });
        }
        // 20 confirms, 30 releases, 10 extends, 10 lookups; 30 holds are left to expire.
        assert_eq!(g.follow_ups_pending(), 70);
        let (mut sent, mut out) = ([Hold::default(); 1], Vec::new());
        let mut frames = std::collections::HashMap::new();
        for request_id in 1..=70 {
            out.clear();
            let (kind, n) = g.next_frame(request_id, 1, &mut sent, &mut out);
            assert_eq!(n, 1);
            let header = decode_header(out[..HEADER_SIZE].try_into().unwrap()).unwrap();
            let opcode = match kind {
                FrameKind::Confirm => Opcode::Confirm,
                FrameKind::Release => Opcode::Release,
                FrameKind::Extend => {
                    let extend = ExtendOp::decode(&out[HEADER_SIZE..]).unwrap();
                    assert_eq!(extend.ttl_ms, 5_000, "an extend names the run's TTL");
                    Opcode::Extend
                }
                FrameKind::Lookup => Opcode::Lookup,
                other => panic!("a follow-up expected, got {other:?}"),
            };
            assert_eq!(header.opcode, opcode as u8);
            *frames.entry(format!("{kind:?}")).or_insert(0) += 1;
        }
        let expected: std::collections::HashMap<String, i32> =
            [("Confirm", 20), ("Release", 30), ("Extend", 10), ("Lookup", 10)].map(|(k, v)| (k.to_string(), v)).into();
        assert_eq!(frames, expected);
        assert_eq!(g.follow_ups_pending(), 0);
        out.clear();
        assert_eq!(g.next_frame(71, 1, &mut sent, &mut out).0, FrameKind::Reserve);
    }

    #[test]
    fn shard_aware_users_are_homed_on_the_connection_core() {
        for dist in ["uniform", "zipf"] {
            let plan = plan(&["--users", "1000", "--user-dist", dist]);
            for core in 0..3u16 {
                let mut g = Generator::new(&plan, &[1], core as u32, 1, Some((core, 3)));
                for _ in 0..500 {
                    let user = g.pick_user();
                    assert!((1..=1000).contains(&user));
                    assert_eq!(home_core(user, 3), core);
                }
            }
        }
    }

    #[test]
    fn zipf_prefers_low_indexes() {
        let picker = Picker::new(Dist::Zipf, 1_000_000, 0.99);
        let mut rng = SmallRng::seed_from_u64(1);
        let draws: Vec<u64> = (0..10_000).map(|_| picker.pick(&mut rng)).collect();
        assert!(draws.iter().all(|&i| i < 1_000_000));
        let hottest = draws.iter().filter(|&&i| i == 0).count();
        // Zipf(1e6, 0.99) gives index 0 about 7% of the draws; uniform would give ~0.
        assert!((400..1_200).contains(&hottest), "{hottest}");
    }
}
