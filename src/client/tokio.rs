//! The async client on tokio (feature `tokio`): shard-aware routing, automatic batching,
//! per-request timeouts and safe retries.
//!
//! - **Routing.** The handshake gives the server's cores, their ports and its user hash. Each
//!   operation goes straight to its user's core ([`crate::protocol::home_core`]), over one
//!   connection per core; if a core's port cannot be reached, its operations go to the
//!   shared port, which forwards them (never mishandles them).
//! - **Batching.** Calls made while a connection's previous frames are being written are
//!   coalesced: a writer task takes everything queued for its core and sends it as
//!   multi-operation frames (one frame per kind of operation, up to the server's
//!   `batch_operations_max`), with at most `inflight_frames_max` frames unanswered.
//! - **Timeouts and retries.** A frame unanswered for [`Options::timeout`] after it was
//!   written ends its connection (checked four times per timeout by the connection's task,
//!   not by a timer per call); connecting and the handshake are bounded by it too. Calls whose connection ended are sent again, on a new connection, up to
//!   [`Options::retries`] times — with the same reservation id, so a retry can never reserve
//!   twice: the server answers a repeat with the first outcome and the REPEAT flag. A call
//!   that fails after an attempt may have reached the server reports `Timeout` or
//!   `Disconnected` (its outcome is unknown: send it again with the same id); `Io` means
//!   nothing was sent.
//!
//! ```no_run
//! # async fn run() -> Result<(), shardcap::client::Error> {
//! use shardcap::client::tokio::AsyncClient;
//! use shardcap::protocol::{ReserveOp, user_id_from_name};
//!
//! let client = AsyncClient::connect("127.0.0.1:7400").await?;
//! let pool = client.pool_id("demo").await?;
//! let op = ReserveOp { id: 42, user: user_id_from_name("alice"), pool, qty: 2, ttl_ms: 0, priority: 0 };
//! let held = client.reserve(op).await?;
//! println!("held until {} ms; {} left on that core", held.expires_at_ms, held.available);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Error;
use crate::protocol::control::{self, Hello};
use crate::protocol::{
    ConfirmOp, ExtendOp, HEADER_SIZE, Header, LookupOp, LookupResult, OpResult, Opcode, ReleaseOp, ReserveOp, Status,
    decode_header, home_core,
};

/// How a client behaves; [`Options::default`] suits most applications.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long one attempt of a call waits for its answer. Default 5 s.
    pub timeout: Duration,
    /// How many times a call is sent again after a timeout, a lost connection or `busy`.
    /// Default 3.
    pub retries: u32,
    /// Send each operation to its user's core (true), or everything to the address given
    /// (false: for a server behind a proxy). Default true.
    pub shard_aware: bool,
    /// Most operations in one frame; 0: the server's `batch_operations_max`. Default 0.
    pub batch_max: usize,
    /// Operations waiting for a connection's writer, at most (callers wait beyond).
    /// Default 65536.
    pub queue_max: usize,
    /// Frames a connection has unanswered at most (at most the server's
    /// `inflight_frames_max`). Calls made meanwhile gather into the next frames, so fewer
    /// frames in flight mean larger batches. Default 2.
    pub frames_in_flight: usize,
    /// Connections to each core; operations are spread over them by reservation id. One
    /// carries the most per frame; more help when a single connection's bandwidth or the
    /// server's per-connection pace is the limit. Default 1.
    pub connections_per_core: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            retries: 3,
            shard_aware: true,
            batch_max: 0,
            queue_max: 65536,
            frames_in_flight: 2,
            connections_per_core: 1,
        }
    }
}

/// A held, confirmed, released or extended reservation, as the server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The reservation's state after the operation.
    pub state: crate::protocol::ReservationState,
    /// For a held reservation, when it expires (ms since the Unix epoch); otherwise 0.
    pub expires_at_ms: u64,
    /// Units left in the pool's shard on the core that decided (a capacity hint).
    pub available: u64,
    /// The operation was a repeat of one already applied (a retry): nothing changed.
    pub repeat: bool,
}

