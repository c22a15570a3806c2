//! The run: executor threads, connections, and the loop each connection turns.
//!
//! How it works:
//! - `--threads` unpinned glommio executors each take every `threads`-th connection. A
//!   thread first opens its connections (connect, then a hello on each, which also says
//!   which core serves it), then waits at a gate; once every thread has arrived, the main
//!   thread opens the gate with the run's start instant, so all connections share one
//!   clock and start together.
//! - Each connection is one task turning one loop: parse every complete answer in the
//!   read buffer, fill the free in-flight slots with new frames appended to one write
//!   buffer, then wait for whichever comes first of readable data, a writable socket (while
//!   part of the buffer is unsent) and the next deadline (the next intended send time in
//!   the open loop, the end of the run, the end of the drain). So a read takes every
//!   answer that has arrived and a write carries every new frame. Writing and reading in
//!   one wait means a full socket buffer cannot deadlock the two sides.
//! - Closed loop: every free slot is refilled at once; a frame's latency runs from the
//!   moment it was written. Open loop (`--rate`): frame `i` of a connection is due at
//!   `t0 + i × interval`, with `interval = ops_per_frame × connections / rate` and `t0`
//!   staggered over the connections; wake-ups are rounded up to `--open-tick-us` so that a
//!   thread's connections wake together. A due frame waits while `--depth` frames are in
//!   flight, and its latency still runs from its intended time, so queueing in the
//!   server (or in this client) cannot hide behind the depth limit (no coordinated
//!   omission). At the end, frames due before it still go out, late; those that --depth
//!   still holds back are reported as unsent rather than silently dropped.
//! - Request ids are `(sequence << 32) | slot`: an answer finds its slot directly, and the
//!   sequence tells a stale id from a live one. Answers may come in any order.
//! - Frames sent during the warmup are answered and followed up but not recorded. At the
//!   end of the run (or once the connection's share of --max-ops is sent) a connection
//!   stops sending and drains its in-flight frames for at most [`DRAIN_TIMEOUT`]; frames
//!   still unanswered then count as timeouts.
//! - The steady path does not allocate: slots, buffers and the generator's vectors are
//!   sized at start, request ids come from counters, and results are read in place.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Future};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};
use shardcap::protocol::control::{Hello, split_prefix};
use shardcap::protocol::{HEADER_SIZE, Header, LookupResult, OpResult, Opcode, ReserveOp, Status, decode_header};

use crate::args::Plan;
use crate::setup::Setup;
use crate::stats::{Stats, thread_cpu_ns};
use crate::workload::{FrameKind, Generator, Hold};

/// How long the drain waits for in-flight answers after sending stopped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening one connection (connect and hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gate waits for every thread to open its connections.
const GATE_TIMEOUT: Duration = Duration::from_secs(120);
/// io_uring registered memory per executor, in bytes: sockets do not use it, so the
/// minimum keeps clear of the locked-memory limit the server also needs.
const IO_MEMORY_BYTES: usize = 256 << 10;
/// Smallest read buffer, in bytes.
const READ_BUFFER_BYTES_MIN: usize = 64 << 10;
/// Largest buffer sized up front for all of a connection's in-flight frames, in bytes
/// (larger frames still fit: the buffers grow to one frame when they must).
const BUFFER_BYTES_MAX: usize = 4 << 20;

/// What the run measured.
pub struct Outcome {
    /// Merged counters of every thread.
    pub stats: Stats,
    /// Connections per serving core, from each connection's hello.
    pub connections_per_core: Vec<u32>,
}

