//! The admin HTTP server: hyper on a single-threaded tokio runtime, on a thread of its own.
//!
//! Routes (docs/OBSERVABILITY.md has the bodies and answers):
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/healthz` | the process answers |
//! | GET | `/readyz` | 200 once every core is recovered and serving, 503 before |
//! | GET | `/metrics` | Prometheus text |
//! | GET, POST | `/v1/pools` | list pools; create one |
//! | GET, PATCH | `/v1/pools/{pool}` | status with the per-shard breakdown; change |
//! | GET, PUT | `/v1/pools/{pool}/rules` | the rules; replace them |
//! | GET | `/v1/reservations/{id}` | a reservation (`?user=` narrows the search) |
//! | GET | `/v1/users/{user}/activity` | a user's activity across pools |
//!
//! Users are named as on the command line: the id is XXH3-128 of the name.
//!
//! Requests that change something need `Authorization: Bearer <admin.token>`: 401 without
//! it (checked first, also when no token is configured), then 403 when no token is
//! configured or with another token. Errors are JSON:
//! `{"error": {"code": "...", "message": "..."}}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::{activity_json, lookup_json, pool_json, pool_status_json, rules_json};
use super::metrics::Metrics;
use super::{ControlReq, ControlResp, CoreMsg, CoreReport, PoolChange, PoolKey, PoolSelection, same_secret};
use crate::config::AdminConfig;
use crate::protocol::control::{PoolCreate, PoolRules, RULE_FLAG_TRACK_USERS};
use crate::protocol::{LookupOp, Status, parse_id, user_id_from_name};

/// The largest request body, in bytes.
const BODY_MAX_BYTES: usize = 64 << 10;
/// How long a scrape or an API request waits for a core.
const CORE_WAIT: Duration = Duration::from_secs(10);
/// Pools listed per page by default, and at most.
const LIST_DEFAULT: usize = 1000;
const LIST_MAX: usize = 10_000;

/// The running admin server.
pub struct AdminServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    cores: Vec<flume::Sender<CoreMsg>>,
    metrics: Arc<Metrics>,
    token: String,
    selection: Arc<PoolSelection>,
    ready: AtomicBool,
    /// One scrape at a time: each resets and sets the pool gauges.
    scrape: tokio::sync::Mutex<()>,
}

impl AdminServer {
    /// Binds the admin port and serves it on a new thread. `cores` reach each core's admin
    /// task; API requests go to core 0.
    pub fn start(
        config: &AdminConfig,
        addr: SocketAddr,
        cores: Vec<flume::Sender<CoreMsg>>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let selection = if config.metrics_pools.is_empty() {
            PoolSelection::First(config.metrics_pools_max)
        } else {
            PoolSelection::Named(config.metrics_pools.clone())
        };
        let state = Arc::new(State {
            cores,
            metrics,
            token: config.token.clone(),
            selection: Arc::new(selection),
            ready: AtomicBool::new(false),
            scrape: tokio::sync::Mutex::new(()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let served = state.clone();
        std::thread::Builder::new().name("shardcap-admin".into()).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, served).await,
                    Err(e) => tracing::error!(error = %e, "admin port: cannot serve"),
                }
            })
        })?;
        Ok(AdminServer { addr, state })
    }

    /// Reports the server ready: `/readyz` answers 200 and the API serves.
    pub fn set_ready(&self) {
        self.state.metrics.ready.set(1);
        self.state.ready.store(true, Ordering::Release);
    }
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "admin port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await.unwrap_or_else(ApiError::response)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A refused request: its HTTP status, a machine-readable code and a message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let mut r = json_response(self.status, &json!({"error": {"code": self.code, "message": self.message}}));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }

    /// A refusal by the server's state machine.
    fn refused(status: Status, what: &str) -> Self {
        let http = match status {
            Status::PoolNotFound | Status::NotFound => StatusCode::NOT_FOUND,
            Status::PoolExists | Status::CapacityInUse | Status::IdAmbiguous | Status::PoolsLimitReached => {
                StatusCode::CONFLICT
            }
            Status::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Status::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(http, status.name(), format!("{what}: {}", status_text(status)))
    }
}