impl Done {
    fn from_result(r: &OpResult) -> Result<Done, Error> {
        match Status::from_u8(r.status) {
            Some(Status::Ok) => Ok(Done {
                state: crate::protocol::ReservationState::from_u8(r.state)
                    .unwrap_or(crate::protocol::ReservationState::None),
                expires_at_ms: r.expires_at_ms,
                available: r.available,
                repeat: r.flags & crate::protocol::RESULT_FLAG_REPEAT != 0,
            }),
            Some(status) => Err(Error::Status { status, available: r.available }),
            None => Err(Error::Protocol(format!("unknown status {}", r.status))),
        }
    }
}

/// The longest request record (reserve, confirm and extend: 48 bytes).
const RECORD_MAX: usize = 48;

/// One operation on its way to a core's writer.
struct Req {
    opcode: Opcode,
    record: [u8; RECORD_MAX],
    reply: oneshot::Sender<Result<Answer, Error>>,
}

/// One operation's answer.
enum Answer {
    Op(OpResult),
    Lookup(LookupResult),
}

/// Where one operation's answer goes, with the pool of a reserve (for the capacity hint).
type Reply = (oneshot::Sender<Result<Answer, Error>>, u32);

/// A connection's frames waiting for their answers, by request id: the kind, when it was
/// sent, and each operation's reply.
type Waiting = Arc<Mutex<HashMap<u64, (Opcode, Instant, Vec<Reply>)>>>;

/// Capacity hints by pool: the units left on the core that answered last.
type Hints = Arc<Mutex<HashMap<u32, u64>>>;

/// The route to one core: its address, and the writer queue of its live connection.
struct Link {
    addr: SocketAddr,
    /// Read by every call (shared lock), written when the connection is replaced.
    queue: RwLock<Option<mpsc::Sender<Req>>>,
    /// One reconnection at a time.
    connecting: tokio::sync::Mutex<()>,
}

struct Inner {
    hello: Hello,
    shared: SocketAddr,
    /// `per_core` connections per core (one core's worth when not shard-aware).
    links: Vec<Link>,
    per_core: usize,
    shard_aware: bool,
    options: Options,
    /// Capacity hints by pool, kept by the connections' tasks.
    hints: Hints,
}

/// A shard-aware, batching client; cheap to clone, and every clone shares the connections.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

impl AsyncClient {
    /// Connects to a server's shared port with the default [`Options`].
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Result<AsyncClient, Error> {
        AsyncClient::connect_with(addr, Options::default()).await
    }

    /// Connects to a server's shared port: reads its topology from the handshake. The
    /// connections to the cores open on first use.
    pub async fn connect_with(addr: impl tokio::net::ToSocketAddrs, options: Options) -> Result<AsyncClient, Error> {
        let (stream, hello) = within(options.timeout, async {
            let mut stream = TcpStream::connect(addr).await.map_err(io)?;
            let hello = handshake(&mut stream).await?;
            Ok((stream, hello))
        })
        .await?;
        let shared = stream.peer_addr().map_err(io)?;
        let per_core = options.connections_per_core.max(1);
        // Routing by user needs the server's user hash; a server with another one is served
        // through the address given, which forwards.
        let shard_aware = options.shard_aware && hello.user_hash == control::USER_HASH_XXH3_JUMP;
        let cores = if shard_aware { hello.core_count.max(1) as usize } else { 1 };
        let links = (0..cores * per_core)
            .map(|i| {
                let port = if shard_aware { hello.core_ports.get(i / per_core).copied().unwrap_or(0) } else { 0 };
                Link::new(if port == 0 { shared } else { SocketAddr::new(shared.ip(), port) })
            })
            .collect();
        let inner = Inner { hello, shared, links, per_core, shard_aware, options, hints: Hints::default() };
        Ok(AsyncClient { inner: Arc::new(inner) })
    }

    /// The server's topology and limits, from the handshake.
    pub fn hello(&self) -> &Hello {
        &self.inner.hello
    }

