//! Crash tests against the real server: SIGKILL at random moments under concurrent
//! traffic, and restarts over a data directory that outlived its server.
//!
//! How the crash test works: a 2-core server in `sync` mode (with a snapshot every thousand
//! records, so most restarts load a snapshot and replay the log after it) serves one pool
//! large enough that nothing can sell out (its capacity covers every unit the clients may
//! ever ask for), with holds that outlive the test. One hold of about half the capacity,
//! taken first by a user of the pool's home core, leaves that core nearly dry, so units
//! keep moving between the cores (recalls and borrowing) while the clients run. Eight
//! client threads, users spread over both cores, connected to the shared port, their own
//! core's port or the other core's port, send pipelined frames of reserves, confirms and
//! releases. Each thread keeps a model of its reservations: an operation whose answer came
//! back is *acknowledged* (its status is checked at once), one sent without an answer
//! before the connection died is *in doubt*. At a random moment (chosen from the seed) the
//! test kills the server with SIGKILL, restarts it on the same data directory, and checks:
//!
//! - in-doubt operations are resolved by what the server reports (applied or not; nothing
//!   else is acceptable), which makes the model exact;
//! - every reservation is exactly as the model says: every acknowledged reserve, confirm
//!   and release is there;
//! - the pool's held and confirmed totals equal the model's sums (so there is nothing the
//!   model does not know of), no shard holds more than it owns, and capacity is conserved.
//!
//! Then the clients reconnect and first send their in-doubt operations again with the same
//! ids: the answer must be an idempotent repeat exactly when the server had applied the
//! first one. After the last kill a final round runs without one and the check is repeated.
//! `SEED=<n>` reproduces the choices (quantities, kinds, batch sizes, kill moments); the
//! thread interleaving is the machine's. Every loop is bounded in iterations and time.
//!
//! The restart tests each check one rule of recovery: expiry while the server is down,
//! the pool catalog, the data directory's core count, configuration against stored pools,
//! a torn tail, corruption in the middle of a segment, and memory-only mode.

#![cfg(feature = "server")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Server, by_id, now_ms, pool, reserve, users_on};
use shardcap::client::{Client, ClientError};
use shardcap::protocol::control::{PoolCreate, PoolRef, PoolStatus};
use shardcap::protocol::{
    ConfirmOp, LookupOp, LookupResult, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp, Status,
};
use shardcap::shard::Command as Logged;
use shardcap::wal::record::{self, RECORD_HEADER_SIZE};
use shardcap::wal::segment::SEGMENT_HEADER_SIZE;

/// Client threads (connections) of the crash test.
const CLIENTS: usize = 8;
/// Times the crash test kills the server.
const KILLS: u32 = 6;
/// Reserves one client may send over the whole test.
const RESERVES_MAX_PER_CLIENT: u64 = 20_000;
/// Largest quantity of a client's reserve.
const QTY_MAX: u64 = 4;
/// Every unit the clients could ever hold or confirm together.
const CLIENT_DEMAND_MAX: u64 = CLIENTS as u64 * RESERVES_MAX_PER_CLIENT * QTY_MAX;
/// Units free even if every client reserve succeeded and none was released.
const MARGIN: u64 = 10_000;
/// Units left on the home core's shard after the big hold.
const HOME_SPARE: u64 = 1_000;
/// The big hold taken first on the pool's home core.
const BIG_QTY: u64 = CLIENT_DEMAND_MAX + MARGIN - 2 * HOME_SPARE;
/// The pool: each core's shard starts with half, the big hold takes all but `HOME_SPARE`
/// of the home core's half, and the rest covers every client reserve with `MARGIN` to spare.
const CAPACITY: u64 = 2 * (BIG_QTY + HOME_SPARE);
const _: () = assert!(CAPACITY == BIG_QTY + CLIENT_DEMAND_MAX + MARGIN);
/// A core snapshots its state after this many log records.
const SNAPSHOT_INTERVAL_RECORDS: u64 = 1_000;
/// Longest a traffic round runs; every kill comes earlier.
const ROUND_MAX: Duration = Duration::from_secs(2);
/// Latest kill moment after a round starts, in ms.
const KILL_AFTER_MAX_MS: u64 = 1_500;
/// Length of the last round, which ends without a kill.
const FINAL_ROUND: Duration = Duration::from_millis(500);
/// Frames a client sends in one round trip, at most.
const PIPELINE_MAX: u64 = 3;
/// Bound on a client's loop iterations in one round.
const ITERATIONS_MAX: usize = 200_000;
/// The whole crash test must finish within this.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// Timeout of every read from the server.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for parked reserves and units in transit to settle after a restart.
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// Longest wait for a server that must refuse to start.
const REFUSAL_WAIT: Duration = Duration::from_secs(30);

// ----- a small seeded generator ---------------------------------------------------------------

/// SplitMix64: enough randomness for choosing operations, and reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed from `SEED`, or a new one from the clock.
fn seed() -> u64 {
    match std::env::var("SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("SEED={text} is not a u64")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

// ----- the model of one client's reservations -------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reserve,
    Confirm,
    Release,
}

impl Kind {
    /// The state a reservation is in once the operation applied.
    fn target(self) -> ReservationState {
        match self {
            Kind::Reserve => ReservationState::Held,
            Kind::Confirm => ReservationState::Confirmed,
            Kind::Release => ReservationState::Released,
        }
    }
}

/// How the model learned a reservation's state.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The answer to this operation.
    Acknowledged(Kind),
    /// This operation was in doubt; the server's state showed whether it had applied.
    InDoubt { kind: Kind, applied: bool },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Acknowledged(kind) => write!(f, "an acknowledged {kind:?}"),
            Source::InDoubt { kind, applied: true } => write!(f, "an in-doubt {kind:?} the server had applied"),
            Source::InDoubt { kind, applied: false } => write!(f, "an in-doubt {kind:?} the server had not applied"),
        }
    }
}

