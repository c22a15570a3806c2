//! One client connection: read whatever bytes have arrived, answer every whole frame in
//! them, write all the answers with one write.
//!
//! How it works: operations of users homed on this core are applied inline and their
//! results written straight into the output buffer, so a pipelined batch costs one read
//! and one write whatever its size. Operations of users homed elsewhere are collected per
//! core and sent in one message per core per read (the proxy hop); reserves that wait for
//! borrowed capacity and control requests that ask every core complete later. A frame
//! with such parts waits in a pending slot until its last result arrives through the
//! connection's mailbox; frames are answered when complete, so responses may overtake one
//! another and clients match them by request id.
//!
//! A partial frame waits for the rest of its bytes, for at most `frame_read_timeout_ms`
//! from its first byte; then the connection is closed. A frame that breaks the protocol
//! gets an error frame with its status, after which the connection is closed; other
//! connections are not affected.
//!
//! What a connection costs: buffers only while it has bytes to handle. A connection that
//! waits for input gives its read and output buffers back to a small per-core pool (a
//! partial frame of up to `PARTIAL_KEEP_BYTES` is kept in a buffer of its own size), so an
//! idle connection holds none. Answers wait in the output buffer up to
//! `output_buffer_max_bytes`: past it, no further frame is read until the answers are
//! written, so a client that sends faster than it reads is slowed down, and a write that
//! makes no progress for `write_stall_timeout_ms` (the client takes none of its answers)
//! closes the connection.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::admin::metrics::{BusyReason, Closed, OpKind};
use crate::protocol::control::{
    self, PoolCreate, PoolInfo, PoolListRequest, PoolRef, PoolRename, PoolSetActive, PoolSetCapacity,
    PoolSetDescription, PoolSetRules, UserActivity, UserActivityRequest, put_prefix,
};
use crate::protocol::ops::ReservedNotZero;
use crate::protocol::{
    ConfirmOp, ExtendOp, FLAG_MORE, FrameLimits, HEADER_SIZE, Header, LookupOp, Opcode, ReleaseOp, ReserveOp, Status,
    append_error_frame, next_frame,
};
use crate::runtime::core::{ConnEvent, ConnShared, CoreRuntime};
use crate::runtime::mesh::{FrameRef, Op, OpOutput, RpcReq, RpcResp};
use crate::shard::Command;

const READ_BUFFER_BYTES: usize = 64 << 10;
/// A waiting connection's partial frame up to this size moves to a buffer of its own size,
/// so that the read buffer can go back to the pool.
const PARTIAL_KEEP_BYTES: usize = 4 << 10;
/// Idle buffers each core keeps for the next connection with bytes to handle (of each kind:
/// read and output); more are freed. At most 16 × (64 + 128) KiB per core.
const POOLED_BUFFERS_MAX: usize = 16;
/// Output buffers grown beyond this are freed rather than pooled.
const POOLED_OUT_CAPACITY_MAX: usize = 2 * READ_BUFFER_BYTES;

