//! The admin HTTP port against a live server: Prometheus metrics that count exactly what
//! was done, bounded label cardinality, every JSON endpoint with its refusals, and
//! `shardcap top`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use common::{Server, by_id, pool, reserve, users_on};
use serde_json::{Value, json};
use shardcap::protocol::control::PoolCreate;
use shardcap::protocol::{ConfirmOp, Opcode, Status, format_id, user_id_from_name};

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: String,
    www_authenticate: Option<String>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The error code of a refusal.
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {}", self.body)).to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// Sends `method path` with an optional bearer token and body.
fn http(admin: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    let url = format!("http://{admin}{path}");
    let agent = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (m, body) => {
            let mut r = match m {
                "POST" => agent.post(&url),
                "PATCH" => agent.patch(&url),
                "PUT" => agent.put(&url),
                other => panic!("method {other}"),
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.header("Content-Type", "application/json").send(body.unwrap_or(""))
        }
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let www_authenticate =
        response.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or_default().to_string());
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("body");
    Answer { status, body, www_authenticate }
}

fn get(admin: SocketAddr, path: &str) -> Answer {
    http(admin, "GET", path, None, None)
}

/// The scraped samples: `name{labels}` → value, labels sorted.
struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    fn take(admin: SocketAddr) -> Scrape {
        let answer = get(admin, "/metrics");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let text = answer.body;
        check_exposition(&text);
        promtool_check(&text);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
        let mut samples = BTreeMap::new();
        for s in parsed.samples {
            let labels: BTreeMap<String, String> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mut name = s.metric.clone();
            let values: Vec<(String, f64)> = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => vec![(String::new(), v)],
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| (format!("le={}", b.less_than), b.count)).collect()
                }
                prometheus_parse::Value::Summary(_) => panic!("no summaries are exported"),
            };
            if !labels.is_empty() {
                name.push_str(&format!("{labels:?}"));
            }
            for (suffix, v) in values {
                samples.insert(if suffix.is_empty() { name.clone() } else { format!("{name} {suffix}") }, v);
            }
        }
        Scrape { samples, text }
    }

    /// The sum of every sample of `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                    .then(|| value.parse::<f64>().expect("a number"))
            })
            .sum()
    }

    /// The distinct values of label `label` on series of `name`.
    fn label_values(&self, name: &str, label: &str) -> HashSet<String> {
        self.text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| {
                let start = l.find(&format!("{label}=\""))? + label.len() + 2;
                Some(l[start..start + l[start..].find('"')?].to_string())
            })
            .collect()
    }
}

/// Checks the text format as promtool would: every family has HELP and TYPE before its
/// samples; histogram buckets are cumulative and end with +Inf equal to the count.
fn check_exposition(text: &str) {
    let mut typed: BTreeMap<&str, &str> = BTreeMap::new();
    let mut helped = HashSet::new();
    let mut buckets: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(typed.insert(name, kind).is_none(), "TYPE twice: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let metric = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| metric.strip_suffix(s).filter(|f| typed.get(f) == Some(&"histogram")))
            .unwrap_or(metric);
        assert!(typed.contains_key(family) && helped.contains(family), "sample before its HELP and TYPE: {line}");
        assert!(family.starts_with("shardcap_"), "{line}");
        assert!(typed[family] != "counter" || metric.ends_with("_total"), "counter without _total: {line}");
        if typed.get(family) == Some(&"histogram") {
            // The series without its `le` label: buckets and count of one histogram share it.
            let labels = series.split_once('{').map_or("", |(_, l)| l.trim_end_matches('}'));
            let labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty() && !l.starts_with("le=")).collect();
            let key = format!("{family}{{{}}}", labels.join(","));
            if metric.ends_with("_bucket") {
                buckets.entry(key).or_default().push(value);
            } else if metric.ends_with("_count") {
                counts.insert(key, value);
            }
        }
    }
    assert!(!buckets.is_empty(), "histograms are exported");
    for (key, values) in &buckets {
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "buckets not cumulative: {key} {values:?}");
        assert_eq!(Some(*values.last().unwrap()), counts.get(key).copied(), "+Inf bucket of {key} is its count");
    }
}

