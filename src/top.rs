//! `shardcap top`: a live terminal view of a running server's metrics — per-core
//! throughput, refusals and reserve latency, and every exported pool's capacity — so that
//! someone watching a sale sees it move.
//!
//! How it works: every interval, [`fetch`] reads the Prometheus text of `GET
//! <admin>/metrics` and keeps the few `shardcap_` families the view needs ([`Scrape`]).
//! [`View::new`] compares two scrapes: counters become rates over the time between them and
//! the reserve latency histogram's bucket increases give the 99th percentile of that interval
//! only. The first scrape has nothing to compare to, so the view shows totals since the
//! server started. [`render`] draws a view with ratatui; [`run`] is the interactive loop and
//! [`render_once`] draws one frame into a memory buffer and returns its text (for `top
//! --once`, scripts and tests).
//!
//! Everything but [`fetch`], [`run`] and [`render_once`] is pure: tests feed canned
//! exposition text and read the rendered buffer.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span as TextSpan};
use ratatui::widgets::{Block, Cell, Padding, Paragraph, Row, Table, Wrap};

/// The admin address `shardcap top` reads by default.
pub const ADMIN_URL_DEFAULT: &str = "http://127.0.0.1:9400";

/// The figures one core exports, as read from one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreSample {
    /// `shardcap_operations_total`, summed over op and status.
    pub operations: f64,
    /// `shardcap_operations_total{status="ok"}`, summed over op.
    pub operations_ok: f64,
    /// `shardcap_busy_total`, summed over reason.
    pub busy: f64,
    /// `shardcap_request_duration_seconds{op="reserve"}`: (upper bound in seconds,
    /// cumulative count) in ascending order of bound, the last one `+Inf`.
    pub reserve_buckets: Vec<(f64, f64)>,
    /// `shardcap_connections_open`.
    pub connections_open: f64,
    /// `shardcap_holds_active`.
    pub holds_active: f64,
    /// `shardcap_retained_records` (`None`: not exported).
    pub retained: Option<f64>,
    /// `shardcap_retention_window_seconds`.
    pub retention_window_s: f64,
    /// `shardcap_retention_evictions_total`.
    pub retention_evictions: f64,
}

/// One pool's `shardcap_pool_*` gauges, in units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSample {
    /// `shardcap_pool_capacity`.
    pub capacity: u64,
    /// `shardcap_pool_held`.
    pub held: u64,
    /// `shardcap_pool_confirmed`.
    pub confirmed: u64,
    /// `shardcap_pool_available`.
    pub available: u64,
}

/// The `shardcap_` families the view needs, parsed from one exposition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// Per core, by core index.
    pub cores: BTreeMap<u16, CoreSample>,
    /// Per exported pool, by name.
    pub pools: BTreeMap<String, PoolSample>,
    /// `shardcap_pools`: every pool, exported or not (`None`: not in the exposition).
    pub pools_count: Option<u64>,
    /// `shardcap_oversell_detected_total`, summed over cores.
    pub oversell: u64,
    /// `shardcap_ready` (`None`: not in the exposition).
    pub ready: Option<bool>,
}

impl Scrape {
    /// Parses Prometheus text exposition; samples of other families are ignored, and so are
    /// samples whose `core` label is not a core index.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let lines = text.lines().map(|line| Ok(line.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).map_err(|e| format!("unreadable metrics: {e}"))?;
        let mut scrape = Scrape::default();
        for sample in &parsed.samples {
            let labels = &sample.labels;
            let value = match &sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    if sample.metric == "shardcap_request_duration_seconds" && labels.get("op") == Some("reserve") {
                        if let Some(core) = scrape.core(labels) {
                            core.reserve_buckets = buckets.iter().map(|b| (b.less_than, b.count)).collect();
                            core.reserve_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        }
                    }
                    continue;
                }
                prometheus_parse::Value::Summary(_) => continue,
            };
            match sample.metric.as_str() {
                "shardcap_operations_total" => {
                    let ok = labels.get("status") == Some("ok");
                    if let Some(core) = scrape.core(labels) {
                        core.operations += value;
                        if ok {
                            core.operations_ok += value;
                        }
                    }
                }
                "shardcap_busy_total" | "shardcap_connections_open" | "shardcap_holds_active" => {
                    let Some(core) = scrape.core(labels) else { continue };
                    match sample.metric.as_str() {
                        "shardcap_busy_total" => core.busy += value,
                        "shardcap_connections_open" => core.connections_open = value,
                        _ => core.holds_active = value,
                    }
                }
                "shardcap_retained_records"
                | "shardcap_retention_window_seconds"
                | "shardcap_retention_evictions_total" => {
                    let Some(core) = scrape.core(labels) else { continue };
                    match sample.metric.as_str() {
                        "shardcap_retained_records" => core.retained = Some(value),
                        "shardcap_retention_window_seconds" => core.retention_window_s = value,
                        _ => core.retention_evictions = value,
                    }
                }
                "shardcap_oversell_detected_total" => scrape.oversell += units(value),
                "shardcap_ready" => scrape.ready = Some(value >= 1.0),
                "shardcap_pools" => scrape.pools_count = Some(units(value)),
                "shardcap_pool_capacity"
                | "shardcap_pool_held"
                | "shardcap_pool_confirmed"
                | "shardcap_pool_available" => {
                    let Some(name) = labels.get("pool") else { continue };
                    let pool = scrape.pools.entry(name.to_string()).or_default();
                    let field = match sample.metric.as_str() {
                        "shardcap_pool_capacity" => &mut pool.capacity,
                        "shardcap_pool_held" => &mut pool.held,
                        "shardcap_pool_confirmed" => &mut pool.confirmed,
                        _ => &mut pool.available,
                    };
                    *field = units(value);
                }
                _ => {}
            }
        }
        Ok(scrape)
    }

    /// The sample of the core a `core` label names (created on first sight).
    fn core(&mut self, labels: &prometheus_parse::Labels) -> Option<&mut CoreSample> {
        let core = labels.get("core")?.parse().ok()?;
        Some(self.cores.entry(core).or_default())
    }
}

/// A gauge or counter of whole units as an integer (negative and NaN read as 0).
fn units(value: f64) -> u64 {
    value.round().max(0.0) as u64
}

