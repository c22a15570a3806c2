//! The soak benchmark (`shardcap-loadgen --soak`) in a tiny mode: a few seconds against
//! the real server.
//!
//! How it works: the first test lets the soak start the server itself from the built
//! binary, on its embedded default configuration (only the ports, the data directory and
//! the durability mode changed), once in `none` and once in `sync`: a 1 s peak measurement,
//! then 3 s of open loop at 20% of it (the debug build is slow, and at a small share the
//! retention store, which keeps finished records within its 1 GiB budget, grows too little
//! for the RSS check to notice in seconds). It checks the verdict, the exit code and the
//! JSON object's fields. The second gives the soak a server whose retention budget is
//! tiny, and checks that the soak fails for the right reason: reserves answered `busy` by
//! the retention budget, a refusal for bookkeeping.

#![cfg(feature = "tools")]

mod common;

use std::process::{Command, Output};

use common::Server;
use serde_json::Value;

/// The tiny soak's flags (the server's are added by each test).
const TINY: &[&str] = &[
    "--soak",
    "--soak-minutes",
    "0.05",
    "--soak-sample-s",
    "0.5",
    "--soak-peak-s",
    "1",
    // The default budget would take minutes to fill at this rate: measure at once.
    "--soak-fill-max-s",
    "0",
    "--ttl-ms",
    "500",
    "--connections",
    "4",
    "--depth",
    "4",
    "--users",
    "10000",
    "--sold-out-capacity",
    "10",
    "--seed",
    "42",
];

fn soak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardcap-loadgen")).args(TINY).args(args).output().expect("run shardcap-loadgen")
}

/// The one JSON object on stdout.
fn report(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON object on stdout: {stdout}\nstderr: {stderr}");
    serde_json::from_str(&stdout).expect("stdout is JSON")
}