/// What a refusal means, in words.
fn status_text(status: Status) -> &'static str {
    match status {
        Status::PoolNotFound => "no pool has this name or id",
        Status::NotFound => "no reservation has this id",
        Status::PoolExists => "a pool with this name already exists",
        Status::CapacityInUse => "the capacity would be below the units held, confirmed or on their way to a reserve",
        Status::InvalidPoolName => "a pool name has 1 to 64 printable ASCII characters and no spaces",
        Status::InvalidCapacity => "the capacity is zero or above the maximum",
        Status::InvalidTtl => "the hold TTLs are zero or the default is above the maximum",
        Status::InvalidRules => "the rules are inconsistent (see docs/PROTOCOL.md, pool rules)",
        Status::InvalidDescription => "a description has at most 128 bytes and no control characters",
        Status::PoolsLimitReached => "the server holds limits.pools_max pools already",
        Status::IdAmbiguous => "the id is on more than one core; give the user",
        Status::InvalidUser => "the user id is zero",
        Status::Busy => "the server is busy; retry",
        Status::InternalError => "internal error",
        _ => "refused",
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ok(body: Value) -> Result<Response<Full<Bytes>>, ApiError> {
    Ok(json_response(StatusCode::OK, &body))
}

/// Refuses a method the path does not take.
fn not_allowed(allow: &'static str) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut r =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("allowed: {allow}")).response();
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    Ok(r)
}

async fn handle(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let path: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    let ready = state.ready.load(Ordering::Acquire);
    match path.as_slice() {
        ["healthz"] => match method {
            Method::GET => ok(json!({"status": "ok"})),
            _ => not_allowed("GET"),
        },
        ["readyz"] => match method {
            Method::GET if ready => ok(json!({"ready": true})),
            Method::GET => Ok(json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))),
            _ => not_allowed("GET"),
        },
        ["metrics"] => match method {
            Method::GET => Ok(scrape(state, ready).await),
            _ => not_allowed("GET"),
        },
        ["v1", rest @ ..] => {
            if !ready {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the server is starting"));
            }
            api(state, method, rest, &query, req).await
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_path", format!("no endpoint {}", req.uri().path()))),
    }
}

