//! The server configuration: one TOML file (or the embedded default), every field named
//! with its unit, documented with its default, and every limit validated together at
//! startup so that an operator sees all mistakes at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::protocol::HEADER_SIZE;
use crate::protocol::control::{PoolCreate, PoolRules};
use crate::protocol::ops::{LookupResult, ReserveOp};
use crate::shard::holds::HOLD_POOL_ID_MAX;
use crate::shard::{Engine, EngineConfig};
use crate::wal::Durability;

/// The configuration `shardcap serve` runs with when given no file: it listens on
/// 127.0.0.1:7400 and declares one example pool named `demo`. Also in configs/default.toml.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../configs/default.toml");

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening, cores and placement.
    #[serde(default)]
    pub server: ServerConfig,
    /// Every bound on memory and queues.
    #[serde(default)]
    pub limits: Limits,
    /// The write-ahead log and snapshots.
    #[serde(default)]
    pub durability: DurabilityConfig,
    /// The admin HTTP port: metrics, the JSON API, health.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Pools declared at startup (created in this order, ids from 1).
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
}

/// The admin HTTP port: Prometheus metrics at `/metrics`, the JSON API under `/v1/`,
/// `/healthz` and `/readyz` (docs/OBSERVABILITY.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin port; port 0 lets the OS choose; an empty string turns the port
    /// off. Keep it on loopback or a private network. Default `127.0.0.1:9400`.
    pub listen: String,
    /// The operator's secret: requests of the admin port which change something must send
    /// it (`Authorization: Bearer <token>`; empty: such requests are refused), and so must
    /// connections of the data port before they change a pool (an `auth` frame; empty:
    /// those changes are open, which the server allows only on loopback or with
    /// `server.insecure_open_control`). At most 255 bytes. The `SHARDCAP_ADMIN_TOKEN`
    /// environment variable overrides it. Default empty.
    pub token: String,
    /// Pools whose capacity, held, confirmed and available units are exported as metrics
    /// (by name). Empty: the first `metrics_pools_max` pools by id. Default empty.
    pub metrics_pools: Vec<String>,
    /// Most pools exported as metrics, so that label cardinality stays bounded however many
    /// pools exist (at most 10000). Default `64`.
    pub metrics_pools_max: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9400".into(),
            token: String::new(),
            metrics_pools: Vec::new(),
            metrics_pools_max: 64,
        }
    }
}

impl AdminConfig {
    /// The admin port's address, or `None` when it is off.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        if self.listen.is_empty() { None } else { self.listen.parse().ok() }
    }
}

/// Listening, cores and placement.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The shared data port every core accepts on (SO_REUSEPORT). Default `127.0.0.1:7400`.
    /// Port 0 lets the OS choose; the chosen port is printed at startup.
    pub listen: String,
    /// Whether each core also listens on a port of its own for shard-aware clients.
    /// Default `true`.
    pub core_ports: bool,
    /// Core `i` listens on `core_port_base + i` (same address as `listen`); 0 lets the OS
    /// choose each port. Default `7401`.
    pub core_port_base: u16,
    /// Number of cores (executors, and shards per pool); 0 means one per available CPU.
    /// Default `0`.
    pub cores: u16,
    /// Pin each executor to its own CPU. Default `true`.
    pub pin_cores: bool,
    /// Directory of the write-ahead logs and snapshots (one subdirectory per core).
    /// Default `shardcap-data` (relative to the working directory).
    pub data_dir: PathBuf,
    /// Memory each executor registers with io_uring, in bytes (locked memory). Default 2 MiB.
    pub io_memory_bytes: usize,
    /// How long an idle core keeps polling for work before it sleeps, in microseconds.
    /// Waking a sleeping thread costs tens of microseconds (more on virtual machines);
    /// polling a little longer saves that on every request that arrives meanwhile, at the
    /// price of CPU time while idle. Default `0`.
    pub spin_before_park_us: u64,
    /// How often each core checks for expired holds when it receives no requests, in ms.
    /// Default `10`.
    pub expiry_tick_ms: u64,
    /// Log level filter (`error`, `warn`, `info`, `debug`, `trace`); the `SHARDCAP_LOG`
    /// environment variable overrides it. Default `info`.
    pub log_level: String,
    /// Serve a non-loopback `listen` address without `admin.token`, leaving the operations
    /// that change pools (create, activate, rules, resize, rename, describe) open to anyone
    /// who can connect. Without it such a server refuses to start. Has no effect when a
    /// token is set (control then needs it) or on loopback (control is open there without
    /// a token anyway). Default `false`.
    pub insecure_open_control: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7400".into(),
            core_ports: true,
            core_port_base: 7401,
            cores: 0,
            pin_cores: true,
            data_dir: PathBuf::from("shardcap-data"),
            io_memory_bytes: 2 << 20,
            spin_before_park_us: 0,
            expiry_tick_ms: 10,
            log_level: "info".into(),
            insecure_open_control: false,
        }
    }
}