/// What the counted figures of an [`Activity`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// Per second, between two scrapes this far apart.
    PerSecond(Duration),
    /// Totals since the server started: the first scrape, with nothing to compare to.
    SinceStart,
}

/// A latency quantile estimated from histogram buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// At most this many seconds: the upper bound of the bucket the quantile falls in.
    AtMost(f64),
    /// Above the largest finite bucket bound, in seconds.
    Above(f64),
}

/// The activity of one core, or of all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    /// Operations applied, ok or not (per second or since start: [`View::span`]).
    pub operations: f64,
    /// The share of those operations that answered `ok` (`None`: no operation).
    pub ok_ratio: Option<f64>,
    /// Operations answered with another status (`sold_out`, `not_found`, …), as `operations`.
    pub refused: f64,
    /// Operations (and connections) refused `busy` before the state machine
    /// (`shardcap_busy_total`), as `operations`.
    pub busy: f64,
    /// 99th percentile of the server-side reserve latency over the span (`None`: no reserve).
    pub p99_reserve: Option<Latency>,
    /// Connections open now.
    pub connections_open: u64,
    /// Holds active now.
    pub holds_active: u64,
    /// How far back repeats are recognised now, in seconds: the age of the oldest finished
    /// reservation kept (`None`: none kept, or not exported). For all cores, the shortest.
    pub retention_window_s: Option<f64>,
    /// Finished reservations forgotten before their longest retention, as `operations`.
    pub retention_evictions: f64,
}

/// One pool's line of the view.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolRow {
    /// Pool name.
    pub name: String,
    /// Total units.
    pub capacity: u64,
    /// Units held now.
    pub held: u64,
    /// Units confirmed.
    pub confirmed: u64,
    /// Units a reserve could still get.
    pub available: u64,
    /// (held + confirmed) / capacity; 0 for a pool of no capacity.
    pub taken_ratio: f64,
}

/// What the screen shows: figures computed from one or two scrapes.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// What the counted figures are: rates or totals.
    pub span: Span,
    /// Per core, in core order.
    pub cores: Vec<(u16, Activity)>,
    /// All cores together.
    pub total: Activity,
    /// Exported pools, by name.
    pub pools: Vec<PoolRow>,
    /// Every pool of the server (`None`: unknown); more than `pools.len()` when the server
    /// exports only some of them.
    pub pools_count: Option<u64>,
    /// Times the server's invariant checker found more held and confirmed than capacity.
    /// Anything but 0 is a bug.
    pub oversell: u64,
    /// Whether the server serves on every core (`None`: unknown).
    pub ready: Option<bool>,
    /// The last fetch's error, while the figures are those of the last good scrape.
    pub fetch_error: Option<String>,
}

impl Default for View {
    /// The view before the first scrape: nothing known.
    fn default() -> View {
        View {
            span: Span::SinceStart,
            cores: Vec::new(),
            total: Activity::default(),
            pools: Vec::new(),
            pools_count: None,
            oversell: 0,
            ready: None,
            fetch_error: None,
        }
    }
}

impl View {
    /// Computes the view of `cur`. With a previous scrape taken `elapsed` earlier (and a
    /// nonzero `elapsed`), counters become rates and the latency percentile covers that
    /// interval only; without one, counters are totals and the percentile covers the whole
    /// run. A counter that went down (the server restarted) counts from zero.
    pub fn new(prev: Option<&Scrape>, cur: &Scrape, elapsed: Duration) -> View {
        let prev = prev.filter(|_| !elapsed.is_zero());
        let span = if prev.is_some() { Span::PerSecond(elapsed) } else { Span::SinceStart };
        let per = |count: f64| match span {
            Span::PerSecond(d) => count / d.as_secs_f64(),
            Span::SinceStart => count,
        };
        let empty = CoreSample::default();
        let mut total_counts = [0.0; 3];
        let mut total_buckets: Vec<(f64, f64)> = Vec::new();
        let mut total = Activity::default();
        let mut cores = Vec::with_capacity(cur.cores.len());
        for (&core, now) in &cur.cores {
            let before = prev.and_then(|p| p.cores.get(&core)).unwrap_or(&empty);
            let operations = increase(before.operations, now.operations);
            let ok = increase(before.operations_ok, now.operations_ok);
            let busy = increase(before.busy, now.busy);
            let evictions = increase(before.retention_evictions, now.retention_evictions);
            let buckets = bucket_increase(&before.reserve_buckets, &now.reserve_buckets);
            add_buckets(&mut total_buckets, &buckets);
            for (sum, count) in total_counts.iter_mut().zip([operations, ok, busy]) {
                *sum += count;
            }
            let activity = Activity {
                operations: per(operations),
                ok_ratio: ratio(ok, operations),
                refused: per((operations - ok).max(0.0)),
                busy: per(busy),
                p99_reserve: quantile(&buckets, 99),
                connections_open: units(now.connections_open),
                holds_active: units(now.holds_active),
                retention_window_s: now.retained.filter(|&n| n > 0.0).map(|_| now.retention_window_s),
                retention_evictions: per(evictions),
            };
            total.connections_open += activity.connections_open;
            total.holds_active += activity.holds_active;
            total.retention_evictions += activity.retention_evictions;
            total.retention_window_s = match (total.retention_window_s, activity.retention_window_s) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            cores.push((core, activity));
        }
        let [operations, ok, busy] = total_counts;
        total.operations = per(operations);
        total.ok_ratio = ratio(ok, operations);
        total.refused = per((operations - ok).max(0.0));
        total.busy = per(busy);
        total.p99_reserve = quantile(&total_buckets, 99);
        let pools = cur
            .pools
            .iter()
            .map(|(name, p)| {
                let taken = (p.held + p.confirmed) as f64;
                PoolRow {
                    name: name.clone(),
                    capacity: p.capacity,
                    held: p.held,
                    confirmed: p.confirmed,
                    available: p.available,
                    taken_ratio: if p.capacity == 0 { 0.0 } else { taken / p.capacity as f64 },
                }
            })
            .collect();
        View {
            span,
            cores,
            total,
            pools,
            pools_count: cur.pools_count,
            oversell: cur.oversell,
            ready: cur.ready,
            fetch_error: None,
        }
    }
}

/// A counter's increase between two readings; a reset (it went down) counts from zero.
fn increase(before: f64, now: f64) -> f64 {
    if now >= before { now - before } else { now }
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    if whole > 0.0 { Some(part / whole) } else { None }
}

