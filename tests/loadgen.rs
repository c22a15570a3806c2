//! End-to-end tests of `shardcap-loadgen` against the real server on 2 cores.
//!
//! How it works: each test starts its own server (OS-chosen ports), runs the load
//! generator binary with `--json` for a fraction of a second without warmup, parses the one
//! JSON object it prints, and checks it against the server's own view: pool status (held
//! and confirmed units) and server stats (forwarded operations). Since a warmup of 0
//! records every frame, the generator's counts must agree with the server exactly.

#![cfg(feature = "tools")]

mod common;

use std::process::{Command, Output};

use common::Server;
use serde_json::Value;
use shardcap::client::Client;
use shardcap::protocol::control::{PoolCreate, PoolRef, PoolStatus};

/// Fields every report has, with the JSON type each must have.
const FIELDS: &[(&str, &str)] = &[
    ("workload", "string"),
    ("mode", "string"),
    ("connections", "number"),
    ("depth", "number"),
    ("ops_per_frame", "number"),
    ("threads", "number"),
    ("rate", "number"),
    ("duration_s", "number"),
    ("frames", "number"),
    ("ops", "number"),
    ("ops_per_sec", "number"),
    ("frames_per_sec", "number"),
    ("p50_us", "number"),
    ("p90_us", "number"),
    ("p99_us", "number"),
    ("p999_us", "number"),
    ("max_us", "number"),
    ("ok", "object"),
    ("errors", "object"),
    ("timeouts", "number"),
    ("pools", "array"),
];

fn run_loadgen(server_addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardcap-loadgen"))
        .args(["--server", server_addr, "--json", "--warmup-s", "0", "--seed", "42"])
        .args(args)
        .output()
        .expect("run shardcap-loadgen")
}

/// Runs the load generator against `server` and answers its one JSON object.
fn loadgen(server: &Server, args: &[&str]) -> Value {
    let out = run_loadgen(&server.addr.to_string(), args);
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen {args:?} failed ({}): {stderr}", out.status);
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON object on stdout: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert!(report.is_object(), "{report}");
    report
}

fn n(report: &Value, path: &[&str]) -> u64 {
    let mut v = report;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or_else(|| panic!("{path:?} is not an unsigned integer in {report}"))
}

fn pool_status(client: &mut Client, name: &str) -> PoolStatus {
    client.pool_status(&PoolRef { id: 0, name: name.into() }).expect("pool status").expect("the pool exists")
}

#[test]
fn report_has_every_field_and_consistent_numbers() {
    // Room for every reserve the load generator can send in its half second.
    let server = Server::start(2, "[limits]\nholds_max_per_core = 5000000\n");
    let report =
        loadgen(&server, &["--workload", "reserve", "--pools", "2", "--pool-prefix", "fields", "--duration-s", "0.5"]);
    for (field, kind) in FIELDS {
        let value = &report[*field];
        let ok = match *kind {
            "string" => value.is_string(),
            "number" => value.is_number(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            _ => unreachable!(),
        };
        assert!(ok, "field {field} should be a {kind}: {report}");
    }
    for kind in ["reserve", "confirm", "release"] {
        assert!(report["ok"][kind].is_u64(), "ok.{kind} missing: {report}");
    }
    assert_eq!(report["workload"], "reserve");
    assert_eq!(report["mode"], "plain");
    assert_eq!((n(&report, &["connections"]), n(&report, &["depth"])), (50, 32));
    assert_eq!((n(&report, &["ops_per_frame"]), n(&report, &["threads"])), (1, 1));
    assert_eq!(report["rate"].as_f64(), Some(0.0));
    assert_eq!(report["pools"], serde_json::json!(["fields-0", "fields-1"]));
    // One operation per frame, every one a successful reserve, every sent one answered.
    let ops = n(&report, &["ops"]);
    assert!(ops > 0);
    assert_eq!(n(&report, &["frames"]), ops);
    assert_eq!(n(&report, &["ok", "reserve"]), ops);
    assert_eq!(n(&report, &["sent_ops"]), ops);
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(n(&report, &["timeouts"]), 0);
    let duration_s = report["duration_s"].as_f64().unwrap();
    assert!((0.5..5.0).contains(&duration_s), "{duration_s}");
    let rate = report["ops_per_sec"].as_f64().unwrap();
    assert!((rate - ops as f64 / duration_s).abs() <= 1.0, "{rate} vs {ops} / {duration_s}");
    let latency: Vec<f64> =
        ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].iter().map(|k| report[*k].as_f64().unwrap()).collect();
    assert!(latency[0] > 0.0 && latency.windows(2).all(|w| w[0] <= w[1]), "{latency:?}");
    // The server agrees: every reserve holds one unit, split over both pools.
    let mut client = server.client();
    let held = pool_status(&mut client, "fields-0").held() + pool_status(&mut client, "fields-1").held();
    assert_eq!(held, ops);
}

