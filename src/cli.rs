//! The `shardcap` command line: `serve` runs the server; the other subcommands are clients
//! of the binary protocol. Every client subcommand takes `--server ADDR` (or the
//! `SHARDCAP_SERVER` environment variable) and `--json` (one JSON object per result on
//! stdout).
//!
//! Exit codes: 0 success; 1 the server refused the operation (the status is named, e.g.
//! `sold_out`); 2 bad usage, unreachable server or protocol error.
//!
//! Text user names map to the protocol's 128-bit user ids in one way: XXH3-128 of the
//! name's UTF-8 bytes ([`crate::protocol::user_id_from_name`]). Reservation ids are
//! written as UUIDs (or 32 hex digits).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::protocol::control::{
    PoolCreate, PoolInfo, PoolKind, PoolRef, PoolStatus, SHARD_FLAG_DRAINED, SHARD_FLAG_HOME,
};
use crate::protocol::{
    ConfirmOp, ExtendOp, LookupOp, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState, ReserveOp, Status,
    format_id, parse_id, user_id_from_name,
};

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
    #[arg(long)]
    pub durability: Option<String>,
    /// First per-core port (0: OS-chosen ports).
    #[arg(long)]
    pub core_port_base: Option<u16>,
    /// Do not pin executors to CPUs.
    #[arg(long)]
    pub no_pin: bool,
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
}

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
    if let Some(mode) = &args.durability {
        config.durability.mode = match mode.as_str() {
            "sync" => crate::wal::Durability::Sync,
            "batch" => crate::wal::Durability::Batch,
            "none" => crate::wal::Durability::None,
            other => anyhow::bail!("--durability {other}: expected sync, batch or none"),
        };
    }
    if let Some(base) = args.core_port_base {
        config.server.core_port_base = base;
    }
    if args.no_pin {
        config.server.pin_cores = false;
    }
    config.validate()?;
    Ok(config)
}

/// Runs a client subcommand; `serve` is handled by `main`.
pub fn run_client(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
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
                println!(
                    "{}",
                    json!({
                        "status": status.name(), "id": format_id(id), "state": state.name(), "pool": r.pool,
                        "qty": r.qty, "user": format_id(r.user), "expires_at_ms": r.expires_at_ms,
                        "commit_ref": format_id(r.commit_ref),
                    })
                );
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

fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    Client::connect(args.server.as_str()).map_err(|e| usage(format!("cannot reach {}: {e}", args.server)))
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
    if status == Status::Ok { Ok(()) } else { Err(Failure { code: 1, message: format!("{what} refused: {status}") }) }
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
    let op = ReserveOp { id, user: user_id_from_name(&args.user), pool: pool.id, qty: args.qty, ttl_ms, priority: 0 };
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

fn pool_json(info: &PoolInfo) -> serde_json::Value {
    json!({
        "id": info.id, "name": info.name, "kind": PoolKind::from_u8(info.kind).map_or("unknown", |k| k.name()),
        "active": info.active, "capacity": info.capacity, "hold_ttl_ms_default": info.hold_ttl_ms_default,
        "hold_ttl_ms_max": info.hold_ttl_ms_max, "home_core": info.home_core,
    })
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
        PoolCommand::Create { name, capacity, hold_ttl_s, hold_ttl_s_max, inactive, client } => {
            let mut c = connect(&client)?;
            let req = PoolCreate {
                name: name.clone(),
                capacity,
                hold_ttl_ms_default: hold_ttl_s.saturating_mul(1000),
                hold_ttl_ms_max: hold_ttl_s_max.saturating_mul(1000),
                kind: PoolKind::Counted as u8,
                active: !inactive,
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
                let shards: Vec<_> = status
                    .shards
                    .iter()
                    .map(|s| {
                        json!({"core": s.core, "capacity": s.capacity, "held": s.held, "confirmed": s.confirmed,
                               "available": s.available(), "parked": s.parked, "lent": s.lent, "borrowed": s.borrowed,
                               "home": s.flags & SHARD_FLAG_HOME != 0, "drained": s.flags & SHARD_FLAG_DRAINED != 0})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"status": "ok", "pool": pool_json(&status.info), "held": status.held(),
                           "confirmed": status.confirmed(), "available": status.available(),
                           "in_flight": status.in_flight() as i64, "shards": shards})
                );
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
        PoolCommand::Activate { pool, client } => set_active(&pool, &client, true),
        PoolCommand::Deactivate { pool, client } => set_active(&pool, &client, false),
    }
}

fn set_active(pool: &str, client: &ClientArgs, active: bool) -> Result<(), Failure> {
    let mut c = connect(client)?;
    let info = resolve_pool(&mut c, pool)?;
    match c.pool_set_active(info.id, active)? {
        Ok(info) => {
            if client.json {
                println!("{}", json!({"status": "ok", "pool": pool_json(&info)}));
            } else {
                println!("pool {} is {}", info.name, if info.active { "active" } else { "inactive" });
            }
            Ok(())
        }
        Err(status) => refused_if(status, "pool activation"),
    }
}