/// The buckets' increases between two readings; if any bucket went down (a reset), the
/// current ones.
fn bucket_increase(before: &[(f64, f64)], now: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(now.len());
    for &(bound, count) in now {
        let prior = before.iter().find(|b| b.0 == bound).map_or(0.0, |b| b.1);
        if count < prior {
            return now.to_vec();
        }
        out.push((bound, count - prior));
    }
    out
}

/// Adds cumulative buckets into a sum, bound by bound.
fn add_buckets(into: &mut Vec<(f64, f64)>, from: &[(f64, f64)]) {
    for &(bound, count) in from {
        match into.iter_mut().find(|b| b.0 == bound) {
            Some(b) => b.1 += count,
            None => into.push((bound, count)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The `percent`th percentile of cumulative buckets: the upper bound of the first bucket
/// whose count reaches that rank (`None` if nothing was counted).
fn quantile(buckets: &[(f64, f64)], percent: u64) -> Option<Latency> {
    let count = units(buckets.last()?.1);
    if count == 0 {
        return None;
    }
    let rank = (count * percent).div_ceil(100);
    let mut finite_max = 0.0;
    for &(bound, cumulative) in buckets {
        if !bound.is_finite() {
            break;
        }
        if units(cumulative) >= rank {
            return Some(Latency::AtMost(bound));
        }
        finite_max = bound;
    }
    Some(Latency::Above(finite_max))
}

/// Draws a view: a header (source, readiness, total operations/s, oversell count), the
/// per-core table with a line for all cores, and the pool table with a bar of each pool's
/// share taken.
pub fn render(frame: &mut Frame, view: &View, source: &str) {
    let area = frame.area();
    // The status line and a line of help, or of error (which may wrap onto a third).
    let header_height = if view.fetch_error.is_some() { 3 } else { 2 };
    // A table's height: borders (2) and the column header (1) around its rows; the core
    // table's rows are the cores, a blank line and the line of totals.
    let cores_height = view.cores.len() as u16 + 5;
    let pools_height = view.pools.len().max(1) as u16 + 3;
    // On a short screen the pool table keeps a few lines and the core table shrinks first.
    let below = area.height.saturating_sub(header_height);
    let cores_height = cores_height.min(below.saturating_sub(pools_height.min(6)));
    let pools_height = pools_height.min(below - cores_height);
    let [header, cores, pools] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(cores_height),
        Constraint::Length(pools_height),
    ])
    .areas(area);
    render_header(frame, header, view, source);
    render_cores(frame, cores, view);
    render_pools(frame, pools, view);
}

/// How far back repeats are recognised (the shortest window of any core) and how many
/// finished reservations were forgotten early.
fn retention_text(view: &View) -> String {
    let window = view.total.retention_window_s.map_or("–".to_string(), |s| format!("{s:.0} s"));
    let evicted = match view.span {
        Span::PerSecond(_) => format!("{}/s", rate_text(view.total.retention_evictions)),
        Span::SinceStart => format!("{:.0}", view.total.retention_evictions),
    };
    format!("repeats kept {window} back, {evicted} evicted early")
}

/// A table's frame: a border with a title, a blank column inside each side.
fn table_block(title: String) -> Block<'static> {
    Block::bordered().title(title).padding(Padding::horizontal(1))
}

fn render_header(frame: &mut Frame, area: Rect, view: &View, source: &str) {
    let ready = match view.ready {
        Some(true) => TextSpan::styled("ready", Style::new().fg(Color::Green)),
        Some(false) => TextSpan::styled("NOT READY", Style::new().fg(Color::Red).bold()),
        None => TextSpan::raw("ready ?"),
    };
    let ops = match view.span {
        Span::PerSecond(_) => rate_text(view.total.operations),
        Span::SinceStart => "–".to_string(),
    };
    let oversell = if view.oversell > 0 {
        TextSpan::styled(format!(" OVERSELL {} ", view.oversell), Style::new().fg(Color::White).bg(Color::Red).bold())
    } else {
        TextSpan::styled("oversell 0", Style::new().fg(Color::Green))
    };
    let gap = || TextSpan::raw("   ");
    let status = Line::from(vec![
        TextSpan::styled("shardcap top", Style::new().bold()),
        gap(),
        TextSpan::raw(source.to_string()),
        gap(),
        ready,
        gap(),
        TextSpan::raw("ops/s "),
        TextSpan::styled(ops, Style::new().bold()),
        gap(),
        oversell,
    ]);
    let second = match &view.fetch_error {
        Some(error) => {
            let text = format!("error: {error} (retrying; figures from the last good read)");
            Line::styled(text, Style::new().fg(Color::Red))
        }
        None => Line::styled("q, Esc or Ctrl-C: quit", Style::new().fg(Color::DarkGray)),
    };
    frame.render_widget(Paragraph::new(vec![status, second]).wrap(Wrap { trim: false }), area);
}

fn render_cores(frame: &mut Frame, area: Rect, view: &View) {
    let (title, counted) = match view.span {
        Span::PerSecond(d) => {
            (format!(" cores: per second over {:.1} s ", d.as_secs_f64()), ["ops/s", "refused/s", "busy/s"])
        }
        Span::SinceStart => {
            (" cores: totals since start (rates from the next scrape) ".to_string(), ["ops", "refused", "busy"])
        }
    };
    let [ops, refused, busy] = counted;
    let title = format!("{title}· {} ", retention_text(view));
    let names = ["core", ops, "ok", refused, busy, "p99 reserve", "conns", "holds"];
    let header = names.iter().enumerate().map(|(i, name)| cell(*name, i > 0));
    let count = |v: f64| match view.span {
        Span::PerSecond(_) => rate_text(v),
        Span::SinceStart => format!("{v:.0}"),
    };
    let row = |name: String, a: &Activity| {
        let busy_style = if a.busy > 0.0 { Style::new().fg(Color::Yellow) } else { Style::new() };
        Row::new([
            cell(name, false),
            cell(count(a.operations), true),
            cell(a.ok_ratio.map_or("–".to_string(), percent_text), true),
            cell(count(a.refused), true),
            cell(count(a.busy), true).style(busy_style),
            cell(a.p99_reserve.map_or("–".to_string(), latency_text), true),
            cell(a.connections_open.to_string(), true),
            cell(a.holds_active.to_string(), true),
        ])
    };
    let mut rows: Vec<Row> = view.cores.iter().map(|(core, a)| row(core.to_string(), a)).collect();
    rows.push(row("all".to_string(), &view.total).top_margin(1).bold());
    let widths = [5, 8, 7, 9, 7, 11, 6, 8].map(Constraint::Length);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().fg(Color::Cyan).bold()))
        .column_spacing(2)
        .block(table_block(title));
    frame.render_widget(table, area);
}

