//! What cores say to each other over glommio's channel mesh: forwarded operations and
//! their results (the proxy hop), the state machines' borrowing messages, and control
//! requests (pool changes, status gathering).
//!
//! A message to another core goes straight into the channel when it has room and nothing
//! is queued before it; otherwise into a local unbounded queue drained by one sender task
//! per peer, so that no task that handles a message ever waits for a full channel: two
//! cores sending to each other cannot deadlock. The queues stay bounded in
//! practice because what feeds them is: forwarded operations by
//! `forwarded_operations_max_per_core`, parked reserves by `parked_reserves_max_per_core`,
//! control requests by the frames in flight per connection.

use crate::protocol::control::{CoreStats, PoolCreate, PoolInfo, ShardStatus, UserActivity, UserActivityRequest};
use crate::protocol::{ConfirmOp, ExtendOp, LookupOp, LookupResult, OpResult, ReleaseOp, ReserveOp, Status};
use crate::shard::{Command, PeerMsg, PoolDef};

/// One client operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reserve.
    Reserve(ReserveOp),
    /// Confirm.
    Confirm(ConfirmOp),
    /// Release.
    Release(ReleaseOp),
    /// Extend.
    Extend(ExtendOp),
    /// Lookup (with a user).
    Lookup(LookupOp),
}

impl Op {
    /// The user whose home core applies the operation.
    pub fn user(&self) -> u128 {
        match self {
            Op::Reserve(op) => op.user,
            Op::Confirm(op) => op.user,
            Op::Release(op) => op.user,
            Op::Extend(op) => op.user,
            Op::Lookup(op) => op.user,
        }
    }
}

/// The result of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutput {
    /// Reserve, confirm, release, extend.
    Op(OpResult),
    /// Lookup.
    Lookup(LookupResult),
}

impl OpOutput {
    /// Writes the result record.
    pub fn encode(&self, out: &mut [u8]) {
        match self {
            OpOutput::Op(r) => r.encode(out),
            OpOutput::Lookup(r) => r.encode(out),
        }
    }
}

/// Where a result belongs on the core that read the request: connection, pending frame,
/// operation index in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// Connection id (never reused on a core).
    pub conn: u64,
    /// The connection's pending-frame slot.
    pub frame: u32,
    /// Index of the operation in the frame.
    pub index: u16,
}

/// A control request to one core.
#[derive(Clone, Debug)]
pub enum RpcReq {
    /// This core's shard of a pool.
    ShardStatus { pool: u32 },
    /// A lookup on this core (user 0: any user).
    Lookup(LookupOp),
    /// This core's counters.
    Stats,
    /// To the user's home core: the user's activity in one pool (or every pool for 0).
    UserActivity(UserActivityRequest),
    /// To core 0: create a pool (core 0 assigns the id and tells every core).
    CreatePool(PoolCreate),
    /// To core 0: change a pool everywhere (a [`Command::SetPoolActive`],
    /// [`Command::SetPoolRules`], [`Command::ResizePool`] or [`Command::RenamePool`]).
    ChangePool(Command),
    /// From core 0 to a pool's home core: decide a change of the pool's capacity (recalling
    /// free units from every shard first if a shrink needs them).
    Resize { pool: u32, capacity: u64 },
    /// From core 0 at start-up: the capacities of the pools this core is the home of.
    HomeCapacities,
    /// From core 0: apply a pool creation, and keep the pool unknown to clients until
    /// [`RpcReq::Publish`] (some core may not have it yet).
    ApplyCreate(PoolDef),
    /// From core 0, once every core has applied a pool's creation: serve the pool.
    Publish { pool: u32 },
    /// From core 0: apply a pool change core 0 has made.
    ApplyChange(Command),
    /// From core 0 at start-up: make the catalog equal to core 0's (after a crash, a core
    /// may not have logged the last changes core 0 had sent it).
    EnsureCatalog(Vec<PoolDef>),
    /// From core 0 at start-up, once every core is recovered and the catalog agrees: send
    /// again what peers may not have received, catch up on expiry, start serving.
    Resume,
}

