//! The command line, and the plan it resolves to.
//!
//! Flags that a `--shape` preset sets are `Option`s here: the plan takes an explicit flag
//! first, then the preset's value, then the default. Every other flag has a plain default.
//! [`Plan::resolve`] checks all values together, so that a bad combination is refused
//! before anything touches the server.

use clap::{Parser, ValueEnum};
use shardcap::protocol::control::PoolRules;

/// What the operations of a run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Ping frames: the I/O ceiling. One ping per frame whatever --ops-per-frame says
    /// (ping carries no records).
    Ping,
    /// Reserve batches; every hold stays until its TTL ends.
    Reserve,
    /// Reserve, then confirm every successful hold in a later frame.
    ReserveConfirm,
    /// Reserve, then release a fraction (--release-ratio) of the successful holds in a
    /// later frame; the rest expire (short default TTL).
    Churn,
    /// Reserve, then one follow-up per successful hold in a fixed mix: 20% confirmed, 30%
    /// released, 10% extended (by --ttl-ms from then) and 10% looked up, both then left to
    /// expire, and 30% left to expire (short default TTL). The soak's workload.
    Mixed,
}

impl Workload {
    /// The name used in the report (the flag's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Ping => "ping",
            Workload::Reserve => "reserve",
            Workload::ReserveConfirm => "reserve-confirm",
            Workload::Churn => "churn",
            Workload::Mixed => "mixed",
        }
    }
}

/// Where connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Every connection to --server, the shared port; the server forwards operations of
    /// users homed on another core.
    Plain,
    /// Connections spread over the core ports from hello; each sends only operations of
    /// users homed on its core, so no operation is forwarded.
    ShardAware,
}

impl Mode {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::ShardAware => "shard-aware",
        }
    }
}

/// How an index (a user, a pool) is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dist {
    /// Every index equally likely.
    Uniform,
    /// Zipf with exponent --zipf-theta: the first (user 1, pool <prefix>-0) is the hottest.
    Zipf,
}

impl Dist {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf",
        }
    }
}

/// Presets for the workload's shape; explicit flags override what they set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// One hot pool, zipf users (--pools 1 --user-dist zipf).
    FlashSale,
    /// Many small pools, short holds: --pools 1000 --pool-dist zipf --workload churn.
    Telecom,
}

impl Shape {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Shape::FlashSale => "flash-sale",
            Shape::Telecom => "telecom",
        }
    }
}