async fn api(
    state: &State,
    method: Method,
    path: &[&str],
    query: &HashMap<String, String>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match (path, method) {
        (["pools"], Method::GET) => {
            let start_after = number(query, "start_after", 0u32)?;
            let limit = number(query, "limit", LIST_DEFAULT)?.clamp(1, LIST_MAX);
            match control(state, ControlReq::ListPools { start_after, limit }).await? {
                ControlResp::Pools(infos, more) => {
                    let next = infos.last().map(|p| p.id);
                    ok(json!({"pools": infos.iter().map(pool_json).collect::<Vec<_>>(), "more": more,
                              "next_start_after": if more { next } else { None }}))
                }
                _ => Err(internal()),
            }
        }
        (["pools"], Method::POST) => {
            authorize(state, &req)?;
            let body: CreateBody = read_json(req).await?;
            create_pool(state, body).await
        }
        (["pools"], _) => not_allowed("GET, POST"),
        (["pools", pool], Method::GET) => match control(state, ControlReq::PoolStatus(key(pool))).await? {
            ControlResp::Status(Ok(status)) => ok(pool_status_json(&status)),
            ControlResp::Status(Err(s)) => Err(ApiError::refused(s, &format!("pool '{pool}'"))),
            _ => Err(internal()),
        },
        (["pools", pool], Method::PATCH) => {
            authorize(state, &req)?;
            let body: PatchBody = read_json(req).await?;
            let changes = body.changes()?;
            change_pool(state, pool, changes).await
        }
        (["pools", _], _) => not_allowed("GET, PATCH"),
        (["pools", pool, "rules"], Method::GET) => match control(state, ControlReq::PoolStatus(key(pool))).await? {
            ControlResp::Status(Ok(status)) => ok(rules_json(&status.info.rules)),
            ControlResp::Status(Err(s)) => Err(ApiError::refused(s, &format!("pool '{pool}'"))),
            _ => Err(internal()),
        },
        (["pools", pool, "rules"], Method::PUT) => {
            authorize(state, &req)?;
            let rules: RulesBody = read_json(req).await?;
            change_pool(state, pool, vec![PoolChange::Rules(rules.into())]).await
        }
        (["pools", _, "rules"], _) => not_allowed("GET, PUT"),
        (["reservations", id], Method::GET) => {
            let id = parse_id(id).filter(|&id| id != 0).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "a reservation id is 32 hex digits (a UUID)")
            })?;
            let user = query.get("user").map_or(0, |u| user_id_from_name(u));
            match control(state, ControlReq::Lookup(LookupOp { id, user })).await? {
                ControlResp::Lookup(r) => match Status::from_u8(r.status) {
                    Some(Status::Ok) => ok(lookup_json(id, &r)),
                    Some(s) => Err(ApiError::refused(s, &format!("reservation {}", crate::protocol::format_id(id)))),
                    None => Err(internal()),
                },
                _ => Err(internal()),
            }
        }
        (["reservations", _], _) => not_allowed("GET"),
        (["users", user, "activity"], Method::GET) => {
            let recent = number(query, "recent", 4u8)?;
            let pool = query.get("pool").map(|p| key(p));
            let req = ControlReq::UserActivity { user: user_id_from_name(user), pool, recent };
            match control(state, req).await? {
                ControlResp::Activity(Ok(list)) => {
                    let pools: Vec<Value> = list.iter().map(|(name, a)| activity_json(user, name, a)).collect();
                    ok(json!({"user": user, "pools": pools}))
                }
                ControlResp::Activity(Err(s)) => Err(ApiError::refused(s, &format!("user '{user}'"))),
                _ => Err(internal()),
            }
        }
        (["users", _, "activity"], _) => not_allowed("GET"),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_path", format!("no endpoint /v1/{}", path.join("/")))),
    }
}

fn key(pool: &str) -> PoolKey {
    PoolKey(pool.to_string())
}

fn internal() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "unexpected answer from the core")
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

/// A number from the query string, `default` if absent.
fn number<T: std::str::FromStr>(query: &HashMap<String, String>, name: &str, default: T) -> Result<T, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_query", format!("{name}: '{v}' is not a valid number"))
        }),
    }
}

/// Checks the bearer token of a request that changes something.
fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(given) = req.headers().get(AUTHORIZATION) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <token>"));
    };
    let Some(given) = given.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the Authorization header is not Bearer"));
    };
    if state.token.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "changes_disabled",
            "no admin token is configured (admin.token or SHARDCAP_ADMIN_TOKEN): changes are refused",
        ));
    }
    if !same_secret(given.as_bytes(), state.token.as_bytes()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "wrong token"));
    }
    Ok(())
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = match Limited::new(req.into_body(), BODY_MAX_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a request body has at most {BODY_MAX_BYTES} bytes"),
            ));
        }
        Err(e) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string())),
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
}

/// Sends a request to core 0 and waits for its answer.
async fn control(state: &State, req: ControlReq) -> Result<ControlResp, ApiError> {
    let (reply, answer) = flume::bounded(1);
    let unavailable =
        || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "core 0 did not take the request");
    state.cores[0].send(CoreMsg::Control { req, reply }).map_err(|_| unavailable())?;
    match tokio::time::timeout(CORE_WAIT, answer.recv_async()).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(_)) => Err(unavailable()),
        // The request may still complete: a change may be applied after this answer.
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "outcome_unknown",
            "core 0 did not answer within 10 s; the request may still be applied: read the pool before retrying",
        )),
    }
}