/// Opens every connection, runs the load, and merges what the threads measured. An error
/// means the run could not start (a setup failure).
pub fn run(plan: &Plan, setup: &Setup, nonce: u32) -> Result<Outcome, String> {
    let threads = (plan.threads as u32).min(plan.connections) as usize;
    let gate = Arc::new(Gate::default());
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let conns: Vec<ConnSpec> = (0..plan.connections)
            .filter(|c| *c as usize % threads == thread)
            .map(|c| ConnSpec {
                index: c,
                addr: setup.conn_addrs[c as usize],
                core: setup.conn_cores[c as usize],
                quota_ops: plan.max_ops.map_or(u64::MAX, |n| {
                    let c = c as u64;
                    let conns = plan.connections as u64;
                    n / conns + u64::from(c < n % conns)
                }),
            })
            .collect();
        let plan = plan.clone();
        let pool_ids = setup.pool_ids.clone();
        let cores = setup.hello.core_count.max(1);
        let arrival = Arrival { gate: gate.clone(), done: false };
        let spawned = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("loadgen-{thread}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || thread_main(plan, pool_ids, cores, conns, nonce, arrival));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                gate.abandon(format!("cannot start executor thread {thread}: {e}"));
                break;
            }
        }
    }
    let decision = gate.decide(handles.len() == threads, threads, GATE_TIMEOUT);
    let mut stats = Stats::default();
    let mut connections_per_core = vec![0u32; setup.hello.core_count as usize];
    let mut panics = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(result) => {
                stats.merge(&result.stats);
                for (mine, theirs) in connections_per_core.iter_mut().zip(&result.connections_per_core) {
                    *mine += theirs;
                }
            }
            Err(e) => panics.push(format!("an executor thread failed: {e}")),
        }
    }
    decision?;
    if !panics.is_empty() {
        return Err(panics.join("; "));
    }
    Ok(Outcome { stats, connections_per_core })
}

/// Where one connection goes and how much it may send.
struct ConnSpec {
    /// Global connection index.
    index: u32,
    addr: SocketAddr,
    /// Its core, in shard-aware mode.
    core: Option<u16>,
    /// Operations it may send (its share of --max-ops).
    quota_ops: u64,
}

/// The start line: threads arrive with their connections open and wait for the main
/// thread's decision, which is either the run's start instant or "abort".
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    arrived: usize,
    failures: Vec<String>,
    /// `None` until decided; then the start instant, or `None` inside to abort.
    decision: Option<Option<Instant>>,
}

impl Gate {
    /// A thread arrives (with the failures it met) and waits for the decision.
    fn arrive(&self, failures: Vec<String>) -> Option<Instant> {
        let mut state = self.state.lock().expect("gate lock");
        state.arrived += 1;
        state.failures.extend(failures);
        self.changed.notify_all();
        let deadline = Instant::now() + GATE_TIMEOUT;
        while state.decision.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.changed.wait_timeout(state, left).expect("gate lock").0;
        }
        state.decision.expect("decided")
    }

    /// A thread will never arrive.
    fn abandon(&self, why: String) {
        let mut state = self.state.lock().expect("gate lock");
        state.failures.push(why);
        self.changed.notify_all();
    }

    /// Waits (at most `timeout`) for `threads` arrivals, then starts the run or aborts it.
    fn decide(&self, all_spawned: bool, threads: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("gate lock");
        while all_spawned && state.arrived < threads && state.failures.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.failures.push(format!("connections not open within {timeout:?}"));
                break;
            }
            state = self.changed.wait_timeout(state, left).expect("gate lock").0;
        }
        let go = all_spawned && state.failures.is_empty();
        state.decision = Some(go.then(Instant::now));
        self.changed.notify_all();
        if go { Ok(()) } else { Err(state.failures.join("; ")) }
    }
}

/// A thread's ticket at the gate: dropped without arriving (its executor never started),
/// it tells the gate so that the run aborts at once instead of waiting.
struct Arrival {
    gate: Arc<Gate>,
    done: bool,
}

impl Arrival {
    fn arrive(mut self, failures: Vec<String>) -> Option<Instant> {
        self.done = true;
        self.gate.arrive(failures)
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if !self.done {
            self.gate.abandon("an executor thread could not start".into());
        }
    }
}

/// What one thread measured.
struct ThreadResult {
    stats: Stats,
    connections_per_core: Vec<u32>,
}