/// `shardcap-loadgen`: a line-rate load generator for the shardcap binary protocol.
#[derive(Debug, Parser)]
#[command(name = "shardcap-loadgen", version)]
pub struct Args {
    /// The server's shared data port (setup always goes there; plain-mode connections too).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub server: String,
    /// plain: all connections to --server; shard-aware: connections spread over the core
    /// ports, each sending only operations of users homed on its core [default: plain;
    /// shard-aware with --soak].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// What to send [default: reserve; churn with --shape telecom; mixed with --soak].
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// Shape preset: flash-sale (1 pool, zipf users) or telecom (1000 pools, zipf pool
    /// choice, churn). Explicit flags override it.
    #[arg(long, value_enum)]
    pub shape: Option<Shape>,
    /// Executor threads (unpinned); connections are split among them round-robin.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// TCP connections in total.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Frames in flight per connection at most (closed loop: always this many).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub depth: u32,
    /// Operations per batch frame (ping: always one per frame).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub ops_per_frame: u16,
    /// Open loop: total intended operations per second over all connections; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Open loop: send times are rounded up to a multiple of this tick, in µs, so that the
    /// connections of a thread wake together (each wake of an executor costs several µs of
    /// CPU; one per frame would make this client the bottleneck). Latency still runs from
    /// the intended time, so the rounding is measured, not hidden. 0: no rounding.
    #[arg(long, default_value_t = 100)]
    pub open_tick_us: u64,
    /// Units per reserve.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub qty: u32,
    /// Hold TTL of every reserve, in ms [default: 60000; 2000 for churn; 5000 for mixed]
    /// (an extend names it too). Created pools have
    /// a default TTL of 60000 and a maximum of 86400000 (one day), which is also the cap.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub ttl_ms: Option<u32>,
    /// churn: the fraction of successful holds released in a later frame (0..=1).
    #[arg(long, default_value_t = 0.5)]
    pub release_ratio: f64,
    /// Number of users; user ids are 1..=N (index + 1 as u128).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// How users are chosen [default: uniform; zipf with --shape flash-sale or --soak].
    #[arg(long, value_enum)]
    pub user_dist: Option<Dist>,
    /// Exponent of the zipf distributions (users and pools).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// Number of pools, created before the run as <prefix>-0 .. <prefix>-(N-1)
    /// [default: 1; 1000 with --shape telecom; 8 with --soak].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub pools: Option<u32>,
    /// How pools are chosen [default: uniform; zipf with --shape telecom or --soak].
    #[arg(long, value_enum)]
    pub pool_dist: Option<Dist>,
    /// Prefix of the pool names.
    #[arg(long, default_value = "lg")]
    pub pool_prefix: String,
    /// Capacity of each created pool, in units.
    #[arg(long, default_value_t = 1_000_000_000_000_000_000)]
    pub capacity: u64,
    /// The last N of the created pools get --sold-out-capacity instead: they sell out
    /// within the first moments and stay sold out (confirmed units never return), so that
    /// sold_out answers are part of the load [default: 0; 1 with --soak].
    #[arg(long)]
    pub sold_out_pools: Option<u32>,
    /// Capacity of the --sold-out-pools, in units.
    #[arg(long, default_value_t = 1_000)]
    pub sold_out_capacity: u64,
    /// Rule of each created pool: most units per user (0: none).
    #[arg(long, default_value_t = 0)]
    pub max_per_user: u64,
    /// Rule of each created pool: reserve attempts per user and second (0: none; needs
    /// --user-burst).
    #[arg(long, default_value_t = 0)]
    pub user_rate: u32,
    /// Rule of each created pool: attempts a user may make at once.
    #[arg(long, default_value_t = 0)]
    pub user_burst: u32,
    /// Rule of each created pool: most units per reserve (0: none).
    #[arg(long, default_value_t = 0)]
    pub max_qty: u32,
    /// Rule of each created pool: a sale window open from a minute before the run to a
    /// day after it (checked on every reserve, never refusing).
    #[arg(long)]
    pub window: bool,
    /// Rule of each created pool: keep every user's activity.
    #[arg(long)]
    pub track_users: bool,
    /// Measured run time in seconds, after the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Warmup in seconds: load is sent, nothing is recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// Stop sending once this many operations were sent in total (warmup included), then
    /// drain; e.g. to fill the server with N holds.
    #[arg(long)]
    pub max_ops: Option<u64>,
    /// Seed of the user and pool choices (default: random). Reservation ids stay unique
    /// across runs whatever the seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Scrape this URL (a server's `http://ADDR/metrics`) during the run, as Prometheus
    /// would, to measure what scraping costs.
    #[arg(long)]
    pub scrape_url: Option<String>,
    /// Time between two scrapes, in ms (at least 10).
    #[arg(long, default_value_t = 100)]
    pub scrape_interval_ms: u64,
    /// The soak benchmark instead of one run (defaults: the mixed workload, 8 zipf-chosen
    /// pools of which 1 sells out, zipf users, shard-aware): measure the peak (closed loop,
    /// --soak-peak-s), then run open loop at --soak-load-pct of it for --soak-minutes,
    /// sampling the server's RSS and metrics (retention window and evictions where it has
    /// them) every --soak-sample-s. Fails (exit 1) on a refusal other than the pools' own
    /// (sold_out and rule refusals are fine; busy, holds_limit_reached etc. are not), a
    /// frame timed out or lost, RSS growth above --soak-rss-growth-pct after the warm-up, a
    /// non-zero shardcap_oversell_detected_total, or less than --soak-sustained-pct of the
    /// intended rate answered. The server is started with --server-bin, or given with --server, --admin
    /// and --server-pid. Prints its table on stderr as it goes and one JSON object on
    /// stdout. E.g. `--soak --server-bin target/release/shardcap --durability none
    /// --threads 2`; tools/soak runs it in sync and none. See README, Performance.
    #[arg(long)]
    pub soak: bool,
    /// Soak: measured soak time, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub soak_minutes: f64,
    /// Soak: the open loop's rate, in percent of the measured peak.
    #[arg(long, default_value_t = 80.0)]
    pub soak_load_pct: f64,
    /// Soak: length of the closed-loop peak measurement, in seconds (after a warmup of two
    /// TTLs, at least 1 s: the holds left to expire then expire during the measurement).
    #[arg(long, default_value_t = 5.0)]
    pub soak_peak_s: f64,
    /// Soak: use this peak, in operations per second, instead of measuring it.
    #[arg(long)]
    pub soak_peak_ops: Option<f64>,
    /// Soak: most time spent before the peak measurement filling the server's retention
    /// store (closed loop until every core evicts), in seconds; 0: measure at once.
    #[arg(long, default_value_t = 600.0)]
    pub soak_fill_max_s: f64,
    /// Soak: time between two samples of RSS and metrics, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub soak_sample_s: f64,
    /// Soak: the warm-up, in percent of the soak time: RSS growth is measured from the first
    /// sample after it (or after the retention store first evicted on every core, if that
    /// comes later and leaves two samples).
    #[arg(long, default_value_t = 20.0)]
    pub soak_warmup_pct: f64,
    /// Soak: most RSS growth allowed after the warm-up, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub soak_rss_growth_pct: f64,
    /// Soak: the least share of the intended rate the server must answer, in percent (below
    /// it, it did not sustain the load).
    #[arg(long, default_value_t = 95.0)]
    pub soak_sustained_pct: f64,
    /// Soak: start this `shardcap` binary on its embedded default configuration, with only
    /// the ports (loopback, OS-chosen), the data directory and --durability changed; it is
    /// stopped at the end.
    #[arg(long)]
    pub server_bin: Option<std::path::PathBuf>,
    /// Soak with --server-bin: the server's durability mode.
    #[arg(long, value_enum, default_value_t = shardcap::wal::Durability::Sync)]
    pub durability: shardcap::wal::Durability,
    /// Soak with --server-bin: its data directory (default: a fresh one under the system's
    /// temporary directory, removed at the end).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Soak without --server-bin: the pid of the server at --server (its RSS is read from
    /// /proc/PID/status).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Soak without --server-bin: the server's admin address (metrics are read from
    /// http://ADDR/metrics).
    #[arg(long)]
    pub admin: Option<String>,
}