fn render_pools(frame: &mut Frame, area: Rect, view: &View) {
    let title = match view.pools_count {
        Some(n) if n > view.pools.len() as u64 => format!(" pools: {} of {n} exported ", view.pools.len()),
        _ => " pools ".to_string(),
    };
    let name_width = view.pools.iter().map(|p| p.name.len()).max().unwrap_or(0).clamp(4, 24) as u16;
    let mut widths = vec![name_width, 10, 10, 10, 10, 7];
    // The bar takes what is left of the line, up to 40 cells; on a narrow screen, none.
    let spacing = 2;
    let used = widths.iter().map(|w| w + spacing).sum::<u16>() + 4;
    let bar_width = area.width.saturating_sub(used).min(40);
    if bar_width >= 10 {
        widths.push(bar_width);
    }
    let header = ["pool", "capacity", "held", "confirmed", "available", "taken"];
    let mut header: Vec<Cell> = header.iter().enumerate().map(|(i, name)| cell(*name, i > 0)).collect();
    if bar_width >= 10 {
        header.push(cell("", false));
    }
    let rows = view.pools.iter().map(|p| {
        let colour = if p.taken_ratio >= 1.0 {
            Color::Red
        } else if p.taken_ratio >= 0.9 {
            Color::Yellow
        } else {
            Color::Green
        };
        let mut cells = vec![
            cell(p.name.clone(), false),
            cell(p.capacity.to_string(), true),
            cell(p.held.to_string(), true),
            cell(p.confirmed.to_string(), true),
            cell(p.available.to_string(), true),
            cell(percent_text(p.taken_ratio), true),
        ];
        if bar_width >= 10 {
            cells.push(cell(bar(p.taken_ratio, bar_width), false).style(Style::new().fg(colour)));
        }
        Row::new(cells)
    });
    let table = Table::new(rows, widths.into_iter().map(Constraint::Length))
        .header(Row::new(header).style(Style::new().fg(Color::Cyan).bold()))
        .column_spacing(spacing)
        .block(table_block(title));
    frame.render_widget(table, area);
}

fn cell<'a>(text: impl Into<String>, right: bool) -> Cell<'a> {
    let line = Line::from(text.into());
    Cell::from(if right { line.right_aligned() } else { line })
}

/// A bar of `width` cells, the share `ratio` of it filled.
fn bar(ratio: f64, width: u16) -> String {
    let filled = (ratio.clamp(0.0, 1.0) * f64::from(width)).round() as usize;
    let mut s = "█".repeat(filled);
    s.push_str(&"·".repeat(usize::from(width) - filled));
    s
}

/// A rate: whole numbers from 100 up, one decimal below.
fn rate_text(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn percent_text(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn latency_text(latency: Latency) -> String {
    match latency {
        Latency::AtMost(s) => format!("≤ {}", seconds_text(s)),
        Latency::Above(s) => format!("> {}", seconds_text(s)),
    }
}

/// Seconds in the unit that suits them: 25 µs, 2.5 ms, 1 s.
fn seconds_text(s: f64) -> String {
    let (value, unit) = if s < 1e-3 {
        (s * 1e6, "µs")
    } else if s < 1.0 {
        (s * 1e3, "ms")
    } else {
        (s, "s")
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// The metrics URL of an admin address: `http://` is added when no scheme is given and
/// `/metrics` when no path is.
fn metrics_url(admin_url: &str) -> String {
    let url = admin_url.trim_end_matches('/');
    let url = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    if url.ends_with("/metrics") { url } else { format!("{url}/metrics") }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into()
}

/// Reads and parses `GET <admin_url>/metrics` within `timeout`. The error names the URL and
/// says what went wrong: the connection was refused, no answer came in time, the status was
/// not 200, or the text did not parse. Plain HTTP only.
pub fn fetch(admin_url: &str, timeout: Duration) -> Result<Scrape, String> {
    fetch_with(&agent(timeout), &metrics_url(admin_url))
}

fn fetch_with(agent: &ureq::Agent, url: &str) -> Result<Scrape, String> {
    if url.starts_with("https://") {
        return Err(format!("{url}: https is not supported (the admin port speaks plain HTTP)"));
    }
    let mut response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("cannot reach {url}: connection refused")
        }
        ureq::Error::Timeout(_) => format!("{url}: no answer in time"),
        ureq::Error::HostNotFound => format!("cannot reach {url}: host not found"),
        e => format!("cannot reach {url}: {e}"),
    })?;
    let status = response.status();
    if status != 200 {
        return Err(format!("{url}: HTTP status {status}, expected 200"));
    }
    let text = response.body_mut().read_to_string().map_err(|e| format!("{url}: reading the answer: {e}"))?;
    Scrape::parse(&text).map_err(|e| format!("{url}: {e}"))
}

/// How long a fetch may take: the interval, within 250 ms and 2 s.
fn fetch_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_millis(250), Duration::from_secs(2))
}

/// Runs the live view on the terminal until `q`, Esc or Ctrl-C: fetches every `interval`,
/// redraws, and on a failed fetch shows the error in the header with the last figures and
/// tries again at the next interval. Fails only if the terminal cannot be used.
pub fn run(admin_url: &str, interval: Duration) -> Result<(), String> {
    if !std::io::stdout().is_terminal() {
        return Err("shardcap top needs a terminal on stdout (--once prints one frame)".to_string());
    }
    let mut terminal = ratatui::try_init().map_err(|e| {
        ratatui::restore();
        format!("cannot set up the terminal: {e}")
    })?;
    let result = live(&mut terminal, admin_url, interval);
    ratatui::restore();
    result.map_err(|e| format!("terminal: {e}"))
}