#[test]
fn reserve_confirm_counts_agree_with_the_server() {
    let server = Server::start(2, "");
    let report = loadgen(
        &server,
        &[
            "--workload",
            "reserve-confirm",
            "--pool-prefix",
            "rc",
            "--connections",
            "4",
            "--depth",
            "8",
            "--ops-per-frame",
            "4",
            "--duration-s",
            "0.7",
        ],
    );
    assert_eq!(report["workload"], "reserve-confirm");
    let (reserved, confirmed) = (n(&report, &["ok", "reserve"]), n(&report, &["ok", "confirm"]));
    assert!(confirmed > 0 && confirmed <= reserved, "{report}");
    assert_eq!(n(&report, &["ok", "release"]), 0);
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(n(&report, &["ops"]), reserved + confirmed, "both kinds count as operations");
    // Every hold was confirmed, except those whose confirm was still queued when sending
    // stopped (every confirm sent was answered).
    assert_eq!(reserved - confirmed, n(&report, &["follow_ups_unsent"]));
    let status = pool_status(&mut server.client(), "rc-0");
    assert_eq!(status.confirmed(), confirmed);
    assert_eq!(status.held(), reserved - confirmed);
    assert!(status.conserved());
}

#[test]
fn max_ops_sends_exactly_that_many() {
    let server = Server::start(2, "");
    let report = loadgen(
        &server,
        &[
            "--workload",
            "reserve",
            "--pool-prefix",
            "fill",
            "--max-ops",
            "5000",
            "--connections",
            "8",
            "--depth",
            "8",
            "--ops-per-frame",
            "3",
            "--duration-s",
            "30",
        ],
    );
    assert_eq!(n(&report, &["ops"]), 5000);
    assert_eq!(n(&report, &["sent_ops"]), 5000);
    assert_eq!(n(&report, &["ok", "reserve"]), 5000);
    // 625 operations per connection: 208 frames of 3 and one of 1.
    assert_eq!(n(&report, &["frames"]), 8 * 209);
    assert_eq!(report["max_ops"], 5000);
    assert!(report["duration_s"].as_f64().unwrap() < 30.0, "the run ends once the operations are sent");
    assert_eq!(pool_status(&mut server.client(), "fill-0").held(), 5000);
}

#[test]
fn shard_aware_mode_forwards_nothing_and_plain_mode_forwards() {
    let server = Server::start(2, "");
    let forwarded = |client: &mut Client| -> u64 {
        client.server_stats().expect("server stats").iter().map(|s| s.forwarded_out).sum()
    };
    let mut client = server.client();
    let common =
        ["--workload", "reserve", "--pool-prefix", "sa", "--connections", "6", "--depth", "4", "--duration-s", "0.5"];
    let aware = loadgen(&server, &[&common[..], &["--mode", "shard-aware"]].concat());
    assert_eq!(aware["mode"], "shard-aware");
    assert!(n(&aware, &["ok", "reserve"]) > 0);
    assert_eq!(aware["connections_per_core"], serde_json::json!([3, 3]));
    assert_eq!(forwarded(&mut client), 0, "shard-aware operations all go to their home core");

    let plain = loadgen(&server, &[&common[..], &["--mode", "plain"]].concat());
    let reserved = n(&plain, &["ok", "reserve"]);
    let moved = forwarded(&mut client);
    // Uniform users: about half of them live on the other core, whichever core accepted.
    assert!((reserved * 3 / 10..=reserved * 7 / 10).contains(&moved), "{moved} of {reserved} operations forwarded");
    let held = pool_status(&mut client, "sa-0").held();
    assert_eq!(held, n(&aware, &["ok", "reserve"]) + reserved);
}

#[test]
fn open_loop_sends_every_intended_frame() {
    let server = Server::start(2, "");
    let report = loadgen(
        &server,
        &["--workload", "ping", "--rate", "2000", "--connections", "2", "--depth", "64", "--duration-s", "1"],
    );
    assert_eq!(report["rate"].as_f64(), Some(2000.0));
    // Frame i of a connection is due at t0 + i ms (t0 = 0 and 0.5 ms): 1000 frames per
    // connection are due within 1 s. Each is sent, late if need be, or reported unsent
    // when --depth frames were in flight until the end.
    let (sent, unsent) = (n(&report, &["sent_frames"]), n(&report, &["unsent_frames"]));
    assert_eq!(sent + unsent, 2_000);
    assert!(sent >= 1_900, "{sent} sent");
    assert_eq!(n(&report, &["frames"]), sent);
    assert_eq!(n(&report, &["ok", "ping"]), sent);
    assert_eq!(report["pools"], serde_json::json!([]));
    assert!(report["send_lag_p50_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn setup_failures_exit_with_2() {
    // Nothing listens on a port just released by the OS.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run_loadgen(&format!("127.0.0.1:{port}"), &["--duration-s", "0.2"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());

    // A pool of that name exists with another capacity: pool_create answers pool_exists.
    let server = Server::start(2, "");
    let clash = PoolCreate {
        name: "px-0".into(),
        capacity: 10,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 900_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    };
    server.client().pool_create(&clash).expect("create").expect("created");
    let out = run_loadgen(&server.addr.to_string(), &["--pool-prefix", "px", "--duration-s", "0.2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_exists"));
}