/// Every bound on memory and queues. A full queue answers `busy`; nothing grows without
/// bound.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request frame, header included, in bytes. Default 1 MiB.
    pub frame_size_max_bytes: u32,
    /// Most operations in one batch frame. Default `8192`.
    pub batch_operations_max: u32,
    /// Most open connections per core; more are answered `busy` and closed. Default `4096`.
    pub connections_max_per_core: u32,
    /// Most frames of one connection waiting for an answer (forwarded or parked); more are
    /// answered `busy`. Default `1024`.
    pub inflight_frames_max_per_connection: u32,
    /// Most operations a core has forwarded to other cores and not yet seen answered; more
    /// are answered `busy`. Default `65536`.
    pub forwarded_operations_max_per_core: u32,
    /// Depth of each channel between two cores, in messages. Default `1024`.
    pub mesh_channel_depth_messages: u32,
    /// Messages a core queues for one other core beyond that channel before it refuses
    /// with `busy` the client operations that could add more (operations to forward there;
    /// reserves and releases while any queue is full). Messages already produced are never
    /// dropped. Default `65536`.
    pub mesh_queue_messages_max: u32,
    /// Most live holds per core (held reservations; finished ones are kept apart, within
    /// `retention_bytes_max_per_core`); more are refused `holds_limit_reached`.
    /// Default `4000000`.
    pub holds_max_per_core: u32,
    /// Most reserves per core waiting for capacity borrowed from another core.
    /// Default `65536`.
    pub parked_reserves_max_per_core: u32,
    /// Most pools (at most 4,194,303: a hold names its pool in 22 bits). Default `65536`.
    pub pools_max: u32,
    /// The longest a confirmed, released or expired reservation is kept for idempotent
    /// repeats and lookups, in seconds after it finished. Default `3600`.
    pub reservation_retention_s: u64,
    /// The shortest: a finished reservation is always kept this long after it finished, in
    /// seconds. When keeping it would need more than `retention_bytes_max_per_core`, new
    /// reserves are answered `busy` instead. Default `30`: longer than the client library's
    /// whole retry horizon (4 attempts of 5 s).
    pub reservation_retention_s_min: u64,
    /// Memory for finished reservations per core, in bytes: at most 72 bytes each
    /// (record, commit reference, index), so 1 GiB keeps 14.9 million. The oldest is
    /// forgotten first when it is full. It must keep at least `holds_max_per_core`
    /// records (every live hold has a place to finish in). Default `1073741824` (1 GiB).
    pub retention_bytes_max_per_core: u64,
    /// The retry hint sent with `busy`, in ms. Default `5`.
    pub busy_retry_after_ms: u32,
    /// How long a partial frame may wait for the rest of its bytes, from its first byte,
    /// in ms; then the connection is closed without an answer. Default `10000`.
    pub frame_read_timeout_ms: u64,
    /// Answers a connection may have waiting to be written, in bytes: past it the server
    /// reads no further frame of that connection until they are written. Default 1 MiB.
    pub output_buffer_max_bytes: u32,
    /// How long a write of answers may make no progress (the client takes none of them), in
    /// ms; then the connection is closed. Default `10000`.
    pub write_stall_timeout_ms: u64,
}