    /// The id of the pool named `name` (asked once over a connection of its own).
    pub async fn pool_id(&self, name: &str) -> Result<u32, Error> {
        let shared = self.inner.shared;
        let name = name.to_string();
        let found = tokio::task::spawn_blocking(move || {
            let mut c = super::Client::connect(shared)?;
            c.pool_id(&name)
        })
        .await
        .map_err(|e| Error::Protocol(e.to_string()))?
        .map_err(Error::from)?;
        found.ok_or(Error::Status { status: Status::PoolNotFound, available: u64::MAX })
    }

    /// The last capacity hint seen for `pool`: units left on the core that answered last
    /// (`None` before any answer).
    pub fn capacity_hint(&self, pool: u32) -> Option<u64> {
        self.inner.hints.lock().expect("hints lock").get(&pool).copied()
    }

    /// Holds units for a user. `Err(Error::Status { status: SoldOut, .. })` and the like are
    /// the server's refusals.
    pub async fn reserve(&self, op: ReserveOp) -> Result<Done, Error> {
        self.op(op.user, Opcode::Reserve, |b| op.encode(b)).await
    }

    /// Makes a hold permanent.
    pub async fn confirm(&self, op: ConfirmOp) -> Result<Done, Error> {
        self.op(op.user, Opcode::Confirm, |b| op.encode(b)).await
    }

    /// Gives a hold back.
    pub async fn release(&self, op: ReleaseOp) -> Result<Done, Error> {
        self.op(op.user, Opcode::Release, |b| op.encode(b)).await
    }

    /// Moves a hold's expiry.
    pub async fn extend(&self, op: ExtendOp) -> Result<Done, Error> {
        self.op(op.user, Opcode::Extend, |b| op.encode(b)).await
    }

    /// Looks a reservation up (with its user: one core is asked).
    pub async fn lookup(&self, op: LookupOp) -> Result<LookupResult, Error> {
        let mut record = [0u8; RECORD_MAX];
        op.encode(&mut record[..LookupOp::SIZE]);
        match self.call(self.link_of(op.user, &record), Opcode::Lookup, record).await? {
            Answer::Lookup(r) => Ok(r),
            Answer::Op(_) => Err(Error::Protocol("an operation result for a lookup".into())),
        }
    }

    /// The connection for an operation: one of its user's core's, chosen by the low byte of
    /// the reservation id (the first bytes of every record).
    fn link_of(&self, user: u128, record: &[u8]) -> usize {
        let inner = &self.inner;
        let core = if inner.shard_aware { home_core(user, inner.hello.core_count) as usize } else { 0 };
        core * inner.per_core + record[0] as usize % inner.per_core
    }

    async fn op(&self, user: u128, opcode: Opcode, encode: impl FnOnce(&mut [u8])) -> Result<Done, Error> {
        let mut record = [0u8; RECORD_MAX];
        let size = opcode.request_record_size().expect("a batch opcode");
        encode(&mut record[..size]);
        match self.call(self.link_of(user, &record), opcode, record).await? {
            Answer::Op(r) => Done::from_result(&r),
            Answer::Lookup(_) => Err(Error::Protocol("a lookup result for an operation".into())),
        }
    }

