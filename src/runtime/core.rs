//! One core's runtime: its state machine, its connections' mailboxes, the routing of
//! operations to their users' home cores, and the handling of messages from other cores.
//! Everything here is owned by one executor thread: `RefCell`/`Cell`, no locks, no atomics.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use super::clock::{Clock, StepWatch};
use super::mesh::{FrameRef, MeshMsg, MeshOut, Op, OpOutput, RpcReq, RpcResp};
use crate::admin::metrics::{BusyReason, CoreMetrics, CoreTotals, OpKind};
use crate::admin::{ControlReq, ControlResp, CoreMsg, CoreReport, PoolChange, PoolKey, PoolReport, PoolSelection};
use crate::config::Config;
use crate::protocol::control::Hello;
use crate::protocol::control::{
    CoreStats, PoolCreate, PoolInfo, PoolStatus, ShardStatus, USER_HASH_XXH3_JUMP, UserActivity, UserActivityRequest,
};
use crate::protocol::{LookupOp, LookupResult, OpResult, Status, VERSION, home_core};
use crate::shard::cluster::merge_lookups;
use crate::shard::{BankMode, Command, Completion, Engine, Envelope, Outcome, PoolDef, Reply};
use crate::wal::Durability;
use crate::wal::writer::LogWriter;

/// The ports every core serves, known to all cores once they are bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The shared data port.
    pub shared_port: u16,
    /// Each core's own port (0 when core ports are off).
    pub core_ports: Vec<u16>,
}

/// A result delivered to a connection after its frame was read.
#[derive(Debug)]
pub enum ConnEvent {
    /// One operation of a pending batch frame.
    Op { at: FrameRef, output: OpOutput },
    /// A whole response frame for a pending control frame.
    Frame { frame: u32, bytes: Vec<u8> },
}

/// The mailbox of one connection: results that arrive while it waits for its socket.
#[derive(Default)]
pub struct ConnShared {
    events: RefCell<Vec<ConnEvent>>,
    waker: RefCell<Option<Waker>>,
}

impl ConnShared {
    /// Delivers a result and wakes the connection.
    pub fn push(&self, event: ConnEvent) {
        self.events.borrow_mut().push(event);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
    /// True if results are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.borrow().is_empty()
    }
    /// Moves the waiting results into `out`.
    pub fn take_events(&self, out: &mut Vec<ConnEvent>) {
        out.append(&mut self.events.borrow_mut());
    }
    /// Registers the task to wake when a result arrives.
    pub fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// Where the late result of a parked reserve goes.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// A connection of this core.
    Local(FrameRef),
    /// A connection of another core that forwarded the reserve.
    Remote { core: u16, at: FrameRef },
}

/// Per-core counters, plain integers.
#[derive(Default)]
pub struct Counters {
    /// Connections open.
    pub connections_open: Cell<u64>,
    /// Request frames read.
    pub frames: Cell<u64>,
    /// Operations sent to their home core.
    pub forwarded_out: Cell<u64>,
    /// Operations received from other cores.
    pub forwarded_in: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

/// One core's runtime state.
pub struct CoreRuntime {
    /// This core's index.
    pub core: u16,
    /// Number of cores.
    pub cores: u16,
    /// The configuration.
    pub config: Config,
    /// Ports of every core.
    pub topology: Topology,
    clock: Box<dyn Clock>,
    clock_watch: StepWatch,
    /// When a step of the clock backwards was last logged (steps are logged at most every
    /// [`CLOCK_STEP_LOG_INTERVAL`], counted always).
    clock_step_logged: Cell<Option<std::time::Instant>>,
    engine: RefCell<Engine>,
    conns: RefCell<HashMap<u64, Rc<ConnShared>>>,
    next_conn: Cell<u64>,
    tickets: RefCell<HashMap<u64, Dest>>,
    mesh: Rc<MeshOut>,
    /// This core's write-ahead log.
    pub log: Rc<LogWriter>,
    /// Messages that may leave only once the log has the records that produced them, with
    /// the LSN they wait for, in sending order.
    deferred: RefCell<VecDeque<(u64, u16, MeshMsg)>>,
    /// The listeners, until the core starts serving.
    listeners: RefCell<Option<crate::net::listener::Listeners>>,
    forwarded_inflight: Cell<u32>,
    rpc_waiting: RefCell<HashMap<u64, flume::Sender<RpcResp>>>,
    next_token: Cell<u64>,
    /// Counters.
    pub counters: Counters,
    /// The counts scrapes collect.
    pub metrics: Rc<CoreMetrics>,
    envelopes: RefCell<Vec<Envelope>>,
    completions: RefCell<Vec<Completion>>,
    /// Core 0: one catalog change at a time, so that every core applies them in one order.
    catalog_lock: glommio::sync::Semaphore,
    /// Pools this core has created but not published yet: some core may not know them, so
    /// they are unknown to clients here (see [`RpcReq::CreatePool`]). Not logged: after a
    /// restart every core has core 0's catalog before any serves (`start_cluster`).
    unpublished: RefCell<Vec<u32>>,
}

/// Steps of the clock backwards are logged at most this often (each is counted).
const CLOCK_STEP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a capacity change waits for recalls of free units to end.
const RESIZE_RECALL_WAIT: Duration = Duration::from_secs(5);
/// Recalls a capacity change starts at most.
const RESIZE_RECALLS_MAX: u32 = 3;

/// What a core's runtime works through: the channels to the other cores, its log, its
/// listeners and its metrics.
pub struct CoreIo {
    /// The channels to the other cores.
    pub mesh: Rc<MeshOut>,
    /// The core's write-ahead log.
    pub log: Rc<LogWriter>,
    /// The listeners it will serve.
    pub listeners: crate::net::listener::Listeners,
    /// The counts scrapes collect.
    pub metrics: Rc<CoreMetrics>,
}

impl CoreRuntime {
    /// A core's runtime around its state machine.
    pub fn new(config: Config, topology: Topology, clock: Box<dyn Clock>, engine: Engine, io: CoreIo) -> Self {
        let CoreIo { mesh, log, listeners, metrics } = io;
        let cores = config.core_count();
        let core = engine.config().core;
        CoreRuntime {
            core,
            cores,
            config,
            topology,
            clock,
            clock_watch: StepWatch::default(),
            clock_step_logged: Cell::new(None),
            engine: RefCell::new(engine),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            tickets: RefCell::new(HashMap::new()),
            mesh,
            log,
            deferred: RefCell::new(VecDeque::new()),
            listeners: RefCell::new(Some(listeners)),
            forwarded_inflight: Cell::new(0),
            rpc_waiting: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            counters: Counters::default(),
            metrics,
            envelopes: RefCell::new(Vec::new()),
            completions: RefCell::new(Vec::new()),
            catalog_lock: glommio::sync::Semaphore::new(1),
            unpublished: RefCell::new(Vec::new()),
        }
    }

