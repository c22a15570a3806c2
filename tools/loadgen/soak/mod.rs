//! The soak benchmark (`shardcap-loadgen --soak`): a long run of a mixed workload at a
//! fixed share of the server's peak, judged on what a long-running server must not do:
//! refuse a sale for its own reasons, grow, or oversell.
//!
//! How it works:
//! 1. The server ([`server`]): started from `--server-bin` on its embedded default
//!    configuration (loopback, OS-chosen ports, a fresh data directory, `--durability`), or
//!    one running already (`--server`, `--admin`, `--server-pid`).
//! 2. Setup as for any run: by default 8 pools chosen by zipf (the hottest takes about a
//!    third of the reserves), the last of them with 1,000 units so that it sells out at
//!    once and stays sold out; a million users chosen by zipf; the mixed workload (every
//!    successful hold confirmed, released, extended, looked up or left to expire, in fixed
//!    shares; TTL 5 s); shard-aware connections.
//! 3. The peak: first the same workload in a closed loop, in steps of 10 s, until every
//!    core's retention store is at its budget (each has forgotten a finished record to make
//!    room; at most `--soak-fill-max-s`, 600 s), because from then on each reserve also evicts one, as it
//!    will throughout the soak: a fresh server is faster than the one the soak runs
//!    against. Then `--soak-peak-s` measured after a warmup of two TTLs (at least 1 s), so
//!    that holds left to expire (extended ones included) expire during the measurement as
//!    they will during the soak: the peak is that of the steady state. `--soak-peak-ops`
//!    gives it instead.
//! 4. The soak: an open loop at `--soak-load-pct` (80%) of the peak for `--soak-minutes`
//!    (10), on new connections and new reservation ids, latency from each frame's intended
//!    send time.
//! 5. From before the peak to after the soak, the sampler ([`sampler`]) reads the server's
//!    RSS and metrics every `--soak-sample-s` (5 s) and prints a row on stderr.
//! 6. The verdict (exit 1 when it fails, with every reason):
//!    - any answer but ok and the pools' own refusals (sold_out and the rule refusals),
//!      counted by the server over the whole soak (`busy`, `holds_limit_reached`, a
//!      follow-up that finds its hold `expired` or `not_found`, ...), and anything this
//!      client saw refused, timed out or lost;
//!    - RSS growth above `--soak-rss-growth-pct` (5%) after the warm-up: from the first
//!      sample after the warm-up (the baseline) to the largest later sample. The warm-up
//!      is the first `--soak-warmup-pct` (20%) of the soak, after the peak measurement;
//!      on a server that exports retention evictions it lasts, if that is later, until
//!      every core has evicted a retained record (its retention store is at its budget:
//!      from there on it does not grow), provided two samples remain after it;
//!    - `shardcap_oversell_detected_total` above 0 (or no readable metrics at all);
//!    - the soak answered less than `--soak-sustained-pct` (95%) of its intended rate (the
//!      server did not sustain the load), or the server died.
//!
//! Exit codes: 0 the soak passed; 1 it failed; 2 bad usage or a setup failure.

mod sampler;
mod server;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use shardcap::protocol::Status;

use crate::args::{Plan, SoakServer};
use crate::driver;
use crate::report::Report;
use crate::setup::{self, Setup};
use crate::stats::Stats;
use sampler::{Metrics, Phase, Sample, Sampler};

/// Shortest warmup of the peak measurement, in seconds.
const PEAK_WARMUP_S_MIN: f64 = 1.0;
/// One step of filling the retention store before the peak, in seconds.
const FILL_STEP_S: f64 = 10.0;