async fn thread_main(
    plan: Plan,
    pool_ids: Vec<u32>,
    cores: u16,
    conns: Vec<ConnSpec>,
    nonce: u32,
    arrival: Arrival,
) -> ThreadResult {
    let mut connections_per_core = vec![0u32; cores as usize];
    let opening: Vec<_> = conns.iter().map(|spec| glommio::spawn_local(open(spec.addr, spec.core))).collect();
    let mut opened = Vec::with_capacity(conns.len());
    let mut failures = Vec::new();
    for (spec, task) in conns.into_iter().zip(opening) {
        match task.await {
            Ok((stream, core)) => {
                if let Some(n) = connections_per_core.get_mut(core as usize) {
                    *n += 1;
                }
                opened.push((spec, stream));
            }
            Err(e) => failures.push(format!("connection {} to {}: {e}", spec.index, spec.addr)),
        }
    }
    // Blocking here is fine: this executor has nothing else to run until the start.
    let Some(epoch) = arrival.arrive(failures) else {
        return ThreadResult { stats: Stats::default(), connections_per_core };
    };
    let cpu_start_ns = thread_cpu_ns();
    let stats = Rc::new(RefCell::new(Stats::default()));
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(spec, stream)| {
            let home = spec.core.map(|core| (core, cores));
            let generator = Generator::new(&plan, &pool_ids, spec.index, nonce, home);
            let conn = Conn::new(&plan, &spec, stream, generator, epoch, stats.clone());
            glommio::spawn_local(conn.run())
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let mut stats = Rc::try_unwrap(stats).map(RefCell::into_inner).unwrap_or_else(|rc| rc.borrow().clone());
    stats.cpu_ns = cpu_start_ns.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    ThreadResult { stats, connections_per_core }
}

/// Connects and says hello (bounded by [`CONNECT_TIMEOUT`]); answers the stream and the
/// core that serves it. In shard-aware mode that core must be the expected one.
async fn open(addr: SocketAddr, expected_core: Option<u16>) -> Result<(TcpStream, u16), String> {
    let handshake = async {
        let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut hello = Vec::with_capacity(HEADER_SIZE);
        Header::request(Opcode::Hello, 0, 0, 0).append_to(&mut hello);
        stream.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut head = [0u8; HEADER_SIZE];
        stream.read_exact(&mut head).await.map_err(|e| format!("reading hello: {e}"))?;
        let header = decode_header(&head).map_err(|e| format!("bad hello answer: {}", e.status))?;
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).await.map_err(|e| format!("reading hello: {e}"))?;
        if header.opcode != Opcode::Hello as u8 || header.status != Status::Ok as u8 {
            let message = String::from_utf8_lossy(&body);
            let status = Status::from_u8(header.status).map_or("unknown", Status::name);
            return Err(format!("hello refused: {status}: {message}"));
        }
        let payload = match split_prefix(&body) {
            Ok((Status::Ok, payload)) => payload,
            _ => return Err("hello refused".into()),
        };
        let hello = Hello::decode(payload).map_err(|_| "bad hello payload".to_string())?;
        if let Some(core) = expected_core {
            if hello.this_core != core {
                return Err(format!("core port of core {core} is served by core {}", hello.this_core));
            }
        }
        Ok((stream, hello.this_core))
    };
    let timeout = async {
        glommio::timer::sleep(CONNECT_TIMEOUT).await;
        Err(format!("no answer within {CONNECT_TIMEOUT:?}"))
    };
    futures_lite::future::or(handshake, timeout).await
}

/// One in-flight frame.
#[derive(Clone, Copy)]
struct Slot {
    request_id: u64,
    /// When it was sent (closed loop) or due (open loop), in ns since the start.
    sent_ns: u64,
    kind: FrameKind,
    ops: u16,
    /// Sent after the warmup: counted in the results.
    recorded: bool,
    in_use: bool,
}

/// Why a connection's wait ended.
enum Wake {
    Data(usize),
    Deadline,
    Closed,
    Failed,
}

