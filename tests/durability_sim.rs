//! Durability simulation: the state machines of every core driven through a write-ahead
//! log on a fault-injecting in-memory disk, crashed again and again, and recovered by the
//! real recovery code. After every crash nothing acknowledged may be missing, every
//! invariant must hold, and no unit of capacity may be lost or counted twice, even when
//! the crash falls between a donor's debit and a recipient's credit.
//!
//! # How it works
//!
//! Each core is an [`Engine`] and a disk: the segment files of its log (bytes that are on
//! disk) and the records appended since the last sync (bytes in memory). The simulation
//! applies the server's rules, which live in `src/runtime/core.rs` and `src/wal/`:
//!
//! - `CoreRuntime::apply`: every command is appended to the log before the engine applies
//!   it, if [`record::is_logged`] says it can change the state (peer acks and lookups are
//!   not logged). A new log is a segment header ([`SegmentHeader::encode`]) and starts with
//!   a `SetLimits` record; pools are created by core 0's validation and applied on every
//!   core, durably, before any client operation (the catalog is not under test here).
//! - `LogWriter::run`: a sync writes everything appended since the last one and makes it
//!   durable (group commit: several commands, then one sync, chosen by the test). A batch
//!   that would overflow the segment goes to a new segment, named by
//!   [`segment::file_name`] after its first LSN, as `LogWriter::write` does.
//! - `answers_durable` (sync mode): a client's answer leaves only once a sync covers every
//!   record applied before it was given. Only answers that left are *acknowledged*; the
//!   ledger of what the clients were told is built from them alone.
//! - `send_when_durable` / `release_durable`: a peer message (an [`Envelope`] from the
//!   engine's outbox) goes on the network only once a sync covers the record of the
//!   command that produced it, and so does the `PeerAck` of a received message
//!   (`on_mesh`), which lets the sender forget its copy.
//! - The mesh: each ordered pair of cores is a FIFO link carrying messages and acks;
//!   deliveries interleave across links in an order drawn from the case's seed.
//! - Snapshots (`runtime::snapshot::take`): the engine's state between two commands, with
//!   the LSN of the last record appended, renamed into place only once a sync covers that
//!   LSN, then the older snapshots and the segments it covers are deleted (unless the step
//!   says this clean-up was interrupted). Snapshots are what make the ack rule matter:
//!   acks are not logged, so a replay of the whole log would keep every message anyway;
//!   a snapshot forgets what was acknowledged before it.
//! - Faults, all of which stop the whole process (`main` aborts on any panic; a failed
//!   write or fdatasync panics in `LogWriter::run`), with every core and the network
//!   lost at once: a *write error* on one core after a prefix of its batch reached the
//!   disk; a *short write* that leaves a torn tail cut inside a record; a *power cut*
//!   where each core keeps an arbitrary prefix of its unsynced bytes; a crash while a core
//!   *starts a segment*, leaving a file with part of its header (no record is written to
//!   a segment before its header is durable). Synced bytes are never lost; a snapshot not
//!   yet renamed is.
//! - Restart (`runtime::core_main`, `recover_core`, `CoreRuntime::start_cluster` and
//!   `resume`): each core's disk is written to files in a temporary directory laid out as
//!   the server's data directory (`core-<n>/wal-<lsn>.log`, `snapshot-<lsn>.snap`;
//!   segments padded with zeros as the writer's direct writes and spares leave them),
//!   [`recovery::recover`] loads the newest snapshot, replays the log after it and cuts the
//!   torn tail, the files it leaves are the disk from then on and appending continues
//!   where its good records end (or in a new segment, as `LogWriter::open` does). Time
//!   passes while the server is down. Every core's mesh receivers, log writer and expiry
//!   ticker run from the start, while core 0 has cores 1, 2, ... resume one by one and
//!   then resumes itself; so between resumes, messages are delivered, logs sync and cores
//!   tick (a few events drawn from the seed). Before any of that, right after recovery,
//!   every core queues again every message in [`Engine::unacked`] (behind whatever
//!   already waits for its log); a core that resumes ticks; receivers ignore sequence
//!   numbers they have. Client operations in flight are
//!   lost with their connections: their answers were never acknowledged. Client
//!   operations go straight to their user's home core (the forwarding between cores
//!   carries no state and is not logged).
//!
//! # What is checked
//!
//! After every step, after every recovery (before anything is sent again) and at the end:
//! every engine's `audit` (invariants, held units against the holds); every pool's
//! conservation, with the units in flight counted as the messages a sender still keeps
//! whose sequence number its receiver has not applied; no receiver ahead of its sender;
//! no message forgotten before its receipt was durable; on every link, no message ahead
//! of one its receiver lacks (the receiver stops the server on a gap); held plus
//! confirmed at most the capacity, and the confirmed units at least those of acknowledged
//! confirms; and every acknowledged answer still true: a reservation answered `ok` exists
//! with its user, pool and quantity, in a final state an answer reported, with an expiry
//! no earlier than one reported, while a refused reserve left nothing. Recovery must end
//! at or after the last synced record. At the end the network is made quiet: then nothing
//! is unacknowledged, no reserve waits, no recall is open, and the shards' capacities add
//! up exactly to each pool's capacity; a last crash and recovery must come back to that.
//!
//! `crash_between_debit_and_credit` plays the central case by hand, and
//! `restart_sends_kept_messages_first` the start-up order. The property test generates
//! cases (2 or 3 cores, small pools with one hot core so that shards run dry and borrow,
//! operations, deliveries, syncs, snapshots, clock advances and crashes); a failure
//! prints the shrunk case, and proptest saves it for the next runs. `seeded_runs` runs the
//! cases of 64 fixed seeds and checks that the crashes do hit what they are meant to
//! (units in flight, lost receipts, torn tails, segment starts, snapshots); `SEED=<n>`
//! reruns one of them, and `SIM_TRACE=1` prints every step, delivery, sync, acknowledged
//! answer and recovery.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use shardcap::protocol::control::{PoolCreate, SHARD_FLAG_RECALLING, ShardStatus};
use shardcap::protocol::{
    ConfirmOp, ExtendOp, LookupOp, OpResult, ReleaseOp, ReservationState, ReserveOp, Status, home_core,
};
use shardcap::shard::{Command, Engine, EngineConfig, Envelope, Outcome, PeerMsg, Reply};
use shardcap::wal::segment::{self, SegmentHeader};
use shardcap::wal::{core_dir, record, recovery, snapshot_file};

const START_MS: u64 = 10_000_000;
/// Final records are kept far longer than a case lasts, so that every acknowledged
/// reservation can still be looked up at the end.
const RETENTION_MS: u64 = 100 * 24 * 3_600 * 1_000;
const TTL_DEFAULT_MS: u32 = 1_000;
const TTL_MAX_MS: u32 = 5_000;
/// Small segments, so that logs span several files and batches start new ones.
const SEGMENT_SIZE_MAX_BYTES: usize = 1_024;
/// Reservation records per snapshot chunk (small, so that snapshots have several).
const CHUNK_RECORDS: usize = 8;
/// Most messages delivered while making the network quiet.
const SETTLE_DELIVERIES_MAX: usize = 200_000;