/// Runs the soak; answers the exit code.
pub fn run(mut plan: Plan) -> i32 {
    let soak = plan.soak.clone().expect("a soak plan");
    let mut started = None;
    let (pid, admin) = match &soak.server {
        SoakServer::Start { bin, durability, data_dir } => {
            match server::Started::start(bin, *durability, data_dir.as_deref()) {
                Ok(s) => {
                    plan.server = s.addr.to_string();
                    let found = (s.pid(), s.admin.to_string());
                    eprintln!(
                        "soak: started {} (pid {}, {}, data port {}, admin {}); log {}",
                        bin.display(),
                        found.0,
                        durability.name(),
                        s.addr,
                        s.admin,
                        s.log_path().display()
                    );
                    started = Some(s);
                    found
                }
                Err(e) => return setup_failure(&e),
            }
        }
        SoakServer::Given { pid, admin } => (*pid, admin.clone()),
    };
    let metrics_url = format!("http://{}/metrics", admin.trim_start_matches("http://").trim_end_matches("/metrics"));
    let setup = match setup::prepare_within(&plan, setup::SETUP_TIMEOUT) {
        Ok(setup) => setup,
        Err(e) => return setup_failure(&e),
    };
    let sampler = Sampler::start(pid, metrics_url.clone(), Duration::from_secs_f64(soak.sample_s));

    // Each run has its own nonce: its reservation ids are new (a repeat would be answered
    // as one, and count nothing).
    let nonces = loop {
        let pair: (u32, u32) = (rand::random(), rand::random());
        if pair.0 != pair.1 {
            break pair;
        }
    };
    let mut peak_report = None;
    let mut outcomes: Vec<Stats> = Vec::new();
    let peak_ops = match soak.peak_ops {
        Some(ops) => ops,
        None => {
            sampler.set_phase(Phase::Peak);
            let mut filled_s = 0.0;
            while filled_s < soak.fill_max_s && !sampler.retention_store_full() {
                let mut fill_plan = plan.clone();
                fill_plan.rate_ops_per_s = 0.0;
                fill_plan.warmup_s = 0.0;
                fill_plan.duration_s = FILL_STEP_S;
                fill_plan.max_ops = None;
                match driver::run(&fill_plan, &setup, rand::random()) {
                    Ok(outcome) => outcomes.push(outcome.stats),
                    Err(e) => return setup_failure(&e),
                }
                filled_s += FILL_STEP_S;
            }
            if filled_s > 0.0 {
                eprintln!("soak: {filled_s} s of closed loop to fill the retention store");
            }
            let mut peak_plan = plan.clone();
            peak_plan.rate_ops_per_s = 0.0;
            peak_plan.warmup_s = (2.0 * plan.ttl_ms as f64 / 1e3).max(PEAK_WARMUP_S_MIN);
            peak_plan.duration_s = soak.peak_s;
            peak_plan.max_ops = None;
            let outcome = match driver::run(&peak_plan, &setup, nonces.0) {
                Ok(outcome) => outcome,
                Err(e) => return setup_failure(&e),
            };
            let report = Report::new(&peak_plan, &setup, &outcome, nonces.0).json;
            let ops = report["ops_per_sec"].as_f64().unwrap_or(0.0);
            eprintln!("soak: peak {ops:.0} ops/s (closed loop, {} s after {} s)", soak.peak_s, peak_plan.warmup_s);
            peak_report = Some(report);
            outcomes.push(outcome.stats);
            ops
        }
    };
    let target = peak_ops * soak.load_pct / 100.0;
    if !(target.is_finite() && target >= 1.0) {
        return setup_failure(&format!("no peak to run at ({peak_ops:.0} ops/s measured)"));
    }
    let mut soak_plan = plan.clone();
    soak_plan.rate_ops_per_s = target;
    soak_plan.warmup_s = 0.0;
    soak_plan.duration_s = soak.duration_s;
    soak_plan.max_ops = None;
    eprintln!("soak: {} s open loop at {target:.0} ops/s ({}% of {peak_ops:.0})", soak.duration_s, soak.load_pct);
    sampler.set_phase(Phase::Soak);
    let soak_start_s = sampler.elapsed_s();
    let outcome = match driver::run(&soak_plan, &setup, nonces.1) {
        Ok(outcome) => outcome,
        Err(e) => return setup_failure(&e),
    };
    let soak_end_s = sampler.elapsed_s();
    sampler.set_phase(Phase::Done);
    let run_report = Report::new(&soak_plan, &setup, &outcome, nonces.1).json;
    outcomes.push(outcome.stats);
    let samples = sampler.finish(pid, &metrics_url);
    let server_alive = match started.as_mut() {
        Some(s) => s.is_running(),
        None => server::rss_bytes(pid).is_some(),
    };

    let judged = Judged {
        plan: &plan,
        setup: &setup,
        samples: &samples,
        outcomes: &outcomes,
        soak_start_s,
        soak_end_s,
        peak_ops,
        target,
        achieved: run_report["ops_per_sec"].as_f64().unwrap_or(0.0),
        server_alive,
    };
    let (failures, mut json) = judged.verdict();
    json["peak"] = peak_report.unwrap_or(Value::Null);
    json["run"] = run_report;
    json["server"] = match (&soak.server, &started) {
        (SoakServer::Start { bin, durability, .. }, Some(s)) => json!({
            "started": true,
            "bin": bin.display().to_string(),
            "durability": durability.name(),
            "addr": s.addr.to_string(),
            "admin": s.admin.to_string(),
            "pid": pid,
            "cores": setup.hello.core_count,
            "log": if failures.is_empty() { Value::Null } else { json!(s.log_path().display().to_string()) },
        }),
        _ => json!({
            "started": false,
            "durability": Value::Null,
            "addr": plan.server,
            "admin": admin,
            "pid": pid,
            "cores": setup.hello.core_count,
        }),
    };
    eprint!("{}", summary(&json));
    println!("{json}");
    if let Some(s) = started {
        s.finish(!failures.is_empty());
    }
    if failures.is_empty() { 0 } else { 1 }
}