/// What the model knows of one reservation id.
#[derive(Clone, Copy, Debug)]
struct Entry {
    qty: u32,
    /// `None` while no reserve of the id has applied.
    state: ReservationState,
    /// An operation sent and not answered.
    in_doubt: Option<Kind>,
    /// An in-doubt operation resolved after a restart, to send again: whether it had applied
    /// (its repeat must then be answered as a repeat).
    retry: Option<(Kind, bool)>,
    source: Source,
}

/// Which port a client connects to.
#[derive(Clone, Copy, Debug)]
enum Port {
    Shared,
    Core(u16),
}

/// One client: its user, its connection choice and the model of its reservations.
struct Actor {
    index: usize,
    user: u128,
    port: Port,
    next_id: u64,
    reserves: u64,
    entries: BTreeMap<u128, Entry>,
    /// Wrong answers to acknowledged operations.
    failures: Vec<String>,
    acknowledged: u64,
    repeats_checked: u64,
}

impl Actor {
    fn new(index: usize, user: u128, port: Port) -> Actor {
        Actor {
            index,
            user,
            port,
            next_id: 0,
            reserves: 0,
            entries: BTreeMap::new(),
            failures: Vec::new(),
            acknowledged: 0,
            repeats_checked: 0,
        }
    }

    fn name(&self) -> String {
        let core = shardcap::protocol::home_core(self.user, 2);
        format!("client {} (user {} on core {core}, via {:?} port)", self.index, self.user, self.port)
    }

    fn target(&self, server: &Server) -> SocketAddr {
        match self.port {
            Port::Shared => server.addr,
            Port::Core(core) => SocketAddr::new(server.addr.ip(), server.core_ports[core as usize]),
        }
    }

    fn new_id(&mut self) -> u128 {
        self.next_id += 1;
        ((self.index as u128 + 1) << 64) | self.next_id as u128
    }

    /// Held reservations with nothing outstanding: candidates for confirm and release.
    fn settled_holds(&self) -> Vec<u128> {
        let settled = |e: &Entry| e.state == ReservationState::Held && e.in_doubt.is_none() && e.retry.is_none();
        self.entries.iter().filter(|(_, e)| settled(e)).map(|(&id, _)| id).collect()
    }

    /// Checks the answer to an operation on `id` and applies it to the model.
    fn acknowledge(&mut self, id: u128, kind: Kind, repeat_expected: bool, r: &OpResult, holds: &mut Vec<u128>) {
        let name = self.name();
        let e = self.entries.get_mut(&id).expect("an id of the model");
        let repeat = r.flags & RESULT_FLAG_REPEAT != 0;
        if r.status == Status::Ok as u8 && r.state == kind.target() as u8 && repeat == repeat_expected {
            e.in_doubt = None;
            e.state = kind.target();
            e.source = Source::Acknowledged(kind);
            self.acknowledged += 1;
            self.repeats_checked += repeat as u64;
            if kind == Kind::Reserve {
                holds.push(id);
            }
        } else {
            // Left in doubt: the check after the next restart finds out what happened.
            self.failures.push(format!(
                "{name}: {kind:?} of id {id:#x} (qty {}) answered {:?} state {:?} repeat {repeat}; expected ok, {:?}, \
                 repeat {repeat_expected}",
                e.qty,
                Status::from_u8(r.status),
                ReservationState::from_u8(r.state),
                kind.target()
            ));
        }
    }
}

// ----- one client's round of traffic ----------------------------------------------------------

/// Operations of one kind sent in one frame: (id, whether a repeat is expected).
struct Frame {
    kind: Kind,
    ops: Vec<(u128, bool)>,
}

/// How a client's connection ended before the round did.
struct Died {
    at: Instant,
    error: String,
    /// An I/O error (what a killed server causes); anything else is a failure on its own.
    io: bool,
}

fn died(e: ClientError) -> Died {
    Died { at: Instant::now(), io: matches!(e, ClientError::Io(_)), error: e.to_string() }
}

/// Connects, sends the operations left in doubt again, then sends pipelined frames until
/// `run_for` has passed or the connection dies.
fn run_client(
    mut a: Actor,
    target: SocketAddr,
    start: &Barrier,
    run_for: Duration,
    seed: u64,
) -> (Actor, Option<Died>) {
    let connected = Client::connect(target).and_then(|mut c| c.set_read_timeout(Some(READ_TIMEOUT)).map(|()| c));
    start.wait();
    let mut client = match connected {
        Ok(client) => client,
        Err(e) => return (a, Some(died(e))),
    };
    let deadline = Instant::now() + run_for;
    let mut rng = Rng(seed);
    let mut retries = Vec::new();
    for kind in [Kind::Reserve, Kind::Confirm, Kind::Release] {
        let ops: Vec<(u128, bool)> = a
            .entries
            .iter()
            .filter_map(|(&id, e)| match e.retry {
                Some((k, applied)) if k == kind => Some((id, applied)),
                _ => None,
            })
            .collect();
        if !ops.is_empty() {
            retries.push(Frame { kind, ops });
        }
    }
    if let Err(d) = exchange(&mut client, &mut a, &retries, &mut Vec::new()) {
        return (a, Some(d));
    }
    let mut holds = a.settled_holds();
    for _ in 0..ITERATIONS_MAX {
        if Instant::now() >= deadline {
            break;
        }
        let frames = plan(&mut a, &mut holds, &mut rng);
        if frames.is_empty() {
            break; // Nothing left to do: every reserve sent and every hold settled.
        }
        if let Err(d) = exchange(&mut client, &mut a, &frames, &mut holds) {
            return (a, Some(d));
        }
    }
    (a, None)
}