    /// Starts a snapshot of this core's state (see [`Engine::snapshot_begin`]): the head, and
    /// the LSN of the last record the snapshot includes.
    pub fn snapshot_begin(&self) -> (crate::shard::snapshot::SnapshotHead, u64) {
        let head = self.engine.borrow_mut().snapshot_begin();
        (head, self.log.last_lsn())
    }

    /// The next chunk of the snapshot in progress; true once complete.
    pub fn snapshot_chunk(&self, max: usize, out: &mut Vec<crate::shard::snapshot::HoldSnap>) -> bool {
        self.engine.borrow_mut().snapshot_chunk(max, out)
    }

    /// The limits the state machine runs with.
    pub fn engine_config(&self) -> crate::shard::EngineConfig {
        *self.engine.borrow().config()
    }

    /// The current time in ms since the Unix epoch, as the wall clock has it. A reading
    /// earlier than the one before (the clock was stepped back) is counted and logged; the
    /// state machine applies commands at the latest time it has seen in any case.
    pub fn now_ms(&self) -> u64 {
        let now = self.clock.now_ms();
        if let Some(back_ms) = self.clock_watch.observe(now) {
            self.metrics.count_clock_step_backward();
            let logged = self.clock_step_logged.get();
            if logged.is_none_or(|at| at.elapsed() >= CLOCK_STEP_LOG_INTERVAL) {
                self.clock_step_logged.set(Some(std::time::Instant::now()));
                tracing::warn!(
                    core = self.core,
                    back_ms,
                    "the wall clock went back: time stands still for the state machine until it catches up"
                );
            }
        }
        now
    }

    /// The handshake answer for a connection on this core.
    pub fn hello(&self) -> Hello {
        let limits = &self.config.limits;
        Hello {
            protocol_version: VERSION,
            user_hash: USER_HASH_XXH3_JUMP,
            core_count: self.cores,
            this_core: self.core,
            shared_port: self.topology.shared_port,
            frame_size_max_bytes: limits.frame_size_max_bytes,
            batch_operations_max: limits.batch_operations_max,
            inflight_frames_max: limits.inflight_frames_max_per_connection,
            core_ports: self.topology.core_ports.clone(),
        }
    }

    /// Registers a new connection; answers its id and mailbox, or `None` over the limit.
    pub fn open_connection(&self) -> Option<(u64, Rc<ConnShared>)> {
        if self.counters.connections_open.get() >= self.config.limits.connections_max_per_core as u64 {
            return None;
        }
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let shared = Rc::new(ConnShared::default());
        self.conns.borrow_mut().insert(id, shared.clone());
        bump(&self.counters.connections_open, 1);
        self.metrics.count_opened();
        Some((id, shared))
    }

    /// Forgets a closed connection; results still on their way to it are dropped.
    pub fn close_connection(&self, id: u64) {
        if self.conns.borrow_mut().remove(&id).is_some() {
            self.counters.connections_open.set(self.counters.connections_open.get() - 1);
        }
    }

    /// Counts a request frame.
    pub fn count_frame(&self) {
        bump(&self.counters.frames, 1);
    }

    /// The core that applies an operation of `user`.
    pub fn home_of(&self, user: u128) -> u16 {
        home_core(user, self.cores)
    }

    /// Applies an operation of a user homed here: its result, or `Err(ticket)` when a
    /// reserve waits for borrowed units (then call [`Self::park`]).
    pub fn apply_local(&self, now_ms: u64, op: Op) -> Result<OpOutput, u64> {
        self.apply_op(now_ms, op)
    }

    /// Sends the late result of parked reserve `ticket` to `at`'s connection.
    pub fn park(&self, ticket: u64, at: FrameRef) {
        self.tickets.borrow_mut().insert(ticket, Dest::Local(at));
    }

    /// Applies a command to the state machine, logging it first if it can change the state.
    /// Everything a core's state machine does goes through here, in the order of the log.
    pub fn apply(&self, now_ms: u64, command: Command) -> Outcome {
        self.log.append(now_ms, &command);
        self.engine.borrow_mut().apply(now_ms, command)
    }

    /// True while pool `pool` is being created: some core may not know it yet.
    fn unpublished(&self, pool: u32) -> bool {
        let unpublished = self.unpublished.borrow();
        !unpublished.is_empty() && unpublished.contains(&pool)
    }