/// The run, with presets and defaults applied and every value checked.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The shared data port, as given.
    pub server: String,
    /// Where connections go.
    pub mode: Mode,
    /// What is sent.
    pub workload: Workload,
    /// The preset, if any (for the report).
    pub shape: Option<Shape>,
    /// Executor threads.
    pub threads: u16,
    /// Connections in total.
    pub connections: u32,
    /// Frames in flight per connection at most.
    pub depth: u32,
    /// Operations per batch frame.
    pub ops_per_frame: u16,
    /// Intended operations per second in total; 0 = closed loop.
    pub rate_ops_per_s: f64,
    /// Open loop: send times are rounded up to a multiple of this, in µs.
    pub open_tick_us: u64,
    /// Units per reserve.
    pub qty: u32,
    /// Hold TTL of every reserve, in ms.
    pub ttl_ms: u32,
    /// churn: fraction of successful holds released.
    pub release_ratio: f64,
    /// Number of users.
    pub users: u64,
    /// How users are chosen.
    pub user_dist: Dist,
    /// Zipf exponent.
    pub zipf_theta: f64,
    /// Number of pools.
    pub pools: u32,
    /// How pools are chosen.
    pub pool_dist: Dist,
    /// Prefix of the pool names.
    pub pool_prefix: String,
    /// Capacity of each pool, in units (but the sold-out pools).
    pub capacity: u64,
    /// The last this many pools have `sold_out_capacity` instead.
    pub sold_out_pools: u32,
    /// Capacity of the sold-out pools, in units.
    pub sold_out_capacity: u64,
    /// Rules of each pool.
    pub rules: PoolRules,
    /// Measured time, in seconds.
    pub duration_s: f64,
    /// Warmup, in seconds.
    pub warmup_s: f64,
    /// Operations to send in total at most.
    pub max_ops: Option<u64>,
    /// Seed of the random choices.
    pub seed: u64,
    /// JSON output.
    pub json: bool,
    /// The metrics URL scraped during the run, if any.
    pub scrape_url: Option<String>,
    /// Time between two scrapes.
    pub scrape_interval_ms: u64,
    /// The soak benchmark, if asked for.
    pub soak: Option<SoakPlan>,
}

