//! Throughput of the async client library: many tasks reserving at once, batched by the
//! client, against a running server — the workload of `shardcap-loadgen --workload reserve
//! --qty 1 --ttl-ms 60000`, with `--tasks` calls in flight (50 connections x depth 32 in
//! the load generator's terms: 1600).
//!
//! ```sh
//! cargo run --release --example client_bench -- --server 127.0.0.1:7400 --tasks 1600 --duration-s 10
//! ```
//!
//! Prints one JSON object: reserves per second over the measured window, and the counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use shardcap::client::tokio::{AsyncClient, Options};
use shardcap::protocol::ReserveOp;
use shardcap::protocol::control::PoolCreate;

#[derive(Parser)]
struct Args {
    /// The server's shared port.
    #[arg(long, default_value = "127.0.0.1:7400")]
    server: String,
    /// The pool (created with a capacity that never runs out if it does not exist).
    #[arg(long, default_value = "client-bench")]
    pool: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1600)]
    tasks: u32,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Measured seconds, after the warmup.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Warmup seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// Frames each connection keeps unanswered (the client's `Options::frames_in_flight`).
    #[arg(long, default_value_t = Options::default().frames_in_flight)]
    frames_in_flight: usize,
    /// Most operations per frame (the client's `Options::batch_max`; 0: the server's).
    #[arg(long, default_value_t = Options::default().batch_max)]
    batch_max: usize,
    /// Connections to each core (the client's `Options::connections_per_core`).
    #[arg(long, default_value_t = Options::default().connections_per_core)]
    connections_per_core: usize,
}

fn main() {
    let args = Args::parse();
    let mut c = shardcap::client::Client::connect(args.server.as_str()).expect("connect");
    // Creating the pool needs the admin token on a server that has one.
    if let Ok(token) = std::env::var("SHARDCAP_ADMIN_TOKEN") {
        c.authenticate(&token).expect("auth").expect("the server takes SHARDCAP_ADMIN_TOKEN");
    }
    if c.pool_id(&args.pool).expect("pool lookup").is_none() {
        let req = PoolCreate {
            name: args.pool.clone(),
            capacity: 1 << 50,
            hold_ttl_ms_default: 60_000,
            hold_ttl_ms_max: 86_400_000,
            kind: 0,
            active: true,
            rules: Default::default(),
        };
        c.pool_create(&req).expect("create the pool").expect("the pool is created");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build().unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let options = Options {
        frames_in_flight: args.frames_in_flight,
        batch_max: args.batch_max,
        connections_per_core: args.connections_per_core,
        ..Options::default()
    };
    let client = AsyncClient::connect_with(args.server.as_str(), options).await.expect("connect");
    let pool = client.pool_id(&args.pool).await.expect("the pool");
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Ids unique across runs on one server: the top 32 bits are the run's.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u32 as u128;
    let tasks: Vec<_> = (0..args.tasks)
        .map(|task| {
            let (client, measuring, stop) = (client.clone(), measuring.clone(), stop.clone());
            let users = args.users.max(1);
            tokio::spawn(async move {
                let (mut ok, mut refused, mut failed) = (0u64, 0u64, 0u64);
                let mut rng = (task as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    seq += 1;
                    let id = nonce << 96 | (task as u128) << 64 | seq as u128;
                    let op =
                        ReserveOp { id, user: (rng % users) as u128 + 1, pool, qty: 1, ttl_ms: 60_000, priority: 0 };
                    let result = client.reserve(op).await;
                    if measuring.load(Ordering::Relaxed) {
                        match result {
                            Ok(_) => ok += 1,
                            Err(shardcap::client::Error::Status { .. }) => refused += 1,
                            Err(_) => failed += 1,
                        }
                    }
                }
                (ok, refused, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_s)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration_s)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut refused, mut failed) = (0, 0, 0);
    for t in tasks {
        let (o, r, f) = t.await.unwrap();
        ok += o;
        refused += r;
        failed += f;
    }
    println!(
        "{}",
        serde_json::json!({"ops_per_sec": (ok + refused) as f64 / elapsed, "ok": ok, "refused": refused,
                           "failed": failed, "tasks": args.tasks, "threads": args.threads, "seconds": elapsed})
    );
}