    /// Applies one operation; `Err(ticket)` when a reserve is parked.
    fn apply_op(&self, now_ms: u64, op: Op) -> Result<OpOutput, u64> {
        let (kind, command) = match op {
            // A pool not known everywhere yet is unknown: a reserve that borrowed would send
            // a message to a core that has never heard of the pool. (A reserve the engine
            // refuses before it looks at the pool gets the engine's answer.)
            Op::Reserve(op)
                if self.unpublished(op.pool)
                    && op.id != 0
                    && op.user != 0
                    && (1..=crate::shard::holds::HOLD_QTY_MAX).contains(&op.qty) =>
            {
                self.metrics.count_op(OpKind::Reserve, Status::PoolNotFound as u8);
                return Ok(OpOutput::Op(OpResult::status(Status::PoolNotFound)));
            }
            // The queue to some core is full: a reserve may borrow or recall, a release may
            // send freed units home; refused until it drains (mesh.rs).
            Op::Reserve(_) | Op::Release(_) if self.mesh.congested() => {
                let kind = if matches!(op, Op::Reserve(_)) { OpKind::Reserve } else { OpKind::Release };
                self.metrics.count_busy(BusyReason::Mesh, 1);
                self.metrics.count_op(kind, Status::Busy as u8);
                return Ok(OpOutput::Op(Self::busy()));
            }
            Op::Reserve(op) => (OpKind::Reserve, Command::Reserve(op)),
            Op::Confirm(op) => (OpKind::Confirm, Command::Confirm(op)),
            Op::Release(op) => (OpKind::Release, Command::Release(op)),
            Op::Extend(op) => (OpKind::Extend, Command::Extend(op)),
            Op::Lookup(op) => {
                let result = self.engine.borrow().lookup(now_ms, &op);
                self.metrics.count_op(OpKind::Lookup, result.status);
                return Ok(OpOutput::Lookup(result));
            }
        };
        match self.apply(now_ms, command) {
            Outcome::Reserve(Reply::Done(r)) | Outcome::Op(r) => {
                self.metrics.count_op(kind, r.status);
                Ok(OpOutput::Op(r))
            }
            Outcome::Reserve(Reply::Parked(ticket)) => Err(ticket),
            other => unreachable!("client operation answered {other:?}"),
        }
    }

    /// True if operations may be forwarded to core `to`: its mesh queue is below
    /// `mesh_queue_messages_max` (else the caller answers `busy`).
    pub fn mesh_has_room(&self, to: u16) -> bool {
        self.mesh.has_room(to)
    }

    /// Admits `count` operations for forwarding, or refuses them all (the caller answers
    /// `busy`) when the core has too many forwarded operations unanswered.
    pub fn admit_forwards(&self, count: u32) -> bool {
        let inflight = self.forwarded_inflight.get();
        if inflight + count > self.config.limits.forwarded_operations_max_per_core {
            return false;
        }
        self.forwarded_inflight.set(inflight + count);
        true
    }

    /// Sends operations (already admitted) to core `to`.
    pub fn forward(&self, to: u16, ops: Vec<(FrameRef, Op)>) {
        bump(&self.counters.forwarded_out, ops.len() as u64);
        self.send(to, MeshMsg::Forward { ops });
    }

    /// Sends `msg` once the log has every record applied so far (at once without a log):
    /// what a command decided must not reach another core before the command is durable.
    fn send_when_durable(&self, to: u16, msg: MeshMsg) {
        let mut deferred = self.deferred.borrow_mut();
        if self.log.mode() == Durability::None || (deferred.is_empty() && self.log.last_lsn() <= self.log.durable_lsn())
        {
            drop(deferred);
            self.send(to, msg);
        } else {
            deferred.push_back((self.log.last_lsn(), to, msg));
        }
    }

    /// Sends the deferred messages whose records are now durable (called by the log writer).
    pub fn release_durable(&self, durable_lsn: u64) {
        loop {
            let next = {
                let mut deferred = self.deferred.borrow_mut();
                match deferred.front() {
                    Some(&(lsn, _, _)) if lsn <= durable_lsn => deferred.pop_front(),
                    _ => None,
                }
            };
            let Some((_, to, msg)) = next else { return };
            self.send(to, msg);
        }
    }

    /// In `sync` mode, waits until everything applied so far is durable: answers to clients
    /// wait for this.
    pub async fn answers_durable(&self) {
        if self.log.mode() == Durability::Sync {
            self.log.durable(self.log.last_lsn()).await;
        }
    }

    /// Sends results of forwarded operations: in `sync` mode only once they are durable.
    fn send_results(&self, to: u16, results: Vec<(FrameRef, OpOutput)>) {
        if self.log.mode() == Durability::Sync {
            self.send_when_durable(to, MeshMsg::Results { results });
        } else {
            self.send(to, MeshMsg::Results { results });
        }
    }

    fn send(&self, to: u16, msg: MeshMsg) {
        debug_assert_ne!(to, self.core, "no channel to self");
        self.mesh.send(to, msg);
    }

    /// Delivers one operation's result to its connection's pending frame.
    pub fn deliver_op(&self, at: FrameRef, output: OpOutput) {
        if let Some(conn) = self.conns.borrow().get(&at.conn) {
            conn.push(ConnEvent::Op { at, output });
        }
    }

    /// Delivers a whole response frame to a connection's pending control frame.
    pub fn deliver_frame(&self, conn: u64, frame: u32, bytes: Vec<u8>) {
        if let Some(c) = self.conns.borrow().get(&conn) {
            c.push(ConnEvent::Frame { frame, bytes });
        }
    }

    /// Sends the state machine's messages and routes the results of reserves it decided
    /// after parking them. Called after every batch of commands.
    pub fn flush_engine(&self) {
        let mut envelopes = self.envelopes.borrow_mut();
        let mut completions = self.completions.borrow_mut();
        {
            let mut engine = self.engine.borrow_mut();
            // In release builds too: the shards this batch changed still hold no more than
            // they have. A broken invariant stops the core.
            engine.check_touched();
            if !engine.has_output() {
                if cfg!(debug_assertions) {
                    engine.check_invariants();
                }
                return;
            }
            engine.take_outbox(&mut envelopes);
            engine.take_completions(&mut completions);
            if cfg!(debug_assertions) {
                engine.check_invariants();
            }
        }
        for env in envelopes.drain(..) {
            self.send_when_durable(env.to, MeshMsg::Peer { seq: env.seq, msg: env.msg });
        }
        let mut remote: Vec<(u16, FrameRef, OpOutput)> = Vec::new();
        for c in completions.drain(..) {
            self.metrics.count_op(OpKind::Reserve, c.result.status);
            let Some(dest) = self.tickets.borrow_mut().remove(&c.ticket) else { continue };
            match dest {
                Dest::Local(at) => self.deliver_op(at, OpOutput::Op(c.result)),
                Dest::Remote { core, at } => remote.push((core, at, OpOutput::Op(c.result))),
            }
        }
        for core in 0..self.cores {
            let results: Vec<(FrameRef, OpOutput)> =
                remote.iter().filter(|r| r.0 == core).map(|&(_, at, out)| (at, out)).collect();
            if !results.is_empty() {
                self.send_results(core, results);
            }
        }
    }