fn live(terminal: &mut ratatui::DefaultTerminal, admin_url: &str, interval: Duration) -> std::io::Result<()> {
    let url = metrics_url(admin_url);
    let agent = agent(fetch_timeout(interval));
    let mut last: Option<(Scrape, Instant)> = None;
    let mut view = View::default();
    let mut next_fetch = Instant::now();
    loop {
        if Instant::now() >= next_fetch {
            match fetch_with(&agent, &url) {
                Ok(scrape) => {
                    let now = Instant::now();
                    let elapsed = last.as_ref().map_or(Duration::ZERO, |(_, at)| now - *at);
                    view = View::new(last.as_ref().map(|(s, _)| s), &scrape, elapsed);
                    last = Some((scrape, now));
                }
                Err(e) => view.fetch_error = Some(e),
            }
            // A slow fetch delays the next one rather than queueing fetches back to back.
            next_fetch = (next_fetch + interval).max(Instant::now());
            terminal.draw(|frame| render(frame, &view, &url))?;
        }
        if event::poll(next_fetch.saturating_duration_since(Instant::now()))? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|frame| render(frame, &view, &url))?;
                }
                _ => {}
            }
        }
    }
}

/// Renders one frame of `width` × `height` cells into memory and returns its text: one line
/// per row, trailing blanks and blank rows at the bottom trimmed. With `interval`, the frame
/// compares two scrapes that far apart (rates); without, it shows one scrape's totals. Fails
/// if a fetch does.
pub fn render_once(admin_url: &str, interval: Option<Duration>, width: u16, height: u16) -> Result<String, String> {
    if width == 0 || height == 0 {
        return Err(format!("cannot render into {width}x{height} cells"));
    }
    let url = metrics_url(admin_url);
    let agent = agent(fetch_timeout(interval.unwrap_or(Duration::from_secs(2))));
    let first = fetch_with(&agent, &url)?;
    let view = match interval {
        Some(interval) => {
            let start = Instant::now();
            std::thread::sleep(interval);
            let second = fetch_with(&agent, &url)?;
            View::new(Some(&first), &second, start.elapsed())
        }
        None => View::new(None, &first, Duration::ZERO),
    };
    Ok(render_text(&view, &url, width, height).trim_end().to_string())
}

/// Renders a view into a `width` × `height` memory buffer and returns its text.
fn render_text(view: &View, source: &str, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a memory terminal cannot fail");
    terminal.draw(|frame| render(frame, view, source)).expect("a memory terminal cannot fail");
    buffer_text(terminal.backend().buffer())
}