impl Limits {
    /// The finished reservations `retention_bytes_max_per_core` keeps per core.
    pub fn retained_max_per_core(&self) -> u32 {
        let records = self.retention_bytes_max_per_core / crate::shard::retained::RETAINED_RECORD_BYTES;
        records.min(RETAINED_MAX as u64) as u32
    }
}

/// The most finished reservations a core can keep (the index names them in 31 bits).
const RETAINED_MAX: u32 = crate::shard::holds::RETAINED - 1;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_size_max_bytes: 1 << 20,
            batch_operations_max: 8192,
            connections_max_per_core: 4096,
            inflight_frames_max_per_connection: 1024,
            forwarded_operations_max_per_core: 65536,
            mesh_channel_depth_messages: 1024,
            mesh_queue_messages_max: 65536,
            holds_max_per_core: 4_000_000,
            parked_reserves_max_per_core: 65536,
            pools_max: 65536,
            reservation_retention_s: 3600,
            reservation_retention_s_min: 30,
            retention_bytes_max_per_core: 1 << 30,
            busy_retry_after_ms: 5,
            frame_read_timeout_ms: 10_000,
            output_buffer_max_bytes: 1 << 20,
            write_stall_timeout_ms: 10_000,
        }
    }
}

/// The write-ahead log and snapshots.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// `sync` (answers wait until their records are on disk), `batch` (the log is made
    /// durable every `fsync_interval_ms`; a crash loses the last window: the interval plus two
    /// durable writes) or `none` (memory only). Default `sync`.
    pub mode: Durability,
    /// In `batch` mode, how often the log is made durable, in ms. Default `5`.
    pub fsync_interval_ms: u64,
    /// A log segment file is closed and a new one started beyond this size, in bytes.
    /// Default 64 MiB.
    pub segment_size_bytes: u64,
    /// A snapshot is taken after this many records since the last one (0: never).
    /// Default `1000000`.
    pub snapshot_interval_records: u64,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            mode: Durability::Sync,
            fsync_interval_ms: 5,
            segment_size_bytes: 64 << 20,
            snapshot_interval_records: 1_000_000,
        }
    }
}

/// A pool declared in the configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name: 1 to 64 printable ASCII characters, no spaces.
    pub name: String,
    /// Total units.
    pub capacity: u64,
    /// TTL of a hold whose reserve asks for none, in seconds. Default `300`.
    #[serde(default = "default_ttl_s")]
    pub hold_ttl_s_default: u32,
    /// Longest TTL a reserve or extend may ask for, in seconds. Default `900`.
    #[serde(default = "default_ttl_max_s")]
    pub hold_ttl_s_max: u32,
    /// Whether reserves are accepted from the start. Default `true`.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Rule: most units one user may hold, have confirmed or wait for in the pool
    /// (0: no limit). Default `0`.
    #[serde(default)]
    pub max_per_user: u64,
    /// Rule: most units one reserve may ask for (0: no limit). Default `0`.
    #[serde(default)]
    pub max_qty: u32,
    /// Rule: reserve attempts per user and second (0: no limit); needs `burst`. Default `0`.
    #[serde(default)]
    pub rate_per_s: u32,
    /// Rule: attempts a user may make at once (the token bucket's size). Default `0`.
    #[serde(default)]
    pub burst: u32,
    /// Rule: reserves before this time (ms since the Unix epoch) answer `not_open`
    /// (0: none). Default `0`.
    #[serde(default)]
    pub opens_at_ms: u64,
    /// Rule: reserves from this time (ms since the Unix epoch) answer `closed` (0: none).
    /// Default `0`.
    #[serde(default)]
    pub closes_at_ms: u64,
    /// Keep every user's activity in the pool (also without a limit or a rate). Default
    /// `false`.
    #[serde(default)]
    pub track_users: bool,
    /// Rule: thousandths of the capacity kept for reserves of priority `priority_min` or
    /// more (0..=1000). Default `0`.
    #[serde(default)]
    pub kept_permille: u16,
    /// Rule: the lowest reserve priority that may take the kept units. Default `0`.
    #[serde(default)]
    pub priority_min: u8,
}

