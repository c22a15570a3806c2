//! A flash sale: thousands of buyers race for a pool of 1,000 units at the same instant.
//!
//! How it works: the pool is created if missing (with the blocking admin calls of
//! `shardcap::client::Client`), then every buyer is a tokio task that reserves one unit
//! through one shared `AsyncClient`. The client sends each reserve straight to its user's
//! core and batches the reserves that arrive together into multi-operation frames, so
//! thousands of concurrent calls travel in far fewer frames. The example counts who got a
//! unit and who was told `sold_out`, and checks that no more units were handed out than
//! were free.
//! Nobody pays in this simulation: the holds are released at the end, so the demo can run
//! again at once.
//!
//! ```text
//! shardcap serve &                                # the server on 127.0.0.1:7400
//! cargo run --release --example flash_sale -- [--server 127.0.0.1:7400] [--pool flash-demo]
//!     [--users 5000] [--capacity 1000] [--capacity-check]
//! ```
//!
//! `--capacity` is the capacity of a pool this run creates (an existing pool keeps its own).
//! `--capacity-check` also reads the pool's status from the server after the race and
//! checks that `held + confirmed <= capacity` and that no unit was lost between the cores;
//! the example exits with 1 if a check fails.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shardcap::client::Client;
use shardcap::client::tokio::AsyncClient;
use shardcap::protocol::control::{PoolCreate, PoolInfo, PoolKind, PoolRef, PoolRules, PoolStatus};
use shardcap::protocol::{ReleaseOp, ReserveOp, Status, user_id_from_name};

type BoxError = Box<dyn Error + Send + Sync>;

/// The command line.
struct Args {
    server: String,
    pool: String,
    users: u32,
    capacity: u64,
    capacity_check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: "127.0.0.1:7400".into(),
        pool: "flash-demo".into(),
        users: 5000,
        capacity: 1000,
        capacity_check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => args.server = value()?,
            "--pool" => args.pool = value()?,
            "--users" => args.users = value()?.parse().map_err(|e| format!("--users: {e}"))?,
            "--capacity" => args.capacity = value()?.parse().map_err(|e| format!("--capacity: {e}"))?,
            "--capacity-check" => args.capacity_check = true,
            _ => {
                return Err(format!(
                    "unknown argument {flag}\nusage: flash_sale [--server ADDR] [--pool NAME] [--users N] \
                     [--capacity N] [--capacity-check]"
                ));
            }
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args().unwrap_or_else(|usage| {
        eprintln!("{usage}");
        std::process::exit(2)
    });

    // 1. The pool: created if missing, else used as it is. (Admin calls are blocking: run
    //    them off the async workers.)
    let (server, name, capacity) = (args.server.clone(), args.pool.clone(), args.capacity);
    let pool = tokio::task::spawn_blocking(move || create_or_find_pool(&server, &name, capacity)).await??;
    let before = pool_status(&args.server, pool.id).await?;
    let free_before = pool.capacity - before.held() - before.confirmed();
    println!(
        "pool {:?} (id {}): capacity {}, {} free; {} buyers race for them",
        pool.name, pool.id, pool.capacity, free_before, args.users
    );

    // 2. The race: one task per buyer, all sharing one client (clones share its connections).
    let client = AsyncClient::connect(args.server.as_str()).await?;
    // Reservation ids are the client's to choose; unique per run and per buyer.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() << 32;
    let started = Instant::now();
    let buyers: Vec<_> = (0..args.users)
        .map(|i| {
            let client = client.clone();
            let op = ReserveOp {
                id: run | (i as u128 + 1),
                user: user_id_from_name(&format!("buyer-{i}")),
                pool: pool.id,
                qty: 1,
                ttl_ms: 0, // the pool's default hold time
                priority: 0,
            };
            tokio::spawn(async move { (op, client.reserve(op).await) })
        })
        .collect();

