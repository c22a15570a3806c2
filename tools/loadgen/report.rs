//! The report: one JSON object (`--json`) or a table for people, from the same numbers.
//!
//! The measured duration runs from the end of the warmup to the later of "the last
//! connection stopped sending" and "the last recorded answer arrived", so the answers
//! drained after the end are inside the window they are counted in, and a drain that
//! gives up does not stretch it. Latency is the round trip of a frame, in µs.

use serde_json::{Map, Value, json};
use shardcap::protocol::Status;

use crate::args::Plan;
use crate::driver::Outcome;
use crate::setup::Setup;

/// The numbers of a finished run.
pub struct Report {
    /// The JSON object (the table is drawn from it too).
    pub json: Value,
}

impl Report {
    /// Builds the report of a run.
    pub fn new(plan: &Plan, setup: &Setup, outcome: &Outcome, nonce: u32) -> Report {
        let s = &outcome.stats;
        let start_ns = (plan.warmup_s * 1e9) as u64;
        let end_ns = s.stopped_sending_ns.max(s.last_answer_ns);
        let duration_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        let per_s = |n: u64| if duration_s > 0.0 { n as f64 / duration_s } else { 0.0 };
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        let quantile = |q: f64| if s.frames == 0 { 0.0 } else { us(s.latency_ns.value_at_quantile(q)) };
        let lag = |q: f64| if s.send_lag_ns.is_empty() { 0.0 } else { us(s.send_lag_ns.value_at_quantile(q)) };
        let mut errors = Map::new();
        for (code, &count) in s.errors.iter().enumerate() {
            if count > 0 {
                let name = Status::from_u8(code as u8).map_or_else(|| format!("status_{code}"), |st| st.name().into());
                errors.insert(name, json!(count));
            }
        }
        let cpu_s = s.cpu_ns.map(|ns| ns as f64 / 1e9);
        let threads = (plan.threads as u32).min(plan.connections);
        let run_s = end_ns as f64 / 1e9;
        // Two literals: one would exceed serde_json's macro recursion limit.
        let setting = json!({
            "workload": plan.workload.name(),
            "mode": plan.mode.name(),
            "shape": plan.shape.map(|s| s.name()),
            "server": plan.server,
            "server_cores": setup.hello.core_count,
            "connections": plan.connections,
            "connections_per_core": outcome.connections_per_core,
            "depth": plan.depth,
            "ops_per_frame": plan.frame_ops_max(),
            "threads": threads,
            "rate": plan.rate_ops_per_s,
            "users": plan.users,
            "user_dist": plan.user_dist.name(),
            "pool_dist": plan.pool_dist.name(),
            "zipf_theta": plan.zipf_theta,
            "qty": plan.qty,
            "ttl_ms": plan.ttl_ms,
            "release_ratio": plan.release_ratio,
            "warmup_s": plan.warmup_s,
            "max_ops": plan.max_ops,
            "seed": plan.seed,
            "run_nonce": format!("{nonce:08x}"),
        });
        let measured = json!({
            "duration_s": (duration_s * 1e6).round() / 1e6,
            "frames": s.frames,
            "ops": s.ops,
            "ops_per_sec": per_s(s.ops).round(),
            "frames_per_sec": per_s(s.frames).round(),
            "p50_us": quantile(0.50),
            "p90_us": quantile(0.90),
            "p99_us": quantile(0.99),
            "p999_us": quantile(0.999),
            "max_us": if s.frames == 0 { 0.0 } else { us(s.latency_ns.max()) },
            "send_lag_p50_us": lag(0.50),
            "send_lag_p99_us": lag(0.99),
            "send_lag_max_us": if s.send_lag_ns.is_empty() { 0.0 } else { us(s.send_lag_ns.max()) },
            "mean_us": if s.frames == 0 { 0.0 } else { (s.latency_ns.mean() / 100.0).round() / 10.0 },
            "ok": {
                "ping": s.ok.ping,
                "reserve": s.ok.reserve,
                "confirm": s.ok.confirm,
                "release": s.ok.release,
                "extend": s.ok.extend,
                "lookup": s.ok.lookup,
            },
            "errors": errors,
            "timeouts": s.timeouts,
            "lost": s.lost,
            "connection_failures": s.connection_failures,
            "unsent_frames": s.unsent_frames,
            "follow_ups_unsent": s.follow_ups_unsent,
            "sent_frames": s.sent_frames,
            "sent_ops": s.sent_ops,
            "loadgen_cpu_s": cpu_s.map(|c| (c * 1e3).round() / 1e3),
            "loadgen_cpu_util": cpu_s.filter(|_| run_s > 0.0).map(|c| (c / (run_s * threads as f64) * 1e3).round() / 1e3),
            "pools": setup.pool_names,
        });
        let mut fields = Map::new();
        for part in [setting, measured] {
            if let Value::Object(map) = part {
                fields.extend(map);
            }
        }
        Report { json: Value::Object(fields) }
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let j = &self.json;
        let num = |k: &str| j[k].as_f64().unwrap_or(0.0);
        let int = |k: &str| j[k].as_u64().unwrap_or(0);
        let mut out = String::new();
        let rate =
            if num("rate") > 0.0 { format!("open loop at {} ops/s", num("rate")) } else { "closed loop".to_string() };
        out += &format!(
            "shardcap-loadgen: {} ({}), {} connections x depth {} x {} ops/frame, {} thread(s), {}\n",
            j["workload"].as_str().unwrap_or(""),
            j["mode"].as_str().unwrap_or(""),
            int("connections"),
            int("depth"),
            int("ops_per_frame"),
            int("threads"),
            rate
        );
        out += &format!("  duration      {:>12.3} s\n", num("duration_s"));
        out += &format!("  frames        {:>12}   {:>12.0} /s\n", int("frames"), num("frames_per_sec"));
        out += &format!("  operations    {:>12}   {:>12.0} /s\n", int("ops"), num("ops_per_sec"));
        out += &format!(
            "  latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}\n",
            num("p50_us"),
            num("p90_us"),
            num("p99_us"),
            num("p999_us"),
            num("max_us"),
            num("mean_us")
        );
        if num("rate") > 0.0 {
            out += &format!(
                "  send lag (us) p50 {}  p99 {}  max {}  (written after the intended time); {} due frames unsent\n",
                num("send_lag_p50_us"),
                num("send_lag_p99_us"),
                num("send_lag_max_us"),
                int("unsent_frames")
            );
        }
        let ok = &j["ok"];
        out += &format!(
            "  ok            ping {}  reserve {}  confirm {}  release {}  extend {}  lookup {}\n",
            ok["ping"], ok["reserve"], ok["confirm"], ok["release"], ok["extend"], ok["lookup"]
        );
        let errors = j["errors"]
            .as_object()
            .map(|m| m.iter().map(|(name, count)| format!("{name} {count}")).collect::<Vec<_>>().join("  "));
        out += &format!("  errors        {}\n", errors.filter(|e| !e.is_empty()).unwrap_or_else(|| "none".into()));
        out += &format!(
            "  unanswered    timeouts {}  lost {}  (connection failures {})\n",
            int("timeouts"),
            int("lost"),
            int("connection_failures")
        );
        if let Some(cpu) = j["loadgen_cpu_s"].as_f64() {
            out += &format!(
                "  loadgen cpu   {cpu:.3} s  ({:.0}% of its threads)\n",
                j["loadgen_cpu_util"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        let pools: Vec<&str> =
            j["pools"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
        let shown = if pools.len() > 4 {
            format!("{} ... {} ({} pools)", pools[0], pools[pools.len() - 1], pools.len())
        } else if pools.is_empty() {
            "none".to_string()
        } else {
            pools.join(", ")
        };
        out += &format!("  pools         {shown}\n");
        out
    }
}
