//! The clients of the binary protocol.
//!
//! - [`tokio::AsyncClient`] (feature `tokio`): the one applications use. Shard-aware
//!   routing, calls coalesced into multi-operation frames, timeouts, retries with the same
//!   reservation id, capacity hints. [`blocking::BlockingClient`] is its blocking face and
//!   [`fallback::Fallback`] spreads reserves over several servers.
//! - [`Client`], below: a low-level blocking client for one connection, with pipelining:
//!   send many frames, then collect their responses by request id. It needs only `std`
//!   (no glommio, no async runtime), so applications can use it with every feature off.
//!
//! Encoding and decoding live in [`crate::protocol`], free of I/O, shared by all of them.
//!
//! ```no_run
//! use shardcap::client::Client;
//! use shardcap::protocol::{ReserveOp, Status, user_id_from_name};
//!
//! let mut client = Client::connect("127.0.0.1:7400")?;
//! let pool = client.pool_id("demo")?.expect("the demo pool exists");
//! let op = ReserveOp { id: 42, user: user_id_from_name("alice"), pool, qty: 2, ttl_ms: 0, priority: 0 };
//! let result = client.reserve(&[op])?[0];
//! assert_eq!(result.status, Status::Ok as u8);
//! # Ok::<(), shardcap::client::ClientError>(())
//! ```

#![warn(missing_docs)]

#[cfg(feature = "tokio")]
pub mod blocking;
#[cfg(feature = "tokio")]
pub mod fallback;
#[cfg(feature = "tokio")]
pub mod tokio;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::protocol::control::{
    self, CoreStats, Hello, PoolCreate, PoolInfo, PoolListRequest, PoolRef, PoolRename, PoolRules, PoolSetActive,
    PoolSetCapacity, PoolSetDescription, PoolSetRules, PoolStatus, UserActivity, UserActivityRequest,
};
use crate::protocol::{
    BatchOp, ConfirmOp, ExtendOp, FLAG_MORE, HEADER_SIZE, Header, LookupOp, LookupResult, OpResult, Opcode, ReleaseOp,
    ReserveOp, Status, decode_batch_results, decode_header, encode_batch,
};

/// Why a call failed (domain outcomes such as `sold_out` are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the frame and closed the connection.
    #[error("server refused the frame: {status}: {message}")]
    Refused {
        /// The frame-level status.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The server was too busy to take the frame; retry after the hint.
    #[error("server busy; retry after {retry_after_ms} ms")]
    Busy {
        /// How long to wait, in ms.
        retry_after_ms: u32,
    },
    /// The server answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request cannot be encoded (a text too long for its length field); nothing was
    /// sent.
    #[error("request not sent: {0}")]
    Invalid(#[from] control::TextTooLong),
}

/// Why a call of the shard-aware clients failed: the server's refusal of the operation
/// (one of the protocol's statuses), or what went wrong on the way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server refused the operation, e.g. `sold_out`, `expired`, `not_found`;
    /// `available` is the capacity hint that came with it (`u64::MAX`: none).
    #[error("refused: {status}")]
    Status {
        /// The protocol status.
        status: Status,
        /// Units left on the core that answered.
        available: u64,
    },
    /// No answer within the timeout, after every retry; the operation may have been applied
    /// (send it again with the same id to learn its outcome).
    #[error("no answer within the timeout")]
    Timeout,
    /// The connection was lost before the answer, after every retry; the operation may have
    /// been applied.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The server stayed too busy, after every retry.
    #[error("server busy; retry after {retry_after_ms} ms")]
    Busy {
        /// The server's hint, in ms.
        retry_after_ms: u32,
    },
    /// Connecting failed: the operation was not sent.
    #[error("i/o error: {0}")]
    Io(String),
    /// The server answered something this client does not understand, or refused a frame.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The protocol status of a refusal.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        match e {
            ClientError::Io(e) => Error::Io(e.to_string()),
            ClientError::Refused { status, message } => Error::Protocol(format!("{status}: {message}")),
            ClientError::Busy { retry_after_ms } => Error::Busy { retry_after_ms },
            ClientError::Protocol(m) => Error::Protocol(m),
            ClientError::Invalid(e) => Error::Protocol(format!("request not sent: {e}")),
        }
    }
}

/// A response frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Its header.
    pub header: Header,
    /// Its body.
    pub body: Vec<u8>,
}