/// A pool's default hold TTL when its declaration names none, in seconds.
pub const HOLD_TTL_S_DEFAULT: u32 = 300;
/// A pool's longest hold TTL when its declaration names none, in seconds.
pub const HOLD_TTL_S_MAX: u32 = 900;

fn default_ttl_s() -> u32 {
    HOLD_TTL_S_DEFAULT
}
fn default_ttl_max_s() -> u32 {
    HOLD_TTL_S_MAX
}
pub(crate) fn default_true() -> bool {
    true
}

impl PoolConfig {
    /// The creation request this declaration stands for.
    pub fn to_request(&self) -> PoolCreate {
        PoolCreate {
            name: self.name.clone(),
            capacity: self.capacity,
            hold_ttl_ms_default: self.hold_ttl_s_default.saturating_mul(1000),
            hold_ttl_ms_max: self.hold_ttl_s_max.saturating_mul(1000),
            kind: 0,
            active: self.active,
            rules: PoolRules {
                max_per_user: self.max_per_user,
                opens_at_ms: self.opens_at_ms,
                closes_at_ms: self.closes_at_ms,
                rate_per_s: self.rate_per_s,
                burst: self.burst,
                max_qty: self.max_qty,
                flags: if self.track_users { crate::protocol::control::RULE_FLAG_TRACK_USERS } else { 0 },
                kept_permille: self.kept_permille,
                priority_min: self.priority_min,
            },
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is not valid or has unknown fields.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// One or more values are out of range; every problem is listed.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Parses TOML text (fields not given take their defaults); does not validate.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG_TOML).expect("the embedded default config parses")
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text)
    }