/// A buffer's text, one line per row with trailing blanks trimmed.
fn buffer_text(buffer: &Buffer) -> String {
    let width = usize::from(buffer.area.width.max(1));
    let rows = buffer.content.chunks(width).map(|row| row.iter().map(|c| c.symbol()).collect::<String>());
    rows.map(|row| row.trim_end().to_string()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    /// The upper bounds of `shardcap_request_duration_seconds`, as the server writes them.
    const BOUNDS: [&str; 16] = [
        "0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
        "0.05", "0.1", "0.25", "0.5", "1",
    ];

    /// One histogram's bucket, sum and count lines; `+Inf` holds `infinite` more than the last
    /// finite bucket.
    fn histogram(name: &str, labels: &str, counts: [u64; 16], infinite: u64) -> String {
        let mut text = String::new();
        for (bound, count) in BOUNDS.iter().zip(counts) {
            text += &format!("{name}_bucket{{{labels},le=\"{bound}\"}} {count}\n");
        }
        let total = counts[15] + infinite;
        text += &format!("{name}_bucket{{{labels},le=\"+Inf\"}} {total}\n");
        text += &format!("{name}_sum{{{labels}}} 0.5\n{name}_count{{{labels}}} {total}\n");
        text
    }

    const HISTOGRAM_HEAD: &str = "\
# HELP shardcap_request_duration_seconds Server-side request latency.
# TYPE shardcap_request_duration_seconds histogram
";

    /// The first scrape: two cores, operations of several statuses, two of three pools.
    fn scrape_a() -> String {
        let head = r#"# HELP shardcap_operations_total Operations applied, by core, operation and status.
# TYPE shardcap_operations_total counter
shardcap_operations_total{core="0",op="confirm",status="ok"} 400
shardcap_operations_total{core="0",op="release",status="not_found"} 10
shardcap_operations_total{core="0",op="reserve",status="ok"} 1000
shardcap_operations_total{core="0",op="reserve",status="sold_out"} 50
shardcap_operations_total{core="1",op="reserve",status="busy"} 20
shardcap_operations_total{core="1",op="reserve",status="ok"} 800
# HELP shardcap_frames_total Request frames read.
# TYPE shardcap_frames_total counter
shardcap_frames_total{core="0"} 1460
shardcap_frames_total{core="1"} 820
# TYPE shardcap_busy_total counter
shardcap_busy_total{core="0",reason="inflight"} 3
shardcap_busy_total{core="1",reason="connections"} 2
shardcap_busy_total{core="1",reason="forwards"} 7
# TYPE shardcap_connections_open gauge
shardcap_connections_open{core="0"} 12
shardcap_connections_open{core="1"} 9
# TYPE shardcap_holds_active gauge
shardcap_holds_active{core="0"} 300
shardcap_holds_active{core="1"} 200
# TYPE shardcap_retention_evictions_total counter
shardcap_retention_evictions_total{core="0"} 1000
# TYPE shardcap_oversell_detected_total counter
shardcap_oversell_detected_total{core="0"} 0
shardcap_oversell_detected_total{core="1"} 0
# TYPE shardcap_pools gauge
shardcap_pools 3
# TYPE shardcap_pool_available gauge
shardcap_pool_available{pool="tickets-friday"} 200
shardcap_pool_available{pool="demo"} 10
# TYPE shardcap_pool_capacity gauge
shardcap_pool_capacity{pool="tickets-friday"} 1000
shardcap_pool_capacity{pool="demo"} 100
# TYPE shardcap_pool_confirmed gauge
shardcap_pool_confirmed{pool="tickets-friday"} 300
shardcap_pool_confirmed{pool="demo"} 80
# TYPE shardcap_pool_held gauge
shardcap_pool_held{pool="tickets-friday"} 500
shardcap_pool_held{pool="demo"} 10
# TYPE shardcap_ready gauge
shardcap_ready 1
"#;
        let r = "shardcap_request_duration_seconds";
        let flat = |n| [n; 16];
        [
            head.to_string(),
            HISTOGRAM_HEAD.to_string(),
            histogram(r, r#"core="0",op="confirm""#, flat(0), 400),
            histogram(
                r,
                r#"core="0",op="reserve""#,
                [0, 100, 600, 1000, 1040, 1050, 1050, 1050, 1050, 1050, 1050, 1050, 1050, 1050, 1050, 1050],
                0,
            ),
            histogram(
                r,
                r#"core="1",op="reserve""#,
                [0, 0, 200, 700, 800, 820, 820, 820, 820, 820, 820, 820, 820, 820, 820, 820],
                0,
            ),
            "# TYPE shardcap_log_write_duration_seconds histogram\n".to_string(),
            histogram("shardcap_log_write_duration_seconds", r#"core="0""#, flat(0), 99),
        ]
        .concat()
    }

    /// The second scrape, one second later: every counter moved, a new status appeared,
    /// core 1 found an oversell.
    fn scrape_b() -> String {
        let head = r#"# TYPE shardcap_operations_total counter
shardcap_operations_total{core="0",op="confirm",status="ok"} 600
shardcap_operations_total{core="0",op="extend",status="expired"} 10
shardcap_operations_total{core="0",op="release",status="not_found"} 10
shardcap_operations_total{core="0",op="reserve",status="ok"} 1800
shardcap_operations_total{core="0",op="reserve",status="sold_out"} 290
shardcap_operations_total{core="1",op="reserve",status="busy"} 70
shardcap_operations_total{core="1",op="reserve",status="ok"} 1250
# TYPE shardcap_busy_total counter
shardcap_busy_total{core="0",reason="inflight"} 13
shardcap_busy_total{core="1",reason="connections"} 2
shardcap_busy_total{core="1",reason="forwards"} 27
# TYPE shardcap_connections_open gauge
shardcap_connections_open{core="0"} 15
shardcap_connections_open{core="1"} 11
# TYPE shardcap_holds_active gauge
shardcap_holds_active{core="0"} 340
shardcap_holds_active{core="1"} 180
# TYPE shardcap_retained_records gauge
shardcap_retained_records{core="0"} 9000
shardcap_retained_records{core="1"} 0
# TYPE shardcap_retention_window_seconds gauge
shardcap_retention_window_seconds{core="0"} 31.2
shardcap_retention_window_seconds{core="1"} 0
# TYPE shardcap_retention_evictions_total counter
shardcap_retention_evictions_total{core="0"} 1500
shardcap_retention_evictions_total{core="1"} 0
# TYPE shardcap_oversell_detected_total counter
shardcap_oversell_detected_total{core="0"} 0
shardcap_oversell_detected_total{core="1"} 2
# TYPE shardcap_pools gauge
shardcap_pools 3
# TYPE shardcap_pool_available gauge
shardcap_pool_available{pool="tickets-friday"} 80
shardcap_pool_available{pool="demo"} 0
# TYPE shardcap_pool_capacity gauge
shardcap_pool_capacity{pool="tickets-friday"} 1000
shardcap_pool_capacity{pool="demo"} 100
# TYPE shardcap_pool_confirmed gauge
shardcap_pool_confirmed{pool="tickets-friday"} 400
shardcap_pool_confirmed{pool="demo"} 100
# TYPE shardcap_pool_held gauge
shardcap_pool_held{pool="tickets-friday"} 520
shardcap_pool_held{pool="demo"} 0
# TYPE shardcap_ready gauge
shardcap_ready 1
"#;
        let r = "shardcap_request_duration_seconds";
        [
            head.to_string(),
            HISTOGRAM_HEAD.to_string(),
            histogram(r, r#"core="0",op="confirm""#, [0; 16], 600),
            histogram(
                r,
                r#"core="0",op="reserve""#,
                [0, 140, 1100, 1900, 2040, 2070, 2085, 2090, 2090, 2090, 2090, 2090, 2090, 2090, 2090, 2090],
                0,
            ),
            histogram(
                r,
                r#"core="1",op="reserve""#,
                [0, 0, 300, 1000, 1200, 1270, 1300, 1310, 1315, 1320, 1320, 1320, 1320, 1320, 1320, 1320],
                0,
            ),
        ]
        .concat()
    }

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text).expect("canned exposition parses")
    }

    fn pool(name: &str, [capacity, held, confirmed, available]: [u64; 4], taken_ratio: f64) -> PoolRow {
        PoolRow { name: name.to_string(), capacity, held, confirmed, available, taken_ratio }
    }

    /// The non-border words of the first line of `text` whose first word is `first`.
    fn words_of_row(text: &str, first: &str) -> Vec<String> {
        let rows = text.lines().map(|line| line.replace('│', " "));
        let mut rows = rows.map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        rows.find(|words| words.first().is_some_and(|w| w == first))
            .unwrap_or_else(|| panic!("no row starts with {first:?} in\n{text}"))
    }

    #[test]
    fn a_scrape_keeps_the_families_the_view_needs() {
        let a = parse(&scrape_a());
        assert_eq!(a.cores.len(), 2);
        let core0 = &a.cores[&0];
        assert_eq!((core0.operations, core0.operations_ok, core0.busy), (1460.0, 1400.0, 3.0));
        assert_eq!((core0.connections_open, core0.holds_active), (12.0, 300.0));
        // The confirm and log histograms are not the reserve histogram.
        assert_eq!(core0.reserve_buckets.len(), 17);
        assert_eq!(core0.reserve_buckets[1], (0.000025, 100.0));
        assert_eq!(core0.reserve_buckets[16], (f64::INFINITY, 1050.0));
        assert_eq!(a.cores[&1].busy, 9.0);
        assert_eq!(a.pools.keys().collect::<Vec<_>>(), ["demo", "tickets-friday"]);
        assert_eq!(a.pools["tickets-friday"], PoolSample { capacity: 1000, held: 500, confirmed: 300, available: 200 });
        assert_eq!((a.pools_count, a.oversell, a.ready), (Some(3), 0, Some(true)));
        assert_eq!(Scrape::parse("").expect("empty text parses"), Scrape::default());
    }

    #[test]
    fn two_scrapes_a_second_apart_give_rates_and_the_interval_percentile() {
        let view = View::new(Some(&parse(&scrape_a())), &parse(&scrape_b()), Duration::from_secs(1));
        let core0 = Activity {
            operations: 1250.0,
            ok_ratio: Some(0.8),
            refused: 250.0,
            busy: 10.0,
            // Over the interval: 1030 of 1040 reserves took at most 1 ms; over the whole run
            // the percentile would be 500 µs.
            p99_reserve: Some(Latency::AtMost(0.001)),
            connections_open: 15,
            holds_active: 340,
            retention_window_s: Some(31.2),
            retention_evictions: 500.0,
        };
        let core1 = Activity {
            operations: 500.0,
            ok_ratio: Some(0.9),
            refused: 50.0,
            busy: 20.0,
            p99_reserve: Some(Latency::AtMost(0.005)),
            connections_open: 11,
            holds_active: 180,
            // Nothing kept: no window to show.
            retention_window_s: None,
            retention_evictions: 0.0,
        };
        let total = Activity {
            operations: 1750.0,
            ok_ratio: Some(1450.0 / 1750.0),
            refused: 300.0,
            busy: 30.0,
            p99_reserve: Some(Latency::AtMost(0.0025)),
            connections_open: 26,
            holds_active: 520,
            retention_window_s: Some(31.2),
            retention_evictions: 500.0,
        };
        let expected = View {
            span: Span::PerSecond(Duration::from_secs(1)),
            cores: vec![(0, core0), (1, core1)],
            total,
            pools: vec![pool("demo", [100, 0, 100, 0], 1.0), pool("tickets-friday", [1000, 520, 400, 80], 0.92)],
            pools_count: Some(3),
            oversell: 2,
            ready: Some(true),
            fetch_error: None,
        };
        assert_eq!(view, expected);
        // Half a second apart, the same increases are twice the rate.
        let half = View::new(Some(&parse(&scrape_a())), &parse(&scrape_b()), Duration::from_millis(500));
        assert_eq!((half.total.operations, half.total.busy), (3500.0, 60.0));
    }

    #[test]
    fn the_first_scrape_shows_totals_since_start() {
        let a = parse(&scrape_a());
        for view in [View::new(None, &a, Duration::from_secs(1)), View::new(Some(&a), &a, Duration::ZERO)] {
            assert_eq!(view.span, Span::SinceStart);
            let (core, core0) = &view.cores[0];
            assert_eq!(*core, 0);
            assert_eq!((core0.operations, core0.refused, core0.busy), (1460.0, 60.0, 3.0));
            assert_eq!(core0.ok_ratio, Some(1400.0 / 1460.0));
            // Cumulative buckets: 1040 of 1050 reserves took at most 250 µs.
            assert_eq!(core0.p99_reserve, Some(Latency::AtMost(0.00025)));
            assert_eq!(view.cores[1].1.p99_reserve, Some(Latency::AtMost(0.0005)));
            assert_eq!((view.total.operations, view.total.busy), (2280.0, 12.0));
            assert_eq!(view.pools[1], pool("tickets-friday", [1000, 500, 300, 200], 0.8));
            assert_eq!(view.oversell, 0);
        }
    }

    #[test]
    fn a_restarted_server_counts_from_zero() {
        let b = parse(&scrape_b());
        let a = parse(&scrape_a());
        // From b back to a every counter went down: a's values are the increases.
        let view = View::new(Some(&b), &a, Duration::from_secs(2));
        assert_eq!(view.span, Span::PerSecond(Duration::from_secs(2)));
        assert_eq!((view.cores[0].1.operations, view.cores[0].1.busy), (730.0, 1.5));
        assert_eq!(view.cores[0].1.p99_reserve, Some(Latency::AtMost(0.00025)));
        // A reserve-free interval has no percentile and no ok ratio.
        let still = View::new(Some(&a), &a, Duration::from_secs(1));
        assert_eq!((still.total.operations, still.total.ok_ratio, still.total.p99_reserve), (0.0, None, None));
    }

    #[test]
    fn the_percentile_is_the_upper_bound_of_its_bucket() {
        let buckets = [(0.001, 90.0), (0.01, 98.0), (1.0, 99.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&buckets, 50), Some(Latency::AtMost(0.001)));
        assert_eq!(quantile(&buckets, 90), Some(Latency::AtMost(0.001)));
        assert_eq!(quantile(&buckets, 91), Some(Latency::AtMost(0.01)));
        assert_eq!(quantile(&buckets, 99), Some(Latency::AtMost(1.0)));
        assert_eq!(quantile(&buckets, 100), Some(Latency::Above(1.0)));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 99), None);
        assert_eq!(quantile(&[], 99), None);
        assert_eq!(latency_text(Latency::AtMost(0.000025)), "≤ 25 µs");
        assert_eq!(latency_text(Latency::AtMost(0.0025)), "≤ 2.5 ms");
        assert_eq!(latency_text(Latency::Above(1.0)), "> 1 s");
    }

    #[test]
    fn the_screen_shows_cores_totals_pools_and_the_oversell() {
        let mut view = View::new(Some(&parse(&scrape_a())), &parse(&scrape_b()), Duration::from_secs(1));
        let source = "http://127.0.0.1:9400/metrics";
        let text = render_text(&view, source, 120, 40);
        let header = text.lines().next().expect("a first line");
        for part in ["shardcap top", source, "ready", "ops/s 1750", "OVERSELL 2"] {
            assert!(header.contains(part), "{part:?} not in the header {header:?}");
        }
        assert!(text.contains("cores: per second over 1.0 s"), "{text}");
        assert_eq!(
            words_of_row(&text, "core"),
            ["core", "ops/s", "ok", "refused/s", "busy/s", "p99", "reserve", "conns", "holds"]
        );
        assert_eq!(words_of_row(&text, "0"), ["0", "1250", "80.0%", "250", "10.0", "≤", "1", "ms", "15", "340"]);
        assert_eq!(words_of_row(&text, "1"), ["1", "500", "90.0%", "50.0", "20.0", "≤", "5", "ms", "11", "180"]);
        assert_eq!(words_of_row(&text, "all"), ["all", "1750", "82.9%", "300", "30.0", "≤", "2.5", "ms", "26", "520"]);
        // The retention: the shortest window of a core that keeps records, and evictions.
        assert!(text.contains("repeats kept 31 s back, 500/s evicted early"), "{text}");
        assert!(text.contains("pools: 2 of 3 exported"), "{text}");
        assert_eq!(words_of_row(&text, "pool"), ["pool", "capacity", "held", "confirmed", "available", "taken"]);
        // On 120 columns the bar has its widest, 40 cells, 92% of them filled.
        let demo = words_of_row(&text, "demo");
        assert_eq!(demo[..6], ["demo", "100", "0", "100", "0", "100.0%"]);
        assert_eq!(demo[6], "█".repeat(40));
        let tickets = words_of_row(&text, "tickets-friday");
        assert_eq!(tickets[..6], ["tickets-friday", "1000", "520", "400", "80", "92.0%"]);
        assert_eq!(tickets[6], format!("{}{}", "█".repeat(37), "·".repeat(3)));
        let demo_line = text.lines().position(|l| l.contains("demo")).expect("a demo line");
        assert!(text.lines().nth(demo_line + 1).is_some_and(|l| l.contains("tickets-friday")), "pools sorted by name");

        // The oversell count is white on red.
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("memory terminal");
        terminal.draw(|frame| render(frame, &view, source)).expect("memory terminal");
        let at = header.find("OVERSELL").expect("in the header");
        let x = header[..at].chars().count() as u16;
        assert_eq!(terminal.backend().buffer()[(x, 0)].bg, Color::Red);

        // A failed fetch keeps the figures and says why in the header.
        view.fetch_error = Some("cannot reach http://127.0.0.1:9400/metrics: connection refused".to_string());
        let text = render_text(&view, source, 120, 40);
        let second = text.lines().nth(1).expect("a second line");
        let expected = "cannot reach http://127.0.0.1:9400/metrics: connection refused";
        assert_eq!(second, format!("error: {expected} (retrying; figures from the last good read)"));
        assert_eq!(words_of_row(&text, "all")[1], "1750");
        // A longer one wraps onto a third line rather than being cut.
        view.fetch_error = Some(format!("{expected}, and this sentence makes the message longer than a line"));
        let text = render_text(&view, source, 120, 40);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("error: cannot reach") && lines[2].ends_with("from the last good read)"),
            "{text}"
        );
        assert!(lines[3].starts_with("┌ cores"), "{text}");
    }

    #[test]
    fn the_first_screen_shows_totals() {
        let view = View::new(None, &parse(&scrape_a()), Duration::ZERO);
        let text = render_text(&view, "http://x/metrics", 120, 40);
        assert!(text.lines().next().is_some_and(|l| l.contains("ops/s –") && l.contains("oversell 0")), "{text}");
        assert!(text.contains("cores: totals since start"), "{text}");
        assert_eq!(words_of_row(&text, "core")[1..4], ["ops", "ok", "refused"]);
        assert_eq!(words_of_row(&text, "0"), ["0", "1460", "95.9%", "60", "3", "≤", "250", "µs", "12", "300"]);
        // 80 columns keep every number and drop the bars.
        let narrow = render_text(&view, "http://x/metrics", 80, 40);
        assert_eq!(words_of_row(&narrow, "all"), ["all", "2280", "96.5%", "80", "12", "≤", "500", "µs", "21", "500"]);
        assert_eq!(words_of_row(&narrow, "tickets-friday"), ["tickets-friday", "1000", "500", "300", "200", "80.0%"]);
    }

    /// Serves one HTTP answer on a loopback port; returns the admin URL and the request line.
    fn serve_once(status: &'static str, body: String) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("a connection");
            let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
            let mut request = String::new();
            reader.read_line(&mut request).expect("a request line");
            let mut line = String::new();
            while reader.read_line(&mut line).expect("a header") > 2 {
                line.clear();
            }
            let _ = tx.send(request.trim_end().to_string());
            let length = body.len();
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}");
            stream.write_all(answer.as_bytes()).expect("the answer is sent");
        });
        (url, rx)
    }

    #[test]
    fn fetch_reads_the_metrics_path_and_names_its_failures() {
        let (url, request) = serve_once("200 OK", scrape_b());
        assert_eq!(fetch(&url, Duration::from_secs(5)), Ok(parse(&scrape_b())));
        assert_eq!(request.recv().expect("a request"), "GET /metrics HTTP/1.1");

        let (url, _request) = serve_once("404 Not Found", "no".to_string());
        let error = fetch(&format!("{url}/"), Duration::from_secs(5)).expect_err("a 404 fails");
        assert_eq!(error, format!("{url}/metrics: HTTP status 404 Not Found, expected 200"));

        let closed = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let address = closed.local_addr().expect("an address");
        drop(closed);
        let error = fetch(&address.to_string(), Duration::from_secs(5)).expect_err("nobody listens");
        assert_eq!(error, format!("cannot reach http://{address}/metrics: connection refused"));

        let error = fetch("https://127.0.0.1:9400", Duration::from_secs(1)).expect_err("no TLS");
        assert!(error.contains("https is not supported"), "{error}");
    }

    #[test]
    fn render_once_draws_a_served_scrape() {
        let (url, _request) = serve_once("200 OK", scrape_b());
        let text = render_once(&url, None, 120, 40).expect("one frame");
        // The header (2 lines), the cores (7) and the pools (5); the blank rest is trimmed.
        assert_eq!(text.lines().count(), 14, "{text}");
        assert!(text.lines().next().is_some_and(|l| l.contains(&format!("{url}/metrics"))), "{text}");
        let tickets = words_of_row(&text, "tickets-friday");
        assert_eq!(tickets[..6], ["tickets-friday", "1000", "520", "400", "80", "92.0%"]);
        assert_eq!(render_once(&url, None, 0, 40), Err("cannot render into 0x40 cells".to_string()));
    }

    #[test]
    fn an_admin_address_becomes_its_metrics_url() {
        assert_eq!(metrics_url("http://127.0.0.1:9400"), "http://127.0.0.1:9400/metrics");
        assert_eq!(metrics_url("http://127.0.0.1:9400/"), "http://127.0.0.1:9400/metrics");
        assert_eq!(metrics_url("127.0.0.1:9400"), "http://127.0.0.1:9400/metrics");
        assert_eq!(metrics_url("http://h:1/metrics"), "http://h:1/metrics");
    }
}
