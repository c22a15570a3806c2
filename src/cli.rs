//! The `shardcap` command line: `serve` runs the server; `wal verify` and `wal dump` read a
//! data directory's logs and snapshots offline (they never change it); `top` reads the
//! admin port's metrics over HTTP (`--admin URL`); the other subcommands are clients of the
//! binary protocol. Every client subcommand takes `--server
//! ADDR` (or the `SHARDCAP_SERVER` environment variable), `--json` (one JSON object per
//! result on stdout) and `--token` (or `SHARDCAP_ADMIN_TOKEN`: the admin token, shown with
//! an `auth` frame before a command that changes a pool); the `wal` subcommands take
//! `--data-dir DIR` and `--json`.
//!
//! Exit codes: 0 success; 1 the server refused the operation (the status is named, e.g.
//! `sold_out`), or a data directory's log or snapshot is damaged or belongs to another
//! layout (the file and offset are named); 2 bad usage, unreachable server, protocol error,
//! or a data directory that cannot be read.
//!
//! Text user names map to the protocol's 128-bit user ids in one way: XXH3-128 of the
//! name's UTF-8 bytes ([`crate::protocol::user_id_from_name`]). Reservation ids are
//! written as UUIDs (or 32 hex digits).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::admin::json::{activity_json, lookup_json, pool_json, pool_status_json, rules_json, state_name};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::protocol::control::{
    PoolCreate, PoolInfo, PoolKind, PoolRef, PoolRules, PoolStatus, RULE_FLAG_TRACK_USERS, SHARD_FLAG_DRAINED,
    SHARD_FLAG_HOME, UserActivityRequest,
};
use crate::protocol::{
    ConfirmOp, ExtendOp, LookupOp, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp, Status,
    format_id, parse_id, user_id_from_name,
};
use crate::shard::PeerMsg;
use crate::wal::record::Record;
use crate::wal::{WalError, recovery, segment};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "shardcap", version, about = "A thread-per-core capacity allocation server and its client")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (with no flags: the embedded default config, 127.0.0.1:7400, pool `demo`).
    Serve(ServeArgs),
    /// Create, inspect and list pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Hold units of a pool for a user; prints the reservation id.
    Reserve(ReserveArgs),
    /// Make a hold permanent.
    Confirm(ConfirmArgs),
    /// Give a hold back.
    Release(IdArgs),
    /// Move a hold's expiry to TTL seconds from now.
    Extend(ExtendArgs),
    /// Show a reservation.
    Lookup(IdArgs),
    /// Check that the server answers.
    Ping(ClientArgs),
    /// Users' activity.
    #[command(subcommand)]
    User(UserCommand),
    /// Check or print the write-ahead logs of a data directory (offline; never changes it).
    #[command(subcommand)]
    Wal(WalCommand),
    /// Live terminal view of a running server's metrics (per-core throughput, latency, pool
    /// capacity).
    Top(TopArgs),
}

/// `shardcap serve` flags; each overrides the config file's value.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (default: the embedded configs/default.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Shared data port address, e.g. 127.0.0.1:7400 (port 0: OS-chosen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Number of cores (0: one per CPU).
    #[arg(long)]
    pub cores: Option<u16>,
    /// Directory of the write-ahead logs and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `sync`, `batch` or `none` (memory only).
    #[arg(long, value_enum)]
    pub durability: Option<crate::wal::Durability>,
    /// First per-core port (0: OS-chosen ports).
    #[arg(long)]
    pub core_port_base: Option<u16>,
    /// Do not pin executors to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Admin HTTP port address (metrics, JSON API, health), e.g. 127.0.0.1:9400 (port 0:
    /// OS-chosen; "": off).
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Start on a non-loopback --listen address without an admin token, leaving pool
    /// changes on the data ports open to anyone who can connect
    /// (`server.insecure_open_control`).
    #[arg(long)]
    pub insecure_open_control: bool,
}

/// Flags shared by client subcommands.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long, env = "SHARDCAP_SERVER", default_value = "127.0.0.1:7400")]
    pub server: String,
    /// Print one JSON object per result.
    #[arg(long)]
    pub json: bool,
    /// The server's admin token, shown before a command that changes a pool (create,
    /// rules, activate, deactivate, resize, rename, describe); needed when the server has
    /// one.
    #[arg(long, env = "SHARDCAP_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A pool's rules as flags; a rule not given is not applied.
#[derive(Debug, Args, Clone, Default)]
pub struct RulesArgs {
    /// Most units one user may hold, have confirmed or wait for in the pool.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_per_user: u64,
    /// Most units one reserve may ask for.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_qty: u32,
    /// Reserve attempts per user and second (token bucket; needs --burst).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub rate: u32,
    /// Attempts a user may make at once (the token bucket's size).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub burst: u32,
    /// Reserves before this time answer not_open: ms since the Unix epoch, or +SECONDS
    /// from now.
    #[arg(long, value_parser = parse_time, default_value = "0", hide_default_value = true)]
    pub opens_at: u64,
    /// Reserves from this time answer closed: ms since the Unix epoch, or +SECONDS from now.
    #[arg(long, value_parser = parse_time, default_value = "0", hide_default_value = true)]
    pub closes_at: u64,
    /// Keep every user's activity in the pool (`shardcap user activity`), also without a
    /// limit or a rate.
    #[arg(long)]
    pub track_users: bool,
    /// Thousandths of the capacity kept for reserves of priority --priority-min or more.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub kept_permille: u16,
    /// The lowest reserve priority that may take the kept units.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub priority_min: u8,
}

impl RulesArgs {
    fn rules(&self) -> PoolRules {
        PoolRules {
            max_per_user: self.max_per_user,
            opens_at_ms: self.opens_at,
            closes_at_ms: self.closes_at,
            rate_per_s: self.rate,
            burst: self.burst,
            max_qty: self.max_qty,
            flags: if self.track_users { RULE_FLAG_TRACK_USERS } else { 0 },
            kept_permille: self.kept_permille,
            priority_min: self.priority_min,
        }
    }
}

/// A time for a rule: ms since the Unix epoch, or `+SECONDS` from now.
fn parse_time(s: &str) -> Result<u64, String> {
    match s.strip_prefix('+') {
        Some(secs) => {
            let secs: u64 = secs.parse().map_err(|_| format!("'{s}': expected +SECONDS"))?;
            Ok(now_ms() + secs * 1000)
        }
        None => s.parse().map_err(|_| format!("'{s}': expected ms since the Unix epoch or +SECONDS")),
    }
}

