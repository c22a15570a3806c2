//! The soak's sampler: a thread that, every `--soak-sample-s`, reads the server's RSS and
//! scrapes its admin port's /metrics, and prints one row of the table on stderr.
//!
//! From the metrics it keeps what the verdict needs: every answer counted by
//! `shardcap_operations_total` (the total, for the rate between samples, and the refusals
//! that are not the pools' own, by status), `shardcap_busy_total` (operations answered
//! busy before the state machine), `shardcap_retention_busy_total` and
//! `shardcap_retention_forced_total` (where the server has them: reserves answered busy to
//! keep the minimum retention window, young finished records forgotten),
//! `shardcap_oversell_detected_total`, the holds and
//! records gauges, and the retention store's `shardcap_retention_window_seconds` and
//! `shardcap_retention_evictions_total` per core when the server has them (`None`, shown
//! as "n/a", when it does not).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardcap::protocol::Status;

use super::server::rss_bytes;

/// Statuses that are the pools' own answers (capacity and allocation rules): a soak may see
/// them. Every other status but ok is a failure.
pub const ALLOWED_REFUSALS: [Status; 6] = [
    Status::SoldOut,
    Status::NotOpen,
    Status::Closed,
    Status::QuantityAboveMax,
    Status::UserLimitReached,
    Status::RateLimited,
];

/// True for ok and the pools' own refusals.
pub fn allowed(status: &str) -> bool {
    status == Status::Ok.name() || ALLOWED_REFUSALS.iter().any(|s| s.name() == status)
}

/// Where the soak is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the load.
    Setup = 0,
    /// The closed-loop peak measurement.
    Peak = 1,
    /// The open-loop soak.
    Soak = 2,
    /// After the load.
    Done = 3,
}

impl Phase {
    /// The name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Peak => "peak",
            Phase::Soak => "soak",
            Phase::Done => "done",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Setup,
            1 => Phase::Peak,
            2 => Phase::Soak,
            _ => Phase::Done,
        }
    }
}

/// What one scrape of /metrics said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Every answered operation, whatever its status.
    pub operations: u64,
    /// Refusals other than the pools' own, by status name (`busy:<reason>` for
    /// `shardcap_busy_total`, `retention_busy` and `retention_forced` for the retention
    /// store's counters).
    pub refused: BTreeMap<String, u64>,
    /// `shardcap_oversell_detected_total`, summed over cores.
    pub oversell: u64,
    /// `shardcap_holds_active`, summed over cores.
    pub holds_active: u64,
    /// `shardcap_reservation_records`, summed over cores (absent on a server without it).
    pub reservation_records: Option<u64>,
    /// `shardcap_retention_window_seconds` by core index, if the server exports it.
    pub retention_window_s: Option<BTreeMap<u16, f64>>,
    /// `shardcap_retention_evictions_total` by core index, if the server exports it.
    pub retention_evictions: Option<BTreeMap<u16, u64>>,
}