/// Chooses one to `PIPELINE_MAX` frames of one to four operations each.
fn plan(a: &mut Actor, holds: &mut Vec<u128>, rng: &mut Rng) -> Vec<Frame> {
    let mut frames = Vec::new();
    for _ in 0..1 + rng.below(PIPELINE_MAX) {
        let size = 1 + rng.below(4);
        let roll = rng.below(100);
        let can_reserve = a.reserves < RESERVES_MAX_PER_CLIENT;
        let kind = match roll {
            _ if holds.is_empty() => Kind::Reserve,
            0..50 if can_reserve => Kind::Reserve,
            0..75 => Kind::Confirm,
            _ => Kind::Release,
        };
        let mut ops = Vec::new();
        for _ in 0..size {
            let id = match kind {
                Kind::Reserve if a.reserves < RESERVES_MAX_PER_CLIENT => {
                    a.reserves += 1;
                    let id = a.new_id();
                    let qty = 1 + rng.below(QTY_MAX) as u32;
                    let source = Source::Acknowledged(Kind::Reserve);
                    let entry = Entry { qty, state: ReservationState::None, in_doubt: None, retry: None, source };
                    a.entries.insert(id, entry);
                    id
                }
                Kind::Confirm | Kind::Release if !holds.is_empty() => {
                    holds.swap_remove(rng.below(holds.len() as u64) as usize)
                }
                _ => break,
            };
            ops.push((id, false));
        }
        if !ops.is_empty() {
            frames.push(Frame { kind, ops });
        }
    }
    frames
}

/// Sends `frames` pipelined and applies their answers. Operations stay in doubt from the
/// moment they are queued until their answer is read.
fn exchange(client: &mut Client, a: &mut Actor, frames: &[Frame], holds: &mut Vec<u128>) -> Result<(), Died> {
    let mut request_ids = Vec::with_capacity(frames.len());
    for f in frames {
        for &(id, _) in &f.ops {
            let e = a.entries.get_mut(&id).expect("an id of the model");
            e.in_doubt = Some(f.kind);
            e.retry = None;
        }
        let user = a.user;
        let entries = &a.entries;
        let request_id = match f.kind {
            Kind::Reserve => client.send_batch(
                &f.ops
                    .iter()
                    .map(|&(id, _)| ReserveOp { id, user, pool: 1, qty: entries[&id].qty, ttl_ms: 0, priority: 0 })
                    .collect::<Vec<_>>(),
            ),
            Kind::Confirm => client
                .send_batch(&f.ops.iter().map(|&(id, _)| ConfirmOp { id, user, commit_ref: id }).collect::<Vec<_>>()),
            Kind::Release => {
                client.send_batch(&f.ops.iter().map(|&(id, _)| ReleaseOp { id, user }).collect::<Vec<_>>())
            }
        };
        request_ids.push(request_id);
    }
    client.flush().map_err(died)?;
    for (f, request_id) in frames.iter().zip(request_ids) {
        let results = match f.kind {
            Kind::Reserve => client.wait_batch::<ReserveOp>(request_id),
            Kind::Confirm => client.wait_batch::<ConfirmOp>(request_id),
            Kind::Release => client.wait_batch::<ReleaseOp>(request_id),
        }
        .map_err(died)?;
        assert_eq!(results.len(), f.ops.len(), "one result per operation");
        for (&(id, repeat_expected), r) in f.ops.iter().zip(&results) {
            a.acknowledge(id, f.kind, repeat_expected, r, holds);
        }
    }
    Ok(())
}

// ----- checks after a restart -----------------------------------------------------------------

/// What a check found: the model's totals and how in-doubt operations resolved.
#[derive(Default)]
struct Tally {
    reservations: usize,
    held: u64,
    confirmed: u64,
    in_doubt: usize,
    in_doubt_applied: usize,
}

fn status_of(c: &mut Client, pool: u32) -> Result<PoolStatus, String> {
    match c.pool_status(&by_id(pool)) {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(status)) => Err(format!("pool status refused: {status}")),
        Err(e) => Err(format!("pool status failed: {e}")),
    }
}

fn lookups(c: &mut Client, ops: &[LookupOp]) -> Result<Vec<LookupResult>, String> {
    let mut out = Vec::with_capacity(ops.len());
    for chunk in ops.chunks(2048) {
        out.extend(c.lookup(chunk).map_err(|e| format!("lookup failed: {e}"))?);
    }
    Ok(out)
}

fn describe(found: &LookupResult) -> String {
    match Status::from_u8(found.status) {
        Some(Status::Ok) => format!(
            "{:?} qty {} user {} commit_ref {:#x}",
            ReservationState::from_u8(found.state),
            found.qty,
            found.user,
            found.commit_ref
        ),
        status => format!("{status:?}"),
    }
}