thread_local! {
    /// Read buffers (of `READ_BUFFER_BYTES`) of this core's connections that wait for input.
    static READ_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Empty output buffers of this core's connections that wait for input.
    static OUT_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer of `READ_BUFFER_BYTES` holding `keep` at its front.
fn take_read_buffer(keep: &[u8]) -> Vec<u8> {
    let mut buf = READ_BUFFERS.with_borrow_mut(|pool| pool.pop()).unwrap_or_else(|| vec![0; READ_BUFFER_BYTES]);
    buf[..keep.len()].copy_from_slice(keep);
    buf
}

/// Gives a read buffer back (one grown for a large frame is freed).
fn give_read_buffer(buf: Vec<u8>) {
    if buf.len() == READ_BUFFER_BYTES {
        READ_BUFFERS.with_borrow_mut(|pool| {
            if pool.len() < POOLED_BUFFERS_MAX {
                pool.push(buf);
            }
        });
    }
}

/// An empty output buffer.
fn take_out_buffer() -> Vec<u8> {
    OUT_BUFFERS.with_borrow_mut(|pool| pool.pop()).unwrap_or_else(|| Vec::with_capacity(READ_BUFFER_BYTES))
}

/// Gives an empty output buffer back (a large one is freed).
fn give_out_buffer(buf: Vec<u8>) {
    debug_assert!(buf.is_empty());
    if buf.capacity() <= POOLED_OUT_CAPACITY_MAX {
        OUT_BUFFERS.with_borrow_mut(|pool| {
            if pool.len() < POOLED_BUFFERS_MAX {
                pool.push(buf);
            }
        });
    }
}
/// Answers ready to write are not held back for forwarded ones beyond this size.
const HOLD_BACK_MAX_BYTES: usize = 64 << 10;

/// A frame waiting for results from other cores or parked reserves.
struct PendingFrame {
    /// Header and result records, filled in as results arrive.
    bytes: Vec<u8>,
    /// Size of one result record.
    record_size: usize,
    /// Results still missing.
    remaining: u32,
    /// For a frame of reserves or confirms: which, when its read started, and how many.
    timed: Option<Timed>,
}

/// Reserve or confirm answers whose server-side latency is recorded when they are written.
#[derive(Clone, Copy)]
struct Timed {
    op: OpKind,
    since: Instant,
    count: u32,
}

enum Wake {
    Data(usize),
    /// Whole frames left unread while the output buffer was full.
    Input,
    Eof,
    Events,
    Failed,
}

/// Serves one accepted connection until the client closes it or breaks the protocol.
/// `opened` is its registration ([`CoreRuntime::open_connection`], taken when it was
/// accepted); `None` (the core is full) answers `busy` and closes it.
pub async fn serve(core: Rc<CoreRuntime>, mut stream: TcpStream, opened: Option<(u64, Rc<ConnShared>)>) {
    let _ = stream.set_nodelay(true);
    // A write that makes no progress this long (the client takes none of its answers) fails.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(core.config.limits.write_stall_timeout_ms)));
    let Some((id, shared)) = opened else {
        core.metrics.count_busy(BusyReason::Connections, 1);
        let mut out = Vec::new();
        let mut h = Header::response(Opcode::Error as u8, 0, Status::Busy, 0, 0);
        h.retry_after_ms = core.config.limits.busy_retry_after_ms;
        let message = b"connections_max_per_core reached";
        h.body_len = message.len() as u32;
        h.append_to(&mut out);
        out.extend_from_slice(message);
        let _ = stream.write_all(&out).await;
        let _ = stream.close().await;
        return;
    };
    let limits = &core.config.limits;
    let mut conn = Connection {
        limits: FrameLimits {
            frame_size_max_bytes: limits.frame_size_max_bytes,
            batch_operations_max: limits.batch_operations_max,
        },
        inflight_max: limits.inflight_frames_max_per_connection,
        out_max: limits.output_buffer_max_bytes as usize,
        frame_read_timeout: Duration::from_millis(limits.frame_read_timeout_ms),
        core: core.clone(),
        id,
        shared,
        inbuf: Vec::new(),
        start: 0,
        end: 0,
        input_waiting: false,
        partial_since: None,
        out: Vec::new(),
        pending: Vec::new(),
        free: Vec::new(),
        forwards: (0..core.cores).map(|_| Vec::new()).collect(),
        events: Vec::new(),
        eof: false,
        closing: false,
        held_back: false,
        read_at: Instant::now(),
        timed: Vec::new(),
        operator: core.config.control_open(),
    };
    let how = conn.run(&mut stream).await;
    // Counted before the client can see the end of the connection.
    core.metrics.count_closed(how);
    core.close_connection(id);
    conn.release_buffers();
    let _ = stream.close().await;
}

struct Connection {
    core: Rc<CoreRuntime>,
    limits: FrameLimits,
    inflight_max: u32,
    /// Past this many bytes of answers, no further frame is read before they are written.
    out_max: usize,
    /// How long a partial frame may wait for the rest of its bytes.
    frame_read_timeout: Duration,
    id: u64,
    shared: Rc<ConnShared>,
    /// Read buffer: empty while the connection waits with no partial frame.
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Whole frames wait in `inbuf`, left while the output buffer was full.
    input_waiting: bool,
    /// When the first bytes of the partial frame in `inbuf` arrived.
    partial_since: Option<Instant>,
    /// Answers to write: no capacity while the connection waits with nothing to write.
    out: Vec<u8>,
    pending: Vec<Option<PendingFrame>>,
    free: Vec<u32>,
    forwards: Vec<Vec<(FrameRef, Op)>>,
    events: Vec<ConnEvent>,
    eof: bool,
    closing: bool,
    /// The previous turn held its answers back for forwarded ones.
    held_back: bool,
    /// When the last read returned.
    read_at: Instant,
    /// Reserve and confirm answers in `out`, timed when written.
    timed: Vec<Timed>,
    /// The connection may change pools: it showed the admin token, or control is open.
    operator: bool,
}

impl Connection {
    fn inflight(&self) -> u32 {
        (self.pending.len() - self.free.len()) as u32
    }

    /// Serves until the client closes the connection (or breaks the protocol, or a read or
    /// write fails).
    async fn run(&mut self, stream: &mut TcpStream) -> Closed {
        loop {
            if self.eof && self.inflight() == 0 && !self.input_waiting {
                return Closed::Client;
            }
            let wake = if self.input_waiting {
                Wake::Input
            } else {
                // A partial frame must be complete within the timeout from its first byte.
                let timeout = self.partial_since.map(|since| {
                    (since + self.frame_read_timeout)
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1))
                });
                let _ = stream.set_read_timeout(timeout);
                let shared = &self.shared;
                let eof = self.eof;
                let (inbuf, end, out) = (&mut self.inbuf, self.end, &mut self.out);
                poll_fn(|cx| {
                    if shared.has_events() {
                        return Poll::Ready(Wake::Events);
                    }
                    shared.set_waker(cx.waker());
                    if eof {
                        park_buffers(inbuf, end, out);
                        return Poll::Pending;
                    }
                    if inbuf.len() < READ_BUFFER_BYTES {
                        *inbuf = take_read_buffer(&inbuf[..end]);
                    }
                    match Pin::new(&mut *stream).poll_read(cx, &mut inbuf[end..]) {
                        Poll::Ready(Ok(0)) => Poll::Ready(Wake::Eof),
                        Poll::Ready(Ok(n)) => Poll::Ready(Wake::Data(n)),
                        Poll::Ready(Err(_)) => Poll::Ready(Wake::Failed),
                        Poll::Pending => {
                            park_buffers(inbuf, end, out);
                            Poll::Pending
                        }
                    }
                })
                .await
            };
            if self.out.capacity() == 0 {
                self.out = take_out_buffer();
            }
            match wake {
                Wake::Data(n) => {
                    self.end += n;
                    self.read_at = Instant::now();
                    self.process_input();
                }
                Wake::Input => self.process_input(),
                Wake::Eof => self.eof = true,
                Wake::Events => {}
                Wake::Failed => return Closed::Error,
            }
            let forwarded = self.send_forwards();
            self.core.flush_engine();
            self.apply_events();
            // Answers that are ready wait for those just forwarded to another core, so that
            // one write carries both. They wait only until the connection's next wake-up
            // (a result from another core, or more input), and never two turns in a row.
            let hold = forwarded
                && !self.held_back
                && !self.closing
                && !self.input_waiting
                && self.out.len() < HOLD_BACK_MAX_BYTES;
            self.held_back = hold;
            if !hold && !self.out.is_empty() {
                // In sync mode nothing is answered before the log holds it (group commit:
                // this waits for the one durable write that covers everything applied so far).
                self.core.answers_durable().await;
                self.record_latencies();
                if stream.write_all(&self.out).await.is_err() {
                    return Closed::Error;
                }
                self.out.clear();
            }
            if self.closing {
                return Closed::Error;
            }
        }
    }

    /// Frees the buffers of a closed connection (into the pool where they fit).
    fn release_buffers(&mut self) {
        self.out.clear();
        park_buffers(&mut self.inbuf, 0, &mut self.out);
    }

    /// Records the latency of the reserve and confirm answers about to be written (one clock
    /// read): they are ready, and durable in `sync` mode.
    fn record_latencies(&mut self) {
        if self.timed.is_empty() {
            return;
        }
        let now = Instant::now();
        for t in self.timed.drain(..) {
            let seconds = now.saturating_duration_since(t.since).as_secs_f64();
            self.core.metrics.observe_latency(t.op, seconds, t.count);
        }
    }

    /// Answers every whole frame in the input buffer.
    fn process_input(&mut self) {
        let buf = std::mem::take(&mut self.inbuf);
        // One clock read for everything that arrived together.
        let now_ms = self.core.now_ms();
        self.input_waiting = false;
        loop {
            // Past the output bound, the rest waits until the answers are written.
            if self.out.len() >= self.out_max && self.start < self.end {
                self.input_waiting = true;
                break;
            }
            match next_frame(&buf[self.start..self.end], &self.limits) {
                Ok(None) => break,
                Ok(Some((header, len))) => {
                    let body = &buf[self.start + HEADER_SIZE..self.start + len];
                    self.start += len;
                    self.core.count_frame();
                    if let Err(status) = self.handle_frame(now_ms, &header, body) {
                        let message = match status {
                            Status::ReservedNotZero => "reserved bytes of a record must be zero",
                            _ => "malformed body",
                        };
                        append_error_frame(&mut self.out, header.request_id, status, message);
                        self.closing = true;
                        break;
                    }
                }
                Err(e) => {
                    append_error_frame(&mut self.out, e.request_id, e.status, e.message);
                    self.closing = true;
                    break;
                }
            }
        }
        self.inbuf = buf;
        // The partial frame left (if any) began in this read when a frame ended in it.
        let consumed = self.start > 0;
        // Keep the unread tail at the front, and make room for a frame larger than the buffer.
        if self.start > 0 {
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Only a header the parser accepted gets here unanswered (its size is within
        // frame_size_max_bytes); after a refusal nothing more is read.
        if !self.closing && self.end >= HEADER_SIZE {
            let body_len = u32::from_le_bytes(self.inbuf[16..20].try_into().unwrap()) as usize;
            let needed = HEADER_SIZE + body_len;
            if needed > self.inbuf.len() {
                self.inbuf.resize(needed, 0);
            }
        }
        self.partial_since = match self.end {
            0 => None,
            _ if self.input_waiting => None,
            _ if consumed => Some(self.read_at),
            _ => self.partial_since.or(Some(self.read_at)),
        };
    }

    /// Answers one frame; `Err(status)` closes the connection with that status.
    fn handle_frame(&mut self, now_ms: u64, header: &Header, body: &[u8]) -> Result<(), Status> {
        let opcode = header.opcode().expect("checked by the parser");
        let id = header.request_id;
        if self.inflight() >= self.inflight_max && !matches!(opcode, Opcode::Hello | Opcode::Ping | Opcode::Auth) {
            self.core.metrics.count_busy(BusyReason::Inflight, header.op_count.max(1) as u64);
            let mut h = Header::response(opcode as u8, id, Status::Busy, 0, 0);
            h.retry_after_ms = self.core.config.limits.busy_retry_after_ms;
            h.append_to(&mut self.out);
            return Ok(());
        }
        // Before the body is decoded: without the token nothing about it is answered.
        if opcode.changes_pool() && !self.operator {
            self.respond_status(opcode, id, Status::Unauthorized);
            return Ok(());
        }
        match opcode {
            Opcode::Hello => {
                let mut body = Vec::new();
                put_prefix(&mut body, Status::Ok);
                self.core.hello().encode(&mut body);
                self.respond(opcode, id, 1, &body);
            }
            Opcode::Ping => Header::response(opcode as u8, id, Status::Ok, 0, 0).append_to(&mut self.out),
            Opcode::Auth => {
                let req = control::Auth::decode(body).map_err(|_| Status::MalformedBody)?;
                // The last `auth` decides: a wrong token takes the right away again.
                let token = self.core.config.admin.token.as_bytes();
                self.operator = self.core.config.control_open()
                    || (!token.is_empty() && crate::admin::same_secret(&req.token, token));
                let status = if self.operator { Status::Ok } else { Status::Unauthorized };
                self.respond_status(opcode, id, status);
            }
            Opcode::Reserve => self.batch(now_ms, header, body, |b| ReserveOp::decode(b).map(Op::Reserve))?,
            Opcode::Confirm => self.batch(now_ms, header, body, |b| ConfirmOp::decode(b).map(Op::Confirm))?,
            Opcode::Release => self.batch(now_ms, header, body, |b| ReleaseOp::decode(b).map(Op::Release))?,
            Opcode::Extend => self.batch(now_ms, header, body, |b| ExtendOp::decode(b).map(Op::Extend))?,
            Opcode::Lookup => self.batch(now_ms, header, body, |b| LookupOp::decode(b).map(Op::Lookup))?,
            Opcode::PoolList => {
                let req = PoolListRequest::decode(body).map_err(|_| Status::MalformedBody)?;
                let fit = (self.limits.frame_size_max_bytes as usize - HEADER_SIZE - control::CONTROL_PREFIX_SIZE)
                    / (control::PoolInfo::FIXED_SIZE
                        + control::POOL_NAME_MAX_BYTES
                        + control::POOL_DESCRIPTION_MAX_BYTES);
                let fit = fit.min(u16::MAX as usize);
                let limit = if req.limit == 0 { fit } else { (req.limit as usize).min(fit) };
                let (infos, more) = self.core.pool_page(req.start_after, limit);
                let mut body = Vec::new();
                put_prefix(&mut body, Status::Ok);
                for info in &infos {
                    info.encode(&mut body);
                }
                let mut h = Header::response(opcode as u8, id, Status::Ok, infos.len() as u16, body.len() as u32);
                if more {
                    h.flags |= FLAG_MORE;
                }
                h.append_to(&mut self.out);
                self.out.extend_from_slice(&body);
            }
            Opcode::PoolStatus => {
                let pool_ref = PoolRef::decode(body).map_err(|_| Status::MalformedBody)?;
                match self.core.pool_info(pool_ref.id, &pool_ref.name) {
                    None => self.respond_status(opcode, id, Status::PoolNotFound),
                    Some(info) => self.control(opcode, id, move |core| async move {
                        let mut body = Vec::new();
                        match core.pool_status(info).await {
                            Ok(status) => {
                                put_prefix(&mut body, Status::Ok);
                                status.encode(&mut body);
                            }
                            Err(refused) => put_prefix(&mut body, refused),
                        }
                        body
                    }),
                }
            }
            Opcode::PoolCreate => {
                let req = PoolCreate::decode(body).map_err(|_| Status::MalformedBody)?;
                self.control(opcode, id, move |core| async move { pool_answer(core.create_pool(req).await) });
            }
            Opcode::PoolSetActive
            | Opcode::PoolSetRules
            | Opcode::PoolSetCapacity
            | Opcode::PoolRename
            | Opcode::PoolSetDescription => {
                let change = decode_pool_change(opcode, body)?;
                self.control(opcode, id, move |core| async move { pool_answer(core.change_pool(change).await) })
            }
            Opcode::UserActivity => {
                let req = UserActivityRequest::decode(body).map_err(|_| Status::MalformedBody)?;
                self.control(opcode, id, move |core| async move {
                    let mut body = Vec::new();
                    match core.user_activity(req).await {
                        Ok(list) => {
                            put_prefix(&mut body, Status::Ok);
                            UserActivity::encode_list(&list, &mut body);
                        }
                        Err(status) => put_prefix(&mut body, status),
                    }
                    body
                });
            }
            Opcode::ServerStats => self.control(opcode, id, |core| async move {
                let stats: Vec<_> = core
                    .gather(RpcReq::Stats)
                    .await
                    .into_iter()
                    .filter_map(|r| if let RpcResp::Stats(s) = r { Some(s) } else { None })
                    .collect();
                let mut body = Vec::new();
                put_prefix(&mut body, Status::Ok);
                control::encode_stats(&stats, &mut body);
                body
            }),
            Opcode::Error => unreachable!("refused by the parser"),
        }
        Ok(())
    }

    fn respond(&mut self, opcode: Opcode, id: u64, count: u16, body: &[u8]) {
        Header::response(opcode as u8, id, Status::Ok, count, body.len() as u32).append_to(&mut self.out);
        self.out.extend_from_slice(body);
    }

    fn respond_status(&mut self, opcode: Opcode, id: u64, status: Status) {
        let mut body = Vec::new();
        put_prefix(&mut body, status);
        self.respond(opcode, id, 1, &body);
    }

    /// Runs a control request in its own task; its response frame completes a pending slot.
    fn control<F, Fut>(&mut self, opcode: Opcode, id: u64, make_body: F)
    where
        F: FnOnce(Rc<CoreRuntime>) -> Fut + 'static,
        Fut: std::future::Future<Output = Vec<u8>> + 'static,
    {
        let slot = self.alloc_pending(PendingFrame { bytes: Vec::new(), record_size: 0, remaining: 1, timed: None });
        let core = self.core.clone();
        let conn = self.id;
        glommio::spawn_local(async move {
            let body = make_body(core.clone()).await;
            let mut bytes = Vec::with_capacity(HEADER_SIZE + body.len());
            Header::response(opcode as u8, id, Status::Ok, 1, body.len() as u32).append_to(&mut bytes);
            bytes.extend_from_slice(&body);
            core.deliver_frame(conn, slot, bytes);
        })
        .detach();
    }

    fn alloc_pending(&mut self, frame: PendingFrame) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.pending[slot as usize] = Some(frame);
                slot
            }
            None => {
                self.pending.push(Some(frame));
                (self.pending.len() - 1) as u32
            }
        }
    }

    fn finish_pending(&mut self, slot: u32) {
        let frame = self.pending[slot as usize].take().expect("pending frame");
        self.out.extend_from_slice(&frame.bytes);
        self.add_timed(frame.timed);
        self.free.push(slot);
    }

    /// Adds answers to time when written; frames of one read and one kind share an entry.
    fn add_timed(&mut self, timed: Option<Timed>) {
        let Some(t) = timed else { return };
        match self.timed.last_mut() {
            Some(last) if last.op == t.op && last.since == t.since => last.count += t.count,
            _ => self.timed.push(t),
        }
    }

    /// A batch of one kind of operation: local ones applied now, others forwarded.
    fn batch(
        &mut self,
        now_ms: u64,
        header: &Header,
        body: &[u8],
        decode: impl Fn(&[u8]) -> Result<Op, ReservedNotZero>,
    ) -> Result<(), Status> {
        let opcode = header.opcode().expect("checked");
        let in_size = opcode.request_record_size().expect("batch opcode");
        let out_size = opcode.response_record_size().expect("batch opcode");
        let count = header.op_count as usize;
        // Refuse the whole frame before applying any of it.
        if body.chunks_exact(in_size).any(|rec| decode(rec).is_err()) {
            return Err(Status::ReservedNotZero);
        }
        self.core.metrics.batch_operations.observe(count as f64);
        let base = self.out.len();
        let body_len = count * out_size;
        Header::response(opcode as u8, header.request_id, Status::Ok, count as u16, body_len as u32)
            .append_to(&mut self.out);
        self.out.resize(base + HEADER_SIZE + body_len, 0);
        // A pending slot is taken only when an operation cannot be answered inline.
        let mut slot: Option<u32> = None;
        let mut waiting = 0u32;
        for (index, rec) in body.chunks_exact(in_size).enumerate() {
            let op = decode(rec).expect("validated above");
            let at_offset = base + HEADER_SIZE + index * out_size;
            if let Op::Lookup(lookup) = op {
                if lookup.user == 0 && lookup.id != 0 {
                    let at = self.frame_ref(&mut slot, index);
                    waiting += 1;
                    let core = self.core.clone();
                    glommio::spawn_local(async move {
                        let result = core.lookup_everywhere(lookup).await;
                        core.deliver_op(at, OpOutput::Lookup(result));
                    })
                    .detach();
                    continue;
                }
            }
            let home = self.core.home_of(op.user());
            if home == self.core.core || op.user() == 0 {
                match self.core.apply_local(now_ms, op) {
                    Ok(output) => output.encode(&mut self.out[at_offset..at_offset + out_size]),
                    Err(ticket) => {
                        let at = self.frame_ref(&mut slot, index);
                        self.core.park(ticket, at);
                        waiting += 1;
                    }
                }
            } else if !self.core.mesh_has_room(home) {
                self.core.metrics.count_busy(BusyReason::Mesh, 1);
                busy_output(opcode).encode(&mut self.out[at_offset..at_offset + out_size]);
            } else if self.core.admit_forwards(1) {
                let at = self.frame_ref(&mut slot, index);
                self.forwards[home as usize].push((at, op));
                waiting += 1;
            } else {
                self.core.metrics.count_busy(BusyReason::Forwards, 1);
                busy_output(opcode).encode(&mut self.out[at_offset..at_offset + out_size]);
            }
        }
        let timed = match opcode {
            Opcode::Reserve => Some(OpKind::Reserve),
            Opcode::Confirm => Some(OpKind::Confirm),
            _ => None,
        }
        .map(|op| Timed { op, since: self.read_at, count: count as u32 });
        match slot {
            Some(slot) => {
                let bytes = self.out[base..].to_vec();
                self.out.truncate(base);
                self.pending[slot as usize] =
                    Some(PendingFrame { bytes, record_size: out_size, remaining: waiting, timed });
            }
            None => self.add_timed(timed),
        }
        Ok(())
    }

    /// Where operation `index` of the frame being read will be answered: the frame's
    /// pending slot, taken on first use.
    fn frame_ref(&mut self, slot: &mut Option<u32>, index: usize) -> FrameRef {
        let frame = match *slot {
            Some(frame) => frame,
            None => {
                let frame =
                    self.alloc_pending(PendingFrame { bytes: Vec::new(), record_size: 0, remaining: 0, timed: None });
                *slot = Some(frame);
                frame
            }
        };
        FrameRef { conn: self.id, frame, index: index as u16 }
    }

    /// Sends the operations collected for other cores; true if there were any.
    fn send_forwards(&mut self) -> bool {
        let mut any = false;
        for core in 0..self.forwards.len() {
            if !self.forwards[core].is_empty() {
                let ops = std::mem::take(&mut self.forwards[core]);
                self.core.forward(core as u16, ops);
                any = true;
            }
        }
        any
    }

    /// Fills pending frames with the results that arrived; completed frames are answered.
    fn apply_events(&mut self) {
        self.shared.take_events(&mut self.events);
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                ConnEvent::Op { at, output } => {
                    let Some(frame) = self.pending[at.frame as usize].as_mut() else { continue };
                    let off = HEADER_SIZE + at.index as usize * frame.record_size;
                    output.encode(&mut frame.bytes[off..off + frame.record_size]);
                    frame.remaining -= 1;
                    if frame.remaining == 0 {
                        self.finish_pending(at.frame);
                    }
                }
                ConnEvent::Frame { frame, bytes } => {
                    if let Some(p) = self.pending[frame as usize].as_mut() {
                        p.bytes = bytes;
                        self.finish_pending(frame);
                    }
                }
            }
        }
        self.events = events;
    }
}

