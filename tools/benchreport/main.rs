//! `shardcap-benchreport`: turns the raw results of `tools/bench-vs-redis` into the
//! comparison table, `results.json` and an SVG chart.
//!
//! ```text
//! shardcap-benchreport RAW.json [--out docs/bench] [--linear-y]
//! ```
//!
//! It prints one Markdown table per durability pair (a Redis setup measured against the
//! shardcap setup that keeps the same promise), writes `<out>/results.json` (the
//! comparison rows plus the raw input, pretty-printed) and draws
//! `<out>/reserve-vs-redis.svg`: ops/s against pipeline depth for Redis's Lua reserve,
//! shardcap's reserve through the shared port (`plain`) and straight to the owning core
//! (`shard-aware`), and shardcap's `ping`, the I/O ceiling (what the network path alone allows). The SVG
//! holds its text as `<text>` elements that the viewer renders with its own fonts; the
//! layout uses plotters' built-in estimate of text widths, so no font file is read.
//!
//! # The raw format (`shardcap-bench-raw/1`)
//!
//! ```json
//! {
//!   "format": "shardcap-bench-raw/1",
//!   "date": "2025-01-31T12:00:00Z",
//!   "quick": false,
//!   "machine": { "nproc": 2, "cpu_model": "AMD EPYC", "kernel": "6.1.0",
//!                "redis_version": "7.0.15", "shardcap_commit": "abc1234" },
//!   "settings": { "connections": 50, "depths": [1, 8, 32], "seconds_per_point": 10 },
//!   "notes": ["only the in-memory pair is measured"],
//!   "pairs": [
//!     { "name": "memory",
//!       "redis": "no persistence (--save '' --appendonly no)",
//!       "shardcap": "in memory",
//!       "runs": [
//!         { "system": "redis", "workload": "lua-reserve", "mode": "plain", "depth": 1,
//!           "cpu_busy_pct_before": 3,
//!           "result": { "ops_per_sec": 61000.0, "p50_us": 750.0, "p99_us": 1500.0 } },
//!         { "system": "shardcap", "workload": "reserve", "mode": "shard-aware", "depth": 1,
//!           "result": { "ops_per_sec": 150000.0, "p50_us": 300.0, "p99_us": 900.0 } }
//!       ] }
//!   ]
//! }
//! ```
//!
//! `machine` and `settings` are free-form objects shown as given (`cpu_model`, `nproc`,
//! `kernel` and `redis_version` go into the chart's title when present). Each run names
//! its `system` (`redis` or `shardcap`), `workload` (`lua-reserve` for Redis; `reserve` or
//! `ping` for shardcap), `mode` (`plain` or `shard-aware`) and pipeline `depth` (other
//! fields, such as how busy the machine was before the point, are kept as given); its
//! `result` needs only `ops_per_sec`, `p50_us` and `p99_us` (latencies in microseconds)
//! and may carry anything else (the load generator's whole answer, Redis's CSV line),
//! which is kept untouched in `results.json`. Runs of other workloads are kept but not
//! tabulated.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// The raw format this tool reads.
const RAW_FORMAT: &str = "shardcap-bench-raw/1";
/// The format of the `results.json` it writes.
const RESULTS_FORMAT: &str = "shardcap-bench-results/1";
/// Width and height of the chart, in pixels.
const CHART_SIZE_PX: (u32, u32) = (1000, 640);

#[derive(Parser)]
#[command(about = "Prints the shardcap-vs-Redis table and writes results.json and the SVG chart")]
struct Args {
    /// The raw results written by tools/bench-vs-redis (format shardcap-bench-raw/1).
    raw: PathBuf,
    /// Directory for results.json and reserve-vs-redis.svg (created if missing).
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Draw ops/s on a linear axis from zero instead of a logarithmic one. The log axis is
    /// the default because ops/s spans more than a factor of ten from depth 1 to depth 32,
    /// and a linear one squeezes the depth-1 points together at the bottom.
    #[arg(long)]
    linear_y: bool,
}

