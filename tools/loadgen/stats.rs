//! What a run measured: counters and the latency histogram of one executor thread, merged
//! over threads at the end. Plain integers, owned by one thread while it runs.

use hdrhistogram::Histogram;

/// The longest latency the histogram tells apart, in ns; longer ones count as this.
const LATENCY_NS_MAX: u64 = 120_000_000_000;

/// Successful operations, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OkCounts {
    /// Pings answered.
    pub ping: u64,
    /// Reserves that held units.
    pub reserve: u64,
    /// Confirms that succeeded.
    pub confirm: u64,
    /// Releases that succeeded.
    pub release: u64,
    /// Extends that succeeded.
    pub extend: u64,
    /// Lookups that found their reservation.
    pub lookup: u64,
}

/// Counters of one thread (or, merged, of the run).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Round-trip latency of recorded frames, in ns (open loop: from the intended send time).
    pub latency_ns: Histogram<u64>,
    /// Open loop: how late recorded frames were written after their intended send time, in
    /// ns (a frame held back by --depth counts too). Large values with few frames in
    /// flight mean this client, not the server, is behind.
    pub send_lag_ns: Histogram<u64>,
    /// Recorded frames answered.
    pub frames: u64,
    /// Operations of recorded frames answered, whatever their status.
    pub ops: u64,
    /// Successful operations of recorded frames.
    pub ok: OkCounts,
    /// Refused operations of recorded frames, by status byte (frame-level busy and error
    /// frames count once per operation of the refused frame).
    pub errors: [u64; 256],
    /// Frames still unanswered when the drain gave up.
    pub timeouts: u64,
    /// Frames never answered because their connection closed or failed.
    pub lost: u64,
    /// Connections that ended before the run did (closed by the server, I/O error, or an
    /// answer this client could not match).
    pub connection_failures: u64,
    /// Open loop: frames due after the warmup and before the end that were never sent,
    /// because --depth frames were in flight until the end (their latency is not in the
    /// histogram: it would have been at least the time from their intended send to the end).
    pub unsent_frames: u64,
    /// Confirms or releases still queued (not sent) when sending stopped.
    pub follow_ups_unsent: u64,
    /// Operations sent, warmup included.
    pub sent_ops: u64,
    /// Frames sent, warmup included.
    pub sent_frames: u64,
    /// When the last recorded answer arrived, in ns since the run's start.
    pub last_answer_ns: u64,
    /// When the last connection stopped sending, in ns since the run's start.
    pub stopped_sending_ns: u64,
    /// CPU time of the executor threads during the run, in ns, if the kernel reports it.
    pub cpu_ns: Option<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds"),
            send_lag_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds"),
            frames: 0,
            ops: 0,
            ok: OkCounts::default(),
            errors: [0; 256],
            timeouts: 0,
            lost: 0,
            connection_failures: 0,
            unsent_frames: 0,
            follow_ups_unsent: 0,
            sent_ops: 0,
            sent_frames: 0,
            last_answer_ns: 0,
            stopped_sending_ns: 0,
            cpu_ns: None,
        }
    }
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.latency_ns.add(&other.latency_ns).expect("histograms with the same bounds");
        self.send_lag_ns.add(&other.send_lag_ns).expect("histograms with the same bounds");
        self.frames += other.frames;
        self.ops += other.ops;
        self.ok.ping += other.ok.ping;
        self.ok.reserve += other.ok.reserve;
        self.ok.confirm += other.ok.confirm;
        self.ok.release += other.ok.release;
        self.ok.extend += other.ok.extend;
        self.ok.lookup += other.ok.lookup;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors.iter()) {
            *mine += theirs;
        }
        self.timeouts += other.timeouts;
        self.lost += other.lost;
        self.connection_failures += other.connection_failures;
        self.unsent_frames += other.unsent_frames;
        self.follow_ups_unsent += other.follow_ups_unsent;
        self.sent_ops += other.sent_ops;
        self.sent_frames += other.sent_frames;
        self.last_answer_ns = self.last_answer_ns.max(other.last_answer_ns);
        self.stopped_sending_ns = self.stopped_sending_ns.max(other.stopped_sending_ns);
        self.cpu_ns = match (self.cpu_ns, other.cpu_ns) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// CPU time of the calling thread, in ns, from /proc/thread-self/schedstat (its first
/// field); `None` where the kernel does not provide it.
pub fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
