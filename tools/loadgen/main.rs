//! `shardcap-loadgen`: a line-rate load generator for the shardcap binary protocol, built
//! so that it is never the bottleneck.
//!
//! How it works:
//! 1. Setup ([`setup`]), over the blocking reference client: hello gives the topology and
//!    limits; the pools `<prefix>-0 ..` are created (an identical repeat is an ok repeat,
//!    so re-runs reuse them); each connection gets its address (the shared port, or in
//!    shard-aware mode the core port of core `index mod cores`).
//! 2. The run ([`driver`]): `--threads` unpinned glommio executors on io_uring sockets,
//!    connections split among them, one task per connection. Each task keeps up to
//!    `--depth` frames of up to `--ops-per-frame` operations in flight, batches every new
//!    frame into one write and parses every complete answer out of one read. Closed loop by
//!    default; with `--rate`, an open loop whose latency runs from each frame's intended
//!    send time. What is sent ([`workload`]): pings, reserves, reserves then confirms, or
//!    reserves then releases of a fraction (churn), for users and pools drawn uniformly or
//!    from a zipf distribution.
//! 3. The report ([`report`]): a table, or with `--json` exactly one JSON object on stdout.
//!
//! With `--soak`, the soak benchmark ([`soak`]) runs instead: a peak measurement, then a
//! long open-loop run at a share of it, sampled and judged.
//!
//! Exit codes: 0 a completed run (operation errors such as `sold_out` are results); 1 the
//! run ended with connections lost (the server closed them or stopped answering), or a
//! soak failed; 2 bad usage or a setup failure (cannot connect, pool creation refused).

mod args;
mod driver;
mod report;
mod scrape;
mod setup;
mod soak;
mod stats;
mod workload;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let plan = match args::Plan::resolve(args::Args::parse()) {
        Ok(plan) => plan,
        Err(e) => fail(&e),
    };
    if plan.soak.is_some() {
        std::process::exit(soak::run(plan));
    }
    let setup = setup::prepare_within(&plan, setup::SETUP_TIMEOUT).unwrap_or_else(|e| fail(&e));
    // The top 32 bits of every reservation id: unique ids across runs on one server.
    let nonce: u32 = rand::random();
    let scraper = plan
        .scrape_url
        .clone()
        .map(|url| scrape::Scraper::start(url, std::time::Duration::from_millis(plan.scrape_interval_ms)));
    let outcome = driver::run(&plan, &setup, nonce).unwrap_or_else(|e| fail(&e));
    let mut report = report::Report::new(&plan, &setup, &outcome, nonce);
    if let Some(scraper) = scraper {
        let (ok, failed) = scraper.stop();
        report.json["scrapes"] =
            serde_json::json!({"ok": ok, "failed": failed, "interval_ms": plan.scrape_interval_ms});
        if failed > 0 {
            eprintln!(
                "warning: {failed} of {} scrapes of {} failed",
                ok + failed,
                plan.scrape_url.as_deref().unwrap_or("")
            );
        }
    }
    if plan.json {
        println!("{}", report.json);
    } else {
        print!("{}", report.table());
    }
    if outcome.stats.connection_failures > 0 {
        eprintln!(
            "error: {} connection(s) ended early; {} frame(s) lost",
            outcome.stats.connection_failures, outcome.stats.lost
        );
        std::process::exit(1);
    }
}

/// A setup failure: say why and exit with 2.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2);
}