impl Metrics {
    /// Parses a Prometheus text exposition.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let lines = text.lines().map(|line| Ok(line.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).map_err(|e| format!("unreadable metrics: {e}"))?;
        let mut m = Metrics::default();
        for sample in &parsed.samples {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            let count = value.round().max(0.0) as u64;
            let core = || sample.labels.get("core").and_then(|c| c.parse::<u16>().ok());
            match sample.metric.as_str() {
                "shardcap_operations_total" => {
                    m.operations += count;
                    let status = sample.labels.get("status").unwrap_or("unknown");
                    if !allowed(status) && count > 0 {
                        *m.refused.entry(status.to_string()).or_default() += count;
                    }
                }
                "shardcap_busy_total" if count > 0 => {
                    let reason = sample.labels.get("reason").unwrap_or("unknown");
                    *m.refused.entry(format!("busy:{reason}")).or_default() += count;
                }
                // Reserves answered busy to keep the minimum retention window, and young
                // finished records forgotten: the retention store could not keep up.
                "shardcap_retention_busy_total" | "shardcap_retention_forced_total" if count > 0 => {
                    let key = sample.metric.trim_start_matches("shardcap_").trim_end_matches("_total");
                    *m.refused.entry(key.to_string()).or_default() += count;
                }
                "shardcap_oversell_detected_total" => m.oversell += count,
                "shardcap_holds_active" => m.holds_active += count,
                "shardcap_reservation_records" => *m.reservation_records.get_or_insert(0) += count,
                // A series without a core label counts as core 0's.
                "shardcap_retention_window_seconds" => {
                    let window = m.retention_window_s.get_or_insert_with(BTreeMap::new);
                    window.insert(core().unwrap_or(0), value.max(0.0));
                }
                "shardcap_retention_evictions_total" => {
                    let evictions = m.retention_evictions.get_or_insert_with(BTreeMap::new);
                    *evictions.entry(core().unwrap_or(0)).or_default() += count;
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// Refusals other than the pools' own, all statuses together.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// The retention window's smallest and largest value over cores, in seconds.
    pub fn window_range_s(&self) -> Option<(f64, f64)> {
        let w = self.retention_window_s.as_ref().filter(|w| !w.is_empty())?;
        let min = w.values().copied().fold(f64::INFINITY, f64::min);
        let max = w.values().copied().fold(0.0, f64::max);
        Some((min, max))
    }

    /// Retention evictions, summed over cores.
    pub fn evictions_total(&self) -> Option<u64> {
        self.retention_evictions.as_ref().map(|e| e.values().sum())
    }
}

/// One sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When, in seconds since the sampler started.
    pub t_s: f64,
    /// The phase the soak was in.
    pub phase: Phase,
    /// The server's resident memory, in bytes (`None`: /proc did not say).
    pub rss_bytes: Option<u64>,
    /// The scrape (`Err`: why it failed).
    pub metrics: Result<Metrics, String>,
}

/// The running sampler.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: JoinHandle<()>,
    start: Instant,
}

/// The table's header (stderr).
pub const TABLE_HEADER: &str =
    "     t_s  phase       ops/s  refused/s   rss_MiB  holds_active      records   window_s   evictions  oversell";

impl Sampler {
    /// Takes the first sample now, then one every `interval` on a thread of its own, from
    /// the process `pid` and the metrics at `metrics_url`; prints each as a row.
    pub fn start(pid: u32, metrics_url: String, interval: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(Phase::Setup as u8));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
        let take = {
            let (phase, samples) = (phase.clone(), samples.clone());
            move || {
                let sample = Sample {
                    t_s: start.elapsed().as_secs_f64(),
                    phase: Phase::from_u8(phase.load(Ordering::Relaxed)),
                    rss_bytes: rss_bytes(pid),
                    metrics: scrape(&agent, &metrics_url),
                };
                let mut samples = samples.lock().expect("samples lock");
                eprintln!("{}", row(&sample, samples.last()));
                samples.push(sample);
            }
        };
        eprintln!("{TABLE_HEADER}");
        take();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = start + interval;
            loop {
                // Short sleeps, so that a stop is seen at once.
                while Instant::now() < next {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
                }
                take();
                next += interval;
            }
        });
        Sampler { stop, phase, samples, thread, start }
    }

    /// Seconds since the sampler started.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// True when the latest sample shows every core's retention store at its budget (each
    /// core has evicted a finished record to make room), or a server without one.
    pub fn retention_store_full(&self) -> bool {
        let samples = self.samples.lock().expect("samples lock");
        match samples.last().map(|s| &s.metrics) {
            Some(Ok(m)) => m.retention_evictions.as_ref().is_none_or(|e| !e.is_empty() && e.values().all(|&n| n > 0)),
            _ => false,
        }
    }

    /// Marks the phase the following samples belong to.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Stops the thread, takes one last sample (phase done) and answers them all.
    pub fn finish(self, pid: u32, metrics_url: &str) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
        let last = Sample {
            t_s: self.start.elapsed().as_secs_f64(),
            phase: Phase::Done,
            rss_bytes: rss_bytes(pid),
            metrics: scrape(&agent, metrics_url),
        };
        let mut samples = std::mem::take(&mut *self.samples.lock().expect("samples lock"));
        eprintln!("{}", row(&last, samples.last()));
        samples.push(last);
        samples
    }
}