/// A connection to a shardcap server.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    wbuf: Vec<u8>,
    next_request_id: u64,
    stash: HashMap<u64, Response>,
    hello: Hello,
}

impl Client {
    /// Connects and performs the handshake.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let placeholder = Hello {
            protocol_version: 0,
            user_hash: 0,
            core_count: 0,
            this_core: 0,
            shared_port: 0,
            frame_size_max_bytes: 0,
            batch_operations_max: 0,
            inflight_frames_max: 0,
            core_ports: Vec::new(),
        };
        let mut client = Client {
            reader: BufReader::with_capacity(64 << 10, stream),
            writer,
            wbuf: Vec::new(),
            next_request_id: 1,
            stash: HashMap::new(),
            hello: placeholder,
        };
        let response = client.call(Opcode::Hello, 0, &[])?;
        let payload = control_payload(&response)?.map_err(|s| ClientError::Protocol(format!("hello refused: {s}")))?;
        client.hello = Hello::decode(payload).map_err(|_| ClientError::Protocol("bad hello payload".into()))?;
        Ok(client)
    }

    /// The server's topology and limits, from the handshake.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Sets a read timeout for responses (`None`: wait forever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(timeout)?;
        Ok(())
    }

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Queues a frame; it is sent by [`Self::flush`] or when a response is awaited.
    /// Answers its request id.
    pub fn send_frame(&mut self, opcode: Opcode, op_count: u16, body: &[u8]) -> u64 {
        let id = self.take_request_id();
        Header::request(opcode, id, op_count, body.len() as u32).append_to(&mut self.wbuf);
        self.wbuf.extend_from_slice(body);
        id
    }

    /// Queues a batch of operations of one kind; answers its request id.
    pub fn send_batch<T: BatchOp>(&mut self, ops: &[T]) -> u64 {
        let id = self.take_request_id();
        encode_batch(id, ops, &mut self.wbuf);
        id
    }

    /// Queues raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.writer.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads the next response frame, whatever its request id.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        let mut head = [0u8; HEADER_SIZE];
        self.reader.read_exact(&mut head)?;
        let header =
            decode_header(&head).map_err(|e| ClientError::Protocol(format!("bad response header: {}", e.status)))?;
        let mut body = vec![0u8; header.body_len as usize];
        self.reader.read_exact(&mut body)?;
        Ok(Response { header, body })
    }

    /// Flushes, then waits for the response to `request_id` (keeping others for later).
    /// Frame-level refusals become errors.
    pub fn wait(&mut self, request_id: u64) -> Result<Response, ClientError> {
        self.flush()?;
        let response = match self.stash.remove(&request_id) {
            Some(r) => r,
            None => loop {
                let r = self.recv()?;
                if r.header.opcode == Opcode::Error as u8 {
                    return Err(refusal(&r));
                }
                if r.header.request_id == request_id {
                    break r;
                }
                self.stash.insert(r.header.request_id, r);
            },
        };
        if response.header.status == Status::Busy as u8 {
            return Err(ClientError::Busy { retry_after_ms: response.header.retry_after_ms });
        }
        if response.header.status != Status::Ok as u8 {
            return Err(refusal(&response));
        }
        Ok(response)
    }

    /// Sends one frame and waits for its response.
    pub fn call(&mut self, opcode: Opcode, op_count: u16, body: &[u8]) -> Result<Response, ClientError> {
        let id = self.send_frame(opcode, op_count, body);
        self.wait(id)
    }

    /// Waits for the response to a batch sent with [`Self::send_batch`] and decodes it.
    pub fn wait_batch<T: BatchOp>(&mut self, request_id: u64) -> Result<Vec<T::Result>, ClientError> {
        let r = self.wait(request_id)?;
        decode_batch_results::<T>(r.header.op_count, &r.body)
            .ok_or_else(|| ClientError::Protocol("batch response of the wrong size".into()))
    }

    /// Sends a batch and waits for its results, in order.
    pub fn batch<T: BatchOp>(&mut self, ops: &[T]) -> Result<Vec<T::Result>, ClientError> {
        let id = self.send_batch(ops);
        self.wait_batch::<T>(id)
    }

    /// Reserves (one result per operation, in order).
    pub fn reserve(&mut self, ops: &[ReserveOp]) -> Result<Vec<OpResult>, ClientError> {
        self.batch(ops)
    }
    /// Confirms.
    pub fn confirm(&mut self, ops: &[ConfirmOp]) -> Result<Vec<OpResult>, ClientError> {
        self.batch(ops)
    }
    /// Releases.
    pub fn release(&mut self, ops: &[ReleaseOp]) -> Result<Vec<OpResult>, ClientError> {
        self.batch(ops)
    }
    /// Extends.
    pub fn extend(&mut self, ops: &[ExtendOp]) -> Result<Vec<OpResult>, ClientError> {
        self.batch(ops)
    }
    /// Looks reservations up (a user of 0 asks every core).
    pub fn lookup(&mut self, ops: &[LookupOp]) -> Result<Vec<LookupResult>, ClientError> {
        self.batch(ops)
    }

    /// A round trip that does nothing.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.call(Opcode::Ping, 0, &[]).map(|_| ())
    }

    /// Shows the admin token (`admin.token`) on this connection: once it answers `Ok(Ok)`,
    /// the connection may change pools (create, activate, rules, resize, rename,
    /// describe). A wrong token answers `Err(Status::Unauthorized)` and takes the right
    /// away again. A server without a token (on loopback) answers `ok` to any token.
    pub fn authenticate(&mut self, token: &str) -> Result<Result<(), Status>, ClientError> {
        let mut body = Vec::new();
        control::Auth { token: token.as_bytes().to_vec() }.encode(&mut body).ok_or_else(|| {
            ClientError::Protocol(format!("a token has at most {} bytes", control::AUTH_TOKEN_MAX_BYTES))
        })?;
        let r = self.call(Opcode::Auth, 1, &body)?;
        Ok(control_payload(&r)?.map(|_| ()))
    }

    /// Creates a pool.
    pub fn pool_create(&mut self, req: &PoolCreate) -> Result<Result<PoolInfo, Status>, ClientError> {
        let mut body = Vec::new();
        req.encode(&mut body)?;
        let r = self.call(Opcode::PoolCreate, 1, &body)?;
        pool_info_answer(&r)
    }

    /// Activates or deactivates a pool.
    pub fn pool_set_active(&mut self, pool: u32, active: bool) -> Result<Result<PoolInfo, Status>, ClientError> {
        self.pool_change(Opcode::PoolSetActive, |body| {
            PoolSetActive { pool, active }.encode(body);
            Ok(())
        })
    }

    /// Replaces a pool's rules; once this answers, every core applies them.
    pub fn pool_set_rules(&mut self, pool: u32, rules: PoolRules) -> Result<Result<PoolInfo, Status>, ClientError> {
        self.pool_change(Opcode::PoolSetRules, |body| {
            PoolSetRules { pool, rules }.encode(body);
            Ok(())
        })
    }

    /// Changes a pool's capacity. A larger one is there at once; a smaller one is taken
    /// from the free units (gathered from every core first if need be) and refused with
    /// `capacity_in_use` if it would take units that are held, confirmed, on their way to
    /// a reserve, or kept for priority reserves. Once this answers, every core knows the
    /// new capacity.
    pub fn pool_set_capacity(&mut self, pool: u32, capacity: u64) -> Result<Result<PoolInfo, Status>, ClientError> {
        self.pool_change(Opcode::PoolSetCapacity, |body| {
            PoolSetCapacity { pool, capacity }.encode(body);
            Ok(())
        })
    }

    /// Renames a pool (`pool_exists` if another pool has the name); once this answers,
    /// every core knows the pool by its new name only.
    pub fn pool_rename(&mut self, pool: u32, name: &str) -> Result<Result<PoolInfo, Status>, ClientError> {
        self.pool_change(Opcode::PoolRename, |body| Ok(PoolRename { pool, name: name.into() }.encode(body)?))
    }

    /// Replaces a pool's description (up to 128 bytes of text without control characters;
    /// empty clears it); once this answers, every core reports it.
    pub fn pool_set_description(
        &mut self,
        pool: u32,
        description: &str,
    ) -> Result<Result<PoolInfo, Status>, ClientError> {
        self.pool_change(Opcode::PoolSetDescription, |body| {
            Ok(PoolSetDescription { pool, description: description.into() }.encode(body)?)
        })
    }

    /// Sends one pool change (a body `encode` writes, unless it refuses the request) and
    /// reads the pool it answers.
    fn pool_change(
        &mut self,
        opcode: Opcode,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), ClientError>,
    ) -> Result<Result<PoolInfo, Status>, ClientError> {
        let mut body = Vec::new();
        encode(&mut body)?;
        let r = self.call(opcode, 1, &body)?;
        pool_info_answer(&r)
    }

    /// A user's activity in `req.pool` (0: every pool), by pool id: pools whose rules keep
    /// per-user state (a limit, a rate, or tracking) and where the user has an entry, each
    /// with up to `req.recent` recent events (of reservations in `req.state`; 0: any).
    pub fn user_activity(
        &mut self,
        req: UserActivityRequest,
    ) -> Result<Result<Vec<UserActivity>, Status>, ClientError> {
        let mut body = Vec::new();
        req.encode(&mut body);
        let r = self.call(Opcode::UserActivity, 1, &body)?;
        Ok(match control_payload(&r)? {
            Ok(payload) => {
                Ok(UserActivity::decode_list(payload).map_err(|_| ClientError::Protocol("bad user activity".into()))?)
            }
            Err(status) => Err(status),
        })
    }

    /// A pool's status, in total and per core, by id or (with id 0) by name.
    pub fn pool_status(&mut self, pool: &PoolRef) -> Result<Result<PoolStatus, Status>, ClientError> {
        let mut body = Vec::new();
        pool.encode(&mut body)?;
        let r = self.call(Opcode::PoolStatus, 1, &body)?;
        Ok(match control_payload(&r)? {
            Ok(payload) => {
                Ok(PoolStatus::decode(payload).map_err(|_| ClientError::Protocol("bad pool status".into()))?)
            }
            Err(status) => Err(status),
        })
    }

    /// The id of the pool named `name`, if any.
    pub fn pool_id(&mut self, name: &str) -> Result<Option<u32>, ClientError> {
        Ok(self.pool_list()?.into_iter().find(|p| p.name == name).map(|p| p.id))
    }

    /// Every pool, fetched page by page.
    pub fn pool_list(&mut self) -> Result<Vec<PoolInfo>, ClientError> {
        let mut all = Vec::new();
        let mut start_after = 0;
        loop {
            let mut body = Vec::new();
            PoolListRequest { start_after, limit: 0 }.encode(&mut body);
            let r = self.call(Opcode::PoolList, 1, &body)?;
            let mut payload =
                control_payload(&r)?.map_err(|s| ClientError::Protocol(format!("pool list refused: {s}")))?;
            for _ in 0..r.header.op_count {
                let (info, used) =
                    PoolInfo::decode(payload).map_err(|_| ClientError::Protocol("bad pool entry".into()))?;
                payload = &payload[used..];
                start_after = info.id;
                all.push(info);
            }
            if r.header.flags & FLAG_MORE == 0 {
                return Ok(all);
            }
        }
    }

    /// Every core's counters.
    pub fn server_stats(&mut self) -> Result<Vec<CoreStats>, ClientError> {
        let r = self.call(Opcode::ServerStats, 0, &[])?;
        let payload = control_payload(&r)?.map_err(|s| ClientError::Protocol(format!("stats refused: {s}")))?;
        control::decode_stats(payload).ok_or_else(|| ClientError::Protocol("bad stats payload".into()))
    }
}

fn refusal(r: &Response) -> ClientError {
    let status = Status::from_u8(r.header.status).unwrap_or(Status::InternalError);
    ClientError::Refused { status, message: String::from_utf8_lossy(&r.body).into_owned() }
}

/// Splits a control response into its status and payload.
fn control_payload(r: &Response) -> Result<Result<&[u8], Status>, ClientError> {
    let (status, payload) = control::split_prefix(&r.body)
        .map_err(|_| ClientError::Protocol("control response without a prefix".into()))?;
    Ok(if status == Status::Ok { Ok(payload) } else { Err(status) })
}

fn pool_info_answer(r: &Response) -> Result<Result<PoolInfo, Status>, ClientError> {
    Ok(match control_payload(r)? {
        Ok(payload) => Ok(PoolInfo::decode(payload).map_err(|_| ClientError::Protocol("bad pool info".into()))?.0),
        Err(status) => Err(status),
    })
}