#[derive(Deserialize)]
struct Raw {
    format: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    quick: bool,
    #[serde(default)]
    machine: serde_json::Map<String, Value>,
    #[serde(default)]
    settings: Value,
    #[serde(default)]
    notes: Vec<String>,
    pairs: Vec<RawPair>,
    /// The memory measurement, when the run made one: any object; the report prints its
    /// `holds`, `rss_bytes` and `bytes_per_hold` fields and copies it whole.
    #[serde(default)]
    memory: Option<Value>,
}

/// A Redis setup and the shardcap setup that keeps the same durability promise.
#[derive(Deserialize)]
struct RawPair {
    name: String,
    #[serde(default)]
    redis: String,
    #[serde(default)]
    shardcap: String,
    runs: Vec<RawRun>,
}

#[derive(Deserialize)]
struct RawRun {
    system: String,
    workload: String,
    mode: String,
    depth: u32,
    result: Value,
}

/// The three numbers the report uses from a run's result.
#[derive(Clone, Copy)]
struct Point {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Point {
    fn from_result(result: &Value) -> Result<Point> {
        let field = |name: &str| -> Result<f64> {
            let value = result
                .get(name)
                .and_then(Value::as_f64)
                .with_context(|| format!("result has no numeric `{name}`: {result}"))?;
            ensure!(value.is_finite() && value >= 0.0, "`{name}` is {value}");
            Ok(value)
        };
        Ok(Point { ops_per_sec: field("ops_per_sec")?, p50_us: field("p50_us")?, p99_us: field("p99_us")? })
    }

    fn to_json(self) -> Value {
        json!({ "ops_per_sec": self.ops_per_sec, "p50_us": self.p50_us, "p99_us": self.p99_us })
    }
}

/// One line of the chart: which runs it takes and how it looks.
struct Series {
    system: &'static str,
    workload: &'static str,
    mode: &'static str,
    label: &'static str,
    color: RGBColor,
    dashed: bool,
}

const REDIS: usize = 0;
/// The shardcap reserve series in table order, each with the ping series of its mode (a
/// reserve is compared with the I/O ceiling of the same path).
const RESERVE_MODES: [(usize, &str, usize); 2] = [(1, "plain", 3), (2, "shard-aware", 4)];
const SERIES: [Series; 5] = [
    Series {
        system: "redis",
        workload: "lua-reserve",
        mode: "plain",
        label: "Redis Lua reserve",
        color: RGBColor(200, 30, 30),
        dashed: false,
    },
    Series {
        system: "shardcap",
        workload: "reserve",
        mode: "plain",
        label: "shardcap reserve (plain)",
        color: RGBColor(30, 80, 200),
        dashed: false,
    },
    Series {
        system: "shardcap",
        workload: "reserve",
        mode: "shard-aware",
        label: "shardcap reserve (shard-aware)",
        color: RGBColor(20, 150, 70),
        dashed: false,
    },
    Series {
        system: "shardcap",
        workload: "ping",
        mode: "plain",
        label: "shardcap ping, plain (I/O ceiling)",
        color: RGBColor(120, 120, 120),
        dashed: true,
    },
    Series {
        system: "shardcap",
        workload: "ping",
        mode: "shard-aware",
        label: "shardcap ping, shard-aware (I/O ceiling)",
        color: RGBColor(60, 60, 60),
        dashed: true,
    },
];

/// A durability pair with its runs sorted into series.
struct Pair {
    name: String,
    redis: String,
    shardcap: String,
    depths: Vec<u32>,
    /// `points[series]` holds (depth, point) sorted by depth.
    points: Vec<Vec<(u32, Point)>>,
    /// Runs that reported failed operations, timeouts or lost frames.
    warnings: Vec<String>,
}

impl Pair {
    fn from_raw(raw: &RawPair) -> Result<Pair> {
        let mut points: Vec<Vec<(u32, Point)>> = vec![Vec::new(); SERIES.len()];
        let mut depths = BTreeSet::new();
        let mut warnings = Vec::new();
        for run in &raw.runs {
            ensure!(run.depth >= 1, "pair {}: a run has depth 0", raw.name);
            let Some(index) =
                SERIES.iter().position(|s| s.system == run.system && s.workload == run.workload && s.mode == run.mode)
            else {
                continue;
            };
            let point = Point::from_result(&run.result).with_context(|| {
                format!("pair {}: {} {} {} at depth {}", raw.name, run.system, run.workload, run.mode, run.depth)
            })?;
            if points[index].iter().any(|&(depth, _)| depth == run.depth) {
                bail!("pair {}: two runs of {} at depth {}", raw.name, SERIES[index].label, run.depth);
            }
            points[index].push((run.depth, point));
            let trouble = result_trouble(&run.result);
            if !trouble.is_empty() {
                warnings.push(format!("{} at depth {}: {}", SERIES[index].label, run.depth, trouble.join(", ")));
            }
            depths.insert(run.depth);
        }
        for series in &mut points {
            series.sort_by_key(|&(depth, _)| depth);
        }
        Ok(Pair {
            name: raw.name.clone(),
            redis: raw.redis.clone(),
            shardcap: raw.shardcap.clone(),
            depths: depths.into_iter().collect(),
            points,
            warnings,
        })
    }