    /// Sends one operation to connection `core` and waits for its answer; sends it
    /// again (same bytes, same reservation id) after a timeout, a lost connection or
    /// `busy`.
    async fn call(&self, core: usize, opcode: Opcode, record: [u8; RECORD_MAX]) -> Result<Answer, Error> {
        let options = &self.inner.options;
        let mut attempt = 0;
        // Once an attempt may have reached the server, the call's failure is never reported
        // as "nothing was sent" (`Io`), even if later attempts could not connect.
        let mut maybe_applied = false;
        loop {
            let error = match self.attempt(core, opcode, record).await {
                Ok(answer) => return Ok(answer),
                Err(Error::Io(m)) if maybe_applied => Error::Disconnected(m),
                Err(e @ Error::Io(_)) => e,
                Err(e @ (Error::Timeout | Error::Disconnected(_))) => {
                    maybe_applied = true;
                    e
                }
                Err(Error::Busy { retry_after_ms }) => {
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.max(1) as u64)).await;
                    Error::Busy { retry_after_ms }
                }
                Err(e) => return Err(e),
            };
            attempt += 1;
            if attempt > options.retries {
                return Err(error);
            }
        }
    }

    async fn attempt(&self, core: usize, opcode: Opcode, record: [u8; RECORD_MAX]) -> Result<Answer, Error> {
        let (reply, answer) = oneshot::channel();
        // The connection is up and its queue has room: no waiting, no copy of the sender.
        if let Err(req) = self.inner.links[core].try_send(Req { opcode, record, reply }) {
            let queue = self.queue(core).await?;
            if queue.send(req).await.is_err() {
                return Err(Error::Disconnected("the connection closed".into()));
            }
        }
        // The connection's task ends the connection when a frame is unanswered too long.
        match answer.await {
            Err(_) => Err(Error::Disconnected("the connection closed before the answer".into())),
            Ok(result) => result,
        }
    }

    /// The writer queue of core `core`'s connection, connecting (again) if it has none.
    async fn queue(&self, core: usize) -> Result<mpsc::Sender<Req>, Error> {
        let link = &self.inner.links[core];
        if let Some(q) = link.live() {
            return Ok(q);
        }
        let _one = link.connecting.lock().await;
        if let Some(q) = link.live() {
            return Ok(q);
        }
        let batch_max = match self.inner.options.batch_max {
            0 => self.inner.hello.batch_operations_max as usize,
            n => n.min(self.inner.hello.batch_operations_max as usize),
        };
        let limits = Limits {
            batch_max: batch_max.clamp(1, u16::MAX as usize),
            frame_bytes_max: self.inner.hello.frame_size_max_bytes as usize,
            inflight: (self.inner.hello.inflight_frames_max as usize).min(self.inner.options.frames_in_flight).max(1),
            queue: self.inner.options.queue_max.max(1),
            timeout: self.inner.options.timeout,
        };
        // The core's own port; the shared port (which forwards) if it cannot be reached.
        let shared = self.inner.shared;
        let q = within(self.inner.options.timeout, async {
            let stream = match TcpStream::connect(link.addr).await {
                Ok(s) => s,
                Err(_) if link.addr != shared => TcpStream::connect(shared).await.map_err(io)?,
                Err(e) => return Err(io(e)),
            };
            open(stream, limits, self.inner.hints.clone()).await
        })
        .await?;
        *link.queue.write().expect("link lock") = Some(q.clone());
        Ok(q)
    }
}