/// The frame bookkeeping of one connection (apart from its socket buffers, so that an
/// answer can be handled while its bytes are borrowed from the read buffer).
struct Book {
    generator: Generator,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The reserves of each slot's frame, `ops_per_frame` entries per slot.
    holds: Vec<Hold>,
    ops_per_frame: usize,
    inflight: u32,
    sequence: u64,
    quota_ops: u64,
    sent_ops: u64,
    sent_frames: u64,
    warmup_end_ns: u64,
    stats: Rc<RefCell<Stats>>,
}

/// A connection: its socket, buffers, schedule and bookkeeping.
struct Conn {
    stream: TcpStream,
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    write_buf: Vec<u8>,
    write_pos: usize,
    book: Book,
    epoch: Instant,
    depth: u32,
    stop_ns: u64,
    /// Open loop: the first intended send time and the interval, in ns; closed loop: 0.
    open_t0_ns: u64,
    open_interval_ns: f64,
    open_frames: u64,
    /// Open loop: wake-ups are rounded up to a multiple of this, in ns (0: not rounded).
    open_tick_ns: u64,
    timer: Timer,
    timer_deadline_ns: u64,
    timer_needs_poll: bool,
}

impl Conn {
    fn new(
        plan: &Plan,
        spec: &ConnSpec,
        stream: TcpStream,
        generator: Generator,
        epoch: Instant,
        stats: Rc<RefCell<Stats>>,
    ) -> Conn {
        let depth = plan.depth as usize;
        let k = plan.frame_ops_max() as usize;
        // Lookups have the largest results.
        let answer_bytes = depth * (HEADER_SIZE + k * OpResult::SIZE.max(LookupResult::SIZE));
        let request_bytes = depth * (HEADER_SIZE + k * ReserveOp::SIZE);
        let warmup_ns = (plan.warmup_s * 1e9) as u64;
        let stop_ns = warmup_ns + (plan.duration_s * 1e9) as u64;
        let (open_t0_ns, open_interval_ns) = if plan.open_loop() {
            let interval_ns = plan.frame_ops_max() as f64 * plan.connections as f64 / plan.rate_ops_per_s * 1e9;
            ((interval_ns * spec.index as f64 / plan.connections as f64) as u64, interval_ns)
        } else {
            (0, 0.0)
        };
        let slot = Slot { request_id: 0, sent_ns: 0, kind: FrameKind::Ping, ops: 0, recorded: false, in_use: false };
        Conn {
            stream,
            read_buf: vec![0; answer_bytes.clamp(READ_BUFFER_BYTES_MIN, BUFFER_BYTES_MAX)],
            read_start: 0,
            read_end: 0,
            write_buf: Vec::with_capacity(request_bytes.min(BUFFER_BYTES_MAX)),
            write_pos: 0,
            book: Book {
                generator,
                slots: vec![slot; depth],
                free: (0..depth as u32).rev().collect(),
                holds: vec![Hold::default(); depth * k],
                ops_per_frame: k,
                inflight: 0,
                sequence: 0,
                quota_ops: spec.quota_ops,
                sent_ops: 0,
                sent_frames: 0,
                warmup_end_ns: warmup_ns,
                stats,
            },
            epoch,
            depth: plan.depth,
            stop_ns,
            open_t0_ns,
            open_interval_ns,
            open_frames: 0,
            open_tick_ns: plan.open_tick_us * 1_000,
            timer: Timer::new(Duration::from_secs(3600)),
            timer_deadline_ns: u64::MAX,
            timer_needs_poll: true,
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn open_loop(&self) -> bool {
        self.open_interval_ns > 0.0
    }

    /// The intended send time of open-loop frame `i`, in ns since the start.
    fn due_ns(&self, i: u64) -> u64 {
        self.open_t0_ns + (i as f64 * self.open_interval_ns) as u64
    }

    /// Open loop: the number of frames due before `t_ns`.
    fn frames_due_before(&self, t_ns: u64) -> u64 {
        if self.open_t0_ns >= t_ns {
            return 0;
        }
        // Frame i is due before t iff i × interval < t − t0; the float estimate is corrected
        // with the exact expression `due_ns` uses (at most a step or two).
        let mut count = ((t_ns - self.open_t0_ns) as f64 / self.open_interval_ns).ceil() as u64;
        for _ in 0..4 {
            if count > 0 && self.due_ns(count - 1) >= t_ns {
                count -= 1;
            } else if self.due_ns(count) < t_ns {
                count += 1;
            }
        }
        count
    }

    /// Open loop, once sending stopped: frames due after the warmup and before the end
    /// that were never sent (--depth frames were in flight until the end).
    fn frames_due_unsent(&self) -> u64 {
        let first_recorded = self.frames_due_before(self.book.warmup_end_ns);
        self.frames_due_before(self.stop_ns).saturating_sub(self.open_frames.max(first_recorded))
    }

    /// When to wake for the next open-loop frame: its intended send time, rounded up to the
    /// tick so that the connections of a thread wake together.
    fn next_wake_ns(&self) -> u64 {
        let due = self.due_ns(self.open_frames);
        match self.open_tick_ns {
            0 => due,
            tick => due.div_ceil(tick) * tick,
        }
    }

    async fn run(mut self) {
        let drain_ns = DRAIN_TIMEOUT.as_nanos() as u64;
        let mut stopped_ns: Option<u64> = None;
        let mut drain_deadline_ns = u64::MAX;
        let mut failed = false;
        let mut unsent_frames = 0;
        loop {
            let now = self.now_ns();
            if stopped_ns.is_none() && (now >= self.stop_ns || self.book.quota_ops == 0) {
                if self.open_loop() && self.book.quota_ops > 0 {
                    // Frames due before the end still go out, late: dropping them would hide
                    // the very latencies an overloaded server causes.
                    self.fill(now, u64::MAX);
                    unsent_frames = self.frames_due_unsent();
                }
                stopped_ns = Some(now.min(self.stop_ns));
                drain_deadline_ns = now + drain_ns;
            }
            if stopped_ns.is_some() {
                if self.book.inflight == 0 {
                    break;
                }
                if now >= drain_deadline_ns {
                    self.book.stats.borrow_mut().timeouts += self.book.inflight as u64;
                    break;
                }
            } else {
                self.fill(now, now);
            }
            let deadline = if stopped_ns.is_some() {
                drain_deadline_ns
            } else if self.open_loop() && self.book.inflight < self.depth {
                self.next_wake_ns().min(self.stop_ns)
            } else {
                self.stop_ns
            };
            if deadline != self.timer_deadline_ns {
                self.timer.reset(Duration::from_nanos(deadline.saturating_sub(now)));
                self.timer_deadline_ns = deadline;
                self.timer_needs_poll = true;
            }
            match self.wait().await {
                Wake::Data(n) => {
                    self.read_end += n;
                    let now = self.now_ns();
                    if let Err(why) = self.on_input(now) {
                        eprintln!("warning: connection closed: {why}");
                        failed = true;
                        break;
                    }
                }
                Wake::Deadline => {}
                Wake::Closed | Wake::Failed => {
                    failed = true;
                    break;
                }
            }
        }
        let stopped = stopped_ns.unwrap_or_else(|| self.now_ns().min(self.stop_ns));
        {
            let mut stats = self.book.stats.borrow_mut();
            if failed {
                stats.connection_failures += 1;
                stats.lost += self.book.inflight as u64;
            }
            stats.follow_ups_unsent += self.book.generator.follow_ups_pending() as u64;
            stats.unsent_frames += unsent_frames;
            stats.sent_ops += self.book.sent_ops;
            stats.sent_frames += self.book.sent_frames;
            stats.stopped_sending_ns = stats.stopped_sending_ns.max(stopped);
        }
        let _ = self.stream.close().await;
    }

    /// Fills free slots with new frames: all of them in the closed loop, the due ones in
    /// the open loop.
    /// Open loop: only frames due by `due_limit_ns` (and before the end) go out.
    fn fill(&mut self, now: u64, due_limit_ns: u64) {
        while self.book.inflight < self.depth && self.book.quota_ops > 0 {
            let sent_ns = if self.open_loop() {
                let due = self.due_ns(self.open_frames);
                if due > due_limit_ns || due >= self.stop_ns {
                    break;
                }
                self.open_frames += 1;
                if due >= self.book.warmup_end_ns {
                    self.book.stats.borrow_mut().send_lag_ns.saturating_record(now.saturating_sub(due).max(1));
                }
                due
            } else {
                now
            };
            let book = &mut self.book;
            let slot = book.free.pop().expect("a free slot while below depth");
            book.sequence += 1;
            let request_id = (book.sequence << 32) | slot as u64;
            let k = book.ops_per_frame;
            let holds = &mut book.holds[slot as usize * k..(slot as usize + 1) * k];
            let ops_max = book.quota_ops.min(k as u64) as usize;
            let (kind, ops) = book.generator.next_frame(request_id, ops_max, holds, &mut self.write_buf);
            book.slots[slot as usize] =
                Slot { request_id, sent_ns, kind, ops, recorded: sent_ns >= book.warmup_end_ns, in_use: true };
            book.inflight += 1;
            book.quota_ops -= ops as u64;
            book.sent_ops += ops as u64;
            book.sent_frames += 1;
        }
    }

    /// Writes what is unsent and waits for data, the deadline, or a failure.
    fn wait(&mut self) -> impl Future<Output = Wake> + '_ {
        poll_fn(move |cx| {
            while self.write_pos < self.write_buf.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.write_buf[self.write_pos..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wake::Failed),
                    Poll::Ready(Ok(n)) => self.write_pos += n,
                    Poll::Pending => break,
                }
            }
            if self.write_pos == self.write_buf.len() {
                self.write_buf.clear();
                self.write_pos = 0;
            }
            let end = self.read_end;
            match Pin::new(&mut self.stream).poll_read(cx, &mut self.read_buf[end..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Wake::Closed),
                Poll::Ready(Ok(n)) => return Poll::Ready(Wake::Data(n)),
                Poll::Ready(Err(_)) => return Poll::Ready(Wake::Failed),
                Poll::Pending => {}
            }
            // The timer is polled once per new deadline (polling registers it with the
            // reactor, which costs a tree update); after that the clock says whether it
            // was the timer that woke this task.
            if self.timer_needs_poll {
                self.timer_needs_poll = false;
                if Pin::new(&mut self.timer).poll(cx).is_ready() {
                    return Poll::Ready(Wake::Deadline);
                }
            } else if self.now_ns() >= self.timer_deadline_ns {
                return Poll::Ready(Wake::Deadline);
            }
            Poll::Pending
        })
    }

    /// Handles every complete answer in the read buffer.
    fn on_input(&mut self, now: u64) -> Result<(), String> {
        let shared = self.book.stats.clone();
        let mut stats = shared.borrow_mut();
        loop {
            let available = self.read_end - self.read_start;
            if available < HEADER_SIZE {
                break;
            }
            let head: &[u8; HEADER_SIZE] =
                self.read_buf[self.read_start..self.read_start + HEADER_SIZE].try_into().expect("32 bytes");
            let header = decode_header(head).map_err(|e| format!("bad answer header: {}", e.status))?;
            let len = HEADER_SIZE + header.body_len as usize;
            if available < len {
                if len > self.read_buf.len() {
                    // A frame larger than the buffer: grow once to fit it.
                    self.read_buf.resize(len, 0);
                }
                break;
            }
            let body = &self.read_buf[self.read_start + HEADER_SIZE..self.read_start + len];
            self.book.on_answer(&header, body, now, &mut stats)?;
            self.read_start += len;
        }
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        } else if self.read_start > 0 {
            self.read_buf.copy_within(self.read_start..self.read_end, 0);
            self.read_end -= self.read_start;
            self.read_start = 0;
        }
        // A read into no room would look like the end of the stream.
        if self.read_end == self.read_buf.len() {
            self.read_buf.resize(2 * self.read_buf.len(), 0);
        }
        Ok(())
    }
}