/// Where the soak's server comes from.
#[derive(Clone, Debug)]
pub enum SoakServer {
    /// Started by the soak from this binary, with this durability and data directory
    /// (`None`: a fresh temporary one).
    Start {
        /// The `shardcap` binary.
        bin: std::path::PathBuf,
        /// Its durability mode.
        durability: shardcap::wal::Durability,
        /// Its data directory.
        data_dir: Option<std::path::PathBuf>,
    },
    /// Running already: its pid and admin address (`--server` is its data port).
    Given {
        /// The server's process id.
        pid: u32,
        /// Its admin address.
        admin: String,
    },
}

/// The soak benchmark's settings (see [`Args::soak`]).
#[derive(Clone, Debug)]
pub struct SoakPlan {
    /// The server.
    pub server: SoakServer,
    /// Soak time, in seconds.
    pub duration_s: f64,
    /// The open loop's rate, in percent of the peak.
    pub load_pct: f64,
    /// The closed-loop peak measurement, in seconds.
    pub peak_s: f64,
    /// A peak given instead of measured, in operations per second.
    pub peak_ops: Option<f64>,
    /// Most time filling the retention store before the peak, in seconds.
    pub fill_max_s: f64,
    /// Time between samples, in seconds.
    pub sample_s: f64,
    /// Warm-up, in percent of the soak time.
    pub warmup_pct: f64,
    /// Most RSS growth after the warm-up, in percent.
    pub rss_growth_pct: f64,
    /// Least share of the intended rate answered, in percent.
    pub sustained_pct: f64,
}

/// The hold TTL of the pools the load generator creates, in ms. Every reserve names its
/// own TTL, so the pools' settings do not depend on the run's flags and a re-run with
/// another --ttl-ms reuses the same pools.
pub const POOL_TTL_MS_DEFAULT: u32 = 60_000;
/// The longest hold the created pools allow, in ms (one day); --ttl-ms may not exceed it.
pub const POOL_TTL_MS_MAX: u32 = 86_400_000;