/// The body of `POST /v1/pools`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    capacity: u64,
    #[serde(default = "ttl_default_ms")]
    hold_ttl_ms_default: u32,
    #[serde(default = "ttl_max_ms")]
    hold_ttl_ms_max: u32,
    #[serde(default = "crate::config::default_true")]
    active: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rules: RulesBody,
}

/// The TTLs a pool gets when the body names none: those of a configured pool.
fn ttl_default_ms() -> u32 {
    crate::config::HOLD_TTL_S_DEFAULT * 1000
}
fn ttl_max_ms() -> u32 {
    crate::config::HOLD_TTL_S_MAX * 1000
}

/// A pool's rules as JSON: the shape `GET /v1/pools/{pool}/rules` answers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RulesBody {
    max_per_user: u64,
    max_qty: u32,
    rate_per_s: u32,
    burst: u32,
    opens_at_ms: u64,
    closes_at_ms: u64,
    track_users: bool,
    kept_permille: u16,
    priority_min: u8,
}

impl From<RulesBody> for PoolRules {
    fn from(r: RulesBody) -> PoolRules {
        PoolRules {
            max_per_user: r.max_per_user,
            opens_at_ms: r.opens_at_ms,
            closes_at_ms: r.closes_at_ms,
            rate_per_s: r.rate_per_s,
            burst: r.burst,
            max_qty: r.max_qty,
            flags: if r.track_users { RULE_FLAG_TRACK_USERS } else { 0 },
            kept_permille: r.kept_permille,
            priority_min: r.priority_min,
        }
    }
}

/// The body of `PATCH /v1/pools/{pool}`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    capacity: Option<u64>,
    active: Option<bool>,
    description: Option<String>,
    rules: Option<RulesBody>,
}

impl PatchBody {
    /// The changes, in the order they are applied.
    fn changes(self) -> Result<Vec<PoolChange>, ApiError> {
        let mut changes = Vec::new();
        changes.extend(self.description.map(PoolChange::Describe));
        changes.extend(self.rules.map(|r| PoolChange::Rules(r.into())));
        changes.extend(self.active.map(PoolChange::Active));
        changes.extend(self.capacity.map(PoolChange::Capacity));
        changes.extend(self.name.map(PoolChange::Rename));
        if changes.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "nothing_to_change",
                "give at least one of name, capacity, active, description, rules",
            ));
        }
        Ok(changes)
    }
}

fn check_description(text: &str) -> Result<(), ApiError> {
    if crate::shard::pool::valid_pool_description(text) {
        Ok(())
    } else {
        Err(ApiError::refused(Status::InvalidDescription, "description"))
    }
}

async fn create_pool(state: &State, body: CreateBody) -> Result<Response<Full<Bytes>>, ApiError> {
    // Checked before the pool is created: the description is set by a second change.
    check_description(&body.description)?;
    let name = body.name.clone();
    let req = PoolCreate {
        name: body.name,
        capacity: body.capacity,
        hold_ttl_ms_default: body.hold_ttl_ms_default,
        hold_ttl_ms_max: body.hold_ttl_ms_max,
        kind: 0,
        active: body.active,
        rules: body.rules.into(),
    };
    let (mut info, created) = match control(state, ControlReq::CreatePool(req)).await? {
        ControlResp::Created(Ok(answer)) => answer,
        ControlResp::Created(Err(s)) => return Err(ApiError::refused(s, &format!("pool '{name}'"))),
        _ => return Err(internal()),
    };
    // A repeat that names the description the pool has changes nothing (and logs nothing).
    if !body.description.is_empty() && body.description != info.description {
        let describe = ControlReq::ChangePool(key(&info.id.to_string()), vec![PoolChange::Describe(body.description)]);
        match control(state, describe).await? {
            ControlResp::Pool(Ok(described)) => info = described,
            ControlResp::Pool(Err((s, _))) => {
                return Err(ApiError::refused(s, &format!("pool '{name}' was created; its description")));
            }
            _ => return Err(internal()),
        }
    }
    // 201 only for the request that created the pool; a repeat answers 200, so a client can
    // tell the two apart.
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(status, &pool_json(&info)))
}

