//! Prometheus metrics from core-local counts.
//!
//! [`Metrics`] is the process's registry: every series a scrape can show, with a `core`
//! label where a core counts it. No core touches it on the hot path. Each core counts in a
//! [`CoreMetrics`] of plain integers and `prometheus::local` histograms (no atomics); a
//! scrape asks every core to [`CoreMetrics::flush`] into the registry (the only writes of
//! that core's series), waits for all of them, then encodes the registry.

use std::cell::{Cell, RefCell};

use prometheus::local::LocalHistogram;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::protocol::Status;

/// Latency buckets in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Operations per batch frame.
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

/// A client operation, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Reserve.
    Reserve = 0,
    /// Confirm.
    Confirm = 1,
    /// Release.
    Release = 2,
    /// Extend.
    Extend = 3,
    /// Lookup.
    Lookup = 4,
}

const OP_KINDS: [OpKind; 5] = [OpKind::Reserve, OpKind::Confirm, OpKind::Release, OpKind::Extend, OpKind::Lookup];

impl OpKind {
    /// The `op` label.
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Reserve => "reserve",
            OpKind::Confirm => "confirm",
            OpKind::Release => "release",
            OpKind::Extend => "extend",
            OpKind::Lookup => "lookup",
        }
    }
}

/// Why an operation or connection was answered `busy` before reaching the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyReason {
    /// The connection had `inflight_frames_max_per_connection` frames unanswered.
    Inflight = 0,
    /// The core had `forwarded_operations_max_per_core` operations forwarded unanswered.
    Forwards = 1,
    /// The core had `connections_max_per_core` connections.
    Connections = 2,
    /// The core had `mesh_queue_messages_max` messages queued for another core.
    Mesh = 3,
}

const BUSY_REASONS: [&str; 4] = ["inflight", "forwards", "connections", "mesh"];

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it.
    Client,
    /// A protocol error or a failed read or write.
    Error,
}