/// The rules that are set, as `name value` phrases (empty: none).
fn rules_text(r: &PoolRules) -> String {
    let mut parts = Vec::new();
    if r.max_per_user != 0 {
        parts.push(format!("max {} per user", r.max_per_user));
    }
    if r.max_qty != 0 {
        parts.push(format!("max {} per reserve", r.max_qty));
    }
    if r.rate_per_s != 0 {
        parts.push(format!("{} attempts/s per user (burst {})", r.rate_per_s, r.burst));
    }
    if r.opens_at_ms != 0 {
        parts.push(format!("opens at {} ms", r.opens_at_ms));
    }
    if r.closes_at_ms != 0 {
        parts.push(format!("closes at {} ms", r.closes_at_ms));
    }
    if r.tracks_users() {
        parts.push("user activity kept".to_string());
    }
    if r.kept_permille != 0 {
        parts.push(format!("{}‰ kept for priority {} and up", r.kept_permille, r.priority_min));
    }
    parts.join(", ")
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// A user's units held, confirmed, waiting, released and expired and last activity,
    /// per pool (pools with a limit per user, a rate, or --track-users).
    Activity {
        /// User name.
        user: String,
        /// Only this pool (name or id).
        #[arg(long)]
        pool: Option<String>,
        /// Only recent events of this kind (a reservation held, confirmed, released, expired).
        #[arg(long, value_enum)]
        status: Option<EventState>,
        /// At most this many recent events per pool (the server keeps 4).
        #[arg(long, default_value_t = 4)]
        recent: u8,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A reservation state for `user activity --status`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EventState {
    /// Held.
    Held,
    /// Confirmed.
    Confirmed,
    /// Released.
    Released,
    /// Expired.
    Expired,
}

impl EventState {
    fn state(self) -> ReservationState {
        match self {
            EventState::Held => ReservationState::Held,
            EventState::Confirmed => ReservationState::Confirmed,
            EventState::Released => ReservationState::Released,
            EventState::Expired => ReservationState::Expired,
        }
    }
}

/// Pool subcommands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    Create {
        /// Unique name (1-64 printable ASCII characters, no spaces).
        name: String,
        /// Total units.
        #[arg(long)]
        capacity: u64,
        /// Default hold time in seconds.
        #[arg(long, default_value_t = 300)]
        hold_ttl_s: u32,
        /// Longest hold time a reserve or extend may ask for, in seconds.
        #[arg(long, default_value_t = 900)]
        hold_ttl_s_max: u32,
        /// Create it deactivated.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        rules: RulesArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace a pool's rules (a rule not given is removed); every core applies them to
    /// the next reserve.
    Rules {
        /// Pool name or id.
        pool: String,
        #[command(flatten)]
        rules: RulesArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A pool's capacity, held, confirmed and available units, in total and per core.
    Status {
        /// Pool name or id.
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// All pools.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Accept new reserves again.
    Activate {
        /// Pool name or id.
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Refuse new reserves (holds can still be confirmed).
    Deactivate {
        /// Pool name or id.
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a pool's capacity while it serves: more units are there at once; fewer are
    /// taken from the free units of every core (refused with `capacity_in_use` if they are
    /// not free: held, confirmed, on their way to a reserve, or kept for priority reserves).
    Resize {
        /// Pool name or id.
        pool: String,
        /// The new total of units.
        capacity: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rename a pool (its id, holds and rules stay).
    Rename {
        /// Pool name or id.
        pool: String,
        /// The new name (1-64 printable ASCII characters, no spaces).
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a pool's description (up to 128 bytes of text; "" clears it).
    Describe {
        /// Pool name or id.
        pool: String,
        /// The new description.
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `wal` subcommands. They only read the directory; run against the directory of a running
/// server, they may report the group of records being written as a torn tail.
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Check that every core can be recovered.
    ///
    /// Recovers every core read-only and prints, per core, the snapshot LSN, the records
    /// replayed, the last LSN and any torn tail (discarded at the next start: not an
    /// error). Exits 1 with the file and offset if a log or snapshot is damaged or belongs
    /// to another layout.
    Verify(WalArgs),
    /// Print every log record, one per line.
    ///
    /// Each line gives the core, the LSN, the time the command was applied at (ms since the
    /// epoch) and the command. Records a snapshot covers are gone once their segments are
    /// deleted. A damaged record stops the dump with exit code 1.
    Dump {
        #[command(flatten)]
        args: WalArgs,
        /// Only this core (default: every core, in core order).
        #[arg(long)]
        core: Option<u16>,
    },
}

/// Flags of the `wal` subcommands.
#[derive(Debug, Args, Clone)]
pub struct WalArgs {
    /// The server's data directory (`server.data_dir`), holding `core-<n>` directories.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Print one JSON object per core (verify) or per record (dump).
    #[arg(long)]
    pub json: bool,
}

/// `shardcap top` flags.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The server's admin address; its metrics are read from `<URL>/metrics`.
    #[arg(long, value_name = "URL", default_value = crate::top::ADMIN_URL_DEFAULT)]
    pub admin: String,
    /// Time between two reads of the metrics, in milliseconds (at least 100).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Print one frame (120x40, from two reads --interval-ms apart) on stdout and exit.
    #[arg(long)]
    pub once: bool,
}

/// The shortest `shardcap top --interval-ms`.
const TOP_INTERVAL_MS_MIN: u64 = 100;

/// `shardcap reserve` arguments.
#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// Pool name or id.
    pub pool: String,
    /// User name (hashed to a 128-bit id).
    #[arg(long)]
    pub user: String,
    /// Units to hold.
    #[arg(long, default_value_t = 1)]
    pub qty: u32,
    /// Hold time in seconds (default: the pool's).
    #[arg(long)]
    pub ttl_s: Option<u32>,
    /// Reservation id (UUID); default: a random one. Repeating an id is idempotent.
    #[arg(long)]
    pub id: Option<String>,
    /// Priority of the request (0-255): at the pool's `priority_min` or above it may take
    /// the units the pool keeps for priority requests.
    #[arg(long, default_value_t = 0)]
    pub priority: u8,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A reservation id and, optionally, its user (found with a lookup if not given).
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Reservation id (UUID).
    pub id: String,
    /// The reservation's user (saves a lookup on every core).
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shardcap confirm` arguments.
#[derive(Debug, Args)]
pub struct ConfirmArgs {
    #[command(flatten)]
    pub target: IdArgs,
    /// Commit or payment reference stored with the confirmation (UUID, or any text, hashed).
    #[arg(long)]
    pub commit_ref: Option<String>,
}

/// `shardcap extend` arguments.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub target: IdArgs,
    /// New hold time from now, in seconds.
    #[arg(long)]
    pub ttl_s: u32,
}

/// A failed command: its exit code and message.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: i32,
    /// What to print on stderr (empty when already printed).
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure { code: 2, message: e.to_string() }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

/// Applies `serve` flags to a configuration.
pub fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    };
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    if let Some(cores) = args.cores {
        config.server.cores = cores;
    }
    if let Some(dir) = &args.data_dir {
        config.server.data_dir = dir.clone();
    }
    if let Some(mode) = args.durability {
        config.durability.mode = mode;
    }
    if let Some(base) = args.core_port_base {
        config.server.core_port_base = base;
    }
    if args.no_pin {
        config.server.pin_cores = false;
    }
    if let Some(listen) = &args.admin_listen {
        config.admin.listen = listen.clone();
    }
    if args.insecure_open_control {
        config.server.insecure_open_control = true;
    }
    if let Ok(token) = std::env::var("SHARDCAP_ADMIN_TOKEN") {
        config.admin.token = token;
    }
    config.validate()?;
    Ok(config)
}

/// Runs a client or `wal` subcommand; `serve` is handled by `main`.
pub fn run_client(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Wal(WalCommand::Verify(args)) => wal_verify(&args),
        Command::Wal(WalCommand::Dump { args, core }) => wal_dump(&args, core),
        Command::Ping(args) => {
            let mut c = connect(&args)?;
            c.ping()?;
            let h = c.hello();
            if args.json {
                println!("{}", json!({"status": "ok", "cores": h.core_count, "core_ports": h.core_ports}));
            } else {
                println!("pong from core {} of {} (core ports {:?})", h.this_core, h.core_count, h.core_ports);
            }
            Ok(())
        }
        Command::Pool(cmd) => pool_command(cmd),
        Command::Top(args) => top(&args),
        Command::User(UserCommand::Activity { user, pool, status, recent, client }) => {
            let state = status.map_or(0, |s| s.state() as u8);
            user_activity(&user, pool.as_deref(), (state, recent), &client)
        }
        Command::Reserve(args) => reserve(args),
        Command::Confirm(args) => {
            let mut c = connect(&args.target.client)?;
            let (id, user) = target(&mut c, &args.target)?;
            let commit_ref =
                args.commit_ref.as_deref().map_or(0, |r| parse_id(r).unwrap_or_else(|| user_id_from_name(r)));
            let r = c.confirm(&[ConfirmOp { id, user, commit_ref }])?[0];
            report(&args.target.client, "confirm", id, &r, |_| format!("confirmed reservation {}", format_id(id)))
        }
        Command::Release(args) => {
            let mut c = connect(&args.client)?;
            let (id, user) = target(&mut c, &args)?;
            let r = c.release(&[ReleaseOp { id, user }])?[0];
            report(&args.client, "release", id, &r, |_| format!("released reservation {}", format_id(id)))
        }
        Command::Extend(args) => {
            let mut c = connect(&args.target.client)?;
            let (id, user) = target(&mut c, &args.target)?;
            let ttl_ms = args.ttl_s.checked_mul(1000).ok_or_else(|| usage("--ttl-s is too large"))?;
            let r = c.extend(&[ExtendOp { id, user, ttl_ms }])?[0];
            report(&args.target.client, "extend", id, &r, |r| {
                format!("extended reservation {}: expires in {} s", format_id(id), seconds_until(r.expires_at_ms))
            })
        }
        Command::Lookup(args) => {
            let mut c = connect(&args.client)?;
            let id = parse_reservation_id(&args.id)?;
            let user = args.user.as_deref().map_or(0, user_id_from_name);
            let r = c.lookup(&[LookupOp { id, user }])?[0];
            let status = Status::from_u8(r.status).unwrap_or(Status::InternalError);
            let state = ReservationState::from_u8(r.state).unwrap_or(ReservationState::None);
            if args.client.json {
                println!("{}", lookup_json(id, &r));
            } else if status == Status::Ok {
                let time = if state == ReservationState::Held {
                    format!("expires in {} s", seconds_until(r.expires_at_ms))
                } else {
                    format!("kept until {} s from now", seconds_until(r.expires_at_ms))
                };
                println!(
                    "reservation {}: {}, {} units of pool {}, user {}, {}",
                    format_id(id),
                    state.name(),
                    r.qty,
                    r.pool,
                    format_id(r.user),
                    time
                );
                if r.commit_ref != 0 {
                    println!("commit ref {}", format_id(r.commit_ref));
                }
            }
            refused_if(status, "lookup")
        }
    }
}

/// `shardcap top`: the live view, or with `--once` one frame on stdout. An unreachable
/// admin port fails `--once` (exit 2); the live view keeps trying.
fn top(args: &TopArgs) -> Result<(), Failure> {
    if args.interval_ms < TOP_INTERVAL_MS_MIN {
        return Err(usage(format!("--interval-ms must be at least {TOP_INTERVAL_MS_MIN} (got {})", args.interval_ms)));
    }
    let interval = Duration::from_millis(args.interval_ms);
    if args.once {
        let text = crate::top::render_once(&args.admin, Some(interval), 120, 40).map_err(usage)?;
        // A reader that stops early (`| head`) is not a failure.
        return match writeln!(std::io::stdout(), "{text}") {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(usage(format!("writing to stdout: {e}"))),
            _ => Ok(()),
        };
    }
    crate::top::run(&args.admin, interval).map_err(usage)
}

fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    Client::connect(args.server.as_str()).map_err(|e| usage(format!("cannot reach {}: {e}", args.server)))
}

/// A connection for a command that changes a pool: it shows the token first, if one is
/// given (a server without a token accepts any).
fn connect_operator(args: &ClientArgs) -> Result<Client, Failure> {
    let mut c = connect(args)?;
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        if let Err(status) = c.authenticate(token).map_err(|e| usage(e.to_string()))? {
            if args.json {
                println!("{}", json!({"status": status.name()}));
            }
            return Err(Failure {
                code: 1,
                message: format!("the server refused the admin token (--token or SHARDCAP_ADMIN_TOKEN): {status}"),
            });
        }
    }
    Ok(c)
}

fn parse_reservation_id(text: &str) -> Result<u128, Failure> {
    parse_id(text).ok_or_else(|| usage(format!("'{text}' is not a reservation id (a UUID or 32 hex digits)")))
}

/// The reservation id and its user: from --user, else from a lookup on every core.
fn target(c: &mut Client, args: &IdArgs) -> Result<(u128, u128), Failure> {
    let id = parse_reservation_id(&args.id)?;
    if let Some(user) = &args.user {
        return Ok((id, user_id_from_name(user)));
    }
    let r = c.lookup(&[LookupOp { id, user: 0 }])?[0];
    if r.status != Status::Ok as u8 {
        let status = Status::from_u8(r.status).unwrap_or(Status::InternalError);
        if args.client.json {
            println!("{}", json!({"status": status.name(), "id": format_id(id)}));
        }
        return Err(Failure { code: 1, message: format!("reservation {}: {status}", format_id(id)) });
    }
    Ok((id, r.user))
}

fn refused_if(status: Status, what: &str) -> Result<(), Failure> {
    match status {
        Status::Ok => Ok(()),
        Status::Unauthorized => Err(Failure {
            code: 1,
            message: format!(
                "{what} refused: {status} (the server needs its admin token for pool changes: set \
                 SHARDCAP_ADMIN_TOKEN or pass --token)"
            ),
        }),
        _ => Err(Failure { code: 1, message: format!("{what} refused: {status}") }),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whole seconds from now until `at_ms`, rounded to the nearest second.
fn seconds_until(at_ms: u64) -> u64 {
    (at_ms.saturating_sub(now_ms()) + 500) / 1000
}

fn report(
    args: &ClientArgs,
    what: &str,
    id: u128,
    r: &OpResult,
    text: impl Fn(&OpResult) -> String,
) -> Result<(), Failure> {
    let status = Status::from_u8(r.status).unwrap_or(Status::InternalError);
    let state = ReservationState::from_u8(r.state).unwrap_or(ReservationState::None);
    let repeat = r.flags & RESULT_FLAG_REPEAT != 0;
    if args.json {
        println!(
            "{}",
            json!({"status": status.name(), "id": format_id(id), "state": state.name(), "repeat": repeat,
                   "expires_at_ms": r.expires_at_ms})
        );
    } else if status == Status::Ok {
        println!("{}{}", text(r), if repeat { " (repeat: nothing changed)" } else { "" });
    }
    refused_if(status, what)
}

fn user_activity(
    user: &str,
    pool: Option<&str>,
    (state, recent): (u8, u8),
    client: &ClientArgs,
) -> Result<(), Failure> {
    let mut c = connect(client)?;
    let one = pool.map(|pool| resolve_pool(&mut c, pool)).transpose()?;
    let req =
        UserActivityRequest { user: user_id_from_name(user), pool: one.as_ref().map_or(0, |p| p.id), state, recent };
    let list =
        c.user_activity(req)?.map_err(|s| Failure { code: 1, message: format!("user activity refused: {s}") })?;
    // Pool names: the one asked for, or (only if there is something to show) all of them.
    let names: std::collections::HashMap<u32, String> = match one {
        Some(p) => [(p.id, p.name)].into(),
        None if list.is_empty() => Default::default(),
        None => c.pool_list()?.into_iter().map(|p| (p.id, p.name)).collect(),
    };
    let name = |id: u32| names.get(&id).cloned().unwrap_or_else(|| id.to_string());
    if client.json {
        for a in &list {
            println!("{}", activity_json(user, &name(a.pool), a));
        }
    } else if list.is_empty() {
        println!("no activity kept for {user}");
    } else {
        for a in &list {
            println!(
                "{user} in {}: held {}, confirmed {}, waiting {}, released {}, expired {}; last activity {} s ago",
                name(a.pool),
                a.held,
                a.confirmed,
                a.pending,
                a.released,
                a.expired,
                now_ms().saturating_sub(a.last_activity_ms) / 1000
            );
            for e in &a.events {
                println!(
                    "  {} {} of reservation {}, {} s ago",
                    state_name(e.state),
                    e.qty,
                    format_id(e.id),
                    now_ms().saturating_sub(e.at_ms) / 1000
                );
            }
        }
    }
    Ok(())
}

fn resolve_pool(c: &mut Client, pool: &str) -> Result<PoolInfo, Failure> {
    let pool_ref = match pool.parse::<u32>() {
        Ok(id) if id > 0 => PoolRef { id, name: String::new() },
        _ => PoolRef { id: 0, name: pool.to_string() },
    };
    match c.pool_status(&pool_ref)? {
        Ok(status) => Ok(status.info),
        Err(status) => Err(Failure { code: 1, message: format!("pool '{pool}': {status}") }),
    }
}

fn reserve(args: ReserveArgs) -> Result<(), Failure> {
    let mut c = connect(&args.client)?;
    let pool = resolve_pool(&mut c, &args.pool)?;
    let id = match &args.id {
        Some(text) => parse_reservation_id(text)?,
        None => uuid::Uuid::new_v4().as_u128(),
    };
    let ttl_ms = match args.ttl_s {
        Some(s) => s.checked_mul(1000).ok_or_else(|| usage("--ttl-s is too large"))?,
        None => 0,
    };
    let user = user_id_from_name(&args.user);
    let op = ReserveOp { id, user, pool: pool.id, qty: args.qty, ttl_ms, priority: args.priority };
    let r = c.reserve(&[op])?[0];
    report(&args.client, "reserve", id, &r, |r| {
        format!(
            "held {} of {} for {}: reservation {} expires in {} s",
            args.qty,
            pool.name,
            args.user,
            format_id(id),
            seconds_until(r.expires_at_ms)
        )
    })
}

/// Prints `rules: ...` if the pool has any.
fn print_rules(rules: &PoolRules) {
    let text = rules_text(rules);
    if !text.is_empty() {
        println!("rules: {text}");
    }
}

fn print_status(status: &PoolStatus) {
    let i = &status.info;
    println!(
        "pool {} (id {}, {}): capacity {}, held {}, confirmed {}, available {}",
        i.name,
        i.id,
        if i.active { "active" } else { "inactive" },
        i.capacity,
        status.held(),
        status.confirmed(),
        status.available()
    );
    if !i.description.is_empty() {
        println!("description: {}", i.description);
    }
    print_rules(&i.rules);
    println!(
        "{:<6}{:>12}{:>12}{:>12}{:>12}{:>8}  flags",
        "core", "capacity", "held", "confirmed", "available", "parked"
    );
    for s in &status.shards {
        let mut flags = Vec::new();
        if s.flags & SHARD_FLAG_HOME != 0 {
            flags.push("home");
        }
        if s.flags & SHARD_FLAG_DRAINED != 0 {
            flags.push("drained");
        }
        println!(
            "{:<6}{:>12}{:>12}{:>12}{:>12}{:>8}  {}",
            s.core,
            s.capacity,
            s.held,
            s.confirmed,
            s.available(),
            s.parked,
            flags.join(",")
        );
    }
}

fn pool_command(cmd: PoolCommand) -> Result<(), Failure> {
    match cmd {
        PoolCommand::Create { name, capacity, hold_ttl_s, hold_ttl_s_max, inactive, rules, client } => {
            let mut c = connect_operator(&client)?;
            let req = PoolCreate {
                name: name.clone(),
                capacity,
                hold_ttl_ms_default: hold_ttl_s.saturating_mul(1000),
                hold_ttl_ms_max: hold_ttl_s_max.saturating_mul(1000),
                kind: PoolKind::Counted as u8,
                active: !inactive,
                rules: rules.rules(),
            };
            match c.pool_create(&req)? {
                Ok(info) => {
                    if client.json {
                        println!("{}", json!({"status": "ok", "pool": pool_json(&info)}));
                    } else {
                        println!(
                            "created pool {} (id {}): capacity {}, hold ttl {} s (max {} s)",
                            info.name,
                            info.id,
                            info.capacity,
                            info.hold_ttl_ms_default / 1000,
                            info.hold_ttl_ms_max / 1000
                        );
                        print_rules(&info.rules);
                    }
                    Ok(())
                }
                Err(status) => {
                    if client.json {
                        println!("{}", json!({"status": status.name(), "name": name}));
                    }
                    refused_if(status, "pool create")
                }
            }
        }
        PoolCommand::Status { pool, client } => {
            let mut c = connect(&client)?;
            let info = resolve_pool(&mut c, &pool)?;
            let status = c
                .pool_status(&PoolRef { id: info.id, name: String::new() })?
                .map_err(|s| Failure { code: 1, message: format!("pool '{pool}': {s}") })?;
            if client.json {
                let mut object = pool_status_json(&status);
                object["status"] = json!("ok");
                println!("{object}");
            } else {
                print_status(&status);
            }
            Ok(())
        }
        PoolCommand::List { client } => {
            let mut c = connect(&client)?;
            let pools = c.pool_list()?;
            if client.json {
                for p in &pools {
                    println!("{}", pool_json(p));
                }
            } else {
                for p in &pools {
                    println!(
                        "{:>6}  {:<24} capacity {:>12}  {}",
                        p.id,
                        p.name,
                        p.capacity,
                        if p.active { "active" } else { "inactive" }
                    );
                }
            }
            Ok(())
        }
        PoolCommand::Rules { pool, rules, client } => {
            let mut c = connect_operator(&client)?;
            let id = resolve_pool(&mut c, &pool)?.id;
            print_pool_change(c.pool_set_rules(id, rules.rules())?, &client, "pool rules", |info| {
                let text = rules_text(&info.rules);
                format!("pool {} rules: {}", info.name, if text.is_empty() { "none" } else { &text })
            })
        }
        PoolCommand::Activate { pool, client } => set_active(&pool, &client, true),
        PoolCommand::Deactivate { pool, client } => set_active(&pool, &client, false),
        PoolCommand::Resize { pool, capacity, client } => {
            let mut c = connect_operator(&client)?;
            let id = resolve_pool(&mut c, &pool)?.id;
            print_pool_change(c.pool_set_capacity(id, capacity)?, &client, "pool resize", |info| {
                format!("pool {} capacity {}", info.name, info.capacity)
            })
        }
        PoolCommand::Describe { pool, description, client } => {
            let mut c = connect_operator(&client)?;
            let id = resolve_pool(&mut c, &pool)?.id;
            print_pool_change(c.pool_set_description(id, &description)?, &client, "pool description", |info| {
                format!("pool {} description: {}", info.name, info.description)
            })
        }
        PoolCommand::Rename { pool, name, client } => {
            let mut c = connect_operator(&client)?;
            let info = resolve_pool(&mut c, &pool)?;
            print_pool_change(c.pool_rename(info.id, &name)?, &client, "pool rename", |renamed| {
                format!("pool {} is now {}", info.name, renamed.name)
            })
        }
    }
}

fn set_active(pool: &str, client: &ClientArgs, active: bool) -> Result<(), Failure> {
    let mut c = connect_operator(client)?;
    let id = resolve_pool(&mut c, pool)?.id;
    print_pool_change(c.pool_set_active(id, active)?, client, "pool activation", |info| {
        format!("pool {} is {}", info.name, if info.active { "active" } else { "inactive" })
    })
}

/// Prints the answer to a pool change: the pool (as JSON, or `text` of it), or the refusal.
fn print_pool_change(
    answer: Result<PoolInfo, Status>,
    client: &ClientArgs,
    what: &str,
    text: impl Fn(&PoolInfo) -> String,
) -> Result<(), Failure> {
    match answer {
        Ok(info) => {
            if client.json {
                println!("{}", json!({"status": "ok", "pool": pool_json(&info)}));
            } else {
                println!("{}", text(&info));
            }
            Ok(())
        }
        Err(status) => refused_if(status, what),
    }
}

// ----- wal verify, wal dump --------------------------------------------------------------------

/// The `core-<n>` directories of `data_dir` that hold a snapshot or a log segment, by core.
fn cores_with_data(data_dir: &Path) -> Result<Vec<(u16, PathBuf)>, Failure> {
    if !data_dir.is_dir() {
        return Err(usage(format!("{}: not a directory", data_dir.display())));
    }
    recovery::cores_with_data(data_dir).map_err(|e| usage(e.to_string()))
}

/// Exit code for a log that could not be read: 1 when it is damaged or of another layout, 2
/// when a file could not be read at all.
fn wal_failure_code(e: &WalError) -> i32 {
    match e {
        WalError::Io { .. } => 2,
        WalError::Corrupt { .. } | WalError::Layout(_) => 1,
    }
}

/// `wal verify`: recovers every core read-only and reports what it found.
fn wal_verify(args: &WalArgs) -> Result<(), Failure> {
    let dirs = cores_with_data(&args.data_dir)?;
    if dirs.is_empty() {
        if !args.json {
            println!("{}: no logs or snapshots, nothing to verify", args.data_dir.display());
        }
        return Ok(());
    }
    // As the server does: the cores with data must be 0..N, and N is the core count.
    let cores = dirs.len() as u16;
    let numbers: Vec<u16> = dirs.iter().map(|(n, _)| *n).collect();
    if numbers != (0..cores).collect::<Vec<_>>() {
        let message = format!(
            "{} holds the logs of cores {numbers:?}: a server with N cores writes cores 0 to N-1",
            args.data_dir.display()
        );
        if args.json {
            println!("{}", json!({"status": "layout", "error": message}));
        }
        return Err(Failure { code: 1, message });
    }
    let mut errors = Vec::new();
    let mut code = 0;
    for (n, dir) in &dirs {
        // A log the state machine cannot replay (a broken invariant) is damaged too.
        let outcome =
            std::panic::catch_unwind(|| recovery::recover(dir, *n, cores, false, |_| {})).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                Err(WalError::Corrupt {
                    path: dir.clone(),
                    offset: 0,
                    reason: format!("replaying the log broke an invariant of the state machine: {what}"),
                })
            });
        match outcome {
            Ok(r) => {
                let torn = r.torn.as_ref().map(|(file, offset, bytes)| (file.display().to_string(), *offset, *bytes));
                if args.json {
                    let torn =
                        torn.map(|(file, offset, bytes)| json!({"file": file, "offset": offset, "bytes": bytes}));
                    println!(
                        "{}",
                        json!({"core": n, "status": "ok", "snapshot_lsn": r.snapshot_lsn, "replayed": r.replayed,
                               "last_lsn": r.last_lsn, "torn": torn})
                    );
                } else {
                    let snapshot = if r.snapshot_lsn > 0 {
                        format!("snapshot LSN {}", r.snapshot_lsn)
                    } else {
                        "no snapshot".into()
                    };
                    let torn = torn.map_or(String::new(), |(file, offset, bytes)| {
                        format!("; torn tail {file} at offset {offset} ({bytes} bytes), discarded at the next start")
                    });
                    println!("core {n}: {snapshot}, {} records replayed, last LSN {}{torn}", r.replayed, r.last_lsn);
                }
            }
            Err(e) => {
                if args.json {
                    let mut object = json!({"core": n, "error": e.to_string()});
                    match &e {
                        WalError::Corrupt { path, offset, reason } => {
                            object["status"] = json!("corrupt");
                            object["file"] = json!(path.display().to_string());
                            object["offset"] = json!(offset);
                            object["reason"] = json!(reason);
                        }
                        WalError::Layout(_) => object["status"] = json!("layout"),
                        WalError::Io { path, .. } => {
                            object["status"] = json!("unreadable");
                            object["file"] = json!(path.display().to_string());
                        }
                    }
                    println!("{object}");
                } else {
                    println!("core {n}: FAILED");
                }
                // Damage or another layout (1) outweighs a file that could not be read (2).
                code = if code == 1 || wal_failure_code(&e) == 1 { 1 } else { 2 };
                errors.push(format!("core {n}: {e}"));
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Failure { code, message: errors.join("\nerror: ") }) }
}

/// `wal dump`: prints every record of one core's or every core's log segments.
fn wal_dump(args: &WalArgs, core: Option<u16>) -> Result<(), Failure> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = dump_records(args, core, &mut out);
    let _ = out.flush();
    result
}

/// Writes the records of `wal dump` to `out`; notes on torn tails go to stderr.
fn dump_records(args: &WalArgs, core: Option<u16>, out: &mut impl Write) -> Result<(), Failure> {
    let mut dirs = cores_with_data(&args.data_dir)?;
    if let Some(n) = core {
        dirs.retain(|(c, _)| *c == n);
        if dirs.is_empty() {
            return Err(usage(format!("{}: no log for core {n}", args.data_dir.display())));
        }
    }
    // Set when stdout is closed (e.g. piped into `head`): stop quietly.
    let mut closed = false;
    for (n, dir) in &dirs {
        let files = recovery::list(dir).map_err(|e| Failure { code: wal_failure_code(&e), message: e.to_string() })?;
        for (i, (_, path)) in files.segments.iter().enumerate() {
            let last = i + 1 == files.segments.len();
            let bytes = std::fs::read(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            if last && recovery::never_written(&bytes) {
                eprintln!("core {n}: {}: a segment without a header (discarded at the next start)", path.display());
                continue;
            }
            let scan = segment::scan(&bytes, path, last, |rec| {
                let line = if args.json { record_json(*n, &rec).to_string() } else { record_text(*n, &rec) };
                writeln!(out, "{line}").map_err(|source| {
                    closed = true;
                    WalError::Io { path: "stdout".into(), source }
                })
            });
            match scan {
                Ok(scan) => {
                    if let segment::SegmentEnd::TornTail { offset, bytes } = scan.end {
                        let _ = out.flush();
                        eprintln!(
                            "core {n}: {}: torn tail at offset {offset} ({bytes} bytes), not shown: discarded at the \
                             next start",
                            path.display()
                        );
                    }
                }
                Err(_) if closed => return Ok(()),
                Err(e) => {
                    let _ = out.flush();
                    return Err(Failure { code: wal_failure_code(&e), message: format!("core {n}: {e}") });
                }
            }
        }
    }
    Ok(())
}

/// A logged command's name and fields, in order.
fn command_fields(command: &crate::shard::Command) -> (&'static str, Vec<(&'static str, serde_json::Value)>) {
    use crate::shard::Command as C;
    let id = |id: u128| json!(format_id(id));
    match command {
        C::Reserve(op) => {
            let mut fields = vec![
                ("id", id(op.id)),
                ("user", id(op.user)),
                ("pool", json!(op.pool)),
                ("qty", json!(op.qty)),
                ("ttl_ms", json!(op.ttl_ms)),
            ];
            if op.priority != 0 {
                fields.push(("priority", json!(op.priority)));
            }
            ("reserve", fields)
        }
        C::Confirm(op) => {
            ("confirm", vec![("id", id(op.id)), ("user", id(op.user)), ("commit_ref", id(op.commit_ref))])
        }
        C::Release(op) => ("release", vec![("id", id(op.id)), ("user", id(op.user))]),
        C::Extend(op) => ("extend", vec![("id", id(op.id)), ("user", id(op.user)), ("ttl_ms", json!(op.ttl_ms))]),
        C::Lookup(op) => ("lookup", vec![("id", id(op.id)), ("user", id(op.user))]),
        C::Tick => ("tick", Vec::new()),
        C::Peer { from, seq, msg } => {
            let mut fields = vec![("from", json!(from)), ("seq", json!(seq))];
            let ticket = |t: Option<u64>| t.map_or(serde_json::Value::Null, |t| json!(t));
            let (name, rest) = match *msg {
                PeerMsg::Borrow { pool, need, ticket: t, priority } => (
                    "borrow",
                    vec![
                        ("pool", json!(pool)),
                        ("need", json!(need)),
                        ("ticket", ticket(t)),
                        ("priority", json!(priority)),
                    ],
                ),
                PeerMsg::Grant { pool, units, ticket: t } => {
                    ("grant", vec![("pool", json!(pool)), ("units", json!(units)), ("ticket", ticket(t))])
                }
                PeerMsg::SoldOut { pool, ticket: t } => ("sold_out", vec![("pool", json!(pool)), ("ticket", json!(t))]),
                PeerMsg::Recall { pool } => ("recall", vec![("pool", json!(pool))]),
                PeerMsg::Returned { pool, units } => ("returned", vec![("pool", json!(pool)), ("units", json!(units))]),
                PeerMsg::Return { pool, units } => ("return", vec![("pool", json!(pool)), ("units", json!(units))]),
                PeerMsg::Undrain { pool } => ("undrain", vec![("pool", json!(pool))]),
            };
            fields.push(("msg", json!(name)));
            fields.extend(rest);
            ("peer", fields)
        }
        C::PeerAck { from, seq } => ("peer_ack", vec![("from", json!(from)), ("seq", json!(seq))]),
        C::CreatePool(def) => (
            "create_pool",
            vec![
                ("id", json!(def.id)),
                ("name", json!(def.name.as_ref())),
                ("kind", json!(def.kind.name())),
                ("active", json!(def.active)),
                ("capacity", json!(def.capacity)),
                ("hold_ttl_ms_default", json!(def.hold_ttl_ms_default)),
                ("hold_ttl_ms_max", json!(def.hold_ttl_ms_max)),
                ("rules", rules_json(&def.rules)),
            ],
        ),
        C::SetPoolActive { pool, active } => {
            ("set_pool_active", vec![("pool", json!(pool)), ("active", json!(active))])
        }
        C::SetPoolRules { pool, rules } => {
            ("set_pool_rules", vec![("pool", json!(pool)), ("rules", rules_json(rules))])
        }
        C::ResizePool { pool, capacity } => ("resize_pool", vec![("pool", json!(pool)), ("capacity", json!(capacity))]),
        C::RecallPool { pool } => ("recall_pool", vec![("pool", json!(pool))]),
        C::RenamePool { pool, name } => ("rename_pool", vec![("pool", json!(pool)), ("name", json!(name.as_ref()))]),
        C::DescribePool { pool, description } => {
            ("describe_pool", vec![("pool", json!(pool)), ("description", json!(description.as_ref()))])
        }
        C::SetLimits(c) => (
            "set_limits",
            vec![
                ("core", json!(c.core)),
                ("cores", json!(c.cores)),
                ("holds_max", json!(c.holds_max)),
                ("parked_max", json!(c.parked_max)),
                ("retention_ms", json!(c.retention_ms)),
                ("pools_max", json!(c.pools_max)),
                ("retention_min_ms", json!(c.retention_min_ms)),
                ("retained_max", json!(c.retained_max)),
            ],
        ),
    }
}

/// One record as a line of text: `core=0 lsn=7 now_ms=... reserve id=... user=... pool=1 ...`.
fn record_text(core: u16, rec: &Record) -> String {
    let (name, fields) = command_fields(&rec.command);
    let mut line = format!("core={core} lsn={} now_ms={} {name}", rec.lsn, rec.now_ms);
    for (key, value) in fields {
        match value {
            serde_json::Value::String(s) => line.push_str(&format!(" {key}={s}")),
            serde_json::Value::Null => line.push_str(&format!(" {key}=none")),
            other => line.push_str(&format!(" {key}={other}")),
        }
    }
    line
}

/// One record as a JSON object: core, lsn, now_ms, command and the command's fields in
/// `args` (the limits record has a `core` of its own).
fn record_json(core: u16, rec: &Record) -> serde_json::Value {
    let (name, fields) = command_fields(&rec.command);
    let args: serde_json::Map<String, serde_json::Value> =
        fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    json!({"core": core, "lsn": rec.lsn, "now_ms": rec.now_ms, "command": name, "args": args})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Command as ShardCommand, EngineConfig};
    use crate::wal::segment::SegmentHeader;
    use crate::wal::{TempDir, record};

    fn args(dir: &TempDir) -> WalArgs {
        WalArgs { data_dir: dir.0.clone(), json: false }
    }

    fn limits(core: u16, cores: u16) -> ShardCommand {
        ShardCommand::SetLimits(EngineConfig {
            core,
            cores,
            holds_max: 10,
            parked_max: 4,
            retention_ms: 1000,
            retention_min_ms: 0,
            retained_max: 10,
            pools_max: 2,
        })
    }

    /// Writes `commands` as the log of core `core` of `cores` (from LSN 1); answers the
    /// segment and where each record starts.
    fn write_log(data_dir: &Path, core: u16, cores: u16, commands: &[ShardCommand]) -> (PathBuf, Vec<usize>) {
        let dir = crate::wal::core_dir(data_dir, core);
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = SegmentHeader { core, cores, first_lsn: 1 }.encode().to_vec();
        let mut starts = Vec::new();
        for (i, c) in commands.iter().enumerate() {
            starts.push(b.len());
            record::encode(i as u64 + 1, 1_000 + i as u64, c, &mut b);
        }
        let path = dir.join(segment::file_name(1));
        std::fs::write(&path, b).unwrap();
        (path, starts)
    }

    fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut all = Vec::new();
        for core in std::fs::read_dir(dir).unwrap() {
            for file in std::fs::read_dir(core.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                all.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
        all.sort();
        all
    }

    /// Runs `wal dump` into memory: its result and the lines it printed.
    fn dump(args: &WalArgs, core: Option<u16>) -> (Result<(), Failure>, Vec<String>) {
        let mut out = Vec::new();
        let result = dump_records(args, core, &mut out);
        (result, String::from_utf8(out).expect("UTF-8").lines().map(str::to_string).collect())
    }

    fn failure(result: Result<(), Failure>) -> (i32, String) {
        let f = result.expect_err("a failure");
        (f.code, f.message)
    }

    #[test]
    fn verify_accepts_a_torn_tail_and_changes_nothing() {
        let dir = TempDir::new("cli-verify-torn");
        write_log(&dir.0, 0, 2, &[limits(0, 2), ShardCommand::Tick]);
        let (path, _) = write_log(&dir.0, 1, 2, &[limits(1, 2), ShardCommand::Tick]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0xAB; 10]);
        std::fs::write(&path, bytes).unwrap();
        let before = contents(&dir.0);
        assert!(wal_verify(&args(&dir)).is_ok());
        assert!(wal_verify(&WalArgs { json: true, ..args(&dir) }).is_ok());
        let (result, lines) = dump(&args(&dir), None);
        assert!(result.is_ok());
        assert_eq!(lines.len(), 4, "every record of both cores, not the torn tail: {lines:?}");
        assert!(lines[0].starts_with("core=0 lsn=1 now_ms=1000 set_limits core=0 cores=2"), "{}", lines[0]);
        assert_eq!(lines[3], "core=1 lsn=2 now_ms=1001 tick");
        let (_, lines) = dump(&WalArgs { json: true, ..args(&dir) }, Some(1));
        let parsed: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).expect("JSON")).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1], json!({"core": 1, "lsn": 2, "now_ms": 1001, "command": "tick", "args": {}}));
        assert_eq!(contents(&dir.0), before);
    }

    #[test]
    fn verify_and_dump_name_the_file_and_offset_of_damage() {
        let dir = TempDir::new("cli-verify-damage");
        let (path, starts) = write_log(&dir.0, 0, 1, &[limits(0, 1), ShardCommand::Tick, ShardCommand::Tick]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[starts[1] + 20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let expected =
            format!("core 0: {}: corrupt at offset {}: record 2 is unreadable (Checksum)", path.display(), starts[1]);
        assert_eq!(failure(wal_verify(&args(&dir))), (1, expected.clone()));
        let (result, lines) = dump(&args(&dir), Some(0));
        assert_eq!(failure(result), (1, expected));
        assert_eq!(lines.len(), 1, "the records before the damage are printed");
    }

    #[test]
    fn verify_refuses_a_directory_of_another_layout() {
        let dir = TempDir::new("cli-verify-layout");
        write_log(&dir.0, 0, 2, &[limits(0, 2)]);
        let (code, message) = failure(wal_verify(&args(&dir)));
        assert_eq!(code, 1);
        assert!(message.contains("log of core 0 of 2 starting at LSN 1, expected core 0 of 1"), "{message}");
        write_log(&dir.0, 2, 2, &[limits(1, 2)]);
        let (code, message) = failure(wal_verify(&args(&dir)));
        assert_eq!(code, 1);
        assert!(message.contains("holds the logs of cores [0, 2]"), "{message}");
    }

    #[test]
    fn verify_reports_a_log_the_state_machine_cannot_replay() {
        let dir = TempDir::new("cli-verify-replay");
        // Message 5 from core 1 when none came before: the log skipped some.
        let peer = ShardCommand::Peer { from: 1, seq: 5, msg: PeerMsg::Recall { pool: 1 } };
        write_log(&dir.0, 0, 2, &[limits(0, 2), peer]);
        write_log(&dir.0, 1, 2, &[limits(1, 2)]);
        let (code, message) = failure(wal_verify(&args(&dir)));
        assert_eq!(code, 1);
        assert!(message.starts_with("core 0: "), "{message}");
        assert!(message.contains("replaying the log broke an invariant of the state machine"), "{message}");
    }

    #[test]
    fn an_empty_directory_verifies_and_a_missing_one_is_bad_usage() {
        let dir = TempDir::new("cli-verify-empty");
        std::fs::create_dir_all(dir.0.join("core-0")).unwrap();
        assert!(wal_verify(&args(&dir)).is_ok());
        let missing = WalArgs { data_dir: dir.0.join("missing"), json: false };
        assert_eq!(failure(wal_verify(&missing)).0, 2);
        assert_eq!(failure(dump(&missing, None).0).0, 2);
        write_log(&dir.0, 0, 1, &[limits(0, 1)]);
        assert_eq!(failure(dump(&args(&dir), Some(1)).0).0, 2, "no log for core 1");
    }

    #[test]
    fn records_print_as_text_and_json() {
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let reserve = ShardCommand::Reserve(ReserveOp { id, user: 2, pool: 1, qty: 2, ttl_ms: 0, priority: 0 });
        let rec = Record { lsn: 7, now_ms: 1_700_000_000_123, command: reserve };
        assert_eq!(
            record_text(3, &rec),
            "core=3 lsn=7 now_ms=1700000000123 reserve id=01234567-89ab-cdef-0011-223344556677 \
             user=00000000-0000-0000-0000-000000000002 pool=1 qty=2 ttl_ms=0"
        );
        assert_eq!(
            record_json(3, &rec),
            json!({"core": 3, "lsn": 7, "now_ms": 1_700_000_000_123u64, "command": "reserve",
                   "args": {"id": "01234567-89ab-cdef-0011-223344556677",
                            "user": "00000000-0000-0000-0000-000000000002", "pool": 1, "qty": 2, "ttl_ms": 0}})
        );
        let grant = ShardCommand::Peer { from: 1, seq: 9, msg: PeerMsg::Grant { pool: 4, units: 12, ticket: None } };
        let rec = Record { lsn: 8, now_ms: 5, command: grant };
        assert_eq!(
            record_text(0, &rec),
            "core=0 lsn=8 now_ms=5 peer from=1 seq=9 msg=grant pool=4 units=12 ticket=none"
        );
        assert_eq!(
            record_json(0, &rec)["args"],
            json!({"from": 1, "seq": 9, "msg": "grant", "pool": 4, "units": 12, "ticket": null})
        );
        let rec = Record { lsn: 1, now_ms: 5, command: limits(0, 2) };
        assert_eq!(
            record_text(0, &rec),
            "core=0 lsn=1 now_ms=5 set_limits core=0 cores=2 holds_max=10 parked_max=4 retention_ms=1000 pools_max=2 \
             retention_min_ms=0 retained_max=10"
        );
    }
}