impl Plan {
    /// Applies the shape preset and the defaults, and checks every value.
    pub fn resolve(args: Args) -> Result<Plan, String> {
        let (preset_pools, preset_user_dist, preset_pool_dist, preset_workload) = match (args.shape, args.soak) {
            (Some(Shape::FlashSale), _) => (Some(1), Some(Dist::Zipf), None, None),
            (Some(Shape::Telecom), _) => (Some(1000), None, Some(Dist::Zipf), Some(Workload::Churn)),
            // The soak: zipfian users over several pools (the hottest pool takes about a
            // third of the reserves), the mixed workload.
            (None, true) => (Some(8), Some(Dist::Zipf), Some(Dist::Zipf), Some(Workload::Mixed)),
            (None, false) => (None, None, None, None),
        };
        let workload = args.workload.or(preset_workload).unwrap_or(Workload::Reserve);
        let ttl_default_ms = match workload {
            Workload::Churn => 2_000,
            Workload::Mixed => 5_000,
            _ => 60_000,
        };
        let soak = args.soak.then(|| SoakPlan {
            server: match (&args.server_bin, args.server_pid, &args.admin) {
                (Some(bin), _, _) => {
                    SoakServer::Start { bin: bin.clone(), durability: args.durability, data_dir: args.data_dir.clone() }
                }
                (None, Some(pid), Some(admin)) => SoakServer::Given { pid, admin: admin.clone() },
                // Refused by the check below.
                (None, _, _) => SoakServer::Given { pid: 0, admin: String::new() },
            },
            duration_s: args.soak_minutes * 60.0,
            load_pct: args.soak_load_pct,
            peak_s: args.soak_peak_s,
            peak_ops: args.soak_peak_ops,
            fill_max_s: args.soak_fill_max_s,
            sample_s: args.soak_sample_s,
            warmup_pct: args.soak_warmup_pct,
            rss_growth_pct: args.soak_rss_growth_pct,
            sustained_pct: args.soak_sustained_pct,
        });
        let plan = Plan {
            server: args.server,
            mode: args.mode.unwrap_or(if args.soak { Mode::ShardAware } else { Mode::Plain }),
            workload,
            shape: args.shape,
            threads: args.threads,
            connections: args.connections,
            depth: args.depth,
            ops_per_frame: args.ops_per_frame,
            rate_ops_per_s: args.rate,
            open_tick_us: args.open_tick_us,
            qty: args.qty,
            ttl_ms: args.ttl_ms.unwrap_or(ttl_default_ms),
            release_ratio: args.release_ratio,
            users: args.users,
            user_dist: args.user_dist.or(preset_user_dist).unwrap_or(Dist::Uniform),
            zipf_theta: args.zipf_theta,
            pools: args.pools.or(preset_pools).unwrap_or(1),
            pool_dist: args.pool_dist.or(preset_pool_dist).unwrap_or(Dist::Uniform),
            pool_prefix: args.pool_prefix,
            capacity: args.capacity,
            sold_out_pools: args.sold_out_pools.unwrap_or(if args.soak { 1 } else { 0 }),
            sold_out_capacity: args.sold_out_capacity,
            rules: {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                PoolRules {
                    max_per_user: args.max_per_user,
                    opens_at_ms: if args.window { now - 60_000 } else { 0 },
                    closes_at_ms: if args.window { now + 86_400_000 } else { 0 },
                    rate_per_s: args.user_rate,
                    burst: args.user_burst,
                    max_qty: args.max_qty,
                    flags: if args.track_users { shardcap::protocol::control::RULE_FLAG_TRACK_USERS } else { 0 },
                    kept_permille: 0,
                    priority_min: 0,
                }
            },
            duration_s: args.duration_s,
            warmup_s: args.warmup_s,
            max_ops: args.max_ops,
            seed: args.seed.unwrap_or_else(rand::random),
            json: args.json,
            scrape_url: args.scrape_url,
            scrape_interval_ms: args.scrape_interval_ms,
            soak,
        };
        plan.check()?;
        if let Some(soak) = &plan.soak {
            soak.check()?;
        }
        Ok(plan)
    }