async fn change_pool(state: &State, pool: &str, changes: Vec<PoolChange>) -> Result<Response<Full<Bytes>>, ApiError> {
    let asked = changes.len();
    match control(state, ControlReq::ChangePool(key(pool), changes)).await? {
        ControlResp::Pool(Ok(info)) => ok(pool_json(&info)),
        ControlResp::Pool(Err((s, done))) => {
            let what = if done == 0 {
                format!("pool '{pool}'")
            } else {
                format!("pool '{pool}' ({done} of {asked} changes applied before this one)")
            };
            Err(ApiError::refused(s, &what))
        }
        _ => Err(internal()),
    }
}

/// Flushes every core's counts (once ready), sets the pool gauges and encodes the registry.
async fn scrape(state: &State, ready: bool) -> Response<Full<Bytes>> {
    let _one_at_a_time = state.scrape.lock().await;
    if ready {
        let mut pending = Vec::with_capacity(state.cores.len());
        for core in &state.cores {
            let (reply, report) = flume::bounded(1);
            if core.send(CoreMsg::Flush { pools: state.selection.clone(), reply }).is_ok() {
                pending.push(report);
            }
        }
        let deadline = tokio::time::Instant::now() + CORE_WAIT;
        let mut reports = Vec::with_capacity(pending.len());
        for report in pending {
            if let Ok(Ok(r)) = tokio::time::timeout_at(deadline, report.recv_async()).await {
                reports.push(r);
            }
        }
        // Pool numbers summed over some cores only would be wrong: keep the last ones.
        if reports.len() == state.cores.len() {
            set_pool_gauges(&state.metrics, &reports);
        } else {
            tracing::warn!("a core did not answer a metrics scrape; pool gauges not updated");
        }
    }
    let mut text = String::new();
    let status = match prometheus::TextEncoder::new().encode_utf8(&state.metrics.registry.gather(), &mut text) {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            text = format!("cannot encode the metrics: {e}\n");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
    r
}

/// Sums every core's shard of each exported pool; the capacity is the home core's.
fn set_pool_gauges(m: &Metrics, reports: &[CoreReport]) {
    struct Sum<'a> {
        name: &'a str,
        capacity: u64,
        held: u64,
        confirmed: u64,
    }
    let mut pools: HashMap<u32, Sum> = HashMap::new();
    for p in reports.iter().flat_map(|r| &r.pools) {
        let sum = pools.entry(p.id).or_insert(Sum { name: &p.name, capacity: p.capacity, held: 0, confirmed: 0 });
        if p.home {
            sum.name = &p.name;
            sum.capacity = p.capacity;
        }
        sum.held += p.held;
        sum.confirmed += p.confirmed;
    }
    if let Some(count) = reports.iter().map(|r| r.pool_count).max() {
        m.pools.set(count as i64);
    }
    // Pools renamed or no longer selected disappear.
    for g in [&m.pool_capacity, &m.pool_held, &m.pool_confirmed, &m.pool_available] {
        g.reset();
    }
    for sum in pools.values() {
        let label = [sum.name];
        m.pool_capacity.with_label_values(&label).set(sum.capacity as i64);
        m.pool_held.with_label_values(&label).set(sum.held as i64);
        m.pool_confirmed.with_label_values(&label).set(sum.confirmed as i64);
        m.pool_available.with_label_values(&label).set(sum.capacity.saturating_sub(sum.held + sum.confirmed) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::PoolReport;

    /// GET `path` on `addr`: status and body.
    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.get(&format!("http://{addr}{path}")).call().expect("the admin port answers");
        (r.status().as_u16(), r.body_mut().read_to_string().expect("body"))
    }

    #[test]
    fn readiness_waits_for_the_cores_and_scrapes_ask_every_core() {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..2).map(|_| flume::unbounded::<CoreMsg>()).unzip();
        let config = AdminConfig { listen: "127.0.0.1:0".into(), ..AdminConfig::default() };
        let metrics = Arc::new(Metrics::new(2));
        let server = AdminServer::start(&config, config.listen_addr().unwrap(), tx, metrics).unwrap();
        let addr = server.addr;

        // Recovering: alive, not ready, no API; metrics answer without asking the cores.
        assert_eq!(get(addr, "/healthz"), (200, r#"{"status":"ok"}"#.into()));
        assert_eq!(get(addr, "/readyz"), (503, r#"{"ready":false}"#.into()));
        let (status, body) = get(addr, "/v1/pools");
        assert_eq!(status, 503);
        assert!(body.contains(r#""code":"not_ready""#), "{body}");
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("\nshardcap_ready 0\n"), "{body}");
        assert!(rx.iter().all(|r| r.is_empty()), "no core was asked");

        // Ready: each scrape asks both cores (stand-ins answer here) and sums their pools.
        server.set_ready();
        assert_eq!(get(addr, "/readyz"), (200, r#"{"ready":true}"#.into()));
        let cores: Vec<_> = rx
            .into_iter()
            .enumerate()
            .map(|(core, rx)| {
                std::thread::spawn(move || {
                    let Ok(CoreMsg::Flush { pools, reply }) = rx.recv() else { panic!("a flush") };
                    assert_eq!(*pools, PoolSelection::First(64));
                    let pool =
                        PoolReport { id: 1, name: "p".into(), home: core == 0, capacity: 9, held: 2, confirmed: 1 };
                    reply.send(CoreReport { core: core as u16, pool_count: 1, pools: vec![pool] }).unwrap();
                })
            })
            .collect();
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        for core in cores {
            core.join().unwrap();
        }
        assert!(body.contains("\nshardcap_ready 1\n"), "{body}");
        assert!(body.contains("\nshardcap_pool_held{pool=\"p\"} 4\n"), "{body}");
        assert!(body.contains("\nshardcap_pool_available{pool=\"p\"} 3\n"), "{body}");
    }

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("pool=flash%20sale&recent=2&flag");
        assert_eq!(q.get("pool").map(String::as_str), Some("flash sale"));
        assert_eq!(q.get("recent").map(String::as_str), Some("2"));
        assert_eq!(q.get("flag").map(String::as_str), Some(""));
        assert_eq!(number(&q, "recent", 4u8).unwrap(), 2);
        assert_eq!(number(&q, "missing", 4u8).unwrap(), 4);
        let err = number::<u8>(&parse_query("recent=lots"), "recent", 4).unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::BAD_REQUEST, "bad_query"));
    }

    #[test]
    fn pool_gauges_sum_shards_and_take_the_home_capacity() {
        let m = Metrics::new(2);
        let report = |core: u16, home: bool, capacity, held, confirmed| CoreReport {
            core,
            pool_count: 3,
            pools: vec![PoolReport { id: 1, name: "a".into(), home, capacity, held, confirmed }],
        };
        // Core 1 has not applied the latest resize yet: the home core's capacity counts.
        set_pool_gauges(&m, &[report(0, true, 100, 10, 5), report(1, false, 90, 20, 1)]);
        assert_eq!(m.pool_capacity.with_label_values(&["a"]).get(), 100);
        assert_eq!(m.pool_held.with_label_values(&["a"]).get(), 30);
        assert_eq!(m.pool_confirmed.with_label_values(&["a"]).get(), 6);
        assert_eq!(m.pool_available.with_label_values(&["a"]).get(), 64);
        assert_eq!(m.pools.get(), 3);
    }
}