/// The answer to a control request.
#[derive(Clone, Debug)]
pub enum RpcResp {
    /// A shard and the pool's capacity as this core has it, or none if the pool is unknown.
    Shard(Option<(ShardStatus, u64)>),
    /// Pool ids and capacities.
    Capacities(Vec<(u32, u64)>),
    /// A lookup result.
    Lookup(LookupResult),
    /// Counters.
    Stats(CoreStats),
    /// A pool after a change, or why it was refused.
    Pool(Result<PoolInfo, Status>),
    /// A user's activity, by pool.
    Activity(Vec<UserActivity>),
    /// Applied.
    Ack,
    /// Refused, with the reason.
    Failed(String),
}

/// A message between two cores.
#[derive(Debug)]
pub enum MeshMsg {
    /// Operations of users homed on the receiving core, read by the sending core.
    Forward { ops: Vec<(FrameRef, Op)> },
    /// Results of forwarded operations, for the core that forwarded them.
    Results { results: Vec<(FrameRef, OpOutput)> },
    /// A borrowing message of the state machines, with its sequence number on the link.
    Peer { seq: u64, msg: PeerMsg },
    /// The receiver holds every borrowing message up to `seq` (on durable storage when
    /// there is a log): the sender may forget them.
    PeerAck { seq: u64 },
    /// A control request; `token` names the reply.
    Rpc { token: u64, req: RpcReq },
    /// The reply to a control request.
    RpcReply { token: u64, resp: RpcResp },
}

/// The sending side of one core's mesh: messages go straight into the peer's channel when
/// it has room and nothing is queued before them; otherwise they wait in a local queue
/// that a task per peer drains in order ([`MeshOut::drain`]). No task that sends ever
/// waits, so two cores sending to each other cannot deadlock, and the common case costs
/// no extra task switch.
pub struct MeshOut {
    senders: glommio::channels::channel_mesh::Senders<MeshMsg>,
    queues: Vec<std::cell::RefCell<std::collections::VecDeque<MeshMsg>>>,
    /// The drain task holds a message it is waiting to send.
    sending: Vec<std::cell::Cell<bool>>,
    wakers: Vec<std::cell::RefCell<Option<std::task::Waker>>>,
}

impl MeshOut {
    /// Wraps the mesh senders of a core.
    pub fn new(senders: glommio::channels::channel_mesh::Senders<MeshMsg>) -> Self {
        let n = senders.nr_consumers();
        MeshOut {
            senders,
            queues: (0..n).map(|_| Default::default()).collect(),
            sending: (0..n).map(|_| Default::default()).collect(),
            wakers: (0..n).map(|_| Default::default()).collect(),
        }
    }

    /// Sends `msg` to core `to`, in order with everything sent to it before.
    pub fn send(&self, to: u16, msg: MeshMsg) {
        let to = to as usize;
        let msg = if self.queues[to].borrow().is_empty() && !self.sending[to].get() {
            match self.senders.try_send_to(to, msg) {
                Ok(()) => return,
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => msg,
                Err(e) => {
                    tracing::warn!(to, error = %e, "message to a stopped core dropped");
                    return;
                }
            }
        } else {
            msg
        };
        self.queues[to].borrow_mut().push_back(msg);
        if let Some(w) = self.wakers[to].borrow_mut().take() {
            w.wake();
        }
    }

    /// Sends the messages queued for core `to` as its channel makes room; runs forever.
    pub async fn drain(&self, to: u16) {
        let to = to as usize;
        loop {
            let msg = std::future::poll_fn(|cx| match self.queues[to].borrow_mut().pop_front() {
                Some(msg) => std::task::Poll::Ready(msg),
                None => {
                    *self.wakers[to].borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            })
            .await;
            self.sending[to].set(true);
            let sent = self.senders.send_to(to, msg).await;
            self.sending[to].set(false);
            if sent.is_err() {
                tracing::warn!(to, "message to a stopped core dropped");
            }
        }
    }
}