/// Every series of the process, in one registry.
pub struct Metrics {
    /// The registry scrapes encode.
    pub registry: Registry,
    operations: IntCounterVec,
    frames: IntCounterVec,
    busy: IntCounterVec,
    forwarded: IntCounterVec,
    borrow_messages: IntCounterVec,
    borrowed_units: IntCounterVec,
    lent_units: IntCounterVec,
    connections_opened: IntCounterVec,
    connections_closed: IntCounterVec,
    expirations: IntCounterVec,
    log_bytes: IntCounterVec,
    oversell: IntCounterVec,
    clock_steps_backward: IntCounterVec,
    request_duration: HistogramVec,
    batch_operations: HistogramVec,
    log_write_duration: HistogramVec,
    connections_open: IntGaugeVec,
    holds_active: IntGaugeVec,
    reservation_records: IntGaugeVec,
    retained_records: IntGaugeVec,
    retention_window: GaugeVec,
    retention_evictions: IntCounterVec,
    retention_forced: IntCounterVec,
    retention_busy: IntCounterVec,
    /// Number of pools.
    pub pools: IntGauge,
    /// Capacity of the exported pools.
    pub pool_capacity: IntGaugeVec,
    /// Units held in the exported pools.
    pub pool_held: IntGaugeVec,
    /// Units confirmed in the exported pools.
    pub pool_confirmed: IntGaugeVec,
    /// Units neither held nor confirmed in the exported pools.
    pub pool_available: IntGaugeVec,
    /// 1 once every core is recovered and serving.
    pub ready: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// The registry with every series of a server with `cores` cores (per-core counters that
    /// must be seen at 0, like the oversell counter, exist from the start).
    pub fn new(cores: u16) -> Metrics {
        let r = Registry::new();
        let core = &["core"];
        let m = Metrics {
            operations: counter(
                &r,
                "shardcap_operations_total",
                "Client operations applied, by operation and answer status (counted on the user's home core).",
                &["core", "op", "status"],
            ),
            frames: counter(&r, "shardcap_frames_total", "Request frames read.", core),
            busy: counter(
                &r,
                "shardcap_busy_total",
                "Operations (or connections) answered busy before reaching the state machine, by limit.",
                &["core", "reason"],
            ),
            forwarded: counter(
                &r,
                "shardcap_forwarded_operations_total",
                "Operations sent to (out) or received from (in) another core because their user lives there.",
                &["core", "direction"],
            ),
            borrow_messages: counter(
                &r,
                "shardcap_borrow_messages_total",
                "Borrowing-protocol messages sent to other cores.",
                core,
            ),
            borrowed_units: counter(
                &r,
                "shardcap_borrowed_units_total",
                "Capacity units received from other cores.",
                core,
            ),
            lent_units: counter(&r, "shardcap_lent_units_total", "Capacity units given to other cores.", core),
            connections_opened: counter(&r, "shardcap_connections_opened_total", "Connections accepted.", core),
            connections_closed: counter(
                &r,
                "shardcap_connections_closed_total",
                "Connections ended, by the client or for an error.",
                &["core", "reason"],
            ),
            expirations: counter(&r, "shardcap_expirations_total", "Holds expired.", core),
            log_bytes: counter(
                &r,
                "shardcap_log_written_bytes_total",
                "Bytes of records written to the write-ahead log.",
                core,
            ),
            oversell: counter(
                &r,
                "shardcap_oversell_detected_total",
                "Times the invariant check found more units held and confirmed than a shard or pool has. Must stay 0.",
                core,
            ),
            clock_steps_backward: counter(
                &r,
                "shardcap_clock_steps_backward_total",
                "Times the wall clock was read earlier than the reading before (an NTP step back); the state machine's time stood still meanwhile.",
                core,
            ),
            request_duration: histogram(
                &r,
                "shardcap_request_duration_seconds",
                "Server-side latency of reserves and confirms: from the read that brought the frame until its answer is ready to write (durable in sync mode).",
                &["core", "op"],
                LATENCY_BUCKETS,
            ),
            batch_operations: histogram(
                &r,
                "shardcap_batch_operations",
                "Operations per batch frame.",
                core,
                BATCH_BUCKETS,
            ),
            log_write_duration: histogram(
                &r,
                "shardcap_log_write_duration_seconds",
                "Duration of one durable write of the log (one group commit).",
                core,
                LATENCY_BUCKETS,
            ),
            connections_open: gauge(&r, "shardcap_connections_open", "Connections open.", core),
            holds_active: gauge(
                &r,
                "shardcap_holds_active",
                "Reservations held now (not confirmed, released or expired).",
                core,
            ),
            reservation_records: gauge(
                &r,
                "shardcap_reservation_records",
                "Reservation records of the core: live holds, and finished ones kept for repeats.",
                core,
            ),
            retained_records: gauge(
                &r,
                "shardcap_retained_records",
                "Finished reservations (confirmed, released, expired) kept for repeats and lookups.",
                core,
            ),
            retention_window: float_gauge(
                &r,
                "shardcap_retention_window_seconds",
                "Age of the oldest finished reservation kept: how far back a repeat is recognised now.",
                core,
            ),
            retention_evictions: counter(
                &r,
                "shardcap_retention_evictions_total",
                "Finished reservations forgotten before reservation_retention_s to make room (oldest first).",
                core,
            ),
            retention_forced: counter(
                &r,
                "shardcap_retention_forced_total",
                "Finished reservations younger than reservation_retention_s_min forgotten (only after limits were lowered).",
                core,
            ),
            retention_busy: counter(
                &r,
                "shardcap_retention_busy_total",
                "Reserves answered busy to keep reservation_retention_s_min within the retention budget.",
                core,
            ),
            pools: plain_gauge(&r, "shardcap_pools", "Pools."),
            pool_capacity: gauge(
                &r,
                "shardcap_pool_capacity",
                "Capacity of the pool (exported pools only).",
                &["pool"],
            ),
            pool_held: gauge(&r, "shardcap_pool_held", "Units held in the pool (exported pools only).", &["pool"]),
            pool_confirmed: gauge(
                &r,
                "shardcap_pool_confirmed",
                "Units confirmed in the pool (exported pools only).",
                &["pool"],
            ),
            pool_available: gauge(
                &r,
                "shardcap_pool_available",
                "Units of the pool neither held nor confirmed (exported pools only).",
                &["pool"],
            ),
            ready: plain_gauge(&r, "shardcap_ready", "1 once every core is recovered and serving."),
            registry: r,
        };
        for c in 0..cores {
            let c = c.to_string();
            m.oversell.with_label_values(&[&c]);
            m.clock_steps_backward.with_label_values(&[&c]);
            m.frames.with_label_values(&[&c]);
        }
        m
    }