    let (mut ok, mut sold_out) = (0u64, 0u64);
    let mut other: BTreeMap<String, u64> = BTreeMap::new();
    let mut held: Vec<ReserveOp> = Vec::new();
    for buyer in buyers {
        let (op, outcome) = buyer.await?;
        match outcome {
            Ok(_) => {
                ok += 1;
                held.push(op);
            }
            Err(e) if e.status() == Some(Status::SoldOut) => sold_out += 1,
            // Another refusal (a rule of an existing pool, say) or a failure after retries.
            Err(e) => *other.entry(e.to_string()).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();

    // 3. The outcome.
    println!("ok {ok}, sold_out {sold_out}, other {}", other.values().sum::<u64>());
    for (what, count) in &other {
        println!("  {count} × {what}");
    }
    println!(
        "{} reserves in {:.1} ms: {:.0} ops/s",
        args.users,
        elapsed.as_secs_f64() * 1e3,
        args.users as f64 / elapsed.as_secs_f64()
    );
    match client.capacity_hint(pool.id) {
        Some(units) => println!("capacity hint: {units} units left on the core that answered last"),
        None => println!("capacity hint: none (no answer carried one)"),
    }

    // 4. The guarantee: never more units handed out than were free.
    let mut failed = false;
    if ok <= free_before {
        println!("capacity check: {ok} units held ≤ {free_before} free before the race: nothing oversold");
    } else {
        println!("capacity check FAILED: {ok} units held > {free_before} free before the race: OVERSOLD");
        failed = true;
    }
    if args.capacity_check {
        let after = pool_status(&args.server, pool.id).await?;
        let taken = after.held() + after.confirmed();
        if taken <= after.info.capacity && after.conserved() {
            println!(
                "server check: held {} + confirmed {} = {taken} ≤ capacity {}, and every unit is accounted for",
                after.held(),
                after.confirmed(),
                after.info.capacity
            );
        } else {
            println!(
                "server check FAILED: held {} + confirmed {} vs capacity {}; conserved: {}",
                after.held(),
                after.confirmed(),
                after.info.capacity,
                after.conserved()
            );
            failed = true;
        }
    }

    // 5. Nobody pays: give the units back so the demo can run again.
    let releases: Vec<_> = held
        .iter()
        .map(|op| {
            let client = client.clone();
            let release = ReleaseOp { id: op.id, user: op.user };
            tokio::spawn(async move { client.release(release).await })
        })
        .collect();
    let mut released = 0;
    for release in releases {
        if release.await?.is_ok() {
            released += 1;
        }
    }
    println!("released {released} of {} holds", held.len());

    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// The pool named `name`, created with `capacity` units if it does not exist.
fn create_or_find_pool(server: &str, name: &str, capacity: u64) -> Result<PoolInfo, BoxError> {
    let mut admin = Client::connect(server)?;
    // Creating a pool needs the admin token on a server that has one.
    if let Ok(token) = std::env::var("SHARDCAP_ADMIN_TOKEN") {
        admin.authenticate(&token)?.map_err(|status| format!("SHARDCAP_ADMIN_TOKEN: {status}"))?;
    }
    if let Some(existing) = admin.pool_list()?.into_iter().find(|p| p.name == name) {
        return Ok(existing);
    }
    let request = PoolCreate {
        name: name.into(),
        capacity,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 300_000,
        kind: PoolKind::Counted as u8,
        active: true,
        rules: PoolRules::default(), // no limits per user, no sale window
    };
    Ok(admin.pool_create(&request)?.map_err(|status| format!("creating pool {name:?}: {status}"))?)
}

/// The pool's status, in total and per core, read on a connection of its own.
async fn pool_status(server: &str, pool: u32) -> Result<PoolStatus, BoxError> {
    let server = server.to_string();
    tokio::task::spawn_blocking(move || {
        let mut admin = Client::connect(server.as_str())?;
        let status = admin.pool_status(&PoolRef { id: pool, name: String::new() })?;
        Ok(status.map_err(|status| format!("pool status: {status}"))?)
    })
    .await?
}