/// Where Prometheus's `promtool` is installed (Debian's `prometheus` package), it checks the
/// text too; `check_exposition` covers the same rules where it is not.
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_count_what_was_done() {
    let server = Server::start(2, &pool("sale", 1000));
    let admin = server.admin.expect("the admin port is on");
    let mut c = server.core_client(0);
    let id = c.pool_id("sale").unwrap().unwrap();
    // Users on both cores, all through core 0's port: core 1's users' operations are forwarded.
    let mut users = users_on(0, 2, 100);
    users.extend(users_on(1, 2, 100));
    let reserves: Vec<_> = users.iter().enumerate().map(|(i, &u)| reserve(1000 + i as u128, u, id, 1, 0)).collect();
    for chunk in reserves.chunks(20) {
        assert!(c.reserve(chunk).unwrap().iter().all(|r| r.status == Status::Ok as u8));
    }
    let confirms: Vec<_> =
        reserves[..120].iter().map(|r| ConfirmOp { id: r.id, user: r.user, commit_ref: 7 }).collect();
    for chunk in confirms.chunks(40) {
        assert!(c.confirm(chunk).unwrap().iter().all(|r| r.status == Status::Ok as u8));
    }
    // One reserve the pool cannot satisfy, and one confirm of an unknown reservation.
    assert_eq!(c.reserve(&[reserve(9, users[0], id, 5000, 0)]).unwrap()[0].status, Status::SoldOut as u8);
    let unknown = ConfirmOp { id: 77, user: users[0], commit_ref: 1 };
    assert_eq!(c.confirm(&[unknown]).unwrap()[0].status, Status::NotFound as u8);

    let s = Scrape::take(admin);
    let ops = |op: &str, status: &str| s.sum("shardcap_operations_total", &[("op", op), ("status", status)]);
    assert_eq!(ops("reserve", "ok"), 200.0);
    assert_eq!(ops("reserve", "sold_out"), 1.0);
    assert_eq!(ops("confirm", "ok"), 120.0);
    assert_eq!(ops("confirm", "not_found"), 1.0);
    assert_eq!(s.sum("shardcap_operations_total", &[("op", "release")]), 0.0);
    // Every core applied its own users' operations.
    for core in ["0", "1"] {
        assert_eq!(s.sum("shardcap_operations_total", &[("core", core), ("op", "reserve"), ("status", "ok")]), 100.0);
    }
    // Latency: one observation per reserve and confirm answered; batches: one per frame.
    assert_eq!(s.sum("shardcap_request_duration_seconds_count", &[("op", "reserve")]), 201.0);
    assert_eq!(s.sum("shardcap_request_duration_seconds_count", &[("op", "confirm")]), 121.0);
    assert_eq!(s.sum("shardcap_batch_operations_count", &[]), 10.0 + 3.0 + 2.0);
    assert_eq!(s.sum("shardcap_batch_operations_sum", &[]), 200.0 + 120.0 + 2.0);
    assert_eq!(s.sum("shardcap_batch_operations_bucket", &[("le", "16")]), 2.0, "the frames of one operation");
    assert_eq!(s.sum("shardcap_batch_operations_bucket", &[("le", "32")]), 12.0, "and those of 20");
    // Core 1's users: 100 reserves and 20 of the confirms.
    let forwarded = |core: &str, direction: &str| {
        s.sum("shardcap_forwarded_operations_total", &[("core", core), ("direction", direction)])
    };
    assert_eq!((forwarded("0", "out"), forwarded("1", "in")), (120.0, 120.0));
    assert_eq!((forwarded("1", "out"), forwarded("0", "in")), (0.0, 0.0));
    // The pool: 80 held, 120 confirmed, the rest available.
    assert_eq!(s.samples["shardcap_pool_capacity{\"pool\": \"sale\"}"], 1000.0);
    assert_eq!(s.samples["shardcap_pool_held{\"pool\": \"sale\"}"], 80.0);
    assert_eq!(s.samples["shardcap_pool_confirmed{\"pool\": \"sale\"}"], 120.0);
    assert_eq!(s.samples["shardcap_pool_available{\"pool\": \"sale\"}"], 800.0);
    assert_eq!(s.sum("shardcap_holds_active", &[]), 80.0);
    assert_eq!(s.sum("shardcap_reservation_records", &[]), 200.0);
    assert_eq!(s.samples["shardcap_pools"], 1.0);
    assert_eq!(s.samples["shardcap_ready"], 1.0);
    // Every core has the oversell series (from the start), and no check found anything.
    assert_eq!(s.label_values("shardcap_oversell_detected_total", "core"), HashSet::from(["0".into(), "1".into()]));
    assert_eq!(s.sum("shardcap_oversell_detected_total", &[]), 0.0);
    // The log (sync mode) wrote records durably.
    assert!(s.sum("shardcap_log_written_bytes_total", &[]) > 0.0);
    assert!(s.sum("shardcap_log_write_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(s.sum("shardcap_connections_open", &[]), 1.0);
    assert_eq!(s.sum("shardcap_connections_opened_total", &[]), 1.0);
    assert_eq!(s.sum("shardcap_busy_total", &[]), 0.0);

    // A connection that breaks the protocol is counted as closed for an error before the
    // server closes it (the client sees the end after the count).
    let mut bad = server.core_client(1);
    bad.send_raw(b"not a frame at all, not even close");
    bad.flush().unwrap();
    assert_eq!(bad.recv().unwrap().header.status, Status::BadMagic as u8);
    assert!(bad.recv().is_err(), "the server closed the connection");
    let s = Scrape::take(admin);
    assert_eq!(s.sum("shardcap_connections_opened_total", &[]), 2.0);
    assert_eq!(s.sum("shardcap_connections_closed_total", &[("core", "1"), ("reason", "error")]), 1.0);
    assert_eq!(s.sum("shardcap_connections_closed_total", &[("reason", "client")]), 0.0);
    assert_eq!(s.sum("shardcap_connections_open", &[]), 1.0);
    assert_eq!(s.sum("shardcap_operations_total", &[("op", "reserve"), ("status", "ok")]), 200.0, "no change");
    drop(c);
}

#[test]
fn label_cardinality_stays_bounded_with_10000_pools() {
    const POOLS: u32 = 10_000;
    let server = Server::start(
        2,
        "[limits]\nholds_max_per_core = 100000\npools_max = 20000\n[durability]\nmode = \"none\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nmetrics_pools_max = 16\n",
    );
    let mut c = server.client();
    // Pipelined creations, 500 frames at a time.
    let mut next = 0;
    while next < POOLS {
        let batch: Vec<u64> = (next..(next + 500).min(POOLS))
            .map(|n| {
                let req = PoolCreate {
                    name: format!("p{n}"),
                    capacity: 10,
                    hold_ttl_ms_default: 60_000,
                    hold_ttl_ms_max: 60_000,
                    kind: 0,
                    active: true,
                    rules: Default::default(),
                };
                let mut body = Vec::new();
                req.encode(&mut body).unwrap();
                c.send_frame(Opcode::PoolCreate, 1, &body)
            })
            .collect();
        c.flush().unwrap();
        for id in batch {
            assert_eq!(c.wait(id).unwrap().body[0], Status::Ok as u8);
        }
        next += 500;
    }
    let s = Scrape::take(server.admin.unwrap());
    assert_eq!(s.samples["shardcap_pools"], POOLS as f64);
    let exported = s.label_values("shardcap_pool_capacity", "pool");
    assert_eq!(exported, (0..16).map(|n| format!("p{n}")).collect::<HashSet<_>>(), "the first 16 pools by id");
    for name in ["shardcap_pool_held", "shardcap_pool_confirmed", "shardcap_pool_available"] {
        assert_eq!(s.label_values(name, "pool").len(), 16, "{name}");
    }
    // Whatever the number of pools, the scrape stays small: 16 pools of 4 gauges each, and
    // series per core that do not depend on pools.
    let samples: Vec<&str> = s.text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(samples.iter().filter(|l| l.contains("pool=\"")).count(), 16 * 4);
    assert!(samples.len() < 400, "{} samples for {POOLS} pools", samples.len());
}

#[test]
fn pools_chosen_by_name_are_the_ones_exported() {
    let extra = format!(
        "{}{}{}[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_pools = [\"b\", \"missing\"]\n",
        pool("a", 10),
        pool("b", 20),
        pool("c", 30)
    );
    let server = Server::start(1, &extra);
    let s = Scrape::take(server.admin.unwrap());
    assert_eq!(s.label_values("shardcap_pool_capacity", "pool"), HashSet::from(["b".to_string()]));
    assert_eq!(s.samples["shardcap_pool_capacity{\"pool\": \"b\"}"], 20.0);
}

const TOKEN: &str = "s3cret-token";

#[test]
fn admin_endpoints_answer_and_refuse() {
    let extra = format!("{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n", pool("demo", 100));
    let server = Server::start(2, &extra);
    let admin = server.admin.unwrap();
    let t = Some(TOKEN);

    // Health and readiness.
    let h = get(admin, "/healthz");
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    let r = get(admin, "/readyz");
    assert_eq!((r.status, r.json()), (200, json!({"ready": true})));

    // List.
    let list = get(admin, "/v1/pools");
    assert_eq!(list.status, 200);
    let pools = list.json();
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1);
    assert_eq!(pools["pools"][0]["name"], "demo");
    assert_eq!(pools["more"], false);

    // Create: refused without a token (401), with a wrong one (403), with bad JSON (400).
    let body = r#"{"name": "flash", "capacity": 500, "description": "Friday sale", "rules": {"max_per_user": 2}}"#;
    let no_token = http(admin, "POST", "/v1/pools", None, Some(body));
    assert_eq!((no_token.status, no_token.code().as_str()), (401, "unauthorized"));
    assert_eq!(no_token.www_authenticate.as_deref(), Some("Bearer"));
    let wrong = http(admin, "POST", "/v1/pools", Some("guess"), Some(body));
    assert_eq!((wrong.status, wrong.code().as_str()), (403, "forbidden"));
    let bad = http(admin, "POST", "/v1/pools", t, Some(r#"{"name": "flash", "capacity": }"#));
    assert_eq!((bad.status, bad.code().as_str()), (400, "bad_json"));
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("line 1 column"), "{}", bad.body);
    let unknown = http(admin, "POST", "/v1/pools", t, Some(r#"{"name": "flash", "capacity": 5, "colour": 1}"#));
    assert_eq!((unknown.status, unknown.code().as_str()), (400, "bad_json"));
    assert!(unknown.body.contains("unknown field `colour`"), "{}", unknown.body);
    let missing = http(admin, "POST", "/v1/pools", t, Some(r#"{"name": "flash"}"#));
    assert!(missing.status == 400 && missing.body.contains("missing field `capacity`"), "{}", missing.body);
    assert_eq!(get(admin, "/v1/pools").json()["pools"].as_array().unwrap().len(), 1, "nothing was created");

    let created = http(admin, "POST", "/v1/pools", t, Some(body));
    assert_eq!(created.status, 201, "{}", created.body);
    let info = created.json();
    assert_eq!((info["name"].as_str(), info["capacity"].as_u64()), (Some("flash"), Some(500)));
    assert_eq!(info["description"], "Friday sale");
    assert_eq!(info["rules"]["max_per_user"], 2);
    // The same creation again: 200, not 201, with the pool as it is; nothing changes.
    let repeat = http(admin, "POST", "/v1/pools", t, Some(body));
    assert_eq!(repeat.status, 200, "a repeat did not create anything: {}", repeat.body);
    assert_eq!(repeat.json(), info);
    let bare = http(admin, "POST", "/v1/pools", t, Some(r#"{"name": "flash", "capacity": 500}"#));
    assert_eq!(bare.status, 200, "{}", bare.body);
    assert_eq!(bare.json()["description"], "Friday sale", "a repeat without a description keeps the pool's");
    let described = r#"{"name": "flash", "capacity": 500, "description": "Friday"}"#;
    let redescribed = http(admin, "POST", "/v1/pools", t, Some(described));
    assert_eq!((redescribed.status, redescribed.json()["description"].as_str()), (200, Some("Friday")));
    assert_eq!(get(admin, "/v1/pools").json()["pools"].as_array().unwrap().len(), 2);
    let again = http(admin, "POST", "/v1/pools", t, Some(r#"{"name": "flash", "capacity": 7}"#));
    assert_eq!((again.status, again.code().as_str()), (409, "pool_exists"));
    let bad_name = http(admin, "POST", "/v1/pools", t, Some(r#"{"name": "two words", "capacity": 7}"#));
    assert_eq!((bad_name.status, bad_name.code().as_str()), (400, "invalid_pool_name"));

    // A reservation through the binary protocol, seen through the API.
    let mut c = server.client();
    let pool_id = info["id"].as_u64().unwrap() as u32;
    let alice = user_id_from_name("alice");
    assert_eq!(c.reserve(&[reserve(0xabc, alice, pool_id, 2, 0)]).unwrap()[0].status, Status::Ok as u8);

    // Status with the per-shard breakdown, by name and by id.
    let status = get(admin, "/v1/pools/flash");
    assert_eq!(status.status, 200, "{}", status.body);
    let st = status.json();
    assert_eq!(
        (st["held"].as_u64(), st["confirmed"].as_u64(), st["available"].as_u64()),
        (Some(2), Some(0), Some(498))
    );
    let shards = st["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(shards.iter().map(|s| s["held"].as_u64().unwrap()).sum::<u64>(), 2);
    assert_eq!(shards.iter().filter(|s| s["home"] == true).count(), 1);
    assert_eq!(get(admin, &format!("/v1/pools/{pool_id}")).json()["pool"]["name"], "flash");
    let none = get(admin, "/v1/pools/nope");
    assert_eq!((none.status, none.code().as_str()), (404, "pool_not_found"));

    // Change: capacity, description, activity, name; refusals.
    let patch = |body: &str, token| http(admin, "PATCH", "/v1/pools/flash", token, Some(body));
    assert_eq!(patch(r#"{"capacity": 400}"#, None).status, 401);
    assert_eq!(patch(r#"{"capacity": 400}"#, Some("guess")).status, 403);
    let empty = patch("{}", t);
    assert_eq!((empty.status, empty.code().as_str()), (400, "nothing_to_change"));
    let not_json = patch("capacity=400", t);
    assert_eq!((not_json.status, not_json.code().as_str()), (400, "bad_json"));
    let long = format!(r#"{{"description": "{}"}}"#, "x".repeat(200));
    let too_long = patch(&long, t);
    assert_eq!((too_long.status, too_long.code().as_str()), (400, "invalid_description"));
    let in_use = patch(r#"{"capacity": 1}"#, t);
    assert_eq!((in_use.status, in_use.code().as_str()), (409, "capacity_in_use"), "2 units are held");
    let changed = patch(r#"{"capacity": 400, "description": "Saturday", "active": false}"#, t);
    assert_eq!(changed.status, 200, "{}", changed.body);
    let ci = changed.json();
    assert_eq!((ci["capacity"].as_u64(), ci["active"].as_bool()), (Some(400), Some(false)));
    assert_eq!(ci["description"], "Saturday");
    assert_eq!(get(admin, "/v1/pools/flash").json()["available"], 398);
    let renamed = patch(r#"{"name": "flash-2"}"#, t);
    assert_eq!((renamed.status, renamed.json()["name"].as_str()), (200, Some("flash-2")));
    assert_eq!(get(admin, "/v1/pools/flash").status, 404);
    let missing_pool = http(admin, "PATCH", "/v1/pools/nope", t, Some(r#"{"active": true}"#));
    assert_eq!((missing_pool.status, missing_pool.code().as_str()), (404, "pool_not_found"));

    // Rules: read and replace.
    let rules = get(admin, "/v1/pools/flash-2/rules");
    assert_eq!((rules.status, rules.json()["max_per_user"].as_u64()), (200, Some(2)));
    let put = |body: &str, token| http(admin, "PUT", "/v1/pools/flash-2/rules", token, Some(body));
    assert_eq!(put(r#"{"max_qty": 3}"#, None).status, 401);
    let replaced = put(r#"{"max_qty": 3, "track_users": true}"#, t);
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let now = get(admin, "/v1/pools/flash-2/rules").json();
    assert_eq!(
        (now["max_qty"].as_u64(), now["max_per_user"].as_u64(), now["track_users"].as_bool()),
        (Some(3), Some(0), Some(true))
    );
    let inconsistent = put(r#"{"rate_per_s": 5}"#, t);
    assert_eq!((inconsistent.status, inconsistent.code().as_str()), (400, "invalid_rules"), "a rate needs a burst");
    let wrong_type = put(r#"{"max_qty": "three"}"#, t);
    assert_eq!((wrong_type.status, wrong_type.code().as_str()), (400, "bad_json"));

    // Reservation lookup, with and without the user.
    let id = format_id(0xabc);
    let found = get(admin, &format!("/v1/reservations/{id}"));
    assert_eq!(found.status, 200, "{}", found.body);
    let f = found.json();
    assert_eq!(
        (f["state"].as_str(), f["qty"].as_u64(), f["pool"].as_u64()),
        (Some("held"), Some(2), Some(pool_id as u64))
    );
    assert_eq!(f["user"], format_id(alice));
    assert_eq!(get(admin, &format!("/v1/reservations/{id}?user=alice")).json()["state"], "held");
    let absent = get(admin, &format!("/v1/reservations/{}", format_id(0xdef)));
    assert_eq!((absent.status, absent.code().as_str()), (404, "not_found"));
    let garbled = get(admin, "/v1/reservations/xyz");
    assert_eq!((garbled.status, garbled.code().as_str()), (400, "invalid_id"));

    // User activity across pools (the pool tracks users: its rules have track_users).
    let activity = get(admin, "/v1/users/alice/activity");
    assert_eq!(activity.status, 200, "{}", activity.body);
    let a = activity.json();
    let pools = a["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{a}");
    assert_eq!((pools[0]["pool"].as_str(), pools[0]["held"].as_u64()), (Some("flash-2"), Some(2)));
    assert_eq!(get(admin, "/v1/users/alice/activity?pool=demo").json()["pools"], json!([]));
    assert_eq!(get(admin, "/v1/users/alice/activity?pool=nope").status, 404);
    assert_eq!(get(admin, "/v1/users/alice/activity?recent=lots").code(), "bad_query");

    // Unknown paths and methods.
    let unknown_path = get(admin, "/v1/teapots");
    assert_eq!((unknown_path.status, unknown_path.code().as_str()), (404, "no_such_path"));
    assert_eq!(get(admin, "/nothing").status, 404);
    let wrong_method = http(admin, "POST", "/healthz", t, Some("{}"));
    assert_eq!((wrong_method.status, wrong_method.code().as_str()), (405, "method_not_allowed"));
    assert_eq!(http(admin, "PUT", "/v1/pools", t, Some("{}")).status, 405);

    // Every change reached every core: the binary protocol sees the same pool.
    let seen = c.pool_status(&by_id(pool_id)).unwrap().unwrap();
    assert_eq!((seen.info.name.as_str(), seen.info.capacity, seen.info.active), ("flash-2", 400, false));
    assert_eq!(seen.info.description, "Saturday");
}

#[test]
fn without_a_token_changes_are_refused() {
    let server = Server::start(1, &pool("demo", 10));
    let admin = server.admin.unwrap();
    // The missing header is checked first: 401, not 403 changes_disabled.
    let no_header = http(admin, "POST", "/v1/pools", None, Some(r#"{"name": "x", "capacity": 1}"#));
    assert_eq!((no_header.status, no_header.code().as_str()), (401, "unauthorized"));
    let any = http(admin, "POST", "/v1/pools", Some("anything"), Some(r#"{"name": "x", "capacity": 1}"#));
    assert_eq!((any.status, any.code().as_str()), (403, "changes_disabled"));
    let empty = http(admin, "POST", "/v1/pools", Some(""), Some(r#"{"name": "x", "capacity": 1}"#));
    assert_eq!(empty.status, 401, "an empty bearer token is no token");
    // Reading needs no token.
    assert_eq!(get(admin, "/v1/pools/demo").status, 200);
}

#[test]
fn top_shows_the_pools_and_cores_of_a_live_server() {
    let server = Server::start(2, &pool("sale", 1000));
    let admin = server.admin.unwrap();
    let mut c = server.core_client(0);
    let id = c.pool_id("sale").unwrap().unwrap();
    let users: Vec<u128> = users_on(0, 2, 30).into_iter().chain(users_on(1, 2, 50)).collect();
    let reserves: Vec<_> = users.iter().enumerate().map(|(i, &u)| reserve(500 + i as u128, u, id, 2, 0)).collect();
    assert!(c.reserve(&reserves).unwrap().iter().all(|r| r.status == Status::Ok as u8));
    // Core 0's 30 users confirm: 60 units confirmed, core 1's 50 holds (100 units) stay held.
    let confirms: Vec<_> = reserves[..30].iter().map(|r| ConfirmOp { id: r.id, user: r.user, commit_ref: 1 }).collect();
    assert!(c.confirm(&confirms).unwrap().iter().all(|r| r.status == Status::Ok as u8));

    // One frame, rendered into a test backend from the live /metrics.
    let frame = shardcap::top::render_once(&format!("http://{admin}"), None, 120, 40).expect("render");
    let row = |first: &str| -> Vec<String> {
        let line = frame
            .lines()
            .find(|l| l.trim_start_matches(['│', ' ']).split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row '{first}' in:\n{frame}"));
        line.split_whitespace().filter(|w| *w != "│").map(str::to_string).collect()
    };
    let header = frame.lines().next().unwrap();
    assert!(header.contains("ready") && !header.contains("ready ?"), "shardcap_ready was read: {frame}");
    assert!(frame.contains("oversell 0"), "{frame}");
    // pool, capacity, held, confirmed, available, taken
    assert_eq!(row("sale")[..6], ["sale", "1000", "100", "60", "840", "16.0%"], "{frame}");
    // core, ops, ok, refused, busy, p99, connections, holds: the holds column per core.
    assert_eq!(row("0").last().unwrap(), "0", "core 0's holds were confirmed:\n{frame}");
    assert_eq!(row("1").last().unwrap(), "50", "{frame}");
    assert_eq!(row("all").last().unwrap(), "50", "{frame}");
    // Operations since start, counted where they were applied (the user's home core).
    assert_eq!([&row("0")[1], &row("1")[1], &row("all")[1]], ["60", "50", "110"], "{frame}");

    // The command prints the same view once and exits. (Each read may take up to the
    // interval: a long one keeps a loaded machine from failing the read.)
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardcap"))
        .args(["top", "--once", "--interval-ms", "2000", "--admin", &format!("http://{admin}")])
        .output()
        .expect("run shardcap top");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.lines().any(|l| l.contains("sale") && l.contains("840")), "{printed}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_shardcap"))
        .args(["top", "--once", "--interval-ms", "50", "--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "an interval below 100 ms is refused");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("--interval-ms must be at least 100"), "{why}");
}