    fn at(&self, series: usize, depth: u32) -> Option<Point> {
        self.points[series].iter().find(|&&(d, _)| d == depth).map(|&(_, point)| point)
    }

    /// The table rows: one per depth and shardcap reserve mode measured at that depth.
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for &depth in &self.depths {
            let redis = self.at(REDIS, depth);
            let mut modes: Vec<(&'static str, Option<Point>, Option<Point>)> = RESERVE_MODES
                .iter()
                .filter_map(|&(series, mode, ping)| {
                    self.at(series, depth).map(|point| (mode, Some(point), self.at(ping, depth)))
                })
                .collect();
            if modes.is_empty() {
                modes.push(("-", None, None));
            }
            for (mode, shardcap, ping) in modes {
                let ratio = match (shardcap, redis) {
                    (Some(s), Some(r)) if r.ops_per_sec > 0.0 => Some(s.ops_per_sec / r.ops_per_sec),
                    _ => None,
                };
                let reserve_over_ping_pct = match (shardcap, ping) {
                    (Some(s), Some(p)) if p.ops_per_sec > 0.0 => Some(100.0 * s.ops_per_sec / p.ops_per_sec),
                    _ => None,
                };
                rows.push(Row { depth, mode, redis, shardcap, ratio, ping, reserve_over_ping_pct });
            }
        }
        rows
    }
}

/// What a result says went wrong, if it says so: nonzero `errors` (a count, or an object of
/// counts by status), `timeouts` or `lost`. Fields a client does not report are skipped.
fn result_trouble(result: &Value) -> Vec<String> {
    let mut trouble = Vec::new();
    match result.get("errors") {
        Some(Value::Object(by_status)) => {
            for (status, count) in by_status {
                if count.as_f64().is_some_and(|c| c > 0.0) {
                    trouble.push(format!("{count} {status}"));
                }
            }
        }
        Some(count) if count.as_f64().is_some_and(|c| c > 0.0) => trouble.push(format!("{count} errors")),
        _ => {}
    }
    for field in ["timeouts", "lost"] {
        if let Some(count) = result.get(field).filter(|c| c.as_f64().is_some_and(|c| c > 0.0)) {
            trouble.push(format!("{count} {field}"));
        }
    }
    trouble
}

struct Row {
    depth: u32,
    mode: &'static str,
    redis: Option<Point>,
    shardcap: Option<Point>,
    ratio: Option<f64>,
    ping: Option<Point>,
    reserve_over_ping_pct: Option<f64>,
}

impl Row {
    fn to_json(&self) -> Value {
        json!({
            "depth": self.depth,
            "shardcap_mode": self.mode,
            "redis": self.redis.map(Point::to_json),
            "shardcap": self.shardcap.map(Point::to_json),
            "ratio": self.ratio,
            "ping": self.ping.map(Point::to_json),
            "reserve_over_ping_pct": self.reserve_over_ping_pct,
        })
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.raw).with_context(|| format!("reading {}", args.raw.display()))?;
    let raw_value: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", args.raw.display()))?;
    let raw: Raw = serde_json::from_value(raw_value.clone())
        .with_context(|| format!("{} is not in the {RAW_FORMAT} format", args.raw.display()))?;
    ensure!(raw.format == RAW_FORMAT, "{}: format is {:?}, expected {RAW_FORMAT:?}", args.raw.display(), raw.format);
    let pairs = raw.pairs.iter().map(Pair::from_raw).collect::<Result<Vec<_>>>()?;
    ensure!(pairs.iter().any(|pair| !pair.depths.is_empty()), "{}: no runs to report", args.raw.display());