fn scrape(agent: &ureq::Agent, url: &str) -> Result<Metrics, String> {
    let text = agent
        .get(url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map_err(|e| format!("scrape of {url}: {e}"))?;
    Metrics::parse(&text)
}

/// The operations per second between two samples, from the server's counter.
pub fn ops_per_s(sample: &Sample, previous: Option<&Sample>) -> Option<f64> {
    let (now, before) = (sample.metrics.as_ref().ok()?, previous?.metrics.as_ref().ok()?);
    let dt = sample.t_s - previous?.t_s;
    (dt > 0.0).then(|| now.operations.saturating_sub(before.operations) as f64 / dt)
}

/// Refusals other than the pools' own between two samples.
pub fn refused_between(sample: &Sample, previous: Option<&Sample>) -> Option<u64> {
    let now = sample.metrics.as_ref().ok()?;
    let before = previous.and_then(|p| p.metrics.as_ref().ok()).map_or(0, Metrics::refused_total);
    Some(now.refused_total().saturating_sub(before))
}

/// Refusals other than the pools' own per second between two samples.
pub fn refused_per_s(sample: &Sample, previous: Option<&Sample>) -> Option<f64> {
    let dt = sample.t_s - previous?.t_s;
    let n = refused_between(sample, previous)?;
    (dt > 0.0).then(|| n as f64 / dt)
}

/// One row of the table.
pub fn row(sample: &Sample, previous: Option<&Sample>) -> String {
    let na = || "n/a".to_string();
    let m = sample.metrics.as_ref().ok();
    let window = m.and_then(Metrics::window_range_s).map_or_else(na, |(lo, hi)| {
        if (hi - lo).abs() < 0.05 { format!("{lo:.1}") } else { format!("{lo:.0}..{hi:.0}") }
    });
    format!(
        "{:>8.1}  {:<5} {:>11} {:>10} {:>9} {:>13} {:>12} {:>10} {:>11} {:>9}{}",
        sample.t_s,
        sample.phase.name(),
        ops_per_s(sample, previous).map_or_else(na, |r| format!("{r:.0}")),
        refused_per_s(sample, previous).map_or_else(na, |r| format!("{r:.0}")),
        sample.rss_bytes.map_or_else(na, |b| format!("{:.1}", b as f64 / (1 << 20) as f64)),
        m.map_or_else(na, |m| m.holds_active.to_string()),
        m.and_then(|m| m.reservation_records).map_or_else(na, |r| r.to_string()),
        window,
        m.and_then(Metrics::evictions_total).map_or_else(na, |e| e.to_string()),
        m.map_or_else(na, |m| m.oversell.to_string()),
        match &sample.metrics {
            Err(e) => format!("  ({e})"),
            Ok(_) => String::new(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# TYPE shardcap_operations_total counter
shardcap_operations_total{core="0",op="reserve",status="ok"} 100
shardcap_operations_total{core="1",op="reserve",status="sold_out"} 7
shardcap_operations_total{core="1",op="reserve",status="holds_limit_reached"} 5
shardcap_operations_total{core="0",op="confirm",status="expired"} 2
shardcap_operations_total{core="0",op="reserve",status="user_limit_reached"} 3
# TYPE shardcap_busy_total counter
shardcap_busy_total{core="0",reason="forwards"} 4
shardcap_busy_total{core="1",reason="inflight"} 0
# TYPE shardcap_oversell_detected_total counter
shardcap_oversell_detected_total{core="0"} 0
shardcap_oversell_detected_total{core="1"} 1
# TYPE shardcap_holds_active gauge
shardcap_holds_active{core="0"} 10
shardcap_holds_active{core="1"} 11
# TYPE shardcap_reservation_records gauge
shardcap_reservation_records{core="0"} 20
shardcap_reservation_records{core="1"} 22
"#;

    #[test]
    fn metrics_keep_the_refusals_that_are_not_the_pools_own() {
        let m = Metrics::parse(EXPOSITION).unwrap();
        assert_eq!(m.operations, 117);
        let refused: Vec<(&str, u64)> = m.refused.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(refused, [("busy:forwards", 4), ("expired", 2), ("holds_limit_reached", 5)]);
        assert_eq!(m.refused_total(), 11);
        assert_eq!((m.oversell, m.holds_active, m.reservation_records), (1, 21, Some(42)));
        assert_eq!((m.window_range_s(), m.evictions_total()), (None, None), "absent on this server");
    }

    #[test]
    fn retention_metrics_are_read_per_core() {
        let text = format!(
            "{EXPOSITION}# TYPE shardcap_retention_window_seconds gauge\nshardcap_retention_window_seconds{{core=\"0\"}} 12.5\nshardcap_retention_window_seconds{{core=\"1\"}} 30\n# TYPE shardcap_retention_evictions_total counter\nshardcap_retention_evictions_total{{core=\"0\"}} 0\nshardcap_retention_evictions_total{{core=\"1\"}} 9\n# TYPE shardcap_retention_busy_total counter\nshardcap_retention_busy_total{{core=\"1\"}} 6\nshardcap_retention_forced_total{{core=\"1\"}} 0\n"
        );
        let m = Metrics::parse(&text).unwrap();
        assert_eq!(m.window_range_s(), Some((12.5, 30.0)));
        assert_eq!(m.evictions_total(), Some(9));
        assert_eq!(m.retention_evictions.unwrap().get(&0), Some(&0));
        assert_eq!(m.refused.get("retention_busy"), Some(&6), "{:?}", m.refused);
        assert_eq!(m.refused.get("retention_forced"), None, "counted only when not 0");
    }

    #[test]
    fn rows_show_rates_between_samples_and_na_for_what_is_missing() {
        let first =
            Sample { t_s: 0.0, phase: Phase::Setup, rss_bytes: Some(64 << 20), metrics: Ok(Metrics::default()) };
        let second =
            Sample { t_s: 4.0, phase: Phase::Soak, rss_bytes: None, metrics: Ok(Metrics::parse(EXPOSITION).unwrap()) };
        assert_eq!(ops_per_s(&second, Some(&first)), Some(29.25));
        assert_eq!(refused_between(&second, Some(&first)), Some(11));
        assert_eq!(refused_per_s(&second, Some(&first)), Some(2.75));
        let row = row(&second, Some(&first));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["4.0", "soak", "29", "3", "n/a", "21", "42", "n/a", "n/a", "1"]);
        assert!(allowed("ok") && allowed("sold_out") && allowed("rate_limited"));
        assert!(!allowed("busy") && !allowed("holds_limit_reached") && !allowed("not_found"));
    }
}