fn setup_failure(message: &str) -> i32 {
    eprintln!("error: {message}");
    2
}

/// Everything the verdict looks at.
struct Judged<'a> {
    plan: &'a Plan,
    setup: &'a Setup,
    samples: &'a [Sample],
    /// What this client counted in each run (the peak's, if measured, then the soak's).
    outcomes: &'a [Stats],
    soak_start_s: f64,
    soak_end_s: f64,
    peak_ops: f64,
    target: f64,
    achieved: f64,
    server_alive: bool,
}

/// RSS after the warm-up.
#[derive(Debug, PartialEq)]
struct RssCheck {
    warmup_end_s: f64,
    warmup_end_reason: &'static str,
    baseline_bytes: u64,
    max_after_bytes: u64,
    growth_pct: f64,
}

impl Judged<'_> {
    /// The failures (empty: the soak passed) and the JSON report without the runs' own.
    fn verdict(&self) -> (Vec<String>, Value) {
        let soak = self.plan.soak.as_ref().expect("a soak plan");
        let mut failures = Vec::new();
        let scraped: Vec<(&Sample, &Metrics)> =
            self.samples.iter().filter_map(|s| s.metrics.as_ref().ok().map(|m| (s, m))).collect();

        // Refusals other than the pools' own: the server's count over the soak, and this
        // client's (which also sees frame-level refusals).
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        if let (Some((_, first)), Some((_, last))) = (scraped.first(), scraped.last()) {
            for (status, count) in &last.refused {
                let delta = count.saturating_sub(first.refused.get(status).copied().unwrap_or(0));
                if delta > 0 {
                    refused.insert(status.clone(), delta);
                }
            }
        }
        let mut pool_refusals: BTreeMap<String, u64> = BTreeMap::new();
        let (mut timeouts, mut lost, mut connection_failures) = (0, 0, 0);
        for stats in self.outcomes {
            for (code, &count) in stats.errors.iter().enumerate().filter(|(_, c)| **c > 0) {
                let name = Status::from_u8(code as u8).map_or_else(|| format!("status_{code}"), |s| s.name().into());
                let map = if sampler::allowed(&name) { &mut pool_refusals } else { &mut refused };
                let entry = map.entry(name).or_default();
                *entry = (*entry).max(count);
            }
            timeouts += stats.timeouts;
            lost += stats.lost;
            connection_failures += stats.connection_failures;
        }
        if !refused.is_empty() {
            let listed: Vec<String> = refused.iter().map(|(s, n)| format!("{s} {n}")).collect();
            // The first interval in which the server's count rose.
            let before = scraped.first().map_or(0, |(_, m)| m.refused_total());
            let first_seen = scraped
                .windows(2)
                .find(|w| w[1].1.refused_total() > before)
                .map_or(String::new(), |w| format!(" (first between t={:.1} s and t={:.1} s)", w[0].0.t_s, w[1].0.t_s));
            failures.push(format!("refused other than by the pools' rules: {}{first_seen}", listed.join(", ")));
        }
        if timeouts + lost + connection_failures > 0 {
            failures.push(format!(
                "unanswered: {timeouts} frames timed out, {lost} lost with {connection_failures} failed connections"
            ));
        }

        let oversell = scraped.last().map(|(_, m)| m.oversell);
        match oversell {
            Some(0) => {}
            Some(n) => failures.push(format!("shardcap_oversell_detected_total is {n}")),
            None => failures.push("no scrape of the metrics succeeded".into()),
        }

        let rss = self.rss_check(soak.warmup_pct, soak.duration_s);
        match &rss {
            Ok(r) if r.growth_pct > soak.rss_growth_pct => failures.push(format!(
                "RSS grew {:.1}% after the warm-up ({:.1} MiB at t={:.1} s to {:.1} MiB; at most {}%)",
                r.growth_pct,
                mib(r.baseline_bytes),
                r.warmup_end_s,
                mib(r.max_after_bytes),
                soak.rss_growth_pct
            )),
            Ok(_) => {}
            Err(e) => failures.push(e.clone()),
        }

        if self.achieved < soak.sustained_pct / 100.0 * self.target {
            failures.push(format!(
                "the server did not sustain the load: {:.0} ops/s answered of {:.0} intended ({:.0}%)",
                self.achieved,
                self.target,
                100.0 * self.achieved / self.target
            ));
        }
        if !self.server_alive {
            failures.push("the server died".into());
        }

        let last_metrics = scraped.last().map(|(_, m)| *m);
        let samples: Vec<Value> = self
            .samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let previous = i.checked_sub(1).map(|p| &self.samples[p]);
                let m = s.metrics.as_ref().ok();
                json!({
                    "t_s": round3(s.t_s),
                    "phase": s.phase.name(),
                    "rss_bytes": s.rss_bytes,
                    "ops_per_sec": sampler::ops_per_s(s, previous).map(f64::round),
                    "refused": sampler::refused_between(s, previous),
                    "holds_active": m.map(|m| m.holds_active),
                    "reservation_records": m.and_then(|m| m.reservation_records),
                    "retention_window_s": m.and_then(|m| m.retention_window_s.as_ref()).map(|w| w.values().copied().collect::<Vec<_>>()),
                    "retention_evictions": m.and_then(Metrics::evictions_total),
                    "oversell": m.map(|m| m.oversell),
                    "error": s.metrics.as_ref().err(),
                })
            })
            .collect();
        let rss_values: Vec<u64> = self.samples.iter().filter_map(|s| s.rss_bytes).collect();
        let window = last_metrics.and_then(Metrics::window_range_s);
        let json = json!({
            "soak": true,
            "verdict": if failures.is_empty() { "pass" } else { "fail" },
            "failures": failures,
            "workload": self.plan.workload.name(),
            "mode": self.plan.mode.name(),
            "connections": self.plan.connections,
            "depth": self.plan.depth,
            "ops_per_frame": self.plan.frame_ops_max(),
            "threads": self.plan.threads,
            "pools": self.setup.pool_names.len(),
            "sold_out_pools": self.plan.sold_out_pools,
            "users": self.plan.users,
            "ttl_ms": self.plan.ttl_ms,
            "minutes": soak.duration_s / 60.0,
            "load_pct": soak.load_pct,
            "peak_ops_per_sec": self.peak_ops.round(),
            "peak_measured": soak.peak_ops.is_none(),
            "target_ops_per_sec": self.target.round(),
            "sustained_pct_min": soak.sustained_pct,
            "achieved_ops_per_sec": self.achieved.round(),
            "soak_start_s": round3(self.soak_start_s),
            "soak_end_s": round3(self.soak_end_s),
            "refused": refused,
            "pool_refusals": pool_refusals,
            "oversell": oversell,
            "rss": match &rss {
                Ok(r) => json!({
                    "warmup_end_s": round3(r.warmup_end_s),
                    "warmup_end_reason": r.warmup_end_reason,
                    "baseline_bytes": r.baseline_bytes,
                    "max_after_bytes": r.max_after_bytes,
                    "growth_pct": (r.growth_pct * 100.0).round() / 100.0,
                    "limit_pct": soak.rss_growth_pct,
                    "min_bytes": rss_values.iter().min(),
                    "max_bytes": rss_values.iter().max(),
                }),
                Err(e) => json!({ "error": e, "limit_pct": soak.rss_growth_pct }),
            },
            "retention": {
                "window_s_min": window.map(|w| round3(w.0)),
                "window_s_max": window.map(|w| round3(w.1)),
                "evictions": last_metrics.and_then(Metrics::evictions_total),
            },
            "samples": samples,
        });
        (failures, json)
    }

    /// The RSS growth after the warm-up (see the module's header).
    fn rss_check(&self, warmup_pct: f64, duration_s: f64) -> Result<RssCheck, String> {
        let nominal_end_s = self.soak_start_s + duration_s * warmup_pct / 100.0;
        let soak_samples: Vec<&Sample> = self.samples.iter().filter(|s| s.t_s >= self.soak_start_s).collect();
        // Evictions per core when the soak started: the last sample before it.
        let at_start = self
            .samples
            .iter()
            .rev()
            .find(|s| s.t_s < self.soak_start_s)
            .and_then(|s| s.metrics.as_ref().ok())
            .and_then(|m| m.retention_evictions.clone())
            .unwrap_or_default();
        let store_full_s = soak_samples
            .iter()
            .find(|s| {
                let evictions = s.metrics.as_ref().ok().and_then(|m| m.retention_evictions.as_ref());
                evictions.is_some_and(|e| {
                    !e.is_empty() && e.iter().all(|(core, n)| *n > at_start.get(core).copied().unwrap_or(0))
                })
            })
            .map(|s| s.t_s);
        let with_rss_after = |t: f64| soak_samples.iter().filter(|s| s.t_s >= t && s.rss_bytes.is_some()).count();
        let (warmup_end_s, warmup_end_reason) = match store_full_s {
            Some(t) if t > nominal_end_s && with_rss_after(t) >= 2 => (t, "retention_store_full"),
            _ => (nominal_end_s, "warmup_pct"),
        };
        let mut after = soak_samples.iter().filter(|s| s.t_s >= warmup_end_s).filter_map(|s| s.rss_bytes);
        let baseline_bytes = after.next().ok_or("no RSS sample after the warm-up")?;
        let max_after_bytes = after.max().ok_or("only one RSS sample after the warm-up: nothing to compare")?;
        let growth_pct = 100.0 * (max_after_bytes as f64 / baseline_bytes as f64 - 1.0);
        Ok(RssCheck {
            warmup_end_s,
            warmup_end_reason,
            baseline_bytes,
            max_after_bytes,
            growth_pct: growth_pct.max(0.0),
        })
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

/// The summary printed on stderr after the table.
fn summary(j: &Value) -> String {
    let num = |v: &Value| v.as_f64().map_or_else(|| "n/a".to_string(), |x| format!("{x:.0}"));
    let mut out = String::new();
    out += &format!(
        "soak: {} ({}, {} pools, {} sold out), {} connections x depth {}, {:.0} s\n",
        j["workload"].as_str().unwrap_or(""),
        j["mode"].as_str().unwrap_or(""),
        j["pools"],
        j["sold_out_pools"],
        j["connections"],
        j["depth"],
        j["minutes"].as_f64().unwrap_or(0.0) * 60.0
    );
    out += &format!(
        "  throughput   peak {} ops/s ({}), target {} ({}%), answered {}\n",
        num(&j["peak_ops_per_sec"]),
        if j["peak_measured"] == true { "measured" } else { "given" },
        num(&j["target_ops_per_sec"]),
        j["load_pct"],
        num(&j["achieved_ops_per_sec"])
    );
    let run = &j["run"];
    out += &format!(
        "  latency (us) p50 {}  p99 {}  p99.9 {}  max {}\n",
        run["p50_us"], run["p99_us"], run["p999_us"], run["max_us"]
    );
    let rss = &j["rss"];
    if rss["error"].is_string() {
        out += &format!("  rss          {}\n", rss["error"].as_str().unwrap_or(""));
    } else {
        out += &format!(
            "  rss          {:.1} MiB after the warm-up (t={} s, {}), at most {:.1} MiB later: +{}% (limit {}%)\n",
            mib(rss["baseline_bytes"].as_u64().unwrap_or(0)),
            rss["warmup_end_s"],
            rss["warmup_end_reason"].as_str().unwrap_or(""),
            mib(rss["max_after_bytes"].as_u64().unwrap_or(0)),
            rss["growth_pct"],
            rss["limit_pct"]
        );
    }
    let retention = &j["retention"];
    let window = match (retention["window_s_min"].as_f64(), retention["window_s_max"].as_f64()) {
        (Some(lo), Some(hi)) => format!("{lo:.1}..{hi:.1} s"),
        _ => "n/a".to_string(),
    };
    out += &format!("  retention    window {window}, evictions {}\n", num(&retention["evictions"]));
    let list = |v: &Value| {
        v.as_object()
            .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    };
    out += &format!("  refused      {} (the pools' own: {})\n", list(&j["refused"]), list(&j["pool_refusals"]));
    out += &format!("  oversell     {}\n", num(&j["oversell"]));
    out += &format!("  verdict      {}\n", j["verdict"].as_str().unwrap_or(""));
    for failure in j["failures"].as_array().into_iter().flatten() {
        out += &format!("    - {}\n", failure.as_str().unwrap_or(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;
    use shardcap::protocol::control::Hello;

    fn plan() -> Plan {
        let argv =
            ["shardcap-loadgen", "--soak", "--server-pid", "1", "--admin", "127.0.0.1:1", "--soak-minutes", "1.5"];
        Plan::resolve(Args::parse_from(argv)).expect("valid plan")
    }

    fn setup() -> Setup {
        let hello = Hello {
            protocol_version: 1,
            user_hash: 1,
            core_count: 2,
            this_core: 0,
            shared_port: 1,
            frame_size_max_bytes: 1 << 20,
            batch_operations_max: 8192,
            inflight_frames_max: 1024,
            core_ports: vec![2, 3],
        };
        Setup { hello, pool_names: vec!["lg-0".into()], pool_ids: vec![1], conn_addrs: vec![], conn_cores: vec![] }
    }

    /// A sample at `t_s` with `rss_mib` MiB and, if given, retention evictions per core.
    fn sample(t_s: f64, rss_mib: u64, evictions: Option<[u64; 2]>) -> Sample {
        let metrics = Metrics {
            retention_evictions: evictions.map(|e| BTreeMap::from([(0, e[0]), (1, e[1])])),
            ..Metrics::default()
        };
        Sample { t_s, phase: Phase::Soak, rss_bytes: Some(rss_mib << 20), metrics: Ok(metrics) }
    }

    fn judged<'a>(plan: &'a Plan, setup: &'a Setup, samples: &'a [Sample], outcomes: &'a [Stats]) -> Judged<'a> {
        Judged {
            plan,
            setup,
            samples,
            outcomes,
            soak_start_s: 10.0,
            soak_end_s: 110.0,
            peak_ops: 1000.0,
            target: 800.0,
            achieved: 800.0,
            server_alive: true,
        }
    }

    #[test]
    fn rss_is_judged_from_the_first_sample_after_the_warmup() {
        let (plan, setup) = (plan(), setup());
        // A soak of 90 s from t=10: the warm-up (20%) ends at t=28. Growth before it does
        // not count; after it, 100 -> 104 MiB is within 5%.
        let samples: Vec<Sample> = [(0.0, 50), (10.0, 60), (20.0, 90), (28.0, 100), (60.0, 104), (100.0, 103)]
            .map(|(t, m)| sample(t, m, None))
            .into();
        let j = judged(&plan, &setup, &samples, &[]);
        let r = j.rss_check(20.0, 90.0).unwrap();
        assert_eq!((r.warmup_end_s, r.warmup_end_reason), (28.0, "warmup_pct"));
        assert_eq!((r.baseline_bytes, r.max_after_bytes), (100 << 20, 104 << 20));
        assert!((r.growth_pct - 4.0).abs() < 1e-9, "{r:?}");
        let (failures, json) = j.verdict();
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!(json["verdict"], "pass");
        assert_eq!(json["rss"]["growth_pct"], 4.0);

        // 100 -> 106 MiB after the warm-up fails.
        let mut growing = samples.clone();
        growing[4] = sample(60.0, 106, None);
        let (failures, json) = judged(&plan, &setup, &growing, &[]).verdict();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with("RSS grew 6.0% after the warm-up"), "{failures:?}");
    }

    #[test]
    fn the_warmup_lasts_until_every_core_evicted_when_that_is_later() {
        let (plan, setup) = (plan(), setup());
        // Core 1 first evicts at t=50 (after the nominal end at t=28): the baseline is the
        // sample at t=50, and the growth while the store filled does not count.
        let samples = [
            sample(5.0, 50, Some([0, 0])),
            sample(28.0, 80, Some([3, 0])),
            sample(50.0, 100, Some([9, 4])),
            sample(80.0, 101, Some([20, 9])),
            sample(100.0, 102, Some([30, 15])),
        ];
        let j = judged(&plan, &setup, &samples, &[]);
        let r = j.rss_check(20.0, 90.0).unwrap();
        assert_eq!((r.warmup_end_s, r.warmup_end_reason), (50.0, "retention_store_full"));
        assert_eq!((r.baseline_bytes, r.max_after_bytes), (100 << 20, 102 << 20));
        // Too late to leave two samples: the nominal warm-up stands.
        let late = [
            sample(5.0, 50, Some([0, 0])),
            sample(28.0, 80, Some([0, 0])),
            sample(60.0, 90, Some([0, 0])),
            sample(100.0, 100, Some([1, 1])),
        ];
        let r = judged(&plan, &setup, &late, &[]).rss_check(20.0, 90.0).unwrap();
        assert_eq!((r.warmup_end_s, r.warmup_end_reason), (28.0, "warmup_pct"));
        // One sample after the warm-up is not enough to judge.
        let short = [sample(5.0, 50, None), sample(100.0, 80, None)];
        let error = judged(&plan, &setup, &short, &[]).rss_check(20.0, 90.0).unwrap_err();
        assert_eq!(error, "only one RSS sample after the warm-up: nothing to compare");
    }

    #[test]
    fn refusals_other_than_the_pools_own_fail_the_soak_and_sold_out_does_not() {
        let (plan, setup) = (plan(), setup());
        let mut stats = Stats::default();
        stats.errors[Status::SoldOut as usize] = 40;
        stats.errors[Status::UserLimitReached as usize] = 2;
        let flat = [sample(0.0, 100, None), sample(30.0, 100, None), sample(100.0, 100, None)];
        let (failures, json) = judged(&plan, &setup, &flat, std::slice::from_ref(&stats)).verdict();
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!(json["pool_refusals"], json!({"sold_out": 40, "user_limit_reached": 2}));
        assert_eq!(json["refused"], json!({}));

        // The server counted holds_limit_reached from t=30 on; this client saw busy.
        let mut server_refused = flat.clone();
        for (s, n) in server_refused.iter_mut().zip([0, 5, 9]) {
            let m = s.metrics.as_mut().unwrap();
            m.refused.insert("holds_limit_reached".into(), n);
        }
        stats.errors[Status::Busy as usize] = 3;
        stats.timeouts = 1;
        let (failures, json) = judged(&plan, &setup, &server_refused, std::slice::from_ref(&stats)).verdict();
        assert_eq!(json["refused"], json!({"busy": 3, "holds_limit_reached": 9}));
        assert_eq!(
            failures,
            [
                "refused other than by the pools' rules: busy 3, holds_limit_reached 9 (first between t=0.0 s and t=30.0 s)",
                "unanswered: 1 frames timed out, 0 lost with 0 failed connections",
            ]
        );

        // Oversell, a dead server and a rate not sustained each fail it.
        let mut oversold = flat.clone();
        oversold[2].metrics.as_mut().unwrap().oversell = 1;
        let mut j = judged(&plan, &setup, &oversold, &[]);
        j.server_alive = false;
        j.achieved = 700.0;
        let (failures, _) = j.verdict();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert_eq!(failures[0], "shardcap_oversell_detected_total is 1");
        assert!(failures[1].starts_with("the server did not sustain the load: 700 ops/s answered of 800"));
        assert_eq!(failures[2], "the server died");
    }
}