fn f(report: &Value, path: &[&str]) -> f64 {
    let mut v = report;
    for key in path {
        v = &v[*key];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {report}"))
}

#[test]
fn tiny_soak_passes_on_the_default_configuration_in_none_and_sync() {
    for durability in ["none", "sync"] {
        // A stall of the shared machine's disk or CPU in a 3 s run is a large share of it:
        // the tiny run only asks for half of the intended rate (the 10-minute soak, 95%).
        let out = soak(&[
            "--server-bin",
            env!("CARGO_BIN_EXE_shardcap"),
            "--durability",
            durability,
            "--soak-load-pct",
            "20",
            "--soak-sustained-pct",
            "50",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let r = report(&out);
        assert_eq!(out.status.code(), Some(0), "{durability}: {stderr}");
        assert_eq!(r["verdict"], "pass", "{durability}: {r}");
        assert_eq!(r["failures"], serde_json::json!([]));
        assert!(stderr.contains("verdict      pass"), "the table and summary go to stderr: {stderr}");

        let server = &r["server"];
        assert_eq!((&server["started"], &server["durability"]), (&Value::Bool(true), &Value::from(durability)));
        assert!(server["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "loopback only: {server}");
        assert!(server["pid"].as_u64().unwrap() > 0);
        assert_eq!(server["cores"], r["run"]["server_cores"]);
        assert_eq!((&r["workload"], &r["mode"], &r["pools"]), (&"mixed".into(), &"shard-aware".into(), &8.into()));

        // The rate: 20% of the measured peak, and the server answered at least half of it.
        assert_eq!(r["peak_measured"], true);
        let (peak, target, achieved) =
            (f(&r, &["peak_ops_per_sec"]), f(&r, &["target_ops_per_sec"]), f(&r, &["achieved_ops_per_sec"]));
        assert!(peak > 0.0 && (target - 0.2 * peak).abs() <= 1.0, "{peak} {target}");
        assert!(achieved >= 0.5 * target, "{achieved} of {target}");
        assert_eq!(r["sustained_pct_min"], 50.0);
        assert_eq!(r["peak"]["rate"], 0.0, "the peak is measured in a closed loop");
        assert!((f(&r, &["run", "rate"]) - target).abs() <= 0.5, "the soak runs open loop at the target");

        // Every kind of operation of the mix happened; the only refusal is the sold-out pool's.
        let ok = &r["run"]["ok"];
        for kind in ["reserve", "confirm", "release", "extend", "lookup"] {
            assert!(ok[kind].as_u64().unwrap() > 0, "{durability}: no successful {kind}: {ok}");
        }
        assert_eq!(r["refused"], serde_json::json!({}));
        assert!(r["pool_refusals"]["sold_out"].as_u64().unwrap() > 0, "{}", r["pool_refusals"]);
        assert_eq!(r["oversell"], 0);

        // Samples from setup to the end, each with the server's RSS.
        let samples = r["samples"].as_array().unwrap();
        let phases: Vec<&str> = samples.iter().map(|s| s["phase"].as_str().unwrap()).collect();
        assert_eq!(phases.first(), Some(&"setup"));
        assert_eq!(phases.last(), Some(&"done"));
        assert!(phases.contains(&"peak") && phases.iter().filter(|p| **p == "soak").count() >= 4, "{phases:?}");
        assert!(samples.windows(2).all(|w| w[0]["t_s"].as_f64() < w[1]["t_s"].as_f64()));
        for s in samples {
            assert!(s["rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
            assert_eq!(s["oversell"], 0);
            assert!(s["holds_active"].is_u64() && s["error"].is_null(), "{s}");
            // The retention window is a list per core where the server has it, else null.
            let window = &s["retention_window_s"];
            assert!(window.is_null() || window.as_array().unwrap().iter().all(|w| w.as_f64().unwrap() >= 0.0));
        }
        let rss = &r["rss"];
        let (start, end) = (f(&r, &["soak_start_s"]), f(&r, &["soak_end_s"]));
        let warmup_end = f(rss, &["warmup_end_s"]);
        assert!(start < warmup_end && warmup_end < end, "{start} {warmup_end} {end}");
        assert!(f(rss, &["baseline_bytes"]) > 0.0 && f(rss, &["max_after_bytes"]) > 0.0);
        let growth = f(rss, &["growth_pct"]);
        assert!((0.0..=5.0).contains(&growth), "{rss}");
        let retention = &r["retention"];
        assert!(retention["window_s_max"].is_null() || retention["window_s_max"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn soak_fails_when_the_server_refuses_for_bookkeeping() {
    // Room for 1000 finished reservations per core, which must be kept 30 s: at 4000
    // operations a second the budget cannot keep them, and reserves are answered busy.
    // (Before finished reservations had a store of their own, a table of 1000 records per
    // core was full within a second: `holds_limit_reached`.)
    let server = Server::start(2, "[limits]\nholds_max_per_core = 1000\nretention_bytes_max_per_core = 72000\n");
    let admin = server.admin.expect("an admin port").to_string();
    let out = soak(&[
        "--server",
        &server.addr.to_string(),
        "--admin",
        &admin,
        "--server-pid",
        &server.pid().to_string(),
        "--soak-peak-ops",
        "4000",
        "--soak-load-pct",
        "100",
    ]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r["verdict"], "fail");
    assert_eq!((&r["server"]["started"], &r["server"]["pid"]), (&Value::Bool(false), &Value::from(server.pid())));
    assert_eq!(r["peak_measured"], false);
    assert_eq!(r["peak"], Value::Null);
    assert!(r["refused"]["retention_busy"].as_u64().is_some_and(|n| n > 0), "{r}");
    let failures = r["failures"].as_array().unwrap();
    let first = failures[0].as_str().unwrap();
    assert!(first.starts_with("refused other than by the pools' rules: ") && first.contains("busy"), "{failures:?}");

    // Without a server to soak: a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_shardcap-loadgen")).arg("--soak").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--soak needs --server-bin"));
}