    /// Expires due holds (run by the background ticker); logs a tick only when it may
    /// change something.
    pub fn tick(&self) {
        let now = self.now_ms();
        if self.engine.borrow().tick_due(now) {
            self.apply(now, Command::Tick);
            self.flush_engine();
        }
    }

    /// Handles a message from core `from`.
    pub fn on_mesh(self: &Rc<Self>, from: u16, msg: MeshMsg) {
        let now = self.now_ms();
        match msg {
            MeshMsg::Forward { ops } => {
                bump(&self.counters.forwarded_in, ops.len() as u64);
                let mut results = Vec::with_capacity(ops.len());
                for (at, op) in ops {
                    match self.apply_op(now, op) {
                        Ok(out) => results.push((at, out)),
                        Err(ticket) => {
                            self.tickets.borrow_mut().insert(ticket, Dest::Remote { core: from, at });
                        }
                    }
                }
                if !results.is_empty() {
                    self.send_results(from, results);
                }
                self.flush_engine();
            }
            MeshMsg::Results { results } => {
                self.forwarded_inflight.set(self.forwarded_inflight.get() - results.len() as u32);
                for (at, output) in results {
                    self.deliver_op(at, output);
                }
            }
            MeshMsg::Peer { seq, msg } => {
                self.apply(now, Command::Peer { from, seq, msg });
                self.flush_engine();
                // The sender may forget the message once its receipt is durable here.
                self.send_when_durable(from, MeshMsg::PeerAck { seq });
            }
            MeshMsg::PeerAck { seq } => {
                self.apply(now, Command::PeerAck { from, seq });
            }
            MeshMsg::Rpc { token, req } => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    let resp = this.handle_rpc(req).await;
                    this.send(from, MeshMsg::RpcReply { token, resp });
                })
                .detach();
            }
            MeshMsg::RpcReply { token, resp } => {
                if let Some(tx) = self.rpc_waiting.borrow_mut().remove(&token) {
                    let _ = tx.send(resp);
                }
            }
        }
    }

    /// Sends a control request to core `to` (or handles it here) and waits for the answer.
    pub async fn rpc(self: &Rc<Self>, to: u16, req: RpcReq) -> RpcResp {
        if to == self.core {
            return self.handle_rpc(req).await;
        }
        let rx = self.rpc_start(to, req);
        rx.recv_async().await.unwrap_or(RpcResp::Pool(Err(Status::InternalError)))
    }

    fn rpc_start(&self, to: u16, req: RpcReq) -> flume::Receiver<RpcResp> {
        let (tx, rx) = flume::bounded(1);
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.rpc_waiting.borrow_mut().insert(token, tx);
        self.send(to, MeshMsg::Rpc { token, req });
        rx
    }

    /// Sends `req` to every core at once (this one included) and gathers the answers in
    /// core order.
    pub async fn gather(self: &Rc<Self>, req: RpcReq) -> Vec<RpcResp> {
        let pending: Vec<Option<flume::Receiver<RpcResp>>> =
            (0..self.cores).map(|c| (c != self.core).then(|| self.rpc_start(c, req.clone()))).collect();
        let mut answers = Vec::with_capacity(self.cores as usize);
        for rx in pending {
            answers.push(match rx {
                Some(rx) => rx.recv_async().await.unwrap_or(RpcResp::Pool(Err(Status::InternalError))),
                None => self.handle_rpc(req.clone()).await,
            });
        }
        answers
    }

    /// A lookup without a user: every core is asked.
    pub async fn lookup_everywhere(self: &Rc<Self>, op: LookupOp) -> LookupResult {
        let answers = self.gather(RpcReq::Lookup(op)).await;
        let result = merge_lookups(answers.into_iter().map(|a| match a {
            RpcResp::Lookup(r) => r,
            _ => LookupResult::status(Status::InternalError),
        }));
        self.metrics.count_op(OpKind::Lookup, result.status);
        result
    }

    /// A pool's status: its definition and every core's shard of it. A pool whose units
    /// are not conserved is logged as an error and counted as an oversell. A pool some core
    /// does not serve (yet) is `pool_not_found`, and one whose shard a core did not report
    /// is `internal_error`: a status is complete or not answered, never filled in.
    pub async fn pool_status(self: &Rc<Self>, info: PoolInfo) -> Result<PoolStatus, Status> {
        let mut gathered: Vec<(ShardStatus, u64)> = Vec::with_capacity(self.cores as usize);
        for r in self.gather(RpcReq::ShardStatus { pool: info.id }).await {
            match r {
                RpcResp::Shard(Some(shard)) => gathered.push(shard),
                RpcResp::Shard(None) => return Err(Status::PoolNotFound),
                _ => return Err(Status::InternalError),
            }
        }
        // The capacity as the pool's home core has it: that core decides changes and is the
        // only one whose shard they change.
        let capacity = gathered.get(info.home_core as usize).map_or(info.capacity, |g| g.1);
        let info = PoolInfo { capacity, ..info };
        let shards = gathered.into_iter().map(|(s, _)| s).collect();
        let status = PoolStatus { info, shards };
        if !status.conserved() {
            tracing::error!(pool = status.info.id, "capacity not conserved: {status:?}");
            self.metrics.count_oversell();
        }
        Ok(status)
    }

    /// Asks core 0 to create a pool.
    pub async fn create_pool(self: &Rc<Self>, req: PoolCreate) -> Result<PoolInfo, Status> {
        self.create_pool_reporting(req).await.map(|(info, _)| info)
    }

    /// Asks core 0 to create a pool; also says whether this request created it (`false`:
    /// the same pool existed already).
    pub async fn create_pool_reporting(self: &Rc<Self>, req: PoolCreate) -> Result<(PoolInfo, bool), Status> {
        match self.rpc(0, RpcReq::CreatePool(req)).await {
            RpcResp::PoolExisted(info) => Ok((info, false)),
            other => pool_result(other).map(|info| (info, true)),
        }
    }

    /// Asks core 0 to change a pool (a [`Command`] of [`RpcReq::ChangePool`]). An invalid
    /// description is refused here, before anything is logged: a log record has room for a
    /// valid one only.
    pub async fn change_pool(self: &Rc<Self>, change: Command) -> Result<PoolInfo, Status> {
        if let Command::DescribePool { description, .. } = &change {
            if !crate::shard::pool::valid_pool_description(description) {
                return Err(Status::InvalidDescription);
            }
        }
        pool_result(self.rpc(0, RpcReq::ChangePool(change)).await)
    }

    /// A user's activity, from the user's home core.
    pub async fn user_activity(self: &Rc<Self>, req: UserActivityRequest) -> Result<Vec<UserActivity>, Status> {
        if req.user == 0 {
            return Err(Status::InvalidUser);
        }
        match self.rpc(home_core(req.user, self.cores), RpcReq::UserActivity(req)).await {
            RpcResp::Activity(list) => Ok(list),
            _ => Err(Status::InternalError),
        }
    }

    /// Handles a request of the admin thread.
    pub fn on_admin(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Flush { pools, reply } => {
                let _ = reply.send(self.flush_metrics(&pools));
            }
            CoreMsg::Control { req, reply } => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(this.admin_control(req).await);
                })
                .detach();
            }
        }
    }

    /// Checks the invariants of every shard of this core (an oversell is logged and
    /// counted), flushes the core's counts into the registry, and reports the selected pools.
    fn flush_metrics(&self, selection: &PoolSelection) -> CoreReport {
        let engine = self.engine.borrow();
        if let Some(broken) = engine.accounting_failure() {
            tracing::error!(core = self.core, "invariant check failed: {broken}");
            self.metrics.count_oversell();
        }
        let stats = engine.stats();
        let (lent, borrowed) = engine.units_moved();
        let (retained, oldest_ms) = engine.retained();
        let now_ms = self.clock.now_ms();
        self.metrics.flush(&CoreTotals {
            frames: self.counters.frames.get(),
            forwarded_out: self.counters.forwarded_out.get(),
            forwarded_in: self.counters.forwarded_in.get(),
            borrow_messages: stats.borrow_messages,
            borrowed_units: borrowed,
            lent_units: lent,
            expirations: stats.expirations,
            log_bytes: self.log.stats().bytes,
            connections_open: self.counters.connections_open.get(),
            holds_active: engine.held_count(),
            reservation_records: engine.holds_len() as u64 + retained as u64,
            retained_records: retained as u64,
            retention_window_ms: oldest_ms.map_or(0, |t| now_ms.saturating_sub(t)),
            retention_evictions: stats.retention_evictions,
            retention_forced: stats.retention_forced,
            retention_busy: stats.retention_busy,
        });
        let ids: Vec<u32> = match selection {
            PoolSelection::Named(names) => names.iter().filter_map(|n| engine.pool_id(n)).collect(),
            PoolSelection::First(n) => (1..=engine.pool_count().min(*n)).collect(),
        };
        let pools = ids
            .into_iter()
            .filter(|&id| !self.unpublished(id))
            .filter_map(|id| {
                let info = engine.pool_info(id)?;
                let shard = engine.shard_snapshot(id)?;
                Some(PoolReport {
                    id,
                    home: info.home_core == self.core,
                    name: info.name,
                    capacity: info.capacity,
                    held: shard.held,
                    confirmed: shard.confirmed,
                })
            })
            .collect();
        CoreReport { core: self.core, pool_count: engine.pool_count(), pools }
    }

    /// The pool a request path names: a positive number is an id, anything else a name.
    fn resolve_pool(&self, key: &PoolKey) -> Option<PoolInfo> {
        match key.0.parse::<u32>() {
            Ok(id) if id > 0 => self.pool_info(id, ""),
            _ => self.pool_info(0, &key.0),
        }
    }

    async fn admin_control(self: &Rc<Self>, req: ControlReq) -> ControlResp {
        match req {
            ControlReq::ListPools { start_after, limit } => {
                let (infos, more) = self.pool_page(start_after, limit);
                ControlResp::Pools(infos, more)
            }
            ControlReq::PoolStatus(key) => ControlResp::Status(match self.resolve_pool(&key) {
                Some(info) => self.pool_status(info).await,
                None => Err(Status::PoolNotFound),
            }),
            ControlReq::CreatePool(req) => ControlResp::Created(self.create_pool_reporting(req).await),
            ControlReq::ChangePool(key, changes) => {
                let Some(mut info) = self.resolve_pool(&key) else {
                    return ControlResp::Pool(Err((Status::PoolNotFound, 0)));
                };
                for (done, change) in changes.into_iter().enumerate() {
                    let pool = info.id;
                    let command = match change {
                        PoolChange::Active(active) => Command::SetPoolActive { pool, active },
                        PoolChange::Rules(rules) => Command::SetPoolRules { pool, rules },
                        PoolChange::Capacity(capacity) => Command::ResizePool { pool, capacity },
                        PoolChange::Rename(name) => Command::RenamePool { pool, name: name.into() },
                        PoolChange::Describe(text) => Command::DescribePool { pool, description: text.into() },
                    };
                    match self.change_pool(command).await {
                        Ok(changed) => info = changed,
                        Err(status) => return ControlResp::Pool(Err((status, done))),
                    }
                }
                ControlResp::Pool(Ok(info))
            }
            ControlReq::Lookup(op) => ControlResp::Lookup(if op.user == 0 {
                self.lookup_everywhere(op).await
            } else {
                match self.rpc(home_core(op.user, self.cores), RpcReq::Lookup(op)).await {
                    RpcResp::Lookup(r) => r,
                    _ => LookupResult::status(Status::InternalError),
                }
            }),
            ControlReq::UserActivity { user, pool, recent } => {
                let pool = match pool.map(|key| self.resolve_pool(&key)) {
                    None => 0,
                    Some(Some(info)) => info.id,
                    Some(None) => return ControlResp::Activity(Err(Status::PoolNotFound)),
                };
                let req = UserActivityRequest { user, pool, state: 0, recent };
                ControlResp::Activity(self.user_activity(req).await.map(|list| {
                    let name = |id| self.pool_info(id, "").map_or_else(|| id.to_string(), |info| info.name);
                    list.into_iter().map(|a| (name(a.pool), a)).collect()
                }))
            }
        }
    }

    async fn handle_rpc(self: &Rc<Self>, req: RpcReq) -> RpcResp {
        let now = self.now_ms();
        match req {
            RpcReq::ShardStatus { pool } => {
                // Expire what is due first, so the status shows what is really held.
                self.tick();
                // (Even if still unpublished here: the asking core has published the pool,
                // so every core has applied its creation.)
                let engine = self.engine.borrow();
                RpcResp::Shard(engine.shard_snapshot(pool).zip(engine.pool_info(pool).map(|info| info.capacity)))
            }
            RpcReq::Lookup(op) => RpcResp::Lookup(self.engine.borrow().lookup(now, &op)),
            RpcReq::Stats => RpcResp::Stats(self.stats()),
            RpcReq::UserActivity(r) => {
                // Expire what is due first, so the activity shows what is really held.
                self.tick();
                RpcResp::Activity(self.engine.borrow().user_activity(now, r.user, r.pool, r.state, r.recent))
            }
            RpcReq::ApplyCreate(def) => {
                self.unpublished.borrow_mut().push(def.id);
                self.apply(now, Command::CreatePool(def));
                self.catalog_durable().await;
                RpcResp::Ack
            }
            RpcReq::Publish { pool } => {
                self.unpublished.borrow_mut().retain(|&p| p != pool);
                RpcResp::Ack
            }
            RpcReq::ApplyChange(change) => {
                self.apply(now, change);
                self.catalog_durable().await;
                RpcResp::Ack
            }
            RpcReq::CreatePool(req) => {
                debug_assert_eq!(self.core, 0, "core 0 owns the catalog");
                let _one_change_at_a_time = self.catalog_lock.acquire_permit(1).await;
                // Validation, id choice and local apply happen without an await in between,
                // so every core applies creations in core 0's order.
                let def = match self.engine.borrow().validate_pool_create(&req) {
                    Ok(def) => def,
                    Err(status) => return RpcResp::Pool(Err(status)),
                };
                if self.engine.borrow().pool_info(def.id).is_some() {
                    return RpcResp::PoolExisted(def.info(self.cores));
                }
                // Two phases: every core applies the creation with the pool unpublished
                // (unknown to clients, so no reserve can borrow and no status can miss a
                // shard), then every core publishes it. Until core 0 answers, the pool is
                // served nowhere or only where every core has it.
                let pool = def.id;
                self.unpublished.borrow_mut().push(pool);
                let Outcome::Pool(result) = self.apply(now, Command::CreatePool(def.clone())) else {
                    unreachable!("a pool creation answers with the pool")
                };
                if let Ok(info) = &result {
                    tracing::info!(pool = info.id, name = %info.name, capacity = info.capacity, "pool created");
                }
                self.catalog_durable().await;
                self.broadcast(RpcReq::ApplyCreate(def)).await;
                self.broadcast(RpcReq::Publish { pool }).await;
                self.unpublished.borrow_mut().retain(|&p| p != pool);
                RpcResp::Pool(result)
            }
            RpcReq::ChangePool(change) => {
                debug_assert_eq!(self.core, 0, "core 0 owns the catalog");
                let _one_change_at_a_time = self.catalog_lock.acquire_permit(1).await;
                if let Command::ResizePool { pool, capacity } = change {
                    return RpcResp::Pool(Box::pin(self.resize(pool, capacity)).await);
                }
                let Outcome::Pool(result) = self.apply(now, change.clone()) else {
                    unreachable!("a pool change answers with the pool")
                };
                if result.is_ok() {
                    match &change {
                        Command::SetPoolActive { pool, active } => {
                            tracing::info!(pool, active, "pool activation changed")
                        }
                        Command::SetPoolRules { pool, rules } => tracing::info!(pool, ?rules, "pool rules changed"),
                        Command::RenamePool { pool, name } => tracing::info!(pool, %name, "pool renamed"),
                        Command::DescribePool { pool, description } => {
                            tracing::info!(pool, %description, "pool description changed")
                        }
                        other => unreachable!("{other:?} is not a pool change"),
                    }
                    self.catalog_durable().await;
                    self.broadcast(RpcReq::ApplyChange(change)).await;
                }
                RpcResp::Pool(result)
            }
            RpcReq::Resize { pool, capacity } => RpcResp::Pool(self.resize_at_home(pool, capacity).await),
            RpcReq::HomeCapacities => {
                let engine = self.engine.borrow();
                let mine = engine.pool_defs().into_iter().filter(|d| d.home_core(self.cores) == self.core);
                RpcResp::Capacities(mine.map(|d| (d.id, d.capacity)).collect())
            }
            RpcReq::EnsureCatalog(defs) => match self.ensure_catalog(now, &defs) {
                Ok(()) => {
                    self.catalog_durable().await;
                    RpcResp::Ack
                }
                Err(reason) => RpcResp::Failed(reason),
            },
            RpcReq::Resume => {
                self.resume();
                RpcResp::Ack
            }
        }
    }

    /// Core 0: changes a pool's capacity. The pool's home core decides (its shard is the
    /// only one a change alters) and makes the change durable first; then every other core
    /// records the new capacity. A crash in between is repaired at start-up, where core 0
    /// takes each pool's capacity from its home core (`start_cluster`).
    async fn resize(self: &Rc<Self>, pool: u32, capacity: u64) -> Result<PoolInfo, Status> {
        let home = self.engine.borrow().pool_info(pool).ok_or(Status::PoolNotFound)?.home_core;
        let decided = if home == self.core {
            self.resize_at_home(pool, capacity).await
        } else {
            match self.rpc(home, RpcReq::Resize { pool, capacity }).await {
                RpcResp::Pool(result) => result,
                _ => Err(Status::InternalError),
            }
        };
        let info = decided?;
        tracing::info!(pool, capacity, "pool capacity changed");
        let change = Command::ResizePool { pool, capacity };
        if home != self.core {
            self.apply(self.now_ms(), change.clone());
            self.catalog_durable().await;
        }
        self.broadcast_skipping(home, RpcReq::ApplyChange(change)).await;
        Ok(info)
    }

    /// The pool's home core: applies a change of its capacity. A shrink takes free units of
    /// this core's shard; if there are too few, every shard's free units are recalled home
    /// and the change is tried again when the recall has ended (up to three recalls in 5 s).
    /// Refused with `capacity_in_use` if even then the free units are short (they are held,
    /// confirmed, on their way to reserves, or kept for priority reserves).
    async fn resize_at_home(self: &Rc<Self>, pool: u32, capacity: u64) -> Result<PoolInfo, Status> {
        let started = std::time::Instant::now();
        let mut recalls = 0;
        loop {
            let short = self.engine.borrow().resize_shortfall(pool, capacity)?;
            if short == 0 {
                let Outcome::Pool(result) = self.apply(self.now_ms(), Command::ResizePool { pool, capacity }) else {
                    unreachable!("a resize answers with the pool")
                };
                // More units may decide reserves waiting here, or let the pool undrain.
                self.flush_engine();
                self.catalog_durable().await;
                return result;
            }
            // Drained after a recall, every free unit is here (or granted to a waiting
            // reserve): the shortfall is real. Back to normal, shards may have borrowed
            // units again before this task ran: recall once more, a few times at most.
            let mode = self.engine.borrow().bank_mode(pool);
            let waited = started.elapsed() >= RESIZE_RECALL_WAIT;
            match mode {
                // (One core has every free unit already: nothing to recall.)
                Some(BankMode::Normal) if self.cores > 1 && recalls < RESIZE_RECALLS_MAX && !waited => {
                    self.apply(self.now_ms(), Command::RecallPool { pool });
                    self.flush_engine();
                    recalls += 1;
                }
                Some(BankMode::Recalling { .. }) if !waited => {}
                _ => return Err(Status::CapacityInUse),
            }
            // The recall's answers come from the other cores' mesh messages.
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Catalog changes are durable before anyone learns of them (in every mode with a log).
    async fn catalog_durable(&self) {
        self.log.durable(self.log.last_lsn()).await;
    }

    /// Applies the pools, activation flags, rules, names, capacities and descriptions of
    /// core 0's catalog that this core lacks (a core's capacity of a pool it is the home of is core 0's
    /// already: `start_cluster` took it from here).
    fn ensure_catalog(&self, now_ms: u64, defs: &[PoolDef]) -> Result<(), String> {
        let mine = self.engine.borrow().pool_defs();
        if mine.len() > defs.len() {
            return Err(format!("core {} knows {} pools, core 0 only {}", self.core, mine.len(), defs.len()));
        }
        let mut renames = Vec::new();
        for def in defs {
            match mine.get(def.id as usize - 1) {
                // Created below, once every name here is core 0's.
                None => {}
                Some(have) => {
                    let changeable = PoolDef {
                        active: def.active,
                        rules: def.rules,
                        name: def.name.clone(),
                        capacity: def.capacity,
                        description: def.description.clone(),
                        ..have.clone()
                    };
                    if changeable != *def {
                        return Err(format!("core {} has another definition of pool {}", self.core, def.id));
                    }
                    if have.active != def.active {
                        self.apply(now_ms, Command::SetPoolActive { pool: def.id, active: def.active });
                    }
                    if have.rules != def.rules {
                        self.apply(now_ms, Command::SetPoolRules { pool: def.id, rules: def.rules });
                    }
                    if have.capacity != def.capacity {
                        if have.home_core(self.cores) == self.core {
                            return Err(format!(
                                "core {} decides pool {}'s capacity, core 0 differs",
                                self.core, def.id
                            ));
                        }
                        self.apply(now_ms, Command::ResizePool { pool: def.id, capacity: def.capacity });
                    }
                    if have.name != def.name {
                        renames.push((def.id, def.name.clone()));
                    }
                    if have.description != def.description {
                        let description = def.description.clone();
                        self.apply(now_ms, Command::DescribePool { pool: def.id, description });
                    }
                }
            }
        }
        self.apply_renames(now_ms, renames)?;
        for def in &defs[mine.len()..] {
            // A creation record has no description: it follows as a change of its own.
            self.apply(now_ms, Command::CreatePool(PoolDef { description: "".into(), ..def.clone() }));
            if !def.description.is_empty() {
                let description = def.description.clone();
                self.apply(now_ms, Command::DescribePool { pool: def.id, description });
            }
        }
        Ok(())
    }

    /// Renames pools to the names core 0 has. A name can still belong to another pool here
    /// that is itself to be renamed (core 0 swapped names through a third one): those wait
    /// for it, and a cycle of such pools is broken with a temporary name.
    fn apply_renames(&self, now_ms: u64, mut renames: Vec<(u32, Box<str>)>) -> Result<(), String> {
        // Every wanted name is free here or held by a pool of the list (core 0's names are
        // unique): each temporary name frees one, so there are at most as many as pools.
        let mut temporary_left = renames.len();
        while !renames.is_empty() {
            let before = renames.len();
            renames.retain(|(pool, name)| {
                let taken = self.engine.borrow().pool_id(name).is_some_and(|id| id != *pool);
                if !taken {
                    self.apply(now_ms, Command::RenamePool { pool: *pool, name: name.clone() });
                }
                taken
            });
            if renames.len() == before {
                if temporary_left == 0 {
                    return Err(format!("core {} cannot take core 0's pool names", self.core));
                }
                temporary_left -= 1;
                let pool = renames[0].0;
                let free = (0..).map(|n| format!("renaming-{pool}-{n}"));
                let temporary =
                    free.into_iter().find(|n| self.engine.borrow().pool_id(n).is_none()).expect("a free name");
                let Outcome::Pool(Ok(_)) = self.apply(now_ms, Command::RenamePool { pool, name: temporary.into() })
                else {
                    return Err(format!("core {} cannot rename pool {pool}", self.core));
                };
            }
        }
        Ok(())
    }

    /// Right after recovery, before this core applies anything from another core or
    /// ticks: queues again every message peers may lack (they ignore what they already
    /// have). They must leave before any message this core will send from now on, whose
    /// sequence numbers follow theirs.
    pub fn resend_unacked(&self) {
        let unacked = self.engine.borrow().unacked();
        for env in unacked {
            self.send_when_durable(env.to, MeshMsg::Peer { seq: env.seq, msg: env.msg });
        }
    }

    /// Starts serving after recovery: expires what expired while the server was down, then
    /// accepts connections.
    fn resume(self: &Rc<Self>) {
        self.tick();
        if let Some(listeners) = self.listeners.borrow_mut().take() {
            crate::net::listener::serve(self.clone(), listeners);
        }
    }

    /// Core 0 at start-up: brings every core's catalog to core 0's, creates the pools of
    /// the configuration that do not exist yet (refusing ones that exist with other
    /// parameters), then lets every core start serving.
    pub async fn start_cluster(self: &Rc<Self>, pools: &[crate::config::PoolConfig]) -> Result<(), String> {
        // A pool's capacity is decided by its home core, which makes a change durable
        // before core 0 records it: take the home cores' capacities first.
        for core in (1..self.cores).filter(|&c| c != self.core) {
            let RpcResp::Capacities(capacities) = self.rpc(core, RpcReq::HomeCapacities).await else {
                return Err(format!("core {core} did not report its pools' capacities"));
            };
            for (pool, capacity) in capacities {
                let mine = self.engine.borrow().pool_info(pool).map(|info| info.capacity);
                if mine.is_some_and(|c| c != capacity) {
                    tracing::info!(pool, capacity, "pool capacity taken from its home core after a restart");
                    self.apply(self.now_ms(), Command::ResizePool { pool, capacity });
                }
            }
        }
        self.catalog_durable().await;
        let defs = self.engine.borrow().pool_defs();
        for core in (1..self.cores).filter(|&c| c != self.core) {
            if let RpcResp::Failed(reason) = self.rpc(core, RpcReq::EnsureCatalog(defs.clone())).await {
                return Err(reason);
            }
        }
        for pool in pools {
            let req = pool.to_request();
            let existing = self.engine.borrow().pool_id(&req.name).and_then(|id| self.engine.borrow().pool_info(id));
            match existing {
                Some(info) => {
                    let same = (info.hold_ttl_ms_default, info.hold_ttl_ms_max)
                        == (req.hold_ttl_ms_default, req.hold_ttl_ms_max);
                    if !same {
                        return Err(format!(
                            "pool '{}' of the configuration (hold TTL {}..{} ms) differs from the stored pool \
                             (hold TTL {}..{} ms): change the configuration to match",
                            req.name,
                            req.hold_ttl_ms_default,
                            req.hold_ttl_ms_max,
                            info.hold_ttl_ms_default,
                            info.hold_ttl_ms_max
                        ));
                    }
                    if info.capacity != req.capacity {
                        // Capacity changes live (`pool_set_capacity`): the stored one stands,
                        // as the active flag and the rules do.
                        tracing::warn!(
                            pool = %req.name,
                            configured = req.capacity,
                            stored = info.capacity,
                            "the configured capacity differs from the stored one, which stays \
                             (change it with `shardcap pool resize`)"
                        );
                    }
                }
                None => {
                    if let RpcResp::Pool(Err(status)) = self.handle_rpc(RpcReq::CreatePool(req.clone())).await {
                        return Err(format!("pool '{}' of the configuration: {status}", req.name));
                    }
                }
            }
        }
        for core in (0..self.cores).filter(|&c| c != self.core) {
            self.rpc(core, RpcReq::Resume).await;
        }
        self.resume();
        Ok(())
    }

    /// Sends a catalog change to every other core and waits until all applied it.
    async fn broadcast(self: &Rc<Self>, req: RpcReq) {
        self.broadcast_skipping(self.core, req).await
    }

    /// [`Self::broadcast`] to every other core but `skip` too (one that applied it already).
    async fn broadcast_skipping(self: &Rc<Self>, skip: u16, req: RpcReq) {
        let pending: Vec<_> =
            (0..self.cores).filter(|&c| c != self.core && c != skip).map(|c| self.rpc_start(c, req.clone())).collect();
        for rx in pending {
            let _ = rx.recv_async().await;
        }
    }

    /// A pool's definition by id or name, from this core's copy of the catalog.
    pub fn pool_info(&self, id: u32, name: &str) -> Option<PoolInfo> {
        let engine = self.engine.borrow();
        let id = if id != 0 { id } else { engine.pool_id(name)? };
        if self.unpublished(id) {
            return None;
        }
        engine.pool_info(id)
    }

    /// Up to `limit` pool definitions with ids above `start_after`.
    pub fn pool_page(&self, start_after: u32, limit: usize) -> (Vec<PoolInfo>, bool) {
        let engine = self.engine.borrow();
        let published = |id: &u32| !self.unpublished(*id);
        let count = engine.pool_count();
        let first = start_after.saturating_add(1);
        let infos: Vec<PoolInfo> =
            (first..=count).filter(published).take(limit).filter_map(|id| engine.pool_info(id)).collect();
        let more = infos.last().is_some_and(|last| (last.id + 1..=count).any(|id| published(&id)));
        (infos, more)
    }

    /// This core's counters.
    pub fn stats(&self) -> CoreStats {
        let engine = self.engine.borrow();
        let e = engine.stats();
        CoreStats {
            core: self.core,
            connections_open: self.counters.connections_open.get(),
            frames: self.counters.frames.get(),
            operations: e.operations,
            forwarded_out: self.counters.forwarded_out.get(),
            forwarded_in: self.counters.forwarded_in.get(),
            borrow_messages: e.borrow_messages,
            holds_live: engine.holds_len() as u64,
            log_records: self.log.stats().records,
            log_syncs: self.log.stats().syncs,
            log_durable_lsn: self.log.durable_lsn(),
        }
    }

    /// The busy answer for an operation that could not be admitted.
    pub fn busy() -> OpResult {
        OpResult::status(Status::Busy)
    }
}

/// A pool definition from core 0's answer to a creation or change.
fn pool_result(resp: RpcResp) -> Result<PoolInfo, Status> {
    match resp {
        RpcResp::Pool(result) => result,
        RpcResp::PoolExisted(info) => Ok(info),
        _ => Err(Status::InternalError),
    }
}
