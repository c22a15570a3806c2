//! What cores say to each other over glommio's channel mesh: forwarded operations and
//! their results (the proxy hop), the state machines' borrowing messages, and control
//! requests (pool changes, status gathering).
//!
//! A message to another core goes straight into the channel when it has room and nothing
//! is queued before it; otherwise into a local queue drained by one sender task per peer,
//! so that no task that handles a message ever waits for a full channel: two cores sending
//! to each other cannot deadlock.
//!
//! The queue is bounded by admission, not by dropping: a message once produced is always
//! sent, in order (borrowing messages carry units, results answer clients, and a lost one
//! would lose units or an answer). Once the queue for a core holds
//! `mesh_queue_messages_max` messages, the core refuses with `busy` the client operations
//! that could add to it until it drains below again: operations to forward to that core,
//! and reserves and releases (which may borrow, recall or send freed units home) while any
//! of its queues is full. What is admitted before the limit is reached adds a bounded
//! amount: each operation sends at most a few messages, forwarded operations are bounded by
//! `forwarded_operations_max_per_core`, parked reserves by `parked_reserves_max_per_core`,
//! control requests by the frames in flight per connection. Expiries are never refused:
//! a tick sends at most one message per hold it expires.

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
    /// A creation that found the same pool there already: nothing changed.
    PoolExisted(PoolInfo),
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

/// The messages waiting for each peer's channel, in order, and how many peers have
/// `limit` or more waiting (full). Nothing is ever dropped: a full queue still takes
/// messages; it only tells the core to stop admitting work that makes more.
pub struct OutQueues<T> {
    queues: Vec<std::collections::VecDeque<T>>,
    limit: usize,
    full: usize,
}

impl<T> OutQueues<T> {
    /// Queues for `peers` peers, full at `limit` messages each.
    pub fn new(peers: usize, limit: usize) -> Self {
        OutQueues { queues: (0..peers).map(|_| Default::default()).collect(), limit, full: 0 }
    }
    /// Queues `msg` for `to`, whatever the queue holds.
    pub fn push(&mut self, to: usize, msg: T) {
        self.queues[to].push_back(msg);
        if self.queues[to].len() == self.limit {
            self.full += 1;
        }
    }
    /// The oldest message for `to`.
    pub fn pop(&mut self, to: usize) -> Option<T> {
        let msg = self.queues[to].pop_front()?;
        if self.queues[to].len() + 1 == self.limit {
            self.full -= 1;
        }
        Some(msg)
    }
    /// True if nothing waits for `to`.
    pub fn is_empty(&self, to: usize) -> bool {
        self.queues[to].is_empty()
    }
    /// Messages waiting for `to`.
    pub fn len(&self, to: usize) -> usize {
        self.queues[to].len()
    }
    /// True if fewer than the limit wait for `to`.
    pub fn has_room(&self, to: usize) -> bool {
        self.queues[to].len() < self.limit
    }
    /// True if some peer's queue is full.
    pub fn any_full(&self) -> bool {
        self.full > 0
    }
}

/// The sending side of one core's mesh: messages go straight into the peer's channel when
/// it has room and nothing is queued before them; otherwise they wait in a local queue
/// that a task per peer drains in order ([`MeshOut::drain`]). No task that sends ever
/// waits, so two cores sending to each other cannot deadlock, and the common case costs
/// no extra task switch. The queues are bounded by admission (see the module's header).
pub struct MeshOut {
    senders: glommio::channels::channel_mesh::Senders<MeshMsg>,
    queues: std::cell::RefCell<OutQueues<MeshMsg>>,
    /// The drain task holds a message it is waiting to send.
    sending: Vec<std::cell::Cell<bool>>,
    wakers: Vec<std::cell::RefCell<Option<std::task::Waker>>>,
}

impl MeshOut {
    /// Wraps the mesh senders of a core; a peer's queue is full at `queue_messages_max`
    /// messages (`mesh_queue_messages_max`).
    pub fn new(senders: glommio::channels::channel_mesh::Senders<MeshMsg>, queue_messages_max: u32) -> Self {
        let n = senders.nr_consumers();
        MeshOut {
            senders,
            queues: std::cell::RefCell::new(OutQueues::new(n, queue_messages_max as usize)),
            sending: (0..n).map(|_| Default::default()).collect(),
            wakers: (0..n).map(|_| Default::default()).collect(),
        }
    }

    /// True if the queue for core `to` is below its limit: work that sends to it may be
    /// admitted.
    pub fn has_room(&self, to: u16) -> bool {
        self.queues.borrow().has_room(to as usize)
    }

    /// True if the queue for some core is at its limit: work that may send to any core
    /// (a reserve, a release) is refused.
    pub fn congested(&self) -> bool {
        self.queues.borrow().any_full()
    }

    /// Sends `msg` to core `to`, in order with everything sent to it before.
    pub fn send(&self, to: u16, msg: MeshMsg) {
        let to = to as usize;
        let msg = if self.queues.borrow().is_empty(to) && !self.sending[to].get() {
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
        self.queues.borrow_mut().push(to, msg);
        if let Some(w) = self.wakers[to].borrow_mut().take() {
            w.wake();
        }
    }

    /// Sends the messages queued for core `to` as its channel makes room; runs forever.
    pub async fn drain(&self, to: u16) {
        let to = to as usize;
        loop {
            let msg = std::future::poll_fn(|cx| match self.queues.borrow_mut().pop(to) {
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

#[cfg(test)]
mod tests {
    use super::OutQueues;

    #[test]
    fn a_full_queue_refuses_new_work_but_keeps_every_message() {
        let mut q = OutQueues::new(3, 2);
        assert!(q.has_room(1) && !q.any_full());
        q.push(1, "grant 5 units");
        assert!(q.has_room(1) && !q.any_full());
        q.push(1, "return 3 units");
        assert!(!q.has_room(1) && q.any_full(), "full at the limit");
        assert!(q.has_room(2), "other peers keep their room");
        // Messages already produced are kept past the limit, never dropped.
        q.push(1, "return 1 unit");
        assert_eq!(q.len(1), 3);
        assert_eq!(q.pop(1), Some("grant 5 units"));
        assert!(!q.has_room(1) && q.any_full(), "still at the limit");
        assert_eq!(q.pop(1), Some("return 3 units"));
        assert!(q.has_room(1) && !q.any_full(), "room again below the limit");
        assert_eq!(q.pop(1), Some("return 1 unit"));
        assert_eq!(q.pop(1), None);
        assert!(q.is_empty(1) && !q.any_full());
        // Two full peers count twice.
        for to in [0, 2] {
            q.push(to, "a");
            q.push(to, "b");
        }
        q.pop(0);
        assert!(q.any_full(), "peer 2 is still full");
        q.pop(2);
        assert!(!q.any_full());
    }
}