fn limits(core: u16, cores: u16) -> EngineConfig {
    EngineConfig {
        core,
        cores,
        holds_max: 4_096,
        parked_max: 64,
        retention_ms: RETENTION_MS,
        retention_min_ms: 0,
        retained_max: 16384,
        pools_max: 8,
    }
}

/// A segment's bytes as the log writer leaves them on disk: its records followed by
/// zeros, to the end of their 4 KiB block (direct writes cover whole blocks) or further
/// (a segment started on a spare filled with zeros ahead of time), drawn from its first
/// LSN. A segment whose header is not whole is left as the crash left it.
fn padded(bytes: &[u8], first_lsn: u64) -> Vec<u8> {
    const BLOCK: usize = 4096;
    let mut out = bytes.to_vec();
    if bytes.len() >= segment::SEGMENT_HEADER_SIZE && bytes[..segment::SEGMENT_HEADER_SIZE].iter().any(|&b| b != 0) {
        let len = match first_lsn % 3 {
            0 => bytes.len(),
            1 => bytes.len().next_multiple_of(BLOCK),
            _ => bytes.len().next_multiple_of(BLOCK).max(SEGMENT_SIZE_MAX_BYTES) + BLOCK,
        };
        out.resize(len, 0);
    }
    out
}

/// Something a core lets out only once its log is durable up to an LSN.
#[derive(Clone, Copy, Debug)]
enum Out {
    /// A borrowing message.
    Peer(Envelope),
    /// The acknowledgement of message `seq` received from core `to`.
    Ack { to: u16, seq: u64 },
    /// The answer to client operation `op`.
    Answer { op: usize, result: OpResult },
}

/// What travels on a link between two cores.
#[derive(Clone, Copy, Debug)]
enum Wire {
    Peer { seq: u64, msg: PeerMsg },
    Ack { seq: u64 },
}

/// One core: its state machine, its disk, and what waits for the disk.
struct Node {
    engine: Engine,
    /// The segment files: first LSN and the bytes on disk.
    segments: Vec<(u64, Vec<u8>)>,
    /// Records appended since the last sync, in memory only.
    unsynced: Vec<u8>,
    /// Where each record in `unsynced` starts.
    unsynced_starts: Vec<usize>,
    /// LSN of the last record appended.
    last_lsn: u64,
    /// LSN of the last record a sync covered.
    durable_lsn: u64,
    /// Outputs waiting for the log, with the LSN they wait for, in order.
    deferred: VecDeque<(u64, Out)>,
    /// Parked reserves: ticket → client operation.
    tickets: HashMap<u64, usize>,
    /// The snapshot files: LSN and bytes.
    snapshots: Vec<(u64, Vec<u8>)>,
    /// A snapshot written under its temporary name, waiting for the log to hold every
    /// record it includes before it is renamed: LSN, bytes, and whether the clean-up
    /// after the rename runs.
    snapshot_pending: Option<(u64, Vec<u8>, bool)>,
}

impl Node {
    /// Writes the first `bytes` bytes of the unsynced records to the disk, first starting
    /// a new segment if the whole batch would overflow the current one (`LogWriter::write`;
    /// the new segment's header is durable before any record is written to it).
    fn write(&mut self, bytes: usize) {
        if self.unsynced.is_empty() {
            return;
        }
        if self.needs_new_segment() {
            let cfg = *self.engine.config();
            let first_lsn = self.durable_lsn + 1;
            let header = SegmentHeader { core: cfg.core, cores: cfg.cores, first_lsn }.encode();
            self.segments.push((first_lsn, header.to_vec()));
        }
        let (_, last) = self.segments.last_mut().expect("a log has a segment");
        last.extend_from_slice(&self.unsynced[..bytes]);
    }

    /// True if the next write starts a new segment.
    fn needs_new_segment(&self) -> bool {
        let current = self.segments.last().map_or(usize::MAX, |(_, b)| b.len());
        !self.unsynced.is_empty() && current.saturating_add(self.unsynced.len()) > SEGMENT_SIZE_MAX_BYTES
    }

    /// Renames the pending snapshot once the log holds every record it includes, then
    /// deletes the snapshots and segments it makes unnecessary (`runtime::snapshot::take`
    /// and `remove_covered`; the newest segment always stays).
    fn install_snapshot(&mut self) -> bool {
        let Some((lsn, _, _)) = self.snapshot_pending else { return false };
        if lsn > self.durable_lsn {
            return false;
        }
        let (lsn, bytes, clean_up) = self.snapshot_pending.take().expect("pending");
        self.snapshots.push((lsn, bytes));
        if clean_up {
            self.snapshots.retain(|&(l, _)| l >= lsn);
            let firsts: Vec<u64> = self.segments.iter().map(|&(first, _)| first).collect();
            let mut i = 0;
            self.segments.retain(|_| {
                i += 1;
                firsts.get(i).is_none_or(|&next| next > lsn + 1)
            });
        }
        true
    }

    /// Bytes of unsynced records that reach the disk before the crash `fault`.
    fn bytes_kept(&self, core: u16, fault: &Fault) -> usize {
        let len = self.unsynced.len();
        let fraction = |f: u16| len * f as usize / u16::MAX as usize;
        match *fault {
            Fault::WriteError { core: failing, written } if failing as u16 == core => fraction(written),
            Fault::ShortWrite { core: failing, record, cut } if failing as u16 == core => {
                if self.unsynced_starts.is_empty() {
                    return 0;
                }
                let k = record as usize % self.unsynced_starts.len();
                let start = self.unsynced_starts[k];
                let end = self.unsynced_starts.get(k + 1).copied().unwrap_or(len);
                // Strictly inside record k: at least one byte of it, never all of them.
                start + 1 + (end - start - 2) * cut as usize / u16::MAX as usize
            }
            Fault::PowerCut { kept } => fraction(kept[core as usize]),
            Fault::WriteError { .. } | Fault::ShortWrite { .. } | Fault::SegmentStart { .. } => 0,
        }
    }
}

/// A reservation a client asked for (every reserve gets a new id).
#[derive(Clone, Copy, Debug)]
struct Reservation {
    id: u128,
    user: u128,
    pool: u32,
    qty: u32,
    commit_ref: u128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reserve,
    Confirm,
    Release,
    Extend,
}

/// What acknowledged answers say about one reservation.
#[derive(Clone, Copy, Debug, Default)]
struct Expect {
    /// An answer showed the reservation: it exists.
    exists: bool,
    /// Its reserve was answered with a refusal: it must not exist.
    refused: bool,
    /// The latest expiry an answer reported while it was held.
    expiry_min_ms: u64,
    /// The final state an answer reported (final states never change).
    fin: Option<ReservationState>,
}