    /// The shared listening address (after validation it always parses).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated listen address")
    }

    /// True if the data ports listen on loopback only: the shared port and the core ports,
    /// which take the shared port's address.
    pub fn data_listen_loopback(&self) -> bool {
        self.server.listen.parse::<SocketAddr>().is_ok_and(|addr| match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback(),
            std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().map_or(ip.is_loopback(), |v4| v4.is_loopback()),
        })
    }

    /// True if a data connection may change pools without showing the admin token: no
    /// token is configured, and the data ports are on loopback or
    /// `server.insecure_open_control` says so. With a token, control always needs it.
    pub fn control_open(&self) -> bool {
        self.admin.token.is_empty() && (self.data_listen_loopback() || self.server.insecure_open_control)
    }

    /// The number of cores to run: the configured count, or one per available CPU.
    pub fn core_count(&self) -> u16 {
        if self.server.cores > 0 {
            self.server.cores
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(u16::MAX as usize) as u16)
        }
    }

    /// The state machine settings of core `core`.
    pub fn engine_config(&self, core: u16) -> EngineConfig {
        EngineConfig {
            core,
            cores: self.core_count(),
            holds_max: self.limits.holds_max_per_core,
            parked_max: self.limits.parked_reserves_max_per_core,
            retention_ms: self.limits.reservation_retention_s * 1000,
            retention_min_ms: self.limits.reservation_retention_s_min * 1000,
            retained_max: self.limits.retained_max_per_core(),
            pools_max: self.limits.pools_max,
        }
    }

    /// Checks every field and limit; lists all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let s = &self.server;
        let l = &self.limits;
        check(
            s.listen.parse::<SocketAddr>().is_ok(),
            format!("server.listen: '{}' is not an address like 127.0.0.1:7400", s.listen),
        );
        check(s.cores <= 1024, format!("server.cores: {} is above 1024", s.cores));
        let a = &self.admin;
        check(
            !a.token.is_empty() || self.data_listen_loopback() || s.insecure_open_control,
            format!(
                "server.listen: {} is not a loopback address and no admin token is set, so anyone who can \
                 connect could create, resize and deactivate pools. Set admin.token (or SHARDCAP_ADMIN_TOKEN; \
                 clients send it with --token or SHARDCAP_ADMIN_TOKEN), or listen on 127.0.0.1, or accept open \
                 control with server.insecure_open_control = true (serve --insecure-open-control)",
                s.listen
            ),
        );
        // The token itself never appears in a message.
        check(
            a.token.len() <= crate::protocol::control::AUTH_TOKEN_MAX_BYTES,
            format!(
                "admin.token: {} bytes, more than the {} an auth frame carries",
                a.token.len(),
                crate::protocol::control::AUTH_TOKEN_MAX_BYTES
            ),
        );
        check(
            a.listen.is_empty() || a.listen.parse::<SocketAddr>().is_ok(),
            format!("admin.listen: '{}' is not an address like 127.0.0.1:9400 (or \"\" for none)", a.listen),
        );
        check(
            a.metrics_pools_max <= 10_000,
            format!("admin.metrics_pools_max: {} is above 10000", a.metrics_pools_max),
        );
        check(
            a.metrics_pools.len() <= a.metrics_pools_max as usize,
            format!(
                "admin.metrics_pools: {} pools named, more than admin.metrics_pools_max ({})",
                a.metrics_pools.len(),
                a.metrics_pools_max
            ),
        );
        let cores = self.core_count() as u32;
        check(
            !s.core_ports || s.core_port_base == 0 || s.core_port_base as u32 + cores - 1 <= u16::MAX as u32,
            format!("server.core_port_base: {} + {cores} cores runs past port 65535", s.core_port_base),
        );
        check(
            (64 << 10..=1 << 30).contains(&s.io_memory_bytes),
            format!("server.io_memory_bytes: {} is not within 64 KiB..1 GiB", s.io_memory_bytes),
        );
        check(
            s.spin_before_park_us <= 1_000_000,
            format!("server.spin_before_park_us: {} is above 1000000", s.spin_before_park_us),
        );
        check(
            (1..=1000).contains(&s.expiry_tick_ms),
            format!("server.expiry_tick_ms: {} is not within 1..=1000", s.expiry_tick_ms),
        );
        check(
            ["error", "warn", "info", "debug", "trace"].contains(&s.log_level.as_str()),
            format!("server.log_level: '{}' is not one of error, warn, info, debug, trace", s.log_level),
        );
        check(
            (4096..=64 << 20).contains(&l.frame_size_max_bytes),
            format!("limits.frame_size_max_bytes: {} is not within 4096..=67108864", l.frame_size_max_bytes),
        );
        check(
            (1..=u16::MAX as u32).contains(&l.batch_operations_max),
            format!("limits.batch_operations_max: {} is not within 1..=65535", l.batch_operations_max),
        );
        let largest_record = ReserveOp::SIZE.max(LookupResult::SIZE) as u64;
        check(
            HEADER_SIZE as u64 + l.batch_operations_max as u64 * largest_record <= l.frame_size_max_bytes as u64,
            format!(
                "limits.batch_operations_max: {} operations of {largest_record} bytes do not fit in frame_size_max_bytes {}",
                l.batch_operations_max, l.frame_size_max_bytes
            ),
        );
        for (name, value) in [
            ("connections_max_per_core", l.connections_max_per_core),
            ("inflight_frames_max_per_connection", l.inflight_frames_max_per_connection),
            ("forwarded_operations_max_per_core", l.forwarded_operations_max_per_core),
            ("mesh_channel_depth_messages", l.mesh_channel_depth_messages),
            ("mesh_queue_messages_max", l.mesh_queue_messages_max),
            ("holds_max_per_core", l.holds_max_per_core),
            ("parked_reserves_max_per_core", l.parked_reserves_max_per_core),
        ] {
            check((1..=1 << 30).contains(&value), format!("limits.{name}: {value} is not within 1..=1073741824"));
        }
        check(
            (1..=HOLD_POOL_ID_MAX).contains(&l.pools_max),
            format!("limits.pools_max: {} is not within 1..={HOLD_POOL_ID_MAX}", l.pools_max),
        );
        check(
            l.reservation_retention_s <= 30 * 86_400,
            format!("limits.reservation_retention_s: {} is above 30 days", l.reservation_retention_s),
        );
        check(
            l.reservation_retention_s_min <= l.reservation_retention_s,
            format!(
                "limits.reservation_retention_s_min: {} is above reservation_retention_s {}",
                l.reservation_retention_s_min, l.reservation_retention_s
            ),
        );
        check(
            l.retained_max_per_core() >= l.holds_max_per_core,
            format!(
                "limits.retention_bytes_max_per_core: {} bytes keep {} finished reservations, fewer than \
                 holds_max_per_core {} (every live hold needs a place to finish in, {} bytes each): raise \
                 retention_bytes_max_per_core to at least {} or lower holds_max_per_core",
                l.retention_bytes_max_per_core,
                l.retained_max_per_core(),
                l.holds_max_per_core,
                crate::shard::retained::RETAINED_RECORD_BYTES,
                l.holds_max_per_core as u64 * crate::shard::retained::RETAINED_RECORD_BYTES
            ),
        );
        check(
            (1..=60_000).contains(&l.busy_retry_after_ms),
            format!("limits.busy_retry_after_ms: {} is not within 1..=60000", l.busy_retry_after_ms),
        );
        for (name, value) in
            [("frame_read_timeout_ms", l.frame_read_timeout_ms), ("write_stall_timeout_ms", l.write_stall_timeout_ms)]
        {
            check((1..=3_600_000).contains(&value), format!("limits.{name}: {value} is not within 1..=3600000"));
        }
        check(
            (4096..=1 << 30).contains(&l.output_buffer_max_bytes),
            format!("limits.output_buffer_max_bytes: {} is not within 4096..=1073741824", l.output_buffer_max_bytes),
        );
        let d = &self.durability;
        check(
            (1..=1000).contains(&d.fsync_interval_ms),
            format!("durability.fsync_interval_ms: {} is not within 1..=1000", d.fsync_interval_ms),
        );
        check(
            (1 << 20..=1 << 34).contains(&d.segment_size_bytes),
            format!("durability.segment_size_bytes: {} is not within 1 MiB..=16 GiB", d.segment_size_bytes),
        );
        check(
            d.mode == Durability::None || !self.server.data_dir.as_os_str().is_empty(),
            "server.data_dir: a log needs a directory".to_string(),
        );
        check(
            self.pools.len() as u64 <= l.pools_max as u64,
            format!("pool: {} pools declared but limits.pools_max is {}", self.pools.len(), l.pools_max),
        );
        // Pools are checked by the state machine's own rules, as a creation at runtime is.
        let mut catalog = Engine::new(
            EngineConfig {
                core: 0,
                cores: 1,
                holds_max: 1,
                parked_max: 1,
                retention_ms: 0,
                retention_min_ms: 0,
                retained_max: 1,
                pools_max: u32::MAX,
            },
            0,
        );
        for p in &self.pools {
            match catalog.validate_pool_create(&p.to_request()) {
                Ok(def) if def.id as usize <= catalog.pool_count() as usize => {
                    check(false, format!("pool '{}': declared twice", p.name));
                }
                Ok(def) => {
                    catalog.create_pool(def);
                }
                Err(status) => check(
                    false,
                    format!(
                        "pool '{}': {status} (name 1-64 printable ASCII without spaces, capacity 1..=2^60, 0 < hold_ttl_s_default <= hold_ttl_s_max)",
                        p.name
                    ),
                ),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_declares_demo() {
        let c = Config::embedded_default();
        c.validate().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7400");
        assert_eq!(c.pools.len(), 1);
        assert_eq!(c.pools[0].name, "demo");
    }

    #[test]
    fn every_problem_is_listed() {
        let c = Config::parse(
            r#"
            [server]
            listen = "nowhere"
            expiry_tick_ms = 0
            [limits]
            batch_operations_max = 100000
            holds_max_per_core = 0
            [[pool]]
            name = "a"
            capacity = 0
            [[pool]]
            name = "b"
            capacity = 5
            [[pool]]
            name = "b"
            capacity = 5
            "#,
        )
        .unwrap();
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else { panic!("expected Invalid") };
        let text = problems.join("\n");
        for needle in [
            "server.listen",
            "server.expiry_tick_ms",
            "batch_operations_max",
            "holds_max_per_core",
            "pool 'a'",
            "pool 'b': declared twice",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }

    #[test]
    fn open_control_needs_loopback_or_an_explicit_setting() {
        let config = |listen: &str, token: &str, insecure: bool| {
            let mut c = Config::embedded_default();
            c.server.listen = listen.into();
            c.admin.token = token.into();
            c.server.insecure_open_control = insecure;
            c
        };
        for loopback in ["127.0.0.1:7400", "127.8.9.10:0", "[::1]:7400", "[::ffff:127.0.0.1]:7400"] {
            let c = config(loopback, "", false);
            assert!(c.data_listen_loopback() && c.control_open(), "{loopback}");
            c.validate().unwrap();
        }
        for open in ["0.0.0.0:0", "[::]:7400", "10.1.2.3:7400"] {
            let refused = config(open, "", false);
            assert!(!refused.data_listen_loopback() && !refused.control_open(), "{open}");
            let ConfigError::Invalid(problems) = refused.validate().unwrap_err() else { panic!("Invalid") };
            assert!(
                problems[0].contains("admin.token") && problems[0].contains("insecure_open_control"),
                "{problems:?}"
            );
            let insecure = config(open, "", true);
            insecure.validate().unwrap();
            assert!(insecure.control_open());
            let with_token = config(open, "t0ken", false);
            with_token.validate().unwrap();
            assert!(!with_token.control_open());
        }
        assert!(!config("127.0.0.1:7400", "t0ken", true).control_open(), "a token is always needed once set");
        let long = config("127.0.0.1:7400", &"x".repeat(256), false);
        let ConfigError::Invalid(problems) = long.validate().unwrap_err() else { panic!("Invalid") };
        assert_eq!(problems, ["admin.token: 256 bytes, more than the 255 an auth frame carries"]);
    }

    #[test]
    fn connection_limits_are_checked() {
        let c = Config::parse(
            "[limits]\nframe_read_timeout_ms = 0\nwrite_stall_timeout_ms = 3600001\noutput_buffer_max_bytes = 4095\n",
        )
        .unwrap();
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else { panic!("expected Invalid") };
        assert_eq!(
            problems,
            [
                "limits.frame_read_timeout_ms: 0 is not within 1..=3600000",
                "limits.write_stall_timeout_ms: 3600001 is not within 1..=3600000",
                "limits.output_buffer_max_bytes: 4095 is not within 4096..=1073741824",
            ]
        );
        let shipped = Config::embedded_default().limits;
        assert_eq!(
            (shipped.frame_read_timeout_ms, shipped.output_buffer_max_bytes, shipped.write_stall_timeout_ms),
            (10_000, 1 << 20, 10_000),
            "configs/default.toml states the defaults"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(matches!(Config::parse("[limits]\nframe_size_max = 5"), Err(ConfigError::Parse(_))));
    }

    #[test]
    fn shipped_examples_are_valid() {
        for file in ["configs/default.toml", "configs/flash-sale.toml", "configs/telecom.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}