    /// The core's view of the registry: its local counters and histograms.
    pub fn core(&self, core: u16) -> CoreMetrics {
        let label = core.to_string();
        let local = |h: &HistogramVec, op: Option<&str>| {
            let h = match op {
                Some(op) => h.with_label_values(&[&label, op]),
                None => h.with_label_values(&[&label]),
            };
            h.local()
        };
        let one = |c: &IntCounterVec| c.with_label_values(&[&label]);
        CoreMetrics {
            operations: (0..OP_KINDS.len() * 256).map(|_| Cell::new(0)).collect(),
            busy: Default::default(),
            connections_opened: Cell::new(0),
            closed_client: Cell::new(0),
            closed_error: Cell::new(0),
            oversell: Cell::new(0),
            clock_steps_backward: Cell::new(0),
            reserve_latency: local(&self.request_duration, Some("reserve")),
            confirm_latency: local(&self.request_duration, Some("confirm")),
            batch_operations: local(&self.batch_operations, None),
            log_write: local(&self.log_write_duration, None),
            out: CoreSeries {
                operations: (0..OP_KINDS.len() * 256).map(|_| None).collect(),
                frames: one(&self.frames),
                busy: BUSY_REASONS.map(|r| self.busy.with_label_values(&[&label, r])),
                forwarded_out: self.forwarded.with_label_values(&[&label, "out"]),
                forwarded_in: self.forwarded.with_label_values(&[&label, "in"]),
                borrow_messages: one(&self.borrow_messages),
                borrowed_units: one(&self.borrowed_units),
                lent_units: one(&self.lent_units),
                connections_opened: one(&self.connections_opened),
                closed_client: self.connections_closed.with_label_values(&[&label, "client"]),
                closed_error: self.connections_closed.with_label_values(&[&label, "error"]),
                expirations: one(&self.expirations),
                log_bytes: one(&self.log_bytes),
                oversell: one(&self.oversell),
                clock_steps_backward: one(&self.clock_steps_backward),
                connections_open: self.connections_open.with_label_values(&[&label]),
                holds_active: self.holds_active.with_label_values(&[&label]),
                reservation_records: self.reservation_records.with_label_values(&[&label]),
                retained_records: self.retained_records.with_label_values(&[&label]),
                retention_window: self.retention_window.with_label_values(&[&label]),
                retention_evictions: one(&self.retention_evictions),
                retention_forced: one(&self.retention_forced),
                retention_busy: one(&self.retention_busy),
                operations_vec: self.operations.clone(),
                label,
            }
            .into(),
        }
    }
}

/// One core's counts, kept with plain integers and local histograms: only its own core
/// touches them.
pub struct CoreMetrics {
    operations: Box<[Cell<u64>]>,
    busy: [Cell<u64>; 4],
    connections_opened: Cell<u64>,
    closed_client: Cell<u64>,
    closed_error: Cell<u64>,
    oversell: Cell<u64>,
    clock_steps_backward: Cell<u64>,
    /// Server-side reserve latency, in seconds.
    pub reserve_latency: LocalHistogram,
    /// Server-side confirm latency, in seconds.
    pub confirm_latency: LocalHistogram,
    /// Operations per batch frame.
    pub batch_operations: LocalHistogram,
    /// One durable log write, in seconds.
    pub log_write: LocalHistogram,
    out: RefCell<CoreSeries>,
}