    fn check(&self) -> Result<(), String> {
        if self.scrape_url.is_some() && self.scrape_interval_ms < 10 {
            return Err(format!("--scrape-interval-ms {}: at least 10", self.scrape_interval_ms));
        }
        let finite_at_least = |v: f64, min: f64| v.is_finite() && v >= min;
        if !(finite_at_least(self.duration_s, 0.0) && self.duration_s > 0.0) {
            return Err(format!("--duration-s {} must be a positive number", self.duration_s));
        }
        if !finite_at_least(self.warmup_s, 0.0) {
            return Err(format!("--warmup-s {} must be at least 0", self.warmup_s));
        }
        if !finite_at_least(self.rate_ops_per_s, 0.0) {
            return Err(format!("--rate {} must be at least 0", self.rate_ops_per_s));
        }
        if !(finite_at_least(self.release_ratio, 0.0) && self.release_ratio <= 1.0) {
            return Err(format!("--release-ratio {} must be within 0..=1", self.release_ratio));
        }
        if self.ttl_ms == 0 || self.ttl_ms > POOL_TTL_MS_MAX {
            return Err(format!("--ttl-ms {} must be within 1..={POOL_TTL_MS_MAX}", self.ttl_ms));
        }
        if !finite_at_least(self.zipf_theta, 0.0) {
            return Err(format!("--zipf-theta {} must be at least 0", self.zipf_theta));
        }
        if !self.rules.valid() {
            return Err("--user-rate and --user-burst go together; --max-qty must be below 2^29".into());
        }
        if self.capacity == 0 || self.capacity > 1 << 60 {
            return Err(format!("--capacity {} must be within 1..=2^60", self.capacity));
        }
        if self.sold_out_capacity == 0 || self.sold_out_capacity > 1 << 60 {
            return Err(format!("--sold-out-capacity {} must be within 1..=2^60", self.sold_out_capacity));
        }
        if self.sold_out_pools > self.pools {
            return Err(format!("--sold-out-pools {} exceeds --pools {}", self.sold_out_pools, self.pools));
        }
        if self.soak.is_some() && self.workload == Workload::Ping {
            return Err("--soak needs a workload that reserves (ping creates nothing to soak)".into());
        }
        let name_len = self.pool_prefix.len() + 1 + (self.pools - 1).to_string().len();
        if self.pool_prefix.is_empty() || !self.pool_prefix.bytes().all(|b| b.is_ascii_graphic()) || name_len > 64 {
            return Err(format!(
                "--pool-prefix '{}' must be printable ASCII without spaces, short enough for 64-byte pool names",
                self.pool_prefix
            ));
        }
        Ok(())
    }

    /// True for the open loop (a target rate).
    pub fn open_loop(&self) -> bool {
        self.rate_ops_per_s > 0.0
    }

    /// Operations one frame carries at most (ping frames carry one).
    pub fn frame_ops_max(&self) -> u16 {
        if self.workload == Workload::Ping { 1 } else { self.ops_per_frame }
    }

    /// The name of pool `index`.
    pub fn pool_name(&self, index: u32) -> String {
        format!("{}-{index}", self.pool_prefix)
    }

    /// The capacity pool `index` is created with.
    pub fn pool_capacity(&self, index: u32) -> u64 {
        if index >= self.pools - self.sold_out_pools { self.sold_out_capacity } else { self.capacity }
    }
}

impl SoakPlan {
    fn check(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if let SoakServer::Given { pid: 0, .. } = self.server {
            return Err("--soak needs --server-bin, or --server-pid and --admin for a running server".into());
        }
        if !positive(self.duration_s) {
            return Err("--soak-minutes must be a positive number".into());
        }
        if !(positive(self.load_pct) && self.load_pct <= 100.0) {
            return Err(format!("--soak-load-pct {} must be within 0..=100 (and above 0)", self.load_pct));
        }
        if !positive(self.peak_s) || self.peak_ops.is_some_and(|p| !positive(p)) {
            return Err("--soak-peak-s and --soak-peak-ops must be positive numbers".into());
        }
        if !(self.sample_s.is_finite() && self.sample_s >= 0.1) {
            return Err(format!("--soak-sample-s {} must be at least 0.1", self.sample_s));
        }
        if !(self.warmup_pct.is_finite() && (0.0..100.0).contains(&self.warmup_pct)) {
            return Err(format!("--soak-warmup-pct {} must be within 0..100", self.warmup_pct));
        }
        if !(self.rss_growth_pct.is_finite() && self.rss_growth_pct >= 0.0) {
            return Err(format!("--soak-rss-growth-pct {} must be at least 0", self.rss_growth_pct));
        }
        if !(self.sustained_pct.is_finite() && (0.0..=100.0).contains(&self.sustained_pct)) {
            return Err(format!("--soak-sustained-pct {} must be within 0..=100", self.sustained_pct));
        }
        // RSS growth needs a baseline after the warm-up and at least one later sample.
        let after_warmup_s = self.duration_s * (1.0 - self.warmup_pct / 100.0);
        if after_warmup_s < 2.0 * self.sample_s {
            return Err(format!(
                "the soak after its warm-up ({after_warmup_s:.1} s) must span at least two samples of --soak-sample-s {}",
                self.sample_s
            ));
        }
        Ok(())
    }
}