/// Resolves an in-doubt operation by what the server reports: either it applied or it did
/// not; any other state means the server invented or lost something.
fn resolve(e: &mut Entry, kind: Kind, found: &LookupResult) -> Result<bool, String> {
    let state = if found.status == Status::Ok as u8 { ReservationState::from_u8(found.state) } else { None };
    let applied = match (kind, state) {
        (Kind::Reserve, None) if found.status == Status::NotFound as u8 => false,
        (Kind::Reserve, Some(ReservationState::Held)) if found.qty == e.qty => true,
        (Kind::Confirm | Kind::Release, Some(ReservationState::Held)) => false,
        (Kind::Confirm, Some(ReservationState::Confirmed)) | (Kind::Release, Some(ReservationState::Released)) => true,
        _ => {
            return Err(format!(
                "in-doubt {kind:?} (qty {}, model state {:?}) is neither applied nor not: the server reports {}",
                e.qty,
                e.state,
                describe(found)
            ));
        }
    };
    if applied {
        e.state = kind.target();
    }
    e.in_doubt = None;
    e.retry = Some((kind, applied));
    e.source = Source::InDoubt { kind, applied };
    Ok(applied)
}

/// Waits until no reserve is parked and no unit is in transit (reserves parked at the
/// crash are decided once the cores resend their messages), then resolves every in-doubt
/// operation and compares every reservation and the pool's totals with the model.
fn check(server: &Server, pool: u32, actors: &mut [Actor]) -> Result<Tally, String> {
    let mut c = server.client();
    c.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + SETTLE_MAX;
    loop {
        let status = status_of(&mut c, pool)?;
        if status.shards.iter().all(|s| s.parked == 0) && status.in_flight() == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("reserves still parked or units in transit {SETTLE_MAX:?} after restart: {status:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut tally = Tally::default();
    let mut problems = Vec::new();

    // 1. In-doubt operations, resolved by the server's state.
    let doubtful: Vec<(usize, u128, Kind)> = actors
        .iter()
        .enumerate()
        .flat_map(|(n, a)| a.entries.iter().filter_map(move |(&id, e)| e.in_doubt.map(|k| (n, id, k))))
        .collect();
    let ops: Vec<LookupOp> = doubtful.iter().map(|&(n, id, _)| LookupOp { id, user: actors[n].user }).collect();
    for (&(n, id, kind), found) in doubtful.iter().zip(lookups(&mut c, &ops)?) {
        let name = actors[n].name();
        let e = actors[n].entries.get_mut(&id).expect("an id of the model");
        match resolve(e, kind, &found) {
            Ok(applied) => {
                tally.in_doubt += 1;
                tally.in_doubt_applied += applied as usize;
            }
            Err(problem) => problems.push(format!("{name}, id {id:#x}: {problem}")),
        }
    }

    // 2. Every reservation as the model says; mismatches counted by how the model learned
    // the state.
    let mut lost: BTreeMap<String, usize> = BTreeMap::new();
    let all: Vec<(usize, u128)> =
        actors.iter().enumerate().flat_map(|(n, a)| a.entries.keys().map(move |&id| (n, id))).collect();
    let ops: Vec<LookupOp> = all.iter().map(|&(n, id)| LookupOp { id, user: actors[n].user }).collect();
    for (&(n, id), found) in all.iter().zip(lookups(&mut c, &ops)?) {
        let a = &actors[n];
        let e = &a.entries[&id];
        let ok = match e.state {
            ReservationState::None => found.status == Status::NotFound as u8,
            state => {
                found.status == Status::Ok as u8
                    && found.state == state as u8
                    && found.qty == e.qty
                    && found.pool == pool
                    && found.user == a.user
                    && found.commit_ref == if state == ReservationState::Confirmed { id } else { 0 }
            }
        };
        if !ok {
            *lost.entry(e.source.to_string()).or_insert(0) += 1;
            problems.push(format!(
                "{}, id {id:#x}: the model says {:?} qty {} (learned from {}), the server reports {}",
                a.name(),
                e.state,
                e.qty,
                e.source,
                describe(&found)
            ));
        }
        match e.state {
            ReservationState::Held => tally.held += e.qty as u64,
            ReservationState::Confirmed => tally.confirmed += e.qty as u64,
            _ => {}
        }
        tally.reservations += (e.state != ReservationState::None) as usize;
    }

    if !lost.is_empty() {
        let counts: Vec<String> = lost.iter().map(|(source, n)| format!("{n} from {source}")).collect();
        problems.insert(0, format!("reservations not as the model says: {}", counts.join(", ")));
    }

    // 3. The pool's totals.
    let status = status_of(&mut c, pool)?;
    if !status.conserved() {
        problems.push(format!("capacity not conserved: {status:?}"));
    }
    for s in &status.shards {
        if s.held + s.confirmed > s.capacity {
            problems.push(format!("shard {} holds more than it owns: {s:?}", s.core));
        }
    }
    if status.confirmed() > CAPACITY || status.info.capacity != CAPACITY {
        problems.push(format!("{} units confirmed of a capacity of {CAPACITY}: {status:?}", status.confirmed()));
    }
    if (status.held(), status.confirmed()) != (tally.held, tally.confirmed) {
        problems.push(format!(
            "the server holds {} and has confirmed {} units; the model: held {}, confirmed {}",
            status.held(),
            status.confirmed(),
            tally.held,
            tally.confirmed
        ));
    }
    if problems.is_empty() {
        Ok(tally)
    } else {
        let count = problems.len();
        problems.truncate(20);
        Err(format!("{count} problems:\n  {}", problems.join("\n  ")))
    }
}

// ----- the crash test -------------------------------------------------------------------------

#[test]
fn acknowledged_operations_survive_repeated_sigkill() {
    let seed = seed();
    println!("crash test: SEED={seed}");
    let began = Instant::now();
    let mut rng = Rng(seed);
    // Sync mode (the default), with snapshots and new segments often enough that restarts
    // recover from a snapshot plus the log after it.
    let config = format!(
        "{}[durability]\nmode = \"sync\"\nsnapshot_interval_records = {SNAPSHOT_INTERVAL_RECORDS}\n\
         segment_size_bytes = {}\n",
        pool("crash", CAPACITY),
        1 << 20
    );
    let mut server = Server::start(2, &config);
    println!("data directory: {}", server.data_dir.display());
    let mut restarts_from_snapshot = 0;
    let mut admin = server.client();
    admin.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let info = admin.pool_list().unwrap().into_iter().find(|p| p.name == "crash").expect("pool crash");
    let pool_id = info.id;
    assert_eq!(pool_id, 1, "the clients send to pool 1");

    // Users spread over both cores; the big hold's user lives on the pool's home core.
    let users = [users_on(0, 2, CLIENTS / 2 + 1), users_on(1, 2, CLIENTS / 2 + 1)];
    let mut actors: Vec<Actor> = (0..CLIENTS)
        .map(|n| {
            let core = (n % 2) as u16;
            let port = match n % 3 {
                0 => Port::Shared,
                1 => Port::Core(core),
                _ => Port::Core(1 - core),
            };
            Actor::new(n, users[core as usize][n / 2], port)
        })
        .collect();
    let mut big = Actor::new(CLIENTS, users[info.home_core as usize][CLIENTS / 2], Port::Shared);
    let big_id = big.new_id();
    let op = ReserveOp { id: big_id, user: big.user, pool: pool_id, qty: BIG_QTY as u32, ttl_ms: 0, priority: 0 };
    let r = admin.reserve(&[op]).unwrap()[0];
    assert_eq!((r.status, r.state), (Status::Ok as u8, ReservationState::Held as u8), "the big hold");
    let entry = Entry {
        qty: BIG_QTY as u32,
        state: ReservationState::Held,
        in_doubt: None,
        retry: None,
        source: Source::Acknowledged(Kind::Reserve),
    };
    big.entries.insert(big_id, entry);
    drop(admin);

    for round in 0..=KILLS {
        assert!(began.elapsed() < TEST_DEADLINE, "SEED={seed}: the crash test ran past {TEST_DEADLINE:?}");
        let kill_after = (round < KILLS).then(|| Duration::from_millis(5 + rng.below(KILL_AFTER_MAX_MS - 5)));
        let run_for = if kill_after.is_some() { ROUND_MAX } else { FINAL_ROUND };
        let start = Arc::new(Barrier::new(CLIENTS + 1));
        let acknowledged_before: u64 = actors.iter().map(|a| a.acknowledged).sum();
        let threads: Vec<_> = actors
            .drain(..)
            .map(|a| {
                let (target, start) = (a.target(&server), start.clone());
                let client_seed = seed ^ ((round as u64) << 40) ^ ((a.index as u64 + 1) << 8);
                std::thread::spawn(move || run_client(a, target, &start, run_for, client_seed))
            })
            .collect();
        start.wait();
        let mut kill_at = None;
        if let Some(after) = kill_after {
            std::thread::sleep(after);
            kill_at = Some(Instant::now());
            let dir = server.kill();
            restarts_from_snapshot += (0..2).all(|core| snapshots(&dir, core) > 0) as u32;
            server = Server::start_in(2, &config, &dir);
        }
        let mut problems = Vec::new();
        for thread in threads {
            let (mut a, end) = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let Some(d) = end {
                if !d.io || kill_at.is_none_or(|k| d.at < k) {
                    problems.push(format!("{}: connection failed, not by the kill: {}", a.name(), d.error));
                }
            }
            problems.append(&mut a.failures);
            actors.push(a);
        }
        actors.sort_by_key(|a| a.index);
        actors.push(big);
        let checked = check(&server, pool_id, &mut actors);
        big = actors.pop().expect("the big hold's actor");
        match checked {
            Ok(t) => {
                let acknowledged: u64 = actors.iter().map(|a| a.acknowledged).sum::<u64>() - acknowledged_before;
                println!(
                    "round {round}: {}; {acknowledged} operations acknowledged, {} in doubt ({} had applied); \
                     {} reservations, held {}, confirmed {}",
                    kill_after.map_or("no kill".to_string(), |d| format!("killed after {} ms", d.as_millis())),
                    t.in_doubt,
                    t.in_doubt_applied,
                    t.reservations,
                    t.held,
                    t.confirmed
                );
                if kill_after.is_none() {
                    assert_eq!(t.in_doubt, 0, "SEED={seed}: operations in doubt although the server was not killed");
                }
            }
            Err(problem) => problems.push(problem),
        }
        if !problems.is_empty() {
            let dir = server.kill();
            panic!(
                "SEED={seed}, round {round} (kill after {kill_after:?}):\n{}\n(data directory kept: {})",
                problems.join("\n"),
                dir.display()
            );
        }
    }
    // Units moved between the cores (recalls and borrowing), so peer messages crossed the kills.
    let status = status_of(&mut connect(&server), pool_id).unwrap();
    println!("final shards: {:?}", status.shards);
    assert!(status.shards.iter().all(|s| s.lent > 0 && s.borrowed > 0), "the cores exchanged units: {status:?}");
    assert!(restarts_from_snapshot > 0, "no restart recovered from snapshots");
    let repeats: u64 = actors.iter().map(|a| a.repeats_checked).sum();
    println!("{restarts_from_snapshot} of {KILLS} restarts found a snapshot of each core");
    println!("{repeats} repeats of operations that had applied were answered as repeats");
    println!("crash test done in {:?}", began.elapsed());
}

// ----- restart tests --------------------------------------------------------------------------

fn lookup_one(c: &mut Client, id: u128, user: u128) -> LookupResult {
    c.lookup(&[LookupOp { id, user }]).unwrap()[0]
}

/// A client with a read timeout.
fn connect(server: &Server) -> Client {
    let mut c = server.client();
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c
}

/// Polls the pool's status until `done` holds (bounded).
fn wait_status(c: &mut Client, pool: u32, what: &str, done: impl Fn(&PoolStatus) -> bool) -> PoolStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.pool_status(&by_id(pool)).unwrap().unwrap();
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: not reached within 10 s: {status:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

static NEXT_CONFIG: AtomicU32 = AtomicU32::new(0);

/// Starts the binary on `dir` with a configuration like the harness's, expecting it to
/// refuse to start: answers its exit status and everything it wrote to stderr. Fails if it
/// reports ready or is still running after `REFUSAL_WAIT`.
fn start_refused(cores: u16, extra: &str, dir: &Path) -> (ExitStatus, String) {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncore_port_base = 0\ncores = {cores}\npin_cores = false\nlog_level = \"warn\"\n\
         data_dir = {:?}\n[limits]\nholds_max_per_core = 100000\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        dir.display().to_string()
    );
    let n = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("shardcap-crash-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcap"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardcap");
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("shardcap ready:") {
                let _ = ready_tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + REFUSAL_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let ready = ready_rx.recv_timeout(Duration::from_millis(10)).ok();
        if ready.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            match ready {
                Some(line) => panic!("the server started although it should refuse: {line}"),
                None => panic!("the server neither started nor exited within {REFUSAL_WAIT:?}"),
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    (status, stderr.join().unwrap())
}

/// The newest log segment (`wal-*.log`) of core `core` under `data_dir`.
fn newest_segment(data_dir: &Path, core: u16) -> PathBuf {
    let dir = shardcap::wal::core_dir(data_dir, core);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("wal-") && n.ends_with(".log"))
        .collect();
    names.sort(); // The first LSN is zero-padded: names sort by LSN.
    dir.join(names.last().unwrap_or_else(|| panic!("no log segment in {}", dir.display())))
}

/// The number of snapshot files of core `core` under `data_dir`.
fn snapshots(data_dir: &Path, core: u16) -> usize {
    let dir = shardcap::wal::core_dir(data_dir, core);
    let names = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name());
    names.filter(|n| shardcap::wal::snapshot_file::parse_file_name(&n.to_string_lossy()).is_some()).count()
}

/// The offset and command of every record of a segment.
fn records(bytes: &[u8]) -> Vec<(usize, Logged)> {
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_SIZE;
    while pos < bytes.len() && bytes[pos..].iter().any(|&b| b != 0) {
        let (rec, size) = record::decode(&bytes[pos..]).unwrap_or_else(|bad| panic!("record at {pos}: {bad:?}"));
        out.push((pos, rec.command));
        pos += size;
    }
    out
}

#[test]
fn holds_whose_ttl_passes_while_down_come_back_expired() {
    let config = pool("short", 10);
    let server = Server::start(2, &config);
    let (u0, u1) = (users_on(0, 2, 1)[0], users_on(1, 2, 1)[0]);
    let mut c = connect(&server);
    let results =
        c.reserve(&[reserve(1, u0, 1, 3, 1_000), reserve(2, u1, 1, 4, 1_000), reserve(3, u1, 1, 1, 0)]).unwrap();
    assert!(results.iter().all(|r| r.status == Status::Ok as u8), "{results:?}");
    let expires_at_ms = results[0].expires_at_ms.max(results[1].expires_at_ms);
    drop(c);
    let dir = server.kill();

    // Down until both short holds are past their time (bounded: they were given 1 s).
    let wait_ms = expires_at_ms.saturating_sub(now_ms()) + 50;
    assert!(wait_ms <= 2_000, "a hold of 1 s expires in {wait_ms} ms");
    std::thread::sleep(Duration::from_millis(wait_ms));
    assert!(now_ms() > expires_at_ms);

    let server = Server::start_in(2, &config, &dir);
    let mut c = connect(&server);
    for (id, user) in [(1, u0), (2, u1)] {
        let found = lookup_one(&mut c, id, user);
        assert_eq!((found.status, found.state), (Status::Ok as u8, ReservationState::Expired as u8), "hold {id}");
    }
    let found = lookup_one(&mut c, 3, u1);
    assert_eq!((found.status, found.state), (Status::Ok as u8, ReservationState::Held as u8), "the long hold");
    let status = wait_status(&mut c, 1, "expired units returned", |s| s.held() == 1);
    assert_eq!((status.confirmed(), status.available()), (0, 9));
    assert!(status.conserved(), "{status:?}");
    let confirm = c.confirm(&[ConfirmOp { id: 1, user: u0, commit_ref: 1 }]).unwrap()[0];
    assert_eq!((confirm.status, confirm.state), (Status::Expired as u8, ReservationState::Expired as u8));
    // The 7 units that expired are free again, wherever they were held.
    let r = c.reserve(&[reserve(4, u0, 1, 9, 0)]).unwrap()[0];
    assert_eq!(r.status, Status::Ok as u8, "all 9 free units can be held again");
    let status = c.pool_status(&by_id(1)).unwrap().unwrap();
    assert_eq!((status.held(), status.available()), (10, 0));
}

#[test]
fn runtime_pool_survives_restart_inactive_and_config_pool_is_not_duplicated() {
    let config = pool("demo", 100);
    let server = Server::start(2, &config);
    let mut c = connect(&server);
    let req = PoolCreate {
        name: "concert".into(),
        capacity: 11,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 120_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    };
    let created = c.pool_create(&req).unwrap().unwrap();
    assert_eq!(created.id, 2);
    assert!(!c.pool_set_active(2, false).unwrap().unwrap().active);
    let users = [users_on(0, 2, 1)[0], users_on(1, 2, 1)[0]];
    assert_eq!(c.reserve(&[reserve(1, users[0], 1, 5, 0)]).unwrap()[0].status, Status::Ok as u8);
    drop(c);
    let mut server = server;
    for restart in 1..=2 {
        let dir = server.kill();
        server = Server::start_in(2, &config, &dir);
        let mut c = connect(&server);
        let pools: Vec<(u32, String, u64, bool)> =
            c.pool_list().unwrap().into_iter().map(|p| (p.id, p.name, p.capacity, p.active)).collect();
        assert_eq!(
            pools,
            [(1, "demo".to_string(), 100, true), (2, "concert".to_string(), 11, false)],
            "restart {restart}: the configured pool once, the created one still inactive"
        );
        let concert = c.pool_status(&PoolRef { id: 0, name: "concert".into() }).unwrap().unwrap();
        assert_eq!((concert.info.hold_ttl_ms_default, concert.info.hold_ttl_ms_max), (60_000, 120_000));
        assert!(concert.conserved() && concert.capacity_sum() == 11, "{concert:?}");
        for (n, &user) in users.iter().enumerate() {
            let r = c.reserve(&[reserve(100 + restart * 10 + n as u128, user, 2, 1, 0)]).unwrap()[0];
            assert_eq!(r.status, Status::PoolInactive as u8, "restart {restart}: core {n} knows the pool is inactive");
        }
        let found = lookup_one(&mut c, 1, users[0]);
        assert_eq!((found.status, found.state, found.qty), (Status::Ok as u8, ReservationState::Held as u8, 5));
    }
    let mut c = connect(&server);
    assert!(c.pool_set_active(2, true).unwrap().unwrap().active);
    let r = c.reserve(&[reserve(2, users[1], 2, 11, 0)]).unwrap()[0];
    assert_eq!(r.status, Status::Ok as u8, "the restored pool serves its whole capacity once active");
}

#[test]
fn data_dir_of_two_cores_is_refused_by_a_one_core_server() {
    let config = pool("demo", 100);
    let server = Server::start(2, &config);
    let user = users_on(1, 2, 1)[0];
    assert_eq!(connect(&server).reserve(&[reserve(1, user, 1, 2, 0)]).unwrap()[0].status, Status::Ok as u8);
    let dir = server.kill();

    let (status, stderr) = start_refused(1, &config, &dir);
    assert!(!status.success(), "a 1-core server must refuse a 2-core data directory: {status}");
    assert!(
        stderr.contains("a server with 2 cores (core-0, core-1), this server has 1") && stderr.contains("--cores 2"),
        "stderr names both core counts and the fix: {stderr}"
    );

    // The refusal changed nothing: the 2-core server starts and has the reservation.
    let server = Server::start_in(2, &config, &dir);
    let found = lookup_one(&mut connect(&server), 1, user);
    assert_eq!((found.status, found.state, found.qty), (Status::Ok as u8, ReservationState::Held as u8, 2));
}

#[test]
fn config_pool_with_other_ttls_is_refused_at_start_and_another_capacity_is_not() {
    let config = pool("demo", 100);
    let server = Server::start(2, &config);
    let user = users_on(0, 2, 1)[0];
    assert_eq!(connect(&server).reserve(&[reserve(1, user, 1, 2, 0)]).unwrap()[0].status, Status::Ok as u8);
    let dir = server.kill();

    let other_ttl = "[[pool]]\nname = \"demo\"\ncapacity = 100\nhold_ttl_s_default = 30\nhold_ttl_s_max = 900\n";
    let (status, stderr) = start_refused(2, other_ttl, &dir);
    assert!(!status.success(), "a configured pool whose TTLs differ from the stored one must be refused: {status}");
    assert!(
        stderr.contains("'demo'")
            && stderr.contains("hold TTL 30000..900000")
            && stderr.contains("hold TTL 300000..900000"),
        "stderr names the pool and both TTL ranges: {stderr}"
    );

    // The capacity changes live (`pool_set_capacity`): the stored one stands.
    let server = Server::start_in(2, &pool("demo", 200), &dir);
    let mut c = connect(&server);
    assert_eq!(c.pool_list().unwrap().iter().map(|p| p.capacity).collect::<Vec<_>>(), [100]);
    let found = lookup_one(&mut c, 1, user);
    assert_eq!((found.status, found.state), (Status::Ok as u8, ReservationState::Held as u8));
}

#[test]
fn torn_tail_of_the_newest_segment_is_tolerated() {
    let config = pool("demo", 100);
    let server = Server::start(2, &config);
    let user = users_on(1, 2, 1)[0];
    let mut c = server.core_client(1);
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    for id in 1..=5 {
        assert_eq!(c.reserve(&[reserve(id, user, 1, 1, 0)]).unwrap()[0].status, Status::Ok as u8, "reserve {id}");
    }
    drop(c);
    let dir = server.kill();

    // The last record of core 1's newest segment is the last reserve; cut its last bytes
    // (and the zeros that pad the segment to whole blocks after it).
    let segment = newest_segment(&dir, 1);
    let bytes = std::fs::read(&segment).unwrap();
    let last = records(&bytes).pop().expect("records");
    assert!(matches!(last.1, Logged::Reserve(op) if op.id == 5), "the last record is reserve 5: {last:?}");
    let end = last.0 + record::decode(&bytes[last.0..]).unwrap().1;
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(end as u64 - 5).unwrap();
    drop(file);

    let mut server = Server::start_in(2, &config, &dir);
    let mut c = connect(&server);
    for id in 1..=4 {
        let found = lookup_one(&mut c, id, user);
        assert_eq!((found.status, found.state), (Status::Ok as u8, ReservationState::Held as u8), "reserve {id}");
    }
    assert_eq!(lookup_one(&mut c, 5, user).status, Status::NotFound as u8, "the torn record is dropped");
    let status = c.pool_status(&by_id(1)).unwrap().unwrap();
    assert_eq!(status.held(), 4);
    // The log goes on after the cut: what follows is readable after another crash.
    assert_eq!(c.reserve(&[reserve(6, user, 1, 2, 0)]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(c.confirm(&[ConfirmOp { id: 1, user, commit_ref: 7 }]).unwrap()[0].status, Status::Ok as u8);
    drop(c);
    let dir = server.kill();
    server = Server::start_in(2, &config, &dir);
    let mut c = connect(&server);
    let expected = [
        (1, ReservationState::Confirmed),
        (2, ReservationState::Held),
        (3, ReservationState::Held),
        (4, ReservationState::Held),
        (6, ReservationState::Held),
    ];
    for (id, state) in expected {
        let found = lookup_one(&mut c, id, user);
        assert_eq!((found.status, found.state), (Status::Ok as u8, state as u8), "reservation {id}");
    }
    assert_eq!(lookup_one(&mut c, 5, user).status, Status::NotFound as u8);
    let status = c.pool_status(&by_id(1)).unwrap().unwrap();
    assert_eq!((status.held(), status.confirmed()), (5, 1));
}

#[test]
fn corrupt_byte_inside_a_segment_refuses_start_naming_file_and_offset() {
    let config = pool("demo", 100);
    let server = Server::start(2, &config);
    let user = users_on(1, 2, 1)[0];
    let mut c = server.core_client(1);
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    for id in 1..=6 {
        assert_eq!(c.reserve(&[reserve(id, user, 1, 1, 0)]).unwrap()[0].status, Status::Ok as u8, "reserve {id}");
    }
    drop(c);
    let dir = server.kill();

    // Flip a byte inside the record of reserve 2: good records follow it.
    let segment = newest_segment(&dir, 1);
    let mut bytes = std::fs::read(&segment).unwrap();
    let all = records(&bytes);
    let at = all.iter().position(|(_, cmd)| matches!(cmd, Logged::Reserve(op) if op.id == 2)).expect("reserve 2");
    assert!(all.len() - at >= 5, "later records follow the damaged one");
    let offset = all[at].0;
    bytes[offset + RECORD_HEADER_SIZE + 12] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    for attempt in 1..=2 {
        let (status, stderr) = start_refused(2, &config, &dir);
        assert!(!status.success(), "attempt {attempt}: a corrupt log must stop the start: {status}");
        assert!(
            stderr.contains(&segment.display().to_string()) && stderr.contains(&format!("offset {offset}")),
            "attempt {attempt}: stderr names {} and offset {offset}: {stderr}",
            segment.display()
        );
    }
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "a refused start leaves the log as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files
}

#[test]
fn durability_none_writes_no_files() {
    let config = format!("{}[durability]\nmode = \"none\"\n", pool("demo", 100));
    let server = Server::start(2, &config);
    let mut c = connect(&server);
    let (u0, u1) = (users_on(0, 2, 1)[0], users_on(1, 2, 1)[0]);
    let results = c.reserve(&[reserve(1, u0, 1, 2, 0), reserve(2, u1, 1, 3, 0)]).unwrap();
    assert!(results.iter().all(|r| r.status == Status::Ok as u8), "{results:?}");
    assert_eq!(c.confirm(&[ConfirmOp { id: 1, user: u0, commit_ref: 1 }]).unwrap()[0].status, Status::Ok as u8);
    let req = PoolCreate {
        name: "extra".into(),
        capacity: 5,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 60_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    };
    assert!(c.pool_create(&req).unwrap().is_ok());
    assert_eq!(files_under(&server.data_dir), Vec::<PathBuf>::new(), "no file in the data directory");
    drop(c);
    let dir = server.kill();
    assert_eq!(files_under(&dir), Vec::<PathBuf>::new(), "no file after the kill");

    // Memory only: a restart starts empty, with the configured pool alone.
    let server = Server::start_in(2, &config, &dir);
    let mut c = connect(&server);
    assert_eq!(lookup_one(&mut c, 1, u0).status, Status::NotFound as u8);
    assert_eq!(c.pool_list().unwrap().into_iter().map(|p| p.name).collect::<Vec<_>>(), ["demo"]);
    assert_eq!(files_under(&dir), Vec::<PathBuf>::new());
}