impl Book {
    /// Takes the slot answered by `request_id`, if it is in flight.
    fn take_slot(&mut self, request_id: u64) -> Option<Slot> {
        let index = (request_id & 0xffff_ffff) as usize;
        let slot = self.slots.get_mut(index)?;
        if !slot.in_use || slot.request_id != request_id {
            return None;
        }
        slot.in_use = false;
        self.free.push(index as u32);
        self.inflight -= 1;
        Some(*slot)
    }

    /// Handles one answer.
    fn on_answer(&mut self, header: &Header, body: &[u8], now: u64, stats: &mut Stats) -> Result<(), String> {
        if header.opcode == Opcode::Error as u8 {
            // The server closes the connection after an error frame; the end of the stream
            // ends the connection.
            let status = Status::from_u8(header.status).map_or("unknown", Status::name);
            let message = String::from_utf8_lossy(body);
            eprintln!("warning: error frame from the server: {status}: {message}");
            match self.take_slot(header.request_id) {
                Some(slot) => {
                    self.finish(&slot, now, stats, |stats| stats.errors[header.status as usize] += slot.ops as u64)
                }
                None => stats.errors[header.status as usize] += 1,
            }
            return Ok(());
        }
        let slot = self
            .take_slot(header.request_id)
            .ok_or_else(|| format!("answer to request id {:#x}, which is not in flight", header.request_id))?;
        if header.status != Status::Ok as u8 {
            // Frame-level busy: the frame was not applied; no retry (a confirm or release
            // that is refused so leaves its hold to expire).
            self.finish(&slot, now, stats, |stats| stats.errors[header.status as usize] += slot.ops as u64);
            return Ok(());
        }
        if slot.kind == FrameKind::Ping {
            self.finish(&slot, now, stats, |stats| stats.ok.ping += 1);
            return Ok(());
        }
        let ops = slot.ops as usize;
        // Every result starts with its status byte; a lookup's is larger.
        let result_size = if slot.kind == FrameKind::Lookup { LookupResult::SIZE } else { OpResult::SIZE };
        if header.op_count as usize != ops || body.len() != ops * result_size {
            return Err(format!("answer with {} results to a frame of {ops} operations", header.op_count));
        }
        let first = (header.request_id & 0xffff_ffff) as usize * self.ops_per_frame;
        for (i, result) in body.chunks_exact(result_size).enumerate() {
            let status = result[0];
            if status == Status::Ok as u8 {
                if slot.kind == FrameKind::Reserve {
                    self.generator.on_held(self.holds[first + i]);
                }
                if slot.recorded {
                    match slot.kind {
                        FrameKind::Reserve => stats.ok.reserve += 1,
                        FrameKind::Confirm => stats.ok.confirm += 1,
                        FrameKind::Release => stats.ok.release += 1,
                        FrameKind::Extend => stats.ok.extend += 1,
                        FrameKind::Lookup => stats.ok.lookup += 1,
                        FrameKind::Ping => unreachable!("handled above"),
                    }
                }
            } else if slot.recorded {
                stats.errors[status as usize] += 1;
            }
        }
        self.finish(&slot, now, stats, |_| {});
        Ok(())
    }

    /// Records an answered frame (if it was sent after the warmup) and its outcome.
    fn finish(&self, slot: &Slot, now: u64, stats: &mut Stats, outcome: impl FnOnce(&mut Stats)) {
        if !slot.recorded {
            return;
        }
        outcome(stats);
        stats.frames += 1;
        stats.ops += slot.ops as u64;
        stats.latency_ns.saturating_record(now.saturating_sub(slot.sent_ns).max(1));
        stats.last_answer_ns = stats.last_answer_ns.max(now);
    }
}