/// A connection about to wait gives its buffers back: the read buffer when it holds no
/// bytes (a partial frame of up to `PARTIAL_KEEP_BYTES` moves to a buffer of its own
/// size), the output buffer when it is empty.
fn park_buffers(inbuf: &mut Vec<u8>, end: usize, out: &mut Vec<u8>) {
    if end == 0 {
        if !inbuf.is_empty() {
            give_read_buffer(std::mem::take(inbuf));
        }
    } else if end <= PARTIAL_KEEP_BYTES && inbuf.len() > end {
        let kept = inbuf[..end].to_vec();
        give_read_buffer(std::mem::replace(inbuf, kept));
    }
    if out.is_empty() && out.capacity() > 0 {
        give_out_buffer(std::mem::take(out));
    }
}

fn busy_output(opcode: Opcode) -> OpOutput {
    match opcode {
        Opcode::Lookup => OpOutput::Lookup(crate::protocol::LookupResult::status(Status::Busy)),
        _ => OpOutput::Op(CoreRuntime::busy()),
    }
}

fn pool_answer(result: Result<PoolInfo, Status>) -> Vec<u8> {
    let mut body = Vec::new();
    match result {
        Ok(info) => {
            put_prefix(&mut body, Status::Ok);
            info.encode(&mut body);
        }
        Err(status) => put_prefix(&mut body, status),
    }
    body
}

/// The pool change a control frame asks core 0 for (`Err`: the body is malformed).
fn decode_pool_change(opcode: Opcode, body: &[u8]) -> Result<Command, Status> {
    let malformed = |_| Status::MalformedBody;
    Ok(match opcode {
        Opcode::PoolSetActive => {
            let req = PoolSetActive::decode(body).map_err(malformed)?;
            Command::SetPoolActive { pool: req.pool, active: req.active }
        }
        Opcode::PoolSetRules => {
            let req = PoolSetRules::decode(body).map_err(malformed)?;
            Command::SetPoolRules { pool: req.pool, rules: req.rules }
        }
        Opcode::PoolSetCapacity => {
            let req = PoolSetCapacity::decode(body).map_err(malformed)?;
            Command::ResizePool { pool: req.pool, capacity: req.capacity }
        }
        Opcode::PoolRename => {
            let req = PoolRename::decode(body).map_err(malformed)?;
            Command::RenamePool { pool: req.pool, name: req.name.into() }
        }
        Opcode::PoolSetDescription => {
            let req = PoolSetDescription::decode(body).map_err(malformed)?;
            Command::DescribePool { pool: req.pool, description: req.description.into() }
        }
        other => unreachable!("{other:?} is not a pool change"),
    })
}