/// Counters of what a run went through.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    crashes: u64,
    /// Recoveries that found units in flight: debited by a sender, not credited by the
    /// receiver.
    crashes_with_units_in_flight: u64,
    /// Recoveries where a receiver lost the receipt of a message it had applied.
    receipts_lost: u64,
    /// Torn tails cut by recovery (last segments whose header never reached the disk
    /// included).
    torn_tails: u64,
    /// Crashes while a new segment was being started.
    segment_starts_cut: u64,
    /// Snapshots renamed into place.
    snapshots: u64,
    /// Recoveries that started from a snapshot.
    recovered_from_snapshot: u64,
    /// Messages sent again after recovery that the receiver already had.
    duplicates: u64,
    acknowledged: u64,
    parked: u64,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Every core of one server, the network between them and what clients were told.
struct Sim {
    cores: u16,
    nodes: Vec<Node>,
    /// `net[from * cores + to]`: what is on the link, oldest first.
    net: Vec<VecDeque<Wire>>,
    now_ms: u64,
    capacities: Vec<u64>,
    reservations: Vec<Reservation>,
    /// Every client operation submitted: its kind and reservation.
    ops: Vec<(Kind, usize)>,
    /// Reservation index → what acknowledged answers said.
    ledger: BTreeMap<usize, Expect>,
    rng: u64,
    /// Most events on the cores before each one resumes after a restart.
    start_up_events_max: u64,
    /// Longest time the server is down after a crash.
    downtime_ms_max: u64,
    dir: PathBuf,
    trace: bool,
    stats: Stats,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sim {
    /// A new server: fresh logs with the limits, then the pools, all durable.
    fn new(cores: u16, capacities: &[u64], seed: u64) -> Sim {
        let nodes = (0..cores)
            .map(|core| {
                let header = SegmentHeader { core, cores, first_lsn: 1 }.encode();
                Node {
                    engine: Engine::new(limits(core, cores), START_MS),
                    segments: vec![(1, header.to_vec())],
                    unsynced: Vec::new(),
                    unsynced_starts: Vec::new(),
                    last_lsn: 0,
                    durable_lsn: 0,
                    deferred: VecDeque::new(),
                    tickets: HashMap::new(),
                    snapshots: Vec::new(),
                    snapshot_pending: None,
                }
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "shardcap-durability-sim-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut sim = Sim {
            cores,
            nodes,
            net: (0..cores as usize * cores as usize).map(|_| VecDeque::new()).collect(),
            now_ms: START_MS,
            capacities: capacities.to_vec(),
            reservations: Vec::new(),
            ops: Vec::new(),
            ledger: BTreeMap::new(),
            rng: seed | 1,
            start_up_events_max: 6,
            downtime_ms_max: 2_000,
            dir,
            trace: std::env::var_os("SIM_TRACE").is_some(),
            stats: Stats::default(),
        };
        for core in 0..cores {
            sim.apply(core, Command::SetLimits(limits(core, cores)));
        }
        for (i, &capacity) in capacities.iter().enumerate() {
            let req = PoolCreate {
                name: format!("pool-{}", i + 1),
                capacity,
                hold_ttl_ms_default: TTL_DEFAULT_MS,
                hold_ttl_ms_max: TTL_MAX_MS,
                kind: 0,
                active: true,
                rules: Default::default(),
            };
            let def = sim.nodes[0].engine.validate_pool_create(&req).expect("a valid pool");
            for core in 0..cores {
                sim.apply(core, Command::CreatePool(def.clone()));
            }
        }
        for core in 0..cores {
            sim.sync(core);
        }
        sim.check("after start");
        sim
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// `CoreRuntime::apply` and `flush_engine`: log the command, apply it, and hold back
    /// what it sends and decides until the log is durable.
    fn apply(&mut self, core: u16, command: Command) -> Outcome {
        let now_ms = self.now_ms;
        let node = &mut self.nodes[core as usize];
        if record::is_logged(&command) {
            node.last_lsn += 1;
            node.unsynced_starts.push(node.unsynced.len());
            record::encode(node.last_lsn, now_ms, &command, &mut node.unsynced);
        }
        let outcome = node.engine.apply(now_ms, command);
        let mut sent = Vec::new();
        node.engine.take_outbox(&mut sent);
        let mut decided = Vec::new();
        node.engine.take_completions(&mut decided);
        for env in sent {
            self.defer(core, Out::Peer(env));
        }
        for done in decided {
            if let Some(op) = self.nodes[core as usize].tickets.remove(&done.ticket) {
                self.defer(core, Out::Answer { op, result: done.result });
            }
        }
        outcome
    }

    /// `send_when_durable`: `out` leaves once every record applied so far is durable.
    fn defer(&mut self, core: u16, out: Out) {
        let node = &mut self.nodes[core as usize];
        node.deferred.push_back((node.last_lsn, out));
        self.release(core);
    }

    /// `release_durable`: lets out what the log now covers, in order.
    fn release(&mut self, core: u16) {
        loop {
            let node = &mut self.nodes[core as usize];
            let out = match node.deferred.front() {
                Some(&(lsn, _)) if lsn <= node.durable_lsn => node.deferred.pop_front().expect("front").1,
                _ => return,
            };
            let n = self.cores as usize;
            match out {
                Out::Peer(env) => {
                    self.net[core as usize * n + env.to as usize].push_back(Wire::Peer { seq: env.seq, msg: env.msg })
                }
                Out::Ack { to, seq } => self.net[core as usize * n + to as usize].push_back(Wire::Ack { seq }),
                Out::Answer { op, result } => self.acknowledge(op, result),
            }
        }
    }

    /// One group commit: the unsynced records become durable.
    fn sync(&mut self, core: u16) {
        let node = &mut self.nodes[core as usize];
        node.write(node.unsynced.len());
        node.unsynced.clear();
        node.unsynced_starts.clear();
        node.durable_lsn = node.last_lsn;
        if self.trace {
            eprintln!("  core {core}: synced to LSN {}", node.durable_lsn);
        }
        if node.install_snapshot() {
            self.stats.snapshots += 1;
        }
        self.release(core);
    }

    /// Takes a snapshot of `core` between two commands (`runtime::snapshot::take`: the head,
    /// then the records in chunks), to be renamed into place once the log covers it.
    fn snapshot(&mut self, core: u16, clean_up: bool) {
        let node = &mut self.nodes[core as usize];
        if node.snapshot_pending.is_some() {
            return; // One snapshot at a time, as the snapshot task takes them.
        }
        let head = node.engine.snapshot_begin();
        let lsn = node.last_lsn;
        let mut bytes = snapshot_file::encode_head(lsn, &head);
        let mut chunk = Vec::new();
        let mut done = false;
        for _ in 0..=head.records {
            done = node.engine.snapshot_chunk(CHUNK_RECORDS, &mut chunk);
            if !chunk.is_empty() || head.records == 0 {
                bytes.extend_from_slice(&snapshot_file::encode_chunk(&chunk));
            }
            chunk.clear();
            if done {
                break;
            }
        }
        assert!(done, "a snapshot ends");
        node.snapshot_pending = Some((lsn, bytes, clean_up));
        if node.install_snapshot() {
            self.stats.snapshots += 1;
        }
    }

    /// Applies a client operation on its user's home core.
    fn submit(&mut self, kind: Kind, res: usize, command: Command) {
        let core = home_core(self.reservations[res].user, self.cores);
        let op = self.ops.len();
        self.ops.push((kind, res));
        match self.apply(core, command) {
            Outcome::Reserve(Reply::Done(result)) | Outcome::Op(result) => self.defer(core, Out::Answer { op, result }),
            Outcome::Reserve(Reply::Parked(ticket)) => {
                self.stats.parked += 1;
                self.nodes[core as usize].tickets.insert(ticket, op);
            }
            other => unreachable!("a client operation answered {other:?}"),
        }
    }

    /// Reserves with a new id; answers the reservation's index.
    fn reserve(&mut self, user: u128, pool: u32, qty: u32, ttl_ms: u32) -> usize {
        let res = self.reservations.len();
        let id = (res as u128 + 1) * 0x9E37_79B9_7F4A_7C15;
        self.reservations.push(Reservation { id, user, pool, qty, commit_ref: id ^ 0xC0FFEE });
        let op = ReserveOp { id, user, pool, qty, ttl_ms, priority: 0 };
        self.submit(Kind::Reserve, res, Command::Reserve(op));
        res
    }

    fn confirm(&mut self, res: usize) {
        let r = self.reservations[res];
        self.submit(
            Kind::Confirm,
            res,
            Command::Confirm(ConfirmOp { id: r.id, user: r.user, commit_ref: r.commit_ref }),
        );
    }

    fn release_hold(&mut self, res: usize) {
        let r = self.reservations[res];
        self.submit(Kind::Release, res, Command::Release(ReleaseOp { id: r.id, user: r.user }));
    }

    fn extend(&mut self, res: usize, ttl_ms: u32) {
        let r = self.reservations[res];
        self.submit(Kind::Extend, res, Command::Extend(ExtendOp { id: r.id, user: r.user, ttl_ms }));
    }

    /// A client received the answer to operation `op`: record what it says, and check it
    /// contradicts nothing said before.
    fn acknowledge(&mut self, op: usize, result: OpResult) {
        let (kind, res) = self.ops[op];
        self.stats.acknowledged += 1;
        let state = ReservationState::from_u8(result.state).expect("a valid state");
        let e = self.ledger.entry(res).or_default();
        let what = format!("answer to {kind:?} of reservation {res}: {result:?}");
        if state != ReservationState::None {
            assert!(!e.refused, "{what}: the reserve of this reservation was refused");
            e.exists = true;
            if state == ReservationState::Held {
                assert_eq!(e.fin, None, "{what}: held after a final state");
                e.expiry_min_ms = e.expiry_min_ms.max(result.expires_at_ms);
            } else {
                assert!(e.fin.is_none_or(|f| f == state), "{what}: after final state {:?}", e.fin);
                e.fin = Some(state);
            }
        } else if kind == Kind::Reserve {
            assert_ne!(result.status, Status::Ok as u8, "{what}: ok without a state");
            assert!(!e.exists, "{what}: refused though it exists");
            e.refused = true;
        } else if result.status == Status::NotFound as u8 {
            assert!(!e.exists, "{what}: not found though an answer showed it");
        }
        if self.trace {
            eprintln!("  acknowledged {what}");
        }
    }

    /// Delivers the oldest message on link `from → to` (`on_mesh`).
    fn deliver_on(&mut self, from: u16, to: u16) {
        let n = self.cores as usize;
        let Some(wire) = self.net[from as usize * n + to as usize].pop_front() else { return };
        if self.trace {
            eprintln!("  core {from} -> core {to}: {wire:?}");
        }
        match wire {
            Wire::Peer { seq, msg } => {
                if seq <= self.nodes[to as usize].engine.link(from).received {
                    self.stats.duplicates += 1;
                }
                self.apply(to, Command::Peer { from, seq, msg });
                // The sender may forget the message once its receipt is durable here.
                self.defer(to, Out::Ack { to: from, seq });
            }
            Wire::Ack { seq } => {
                self.apply(to, Command::PeerAck { from, seq });
            }
        }
    }

    /// Links with something on them, as (from, to).
    fn busy_links(&self) -> Vec<(u16, u16)> {
        let n = self.cores as usize;
        (0..self.net.len()).filter(|&i| !self.net[i].is_empty()).map(|i| ((i / n) as u16, (i % n) as u16)).collect()
    }

    /// Delivers up to `count` messages, each from a link drawn from the seed.
    fn deliver(&mut self, count: usize) {
        for _ in 0..count {
            let busy = self.busy_links();
            if busy.is_empty() {
                return;
            }
            let (from, to) = busy[self.next_random() as usize % busy.len()];
            self.deliver_on(from, to);
        }
    }

    /// Lets time pass: each core logs a tick when it has something to expire (the ticker).
    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for core in 0..self.cores {
            if self.nodes[core as usize].engine.tick_due(self.now_ms) {
                self.apply(core, Command::Tick);
            }
        }
    }

    /// The process stops: each core keeps its synced bytes and what `fault` let reach the
    /// disk; everything in memory and on the network is lost. Then the server restarts.
    fn crash(&mut self, fault: &Fault) {
        self.stop_and_recover(fault);
        self.now_ms += self.next_random() % (self.downtime_ms_max + 1);
        self.start_up();
        self.check("after the restart");
    }

    /// The crash and the recovery of every core, before any core resumes.
    fn stop_and_recover(&mut self, fault: &Fault) {
        self.stats.crashes += 1;
        let received_before: Vec<u64> = self.received_all();
        for core in 0..self.cores {
            let node = &mut self.nodes[core as usize];
            match *fault {
                Fault::SegmentStart { core: failing, header } if failing as u16 == core && node.needs_new_segment() => {
                    // The new segment's file exists, its header not (all) on disk; no record
                    // is written to a segment before its header is durable.
                    let cfg = *node.engine.config();
                    let first_lsn = node.durable_lsn + 1;
                    let full = SegmentHeader { core: cfg.core, cores: cfg.cores, first_lsn }.encode();
                    let partial = match header as usize % 34 {
                        33 => vec![0; full.len()],
                        n => full[..n.min(full.len() - 1)].to_vec(),
                    };
                    if self.trace {
                        eprintln!("  core {core}: crash while starting segment {first_lsn}: {} bytes", partial.len());
                    }
                    node.segments.push((first_lsn, partial));
                    self.stats.segment_starts_cut += 1;
                }
                _ => {
                    let kept = node.bytes_kept(core, fault);
                    if self.trace {
                        eprintln!("  core {core}: {kept} of {} unsynced bytes reach the disk", node.unsynced.len());
                    }
                    node.write(kept);
                }
            }
            node.unsynced.clear();
            node.unsynced_starts.clear();
            node.deferred.clear();
            node.tickets.clear();
            node.snapshot_pending = None;
        }
        for link in &mut self.net {
            link.clear();
        }
        self.recover();
        if self.received_all().iter().zip(&received_before).any(|(after, before)| after < before) {
            self.stats.receipts_lost += 1;
        }
        if (1..=self.capacities.len() as u32).any(|pool| self.in_flight(pool) > 0) {
            self.stats.crashes_with_units_in_flight += 1;
        }
        self.check("after recovery");
    }

    /// Every link's last received sequence number, by (to, from).
    fn received_all(&self) -> Vec<u64> {
        let n = self.cores;
        (0..n * n).map(|i| self.nodes[(i / n) as usize].engine.link(i % n).received).collect()
    }

    /// Writes every core's disk to files laid out as a data directory and recovers each
    /// core from them with the server's recovery; the files (with the torn tail cut) are
    /// the disk from then on, and appending continues after their good records.
    fn recover(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for core in 0..self.cores {
            let dir = core_dir(&self.dir, core);
            std::fs::create_dir_all(&dir).expect("create the core directory");
            let node = &self.nodes[core as usize];
            for (first_lsn, bytes) in &node.segments {
                let path = dir.join(segment::file_name(*first_lsn));
                std::fs::write(&path, padded(bytes, *first_lsn)).expect("write a segment");
            }
            for (lsn, bytes) in &node.snapshots {
                std::fs::write(dir.join(snapshot_file::file_name(*lsn)), bytes).expect("write a snapshot");
            }
            let recovered = recovery::recover(&dir, core, self.cores, true, |_| {})
                .unwrap_or_else(|e| panic!("core {core} does not recover: {e}"));
            let node = &mut self.nodes[core as usize];
            assert!(
                recovered.last_lsn >= node.durable_lsn,
                "core {core}: recovery ends at LSN {} but LSN {} was synced",
                recovered.last_lsn,
                node.durable_lsn
            );
            assert!(recovered.last_lsn <= node.last_lsn, "core {core}: recovery invents records");
            if recovered.torn.is_some() {
                self.stats.torn_tails += 1;
            }
            if recovered.snapshot_lsn > 0 {
                self.stats.recovered_from_snapshot += 1;
            }
            // The files as recovery left them are the disk from now on.
            let files = recovery::list(&dir).expect("list the core directory");
            let read = |files: &[(u64, PathBuf)]| -> Vec<(u64, Vec<u8>)> {
                files.iter().map(|(lsn, path)| (*lsn, std::fs::read(path).expect("read a file back"))).collect()
            };
            let mut segments = read(&files.segments);
            match recovered.append_at {
                Some((path, len)) => {
                    assert_eq!(
                        Some(&path),
                        files.segments.last().map(|(_, p)| p),
                        "appending goes to the last segment"
                    );
                    segments.last_mut().expect("a segment").1.truncate(len as usize);
                }
                // `LogWriter::open` without a segment to append to starts one.
                None => {
                    let first_lsn = recovered.last_lsn + 1;
                    let header = SegmentHeader { core, cores: self.cores, first_lsn }.encode();
                    segments.push((first_lsn, header.to_vec()));
                }
            }
            node.engine = recovered.engine.expect("a recovered log has its limits");
            node.snapshots = read(&files.snapshots);
            node.segments = segments;
            node.last_lsn = recovered.last_lsn;
            node.durable_lsn = recovered.last_lsn;
            if self.trace {
                eprintln!("  core {core}: recovered to LSN {} (torn tail: {:?})", recovered.last_lsn, recovered.torn);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Start-up after recovery (`core_main` and `CoreRuntime::start_cluster`): right after
    /// recovery, before its mesh receivers and ticker run, every core queues again every
    /// message it keeps (`CoreRuntime::resend_unacked`); then every core's receivers, log
    /// writer and expiry ticker run, while core 0 has the other cores resume one by one
    /// (an RPC each) and then resumes itself. So a core may apply messages, tick and sync
    /// before it resumes: up to `start_up_events_max` such events, drawn from the seed, run
    /// before each resume.
    fn start_up(&mut self) {
        for core in 0..self.cores {
            self.resend_kept(core);
        }
        for core in (1..self.cores).chain([0]) {
            let events = self.next_random() % (self.start_up_events_max + 1);
            for _ in 0..events {
                let on = (self.next_random() % self.cores as u64) as u16;
                match self.next_random() % 3 {
                    0 => self.deliver(1),
                    1 => self.sync(on),
                    _ => {
                        if self.nodes[on as usize].engine.tick_due(self.now_ms) {
                            self.apply(on, Command::Tick);
                        }
                    }
                }
                self.check(&format!("while core {core} waits to resume"));
            }
            self.resume(core);
            self.check(&format!("after core {core} resumed"));
        }
    }

    /// `CoreRuntime::resend_unacked`: send again every message not acknowledged (after
    /// whatever already waits for the log).
    fn resend_kept(&mut self, core: u16) {
        for env in self.nodes[core as usize].engine.unacked() {
            self.defer(core, Out::Peer(env));
        }
    }

    /// `CoreRuntime::resume`: expire what expired while the server was down.
    fn resume(&mut self, core: u16) {
        if self.trace {
            eprintln!("  core {core} resumes");
        }
        if self.nodes[core as usize].engine.tick_due(self.now_ms) {
            self.apply(core, Command::Tick);
        }
    }

    /// Units of `pool` a sender has debited and its receiver has not applied: the
    /// messages the sender keeps whose sequence numbers are beyond the receiver's.
    fn in_flight(&self, pool: u32) -> u64 {
        let mut units = 0;
        for from in 0..self.cores {
            for to in (0..self.cores).filter(|&to| to != from) {
                let received = self.nodes[to as usize].engine.link(from).received;
                let link = self.nodes[from as usize].engine.link(to);
                units += link
                    .unacked
                    .iter()
                    .filter(|(seq, msg)| *seq > received && msg.pool() == pool)
                    .map(|(_, msg)| msg.units())
                    .sum::<u64>();
            }
        }
        units
    }

    fn shards(&self, pool: u32) -> Vec<ShardStatus> {
        self.nodes.iter().map(|n| n.engine.shard_snapshot(pool).expect("every core has every pool")).collect()
    }

    /// Every property that must hold at any moment, crashes included.
    fn check(&self, when: &str) {
        for node in &self.nodes {
            node.engine.audit();
        }
        for from in 0..self.cores {
            for to in (0..self.cores).filter(|&to| to != from) {
                let sent = self.nodes[from as usize].engine.link(to);
                let received = self.nodes[to as usize].engine.link(from).received;
                assert!(
                    received <= sent.sent,
                    "{when}: core {to} applied message {received} from core {from}, which only sent {}",
                    sent.sent
                );
                // The receiver applies sequence numbers in order, ignores repeats and stops
                // the server on a gap: what is on the link must follow on from what it has.
                let n = self.cores as usize;
                let mut next = received + 1;
                for wire in &self.net[from as usize * n + to as usize] {
                    let Wire::Peer { seq, .. } = *wire else { continue };
                    assert!(
                        seq <= next,
                        "{when}: core {from} sends message {seq} to core {to} before message {next}, which core {to} \
                         lacks: core {to} will stop on the gap"
                    );
                    next = next.max(seq + 1);
                }
                let kept_from = sent.unacked.front().map_or(sent.sent + 1, |&(seq, _)| seq);
                assert!(
                    kept_from <= received + 1,
                    "{when}: core {from} forgot message {} to core {to} before its receipt was durable",
                    received + 1
                );
            }
        }
        for (i, &capacity) in self.capacities.iter().enumerate() {
            let pool = i as u32 + 1;
            let shards = self.shards(pool);
            let owned: u64 = shards.iter().map(|s| s.capacity).sum();
            let taken: u64 = shards.iter().map(|s| s.held + s.confirmed).sum();
            let confirmed: u64 = shards.iter().map(|s| s.confirmed).sum();
            let in_flight = self.in_flight(pool);
            assert_eq!(
                owned + in_flight,
                capacity,
                "{when}: pool {pool} not conserved: shards own {owned}, {in_flight} in flight: {shards:?}"
            );
            assert!(taken <= capacity, "{when}: pool {pool} oversold: {taken} of {capacity}");
            let confirmed_acknowledged: u64 = self
                .ledger
                .iter()
                .filter(|(res, e)| e.fin == Some(ReservationState::Confirmed) && self.reservations[**res].pool == pool)
                .map(|(res, _)| self.reservations[*res].qty as u64)
                .sum();
            assert!(
                confirmed_acknowledged <= confirmed,
                "{when}: pool {pool}: {confirmed_acknowledged} units confirmed to clients, {confirmed} on the shards"
            );
        }
        for (&res, e) in &self.ledger {
            let r = self.reservations[res];
            let core = home_core(r.user, self.cores);
            let found = self.nodes[core as usize].engine.lookup(self.now_ms, &LookupOp { id: r.id, user: r.user });
            let what = format!("{when}: reservation {res} ({r:?}, acknowledged {e:?}) reads {found:?}");
            if e.refused {
                assert_eq!(found.status, Status::NotFound as u8, "{what}: a refused reserve left a record");
            }
            if !e.exists {
                continue;
            }
            assert_eq!(found.status, Status::Ok as u8, "{what}: an acknowledged reservation is lost");
            assert_eq!((found.user, found.pool, found.qty), (r.user, r.pool, r.qty), "{what}");
            let state = ReservationState::from_u8(found.state).expect("a valid state");
            if let Some(fin) = e.fin {
                assert_eq!(state, fin, "{what}: an acknowledged final state changed");
            }
            match state {
                ReservationState::Held => assert!(found.expires_at_ms >= e.expiry_min_ms, "{what}: expiry moved back"),
                // An expired record is kept until its deadline plus the retention.
                ReservationState::Expired => {
                    assert!(found.expires_at_ms - RETENTION_MS >= e.expiry_min_ms, "{what}: expired before its time")
                }
                ReservationState::Confirmed => assert_eq!(found.commit_ref, r.commit_ref, "{what}"),
                ReservationState::Released => {}
                ReservationState::None => unreachable!("a found reservation has a state"),
            }
        }
    }

    /// Syncs and delivers until nothing is on the network or waits for a log.
    fn settle(&mut self) {
        let mut delivered = 0;
        loop {
            for core in 0..self.cores {
                self.sync(core);
            }
            self.check("while settling");
            if self.busy_links().is_empty() {
                return;
            }
            while !self.busy_links().is_empty() {
                self.deliver(1);
                delivered += 1;
                assert!(delivered < SETTLE_DELIVERIES_MAX, "the network does not become quiet");
            }
        }
    }

    /// Once quiet: nothing kept for resending, no reserve waiting, no recall open, and the
    /// shards own exactly each pool's capacity.
    fn check_quiet(&self) {
        self.check("when quiet");
        for (core, node) in self.nodes.iter().enumerate() {
            assert_eq!(node.engine.unacked(), Vec::new(), "core {core} keeps messages when quiet");
        }
        for (i, &capacity) in self.capacities.iter().enumerate() {
            let pool = i as u32 + 1;
            let shards = self.shards(pool);
            assert_eq!(shards.iter().map(|s| s.capacity).sum::<u64>(), capacity, "pool {pool}: {shards:?}");
            for s in &shards {
                assert_eq!(s.parked, 0, "pool {pool}: a reserve waits on core {} when quiet: {shards:?}", s.core);
                assert_eq!(s.flags & SHARD_FLAG_RECALLING, 0, "pool {pool}: a recall is open when quiet: {shards:?}");
            }
        }
    }
}

/// How the process stops.
#[derive(Clone, Debug)]
enum Fault {
    /// A write fails on `core` after `written` (of 65535) of its batch reached the disk;
    /// the other cores' unsynced records are lost.
    WriteError { core: u8, written: u16 },
    /// `core`'s write stops inside record `record` of its batch, `cut` (of 65535) of the
    /// way through it: a torn tail. The other cores' unsynced records are lost.
    ShortWrite { core: u8, record: u8, cut: u16 },
    /// The power goes: each core keeps `kept[core]` (of 65535) of its unsynced bytes.
    PowerCut { kept: [u16; 3] },
    /// `core` was starting a new segment for its batch: the file exists with `header`
    /// (mod 34) bytes of its header, 33 standing for a header-sized run of zeros. Without
    /// a batch that needs a new segment, its unsynced records are simply lost.
    SegmentStart { core: u8, header: u8 },
}

#[derive(Clone, Debug)]
enum Step {
    /// `user` picks a user: three in four on the hot core 0.
    Reserve {
        user: u8,
        pool: u8,
        qty: u8,
        ttl: u8,
    },
    /// Operations on an earlier reservation, picked by `pick`.
    Confirm {
        pick: u8,
    },
    Release {
        pick: u8,
    },
    Extend {
        pick: u8,
        ttl: u8,
    },
    Advance {
        ms: u16,
    },
    Deliver {
        count: u8,
    },
    Sync {
        core: u8,
    },
    SyncAll,
    /// A snapshot of `core`; without `clean_up` the deletion of what it covers is
    /// interrupted (left for the next snapshot, and for recovery to skip).
    Snapshot {
        core: u8,
        clean_up: bool,
    },
    Crash(Fault),
}

fn fraction() -> impl Strategy<Value = u16> {
    prop_oneof![1 => Just(0u16), 1 => Just(u16::MAX), 3 => any::<u16>()]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..3u8, fraction()).prop_map(|(core, written)| Fault::WriteError { core, written }),
        (0..3u8, any::<u8>(), any::<u16>()).prop_map(|(core, record, cut)| Fault::ShortWrite { core, record, cut }),
        prop::array::uniform3(fraction()).prop_map(|kept| Fault::PowerCut { kept }),
        (0..3u8, any::<u8>()).prop_map(|(core, header)| Fault::SegmentStart { core, header }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (any::<u8>(), 1..=2u8, 1..=4u8, 0..4u8).prop_map(|(user, pool, qty, ttl)| Step::Reserve { user, pool, qty, ttl }),
        2 => any::<u8>().prop_map(|pick| Step::Confirm { pick }),
        2 => any::<u8>().prop_map(|pick| Step::Release { pick }),
        1 => (any::<u8>(), 0..3u8).prop_map(|(pick, ttl)| Step::Extend { pick, ttl }),
        2 => (0..1_500u16).prop_map(|ms| Step::Advance { ms }),
        6 => (1..8u8).prop_map(|count| Step::Deliver { count }),
        4 => (0..3u8).prop_map(|core| Step::Sync { core }),
        1 => Just(Step::SyncAll),
        1 => (0..3u8, prop::bool::weighted(0.8)).prop_map(|(core, clean_up)| Step::Snapshot { core, clean_up }),
        1 => fault().prop_map(Step::Crash),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    cores: u16,
    capacities: Vec<u64>,
    steps: Vec<Step>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (2..=3u16, prop::collection::vec(3..16u64, 2), prop::collection::vec(step(), 1..160), any::<u64>())
        .prop_map(|(cores, capacities, steps, seed)| Case { cores, capacities, steps, seed })
}

/// Users by home core (a few per core).
fn users_by_core(cores: u16) -> Vec<Vec<u128>> {
    let mut users = vec![Vec::new(); cores as usize];
    for user in 1..=10_000u128 {
        let list = &mut users[home_core(user, cores) as usize];
        if list.len() < 4 {
            list.push(user);
        }
    }
    assert!(users.iter().all(|l| l.len() == 4), "users for every core");
    users
}

/// Runs a case to its end, with a crash and recovery wherever it says, and makes the
/// network quiet at the end.
fn run(case: &Case) -> Stats {
    let users = users_by_core(case.cores);
    let cold: Vec<u128> = users[1..].concat();
    let mut sim = Sim::new(case.cores, &case.capacities, case.seed);
    for (i, s) in case.steps.iter().enumerate() {
        if sim.trace {
            eprintln!("step {i} at {} ms: {s:?}", sim.now_ms);
        }
        let picked = |pick: u8| (!sim.reservations.is_empty()).then(|| pick as usize % sim.reservations.len());
        match *s {
            Step::Reserve { user, pool, qty, ttl } => {
                let user =
                    if user % 4 < 3 { users[0][user as usize / 4 % 4] } else { cold[user as usize / 4 % cold.len()] };
                let ttl_ms = [0, 300, 2_000, TTL_MAX_MS][ttl as usize];
                sim.reserve(user, pool as u32, qty as u32, ttl_ms);
            }
            Step::Confirm { pick } => {
                if let Some(res) = picked(pick) {
                    sim.confirm(res);
                }
            }
            Step::Release { pick } => {
                if let Some(res) = picked(pick) {
                    sim.release_hold(res);
                }
            }
            Step::Extend { pick, ttl } => {
                if let Some(res) = picked(pick) {
                    sim.extend(res, [300, 2_000, TTL_MAX_MS][ttl as usize]);
                }
            }
            Step::Advance { ms } => sim.advance(ms as u64),
            Step::Deliver { count } => sim.deliver(count as usize),
            Step::Sync { core } => sim.sync(core as u16 % case.cores),
            Step::Snapshot { core, clean_up } => sim.snapshot(core as u16 % case.cores, clean_up),
            Step::SyncAll => {
                for core in 0..case.cores {
                    sim.sync(core);
                }
            }
            Step::Crash(ref fault) => sim.crash(fault),
        }
        sim.check(&format!("after step {i} ({s:?})"));
    }
    sim.settle();
    sim.check_quiet();
    // One more crash once quiet: recovery must come back to the same quiet state.
    sim.crash(&Fault::PowerCut { kept: [0; 3] });
    sim.settle();
    sim.check_quiet();
    sim.stats
}

proptest! {
    #[test]
    fn crashes_lose_nothing_acknowledged(case in case()) {
        run(&case);
    }
}

/// The case seed `seed` stands for: drawn from the same strategy as the property test.
fn case_of_seed(seed: u64) -> Case {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    case().new_tree(&mut runner).expect("a case").current()
}

/// Runs the cases of fixed seeds (or only `SEED`), and checks that the crashes hit what
/// they are meant to: units in flight between a debit and its credit, lost receipts, torn
/// tails, duplicates.
#[test]
fn seeded_runs() {
    let seeds: Vec<u64> = match std::env::var("SEED") {
        Ok(s) => vec![s.parse().expect("SEED is a number")],
        Err(_) => (0..64).collect(),
    };
    let mut total = Stats::default();
    for &seed in &seeds {
        let case = case_of_seed(seed);
        let outcome = std::panic::catch_unwind(|| run(&case));
        let stats = outcome.unwrap_or_else(|_| panic!("SEED={seed} fails: the case is {case:?}"));
        total.crashes += stats.crashes;
        total.crashes_with_units_in_flight += stats.crashes_with_units_in_flight;
        total.receipts_lost += stats.receipts_lost;
        total.torn_tails += stats.torn_tails;
        total.segment_starts_cut += stats.segment_starts_cut;
        total.snapshots += stats.snapshots;
        total.recovered_from_snapshot += stats.recovered_from_snapshot;
        total.duplicates += stats.duplicates;
        total.acknowledged += stats.acknowledged;
        total.parked += stats.parked;
    }
    eprintln!("{} seeded runs: {total:?}", seeds.len());
    if seeds.len() > 1 {
        assert!(total.crashes_with_units_in_flight > 0, "no crash caught units in flight: {total:?}");
        assert!(total.receipts_lost > 0, "no crash lost a receipt: {total:?}");
        assert!(total.torn_tails > 0, "no crash tore a tail: {total:?}");
        assert!(total.segment_starts_cut > 0, "no crash cut a segment's start: {total:?}");
        assert!(total.recovered_from_snapshot > 0, "no recovery started from a snapshot: {total:?}");
        assert!(total.duplicates > 0, "no message was sent twice: {total:?}");
        assert!(total.parked > 0, "no reserve borrowed: {total:?}");
    }
}

/// The first user whose home is `core`.
fn user_on(core: u16, cores: u16) -> u128 {
    users_by_core(cores)[core as usize][0]
}

/// The central case, by hand: core 1 (pool 1's home) grants units to core 0, its debit is
/// durable and the grant is on the network; the process stops before core 0 has the grant
/// on disk (the grant still on the network, or applied by core 0 but not synced). After
/// recovery the units are in flight (kept by core 1, unknown to core 0), core 1 sends them
/// again, a second crash makes it send them once more, and core 0 ends with them once.
#[test]
fn crash_between_debit_and_credit() {
    for applied_before_crash in [false, true] {
        let mut sim = Sim::new(2, &[10], 7);
        // Every core resumes at once after a restart, and no time passes while it is down.
        (sim.start_up_events_max, sim.downtime_ms_max) = (0, 0);
        let user = user_on(0, 2);
        let grant_units = 3 + (5 - 3) / 2; // the need, and a share of what the home core has left
        assert_eq!(sim.shards(1).iter().map(|s| s.capacity).collect::<Vec<_>>(), [5, 5]);
        let first = sim.reserve(user, 1, 5, 0);
        sim.sync(0);
        assert!(sim.ledger[&first].exists, "the first reserve fits and is acknowledged");
        // Core 0 ran dry: the reserve waits and core 0 asks home for 3 units.
        let second = sim.reserve(user, 1, 3, TTL_MAX_MS);
        assert!(sim.busy_links().is_empty(), "the borrow waits for core 0's log");
        sim.sync(0);
        assert_eq!(sim.busy_links(), [(0, 1)]);
        sim.deliver_on(0, 1);
        // Core 1 debited the grant; it leaves with the sync that makes the debit durable.
        assert_eq!(sim.shards(1)[1].capacity, 5 - grant_units);
        assert!(!sim.busy_links().contains(&(1, 0)), "the grant waits for core 1's log");
        sim.sync(1);
        assert_eq!(sim.busy_links(), [(1, 0)]);
        assert_eq!(sim.in_flight(1), grant_units);
        if applied_before_crash {
            sim.deliver_on(1, 0);
            assert_eq!(sim.shards(1)[0].capacity, 5 + grant_units, "core 0 applied the grant");
            assert!(!sim.ledger.contains_key(&second), "the answer waits for core 0's log");
        }
        sim.crash(&Fault::PowerCut { kept: [0; 3] });
        // Recovered and resumed: core 1's debit survived, core 0 has no credit, and both
        // send again what they keep: core 1 the grant, core 0 its borrow (whose ack was
        // lost on the network).
        let shards = sim.shards(1);
        assert_eq!((shards[0].capacity, shards[1].capacity), (5, 5 - grant_units));
        assert_eq!(shards[0].parked, 1, "the parked reserve was durable and waits again");
        assert_eq!(sim.in_flight(1), grant_units);
        assert_eq!(sim.nodes[1].engine.link(0).unacked.len(), 1);
        assert_eq!(sim.busy_links(), [(0, 1), (1, 0)]);
        let duplicates = sim.stats.duplicates;
        sim.deliver_on(0, 1);
        assert_eq!(sim.stats.duplicates, duplicates + 1, "core 1 already had the borrow");
        assert_eq!(sim.shards(1)[1].capacity, 5 - grant_units, "a repeated borrow grants nothing");
        sim.deliver_on(1, 0);
        assert_eq!(sim.shards(1)[0].capacity, 5 + grant_units, "credited once");
        assert_eq!(sim.in_flight(1), 0);
        // Both receipts are durable and their acks are on the network, then lost in a
        // second crash: the grant is sent a third time, and credits nothing.
        sim.sync(0);
        sim.sync(1);
        assert!(!sim.ledger.contains_key(&second), "the reserve's connection died with the first crash");
        assert_eq!(sim.busy_links(), [(0, 1), (1, 0)]);
        sim.crash(&Fault::PowerCut { kept: [u16::MAX; 3] });
        assert_eq!(sim.nodes[1].engine.link(0).unacked.len(), 1, "core 1 never saw the ack");
        assert_eq!(sim.busy_links(), [(0, 1), (1, 0)], "both messages are sent again");
        let duplicates = sim.stats.duplicates;
        sim.deliver_on(1, 0);
        sim.deliver_on(0, 1);
        assert_eq!(sim.stats.duplicates, duplicates + 2, "each receiver already had its message");
        assert_eq!(sim.shards(1)[0].capacity, 5 + grant_units, "a duplicate credits nothing");
        sim.settle();
        sim.check_quiet();
        let shards = sim.shards(1);
        assert_eq!((shards[0].capacity, shards[1].capacity), (5 + grant_units, 5 - grant_units));
        assert_eq!((shards[0].held, shards[0].available()), (8, 1));
        let r = sim.reservations[second];
        let found = sim.nodes[0].engine.lookup(sim.now_ms, &LookupOp { id: r.id, user: r.user });
        assert_eq!((found.status, found.state, found.qty), (Status::Ok as u8, ReservationState::Held as u8, 3));
    }
}

/// The server's start-up order, by hand. Core 0 (hot) waits for a unit of pool 1 and has
/// asked the home core 1 for it; core 1 ran short itself and recalls pool 1. Both messages
/// are lost with the network in a crash. At the restart each core first queues what it
/// keeps; core 1 resumes, its recall reaches core 0, and core 0 answers with new messages
/// (an exact borrow, its recall answer) numbered after the borrow it keeps: the borrow
/// must reach core 1 first, or core 1 stops on the gap. (A server that queued the kept
/// messages only when a core resumed sent them after the new ones.)
#[test]
fn restart_sends_kept_messages_first() {
    let mut sim = Sim::new(2, &[4], 11);
    let (hot, home) = (user_on(0, 2), user_on(1, 2));
    sim.reserve(hot, 1, 2, 0);
    sim.reserve(hot, 1, 1, 0);
    sim.reserve(home, 1, 3, 0);
    sim.sync(0);
    sim.sync(1);
    assert_eq!(sim.busy_links(), [(0, 1), (1, 0)], "core 0's borrow and core 1's recall");
    sim.stop_and_recover(&Fault::PowerCut { kept: [0; 3] });
    assert_eq!(sim.nodes[0].engine.unacked().len(), 1, "core 0 keeps its borrow");
    assert_eq!(sim.nodes[1].engine.unacked().len(), 1, "core 1 keeps its recall");
    // `core_main`: both cores queue what they keep before anything else runs.
    sim.resend_kept(0);
    sim.resend_kept(1);
    // `start_cluster`: core 1 resumes on core 0's RPC; its recall reaches core 0 before
    // the RPC's reply, so before core 0 resumes.
    sim.resume(1);
    sim.deliver_on(1, 0);
    assert!(sim.nodes[0].engine.link(1).sent > 1, "core 0 answered the recall with new messages");
    sim.resume(0);
    sim.sync(0);
    sim.check("after core 0 resumed");
    sim.settle();
    sim.check_quiet();
}