    print!("{}", report_text(&raw, &pairs));

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let results_path = args.out.join("results.json");
    let results = json!({
        "format": RESULTS_FORMAT,
        "date": raw.date,
        "quick": raw.quick,
        "machine": raw.machine,
        "settings": raw.settings,
        "notes": raw.notes,
        "comparison": pairs.iter().map(|pair| json!({
            "durability": pair.name,
            "redis_setup": pair.redis,
            "shardcap_setup": pair.shardcap,
            "rows": pair.rows().iter().map(Row::to_json).collect::<Vec<_>>(),
            "warnings": pair.warnings,
        })).collect::<Vec<_>>(),
        "memory": raw.memory,
        "raw": raw_value,
    });
    let mut pretty = serde_json::to_string_pretty(&results)?;
    pretty.push('\n');
    std::fs::write(&results_path, pretty).with_context(|| format!("writing {}", results_path.display()))?;

    let chart_path = args.out.join("reserve-vs-redis.svg");
    draw_chart(&chart_path, &raw, &pairs, !args.linear_y)
        .with_context(|| format!("drawing {}", chart_path.display()))?;
    println!("wrote {} and {}", results_path.display(), chart_path.display());
    Ok(())
}

/// A machine field as text, or an empty string when it is missing.
fn machine_field(raw: &Raw, name: &str) -> String {
    match raw.machine.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// One line naming the machine, e.g. "AMD EPYC ×2, Linux 6.1.0, Redis 7.0.15".
fn machine_line(raw: &Raw) -> String {
    let mut parts = Vec::new();
    let cpu = machine_field(raw, "cpu_model");
    let nproc = machine_field(raw, "nproc");
    match (cpu.is_empty(), nproc.is_empty()) {
        (false, false) => parts.push(format!("{cpu} ×{nproc}")),
        (false, true) => parts.push(cpu),
        (true, false) => parts.push(format!("{nproc} CPUs")),
        (true, true) => {}
    }
    let kernel = machine_field(raw, "kernel");
    if !kernel.is_empty() {
        parts.push(format!("Linux {kernel}"));
    }
    let redis = machine_field(raw, "redis_version");
    if !redis.is_empty() {
        parts.push(format!("Redis {redis}"));
    }
    parts.join(", ")
}

fn report_text(raw: &Raw, pairs: &[Pair]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", machine_line(raw));
    let commit = machine_field(raw, "shardcap_commit");
    let _ = writeln!(
        out,
        "date: {}{}{}",
        raw.date,
        if commit.is_empty() { String::new() } else { format!(", shardcap {commit}") },
        if raw.quick { " (quick run: short points, numbers are rough)" } else { "" }
    );
    for note in &raw.notes {
        let _ = writeln!(out, "note: {note}");
    }
    for pair in pairs {
        let _ = writeln!(out);
        let _ = writeln!(out, "durability: {} (Redis: {}; shardcap: {})", pair.name, pair.redis, pair.shardcap);
        let _ = writeln!(out);
        let header = [
            "depth",
            "shardcap mode",
            "Redis ops/s",
            "Redis p50/p99 µs",
            "shardcap ops/s",
            "shardcap p50/p99 µs",
            "ratio",
            "ping ops/s",
            "reserve/ping",
        ];
        let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for row in pair.rows() {
            table.push(vec![
                row.depth.to_string(),
                row.mode.to_string(),
                opt(row.redis.map(|p| grouped(p.ops_per_sec))),
                opt(row.redis.map(latencies)),
                opt(row.shardcap.map(|p| grouped(p.ops_per_sec))),
                opt(row.shardcap.map(latencies)),
                opt(row.ratio.map(|r| format!("{r:.2}×"))),
                opt(row.ping.map(|p| grouped(p.ops_per_sec))),
                opt(row.reserve_over_ping_pct.map(|pct| format!("{pct:.0}%"))),
            ]);
        }
        out.push_str(&markdown_table(&table));
        for warning in &pair.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
    }
    if let Some(memory) = &raw.memory {
        let field = |name: &str| memory.get(name).and_then(Value::as_f64);
        if let (Some(holds), Some(rss), Some(per_hold)) = (field("holds"), field("rss_bytes"), field("bytes_per_hold"))
        {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "memory: {} active holds, resident {} MiB, {per_hold:.1} bytes per hold{}",
                grouped(holds),
                grouped(rss / (1 << 20) as f64),
                field("bytes_per_hold_added").map_or(String::new(), |added| format!(
                    " ({added:.1} bytes per hold added to the memory of the idle server)"
                ))
            );
        }
    }
    out
}

fn opt(cell: Option<String>) -> String {
    cell.unwrap_or_else(|| "-".to_string())
}

fn latencies(point: Point) -> String {
    format!("{} / {}", micros(point.p50_us), micros(point.p99_us))
}

/// Microseconds with one decimal below 10, whole above.
fn micros(us: f64) -> String {
    if us < 10.0 { format!("{us:.1}") } else { grouped(us) }
}

/// A rounded number with thousands separators: 61234.5 -> "61,235".
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.round());
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::from(sign);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Markdown table whose columns line up in a terminal too; numbers align right.
fn markdown_table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let right_aligned: Vec<bool> = (0..columns).map(|c| c != 1).collect();
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        out.push('|');
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if right_aligned[c] && r > 0 {
                let _ = write!(out, " {}{} |", " ".repeat(pad), cell);
            } else {
                let _ = write!(out, " {}{} |", cell, " ".repeat(pad));
            }
        }
        out.push('\n');
        if r == 0 {
            out.push('|');
            for c in 0..columns {
                let dashes = "-".repeat(widths[c]);
                if right_aligned[c] {
                    let _ = write!(out, " {}: |", &dashes[..dashes.len().saturating_sub(1)]);
                } else {
                    let _ = write!(out, " {dashes} |");
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Ops/s for a label: 119000 -> "119k", 61234 -> "61.2k", 1250000 -> "1.25M".
fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", trim_zeros(value / 1e6))
    } else if value >= 1e3 {
        format!("{}k", trim_zeros(value / 1e3))
    } else {
        trim_zeros(value)
    }
}

/// Three significant digits at most, trailing zeros dropped: 61.234 -> "61.2".
fn trim_zeros(value: f64) -> String {
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    let text = format!("{value:.decimals$}");
    if decimals == 0 {
        return text;
    }
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw_chart(path: &Path, raw: &Raw, pairs: &[Pair], log_y: bool) -> Result<()> {
    let all_points = || pairs.iter().flat_map(|pair| pair.points.iter().flatten());
    let depths: BTreeSet<u32> = pairs.iter().flat_map(|pair| pair.depths.iter().copied()).collect();
    let depth_min = f64::from(*depths.first().context("no depths")?);
    let depth_max = f64::from(*depths.last().context("no depths")?);
    let ops_max = all_points().map(|(_, p)| p.ops_per_sec).fold(1.0, f64::max);
    let ops_min = all_points().map(|(_, p)| p.ops_per_sec).filter(|&v| v > 0.0).fold(ops_max, f64::min);
    // The depth axis is logarithmic (depths grow by factors), with a margin either side.
    let x_range = (depth_min / 1.5)..(depth_max * 1.5);
    let x_keys: Vec<f64> = depths.iter().map(|&d| f64::from(d)).collect();

    let root = SVGBackend::new(path, CHART_SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (header, body) = root.split_vertically(70);
    let quick = if raw.quick { " (quick run)" } else { "" };
    header
        .draw(&Text::new(
            format!("Reserve throughput: shardcap vs Redis Lua{quick}"),
            (20, 12),
            ("sans-serif", 24).into_font().color(&BLACK),
        ))
        .map_err(plot_error)?;
    let connections = raw.settings.get("connections").map(|v| format!("{v} connections, ")).unwrap_or_default();
    let setups: Vec<String> =
        pairs.iter().map(|pair| format!("{}: Redis {}, shardcap {}", pair.name, pair.redis, pair.shardcap)).collect();
    header
        .draw(&Text::new(
            format!("{}; {connections}{}", machine_line(raw), raw.date),
            (20, 40),
            ("sans-serif", 14).into_font().color(&RGBColor(60, 60, 60)),
        ))
        .map_err(plot_error)?;
    header
        .draw(&Text::new(setups.join("; "), (20, 56), ("sans-serif", 12).into_font().color(&RGBColor(90, 90, 90))))
        .map_err(plot_error)?;

    let x_label = |depth: &f64| format!("{depth:.0}");
    let y_label = |ops: &f64| si(*ops);
    let mut builder = ChartBuilder::on(&body);
    builder.margin(20).x_label_area_size(45).y_label_area_size(70);
    if log_y {
        let y_range = (ops_min / 2.0)..(ops_max * 2.0);
        // Ticks at 1, 2 and 5 times each power of ten in range.
        let y_keys: Vec<f64> = (0..=9)
            .flat_map(|exponent| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(exponent)))
            .filter(|v| y_range.contains(v))
            .collect();
        let mut chart = builder
            .build_cartesian_2d(
                x_range.log_scale().with_key_points(x_keys),
                y_range.log_scale().with_key_points(y_keys),
            )
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("pipeline depth (frames in flight per connection)")
            .y_desc("ops/s (log scale)")
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        draw_series(&mut chart, pairs)?;
    } else {
        let y_range = 0.0..(ops_max * 1.15);
        let mut chart =
            builder.build_cartesian_2d(x_range.log_scale().with_key_points(x_keys), y_range).map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("pipeline depth (frames in flight per connection)")
            .y_desc("ops/s")
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        draw_series(&mut chart, pairs)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Draws every series of every pair with its legend entry and a value label on each point.
fn draw_series<'a, X, Y>(chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>, pairs: &[Pair]) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    // Value labels, placed after the lines so that close points (at depth 1 all series
    // are near each other) can drop labels that would overlap: (x, y, colour).
    let mut labels: Vec<(f64, f64, RGBColor)> = Vec::new();
    for (p, pair) in pairs.iter().enumerate() {
        // A second durability pair is drawn thinner so the two can be told apart.
        let width = if p == 0 { 3 } else { 1 };
        for (series, points) in SERIES.iter().zip(&pair.points) {
            if points.is_empty() {
                continue;
            }
            let color = series.color;
            let label =
                if pairs.len() > 1 { format!("{} [{}]", series.label, pair.name) } else { series.label.to_string() };
            let xy: Vec<(f64, f64)> =
                points.iter().map(|&(depth, point)| (f64::from(depth), point.ops_per_sec)).collect();
            let style = color.stroke_width(width);
            let drawn = if series.dashed {
                chart.draw_series(DashedLineSeries::new(xy.clone(), 8, 5, style)).map_err(plot_error)?
            } else {
                chart.draw_series(LineSeries::new(xy.clone(), style)).map_err(plot_error)?
            };
            drawn.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            labels.extend(xy.iter().map(|&(x, y)| (x, y, color)));
            chart
                .draw_series(PointSeries::of_element(xy, 4, color.filled(), &|(x, y), size, style| {
                    EmptyElement::at((x, y)) + Circle::new((0, 0), size, style)
                }))
                .map_err(plot_error)?;
        }
    }
    // Highest first; a label closer than LABEL_GAP_PX to one kept above it at the same
    // depth is left out (the table has every number).
    const LABEL_GAP_PX: i32 = 14;
    labels.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept: Vec<(i32, i32)> = Vec::new();
    for (x, y, color) in labels {
        let (px, py) = chart.backend_coord(&(x, y));
        if kept.iter().any(|&(kx, ky)| kx == px && (py - ky).abs() < LABEL_GAP_PX) {
            continue;
        }
        kept.push((px, py));
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((x, y)) + Text::new(si(y), (8, 2), ("sans-serif", 12).into_font().color(&color)),
            ))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// plotters' errors borrow the backend's error type; keep only their text.
fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}