/// The core's series in the registry, written only by [`CoreMetrics::flush`].
struct CoreSeries {
    label: String,
    operations_vec: IntCounterVec,
    /// Made on first use: only the combinations seen are exported.
    operations: Vec<Option<IntCounter>>,
    frames: IntCounter,
    busy: [IntCounter; 4],
    forwarded_out: IntCounter,
    forwarded_in: IntCounter,
    borrow_messages: IntCounter,
    borrowed_units: IntCounter,
    lent_units: IntCounter,
    connections_opened: IntCounter,
    closed_client: IntCounter,
    closed_error: IntCounter,
    expirations: IntCounter,
    log_bytes: IntCounter,
    oversell: IntCounter,
    clock_steps_backward: IntCounter,
    connections_open: IntGauge,
    holds_active: IntGauge,
    reservation_records: IntGauge,
    retained_records: IntGauge,
    retention_window: Gauge,
    retention_evictions: IntCounter,
    retention_forced: IntCounter,
    retention_busy: IntCounter,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

/// Brings a registry counter up to `total`, a count kept elsewhere since start.
fn catch_up(counter: &IntCounter, total: u64) {
    let shown = counter.get();
    if total > shown {
        counter.inc_by(total - shown);
    }
}

/// Totals a core keeps elsewhere (its counters, its state machine's, its log's), read at
/// flush time.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreTotals {
    /// Request frames read.
    pub frames: u64,
    /// Operations sent to other cores.
    pub forwarded_out: u64,
    /// Operations received from other cores.
    pub forwarded_in: u64,
    /// Borrowing messages sent.
    pub borrow_messages: u64,
    /// Units received from other cores.
    pub borrowed_units: u64,
    /// Units given to other cores.
    pub lent_units: u64,
    /// Holds expired.
    pub expirations: u64,
    /// Bytes written to the log.
    pub log_bytes: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Reservations held now.
    pub holds_active: u64,
    /// Reservation records: live holds and finished ones.
    pub reservation_records: u64,
    /// Finished reservations kept.
    pub retained_records: u64,
    /// Age of the oldest finished reservation kept, in ms (0: none).
    pub retention_window_ms: u64,
    /// Finished reservations forgotten early to make room.
    pub retention_evictions: u64,
    /// Finished reservations younger than the minimum forgotten.
    pub retention_forced: u64,
    /// Reserves answered busy for the retention budget.
    pub retention_busy: u64,
}

impl CoreMetrics {
    /// Counts one operation's answer.
    #[inline]
    pub fn count_op(&self, op: OpKind, status: u8) {
        bump(&self.operations[op as usize * 256 + status as usize], 1);
    }

    /// Counts `n` operations (or a connection) answered busy for `reason`.
    pub fn count_busy(&self, reason: BusyReason, n: u64) {
        bump(&self.busy[reason as usize], n);
    }

    /// Counts an accepted connection.
    pub fn count_opened(&self) {
        bump(&self.connections_opened, 1);
    }

    /// Counts an ended connection.
    pub fn count_closed(&self, how: Closed) {
        bump(if how == Closed::Client { &self.closed_client } else { &self.closed_error }, 1);
    }

    /// Counts a failed invariant check (with the error already logged).
    pub fn count_oversell(&self) {
        bump(&self.oversell, 1);
    }

    /// Times the invariant check failed on this core since start.
    pub fn oversell_count(&self) -> u64 {
        self.oversell.get()
    }

    /// Counts a step backwards of the wall clock.
    pub fn count_clock_step_backward(&self) {
        bump(&self.clock_steps_backward, 1);
    }

    /// Records `count` reserve or confirm answers that took `seconds`.
    pub fn observe_latency(&self, op: OpKind, seconds: f64, count: u32) {
        let h = if op == OpKind::Reserve { &self.reserve_latency } else { &self.confirm_latency };
        for _ in 0..count {
            h.observe(seconds);
        }
    }