impl Link {
    fn new(addr: SocketAddr) -> Link {
        Link { addr, queue: RwLock::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    /// Queues `req` if the connection is up and its queue has room; gives it back if not.
    fn try_send(&self, req: Req) -> Result<(), Req> {
        match self.queue.read().expect("link lock").as_ref() {
            Some(q) => q.try_send(req).map_err(|e| match e {
                mpsc::error::TrySendError::Full(req) | mpsc::error::TrySendError::Closed(req) => req,
            }),
            None => Err(req),
        }
    }

    fn live(&self) -> Option<mpsc::Sender<Req>> {
        self.queue.read().expect("link lock").as_ref().filter(|q| !q.is_closed()).cloned()
    }
}

/// A failure to connect (nothing was sent).
fn io(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

/// Connecting and the handshake, bounded by the call timeout.
async fn within<T>(
    timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, connect).await.unwrap_or_else(|_| Err(Error::Io("connecting timed out".into())))
}

/// Sends the handshake and reads the server's answer.
async fn handshake(stream: &mut TcpStream) -> Result<Hello, Error> {
    stream.set_nodelay(true).map_err(io)?;
    let mut frame = Vec::with_capacity(HEADER_SIZE);
    Header::request(Opcode::Hello, 0, 0, 0).append_to(&mut frame);
    stream.write_all(&frame).await.map_err(io)?;
    let (header, body) = read_frame(stream).await?;
    if header.status != Status::Ok as u8 {
        return Err(Error::Protocol(format!("hello refused: status {}", header.status)));
    }
    let (status, payload) = control::split_prefix(&body).map_err(|_| Error::Protocol("bad hello answer".into()))?;
    if status != Status::Ok {
        return Err(Error::Protocol(format!("hello refused: {status}")));
    }
    Hello::decode(payload).map_err(|_| Error::Protocol("bad hello payload".into()))
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<(Header, Vec<u8>), Error> {
    let mut head = [0u8; HEADER_SIZE];
    stream.read_exact(&mut head).await.map_err(io)?;
    let header = decode_header(&head).map_err(|e| Error::Protocol(format!("bad answer header: {}", e.status)))?;
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).await.map_err(io)?;
    Ok((header, body))
}

/// The bounds of one connection, from the server's handshake.
#[derive(Clone, Copy)]
struct Limits {
    batch_max: usize,
    frame_bytes_max: usize,
    inflight: usize,
    queue: usize,
    timeout: Duration,
}

/// Opens a connection: a handshake, then one task that writes what is queued as batch
/// frames and reads the answers, until either side fails. Answers the queue.
async fn open(mut stream: TcpStream, limits: Limits, hints: Hints) -> Result<mpsc::Sender<Req>, Error> {
    handshake(&mut stream).await?;
    let (tx, rx) = mpsc::channel(limits.queue);
    tokio::spawn(async move {
        let (read, write) = stream.into_split();
        let waiting: Waiting = Arc::default();
        let frames = Arc::new(Semaphore::new(limits.inflight));
        let failure = tokio::select! {
            e = write_frames(rx, write, waiting.clone(), frames.clone(), limits) => e,
            e = read_answers(read, waiting.clone(), frames, hints) => e,
            e = watch_timeouts(waiting.clone(), limits.timeout) => e,
        };
        // Everything unanswered learns the connection is gone; callers send it again.
        for (_, (_, _, replies)) in waiting.lock().expect("waiting lock").drain() {
            for (reply, _) in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
    });
    Ok(tx)
}

/// Takes everything queued, as frames of up to `batch_max` operations of one kind.
async fn write_frames(
    mut rx: mpsc::Receiver<Req>,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    waiting: Waiting,
    frames: Arc<Semaphore>,
    limits: Limits,
) -> Error {
    let mut next_id = 1u64;
    let mut taken: Vec<Req> = Vec::with_capacity(limits.batch_max);
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        taken.clear();
        if rx.recv_many(&mut taken, limits.batch_max * 4).await == 0 {
            return Error::Disconnected("the client is gone".into());
        }
        // Calls woken by the last answers are still queuing theirs: let them run once, so
        // that they leave in this frame rather than wait a round trip for the next.
        if taken.len() < limits.batch_max {
            tokio::task::yield_now().await;
            while taken.len() < limits.batch_max * 4 {
                match rx.try_recv() {
                    Ok(r) => taken.push(r),
                    Err(_) => break,
                }
            }
        }
        out.clear();
        // One frame per kind of operation and per `batch_max`, kinds in the order they came
        // (usually there is one: the whole batch is the group).
        while let Some(kind) = taken.first().map(|r| r.opcode) {
            let mut group = if taken.iter().all(|r| r.opcode == kind) {
                std::mem::take(&mut taken)
            } else {
                let (group, rest) = std::mem::take(&mut taken).into_iter().partition(|r| r.opcode == kind);
                taken = rest;
                group
            };
            let size = kind.request_record_size().expect("a batch opcode");
            let per_frame = limits.batch_max.min((limits.frame_bytes_max - HEADER_SIZE) / size).max(1);
            while !group.is_empty() {
                let n = group.len().min(per_frame);
                let permit = match frames.try_acquire() {
                    Ok(permit) => permit,
                    Err(_) => {
                        // The frames already encoded must leave before waiting: their answers
                        // may be the ones that give the permits back.
                        if let Err(e) = write.write_all(&out).await {
                            return Error::Disconnected(e.to_string());
                        }
                        out.clear();
                        match frames.acquire().await {
                            Ok(permit) => permit,
                            Err(_) => return Error::Disconnected("the connection closed".into()),
                        }
                    }
                };
                permit.forget(); // given back when the answer arrives
                let id = next_id;
                next_id += 1;
                Header::request(kind, id, n as u16, (n * size) as u32).append_to(&mut out);
                for r in &group[..n] {
                    out.extend_from_slice(&r.record[..size]);
                }
                // A reserve's pool, for the capacity hint its answer carries.
                let pool_of = |r: &Req| match kind {
                    Opcode::Reserve => u32::from_le_bytes(r.record[32..36].try_into().expect("4 bytes")),
                    _ => 0,
                };
                let replies = group
                    .drain(..n)
                    .map(|r| {
                        let pool = pool_of(&r);
                        (r.reply, pool)
                    })
                    .collect();
                waiting.lock().expect("waiting lock").insert(id, (kind, Instant::now(), replies));
            }
            // Frames of this kind leave before waiting for permits of the next.
            if let Err(e) = write.write_all(&out).await {
                return Error::Disconnected(e.to_string());
            }
            out.clear();
            if taken.is_empty() {
                taken = group; // its capacity serves the next batch
            }
        }
    }
}

/// Ends the connection when a frame has waited longer than `timeout` for its answer.
async fn watch_timeouts(waiting: Waiting, timeout: Duration) -> Error {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let late = waiting.lock().expect("waiting lock").values().any(|(_, sent, _)| now - *sent > timeout);
        if late {
            return Error::Timeout;
        }
    }
}

/// Reads answers and hands each operation its result.
async fn read_answers(
    mut read: tokio::net::tcp::OwnedReadHalf,
    waiting: Waiting,
    frames: Arc<Semaphore>,
    hints: Hints,
) -> Error {
    let mut read = tokio::io::BufReader::with_capacity(64 << 10, &mut read);
    loop {
        let (header, body) = match read_frame(&mut read).await {
            Ok(frame) => frame,
            Err(e) => return Error::Disconnected(e.to_string()),
        };
        if header.opcode == Opcode::Error as u8 {
            // The server refused one frame and closes the connection: that frame's calls
            // fail; the others are sent again on a new connection.
            let status = Status::from_u8(header.status).unwrap_or(Status::InternalError);
            if let Some((_, _, replies)) = waiting.lock().expect("waiting lock").remove(&header.request_id) {
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Protocol(format!("the server refused the frame: {status}"))));
                }
            }
            return Error::Disconnected(format!("the server closed the connection: {status}"));
        }
        let Some((kind, _, replies)) = waiting.lock().expect("waiting lock").remove(&header.request_id) else {
            continue;
        };
        frames.add_permits(1);
        if header.status == Status::Busy as u8 {
            for (reply, _) in replies {
                let _ = reply.send(Err(Error::Busy { retry_after_ms: header.retry_after_ms }));
            }
            continue;
        }
        let size = kind.response_record_size().expect("a batch opcode");
        if header.status != Status::Ok as u8 || body.len() != replies.len() * size {
            return Error::Protocol(format!("a frame answered with status {} and {} bytes", header.status, body.len()));
        }
        if kind == Opcode::Reserve {
            // One lock per frame: the last hint of each pool stands.
            let mut hints = hints.lock().expect("hints lock");
            for ((_, pool), rec) in replies.iter().zip(body.chunks_exact(size)) {
                let available = OpResult::decode(rec).available;
                if available != u64::MAX {
                    hints.insert(*pool, available);
                }
            }
        }
        for ((reply, _), rec) in replies.into_iter().zip(body.chunks_exact(size)) {
            let answer = if kind == Opcode::Lookup {
                Answer::Lookup(LookupResult::decode(rec))
            } else {
                Answer::Op(OpResult::decode(rec))
            };
            let _ = reply.send(Ok(answer));
        }
    }
}