    /// Writes this core's counts into the registry (a scrape calls it on every core first).
    pub fn flush(&self, totals: &CoreTotals) {
        let out = &mut *self.out.borrow_mut();
        for (i, count) in self.operations.iter().enumerate() {
            let n = count.get();
            if n == 0 {
                continue;
            }
            let series = out.operations[i].get_or_insert_with(|| {
                let op = OP_KINDS[i / 256].label();
                let status = Status::from_u8((i % 256) as u8).map_or("unknown", |s| s.name());
                out.operations_vec.with_label_values(&[&out.label, op, status])
            });
            catch_up(series, n);
        }
        for (series, count) in out.busy.iter().zip(&self.busy) {
            catch_up(series, count.get());
        }
        catch_up(&out.connections_opened, self.connections_opened.get());
        catch_up(&out.closed_client, self.closed_client.get());
        catch_up(&out.closed_error, self.closed_error.get());
        catch_up(&out.oversell, self.oversell.get());
        catch_up(&out.clock_steps_backward, self.clock_steps_backward.get());
        catch_up(&out.frames, totals.frames);
        catch_up(&out.forwarded_out, totals.forwarded_out);
        catch_up(&out.forwarded_in, totals.forwarded_in);
        catch_up(&out.borrow_messages, totals.borrow_messages);
        catch_up(&out.borrowed_units, totals.borrowed_units);
        catch_up(&out.lent_units, totals.lent_units);
        catch_up(&out.expirations, totals.expirations);
        catch_up(&out.log_bytes, totals.log_bytes);
        out.connections_open.set(totals.connections_open as i64);
        out.holds_active.set(totals.holds_active as i64);
        out.reservation_records.set(totals.reservation_records as i64);
        out.retained_records.set(totals.retained_records as i64);
        out.retention_window.set(totals.retention_window_ms as f64 / 1000.0);
        catch_up(&out.retention_evictions, totals.retention_evictions);
        catch_up(&out.retention_forced, totals.retention_forced);
        catch_up(&out.retention_busy, totals.retention_busy);
        self.reserve_latency.flush();
        self.confirm_latency.flush();
        self.batch_operations.flush();
        self.log_write.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out).unwrap();
        out
    }

    #[test]
    fn core_counts_reach_the_registry_only_when_flushed() {
        let m = Metrics::new(2);
        let core = m.core(1);
        core.count_op(OpKind::Reserve, Status::Ok as u8);
        core.count_op(OpKind::Reserve, Status::Ok as u8);
        core.count_op(OpKind::Reserve, Status::SoldOut as u8);
        core.observe_latency(OpKind::Reserve, 0.0003, 3);
        core.count_busy(BusyReason::Forwards, 4);
        core.count_clock_step_backward();
        assert!(!text(&m).contains("shardcap_operations_total{"), "nothing before the flush");

        core.flush(&CoreTotals { frames: 7, holds_active: 2, ..CoreTotals::default() });
        let t = text(&m);
        assert!(t.contains(r#"shardcap_operations_total{core="1",op="reserve",status="ok"} 2"#), "{t}");
        assert!(t.contains(r#"shardcap_operations_total{core="1",op="reserve",status="sold_out"} 1"#), "{t}");
        assert!(!t.contains(r#"shardcap_operations_total{core="1",op="confirm""#), "only combinations seen: {t}");
        assert!(t.contains(r#"shardcap_request_duration_seconds_count{core="1",op="reserve"} 3"#), "{t}");
        assert!(t.contains(r#"shardcap_request_duration_seconds_bucket{core="1",op="reserve",le="0.00025"} 0"#));
        assert!(t.contains(r#"shardcap_request_duration_seconds_bucket{core="1",op="reserve",le="0.0005"} 3"#));
        assert!(t.contains(r#"shardcap_busy_total{core="1",reason="forwards"} 4"#), "{t}");
        assert!(t.contains(r#"shardcap_frames_total{core="1"} 7"#), "{t}");
        assert!(t.contains(r#"shardcap_holds_active{core="1"} 2"#), "{t}");
        assert!(t.contains(r#"shardcap_oversell_detected_total{core="0"} 0"#), "seen at 0 from the start: {t}");
        assert!(t.contains(r#"shardcap_clock_steps_backward_total{core="0"} 0"#), "seen at 0 from the start: {t}");
        assert!(t.contains(r#"shardcap_clock_steps_backward_total{core="1"} 1"#), "{t}");

        // A second flush adds only what is new.
        core.count_op(OpKind::Reserve, Status::Ok as u8);
        core.flush(&CoreTotals { frames: 9, ..CoreTotals::default() });
        let t = text(&m);
        assert!(t.contains(r#"shardcap_operations_total{core="1",op="reserve",status="ok"} 3"#), "{t}");
        assert!(t.contains(r#"shardcap_frames_total{core="1"} 9"#), "{t}");
        assert!(t.contains(r#"shardcap_request_duration_seconds_count{core="1",op="reserve"} 3"#), "{t}");
    }
}
